//! The shared state store on Redis (or Valkey, or Redis Cluster): every replica in front of
//! one Redis sees the same reservations, verify cache, pass quotas, revocations and pending
//! settlements. Each operation is one round trip of atomic commands and scripts that each
//! touch one hash slot (a payment's reservation, record and lease share one), so it runs on a
//! cluster too; a paid request costs two (admit, conclude). Revocations and limited keys are
//! also kept in a local copy refreshed several times a second, so checking one costs no round
//! trip (until the copy of the revocations is first loaded, or when it went stale, the check
//! asks Redis); large pass quotas are counted in blocks (`quota.rs`).

mod conn;
mod mirror;
mod quota;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redis::Script;

use super::{
    Admitted, Attempter, CHANNEL_TOMBSTONE, Identified, PendingSettlement, Quota, RedisConf,
    Refused, StateError, StateStore, unix_now,
};
use crate::metrics::Metrics;
use conn::{Conn, Factory, MAX_BACKOFF, PerThread, Trip, cmd, state_runtime};
use mirror::Mirror;
use quota::Blocks;

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

/// Admits a payment: the previous state of its reservation when there is one; else a new
/// in-flight reservation, its pending-settlement record and the admitting replica's lease.
/// KEYS: reservation, record, lease (one hash slot); ARGV: expiry (unix seconds), record,
/// owner, lease (ms).
const ADMIT: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], 'i', 'EXAT', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EXAT', ARGV[1])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
return false
";

/// How many pending settlements one sweep reads at most.
const PENDING_PAGE: isize = 1000;

/// Gives unused requests of a quota back, unless the count expired with its pass.
const GIVE_BACK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECRBY', KEYS[1], ARGV[1]) end
return 0
";

/// Counts a refusal in a window that starts with the first one; returns the count.
const REFUSALS: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

/// Deletes a payment identifier's record if it is still the given in-flight claim.
const FORGET_IDENTIFIER: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A payment identifier's record as stored (and compared by `FORGET_IDENTIFIER`).
fn identified_json(record: &Identified) -> Result<String, StateError> {
    serde_json::to_string(record).map_err(|e| StateError::Unavailable(e.to_string()))
}

/// Takes or renews a lease for its owner.
const LEASE: &str = r"
local h = redis.call('GET', KEYS[1])
if h == false or h == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Writes a channel's record if its version is still the expected one, indexes the channel
/// and marks it changed. Records are stored as `<version>:<bytes>`. KEYS: record, index,
/// changed channels (one hash slot); ARGV: expected version, record, channel id. Returns 1
/// when written.
const SWAP_CHANNEL: &str = r"
local cur = redis.call('GET', KEYS[1])
local v = 0
if cur then v = tonumber(string.match(cur, '^(%d+):')) end
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], tostring(v + 1) .. ':' .. ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
";

/// Drops a channel record at a version: a tombstone (the next version, an empty record) that
/// expires after ARGV[3] ms, the id leaves the index and is marked changed.
/// KEYS: record, index, changed channels. ARGV: expected version, channel id, tombstone ms.
/// Returns 1 when dropped.
const DELETE_CHANNEL: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local v = tonumber(string.match(cur, '^(%d+):'))
if v ~= tonumber(ARGV[1]) or string.len(cur) == string.len(ARGV[1]) + 1 then return 0 end
redis.call('SET', KEYS[1], tostring(v + 1) .. ':', 'PX', ARGV[3])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
";

/// The channels written since the last call, forgotten in the same step, and the call's
/// number (a call repeated after its answer was lost shows as a gap).
/// KEYS: the set of changed channels, the count of calls (one hash slot). Returns
/// `{number, ids}`.
const TAKE_CHANGED_CHANNELS: &str = r"
local n = redis.call('INCR', KEYS[2])
local ids = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return {n, ids}
";

/// Channel records read in one MGET (the claimer's walk).
const CHANNELS_PER_READ: usize = 256;

/// Bytes of a stored channel record that always hold its version and the colon after it
/// (a u64 has at most 20 digits).
const VERSION_PREFIX_BYTES: usize = 21;

/// The version of a stored channel record, `<version>:<bytes>`, from its first bytes; and
/// where its record starts.
fn version_prefix(raw: &[u8]) -> Result<(u64, usize), StateError> {
    let colon = raw
        .iter()
        .take(VERSION_PREFIX_BYTES)
        .position(|b| *b == b':')
        .ok_or_else(|| StateError::Unavailable("a channel record without a version".into()))?;
    let version = std::str::from_utf8(&raw[..colon])
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            StateError::Unavailable("a channel record's version is not a number".into())
        })?;
    Ok((version, colon + 1))
}

/// A stored channel record, `<version>:<bytes>`, split.
fn versioned(raw: &[u8]) -> Result<(u64, Vec<u8>), StateError> {
    let (version, start) = version_prefix(raw)?;
    Ok((version, raw[start..].to_vec()))
}

/// The Redis-backed store.
pub struct RedisStore {
    prefix: String,
    command_timeout: Duration,
    /// Connections, filled in by the background connector once each is up.
    conns: Vec<ArcSwapOption<Conn>>,
    next: AtomicUsize,
    /// Each request thread's own connection (the pool serves until it is up).
    per_thread: PerThread,
    metrics: Arc<Metrics>,
    /// Whether the last command succeeded (for counting recoveries).
    up: AtomicBool,
    /// Pass revocations (pass id → until), mirrored.
    revoked: Mirror,
    /// Client addresses and payers past their limit of refused attempts, mirrored.
    limited: Mirror,
    /// Blocks of large pass quotas this replica holds.
    blocks: Blocks,
    reserve: Script,
    admit: Script,
    lease: Script,
    refusals: Script,
    forget: Script,
    swap_channel: Script,
    delete_channel: Script,
    take_changed_channels: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The command that runs `script` on `keys` (by its hash, or by its text when `by_text`);
/// its arguments follow.
fn script_cmd(script: &Script, code: &str, by_text: bool, keys: &[&str]) -> redis::Cmd {
    let mut c = if by_text {
        cmd!("EVAL", code)
    } else {
        cmd!("EVALSHA", script.get_hash())
    };
    c.arg(keys.len()).arg(keys);
    c
}

/// What is left of a quota of `max` when this request is the `count`th.
fn left_after(count: u64, max: u32) -> Quota {
    match u64::from(max).checked_sub(count) {
        Some(left) => Quota::Left(u32::try_from(left).unwrap_or(u32::MAX)),
        None => Quota::Exhausted,
    }
}

/// A reservation's previous state as the outcome of reserving it.
fn reservation(prev: Option<&str>) -> Result<(), Refused> {
    match prev {
        None => Ok(()),
        Some("i") => Err(Refused::InFlight),
        Some(_) => Err(Refused::AlreadyUsed),
    }
}

/// Why one operation failed.
enum Failure {
    Redis(redis::RedisError),
    TimedOut,
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
        let factory = Factory::new(conf)?;
        let store = Arc::new(RedisStore {
            prefix: conf.key_prefix.clone(),
            command_timeout: conf.command_timeout,
            conns: (0..conf.pool_size.max(1))
                .map(|_| ArcSwapOption::empty())
                .collect(),
            next: AtomicUsize::new(0),
            per_thread: PerThread::new(factory.clone()),
            metrics,
            up: AtomicBool::new(false),
            revoked: Mirror::new(&conf.key_prefix, "revoked", "revocations"),
            limited: Mirror::new(&conf.key_prefix, "limited", "limits"),
            blocks: Blocks::default(),
            reserve: Script::new(RESERVE),
            admit: Script::new(ADMIT),
            lease: Script::new(LEASE),
            refusals: Script::new(REFUSALS),
            forget: Script::new(FORGET_IDENTIFIER),
            swap_channel: Script::new(SWAP_CHANNEL),
            delete_channel: Script::new(DELETE_CHANNEL),
            take_changed_channels: Script::new(TAKE_CHANGED_CHANNELS),
        });
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
        if let Some(c) = self.per_thread.get() {
            return Ok(c);
        }
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

    /// One of a payment's keys (`r` reservation, `p` pending record, `l` lease): all three in
    /// one hash slot, so that one script may touch them on a cluster.
    fn payment_key(&self, key: &str, kind: &str) -> String {
        format!("{}{{{key}}}:{kind}", self.prefix)
    }

    /// A payment channel's record; every channel shares one hash slot with the index.
    fn channel_key(&self, id: &str) -> String {
        format!("{}{{channels}}:{id}", self.prefix)
    }

    /// The index of payment channels (ids), which the claimer reads.
    fn channel_index(&self) -> String {
        format!("{}{{channels}}:index", self.prefix)
    }

    /// The channels written since the claimer last asked (ids).
    fn channel_changed(&self) -> String {
        format!("{}{{channels}}:changed", self.prefix)
    }

    /// How many times the changed channels were taken.
    fn channel_changes_taken(&self) -> String {
        format!("{}{{channels}}:changes_taken", self.prefix)
    }

    /// The index of pending settlements (payment keys), which sweeps read.
    fn pending_index(&self) -> String {
        format!("{}pending:index", self.prefix)
    }

    /// Adds a record's payment key to the index (idempotent), as a group of its own.
    fn index(&self, trip: &mut Trip, key: &str) {
        trip.group()
            .tell(cmd!("ZADD", self.pending_index(), unix_now(), key));
    }

    /// Drops a record's payment key from the index, as a group of its own.
    fn unindex(&self, trip: &mut Trip, key: &str) {
        trip.group().tell(cmd!("ZREM", self.pending_index(), key));
    }

    /// Writes a pending-settlement record (in the current group), kept as long as its
    /// reservation.
    fn record(&self, trip: &mut Trip, pending: &PendingSettlement) -> Result<(), StateError> {
        let body = serde_json::to_string(pending).map_err(unavailable)?;
        trip.tell(cmd!(
            "SET",
            self.payment_key(&pending.key, "p"),
            body,
            "EXAT",
            pending.valid_before.max(unix_now()) + RESERVATION_GRACE
        ));
        Ok(())
    }

    /// Drops a payment's reservation, record and lease, and its entry in the index.
    fn forget_payment(&self, trip: &mut Trip, key: &str) {
        trip.group().tell(cmd!(
            "DEL",
            self.payment_key(key, "r"),
            self.payment_key(key, "p"),
            self.payment_key(key, "l")
        ));
        self.unindex(trip, key);
    }

    /// Runs one round trip built by `build`; when it holds a script the server does not know
    /// yet (a restart, a failover), once more with the script's text (`build`'s flag).
    async fn run_trip<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        build: impl Fn(&mut Trip, bool),
    ) -> Result<T, StateError> {
        let mut c = self.conn()?;
        let mut trip = Trip::default();
        build(&mut trip, false);
        match self.run_raw(op, c.trip(trip)).await {
            Err(Failure::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let mut trip = Trip::default();
                build(&mut trip, true);
                self.run(op, c.trip(trip)).await
            }
            other => other.map_err(|e| self.failed(op, e)),
        }
    }

    /// Runs one operation with the command timeout, timing it and counting failures.
    async fn run<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StateError> {
        self.run_raw(op, f).await.map_err(|e| self.failed(op, e))
    }

    /// Runs one operation with the command timeout, timing it; a failure is returned as it
    /// came (the caller may retry it) and not counted yet.
    async fn run_raw<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Failure> {
        let started = Instant::now();
        let out = match tokio::time::timeout(self.command_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failure::Redis(e)),
            Err(_) => Err(Failure::TimedOut),
        };
        self.metrics
            .state_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if out.is_ok() && !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.state_up.set(1);
            self.metrics.state_reconnects.inc();
        }
        out
    }

    /// Counts a failed operation and says what it was.
    fn failed(&self, op: &'static str, failure: Failure) -> StateError {
        let e = match failure {
            Failure::Redis(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.per_thread.forget();
                }
                unavailable(e)
            }
            Failure::TimedOut => StateError::Unavailable("command timed out".into()),
        };
        self.metrics.state_errors.with_label_values(&[op]).inc();
        if self.up.swap(false, Ordering::AcqRel) {
            self.metrics.state_up.set(0);
            tracing::warn!(op, error = %e, "state store unavailable");
        }
        e
    }

    async fn set_state(&self, op: &'static str, key: &str, state: &str) -> Result<(), StateError> {
        let mut c = self.conn()?;
        let k = self.payment_key(key, "r");
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
                for (id, units) in self.blocks.idle() {
                    let back = cmd!("EVAL", GIVE_BACK, 1, self.key("q", &id), units);
                    if let Err(e) = self.run("quota", back.query_async::<i64>(&mut c)).await {
                        tracing::debug!(error = %e, "cannot give an unused block of a pass quota back");
                    }
                }
            }
            tokio::time::sleep(REVOCATION_POLL).await;
        }
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn admit(
        &self,
        pending: &PendingSettlement,
        expires: u64,
        digest: &[u8; 32],
        owner: &str,
        lease: Duration,
    ) -> Result<Admitted, StateError> {
        let body = serde_json::to_string(pending).map_err(unavailable)?;
        let key = pending.key.as_str();
        let (r, p, l) = (
            self.payment_key(key, "r"),
            self.payment_key(key, "p"),
            self.payment_key(key, "l"),
        );
        let (prev, verified): (Option<String>, bool) = self
            .run_trip("admit", |trip, by_text| {
                let mut admit = script_cmd(&self.admit, ADMIT, by_text, &[&r, &p, &l]);
                admit
                    .arg(expires.max(unix_now()) + RESERVATION_GRACE)
                    .arg(&body)
                    .arg(owner)
                    .arg(lease.as_millis() as u64);
                trip.group().ask(admit);
                trip.group()
                    .ask(cmd!("EXISTS", self.key("v", &hex::encode(digest))));
                // Also when refused: the key is then indexed already, or settled (a sweep
                // drops it), and adding it again is harmless.
                self.index(trip, key);
            })
            .await?;
        Ok(Admitted {
            reserved: reservation(prev.as_deref()),
            verified: prev.is_none() && verified,
        })
    }

    async fn reserve(&self, key: &str, expires: u64) -> Result<Result<(), Refused>, StateError> {
        let mut c = self.conn()?;
        let k = self.payment_key(key, "r");
        let prev: Option<String> = self
            .run("reserve", async {
                self.reserve
                    .key(&k)
                    .arg(expires.max(unix_now()) + RESERVATION_GRACE)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(reservation(prev.as_deref()))
    }

    async fn settled(&self, key: &str) -> Result<(), StateError> {
        self.set_state("settled", key, "s").await
    }

    async fn unknown(&self, key: &str) -> Result<(), StateError> {
        self.set_state("unknown", key, "u").await
    }

    async fn release(&self, key: &str) -> Result<(), StateError> {
        self.run_trip("release", |trip, _| self.forget_payment(trip, key))
            .await
    }

    async fn release_verified(&self, key: &str, digest: [u8; 32]) -> Result<(), StateError> {
        let v = self.key("v", &hex::encode(digest));
        self.run_trip("release", |trip, _| {
            self.forget_payment(trip, key);
            trip.group().tell(cmd!("SET", &v, 1, "EX", VERIFIED_TTL));
        })
        .await
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
        // A request out of this replica's block: no key to name, no connection to take.
        if consume && let Some(left) = self.blocks.take(id) {
            return Ok(Quota::Left(u32::try_from(left).unwrap_or(u32::MAX)));
        }
        let mut c = self.conn()?;
        let k = self.key("q", id);
        if !consume {
            let used: Option<u64> = self
                .run("quota", cmd!("GET", &k).query_async(&mut c))
                .await?;
            // Requests this replica holds are counted in the store but still to be had.
            let used = used.unwrap_or(0).saturating_sub(self.blocks.held(id));
            return Ok(left_after(used + 1, max));
        }
        // One round trip of two plain commands (cheaper for Redis than a script): the count
        // after this request's block, and the count's expiry (the pass's own, set each time).
        let expires = expires.max(unix_now() + 1);
        let size = self.blocks.size(id);
        let (count,): (u64,) = self
            .run_trip("quota", |trip, _| {
                trip.group()
                    .ask(cmd!("INCRBY", &k, size))
                    .tell(cmd!("EXPIREAT", &k, expires));
            })
            .await?;
        let max = u64::from(max);
        let got = quota::granted(count.saturating_sub(size), size, max);
        if got < size {
            // Past the maximum: take back what does not fit, so that the count says how many
            // were admitted or are held. Concurrent takers each take back their own excess;
            // admissions are never more than `max`.
            self.run(
                "quota",
                cmd!("DECRBY", &k, size - got).query_async::<i64>(&mut c),
            )
            .await?;
        }
        if got == 0 {
            return Ok(Quota::Exhausted);
        }
        let store_left = max.saturating_sub(count);
        self.blocks.keep(id, got - 1, store_left);
        let left = got - 1 + store_left;
        Ok(Quota::Left(u32::try_from(left).unwrap_or(u32::MAX)))
    }

    async fn quota_used(&self, id: &str) -> Result<u32, StateError> {
        let mut c = self.conn()?;
        let k = self.key("q", id);
        let used: Option<u32> = self
            .run("quota", async move {
                redis::cmd("GET").arg(&k).query_async(&mut c).await
            })
            .await?;
        // Requests this replica holds are counted in the store but not used yet.
        let held = u32::try_from(self.blocks.held(id)).unwrap_or(u32::MAX);
        Ok(used.unwrap_or(0).saturating_sub(held))
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
        let mut trip = Trip::default();
        self.record(trip.group(), pending)?;
        self.index(&mut trip, &pending.key);
        let mut c = self.conn()?;
        self.run("pending", c.trip::<()>(trip)).await
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
        // Checked once here, so that the trip's builder cannot fail.
        serde_json::to_string(pending).map_err(unavailable)?;
        let l = self.payment_key(&pending.key, "l");
        let (got,): (i64,) = self
            .run_trip("begin_pending", |trip, by_text| {
                let _ = self.record(trip.group(), pending);
                let mut take = script_cmd(&self.lease, LEASE, by_text, &[&l]);
                take.arg(owner).arg(lease.as_millis() as u64);
                trip.ask(take);
                self.index(trip, &pending.key);
            })
            .await?;
        Ok(got == 1)
    }

    async fn conclude_pending(&self, key: &str, settled: bool) -> Result<(), StateError> {
        self.run_trip("conclude_pending", |trip, _| {
            trip.group();
            if settled {
                trip.tell(cmd!(
                    "SET",
                    self.payment_key(key, "r"),
                    "s",
                    "XX",
                    "KEEPTTL"
                ));
            }
            trip.tell(cmd!(
                "DEL",
                self.payment_key(key, "p"),
                self.payment_key(key, "l")
            ));
            self.unindex(trip, key);
        })
        .await
    }

    async fn pending(&self) -> Result<Vec<PendingSettlement>, StateError> {
        let mut c = self.conn()?;
        let index = self.pending_index();
        let keys: Vec<String> = self
            .run(
                "pending",
                cmd!("ZRANGE", &index, 0, PENDING_PAGE - 1).query_async(&mut c),
            )
            .await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let bodies: Vec<Option<String>> = self
            .run_trip("pending", |trip, _| {
                for k in &keys {
                    trip.group().ask(cmd!("GET", self.payment_key(k, "p")));
                }
            })
            .await?;
        let mut found = Vec::new();
        let mut gone = cmd!("ZREM", &index);
        for (k, body) in keys.iter().zip(bodies) {
            match body.and_then(|b| serde_json::from_str::<PendingSettlement>(&b).ok()) {
                Some(p) => found.push(p),
                // Settled, released or expired since it was indexed. Should it be admitted
                // again in the meantime, its replica indexes it again when it renews its lease.
                None => {
                    gone.arg(k);
                }
            }
        }
        if found.len() < keys.len() {
            self.run("pending", gone.query_async::<()>(&mut c)).await?;
        }
        Ok(found)
    }

    async fn lease_pending(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StateError> {
        let l = self.payment_key(key, "l");
        // The record's key is indexed again with each renewal: a sweep that dropped it while
        // the payment was being admitted anew loses it for one renewal at most.
        let (got,): (i64,) = self
            .run_trip("lease", |trip, by_text| {
                let mut take = script_cmd(&self.lease, LEASE, by_text, &[&l]);
                take.arg(owner).arg(lease.as_millis() as u64);
                trip.group().ask(take);
                self.index(trip, key);
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

    async fn claim_identifier(
        &self,
        id: &str,
        record: &Identified,
        until: u64,
    ) -> Result<Option<Identified>, StateError> {
        let mut c = self.conn()?;
        let k = self.key("pid", id);
        let value = identified_json(record)?;
        // One command: set if absent, and return what was there.
        let old: Option<String> = self
            .run("claim_identifier", async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(value)
                    .arg("NX")
                    .arg("GET")
                    .arg("EXAT")
                    .arg(until.max(unix_now() + 1))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        old.map(|v| {
            serde_json::from_str(&v)
                .map_err(|e| StateError::Unavailable(format!("unreadable identifier record: {e}")))
        })
        .transpose()
    }

    async fn complete_identifier(
        &self,
        id: &str,
        record: &Identified,
        until: u64,
    ) -> Result<(), StateError> {
        let mut c = self.conn()?;
        let k = self.key("pid", id);
        let value = identified_json(record)?;
        self.run("complete_identifier", async move {
            redis::cmd("SET")
                .arg(&k)
                .arg(value)
                .arg("EXAT")
                .arg(until.max(unix_now() + 1))
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn forget_identifier(&self, id: &str, record: &Identified) -> Result<(), StateError> {
        let mut c = self.conn()?;
        let k = self.key("pid", id);
        let value = identified_json(record)?;
        let script = &self.forget;
        self.run("forget_identifier", async move {
            script.key(&k).arg(value).invoke_async::<i64>(&mut c).await
        })
        .await
        .map(|_| ())
    }

    async fn remember_paid(&self, key: &[u8; 32], until: u64) -> Result<(), StateError> {
        let mut c = self.conn()?;
        let k = self.key("paid", &hex::encode(key));
        self.run("remember_paid", async move {
            redis::cmd("SET")
                .arg(&k)
                .arg(1)
                .arg("EXAT")
                .arg(until.max(unix_now() + 1))
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn paid_within(&self, key: &[u8; 32]) -> Result<bool, StateError> {
        let mut c = self.conn()?;
        let k = self.key("paid", &hex::encode(key));
        let n: i64 = self
            .run("paid_within", async move {
                redis::cmd("EXISTS").arg(&k).query_async(&mut c).await
            })
            .await?;
        Ok(n == 1)
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

    async fn channel(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        let mut c = self.conn()?;
        let k = self.channel_key(id);
        let raw: Option<Vec<u8>> = self
            .run("channel", async move {
                redis::cmd("GET").arg(&k).query_async(&mut c).await
            })
            .await?;
        raw.map(|r| versioned(&r)).transpose()
    }

    async fn channels(&self, ids: &[String]) -> Result<Vec<Option<(u64, Vec<u8>)>>, StateError> {
        let mut out = Vec::with_capacity(ids.len());
        // One MGET per chunk: every channel key is in the `{channels}` slot.
        for chunk in ids.chunks(CHANNELS_PER_READ) {
            let mut c = self.conn()?;
            let keys: Vec<String> = chunk.iter().map(|id| self.channel_key(id)).collect();
            let raws: Vec<Option<Vec<u8>>> = self
                .run("channels", async move {
                    redis::cmd("MGET").arg(&keys).query_async(&mut c).await
                })
                .await?;
            for (id, raw) in chunk.iter().zip(raws) {
                // One bad record does not hide the others.
                out.push(raw.and_then(|r| {
                    versioned(&r)
                        .inspect_err(|e| tracing::error!(channel = %id, error = %e, "a payment channel's record does not parse"))
                        .ok()
                }));
            }
        }
        Ok(out)
    }

    async fn channel_versions(&self, ids: &[String]) -> Result<Vec<Option<u64>>, StateError> {
        let mut out = Vec::with_capacity(ids.len());
        // Only each record's `<version>:` prefix, pipelined a chunk at a time.
        for chunk in ids.chunks(CHANNELS_PER_READ) {
            let mut c = self.conn()?;
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("GETRANGE")
                    .arg(self.channel_key(id))
                    .arg(0)
                    .arg(VERSION_PREFIX_BYTES - 1);
            }
            let heads: Vec<Vec<u8>> = self
                .run(
                    "channel_versions",
                    async move { pipe.query_async(&mut c).await },
                )
                .await?;
            for (id, head) in chunk.iter().zip(heads) {
                // GETRANGE of a missing key is empty. A prefix that does not parse reads as
                // no record here; the full read logs it.
                out.push(if head.is_empty() {
                    None
                } else {
                    version_prefix(&head)
                        .map(|(version, _)| version)
                        .inspect_err(|e| tracing::error!(channel = %id, error = %e, "a payment channel's record does not parse"))
                        .ok()
                });
            }
        }
        Ok(out)
    }

    async fn swap_channel(
        &self,
        id: &str,
        version: u64,
        record: &[u8],
    ) -> Result<bool, StateError> {
        let mut c = self.conn()?;
        let (k, index, changed) = (
            self.channel_key(id),
            self.channel_index(),
            self.channel_changed(),
        );
        let script = &self.swap_channel;
        let written: i64 = self
            .run("swap_channel", async move {
                script
                    .key(&k)
                    .key(&index)
                    .key(&changed)
                    .arg(version)
                    .arg(record)
                    .arg(id)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(written == 1)
    }

    async fn delete_channel(&self, id: &str, version: u64) -> Result<bool, StateError> {
        let mut c = self.conn()?;
        let (k, index, changed) = (
            self.channel_key(id),
            self.channel_index(),
            self.channel_changed(),
        );
        let script = &self.delete_channel;
        let deleted: i64 = self
            .run("delete_channel", async move {
                script
                    .key(&k)
                    .key(&index)
                    .key(&changed)
                    .arg(version)
                    .arg(id)
                    .arg(CHANNEL_TOMBSTONE.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(deleted == 1)
    }

    async fn channel_ids(&self) -> Result<Vec<String>, StateError> {
        let mut c = self.conn()?;
        let index = self.channel_index();
        self.run("channel_ids", async move {
            redis::cmd("SMEMBERS").arg(&index).query_async(&mut c).await
        })
        .await
    }

    async fn channel_changes(&self) -> Result<Option<crate::state::ChannelChanges>, StateError> {
        let mut c = self.conn()?;
        let (changed, taken) = (self.channel_changed(), self.channel_changes_taken());
        let script = &self.take_changed_channels;
        self.run("channel_changes", async move {
            script.key(&changed).key(&taken).invoke_async(&mut c).await
        })
        .await
        .map(Some)
    }

    async fn lease(&self, name: &str, owner: &str, lease: Duration) -> Result<bool, StateError> {
        let mut c = self.conn()?;
        let k = self.key("lease", name);
        let script = &self.lease;
        let got: i64 = self
            .run("lease", async move {
                script
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

#[cfg(test)]
mod tests {
    use super::{version_prefix, versioned};

    #[test]
    fn a_stored_channel_record_splits_into_its_version_and_bytes() {
        assert_eq!(
            versioned(b"7:{\"a\":1}").expect("split"),
            (7, b"{\"a\":1}".to_vec())
        );
        assert_eq!(versioned(b"3:").expect("tombstone"), (3, Vec::new()));
        // The claimer reads only the first bytes: the largest version fits in them.
        let head = format!("{}:{{", u64::MAX);
        assert_eq!(
            version_prefix(&head.as_bytes()[..21]).expect("prefix"),
            (u64::MAX, 21)
        );
        assert!(version_prefix(b"12").is_err());
        assert!(version_prefix(b"x:{}").is_err());
        assert!(version_prefix(b"123456789012345678901234:{}").is_err());
    }
}
