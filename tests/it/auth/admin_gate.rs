//! The one admin gate: every admin route answers 401 `authentication_error` without a credential (or
//! with a wrong one) and 403 `permission_error` to a valid credential without the admin role.

use reqwest::Method;
use serde_json::json;

use super::{assert_error, create_key, one_profile_server};

/// Every admin route, with a method and a path that exists.
const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/admin/profiles"),
    ("POST", "/admin/profiles/a/reset"),
    ("POST", "/admin/reload"),
    ("GET", "/admin/keys"),
    ("POST", "/admin/keys"),
    ("DELETE", "/admin/keys/k1"),
    ("POST", "/admin/keys/k1/rotate"),
    ("GET", "/admin/accounts"),
    ("POST", "/admin/accounts"),
    ("GET", "/admin/accounts/acct1"),
    ("PATCH", "/admin/accounts/acct1"),
    ("GET", "/admin/audit"),
    ("GET", "/admin/usage"),
    ("GET", "/admin/accounts/acct1/credits"),
    ("POST", "/admin/accounts/acct1/credits"),
    ("PUT", "/admin/accounts/acct1/tier"),
];

#[actix_web::test]
async fn every_admin_route_gives_401_without_and_403_for_a_non_admin_credential() {
    let (_mock, server) = one_profile_server(true, &[]).await;
    let (_, user_key) = create_key(&server, json!({"name": "user"})).await;
    for (method, path) in ADMIN_ROUTES {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (status, _, body) = server
            .request(method.clone(), path)
            .json(json!({}))
            .send()
            .await;
        assert_error(status, &body, 401, "authentication_error");
        let (status, _, body) = server
            .request(method.clone(), path)
            .bearer("sy_wrong_not_a_key")
            .json(json!({}))
            .send()
            .await;
        assert_eq!(status, 401, "{method} {path} with a wrong key: {body}");
        let (status, _, body) = server
            .request(method.clone(), path)
            .bearer(&user_key)
            .json(json!({}))
            .send()
            .await;
        assert_eq!(status, 403, "{method} {path} with a user key: {body}");
        assert_error(status, &body, 403, "permission_error");
    }
}
