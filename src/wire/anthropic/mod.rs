//! The Anthropic Messages API <-> OpenAI Chat Completions translation, both directions, streaming included.
//!
//! * Egress (an OpenAI client, an Anthropic upstream): [`chat_request_to_messages`],
//!   [`messages_response_to_chat`], [`MessagesStreamToChat`].
//! * Ingress (an Anthropic client on `/v1/messages`, an OpenAI-shaped upstream): [`messages_request_to_chat`],
//!   [`chat_response_to_messages`], [`ChatStreamToMessages`].
//!
//! Fields with no counterpart are either dropped (sampling hints whose absence cannot break a client) or
//! refused with [`TranslateError::Unsupported`] (anything the client would miss in the answer); each
//! translation function documents its own choices.

mod egress;
mod egress_stream;
mod ingress;
mod ingress_stream;
mod json;
pub mod native;
mod sse;

#[cfg(test)]
mod tests;

pub use egress::{chat_request_to_messages, messages_response_to_chat};
pub use egress_stream::MessagesStreamToChat;
pub use ingress::{chat_response_to_messages, messages_request_to_chat, IngressInfo};
pub use ingress_stream::ChatStreamToMessages;
pub use sse::MAX_EVENT_BYTES;

/// Why a body could not be translated. Messages are client-facing: they name fields, never echo secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The client's request body is not JSON (or not a JSON object). Client fault: 400.
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// The client's request is JSON but malformed for its API (missing or mistyped field). Client fault: 400.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Valid for the client's API but impossible to express upstream. Client fault: 400.
    #[error("unsupported by the upstream API: {0}")]
    Unsupported(String),
    /// The upstream's answer (body or stream) could not be read. Upstream fault: 502.
    #[error("upstream sent an unreadable answer: {0}")]
    BadUpstream(String),
}

impl TranslateError {
    /// True when the client sent something we cannot translate (answer 400, no failover); false when the
    /// upstream's answer was unreadable (502; a retry elsewhere is safe only before bytes reached the client).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, TranslateError::BadUpstream(_))
    }
}

/// Token counts the translated answer reported, in OpenAI terms, for usage recording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamUsage {
    /// Prompt tokens, cache reads and writes included.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// An error event the upstream sent mid-stream (already rendered to the client in its own dialect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// The upstream's error type, e.g. `overloaded_error`, `rate_limit_error`, `api_error`.
    pub kind: String,
    pub message: String,
}

/// Seconds since the epoch, for `created`.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
