//! A headless Chromium driven over W3C WebDriver (Debian's `chromium` and `chromium-driver`), with
//! the reqwest client the tests already use: a session, navigation, elements (find, type, click),
//! scripts, and screenshots. Absent browser: a clear skip line, or a failure under `CI=true`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The flags that work on this machine (no sandbox inside containers, nothing phoning home).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,2400",
];

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A running chromedriver with one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium. `None` (after a skip line) when either is not
    /// installed and `CI` is not `true`; under `CI=true` a missing browser fails the test.
    pub async fn start(test: &str) -> Option<Browser> {
        let chromium = on_path("chromium").or_else(|| on_path("chromium-browser"));
        let driver = on_path("chromedriver");
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: chromium and chromedriver are required under CI=true (apt-get install chromium chromium-driver)");
            }
            eprintln!("SKIPPED {test}: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            driver: child,
            base,
            session: String::new(),
            http,
            profile,
        };
        browser.wait_ready().await;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            browser.profile.path().display()
        ));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let v = browser.raw("POST", "/session", Some(caps)).await;
        browser.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Some(browser)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self
                .http
                .get(format!("{}/status", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One WebDriver command; returns its `value`, panicking on a WebDriver error.
    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_raw(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// One WebDriver command; a WebDriver error (such as a page still loading) as `Err`.
    async fn try_raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let resp = req.send().await.expect("webdriver call");
        let v: Value = resp.json().await.expect("webdriver json");
        match v["value"].get("error") {
            Some(_) => Err(v["value"].clone()),
            None => Ok(v["value"].clone()),
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.raw(method, &path, body).await
    }

    /// Navigates (a full page load, as a person typing the address).
    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its value.
    pub async fn exec(&self, script: &str, args: Value) -> Value {
        let body = json!({"script": script, "args": args});
        self.cmd("POST", "/execute/sync", Some(body)).await
    }

    /// Polls `script` until it returns something other than null, false or "" (or panics after
    /// `timeout`, saying what it waited for), and returns that.
    pub async fn wait_for(
        &self,
        what: &str,
        script: &str,
        args: Value,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let body = json!({"script": script, "args": args});
            let path = format!("/session/{}/execute/sync", self.session);
            let v = self
                .try_raw("POST", &path, Some(body))
                .await
                .unwrap_or(Value::Null);
            let done = !(v.is_null() || v == json!(false) || v == json!(""));
            if done {
                return v;
            }
            if Instant::now() > deadline {
                let page = self
                    .exec(
                        "return document.body ? document.body.innerText : ''",
                        json!([]),
                    )
                    .await;
                panic!("waited {timeout:?} for {what}; last value {v}; page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first element matching `css`.
    pub async fn find(&self, css: &str) -> String {
        let body = json!({"using": "css selector", "value": css});
        let v = self.cmd("POST", "/element", Some(body)).await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    /// Types `text` into the element matching `css` (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd("POST", &format!("/element/{el}/clear"), None)
            .await;
        let body = json!({"text": text});
        self.cmd("POST", &format!("/element/{el}/value"), Some(body))
            .await;
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.cmd("POST", &format!("/element/{el}/click"), None)
            .await;
    }

    /// A PNG of the window, written to `target/ui-screenshots/NAME.png`, and to `docs/NAME.png` when
    /// `UPDATE_SCREENSHOTS=1` (how the README's pictures are made).
    pub async fn screenshot(&self, name: &str) {
        // The window as tall as the page, so the picture holds all of it and nothing below: the
        // window's height minus its viewport's is the browser's own frame.
        let fit = "const need = Math.ceil(document.querySelector('main').getBoundingClientRect().bottom) + 24;
            return [need, window.outerHeight - window.innerHeight];";
        let v = self.exec(fit, json!([])).await;
        let (need, frame) = (v[0].as_u64().unwrap_or(1200), v[1].as_u64().unwrap_or(0));
        let rect = json!({"width": 1440, "height": (need + frame).clamp(600, 4000)});
        self.cmd("POST", "/window/rect", Some(rect)).await;
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 screenshot"))
            .expect("decode screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target").join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
        if std::env::var("UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
            std::fs::write(root.join("docs").join(format!("{name}.png")), &png).unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; a blocking call from a thread of its own, as drop
        // runs inside the test's runtime.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build();
            if let Ok(c) = client {
                let _ = c.delete(url).send();
            }
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
