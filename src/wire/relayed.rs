//! What one relay step gives back (`Relayed`) and why a stream cannot go on (`StreamFault`): shared
//! by every stream relay of the wire formats and read by the forwarder.

use bytes::Bytes;

use super::anthropic::TranslateError;
use super::sse;

/// Why a stream could not go on.
#[derive(Debug, thiserror::Error)]
pub enum StreamFault {
    /// The upstream reported an error inside the stream: the error object as it came
    /// (`{"error": {...}}`), for the forwarder to classify like an HTTP error body.
    #[error("the upstream reported an error in the stream: {}", error_summary(.0))]
    Upstream(Bytes),
    /// The upstream's first data was not JSON: nothing a client could read.
    #[error("the upstream sent an event that is not JSON before any content")]
    NotJson,
    /// The upstream sent something unreadable.
    #[error(transparent)]
    Garbage(#[from] TranslateError),
    /// One event grew past the largest we hold.
    #[error(transparent)]
    TooLarge(#[from] sse::EventTooLarge),
}

/// `type: message` of an error object (or `code: message`), for operators; short.
fn error_summary(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let e = &v["error"];
    let word = |k: &str| match &e[k] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let kind = word("type")
        .or_else(|| word("code"))
        .unwrap_or_else(|| "error".into());
    let message: String = word("message")
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    format!("{kind}: {message}")
}

/// What one upstream chunk became for the client.
#[derive(Debug, Default)]
pub struct Relayed {
    pub forward: Bytes,
    /// The stream's end was seen (its terminator is held back; see `StreamCodec::done_bytes`).
    pub done: bool,
    /// `forward` holds a content event, not only comments: a response may be committed on it.
    pub content: bool,
    /// The stream cannot go on after `forward`: an error event, or unreadable data before content.
    pub fault: Option<StreamFault>,
}
