//! Upstream OAuth credentials in sled, sealed with the vault: tree `oauth`, key `v1/oauth/PROFILE`,
//! value the sealed JSON of a [`StoredCredential`] (the profile id bound as associated data).
// Raw sled is allowed here: the OAuth token store file (see clippy.toml).
#![allow(clippy::disallowed_types)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchyard_actors::store::Store;

use super::vault::{Vault, VaultError};

const TREE: &str = "oauth";

/// Why the token store could not be used. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("cannot open the token store: {0}")]
    Open(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("token store: {0}")]
    Sled(String),
    #[error("stored credential for {0} is unreadable; run `switchyard login {0}` again")]
    Corrupt(String),
}

/// One profile's credential as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredential {
    /// The access token, or the API key of a `returns: api_key` profile.
    pub secret: String,
    pub refresh_token: Option<String>,
    /// Unix seconds after which a new access token is fetched before use; `None`: never.
    pub refresh_at: Option<u64>,
    /// Unix seconds when the access token stops working, as the provider said (`expires_in`).
    pub expires_at: Option<u64>,
}

// Hand-written so that a token never reaches a log through `{:?}`.
impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredential")
            .field("secret", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("refresh_at", &self.refresh_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// How long before `expires_at` a token is refreshed: a minute, or half its lifetime when shorter.
const REFRESH_MARGIN: u64 = 60;

impl StoredCredential {
    /// A credential obtained now, valid for `expires_in` seconds if given.
    pub fn new(secret: String, refresh_token: Option<String>, expires_in: Option<u64>) -> Self {
        let now = unix_now();
        StoredCredential {
            secret,
            refresh_token,
            refresh_at: expires_in.map(|s| now.saturating_add(s - REFRESH_MARGIN.min(s / 2))),
            expires_at: expires_in.map(|s| now.saturating_add(s)),
        }
    }

    /// Whether it should be refreshed before use.
    pub fn is_due(&self) -> bool {
        self.refresh_at.is_some_and(|at| unix_now() >= at)
    }

    /// Whether the provider would refuse it already.
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|at| unix_now() >= at)
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The sealed credentials of every OAuth profile.
pub struct TokenStore {
    tree: sled::Tree,
    vault: Vault,
}

impl TokenStore {
    /// The `oauth` tree of `store`, sealed with the key of `data_dir` (or `SWITCHYARD_SECRET_KEY`).
    pub fn open(store: &Store, data_dir: &Path) -> Result<TokenStore, TokenStoreError> {
        Ok(TokenStore {
            tree: store
                .open_tree(TREE)
                .map_err(|e| TokenStoreError::Open(e.to_string()))?,
            vault: Vault::open(data_dir)?,
        })
    }

    fn key(profile: &str) -> String {
        format!("v1/oauth/{profile}")
    }

    /// The stored credential of `profile`, if it ever logged in.
    pub fn load(&self, profile: &str) -> Result<Option<StoredCredential>, TokenStoreError> {
        let Some(sealed) = self
            .tree
            .get(Self::key(profile))
            .map_err(|e| TokenStoreError::Sled(e.to_string()))?
        else {
            return Ok(None);
        };
        self.unseal(profile, &sealed).map(Some)
    }

    /// `cred` sealed for `profile` with this replica's key, as it is stored (also in Redis).
    pub fn seal(&self, profile: &str, cred: &StoredCredential) -> Result<Vec<u8>, TokenStoreError> {
        let plain = serde_json::to_vec(cred).map_err(|e| TokenStoreError::Sled(e.to_string()))?;
        Ok(self.vault.seal(profile, &plain)?)
    }

    /// The credential `sealed` holds for `profile`; `Corrupt` when this replica's key cannot open it.
    pub fn unseal(
        &self,
        profile: &str,
        sealed: &[u8],
    ) -> Result<StoredCredential, TokenStoreError> {
        let plain = self
            .vault
            .open_sealed(profile, sealed)
            .map_err(|_| TokenStoreError::Corrupt(profile.to_owned()))?;
        serde_json::from_slice(&plain).map_err(|_| TokenStoreError::Corrupt(profile.to_owned()))
    }

    /// Replaces the credential of `profile` and flushes it to disk.
    pub fn save(&self, profile: &str, cred: &StoredCredential) -> Result<(), TokenStoreError> {
        let sealed = self.seal(profile, cred)?;
        self.tree
            .insert(Self::key(profile), sealed)
            .and_then(|_| self.tree.flush())
            .map_err(|e| TokenStoreError::Sled(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_sealed_and_per_profile() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let tokens = TokenStore::open(&store, dir.path()).unwrap();
        assert!(tokens.load("a").unwrap().is_none());
        let cred = StoredCredential::new(
            "at-plain-123".into(),
            Some("rt-plain-456".into()),
            Some(3600),
        );
        tokens.save("a", &cred).unwrap();
        assert_eq!(tokens.load("a").unwrap(), Some(cred.clone()));
        assert!(!cred.is_due() && !cred.is_expired());
        assert!(!format!("{cred:?}").contains("plain"));
        // Moved under another profile's key, it does not open.
        let sealed = tokens.tree.get(TokenStore::key("a")).unwrap().unwrap();
        assert!(!sealed.windows(12).any(|w| w == b"at-plain-123"));
        tokens.tree.insert(TokenStore::key("b"), sealed).unwrap();
        assert!(matches!(tokens.load("b"), Err(TokenStoreError::Corrupt(_))));
    }

    #[test]
    fn short_lived_tokens_are_refreshed_at_half_their_life() {
        let c = StoredCredential::new("t".into(), None, Some(10));
        assert_eq!(c.expires_at.unwrap() - c.refresh_at.unwrap(), 5);
        let c = StoredCredential::new("t".into(), None, Some(3600));
        assert_eq!(c.expires_at.unwrap() - c.refresh_at.unwrap(), 60);
        let c = StoredCredential::new("t".into(), None, Some(0));
        assert!(c.is_due() && c.is_expired());
        let c = StoredCredential::new("t".into(), None, None);
        assert!(!c.is_due() && !c.is_expired());
    }
}
