//! `Router::pick` with 100 profiles and 10,000 sticky sessions (issue 7).
//!
//! `cargo bench -p switchyard-actors --bench router_pick`
//!
//! One model served by 100 healthy profiles. Four cases per strategy (round_robin, weighted):
//! - `no_session`: a pick without a session id (the strategy scans the profiles);
//! - `pinned_session`: a pick for one of 10,000 sessions pinned beforehand (pin lookup, health check of
//!   the pinned profile, pin refresh), cycling through all 10,000.
//!
//! The router is built inside an actix system (its profile actors need one); `pick` itself reads only
//! atomics, an `ArcSwap` and a `DashMap`, so it is benched synchronously outside the system's loop.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchyard_actors::metrics::ActorMetrics;
use switchyard_actors::policy::{BreakerSettings, CooldownPolicy, HealthPolicy, Strategy};
use switchyard_actors::router::{ModelSpec, ProfileSpec, Router, RouterSpec};
use switchyard_actors::store::Store;

const PROFILES: usize = 100;
const SESSIONS: usize = 10_000;
const MODEL: &str = "gpt-4o-mini";

fn health() -> HealthPolicy {
    HealthPolicy {
        cooldown: CooldownPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        },
        billing: CooldownPolicy {
            initial: Duration::from_secs(5 * 3600),
            max: Duration::from_secs(24 * 3600),
        },
        breaker: BreakerSettings {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        },
    }
}

fn spec(strategy: Strategy) -> RouterSpec {
    let profiles: Vec<ProfileSpec> = (0..PROFILES)
        .map(|i| ProfileSpec {
            id: format!("profile-{i:03}"),
            priority: 1,
            // Varied weights so `weighted` does real work.
            weight: u32::try_from(1 + i % 7).unwrap_or(1),
            health: health(),
            credential_fingerprint: 0,
            unusable_reason: None,
            limits: Default::default(),
        })
        .collect();
    RouterSpec {
        models: vec![ModelSpec {
            name: MODEL.to_owned(),
            profiles: profiles.iter().map(|p| p.id.clone()).collect(),
            strategy,
        }],
        profiles,
        sticky_ttl: Some(Duration::from_secs(1800)),
    }
}

/// Builds the router inside an actix system; the runner is returned so the system outlives the bench.
fn router(strategy: Strategy) -> (actix_rt::SystemRunner, Arc<Router>) {
    let system = actix_rt::System::new();
    let built: Result<Arc<Router>, String> = system.block_on(async {
        let store = Store::temporary().map_err(|e| e.to_string())?;
        let metrics = ActorMetrics::unregistered().map_err(|e| e.to_string())?;
        Router::start(&spec(strategy), &store, &metrics).map_err(|e| e.to_string())
    });
    match built {
        Ok(router) => (system, router),
        Err(e) => panic!("cannot build the router: {e}"),
    }
}

fn sessions() -> Vec<String> {
    (0..SESSIONS).map(|i| format!("session-{i:05}")).collect()
}

fn bench_pick(c: &mut Criterion) {
    let sids = sessions();
    let mut group = c.benchmark_group("router_pick");
    group.throughput(Throughput::Elements(1));
    for (name, strategy) in [
        ("round_robin", Strategy::RoundRobin),
        ("weighted", Strategy::Weighted),
    ] {
        let (_system, router) = router(strategy);
        // Pin every session once, as 10,000 earlier requests would have.
        for sid in &sids {
            if router.pick(MODEL, Some(sid), &[]).is_err() {
                panic!("pinning {sid} failed");
            }
        }
        assert_eq!(router.session_count(), SESSIONS);

        group.bench_function(BenchmarkId::new("no_session", name), |b| {
            b.iter(|| {
                let pick = router.pick(black_box(MODEL), None, &[]);
                black_box(pick.is_ok())
            });
        });

        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("pinned_session", name), |b| {
            b.iter(|| {
                i = (i + 1) % SESSIONS;
                let pick = router.pick(black_box(MODEL), Some(&sids[i]), &[]);
                black_box(pick.is_ok())
            });
        });
        assert_eq!(router.session_count(), SESSIONS);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_pick
}
criterion_main!(benches);
