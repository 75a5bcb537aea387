//! The Anthropic provider (OpenAI clients, Anthropic upstreams) and the `/v1/messages` ingress.

use futures_util::StreamExt;

use crate::support::*;

fn anthropic(id: &str, mock: &MockUpstream) -> (String, String, Vec<String>) {
    (
        id.to_owned(),
        mock.base_url(),
        vec![
            "provider: anthropic".into(),
            format!("api_key: \"sk-ant-{id}-secret\""),
        ],
    )
}

fn with_anthropic(cfg: ConfigBuilder, id: &str, mock: &MockUpstream) -> ConfigBuilder {
    let (id, url, extra) = anthropic(id, mock);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    cfg.profile_with(&id, &url, &extra)
}

async fn stream_text(server: &Server, path: &str, body: serde_json::Value) -> (u16, String) {
    let resp = client()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let mut s = resp.bytes_stream();
    let mut all = Vec::new();
    while let Some(c) = s.next().await {
        all.extend_from_slice(&c.unwrap());
    }
    (status, String::from_utf8(all).unwrap())
}

fn sse_json(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn an_openai_chat_request_is_translated_for_an_anthropic_profile_and_back() {
    let a = MockUpstream::start_named("a").await;
    let server =
        Server::start(&with_anthropic(ConfigBuilder::default(), "a", &a).model("m", &["a"]));
    let body = serde_json::json!({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"}]});
    let (status, headers, text) = chat(&server, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-switchyard-profile"], "a");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply from a");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let got = &a.requests()[0];
    assert_eq!(got.path_only(), "/v1/messages");
    assert_eq!(got.header("x-api-key"), Some("sk-ant-a-secret"));
    assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(got.header("authorization"), None);
    let sent = got.json();
    // One text block, marked for Anthropic's prompt cache (see the cache_control rule in the README).
    assert_eq!(sent["system"][0]["text"], "be brief");
    assert_eq!(sent["system"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(sent["max_tokens"], 4096);
    assert_eq!(sent["messages"][0]["role"], "user");
}

#[tokio::test]
async fn an_anthropic_stream_reaches_an_openai_client_as_chunks() {
    let a = MockUpstream::start_named("a").await;
    let server =
        Server::start(&with_anthropic(ConfigBuilder::default(), "a", &a).model("m", &["a"]));
    let mut body = chat_body("m");
    body["stream"] = serde_json::json!(true);
    let (status, text) = stream_text(&server, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let chunks = sse_json(&text);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "mock reply from a");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(
        !text.contains("\"choices\":[]"),
        "usage chunk the client did not ask for"
    );
    // Asked for, it comes.
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let (_, text) = stream_text(&server, "/v1/chat/completions", body).await;
    let last = sse_json(&text).pop().unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn a_mixed_group_fails_over_across_providers_both_ways() {
    let (o, an) = (
        MockUpstream::start_named("o").await,
        MockUpstream::start_named("an").await,
    );
    let cfg = with_anthropic(ConfigBuilder::default().profile("o", &o), "an", &an)
        .model_with_strategy("m", &["o", "an"], "priority")
        .model_with_strategy("m2", &["an", "o"], "priority");
    let mut cfg = cfg;
    cfg.profiles[0].extra.push("priority: 1".into());
    cfg.profiles[1].extra.push("priority: 1".into());
    let server = Server::start(&cfg);
    o.push(Reply::server_error());
    let (status, headers, text) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-switchyard-profile"], "an");
    assert_eq!(headers["x-switchyard-attempts"], "2");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply from an");

    let server2 = Server::start(&cfg);
    an.push(Reply::status(
        529,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ));
    let (status, headers, text) = chat(&server2, &chat_body("m2")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-switchyard-profile"], "o");
    wait_state(
        &server2,
        "an",
        "cooldown",
        std::time::Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn anthropic_credit_exhaustion_benches_the_profile_and_client_errors_come_back_openai_shaped()
{
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let cfg = with_anthropic(ConfigBuilder::default(), "a", &a)
        .profile("b", &b)
        .model_with_strategy("m", &["a", "b"], "priority");
    let server = Server::start(&cfg);
    a.push(Reply::status(400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#));
    let (status, headers, _) = chat(&server, &chat_body("m")).await;
    assert_eq!(
        (status, headers["x-switchyard-profile"].to_str().unwrap()),
        (200, "b")
    );
    wait_state(
        &server,
        "a",
        "billing_disabled",
        std::time::Duration::from_secs(5),
    )
    .await;

    let solo = Server::start(&with_anthropic(ConfigBuilder::default(), "a", &a).model("m", &["a"]));
    a.push(Reply::status(400, r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 300000 tokens"}}"#));
    let (status, _, text) = chat(&solo, &chat_body("m")).await;
    assert_eq!(status, 400);
    let e = error_of(&text);
    assert_eq!(e["message"], "prompt is too long: 300000 tokens");
    assert_eq!(e["type"], "invalid_request_error");
}

#[tokio::test]
async fn endpoints_anthropic_lacks_go_to_the_next_profile_without_penalty() {
    let (an, o) = (
        MockUpstream::start_named("an").await,
        MockUpstream::start_named("o").await,
    );
    let cfg = with_anthropic(ConfigBuilder::default(), "an", &an)
        .profile("o", &o)
        .model_with_strategy("m", &["an", "o"], "priority");
    let server = Server::start(&cfg);
    let (status, headers, text) = post(
        &server,
        "/v1/embeddings",
        &serde_json::json!({"model": "m", "input": "hi"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-switchyard-profile"], "o");
    assert_eq!(headers["x-switchyard-attempts"], "1");
    assert_eq!(an.request_count(), 0);
    assert_eq!(admin_profile(&server, "an").await["failures"], 0);
    let solo =
        Server::start(&with_anthropic(ConfigBuilder::default(), "an", &an).model("m", &["an"]));
    let (status, _, text) = post(
        &solo,
        "/v1/embeddings",
        &serde_json::json!({"model": "m", "input": "hi"}),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(error_of(&text)["message"]
        .as_str()
        .unwrap()
        .contains("/embeddings"));
}

#[tokio::test]
async fn messages_ingress_speaks_anthropic_to_the_client_whatever_the_upstream() {
    let (o, an) = (
        MockUpstream::start_named("o").await,
        MockUpstream::start_named("an").await,
    );
    let cfg = with_anthropic(ConfigBuilder::default().profile("o", &o), "an", &an)
        .model("to-openai", &["o"])
        .model("to-anthropic", &["an"]);
    let server = Server::start(&cfg);
    for (model, who) in [("to-openai", "o"), ("to-anthropic", "an")] {
        let body = serde_json::json!({"model": model, "max_tokens": 100, "system": "be brief",
            "messages": [{"role": "user", "content": "hello there"}]});
        let (status, headers, text) = post(&server, "/v1/messages", &body, &[]).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(headers["x-switchyard-profile"], who);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "message", "{v}");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["content"][0]["text"], format!("mock reply from {who}"));
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["usage"]["output_tokens"], 5);

        let mut sbody = body.clone();
        sbody["stream"] = serde_json::json!(true);
        let (status, text) = stream_text(&server, "/v1/messages", sbody).await;
        assert_eq!(status, 200, "{text}");
        let events: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(events.first(), Some(&"message_start"), "{text}");
        assert_eq!(events.last(), Some(&"message_stop"), "{text}");
        assert!(events.contains(&"content_block_delta"));
        assert!(!text.contains("[DONE]"));
        let joined: String = sse_json(&text)
            .iter()
            .filter_map(|e| e["delta"]["text"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(joined, format!("mock reply from {who}"));
    }
    // The OpenAI upstream received a chat completion.
    assert_eq!(o.requests()[0].path_only(), "/v1/chat/completions");
    assert_eq!(o.requests()[0].json()["messages"][0]["role"], "system");
    // Errors are Anthropic-shaped.
    let (status, _, text) = post(&server, "/v1/messages", &serde_json::json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}), &[]).await;
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    let (status, _, text) = post(
        &server,
        "/v1/messages",
        &serde_json::json!({"model": "to-openai"}),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["type"],
        "error"
    );
}
