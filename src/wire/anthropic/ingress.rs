//! Ingress, whole bodies: an Anthropic Messages request (from a client on `/v1/messages`) becomes an
//! OpenAI chat request, and the OpenAI answer becomes an Anthropic Messages response.
//!
//! Request fields, decided one by one:
//! * translated: `model`, `system`, `messages` (system-role entries among them become system messages
//!   in place), `max_tokens` (as OpenAI `max_tokens`, which every
//!   OpenAI-compatible server knows), `stop_sequences`, `temperature`, `top_p`, `stream` (with
//!   `stream_options.include_usage`, so the answer can carry usage), `metadata.user_id`, `tools`,
//!   `tool_choice` (+ `disable_parallel_tool_use` -> `parallel_tool_calls: false`).
//! * refused (`Unsupported`): server tools (`web_search_*`, `bash_*`, ...), `mcp_servers`, file-id and
//!   URL documents, server-tool result blocks in the history.
//! * dropped silently: `top_k` (no OpenAI field), `thinking` and thinking blocks in the history (OpenAI
//!   models cannot verify Anthropic signatures), `cache_control`, `service_tier`, `container`,
//!   `tool_result.is_error` (the content still says what went wrong), and unknown fields.

use serde_json::{json, Map, Value};

use super::json::{
    as_obj, count, field, opt_arr, opt_bool, opt_number, opt_obj, opt_str, opt_u64, parse_request,
    parse_upstream, req_obj, req_str, Obj,
};
use super::TranslateError;

type Result<T> = std::result::Result<T, TranslateError>;

fn invalid(msg: String) -> TranslateError {
    TranslateError::InvalidRequest(msg)
}

fn unsupported(msg: String) -> TranslateError {
    TranslateError::Unsupported(msg)
}

/// What the proxy needs to route an ingress request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressInfo {
    /// The `model` the client asked for (also kept in the translated body).
    pub model: String,
    pub stream: bool,
}

/// Ingress: Anthropic Messages request -> OpenAI chat request, plus what routing needs.
pub fn messages_request_to_chat(body: &[u8]) -> Result<(Vec<u8>, IngressInfo)> {
    let req = parse_request(body)?;
    if field(&req, "mcp_servers").is_some() {
        return Err(unsupported("mcp_servers".into()));
    }
    let model = req_str(&req, "model", "").map_err(invalid)?.to_string();
    let stream = opt_bool(&req, "stream", "").map_err(invalid)? == Some(true);
    let mut out = Map::new();
    out.insert("model".into(), json!(model));

    let mut messages = Vec::new();
    if let Some(system) = system_text(&req)? {
        messages.push(json!({ "role": "system", "content": system }));
    }
    let input = opt_arr(&req, "messages", "")
        .map_err(invalid)?
        .ok_or_else(|| invalid("messages: is required".into()))?;
    for (i, m) in input.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = as_obj(m, &path).map_err(invalid)?;
        match req_str(m, "role", &path).map_err(invalid)? {
            "user" => user_messages(m, &path, &mut messages)?,
            "assistant" => messages.push(assistant_message(m, &path)?),
            // Mid-conversation system entries (Claude Code's `mid-conversation-system` beta): a system
            // message in place, which every OpenAI-compatible API accepts.
            "system" => {
                if let Some(text) =
                    system_blocks_text(field(m, "content"), &format!("{path}.content"))?
                {
                    messages.push(json!({ "role": "system", "content": text }));
                }
            }
            other => return Err(invalid(format!("{path}.role: unknown role `{other}`"))),
        }
    }
    out.insert("messages".into(), Value::Array(messages));

    if let Some(n) = opt_u64(&req, "max_tokens", "").map_err(invalid)? {
        out.insert("max_tokens".into(), json!(n));
    }
    if let Some(stops) = opt_arr(&req, "stop_sequences", "").map_err(invalid)? {
        if !stops.is_empty() {
            if stops.iter().any(|s| !s.is_string()) {
                return Err(invalid(
                    "stop_sequences: must be an array of strings".into(),
                ));
            }
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = opt_number(&req, key, "").map_err(invalid)? {
            out.insert(key.into(), v.clone());
        }
    }
    if stream {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    if let Some(meta) = opt_obj(&req, "metadata", "").map_err(invalid)? {
        if let Some(user) = opt_str(meta, "user_id", "metadata").map_err(invalid)? {
            out.insert("user".into(), json!(user));
        }
    }
    convert_tools(&req, &mut out)?;
    Ok((
        Value::Object(out).to_string().into_bytes(),
        IngressInfo { model, stream },
    ))
}

/// `system` as a string or text blocks, joined with a blank line; `None` when empty.
fn system_text(req: &Obj) -> Result<Option<String>> {
    system_blocks_text(field(req, "system"), "system")
}

/// A system prompt (top-level `system` or a system-role entry's `content`): a string or text blocks
/// (their `cache_control` dropped), joined with a blank line; `None` when empty.
fn system_blocks_text(value: Option<&Value>, path: &str) -> Result<Option<String>> {
    let text = match value {
        None => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                let bpath = format!("{path}[{j}]");
                let b = as_obj(b, &bpath).map_err(invalid)?;
                match req_str(b, "type", &bpath).map_err(invalid)? {
                    "text" => texts.push(req_str(b, "text", &bpath).map_err(invalid)?),
                    other => {
                        return Err(invalid(format!(
                            "{bpath}.type: `{other}` blocks are not allowed in system"
                        )))
                    }
                }
            }
            texts.join("\n\n")
        }
        Some(_) => {
            return Err(invalid(format!(
                "{path}: must be a string or an array of text blocks"
            )))
        }
    };
    Ok((!text.is_empty()).then_some(text))
}

fn blocks_of<'a>(m: &'a Obj, path: &str) -> Result<Option<&'a Vec<Value>>> {
    match field(m, "content") {
        Some(Value::Array(b)) => Ok(Some(b)),
        Some(Value::String(_)) => Ok(None),
        _ => Err(invalid(format!(
            "{path}.content: must be a string or an array of content blocks"
        ))),
    }
}

/// A user turn: its `tool_result` blocks become `tool` messages (first, since OpenAI wants them right
/// after the assistant's tool calls), the rest one user message. Images inside tool results, which
/// OpenAI tool messages cannot carry, open that user message.
fn user_messages(m: &Obj, path: &str, out: &mut Vec<Value>) -> Result<()> {
    let Some(blocks) = blocks_of(m, path)? else {
        out.push(json!({ "role": "user", "content": field(m, "content") }));
        return Ok(());
    };
    let mut tool_images = Vec::new();
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bpath = format!("{path}.content[{j}]");
        let b = as_obj(b, &bpath).map_err(invalid)?;
        match req_str(b, "type", &bpath).map_err(invalid)? {
            "tool_result" => {
                let id = req_str(b, "tool_use_id", &bpath).map_err(invalid)?;
                let text = tool_result_text(b, &bpath, &mut tool_images)?;
                out.push(json!({ "role": "tool", "tool_call_id": id, "content": text }));
            }
            "thinking" | "redacted_thinking" => {}
            _ => parts.push(user_part(b, &bpath)?),
        }
    }
    tool_images.extend(parts);
    if !tool_images.is_empty() {
        out.push(json!({ "role": "user", "content": tool_images }));
    }
    Ok(())
}

fn tool_result_text(b: &Obj, path: &str, images: &mut Vec<Value>) -> Result<String> {
    match field(b, "content") {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (k, c) in blocks.iter().enumerate() {
                let cpath = format!("{path}.content[{k}]");
                let c = as_obj(c, &cpath).map_err(invalid)?;
                match req_str(c, "type", &cpath).map_err(invalid)? {
                    "text" => texts.push(req_str(c, "text", &cpath).map_err(invalid)?),
                    "image" => images.push(user_part(c, &cpath)?),
                    other => {
                        return Err(unsupported(format!(
                            "{cpath}.type: `{other}` blocks in a tool result"
                        )))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(invalid(format!(
            "{path}.content: must be a string or an array of blocks"
        ))),
    }
}

/// One non-tool user block as an OpenAI content part.
fn user_part(b: &Obj, path: &str) -> Result<Value> {
    match req_str(b, "type", path).map_err(invalid)? {
        "text" => Ok(json!({ "type": "text", "text": req_str(b, "text", path).map_err(invalid)? })),
        "image" => {
            let url = source_url(b, path, "image")?;
            Ok(json!({ "type": "image_url", "image_url": { "url": url } }))
        }
        "document" => {
            let spath = format!("{path}.source");
            let source = req_obj(b, "source", path).map_err(invalid)?;
            match req_str(source, "type", &spath).map_err(invalid)? {
                "text" => {
                    let data = req_str(source, "data", &spath).map_err(invalid)?;
                    Ok(json!({ "type": "text", "text": data }))
                }
                "base64" => {
                    let url = source_url(b, path, "document")?;
                    let name = opt_str(b, "title", path)
                        .map_err(invalid)?
                        .unwrap_or("document.pdf");
                    Ok(json!({ "type": "file", "file": { "filename": name, "file_data": url } }))
                }
                other => Err(unsupported(format!(
                    "{spath}.type: `{other}` document sources"
                ))),
            }
        }
        other => Err(unsupported(format!("{path}.type: `{other}` blocks"))),
    }
}

/// An image or document `source` as a URL: base64 becomes a data URL, `url` stays as it is.
fn source_url(b: &Obj, path: &str, what: &str) -> Result<String> {
    let spath = format!("{path}.source");
    let source = req_obj(b, "source", path).map_err(invalid)?;
    match req_str(source, "type", &spath).map_err(invalid)? {
        "base64" => {
            let media = req_str(source, "media_type", &spath).map_err(invalid)?;
            let data = req_str(source, "data", &spath).map_err(invalid)?;
            Ok(format!("data:{media};base64,{data}"))
        }
        "url" if what == "image" => {
            Ok(req_str(source, "url", &spath).map_err(invalid)?.to_string())
        }
        other => Err(unsupported(format!(
            "{spath}.type: `{other}` {what} sources"
        ))),
    }
}

fn assistant_message(m: &Obj, path: &str) -> Result<Value> {
    let Some(blocks) = blocks_of(m, path)? else {
        return Ok(json!({ "role": "assistant", "content": field(m, "content") }));
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bpath = format!("{path}.content[{j}]");
        let b = as_obj(b, &bpath).map_err(invalid)?;
        match req_str(b, "type", &bpath).map_err(invalid)? {
            "text" => text.push_str(req_str(b, "text", &bpath).map_err(invalid)?),
            "tool_use" => {
                let input = field(b, "input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": req_str(b, "id", &bpath).map_err(invalid)?,
                    "type": "function",
                    "function": {
                        "name": req_str(b, "name", &bpath).map_err(invalid)?,
                        "arguments": input.to_string(),
                    },
                }));
            }
            "thinking" | "redacted_thinking" => {}
            other => return Err(unsupported(format!("{bpath}.type: `{other}` blocks"))),
        }
    }
    let mut msg = Map::new();
    msg.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    msg.insert("content".into(), content);
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(msg))
}

fn convert_tools(req: &Obj, out: &mut Obj) -> Result<()> {
    let Some(tools) = opt_arr(req, "tools", "")
        .map_err(invalid)?
        .filter(|t| !t.is_empty())
    else {
        return Ok(());
    };
    let mut converted = Vec::with_capacity(tools.len());
    for (j, t) in tools.iter().enumerate() {
        let tpath = format!("tools[{j}]");
        let t = as_obj(t, &tpath).map_err(invalid)?;
        if let Some(kind) = opt_str(t, "type", &tpath).map_err(invalid)? {
            if kind != "custom" {
                return Err(unsupported(format!(
                    "{tpath}.type: `{kind}` server tools (only client tools)"
                )));
            }
        }
        let mut function = Map::new();
        function.insert(
            "name".into(),
            json!(req_str(t, "name", &tpath).map_err(invalid)?),
        );
        if let Some(d) = opt_str(t, "description", &tpath).map_err(invalid)? {
            function.insert("description".into(), json!(d));
        }
        let schema = req_obj(t, "input_schema", &tpath).map_err(invalid)?;
        function.insert("parameters".into(), Value::Object(schema.clone()));
        converted.push(json!({ "type": "function", "function": function }));
    }
    out.insert("tools".into(), Value::Array(converted));
    if let Some(choice) = opt_obj(req, "tool_choice", "").map_err(invalid)? {
        let c = match req_str(choice, "type", "tool_choice").map_err(invalid)? {
            "auto" => json!("auto"),
            "any" => json!("required"),
            "none" => json!("none"),
            "tool" => {
                let name = req_str(choice, "name", "tool_choice").map_err(invalid)?;
                json!({ "type": "function", "function": { "name": name } })
            }
            other => {
                return Err(invalid(format!(
                    "tool_choice.type: unknown value `{other}`"
                )))
            }
        };
        out.insert("tool_choice".into(), c);
        let disable =
            opt_bool(choice, "disable_parallel_tool_use", "tool_choice").map_err(invalid)?;
        if disable == Some(true) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    Ok(())
}

/// OpenAI `finish_reason` -> Anthropic `stop_reason`. OpenAI does not say which stop sequence matched, so
/// `stop_sequence` is never produced.
pub(super) fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// `msg_` + the upstream's id without its `chatcmpl-` prefix (an id that already is a `msg_` id is kept).
pub(super) fn message_id(upstream_id: Option<&str>) -> String {
    match upstream_id.map(|id| id.strip_prefix("chatcmpl-").unwrap_or(id)) {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => format!("msg_{}", uuid::Uuid::new_v4().simple()),
    }
}

/// OpenAI usage -> Anthropic usage, where `input_tokens` excludes cache reads.
pub(super) fn anthropic_usage(usage: Option<&Obj>) -> Value {
    let cached = usage
        .and_then(|u| u.get("prompt_tokens_details"))
        .and_then(Value::as_object)
        .map(|d| count(Some(d), "cached_tokens"))
        .unwrap_or(0);
    let prompt = count(usage, "prompt_tokens");
    json!({
        "input_tokens": prompt.saturating_sub(cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": count(usage, "completion_tokens"),
    })
}

/// A tool call's `arguments` string as an Anthropic `input` object (empty means `{}`).
pub(super) fn parse_arguments(args: &str, path: &str) -> Result<Value> {
    if args.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(TranslateError::BadUpstream(format!(
            "{path}: tool call arguments are not a JSON object"
        ))),
    }
}

/// Ingress: OpenAI `chat.completion` -> Anthropic Messages response (model set to `client_model`). Only
/// the first choice is used.
pub fn chat_response_to_messages(body: &[u8], client_model: &str) -> Result<Vec<u8>> {
    let resp = parse_upstream(body)?;
    let bad = TranslateError::BadUpstream;
    if let Some(err) = opt_obj(&resp, "error", "").map_err(bad)? {
        let msg = err.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(bad(format!("upstream error: {msg}")));
    }
    let choice = opt_arr(&resp, "choices", "")
        .map_err(bad)?
        .and_then(|c| c.first())
        .ok_or_else(|| bad("choices: missing or empty".into()))?;
    let choice = as_obj(choice, "choices[0]").map_err(bad)?;
    let message = req_obj(choice, "message", "choices[0]").map_err(bad)?;
    let mpath = "choices[0].message";
    let mut content = Vec::new();
    match field(message, "content") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => content.push(json!({ "type": "text", "text": s })),
        Some(Value::Array(parts)) => {
            for p in parts {
                if let Some(t) = p
                    .get("text")
                    .or_else(|| p.get("refusal"))
                    .and_then(Value::as_str)
                {
                    content.push(json!({ "type": "text", "text": t }));
                }
            }
        }
        Some(_) => return Err(bad(format!("{mpath}.content: must be a string"))),
    }
    if let Some(refusal) = opt_str(message, "refusal", mpath).map_err(bad)? {
        if !refusal.is_empty() && content.is_empty() {
            content.push(json!({ "type": "text", "text": refusal }));
        }
    }
    for (j, call) in opt_arr(message, "tool_calls", mpath)
        .map_err(bad)?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let cpath = format!("{mpath}.tool_calls[{j}]");
        let call = as_obj(call, &cpath).map_err(bad)?;
        let function = req_obj(call, "function", &cpath).map_err(bad)?;
        let fpath = format!("{cpath}.function");
        let args = opt_str(function, "arguments", &fpath)
            .map_err(bad)?
            .unwrap_or("");
        content.push(json!({
            "type": "tool_use",
            "id": req_str(call, "id", &cpath).map_err(bad)?,
            "name": req_str(function, "name", &fpath).map_err(bad)?,
            "input": parse_arguments(args, &format!("{fpath}.arguments"))?,
        }));
    }
    let finish = opt_str(choice, "finish_reason", "choices[0]").map_err(bad)?;
    let out = json!({
        "id": message_id(opt_str(&resp, "id", "").map_err(bad)?),
        "type": "message",
        "role": "assistant",
        "model": client_model,
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": anthropic_usage(opt_obj(&resp, "usage", "").map_err(bad)?),
    });
    Ok(out.to_string().into_bytes())
}
