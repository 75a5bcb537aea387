//! HTTP: routes, thin handlers, request ids, body limits and admin authentication.

mod admin;
mod billing;
pub(crate) mod identity;
mod v1;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpMessage, HttpRequest};
use futures_util::StreamExt;

use crate::error::ApiError;
use crate::metrics::status_class;
use crate::state::AppState;
use crate::upstream::WorkerUpstreams;

/// The request id of the current request (set by the middleware).
#[derive(Clone)]
pub struct RequestId(pub String);

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client-sent id we can echo safely, else a fresh one.
fn request_id(req: &actix_web::dev::ServiceRequest) -> String {
    req.headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::new_v4().simple()))
}

/// Registers every route. `upstreams` is built per worker (see `upstream`).
pub fn configure(
    cfg: &mut web::ServiceConfig,
    shared: web::Data<AppState>,
    upstreams: web::Data<WorkerUpstreams>,
) {
    cfg.app_data(shared)
        .app_data(upstreams)
        .configure(v1::routes)
        .configure(admin::routes)
        .configure(identity::routes)
        .configure(billing::routes);
}

/// Builds the actix-web app around `configure`, with the request-id middleware and OpenAI-shaped 404s.
#[macro_export]
macro_rules! switchyard_app {
    ($shared:expr, $upstreams:expr) => {
        actix_web::App::new()
            .wrap_fn(|req, srv| $crate::http::with_request_id(req, srv))
            .configure(|cfg| $crate::http::configure(cfg, $shared, $upstreams))
            .default_service(actix_web::web::to($crate::http::not_found))
    };
}

/// Middleware body: gives every request an id and every response the `x-request-id` header.
pub fn with_request_id<S>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse, actix_web::Error>>
where
    S: Service<
        actix_web::dev::ServiceRequest,
        Response = ServiceResponse,
        Error = actix_web::Error,
    >,
{
    let id = request_id(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let fut = srv.call(req);
    async move {
        let mut res = fut.await?;
        if let Ok(v) = HeaderValue::from_str(&id) {
            res.headers_mut().insert(X_REQUEST_ID, v);
        }
        if let Some(m) = metrics {
            // The route pattern, never the raw path: bounded labels.
            let route = res
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_owned());
            m.http_requests
                .with_label_values(&[&route, status_class(res.status().as_u16())])
                .inc();
        }
        Ok(res)
    }
}

/// The fallback for unknown paths.
pub async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "Unknown request URL: {} {}",
        req.method(),
        req.path()
    )))
}

/// The request id stored by the middleware.
pub fn current_request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

/// Reads the body up to `limit` bytes; larger bodies are refused with 413 before reading them whole.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let mut body = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::invalid(format!("Could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
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
    if let Some(v) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    req.headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Whether the request carries the admin token or an admin-role credential.
pub fn is_admin(shared: &AppState, req: &HttpRequest) -> bool {
    match (&shared.admin_token, presented_credential(req)) {
        (Some(token), Some(given)) => {
            constant_time_eq(token.as_bytes(), given.as_bytes())
                || identity::is_admin_credential(shared, given)
        }
        _ => false,
    }
}
