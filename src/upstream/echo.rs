//! `provider: echo`, the built-in demo upstream: it answers the OpenAI API in-process, with no network
//! and no key, so that a fresh checkout answers at once. It is a provider like any other on the
//! forward path (picked by the router, classified, metered, recorded in usage); only the send is
//! local. For trying the proxy and for tests: it never stands in for a real model.
//!
//! What it answers, deterministically:
//! * `/chat/completions`: `echo: ` and the first 200 characters of the last user message (its text
//!   parts, for a list of parts); streamed as one chunk a word, with the usage chunk when the body asks
//!   for `stream_options.include_usage` (the forwarder asks, and drops it for clients that did not).
//! * `/completions`: the same from `prompt` (the first prompt of a list).
//! * `/responses`: the same from the last user item of `input` (or `input` itself), as a `response`
//!   object, or streamed as `response.created`, a `response.output_text.delta` a word and
//!   `response.completed` with usage.
//! * `/embeddings`: one unit vector per input, from SHA-256 of its text (`dimensions`, default 16;
//!   `encoding_format: base64` as little-endian f32, as the OpenAI SDKs ask by default).
//!
//! Tokens are counted as whitespace-separated words: the prompt's are the words of every message's
//! text (of every input, for embeddings), the completion's the words of the answer. Honest, and the
//! same on every run, not a tokenizer's count.

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::client::UpstreamResponse;

/// Characters of the user's text repeated in the answer.
pub const ECHO_CHARS: usize = 200;
/// Embedding length when the request gives no `dimensions`.
pub const DEFAULT_DIMENSIONS: usize = 16;
/// Largest `dimensions` honoured (OpenAI's largest model has 3072).
const MAX_DIMENSIONS: usize = 4096;

/// The echo upstream's answer to a POST of `body` to `path` (an OpenAI API path).
pub fn answer(path: &str, body: &[u8]) -> UpstreamResponse {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return error(400, "the request body is not a JSON object"),
    };
    let model = request["model"].as_str().unwrap_or("echo").to_owned();
    let stream = request["stream"].as_bool().unwrap_or(false);
    let usage_chunk = request["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    match path {
        "/chat/completions" => {
            let messages = request["messages"].as_array().map(Vec::as_slice);
            let messages = messages.unwrap_or_default();
            let prompt: Vec<String> = messages.iter().map(|m| text_of(&m["content"])).collect();
            let last_user = messages
                .iter()
                .rev()
                .find(|m| m["role"] == "user")
                .map(|m| text_of(&m["content"]))
                .unwrap_or_default();
            let reply = Reply::new(&model, &last_user, &prompt);
            match stream {
                false => json_response(&reply.chat()),
                true => sse_response(reply.chat_chunks(usage_chunk)),
            }
        }
        "/completions" => {
            let prompt = match &request["prompt"] {
                Value::String(s) => s.clone(),
                Value::Array(a) => a.first().and_then(Value::as_str).unwrap_or("").to_owned(),
                _ => String::new(),
            };
            let reply = Reply::new(&model, &prompt, std::slice::from_ref(&prompt));
            match stream {
                false => json_response(&reply.completion()),
                true => sse_response(reply.completion_chunks(usage_chunk)),
            }
        }
        "/responses" => {
            let (last_user, prompt) = responses_input(&request);
            let reply = Reply::new(&model, &last_user, &prompt);
            match stream {
                false => json_response(&reply.response("completed")),
                true => events_response(reply.response_events()),
            }
        }
        "/embeddings" => embeddings(&request, &model),
        other => error(404, &format!("the echo upstream has no {other}")),
    }
}

/// The text of a message's `content`: a string, or the `text` of its parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The Responses API's `input` (a string, or items with a `role` and `content`) and `instructions`:
/// the last user text, and every text (for the prompt's token count).
fn responses_input(request: &Value) -> (String, Vec<String>) {
    let mut texts: Vec<String> = request["instructions"]
        .as_str()
        .map(str::to_owned)
        .into_iter()
        .collect();
    let mut last_user = String::new();
    match &request["input"] {
        Value::String(s) => {
            texts.push(s.clone());
            last_user = s.clone();
        }
        Value::Array(items) => {
            for item in items {
                let text = text_of(&item["content"]);
                if item["role"] == "user" {
                    last_user = text.clone();
                }
                texts.push(text);
            }
        }
        _ => {}
    }
    (last_user, texts)
}

/// Whitespace-separated words: the echo upstream's token count.
pub fn words(text: &str) -> u64 {
    u64::try_from(text.split_whitespace().count()).unwrap_or(u64::MAX)
}

/// One answer, before it is shaped for an endpoint.
struct Reply {
    model: String,
    text: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    created: u64,
}

impl Reply {
    fn new(model: &str, source: &str, prompt: &[String]) -> Reply {
        let text = format!(
            "echo: {}",
            source.chars().take(ECHO_CHARS).collect::<String>()
        );
        Reply {
            model: model.to_owned(),
            completion_tokens: words(&text),
            prompt_tokens: prompt.iter().map(|p| words(p)).sum(),
            text,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    fn chat(&self) -> Value {
        json!({
            "id": "chatcmpl-echo",
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text},
                "finish_reason": "stop",
            }],
            "usage": self.usage(),
        })
    }

    /// The answer a word a chunk (each with its leading space), as a real stream arrives.
    fn pieces(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, word) in self.text.split(' ').enumerate() {
            out.push(if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            });
        }
        out
    }

    fn chat_chunks(&self, usage_chunk: bool) -> Vec<Value> {
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": "chatcmpl-echo",
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        };
        let mut out = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        for piece in self.pieces() {
            out.push(chunk(json!({"content": piece}), Value::Null));
        }
        out.push(chunk(json!({}), json!("stop")));
        if usage_chunk {
            out.push(json!({
                "id": "chatcmpl-echo",
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage(),
            }));
        }
        out
    }

    /// A Responses API `response` object; usage only once it is complete.
    fn response(&self, status: &str) -> Value {
        let done = status == "completed";
        json!({
            "id": "resp_echo",
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": if done {
                json!([{
                    "type": "message",
                    "id": "msg_echo",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": self.text, "annotations": []}],
                }])
            } else {
                json!([])
            },
            "usage": if done {
                json!({
                    "input_tokens": self.prompt_tokens,
                    "output_tokens": self.completion_tokens,
                    "total_tokens": self.prompt_tokens + self.completion_tokens,
                })
            } else {
                Value::Null
            },
        })
    }

    /// A Responses stream: `response.created`, a text delta a word, `response.completed` with usage.
    fn response_events(&self) -> Vec<(&'static str, Value)> {
        let mut out = vec![(
            "response.created",
            json!({"type": "response.created", "response": self.response("in_progress")}),
        )];
        for piece in self.pieces() {
            out.push((
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "item_id": "msg_echo",
                    "output_index": 0, "content_index": 0, "delta": piece}),
            ));
        }
        out.push((
            "response.output_text.done",
            json!({"type": "response.output_text.done", "item_id": "msg_echo",
                "output_index": 0, "content_index": 0, "text": self.text}),
        ));
        out.push((
            "response.completed",
            json!({"type": "response.completed", "response": self.response("completed")}),
        ));
        out
    }

    fn completion(&self) -> Value {
        json!({
            "id": "cmpl-echo",
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "text": self.text, "logprobs": null, "finish_reason": "stop"}],
            "usage": self.usage(),
        })
    }

    fn completion_chunks(&self, usage_chunk: bool) -> Vec<Value> {
        let chunk = |text: &str, finish: Value| {
            json!({
                "id": "cmpl-echo",
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            })
        };
        let mut out: Vec<Value> = self
            .pieces()
            .iter()
            .map(|p| chunk(p, Value::Null))
            .collect();
        out.push(chunk("", json!("stop")));
        if usage_chunk {
            out.push(json!({
                "id": "cmpl-echo",
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage(),
            }));
        }
        out
    }
}

fn embeddings(request: &Value, model: &str) -> UpstreamResponse {
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        // Token arrays: embedded by their text form, counted a token a number.
        Value::Array(a) => a.iter().map(Value::to_string).collect(),
        _ => return error(400, "input must be a string or a list"),
    };
    let dimensions = match request.get("dimensions") {
        None => DEFAULT_DIMENSIONS,
        Some(d) => match d.as_u64().and_then(|d| usize::try_from(d).ok()) {
            Some(d) if (1..=MAX_DIMENSIONS).contains(&d) => d,
            _ => {
                return error(
                    400,
                    &format!("dimensions must be between 1 and {MAX_DIMENSIONS}"),
                )
            }
        },
    };
    let base64 = request["encoding_format"] == "base64";
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = vector(text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = inputs
        .iter()
        .map(|t| words(&t.replace(['[', ']', ','], " ")))
        .sum();
    json_response(&json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// A unit vector of `dimensions` from `text`: the same text always gives the same vector.
pub fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(dimensions);
    let mut block = 0u32;
    while out.len() < dimensions {
        let digest = Sha256::new()
            .chain_update(block.to_le_bytes())
            .chain_update(text.as_bytes())
            .finalize();
        for pair in digest.chunks_exact(2) {
            if out.len() == dimensions {
                break;
            }
            let n = u16::from_le_bytes([pair[0], pair[1]]);
            out.push(f32::from(n) / 32767.5 - 1.0);
        }
        block += 1;
    }
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut out {
            *x /= norm;
        }
    }
    out
}

fn json_response(body: &Value) -> UpstreamResponse {
    respond(200, "application/json", vec![Bytes::from(body.to_string())])
}

/// An SSE stream, one event a chunk, ending `data: [DONE]`.
fn sse_response(events: Vec<Value>) -> UpstreamResponse {
    let mut chunks: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\n\n")))
        .collect();
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    respond(200, "text/event-stream", chunks)
}

/// A stream of named events (the Responses API's form), with no `[DONE]`.
fn events_response(events: Vec<(&'static str, Value)>) -> UpstreamResponse {
    let chunks: Vec<Bytes> = events
        .iter()
        .map(|(name, e)| Bytes::from(format!("event: {name}\ndata: {e}\n\n")))
        .collect();
    respond(200, "text/event-stream", chunks)
}

/// An OpenAI-shaped error (the echo upstream's only refusals are the client's fault).
fn error(status: u16, message: &str) -> UpstreamResponse {
    let body = json!({"error": {"message": message, "type": "invalid_request_error",
        "param": null, "code": null}});
    respond(
        status,
        "application/json",
        vec![Bytes::from(body.to_string())],
    )
}

fn respond(status: u16, content_type: &'static str, frames: Vec<Bytes>) -> UpstreamResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    UpstreamResponse::local(status, content_type, frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(resp: UpstreamResponse) -> (u16, String) {
        let status = resp.status().as_u16();
        let whole = resp
            .read_whole(usize::MAX, std::time::Duration::from_secs(1))
            .await
            .unwrap();
        (status, String::from_utf8(whole.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn chat_echoes_the_last_user_message_with_word_counts() {
        let req = br#"{"model":"demo","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":"first"},{"role":"assistant","content":"x"},
            {"role":"user","content":[{"type":"text","text":"hello there"}]}]}"#;
        let (status, text) = body(answer("/chat/completions", req)).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "echo: hello there");
        assert_eq!(v["model"], "demo");
        // be brief (2) + first (1) + x (1) + hello there (2); "echo: hello there" is 3 words.
        assert_eq!(v["usage"]["prompt_tokens"], 6);
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["usage"]["total_tokens"], 9);
    }

    #[tokio::test]
    async fn a_long_message_is_cut_at_200_characters() {
        let long = "é".repeat(300);
        let req = json!({"model":"m","messages":[{"role":"user","content":long}]}).to_string();
        let (_, text) = body(answer("/chat/completions", req.as_bytes())).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content.chars().count(), "echo: ".len() + ECHO_CHARS);
    }

    #[tokio::test]
    async fn a_stream_is_a_chunk_a_word_then_usage_when_asked_then_done() {
        let req = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},
            "messages":[{"role":"user","content":"one two"}]}"#;
        let (status, text) = body(answer("/chat/completions", req)).await;
        assert_eq!(status, 200);
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap())
            .collect();
        assert_eq!(events.last(), Some(&"[DONE]"));
        let content: String = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str::<Value>(e).unwrap())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(content, "echo: one two");
        let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        assert_eq!(usage["choices"], json!([]));
        let without = br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a"}]}"#;
        let (_, text) = body(answer("/chat/completions", without)).await;
        assert!(!text.contains("\"usage\""), "{text}");
    }

    #[tokio::test]
    async fn responses_echo_the_last_user_item_whole_and_streamed() {
        let req = br#"{"model":"m","instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"hi there"}]}]}"#;
        let (_, text) = body(answer("/responses", req)).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["output"][0]["content"][0]["text"], "echo: hi there");
        assert_eq!(v["usage"]["input_tokens"], 4);
        assert_eq!(v["usage"]["output_tokens"], 3);
        let req = br#"{"model":"m","stream":true,"input":"hello"}"#;
        let (_, text) = body(answer("/responses", req)).await;
        assert!(text.starts_with("event: response.created\n"), "{text}");
        assert!(text.contains("\"delta\":\" hello\""), "{text}");
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        assert!(last.starts_with("event: response.completed\n"), "{last}");
        assert!(last.contains("\"output_tokens\":2"), "{last}");
    }

    #[tokio::test]
    async fn completions_echo_the_prompt() {
        let (_, text) = body(answer(
            "/completions",
            br#"{"model":"m","prompt":"say this"}"#,
        ))
        .await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["choices"][0]["text"], "echo: say this");
        assert_eq!(v["usage"]["prompt_tokens"], 2);
    }

    #[tokio::test]
    async fn embeddings_are_deterministic_unit_vectors_also_in_base64() {
        let req = br#"{"model":"m","input":["a b","c"],"dimensions":5}"#;
        let (_, text) = body(answer("/embeddings", req)).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        let first: Vec<f32> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
        assert_eq!(first, vector("a b", 5));
        assert_eq!(first.len(), 5);
        let norm: f32 = first.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_ne!(vector("a b", 5), vector("c", 5));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        let req = br#"{"model":"m","input":"a b","encoding_format":"base64"}"#;
        let (_, text) = body(answer("/embeddings", req)).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(floats, vector("a b", DEFAULT_DIMENSIONS));
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_the_clients_400() {
        let (status, text) = body(answer("/chat/completions", b"nope")).await;
        assert_eq!(status, 400);
        assert!(text.contains("invalid_request_error"), "{text}");
    }
}
