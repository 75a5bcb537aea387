//! The billing webhook behind a load balancer: a delivery retried to another replica is a replay, so
//! an event is applied once by the fleet; with Redis away the event is refused with 503 (the sender
//! retries it) rather than applied by a replica that cannot tell whether another has.

use std::time::{Duration, Instant};

use serde_json::json;
use switchyard::limits::webhook;

use super::*;

const WEBHOOK_SECRET: &str = "whsec-fleet-0123456789";

/// Delivers `body`, signed now; (status, body text).
async fn deliver(server: &Server, body: &str) -> (u16, String) {
    let signature = webhook::sign(WEBHOOK_SECRET.as_bytes(), now(), body.as_bytes());
    deliver_webhook(server, body, &signature).await
}

/// `deliver`, retried while the replica answers 503: after Redis restarts, each worker's connection
/// notices on its own first command and reconnects.
async fn deliver_once_redis_answers(server: &Server, body: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, text) = deliver(server, body).await;
        if status != 503 || Instant::now() > deadline {
            return (status, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The account's balance in micro-USD as the replica answers it, waiting out a restarted Redis.
async fn balance(server: &Server, account: &str) -> i64 {
    let path = format!("/admin/accounts/{account}/credits");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, v) =
            call(server, reqwest::Method::GET, &path, Some(ADMIN_TOKEN), None).await;
        if status == 200 {
            return v["balance_micros"].as_i64().unwrap();
        }
        assert!(Instant::now() < deadline, "{path}: {status} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_billing_event_retried_to_another_replica_is_applied_once() {
    let Some(mut redis) = RedisServer::start("webhook_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let config = replica_config(&mock, &redis, "2s");
    let env = [
        ("FLEET_JWT_SECRET", SECRET),
        (webhook::SECRET_ENV, WEBHOOK_SECRET),
    ];
    let replicas: Vec<Server> = (0..3)
        .map(|_| Server::start_with_env(&config, &env))
        .collect();
    let buy = json!({"id": "evt_fleet_1", "type": "credits.purchased",
                     "data": {"account": "shop", "amount_usd": 2.5}})
    .to_string();
    // The same delivery to all three at once (a sender's retry racing the first try): one applies it.
    let results = futures_util::future::join_all(replicas.iter().map(|r| deliver(r, &buy))).await;
    let mut statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409], "{results:?}");
    assert!(
        results.iter().any(|(_, t)| t.contains("replay")),
        "{results:?}"
    );
    for r in &replicas {
        assert_eq!(balance(r, "shop").await, 2_500_000);
    }

    // Redis away: refused with 503 and Retry-After, nothing applied; delivered again once it is back,
    // it applies once.
    let second = json!({"id": "evt_fleet_2", "type": "credits.purchased",
                        "data": {"account": "shop", "amount_usd": 1.0}})
    .to_string();
    // Saved first, so Redis comes back with the balance (an emptied Redis is the reseed's case).
    let saved = redis.command(&["SAVE"]).unwrap_or_default();
    assert!(saved.starts_with("+OK"), "SAVE: {saved}");
    redis.kill();
    let (status, text) = deliver(&replicas[1], &second).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("shared_state_unavailable"), "{text}");
    redis.restart();
    let (status, text) = deliver_once_redis_answers(&replicas[1], &second).await;
    assert_eq!(status, 200, "never applied after redis came back: {text}");
    let (status, text) = deliver_once_redis_answers(&replicas[2], &second).await;
    assert_eq!(status, 409, "{text}");
    for r in &replicas {
        assert_eq!(balance(r, "shop").await, 3_500_000);
    }
}
