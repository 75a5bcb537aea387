//! Dashboard sessions: a browser's sign-in (an account's, through `login` and its refresh rotation, or
//! the admin token's), kept on the server and named by an HttpOnly, SameSite=Strict cookie, and the
//! CSRF token every change made with that cookie must carry.
//!
//! The browser never holds a credential: the cookie is a random 256-bit name for a server-side entry,
//! which holds the account's access and refresh tokens (or marks the admin token). A request with the
//! cookie becomes the same `Principal` the tokens would give, so every API route the dashboard calls
//! answers it with the API's own code. Sessions live in memory: a restart signs the dashboard out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use switchyard_actors::store::now_ms;

use super::secret::{digest_eq, new_secret, sha256_hex};
use super::{unauth, AccountView, AuditEvent, AuthError, AuthService, Principal};
use crate::config::AuthConfig;

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "sy_session";
/// The header the dashboard's script sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends (the dashboard polls every few seconds while it is open).
const IDLE: Duration = Duration::from_secs(30 * 60);
/// No session outlives this, however busy.
const ABSOLUTE: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions held at once; past it, sign-ins are refused until some end (each took valid credentials).
const MAX_SESSIONS: usize = 10_000;
/// An access token this close to its expiry is refreshed before it is used.
const REFRESH_MARGIN_MS: u64 = 60_000;

/// An account session's current token pair.
struct AccountTokens {
    access: String,
    refresh: String,
    access_expires_ms: u64,
}

/// One signed-in browser.
struct WebSession {
    /// `None` for the admin token. A tokio mutex: held across the refresh's store flush, so that two
    /// requests of one browser never spend the same refresh token (a reuse would revoke the sign-in).
    account: Option<tokio::sync::Mutex<AccountTokens>>,
    created_ms: u64,
    last_seen_ms: AtomicU64,
}

impl WebSession {
    fn expired(&self, now: u64) -> bool {
        let idle = self
            .last_seen_ms
            .load(Ordering::Relaxed)
            .saturating_add(ms(IDLE));
        now >= idle || now >= self.created_ms.saturating_add(ms(ABSOLUTE))
    }
}

/// The server side of the dashboard's sessions, keyed by the SHA-256 of the cookie's secret.
/// DashMap: every dashboard request reads it from any worker, sign-ins and sign-outs are rare.
#[derive(Default)]
pub struct WebSessions {
    map: DashMap<String, Arc<WebSession>>,
}

/// What a dashboard sign-in gives the browser: the cookie's secret (sent only as the cookie), the
/// CSRF token (given to the page's script) and, for an account, the account.
pub struct WebSignIn {
    pub secret: String,
    pub csrf_token: String,
    pub account: Option<AccountView>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The CSRF token of a session: derived from the cookie's secret, so it needs no storage, and a page
/// that cannot read the cookie (any other site) cannot compute it.
pub fn csrf_token(secret: &str) -> String {
    sha256_hex(&format!("switchyard-dashboard-csrf\u{0}{secret}"))
}

/// Whether `presented` is the session's CSRF token, compared in constant time.
pub fn csrf_matches(secret: &str, presented: &str) -> bool {
    digest_eq(csrf_token(secret), presented)
}

/// The value of cookie `name` in a `Cookie` header, if it is there and non-empty.
pub fn cookie_value<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value naming a new session: no `Max-Age`, so it ends with the browser session;
/// `Secure` when the dashboard was reached over https.
pub fn session_cookie(secret: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn cleared_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

/// Whether a change request comes from the dashboard's own origin: a present `Origin` must name
/// `host` (with either scheme: TLS may end at a front proxy), and a present `Sec-Fetch-Site` must
/// say `same-origin`. Browsers send at least one of them on every POST, PUT, PATCH and DELETE.
pub fn same_origin(origin: Option<&str>, fetch_site: Option<&str>, host: &str) -> bool {
    let origin_ok = origin.is_none_or(|o| {
        o.strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
            .is_some_and(|h| h.eq_ignore_ascii_case(host))
    });
    origin_ok && fetch_site.is_none_or(|s| s == "same-origin")
}

impl AuthService {
    /// Starts a dashboard session for an account: signs in with email and password (rate-limited and
    /// audited as `login` is), and keeps the token pair on the server.
    pub async fn web_sign_in(
        &self,
        config: &AuthConfig,
        email: &str,
        password: &str,
        address: Option<&str>,
    ) -> Result<WebSignIn, AuthError> {
        self.web_room()?;
        let tokens = self.login(config, email, password, address).await?;
        let expires = now_ms().saturating_add(tokens.expires_in.saturating_mul(1000));
        let pair = AccountTokens {
            access: tokens.access_token,
            refresh: tokens.refresh_token,
            access_expires_ms: expires,
        };
        Ok(self.web_insert(Some(pair), Some(tokens.account)))
    }

    /// Starts a dashboard session for the admin token (which the HTTP layer compared).
    pub fn web_sign_in_admin(&self, address: Option<&str>) -> Result<WebSignIn, AuthError> {
        self.web_room()?;
        let detail = Some("dashboard".to_owned());
        self.audit(
            AuditEvent::LoginSucceeded,
            true,
            "admin_token",
            None,
            address,
            detail,
        );
        Ok(self.web_insert(None, None))
    }

    /// Refuses a sign-in while the session table is full, after forgetting the expired sessions.
    fn web_room(&self) -> Result<(), AuthError> {
        let now = now_ms();
        self.web_sessions.map.retain(|_, s| !s.expired(now));
        match self.web_sessions.map.len() >= MAX_SESSIONS {
            true => Err(AuthError::Forbidden(
                "Too many dashboard sessions are open; retry later.".into(),
            )),
            false => Ok(()),
        }
    }

    fn web_insert(&self, pair: Option<AccountTokens>, account: Option<AccountView>) -> WebSignIn {
        let secret = new_secret();
        let now = now_ms();
        let session = WebSession {
            account: pair.map(tokio::sync::Mutex::new),
            created_ms: now,
            last_seen_ms: AtomicU64::new(now),
        };
        self.web_sessions
            .map
            .insert(sha256_hex(&secret), Arc::new(session));
        WebSignIn {
            csrf_token: csrf_token(&secret),
            secret,
            account,
        }
    }

    /// The caller a dashboard cookie stands for: the admin token, or the account whose access token
    /// the session holds (refreshed first when it is about to expire; checked as any access token is,
    /// so a revoked sign-in or a disabled account ends the session at once).
    pub async fn web_principal(
        &self,
        config: &AuthConfig,
        secret: &str,
    ) -> Result<Principal, AuthError> {
        let gone = || unauth("The dashboard session has ended; sign in again.");
        let id = sha256_hex(secret);
        let session = self
            .web_sessions
            .map
            .get(&id)
            .map(|s| s.clone())
            .ok_or_else(gone)?;
        let now = now_ms();
        if session.expired(now) {
            self.web_sessions.map.remove(&id);
            return Err(gone());
        }
        session.last_seen_ms.store(now, Ordering::Relaxed);
        let Some(pair) = &session.account else {
            return Ok(Principal::admin_token());
        };
        let mut pair = pair.lock().await;
        if pair.access_expires_ms.saturating_sub(REFRESH_MARGIN_MS) <= now {
            match self.refresh(config, &pair.refresh, None).await {
                Ok(t) => {
                    pair.access_expires_ms = now.saturating_add(t.expires_in.saturating_mul(1000));
                    pair.access = t.access_token;
                    pair.refresh = t.refresh_token;
                }
                Err(e) => {
                    self.web_sessions.map.remove(&id);
                    return Err(e);
                }
            }
        }
        let checked = self.authenticate(config, &pair.access).await;
        if checked.is_err() {
            self.web_sessions.map.remove(&id);
        }
        checked
    }

    /// Ends a dashboard session; an account's sign-in is logged out (its tokens stop working).
    pub async fn web_sign_out(&self, secret: &str, address: Option<&str>) -> Result<(), AuthError> {
        let Some((_, session)) = self.web_sessions.map.remove(&sha256_hex(secret)) else {
            return Ok(());
        };
        if let Some(pair) = &session.account {
            let refresh = pair.lock().await.refresh.clone();
            self.logout(Some(&refresh), None, address).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let (a, b) = (new_secret(), new_secret());
        let t = csrf_token(&a);
        assert_eq!(t.len(), 64);
        assert_eq!(t, csrf_token(&a), "derived, so the same every time");
        assert_ne!(t, csrf_token(&b));
        assert!(csrf_matches(&a, &t));
        assert!(!csrf_matches(&b, &t));
        assert!(!csrf_matches(&a, ""));
        assert!(!csrf_matches(&a, &t[..63]));
        assert!(!t.contains(&a), "the token does not reveal the cookie");
    }

    #[test]
    fn sessions_end_when_idle_or_old() {
        let at = |created_ms: u64, seen_ms: u64| WebSession {
            account: None,
            created_ms,
            last_seen_ms: AtomicU64::new(seen_ms),
        };
        let now = ms(ABSOLUTE) * 2;
        assert!(!at(now - 1000, now - 1000).expired(now));
        assert!(at(now - ms(IDLE) - 1, now - ms(IDLE)).expired(now), "idle");
        assert!(!at(now - ms(IDLE) - 1, now - 5).expired(now), "busy");
        assert!(at(now - ms(ABSOLUTE), now - 5).expired(now), "however busy");
    }

    #[test]
    fn cookies_are_found_by_name_only() {
        let h = "theme=dark; sy_session=abc123;other=1";
        assert_eq!(cookie_value(h, SESSION_COOKIE), Some("abc123"));
        assert_eq!(cookie_value(h, "other"), Some("1"));
        assert_eq!(cookie_value("xsy_session=abc", SESSION_COOKIE), None);
        assert_eq!(cookie_value("sy_session=", SESSION_COOKIE), None);
        assert_eq!(cookie_value("", SESSION_COOKIE), None);
    }

    #[test]
    fn session_cookies_are_httponly_strict_and_secure_over_https() {
        let plain = session_cookie("s3cret", false);
        assert_eq!(
            plain,
            "sy_session=s3cret; Path=/; HttpOnly; SameSite=Strict"
        );
        assert!(session_cookie("s3cret", true).ends_with("; Secure"));
        let cleared = cleared_cookie(true);
        assert!(cleared.starts_with("sy_session=;") && cleared.contains("Max-Age=0"));
        assert!(cleared.contains("HttpOnly") && cleared.ends_with("Secure"));
    }

    #[test]
    fn only_the_dashboards_own_origin_may_change_things() {
        let host = "127.0.0.1:8080";
        assert!(same_origin(
            Some("http://127.0.0.1:8080"),
            Some("same-origin"),
            host
        ));
        assert!(same_origin(Some("https://127.0.0.1:8080"), None, host));
        assert!(
            same_origin(None, None, host),
            "non-browser clients send neither"
        );
        assert!(!same_origin(Some("http://127.0.0.1:9999"), None, host));
        assert!(!same_origin(Some("http://evil.example"), None, host));
        assert!(!same_origin(Some("null"), None, host));
        assert!(!same_origin(None, Some("cross-site"), host));
        assert!(!same_origin(None, Some("same-site"), host));
        assert!(!same_origin(Some("http://127.0.0.1:8080.evil"), None, host));
    }
}
