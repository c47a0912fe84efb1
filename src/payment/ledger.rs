//! The receipts ledger: one JSON line per settlement event, written before the response goes
//! out, rotated by size, synced to disk on rotation and at shutdown; write errors are counted
//! and reported until a write (or a readiness probe) succeeds again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// One ledger line.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry<'a> {
    pub time: String,
    /// `settled`, `settle_failed`, `settle_pending`, `delivery_failed`, ….
    pub event: &'a str,
    pub rule: &'a str,
    pub resource: &'a str,
    pub payer: &'a str,
    pub amount: &'a str,
    pub asset: &'a str,
    pub network: &'a str,
    pub transaction: &'a str,
    pub facilitator: &'a str,
    /// `before` or `after`.
    pub settlement: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// The replica that wrote the line (`[state] replica_id`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub replica: &'a str,
    /// The id of the request that paid (its `X-Request-Id`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub request_id: &'a str,
    /// The audience the paying request was classified into, when its rule classifies.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub audience: &'a str,
}

/// Ledger settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConf {
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` … `path.N`); 0: never rotate, the file only grows.
    pub keep: usize,
}

struct Open {
    path: PathBuf,
    file: File,
    size: u64,
}

/// Whether the ledger can be written, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerHealth {
    pub ok: bool,
    /// Write errors since start.
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The append-only ledger.
pub struct Ledger {
    open: Mutex<Option<Open>>,
    /// The last write's error, cleared by the next successful write or probe.
    failing: Mutex<Option<String>>,
    errors: prometheus::IntCounter,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

/// RFC 3339 time with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Shifts `path` to `path.1`, `path.1` to `path.2` … dropping `path.keep`. Never called with
/// `keep == 0`: the live file is never deleted.
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    let name = |i: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    let _ = std::fs::remove_file(name(keep));
    for i in (1..keep).rev() {
        let _ = std::fs::rename(name(i), name(i + 1));
    }
    std::fs::rename(path, name(1))?;
    // The renames are durable once the folder is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

impl Ledger {
    /// A ledger counting its write errors on `errors` (`x402_ledger_errors_total`).
    pub fn new(errors: prometheus::IntCounter) -> Self {
        Ledger {
            open: Mutex::new(None),
            failing: Mutex::new(None),
            errors,
        }
    }

    /// Appends one line; a failure is logged, counted and reported by [`Ledger::health`]. It
    /// never fails the request.
    pub fn record(&self, conf: &LedgerConf, entry: &LedgerEntry<'_>) {
        let result = self.append(conf, entry);
        self.note(result.as_ref().err());
        if let Err(e) = result {
            tracing::error!(error = %e, event = entry.event, payer = entry.payer, transaction = entry.transaction, "cannot write the receipts ledger");
        }
    }

    fn note(&self, err: Option<&std::io::Error>) {
        if err.is_some() {
            self.errors.inc();
        }
        if let Ok(mut f) = self.failing.lock() {
            *f = err.map(ToString::to_string);
        }
    }

    /// Appends one line and hands it to the operating system. Rotation syncs the full file to
    /// disk first.
    pub fn append(&self, conf: &LedgerConf, entry: &LedgerEntry<'_>) -> std::io::Result<()> {
        let Some(path) = &conf.path else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut guard = self
            .open
            .lock()
            .map_err(|_| std::io::Error::other("ledger lock poisoned"))?;
        if let Some(o) = guard.as_ref()
            && &o.path != path
        {
            // A reload moved the ledger: what went to the old file is synced before it closes.
            o.file.sync_all()?;
            *guard = None;
        }
        if conf.keep > 0
            && let Some(o) = guard.as_ref()
            && o.size + line.len() as u64 > conf.max_bytes
            && o.size > 0
        {
            o.file.sync_all()?;
            *guard = None;
            rotate(path, conf.keep)?;
        }
        if guard.is_none() {
            let file = open_append(path)?;
            let size = file.metadata()?.len();
            *guard = Some(Open {
                path: path.clone(),
                file,
                size,
            });
        }
        let open = guard
            .as_mut()
            .ok_or_else(|| std::io::Error::other("ledger not open"))?;
        open.file.write_all(&line)?;
        open.size += line.len() as u64;
        Ok(())
    }

    /// Syncs the open file to disk (at shutdown).
    pub fn sync(&self) -> std::io::Result<()> {
        match self.open.lock() {
            Ok(g) => g.as_ref().map_or(Ok(()), |o| o.file.sync_all()),
            Err(_) => Err(std::io::Error::other("ledger lock poisoned")),
        }
    }

    /// Whether the ledger is writable. After a failed write, the file is opened again for
    /// appending: success clears the failure.
    pub fn health(&self, conf: &LedgerConf) -> LedgerHealth {
        let failing = self.failing.lock().ok().and_then(|f| f.clone());
        let last_error = match (failing, &conf.path) {
            (Some(_), Some(path)) => match open_append(path) {
                Ok(_) => {
                    self.note(None);
                    None
                }
                Err(e) => Some(e.to_string()),
            },
            (f, _) => f,
        };
        LedgerHealth {
            ok: last_error.is_none(),
            errors: self.errors.get(),
            last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> prometheus::IntCounter {
        prometheus::IntCounter::new("t", "t").expect("counter")
    }

    fn entry() -> LedgerEntry<'static> {
        LedgerEntry {
            time: now_rfc3339(),
            event: "settled",
            rule: "r",
            resource: "http://x/y",
            payer: "0x1",
            amount: "10",
            asset: "0x2",
            network: "eip155:1",
            transaction: "0x3",
            facilitator: "f",
            settlement: "after",
            reason: None,
            upstream_status: Some(200),
            replica: "",
            request_id: "",
            audience: "",
        }
    }

    #[test]
    fn appends_and_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = LedgerConf {
            path: Some(dir.path().join("r.jsonl")),
            max_bytes: 600,
            keep: 2,
        };
        let l = Ledger::new(counter());
        for _ in 0..10 {
            l.append(&conf, &entry()).expect("append");
        }
        l.sync().expect("sync");
        let main = std::fs::read_to_string(dir.path().join("r.jsonl")).expect("main");
        assert!(
            main.lines()
                .all(|line| serde_json::from_str::<serde_json::Value>(line).is_ok())
        );
        assert!(dir.path().join("r.jsonl.1").exists());
        assert!(dir.path().join("r.jsonl.2").exists());
        assert!(!dir.path().join("r.jsonl.3").exists());
    }

    #[test]
    fn keep_zero_never_deletes_the_live_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.jsonl");
        let conf = LedgerConf {
            path: Some(path.clone()),
            max_bytes: 300,
            keep: 0,
        };
        let l = Ledger::new(counter());
        for _ in 0..20 {
            l.append(&conf, &entry()).expect("append");
        }
        let text = std::fs::read_to_string(&path).expect("ledger");
        assert_eq!(text.lines().count(), 20, "every line is still there");
        assert!(!dir.path().join("r.jsonl.1").exists());
    }

    #[test]
    fn write_errors_are_counted_and_reported_until_the_ledger_is_writable() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The ledger's folder is a file: nothing can be written under it.
        let blocker = dir.path().join("blocked");
        std::fs::write(&blocker, b"").expect("blocker");
        let conf = LedgerConf {
            path: Some(blocker.join("r.jsonl")),
            max_bytes: 1 << 20,
            keep: 1,
        };
        let errors = counter();
        let l = Ledger::new(errors.clone());
        l.record(&conf, &entry());
        l.record(&conf, &entry());
        assert_eq!(errors.get(), 2);
        let h = l.health(&conf);
        assert!(!h.ok, "{h:?}");
        assert_eq!(h.errors, 2);
        assert!(h.last_error.is_some());
        // The folder becomes writable: the probe clears the failure, and writes go on.
        std::fs::remove_file(&blocker).expect("unblock");
        let h = l.health(&conf);
        assert!(h.ok, "{h:?}");
        assert_eq!(h.errors, 2, "the count stays");
        l.record(&conf, &entry());
        assert_eq!(errors.get(), 2);
        assert!(l.health(&conf).ok);
    }
}
