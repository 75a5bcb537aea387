//! Ids the fleet acts on at most once (a billing webhook's event ids, threshold notices): `SET key 1 NX PX keep`, so of
//! two replicas handed the same id at once exactly one claims it. A claim expires after `keep`, well
//! past any sender's retries, so the set of ids does not grow forever.

use std::time::Duration;

use super::{Resource, Shared, SharedError};

impl Shared {
    /// Claims `name` for `keep`: `Ok(true)` for the first claim, `Ok(false)` when any replica has
    /// claimed it already.
    pub async fn claim_once(
        &self,
        resource: Resource,
        name: &str,
        keep: Duration,
    ) -> Result<bool, SharedError> {
        let key = self.key(&format!("claim:{name}"));
        let ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .call(resource, |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    /// Forgets a claim (what it stood for was not done), so the id may be claimed again.
    pub async fn forget_claim(&self, resource: Resource, name: &str) -> Result<(), SharedError> {
        let key = self.key(&format!("claim:{name}"));
        self.call(resource, |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<i64>(&mut c).await
        })
        .await
        .map(drop)
    }
}
