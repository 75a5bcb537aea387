//! Gateway keys: both header forms, the 401s, rotation with a grace period, scopes, and the checks
//! that still apply when auth is not required.

use std::time::Duration;

use serde_json::json;

use super::{assert_error, chat_as, create_key, one_profile_server};
use crate::support::*;

#[tokio::test]
async fn keys_work_as_bearer_and_x_api_key_and_usage_is_theirs() {
    let (mock, server) = one_profile_server(true, &[]).await;
    let (id, key) = create_key(&server, json!({"name": "ci", "account": "team-a"})).await;
    assert!(key.starts_with(&format!("sy_{id}_")), "{key}");

    let (status, body) = chat_as(&server, "m", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = server
        .post("/v1/chat/completions")
        .header("X-API-Key", &key)
        .json(chat_body("m"))
        .send()
        .await;
    assert_eq!(status, 200);
    // The upstream sees the profile's key, never the client's.
    for r in mock.requests() {
        assert_eq!(r.bearer(), Some("sk-a-secret"));
        assert!(!format!("{:?}", r.headers).contains(&key));
    }

    let (status, _, me) = server.get("/v1/me").bearer(&key).send().await;
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
    let (_, _, models) = server.get("/v1/models").bearer(&only_m).send().await;
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m"]);
    let (status, _, _) = server.get("/v1/models/n").bearer(&only_m).send().await;
    assert_eq!(status, 404);

    // Not an admin credential: refused on admin routes.
    let (status, _, body) = server.get("/admin/keys").bearer(&only_m).send().await;
    assert_error(status, &body, 403, "permission_error");
    let (status, _, body) = server.get("/admin/profiles").bearer(&only_m).send().await;
    assert_error(status, &body, 403, "permission_error");

    // A key with the `admin` scope is an admin credential everywhere.
    let (_, admin_key) = create_key(&server, json!({"name": "ops", "scopes": ["admin"]})).await;
    let (status, _, _) = server.get("/admin/keys").bearer(&admin_key).send().await;
    assert_eq!(status, 200);
    let (status, _, _) = server
        .get("/admin/profiles")
        .bearer(&admin_key)
        .send()
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
    let (status, _, me) = server.get("/v1/me").bearer(&key).send().await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["models"], json!(["m"]));
    let (status, _, body) = server.get("/v1/me").send().await;
    assert_error(status, &body, 401, "authentication_error");
}
