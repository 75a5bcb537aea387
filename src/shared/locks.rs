//! Fleet-wide leases: one replica at a time does a thing (a profile's half-open probe, an OAuth
//! refresh). A lease is `SET key token NX PX lease`: it expires on its own, so a replica that dies
//! holding one blocks the others for at most the lease; only its holder (who knows the random
//! token) may release or extend it.

use std::sync::LazyLock;
use std::time::Duration;

use super::{Resource, Shared, SharedError};

/// KEYS: the lease. ARGV: the holder's token. Deletes it only if still held with that token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// KEYS: the lease. ARGV: the holder's token, the new time to live in ms. Keeps it for that long
/// from now, only if still held with that token.
const KEEP: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE));
static KEEP_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(KEEP));

/// A lease this replica holds.
#[derive(Debug, Clone)]
pub struct Lease {
    resource: Resource,
    key: String,
    token: String,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Shared {
    /// Takes the lease `name` for `lease`, if nobody holds it: `Ok(None)` when another replica does.
    pub async fn try_lease(
        &self,
        resource: Resource,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Lease>, SharedError> {
        let key = self.key(&format!("lease:{name}"));
        let token = uuid::Uuid::new_v4().simple().to_string();
        let (k, t) = (key.clone(), token.clone());
        let taken: Option<String> = self
            .call(resource, |mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(&t)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(lease))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let outcome = if taken.is_some() { "taken" } else { "busy" };
        self.metrics
            .locks
            .with_label_values(&[resource.as_str(), outcome])
            .inc();
        Ok(taken.map(|_| Lease {
            resource,
            key,
            token,
        }))
    }

    /// Gives `lease` back at once (if it is still ours).
    pub async fn release_lease(&self, lease: &Lease) -> Result<(), SharedError> {
        let (key, token) = (&lease.key, &lease.token);
        self.call(lease.resource, |mut c| async move {
            RELEASE_SCRIPT
                .key(key)
                .arg(token)
                .invoke_async::<i64>(&mut c)
                .await
                .map(drop)
        })
        .await
    }

    /// Keeps `lease` (if it is still ours) for `hold` from now, then lets it expire: the others wait
    /// that long before trying themselves.
    pub async fn keep_lease(&self, lease: &Lease, hold: Duration) -> Result<(), SharedError> {
        let (key, token) = (&lease.key, &lease.token);
        self.call(lease.resource, |mut c| async move {
            KEEP_SCRIPT
                .key(key)
                .arg(token)
                .arg(millis(hold))
                .invoke_async::<i64>(&mut c)
                .await
                .map(drop)
        })
        .await
    }
}
