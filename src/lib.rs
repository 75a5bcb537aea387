//! Switchyard: an actor-based, resilient, OpenAI-compatible LLM routing proxy.
//!
//! A map of the crate, one floor per line, lowest first. A module imports only from floors below its own
//! (`tests/it/layout.rs` checks it), so each can be read and tested without the ones above.
//!
//! * [`wire`] — the wire formats, pure code over bytes: the client's and upstream's [`wire::Dialect`],
//!   the routing fields of a body and its rewrite (`wire::openai`), the one SSE framer (`wire::sse`),
//!   the Anthropic translation both ways (`wire::anthropic`), the nesting-depth check of client
//!   bodies (`wire::depth`).
//! * [`error`] — [`error::ApiError`], every error a client can see, rendered once per dialect; and
//!   [`metrics`], the Prometheus registry.
//! * [`config`] — `profiles.yaml`: YAML with spans (`load`), raw serde types (`raw`), validation into
//!   [`config::Config`] (`validate`, `values`), every problem reported at once (`report`).
//! * [`auth`] — client identity: gateway keys, accounts, JWTs, JWKS, the audit log, the dashboard's
//!   sessions (`auth::web`). [`upstream`] — the
//!   profiles' side: per-worker HTTP clients, credentials (and OAuth tokens, `upstream::oauth`), the
//!   classification of upstream answers (`upstream::classify`), and `provider: echo`, the built-in
//!   demo upstream answered in-process (`upstream::echo`). [`shared`] — the Redis client for
//!   `state.backend: redis` (per-worker connections, a command deadline, a breaker) and what the
//!   replicas keep there.
//! * [`limits`] — tiers, rate windows, credit reservations and the ledger, usage reports, billing events;
//!   [`pins`], which profile created each Responses API response id.
//! * [`state`] — [`state::AppState`], what every worker shares, and the router's view of a config;
//!   [`readiness`], which models have a usable profile now and why the others do not.
//! * [`forward`] — the failover loop, one attempt, the stream relay, the guard that records every
//!   attempt once; [`reload`] — hot reload (the only place the config and routing table change).
//! * [`http`] — routes and thin handlers: `extract` (caller, the admin gate, bodies), `respond`
//!   (X-RateLimit-*), `v1`, `identity`, `billing`, `admin`, and `ui` (the dashboard at `/ui`).
//! * this file — [`serve`], which wires them together; `main.rs` is the CLI.
//!
//! The actors (profile health, the router's table, the usage recorder, the sled store) live in the
//! `switchyard-actors` crate, which has no web dependency.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod forward;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod pins;
pub mod readiness;
pub mod reload;
pub mod shared;
pub mod state;
pub mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use actix::Supervisor;
use actix_web::{web, HttpServer};
use switchyard_actors::recorder::{FlushUsage, UsageQueue, UsageRecorder};
use switchyard_actors::router::{spawn_session_sweeper, Router};
use switchyard_actors::store::{Store, StoreError};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::{router_spec, AppState};
use crate::upstream::oauth;
use crate::upstream::{UpstreamBuildError, Upstreams, WorkerUpstreams};

/// Where and how to serve, after command-line and environment overrides.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// actix-web workers; `None` = one per core.
    pub workers: Option<usize>,
    /// How long in-flight requests and streams may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Reload when the config file changes.
    pub watch_config: bool,
}

/// Why the server could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: PathBuf, source: StoreError },
    #[error(transparent)]
    Upstream(#[from] UpstreamBuildError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("auth: {0}")]
    Auth(String),
    #[error("cannot replay or open the journal in {dir}: {source}")]
    Journal {
        dir: PathBuf,
        source: limits::recovery::RecoveryError,
    },
    #[error("shared state: {0}")]
    Shared(String),
}

/// Runs the proxy until it is told to stop (SIGINT/SIGTERM): then it stops accepting, lets in-flight
/// requests and streams finish up to `shutdown_timeout`, and flushes the store. Must run inside an actix
/// system.
pub async fn serve(config: Config, opts: ServeOptions) -> Result<(), ServeError> {
    // First, before any actor starts: a busy port is then a plain error. Actors started before a
    // failed bind panicked on the way out ("there is no reactor running") as the system dropped them.
    let listener = bind(opts.listen).map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    let store_error = |source| ServeError::Store {
        dir: opts.data_dir.clone(),
        source,
    };
    let store = Store::open_with_cache(&opts.data_dir, config.server.store_cache_bytes)
        .map_err(store_error)?;
    // Before anything reads the store (the high-water check included): what only the journal holds.
    replay_journal(&config, &store, &opts.data_dir)?;
    // A store that comes back holding less than its high-water mark lost data: refuse it before
    // anything reads it (see actors/src/highwater.rs; the same counts as `switchyard store`).
    let held = switchyard_actors::highwater::Counts {
        usage_records: store.count_usage_records().map_err(store_error)?,
        ledger_transactions: limits::credits::count_transactions(&store).map_err(store_error)?,
        keys: auth::store::AuthStore::open(&store)
            .and_then(|a| a.count_keys())
            .map_err(store_error)?,
        id_counter: store.next_id().map_err(store_error)?,
    };
    if !store
        .arm_high_water(&opts.data_dir, held)
        .map_err(store_error)?
    {
        tracing::info!(?held, "no high-water mark in the data directory: wrote one");
    }
    // Only once the store is accepted: a refused start leaves no journal behind.
    let journal = open_journal(&config, &store, &opts.data_dir)?;
    let tokens = Arc::new(oauth::TokenSources::new(&store, &opts.data_dir));
    // Built once here, before the actors, so a bad profile fails start-up as cleanly as a busy port;
    // each worker then builds its own clients.
    drop(Upstreams::build(&config, None, &tokens)?);
    let metrics = Metrics::new().map_err(|e| ServeError::Metrics(e.to_string()))?;
    let redis = match &config.state {
        config::StateBackend::Redis(redis) => {
            tracing::info!(prefix = %redis.key_prefix, replicas = redis.replicas, "state shared through redis");
            Some(
                shared::Shared::new(redis, &metrics.shared)
                    .map_err(|e| ServeError::Shared(e.to_string()))?,
            )
        }
        config::StateBackend::Local => None,
    };
    if let Some(redis) = &redis {
        let oauth_profiles: Vec<_> = config
            .profiles
            .iter()
            .filter_map(|p| p.oauth.as_ref().map(|o| (p.id.clone(), o.clone())))
            .collect();
        tokens
            .share_through(redis.clone(), &oauth_profiles)
            .await
            .map_err(ServeError::Shared)?;
    }
    let mut auth_service =
        auth::AuthService::new(&store, &opts.data_dir, &config.auth).map_err(ServeError::Auth)?;
    if let Some(redis) = &redis {
        auth_service.share_through(redis.clone());
        let own_secret =
            std::env::var(&config.auth.jwt_secret_env).is_ok_and(|v| !v.trim().is_empty());
        if !own_secret {
            tracing::warn!(variable = %config.auth.jwt_secret_env, "state shared through redis, but the access-token secret is this data directory's own: set the variable to one secret on every replica, or a sign-in on one replica is refused on the others");
        }
    }
    let auth = Arc::new(auth_service);
    actix_web::rt::spawn(auth.clone().run_maintenance());
    actix_web::rt::spawn(auth.clone().run_mirror());
    let (prefetch_auth, prefetch_config) = (auth.clone(), config.auth.clone());
    actix_web::rt::spawn(async move { prefetch_auth.prefetch_jwks(&prefetch_config).await });
    let router =
        Router::start(&router_spec(&config), &store, &metrics.actors).map_err(store_error)?;
    let sweep_every = config
        .routing
        .sticky
        .ttl
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    spawn_session_sweeper(router.clone(), sweep_every);
    if let Some(redis) = &redis {
        actix_web::rt::spawn(redis.clone().run_health_exchange(router.clone()));
        // After the journal's replay above: what only it held is in the store, and ships too.
        actix_web::rt::spawn(redis.clone().run_usage_shipping(store.clone()));
    }
    let mut limits = limits::Limits::new(&store, metrics.clone()).map_err(store_error)?;
    if let Some(redis) = &redis {
        limits = limits.share_through(redis.clone());
    }
    let limits = Arc::new(limits);
    if redis.is_some() {
        // Settles that did not reach Redis, and spend under the allowance, once it is back.
        actix_web::rt::spawn(limits.clone().run_repayment());
        actix_web::rt::spawn(limits.clone().run_tier_mirror());
    }
    if let Some(j) = &journal {
        limits.ledger.attach_journal(j.clone());
    }
    let usage_through = Arc::new(AtomicU64::new(store.usage_through().map_err(store_error)?));
    let (recorder_store, recorder_metrics, recorder_limits, recorder_through) = (
        store.clone(),
        metrics.actors.clone(),
        limits.clone(),
        usage_through.clone(),
    );
    let usage_queue = Arc::new(UsageQueue::default());
    let recorder_queue = usage_queue.clone();
    let recorder = Supervisor::start(move |_| {
        UsageRecorder::new(recorder_store.clone(), recorder_metrics.clone())
            .with_companion(recorder_limits.clone())
            .with_through(recorder_through.clone())
            .with_queue(recorder_queue.clone())
    });
    if let Some(keep) = config.usage.retention {
        // After the journal's replay: a sweep never races the start-up reads of the store.
        let retention = switchyard_actors::retention::Retention {
            keep,
            keep_unshipped: redis.is_some(),
        };
        switchyard_actors::retention::spawn(store.clone(), retention, metrics.actors.clone())?;
    }
    let admin_token = std::env::var(&config.auth.admin_token_env)
        .ok()
        .filter(|t| !t.trim().is_empty());
    if admin_token.is_none() {
        tracing::warn!(variable = %config.auth.admin_token_env, "admin token not set: the admin API is disabled");
    }
    let config_path = config.source.clone();
    let shared = web::Data::new(AppState {
        config: arc_swap::ArcSwap::new(Arc::new(config)),
        router,
        recorder,
        usage_queue,
        store: store.clone(),
        admin_token,
        metrics,
        generation: AtomicU64::new(0),
        reload_lock: tokio::sync::Mutex::new(()),
        auth: auth.clone(),
        limits,
        journal,
        response_pins: pins::ResponsePins::default().share_through(redis.clone()),
        redis: redis.clone(),
    });
    spawn_lease_sweeper(shared.clone());
    spawn_journal_checkpoint(shared.clone(), usage_through);
    let factory_shared = shared.clone();
    let mut server = HttpServer::new(move || {
        let upstreams = match WorkerUpstreams::new(
            &factory_shared.config(),
            factory_shared.generation(),
            tokens.clone(),
        ) {
            Ok(u) => u,
            Err(e) => {
                // Only a config that passed the check above reaches here; never run without clients.
                tracing::error!(error = %e, "worker cannot build upstream clients");
                std::process::exit(1);
            }
        };
        if let Some(redis) = redis.clone() {
            actix_web::rt::spawn(redis.warm());
        }
        switchyard_app!(factory_shared.clone(), web::Data::new(upstreams))
    })
    // Without TCP_NODELAY every streamed event after the first waits for the client's delayed ACK (~40 ms).
    .on_connect(|conn, _ext| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        }
    })
    // A client that closes its side has left: actix-web then drops the handler at once (its future, the
    // upstream request or stream it holds, and the attempt's guard, which records `cancelled` and
    // releases the credit hold) instead of going on until a write to the dead socket fails, one or two
    // stream events later, or failing over to the next profile for nobody. The price: a client that
    // half-closes after its request (rare; no SDK does) is taken as gone.
    .h1_allow_half_closed(false)
    .shutdown_timeout(opts.shutdown_timeout.as_secs().max(1));
    if let Some(n) = opts.workers {
        server = server.workers(n);
    }
    let server = server.listen(listener).map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    // Armed before the listening line, so a change made right after start-up is never missed.
    reload::spawn_sighup(shared.clone());
    let _watcher = if opts.watch_config {
        reload::spawn_file_watch(shared.clone(), config_path.clone())
    } else {
        None
    };
    for addr in server.addrs() {
        tracing::info!(%addr, config = %config_path.display(), "switchyard listening on {addr}");
    }
    server.run().await?;
    tracing::info!("stopped; flushing the store");
    // The recorder writes its pending counters, then everything is flushed below.
    if let Err(e) = shared.recorder.send(FlushUsage).await {
        tracing::error!(error = %e, "usage recorder did not flush");
    }
    auth.persist_last_used();
    if let Err(e) = shared.limits.ledger.write_pending() {
        tracing::error!(error = %e, "cannot write the last ledger entries");
    }
    match store.flush_blocking() {
        Err(e) => tracing::error!(error = %e, "final flush failed"),
        // Everything the journal holds is in the flushed store now.
        Ok(()) if shared.journal.is_some() => {
            if let Err(e) = limits::journal::remove_all(&opts.data_dir) {
                tracing::error!(error = %e, "cannot delete the journal after the final flush");
            }
        }
        Ok(()) => {}
    }
    // Last: the mark may only say what the flushes above made durable.
    if let Err(e) = store.mark_high_water() {
        tracing::error!(error = %e, "cannot write the store's high-water mark");
    }
    Ok(())
}

fn journal_error(
    data_dir: &std::path::Path,
) -> impl FnOnce(limits::recovery::RecoveryError) -> ServeError + '_ {
    move |source| ServeError::Journal {
        dir: data_dir.to_owned(),
        source,
    }
}

/// Writes what the journal in `data_dir` holds and the store lacks (a run that ended without its final
/// flush), then deletes it.
fn replay_journal(
    config: &Config,
    store: &Store,
    data_dir: &std::path::Path,
) -> Result<(), ServeError> {
    let recovered = limits::recovery::recover(store, data_dir, config.usage.reservation_lease)
        .map_err(journal_error(data_dir))?;
    if recovered != limits::recovery::Recovered::default() {
        tracing::warn!(
            usage_records = recovered.usage_records,
            transactions = recovered.transactions,
            skipped_lines = recovered.skipped,
            "replayed the journal: the last run stopped without a final flush"
        );
    }
    Ok(())
}

/// A fresh journal, unless durable responses wait for an fsync (`usage.fsync`).
fn open_journal(
    config: &Config,
    store: &Store,
    data_dir: &std::path::Path,
) -> Result<Option<Arc<limits::journal::Journal>>, ServeError> {
    if config.usage.fsync {
        return Ok(None);
    }
    let ids =
        limits::recovery::usage_sequence(store).map_err(|e| journal_error(data_dir)(e.into()))?;
    let journal = limits::journal::Journal::create(data_dir, ids)
        .map_err(|e| journal_error(data_dir)(e.into()))?;
    Ok(Some(Arc::new(journal)))
}

/// Once a second: the journal's checkpoint (see `limits::recovery::checkpoint`), which also keeps
/// the store flushed now that durable responses no longer wait for a flush.
fn spawn_journal_checkpoint(shared: web::Data<AppState>, usage_through: Arc<AtomicU64>) {
    let Some(journal) = shared.journal.clone() else {
        return;
    };
    actix_web::rt::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let done = limits::recovery::checkpoint(
                &journal,
                &shared.store,
                &shared.limits.ledger,
                &usage_through,
            )
            .await;
            if let Err(e) = done {
                tracing::error!(error = %e, "journal checkpoint failed");
            }
        }
    });
}

/// Releases the reservations a stopped process left open once their lease runs out: at start, then
/// every `credits.reservation_lease` / 2 (between 1 s and 1 min), with the lease of the config in force.
fn spawn_lease_sweeper(shared: web::Data<AppState>) {
    actix_web::rt::spawn(async move {
        loop {
            let lease = shared.config().usage.reservation_lease;
            match shared
                .limits
                .ledger
                .release_expired(lease, switchyard_actors::store::now_ms())
            {
                Ok(released) => {
                    for tx in &released {
                        tracing::warn!(account = %tx.account, request_id = tx.request_id.as_deref().unwrap_or_default(), micros = tx.amount_micros, "released a reservation left open by a stopped process");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot release expired reservations"),
            }
            let every = (lease / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
            tokio::time::sleep(every).await;
        }
    });
}

/// The listening socket, as actix-web's own `bind` makes it (SO_REUSEADDR, a backlog of 1024), but
/// made before anything else starts.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}
