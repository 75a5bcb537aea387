//! Server-sent events as they pass through. [`SseFramer`] is the one framer: it splits a byte stream in
//! any chunking into whole events (LF, CRLF or CR line ends, a leading BOM, comments), scanning each
//! byte once however the event is chopped, and keeps every event's bytes as they came so a relay can
//! forward them untouched. [`SseRelay`] follows an OpenAI stream on top of it: reads usage, drops the
//! usage chunk a client did not ask for, and notices `[DONE]`. Bytes are forwarded as they arrive, never
//! buffered whole.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::wire::openai::{text_bytes, ChoiceText, TokenUsage};

/// Largest single event we hold while waiting for its end; a longer one is upstream garbage.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Too large an event was buffered without an end.
#[derive(Debug, thiserror::Error)]
#[error("an SSE event exceeded {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLarge;

/// One whole event as it arrived, its blank end line included, so a relay can pass it on untouched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub raw: Bytes,
}

impl Frame {
    /// The event's non-empty lines, without their ends.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        split_lines(&self.raw).filter(|l| !l.is_empty())
    }

    /// The event's fields as (name, value), comments left out; the value is what follows `name:` and
    /// one optional space (a line without a colon is a field with an empty value).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.lines().filter(|l| l[0] != b':').map(|line| {
            match line.iter().position(|b| *b == b':') {
                Some(i) => {
                    let value = &line[i + 1..];
                    (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &line[line.len()..]),
            }
        })
    }

    /// The `data:` lines joined with `\n`; `None` when the event has no data field (a comment, a
    /// keep-alive, an `event:` alone), which SSE does not dispatch.
    pub fn data(&self) -> Option<Vec<u8>> {
        let mut data: Option<Vec<u8>> = None;
        for (name, value) in self.fields() {
            if name == b"data" {
                match &mut data {
                    Some(d) => {
                        d.push(b'\n');
                        d.extend_from_slice(value);
                    }
                    None => data = Some(value.to_vec()),
                }
            }
        }
        data
    }

    /// The last `event:` field, if any.
    pub fn event_name(&self) -> Option<&[u8]> {
        self.fields()
            .filter(|(name, _)| *name == b"event")
            .map(|(_, v)| v)
            .last()
    }
}

/// Lines of `raw`, split at LF, CRLF or a lone CR.
fn split_lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = raw;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            None => {
                let line = rest;
                rest = &rest[rest.len()..];
                Some(line)
            }
            Some(i) => {
                let term = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                let line = &rest[..i];
                rest = &rest[i + term..];
                Some(line)
            }
        }
    })
}

/// Splits a byte stream into whole events.
#[derive(Debug, Default)]
pub struct SseFramer {
    buf: BytesMut,
    /// How much of `buf` has been scanned for line ends: a long event arriving in small pieces is
    /// scanned once, not once per piece.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
    /// The stream's first bytes were seen (and a BOM dropped).
    begun: bool,
}

impl SseFramer {
    /// A framer at the start of a stream.
    pub fn new() -> SseFramer {
        SseFramer::default()
    }

    /// Takes one chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Frame>, EventTooLarge> {
        self.buf.extend_from_slice(chunk);
        if !self.begun {
            if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                return Ok(Vec::new());
            }
            if self.buf.starts_with(BOM) {
                let _ = self.buf.split_to(BOM.len());
            }
            self.begun = true;
        }
        let mut frames = Vec::new();
        while let Some(rel) = self.buf[self.scanned..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
        {
            let end = self.scanned + rel;
            let term = if self.buf[end] == b'\r' {
                match self.buf.get(end + 1) {
                    // A CR at the very end may be the first half of a CRLF: wait for the next byte.
                    None => {
                        self.scanned = end;
                        break;
                    }
                    Some(b'\n') => 2,
                    Some(_) => 1,
                }
            } else {
                1
            };
            let blank = end == self.line_start;
            self.scanned = end + term;
            self.line_start = self.scanned;
            if blank {
                frames.push(Frame {
                    raw: self.buf.split_to(self.scanned).freeze(),
                });
                self.scanned = 0;
                self.line_start = 0;
            }
        }
        if !self.buf.is_empty() && self.scanned < self.buf.len() && self.buf[self.scanned] != b'\r'
        {
            self.scanned = self.buf.len();
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(EventTooLarge);
        }
        Ok(frames)
    }
}

/// What one upstream chunk turned into.
#[derive(Debug, Default)]
pub struct Passed {
    /// Bytes to send to the client now (whole events only).
    pub forward: Bytes,
    /// The upstream sent `data: [DONE]` (it is held back, see `SseRelay::done_event`).
    pub done: bool,
    /// `forward` holds at least one content event (a JSON chunk), not only comments or keep-alives:
    /// what may commit a response.
    pub content: bool,
    /// The stream cannot go on after `forward` (the events after it in the chunk are dropped).
    pub stop: Option<Stop>,
}

/// Why a stream stopped at an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// An error event, `data: {"error": {...}}` (OpenRouter sends these with a 200): its data.
    Error(Bytes),
    /// Data that is not JSON before the first content event.
    NotJson,
}

/// Follows one OpenAI SSE stream.
#[derive(Debug)]
pub struct SseRelay {
    framer: SseFramer,
    /// Drop the `choices: []` + `usage` chunk: we asked for it, the client did not.
    hide_usage_chunk: bool,
    usage: Option<TokenUsage>,
    /// Bytes of text in the events forwarded so far (content, reasoning, tool calls): what is charged
    /// when the stream reports no usage or is cut before it does.
    text_bytes: u64,
    done: bool,
    /// A content event went out: from then on data is relayed without the JSON check (which costs a
    /// parse per event).
    committed: bool,
}

#[derive(Deserialize)]
struct ChunkPeek {
    #[serde(default)]
    choices: Option<Vec<ChoiceText>>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct UsagePeek {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

impl SseRelay {
    /// A relay; `hide_usage_chunk` when the client did not ask for usage but we did.
    pub fn new(hide_usage_chunk: bool) -> SseRelay {
        SseRelay {
            framer: SseFramer::new(),
            hide_usage_chunk,
            usage: None,
            text_bytes: 0,
            done: false,
            committed: false,
        }
    }

    /// Takes one upstream chunk; returns the whole events to forward.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Passed, EventTooLarge> {
        let mut out = BytesMut::new();
        let mut saw_done = false;
        let mut content = false;
        let mut stop = None;
        for frame in self.framer.push(chunk)? {
            let data = frame.data().unwrap_or_default();
            if data == b"[DONE]" {
                saw_done = true;
                self.done = true;
                continue;
            }
            let is_content = !data.is_empty() && !self.done;
            if is_content {
                if is_error_event(&data) {
                    stop = Some(Stop::Error(Bytes::from(data)));
                    break;
                }
                if !self.committed {
                    if serde_json::from_slice::<serde::de::IgnoredAny>(&data).is_err() {
                        stop = Some(Stop::NotJson);
                        break;
                    }
                    self.committed = true;
                }
            }
            // Every chunk is read (its text measured), not only those that mention usage: a stream
            // that never reports usage is charged by its text.
            if !self.done && data.first() == Some(&b'{') {
                // A chunk whose choices are shaped oddly still has its usage read.
                let peek = serde_json::from_slice::<ChunkPeek>(&data).or_else(|_| {
                    serde_json::from_slice::<UsagePeek>(&data).map(|u| ChunkPeek {
                        choices: u
                            .choices
                            .map(|c| c.into_iter().map(|_| ChoiceText::EMPTY).collect()),
                        usage: u.usage,
                    })
                });
                if let Ok(peek) = peek {
                    let choices = peek.choices.as_deref().unwrap_or_default();
                    self.text_bytes += text_bytes(choices);
                    if let Some(u) = peek.usage {
                        self.usage = Some(u);
                        if self.hide_usage_chunk && choices.is_empty() {
                            continue;
                        }
                    }
                }
            }
            content |= is_content;
            out.extend_from_slice(&frame.raw);
        }
        Ok(Passed {
            forward: out.freeze(),
            done: saw_done && stop.is_none(),
            content,
            stop,
        })
    }
    /// The usage the stream reported, if any.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// Bytes of text in the events forwarded so far.
    pub fn text_bytes(&self) -> u64 {
        self.text_bytes
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

/// Whether an event's data is an error object, `{"error": {...}}` (a non-null `error` at the top):
/// parsed only when the bytes `"error"` appear (inside a JSON string they are escaped, `\"error\"`).
fn is_error_event(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
    }
    data.windows(7).any(|w| w == b"\"error\"")
        && serde_json::from_slice::<Peek>(data).is_ok_and(|p| p.error.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6,\"total_tokens\":10}}\n\n";

    #[test]
    fn measures_the_text_of_every_forwarded_chunk() {
        let mut r = SseRelay::new(true);
        let content = "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n";
        let tool = "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n";
        let odd = "data: {\"choices\":[{\"delta\":{\"tool_calls\":{}}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        r.push(format!("{ROLE}{content}{tool}").as_bytes()).unwrap();
        assert_eq!(r.text_bytes(), 7);
        assert_eq!(r.usage(), None);
        r.push(odd.as_bytes()).unwrap();
        assert_eq!(
            r.usage().map(|u| u.completion_tokens),
            Some(2),
            "odd choices, usage still read"
        );
    }

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
        assert_eq!(r.usage(), Some(TokenUsage::new(4, 6)));
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

    const MIXED: &[u8] =
        b"\xEF\xBB\xBF: keep-alive\n\nevent: a\r\ndata: 1\r\ndata:2\r\n\r\ndata: x\r\rdata\n\n";

    fn frames_of(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut f = SseFramer::new();
        chunks.iter().flat_map(|c| f.push(c).unwrap()).collect()
    }

    #[test]
    fn one_framer_for_every_line_end_a_bom_and_any_split() {
        let whole = frames_of(&[MIXED]);
        let raw: Vec<u8> = whole.iter().flat_map(|f| f.raw.to_vec()).collect();
        assert_eq!(raw, &MIXED[3..], "every byte but the BOM is kept, in order");
        let data: Vec<_> = whole.iter().map(Frame::data).collect();
        assert_eq!(
            data,
            vec![
                None,
                Some(b"1\n2".to_vec()),
                Some(b"x".to_vec()),
                Some(Vec::new())
            ]
        );
        assert_eq!(whole[1].event_name(), Some(&b"a"[..]));
        for cut in 0..=MIXED.len() {
            let (a, b) = MIXED.split_at(cut);
            assert_eq!(frames_of(&[a, b]), whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = MIXED.chunks(1).collect();
        assert_eq!(frames_of(&bytes), whole, "one byte at a time");
    }

    #[test]
    fn a_long_unfinished_event_is_scanned_once() {
        let mut f = SseFramer::new();
        f.push(b"data: ").unwrap();
        for _ in 0..100 {
            f.push(&[b'x'; 1000]).unwrap();
            assert_eq!(
                f.scanned,
                f.buf.len(),
                "what was scanned is not scanned again"
            );
        }
        let done = f.push(b"\n\n").unwrap();
        assert_eq!(done[0].data().map(|d| d.len()), Some(100_000));
    }

    #[test]
    fn only_a_json_chunk_is_content_and_an_error_event_stops_the_stream() {
        let mut r = SseRelay::new(false);
        let p = r.push(b": keep-alive\n\n").unwrap();
        assert!(!p.content && p.stop.is_none() && !p.forward.is_empty());
        let err = "data: {\"error\":{\"code\":429,\"message\":\"slow\"}}\n\n";
        let p = r.push(format!("{err}data: [DONE]\n\n").as_bytes()).unwrap();
        assert!(!p.done && !p.content && p.forward.is_empty());
        assert!(matches!(p.stop, Some(Stop::Error(ref d)) if d.starts_with(b"{\"error\"")));

        let mut r = SseRelay::new(false);
        let p = r.push(b"data: {not json\n\n").unwrap();
        assert_eq!(p.stop, Some(Stop::NotJson));

        // Once committed, content is relayed as it is; an error event still stops it.
        let mut r = SseRelay::new(false);
        let p = r.push(ROLE.as_bytes()).unwrap();
        assert!(p.content && p.stop.is_none());
        assert!(r.push(b"data: odd\n\n").unwrap().stop.is_none());
        let said = "data: {\"choices\":[{\"delta\":{\"content\":\"an \\\"error\\\" word\"}}]}\n\n";
        assert!(
            r.push(said.as_bytes()).unwrap().stop.is_none(),
            "a quoted word"
        );
        let p = r.push(format!("{ROLE}{err}").as_bytes()).unwrap();
        assert_eq!(&p.forward[..], ROLE.as_bytes());
        assert!(matches!(p.stop, Some(Stop::Error(_))));
    }

    #[test]
    fn refuses_an_endless_event() {
        let mut r = SseRelay::new(false);
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(r.push(&big).is_err());
    }
}
