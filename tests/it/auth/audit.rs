//! The audit log: every identity event is recorded, newest first, across cursor pages; and no secret
//! (password, key, refresh or access token, admin token) reaches the audit log, the logs or a listing.

use std::time::Duration;

use serde_json::{json, Value};

use super::{chat_as, create_account, create_key, login};
use crate::support::*;

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
    let (_, _, t2) = server
        .post("/auth/refresh")
        .json(json!({"refresh_token": refresh1}))
        .send()
        .await;
    let refresh2 = t2["refresh_token"].as_str().unwrap().to_owned();
    let (status, _, _) = server
        .post("/auth/refresh")
        .json(json!({"refresh_token": refresh1}))
        .send()
        .await;
    assert_eq!(status, 401);
    let (_, t3) = login(&server, "audit@example.com", password).await;
    let (status, _, _) = server
        .post("/auth/logout")
        .json(json!({"refresh_token": t3["refresh_token"]}))
        .send()
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
