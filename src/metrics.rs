//! The proxy's Prometheus metrics. Every name starts with `switchyard_`; labels are bounded (a configured
//! model or profile, a status class, an outcome class, a route pattern) — never a key, an account or a path.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use switchyard_actors::health::StateName;
use switchyard_actors::metrics::{ActorMetrics, MetricsError};
use switchyard_actors::router::Router;

/// Metric names, shared with the dashboard test.
pub mod names {
    pub use switchyard_actors::metrics::names::*;
    pub const HTTP_REQUESTS: &str = "switchyard_http_requests_total";
    pub const REQUESTS: &str = "switchyard_requests_total";
    pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
    pub const UPSTREAM_DURATION: &str = "switchyard_upstream_duration_seconds";
    pub const TTFT: &str = "switchyard_time_to_first_token_seconds";
    pub const TOKENS: &str = "switchyard_tokens_total";
    pub const TOKEN_DETAILS: &str = "switchyard_token_details_total";
    pub const IN_FLIGHT: &str = "switchyard_in_flight_requests";
    pub const ATTEMPTS: &str = "switchyard_attempts_total";
    pub const FAILOVERS: &str = "switchyard_failovers_total";
    pub const PROFILE_STATE: &str = "switchyard_profile_state";
    pub const RELOADS: &str = "switchyard_config_reloads_total";
    pub const SESSIONS: &str = "switchyard_sticky_sessions";
    pub const RATE_LIMITED: &str = "switchyard_rate_limited_total";
    pub const CREDIT_REFUSALS: &str = "switchyard_credit_refusals_total";
    pub const COST: &str = "switchyard_cost_usd_total";
    pub const USAGE_MISSING: &str = "switchyard_usage_missing_total";
    pub const UNPRICED: &str = "switchyard_unpriced_requests_total";
    pub const SHARED_UP: &str = "switchyard_shared_state_up";
    pub const SHARED_DEGRADED: &str = "switchyard_shared_state_degraded";
    pub const SHARED_FALLBACKS: &str = "switchyard_shared_state_fallbacks_total";
    pub const SHARED_ROUND_TRIP: &str = "switchyard_shared_state_round_trip_seconds";
    pub const SHARED_PUSHES: &str = "switchyard_shared_state_pushes_total";
    pub const SHARED_LOCKS: &str = "switchyard_shared_state_locks_total";
}

/// A local Redis answers in ~0.1 ms; the command deadline is tens of ms.
const ROUND_TRIP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Every metric of the process, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub actors: ActorMetrics,
    /// `{route, status_class}` for every HTTP request, bad ones included.
    pub http_requests: IntCounterVec,
    /// `{model, profile, status_class}` for proxied requests (profile `none` when none answered).
    pub requests: IntCounterVec,
    /// `{model}`: until the response starts.
    pub request_duration: HistogramVec,
    /// `{profile}`: until the upstream's response headers.
    pub upstream_duration: HistogramVec,
    /// `{model, profile}`: until the first streamed event reaches the client.
    pub ttft: HistogramVec,
    /// `{model, profile, kind}`: kind = prompt | completion.
    pub tokens: IntCounterVec,
    /// `{model, profile, kind}`: parts of `tokens`, kind = cache_read | cache_write | cache_write_1h
    /// (of prompt) | reasoning (of completion). Apart, so summing `tokens` counts nothing twice.
    pub token_details: IntCounterVec,
    pub in_flight: IntGauge,
    /// `{profile, outcome}`: outcome = ok | client_error | cancelled | a failure class.
    pub attempts: IntCounterVec,
    /// `{model, reason}`: another profile was tried after a failure of class `reason`.
    pub failovers: IntCounterVec,
    /// `{profile, state}`: 1 for the profile's current state, 0 for the others (set at scrape).
    pub profile_state: IntGaugeVec,
    /// `{result}`: ok | error.
    pub reloads: IntCounterVec,
    pub sessions: IntGauge,
    /// `{scope}`: requests | llm_requests | tokens — the limit that refused a request with 429.
    pub rate_limited: IntCounterVec,
    /// Requests refused with 402 because the account's credits could not cover them.
    pub credit_refusals: IntCounter,
    /// `{model, profile}`: USD charged for answered requests, from the configured prices.
    pub cost: CounterVec,
    /// `{model, profile}`: answers (or cut streams) charged by estimate because the upstream
    /// reported no usage.
    pub usage_missing: IntCounterVec,
    /// `{model, outcome}`: metered calls for a model `pricing:` does not list; outcome = default
    /// (charged at `pricing_default`) | refused (403).
    pub unpriced: IntCounterVec,
    /// The shared state's (Redis's) health and cost, with `state.backend: redis`.
    pub shared: SharedMetrics,
}

/// The metrics of `state.backend: redis` (see `shared`). Registered in local mode too, where
/// `up` stays 0 and nothing else moves.
#[derive(Clone)]
pub struct SharedMetrics {
    /// 1 while Redis answers, 0 after a failed or timed-out command (and in local mode).
    pub up: IntGauge,
    /// `{resource}`: 1 while that resource runs on its documented fallback.
    pub degraded: IntGaugeVec,
    /// `{resource}`: calls decided by the fallback instead of Redis.
    pub fallbacks: IntCounterVec,
    /// `{resource}`: one Redis round trip, answered or not.
    pub round_trip: HistogramVec,
    /// `{resource}`: rounds run at once for a change another replica published (pub/sub), or for
    /// the resync a (re)connected subscriber starts with.
    pub pushes: IntCounterVec,
    /// `{resource, outcome}`: fleet-wide locks asked for (`taken`, or `busy`: another replica holds it).
    pub locks: IntCounterVec,
}

impl SharedMetrics {
    fn register(registry: &Registry) -> Result<SharedMetrics, MetricsError> {
        let up = IntGauge::new(
            names::SHARED_UP,
            "1 while the shared state (Redis) answers, 0 when it does not or is not configured.",
        )?;
        registry.register(Box::new(up.clone()))?;
        let degraded = IntGaugeVec::new(
            Opts::new(
                names::SHARED_DEGRADED,
                "1 while a resource runs on its fallback because Redis is unreachable or slow.",
            ),
            &["resource"],
        )?;
        registry.register(Box::new(degraded.clone()))?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                names::SHARED_FALLBACKS,
                "Calls decided by a resource's fallback instead of Redis.",
            ),
            &["resource"],
        )?;
        registry.register(Box::new(fallbacks.clone()))?;
        let round_trip = HistogramVec::new(
            HistogramOpts::new(
                names::SHARED_ROUND_TRIP,
                "One Redis round trip, by resource.",
            )
            .buckets(ROUND_TRIP_BUCKETS.to_vec()),
            &["resource"],
        )?;
        registry.register(Box::new(round_trip.clone()))?;
        let pushes = IntCounterVec::new(
            Opts::new(
                names::SHARED_PUSHES,
                "Rounds run at once for a change another replica published, or a resubscription's resync.",
            ),
            &["resource"],
        )?;
        registry.register(Box::new(pushes.clone()))?;
        let locks = IntCounterVec::new(
            Opts::new(
                names::SHARED_LOCKS,
                "Fleet-wide locks asked for, by resource and outcome (taken, busy).",
            ),
            &["resource", "outcome"],
        )?;
        registry.register(Box::new(locks.clone()))?;
        Ok(SharedMetrics {
            up,
            degraded,
            fallbacks,
            round_trip,
            pushes,
            locks,
        })
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Arc<Metrics>, MetricsError> {
        let registry = Registry::new();
        let actors = ActorMetrics::register(&registry)?;
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, MetricsError> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let http_requests = counter(
            names::HTTP_REQUESTS,
            "HTTP requests by route pattern and status class.",
            &["route", "status_class"],
        )?;
        let requests = counter(
            names::REQUESTS,
            "Proxied requests by model, answering profile and status class.",
            &["model", "profile", "status_class"],
        )?;
        let request_duration = histogram(
            names::REQUEST_DURATION,
            "Time until the proxied response starts.",
            &["model"],
        )?;
        let upstream_duration = histogram(
            names::UPSTREAM_DURATION,
            "Time until an upstream's response headers.",
            &["profile"],
        )?;
        let ttft = histogram(
            names::TTFT,
            "Time until the first streamed event reaches the client.",
            &["model", "profile"],
        )?;
        let tokens = counter(
            names::TOKENS,
            "Tokens reported by upstreams.",
            &["model", "profile", "kind"],
        )?;
        let token_details = counter(
            names::TOKEN_DETAILS,
            "Parts of the reported tokens: prompt cache reads and writes, and reasoning.",
            &["model", "profile", "kind"],
        )?;
        let attempts = counter(
            names::ATTEMPTS,
            "Attempts at upstream profiles by outcome.",
            &["profile", "outcome"],
        )?;
        let failovers = counter(
            names::FAILOVERS,
            "Failovers to another profile, by the failure that caused them.",
            &["model", "reason"],
        )?;
        let reloads = counter(
            names::RELOADS,
            "Configuration reloads by result.",
            &["result"],
        )?;
        let in_flight = IntGauge::new(
            names::IN_FLIGHT,
            "Proxied requests in flight (streams until they end).",
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        let sessions = IntGauge::new(names::SESSIONS, "Sticky session pins held.")?;
        registry.register(Box::new(sessions.clone()))?;
        let profile_state = IntGaugeVec::new(
            Opts::new(
                names::PROFILE_STATE,
                "1 for each profile's current state, 0 for its other states.",
            ),
            &["profile", "state"],
        )?;
        registry.register(Box::new(profile_state.clone()))?;
        let rate_limited = counter(
            names::RATE_LIMITED,
            "Requests refused with 429 by a tier limit, by the limit's scope.",
            &["scope"],
        )?;
        let credit_refusals = IntCounter::new(
            names::CREDIT_REFUSALS,
            "Requests refused with 402 because the account's credits could not cover them.",
        )?;
        registry.register(Box::new(credit_refusals.clone()))?;
        let cost = CounterVec::new(
            Opts::new(
                names::COST,
                "USD charged for answered requests, by model and profile.",
            ),
            &["model", "profile"],
        )?;
        registry.register(Box::new(cost.clone()))?;
        let usage_missing = counter(
            names::USAGE_MISSING,
            "Answers charged by an estimate because the upstream reported no usage, by model and profile.",
            &["model", "profile"],
        )?;
        let unpriced = counter(
            names::UNPRICED,
            "Metered calls for a model without a price: charged at pricing_default, or refused.",
            &["model", "outcome"],
        )?;
        let shared = SharedMetrics::register(&registry)?;
        Ok(Arc::new(Metrics {
            registry,
            actors,
            http_requests,
            requests,
            request_duration,
            upstream_duration,
            ttft,
            tokens,
            token_details,
            in_flight,
            attempts,
            failovers,
            profile_state,
            reloads,
            sessions,
            rate_limited,
            credit_refusals,
            cost,
            usage_missing,
            unpriced,
            shared,
        }))
    }

    /// The Prometheus text exposition, with the profile-state gauges refreshed from the router.
    pub fn render(&self, router: &Router) -> String {
        let now = SystemTime::now();
        // Profiles removed by a reload disappear from the gauge rather than freeze at their last state.
        self.profile_state.reset();
        for p in router.profiles() {
            let current = p.shared.view().state_at(now);
            for state in StateName::ALL {
                self.profile_state
                    .with_label_values(&[&**p.id(), state.as_str()])
                    .set(i64::from(state == current));
            }
        }
        self.sessions
            .set(i64::try_from(router.session_count()).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `2xx`, `4xx`, `5xx`...
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Counts a request as in flight until dropped.
pub struct InFlight(IntGauge);

impl InFlight {
    /// Increments the gauge.
    pub fn start(gauge: &IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
