//! Accounts signing in: wrong passwords, the session's `/v1/me`, refresh rotation and reuse detection,
//! logout by either token, disabled accounts, and the sign-in rate limits.

use std::time::Duration;

use serde_json::json;

use super::{assert_error, chat_as, create_account, login, one_profile_server};
use crate::support::*;

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

    let (status, _, me) = server.get("/v1/me").bearer(&access).send().await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["credential"], "session");
    assert_eq!(me["role"], "developer");
    assert_eq!(me["tier"], "free");
    assert_eq!(me["account"]["email"], "dev@example.com");
    assert_eq!(me["limits"]["max_keys"], 10);
    assert_eq!(chat_as(&server, "m", Some(&access)).await.0, 200);

    // Refresh rotates: a new pair, and the old refresh token is spent.
    let (status, _, t2) = server
        .post("/auth/refresh")
        .json(json!({"refresh_token": refresh1}))
        .send()
        .await;
    assert_eq!(status, 200, "{t2}");
    let access2 = t2["access_token"].as_str().unwrap().to_owned();
    let refresh2 = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh1);
    assert_eq!(chat_as(&server, "m", Some(&access2)).await.0, 200);

    // Reusing the spent token revokes the whole family: every token of this sign-in stops working.
    let (status, _, body) = server
        .post("/auth/refresh")
        .json(json!({"refresh_token": refresh1}))
        .send()
        .await;
    assert_error(status, &body, 401, "authentication_error");
    for token in [&access, &access2] {
        let (status, body) = chat_as(&server, "m", Some(token)).await;
        assert_error(status, &body, 401, "authentication_error");
    }
    let (status, _, body) = server
        .post("/auth/refresh")
        .json(json!({"refresh_token": refresh2}))
        .send()
        .await;
    assert_error(status, &body, 401, "authentication_error");

    // Logout by refresh token, and by access token alone.
    let (_, t3) = login(&server, "dev@example.com", "hunter2-hunter2").await;
    let (status, _, _) = server
        .post("/auth/logout")
        .json(json!({"refresh_token": t3["refresh_token"]}))
        .send()
        .await;
    assert_eq!(status, 200);
    let (status, _) = chat_as(&server, "m", t3["access_token"].as_str()).await;
    assert_eq!(status, 401);
    let (status, _, _) = server
        .post("/auth/refresh")
        .json(json!({"refresh_token": t3["refresh_token"]}))
        .send()
        .await;
    assert_eq!(status, 401);
    let (_, t4) = login(&server, "dev@example.com", "hunter2-hunter2").await;
    let a4 = t4["access_token"].as_str().unwrap();
    let (status, _, _) = server.post("/auth/logout").bearer(a4).send().await;
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
async fn sign_in_is_rate_limited_per_account() {
    // A window long enough for three password checks on a loaded machine; the wait below is the
    // window's own Retry-After, not a guess.
    let (_mock, server) = one_profile_server(
        true,
        &[
            "login:",
            "  max_failures_per_account: 2",
            "  max_attempts_per_address: 100",
            "  window: 6s",
        ],
    )
    .await;
    create_account(&server, "a@example.com", "password-a", "user").await;
    for _ in 0..2 {
        assert_eq!(login(&server, "a@example.com", "nope-nope").await.0, 401);
    }
    // The right password is refused too while the account is locked out.
    let (status, headers, body) = server
        .post("/auth/login")
        .json(json!({"email": "a@example.com", "password": "password-a"}))
        .send()
        .await;
    assert_eq!(status, 429);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry), "{retry}");
    assert_eq!(headers["x-ratelimit-limit"], "2");
    assert_error(status, &body, 429, "rate_limit_error");
    tokio::time::sleep(Duration::from_millis(retry * 1000 + 100)).await;
    assert_eq!(login(&server, "a@example.com", "password-a").await.0, 200);
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_address() {
    // Eight attempts of any outcome per window, whatever the email; the window outlasts the test.
    let (_mock, server) = one_profile_server(
        true,
        &["login:", "  max_attempts_per_address: 8", "  window: 1h"],
    )
    .await;
    create_account(&server, "a@example.com", "password-a", "user").await;
    assert_eq!(login(&server, "a@example.com", "password-a").await.0, 200);
    for i in 0..7 {
        let _ = login(&server, &format!("x{i}@example.com"), "whatever-pw").await;
    }
    let (status, body) = login(&server, "a@example.com", "password-a").await;
    assert_error(status, &body, 429, "rate_limit_error");
}
