//! HTTP: the routes and the request-id middleware. Handlers are thin: they take what `extract` gives
//! them (the caller, the admin gate, the body), ask a lower layer, and answer through `respond` (or an
//! `ApiError`, rendered once in the client's dialect).
//!
//! * `v1.rs` — the client API (`/v1/chat/completions`, `/v1/messages`, models...).
//! * `identity.rs` — sign-in, the caller's own keys, the admin API for keys, accounts, audit.
//! * `billing.rs` — usage, credits, tiers and the billing webhook.
//! * `admin.rs` — health, `/metrics`, profiles, reload.
//! * `ui.rs` — the browser dashboard at `/ui` and its sign-in.

mod admin;
mod billing;
pub mod extract;
mod identity;
pub mod respond;
mod ui;
mod v1;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpMessage, HttpRequest};

use crate::error::ApiError;
use crate::metrics::status_class;
use crate::state::AppState;
use crate::upstream::WorkerUpstreams;

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
        .configure(billing::routes)
        .configure(ui::routes);
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
    req.extensions_mut().insert(extract::RequestId(id.clone()));
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
