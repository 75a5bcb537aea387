//! The `Echo` behaviour for `POST /v1/responses`: OpenAI's Responses API, JSON and the real stream
//! events (`response.created` ... `response.completed`), computed deterministically from the request.

use serde_json::{json, Value};

use crate::openai::{reply_pieces, reply_text, EchoCtx};

/// Words in every text part of `instructions` and `input` (min 1): the mock's input token count.
fn input_tokens(req: &Value) -> u64 {
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(items) => items.iter().map(words).sum(),
            Value::Object(o) => ["text", "content"]
                .iter()
                .filter_map(|k| o.get(*k))
                .map(words)
                .sum(),
            _ => 0,
        }
    }
    let n =
        req.get("instructions").map(words).unwrap_or(0) + req.get("input").map(words).unwrap_or(0);
    n.max(1)
}

/// This mock's id for its `seq`-th answer: `resp_<name>_<seq>`, so ids of two mocks never collide and
/// each mock knows its own (`stored`).
fn response_id(ctx: &EchoCtx<'_>) -> String {
    format!("resp_{}_{}", ctx.name, ctx.seq)
}

/// `GET`/`DELETE /responses/{id}` and `GET /responses/{id}/input_items`, as OpenAI answers them for
/// a stored response: answered for ids this mock made (by their prefix), 404 for any other. `None`:
/// not such a path.
pub(crate) fn stored(method: &str, path: &str, ctx: &EchoCtx<'_>) -> Option<(u16, Value)> {
    let path = path.split('?').next().unwrap_or_default();
    let rest = path
        .strip_prefix("/v1")
        .unwrap_or(path)
        .strip_prefix("/responses/")?;
    let (id, items) = match rest.strip_suffix("/input_items") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    if id.is_empty() || id.contains('/') {
        return None;
    }
    if !id.starts_with(&format!("resp_{}_", ctx.name)) {
        let message = format!("Response with id '{id}' not found.");
        let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
        return Some((404, body));
    }
    let body = match (method, items) {
        ("GET", false) => {
            let mut r = response(&json!({}), ctx);
            r["id"] = json!(id);
            r
        }
        ("DELETE", false) => json!({"id": id, "object": "response", "deleted": true}),
        ("GET", true) => json!({
            "object": "list", "has_more": false, "first_id": null, "last_id": null,
            "data": [{"type": "message", "id": format!("msg_{id}_in"), "role": "user",
                      "content": [{"type": "input_text", "text": "stored input"}]}],
        }),
        _ => return None,
    };
    Some((200, body))
}

/// The whole answer (`status: completed`), with `usage` in the Responses API's words.
pub(crate) fn response(req: &Value, ctx: &EchoCtx<'_>) -> Value {
    let output_tokens = reply_pieces(ctx.name).len() as u64;
    let input = input_tokens(req);
    json!({
        "id": response_id(ctx),
        "object": "response",
        "created_at": ctx.created,
        "status": "completed",
        "model": req.get("model").cloned().unwrap_or(json!("mock-model")),
        "output": [{
            "type": "message", "id": format!("msg_mock{}", ctx.seq), "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": reply_text(ctx.name), "annotations": []}],
        }],
        "usage": {
            "input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output_tokens,
        },
    })
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The SSE events of a streamed answer, as OpenAI sends them (no `[DONE]`: the stream ends after
/// `response.completed`).
pub(crate) fn response_stream(req: &Value, ctx: &EchoCtx<'_>) -> Vec<String> {
    let done = response(req, ctx);
    let mut started = done.clone();
    started["status"] = json!("in_progress");
    started["output"] = json!([]);
    started["usage"] = Value::Null;
    let item_id = format!("msg_mock{}", ctx.seq);
    let mut seq = 0u64;
    let mut next = || {
        seq += 1;
        seq
    };
    let mut events = vec![
        event(
            "response.created",
            json!({"type": "response.created", "sequence_number": next(), "response": started}),
        ),
        event(
            "response.in_progress",
            json!({"type": "response.in_progress", "sequence_number": next(), "response": started}),
        ),
        event(
            "response.output_item.added",
            json!({"type": "response.output_item.added", "sequence_number": next(), "output_index": 0,
            "item": {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}}),
        ),
        event(
            "response.content_part.added",
            json!({"type": "response.content_part.added", "sequence_number": next(), "item_id": item_id,
            "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ];
    for piece in reply_pieces(ctx.name) {
        events.push(event(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "sequence_number": next(),
            "item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece}),
        ));
    }
    let text = reply_text(ctx.name);
    events.push(event(
        "response.output_text.done",
        json!({"type": "response.output_text.done", "sequence_number": next(),
        "item_id": item_id, "output_index": 0, "content_index": 0, "text": text}),
    ));
    events.push(event(
        "response.output_item.done",
        json!({"type": "response.output_item.done", "sequence_number": next(),
        "output_index": 0, "item": done["output"][0]}),
    ));
    events.push(event(
        "response.completed",
        json!({"type": "response.completed", "sequence_number": next(), "response": done}),
    ));
    events
}
