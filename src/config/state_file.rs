//! `[state]` as written: which store keeps what outlives a request, and how to reach it.

use serde::Deserialize;
use toml::Spanned;

/// `[state]`: where what outlives a request is kept (payment reservations, the verify cache,
/// pass quotas and revocations, pending settlements).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// `"memory"` (default: this process only) or `"redis"` (shared by every replica).
    #[serde(default = "default_state_backend")]
    pub backend: Spanned<String>,
    /// `redis://`, `rediss://` (TLS) or `redis+unix://`; `${VAR}` allowed. Required for
    /// `redis`.
    pub url: Option<Spanned<String>>,
    /// More nodes of a Redis Cluster (`url` is the first); empty: a single server.
    #[serde(default)]
    pub cluster: Vec<Spanned<String>>,
    /// Prefix of every key (default `x402:`), so several gateways can share one Redis.
    #[serde(default = "default_state_prefix")]
    pub key_prefix: Spanned<String>,
    /// Longest wait for a connection (default 1000 ms).
    #[serde(default = "default_state_connect")]
    pub connect_timeout_ms: Spanned<u64>,
    /// Longest wait for one command (default 250 ms).
    #[serde(default = "default_state_command")]
    pub command_timeout_ms: Spanned<u64>,
    /// Connections to the store (default 2; each multiplexes every request's commands).
    #[serde(default = "default_state_pool")]
    pub pool_size: Spanned<usize>,
    /// Priced requests while the store is unreachable: `"closed"` (default: 503
    /// `state_unavailable`) or `"open"` (go on with this replica's memory only).
    #[serde(default)]
    pub on_unavailable: crate::state::OnUnavailable,
    /// This replica's name in the ledger and logs (default: the host name).
    pub replica_id: Option<Spanned<String>>,
}

fn default_state_backend() -> Spanned<String> {
    Spanned::new(0..0, "memory".into())
}
fn default_state_prefix() -> Spanned<String> {
    Spanned::new(0..0, "x402:".into())
}
fn default_state_connect() -> Spanned<u64> {
    Spanned::new(0..0, 1000)
}
fn default_state_command() -> Spanned<u64> {
    Spanned::new(0..0, 250)
}
fn default_state_pool() -> Spanned<usize> {
    Spanned::new(0..0, 2)
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            backend: default_state_backend(),
            url: None,
            cluster: Vec::new(),
            key_prefix: default_state_prefix(),
            connect_timeout_ms: default_state_connect(),
            command_timeout_ms: default_state_command(),
            pool_size: default_state_pool(),
            on_unavailable: crate::state::OnUnavailable::default(),
            replica_id: None,
        }
    }
}
