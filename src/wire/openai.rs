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
    /// A routing or token field given twice: the proxy and the upstream could read different values
    /// (serde keeps the first or refuses, most upstreams keep the last), so it is refused for everyone.
    #[error("`{0}` appears more than once in the request body; send it once.")]
    Duplicate(&'static str),
    /// `max_tokens` / `max_completion_tokens` that is not a JSON integer in 0..=2^64-1 (`100.0`, `1e2`,
    /// `"100"`, `-1`, `18446744073709551616`): the limits and the credit reservation read it as a
    /// number of tokens, so it must be one.
    #[error("`{0}` must be a non-negative integer (at most 18446744073709551615) written without a fraction or exponent.")]
    NotATokenCount(&'static str),
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
    /// The largest of `max_tokens`, `max_completion_tokens` and (Responses API) `max_output_tokens`,
    /// when one is given (not `null`).
    pub max_tokens: Option<u64>,
    /// The Responses API's `previous_response_id`: the answer it continues, kept by the profile that
    /// made it.
    pub previous_response_id: Option<String>,
}

/// The top-level keys routing reads; every other key is skipped without being built.
#[derive(Default)]
struct Peek<'a> {
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    user: Option<Cow<'a, str>>,
    prompt_cache_key: Option<Cow<'a, str>>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<&'a RawValue>,
    max_completion_tokens: Option<&'a RawValue>,
    /// The Responses API's `max_tokens`.
    max_output_tokens: Option<&'a RawValue>,
    previous_response_id: Option<Cow<'a, str>>,
    /// The first read key that appeared twice (reported after the parse, as a typed error).
    duplicate: Option<&'static str>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
    #[serde(flatten)]
    _rest: IgnoredAny,
}

/// The keys `Peek` reads, recognised without allocating (escaped keys included).
#[derive(Clone, Copy)]
enum Key {
    Model,
    Stream,
    User,
    StreamOptions,
    PromptCache,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    PreviousResponse,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> Result<Key, E> {
                Ok(match k {
                    "model" => Key::Model,
                    "stream" => Key::Stream,
                    "user" => Key::User,
                    "stream_options" => Key::StreamOptions,
                    "prompt_cache_key" => Key::PromptCache,
                    "max_tokens" => Key::MaxTokens,
                    "max_completion_tokens" => Key::MaxCompletionTokens,
                    "max_output_tokens" => Key::MaxOutputTokens,
                    "previous_response_id" => Key::PreviousResponse,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Model => "model",
            Key::Stream => "stream",
            Key::User => "user",
            Key::StreamOptions => "stream_options",
            Key::PromptCache => "prompt_cache_key",
            Key::MaxTokens => "max_tokens",
            Key::MaxCompletionTokens => "max_completion_tokens",
            Key::MaxOutputTokens => "max_output_tokens",
            Key::PreviousResponse => "previous_response_id",
            Key::Other => "",
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Peek<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Peek<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Peek<'a>, A::Error> {
                let mut p = Peek::default();
                let mut seen = [false; 9];
                while let Some(key) = map.next_key::<Key>()? {
                    let index = match key {
                        Key::Model => {
                            p.model = map.next_value::<Option<BorrowedStr<'de>>>()?.map(|s| s.0);
                            0
                        }
                        Key::Stream => {
                            p.stream = map.next_value()?;
                            1
                        }
                        Key::User => {
                            p.user = map.next_value::<Option<BorrowedStr<'de>>>()?.map(|s| s.0);
                            2
                        }
                        Key::StreamOptions => {
                            p.stream_options = map.next_value()?;
                            3
                        }
                        Key::MaxTokens => {
                            p.max_tokens = map.next_value()?;
                            4
                        }
                        Key::MaxCompletionTokens => {
                            p.max_completion_tokens = map.next_value()?;
                            5
                        }
                        Key::MaxOutputTokens => {
                            p.max_output_tokens = map.next_value()?;
                            7
                        }
                        Key::PreviousResponse => {
                            p.previous_response_id =
                                map.next_value::<Option<BorrowedStr<'de>>>()?.map(|s| s.0);
                            8
                        }
                        Key::PromptCache => {
                            p.prompt_cache_key =
                                map.next_value::<Option<BorrowedStr<'de>>>()?.map(|s| s.0);
                            6
                        }
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if std::mem::replace(&mut seen[index], true) {
                        p.duplicate.get_or_insert(key.name());
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A string borrowed from the body when it has no escapes (serde's own `Cow` always copies).
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = BorrowedStr<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                s: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(s)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A token count exactly as JSON wrote it: digits only (no sign, fraction, exponent or quotes), within
/// `u64`. `null` is `None`, as if absent (OpenAI treats it so).
fn token_count(raw: Option<&RawValue>, field: &'static str) -> Result<Option<u64>, FieldError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldError::NotATokenCount(field));
    }
    text.parse::<u64>()
        .map(Some)
        .map_err(|_| FieldError::NotATokenCount(field))
}

impl RoutingFields {
    /// Reads the routing fields; a malformed body or a missing model is a 400 that says what is wrong.
    pub fn parse(body: &[u8]) -> Result<RoutingFields, FieldError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(FieldError::Empty);
        }
        let peek: Peek<'_> = serde_json::from_slice(body).map_err(FieldError::NotJson)?;
        if let Some(key) = peek.duplicate {
            return Err(FieldError::Duplicate(key));
        }
        let max_tokens = token_count(peek.max_tokens, "max_tokens")?;
        let max_completion = token_count(peek.max_completion_tokens, "max_completion_tokens")?;
        let max_output = token_count(peek.max_output_tokens, "max_output_tokens")?;
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
            max_tokens: max_tokens
                .into_iter()
                .chain(max_completion)
                .chain(max_output)
                .max(),
            previous_response_id: peek
                .previous_response_id
                .map(Cow::into_owned)
                .filter(|k| !k.is_empty()),
        })
    }
}

/// Refuses a body that gives a key routing or the limits read (`model`, `stream`, `max_tokens`, ...)
/// more than once; for bodies that are translated rather than parsed by `RoutingFields::parse`.
pub fn refuse_duplicates(body: &[u8]) -> Result<(), FieldError> {
    let peek: Peek<'_> = serde_json::from_slice(body).map_err(FieldError::NotJson)?;
    peek.duplicate
        .map_or(Ok(()), |key| Err(FieldError::Duplicate(key)))
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

/// Token counts as upstreams report them, in OpenAI's form: the cache and reasoning counts are parts
/// of `prompt_tokens` and `completion_tokens`, read from `prompt_tokens_details.cached_tokens` (and
/// `cache_write_tokens` / `cache_write_1h_tokens`, as OpenRouter and the Anthropic translation
/// report writes) and `completion_tokens_details.reasoning_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "RawTokenUsage")]
pub struct TokenUsage {
    /// Chat's `prompt_tokens`, the Responses API's `input_tokens`.
    pub prompt_tokens: u64,
    /// Chat's `completion_tokens`, the Responses API's `output_tokens`.
    pub completion_tokens: u64,
    /// Of `prompt_tokens`: read from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Of `prompt_tokens`: written to the cache with a 5-minute lifetime.
    pub cache_write_tokens: u64,
    /// Of `prompt_tokens`: written to the cache with a 1-hour lifetime.
    pub cache_write_1h_tokens: u64,
    /// Of `completion_tokens`: reasoning.
    pub reasoning_tokens: u64,
}

impl TokenUsage {
    /// Prompt and completion tokens only (the detail counts 0).
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> TokenUsage {
        TokenUsage {
            prompt_tokens,
            completion_tokens,
            ..TokenUsage::default()
        }
    }
}

#[derive(Deserialize)]
struct RawTokenUsage {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: u64,
    /// The Responses API's `input_tokens_details` has the same `cached_tokens`.
    #[serde(default, alias = "input_tokens_details")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default, alias = "output_tokens_details")]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
    #[serde(default)]
    cache_write_1h_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<RawTokenUsage> for TokenUsage {
    fn from(r: RawTokenUsage) -> TokenUsage {
        let p = r.prompt_tokens_details.as_ref();
        let detail = |f: fn(&PromptDetails) -> Option<u64>| p.and_then(f).unwrap_or(0);
        TokenUsage {
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            cached_tokens: detail(|d| d.cached_tokens),
            cache_write_tokens: detail(|d| d.cache_write_tokens),
            cache_write_1h_tokens: detail(|d| d.cache_write_1h_tokens),
            reasoning_tokens: r
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

/// What a complete (non-streamed) answer says about its cost: the usage it reported, if any, and the
/// bytes of text it carries (for an estimate when it reported none; see `TextLen`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerUsage {
    pub reported: Option<TokenUsage>,
    pub text_bytes: u64,
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<TokenUsage>,
    #[serde(default)]
    choices: Option<Vec<ChoiceText>>,
}

#[derive(Deserialize)]
struct UsageAlone {
    #[serde(default)]
    usage: Option<TokenUsage>,
}

/// Reads `usage` (and the text's size) from a complete answer; `Err` when the body is not a JSON object.
pub fn response_usage(body: &[u8]) -> Result<AnswerUsage, serde_json::Error> {
    // Choices shaped oddly are not measured, but never make the answer unreadable.
    let u: UsageOnly = serde_json::from_slice(body).or_else(|_| {
        serde_json::from_slice::<UsageAlone>(body).map(|u| UsageOnly {
            usage: u.usage,
            choices: None,
        })
    })?;
    Ok(AnswerUsage {
        reported: u.usage,
        text_bytes: u.choices.as_deref().map_or(0, text_bytes),
    })
}

/// The text of one choice, in an answer (`message`) or a stream chunk (`delta`), or a legacy
/// completion's `text`: what an estimate counts when the upstream reports no usage.
#[derive(Deserialize)]
pub(crate) struct ChoiceText {
    #[serde(default, alias = "delta")]
    message: Option<MessageText>,
    #[serde(default)]
    text: TextLen,
}

#[derive(Deserialize)]
struct MessageText {
    #[serde(default)]
    content: TextLen,
    #[serde(default)]
    reasoning_content: TextLen,
    #[serde(default)]
    reasoning: TextLen,
    #[serde(default)]
    refusal: TextLen,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallText>>,
}

#[derive(Deserialize)]
struct ToolCallText {
    #[serde(default)]
    function: Option<FunctionText>,
}

#[derive(Deserialize)]
struct FunctionText {
    #[serde(default)]
    name: TextLen,
    #[serde(default)]
    arguments: TextLen,
}

impl ChoiceText {
    /// A choice with no text.
    pub(crate) const EMPTY: ChoiceText = ChoiceText {
        message: None,
        text: TextLen(0),
    };
}

/// The bytes of text in `choices`: content, reasoning, refusal, and tool call names and arguments.
pub(crate) fn text_bytes(choices: &[ChoiceText]) -> u64 {
    choices
        .iter()
        .map(|c| {
            let m = c.message.as_ref().map_or(0, |m| {
                let calls = m.tool_calls.as_deref().unwrap_or_default().iter();
                let calls: u64 = calls
                    .filter_map(|t| t.function.as_ref())
                    .map(|f| f.name.0 + f.arguments.0)
                    .sum();
                m.content.0 + m.reasoning_content.0 + m.reasoning.0 + m.refusal.0 + calls
            });
            m + c.text.0
        })
        .sum()
}

/// The UTF-8 length of a string value, read without keeping the string; any other value (an array of
/// content parts, a number, `null`) counts 0 rather than failing the answer it is part of.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TextLen(pub u64);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TextLen;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<TextLen, E> {
                Ok(TextLen(s.len() as u64))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_i64<E>(self, _: i64) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_u64<E>(self, _: u64) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_f64<E>(self, _: f64) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_unit<E>(self) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_none<E>(self) -> Result<TextLen, E> {
                Ok(TextLen(0))
            }
            fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<TextLen, D2::Error> {
                TextLen::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<TextLen, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TextLen(0))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TextLen, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TextLen(0))
            }
        }
        d.deserialize_any(V)
    }
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
    fn token_limits_are_integers_given_once() {
        let f =
            RoutingFields::parse(br#"{"model":"m","max_tokens":100,"max_completion_tokens":7}"#)
                .unwrap();
        assert_eq!(f.max_tokens, Some(100));
        let f = RoutingFields::parse(br#"{"model":"m","max_tokens":null}"#).unwrap();
        assert_eq!(f.max_tokens, None);
        let f =
            RoutingFields::parse(br#"{"model":"m","max_completion_tokens":18446744073709551615}"#)
                .unwrap();
        assert_eq!(f.max_tokens, Some(u64::MAX));
        for (body, param) in [
            (&br#"{"model":"m","max_tokens":100.0}"#[..], "max_tokens"),
            (br#"{"model":"m","max_tokens":1e2}"#, "max_tokens"),
            (br#"{"model":"m","max_tokens":"100"}"#, "max_tokens"),
            (br#"{"model":"m","max_tokens":-1}"#, "max_tokens"),
            (
                br#"{"model":"m","max_tokens":18446744073709551616}"#,
                "max_tokens",
            ),
            (
                br#"{"model":"m","max_completion_tokens":[1]}"#,
                "max_completion_tokens",
            ),
            (
                br#"{"model":"m","max_tokens":10,"max_tokens":100}"#,
                "max_tokens",
            ),
            (
                br#"{"model":"m","max_tokens":10,"max_\u0074okens":100}"#,
                "max_tokens",
            ),
            (br#"{"model":"m","model":"n"}"#, "model"),
            (
                br#"{"model":"m","max_output_tokens":1.5}"#,
                "max_output_tokens",
            ),
        ] {
            let e = crate::error::ApiError::from(RoutingFields::parse(body).unwrap_err());
            let v: serde_json::Value =
                serde_json::from_str(&e.body(crate::wire::Dialect::OpenAi)).unwrap();
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            assert_eq!(v["error"]["param"], param, "{v}");
        }
        assert!(refuse_duplicates(br#"{"max_tokens":1,"x":{"max_tokens":2}}"#).is_ok());
        assert!(refuse_duplicates(br#"{"max_tokens":1,"max_tokens":2}"#).is_err());
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
    fn cache_and_reasoning_tokens_are_read_from_the_details() {
        let u = response_usage(
            br#"{"usage":{"prompt_tokens":100,"completion_tokens":50,"prompt_tokens_details":{"cached_tokens":60,"cache_write_tokens":30,"cache_write_1h_tokens":10},"completion_tokens_details":{"reasoning_tokens":20}}}"#,
        )
        .unwrap()
        .reported
        .unwrap();
        assert_eq!(
            (
                u.cached_tokens,
                u.cache_write_tokens,
                u.cache_write_1h_tokens,
                u.reasoning_tokens
            ),
            (60, 30, 10, 20)
        );
        let u = response_usage(br#"{"usage":{"prompt_tokens":1,"prompt_tokens_details":null}}"#)
            .unwrap()
            .reported
            .unwrap();
        assert_eq!(u, TokenUsage::new(1, 0));
    }

    #[test]
    fn usage_of_a_complete_answer() {
        let u = response_usage(
            br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#,
        )
        .unwrap();
        assert_eq!(u.reported, Some(TokenUsage::new(3, 5)));
        assert!(response_usage(b"<html>oops</html>").is_err());
        assert_eq!(response_usage(b"{}").unwrap(), AnswerUsage::default());
        // No usage: the text is measured instead, whatever shape the content has.
        let u = response_usage(
            r#"{"choices":[{"message":{"role":"assistant","content":"h\u00e9llo","tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}},{"message":{"content":[{"type":"text","text":"x"}]}},{"text":"abc"}]}"#.as_bytes(),
        )
        .unwrap();
        assert_eq!(
            u,
            AnswerUsage {
                reported: None,
                text_bytes: 6 + 1 + 2 + 3
            }
        );
    }
}
