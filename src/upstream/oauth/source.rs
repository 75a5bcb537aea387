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

use switchyard_actors::store::Store;

use super::store::{StoredCredential, TokenStore};
use super::TokenError;
use crate::config::{OAuthConfig, OAuthReturns};

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
}

impl TokenSource {
    fn new(profile: &str, config: &OAuthConfig, store: Result<Arc<TokenStore>, String>) -> Self {
        TokenSource {
            profile: profile.to_owned(),
            config: config.clone(),
            store,
            current: parking_lot::RwLock::new(Current::Unloaded),
            refresh_gate: tokio::sync::Mutex::new(()),
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
        let cred = match self.loaded()? {
            Some(c) => c,
            None => {
                return self.fail(format!(
                    "not logged in: stop the server and run `switchyard login {}`",
                    self.profile
                ))
            }
        };
        if !cred.is_due() {
            return Ok(cred.secret);
        }
        let Some(refresh_token) = cred.refresh_token.clone() else {
            if cred.is_expired() {
                return self.fail(format!(
                    "the access token expired and there is no refresh token: run `switchyard login {}`",
                    self.profile
                ));
            }
            return Ok(cred.secret);
        };
        tracing::info!(profile = %self.profile, "refreshing the upstream OAuth token");
        match super::refresh(&self.config, &refresh_token).await {
            Ok(t) => {
                let Some(access) = t.access_token else {
                    return self.fail("the token endpoint answered without an access_token".into());
                };
                let next = StoredCredential::new(
                    access,
                    t.refresh_token.or(Some(refresh_token)),
                    t.expires_in,
                );
                if let Ok(store) = &self.store {
                    // The new token works even if it cannot be saved; the next start refreshes again.
                    if let Err(e) = store.save(&self.profile, &next) {
                        tracing::error!(profile = %self.profile, error = %e, "cannot store the refreshed token");
                    }
                }
                let secret = next.secret.clone();
                *self.current.write() = Current::Ready(next);
                Ok(secret)
            }
            Err(e @ TokenError::Rejected { .. }) => {
                self.fail(format!("OAuth token refresh failed: {e}"))
            }
            Err(e @ TokenError::Unavailable(_)) => {
                tracing::warn!(profile = %self.profile, error = %e, "OAuth token refresh failed; will retry");
                Err(CredentialError::Unavailable(format!(
                    "OAuth token refresh failed: {e}"
                )))
            }
        }
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
        tracing::warn!(profile = %self.profile, reason = %reason, "upstream OAuth credential unusable");
        *self.current.write() = Current::Failed(reason.clone());
        Err(CredentialError::Auth(reason))
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
}

impl TokenSources {
    pub fn new(store: &Store, data_dir: &std::path::Path) -> TokenSources {
        TokenSources {
            store: store.clone(),
            data_dir: data_dir.to_path_buf(),
            tokens: OnceLock::new(),
            by_profile: parking_lot::Mutex::new(HashMap::new()),
        }
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
        let source = Arc::new(TokenSource::new(profile, config, store));
        by_profile.insert(profile.to_owned(), source.clone());
        source
    }
}
