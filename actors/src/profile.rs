//! One upstream profile: `ProfileShared` (what the hot path reads lock-free) and `ProfileActor` (who changes it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use arc_swap::ArcSwap;

use crate::health::{BreakerView, HealthView, ProfileHealth, StateName};
use crate::metrics::ActorMetrics;
use crate::outcome::{AttemptOutcome, FailureClass};
use crate::policy::{HealthPolicy, UpstreamLimits};
use crate::store::{ProfileCounters, Store};

/// Whether a profile can take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Healthy: take it.
    Usable,
    /// Its breaker's open period is over: it may take exactly one probe, if nobody holds the probe.
    Probe,
    /// Not usable, and why.
    Unusable(StateName),
    /// Healthy, but its provider's per-minute budget (`limits.rpm` / `tpm`) is spent until the given time.
    Throttled(SystemTime),
}

/// Requests and tokens sent to a profile in the current minute, against its provider's limits.
/// Atomics only: checked on every pick, updated on every attempt.
#[derive(Default)]
pub struct UpstreamBudget {
    /// 0 = unlimited. Atomic so a reload can change it in place.
    rpm: AtomicU64,
    tpm: AtomicU64,
    /// The minute (since the epoch) the counters belong to.
    minute: AtomicU64,
    requests: AtomicU64,
    tokens: AtomicU64,
}

fn minute_of(now: SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

impl UpstreamBudget {
    /// Sets the limits (start-up and reload).
    pub fn set_limits(&self, limits: UpstreamLimits) {
        self.rpm
            .store(limits.rpm.map_or(0, u64::from), Ordering::Relaxed);
        self.tpm
            .store(limits.tpm.map_or(0, u64::from), Ordering::Relaxed);
    }

    fn roll(&self, now: SystemTime) {
        let m = minute_of(now);
        let seen = self.minute.load(Ordering::Acquire);
        if seen != m
            && self
                .minute
                .compare_exchange(seen, m, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.requests.store(0, Ordering::Release);
            self.tokens.store(0, Ordering::Release);
        }
    }

    /// `None` when there is room now, else when the budget refills.
    pub fn exhausted_until(&self, now: SystemTime) -> Option<SystemTime> {
        let (rpm, tpm) = (
            self.rpm.load(Ordering::Relaxed),
            self.tpm.load(Ordering::Relaxed),
        );
        if rpm == 0 && tpm == 0 {
            return None;
        }
        self.roll(now);
        let full = (rpm != 0 && self.requests.load(Ordering::Acquire) >= rpm)
            || (tpm != 0 && self.tokens.load(Ordering::Acquire) >= tpm);
        full.then(|| {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs((minute_of(now) + 1) * 60)
        })
    }

    /// Counts one request if the minute's request budget allows it.
    pub fn take_request(&self, now: SystemTime) -> bool {
        let rpm = self.rpm.load(Ordering::Relaxed);
        if rpm == 0 {
            return true;
        }
        self.roll(now);
        if self.requests.fetch_add(1, Ordering::AcqRel) >= rpm {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Counts tokens an answer used.
    pub fn add_tokens(&self, n: u64, now: SystemTime) {
        if self.tpm.load(Ordering::Relaxed) == 0 || n == 0 {
            return;
        }
        self.roll(now);
        self.tokens.fetch_add(n, Ordering::AcqRel);
    }
}

/// The read side of a profile, shared by every request. Written only by its `ProfileActor`
/// (health) and by outcome reports (counters, which are plain atomics: no queue on the hot path).
pub struct ProfileShared {
    id: Arc<str>,
    /// Swapped whole by the actor after each transition; readers never block.
    view: ArcSwap<HealthView>,
    /// Set by the request that holds the half-open probe; cleared by the actor once the probe's outcome is applied.
    probe_claimed: AtomicBool,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Outcome reports lost to a full mailbox.
    dropped_reports: AtomicU64,
    /// Times the actor was restarted by its supervisor.
    restarts: AtomicU64,
    /// Attempts sent and not yet ended (a stream until its last event): an atomic, as every attempt
    /// moves it twice and the admin view only reads it.
    in_flight: AtomicU64,
    metrics: ActorMetrics,
    /// The provider's per-minute budget for this credential.
    pub budget: UpstreamBudget,
    /// Signalled when a lane another replica would take (cooldown, billing, auth) changed here: a
    /// tokio `Notify`, one per router, because the shared-state task waits on it between exchanges
    /// and a permit stored while it is busy must not be lost.
    lanes_changed: Arc<tokio::sync::Notify>,
}

impl ProfileShared {
    /// A profile's shared state, restored from `view` and `counters`.
    pub fn new(
        id: &str,
        view: HealthView,
        counters: ProfileCounters,
        metrics: ActorMetrics,
    ) -> ProfileShared {
        ProfileShared {
            id: Arc::from(id),
            view: ArcSwap::from_pointee(view),
            probe_claimed: AtomicBool::new(false),
            requests: AtomicU64::new(counters.requests),
            failures: AtomicU64::new(counters.failures),
            dropped_reports: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            metrics,
            budget: UpstreamBudget::default(),
            lanes_changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Signals lane changes on `signal` (the router's, shared by all its profiles).
    pub fn with_lane_signal(mut self, signal: Arc<tokio::sync::Notify>) -> ProfileShared {
        self.lanes_changed = signal;
        self
    }

    /// The profile id.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The current health snapshot.
    pub fn view(&self) -> Arc<HealthView> {
        self.view.load_full()
    }

    /// Whether the profile can take a request at `now`.
    pub fn availability(&self, now: SystemTime) -> Availability {
        let view = self.view.load();
        match view.state_at(now) {
            StateName::Healthy => match self.budget.exhausted_until(now) {
                None => Availability::Usable,
                Some(until) => Availability::Throttled(until),
            },
            StateName::HalfOpen if !self.probe_claimed.load(Ordering::Acquire) => {
                Availability::Probe
            }
            other => Availability::Unusable(other),
        }
    }

    /// Takes the single half-open probe; false if another request holds it.
    pub fn try_claim_probe(&self) -> bool {
        self.probe_claimed
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Attempts sent and attempts failed, since the profile was first seen.
    pub fn counters(&self) -> ProfileCounters {
        ProfileCounters {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Outcome reports dropped because the actor's mailbox was full.
    pub fn dropped_reports(&self) -> u64 {
        self.dropped_reports.load(Ordering::Relaxed)
    }

    /// Supervisor restarts of this profile's actor.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Attempts in flight to this profile now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// An attempt to this profile started; pair with `attempt_ended`.
    pub fn attempt_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt started with `attempt_started` ended, however it ended.
    pub fn attempt_ended(&self) {
        // Saturating: a reload that rebuilt the shared state mid-attempt must not wrap the count.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    fn publish(&self, view: HealthView) {
        let old = self.view.swap(Arc::new(view));
        let now = self.view.load();
        if old.cooldown_until != now.cooldown_until
            || old.billing_until != now.billing_until
            || old.auth_failed != now.auth_failed
        {
            self.lanes_changed.notify_one();
        }
    }
}

/// Reports one attempt's outcome. A probe's report must arrive, so it bypasses the mailbox limit.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ReportOutcome {
    pub outcome: AttemptOutcome,
    /// This attempt held the half-open probe.
    pub probe: bool,
}

/// Clears cooldown, billing, auth and breaker state.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ResetProfile;

/// Marks the credential unusable without an attempt (e.g. its environment variable is unset).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct MarkAuthFailed {
    pub reason: String,
}

/// Replaces the health policy (config reload), keeping the state.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct UpdatePolicy(pub HealthPolicy);

/// The profile's credential changed (config reload): forget an auth failure seen with the old one, and
/// mark the new one unusable if it cannot be resolved.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CredentialChanged {
    pub fingerprint: u64,
    pub unusable_reason: Option<String>,
}

/// Stops the actor so its supervisor restarts it from the shared state (used after an unrecoverable store error).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Restart;

/// Another replica's cooldown and billing ends and auth failure (shared state): merged, the later
/// end kept, an auth failure taken when this replica has none.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MergeLanes {
    pub cooldown_until: Option<SystemTime>,
    pub billing_until: Option<SystemTime>,
    pub auth_failed: Option<String>,
}

/// Owns one profile's health transitions and persists them.
pub struct ProfileActor {
    shared: Arc<ProfileShared>,
    policy: HealthPolicy,
    health: ProfileHealth,
    store: Store,
}

/// Mailbox size: outcome reports beyond this are dropped (and counted) rather than queued without bound.
pub const MAILBOX_CAPACITY: usize = 4096;

impl ProfileActor {
    /// An actor for `shared`, whose current view is the starting state.
    pub fn new(shared: Arc<ProfileShared>, policy: HealthPolicy, store: Store) -> ProfileActor {
        let health = ProfileHealth::new(policy, (*shared.view()).clone(), SystemTime::now());
        ProfileActor {
            shared,
            policy,
            health,
            store,
        }
    }

    fn count(&self, outcome: &AttemptOutcome, t: crate::health::Transition) {
        let m = &self.shared.metrics;
        let id: &str = self.shared.id();
        if t.breaker_opened {
            m.breaker_transitions.with_label_values(&[id, "open"]).inc();
        }
        if t.breaker_closed {
            m.breaker_transitions
                .with_label_values(&[id, "closed"])
                .inc();
        }
        if let AttemptOutcome::Failed { class, .. } = outcome {
            match class {
                FailureClass::Billing => m.billing_disables.with_label_values(&[id]).inc(),
                FailureClass::Auth => m.auth_failures.with_label_values(&[id]).inc(),
                c => m.cooldowns.with_label_values(&[id, c.as_str()]).inc(),
            }
        }
    }

    fn persist(&mut self, ctx: &mut Context<Self>, durable: bool) {
        let view = self.health.view().clone();
        self.shared.publish(view.clone());
        if let Err(e) = self.store.save_health(self.shared.id(), &view) {
            tracing::error!(profile = %self.shared.id(), error = %e, "cannot save profile health; restarting actor");
            ctx.stop();
            return;
        }
        if durable {
            let store = self.store.clone();
            let id = self.shared.id().clone();
            let timer = self.shared.metrics.store_flush.start_timer();
            ctx.spawn(actix::fut::wrap_future(async move {
                let flushed = store.flush().await;
                timer.observe_duration();
                if let Err(e) = flushed {
                    tracing::error!(profile = %id, error = %e, "cannot flush profile health");
                }
            }));
        }
    }
}

impl Actor for ProfileActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Supervised for ProfileActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // The shared view is the truth; rebuild the breaker and schedules from it.
        self.shared.restarts.fetch_add(1, Ordering::Relaxed);
        self.shared
            .metrics
            .restarts
            .with_label_values(&["profile"])
            .inc();
        self.health = ProfileHealth::new(
            self.policy,
            (*self.shared.view()).clone(),
            SystemTime::now(),
        );
        self.shared.probe_claimed.store(false, Ordering::Release);
    }
}

impl Handler<ReportOutcome> for ProfileActor {
    type Result = ();

    fn handle(&mut self, msg: ReportOutcome, ctx: &mut Self::Context) {
        let before = self.health.view().state_at(SystemTime::now());
        let t = self.health.apply(&msg.outcome, SystemTime::now());
        self.count(&msg.outcome, t);
        if t.changed {
            let after = self.health.view().state_at(SystemTime::now());
            if before != after {
                tracing::info!(
                    profile = %self.shared.id(),
                    from = before.as_str(),
                    to = after.as_str(),
                    last_error = self.health.view().last_error.as_deref().unwrap_or(""),
                    "profile state changed"
                );
            }
            self.persist(ctx, before != after);
        }
        if msg.probe {
            self.shared.probe_claimed.store(false, Ordering::Release);
        }
    }
}

impl Handler<ResetProfile> for ProfileActor {
    type Result = ();

    fn handle(&mut self, _msg: ResetProfile, ctx: &mut Self::Context) {
        self.health.reset();
        self.shared.probe_claimed.store(false, Ordering::Release);
        tracing::info!(profile = %self.shared.id(), "profile reset");
        self.persist(ctx, true);
    }
}

impl Handler<MergeLanes> for ProfileActor {
    type Result = ();

    fn handle(&mut self, msg: MergeLanes, ctx: &mut Self::Context) {
        let now = SystemTime::now();
        let before = self.health.view().state_at(now);
        if self
            .health
            .merge_lanes(msg.cooldown_until, msg.billing_until, msg.auth_failed, now)
        {
            let after = self.health.view().state_at(now);
            tracing::info!(profile = %self.shared.id(), from = before.as_str(), to = after.as_str(), "profile state taken from another replica");
            self.persist(ctx, false);
        }
    }
}

impl Handler<MarkAuthFailed> for ProfileActor {
    type Result = ();

    fn handle(&mut self, msg: MarkAuthFailed, ctx: &mut Self::Context) {
        self.shared
            .metrics
            .auth_failures
            .with_label_values(&[&**self.shared.id()])
            .inc();
        self.health.mark_auth_failed(msg.reason);
        self.persist(ctx, false);
    }
}

impl Handler<CredentialChanged> for ProfileActor {
    type Result = ();

    fn handle(&mut self, msg: CredentialChanged, ctx: &mut Self::Context) {
        self.health
            .credential_changed(msg.fingerprint, msg.unusable_reason);
        tracing::info!(profile = %self.shared.id(), "profile credential changed");
        self.persist(ctx, true);
    }
}

impl Handler<UpdatePolicy> for ProfileActor {
    type Result = ();

    fn handle(&mut self, msg: UpdatePolicy, _ctx: &mut Self::Context) {
        self.policy = msg.0;
        self.health.set_policy(msg.0, SystemTime::now());
    }
}

impl Handler<Restart> for ProfileActor {
    type Result = ();

    fn handle(&mut self, _msg: Restart, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Sends an outcome to a profile's actor and updates its counters.
pub fn report(
    shared: &ProfileShared,
    addr: &Addr<ProfileActor>,
    outcome: AttemptOutcome,
    probe: bool,
) {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    if matches!(outcome, AttemptOutcome::Failed { .. }) {
        shared.failures.fetch_add(1, Ordering::Relaxed);
    }
    // Most reports change nothing: skip the mailbox for them (the hot path's common case).
    let is_noop = !probe
        && match outcome {
            AttemptOutcome::Abandoned => true,
            AttemptOutcome::Succeeded => {
                let v = shared.view.load();
                v.consecutive_failures == 0 && v.cooldown_strikes == 0 && v.billing_strikes == 0
            }
            AttemptOutcome::Failed { .. } => false,
        };
    if is_noop {
        return;
    }
    let msg = ReportOutcome { outcome, probe };
    if probe {
        addr.do_send(msg);
    } else if addr.try_send(msg).is_err() {
        shared.dropped_reports.fetch_add(1, Ordering::Relaxed);
        shared
            .metrics
            .mailbox_drops
            .with_label_values(&["profile"])
            .inc();
    }
}

/// Releases a half-open probe that was claimed but not used; the outcome changes no state.
pub fn release_probe(addr: &Addr<ProfileActor>) {
    addr.do_send(ReportOutcome {
        outcome: AttemptOutcome::Abandoned,
        probe: true,
    });
}

/// Whether a view's breaker is open (for display).
pub fn breaker_open_until(view: &HealthView) -> Option<SystemTime> {
    match view.breaker {
        BreakerView::Open { until } => Some(until),
        BreakerView::Closed => None,
    }
}
