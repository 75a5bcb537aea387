//! Provider presets: each one's exact upstream request (path and query, credential header, extra
//! headers) against the mock upstream.

use crate::support::*;

/// Starts a server with one profile `p` on `mock` (extra YAML lines `extra`) serving model `m`, sends
/// one chat request and returns what the mock received.
async fn one_request(mock: &MockUpstream, base_url: &str, extra: &[&str]) -> ReceivedRequest {
    let server = Server::start(
        &ConfigBuilder::default()
            .profile_with("p", base_url, extra)
            .model("m", &["p"]),
    );
    let (status, headers, text) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{text}\n{}", server.logs());
    assert_eq!(headers["x-switchyard-profile"], "p");
    let requests = mock.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    requests[0].clone()
}

/// The credential and provider headers a request carried (lowercase names), sorted, without the
/// ones every request has.
fn credential_headers(req: &ReceivedRequest) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(n, _)| {
            matches!(
                n.as_str(),
                "authorization" | "api-key" | "x-api-key" | "http-referer" | "x-title"
            )
        })
        .cloned()
        .collect();
    h.sort();
    h
}

fn pair(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

#[tokio::test]
async fn bearer_presets_send_the_key_as_bearer_to_the_chat_path() {
    for preset in ["openai", "groq", "together", "mistral", "deepseek"] {
        let mock = MockUpstream::start().await;
        let provider = format!("provider: {preset}");
        let req = one_request(&mock, &mock.base_url(), &[&provider, "api_key: \"k-123\""]).await;
        assert_eq!(req.method, "POST", "{preset}");
        assert_eq!(req.path, "/v1/chat/completions", "{preset}");
        assert_eq!(req.bearer(), Some("k-123"), "{preset}");
        assert_eq!(
            credential_headers(&req),
            [pair("authorization", "Bearer k-123")],
            "{preset}"
        );
        assert_eq!(req.json()["model"], "m", "{preset}");
    }
}

#[tokio::test]
async fn openrouter_sends_its_attribution_headers_when_configured() {
    let mock = MockUpstream::start().await;
    let req = one_request(
        &mock,
        &mock.base_url(),
        &[
            "provider: openrouter",
            "api_key: \"sk-or-v1-abc\"",
            "app_url: \"https://example.org/app\"",
            "app_name: \"My App\"",
        ],
    )
    .await;
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(
        credential_headers(&req),
        [
            pair("authorization", "Bearer sk-or-v1-abc"),
            pair("http-referer", "https://example.org/app"),
            pair("x-title", "My App"),
        ]
    );

    // Without app_url / app_name: only the key.
    let mock = MockUpstream::start().await;
    let req = one_request(
        &mock,
        &mock.base_url(),
        &["provider: openrouter", "api_key: \"sk-or-v1-abc\""],
    )
    .await;
    assert_eq!(
        credential_headers(&req),
        [pair("authorization", "Bearer sk-or-v1-abc")]
    );
}

#[tokio::test]
async fn local_presets_send_no_authorization_without_a_key_and_bearer_with_one() {
    for preset in ["ollama", "vllm"] {
        let mock = MockUpstream::start().await;
        let provider = format!("provider: {preset}");
        let req = one_request(&mock, &mock.base_url(), &[&provider]).await;
        assert_eq!(req.path, "/v1/chat/completions", "{preset}");
        assert_eq!(credential_headers(&req), [], "{preset}: {:?}", req.headers);

        // vLLM's --api-key (and a proxy in front of Ollama) expect a bearer token.
        let mock = MockUpstream::start().await;
        let req = one_request(&mock, &mock.base_url(), &[&provider, "api_key: \"local\""]).await;
        assert_eq!(
            credential_headers(&req),
            [pair("authorization", "Bearer local")],
            "{preset}"
        );
    }
}

#[tokio::test]
async fn azure_uses_the_deployment_url_api_version_and_api_key_header() {
    let mock = MockUpstream::start().await;
    // The mock routes only /v1/...; a fixed answer stands in for the deployment's.
    mock.push(Reply::Status {
        status: 200,
        headers: vec![],
        body: serde_json::json!({
            "id": "chatcmpl-az", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        .to_string(),
    });
    let base = format!("http://{}/openai/deployments/gpt4o-prod", mock.addr());
    let req = one_request(
        &mock,
        &base,
        &[
            "provider: azure",
            "api_key: \"az-key-1\"",
            "api_version: 2024-10-21",
        ],
    )
    .await;
    assert_eq!(
        req.path,
        "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(credential_headers(&req), [pair("api-key", "az-key-1")]);
    assert_eq!(req.bearer(), None);
}

#[tokio::test]
async fn anthropic_preset_keeps_its_own_header_convention() {
    let mock = MockUpstream::start().await;
    let req = one_request(
        &mock,
        &mock.base_url(),
        &["provider: anthropic", "api_key: \"sk-ant-1\""],
    )
    .await;
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(credential_headers(&req), [pair("x-api-key", "sk-ant-1")]);
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
}

#[tokio::test]
async fn check_rejects_preset_misuse_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "profiles:\n  - id: a\n    provider: groq\n    api_key: k\n    app_name: x\n  - id: b\n    provider: azure\n    api_key: k\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}{stderr}");
    assert!(
        all.contains("bad.yaml:5:15: profiles[0].app_name: only for provider openrouter"),
        "{all}"
    );
    assert!(
        all.contains("bad.yaml:6:5: profiles[1].base_url: required key is missing"),
        "{all}"
    );
    assert!(
        all.contains("bad.yaml:6:5: profiles[1].api_version: required key is missing"),
        "{all}"
    );
}
