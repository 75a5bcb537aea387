//! Upstream OAuth tokens shared by the fleet: one string key per profile holding the credential
//! sealed with the vault (`upstream::oauth`, so Redis never sees a token in the clear), and the
//! lease of the one replica refreshing it. The sealing and the refresh itself live with the token
//! source; this file only moves the sealed bytes.

use std::time::Duration;

use super::locks::Lease;
use super::{Resource, Shared, SharedError};

impl Shared {
    fn oauth_key(&self, profile: &str) -> String {
        self.key(&format!("oauth:{{{profile}}}"))
    }

    /// The fleet's sealed credential of `profile`, if a replica stored one.
    pub async fn oauth_token(&self, profile: &str) -> Result<Option<Vec<u8>>, SharedError> {
        let key = self.oauth_key(profile);
        self.call(Resource::OAuthTokens, |mut c| async move {
            redis::cmd("GET").arg(&key).query_async(&mut c).await
        })
        .await
    }

    /// Replaces the fleet's sealed credential of `profile` (by the refresh lease's holder).
    pub async fn store_oauth_token(&self, profile: &str, sealed: &[u8]) -> Result<(), SharedError> {
        let key = self.oauth_key(profile);
        self.call(Resource::OAuthTokens, |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(sealed)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Stores `sealed` as the fleet's credential of `profile` only if there is none yet (a replica
    /// offering the token it logged in with); true if it was taken.
    pub async fn offer_oauth_token(
        &self,
        profile: &str,
        sealed: &[u8],
    ) -> Result<bool, SharedError> {
        let key = self.oauth_key(profile);
        let set: Option<String> = self
            .call(Resource::OAuthTokens, |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(sealed)
                    .arg("NX")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// The lease of `profile`'s one refresher, for `lease`; `Ok(None)` while another replica holds it.
    pub async fn oauth_refresh_lease(
        &self,
        profile: &str,
        lease: Duration,
    ) -> Result<Option<Lease>, SharedError> {
        self.try_lease(
            Resource::OAuthTokens,
            &format!("oauth-refresh:{{{profile}}}"),
            lease,
        )
        .await
    }
}
