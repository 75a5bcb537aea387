//! Tables of records every replica mirrors (API keys, accounts, sign-in families, refresh tokens
//! and the audit log): each write goes to Redis with a change number,
//! and each replica pulls the changes after the last number it saw, a few times a second.
//!
//! Per table, three keys: a hash (id -> the record's JSON), a sorted set (id scored by the number of
//! its last change: one entry per id, so the log never outgrows the table) and the counter. A record
//! written as *final* (a revoked key) stays final: a later write without the mark is refused, so a
//! rotation racing a revocation on another replica cannot bring the key back.
//!
//! Redis lost data (restarted empty, or restored from an old snapshot) when the table's epoch is not
//! the one a replica saw, or its counter is below the last number the replica saw: the replica then
//! seeds its own records back with set-if-absent, never overwriting what is there, and reads the
//! whole table again.

use std::sync::LazyLock;

use super::{Resource, Shared, SharedError};

/// KEYS: hash, log, counter, finals. ARGV: id, JSON, final (1/0). Returns the change number, or 0
/// when the record is final already and this write is not.
const PUT: &str = r"
if ARGV[3] ~= '1' and redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return 0 end
if ARGV[3] == '1' then redis.call('SADD', KEYS[4], ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local n = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], n, ARGV[1])
return n
";

/// KEYS as `PUT`, then the table's epoch. ARGV: a new epoch, then (id, JSON, final) triples. Writes
/// only the ids the table lacks, and the epoch if it has none; returns {how many it wrote, epoch}.
const SEED: &str = r"
redis.call('SET', KEYS[5], ARGV[1], 'NX')
local wrote = 0
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    if ARGV[i + 2] == '1' then redis.call('SADD', KEYS[4], ARGV[i]) end
    local n = redis.call('INCR', KEYS[3])
    redis.call('ZADD', KEYS[2], n, ARGV[i])
    wrote = wrote + 1
  end
end
return {tostring(wrote), redis.call('GET', KEYS[5])}
";

/// KEYS: hash, log, counter, finals, epoch. ARGV: after, at most. Returns {counter, epoch (or ''),
/// then (number, id, JSON) for each change after `after`, oldest first}, all as strings.
const CHANGES: &str = r"
local out = {tostring(tonumber(redis.call('GET', KEYS[3]) or '0')), redis.call('GET', KEYS[5]) or ''}
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #ids, 2 do
  out[#out + 1] = ids[i + 1]
  out[#out + 1] = ids[i]
  out[#out + 1] = redis.call('HGET', KEYS[1], ids[i]) or ''
end
return out
";

/// KEYS as `PUT`. ARGV: id, JSON. Writes the record as final unless it is final already: of two
/// claims of one id (a refresh token presented to two replicas at once) exactly one gets a change
/// number, the other 0.
const CLAIM: &str = r"
if redis.call('SADD', KEYS[4], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local n = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], n, ARGV[1])
return n
";

/// KEYS as `PUT`. ARGV: a time, then ids. Removes each record whose JSON's `expires_ms` is before
/// the time (a record without one, or a later one, stays); returns how many it removed.
const FORGET: &str = r"
local removed = 0
for i = 2, #ARGV do
  local json = redis.call('HGET', KEYS[1], ARGV[i])
  if json then
    local ok, rec = pcall(cjson.decode, json)
    if ok and type(rec) == 'table' and type(rec.expires_ms) == 'number' and rec.expires_ms < tonumber(ARGV[1]) then
      redis.call('HDEL', KEYS[1], ARGV[i])
      redis.call('ZREM', KEYS[2], ARGV[i])
      redis.call('SREM', KEYS[4], ARGV[i])
      removed = removed + 1
    end
  end
end
return removed
";

static FORGET_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FORGET));
static CLAIM_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM));
static PUT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUT));
static SEED_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SEED));
static CHANGES_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CHANGES));

/// The changes a replica pulled.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The table's change counter as Redis has it now.
    pub counter: u64,
    /// The table's epoch: set by the first seed of an empty Redis, so a replica can tell a Redis
    /// that lost its data (a new epoch, or none) from the one it read before.
    pub epoch: String,
    /// (change number, id, JSON), oldest first.
    pub records: Vec<(u64, String, String)>,
}

impl Shared {
    /// The keys of `table`, under one hash tag so one script may touch them all on a cluster too.
    fn table_keys(&self, table: Table) -> [String; 5] {
        ["rec", "log", "seq", "final", "epoch"]
            .map(|part| self.key(&format!("{{tbl:{}}}:{part}", table.name())))
    }

    /// Writes record `id` of `table`; `Ok(false)` when a final record refused a non-final write.
    pub async fn put_record(
        &self,
        table: Table,
        id: &str,
        json: &str,
        is_final: bool,
    ) -> Result<bool, SharedError> {
        let keys = self.table_keys(table);
        let n: u64 = self
            .call(table.resource(), |mut c| async move {
                let mut call = PUT_SCRIPT.prepare_invoke();
                for k in &keys[..4] {
                    call.key(k);
                }
                call.arg(id).arg(json).arg(u8::from(is_final));
                call.invoke_async(&mut c).await
            })
            .await?;
        Ok(n > 0)
    }

    /// Makes record `id` of `table` final with `json`, atomically: `Ok(true)` for the one caller that
    /// did, `Ok(false)` when it was final already (spent elsewhere).
    pub async fn claim_record(
        &self,
        table: Table,
        id: &str,
        json: &str,
    ) -> Result<bool, SharedError> {
        let keys = self.table_keys(table);
        let n: u64 = self
            .call(table.resource(), |mut c| async move {
                let mut call = CLAIM_SCRIPT.prepare_invoke();
                for k in &keys[..4] {
                    call.key(k);
                }
                call.arg(id).arg(json);
                call.invoke_async(&mut c).await
            })
            .await?;
        Ok(n > 0)
    }

    /// Removes the records `ids` of `table` that expired before `now_ms` (their JSON's
    /// `expires_ms`), so swept sign-in sessions do not stay in Redis forever; how many it removed.
    pub async fn forget_expired(
        &self,
        table: Table,
        ids: &[String],
        now_ms: u64,
    ) -> Result<u64, SharedError> {
        let keys = self.table_keys(table);
        self.call(table.resource(), |mut c| async move {
            let mut call = FORGET_SCRIPT.prepare_invoke();
            for k in &keys[..4] {
                call.key(k);
            }
            call.arg(now_ms);
            for id in ids {
                call.arg(id);
            }
            call.invoke_async(&mut c).await
        })
        .await
    }

    /// `{tbl:accounts}:email:<email>`: which account an email belongs to, across the fleet.
    fn email_key(&self, email: &str) -> String {
        self.key(&format!("{{tbl:{}}}:email:{email}", Table::Accounts.name()))
    }

    /// Claims `email` for account `id` unless another account has it; returns the owner (`id`
    /// when the claim is ours or was already).
    pub async fn claim_email(&self, email: &str, id: &str) -> Result<String, SharedError> {
        let key = self.email_key(email);
        let (_, owner): (Option<String>, String) = self
            .call(Resource::Accounts, |mut c| async move {
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&key)
                    .arg(id)
                    .arg("NX")
                    .cmd("GET")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(owner)
    }

    /// Claims the emails of existing accounts (email, id) that Redis lacks (seeding), one round
    /// trip per 200.
    pub async fn seed_emails(&self, accounts: &[(String, String)]) -> Result<(), SharedError> {
        for batch in accounts.chunks(200) {
            let mut pipe = redis::pipe();
            for (email, id) in batch {
                pipe.cmd("SET")
                    .arg(self.email_key(email))
                    .arg(id)
                    .arg("NX")
                    .ignore();
            }
            self.call(Resource::Accounts, |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await?;
        }
        Ok(())
    }

    /// Record `id` of `table` as Redis has it now, for a record this replica has not pulled yet.
    pub async fn record(&self, table: Table, id: &str) -> Result<Option<String>, SharedError> {
        let [hash, ..] = self.table_keys(table);
        self.call(table.resource(), |mut c| async move {
            redis::cmd("HGET")
                .arg(&hash)
                .arg(id)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Writes the records the table lacks (set-if-absent: a replica's copy never overwrites
    /// Redis's), and gives an empty Redis the epoch `fresh`; returns how many records were missing
    /// and the table's epoch.
    pub async fn seed_records(
        &self,
        table: Table,
        fresh: &str,
        records: &[(String, String, bool)],
    ) -> Result<(u64, String), SharedError> {
        let mut wrote = 0;
        let mut epoch = String::new();
        // Batches, so one script call stays short; an empty table still sets its epoch.
        let batches: Vec<&[(String, String, bool)]> = if records.is_empty() {
            vec![&[]]
        } else {
            records.chunks(200).collect()
        };
        for batch in batches {
            let keys = self.table_keys(table);
            let answer: Vec<String> = self
                .call(table.resource(), |mut c| async move {
                    let mut call = SEED_SCRIPT.prepare_invoke();
                    for k in &keys {
                        call.key(k);
                    }
                    call.arg(fresh);
                    for (id, json, is_final) in batch {
                        call.arg(id).arg(json).arg(u8::from(*is_final));
                    }
                    call.invoke_async(&mut c).await
                })
                .await?;
            let [n, e] = answer.as_slice() else {
                return Err(SharedError::Answer("the seed's pair"));
            };
            wrote += n
                .parse::<u64>()
                .map_err(|_| SharedError::Answer("the seed's count"))?;
            epoch.clone_from(e);
        }
        Ok((wrote, epoch))
    }

    /// The changes of `table` after change number `after`, at most `max`.
    pub async fn changes(
        &self,
        table: Table,
        after: u64,
        max: usize,
    ) -> Result<Changes, SharedError> {
        let keys = self.table_keys(table);
        let raw: Vec<String> = self
            .call(table.resource(), |mut c| async move {
                let mut call = CHANGES_SCRIPT.prepare_invoke();
                for k in &keys {
                    call.key(k);
                }
                call.arg(after).arg(max);
                call.invoke_async(&mut c).await
            })
            .await?;
        let bad = || SharedError::Answer("the change log's list");
        let [counter, epoch, rest @ ..] = raw.as_slice() else {
            return Err(bad());
        };
        let mut changes = Changes {
            counter: counter.parse().map_err(|_| bad())?,
            epoch: epoch.clone(),
            records: Vec::with_capacity(rest.len() / 3),
        };
        for triple in rest.chunks(3) {
            let [n, id, json] = triple else {
                return Err(bad());
            };
            // A score comes back as Redis formats a double; change numbers are integers.
            let n = n.parse::<f64>().map_err(|_| bad())?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            changes.records.push((n as u64, id.clone(), json.clone()));
        }
        Ok(changes)
    }
}

/// A mirrored table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Gateway API keys (`auth`).
    Keys,
    /// Accounts, their password hashes included (`auth`).
    Accounts,
    /// Sign-in families (`auth`); a revoked one is final.
    Families,
    /// Refresh tokens (`auth`); a spent one is final, and spending is a claim (`claim_record`).
    Refresh,
    /// The audit log (`audit`); entries never change.
    Audit,
    /// Tier overrides (`limits::shared_tiers`, not the identity mirror): account -> tier or none.
    TierOverrides,
}

impl Table {
    /// Every table of the identity mirror (`auth`), in the order a replica seeds and pulls them:
    /// accounts before the keys and families that name them. (`TierOverrides` has its own loop.)
    pub const ALL: [Table; 5] = [
        Table::Accounts,
        Table::Keys,
        Table::Families,
        Table::Refresh,
        Table::Audit,
    ];

    /// The name in Redis keys and logs.
    pub fn name(self) -> &'static str {
        match self {
            Table::Keys => "keys",
            Table::Accounts => "accounts",
            Table::Families => "families",
            Table::Refresh => "refresh",
            Table::Audit => "audit",
            Table::TierOverrides => "tiers",
        }
    }

    /// The metrics label: the sign-in tables count as accounts.
    pub fn resource(self) -> Resource {
        match self {
            Table::Keys => Resource::Keys,
            Table::Accounts | Table::Families | Table::Refresh => Resource::Accounts,
            Table::Audit => Resource::Audit,
            Table::TierOverrides => Resource::Tiers,
        }
    }
}
