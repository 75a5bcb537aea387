//! Client identity: gateway API keys, accounts and sign-in, Switchyard's own access tokens, external
//! issuers' JWTs, roles, and the audit log. [`AuthService`] is the one entry point; the HTTP handlers in
//! `http::identity` only extract, call it and render.
//!
//! The `/v1` hot path never waits on a lock or a password hash: an API key is split into its public id
//! and secret, the id finds the key in a `DashMap` (filled from sled on first use), and the secret's
//! SHA-256 is compared in constant time. `last_used_at` is an atomic in that cache, written to sled at
//! most once a minute by [`AuthService::run_maintenance`].

mod accounts;
pub mod error;
mod jwt;
mod keys;
mod limiter;
mod mirror;
mod secret;
pub mod store;
pub mod web;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use dashmap::DashMap;
use jsonwebtoken::Algorithm;
use switchyard_actors::store::{now_ms, Store};

pub use accounts::{AccountPatch, AccountView, NewAccount, Tokens};
pub use error::AuthError;
pub use keys::{CreatedKey, DurationInput, KeyView, NewKey};
pub use store::{AuditEntry, Role};

use crate::config::{AuthConfig, IssuerConfig, IssuerKeys, OWN_ISSUER};
use crate::shared::records::Table;
use jwt::{IssuerKeyCache, KeyLookup, SessionKeys};
use limiter::FixedWindow;
pub use secret::KEY_PREFIX;
use secret::{digest_eq, key_prefix, sha256_hex_bytes, split_token};
use store::{Account, AuthStore, KeyRecord};

/// The scope that makes a key an admin credential.
pub const ADMIN_SCOPE: &str = "admin";

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The operator's admin token.
    AdminToken,
    /// A gateway API key.
    ApiKey { key_id: String },
    /// An access token from `POST /auth/login`.
    Session { family: String },
    /// A JWT of a configured external issuer.
    External {
        issuer: String,
        subject: String,
        project: Option<String>,
    },
}

/// Who is calling, once a credential checked out.
#[derive(Debug, Clone)]
pub struct Principal {
    pub via: Via,
    /// The account usage is recorded under: a local account id, a key's account, or an external subject.
    pub account: Option<String>,
    pub role: Role,
    /// Whether admin routes accept this credential: the admin token, an admin account's session, an
    /// external admin, or a key with the `admin` scope (whose account, if local, is still an admin).
    pub admin: bool,
    pub tier: Option<String>,
    /// The key's model allowlist; `None` allows every model.
    key_models: Option<Arc<[String]>>,
    /// The account's model allowlist; `None` allows every model.
    account_models: Option<Arc<[String]>>,
}

impl Principal {
    /// The operator with the admin token.
    pub fn admin_token() -> Principal {
        Principal {
            via: Via::AdminToken,
            account: None,
            role: Role::Admin,
            admin: true,
            tier: None,
            key_models: None,
            account_models: None,
        }
    }

    /// Whether this credential may call `model`: both the key's and the account's scopes must allow it.
    pub fn may_use_model(&self, model: &str) -> bool {
        let allows = |list: &Option<Arc<[String]>>| {
            list.as_ref()
                .is_none_or(|models| models.iter().any(|m| m == model))
        };
        allows(&self.key_models) && allows(&self.account_models)
    }

    /// The gateway key used, if any.
    pub fn key_id(&self) -> Option<&str> {
        match &self.via {
            Via::ApiKey { key_id } => Some(key_id),
            _ => None,
        }
    }

    /// How this caller is named in the audit log.
    pub fn actor(&self) -> String {
        match &self.via {
            Via::AdminToken => "admin_token".to_owned(),
            Via::ApiKey { key_id } => format!("key:{key_id}"),
            Via::Session { .. } => format!("account:{}", self.account.as_deref().unwrap_or("")),
            Via::External {
                issuer, subject, ..
            } => format!("jwt:{issuer}:{subject}"),
        }
    }

    /// `admin_token`, `api_key`, `session` or `external_jwt`.
    pub fn kind(&self) -> &'static str {
        match self.via {
            Via::AdminToken => "admin_token",
            Via::ApiKey { .. } => "api_key",
            Via::Session { .. } => "session",
            Via::External { .. } => "external_jwt",
        }
    }

    fn models_list(&self) -> Option<Vec<String>> {
        let (k, a) = (&self.key_models, &self.account_models);
        match (k, a) {
            (None, None) => None,
            (Some(l), None) | (None, Some(l)) => Some(l.to_vec()),
            (Some(k), Some(a)) => Some(k.iter().filter(|m| a.contains(m)).cloned().collect()),
        }
    }
}

/// The events of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditEvent {
    LoginSucceeded,
    LoginFailed,
    /// Refused by the sign-in rate limit before the password was checked.
    LoginBlocked,
    TokenRefreshed,
    RefreshTokenReused,
    Logout,
    KeyCreated,
    KeyRotated,
    KeyRevoked,
    AccountCreated,
    AccountUpdated,
    /// Any other admin operation (profile reset, reload ...).
    AdminAction,
}

impl AuditEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditEvent::LoginSucceeded => "login_succeeded",
            AuditEvent::LoginFailed => "login_failed",
            AuditEvent::LoginBlocked => "login_blocked",
            AuditEvent::TokenRefreshed => "token_refreshed",
            AuditEvent::RefreshTokenReused => "refresh_token_reused",
            AuditEvent::Logout => "logout",
            AuditEvent::KeyCreated => "key_created",
            AuditEvent::KeyRotated => "key_rotated",
            AuditEvent::KeyRevoked => "key_revoked",
            AuditEvent::AccountCreated => "account_created",
            AuditEvent::AccountUpdated => "account_updated",
            AuditEvent::AdminAction => "admin_action",
        }
    }
}

/// A key as cached for the hot path.
struct CachedKey {
    record: KeyRecord,
    /// The key's model allowlist, built once.
    models: Option<Arc<[String]>>,
    /// Updated on every use without a write; persisted by `persist_last_used`.
    last_used_ms: AtomicU64,
}

impl CachedKey {
    fn new(record: KeyRecord, last_used_ms: u64) -> CachedKey {
        let models: Vec<String> = record
            .scopes
            .iter()
            .filter(|s| *s != ADMIN_SCOPE)
            .cloned()
            .collect();
        let last = last_used_ms.max(record.last_used_ms.unwrap_or(0));
        CachedKey {
            models: (!models.is_empty()).then(|| models.into()),
            last_used_ms: AtomicU64::new(last),
            record,
        }
    }
}

/// An account as cached for the hot path.
struct CachedAccount {
    account: Account,
    models: Option<Arc<[String]>>,
}

impl CachedAccount {
    fn new(account: Account) -> CachedAccount {
        CachedAccount {
            models: (!account.scopes.is_empty()).then(|| account.scopes.clone().into()),
            account,
        }
    }
}

/// Client identity for the whole server; one instance shared by every worker.
pub struct AuthService {
    store: AuthStore,
    session: SessionKeys,
    /// Keys by public id. DashMap: read by every `/v1` request on every worker without a global lock;
    /// entries are replaced whole by the (rare) writers.
    keys: DashMap<String, Arc<CachedKey>>,
    /// Accounts by id, `None` for ids known not to exist locally (external accounts on keys).
    accounts: DashMap<String, Option<Arc<CachedAccount>>>,
    /// Sign-in families by id: `true` when revoked. Read by every request with an access token.
    families: DashMap<String, bool>,
    /// JWKS caches by URL.
    issuers: DashMap<String, Arc<IssuerKeyCache>>,
    /// Password checks per email and window, taken before argon2 runs (a success gives them back): a
    /// budget, so a concurrent burst of guesses gets no more checks than the limit.
    login_failures: FixedWindow,
    /// Sign-in attempts of any outcome per client address and window.
    login_attempts: FixedWindow,
    /// Serialises read-modify-write of key records (admin changes, last-used persistence).
    key_writes: parking_lot::Mutex<()>,
    /// Serialises read-modify-write of accounts.
    account_writes: parking_lot::Mutex<()>,
    /// An argon2 hash checked when the email is unknown, so that the answer takes as long either way.
    dummy_hash: String,
    /// `state.backend: redis`: keys, accounts, sessions and audit mirrored across replicas (see
    /// `mirror`).
    mirror: Option<mirror::Mirror>,
    /// The dashboard's signed-in browsers (see `web`).
    web_sessions: web::WebSessions,
}

/// `ms` since the epoch as RFC 3339.
pub(crate) fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn unauth(message: impl Into<String>) -> AuthError {
    AuthError::Unauthenticated(message.into())
}

/// Where a credential goes, and for JWKS issuers the part that may need the network.
enum Step<'c> {
    Done(Principal),
    Jwks {
        issuer: &'c IssuerConfig,
        cache: Arc<IssuerKeyCache>,
        kid: Option<String>,
        alg: Algorithm,
    },
}

impl AuthService {
    /// Opens the identity trees and loads (or creates) the access-token secret.
    pub fn new(store: &Store, data_dir: &Path, config: &AuthConfig) -> Result<AuthService, String> {
        let secret = jwt::load_session_secret(&config.jwt_secret_env, data_dir)?;
        let dummy_hash = secret::hash_password(&secret::new_secret())?;
        Ok(AuthService {
            store: AuthStore::open(store).map_err(|e| e.to_string())?,
            session: SessionKeys::new(&secret),
            keys: DashMap::new(),
            accounts: DashMap::new(),
            families: DashMap::new(),
            issuers: DashMap::new(),
            login_failures: FixedWindow::default(),
            login_attempts: FixedWindow::default(),
            key_writes: parking_lot::Mutex::new(()),
            account_writes: parking_lot::Mutex::new(()),
            dummy_hash,
            mirror: None,
            web_sessions: web::WebSessions::default(),
        })
    }

    // --- authentication -------------------------------------------------------------------------

    /// Checks a presented credential (API key or JWT; not the admin token, which the HTTP layer
    /// compares). May fetch an issuer's JWKS.
    pub async fn authenticate(
        &self,
        config: &AuthConfig,
        token: &str,
    ) -> Result<Principal, AuthError> {
        match self.begin(config, token)? {
            Step::Done(p) => Ok(p),
            Step::Jwks {
                issuer,
                cache,
                kid,
                alg,
            } => {
                let IssuerKeys::Jwks {
                    url,
                    refetch_interval,
                    max_age,
                } = &issuer.keys
                else {
                    return Err(unauth("Token issuer not accepted."));
                };
                let key = cache
                    .key(url, kid.as_deref(), *refetch_interval, *max_age)
                    .await
                    .ok_or_else(|| unauth("Token signing key not found (unknown kid)."))?;
                let id = jwt::verify_with_key(token, alg, &key, issuer)?;
                Ok(external_principal(issuer, id))
            }
        }
    }

    /// Everything that needs no network: keys, our own tokens, shared-secret issuers, and JWKS keys
    /// that are cached and fresh.
    fn begin<'c>(&self, config: &'c AuthConfig, token: &str) -> Result<Step<'c>, AuthError> {
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(unauth("Credential too large."));
        }
        if token.starts_with(KEY_PREFIX) {
            return self.verify_key(token).map(Step::Done);
        }
        if token.split('.').count() != 3 {
            return Err(unauth("Invalid API key or token."));
        }
        let header = jwt::checked_header(token)?;
        let iss = jwt::peek_issuer(token).ok_or_else(|| unauth("Token lacks the `iss` claim."))?;
        if iss == OWN_ISSUER {
            return self.verify_session(token).map(Step::Done);
        }
        let issuer = config
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or_else(|| unauth("Token issuer not accepted."))?;
        match &issuer.keys {
            IssuerKeys::SharedSecret { env } => {
                let secret = std::env::var(env)
                    .ok()
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        tracing::warn!(issuer = %issuer.issuer, variable = %env, "shared secret variable unset; refusing the issuer's tokens");
                        unauth("Token issuer not accepted.")
                    })?;
                let id = jwt::verify_with_secret(token, header.alg, secret.as_bytes(), issuer)?;
                Ok(Step::Done(external_principal(issuer, id)))
            }
            IssuerKeys::Jwks { url, max_age, .. } => {
                let cache = self.issuers.entry(url.clone()).or_default().clone();
                if let KeyLookup::Found(key) = cache.cached(header.kid.as_deref(), *max_age) {
                    let id = jwt::verify_with_key(token, header.alg, &key, issuer)?;
                    return Ok(Step::Done(external_principal(issuer, id)));
                }
                Ok(Step::Jwks {
                    issuer,
                    cache,
                    kid: header.kid,
                    alg: header.alg,
                })
            }
        }
    }

    /// The hot path for gateway keys.
    fn verify_key(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = || unauth("Invalid API key.");
        let (id, secret) = split_token(token, KEY_PREFIX).ok_or_else(invalid)?;
        let entry = self.cached_key(id)?.ok_or_else(invalid)?;
        let rec = &entry.record;
        let now = now_ms();
        let hash = sha256_hex_bytes(secret);
        let current = digest_eq(hash, &rec.hash);
        let previous = rec.previous.as_ref().filter(|p| digest_eq(hash, &p.hash));
        if !current && previous.is_none() {
            return Err(invalid());
        }
        // Built only for a refusal: `format!` costs ~900 instructions, on every call.
        let prefix = || key_prefix(id);
        if !current && previous.is_some_and(|p| p.valid_until_ms <= now) {
            return Err(unauth(format!(
                "API key {} was rotated and its grace period has ended.",
                prefix()
            )));
        }
        if rec.revoked_ms.is_some() {
            return Err(unauth(format!("API key {} has been revoked.", prefix())));
        }
        if rec.expires_ms.is_some_and(|t| t <= now) {
            return Err(unauth(format!("API key {} has expired.", prefix())));
        }
        let account = match &rec.account {
            Some(a) => self.cached_account(a)?,
            None => None,
        };
        if account.as_ref().is_some_and(|a| a.account.disabled) {
            return Err(unauth(format!(
                "The account of API key {} is disabled.",
                prefix()
            )));
        }
        entry.last_used_ms.fetch_max(now, Ordering::Relaxed);
        let admin_scope = rec.scopes.iter().any(|s| s == ADMIN_SCOPE);
        let account_role = account.as_ref().map(|a| a.account.role);
        let admin = admin_scope && account_role.is_none_or(|r| r == Role::Admin);
        Ok(Principal {
            via: Via::ApiKey {
                key_id: rec.id.clone(),
            },
            account: rec.account.clone(),
            role: account_role.unwrap_or(if admin { Role::Admin } else { Role::User }),
            admin,
            tier: rec
                .tier
                .clone()
                .or_else(|| account.as_ref().and_then(|a| a.account.tier.clone())),
            key_models: entry.models.clone(),
            account_models: account.and_then(|a| a.models.clone()),
        })
    }

    /// Our own access tokens: signature and claims, then the family (logout, reuse) and the account.
    fn verify_session(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.session.verify(token)?;
        if self.family_revoked(&claims.fam)? {
            return Err(unauth("This session has been signed out or revoked."));
        }
        let account = self
            .cached_account(&claims.sub)?
            .filter(|a| !a.account.disabled)
            .ok_or_else(|| unauth("The account of this session is disabled or gone."))?;
        let role = account.account.role;
        Ok(Principal {
            via: Via::Session { family: claims.fam },
            account: Some(claims.sub),
            role,
            admin: role == Role::Admin,
            tier: account.account.tier.clone(),
            key_models: None,
            account_models: account.models.clone(),
        })
    }

    // --- caches ---------------------------------------------------------------------------------

    /// The key with public id `id`, from the cache or sled. Readers only insert when absent and
    /// writers always overwrite after writing sled, so a stale read never replaces a newer entry.
    fn cached_key(&self, id: &str) -> Result<Option<Arc<CachedKey>>, AuthError> {
        if let Some(e) = self.keys.get(id) {
            return Ok(Some(e.clone()));
        }
        let Some(rec) = self.store.key(id)? else {
            return Ok(None);
        };
        let entry = Arc::new(CachedKey::new(rec, 0));
        Ok(Some(
            self.keys.entry(id.to_owned()).or_insert(entry).clone(),
        ))
    }

    /// Replaces a key's cache entry after its record was written, keeping the in-memory last use.
    fn recache_key(&self, rec: KeyRecord) {
        let last = self
            .keys
            .get(&rec.id)
            .map_or(0, |e| e.last_used_ms.load(Ordering::Relaxed));
        self.keys
            .insert(rec.id.clone(), Arc::new(CachedKey::new(rec, last)));
    }

    fn cached_account(&self, id: &str) -> Result<Option<Arc<CachedAccount>>, AuthError> {
        if let Some(e) = self.accounts.get(id) {
            return Ok(e.clone());
        }
        let loaded = self
            .store
            .account(id)?
            .map(|a| Arc::new(CachedAccount::new(a)));
        Ok(self.accounts.entry(id.to_owned()).or_insert(loaded).clone())
    }

    fn recache_account(&self, account: Account) {
        self.accounts.insert(
            account.id.clone(),
            Some(Arc::new(CachedAccount::new(account))),
        );
    }

    /// Whether a sign-in family is revoked; an unknown family (forgotten after expiry) counts as revoked.
    fn family_revoked(&self, id: &str) -> Result<bool, AuthError> {
        if let Some(r) = self.families.get(id) {
            return Ok(*r);
        }
        let revoked = self
            .store
            .family(id)?
            .is_none_or(|f| f.revoked_ms.is_some());
        Ok(*self.families.entry(id.to_owned()).or_insert(revoked))
    }

    fn revoke_family(&self, id: &str, reason: &str) -> Result<(), AuthError> {
        let now = now_ms();
        self.store.update_family(id, |f| {
            if f.revoked_ms.is_none() {
                f.revoked_ms = Some(now);
                f.revoked_reason = Some(reason.to_owned());
            }
        })?;
        self.families.insert(id.to_owned(), true);
        self.queue(Table::Families, id);
        Ok(())
    }

    // --- audit ----------------------------------------------------------------------------------

    /// Appends to the audit log. A failure to write is logged, not returned: the operation it records
    /// has already happened.
    pub fn audit(
        &self,
        event: AuditEvent,
        success: bool,
        actor: &str,
        target: Option<String>,
        address: Option<&str>,
        detail: Option<String>,
    ) {
        let entry = AuditEntry {
            id: String::new(),
            ts_ms: now_ms(),
            event: event.as_str().to_owned(),
            outcome: if success { "success" } else { "failure" }.to_owned(),
            actor: actor.to_owned(),
            target,
            address: address.map(str::to_owned),
            detail,
        };
        tracing::info!(
            event = %entry.event,
            outcome = %entry.outcome,
            actor = %entry.actor,
            target = entry.target.as_deref().unwrap_or(""),
            "audit"
        );
        match self.store.append_audit(entry) {
            Ok(entry) => self.queue(Table::Audit, &entry.id),
            Err(e) => tracing::error!(error = %e, "cannot write the audit log"),
        }
    }

    /// A page of the audit log, newest first, and the cursor of the next page.
    pub fn audit_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<String>), AuthError> {
        Ok(self.store.audit_page(cursor, limit)?)
    }

    // --- upkeep ---------------------------------------------------------------------------------

    /// Writes the in-memory `last_used_at` of keys used since their last write.
    pub fn persist_last_used(&self) {
        let dirty: Vec<String> = self
            .keys
            .iter()
            .filter(|e| e.last_used_ms.load(Ordering::Relaxed) > e.record.last_used_ms.unwrap_or(0))
            .map(|e| e.key().clone())
            .collect();
        for id in dirty {
            if let Err(e) = self.persist_one(&id) {
                tracing::warn!(key = %key_prefix(&id), error = %e, "cannot save a key's last use");
            }
        }
    }

    fn persist_one(&self, id: &str) -> Result<(), AuthError> {
        let _write = self.key_writes.lock();
        let Some(used) = self
            .keys
            .get(id)
            .map(|e| e.last_used_ms.load(Ordering::Relaxed))
        else {
            return Ok(());
        };
        let Some(mut rec) = self.store.key(id)? else {
            return Ok(());
        };
        rec.last_used_ms = Some(used.max(rec.last_used_ms.unwrap_or(0)));
        self.store.put_key(&rec)?;
        self.recache_key(rec);
        Ok(())
    }

    /// Forgets expired refresh tokens and families (in Redis too, with `state.backend: redis`).
    pub async fn sweep(&self) {
        let now = now_ms();
        match self.store.sweep_sessions(now) {
            Ok((refresh, families)) if refresh.is_empty() && families.is_empty() => {}
            Ok((refresh, families)) => {
                tracing::info!(
                    removed = refresh.len() + families.len(),
                    "forgot expired sign-in sessions"
                );
                // Cached family states reload lazily; forgotten ones now read as revoked.
                self.families.clear();
                self.forget_expired(Table::Refresh, &refresh, now).await;
                self.forget_expired(Table::Families, &families, now).await;
            }
            Err(e) => tracing::warn!(error = %e, "session sweep failed"),
        }
    }

    /// Fetches every configured JWKS once, so that the first requests (and synchronous admin checks)
    /// find the keys cached.
    pub async fn prefetch_jwks(&self, config: &AuthConfig) {
        for issuer in &config.issuers {
            if let IssuerKeys::Jwks {
                url,
                refetch_interval,
                max_age,
            } = &issuer.keys
            {
                let cache = self.issuers.entry(url.clone()).or_default().clone();
                // A kid no JWKS uses: forces the first fetch and finds nothing.
                let _ = cache
                    .key(url, Some("\u{0}prefetch"), *refetch_interval, *max_age)
                    .await;
            }
        }
    }

    /// Periodic upkeep: last-used times every minute, expired sessions every hour. Runs until the
    /// server stops.
    pub async fn run_maintenance(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            self.persist_last_used();
            if ticks.is_multiple_of(60) {
                self.sweep().await;
            }
            ticks += 1;
        }
    }

    /// Makes everything written so far durable, then sends it to the other replicas (with Redis).
    async fn flush(&self) -> Result<(), AuthError> {
        self.store.flush().await.map_err(AuthError::from)?;
        self.send_queued().await;
        Ok(())
    }
}

fn external_principal(issuer: &IssuerConfig, id: jwt::ExternalIdentity) -> Principal {
    let role = id
        .role
        .as_deref()
        .and_then(Role::parse)
        .unwrap_or(Role::User);
    Principal {
        via: Via::External {
            issuer: issuer.issuer.clone(),
            subject: id.subject.clone(),
            project: id.project,
        },
        account: Some(id.subject),
        role,
        admin: role == Role::Admin,
        tier: id.tier,
        key_models: None,
        account_models: None,
    }
}
