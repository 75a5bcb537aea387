//! OAuth2 profiles: `switchyard login` against a mock authorization server (the test plays the
//! browser), then the server using, refreshing and losing the token.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const CLIENT_ID: &str = "switchyard-test";

/// What the mock authorization server remembers and counts.
#[derive(Default)]
pub(crate) struct OAuthState {
    /// code -> (code_challenge, redirect_uri) from the authorize step.
    codes: HashMap<String, (String, String)>,
    /// Every token handed out, to search the data dir for them.
    pub(crate) issued: Vec<String>,
    /// The refresh token currently valid.
    refresh_token: Option<String>,
    exchanges: usize,
    verifier_mismatches: usize,
}

/// A port-0 OAuth2 authorization server: `/authorize` redirects to the callback with a code,
/// `/token` checks the PKCE verifier and hands out tokens, `/keys` is OpenRouter's key exchange.
pub(crate) struct MockOAuth {
    addr: std::net::SocketAddr,
    pub(crate) state: Arc<Mutex<OAuthState>>,
    pub(crate) refreshes: Arc<AtomicUsize>,
    revoked: Arc<AtomicBool>,
}

impl MockOAuth {
    pub(crate) async fn start(first_expires_in: u64) -> MockOAuth {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mock = MockOAuth {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            refreshes: Arc::default(),
            revoked: Arc::default(),
        };
        let ctx = (
            mock.state.clone(),
            mock.refreshes.clone(),
            mock.revoked.clone(),
            first_expires_in,
        );
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let ctx = ctx.clone();
                tokio::spawn(async move { serve_oauth(conn, ctx).await });
            }
        });
        mock
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn auth_line(&self, extra: &str) -> String {
        format!(
            "auth: {{type: oauth2, authorize_url: \"{}\", token_url: \"{}\", client_id: {CLIENT_ID}, scopes: [models.read, offline_access], pkce: true{extra}}}",
            self.url("/authorize"),
            self.url("/token")
        )
    }
}

type Ctx = (
    Arc<Mutex<OAuthState>>,
    Arc<AtomicUsize>,
    Arc<AtomicBool>,
    u64,
);

async fn serve_oauth(mut conn: TcpStream, (state, refreshes, revoked, first_expires_in): Ctx) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, mut body) = loop {
        let n = conn.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break (
                String::from_utf8_lossy(&buf[..i]).into_owned(),
                buf[i + 4..].to_vec(),
            );
        }
    };
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while body.len() < len {
        let n = conn.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let json = |status: u16, v: serde_json::Value| (status, vec![], v.to_string());
    let (status, headers, text): (u16, Vec<(String, String)>, String) = match path {
        "/authorize" => {
            assert_eq!(query["response_type"], "code");
            assert_eq!(query["code_challenge_method"], "S256");
            assert_eq!(query.get("client_id").map(String::as_str), Some(CLIENT_ID));
            assert_eq!(query["scope"], "models.read offline_access");
            let code = format!("code-{}", uuid::Uuid::new_v4().simple());
            let redirect = query["redirect_uri"].clone();
            assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
            state.lock().codes.insert(
                code.clone(),
                (query["code_challenge"].clone(), redirect.clone()),
            );
            let location = format!(
                "{redirect}?code={code}&state={}",
                urlencode(&query["state"])
            );
            (302, vec![("location".into(), location)], String::new())
        }
        "/token" if form.get("grant_type").map(String::as_str) == Some("authorization_code") => {
            let mut s = state.lock();
            s.exchanges += 1;
            let found = s.codes.remove(&form["code"]);
            let verified = found.as_ref().is_some_and(|(challenge, redirect)| {
                s256(&form["code_verifier"]) == *challenge && form["redirect_uri"] == *redirect
            });
            if !verified {
                s.verifier_mismatches += usize::from(found.is_some());
                json(
                    400,
                    serde_json::json!({"error": "invalid_grant", "error_description": "PKCE verification failed"}),
                )
            } else {
                assert_eq!(form["client_id"], CLIENT_ID);
                let access = format!("at-first-{}", uuid::Uuid::new_v4().simple());
                let refresh = format!("rt-{}", uuid::Uuid::new_v4().simple());
                s.issued.push(access.clone());
                s.issued.push(refresh.clone());
                s.refresh_token = Some(refresh.clone());
                json(
                    200,
                    serde_json::json!({"access_token": access, "refresh_token": refresh,
                    "expires_in": first_expires_in, "token_type": "Bearer"}),
                )
            }
        }
        "/token" if form.get("grant_type").map(String::as_str) == Some("refresh_token") => {
            refreshes.fetch_add(1, Ordering::SeqCst);
            // Slow enough that concurrent requests pile up behind the refresh.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut s = state.lock();
            if revoked.load(Ordering::SeqCst)
                || s.refresh_token.as_deref() != Some(form["refresh_token"].as_str())
            {
                json(
                    400,
                    serde_json::json!({"error": "invalid_grant", "error_description": "Token has been revoked"}),
                )
            } else {
                let access = format!("at-refreshed-{}", uuid::Uuid::new_v4().simple());
                s.issued.push(access.clone());
                json(
                    200,
                    serde_json::json!({"access_token": access, "expires_in": 3600, "token_type": "Bearer"}),
                )
            }
        }
        "/keys" => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let mut s = state.lock();
            s.exchanges += 1;
            let (challenge, _) = s.codes.remove(v["code"].as_str().unwrap()).unwrap();
            assert_eq!(v["code_challenge_method"], "S256");
            if s256(v["code_verifier"].as_str().unwrap()) != challenge {
                s.verifier_mismatches += 1;
                json(400, serde_json::json!({"error": "invalid_code_verifier"}))
            } else {
                let key = format!("sk-or-v1-{}", uuid::Uuid::new_v4().simple());
                s.issued.push(key.clone());
                json(200, serde_json::json!({"key": key, "user_id": "u1"}))
            }
        }
        _ => json(404, serde_json::json!({"error": "not_found"})),
    };
    respond(&mut conn, (status, headers, text)).await;
}

async fn respond(
    conn: &mut TcpStream,
    (status, headers, text): (u16, Vec<(String, String)>, String),
) {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        text.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&text);
    let _ = conn.write_all(out.as_bytes()).await;
    let _ = conn.shutdown().await;
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A running `switchyard login`, its stdout lines forwarded to `lines`.
struct Login {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Login {
    fn start(server: &Server, profile: &str) -> Login {
        Login::start_sealed_with(server, profile, None)
    }

    /// Like `start`, sealing the token with `secret_key` (`SWITCHYARD_SECRET_KEY`) when given.
    fn start_sealed_with(server: &Server, profile: &str, secret_key: Option<&str>) -> Login {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(["login", profile, "--config"])
            .arg(&server.config_path)
            .arg("--data-dir")
            .arg(server.data_dir())
            .env_remove("SWITCHYARD_SECRET_KEY");
        if let Some(key) = secret_key {
            cmd.env("SWITCHYARD_SECRET_KEY", key);
        }
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().push_str(&line);
                sink.lock().push('\n');
            }
        });
        Login {
            child,
            lines,
            stderr,
        }
    }

    /// The authorize URL the command printed.
    fn authorize_url(&self) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no authorize URL; stderr: {}", self.stderr.lock()));
            if line.starts_with("http://") || line.starts_with("https://") {
                return line;
            }
        }
    }

    /// Waits for the exit; returns (success, stderr).
    fn wait(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return (status.success(), self.stderr.lock().clone());
            }
            assert!(Instant::now() < deadline, "login did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Plays the browser: opens the authorize URL and follows its redirect to the callback.
async fn browse(authorize_url: &str) -> (u16, String) {
    let client = no_redirects();
    let resp = client.get(authorize_url).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let callback = resp.headers()["location"].to_str().unwrap().to_owned();
    let resp = client.get(&callback).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A server with one OAuth profile `p` on `upstream`; stopped, so that `login` can open the store.
fn stopped_server(upstream: &MockUpstream, auth_line: &str) -> Server {
    let mut server = Server::start(
        &ConfigBuilder::default()
            .profile_with("p", &upstream.base_url(), &["provider: openai", auth_line])
            .model("m", &["p"]),
    );
    server.terminate();
    server
}

/// Runs `switchyard login p` to success, playing the browser.
async fn login_ok(server: &Server) {
    login_sealed_with(server, None).await;
}

/// Like `login_ok`, sealing the token with `secret_key` when given.
pub(crate) async fn login_sealed_with(server: &Server, secret_key: Option<&str>) {
    let login = Login::start_sealed_with(server, "p", secret_key);
    let url = login.authorize_url();
    let (status, page) = browse(&url).await;
    assert_eq!(status, 200, "{page}");
    let (ok, stderr) = login.wait();
    assert!(ok, "login failed: {stderr}");
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn login_runs_the_pkce_flow_and_requests_carry_the_access_token() {
    let oauth = MockOAuth::start(3600).await;
    let upstream = MockUpstream::start().await;
    let mut server = stopped_server(&upstream, &oauth.auth_line(""));
    login_ok(&server).await;
    {
        let s = oauth.state.lock();
        assert_eq!((s.exchanges, s.verifier_mismatches), (1, 0));
    }
    server.restart();
    let (status, headers, text) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{text}\n{}", server.logs());
    assert_eq!(headers["x-switchyard-profile"], "p");
    let first_access = oauth.state.lock().issued[0].clone();
    assert_eq!(upstream.requests()[0].bearer(), Some(first_access.as_str()));
    assert_eq!(oauth.refreshes.load(Ordering::SeqCst), 0);
    assert!(!server.logs().contains(&first_access));
}

#[tokio::test]
async fn a_callback_with_a_forged_state_is_refused() {
    let oauth = MockOAuth::start(3600).await;
    let upstream = MockUpstream::start().await;
    let server = stopped_server(&upstream, &oauth.auth_line(""));
    let login = Login::start(&server, "p");
    let url = url::Url::parse(&login.authorize_url()).unwrap();
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    // An attacker's callback: a code, but not our state.
    let forged = format!("{}?code=attacker-code&state=forged", q["redirect_uri"]);
    let resp = no_redirects().get(&forged).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let (ok, stderr) = login.wait();
    assert!(!ok);
    assert!(stderr.contains("state does not match"), "{stderr}");
    assert_eq!(
        oauth.state.lock().exchanges,
        0,
        "the forged code must not be exchanged"
    );
}

#[tokio::test]
async fn an_expiring_token_is_refreshed_once_under_50_concurrent_requests_and_never_stored_in_plaintext(
) {
    let oauth = MockOAuth::start(1).await;
    let upstream = MockUpstream::start().await;
    let mut server = stopped_server(&upstream, &oauth.auth_line(""));
    login_ok(&server).await;
    server.restart();
    // The first token is due for refresh one second after it was issued.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let server = Arc::new(server);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let server = server.clone();
        tasks.push(tokio::spawn(
            async move { chat(&server, &chat_body("m")).await },
        ));
    }
    for t in tasks {
        let (status, _, text) = t.await.unwrap();
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(oauth.refreshes.load(Ordering::SeqCst), 1);
    let issued = oauth.state.lock().issued.clone();
    let refreshed = issued.last().unwrap().clone();
    assert!(refreshed.starts_with("at-refreshed-"));
    let requests = upstream.requests();
    assert_eq!(requests.len(), 50);
    assert!(requests
        .iter()
        .all(|r| r.bearer() == Some(refreshed.as_str())));

    // Stop it so sled has written everything, then search every file of the data dir for the tokens.
    let mut server = Arc::try_unwrap(server).ok().unwrap();
    server.terminate();
    let files = all_bytes(&server.data_dir());
    assert!(files.len() > 1);
    for token in &issued {
        for (path, bytes) in &files {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "{path} holds a token in plaintext"
            );
        }
    }
    // The restarted server reads the refreshed token back without refreshing again.
    server.restart();
    let (status, _, text) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(oauth.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(upstream.requests()[50].bearer(), Some(refreshed.as_str()));
}

#[tokio::test]
async fn a_revoked_refresh_token_marks_the_profile_auth_failed_with_the_reason() {
    let oauth = MockOAuth::start(1).await;
    let upstream = MockUpstream::start().await;
    let mut server = stopped_server(&upstream, &oauth.auth_line(""));
    login_ok(&server).await;
    oauth.revoked.store(true, Ordering::SeqCst);
    server.restart();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _, text) = chat(&server, &chat_body("m")).await;
    assert_ne!(status, 200, "{text}");
    let p = wait_state(&server, "p", "auth_failed", Duration::from_secs(5)).await;
    let reason = p.to_string();
    assert!(reason.contains("invalid_grant"), "{p}");
    assert!(reason.contains("revoked"), "{p}");
    // Nothing went upstream without a credential, and the refusal is not retried on every request.
    assert_eq!(upstream.request_count(), 0);
    let _ = chat(&server, &chat_body("m")).await;
    assert_eq!(oauth.refreshes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn openrouter_style_login_stores_an_api_key() {
    let oauth = MockOAuth::start(3600).await;
    let upstream = MockUpstream::start().await;
    let line = format!(
        "auth: {{type: oauth2, authorize_url: \"{}\", token_url: \"{}\", client_id: {CLIENT_ID}, scopes: [models.read, offline_access], returns: api_key}}",
        oauth.url("/authorize"),
        oauth.url("/keys")
    );
    let mut server = stopped_server(&upstream, &line);
    let login = Login::start(&server, "p");
    let url = login.authorize_url();
    assert!(url.contains("callback_url="), "{url}");
    let (status, page) = browse(&url).await;
    assert_eq!(status, 200, "{page}");
    let (ok, stderr) = login.wait();
    assert!(ok, "{stderr}");
    server.restart();
    let (status, _, text) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{text}");
    let key = oauth.state.lock().issued[0].clone();
    assert!(key.starts_with("sk-or-v1-"));
    assert_eq!(upstream.requests()[0].bearer(), Some(key.as_str()));
}
