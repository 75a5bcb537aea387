//! Tier overrides (`PUT /admin/accounts/{id}/tier`, the webhook's `subscription.*` events) shared by
//! every replica with `state.backend: redis`, through the same kind of Redis table as the identity
//! records (`shared::records`): a write goes to Redis first (so two replicas setting one account's
//! tier end with the one Redis took last), then into this replica's store; every replica pulls the
//! table's changes every 200 ms and applies them in Redis's order. A Redis that lost its data
//! (restarted empty, restored) gets each replica's overrides back with set-if-absent.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Limits;
use crate::shared::records::Table;
use crate::shared::{Resource, SharedError};

/// How often a replica pulls the others' tier changes.
const PULL_EVERY: Duration = Duration::from_millis(200);
/// Changes read per round trip.
const PULL_BATCH: usize = 500;

/// One account's override as Redis holds it; `tier: None` is a cleared override.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TierRecord {
    tier: Option<String>,
}

impl Limits {
    /// Sets (or clears) an account's tier override for the fleet: Redis first, then this replica.
    /// Without Redis (local mode) only the latter.
    pub async fn set_tier_everywhere(
        &self,
        account: &str,
        tier: Option<&str>,
    ) -> Result<(), TierError> {
        if let Some(shared) = &self.shared {
            let json = serde_json::to_string(&TierRecord {
                tier: tier.map(str::to_owned),
            })
            .map_err(|e| TierError::Store(e.to_string()))?;
            shared
                .put_record(Table::TierOverrides, account, &json, false)
                .await
                .map_err(TierError::Shared)?;
        }
        self.set_tier(account, tier)
            .map_err(|e| TierError::Store(e.to_string()))
    }

    /// Pulls the other replicas' tier changes for as long as the process runs (with Redis).
    pub async fn run_tier_mirror(self: std::sync::Arc<Self>) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        // (Redis's epoch of the table, the last change number applied); None until seeded.
        let mut seen: Option<(String, u64)> = None;
        let mut tick = tokio::time::interval(PULL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = self.tier_round(&mut seen).await;
            shared.set_degraded(Resource::Tiers, result.is_err());
        }
    }

    /// One round: seed Redis the first time (and after it lost data), else pull and apply.
    async fn tier_round(&self, seen: &mut Option<(String, u64)>) -> Result<(), SharedError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let Some((epoch, mut after)) = seen.clone() else {
            let records: Vec<(String, String, bool)> = self
                .tier_overrides
                .iter()
                .filter_map(|e| {
                    let record = TierRecord {
                        tier: Some(e.value().clone()),
                    };
                    Some((e.key().clone(), serde_json::to_string(&record).ok()?, false))
                })
                .collect();
            let fresh = uuid::Uuid::new_v4().to_string();
            let (_, epoch) = shared
                .seed_records(Table::TierOverrides, &fresh, &records)
                .await?;
            *seen = Some((epoch, 0));
            return Ok(());
        };
        loop {
            let changes = shared
                .changes(Table::TierOverrides, after, PULL_BATCH)
                .await?;
            if changes.epoch != epoch || changes.counter < after {
                tracing::warn!(
                    "redis lost tier overrides (restarted or restored): seeding it again"
                );
                *seen = None;
                return Ok(());
            }
            let full = changes.records.len() == PULL_BATCH;
            for (n, account, json) in changes.records {
                match serde_json::from_str::<TierRecord>(&json) {
                    Ok(r) => {
                        if self.tier_override(&account) != r.tier {
                            if let Err(e) = self.set_tier(&account, r.tier.as_deref()) {
                                tracing::error!(error = %e, account = %account, "cannot store another replica's tier override");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, account = %account, "unreadable tier override in redis")
                    }
                }
                after = after.max(n);
            }
            *seen = Some((epoch.clone(), after));
            if !full {
                return Ok(());
            }
        }
    }
}

/// Why a tier override could not be set.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("shared state: {0}")]
    Shared(SharedError),
    #[error("{0}")]
    Store(String),
}
