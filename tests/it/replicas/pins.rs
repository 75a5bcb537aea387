//! Sticky pins: one profile per session across the fleet, and a common hash without Redis.

use std::time::{Duration, Instant};

use super::*;
use crate::support::redis::RedisServer;

#[tokio::test]
async fn a_session_stays_on_one_profile_across_replicas_and_without_redis_by_a_common_hash() {
    let Some(mut redis) = RedisServer::start("pins_across_replicas") else {
        return;
    };
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let mut config = replica_config(&a, &redis, "2s");
    config = config.profile("b", &b);
    config.models = vec![("m".into(), vec!["a".into(), "b".into()], None)];
    let replicas: Vec<Server> = (0..3)
        .map(|_| Server::start_with_env(&config, &[("FLEET_JWT_SECRET", SECRET)]))
        .collect();
    let t = token("pinned");
    let sessions: Vec<String> = (0..6).map(|i| format!("session-{i}")).collect();
    let mut first = Vec::new();
    for sid in &sessions {
        first.push(answered_by(&replicas[0], &t, Some(sid)).await);
    }
    assert!(first.contains(&"a".to_owned()) && first.contains(&"b".to_owned()));
    // Each other replica's round robin is moved one step first, so its own choice would differ.
    for r in &replicas[1..] {
        answered_by(r, &t, None).await;
        for (sid, profile) in sessions.iter().zip(&first) {
            // The claim is written just after the first answer: poll briefly for it.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let got = answered_by(r, &t, Some(sid)).await;
                if &got == profile {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{sid}: {got}, pinned to {profile}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // Without Redis, new sessions land on the profile every replica's hash names.
    redis.kill();
    // (A caller each, so that the local share of the rate limit is not what refuses them.)
    for i in 0..6 {
        let sid = format!("hashed-{i}");
        let t = token(&sid);
        let on_1 = answered_by(&replicas[1], &t, Some(&sid)).await;
        answered_by(&replicas[2], &t, None).await;
        assert_eq!(
            answered_by(&replicas[2], &t, Some(&sid)).await,
            on_1,
            "{sid}"
        );
    }
}
