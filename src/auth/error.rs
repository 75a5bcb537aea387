//! `AuthError`: why an identity operation failed, rendered as an OpenAI-shaped error. Messages are
//! written for the client and never contain a secret (a key's `sy_<id>` prefix at most).

use std::time::Duration;

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use switchyard_actors::store::StoreError;

use crate::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// 401: missing, wrong, revoked or expired credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: valid credentials, action not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such key or account (or not yours).
    #[error("{0}")]
    NotFound(String),
    /// 400: the request is malformed.
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<&'static str>,
        code: Option<&'static str>,
    },
    /// 429: too many sign-in attempts.
    #[error("Too many sign-in attempts; retry in {} s.", retry_after_secs(*.retry_after))]
    RateLimited { retry_after: Duration, limit: u32 },
    /// 500: the store failed; logged, not shown.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// 500: a fault of ours; logged, not shown.
    #[error("{0}")]
    Internal(String),
}

fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl AuthError {
    /// A 400 with a parameter name.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> AuthError {
        AuthError::Invalid {
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }

    /// The same error as an `ApiError`, for everything but 429 which `ApiError` does not know.
    fn as_api(&self) -> Option<ApiError> {
        Some(match self {
            AuthError::Unauthenticated(m) => ApiError::Unauthenticated(m.clone()),
            AuthError::Forbidden(m) => ApiError::Forbidden(m.clone()),
            AuthError::NotFound(m) => ApiError::NotFound(m.clone()),
            AuthError::Invalid {
                message,
                param,
                code,
            } => ApiError::InvalidRequest {
                message: message.clone(),
                param: *param,
                code: *code,
            },
            AuthError::RateLimited { .. } => return None,
            AuthError::Store(e) => ApiError::Internal(e.to_string()),
            AuthError::Internal(m) => ApiError::Internal(m.clone()),
        })
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        e.as_api()
            .unwrap_or_else(|| ApiError::Unauthenticated(e.to_string()))
    }
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        match self.as_api() {
            Some(api) => api.status_code(),
            None => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let AuthError::RateLimited { retry_after, limit } = self else {
            return match self.as_api() {
                Some(api) => api.error_response(),
                None => HttpResponse::InternalServerError().finish(),
            };
        };
        let secs = retry_after_secs(*retry_after);
        let body = serde_json::json!({"error": {
            "message": self.to_string(),
            "type": "rate_limit_error",
            "param": null,
            "code": "login_rate_limited",
        }});
        let mut res = HttpResponse::TooManyRequests();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            res.insert_header((RETRY_AFTER, v.clone()));
            res.insert_header(("x-ratelimit-reset", v));
        }
        res.insert_header(("x-ratelimit-limit", limit.to_string()))
            .insert_header(("x-ratelimit-remaining", "0"))
            .json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_render_as_429_with_retry_after() {
        let e = AuthError::RateLimited {
            retry_after: Duration::from_millis(1500),
            limit: 5,
        };
        let res = e.error_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers().get(RETRY_AFTER).unwrap(), "2");
        assert_eq!(res.headers().get("x-ratelimit-limit").unwrap(), "5");
        assert_eq!(
            AuthError::Unauthenticated("x".into()).status_code(),
            StatusCode::UNAUTHORIZED
        );
    }
}
