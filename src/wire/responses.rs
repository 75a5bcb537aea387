//! The OpenAI Responses API passed through (`/v1/responses` to a profile that speaks it): nothing is
//! translated, so `store: false`, `include: ["reasoning.encrypted_content"]`, reasoning items and every
//! event reach both sides as sent. The proxy reads only usage (from `response.completed`) and the
//! stream's end (held back until the usage record is safe), or its failure.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::wire::openai::TokenUsage;
use crate::wire::sse::{Frame, SseFramer};
use crate::wire::{Relayed, StreamFault};

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
    usage: Option<TokenUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// Follows one Responses stream passed through as it came.
#[derive(Debug, Default)]
pub struct ResponsesStream {
    framer: SseFramer,
    usage: Option<TokenUsage>,
    /// The closing event (`response.completed` or `response.incomplete`), held back.
    end: Option<Bytes>,
    content: bool,
}

enum Step {
    Forward,
    End,
    Fault(StreamFault),
}

impl ResponsesStream {
    /// A pass-through of one stream.
    pub fn new() -> ResponsesStream {
        ResponsesStream::default()
    }

    /// Takes one upstream chunk: the whole events to forward, byte for byte.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Relayed, StreamFault> {
        let mut out = BytesMut::new();
        let (mut done, mut content, mut fault) = (false, false, None);
        for frame in self.framer.push(chunk)? {
            match self.read(&frame) {
                Step::Forward => {
                    if frame.data().is_some() {
                        content = true;
                        self.content = true;
                    }
                    out.extend_from_slice(&frame.raw);
                }
                Step::End => {
                    self.end = Some(frame.raw);
                    done = true;
                }
                Step::Fault(f) => {
                    fault = Some(f);
                    break;
                }
            }
        }
        Ok(Relayed {
            forward: out.freeze(),
            done: done && fault.is_none(),
            content,
            fault,
        })
    }

    fn read(&mut self, frame: &Frame) -> Step {
        let interesting = match frame.event_name() {
            Some(name) => matches!(
                name,
                b"response.completed" | b"response.incomplete" | b"response.failed" | b"error"
            ),
            None => frame.data().is_some(),
        };
        let Some(data) = frame.data().filter(|_| interesting) else {
            return Step::Forward;
        };
        let Ok(event) = serde_json::from_slice::<Event>(&data) else {
            return match self.content {
                false => Step::Fault(StreamFault::NotJson),
                true => Step::Forward,
            };
        };
        match event.kind.as_str() {
            "response.completed" | "response.incomplete" => {
                self.usage = event.response.and_then(|r| r.usage);
                Step::End
            }
            // The error object, in the `{"error": {...}}` shape the forwarder classifies.
            "response.failed" => {
                let error = event.response.and_then(|r| r.error).unwrap_or_default();
                let body = serde_json::json!({ "error": error });
                Step::Fault(StreamFault::Upstream(Bytes::from(body.to_string())))
            }
            "error" => {
                let inner: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
                let body = serde_json::json!({ "error": inner });
                Step::Fault(StreamFault::Upstream(Bytes::from(body.to_string())))
            }
            _ => Step::Forward,
        }
    }

    /// The held-back closing event.
    pub fn done_bytes(&mut self) -> Bytes {
        self.end.take().unwrap_or_default()
    }

    /// The usage `response.completed` reported.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }
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
        for cut in 0..STREAM.len() {
            let mut s = ResponsesStream::new();
            let (a, b) = STREAM.as_bytes().split_at(cut);
            let mut out = s.push(a).unwrap().forward.to_vec();
            let last = s.push(b).unwrap();
            assert!(last.done, "split at {cut}");
            out.extend_from_slice(&last.forward);
            out.extend_from_slice(&s.done_bytes());
            assert_eq!(out, STREAM.as_bytes(), "split at {cut}");
            assert_eq!(
                s.usage(),
                Some(TokenUsage {
                    prompt_tokens: 11,
                    completion_tokens: 4
                })
            );
        }
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
