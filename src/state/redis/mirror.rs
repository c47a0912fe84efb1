//! A set kept in Redis and mirrored in every replica's memory: a sorted set of names, each
//! scored with the unix second it ends, plus a version counter under the same hash tag. Adding
//! a name is one atomic step; each replica reads the version a few times a second and the set
//! only when the version moved, so asking whether a name is in it costs no round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::ConnectionLike;

use crate::state::unix_now;

/// A mirrored set.
pub(super) struct Mirror {
    /// The metric label of its commands.
    pub(super) op: &'static str,
    set: String,
    version: String,
    names: ArcSwap<HashMap<String, u64>>,
    /// The version last read (`i64::MIN`: none yet) and when the copy was last confirmed
    /// current (milliseconds since `epoch`; `u64::MAX`: never).
    seen: AtomicI64,
    synced: AtomicU64,
    epoch: Instant,
    sweep: Mutex<Instant>,
}

impl Mirror {
    /// The set `name` under `prefix`.
    pub(super) fn new(prefix: &str, name: &str, op: &'static str) -> Self {
        Mirror {
            op,
            set: format!("{prefix}{{{name}}}:set"),
            version: format!("{prefix}{{{name}}}:version"),
            names: ArcSwap::from_pointee(HashMap::new()),
            seen: AtomicI64::new(i64::MIN),
            synced: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            sweep: Mutex::new(Instant::now()),
        }
    }

    /// Adds `name` until `until` (unix seconds), in Redis and in this copy.
    pub(super) async fn add<C: ConnectionLike + Send>(
        &self,
        c: &mut C,
        name: &str,
        until: u64,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(&self.set)
            .arg("GT")
            .arg(until)
            .arg(name)
            .ignore()
            .cmd("INCR")
            .arg(&self.version)
            .ignore();
        pipe.query_async::<()>(c).await?;
        let mut copy = HashMap::clone(&self.names.load());
        copy.insert(name.to_owned(), until);
        self.names.store(Arc::new(copy));
        Ok(())
    }

    /// Forgets which version this copy holds, so that the next refresh reads the whole set
    /// (after an error: a Redis that restarted empty counts its versions from zero again).
    pub(super) fn forget_version(&self) {
        self.seen.store(i64::MIN, Ordering::Release);
    }

    /// Whether `name` is in the set now, asking Redis itself (when this copy is not loaded
    /// yet or went stale).
    pub(super) async fn contains_in_store<C: ConnectionLike + Send>(
        &self,
        c: &mut C,
        name: &str,
    ) -> redis::RedisResult<bool> {
        let until: Option<f64> = redis::cmd("ZSCORE")
            .arg(&self.set)
            .arg(name)
            .query_async(c)
            .await?;
        Ok(until.is_some_and(|until| until >= unix_now() as f64))
    }

    /// Whether this copy holds no name at all.
    pub(super) fn is_empty(&self) -> bool {
        self.names.load().is_empty()
    }

    /// Whether `name` is in the set now, by this copy.
    pub(super) fn contains(&self, name: &str) -> bool {
        self.names
            .load()
            .get(name)
            .is_some_and(|until| *until >= unix_now())
    }

    /// How old this copy is, or `None` when it was never read.
    pub(super) fn age(&self) -> Option<Duration> {
        let synced = self.synced.load(Ordering::Acquire);
        (synced != u64::MAX).then(|| {
            Duration::from_millis((self.epoch.elapsed().as_millis() as u64).saturating_sub(synced))
        })
    }

    /// Brings this copy up to date: the version, and the set when the version moved.
    pub(super) async fn refresh<C: ConnectionLike + Send>(
        &self,
        c: &mut C,
    ) -> redis::RedisResult<()> {
        let v: Option<i64> = redis::cmd("GET").arg(&self.version).query_async(c).await?;
        let v = v.unwrap_or(0);
        if v != self.seen.load(Ordering::Acquire) {
            let now = unix_now();
            let list: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg(&self.set)
                .arg(now)
                .arg("+inf")
                .arg("BYSCORE")
                .arg("WITHSCORES")
                .query_async(c)
                .await?;
            self.names.store(Arc::new(list.into_iter().collect()));
            self.seen.store(v, Ordering::Release);
        }
        self.synced
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        // Ended names leave the set once a minute.
        let due = self
            .sweep
            .lock()
            .map(|mut last| {
                let due = last.elapsed() >= Duration::from_secs(60);
                if due {
                    *last = Instant::now();
                }
                due
            })
            .unwrap_or(false);
        if due {
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(&self.set)
                .arg("-inf")
                .arg(format!("({}", unix_now()))
                .query_async::<i64>(c)
                .await?;
        }
        Ok(())
    }
}
