//! The `Echo` behaviour: OpenAI's response shapes for chat, completions, embeddings and models, streaming
//! included, computed deterministically from the request so tests can assert on them.

use serde_json::{json, Value};

use crate::reply::openai_error;

/// What the echo decided to send.
#[derive(Debug)]
pub(crate) enum Response {
    /// A complete JSON response.
    Fixed { status: u16, body: String },
    /// A `text/event-stream` body; each entry is one whole event (`data: ...\n\n`), sent as its own chunk.
    Stream { events: Vec<String> },
}

/// Everything the echo needs besides the request.
pub(crate) struct EchoCtx<'a> {
    /// The mock's name, which appears in every reply text.
    pub name: &'a str,
    /// A per-mock sequence number for ids (`chatcmpl-mock-N`).
    pub seq: u64,
    /// Unix seconds for `created`.
    pub created: u64,
    /// What `GET /v1/models` lists.
    pub models: &'a [String],
}

/// Number of content chunks a stream carries, and so `usage.completion_tokens`, for a one-word name.
const MIN_PIECES: usize = 5;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Models,
    Model,
    /// Anthropic's Messages API.
    Messages,
    /// Anthropic's token counting.
    CountTokens,
    /// OpenAI's Responses API.
    Responses,
}

fn route(method: &str, path: &str) -> Option<Endpoint> {
    let path = path.split('?').next().unwrap_or_default();
    // Accept both `/v1/...` (the base URL we hand out) and a bare `/...` (a base URL configured without /v1).
    let path = path.strip_prefix("/v1").unwrap_or(path);
    match (method, path) {
        ("POST", "/chat/completions") => Some(Endpoint::Chat),
        ("POST", "/completions") => Some(Endpoint::Completions),
        ("POST", "/embeddings") => Some(Endpoint::Embeddings),
        ("POST", "/messages") => Some(Endpoint::Messages),
        ("POST", "/messages/count_tokens") => Some(Endpoint::CountTokens),
        ("POST", "/responses") => Some(Endpoint::Responses),
        ("GET", "/models") => Some(Endpoint::Models),
        ("GET", p) if p.starts_with("/models/") && p.len() > "/models/".len() => {
            Some(Endpoint::Model)
        }
        _ => None,
    }
}

/// Answers a request the way OpenAI would.
pub(crate) fn echo(method: &str, path: &str, body: &[u8], ctx: &EchoCtx<'_>) -> Response {
    if let Some((status, body)) = crate::responses::stored(method, path, ctx) {
        return fixed(status, body);
    }
    let Some(endpoint) = route(method, path) else {
        return not_found(method, path);
    };
    match endpoint {
        Endpoint::Models => {
            let data: Vec<Value> = ctx.models.iter().map(|id| model_object(id)).collect();
            return fixed(200, json!({"object": "list", "data": data}));
        }
        Endpoint::Model => {
            let path = path.split('?').next().unwrap_or_default();
            let id = path
                .split_once("/models/")
                .map(|(_, id)| id)
                .unwrap_or_default();
            if ctx.models.iter().any(|m| m == id) {
                return fixed(200, model_object(id));
            }
            return Response::Fixed {
                status: 404,
                body: openai_error(
                    &format!("The model '{id}' does not exist"),
                    "invalid_request_error",
                    Some("model"),
                    Some("model_not_found"),
                ),
            };
        }
        Endpoint::Chat
        | Endpoint::Completions
        | Endpoint::Embeddings
        | Endpoint::Messages
        | Endpoint::CountTokens
        | Endpoint::Responses => {}
    }
    let req = match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return bad_json(),
    };
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    match endpoint {
        Endpoint::Chat if stream => Response::Stream {
            events: chat_stream(&req, ctx),
        },
        Endpoint::Chat => fixed(200, chat_completion(&req, ctx)),
        Endpoint::Completions if stream => Response::Stream {
            events: completion_stream(&req, ctx),
        },
        Endpoint::Completions => fixed(200, completion(&req, ctx)),
        Endpoint::Messages if stream => Response::Stream {
            events: crate::anthropic::message_stream(&req, ctx),
        },
        Endpoint::Messages => fixed(200, crate::anthropic::message(&req, ctx)),
        Endpoint::CountTokens => fixed(200, crate::anthropic::count_tokens(&req)),
        Endpoint::Responses if stream => Response::Stream {
            events: crate::responses::response_stream(&req, ctx),
        },
        Endpoint::Responses => fixed(200, crate::responses::response(&req, ctx)),
        _ => fixed(200, embeddings(&req)),
    }
}

/// The same answer with every trace of usage removed: the `usage` key of a body or event (and of an
/// Anthropic `message`), and the OpenAI usage chunk (`choices: []`) altogether.
pub(crate) fn without_usage(resp: Response) -> Response {
    fn strip(v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.remove("usage");
            if let Some(m) = o.get_mut("message").and_then(Value::as_object_mut) {
                m.remove("usage");
            }
        }
    }
    match resp {
        Response::Fixed { status, body } => {
            let body = match serde_json::from_str::<Value>(&body) {
                Ok(mut v) => {
                    strip(&mut v);
                    v.to_string()
                }
                Err(_) => body,
            };
            Response::Fixed { status, body }
        }
        Response::Stream { events } => Response::Stream {
            events: events
                .into_iter()
                .filter_map(|ev| {
                    let mut lines = Vec::new();
                    for line in ev.lines().filter(|l| !l.is_empty()) {
                        match line
                            .strip_prefix("data: ")
                            .map(serde_json::from_str::<Value>)
                        {
                            Some(Ok(mut v)) => {
                                if v.get("choices")
                                    .and_then(Value::as_array)
                                    .is_some_and(Vec::is_empty)
                                {
                                    return None;
                                }
                                strip(&mut v);
                                lines.push(format!("data: {v}"));
                            }
                            _ => lines.push(line.to_owned()),
                        }
                    }
                    Some(format!("{}\n\n", lines.join("\n")))
                })
                .collect(),
        },
    }
}

/// The SSE events a streaming request to `path` gets (chat shape unless `path` is `/completions`); used
/// by the stream faults, which stream whatever the request asked for.
pub(crate) fn stream_events(path: &str, body: &[u8], ctx: &EchoCtx<'_>) -> Vec<String> {
    let req = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    if route("POST", path) == Some(Endpoint::Completions) {
        completion_stream(&req, ctx)
    } else if route("POST", path) == Some(Endpoint::Messages) {
        crate::anthropic::message_stream(&req, ctx)
    } else if route("POST", path) == Some(Endpoint::Responses) {
        crate::responses::response_stream(&req, ctx)
    } else {
        chat_stream(&req, ctx)
    }
}

/// The assistant's answer from the mock called `name`.
pub(crate) fn reply_text(name: &str) -> String {
    format!("mock reply from {name}")
}

/// The answer cut into stream pieces: one per word (with its leading space), and the longest pieces split
/// further, as a BPE tokenizer would, until there are at least five. Concatenated, they give `reply_text`.
pub(crate) fn reply_pieces(name: &str) -> Vec<String> {
    let text = reply_text(name);
    let mut pieces: Vec<String> = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        pieces.push(if i == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        });
    }
    while pieces.len() < MIN_PIECES {
        let Some((at, longest)) = pieces
            .iter()
            .enumerate()
            .max_by_key(|(i, p)| (p.chars().count(), std::cmp::Reverse(*i)))
        else {
            break;
        };
        let chars = longest.chars().count();
        if chars < 2 {
            break;
        }
        let mid = longest
            .char_indices()
            .nth(chars / 2)
            .map(|(b, _)| b)
            .unwrap_or_default();
        let (left, right) = longest.split_at(mid);
        let (left, right) = (left.to_owned(), right.to_owned());
        pieces[at] = left;
        pieces.insert(at + 1, right);
    }
    pieces
}

fn completion_tokens(name: &str) -> u64 {
    reply_pieces(name).len() as u64
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Prompt tokens of a chat request: whitespace-separated words in all message contents, at least 1.
fn chat_prompt_tokens(req: &Value) -> u64 {
    let mut n = 0;
    for message in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match message.get("content") {
            Some(Value::String(s)) => n += words(s),
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(text) = part.get("text").and_then(Value::as_str) {
                        n += words(text);
                    }
                }
            }
            _ => {}
        }
    }
    n.max(1)
}

/// Prompt tokens of a `prompt`/`input` field (string, strings, token array or token arrays), at least 1.
fn input_tokens(input: Option<&Value>) -> u64 {
    fn count(v: &Value) -> u64 {
        match v {
            Value::String(s) => words(s),
            Value::Number(_) => 1,
            Value::Array(items) => items.iter().map(count).sum(),
            _ => 0,
        }
    }
    input.map(count).unwrap_or(0).max(1)
}

fn model_of(req: &Value) -> Value {
    req.get("model")
        .cloned()
        .unwrap_or_else(|| json!("mock-model"))
}

fn include_usage(req: &Value) -> bool {
    req.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn chat_completion(req: &Value, ctx: &EchoCtx<'_>) -> Value {
    json!({
        "id": format!("chatcmpl-mock-{}", ctx.seq),
        "object": "chat.completion",
        "created": ctx.created,
        "model": model_of(req),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply_text(ctx.name), "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": usage(chat_prompt_tokens(req), completion_tokens(ctx.name)),
        "system_fingerprint": "fp_mock",
    })
}

fn chat_stream(req: &Value, ctx: &EchoCtx<'_>) -> Vec<String> {
    let id = format!("chatcmpl-mock-{}", ctx.seq);
    let model = model_of(req);
    let with_usage = include_usage(req);
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut chunks = vec![chunk(choice(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    ))];
    for piece in reply_pieces(ctx.name) {
        chunks.push(chunk(choice(json!({"content": piece}), Value::Null)));
    }
    chunks.push(chunk(choice(json!({}), json!("stop"))));
    if with_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage(chat_prompt_tokens(req), completion_tokens(ctx.name));
        chunks.push(last);
    }
    sse(chunks)
}

fn completion(req: &Value, ctx: &EchoCtx<'_>) -> Value {
    json!({
        "id": format!("cmpl-mock-{}", ctx.seq),
        "object": "text_completion",
        "created": ctx.created,
        "model": model_of(req),
        "choices": [{"text": reply_text(ctx.name), "index": 0, "logprobs": null, "finish_reason": "stop"}],
        "usage": usage(input_tokens(req.get("prompt")), completion_tokens(ctx.name)),
    })
}

fn completion_stream(req: &Value, ctx: &EchoCtx<'_>) -> Vec<String> {
    let id = format!("cmpl-mock-{}", ctx.seq);
    let model = model_of(req);
    let with_usage = include_usage(req);
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": id,
            "object": "text_completion",
            "created": ctx.created,
            "model": model,
            "choices": choices,
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let choice = |text: &str, finish: Value| json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]);
    let mut chunks: Vec<Value> = reply_pieces(ctx.name)
        .iter()
        .map(|piece| chunk(choice(piece, Value::Null)))
        .collect();
    chunks.push(chunk(choice("", json!("stop"))));
    if with_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage(input_tokens(req.get("prompt")), completion_tokens(ctx.name));
        chunks.push(last);
    }
    sse(chunks)
}

fn embeddings(req: &Value) -> Value {
    let input = req.get("input");
    let n = match input {
        // An array of strings or of token arrays is a batch; a flat token array is one input.
        Some(Value::Array(items)) if items.iter().all(|i| i.is_number()) && !items.is_empty() => 1,
        Some(Value::Array(items)) => items.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}))
        .collect();
    let prompt = input_tokens(input);
    json!({
        "object": "list",
        "data": data,
        "model": model_of(req),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    })
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"})
}

fn sse(chunks: Vec<Value>) -> Vec<String> {
    let mut events: Vec<String> = chunks
        .into_iter()
        .map(|c| format!("data: {c}\n\n"))
        .collect();
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn fixed(status: u16, body: Value) -> Response {
    Response::Fixed {
        status,
        body: body.to_string(),
    }
}

fn not_found(method: &str, path: &str) -> Response {
    Response::Fixed {
        status: 404,
        body: openai_error(
            &format!("Unknown request URL: {method} {path}. Please check the URL for typos."),
            "invalid_request_error",
            None,
            Some("unknown_url"),
        ),
    }
}

fn bad_json() -> Response {
    Response::Fixed {
        status: 400,
        body: openai_error(
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload, but \
             what was sent was not valid JSON.",
            "invalid_request_error",
            None,
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(name: &str) -> EchoCtx<'_> {
        EchoCtx {
            name,
            seq: 1,
            created: 0,
            models: &[],
        }
    }

    #[test]
    fn pieces_concatenate_to_the_reply_and_number_at_least_five() {
        for name in ["a", "mock", "primary-upstream", "two words here"] {
            let pieces = reply_pieces(name);
            assert_eq!(pieces.concat(), reply_text(name));
            assert!(pieces.len() >= 5, "{pieces:?}");
        }
        assert_eq!(reply_pieces("mock").len(), 5);
    }

    #[test]
    fn prompt_tokens_count_words_in_all_messages() {
        let req = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi there you"}]},
        ]});
        assert_eq!(chat_prompt_tokens(&req), 5);
        assert_eq!(chat_prompt_tokens(&json!({})), 1);
        assert_eq!(input_tokens(Some(&json!(["a b", "c"]))), 3);
    }

    #[test]
    fn routes_with_and_without_v1() {
        assert!(route("POST", "/v1/chat/completions?x=1") == Some(Endpoint::Chat));
        assert!(route("POST", "/chat/completions") == Some(Endpoint::Chat));
        assert!(route("GET", "/v1/chat/completions").is_none());
        assert!(route("GET", "/v1/models/").is_none());
        let Response::Fixed { status, .. } = echo("POST", "/v1/nope", b"{}", &ctx("m")) else {
            panic!()
        };
        assert_eq!(status, 404);
        let Response::Fixed { status, .. } = echo("POST", "/v1/embeddings", b"[1]", &ctx("m"))
        else {
            panic!()
        };
        assert_eq!(status, 400);
    }
}
