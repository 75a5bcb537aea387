//! Server-sent events for the translators: whole events from the one framer (`wire::sse::SseFramer`), as
//! text, plus the writers for the two dialects we emit.

use bytes::BytesMut;

use super::TranslateError;
use crate::wire::sse::SseFramer;
pub use crate::wire::sse::MAX_EVENT_BYTES;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Events as text: events without data are not dispatched (SSE's rule), and a stream that is not
/// UTF-8 is refused.
#[derive(Debug, Default)]
pub(super) struct SseParser {
    framer: SseFramer,
}

impl SseParser {
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Takes one chunk; returns the events it completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, TranslateError> {
        let frames = self
            .framer
            .push(bytes)
            .map_err(|e| TranslateError::BadUpstream(e.to_string()))?;
        let mut events = Vec::with_capacity(frames.len());
        for frame in frames {
            let Some(data) = frame.data() else { continue };
            let text = |b: Vec<u8>| {
                String::from_utf8(b)
                    .map_err(|_| TranslateError::BadUpstream("stream is not UTF-8".into()))
            };
            events.push(SseEvent {
                event: frame.event_name().map(|n| text(n.to_vec())).transpose()?,
                data: text(data)?,
            });
        }
        Ok(events)
    }
}

/// A stream translator: whole events in, translated bytes out, until the stream's end is seen.
pub(super) trait EventTranslator {
    /// Its parser of upstream events.
    fn parser(&mut self) -> &mut SseParser;
    /// The end (or an error event) was seen: later bytes are ignored.
    fn finished(&self) -> bool;
    /// Translates one event, appending to `out`.
    fn handle(&mut self, event: &SseEvent, out: &mut BytesMut) -> Result<(), TranslateError>;

    /// Takes upstream bytes in any chunking; returns whole translated events only (possibly none).
    fn translate(&mut self, bytes: &[u8]) -> Result<bytes::Bytes, TranslateError> {
        let mut out = BytesMut::new();
        if self.finished() {
            return Ok(out.freeze());
        }
        for event in self.parser().push(bytes)? {
            self.handle(&event, &mut out)?;
            if self.finished() {
                break;
            }
        }
        Ok(out.freeze())
    }
}

/// Appends an OpenAI-style event (`data: ...`).
pub(super) fn write_data(out: &mut BytesMut, data: &str) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Appends an Anthropic-style event (`event: ...` + `data: ...`).
pub(super) fn write_event(out: &mut BytesMut, event: &str, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\n");
    write_data(out, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
        }
    }

    #[test]
    fn parses_events_with_every_line_ending_and_comments() {
        let input = "\u{feff}: hello\n\nevent: a\ndata: 1\n\nevent: b\r\ndata:2\r\ndata:  3\r\n\r\nevent: c\rdata: 4\r\rdata\n\n";
        let want = vec![
            ev(Some("a"), "1"),
            ev(Some("b"), "2\n 3"),
            ev(Some("c"), "4"),
            ev(None, ""),
        ];
        let mut p = SseParser::new();
        assert_eq!(p.push(input.as_bytes()).unwrap(), want);
        let mut p = SseParser::new();
        let mut got = Vec::new();
        for b in input.as_bytes() {
            got.extend(p.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, want);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut p = SseParser::new();
        assert!(p.push(b"event: ping\n\nid: 3\n\n").unwrap().is_empty());
        assert_eq!(p.push(b"data: x\n\n").unwrap(), vec![ev(None, "x")]);
    }

    #[test]
    fn utf8_split_across_pushes_and_invalid_utf8() {
        let input = "data: h\u{e9}llo \u{1f600}\n\n".as_bytes();
        let mut p = SseParser::new();
        let mut got = Vec::new();
        for b in input {
            got.extend(p.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(got, vec![ev(None, "h\u{e9}llo \u{1f600}")]);
        assert!(SseParser::new().push(b"data: \xff\n\n").is_err());
    }

    #[test]
    fn refuses_an_endless_line() {
        let mut p = SseParser::new();
        assert!(p.push(&vec![b'x'; MAX_EVENT_BYTES + 1]).is_err());
    }
}
