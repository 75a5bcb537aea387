//! The OpenAI-compatible client API: thin handlers over `proxy::Proxy`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{current_request_id, is_admin, presented_credential, read_limited, Shared};
use crate::error::ApiError;
use crate::proxy::{Endpoint, Proxy, ProxyRequest};
use crate::request::RoutingFields;
use crate::upstream::WorkerUpstreams;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/chat/completions", web::post().to(chat_completions))
        .route("/v1/completions", web::post().to(completions))
        .route("/v1/embeddings", web::post().to(embeddings))
        .route("/v1/models", web::get().to(list_models))
        .route("/v1/models/{id:.*}", web::get().to(get_model));
}

/// Checks the client's credential. Gateway keys and JWTs arrive with client identity; until then, with
/// `auth.required: true` only an admin credential is accepted.
fn authenticate(shared: &Shared, req: &HttpRequest) -> Result<(), ApiError> {
    if !shared.config().auth.required {
        return Ok(());
    }
    match presented_credential(req) {
        None => Err(ApiError::Unauthenticated(
            "Missing credentials: send `Authorization: Bearer <key>` or `X-API-Key: <key>`.".into(),
        )),
        Some(_) if is_admin(shared, req) => Ok(()),
        Some(_) => Err(ApiError::Unauthenticated("Invalid credentials.".into())),
    }
}

async fn proxy(
    endpoint: Endpoint,
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
    upstreams: web::Data<WorkerUpstreams>,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    authenticate(&shared, &req)?;
    let config = shared.config();
    let body = read_limited(&req, payload, config.server.max_body_bytes).await?;
    let fields = RoutingFields::parse(&body)?;
    let session = req
        .headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| fields.user.clone());
    let request_id = current_request_id(&req);
    let span = tracing::info_span!("request", request_id = %request_id, model = %fields.model, stream = fields.stream);
    let proxy = Proxy {
        shared: &shared,
        config: &config,
        upstreams: &upstreams,
    };
    let req = ProxyRequest {
        endpoint,
        fields,
        body,
        request_id,
        session,
        account: None,
        key_id: None,
        started,
    };
    tracing::Instrument::instrument(proxy.forward(req), span).await
}

async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
    up: web::Data<WorkerUpstreams>,
) -> Result<HttpResponse, ApiError> {
    proxy(Endpoint::ChatCompletions, req, payload, shared, up).await
}

async fn completions(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
    up: web::Data<WorkerUpstreams>,
) -> Result<HttpResponse, ApiError> {
    proxy(Endpoint::Completions, req, payload, shared, up).await
}

async fn embeddings(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
    up: web::Data<WorkerUpstreams>,
) -> Result<HttpResponse, ApiError> {
    proxy(Endpoint::Embeddings, req, payload, shared, up).await
}

fn model_object(name: &str) -> serde_json::Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "switchyard"})
}

/// The models clients may ask for: the configured names, not the upstreams' lists.
async fn list_models(
    req: HttpRequest,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&shared, &req)?;
    let data: Vec<_> = shared
        .config()
        .models
        .iter()
        .map(|m| model_object(&m.name))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

async fn get_model(
    req: HttpRequest,
    id: web::Path<String>,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, ApiError> {
    authenticate(&shared, &req)?;
    match shared.config().model(&id) {
        Some(m) => Ok(HttpResponse::Ok().json(model_object(&m.name))),
        None => Err(ApiError::UnknownModel(id.into_inner())),
    }
}
