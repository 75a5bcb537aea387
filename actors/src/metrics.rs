//! The actors' own Prometheus metrics: health transitions, supervision and the store.
//!
//! Labels are bounded: a profile id (from the config), a failure class, a state or an actor kind.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// Metric names, shared with the dashboard test.
pub mod names {
    pub const BREAKER_TRANSITIONS: &str = "switchyard_breaker_transitions_total";
    pub const COOLDOWNS: &str = "switchyard_profile_cooldowns_total";
    pub const BILLING_DISABLES: &str = "switchyard_profile_billing_disables_total";
    pub const AUTH_FAILURES: &str = "switchyard_profile_auth_failures_total";
    pub const ACTOR_RESTARTS: &str = "switchyard_actor_restarts_total";
    pub const MAILBOX_DROPS: &str = "switchyard_actor_mailbox_drops_total";
    pub const STORE_FLUSH: &str = "switchyard_store_flush_seconds";
    pub const USAGE_EXPIRED: &str = "switchyard_usage_expired_records_total";
}

/// Counters the actors move; cheap to clone (prometheus handles are shared).
#[derive(Clone)]
pub struct ActorMetrics {
    /// `{profile, to}`: to = open | closed.
    pub breaker_transitions: IntCounterVec,
    /// `{profile, reason}`: reason = a failure class.
    pub cooldowns: IntCounterVec,
    /// `{profile}`
    pub billing_disables: IntCounterVec,
    /// `{profile}`
    pub auth_failures: IntCounterVec,
    /// `{actor}`: profile | router | usage_recorder.
    pub restarts: IntCounterVec,
    /// `{actor}`
    pub mailbox_drops: IntCounterVec,
    /// sled flush latency.
    pub store_flush: Histogram,
    /// Usage records removed by retention (`usage.retention`).
    pub usage_expired: IntCounter,
}

/// A metric definition that cannot fail for our constant names; an error means a bug in this file.
#[derive(Debug, thiserror::Error)]
#[error("metric definition: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl ActorMetrics {
    /// Creates the metrics without registering them (unit tests, or when no registry is wanted).
    pub fn unregistered() -> Result<ActorMetrics, MetricsError> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        Ok(ActorMetrics {
            breaker_transitions: counter(
                names::BREAKER_TRANSITIONS,
                "Circuit breaker transitions by profile and target state.",
                &["profile", "to"],
            )?,
            cooldowns: counter(
                names::COOLDOWNS,
                "Cooldowns started, by profile and failure class.",
                &["profile", "reason"],
            )?,
            billing_disables: counter(
                names::BILLING_DISABLES,
                "Billing disables (402, insufficient quota) by profile.",
                &["profile"],
            )?,
            auth_failures: counter(
                names::AUTH_FAILURES,
                "Profiles marked auth_failed.",
                &["profile"],
            )?,
            restarts: counter(
                names::ACTOR_RESTARTS,
                "Supervisor restarts by actor kind.",
                &["actor"],
            )?,
            mailbox_drops: counter(
                names::MAILBOX_DROPS,
                "Messages dropped because a bounded mailbox was full.",
                &["actor"],
            )?,
            store_flush: Histogram::with_opts(
                HistogramOpts::new(
                    names::STORE_FLUSH,
                    "Latency of sled flushes (group commits).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            )?,
            usage_expired: IntCounter::new(
                names::USAGE_EXPIRED,
                "Usage records removed by retention (usage.retention).",
            )?,
        })
    }

    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<ActorMetrics, MetricsError> {
        let m = ActorMetrics::unregistered()?;
        registry.register(Box::new(m.breaker_transitions.clone()))?;
        registry.register(Box::new(m.cooldowns.clone()))?;
        registry.register(Box::new(m.billing_disables.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.restarts.clone()))?;
        registry.register(Box::new(m.mailbox_drops.clone()))?;
        registry.register(Box::new(m.store_flush.clone()))?;
        registry.register(Box::new(m.usage_expired.clone()))?;
        // Series that may stay at zero for a process's life still appear in every scrape, so dashboards
        // and alerts see 0 rather than "no data".
        for actor in ["profile", "usage_recorder"] {
            m.restarts.with_label_values(&[actor]);
            m.mailbox_drops.with_label_values(&[actor]);
        }
        Ok(m)
    }
}
