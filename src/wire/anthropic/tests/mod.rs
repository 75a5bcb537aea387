//! Golden tests: each `tests/fixtures/anthropic/{egress,ingress}/NAME.in.*` is translated and compared with
//! `NAME.out.*` as JSON values (`created` ignored, since it is the clock); streams are also fed one byte at a
//! time, in odd-sized pieces and with CRLF line ends, and must give the same events. Run with
//! `SWITCHYARD_BLESS=1` to rewrite the expected files from the current output, then review the diff.

use std::path::PathBuf;

use bytes::Bytes;
use serde_json::{json, Value};

use super::*;

const DEFAULT_MAX_TOKENS: u32 = 4096;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/anthropic")
}

fn blessing() -> bool {
    std::env::var_os("SWITCHYARD_BLESS").is_some()
}

#[allow(clippy::unwrap_used)]
fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[allow(clippy::unwrap_used)]
fn write(name: &str, bytes: &[u8]) {
    std::fs::write(fixture_dir().join(name), bytes).unwrap();
}

#[allow(clippy::unwrap_used)]
fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// Drops what differs from run to run.
fn normalize(mut v: Value) -> Value {
    if let Value::Object(o) = &mut v {
        o.remove("created");
    }
    v
}

#[allow(clippy::unwrap_used)]
fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

/// Compares a JSON body with `expected` (a fixture name).
fn check_json(expected: &str, actual: &[u8]) {
    let got = parse(actual);
    if blessing() {
        write(expected, format!("{}\n", pretty(&got)).as_bytes());
        return;
    }
    let want = normalize(parse(&read(expected)));
    let got = normalize(got);
    assert_eq!(got, want, "{expected}: got\n{}", pretty(&got));
}

/// An SSE body split strictly as we emit it: `[event: NAME\n]data: DATA\n\n` blocks, the data as JSON
/// (`[DONE]` as a string).
fn sse_events(bytes: &[u8]) -> Vec<(Option<String>, Value)> {
    let text = String::from_utf8_lossy(bytes);
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "unterminated: {text:?}"
    );
    text.split_terminator("\n\n")
        .map(|block| {
            let (name, data) = match block.split_once('\n') {
                Some((first, rest)) => (first.strip_prefix("event: ").map(str::to_string), rest),
                None => (None, block),
            };
            let data = data
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event block {block:?}"));
            assert!(!data.contains('\n'), "one data line per event: {block:?}");
            let value = if data == "[DONE]" {
                json!("[DONE]")
            } else {
                normalize(parse(data.as_bytes()))
            };
            (name, value)
        })
        .collect()
}

fn check_sse(expected: &str, actual: &[u8]) {
    if blessing() {
        write(expected, actual);
        return;
    }
    let want = sse_events(&read(expected));
    let got = sse_events(actual);
    assert_eq!(
        got.len(),
        want.len(),
        "{expected}: event count; got\n{}",
        String::from_utf8_lossy(actual)
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{expected}: event {i}");
    }
}

/// What both stream translators share, so one harness drives either.
trait StreamTranslator {
    fn push_bytes(&mut self, bytes: &[u8]) -> Result<Bytes, TranslateError>;
    fn finished(&self) -> bool;
}

impl StreamTranslator for MessagesStreamToChat {
    fn push_bytes(&mut self, bytes: &[u8]) -> Result<Bytes, TranslateError> {
        self.push(bytes)
    }
    fn finished(&self) -> bool {
        self.is_finished()
    }
}

impl StreamTranslator for ChatStreamToMessages {
    fn push_bytes(&mut self, bytes: &[u8]) -> Result<Bytes, TranslateError> {
        self.push(bytes)
    }
    fn finished(&self) -> bool {
        self.is_finished()
    }
}

/// Feeds `input` in pieces of `piece` bytes; every push must return whole events only.
#[allow(clippy::unwrap_used)]
fn feed<T: StreamTranslator>(t: &mut T, input: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in input.chunks(piece.max(1)) {
        let bytes = t.push_bytes(chunk).unwrap();
        assert!(
            bytes.is_empty() || bytes.ends_with(b"\n\n"),
            "a partial event was emitted"
        );
        out.extend_from_slice(&bytes);
    }
    out
}

/// Translates `NAME.in.sse` whole, then in awkward pieces and with CRLF line ends: all must match the
/// golden `NAME.out.sse`. Returns the whole-input output.
fn check_stream<T: StreamTranslator>(name: &str, make: impl Fn() -> T) -> Vec<u8> {
    let input = read(&format!("{name}.in.sse"));
    let mut t = make();
    let whole = feed(&mut t, &input, input.len());
    assert!(t.finished(), "{name}: not finished");
    check_sse(&format!("{name}.out.sse"), &whole);
    let crlf = String::from_utf8_lossy(&input)
        .replace('\n', "\r\n")
        .into_bytes();
    for (variant, bytes) in [("LF", &input), ("CRLF", &crlf)] {
        for piece in [1, 2, 3, 7, 64, 1000] {
            let mut t = make();
            let out = feed(&mut t, bytes, piece);
            assert!(t.finished(), "{name} {variant} by {piece}: not finished");
            assert_eq!(
                sse_events(&out),
                sse_events(&whole),
                "{name} {variant} by {piece}"
            );
        }
    }
    whole
}

// The translations each way, one file per direction.
mod egress_golden;
mod ingress_golden;
