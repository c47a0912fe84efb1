//! Hot reload: SIGHUP and a debounced watch of `gateway.toml` and the rules folder. A reload
//! builds and validates a new snapshot and swaps it in; an invalid edit keeps the old one and
//! logs every problem; changes that only apply at start are refused by name.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::config::{self, Issues};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Why a reload did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration:\n{0}")]
    Invalid(Issues),
    #[error("these settings only apply at start; restart to change them: {}", .0.join(", "))]
    Refused(Vec<&'static str>),
}

/// Builds and swaps snapshots.
pub struct Reloader {
    pub path: PathBuf,
    pub config: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    generation: AtomicU64,
    lock: Mutex<()>,
}

impl Reloader {
    pub fn new(path: PathBuf, config: Arc<ArcSwap<Snapshot>>, metrics: Arc<Metrics>) -> Self {
        let generation = AtomicU64::new(config.load().generation);
        metrics
            .config_generation
            .set(config.load().generation as i64);
        Reloader {
            path,
            config,
            metrics,
            generation,
            lock: Mutex::new(()),
        }
    }

    /// Reloads now. Requests in flight keep the generation they started with.
    pub fn reload(&self, trigger: &str) -> Result<u64, ReloadError> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.config.load_full();
        let next = self.generation.load(Ordering::Relaxed) + 1;
        let result = config::load(&self.path, next, Some(&current))
            .map_err(ReloadError::Invalid)
            .and_then(|snap| {
                let changed = snap.startup.changed_from(&current.startup);
                if changed.is_empty() {
                    Ok(snap)
                } else {
                    Err(ReloadError::Refused(changed))
                }
            });
        match result {
            Ok(snap) => {
                if snap.content_hash == current.content_hash {
                    self.metrics.reloads.with_label_values(&["unchanged"]).inc();
                    return Ok(current.generation);
                }
                self.generation.store(next, Ordering::Relaxed);
                let rules = snap.rules.len();
                for w in &snap.warnings {
                    tracing::warn!(warning = %w, "configuration warning");
                }
                self.config.store(Arc::new(snap));
                self.metrics.config_generation.set(next as i64);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(generation = next, rules, trigger, "configuration reloaded");
                Ok(next)
            }
            Err(e) => {
                let outcome = if matches!(e, ReloadError::Refused(_)) {
                    "refused"
                } else {
                    "invalid"
                };
                self.metrics.reloads.with_label_values(&[outcome]).inc();
                match &e {
                    ReloadError::Invalid(issues) => {
                        for i in &issues.0 {
                            tracing::error!(trigger, "config: {i}");
                        }
                        tracing::error!(
                            trigger,
                            problems = issues.0.len(),
                            "reload rejected, keeping generation {}",
                            current.generation
                        );
                    }
                    ReloadError::Refused(names) => {
                        tracing::error!(trigger, settings = %names.join(", "), "reload refused: restart to change these settings");
                    }
                }
                Err(e)
            }
        }
    }
}

/// Whether a changed path concerns the configuration.
fn relevant(path: &Path, config: &Path, rules_dir: &Path) -> bool {
    path == config
        || (path.parent() == Some(rules_dir) && path.extension().is_some_and(|e| e == "toml"))
}

/// Whether a watch event can mean new content. Opening and reading a file is not a change:
/// counting it would make every reload (which reads the files) trigger the next one.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The background service that triggers reloads.
pub struct ReloadService {
    pub reloader: Arc<Reloader>,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let (tx, mut rx) = mpsc::channel::<PathBuf>(256);
        let mut watcher: Option<notify::RecommendedWatcher> = None;
        let mut watched: Option<(PathBuf, PathBuf)> = None;
        loop {
            let snap = self.reloader.config.load_full();
            let config_path = absolute(&snap.sources.config);
            let rules_dir = absolute(&snap.sources.rules_dir);
            let want = snap
                .reload
                .watch
                .then(|| (config_path.clone(), rules_dir.clone()));
            if want != watched {
                watcher = want.as_ref().and_then(|(cfg, rules)| {
                    let tx = tx.clone();
                    let mut w =
                        notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                            if let Ok(ev) = ev {
                                if !is_change(&ev.kind) {
                                    return;
                                }
                                for p in ev.paths {
                                    let _ = tx.try_send(p);
                                }
                            }
                        })
                        .map_err(
                            |e| tracing::error!(error = %e, "cannot watch configuration files"),
                        )
                        .ok()?;
                    let dir = cfg.parent().unwrap_or(Path::new("/"));
                    if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                        tracing::error!(error = %e, dir = %dir.display(), "cannot watch");
                    }
                    if rules.as_path() != dir
                        && let Err(e) = w.watch(rules, RecursiveMode::NonRecursive)
                    {
                        tracing::error!(error = %e, dir = %rules.display(), "cannot watch");
                    }
                    Some(w)
                });
                watched = want;
            }
            let _keep = &watcher;
            let debounce = snap.reload.debounce;
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let r = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
                }
                Some(p) = rx.recv() => {
                    if !relevant(&p, &config_path, &rules_dir) {
                        continue;
                    }
                    // Debounce: wait until the configuration files have been quiet for
                    // `debounce`. Other files in the watched folders (logs, the ledger) change
                    // all the time under load and must not hold the reload back.
                    let mut deadline = tokio::time::Instant::now() + debounce;
                    while let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                        if relevant(&p, &config_path, &rules_dir) {
                            deadline = tokio::time::Instant::now() + debounce;
                        }
                    }
                    let r = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload("file change")).await;
                }
            }
        }
    }
}
