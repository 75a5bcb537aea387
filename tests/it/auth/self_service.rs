//! Self-service keys: a signed-in developer manages their own keys within the account's limit; users
//! only see theirs, API keys mint none, and nobody touches another account's keys.

use serde_json::json;

use super::{assert_error, chat_as, create_account, create_key, login, one_profile_server};
use crate::support::*;

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
    let (status, _, k1) = server
        .post("/v1/keys")
        .bearer(&dev)
        .json(create("one"))
        .send()
        .await;
    assert_eq!(status, 201, "{k1}");
    assert_eq!(k1["tier"], "free");
    let (status, _, _) = server
        .post("/v1/keys")
        .bearer(&dev)
        .json(create("two"))
        .send()
        .await;
    assert_eq!(status, 201);
    let (status, _, body) = server
        .post("/v1/keys")
        .bearer(&dev)
        .json(create("three"))
        .send()
        .await;
    assert_error(status, &body, 403, "permission_error");
    let (_, _, list) = server.get("/v1/keys").bearer(&dev).send().await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    let key = k1["key"].as_str().unwrap();
    assert_eq!(chat_as(&server, "m", Some(key)).await.0, 200);
    assert_eq!(chat_as(&server, "n", Some(key)).await.0, 403);
    // An API key cannot mint more keys: managing keys needs a signed-in session.
    let (status, _, body) = server
        .post("/v1/keys")
        .bearer(key)
        .json(create("x"))
        .send()
        .await;
    assert_error(status, &body, 403, "permission_error");
    // A developer may not grant `admin`.
    let (status, _, body) = server
        .post("/v1/keys")
        .bearer(&dev)
        .json(json!({"name": "a", "scopes": ["admin"]}))
        .send()
        .await;
    assert_error(status, &body, 403, "permission_error");

    // Users see their keys but do not manage them; nobody touches another account's keys.
    let (status, _, body) = server
        .post("/v1/keys")
        .bearer(&user)
        .json(create("u"))
        .send()
        .await;
    assert_error(status, &body, 403, "permission_error");
    let (status, _, _) = server.get("/v1/keys").bearer(&user).send().await;
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
    let (status, _, _) = server
        .delete(&format!("/v1/keys/{other_id}"))
        .bearer(&dev)
        .send()
        .await;
    assert_eq!(status, 404);

    let (status, _, revoked) = server.delete(&k1_path).bearer(&dev).send().await;
    assert_eq!(status, 200);
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(chat_as(&server, "m", Some(key)).await.0, 401);
    let (status, _, _) = server
        .post("/v1/keys")
        .bearer(&dev)
        .json(create("three"))
        .send()
        .await;
    assert_eq!(
        status, 201,
        "a revoked key no longer counts against the limit"
    );
}
