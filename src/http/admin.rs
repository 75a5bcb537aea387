//! Operations endpoints: health probes and the admin API for profiles.

use std::time::SystemTime;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use switchyard_actors::health::StateName;
use switchyard_actors::profile::breaker_open_until;
use switchyard_actors::profile::Availability;
use switchyard_actors::router::{ProfileEntry, Router};

use super::extract::{address, Admin};
use crate::config::Config;
use crate::error::ApiError;
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
    let r = readiness(&state.config(), &state.router, SystemTime::now());
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

/// What `/health/ready` reports of the routing side.
struct Readiness {
    models_ready: usize,
    models_total: usize,
    any_profile_usable: bool,
    /// model name -> `{ready, usable: [ids], reason}`, in file order.
    models: serde_json::Map<String, serde_json::Value>,
    /// profile id -> `{usable, state, reason}`, in file order.
    profiles: serde_json::Map<String, serde_json::Value>,
}

/// A profile is usable when the router would pick it now: healthy (also at its per-minute limit,
/// which passes within the minute) or half-open with the probe free. A profile whose key variable is
/// unset is `auth_failed` from the start, so it is not; one that needs no key (a local server) is
/// usable until a request to it fails.
fn readiness(config: &Config, router: &Router, now: SystemTime) -> Readiness {
    let mut profiles = serde_json::Map::new();
    let mut usable_ids = Vec::new();
    for p in router.profiles() {
        let v = p.shared.view();
        let (usable, reason) = match p.shared.availability(now) {
            Availability::Usable | Availability::Probe => (true, None),
            Availability::Throttled(until) => (
                true,
                Some(format!(
                    "at its provider's per-minute limit until {}",
                    humantime::format_rfc3339_seconds(until)
                )),
            ),
            Availability::Unusable(state) => {
                let mut why = state.as_str().to_owned();
                if let Some(until) = v.state_until(now) {
                    why.push_str(&format!(
                        " until {}",
                        humantime::format_rfc3339_seconds(until)
                    ));
                }
                match (state, &v.auth_failed, &v.last_error) {
                    (StateName::AuthFailed, Some(reason), _) => {
                        why.push_str(&format!(" ({reason})"))
                    }
                    (StateName::HalfOpen, _, _) => why.push_str(" (a probe is in flight)"),
                    (_, _, Some(last)) => why.push_str(&format!(" (last failure: {last})")),
                    _ => {}
                }
                (false, Some(why))
            }
        };
        if usable {
            usable_ids.push(p.id().to_string());
        }
        profiles.insert(
            p.id().to_string(),
            serde_json::json!({"usable": usable, "state": v.state_at(now).as_str(), "reason": reason}),
        );
    }
    let mut models = serde_json::Map::new();
    let mut models_ready = 0;
    for m in &config.models {
        let usable: Vec<&String> = m
            .profiles
            .iter()
            .filter(|p| usable_ids.contains(p))
            .collect();
        let ready = !usable.is_empty();
        models_ready += usize::from(ready);
        let reason = (!ready).then(|| {
            let each: Vec<String> = m
                .profiles
                .iter()
                .map(
                    |id| match profiles.get(id).and_then(|p| p["reason"].as_str()) {
                        Some(why) => format!("{id}: {why}"),
                        None => format!("{id}: unknown"),
                    },
                )
                .collect();
            format!("no usable profile: {}", each.join("; "))
        });
        models.insert(
            m.name.clone(),
            serde_json::json!({"ready": ready, "usable": usable, "reason": reason}),
        );
    }
    Readiness {
        models_ready,
        models_total: config.models.len(),
        any_profile_usable: !usable_ids.is_empty(),
        models,
        profiles,
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
    p.reset();
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
