//! Profile health pushed to every replica at once (pub/sub), the auth-failed lane shared, and one
//! half-open probe for the whole fleet.

use std::time::{Duration, Instant};

use super::*;
use crate::support::redis::RedisServer;

/// `config` with `state.redis.health_resync: every` (the periodic full exchange behind the pushes).
fn resync_every(mut config: ConfigBuilder, every: &str) -> ConfigBuilder {
    let at = config
        .extra_yaml
        .iter()
        .position(|l| l.trim_start().starts_with("margin:"))
        .unwrap();
    config
        .extra_yaml
        .insert(at + 1, format!("    health_resync: {every}"));
    config
}

/// Two profiles `a` then `b` by priority, on three replicas whose full exchange is a minute apart:
/// only a push can carry a change between them within the test's bounds.
async fn two_profile_fleet(redis: &RedisServer, a: &MockUpstream, b: &MockUpstream) -> Vec<Server> {
    let mut config = resync_every(replica_config(a, redis, "2s"), "60s").profile("b", b);
    config.models = vec![(
        "m".into(),
        vec!["a".into(), "b".into()],
        Some("priority".into()),
    )];
    config.max_attempts = 2;
    config.cooldown = ("60s".into(), "5m".into());
    (0..3)
        .map(|_| Server::start_with_env(&config, &[("FLEET_JWT_SECRET", SECRET)]))
        .collect()
}

/// How long until every replica in `others` shows profile `a` in `state`.
async fn seen_by_all(others: &[&Server], state: &str) -> Duration {
    let started = Instant::now();
    for r in others {
        wait_state(r, "a", state, Duration::from_secs(10)).await;
    }
    started.elapsed()
}

async fn reset_a(on: &Server) {
    let (status, _, _) = call(
        on,
        reqwest::Method::POST,
        "/admin/profiles/a/reset",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn cooldowns_and_auth_failures_are_pushed_to_every_replica_and_a_reset_clears_them() {
    let Some(redis) = RedisServer::start("health_pushed") else {
        return;
    };
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let replicas = two_profile_fleet(&redis, &a, &b).await;
    let t = token("pushed");
    // Every replica has subscribed (each did its first full exchange on subscribing).
    for r in &replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(
            r,
            "switchyard_shared_state_pushes_total{resource=\"health\"}",
        )
        .await
            < 1.0
        {
            assert!(Instant::now() < deadline, "{} never subscribed", r.addr);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A 429 on replica 0 cools `a` down there and, pushed, on the others well within the minute
    // between two full exchanges (the bound is generous for two loaded cores).
    a.push(Reply::Status {
        status: 429,
        headers: vec![],
        body: r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#.into(),
    });
    assert_eq!(answered_by(&replicas[0], &t, None).await, "b");
    let took = seen_by_all(&[&replicas[1], &replicas[2]], "cooldown").await;
    assert!(took < Duration::from_secs(5), "the cooldown took {took:?}");
    let sent_to_a = a.request_count();
    for r in &replicas[1..] {
        assert_eq!(answered_by(r, &t, None).await, "b");
    }
    assert_eq!(
        a.request_count(),
        sent_to_a,
        "no replica tried the cooled-down profile"
    );

    reset_a(&replicas[2]).await;
    seen_by_all(&replicas.iter().collect::<Vec<_>>(), "healthy").await;

    // A 401 on replica 1: `a` is auth_failed on every replica (same credential), pushed too.
    a.push(Reply::Status {
        status: 401,
        headers: vec![],
        body: r#"{"error":{"message":"bad key","type":"authentication_error"}}"#.into(),
    });
    assert_eq!(answered_by(&replicas[1], &t, None).await, "b");
    let took = seen_by_all(&[&replicas[0], &replicas[2]], "auth_failed").await;
    assert!(
        took < Duration::from_secs(5),
        "the auth failure took {took:?}"
    );
    let p = admin_profile(&replicas[0], "a").await;
    assert_eq!(p["state"], "auth_failed", "{p}");
    let sent_to_a = a.request_count();
    assert_eq!(answered_by(&replicas[0], &t, None).await, "b");
    assert_eq!(a.request_count(), sent_to_a);

    // A reset on replica 0 clears it everywhere, and it does not come back from a slower replica.
    reset_a(&replicas[0]).await;
    let all: Vec<&Server> = replicas.iter().collect();
    seen_by_all(&all, "healthy").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for r in &replicas {
        assert_eq!(admin_profile(r, "a").await["state"], "healthy");
        assert_eq!(answered_by(r, &t, None).await, "a");
    }
}

#[tokio::test]
async fn a_half_open_profile_is_probed_by_one_replica_for_the_fleet() {
    let Some(redis) = RedisServer::start("probe_single_flight") else {
        return;
    };
    let a = MockUpstream::start_named("a").await;
    let mut config = replica_config(&a, &redis, "2s");
    // One failure opens the breaker for 2 s; the cooldown it also sets is over long before.
    config.breaker = (1, "2s".into());
    config.cooldown = ("50ms".into(), "50ms".into());
    let replicas: Vec<Server> = (0..3)
        .map(|_| Server::start_with_env(&config, &[("FLEET_JWT_SECRET", SECRET)]))
        .collect();
    let t = token("probe");
    a.set_default(Reply::Status {
        status: 500,
        headers: vec![],
        body: r#"{"error":{"message":"down","type":"server_error"}}"#.into(),
    });
    for r in &replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        while admin_profile(r, "a").await["state"] != "open" {
            assert!(
                Instant::now() < deadline,
                "{} never opened its breaker",
                r.addr
            );
            chat_as(r, &t).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    for r in &replicas {
        wait_state(r, "a", "half_open", Duration::from_secs(10)).await;
    }
    // Still down: one replica's probe fails, and the fleet waits out `open_for` as that replica
    // does, though the others' own breakers are half-open.
    a.set_default(Reply::Delay(
        Duration::from_millis(500),
        Box::new(Reply::Status {
            status: 500,
            headers: vec![],
            body: r#"{"error":{"message":"still down","type":"server_error"}}"#.into(),
        }),
    ));
    let before = a.request_count();
    let burst = replicas.iter().map(|r| chat_as(r, &t));
    futures_util::future::join_all(burst).await;
    assert_eq!(
        a.request_count() - before,
        1,
        "one failed probe for the fleet"
    );
    // Another caller each phase: every one has 30 requests an hour.
    let waiting = token("probe-waits");
    let after_failure = Instant::now();
    while after_failure.elapsed() < Duration::from_millis(800) {
        for r in &replicas {
            assert_eq!(chat_as(r, &waiting).await.0, 503);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        a.request_count() - before,
        1,
        "nobody probed again within open_for"
    );

    // The upstream is back, slowly: the probe's answer takes 3 s, during which every replica sees
    // its own breaker half-open.
    a.set_default(Reply::Delay(Duration::from_secs(3), Box::new(Reply::Echo)));
    for r in &replicas {
        wait_state(r, "a", "half_open", Duration::from_secs(10)).await;
    }
    // The failed probe's lease ends a round trip after the prober's breaker turned half-open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = token("probe-resumes");
    let before = a.request_count();
    let burst = replicas
        .iter()
        .flat_map(|r| (0..3).map(move |_| r))
        .map(|r| chat_as(r, &t));
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        a.request_count() - before,
        1,
        "one probe for the fleet; statuses {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "the others were told to come back: {statuses:?}"
    );

    // The probe succeeded: traffic resumes on every replica.
    a.set_default(Reply::Echo);
    for r in &replicas {
        until_status(r, &t, 200, Duration::from_secs(10)).await;
    }
}

#[tokio::test]
async fn with_redis_down_each_replica_probes_for_itself() {
    let Some(mut redis) = RedisServer::start("probe_redis_down") else {
        return;
    };
    let a = MockUpstream::start_named("a").await;
    let mut config = replica_config(&a, &redis, "200ms");
    config.breaker = (1, "1s".into());
    config.cooldown = ("50ms".into(), "50ms".into());
    let replicas: Vec<Server> = (0..2)
        .map(|_| Server::start_with_env(&config, &[("FLEET_JWT_SECRET", SECRET)]))
        .collect();
    let t = token("probe-alone");
    redis.kill();
    a.set_default(Reply::Status {
        status: 500,
        headers: vec![],
        body: r#"{"error":{"message":"down","type":"server_error"}}"#.into(),
    });
    for r in &replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        while admin_profile(r, "a").await["state"] != "open" {
            assert!(
                Instant::now() < deadline,
                "{} never opened its breaker",
                r.addr
            );
            chat_as(r, &t).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    a.set_default(Reply::Echo);
    for r in &replicas {
        wait_state(r, "a", "half_open", Duration::from_secs(10)).await;
    }
    // No lease can be had: each replica sends its own probe, and it closes its breaker.
    let before = a.request_count();
    for r in &replicas {
        assert_eq!(chat_as(r, &t).await.0, 200, "{}", r.logs());
        wait_state(r, "a", "healthy", Duration::from_secs(5)).await;
    }
    assert_eq!(a.request_count() - before, 2);
}

#[tokio::test]
async fn a_cooldown_taken_while_redis_was_down_reaches_the_others_once_it_is_back() {
    let Some(mut redis) = RedisServer::start("health_resubscribe") else {
        return;
    };
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let replicas = two_profile_fleet(&redis, &a, &b).await;
    let t = token("resubscribe");
    redis.kill();
    a.push(Reply::Status {
        status: 429,
        headers: vec![],
        body: r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#.into(),
    });
    assert_eq!(answered_by(&replicas[0], &t, None).await, "b");
    // The profile's actor takes the report from its mailbox in its own time (on a busy machine,
    // after the answer has been read).
    wait_state(&replicas[0], "a", "cooldown", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin_profile(&replicas[1], "a").await["state"], "healthy");
    // Back, empty: the subscribers reconnect and resync, long before the minute's full exchange.
    redis.restart();
    let took = seen_by_all(&[&replicas[1], &replicas[2]], "cooldown").await;
    assert!(took < Duration::from_secs(8), "the cooldown took {took:?}");
}
