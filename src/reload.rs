//! Hot reload: SIGHUP and a debounced watch of `gateway.toml` and the rules folder (plain
//! files, or Kubernetes ConfigMap and Secret mounts that change by swapping links). A reload
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
        metrics
            .reload_timestamp
            .set(crate::state::unix_now() as i64);
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
                    self.metrics.reload_success.set(1);
                    return Ok(current.generation);
                }
                self.generation.store(next, Ordering::Relaxed);
                let rules = snap.rules.len();
                for w in &snap.warnings {
                    tracing::warn!(warning = %w, "configuration warning");
                }
                // The metrics first, the configuration last: whoever sees the new generation
                // served also sees it counted.
                self.metrics.config_generation.set(next as i64);
                self.metrics.reload_success.set(1);
                self.metrics
                    .reload_timestamp
                    .set(crate::state::unix_now() as i64);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                self.config.store(Arc::new(snap));
                tracing::info!(generation = next, rules, trigger, "configuration reloaded");
                Ok(next)
            }
            Err(e) => {
                let outcome = if matches!(e, ReloadError::Refused(_)) {
                    "refused"
                } else {
                    "invalid"
                };
                self.metrics.reload_success.set(0);
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
                // Counted last: whoever sees the count also sees the gauge (the log lines
                // reach the file through a background writer).
                self.metrics.reloads.with_label_values(&[outcome]).inc();
                Err(e)
            }
        }
    }
}

/// Whether a changed path concerns the configuration: the config file, a `.toml` file in the
/// rules folder, or an entry of Kubernetes' atomic writer in either folder (a ConfigMap or
/// Secret mount changes by writing a `..<timestamp>` folder and renaming a `..data_tmp` link
/// over `..data`; the files themselves are links that never change). Other files there (logs,
/// the ledger) change all the time under load and must not trigger or hold back a reload.
fn relevant(path: &Path, config: &Path, rules_dir: &Path, others: &[PathBuf]) -> bool {
    let in_folder = |dir: &Path| path.parent() == Some(dir);
    let kubernetes = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".."));
    path == config
        || (in_folder(rules_dir) && (kubernetes || path.extension().is_some_and(|e| e == "toml")))
        || (kubernetes && config.parent().is_some_and(in_folder))
        || others
            .iter()
            .any(|o| path == o || (kubernetes && o.parent().is_some_and(&in_folder)))
}

/// The next changed path that concerns the configuration (the others are dropped here, so
/// that a busy ledger next to the configuration costs no more than this).
async fn next_relevant(
    rx: &mut mpsc::Receiver<PathBuf>,
    config: &Path,
    rules_dir: &Path,
    others: &[PathBuf],
) -> Option<PathBuf> {
    while let Some(p) = rx.recv().await {
        if relevant(&p, config, rules_dir, others) {
            return Some(p);
        }
    }
    None
}

/// The folders to watch for a configuration at `config` with rules in `rules_dir` and other
/// files it read (certificates), with the folders they resolve to now: a link swapped under
/// them (`..data`) means watching anew.
fn folders(config: &Path, rules_dir: &Path, others: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
    let dir = config.parent().unwrap_or(Path::new("/"));
    let mut out = vec![dir.to_path_buf()];
    for d in std::iter::once(rules_dir).chain(others.iter().filter_map(|o| o.parent())) {
        if !out.iter().any(|x| x == d) {
            out.push(d.to_path_buf());
        }
    }
    out.into_iter()
        .map(|d| {
            let real = std::fs::canonicalize(&d).unwrap_or_else(|_| d.clone());
            (d, real)
        })
        .collect()
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
        let mut watched: Option<Vec<(PathBuf, PathBuf)>> = None;
        loop {
            let snap = self.reloader.config.load_full();
            let config_path = absolute(&snap.sources.config);
            let rules_dir = absolute(&snap.sources.rules_dir);
            let others: Vec<PathBuf> = snap
                .sources
                .other_files
                .iter()
                .map(|p| absolute(p))
                .collect();
            let want = snap
                .reload
                .watch
                .then(|| folders(&config_path, &rules_dir, &others));
            if want != watched {
                watcher = want.as_ref().and_then(|dirs| {
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
                    for (dir, _) in dirs {
                        if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                            tracing::error!(error = %e, dir = %dir.display(), "cannot watch");
                        }
                    }
                    Some(w)
                });
                watched = want;
            }
            let _keep = &watcher;
            let (debounce, max_wait) = (snap.reload.debounce, snap.reload.max_wait);
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let r = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
                }
                Some(_) = next_relevant(&mut rx, &config_path, &rules_dir, &others) => {
                    // Debounce: wait until the configuration files have been quiet for
                    // `debounce`, but no longer than `max_wait` after this first change, so
                    // that files rewritten without pause are still reloaded that often.
                    let latest = tokio::time::Instant::now() + max_wait;
                    let mut deadline = (tokio::time::Instant::now() + debounce).min(latest);
                    while let Ok(Some(p)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                        if relevant(&p, &config_path, &rules_dir, &others) {
                            deadline = (tokio::time::Instant::now() + debounce).min(latest);
                        }
                    }
                    let r = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload("file change")).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_files_and_kubernetes_links_are_relevant_other_files_are_not() {
        let config = Path::new("/etc/x402/gateway.toml");
        let rules = Path::new("/etc/x402/rules");
        let yes = [
            "/etc/x402/gateway.toml",
            "/etc/x402/rules/site.toml",
            "/etc/x402/..data",
            "/etc/x402/..data_tmp",
            "/etc/x402/..2026_12_06_10_00_00.123456789",
            "/etc/x402/rules/..data",
        ];
        let no = [
            "/etc/x402/receipts.jsonl",
            "/etc/x402/gateway.toml.swp",
            "/etc/x402/rules/notes.txt",
            "/etc/x402/other/..data",
            "/etc/..data",
        ];
        for p in yes {
            assert!(relevant(Path::new(p), config, rules, &[]), "{p}");
        }
        for p in no {
            assert!(!relevant(Path::new(p), config, rules, &[]), "{p}");
        }
    }
}
