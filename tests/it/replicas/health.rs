//! Profile health: a cooldown seen by one replica is taken by all; a reset clears it everywhere.

use std::time::Duration;

use super::*;
use crate::support::redis::RedisServer;

#[tokio::test]
async fn a_cooldown_seen_on_one_replica_is_taken_by_all_and_a_reset_clears_it_everywhere() {
    let Some(redis) = RedisServer::start("health_across_replicas") else {
        return;
    };
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let mut config = replica_config(&a, &redis, "2s");
    config = config.profile("b", &b);
    config.models = vec![(
        "m".into(),
        vec!["a".into(), "b".into()],
        Some("priority".into()),
    )];
    config.max_attempts = 2;
    config.cooldown = ("60s".into(), "5m".into());
    let replicas: Vec<Server> = (0..3)
        .map(|_| Server::start_with_env(&config, &[("FLEET_JWT_SECRET", SECRET)]))
        .collect();
    let t = token("health");
    // One 429 from `a`, to replica 0's request: it fails over to `b` and cools `a` down.
    a.push(Reply::Status {
        status: 429,
        headers: vec![],
        body: r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#.into(),
    });
    assert_eq!(answered_by(&replicas[0], &t, None).await, "b");
    for r in &replicas[1..] {
        let p = wait_state(r, "a", "cooldown", Duration::from_secs(5)).await;
        assert!(p["cooldown_until"].is_string(), "{p}");
    }
    let sent_to_a = a.request_count();
    for r in &replicas[1..] {
        assert_eq!(answered_by(r, &t, None).await, "b");
    }
    assert_eq!(
        a.request_count(),
        sent_to_a,
        "no replica tried the cooled-down profile"
    );

    // A reset on one replica resets the profile on all, and the old cooldown does not come back.
    let (status, _, _) = call(
        &replicas[2],
        reqwest::Method::POST,
        "/admin/profiles/a/reset",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200);
    for r in &replicas {
        wait_state(r, "a", "healthy", Duration::from_secs(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    for r in &replicas {
        assert_eq!(admin_profile(r, "a").await["state"], "healthy");
    }
}
