//! The browser dashboard at `/ui`: its embedded page, script and style (no CDN, no build step),
//! served with a strict Content-Security-Policy, and its sign-in, session and sign-out under
//! `/ui/api/`. Every figure the page shows comes from the API routes themselves (`/v1/me`,
//! `/v1/usage`, `/v1/keys`, `/admin/...`), which accept the session cookie (`extract::principal`).

use actix_web::http::header::{CONTENT_TYPE, SET_COOKIE};
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::{address, constant_time_eq, dashboard_cookie, json_body, principal};
use crate::auth::web::{cleared_cookie, csrf_token, same_origin, session_cookie, WebSignIn};
use crate::auth::AuthError;
use crate::error::ApiError;
use crate::state::AppState;

type Reply = Result<HttpResponse, ApiError>;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Only the dashboard's own files run: no inline script or style, no eval, no other origin, no frames.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    let headers = DefaultHeaders::new()
        .add(("content-security-policy", CSP))
        .add(("x-content-type-options", "nosniff"))
        .add(("x-frame-options", "DENY"))
        .add(("referrer-policy", "same-origin"))
        .add(("cache-control", "no-store"));
    cfg.service(
        web::scope("/ui")
            .wrap(headers)
            .route("", web::get().to(index))
            .route("/", web::get().to(index))
            .route("/app.js", web::get().to(script))
            .route("/app.css", web::get().to(style))
            .route("/api/session", web::get().to(session))
            .route("/api/login", web::post().to(login))
            .route("/api/logout", web::post().to(logout)),
    );
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, content_type))
        .body(body)
}

/// Whether the dashboard was reached over https (directly, or through a front that says so).
fn over_https(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// `GET /ui/api/session`: who the cookie signs in, and the CSRF token the page sends with changes.
async fn session(req: HttpRequest, state: web::Data<AppState>) -> Reply {
    let secret = dashboard_cookie(&req)
        .ok_or_else(|| ApiError::Unauthenticated("Not signed in to the dashboard.".into()))?;
    let p = principal(&state, &req)
        .await?
        .ok_or_else(|| ApiError::Unauthenticated("Not signed in to the dashboard.".into()))?;
    Ok(HttpResponse::Ok().json(json!({
        "credential": p.kind(),
        "account": p.account,
        "role": p.role.as_str(),
        "admin": p.admin,
        "csrf_token": csrf_token(&secret),
    })))
}

/// `POST /ui/api/login`: an account's email and password, or the admin token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    email: Option<String>,
    password: Option<String>,
    admin_token: Option<String>,
}

async fn login(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Reply {
    refuse_cross_origin(&req)?;
    let body: SignIn = json_body(&req, payload).await?;
    let addr = address(&req);
    // A new sign-in replaces the browser's session: the one its cookie named ends now, not when idle.
    if let Some(old) = dashboard_cookie(&req) {
        let _ = state.auth.web_sign_out(&old, addr.as_deref()).await;
    }
    let signed = match (&body.admin_token, &body.email, &body.password) {
        (Some(given), None, None) => admin_sign_in(&state, given, addr.as_deref())?,
        (None, Some(email), Some(password)) => {
            let config = state.config();
            state
                .auth
                .web_sign_in(&config.auth, email, password, addr.as_deref())
                .await?
        }
        _ => {
            return Err(AuthError::invalid(
                "email",
                "Send `email` and `password`, or `admin_token`.",
            )
            .into())
        }
    };
    Ok(HttpResponse::Ok()
        .insert_header((SET_COOKIE, session_cookie(&signed.secret, over_https(&req))))
        .json(json!({"csrf_token": signed.csrf_token, "account": signed.account})))
}

/// A change that needs no session yet (the sign-in) is still refused from another origin, and must be
/// JSON, which a cross-site form cannot send: nobody can sign a browser in to someone else's account.
fn refuse_cross_origin(req: &HttpRequest) -> Result<(), ApiError> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let host = req.connection_info().host().to_owned();
    let json = header("content-type").is_some_and(|c| c.starts_with("application/json"));
    match same_origin(header("origin"), header("sec-fetch-site"), &host) && json {
        true => Ok(()),
        false => Err(ApiError::Forbidden(
            "Dashboard sign-in refused: send JSON from the dashboard's own origin.".into(),
        )),
    }
}

fn admin_sign_in(state: &AppState, given: &str, addr: Option<&str>) -> Result<WebSignIn, ApiError> {
    let Some(token) = state.admin_token.as_deref() else {
        return Err(ApiError::Forbidden(format!(
            "The admin API is disabled: set {} to enable it.",
            state.config().auth.admin_token_env
        )));
    };
    if !constant_time_eq(token.as_bytes(), given.as_bytes()) {
        let detail = Some("dashboard: wrong admin token".to_owned());
        let event = crate::auth::AuditEvent::LoginFailed;
        state
            .auth
            .audit(event, false, "anonymous", None, addr, detail);
        return Err(ApiError::Unauthenticated("Wrong admin token.".into()));
    }
    Ok(state.auth.web_sign_in_admin(addr)?)
}

/// `POST /ui/api/logout`: ends the session (with its CSRF token) and removes the cookie.
async fn logout(req: HttpRequest, state: web::Data<AppState>) -> Reply {
    if let Some(secret) = dashboard_cookie(&req) {
        // The origin and the CSRF token are checked as for every change made with the cookie; a
        // session that already ended still gets its cookie removed.
        if let Err(e @ AuthError::Forbidden(_)) = principal(&state, &req).await {
            return Err(e.into());
        }
        state
            .auth
            .web_sign_out(&secret, address(&req).as_deref())
            .await?;
    }
    Ok(HttpResponse::Ok()
        .insert_header((SET_COOKIE, cleared_cookie(over_https(&req))))
        .json(json!({"logged_out": true})))
}
