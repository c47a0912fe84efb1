//! The shared state store on Redis (or Valkey, or Redis Cluster): every replica in front of
//! one Redis sees the same reservations, verify cache, pass quotas, revocations and pending
//! settlements. Each operation is one atomic command or one single-key script, so it runs on
//! a cluster too. Revocations and limited keys are also kept in a local copy refreshed several
//! times a second, so checking one costs no round trip (until the copy of the revocations is
//! first loaded, or when it went stale, the check asks Redis).

mod conn;
mod mirror;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::Script;

use super::{
    Attempter, PendingSettlement, Quota, RedisConf, Refused, StateError, StateStore, unix_now,
};
use crate::metrics::Metrics;
use conn::{Conn, Factory, MAX_BACKOFF, state_runtime};
use mirror::Mirror;

/// How long a reservation outlives its authorization (the chain refuses it by then anyway).
const RESERVATION_GRACE: u64 = 60;
/// How long a facilitator's verification is reused.
const VERIFIED_TTL: u64 = 120;
/// How often each replica refreshes its copies of the mirrored sets (revocations, limits).
const REVOCATION_POLL: Duration = Duration::from_millis(200);
/// A copy of the revocations older than this is not trusted: passes then ask the store.
const REVOCATION_STALE: Duration = Duration::from_secs(2);

/// Reserves a payment: the previous state when there is one, else a new in-flight entry.
const RESERVE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], 'i', 'EXAT', ARGV[1])
return false
";

/// Counts one request against a pass quota without ever passing `max`; returns what is left
/// after it, or -1 when nothing is.
const QUOTA: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local max = tonumber(ARGV[1])
if used >= max then return -1 end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], used + 1, 'EXAT', ARGV[2])
end
return max - used - 1
";

/// Counts a refusal in a window that starts with the first one; returns the count.
const REFUSALS: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

/// Takes or renews a lease for its owner.
const LEASE: &str = r"
local h = redis.call('GET', KEYS[1])
if h == false or h == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// The Redis-backed store.
pub struct RedisStore {
    prefix: String,
    command_timeout: Duration,
    /// Connections, filled in by the background connector once each is up.
    conns: Vec<ArcSwapOption<Conn>>,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
    /// Whether the last command succeeded (for counting recoveries).
    up: AtomicBool,
    /// Pass revocations (pass id → until), mirrored.
    revoked: Mirror,
    /// Client addresses and payers past their limit of refused attempts, mirrored.
    limited: Mirror,
    reserve: Script,
    quota: Script,
    lease: Script,
    refusals: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A Redis error as a store error, without the URL (which may hold a password).
fn unavailable(e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Starts connecting in the background and returns at once: until a connection is up,
    /// every operation is `Unavailable` (priced requests get the `on_unavailable` policy,
    /// free requests never ask). Connections live on a runtime of their own, so no request
    /// thread drives another's commands.
    pub fn start(conf: &RedisConf, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let store = Arc::new(RedisStore {
            prefix: conf.key_prefix.clone(),
            command_timeout: conf.command_timeout,
            conns: (0..conf.pool_size.max(1))
                .map(|_| ArcSwapOption::empty())
                .collect(),
            next: AtomicUsize::new(0),
            metrics,
            up: AtomicBool::new(false),
            revoked: Mirror::new(&conf.key_prefix, "revoked", "revocations"),
            limited: Mirror::new(&conf.key_prefix, "limited", "limits"),
            reserve: Script::new(RESERVE),
            quota: Script::new(QUOTA),
            lease: Script::new(LEASE),
            refusals: Script::new(REFUSALS),
        });
        let factory = Factory::new(conf)?;
        let handle = state_runtime()?;
        for slot in 0..store.conns.len() {
            let (store, factory) = (store.clone(), factory.clone());
            handle.spawn(async move { store.connect(slot, &factory).await });
        }
        let poller = store.clone();
        handle.spawn(async move { poller.poll_mirrors().await });
        Ok(store)
    }

    async fn connect(&self, slot: usize, factory: &Factory) {
        let mut pause = Duration::from_millis(50);
        loop {
            match factory.open().await {
                Ok(c) => {
                    self.conns[slot].store(Some(Arc::new(c)));
                    tracing::info!(slot, "state store connected");
                    return;
                }
                Err(e) => {
                    tracing::warn!(slot, error = %e, "cannot connect to the state store");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn conn(&self) -> Result<Conn, StateError> {
        let n = self.conns.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .find_map(|i| self.conns[(start + i) % n].load_full())
            .map(|c| (*c).clone())
            .ok_or_else(|| StateError::Unavailable("not connected yet".into()))
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// Runs one operation with the command timeout, timing it and counting failures.
    async fn run<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StateError> {
        let started = Instant::now();
        let out = match tokio::time::timeout(self.command_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(StateError::Unavailable("command timed out".into())),
        };
        self.metrics
            .state_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match &out {
            Ok(_) => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    self.metrics.state_up.set(1);
                    self.metrics.state_reconnects.inc();
                }
            }
            Err(e) => {
                self.metrics.state_errors.with_label_values(&[op]).inc();
                if self.up.swap(false, Ordering::AcqRel) {
                    self.metrics.state_up.set(0);
                    tracing::warn!(op, error = %e, "state store unavailable");
                }
            }
        }
        out
    }

    async fn set_state(&self, op: &'static str, key: &str, state: &str) -> Result<(), StateError> {
        let mut c = self.conn()?;
        let k = self.key("r", key);
        self.run(op, async move {
            redis::cmd("SET")
                .arg(&k)
                .arg(state)
                .arg("XX")
                .arg("KEEPTTL")
                .query_async::<Option<String>>(&mut c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Keeps the mirrored sets fresh, a few times a second.
    async fn poll_mirrors(&self) {
        loop {
            if let Ok(mut c) = self.conn() {
                for m in [&self.revoked, &self.limited] {
                    if self.run(m.op, m.refresh(&mut c)).await.is_err() {
                        m.forget_version();
                    }
                }
            }
            tokio::time::sleep(REVOCATION_POLL).await;
        }
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn reserve(&self, key: &str, expires: u64) -> Result<Result<(), Refused>, StateError> {
        let mut c = self.conn()?;
        let k = self.key("r", key);
        let prev: Option<String> = self
            .run("reserve", async {
                self.reserve
                    .key(&k)
                    .arg(expires.max(unix_now()) + RESERVATION_GRACE)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match prev.as_deref() {
            None => Ok(()),
            Some("i") => Err(Refused::InFlight),
            Some(_) => Err(Refused::AlreadyUsed),
        })
    }

    async fn settled(&self, key: &str) -> Result<(), StateError> {
        self.set_state("settled", key, "s").await
    }

    async fn unknown(&self, key: &str) -> Result<(), StateError> {
        self.set_state("unknown", key, "u").await
    }

    async fn release(&self, key: &str) -> Result<(), StateError> {
        let mut c = self.conn()?;
        let k = self.key("r", key);
        self.run("release", async move {
            redis::cmd("DEL").arg(&k).query_async::<i64>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    async fn verified(&self, digest: &[u8; 32]) -> Result<bool, StateError> {
        let mut c = self.conn()?;
        let k = self.key("v", &hex::encode(digest));
        self.run("verified", async move {
            redis::cmd("EXISTS")
                .arg(&k)
                .query_async::<bool>(&mut c)
                .await
        })
        .await
    }

    async fn remember_verified(&self, digest: [u8; 32]) -> Result<(), StateError> {
        let mut c = self.conn()?;
        let k = self.key("v", &hex::encode(digest));
        self.run("remember_verified", async move {
            redis::cmd("SET")
                .arg(&k)
                .arg(1)
                .arg("EX")
                .arg(VERIFIED_TTL)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn use_quota(
        &self,
        id: &str,
        max: u32,
        expires: u64,
        consume: bool,
    ) -> Result<Quota, StateError> {
        let mut c = self.conn()?;
        let k = self.key("q", id);
        let left: i64 = self
            .run("quota", async {
                self.quota
                    .key(&k)
                    .arg(max)
                    .arg(expires.max(unix_now() + 1))
                    .arg(if consume { "1" } else { "0" })
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match u32::try_from(left) {
            Ok(n) => Quota::Left(n),
            Err(_) => Quota::Exhausted,
        })
    }

    async fn quota_used(&self, id: &str) -> Result<u32, StateError> {
        let mut c = self.conn()?;
        let k = self.key("q", id);
        let used: Option<u32> = self
            .run("quota", async move {
                redis::cmd("GET").arg(&k).query_async(&mut c).await
            })
            .await?;
        Ok(used.unwrap_or(0))
    }

    async fn revoke(&self, id: &str, until: u64) -> Result<(), StateError> {
        let mut c = self.conn()?;
        // This replica knows at once; the others within a poll.
        self.run("revoke", self.revoked.add(&mut c, id, until))
            .await
    }

    async fn revoked(&self, id: &str) -> Result<bool, StateError> {
        if let Some(age) = self.revoked.age()
            && age <= REVOCATION_STALE
        {
            return Ok(self.revoked.contains(id));
        }
        // The copy is not loaded yet (just connected) or too old (the store was away): ask
        // the store itself, so a pass waits only for a store that cannot answer.
        let mut c = self.conn()?;
        self.run("revoked", self.revoked.contains_in_store(&mut c, id))
            .await
    }

    async fn put_pending(&self, pending: &PendingSettlement) -> Result<(), StateError> {
        let mut c = self.conn()?;
        let k = self.key("pending", "all");
        let body = serde_json::to_string(pending).map_err(unavailable)?;
        let field = pending.key.clone();
        self.run("pending", async move {
            redis::cmd("HSET")
                .arg(&k)
                .arg(&field)
                .arg(&body)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn resolve_pending(&self, key: &str) -> Result<(), StateError> {
        self.conclude_pending(key, false).await
    }

    async fn begin_pending(
        &self,
        pending: &PendingSettlement,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StateError> {
        let mut c = self.conn()?;
        let body = serde_json::to_string(pending).map_err(unavailable)?;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(self.key("pending", "all"))
            .arg(&pending.key)
            .arg(&body)
            .ignore()
            .cmd("EVAL")
            .arg(LEASE)
            .arg(1)
            .arg(self.key("lease", &pending.key))
            .arg(owner)
            .arg(lease.as_millis() as u64);
        let (got,): (i64,) = self.run("begin_pending", pipe.query_async(&mut c)).await?;
        Ok(got == 1)
    }

    async fn conclude_pending(&self, key: &str, settled: bool) -> Result<(), StateError> {
        let mut c = self.conn()?;
        let mut pipe = redis::pipe();
        if settled {
            pipe.cmd("SET")
                .arg(self.key("r", key))
                .arg("s")
                .arg("XX")
                .arg("KEEPTTL")
                .ignore();
        }
        pipe.cmd("HDEL")
            .arg(self.key("pending", "all"))
            .arg(key)
            .ignore()
            .cmd("DEL")
            .arg(self.key("lease", key))
            .ignore();
        self.run("conclude_pending", pipe.query_async::<()>(&mut c))
            .await
    }

    async fn pending(&self) -> Result<Vec<PendingSettlement>, StateError> {
        let mut c = self.conn()?;
        let k = self.key("pending", "all");
        let bodies: Vec<String> = self
            .run("pending", async move {
                redis::cmd("HVALS").arg(&k).query_async(&mut c).await
            })
            .await?;
        Ok(bodies
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect())
    }

    async fn lease_pending(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StateError> {
        let mut c = self.conn()?;
        let k = self.key("lease", key);
        let got: i64 = self
            .run("lease", async {
                self.lease
                    .key(&k)
                    .arg(owner)
                    .arg(lease.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(got == 1)
    }

    async fn first_seen(&self, key: &[u8; 32], until: u64) -> Result<bool, StateError> {
        let mut c = self.conn()?;
        let k = self.key("seen", &hex::encode(key));
        let set: Option<String> = self
            .run("first_seen", async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(1)
                    .arg("NX")
                    .arg("EXAT")
                    .arg(until.max(unix_now() + 1))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    async fn count_refusal(
        &self,
        who: Attempter<'_>,
        window: Duration,
        limit: u32,
    ) -> Result<(), StateError> {
        if limit == 0 {
            return Ok(());
        }
        let mut c = self.conn()?;
        let name = who.name();
        let k = self.key("refused", &name);
        let n: u32 = self
            .run("count_refusal", async {
                self.refusals
                    .key(&k)
                    .arg(window.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if n >= limit {
            let until = unix_now() + window.as_secs().max(1);
            self.run("count_refusal", self.limited.add(&mut c, &name, until))
                .await?;
        }
        Ok(())
    }

    fn limited(&self, who: Attempter<'_>) -> bool {
        // Nobody limited (the usual case): no name to build.
        !self.limited.is_empty() && self.limited.contains(&who.name())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    fn shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StateError> {
        let mut c = self.conn()?;
        self.run("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }
}
