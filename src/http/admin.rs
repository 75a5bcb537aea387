//! Operations endpoints: health probes and the admin API for profiles.

use std::time::SystemTime;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use switchyard_actors::profile::breaker_open_until;
use switchyard_actors::router::ProfileEntry;

use super::extract::{address, Admin};
use crate::config::Config;
use crate::error::ApiError;
use crate::readiness::Readiness;
use crate::reload::ReloadError;
use crate::state::AppState;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/admin/profiles", web::get().to(list_profiles))
        .route("/admin/profiles/{id}/reset", web::post().to(reset_profile))
        .route("/admin/reload", web::post().to(reload))
        .route("/metrics", web::get().to(metrics));
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

/// 200 `ready` when the store is writable and every configured model has a usable profile; 200
/// `degraded` when some model has none but another has; 503 `unready` when the store is not writable
/// or no model can be served. The body names, per model and per profile, what is usable and why not.
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let store_ok = state.store.is_writable();
    let r = Readiness::of(&state.config(), &state.router, SystemTime::now());
    let status = match (store_ok, r.models_ready, r.models_total) {
        (false, _, _) => "unready",
        // No model configured: usable profiles are all there is to judge by (as before models).
        (true, _, 0) if r.any_profile_usable => "ready",
        (true, 0, _) => "unready",
        (true, ready, total) if ready == total => "ready",
        (true, _, _) => "degraded",
    };
    let body = serde_json::json!({
        "status": status,
        "store_writable": store_ok,
        "usable_profiles": r.any_profile_usable,
        "models_ready": r.models_ready,
        "models_total": r.models_total,
        "models": r.models,
        "profiles": r.profiles,
    });
    match status {
        "unready" => HttpResponse::ServiceUnavailable().json(body),
        _ => HttpResponse::Ok().json(body),
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
    /// Attempts sent to it and not yet ended.
    in_flight: u64,
    requests: u64,
    failures: u64,
    dropped_reports: u64,
    actor_restarts: u64,
}

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_millis(t).to_string())
}

fn profile_status(p: &ProfileEntry, config: &Config, now: SystemTime) -> ProfileStatus {
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
        in_flight: p.shared.in_flight(),
        requests: c.requests,
        failures: c.failures,
        dropped_reports: p.shared.dropped_reports(),
        actor_restarts: p.shared.restarts(),
    }
}

async fn list_profiles(_: Admin, state: web::Data<AppState>) -> HttpResponse {
    let now = SystemTime::now();
    let config = state.config();
    let list: Vec<ProfileStatus> = state
        .router
        .profiles()
        .iter()
        .map(|p| profile_status(p, &config, now))
        .collect();
    HttpResponse::Ok().json(list)
}

async fn reset_profile(
    _: Admin,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(p) = state.router.profile(&id) else {
        return Err(ApiError::NotFound(format!("No profile `{id}`.")));
    };
    // Answered once the reset is in force, so that an operator's next request (or a script's)
    // is routed by it rather than racing the actor's mailbox.
    if !p.reset_applied().await {
        return Err(ApiError::Internal(format!(
            "Profile `{id}` is restarting; reset it again."
        )));
    }
    if let Some(redis) = &state.redis {
        // The other replicas reset theirs when they next exchange health (within a second).
        if let Err(e) = redis.reset_lanes(&id).await {
            tracing::warn!(profile = %id, error = %e, "reset not shared with the other replicas");
        }
    }
    tracing::info!(profile = %id, "admin reset profile");
    audit_admin(
        &state,
        &req,
        "reset_profile",
        Some(id.to_string()),
        true,
        None,
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({"id": id.into_inner(), "reset": true})))
}

async fn reload(
    _: Admin,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let result = crate::reload::reload(&state, "admin").await;
    let detail = result
        .as_ref()
        .err()
        .map(|_| "invalid configuration".to_owned());
    audit_admin(&state, &req, "reload", None, result.is_ok(), detail);
    match result {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(ReloadError::Invalid(errors)) => Err(ApiError::InvalidRequest {
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
async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(&state.router))
}

/// Records an admin action in the audit log (who: the admin token or an admin credential).
fn audit_admin(
    state: &AppState,
    req: &HttpRequest,
    action: &str,
    target: Option<String>,
    success: bool,
    detail: Option<String>,
) {
    let address = address(req);
    let detail = Some(match detail {
        Some(d) => format!("{action}: {d}"),
        None => action.to_owned(),
    });
    state.auth.audit(
        crate::auth::AuditEvent::AdminAction,
        success,
        "admin",
        target,
        address.as_deref(),
        detail,
    );
}
