//! Routing: the `Router` picks a profile per request without a mailbox round trip; the `RouterActor`
//! supervises the profile actors, owns the table, and sweeps expired sticky sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use arc_swap::ArcSwap;
use dashmap::DashMap;
use rand::Rng;

use crate::health::{restore_view, StateName};
use crate::metrics::ActorMetrics;
use crate::outcome::AttemptOutcome;
use crate::policy::{HealthPolicy, Strategy, UpstreamLimits};
use crate::profile::{
    self, Availability, CredentialChanged, MarkAuthFailed, ProfileActor, ProfileShared,
    ResetProfile, UpdatePolicy,
};
use crate::store::{Store, StoreError};

/// What the router needs to know of a profile.
#[derive(Debug, Clone)]
pub struct ProfileSpec {
    pub id: String,
    pub priority: u32,
    pub weight: u32,
    pub health: HealthPolicy,
    /// A hash of the credential: an auth failure recorded under another credential is forgotten on start.
    pub credential_fingerprint: u64,
    /// Set when the profile cannot work at all (e.g. its key's environment variable is unset).
    pub unusable_reason: Option<String>,
    /// The provider's per-minute limits on this credential.
    pub limits: UpstreamLimits,
}

/// A client-visible model and the profiles that serve it.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub profiles: Vec<String>,
    pub strategy: Strategy,
}

/// Everything the router is built from.
#[derive(Debug, Clone)]
pub struct RouterSpec {
    pub profiles: Vec<ProfileSpec>,
    pub models: Vec<ModelSpec>,
    /// `None`: sessions are not sticky.
    pub sticky_ttl: Option<Duration>,
}

/// A profile as the router holds it.
pub struct ProfileEntry {
    pub shared: Arc<ProfileShared>,
    pub priority: u32,
    pub weight: u32,
    addr: Addr<ProfileActor>,
    /// What this entry was built from, to tell what a reload changed.
    spec: ProfileSpec,
}

impl ProfileEntry {
    /// The profile id.
    pub fn id(&self) -> &Arc<str> {
        self.shared.id()
    }

    /// Reports an attempt's outcome to the profile's actor.
    pub fn report(&self, outcome: AttemptOutcome, probe: bool) {
        profile::report(&self.shared, &self.addr, outcome, probe);
    }

    /// Gives back a pick that was not used (nothing was sent): releases a held probe, counts nothing.
    pub fn release(&self, probe: bool) {
        if probe {
            profile::release_probe(&self.addr);
        }
    }

    /// Counts the tokens an answer used against the profile's per-minute budget.
    pub fn note_tokens(&self, tokens: u64) {
        self.shared.budget.add_tokens(tokens, SystemTime::now());
    }

    /// Clears the profile's cooldown, billing, auth and breaker state.
    pub fn reset(&self) {
        self.addr.do_send(ResetProfile);
    }
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

struct ModelRoute {
    /// In the order the strategy wants them scanned (by priority for `priority`).
    profiles: Vec<Arc<ProfileEntry>>,
    strategy: Strategy,
    next: AtomicUsize,
}

struct RoutingTable {
    models: HashMap<String, ModelRoute>,
    /// Every profile, in configuration order.
    profiles: Vec<Arc<ProfileEntry>>,
}

/// The profile chosen for one attempt.
#[derive(Clone)]
pub struct Pick {
    pub entry: Arc<ProfileEntry>,
    /// This attempt is the half-open probe: its outcome must be reported (`ProfileEntry::report`).
    pub probe: bool,
}

/// Why a profile was not tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Tried already in this request.
    AlreadyTried,
    /// Its state forbids it, until the given time when known.
    State(StateName, Option<SystemTime>),
    /// Half-open, and another request holds the probe.
    ProbeInFlight,
    /// Its provider's per-minute budget is spent until the given time.
    UpstreamLimit(SystemTime),
}

/// Nothing could be picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickError {
    /// No `models:` entry has this name.
    UnknownModel,
    /// Every profile of the model was skipped; one entry per profile, in configuration order.
    Exhausted(Vec<(Arc<str>, SkipReason)>),
}

#[derive(Clone)]
struct Pin {
    profile: Arc<str>,
    expires: Instant,
}

/// Upper bound on remembered sessions, so unbounded client-chosen ids cannot exhaust memory.
pub const MAX_SESSIONS: usize = 200_000;

/// Picks profiles. Shared by every request handler; reads only atomics, an `ArcSwap` and a `DashMap`.
pub struct Router {
    table: ArcSwap<RoutingTable>,
    /// Session pins, keyed by (model, session id); a concurrent map because every request may write.
    sessions: DashMap<(String, String), Pin>,
    sticky_ttl: Option<Duration>,
}

impl Router {
    /// Restores each profile from `store`, starts its actor under a supervisor, and builds the table.
    /// Must run inside an actix system.
    pub fn start(
        spec: &RouterSpec,
        store: &Store,
        metrics: &ActorMetrics,
    ) -> Result<Arc<Router>, StoreError> {
        let mut profiles = Vec::with_capacity(spec.profiles.len());
        for p in &spec.profiles {
            profiles.push(spawn_profile(p, store, metrics)?);
        }
        Ok(Arc::new(Router {
            table: ArcSwap::from_pointee(build_table(profiles, &spec.models)),
            sessions: DashMap::new(),
            sticky_ttl: spec.sticky_ttl,
        }))
    }

    /// Swaps in a new configuration. Unchanged profiles keep their actor, state and counters; changed ones
    /// keep them too and get the new policy or credential; removed ones leave the table, and their actors
    /// stop once the requests still holding them finish. Must run inside an actix system.
    pub fn reload(
        &self,
        spec: &RouterSpec,
        store: &Store,
        metrics: &ActorMetrics,
    ) -> Result<ReloadSummary, StoreError> {
        let old = self.table.load_full();
        let mut summary = ReloadSummary::default();
        let mut profiles = Vec::with_capacity(spec.profiles.len());
        for p in &spec.profiles {
            let Some(prev) = old.profiles.iter().find(|e| **e.id() == *p.id) else {
                profiles.push(spawn_profile(p, store, metrics)?);
                summary.added.push(p.id.clone());
                continue;
            };
            if prev.spec.health == p.health
                && prev.spec.credential_fingerprint == p.credential_fingerprint
                && prev.spec.unusable_reason == p.unusable_reason
                && prev.priority == p.priority
                && prev.weight == p.weight
                && prev.spec.limits == p.limits
            {
                profiles.push(prev.clone());
                summary.unchanged += 1;
                continue;
            }
            if prev.spec.health != p.health {
                prev.addr.do_send(UpdatePolicy(p.health));
            }
            prev.shared.budget.set_limits(p.limits);
            if prev.spec.credential_fingerprint != p.credential_fingerprint
                || prev.spec.unusable_reason != p.unusable_reason
            {
                prev.addr.do_send(CredentialChanged {
                    fingerprint: p.credential_fingerprint,
                    unusable_reason: p.unusable_reason.clone(),
                });
            }
            profiles.push(Arc::new(ProfileEntry {
                shared: prev.shared.clone(),
                priority: p.priority,
                weight: p.weight,
                addr: prev.addr.clone(),
                spec: p.clone(),
            }));
            summary.changed.push(p.id.clone());
        }
        summary.removed = old
            .profiles
            .iter()
            .filter(|e| !spec.profiles.iter().any(|p| *p.id == **e.id()))
            .map(|e| e.id().to_string())
            .collect();
        self.table
            .store(Arc::new(build_table(profiles, &spec.models)));
        Ok(summary)
    }

    /// Whether `model` is configured.
    pub fn has_model(&self, model: &str) -> bool {
        self.table.load().models.contains_key(model)
    }

    /// Configured model names, in no particular order.
    pub fn model_names(&self) -> Vec<String> {
        self.table.load().models.keys().cloned().collect()
    }

    /// Every profile, in configuration order.
    pub fn profiles(&self) -> Vec<Arc<ProfileEntry>> {
        self.table.load().profiles.clone()
    }

    /// The profile with this id.
    pub fn profile(&self, id: &str) -> Option<Arc<ProfileEntry>> {
        self.table
            .load()
            .profiles
            .iter()
            .find(|p| &**p.id() == id)
            .cloned()
    }

    /// Whether any profile can take a request now.
    pub fn any_usable(&self) -> bool {
        let now = SystemTime::now();
        self.table.load().profiles.iter().any(|p| {
            matches!(
                p.shared.availability(now),
                Availability::Usable | Availability::Probe | Availability::Throttled(_)
            )
        })
    }

    /// Picks a profile for `model`, skipping `tried`, honouring the session pin while its profile is usable.
    pub fn pick(
        &self,
        model: &str,
        session: Option<&str>,
        tried: &[Arc<str>],
    ) -> Result<Pick, PickError> {
        let table = self.table.load();
        let route = table.models.get(model).ok_or(PickError::UnknownModel)?;
        let now = SystemTime::now();
        let session = session.filter(|_| self.sticky_ttl.is_some());

        if let Some(sid) = session {
            if let Some(pick) = self.pinned(route, model, sid, tried, now) {
                return Ok(pick);
            }
        }

        // Profiles ruled out while claiming a probe another request took first.
        let mut lost_probe: Vec<usize> = Vec::new();
        loop {
            let usable = |i: usize, e: &ProfileEntry| -> Option<bool> {
                if lost_probe.contains(&i) || tried.contains(e.id()) {
                    return None;
                }
                match e.shared.availability(now) {
                    Availability::Usable => Some(false),
                    Availability::Probe => Some(true),
                    Availability::Unusable(_) | Availability::Throttled(_) => None,
                }
            };
            let Some((idx, probe)) = choose(route, &usable) else {
                return Err(PickError::Exhausted(skips(route, tried, now)));
            };
            let entry = &route.profiles[idx];
            if probe && !entry.shared.try_claim_probe() {
                lost_probe.push(idx);
                continue;
            }
            if !entry.shared.budget.take_request(now) {
                // Another request took the minute's last slot first.
                if probe {
                    entry.release(true);
                }
                lost_probe.push(idx);
                continue;
            }
            if let Some(sid) = session {
                self.pin(model, sid, entry.id());
            }
            return Ok(Pick {
                entry: entry.clone(),
                probe,
            });
        }
    }

    fn pinned(
        &self,
        route: &ModelRoute,
        model: &str,
        sid: &str,
        tried: &[Arc<str>],
        now: SystemTime,
    ) -> Option<Pick> {
        let key = (model.to_owned(), sid.to_owned());
        let pin = self.sessions.get(&key).map(|p| p.clone())?;
        if pin.expires <= Instant::now() || tried.contains(&pin.profile) {
            return None;
        }
        let entry = route.profiles.iter().find(|e| *e.id() == pin.profile)?;
        let probe = match entry.shared.availability(now) {
            Availability::Usable => false,
            Availability::Probe if entry.shared.try_claim_probe() => true,
            _ => return None,
        };
        if !entry.shared.budget.take_request(now) {
            entry.release(probe);
            return None;
        }
        self.pin(model, sid, entry.id());
        Some(Pick {
            entry: entry.clone(),
            probe,
        })
    }

    fn pin(&self, model: &str, sid: &str, profile: &Arc<str>) {
        let Some(ttl) = self.sticky_ttl else { return };
        let key = (model.to_owned(), sid.to_owned());
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&key) {
            return;
        }
        self.sessions.insert(
            key,
            Pin {
                profile: profile.clone(),
                expires: Instant::now() + ttl,
            },
        );
    }

    /// The profile a session is pinned to for `model`, if the pin is live.
    pub fn session_profile(&self, model: &str, sid: &str) -> Option<Arc<str>> {
        let pin = self.sessions.get(&(model.to_owned(), sid.to_owned()))?;
        (pin.expires > Instant::now()).then(|| pin.profile.clone())
    }

    /// Session pins held (live or not yet swept).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Forgets expired session pins; returns how many remain.
    pub fn sweep_sessions(&self) -> usize {
        let now = Instant::now();
        self.sessions.retain(|_, pin| pin.expires > now);
        self.sessions.len()
    }
}

/// Restores a profile from the store and starts its actor under a supervisor.
fn spawn_profile(
    p: &ProfileSpec,
    store: &Store,
    metrics: &ActorMetrics,
) -> Result<Arc<ProfileEntry>, StoreError> {
    let saved = store.load_health(&p.id)?;
    let view = restore_view(saved, p.credential_fingerprint, SystemTime::now());
    let counters = store.load_counters(&p.id)?;
    let shared = Arc::new(ProfileShared::new(&p.id, view, counters, metrics.clone()));
    shared.budget.set_limits(p.limits);
    let actor_shared = shared.clone();
    let policy = p.health;
    let actor_store = store.clone();
    let addr =
        actix::Supervisor::start(move |_| ProfileActor::new(actor_shared, policy, actor_store));
    if let Some(reason) = &p.unusable_reason {
        tracing::warn!(profile = %p.id, reason = %reason, "profile cannot be used");
        addr.do_send(MarkAuthFailed {
            reason: reason.clone(),
        });
    }
    Ok(Arc::new(ProfileEntry {
        shared,
        priority: p.priority,
        weight: p.weight,
        addr,
        spec: p.clone(),
    }))
}

fn build_table(profiles: Vec<Arc<ProfileEntry>>, models: &[ModelSpec]) -> RoutingTable {
    let by_id: HashMap<&str, &Arc<ProfileEntry>> =
        profiles.iter().map(|e| (&**e.id(), e)).collect();
    let mut routes = HashMap::new();
    for m in models {
        let mut entries: Vec<Arc<ProfileEntry>> = m
            .profiles
            .iter()
            .filter_map(|id| by_id.get(id.as_str()).map(|e| Arc::clone(e)))
            .collect();
        if m.strategy == Strategy::Priority {
            entries.sort_by_key(|e| e.priority); // stable: ties keep configuration order
        }
        routes.insert(
            m.name.clone(),
            ModelRoute {
                profiles: entries,
                strategy: m.strategy,
                next: AtomicUsize::new(0),
            },
        );
    }
    RoutingTable {
        models: routes,
        profiles,
    }
}

/// Applies the route's strategy to the profiles `usable` admits; returns (index, needs_probe).
fn choose(
    route: &ModelRoute,
    usable: &dyn Fn(usize, &ProfileEntry) -> Option<bool>,
) -> Option<(usize, bool)> {
    let n = route.profiles.len();
    if n == 0 {
        return None;
    }
    match route.strategy {
        Strategy::Priority => route
            .profiles
            .iter()
            .enumerate()
            .find_map(|(i, e)| usable(i, e).map(|p| (i, p))),
        Strategy::RoundRobin => {
            let start = route.next.fetch_add(1, Ordering::Relaxed) % n;
            (0..n)
                .map(|k| (start + k) % n)
                .find_map(|i| usable(i, &route.profiles[i]).map(|p| (i, p)))
        }
        Strategy::Random | Strategy::Weighted => {
            // One pass of weighted reservoir sampling: no allocation, uniform when every weight is 1.
            let mut rng = rand::thread_rng();
            let mut total: u64 = 0;
            let mut chosen = None;
            for (i, e) in route.profiles.iter().enumerate() {
                let Some(probe) = usable(i, e) else { continue };
                let w = if route.strategy == Strategy::Weighted {
                    u64::from(e.weight.max(1))
                } else {
                    1
                };
                total += w;
                if rng.gen_range(0..total) < w {
                    chosen = Some((i, probe));
                }
            }
            chosen
        }
    }
}

fn skips(route: &ModelRoute, tried: &[Arc<str>], now: SystemTime) -> Vec<(Arc<str>, SkipReason)> {
    route
        .profiles
        .iter()
        .map(|e| {
            let reason = if tried.contains(e.id()) {
                SkipReason::AlreadyTried
            } else {
                match e.shared.availability(now) {
                    Availability::Unusable(state) => {
                        SkipReason::State(state, e.shared.view().state_until(now))
                    }
                    Availability::Throttled(until) => SkipReason::UpstreamLimit(until),
                    Availability::Probe | Availability::Usable => SkipReason::ProbeInFlight,
                }
            };
            (e.id().clone(), reason)
        })
        .collect()
}

/// Supervises routing: holds the shared `Router` (whose profile actors run under actix supervisors)
/// and sweeps expired sticky sessions.
pub struct RouterActor {
    router: Arc<Router>,
    store: Store,
    metrics: ActorMetrics,
    sweep_every: Duration,
}

impl RouterActor {
    /// A supervisor for `router`, sweeping sessions every `sweep_every`.
    pub fn new(
        router: Arc<Router>,
        store: Store,
        metrics: ActorMetrics,
        sweep_every: Duration,
    ) -> RouterActor {
        RouterActor {
            router,
            store,
            metrics,
            sweep_every,
        }
    }
}

/// Applies a new routing spec (config reload).
#[derive(Message)]
#[rtype(result = "Result<ReloadSummary, StoreError>")]
pub struct Reload(pub RouterSpec);

impl Handler<Reload> for RouterActor {
    type Result = Result<ReloadSummary, StoreError>;

    fn handle(&mut self, msg: Reload, _ctx: &mut Self::Context) -> Self::Result {
        self.router.reload(&msg.0, &self.store, &self.metrics)
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.sweep_every, |act, _ctx| {
            let left = act.router.sweep_sessions();
            tracing::debug!(sessions = left, "swept sticky sessions");
        });
    }
}

impl Supervised for RouterActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.metrics.restarts.with_label_values(&["router"]).inc();
    }
}

/// Resets one profile by id; false if there is no such profile.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ResetProfileById(pub String);

impl Handler<ResetProfileById> for RouterActor {
    type Result = bool;

    fn handle(&mut self, msg: ResetProfileById, _ctx: &mut Self::Context) -> bool {
        match self.router.profile(&msg.0) {
            Some(p) => {
                p.reset();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
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
        p.report(
            AttemptOutcome::Failed {
                class: FailureClass::Server,
                retry_after: None,
                detail: "500".into(),
            },
            false,
        );
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
        p.entry.report(
            AttemptOutcome::Failed {
                class: FailureClass::Server,
                retry_after: None,
                detail: "500".into(),
            },
            false,
        );
        wait_state(&r, "p0", StateName::Open).await;
        assert!(r.pick("m", None, &[]).is_err());
        actix_rt::time::sleep(Duration::from_millis(150)).await;
        let probe = r.pick("m", None, &[]).unwrap();
        assert!(probe.probe);
        match r.pick("m", None, &[]) {
            Err(PickError::Exhausted(s)) => {
                assert_eq!(s[0].1, SkipReason::State(StateName::HalfOpen, None))
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
            r.profile("p0").unwrap().report(
                AttemptOutcome::Failed {
                    class: FailureClass::Billing,
                    retry_after: None,
                    detail: "402".into(),
                },
                false,
            );
            wait_state(&r, "p0", StateName::BillingDisabled).await;
        }
        let r = Router::start(&spec(Strategy::RoundRobin, &[1], false), &store, &m()).unwrap();
        let v = r.profile("p0").unwrap().shared.view();
        assert_eq!(v.state_at(SystemTime::now()), StateName::BillingDisabled);
    }

    #[actix_rt::test]
    async fn a_restarted_profile_actor_keeps_its_state() {
        let r = Router::start(
            &spec(Strategy::RoundRobin, &[1], false),
            &Store::temporary().unwrap(),
            &m(),
        )
        .unwrap();
        let p = r.profile("p0").unwrap();
        p.report(
            AttemptOutcome::Failed {
                class: FailureClass::Auth,
                retry_after: None,
                detail: "401".into(),
            },
            false,
        );
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
        r.profile("p0").unwrap().report(
            AttemptOutcome::Failed {
                class: FailureClass::Server,
                retry_after: None,
                detail: "500".into(),
            },
            false,
        );
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
        r.profile("p0").unwrap().report(
            AttemptOutcome::Failed {
                class: FailureClass::Auth,
                retry_after: None,
                detail: "401".into(),
            },
            false,
        );
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
}
