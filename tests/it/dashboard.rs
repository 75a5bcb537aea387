//! The Grafana dashboard against what `/metrics` really exports: after traffic that touches every
//! component, each metric named in a dashboard query must be in the scrape, and the scrape must hold
//! no secret, session, user or raw path in a label.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use switchyard::metrics::names;

use crate::support::*;

const DASHBOARD: &str = include_str!("../../grafana/dashboards/switchyard.json");

/// Strings the traffic below sends in places that must never become label values.
const SESSION: &str = "dash-session-9d1e0b";
const USER: &str = "dash-user-bob-7731";
const UNKNOWN_MODEL: &str = "zz-unknown-model-31337";
const PATH_ID: &str = "req-7f3a9c0d5e";

#[tokio::test]
async fn every_metric_in_the_dashboard_is_exported_after_real_traffic() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    let wanted = dashboard_metric_names(&dashboard);
    assert!(
        wanted.len() >= 15,
        "only {} distinct metric names in the dashboard's queries: {wanted:?}",
        wanted.len()
    );

    let (a, b, c, d) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
        MockUpstream::start_named("c").await,
        MockUpstream::start_named("d").await,
    );
    let key = |id: &str| format!("api_key: \"sk-{id}-secret\"");
    let mut config = ConfigBuilder::default()
        // b is the fallback of every model; a, c and d are tried first.
        .profile_with("a", &a.base_url(), &[&key("a"), "priority: 1"])
        .profile_with("b", &b.base_url(), &[&key("b"), "priority: 2"])
        .profile_with("c", &c.base_url(), &[&key("c"), "priority: 1"])
        .profile_with("d", &d.base_url(), &[&key("d"), "priority: 1"])
        .model_with_strategy("m", &["a", "b"], "priority")
        .model_with_strategy("auth-m", &["c", "b"], "priority")
        .model_with_strategy("bill-m", &["d", "b"], "priority");
    // One failure opens a breaker, so a transition is counted.
    config.breaker = (1, "30s".into());
    let server = Server::start(&config);

    // A plain request and a stream on a.
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "a");
    let stream = stream_chat(&server, "m").await;
    assert!(stream.ends_with("data: [DONE]\n\n"), "{stream}");

    // a fails with a 500: failover to b, a cools down and its breaker opens.
    a.push(Reply::server_error());
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "b");
    assert_eq!(headers["x-switchyard-attempts"], "2");

    // c's key is refused (auth_failed), d is out of credit (billing_disabled); b answers both.
    c.push(Reply::unauthorized());
    d.push(Reply::payment_required());
    for model in ["auth-m", "bill-m"] {
        let (status, headers, body) = chat(&server, &chat_body(model)).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(headers["x-switchyard-attempts"], "2", "{model}");
    }

    // A sticky session with a user, an unknown model and paths carrying ids: none may become a label.
    let mut body = chat_body("m");
    body["user"] = USER.into();
    let (status, _, text) = post(
        &server,
        "/v1/chat/completions",
        &body,
        &[("X-Session-Id", SESSION)],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = chat(&server, &chat_body(UNKNOWN_MODEL)).await;
    assert_eq!(status, 404, "{text}");
    for path in [
        format!("/v1/models/{UNKNOWN_MODEL}"),
        format!("/v1/things/{PATH_ID}"),
        format!("/admin/profiles/{PATH_ID}/reset"),
    ] {
        let resp = client().get(server.url(&path)).send().await.unwrap();
        assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
    }

    let resp = client()
        .post(server.url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    // Actors count transitions after the response: poll until the scrape settles or the deadline passes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, scrape, missing) = loop {
        let text = get_metrics(&server).await;
        let scrape = Scrape::parse(&text);
        let missing: Vec<String> = wanted
            .iter()
            .filter_map(|name| scrape.explain_missing(name))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (text, scrape, missing);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics that /metrics does not export:\n  {}\n\nscrape:\n{text}",
        missing.join("\n  ")
    );

    for name in scrape.families.keys().chain(scrape.samples.keys()) {
        assert!(
            name.starts_with("switchyard_"),
            "exported metric {name} lacks the switchyard_ prefix"
        );
    }
    let forbidden: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| format!("sk-{id}-secret"))
        .chain([ADMIN_TOKEN, SESSION, USER, UNKNOWN_MODEL, PATH_ID].map(String::from))
        .collect();
    for (name, labels) in scrape
        .samples
        .iter()
        .flat_map(|(n, s)| s.iter().map(move |l| (n, l)))
    {
        for (label, value) in labels {
            for bad in &forbidden {
                assert!(
                    !value.contains(bad.as_str()),
                    "{name}{{{label}=\"{value}\"}} leaks {bad:?}"
                );
            }
            if label == "route" {
                assert!(
                    value == "unmatched" || value.starts_with('/'),
                    "{name}: route label {value:?} is neither a pattern nor `unmatched`"
                );
            }
        }
    }
    for bad in &forbidden {
        assert!(!text.contains(bad.as_str()), "the scrape contains {bad:?}");
    }
}

/// The dashboard is a provisionable Grafana dashboard, with the variables and panels it promises.
#[test]
fn the_dashboard_is_a_templated_grafana_dashboard_covering_every_metric() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
    assert_eq!(d["uid"], "switchyard");
    assert!(
        d["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "{}",
        d["schemaVersion"]
    );
    let vars: BTreeMap<&str, &serde_json::Value> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or_default(), v))
        .collect();
    assert_eq!(vars["DS_PROMETHEUS"]["type"], "datasource");
    for (var, label) in [("profile", "profile"), ("model", "model")] {
        let def = vars[var]["definition"].as_str().unwrap_or_default();
        assert!(
            def.starts_with("label_values(switchyard_") && def.ends_with(&format!(", {label})")),
            "{var}: {def}"
        );
    }

    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for panel in panels(&d) {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        titles.push(panel["title"].as_str().unwrap_or_default().to_owned());
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{}",
                panel["title"]
            );
        }
    }
    for title in [
        "Traffic",
        "Errors",
        "Latency",
        "Tokens",
        "Profile states",
        "Breaker transitions",
        "Cooldowns by reason",
        "Billing disables",
        "Auth failures",
        "Actor restarts",
        "Mailbox drops",
        "Store flush latency",
        "Config reloads",
        "Sticky sessions",
        "Attempts by outcome",
        "Failovers by reason",
        "Time to first token",
        "In-flight requests",
    ] {
        assert!(
            titles.iter().any(|t| t == title),
            "no panel or row {title:?}: {titles:?}"
        );
    }

    // Every metric the code defines is on the dashboard.
    let used = dashboard_metric_names(&d);
    let histograms = [
        names::REQUEST_DURATION,
        names::UPSTREAM_DURATION,
        names::TTFT,
        names::STORE_FLUSH,
    ];
    let others = [
        names::HTTP_REQUESTS,
        names::REQUESTS,
        names::TOKENS,
        names::IN_FLIGHT,
        names::ATTEMPTS,
        names::FAILOVERS,
        names::PROFILE_STATE,
        names::RELOADS,
        names::SESSIONS,
        names::BREAKER_TRANSITIONS,
        names::COOLDOWNS,
        names::BILLING_DISABLES,
        names::AUTH_FAILURES,
        names::ACTOR_RESTARTS,
        names::MAILBOX_DROPS,
    ];
    for h in histograms {
        assert!(used.contains(&format!("{h}_bucket")), "no quantile of {h}");
    }
    for name in others {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }
}

/// POSTs a streamed chat completion and reads the whole body.
async fn stream_chat(server: &Server, model: &str) -> String {
    let mut body = chat_body(model);
    body["stream"] = true.into();
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

async fn get_metrics(server: &Server) -> String {
    let resp = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Every panel, rows' nested panels included.
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The `switchyard_*` identifiers of every query: panel targets' `expr` and the variables' queries.
fn dashboard_metric_names(d: &serde_json::Value) -> BTreeSet<String> {
    let mut queries: Vec<&str> = panels(d)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        queries.extend(v["definition"].as_str());
        queries.extend(v["query"]["query"].as_str());
    }
    assert!(!queries.is_empty(), "the dashboard has no queries");
    queries.into_iter().flat_map(metric_identifiers).collect()
}

/// Identifiers matching `switchyard_[a-z0-9_]+` that do not continue a longer identifier.
fn metric_identifiers(expr: &str) -> Vec<String> {
    const PREFIX: &str = "switchyard_";
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = expr[from..].find(PREFIX).map(|i| i + from) {
        let rest = &expr[i + PREFIX.len()..];
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let before_ok = !expr[..i].chars().next_back().is_some_and(is_ident);
        if before_ok && len > 0 {
            out.push(expr[i..i + PREFIX.len() + len].to_owned());
        }
        from = i + PREFIX.len();
    }
    out
}

/// A parsed Prometheus text exposition.
struct Scrape {
    /// `# TYPE` lines: family name to type.
    families: BTreeMap<String, String>,
    /// Sample name to the label sets of its series.
    samples: BTreeMap<String, Vec<Vec<(String, String)>>>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut families = BTreeMap::new();
        let mut samples: BTreeMap<String, Vec<Vec<(String, String)>>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    families.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = match line[end..].strip_prefix('{') {
                Some(rest) => parse_labels(rest).unwrap_or_else(|| panic!("bad sample: {line}")),
                None => Vec::new(),
            };
            samples
                .entry(line[..end].to_owned())
                .or_default()
                .push(labels);
        }
        Scrape { families, samples }
    }

    /// Why `name` (as used in a query) is not exported, or `None` when it is: a family with series
    /// of that name, or the `_bucket`, `_sum` or `_count` of an exported histogram.
    fn explain_missing(&self, name: &str) -> Option<String> {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| self.families.get(*base).is_some_and(|t| t == "histogram"))
            .unwrap_or(name);
        let Some(kind) = self.families.get(family) else {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .map(|b| format!(" nor of a histogram {b}"))
                .unwrap_or_default();
            return Some(format!(
                "{name}: no `# TYPE` line for it{base} (a vec with no series is not exported)"
            ));
        };
        if kind == "histogram" && family == name {
            return Some(format!(
                "{name}: a histogram; query {name}_bucket, _sum or _count"
            ));
        }
        if !self.samples.contains_key(name) {
            return Some(format!(
                "{name}: `# TYPE {family} {kind}` but no sample {name}"
            ));
        }
        None
    }
}

/// Parses `k="v",k2="v2"}` (the text after `{`), unescaping values.
fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    loop {
        let mut key = String::new();
        loop {
            match chars.next()? {
                '}' if key.is_empty() => return Some(out),
                '=' => break,
                ',' if key.is_empty() => {}
                c => key.push(c),
            }
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
    }
}

#[test]
fn identifiers_and_labels_parse() {
    assert_eq!(
        metric_identifiers(
            "histogram_quantile(0.9, sum by (le) (rate(switchyard_a_seconds_bucket{x=\"switchyard_no\"}[5m])))\
             / my_switchyard_other + switchyard_b_total"
        ),
        ["switchyard_a_seconds_bucket", "switchyard_no", "switchyard_b_total"]
    );
    assert_eq!(
        parse_labels(r#"a="1",b="x\"y\\z"} 3"#).unwrap(),
        [("a".into(), "1".into()), ("b".into(), r#"x"y\z"#.into())]
    );
    let s = Scrape::parse(
        "# TYPE switchyard_h_seconds histogram\nswitchyard_h_seconds_bucket{le=\"1\"} 1\n\
         switchyard_h_seconds_sum 1\nswitchyard_h_seconds_count 1\n# TYPE switchyard_c_total counter\n",
    );
    assert_eq!(s.explain_missing("switchyard_h_seconds_bucket"), None);
    assert_eq!(s.explain_missing("switchyard_h_seconds_count"), None);
    assert!(s.explain_missing("switchyard_h_seconds").is_some());
    assert!(s.explain_missing("switchyard_c_total").is_some());
    assert!(s.explain_missing("switchyard_absent_total").is_some());
}
