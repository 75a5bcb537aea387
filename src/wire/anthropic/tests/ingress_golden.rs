//! Anthropic Messages to OpenAI chat: requests, responses and streams.

use serde_json::{json, Value};

use super::*;

// ---- ingress ----

fn ingress_request(name: &str) -> (Value, IngressInfo) {
    let input = read(&format!("ingress/{name}.in.json"));
    let (out, info) = messages_request_to_chat(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_json(&format!("ingress/{name}.out.json"), &out);
    (parse(&out), info)
}

#[test]
fn ingress_request_full() {
    let (out, info) = ingress_request("request_full");
    assert_eq!(
        info,
        IngressInfo {
            model: "gpt-4o".into(),
            stream: true
        }
    );
    assert_eq!(out["stream_options"], json!({"include_usage": true}));
    assert!(out.get("top_k").is_none() && out.get("thinking").is_none());
}

#[test]
fn ingress_request_simple() {
    let (out, info) = ingress_request("request_simple");
    assert_eq!(
        info,
        IngressInfo {
            model: "gpt-4o-mini".into(),
            stream: false
        }
    );
    assert!(out.get("stream").is_none() && out.get("stream_options").is_none());
}

#[test]
fn ingress_request_errors() {
    let err = |body: Value| messages_request_to_chat(body.to_string().as_bytes()).unwrap_err();
    let msgs = json!([{"role": "user", "content": "hi"}]);
    assert!(
        matches!(err(json!({"messages": msgs})), TranslateError::InvalidRequest(m) if m.contains("model"))
    );
    assert!(
        matches!(err(json!({"model": "m"})), TranslateError::InvalidRequest(m) if m.contains("messages"))
    );
    assert!(matches!(
        err(json!({"model": "m", "messages": msgs, "tools": [{"type": "web_search_20250305", "name": "web_search"}]})),
        TranslateError::Unsupported(m) if m.contains("tools[0].type")
    ));
    assert!(matches!(
        err(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]})),
        TranslateError::Unsupported(m) if m.contains("messages[0].content[0].source.type")
    ));
    // `system` is a role now (Claude Code's mid-conversation system entries); others are not.
    assert!(matches!(
        err(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})),
        TranslateError::InvalidRequest(m) if m.contains("messages[0].role")
    ));
    let (out, _) = messages_request_to_chat(
        json!({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": [{"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}]}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        out["messages"][1],
        json!({"role": "system", "content": "b"})
    );
    assert!(matches!(
        messages_request_to_chat(b"nope"),
        Err(TranslateError::InvalidJson(_))
    ));
}

fn ingress_response(name: &str) -> Value {
    let input = read(&format!("ingress/{name}.in.json"));
    let out = chat_response_to_messages(&input, "gpt-4o").unwrap_or_else(|e| panic!("{name}: {e}"));
    check_json(&format!("ingress/{name}.out.json"), &out);
    assert_anthropic_message_shape(&parse(&out));
    parse(&out)
}

/// What the official Anthropic SDKs require of a `Message`.
fn assert_anthropic_message_shape(v: &Value) {
    assert!(
        v["id"].as_str().is_some_and(|id| id.starts_with("msg_")),
        "id"
    );
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert!(v["model"].is_string(), "model");
    assert!(v["stop_reason"].is_string(), "stop_reason");
    assert!(
        v.get("stop_sequence")
            .is_some_and(|s| s.is_null() || s.is_string()),
        "stop_sequence"
    );
    for b in v["content"].as_array().unwrap_or_else(|| panic!("content")) {
        match b["type"].as_str() {
            Some("text") => assert!(b["text"].is_string()),
            Some("tool_use") => {
                assert!(b["id"].is_string() && b["name"].is_string() && b["input"].is_object())
            }
            other => panic!("unexpected block {other:?}"),
        }
    }
    assert!(
        v["usage"]["input_tokens"].is_u64() && v["usage"]["output_tokens"].is_u64(),
        "usage"
    );
}

#[test]
fn ingress_response_text() {
    let out = ingress_response("response_text");
    assert_eq!(
        out["usage"]["input_tokens"], 93,
        "cache reads are not input tokens"
    );
}

#[test]
fn ingress_response_tool_calls() {
    let out = ingress_response("response_tool_calls");
    assert_eq!(out["stop_reason"], "tool_use");
}

#[test]
fn ingress_response_length() {
    let out = ingress_response("response_length");
    assert_eq!(out["stop_reason"], "max_tokens");
}

#[test]
fn ingress_response_errors() {
    let bad_args = json!({"id": "x", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]}}]});
    for body in [
        bad_args.to_string(),
        r#"{"error":{"message":"boom","type":"server_error"}}"#.to_string(),
        r#"{"choices":[]}"#.to_string(),
        "[]".to_string(),
    ] {
        let err = chat_response_to_messages(body.as_bytes(), "m").unwrap_err();
        assert!(
            matches!(err, TranslateError::BadUpstream(_)),
            "{body}: {err:?}"
        );
    }
}

#[test]
fn ingress_stream_text() {
    check_stream("ingress/stream_text", || {
        ChatStreamToMessages::new("gpt-4o")
    });
}

#[test]
fn ingress_stream_tool_calls() {
    check_stream("ingress/stream_tool_calls", || {
        ChatStreamToMessages::new("gpt-4o")
    });
    let mut t = ChatStreamToMessages::new("gpt-4o");
    feed(&mut t, &read("ingress/stream_tool_calls.in.sse"), 11);
    assert_eq!(
        t.usage(),
        Some(StreamUsage {
            prompt_tokens: 120,
            completion_tokens: 40
        })
    );
}

#[test]
fn ingress_stream_error() {
    check_stream("ingress/stream_error", || {
        ChatStreamToMessages::new("gpt-4o")
    });
    let mut t = ChatStreamToMessages::new("gpt-4o");
    feed(&mut t, &read("ingress/stream_error.in.sse"), 4);
    assert_eq!(
        t.upstream_error().map(|e| e.kind.as_str()),
        Some("api_error")
    );
}

#[test]
fn ingress_stream_refuses_a_resumed_tool_call() {
    let chunk = |tc: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [tc]}}]})
        )
    };
    let mut t = ChatStreamToMessages::new("m");
    t.push(
        chunk(json!({"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}))
            .as_bytes(),
    )
    .unwrap();
    t.push(
        chunk(json!({"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}))
            .as_bytes(),
    )
    .unwrap();
    let err = t
        .push(chunk(json!({"index": 0, "function": {"arguments": "}"}})).as_bytes())
        .unwrap_err();
    assert!(matches!(err, TranslateError::BadUpstream(_)));
}

// ---- both ways ----

/// An Anthropic request through ingress and back through egress comes back as it was (minus what
/// OpenAI cannot carry).
#[test]
fn anthropic_request_round_trip() {
    let original = json!({
        "model": "claude-sonnet-4-5",
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                {"type": "text", "text": "And tomorrow?"}]},
        ],
        "max_tokens": 512,
        "stop_sequences": ["STOP"],
        "temperature": 0.3,
        "stream": true,
        "metadata": {"user_id": "u-9"},
        "tools": [{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
    });
    let (chat, _) = messages_request_to_chat(original.to_string().as_bytes()).unwrap();
    let back = parse(&chat_request_to_messages(&chat, "claude-sonnet-4-5", 1).unwrap());
    let mut want = original.clone();
    want["messages"][2]["content"][0]["content"] = json!("18 C");
    // The egress translation adds the prompt-cache breakpoints an OpenAI client cannot send.
    let ephemeral = json!({"type": "ephemeral"});
    want["system"] = json!([{"type": "text", "text": "Be brief.", "cache_control": ephemeral}]);
    want["tools"][0]["cache_control"] = ephemeral.clone();
    want["messages"][0]["content"][1]["cache_control"] = ephemeral.clone();
    want["messages"][2]["content"][1]["cache_control"] = ephemeral;
    assert_eq!(back, want, "{}", pretty(&back));
}

/// Responses both ways keep text, tool calls, finish reason and usage.
#[test]
fn response_round_trip() {
    for name in ["response_text", "response_tool_calls", "response_length"] {
        let original = parse(&read(&format!("ingress/{name}.in.json")));
        let anthropic = chat_response_to_messages(original.to_string().as_bytes(), "m").unwrap();
        let back = parse(&messages_response_to_chat(&anthropic, "m").unwrap());
        let (o, b) = (&original["choices"][0], &back["choices"][0]);
        assert_eq!(b["finish_reason"], o["finish_reason"], "{name}");
        assert_eq!(b["message"]["content"], o["message"]["content"], "{name}");
        let args = |v: &Value| -> Vec<(Value, Value, Value)> {
            v["message"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let a = c["function"]["arguments"].as_str().unwrap_or("");
                    let a = if a.is_empty() {
                        json!({})
                    } else {
                        parse(a.as_bytes())
                    };
                    (c["id"].clone(), c["function"]["name"].clone(), a)
                })
                .collect()
        };
        assert_eq!(args(b), args(o), "{name}");
        for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(back["usage"][k], original["usage"][k], "{name} {k}");
        }
    }
}

/// What an OpenAI client assembles from a chunk stream: content, tool calls, finish reason.
#[allow(clippy::unwrap_used)]
fn assemble_openai(sse: &[u8]) -> Value {
    let mut content = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = Value::Null;
    let events = super::sse::SseParser::new().push(sse).unwrap();
    for chunk in events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(|e| parse(e.data.as_bytes()))
    {
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        content.push_str(delta["content"].as_str().unwrap_or(""));
        for tc in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = tc["index"].as_u64().unwrap_or(0) as usize;
            if calls.len() <= i {
                calls.resize(i + 1, json!({"id": "", "name": "", "arguments": ""}));
            }
            for (k, v) in [
                ("id", &tc["id"]),
                ("name", &tc["function"]["name"]),
                ("arguments", &tc["function"]["arguments"]),
            ] {
                if let Some(s) = v.as_str() {
                    let joined = format!("{}{s}", calls[i][k].as_str().unwrap_or(""));
                    calls[i][k] = json!(joined);
                }
            }
        }
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
    }
    json!({"content": content, "tool_calls": calls, "finish_reason": finish})
}

/// An OpenAI stream through ingress (to Anthropic events) and back through egress assembles the same.
#[test]
fn stream_round_trip() {
    for name in ["stream_text", "stream_tool_calls"] {
        let input = read(&format!("ingress/{name}.in.sse"));
        let anthropic = feed(&mut ChatStreamToMessages::new("m"), &input, 9);
        let mut egress = MessagesStreamToChat::new("m", true);
        let back = feed(&mut egress, &anthropic, 13);
        assert!(egress.is_finished());
        assert_eq!(assemble_openai(&back), assemble_openai(&input), "{name}");
        let mut ingress = ChatStreamToMessages::new("m");
        feed(&mut ingress, &input, input.len());
        assert_eq!(egress.usage(), ingress.usage(), "{name}");
    }
}
