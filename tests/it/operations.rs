//! Operations: hot reload (file, SIGHUP, admin), graceful shutdown, readiness and logs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::support::*;

async fn reload(server: &Server) -> (u16, serde_json::Value) {
    let resp = client()
        .post(server.url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Waits until a log line contains `needle` (the reader thread trails the process a little).
async fn wait_log(server: &Server, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.logs().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?}:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rewrite(server: &Server, cfg: &ConfigBuilder) {
    std::fs::write(&server.config_path, cfg.yaml()).unwrap();
}

/// Sends requests from `workers` tasks until `stop`, counting non-200 answers.
fn traffic(
    server: &Server,
    workers: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|_| {
            let url = server.url("/v1/chat/completions");
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let r = c.post(&url).json(&chat_body("m")).send().await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            eprintln!(
                                "failed: {} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            );
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

#[tokio::test]
async fn reload_under_traffic_adds_changes_and_removes_profiles_without_a_failed_request() {
    let (a, b, c) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
        MockUpstream::start_named("c").await,
    );
    // b answers slowly, so requests are in flight on it when it is removed.
    b.set_default(Reply::Delay(
        Duration::from_millis(150),
        Box::new(Reply::Echo),
    ));
    let before = ConfigBuilder::default()
        .profile("a", &a)
        .profile("b", &b)
        .model("m", &["a", "b"]);
    let mut server = Server::start_with_env(&before, &[("SWITCHYARD_NO_WATCH", "true")]);
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let tasks = traffic(&server, 6, stop.clone(), ok.clone(), failed.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.request_count() > 0, "b never served before the reload");

    // a changes (weight), b goes away, c arrives.
    let after = ConfigBuilder::default()
        .profile_with(
            "a",
            &a.base_url(),
            &["api_key: \"sk-a-secret\"", "weight: 2"],
        )
        .profile("c", &c)
        .model_with_strategy("m", &["a", "c"], "weighted");
    rewrite(&server, &after);
    let (status, report) = reload(&server).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["added"], serde_json::json!(["c"]));
    assert_eq!(report["changed"], serde_json::json!(["a"]));
    assert_eq!(report["removed"], serde_json::json!(["b"]));
    let b_at_reload = b.request_count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert!(c.request_count() > 0, "the added profile never served");
    // Nothing new reaches the removed profile once the reload is acknowledged (in-flight ones finished).
    assert!(
        b.request_count() <= b_at_reload + 6,
        "b kept receiving traffic"
    );
    let ids: Vec<String> = admin_profiles(&server)
        .await
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["a", "c"]);
    server.terminate();
    assert!(server.logs().contains("configuration reloaded"));
}

#[tokio::test]
async fn reload_keeps_a_cooled_profile_cooled() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let mut cfg = ConfigBuilder::default()
        .profile("a", &a)
        .profile("b", &b)
        .model_with_strategy("m", &["a", "b"], "priority");
    cfg.cooldown = ("10m".into(), "1h".into());
    let server = Server::start_with_env(&cfg, &[("SWITCHYARD_NO_WATCH", "true")]);
    a.push(Reply::server_error());
    let (status, headers, _) = chat(&server, &chat_body("m")).await;
    assert_eq!(
        (status, headers["x-switchyard-profile"].to_str().unwrap()),
        (200, "b")
    );
    let cooled = wait_state(&server, "a", "cooldown", Duration::from_secs(5)).await;

    // An unrelated change: a new model.
    let cfg2 = cfg.clone().model("m2", &["b"]);
    rewrite(&server, &cfg2);
    let (status, report) = reload(&server).await;
    assert_eq!(status, 200, "{report}");
    let after = admin_profile(&server, "a").await;
    assert_eq!(after["state"], "cooldown");
    assert_eq!(after["cooldown_until"], cooled["cooldown_until"]);
    assert_eq!(after["requests"], cooled["requests"]);
    let (status, headers, _) = chat(&server, &chat_body("m2")).await;
    assert_eq!(
        (status, headers["x-switchyard-profile"].to_str().unwrap()),
        (200, "b")
    );
}

#[tokio::test]
async fn an_invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let a = MockUpstream::start_named("a").await;
    let cfg = ConfigBuilder::default().profile("a", &a).model("m", &["a"]);
    let server = Server::start_with_env(&cfg, &[("SWITCHYARD_NO_WATCH", "true")]);
    let broken = cfg
        .yaml()
        .replace("max_attempts: 3", "max_attempts: 3\n  max_attemps: 4");
    std::fs::write(&server.config_path, broken).unwrap();
    let (status, body) = reload(&server).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("profiles.yaml:"), "{msg}");
    assert!(msg.contains("routing.max_attemps"), "{msg}");
    assert_eq!(body["error"]["code"], "invalid_config");
    let (status, _, _) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200);
    wait_log(&server, "reload refused").await;
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchyard_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sighup_and_file_changes_reload() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let cfg = ConfigBuilder::default().profile("a", &a).model("m", &["a"]);
    // File watching on (the default).
    let server = Server::start(&cfg);
    let cfg2 = cfg.clone().profile("b", &b).model("m2", &["b"]);
    rewrite(&server, &cfg2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = chat(&server, &chat_body("m2")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "file change was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let hup = Server::start_with_env(&cfg, &[("SWITCHYARD_NO_WATCH", "true")]);
    rewrite(&hup, &cfg2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        chat(&hup, &chat_body("m2")).await.0,
        404,
        "reloaded without a trigger"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hup.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if chat(&hup, &chat_body("m2")).await.0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The log line follows the swap; give the reader a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !hup.logs().contains("trigger=\"sighup\"") {
        assert!(Instant::now() < deadline, "{}", hup.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_a_running_stream_finish_then_exits_zero() {
    let a = MockUpstream::start_named("a").await;
    a.set_default(Reply::SlowStream {
        gap: Duration::from_millis(150),
    });
    let mut server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let mut body = chat_body("m");
    body["stream"] = serde_json::json!(true);
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let pid = server.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut all = first.to_vec();
    while let Some(chunk) = stream.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(all).unwrap();
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "stream did not finish: {text}"
    );
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[tokio::test]
async fn readiness_follows_usable_profiles() {
    let a = MockUpstream::start_named("a").await;
    let cfg = ConfigBuilder::default()
        .profile_with(
            "a",
            &a.base_url(),
            &["api_key_env: SWITCHYARD_TEST_UNSET_KEY_7"],
        )
        .model("m", &["a"]);
    let server = Server::start(&cfg);
    let live = client()
        .get(server.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready = client()
        .get(server.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["usable_profiles"], false);
    assert_eq!(body["store_writable"], true);

    let ok = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    assert_eq!(
        client()
            .get(ok.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn json_logs_carry_the_request_id_and_never_the_key() {
    let a = MockUpstream::start_named("a").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::default().profile("a", &a).model("m", &["a"]);
    let path = dir.path().join("profiles.yaml");
    std::fs::write(&path, cfg.yaml()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
            "--no-watch",
        ])
        .current_dir(dir.path())
        .env("RUST_LOG", "info,switchyard::forward=debug")
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no start line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        lines.push(line);
        if let Some(addr) = v["addr"].as_str() {
            break addr.to_owned();
        }
    };
    let resp = client()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("x-request-id", "req-json-log-1")
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let answered = loop {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let found = line.contains("request answered");
            lines.push(line.clone());
            if found {
                break line;
            }
        }
        assert!(Instant::now() < deadline, "no request log line: {lines:?}");
    };
    let v: serde_json::Value = serde_json::from_str(&answered).unwrap();
    let text = v.to_string();
    assert!(text.contains("req-json-log-1"), "{text}");
    assert!(text.contains("\"profile\":\"a\""), "{text}");
    assert!(lines.iter().all(|l| !l.contains("sk-a-secret")));
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn admin_reset_and_reload_are_audited() {
    let a = MockUpstream::start_named("a").await;
    let cfg = ConfigBuilder::default().profile("a", &a).model("m", &["a"]);
    let server = Server::start_with_env(&cfg, &[("SWITCHYARD_NO_WATCH", "true")]);
    let resp = client()
        .post(server.url("/admin/profiles/a/reset"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(reload(&server).await.0, 200);
    let audit: serde_json::Value = client()
        .get(server.url("/admin/audit"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = audit.to_string();
    let entries = audit["data"].as_array().expect("a list of entries");
    let details: Vec<&str> = entries
        .iter()
        .filter(|e| e["event"] == "admin_action")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert!(details.contains(&"reset_profile"), "{text}");
    assert!(details.contains(&"reload"), "{text}");
    assert!(!text.contains(ADMIN_TOKEN));
}

/// A reload that changes only what the router does not see of a profile (base_url, headers, model_map,
/// timeouts) reports the profile as changed, as it is applied; a reload that changes nothing reports it
/// unchanged.
#[tokio::test]
async fn a_reload_reports_every_kind_of_profile_change() {
    let (a, moved) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("moved").await,
    );
    let key = "api_key: \"sk-a-secret\"";
    let cfg = |base_url: &str, extra: &[&str]| {
        let mut lines = vec![key];
        lines.extend_from_slice(extra);
        ConfigBuilder::default()
            .profile_with("a", base_url, &lines)
            .model("m", &["a"])
    };
    let server =
        Server::start_with_env(&cfg(&a.base_url(), &[]), &[("SWITCHYARD_NO_WATCH", "true")]);
    let (status, report) = reload(&server).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["changed"], serde_json::json!([]), "{report}");
    assert_eq!(report["unchanged"], 1, "{report}");

    let steps: [(&str, Vec<&str>); 4] = [
        ("base_url", vec![]),
        ("headers", vec!["headers:", "  x-team: blue"]),
        ("model_map", vec!["model_map:", "  m: upstream-m"]),
        ("timeouts", vec!["timeouts:", "  first_byte: 9s"]),
    ];
    let mut extra: Vec<&str> = Vec::new();
    for (what, lines) in steps {
        extra.extend(lines);
        rewrite(&server, &cfg(&moved.base_url(), &extra));
        let (status, report) = reload(&server).await;
        assert_eq!(status, 200, "{what}: {report}");
        assert_eq!(
            report["changed"],
            serde_json::json!(["a"]),
            "{what}: {report}"
        );
        assert_eq!(report["unchanged"], 0, "{what}: {report}");
    }
    // And it was applied: the moved upstream answers, with the new header and model name.
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    let got = moved.requests();
    let last = got.last().unwrap();
    assert_eq!(last.header("x-team"), Some("blue"));
    assert_eq!(last.json()["model"], "upstream-m");
    assert_eq!(a.request_count(), 0);
}
