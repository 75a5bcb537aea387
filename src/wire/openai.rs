//! The few request fields routing needs, read without building a full JSON tree, and the one place a body
//! is rewritten (model name mapping, streaming usage).

use std::borrow::Cow;

use bytes::Bytes;
use indexmap::IndexMap;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Why the routing fields could not be read: a 400 for the client.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    #[error("The request body is empty; expected a JSON object.")]
    Empty,
    #[error("The request body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("You must provide a model parameter.")]
    NoModel,
}

/// What routing reads from a client body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingFields {
    pub model: String,
    pub stream: bool,
    /// The body's `user` field, the last fallback sticky-session key.
    pub user: Option<String>,
    /// The body's `prompt_cache_key` (Codex sends one per conversation), a sticky-session key.
    pub prompt_cache_key: Option<String>,
    /// The client itself asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
}

#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prompt_cache_key: Option<Cow<'a, str>>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
    #[serde(flatten)]
    _rest: IgnoredAny,
}

impl RoutingFields {
    /// Reads the routing fields; a malformed body or a missing model is a 400 that says what is wrong.
    pub fn parse(body: &[u8]) -> Result<RoutingFields, FieldError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(FieldError::Empty);
        }
        let peek: Peek<'_> = serde_json::from_slice(body).map_err(FieldError::NotJson)?;
        let model = match peek.model {
            Some(m) if !m.trim().is_empty() => m.into_owned(),
            _ => return Err(FieldError::NoModel),
        };
        Ok(RoutingFields {
            model,
            stream: peek.stream.unwrap_or(false),
            user: peek.user.map(Cow::into_owned).filter(|u| !u.is_empty()),
            prompt_cache_key: peek
                .prompt_cache_key
                .map(Cow::into_owned)
                .filter(|k| !k.is_empty()),
            client_wants_usage: peek
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        })
    }
}

/// The body to send upstream: the client's bytes untouched unless the model must be renamed or the stream
/// must report usage; then only the top-level keys are re-serialised, every value kept byte for byte.
pub fn upstream_body(
    body: &Bytes,
    upstream_model: Option<&str>,
    ask_usage: bool,
) -> Result<Bytes, RewriteError> {
    if upstream_model.is_none() && !ask_usage {
        return Ok(body.clone());
    }
    let mut map: IndexMap<String, Box<RawValue>> =
        serde_json::from_slice(body).map_err(RewriteError::NotAnObject)?;
    let raw =
        |v: &serde_json::Value| serde_json::value::to_raw_value(v).map_err(RewriteError::Encode);
    if let Some(m) = upstream_model {
        map.insert(
            "model".into(),
            raw(&serde_json::Value::String(m.to_owned()))?,
        );
    }
    if ask_usage {
        let mut opts = match map.get("stream_options") {
            Some(v) => match serde_json::from_str::<serde_json::Value>(v.get()) {
                Ok(serde_json::Value::Object(o)) => o,
                _ => serde_json::Map::new(),
            },
            None => serde_json::Map::new(),
        };
        opts.insert("include_usage".into(), serde_json::Value::Bool(true));
        map.insert(
            "stream_options".into(),
            raw(&serde_json::Value::Object(opts))?,
        );
    }
    serde_json::to_vec(&map)
        .map(Bytes::from)
        .map_err(RewriteError::Encode)
}

/// Why a body could not be rewritten for an upstream.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The body is not a JSON object (its top-level keys cannot be replaced).
    #[error("the request body must be a JSON object: {0}")]
    NotAnObject(serde_json::Error),
    /// A replaced value could not be encoded again.
    #[error("cannot encode the rewritten body: {0}")]
    Encode(serde_json::Error),
}

/// Token counts as upstreams report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct TokenUsage {
    /// Chat's `prompt_tokens`, the Responses API's `input_tokens`.
    #[serde(default, alias = "input_tokens")]
    pub prompt_tokens: u64,
    /// Chat's `completion_tokens`, the Responses API's `output_tokens`.
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<TokenUsage>,
}

/// Reads `usage` from a complete (non-streamed) answer; `Err` when the body is not a JSON object at all.
pub fn response_usage(body: &[u8]) -> Result<TokenUsage, serde_json::Error> {
    let u: UsageOnly = serde_json::from_slice(body)?;
    Ok(u.usage.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_what_routing_needs() {
        let f = RoutingFields::parse(br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"user":"u1","stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(f.model, "gpt-4o-mini");
        assert!(f.stream && f.client_wants_usage);
        assert_eq!(f.user.as_deref(), Some("u1"));
        let f = RoutingFields::parse(br#"{"model":"m\u0041"}"#).unwrap();
        assert_eq!(f.model, "mA");
        assert!(!f.stream);
    }

    #[test]
    fn bad_bodies_are_400s_that_say_why() {
        for (body, needle) in [
            (&b"{not json"[..], "not valid JSON"),
            (b"", "empty"),
            (b"[1,2]", "not valid JSON"),
            (br#"{"messages":[]}"#, "model"),
            (br#"{"model":""}"#, "model"),
            (br#"{"model":"m","stream":"yes"}"#, "not valid JSON"),
        ] {
            let e = RoutingFields::parse(body).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
            assert_eq!(
                crate::error::ApiError::from(e).kind(),
                "invalid_request_error"
            );
        }
    }

    #[test]
    fn untouched_body_is_the_same_bytes() {
        let b = Bytes::from_static(br#"{"model":"m",  "x": 1.000}"#);
        let out = upstream_body(&b, None, false).unwrap();
        assert_eq!(out.as_ptr(), b.as_ptr());
    }

    #[test]
    fn rewrite_keeps_order_values_and_unknown_fields() {
        let b = Bytes::from_static(
            br#"{"model":"m","temperature":0.70,"custom":{"a":[1,2]},"stream":true}"#,
        );
        let out = upstream_body(&b, Some("upstream-m"), true).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"upstream-m","temperature":0.70,"custom":{"a":[1,2]},"stream":true,"stream_options":{"include_usage":true}}"#
        );
        let b = Bytes::from_static(
            br#"{"model":"m","stream_options":{"include_usage":false,"other":1}}"#,
        );
        let out: serde_json::Value =
            serde_json::from_slice(&upstream_body(&b, None, true).unwrap()).unwrap();
        assert_eq!(
            out["stream_options"],
            serde_json::json!({"include_usage": true, "other": 1})
        );
    }

    #[test]
    fn usage_of_a_complete_answer() {
        let u = response_usage(
            br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#,
        )
        .unwrap();
        assert_eq!(
            u,
            TokenUsage {
                prompt_tokens: 3,
                completion_tokens: 5
            }
        );
        assert!(response_usage(b"<html>oops</html>").is_err());
        assert_eq!(response_usage(b"{}").unwrap(), TokenUsage::default());
    }
}
