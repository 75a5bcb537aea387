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
