//! Server-sent events as they pass through: split into whole events, read usage, drop the usage chunk a
//! client did not ask for, and notice `[DONE]`. Bytes are forwarded as they arrive, never buffered whole.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::wire::openai::TokenUsage;

/// Largest single event we hold while waiting for its end; a longer one is upstream garbage.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// What one upstream chunk turned into.
#[derive(Debug, Default)]
pub struct Passed {
    /// Bytes to send to the client now (whole events only).
    pub forward: Bytes,
    /// The upstream sent `data: [DONE]` (it is held back, see `SseRelay::done_event`).
    pub done: bool,
}

/// Follows one SSE stream.
#[derive(Debug)]
pub struct SseRelay {
    buf: BytesMut,
    /// Drop the `choices: []` + `usage` chunk: we asked for it, the client did not.
    hide_usage_chunk: bool,
    usage: Option<TokenUsage>,
    done: bool,
}

#[derive(Deserialize)]
struct ChunkPeek {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

/// An event's end: a blank line.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some((i, i + 2));
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// The concatenated `data:` payload of an event.
fn event_data(event: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    data
}

/// Too large an event was buffered without an end.
#[derive(Debug, thiserror::Error)]
#[error("an SSE event exceeded {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLarge;

impl SseRelay {
    /// A relay; `hide_usage_chunk` when the client did not ask for usage but we did.
    pub fn new(hide_usage_chunk: bool) -> SseRelay {
        SseRelay {
            buf: BytesMut::new(),
            hide_usage_chunk,
            usage: None,
            done: false,
        }
    }

    /// Takes one upstream chunk; returns the whole events to forward.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Passed, EventTooLarge> {
        self.buf.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        let mut saw_done = false;
        while let Some((end, next)) = event_end(&self.buf) {
            let event = self.buf.split_to(next).freeze();
            let data = event_data(&event[..end]);
            if data == b"[DONE]" {
                saw_done = true;
                self.done = true;
                continue;
            }
            if !self.done && !data.is_empty() && memchr_usage(&data) {
                if let Ok(peek) = serde_json::from_slice::<ChunkPeek>(&data) {
                    if let Some(u) = peek.usage {
                        self.usage = Some(u);
                        let no_choices = peek.choices.as_ref().is_none_or(|c| c.is_empty());
                        if self.hide_usage_chunk && no_choices {
                            continue;
                        }
                    }
                }
            }
            out.extend_from_slice(&event);
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(Passed {
            forward: out.freeze(),
            done: saw_done,
        })
    }

    /// The usage the stream reported, if any.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// Whether `[DONE]` was seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The terminator we send once the usage record is safe.
    pub fn done_event() -> Bytes {
        Bytes::from_static(b"data: [DONE]\n\n")
    }

    /// An error event ending a stream that was cut after bytes reached the client (never a fake `[DONE]`).
    pub fn error_event(body_json: &str) -> Bytes {
        Bytes::from(format!("data: {body_json}\n\n"))
    }
}

fn memchr_usage(data: &[u8]) -> bool {
    data.windows(7).any(|w| w == b"\"usage\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6,\"total_tokens\":10}}\n\n";

    #[test]
    fn forwards_whole_events_across_chunk_boundaries() {
        let mut r = SseRelay::new(false);
        let (a, b) = ROLE.split_at(17);
        assert!(r.push(a.as_bytes()).unwrap().forward.is_empty());
        assert_eq!(&r.push(b.as_bytes()).unwrap().forward[..], ROLE.as_bytes());
    }

    #[test]
    fn hides_the_usage_chunk_the_client_did_not_ask_for_but_reads_it() {
        let mut r = SseRelay::new(true);
        let all = format!("{ROLE}{USAGE}data: [DONE]\n\n");
        let p = r.push(all.as_bytes()).unwrap();
        assert_eq!(&p.forward[..], ROLE.as_bytes());
        assert!(p.done);
        assert_eq!(
            r.usage(),
            Some(TokenUsage {
                prompt_tokens: 4,
                completion_tokens: 6
            })
        );
    }

    #[test]
    fn keeps_the_usage_chunk_when_the_client_asked() {
        let mut r = SseRelay::new(false);
        let p = r.push(USAGE.as_bytes()).unwrap();
        assert_eq!(&p.forward[..], USAGE.as_bytes());
        assert_eq!(r.usage().map(|u| u.completion_tokens), Some(6));
    }

    #[test]
    fn crlf_events_and_comments() {
        let mut r = SseRelay::new(false);
        let p = r.push(b": keep-alive\r\n\r\ndata: [DONE]\r\n\r\n").unwrap();
        assert_eq!(&p.forward[..], b": keep-alive\r\n\r\n");
        assert!(p.done && r.is_done());
    }

    #[test]
    fn refuses_an_endless_event() {
        let mut r = SseRelay::new(false);
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(r.push(&big).is_err());
    }
}
