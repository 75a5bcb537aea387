//! `AuthError`: why an identity operation failed, rendered as an OpenAI-shaped error. Messages are
//! written for the client and never contain a secret (a key's `sy_<id>` prefix at most).

use std::time::Duration;

use switchyard_actors::store::StoreError;

use crate::error::{ApiError, RateHeaders};

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
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let message = e.to_string();
        match e {
            AuthError::Unauthenticated(m) => ApiError::Unauthenticated(m),
            AuthError::Forbidden(m) => ApiError::Forbidden(m),
            AuthError::NotFound(m) => ApiError::NotFound(m),
            AuthError::Invalid {
                message,
                param,
                code,
            } => ApiError::InvalidRequest {
                message,
                param,
                code,
            },
            AuthError::RateLimited { retry_after, limit } => {
                let secs = retry_after_secs(retry_after);
                ApiError::RateLimited {
                    message,
                    code: "login_rate_limited",
                    retry_after: secs,
                    rate: RateHeaders {
                        requests: Some((u64::from(limit), 0, secs)),
                        tokens: None,
                    },
                }
            }
            AuthError::Store(e) => ApiError::Internal(e.to_string()),
            AuthError::Internal(m) => ApiError::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::RETRY_AFTER;
    use actix_web::http::StatusCode;
    use actix_web::ResponseError;

    use super::*;

    #[test]
    fn rate_limits_render_as_429_with_retry_after() {
        let e = AuthError::RateLimited {
            retry_after: Duration::from_millis(1500),
            limit: 5,
        };
        let res = ApiError::from(e).error_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers().get(RETRY_AFTER).unwrap(), "2");
        assert_eq!(res.headers().get("x-ratelimit-limit").unwrap(), "5");
        assert_eq!(
            ApiError::from(AuthError::Unauthenticated("x".into())).status_code(),
            StatusCode::UNAUTHORIZED
        );
    }
}
