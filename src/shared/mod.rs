//! State several replicas must agree on, in Redis (`state.backend: redis`): the client, with one
//! connection manager per worker thread, a deadline on every command and a breaker
//! (`breaker`) so that a dead or stalled Redis costs a request nothing; and what is kept there:
//! request-rate windows (`rate`; a model call's windows with its daily token hold: `admit`), the
//! tables every replica mirrors (`records`: API keys, accounts, sign-in sessions, audit), the
//! fleet's usage records (`usage`), sticky-session pins (`pins`), profile health lanes (`health`,
//! pushed to every replica through pub/sub), fleet-wide leases (`locks`: one half-open probe, one
//! OAuth refresh), the sealed OAuth tokens (`oauth`), credits (`credits`), the daily token budget
//! (`budget`) and ids the fleet acts on once (`claims`).
//!
//! Nothing here retries a command: a write that timed out may or may not have happened, and a
//! retry could count it twice. The caller takes its resource's fallback instead.

pub mod admit;
pub mod breaker;
pub mod budget;
pub mod claims;
pub mod credits;
pub mod health;
pub mod locks;
pub mod oauth;
pub mod pins;
pub mod rate;
pub mod records;
pub mod usage;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use self::breaker::Breaker;
use crate::config::RedisConfig;
use crate::metrics::SharedMetrics;

/// What is shared, as the metrics' `resource` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Request-rate windows (`tiers:` `requests_per_hour`, `llm_requests_per_hour`).
    RateLimits,
    /// Gateway API keys, mirrored by every replica.
    Keys,
    /// Accounts, sign-in families and refresh tokens, mirrored by every replica.
    Accounts,
    /// The audit log, mirrored by every replica.
    Audit,
    /// Usage records shipped by every replica (`usage`).
    Usage,
    /// Sticky-session pins.
    Pins,
    /// Profile health lanes (cooldown and billing ends, auth failures, resets).
    Health,
    /// The single-flight half-open probe of each profile.
    Probes,
    /// OAuth tokens and the lease of their one refresher.
    OAuthTokens,
    /// Credit balances, reservations and their log.
    Credits,
    /// The daily token budget (`tokens_per_day`).
    TokensPerDay,
    /// The billing webhook's event ids, each applied once by the fleet.
    BillingEvents,
    /// Accounts' tier overrides, mirrored by every replica.
    Tiers,
}

impl Resource {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::RateLimits => "rate_limits",
            Resource::Keys => "keys",
            Resource::Accounts => "accounts",
            Resource::Audit => "audit",
            Resource::Usage => "usage",
            Resource::Pins => "pins",
            Resource::Health => "health",
            Resource::Probes => "probes",
            Resource::OAuthTokens => "oauth_tokens",
            Resource::Credits => "credits",
            Resource::TokensPerDay => "tokens_per_day",
            Resource::BillingEvents => "billing_events",
            Resource::Tiers => "tiers",
        }
    }
}

/// Why Redis could not decide a call (the caller takes its fallback).
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("redis skipped: the breaker is open after a recent failure")]
    Open,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered in an unexpected shape: {0}")]
    Answer(&'static str),
}

/// Tells apart the `Shared` instances of one process (tests start several) in the per-thread
/// connection table.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Instance id -> this thread's connection manager. Thread-local because each actix-web worker is
    /// its own single-threaded runtime, and a connection's I/O task runs on the runtime that made it:
    /// one manager per worker keeps a worker's Redis traffic on its own thread, as with the upstream
    /// reqwest clients.
    static CONNECTIONS: RefCell<HashMap<u64, ConnectionManager>> = RefCell::new(HashMap::new());
}

/// The Redis side of the shared state. One per process; every worker shares it.
pub struct Shared {
    id: u64,
    client: redis::Client,
    /// `state.redis.key_prefix`, before every key.
    prefix: String,
    /// `state.redis.command_timeout`: one command's deadline.
    timeout: Duration,
    /// `state.redis.replicas` and `margin`: the fallback's local share of a limit.
    replicas: u32,
    margin: f64,
    /// `state.redis.health_resync`: the period of the full health exchange behind the pushes.
    health_resync: Duration,
    breaker: Breaker,
    metrics: SharedMetrics,
}

impl Shared {
    /// The client for `config`; connects lazily, on each worker's first command.
    pub fn new(config: &RedisConfig, metrics: &SharedMetrics) -> Result<Arc<Shared>, SharedError> {
        let client = redis::Client::open(config.url.as_str())?;
        Ok(Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client,
            prefix: config.key_prefix.clone(),
            timeout: config.command_timeout,
            replicas: config.replicas.max(1),
            margin: config.margin,
            health_resync: config.health_resync,
            breaker: Breaker::default(),
            metrics: metrics.clone(),
        }))
    }

    /// `limit`'s share on one replica while Redis cannot be asked: `limit × (1 − margin) / replicas`,
    /// rounded down but at least 1, so that the fleet together stays under the limit.
    pub fn local_share(&self, limit: u64) -> u64 {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let share = (limit as f64 * (1.0 - self.margin) / f64::from(self.replicas)).floor() as u64;
        share.clamp(1, limit.max(1))
    }

    /// `key` under the configured prefix.
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Whether calls go to Redis without a probe (the breaker is closed): then independent calls may
    /// be sent together; after a failure they go one by one, so the first is the breaker's one probe
    /// and the others follow its verdict.
    pub fn is_closed(&self) -> bool {
        !self.breaker.is_open()
    }

    /// Records that `resource` was decided by its fallback (or, with `false`, by Redis again).
    pub fn set_degraded(&self, resource: Resource, degraded: bool) {
        let label = [resource.as_str()];
        self.metrics
            .degraded
            .with_label_values(&label)
            .set(i64::from(degraded));
        if degraded {
            self.metrics.fallbacks.with_label_values(&label).inc();
        }
    }

    /// Connects this worker and loads the scripts, so that its first requests do not wait for either
    /// (against the command deadline). Spawned on each worker as it starts; failing is only logged.
    pub async fn warm(self: Arc<Self>) {
        let loaded = match self.load_scripts().await {
            Ok(()) => self.load_credit_scripts().await,
            Err(e) => Err(e),
        };
        if let Err(e) = loaded {
            tracing::warn!(error = %e, "shared state: cannot reach redis yet");
        }
    }

    /// This worker's connection manager, made on its first use.
    fn connection(&self) -> Result<ConnectionManager, SharedError> {
        CONNECTIONS.with(|all| {
            let mut all = all.borrow_mut();
            if let Some(c) = all.get(&self.id) {
                return Ok(c.clone());
            }
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(self.timeout))
                .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(250))));
            let c = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
            all.insert(self.id, c.clone());
            Ok(c)
        })
    }

    /// Runs one Redis round trip for `resource` under the breaker and the command deadline, and
    /// records its time and Redis's health. `Err` means: take the fallback.
    pub async fn call<T, F, Fut>(&self, resource: Resource, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let Some(permit) = self.breaker.permit() else {
            return Err(SharedError::Open);
        };
        let started = Instant::now();
        let result = match self.connection() {
            Ok(c) => match tokio::time::timeout(self.timeout, f(c)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(SharedError::Redis(e)),
                Err(_) => Err(SharedError::Timeout(self.timeout)),
            },
            Err(e) => Err(e),
        };
        self.metrics
            .round_trip
            .with_label_values(&[resource.as_str()])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                self.breaker.succeeded(permit);
                self.metrics.up.set(1);
            }
            Err(e) => {
                if !self.breaker.is_open() {
                    tracing::warn!(error = %e, resource = resource.as_str(), "shared state unavailable: falling back");
                }
                self.breaker.failed(permit);
                self.metrics.up.set(0);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(replicas: u32, margin: f64) -> Arc<Shared> {
        let metrics = crate::metrics::Metrics::new().unwrap();
        let config = RedisConfig {
            url: "redis://127.0.0.1:1/0".into(),
            key_prefix: "t:".into(),
            command_timeout: Duration::from_millis(50),
            replicas,
            margin,
            health_resync: Duration::from_secs(1),
            credit_allowance_micros: 0,
        };
        Shared::new(&config, &metrics.shared).unwrap()
    }

    #[test]
    fn the_local_share_keeps_the_fleet_under_the_limit() {
        let s = shared(3, 0.1);
        assert_eq!(s.local_share(30), 9);
        assert_eq!(s.local_share(100), 30);
        // Never 0, or a small limit would refuse everyone while Redis is down.
        assert_eq!(s.local_share(2), 1);
        assert_eq!(shared(1, 0.0).local_share(7), 7);
    }

    #[tokio::test]
    async fn an_unreachable_redis_opens_the_breaker_and_then_costs_nothing() {
        let s = shared(1, 0.0);
        let ping = |mut c: ConnectionManager| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        assert!(s.call(Resource::RateLimits, ping).await.is_err());
        let started = Instant::now();
        assert!(matches!(
            s.call(Resource::RateLimits, ping).await,
            Err(SharedError::Open)
        ));
        assert!(started.elapsed() < Duration::from_millis(5));
    }
}
