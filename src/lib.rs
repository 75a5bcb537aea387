//! Switchyard: an actor-based, resilient, OpenAI-compatible LLM routing proxy.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod http;
pub mod proxy;
pub mod request;
pub mod sse;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Supervisor};
use actix_web::{web, HttpServer};
use switchyard_actors::recorder::UsageRecorder;
use switchyard_actors::router::{ModelSpec, ProfileSpec, Router, RouterActor, RouterSpec};
use switchyard_actors::store::{Store, StoreError};

use crate::config::Config;
use crate::upstream::{credential_fingerprint, resolve_key, UpstreamBuildError, Upstreams};

/// Where and how to serve, after command-line and environment overrides.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// actix-web workers; `None` = one per core.
    pub workers: Option<usize>,
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

/// Runs the proxy until it is told to stop (SIGINT/SIGTERM), then flushes the store. Must run inside an
/// actix system.
pub async fn serve(config: Config, opts: ServeOptions) -> Result<(), ServeError> {
    let store = Store::open(&opts.data_dir).map_err(|source| ServeError::Store {
        dir: opts.data_dir.clone(),
        source,
    })?;
    let router =
        Router::start(&router_spec(&config), &store).map_err(|source| ServeError::Store {
            dir: opts.data_dir.clone(),
            source,
        })?;
    let sweep_every = config
        .routing
        .sticky
        .ttl
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let sweeper_router = router.clone();
    Supervisor::start(move |_| RouterActor::new(sweeper_router.clone(), sweep_every));
    let recorder_store = store.clone();
    let recorder = UsageRecorder::new(recorder_store).start();
    let admin_token = std::env::var(&config.auth.admin_token_env)
        .ok()
        .filter(|t| !t.trim().is_empty());
    if admin_token.is_none() {
        tracing::warn!(variable = %config.auth.admin_token_env, "admin token not set: the admin API is disabled");
    }
    let config = Arc::new(config);
    // Built once here so a bad profile fails start-up; each worker then builds its own clients.
    let template = Upstreams::build(&config)?;
    drop(template);
    let shared = web::Data::new(http::Shared {
        config: arc_swap::ArcSwap::new(config.clone()),
        router,
        recorder,
        store: store.clone(),
        admin_token,
    });
    let worker_config = config.clone();
    let mut server = HttpServer::new(move || {
        let upstreams = match Upstreams::build(&worker_config) {
            Ok(u) => u,
            Err(e) => {
                // Cannot happen after the check above with the same config; never run without clients.
                tracing::error!(error = %e, "worker cannot build upstream clients");
                std::process::exit(1);
            }
        };
        switchyard_app!(shared.clone(), web::Data::new(upstreams))
    })
    .shutdown_timeout(30);
    if let Some(n) = opts.workers {
        server = server.workers(n);
    }
    let server = server
        .bind(opts.listen)
        .map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
    for addr in server.addrs() {
        tracing::info!(%addr, config = %config.source.display(), "switchyard listening on {addr}");
    }
    server.run().await?;
    tracing::info!("stopped accepting; flushing the store");
    if let Err(e) = store.flush_blocking() {
        tracing::error!(error = %e, "final flush failed");
    }
    Ok(())
}
