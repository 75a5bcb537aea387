//! Routing: the `Router` picks a profile per request without a mailbox round trip, from an arc-swapped
//! table of profile entries whose `ProfileActor`s run under actix supervisors. The table changes only
//! through `Router::reload`, which the proxy calls from one place (its reload path, under one lock); a
//! plain task sweeps expired sticky sessions.

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

    /// Clears the profile's cooldown, billing, auth and breaker state, in the actor's own time.
    pub fn reset(&self) {
        self.addr.do_send(ResetProfile);
    }

    /// Clears the profile's state as `reset` does, and returns once the actor has applied it and
    /// published the view requests are routed by: a request sent after this sees the reset. `false`
    /// when the actor is gone (it is restarting).
    pub async fn reset_applied(&self) -> bool {
        self.addr.send(ResetProfile).await.is_ok()
    }

    /// Merges another replica's cooldown and billing ends (the later kept) and auth failure into
    /// this profile's.
    pub fn merge_lanes(
        &self,
        cooldown_until: Option<SystemTime>,
        billing_until: Option<SystemTime>,
        auth_failed: Option<String>,
    ) {
        self.addr.do_send(profile::MergeLanes {
            cooldown_until,
            billing_until,
            auth_failed,
        });
    }

    /// The hash of the credential this profile uses (0 when it has none).
    pub fn credential_fingerprint(&self) -> u64 {
        self.spec.credential_fingerprint
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
    /// Its state forbids it, until the given time when known, and why: the auth failure's reason
    /// (such as an unset key variable) for `auth_failed`, else the last failure, when known.
    State(StateName, Option<SystemTime>, Option<String>),
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
    /// Signalled by every profile whose shareable lanes changed (see `lanes_changed`).
    lanes_changed: Arc<tokio::sync::Notify>,
}

impl Router {
    /// Restores each profile from `store`, starts its actor under a supervisor, and builds the table.
    /// Must run inside an actix system.
    pub fn start(
        spec: &RouterSpec,
        store: &Store,
        metrics: &ActorMetrics,
    ) -> Result<Arc<Router>, StoreError> {
        let lanes_changed = Arc::new(tokio::sync::Notify::new());
        let mut profiles = Vec::with_capacity(spec.profiles.len());
        for p in &spec.profiles {
            profiles.push(spawn_profile(p, store, metrics, &lanes_changed)?);
        }
        Ok(Arc::new(Router {
            table: ArcSwap::from_pointee(build_table(profiles, &spec.models)),
            sessions: DashMap::new(),
            sticky_ttl: spec.sticky_ttl,
            lanes_changed,
        }))
    }

    /// Swaps in a new configuration. Unchanged profiles keep their actor, state and counters; changed ones
    /// keep them too and get the new policy or credential; removed ones leave the table, and their actors
    /// stop once the requests still holding them finish. Must run inside an actix system. Callers
    /// serialise reloads (the proxy holds its reload lock): two at once would both start from the same
    /// old table.
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
                profiles.push(spawn_profile(p, store, metrics, &self.lanes_changed)?);
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

    /// Resolves once some profile's cooldown, billing or auth lane changed since the last call (a
    /// change while nobody waits is kept for the next wait): what the shared state pushes.
    pub async fn lanes_changed(&self) {
        self.lanes_changed.notified().await;
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

    /// Pins a session to `profile` as another replica decided it (shared state), if `model` is served
    /// by that profile; the usual rules apply from then on (an unusable pin is picked around).
    pub fn adopt_pin(&self, model: &str, sid: &str, profile: &str) -> bool {
        let table = self.table.load();
        let Some(entry) = table
            .models
            .get(model)
            .and_then(|r| r.profiles.iter().find(|e| &**e.id() == profile))
        else {
            return false;
        };
        self.pin(model, sid, entry.id());
        true
    }

    /// The ids of the profiles serving `model`, in the config's order.
    pub fn model_profiles(&self, model: &str) -> Vec<Arc<str>> {
        let table = self.table.load();
        table
            .models
            .get(model)
            .map(|r| r.profiles.iter().map(|e| e.id().clone()).collect())
            .unwrap_or_default()
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
    lanes_changed: &Arc<tokio::sync::Notify>,
) -> Result<Arc<ProfileEntry>, StoreError> {
    let saved = store.load_health(&p.id)?;
    let mut view = restore_view(saved, p.credential_fingerprint, SystemTime::now());
    // In the first view already, not only once the actor has read `MarkAuthFailed` below: a request
    // or a readiness check right after start sees the profile as unusable, with the reason.
    if let Some(reason) = &p.unusable_reason {
        view.auth_failed = Some(reason.clone());
    }
    let counters = store.load_counters(&p.id)?;
    let shared = Arc::new(
        ProfileShared::new(&p.id, view, counters, metrics.clone())
            .with_lane_signal(lanes_changed.clone()),
    );
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
                        let view = e.shared.view();
                        let why = match state {
                            StateName::AuthFailed => view.auth_failed.clone(),
                            _ => view.last_error.clone(),
                        };
                        SkipReason::State(state, view.state_until(now), why)
                    }
                    Availability::Throttled(until) => SkipReason::UpstreamLimit(until),
                    Availability::Probe | Availability::Usable => SkipReason::ProbeInFlight,
                }
            };
            (e.id().clone(), reason)
        })
        .collect()
}

/// Sweeps expired sticky sessions every `every`, for as long as the actix system runs. A plain task,
/// not an actor: it has no state of its own and no messages, and nothing to restart.
pub fn spawn_session_sweeper(router: Arc<Router>, every: Duration) {
    actix::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let left = router.sweep_sessions();
            tracing::debug!(sessions = left, "swept sticky sessions");
        }
    });
}

#[cfg(test)]
mod tests;
