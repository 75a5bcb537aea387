//! Coding agents as clients: what Claude Code really sends (tests/fixtures/clients, prose replaced by
//! filler), replayed to an Anthropic profile (passed through untouched but for `model`) and to an
//! OpenAI profile (translated), and sessions kept sticky by the agents' own headers.

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

/// The captured Claude Code request: (query, headers, body).
fn claude_code() -> (String, Vec<(String, String)>, Value) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/clients/claude-code-messages.json"
    );
    let fixture: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let req = &fixture["request"];
    let headers = req["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x-api-key" | "connection" | "accept-encoding"))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    (
        req["query"].as_str().unwrap().to_owned(),
        headers,
        req["body"].clone(),
    )
}

fn anthropic_profile(cfg: ConfigBuilder, id: &str, mock: &MockUpstream) -> ConfigBuilder {
    let key = format!("api_key: \"sk-ant-{id}-secret\"");
    cfg.profile_with(
        id,
        &mock.base_url(),
        &[
            "provider: anthropic",
            &key,
            "model_map: {claude-opus-4-8: claude-upstream-name}",
        ],
    )
}

/// Sends the fixture (with `stream` as given) the way Claude Code does; status and body text.
async fn send_claude_code(
    server: &Server,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let (query, headers, _) = claude_code();
    let mut req = client().post(server.url(&format!("/v1/messages?{query}")));
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut s = resp.bytes_stream();
    let mut all = Vec::new();
    while let Some(c) = s.next().await {
        all.extend_from_slice(&c.unwrap());
    }
    (status, headers, String::from_utf8(all).unwrap())
}

#[tokio::test]
async fn claude_code_reaches_an_anthropic_profile_untouched_but_for_model() {
    let a = MockUpstream::start_named("a").await;
    let cfg = anthropic_profile(ConfigBuilder::default(), "a", &a).model("claude-opus-4-8", &["a"]);
    let server = Server::start(&cfg);
    let (query, headers, body) = claude_code();
    for stream in [true, false] {
        a.clear();
        let mut body = body.clone();
        body["stream"] = json!(stream);
        let (status, resp_headers, text) = send_claude_code(&server, &body).await;
        assert_eq!(status, 200, "{text}");
        let got = &a.requests()[0];
        assert_eq!(
            got.path,
            format!("/v1/messages?{query}"),
            "the query string is kept"
        );
        for name in ["anthropic-beta", "anthropic-version"] {
            let sent = headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            assert_eq!(got.header(name), sent, "{name} is forwarded as sent");
        }
        assert_eq!(got.header("x-api-key"), Some("sk-ant-a-secret"));
        let mut want = body.clone();
        want["model"] = json!("claude-upstream-name");
        assert_eq!(
            got.json(),
            want,
            "cache_control, thinking, betas: all as sent but model"
        );
        if stream {
            assert!(text.contains("event: message_start"), "{text}");
            assert!(
                text.trim_end()
                    .ends_with("data: {\"type\":\"message_stop\"}"),
                "{text}"
            );
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "message", "{text}");
            assert!(resp_headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"));
        }
    }
}

#[tokio::test]
async fn claude_code_with_system_entries_is_answered_by_an_openai_profile() {
    let o = MockUpstream::start_named("o").await;
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("o", &o)
            .model("claude-opus-4-8", &["o"]),
    );
    let (_, _, mut body) = claude_code();
    // The mid-conversation-system beta: a system-role entry among the messages.
    body["messages"].as_array_mut().unwrap().push(
        json!({"role": "system", "content": [{"type": "text", "text": "mid-conversation note"}]}),
    );
    body["messages"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "user", "content": "go on"}));
    for stream in [false, true] {
        body["stream"] = json!(stream);
        let (status, _, text) = send_claude_code(&server, &body).await;
        assert_eq!(status, 200, "{text}");
        if stream {
            assert!(text.contains("event: message_stop"), "{text}");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "message");
            let id = v["id"].as_str().unwrap();
            assert!(
                id.starts_with("msg_") && !id.starts_with("msg_msg_"),
                "{id}"
            );
        }
    }
    let sent = o.requests()[0].json();
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.first(), Some(&"system"));
    assert!(roles.iter().skip(1).any(|r| *r == "system"), "{roles:?}");
}

#[tokio::test]
async fn an_agent_session_header_or_prompt_cache_key_keeps_its_turns_on_one_profile() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .model("m", &["a", "b"]),
    );
    let keyed: Vec<(Option<&str>, Value)> = vec![
        (Some("x-claude-code-session-id"), chat_body("m")),
        (Some("session-id"), chat_body("m")),
        (Some("thread-id"), chat_body("m")),
        (None, {
            let mut b = chat_body("m");
            b["prompt_cache_key"] = json!("conv-42");
            b
        }),
    ];
    for (header, body) in keyed {
        let mut profiles = Vec::new();
        for _ in 0..4 {
            let mut req = client().post(server.url("/v1/chat/completions"));
            if let Some(h) = header {
                req = req.header(h, format!("{h}-value"));
            }
            let resp = req.json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            profiles.push(
                resp.headers()["x-switchyard-profile"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert!(
            profiles.iter().all(|p| *p == profiles[0]),
            "{header:?}: {profiles:?} (round robin would alternate)"
        );
    }
}

#[tokio::test]
async fn models_answer_in_anthropic_shape_when_asked_with_anthropic_version() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let v: Value = client()
        .get(server.url("/v1/models"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["data"][0]["id"], "m");
    assert_eq!(v["has_more"], false);
    let v: Value = client()
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list", "OpenAI's shape otherwise");
}

#[tokio::test]
async fn count_tokens_goes_to_an_anthropic_profile_and_is_estimated_without_one() {
    let (a, o) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("o").await,
    );
    let cfg = anthropic_profile(ConfigBuilder::default(), "a", &a)
        .profile("o", &o)
        .model("claude-opus-4-8", &["o", "a"])
        .model("gpt", &["o"]);
    let server = Server::start(&cfg);
    let body = json!({"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "one two three"}]});
    for path in [
        "/v1/messages/count_tokens",
        "/v1/messages/count_tokens?beta=true",
    ] {
        let resp = client()
            .post(server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-switchyard-profile"],
            "a",
            "only Anthropic counts"
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["input_tokens"], 3, "the upstream's own count");
    }
    let got = a.requests();
    assert_eq!(got[0].path_only(), "/v1/messages/count_tokens");
    assert_eq!(got[1].path, "/v1/messages/count_tokens?beta=true");
    assert_eq!(
        o.request_count(),
        0,
        "an OpenAI profile is never asked to count"
    );
    // A model without an Anthropic profile: an estimate, in Anthropic's shape.
    let mut body = body.clone();
    body["model"] = json!("gpt");
    let resp = client()
        .post(server.url("/v1/messages/count_tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-switchyard-estimate"], "bytes/4");
    let v: Value = resp.json().await.unwrap();
    assert!(v["input_tokens"].as_u64().unwrap() > 0, "{v}");
    // An unknown model: Anthropic's error shape.
    body["model"] = json!("nope");
    let resp = client()
        .post(server.url("/v1/messages/count_tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
}

/// The captured Codex request's body.
fn codex() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/clients/codex-responses.json"
    );
    let fixture: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    fixture["request"]["body"].clone()
}

#[tokio::test]
async fn codex_responses_pass_through_with_failover_json_and_stream() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let cfg = ConfigBuilder::default()
        .profile("a", &a)
        .profile("b", &b)
        .model("gpt-4o-mini", &["a", "b"]);
    let server = Server::start(&cfg);
    let body = codex();
    // Profile a always fails; the client must never see it.
    a.set_default(Reply::status(500, "upstream exploded"));
    for stream in [true, false] {
        b.clear();
        let mut body = body.clone();
        body["stream"] = json!(stream);
        let resp = client()
            .post(server.url("/v1/responses"))
            .header("session-id", "codex-session")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-switchyard-profile"], "b");
        let text = resp.text().await.unwrap();
        let got = b.requests().last().unwrap().json();
        assert_eq!(
            got, body,
            "store:false, include and reasoning pass untouched, no stream_options"
        );
        assert_eq!(b.requests().last().unwrap().path_only(), "/v1/responses");
        if stream {
            assert!(text.contains("event: response.created"), "{text}");
            assert!(text.contains("event: response.completed"), "{text}");
            assert!(!text.contains("[DONE]"), "the Responses API has no [DONE]");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["object"], "response", "{text}");
        }
    }
    // Usage comes from the Responses shape (input_tokens/output_tokens).
    assert!(
        a.request_count() >= 1,
        "the failing profile was tried first"
    );
    let m = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.lines().any(|l| l.starts_with("switchyard_tokens_total")
            && l.contains("completion")
            && !l.ends_with(" 0")),
        "{m}"
    );
}

#[tokio::test]
async fn an_overloaded_upstream_reaches_an_anthropic_client_as_overloaded_error() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(
        &anthropic_profile(ConfigBuilder::default(), "a", &a).model("claude-opus-4-8", &["a"]),
    );
    a.push(Reply::status(
        529,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ));
    let body = json!({"model": "claude-opus-4-8", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let resp = client()
        .post(server.url("/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 529, "clients retry on overloaded");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error", "{v}");
}

/// Profiles that answered four turns, each with the session header `s1` and a user of its own.
async fn profiles_for_turns(server: &Server) -> Vec<String> {
    let mut out = Vec::new();
    for turn in 0..4 {
        let mut body = chat_body("m");
        body["user"] = json!(format!("user-{turn}"));
        let resp = client()
            .post(server.url("/v1/chat/completions"))
            .header("X-Session-Id", "s1")
            .header("X-Conversation", "c1")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        out.push(
            resp.headers()["x-switchyard-profile"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    out
}

#[tokio::test]
async fn a_configured_sticky_order_decides_which_key_a_session_sticks_by() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let base = ConfigBuilder::default()
        .profile("a", &a)
        .profile("b", &b)
        .model("m", &["a", "b"]);
    // Default: X-Session-Id comes before the body's user, so every turn sticks to one profile.
    let server = Server::start(&base);
    let got = profiles_for_turns(&server).await;
    assert!(got.iter().all(|p| *p == got[0]), "{got:?}");
    drop(server);
    // The body's user first: each turn has a new key, and round robin alternates.
    let mut cfg = base.clone();
    cfg.sticky_sources = Some(r#"["body:user", "header:X-Session-Id"]"#.into());
    let server = Server::start(&cfg);
    let got = profiles_for_turns(&server).await;
    assert!(got.iter().any(|p| *p != got[0]), "{got:?}");
    drop(server);
    // A header of the operator's choosing, the one listed first.
    let mut cfg = base.clone();
    cfg.sticky_sources = Some(r#"["header:X-Conversation", "body:user"]"#.into());
    let server = Server::start(&cfg);
    let got = profiles_for_turns(&server).await;
    assert!(got.iter().all(|p| *p == got[0]), "{got:?}");
}

/// The value of the metric line that starts with `prefix` and has every one of `labels`.
fn metric(text: &str, prefix: &str, labels: &[&str]) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn cache_and_reasoning_tokens_of_pass_through_routes_are_recorded_exported_and_reported() {
    let (a, o) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("o").await,
    );
    let mut cfg = anthropic_profile(ConfigBuilder::default(), "a", &a)
        .profile("o", &o)
        .model("claude-opus-4-8", &["a"])
        .model("gpt-4o-mini", &["o"]);
    cfg.auth_required = true;
    let server = Server::start(&cfg);
    let key = admin(
        &server,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"name": "agent", "account": "acme"})),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Anthropic, whole: 100 read, 30 written (20 of them for an hour).
    a.push(Reply::status(
        200,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-upstream-name",
               "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
               "usage": {"input_tokens": 10, "cache_creation_input_tokens": 30,
                         "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
                         "cache_read_input_tokens": 100, "output_tokens": 5}})
        .to_string(),
    ));
    // Anthropic, streamed: 50 read.
    a.push(Reply::events([
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"cache_read_input_tokens\":50,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":4}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ]));
    // Responses, whole: 32 cached, 7 reasoning.
    o.push(Reply::status(
        200,
        json!({"id": "resp_o_x", "object": "response", "status": "completed", "output": [],
               "usage": {"input_tokens": 40, "input_tokens_details": {"cached_tokens": 32},
                         "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 7},
                         "total_tokens": 49}})
        .to_string(),
    ));
    // Responses, streamed: 8 cached, 3 reasoning.
    o.push(Reply::events([
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_o_y\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_o_y\",\"status\":\"completed\",\"usage\":{\"input_tokens\":12,\"input_tokens_details\":{\"cached_tokens\":8},\"output_tokens\":5,\"output_tokens_details\":{\"reasoning_tokens\":3},\"total_tokens\":17}}}\n\n",
    ]));
    let messages = json!({"model": "claude-opus-4-8", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let responses = json!({"model": "gpt-4o-mini", "input": "hi"});
    for (path, body) in [("/v1/messages", &messages), ("/v1/responses", &responses)] {
        for stream in [false, true] {
            let mut body = body.clone();
            body["stream"] = json!(stream);
            let resp = client()
                .post(server.url(path))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            resp.text().await.unwrap();
        }
    }
    let (status, _, usage) = call(
        &server,
        reqwest::Method::GET,
        "/v1/usage?group_by=model",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    let rows = usage["data"].as_array().unwrap();
    let row = |m: &str| rows.iter().find(|r| r["model"] == m).unwrap().clone();
    let claude = row("claude-opus-4-8");
    assert_eq!(claude["prompt_tokens"], 10 + 30 + 100 + 3 + 50, "{usage}");
    assert_eq!(claude["cached_tokens"], 150, "{usage}");
    assert_eq!(claude["cache_write_tokens"], 10, "{usage}");
    assert_eq!(claude["cache_write_1h_tokens"], 20, "{usage}");
    let gpt = row("gpt-4o-mini");
    assert_eq!(gpt["cached_tokens"], 40, "{usage}");
    assert_eq!(gpt["reasoning_tokens"], 10, "{usage}");
    assert_eq!(usage["total"]["cached_tokens"], 190, "{usage}");
    let m = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let detail = "switchyard_token_details_total{";
    for (model, kind, want) in [
        ("claude-opus-4-8", "cache_read", 150.0),
        ("claude-opus-4-8", "cache_write\"", 10.0),
        ("claude-opus-4-8", "cache_write_1h", 20.0),
        ("gpt-4o-mini", "cache_read", 40.0),
        ("gpt-4o-mini", "reasoning", 10.0),
    ] {
        let got = metric(&m, detail, &[model, &format!("kind=\"{}", kind)]);
        assert_eq!(got, want, "{model} {kind}\n{m}");
    }
}

#[tokio::test]
async fn an_openai_client_on_an_anthropic_profile_gets_prompt_cache_breakpoints() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(
        &anthropic_profile(ConfigBuilder::default(), "a", &a).model("claude-opus-4-8", &["a"]),
    );
    let body = json!({"model": "claude-opus-4-8", "messages": [
        {"role": "system", "content": "a long agent prompt"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ], "tools": [
        {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}},
    ]});
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = a.requests()[0].json();
    let ephemeral = json!({"type": "ephemeral"});
    assert_eq!(sent["system"][0]["cache_control"], ephemeral, "{sent}");
    assert_eq!(sent["system"][0]["text"], "a long agent prompt");
    assert_eq!(
        sent["tools"][1]["cache_control"], ephemeral,
        "the last tool"
    );
    assert!(sent["tools"][0].get("cache_control").is_none());
    let turns = sent["messages"].as_array().unwrap();
    assert_eq!(
        turns[2]["content"][0]["cache_control"], ephemeral,
        "last user turn"
    );
    assert_eq!(
        turns[0]["content"][0]["cache_control"], ephemeral,
        "the turn before"
    );
    assert_eq!(
        sent.to_string().matches("cache_control").count(),
        4,
        "Anthropic's limit"
    );
}

#[tokio::test]
async fn a_messages_client_on_anthropic_only_profiles_sticks_by_its_metadata_user_id() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let cfg = anthropic_profile(
        anthropic_profile(ConfigBuilder::default(), "a", &a),
        "b",
        &b,
    )
    .model("claude-opus-4-8", &["a", "b"]);
    let server = Server::start(&cfg);
    let body = json!({"model": "claude-opus-4-8", "max_tokens": 10, "metadata": {"user_id": "u-7"},
                      "messages": [{"role": "user", "content": "hi"}]});
    let mut seen = Vec::new();
    for _ in 0..4 {
        let resp = client()
            .post(server.url("/v1/messages"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        seen.push(
            resp.headers()["x-switchyard-profile"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(seen.iter().all(|p| *p == seen[0]), "{seen:?}");
    let sent = a
        .requests()
        .into_iter()
        .chain(b.requests())
        .next()
        .unwrap()
        .json();
    let mut want = body.clone();
    want["model"] = json!("claude-upstream-name");
    assert_eq!(sent, want, "passed through untouched but model");
}
