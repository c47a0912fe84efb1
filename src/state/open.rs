//! `on_unavailable = "open"`: a shared store backed by this replica's memory. While the
//! shared store answers, it decides; when it cannot, the replica goes on with what it knows
//! itself (its own reservations and quotas; the chain's nonce still refuses a second charge)
//! instead of refusing priced requests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Admitted, Attempter, Identified, MemoryStore, PendingSettlement, Quota, Refused, StateError,
    StateStore,
};

/// The shared store first, this replica's memory when it fails.
#[derive(Debug)]
pub struct OpenOnFailure {
    shared: Arc<dyn StateStore>,
    local: MemoryStore,
}

impl OpenOnFailure {
    pub fn new(shared: Arc<dyn StateStore>) -> Self {
        OpenOnFailure {
            shared,
            local: MemoryStore::default(),
        }
    }
}

/// Logs a failure of the shared store once per call site and answers from memory.
macro_rules! either {
    ($self:ident . $op:ident ( $($arg:expr),* )) => {
        match $self.shared.$op($($arg),*).await {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::debug!(op = stringify!($op), error = %e, "state store unavailable: answering from this replica's memory");
                $self.local.$op($($arg),*).await
            }
        }
    };
}

#[async_trait]
impl StateStore for OpenOnFailure {
    async fn reserve(&self, key: &str, expires: u64) -> Result<Result<(), Refused>, StateError> {
        either!(self.reserve(key, expires))
    }
    async fn settled(&self, key: &str) -> Result<(), StateError> {
        // Memory too: a copy arriving during an outage is still refused here.
        let _ = self.local.settled(key).await;
        either!(self.settled(key))
    }
    async fn unknown(&self, key: &str) -> Result<(), StateError> {
        let _ = self.local.unknown(key).await;
        either!(self.unknown(key))
    }
    async fn admit(
        &self,
        pending: &PendingSettlement,
        expires: u64,
        digest: &[u8; 32],
        owner: &str,
        lease: Duration,
    ) -> Result<Admitted, StateError> {
        either!(self.admit(pending, expires, digest, owner, lease))
    }
    async fn release(&self, key: &str) -> Result<(), StateError> {
        let _ = self.local.release(key).await;
        either!(self.release(key))
    }
    async fn release_verified(&self, key: &str, digest: [u8; 32]) -> Result<(), StateError> {
        let _ = self.local.release_verified(key, digest).await;
        either!(self.release_verified(key, digest))
    }
    async fn verified(&self, digest: &[u8; 32]) -> Result<bool, StateError> {
        either!(self.verified(digest))
    }
    async fn remember_verified(&self, digest: [u8; 32]) -> Result<(), StateError> {
        either!(self.remember_verified(digest))
    }
    async fn use_quota(
        &self,
        id: &str,
        max: u32,
        expires: u64,
        consume: bool,
    ) -> Result<Quota, StateError> {
        either!(self.use_quota(id, max, expires, consume))
    }
    async fn quota_used(&self, id: &str) -> Result<u32, StateError> {
        either!(self.quota_used(id))
    }
    async fn revoke(&self, id: &str, until: u64) -> Result<(), StateError> {
        let _ = self.local.revoke(id, until).await;
        // A revocation that did not reach the store must be reported, not swallowed.
        self.shared.revoke(id, until).await
    }
    async fn revoked(&self, id: &str) -> Result<bool, StateError> {
        if self.local.revoked(id).await.unwrap_or(false) {
            return Ok(true);
        }
        either!(self.revoked(id))
    }
    async fn put_pending(&self, pending: &PendingSettlement) -> Result<(), StateError> {
        either!(self.put_pending(pending))
    }
    async fn resolve_pending(&self, key: &str) -> Result<(), StateError> {
        let _ = self.local.resolve_pending(key).await;
        either!(self.resolve_pending(key))
    }
    async fn pending(&self) -> Result<Vec<PendingSettlement>, StateError> {
        either!(self.pending())
    }
    async fn lease_pending(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StateError> {
        either!(self.lease_pending(key, owner, lease))
    }
    async fn first_seen(&self, key: &[u8; 32], until: u64) -> Result<bool, StateError> {
        either!(self.first_seen(key, until))
    }
    async fn count_refusal(
        &self,
        who: Attempter<'_>,
        window: Duration,
        limit: u32,
    ) -> Result<(), StateError> {
        either!(self.count_refusal(who, window, limit))
    }
    fn limited(&self, who: Attempter<'_>) -> bool {
        self.shared.limited(who)
    }
    async fn claim_identifier(
        &self,
        id: &str,
        record: &Identified,
        until: u64,
    ) -> Result<Option<Identified>, StateError> {
        either!(self.claim_identifier(id, record, until))
    }
    async fn complete_identifier(
        &self,
        id: &str,
        record: &Identified,
        until: u64,
    ) -> Result<(), StateError> {
        either!(self.complete_identifier(id, record, until))
    }
    async fn forget_identifier(&self, id: &str, record: &Identified) -> Result<(), StateError> {
        either!(self.forget_identifier(id, record))
    }
    async fn remember_paid(&self, key: &[u8; 32], until: u64) -> Result<(), StateError> {
        let _ = self.local.remember_paid(key, until).await;
        either!(self.remember_paid(key, until))
    }
    async fn paid_within(&self, key: &[u8; 32]) -> Result<bool, StateError> {
        either!(self.paid_within(key))
    }
    // Channel state never falls back to this replica's memory: two replicas each charging a
    // channel from their own copy would serve two requests for one voucher step.
    async fn channel(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        self.shared.channel(id).await
    }
    async fn swap_channel(
        &self,
        id: &str,
        version: u64,
        record: &[u8],
    ) -> Result<bool, StateError> {
        self.shared.swap_channel(id, version, record).await
    }
    async fn channels(&self, ids: &[String]) -> Result<Vec<Option<(u64, Vec<u8>)>>, StateError> {
        self.shared.channels(ids).await
    }
    async fn channel_versions(&self, ids: &[String]) -> Result<Vec<Option<u64>>, StateError> {
        self.shared.channel_versions(ids).await
    }
    async fn delete_channel(&self, id: &str, version: u64) -> Result<bool, StateError> {
        self.shared.delete_channel(id, version).await
    }
    async fn channel_ids(&self) -> Result<Vec<String>, StateError> {
        self.shared.channel_ids().await
    }
    async fn channel_changes(&self) -> Result<Option<super::ChannelChanges>, StateError> {
        self.shared.channel_changes().await
    }
    async fn lease(&self, name: &str, owner: &str, lease: Duration) -> Result<bool, StateError> {
        self.shared.lease(name, owner, lease).await
    }
    fn backend(&self) -> &'static str {
        self.shared.backend()
    }
    fn shared(&self) -> bool {
        self.shared.shared()
    }
    async fn ping(&self) -> Result<(), StateError> {
        self.shared.ping().await
    }
}
