//! How an attempt ends without the client's answer, and the error the client gets when no profile
//! answered: which profile failed or was skipped, and why.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchyard_actors::health::StateName;
use switchyard_actors::outcome::FailureClass;
use switchyard_actors::router::SkipReason;

use crate::error::{ApiError, RateHeaders};
use crate::upstream::client::{TransportError, TransportKind};
use crate::upstream::SendError;
use crate::wire::anthropic::TranslateError;
use crate::wire::openai::RewriteError;

use super::Endpoint;

impl From<SendError> for AttemptFailure {
    fn from(e: SendError) -> AttemptFailure {
        match e {
            SendError::Transport(e) => transport_failure(&e),
            // The credential could not be had: only a new login helps (auth), or the token endpoint is
            // down for now (server, so the profile cools down and is tried again).
            SendError::Credential { class, reason } => AttemptFailure::new(class, reason),
        }
    }
}

/// How an attempt ended without the client's answer.
pub(super) enum AttemptEnd {
    /// The upstream failed: counted against the profile.
    Failed(AttemptFailure),
    /// The profile cannot serve this request (a field it has no equivalent for): nothing was sent,
    /// nothing is held against it.
    Skipped(Unsuitable),
}

/// Why a profile cannot serve a request at all (not a failure of the profile).
#[derive(Debug, thiserror::Error)]
pub(super) enum Unsuitable {
    /// Its API has no such endpoint.
    #[error("its API has no {}", .0.path())]
    NoEndpoint(Endpoint),
    /// The body has a field its dialect cannot express.
    #[error(transparent)]
    Untranslatable(#[from] TranslateError),
    /// The body could not be rewritten for it (model name, usage on streams).
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
    /// `previous_response_id` names a response another profile created.
    #[error("previous_response_id was created by profile {0}")]
    PinnedElsewhere(Arc<str>),
}

/// What the failover loop learned so far: the profiles tried, how each failed, and the ones that could
/// not serve the request or were skipped.
#[derive(Default)]
pub(super) struct Failover {
    /// Profiles already picked (the router skips them).
    pub(super) tried: Vec<Arc<str>>,
    /// Attempts sent upstream (those that count against `max_attempts`).
    pub(super) attempts: usize,
    failures: Vec<(Arc<str>, AttemptFailure)>,
    unsuitable: Vec<(Arc<str>, Unsuitable)>,
    /// Why the router had nothing more to offer, when it ran out.
    pub(super) skipped: Vec<(Arc<str>, SkipReason)>,
    /// Profiles of the model the loop never got to: `max_attempts` ran out first.
    never_reached: Vec<Arc<str>>,
    /// Half-open profiles whose probe another replica is sending (`state.backend: redis`).
    probed_elsewhere: Vec<Arc<str>>,
}

impl Failover {
    /// Counts an attempt at `id`; its 1-based number.
    pub(super) fn begin(&mut self, id: Arc<str>) -> u32 {
        self.tried.push(id);
        self.attempts += 1;
        u32::try_from(self.attempts).unwrap_or(u32::MAX)
    }

    /// `id` is half-open and another replica holds its probe: skipped, as if still open.
    pub(super) fn probed_elsewhere(&mut self, id: Arc<str>) {
        self.tried.push(id.clone());
        self.probed_elsewhere.push(id);
    }

    /// `id` cannot serve the request, found before anything was sent: it does not count as an attempt.
    pub(super) fn unsuitable(&mut self, id: Arc<str>, why: Unsuitable) {
        self.tried.push(id.clone());
        self.unsuitable.push((id, why));
    }

    /// The attempt begun at `id` turned out not to be one (the body could not be built for it).
    pub(super) fn not_attempted(&mut self, id: Arc<str>, why: Unsuitable) {
        self.attempts -= 1;
        self.unsuitable.push((id, why));
    }

    /// The attempt at `id` failed.
    pub(super) fn failed(&mut self, id: Arc<str>, f: AttemptFailure) {
        self.failures.push((id, f));
    }

    /// `max_attempts` ran out: every one of `profiles` not tried nor skipped was never reached.
    pub(super) fn ran_out(&mut self, profiles: &[String]) {
        self.never_reached = profiles
            .iter()
            .filter(|p| !self.tried.iter().any(|t| **t == ***p))
            .map(|p| Arc::from(p.as_str()))
            .collect();
    }

    /// The class of the last failure, if any (for the failover metric).
    pub(super) fn last_class(&self) -> Option<FailureClass> {
        self.failures.last().map(|(_, f)| f.class)
    }

    /// The error when no profile answered.
    pub(super) fn into_error(mut self, model: &str) -> ApiError {
        // The router saw these as tried; they were skipped for the probe another replica sends.
        for (id, reason) in &mut self.skipped {
            if self.probed_elsewhere.contains(id) {
                *reason = SkipReason::ProbeInFlight;
            }
        }
        exhausted_error(
            model,
            &self.failures,
            &self.unsuitable,
            &self.skipped,
            &self.never_reached,
        )
    }
}

/// How one attempt failed.
pub(super) struct AttemptFailure {
    pub(super) class: FailureClass,
    pub(super) retry_after: Option<Duration>,
    pub(super) detail: String,
    pub(super) status: Option<u16>,
}

impl AttemptFailure {
    pub(super) fn new(class: FailureClass, detail: impl Into<String>) -> AttemptFailure {
        AttemptFailure {
            class,
            retry_after: None,
            detail: detail.into(),
            status: None,
        }
    }
}

/// A request that got no response: timed out, refused, or broken before the headers (or before the
/// first event of a stream). The detail is fixed text: the class says what happened, and nothing of
/// the error chain can carry a secret into a message.
pub(super) fn transport_failure(e: &TransportError) -> AttemptFailure {
    match e.kind() {
        TransportKind::Timeout => AttemptFailure::new(FailureClass::Timeout, "timed out"),
        TransportKind::Connect => AttemptFailure::new(FailureClass::Connect, "cannot connect"),
        TransportKind::Other => {
            AttemptFailure::new(FailureClass::Connect, "connection failed before a response")
        }
    }
}

fn describe_skip(reason: &SkipReason) -> String {
    match reason {
        SkipReason::AlreadyTried => "already tried".to_owned(),
        SkipReason::ProbeInFlight => "half_open (a probe is in flight)".to_owned(),
        SkipReason::UpstreamLimit(until) => format!(
            "at its provider's per-minute limit until {}",
            humantime::format_rfc3339_seconds(*until)
        ),
        SkipReason::State(state, until, why) => {
            let mut s = state.as_str().to_owned();
            if let (Some(t), false) = (until, *state == StateName::AuthFailed) {
                s.push_str(&format!(" until {}", humantime::format_rfc3339_seconds(*t)));
            }
            // The auth failure's own reason ("environment variable X is not set", "401 ..."), or the
            // failure that put the profile in its state: what the operator has to fix or wait out.
            match (why, *state == StateName::AuthFailed) {
                (Some(w), true) => s.push_str(&format!(" ({w})")),
                (Some(w), false) => s.push_str(&format!(" (last failure: {w})")),
                (None, _) => {}
            }
            s
        }
    }
}

/// How long until the earliest skipped profile can be tried again by itself; `None` when none can
/// (every one is `auth_failed`, which only an operator clears). A half-open profile whose probe is in
/// flight, or a state without a known end, counts as "now".
fn earliest_recovery(skipped: &[(Arc<str>, SkipReason)], now: SystemTime) -> Option<Duration> {
    let left = |t: &SystemTime| t.duration_since(now).unwrap_or(Duration::ZERO);
    skipped
        .iter()
        .filter_map(|(_, r)| match r {
            SkipReason::AlreadyTried | SkipReason::State(StateName::AuthFailed, ..) => None,
            SkipReason::State(_, Some(t), _) | SkipReason::UpstreamLimit(t) => Some(left(t)),
            SkipReason::State(_, None, _) | SkipReason::ProbeInFlight => Some(Duration::ZERO),
        })
        .min()
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1.
fn retry_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// The error when no profile answered: 503 if none could be tried (with `Retry-After` until the first
/// can be tried again), 429 when every profile tried was rate limited, else 504 when the last failure
/// was a timeout, else 502. The message names each profile and why.
fn exhausted_error(
    model: &str,
    failures: &[(Arc<str>, AttemptFailure)],
    unsuitable: &[(Arc<str>, Unsuitable)],
    skipped: &[(Arc<str>, SkipReason)],
    never_reached: &[Arc<str>],
) -> ApiError {
    let mut parts: Vec<String> = failures
        .iter()
        .map(|(id, f)| format!("{id}: {} ({})", f.class.as_str(), f.detail))
        .collect();
    parts.extend(
        unsuitable
            .iter()
            .map(|(id, why)| format!("{id}: cannot serve this request, {why}")),
    );
    parts.extend(
        skipped
            .iter()
            .filter(|(_, r)| *r != SkipReason::AlreadyTried)
            .map(|(id, r)| format!("{id}: skipped, {}", describe_skip(r))),
    );
    parts.extend(
        never_reached
            .iter()
            .map(|id| format!("{id}: never reached (max_attempts ran out first)")),
    );
    let list = parts.join("; ");
    match failures.last() {
        // Every profile that could be asked refused the request's shape: that is the client's to fix.
        None if !unsuitable.is_empty()
            && skipped.iter().all(|(_, r)| *r == SkipReason::AlreadyTried) =>
        {
            ApiError::invalid(format!(
                "No profile of model `{model}` can serve this request: {list}."
            ))
        }
        None => match earliest_recovery(skipped, SystemTime::now()) {
            Some(d) => ApiError::NoAvailableProfile {
                message: format!("No profile is available for model `{model}`: {list}."),
                retry_after: Some(retry_secs(d)),
            },
            None => ApiError::NoAvailableProfile {
                message: format!(
                    "No profile is available for model `{model}`: {list}. None recovers by itself: \
                     an operator must fix its credential (and reload) or reset it."
                ),
                retry_after: None,
            },
        },
        // Only rate limits: the client should slow down, as it would facing the provider itself.
        Some(_)
            if failures
                .iter()
                .all(|(_, f)| f.class == FailureClass::RateLimited) =>
        {
            let hinted = failures.iter().filter_map(|(_, f)| f.retry_after);
            let wait = hinted
                .chain(earliest_recovery(skipped, SystemTime::now()))
                .min()
                .unwrap_or(Duration::ZERO);
            let retry_after = retry_secs(wait);
            ApiError::RateLimited {
                message: format!(
                    "Every profile tried for model `{model}` is rate limited: {list}. Retry in {retry_after} s."
                ),
                code: "rate_limit_exceeded",
                retry_after,
                rate: RateHeaders::default(),
            }
        }
        // Every profile said it is overloaded: say so in the words clients retry on.
        Some(_) if failures.iter().all(|(_, f)| f.status == Some(529)) => ApiError::Overloaded(
            format!("Every profile tried for model `{model}` is overloaded: {list}."),
        ),
        Some((_, f)) if matches!(f.class, FailureClass::Timeout) => ApiError::Timeout(format!(
            "Every profile tried for model `{model}` failed, the last by timing out: {list}."
        )),
        Some(_) => ApiError::Upstream(format!(
            "Every profile tried for model `{model}` failed: {list}."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(id: &str, r: SkipReason) -> (Arc<str>, SkipReason) {
        (Arc::from(id), r)
    }

    fn retry_after(e: &ApiError) -> Option<u64> {
        match e {
            ApiError::NoAvailableProfile { retry_after, .. } => *retry_after,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_503_waits_for_the_earliest_profile_rounded_up() {
        let now = SystemTime::now();
        let skipped = [
            skip(
                "billing",
                SkipReason::State(
                    StateName::BillingDisabled,
                    Some(now + Duration::from_secs(5 * 3600)),
                    None,
                ),
            ),
            skip(
                "cooling",
                SkipReason::State(
                    StateName::Cooldown,
                    Some(now + Duration::from_millis(4200)),
                    None,
                ),
            ),
            skip("auth", SkipReason::State(StateName::AuthFailed, None, None)),
        ];
        let e = exhausted_error("m", &[], &[], &skipped, &[]);
        // 4.2 s less the moment since `now`: rounds up to 5 (or 4 on a very slow machine, never 1).
        let secs = retry_after(&e).unwrap();
        assert!((4..=5).contains(&secs), "{secs}");
        let benched = [skipped[0].clone()];
        let secs = retry_after(&exhausted_error("m", &[], &[], &benched, &[])).unwrap();
        assert!(secs > 5 * 3600 - 60 && secs <= 5 * 3600, "{secs}");
    }

    #[test]
    fn a_503_with_only_auth_failed_profiles_has_no_retry_after() {
        let skipped = [
            skip("a", SkipReason::State(StateName::AuthFailed, None, None)),
            skip("b", SkipReason::AlreadyTried),
        ];
        let e = exhausted_error("m", &[], &[], &skipped, &[]);
        assert_eq!(retry_after(&e), None);
        assert!(e.to_string().contains("None recovers by itself"), "{e}");
    }

    #[test]
    fn only_rate_limits_give_a_429_with_the_upstream_hint() {
        let limited = AttemptFailure {
            retry_after: Some(Duration::from_millis(7300)),
            status: Some(429),
            ..AttemptFailure::new(FailureClass::RateLimited, "HTTP 429: slow down")
        };
        let failures = [(Arc::from("a"), limited)];
        match exhausted_error("m", &failures, &[], &[], &[]) {
            ApiError::RateLimited { retry_after, .. } => assert_eq!(retry_after, 8),
            other => panic!("{other:?}"),
        }
        let mut failures = failures.into_iter().collect::<Vec<_>>();
        failures.push((
            Arc::from("b"),
            AttemptFailure::new(FailureClass::Server, "HTTP 500"),
        ));
        assert!(matches!(
            exhausted_error("m", &failures, &[], &[], &[]),
            ApiError::Upstream(_)
        ));
    }

    #[test]
    fn a_skip_says_why_the_profile_is_unusable() {
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let skipped: Vec<(Arc<str>, SkipReason)> = vec![
            (
                "openai-main".into(),
                SkipReason::State(
                    StateName::AuthFailed,
                    None,
                    Some("environment variable OPENAI_API_KEY is not set".into()),
                ),
            ),
            (
                "b".into(),
                SkipReason::State(
                    StateName::BillingDisabled,
                    Some(until),
                    Some("billing: 402 payment required".into()),
                ),
            ),
        ];
        let m = exhausted_error("m", &[], &[], &skipped, &[]).to_string();
        assert!(
            m.contains(
                "openai-main: skipped, auth_failed (environment variable OPENAI_API_KEY is not set)"
            ),
            "{m}"
        );
        assert!(
            m.contains(
                "b: skipped, billing_disabled until 2027-01-15T08:00:00Z (last failure: billing: 402 payment required)"
            ),
            "{m}"
        );
    }

    #[test]
    fn profiles_left_when_max_attempts_ran_out_are_named() {
        let failures = vec![(
            Arc::<str>::from("a"),
            AttemptFailure::new(FailureClass::Server, "500"),
        )];
        let m = exhausted_error("m", &failures, &[], &[], &["c".into()]).to_string();
        assert!(m.contains("a: server (500)"), "{m}");
        assert!(m.contains("c: never reached"), "{m}");
    }
}
