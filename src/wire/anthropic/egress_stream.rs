//! Egress, streaming: Anthropic Messages SSE events in, OpenAI `chat.completion.chunk` events out.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

use super::egress::{chat_id, finish_reason, openai_usage, prompt_tokens, PromptTokens};
use super::json::{count, field, parse_upstream, Obj};
use super::sse::{write_data, EventTranslator, SseEvent, SseParser};
use super::{unix_now, StreamError, StreamUsage, TranslateError};

/// Follows one Anthropic stream and re-emits it as OpenAI chunks.
///
/// * `message_start` -> a chunk with `delta: {role: "assistant", content: ""}`.
/// * text blocks -> `delta.content`; `tool_use` blocks -> `delta.tool_calls` (`index` counts tool blocks
///   from 0; the first chunk carries id, type and name, later ones `function.arguments` pieces).
/// * `message_delta` -> a chunk with `finish_reason`; `message_stop` -> the usage chunk (`choices: []`)
///   when `include_usage`, then `data: [DONE]`.
/// * `ping`, thinking and citation deltas, and unknown event types are ignored.
/// * `error` -> `data: {"error":{...}}` and the end, without `[DONE]` (see [`Self::upstream_error`]).
#[derive(Debug)]
pub struct MessagesStreamToChat {
    parser: SseParser,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Anthropic content-block index -> OpenAI tool-call index.
    tool_index: HashMap<u64, usize>,
    role_sent: bool,
    finish_sent: bool,
    prompt: PromptTokens,
    completion_tokens: u64,
    usage_seen: bool,
    finished: bool,
    error: Option<StreamError>,
}

impl MessagesStreamToChat {
    /// `client_model` is the name echoed in every chunk; `include_usage` mirrors the client's
    /// `stream_options.include_usage`.
    pub fn new(client_model: &str, include_usage: bool) -> Self {
        MessagesStreamToChat {
            parser: SseParser::new(),
            id: chat_id(None),
            created: unix_now(),
            model: client_model.to_string(),
            include_usage,
            tool_index: HashMap::new(),
            role_sent: false,
            finish_sent: false,
            prompt: PromptTokens::default(),
            completion_tokens: 0,
            usage_seen: false,
            finished: false,
            error: None,
        }
    }

    /// Takes upstream bytes in any chunking; returns whole OpenAI events only (possibly none). Bytes after
    /// the end (`message_stop` or `error`) are ignored.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Bytes, TranslateError> {
        self.translate(bytes)
    }

    /// True once `message_stop` (and `[DONE]` was emitted) or an `error` event was seen.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The error event that ended the stream, if one did: the stream failed although `is_finished`.
    pub fn upstream_error(&self) -> Option<&StreamError> {
        self.error.as_ref()
    }

    /// Token counts reported so far (final after `message_stop`); `None` before any were seen.
    pub fn usage(&self) -> Option<StreamUsage> {
        self.usage_seen.then_some(StreamUsage {
            prompt_tokens: self.prompt.prompt,
            completion_tokens: self.completion_tokens,
        })
    }

    fn handle_event(&mut self, event: &SseEvent, out: &mut BytesMut) -> Result<(), TranslateError> {
        let data = parse_upstream(event.data.as_bytes())?;
        // The payload's `type` is authoritative; the `event:` line is a fallback.
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => {
                let message = data.get("message").and_then(Value::as_object);
                if let Some(id) = message.and_then(|m| m.get("id")).and_then(Value::as_str) {
                    self.id = chat_id(Some(id));
                }
                self.read_usage(
                    message
                        .and_then(|m| m.get("usage"))
                        .and_then(Value::as_object),
                );
                self.ensure_role(out);
            }
            "content_block_start" => {
                let block = data.get("content_block").and_then(Value::as_object);
                match block.and_then(|b| b.get("type")).and_then(Value::as_str) {
                    Some("text") => {
                        let text = block.and_then(|b| b.get("text")).and_then(Value::as_str);
                        if let Some(text) = text.filter(|t| !t.is_empty()) {
                            self.emit_delta(out, json!({ "content": text }), None);
                        }
                    }
                    Some("tool_use") => {
                        let block =
                            block.ok_or_else(|| bad("content_block_start without a block"))?;
                        let index = block_index(&data)?;
                        let n = self.tool_index.len();
                        self.tool_index.insert(index, n);
                        let str_of = |k: &str| block.get(k).and_then(Value::as_str).unwrap_or("");
                        let call = json!({
                            "index": n,
                            "id": str_of("id"),
                            "type": "function",
                            "function": { "name": str_of("name"), "arguments": "" },
                        });
                        self.emit_delta(out, json!({ "tool_calls": [call] }), None);
                    }
                    _ => {} // thinking, redacted_thinking, server tool blocks: not for OpenAI clients.
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta").and_then(Value::as_object);
                let str_of = |k: &str| delta.and_then(|d| d.get(k)).and_then(Value::as_str);
                match str_of("type") {
                    Some("text_delta") => {
                        if let Some(text) = str_of("text").filter(|t| !t.is_empty()) {
                            self.emit_delta(out, json!({ "content": text }), None);
                        }
                    }
                    Some("input_json_delta") => {
                        let index = block_index(&data)?;
                        let n = *self.tool_index.get(&index).ok_or_else(|| {
                            bad("input_json_delta for a block that is not a tool_use")
                        })?;
                        if let Some(part) = str_of("partial_json").filter(|p| !p.is_empty()) {
                            let call = json!({ "index": n, "function": { "arguments": part } });
                            self.emit_delta(out, json!({ "tool_calls": [call] }), None);
                        }
                    }
                    _ => {} // thinking_delta, signature_delta, citations_delta.
                }
            }
            "message_delta" => {
                self.read_usage(data.get("usage").and_then(Value::as_object));
                let stop = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                if stop.is_some() {
                    self.emit_delta(out, json!({}), Some(finish_reason(stop)));
                }
            }
            "message_stop" => {
                if !self.finish_sent {
                    self.emit_delta(out, json!({}), Some("stop"));
                }
                if self.include_usage {
                    let mut chunk = self.chunk_head();
                    chunk.insert("choices".into(), json!([]));
                    chunk.insert(
                        "usage".into(),
                        openai_usage(self.prompt, self.completion_tokens),
                    );
                    write_data(out, &Value::Object(chunk).to_string());
                }
                write_data(out, "[DONE]");
                self.finished = true;
            }
            "error" => {
                let err = data.get("error").and_then(Value::as_object);
                let str_of = |k: &str, default: &str| {
                    err.and_then(|e| e.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or(default)
                        .to_string()
                };
                let e = StreamError {
                    kind: str_of("type", "api_error"),
                    message: str_of("message", "the upstream reported an error"),
                };
                let body = json!({
                    "error": { "message": e.message, "type": e.kind, "param": null, "code": null },
                });
                write_data(out, &body.to_string());
                self.error = Some(e);
                self.finished = true;
            }
            _ => {} // ping, and event types added after this was written.
        }
        Ok(())
    }

    /// Anthropic reports input tokens at `message_start` and the running output count at `message_delta`;
    /// newer API versions repeat the input counts there too.
    fn read_usage(&mut self, usage: Option<&Obj>) {
        let Some(u) = usage else { return };
        self.usage_seen = true;
        if [
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ]
        .iter()
        .any(|k| field(u, k).is_some())
        {
            self.prompt = prompt_tokens(Some(u));
        }
        if field(u, "output_tokens").is_some() {
            self.completion_tokens = count(Some(u), "output_tokens");
        }
    }

    fn chunk_head(&self) -> Obj {
        let mut chunk = Obj::new();
        chunk.insert("id".into(), json!(self.id));
        chunk.insert("object".into(), json!("chat.completion.chunk"));
        chunk.insert("created".into(), json!(self.created));
        chunk.insert("model".into(), json!(self.model));
        chunk
    }

    fn ensure_role(&mut self, out: &mut BytesMut) {
        if !self.role_sent {
            self.role_sent = true;
            self.write_chunk(out, json!({ "role": "assistant", "content": "" }), None);
        }
    }

    fn emit_delta(&mut self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        self.ensure_role(out);
        if finish.is_some() {
            self.finish_sent = true;
        }
        self.write_chunk(out, delta, finish);
    }

    fn write_chunk(&self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        let mut chunk = self.chunk_head();
        chunk.insert(
            "choices".into(),
            json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]),
        );
        if self.include_usage {
            // As OpenAI does: every chunk carries `usage`, null until the last one.
            chunk.insert("usage".into(), Value::Null);
        }
        write_data(out, &Value::Object(chunk).to_string());
    }
}

fn bad(msg: &str) -> TranslateError {
    TranslateError::BadUpstream(msg.to_string())
}

fn block_index(data: &Obj) -> Result<u64, TranslateError> {
    data.get("index")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("a content block event without an index"))
}

impl EventTranslator for MessagesStreamToChat {
    fn parser(&mut self) -> &mut SseParser {
        &mut self.parser
    }

    fn finished(&self) -> bool {
        self.finished
    }

    fn handle(&mut self, event: &SseEvent, out: &mut BytesMut) -> Result<(), TranslateError> {
        self.handle_event(event, out)
    }
}
