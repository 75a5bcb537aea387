//! The `Agent` behaviour: one tool round trip, as a coding agent's model would make it. Offered a shell
//! tool (Claude Code's `Bash`, Codex's `exec_command` or `shell`) in a conversation with no tool result
//! yet, the mock calls it to print [`MARKER`]; once a result is there, it answers in text quoting the
//! result. In all three dialects (Messages, Chat Completions, Responses), JSON or streamed. Any other
//! request gets the echo.

use serde_json::{json, Value};

use crate::openai::{EchoCtx, Response};

/// What the called tool is asked to print, and what the final answer quotes back.
pub const MARKER: &str = "switchyard-tool-ok";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Messages,
    Chat,
    Responses,
}

/// The tool call to make: its name and JSON arguments.
fn shell_call(dialect: Dialect, tools: &[Value]) -> Option<(String, Value)> {
    let name_of = |t: &Value| match dialect {
        Dialect::Chat => t["function"]["name"].as_str().map(str::to_owned),
        _ => t["name"].as_str().map(str::to_owned),
    };
    let names: Vec<String> = tools.iter().filter_map(name_of).collect();
    let command = format!("echo {MARKER}");
    for (name, args) in [
        (
            "Bash",
            json!({"command": command, "description": "Print a marker"}),
        ),
        ("exec_command", json!({"cmd": command})),
        ("shell", json!({"command": ["bash", "-lc", command]})),
    ] {
        if names.iter().any(|n| n == name) {
            return Some((name.to_owned(), args));
        }
    }
    None
}

/// The text of the last tool result in the conversation, if there is one.
fn tool_result(dialect: Dialect, req: &Value) -> Option<String> {
    fn text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().map(text).collect::<Vec<_>>().join(""),
            Value::Object(o) => o
                .get("text")
                .or(o.get("content"))
                .map(text)
                .unwrap_or_default(),
            _ => String::new(),
        }
    }
    match dialect {
        Dialect::Messages => req["messages"].as_array()?.iter().rev().find_map(|m| {
            let blocks = m["content"].as_array()?;
            let r = blocks.iter().find(|b| b["type"] == "tool_result")?;
            Some(text(&r["content"]))
        }),
        Dialect::Chat => req["messages"]
            .as_array()?
            .iter()
            .rev()
            .find(|m| m["role"] == "tool")
            .map(|m| text(&m["content"])),
        Dialect::Responses => req["input"]
            .as_array()?
            .iter()
            .rev()
            .find(|i| i["type"] == "function_call_output")
            .map(|i| text(&i["output"])),
    }
}

/// The agent's answer to `path`, or `None` when the echo should answer.
pub(crate) fn answer(method: &str, path: &str, body: &[u8], ctx: &EchoCtx<'_>) -> Option<Response> {
    let path = path.split('?').next().unwrap_or_default();
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let dialect = match (method, path) {
        ("POST", "/messages") => Dialect::Messages,
        ("POST", "/chat/completions") => Dialect::Chat,
        ("POST", "/responses") => Dialect::Responses,
        _ => return None,
    };
    let req: Value = serde_json::from_slice(body).ok()?;
    let stream = req["stream"] == true;
    let reply = match tool_result(dialect, &req) {
        Some(result) => Turn::Text(format!("The tool printed: {}", result.trim())),
        None => {
            let tools = req["tools"].as_array()?;
            let (name, args) = shell_call(dialect, tools)?;
            Turn::Call { name, args }
        }
    };
    let model = req["model"].clone();
    let id = format!("{}_{}", ctx.name, ctx.seq);
    Some(match (dialect, stream) {
        (Dialect::Messages, false) => fixed(messages_body(&id, &model, &reply)),
        (Dialect::Messages, true) => Response::Stream {
            events: messages_stream(&id, &model, &reply),
        },
        (Dialect::Chat, false) => fixed(chat_body(&id, &model, &reply)),
        (Dialect::Chat, true) => Response::Stream {
            events: chat_stream(&id, &model, &reply),
        },
        (Dialect::Responses, false) => fixed(responses_body(&id, &model, &reply, "completed")),
        (Dialect::Responses, true) => Response::Stream {
            events: responses_stream(&id, &model, &reply),
        },
    })
}

enum Turn {
    Text(String),
    Call { name: String, args: Value },
}

fn fixed(body: Value) -> Response {
    Response::Fixed {
        status: 200,
        body: body.to_string(),
    }
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn messages_body(id: &str, model: &Value, turn: &Turn) -> Value {
    let (content, stop) = match turn {
        Turn::Text(t) => (json!([{"type": "text", "text": t}]), "end_turn"),
        Turn::Call { name, args } => (
            json!([{"type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": args}]),
            "tool_use",
        ),
    };
    json!({"id": format!("msg_{id}"), "type": "message", "role": "assistant", "model": model,
           "content": content, "stop_reason": stop, "stop_sequence": null,
           "usage": {"input_tokens": 10, "output_tokens": 5}})
}

fn messages_stream(id: &str, model: &Value, turn: &Turn) -> Vec<String> {
    let mut start = messages_body(id, model, turn);
    let done = start.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"] = json!({"input_tokens": 10, "output_tokens": 1});
    let mut out = vec![event(
        "message_start",
        json!({"type": "message_start", "message": start}),
    )];
    let (block, delta) = match turn {
        Turn::Text(t) => (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": t}),
        ),
        Turn::Call { name, args } => (
            json!({"type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": {}}),
            json!({"type": "input_json_delta", "partial_json": args.to_string()}),
        ),
    };
    out.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": block}),
    ));
    out.push(event(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0, "delta": delta}),
    ));
    out.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(event("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": done["stop_reason"], "stop_sequence": null}, "usage": {"output_tokens": 5}})));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}

fn chat_message(id: &str, turn: &Turn) -> (Value, &'static str) {
    match turn {
        Turn::Text(t) => (json!({"role": "assistant", "content": t}), "stop"),
        Turn::Call { name, args } => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("call_{id}"),
                "type": "function", "function": {"name": name, "arguments": args.to_string()}}]}),
            "tool_calls",
        ),
    }
}

fn chat_body(id: &str, model: &Value, turn: &Turn) -> Value {
    let (message, finish) = chat_message(id, turn);
    json!({"id": format!("chatcmpl-{id}"), "object": "chat.completion", "created": 0, "model": model,
           "choices": [{"index": 0, "message": message, "finish_reason": finish}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
}

fn chat_stream(id: &str, model: &Value, turn: &Turn) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": format!("chatcmpl-{id}"), "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let (message, finish) = chat_message(id, turn);
    let delta = match turn {
        Turn::Text(t) => json!({"role": "assistant", "content": t}),
        Turn::Call { .. } => {
            let mut call = message["tool_calls"][0].clone();
            call["index"] = json!(0);
            json!({"role": "assistant", "tool_calls": [call]})
        }
    };
    let usage = json!({"id": format!("chatcmpl-{id}"), "object": "chat.completion.chunk", "created": 0,
        "model": model, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}});
    vec![
        chunk(delta, Value::Null),
        chunk(json!({}), json!(finish)),
        format!("data: {usage}\n\n"),
        "data: [DONE]\n\n".to_owned(),
    ]
}

fn responses_item(id: &str, turn: &Turn, status: &str) -> Value {
    match turn {
        Turn::Text(t) => {
            json!({"type": "message", "id": format!("msg_{id}"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": t, "annotations": []}]})
        }
        Turn::Call { name, args } => json!({"type": "function_call", "id": format!("fc_{id}"),
            "call_id": format!("call_{id}"), "name": name, "arguments": args.to_string(), "status": status}),
    }
}

fn responses_body(id: &str, model: &Value, turn: &Turn, status: &str) -> Value {
    json!({"id": format!("resp_{id}"), "object": "response", "created_at": 0, "status": status,
           "model": model, "output": [responses_item(id, turn, "completed")],
           "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
                     "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}})
}

fn responses_stream(id: &str, model: &Value, turn: &Turn) -> Vec<String> {
    let mut started = responses_body(id, model, turn, "in_progress");
    started["output"] = json!([]);
    started["usage"] = Value::Null;
    let done = responses_body(id, model, turn, "completed");
    let item = &done["output"][0];
    let mut adding = responses_item(id, turn, "in_progress");
    let mut seq = 0;
    let mut ev = |name: &str, mut data: Value| {
        seq += 1;
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        event(name, data)
    };
    let mut out = vec![
        ev("response.created", json!({"response": started})),
        ev("response.in_progress", json!({"response": started})),
    ];
    let item_id = item["id"].clone();
    match turn {
        Turn::Text(t) => {
            adding["content"] = json!([]);
            out.push(ev(
                "response.output_item.added",
                json!({"output_index": 0, "item": adding}),
            ));
            out.push(ev("response.content_part.added", json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})));
            out.push(ev(
                "response.output_text.delta",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "delta": t}),
            ));
            out.push(ev(
                "response.output_text.done",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "text": t}),
            ));
            out.push(ev(
                "response.content_part.done",
                json!({"item_id": item_id, "output_index": 0,
                "content_index": 0, "part": item["content"][0]}),
            ));
        }
        Turn::Call { args, .. } => {
            adding["arguments"] = json!("");
            out.push(ev(
                "response.output_item.added",
                json!({"output_index": 0, "item": adding}),
            ));
            out.push(ev(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id,
                "output_index": 0, "delta": args.to_string()}),
            ));
            out.push(ev(
                "response.function_call_arguments.done",
                json!({"item_id": item_id,
                "output_index": 0, "arguments": args.to_string()}),
            ));
        }
    }
    out.push(ev(
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    ));
    out.push(ev("response.completed", json!({"response": done})));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> EchoCtx<'static> {
        EchoCtx {
            name: "m",
            seq: 1,
            created: 0,
            models: &[],
        }
    }

    fn body(resp: Response) -> Value {
        match resp {
            Response::Fixed { body, .. } => serde_json::from_str(&body).unwrap(),
            Response::Stream { .. } => panic!("a stream"),
        }
    }

    #[test]
    fn a_shell_tool_is_called_once_then_its_result_is_quoted() {
        let first = json!({"model": "c", "tools": [{"name": "Read"}, {"name": "Bash"}],
            "messages": [{"role": "user", "content": "go"}]});
        let v = body(answer("POST", "/v1/messages", first.to_string().as_bytes(), &ctx()).unwrap());
        assert_eq!(v["content"][0]["name"], "Bash");
        assert_eq!(v["stop_reason"], "tool_use");
        let second = json!({"model": "c", "tools": [{"name": "Bash"}], "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "switchyard-tool-ok\n"}]}]});
        let v = body(
            answer(
                "POST",
                "/v1/messages",
                second.to_string().as_bytes(),
                &ctx(),
            )
            .unwrap(),
        );
        assert_eq!(
            v["content"][0]["text"],
            format!("The tool printed: {MARKER}")
        );
        let codex = json!({"model": "g", "tools": [{"type": "function", "name": "exec_command"}], "input": []});
        let v = body(
            answer(
                "POST",
                "/v1/responses",
                codex.to_string().as_bytes(),
                &ctx(),
            )
            .unwrap(),
        );
        assert_eq!(v["output"][0]["name"], "exec_command");
        let chat = json!({"model": "g", "messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]});
        let v = body(
            answer(
                "POST",
                "/chat/completions",
                chat.to_string().as_bytes(),
                &ctx(),
            )
            .unwrap(),
        );
        assert_eq!(v["choices"][0]["message"]["content"], "The tool printed: x");
        let plain = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]});
        assert!(answer(
            "POST",
            "/v1/chat/completions",
            plain.to_string().as_bytes(),
            &ctx()
        )
        .is_none());
    }
}
