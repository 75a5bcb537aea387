//! Hot reload: the config file is re-read on a file change, SIGHUP or `POST /admin/reload`. A new config is
//! validated first and swapped in whole; an invalid one is refused with its errors and the old one keeps
//! serving.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use serde::Serialize;
use switchyard_actors::router::ReloadSummary;

use crate::config::{self, ConfigErrors};
use crate::state::AppState;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is invalid; the old configuration stays.
    #[error("invalid configuration:\n{0}")]
    Invalid(ConfigErrors),
    /// The router could not apply it (a store failure while setting up a profile): nothing of the new
    /// file took effect; the old configuration and routing table are back in place.
    #[error("cannot apply the configuration: {0}")]
    Apply(String),
}

/// What a successful reload changed.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    pub generation: u64,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
    /// Settings that only take effect on restart (listen address, data directory).
    pub needs_restart: Vec<String>,
}

/// Re-reads the configuration file and applies it.
pub async fn reload(shared: &AppState, trigger: &str) -> Result<ReloadReport, ReloadError> {
    let _serial = shared.reload_lock.lock().await;
    let old = shared.config();
    let result = apply(shared, &old.source, &old).await;
    let label = if result.is_ok() { "ok" } else { "error" };
    shared.metrics.reloads.with_label_values(&[label]).inc();
    match &result {
        Ok(r) => tracing::info!(
            trigger,
            generation = r.generation,
            added = ?r.added,
            changed = ?r.changed,
            removed = ?r.removed,
            "configuration reloaded"
        ),
        Err(ReloadError::Invalid(errors)) => {
            for e in &errors.0 {
                tracing::error!(trigger, "reload refused: {e}");
            }
        }
        Err(e) => tracing::error!(trigger, error = %e, "reload failed"),
    }
    result
}

async fn apply(
    shared: &AppState,
    path: &Path,
    old: &Arc<config::Config>,
) -> Result<ReloadReport, ReloadError> {
    let new = config::load_file(path).map_err(ReloadError::Invalid)?;
    let mut needs_restart = Vec::new();
    if new.server.listen != old.server.listen {
        needs_restart.push("server.listen".to_owned());
    }
    if new.server.data_dir != old.server.data_dir {
        needs_restart.push("server.data_dir".to_owned());
    }
    if new.server.store_cache_bytes != old.server.store_cache_bytes {
        needs_restart.push("server.store_cache_size".to_owned());
    }
    // The Redis client is made once at start (every worker holds its connections).
    if new.state != old.state {
        needs_restart.push("state".to_owned());
    }
    let spec = crate::state::router_spec(&new);
    // The router sees only what routing needs; a change to anything else of a profile (base_url,
    // headers, model_map, timeouts...) is applied too, by the workers' rebuilt clients.
    let reshaped: Vec<String> = new
        .profiles
        .iter()
        .filter(|p| {
            old.profiles
                .iter()
                .find(|o| o.id == p.id)
                .is_some_and(|o| o != *p)
        })
        .map(|p| p.id.clone())
        .collect();
    // Config and generation first, then the routing table: a request that picks a new profile from the
    // new table always finds its upstream, and one still on the old table finds removed profiles carried
    // over by the worker's rebuild.
    shared.config.store(Arc::new(new));
    let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
    let summary: ReloadSummary =
        match shared
            .router
            .reload(&spec, &shared.store, &shared.metrics.actors)
        {
            Ok(s) => s,
            Err(e) => {
                // The router swaps its table only when every profile could be set up, so the old table
                // still serves: put the old config back with it, under a new generation so workers that
                // already rebuilt their clients from the new one rebuild them again.
                shared.config.store(old.clone());
                shared.generation.fetch_add(1, Ordering::AcqRel);
                return Err(ReloadError::Apply(e.to_string()));
            }
        };
    let mut changed = summary.changed;
    let mut unchanged = summary.unchanged;
    for id in reshaped {
        if !changed.contains(&id) {
            changed.push(id);
            unchanged = unchanged.saturating_sub(1);
        }
    }
    Ok(ReloadReport {
        generation,
        added: summary.added,
        changed,
        removed: summary.removed,
        unchanged,
        needs_restart,
    })
}

/// Reloads on SIGHUP, for as long as the system runs. The handler is installed before this returns.
pub fn spawn_sighup(shared: web::Data<AppState>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/reload");
            return;
        }
    };
    actix_web::rt::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reload(&shared, "sighup").await;
        }
    });
}

/// Reloads when the config file changes. Watches its directory, because editors replace files by rename.
/// Returns the watcher, which must be kept alive.
pub fn spawn_file_watch(
    shared: web::Data<AppState>,
    path: PathBuf,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name()?.to_owned();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let ours = ev.paths.iter().any(|p| p.file_name() == Some(name.as_os_str()));
            let writes = matches!(
                ev.kind,
                notify::EventKind::Create(_) | notify::EventKind::Modify(_) | notify::EventKind::Remove(_)
            );
            if ours && writes {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /admin/reload"))
    .ok()?;
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory");
        return None;
    }
    actix_web::rt::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: an editor's save is several events; read the file once it has settled.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            let _ = reload(&shared, "file_change").await;
        }
    });
    Some(watcher)
}
