//! Identity endpoints: sign-in (`/auth/*`), the caller's own keys and summary (`/v1/keys`, `/v1/me`),
//! and the admin API for keys, accounts and the audit log. Thin: extract, ask `AuthService`, render.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::{constant_time_eq, presented_credential, read_limited};
use crate::auth::{AccountPatch, AuthError, DurationInput, NewAccount, NewKey, Principal};
use crate::error::ApiError;
use crate::state::AppState;

type Reply = Result<HttpResponse, actix_web::Error>;

/// Identity request bodies are small; this bounds what is read before parsing.
const BODY_LIMIT: usize = 64 * 1024;
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

// --- credentials -------------------------------------------------------------------------------

/// The caller, if it presented a credential; a presented credential is always checked, even with
/// `auth.required: false`.
pub(crate) async fn principal(
    shared: &AppState,
    req: &HttpRequest,
) -> Result<Option<Principal>, AuthError> {
    let Some(given) = presented_credential(req) else {
        return Ok(None);
    };
    let admin_token = shared.admin_token.as_deref();
    if admin_token.is_some_and(|t| constant_time_eq(t.as_bytes(), given.as_bytes())) {
        return Ok(Some(Principal::admin_token()));
    }
    shared
        .auth
        .authenticate(&shared.config().auth, given)
        .await
        .map(Some)
}

/// For the `/v1` proxy routes: the caller, or `None` when none is needed (`auth.required: false`).
///
/// With `auth.required: false` a credential that is not ours (neither a `sy_` key nor a JWT) is
/// ignored: OpenAI SDKs insist on sending some API key, and local setups put a placeholder there.
pub(crate) async fn authenticate_client(
    shared: &AppState,
    req: &HttpRequest,
) -> Result<Option<Principal>, ApiError> {
    let required = shared.config().auth.required;
    if !required && presented_credential(req).is_some_and(|given| !looks_like_ours(shared, given)) {
        return Ok(None);
    }
    match principal(shared, req).await? {
        Some(p) => Ok(Some(p)),
        None if required => Err(missing().into()),
        None => Ok(None),
    }
}

/// A gateway key, a JWT, or the admin token.
fn looks_like_ours(shared: &AppState, given: &str) -> bool {
    given.starts_with(crate::auth::KEY_PREFIX)
        || given.split('.').count() == 3
        || shared
            .admin_token
            .as_deref()
            .is_some_and(|t| constant_time_eq(t.as_bytes(), given.as_bytes()))
}

/// Whether `given` is an admin-role credential, without network (for the synchronous `is_admin`).
pub(crate) fn is_admin_credential(shared: &AppState, given: &str) -> bool {
    shared
        .auth
        .authenticate_cached(&shared.config().auth, given)
        .is_ok_and(|p| p.admin)
}

fn missing() -> AuthError {
    AuthError::Unauthenticated(
        "Missing credentials: send `Authorization: Bearer <key or token>` or `X-API-Key: <key>`."
            .into(),
    )
}

async fn require_principal(shared: &AppState, req: &HttpRequest) -> Result<Principal, AuthError> {
    principal(shared, req).await?.ok_or_else(missing)
}

/// The admin token or an admin-role credential. Like every admin route, refused while the admin
/// token's variable is unset.
async fn require_admin(shared: &AppState, req: &HttpRequest) -> Result<Principal, AuthError> {
    if shared.admin_token.is_none() {
        return Err(AuthError::Unauthenticated(format!(
            "The admin API is disabled: set {} to enable it.",
            shared.config().auth.admin_token_env
        )));
    }
    let Some(p) = principal(shared, req).await? else {
        return Err(AuthError::Unauthenticated(
            "Admin credentials required.".into(),
        ));
    };
    if !p.admin {
        return Err(AuthError::Forbidden(
            "This route needs the admin token or an admin credential.".into(),
        ));
    }
    Ok(p)
}

/// The client's IP address, for rate limits and the audit log.
fn address(req: &HttpRequest) -> Option<String> {
    req.peer_addr().map(|a| a.ip().to_string())
}

/// Parses a JSON body. Messages name fields, never echo values (a body may hold a password).
async fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T, actix_web::Error> {
    let bytes = read_limited(req, payload, BODY_LIMIT).await?;
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
        ApiError::invalid(message).into()
    })
}

// --- sign-in -----------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    password: String,
}

async fn login(req: HttpRequest, payload: web::Payload, shared: web::Data<AppState>) -> Reply {
    let body: Login = json_body(&req, payload).await?;
    let config = shared.config();
    let tokens = shared
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

async fn refresh(req: HttpRequest, payload: web::Payload, shared: web::Data<AppState>) -> Reply {
    let body: RefreshBody = json_body(&req, payload).await?;
    let config = shared.config();
    let tokens = shared
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

async fn logout(req: HttpRequest, payload: web::Payload, shared: web::Data<AppState>) -> Reply {
    let body: LogoutBody = json_body(&req, payload).await?;
    let caller = match body.refresh_token {
        Some(_) => None,
        None => principal(&shared, &req).await?,
    };
    shared
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

/// Counts a `/v1` call against the caller's tier; the refusal (429 with `Retry-After`) when over it.
fn admit(shared: &AppState, p: &Principal) -> Result<crate::limits::Admission, Box<HttpResponse>> {
    super::v1::admit_other(shared, Some(p))
}

async fn me(req: HttpRequest, shared: web::Data<AppState>) -> Reply {
    let p = require_principal(&shared, &req).await?;
    let admission = match admit(&shared, &p) {
        Ok(a) => a,
        Err(refused) => return Ok(*refused),
    };
    let res = HttpResponse::Ok().json(shared.auth.me(&shared.config().auth, &p)?);
    Ok(admission.decorate(Ok(res)))
}

async fn own_keys(req: HttpRequest, shared: web::Data<AppState>) -> Reply {
    let p = require_principal(&shared, &req).await?;
    let admission = match admit(&shared, &p) {
        Ok(a) => a,
        Err(refused) => return Ok(*refused),
    };
    let keys = shared.auth.own_keys(&p)?;
    let res = HttpResponse::Ok().json(json!({"object": "list", "data": keys}));
    Ok(admission.decorate(Ok(res)))
}

async fn own_create_key(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<AppState>,
) -> Reply {
    let p = require_principal(&shared, &req).await?;
    let admission = match admit(&shared, &p) {
        Ok(a) => a,
        Err(refused) => return Ok(*refused),
    };
    let body: NewKey = json_body(&req, payload).await?;
    let config = shared.config();
    // The caller's tier may allow fewer (or more) keys than `auth.max_keys_per_account`.
    let tier_max = shared
        .limits
        .subject(&config, Some(&p))
        .and_then(|s| s.tier.max_keys);
    let mut auth_config = config.auth.clone();
    if let Some(max) = tier_max {
        auth_config.max_keys_per_account = max;
    }
    let created = shared
        .auth
        .own_create_key(&auth_config, &p, body, address(&req).as_deref())
        .await?;
    Ok(admission.decorate(Ok(HttpResponse::Created().json(created))))
}

async fn own_revoke_key(
    req: HttpRequest,
    id: web::Path<String>,
    shared: web::Data<AppState>,
) -> Reply {
    let p = require_principal(&shared, &req).await?;
    let admission = match admit(&shared, &p) {
        Ok(a) => a,
        Err(refused) => return Ok(*refused),
    };
    let key = shared
        .auth
        .own_revoke_key(&p, &id, address(&req).as_deref())
        .await?;
    Ok(admission.decorate(Ok(HttpResponse::Ok().json(key))))
}

// --- admin: keys ---------------------------------------------------------------------------------

#[derive(Deserialize)]
struct KeyFilter {
    account: Option<String>,
}

async fn list_keys(
    req: HttpRequest,
    query: web::Query<KeyFilter>,
    shared: web::Data<AppState>,
) -> Reply {
    require_admin(&shared, &req).await?;
    let keys = shared.auth.list_keys(query.account.as_deref())?;
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": keys})))
}

async fn create_key(req: HttpRequest, payload: web::Payload, shared: web::Data<AppState>) -> Reply {
    let p = require_admin(&shared, &req).await?;
    let body: NewKey = json_body(&req, payload).await?;
    let created = shared
        .auth
        .admin_create_key(&p, body, address(&req).as_deref())
        .await?;
    Ok(HttpResponse::Created().json(created))
}

async fn revoke_key(req: HttpRequest, id: web::Path<String>, shared: web::Data<AppState>) -> Reply {
    let p = require_admin(&shared, &req).await?;
    let key = shared
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
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    shared: web::Data<AppState>,
) -> Reply {
    let p = require_admin(&shared, &req).await?;
    let body: RotateBody = json_body(&req, payload).await?;
    let rotated = shared
        .auth
        .rotate_key(&p, &id, body.grace, address(&req).as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(rotated))
}

// --- admin: accounts -----------------------------------------------------------------------------

async fn list_accounts(req: HttpRequest, shared: web::Data<AppState>) -> Reply {
    require_admin(&shared, &req).await?;
    let accounts = shared.auth.list_accounts()?;
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": accounts})))
}

async fn create_account(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<AppState>,
) -> Reply {
    let p = require_admin(&shared, &req).await?;
    let body: NewAccount = json_body(&req, payload).await?;
    let account = shared
        .auth
        .create_account(&p, body, address(&req).as_deref())
        .await?;
    Ok(HttpResponse::Created().json(account))
}

async fn get_account(
    req: HttpRequest,
    id: web::Path<String>,
    shared: web::Data<AppState>,
) -> Reply {
    require_admin(&shared, &req).await?;
    Ok(HttpResponse::Ok().json(shared.auth.get_account(&id)?))
}

async fn update_account(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    shared: web::Data<AppState>,
) -> Reply {
    let p = require_admin(&shared, &req).await?;
    let body: AccountPatch = json_body(&req, payload).await?;
    let account = shared
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

async fn audit(
    req: HttpRequest,
    query: web::Query<AuditQuery>,
    shared: web::Data<AppState>,
) -> Reply {
    require_admin(&shared, &req).await?;
    let limit = match query.limit.as_deref() {
        None => AUDIT_PAGE_DEFAULT,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| AuthError::invalid("limit", "`limit` must be a positive integer."))?
            .clamp(1, AUDIT_PAGE_MAX),
    };
    let (entries, next) = shared.auth.audit_page(query.cursor.as_deref(), limit)?;
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
