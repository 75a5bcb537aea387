//! Hostile or broken input from outside: absurd upstream headers.

use std::time::{Duration, SystemTime};

use crate::support::*;

/// A `Retry-After` far beyond any sensible cooldown neither panics the worker nor leaves the profile
/// healthy: the request fails over, and the profile cools down for the clamped maximum (24 h).
#[tokio::test]
async fn an_absurd_retry_after_fails_over_and_cools_the_profile_down() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::rate_limited_header("retry-after", "1e300"));
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .model_with_strategy("m", &["a", "b"], "priority"),
    );
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "b");
    assert_eq!(headers["x-switchyard-attempts"], "2");

    let p = wait_state(&server, "a", "cooldown", Duration::from_secs(5)).await;
    let until = p["cooldown_until"]
        .as_str()
        .unwrap_or_else(|| panic!("{p}"));
    let until = humantime::parse_rfc3339_weak(until).unwrap();
    let left = until.duration_since(SystemTime::now()).unwrap();
    let day = Duration::from_secs(24 * 60 * 60);
    assert!(
        left > day - Duration::from_secs(60) && left <= day,
        "cooldown of {left:?}: {p}"
    );

    // The next request skips `a` without asking it.
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "b");
    assert_eq!(headers["x-switchyard-attempts"], "1");
    assert_eq!((a.request_count(), b.request_count()), (1, 2));
}

// --- sign-in ---------------------------------------------------------------------------------------

/// Every audit entry, following the cursors.
async fn all_audit(server: &Server) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/audit?limit=100&cursor={c}"),
            None => "/admin/audit?limit=100".to_owned(),
        };
        let page = admin(server, reqwest::Method::GET, &path, None).await;
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// The per-account limit is a budget of password checks, taken before argon2 runs: a burst of wrong
/// passwords for one account gets exactly `max_failures_per_account` checks, however many run at once.
/// (The address limit is set above the burst, so only the account limit is at work; every request
/// comes from 127.0.0.1.)
#[tokio::test]
async fn concurrent_wrong_passwords_get_no_more_checks_than_the_account_limit() {
    const LIMIT: usize = 5;
    const BURST: usize = 40;
    let mock = MockUpstream::start_named("a").await;
    let mut config = ConfigBuilder::default()
        .profile("a", &mock)
        .model("m", &["a"]);
    config.extra_auth_yaml = vec![
        "login:".into(),
        format!("  max_failures_per_account: {LIMIT}"),
        "  max_attempts_per_address: 1000".into(),
        "  window: 10m".into(),
    ];
    let server = Server::start(&config);
    let account = serde_json::json!({"email": "victim@example.com", "password": "the-right-password",
                                     "role": "user", "tier": "free"});
    admin(
        &server,
        reqwest::Method::POST,
        "/admin/accounts",
        Some(account),
    )
    .await;

    let attempts = (0..BURST).map(|i| {
        let body =
            serde_json::json!({"email": "victim@example.com", "password": format!("guess-{i}")});
        call(
            &server,
            reqwest::Method::POST,
            "/auth/login",
            None,
            Some(body),
        )
    });
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|(status, _, _)| status)
        .collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (checked, refused),
        (LIMIT, BURST - LIMIT),
        "statuses: {statuses:?}"
    );
    // The audit log says the same: a `login_failed` only after a password check, a `login_blocked`
    // for a refusal before one.
    let audit = all_audit(&server).await;
    let count = |event: &str| audit.iter().filter(|e| e["event"] == event).count();
    assert_eq!(count("login_failed"), LIMIT);
    assert_eq!(count("login_blocked"), BURST - LIMIT);

    // The right password is refused too while the account's budget is spent.
    let body = serde_json::json!({"email": "victim@example.com", "password": "the-right-password"});
    let (status, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/auth/login",
        None,
        Some(body),
    )
    .await;
    assert_eq!(status, 429);
}

// --- billing webhook -------------------------------------------------------------------------------

/// Delivers `body` to the billing webhook, signed now with `secret`.
async fn deliver(server: &Server, secret: &str, body: &serde_json::Value) -> (u16, String) {
    use switchyard::limits::webhook;
    let body = body.to_string();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let resp = client()
        .post(server.url("/billing/webhook"))
        .header("content-type", "application/json")
        .header(
            webhook::SIGNATURE_HEADER,
            webhook::sign(secret.as_bytes(), now, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn balance(server: &Server, account: &str) -> serde_json::Value {
    let path = format!("/admin/accounts/{account}/credits");
    admin(server, reqwest::Method::GET, &path, None).await["balance_micros"].clone()
}

/// A billing provider sends every event type it has; the ones the webhook does not act on are
/// acknowledged (2xx, or the provider retries them for days) and change nothing, while a handled type
/// still needs its fields.
#[tokio::test]
async fn the_webhook_acknowledges_event_types_it_does_not_handle() {
    use switchyard::limits::webhook;
    const SECRET: &str = "whsec-hardening-0123456789";
    let mock = MockUpstream::start_named("a").await;
    let server = Server::start_with_env(
        &ConfigBuilder::default()
            .profile("a", &mock)
            .model("m", &["a"]),
        &[(webhook::SECRET_ENV, SECRET)],
    );
    let ignored = [
        serde_json::json!({"id": "evt_inv", "type": "invoice.paid",
                           "data": {"object": {"id": "in_1", "amount_paid": 500}}}),
        serde_json::json!({"id": "evt_cus", "type": "customer.created"}),
        serde_json::json!({"id": "evt_sub", "type": "subscription.trial_will_end",
                           "data": {"customer": "cus_1"}}),
    ];
    for event in &ignored {
        let (status, text) = deliver(&server, SECRET, event).await;
        assert_eq!(status, 200, "{event}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (&v["received"], &v["ignored"]),
            (&true.into(), &true.into()),
            "{text}"
        );
    }

    // Handled types are still validated, and nothing was credited by the ignored ones.
    let no_account = serde_json::json!({"id": "evt_bad", "type": "credits.purchased",
                                        "data": {"amount_usd": 2.0}});
    let (status, text) = deliver(&server, SECRET, &no_account).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("account"), "{text}");
    let no_amount = serde_json::json!({"id": "evt_bad2", "type": "credits.purchased",
                                       "data": {"account": "shop"}});
    assert_eq!(deliver(&server, SECRET, &no_amount).await.0, 400);
    assert_eq!(balance(&server, "shop").await, 0);
    let buy = serde_json::json!({"id": "evt_buy", "type": "credits.purchased",
                                 "data": {"account": "shop", "amount_usd": 2.0}});
    let (status, text) = deliver(&server, SECRET, &buy).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(balance(&server, "shop").await, 2_000_000);

    // A body that is not an event at all is still refused.
    let (status, text) = deliver(&server, SECRET, &serde_json::json!({"id": "evt_x"})).await;
    assert_eq!(status, 400, "{text}");
}

// --- a damaged store -------------------------------------------------------------------------------

/// What `highwater.json` in the server's data directory says.
fn mark_of(server: &Server) -> serde_json::Value {
    let path = server.data_dir().join("highwater.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Moves every entry of `from` (the data directory) except the mark into `to`.
fn move_store(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "highwater.json" {
            std::fs::rename(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Copies a directory tree, but never a high-water mark: a restore brings back the store's files.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "highwater.json" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs the binary with `args` in the server's directory until it exits; panics if it is still running
/// after 30 s (a `serve` that started instead of refusing). Returns whether it succeeded and its output.
fn run_to_exit(server: &Server, args: &[&str]) -> (bool, String) {
    use std::process::{Command, Stdio};
    let out_path = server.path().join("run.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(server.path())
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("NO_COLOR", "1")
        .env_remove("SWITCHYARD_LISTEN")
        .env_remove("SWITCHYARD_DATA_DIR")
        .env_remove("SWITCHYARD_CONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{args:?} did not exit:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        std::fs::read_to_string(&out_path).unwrap_or_default(),
    )
}

async fn traffic(server: &Server, n: usize) {
    for _ in 0..n {
        let (status, _, body) = chat(server, &chat_body("m")).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// A store that comes back holding less than was written (an older copy restored, or its files gone)
/// is refused at start with one line naming what is missing and the way out; `switchyard store
/// accept-current` is that way out. A fresh data directory starts as before.
#[tokio::test]
async fn a_store_behind_its_high_water_mark_is_refused_until_accepted() {
    let mock = MockUpstream::start_named("a").await;
    let mut server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &mock)
            .model("m", &["a"]),
    );
    // Fresh: it started, and wrote a mark of nothing.
    assert_eq!(mark_of(&server)["usage_records"], 0);
    for name in ["k1", "k2", "k3"] {
        let key = serde_json::json!({"name": name, "account": "acme"});
        admin(&server, reqwest::Method::POST, "/admin/keys", Some(key)).await;
    }
    for amount in [5.0, 2.5] {
        let credit = serde_json::json!({"amount_usd": amount});
        let path = "/admin/accounts/acme/credits";
        admin(&server, reqwest::Method::POST, path, Some(credit)).await;
    }
    traffic(&server, 10).await;
    let exit = server.terminate().expect("exit status");
    assert!(exit.success(), "{exit:?}");
    let mark = mark_of(&server);
    assert_eq!(
        (
            &mark["usage_records"],
            &mark["ledger_transactions"],
            &mark["keys"]
        ),
        (&10.into(), &2.into(), &3.into()),
        "{mark}"
    );
    let backup = server.path().join("backup");
    copy_tree(&server.data_dir(), &backup);

    server.restart();
    traffic(&server, 5).await;
    server.terminate();
    assert_eq!(mark_of(&server)["usage_records"], 15);

    // The older copy comes back.
    let serve = ["serve", "--config", "profiles.yaml", "--log-format", "text"];
    move_store(&server.data_dir(), &server.path().join("newer"));
    copy_tree(&backup, &server.data_dir());
    let (ok, out) = run_to_exit(&server, &serve);
    assert!(!ok, "started on an older copy:\n{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{out}"));
    assert!(line.contains("usage records 10 < 15"), "{line}");
    assert!(
        line.contains("switchyard store accept-current --data-dir"),
        "{line}"
    );
    assert!(!line.contains("keys"), "{line}");

    // The store's files are gone, the mark is not.
    move_store(&server.data_dir(), &server.path().join("older"));
    let (ok, out) = run_to_exit(&server, &serve);
    assert!(!ok, "started on an empty store:\n{out}");
    let line = out.lines().find(|l| l.starts_with("error:")).unwrap();
    for missing in [
        "usage records 0 < 15",
        "ledger transactions 0 < 2",
        "keys 0 < 3",
        "id counter",
    ] {
        assert!(line.contains(missing), "{missing}: {line}");
    }

    // The operator restores what they can (here: the older copy) and accepts it.
    move_store(&server.path().join("older"), &server.data_dir());
    let data_dir = server.data_dir().display().to_string();
    let (ok, out) = run_to_exit(
        &server,
        &["store", "accept-current", "--data-dir", &data_dir],
    );
    assert!(ok, "{out}");
    assert!(out.contains("10 usage records"), "{out}");
    assert_eq!(mark_of(&server)["usage_records"], 10);
    server.restart();
    traffic(&server, 1).await;
    assert_eq!(admin_profile(&server, "a").await["requests"], 11);
}

// --- Retry-After when nothing is available ---------------------------------------------------------

fn retry_after_of(h: &reqwest::header::HeaderMap) -> Option<u64> {
    h.get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

/// The only profile answering 429 is relayed as a 429 with the upstream's hint; while it cools, the 503
/// says how long until it can be tried again (not always 1); a profile that only an operator can bring
/// back (auth_failed) gets a 503 saying so, without a Retry-After.
#[tokio::test]
async fn retry_after_says_when_a_profile_can_be_tried_again() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::rate_limited(7));
    b.push(Reply::unauthorized());
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .model("limited", &["a"])
            .model("locked", &["b"]),
    );
    let (status, h, body) = chat(&server, &chat_body("limited")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_of(&body)["type"], "rate_limit_error", "{body}");
    assert_eq!(retry_after_of(&h), Some(7), "{h:?}");

    wait_state(&server, "a", "cooldown", Duration::from_secs(5)).await;
    let (status, h, body) = chat(&server, &chat_body("limited")).await;
    assert_eq!(status, 503, "{body}");
    let secs = retry_after_of(&h).unwrap_or_else(|| panic!("{h:?}"));
    assert!((6..=7).contains(&secs), "Retry-After {secs}: {body}");

    let (status, _, body) = chat(&server, &chat_body("locked")).await;
    assert_eq!(status, 502, "{body}");
    wait_state(&server, "b", "auth_failed", Duration::from_secs(5)).await;
    let (status, h, body) = chat(&server, &chat_body("locked")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after_of(&h), None, "{h:?}");
    let msg = error_of(&body)["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("None recovers by itself"), "{msg}");
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
}

// --- streams that open with an error, redirects, echoed keys ---------------------------------------

fn stream_body(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": true,
                       "messages": [{"role": "user", "content": "hello there"}]})
}

const CONTENT: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hi\"}}]}\n\n";

/// A 200 stream whose first event is an error object (OpenRouter's way), after a keep-alive comment, or
/// data that is not JSON, is a failure of its class: the next profile answers, the client sees nothing
/// of the first.
#[tokio::test]
async fn a_stream_opening_with_an_error_event_or_garbage_fails_over() {
    let (a, b, c) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
        MockUpstream::start_named("c").await,
    );
    a.push(Reply::events([
        ": OPENROUTER PROCESSING\n\n",
        "data: {\"error\":{\"code\":429,\"message\":\"Rate limit exceeded upstream\"}}\n\n",
        "data: [DONE]\n\n",
    ]));
    c.push(Reply::events(["data: {not json\n\n", "data: [DONE]\n\n"]));
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .profile("c", &c)
            .model_with_strategy("m1", &["a", "b"], "priority")
            .model_with_strategy("m2", &["c", "b"], "priority"),
    );
    for (model, first, class) in [("m1", "a", "rate_limited"), ("m2", "c", "server")] {
        let (status, h, text) = chat(&server, &stream_body(model)).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(h["x-switchyard-profile"], "b", "{model}: {text}");
        assert_eq!(h["x-switchyard-attempts"], "2", "{model}");
        assert!(
            text.contains("mock reply from b") || text.contains("\"content\""),
            "{text}"
        );
        assert!(
            !text.contains("error") && !text.contains("OPENROUTER"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        let p = wait_state(&server, first, "cooldown", Duration::from_secs(5)).await;
        let last = p["last_error"].as_str().unwrap_or_default();
        assert!(last.starts_with(class), "{model}: {p}");
    }
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (1, 2, 1)
    );
}

/// An upstream redirect is not relayed as a bare 3xx: the profile cools down, the next one answers, and
/// the admin API says where the redirect pointed.
#[tokio::test]
async fn an_upstream_redirect_fails_over_and_names_its_location() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::redirect(302, "https://login.example.com/sso"));
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .model_with_strategy("m", &["a", "b"], "priority"),
    );
    let (status, h, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-switchyard-profile"], "b");
    assert_eq!(h["x-switchyard-attempts"], "2");
    let p = wait_state(&server, "a", "cooldown", Duration::from_secs(5)).await;
    let last = p["last_error"].as_str().unwrap_or_default();
    assert!(
        last.contains("302") && last.contains("https://login.example.com/sso"),
        "{p}"
    );
}

/// An upstream that quotes the key it was sent, in a client error relayed as it is or in an error event
/// in the middle of a stream: the client never sees the key.
#[tokio::test]
async fn an_echoed_upstream_key_never_reaches_the_client() {
    const KEY: &str = "plainsecretvalue42";
    let a = MockUpstream::start_named("a").await;
    let key_line = format!("api_key: \"{KEY}\"");
    let server = Server::start(
        &ConfigBuilder::default()
            .profile_with("a", &a.base_url(), &[key_line.as_str()])
            .model("m", &["a"]),
    );
    let echo = serde_json::json!({"error": {"message": format!("The key {KEY} may not use this model"),
        "type": "invalid_request_error", "param": null, "code": "model_not_allowed"}});
    a.push(Reply::status(400, echo.to_string()));
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains(KEY), "{body}");
    assert!(error_of(&body)["message"]
        .as_str()
        .unwrap()
        .contains("[redacted]"));

    let event = format!(
        "data: {{\"error\":{{\"type\":\"server_error\",\"message\":\"key {KEY} was revoked\"}}}}\n\n"
    );
    a.push(Reply::events([CONTENT.to_owned(), event]));
    let (status, _, text) = chat(&server, &stream_body("m")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"content\":\"hi\""), "{text}");
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert_eq!(a.request_count(), 2);
    let p = admin_profile(&server, "a").await;
    assert!(!p.to_string().contains(KEY), "{p}");
}

// --- clients that leave ------------------------------------------------------------------------------

/// The value of `switchyard_attempts_total` for `profile` and `outcome` (0 when absent).
async fn attempts_metric(server: &Server, profile: &str, outcome: &str) -> u64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (p, o) = (
        format!("profile=\"{profile}\""),
        format!("outcome=\"{outcome}\""),
    );
    text.lines()
        .filter(|l| l.starts_with("switchyard_attempts_total{") && l.contains(&p) && l.contains(&o))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Polls until `profile` has a `cancelled` attempt; false after `within`.
async fn wait_cancelled(server: &Server, profile: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if attempts_metric(server, profile, "cancelled").await >= 1 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A client that gives up while the first profile hangs is not failed over to the second profile:
/// the attempt ends `cancelled` when the client leaves, long before the first-byte timeout.
#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_not_failed_over() {
    use switchyard_actors::store::Store;
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::Hang);
    let mut server = Server::start(&ConfigBuilder {
        // first_byte 5 s: the client leaves at 0.4 s.
        timeouts: ("2s".into(), "5s".into(), "5s".into()),
        ..ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .model_with_strategy("m", &["a", "b"], "priority")
    });
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let sent = impatient
        .post(server.url("/v1/chat/completions"))
        .header("x-request-id", "leaves-early")
        .json(&chat_body("m"))
        .send()
        .await;
    assert!(sent.is_err(), "the client was answered: {sent:?}");
    assert!(
        wait_cancelled(&server, "a", Duration::from_secs(3)).await,
        "no cancelled attempt within 3 s"
    );
    assert_eq!(b.request_count(), 0, "failed over for a client that left");
    server.terminate();
    let store = Store::open(&server.data_dir()).unwrap();
    let records = store.all_usage().unwrap();
    drop(store);
    let mine: Vec<_> = records
        .iter()
        .filter(|r| r.request_id == "leaves-early")
        .map(|r| (r.profile.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(mine, vec![("a", "cancelled")]);
}

/// A streaming client that disconnects after the first event: the upstream's connection is closed
/// within the same event gap (not one or two events later), and the attempt is recorded.
#[tokio::test]
async fn a_stream_whose_client_leaves_closes_the_upstream_at_once() {
    let gap = Duration::from_millis(300);
    let a = MockUpstream::start_named("a").await;
    a.push(Reply::SlowStream { gap });
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let mut resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(&stream_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(resp);
    let left = std::time::Instant::now();
    let deadline = left + Duration::from_secs(5);
    let end = loop {
        if let Some(end) = a.stream_ends().pop() {
            break end;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream stream never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!end.completed, "{end:?}");
    let after = end.at.saturating_duration_since(left);
    assert!(
        after < gap,
        "the upstream was closed {after:?} after the client left: {end:?}"
    );
    assert!(end.events_sent <= 2, "{end:?}");
    assert!(wait_cancelled(&server, "a", Duration::from_secs(3)).await);
}

// --- slow and deep request bodies ------------------------------------------------------------------

/// Sends a request head declaring a 100-byte body, then one byte every `every` (never the whole body);
/// returns the answer (head and JSON body), or `None` when none came within 5 s.
async fn slow_body(server: &Server, path: &str, every: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
        server.addr
    );
    write.write_all(head.as_bytes()).await.unwrap();
    let dribble = tokio::spawn(async move {
        // Stops at the first failed write: the server closed the connection.
        while write.write_all(b" ").await.is_ok() {
            tokio::time::sleep(every).await;
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}}")) {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
    })
    .await
    .ok()
    .flatten();
    dribble.abort();
    answer
}

/// A body that stalls longer than `server.body_idle_timeout`, or dribbles in for longer than
/// `server.body_timeout`, gets 408 instead of holding its connection open.
#[tokio::test]
async fn a_slow_request_body_gets_408() {
    let a = MockUpstream::start_named("a").await;
    let mut config = ConfigBuilder::default().profile("a", &a).model("m", &["a"]);
    config.extra_server_yaml = vec!["body_idle_timeout: 300ms".into(), "body_timeout: 1s".into()];
    let server = Server::start(&config);
    // Stalls after its first byte.
    let answer = slow_body(&server, "/auth/login", Duration::from_secs(30)).await;
    let answer = answer.unwrap_or_else(|| panic!("no answer within 5 s"));
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(answer.contains("stalled"), "{answer}");
    // A byte every 100 ms never stalls, but never finishes either.
    let started = std::time::Instant::now();
    let answer = slow_body(&server, "/v1/chat/completions", Duration::from_millis(100)).await;
    let answer = answer.unwrap_or_else(|| panic!("no answer within 5 s"));
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("took longer than 1s"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.request_count(), 0);
    // The server still answers a body that arrives in time.
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// A body nested deeper than the documented limit is refused with 400 naming the limit, on every JSON
/// route of the client API, and never reaches an upstream.
#[tokio::test]
async fn a_deeply_nested_body_is_refused_before_forwarding() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
    ] {
        let body = format!(
            r#"{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":{nested}}}],"input":"x","prompt":"x"}}"#
        );
        let resp = client()
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("128"), "{path}: {text}");
    }
    assert_eq!(a.request_count(), 0);
    // A body at ordinary depth still goes through.
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
}
