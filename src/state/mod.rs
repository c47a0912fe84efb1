//! What the gateway remembers across requests, behind one trait: payment reservations, the
//! verify cache, pass quotas and revocations, and settlements whose outcome is pending. The
//! in-process [`memory::MemoryStore`] is the default; [`redis::RedisStore`] is shared by every
//! replica in front of one Redis (or Valkey, or Redis Cluster), so that they remember as one.

pub mod memory;
pub mod open;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;
pub use memory::MemoryStore;
pub use open::OpenOnFailure;
pub use redis::RedisStore;

/// What priced requests get while a shared store cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// 503 `state_unavailable`: nothing is charged, nothing is served unpaid.
    #[default]
    Closed,
    /// Go on with what this replica knows: reservations and quotas in its own memory, the
    /// chain's nonce as the last guard against a second charge.
    Open,
}

/// How to reach a Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConf {
    /// `redis://`, `rediss://` or `redis+unix://` (may hold a password: never printed).
    pub url: Secret,
    /// More Redis Cluster nodes; empty for a single server.
    pub cluster: Vec<Secret>,
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub pool_size: usize,
}

/// Which store backs the gateway's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    #[default]
    Memory,
    Redis(RedisConf),
}

/// `[state]` compiled. Read at start-up only: a change needs a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateConf {
    pub backend: Backend,
    pub on_unavailable: OnUnavailable,
    /// This replica's name in the ledger and logs.
    pub replica_id: String,
}

impl StateConf {
    /// What `/config` shows: the backend and its settings, never a password.
    pub fn public(&self) -> serde_json::Value {
        match &self.backend {
            Backend::Memory => serde_json::json!({
                "backend": "memory",
                "replica_id": self.replica_id,
            }),
            Backend::Redis(r) => serde_json::json!({
                "backend": "redis",
                "url": r.url.redacted_url(),
                "cluster": r.cluster.iter().map(Secret::redacted_url).collect::<Vec<_>>(),
                "key_prefix": r.key_prefix,
                "connect_timeout_ms": r.connect_timeout.as_millis() as u64,
                "command_timeout_ms": r.command_timeout.as_millis() as u64,
                "pool_size": r.pool_size,
                "on_unavailable": self.on_unavailable,
                "replica_id": self.replica_id,
            }),
        }
    }
}

/// The store could not be reached or did not answer in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

/// Why a payment reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Another request with this payment is being processed.
    InFlight,
    /// This payment was settled, or may have been.
    AlreadyUsed,
}

/// Whom refused payment attempts count against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempter<'a> {
    /// A client address.
    Client(std::net::IpAddr),
    /// A payer address, lower case.
    Payer(&'a str),
}

impl Attempter<'_> {
    /// The name the shared store keeps it under.
    pub fn name(&self) -> String {
        match self {
            Attempter::Client(ip) => format!("client:{ip}"),
            Attempter::Payer(p) => format!("payer:{p}"),
        }
    }
}

/// How a request counted against a pass quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Admitted; this many requests are left after this one.
    Left(u32),
    /// No requests left.
    Exhausted,
}

/// A settlement whose outcome is not known yet (the facilitator timed out, or reported a
/// transaction the chain does not show yet): enough to resolve it from the chain and write
/// the outcome, by whichever process gets to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSettlement {
    /// The payment's reservation key.
    pub key: String,
    /// Unix seconds after which the authorization can no longer settle.
    pub valid_before: u64,
    pub rule: String,
    pub resource: String,
    pub payer: String,
    pub amount: String,
    pub asset: String,
    pub network: String,
    pub facilitator: String,
    /// `before` or `after`.
    pub settlement: String,
    /// The transaction the facilitator named, if any (`0x…`).
    pub claimed_tx: Option<String>,
    /// Recipient and EIP-3009 nonce: what to look for on chain.
    #[serde(default)]
    pub pay_to: String,
    #[serde(default)]
    pub nonce: String,
    /// The replica that started the settlement.
    #[serde(default)]
    pub replica: String,
    /// The id of the request that paid.
    #[serde(default)]
    pub request_id: String,
    /// Its audience.
    #[serde(default)]
    pub audience: String,
}

/// A payment named by the `payment-identifier` extension, as every replica sees it: which
/// payment and which request it belongs to, and, once settled, its receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identified {
    /// SHA-256 (hex) of the payment: the signed payload and the offer it accepted.
    pub payment: String,
    /// SHA-256 (hex) of the request: method, canonical resource URL, rule.
    pub request: String,
    /// The receipt header's value once the payment settled; empty while it is in flight.
    #[serde(default)]
    pub receipt: String,
    /// The protocol version of that receipt.
    #[serde(default)]
    pub version: u8,
}

/// What admitting a payment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The reservation: held by this request, or why not.
    pub reserved: Result<(), Refused>,
    /// A facilitator verified this payment's request body recently.
    pub verified: bool,
}

/// How long a dropped channel's tombstone keeps its version: far longer than any request
/// that read the record before it was dropped can take.
pub const CHANNEL_TOMBSTONE: Duration = Duration::from_secs(7 * 86_400);

/// What [`StateStore::channel_changes`] took: the call's number and the channels written.
pub type ChannelChanges = (u64, Vec<String>);

/// Everything remembered across requests. Every operation is atomic on its key.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Admits a payment, in one round trip where the store can: reserves it until `expires`
    /// (as [`StateStore::reserve`]); when reserved, records it as a settlement that may start,
    /// under `owner`'s lease (as [`StateStore::begin_pending`]), so that another replica
    /// resolves it should this one stop; and looks up `digest` in the verify cache.
    async fn admit(
        &self,
        pending: &PendingSettlement,
        expires: u64,
        digest: &[u8; 32],
        owner: &str,
        lease: Duration,
    ) -> Result<Admitted, StateError> {
        let reserved = self.reserve(&pending.key, expires).await?;
        if reserved.is_ok()
            && let Err(e) = self.begin_pending(pending, owner, lease).await
        {
            tracing::warn!(error = %e, "cannot record a payment in flight in the state store");
        }
        // A store that cannot be read means one more verify call, nothing worse.
        let verified = reserved.is_ok() && self.verified(digest).await.unwrap_or(false);
        Ok(Admitted { reserved, verified })
    }

    /// Reserves a payment until `expires` (unix seconds). Of concurrent callers with the same
    /// key exactly one gets `Ok(Ok(()))`.
    async fn reserve(&self, key: &str, expires: u64) -> Result<Result<(), Refused>, StateError>;
    /// The reserved payment settled: refuse it until it expires.
    async fn settled(&self, key: &str) -> Result<(), StateError>;
    /// The reserved payment's outcome is unknown: refuse it, the chain may have it.
    async fn unknown(&self, key: &str) -> Result<(), StateError>;
    /// The reserved payment provably did not settle: it may be used again, and nothing of it
    /// is pending any more.
    async fn release(&self, key: &str) -> Result<(), StateError>;
    /// As [`StateStore::release`], and remembers that a facilitator verified the payment's
    /// request body (`digest`), so that the same payment sent again needs no second `/verify`.
    async fn release_verified(&self, key: &str, digest: [u8; 32]) -> Result<(), StateError> {
        self.release(key).await?;
        self.remember_verified(digest).await
    }

    /// Whether a facilitator verified this payload (by digest) recently.
    async fn verified(&self, digest: &[u8; 32]) -> Result<bool, StateError>;
    /// Remembers a verified payload for a short while.
    async fn remember_verified(&self, digest: [u8; 32]) -> Result<(), StateError>;

    /// Counts one request against pass `id`'s quota of `max` (kept until `expires`, unix
    /// seconds), or only looks when `consume` is false. Never more than `max` in total.
    async fn use_quota(
        &self,
        id: &str,
        max: u32,
        expires: u64,
        consume: bool,
    ) -> Result<Quota, StateError>;
    /// Requests counted against pass `id` so far.
    async fn quota_used(&self, id: &str) -> Result<u32, StateError>;
    /// Revokes pass `id` until `until` (unix seconds, when no pass signed now can be valid).
    async fn revoke(&self, id: &str, until: u64) -> Result<(), StateError>;
    /// Whether pass `id` was revoked at run time.
    async fn revoked(&self, id: &str) -> Result<bool, StateError>;

    /// Records a settlement whose outcome is pending.
    async fn put_pending(&self, pending: &PendingSettlement) -> Result<(), StateError>;
    /// The pending settlement was resolved (its outcome is in the ledger).
    async fn resolve_pending(&self, key: &str) -> Result<(), StateError>;
    /// Settlements still pending.
    async fn pending(&self) -> Result<Vec<PendingSettlement>, StateError>;
    /// Takes (or renews) the lease on pending settlement `key` for `owner` during `lease`:
    /// whoever holds it watches the chain for that settlement. False: another owner holds it.
    async fn lease_pending(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StateError>;

    /// Whether `key` (a signature's replay identity) is seen here for the first time; it is
    /// remembered until `until` (unix seconds). Of concurrent callers exactly one gets `true`.
    async fn first_seen(&self, key: &[u8; 32], until: u64) -> Result<bool, StateError>;
    /// Counts a refused payment attempt of `who` in a window of `window`; at `limit` it is
    /// limited for the rest of the window, on every replica sharing the store. The memory
    /// store leaves counting to the caller's own window.
    async fn count_refusal(
        &self,
        who: Attempter<'_>,
        window: Duration,
        limit: u32,
    ) -> Result<(), StateError>;
    /// Whether `who` reached its limit of refused attempts (no round trip: a local copy).
    fn limited(&self, who: Attempter<'_>) -> bool;

    /// Records a settlement in flight and takes its lease for `owner`, in one round trip
    /// where the store can.
    async fn begin_pending(
        &self,
        pending: &PendingSettlement,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StateError> {
        self.put_pending(pending).await?;
        self.lease_pending(&pending.key, owner, lease).await
    }
    /// The ledger has a settlement's outcome: marks its reservation settled (when `settled`)
    /// and drops its record, in one round trip where the store can.
    async fn conclude_pending(&self, key: &str, settled: bool) -> Result<(), StateError> {
        if settled {
            self.settled(key).await?;
        }
        self.resolve_pending(key).await
    }

    /// Claims payment identifier `id` for `record` (in flight) until `until` (unix seconds).
    /// `None`: claimed by this call; else what the identifier already names. Of concurrent
    /// callers exactly one claims it.
    async fn claim_identifier(
        &self,
        id: &str,
        record: &Identified,
        until: u64,
    ) -> Result<Option<Identified>, StateError>;
    /// The payment named `id` settled: `record` carries its receipt, kept until `until`.
    async fn complete_identifier(
        &self,
        id: &str,
        record: &Identified,
        until: u64,
    ) -> Result<(), StateError>;
    /// The payment named `id` did not settle: the identifier is free again, if `record`
    /// (the in-flight claim) still holds it.
    async fn forget_identifier(&self, id: &str, record: &Identified) -> Result<(), StateError>;

    /// Records that a payer paid for a resource (`key`, see `access::siwx::paid_key`), until
    /// `until` (unix seconds; a later payment moves it on).
    async fn remember_paid(&self, key: &[u8; 32], until: u64) -> Result<(), StateError>;
    /// Whether [`StateStore::remember_paid`] recorded `key` and it has not expired.
    async fn paid_within(&self, key: &[u8; 32]) -> Result<bool, StateError>;

    /// A payment channel's record (`batch-settlement`): its version and bytes, if any.
    async fn channel(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError>;
    /// Writes channel `id`'s record if its version is still `version` (0: none yet); the new
    /// version is `version + 1`. False: another request, or another replica, changed it first.
    async fn swap_channel(&self, id: &str, version: u64, record: &[u8])
    -> Result<bool, StateError>;
    /// The records of channels `ids`, in order (one round trip where the store can).
    async fn channels(&self, ids: &[String]) -> Result<Vec<Option<(u64, Vec<u8>)>>, StateError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.channel(id).await?);
        }
        Ok(out)
    }
    /// The versions of channels `ids`' records, in order (`None`: no record): the claimer reads
    /// these each pass and reads and decodes again only the records whose version moved.
    async fn channel_versions(&self, ids: &[String]) -> Result<Vec<Option<u64>>, StateError> {
        Ok(self
            .channels(ids)
            .await?
            .into_iter()
            .map(|found| found.map(|(version, _)| version))
            .collect())
    }
    /// Drops channel `id`'s record if its version is still `version`; false: it changed (or
    /// is gone). What stays, for [`CHANNEL_TOMBSTONE`], is a tombstone: the version
    /// `version + 1` with an empty record (read as no record), so that a version is never used
    /// twice for different records (a swap expecting an old version cannot succeed on a record
    /// rebuilt later); it leaves the index of channels. The channel's next record starts again
    /// from the chain.
    async fn delete_channel(&self, id: &str, version: u64) -> Result<bool, StateError>;
    /// Every channel with a record (what the claimer walks).
    async fn channel_ids(&self) -> Result<Vec<String>, StateError>;
    /// The channels whose records were written (or dropped) since the last call, by any
    /// replica, and forgets them, in one step, with the call's number: between its full walks
    /// the claimer reads just these. The number goes up by one per call; a gap says another
    /// caller (another replica, or a call repeated after its answer was lost) took changes
    /// this one never saw. `None`: this store does not keep them (the claimer walks every
    /// channel).
    async fn channel_changes(&self) -> Result<Option<ChannelChanges>, StateError> {
        Ok(None)
    }
    /// Takes (or renews) the lease `name` for `owner` during `lease`; false: another owner
    /// holds it. One replica at a time does the work a lease names (the claimer's).
    async fn lease(&self, name: &str, owner: &str, lease: Duration) -> Result<bool, StateError>;

    /// `memory`, `redis` …
    fn backend(&self) -> &'static str;
    /// Whether other processes share what this store remembers.
    fn shared(&self) -> bool {
        false
    }
    /// Whether the store answers now (a round trip for a shared store).
    async fn ping(&self) -> Result<(), StateError>;
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
