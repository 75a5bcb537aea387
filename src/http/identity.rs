//! Identity endpoints: sign-in (`/auth/*`), the caller's own keys and summary (`/v1/keys`, `/v1/me`),
//! and the admin API for keys, accounts and the audit log. Thin: extract, ask `AuthService`, render.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::{address, json_body, principal, Admin, Caller};
use super::respond::uncounted;
use crate::auth::{AccountPatch, AuthError, DurationInput, NewAccount, NewKey};
use crate::error::ApiError;
use crate::state::AppState;

type Reply = Result<HttpResponse, ApiError>;
const AUDIT_PAGE_DEFAULT: usize = 50;
const AUDIT_PAGE_MAX: usize = 500;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/login", web::post().to(login))
        .route("/auth/refresh", web::post().to(refresh))
        .route("/auth/logout", web::post().to(logout))
        .route("/v1/me", web::get().to(me))
        .route("/v1/keys", web::get().to(own_keys))
        .route("/v1/keys", web::post().to(own_create_key))
        .route("/v1/keys/{id}", web::delete().to(own_revoke_key))
        .route("/admin/keys", web::get().to(list_keys))
        .route("/admin/keys", web::post().to(create_key))
        .route("/admin/keys/{id}", web::delete().to(revoke_key))
        .route("/admin/keys/{id}/rotate", web::post().to(rotate_key))
        .route("/admin/accounts", web::get().to(list_accounts))
        .route("/admin/accounts", web::post().to(create_account))
        .route("/admin/accounts/{id}", web::get().to(get_account))
        .route("/admin/accounts/{id}", web::patch().to(update_account))
        .route("/admin/audit", web::get().to(audit));
}

// --- sign-in -----------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    password: String,
}

async fn login(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Reply {
    let body: Login = json_body(&req, payload).await?;
    let config = state.config();
    let tokens = state
        .auth
        .login(
            &config.auth,
            &body.email,
            &body.password,
            address(&req).as_deref(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(tokens))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Reply {
    let body: RefreshBody = json_body(&req, payload).await?;
    let config = state.config();
    let tokens = state
        .auth
        .refresh(&config.auth, &body.refresh_token, address(&req).as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(tokens))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogoutBody {
    #[serde(default)]
    refresh_token: Option<String>,
}

async fn logout(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Reply {
    let body: LogoutBody = json_body(&req, payload).await?;
    let caller = match body.refresh_token {
        Some(_) => None,
        None => principal(&state, &req).await?,
    };
    state
        .auth
        .logout(
            body.refresh_token.as_deref(),
            caller.as_ref(),
            address(&req).as_deref(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({"logged_out": true})))
}

// --- the caller's own ----------------------------------------------------------------------------

async fn me(caller: Caller, state: web::Data<AppState>) -> HttpResponse {
    let work = async {
        let config = state.config();
        // Its usage summary reads the store.
        crate::limits::usage::written(&state.recorder).await;
        let me = state.auth.me(&config.auth, &caller.0).await?;
        let mut v = serde_json::to_value(me).map_err(|e| ApiError::Internal(e.to_string()))?;
        // The credits as the threshold notices see them, for the extension's usage view.
        if caller.0.account.is_some() {
            v["credits"] = state.limits.credit_view(&config, &caller.0).await?;
        }
        Ok(HttpResponse::Ok().json(v))
    };
    uncounted(&state, &caller, work).await
}

async fn own_keys(caller: Caller, state: web::Data<AppState>) -> HttpResponse {
    let work = async {
        let keys = state.auth.own_keys(&caller.0)?;
        Ok(HttpResponse::Ok().json(json!({"object": "list", "data": keys})))
    };
    uncounted(&state, &caller, work).await
}

async fn own_create_key(
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let work = async {
        let body: NewKey = json_body(&req, payload).await?;
        let config = state.config();
        // The caller's tier may allow fewer (or more) keys than `auth.max_keys_per_account`.
        let tier_max = state
            .limits
            .subject(&config, Some(&caller.0))
            .and_then(|s| s.tier.max_keys);
        let mut auth_config = config.auth.clone();
        if let Some(max) = tier_max {
            auth_config.max_keys_per_account = max;
        }
        let created = state
            .auth
            .own_create_key(&auth_config, &caller.0, body, address(&req).as_deref())
            .await?;
        Ok(HttpResponse::Created().json(created))
    };
    uncounted(&state, &caller, work).await
}

async fn own_revoke_key(
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let work = async {
        let key = state
            .auth
            .own_revoke_key(&caller.0, &id, address(&req).as_deref())
            .await?;
        Ok(HttpResponse::Ok().json(key))
    };
    uncounted(&state, &caller, work).await
}

// --- admin: keys ---------------------------------------------------------------------------------

#[derive(Deserialize)]
struct KeyFilter {
    account: Option<String>,
}

async fn list_keys(_: Admin, query: web::Query<KeyFilter>, state: web::Data<AppState>) -> Reply {
    let keys = state.auth.list_keys(query.account.as_deref())?;
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": keys})))
}

async fn create_key(
    Admin(p): Admin,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Reply {
    let body: NewKey = json_body(&req, payload).await?;
    let created = state
        .auth
        .admin_create_key(&p, body, address(&req).as_deref())
        .await?;
    Ok(HttpResponse::Created().json(created))
}

async fn revoke_key(
    Admin(p): Admin,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Reply {
    let key = state
        .auth
        .revoke_key(&p, &id, None, address(&req).as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(key))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace: Option<DurationInput>,
}

async fn rotate_key(
    Admin(p): Admin,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Reply {
    let body: RotateBody = json_body(&req, payload).await?;
    let rotated = state
        .auth
        .rotate_key(&p, &id, body.grace, address(&req).as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(rotated))
}

// --- admin: accounts -----------------------------------------------------------------------------

async fn list_accounts(_: Admin, state: web::Data<AppState>) -> Reply {
    let accounts = state.auth.list_accounts()?;
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": accounts})))
}

async fn create_account(
    Admin(p): Admin,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Reply {
    let body: NewAccount = json_body(&req, payload).await?;
    let account = state
        .auth
        .create_account(&p, body, address(&req).as_deref())
        .await?;
    Ok(HttpResponse::Created().json(account))
}

async fn get_account(_: Admin, id: web::Path<String>, state: web::Data<AppState>) -> Reply {
    Ok(HttpResponse::Ok().json(state.auth.get_account(&id)?))
}

async fn update_account(
    Admin(p): Admin,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Reply {
    let body: AccountPatch = json_body(&req, payload).await?;
    let account = state
        .auth
        .update_account(&p, &id, body, address(&req).as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(account))
}

// --- admin: audit ----------------------------------------------------------------------------------

#[derive(Deserialize)]
struct AuditQuery {
    /// Read as text so that a bad number gets an OpenAI-shaped 400.
    limit: Option<String>,
    cursor: Option<String>,
}

async fn audit(_: Admin, query: web::Query<AuditQuery>, state: web::Data<AppState>) -> Reply {
    let limit = match query.limit.as_deref() {
        None => AUDIT_PAGE_DEFAULT,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| AuthError::invalid("limit", "`limit` must be a positive integer."))?
            .clamp(1, AUDIT_PAGE_MAX),
    };
    let (entries, next) = state.auth.audit_page(query.cursor.as_deref(), limit)?;
    let data: Vec<_> = entries
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "ts": crate::auth::rfc3339(e.ts_ms),
                "event": e.event,
                "outcome": e.outcome,
                "actor": e.actor,
                "target": e.target,
                "address": e.address,
                "detail": e.detail,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "has_more": next.is_some(),
        "next_cursor": next,
    })))
}
