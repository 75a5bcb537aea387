//! Identity mirrored across replicas through Redis (`state.backend: redis`): API keys, accounts,
//! sign-in families, refresh tokens and the audit log, one `records` table each. Every record
//! written here is sent to Redis (at once from the async operations, by the loop otherwise), and a
//! loop pulls the other replicas' writes into this replica's sled and caches every 200 ms: a key or
//! an account made on one replica works on all, and a revocation or a disabled account is refused
//! everywhere well within a second. Final writes stay final: a revoked key or family and a spent
//! refresh token are never brought back by an older or racing copy, from Redis or from a replica.
//!
//! Spending a refresh token is a claim in Redis (`claim_record`), not a mirrored write: of two
//! replicas presented the same token at once exactly one rotates it, and the other sees reuse. With
//! Redis unreachable a replica rotates on its own store (the sign-in keeps working; the risk, a
//! copied token spent once on each of two replicas during the outage, is the README's).
//!
//! While Redis is unreachable each replica goes on with the records it last knew; what it could not
//! send is sent once Redis answers again. A Redis that lost its data (restarted empty, or restored
//! from an old snapshot) is seeded back from every replica's records with set-if-absent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashSet;

use super::store::{Account, AuditEntry, Family, KeyRecord, RefreshRecord, Spend};
use super::{AuthError, AuthService};
use crate::shared::records::Table;
use crate::shared::{Resource, Shared, SharedError};

/// How often a replica pulls the others' changes: a revocation reaches it within this (plus a
/// round trip).
const PULL_EVERY: Duration = Duration::from_millis(200);
/// Changes read per round trip.
const PULL_BATCH: usize = 500;

/// The Redis side of the identity store.
pub(super) struct Mirror {
    pub(super) shared: Arc<Shared>,
    /// Records written here that Redis has not taken yet. A set: a record written twice before it
    /// is sent needs sending once, as it is then.
    unsent: DashSet<(Table, String)>,
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, AuthError> {
    serde_json::to_string(value).map_err(|e| AuthError::Internal(format!("a record as JSON: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(table: Table, raw: &str) -> Result<T, AuthError> {
    serde_json::from_str(raw).map_err(|e| {
        AuthError::Internal(format!(
            "a mirrored {} record does not parse: {e}",
            table.name()
        ))
    })
}

impl AuthService {
    /// Mirrors identity through `shared`: call before the service is shared, then spawn
    /// `run_mirror`.
    pub fn share_through(&mut self, shared: Arc<Shared>) {
        self.mirror = Some(Mirror {
            shared,
            unsent: DashSet::new(),
        });
    }

    /// The Redis client, with `state.backend: redis`.
    pub(crate) fn shared(&self) -> Option<&Arc<Shared>> {
        self.mirror.as_ref().map(|m| &m.shared)
    }

    /// Marks a record just written here for the other replicas; `send_queued` or the loop sends it.
    pub(super) fn queue(&self, table: Table, id: &str) {
        if let Some(m) = &self.mirror {
            m.unsent.insert((table, id.to_owned()));
        }
    }

    /// Sends a key just written here to the other replicas (or keeps it for the loop to send).
    pub(super) async fn mirror_key(&self, rec: &KeyRecord) {
        self.queue(Table::Keys, &rec.id);
        self.send_queued().await;
    }

    /// Sends what waits; what Redis does not take now stays queued for the loop.
    pub(super) async fn send_queued(&self) {
        let Some(m) = &self.mirror else { return };
        if let Err(e) = self.send_all(m).await {
            tracing::warn!(error = %e, "identity changes not sent to the other replicas yet");
        }
    }

    async fn send_all(&self, m: &Mirror) -> Result<(), SharedError> {
        let queued: Vec<(Table, String)> = m.unsent.iter().map(|e| e.clone()).collect();
        for (table, id) in queued {
            // Taken out before the read: a write after this read queues the record again.
            if m.unsent.remove(&(table, id.clone())).is_none() {
                continue;
            }
            let local = match self.local_record(table, &id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, table = table.name(), "cannot read a record to send it");
                    continue;
                }
            };
            let (json, is_final) = local;
            if let Err(e) = m.shared.put_record(table, &id, &json, is_final).await {
                m.unsent.insert((table, id));
                return Err(e);
            }
        }
        Ok(())
    }

    /// This replica's record `id` of `table` as JSON, and whether it is final.
    fn local_record(&self, table: Table, id: &str) -> Result<Option<(String, bool)>, AuthError> {
        Ok(match table {
            Table::Keys => match self.store.key(id)? {
                Some(r) => Some((json(&r)?, r.revoked_ms.is_some())),
                None => None,
            },
            Table::Accounts => match self.store.account(id)? {
                Some(a) => Some((json(&a)?, false)),
                None => None,
            },
            Table::Families => match self.store.family(id)? {
                Some(f) => Some((json(&f)?, f.revoked_ms.is_some())),
                None => None,
            },
            Table::Refresh => match self.store.refresh(id)? {
                Some(r) => Some((json(&r)?, r.spent_ms.is_some())),
                None => None,
            },
            // An entry never changes.
            Table::Audit => match self.store.audit_entry(id)? {
                Some(e) => Some((json(&e)?, true)),
                None => None,
            },
            // Not an identity table: `limits::shared_tiers` mirrors it.
            Table::TierOverrides => None,
        })
    }

    /// Every local record of `table`, for seeding: (id, JSON, final).
    fn local_table(&self, table: Table) -> Result<Vec<(String, String, bool)>, AuthError> {
        let mut out = Vec::new();
        match table {
            Table::Keys => {
                for r in self.store.keys()? {
                    out.push((r.id.clone(), json(&r)?, r.revoked_ms.is_some()));
                }
            }
            Table::Accounts => {
                for a in self.store.accounts()? {
                    out.push((a.id.clone(), json(&a)?, false));
                }
            }
            Table::Families => {
                for f in self.store.families()? {
                    out.push((f.id.clone(), json(&f)?, f.revoked_ms.is_some()));
                }
            }
            Table::Refresh => {
                for r in self.store.refreshes()? {
                    out.push((r.id.clone(), json(&r)?, r.spent_ms.is_some()));
                }
            }
            Table::Audit => {
                for e in self.store.audit_all()? {
                    out.push((e.id.clone(), json(&e)?, true));
                }
            }
            Table::TierOverrides => {}
        }
        Ok(out)
    }

    /// Pulls the other replicas' changes for as long as the process runs (with Redis).
    pub async fn run_mirror(self: Arc<Self>) {
        let Some(m) = &self.mirror else { return };
        // Per table: (Redis's epoch of the table, the last change number applied); absent until
        // seeded.
        let mut seen: HashMap<Table, (String, u64)> = HashMap::new();
        let mut tick = tokio::time::interval(PULL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let sent = self.send_all(m).await;
            let mut failed: HashMap<Resource, bool> = HashMap::new();
            for table in Table::ALL {
                let result = self.mirror_round(m, table, &mut seen).await;
                *failed.entry(table.resource()).or_default() |= result.is_err() || sent.is_err();
            }
            for (resource, failed) in failed {
                m.shared.set_degraded(resource, failed);
            }
        }
    }

    /// One round of one table: seed Redis the first time (and after it lost data), pull.
    async fn mirror_round(
        &self,
        m: &Mirror,
        table: Table,
        seen: &mut HashMap<Table, (String, u64)>,
    ) -> Result<(), SharedError> {
        let Some((epoch, mut after)) = seen.get(&table).cloned() else {
            let epoch = self.seed(m, table).await?;
            seen.insert(table, (epoch, 0));
            return Ok(());
        };
        loop {
            let changes = m.shared.changes(table, after, PULL_BATCH).await?;
            if changes.epoch != epoch || changes.counter < after {
                tracing::warn!(
                    table = table.name(),
                    counter = changes.counter,
                    after,
                    "redis lost changes (restarted or restored): seeding it again"
                );
                seen.remove(&table);
                return Ok(());
            }
            let full = changes.records.len() == PULL_BATCH;
            for (n, id, json) in changes.records {
                if let Err(e) = self.apply_remote(table, &json) {
                    tracing::error!(error = %e, table = table.name(), id = %id, "cannot apply a change from another replica");
                }
                after = after.max(n);
            }
            seen.insert(table, (epoch.clone(), after));
            if !full {
                return Ok(());
            }
        }
    }

    /// Writes every local record of `table` Redis lacks (never over one it has); returns the
    /// table's epoch.
    async fn seed(&self, m: &Mirror, table: Table) -> Result<String, SharedError> {
        let records = self.local_table(table).unwrap_or_else(|e| {
            tracing::error!(error = %e, table = table.name(), "cannot read the records to seed redis");
            Vec::new()
        });
        let fresh = uuid::Uuid::new_v4().to_string();
        let (wrote, epoch) = m.shared.seed_records(table, &fresh, &records).await?;
        if table == Table::Accounts {
            let emails: Vec<(String, String)> = self
                .store
                .accounts()
                .unwrap_or_default()
                .into_iter()
                .map(|a| (a.email, a.id))
                .collect();
            m.shared.seed_emails(&emails).await?;
        }
        if wrote > 0 {
            tracing::info!(
                table = table.name(),
                records = wrote,
                "seeded redis with records it did not have"
            );
        }
        Ok(epoch)
    }

    /// Takes another replica's version of a record, merged with ours (see each table's rule).
    fn apply_remote(&self, table: Table, raw: &str) -> Result<(), AuthError> {
        match table {
            Table::Keys => self.apply_key(parse(table, raw)?),
            Table::Accounts => self.apply_account(parse(table, raw)?),
            Table::Families => self.apply_family(parse(table, raw)?),
            Table::Refresh => self.apply_refresh(parse(table, raw)?),
            Table::Audit => {
                let entry: AuditEntry = parse(table, raw)?;
                self.store.put_mirrored_audit(&entry)?;
                Ok(())
            }
            Table::TierOverrides => Ok(()),
        }
    }

    /// A key: theirs, unless ours is revoked and theirs is not (then ours is sent back).
    fn apply_key(&self, mut remote: KeyRecord) -> Result<(), AuthError> {
        let _write = self.key_writes.lock();
        let local = self.store.key(&remote.id)?;
        if let Some(local) = &local {
            if local.revoked_ms.is_some() && remote.revoked_ms.is_none() {
                self.queue(Table::Keys, &local.id);
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

    /// An account: the later change wins (ours is sent back when it is the later one).
    fn apply_account(&self, remote: Account) -> Result<(), AuthError> {
        let _write = self.account_writes.lock();
        if let Some(local) = self.store.account(&remote.id)? {
            if local == remote {
                return Ok(());
            }
            if local.updated_ms > remote.updated_ms {
                self.queue(Table::Accounts, &local.id);
                return Ok(());
            }
        }
        self.store.put_mirrored_account(&remote)?;
        self.recache_account(remote);
        Ok(())
    }

    /// A family: revoked wins, the later expiry wins.
    fn apply_family(&self, mut remote: Family) -> Result<(), AuthError> {
        if let Some(local) = self.store.family(&remote.id)? {
            if local.revoked_ms.is_some() && remote.revoked_ms.is_none() {
                self.queue(Table::Families, &local.id);
                return Ok(());
            }
            remote.expires_ms = remote.expires_ms.max(local.expires_ms);
            if local == remote {
                return Ok(());
            }
        }
        let revoked = remote.revoked_ms.is_some();
        self.store.put_family(&remote)?;
        self.families.insert(remote.id, revoked);
        Ok(())
    }

    /// A refresh token: spent wins.
    fn apply_refresh(&self, remote: RefreshRecord) -> Result<(), AuthError> {
        if let Some(local) = self.store.refresh(&remote.id)? {
            if local.spent_ms.is_some() && remote.spent_ms.is_none() {
                self.queue(Table::Refresh, &local.id);
                return Ok(());
            }
            if local == remote {
                return Ok(());
            }
        }
        self.store.put_refresh(&remote)?;
        Ok(())
    }

    /// Whether `email` may be given to the new account `id`: across the fleet with Redis (a claim,
    /// so of two replicas creating one email at once exactly one succeeds), always without. With
    /// Redis unavailable the local check alone decides (the README's risk).
    pub(super) async fn email_free(&self, email: &str, id: &str) -> bool {
        let Some(m) = &self.mirror else { return true };
        match m.shared.claim_email(email, id).await {
            Ok(owner) => owner == id,
            Err(e) => {
                tracing::warn!(error = %e, "email checked on this replica only: redis unavailable");
                true
            }
        }
    }

    /// Removes records this replica swept (expired before `now`) from Redis too, unless Redis holds
    /// a later version that has not expired (a refresh on another replica pushed a family on).
    pub(super) async fn forget_expired(&self, table: Table, ids: &[String], now: u64) {
        let Some(m) = &self.mirror else { return };
        for batch in ids.chunks(200) {
            if let Err(e) = m.shared.forget_expired(table, batch, now).await {
                tracing::warn!(error = %e, table = table.name(), "expired records left in redis until the next sweep");
                return;
            }
        }
    }

    /// Brings record `id` of `table` from Redis when this replica lacks it (made on another replica
    /// in the last pull period). Without Redis, or when Redis lacks it too, nothing changes.
    pub(super) async fn fetch_missing(&self, table: Table, id: &str) -> Result<(), AuthError> {
        let Some(m) = &self.mirror else { return Ok(()) };
        if self.local_record(table, id)?.is_some() {
            return Ok(());
        }
        match m.shared.record(table, id).await {
            Ok(Some(raw)) => self.apply_remote(table, &raw),
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, table = table.name(), "cannot look a record up in redis");
                Ok(())
            }
        }
    }

    /// Spends refresh token `id` if its hash is `hash` and it is live at `now`: across the fleet
    /// with Redis (a claim, so of two replicas exactly one spends it), on this store without.
    pub(super) async fn spend_refresh(
        &self,
        id: &str,
        hash: &str,
        now: u64,
    ) -> Result<Spend, AuthError> {
        let check = |r: &RefreshRecord| super::digest_eq(&r.hash, hash) && r.expires_ms > now;
        let Some(m) = &self.mirror else {
            return Ok(self.store.spend_refresh(id, now, check)?);
        };
        self.fetch_missing(Table::Refresh, id).await?;
        let Some(rec) = self.store.refresh(id)?.filter(|r| check(r)) else {
            return Ok(Spend::Unknown);
        };
        // What a sign-in on another replica wrote a moment ago, so a rotation here finds it.
        self.fetch_missing(Table::Families, &rec.family).await?;
        if self.store.account(&rec.account)?.is_none() {
            self.fetch_missing(Table::Accounts, &rec.account).await?;
            self.accounts.remove(&rec.account);
        }
        if rec.spent_ms.is_some() {
            return Ok(Spend::AlreadySpent(rec));
        }
        let spent = RefreshRecord {
            spent_ms: Some(now),
            ..rec.clone()
        };
        match m
            .shared
            .claim_record(Table::Refresh, id, &json(&spent)?)
            .await
        {
            Ok(true) => Ok(self.store.spend_refresh(id, now, check)?),
            Ok(false) => {
                // Spent on another replica: ours says so too from now on.
                let _ = self.store.spend_refresh(id, now, check)?;
                Ok(Spend::AlreadySpent(rec))
            }
            Err(e) => {
                tracing::warn!(error = %e, "refresh token rotated on this replica only: redis unavailable");
                let spend = self.store.spend_refresh(id, now, check)?;
                self.queue(Table::Refresh, id);
                Ok(spend)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use switchyard_actors::store::Store;

    use super::*;
    use crate::auth::store::Role;

    fn service() -> (AuthService, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::load_str(Path::new("t.yaml"), "").unwrap();
        let store = Store::temporary().unwrap();
        let auth = AuthService::new(&store, dir.path(), &config.auth).unwrap();
        (auth, dir)
    }

    fn account(updated_ms: u64, disabled: bool) -> Account {
        Account {
            id: "acc_1".into(),
            email: "a@b".into(),
            password_hash: "h".into(),
            role: Role::User,
            tier: None,
            scopes: vec![],
            disabled,
            created_ms: 1,
            updated_ms,
        }
    }

    fn family(expires_ms: u64, revoked_ms: Option<u64>) -> Family {
        Family {
            id: "fam".into(),
            account: "acc_1".into(),
            created_ms: 1,
            expires_ms,
            revoked_ms,
            revoked_reason: None,
        }
    }

    #[test]
    fn a_later_account_change_wins_and_is_found_by_email() {
        let (auth, _dir) = service();
        auth.apply_account(account(5, true)).unwrap();
        assert!(
            auth.cached_account("acc_1")
                .unwrap()
                .unwrap()
                .account
                .disabled
        );
        // An older copy does not undo the change.
        auth.apply_account(account(3, false)).unwrap();
        assert!(auth.store.account("acc_1").unwrap().unwrap().disabled);
        auth.apply_account(account(9, false)).unwrap();
        assert!(
            !auth
                .cached_account("acc_1")
                .unwrap()
                .unwrap()
                .account
                .disabled
        );
        assert_eq!(
            auth.store
                .account_by_email("a@b")
                .unwrap()
                .unwrap()
                .updated_ms,
            9
        );
    }

    #[test]
    fn a_revoked_family_stays_revoked_and_keeps_the_later_expiry() {
        let (auth, _dir) = service();
        // Read as revoked while unknown; the mirrored family replaces that.
        assert!(auth.family_revoked("fam").unwrap());
        auth.apply_family(family(10, None)).unwrap();
        assert!(!auth.family_revoked("fam").unwrap());
        auth.apply_family(family(20, Some(7))).unwrap();
        assert!(auth.family_revoked("fam").unwrap());
        auth.apply_family(family(30, None)).unwrap();
        let kept = auth.store.family("fam").unwrap().unwrap();
        assert_eq!((kept.revoked_ms, kept.expires_ms), (Some(7), 20));
    }

    #[test]
    fn a_spent_refresh_token_stays_spent() {
        let (auth, _dir) = service();
        let rec = RefreshRecord {
            id: "r".into(),
            hash: "h".into(),
            family: "fam".into(),
            account: "acc_1".into(),
            created_ms: 1,
            expires_ms: 10,
            spent_ms: Some(4),
        };
        auth.apply_refresh(rec.clone()).unwrap();
        auth.apply_refresh(RefreshRecord {
            spent_ms: None,
            ..rec
        })
        .unwrap();
        assert_eq!(auth.store.refresh("r").unwrap().unwrap().spent_ms, Some(4));
    }
}
