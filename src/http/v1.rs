//! The client API: OpenAI Chat Completions, Completions, Embeddings and Models, and Anthropic Messages.
//! Thin handlers over `forward::Proxy`: authenticate, admit, read the body, forward, reply.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde_json::json;

use super::extract::{self, read_body};
use super::respond::{admit_other, reply};
use crate::auth::Principal;
use crate::config::{BodyKey, Config, Provider, StickySource};
use crate::error::ApiError;
use crate::forward::{Endpoint, NativeRequest, Proxy, ProxyRequest, StoredCall};
use crate::limits::{CallKind, PendingAdmission, RateStatus};
use crate::state::AppState;
use crate::upstream::WorkerUpstreams;
use crate::wire::anthropic::messages_request_to_chat;
use crate::wire::anthropic::native::metadata_user;
use crate::wire::depth::{check_depth, MAX_JSON_DEPTH};
use crate::wire::openai::{refuse_duplicates, RoutingFields};
use crate::wire::Dialect;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/chat/completions", web::post().to(chat_completions))
        .route("/v1/completions", web::post().to(completions))
        .route("/v1/embeddings", web::post().to(embeddings))
        .route("/v1/messages", web::post().to(messages))
        .route("/v1/messages/count_tokens", web::post().to(count_tokens))
        .route("/v1/responses", web::post().to(responses))
        .route("/v1/responses/{id}", web::get().to(get_response))
        .route("/v1/responses/{id}", web::delete().to(delete_response))
        .route(
            "/v1/responses/{id}/input_items",
            web::get().to(response_input_items),
        )
        .route("/v1/models", web::get().to(list_models))
        .route("/v1/models/{id:.*}", web::get().to(get_model));
}

type State = web::Data<AppState>;
type Workers = web::Data<WorkerUpstreams>;

async fn chat_completions(
    req: HttpRequest,
    body: web::Payload,
    s: State,
    w: Workers,
) -> HttpResponse {
    let call = Call::new(Endpoint::ChatCompletions, Dialect::OpenAi);
    model_call(call, req, body, &s, &w).await
}

async fn completions(req: HttpRequest, body: web::Payload, s: State, w: Workers) -> HttpResponse {
    let call = Call::new(Endpoint::Completions, Dialect::OpenAi);
    model_call(call, req, body, &s, &w).await
}

async fn embeddings(req: HttpRequest, body: web::Payload, s: State, w: Workers) -> HttpResponse {
    let call = Call::new(Endpoint::Embeddings, Dialect::OpenAi);
    model_call(call, req, body, &s, &w).await
}

/// `POST /v1/messages`: the Anthropic Messages API, for tools that speak it. The request is translated to
/// a chat completion, routed like any other (to OpenAI-compatible and Anthropic profiles alike), and the
/// answer — body or stream — translated back. Errors come in Anthropic's shape.
async fn messages(req: HttpRequest, body: web::Payload, s: State, w: Workers) -> HttpResponse {
    let call = Call::new(Endpoint::ChatCompletions, Dialect::Anthropic);
    model_call(call, req, body, &s, &w).await
}

/// `POST /v1/messages/count_tokens`: passed through to an Anthropic profile of the model; a model with
/// none gets an estimate (see `estimated_count`).
async fn count_tokens(req: HttpRequest, body: web::Payload, s: State, w: Workers) -> HttpResponse {
    let call = Call::new(Endpoint::CountTokens, Dialect::Anthropic);
    model_call(call, req, body, &s, &w).await
}

/// `POST /v1/responses`: the OpenAI Responses API (Codex's only wire), passed through to
/// OpenAI-compatible profiles, JSON or SSE, with failover before the first byte.
async fn responses(req: HttpRequest, body: web::Payload, s: State, w: Workers) -> HttpResponse {
    let call = Call::new(Endpoint::Responses, Dialect::OpenAi);
    model_call(call, req, body, &s, &w).await
}

/// `GET /v1/responses/{id}`: asked of the profile that created the response.
async fn get_response(
    req: HttpRequest,
    id: web::Path<String>,
    s: State,
    w: Workers,
) -> HttpResponse {
    stored(http::Method::GET, "", req, &id, (&s, &w)).await
}

/// `DELETE /v1/responses/{id}`: asked of the profile that created the response.
async fn delete_response(
    req: HttpRequest,
    id: web::Path<String>,
    s: State,
    w: Workers,
) -> HttpResponse {
    stored(http::Method::DELETE, "", req, &id, (&s, &w)).await
}

/// `GET /v1/responses/{id}/input_items`: asked of the profile that created the response.
async fn response_input_items(
    req: HttpRequest,
    id: web::Path<String>,
    s: State,
    w: Workers,
) -> HttpResponse {
    stored(http::Method::GET, "/input_items", req, &id, (&s, &w)).await
}

/// Every stored-response route: authenticate, count the call, ask the profile the id is pinned to.
async fn stored(
    method: http::Method,
    tail: &'static str,
    req: HttpRequest,
    id: &str,
    (state, workers): (&AppState, &WorkerUpstreams),
) -> HttpResponse {
    let mut rate = RateStatus::default();
    let result = async {
        let (config, generation) = state.snapshot();
        let principal = extract::client(state, &config, &req).await?;
        rate = admit_other(state, principal.as_ref()).await?.rate;
        let upstreams = workers.current(&config, generation);
        let proxy = Proxy {
            shared: state,
            config: &config,
            upstreams: &upstreams,
        };
        let request_id = extract::request_id(&req);
        let call = StoredCall {
            method,
            id,
            tail,
            query: req.query_string(),
            request_id: &request_id,
            owner: owner_of(principal.as_ref()),
        };
        proxy.stored_response(call).await
    }
    .await;
    reply(&rate, Dialect::OpenAi, result)
}

/// Whose stored responses a caller may reach: its account's, else its key's own.
fn owner_of(principal: Option<&Principal>) -> Option<&str> {
    principal.and_then(|p| p.account.as_deref().or_else(|| p.key_id()))
}

/// What a model route knows before its body is read.
struct Call {
    endpoint: Endpoint,
    /// The wire format the client speaks and is answered in (errors included).
    dialect: Dialect,
    started: Instant,
}

impl Call {
    fn new(endpoint: Endpoint, dialect: Dialect) -> Call {
        Call {
            endpoint,
            dialect,
            started: Instant::now(),
        }
    }
}

/// Every model route: authenticate, read the body (translating an Anthropic one to OpenAI's), count
/// the call with its hold, forward; the answer or the error in the client's dialect, with
/// `X-RateLimit-*`.
async fn model_call(
    call: Call,
    req: HttpRequest,
    payload: web::Payload,
    state: &AppState,
    workers: &WorkerUpstreams,
) -> HttpResponse {
    let dialect = call.dialect;
    let (config, generation) = state.snapshot();
    let principal = match extract::client(state, &config, &req).await {
        Ok(p) => p,
        Err(e) => return reply(&RateStatus::default(), dialect, Err(e)),
    };
    // Counted with the call's hold (one Redis round trip for both), or alone should the call end
    // before it: a spent request limit still answers first.
    let mut admission = state
        .limits
        .admission(&config, principal.as_ref(), CallKind::Llm);
    let result = async {
        let body = read_body(&req, payload, config.server.max_body_bytes, &config.server).await?;
        check_depth(&body, MAX_JSON_DEPTH)?;
        let (body, native, fields) = match dialect {
            Dialect::OpenAi => (body, None, None),
            Dialect::Anthropic => {
                // A model whose every profile speaks Messages never sends the chat translation: it
                // is not built here (it cost a sixth of such a request), but per attempt, should a
                // reload have added a profile that needs it. Its routing fields, read to decide
                // that, are the ones `forward` needs: not read twice.
                let native_only = messages_only_fields(&config, &body);
                let chat = match native_only {
                    Some(_) => body.clone(),
                    None => Bytes::from(messages_request_to_chat(&body)?.0),
                };
                // The translation keeps a duplicated key's last value and sends one; refused anyway,
                // like on the OpenAI routes, so no route reads a duplicated key (read fields already
                // refused them).
                if native_only.is_none() {
                    refuse_duplicates(&body)?;
                }
                let translated = native_only.is_none();
                (
                    chat,
                    Some(native_request(&req, body, translated)),
                    native_only,
                )
            }
        };
        let upstreams = workers.current(&config, generation);
        let proxy = Proxy {
            shared: state,
            config: &config,
            upstreams: &upstreams,
        };
        let who = (principal, &mut admission);
        forward(&proxy, call, &req, (body, native, fields), who).await
    }
    .await;
    let result = admission.finish(&state.limits, result).await;
    reply(&admission.rate(), dialect, result)
}

/// Routes an OpenAI-shaped body (the client's, or the translation of an Anthropic one).
async fn forward(
    proxy: &Proxy<'_>,
    call: Call,
    req: &HttpRequest,
    (body, native, fields): (Bytes, Option<NativeRequest>, Option<RoutingFields>),
    (principal, admission): (Option<Principal>, &mut PendingAdmission),
) -> Result<HttpResponse, ApiError> {
    let mut fields = match fields {
        Some(fields) => fields,
        None => RoutingFields::parse(&body)?,
    };
    if let Some(n) = native.as_ref().filter(|n| !n.translated) {
        // What the translation would have made `user`, for sticky sessions.
        fields.user = metadata_user(&n.body);
    }
    let upstream_model = resolve_model(proxy.config, &mut fields);
    check_scope(principal.as_ref(), &fields.model)?;
    let request_id = extract::request_id(req);
    let counting = call.endpoint == Endpoint::CountTokens;
    let limits = &proxy.shared.limits;
    if counting && !has_anthropic_profile(proxy.config, &fields.model) {
        admission.admit(limits).await?;
        let native_body = native.as_ref().map(|n| &n.body);
        return estimated_count(proxy.config, &fields.model, native_body);
    }
    let accounting = match counting {
        // Counting generates nothing: no credits are reserved or charged.
        true => {
            admission.admit(limits).await?;
            None
        }
        false => hold(proxy, &call, admission, &fields, &body, &request_id).await?,
    };
    let span = request_span(&request_id, &fields);
    let pins = &proxy.shared.response_pins;
    let pinned = match (call.endpoint, fields.previous_response_id.as_deref()) {
        (Endpoint::Responses, Some(id)) => {
            pins.profile_anywhere(id, owner_of(principal.as_ref()))
                .await
        }
        _ => None,
    };
    let req = ProxyRequest {
        endpoint: call.endpoint,
        session: session_key(&proxy.config.routing.sticky.sources, req, &fields),
        fields,
        upstream_model,
        body,
        request_id,
        account: principal.as_ref().and_then(|p| p.account.clone()),
        key_id: principal
            .as_ref()
            .and_then(|p| p.key_id().map(str::to_owned)),
        started: call.started,
        dialect: call.dialect,
        accounting,
        native,
        pinned,
    };
    forward_pinned(proxy, req, span).await
}

/// Forwards, with the session's pin shared by every replica when the state is in Redis (read before
/// the pick, claimed after the answer without delaying it).
async fn forward_pinned(
    proxy: &Proxy<'_>,
    req: ProxyRequest,
    span: tracing::Span,
) -> Result<HttpResponse, ApiError> {
    let sticky = &proxy.config.routing.sticky;
    let (enabled, ttl) = (sticky.enabled, sticky.ttl);
    let redis = proxy.shared.redis.clone().filter(|_| enabled);
    let (Some(redis), Some(sid)) = (redis, req.session.clone()) else {
        return tracing::Instrument::instrument(proxy.forward(req), span).await;
    };
    let model = req.fields.model.clone();
    let router = proxy.shared.router.clone();
    let before = redis.before_pick(&router, &model, &sid, ttl).await;
    let result = tracing::Instrument::instrument(proxy.forward(req), span).await;
    let answered = result.as_ref().ok().and_then(|r| {
        let profile = r.headers().get("x-switchyard-profile")?.to_str().ok()?;
        Some(profile.to_owned())
    });
    if let Some(profile) = answered {
        actix_web::rt::spawn(async move {
            let pin = (before, profile.as_str());
            redis.after_answer(&router, &model, &sid, ttl, pin).await;
        });
    }
    result
}

/// The request's span. Debug, like the per-attempt span: an info span is formatted on every request by
/// the JSON layer even when nothing is logged under it; warnings carry `request_id` themselves.
fn request_span(request_id: &str, fields: &RoutingFields) -> tracing::Span {
    tracing::debug_span!("request", request_id = %request_id, model = %fields.model, stream = fields.stream)
}

/// Counts the call, checks `max_tokens` against the caller's tier and reserves the request's largest
/// possible cost.
async fn hold(
    proxy: &Proxy<'_>,
    call: &Call,
    admission: &mut PendingAdmission,
    fields: &RoutingFields,
    body: &Bytes,
    request_id: &str,
) -> Result<Option<std::sync::Arc<crate::limits::Hold>>, ApiError> {
    let embeddings = call.endpoint == Endpoint::Embeddings;
    let held = proxy
        .shared
        .limits
        .hold(
            proxy.config,
            admission,
            &fields.model,
            (body, fields.max_tokens),
            embeddings,
            request_id,
        )
        .await?;
    Ok(held)
}

/// Renames `fields.model` to the model it resolves to: an alias or a pattern's match is routed,
/// priced, scoped and counted as the model it names; an unknown name stays as it is, for the router's
/// 404. Returns the name to send upstream when the profile's `model_map` does not rename it.
fn resolve_model(config: &Config, fields: &mut RoutingFields) -> Option<String> {
    let resolved = config.resolve(&fields.model)?;
    fields.model = resolved.model.name.clone();
    resolved.upstream
}

fn has_anthropic_profile(config: &Config, model: &str) -> bool {
    config.model(model).is_some_and(|m| {
        m.profiles.iter().any(|id| {
            config
                .profile(id)
                .is_some_and(|p| p.provider == Provider::Anthropic)
        })
    })
}

/// A token count for a model no Anthropic profile serves: a quarter of the request's bytes, rounded
/// up (about what English text and JSON average), in Anthropic's shape. An unknown model is a 404.
fn estimated_count(
    config: &Config,
    model: &str,
    body: Option<&Bytes>,
) -> Result<HttpResponse, ApiError> {
    if config.model(model).is_none() {
        return Err(ApiError::UnknownModel(model.to_owned()));
    }
    let bytes = body.map_or(0, |b| b.len());
    let tokens = bytes.div_ceil(4);
    Ok(HttpResponse::Ok()
        .insert_header(("x-switchyard-estimate", "bytes/4"))
        .json(json!({"input_tokens": tokens})))
}

/// The sticky-session key: the first of `routing.sticky.sources` the request has (by default our
/// header, the coding agents' own, then the body's `prompt_cache_key` and `user`).
fn session_key(
    sources: &[StickySource],
    req: &HttpRequest,
    fields: &RoutingFields,
) -> Option<String> {
    sources.iter().find_map(|source| match source {
        StickySource::Header(name) => req
            .headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        StickySource::Body(BodyKey::PromptCacheKey) => fields.prompt_cache_key.clone(),
        StickySource::Body(BodyKey::User) => fields.user.clone(),
    })
}

/// The Anthropic headers a Messages client sends that its upstream must see as sent.
const ANTHROPIC_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// The routing fields of a Messages body whose model's every profile speaks Messages (so nothing of it
/// is ever translated); `None` otherwise. A body whose model cannot be read is translated, for the
/// translation's 400.
fn messages_only_fields(config: &Config, body: &[u8]) -> Option<RoutingFields> {
    let fields = RoutingFields::parse(body).ok()?;
    let native_only = config.resolve(&fields.model).is_some_and(|r| {
        r.model.profiles.iter().all(|id| {
            config
                .profile(id)
                .is_some_and(|p| p.provider == Provider::Anthropic)
        })
    });
    native_only.then_some(fields)
}

/// An Anthropic client's request as it came, for Anthropic profiles; `translated`: whether the
/// request's `body` is its chat translation.
fn native_request(req: &HttpRequest, body: Bytes, translated: bool) -> NativeRequest {
    let headers = ANTHROPIC_HEADERS
        .iter()
        .filter_map(|name| {
            let v = req.headers().get(*name)?.to_str().ok()?;
            Some((*name, v.to_owned()))
        })
        .collect();
    NativeRequest {
        body,
        query: req.query_string().to_owned(),
        headers,
        translated,
    }
}

/// 403 when the caller's scopes do not include `model`.
fn check_scope(principal: Option<&Principal>, model: &str) -> Result<(), ApiError> {
    if may_use(principal, model) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "This credential may not use the model `{model}`."
    )))
}

fn may_use(principal: Option<&Principal>, model: &str) -> bool {
    principal.is_none_or(|p| p.may_use_model(model))
}

fn model_object(name: &str) -> serde_json::Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "switchyard"})
}

/// Anthropic's model list: `{"data": [{"type": "model", "id", "display_name", "created_at"}], ...}`.
fn anthropic_model_list(names: &[&str]) -> serde_json::Value {
    let data: Vec<_> = names
        .iter()
        .map(|n| {
            json!({"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"})
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": names.first(),
        "last_id": names.last(),
    })
}

/// The concrete model names a caller may use, among `config`'s: each model's name and aliases, in
/// file order; patterns (`openrouter/*`) are left out, they name no model a client could list.
fn usable_models<'a>(
    config: &'a Config,
    principal: Option<&'a Principal>,
) -> impl Iterator<Item = &'a str> + 'a {
    config
        .models
        .iter()
        .filter(move |m| may_use(principal, &m.name))
        .flat_map(|m| {
            let name = (!m.is_pattern()).then_some(m.name.as_str());
            name.into_iter().chain(m.aliases.iter().map(String::as_str))
        })
}

/// The models clients may ask for: the configured names, not the upstreams' lists.
async fn list_models(req: HttpRequest, state: State) -> HttpResponse {
    let mut rate = RateStatus::default();
    let result = async {
        let principal = extract::client(&state, &state.config(), &req).await?;
        rate = admit_other(&state, principal.as_ref()).await?.rate;
        let config = state.config();
        let names: Vec<&str> = usable_models(&config, principal.as_ref()).collect();
        // Claude Code discovers a gateway's models with `anthropic-version` set: answer in its shape.
        if req.headers().contains_key("anthropic-version") {
            return Ok(HttpResponse::Ok().json(anthropic_model_list(&names)));
        }
        let data: Vec<_> = names.into_iter().map(model_object).collect();
        Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
    }
    .await;
    reply(&rate, Dialect::OpenAi, result)
}

async fn get_model(req: HttpRequest, id: web::Path<String>, state: State) -> HttpResponse {
    let mut rate = RateStatus::default();
    let result = async {
        let principal = extract::client(&state, &state.config(), &req).await?;
        rate = admit_other(&state, principal.as_ref()).await?.rate;
        let config = state.config();
        // Any name a request may use, a pattern's matches included, under the name asked for.
        let usable = config
            .resolve(id.as_str())
            .is_some_and(|r| may_use(principal.as_ref(), &r.model.name));
        match usable {
            true => Ok(HttpResponse::Ok().json(model_object(id.as_str()))),
            false => Err(ApiError::UnknownModel(id.into_inner())),
        }
    }
    .await;
    reply(&rate, Dialect::OpenAi, result)
}
