//! `AppState`: what every worker shares (config, router, recorder, store, identity, limits), and the
//! router's view of a config. It sits below `http/`, `forward/` and `reload`, which all read it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;
use switchyard_actors::recorder::{UsageQueue, UsageRecorder};
use switchyard_actors::router::{ModelSpec, ProfileSpec, Router, RouterSpec};
use switchyard_actors::store::Store;

use crate::auth::AuthService;
use crate::config::Config;
use crate::limits::journal::Journal;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::pins::ResponsePins;
use crate::shared::Shared;
use crate::upstream::{credential_fingerprint, resolve_key};

/// State shared by every worker.
pub struct AppState {
    /// The live configuration; swapped whole on reload, so a request sees one consistent version.
    pub config: arc_swap::ArcSwap<Config>,
    pub router: Arc<Router>,
    pub recorder: Addr<UsageRecorder>,
    /// The recorder's queue: records nobody waits for, gathered (see `UsageQueue`).
    pub usage_queue: Arc<UsageQueue>,
    pub store: Store,
    /// `None` when the admin token's variable is unset: admin routes then refuse everyone.
    pub admin_token: Option<String>,
    pub metrics: Arc<Metrics>,
    /// Bumped on every successful reload; workers rebuild their upstream clients when it moves.
    pub generation: AtomicU64,
    /// Serialises reloads (file watcher, SIGHUP and the admin endpoint may race): the config swap, the
    /// generation bump and the routing table move together, and only `reload::reload` changes them.
    /// A tokio mutex because it is held across the store writes of a routing-table change.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Client identity: keys, accounts, tokens, audit. AppState by every worker (its caches are DashMaps).
    pub auth: Arc<AuthService>,
    /// Tiers, rate-limit counters and the credit ledger (see `limits`).
    pub limits: Arc<Limits>,
    /// Where durable responses' records and credit movements go before the response (`None` with
    /// `usage.fsync: true`: those wait for a flush).
    pub journal: Option<Arc<Journal>>,
    /// Which profile created each Responses API response id (see `pins`).
    pub response_pins: ResponsePins,
    /// `state.backend: redis`: what the replicas share (see `shared`); `None` in local mode.
    pub redis: Option<Arc<Shared>>,
}

impl AppState {
    /// The configuration as of now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The configuration generation as of now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The configuration and its generation, for one request to read throughout. The generation is read
    /// first: a reload stores the config before it bumps the generation, so a new generation always
    /// comes with its config, and upstream clients are never rebuilt from an older one.
    pub fn snapshot(&self) -> (Arc<Config>, u64) {
        let generation = self.generation();
        (self.config(), generation)
    }
}

/// What the router needs of the config, with credentials resolved (a missing key disables its profile).
pub fn router_spec(config: &Config) -> RouterSpec {
    let profiles = config
        .profiles
        .iter()
        .map(|p| ProfileSpec {
            id: p.id.clone(),
            priority: p.priority,
            weight: p.weight,
            health: config.routing.health,
            credential_fingerprint: credential_fingerprint(&p.api_key),
            unusable_reason: resolve_key(&p.api_key).err(),
            limits: p.limits,
        })
        .collect();
    let models = config
        .models
        .iter()
        .map(|m| ModelSpec {
            name: m.name.clone(),
            profiles: m.profiles.clone(),
            strategy: m.strategy.unwrap_or(config.routing.strategy),
        })
        .collect();
    RouterSpec {
        profiles,
        models,
        sticky_ttl: config
            .routing
            .sticky
            .enabled
            .then_some(config.routing.sticky.ttl),
    }
}
