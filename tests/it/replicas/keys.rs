//! API keys: made on one replica, usable on all; a revocation reaches all within a second.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::support::redis::RedisServer;

async fn create_key(server: &Server) -> (String, String) {
    let v = admin(
        server,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"name": "fleet"})),
    )
    .await;
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_key_made_on_one_replica_works_on_all_and_its_revocation_reaches_all_within_a_second() {
    let Some(mut redis) = RedisServer::start("keys_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = fleet(3, &mock, &redis, "2s");
    let (id, key) = create_key(&replicas[0]).await;
    for r in &replicas[1..] {
        until_status(r, &key, 200, Duration::from_secs(5)).await;
    }
    // Listed on another replica too (each keeps a copy in its own store).
    let listed = admin(&replicas[2], reqwest::Method::GET, "/admin/keys", None).await;
    assert!(listed.to_string().contains(&id), "{listed}");

    admin(
        &replicas[1],
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(
        chat_as(&replicas[1], &key).await.0,
        401,
        "at once where revoked"
    );
    for r in [&replicas[0], &replicas[2]] {
        let took = until_status(r, &key, 401, Duration::from_secs(1)).await;
        assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    }

    // Redis comes back empty: the replicas seed it again, and keep sharing new keys; the revoked
    // key stays revoked everywhere.
    redis.restart();
    let (_, fresh) = create_key(&replicas[2]).await;
    until_status(&replicas[0], &fresh, 200, Duration::from_secs(10)).await;
    for r in &replicas {
        assert_eq!(chat_as(r, &key).await.0, 401);
    }
    let seeded = redis.command(&["HEXISTS", "fleet-test:{tbl:keys}:rec", &id]);
    assert_eq!(
        seeded.as_deref(),
        Some(":1\r\n"),
        "the revoked key was seeded back"
    );
}
