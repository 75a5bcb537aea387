//! Operations endpoints: health probes and the admin API for profiles.

use std::time::SystemTime;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use switchyard_actors::profile::breaker_open_until;

use super::is_admin;
use crate::error::ApiError;
use crate::state::AppState;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/admin/profiles", web::get().to(list_profiles))
        .route("/admin/profiles/{id}/reset", web::post().to(reset_profile))
        .route("/admin/reload", web::post().to(reload))
        .route("/metrics", web::get().to(metrics));
}

fn require_admin(shared: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    if shared.admin_token.is_none() {
        return Err(ApiError::Unauthenticated(format!(
            "The admin API is disabled: set {} to enable it.",
            shared.config().auth.admin_token_env
        )));
    }
    if is_admin(shared, req) {
        Ok(())
    } else {
        Err(ApiError::Unauthenticated(
            "Admin credentials required.".into(),
        ))
    }
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

async fn ready(shared: web::Data<AppState>) -> HttpResponse {
    let store_ok = shared.store.is_writable();
    let usable = shared.router.any_usable();
    let body = serde_json::json!({
        "status": if store_ok && usable { "ready" } else { "unready" },
        "store_writable": store_ok,
        "usable_profiles": usable,
    });
    if store_ok && usable {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// One profile as the admin API shows it.
#[derive(Serialize)]
struct ProfileStatus {
    id: String,
    provider: &'static str,
    state: &'static str,
    cooldown_until: Option<String>,
    billing_until: Option<String>,
    breaker_open_until: Option<String>,
    auth_error: Option<String>,
    last_error: Option<String>,
    consecutive_failures: u32,
    requests: u64,
    failures: u64,
    dropped_reports: u64,
    actor_restarts: u64,
}

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_millis(t).to_string())
}

async fn list_profiles(
    req: HttpRequest,
    shared: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&shared, &req)?;
    let now = SystemTime::now();
    let config = shared.config();
    let list: Vec<ProfileStatus> = shared
        .router
        .profiles()
        .iter()
        .map(|p| {
            let v = p.shared.view();
            let c = p.shared.counters();
            ProfileStatus {
                id: p.id().to_string(),
                provider: config
                    .profile(p.id())
                    .map_or("unknown", |c| c.provider.as_str()),
                state: v.state_at(now).as_str(),
                cooldown_until: rfc3339(v.state_until(now)),
                billing_until: rfc3339(v.billing_until.filter(|t| *t > now)),
                breaker_open_until: rfc3339(breaker_open_until(&v)),
                auth_error: v.auth_failed.clone(),
                last_error: v.last_error.clone(),
                consecutive_failures: v.consecutive_failures,
                requests: c.requests,
                failures: c.failures,
                dropped_reports: p.shared.dropped_reports(),
                actor_restarts: p.shared.restarts(),
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

async fn reset_profile(
    req: HttpRequest,
    id: web::Path<String>,
    shared: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&shared, &req)?;
    let Some(p) = shared.router.profile(&id) else {
        return Err(ApiError::NotFound(format!("No profile `{id}`.")));
    };
    p.reset();
    tracing::info!(profile = %id, "admin reset profile");
    audit_admin(
        &shared,
        &req,
        "reset_profile",
        Some(id.to_string()),
        true,
        None,
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({"id": id.into_inner(), "reset": true})))
}

async fn reload(req: HttpRequest, shared: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require_admin(&shared, &req)?;
    let result = crate::reload::reload(&shared, "admin").await;
    let detail = result
        .as_ref()
        .err()
        .map(|_| "invalid configuration".to_owned());
    audit_admin(&shared, &req, "reload", None, result.is_ok(), detail);
    match result {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(crate::reload::ReloadError::Invalid(errors)) => Err(ApiError::InvalidRequest {
            message: format!(
                "The configuration file is invalid; the running configuration is unchanged.\n{errors}"
            ),
            param: None,
            code: Some("invalid_config"),
        }),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// Prometheus scrape endpoint. Unauthenticated, as scrapers expect; it holds no secrets.
async fn metrics(shared: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(shared.metrics.render(&shared.router))
}

/// Records an admin action in the audit log (who: the admin token or an admin credential).
fn audit_admin(
    shared: &AppState,
    req: &HttpRequest,
    action: &str,
    target: Option<String>,
    success: bool,
    detail: Option<String>,
) {
    let address = req.peer_addr().map(|a| a.ip().to_string());
    let detail = Some(match detail {
        Some(d) => format!("{action}: {d}"),
        None => action.to_owned(),
    });
    shared.auth.audit(
        crate::auth::AuditEvent::AdminAction,
        success,
        "admin",
        target,
        address.as_deref(),
        detail,
    );
}
