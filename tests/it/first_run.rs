//! First run: what a newcomer meets when starting the proxy (a busy port, the demo model, readiness).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_actors::store::Store;

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

/// The `data:` payloads of an SSE body, `[DONE]` included.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_repository_config_answers_the_demo_model_in_every_dialect_with_no_key() {
    let mut server = Server::start_repository_config();
    let hello = json!({"model": "demo", "messages": [{"role": "user", "content": "hello there"}]});
    let (status, headers, body) = post(
        &server,
        "/v1/chat/completions",
        &hello,
        &[("x-request-id", "demo-chat")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "demo");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hello there");
    assert_eq!(v["model"], "demo");
    assert_eq!(
        (
            v["usage"]["prompt_tokens"].as_u64(),
            v["usage"]["completion_tokens"].as_u64()
        ),
        (Some(2), Some(3))
    );

    // Streamed, with the usage chunk the client asked for.
    let stream = json!({"model": "demo", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "one two three"}]});
    let (status, headers, text) = post(&server, "/v1/chat/completions", &stream, &[]).await;
    assert_eq!(status, 200, "{text}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: one two three");
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        4,
        "{text}"
    );
    // Not asked for: no usage chunk.
    let plain = json!({"model": "demo", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, text) = post(&server, "/v1/chat/completions", &plain, &[]).await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("\"usage\""), "{text}");

    let (status, _, body) = post(
        &server,
        "/v1/completions",
        &json!({"model": "demo", "prompt": "say this"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["text"], "echo: say this");

    let embed = json!({"model": "demo", "input": ["a b", "c"]});
    let (status, _, body) = post(&server, "/v1/embeddings", &embed, &[]).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let (_, _, again) = post(&server, "/v1/embeddings", &embed, &[]).await;
    let w: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(v["data"], w["data"], "the same input, the same vectors");
    assert_ne!(v["data"][0]["embedding"], v["data"][1]["embedding"]);

    // Anthropic Messages, whole and streamed.
    let messages = json!({"model": "demo", "max_tokens": 100,
        "messages": [{"role": "user", "content": "bonjour"}]});
    let (status, _, body) = post(&server, "/v1/messages", &messages, &[]).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "message", "{body}");
    assert_eq!(v["content"][0]["text"], "echo: bonjour", "{body}");
    assert_eq!(v["usage"]["output_tokens"], 2, "{body}");
    let mut streamed = messages.clone();
    streamed["stream"] = json!(true);
    let (status, _, text) = post(&server, "/v1/messages", &streamed, &[]).await;
    assert_eq!(status, 200, "{text}");
    let text_deltas: String = sse_data(&text)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|e| e["type"] == "content_block_delta")
        .filter_map(|e| e["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text_deltas, "echo: bonjour", "{text}");
    assert!(text.contains("message_stop"), "{text}");

    // It is a provider like any other: recorded in usage with its tokens.
    let exit = server.terminate().expect("exit status");
    assert!(exit.success(), "{exit:?}");
    let store = Store::open(&server.data_dir()).unwrap();
    let records = store.all_usage().unwrap();
    let chat = records
        .iter()
        .find(|r| r.request_id == "demo-chat")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(
        (
            chat.profile.as_str(),
            chat.outcome.as_str(),
            chat.prompt_tokens,
            chat.completion_tokens
        ),
        ("demo", "ok", 2, 3),
        "{chat:?}"
    );
}

#[test]
fn an_echo_profile_refuses_a_base_url_and_keys() {
    let yaml = "models:\n  - {name: demo, profiles: [d]}\nprofiles:\n  - id: d\n    provider: echo\n    base_url: \"http://x\"\n    api_key: \"k\"\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(dir.path())
        .args(["check", "--config", "p.yaml"])
        .env_remove("SWITCHYARD_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("profiles[0].base_url: provider echo answers in-process"),
        "{text}"
    );
    assert!(
        text.contains("profiles[0].api_key: provider echo is the built-in demo upstream"),
        "{text}"
    );
    // And accepts none of them.
    std::fs::write(
        dir.path().join("p.yaml"),
        "models:\n  - {name: demo, profiles: [d]}\nprofiles:\n  - {id: d, provider: echo}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .current_dir(dir.path())
        .args(["check", "--config", "p.yaml"])
        .env_remove("SWITCHYARD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn readiness(server: &Server) -> (u16, Value) {
    let resp = client()
        .get(server.url("/health/ready"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn ready_is_degraded_on_the_repository_config_without_keys_and_says_why_per_model() {
    let server = Server::start_repository_config();
    let (status, body) = readiness(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["models"]["demo"]["ready"], true, "{body}");
    assert_eq!(body["models"]["demo"]["usable"], json!(["demo"]), "{body}");
    let gpt = &body["models"]["gpt-4o-mini"];
    assert_eq!(gpt["ready"], false, "{body}");
    let reason = gpt["reason"].as_str().unwrap();
    assert!(
        reason
            .contains("openai-main: auth_failed (environment variable OPENAI_API_KEY is not set)")
            && reason.contains("openrouter-backup: auth_failed"),
        "{reason}"
    );
    let main = &body["profiles"]["openai-main"];
    assert_eq!(
        (&main["usable"], &main["state"]),
        (&json!(false), &json!("auth_failed")),
        "{body}"
    );
    assert_eq!(body["profiles"]["demo"]["usable"], true, "{body}");
}

#[tokio::test]
async fn ready_is_ready_only_when_every_model_has_a_usable_profile() {
    let mock = MockUpstream::start().await;
    let all = ConfigBuilder::default()
        .profile("a", &mock)
        .profile_with("d", "", &["provider: echo"])
        .model("m", &["a"])
        .model("demo", &["d"]);
    let server = Server::start(&all);
    let (status, body) = readiness(&server).await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    assert_eq!(
        (&body["models_ready"], &body["models_total"]),
        (&json!(2), &json!(2))
    );
    drop(server);

    // No model can be served: 503, whatever the profiles outside the models do.
    let none = ConfigBuilder::default()
        .profile_with(
            "k",
            &mock.base_url(),
            &["api_key_env: SWITCHYARD_TEST_NEVER_SET_KEY"],
        )
        .model("m", &["k"]);
    let server = Server::start(&none);
    let (status, body) = readiness(&server).await;
    assert_eq!(
        (status, &body["status"]),
        (503, &json!("unready")),
        "{body}"
    );
    assert!(
        body["models"]["m"]["reason"]
            .as_str()
            .unwrap()
            .contains("SWITCHYARD_TEST_NEVER_SET_KEY is not set"),
        "{body}"
    );
}

#[tokio::test]
async fn the_demo_model_answers_the_responses_api_whole_and_streamed() {
    let mut server = Server::start_repository_config();
    let whole = json!({"model": "demo", "input": "hello there"});
    let (status, headers, body) = post(
        &server,
        "/v1/responses",
        &whole,
        &[("x-request-id", "demo-responses")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "demo");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["output"][0]["content"][0]["text"], "echo: hello there",
        "{body}"
    );
    let streamed = json!({"model": "demo", "stream": true,
        "input": [{"role": "user", "content": "one two"}]});
    let (status, _, text) = post(&server, "/v1/responses", &streamed, &[]).await;
    assert_eq!(status, 200, "{text}");
    let deltas: String = sse_data(&text)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(deltas, "echo: one two", "{text}");
    assert!(text.contains("response.completed"), "{text}");
    let exit = server.terminate().expect("exit status");
    assert!(exit.success(), "{exit:?}");
    let records = Store::open(&server.data_dir())
        .unwrap()
        .all_usage()
        .unwrap();
    let r = records
        .iter()
        .find(|r| r.request_id == "demo-responses")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!((r.prompt_tokens, r.completion_tokens), (2, 3), "{r:?}");
}
