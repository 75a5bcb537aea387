//! External JWTs: keys from a JWKS served here (RS256 and ES256, rotation and rate-limited refetches),
//! a shared-secret issuer, the tokens that must be refused, and external admins on admin routes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{assert_error, chat_as};
use crate::support::*;

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
                    let body = b.lock().clone();
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
        *self.body.lock() = body;
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
        "    jwks_refetch_interval: 3s".to_owned(),
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
    let (status, _, me) = server.get("/v1/me").bearer(&rs).send().await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["credential"], "external_jwt");
    assert_eq!(me["issuer"], ISS);
    assert_eq!(me["subject"], "alice");
    assert_eq!(me["role"], "developer");
    assert_eq!(me["tier"], "pro");
    assert_eq!(me["project"], "apollo");
    assert_eq!(me["usage"]["today"]["requests"], 1, "{me}");
    assert_eq!(jwks_server.hits(), 1, "cached keys need no fetch");

    // The issuer rotates to k2. An unknown kid triggers a refetch once the interval (3 s) has passed.
    // (3 s, not 1 s: the four refused calls below must fall inside one interval on a loaded machine.)
    jwks_server.set(jwks(vec![jwk(&k2, Algorithm::RS256, "k2")]));
    tokio::time::sleep(Duration::from_millis(3100)).await;
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
    tokio::time::sleep(Duration::from_millis(3100)).await;
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
    // A token signed by k1 whose claims differ from a good one's by `patch`.
    let k1_with = |patch: Value| sign(Algorithm::RS256, &k1, Some("k1"), &with(patch));
    let ok = k1_with(json!({"exp": now() - 10}));
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
    let oversized = k1_with(json!({"padding": "x".repeat(9000)}));
    let other_key = sign(
        Algorithm::RS256,
        &rsa("rsa2.pem"),
        Some("k1"),
        &claims("alice", "user"),
    );

    let cases: Vec<(&str, String)> = vec![
        ("expired", k1_with(json!({"exp": now() - 120}))),
        ("not yet valid", k1_with(json!({"nbf": now() + 120}))),
        ("wrong audience", k1_with(json!({"aud": "someone-else"}))),
        ("wrong issuer", k1_with(json!({"iss": "https://evil.test"}))),
        ("no exp", k1_with(json!({"exp": null}))),
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
        let (status, _, _) = server.get("/admin/keys").bearer(token).send().await;
        assert_eq!(status, 401, "{what} on an admin route");
    }
    assert_eq!(
        mock.request_count(),
        before,
        "a refused token reached the upstream"
    );
    let (status, _, body) = server.get("/v1/me").bearer(&cases[0].1).send().await;
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
    let (status, _, _) = server
        .get("/admin/profiles")
        .bearer(&admin_token)
        .send()
        .await;
    assert_eq!(status, 200);
    let (status, _, created) = server
        .post("/admin/keys")
        .bearer(&admin_token)
        .json(json!({"name": "by-sso"}))
        .send()
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created_by"], format!("jwt:{ISS}:root"));
    let (status, _, body) = server.get("/admin/keys").bearer(&user_token).send().await;
    assert_error(status, &body, 403, "permission_error");
    let (status, _, body) = server
        .get("/admin/profiles")
        .bearer(&user_token)
        .send()
        .await;
    assert_error(status, &body, 403, "permission_error");
}
