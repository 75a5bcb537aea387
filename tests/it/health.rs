//! Profile health as GET /admin/profiles shows it: each error class's state, exponential cooldowns,
//! billing and auth benches, admin reset, the circuit breaker and its single half-open probe, counters.

use std::time::{Duration, Instant, SystemTime};

use crate::support::*;

/// Adds profile `id` pointing at `mock`, with its literal key and extra lines such as `priority: 2`.
fn keyed(cfg: ConfigBuilder, id: &str, mock: &MockUpstream, extra: &[&str]) -> ConfigBuilder {
    let key = format!("api_key: \"sk-{id}-secret\"");
    let mut lines: Vec<&str> = vec![&key];
    lines.extend_from_slice(extra);
    cfg.profile_with(id, &mock.base_url(), &lines)
}

/// A server whose model `m` is served by profile `a` alone.
fn single(cfg: ConfigBuilder, a: &MockUpstream) -> Server {
    Server::start(&cfg.profile("a", a).model("m", &["a"]))
}

fn rfc3339(v: &serde_json::Value) -> SystemTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not an RFC 3339 string: {v}"));
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later
        .duration_since(earlier)
        .unwrap_or_else(|_| panic!("{later:?} is before {earlier:?}"))
}

/// Polls profile `id` until `pred` holds, or panics after `timeout`.
async fn wait_for(
    server: &Server,
    id: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let p = admin_profile(server, id).await;
        if pred(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "profile {id}: never {what}: {p}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_failures(server: &Server, id: &str, n: u64) -> serde_json::Value {
    wait_for(
        server,
        id,
        &format!("{n} consecutive failures"),
        Duration::from_secs(3),
        |p| p["consecutive_failures"] == n,
    )
    .await
}

async fn reset(server: &Server, id: &str, token: Option<&str>) -> (u16, String) {
    let (status, _, text) = server
        .post(&format!("/admin/profiles/{id}/reset"))
        .maybe_bearer(token)
        .send_text()
        .await;
    (status, text)
}

/// Makes the only profile of `m` fail once with `reply` and returns its admin object and the bounds
/// (low, high) of the cooldown it was given: the failure was applied between `before` and `after`.
async fn fail_once(
    server: &Server,
    mock: &MockUpstream,
    reply: Reply,
    consecutive: u64,
) -> (serde_json::Value, Duration, Duration) {
    mock.push(reply.clone());
    let before = SystemTime::now();
    let (status, _, body) = chat(server, &chat_body("m")).await;
    // 429 when the only profile was rate limited, the client slowing down as it would facing it;
    // 529 when it was overloaded.
    assert!(
        matches!(status, 502 | 504 | 429 | 529),
        "{reply:?} -> {status} {body}"
    );
    let p = wait_failures(server, "a", consecutive).await;
    let after = SystemTime::now();
    assert_eq!(p["state"], "cooldown", "{reply:?}: {p}");
    let until = rfc3339(&p["cooldown_until"]);
    // Under load the admin read may come late: the lower bound is then zero.
    let low = until.duration_since(after).unwrap_or(Duration::ZERO);
    (p, low, since(until, before))
}

/// `want` lies within [low, high], give or take the millisecond the admin API truncates.
fn assert_cooldown(low: Duration, high: Duration, want: Duration, what: &str) {
    let slack = Duration::from_millis(3);
    assert!(
        low <= want + slack && high + slack >= want,
        "{what}: cooldown between {low:?} and {high:?}, expected {want:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Rate limits and transient failures: cooldown
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_cools_down_for_the_retry_after_the_upstream_gave() {
    let a = MockUpstream::start_named("a").await;
    let server = single(ConfigBuilder::default(), &a);
    let (p, low, high) = fail_once(&server, &a, Reply::rate_limited(120), 1).await;
    // Retry-After 120 wins over cooldown.initial (1s).
    assert_cooldown(low, high, Duration::from_secs(120), "429 Retry-After: 120");
    assert!(
        p["last_error"].as_str().unwrap().contains("rate_limited"),
        "{p}"
    );
    assert_eq!(
        (p["requests"].as_u64(), p["failures"].as_u64()),
        (Some(1), Some(1))
    );
    // It is skipped while cooling: 503 without reaching the upstream.
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(a.request_count(), 1);
}

#[tokio::test]
async fn rate_limit_without_retry_after_follows_the_cooldown_schedule() {
    let a = MockUpstream::start_named("a").await;
    let server = single(
        ConfigBuilder {
            cooldown: ("500ms".into(), "5s".into()),
            ..ConfigBuilder::default()
        },
        &a,
    );
    let body = serde_json::json!({"error": {"message": "Rate limit reached", "type": "requests",
        "param": null, "code": "rate_limit_exceeded"}})
    .to_string();
    let (_, low, high) = fail_once(&server, &a, Reply::status(429, body), 1).await;
    assert_cooldown(
        low,
        high,
        Duration::from_millis(500),
        "429 without Retry-After",
    );
    wait_state(&server, "a", "healthy", Duration::from_secs(2)).await;
    let (status, h, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-switchyard-profile"], "a");
}

#[tokio::test]
async fn each_transient_failure_class_puts_the_profile_in_cooldown() {
    let cases: [(&str, Reply, u16, &str); 5] = [
        ("s500", Reply::server_error(), 502, "server: HTTP 500"),
        ("s529", Reply::overloaded(), 529, "server: HTTP 529"),
        ("reset", Reply::Reset, 502, "connect"),
        ("garbage", Reply::Garbage, 502, "server"),
        ("hang", Reply::Hang, 504, "timeout"),
    ];
    let mut mocks = Vec::new();
    let mut cfg = ConfigBuilder {
        cooldown: ("20s".into(), "1m".into()),
        timeouts: ("2s".into(), "800ms".into(), "5s".into()),
        ..ConfigBuilder::default()
    };
    for (id, reply, _, _) in &cases {
        let m = MockUpstream::start_named(id).await;
        m.push(reply.clone());
        cfg = cfg.profile(id, &m).model(&format!("m-{id}"), &[id]);
        mocks.push(m);
    }
    let server = Server::start(&cfg);
    for (id, _, want_status, want_error) in &cases {
        let (status, _, body) = chat(&server, &chat_body(&format!("m-{id}"))).await;
        assert_eq!(status, *want_status, "{id}: {body}");
        let p = wait_failures(&server, id, 1).await;
        assert_eq!(p["state"], "cooldown", "{id}: {p}");
        assert!(!p["cooldown_until"].is_null(), "{id}: {p}");
        let last = p["last_error"].as_str().unwrap_or_default();
        assert!(last.starts_with(want_error), "{id}: last_error {last:?}");
        assert_eq!(
            (p["requests"].as_u64(), p["failures"].as_u64()),
            (Some(1), Some(1)),
            "{id}"
        );
    }
}

#[tokio::test]
async fn transient_failures_back_off_exponentially_and_a_success_resets_the_schedule() {
    let a = MockUpstream::start_named("a").await;
    let server = single(
        ConfigBuilder {
            cooldown: ("400ms".into(), "5s".into()),
            ..ConfigBuilder::default()
        },
        &a,
    );
    let (_, low, high) = fail_once(&server, &a, Reply::server_error(), 1).await;
    assert_cooldown(low, high, Duration::from_millis(400), "first failure");
    wait_state(&server, "a", "healthy", Duration::from_secs(2)).await;
    // The second consecutive failure (another class of the same family) cools down twice as long.
    let (_, low, high) = fail_once(&server, &a, Reply::overloaded(), 2).await;
    assert_cooldown(low, high, Duration::from_millis(800), "second failure");
    wait_state(&server, "a", "healthy", Duration::from_secs(2)).await;
    // A success: healthy, no failures in a row, no cooldown.
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    let p = wait_failures(&server, "a", 0).await;
    assert_eq!(p["state"], "healthy", "{p}");
    assert!(p["cooldown_until"].is_null(), "{p}");
    // The schedule starts over.
    let (_, low, high) = fail_once(&server, &a, Reply::Reset, 1).await;
    assert_cooldown(
        low,
        high,
        Duration::from_millis(400),
        "first failure after a success",
    );
}

#[tokio::test]
async fn cooldown_doubling_is_capped_at_max() {
    let a = MockUpstream::start_named("a").await;
    let server = single(
        ConfigBuilder {
            cooldown: ("200ms".into(), "300ms".into()),
            ..ConfigBuilder::default()
        },
        &a,
    );
    for (n, want) in [(1, 200), (2, 300), (3, 300)] {
        let (_, low, high) = fail_once(&server, &a, Reply::server_error(), n).await;
        assert_cooldown(
            low,
            high,
            Duration::from_millis(want),
            &format!("failure {n}"),
        );
        wait_state(&server, "a", "healthy", Duration::from_secs(2)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Billing and auth: long benches, cleared by an admin reset
// ---------------------------------------------------------------------------------------------------------

async fn assert_billing_disabled_until_reset(reply: Reply) {
    let a = MockUpstream::start_named("a").await;
    let server = single(
        ConfigBuilder {
            billing: ("2h".into(), "24h".into()),
            cooldown: ("10ms".into(), "20ms".into()),
            ..ConfigBuilder::default()
        },
        &a,
    );
    a.push(reply.clone());
    let before = SystemTime::now();
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    let p = wait_state(&server, "a", "billing_disabled", Duration::from_secs(2)).await;
    let after = SystemTime::now();
    let until = rfc3339(&p["cooldown_until"]);
    assert_cooldown(
        until.duration_since(after).unwrap_or(Duration::ZERO),
        since(until, before),
        Duration::from_secs(2 * 3600),
        &format!("{reply:?}"),
    );
    assert!(p["last_error"].as_str().unwrap().contains("billing"), "{p}");
    // Not a short cooldown: still benched once cooldown.max has long passed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("billing_disabled"), "{body}");
    assert_eq!(a.request_count(), 1);
    // An admin reset brings it back.
    let (status, body) = reset(&server, "a", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let p = wait_state(&server, "a", "healthy", Duration::from_secs(2)).await;
    assert!(p["cooldown_until"].is_null(), "{p}");
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn payment_required_402_disables_billing_until_reset() {
    assert_billing_disabled_until_reset(Reply::payment_required()).await;
}

#[tokio::test]
async fn insufficient_quota_429_disables_billing_not_a_rate_limit_cooldown() {
    assert_billing_disabled_until_reset(Reply::insufficient_quota()).await;
}

#[tokio::test]
async fn billing_bench_doubles_on_consecutive_billing_failures() {
    let a = MockUpstream::start_named("a").await;
    let server = single(
        ConfigBuilder {
            billing: ("300ms".into(), "5s".into()),
            ..ConfigBuilder::default()
        },
        &a,
    );
    for (n, want) in [(1u64, 300u64), (2, 600)] {
        a.push(Reply::payment_required());
        let before = SystemTime::now();
        let (status, _, body) = chat(&server, &chat_body("m")).await;
        assert_eq!(status, 502, "{body}");
        let p = wait_failures(&server, "a", n).await;
        let after = SystemTime::now();
        assert_eq!(p["state"], "billing_disabled", "{p}");
        let until = rfc3339(&p["cooldown_until"]);
        assert_cooldown(
            until.duration_since(after).unwrap_or(Duration::ZERO),
            since(until, before),
            Duration::from_millis(want),
            &format!("billing failure {n}"),
        );
        wait_state(&server, "a", "healthy", Duration::from_secs(2)).await;
    }
}

async fn assert_auth_failed_until_reset(reply: Reply) {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let mut cfg = ConfigBuilder {
        cooldown: ("10ms".into(), "20ms".into()),
        billing: ("10ms".into(), "20ms".into()),
        breaker: (100, "10ms".into()),
        ..ConfigBuilder::default()
    };
    cfg = keyed(cfg, "a", &a, &["priority: 1"]);
    cfg = keyed(cfg, "b", &b, &["priority: 2"]);
    let server = Server::start(&cfg.model_with_strategy("m", &["a", "b"], "priority"));
    a.push(reply.clone());
    let (status, h, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-switchyard-profile"], "b");
    let p = wait_state(&server, "a", "auth_failed", Duration::from_secs(2)).await;
    assert!(p["cooldown_until"].is_null(), "{p}");
    assert!(p["last_error"].as_str().unwrap().contains("auth"), "{p}");
    // Time does not heal a bad credential: every timer in this config is long over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin_profile(&server, "a").await["state"], "auth_failed");
    for _ in 0..3 {
        let (status, h, _) = chat(&server, &chat_body("m")).await;
        assert_eq!(status, 200);
        assert_eq!(h["x-switchyard-profile"], "b");
        assert_eq!(h["x-switchyard-attempts"], "1");
    }
    assert_eq!(a.request_count(), 1);
    // A reset without the admin token is refused and changes nothing.
    let (status, body) = reset(&server, "a", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_of(&body)["type"], "authentication_error");
    assert_eq!(admin_profile(&server, "a").await["state"], "auth_failed");
    // With it, a is healthy and first again.
    let (status, body) = reset(&server, "a", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&server, "a", "healthy", Duration::from_secs(2)).await;
    let (status, h, _) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-switchyard-profile"], "a");
}

#[tokio::test]
async fn unauthorized_401_marks_auth_failed_until_reset() {
    assert_auth_failed_until_reset(Reply::unauthorized()).await;
}

#[tokio::test]
async fn forbidden_403_marks_auth_failed_until_reset() {
    let body =
        serde_json::json!({"error": {"message": "Your key is not allowed to use this model.",
        "type": "permission_error", "param": null, "code": "forbidden"}})
        .to_string();
    assert_auth_failed_until_reset(Reply::status(403, body)).await;
}

#[tokio::test]
async fn reset_needs_the_admin_token_and_a_known_profile() {
    let a = MockUpstream::start_named("a").await;
    let server = single(ConfigBuilder::default(), &a);
    a.push(Reply::unauthorized());
    let (status, _, _) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502);
    wait_state(&server, "a", "auth_failed", Duration::from_secs(2)).await;
    for token in [None, Some("wrong-token")] {
        let (status, body) = reset(&server, "a", token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        error_of(&body);
    }
    assert_eq!(admin_profile(&server, "a").await["state"], "auth_failed");
    let (status, body) = reset(&server, "nope", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_of(&body)["type"], "not_found_error");
    let (status, body) = reset(&server, "a", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    wait_state(&server, "a", "healthy", Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------------------------------------

/// Threshold 3, open for 500ms; cooldowns tiny so they do not mask the breaker. Model `m` is served by a
/// alone, model `m2` by a then b (priority).
async fn breaker_server() -> (Server, MockUpstream, MockUpstream) {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.set_default(Reply::server_error());
    let mut cfg = ConfigBuilder {
        cooldown: ("10ms".into(), "20ms".into()),
        breaker: (3, "500ms".into()),
        ..ConfigBuilder::default()
    };
    cfg = keyed(cfg, "a", &a, &["priority: 1"]);
    cfg = keyed(cfg, "b", &b, &["priority: 2"]);
    let cfg = cfg
        .model_with_strategy("m", &["a"], "priority")
        .model_with_strategy("m2", &["a", "b"], "priority");
    (Server::start(&cfg), a, b)
}

/// Fails `a` exactly three times in a row (waiting out each short cooldown): the breaker opens on the third.
async fn trip(server: &Server, a: &MockUpstream) -> serde_json::Value {
    for n in 1..=3u64 {
        wait_state(server, "a", "healthy", Duration::from_secs(2)).await;
        let (status, _, body) = chat(server, &chat_body("m")).await;
        assert_eq!(status, 502, "failure {n}: {body}");
        let p = wait_failures(server, "a", n).await;
        if n < 3 {
            assert_ne!(p["state"], "open", "opened after {n} failures: {p}");
        } else {
            assert_eq!(p["state"], "open", "not open after 3 failures: {p}");
            assert_eq!(a.request_count(), 3);
            return p;
        }
    }
    unreachable!()
}

#[tokio::test]
async fn breaker_opens_after_the_threshold_and_the_profile_is_skipped() {
    let (server, a, b) = breaker_server().await;
    let p = trip(&server, &a).await;
    // cooldown_until shows when the open period ends (~500ms ahead).
    let until = rfc3339(&p["cooldown_until"]);
    let left = until
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    assert!(left <= Duration::from_millis(500), "{p}");
    // Open outlasts the 20ms cooldown: still open, skipped without a request.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (status, h, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 503, "{body}");
    let e = error_of(&body);
    assert_eq!(e["type"], "no_available_profile");
    assert!(
        e["message"].as_str().unwrap().contains("a: skipped, open"),
        "{body}"
    );
    assert!(h.contains_key("retry-after"));
    let (status, h, body) = chat(&server, &chat_body("m2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-switchyard-profile"], "b");
    assert_eq!(h["x-switchyard-attempts"], "1");
    assert_eq!((a.request_count(), b.request_count()), (3, 1));
    // An admin reset closes it at once.
    let (status, body) = reset(&server, "a", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let p = wait_state(&server, "a", "healthy", Duration::from_secs(1)).await;
    assert_eq!(p["consecutive_failures"], 0, "{p}");
    a.set_default(Reply::Echo);
    let (status, h, body) = chat(&server, &chat_body("m2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h["x-switchyard-profile"], "a");
}

#[tokio::test]
async fn half_open_admits_exactly_one_probe_and_its_success_closes_the_breaker() {
    let (server, a, _b) = breaker_server().await;
    trip(&server, &a).await;
    a.set_default(Reply::Delay(
        Duration::from_millis(800),
        Box::new(Reply::Echo),
    ));
    wait_state(&server, "a", "half_open", Duration::from_secs(2)).await;
    let url = server.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let resp = client()
                    .post(&url)
                    .json(&chat_body("m"))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok, 1, "{results:?}");
    assert_eq!(refused.len(), 5, "{results:?}");
    for (_, body) in &refused {
        assert_eq!(error_of(body)["type"], "no_available_profile");
        assert!(body.contains("half_open"), "{body}");
    }
    assert_eq!(
        a.request_count(),
        4,
        "exactly one probe reached the upstream"
    );
    // The probe succeeded: closed, healthy, and traffic flows again.
    let p = wait_state(&server, "a", "healthy", Duration::from_secs(2)).await;
    assert_eq!(p["consecutive_failures"], 0, "{p}");
    a.set_default(Reply::Echo);
    for _ in 0..3 {
        let (status, _, body) = chat(&server, &chat_body("m")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(a.request_count(), 7);
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker() {
    let (server, a, _b) = breaker_server().await;
    trip(&server, &a).await;
    wait_state(&server, "a", "half_open", Duration::from_secs(2)).await;
    // The probe fails (a still answers 500).
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    let p = wait_state(&server, "a", "open", Duration::from_secs(1)).await;
    let until = rfc3339(&p["cooldown_until"]);
    assert!(until > SystemTime::now(), "{p}");
    // Open again: skipped without a request.
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(a.request_count(), 4);
    // After another open period, a successful probe closes it.
    a.set_default(Reply::Echo);
    wait_state(&server, "a", "half_open", Duration::from_secs(2)).await;
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    let p = wait_state(&server, "a", "healthy", Duration::from_secs(1)).await;
    assert_eq!(p["consecutive_failures"], 0, "{p}");
}

// ---------------------------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_and_failures_count_attempts() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let mut cfg = ConfigBuilder {
        cooldown: ("50ms".into(), "100ms".into()),
        ..ConfigBuilder::default()
    };
    cfg = keyed(cfg, "a", &a, &["priority: 1"]);
    cfg = keyed(cfg, "b", &b, &["priority: 2"]);
    let server = Server::start(&cfg.model_with_strategy("m", &["a", "b"], "priority"));
    for p in admin_profiles(&server).await {
        assert_eq!(
            (p["requests"].as_u64(), p["failures"].as_u64()),
            (Some(0), Some(0)),
            "{p}"
        );
    }
    // 1: a fails, b answers.
    a.push(Reply::server_error());
    let (status, _, _) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200);
    // The failure reaches a's actor after the answer (a message): until it has, `healthy` is the
    // state from before it, and request 2 would meet a cooling down.
    wait_for(
        &server,
        "a",
        "counted its failure",
        Duration::from_secs(2),
        |p| p["consecutive_failures"] == 1,
    )
    .await;
    wait_state(&server, "a", "healthy", Duration::from_secs(2)).await;
    // 2: a answers. 3: a returns the client's error (an attempt, not a failure).
    let (status, _, _) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200);
    a.push(Reply::context_length());
    let (status, _, _) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 400);
    let pa = admin_profile(&server, "a").await;
    let pb = admin_profile(&server, "b").await;
    assert_eq!(
        (pa["requests"].as_u64(), pa["failures"].as_u64()),
        (Some(3), Some(1)),
        "{pa}"
    );
    assert_eq!(
        (pb["requests"].as_u64(), pb["failures"].as_u64()),
        (Some(1), Some(0)),
        "{pb}"
    );
    assert_eq!(pa["consecutive_failures"], 0, "{pa}");
    assert_eq!((a.request_count(), b.request_count()), (3, 1));
    for p in [&pa, &pb] {
        assert_eq!(p["provider"], "openai", "{p}");
        assert_eq!(p["state"], "healthy", "{p}");
    }
}
