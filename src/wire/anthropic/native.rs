//! The Messages API passed through untouched (an Anthropic client on an Anthropic profile): nothing is
//! translated, so `cache_control`, `thinking`, betas and every event reach both sides as sent. The proxy
//! only reads what it must: usage (for metering) and the stream's end (held back until the usage record
//! is safe) or an error event (a failure of the profile, with failover while nothing was sent).

use bytes::Bytes;
use serde::Deserialize;

use super::TranslateError;
use crate::wire::openai::TokenUsage;
use crate::wire::passthrough::{PassThrough, Step};
use crate::wire::relayed::{Relayed, StreamFault};
use crate::wire::sse::Frame;

/// Anthropic's usage object (message body, `message_start.message.usage`, `message_delta.usage`).
#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    /// The writes split by lifetime (`ephemeral_5m_input_tokens`, `ephemeral_1h_input_tokens`).
    #[serde(default)]
    cache_creation: Option<CacheCreation>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct CacheCreation {
    #[serde(default)]
    ephemeral_1h_input_tokens: Option<u64>,
}

impl Usage {
    /// Every prompt token, cached or not, as OpenAI's `prompt_tokens` counts them.
    fn prompt(&self) -> u64 {
        self.input_tokens.unwrap_or(0)
            + self.cache_creation_input_tokens.unwrap_or(0)
            + self.cache_read_input_tokens.unwrap_or(0)
    }

    /// In OpenAI terms, cache reads and writes counted apart as well, the 1-hour writes apart from
    /// the 5-minute ones (as the translation from Anthropic counts them).
    fn tokens(&self) -> TokenUsage {
        let writes = self.cache_creation_input_tokens.unwrap_or(0);
        let write_1h = self
            .cache_creation
            .and_then(|c| c.ephemeral_1h_input_tokens)
            .unwrap_or(0)
            .min(writes);
        TokenUsage {
            cached_tokens: self.cache_read_input_tokens.unwrap_or(0),
            cache_write_tokens: writes - write_1h,
            cache_write_1h_tokens: write_1h,
            ..TokenUsage::new(self.prompt(), self.output_tokens.unwrap_or(0))
        }
    }

    /// Later counts replace earlier ones (a `message_delta` carries the final `output_tokens`).
    fn merge(&mut self, later: Usage) {
        let pick = |a: &mut Option<u64>, b: Option<u64>| {
            if b.is_some() {
                *a = b;
            }
        };
        pick(&mut self.input_tokens, later.input_tokens);
        pick(
            &mut self.cache_creation_input_tokens,
            later.cache_creation_input_tokens,
        );
        pick(
            &mut self.cache_read_input_tokens,
            later.cache_read_input_tokens,
        );
        pick(&mut self.output_tokens, later.output_tokens);
        if later.cache_creation.is_some() {
            self.cache_creation = later.cache_creation;
        }
    }
}

#[derive(Deserialize)]
struct MessageBody {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct MetadataOnly {
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    user_id: Option<String>,
}

/// A Messages request's `metadata.user_id` (what the chat translation makes `user`), if it has one.
pub fn metadata_user(body: &[u8]) -> Option<String> {
    let m: MetadataOnly = serde_json::from_slice(body).ok()?;
    m.metadata?.user_id.filter(|u| !u.is_empty())
}

/// The usage of a whole Messages answer; `Err` when the body is not a JSON object.
pub fn messages_usage(body: &[u8]) -> Result<TokenUsage, TranslateError> {
    let m: MessageBody = serde_json::from_slice(body)
        .map_err(|e| TranslateError::BadUpstream(format!("not a Messages answer: {e}")))?;
    Ok(m.usage.unwrap_or_default().tokens())
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: Option<MessageBody>,
    #[serde(default)]
    usage: Option<Usage>,
}

/// Follows one Messages stream passed through as it came.
#[derive(Debug, Default)]
pub struct NativeStream {
    relay: PassThrough,
    usage: Option<Usage>,
}

impl NativeStream {
    /// A pass-through of one stream.
    pub fn new() -> NativeStream {
        NativeStream::default()
    }

    /// Takes one upstream chunk: the whole events to forward, byte for byte. An `error` event (or
    /// unreadable data before any content) ends it with `fault` set, the error object as it came.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Relayed, StreamFault> {
        let usage = &mut self.usage;
        self.relay
            .push(chunk, |frame, content| read(usage, frame, content))
    }

    /// The held-back `message_stop` (or one written here if the upstream's never came).
    pub fn done_bytes(&mut self) -> Bytes {
        self.relay.take_end().unwrap_or_else(|| {
            Bytes::from_static(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
        })
    }

    /// The usage the stream reported so far.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage.map(|u| u.tokens())
    }
}

/// What one event means: only the few the proxy needs are parsed.
fn read(usage: &mut Option<Usage>, frame: &Frame, content: bool) -> Step {
    let name = frame.event_name().map(<[u8]>::to_vec);
    let interesting = match name.as_deref() {
        Some(b"message_start" | b"message_delta" | b"message_stop" | b"error") => true,
        Some(_) => false,
        // An event without a name: look inside.
        None => frame.data().is_some(),
    };
    if !interesting {
        return Step::Forward;
    }
    let Some(data) = frame.data() else {
        return Step::Forward;
    };
    let Ok(event) = serde_json::from_slice::<Event>(&data) else {
        // Nothing a client could read, before it got anything: a failure of the profile. Later,
        // the event is relayed as it came (the client's parser decides).
        return match content {
            false => Step::Fault(StreamFault::NotJson),
            true => Step::Forward,
        };
    };
    match event.kind.as_str() {
        "message_start" => {
            if let Some(u) = event.message.and_then(|m| m.usage) {
                usage.get_or_insert_with(Usage::default).merge(u);
            }
            Step::Forward
        }
        "message_delta" => {
            if let Some(u) = event.usage {
                usage.get_or_insert_with(Usage::default).merge(u);
            }
            Step::Forward
        }
        "message_stop" => Step::End,
        // Anthropic's error event data is `{"type":"error","error":{...}}`: the error object the
        // forwarder classifies like an HTTP error body.
        "error" => Step::Fault(StreamFault::Upstream(Bytes::from(data))),
        _ => Step::Forward,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"sig\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn events_pass_byte_for_byte_and_usage_counts_cache_tokens() {
        let s = crate::wire::passthrough::check_every_split(
            STREAM,
            NativeStream::new,
            |s, b| s.push(b).unwrap(),
            NativeStream::done_bytes,
        );
        let u = s.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (2105, 42));
    }

    #[test]
    fn an_error_event_is_an_upstream_fault() {
        let mut s = NativeStream::new();
        let ev = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        let r = s.push(ev.as_bytes()).unwrap();
        assert!(r.forward.is_empty() && !r.done);
        match r.fault {
            Some(StreamFault::Upstream(body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["error"]["type"], "overloaded_error");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_metadata_user_is_read_for_sticky_sessions() {
        let body = br#"{"model":"m","metadata":{"user_id":"u-1","x":1},"messages":[]}"#;
        assert_eq!(metadata_user(body).as_deref(), Some("u-1"));
        assert_eq!(metadata_user(br#"{"model":"m"}"#), None);
        assert_eq!(metadata_user(br#"{"metadata":{"user_id":""}}"#), None);
    }

    #[test]
    fn a_whole_answer_reports_its_usage() {
        let body = br#"{"id":"msg_1","type":"message","usage":{"input_tokens":3,"cache_read_input_tokens":7,"output_tokens":2}}"#;
        assert_eq!(
            messages_usage(body).unwrap(),
            TokenUsage {
                cached_tokens: 7,
                ..TokenUsage::new(10, 2)
            }
        );
        assert!(messages_usage(b"<html>").is_err());
        let body = br#"{"usage":{"input_tokens":1,"cache_creation_input_tokens":30,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20},"output_tokens":2}}"#;
        let u = messages_usage(body).unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cache_write_tokens,
                u.cache_write_1h_tokens
            ),
            (31, 10, 20)
        );
    }
}
