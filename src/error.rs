//! `ApiError`: every error a client can see, rendered once as an OpenAI-shaped body.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

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
    /// 403: credentials valid, action not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404 for an unknown model.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    UnknownModel(String),
    /// 404 for anything else.
    #[error("{0}")]
    NotFound(String),
    /// 413: the body exceeds `server.max_body_size`.
    #[error("Request body is larger than the limit of {limit} bytes.")]
    TooLarge { limit: usize },
    /// 503: no profile could be tried.
    #[error("{0}")]
    NoAvailableProfile(String),
    /// 502: profiles were tried and all failed.
    #[error("{0}")]
    Upstream(String),
    /// 504: the last failure was a timeout.
    #[error("{0}")]
    Timeout(String),
    /// 500: a fault of ours; the detail is logged, not shown.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
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
            ApiError::InvalidRequest { .. } | ApiError::TooLarge { .. } => "invalid_request_error",
            ApiError::Unauthenticated(_) => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            ApiError::UnknownModel(_) | ApiError::NotFound(_) => "not_found_error",
            ApiError::NoAvailableProfile(_) => "no_available_profile",
            ApiError::Upstream(_) => "upstream_error",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "server_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::UnknownModel(_) => Some("model_not_found"),
            ApiError::TooLarge { .. } => Some("request_too_large"),
            ApiError::NoAvailableProfile(_) => Some("no_available_profile"),
            ApiError::Upstream(_) => Some("upstream_error"),
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

    /// The JSON body, for places that write errors without a response (e.g. an SSE error event).
    pub fn body_json(&self) -> String {
        let body = Body {
            error: Inner {
                message: self.to_string(),
                kind: self.kind(),
                param: self.param(),
                code: self.code(),
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| String::from(r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::UnknownModel(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoAvailableProfile(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(detail) = self {
            tracing::error!(detail = %detail, "internal error");
        }
        let mut res = HttpResponse::build(self.status_code());
        res.content_type("application/json");
        if let ApiError::NoAvailableProfile(_) = self {
            // Clients should come back later rather than hammer us; a short hint is honest.
            res.insert_header((RETRY_AFTER, HeaderValue::from_static("1")));
        }
        res.body(self.body_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openai_shape() {
        let e = ApiError::UnknownModel("gpt-9".into());
        let v: serde_json::Value = serde_json::from_str(&e.body_json()).unwrap();
        assert_eq!(v["error"]["type"], "not_found_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
        assert_eq!(e.status_code(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn status_and_type_words_follow_the_contract() {
        let cases = [
            (
                ApiError::NoAvailableProfile("x".into()),
                503,
                "no_available_profile",
            ),
            (ApiError::Upstream("x".into()), 502, "upstream_error"),
            (ApiError::Timeout("x".into()), 504, "timeout"),
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
        ];
        for (e, status, kind) in cases {
            assert_eq!(e.status_code().as_u16(), status);
            assert_eq!(e.kind(), kind);
        }
    }
}
