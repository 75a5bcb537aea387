//! The health state machine of one profile: cooldown, billing, auth and breaker, as plain data.
//!
//! `ProfileHealth` is owned by a `ProfileActor` (which applies transitions) and published as an immutable
//! `HealthView` that the router reads without a mailbox round trip.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::outcome::{AttemptOutcome, FailureClass};
use crate::policy::HealthPolicy;

/// The breaker as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BreakerView {
    /// Calls flow.
    Closed,
    /// No calls until `until`; after it, exactly one probe is admitted (half-open).
    Open { until: SystemTime },
}

/// The state names of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateName {
    Healthy,
    Cooldown,
    BillingDisabled,
    AuthFailed,
    Open,
    HalfOpen,
}

impl StateName {
    /// The CONTRACT's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Healthy => "healthy",
            StateName::Cooldown => "cooldown",
            StateName::BillingDisabled => "billing_disabled",
            StateName::AuthFailed => "auth_failed",
            StateName::Open => "open",
            StateName::HalfOpen => "half_open",
        }
    }

    /// Every state, for one-gauge-per-state metrics.
    pub const ALL: [StateName; 6] = [
        StateName::Healthy,
        StateName::Cooldown,
        StateName::BillingDisabled,
        StateName::AuthFailed,
        StateName::Open,
        StateName::HalfOpen,
    ];
}

/// An immutable snapshot of a profile's health; also what is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// Rate limit / server cooldown end.
    pub cooldown_until: Option<SystemTime>,
    /// Consecutive cooldown-class failures (drives the exponential schedule).
    pub cooldown_strikes: u32,
    /// Billing bench end.
    pub billing_until: Option<SystemTime>,
    /// Consecutive billing failures (drives the doubling schedule).
    pub billing_strikes: u32,
    /// Why the credential is considered bad, if it is.
    pub auth_failed: Option<String>,
    /// Breaker state.
    pub breaker: BreakerView,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The last failure, for operators.
    pub last_error: Option<String>,
    /// Fingerprint of the credential `auth_failed` was observed with: a new key clears it on restore.
    #[serde(default)]
    pub credential_fingerprint: u64,
}

impl HealthView {
    /// A profile with a clean slate.
    pub fn healthy(credential_fingerprint: u64) -> HealthView {
        HealthView {
            cooldown_until: None,
            cooldown_strikes: 0,
            billing_until: None,
            billing_strikes: 0,
            auth_failed: None,
            breaker: BreakerView::Closed,
            consecutive_failures: 0,
            last_error: None,
            credential_fingerprint,
        }
    }

    /// The state an operator should see at `now` (the most severe one that applies).
    pub fn state_at(&self, now: SystemTime) -> StateName {
        if self.auth_failed.is_some() {
            return StateName::AuthFailed;
        }
        if self.billing_until.is_some_and(|t| t > now) {
            return StateName::BillingDisabled;
        }
        if let BreakerView::Open { until } = self.breaker {
            return if until > now {
                StateName::Open
            } else {
                StateName::HalfOpen
            };
        }
        if self.cooldown_until.is_some_and(|t| t > now) {
            return StateName::Cooldown;
        }
        StateName::Healthy
    }

    /// When the current state ends on its own (None for healthy or auth_failed).
    pub fn state_until(&self, now: SystemTime) -> Option<SystemTime> {
        match self.state_at(now) {
            StateName::BillingDisabled => self.billing_until,
            StateName::Open => match self.breaker {
                BreakerView::Open { until } => Some(until),
                BreakerView::Closed => None,
            },
            StateName::Cooldown => self.cooldown_until,
            StateName::Healthy | StateName::AuthFailed | StateName::HalfOpen => None,
        }
    }
}

/// What a transition changed, so the actor knows what to persist and count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transition {
    /// The breaker opened (or re-opened after a failed probe).
    pub breaker_opened: bool,
    /// The breaker closed after a successful probe.
    pub breaker_closed: bool,
    /// Anything persisted changed.
    pub changed: bool,
}

/// The failsafe breaker we drive by hand: failsafe's `call()` would count a 500 as a success.
type Breaker = failsafe::StateMachine<
    failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::Constant>,
    BreakerEvents,
>;

/// Forwards failsafe's transitions into plain flags we can read after each call.
#[derive(Debug, Clone, Default)]
struct BreakerEvents(std::sync::Arc<parking_lot::Mutex<Option<bool>>>);

impl failsafe::Instrument for BreakerEvents {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        *self.0.lock() = Some(true);
    }
    fn on_half_open(&self) {}
    fn on_closed(&self) {
        *self.0.lock() = Some(false);
    }
}

/// The mutable health of one profile. Transitions are plain functions of (state, outcome, now).
pub struct ProfileHealth {
    policy: HealthPolicy,
    view: HealthView,
    breaker: Breaker,
    breaker_events: BreakerEvents,
}

impl ProfileHealth {
    /// Starts from a restored (or fresh) view; an open breaker is re-armed for its full `open_for`.
    pub fn new(policy: HealthPolicy, mut view: HealthView, now: SystemTime) -> ProfileHealth {
        let breaker_events = BreakerEvents::default();
        let breaker = failsafe::Config::new()
            .failure_policy(failsafe::failure_policy::consecutive_failures(
                policy.breaker.failure_threshold,
                failsafe::backoff::constant(policy.breaker.open_for),
            ))
            .instrument(breaker_events.clone())
            .build();
        if let BreakerView::Open { .. } = view.breaker {
            // failsafe cannot be restored into Open directly: trip it, and align our view with its clock.
            for _ in 0..policy.breaker.failure_threshold {
                breaker.on_error();
            }
            view.breaker = BreakerView::Open {
                until: now + policy.breaker.open_for,
            };
        }
        *breaker_events.0.lock() = None;
        ProfileHealth {
            policy,
            view,
            breaker,
            breaker_events,
        }
    }

    /// The current snapshot.
    pub fn view(&self) -> &HealthView {
        &self.view
    }

    /// Replaces the policy (config reload) keeping the state.
    pub fn set_policy(&mut self, policy: HealthPolicy, now: SystemTime) {
        if policy != self.policy {
            let view = self.view.clone();
            *self = ProfileHealth::new(policy, view, now);
        }
    }

    /// Applies one attempt's outcome.
    pub fn apply(&mut self, outcome: &AttemptOutcome, now: SystemTime) -> Transition {
        let mut t = Transition::default();
        // Lets failsafe move Open -> HalfOpen when its own clock says so, before we report.
        let _ = self.breaker.is_call_permitted();
        match outcome {
            AttemptOutcome::Abandoned => return t,
            AttemptOutcome::Succeeded => {
                self.breaker.on_success();
                let v = &mut self.view;
                if v.consecutive_failures != 0 || v.cooldown_strikes != 0 || v.billing_strikes != 0
                {
                    t.changed = true;
                }
                v.consecutive_failures = 0;
                v.cooldown_strikes = 0;
                v.billing_strikes = 0;
            }
            AttemptOutcome::Failed {
                class,
                retry_after,
                detail,
            } => {
                t.changed = true;
                self.breaker.on_error();
                let v = &mut self.view;
                v.consecutive_failures = v.consecutive_failures.saturating_add(1);
                v.last_error = Some(format!("{}: {}", class.as_str(), detail));
                match class {
                    FailureClass::Billing => {
                        v.billing_strikes = v.billing_strikes.saturating_add(1);
                        let delay = self.policy.billing.delay(v.billing_strikes);
                        v.billing_until = Some(now + delay);
                    }
                    FailureClass::Auth => {
                        v.auth_failed = Some(detail.clone());
                    }
                    c if c.cools_down() => {
                        v.cooldown_strikes = v.cooldown_strikes.saturating_add(1);
                        let scheduled = self.policy.cooldown.delay(v.cooldown_strikes);
                        // Retry-After is the provider's own word; honour it, bounded by the billing cap.
                        let delay = match retry_after {
                            Some(ra) => (*ra).min(self.policy.billing.max),
                            None => scheduled,
                        };
                        v.cooldown_until = Some(now + delay);
                    }
                    _ => {}
                }
            }
        }
        match self.breaker_events.0.lock().take() {
            Some(true) => {
                t.breaker_opened = true;
                t.changed = true;
                // failsafe armed its timer on its own clock just now; never let ours end before it.
                let opened_at = now.max(SystemTime::now());
                self.view.breaker = BreakerView::Open {
                    until: opened_at + self.policy.breaker.open_for,
                };
            }
            Some(false) => {
                t.breaker_closed = matches!(self.view.breaker, BreakerView::Open { .. });
                t.changed |= t.breaker_closed;
                self.view.breaker = BreakerView::Closed;
            }
            None => {}
        }
        t
    }

    /// Marks the credential bad without an attempt (e.g. its environment variable is unset).
    pub fn mark_auth_failed(&mut self, reason: String) {
        self.view.auth_failed = Some(reason);
    }

    /// A new credential: an auth failure seen with the old one no longer applies.
    pub fn credential_changed(&mut self, fingerprint: u64, unusable_reason: Option<String>) {
        self.view.credential_fingerprint = fingerprint;
        self.view.auth_failed = unusable_reason;
    }

    /// Takes another replica's cooldown and billing ends where they are later than ours (a merge
    /// keeps the later end, so two writers racing never shorten a bench), and its auth failure when
    /// we have none (it has no end: only a reset clears it); true if anything moved.
    pub fn merge_lanes(
        &mut self,
        cooldown_until: Option<SystemTime>,
        billing_until: Option<SystemTime>,
        auth_failed: Option<String>,
        now: SystemTime,
    ) -> bool {
        let later = |ours: &mut Option<SystemTime>, theirs: Option<SystemTime>| {
            let theirs = theirs.filter(|t| *t > now && ours.is_none_or(|o| *t > o));
            if theirs.is_some() {
                *ours = theirs;
            }
            theirs.is_some()
        };
        let cooled = later(&mut self.view.cooldown_until, cooldown_until);
        let benched = later(&mut self.view.billing_until, billing_until);
        let refused = self.view.auth_failed.is_none() && auth_failed.is_some();
        if refused {
            self.view.auth_failed = auth_failed;
        }
        cooled || benched || refused
    }

    /// Clears cooldown, billing, auth and breaker state (admin reset).
    pub fn reset(&mut self) {
        self.breaker.reset();
        // failsafe's reset leaves a closed breaker's failure count alone; a success clears it.
        self.breaker.on_success();
        *self.breaker_events.0.lock() = None;
        let fp = self.view.credential_fingerprint;
        let last_error = self.view.last_error.take();
        self.view = HealthView::healthy(fp);
        self.view.last_error = last_error;
    }
}

/// Restores a persisted view for a profile whose credential has `fingerprint`: an auth failure seen with
/// another credential no longer applies, and expired timers are dropped.
pub fn restore_view(saved: Option<HealthView>, fingerprint: u64, now: SystemTime) -> HealthView {
    let Some(mut v) = saved else {
        return HealthView::healthy(fingerprint);
    };
    if v.credential_fingerprint != fingerprint {
        v.auth_failed = None;
        v.credential_fingerprint = fingerprint;
    }
    if v.cooldown_until.is_some_and(|t| t <= now) {
        v.cooldown_until = None;
    }
    if v.billing_until.is_some_and(|t| t <= now) {
        v.billing_until = None;
    }
    v
}

/// A duration suitable for display: whole milliseconds.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BreakerSettings, CooldownPolicy};

    fn policy() -> HealthPolicy {
        HealthPolicy {
            cooldown: CooldownPolicy {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(8),
            },
            billing: CooldownPolicy {
                initial: Duration::from_secs(3600),
                max: Duration::from_secs(4 * 3600),
            },
            breaker: BreakerSettings {
                failure_threshold: 3,
                open_for: Duration::from_millis(200),
            },
        }
    }

    fn fail(class: FailureClass) -> AttemptOutcome {
        AttemptOutcome::Failed {
            class,
            retry_after: None,
            detail: "x".into(),
        }
    }

    #[test]
    fn cooldown_is_exponential_and_success_resets_strikes() {
        let now = SystemTime::now();
        let mut h = ProfileHealth::new(policy(), HealthView::healthy(0), now);
        h.apply(&fail(FailureClass::Server), now);
        assert_eq!(h.view().cooldown_until, Some(now + Duration::from_secs(1)));
        assert_eq!(h.view().state_at(now), StateName::Cooldown);
        h.apply(&fail(FailureClass::Timeout), now);
        assert_eq!(h.view().cooldown_until, Some(now + Duration::from_secs(2)));
        h.apply(&AttemptOutcome::Succeeded, now);
        assert_eq!(h.view().consecutive_failures, 0);
        h.apply(&fail(FailureClass::Server), now);
        assert_eq!(h.view().cooldown_until, Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn retry_after_overrides_schedule() {
        let now = SystemTime::now();
        let mut h = ProfileHealth::new(policy(), HealthView::healthy(0), now);
        h.apply(
            &AttemptOutcome::Failed {
                class: FailureClass::RateLimited,
                retry_after: Some(Duration::from_secs(30)),
                detail: "429".into(),
            },
            now,
        );
        assert_eq!(h.view().cooldown_until, Some(now + Duration::from_secs(30)));
    }

    #[test]
    fn billing_doubles_to_max_and_is_its_own_state() {
        let now = SystemTime::now();
        let mut h = ProfileHealth::new(policy(), HealthView::healthy(0), now);
        h.apply(&fail(FailureClass::Billing), now);
        assert_eq!(h.view().state_at(now), StateName::BillingDisabled);
        assert_eq!(
            h.view().billing_until,
            Some(now + Duration::from_secs(3600))
        );
        h.apply(&fail(FailureClass::Billing), now);
        h.apply(&fail(FailureClass::Billing), now);
        assert_eq!(
            h.view().billing_until,
            Some(now + Duration::from_secs(4 * 3600))
        );
        assert_eq!(h.view().cooldown_until, None);
    }

    #[test]
    fn auth_failure_sticks_until_reset() {
        let now = SystemTime::now();
        let mut h = ProfileHealth::new(policy(), HealthView::healthy(0), now);
        h.apply(&fail(FailureClass::Auth), now);
        let later = now + Duration::from_secs(86400 * 30);
        assert_eq!(h.view().state_at(later), StateName::AuthFailed);
        h.reset();
        assert_eq!(h.view().state_at(now), StateName::Healthy);
    }

    #[test]
    fn breaker_opens_after_threshold_then_half_open_then_closes() {
        let start = SystemTime::now();
        let mut h = ProfileHealth::new(policy(), HealthView::healthy(0), start);
        assert!(!h.apply(&fail(FailureClass::Server), start).breaker_opened);
        assert!(!h.apply(&fail(FailureClass::Server), start).breaker_opened);
        let t = h.apply(&fail(FailureClass::Server), start);
        assert!(t.breaker_opened);
        assert_eq!(h.view().state_at(start), StateName::Open);
        let after = start + Duration::from_millis(250);
        assert_eq!(h.view().state_at(after), StateName::HalfOpen);
        // failsafe keeps its own clock: wait it out for real.
        std::thread::sleep(Duration::from_millis(250));
        let now = SystemTime::now();
        let t = h.apply(&AttemptOutcome::Succeeded, now);
        assert!(t.breaker_closed);
        assert_eq!(h.view().breaker, BreakerView::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let start = SystemTime::now();
        let mut h = ProfileHealth::new(policy(), HealthView::healthy(0), start);
        for _ in 0..3 {
            h.apply(&fail(FailureClass::Server), start);
        }
        std::thread::sleep(Duration::from_millis(250));
        let now = SystemTime::now();
        let t = h.apply(&fail(FailureClass::Server), now);
        assert!(t.breaker_opened);
        assert_eq!(h.view().state_at(now), StateName::Open);
    }

    #[test]
    fn restore_drops_auth_failure_of_another_credential_and_expired_timers() {
        let now = SystemTime::now();
        let mut v = HealthView::healthy(7);
        v.auth_failed = Some("401".into());
        v.cooldown_until = Some(now - Duration::from_secs(1));
        v.billing_until = Some(now + Duration::from_secs(100));
        let same = restore_view(Some(v.clone()), 7, now);
        assert!(same.auth_failed.is_some());
        assert_eq!(same.cooldown_until, None);
        assert!(same.billing_until.is_some());
        let other = restore_view(Some(v), 8, now);
        assert!(other.auth_failed.is_none());
    }

    #[test]
    fn restored_open_breaker_is_rearmed() {
        let now = SystemTime::now();
        let mut v = HealthView::healthy(0);
        v.breaker = BreakerView::Open {
            until: now + Duration::from_secs(1000),
        };
        let h = ProfileHealth::new(policy(), v, now);
        assert_eq!(
            h.view().breaker,
            BreakerView::Open {
                until: now + Duration::from_millis(200)
            }
        );
    }

    #[test]
    fn merged_lanes_keep_the_later_end() {
        let now = SystemTime::now();
        let mut h = ProfileHealth::new(policy(), HealthView::healthy(0), now);
        let (soon, later) = (now + Duration::from_secs(10), now + Duration::from_secs(60));
        assert!(h.merge_lanes(Some(later), None, None, now));
        assert_eq!(h.view().state_at(now), StateName::Cooldown);
        assert!(
            !h.merge_lanes(Some(soon), None, None, now),
            "an earlier end never shortens it"
        );
        assert_eq!(h.view().cooldown_until, Some(later));
        assert!(
            !h.merge_lanes(None, Some(now - Duration::from_secs(1)), None, now),
            "past ends are ignored"
        );
        assert!(h.merge_lanes(None, Some(soon), None, now));
        assert_eq!(h.view().state_at(now), StateName::BillingDisabled);
    }

    #[test]
    fn a_merged_auth_failure_sticks_and_keeps_our_own_reason() {
        let now = SystemTime::now();
        let mut h = ProfileHealth::new(policy(), HealthView::healthy(7), now);
        assert!(h.merge_lanes(None, None, Some("401 on another replica".into()), now));
        assert_eq!(h.view().state_at(now), StateName::AuthFailed);
        assert!(
            !h.merge_lanes(None, None, Some("another reason".into()), now),
            "one auth failure is enough"
        );
        assert_eq!(
            h.view().auth_failed.as_deref(),
            Some("401 on another replica")
        );
        h.reset();
        assert_eq!(h.view().state_at(now), StateName::Healthy);
    }
}
