//! The wire formats: the dialect a client speaks and the one an upstream speaks, the few request fields
//! the proxy reads (`openai`), server-sent events (`sse`) and the Anthropic translation (`anthropic`).
//! Switchyard's own path is OpenAI; an Anthropic upstream is decoded into it and an Anthropic client
//! (`/v1/messages`) is encoded out of it, bodies and streams alike. Pure code over bytes: no I/O, no config.

pub mod anthropic;
pub mod depth;
pub mod openai;
mod passthrough;
pub mod relayed;
pub mod responses;
pub mod responses_bridge;
pub mod sse;

use bytes::{Bytes, BytesMut};
use serde_json::json;

use self::anthropic::native::NativeStream;
use self::anthropic::{
    chat_response_to_messages, messages_response_to_chat, ChatStreamToMessages,
    MessagesStreamToChat, TranslateError,
};
use self::openai::TokenUsage;
pub use self::relayed::{Relayed, StreamFault};
use self::responses::ResponsesStream;
use self::responses_bridge::{chat_response_to_responses, ChatStreamToResponses};
use self::sse::SseRelay;

/// A wire format: the one a client speaks (and is answered in), and the one an upstream speaks (a
/// profile's `provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions (`/v1/chat/completions` and friends).
    OpenAi,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
}

/// A stream relayed in its own dialect.
enum Native {
    Anthropic(NativeStream),
    Responses(ResponsesStream),
}

/// The client's stream, when it is not OpenAI Chat's.
enum Encode {
    /// Anthropic Messages events (`/v1/messages` on an OpenAI-shaped upstream).
    Messages(ChatStreamToMessages),
    /// Responses API events (`/v1/responses` bridged to a chat upstream).
    Responses(ChatStreamToResponses),
}

impl Encode {
    fn push(&mut self, openai: &[u8]) -> Result<Bytes, TranslateError> {
        match self {
            Encode::Messages(e) => e.push(openai),
            Encode::Responses(e) => e.push(openai),
        }
    }
}

/// Upstream SSE in, client SSE out: decode to OpenAI, relay (usage, terminator), encode for the client.
pub struct StreamCodec {
    /// Same dialect on both sides: events pass through untouched, and the translation stages below
    /// are unused.
    native: Option<Native>,
    decode: Option<MessagesStreamToChat>,
    relay: SseRelay,
    encode: Option<Encode>,
}

impl StreamCodec {
    /// A codec from `upstream`'s stream to `client`'s; `client_wants_usage` as the client asked.
    pub fn new(
        upstream: Dialect,
        client: Dialect,
        client_model: &str,
        client_wants_usage: bool,
    ) -> StreamCodec {
        StreamCodec {
            native: None,
            // Always ask for usage from the decoder: the relay hides the chunk when the client did not.
            decode: (upstream == Dialect::Anthropic)
                .then(|| MessagesStreamToChat::new(client_model, true)),
            relay: SseRelay::new(!client_wants_usage),
            encode: (client == Dialect::Anthropic)
                .then(|| Encode::Messages(ChatStreamToMessages::new(client_model))),
        }
    }

    /// A Responses API client on an upstream without it: `upstream`'s stream, decoded to chat, becomes
    /// the Responses events (its usage chunk always reaches the encoder, for `response.completed`).
    pub fn responses_bridge(upstream: Dialect, client_model: &str) -> StreamCodec {
        let mut codec = StreamCodec::new(upstream, Dialect::OpenAi, client_model, true);
        codec.encode = Some(Encode::Responses(ChatStreamToResponses::new(client_model)));
        codec
    }

    /// A pass-through of a Messages stream to a Messages client: nothing translated.
    pub fn native_anthropic() -> StreamCodec {
        StreamCodec::native(Native::Anthropic(NativeStream::new()))
    }

    /// A pass-through of a Responses API stream.
    pub fn native_responses() -> StreamCodec {
        StreamCodec::native(Native::Responses(ResponsesStream::new()))
    }

    fn native(native: Native) -> StreamCodec {
        StreamCodec {
            native: Some(native),
            decode: None,
            relay: SseRelay::new(false),
            encode: None,
        }
    }

    /// Takes one upstream chunk. An error event or unreadable first data ends it with `fault` set
    /// (after whatever came before it in the chunk); `Err` when the upstream's bytes cannot be read.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Relayed, StreamFault> {
        match &mut self.native {
            Some(Native::Anthropic(n)) => return n.push(chunk),
            Some(Native::Responses(r)) => return r.push(chunk),
            None => {}
        }
        let (openai, decoded_fault) = match &mut self.decode {
            None => (Bytes::copy_from_slice(chunk), None),
            Some(d) => {
                let out = d.push(chunk)?;
                let fault = d.upstream_error().map(|err| {
                    let body = json!({"error": {"type": err.kind, "message": err.message}});
                    StreamFault::Upstream(Bytes::from(body.to_string()))
                });
                (out, fault)
            }
        };
        let passed = self.relay.push(&openai)?;
        let fault = decoded_fault.or(match passed.stop {
            None => None,
            Some(sse::Stop::Error(body)) => Some(StreamFault::Upstream(body)),
            Some(sse::Stop::NotJson) => Some(StreamFault::NotJson),
        });
        Ok(Relayed {
            forward: self.encode_bytes(&passed.forward)?,
            done: passed.done && fault.is_none(),
            content: passed.content,
            fault,
        })
    }

    fn encode_bytes(&mut self, openai: &[u8]) -> Result<Bytes, StreamFault> {
        match &mut self.encode {
            None => Ok(Bytes::copy_from_slice(openai)),
            Some(e) if openai.is_empty() => {
                let _ = e;
                Ok(Bytes::new())
            }
            Some(e) => Ok(e.push(openai)?),
        }
    }

    /// The stream's terminator in the client's dialect (`data: [DONE]`, or Anthropic's closing events).
    pub fn done_bytes(&mut self) -> Bytes {
        match &mut self.native {
            Some(Native::Anthropic(n)) => return n.done_bytes(),
            Some(Native::Responses(r)) => return r.done_bytes(),
            None => {}
        }
        let done = SseRelay::done_event();
        self.encode_bytes(&done).unwrap_or(done)
    }

    /// The usage the stream reported, if any.
    pub fn usage(&self) -> Option<TokenUsage> {
        match &self.native {
            Some(Native::Anthropic(n)) => return n.usage(),
            Some(Native::Responses(r)) => return r.usage(),
            None => {}
        }
        self.relay.usage().or_else(|| {
            self.decode
                .as_ref()
                .and_then(|d| d.usage())
                .map(|u| TokenUsage::new(u.prompt_tokens, u.completion_tokens))
        })
    }

    /// The Responses API response id the stream named, if it is one.
    pub fn response_id(&self) -> Option<&str> {
        match &self.native {
            Some(Native::Responses(r)) => r.response_id(),
            _ => None,
        }
    }

    /// Bytes of text (content, reasoning, tool calls) in the events relayed so far, counted in OpenAI
    /// form: what the stream is charged for when it reports no usage.
    pub fn text_bytes(&self) -> u64 {
        self.relay.text_bytes()
    }

    /// The dialect the client is answered in.
    pub fn client(&self) -> Dialect {
        if matches!(self.native, Some(Native::Anthropic(_)))
            || matches!(self.encode, Some(Encode::Messages(_)))
        {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }

    /// An error event ending a stream, in the client's dialect (never a fake terminator); `body_json`
    /// is the error body in that dialect.
    pub fn error_event(&self, body_json: &str) -> Bytes {
        let responses = matches!(self.native, Some(Native::Responses(_)))
            || matches!(self.encode, Some(Encode::Responses(_)));
        if responses {
            return responses_error_event(body_json);
        }
        match self.client() {
            Dialect::OpenAi => SseRelay::error_event(body_json),
            Dialect::Anthropic => {
                let mut b = BytesMut::new();
                b.extend_from_slice(b"event: error\ndata: ");
                b.extend_from_slice(body_json.as_bytes());
                b.extend_from_slice(b"\n\n");
                b.freeze()
            }
        }
    }
}

/// The Responses API's `error` event (`{"type": "error", "code", "message", "param"}`) for an OpenAI
/// error body: what its SDKs raise on, where a chat-shaped `data: {"error": ...}` would go unread.
fn responses_error_event(body_json: &str) -> Bytes {
    let v: serde_json::Value = serde_json::from_str(body_json).unwrap_or(serde_json::Value::Null);
    let e = &v["error"];
    let code = if e["code"].is_null() {
        &e["type"]
    } else {
        &e["code"]
    };
    let data = json!({"type": "error", "code": code, "message": e["message"], "param": e["param"]});
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// A complete upstream answer, converted for the client; `Err` when the upstream's body is unreadable.
pub fn response_body(
    upstream: Dialect,
    client: Dialect,
    body: Bytes,
    client_model: &str,
) -> Result<Bytes, TranslateError> {
    let openai = match upstream {
        Dialect::OpenAi => body,
        Dialect::Anthropic => Bytes::from(messages_response_to_chat(&body, client_model)?),
    };
    match client {
        Dialect::OpenAi => Ok(openai),
        Dialect::Anthropic => chat_response_to_messages(&openai, client_model).map(Bytes::from),
    }
}

/// A complete chat-shaped answer (an upstream's own, or translated from Anthropic) as a Responses
/// API answer, for a `/v1/responses` client bridged to a chat upstream.
pub fn bridged_response_body(openai: &[u8], client_model: &str) -> Result<Bytes, TranslateError> {
    chat_response_to_responses(openai, client_model).map(Bytes::from)
}

/// An upstream client error (400, 404...) in the client's dialect, its message kept.
pub fn client_error_body(upstream: Dialect, client: Dialect, body: Bytes) -> Bytes {
    if (upstream == Dialect::Anthropic) == (client == Dialect::Anthropic) {
        return body;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or("the upstream refused the request")
        .to_owned();
    let kind = v["error"]["type"]
        .as_str()
        .unwrap_or("invalid_request_error")
        .to_owned();
    let out = match client {
        Dialect::OpenAi => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
        Dialect::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
    };
    Bytes::from(out.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_to_openai_is_untouched() {
        let b = Bytes::from_static(br#"{"id":"x","usage":{"prompt_tokens":1}}"#);
        let out = response_body(Dialect::OpenAi, Dialect::OpenAi, b.clone(), "m").unwrap();
        assert_eq!(out.as_ptr(), b.as_ptr());
    }

    #[test]
    fn anthropic_client_errors_become_openai_errors() {
        let body = Bytes::from_static(br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}"#);
        let out: serde_json::Value = serde_json::from_slice(&client_error_body(
            Dialect::Anthropic,
            Dialect::OpenAi,
            body,
        ))
        .unwrap();
        assert_eq!(out["error"]["message"], "prompt is too long");
        assert_eq!(out["error"]["type"], "invalid_request_error");
        assert!(out["error"].get("code").is_some());
    }

    #[test]
    fn an_anthropic_stream_reaches_an_openai_client_with_usage() {
        let mut c = StreamCodec::new(Dialect::Anthropic, Dialect::OpenAi, "m", false);
        let events = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":3}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let r = c.push(events.as_bytes()).unwrap();
        assert!(r.done);
        let text = String::from_utf8(r.forward.to_vec()).unwrap();
        assert!(text.contains("\"content\":\"Hi\""), "{text}");
        assert!(!text.contains("[DONE]"), "the terminator is held back");
        assert!(
            !text.contains("\"choices\":[]"),
            "usage chunk the client did not ask for"
        );
        assert_eq!(c.usage(), Some(TokenUsage::new(7, 3)));
        assert_eq!(&c.done_bytes()[..], b"data: [DONE]\n\n");
    }

    #[test]
    fn an_anthropic_error_event_is_an_upstream_fault() {
        let mut c = StreamCodec::new(Dialect::Anthropic, Dialect::OpenAi, "m", false);
        let ev = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        match c.push(ev.as_bytes()) {
            Ok(Relayed {
                fault: Some(fault @ StreamFault::Upstream(_)),
                done: false,
                ..
            }) => {
                assert!(
                    fault.to_string().contains("overloaded_error: Overloaded"),
                    "{fault}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_responses_client_gets_the_responses_error_event() {
        let body = r#"{"error":{"message":"profile a: cut","type":"upstream_error","param":null,"code":null}}"#;
        for codec in [
            StreamCodec::native_responses(),
            StreamCodec::responses_bridge(Dialect::Anthropic, "m"),
        ] {
            let ev = String::from_utf8(codec.error_event(body).to_vec()).unwrap();
            let data: serde_json::Value =
                serde_json::from_str(ev.strip_prefix("event: error\ndata: ").unwrap().trim())
                    .unwrap();
            assert_eq!(data["type"], "error");
            assert_eq!(data["code"], "upstream_error");
            assert_eq!(data["message"], "profile a: cut");
        }
        let chat = StreamCodec::new(Dialect::OpenAi, Dialect::OpenAi, "m", false);
        assert!(chat.error_event(body).starts_with(b"data: {"));
    }

    #[test]
    fn an_openai_stream_reaches_an_anthropic_client() {
        let mut c = StreamCodec::new(Dialect::OpenAi, Dialect::Anthropic, "m", true);
        let chunks = concat!(
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\n",
            "data: [DONE]\n\n",
        );
        let r = c.push(chunks.as_bytes()).unwrap();
        assert!(r.done);
        let mut all = r.forward.to_vec();
        all.extend_from_slice(&c.done_bytes());
        let text = String::from_utf8(all).unwrap();
        assert!(text.contains("event: message_start"), "{text}");
        assert!(text.contains("\"text\":\"Hello\""), "{text}");
        assert!(text.contains("event: message_stop"), "{text}");
        assert_eq!(c.usage(), Some(TokenUsage::new(2, 1)));
    }
}
