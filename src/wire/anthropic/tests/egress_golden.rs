//! OpenAI chat to Anthropic Messages: requests, responses, refusals and streams.

use serde_json::{json, Value};

use super::*;

// ---- egress: requests ----

fn egress_request(name: &str) -> Value {
    let input = read(&format!("egress/{name}.in.json"));
    let out = chat_request_to_messages(&input, "claude-sonnet-4-5", DEFAULT_MAX_TOKENS)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    check_json(&format!("egress/{name}.out.json"), &out);
    parse(&out)
}

#[test]
fn egress_request_system_and_multi_turn() {
    let out = egress_request("request_multiturn");
    // Hoisted system text, merged consecutive user turns, trimmed final prefill, dropped hints.
    assert_eq!(
        out["system"][0]["text"],
        "You are a terse geography tutor.\n\nAnswer in English."
    );
    assert_eq!(
        out["messages"][2]["content"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
    assert!(out.get("presence_penalty").is_none() && out.get("seed").is_none());
}

/// Every `cache_control` in a translated request, as JSON pointers.
fn breakpoints(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == "cache_control" {
                    out.push(at.clone());
                } else {
                    breakpoints(x, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                breakpoints(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn egress_places_cache_breakpoints_on_tools_system_and_the_last_two_user_turns() {
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": "2b"}]},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "three"},
    ], "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}},
    ]});
    let out = parse(&chat_request_to_messages(body.to_string().as_bytes(), "c", 10).unwrap());
    let mut got = Vec::new();
    breakpoints(&out, String::new(), &mut got);
    got.sort();
    assert_eq!(
        got,
        [
            "/messages/2/content/1",
            "/messages/4/content/0",
            "/system/0",
            "/tools/1"
        ],
        "{out}"
    );
    assert!(got.len() <= egress::MAX_CACHE_BREAKPOINTS);
    assert_eq!(out["system"][0]["text"], "be brief");
    // No system, no tools, one turn: one breakpoint, on that turn.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let out = parse(&chat_request_to_messages(body.to_string().as_bytes(), "c", 10).unwrap());
    let mut got = Vec::new();
    breakpoints(&out, String::new(), &mut got);
    assert_eq!(got, ["/messages/0/content/0"]);
    assert!(out.get("system").is_none());
}

#[test]
fn egress_request_images_base64_and_url() {
    let out = egress_request("request_images");
    assert_eq!(
        out["messages"][0]["content"][2]["source"]["media_type"],
        "image/jpeg"
    );
}

#[test]
fn egress_request_tools_tool_choice_and_tool_results() {
    let out = egress_request("request_tools");
    assert_eq!(
        out["max_tokens"], 1024,
        "max_completion_tokens wins over max_tokens"
    );
}

#[test]
fn egress_request_stop_sequences_sampling_and_default_max_tokens() {
    let out = egress_request("request_sampling");
    assert!(
        out.get("tool_choice").is_none(),
        "tool_choice without tools is dropped"
    );
}

// ---- egress: responses ----

fn egress_response(name: &str) -> Value {
    let input = read(&format!("egress/{name}.in.json"));
    let out =
        messages_response_to_chat(&input, "claude-fast").unwrap_or_else(|e| panic!("{name}: {e}"));
    check_json(&format!("egress/{name}.out.json"), &out);
    assert_openai_completion_shape(&parse(&out));
    parse(&out)
}

/// What the official OpenAI SDKs require of a `ChatCompletion`.
fn assert_openai_completion_shape(v: &Value) {
    assert!(v["id"].is_string(), "id");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].is_u64(), "created");
    assert!(v["model"].is_string(), "model");
    let choices = v["choices"].as_array().unwrap_or_else(|| panic!("choices"));
    assert!(!choices.is_empty());
    for c in choices {
        assert!(c["index"].is_u64(), "choices[].index");
        assert!(c["finish_reason"].is_string(), "choices[].finish_reason");
        let m = &c["message"];
        assert_eq!(m["role"], "assistant");
        assert!(
            m["content"].is_string() || m["content"].is_null(),
            "message.content"
        );
        for call in m["tool_calls"].as_array().into_iter().flatten() {
            assert!(call["id"].is_string() && call["type"] == "function");
            assert!(call["function"]["name"].is_string());
            let args = call["function"]["arguments"]
                .as_str()
                .unwrap_or_else(|| panic!("arguments"));
            assert!(
                serde_json::from_str::<Value>(args).is_ok(),
                "arguments are JSON"
            );
        }
    }
    let u = &v["usage"];
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert!(u[k].is_u64(), "usage.{k}");
    }
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(
            u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
}

#[test]
fn egress_response_text_with_cache_usage() {
    let out = egress_response("response_text");
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "Rome is the capital of Italy."
    );
    assert_eq!(out["usage"]["prompt_tokens"], 2121);
}

#[test]
fn egress_response_tool_use() {
    let out = egress_response("response_tool_use");
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
}

#[test]
fn egress_response_max_tokens() {
    let out = egress_response("response_max_tokens");
    assert_eq!(out["choices"][0]["finish_reason"], "length");
}

#[test]
fn egress_finish_reasons() {
    for (stop, finish) in [
        (json!("end_turn"), "stop"),
        (json!("stop_sequence"), "stop"),
        (json!("max_tokens"), "length"),
        (json!("tool_use"), "tool_calls"),
        (json!("refusal"), "content_filter"),
        (json!("pause_turn"), "stop"),
        (Value::Null, "stop"),
    ] {
        let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "stop_reason": stop, "usage": {"input_tokens": 1, "output_tokens": 0}});
        let out = parse(&messages_response_to_chat(body.to_string().as_bytes(), "m").unwrap());
        assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
        assert_eq!(
            out["choices"][0]["message"]["content"], "",
            "empty answer is still a string"
        );
    }
}

#[test]
fn egress_response_errors_are_upstream_faults() {
    let err = messages_response_to_chat(
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        "m",
    )
    .unwrap_err();
    assert!(!err.is_client_error());
    assert!(err.to_string().contains("Overloaded"), "{err}");
    assert!(matches!(
        messages_response_to_chat(b"<html>", "m"),
        Err(TranslateError::BadUpstream(_))
    ));
    assert!(matches!(
        messages_response_to_chat(b"{}", "m"),
        Err(TranslateError::BadUpstream(_))
    ));
}

// ---- egress: requests refused or reshaped ----

fn egress_err(body: Value) -> TranslateError {
    chat_request_to_messages(body.to_string().as_bytes(), "claude", 10).unwrap_err()
}

fn egress_ok(body: Value) -> Value {
    parse(&chat_request_to_messages(body.to_string().as_bytes(), "claude", 10).unwrap())
}

fn user_hi() -> Value {
    json!([{"role": "user", "content": "hi"}])
}

#[test]
fn egress_refuses_what_anthropic_cannot_answer() {
    let base = |extra: Value| {
        let mut b = json!({"model": "m", "messages": user_hi()});
        for (k, v) in extra.as_object().into_iter().flatten() {
            b[k] = v.clone();
        }
        b
    };
    for extra in [
        json!({"n": 2}),
        json!({"logprobs": true}),
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}),
        json!({"functions": [{"name": "f"}]}),
        json!({"modalities": ["text", "audio"]}),
        json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
    ] {
        let err = egress_err(base(extra.clone()));
        assert!(
            matches!(err, TranslateError::Unsupported(_)),
            "{extra}: {err:?}"
        );
        assert!(err.is_client_error());
    }
    for extra in [
        json!({"n": 1}),
        json!({"logprobs": false}),
        json!({"response_format": {"type": "json_object"}}),
    ] {
        egress_ok(base(extra));
    }
    assert!(matches!(
        chat_request_to_messages(b"{not json", "m", 1),
        Err(TranslateError::InvalidJson(_))
    ));
    assert!(matches!(
        chat_request_to_messages(b"[]", "m", 1),
        Err(TranslateError::InvalidJson(_))
    ));
}

#[test]
fn egress_invalid_requests_name_the_field() {
    let cases = [
        (json!({"model": "m"}), "messages"),
        (
            json!({"messages": [{"role": "system", "content": "only system"}]}),
            "at least one",
        ),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":"}}]}]}),
            "messages[0].tool_calls[0].function.arguments: not valid JSON",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            "must encode a JSON object",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"messages": user_hi(), "max_tokens": -1}),
            "max_tokens",
        ),
        (json!({"messages": user_hi(), "stop": 3}), "stop"),
        (
            json!({"messages": user_hi(), "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"messages": user_hi(), "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
    ];
    for (body, needle) in cases {
        let err = egress_err(body.clone());
        assert!(
            matches!(err, TranslateError::InvalidRequest(_)),
            "{body}: {err:?}"
        );
        assert!(err.to_string().contains(needle), "{body}: {err}");
    }
}

#[test]
fn egress_tool_choice_variants() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    for (choice, parallel, want) in [
        (json!("auto"), None, json!({"type": "auto"})),
        (json!("required"), None, json!({"type": "any"})),
        (json!("none"), Some(false), json!({"type": "none"})),
        (
            json!("required"),
            Some(false),
            json!({"type": "any", "disable_parallel_tool_use": true}),
        ),
        (
            Value::Null,
            Some(false),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            Some(true),
            json!({"type": "tool", "name": "f"}),
        ),
    ] {
        let mut body = json!({"messages": user_hi(), "tools": tools, "tool_choice": choice});
        if let Some(p) = parallel {
            body["parallel_tool_calls"] = json!(p);
        }
        let out = egress_ok(body);
        assert_eq!(out["tool_choice"], want, "{choice} {parallel:?}");
        assert_eq!(
            out["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
    }
    let out = egress_ok(json!({"messages": user_hi(), "tools": tools}));
    assert!(out.get("tool_choice").is_none());
}

#[test]
fn egress_stop_string_user_and_tool_results_first() {
    let out = egress_ok(json!({
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": "interjection"},
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
        ],
        "stop": "END",
        "user": "u-1",
    }));
    assert_eq!(out["stop_sequences"], json!(["END"]));
    assert_eq!(out["metadata"], json!({"user_id": "u-1"}));
    assert_eq!(
        out["messages"][2]["content"],
        json!([{"type": "tool_result", "tool_use_id": "c1", "content": "r"}, {"type": "text", "text": "interjection", "cache_control": {"type": "ephemeral"}}])
    );
}

// ---- egress: streams ----

#[test]
fn egress_stream_text_with_usage() {
    let out = check_stream("egress/stream_text", || {
        MessagesStreamToChat::new("claude-fast", true)
    });
    let mut t = MessagesStreamToChat::new("claude-fast", true);
    feed(&mut t, &read("egress/stream_text.in.sse"), 5);
    assert_eq!(
        t.usage(),
        Some(StreamUsage {
            prompt_tokens: 35,
            completion_tokens: 15
        })
    );
    assert!(t.upstream_error().is_none());
    let events = sse_events(&out);
    assert_eq!(events.last().map(|e| e.1.clone()), Some(json!("[DONE]")));
    for (_, chunk) in &events[..events.len() - 1] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(
            chunk.get("usage").is_some(),
            "usage: null on every chunk when include_usage"
        );
    }
}

#[test]
fn egress_stream_tool_use() {
    let out = check_stream("egress/stream_tool_use", || {
        MessagesStreamToChat::new("claude-fast", false)
    });
    for (_, chunk) in sse_events(&out) {
        assert!(
            chunk.get("usage").is_none(),
            "no usage without include_usage"
        );
    }
}

#[test]
fn egress_stream_error_event() {
    let out = check_stream("egress/stream_error", || {
        MessagesStreamToChat::new("claude-fast", true)
    });
    assert!(!String::from_utf8_lossy(&out).contains("[DONE]"));
    let mut t = MessagesStreamToChat::new("claude-fast", true);
    feed(&mut t, &read("egress/stream_error.in.sse"), 3);
    let err = t.upstream_error().cloned();
    assert_eq!(
        err,
        Some(StreamError {
            kind: "overloaded_error".into(),
            message: "Overloaded".into()
        })
    );
    assert!(t
        .push(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
        .unwrap()
        .is_empty());
}

#[test]
fn egress_stream_edge_cases() {
    let mut t = MessagesStreamToChat::new("m", false);
    assert!(t
        .push(b"event: ping\ndata: {\"type\":\"ping\"}\n\n")
        .unwrap()
        .is_empty());
    assert!(t
        .push(b"event: brand_new\ndata: {\"type\":\"brand_new\"}\n\n")
        .unwrap()
        .is_empty());
    assert!(!t.is_finished());
    // message_stop without a message_delta still gives the client a finish_reason.
    let out = t
        .push(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
        .unwrap();
    let events = sse_events(&out);
    assert_eq!(events[0].1["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[1].1["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[2].1, json!("[DONE]"));
    assert!(t.is_finished() && t.upstream_error().is_none());
    assert!(t.push(b"data: {\"type\":\"ping\"}\n\n").unwrap().is_empty());

    let mut t = MessagesStreamToChat::new("m", false);
    assert!(matches!(
        t.push(b"data: {oops\n\n"),
        Err(TranslateError::BadUpstream(_))
    ));
    let mut t = MessagesStreamToChat::new("m", false);
    let stray = b"data: {\"type\":\"content_block_delta\",\"index\":4,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}\n\n";
    assert!(matches!(t.push(stray), Err(TranslateError::BadUpstream(_))));
}
