//! Connections to Redis: one multiplexed connection to a single server (reconnecting on its
//! own) or to a cluster, opened the way `[state]` says, on a runtime of their own.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

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
        .spawn(move || rt.block_on(std::future::pending::<()>()))
        .map_err(|e| format!("state store thread: {e}"))?;
    Ok(handle)
}
