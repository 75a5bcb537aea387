//! A model call's admission decided together with what it holds: the windows, the daily token hold
//! and the credit reservation (with Redis, sent together so the call waits for one round trip), and
//! how a call refused after part of it was granted gives that part back.

use std::sync::Arc;

use super::credits::{self, LedgerError, Reservation};
use super::shared_credits::TokensAt;
use super::{insufficient, CallKind, Limits, RateStatus, Refusal, Subject};
use crate::config::Config;
use crate::shared::Shared;

/// A credit reservation a call asks for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Credits<'a> {
    pub(super) account: &'a str,
    pub(super) monthly: u64,
    pub(super) tier: &'a str,
    pub(super) micros: u64,
    pub(super) request_id: &'a str,
    pub(super) model: &'a str,
}

/// What a call holds once admitted: its daily-budget tokens (and where), its credit reservation.
pub(super) struct Decided {
    pub(super) tokens: Option<(u64, TokensAt)>,
    pub(super) reservation: Option<Reservation>,
}

impl Decided {
    /// Gives back everything held, for a call refused after it was admitted; returns `refusal`.
    pub(super) fn give_back(
        self,
        limits: &Arc<Limits>,
        subject: Option<&Subject>,
        refusal: Box<Refusal>,
    ) -> Box<Refusal> {
        if let (Some((held, at)), Some(s)) = (self.tokens, subject) {
            limits.unhold_later(&s.id, at, held);
        }
        if let Some(res) = self.reservation {
            limits.release_later(res);
        }
        refusal
    }
}

impl Limits {
    /// With Redis: the call's windows and token hold (one script) and its credit reservation
    /// (another: credits are under the account's hash tag, not the subject's) sent together, so the
    /// call waits for one round trip. Today's sequence decides what the client sees: a refusal of
    /// the first wins, and gives back the reservation the second made; a credit refusal gives
    /// back the tokens (the call stays counted in its windows, as in local mode). After a failure
    /// (the breaker not closed) they go one by one, so the first is the breaker's one probe. Returns
    /// the admission's `X-RateLimit-*` (empty when it refused: the refusal carries its own).
    pub(super) async fn admit_and_reserve(
        self: &Arc<Self>,
        config: &Config,
        shared: &Shared,
        s: &Subject,
        (kind, tokens): (CallKind, Option<(u64, u64)>),
        credits: Option<Credits<'_>>,
    ) -> (RateStatus, Result<Decided, Box<Refusal>>) {
        let lease = config.usage.reservation_lease;
        let allowance = match &config.state {
            crate::config::StateBackend::Redis(r) => r.credit_allowance_micros,
            crate::config::StateBackend::Local => 0,
        };
        let admit = self.admit_holding_shared(shared, s, kind, (tokens, lease));
        let (admitted, reserved) = match credits {
            Some(c) => {
                // Futures do nothing until polled: this one is sent with `admit`, or after it.
                let reserve = self.reserve_shared(
                    shared,
                    (c.account, c.monthly, c.tier),
                    c.micros,
                    (c.request_id, c.model),
                    (lease, allowance),
                );
                if shared.is_closed() {
                    let (a, r) = tokio::join!(admit, reserve);
                    (a, Some(r))
                } else {
                    match admit.await {
                        Ok(a) => (Ok(a), Some(reserve.await)),
                        Err(refusal) => (Err(refusal), None),
                    }
                }
            }
            None => (admit.await, None),
        };
        let (rate, tokens) = match admitted {
            Ok(a) => a,
            Err(refusal) => {
                if let Some(Ok(res)) = reserved {
                    self.release_later(res);
                }
                return (RateStatus::default(), Err(refusal));
            }
        };
        let reservation = match reserved {
            Some(Ok(res)) => Some(res),
            Some(Err(refusal)) => {
                if matches!(*refusal, Refusal::Insufficient(_)) {
                    self.metrics.credit_refusals.inc();
                }
                let held = Decided {
                    tokens,
                    reservation: None,
                };
                return (rate, Err(held.give_back(self, Some(s), refusal)));
            }
            None => None,
        };
        (
            rate,
            Ok(Decided {
                tokens,
                reservation,
            }),
        )
    }

    /// Local mode, after the admission: the daily budget's hold, then the ledger's reservation
    /// (the hold given back if it refuses).
    pub(super) fn hold_local(
        self: &Arc<Self>,
        config: &Config,
        subject: Option<&Subject>,
        tokens: Option<(u64, u64)>,
        credits: Option<Credits<'_>>,
    ) -> Result<Decided, Box<Refusal>> {
        let tokens = match subject.zip(tokens) {
            Some((s, (limit, estimate))) => {
                Some((self.hold_tokens(s, limit, estimate)?, TokensAt::Local))
            }
            None => None,
        };
        let held = Decided {
            tokens,
            reservation: None,
        };
        let Some(c) = credits else {
            return Ok(held);
        };
        let reserved = self.ledger.reserve(
            c.account,
            Some(c.monthly),
            c.micros,
            (c.request_id, c.model),
            config.usage.reservation_lease,
        );
        match reserved {
            Ok(r) => Ok(Decided {
                reservation: Some(r),
                ..held
            }),
            Err(LedgerError::Insufficient { balance, needed }) => {
                self.metrics.credit_refusals.inc();
                let refusal = insufficient(balance, needed, c.tier);
                Err(held.give_back(self, subject, refusal))
            }
            Err(LedgerError::Store(e)) => {
                tracing::error!(error = %e, "credit reservation failed");
                let refusal = Box::new(Refusal::Store(e.to_string()));
                Err(held.give_back(self, subject, refusal))
            }
        }
    }

    /// Gives back `held` tokens of `subject`'s daily budget where they were held (a round trip to
    /// Redis is spawned, not awaited).
    pub(super) fn unhold_later(self: &Arc<Self>, subject: &str, at: TokensAt, held: u64) {
        match at {
            TokensAt::Local => {
                self.unhold(subject, held);
            }
            TokensAt::Shared { .. } => {
                let (limits, subject) = (self.clone(), subject.to_owned());
                actix_web::rt::spawn(async move {
                    limits.settle_tokens(&subject, at, 0, held).await;
                });
            }
        }
    }

    /// Releases a reservation in full where it was made (a round trip to Redis is spawned, not
    /// awaited).
    pub(super) fn release_later(self: &Arc<Self>, res: Reservation) {
        if res.source != credits::Source::Local {
            let limits = self.clone();
            actix_web::rt::spawn(async move {
                limits.close_shared(&res, None).await;
            });
        } else if let Err(e) = self.ledger.release(&res) {
            tracing::error!(error = %e, "credit release failed");
        }
    }
}
