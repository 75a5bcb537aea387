//! API keys mirrored across replicas through Redis (`state.backend: redis`). Every key written here
//! (created, rotated, revoked) is sent to Redis at once, and a loop pulls the other replicas' writes
//! into this replica's sled and cache every 200 ms: a key created on one replica works on all, and a
//! revocation is refused everywhere well within a second. A revocation is final: a revoked key is
//! never brought back by an older or racing copy, from Redis or from a replica.
//!
//! While Redis is unreachable each replica goes on with the keys it last knew; what it could not send
//! is sent once Redis answers again. A Redis that lost its data (restarted empty, or restored from an
//! old snapshot) is seeded back from every replica's keys with set-if-absent.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashSet;

use super::store::KeyRecord;
use super::{AuthError, AuthService};
use crate::shared::records::Table;
use crate::shared::{Resource, Shared, SharedError};

/// How often a replica pulls the others' key changes: a revocation reaches it within this (plus a
/// round trip).
const PULL_EVERY: Duration = Duration::from_millis(200);
/// Changes read per round trip.
const PULL_BATCH: usize = 500;

/// The Redis side of the key store.
pub(super) struct KeyMirror {
    shared: Arc<Shared>,
    /// Ids written here whose record Redis has not taken yet. A set (DashSet): a key written twice
    /// while Redis is down needs sending once, as it is then.
    unsent: DashSet<String>,
}

impl AuthService {
    /// Mirrors the keys through `shared`: call before the service is shared, then spawn
    /// `run_key_mirror`.
    pub fn share_through(&mut self, shared: Arc<Shared>) {
        self.mirror = Some(KeyMirror {
            shared,
            unsent: DashSet::new(),
        });
    }

    /// Sends a key just written here to the other replicas (or keeps it for the loop to send).
    pub(super) async fn mirror_key(&self, rec: &KeyRecord) {
        let Some(m) = &self.mirror else { return };
        if let Err(e) = send(&m.shared, rec).await {
            tracing::warn!(error = %e, key = %rec.id, "key change not sent to the other replicas yet");
            m.unsent.insert(rec.id.clone());
        }
    }

    /// Pulls the other replicas' key changes for as long as the process runs (with Redis).
    pub async fn run_key_mirror(self: Arc<Self>) {
        let Some(m) = &self.mirror else { return };
        // (Redis's epoch of the table, the last change number applied); `None` until seeded.
        let mut seen: Option<(String, u64)> = None;
        let mut tick = tokio::time::interval(PULL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = self.mirror_round(m, &mut seen).await;
            m.shared.set_degraded(Resource::Keys, result.is_err());
        }
    }

    /// One round: seed Redis the first time (and after it lost data), send what waits, pull.
    async fn mirror_round(
        &self,
        m: &KeyMirror,
        seen: &mut Option<(String, u64)>,
    ) -> Result<(), SharedError> {
        let Some((epoch, mut after)) = seen.clone() else {
            *seen = Some((self.seed(m).await?, 0));
            return Ok(());
        };
        for id in m.unsent.iter().map(|i| i.clone()).collect::<Vec<_>>() {
            match self.store.key(&id) {
                Ok(Some(rec)) => send(&m.shared, &rec).await?,
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot read a key to send it"),
            }
            m.unsent.remove(&id);
        }
        loop {
            let changes = m.shared.changes(Table::Keys, after, PULL_BATCH).await?;
            if changes.epoch != epoch || changes.counter < after {
                tracing::warn!(
                    counter = changes.counter,
                    after,
                    "redis lost key changes (restarted or restored): seeding it again"
                );
                *seen = None;
                return Ok(());
            }
            let full = changes.records.len() == PULL_BATCH;
            for (n, id, json) in changes.records {
                if let Err(e) = self.apply_remote_key(m, &json) {
                    tracing::error!(error = %e, key = %id, "cannot apply a key change from another replica");
                }
                after = after.max(n);
            }
            *seen = Some((epoch.clone(), after));
            if !full {
                return Ok(());
            }
        }
    }

    /// Writes every local key Redis lacks (never over one it has); returns the table's epoch.
    async fn seed(&self, m: &KeyMirror) -> Result<String, SharedError> {
        let keys = self.store.keys().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the keys to seed redis");
            Vec::new()
        });
        let records: Vec<(String, String, bool)> = keys
            .iter()
            .filter_map(|k| {
                let json = serde_json::to_string(k).ok()?;
                Some((k.id.clone(), json, k.revoked_ms.is_some()))
            })
            .collect();
        let fresh = uuid::Uuid::new_v4().to_string();
        let (wrote, epoch) = m.shared.seed_records(Table::Keys, &fresh, &records).await?;
        if wrote > 0 {
            tracing::info!(keys = wrote, "seeded redis with keys it did not have");
        }
        Ok(epoch)
    }

    /// Takes another replica's version of a key, unless ours is revoked and theirs is not (then
    /// ours is sent back).
    fn apply_remote_key(&self, m: &KeyMirror, json: &str) -> Result<(), AuthError> {
        let mut remote: KeyRecord = serde_json::from_str(json)
            .map_err(|e| AuthError::Internal(format!("a mirrored key does not parse: {e}")))?;
        let _write = self.key_writes.lock();
        let local = self.store.key(&remote.id)?;
        if let Some(local) = &local {
            if local.revoked_ms.is_some() && remote.revoked_ms.is_none() {
                m.unsent.insert(local.id.clone());
                return Ok(());
            }
            remote.last_used_ms = remote.last_used_ms.max(local.last_used_ms);
            if *local == remote {
                return Ok(());
            }
        }
        self.store.put_key(&remote)?;
        self.recache_key(remote);
        Ok(())
    }
}

/// One key to Redis. A refusal means Redis holds it revoked: the next pull brings that here.
async fn send(shared: &Shared, rec: &KeyRecord) -> Result<(), SharedError> {
    let json = serde_json::to_string(rec).map_err(|_| SharedError::Answer("a key as JSON"))?;
    shared
        .put_record(Table::Keys, &rec.id, &json, rec.revoked_ms.is_some())
        .await
        .map(drop)
}
