//! Several real replicas of the server on one real Redis (`state.backend: redis`), all in front of
//! the same mock upstream: request limits exact across the fleet under concurrency, and the
//! documented fallback when Redis is killed or stalled (each replica alone enforces
//! `limit × (1 − margin) / replicas`), and Redis again once it is back.
//!
//! This file holds the fleet's set-up; each shared resource has its own file beside it.
//!
//! The callers are JWTs of a shared-secret issuer, the one identity every replica knows without
//! sharing keys.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::redis::RedisServer;
use crate::support::*;

mod admission;
mod credits;
mod health;
mod keys;
mod limits;
mod oauth;
mod pins;
mod probes;
mod records;
mod responses;
mod signin;
mod tiers;
mod usage;
mod webhook;

pub(super) const ISSUER: &str = "https://fleet.test";
pub(super) const SECRET: &str = "fleet-shared-secret-0123456789abcdef";
/// Every replica's secret for its own access tokens: one, so a sign-in on one replica works on all.
pub(super) const SESSION_SECRET: &str = "fleet-session-secret-0123456789abcdef";
/// Every caller's tier: 30 requests per hour; with Redis down, 30 × (1 − 0.1) / 3 = 9 per replica.
pub(super) const LIMIT: u64 = 30;
pub(super) const SHARE: u64 = 9;

/// A replica's config: the shared issuer, one tier, the mock upstream, the given Redis and command
/// deadline.
pub(super) fn replica_config(
    mock: &MockUpstream,
    redis: &RedisServer,
    deadline: &str,
) -> ConfigBuilder {
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
pub(super) fn fleet(
    n: usize,
    mock: &MockUpstream,
    redis: &RedisServer,
    deadline: &str,
) -> Vec<Server> {
    let config = replica_config(mock, redis, deadline);
    (0..n)
        .map(|_| {
            Server::start_with_env(
                &config,
                &[
                    ("FLEET_JWT_SECRET", SECRET),
                    ("SWITCHYARD_JWT_SECRET", SESSION_SECRET),
                ],
            )
        })
        .collect()
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A caller's token, valid on every replica.
pub(super) fn token(subject: &str) -> String {
    let claims = json!({"iss": ISSUER, "aud": "switchyard", "sub": subject, "exp": now() + 600});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// One chat call as `token`; (status, x-ratelimit-remaining).
pub(super) async fn chat_as(server: &Server, token: &str) -> (u16, Option<u64>) {
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
pub(super) async fn away_from_the_hour_edge() {
    let into = now() % 3600;
    if into > 3570 {
        tokio::time::sleep(Duration::from_secs(3600 - into + 1)).await;
    }
}

/// `name{labels}`'s value in the replica's /metrics, 0 when absent.
pub(super) async fn metric(server: &Server, series: &str) -> f64 {
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

/// Polls until `server` answers `token`'s chat with `status`; returns how long it took.
pub(super) async fn until_status(
    server: &Server,
    token: &str,
    status: u16,
    within: Duration,
) -> Duration {
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

/// The profile that answered a chat in session `sid` (none: no session header).
pub(super) async fn answered_by(server: &Server, token: &str, sid: Option<&str>) -> String {
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

/// `POST /auth/login` on `server`; (status, body).
pub(super) async fn sign_in(
    server: &Server,
    email: &str,
    password: &str,
) -> (u16, serde_json::Value) {
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
