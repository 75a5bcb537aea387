//! Tiers, request rate limits, daily token budgets and credits: what a caller may still do, and the
//! accounting of what it did.
//!
//! Request limits are exact fixed-window counters: one counter per (subject, limit), checked and
//! incremented under one mutex, so 200 concurrent requests against a limit of 100 let exactly 100
//! through, and `Retry-After` is exactly the time until the window ends (windows are aligned to the
//! Unix epoch, so every process agrees on them). A sliding window would smooth the burst at a window's
//! edge but makes "when may I retry" a guess; governor's GCRA spreads the budget evenly instead of
//! allowing a burst and needs its own quota arithmetic to report "remaining" exactly.

mod admission;
pub mod credits;
pub mod events;
pub mod journal;
pub mod recovery;
pub mod shared_credits;
pub mod shared_tiers;
mod shared_windows;
pub mod usage;
pub mod webhook;

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
use crate::shared::Shared;
use crate::wire::openai::TokenUsage;
use admission::{Credits, Decided};
pub use credits::{Ledger, LedgerError, Reservation, Transaction};
use shared_credits::TokensAt;

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

/// A subject's counters, in one map entry so a call finds them all with one hash of its id: its
/// request windows, its day's tokens, and the tokens its calls in flight hold.
#[derive(Debug, Default)]
struct Counters {
    requests: Option<Window>,
    llm_requests: Option<Window>,
    tokens: Option<Window>,
    /// Daily-budget tokens reserved by calls in flight. Kept apart from the day's window (a
    /// reservation made before midnight is released after it).
    held: u64,
}

impl Counters {
    /// The window of a request limit by its name (`request_checks`).
    fn window(&mut self, name: &str) -> &mut Option<Window> {
        match name {
            "llm_requests" => &mut self.llm_requests,
            _ => &mut self.requests,
        }
    }
}

/// Subject -> its counters. hashbrown's map for `entry_ref` (a call that finds its subject neither
/// allocates a key nor hashes twice) and its foldhash, not std's SipHash: the ids are accounts and
/// keys the operator made (or subjects a trusted issuer signed); the seed is still per process.
type CounterMap = hashbrown::HashMap<String, Counters>;

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
    /// A metered tier asked for a model with no price (403).
    #[error("{0}")]
    Unpriced(String),
    /// The ledger failed (500); logged where it happened.
    #[error("credit reservation failed: {0}")]
    Store(String),
    /// Credits cannot be decided now: the shared state is unreachable or behind (503).
    #[error("{message}")]
    Unavailable { message: String, retry_after: u64 },
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
            Refusal::Unpriced(message) => ApiError::Forbidden(message),
            Refusal::Store(detail) => ApiError::Internal(detail),
            Refusal::Unavailable {
                message,
                retry_after,
            } => ApiError::Unavailable {
                message,
                code: "credits_unavailable",
                retry_after,
            },
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

/// A model call's admission before it is decided, so that it can be decided together with the
/// call's hold (`Limits::hold`: with Redis, one round trip of waiting for the request windows, the
/// daily token budget and the credits). A call that ends before its hold (a body that cannot be
/// read, a 403 scope) or holds nothing is admitted alone (`admit`, `finish`), before its own answer,
/// so a spent request limit still answers first. Nothing is counted until then.
#[derive(Debug)]
pub struct PendingAdmission {
    subject: Option<Subject>,
    kind: CallKind,
    /// The `X-RateLimit-*` of the decision once made (empty for a refusal: it carries its own).
    decided: Option<RateStatus>,
}

impl PendingAdmission {
    /// The `X-RateLimit-*` every answer to the call carries (none before the decision).
    pub fn rate(&self) -> RateStatus {
        self.decided.unwrap_or_default()
    }

    /// Counts the call alone, or refuses it (429); once decided, does nothing.
    pub async fn admit(&mut self, limits: &Limits) -> Result<(), Box<Refusal>> {
        if self.decided.is_some() {
            return Ok(());
        }
        let decided = limits.admit_subject(self.subject.as_ref(), self.kind).await;
        self.decided = Some(decided.as_ref().copied().unwrap_or_default());
        decided.map(drop)
    }

    /// The call's result once its admission is decided: a call that ended before deciding it is
    /// admitted now, and a refusal then takes the place of its error (every successful path has
    /// decided it before sending anything upstream; one that had not would be counted here).
    pub async fn finish<T>(
        &mut self,
        limits: &Limits,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match self.admit(limits).await {
            Err(refusal) if result.is_err() => Err(ApiError::from(refusal)),
            _ => result,
        }
    }
}

/// Tiers, counters, credits. One per process, shared by every worker.
pub struct Limits {
    /// Subject -> its windows and held tokens. A plain mutex: the critical section is a hash lookup
    /// and an add, and one lock makes checking several limits (and the daily budget) and counting
    /// them a single atomic step.
    windows: Mutex<CounterMap>,
    pub ledger: Ledger,
    /// Account -> tier set through the admin API or the billing webhook; read on every call, so cached.
    tier_overrides: DashMap<String, String>,
    metrics: Arc<Metrics>,
    /// `state.backend: redis`: request windows, credits and the daily token budget in Redis for the
    /// whole fleet.
    shared: Option<Arc<Shared>>,
    /// What this replica spent alone, and owes Redis, while Redis was away (see `shared_credits`).
    away: shared_credits::Away,
}

impl Limits {
    /// Opens the ledger and loads the tier overrides.
    pub fn new(store: &Store, metrics: Arc<Metrics>) -> Result<Limits, StoreError> {
        let ledger = Ledger::open(store)?;
        let tier_overrides: DashMap<String, String> =
            ledger.tier_overrides()?.into_iter().collect();
        Ok(Limits {
            windows: Mutex::new(CounterMap::default()),
            ledger,
            tier_overrides,
            metrics,
            shared: None,
            away: shared_credits::Away::default(),
        })
    }

    /// Counts request windows in Redis, shared by every replica, instead of in this process.
    pub fn share_through(mut self, shared: Arc<Shared>) -> Limits {
        self.shared = Some(shared);
        self
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
        // Concatenated, not `format!`ed: ~700 instructions on every metered call.
        let (kind, of) = match (&p.account, p.key_id()) {
            (Some(a), _) => ("account:", a.as_str()),
            (None, Some(k)) => ("key:", k),
            (None, None) => return None,
        };
        let id = [kind, of].concat();
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

    /// Resolves the caller's tier and counts the call (see `admit`; with Redis, `admit_shared`).
    pub async fn admit_principal(
        &self,
        config: &Config,
        principal: Option<&Principal>,
        kind: CallKind,
    ) -> Result<Admission, Box<Refusal>> {
        let subject = self.subject(config, principal);
        let rate = self.admit_subject(subject.as_ref(), kind).await?;
        Ok(Admission { subject, rate })
    }

    /// Counts the call of `subject` (none: nothing to count), in Redis when the state is shared.
    async fn admit_subject(
        &self,
        subject: Option<&Subject>,
        kind: CallKind,
    ) -> Result<RateStatus, Box<Refusal>> {
        match (subject, &self.shared) {
            (Some(s), Some(shared)) => self.admit_shared(shared, s, kind).await,
            (Some(s), None) => self.admit(s, kind),
            (None, _) => Ok(RateStatus::default()),
        }
    }

    /// Counts one call against the subject's request limits, or refuses it (429) when any limit — the
    /// daily token budget included — is spent. Nothing is counted for a refused call.
    pub fn admit(&self, s: &Subject, kind: CallKind) -> Result<RateStatus, Box<Refusal>> {
        self.admit_local(s, kind, |limit| limit)
    }

    /// `admit` on this process's own windows, each request limit taken as `share(limit)` (all of
    /// it alone; a replica's share when Redis cannot be asked, see `shared_windows`).
    fn admit_local(
        &self,
        s: &Subject,
        kind: CallKind,
        share: impl Fn(u64) -> u64,
    ) -> Result<RateStatus, Box<Refusal>> {
        let now = now_ms();
        let window_ms = window_ms(s);
        let checks: Vec<(&'static str, u64)> = request_checks(s, kind)
            .into_iter()
            .map(|(name, limit)| (name, share(limit)))
            .collect();
        let mut windows = self.windows.lock();
        let mut status = RateStatus::default();
        // First look (so a refusal still reports every limit), then count only if all have room.
        let mut current = Vec::with_capacity(checks.len());
        let mut full = None;
        let mut mine = windows.get_mut(s.id.as_str());
        for (name, limit) in &checks {
            let prev = mine.as_mut().and_then(|c| *c.window(name));
            let w = Window::current(prev, now, window_ms);
            let remaining = limit.saturating_sub(w.count);
            let reset = w.reset_secs(now);
            if status.requests.is_none_or(|(_, r, _)| remaining < r) {
                status.requests = Some((*limit, remaining, reset));
            }
            if remaining == 0 && full.is_none() {
                full = Some((*name, *limit, reset));
            }
            current.push((*name, w, *limit));
        }
        if let Some((tokens, spent)) = token_look(mine.as_deref(), s, now) {
            status.tokens = Some(tokens);
            if let (Some(spent), None) = (spent, full) {
                full = Some(spent);
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
        if current.is_empty() {
            return Ok(status);
        }
        let mine = match mine {
            Some(c) => c,
            None => windows.entry_ref(s.id.as_str()).or_default(),
        };
        for (name, mut w, limit) in current {
            w.count += 1;
            let remaining = limit - w.count;
            let reset = w.reset_secs(now);
            if status.requests.is_none_or(|(_, r, _)| remaining < r) {
                status.requests = Some((limit, remaining, reset));
            }
            *mine.window(name) = Some(w);
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

    /// Counts tokens used against the subject's daily budget, and gives back what its call held.
    fn add_tokens(&self, subject: &str, tokens: u64, held: u64) {
        let now = now_ms();
        let mut windows = self.windows.lock();
        let counters = windows.entry_ref(subject).or_default();
        let mut w = Window::current(counters.tokens, now, day_ms());
        w.count = w.count.saturating_add(tokens);
        counters.tokens = Some(w);
        counters.held = counters.held.saturating_sub(held);
    }

    /// Gives back tokens a call held without counting any.
    fn unhold(&self, subject: &str, held: u64) {
        if let Some(c) = self.windows.lock().get_mut(subject) {
            c.held = c.held.saturating_sub(held);
        }
    }

    /// Reserves a call's estimate against the daily token budget: admitted while the tokens counted
    /// today plus those held by calls in flight are below the budget, holding the estimate capped at
    /// what remains (so a call larger than the rest still gets through when nothing else is in flight).
    /// Returns what it holds.
    fn hold_tokens(&self, s: &Subject, limit: u64, estimate: u64) -> Result<u64, Box<Refusal>> {
        let now = now_ms();
        let mut windows = self.windows.lock();
        let counters = windows.get(s.id.as_str());
        let w = Window::current(counters.and_then(|c| c.tokens), now, day_ms());
        let held = counters.map_or(0, |c| c.held);
        let used = w.count.saturating_add(held);
        if used >= limit {
            let retry = token_retry(&w, held, limit, now);
            drop(windows);
            let rate = RateStatus {
                requests: None,
                tokens: Some((limit, 0, w.reset_secs(now))),
            };
            return Err(self.rate_refusal(s, "tokens", limit, retry, rate));
        }
        let take = estimate.clamp(1, limit - used);
        windows.entry_ref(s.id.as_str()).or_default().held += take;
        Ok(take)
    }

    /// The account's credits as `/v1/me` and the threshold notices show them: balance, monthly
    /// credits, fraction used, configured thresholds and those whose notice was sent this month.
    pub async fn credit_view(
        &self,
        config: &Config,
        p: &Principal,
    ) -> Result<serde_json::Value, ApiError> {
        let Some(account) = &p.account else {
            return Ok(serde_json::Value::Null);
        };
        let balance = self.balance_of(account).await?;
        let monthly = self
            .subject(config, Some(p))
            .and_then(|s| s.tier.monthly_credits_micros);
        let thresholds = config.usage.notify.as_ref().map(|n| n.thresholds.clone());
        let crossed: Vec<f64> = self
            .ledger
            .notices(account, &credits::month_of(now_ms()))
            .map_err(|e| ApiError::Internal(format!("ledger: {e}")))?
            .into_iter()
            .map(|p| f64::from(p) / 1000.0)
            .collect();
        Ok(serde_json::json!({
            "balance_usd": usd(balance),
            "monthly_credits_usd": monthly.map(usd),
            "fraction_used": monthly.map(|m| fraction_used(balance, m)),
            "thresholds": thresholds,
            "thresholds_crossed": crossed,
        }))
    }

    /// Sends the notices of every threshold `account` has now reached, once per UTC month each.
    fn notify_thresholds(&self, account: &str, monthly: u64, n: &crate::config::NotifyConfig) {
        let balance = match self.ledger.balance(account) {
            Ok(b) => b,
            Err(e) => return tracing::error!(error = %e, "cannot read a balance for its notices"),
        };
        let used = fraction_used(balance, monthly);
        let month = credits::month_of(now_ms());
        for (t, permille) in reached(n, used) {
            match self.ledger.claim_notice(account, &month, permille) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot record a credit notice");
                    continue;
                }
            }
            send_notice(n, account, (monthly, balance), (&month, t, used));
        }
    }

    /// `notify_thresholds` with the balance a shared settle answered, each notice claimed once for
    /// the whole fleet in Redis.
    async fn notify_thresholds_shared(
        &self,
        account: &str,
        monthly: u64,
        n: &crate::config::NotifyConfig,
        balance: u64,
    ) {
        let used = fraction_used(balance, monthly);
        let month = credits::month_of(now_ms());
        for (t, permille) in reached(n, used) {
            if self.claim_notice_shared(account, &month, permille).await {
                send_notice(n, account, (monthly, balance), (&month, t, used));
            }
        }
    }
}

/// The thresholds `used` has reached, each with its permille.
fn reached(n: &crate::config::NotifyConfig, used: f64) -> Vec<(f64, u32)> {
    n.thresholds
        .iter()
        .filter(|t| used >= **t)
        .map(|t| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let permille = (t * 1000.0).round() as u32;
            (*t, permille)
        })
        .collect()
}

/// Delivers one claimed threshold notice.
fn send_notice(
    n: &crate::config::NotifyConfig,
    account: &str,
    (monthly, balance): (u64, u64),
    (month, t, used): (&str, f64, f64),
) {
    let body = serde_json::json!({
        "type": "credits.threshold_crossed",
        "account": account,
        "month": month,
        "threshold": t,
        "fraction_used": used,
        "balance_usd": usd(balance),
        "monthly_credits_usd": usd(monthly),
    })
    .to_string();
    let secret = std::env::var(&n.secret_env).ok().filter(|s| !s.is_empty());
    actix_web::rt::spawn(webhook::deliver(n.url.clone(), secret, body));
}

impl Limits {
    /// A model call's admission, undecided: nothing is counted yet (see `PendingAdmission`).
    pub fn admission(
        &self,
        config: &Config,
        principal: Option<&Principal>,
        kind: CallKind,
    ) -> PendingAdmission {
        PendingAdmission {
            subject: self.subject(config, principal),
            kind,
            decided: None,
        }
    }

    /// Counts the call (or refuses it) and, unless it is refused, checks `max_tokens` against the
    /// tier and holds the request's largest possible cost and its daily token estimate. The hold
    /// settles to the real cost when an attempt answers (see `Hold::attempt_finished`) and gives
    /// the reservation back if none does.
    ///
    /// Refusals keep one precedence: a request limit, then `max_tokens`, then the daily budget,
    /// then an unpriced model, then credits. With Redis, the windows and the token hold are one
    /// script and the credit reservation another, sent together on the worker's connection (one
    /// round trip of waiting); a reservation made for a call the first refuses is given back.
    #[allow(clippy::too_many_arguments)]
    pub async fn hold(
        self: &Arc<Self>,
        config: &Config,
        admission: &mut PendingAdmission,
        model: &str,
        (body, asked): (&[u8], Option<u64>),
        embeddings: bool,
        request_id: &str,
    ) -> Result<Option<Arc<Hold>>, Box<Refusal>> {
        let price = config.max_price(model);
        let profile_prices: Vec<(String, ModelPrice)> = config
            .profiles
            .iter()
            .filter_map(|p| p.pricing.get(model).map(|price| (p.id.clone(), *price)))
            .collect();
        let subject = admission.subject.clone();
        let subject = subject.as_ref();
        if subject.is_none() && price.is_none() {
            admission.admit(self).await?;
            return Ok(None);
        }
        // `asked` was read strictly by `RoutingFields::parse`: an integer, given once, or a 400 there.
        let cap = subject.and_then(|s| s.tier.max_tokens_per_request);
        if let (Some(asked), Some(cap), Some(s)) = (asked, cap, subject) {
            if asked > cap {
                // A spent request limit answers first, and an admitted call counts.
                admission.admit(self).await?;
                return Err(Box::new(Refusal::MaxTokens(format!(
                    "max_tokens is {asked}, above the `{}` tier's max_tokens_per_request of {cap}.",
                    s.tier_name
                ))));
            }
        }
        // Every prompt token is at least one byte of the body: the body's size bounds the input.
        let input = u64::try_from(body.len()).unwrap_or(u64::MAX);
        let output = if embeddings {
            0
        } else {
            asked.or(cap).unwrap_or(DEFAULT_MAX_OUTPUT)
        };
        // About four bytes a token, like the estimate charged when usage is missing.
        let tokens = subject
            .and_then(|s| s.tier.tokens_per_day)
            .map(|limit| (limit, input.div_ceil(4).saturating_add(output)));
        let metered = subject.and_then(|s| {
            s.tier
                .monthly_credits_micros
                .and_then(|m| s.account.as_ref().map(|a| (s, a, m)))
        });
        // A metered caller never gets a model for free: without a price (nor `pricing_default`)
        // it is refused. Only configured models get here with a label (others are 404s later).
        let mut unpriced = None;
        if let (Some((s, _, _)), true) = (metered, config.models.iter().any(|m| m.name == model)) {
            let listed = config.lists_price(model);
            if !listed {
                let how = if price.is_some() {
                    "default"
                } else {
                    "refused"
                };
                self.metrics.unpriced.with_label_values(&[model, how]).inc();
            }
            if price.is_none() {
                unpriced = Some(Box::new(Refusal::Unpriced(format!(
                    "The model `{model}` has no price, so the `{}` tier cannot use it. Ask the \
                     operator to price it.",
                    s.tier_name
                ))));
            }
        }
        let credits = metered
            .zip(price)
            .map(|((s, account, monthly), price)| Credits {
                account,
                monthly,
                tier: &s.tier_name,
                micros: max_cost_micros(price, input, output),
                request_id,
                model,
            });
        let decided = match (&self.shared, subject) {
            (Some(shared), Some(s)) => {
                let (rate, decided) = self
                    .admit_and_reserve(config, shared, s, (admission.kind, tokens), credits)
                    .await;
                admission.decided = Some(rate);
                decided?
            }
            // Local mode (or a caller without a tier, whose admission counts nothing): one by one.
            _ => {
                admission.admit(self).await?;
                self.hold_local(config, subject, tokens, credits)?
            }
        };
        // Priced models only reserve credits, so an unpriced refusal has only tokens to give back.
        if let Some(refusal) = unpriced {
            return Err(decided.give_back(self, subject, refusal));
        }
        let Decided {
            tokens: held,
            reservation,
        } = decided;
        let (tokens_held, tokens_at) = match held {
            Some((n, at)) => (Some(n), at),
            None => (None, TokensAt::Local),
        };
        Ok(Some(Arc::new(Hold {
            limits: self.clone(),
            subject: subject
                .filter(|_| tokens_held.is_some())
                .map(|s| s.id.clone()),
            tokens_held: tokens_held.unwrap_or(0),
            tokens_at,
            price: config.price(model, None),
            profile_prices,
            notice: metered.and_then(|(_, account, monthly)| {
                let n = config.usage.notify.clone()?;
                (monthly > 0).then(|| (account.clone(), monthly, n))
            }),
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
    /// Tokens of that budget held until the answer settles (or the hold is dropped).
    tokens_held: u64,
    /// Where they are held.
    tokens_at: TokensAt,
    /// The metered account and its monthly credits, when threshold notices are configured.
    notice: Option<(String, u64, crate::config::NotifyConfig)>,
    /// The model's price, and the profiles that price it their own way.
    price: Option<ModelPrice>,
    profile_prices: Vec<(String, ModelPrice)>,
    /// Taken by the first answer (settled) or on drop (released).
    reservation: Mutex<Option<Reservation>>,
    settled: AtomicBool,
}

impl Hold {
    /// Called for every finished attempt. The first `answered` one (`ok`, a `client_error` the client
    /// gets as it is, or a stream cut or cancelled after its text reached the client) settles the
    /// reservation to the cost of `r`'s tokens (reported, or estimated by the guard) and counts them;
    /// failed attempts leave it for the next profile, and a request nobody answered releases it on drop.
    pub fn attempt_finished(&self, r: &UsageRecord, answered: bool) {
        if !answered || self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        let tokens = r.prompt_tokens.saturating_add(r.completion_tokens);
        if let Some(subject) = &self.subject {
            match self.tokens_at {
                TokensAt::Local => self.limits.add_tokens(subject, tokens, self.tokens_held),
                at => {
                    let (limits, subject, held) =
                        (self.limits.clone(), subject.clone(), self.tokens_held);
                    actix_web::rt::spawn(async move {
                        limits.settle_tokens(&subject, at, tokens, held).await;
                    });
                }
            }
        }
        let price = self
            .profile_prices
            .iter()
            .find(|(id, _)| *id == r.profile)
            .map(|(_, p)| *p)
            .or(self.price);
        let cost = price.map(|p| cost_micros(p, &record_usage(r))).unwrap_or(0);
        let reservation = self.reservation.lock().take();
        let charged = match reservation {
            Some(res) if res.source != credits::Source::Local => {
                // Decided in Redis: settled without delaying the answer; its notices follow the
                // balance the settle answers.
                let (limits, notice) = (self.limits.clone(), self.notice.clone());
                let (model, profile) = (r.model.clone(), r.profile.clone());
                actix_web::rt::spawn(async move {
                    let (charged, balance) = limits.close_shared(&res, Some(cost)).await;
                    if let (Some((account, monthly, notify)), Some(balance)) = (notice, balance) {
                        limits
                            .notify_thresholds_shared(&account, monthly, &notify, balance)
                            .await;
                    }
                    limits.count_cost(&model, &profile, charged);
                });
                return;
            }
            Some(res) => match self.limits.ledger.settle(&res, cost) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "credit settlement failed");
                    cost
                }
            },
            None => cost,
        };
        if let Some((account, monthly, notify)) = &self.notice {
            self.limits.notify_thresholds(account, *monthly, notify);
        }
        self.limits.count_cost(&r.model, &r.profile, charged);
    }
}

impl Limits {
    /// Counts `charged` micro-USD in the cost metric.
    fn count_cost(&self, model: &str, profile: &str, charged: u64) {
        if charged > 0 {
            #[allow(clippy::cast_precision_loss)]
            self.metrics
                .cost
                .with_label_values(&[model, profile])
                .inc_by(charged as f64 / 1e6);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let (Some(subject), false) = (&self.subject, *self.settled.get_mut()) {
            self.limits
                .unhold_later(subject, self.tokens_at, self.tokens_held);
        }
        if let Some(res) = self.reservation.get_mut().take() {
            self.limits.release_later(res);
        }
    }
}

/// The 402 for a balance that cannot cover a request's largest cost.
fn insufficient(balance: u64, needed: u64, tier: &str) -> Box<Refusal> {
    Box::new(Refusal::Insufficient(format!(
        "Your credits (${}) cannot cover this request (up to ${}). Lower max_tokens, add credits or \
         upgrade from the `{tier}` tier.",
        usd(balance),
        usd(needed),
    )))
}

/// The share of `monthly` an account has used: (monthly - balance) / monthly, between 0 and 1 (credits
/// bought above the month's grant count as unused).
fn fraction_used(balance: u64, monthly: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let f = monthly.saturating_sub(balance) as f64 / monthly.max(1) as f64;
    f.clamp(0.0, 1.0)
}

/// The request limits a call of `kind` counts against: (name, limit).
/// The daily token budget as `X-RateLimit-*-Tokens` shows it (limit, remaining, reset), and when it
/// is spent, the refusal's (scope, limit, retry after); `counters` are the subject's, if it has any.
#[allow(clippy::type_complexity)]
fn token_look(
    counters: Option<&Counters>,
    s: &Subject,
    now: u64,
) -> Option<((u64, u64, u64), Option<(&'static str, u64, u64)>)> {
    let limit = s.tier.tokens_per_day?;
    let w = Window::current(counters.and_then(|c| c.tokens), now, day_ms());
    let held = counters.map_or(0, |c| c.held);
    let used = w.count.saturating_add(held);
    let spent = (used >= limit).then(|| ("tokens", limit, token_retry(&w, held, limit, now)));
    Some((
        (limit, limit.saturating_sub(used), w.reset_secs(now)),
        spent,
    ))
}

/// A day, in ms.
fn day_ms() -> u64 {
    u64::try_from(DAY.as_millis()).unwrap_or(u64::MAX)
}

fn request_checks(s: &Subject, kind: CallKind) -> Vec<(&'static str, u64)> {
    let mut checks = Vec::with_capacity(2);
    if let Some(limit) = s.tier.requests_per_hour {
        checks.push(("requests", limit));
    }
    if let (CallKind::Llm, Some(limit)) = (kind, s.tier.llm_requests_per_hour) {
        checks.push(("llm_requests", limit));
    }
    checks
}

/// The subject's request window, in ms (at least 1).
fn window_ms(s: &Subject) -> u64 {
    u64::try_from(s.tier.rate_window.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Seconds until a spent token budget may have room: the day's end when today's tokens alone spend
/// it, else 1 (calls in flight hold the rest, and give back what they do not use when they end).
fn token_retry(w: &Window, held: u64, limit: u64, now: u64) -> u64 {
    if w.count >= limit || held == 0 {
        w.reset_secs(now)
    } else {
        1
    }
}

/// The cost of an answer in whole micro-USD, rounded up. Prices are USD per million tokens, so a price
/// times a token count is micro-USD. Cache reads and writes are parts of the prompt and reasoning a
/// part of the completion, each at its own rate; the rest at the input and output rates.
pub fn cost_micros(p: ModelPrice, u: &TokenUsage) -> u64 {
    let cache = u
        .cached_tokens
        .saturating_add(u.cache_write_tokens)
        .saturating_add(u.cache_write_1h_tokens);
    micros_of(&[
        (p.input_per_million, u.prompt_tokens.saturating_sub(cache)),
        (p.cached_input_per_million, u.cached_tokens),
        (p.cache_write_per_million, u.cache_write_tokens),
        (p.cache_write_1h_per_million, u.cache_write_1h_tokens),
        (
            p.output_per_million,
            u.completion_tokens.saturating_sub(u.reasoning_tokens),
        ),
        (p.reasoning_per_million, u.reasoning_tokens),
    ])
}

/// The most `input` prompt tokens and `output` completion tokens can cost, whatever their kind.
pub fn max_cost_micros(p: ModelPrice, input: u64, output: u64) -> u64 {
    micros_of(&[(p.max_input(), input), (p.max_output(), output)])
}

fn micros_of(parts: &[(f64, u64)]) -> u64 {
    #[allow(clippy::cast_precision_loss)]
    let micros: f64 = parts.iter().map(|(rate, n)| rate * *n as f64).sum();
    // Non-negative and finite by validation; `as` saturates.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let micros = micros.ceil() as u64;
    micros
}

/// A usage record's tokens as the price list reads them.
pub fn record_usage(r: &UsageRecord) -> TokenUsage {
    TokenUsage {
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        cached_tokens: r.cached_tokens,
        cache_write_tokens: r.cache_write_tokens,
        cache_write_1h_tokens: r.cache_write_1h_tokens,
        reasoning_tokens: r.reasoning_tokens,
    }
}

/// `1.234567`: micro-USD as dollars.
pub fn usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
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
        l.add_tokens(&s.id, 100, 0);
        let refused = ApiError::from(*l.admit(&s, CallKind::Llm).unwrap_err());
        assert!(
            matches!(refused, ApiError::RateLimited { code, .. } if code == "rate_limit_exceeded")
        );
    }

    #[test]
    fn calls_in_flight_hold_the_daily_budget() {
        let l = limits();
        let mut t = tier(None, None, Duration::from_secs(3600));
        t.tokens_per_day = Some(50);
        let s = subject(t);
        assert_eq!(l.hold_tokens(&s, 50, 23).unwrap(), 23);
        assert_eq!(l.hold_tokens(&s, 50, 23).unwrap(), 23);
        assert_eq!(
            l.hold_tokens(&s, 50, 23).unwrap(),
            4,
            "capped at what remains"
        );
        let refused = l.hold_tokens(&s, 50, 23).unwrap_err();
        let Refusal::RateLimited { retry_after, .. } = *refused else {
            panic!("{refused:?}");
        };
        assert_eq!(retry_after, 1, "held, not spent: retry soon");
        assert!(
            l.admit(&s, CallKind::Llm).is_err(),
            "admission sees the holds too"
        );
        // The first call settles at 7 real tokens: 16 come back.
        l.add_tokens(&s.id, 7, 23);
        assert_eq!(l.hold_tokens(&s, 50, 100).unwrap(), 16);
    }

    #[test]
    fn costs_round_up_to_micro_usd() {
        let p = ModelPrice::flat(0.15, 0.6);
        assert_eq!(cost_micros(p, &TokenUsage::new(10, 10)), 8);
        // Cache reads, writes and reasoning at their own rates; the rest at input and output.
        let p = ModelPrice {
            input_per_million: 1.0,
            output_per_million: 10.0,
            cached_input_per_million: 0.1,
            cache_write_per_million: 1.25,
            cache_write_1h_per_million: 2.0,
            reasoning_per_million: 20.0,
        };
        let u = TokenUsage {
            prompt_tokens: 1000,
            completion_tokens: 100,
            cached_tokens: 500,
            cache_write_tokens: 200,
            cache_write_1h_tokens: 100,
            reasoning_tokens: 40,
        };
        // 200*1 + 500*0.1 + 200*1.25 + 100*2 + 60*10 + 40*20
        assert_eq!(cost_micros(p, &u), 200 + 50 + 250 + 200 + 600 + 800);
        assert_eq!(max_cost_micros(p, 10, 10), 20 + 200);
        assert_eq!(usd(1_500_000), "1.500000");
    }

    #[test]
    fn windows_align_to_the_epoch() {
        let w = Window::current(None, 10_500, 1_000);
        assert_eq!(w.start_ms, 10_000);
        assert_eq!(w.reset_secs(10_500), 1);
    }
}
