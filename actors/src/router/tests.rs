//! The router's unit tests: each strategy's spread, priority fall-through, exhaustion, sticky
//! sessions, the single half-open probe, state kept across restarts and reloads, and provider limits.

use super::*;
use crate::outcome::FailureClass;
use crate::policy::{BreakerSettings, CooldownPolicy};

fn m() -> ActorMetrics {
    ActorMetrics::unregistered().unwrap()
}

fn health() -> HealthPolicy {
    HealthPolicy {
        cooldown: CooldownPolicy {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(600),
        },
        billing: CooldownPolicy {
            initial: Duration::from_secs(3600),
            max: Duration::from_secs(7200),
        },
        breaker: BreakerSettings {
            failure_threshold: 100,
            open_for: Duration::from_secs(30),
        },
    }
}

fn spec(strategy: Strategy, weights: &[u32], sticky: bool) -> RouterSpec {
    let profiles: Vec<ProfileSpec> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| ProfileSpec {
            id: format!("p{i}"),
            priority: u32::try_from(weights.len() - i).unwrap(),
            weight: *w,
            health: health(),
            credential_fingerprint: 0,
            unusable_reason: None,
            limits: UpstreamLimits::default(),
        })
        .collect();
    RouterSpec {
        models: vec![ModelSpec {
            name: "m".into(),
            profiles: profiles.iter().map(|p| p.id.clone()).collect(),
            strategy,
        }],
        profiles,
        sticky_ttl: sticky.then(|| Duration::from_secs(60)),
    }
}

/// An attempt that failed with `class`, no `Retry-After`.
fn failed(class: FailureClass, detail: &str) -> AttemptOutcome {
    AttemptOutcome::Failed {
        class,
        retry_after: None,
        detail: detail.into(),
    }
}

/// A router of one round-robin profile, `p0`, on a temporary store.
fn one_profile() -> Arc<Router> {
    Router::start(
        &spec(Strategy::RoundRobin, &[1], false),
        &Store::temporary().unwrap(),
        &m(),
    )
    .unwrap()
}

fn counts(r: &Router, n: usize) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for _ in 0..n {
        let p = r.pick("m", None, &[]).unwrap();
        *c.entry(p.entry.id().to_string()).or_default() += 1;
    }
    c
}

async fn wait_state(r: &Router, id: &str, state: StateName) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = r.profile(id).unwrap().shared.view();
        if v.state_at(SystemTime::now()) == state {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never reached {state:?}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn round_robin_spreads_evenly() {
    let r = Router::start(
        &spec(Strategy::RoundRobin, &[1, 1, 1], false),
        &Store::temporary().unwrap(),
        &m(),
    )
    .unwrap();
    let c = counts(&r, 300);
    assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![100, 100, 100]);
}

#[actix_rt::test]
async fn priority_takes_lowest_first_and_falls_through() {
    // priorities: p0=3, p1=2, p2=1
    let r = Router::start(
        &spec(Strategy::Priority, &[1, 1, 1], false),
        &Store::temporary().unwrap(),
        &m(),
    )
    .unwrap();
    assert_eq!(&**r.pick("m", None, &[]).unwrap().entry.id(), "p2");
    let tried: Vec<Arc<str>> = vec![Arc::from("p2")];
    assert_eq!(&**r.pick("m", None, &tried).unwrap().entry.id(), "p1");
}

#[actix_rt::test]
async fn weighted_follows_weights_and_random_covers_all() {
    let r = Router::start(
        &spec(Strategy::Weighted, &[1, 3], false),
        &Store::temporary().unwrap(),
        &m(),
    )
    .unwrap();
    let c = counts(&r, 4000);
    let share = c["p1"] as f64 / 4000.0;
    assert!((0.70..0.80).contains(&share), "p1 share {share}");
    let r = Router::start(
        &spec(Strategy::Random, &[1, 1, 1, 1], false),
        &Store::temporary().unwrap(),
        &m(),
    )
    .unwrap();
    let c = counts(&r, 4000);
    assert_eq!(c.len(), 4);
    assert!(c.values().all(|&n| (800..1200).contains(&n)), "{c:?}");
}

#[actix_rt::test]
async fn unknown_model_and_exhaustion() {
    let r = Router::start(
        &spec(Strategy::RoundRobin, &[1, 1], false),
        &Store::temporary().unwrap(),
        &m(),
    )
    .unwrap();
    assert_eq!(
        r.pick("nope", None, &[]).err(),
        Some(PickError::UnknownModel)
    );
    let tried: Vec<Arc<str>> = vec![Arc::from("p0"), Arc::from("p1")];
    match r.pick("m", None, &tried) {
        Err(PickError::Exhausted(s)) => {
            assert_eq!(s.len(), 2);
            assert!(s.iter().all(|(_, why)| *why == SkipReason::AlreadyTried));
        }
        _ => panic!("expected exhaustion"),
    }
}

#[actix_rt::test]
async fn sticky_sessions_stay_and_move_only_when_unusable() {
    let r = Router::start(
        &spec(Strategy::RoundRobin, &[1, 1, 1], true),
        &Store::temporary().unwrap(),
        &m(),
    )
    .unwrap();
    let first = r.pick("m", Some("s1"), &[]).unwrap().entry.id().clone();
    for _ in 0..20 {
        assert_eq!(r.pick("m", Some("s1"), &[]).unwrap().entry.id(), &first);
    }
    let p = r.profile(&first).unwrap();
    p.report(failed(FailureClass::Server, "500"), false);
    wait_state(&r, &first, StateName::Cooldown).await;
    let moved = r.pick("m", Some("s1"), &[]).unwrap().entry.id().clone();
    assert_ne!(moved, first);
    assert_eq!(r.session_profile("m", "s1"), Some(moved.clone()));
    for _ in 0..10 {
        assert_eq!(r.pick("m", Some("s1"), &[]).unwrap().entry.id(), &moved);
    }
}

#[actix_rt::test]
async fn half_open_admits_exactly_one_probe() {
    let mut s = spec(Strategy::RoundRobin, &[1], false);
    s.profiles[0].health.breaker = BreakerSettings {
        failure_threshold: 1,
        open_for: Duration::from_millis(100),
    };
    s.profiles[0].health.cooldown.initial = Duration::from_millis(1);
    s.profiles[0].health.cooldown.max = Duration::from_millis(1);
    let r = Router::start(&s, &Store::temporary().unwrap(), &m()).unwrap();
    let p = r.pick("m", None, &[]).unwrap();
    p.entry.report(failed(FailureClass::Server, "500"), false);
    wait_state(&r, "p0", StateName::Open).await;
    assert!(r.pick("m", None, &[]).is_err());
    actix_rt::time::sleep(Duration::from_millis(150)).await;
    let probe = r.pick("m", None, &[]).unwrap();
    assert!(probe.probe);
    match r.pick("m", None, &[]) {
        Err(PickError::Exhausted(s)) => {
            assert!(matches!(
                s[0].1,
                SkipReason::State(StateName::HalfOpen, None, _)
            ))
        }
        _ => panic!("a second probe was admitted"),
    }
    probe.entry.report(AttemptOutcome::Succeeded, true);
    wait_state(&r, "p0", StateName::Healthy).await;
    let next = r.pick("m", None, &[]).unwrap();
    assert!(!next.probe);
}

#[actix_rt::test]
async fn state_survives_a_router_restart_on_the_same_store() {
    let store = Store::temporary().unwrap();
    {
        let r = Router::start(&spec(Strategy::RoundRobin, &[1], false), &store, &m()).unwrap();
        r.profile("p0")
            .unwrap()
            .report(failed(FailureClass::Billing, "402"), false);
        wait_state(&r, "p0", StateName::BillingDisabled).await;
    }
    let r = Router::start(&spec(Strategy::RoundRobin, &[1], false), &store, &m()).unwrap();
    let v = r.profile("p0").unwrap().shared.view();
    assert_eq!(v.state_at(SystemTime::now()), StateName::BillingDisabled);
}

#[actix_rt::test]
async fn a_restarted_profile_actor_keeps_its_state() {
    let r = one_profile();
    let p = r.profile("p0").unwrap();
    p.report(failed(FailureClass::Auth, "401"), false);
    wait_state(&r, "p0", StateName::AuthFailed).await;
    p.addr.do_send(crate::profile::Restart);
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.shared.restarts() == 0 {
        assert!(Instant::now() < deadline, "actor was not restarted");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        p.shared.view().state_at(SystemTime::now()),
        StateName::AuthFailed
    );
    // The restarted actor still handles messages.
    p.reset();
    wait_state(&r, "p0", StateName::Healthy).await;
}

#[actix_rt::test]
async fn reload_keeps_state_of_kept_profiles_adds_and_removes() {
    let store = Store::temporary().unwrap();
    let r = Router::start(&spec(Strategy::RoundRobin, &[1, 1], false), &store, &m()).unwrap();
    r.profile("p0")
        .unwrap()
        .report(failed(FailureClass::Server, "500"), false);
    wait_state(&r, "p0", StateName::Cooldown).await;
    let before = r.profile("p0").unwrap().shared.clone();
    // p0 kept (weight changed), p1 removed, p2 added.
    let mut next = spec(Strategy::RoundRobin, &[5, 1, 1], false);
    next.profiles.remove(1);
    next.models[0].profiles = vec!["p0".into(), "p2".into()];
    let summary = r.reload(&next, &store, &m()).unwrap();
    assert_eq!(summary.changed, vec!["p0".to_string()]);
    assert_eq!(summary.added, vec!["p2".to_string()]);
    assert_eq!(summary.removed, vec!["p1".to_string()]);
    let after = r.profile("p0").unwrap();
    assert!(Arc::ptr_eq(&before, &after.shared), "p0 lost its state");
    assert_eq!(after.weight, 5);
    assert_eq!(
        after.shared.view().state_at(SystemTime::now()),
        StateName::Cooldown
    );
    assert!(r.profile("p1").is_none());
    // p0 is cooling down, so only p2 can be picked.
    for _ in 0..5 {
        assert_eq!(&**r.pick("m", None, &[]).unwrap().entry.id(), "p2");
    }
}

#[actix_rt::test]
async fn reload_with_a_new_credential_clears_auth_failure() {
    let store = Store::temporary().unwrap();
    let r = Router::start(&spec(Strategy::RoundRobin, &[1], false), &store, &m()).unwrap();
    r.profile("p0")
        .unwrap()
        .report(failed(FailureClass::Auth, "401"), false);
    wait_state(&r, "p0", StateName::AuthFailed).await;
    let mut next = spec(Strategy::RoundRobin, &[1], false);
    next.profiles[0].credential_fingerprint = 42;
    r.reload(&next, &store, &m()).unwrap();
    wait_state(&r, "p0", StateName::Healthy).await;
}

#[actix_rt::test]
async fn a_profile_at_its_provider_rpm_is_skipped_until_the_minute_turns() {
    let mut s = spec(Strategy::Priority, &[1, 1], false);
    // p1 has the lower priority value, so it is preferred.
    s.profiles[1].limits = UpstreamLimits {
        rpm: Some(2),
        tpm: None,
    };
    let r = Router::start(&s, &Store::temporary().unwrap(), &m()).unwrap();
    let picks: Vec<String> = (0..4)
        .map(|_| r.pick("m", None, &[]).unwrap().entry.id().to_string())
        .collect();
    assert_eq!(picks, vec!["p1", "p1", "p0", "p0"]);
    let tried: Vec<Arc<str>> = vec![Arc::from("p0")];
    match r.pick("m", None, &tried) {
        Err(PickError::Exhausted(skips)) => {
            assert!(skips
                .iter()
                .any(|(id, why)| &**id == "p1" && matches!(why, SkipReason::UpstreamLimit(_))));
        }
        _ => panic!("p1 should be out of budget"),
    }
}

#[actix_rt::test]
async fn a_profile_at_its_provider_tpm_is_skipped() {
    let mut s = spec(Strategy::Priority, &[1, 1], false);
    s.profiles[1].limits = UpstreamLimits {
        rpm: None,
        tpm: Some(100),
    };
    let r = Router::start(&s, &Store::temporary().unwrap(), &m()).unwrap();
    let p = r.pick("m", None, &[]).unwrap();
    assert_eq!(&**p.entry.id(), "p1");
    p.entry.note_tokens(100);
    assert_eq!(&**r.pick("m", None, &[]).unwrap().entry.id(), "p0");
}

#[actix_rt::test]
async fn a_reset_that_has_been_applied_is_in_the_view_requests_are_routed_by() {
    let r = one_profile();
    let p = r.profile("p0").unwrap();
    p.report(failed(FailureClass::Server, "500"), false);
    wait_state(&r, "p0", StateName::Cooldown).await;
    // No yield between the reset's answer and the pick: the actor must already have applied it.
    assert!(p.reset_applied().await);
    assert!(
        r.pick("m", None, &[]).is_ok(),
        "picked right after the reset"
    );
    assert_eq!(p.shared.view().cooldown_until, None);
}
