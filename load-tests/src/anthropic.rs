//! The `Echo` behaviour for `POST /v1/messages`: Anthropic's Messages API shapes, streaming included,
//! computed deterministically from the request like the OpenAI echo.

use serde_json::{json, Value};

use crate::openai::{reply_pieces, reply_text, EchoCtx};

/// Words in every text part of `system` and `messages` (min 1): the mock's input token count.
fn input_tokens(req: &Value) -> u64 {
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(parts) => parts
                .iter()
                .map(|p| p.get("text").map(words).unwrap_or(0))
                .sum(),
            _ => 0,
        }
    }
    let system = req.get("system").map(words).unwrap_or(0);
    let msgs: u64 = req
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .map(|m| m.get("content").map(words).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    (system + msgs).max(1)
}

/// `POST /v1/messages/count_tokens`: the same count a message would report as its input.
pub(crate) fn count_tokens(req: &Value) -> Value {
    json!({ "input_tokens": input_tokens(req) })
}

fn model(req: &Value) -> Value {
    req.get("model")
        .cloned()
        .unwrap_or_else(|| json!("mock-model"))
}

/// A complete Messages API answer.
pub(crate) fn message(req: &Value, ctx: &EchoCtx<'_>) -> Value {
    json!({
        "id": format!("msg_mock_{}", ctx.seq),
        "type": "message",
        "role": "assistant",
        "model": model(req),
        "content": [{"type": "text", "text": reply_text(ctx.name)}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": input_tokens(req), "output_tokens": reply_pieces(ctx.name).len() as u64}
    })
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The SSE events of a streamed Messages API answer, as Anthropic sends them (ping included).
pub(crate) fn message_stream(req: &Value, ctx: &EchoCtx<'_>) -> Vec<String> {
    let pieces = reply_pieces(ctx.name);
    let mut out = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": format!("msg_mock_{}", ctx.seq), "type": "message", "role": "assistant",
                "model": model(req), "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens(req), "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for p in &pieces {
        out.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    out.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": pieces.len() as u64}}),
    ));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}
