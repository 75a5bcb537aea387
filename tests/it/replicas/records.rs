//! Accounts, sign-in sessions and the audit log across replicas: an account made on one replica
//! signs in on all, a disabled account and a revoked session are refused on all within a second, a
//! refresh token rotates once for the whole fleet (a replay anywhere is reuse), and every replica's
//! audit events are listed, in time order, on each.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::support::redis::RedisServer;

const PASSWORD: &str = "correct horse battery";

/// Makes an account on `server`; its id.
async fn create_account(server: &Server, email: &str) -> String {
    let v = admin(
        server,
        reqwest::Method::POST,
        "/admin/accounts",
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    v["id"].as_str().unwrap().to_owned()
}

/// Polls until `server` has account `id` (no sign-in attempt, so no sign-in limit is spent).
async fn until_known(server: &Server, id: &str) {
    let started = Instant::now();
    loop {
        let path = format!("/admin/accounts/{id}");
        let (status, _, _) =
            call(server, reqwest::Method::GET, &path, Some(ADMIN_TOKEN), None).await;
        if status == 200 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{id} not on {}",
            server.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn login(server: &Server, email: &str) -> (u16, Value) {
    sign_in(server, email, PASSWORD).await
}

async fn refresh(server: &Server, token: &str) -> (u16, Value) {
    let body = json!({"refresh_token": token});
    let (s, _, v) = call(
        server,
        reqwest::Method::POST,
        "/auth/refresh",
        None,
        Some(body),
    )
    .await;
    (s, v)
}

async fn me(server: &Server, access: &str) -> u16 {
    call(server, reqwest::Method::GET, "/v1/me", Some(access), None)
        .await
        .0
}

/// Polls `/v1/me` with `access` until it answers `status`; how long that took.
async fn until_me(server: &Server, access: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = me(server, access).await;
        if got == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{} answers {got}, not {status}",
            server.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tokens(v: &Value) -> (String, String) {
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn an_account_made_on_one_replica_signs_in_on_all_and_disabling_it_reaches_all_within_a_second(
) {
    let Some(mut redis) = RedisServer::start("accounts_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = fleet(3, &mock, &redis, "2s");
    let id = create_account(&replicas[0], "ana@fleet.test").await;
    until_known(&replicas[1], &id).await;
    let (status, v) = login(&replicas[1], "ana@fleet.test").await;
    assert_eq!(status, 200, "{v}");
    let (access, _) = tokens(&v);
    // The session made on replica 1 works on the others.
    until_me(&replicas[2], &access, 200, Duration::from_secs(5)).await;
    until_me(&replicas[0], &access, 200, Duration::from_secs(5)).await;

    // Disabled on one replica: refused on all.
    admin(
        &replicas[2],
        reqwest::Method::PATCH,
        &format!("/admin/accounts/{id}"),
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(
        me(&replicas[2], &access).await,
        401,
        "at once where disabled"
    );
    for r in [&replicas[0], &replicas[1]] {
        let took = until_me(r, &access, 401, Duration::from_secs(1)).await;
        assert!(took < Duration::from_secs(1), "disabling took {took:?}");
        eprintln!("disabled account refused on {} after {took:?}", r.addr);
    }
    assert_eq!(login(&replicas[0], "ana@fleet.test").await.0, 401);

    // Redis comes back empty: the replicas seed the account back (set-if-absent), disabled.
    redis.restart();
    let started = Instant::now();
    loop {
        let held = redis.command(&["HGET", "fleet-test:{tbl:accounts}:rec", &id]);
        if held
            .as_deref()
            .is_some_and(|v| v.contains("\"disabled\":true"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not seeded: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_refresh_token_replayed_on_another_replica_is_reuse_and_revokes_the_session_everywhere() {
    let Some(redis) = RedisServer::start("refresh_reuse_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = fleet(3, &mock, &redis, "2s");
    let id = create_account(&replicas[0], "bo@fleet.test").await;
    let (status, v) = login(&replicas[0], "bo@fleet.test").await;
    assert_eq!(status, 200, "{v}");
    let (_, first) = tokens(&v);
    let (status, v) = refresh(&replicas[0], &first).await;
    assert_eq!(status, 200, "{v}");
    let (access, second) = tokens(&v);
    until_me(&replicas[2], &access, 200, Duration::from_secs(5)).await;

    // At once, with no pull in between: replica 1 asks Redis.
    let (status, v) = refresh(&replicas[1], &first).await;
    assert_eq!(status, 401, "a replay is reuse: {v}");
    assert!(v.to_string().contains("already used"), "{v}");
    for r in [&replicas[0], &replicas[2]] {
        let took = until_me(r, &access, 401, Duration::from_secs(1)).await;
        assert!(
            took < Duration::from_secs(1),
            "the revocation took {took:?}"
        );
        eprintln!("revoked family refused on {} after {took:?}", r.addr);
    }
    assert_eq!(
        refresh(&replicas[2], &second).await.0,
        401,
        "the family is revoked"
    );

    // The reuse is in every replica's audit log.
    let started = Instant::now();
    loop {
        let log = admin(
            &replicas[2],
            reqwest::Method::GET,
            "/admin/audit?limit=200",
            None,
        )
        .await;
        let reused =
            log["data"].as_array().unwrap().iter().any(|e| {
                e["event"] == "refresh_token_reused" && e["actor"] == format!("account:{id}")
            });
        if reused {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_refresh_token_raced_on_two_replicas_rotates_once() {
    let Some(redis) = RedisServer::start("refresh_race_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = fleet(2, &mock, &redis, "2s");
    create_account(&replicas[0], "cy@fleet.test").await;
    for round in 0..5 {
        let (status, v) = login(&replicas[0], "cy@fleet.test").await;
        assert_eq!(status, 200, "{v}");
        let (_, token) = tokens(&v);
        let (a, b) = tokio::join!(refresh(&replicas[0], &token), refresh(&replicas[1], &token));
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 401], "round {round}: {} / {}", a.1, b.1);
        // The loser saw reuse, so the winner's new pair dies too, on both replicas.
        let winner = if a.0 == 200 { &a.1 } else { &b.1 };
        let (access, next) = tokens(winner);
        for r in &replicas {
            until_me(r, &access, 401, Duration::from_secs(1)).await;
        }
        assert_eq!(refresh(&replicas[1], &next).await.0, 401);
    }
}

#[tokio::test]
async fn every_replicas_audit_events_are_listed_on_each_in_time_order() {
    let Some(redis) = RedisServer::start("audit_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = fleet(3, &mock, &redis, "2s");
    let mut accounts = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        let email = format!("a{i}@fleet.test");
        let id = create_account(r, &email).await;
        until_known(&replicas[(i + 1) % 3], &id).await;
        assert_eq!(login(&replicas[(i + 1) % 3], &email).await.0, 200);
        accounts.push(id);
    }
    // Each replica logged a creation and a sign-in: all six on every replica.
    for r in &replicas {
        let started = Instant::now();
        let all = loop {
            let log = admin(r, reqwest::Method::GET, "/admin/audit?limit=500", None).await;
            let data = log["data"].as_array().unwrap().clone();
            let seen = |event: &str, target: &str| {
                data.iter()
                    .any(|e| e["event"] == event && e["target"] == target)
            };
            let complete = accounts.iter().all(|a| {
                let t = format!("account:{a}");
                seen("account_created", &t) && seen("login_succeeded", &t)
            });
            if complete {
                break data;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{}: {log}",
                r.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let times: Vec<&str> = all.iter().map(|e| e["ts"].as_str().unwrap()).collect();
        assert!(
            times.windows(2).all(|w| w[0] >= w[1]),
            "newest first: {times:?}"
        );
        // Pages of two walk the same list, each entry once.
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/admin/audit?limit=2&cursor={c}"),
                None => "/admin/audit?limit=2".to_owned(),
            };
            let page = admin(r, reqwest::Method::GET, &path, None).await;
            paged.extend(
                page["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["id"].clone()),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let ids: Vec<Value> = all.iter().map(|e| e["id"].clone()).collect();
        // Entries may have arrived between the two reads: the paged walk holds the first list.
        let unique: HashSet<String> = paged.iter().map(Value::to_string).collect();
        assert_eq!(unique.len(), paged.len(), "no entry twice");
        for id in &ids {
            assert!(paged.contains(id), "{id} missing from the pages");
        }
    }
}

#[tokio::test]
async fn expired_sessions_swept_by_a_replica_leave_redis_too() {
    let Some(redis) = RedisServer::start("sessions_swept_from_redis") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let mut config = replica_config(&mock, &redis, "2s");
    config
        .extra_auth_yaml
        .push("refresh_token_ttl: 1s".to_owned());
    let env = [
        ("FLEET_JWT_SECRET", SECRET),
        ("SWITCHYARD_JWT_SECRET", SESSION_SECRET),
    ];
    let mut replica = Server::start_with_env(&config, &env);
    create_account(&replica, "di@fleet.test").await;
    assert_eq!(login(&replica, "di@fleet.test").await.0, 200);
    let held = |table: &str| redis.command(&["HLEN", &format!("fleet-test:{{tbl:{table}}}:rec")]);
    let started = Instant::now();
    while held("families").as_deref() != Some(":1\r\n")
        || held("refresh").as_deref() != Some(":1\r\n")
    {
        assert!(started.elapsed() < Duration::from_secs(5), "not in redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Expired; a replica sweeps as it starts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    replica.restart();
    let started = Instant::now();
    while held("families").as_deref() != Some(":0\r\n")
        || held("refresh").as_deref() != Some(":0\r\n")
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still in redis: {:?} {:?}",
            held("families"),
            held("refresh")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The account is no session: it stays.
    assert_eq!(held("accounts").as_deref(), Some(":1\r\n"));
}

#[tokio::test]
async fn one_email_made_on_two_replicas_at_once_is_one_account() {
    let Some(redis) = RedisServer::start("emails_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = fleet(2, &mock, &redis, "2s");
    for round in 0..3 {
        let body = json!({"email": format!("ed{round}@fleet.test"), "password": PASSWORD});
        let post = |r: &Server| {
            let body = body.clone();
            let url = r.url("/admin/accounts");
            async move {
                client()
                    .post(url)
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        let (a, b) = tokio::join!(post(&replicas[0]), post(&replicas[1]));
        let mut statuses = [a, b];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 400], "round {round}");
    }
}
