//! Client identity against the real server, one concern per file:
//! - `keys`: gateway keys (both header forms, 401s, rotation grace, scopes, checks when auth is optional)
//! - `login`: accounts signing in (refresh rotation, reuse, logout, disabled accounts, rate limits)
//! - `self_service`: signed-in developers managing their own keys within the limit
//! - `jwt`: external JWTs from a JWKS served here (rotation, bad tokens, external admins)
//! - `audit`: the audit log, and secrets kept out of it and out of the logs
//! - `cli`: the `switchyard keys` CLI
//!
//! This file holds what several of them use: a server with one profile, and the calls they repeat.

use serde_json::{json, Value};

use crate::support::*;

mod admin_gate;
mod audit;
mod cli;
mod jwt;
mod keys;
mod login;
mod self_service;

/// Creates a key through the admin API; returns (id, secret key).
async fn create_key(server: &Server, body: Value) -> (String, String) {
    let v = admin(server, reqwest::Method::POST, "/admin/keys", Some(body)).await;
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

async fn create_account(server: &Server, email: &str, password: &str, role: &str) -> String {
    let body = json!({"email": email, "password": password, "role": role, "tier": "free"});
    let v = admin(server, reqwest::Method::POST, "/admin/accounts", Some(body)).await;
    v["id"].as_str().unwrap().to_owned()
}

async fn login(server: &Server, email: &str, password: &str) -> (u16, Value) {
    let body = json!({"email": email, "password": password});
    let (s, _, v) = server.post("/auth/login").json(body).send().await;
    (s, v)
}

/// A chat completion for `model` with a bearer credential; returns status and body.
async fn chat_as(server: &Server, model: &str, bearer: Option<&str>) -> (u16, Value) {
    let (s, _, v) = server
        .post("/v1/chat/completions")
        .maybe_bearer(bearer)
        .json(chat_body(model))
        .send()
        .await;
    (s, v)
}

/// Asserts an OpenAI-shaped error of `kind` with status `status`.
fn assert_error(status: u16, body: &Value, want_status: u16, kind: &str) {
    assert_eq!(status, want_status, "{body}");
    let e = error_of(&body.to_string());
    assert_eq!(e["type"], kind, "{body}");
}

async fn one_profile_server(required: bool, extra_auth: &[&str]) -> (MockUpstream, Server) {
    let mock = MockUpstream::start_named("a").await;
    let mut config = ConfigBuilder::default()
        .profile("a", &mock)
        .model("m", &["a"])
        .model("n", &["a"]);
    config.auth_required = required;
    config.extra_auth_yaml = extra_auth.iter().map(|s| s.to_string()).collect();
    let server = Server::start(&config);
    (mock, server)
}
