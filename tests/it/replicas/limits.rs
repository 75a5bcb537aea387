//! Request limits: exact across the fleet, and each replica's share while Redis is down.

use std::time::{Duration, Instant};

use super::*;
use crate::support::redis::RedisServer;

#[tokio::test]
async fn limits_are_exact_across_three_replicas() {
    let Some(redis) = RedisServer::start("limits_are_exact_across_three_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = fleet(3, &mock, &redis, "2s");
    away_from_the_hour_edge().await;
    let alice = token("alice");
    // 90 concurrent calls, spread evenly: alone, each replica would let 30 through (90 in all).
    let calls = (0..90).map(|i| chat_as(&replicas[i % 3], &alice));
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let limited = results.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!((ok, limited), (30, 60), "{results:?}");
    assert_eq!(
        mock.request_count(),
        30,
        "only admitted calls reach the upstream"
    );
    // Every remaining count from 29 down to 0 was handed out once: one counter, not three.
    let mut remaining: Vec<u64> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .filter_map(|(_, r)| *r)
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..LIMIT).collect::<Vec<_>>());
    // Another caller has its own window, on any replica.
    assert_eq!(chat_as(&replicas[2], &token("bob")).await, (200, Some(29)));
    assert_eq!(
        metric(&replicas[0], "switchyard_shared_state_up").await,
        1.0
    );
    let count = "switchyard_shared_state_round_trip_seconds_count{resource=\"rate_limits\"}";
    assert!(metric(&replicas[1], count).await >= 1.0);
}

/// Sends calls as `who` until one is refused; returns how many were let through, and checks each
/// answer came quickly (a dead Redis must not cost a request its command deadline each time).
async fn admitted_until_refused(server: &Server, who: &str) -> u64 {
    let t = token(who);
    for n in 0..=LIMIT {
        let started = Instant::now();
        let (status, _) = chat_as(server, &t).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "call {n} took {:?}",
            started.elapsed()
        );
        if status == 429 {
            return n;
        }
        assert_eq!(status, 200);
    }
    panic!("{who} was never refused");
}

/// Polls until a fresh caller's first call is counted by Redis again (the full limit, not the local share).
async fn until_redis_counts(server: &Server, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0.. {
        // A fresh caller each time, so the calls made while still degraded spend no share.
        let (status, remaining) = chat_as(server, &token(&format!("{who}-{i}"))).await;
        assert_eq!(status, 200);
        // In Redis, a fresh caller's first call leaves 29; the local share leaves 8 at most.
        if remaining.is_some_and(|r| r > SHARE) {
            return;
        }
        assert!(Instant::now() < deadline, "redis never took over again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_or_stalled_redis_leaves_each_replica_its_share() {
    let Some(mut redis) =
        RedisServer::start("a_killed_or_stalled_redis_leaves_each_replica_its_share")
    else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = fleet(2, &mock, &redis, "50ms");
    away_from_the_hour_edge().await;
    let degraded = "switchyard_shared_state_degraded{resource=\"rate_limits\"}";

    redis.kill();
    assert_eq!(admitted_until_refused(&replicas[0], "killed").await, SHARE);
    // The other replica has its own share of the same caller: together still under the limit.
    assert_eq!(admitted_until_refused(&replicas[1], "killed").await, SHARE);
    assert_eq!(
        metric(&replicas[0], "switchyard_shared_state_up").await,
        0.0
    );
    assert_eq!(metric(&replicas[0], degraded).await, 1.0);
    let fallbacks = "switchyard_shared_state_fallbacks_total{resource=\"rate_limits\"}";
    assert!(metric(&replicas[0], fallbacks).await >= SHARE as f64);

    // Back (empty, as after a crash without persistence): Redis counts again on both.
    redis.restart();
    until_redis_counts(&replicas[0], "after-restart").await;
    until_redis_counts(&replicas[1], "after-restart-too").await;
    assert_eq!(metric(&replicas[0], degraded).await, 0.0);

    // Stalled: connections open, no answer. The deadline and the breaker keep calls quick.
    redis.stall(true);
    assert_eq!(admitted_until_refused(&replicas[0], "stalled").await, SHARE);
    redis.stall(false);
    until_redis_counts(&replicas[0], "after-stall").await;
}
