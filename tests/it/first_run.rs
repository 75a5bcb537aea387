//! First run: what a newcomer meets when starting the proxy (a busy port, the demo model, readiness).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// Runs `switchyard serve` with `args` in a fresh directory, expecting it to exit by itself;
/// returns its exit code and everything it printed.
fn serve_until_exit(config: &ConfigBuilder, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("profiles.yaml"), config.yaml()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(dir.path())
        .args(["serve", "--config", "profiles.yaml", "--log-format", "text"])
        .args(args)
        .env_remove("SWITCHYARD_CONFIG")
        .env_remove("SWITCHYARD_LISTEN")
        .env_remove("SWITCHYARD_DATA_DIR")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

#[tokio::test]
async fn a_busy_port_is_one_clear_error_and_exit_code_1_without_a_panic() {
    let mock = MockUpstream::start().await;
    let cfg = ConfigBuilder::default()
        .profile("p", &mock)
        .model("m", &["p"]);
    // Held open for the whole run: the port is busy, and stays ours.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let (code, text) = serve_until_exit(&cfg, &["--listen", &addr, "--no-watch"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot listen on ") && last.contains(&addr),
        "last line: {last:?}\n{text}"
    );
    assert!(text.contains("in use"), "{text}");
}

#[tokio::test]
async fn a_503_names_the_unset_key_variable_of_each_skipped_profile() {
    let server = Server::start(
        &ConfigBuilder::default()
            .profile_with(
                "openai-main",
                "http://127.0.0.1:9/v1",
                &["api_key_env: SWITCHYARD_TEST_NEVER_SET_KEY"],
            )
            .model("m", &["openai-main"]),
    );
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 503, "{body}");
    let msg = error_of(&body)["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("openai-main: skipped, auth_failed (environment variable SWITCHYARD_TEST_NEVER_SET_KEY is not set)"),
        "{msg}"
    );
}

#[tokio::test]
async fn profiles_max_attempts_left_untried_are_named_never_reached() {
    let (a, b, c) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
        MockUpstream::start_named("c").await,
    );
    a.push(Reply::server_error());
    b.push(Reply::server_error());
    let server = Server::start(&ConfigBuilder {
        max_attempts: 2,
        ..ConfigBuilder::default()
            .profile_with("a", &a.base_url(), &["api_key: \"k\"", "priority: 1"])
            .profile_with("b", &b.base_url(), &["api_key: \"k\"", "priority: 2"])
            .profile_with("c", &c.base_url(), &["api_key: \"k\"", "priority: 3"])
            .model_with_strategy("m", &["a", "b", "c"], "priority")
    });
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    let msg = error_of(&body)["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("a: server"), "{msg}");
    assert!(msg.contains("b: server"), "{msg}");
    assert!(msg.contains("c: never reached"), "{msg}");
    assert_eq!(c.request_count(), 0);
}
