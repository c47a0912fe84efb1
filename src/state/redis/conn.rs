//! Connections to Redis: multiplexed connections to a single server (reconnecting on their
//! own) or to a cluster, opened the way `[state]` says: a pool on a runtime of its own, and
//! one on each request thread's runtime.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

use crate::state::RedisConf;

/// Longest pause between two connection attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One connection to a single server or to a cluster; both multiplex every caller.
#[derive(Clone)]
pub(super) enum Conn {
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

/// Opens connections the way `[state]` says.
#[derive(Clone)]
pub(super) struct Factory {
    single: Option<redis::Client>,
    cluster: Option<ClusterClient>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl Factory {
    pub(super) fn new(conf: &RedisConf) -> Result<Self, String> {
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

    pub(super) async fn open(&self) -> redis::RedisResult<Conn> {
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
pub(super) fn state_runtime() -> Result<tokio::runtime::Handle, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("state store runtime: {e}"))?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("x402-state".into())
        .spawn(move || {
            ON_STATE_THREAD.with(|f| f.set(true));
            rt.block_on(std::future::pending::<()>())
        })
        .map_err(|e| format!("state store thread: {e}"))?;
    Ok(handle)
}

thread_local! {
    /// Whether this thread is the store's own runtime thread (it uses the shared pool).
    static ON_STATE_THREAD: Cell<bool> = const { Cell::new(false) };
    /// This thread's own connection to each store (by store id); empty while connecting.
    static LOCAL: RefCell<Vec<(u64, Arc<ArcSwapOption<Conn>>)>> = const { RefCell::new(Vec::new()) };
}

/// A connection per request thread, opened on that thread's runtime: a command then goes
/// out and its answer comes back on the thread that asked, with no hop through another
/// thread (two wake-ups saved per command). Until a thread's connection is up, and on the
/// store's own thread, the shared pool serves.
pub(super) struct PerThread {
    id: u64,
    factory: Factory,
}

impl PerThread {
    pub(super) fn new(factory: Factory) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        PerThread {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            factory,
        }
    }

    /// This thread's connection, when it is up; starts opening one on first use.
    pub(super) fn get(&self) -> Option<Conn> {
        if ON_STATE_THREAD.with(Cell::get) {
            return None;
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        LOCAL.with(|slots| {
            let mut slots = slots.try_borrow_mut().ok()?;
            if let Some((_, slot)) = slots.iter().find(|(id, _)| *id == self.id) {
                return slot.load().as_ref().map(|c| Conn::clone(c));
            }
            let slot = Arc::new(ArcSwapOption::empty());
            slots.push((self.id, slot.clone()));
            let (weak, factory) = (Arc::downgrade(&slot), self.factory.clone());
            handle.spawn(async move { fill(weak, factory).await });
            None
        })
    }

    /// The connection of this thread failed at the transport: open a fresh one on next use
    /// (the runtime it was opened on may be gone).
    pub(super) fn forget(&self) {
        LOCAL.with(|slots| {
            if let Ok(mut slots) = slots.try_borrow_mut() {
                slots.retain(|(id, slot)| *id != self.id || slot.load().is_none());
            }
        });
    }
}

/// Opens a connection into `slot`, retrying with backoff while anyone still wants it.
async fn fill(slot: Weak<ArcSwapOption<Conn>>, factory: Factory) {
    let mut pause = Duration::from_millis(50);
    loop {
        if slot.strong_count() == 0 {
            return;
        }
        match factory.open().await {
            Ok(c) => {
                if let Some(slot) = slot.upgrade() {
                    slot.store(Some(Arc::new(c)));
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot open a request thread's state store connection");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The commands of one round trip, in groups that each touch one hash slot: on a single
/// server they go out as one pipeline; on a cluster each group goes to its node, all at once.
#[derive(Default)]
pub(super) struct Trip {
    /// Each command with whether its reply is wanted.
    groups: Vec<Vec<(Cmd, bool)>>,
}

impl Trip {
    /// Starts a group: the commands added until the next group share one hash slot.
    pub(super) fn group(&mut self) -> &mut Self {
        self.groups.push(Vec::new());
        self
    }

    /// A command whose reply is wanted.
    pub(super) fn ask(&mut self, cmd: Cmd) -> &mut Self {
        self.push(cmd, true)
    }

    /// A command whose reply is not wanted (an error still fails the trip).
    pub(super) fn tell(&mut self, cmd: Cmd) -> &mut Self {
        self.push(cmd, false)
    }

    fn push(&mut self, cmd: Cmd, wanted: bool) -> &mut Self {
        if self.groups.is_empty() {
            self.groups.push(Vec::new());
        }
        if let Some(g) = self.groups.last_mut() {
            g.push((cmd, wanted));
        }
        self
    }

    fn pipeline(cmds: impl Iterator<Item = (Cmd, bool)>) -> Pipeline {
        let mut pipe = redis::pipe();
        for (cmd, wanted) in cmds {
            pipe.add_command(cmd);
            if !wanted {
                pipe.ignore();
            }
        }
        pipe
    }
}

impl Conn {
    /// Runs a trip; the wanted replies, in order, as `T`.
    pub(super) async fn trip<T: FromRedisValue>(&mut self, trip: Trip) -> RedisResult<T> {
        let replies: Vec<Value> = match self {
            Conn::Single(c) => {
                Trip::pipeline(trip.groups.into_iter().flatten())
                    .query_async(c)
                    .await?
            }
            Conn::Cluster(c) => {
                let calls = trip.groups.into_iter().filter(|g| !g.is_empty()).map(|g| {
                    let mut c = c.clone();
                    let pipe = Trip::pipeline(g.into_iter());
                    async move { pipe.query_async::<Vec<Value>>(&mut c).await }
                });
                futures_util::future::try_join_all(calls)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect()
            }
        };
        Ok(redis::from_redis_value(Value::Array(replies))?)
    }
}

/// An owned command: `cmd!("SET", key, value)`.
macro_rules! cmd {
    ($name:expr $(, $arg:expr)* $(,)?) => {{
        let mut c = redis::cmd($name);
        $(c.arg($arg);)*
        c
    }};
}
pub(super) use cmd;
