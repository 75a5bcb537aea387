//! The stateless Responses API bridge, for profiles without the Responses API (chat-only presets, and
//! Anthropic through the chat translation): a Responses request becomes a Chat Completions request, and
//! the chat answer — body or stream — becomes a Responses answer. Codex and the SDKs send the whole
//! conversation each turn (`store: false`), so nothing is kept between requests.
//!
//! Request fields, decided one by one:
//! * translated: `instructions` (a first system message), `input` (a string, or `message` items of
//!   every role — `developer` becomes `system` — with `input_text`/`output_text`/`input_image`/
//!   `input_file` parts, `function_call` and `function_call_output` items), function `tools`,
//!   `tool_choice`, `parallel_tool_calls`, `max_output_tokens` (as `max_tokens`), `temperature`,
//!   `top_p`, `user`, `reasoning.effort` (as `reasoning_effort`), `text.format` (as `response_format`),
//!   `stream` (with `stream_options.include_usage`).
//! * refused (`Unsupported`, a 400 naming the field): `previous_response_id`, `conversation`,
//!   `background: true`, stored `prompt` templates and `item_reference` items (no response is kept
//!   upstream to refer to), hosted tools that run on OpenAI's servers (`file_search`,
//!   `code_interpreter`, `computer_use*`, `image_generation`, `mcp`, `local_shell`, `custom`), and
//!   `file_id` images and files.
//! * dropped, as their absence breaks no client: `reasoning` input items (encrypted reasoning cannot be
//!   handed to another provider; the model reasons afresh), `web_search*` and `namespace` tools (the
//!   model then answers without them), `store` (nothing is stored: a later `GET` is a 404), `include`,
//!   `metadata`, `prompt_cache_key`, `service_tier`, `truncation`, `text.verbosity`, `max_tool_calls`,
//!   `top_logprobs`, and any field this code does not know.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use crate::wire::anthropic::TranslateError;
use crate::wire::sse::SseFramer;

type Obj = Map<String, Value>;
type Result<T> = std::result::Result<T, TranslateError>;

fn unsupported(msg: String) -> TranslateError {
    TranslateError::Unsupported(msg)
}

fn invalid(msg: String) -> TranslateError {
    TranslateError::InvalidRequest(msg)
}

fn obj<'a>(v: &'a Value, path: &str) -> Result<&'a Obj> {
    v.as_object()
        .ok_or_else(|| invalid(format!("{path}: must be an object")))
}

fn str_of<'a>(o: &'a Obj, key: &str, path: &str) -> Result<Option<&'a str>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{path}{key}: must be a string"))),
    }
}

fn is_set(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null) | Some(Value::Bool(false)))
}

/// A Responses request -> a Chat Completions request body (the model name as the client sent it).
pub fn responses_request_to_chat(body: &[u8]) -> Result<Vec<u8>> {
    let req: Obj = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(TranslateError::InvalidJson("expected a JSON object".into())),
        Err(e) => return Err(TranslateError::InvalidJson(e.to_string())),
    };
    for (key, why) in [
        ("previous_response_id", "this profile has no Responses API and keeps no responses: send the whole conversation in `input`"),
        ("conversation", "this profile has no Responses API and keeps no conversations"),
        ("background", "background responses need the Responses API"),
        ("prompt", "stored prompt templates need the Responses API"),
    ] {
        if is_set(req.get(key)) {
            return Err(unsupported(format!("{key}: {why}")));
        }
    }
    let mut out = Map::new();
    if let Some(m) = req.get("model") {
        out.insert("model".into(), m.clone());
    }
    let mut messages = Vec::new();
    if let Some(text) = str_of(&req, "instructions", "")? {
        messages.push(json!({"role": "system", "content": text}));
    }
    match req.get("input") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                push_item(
                    &mut messages,
                    obj(item, &format!("input[{i}]"))?,
                    &format!("input[{i}]"),
                )?;
            }
        }
        Some(_) => {
            return Err(invalid(
                "input: must be a string or an array of items".into(),
            ))
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    let stream = req.get("stream").and_then(Value::as_bool) == Some(true);
    if stream {
        out.insert("stream".into(), json!(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(n) = req.get("max_output_tokens").filter(|v| !v.is_null()) {
        out.insert("max_tokens".into(), n.clone());
    }
    for key in ["temperature", "top_p", "user", "parallel_tool_calls"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(r) = req.get("reasoning").filter(|v| !v.is_null()) {
        if let Some(effort) = str_of(obj(r, "reasoning")?, "effort", "reasoning.")? {
            out.insert("reasoning_effort".into(), json!(effort));
        }
    }
    if let Some(t) = req.get("text").filter(|v| !v.is_null()) {
        if let Some(f) = obj(t, "text")?.get("format").filter(|v| !v.is_null()) {
            if let Some(rf) = response_format(obj(f, "text.format")?)? {
                out.insert("response_format".into(), rf);
            }
        }
    }
    if let Some(Value::Array(tools)) = req.get("tools") {
        let converted = tools
            .iter()
            .enumerate()
            .map(|(i, t)| tool(obj(t, &format!("tools[{i}]"))?, i))
            .collect::<Result<Vec<_>>>()?;
        let converted: Vec<Value> = converted.into_iter().flatten().collect();
        if !converted.is_empty() {
            out.insert("tools".into(), Value::Array(converted));
            if let Some(c) = req.get("tool_choice").filter(|v| !v.is_null()) {
                out.insert("tool_choice".into(), tool_choice(c)?);
            }
        } else {
            // A tool choice or parallel flag without tools is refused by chat APIs.
            out.remove("parallel_tool_calls");
        }
    } else {
        out.remove("parallel_tool_calls");
    }
    Ok(Value::Object(out).to_string().into_bytes())
}

/// One `input` item appended as chat messages.
fn push_item(messages: &mut Vec<Value>, item: &Obj, path: &str) -> Result<()> {
    let kind = match str_of(item, "type", &format!("{path}."))? {
        Some(k) => k,
        None if item.contains_key("role") => "message",
        None => return Err(invalid(format!("{path}.type: is required"))),
    };
    match kind {
        "message" => messages.push(message(item, path)?),
        "function_call" => {
            let call_id = str_of(item, "call_id", &format!("{path}."))?
                .ok_or_else(|| invalid(format!("{path}.call_id: is required")))?;
            let name = str_of(item, "name", &format!("{path}."))?
                .ok_or_else(|| invalid(format!("{path}.name: is required")))?;
            let arguments = str_of(item, "arguments", &format!("{path}."))?.unwrap_or("{}");
            let call = json!({"id": call_id, "type": "function",
                              "function": {"name": name, "arguments": arguments}});
            // Calls of one turn belong to one assistant message (with its text, if any).
            match messages.last_mut() {
                Some(Value::Object(last)) if last.get("role") == Some(&json!("assistant")) => {
                    let calls = last.entry("tool_calls").or_insert_with(|| json!([]));
                    if let Value::Array(calls) = calls {
                        calls.push(call);
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let call_id = str_of(item, "call_id", &format!("{path}."))?
                .ok_or_else(|| invalid(format!("{path}.call_id: is required")))?;
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => texts(parts, &format!("{path}.output"))?.join(""),
                _ => return Err(invalid(format!("{path}.output: must be a string or parts"))),
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // Encrypted reasoning belongs to the provider that made it; the model reasons afresh.
        "reasoning" => {}
        "item_reference" => {
            return Err(unsupported(format!(
                "{path}.type: `item_reference` needs a stored response (this profile keeps none)"
            )))
        }
        other => {
            return Err(unsupported(format!(
                "{path}.type: `{other}` items cannot be sent to a chat-completions upstream"
            )))
        }
    }
    Ok(())
}

/// A `message` item: user and assistant keep their role, `system` and `developer` become `system`.
fn message(item: &Obj, path: &str) -> Result<Value> {
    let role = str_of(item, "role", &format!("{path}."))?
        .ok_or_else(|| invalid(format!("{path}.role: is required")))?;
    let role = match role {
        "user" => "user",
        "assistant" => "assistant",
        "system" | "developer" => "system",
        other => return Err(invalid(format!("{path}.role: unknown role `{other}`"))),
    };
    let content = match item.get("content") {
        Some(Value::String(s)) => json!(s),
        Some(Value::Array(parts)) if role == "user" => {
            let parts = parts
                .iter()
                .enumerate()
                .map(|(j, p)| user_part(obj(p, path)?, &format!("{path}.content[{j}]")))
                .collect::<Result<Vec<_>>>()?;
            Value::Array(parts)
        }
        Some(Value::Array(parts)) => json!(texts(parts, &format!("{path}.content"))?.join("")),
        _ => {
            return Err(invalid(format!(
                "{path}.content: must be a string or parts"
            )))
        }
    };
    Ok(json!({"role": role, "content": content}))
}

/// The texts of parts that may only hold text (assistant, system, tool output).
fn texts(parts: &[Value], path: &str) -> Result<Vec<String>> {
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let ppath = format!("{path}[{j}]");
            let p = obj(p, &ppath)?;
            match str_of(p, "type", &format!("{ppath}."))? {
                Some("input_text" | "output_text" | "text") => {
                    Ok(str_of(p, "text", &format!("{ppath}."))?
                        .unwrap_or("")
                        .to_owned())
                }
                Some("refusal") => Ok(str_of(p, "refusal", &format!("{ppath}."))?
                    .unwrap_or("")
                    .to_owned()),
                other => Err(unsupported(format!(
                    "{ppath}.type: `{}` parts are not allowed here, only text",
                    other.unwrap_or("")
                ))),
            }
        })
        .collect()
}

fn user_part(p: &Obj, path: &str) -> Result<Value> {
    let at = format!("{path}.");
    match str_of(p, "type", &at)? {
        Some("input_text" | "output_text" | "text") => {
            Ok(json!({"type": "text", "text": str_of(p, "text", &at)?.unwrap_or("")}))
        }
        Some("input_image") => {
            let Some(url) = str_of(p, "image_url", &at)? else {
                return Err(unsupported(format!(
                    "{path}.file_id: uploaded files cannot be reached from this profile; send image_url"
                )));
            };
            let mut image = json!({"url": url});
            if let Some(d) = str_of(p, "detail", &at)? {
                image["detail"] = json!(d);
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        Some("input_file") => {
            let Some(data) = str_of(p, "file_data", &at)? else {
                return Err(unsupported(format!(
                    "{path}.file_id: only inline file_data can be bridged"
                )));
            };
            let mut file = json!({"file_data": data});
            if let Some(name) = str_of(p, "filename", &at)? {
                file["filename"] = json!(name);
            }
            Ok(json!({"type": "file", "file": file}))
        }
        other => Err(unsupported(format!(
            "{path}.type: `{}` content parts",
            other.unwrap_or("")
        ))),
    }
}

/// A Responses tool as a chat tool; `None` for the hosted tools that are dropped.
fn tool(t: &Obj, i: usize) -> Result<Option<Value>> {
    let path = format!("tools[{i}]");
    let kind = str_of(t, "type", &format!("{path}."))?.unwrap_or("function");
    match kind {
        "function" => {
            let mut f = Map::new();
            let name = str_of(t, "name", &format!("{path}."))?
                .ok_or_else(|| invalid(format!("{path}.name: is required")))?;
            f.insert("name".into(), json!(name));
            for key in ["description", "parameters", "strict"] {
                if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                    f.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "function", "function": f})))
        }
        k if k.starts_with("web_search") || k == "namespace" => Ok(None),
        other => Err(unsupported(format!(
            "{path}.type: `{other}` tools run on OpenAI's servers; only function tools can be bridged"
        ))),
    }
}

fn tool_choice(c: &Value) -> Result<Value> {
    match c {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(c.clone()),
        Value::Object(o) if o.get("type") == Some(&json!("function")) => {
            let name = str_of(o, "name", "tool_choice.")?
                .ok_or_else(|| invalid("tool_choice.name: is required".into()))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(unsupported(
            "tool_choice: only auto, none, required or a function can be bridged".into(),
        )),
    }
}

fn response_format(f: &Obj) -> Result<Option<Value>> {
    match str_of(f, "type", "text.format.")? {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = f.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        Some(other) => Err(unsupported(format!("text.format.type: `{other}`"))),
    }
}

// ---- answers ----

/// The part of an id after the chat API's prefix, for ids of our own (`resp_…`, `msg_…`).
fn id_base(chat_id: Option<&str>) -> String {
    match chat_id.map(|id| id.strip_prefix("chatcmpl-").unwrap_or(id)) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Chat usage in the Responses API's words (cache reads and reasoning as their details).
fn responses_usage(u: &Value) -> Value {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let input = n(&u["prompt_tokens"]);
    let output = n(&u["completion_tokens"]);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": n(&u["prompt_tokens_details"]["cached_tokens"])},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": n(&u["completion_tokens_details"]["reasoning_tokens"])},
        "total_tokens": input + output,
    })
}

/// The response object around `output`: the fields the SDKs read, with a status from `finish`.
fn response_object(id: &str, model: &str, created: u64, finish: Option<&str>) -> Value {
    let (status, incomplete) = match finish {
        None => ("in_progress", Value::Null),
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        Some(_) => ("completed", Value::Null),
    };
    json!({
        "id": id, "object": "response", "created_at": created, "status": status,
        "error": null, "incomplete_details": incomplete, "instructions": null, "metadata": {},
        "model": model, "output": [], "parallel_tool_calls": true, "tool_choice": "auto",
        "tools": [], "temperature": null, "top_p": null, "usage": null,
    })
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [{"type": "summary_text", "text": text}]})
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn call_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
           "name": name, "arguments": arguments, "status": status})
}

/// A whole chat answer -> a Responses answer named `model`.
pub fn chat_response_to_responses(body: &[u8], model: &str) -> Result<Vec<u8>> {
    let chat: Value = serde_json::from_slice(body)
        .map_err(|e| TranslateError::BadUpstream(format!("not JSON: {e}")))?;
    let base = id_base(chat["id"].as_str());
    let choice = &chat["choices"][0];
    let m = &choice["message"];
    let mut output = Vec::new();
    let reasoning = m["reasoning_content"].as_str().or(m["reasoning"].as_str());
    if let Some(r) = reasoning.filter(|r| !r.is_empty()) {
        output.push(reasoning_item(&format!("rs_{base}"), r));
    }
    let text = match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    };
    if !text.is_empty() {
        output.push(message_item(&format!("msg_{base}"), &text, "completed"));
    }
    if let Some(refusal) = m["refusal"].as_str().filter(|r| !r.is_empty()) {
        output.push(
            json!({"type": "message", "id": format!("msg_{base}_refusal"), "status": "completed",
            "role": "assistant", "content": [{"type": "refusal", "refusal": refusal}]}),
        );
    }
    for call in m["tool_calls"].as_array().into_iter().flatten() {
        let id = call["id"].as_str().unwrap_or_default();
        let f = &call["function"];
        output.push(call_item(
            id,
            f["name"].as_str().unwrap_or_default(),
            f["arguments"].as_str().unwrap_or("{}"),
            "completed",
        ));
    }
    let created = chat["created"].as_u64().unwrap_or_else(unix_now);
    let finish = choice["finish_reason"].as_str().unwrap_or("stop");
    let mut r = response_object(&format!("resp_{base}"), model, created, Some(finish));
    r["output"] = Value::Array(output);
    if chat["usage"].is_object() {
        r["usage"] = responses_usage(&chat["usage"]);
    }
    Ok(r.to_string().into_bytes())
}

// ---- streams ----

/// The output item being streamed; chat has no item boundaries, so an item closes when another
/// kind starts, or at the end.
#[derive(Debug)]
enum Open {
    Reasoning { text: String },
    Message { text: String },
    Call { chat_index: u64 },
}

#[derive(Debug)]
struct Call {
    call_id: String,
    name: String,
    arguments: String,
    output_index: u64,
}

/// Follows one chat stream and re-emits it as the Responses API's events: `response.created` and
/// `response.in_progress`, per item `response.output_item.added` ... `response.output_item.done`
/// (text: `content_part.added`, `output_text.delta`, `output_text.done`, `content_part.done`; calls:
/// `function_call_arguments.delta` / `.done`; reasoning: `reasoning_summary_part.added`,
/// `reasoning_summary_text.delta` / `.done`, `reasoning_summary_part.done`), and at `[DONE]`
/// `response.completed` (or `response.incomplete`) with every item and the usage.
#[derive(Debug)]
pub struct ChatStreamToResponses {
    framer: SseFramer,
    model: String,
    /// The chat id without its prefix: the base of the response's and its items' ids.
    base: String,
    id: String,
    created: u64,
    started: bool,
    seq: u64,
    open: Option<Open>,
    /// Finished items, in output order, for `response.completed`.
    items: Vec<Value>,
    calls: HashMap<u64, Call>,
    finish: Option<String>,
    usage: Option<Value>,
    finished: bool,
}

impl ChatStreamToResponses {
    /// A translator whose events name `model`.
    pub fn new(model: &str) -> ChatStreamToResponses {
        ChatStreamToResponses {
            framer: SseFramer::new(),
            model: model.to_owned(),
            base: String::new(),
            id: String::new(),
            created: unix_now(),
            started: false,
            seq: 0,
            open: None,
            items: Vec::new(),
            calls: HashMap::new(),
            finish: None,
            usage: None,
            finished: false,
        }
    }

    /// Takes chat SSE bytes in any chunking; returns whole Responses events (possibly none).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Bytes> {
        let mut out = BytesMut::new();
        if self.finished {
            return Ok(out.freeze());
        }
        let frames = self
            .framer
            .push(bytes)
            .map_err(|e| TranslateError::BadUpstream(e.to_string()))?;
        for frame in frames {
            let Some(data) = frame.data() else { continue };
            if data.trim_ascii() == b"[DONE]" {
                self.end(&mut out);
                break;
            }
            let chunk: Value = serde_json::from_slice(&data)
                .map_err(|e| TranslateError::BadUpstream(format!("chunk is not JSON: {e}")))?;
            self.chunk(&chunk, &mut out);
        }
        Ok(out.freeze())
    }

    fn emit(&mut self, out: &mut BytesMut, kind: &str, mut data: Value) {
        self.seq += 1;
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        out.extend_from_slice(format!("event: {kind}\ndata: {data}\n\n").as_bytes());
    }

    fn start(&mut self, chat_id: Option<&str>, out: &mut BytesMut) {
        self.started = true;
        self.base = id_base(chat_id);
        self.id = format!("resp_{}", self.base);
        let r = response_object(&self.id, &self.model, self.created, None);
        self.emit(out, "response.created", json!({"response": r}));
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    fn chunk(&mut self, chunk: &Value, out: &mut BytesMut) {
        if chunk["usage"].is_object() {
            self.usage = Some(chunk["usage"].clone());
        }
        if !self.started {
            self.start(chunk["id"].as_str(), out);
        }
        let Some(choice) = chunk["choices"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["index"].as_u64().unwrap_or(0) == 0))
        else {
            return;
        };
        let delta = &choice["delta"];
        for key in ["reasoning_content", "reasoning"] {
            if let Some(t) = delta[key].as_str().filter(|t| !t.is_empty()) {
                self.reasoning(t, out);
            }
        }
        for key in ["content", "refusal"] {
            if let Some(t) = delta[key].as_str().filter(|t| !t.is_empty()) {
                self.text(t, out);
            }
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            self.tool_call(call, out);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_owned());
        }
    }

    fn next_index(&self) -> u64 {
        self.items.len() as u64
    }

    fn reasoning(&mut self, text: &str, out: &mut BytesMut) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.close(out);
            let (id, index) = (
                format!("rs_{}_{}", self.base, self.next_index()),
                self.next_index(),
            );
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": index,
                "item": {"type": "reasoning", "id": id, "summary": []}}),
            );
            self.emit(out, "response.reasoning_summary_part.added", json!({"item_id": id,
                "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}));
            self.open = Some(Open::Reasoning {
                text: String::new(),
            });
        }
        if let Some(Open::Reasoning { text: all }) = &mut self.open {
            all.push_str(text);
        }
        let (id, index) = (
            format!("rs_{}_{}", self.base, self.next_index()),
            self.next_index(),
        );
        self.emit(
            out,
            "response.reasoning_summary_text.delta",
            json!({"item_id": id,
            "output_index": index, "summary_index": 0, "delta": text}),
        );
    }

    fn text(&mut self, text: &str, out: &mut BytesMut) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close(out);
            let (id, index) = (
                format!("msg_{}_{}", self.base, self.next_index()),
                self.next_index(),
            );
            self.emit(out, "response.output_item.added", json!({"output_index": index,
                "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}));
            self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": index,
                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}));
            self.open = Some(Open::Message {
                text: String::new(),
            });
        }
        if let Some(Open::Message { text: all }) = &mut self.open {
            all.push_str(text);
        }
        let (id, index) = (
            format!("msg_{}_{}", self.base, self.next_index()),
            self.next_index(),
        );
        self.emit(
            out,
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index,
            "content_index": 0, "delta": text}),
        );
    }

    fn tool_call(&mut self, call: &Value, out: &mut BytesMut) {
        let chat_index = call["index"].as_u64().unwrap_or(0);
        let is_open = matches!(self.open, Some(Open::Call { chat_index: i }) if i == chat_index);
        if !is_open && !self.calls.contains_key(&chat_index) {
            self.close(out);
            let call_id = call["id"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("call_{}", uuid::Uuid::new_v4().simple()));
            let name = call["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let index = self.next_index();
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": index,
                "item": call_item(&call_id, &name, "", "in_progress")}),
            );
            self.calls.insert(
                chat_index,
                Call {
                    call_id,
                    name,
                    arguments: String::new(),
                    output_index: index,
                },
            );
            self.open = Some(Open::Call { chat_index });
        }
        let Some(c) = self.calls.get_mut(&chat_index) else {
            return;
        };
        if let Some(args) = call["function"]["arguments"]
            .as_str()
            .filter(|a| !a.is_empty())
        {
            c.arguments.push_str(args);
            let (id, index) = (format!("fc_{}", c.call_id), c.output_index);
            self.emit(
                out,
                "response.function_call_arguments.delta",
                json!({"item_id": id,
                "output_index": index, "delta": args}),
            );
        }
    }

    /// Closes the open item: its `.done` events, and the item kept for `response.completed`.
    fn close(&mut self, out: &mut BytesMut) {
        let index = self.next_index();
        match self.open.take() {
            None => {}
            Some(Open::Reasoning { text }) => {
                let id = format!("rs_{}_{index}", self.base);
                self.emit(
                    out,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id,
                    "output_index": index, "summary_index": 0, "text": text}),
                );
                self.emit(out, "response.reasoning_summary_part.done", json!({"item_id": id,
                    "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": text}}));
                let item = reasoning_item(&id, &text);
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.items.push(item);
            }
            Some(Open::Message { text }) => {
                let id = format!("msg_{}_{index}", self.base);
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index,
                    "content_index": 0, "text": text}),
                );
                self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": index,
                    "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}}));
                let item = message_item(&id, &text, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.items.push(item);
            }
            Some(Open::Call { chat_index }) => {
                let Some(c) = self.calls.get(&chat_index) else {
                    return;
                };
                let item = call_item(&c.call_id, &c.name, &c.arguments, "completed");
                let (id, args) = (format!("fc_{}", c.call_id), c.arguments.clone());
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id,
                    "output_index": index, "arguments": args}),
                );
                self.emit(
                    out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.items.push(item);
            }
        }
    }

    /// `[DONE]`: the last item closed, then the whole response with its usage.
    fn end(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.start(None, out);
        }
        self.close(out);
        self.finished = true;
        let finish = self.finish.clone().unwrap_or_else(|| "stop".into());
        let mut r = response_object(&self.id, &self.model, self.created, Some(&finish));
        r["output"] = Value::Array(std::mem::take(&mut self.items));
        if let Some(u) = &self.usage {
            r["usage"] = responses_usage(u);
        }
        let kind = match r["status"].as_str() {
            Some("incomplete") => "response.incomplete",
            _ => "response.completed",
        };
        self.emit(out, kind, json!({"response": r}));
    }

    /// True once `[DONE]` was seen and the closing event written.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_chat(body: Value) -> Value {
        serde_json::from_slice(&responses_request_to_chat(body.to_string().as_bytes()).unwrap())
            .unwrap()
    }

    fn refused(body: Value) -> String {
        match responses_request_to_chat(body.to_string().as_bytes()) {
            Err(e @ TranslateError::Unsupported(_)) => e.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_conversation_with_tools_becomes_chat_messages() {
        let chat = to_chat(json!({
            "model": "m", "instructions": "be brief", "stream": true, "max_output_tokens": 100,
            "reasoning": {"effort": "high", "summary": "auto"}, "store": false,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k",
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
                {"role": "user", "content": [{"type": "input_text", "text": "list files"},
                    {"type": "input_image", "image_url": "https://x/y.png"}]},
                {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAA", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                {"type": "function_call", "call_id": "call_1", "name": "ls", "arguments": "{\"d\":\".\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "pwd", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "a b"},
                {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "/"}]},
            ],
            "tools": [
                {"type": "function", "name": "ls", "description": "list", "parameters": {"type": "object"}, "strict": false},
                {"type": "web_search", "external_web_access": false},
            ],
            "tool_choice": "auto", "parallel_tool_calls": true,
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
        }));
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "system", "content": "rules"},
                {"role": "user", "content": [{"type": "text", "text": "list files"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                {"role": "assistant", "content": "ok", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "ls", "arguments": "{\"d\":\".\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "pwd", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a b"},
                {"role": "tool", "tool_call_id": "call_2", "content": "/"},
            ])
        );
        assert_eq!(
            chat["tools"],
            json!([{"type": "function", "function": {"name": "ls", "description": "list",
                "parameters": {"type": "object"}, "strict": false}}])
        );
        assert_eq!(chat["stream_options"], json!({"include_usage": true}));
        assert_eq!(chat["max_tokens"], 100);
        assert_eq!(chat["reasoning_effort"], "high");
        assert_eq!(chat["response_format"]["json_schema"]["name"], "s");
        for dropped in [
            "store",
            "include",
            "prompt_cache_key",
            "input",
            "instructions",
        ] {
            assert!(chat.get(dropped).is_none(), "{dropped}");
        }
    }

    #[test]
    fn what_needs_the_responses_api_is_refused_naming_the_field() {
        for (body, field) in [
            (
                json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                json!({"model": "m", "input": "hi", "background": true}),
                "background",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": "hi", "tools": [{"type": "file_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].file_id",
            ),
        ] {
            let e = refused(body);
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn a_chat_answer_becomes_a_response_with_items_and_usage() {
        let chat = json!({"id": "chatcmpl-abc", "object": "chat.completion", "created": 7, "model": "u",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "content": "Looking.", "reasoning_content": "think",
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4},
                      "completion_tokens_details": {"reasoning_tokens": 2}}});
        let r: Value = serde_json::from_slice(
            &chat_response_to_responses(chat.to_string().as_bytes(), "gpt").unwrap(),
        )
        .unwrap();
        assert_eq!(r["id"], "resp_abc");
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["model"], "gpt");
        let kinds: Vec<&str> = r["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["reasoning", "message", "function_call"]);
        assert_eq!(r["output"][1]["content"][0]["text"], "Looking.");
        assert_eq!(r["output"][2]["call_id"], "call_9");
        assert_eq!(r["usage"]["input_tokens"], 10);
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 4);
        assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 2);
        let cut = json!({"id": "x", "choices": [{"index": 0, "finish_reason": "length", "message": {"content": "a"}}]});
        let r: Value = serde_json::from_slice(
            &chat_response_to_responses(cut.to_string().as_bytes(), "g").unwrap(),
        )
        .unwrap();
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
    }

    const CHAT_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"reasoning_content\":\"hm\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"ls\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"d\\\":\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
        "data: [DONE]\n\n",
    );

    fn events(bytes: &[u8]) -> Vec<Value> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once("\ndata: ").unwrap();
                let v: Value = serde_json::from_str(data).unwrap();
                assert_eq!(name.strip_prefix("event: "), v["type"].as_str());
                v
            })
            .collect()
    }

    #[test]
    fn a_chat_stream_becomes_the_responses_events_at_every_split() {
        let mut first: Option<Vec<Value>> = None;
        for cut in 0..CHAT_STREAM.len() {
            let mut t = ChatStreamToResponses::new("gpt");
            let (a, b) = CHAT_STREAM.as_bytes().split_at(cut);
            let mut all = t.push(a).unwrap().to_vec();
            all.extend_from_slice(&t.push(b).unwrap());
            assert!(t.is_finished(), "split at {cut}");
            let mut evs = events(&all);
            for e in &mut evs {
                if let Some(r) = e.get_mut("response") {
                    r["created_at"] = json!(0);
                }
            }
            match &first {
                None => first = Some(evs),
                Some(f) => assert_eq!(f, &evs, "split at {cut}"),
            }
        }
        let evs = first.unwrap();
        let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let seqs: Vec<u64> = evs
            .iter()
            .map(|e| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        let done = &evs.last().unwrap()["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][1]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][2]["arguments"], "{\"d\":1}");
        assert_eq!(done["output"][2]["call_id"], "call_1");
        assert_eq!(done["usage"]["input_tokens"], 3);
        assert_eq!(evs[0]["response"]["id"], done["id"]);
        assert_eq!(evs[16]["output_index"], 2);
    }
}
