//! Test harness: runs the real `switchyard` binary on port 0 with a generated config, against mock upstreams.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

// `server.get(path)`, `server.post(path)`, ...: the request builder every helper below goes through.
mod call;
// A real redis-server for the replica tests.
pub mod redis;

pub use switchyard_load_tests::{MockUpstream, ReceivedRequest, Reply};

/// The admin token every test server gets.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A profile line for `ConfigBuilder`.
#[derive(Clone)]
pub struct ProfileDef {
    pub id: String,
    pub base_url: String,
    /// Extra YAML lines under the profile (already indented by the caller as `key: value`).
    pub extra: Vec<String>,
}

/// Builds a profiles.yaml for a test.
#[derive(Clone)]
pub struct ConfigBuilder {
    pub strategy: String,
    pub max_attempts: u32,
    pub sticky: bool,
    pub sticky_ttl: String,
    /// `routing.sticky.sources`, written as given (a YAML flow list), when set.
    pub sticky_sources: Option<String>,
    pub cooldown: (String, String),
    pub billing: (String, String),
    pub breaker: (u32, String),
    pub timeouts: (String, String, String),
    pub durable: bool,
    /// Extra YAML lines under `usage:` (unindented; the builder indents them), e.g. `retention: 5s`.
    pub extra_usage_yaml: Vec<String>,
    pub max_body_size: Option<String>,
    /// Extra YAML lines under `server:` (unindented; the builder indents them), e.g. `body_timeout: 1s`.
    pub extra_server_yaml: Vec<String>,
    pub auth_required: bool,
    /// Extra YAML lines under `auth:` (unindented; the builder indents them), e.g. `max_keys_per_account: 2`.
    pub extra_auth_yaml: Vec<String>,
    pub profiles: Vec<ProfileDef>,
    /// (model name, profile ids, optional strategy)
    pub models: Vec<(String, Vec<String>, Option<String>)>,
    /// Extra top-level YAML lines appended as they are (e.g. `tiers:` and `pricing:` sections).
    pub extra_yaml: Vec<String>,
    /// (model name, its `aliases:`)
    pub aliases: Vec<(String, Vec<String>)>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            strategy: "round_robin".into(),
            max_attempts: 3,
            sticky: true,
            sticky_ttl: "30m".into(),
            sticky_sources: None,
            cooldown: ("1s".into(), "5m".into()),
            billing: ("5h".into(), "24h".into()),
            breaker: (5, "30s".into()),
            timeouts: ("2s".into(), "5s".into(), "5s".into()),
            durable: true,
            extra_usage_yaml: Vec::new(),
            max_body_size: None,
            extra_server_yaml: Vec::new(),
            auth_required: false,
            extra_auth_yaml: Vec::new(),
            profiles: Vec::new(),
            models: Vec::new(),
            extra_yaml: Vec::new(),
            aliases: Vec::new(),
        }
    }
}

impl ConfigBuilder {
    /// Adds a profile pointing at `mock` with a literal key `sk-<id>-secret`.
    pub fn profile(mut self, id: &str, mock: &MockUpstream) -> Self {
        self.profiles.push(ProfileDef {
            id: id.into(),
            base_url: mock.base_url(),
            extra: vec![format!("api_key: \"sk-{id}-secret\"")],
        });
        self
    }

    /// Adds a profile with explicit extra YAML lines (e.g. `priority: 2`, `weight: 3`).
    pub fn profile_with(mut self, id: &str, base_url: &str, extra: &[&str]) -> Self {
        self.profiles.push(ProfileDef {
            id: id.into(),
            base_url: base_url.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    /// Adds a model served by `profiles`.
    pub fn model(mut self, name: &str, profiles: &[&str]) -> Self {
        self.models.push((
            name.into(),
            profiles.iter().map(|s| s.to_string()).collect(),
            None,
        ));
        self
    }

    /// Gives model `name` these aliases.
    pub fn aliases(mut self, name: &str, aliases: &[&str]) -> Self {
        let list = aliases.iter().map(|a| format!("{a:?}")).collect();
        self.aliases.push((name.into(), list));
        self
    }

    /// Adds a model with its own strategy.
    pub fn model_with_strategy(mut self, name: &str, profiles: &[&str], strategy: &str) -> Self {
        self.models.push((
            name.into(),
            profiles.iter().map(|s| s.to_string()).collect(),
            Some(strategy.into()),
        ));
        self
    }

    /// The YAML text.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        y.push_str("server:\n  listen: \"127.0.0.1:0\"\n  data_dir: \"./data\"\n");
        if let Some(m) = &self.max_body_size {
            y.push_str(&format!("  max_body_size: {m}\n"));
        }
        for line in &self.extra_server_yaml {
            y.push_str(&format!("  {line}\n"));
        }
        y.push_str(&format!(
            "auth:\n  required: {}\n  admin_token_env: SWITCHYARD_ADMIN_TOKEN\n",
            self.auth_required
        ));
        for line in &self.extra_auth_yaml {
            y.push_str(&format!("  {line}\n"));
        }
        y.push_str(&format!(
            "routing:\n  strategy: {}\n  max_attempts: {}\n  sticky:\n    enabled: {}\n    ttl: {}\n",
            self.strategy, self.max_attempts, self.sticky, self.sticky_ttl
        ));
        if let Some(sources) = &self.sticky_sources {
            y.push_str(&format!("    sources: {sources}\n"));
        }
        y.push_str(&format!(
            "  cooldown:\n    initial: {}\n    max: {}\n  billing_cooldown:\n    initial: {}\n    max: {}\n",
            self.cooldown.0, self.cooldown.1, self.billing.0, self.billing.1
        ));
        y.push_str(&format!(
            "  breaker:\n    failure_threshold: {}\n    open_for: {}\n",
            self.breaker.0, self.breaker.1
        ));
        y.push_str(&format!(
            "  timeouts:\n    connect: {}\n    first_byte: {}\n    idle: {}\n",
            self.timeouts.0, self.timeouts.1, self.timeouts.2
        ));
        y.push_str(&format!("usage:\n  durable: {}\n", self.durable));
        for line in &self.extra_usage_yaml {
            y.push_str(&format!("  {line}\n"));
        }
        y.push_str("models:\n");
        for (name, profiles, strategy) in &self.models {
            y.push_str(&format!(
                "  - name: {name}\n    profiles: [{}]\n",
                profiles.join(", ")
            ));
            if let Some(s) = strategy {
                y.push_str(&format!("    strategy: {s}\n"));
            }
            for (model, aliases) in &self.aliases {
                if model == name {
                    y.push_str(&format!("    aliases: [{}]\n", aliases.join(", ")));
                }
            }
        }
        y.push_str("profiles:\n");
        for p in &self.profiles {
            // An extra `provider:` line replaces the default.
            let provider = if p.extra.iter().any(|l| l.starts_with("provider:")) {
                String::new()
            } else {
                "    provider: openai\n".to_owned()
            };
            // An empty base_url writes none (`provider: echo` refuses one).
            let base_url = match p.base_url.as_str() {
                "" => String::new(),
                url => format!("    base_url: \"{url}\"\n"),
            };
            y.push_str(&format!("  - id: {}\n{provider}{base_url}", p.id));
            for line in &p.extra {
                y.push_str(&format!("    {line}\n"));
            }
        }
        for line in &self.extra_yaml {
            y.push_str(&format!("{line}\n"));
        }
        y
    }
}

/// A running switchyard process. Killed on drop.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub dir: Arc<tempfile::TempDir>,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Writes the config into a fresh directory and starts the server there.
    pub fn start(config: &ConfigBuilder) -> Server {
        Server::start_with_env(config, &[])
    }

    /// Like `start`, with extra environment variables.
    pub fn start_with_env(config: &ConfigBuilder, env: &[(&str, &str)]) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let config_path = dir.path().join("profiles.yaml");
        std::fs::write(&config_path, config.yaml()).expect("write config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Server::spawn(dir, config_path, env)
    }

    /// The repository's own profiles.yaml, copied into a fresh directory, on port 0; its providers'
    /// key variables removed, as on a machine that has none.
    pub fn start_repository_config() -> Server {
        Server::start_repository_config_with_env(&[])
    }

    /// Like `start_repository_config`, with extra environment variables.
    pub fn start_repository_config_with_env(extra: &[(String, String)]) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let config_path = dir.path().join("profiles.yaml");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles.yaml");
        std::fs::copy(repo, &config_path).expect("copy profiles.yaml");
        let mut env = vec![("SWITCHYARD_LISTEN".to_owned(), "127.0.0.1:0".to_owned())];
        env.extend_from_slice(extra);
        Server::spawn(dir, config_path, env)
    }

    fn spawn(
        dir: Arc<tempfile::TempDir>,
        config_path: PathBuf,
        env: Vec<(String, String)>,
    ) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--log-format")
            .arg("text")
            .arg("--workers")
            .arg("2")
            .current_dir(dir.path())
            .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SWITCHYARD_LISTEN")
            .env_remove("SWITCHYARD_DATA_DIR")
            .env_remove("SWITCHYARD_CONFIG")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENROUTER_API_KEY")
            .env_remove("GROQ_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let clean = strip_ansi(&line);
                    if let Some(i) = clean.find("switchyard listening on ") {
                        let rest = &clean[i + "switchyard listening on ".len()..];
                        let addr: String =
                            rest.chars().take_while(|c| !c.is_whitespace()).collect();
                        let _ = tx.send(addr);
                    }
                    logs.lock().push(clean);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "switchyard did not start; logs:\n{}",
                    logs.lock().join("\n")
                );
            }
        };
        Server {
            child: Some(child),
            addr,
            dir,
            config_path,
            logs,
            env,
        }
    }

    /// `http://ADDR` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every log line so far (stdout and stderr, ANSI stripped).
    pub fn logs(&self) -> String {
        self.logs.lock().join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a new process on the same directory and config (after `kill9` or `terminate`).
    pub fn restart(&mut self) {
        self.kill9();
        let next = Server::spawn(self.dir.clone(), self.config_path.clone(), self.env.clone());
        *self = next;
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The config directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An HTTP client for tests (no proxy, short timeouts).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A chat request body.
pub fn chat_body(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
}

/// POSTs a chat completion; returns (status, headers, body text).
pub async fn chat(
    server: &Server,
    body: &serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    post(server, "/v1/chat/completions", body, &[]).await
}

/// POSTs JSON with extra headers.
pub async fn post(
    server: &Server,
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut call = server.post(path).json(body);
    for (k, v) in headers {
        call = call.header(k, v);
    }
    call.send_text().await
}

/// The admin profile list.
pub async fn admin_profiles(server: &Server) -> Vec<serde_json::Value> {
    let resp = client()
        .get(server.url("/admin/profiles"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

/// One profile's admin object.
pub async fn admin_profile(server: &Server, id: &str) -> serde_json::Value {
    admin_profiles(server)
        .await
        .into_iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no profile {id}"))
}

/// Polls until profile `id` reports `state`, or panics after `timeout`.
pub async fn wait_state(
    server: &Server,
    id: &str,
    state: &str,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let p = admin_profile(server, id).await;
        if p["state"] == state {
            return p;
        }
        if Instant::now() > deadline {
            panic!("profile {id} never reached {state}: {p}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses an OpenAI error body; panics with the text if it is not one.
pub fn error_of(body: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    let e = v
        .get("error")
        .cloned()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "error lacks {k}: {body}");
    }
    e
}

/// An HTTP call with an optional bearer and body; returns status, headers and parsed JSON (or the text
/// as a JSON string). The older spelling of `server.request(method, path)...send()`.
pub async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut call = server.request(method, path).maybe_bearer(bearer);
    if let Some(body) = body {
        call = call.json(body);
    }
    call.send().await
}

/// An admin API call with the admin token; asserts a 2xx and returns the body.
pub async fn admin(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let (status, _, v) = call(server, method, path, Some(ADMIN_TOKEN), body).await;
    assert!((200..300).contains(&status), "{path}: {status} {v}");
    v
}

/// Posts `body` to the billing webhook with `signature`; (status, body text).
pub async fn deliver_webhook(server: &Server, body: &str, signature: &str) -> (u16, String) {
    let resp = client()
        .post(server.url("/billing/webhook"))
        .header("content-type", "application/json")
        .header("switchyard-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}
