//! The credit ledger: one balance per account in sled, and a transaction record for every movement.
//!
//! Amounts are whole micro-USD (`u64`/`i64`), so sums are exact. Every movement runs under one mutex:
//! read the balance, decide, then write the new balance and its transaction in one sled batch (atomic
//! on disk too). A balance therefore never goes below zero, however many requests race, and the
//! transactions of an account always sum to its balance.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchyard_actors::store::{now_ms, Store, StoreError};

/// The sled tree holding balances, transactions, monthly grants and tier overrides.
pub const TREE: &str = "billing";

/// One credit movement. `amount_micros` is signed: grants, top-ups, refunds are positive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub ts_ms: u64,
    pub account: String,
    /// `grant` (monthly credits), `adjust` (admin or webhook), `reserve`, `settle`, `release`.
    pub kind: String,
    pub amount_micros: i64,
    /// The balance right after this movement.
    pub balance_micros: u64,
    pub request_id: Option<String>,
    pub model: Option<String>,
    pub note: Option<String>,
}

/// Credits set aside for one request until it is settled or released.
#[derive(Debug)]
pub struct Reservation {
    pub account: String,
    pub micros: u64,
    pub request_id: String,
    pub model: String,
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
    /// One lock for every movement: movements are a few microseconds of sled work, and a single lock is
    /// the simplest way to make read-decide-write exact across accounts and across the grant check.
    lock: Mutex<()>,
    /// Orders transactions written within the same millisecond.
    seq: AtomicU64,
}

/// Account ids are client-chosen text; hex keeps one account's key range from containing another's.
fn hex(account: &str) -> String {
    account.bytes().map(|b| format!("{b:02x}")).collect()
}

fn balance_key(account: &str) -> String {
    format!("v1/balance/{}", hex(account))
}

fn grant_key(account: &str) -> String {
    format!("v1/grant/{}", hex(account))
}

fn tx_prefix(account: &str) -> String {
    format!("v1/tx/{}/", hex(account))
}

/// `2026-11`: the UTC month a grant belongs to.
pub fn month_of(ts_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts_ms);
    humantime::format_rfc3339_seconds(t).to_string()[..7].to_owned()
}

impl Ledger {
    /// Opens the ledger in the store's `billing` tree.
    pub fn open(store: &Store) -> Result<Ledger, StoreError> {
        Ok(Ledger {
            tree: store.open_tree(TREE)?,
            lock: Mutex::new(()),
            seq: AtomicU64::new(0),
        })
    }

    /// The tree, for neighbours that keep small records beside the ledger (tier overrides).
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// The account's balance in micro-USD (0 when it never had credits).
    pub fn balance(&self, account: &str) -> Result<u64, LedgerError> {
        Ok(read_u64(&self.tree, &balance_key(account))?)
    }

    /// Applies one movement under the lock. `decide` sees the balance and returns the signed amount,
    /// or an error to refuse; the result may never go below zero.
    fn movement(
        &self,
        account: &str,
        kind: &str,
        meta: (Option<&str>, Option<&str>, Option<String>),
        decide: impl FnOnce(u64) -> Result<i64, LedgerError>,
    ) -> Result<Transaction, LedgerError> {
        let _guard = self.lock.lock();
        self.movement_locked(account, kind, meta, decide)
    }

    fn movement_locked(
        &self,
        account: &str,
        kind: &str,
        (request_id, model, note): (Option<&str>, Option<&str>, Option<String>),
        decide: impl FnOnce(u64) -> Result<i64, LedgerError>,
    ) -> Result<Transaction, LedgerError> {
        let balance = read_u64(&self.tree, &balance_key(account))?;
        let amount = decide(balance)?;
        let after = i128::from(balance) + i128::from(amount);
        let after = u64::try_from(after).map_err(|_| LedgerError::Insufficient {
            balance,
            needed: amount.unsigned_abs(),
        })?;
        let ts_ms = now_ms();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let tx = Transaction {
            id: format!("tx_{ts_ms:013}_{seq:06}"),
            ts_ms,
            account: account.to_owned(),
            kind: kind.to_owned(),
            amount_micros: amount,
            balance_micros: after,
            request_id: request_id.map(str::to_owned),
            model: model.map(str::to_owned),
            note,
        };
        let mut batch = sled::Batch::default();
        batch.insert(balance_key(account).as_bytes(), &after.to_be_bytes()[..]);
        batch.insert(
            format!("{}{ts_ms:016x}/{seq:016x}", tx_prefix(account)).as_bytes(),
            serde_json::to_vec(&tx)?,
        );
        self.tree.apply_batch(batch)?;
        Ok(tx)
    }

    /// Tops the balance up to `monthly` once per UTC month (credits bought above it are kept).
    fn grant_locked(&self, account: &str, monthly: u64) -> Result<(), LedgerError> {
        let month = month_of(now_ms());
        let key = grant_key(account);
        if self.tree.get(&key)?.as_deref() == Some(month.as_bytes()) {
            return Ok(());
        }
        let top_up = monthly.saturating_sub(read_u64(&self.tree, &balance_key(account))?);
        if top_up > 0 {
            self.movement_locked(
                account,
                "grant",
                (None, None, Some(format!("monthly credits for {month}"))),
                |_| Ok(i64::try_from(top_up).unwrap_or(0)),
            )?;
        }
        self.tree.insert(key, month.as_bytes())?;
        Ok(())
    }

    /// Sets `micros` aside for a request, after this month's grant; refused when the balance is short.
    pub fn reserve(
        &self,
        account: &str,
        monthly: Option<u64>,
        micros: u64,
        request_id: &str,
        model: &str,
    ) -> Result<Reservation, LedgerError> {
        let _guard = self.lock.lock();
        if let Some(monthly) = monthly {
            self.grant_locked(account, monthly)?;
        }
        self.movement_locked(
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
        )?;
        Ok(Reservation {
            account: account.to_owned(),
            micros,
            request_id: request_id.to_owned(),
            model: model.to_owned(),
        })
    }

    /// Charges the real cost: refunds what was set aside beyond it, or takes the excess (as far as the
    /// balance goes; the rest is noted, never overdrawn). Returns the micro-USD actually charged.
    pub fn settle(&self, r: &Reservation, cost: u64) -> Result<u64, LedgerError> {
        let tx = self.movement(
            &r.account,
            "settle",
            (
                Some(&r.request_id),
                Some(&r.model),
                Some(format!("cost {cost} micro-USD")),
            ),
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
        self.movement(
            &r.account,
            "release",
            (Some(&r.request_id), Some(&r.model), None),
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
        self.movement(account, "adjust", (None, None, note), |balance| {
            if micros < 0 && micros.unsigned_abs() > balance {
                return Err(LedgerError::Insufficient {
                    balance,
                    needed: micros.unsigned_abs(),
                });
            }
            Ok(micros)
        })
    }

    /// The account's transactions, oldest first.
    pub fn transactions(&self, account: &str) -> Result<Vec<Transaction>, LedgerError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(tx_prefix(account)) {
            let (k, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(|source| {
                LedgerError::Store(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    source,
                })
            })?);
        }
        Ok(out)
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
    fn reserve_settle_release_keep_the_log_equal_to_the_balance() {
        let l = ledger();
        l.adjust("a", 1_000, None).unwrap();
        let r = l.reserve("a", None, 600, "r1", "m").unwrap();
        assert_eq!(l.balance("a").unwrap(), 400);
        assert!(matches!(
            l.reserve("a", None, 600, "r2", "m"),
            Err(LedgerError::Insufficient { balance: 400, .. })
        ));
        assert_eq!(l.settle(&r, 250).unwrap(), 250);
        assert_eq!(l.balance("a").unwrap(), 750);
        let r = l.reserve("a", None, 700, "r3", "m").unwrap();
        l.release(&r).unwrap();
        assert_eq!(l.balance("a").unwrap(), 750);
        assert_eq!(sum(&l, "a"), 750);
    }

    #[test]
    fn a_cost_above_the_reservation_never_overdraws() {
        let l = ledger();
        l.adjust("a", 100, None).unwrap();
        let r = l.reserve("a", None, 80, "r", "m").unwrap();
        // 20 left; the real cost is 500: only 80 + 20 can be charged.
        assert_eq!(l.settle(&r, 500).unwrap(), 100);
        assert_eq!(l.balance("a").unwrap(), 0);
        assert_eq!(sum(&l, "a"), 0);
    }

    #[test]
    fn the_monthly_grant_tops_up_once() {
        let l = ledger();
        l.reserve("a", Some(1_000), 100, "r", "m").unwrap();
        assert_eq!(l.balance("a").unwrap(), 900);
        l.reserve("a", Some(1_000), 100, "r", "m").unwrap();
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
                std::thread::spawn(move || l.reserve("a", None, 100, &format!("r{i}"), "m").is_ok())
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
    fn accounts_do_not_share_key_ranges() {
        let l = ledger();
        l.adjust("a", 5, None).unwrap();
        l.adjust("a/b", 7, None).unwrap();
        assert_eq!(l.transactions("a").unwrap().len(), 1);
        assert_eq!(month_of(0), "1970-01");
    }
}
