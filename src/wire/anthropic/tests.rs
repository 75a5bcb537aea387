//! Golden tests: each `tests/fixtures/anthropic/{egress,ingress}/NAME.in.*` is translated and compared with
//! `NAME.out.*` as JSON values (`created` ignored, since it is the clock); streams are also fed one byte at a
//! time, in odd-sized pieces and with CRLF line ends, and must give the same events. Run with
//! `SWITCHYARD_BLESS=1` to rewrite the expected files from the current output, then review the diff.

use std::path::PathBuf;

use bytes::Bytes;
use serde_json::{json, Value};

use super::*;

const DEFAULT_MAX_TOKENS: u32 = 4096;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/anthropic")
}

fn blessing() -> bool {
    std::env::var_os("SWITCHYARD_BLESS").is_some()
}

#[allow(clippy::unwrap_used)]
fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[allow(clippy::unwrap_used)]
fn write(name: &str, bytes: &[u8]) {
    std::fs::write(fixture_dir().join(name), bytes).unwrap();
}

#[allow(clippy::unwrap_used)]
fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Drops what differs from run to run.
fn normalize(mut v: Value) -> Value {
    if let Value::Object(o) = &mut v {
        o.remove("created");
    }
    v
}

#[allow(clippy::unwrap_used)]
fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

/// Compares a JSON body with `expected` (a fixture name).
fn check_json(expected: &str, actual: &[u8]) {
    let got = parse(actual);
    if blessing() {
        write(expected, format!("{}\n", pretty(&got)).as_bytes());
        return;
    }
    let want = normalize(parse(&read(expected)));
    let got = normalize(got);
    assert_eq!(got, want, "{expected}: got\n{}", pretty(&got));
}

/// An SSE body split strictly as we emit it: `[event: NAME\n]data: DATA\n\n` blocks, the data as JSON
/// (`[DONE]` as a string).
fn sse_events(bytes: &[u8]) -> Vec<(Option<String>, Value)> {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "unterminated: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|block| {
            let (name, data) = match block.split_once('\n') {
                Some((first, rest)) => (first.strip_prefix("event: ").map(str::to_string), rest),
                None => (None, block),
            };
            let data = data
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event block {block:?}"));
            assert!(!data.contains('\n'), "one data line per event: {block:?}");
            let value = if data == "[DONE]" {
                json!("[DONE]")
            } else {
                normalize(parse(data.as_bytes()))
            };
            (name, value)
        })
        .collect()
}

fn check_sse(expected: &str, actual: &[u8]) {
    if blessing() {
        write(expected, actual);
        return;
    }
    let want = sse_events(&read(expected));
    let got = sse_events(actual);
    assert_eq!(
        got.len(),
        want.len(),
        "{expected}: event count; got\n{}",
        String::from_utf8_lossy(actual)
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{expected}: event {i}");
    }
}

/// What both stream translators share, so one harness drives either.
trait StreamTranslator {
    fn push_bytes(&mut self, bytes: &[u8]) -> Result<Bytes, TranslateError>;
    fn finished(&self) -> bool;
}

impl StreamTranslator for MessagesStreamToChat {
    fn push_bytes(&mut self, bytes: &[u8]) -> Result<Bytes, TranslateError> {
        self.push(bytes)
    }
    fn finished(&self) -> bool {
        self.is_finished()
    }
}

impl StreamTranslator for ChatStreamToMessages {
    fn push_bytes(&mut self, bytes: &[u8]) -> Result<Bytes, TranslateError> {
        self.push(bytes)
    }
    fn finished(&self) -> bool {
        self.is_finished()
    }
}

/// Feeds `input` in pieces of `piece` bytes; every push must return whole events only.
#[allow(clippy::unwrap_used)]
fn feed<T: StreamTranslator>(t: &mut T, input: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in input.chunks(piece.max(1)) {
        let bytes = t.push_bytes(chunk).unwrap();
        assert!(
            bytes.is_empty() || bytes.ends_with(b"\n\n"),
            "a partial event was emitted"
        );
        out.extend_from_slice(&bytes);
    }
    out
}

/// Translates `NAME.in.sse` whole, then in awkward pieces and with CRLF line ends: all must match the
/// golden `NAME.out.sse`. Returns the whole-input output.
fn check_stream<T: StreamTranslator>(name: &str, make: impl Fn() -> T) -> Vec<u8> {
    let input = read(&format!("{name}.in.sse"));
    let mut t = make();
    let whole = feed(&mut t, &input, input.len());
    assert!(t.finished(), "{name}: not finished");
    check_sse(&format!("{name}.out.sse"), &whole);
    let crlf = String::from_utf8_lossy(&input)
        .replace('\n', "\r\n")
        .into_bytes();
    for (variant, bytes) in [("LF", &input), ("CRLF", &crlf)] {
        for piece in [1, 2, 3, 7, 64, 1000] {
            let mut t = make();
            let out = feed(&mut t, bytes, piece);
            assert!(t.finished(), "{name} {variant} by {piece}: not finished");
            assert_eq!(
                sse_events(&out),
                sse_events(&whole),
                "{name} {variant} by {piece}"
            );
        }
    }
    whole
}

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
