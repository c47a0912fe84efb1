//! The shared state store on Redis (or Valkey, or Redis Cluster): every replica in front of
//! one Redis sees the same reservations, verify cache, pass quotas, revocations and pending
//! settlements. Each operation is one atomic command or one single-key script, so it runs on
//! a cluster too. Revocations are also kept in a local copy refreshed several times a second,
//! so checking one costs no round trip (until the copy is first loaded, or when it went stale,
//! the check asks Redis).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use super::{PendingSettlement, Quota, RedisConf, Refused, StateError, StateStore, unix_now};
use crate::metrics::Metrics;

/// How long a reservation outlives its authorization (the chain refuses it by then anyway).
const RESERVATION_GRACE: u64 = 60;
/// How long a facilitator's verification is reused.
const VERIFIED_TTL: u64 = 120;
/// How often each replica refreshes its copy of the revocations.
const REVOCATION_POLL: Duration = Duration::from_millis(200);
/// A copy of the revocations older than this is not trusted: passes then ask the store.
const REVOCATION_STALE: Duration = Duration::from_secs(2);
/// Longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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

/// Takes or renews a lease for its owner.
const LEASE: &str = r"
local h = redis.call('GET', KEYS[1])
if h == false or h == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// One connection to a single server or to a cluster; both multiplex every caller.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

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
    /// The local copy of the revocations (pass id → unix seconds until) and when it was
    /// last refreshed (milliseconds since `epoch`).
    revoked: ArcSwap<HashMap<String, u64>>,
    revoked_synced: AtomicU64,
    epoch: Instant,
    reserve: Script,
    quota: Script,
    lease: Script,
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
            revoked: ArcSwap::from_pointee(HashMap::new()),
            revoked_synced: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            reserve: Script::new(RESERVE),
            quota: Script::new(QUOTA),
            lease: Script::new(LEASE),
        });
        let factory = Factory::new(conf)?;
        let handle = state_runtime()?;
        for slot in 0..store.conns.len() {
            let (store, factory) = (store.clone(), factory.clone());
            handle.spawn(async move { store.connect(slot, &factory).await });
        }
        let poller = store.clone();
        handle.spawn(async move { poller.poll_revocations().await });
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

    /// The revocations live under one hash tag so that the set and its version share a slot.
    fn revocation_keys(&self) -> (String, String) {
        (
            format!("{}{{revoked}}:set", self.prefix),
            format!("{}{{revoked}}:version", self.prefix),
        )
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

    /// Keeps the local copy of the revocations fresh: reads the version every
    /// [`REVOCATION_POLL`] and the set when it changed (or after a reconnect).
    async fn poll_revocations(&self) {
        let (set, version) = self.revocation_keys();
        let mut seen: Option<i64> = None;
        loop {
            if let Ok(mut c) = self.conn() {
                let v: Result<Option<i64>, _> = self
                    .run(
                        "revocations",
                        redis::cmd("GET").arg(&version).query_async(&mut c),
                    )
                    .await;
                match v {
                    Ok(v) if v == seen && seen.is_some() => self.mark_synced(),
                    Ok(v) => {
                        let now = unix_now();
                        let listed: Result<Vec<(String, u64)>, _> = self
                            .run(
                                "revocations",
                                redis::cmd("ZRANGE")
                                    .arg(&set)
                                    .arg(now)
                                    .arg("+inf")
                                    .arg("BYSCORE")
                                    .arg("WITHSCORES")
                                    .query_async(&mut c),
                            )
                            .await;
                        if let Ok(list) = listed {
                            self.revoked.store(Arc::new(list.into_iter().collect()));
                            seen = v.or(Some(0));
                            self.mark_synced();
                            // Expired revocations leave the set now and then.
                            let _: Result<i64, _> = redis::cmd("ZREMRANGEBYSCORE")
                                .arg(&set)
                                .arg("-inf")
                                .arg(format!("({now}"))
                                .query_async(&mut c)
                                .await;
                        }
                    }
                    Err(_) => seen = None,
                }
            }
            tokio::time::sleep(REVOCATION_POLL).await;
        }
    }

    fn mark_synced(&self) {
        self.revoked_synced
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
    }
}

/// Opens connections the way `[state]` says.
#[derive(Clone)]
struct Factory {
    single: Option<redis::Client>,
    cluster: Option<ClusterClient>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl Factory {
    fn new(conf: &RedisConf) -> Result<Self, String> {
        let redact = |e: redis::RedisError| crate::secret::scrub(&e.to_string(), conf.url.expose());
        if conf.cluster.is_empty() {
            let client = redis::Client::open(conf.url.expose()).map_err(redact)?;
            Ok(Factory {
                single: Some(client),
                cluster: None,
                connect_timeout: conf.connect_timeout,
                command_timeout: conf.command_timeout,
            })
        } else {
            let nodes: Vec<&str> = std::iter::once(conf.url.expose())
                .chain(conf.cluster.iter().map(|s| s.expose()))
                .collect();
            let client = ClusterClient::builder(nodes)
                .connection_timeout(conf.connect_timeout)
                .response_timeout(conf.command_timeout)
                .build()
                .map_err(redact)?;
            Ok(Factory {
                single: None,
                cluster: Some(client),
                connect_timeout: conf.connect_timeout,
                command_timeout: conf.command_timeout,
            })
        }
    }

    async fn open(&self) -> redis::RedisResult<Conn> {
        if let Some(c) = &self.cluster {
            return Ok(Conn::Cluster(c.get_async_connection().await?));
        }
        let Some(client) = &self.single else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no state store configured",
            )));
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_max_delay(MAX_BACKOFF);
        Ok(Conn::Single(
            client.get_connection_manager_with_config(config).await?,
        ))
    }
}

/// A runtime of its own for the store's connections, on a thread that lives as long as the
/// process.
fn state_runtime() -> Result<tokio::runtime::Handle, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("state store runtime: {e}"))?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("x402-state".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .map_err(|e| format!("state store thread: {e}"))?;
    Ok(handle)
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
        let (set, version) = self.revocation_keys();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(&set)
            .arg(until)
            .arg(id)
            .ignore()
            .cmd("INCR")
            .arg(&version)
            .ignore();
        self.run(
            "revoke",
            async move { pipe.query_async::<()>(&mut c).await },
        )
        .await?;
        // This replica knows at once; the others within a poll.
        let mut copy = HashMap::clone(&self.revoked.load());
        copy.insert(id.to_owned(), until);
        self.revoked.store(Arc::new(copy));
        Ok(())
    }

    async fn revoked(&self, id: &str) -> Result<bool, StateError> {
        let synced = self.revoked_synced.load(Ordering::Acquire);
        let age = (self.epoch.elapsed().as_millis() as u64).saturating_sub(synced);
        if synced != u64::MAX && age <= REVOCATION_STALE.as_millis() as u64 {
            return Ok(self
                .revoked
                .load()
                .get(id)
                .is_some_and(|until| *until >= unix_now()));
        }
        // The copy is not loaded yet (just connected) or too old (the store was away): ask
        // the store itself, so a pass waits only for a store that cannot answer.
        let mut c = self.conn()?;
        let (set, _) = self.revocation_keys();
        let until: Option<f64> = self
            .run("revoked", async move {
                redis::cmd("ZSCORE")
                    .arg(&set)
                    .arg(id)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(until.is_some_and(|until| until >= unix_now() as f64))
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
        let mut c = self.conn()?;
        let k = self.key("pending", "all");
        let lease = self.key("lease", key);
        let field = key.to_owned();
        self.run("pending", async move {
            redis::cmd("HDEL")
                .arg(&k)
                .arg(&field)
                .query_async::<()>(&mut c)
                .await?;
            redis::cmd("DEL")
                .arg(&lease)
                .query_async::<()>(&mut c)
                .await
        })
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

    fn backend(&self) -> &'static str {
        "redis"
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
