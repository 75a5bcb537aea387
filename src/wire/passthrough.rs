//! A stream relayed in its own dialect (an Anthropic client on an Anthropic profile, the Responses API):
//! whole events forwarded byte for byte, the closing event held back until the usage record is safe, and
//! the stream stopped at an error. Each dialect says what its events mean (`Step`); this file does the
//! rest once for both.

use bytes::{Bytes, BytesMut};

use crate::wire::relayed::{Relayed, StreamFault};
use crate::wire::sse::{Frame, SseFramer};

/// What one event means to the proxy.
pub(crate) enum Step {
    /// Relay it as it came.
    Forward,
    /// The stream's closing event: held back (see `PassThrough::take_end`).
    End,
    /// The stream failed: nothing of this event is relayed.
    Fault(StreamFault),
}

/// The dialect-independent part of a pass-through relay.
#[derive(Debug, Default)]
pub(crate) struct PassThrough {
    framer: SseFramer,
    /// The closing event, held back.
    end: Option<Bytes>,
    /// An event with data has been relayed: a response may be committed.
    content: bool,
}

impl PassThrough {
    /// Takes one upstream chunk; `read` says what each whole event means, given whether content was
    /// relayed before it.
    pub(crate) fn push(
        &mut self,
        chunk: &[u8],
        mut read: impl FnMut(&Frame, bool) -> Step,
    ) -> Result<Relayed, StreamFault> {
        let mut out = BytesMut::new();
        let (mut done, mut content, mut fault) = (false, false, None);
        for frame in self.framer.push(chunk)? {
            match read(&frame, self.content) {
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

    /// The held-back closing event, once.
    pub(crate) fn take_end(&mut self) -> Option<Bytes> {
        self.end.take()
    }
}

/// Feeds `stream` to a fresh relay split at every byte, and checks every byte comes out in order (the
/// closing event from `done`); returns the last relay for its usage.
#[cfg(test)]
pub(crate) fn check_every_split<T>(
    stream: &str,
    new: impl Fn() -> T,
    push: impl Fn(&mut T, &[u8]) -> Relayed,
    done: impl Fn(&mut T) -> Bytes,
) -> T {
    let mut last = None;
    for cut in 0..stream.len() {
        let mut s = new();
        let (a, b) = stream.as_bytes().split_at(cut);
        let mut out = push(&mut s, a).forward.to_vec();
        let end = push(&mut s, b);
        assert!(end.done, "split at {cut}");
        out.extend_from_slice(&end.forward);
        out.extend_from_slice(&done(&mut s));
        assert_eq!(out, stream.as_bytes(), "split at {cut}");
        last = Some(s);
    }
    last.unwrap_or_else(new)
}
