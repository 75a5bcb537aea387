//! What handlers take from a request before they act: the caller (a gateway key, a JWT or the admin
//! token), the one admin gate, the request id, and the body (bounded, then parsed as JSON).
//!
//! `Caller` and `Admin` are actix-web extractors, so a handler that names one in its arguments never
//! runs for a request that fails the check; the refusal is an `ApiError`, rendered once.

use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header::{AUTHORIZATION, CONTENT_LENGTH, COOKIE};
use actix_web::http::Method;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::auth::{web as web_session, AuthError, Principal, KEY_PREFIX};
use crate::config::{Config, ServerConfig};
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::depth::{check_depth, MAX_JSON_DEPTH};

/// The request id of the current request (set by the middleware in `http::with_request_id`).
#[derive(Clone)]
pub struct RequestId(pub String);

/// The request id stored by the middleware.
pub fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

/// The app state of a request (registered by `http::configure` on every app).
pub fn app_state(req: &HttpRequest) -> Result<web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::Internal("the app state is not registered".into()))
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, from `Authorization: Bearer` or `X-API-Key`.
pub fn presented_credential(req: &HttpRequest) -> Option<&str> {
    if let Some(v) = req.headers().get(AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    req.headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The client's IP address, for rate limits and the audit log.
pub fn address(req: &HttpRequest) -> Option<String> {
    req.peer_addr().map(|a| a.ip().to_string())
}

/// The caller, if it presented a credential; a presented credential is always checked, even with
/// `auth.required: false`. Without one, the dashboard's session cookie counts (see `dashboard_caller`).
pub async fn principal(
    state: &AppState,
    req: &HttpRequest,
) -> Result<Option<Principal>, AuthError> {
    if presented_credential(req).is_none() {
        if let Some(secret) = dashboard_cookie(req) {
            return dashboard_caller(state, req, &secret).await.map(Some);
        }
    }
    principal_under(state, &state.config(), req).await
}

/// The secret of the dashboard's session cookie, if the request carries one.
pub fn dashboard_cookie(req: &HttpRequest) -> Option<String> {
    let header = req.headers().get(COOKIE)?.to_str().ok()?;
    web_session::cookie_value(header, web_session::SESSION_COOKIE).map(str::to_owned)
}

/// The caller behind a dashboard cookie. Only the routes that take `Caller` or `Admin` accept it
/// (never the model routes), and a change (any method but GET and HEAD) only from the dashboard's
/// own origin with the session's CSRF token: 403 otherwise, so a form on another site cannot act.
async fn dashboard_caller(
    state: &AppState,
    req: &HttpRequest,
    secret: &str,
) -> Result<Principal, AuthError> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let host = req.connection_info().host().to_owned();
        if !web_session::same_origin(header("origin"), header("sec-fetch-site"), &host) {
            return Err(AuthError::Forbidden(
                "Cross-origin request refused: the dashboard's session only acts for its own pages."
                    .into(),
            ));
        }
        let token = header(web_session::CSRF_HEADER).unwrap_or("");
        if !web_session::csrf_matches(secret, token) {
            return Err(AuthError::Forbidden(format!(
                "Missing or wrong CSRF token: a change made with the dashboard's session needs the `{}` header its page sends.",
                web_session::CSRF_HEADER
            )));
        }
    }
    state.auth.web_principal(&state.config().auth, secret).await
}

/// `principal` under a config snapshot the caller already holds.
async fn principal_under(
    state: &AppState,
    config: &Config,
    req: &HttpRequest,
) -> Result<Option<Principal>, AuthError> {
    let Some(given) = presented_credential(req) else {
        return Ok(None);
    };
    if is_admin_token(state, given) {
        return Ok(Some(Principal::admin_token()));
    }
    state.auth.authenticate(&config.auth, given).await.map(Some)
}

fn is_admin_token(state: &AppState, given: &str) -> bool {
    state
        .admin_token
        .as_deref()
        .is_some_and(|t| constant_time_eq(t.as_bytes(), given.as_bytes()))
}

/// For the `/v1` proxy routes: the caller, or `None` when none is needed (`auth.required: false`).
///
/// With `auth.required: false` a credential that is not ours (neither a `sy_` key nor a JWT) is
/// ignored: OpenAI SDKs insist on sending some API key, and local setups put a placeholder there.
pub async fn client(
    state: &AppState,
    config: &Config,
    req: &HttpRequest,
) -> Result<Option<Principal>, ApiError> {
    let required = config.auth.required;
    if !required && presented_credential(req).is_some_and(|given| !looks_like_ours(state, given)) {
        return Ok(None);
    }
    match principal_under(state, config, req).await? {
        Some(p) => Ok(Some(p)),
        None if required => Err(missing().into()),
        None => Ok(None),
    }
}

/// A gateway key, a JWT, or the admin token.
fn looks_like_ours(state: &AppState, given: &str) -> bool {
    given.starts_with(KEY_PREFIX) || given.split('.').count() == 3 || is_admin_token(state, given)
}

fn missing() -> AuthError {
    AuthError::Unauthenticated(
        "Missing credentials: send `Authorization: Bearer <key or token>` or `X-API-Key: <key>`."
            .into(),
    )
}

/// A signed-in caller (any valid credential): 401 without one.
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = app_state(&req)?;
            let p = principal(&state, &req).await?.ok_or_else(missing)?;
            Ok(Caller(p))
        })
    }
}

/// The one admin gate, for every admin route: 401 `authentication_error` without a credential (or with
/// a wrong one), 403 `permission_error` for a valid credential without the admin role. While the admin
/// token's variable is unset the admin API is disabled and refuses everyone, saying which variable.
pub struct Admin(pub Principal);

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = app_state(&req)?;
            admin_gate(&state, &req).await.map(Admin)
        })
    }
}

async fn admin_gate(state: &AppState, req: &HttpRequest) -> Result<Principal, ApiError> {
    let disabled = state.admin_token.is_none().then(|| {
        format!(
            "The admin API is disabled: set {} to enable it.",
            state.config().auth.admin_token_env
        )
    });
    match principal(state, req).await? {
        None => Err(ApiError::Unauthenticated(
            disabled.unwrap_or_else(|| "Admin credentials required.".into()),
        )),
        Some(p) if !p.admin => Err(ApiError::Forbidden(
            "This route needs the admin token or an admin credential.".into(),
        )),
        Some(_) if disabled.is_some() => Err(ApiError::Forbidden(disabled.unwrap_or_default())),
        Some(p) => Ok(p),
    }
}

/// Reads the body up to `limit` bytes; larger bodies are refused with 413 before reading them whole.
/// A body that pauses longer than `server.body_idle_timeout`, or takes longer than
/// `server.body_timeout` in all, is refused with 408, so a slow sender cannot hold a worker's
/// connection (and its buffer) open at will.
pub async fn read_limited(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let config = app_state(req)?.config();
    read_body(req, payload, limit, &config.server).await
}

/// `read_limited` with the request's config snapshot already in hand (the model routes): up to `limit`
/// bytes, within the server's idle and total body deadlines (408 past either).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    server: &ServerConfig,
) -> Result<bytes::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let (idle, total) = (server.body_idle_timeout, server.body_timeout);
    let deadline = tokio::time::Instant::now() + total;
    let mut body = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    loop {
        let by = deadline.min(tokio::time::Instant::now() + idle);
        let Ok(next) = tokio::time::timeout_at(by, payload.next()).await else {
            return Err(body_timeout(by == deadline, idle, total));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("Could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The 408 for a body that stalled for `idle` or took longer than `total` in all.
fn body_timeout(total_passed: bool, idle: Duration, total: Duration) -> ApiError {
    ApiError::RequestTimeout(match total_passed {
        true => format!(
            "The request body took longer than {} to arrive.",
            humantime::format_duration(total)
        ),
        false => format!(
            "The request body stalled: nothing arrived for {}.",
            humantime::format_duration(idle)
        ),
    })
}

/// Largest body of the identity and billing APIs (small JSON objects); bounds what is read.
pub const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// Reads and parses a small JSON body; an empty body reads as `{}`. Messages name fields, never echo
/// values (a body may hold a password).
pub async fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T, ApiError> {
    let bytes = read_limited(req, payload, SMALL_BODY_LIMIT).await?;
    check_depth(&bytes, MAX_JSON_DEPTH)?;
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        let message = if text.starts_with("unknown field") || text.starts_with("missing field") {
            format!("Invalid request body: {text}")
        } else {
            format!(
                "Invalid request body: not the expected JSON (line {}, column {}).",
                e.line(),
                e.column()
            )
        };
        ApiError::invalid(message)
    })
}
