//! Client identity against the real server: gateway keys (both header forms, 401s, rotation grace,
//! scopes), accounts and sign-in (refresh rotation, reuse, logout, rate limits), self-service keys,
//! external JWTs from a JWKS served here (rotation, bad tokens), admin roles, the audit log, secrets
//! kept out of logs, and the `switchyard keys` CLI.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

// --- helpers -------------------------------------------------------------------------------------

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

/// A chat completion for `model` with a bearer credential; returns status and body.
async fn chat_as(server: &Server, model: &str, bearer: Option<&str>) -> (u16, Value) {
    let (s, _, v) = call(
        server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        bearer,
        Some(chat_body(model)),
    )
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

// --- gateway keys --------------------------------------------------------------------------------

#[tokio::test]
async fn keys_work_as_bearer_and_x_api_key_and_usage_is_theirs() {
    let (mock, server) = one_profile_server(true, &[]).await;
    let (id, key) = create_key(&server, json!({"name": "ci", "account": "team-a"})).await;
    assert!(key.starts_with(&format!("sy_{id}_")), "{key}");

    let (status, body) = chat_as(&server, "m", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .header("X-API-Key", &key)
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The upstream sees the profile's key, never the client's.
    for r in mock.requests() {
        assert_eq!(r.bearer(), Some("sk-a-secret"));
        assert!(!format!("{:?}", r.headers).contains(&key));
    }

    let (status, _, me) = call(&server, reqwest::Method::GET, "/v1/me", Some(&key), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["credential"], "api_key");
    assert_eq!(me["key_id"], id.as_str());
    assert_eq!(me["account_id"], "team-a");
    assert_eq!(me["usage"]["today"]["requests"], 2, "{me}");
    assert!(
        me["usage"]["last_30_days"]["prompt_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let list = admin(&server, reqwest::Method::GET, "/admin/keys", None).await;
    let listed = &list["data"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["status"], "active");
    assert_eq!(listed["prefix"], format!("sy_{id}"));
    assert!(listed.get("key").is_none() && listed.get("hash").is_none());
    assert!(listed["last_used_at"].is_string(), "{listed}");
}

#[tokio::test]
async fn missing_wrong_revoked_and_expired_keys_get_401() {
    let (_mock, server) = one_profile_server(true, &[]).await;
    let (status, body) = chat_as(&server, "m", None).await;
    assert_error(status, &body, 401, "authentication_error");

    let (id, key) = create_key(&server, json!({"name": "k"})).await;
    let wrong = format!("sy_{id}_{}", "x".repeat(43));
    let unknown = key.replacen(&id, "AAAAAAAAAAAA", 1);
    for bad in [
        wrong.as_str(),
        unknown.as_str(),
        "sy_garbage",
        "not-a-key",
        "a.b.c",
    ] {
        let (status, body) = chat_as(&server, "m", Some(bad)).await;
        assert_error(status, &body, 401, "authentication_error");
    }

    let (status, _) = chat_as(&server, "m", Some(&key)).await;
    assert_eq!(status, 200);
    let revoked = admin(
        &server,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(revoked["status"], "revoked");
    let (status, body) = chat_as(&server, "m", Some(&key)).await;
    assert_error(status, &body, 401, "authentication_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("revoked") && message.contains(&format!("sy_{id}")),
        "{message}"
    );
    assert!(!message.contains(&key), "the secret leaked into: {message}");

    let (_, short) = create_key(&server, json!({"name": "short", "expires_in": "1s"})).await;
    let (status, _) = chat_as(&server, "m", Some(&short)).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, body) = chat_as(&server, "m", Some(&short)).await;
    assert_error(status, &body, 401, "authentication_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let list = admin(&server, reqwest::Method::GET, "/admin/keys", None).await;
    let statuses: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains(&"expired") && statuses.contains(&"revoked"),
        "{list}"
    );
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
    let (_mock, server) = one_profile_server(true, &[]).await;
    let (id, old) = create_key(&server, json!({"name": "rotating"})).await;
    let path = format!("/admin/keys/{id}/rotate");
    let rotated = admin(
        &server,
        reqwest::Method::POST,
        &path,
        Some(json!({"grace": "1s"})),
    )
    .await;
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["id"], id.as_str());
    assert!(rotated["previous_valid_until"].is_string());
    assert_eq!(chat_as(&server, "m", Some(&old)).await.0, 200);
    assert_eq!(chat_as(&server, "m", Some(&new)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, body) = chat_as(&server, "m", Some(&old)).await;
    assert_error(status, &body, 401, "authentication_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("grace"));
    assert_eq!(chat_as(&server, "m", Some(&new)).await.0, 200);

    // Without `grace` the old secret keeps working for an hour.
    let again = admin(&server, reqwest::Method::POST, &path, None).await;
    assert_eq!(chat_as(&server, "m", Some(&new)).await.0, 200);
    let until = humantime::parse_rfc3339(again["previous_valid_until"].as_str().unwrap()).unwrap();
    let left = until.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
        "{left:?}"
    );
}

#[tokio::test]
async fn scopes_limit_models_and_admin_routes() {
    let (mock, server) = one_profile_server(true, &[]).await;
    let (_, only_m) = create_key(&server, json!({"name": "m-only", "scopes": ["m"]})).await;
    assert_eq!(chat_as(&server, "m", Some(&only_m)).await.0, 200);
    let before = mock.request_count();
    let (status, body) = chat_as(&server, "n", Some(&only_m)).await;
    assert_error(status, &body, 403, "permission_error");
    assert_eq!(
        mock.request_count(),
        before,
        "a refused request reached the upstream"
    );
    let (_, _, models) = call(
        &server,
        reqwest::Method::GET,
        "/v1/models",
        Some(&only_m),
        None,
    )
    .await;
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m"]);
    let (status, _, _) = call(
        &server,
        reqwest::Method::GET,
        "/v1/models/n",
        Some(&only_m),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Not an admin credential: refused on admin routes.
    let (status, _, body) = call(
        &server,
        reqwest::Method::GET,
        "/admin/keys",
        Some(&only_m),
        None,
    )
    .await;
    assert_error(status, &body, 403, "permission_error");
    let (status, _, _) = call(
        &server,
        reqwest::Method::GET,
        "/admin/profiles",
        Some(&only_m),
        None,
    )
    .await;
    assert_eq!(status, 401);

    // A key with the `admin` scope is an admin credential everywhere.
    let (_, admin_key) = create_key(&server, json!({"name": "ops", "scopes": ["admin"]})).await;
    let (status, _, _) = call(
        &server,
        reqwest::Method::GET,
        "/admin/keys",
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = call(
        &server,
        reqwest::Method::GET,
        "/admin/profiles",
        Some(&admin_key),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(chat_as(&server, "n", Some(&admin_key)).await.0, 200);
}

#[tokio::test]
async fn without_required_auth_presented_credentials_are_still_checked() {
    let (_mock, server) = one_profile_server(false, &[]).await;
    assert_eq!(chat_as(&server, "m", None).await.0, 200);
    // SDK placeholders are not ours, so they are ignored...
    assert_eq!(chat_as(&server, "m", Some("sk-placeholder")).await.0, 200);
    // ... but a Switchyard key or a JWT is checked.
    let (status, body) = chat_as(&server, "m", Some("sy_AAAAAAAAAAAA_nope")).await;
    assert_error(status, &body, 401, "authentication_error");
    let (_, key) = create_key(&server, json!({"name": "local", "scopes": ["m"]})).await;
    let (status, body) = chat_as(&server, "n", Some(&key)).await;
    assert_error(status, &body, 403, "permission_error");
    let (status, _, me) = call(&server, reqwest::Method::GET, "/v1/me", Some(&key), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["models"], json!(["m"]));
    let (status, _, body) = call(&server, reqwest::Method::GET, "/v1/me", None, None).await;
    assert_error(status, &body, 401, "authentication_error");
}

// --- accounts and sign-in ------------------------------------------------------------------------

#[tokio::test]
async fn sign_in_refresh_rotation_reuse_and_logout() {
    let (_mock, server) = one_profile_server(true, &[]).await;
    let account = create_account(&server, "Dev@Example.com", "hunter2-hunter2", "developer").await;

    let (status, body) = login(&server, "dev@example.com", "wrong-password").await;
    assert_error(status, &body, 401, "authentication_error");
    let (status, body) = login(&server, "nobody@example.com", "wrong-password").await;
    assert_error(status, &body, 401, "authentication_error");

    let (status, tokens) = login(&server, "DEV@example.com", "hunter2-hunter2").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 1800);
    assert_eq!(tokens["refresh_expires_in"], 7 * 24 * 3600);
    assert_eq!(tokens["account"]["id"], account.as_str());
    assert!(tokens["account"].get("password_hash").is_none());
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh1 = tokens["refresh_token"].as_str().unwrap().to_owned();

    let (status, _, me) = call(&server, reqwest::Method::GET, "/v1/me", Some(&access), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["credential"], "session");
    assert_eq!(me["role"], "developer");
    assert_eq!(me["tier"], "free");
    assert_eq!(me["account"]["email"], "dev@example.com");
    assert_eq!(me["limits"]["max_keys"], 10);
    assert_eq!(chat_as(&server, "m", Some(&access)).await.0, 200);

    // Refresh rotates: a new pair, and the old refresh token is spent.
    let (status, _, t2) = call(
        &server,
        reqwest::Method::POST,
        "/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh1})),
    )
    .await;
    assert_eq!(status, 200, "{t2}");
    let access2 = t2["access_token"].as_str().unwrap().to_owned();
    let refresh2 = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh1);
    assert_eq!(chat_as(&server, "m", Some(&access2)).await.0, 200);

    // Reusing the spent token revokes the whole family: every token of this sign-in stops working.
    let (status, _, body) = call(
        &server,
        reqwest::Method::POST,
        "/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh1})),
    )
    .await;
    assert_error(status, &body, 401, "authentication_error");
    for token in [&access, &access2] {
        let (status, body) = chat_as(&server, "m", Some(token)).await;
        assert_error(status, &body, 401, "authentication_error");
    }
    let (status, _, body) = call(
        &server,
        reqwest::Method::POST,
        "/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh2})),
    )
    .await;
    assert_error(status, &body, 401, "authentication_error");

    // Logout by refresh token, and by access token alone.
    let (_, t3) = login(&server, "dev@example.com", "hunter2-hunter2").await;
    let (status, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/auth/logout",
        None,
        Some(json!({"refresh_token": t3["refresh_token"]})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = chat_as(&server, "m", t3["access_token"].as_str()).await;
    assert_eq!(status, 401);
    let (status, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/auth/refresh",
        None,
        Some(json!({"refresh_token": t3["refresh_token"]})),
    )
    .await;
    assert_eq!(status, 401);
    let (_, t4) = login(&server, "dev@example.com", "hunter2-hunter2").await;
    let a4 = t4["access_token"].as_str().unwrap();
    let (status, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/auth/logout",
        Some(a4),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(chat_as(&server, "m", Some(a4)).await.0, 401);

    // A disabled account can neither sign in nor use its sessions.
    let (_, t5) = login(&server, "dev@example.com", "hunter2-hunter2").await;
    admin(
        &server,
        reqwest::Method::PATCH,
        &format!("/admin/accounts/{account}"),
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(
        chat_as(&server, "m", t5["access_token"].as_str()).await.0,
        401
    );
    assert_eq!(
        login(&server, "dev@example.com", "hunter2-hunter2").await.0,
        401
    );
}

#[tokio::test]
async fn developers_manage_their_own_keys_within_the_limit() {
    let (_mock, server) = one_profile_server(true, &["max_keys_per_account: 2"]).await;
    create_account(&server, "dev@example.com", "password-dev", "developer").await;
    create_account(&server, "user@example.com", "password-user", "user").await;
    let (_, dev) = login(&server, "dev@example.com", "password-dev").await;
    let dev = dev["access_token"].as_str().unwrap().to_owned();
    let (_, user) = login(&server, "user@example.com", "password-user").await;
    let user = user["access_token"].as_str().unwrap().to_owned();

    let create = |name: &str| json!({"name": name, "scopes": ["m"]});
    let (status, _, k1) = call(
        &server,
        reqwest::Method::POST,
        "/v1/keys",
        Some(&dev),
        Some(create("one")),
    )
    .await;
    assert_eq!(status, 201, "{k1}");
    assert_eq!(k1["tier"], "free");
    let (status, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/v1/keys",
        Some(&dev),
        Some(create("two")),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _, body) = call(
        &server,
        reqwest::Method::POST,
        "/v1/keys",
        Some(&dev),
        Some(create("three")),
    )
    .await;
    assert_error(status, &body, 403, "permission_error");
    let (_, _, list) = call(&server, reqwest::Method::GET, "/v1/keys", Some(&dev), None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    let key = k1["key"].as_str().unwrap();
    assert_eq!(chat_as(&server, "m", Some(key)).await.0, 200);
    assert_eq!(chat_as(&server, "n", Some(key)).await.0, 403);
    // An API key cannot mint more keys: managing keys needs a signed-in session.
    let (status, _, body) = call(
        &server,
        reqwest::Method::POST,
        "/v1/keys",
        Some(key),
        Some(create("x")),
    )
    .await;
    assert_error(status, &body, 403, "permission_error");
    // A developer may not grant `admin`.
    let (status, _, body) = call(
        &server,
        reqwest::Method::POST,
        "/v1/keys",
        Some(&dev),
        Some(json!({"name": "a", "scopes": ["admin"]})),
    )
    .await;
    assert_error(status, &body, 403, "permission_error");

    // Users see their keys but do not manage them; nobody touches another account's keys.
    let (status, _, body) = call(
        &server,
        reqwest::Method::POST,
        "/v1/keys",
        Some(&user),
        Some(create("u")),
    )
    .await;
    assert_error(status, &body, 403, "permission_error");
    let (status, _, _) = call(&server, reqwest::Method::GET, "/v1/keys", Some(&user), None).await;
    assert_eq!(status, 200);
    let k1_path = format!("/v1/keys/{}", k1["id"].as_str().unwrap());
    let (_, admin_made) = create_key(&server, json!({"name": "other"})).await;
    let _ = admin_made;
    let other = admin(&server, reqwest::Method::GET, "/admin/keys", None).await;
    let other_id = other["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "other")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, _) = call(
        &server,
        reqwest::Method::DELETE,
        &format!("/v1/keys/{other_id}"),
        Some(&dev),
        None,
    )
    .await;
    assert_eq!(status, 404);

    let (status, _, revoked) =
        call(&server, reqwest::Method::DELETE, &k1_path, Some(&dev), None).await;
    assert_eq!(status, 200);
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(chat_as(&server, "m", Some(key)).await.0, 401);
    let (status, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/v1/keys",
        Some(&dev),
        Some(create("three")),
    )
    .await;
    assert_eq!(
        status, 201,
        "a revoked key no longer counts against the limit"
    );
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_account_and_per_address() {
    let (_mock, server) = one_profile_server(
        true,
        &[
            "login:",
            "  max_failures_per_account: 2",
            "  max_attempts_per_address: 8",
            "  window: 2s",
        ],
    )
    .await;
    create_account(&server, "a@example.com", "password-a", "user").await;
    for _ in 0..2 {
        assert_eq!(login(&server, "a@example.com", "nope-nope").await.0, 401);
    }
    let resp = client()
        .post(server.url("/auth/login"))
        .json(&json!({"email": "a@example.com", "password": "password-a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(resp.headers()["x-ratelimit-limit"], "2");
    let body: Value = resp.json().await.unwrap();
    assert_error(429, &body, 429, "rate_limit_error");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(login(&server, "a@example.com", "password-a").await.0, 200);

    // Per address: eight attempts of any outcome per window, whatever the email.
    for i in 0..7 {
        let _ = login(&server, &format!("x{i}@example.com"), "whatever-pw").await;
    }
    let (status, body) = login(&server, "a@example.com", "password-a").await;
    assert_error(status, &body, 429, "rate_limit_error");
}

// --- external JWTs -------------------------------------------------------------------------------

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture(name)).unwrap()
}

fn ec(name: &str) -> EncodingKey {
    EncodingKey::from_ec_pem(&fixture(name)).unwrap()
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

fn jwks(keys: Vec<Jwk>) -> String {
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

const ISS: &str = "https://idp.test";

fn claims(sub: &str, role: &str) -> Value {
    json!({"iss": ISS, "aud": "switchyard", "sub": sub, "exp": now() + 300, "iat": now(),
           "groups": [role], "plan": "pro", "org": {"project": "apollo"}})
}

/// A JWKS document served over HTTP on 127.0.0.1, counting fetches.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = b.lock().unwrap().clone();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        JwksServer { url, body, hits }
    }

    fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn wait_hits(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.hits() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "JWKS fetched {} times, wanted {n}",
                self.hits()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn jwt_server(jwks: &JwksServer) -> (MockUpstream, Server) {
    let lines = [
        "issuers:".to_owned(),
        format!("  - issuer: {ISS}"),
        "    audience: switchyard".to_owned(),
        format!("    jwks_url: {}", jwks.url),
        "    jwks_refetch_interval: 1s".to_owned(),
        "    claims: {subject: sub, role: groups, tier: plan, project: org.project}".to_owned(),
        "  - issuer: https://ci.test".to_owned(),
        "    audience: switchyard".to_owned(),
        "    shared_secret_env: CI_JWT_SECRET".to_owned(),
    ];
    let mock = MockUpstream::start_named("a").await;
    let mut config = ConfigBuilder::default()
        .profile("a", &mock)
        .model("m", &["a"]);
    config.auth_required = true;
    config.extra_auth_yaml = lines.to_vec();
    let server = Server::start_with_env(
        &config,
        &[("CI_JWT_SECRET", "ci-shared-secret-0123456789abcdef")],
    );
    (mock, server)
}

#[tokio::test]
async fn jwks_tokens_are_accepted_and_rotation_refetches_unknown_kids() {
    let (k1, k2, e1) = (rsa("rsa1.pem"), rsa("rsa2.pem"), ec("ec1.pem"));
    let jwks_server = JwksServer::start(jwks(vec![
        jwk(&k1, Algorithm::RS256, "k1"),
        jwk(&e1, Algorithm::ES256, "e1"),
    ]))
    .await;
    let (_mock, server) = jwt_server(&jwks_server).await;
    jwks_server.wait_hits(1).await; // prefetched at start-up

    let rs = sign(
        Algorithm::RS256,
        &k1,
        Some("k1"),
        &claims("alice", "developer"),
    );
    assert_eq!(chat_as(&server, "m", Some(&rs)).await.0, 200);
    let es = sign(Algorithm::ES256, &e1, Some("e1"), &claims("bob", "user"));
    assert_eq!(chat_as(&server, "m", Some(&es)).await.0, 200);
    let (status, _, me) = call(&server, reqwest::Method::GET, "/v1/me", Some(&rs), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["credential"], "external_jwt");
    assert_eq!(me["issuer"], ISS);
    assert_eq!(me["subject"], "alice");
    assert_eq!(me["role"], "developer");
    assert_eq!(me["tier"], "pro");
    assert_eq!(me["project"], "apollo");
    assert_eq!(me["usage"]["today"]["requests"], 1, "{me}");
    assert_eq!(jwks_server.hits(), 1, "cached keys need no fetch");

    // The issuer rotates to k2. An unknown kid triggers a refetch once the interval (1 s) has passed.
    jwks_server.set(jwks(vec![jwk(&k2, Algorithm::RS256, "k2")]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rs2 = sign(
        Algorithm::RS256,
        &k2,
        Some("k2"),
        &claims("alice", "developer"),
    );
    assert_eq!(chat_as(&server, "m", Some(&rs2)).await.0, 200);
    assert_eq!(jwks_server.hits(), 2);
    // k1 left the JWKS; unknown kids within the interval cause no fetch.
    let (status, body) = chat_as(&server, "m", Some(&rs)).await;
    assert_error(status, &body, 401, "authentication_error");
    let stranger = sign(Algorithm::RS256, &k1, Some("who"), &claims("eve", "user"));
    for _ in 0..3 {
        assert_eq!(chat_as(&server, "m", Some(&stranger)).await.0, 401);
    }
    assert_eq!(jwks_server.hits(), 2, "refetches are rate-limited");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(chat_as(&server, "m", Some(&stranger)).await.0, 401);
    assert_eq!(jwks_server.hits(), 3);

    // A shared-secret issuer takes HS256 with its secret only.
    let ci = json!({"iss": "https://ci.test", "aud": "switchyard", "sub": "pipeline", "exp": now() + 60});
    let good = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"ci-shared-secret-0123456789abcdef"),
        None,
        &ci,
    );
    assert_eq!(chat_as(&server, "m", Some(&good)).await.0, 200);
    let bad = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"guessed"),
        None,
        &ci,
    );
    assert_eq!(chat_as(&server, "m", Some(&bad)).await.0, 401);
}

#[tokio::test]
async fn bad_jwts_are_refused() {
    let k1 = rsa("rsa1.pem");
    let jwks_server = JwksServer::start(jwks(vec![jwk(&k1, Algorithm::RS256, "k1")])).await;
    let (mock, server) = jwt_server(&jwks_server).await;
    let with = |patch: Value| {
        let mut c = claims("alice", "user");
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let ok = sign(
        Algorithm::RS256,
        &k1,
        Some("k1"),
        &with(json!({"exp": now() - 10})),
    );
    assert_eq!(
        chat_as(&server, "m", Some(&ok)).await.0,
        200,
        "10 s past exp is within the leeway"
    );

    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("alice", "admin"))
    );
    let none_upper = format!(
        "{}.{}.",
        b64(&json!({"alg": "None"})),
        b64(&claims("alice", "admin"))
    );
    // Algorithm confusion: HS256 keyed with the RSA public key, as PEM text and as DER.
    let public_pem = fixture("rsa1.pub.pem");
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        Some("k1"),
        &claims("alice", "admin"),
    );
    let public_der = URL_SAFE_NO_PAD
        .decode(
            String::from_utf8(public_pem.clone())
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>()
                .replace('+', "-")
                .replace('/', "_")
                .trim_end_matches('='),
        )
        .unwrap();
    let confused_der = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_der),
        Some("k1"),
        &claims("alice", "admin"),
    );
    let mut jku = Header::new(Algorithm::RS256);
    jku.kid = Some("k1".into());
    jku.jku = Some("https://evil.test/jwks.json".into());
    let jku = jsonwebtoken::encode(&jku, &claims("alice", "user"), &k1).unwrap();
    let mut embedded = Header::new(Algorithm::RS256);
    embedded.jwk = Some(jwk(&k1, Algorithm::RS256, "k1"));
    let embedded = jsonwebtoken::encode(&embedded, &claims("alice", "user"), &k1).unwrap();
    let mut x5u = Header::new(Algorithm::RS256);
    x5u.kid = Some("k1".into());
    x5u.x5u = Some("https://evil.test/cert.pem".into());
    let x5u = jsonwebtoken::encode(&x5u, &claims("alice", "user"), &k1).unwrap();
    let oversized = sign(
        Algorithm::RS256,
        &k1,
        Some("k1"),
        &with(json!({"padding": "x".repeat(9000)})),
    );
    let other_key = sign(
        Algorithm::RS256,
        &rsa("rsa2.pem"),
        Some("k1"),
        &claims("alice", "user"),
    );

    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(
                Algorithm::RS256,
                &k1,
                Some("k1"),
                &with(json!({"exp": now() - 120})),
            ),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::RS256,
                &k1,
                Some("k1"),
                &with(json!({"nbf": now() + 120})),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::RS256,
                &k1,
                Some("k1"),
                &with(json!({"aud": "someone-else"})),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::RS256,
                &k1,
                Some("k1"),
                &with(json!({"iss": "https://evil.test"})),
            ),
        ),
        (
            "no exp",
            sign(
                Algorithm::RS256,
                &k1,
                Some("k1"),
                &with(json!({"exp": null})),
            ),
        ),
        ("alg none", none),
        ("alg None", none_upper),
        ("HS256 with the RSA public key (PEM)", confused),
        ("HS256 with the RSA public key (DER)", confused_der),
        ("jku header", jku),
        ("jwk header", embedded),
        ("x5u header", x5u),
        ("signed by another key", other_key),
        ("oversized", oversized),
    ];
    let before = mock.request_count();
    for (what, token) in &cases {
        let (status, body) = chat_as(&server, "m", Some(token)).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_error(status, &body, 401, "authentication_error");
        // The admin routes refuse them too.
        let (status, _, _) = call(
            &server,
            reqwest::Method::GET,
            "/admin/keys",
            Some(token),
            None,
        )
        .await;
        assert_eq!(status, 401, "{what} on an admin route");
    }
    assert_eq!(
        mock.request_count(),
        before,
        "a refused token reached the upstream"
    );
    let (status, _, body) = call(
        &server,
        reqwest::Method::GET,
        "/v1/me",
        Some(&cases[0].1),
        None,
    )
    .await;
    assert_error(status, &body, 401, "authentication_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
}

#[tokio::test]
async fn an_external_admin_reaches_admin_routes_and_a_user_does_not() {
    let k1 = rsa("rsa1.pem");
    let jwks_server = JwksServer::start(jwks(vec![jwk(&k1, Algorithm::RS256, "k1")])).await;
    let (_mock, server) = jwt_server(&jwks_server).await;
    jwks_server.wait_hits(1).await;
    let admin_token = sign(Algorithm::RS256, &k1, Some("k1"), &claims("root", "admin"));
    let user_token = sign(Algorithm::RS256, &k1, Some("k1"), &claims("joe", "user"));
    let (status, _, _) = call(
        &server,
        reqwest::Method::GET,
        "/admin/profiles",
        Some(&admin_token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, created) = call(
        &server,
        reqwest::Method::POST,
        "/admin/keys",
        Some(&admin_token),
        Some(json!({"name": "by-sso"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created_by"], format!("jwt:{ISS}:root"));
    let (status, _, body) = call(
        &server,
        reqwest::Method::GET,
        "/admin/keys",
        Some(&user_token),
        None,
    )
    .await;
    assert_error(status, &body, 403, "permission_error");
    let (status, _, _) = call(
        &server,
        reqwest::Method::GET,
        "/admin/profiles",
        Some(&user_token),
        None,
    )
    .await;
    assert_eq!(status, 401);
}

// --- audit and secrets ---------------------------------------------------------------------------

/// Every audit entry, newest first, following the cursors with small pages.
async fn all_audit(server: &Server) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/audit?limit=3&cursor={c}"),
            None => "/admin/audit?limit=3".to_owned(),
        };
        let page = admin(server, reqwest::Method::GET, &path, None).await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 3);
        out.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn every_event_is_audited_and_no_secret_reaches_logs_or_audit() {
    let mock = MockUpstream::start_named("a").await;
    let mut config = ConfigBuilder::default()
        .profile("a", &mock)
        .model("m", &["a"]);
    config.auth_required = true;
    // Debug logging: the strictest place to look for leaks.
    let server = Server::start_with_env(&config, &[("RUST_LOG", "debug")]);
    let password = "correct-horse-battery-staple";
    let account = create_account(&server, "audit@example.com", password, "admin").await;
    assert_eq!(
        login(&server, "audit@example.com", "wrong-password-1")
            .await
            .0,
        401
    );
    let (_, t1) = login(&server, "audit@example.com", password).await;
    let refresh1 = t1["refresh_token"].as_str().unwrap().to_owned();
    let access1 = t1["access_token"].as_str().unwrap().to_owned();
    let (_, _, t2) = call(
        &server,
        reqwest::Method::POST,
        "/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh1})),
    )
    .await;
    let refresh2 = t2["refresh_token"].as_str().unwrap().to_owned();
    let (status, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh1})),
    )
    .await;
    assert_eq!(status, 401);
    let (_, t3) = login(&server, "audit@example.com", password).await;
    let (status, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/auth/logout",
        None,
        Some(json!({"refresh_token": t3["refresh_token"]})),
    )
    .await;
    assert_eq!(status, 200);
    let (id, key) = create_key(&server, json!({"name": "audited"})).await;
    assert_eq!(chat_as(&server, "m", Some(&key)).await.0, 200);
    let rotated = admin(
        &server,
        reqwest::Method::POST,
        &format!("/admin/keys/{id}/rotate"),
        Some(json!({"grace": 0})),
    )
    .await;
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(chat_as(&server, "m", Some(&key)).await.0, 401);
    assert_eq!(chat_as(&server, "m", Some(&new_key)).await.0, 200);
    admin(
        &server,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        None,
    )
    .await;
    admin(
        &server,
        reqwest::Method::PATCH,
        &format!("/admin/accounts/{account}"),
        Some(json!({"tier": "team"})),
    )
    .await;

    let entries = all_audit(&server).await;
    let events: Vec<&str> = entries
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for want in [
        "account_created",
        "login_failed",
        "login_succeeded",
        "token_refreshed",
        "refresh_token_reused",
        "logout",
        "key_created",
        "key_rotated",
        "key_revoked",
        "account_updated",
    ] {
        assert!(events.contains(&want), "no {want} in {events:?}");
    }
    assert_eq!(events[0], "account_updated", "newest first: {events:?}");
    let ts: Vec<&str> = entries.iter().map(|e| e["ts"].as_str().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "{ts:?}");
    let failed = entries
        .iter()
        .find(|e| e["event"] == "login_failed")
        .unwrap();
    assert_eq!(failed["outcome"], "failure");
    assert_eq!(failed["target"], format!("account:{account}"));
    assert_eq!(failed["address"], "127.0.0.1");
    let created = entries
        .iter()
        .find(|e| e["event"] == "key_created")
        .unwrap();
    assert_eq!(created["actor"], "admin_token");
    assert_eq!(created["target"], format!("key:{id}"));

    let secrets = [
        password.to_owned(),
        "wrong-password-1".to_owned(),
        key.split('_').next_back().unwrap().to_owned(),
        new_key.split('_').next_back().unwrap().to_owned(),
        refresh1.split('_').next_back().unwrap().to_owned(),
        refresh2.split('_').next_back().unwrap().to_owned(),
        access1.clone(),
        access1.split('.').next_back().unwrap().to_owned(),
        ADMIN_TOKEN.to_owned(),
    ];
    let audit_text = serde_json::to_string(&entries).unwrap();
    // Let the last lines reach the log reader.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = server.logs();
    assert!(logs.contains("audit"), "audit events are logged too");
    for secret in &secrets {
        assert!(
            !audit_text.contains(secret.as_str()),
            "a secret is in the audit log"
        );
        assert!(
            !logs.contains(secret.as_str()),
            "a secret is in the logs: {secret}"
        );
    }
    let key_list = admin(&server, reqwest::Method::GET, "/admin/keys", None)
        .await
        .to_string();
    assert!(!key_list.contains(secrets[2].as_str()) && !key_list.contains(secrets[3].as_str()));
    let accounts = admin(&server, reqwest::Method::GET, "/admin/accounts", None)
        .await
        .to_string();
    assert!(!accounts.contains("argon2") && !accounts.contains(password));
}

// --- the CLI ---------------------------------------------------------------------------------------

/// Runs `switchyard keys ARGS --url URL` with the admin token; returns (exit code, stdout, stderr).
fn keys_cli(server: &Server, args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("keys")
        .args(args)
        .arg("--url")
        .arg(server.url(""))
        .current_dir(server.path());
    cmd.env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env_remove("SWITCHYARD_URL")
        .env_remove("SWITCHYARD_CONFIG");
    if let Some(t) = token {
        cmd.env("SWITCHYARD_ADMIN_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

#[tokio::test]
async fn the_keys_cli_creates_lists_rotates_and_revokes() {
    let (_mock, server) = one_profile_server(true, &[]).await;
    let run = |args: &'static [&'static str]| keys_cli(&server, args, Some(ADMIN_TOKEN));

    let (code, out, err) = run(&[
        "create",
        "--name",
        "cli",
        "--scopes",
        "m",
        "--expires-in",
        "30d",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let key = last_line(&out).to_owned();
    assert!(key.starts_with("sy_"), "{out}");
    assert_eq!(
        out.matches(key.as_str()).count(),
        1,
        "the secret is printed once"
    );
    let id = key.split('_').nth(1).unwrap().to_owned();
    assert_eq!(chat_as(&server, "m", Some(&key)).await.0, 200);
    assert_eq!(chat_as(&server, "n", Some(&key)).await.0, 403);

    let (code, out, _) = run(&["list"]);
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("cli") && row.contains("active") && row.contains(&format!("sy_{id}")),
        "{row}"
    );
    assert!(!out.contains(&key));

    let (code, out, err) = keys_cli(
        &server,
        &["rotate", &id, "--grace", "0s"],
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 0, "{err}");
    let new_key = last_line(&out).to_owned();
    assert!(new_key.starts_with(&format!("sy_{id}_")) && new_key != key);
    assert_eq!(chat_as(&server, "m", Some(&key)).await.0, 401);
    assert_eq!(chat_as(&server, "m", Some(&new_key)).await.0, 200);

    let (code, out, _) = keys_cli(&server, &["revoke", &id], Some(ADMIN_TOKEN));
    assert_eq!(code, 0);
    assert!(out.contains("revoked"));
    assert_eq!(chat_as(&server, "m", Some(&new_key)).await.0, 401);
    let (_, out, _) = run(&["list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("revoked")),
        "{out}"
    );

    let (code, _, err) = keys_cli(&server, &["list"], None);
    assert_eq!(code, 1);
    assert!(err.contains("SWITCHYARD_ADMIN_TOKEN"), "{err}");
    let (code, _, err) = keys_cli(&server, &["list"], Some("wrong-token"));
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
}
