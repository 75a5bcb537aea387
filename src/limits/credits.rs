//! The credit ledger: one balance per account in sled, and a transaction record for every movement.
//!
//! Amounts are whole micro-USD (`u64`/`i64`), so sums are exact. Every movement runs under one mutex:
//! read the balance, decide, then write one transaction record that carries the balance after it. A
//! balance therefore never goes below zero, however many requests race, and the transactions of an
//! account always sum to its balance.
//!
//! The balance on disk *is* the newest transaction's `balance_micros`. Balances and granted months are
//! cached in memory after an account's first movement, so the request path does no sled reads.
//! Transactions decided on the request path are queued and written in batches (`write_pending`), one
//! sled value per account per batch holding its transactions as JSON Lines, in one atomic sled batch
//! with the leases they open and close: the usage recorder writes them just before the usage records
//! that follow them, so the flush that makes a request's usage durable covers its settlement too.
//! Batches are written in the order they were decided, and sled recovers a prefix of its log, so a
//! crash never keeps a transaction without the ones before it, nor a reserve without its lease; a
//! reservation lost in a crash is simply never taken. Grants and adjustments are written at once.
//! (Stores written before this layout also have a `v1/balance/` key per account; it is read only for
//! an account that has no transaction.)
// Raw sled is allowed here: the ledger's store file (see clippy.toml).
#![allow(clippy::disallowed_types)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchyard_actors::store::{now_ms, Store, StoreError};

use self::encoding::{
    batch_key, encode, encode_lease, hex, push_decimal, tx_id, LeaseFields, Meta, TxFields,
};
use self::sequence::{first_seq, newest_seq_under};
#[cfg(test)]
use self::sequence::{newest_stored_seq, seq_of};
use super::journal::Journal;

mod encoding;
mod sequence;
use crate::shared::credits::Mark;

/// Tier overrides set by the admin API or the billing webhook, beside the ledger.
const TIER_PREFIX: &str = "v1/tier/";
/// Seen billing event ids, kept so a replay is refused.
const EVENT_PREFIX: &str = "v1/webhook/";
/// Open reservations: `v1/lease/<reserve transaction id>` -> `Lease`, stored by the batch after the
/// one that wrote the reserve (which keeps it in `FRESH_LEASES_PREFIX`) and removed by the one that
/// writes its settle or release (no key at all for a reservation closed by then); what a crash leaves
/// here is released once its lease has run out.
const LEASE_PREFIX: &str = "v1/lease/";
/// The leases of reserves still open when their batch was written, one value a process:
/// `v1/fresh-leases/<process id>` -> the leases as `v1/lease/` holds them, as JSON Lines. Every batch
/// rewrites (or removes) its process's value and gives a lease still open since the batch before its
/// own `v1/lease/` key; at start, what earlier processes left here moves to `v1/lease/`.
const FRESH_LEASES_PREFIX: &str = "v1/fresh-leases/";

/// Threshold notices sent: `v1/notice/<hex account>/<month>/<threshold in permille>`.
const NOTICE_PREFIX: &str = "v1/notice/";

/// With `state.backend: redis`, the high-water mark of each account's credits in Redis as this
/// replica last saw it: `v1/mark/<hex account>` -> epoch, seq, balance (big-endian u64s).
const MARK_PREFIX: &str = "v1/mark/";
/// The newest reseed epoch this replica has seen (a mark of an older epoch is superseded).
const EPOCH_KEY: &str = "v1/mark-epoch";

/// A reservation as stored until it is settled or released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The `reserve` transaction's id.
    pub tx: String,
    pub account: String,
    pub micros: u64,
    pub request_id: String,
    pub model: String,
    pub created_ms: u64,
    /// `created_ms` + the lease configured when it was made.
    pub expires_ms: u64,
    /// The process that made it: a running process only releases leases of processes before it.
    pub boot: String,
}

/// The sled tree holding balances, transactions, monthly grants and tier overrides.
pub const TREE: &str = "billing";

/// One credit movement. `amount_micros` is signed: grants, top-ups, refunds are positive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub ts_ms: u64,
    pub account: String,
    /// `grant` (monthly credits), `adjust` (admin or webhook), `reserve`, `settle`, `release`,
    /// `lease_expired` (a reservation a stopped process left open, given back after its lease).
    pub kind: String,
    pub amount_micros: i64,
    /// The balance right after this movement.
    pub balance_micros: u64,
    pub request_id: Option<String>,
    pub model: Option<String>,
    pub note: Option<String>,
    /// For `settle`, `release` and `lease_expired`: the `reserve` transaction it closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
}

/// Who decided a reservation, and so who settles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This process's ledger.
    Local,
    /// Redis, for the whole fleet (`state.backend: redis`).
    Shared,
    /// This replica alone, from its allowance while Redis was away: charged into Redis once back.
    Allowance,
}

/// Credits set aside for one request until it is settled or released.
#[derive(Debug)]
pub struct Reservation {
    pub source: Source,
    pub account: String,
    pub micros: u64,
    pub request_id: String,
    pub model: String,
    /// The `reserve` transaction's id (its lease's key).
    pub tx: String,
}

/// Why credits could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the balance of {balance} micro-USD cannot cover {needed}")]
    Insufficient { balance: u64, needed: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for LedgerError {
    fn from(e: sled::Error) -> Self {
        LedgerError::Store(StoreError::Sled(e))
    }
}

impl From<serde_json::Error> for LedgerError {
    fn from(e: serde_json::Error) -> Self {
        LedgerError::Store(StoreError::Encode(e))
    }
}

/// Balances and their transaction log.
pub struct Ledger {
    tree: sled::Tree,
    /// The cached state of every account touched since start, under one lock for every movement: a
    /// movement is a hash lookup and one sled insert, and a single lock is the simplest way to make
    /// read-decide-write exact across accounts and across the grant check. foldhash (hashbrown's),
    /// not SipHash: looked up twice a movement, by ids the operator made.
    accounts: Mutex<hashbrown::HashMap<String, AccountState>>,
    /// Transactions decided but not yet written, in the order they were decided. Lock order:
    /// `accounts`, then `write_order`, then `unwritten`.
    unwritten: Mutex<Vec<Queued>>,
    /// Held while a batch is written, so batches reach the store in the order they were decided;
    /// it guards the fresh leases the last batch stored (see `write_batch`).
    write_order: Mutex<FreshLeases>,
    /// This process's fresh-lease key: `FRESH_LEASES_PREFIX` + `boot`.
    fresh_key: Vec<u8>,
    /// The next transaction's sequence: it orders transactions decided within the same millisecond,
    /// makes their ids unique, and is what replay compares (`newest_seq`) and what `written_through`
    /// counts. An atomic, not sled's `generate_id`: that takes sled's global concurrency-control lock,
    /// which the recorder's and this ledger's `apply_batch` hold for writing, and it was drawn under
    /// `accounts`, so a metered request waited behind a sled batch and the others behind it. Drawn
    /// under `accounts` still, so sequence order is decision order (the order of `unwritten` and of
    /// the journal's staged lines). It starts above everything an earlier run can have left (see
    /// `first_seq`), so sequences keep growing across restarts and kill -9.
    next_seq: AtomicU64,
    /// The store, whose high-water mark counts the transactions written.
    store: Store,
    /// This process's id on its leases.
    boot: String,
    /// The Redis high-water marks read or written since start (account -> epoch, seq, balance), and
    /// the newest epoch: see `MARK_PREFIX`.
    marks: Mutex<HashMap<String, (Mark, u64)>>,
    epoch: AtomicU64,
    /// Where movements are staged so that the usage record written after them carries them to the
    /// journal (set once at start; unset in fsync mode and in tests).
    journal: OnceLock<Arc<Journal>>,
    /// The highest sequence of a transaction given to the store (the journal's checkpoint deletes a
    /// segment once a flush covers it). Batches are written in decision order, so every transaction
    /// decided before it has been given too.
    written_through: AtomicU64,
}

/// A transaction decided but not yet written: its JSON line, encoded once (the journal stages the same
/// bytes), and what its batch does to the leases.
#[derive(Debug)]
struct Queued {
    seq: u64,
    /// The transaction's id.
    id: String,
    account: String,
    ts_ms: u64,
    line: Vec<u8>,
    lease: LeaseChange,
}

/// What writing a transaction does to the open reservations' leases.
#[derive(Debug)]
enum LeaseChange {
    None,
    /// A `reserve`: its lease is stored in the same batch (so a crash keeps both or neither), unless
    /// the same batch also closes it.
    Open {
        micros: u64,
        request_id: String,
        model: String,
        expires_ms: u64,
    },
    /// A settle, release or `lease_expired`: the lease of this `reserve` goes in the same batch.
    Close(String),
}

impl Queued {
    /// A transaction read back (replayed from the journal), with serde_json: this path runs at start
    /// only, and serde_json escapes whatever a hand-edited journal holds (the hand encoder takes the
    /// ids and kinds the request path makes; its bytes are serde_json's, tested).
    fn new(seq: u64, tx: &Transaction, lease: LeaseChange) -> Result<Queued, serde_json::Error> {
        Ok(Queued {
            seq,
            id: tx.id.clone(),
            account: tx.account.clone(),
            ts_ms: tx.ts_ms,
            line: serde_json::to_vec(tx)?,
            lease,
        })
    }
}

/// A movement as decided: what the request path needs of it (the whole `Transaction` is built only
/// where a caller returns it).
struct Decided {
    id: String,
    ts_ms: u64,
    amount_micros: i64,
    balance_micros: u64,
}

impl Decided {
    fn into_transaction(
        self,
        account: &str,
        kind: &str,
        (request_id, model, note): Meta<'_>,
        reservation: Option<&str>,
    ) -> Transaction {
        Transaction {
            id: self.id,
            ts_ms: self.ts_ms,
            account: account.to_owned(),
            kind: kind.to_owned(),
            amount_micros: self.amount_micros,
            balance_micros: self.balance_micros,
            request_id: request_id.map(str::to_owned),
            model: model.map(str::to_owned),
            note: note.map(str::to_owned),
            reservation: reservation.map(str::to_owned),
        }
    }
}

/// The leases of the reserves the last batch wrote that were still open then: stored together in
/// this process's fresh-lease value, and each given its own key by the next batch if still open.
#[derive(Debug, Default)]
struct FreshLeases {
    entries: Vec<FreshLease>,
    /// Whether the store holds this process's fresh-lease value (so an empty batch removes it).
    stored: bool,
}

/// One reserve's lease, encoded as its own key would hold it.
#[derive(Debug)]
struct FreshLease {
    id: String,
    line: Vec<u8>,
}

/// The queued transactions grouped by account: accounts in order of first appearance, each account's
/// transactions in decision order.
fn by_account(queued: &[Queued]) -> Vec<Vec<&Queued>> {
    let mut groups: Vec<Vec<&Queued>> = Vec::new();
    let mut slot_of: hashbrown::HashMap<&str, usize> = hashbrown::HashMap::new();
    for q in queued {
        // One account (what a quiet batch holds): no map.
        if slot_of.is_empty() {
            match groups.first_mut() {
                None => {
                    groups.push(vec![q]);
                    continue;
                }
                Some(g) if g[0].account == q.account => {
                    g.push(q);
                    continue;
                }
                Some(g) => {
                    slot_of.insert(g[0].account.as_str(), 0);
                }
            }
        }
        let next = groups.len();
        let slot = *slot_of.entry(q.account.as_str()).or_insert(next);
        if slot == next {
            groups.push(Vec::new());
        }
        groups[slot].push(q);
    }
    groups
}

/// Gives every fresh lease an earlier process left its own `v1/lease/` key, in one atomic batch, so
/// that what happens to leases from here on (a replayed settle removing one, `release_expired`) finds
/// them there. The values are sled's newest: whatever batch they came with, the reserves they name
/// were still open at the last batch that reached disk.
fn adopt_fresh_leases(tree: &sled::Tree) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let mut found = false;
    for item in tree.scan_prefix(FRESH_LEASES_PREFIX) {
        let (key, value) = item?;
        for line in value.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let lease: Lease =
                serde_json::from_slice(line).map_err(|source| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    source,
                })?;
            batch.insert(lease_key(&lease.tx), line);
        }
        batch.remove(key);
        found = true;
    }
    if found {
        tree.apply_batch(batch)?;
    }
    Ok(())
}

fn lease_key(reserve_tx: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(LEASE_PREFIX.len() + reserve_tx.len());
    key.extend_from_slice(LEASE_PREFIX.as_bytes());
    key.extend_from_slice(reserve_tx.as_bytes());
    key
}

/// What the ledger knows of one account, as on disk.
#[derive(Debug, Clone, Copy)]
struct AccountState {
    balance: u64,
    /// The UTC month (see `month_index`) of the last monthly grant.
    granted: Option<u32>,
}

fn balance_key(account: &str) -> String {
    format!("v1/balance/{}", hex(account))
}

fn grant_key(account: &str) -> String {
    format!("v1/grant/{}", hex(account))
}

/// Transactions, in batches: `v1/tx/<hex account>/<ts>/<seq>`.
const TX_PREFIX: &str = "v1/tx/";

/// At most this many transactions in one stored value, the store's cap on usage records, for the same
/// reason: sled keeps recently written values resident, and values of a whole batch (~50 transactions
/// of ~250 bytes at 5,000 metered requests/s) held ~33 MB (`load-tests/memory.sh full`, RESULTS.md
/// round 7).
const MAX_TRANSACTIONS_PER_VALUE: usize = switchyard_actors::store::MAX_RECORDS_PER_VALUE;

fn tx_prefix(account: &str) -> String {
    format!("{TX_PREFIX}{}/", hex(account))
}

/// How many transactions the store's ledger holds (every batch read, none decoded: for the high-water
/// mark at start).
pub fn count_transactions(store: &Store) -> Result<u64, StoreError> {
    let mut n = 0;
    for item in store.open_tree(TREE)?.scan_prefix(TX_PREFIX) {
        let (k, v) = item?;
        n += switchyard_actors::store::batch_count(&k, &v)?;
    }
    Ok(n)
}

/// `2026-11`: the UTC month a grant belongs to.
pub fn month_of(ts_ms: u64) -> String {
    let (y, m) = year_month(ts_ms);
    format!("{y:04}-{m:02}")
}

/// The UTC year and month (1-12) of a Unix time in milliseconds, without formatting a date (it runs on
/// every metered request).
fn year_month(ts_ms: u64) -> (u64, u64) {
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = ts_ms / 86_400_000 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m)
}

/// Months since year 0: a grant month as a number, to compare without strings.
fn month_index(ts_ms: u64) -> u32 {
    let (y, m) = year_month(ts_ms);
    u32::try_from(y * 12 + m).unwrap_or(u32::MAX)
}

/// `2026-11` back to its `month_index`.
fn parse_month(s: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(s).ok()?;
    let (y, m) = s.split_once('-')?;
    let (y, m): (u32, u32) = (y.parse().ok()?, m.parse().ok()?);
    y.checked_mul(12)?.checked_add(m)
}

impl Ledger {
    /// Opens the ledger in the store's `billing` tree.
    pub fn open(store: &Store) -> Result<Ledger, StoreError> {
        let tree = store.open_tree(TREE)?;
        adopt_fresh_leases(&tree)?;
        let next_seq = AtomicU64::new(first_seq(store, &tree)?);
        let boot = uuid::Uuid::new_v4().simple().to_string();
        Ok(Ledger {
            tree,
            accounts: Mutex::new(hashbrown::HashMap::new()),
            unwritten: Mutex::new(Vec::new()),
            write_order: Mutex::new(FreshLeases::default()),
            fresh_key: format!("{FRESH_LEASES_PREFIX}{boot}").into_bytes(),
            next_seq,
            store: store.clone(),
            boot,
            marks: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(read_u64(&store.open_tree(TREE)?, EPOCH_KEY)?),
            journal: OnceLock::new(),
            written_through: AtomicU64::new(0),
        })
    }

    /// Stages every movement from now on in `journal` (see `Journal::stage`).
    pub fn attach_journal(&self, journal: Arc<Journal>) {
        let _ = self.journal.set(journal);
    }

    /// The highest sequence of a transaction given to the store so far.
    pub fn written_through(&self) -> u64 {
        self.written_through.load(Ordering::Acquire)
    }

    /// The sequence of the account's newest stored transaction (0 when none).
    fn newest_seq(&self, account: &str) -> Result<u64, StoreError> {
        newest_seq_under(&self.tree, tx_prefix(account).as_bytes())
    }

    /// Writes the journal's transactions that the store lacks: per account, those after its newest
    /// stored one (batches reach the store in decision order and sled keeps a prefix, so what is
    /// missing is a tail). A replayed reservation that nothing closes gets its lease back (from a
    /// process before this one, so it is released once `lease` runs out), a replayed closing
    /// transaction removes its lease, and a replayed grant marks its month granted. Returns how many
    /// transactions were written.
    pub fn replay(
        &self,
        entries: &[(u64, Transaction)],
        lease: std::time::Duration,
    ) -> Result<usize, LedgerError> {
        let mut newest: HashMap<&str, u64> = HashMap::new();
        let mut seen = HashSet::new();
        let mut missing: Vec<(u64, Transaction)> = Vec::new();
        for (seq, tx) in entries {
            if !seen.insert(*seq) {
                continue;
            }
            let stored = match newest.get(tx.account.as_str()) {
                Some(s) => *s,
                None => {
                    let s = self.newest_seq(&tx.account)?;
                    newest.insert(tx.account.as_str(), s);
                    s
                }
            };
            if *seq > stored {
                missing.push((*seq, tx.clone()));
            }
        }
        missing.sort_by_key(|(seq, _)| *seq);
        let closed: HashSet<&str> = missing
            .iter()
            .filter_map(|(_, t)| t.reservation.as_deref())
            .collect();
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        for (_, tx) in &missing {
            match tx.kind.as_str() {
                "grant" => {
                    self.tree
                        .insert(grant_key(&tx.account), month_of(tx.ts_ms).as_bytes())?;
                }
                "reserve" if !closed.contains(tx.id.as_str()) => {
                    let stored = Lease {
                        tx: tx.id.clone(),
                        account: tx.account.clone(),
                        micros: tx.amount_micros.unsigned_abs(),
                        request_id: tx.request_id.clone().unwrap_or_default(),
                        model: tx.model.clone().unwrap_or_default(),
                        created_ms: tx.ts_ms,
                        expires_ms: tx.ts_ms.saturating_add(lease_ms),
                        boot: "journal".to_owned(),
                    };
                    self.tree.insert(
                        format!("{LEASE_PREFIX}{}", tx.id),
                        serde_json::to_vec(&stored)?,
                    )?;
                }
                _ => {}
            }
        }
        let n = missing.len();
        let mut queued = Vec::with_capacity(n);
        for (seq, tx) in &missing {
            // Replayed reserves got their leases above (from a process before this one).
            let lease = match &tx.reservation {
                Some(r) => LeaseChange::Close(r.clone()),
                None => LeaseChange::None,
            };
            queued.push(Queued::new(*seq, tx, lease)?);
        }
        self.unwritten.lock().extend(queued);
        self.write_pending()?;
        Ok(n)
    }

    /// Every stored tier override, as (account, tier).
    pub fn tier_overrides(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(TIER_PREFIX) {
            let (k, v) = item?;
            let account = String::from_utf8_lossy(&k[TIER_PREFIX.len()..]).into_owned();
            out.push((account, String::from_utf8_lossy(&v).into_owned()));
        }
        Ok(out)
    }

    /// Stores (or with `None` removes) an account's tier override.
    pub fn store_tier_override(&self, account: &str, tier: Option<&str>) -> Result<(), StoreError> {
        let key = format!("{TIER_PREFIX}{account}");
        match tier {
            Some(t) => self.tree.insert(key, t.as_bytes()).map(drop)?,
            None => self.tree.remove(key).map(drop)?,
        }
        Ok(())
    }

    /// Claims a billing event id, atomically: of two identical deliveries racing, exactly one gets
    /// `true`; a replay gets `false`.
    pub fn claim_event(&self, id: &str, now_secs: u64) -> Result<bool, StoreError> {
        let claimed = self.tree.compare_and_swap(
            format!("{EVENT_PREFIX}{id}"),
            None as Option<&[u8]>,
            Some(now_secs.to_string().as_bytes()),
        )?;
        Ok(claimed.is_ok())
    }

    /// Forgets a claimed event id (it was not applied), so a corrected delivery can be sent again.
    pub fn forget_event(&self, id: &str) -> Result<(), StoreError> {
        self.tree.remove(format!("{EVENT_PREFIX}{id}"))?;
        Ok(())
    }

    /// Claims the notice for `account` crossing `permille`/1000 of its credits in `month`: of two
    /// racing claims exactly one gets `true`, and a claimed notice is never claimed again (written and
    /// flushed before the notice is sent: a crash in between loses that notice, never doubles it).
    pub fn claim_notice(
        &self,
        account: &str,
        month: &str,
        permille: u32,
    ) -> Result<bool, StoreError> {
        let key = format!("{NOTICE_PREFIX}{}/{month}/{permille:04}", hex(account));
        let claimed = self
            .tree
            .compare_and_swap(key, None as Option<&[u8]>, Some(&b"1"[..]))?
            .is_ok();
        if claimed {
            self.tree.flush()?;
        }
        Ok(claimed)
    }

    /// The thresholds (in permille) whose notice `account` was sent in `month`, ascending.
    pub fn notices(&self, account: &str, month: &str) -> Result<Vec<u32>, StoreError> {
        let prefix = format!("{NOTICE_PREFIX}{}/{month}/", hex(account));
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            if let Some(p) = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|p| p.parse().ok())
            {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// The account's balance in micro-USD (0 when it never had credits).
    pub fn balance(&self, account: &str) -> Result<u64, LedgerError> {
        self.with_account(account, |state| Ok(state.balance))
    }

    /// Runs `f` on the account's state under the lock (read from the store on first use) and keeps what
    /// `f` left in it, whatever `f` returns: a state only changes after its write succeeded.
    fn with_account<T>(
        &self,
        account: &str,
        f: impl FnOnce(&mut AccountState) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut accounts = self.accounts.lock();
        let mut state = match accounts.get(account) {
            Some(s) => *s,
            None => self.load(account)?,
        };
        let result = f(&mut state);
        match accounts.get_mut(account) {
            Some(slot) => *slot = state,
            None => {
                accounts.insert(account.to_owned(), state);
            }
        }
        result
    }

    /// An account's state as on disk: the newest transaction's balance (else a balance key written by an
    /// older version, else 0) and the last granted month.
    fn load(&self, account: &str) -> Result<AccountState, LedgerError> {
        let newest = match self.tree.scan_prefix(tx_prefix(account)).next_back() {
            Some(item) => {
                let (k, v) = item?;
                decode_batch(&k, &v)?.pop()
            }
            None => None,
        };
        let balance = match newest {
            Some(tx) => tx.balance_micros,
            None => read_u64(&self.tree, &balance_key(account))?,
        };
        let granted = self
            .tree
            .get(grant_key(account))?
            .and_then(|v| parse_month(&v));
        Ok(AccountState { balance, granted })
    }

    /// Applies one movement under the lock. `decide` sees the balance and returns the signed amount,
    /// or an error to refuse; the result may never go below zero.
    fn movement(
        &self,
        account: &str,
        kind: &str,
        meta: Meta<'_>,
        decide: impl FnOnce(u64) -> Result<i64, LedgerError>,
    ) -> Result<Transaction, LedgerError> {
        let decided = self.closing(account, kind, meta, None, decide)?;
        Ok(decided.into_transaction(account, kind, meta, None))
    }

    /// `movement`, for one that closes the reservation whose `reserve` transaction is `reservation`.
    fn closing(
        &self,
        account: &str,
        kind: &str,
        meta: Meta<'_>,
        reservation: Option<&str>,
        decide: impl FnOnce(u64) -> Result<i64, LedgerError>,
    ) -> Result<Decided, LedgerError> {
        self.with_account(account, |state| {
            self.movement_locked(state, account, kind, meta, decide, reservation, None)
        })
    }

    /// Decides one movement and queues it; `reservation` is the `reserve` it closes, `lease_ms` (for a
    /// `reserve`) the lease stored with it.
    #[allow(clippy::too_many_arguments)]
    fn movement_locked(
        &self,
        state: &mut AccountState,
        account: &str,
        kind: &str,
        meta: Meta<'_>,
        decide: impl FnOnce(u64) -> Result<i64, LedgerError>,
        reservation: Option<&str>,
        lease_ms: Option<u64>,
    ) -> Result<Decided, LedgerError> {
        let (request_id, model, _) = meta;
        let balance = state.balance;
        let amount = decide(balance)?;
        let after = i128::from(balance) + i128::from(amount);
        let after = u64::try_from(after).map_err(|_| LedgerError::Insufficient {
            balance,
            needed: amount.unsigned_abs(),
        })?;
        let ts_ms = now_ms();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let id = tx_id(ts_ms, seq);
        let line = encode(&TxFields {
            id: &id,
            ts_ms,
            account,
            kind,
            amount_micros: amount,
            balance_micros: after,
            meta,
            reservation,
        })?;
        let lease = match (reservation, lease_ms) {
            (Some(r), _) => LeaseChange::Close(r.to_owned()),
            (None, Some(ms)) => LeaseChange::Open {
                micros: amount.unsigned_abs(),
                request_id: request_id.unwrap_or_default().to_owned(),
                model: model.unwrap_or_default().to_owned(),
                expires_ms: ts_ms.saturating_add(ms),
            },
            (None, None) => LeaseChange::None,
        };
        let queued = Queued {
            seq,
            id: id.clone(),
            account: account.to_owned(),
            ts_ms,
            line,
            lease,
        };
        // Queued, not written: see the module's comment. Staged under the accounts lock, so the
        // journal holds movements in the order they were decided.
        if let Some(journal) = self.journal.get() {
            journal.stage(seq, &queued.line);
        }
        self.unwritten.lock().push(queued);
        state.balance = after;
        Ok(Decided {
            id,
            ts_ms,
            amount_micros: amount,
            balance_micros: after,
        })
    }

    /// Writes the queued transactions (not yet durable: the store's flush does that), with what they
    /// do to the leases, in one atomic sled batch. A batch that cannot be written stays queued, ahead
    /// of later ones, for the next call.
    pub fn write_pending(&self) -> Result<(), LedgerError> {
        let mut fresh = self.write_order.lock();
        let queued = std::mem::take(&mut *self.unwritten.lock());
        if queued.is_empty() {
            // Fresh leases wait for the next batch: they are on disk already, and a quiet ledger
            // writes nothing.
            return Ok(());
        }
        match self.write_batch(&queued, &fresh) {
            Ok((written, next)) => {
                *fresh = next;
                self.store
                    .high_water()
                    .add_ledger_transactions(queued.len() as u64);
                if let Some(max) = written {
                    self.written_through.fetch_max(max, Ordering::AcqRel);
                }
                Ok(())
            }
            Err(e) => {
                let mut unwritten = self.unwritten.lock();
                let later = std::mem::replace(&mut *unwritten, queued);
                unwritten.extend(later);
                Err(e)
            }
        }
    }

    /// Writes one batch: each account's transactions in sled values of at most
    /// `MAX_TRANSACTIONS_PER_VALUE`, each keyed by its first, and the leases, all in one atomic sled
    /// batch, so a crash keeps a reserve and its lease both or neither. A reserve closed within its
    /// batch (the usual case: answered before the batch was cut) needs no lease at all. One still
    /// open goes in this process's fresh-lease value, rewritten by every batch; one still open at the
    /// batch after is given its own `v1/lease/` key. So a request that ends within one batch interval
    /// of its reserve (most, under load: a batch gathers for 5 ms) costs no sled operation for its
    /// lease, where a lease of its own costs two (insert, then remove). Returns the highest sequence
    /// written and the fresh leases now stored.
    fn write_batch(
        &self,
        queued: &[Queued],
        fresh: &FreshLeases,
    ) -> Result<(Option<u64>, FreshLeases), LedgerError> {
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut opened: hashbrown::HashMap<&str, &Queued> = hashbrown::HashMap::new();
        let mut closed: Vec<&str> = Vec::new();
        for q in queued {
            match &q.lease {
                LeaseChange::None => {}
                LeaseChange::Open { .. } => {
                    opened.insert(q.id.as_str(), q);
                }
                LeaseChange::Close(r) => closed.push(r),
            }
        }
        let mut waiting: hashbrown::HashMap<&str, &[u8]> = fresh
            .entries
            .iter()
            .map(|f| (f.id.as_str(), f.line.as_slice()))
            .collect();
        for r in closed {
            if opened.remove(r).is_none() && waiting.remove(r).is_none() {
                writes.push((lease_key(r), None));
            }
        }
        // Still open one batch later: a key of its own, until what closes it.
        for f in &fresh.entries {
            if let Some(line) = waiting.get(f.id.as_str()) {
                writes.push((lease_key(&f.id), Some(line.to_vec())));
            }
        }
        let mut next = FreshLeases {
            entries: Vec::with_capacity(opened.len()),
            stored: false,
        };
        // In decision order, so the stored value reads like the log.
        for q in queued {
            let LeaseChange::Open {
                micros,
                request_id,
                model,
                expires_ms,
            } = &q.lease
            else {
                continue;
            };
            if !opened.contains_key(q.id.as_str()) {
                continue;
            }
            let line = encode_lease(&LeaseFields {
                tx: &q.id,
                account: &q.account,
                micros: *micros,
                request_id,
                model,
                created_ms: q.ts_ms,
                expires_ms: *expires_ms,
                boot: &self.boot,
            })?;
            next.entries.push(FreshLease {
                id: q.id.clone(),
                line,
            });
        }
        if !next.entries.is_empty() {
            let len = next.entries.iter().map(|f| f.line.len() + 1).sum();
            let mut value = Vec::with_capacity(len);
            for f in &next.entries {
                value.extend_from_slice(&f.line);
                value.push(b'\n');
            }
            writes.push((self.fresh_key.clone(), Some(value)));
            next.stored = true;
        } else if fresh.stored {
            writes.push((self.fresh_key.clone(), None));
        }
        for group in by_account(queued) {
            let first = group[0];
            // Every value keyed by the group's first time: its values then sort by sequence,
            // whatever the clock did between its transactions.
            for chunk in group.chunks(MAX_TRANSACTIONS_PER_VALUE) {
                let mut value = Vec::with_capacity(chunk.iter().map(|q| q.line.len() + 1).sum());
                for q in chunk {
                    value.extend_from_slice(&q.line);
                    value.push(b'\n');
                }
                let newest = chunk.iter().map(|q| q.ts_ms).max().unwrap_or(0);
                let value = switchyard_actors::store::batch_value(value, chunk.len(), newest);
                let key = batch_key(&first.account, first.ts_ms, chunk[0].seq);
                writes.push((key, Some(value)));
            }
        }
        // A single value (a quiet batch of one account, no lease to change) is a plain insert.
        if let [(key, Some(value))] = writes.as_mut_slice() {
            self.tree
                .insert(std::mem::take(key), std::mem::take(value))?;
        } else {
            let mut batch = sled::Batch::default();
            for (key, value) in writes {
                match value {
                    Some(v) => batch.insert(key, v),
                    None => batch.remove(key),
                }
            }
            self.tree.apply_batch(batch)?;
        }
        Ok((queued.iter().map(|q| q.seq).max(), next))
    }

    /// Tops the balance up to `monthly` once per UTC month (credits bought above it are kept).
    fn grant_locked(
        &self,
        state: &mut AccountState,
        account: &str,
        monthly: u64,
    ) -> Result<(), LedgerError> {
        let now = now_ms();
        let month = month_index(now);
        if state.granted == Some(month) {
            return Ok(());
        }
        let label = month_of(now);
        let top_up = monthly.saturating_sub(state.balance);
        if top_up > 0 {
            let note = format!("monthly credits for {label}");
            self.movement_locked(
                state,
                account,
                "grant",
                (None, None, Some(&note)),
                |_| Ok(i64::try_from(top_up).unwrap_or(0)),
                None,
                None,
            )?;
        }
        // The grant's transaction before the month that records it: a crash between them grants again
        // rather than never.
        self.write_pending()?;
        self.tree.insert(grant_key(account), label.as_bytes())?;
        state.granted = Some(month);
        Ok(())
    }

    /// Sets `micros` aside for a request, after this month's grant; refused when the balance is short.
    /// The reservation is stored with a lease of `lease` (see `release_expired`), in the batch that
    /// writes its transaction.
    pub fn reserve(
        &self,
        account: &str,
        monthly: Option<u64>,
        micros: u64,
        (request_id, model): (&str, &str),
        lease: std::time::Duration,
    ) -> Result<Reservation, LedgerError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let tx = self.with_account(account, |state| {
            if let Some(monthly) = monthly {
                self.grant_locked(state, account, monthly)?;
            }
            self.movement_locked(
                state,
                account,
                "reserve",
                (Some(request_id), Some(model), None),
                |balance| {
                    if balance < micros {
                        return Err(LedgerError::Insufficient {
                            balance,
                            needed: micros,
                        });
                    }
                    Ok(-i64::try_from(micros).unwrap_or(i64::MAX))
                },
                None,
                Some(lease_ms),
            )
        })?;
        Ok(Reservation {
            source: Source::Local,
            account: account.to_owned(),
            micros,
            request_id: request_id.to_owned(),
            model: model.to_owned(),
            tx: tx.id,
        })
    }

    /// Releases the reservations that processes before this one left open, once their lease has run
    /// out: `lease` from their creation, or the lease stored with them if shorter. Each one becomes a
    /// `lease_expired` transaction giving the amount back. A lease whose reserve never reached disk
    /// (or that was already closed) is only removed. Returns the transactions written.
    pub fn release_expired(
        &self,
        lease: std::time::Duration,
        now_ms: u64,
    ) -> Result<Vec<Transaction>, LedgerError> {
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let mut released = Vec::new();
        for item in self.tree.scan_prefix(LEASE_PREFIX) {
            let (key, value) = item?;
            let l: Lease = serde_json::from_slice(&value)?;
            let expires = l.expires_ms.min(l.created_ms.saturating_add(lease_ms));
            if l.boot == self.boot || expires > now_ms {
                continue;
            }
            let history = self.transactions(&l.account)?;
            let reserved = history.iter().any(|t| t.id == l.tx && t.kind == "reserve");
            let closed = history
                .iter()
                .any(|t| t.reservation.as_deref() == Some(l.tx.as_str()));
            if reserved && !closed {
                let note = format!(
                    "reservation {} left open by a process that stopped; released after its lease",
                    l.tx
                );
                let meta = (
                    Some(l.request_id.as_str()),
                    Some(l.model.as_str()),
                    Some(note.as_str()),
                );
                let decided =
                    self.closing(&l.account, "lease_expired", meta, Some(&l.tx), |_| {
                        Ok(i64::try_from(l.micros).unwrap_or(i64::MAX))
                    })?;
                released.push(decided.into_transaction(
                    &l.account,
                    "lease_expired",
                    meta,
                    Some(&l.tx),
                ));
            }
            self.write_pending()?;
            self.tree.remove(key)?;
        }
        if !released.is_empty() {
            self.store.db().flush()?;
        }
        Ok(released)
    }

    /// Charges the real cost: refunds what was set aside beyond it, or takes the excess (as far as the
    /// balance goes; the rest is noted, never overdrawn). Returns the micro-USD actually charged.
    pub fn settle(&self, r: &Reservation, cost: u64) -> Result<u64, LedgerError> {
        // `cost {cost} micro-USD`, without `format!`.
        let mut note = Vec::with_capacity(36);
        note.extend_from_slice(b"cost ");
        push_decimal(&mut note, cost, 1);
        note.extend_from_slice(b" micro-USD");
        let note = String::from_utf8(note).unwrap_or_default();
        let tx = self.closing(
            &r.account,
            "settle",
            (Some(&r.request_id), Some(&r.model), Some(&note)),
            Some(&r.tx),
            |balance| {
                let extra = cost.saturating_sub(r.micros).min(balance);
                let refund = r.micros.saturating_sub(cost);
                Ok(i64::try_from(refund).unwrap_or(i64::MAX) - i64::try_from(extra).unwrap_or(0))
            },
        )?;
        Ok(u64::try_from(i128::from(r.micros) - i128::from(tx.amount_micros)).unwrap_or(0))
    }

    /// Gives a reservation back in full (the request failed upstream or was never sent).
    pub fn release(&self, r: &Reservation) -> Result<(), LedgerError> {
        self.closing(
            &r.account,
            "release",
            (Some(&r.request_id), Some(&r.model), None),
            Some(&r.tx),
            |_| Ok(i64::try_from(r.micros).unwrap_or(i64::MAX)),
        )?;
        Ok(())
    }

    /// An operator's or the billing webhook's adjustment; a debit larger than the balance is refused.
    pub fn adjust(
        &self,
        account: &str,
        micros: i64,
        note: Option<String>,
    ) -> Result<Transaction, LedgerError> {
        let tx = self.movement(
            account,
            "adjust",
            (None, None, note.as_deref()),
            |balance| {
                if micros < 0 && micros.unsigned_abs() > balance {
                    return Err(LedgerError::Insufficient {
                        balance,
                        needed: micros.unsigned_abs(),
                    });
                }
                Ok(micros)
            },
        )?;
        self.write_pending()?;
        Ok(tx)
    }

    /// The mark to pass to Redis for `account` (a mark of an older epoch than the newest seen counts
    /// from 0 in the new one), and the last balance seen there (`None`: never seen).
    pub fn mark(&self, account: &str) -> Result<(Mark, Option<u64>), LedgerError> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut marks = self.marks.lock();
        let (mark, balance) = match marks.get(account) {
            Some(m) => *m,
            None => {
                let stored = self.tree.get(mark_key(account))?;
                let m = stored.as_deref().and_then(decode_mark);
                let m = m.map_or((Mark::default(), None), |(m, b)| (m, Some(b)));
                if let (m, Some(b)) = m {
                    marks.insert(account.to_owned(), (m, b));
                }
                return Ok(current(m, epoch));
            }
        };
        Ok(current((mark, Some(balance)), epoch))
    }

    /// Remembers what Redis answered for `account`, when it is newer than the mark (answers of
    /// concurrent movements arrive in any order). Written to the store without a flush: a crash may
    /// lose the newest marks, never move one back.
    pub fn raise_mark(&self, account: &str, seen: Mark, balance: u64) -> Result<(), LedgerError> {
        if seen.epoch > self.epoch.fetch_max(seen.epoch, Ordering::AcqRel) {
            self.tree.insert(EPOCH_KEY, &seen.epoch.to_be_bytes()[..])?;
        }
        let mut marks = self.marks.lock();
        if marks.get(account).is_some_and(|(m, _)| *m >= seen) {
            return Ok(());
        }
        let mut value = Vec::with_capacity(24);
        for n in [seen.epoch, seen.seq, balance] {
            value.extend_from_slice(&n.to_be_bytes());
        }
        self.tree.insert(mark_key(account), value)?;
        marks.insert(account.to_owned(), (seen, balance));
        Ok(())
    }

    /// The newest reseed epoch seen.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The account's transactions, oldest first.
    pub fn transactions(&self, account: &str) -> Result<Vec<Transaction>, LedgerError> {
        self.write_pending()?;
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(tx_prefix(account)) {
            let (k, v) = item?;
            out.extend(decode_batch(&k, &v)?);
        }
        Ok(out)
    }
}

/// The transactions of one stored value: JSON Lines (one line for values written before batching),
/// lz4-compressed from 2 kB (values written before 2026-12-04 are all plain).
fn decode_batch(key: &[u8], value: &[u8]) -> Result<Vec<Transaction>, StoreError> {
    switchyard_actors::store::batch_lines(key, value)?
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_slice(line).map_err(|source| StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                source,
            })
        })
        .collect()
}

fn mark_key(account: &str) -> String {
    format!("{MARK_PREFIX}{}", hex(account))
}

fn decode_mark(v: &[u8]) -> Option<(Mark, u64)> {
    let n = |i: usize| {
        Some(u64::from_be_bytes(
            v.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    Some((
        Mark {
            epoch: n(0)?,
            seq: n(1)?,
        },
        n(2)?,
    ))
}

/// A stored mark as it counts under the newest epoch seen.
fn current((mark, balance): (Mark, Option<u64>), epoch: u64) -> (Mark, Option<u64>) {
    if mark.epoch == epoch {
        (mark, balance)
    } else {
        (Mark { epoch, seq: 0 }, balance)
    }
}

fn read_u64(tree: &sled::Tree, key: &str) -> Result<u64, StoreError> {
    Ok(tree
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const LEASE: std::time::Duration = std::time::Duration::from_secs(600);

    fn ledger() -> Ledger {
        Ledger::open(&Store::temporary().unwrap()).unwrap()
    }

    fn sum(l: &Ledger, account: &str) -> i64 {
        l.transactions(account)
            .unwrap()
            .iter()
            .map(|t| t.amount_micros)
            .sum()
    }

    #[test]
    fn written_transactions_are_counted_for_the_high_water_mark() {
        let store = Store::temporary().unwrap();
        let l = Ledger::open(&store).unwrap();
        l.adjust("a", 1_000, None).unwrap();
        let r = l.reserve("a", None, 400, ("r1", "m"), LEASE).unwrap();
        l.settle(&r, 100).unwrap();
        l.adjust("b", 5, None).unwrap();
        l.write_pending().unwrap();
        let n = l.transactions("a").unwrap().len() + l.transactions("b").unwrap().len();
        assert_eq!(count_transactions(&store).unwrap(), n as u64);
        assert_eq!(store.high_water().written().ledger_transactions, n as u64);
    }

    #[test]
    fn reserve_settle_release_keep_the_log_equal_to_the_balance() {
        let l = ledger();
        l.adjust("a", 1_000, None).unwrap();
        let r = l.reserve("a", None, 600, ("r1", "m"), LEASE).unwrap();
        assert_eq!(l.balance("a").unwrap(), 400);
        assert!(matches!(
            l.reserve("a", None, 600, ("r2", "m"), LEASE),
            Err(LedgerError::Insufficient { balance: 400, .. })
        ));
        assert_eq!(l.settle(&r, 250).unwrap(), 250);
        assert_eq!(l.balance("a").unwrap(), 750);
        let r = l.reserve("a", None, 700, ("r3", "m"), LEASE).unwrap();
        l.release(&r).unwrap();
        assert_eq!(l.balance("a").unwrap(), 750);
        assert_eq!(sum(&l, "a"), 750);
    }

    #[test]
    fn a_cost_above_the_reservation_never_overdraws() {
        let l = ledger();
        l.adjust("a", 100, None).unwrap();
        let r = l.reserve("a", None, 80, ("r", "m"), LEASE).unwrap();
        // 20 left; the real cost is 500: only 80 + 20 can be charged.
        assert_eq!(l.settle(&r, 500).unwrap(), 100);
        assert_eq!(l.balance("a").unwrap(), 0);
        assert_eq!(sum(&l, "a"), 0);
    }

    #[test]
    fn the_monthly_grant_tops_up_once() {
        let l = ledger();
        l.reserve("a", Some(1_000), 100, ("r", "m"), LEASE).unwrap();
        assert_eq!(l.balance("a").unwrap(), 900);
        l.reserve("a", Some(1_000), 100, ("r", "m"), LEASE).unwrap();
        assert_eq!(l.balance("a").unwrap(), 800);
        assert_eq!(sum(&l, "a"), 800);
    }

    #[test]
    fn concurrent_reservations_never_overdraw() {
        let l = Arc::new(ledger());
        l.adjust("a", 1_000, None).unwrap();
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    l.reserve("a", None, 100, (&format!("r{i}"), "m"), LEASE)
                        .is_ok()
                })
            })
            .collect();
        let ok = handles
            .into_iter()
            .filter(|_| true)
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(ok, 10);
        assert_eq!(l.balance("a").unwrap(), 0);
        assert_eq!(sum(&l, "a"), 0);
    }

    #[test]
    fn a_reopened_ledger_reads_balances_and_grants_from_disk() {
        let store = Store::temporary().unwrap();
        {
            let l = Ledger::open(&store).unwrap();
            l.reserve("a", Some(1_000), 100, ("r", "m"), LEASE).unwrap();
            l.adjust("b", 42, None).unwrap();
            l.write_pending().unwrap();
        }
        let l = Ledger::open(&store).unwrap();
        assert_eq!(l.balance("a").unwrap(), 900);
        assert_eq!(l.balance("b").unwrap(), 42);
        // This month's grant was given before the restart: it is not given again.
        l.reserve("a", Some(1_000), 100, ("r2", "m"), LEASE)
            .unwrap();
        assert_eq!(l.balance("a").unwrap(), 800);
        assert_eq!(sum(&l, "a"), 800);
    }

    #[test]
    fn queued_movements_are_written_one_value_per_account_per_batch() {
        let store = Store::temporary().unwrap();
        let l = Ledger::open(&store).unwrap();
        l.adjust("a", 1_000, None).unwrap();
        l.adjust("b", 1_000, None).unwrap();
        let tx_values = || l.tree.scan_prefix("v1/tx/").filter_map(Result::ok).count();
        assert_eq!(tx_values(), 2, "adjustments are written at once");
        for i in 0..5 {
            let r = l
                .reserve("a", None, 10, (&format!("a{i}"), "m"), LEASE)
                .unwrap();
            l.settle(&r, 5).unwrap();
            let r = l
                .reserve("b", None, 10, (&format!("b{i}"), "m"), LEASE)
                .unwrap();
            l.release(&r).unwrap();
        }
        assert_eq!(tx_values(), 2, "request movements wait for a batch");
        l.write_pending().unwrap();
        assert_eq!(tx_values(), 4, "one value per account");
        assert_eq!(l.transactions("a").unwrap().len(), 11);
        assert_eq!(sum(&l, "a"), 975);
        assert_eq!(sum(&l, "b"), 1_000);
    }

    #[test]
    fn a_large_batch_is_stored_in_values_of_at_most_the_cap_and_read_back_in_order() {
        let store = Store::temporary().unwrap();
        let l = Ledger::open(&store).unwrap();
        l.adjust("a", 10_000, None).unwrap();
        // 20 answered requests (40 movements, no lease left) and 3 open reservations (3 leases).
        for i in 0..20 {
            let r = l
                .reserve("a", None, 10, (&format!("a{i}"), "m"), LEASE)
                .unwrap();
            l.settle(&r, 7).unwrap();
        }
        for i in 0..3 {
            l.reserve("a", None, 100, (&format!("open{i}"), "m"), LEASE)
                .unwrap();
        }
        l.write_pending().unwrap();
        let values: Vec<_> = l
            .tree
            .scan_prefix("v1/tx/")
            .map(|item| item.unwrap())
            .collect();
        // The adjustment's own value, then 43 movements in values of 16, 16 and 11.
        let lines: Vec<u64> = values
            .iter()
            .map(|(k, v)| switchyard_actors::store::batch_count(k, v).unwrap())
            .collect();
        assert_eq!(lines, vec![1, 16, 16, 11]);
        // Values of 2 kB of lines or more are stored compressed, the rest plain JSON Lines.
        let plain: Vec<bool> = values.iter().map(|(_, v)| v[0] == b'{').collect();
        assert_eq!(plain, [true, false, false, false]);
        let stored: usize = values[1..].iter().map(|(_, v)| v.len()).sum();
        let read: usize = values[1..]
            .iter()
            .map(|(k, v)| switchyard_actors::store::batch_lines(k, v).unwrap().len())
            .sum();
        assert!(stored * 2 < read, "{stored} bytes for {read}");
        assert_eq!(
            count_transactions(&store).unwrap(),
            44,
            "counted from the headers"
        );
        assert_eq!(ids(&stored_leases(&l).1), ["open0", "open1", "open2"]);
        let txs = l.transactions("a").unwrap();
        assert_eq!(txs.len(), 44);
        let seqs: Vec<u64> = txs.iter().filter_map(|t| seq_of(&t.id)).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "in decision order: {seqs:?}"
        );
        assert_eq!(newest_stored_seq(&l.tree).unwrap(), *seqs.last().unwrap());
        let balance = 10_000 - 20 * 7 - 3 * 100;
        assert_eq!(sum(&l, "a"), balance);
        drop(l);
        // A reopened ledger reads the newest value's last transaction as the balance.
        let l = Ledger::open(&store).unwrap();
        assert_eq!(l.balance("a").unwrap(), balance as u64);
    }

    #[test]
    fn movements_lost_before_their_batch_leave_a_consistent_ledger() {
        let store = Store::temporary().unwrap();
        {
            let l = Ledger::open(&store).unwrap();
            l.adjust("a", 1_000, None).unwrap();
            let r = l.reserve("a", None, 300, ("r1", "m"), LEASE).unwrap();
            l.settle(&r, 100).unwrap();
            l.write_pending().unwrap();
            // A crash here: this reservation never reached the store.
            l.reserve("a", None, 500, ("r2", "m"), LEASE).unwrap();
        }
        let l = Ledger::open(&store).unwrap();
        assert_eq!(l.balance("a").unwrap(), 900);
        assert_eq!(sum(&l, "a"), 900);
    }

    #[test]
    fn a_stopped_process_leaves_leases_that_the_next_one_releases() {
        let store = Store::temporary().unwrap();
        let now = now_ms();
        {
            let l = Ledger::open(&store).unwrap();
            l.adjust("a", 1_000, None).unwrap();
            let open = l.reserve("a", None, 300, ("open", "m"), LEASE).unwrap();
            let done = l.reserve("a", None, 200, ("done", "m"), LEASE).unwrap();
            l.settle(&done, 50).unwrap();
            l.write_pending().unwrap();
            // Open for a batch more (its lease gets a key of its own), and a reserve whose lease
            // is still fresh when the process stops.
            l.reserve("a", None, 70, ("fresh", "m"), LEASE).unwrap();
            l.write_pending().unwrap();
            let (keyed, fresh) = stored_leases(&l);
            assert_eq!((ids(&keyed), ids(&fresh)), (vec!["open"], vec!["fresh"]));
            // Its own leases are never released by the process that holds them.
            let later = now + 3_600_000;
            assert!(l.release_expired(LEASE, later).unwrap().is_empty());
            // This one's reserve never reaches the store: its lease must not refund anything.
            l.reserve("a", None, 100, ("lost", "m"), LEASE).unwrap();
            l.unwritten.lock().clear();
            assert_eq!(open.micros, 300);
        }
        let l = Ledger::open(&store).unwrap();
        assert_eq!(l.balance("a").unwrap(), 1_000 - 300 - 50 - 70);
        // Not yet expired under the configured lease.
        assert!(l.release_expired(LEASE, now).unwrap().is_empty());
        // After the reservations were made (they are later than `now` on a busy machine).
        let released = l
            .release_expired(std::time::Duration::ZERO, now_ms() + 1)
            .unwrap();
        let mut given: Vec<(&str, &str, i64)> = released
            .iter()
            .map(|t| {
                (
                    t.kind.as_str(),
                    t.request_id.as_deref().unwrap(),
                    t.amount_micros,
                )
            })
            .collect();
        given.sort_unstable();
        assert_eq!(
            given,
            [
                ("lease_expired", "fresh", 70),
                ("lease_expired", "open", 300)
            ]
        );
        assert_eq!(l.balance("a").unwrap(), 950);
        assert_eq!(sum(&l, "a"), 950);
        assert_eq!(stored_leases(&l), (vec![], vec![]), "every lease handled");
        assert!(l
            .release_expired(std::time::Duration::ZERO, now + 2)
            .unwrap()
            .is_empty());
    }

    /// The leases under their own keys, and those in fresh-lease values, as stored.
    fn stored_leases(l: &Ledger) -> (Vec<Lease>, Vec<Lease>) {
        let keyed = l
            .tree
            .scan_prefix(LEASE_PREFIX)
            .filter_map(Result::ok)
            .map(|(_, v)| serde_json::from_slice::<Lease>(&v).unwrap())
            .collect();
        let fresh = l
            .tree
            .scan_prefix(FRESH_LEASES_PREFIX)
            .filter_map(Result::ok)
            .flat_map(|(_, v)| {
                v.split(|b| *b == b'\n')
                    .filter(|line| !line.is_empty())
                    .map(|line| serde_json::from_slice::<Lease>(line).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        (keyed, fresh)
    }

    fn ids(leases: &[Lease]) -> Vec<&str> {
        leases.iter().map(|l| l.request_id.as_str()).collect()
    }

    #[test]
    fn a_lease_is_fresh_for_one_batch_then_keyed_until_what_closes_it() {
        let l = ledger();
        l.adjust("a", 1_000, None).unwrap();
        // Reserved and settled before the batch: no lease is ever written.
        let r = l.reserve("a", None, 100, ("quick", "m"), LEASE).unwrap();
        l.settle(&r, 40).unwrap();
        l.write_pending().unwrap();
        let (keyed, fresh) = stored_leases(&l);
        assert!(keyed.is_empty() && fresh.is_empty());
        // Open at its batch: the lease is written with the reserve, in the fresh-lease value.
        let slow = l.reserve("a", None, 200, ("slow", "m"), LEASE).unwrap();
        let (keyed, fresh) = stored_leases(&l);
        assert!(keyed.is_empty() && fresh.is_empty(), "not written yet");
        l.write_pending().unwrap();
        let (keyed, fresh) = stored_leases(&l);
        assert!(keyed.is_empty());
        assert_eq!(fresh.len(), 1);
        let stored = &fresh[0];
        assert_eq!(
            (
                stored.tx.as_str(),
                stored.micros,
                stored.request_id.as_str()
            ),
            (slow.tx.as_str(), 200, "slow")
        );
        assert_eq!(stored.boot, l.boot);
        assert_eq!(
            stored.expires_ms,
            stored.created_ms + u64::try_from(LEASE.as_millis()).unwrap()
        );
        // Reserved in the fresh value and closed by the next batch: never a key of its own.
        let brief = l.reserve("a", None, 10, ("brief", "m"), LEASE).unwrap();
        let held = l.reserve("a", None, 20, ("held", "m"), LEASE).unwrap();
        l.write_pending().unwrap();
        let (keyed, fresh) = stored_leases(&l);
        // `slow` is still open a batch later: its own key, the same lease; the new ones are fresh.
        assert_eq!(keyed, std::slice::from_ref(stored));
        assert_eq!(ids(&fresh), ["brief", "held"]);
        l.settle(&brief, 10).unwrap();
        l.release(&slow).unwrap();
        l.write_pending().unwrap();
        let (keyed, fresh) = stored_leases(&l);
        assert_eq!(ids(&keyed), ["held"]);
        assert!(
            fresh.is_empty(),
            "an empty batch of fresh leases removes the value"
        );
        assert!(l.tree.scan_prefix(FRESH_LEASES_PREFIX).next().is_none());
        l.settle(&held, 20).unwrap();
        l.write_pending().unwrap();
        let (keyed, fresh) = stored_leases(&l);
        assert!(keyed.is_empty() && fresh.is_empty());
        assert_eq!(l.balance("a").unwrap(), 1_000 - 40 - 10 - 20);
        assert_eq!(sum(&l, "a"), 930);
        let kinds: Vec<String> = l
            .transactions("a")
            .unwrap()
            .into_iter()
            .map(|t| t.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "adjust", "reserve", "settle", "reserve", "reserve", "reserve", "settle",
                "release", "settle"
            ]
        );
    }

    #[test]
    fn a_quiet_ledger_writes_nothing_and_keeps_its_fresh_leases() {
        let l = ledger();
        l.adjust("a", 1_000, None).unwrap();
        l.reserve("a", None, 200, ("open", "m"), LEASE).unwrap();
        l.write_pending().unwrap();
        l.write_pending().unwrap();
        let (keyed, fresh) = stored_leases(&l);
        assert!(keyed.is_empty());
        assert_eq!(ids(&fresh), ["open"]);
    }

    #[test]
    fn the_leases_of_several_accounts_move_in_the_batch_of_their_transactions() {
        let l = ledger();
        l.adjust("a", 1_000, None).unwrap();
        l.adjust("b", 500, None).unwrap();
        let a = l.reserve("a", None, 200, ("a1", "m"), LEASE).unwrap();
        let b = l.reserve("b", None, 100, ("b1", "m"), LEASE).unwrap();
        l.write_pending().unwrap();
        let (keyed, fresh) = stored_leases(&l);
        assert!(keyed.is_empty());
        assert_eq!(ids(&fresh), ["a1", "b1"]);
        // Only `b` has a transaction in the next batch; `a`'s lease is promoted all the same.
        l.settle(&b, 100).unwrap();
        l.write_pending().unwrap();
        let (keyed, fresh) = stored_leases(&l);
        assert_eq!(ids(&keyed), ["a1"]);
        assert!(fresh.is_empty());
        l.release(&a).unwrap();
        l.write_pending().unwrap();
        assert_eq!(stored_leases(&l), (vec![], vec![]));
        assert_eq!((sum(&l, "a"), sum(&l, "b")), (1_000, 400));
    }

    #[test]
    fn a_settle_replayed_from_the_journal_closes_a_fresh_lease() {
        let store = Store::temporary().unwrap();
        let (seq, settle) = {
            let l = Ledger::open(&store).unwrap();
            l.adjust("a", 1_000, None).unwrap();
            let r = l.reserve("a", None, 300, ("r1", "m"), LEASE).unwrap();
            l.write_pending().unwrap();
            l.settle(&r, 120).unwrap();
            // A crash before the settle's batch: only the journal has it.
            let q = l.unwritten.lock().pop().unwrap();
            let tx: Transaction = serde_json::from_slice(&q.line).unwrap();
            (q.seq, tx)
        };
        let l = Ledger::open(&store).unwrap();
        let (keyed, fresh) = stored_leases(&l);
        assert_eq!(
            (ids(&keyed), fresh.len()),
            (vec!["r1"], 0),
            "adopted at open"
        );
        assert_eq!(l.replay(&[(seq, settle)], LEASE).unwrap(), 1);
        let (keyed, _) = stored_leases(&l);
        assert!(keyed.is_empty(), "the replayed settle removed its lease");
        assert!(l
            .release_expired(std::time::Duration::ZERO, now_ms() + 1)
            .unwrap()
            .is_empty());
        assert_eq!(l.balance("a").unwrap(), 880);
        assert_eq!(sum(&l, "a"), 880);
    }

    #[test]
    fn the_hand_written_encoding_is_serde_jsons() {
        let tx = |id: &str, note: Option<&str>, reservation: Option<&str>, amount| Transaction {
            id: id.to_owned(),
            ts_ms: 1_795_000_000_123,
            account: "acc \"q\"\\ \u{1}\t é".to_owned(),
            kind: "settle".to_owned(),
            amount_micros: amount,
            balance_micros: u64::MAX,
            request_id: Some("req-1".to_owned()),
            model: None,
            note: note.map(str::to_owned),
            reservation: reservation.map(str::to_owned),
        };
        for t in [
            tx("tx_1", Some("cost 5 micro-USD"), Some("tx_0"), -42),
            tx("tx_2", None, None, i64::MIN),
            tx("", Some("line\nbreak \u{7f} \u{1f}"), None, 0),
            tx("tx_3", Some(""), Some("r"), i64::MAX),
        ] {
            let mine = encode(&TxFields {
                id: &t.id,
                ts_ms: t.ts_ms,
                account: &t.account,
                kind: &t.kind,
                amount_micros: t.amount_micros,
                balance_micros: t.balance_micros,
                meta: (
                    t.request_id.as_deref(),
                    t.model.as_deref(),
                    t.note.as_deref(),
                ),
                reservation: t.reservation.as_deref(),
            })
            .unwrap();
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                serde_json::to_string(&t).unwrap()
            );
        }
        // Replayed from a journal someone edited: ids not of the ledger's making are still escaped.
        let edited = tx("tx\"4\\", None, Some("tx_\u{1}"), 7);
        let line = Queued::new(1, &edited, LeaseChange::None).unwrap().line;
        let back: Transaction = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, edited);
        assert_eq!(tx_id(1_795_000_000_123, 42), "tx_1795000000123_000042");
        assert_eq!(
            tx_id(5, 1_234_567),
            format!("tx_{:013}_{:06}", 5, 1_234_567)
        );
        let mut out = Vec::new();
        push_decimal(&mut out, u64::MAX, 1);
        push_decimal(&mut out, 0, 3);
        assert_eq!(out, format!("{}000", u64::MAX).into_bytes());
    }

    #[test]
    fn leases_are_encoded_as_serde_json_encodes_them() {
        for (tx, account, request_id, model) in [
            ("tx_1795000000123_000042", "acme", "req-1", "gpt-4o-mini"),
            ("tx_0", "a\"b\\c", "line\nbreak \u{7f}", ""),
            ("", "", "", "\u{1f}mod\u{e9}l"),
            // A replayed reserve whose id a hand-edited journal gave a quote.
            ("tx\"5", "acme", "req-2", "m"),
        ] {
            let fields = LeaseFields {
                tx,
                account,
                micros: u64::MAX,
                request_id,
                model,
                created_ms: 1_795_000_000_123,
                expires_ms: 0,
                boot: "0a1b2c",
            };
            let lease = Lease {
                tx: tx.to_owned(),
                account: account.to_owned(),
                micros: fields.micros,
                request_id: request_id.to_owned(),
                model: model.to_owned(),
                created_ms: fields.created_ms,
                expires_ms: fields.expires_ms,
                boot: fields.boot.to_owned(),
            };
            assert_eq!(
                String::from_utf8(encode_lease(&fields).unwrap()).unwrap(),
                serde_json::to_string(&lease).unwrap()
            );
        }
    }

    #[test]
    fn batch_keys_are_the_formatted_ones() {
        let (ts, seq) = (1_795_000_000_123, 0xabc_def);
        assert_eq!(
            batch_key("a/b", ts, seq),
            format!("{}{ts:016x}/{seq:016x}", tx_prefix("a/b")).into_bytes()
        );
    }

    #[test]
    fn a_balance_key_from_an_older_layout_is_the_starting_balance() {
        let store = Store::temporary().unwrap();
        let tree = store.open_tree(TREE).unwrap();
        tree.insert(balance_key("old"), &500u64.to_be_bytes()[..])
            .unwrap();
        let l = Ledger::open(&store).unwrap();
        assert_eq!(l.balance("old").unwrap(), 500);
        l.adjust("old", -200, None).unwrap();
        assert_eq!(l.balance("old").unwrap(), 300);
        assert_eq!(Ledger::open(&store).unwrap().balance("old").unwrap(), 300);
    }

    #[test]
    fn months_are_utc_calendar_months() {
        let day = 86_400_000;
        assert_eq!(month_of(0), "1970-01");
        assert_eq!(month_of(31 * day - 1), "1970-01");
        assert_eq!(month_of(31 * day), "1970-02");
        // 2024-02-29T23:59:59.999Z and the next millisecond (leap year).
        assert_eq!(month_of(1_709_251_199_999), "2024-02");
        assert_eq!(month_of(1_709_251_200_000), "2024-03");
        // 2000-02-29 exists (divisible by 400); 2100-02-29 does not.
        assert_eq!(month_of(951_782_400_000), "2000-02");
        assert_eq!(month_of(4_107_542_400_000), "2100-03");
        assert_eq!(month_of(1_798_761_599_999), "2026-12");
        assert_eq!(month_of(1_798_761_600_000), "2027-01");
        let ts = 1_795_000_000_000;
        assert_eq!(parse_month(month_of(ts).as_bytes()), Some(month_index(ts)));
        assert_eq!(parse_month(b"garbage"), None);
    }

    #[test]
    fn a_high_water_mark_only_rises_and_survives_a_restart() {
        let store = Store::temporary().unwrap();
        {
            let l = Ledger::open(&store).unwrap();
            assert_eq!(l.mark("a").unwrap(), (Mark::default(), None));
            l.raise_mark("a", Mark { epoch: 0, seq: 5 }, 700).unwrap();
            // An older answer (of a concurrent movement) arriving late moves nothing back.
            l.raise_mark("a", Mark { epoch: 0, seq: 3 }, 900).unwrap();
            assert_eq!(l.mark("a").unwrap(), (Mark { epoch: 0, seq: 5 }, Some(700)));
        }
        let l = Ledger::open(&store).unwrap();
        assert_eq!(l.mark("a").unwrap(), (Mark { epoch: 0, seq: 5 }, Some(700)));
        // A reseed's newer epoch, seen on any account, starts every account's count again.
        l.raise_mark("b", Mark { epoch: 9, seq: 1 }, 10).unwrap();
        assert_eq!(l.epoch(), 9);
        assert_eq!(l.mark("a").unwrap(), (Mark { epoch: 9, seq: 0 }, Some(700)));
        assert_eq!(Ledger::open(&store).unwrap().epoch(), 9);
    }

    /// The sequence of the transaction a fresh movement on `account` gets.
    fn next_seq_of(l: &Ledger, account: &str) -> u64 {
        seq_of(&l.adjust(account, 1, None).unwrap().id).unwrap()
    }

    #[test]
    fn a_reopened_ledger_draws_sequences_above_every_stored_one() {
        let store = Store::temporary().unwrap();
        let highest = {
            let l = Ledger::open(&store).unwrap();
            // "a" (hex 61) is a prefix of "ab" (6162), and "b" (62) sorts after both: the newest
            // transaction is in the account between the two, the one a careless walk would skip.
            for account in ["b", "a", "ab"] {
                l.adjust(account, 1_000, None).unwrap();
            }
            let mut highest = 0;
            for i in 0..200 {
                let r = l
                    .reserve("ab", None, 1, (&format!("r{i}"), "m"), LEASE)
                    .unwrap();
                l.settle(&r, 1).unwrap();
                highest = seq_of(&r.tx).unwrap();
            }
            l.write_pending().unwrap();
            highest + 1
        };
        // sled's own counter is far behind: the ledger no longer draws from it.
        assert!(store.next_id().unwrap() < highest);
        let l = Ledger::open(&store).unwrap();
        let next = next_seq_of(&l, "a");
        assert!(next > highest, "{next} after {highest}");
        assert_eq!(next_seq_of(&l, "b"), next + 1);
        assert_eq!(newest_stored_seq(&l.tree).unwrap(), next + 1);
    }

    #[test]
    fn sequences_start_above_sleds_counter_for_a_store_written_by_it() {
        let store = Store::temporary().unwrap();
        let drawn = (0..50).map(|_| store.next_id().unwrap()).max().unwrap();
        assert!(next_seq_of(&Ledger::open(&store).unwrap(), "a") > drawn);
    }

    #[test]
    fn the_newest_stored_sequence_walks_every_account() {
        let l = ledger();
        // Each account sorts somewhere else among the others (`""` first, `a/b` between `a` and `ab`):
        // the newest is found wherever it is.
        assert_eq!(newest_stored_seq(&l.tree).unwrap(), 0);
        let mut seqs = Vec::new();
        for account in ["a", "ab", "a/b", "b", "", "zz"] {
            seqs.push(next_seq_of(&l, account));
            assert_eq!(
                newest_stored_seq(&l.tree).unwrap(),
                *seqs.iter().max().unwrap(),
                "after {account:?}"
            );
        }
    }

    #[test]
    fn accounts_do_not_share_key_ranges() {
        let l = ledger();
        l.adjust("a", 5, None).unwrap();
        l.adjust("a/b", 7, None).unwrap();
        assert_eq!(l.transactions("a").unwrap().len(), 1);
        assert_eq!(month_of(0), "1970-01");
    }
}
