//! The OpenAI-compatible client API: thin handlers over `proxy::Proxy`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::{current_request_id, identity, read_limited};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::forward::{Endpoint, Proxy, ProxyRequest};
use crate::limits::{Admission, CallKind, Subject};
use crate::state::AppState;
use crate::upstream::WorkerUpstreams;
use crate::wire::anthropic::messages_request_to_chat;
use crate::wire::openai::RoutingFields;
use crate::wire::{anthropic_error_json, Dialect};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/chat/completions", web::post().to(chat_completions))
        .route("/v1/completions", web::post().to(completions))
        .route("/v1/embeddings", web::post().to(embeddings))
        .route("/v1/messages", web::post().to(messages))
        .route("/v1/models", web::get().to(list_models))
        .route("/v1/models/{id:.*}", web::get().to(get_model));
}

/// Checks the client's credential (API key, JWT or the admin token): the caller, or `None` when no
/// credential was sent and `auth.required` is false. A credential that is sent is always checked.
async fn authenticate(shared: &AppState, req: &HttpRequest) -> Result<Option<Principal>, ApiError> {
    identity::authenticate_client(shared, req).await
}

fn may_use(principal: Option<&Principal>, model: &str) -> bool {
    principal.is_none_or(|p| p.may_use_model(model))
}

async fn proxy(
    endpoint: Endpoint,
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<AppState>,
    upstreams: web::Data<WorkerUpstreams>,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let principal = authenticate(&shared, &req).await?;
    let config = shared.config();
    let admission = match shared
        .limits
        .admit_principal(&config, principal.as_ref(), CallKind::Llm)
    {
        Ok(a) => a,
        Err(refusal) => return Ok(refusal.response(Dialect::OpenAi)),
    };
    let result = async {
        let body = read_limited(&req, payload, config.server.max_body_bytes).await?;
        let call = Call {
            endpoint,
            dialect: Dialect::OpenAi,
            started,
            principal,
            subject: admission.subject.clone(),
        };
        forward(call, &req, body, &shared, &upstreams).await
    }
    .await;
    Ok(admission.decorate(result))
}

/// What a handler learned before the body is forwarded.
struct Call {
    endpoint: Endpoint,
    dialect: Dialect,
    started: std::time::Instant,
    principal: Option<Principal>,
    /// The caller's tier, for `max_tokens_per_request` and credits.
    subject: Option<Subject>,
}

/// Routes an OpenAI-shaped body (the client's, or the translation of an Anthropic one).
async fn forward(
    call: Call,
    req: &HttpRequest,
    body: bytes::Bytes,
    shared: &AppState,
    upstreams: &WorkerUpstreams,
) -> Result<HttpResponse, ApiError> {
    let Call {
        endpoint,
        dialect,
        started,
        principal,
        subject,
    } = call;
    let config = shared.config();
    let fields = RoutingFields::parse(&body)?;
    if !may_use(principal.as_ref(), &fields.model) {
        return Err(ApiError::Forbidden(format!(
            "This credential may not use the model `{}`.",
            fields.model
        )));
    }
    let session = req
        .headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| fields.user.clone());
    let request_id = current_request_id(req);
    let embeddings = endpoint == Endpoint::Embeddings;
    let hold = shared.limits.hold(
        &config,
        subject.as_ref(),
        &fields.model,
        &body,
        embeddings,
        &request_id,
    );
    let accounting = match hold {
        Ok(h) => h,
        Err(refusal) => return Ok(refusal.response(dialect)),
    };
    // Debug, like the per-attempt span: an info span is formatted on every request by the JSON layer
    // even when nothing is logged under it. Warnings on the forward path carry `request_id` themselves.
    let span = tracing::debug_span!("request", request_id = %request_id, model = %fields.model, stream = fields.stream);
    let proxy = Proxy {
        shared,
        config: &config,
        upstreams,
    };
    let req = ProxyRequest {
        endpoint,
        fields,
        body,
        request_id,
        session,
        account: principal.as_ref().and_then(|p| p.account.clone()),
        key_id: principal
            .as_ref()
            .and_then(|p| p.key_id().map(str::to_owned)),
        started,
        dialect,
        accounting,
    };
    tracing::Instrument::instrument(proxy.forward(req), span).await
}

async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<AppState>,
    up: web::Data<WorkerUpstreams>,
) -> Result<HttpResponse, ApiError> {
    proxy(Endpoint::ChatCompletions, req, payload, shared, up).await
}

async fn completions(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<AppState>,
    up: web::Data<WorkerUpstreams>,
) -> Result<HttpResponse, ApiError> {
    proxy(Endpoint::Completions, req, payload, shared, up).await
}

async fn embeddings(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<AppState>,
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
    shared: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = authenticate(&shared, &req).await?;
    let admission = match admit_other(&shared, principal.as_ref()) {
        Ok(a) => a,
        Err(refused) => return Ok(*refused),
    };
    let data: Vec<_> = shared
        .config()
        .models
        .iter()
        .filter(|m| may_use(principal.as_ref(), &m.name))
        .map(|m| model_object(&m.name))
        .collect();
    Ok(admission.decorate(Ok(
        HttpResponse::Ok().json(json!({"object": "list", "data": data}))
    )))
}

async fn get_model(
    req: HttpRequest,
    id: web::Path<String>,
    shared: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = authenticate(&shared, &req).await?;
    let admission = match admit_other(&shared, principal.as_ref()) {
        Ok(a) => a,
        Err(refused) => return Ok(*refused),
    };
    let result = match shared
        .config()
        .model(&id)
        .filter(|m| may_use(principal.as_ref(), &m.name))
    {
        Some(m) => Ok(HttpResponse::Ok().json(model_object(&m.name))),
        None => Err(ApiError::UnknownModel(id.into_inner())),
    };
    Ok(admission.decorate(result))
}

/// Counts a `/v1` call that is not a model request; a refusal is the 429 to answer.
pub(super) fn admit_other(
    shared: &AppState,
    principal: Option<&Principal>,
) -> Result<Admission, Box<HttpResponse>> {
    shared
        .limits
        .admit_principal(&shared.config(), principal, CallKind::Other)
        .map_err(|r| Box::new(r.response(Dialect::OpenAi)))
}

/// `POST /v1/messages`: the Anthropic Messages API, for tools that speak it. The request is translated to
/// a chat completion, routed like any other (to OpenAI-compatible and Anthropic profiles alike), and the
/// answer — body or stream — translated back. Errors come in Anthropic's shape.
async fn messages(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<AppState>,
    upstreams: web::Data<WorkerUpstreams>,
) -> HttpResponse {
    let started = std::time::Instant::now();
    let mut admission = Admission::default();
    let result = async {
        let principal = authenticate(&shared, &req).await?;
        let config = shared.config();
        admission = match shared
            .limits
            .admit_principal(&config, principal.as_ref(), CallKind::Llm)
        {
            Ok(a) => a,
            Err(refusal) => return Ok(refusal.response(Dialect::Anthropic)),
        };
        let body = read_limited(&req, payload, config.server.max_body_bytes).await?;
        let (chat, _info) =
            messages_request_to_chat(&body).map_err(|e| ApiError::invalid(e.to_string()))?;
        let call = Call {
            endpoint: Endpoint::ChatCompletions,
            dialect: Dialect::Anthropic,
            started,
            principal,
            subject: admission.subject.clone(),
        };
        forward(call, &req, bytes::Bytes::from(chat), &shared, &upstreams).await
    }
    .await;
    match result {
        Ok(mut resp) => {
            admission.rate.apply(&mut resp);
            resp
        }
        Err(e) => {
            let mut res = actix_web::ResponseError::error_response(&e);
            let body = anthropic_error_json(&e);
            res.headers_mut().insert(
                actix_web::http::header::CONTENT_TYPE,
                actix_web::http::header::HeaderValue::from_static("application/json"),
            );
            let mut res = res.set_body(actix_web::body::BoxBody::new(body));
            admission.rate.apply(&mut res);
            res
        }
    }
}
