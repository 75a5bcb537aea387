//! Routing: strategies, sticky sessions, failover within a request, client errors passed through, and the
//! errors a client gets when no profile is left.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::HeaderMap;

use crate::support::*;

/// Adds profile `id` pointing at `mock`, with its literal key and extra lines such as `priority: 2`.
fn keyed(cfg: ConfigBuilder, id: &str, mock: &MockUpstream, extra: &[&str]) -> ConfigBuilder {
    let key = format!("api_key: \"sk-{id}-secret\"");
    let mut lines: Vec<&str> = vec![&key];
    lines.extend_from_slice(extra);
    cfg.profile_with(id, &mock.base_url(), &lines)
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn profile_of(headers: &HeaderMap) -> String {
    header(headers, "x-switchyard-profile")
}

fn attempts_of(headers: &HeaderMap) -> String {
    header(headers, "x-switchyard-attempts")
}

fn content_of(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {body}"))
        .to_owned()
}

/// A chat request for `model` with an optional `X-Session-Id`; asserts 200 and returns the profile.
async fn chat_session(server: &Server, model: &str, session: Option<&str>) -> String {
    let headers: Vec<(&str, &str)> = session.map(|s| ("x-session-id", s)).into_iter().collect();
    let (status, h, body) = post(server, "/v1/chat/completions", &chat_body(model), &headers).await;
    assert_eq!(status, 200, "{body}");
    profile_of(&h)
}

/// Sends `n` chat requests for `model`, `concurrency` at a time; the answering profile of each (200 only).
async fn spread(server: &Server, model: &str, n: usize, concurrency: usize) -> Vec<String> {
    let http = client();
    let url = server.url("/v1/chat/completions");
    let body = chat_body(model);
    futures_util::stream::iter(0..n)
        .map(|_| {
            let req = http.post(&url).json(&body);
            async move {
                let resp = req.send().await.expect("send");
                let status = resp.status().as_u16();
                let profile = profile_of(resp.headers());
                let text = resp.text().await.expect("body");
                assert_eq!(status, 200, "{text}");
                profile
            }
        })
        .buffered(concurrency)
        .collect()
        .await
}

fn tally(picks: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for p in picks {
        *m.entry(p.clone()).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn round_robin_spreads_exactly_evenly_in_rotation() {
    let (a, b, c) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
        MockUpstream::start_named("c").await,
    );
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .profile("c", &c)
            .model("m", &["a", "b", "c"]),
    );
    let picks = spread(&server, "m", 30, 1).await;
    let t = tally(&picks);
    for id in ["a", "b", "c"] {
        assert_eq!(t.get(id).copied(), Some(10), "{picks:?}");
    }
    // Sequential requests rotate: never the same twice in a row, and a period of 3.
    for i in 0..picks.len() - 3 {
        assert_ne!(picks[i], picks[i + 1], "{picks:?}");
        assert_eq!(picks[i], picks[i + 3], "{picks:?}");
    }
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (10, 10, 10)
    );
    // Concurrent requests are spread exactly as evenly.
    let picks = spread(&server, "m", 30, 10).await;
    let t = tally(&picks);
    for id in ["a", "b", "c"] {
        assert_eq!(t.get(id).copied(), Some(10), "{picks:?}");
    }
}

#[tokio::test]
async fn priority_per_model_prefers_lowest_value_and_falls_to_the_next() {
    let (a, b, c) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
        MockUpstream::start_named("c").await,
    );
    let mut cfg = ConfigBuilder {
        cooldown: ("500ms".into(), "1s".into()),
        ..ConfigBuilder::default()
    };
    // Global strategy stays round_robin: the model's own `strategy:` must win.
    cfg = keyed(cfg, "a", &a, &["priority: 2"]);
    cfg = keyed(cfg, "b", &b, &["priority: 1"]);
    cfg = keyed(cfg, "c", &c, &["priority: 3"]);
    let cfg = cfg
        .model_with_strategy("prio", &["a", "b", "c"], "priority")
        .model("rr", &["a", "b", "c"]);
    let server = Server::start(&cfg);

    let picks = spread(&server, "prio", 10, 1).await;
    assert!(picks.iter().all(|p| p == "b"), "{picks:?}");
    assert_eq!((a.request_count(), c.request_count()), (0, 0));

    // The other model uses the global round_robin.
    let picks = spread(&server, "rr", 3, 1).await;
    assert_eq!(tally(&picks).len(), 3, "{picks:?}");

    // b fails: the same request goes to the next priority, a.
    b.push(Reply::server_error());
    let (status, h, body) = chat(&server, &chat_body("prio")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(profile_of(&h), "a");
    assert_eq!(attempts_of(&h), "2");
    // While b cools down, a answers first.
    let (status, h, body) = chat(&server, &chat_body("prio")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (profile_of(&h).as_str(), attempts_of(&h).as_str()),
        ("a", "1")
    );
    // Once b is back, it is first again; c (priority 3) was never needed.
    wait_state(&server, "b", "healthy", Duration::from_secs(3)).await;
    let picks = spread(&server, "prio", 3, 1).await;
    assert!(picks.iter().all(|p| p == "b"), "{picks:?}");
    assert_eq!(c.request_count(), 1, "c only saw the round_robin request");
}

#[tokio::test]
async fn priority_from_the_routing_section_applies_to_every_model() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let mut cfg = ConfigBuilder {
        strategy: "priority".into(),
        ..ConfigBuilder::default()
    };
    cfg = keyed(cfg, "a", &a, &["priority: 5"]);
    cfg = keyed(cfg, "b", &b, &["priority: 1"]);
    let server = Server::start(&cfg.model("m", &["a", "b"]));
    let picks = spread(&server, "m", 8, 4).await;
    assert!(picks.iter().all(|p| p == "b"), "{picks:?}");
    assert_eq!(a.request_count(), 0);
}

#[tokio::test]
async fn random_gives_every_profile_a_roughly_even_share() {
    let (a, b, c) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
        MockUpstream::start_named("c").await,
    );
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .profile("c", &c)
            .model_with_strategy("m", &["a", "b", "c"], "random"),
    );
    // In order: a random pick repeats itself sometimes (round robin never would).
    let mut picks = spread(&server, "m", 60, 1).await;
    assert!(
        picks.windows(2).any(|w| w[0] == w[1]),
        "60 picks without a repeat is not random: {picks:?}"
    );
    picks.extend(spread(&server, "m", 240, 16).await);
    let t = tally(&picks);
    // Expected 100 each (sd ~8): 60..140 is far outside chance.
    for id in ["a", "b", "c"] {
        let n = t.get(id).copied().unwrap_or(0);
        assert!((60..=140).contains(&n), "{id} got {n} of 300: {t:?}");
    }
}

#[tokio::test]
async fn weighted_share_follows_the_weights() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let mut cfg = ConfigBuilder {
        strategy: "weighted".into(),
        ..ConfigBuilder::default()
    };
    cfg = keyed(cfg, "a", &a, &["weight: 1"]);
    cfg = keyed(cfg, "b", &b, &["weight: 3"]);
    let server = Server::start(&cfg.model("m", &["a", "b"]));
    let picks = spread(&server, "m", 400, 16).await;
    let t = tally(&picks);
    let na = t.get("a").copied().unwrap_or(0);
    let nb = t.get("b").copied().unwrap_or(0);
    assert_eq!(na + nb, 400);
    // Expected 100 / 300 (sd ~8.7): 66..134 is about four sd either way; even would be 200.
    assert!((66..=134).contains(&na), "a got {na}, b got {nb}");
    assert_eq!((a.request_count(), b.request_count()), (na, nb));
}

// ---------------------------------------------------------------------------------------------------------
// Sticky sessions
// ---------------------------------------------------------------------------------------------------------

async fn three_profile_server(
    tweak: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> (Server, [MockUpstream; 3]) {
    let mocks = [
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
        MockUpstream::start_named("c").await,
    ];
    let cfg = ConfigBuilder::default()
        .profile("a", &mocks[0])
        .profile("b", &mocks[1])
        .profile("c", &mocks[2])
        .model("m", &["a", "b", "c"]);
    (Server::start(&tweak(cfg)), mocks)
}

#[tokio::test]
async fn session_header_pins_each_session_and_sessions_spread() {
    let (server, _mocks) = three_profile_server(|c| c).await;
    let sessions: Vec<String> = (0..6).map(|i| format!("session-{i}")).collect();
    let mut pinned = Vec::new();
    for s in &sessions {
        pinned.push(chat_session(&server, "m", Some(s)).await);
    }
    // Different sessions spread over the profiles (round robin: two each).
    let t = tally(&pinned);
    assert_eq!(t.len(), 3, "{pinned:?}");
    // Later requests of each session keep their profile, in an order a rotation would not reproduce.
    for (s, p) in sessions.iter().zip(&pinned).rev() {
        assert_eq!(&chat_session(&server, "m", Some(s)).await, p, "session {s}");
    }
    for (s, p) in sessions.iter().zip(&pinned) {
        for _ in 0..2 {
            assert_eq!(&chat_session(&server, "m", Some(s)).await, p, "session {s}");
        }
    }
}

#[tokio::test]
async fn body_user_is_the_session_when_there_is_no_header_and_the_header_wins() {
    let (server, _mocks) = three_profile_server(|c| c).await;
    let with_user = |u: &str| {
        let mut b = chat_body("m");
        b["user"] = serde_json::json!(u);
        b
    };
    let mut first = Vec::new();
    for u in ["user-1", "user-2", "user-3"] {
        let (status, h, body) = chat(&server, &with_user(u)).await;
        assert_eq!(status, 200, "{body}");
        first.push(profile_of(&h));
    }
    assert_eq!(tally(&first).len(), 3, "{first:?}");
    // Reversed, so that a plain rotation would not give the same answers.
    for (u, p) in ["user-1", "user-2", "user-3"].iter().zip(&first).rev() {
        for _ in 0..2 {
            let (_, h, _) = chat(&server, &with_user(u)).await;
            assert_eq!(&profile_of(&h), p, "user {u}");
        }
    }
    // With a header, the body's user is not the key: same header, different users, same profile.
    let hdr = [("x-session-id", "hdr-session")];
    let (_, h1, _) = post(&server, "/v1/chat/completions", &with_user("x-1"), &hdr).await;
    for u in ["x-2", "x-3", "x-4"] {
        let (_, h, _) = post(&server, "/v1/chat/completions", &with_user(u), &hdr).await;
        assert_eq!(profile_of(&h), profile_of(&h1), "user {u}");
    }
}

#[tokio::test]
async fn without_sticky_sessions_a_session_is_not_pinned() {
    let (server, _mocks) = three_profile_server(|c| ConfigBuilder { sticky: false, ..c }).await;
    let mut picks = Vec::new();
    for _ in 0..6 {
        picks.push(chat_session(&server, "m", Some("same-session")).await);
    }
    let t = tally(&picks);
    assert_eq!(t.len(), 3, "the session should rotate: {picks:?}");
}

#[tokio::test]
async fn a_pinned_session_moves_only_when_its_profile_fails_and_then_stays() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let server = Server::start(&ConfigBuilder {
        cooldown: ("100ms".into(), "1s".into()),
        ..ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .model("m", &["a", "b"])
    });
    // A fresh round robin starts at a.
    assert_eq!(chat_session(&server, "m", Some("s")).await, "a");
    for _ in 0..3 {
        assert_eq!(chat_session(&server, "m", Some("s")).await, "a");
    }
    // a fails: the session's request fails over to b.
    a.push(Reply::server_error());
    let headers = [("x-session-id", "s")];
    let (status, h, body) = post(&server, "/v1/chat/completions", &chat_body("m"), &headers).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (profile_of(&h).as_str(), attempts_of(&h).as_str()),
        ("b", "2")
    );
    // a recovers, and takes session-less traffic again, but the session stays on b.
    wait_state(&server, "a", "healthy", Duration::from_secs(3)).await;
    let free = spread(&server, "m", 4, 1).await;
    assert!(free.iter().any(|p| p == "a"), "{free:?}");
    for _ in 0..4 {
        assert_eq!(chat_session(&server, "m", Some("s")).await, "b");
    }
}

#[tokio::test]
async fn a_session_pin_expires_after_the_ttl() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let ttl = Duration::from_millis(500);
    let server = Server::start(&ConfigBuilder {
        sticky_ttl: "500ms".into(),
        ..ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .model("m", &["a", "b"])
    });
    // Each fresh pick of the round robin alternates a, b, a...; a live pin repeats the last one. Timing is
    // judged from the client's side: a gap surely shorter than the ttl must keep the pin, a gap surely
    // longer must lose it (under heavy load a request may take long enough to be neither).
    let mut current = String::new();
    let mut prev: Option<(Instant, Instant)> = None;
    let (mut kept, mut expired) = (0, 0);
    for pause in [0, 0, 0, 800, 0, 0, 800, 0] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let start = Instant::now();
        let got = chat_session(&server, "m", Some("s")).await;
        let end = Instant::now();
        match prev {
            None => assert_eq!(got, "a", "a fresh round robin starts at a"),
            Some((prev_start, prev_end)) => {
                if end - prev_start < ttl {
                    assert_eq!(got, current, "the pin should hold after a short pause");
                    kept += 1;
                } else if start - prev_end > ttl {
                    assert_ne!(got, current, "the pin should have expired after {pause}ms");
                    expired += 1;
                }
            }
        }
        current = got;
        prev = Some((start, end));
    }
    assert_eq!(expired, 2);
    assert!(kept > 0, "every request was too slow to judge the pin");
    assert_eq!(a.request_count() + b.request_count(), 8);
}

// ---------------------------------------------------------------------------------------------------------
// Failover within one request
// ---------------------------------------------------------------------------------------------------------

/// Profile a (priority 1) answers `reply`, b (priority 2) the echo: the client must get b's answer.
async fn assert_fails_over(reply: Reply, timeouts: Option<(&str, &str, &str)>) {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(reply.clone());
    let mut cfg = ConfigBuilder::default();
    if let Some((c, f, i)) = timeouts {
        cfg.timeouts = (c.into(), f.into(), i.into());
    }
    cfg = keyed(cfg, "a", &a, &["priority: 1"]);
    cfg = keyed(cfg, "b", &b, &["priority: 2"]);
    let server = Server::start(&cfg.model_with_strategy("m", &["a", "b"], "priority"));
    let (status, h, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{reply:?}: {body}");
    assert_eq!(profile_of(&h), "b", "{reply:?}");
    assert_eq!(attempts_of(&h), "2", "{reply:?}");
    assert_eq!(content_of(&body), "mock reply from b");
    assert_eq!(a.request_count(), 1, "{reply:?}");
    assert_eq!(b.request_count(), 1, "{reply:?}");
    // Both attempts carried the client's request, each with its own profile's key.
    assert_eq!(a.requests()[0].bearer(), Some("sk-a-secret"));
    assert_eq!(b.requests()[0].bearer(), Some("sk-b-secret"));
    assert_eq!(
        b.requests()[0].json()["messages"],
        chat_body("m")["messages"]
    );
}

#[tokio::test]
async fn fails_over_on_server_error() {
    assert_fails_over(Reply::server_error(), None).await;
}

#[tokio::test]
async fn fails_over_on_overloaded_529() {
    assert_fails_over(Reply::overloaded(), None).await;
}

#[tokio::test]
async fn fails_over_on_rate_limit() {
    assert_fails_over(Reply::rate_limited(30), None).await;
}

#[tokio::test]
async fn fails_over_on_payment_required() {
    assert_fails_over(Reply::payment_required(), None).await;
}

#[tokio::test]
async fn fails_over_on_insufficient_quota() {
    assert_fails_over(Reply::insufficient_quota(), None).await;
}

#[tokio::test]
async fn fails_over_on_unauthorized() {
    assert_fails_over(Reply::unauthorized(), None).await;
}

#[tokio::test]
async fn fails_over_on_first_byte_timeout() {
    assert_fails_over(Reply::Hang, Some(("2s", "800ms", "5s"))).await;
}

#[tokio::test]
async fn fails_over_on_connection_reset() {
    assert_fails_over(Reply::Reset, None).await;
}

#[tokio::test]
async fn fails_over_on_a_garbage_200_body() {
    assert_fails_over(Reply::Garbage, None).await;
}

#[tokio::test]
async fn fails_over_when_a_profile_cannot_be_reached() {
    let b = MockUpstream::start_named("b").await;
    // A port nobody listens on: bind one, note it, drop it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = ConfigBuilder::default().profile_with(
        "a",
        &format!("http://{dead}/v1"),
        &["api_key: \"sk-a-secret\"", "priority: 1"],
    );
    cfg = keyed(cfg, "b", &b, &["priority: 2"]);
    let server = Server::start(&cfg.model_with_strategy("m", &["a", "b"], "priority"));
    let (status, h, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (profile_of(&h).as_str(), attempts_of(&h).as_str()),
        ("b", "2")
    );
}

/// Transport failures keep their classes in what the client is told: a refused port is `connect`,
/// and an HTTPS upstream whose TLS handshake never finishes is a `timeout` within the connect timeout
/// (it covers the handshake, not only TCP), long before the first-byte timeout.
#[tokio::test]
async fn a_refused_port_is_connect_and_a_stuck_tls_handshake_is_a_connect_timeout() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // Accepts TCP connections and never says a word, so a client hello gets no answer.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = stuck.accept().await {
            open.push(sock);
        }
    });
    let cfg = ConfigBuilder {
        timeouts: ("400ms".into(), "20s".into(), "20s".into()),
        ..ConfigBuilder::default()
    };
    let cfg = cfg
        .profile_with(
            "dead",
            &format!("http://{dead}/v1"),
            &["api_key: \"sk-dead-secret\"", "priority: 1"],
        )
        .profile_with(
            "stuck",
            &format!("https://{stuck_addr}/v1"),
            &["api_key: \"sk-stuck-secret\"", "priority: 2"],
        );
    let server = Server::start(&cfg.model_with_strategy("m", &["dead", "stuck"], "priority"));
    let started = Instant::now();
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    let message = error_of(&body)["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("dead: connect (cannot connect)"),
        "{message}"
    );
    assert!(message.contains("stuck: timeout (timed out)"), "{message}");
    assert!(!message.contains("secret"), "{message}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    held.abort();
}

#[tokio::test]
async fn max_attempts_limits_the_profiles_tried() {
    let (a, b, c) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
        MockUpstream::start_named("c").await,
    );
    a.set_default(Reply::server_error());
    b.set_default(Reply::server_error());
    // c would answer: only max_attempts keeps the request from reaching it.
    let mut cfg = ConfigBuilder {
        max_attempts: 2,
        ..ConfigBuilder::default()
    };
    cfg = keyed(cfg, "a", &a, &["priority: 1"]);
    cfg = keyed(cfg, "b", &b, &["priority: 2"]);
    cfg = keyed(cfg, "c", &c, &["priority: 3"]);
    let server = Server::start(&cfg.model_with_strategy("m", &["a", "b", "c"], "priority"));
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    let e = error_of(&body);
    assert_eq!(e["type"], "upstream_error", "{body}");
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn max_attempts_one_means_no_failover() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::server_error());
    let mut cfg = ConfigBuilder {
        max_attempts: 1,
        ..ConfigBuilder::default()
    };
    cfg = keyed(cfg, "a", &a, &["priority: 1"]);
    cfg = keyed(cfg, "b", &b, &["priority: 2"]);
    let server = Server::start(&cfg.model_with_strategy("m", &["a", "b"], "priority"));
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!((a.request_count(), b.request_count()), (1, 0));
}

// ---------------------------------------------------------------------------------------------------------
// Client errors: returned as they are, no failover, no harm to the profile
// ---------------------------------------------------------------------------------------------------------

async fn assert_client_error_passes_through(reply: Reply) {
    let Reply::Status {
        status: want_status,
        body: want_body,
        ..
    } = reply.clone()
    else {
        panic!("a status reply")
    };
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(reply);
    let mut cfg = ConfigBuilder::default();
    cfg = keyed(cfg, "a", &a, &["priority: 1"]);
    cfg = keyed(cfg, "b", &b, &["priority: 2"]);
    let server = Server::start(&cfg.model_with_strategy("m", &["a", "b"], "priority"));
    let (status, h, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body, want_body);
    assert_eq!(
        (profile_of(&h).as_str(), attempts_of(&h).as_str()),
        ("a", "1")
    );
    assert_eq!((a.request_count(), b.request_count()), (1, 0));
    let p = admin_profile(&server, "a").await;
    assert_eq!(p["state"], "healthy", "{p}");
    assert_eq!(p["consecutive_failures"], 0, "{p}");
    assert_eq!(p["failures"], 0, "{p}");
    assert!(p["cooldown_until"].is_null(), "{p}");
    // The next request goes to a again.
    let (status, h, _) = chat(&server, &chat_body("m")).await;
    assert_eq!((status, profile_of(&h).as_str()), (200, "a"));
}

#[tokio::test]
async fn context_length_400_is_returned_as_is_without_failover() {
    assert_client_error_passes_through(Reply::context_length()).await;
}

#[tokio::test]
async fn upstream_404_is_returned_as_is_without_failover() {
    let body = serde_json::json!({"error": {
        "message": "The model `gpt-x` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": null, "code": "model_not_found"}})
    .to_string();
    assert_client_error_passes_through(Reply::status(404, body)).await;
}

// ---------------------------------------------------------------------------------------------------------
// When nothing is left
// ---------------------------------------------------------------------------------------------------------

fn two_priority_profiles(cfg: ConfigBuilder, a: &MockUpstream, b: &MockUpstream) -> ConfigBuilder {
    let cfg = keyed(cfg, "a", a, &["priority: 1"]);
    keyed(cfg, "b", b, &["priority: 2"]).model_with_strategy("m", &["a", "b"], "priority")
}

#[tokio::test]
async fn no_usable_profile_gives_503_naming_each_profile_and_its_state() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::payment_required());
    b.push(Reply::unauthorized());
    let server = Server::start(&two_priority_profiles(ConfigBuilder::default(), &a, &b));
    // Both tried and both failed: 502, naming both failures.
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    let e = error_of(&body);
    assert_eq!(e["type"], "upstream_error");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("a: billing"), "{msg}");
    assert!(msg.contains("b: auth"), "{msg}");

    wait_state(&server, "a", "billing_disabled", Duration::from_secs(2)).await;
    wait_state(&server, "b", "auth_failed", Duration::from_secs(2)).await;
    // Now none can be tried: 503, nothing sent upstream.
    let (status, h, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 503, "{body}");
    let e = error_of(&body);
    assert_eq!(e["type"], "no_available_profile", "{body}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("a: skipped, billing_disabled"), "{msg}");
    assert!(msg.contains("b: skipped, auth_failed"), "{msg}");
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
}

#[tokio::test]
async fn every_profile_cooling_down_gives_503() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::rate_limited(60));
    b.push(Reply::server_error());
    let server = Server::start(&ConfigBuilder {
        cooldown: ("30s".into(), "5m".into()),
        ..two_priority_profiles(ConfigBuilder::default(), &a, &b)
    });
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    wait_state(&server, "a", "cooldown", Duration::from_secs(2)).await;
    wait_state(&server, "b", "cooldown", Duration::from_secs(2)).await;
    let (status, h, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 503, "{body}");
    let msg = error_of(&body)["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("a: skipped, cooldown"), "{msg}");
    assert!(msg.contains("b: skipped, cooldown"), "{msg}");
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
}

#[tokio::test]
async fn all_tried_and_failed_gives_502_naming_each_failure() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::server_error());
    b.push(Reply::overloaded());
    let server = Server::start(&two_priority_profiles(ConfigBuilder::default(), &a, &b));
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    let e = error_of(&body);
    assert_eq!(e["type"], "upstream_error", "{body}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("a: server") && msg.contains("500"), "{msg}");
    assert!(msg.contains("b: server") && msg.contains("529"), "{msg}");
    // The upstream's secrets never leak into the message.
    assert!(
        !msg.contains("sk-a-secret") && !msg.contains("sk-b-secret"),
        "{msg}"
    );
}

#[tokio::test]
async fn last_failure_a_timeout_gives_504() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::server_error());
    b.push(Reply::Hang);
    let cfg = ConfigBuilder {
        timeouts: ("2s".into(), "800ms".into(), "5s".into()),
        ..ConfigBuilder::default()
    };
    let server = Server::start(&two_priority_profiles(cfg, &a, &b));
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 504, "{body}");
    let e = error_of(&body);
    assert_eq!(e["type"], "timeout", "{body}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("a: server"), "{msg}");
    assert!(msg.contains("b: timeout"), "{msg}");
}

#[tokio::test]
async fn a_timeout_followed_by_another_failure_gives_502() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::Hang);
    b.push(Reply::server_error());
    let cfg = ConfigBuilder {
        timeouts: ("2s".into(), "800ms".into(), "5s".into()),
        ..ConfigBuilder::default()
    };
    let server = Server::start(&two_priority_profiles(cfg, &a, &b));
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    let e = error_of(&body);
    assert_eq!(e["type"], "upstream_error", "{body}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("a: timeout") && msg.contains("b: server"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_profile_at_its_provider_rpm_is_skipped_without_burning_a_429() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let cfg = ConfigBuilder::default()
        .profile_with(
            "a",
            &a.base_url(),
            &[
                "api_key: \"sk-a-secret\"",
                "priority: 0",
                "limits: {rpm: 3}",
            ],
        )
        .profile_with(
            "b",
            &b.base_url(),
            &["api_key: \"sk-b-secret\"", "priority: 1"],
        )
        .model_with_strategy("m", &["a", "b"], "priority");
    let server = Server::start(&cfg);
    let mut answered_by = Vec::new();
    for _ in 0..5 {
        let (status, headers, body) = chat(&server, &chat_body("m")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-switchyard-attempts"], "1");
        answered_by.push(headers["x-switchyard-profile"].to_str().unwrap().to_owned());
    }
    // The minute may turn during the test and refill a's budget; a never gets more than 3 in one minute.
    assert!(
        a.request_count() >= 3 && b.request_count() >= 1,
        "{answered_by:?}"
    );
    assert_eq!(answered_by[..3], ["a", "a", "a"]);
    assert_eq!(admin_profile(&server, "a").await["failures"], 0);

    // With only the limited profile, the client is told why.
    let solo = Server::start(
        &ConfigBuilder::default()
            .profile_with(
                "a",
                &a.base_url(),
                &["api_key: \"sk-a-secret\"", "limits: {rpm: 1}"],
            )
            .model("m", &["a"]),
    );
    assert_eq!(chat(&solo, &chat_body("m")).await.0, 200);
    let (status, _, body) = chat(&solo, &chat_body("m")).await;
    if status == 503 {
        let e = error_of(&body);
        assert!(
            e["message"].as_str().unwrap().contains("per-minute limit"),
            "{body}"
        );
    } else {
        // Only if the minute turned between the two requests.
        assert_eq!(status, 200, "{body}");
    }
}
