//! The per-profile token source: what the upstream client asks for a credential before each request.
//!
//! Reading the current token is a lock-free-ish `RwLock` read, so ordinary requests never queue. A
//! token that is due for refresh sends requests through an async gate instead: the first one in
//! refreshes, the others wait for it and then read the new token, so 50 concurrent requests cause one
//! refresh, never 50. A refusal (`invalid_grant`: revoked or expired refresh token) is remembered, so
//! the token endpoint is not hammered; the request then gets a 401, which marks the profile
//! `auth_failed` with the reason through the proxy's usual classification.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use switchyard_actors::store::Store;

use super::store::{StoredCredential, TokenStore};
use super::{TokenError, TOKEN_REQUEST_TIMEOUT};
use crate::config::{OAuthConfig, OAuthReturns};
use crate::shared::Shared;

/// How long one replica may hold the fleet's refresh lease: the token request's own limit and a
/// margin for Redis. Also how long the others wait for its token before giving up.
const REFRESH_LEASE: Duration = Duration::from_secs(TOKEN_REQUEST_TIMEOUT.as_secs() + 5);
/// How often a replica waiting for another's refresh looks for the new token.
const FLEET_POLL: Duration = Duration::from_millis(50);

/// Why no credential can be sent right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Only a new `switchyard login` helps (never logged in, refresh refused, store unreadable).
    #[error("{0}")]
    Auth(String),
    /// Temporary (the token endpoint is down): the next request tries again.
    #[error("{0}")]
    Unavailable(String),
}

enum Current {
    /// Not read from the store yet.
    Unloaded,
    Ready(StoredCredential),
    /// Refused for good (until the next login and a restart).
    Failed(String),
}

/// One OAuth profile's credential.
pub struct TokenSource {
    profile: String,
    config: OAuthConfig,
    store: Result<Arc<TokenStore>, String>,
    /// Read by every request; written only under `refresh_gate`. parking_lot: short, never held
    /// across an await.
    current: parking_lot::RwLock<Current>,
    /// Single-flight gate: a tokio mutex, because its holder awaits the token endpoint.
    refresh_gate: tokio::sync::Mutex<()>,
    /// The fleet (`state.backend: redis`), set once at start after the sources were first built.
    fleet: Arc<OnceLock<Arc<Shared>>>,
}

impl TokenSource {
    fn new(
        profile: &str,
        config: &OAuthConfig,
        store: Result<Arc<TokenStore>, String>,
        fleet: Arc<OnceLock<Arc<Shared>>>,
    ) -> Self {
        TokenSource {
            profile: profile.to_owned(),
            config: config.clone(),
            store,
            current: parking_lot::RwLock::new(Current::Unloaded),
            refresh_gate: tokio::sync::Mutex::new(()),
            fleet,
        }
    }

    /// How the credential is sent: an access token as a bearer token; an API key (`returns:
    /// api_key`) in the provider's own convention, like a configured key.
    pub fn returns(&self) -> OAuthReturns {
        self.config.returns
    }

    /// The current secret without refreshing, for redacting it from upstream error text.
    pub fn current_secret(&self) -> Option<String> {
        match &*self.current.read() {
            Current::Ready(c) => Some(c.secret.clone()),
            _ => None,
        }
    }

    /// The credential to send now, refreshed first when it is due.
    pub async fn credential(&self) -> Result<String, CredentialError> {
        if let Some(ready) = self.usable() {
            return ready;
        }
        let _gate = self.refresh_gate.lock().await;
        // Whoever held the gate before us may have refreshed already.
        if let Some(ready) = self.usable() {
            return ready;
        }
        let local = self.loaded()?;
        if let Some(fleet) = self.fleet.get() {
            // `None`: Redis cannot be asked; refresh alone, as a lone replica does.
            if let Some(answer) = self.through_fleet(fleet, local.clone()).await {
                return answer;
            }
        }
        let Some(cred) = local else {
            return self.fail(self.not_logged_in());
        };
        if !cred.is_due() {
            return Ok(cred.secret);
        }
        let next = self.refresh_now(cred).await?;
        Ok(self.adopt(next, true))
    }

    fn not_logged_in(&self) -> String {
        format!(
            "not logged in: stop the server and run `switchyard login {}`",
            self.profile
        )
    }

    /// Refreshes `cred` at the token endpoint, or the error to answer with (a refusal is
    /// remembered). An expired token without a refresh token fails; a valid one without is kept.
    async fn refresh_now(
        &self,
        cred: StoredCredential,
    ) -> Result<StoredCredential, CredentialError> {
        let Some(refresh_token) = cred.refresh_token.clone() else {
            if cred.is_expired() {
                return Err(self.refuse(format!(
                    "the access token expired and there is no refresh token: run `switchyard login {}`",
                    self.profile
                )));
            }
            return Ok(cred);
        };
        tracing::info!(profile = %self.profile, "refreshing the upstream OAuth token");
        match super::refresh(&self.config, &refresh_token).await {
            Ok(t) => {
                let Some(access) = t.access_token else {
                    return Err(
                        self.refuse("the token endpoint answered without an access_token".into())
                    );
                };
                Ok(StoredCredential::new(
                    access,
                    t.refresh_token.or(Some(refresh_token)),
                    t.expires_in,
                ))
            }
            Err(e @ TokenError::Rejected { .. }) => {
                Err(self.refuse(format!("OAuth token refresh failed: {e}")))
            }
            Err(e @ TokenError::Unavailable(_)) => {
                tracing::warn!(profile = %self.profile, error = %e, "OAuth token refresh failed; will retry");
                Err(CredentialError::Unavailable(format!(
                    "OAuth token refresh failed: {e}"
                )))
            }
        }
    }

    /// Makes `next` the current credential (and, with `save`, the stored one); its secret.
    fn adopt(&self, next: StoredCredential, save: bool) -> String {
        if let (true, Ok(store)) = (save, &self.store) {
            // The new token works even if it cannot be saved; the next start refreshes again.
            if let Err(e) = store.save(&self.profile, &next) {
                tracing::error!(profile = %self.profile, error = %e, "cannot store the refreshed token");
            }
        }
        let secret = next.secret.clone();
        *self.current.write() = Current::Ready(next);
        secret
    }

    /// The fleet's token, the fleet's way (`state.backend: redis`): a fresh token in Redis is used
    /// as it is; a due one is refreshed by the one replica that takes the refresh lease, which stores
    /// the new token in Redis sealed with the vault; the others wait for it and read it. `None` when
    /// Redis cannot be asked (the caller refreshes alone). Called under the gate.
    async fn through_fleet(
        &self,
        fleet: &Arc<Shared>,
        local: Option<StoredCredential>,
    ) -> Option<Result<String, CredentialError>> {
        let store = self.store.as_ref().ok()?;
        let deadline = Instant::now() + REFRESH_LEASE;
        loop {
            let shared = self.fleet_token(fleet, store).await?;
            if let Some(fresh) = shared.clone().filter(|c| !c.is_due()) {
                return Some(Ok(self.adopt(fresh, true)));
            }
            let Some(candidate) = shared.clone().or_else(|| local.clone()) else {
                return Some(self.fail(self.not_logged_in()));
            };
            if !candidate.is_due() {
                // Only this replica had it (logged in here, Redis emptied): offer it to the fleet.
                if let Ok(sealed) = store.seal(&self.profile, &candidate) {
                    let _ = fleet.offer_oauth_token(&self.profile, &sealed).await;
                }
                return Some(Ok(self.adopt(candidate, false)));
            }
            match fleet
                .oauth_refresh_lease(&self.profile, REFRESH_LEASE)
                .await
            {
                Err(_) => return None,
                Ok(Some(lease)) => {
                    let answer = self.refresh_for_fleet(fleet, store, candidate).await;
                    if let Err(e) = fleet.release_lease(&lease).await {
                        tracing::debug!(profile = %self.profile, error = %e, "cannot release the OAuth refresh lease; it expires");
                    }
                    return Some(answer);
                }
                Ok(None) => {}
            }
            if Instant::now() >= deadline {
                return Some(Err(CredentialError::Unavailable(
                    "another replica is refreshing the OAuth token and has not finished".into(),
                )));
            }
            tokio::time::sleep(FLEET_POLL).await;
        }
    }

    /// Under the refresh lease: the token another replica may have stored just before we took it,
    /// or else a refresh of the fleet's latest token, stored in Redis for the others.
    async fn refresh_for_fleet(
        &self,
        fleet: &Arc<Shared>,
        store: &TokenStore,
        candidate: StoredCredential,
    ) -> Result<String, CredentialError> {
        let latest = match self.fleet_token(fleet, store).await {
            Some(Some(c)) if !c.is_due() => return Ok(self.adopt(c, true)),
            Some(Some(c)) => c,
            Some(None) | None => candidate,
        };
        let next = self.refresh_now(latest).await?;
        match store.seal(&self.profile, &next) {
            Ok(sealed) => {
                if let Err(e) = fleet.store_oauth_token(&self.profile, &sealed).await {
                    // The others refresh once more with the token we rotated away: say so loudly.
                    tracing::error!(profile = %self.profile, error = %e, "cannot store the refreshed OAuth token in redis");
                }
            }
            Err(e) => {
                tracing::error!(profile = %self.profile, error = %e, "cannot seal the refreshed OAuth token");
            }
        }
        Ok(self.adopt(next, true))
    }

    /// The fleet's credential: `None` when Redis cannot be asked, `Some(None)` when it has none. A
    /// sealed token this replica's key cannot open is logged and treated as none.
    async fn fleet_token(
        &self,
        fleet: &Shared,
        store: &TokenStore,
    ) -> Option<Option<StoredCredential>> {
        let sealed = fleet.oauth_token(&self.profile).await.ok()?;
        Some(sealed.and_then(|s| match store.unseal(&self.profile, &s) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(profile = %self.profile, error = %e, "the OAuth token in redis does not open with this replica's SWITCHYARD_SECRET_KEY");
                None
            }
        }))
    }

    /// The answer when no refresh is needed: a valid token, or the remembered failure.
    fn usable(&self) -> Option<Result<String, CredentialError>> {
        match &*self.current.read() {
            Current::Ready(c) if !c.is_due() => Some(Ok(c.secret.clone())),
            Current::Failed(reason) => Some(Err(CredentialError::Auth(reason.clone()))),
            _ => None,
        }
    }

    /// The credential in memory, read from the store the first time. Called under the gate.
    fn loaded(&self) -> Result<Option<StoredCredential>, CredentialError> {
        if let Current::Ready(c) = &*self.current.read() {
            return Ok(Some(c.clone()));
        }
        let store = match &self.store {
            Ok(s) => s,
            Err(e) => return self.fail(e.clone()).map(|_| None),
        };
        match store.load(&self.profile) {
            Ok(Some(c)) => {
                *self.current.write() = Current::Ready(c.clone());
                Ok(Some(c))
            }
            Ok(None) => Ok(None),
            Err(e) => self.fail(e.to_string()).map(|_| None),
        }
    }

    fn fail(&self, reason: String) -> Result<String, CredentialError> {
        Err(self.refuse(reason))
    }

    /// Remembers that the credential is unusable for `reason`; the error to answer with.
    fn refuse(&self, reason: String) -> CredentialError {
        tracing::warn!(profile = %self.profile, reason = %reason, "upstream OAuth credential unusable");
        *self.current.write() = Current::Failed(reason.clone());
        CredentialError::Auth(reason)
    }
}

/// Every OAuth profile's token source, shared by all workers (so single-flight holds process-wide) and
/// kept across reloads while a profile's `auth:` is unchanged.
pub struct TokenSources {
    store: Store,
    data_dir: PathBuf,
    /// Opened on first use, so a config without OAuth profiles never creates a key file.
    tokens: OnceLock<Result<Arc<TokenStore>, String>>,
    by_profile: parking_lot::Mutex<HashMap<String, Arc<TokenSource>>>,
    /// Shared with every source: set by `share_through`.
    fleet: Arc<OnceLock<Arc<Shared>>>,
}

impl TokenSources {
    pub fn new(store: &Store, data_dir: &std::path::Path) -> TokenSources {
        TokenSources {
            store: store.clone(),
            data_dir: data_dir.to_path_buf(),
            tokens: OnceLock::new(),
            by_profile: parking_lot::Mutex::new(HashMap::new()),
            fleet: Arc::new(OnceLock::new()),
        }
    }

    /// Shares every OAuth token through Redis: checks that this replica's vault key opens the
    /// fleet's token of each of `profiles` (an `Err` names the first that does not: every replica
    /// must have the same `SWITCHYARD_SECRET_KEY`), and offers the fleet the token this replica
    /// logged in with where Redis has none. Redis unreachable: only logged; refreshes are then
    /// local until it answers.
    pub async fn share_through(
        &self,
        fleet: Arc<Shared>,
        profiles: &[(String, OAuthConfig)],
    ) -> Result<(), String> {
        let _ = self.fleet.set(fleet.clone());
        for (profile, config) in profiles {
            let source = self.for_profile(profile, config);
            let Ok(store) = &source.store else { continue };
            let sealed = match fleet.oauth_token(profile).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(profile = %profile, error = %e, "cannot read the fleet's OAuth token yet");
                    continue;
                }
            };
            let shared = match sealed.map(|s| store.unseal(profile, &s)) {
                Some(Err(_)) => {
                    return Err(format!(
                        "profile {profile}: the OAuth token in redis does not open with this replica's key: \
                         every replica must run with the same {} (base64 of 32 bytes)",
                        super::vault::SECRET_KEY_ENV
                    ))
                }
                Some(Ok(c)) => Some(c),
                None => None,
            };
            let Ok(Some(local)) = store.load(profile) else {
                continue;
            };
            let Ok(sealed) = store.seal(profile, &local) else {
                continue;
            };
            let offered = match shared {
                None => fleet.offer_oauth_token(profile, &sealed).await.map(drop),
                // A login here since (it expires later than the fleet's token): the fleet's now.
                Some(s) if local.expires_at > s.expires_at && local.secret != s.secret => {
                    tracing::info!(profile = %profile, "this replica's OAuth token is newer than the fleet's: sharing it");
                    fleet.store_oauth_token(profile, &sealed).await
                }
                Some(_) => Ok(()),
            };
            if let Err(e) = offered {
                tracing::warn!(profile = %profile, error = %e, "cannot offer the OAuth token to the fleet");
            }
        }
        Ok(())
    }

    /// The token source of an OAuth profile (the same one as before if its `auth:` is unchanged).
    pub fn for_profile(&self, profile: &str, config: &OAuthConfig) -> Arc<TokenSource> {
        let mut by_profile = self.by_profile.lock();
        if let Some(s) = by_profile.get(profile).filter(|s| s.config == *config) {
            return s.clone();
        }
        let store = self
            .tokens
            .get_or_init(|| {
                TokenStore::open(&self.store, &self.data_dir)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone();
        let source = Arc::new(TokenSource::new(profile, config, store, self.fleet.clone()));
        by_profile.insert(profile.to_owned(), source.clone());
        source
    }
}
