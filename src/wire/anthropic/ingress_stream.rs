//! Ingress, streaming: OpenAI `chat.completion.chunk` events in, Anthropic Messages SSE events out.

use std::collections::HashSet;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

use super::ingress::{message_id, stop_reason};
use super::json::{count, parse_upstream, Obj};
use super::sse::{write_event, EventTranslator, SseEvent, SseParser};
use super::{StreamError, StreamUsage, TranslateError};

/// The content block being streamed; OpenAI has no block boundaries, so a block closes when the other
/// kind (or another tool call) starts, or at `finish_reason`.
#[derive(Debug)]
enum Open {
    Text,
    Tool { openai_index: u64, id: String },
}

/// Follows one OpenAI stream and re-emits it as Anthropic events: `message_start`, then per block
/// `content_block_start` / `content_block_delta` (`text_delta`, `input_json_delta`) / `content_block_stop`,
/// then at `[DONE]` `message_delta` (`stop_reason`, usage) and `message_stop`.
///
/// OpenAI reports usage only in the last chunk, so `message_start` carries zero input tokens and the real
/// counts arrive in `message_delta` (which current Anthropic SDKs read). An `{"error":...}` event becomes
/// an Anthropic `error` event and ends the stream.
#[derive(Debug)]
pub struct ChatStreamToMessages {
    parser: SseParser,
    model: String,
    started: bool,
    open: Option<Open>,
    /// Index of the next Anthropic content block.
    next_index: u64,
    /// OpenAI tool-call indexes whose block is closed: Anthropic blocks cannot be reopened.
    closed_tools: HashSet<u64>,
    stop_reason: Option<&'static str>,
    usage: Option<Obj>,
    finished: bool,
    error: Option<StreamError>,
}

/// Anthropic's error types; anything else is reported as `api_error`.
const ANTHROPIC_ERROR_TYPES: [&str; 9] = [
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
];

impl ChatStreamToMessages {
    /// `client_model` is the model named in `message_start`.
    pub fn new(client_model: &str) -> Self {
        ChatStreamToMessages {
            parser: SseParser::new(),
            model: client_model.to_string(),
            started: false,
            open: None,
            next_index: 0,
            closed_tools: HashSet::new(),
            stop_reason: None,
            usage: None,
            finished: false,
            error: None,
        }
    }

    /// Takes upstream bytes in any chunking; returns whole Anthropic events only (possibly none). Bytes
    /// after the end (`[DONE]` or an error) are ignored.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Bytes, TranslateError> {
        self.translate(bytes)
    }

    /// True once `[DONE]` was seen (and `message_stop` emitted), or an error event.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The error event that ended the stream, if one did: the stream failed although `is_finished`.
    pub fn upstream_error(&self) -> Option<&StreamError> {
        self.error.as_ref()
    }

    /// The usage the upstream reported (its last usage chunk), in OpenAI terms.
    pub fn usage(&self) -> Option<StreamUsage> {
        self.usage.as_ref().map(|u| StreamUsage {
            prompt_tokens: count(Some(u), "prompt_tokens"),
            completion_tokens: count(Some(u), "completion_tokens"),
        })
    }

    fn handle_event(&mut self, event: &SseEvent, out: &mut BytesMut) -> Result<(), TranslateError> {
        if event.data.trim() == "[DONE]" {
            self.finish(out);
            return Ok(());
        }
        let chunk = parse_upstream(event.data.as_bytes())?;
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            self.fail(err, out);
            return Ok(());
        }
        if let Some(Value::Object(u)) = chunk.get("usage") {
            self.usage = Some(u.clone());
        }
        if !self.started {
            self.start(chunk.get("id").and_then(Value::as_str), out);
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        // Only choice 0 is translated: Anthropic has one message per request.
        let choice = choices
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0);
        let Some(choice) = choice else {
            return Ok(());
        };
        if let Some(delta) = choice.get("delta").and_then(Value::as_object) {
            for key in ["content", "refusal"] {
                if let Some(text) = delta
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.text(text, out);
                }
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls.iter().filter_map(Value::as_object) {
                    self.tool_call(call, out)?;
                }
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason(Some(finish)));
            self.close(out);
        }
        Ok(())
    }

    fn start(&mut self, upstream_id: Option<&str>, out: &mut BytesMut) {
        self.started = true;
        let usage = anthropic_usage_so_far(self.usage.as_ref(), false);
        let message = json!({
            "type": "message_start",
            "message": {
                "id": message_id(upstream_id),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage,
            },
        });
        write_event(out, "message_start", &message.to_string());
    }

    fn open_block(&mut self, open: Open, block: Value, out: &mut BytesMut) {
        self.close(out);
        self.open = Some(open);
        let ev = json!({ "type": "content_block_start", "index": self.next_index, "content_block": block });
        write_event(out, "content_block_start", &ev.to_string());
    }

    fn delta(&self, delta: Value, out: &mut BytesMut) {
        let index = self.next_index;
        let ev = json!({ "type": "content_block_delta", "index": index, "delta": delta });
        write_event(out, "content_block_delta", &ev.to_string());
    }

    fn close(&mut self, out: &mut BytesMut) {
        let Some(open) = self.open.take() else { return };
        if let Open::Tool { openai_index, .. } = open {
            self.closed_tools.insert(openai_index);
        }
        let ev = json!({ "type": "content_block_stop", "index": self.next_index });
        write_event(out, "content_block_stop", &ev.to_string());
        self.next_index += 1;
    }

    fn text(&mut self, text: &str, out: &mut BytesMut) {
        if !matches!(self.open, Some(Open::Text)) {
            self.open_block(Open::Text, json!({ "type": "text", "text": "" }), out);
        }
        self.delta(json!({ "type": "text_delta", "text": text }), out);
    }

    fn tool_call(&mut self, call: &Obj, out: &mut BytesMut) -> Result<(), TranslateError> {
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let function = call.get("function").and_then(Value::as_object);
        let str_of = |k: &str| function.and_then(|f| f.get(k)).and_then(Value::as_str);
        let open_index = match &self.open {
            Some(Open::Tool {
                openai_index,
                id: open_id,
            }) => Some((*openai_index, open_id.as_str())),
            _ => None,
        };
        // OpenAI always sends `index`; a server that does not means the call being streamed.
        let index = call
            .get("index")
            .and_then(Value::as_u64)
            .or(open_index.map(|(i, _)| i))
            .unwrap_or(self.closed_tools.len() as u64);
        let continues =
            open_index.is_some_and(|(i, open_id)| i == index && id.is_none_or(|id| id == open_id));
        if !continues {
            if id.is_none() && self.closed_tools.contains(&index) {
                return Err(TranslateError::BadUpstream(format!(
                    "tool call {index} resumed after its block ended"
                )));
            }
            let name = str_of("name").filter(|n| !n.is_empty()).ok_or_else(|| {
                TranslateError::BadUpstream(format!("tool call {index} started without a name"))
            })?;
            let id = id.map_or_else(
                || format!("toolu_{}", uuid::Uuid::new_v4().simple()),
                str::to_string,
            );
            let block = json!({ "type": "tool_use", "id": id, "name": name, "input": {} });
            self.open_block(
                Open::Tool {
                    openai_index: index,
                    id,
                },
                block,
                out,
            );
        }
        if let Some(args) = str_of("arguments").filter(|a| !a.is_empty()) {
            self.delta(
                json!({ "type": "input_json_delta", "partial_json": args }),
                out,
            );
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.start(None, out);
        }
        self.close(out);
        let ev = json!({
            "type": "message_delta",
            "delta": { "stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null },
            "usage": anthropic_usage_so_far(self.usage.as_ref(), true),
        });
        write_event(out, "message_delta", &ev.to_string());
        write_event(
            out,
            "message_stop",
            &json!({ "type": "message_stop" }).to_string(),
        );
        self.finished = true;
    }

    fn fail(&mut self, err: &Value, out: &mut BytesMut) {
        let str_of = |k: &str| err.get(k).and_then(Value::as_str);
        let kind = str_of("type")
            .filter(|t| ANTHROPIC_ERROR_TYPES.contains(t))
            .unwrap_or("api_error");
        let e = StreamError {
            kind: kind.to_string(),
            message: str_of("message")
                .unwrap_or("the upstream reported an error")
                .to_string(),
        };
        let ev = json!({ "type": "error", "error": { "type": e.kind, "message": e.message } });
        write_event(out, "error", &ev.to_string());
        self.error = Some(e);
        self.finished = true;
    }
}

/// Usage in Anthropic terms; `message_start` gets no output count yet.
fn anthropic_usage_so_far(usage: Option<&Obj>, with_output: bool) -> Value {
    let mut u = super::ingress::anthropic_usage(usage);
    if !with_output {
        u["output_tokens"] = json!(0);
    }
    u
}

impl EventTranslator for ChatStreamToMessages {
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
