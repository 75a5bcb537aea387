//! Several real replicas of the server on one real Redis (`state.backend: redis`), all in front of
//! the same mock upstream: request limits exact across the fleet under concurrency, and the
//! documented fallback when Redis is killed or stalled (each replica alone enforces
//! `limit × (1 − margin) / replicas`), and Redis again once it is back.
//!
//! The callers are JWTs of a shared-secret issuer, the one identity every replica knows without
//! sharing keys.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::redis::RedisServer;
use crate::support::*;

const ISSUER: &str = "https://fleet.test";
const SECRET: &str = "fleet-shared-secret-0123456789abcdef";
/// Every caller's tier: 30 requests per hour; with Redis down, 30 × (1 − 0.1) / 3 = 9 per replica.
const LIMIT: u64 = 30;
const SHARE: u64 = 9;

/// A replica's config: the shared issuer, one tier, the mock upstream, the given Redis and command
/// deadline.
fn replica_config(mock: &MockUpstream, redis: &RedisServer, deadline: &str) -> ConfigBuilder {
    let mut config = ConfigBuilder::default()
        .profile("a", mock)
        .model("m", &["a"]);
    config.auth_required = true;
    config.max_attempts = 1;
    config.extra_auth_yaml = vec![
        "issuers:".to_owned(),
        format!("  - issuer: {ISSUER}"),
        "    audience: switchyard".to_owned(),
        "    shared_secret_env: FLEET_JWT_SECRET".to_owned(),
    ];
    config.extra_yaml = vec![
        "state:".to_owned(),
        "  backend: redis".to_owned(),
        "  redis:".to_owned(),
        format!("    url: \"{}\"", redis.url()),
        "    key_prefix: \"fleet-test:\"".to_owned(),
        format!("    command_timeout: {deadline}"),
        "    replicas: 3".to_owned(),
        "    margin: 0.1".to_owned(),
        "tiers:".to_owned(),
        "  default:".to_owned(),
        format!("    requests_per_hour: {LIMIT}"),
    ];
    config
}

/// `n` replicas. The deadline decides when Redis counts as too slow: short where a test wants the
/// fallback quickly, long where two shared cores under a burst must not trigger it.
fn fleet(n: usize, mock: &MockUpstream, redis: &RedisServer, deadline: &str) -> Vec<Server> {
    let config = replica_config(mock, redis, deadline);
    (0..n)
        .map(|_| Server::start_with_env(&config, &[("FLEET_JWT_SECRET", SECRET)]))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A caller's token, valid on every replica.
fn token(subject: &str) -> String {
    let claims = json!({"iss": ISSUER, "aud": "switchyard", "sub": subject, "exp": now() + 600});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// One chat call as `token`; (status, x-ratelimit-remaining).
async fn chat_as(server: &Server, token: &str) -> (u16, Option<u64>) {
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    let remaining = resp
        .headers()
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (resp.status().as_u16(), remaining)
}

/// The hour windows are aligned to the epoch: a burst that straddled two would be counted in both.
async fn away_from_the_hour_edge() {
    let into = now() % 3600;
    if into > 3570 {
        tokio::time::sleep(Duration::from_secs(3600 - into + 1)).await;
    }
}

/// `name{labels}`'s value in the replica's /metrics, 0 when absent.
async fn metric(server: &Server, series: &str) -> f64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

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

/// Polls until `server` answers `token`'s chat with `status`; returns how long it took.
async fn until_status(server: &Server, token: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (got, _) = chat_as(server, token).await;
        if got == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{} still answers {got}, not {status}, after {within:?}",
            server.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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

/// The profile that answered a chat in session `sid` (none: no session header).
async fn answered_by(server: &Server, token: &str, sid: Option<&str>) -> String {
    let mut call = client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&chat_body("m"));
    if let Some(sid) = sid {
        call = call.header("x-session-id", sid);
    }
    let resp = call.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["x-switchyard-profile"]
        .to_str()
        .unwrap()
        .to_owned()
}

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
