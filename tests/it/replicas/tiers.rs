//! Tier overrides: set on one replica (admin API or webhook), in force on every replica within a
//! second; cleared likewise; refused with 503 while Redis cannot take them, so no replica holds a
//! tier the others do not (not even once an emptied Redis is seeded back from the replicas).

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

/// The `x-ratelimit-limit` a replica answers `key`'s model listing with.
async fn limit_seen(server: &Server, key: &str) -> Option<String> {
    let resp = client()
        .get(server.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    resp.headers()
        .get("x-ratelimit-limit")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Polls every replica until each answers `key` with the limit `want`.
async fn until_every_limit(replicas: &[Server], key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for r in replicas {
        loop {
            let got = limit_seen(r, key).await;
            if got.as_deref() == Some(want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} answers limit {got:?}, not {want}",
                r.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn put_tier(server: &Server, tier: Option<&str>) -> (u16, serde_json::Value) {
    let (status, _, body) = call(
        server,
        reqwest::Method::PUT,
        "/admin/accounts/shop/tier",
        Some(ADMIN_TOKEN),
        Some(json!({ "tier": tier })),
    )
    .await;
    (status, body)
}

#[tokio::test]
async fn a_tier_set_on_one_replica_is_in_force_on_all_and_so_is_its_clearing() {
    let Some(mut redis) = RedisServer::start("tiers_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let mut config = replica_config(&mock, &redis, "2s");
    config.extra_yaml.push("  tiny:".into());
    config.extra_yaml.push("    requests_per_hour: 3".into());
    let replicas: Vec<Server> = (0..3)
        .map(|_| Server::start_with_env(&config, &[("FLEET_JWT_SECRET", SECRET)]))
        .collect();
    let made = admin(
        &replicas[0],
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"name": "shop", "account": "shop"})),
    )
    .await;
    let key = made["key"].as_str().unwrap().to_owned();
    until_every_limit(&replicas, &key, &LIMIT.to_string()).await;

    let started = Instant::now();
    let (status, body) = put_tier(&replicas[1], Some("tiny")).await;
    assert_eq!(status, 200, "{body}");
    until_every_limit(&replicas, &key, "3").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = put_tier(&replicas[2], None).await;
    assert_eq!(status, 200, "{body}");
    until_every_limit(&replicas, &key, &LIMIT.to_string()).await;

    // Redis away: the change is refused, and no replica takes it.
    redis.kill();
    let (status, body) = put_tier(&replicas[0], Some("tiny")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shared_state_unavailable", "{body}");
    // Had replica 0 kept the refused tier, it would seed it into the emptied Redis once it is back,
    // and every replica would take it.
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    until_every_limit(&replicas, &key, &LIMIT.to_string()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    until_every_limit(&replicas, &key, &LIMIT.to_string()).await;
}
