//! What the mock answers: the `Reply` enum and constructors for the real-world error bodies of OpenAI,
//! OpenRouter and Anthropic.

use std::time::Duration;

/// One way to answer a request: the realistic echo, a fixed status, or a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The realistic default: answers by path like OpenAI would, honouring `stream: true`.
    Echo,
    /// Fixed status, extra headers and body (e.g. 429 with Retry-After, 402, 500, 401...).
    Status {
        /// HTTP status code.
        status: u16,
        /// Extra response headers; a `content-type` here replaces the default `application/json`.
        headers: Vec<(String, String)>,
        /// Response body, sent with `Content-Length`.
        body: String,
    },
    /// Waits `delay` before sending response headers, then answers with the inner reply (usually `Echo`).
    Delay(Duration, Box<Reply>),
    /// Reads the request and then never answers (keeps the socket open until the client gives up).
    Hang,
    /// Streams an SSE completion, but closes the connection (no terminating zero-length chunk) after `after` events.
    CutStream {
        /// Number of SSE events (`data: ...` lines) sent before the connection is closed.
        after: usize,
    },
    /// Streams an SSE completion with a pause of `gap` between events (for idle-timeout tests).
    SlowStream {
        /// Pause before every event but the first.
        gap: Duration,
    },
    /// Resets the connection (SO_LINGER 0 then close) right after reading the request, before any response byte.
    Reset,
    /// 200 `text/event-stream` with exactly these chunks (raw SSE text: error events, comments, garbage),
    /// one chunk each with `gap` before every chunk but the first, then the end of the body.
    Events {
        /// The chunks as they go on the wire, e.g. `"data: {\"error\":{...}}\n\n"`.
        chunks: Vec<String>,
        /// Pause before every chunk but the first.
        gap: Duration,
    },
    /// 200 with a `application/json` content type and a body that is not JSON (upstream garbage).
    Garbage,
    /// Like `Echo`, but the answer carries no usage at all (no `usage` key in a body, no usage chunk
    /// in a stream, even when `stream_options.include_usage` asked for one): some OpenAI-compatible
    /// servers do this.
    NoUsage,
    /// A coding agent's model: calls the shell tool it is offered once, then answers quoting the
    /// tool's output (see `agent`); any other request gets the echo.
    Agent,
}

impl Reply {
    /// An SSE body of these chunks, sent back to back.
    pub fn events<S: Into<String>>(chunks: impl IntoIterator<Item = S>) -> Reply {
        Reply::Events {
            chunks: chunks.into_iter().map(Into::into).collect(),
            gap: Duration::ZERO,
        }
    }

    /// A redirect to `location` (an upstream that moved, or a `base_url` pointing at a login page).
    pub fn redirect(code: u16, location: &str) -> Reply {
        Reply::Status {
            status: code,
            headers: vec![("location".to_owned(), location.to_owned())],
            body: String::new(),
        }
    }

    /// A fixed status with a body and no extra headers.
    pub fn status(code: u16, body: impl Into<String>) -> Reply {
        Reply::Status {
            status: code,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// `Echo`, answered after `delay` (shorthand for `Reply::Delay(delay, Box::new(Reply::Echo))`).
    pub fn delayed(delay: Duration) -> Reply {
        Reply::Delay(delay, Box::new(Reply::Echo))
    }

    /// 429 with `Retry-After: <secs>` and OpenAI's rate-limit body (`code: rate_limit_exceeded`).
    pub fn rate_limited(retry_after_secs: u64) -> Reply {
        Reply::Status {
            status: 429,
            headers: vec![("retry-after".to_owned(), retry_after_secs.to_string())],
            body: openai_error(
                "Rate limit reached",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
        }
    }

    /// 429 with OpenAI's rate-limit body and one retry header sent as it is, however absurd
    /// (`Retry-After: 1e300`, `retry-after-ms: -1`...): for tests of how the proxy reads it.
    pub fn rate_limited_header(name: &str, value: &str) -> Reply {
        Reply::Status {
            status: 429,
            headers: vec![(name.to_owned(), value.to_owned())],
            body: openai_error(
                "Rate limit reached",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
        }
    }

    /// 429 with OpenAI's real out-of-credit body (`type` and `code` are `insufficient_quota`).
    pub fn insufficient_quota() -> Reply {
        Reply::status(
            429,
            openai_error(
                "You exceeded your current quota, please check your plan and billing details. For more \
                 information on this error, read the docs: \
                 https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                None,
                Some("insufficient_quota"),
            ),
        )
    }

    /// 402 with OpenRouter's out-of-credit body (`{"error":{"code":402,"message":"Insufficient credits..."}}`).
    pub fn payment_required() -> Reply {
        Reply::status(
            402,
            serde_json::json!({"error": {
                "code": 402,
                "message": "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
            }})
            .to_string(),
        )
    }

    /// 401 with OpenAI's bad-key body (`code: invalid_api_key`).
    pub fn unauthorized() -> Reply {
        Reply::status(
            401,
            openai_error(
                "Incorrect API key provided: sk-mock***. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
        )
    }

    /// 500 with OpenAI's `server_error` body.
    pub fn server_error() -> Reply {
        Reply::status(
            500,
            openai_error(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            ),
        )
    }

    /// 529 with Anthropic's real `overloaded_error` body (it also has `error.message` and `error.type`).
    pub fn overloaded() -> Reply {
        Reply::status(
            529,
            serde_json::json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                .to_string(),
        )
    }

    /// 400 with OpenAI's `context_length_exceeded` body.
    pub fn context_length() -> Reply {
        Reply::status(
            400,
            openai_error(
                "This model's maximum context length is 128000 tokens. However, your messages resulted in \
                 200000 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            ),
        )
    }
}

/// An OpenAI-shaped error body: `{"error":{"message","type","param","code"}}`.
pub(crate) fn openai_error(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> String {
    serde_json::json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_shaped_like_the_real_ones() {
        let Reply::Status {
            status,
            headers,
            body,
        } = Reply::rate_limited(7)
        else {
            panic!("not a status")
        };
        assert_eq!(status, 429);
        assert_eq!(headers, vec![("retry-after".to_owned(), "7".to_owned())]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(v["error"]["type"], "requests");
        assert!(v["error"]["param"].is_null());

        let Reply::Status { status, body, .. } = Reply::insufficient_quota() else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (status, &v["error"]["code"], &v["error"]["type"]),
            (
                429,
                &"insufficient_quota".into(),
                &"insufficient_quota".into()
            )
        );

        let Reply::Status { status, body, .. } = Reply::payment_required() else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((status, v["error"]["code"].as_u64()), (402, Some(402)));

        let Reply::Status { status, body, .. } = Reply::context_length() else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("context_length_exceeded"))
        );
    }
}
