//! The OpenAI Responses API passed through (`/v1/responses` to a profile that speaks it): nothing is
//! translated, so `store: false`, `include: ["reasoning.encrypted_content"]`, reasoning items and every
//! event reach both sides as sent. The proxy reads only usage (from `response.completed`) and the
//! stream's end (held back until the usage record is safe), or its failure.

use bytes::Bytes;
use serde::Deserialize;

use crate::wire::openai::TokenUsage;
use crate::wire::passthrough::{PassThrough, Step};
use crate::wire::relayed::{Relayed, StreamFault};
use crate::wire::sse::Frame;

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    response: Option<ResponseBody>,
}

#[derive(Deserialize)]
struct ResponseBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    usage: Option<TokenUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Follows one Responses stream passed through as it came.
#[derive(Debug, Default)]
pub struct ResponsesStream {
    relay: PassThrough,
    usage: Option<TokenUsage>,
    /// The response's id, from `response.created` (or the closing event).
    id: Option<String>,
}

impl ResponsesStream {
    /// A pass-through of one stream.
    pub fn new() -> ResponsesStream {
        ResponsesStream::default()
    }

    /// Takes one upstream chunk: the whole events to forward, byte for byte.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Relayed, StreamFault> {
        let (usage, id) = (&mut self.usage, &mut self.id);
        self.relay
            .push(chunk, |frame, content| read(usage, id, frame, content))
    }

    /// The held-back closing event (`response.completed` or `response.incomplete`).
    pub fn done_bytes(&mut self) -> Bytes {
        self.relay.take_end().unwrap_or_default()
    }

    /// The usage `response.completed` reported.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// The response's id, once an event named it.
    pub fn response_id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<String>,
}

/// The `id` of a whole Responses answer, if it has one.
pub fn response_id(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<IdOnly>(body).ok()?.id
}

/// What one event means: only the first, the closing and the failing ones are parsed.
fn read(
    usage: &mut Option<TokenUsage>,
    id: &mut Option<String>,
    frame: &Frame,
    content: bool,
) -> Step {
    let interesting = match frame.event_name() {
        Some(name) => matches!(
            name,
            b"response.created"
                | b"response.completed"
                | b"response.incomplete"
                | b"response.failed"
                | b"error"
        ),
        None => frame.data().is_some(),
    };
    let Some(data) = frame.data().filter(|_| interesting) else {
        return Step::Forward;
    };
    let Ok(event) = serde_json::from_slice::<Event>(&data) else {
        return match content {
            false => Step::Fault(StreamFault::NotJson),
            true => Step::Forward,
        };
    };
    match event.kind.as_str() {
        "response.created" => {
            *id = event.response.and_then(|r| r.id);
            Step::Forward
        }
        "response.completed" | "response.incomplete" => {
            let body = event.response;
            if let Some(got) = body.as_ref().and_then(|r| r.id.clone()) {
                id.get_or_insert(got);
            }
            *usage = body.and_then(|r| r.usage);
            Step::End
        }
        // The error object, in the `{"error": {...}}` shape the forwarder classifies.
        "response.failed" => {
            let error = event.response.and_then(|r| r.error).unwrap_or_default();
            upstream_fault(error)
        }
        "error" => upstream_fault(serde_json::from_slice(&data).unwrap_or_default()),
        _ => Step::Forward,
    }
}

fn upstream_fault(error: serde_json::Value) -> Step {
    let body = serde_json::json!({ "error": error });
    Step::Fault(StreamFault::Upstream(Bytes::from(body.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
        "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\",\"item\":{\"type\":\"reasoning\",\"encrypted_content\":\"gAAA\"}}\n\n",
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n",
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":11,\"output_tokens\":4,\"total_tokens\":15}}}\n\n",
    );

    #[test]
    fn events_pass_byte_for_byte_and_usage_comes_from_response_completed() {
        let s = crate::wire::passthrough::check_every_split(
            STREAM,
            ResponsesStream::new,
            |s, b| s.push(b).unwrap(),
            ResponsesStream::done_bytes,
        );
        let u = s.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (11, 4));
        assert_eq!(s.response_id(), Some("resp_1"));
        assert_eq!(
            response_id(br#"{"id":"resp_2","object":"response"}"#).as_deref(),
            Some("resp_2")
        );
        assert_eq!(response_id(b"[]"), None);
    }

    #[test]
    fn a_failed_response_is_an_upstream_fault() {
        let mut s = ResponsesStream::new();
        let ev = "event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"rate_limit_exceeded\",\"message\":\"slow down\"}}}\n\n";
        let r = s.push(ev.as_bytes()).unwrap();
        match r.fault {
            Some(StreamFault::Upstream(body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["error"]["code"], "rate_limit_exceeded");
            }
            other => panic!("{other:?}"),
        }
    }
}
