//! A server-sent-events reader that accepts bytes in any chunking (an event, a line or a UTF-8 character
//! split across pushes; LF, CRLF or CR line ends; comments) and yields whole events, plus the writers
//! for the two dialects we emit.

use bytes::BytesMut;

use super::TranslateError;

/// Largest event (or line) held while waiting for its end; anything longer is upstream garbage.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

#[derive(Debug, Default)]
pub(super) struct SseParser {
    /// Bytes of the line not yet ended.
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no line end, so a long line arriving in small pieces is scanned
    /// once rather than once per piece.
    scanned: usize,
    event: Option<String>,
    data: String,
    has_data: bool,
    first_line: bool,
}

impl SseParser {
    pub fn new() -> Self {
        SseParser {
            first_line: true,
            ..SseParser::default()
        }
    }

    /// Takes one chunk; returns the events it completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, TranslateError> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(rel) = self.buf[from..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
        {
            let end = from + rel;
            let term = if self.buf[end] == b'\r' {
                match self.buf.get(end + 1) {
                    // A CR at the very end may be the first half of a CRLF: wait for the next byte.
                    None => break,
                    Some(b'\n') => 2,
                    Some(_) => 1,
                }
            } else {
                1
            };
            let line = std::str::from_utf8(&self.buf[start..end])
                .map_err(|_| TranslateError::BadUpstream("stream is not UTF-8".into()))?;
            let line = if self.first_line {
                self.first_line = false;
                line.strip_prefix('\u{feff}').unwrap_or(line)
            } else {
                line
            };
            if let Some(ev) =
                Self::take_line(line, &mut self.event, &mut self.data, &mut self.has_data)
            {
                events.push(ev);
            }
            start = end + term;
            from = start;
        }
        self.buf.drain(..start);
        self.scanned = self
            .buf
            .len()
            .saturating_sub(usize::from(self.buf.last() == Some(&b'\r')));
        if self.buf.len() + self.data.len() > MAX_EVENT_BYTES {
            return Err(TranslateError::BadUpstream(format!(
                "an SSE event exceeded {MAX_EVENT_BYTES} bytes"
            )));
        }
        Ok(events)
    }

    /// Applies one line (without its end) to the pending event; a blank line dispatches it.
    fn take_line(
        line: &str,
        event: &mut Option<String>,
        data: &mut String,
        has_data: &mut bool,
    ) -> Option<SseEvent> {
        if line.is_empty() {
            let name = event.take();
            if !*has_data {
                return None;
            }
            *has_data = false;
            return Some(SseEvent {
                event: name,
                data: std::mem::take(data),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match name {
            "event" => *event = Some(value.to_string()),
            "data" => {
                if *has_data {
                    data.push('\n');
                }
                data.push_str(value);
                *has_data = true;
            }
            _ => {} // id, retry and unknown fields mean nothing to a translator.
        }
        None
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
