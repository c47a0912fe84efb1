//! The receipts ledger: one JSON line per settlement event, written and flushed before the
//! response goes out, rotated by size.

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
    /// `settled`, `settle_failed`, `settle_unknown`, `delivery_failed`.
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
}

/// Ledger settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConf {
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
    pub keep: usize,
}

struct Open {
    path: PathBuf,
    file: File,
    size: u64,
}

/// The append-only ledger.
#[derive(Default)]
pub struct Ledger {
    open: Mutex<Option<Open>>,
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

fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let name = |i: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    let _ = std::fs::remove_file(name(keep));
    for i in (1..keep).rev() {
        let _ = std::fs::rename(name(i), name(i + 1));
    }
    std::fs::rename(path, name(1))
}

impl Ledger {
    /// Appends one line and flushes it. Errors are returned for the caller to log and count;
    /// they never fail the request.
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
        if guard.as_ref().is_some_and(|o| &o.path != path) {
            *guard = None;
        }
        if guard
            .as_ref()
            .is_some_and(|o| o.size + line.len() as u64 > conf.max_bytes && o.size > 0)
        {
            *guard = None;
            rotate(path, conf.keep)?;
        }
        if guard.is_none() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(path)?;
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
        open.file.flush()?;
        open.size += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_rotates() {
        let dir = std::env::temp_dir().join(format!("x402-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let conf = LedgerConf {
            path: Some(dir.join("r.jsonl")),
            max_bytes: 600,
            keep: 2,
        };
        let l = Ledger::default();
        let e = LedgerEntry {
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
        };
        for _ in 0..10 {
            l.append(&conf, &e).expect("append");
        }
        let main = std::fs::read_to_string(dir.join("r.jsonl")).expect("main");
        assert!(
            main.lines()
                .all(|line| serde_json::from_str::<serde_json::Value>(line).is_ok())
        );
        assert!(dir.join("r.jsonl.1").exists());
        assert!(!dir.join("r.jsonl.3").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
