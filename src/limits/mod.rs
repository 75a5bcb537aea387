//! Tiers, request rate limits, daily token budgets and credits: what a caller may still do, and the
//! accounting of what it did.
//!
//! Request limits are exact fixed-window counters: one counter per (subject, limit), checked and
//! incremented under one mutex, so 200 concurrent requests against a limit of 100 let exactly 100
//! through, and `Retry-After` is exactly the time until the window ends (windows are aligned to the
//! Unix epoch, so every process agrees on them). A sliding window would smooth the burst at a window's
//! edge but makes "when may I retry" a guess; governor's GCRA spreads the budget evenly instead of
//! allowing a burst and needs its own quota arithmetic to report "remaining" exactly.

pub mod credits;
pub mod events;
pub mod usage;
pub mod webhook;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use switchyard_actors::store::{now_ms, Store, StoreError, UsageRecord};

use crate::auth::Principal;
use crate::config::{Config, ModelPrice, TierConfig};
use crate::error::{ApiError, RateHeaders};
use crate::metrics::Metrics;
pub use credits::{Ledger, LedgerError, Reservation, Transaction};

/// The tier used for callers whose tier is unset or unknown, when the config defines it.
pub const DEFAULT_TIER: &str = "default";
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Output tokens reserved for when neither the request nor the tier bounds `max_tokens`.
const DEFAULT_MAX_OUTPUT: u64 = 4096;

/// What kind of `/v1` call is being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Chat, completions, embeddings, messages: counted by `llm_requests_per_hour` too.
    Llm,
    /// Everything else under `/v1`.
    Other,
    /// The caller's own account routes (`/v1/me`, `/v1/keys`): never counted nor refused, so a caller
    /// over its limit can still see why; the answer still carries the current `X-RateLimit-*`.
    Uncounted,
}

/// The caller as the limits see it: whose counters, which tier.
#[derive(Debug, Clone)]
pub struct Subject {
    /// `account:<id>` or `key:<id>`: whose counters.
    pub id: String,
    /// The account credits are drawn from; keys without an account are not metered.
    pub account: Option<String>,
    pub tier_name: String,
    pub tier: TierConfig,
}

/// One fixed window's count.
#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: u64,
    len_ms: u64,
    count: u64,
}

impl Window {
    /// The window containing `now`, carrying the count over only when it is the same window.
    fn current(prev: Option<Window>, now: u64, len_ms: u64) -> Window {
        let start_ms = now - now % len_ms;
        match prev {
            Some(w) if w.start_ms == start_ms && w.len_ms == len_ms => w,
            _ => Window {
                start_ms,
                len_ms,
                count: 0,
            },
        }
    }

    fn reset_secs(&self, now: u64) -> u64 {
        (self.start_ms + self.len_ms)
            .saturating_sub(now)
            .div_ceil(1000)
            .max(1)
    }
}

/// The `X-RateLimit-*` values of one admitted (or refused) call.
pub type RateStatus = RateHeaders;

/// Why a call was refused before anything was sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A request limit or the daily token budget is spent (429).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: u64,
        rate: RateStatus,
    },
    /// `max_tokens` is above the tier's `max_tokens_per_request` (400).
    #[error("{0}")]
    MaxTokens(String),
    /// The account's credits cannot cover the request (402).
    #[error("{0}")]
    Insufficient(String),
    /// The ledger failed (500); logged where it happened.
    #[error("credit reservation failed: {0}")]
    Store(String),
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r {
            Refusal::RateLimited {
                message,
                retry_after,
                rate,
            } => ApiError::RateLimited {
                message,
                code: "rate_limit_exceeded",
                retry_after,
                rate,
            },
            Refusal::MaxTokens(message) => ApiError::InvalidRequest {
                message,
                param: Some("max_tokens"),
                code: Some("max_tokens_exceeded"),
            },
            Refusal::Insufficient(message) => ApiError::InsufficientQuota(message),
            Refusal::Store(detail) => ApiError::Internal(detail),
        }
    }
}

impl From<Box<Refusal>> for ApiError {
    fn from(r: Box<Refusal>) -> ApiError {
        ApiError::from(*r)
    }
}

/// A `/v1` call let through: whose it is, and the headers every answer to it carries.
#[derive(Debug, Default)]
pub struct Admission {
    pub subject: Option<Subject>,
    pub rate: RateStatus,
}

/// Tiers, counters, credits. One per process, shared by every worker.
pub struct Limits {
    /// (subject, limit name) -> window. A plain mutex: the critical section is a hash lookup and an
    /// add, and one lock makes checking several limits and counting them a single atomic step.
    windows: Mutex<HashMap<(String, &'static str), Window>>,
    pub ledger: Ledger,
    /// Account -> tier set through the admin API or the billing webhook; read on every call, so cached.
    tier_overrides: DashMap<String, String>,
    metrics: Arc<Metrics>,
}

impl Limits {
    /// Opens the ledger and loads the tier overrides.
    pub fn new(store: &Store, metrics: Arc<Metrics>) -> Result<Limits, StoreError> {
        let ledger = Ledger::open(store)?;
        let tier_overrides: DashMap<String, String> =
            ledger.tier_overrides()?.into_iter().collect();
        Ok(Limits {
            windows: Mutex::new(HashMap::new()),
            ledger,
            tier_overrides,
            metrics,
        })
    }

    /// Sets (or with `None` clears) an account's tier; it takes precedence over the key's and the
    /// account record's tier.
    pub fn set_tier(&self, account: &str, tier: Option<&str>) -> Result<(), StoreError> {
        self.ledger.store_tier_override(account, tier)?;
        match tier {
            Some(t) => self.tier_overrides.insert(account.to_owned(), t.to_owned()),
            None => self.tier_overrides.remove(account).map(|(_, t)| t),
        };
        Ok(())
    }

    /// The account's tier override, if any.
    pub fn tier_override(&self, account: &str) -> Option<String> {
        self.tier_overrides.get(account).map(|t| t.clone())
    }

    /// Whose counters and which tier, or `None` when no tier applies (anonymous callers, the admin
    /// token, or a config without a matching tier nor a `default` one).
    pub fn subject(&self, config: &Config, principal: Option<&Principal>) -> Option<Subject> {
        let p = principal.filter(|_| !config.tiers.is_empty())?;
        let id = match (&p.account, p.key_id()) {
            (Some(a), _) => format!("account:{a}"),
            (None, Some(k)) => format!("key:{k}"),
            (None, None) => return None,
        };
        let wanted = p
            .account
            .as_deref()
            .and_then(|a| self.tier_override(a))
            .or_else(|| p.tier.clone());
        let (tier_name, tier) = wanted
            .and_then(|w| config.tiers.get_key_value(w.as_str()))
            .or_else(|| config.tiers.get_key_value(DEFAULT_TIER))?;
        Some(Subject {
            id,
            account: p.account.clone(),
            tier_name: tier_name.clone(),
            tier: tier.clone(),
        })
    }

    /// Resolves the caller's tier and counts the call (see `admit`).
    pub fn admit_principal(
        &self,
        config: &Config,
        principal: Option<&Principal>,
        kind: CallKind,
    ) -> Result<Admission, Box<Refusal>> {
        let subject = self.subject(config, principal);
        let rate = match &subject {
            Some(s) => self.admit(s, kind)?,
            None => RateStatus::default(),
        };
        Ok(Admission { subject, rate })
    }

    /// Counts one call against the subject's request limits, or refuses it (429) when any limit — the
    /// daily token budget included — is spent. Nothing is counted for a refused call.
    pub fn admit(&self, s: &Subject, kind: CallKind) -> Result<RateStatus, Box<Refusal>> {
        let now = now_ms();
        let window_ms = u64::try_from(s.tier.rate_window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let day_ms = u64::try_from(DAY.as_millis()).unwrap_or(u64::MAX);
        let mut checks: Vec<(&'static str, u64)> = Vec::with_capacity(2);
        if let Some(limit) = s.tier.requests_per_hour {
            checks.push(("requests", limit));
        }
        if let (CallKind::Llm, Some(limit)) = (kind, s.tier.llm_requests_per_hour) {
            checks.push(("llm_requests", limit));
        }
        let mut windows = self.windows.lock();
        let mut status = RateStatus::default();
        // First look (so a refusal still reports every limit), then count only if all have room.
        let mut current = Vec::with_capacity(checks.len());
        let mut full = None;
        for (name, limit) in &checks {
            let key = (s.id.clone(), *name);
            let w = Window::current(windows.get(&key).copied(), now, window_ms);
            let remaining = limit.saturating_sub(w.count);
            let reset = w.reset_secs(now);
            if status.requests.is_none_or(|(_, r, _)| remaining < r) {
                status.requests = Some((*limit, remaining, reset));
            }
            if remaining == 0 && full.is_none() {
                full = Some((*name, *limit, reset));
            }
            current.push((key, w, *limit));
        }
        if let Some(limit) = s.tier.tokens_per_day {
            let w = Window::current(windows.get(&(s.id.clone(), "tokens")).copied(), now, day_ms);
            let reset = w.reset_secs(now);
            status.tokens = Some((limit, limit.saturating_sub(w.count), reset));
            if w.count >= limit && full.is_none() {
                full = Some(("tokens", limit, reset));
            }
        }
        if kind == CallKind::Uncounted {
            return Ok(status);
        }
        if let Some((scope, limit, reset)) = full {
            drop(windows);
            return Err(self.rate_refusal(s, scope, limit, reset, status));
        }
        status.requests = None;
        for (key, mut w, limit) in current {
            w.count += 1;
            let remaining = limit - w.count;
            let reset = w.reset_secs(now);
            if status.requests.is_none_or(|(_, r, _)| remaining < r) {
                status.requests = Some((limit, remaining, reset));
            }
            windows.insert(key, w);
        }
        Ok(status)
    }

    fn rate_refusal(
        &self,
        s: &Subject,
        scope: &'static str,
        limit: u64,
        reset: u64,
        rate: RateStatus,
    ) -> Box<Refusal> {
        self.metrics.rate_limited.with_label_values(&[scope]).inc();
        let what = match scope {
            "tokens" => format!("{limit} tokens per day"),
            "llm_requests" => format!(
                "{limit} model requests per {}",
                humantime::format_duration(s.tier.rate_window)
            ),
            _ => format!(
                "{limit} requests per {}",
                humantime::format_duration(s.tier.rate_window)
            ),
        };
        Box::new(Refusal::RateLimited {
            message: format!(
                "Rate limit reached: the `{}` tier allows {what}. Retry in {reset} s.",
                s.tier_name
            ),
            retry_after: reset,
            rate,
        })
    }

    /// Counts tokens used against the subject's daily budget.
    fn add_tokens(&self, subject: &str, tokens: u64) {
        let now = now_ms();
        let day_ms = u64::try_from(DAY.as_millis()).unwrap_or(u64::MAX);
        let key = (subject.to_owned(), "tokens");
        let mut windows = self.windows.lock();
        let mut w = Window::current(windows.get(&key).copied(), now, day_ms);
        w.count = w.count.saturating_add(tokens);
        windows.insert(key, w);
    }

    /// Checks `max_tokens` against the tier and reserves the request's largest possible cost. The hold
    /// settles to the real cost when an attempt answers (see `Hold::attempt_finished`) and gives the
    /// reservation back if none does.
    #[allow(clippy::too_many_arguments)]
    pub fn hold(
        self: &Arc<Self>,
        config: &Config,
        subject: Option<&Subject>,
        model: &str,
        body: &[u8],
        embeddings: bool,
        request_id: &str,
    ) -> Result<Option<Arc<Hold>>, Box<Refusal>> {
        let price = config.pricing.get(model).copied();
        if subject.is_none() && price.is_none() {
            return Ok(None);
        }
        let asked = requested_max_tokens(body);
        let cap = subject.and_then(|s| s.tier.max_tokens_per_request);
        if let (Some(asked), Some(cap), Some(s)) = (asked, cap, subject) {
            if asked > cap {
                return Err(Box::new(Refusal::MaxTokens(format!(
                    "max_tokens is {asked}, above the `{}` tier's max_tokens_per_request of {cap}.",
                    s.tier_name
                ))));
            }
        }
        let mut reservation = None;
        let metered = subject.and_then(|s| {
            s.tier
                .monthly_credits_micros
                .and_then(|m| s.account.as_ref().map(|a| (s, a, m)))
        });
        if let (Some((s, account, monthly)), Some(price)) = (metered, price) {
            let output = if embeddings {
                0
            } else {
                asked.or(cap).unwrap_or(DEFAULT_MAX_OUTPUT)
            };
            // Every prompt token is at least one byte of the body: the body's size bounds the input.
            let input = u64::try_from(body.len()).unwrap_or(u64::MAX);
            let micros = cost_micros(price, input, output);
            match self
                .ledger
                .reserve(account, Some(monthly), micros, request_id, model)
            {
                Ok(r) => reservation = Some(r),
                Err(LedgerError::Insufficient { balance, needed }) => {
                    self.metrics.credit_refusals.inc();
                    return Err(Box::new(Refusal::Insufficient(format!(
                        "Your credits (${}) cannot cover this request (up to ${}). Lower max_tokens, \
                         add credits or upgrade from the `{}` tier.",
                        usd(balance),
                        usd(needed),
                        s.tier_name
                    ))));
                }
                Err(LedgerError::Store(e)) => {
                    tracing::error!(error = %e, "credit reservation failed");
                    return Err(Box::new(Refusal::Store(e.to_string())));
                }
            }
        }
        Ok(Some(Arc::new(Hold {
            limits: self.clone(),
            subject: subject
                .filter(|s| s.tier.tokens_per_day.is_some())
                .map(|s| s.id.clone()),
            price,
            reservation: Mutex::new(reservation),
            settled: AtomicBool::new(false),
        })))
    }
}

/// The ledger's queued transactions ride with the usage recorder's batches.
impl switchyard_actors::recorder::BatchCompanion for Limits {
    fn write_pending(&self) -> Result<(), StoreError> {
        match self.ledger.write_pending() {
            Ok(()) => Ok(()),
            Err(LedgerError::Store(e)) => Err(e),
            // Writing movements already decided never checks a balance; should it ever, the
            // movements stay queued for the next batch.
            Err(e @ LedgerError::Insufficient { .. }) => {
                tracing::error!(error = %e, "credit ledger refused its queued movements");
                Ok(())
            }
        }
    }
}

/// A request's accounting until it is answered: its reserved credits and its token budget. AppState by the
/// forward path and a stream's guard, so it lives as long as the answer does.
pub struct Hold {
    limits: Arc<Limits>,
    /// Whose daily token budget the answer's tokens count against.
    subject: Option<String>,
    price: Option<ModelPrice>,
    /// Taken by the first answer (settled) or on drop (released).
    reservation: Mutex<Option<Reservation>>,
    settled: AtomicBool,
}

impl Hold {
    /// Called for every finished attempt. The first answered one (`ok`, or a `client_error` the client
    /// gets as it is) settles the reservation to its real cost and counts its tokens; failed attempts
    /// leave it for the next profile, and a request nobody answered releases it on drop.
    pub fn attempt_finished(&self, r: &UsageRecord) {
        if !matches!(r.outcome.as_str(), "ok" | "client_error")
            || self.settled.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let tokens = r.prompt_tokens.saturating_add(r.completion_tokens);
        if let (Some(subject), true) = (&self.subject, tokens > 0) {
            self.limits.add_tokens(subject, tokens);
        }
        let cost = self
            .price
            .map(|p| cost_micros(p, r.prompt_tokens, r.completion_tokens))
            .unwrap_or(0);
        let charged = match self.reservation.lock().take() {
            Some(res) => match self.limits.ledger.settle(&res, cost) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "credit settlement failed");
                    cost
                }
            },
            None => cost,
        };
        if charged > 0 {
            #[allow(clippy::cast_precision_loss)]
            self.limits
                .metrics
                .cost
                .with_label_values(&[&r.model, &r.profile])
                .inc_by(charged as f64 / 1e6);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(res) = self.reservation.get_mut().take() {
            if let Err(e) = self.limits.ledger.release(&res) {
                tracing::error!(error = %e, "credit release failed");
            }
        }
    }
}

/// The cost of a request in whole micro-USD, rounded up. Prices are USD per million tokens, so a price
/// times a token count is micro-USD.
pub fn cost_micros(p: ModelPrice, input: u64, output: u64) -> u64 {
    #[allow(clippy::cast_precision_loss)]
    let micros = p.input_per_million * input as f64 + p.output_per_million * output as f64;
    // Non-negative and finite by validation; `as` saturates.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let micros = micros.ceil() as u64;
    micros
}

/// `1.234567`: micro-USD as dollars.
pub fn usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// `max_tokens` (or `max_completion_tokens`) of an OpenAI request body.
fn requested_max_tokens(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct MaxTokens {
        max_tokens: Option<u64>,
        max_completion_tokens: Option<u64>,
    }
    let m: MaxTokens = serde_json::from_slice(body).ok()?;
    m.max_tokens
        .into_iter()
        .chain(m.max_completion_tokens)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(requests: Option<u64>, llm: Option<u64>, window: Duration) -> TierConfig {
        TierConfig {
            requests_per_hour: requests,
            llm_requests_per_hour: llm,
            tokens_per_day: Some(100),
            max_tokens_per_request: Some(50),
            max_keys: None,
            monthly_credits_micros: None,
            rate_window: window,
        }
    }

    fn limits() -> Arc<Limits> {
        let store = Store::temporary().unwrap();
        Arc::new(Limits::new(&store, Metrics::new().unwrap()).unwrap())
    }

    fn subject(t: TierConfig) -> Subject {
        Subject {
            id: "account:a".into(),
            account: Some("a".into()),
            tier_name: "t".into(),
            tier: t,
        }
    }

    #[test]
    fn the_tightest_limit_is_reported_and_refusals_count_nothing() {
        let l = limits();
        let s = subject(tier(Some(10), Some(2), Duration::from_secs(3600)));
        let st = l.admit(&s, CallKind::Llm).unwrap();
        assert_eq!(st.requests.unwrap().0, 2);
        assert_eq!(st.requests.unwrap().1, 1);
        l.admit(&s, CallKind::Llm).unwrap();
        let refused = l.admit(&s, CallKind::Llm).unwrap_err();
        let Refusal::RateLimited { retry_after, .. } = *refused else {
            panic!("not a 429: {refused:?}");
        };
        assert!(retry_after <= 3600);
        // Other calls still pass: 2 of 10 used, the refusal not counted.
        assert_eq!(l.admit(&s, CallKind::Other).unwrap().requests.unwrap().1, 7);
    }

    #[test]
    fn the_token_budget_refuses_once_spent() {
        let l = limits();
        let s = subject(tier(None, None, Duration::from_secs(3600)));
        l.add_tokens(&s.id, 100);
        let refused = ApiError::from(*l.admit(&s, CallKind::Llm).unwrap_err());
        assert!(
            matches!(refused, ApiError::RateLimited { code, .. } if code == "rate_limit_exceeded")
        );
    }

    #[test]
    fn costs_round_up_to_micro_usd() {
        let p = ModelPrice {
            input_per_million: 0.15,
            output_per_million: 0.6,
        };
        assert_eq!(cost_micros(p, 10, 10), 8);
        assert_eq!(usd(1_500_000), "1.500000");
        assert_eq!(requested_max_tokens(br#"{"max_tokens": 9}"#), Some(9));
        assert_eq!(requested_max_tokens(br#"{"model": "x"}"#), None);
    }

    #[test]
    fn windows_align_to_the_epoch() {
        let w = Window::current(None, 10_500, 1_000);
        assert_eq!(w.start_ms, 10_000);
        assert_eq!(w.reset_secs(10_500), 1);
    }
}
