//! Credits and the daily token budget decided in Redis for the whole fleet (`state.backend: redis`),
//! and what a replica does when Redis cannot decide them.
//!
//! Redis is the source of truth for balances, reservations and the transaction log (see
//! `shared::credits`); the local ledger keeps tier overrides, billing event ids and each account's
//! high-water mark (the newest `(epoch, seq)` this replica saw, so a Redis restored from an old
//! snapshot is noticed). Credits fail closed: a 503 with `Retry-After` while Redis is unreachable
//! or behind the mark, unless `state.redis.credit_allowance_usd` lets this replica spend that much
//! per account alone; that spend is charged into Redis (once, by its id) when it is back. Settles
//! that could not reach Redis are replayed too: a settle is idempotent by its reservation id.
//! The token budget falls back to this replica's share of it, like the request limits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_actors::store::now_ms;

use super::credits::{month_of, Source};
use super::{insufficient, Limits, Refusal, Reservation, Transaction};
use crate::error::ApiError;
use crate::shared::credits::{CreditAnswer, Movement, Outcome};
use crate::shared::{Resource, Shared, SharedError};

/// Seconds a client is told to wait when credits cannot be decided.
pub const RETRY_SECS: u64 = 5;

/// What this replica still has to tell Redis.
#[derive(Debug, Clone)]
enum Owed {
    /// A settle that did not reach Redis.
    Settle {
        account: String,
        reservation: String,
        cost: u64,
    },
    /// Spend under the allowance, charged once by `id` when Redis is back.
    Charge {
        account: String,
        id: String,
        cost: u64,
    },
}

/// Per process: the allowance spent (or held) per account while Redis was away, and what is owed.
#[derive(Default)]
pub(super) struct Away {
    spent: Mutex<HashMap<String, u64>>,
    owed: Mutex<Vec<Owed>>,
}

/// Where a call's daily-budget tokens are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokensAt {
    /// This process's windows (local mode, or this replica's share while Redis is away).
    Local,
    /// Redis, on the day starting at `day` (Unix ms), as hold `id`.
    Shared { day: u64, id: u64 },
}

fn unavailable(why: &str) -> Box<Refusal> {
    Box::new(Refusal::Unavailable {
        message: format!("Credits cannot be checked right now ({why}). Retry in {RETRY_SECS} s."),
        retry_after: RETRY_SECS,
    })
}

impl Limits {
    fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// One movement on `account` in Redis, with this replica's mark; a newer mark is remembered.
    pub(super) async fn credit_move(
        &self,
        shared: &Shared,
        account: &str,
        movement: Movement<'_>,
    ) -> Result<CreditAnswer, SharedError> {
        let (mark, seen) = self
            .ledger
            .mark(account)
            .map_err(|_| SharedError::Answer("the local high-water mark"))?;
        // A cold account starts from what this replica knew of it: the last balance it saw in
        // Redis, else its own ledger's (the balance from before the state was shared).
        let seed = match seen {
            Some(b) => b,
            None => self.ledger.balance(account).unwrap_or(0),
        };
        let answer = shared.credit_move(account, mark, seed, movement).await;
        match &answer {
            Ok(a) if a.outcome != Outcome::Behind => {
                if let Err(e) = self.ledger.raise_mark(account, a.mark, a.balance) {
                    tracing::error!(error = %e, "cannot store the credits' high-water mark");
                }
                shared.set_degraded(Resource::Credits, false);
            }
            Ok(a) => {
                tracing::error!(account, redis = ?a.mark, mark = ?mark, "redis holds credits older than this replica has seen (restored from an old snapshot?): credits refused until an operator reseeds");
                shared.set_degraded(Resource::Credits, true);
            }
            Err(_) => shared.set_degraded(Resource::Credits, true),
        }
        answer
    }

    /// Reserves `micros` of `account` in Redis (after the monthly grant), or from this replica's
    /// allowance while Redis cannot decide.
    pub(super) async fn reserve_shared(
        &self,
        shared: &Shared,
        (account, monthly, tier): (&str, u64, &str),
        micros: u64,
        (request_id, model): (&str, &str),
        (lease, allowance): (Duration, u64),
    ) -> Result<Reservation, Box<Refusal>> {
        let now = now_ms();
        let month = month_of(now);
        let movement = Movement::Reserve {
            micros,
            request_id,
            model,
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            monthly: Some(monthly),
            month: &month,
        };
        let reservation = |source, tx| Reservation {
            source,
            account: account.to_owned(),
            micros,
            request_id: request_id.to_owned(),
            model: model.to_owned(),
            tx,
        };
        match self.credit_move(shared, account, movement).await {
            Ok(a) => match a.outcome {
                Outcome::Done => Ok(reservation(Source::Shared, a.extra)),
                Outcome::Insufficient => Err(insufficient(a.balance, micros, tier)),
                Outcome::Behind => Err(unavailable(
                    "the shared state is behind what this replica has seen, and waits for an operator's reseed",
                )),
                Outcome::Closed => Err(unavailable("unexpected answer")),
            },
            Err(_) if allowance > 0 => {
                let mut spent = self.away.spent.lock();
                let used = spent.entry(account.to_owned()).or_insert(0);
                if used.saturating_add(micros) > allowance {
                    return Err(unavailable(
                        "the shared state is unreachable and this replica's allowance is spent",
                    ));
                }
                *used += micros;
                let id = format!("away_{}", uuid::Uuid::new_v4().simple());
                Ok(reservation(Source::Allowance, id))
            }
            Err(_) => Err(unavailable("the shared state is unreachable")),
        }
    }

    /// Settles a reservation to `cost` (or with `None` gives it back), wherever it was made. Returns
    /// the micro-USD charged and the balance after it, when known.
    pub(super) async fn close_shared(
        &self,
        r: &Reservation,
        cost: Option<u64>,
    ) -> (u64, Option<u64>) {
        let Some(shared) = self.shared().cloned() else {
            return (0, None);
        };
        if r.source == Source::Allowance {
            let mut spent = self.away.spent.lock();
            if let Some(used) = spent.get_mut(&r.account) {
                // What the reservation held becomes what was charged.
                *used = used
                    .saturating_sub(r.micros)
                    .saturating_add(cost.unwrap_or(0));
            }
            drop(spent);
            if let Some(cost) = cost.filter(|c| *c > 0) {
                self.away.owed.lock().push(Owed::Charge {
                    account: r.account.clone(),
                    id: r.tx.clone(),
                    cost,
                });
            }
            return (cost.unwrap_or(0), None);
        }
        let movement = Movement::Close {
            reservation: &r.tx,
            cost,
        };
        match self.credit_move(&shared, &r.account, movement).await {
            Ok(a) if a.outcome == Outcome::Done => (a.extra.parse().unwrap_or(0), Some(a.balance)),
            // Already closed: its lease ran out first, or this is a replay.
            Ok(a) if a.outcome == Outcome::Closed => (0, Some(a.balance)),
            answer => {
                match cost {
                    // Replayed until Redis takes it (idempotent by reservation id); a release is
                    // not: the reservation's lease gives it back.
                    Some(cost) => {
                        tracing::warn!(account = %r.account, request_id = %r.request_id, ?answer, "settle not taken by redis: replayed when it is back");
                        self.away.owed.lock().push(Owed::Settle {
                            account: r.account.clone(),
                            reservation: r.tx.clone(),
                            cost,
                        });
                    }
                    None => {
                        tracing::warn!(account = %r.account, request_id = %r.request_id, "release not taken by redis: its lease gives it back")
                    }
                }
                (cost.unwrap_or(0), None)
            }
        }
    }

    /// Sends Redis what this replica owes it (settles that did not reach it, spend under the
    /// allowance). What Redis still cannot take stays owed, in order.
    pub async fn repay(&self) {
        let Some(shared) = self.shared().cloned() else {
            return;
        };
        let owed = std::mem::take(&mut *self.away.owed.lock());
        let mut left = Vec::new();
        for (i, item) in owed.iter().enumerate() {
            let answer = match item {
                Owed::Settle {
                    account,
                    reservation,
                    cost,
                } => {
                    let m = Movement::Close {
                        reservation,
                        cost: Some(*cost),
                    };
                    self.credit_move(&shared, account, m).await
                }
                Owed::Charge { account, id, cost } => {
                    let m = Movement::Adjust {
                        micros: -i64::try_from(*cost).unwrap_or(i64::MAX),
                        kind: "settle",
                        note: "spent under this replica's allowance while the shared state was unreachable",
                        charge: Some(id),
                    };
                    self.credit_move(&shared, account, m).await
                }
            };
            match answer {
                Ok(a) if a.outcome != Outcome::Behind => {
                    if let Owed::Charge { account, cost, .. } = item {
                        if let Some(used) = self.away.spent.lock().get_mut(account) {
                            *used = used.saturating_sub(*cost);
                        }
                    }
                }
                // Redis is still away (or behind): keep this and everything after it.
                _ => {
                    left.extend(owed[i..].iter().cloned());
                    break;
                }
            }
        }
        if !left.is_empty() {
            let mut owed = self.away.owed.lock();
            left.append(&mut owed);
            *owed = left;
        }
    }

    /// Repays every second, while the process runs.
    pub async fn run_repayment(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !self.away.owed.lock().is_empty() {
                self.repay().await;
            }
        }
    }

    /// The account's balance: from Redis when the state is shared.
    pub async fn balance_of(&self, account: &str) -> Result<u64, ApiError> {
        let Some(shared) = self.shared().cloned() else {
            return self
                .ledger
                .balance(account)
                .map_err(|e| ApiError::Internal(format!("ledger: {e}")));
        };
        let a = self
            .credit_move(&shared, account, Movement::Read)
            .await
            .map_err(|_| ApiError::from(*unavailable("the shared state is unreachable")))?;
        if a.outcome == Outcome::Behind {
            return Err(unavailable("the shared state is behind its high-water mark").into());
        }
        Ok(a.balance)
    }

    /// The account's balance and transactions: from Redis when the state is shared.
    pub async fn credits_of(&self, account: &str) -> Result<(u64, Vec<Transaction>), ApiError> {
        let store = |e: super::LedgerError| ApiError::Internal(format!("ledger: {e}"));
        let Some(shared) = self.shared().cloned() else {
            let balance = self.ledger.balance(account).map_err(store)?;
            return Ok((balance, self.ledger.transactions(account).map_err(store)?));
        };
        let a = self
            .credit_move(&shared, account, Movement::Read)
            .await
            .map_err(|_| ApiError::from(*unavailable("the shared state is unreachable")))?;
        if a.outcome == Outcome::Behind {
            return Err(unavailable("the shared state is behind its high-water mark").into());
        }
        let log = shared
            .credit_log(account)
            .await
            .map_err(|_| ApiError::from(*unavailable("the shared state is unreachable")))?;
        let txs = log
            .iter()
            .map(|line| serde_json::from_str(line))
            .collect::<Result<Vec<Transaction>, _>>()
            .map_err(|e| ApiError::Internal(format!("a transaction in redis: {e}")))?;
        // The newest transaction carries the balance after it: read with the log in one command,
        // it matches the log even when a movement landed after the read above.
        let balance = txs.last().map_or(a.balance, |t| t.balance_micros);
        Ok((balance, txs))
    }

    /// An operator's or the billing webhook's adjustment (a debit beyond the balance refused): in
    /// Redis when the state is shared.
    pub async fn adjust_credits(
        &self,
        account: &str,
        micros: i64,
        note: Option<String>,
    ) -> Result<Transaction, ApiError> {
        let Some(shared) = self.shared().cloned() else {
            return self
                .ledger
                .adjust(account, micros, note)
                .map_err(super::events::ledger_error);
        };
        let m = Movement::Adjust {
            micros,
            kind: "adjust",
            note: note.as_deref().unwrap_or_default(),
            charge: None,
        };
        let a = self
            .credit_move(&shared, account, m)
            .await
            .map_err(|_| ApiError::from(*unavailable("the shared state is unreachable")))?;
        match a.outcome {
            Outcome::Done => serde_json::from_str(&a.extra)
                .map_err(|e| ApiError::Internal(format!("a transaction in redis: {e}"))),
            Outcome::Insufficient => Err(super::events::ledger_error(
                super::LedgerError::Insufficient {
                    balance: a.balance,
                    needed: micros.unsigned_abs(),
                },
            )),
            _ => Err(unavailable("the shared state is behind its high-water mark").into()),
        }
    }

    /// The operator's reseed after Redis lost credits (restored from an old snapshot, or emptied):
    /// raises the epoch, so every replica accepts Redis as it now is, then sets the given balances
    /// (their open reservations forgotten). Returns the new epoch.
    pub async fn reseed(&self, balances: &[(String, u64)]) -> Result<u64, ApiError> {
        let Some(shared) = self.shared().cloned() else {
            return Err(ApiError::NotFound(
                "There is no shared state to reseed: `state.backend` is `local`.".into(),
            ));
        };
        let at_least = now_ms().max(self.ledger.epoch() + 1);
        let epoch = shared
            .raise_credit_epoch(at_least)
            .await
            .map_err(|_| ApiError::from(*unavailable("the shared state is unreachable")))?;
        for (account, micros) in balances {
            let m = Movement::Set {
                micros: *micros,
                note: "reseeded by an operator",
            };
            let a = self
                .credit_move(&shared, account, m)
                .await
                .map_err(|_| ApiError::from(*unavailable("the shared state is unreachable")))?;
            if a.outcome != Outcome::Done {
                return Err(unavailable("the shared state changed during the reseed").into());
            }
        }
        Ok(epoch)
    }

    /// Counts `used` tokens (and gives back what the call held) where they were held.
    pub(super) async fn settle_tokens(&self, subject: &str, at: TokensAt, used: u64, held: u64) {
        match (at, self.shared()) {
            (TokensAt::Shared { day, id }, Some(shared)) => {
                if let Err(e) = shared.settle_budget(subject, day, used, id).await {
                    // The hold lapses with the day's key; the tokens used go uncounted.
                    tracing::warn!(error = %e, "daily token budget not settled in redis");
                }
            }
            _ => {
                if used > 0 {
                    self.add_tokens(subject, used, held);
                } else {
                    self.unhold(subject, held);
                }
            }
        }
    }

    /// Claims the notice for `account` crossing `permille` in `month`, once for the whole fleet.
    pub(super) async fn claim_notice_shared(
        &self,
        account: &str,
        month: &str,
        permille: u32,
    ) -> bool {
        let Some(shared) = self.shared() else {
            return false;
        };
        let name = format!(
            "{}:notice:{month}:{permille:04}",
            crate::shared::credits::account_tag(account)
        );
        // Kept past the month's end, so a notice is never sent twice in it.
        let keep = Duration::from_secs(40 * 24 * 3600);
        match shared.claim_once(Resource::Credits, &name, keep).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a credit notice in redis: not sent");
                false
            }
        }
    }
}
