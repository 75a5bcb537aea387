//! Egress, whole bodies: an OpenAI chat request becomes an Anthropic Messages request, and the Anthropic
//! answer becomes an OpenAI `chat.completion`.
//!
//! Request fields, decided one by one:
//! * translated: `messages`, `tools`, `tool_choice`, `parallel_tool_calls`, `stop`, `temperature`,
//!   `top_p`, `max_completion_tokens`/`max_tokens`, `stream`, `user`, and the non-OpenAI `top_k`.
//! * refused (`Unsupported`), because the client would miss something in the answer: `n` > 1,
//!   `logprobs: true`, `response_format` of type `json_schema`, `audio` / `modalities` with audio,
//!   the deprecated `functions` / `function_call`, `input_audio` and `file_id` content parts,
//!   tool types other than `function`.
//! * dropped silently, as hints whose absence breaks no client: `presence_penalty`, `frequency_penalty`,
//!   `logit_bias`, `seed`, `top_logprobs`, `response_format` `text`/`json_object` (OpenAI already makes
//!   the prompt ask for JSON), `reasoning_effort` (Anthropic thinking needs its signed blocks sent back,
//!   which OpenAI clients cannot do), `store`, `metadata`, `service_tier`, `stream_options` (Anthropic
//!   always reports usage), `prediction`, `web_search_options`, and any field this code does not know.
//! * `temperature` is passed unchanged: Anthropic accepts 0..=1, so a value above 1 is refused upstream.
//!
//! Prompt caching: OpenAI caches prompt prefixes by itself, Anthropic only up to `cache_control`
//! breakpoints, which an OpenAI client never sends. So the translation places them (see
//! [`place_cache_breakpoints`]), and an agent's long system prompt and tools are read from the cache on
//! every turn instead of billed in full.

use serde_json::{json, Map, Value};

use super::json::{
    as_obj, count, field, opt_arr, opt_bool, opt_number, opt_obj, opt_str, opt_u64, parse_request,
    parse_upstream, req_obj, req_str, Obj,
};
use super::{unix_now, TranslateError};

type Result<T> = std::result::Result<T, TranslateError>;

fn invalid(msg: String) -> TranslateError {
    TranslateError::InvalidRequest(msg)
}

/// Egress: OpenAI chat request -> Anthropic Messages request body, for `upstream_model`.
/// `default_max_tokens` fills Anthropic's required `max_tokens` when the client set no limit.
pub fn chat_request_to_messages(
    body: &[u8],
    upstream_model: &str,
    default_max_tokens: u32,
) -> Result<Vec<u8>> {
    let req = parse_request(body)?;
    refuse_unsupported(&req)?;
    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    let messages = opt_arr(&req, "messages", "")
        .map_err(invalid)?
        .ok_or_else(|| invalid("messages: is required".into()))?;
    let (system, turns) = convert_messages(messages)?;
    if !system.is_empty() {
        out.insert("system".into(), json!(system));
    }
    out.insert("messages".into(), Value::Array(turns));
    let max_tokens = match opt_u64(&req, "max_completion_tokens", "").map_err(invalid)? {
        Some(n) => n,
        None => opt_u64(&req, "max_tokens", "")
            .map_err(invalid)?
            .unwrap_or(u64::from(default_max_tokens)),
    };
    out.insert("max_tokens".into(), json!(max_tokens));
    let stops = stop_sequences(&req)?;
    if !stops.is_empty() {
        out.insert("stop_sequences".into(), json!(stops));
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = opt_number(&req, key, "").map_err(invalid)? {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(k) = opt_u64(&req, "top_k", "").map_err(invalid)? {
        out.insert("top_k".into(), json!(k));
    }
    if opt_bool(&req, "stream", "").map_err(invalid)? == Some(true) {
        out.insert("stream".into(), json!(true));
    }
    if let Some(user) = opt_str(&req, "user", "").map_err(invalid)? {
        if !user.is_empty() {
            out.insert("metadata".into(), json!({ "user_id": user }));
        }
    }
    convert_tools(&req, &mut out)?;
    place_cache_breakpoints(&mut out);
    Ok(Value::Object(out).to_string().into_bytes())
}

/// Anthropic allows at most this many `cache_control` breakpoints in one request.
pub const MAX_CACHE_BREAKPOINTS: usize = 4;

/// Marks the prefixes worth caching, in Anthropic's order (tools, system, messages), at most
/// [`MAX_CACHE_BREAKPOINTS`]: the last tool (so every tool definition is cached), the system prompt,
/// the last block of the last user turn (what the next turn will read back), and the last block of the
/// user turn before it (what this turn reads back, written by the previous request). A prefix shorter
/// than the model's minimum (1024 tokens for most) is simply not cached; a write costs a quarter more
/// than plain input and every later read a tenth, so a conversation's second turn already saves.
pub(super) fn place_cache_breakpoints(out: &mut Obj) {
    let ephemeral = || json!({ "type": "ephemeral" });
    if let Some(Value::Object(last)) = out
        .get_mut("tools")
        .and_then(|t| t.as_array_mut()?.last_mut())
    {
        last.insert("cache_control".into(), ephemeral());
    }
    if let Some(Value::String(system)) = out.get("system") {
        let block = json!([{ "type": "text", "text": system, "cache_control": ephemeral() }]);
        out.insert("system".into(), block);
    }
    let Some(Value::Array(turns)) = out.get_mut("messages") else {
        return;
    };
    let user_turns = turns
        .iter_mut()
        .rev()
        .filter(|t| t.get("role").and_then(Value::as_str) == Some("user"))
        // Tools and system take two of the breakpoints.
        .take(MAX_CACHE_BREAKPOINTS - 2);
    for turn in user_turns {
        if let Some(Value::Object(block)) = turn
            .get_mut("content")
            .and_then(|c| c.as_array_mut()?.last_mut())
        {
            block.insert("cache_control".into(), ephemeral());
        }
    }
}

fn refuse_unsupported(req: &Obj) -> Result<()> {
    let unsupported = |m: &str| Err(TranslateError::Unsupported(m.to_string()));
    if opt_u64(req, "n", "").map_err(invalid)?.unwrap_or(1) > 1 {
        return unsupported("n > 1: Anthropic returns a single choice");
    }
    if opt_bool(req, "logprobs", "").map_err(invalid)? == Some(true) {
        return unsupported("logprobs: Anthropic does not return log probabilities");
    }
    if let Some(rf) = opt_obj(req, "response_format", "").map_err(invalid)? {
        if opt_str(rf, "type", "response_format").map_err(invalid)? == Some("json_schema") {
            return unsupported("response_format json_schema: Anthropic cannot enforce a schema");
        }
    }
    if field(req, "functions").is_some() || field(req, "function_call").is_some() {
        return unsupported("functions/function_call are deprecated: use tools/tool_choice");
    }
    let audio_modality = opt_arr(req, "modalities", "")
        .map_err(invalid)?
        .is_some_and(|m| m.iter().any(|v| v.as_str() == Some("audio")));
    if field(req, "audio").is_some() || audio_modality {
        return unsupported("audio output");
    }
    Ok(())
}

fn stop_sequences(req: &Obj) -> Result<Vec<String>> {
    Ok(match field(req, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("stop: must be a string or an array of strings".into()))
            })
            .collect::<Result<Vec<_>>>()?,
        Some(_) => {
            return Err(invalid(
                "stop: must be a string or an array of strings".into(),
            ))
        }
    }
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect())
}

/// One Anthropic turn being assembled; consecutive OpenAI messages of the same role land in one turn,
/// since Anthropic requires user and assistant to alternate.
struct Turn {
    role: &'static str,
    blocks: Vec<Value>,
}

fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(t) if t.role == role => t.blocks.extend(blocks),
        _ => turns.push(Turn { role, blocks }),
    }
}

/// Splits OpenAI messages into Anthropic's `system` string and alternating turns.
///
/// * `system` and `developer` messages are hoisted, wherever they stand, and joined with a blank line.
/// * `tool` messages become `tool_result` blocks of a user turn; within a user turn the tool results come
///   first, as Anthropic requires.
/// * Empty text is dropped (Anthropic refuses empty text blocks), and a final assistant turn (a prefill)
///   loses its trailing whitespace, which Anthropic also refuses.
fn convert_messages(messages: &[Value]) -> Result<(String, Vec<Value>)> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = as_obj(m, &path).map_err(invalid)?;
        match req_str(m, "role", &path).map_err(invalid)? {
            "system" | "developer" => {
                system.extend(text_parts(field(m, "content"), &path)?);
            }
            "user" => push_turn(&mut turns, "user", user_blocks(m, &path)?),
            "assistant" => push_turn(&mut turns, "assistant", assistant_blocks(m, &path)?),
            "tool" => push_turn(&mut turns, "user", vec![tool_result(m, &path)?]),
            "function" => {
                return Err(TranslateError::Unsupported(format!(
                    "{path}.role: `function` messages are deprecated: use tool messages"
                )))
            }
            other => return Err(invalid(format!("{path}.role: unknown role `{other}`"))),
        }
    }
    if turns.is_empty() {
        return Err(invalid(
            "messages: at least one user or assistant message is required".into(),
        ));
    }
    if let Some(last) = turns.last_mut().filter(|t| t.role == "assistant") {
        trim_trailing_whitespace(&mut last.blocks);
    }
    let turns = turns
        .into_iter()
        .map(|mut t| {
            if t.role == "user" {
                // Stable: tool results keep their order, and so does everything else.
                t.blocks
                    .sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
            }
            json!({ "role": t.role, "content": t.blocks })
        })
        .collect();
    let system: Vec<String> = system.into_iter().filter(|s| !s.is_empty()).collect();
    Ok((system.join("\n\n"), turns))
}

fn trim_trailing_whitespace(blocks: &mut Vec<Value>) {
    if let Some(Value::Object(last)) = blocks.last_mut() {
        if last.get("type").and_then(Value::as_str) == Some("text") {
            if let Some(Value::String(t)) = last.get_mut("text") {
                let trimmed_len = t.trim_end().len();
                t.truncate(trimmed_len);
                if t.is_empty() {
                    blocks.pop();
                }
            }
        }
    }
}

/// The texts of a `content` that may only hold text (system, developer, tool): a string or text parts.
fn text_parts(content: Option<&Value>, path: &str) -> Result<Vec<String>> {
    match content {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let ppath = format!("{path}.content[{j}]");
                let p = as_obj(p, &ppath).map_err(invalid)?;
                match req_str(p, "type", &ppath).map_err(invalid)? {
                    "text" => Ok(req_str(p, "text", &ppath).map_err(invalid)?.to_string()),
                    other => Err(TranslateError::Unsupported(format!(
                        "{ppath}.type: `{other}` parts are not allowed here, only text"
                    ))),
                }
            })
            .collect(),
        Some(_) => Err(invalid(format!(
            "{path}.content: must be a string or an array of parts"
        ))),
    }
}

fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({ "type": "text", "text": text }))
}

fn user_blocks(m: &Obj, path: &str) -> Result<Vec<Value>> {
    let parts = match field(m, "content") {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(text_block(s).into_iter().collect()),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(invalid(format!(
                "{path}.content: must be a string or an array of parts"
            )))
        }
    };
    let mut blocks = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        let ppath = format!("{path}.content[{j}]");
        let p = as_obj(p, &ppath).map_err(invalid)?;
        match req_str(p, "type", &ppath).map_err(invalid)? {
            "text" => blocks.extend(text_block(req_str(p, "text", &ppath).map_err(invalid)?)),
            "image_url" => {
                // The spec says an object with `url`; some clients send the URL string itself.
                let url = match field(p, "image_url") {
                    Some(Value::String(s)) => s.as_str(),
                    _ => req_str(
                        req_obj(p, "image_url", &ppath).map_err(invalid)?,
                        "url",
                        &format!("{ppath}.image_url"),
                    )
                    .map_err(invalid)?,
                };
                blocks.push(image_block(url, &format!("{ppath}.image_url.url"))?);
            }
            "file" => blocks.push(file_block(p, &ppath)?),
            other => {
                return Err(TranslateError::Unsupported(format!(
                    "{ppath}.type: `{other}` content parts"
                )))
            }
        }
    }
    Ok(blocks)
}

/// A `data:` URL split into media type and base64 payload; `None` if it is not a base64 data URL.
fn split_data_url(url: &str) -> Option<(&str, &str)> {
    let (header, data) = url.strip_prefix("data:")?.split_once(',')?;
    let media_type = header.strip_suffix(";base64")?;
    Some((media_type, data))
}

fn image_block(url: &str, path: &str) -> Result<Value> {
    if url.starts_with("data:") {
        let (media_type, data) = split_data_url(url).ok_or_else(|| {
            TranslateError::Unsupported(format!("{path}: only base64 data URLs are supported"))
        })?;
        // A common misspelling that Anthropic refuses.
        let media_type = if media_type.eq_ignore_ascii_case("image/jpg") {
            "image/jpeg"
        } else {
            media_type
        };
        return Ok(json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": data },
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    }
    Err(invalid(format!(
        "{path}: must be an http(s) URL or a base64 data URL"
    )))
}

/// A `file` part carrying a PDF inline becomes a `document` block; uploaded files cannot be reached.
fn file_block(p: &Obj, path: &str) -> Result<Value> {
    let file = req_obj(p, "file", path).map_err(invalid)?;
    let fpath = format!("{path}.file");
    let Some(data) = opt_str(file, "file_data", &fpath).map_err(invalid)? else {
        return Err(TranslateError::Unsupported(format!(
            "{fpath}: only inline file_data is supported, not file_id"
        )));
    };
    let (media_type, data) = if data.starts_with("data:") {
        split_data_url(data).ok_or_else(|| {
            TranslateError::Unsupported(format!(
                "{fpath}.file_data: only base64 data URLs are supported"
            ))
        })?
    } else {
        ("application/pdf", data)
    };
    if media_type != "application/pdf" {
        return Err(TranslateError::Unsupported(format!(
            "{fpath}.file_data: `{media_type}` files (only application/pdf)"
        )));
    }
    Ok(json!({
        "type": "document",
        "source": { "type": "base64", "media_type": media_type, "data": data },
    }))
}

fn assistant_blocks(m: &Obj, path: &str) -> Result<Vec<Value>> {
    let mut blocks = Vec::new();
    match field(m, "content") {
        None => {}
        Some(Value::String(s)) => blocks.extend(text_block(s)),
        Some(Value::Array(parts)) => {
            for (j, p) in parts.iter().enumerate() {
                let ppath = format!("{path}.content[{j}]");
                let p = as_obj(p, &ppath).map_err(invalid)?;
                let text = match req_str(p, "type", &ppath).map_err(invalid)? {
                    "text" => req_str(p, "text", &ppath),
                    "refusal" => req_str(p, "refusal", &ppath),
                    other => {
                        return Err(invalid(format!(
                            "{ppath}.type: `{other}` parts are not allowed in assistant messages"
                        )))
                    }
                }
                .map_err(invalid)?;
                blocks.extend(text_block(text));
            }
        }
        Some(_) => {
            return Err(invalid(format!(
                "{path}.content: must be a string or an array of parts"
            )))
        }
    }
    if field(m, "function_call").is_some() {
        return Err(TranslateError::Unsupported(format!(
            "{path}.function_call is deprecated: use tool_calls"
        )));
    }
    for (j, call) in opt_arr(m, "tool_calls", path)
        .map_err(invalid)?
        .into_iter()
        .flatten()
        .enumerate()
    {
        let cpath = format!("{path}.tool_calls[{j}]");
        let call = as_obj(call, &cpath).map_err(invalid)?;
        let kind = opt_str(call, "type", &cpath)
            .map_err(invalid)?
            .unwrap_or("function");
        if kind != "function" {
            return Err(TranslateError::Unsupported(format!(
                "{cpath}.type: `{kind}` tool calls"
            )));
        }
        let id = req_str(call, "id", &cpath).map_err(invalid)?;
        let function = req_obj(call, "function", &cpath).map_err(invalid)?;
        let fpath = format!("{cpath}.function");
        let name = req_str(function, "name", &fpath).map_err(invalid)?;
        let args = opt_str(function, "arguments", &fpath)
            .map_err(invalid)?
            .unwrap_or("");
        let input = if args.trim().is_empty() {
            json!({})
        } else {
            match serde_json::from_str::<Value>(args) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    return Err(invalid(format!(
                        "{fpath}.arguments: must encode a JSON object"
                    )))
                }
                Err(e) => return Err(invalid(format!("{fpath}.arguments: not valid JSON ({e})"))),
            }
        };
        blocks.push(json!({ "type": "tool_use", "id": id, "name": name, "input": input }));
    }
    Ok(blocks)
}

fn tool_result(m: &Obj, path: &str) -> Result<Value> {
    let id = req_str(m, "tool_call_id", path).map_err(invalid)?;
    let mut block = json!({ "type": "tool_result", "tool_use_id": id });
    let content = match field(m, "content") {
        Some(Value::String(s)) => json!(s),
        other => {
            let blocks: Vec<Value> = text_parts(other, path)?
                .iter()
                .filter_map(|t| text_block(t))
                .collect();
            json!(blocks)
        }
    };
    // Anthropic refuses empty text, and an absent `content` means an empty result.
    let empty = content.as_str().is_some_and(str::is_empty)
        || content.as_array().is_some_and(Vec::is_empty);
    if !empty {
        block["content"] = content;
    }
    Ok(block)
}

/// `tools`, `tool_choice` and `parallel_tool_calls`; a tool choice without tools is dropped, as Anthropic
/// would refuse it.
fn convert_tools(req: &Obj, out: &mut Obj) -> Result<()> {
    let tools = opt_arr(req, "tools", "").map_err(invalid)?;
    let Some(tools) = tools.filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    let mut converted = Vec::with_capacity(tools.len());
    for (j, t) in tools.iter().enumerate() {
        let tpath = format!("tools[{j}]");
        let t = as_obj(t, &tpath).map_err(invalid)?;
        let kind = opt_str(t, "type", &tpath)
            .map_err(invalid)?
            .unwrap_or("function");
        if kind != "function" {
            return Err(TranslateError::Unsupported(format!(
                "{tpath}.type: `{kind}` tools (only function)"
            )));
        }
        let f = req_obj(t, "function", &tpath).map_err(invalid)?;
        let fpath = format!("{tpath}.function");
        let mut tool = Map::new();
        tool.insert(
            "name".into(),
            json!(req_str(f, "name", &fpath).map_err(invalid)?),
        );
        if let Some(d) = opt_str(f, "description", &fpath).map_err(invalid)? {
            tool.insert("description".into(), json!(d));
        }
        let schema = opt_obj(f, "parameters", &fpath)
            .map_err(invalid)?
            .cloned()
            .map(Value::Object)
            .unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
        tool.insert("input_schema".into(), schema);
        converted.push(Value::Object(tool));
    }
    out.insert("tools".into(), Value::Array(converted));

    let mut choice = match field(req, "tool_choice") {
        None => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({ "type": "auto" }),
            "required" => json!({ "type": "any" }),
            "none" => json!({ "type": "none" }),
            other => return Err(invalid(format!("tool_choice: unknown value `{other}`"))),
        }),
        Some(Value::Object(c)) => {
            let f = req_obj(c, "function", "tool_choice").map_err(invalid)?;
            let name = req_str(f, "name", "tool_choice.function").map_err(invalid)?;
            Some(json!({ "type": "tool", "name": name }))
        }
        Some(_) => return Err(invalid("tool_choice: must be a string or an object".into())),
    };
    if opt_bool(req, "parallel_tool_calls", "").map_err(invalid)? == Some(false) {
        let c = choice.get_or_insert_with(|| json!({ "type": "auto" }));
        // `none` forbids tool use altogether; the flag is meaningless (and refused) there.
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = json!(true);
        }
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
    Ok(())
}

/// Anthropic `stop_reason` -> OpenAI `finish_reason`.
pub(super) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and anything newer.
        _ => "stop",
    }
}

/// Anthropic's prompt counts in OpenAI terms: `prompt` counts cache reads and writes, which Anthropic
/// reports apart (`cache_read_input_tokens`, `cache_creation_input_tokens`, split by lifetime in
/// `cache_creation.ephemeral_{5m,1h}_input_tokens`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PromptTokens {
    pub prompt: u64,
    pub cached: u64,
    /// Cache writes with a 5-minute lifetime (all writes when the split is not reported).
    pub write: u64,
    pub write_1h: u64,
}

pub(super) fn prompt_tokens(usage: Option<&Obj>) -> PromptTokens {
    let cached = count(usage, "cache_read_input_tokens");
    let writes = count(usage, "cache_creation_input_tokens");
    let split = usage
        .and_then(|u| u.get("cache_creation"))
        .and_then(Value::as_object);
    let write_1h = count(split, "ephemeral_1h_input_tokens").min(writes);
    PromptTokens {
        prompt: count(usage, "input_tokens") + writes + cached,
        cached,
        write: writes - write_1h,
        write_1h,
    }
}

pub(super) fn openai_usage(p: PromptTokens, completion: u64) -> Value {
    json!({
        "prompt_tokens": p.prompt,
        "completion_tokens": completion,
        "total_tokens": p.prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": p.cached,
            "cache_write_tokens": p.write,
            "cache_write_1h_tokens": p.write_1h,
        },
    })
}

/// `chatcmpl-` + the upstream's id, so logs on both sides can be matched.
pub(super) fn chat_id(upstream_id: Option<&str>) -> String {
    match upstream_id {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
    }
}

/// An Anthropic error body (`{"type":"error","error":{...}}`) as a `BadUpstream` message.
pub(super) fn upstream_error_message(o: &Obj) -> Option<(String, String)> {
    if o.get("type").and_then(Value::as_str) != Some("error") {
        return None;
    }
    let err = o.get("error").and_then(Value::as_object);
    let field = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Some((field("type"), field("message")))
}

/// Egress: Anthropic Messages response -> OpenAI `chat.completion` (model set to `client_model`).
/// Text blocks are concatenated; `tool_use` blocks become `tool_calls`; thinking and server-tool blocks are
/// dropped.
pub fn messages_response_to_chat(body: &[u8], client_model: &str) -> Result<Vec<u8>> {
    let resp = parse_upstream(body)?;
    if let Some((kind, message)) = upstream_error_message(&resp) {
        return Err(TranslateError::BadUpstream(format!(
            "Anthropic error {kind}: {message}"
        )));
    }
    let bad = TranslateError::BadUpstream;
    let blocks = opt_arr(&resp, "content", "").map_err(bad)?.ok_or_else(|| {
        TranslateError::BadUpstream("content: missing from the Messages response".into())
    })?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bpath = format!("content[{j}]");
        let b = as_obj(b, &bpath).map_err(bad)?;
        match opt_str(b, "type", &bpath).map_err(bad)? {
            Some("text") => text.push_str(opt_str(b, "text", &bpath).map_err(bad)?.unwrap_or("")),
            Some("tool_use") => {
                let input = field(b, "input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": req_str(b, "id", &bpath).map_err(bad)?,
                    "type": "function",
                    "function": {
                        "name": req_str(b, "name", &bpath).map_err(bad)?,
                        "arguments": input.to_string(),
                    },
                }));
            }
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    // `null` beside tool calls, as OpenAI does; otherwise a string, which naive clients rely on.
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    message.insert("content".into(), content);
    message.insert("refusal".into(), Value::Null);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let usage = opt_obj(&resp, "usage", "").map_err(bad)?;
    let prompt = prompt_tokens(usage);
    let completion = count(usage, "output_tokens");
    let out = json!({
        "id": chat_id(opt_str(&resp, "id", "").map_err(bad)?),
        "object": "chat.completion",
        "created": unix_now(),
        "model": client_model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(opt_str(&resp, "stop_reason", "").map_err(bad)?),
        }],
        "usage": openai_usage(prompt, completion),
    });
    Ok(out.to_string().into_bytes())
}
