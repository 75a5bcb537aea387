//! Sign-in limits for the fleet: an account's failure budget is one budget whichever replicas the
//! guesses land on, and a success on any replica gives it back.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

const PASSWORD: &str = "correct horse battery";

async fn login(server: &Server, email: &str, password: &str) -> (u16, Value) {
    let body = json!({"email": email, "password": password});
    let (s, _, v) = call(
        server,
        reqwest::Method::POST,
        "/auth/login",
        None,
        Some(body),
    )
    .await;
    (s, v)
}

/// Polls until every replica knows account `id` (the admin listing: no sign-in budget spent).
async fn until_everywhere(replicas: &[Server], id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for r in replicas {
        loop {
            let path = format!("/admin/accounts/{id}");
            let (status, _, _) =
                call(r, reqwest::Method::GET, &path, Some(ADMIN_TOKEN), None).await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{id} not on {}", r.addr);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn an_accounts_failure_budget_is_one_for_the_fleet_and_a_success_anywhere_resets_it() {
    let Some(redis) = RedisServer::start("signin_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let mut config = replica_config(&mock, &redis, "2s");
    config.extra_auth_yaml.extend([
        "login:".to_owned(),
        "  max_failures_per_account: 3".to_owned(),
        "  max_attempts_per_address: 1000".to_owned(),
        "  window: 1h".to_owned(),
    ]);
    let replicas: Vec<Server> = (0..3)
        .map(|_| Server::start_with_env(&config, &[("FLEET_JWT_SECRET", SECRET)]))
        .collect();
    away_from_the_hour_edge().await;
    let mut ids = Vec::new();
    for email in ["guessed@example.com", "typo@example.com"] {
        let v = admin(
            &replicas[0],
            reqwest::Method::POST,
            "/admin/accounts",
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await;
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        until_everywhere(&replicas, id).await;
    }

    // One wrong guess on each replica: alone, each would allow two more; together they spent three.
    for r in &replicas {
        assert_eq!(login(r, "guessed@example.com", "wrong-guess").await.0, 401);
    }
    let (status, body) = login(&replicas[0], "guessed@example.com", PASSWORD).await;
    assert_eq!(status, 429, "{body}");

    // Two typos, a success elsewhere, two more typos: the success gave the budget back, so the
    // right password still works.
    for r in &replicas[..2] {
        assert_eq!(login(r, "typo@example.com", "typo-typo").await.0, 401);
    }
    assert_eq!(
        login(&replicas[2], "typo@example.com", PASSWORD).await.0,
        200
    );
    for r in &replicas[..2] {
        assert_eq!(login(r, "typo@example.com", "typo-typo").await.0, 401);
    }
    let (status, body) = login(&replicas[2], "typo@example.com", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
}
