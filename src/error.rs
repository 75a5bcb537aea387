//! `ApiError`: every error a client can see, built by one constructor per case and rendered in one
//! place, in the client's dialect (OpenAI's `{"error": {...}}` or Anthropic's `{"type": "error", ...}`).
//! The layers' own errors (`AuthError`, `limits::Refusal`, wire parse errors) convert into it with
//! `From`, so a handler only writes `?`.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::wire::anthropic::TranslateError;
use crate::wire::depth::TooDeep;
use crate::wire::openai::FieldError;
use crate::wire::Dialect;

/// An error answered to a client. The message is written for the client: it names profiles and
/// reasons, never credentials.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
        code: Option<&'static str>,
    },
    /// 401: missing or wrong credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// 402: the caller's credits cannot cover the request.
    #[error("{0}")]
    InsufficientQuota(String),
    /// 403: credentials valid, action not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404 for an unknown model.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    UnknownModel(String),
    /// 404 for anything else.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request repeats one already applied (a webhook replay).
    #[error("{message}")]
    Conflict { message: String, code: &'static str },
    /// 408: the body arrived too slowly (`server.body_idle_timeout`, `server.body_timeout`).
    #[error("{0}")]
    RequestTimeout(String),
    /// 413: the body exceeds `server.max_body_size`.
    #[error("Request body is larger than the limit of {limit} bytes.")]
    TooLarge { limit: usize },
    /// 429: a limit of the caller's tier (or of sign-ins) is spent; `retry_after` in whole seconds.
    #[error("{message}")]
    RateLimited {
        message: String,
        code: &'static str,
        retry_after: u64,
        rate: RateHeaders,
    },
    /// 503: no profile could be tried. `retry_after`: whole seconds until the earliest profile can be
    /// tried again by itself; `None` when none can (every one needs an operator), and no `Retry-After`
    /// is sent.
    #[error("{message}")]
    NoAvailableProfile {
        message: String,
        retry_after: Option<u64>,
    },
    /// 503: state the answer depends on cannot be decided now (credits while the shared state is
    /// unreachable or behind its high-water mark); `retry_after` in whole seconds.
    #[error("{message}")]
    Unavailable {
        message: String,
        code: &'static str,
        retry_after: u64,
    },
    /// 502: profiles were tried and all failed.
    #[error("{0}")]
    Upstream(String),
    /// 529: profiles were tried and every one said it is overloaded (Anthropic's 529), so clients
    /// that retry on `overloaded_error` do.
    #[error("{0}")]
    Overloaded(String),
    /// 504: the last failure was a timeout.
    #[error("{0}")]
    Timeout(String),
    /// 500: a fault of ours; the detail is logged, not shown.
    #[error("internal error")]
    Internal(String),
}

/// The `X-RateLimit-*` values of a call: (limit, remaining, seconds until reset) of the tightest request
/// limit and of the daily token budget. Sent on answers and on refusals alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<(u64, u64, u64)>,
    pub tokens: Option<(u64, u64, u64)>,
}

impl RateHeaders {
    /// Writes the headers that have a value. The names are built at compile time and the numbers
    /// written straight into the value: `to_string` and `from_str`'s checks cost ~700 instructions
    /// a header, on every metered answer.
    pub fn apply(&self, headers: &mut HeaderMap) {
        const REQUESTS: [HeaderName; 3] = [
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderName::from_static("x-ratelimit-reset"),
        ];
        const TOKENS: [HeaderName; 3] = [
            HeaderName::from_static("x-ratelimit-limit-tokens"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ];
        for (names, values) in [(REQUESTS, self.requests), (TOKENS, self.tokens)] {
            if let Some((limit, remaining, reset)) = values {
                for (name, v) in names.into_iter().zip([limit, remaining, reset]) {
                    headers.insert(name, HeaderValue::from(v));
                }
            }
        }
    }
}

#[derive(Serialize)]
struct OpenAiBody<'a> {
    error: OpenAiInner<'a>,
}

#[derive(Serialize)]
struct OpenAiInner<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicInner<'a>,
}

#[derive(Serialize)]
struct AnthropicInner<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: String,
}

impl ApiError {
    /// A 400 `invalid_request_error` with a message.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// The OpenAI `type` word.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::TooLarge { .. }
            | ApiError::RequestTimeout(_)
            | ApiError::Conflict { .. } => "invalid_request_error",
            ApiError::Unauthenticated(_) => "authentication_error",
            ApiError::InsufficientQuota(_) => "insufficient_quota",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::UnknownModel(_) | ApiError::NotFound(_) => "not_found_error",
            ApiError::RateLimited { .. } => "rate_limit_error",
            ApiError::NoAvailableProfile { .. } => "no_available_profile",
            ApiError::Upstream(_) | ApiError::Overloaded(_) => "upstream_error",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) | ApiError::Unavailable { .. } => "server_error",
        }
    }

    /// Anthropic's `error.type` word for the same case (its clients decide retries on it).
    fn anthropic_kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::TooLarge { .. }
            | ApiError::RequestTimeout(_)
            | ApiError::Conflict { .. } => "invalid_request_error",
            ApiError::Unauthenticated(_) => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::UnknownModel(_) | ApiError::NotFound(_) => "not_found_error",
            ApiError::RateLimited { .. } => "rate_limit_error",
            ApiError::NoAvailableProfile { .. }
            | ApiError::Overloaded(_)
            | ApiError::Unavailable { .. } => "overloaded_error",
            ApiError::InsufficientQuota(_)
            | ApiError::Timeout(_)
            | ApiError::Upstream(_)
            | ApiError::Internal(_) => "api_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::Conflict { code, .. } => Some(code),
            ApiError::InsufficientQuota(_) => Some("insufficient_quota"),
            ApiError::UnknownModel(_) => Some("model_not_found"),
            ApiError::TooLarge { .. } => Some("request_too_large"),
            ApiError::RequestTimeout(_) => Some("request_timeout"),
            ApiError::RateLimited { code, .. } | ApiError::Unavailable { code, .. } => Some(code),
            ApiError::NoAvailableProfile { .. } => Some("no_available_profile"),
            ApiError::Upstream(_) => Some("upstream_error"),
            ApiError::Overloaded(_) => Some("overloaded"),
            ApiError::Timeout(_) => Some("timeout"),
            _ => None,
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { param, .. } => *param,
            ApiError::UnknownModel(_) => Some("model"),
            _ => None,
        }
    }

    /// The JSON body in `dialect`, also for places that write errors without a response (an SSE
    /// error event).
    pub fn body(&self, dialect: Dialect) -> String {
        let json = match dialect {
            Dialect::OpenAi => serde_json::to_string(&OpenAiBody {
                error: OpenAiInner {
                    message: self.to_string(),
                    kind: self.kind(),
                    param: self.param(),
                    code: self.code(),
                },
            }),
            Dialect::Anthropic => serde_json::to_string(&AnthropicBody {
                kind: "error",
                error: AnthropicInner {
                    kind: self.anthropic_kind(),
                    message: self.to_string(),
                },
            }),
        };
        json.unwrap_or_else(|_| String::from(r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#))
    }

    /// The whole response in `dialect`: status, body and the headers the case carries.
    pub fn render(&self, dialect: Dialect) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            tracing::error!(detail = %detail, "internal error");
        }
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        match self {
            // When the first profile can be tried again; nothing when none recovers by itself.
            ApiError::NoAvailableProfile {
                retry_after: Some(retry_after),
                ..
            }
            | ApiError::RateLimited { retry_after, .. }
            | ApiError::Unavailable { retry_after, .. } => {
                res.insert_header((RETRY_AFTER, retry_after.to_string()));
            }
            _ => {}
        }
        let mut res = res.body(self.body(dialect));
        if let ApiError::RateLimited { rate, .. } = self {
            rate.apply(res.headers_mut());
        }
        res
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientQuota(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::UnknownModel(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NoAvailableProfile { .. } | ApiError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            // 529 is Anthropic's; it is a valid status code, and OpenAI SDKs retry 5xx alike.
            ApiError::Overloaded(_) => {
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI shape, for routes that are not `/v1/messages*` (those render through `render`).
    fn error_response(&self) -> HttpResponse {
        self.render(Dialect::OpenAi)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        let (param, code) = match &e {
            FieldError::Empty => (None, None),
            FieldError::NotJson(_) => (None, Some("invalid_json")),
            FieldError::NoModel => (Some("model"), None),
            FieldError::Duplicate(key) => (Some(*key), Some("duplicate_field")),
            FieldError::NotATokenCount(key) => (Some(*key), Some("invalid_type")),
        };
        ApiError::InvalidRequest {
            message: e.to_string(),
            param,
            code,
        }
    }
}

impl From<TooDeep> for ApiError {
    fn from(e: TooDeep) -> ApiError {
        ApiError::InvalidRequest {
            message: e.to_string(),
            param: None,
            code: Some("json_too_deep"),
        }
    }
}

impl From<TranslateError> for ApiError {
    fn from(e: TranslateError) -> ApiError {
        ApiError::invalid(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openai_shape() {
        let e = ApiError::UnknownModel("gpt-9".into());
        let v: serde_json::Value = serde_json::from_str(&e.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn renders_anthropic_shape() {
        let e = ApiError::NoAvailableProfile {
            message: "all cooling down".into(),
            retry_after: Some(3),
        };
        let v: serde_json::Value = serde_json::from_str(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "overloaded_error");
        assert_eq!(v["error"]["message"], "all cooling down");
    }

    #[test]
    fn a_rate_limit_carries_retry_after_and_its_limits_in_both_dialects() {
        let e = ApiError::RateLimited {
            message: "slow down".into(),
            code: "rate_limit_exceeded",
            retry_after: 7,
            rate: RateHeaders {
                requests: Some((10, 0, 7)),
                tokens: None,
            },
        };
        for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
            let res = e.render(dialect);
            assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
            let h = res.headers();
            assert_eq!(h.get(RETRY_AFTER).unwrap(), "7");
            assert_eq!(h.get("x-ratelimit-remaining").unwrap(), "0");
            assert_eq!(h.get("x-ratelimit-limit").unwrap(), "10");
        }
    }

    #[test]
    fn rate_headers_carry_each_number_under_its_own_name() {
        let mut h = HeaderMap::new();
        RateHeaders {
            requests: Some((100, 0, 59)),
            tokens: Some((u64::MAX, 123_456_789, 86_400)),
        }
        .apply(&mut h);
        for (name, value) in [
            ("x-ratelimit-limit", "100"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "59"),
            ("x-ratelimit-limit-tokens", "18446744073709551615"),
            ("x-ratelimit-remaining-tokens", "123456789"),
            ("x-ratelimit-reset-tokens", "86400"),
        ] {
            assert_eq!(h.get(name).unwrap(), value, "{name}");
        }
        let mut only_requests = HeaderMap::new();
        RateHeaders {
            requests: Some((1, 1, 1)),
            tokens: None,
        }
        .apply(&mut only_requests);
        assert_eq!(only_requests.len(), 3);
    }

    #[test]
    fn retry_after_on_503_is_the_given_one_or_none() {
        let at = |retry_after| {
            ApiError::NoAvailableProfile {
                message: "x".into(),
                retry_after,
            }
            .render(Dialect::OpenAi)
        };
        assert_eq!(at(Some(17)).headers().get(RETRY_AFTER).unwrap(), "17");
        assert!(at(None).headers().get(RETRY_AFTER).is_none());
    }

    #[test]
    fn status_and_type_words_follow_the_contract() {
        let cases = [
            (
                ApiError::NoAvailableProfile {
                    message: "x".into(),
                    retry_after: None,
                },
                503,
                "no_available_profile",
            ),
            (ApiError::Upstream("x".into()), 502, "upstream_error"),
            (ApiError::Timeout("x".into()), 504, "timeout"),
            (
                ApiError::RequestTimeout("x".into()),
                408,
                "invalid_request_error",
            ),
            (
                ApiError::TooLarge { limit: 1 },
                413,
                "invalid_request_error",
            ),
            (
                ApiError::Unauthenticated("x".into()),
                401,
                "authentication_error",
            ),
            (ApiError::Forbidden("x".into()), 403, "permission_error"),
            (
                ApiError::InsufficientQuota("x".into()),
                402,
                "insufficient_quota",
            ),
        ];
        for (e, status, kind) in cases {
            assert_eq!(e.status_code().as_u16(), status);
            assert_eq!(e.kind(), kind);
        }
    }
}
