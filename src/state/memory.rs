//! The in-process state store: bounded caches whose entries expire with what they describe
//! (a reservation with its authorization, a quota with its pass). Lost at restart, and each
//! process has its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::sync::Cache;

use super::{
    Attempter, CHANNEL_TOMBSTONE, Identified, PendingSettlement, Quota, Refused, StateError,
    StateStore, unix_now,
};

const IN_FLIGHT: u8 = 0;
const SETTLED: u8 = 1;
const UNKNOWN: u8 = 2;

/// How long a reservation outlives its authorization (the chain refuses it by then anyway).
const RESERVATION_GRACE: Duration = Duration::from_secs(60);
/// How long a facilitator's verification is reused.
const VERIFIED_TTL: Duration = Duration::from_secs(120);
/// Longest a runtime revocation is kept (the longest pass lifetime).
const REVOCATION_TTL: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug)]
struct Reservation {
    state: AtomicU8,
    expires: u64,
}

#[derive(Debug)]
struct Counter {
    used: AtomicU32,
    expires: u64,
}

/// Where a replay key's reservation is kept.
fn slot(key: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes()).into()
}

/// Entries that live until the unix time they carry (plus a grace period).
struct UntilExpires;

fn remaining(expires: u64, grace: Duration) -> Option<Duration> {
    Some(Duration::from_secs(expires.saturating_sub(unix_now())) + grace)
}

impl Expiry<[u8; 32], Arc<Reservation>> for UntilExpires {
    fn expire_after_create(
        &self,
        _k: &[u8; 32],
        v: &Arc<Reservation>,
        _at: Instant,
    ) -> Option<Duration> {
        remaining(v.expires, RESERVATION_GRACE)
    }
}

impl Expiry<String, Arc<Counter>> for UntilExpires {
    fn expire_after_create(&self, _k: &String, v: &Arc<Counter>, _at: Instant) -> Option<Duration> {
        remaining(v.expires, Duration::ZERO)
    }
}

impl Expiry<[u8; 32], u64> for UntilExpires {
    fn expire_after_create(&self, _k: &[u8; 32], until: &u64, _at: Instant) -> Option<Duration> {
        remaining(*until, Duration::ZERO)
    }
}

impl Expiry<String, Arc<PendingSettlement>> for UntilExpires {
    fn expire_after_create(
        &self,
        _k: &String,
        v: &Arc<PendingSettlement>,
        _at: Instant,
    ) -> Option<Duration> {
        remaining(v.valid_before, RESERVATION_GRACE)
    }
}

impl Expiry<String, Arc<(Identified, u64)>> for UntilExpires {
    fn expire_after_create(
        &self,
        _k: &String,
        v: &Arc<(Identified, u64)>,
        _at: Instant,
    ) -> Option<Duration> {
        remaining(v.1, Duration::ZERO)
    }
    fn expire_after_update(
        &self,
        _k: &String,
        v: &Arc<(Identified, u64)>,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        remaining(v.1, Duration::ZERO)
    }
}

/// Everything in this process's memory.
pub struct MemoryStore {
    /// Keyed by the SHA-256 of the replay key: 32 bytes per payment instead of the key's
    /// text (network, asset, payer and nonce), which lives until the authorization expires.
    reservations: Cache<[u8; 32], Arc<Reservation>>,
    verified: Cache<[u8; 32], ()>,
    quotas: Cache<String, Arc<Counter>>,
    revoked: Cache<String, ()>,
    pending: Cache<String, Arc<PendingSettlement>>,
    /// Signatures seen, until they expire.
    seen: Cache<[u8; 32], u64>,
    /// Leases on pending settlements: owner and end.
    leases: Mutex<HashMap<String, (String, Instant)>>,
    /// Payment identifiers and what they name, until their window ends.
    identifiers: Cache<String, Arc<(Identified, u64)>>,
    /// Serializes the compare-then-write steps on identifiers.
    identifier_lock: Mutex<()>,
    /// Who paid for what (sign-in re-access), until their window ends.
    paid: Cache<[u8; 32], u64>,
    /// Payment channels' records and their versions (kept until dropped: a channel's latest
    /// voucher is money until it is claimed), and the dropped ones' tombstones.
    channels: Mutex<Channels>,
}

/// A channel record and its version.
type Versioned = (u64, Arc<[u8]>);

/// The channel table, oldest first, when each tombstone was left (channel, version), and the
/// channels written since the claimer last asked.
#[derive(Default)]
struct Channels {
    records: HashMap<String, Versioned>,
    tombstones: std::collections::VecDeque<(Instant, String, u64)>,
    changed: std::collections::HashSet<String>,
    /// How many times the changes were taken.
    taken: u64,
}

impl Channels {
    /// Marks channel `id` written, for the claimer's next pass.
    fn changed(&mut self, id: &str) {
        // Most writes find their channel already listed: no copy of the id then.
        if !self.changed.contains(id) {
            self.changed.insert(id.to_owned());
        }
    }

    /// Forgets tombstones older than [`CHANNEL_TOMBSTONE`] at `now`, unless their channel has
    /// a record again.
    fn prune(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.tombstones.front() {
            if now.saturating_duration_since(*at) < CHANNEL_TOMBSTONE {
                break;
            }
            let Some((_, id, version)) = self.tombstones.pop_front() else {
                break;
            };
            if self
                .records
                .get(&id)
                .is_some_and(|(v, r)| *v == version && r.is_empty())
            {
                self.records.remove(&id);
            }
        }
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("reservations", &self.reservations.entry_count())
            .field("quotas", &self.quotas.entry_count())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_capacity(1_000_000)
    }
}

impl MemoryStore {
    /// The channel records, locked.
    fn channel_table(&self) -> Result<std::sync::MutexGuard<'_, Channels>, StateError> {
        self.channels
            .lock()
            .map_err(|_| StateError::Unavailable("channel table poisoned".into()))
    }

    /// A store holding at most `capacity` entries of each kind (the verify cache a tenth).
    pub fn with_capacity(capacity: u64) -> Self {
        MemoryStore {
            reservations: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpires)
                .build(),
            verified: Cache::builder()
                .max_capacity(capacity / 10)
                .time_to_live(VERIFIED_TTL)
                .build(),
            quotas: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpires)
                .build(),
            revoked: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(REVOCATION_TTL)
                .build(),
            pending: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpires)
                .build(),
            seen: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpires)
                .build(),
            leases: Mutex::new(HashMap::new()),
            identifiers: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpires)
                .build(),
            identifier_lock: Mutex::new(()),
            paid: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExpires)
                .build(),
            channels: Mutex::new(Channels::default()),
        }
    }

    fn mark(&self, key: &str, state: u8) {
        if let Some(e) = self.reservations.get(&slot(key)) {
            e.state.store(state, Ordering::Release);
        }
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn reserve(&self, key: &str, expires: u64) -> Result<Result<(), Refused>, StateError> {
        let entry = self.reservations.entry(slot(key)).or_insert_with(|| {
            Arc::new(Reservation {
                state: AtomicU8::new(IN_FLIGHT),
                expires,
            })
        });
        if entry.is_fresh() {
            return Ok(Ok(()));
        }
        Ok(match entry.value().state.load(Ordering::Acquire) {
            IN_FLIGHT => Err(Refused::InFlight),
            _ => Err(Refused::AlreadyUsed),
        })
    }

    async fn settled(&self, key: &str) -> Result<(), StateError> {
        self.mark(key, SETTLED);
        Ok(())
    }

    async fn unknown(&self, key: &str) -> Result<(), StateError> {
        self.mark(key, UNKNOWN);
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StateError> {
        self.reservations.invalidate(&slot(key));
        self.resolve_pending(key).await
    }

    async fn verified(&self, digest: &[u8; 32]) -> Result<bool, StateError> {
        Ok(self.verified.contains_key(digest))
    }

    async fn remember_verified(&self, digest: [u8; 32]) -> Result<(), StateError> {
        self.verified.insert(digest, ());
        Ok(())
    }

    async fn use_quota(
        &self,
        id: &str,
        max: u32,
        expires: u64,
        consume: bool,
    ) -> Result<Quota, StateError> {
        let q = self.quotas.get_with_by_ref(id, || {
            Arc::new(Counter {
                used: AtomicU32::new(0),
                expires,
            })
        });
        let used = if consume {
            match q
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    (u < max).then_some(u + 1)
                }) {
                Ok(u) => u,
                Err(_) => return Ok(Quota::Exhausted),
            }
        } else {
            q.used.load(Ordering::Acquire)
        };
        Ok(if used >= max {
            Quota::Exhausted
        } else {
            Quota::Left(max - used - 1)
        })
    }

    async fn quota_used(&self, id: &str) -> Result<u32, StateError> {
        Ok(self
            .quotas
            .get(id)
            .map_or(0, |q| q.used.load(Ordering::Acquire)))
    }

    async fn revoke(&self, id: &str, _until: u64) -> Result<(), StateError> {
        self.revoked.insert(id.to_owned(), ());
        Ok(())
    }

    async fn revoked(&self, id: &str) -> Result<bool, StateError> {
        Ok(self.revoked.contains_key(id))
    }

    async fn put_pending(&self, pending: &PendingSettlement) -> Result<(), StateError> {
        self.pending
            .insert(pending.key.clone(), Arc::new(pending.clone()));
        Ok(())
    }

    async fn resolve_pending(&self, key: &str) -> Result<(), StateError> {
        self.pending.invalidate(key);
        if let Ok(mut leases) = self.leases.lock() {
            leases.remove(key);
        }
        Ok(())
    }

    async fn pending(&self) -> Result<Vec<PendingSettlement>, StateError> {
        Ok(self.pending.iter().map(|(_, p)| (*p).clone()).collect())
    }

    async fn lease_pending(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StateError> {
        let mut leases = self
            .leases
            .lock()
            .map_err(|_| StateError::Unavailable("lease table poisoned".into()))?;
        let now = Instant::now();
        leases.retain(|_, (_, end)| *end > now);
        match leases.get_mut(key) {
            Some((holder, end)) if holder == owner => {
                *end = now + lease;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => {
                leases.insert(key.to_owned(), (owner.to_owned(), now + lease));
                Ok(true)
            }
        }
    }

    async fn first_seen(&self, key: &[u8; 32], until: u64) -> Result<bool, StateError> {
        Ok(self.seen.entry_by_ref(key).or_insert(until).is_fresh())
    }

    async fn count_refusal(&self, _: Attempter<'_>, _: Duration, _: u32) -> Result<(), StateError> {
        Ok(())
    }

    fn limited(&self, _: Attempter<'_>) -> bool {
        false
    }

    async fn claim_identifier(
        &self,
        id: &str,
        record: &Identified,
        until: u64,
    ) -> Result<Option<Identified>, StateError> {
        let entry = self
            .identifiers
            .entry_by_ref(id)
            .or_insert_with(|| Arc::new((record.clone(), until)));
        Ok((!entry.is_fresh()).then(|| entry.into_value().0.clone()))
    }

    async fn complete_identifier(
        &self,
        id: &str,
        record: &Identified,
        until: u64,
    ) -> Result<(), StateError> {
        let _held = self
            .identifier_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.identifiers
            .insert(id.to_owned(), Arc::new((record.clone(), until)));
        Ok(())
    }

    async fn forget_identifier(&self, id: &str, record: &Identified) -> Result<(), StateError> {
        let _held = self
            .identifier_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.identifiers.get(id).is_some_and(|v| v.0 == *record) {
            self.identifiers.invalidate(id);
        }
        Ok(())
    }

    async fn remember_paid(&self, key: &[u8; 32], until: u64) -> Result<(), StateError> {
        self.paid.insert(*key, until);
        Ok(())
    }

    async fn paid_within(&self, key: &[u8; 32]) -> Result<bool, StateError> {
        Ok(self.paid.get(key).is_some_and(|until| until > unix_now()))
    }

    async fn channel(&self, id: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        let channels = self.channel_table()?;
        Ok(channels.records.get(id).map(|(v, r)| (*v, r.to_vec())))
    }

    async fn swap_channel(
        &self,
        id: &str,
        version: u64,
        record: &[u8],
    ) -> Result<bool, StateError> {
        let mut channels = self.channel_table()?;
        let current = channels.records.get(id).map_or(0, |(v, _)| *v);
        if current != version {
            return Ok(false);
        }
        channels
            .records
            .insert(id.to_owned(), (version + 1, Arc::from(record)));
        channels.changed(id);
        Ok(true)
    }

    async fn delete_channel(&self, id: &str, version: u64) -> Result<bool, StateError> {
        let mut channels = self.channel_table()?;
        let now = Instant::now();
        channels.prune(now);
        if channels
            .records
            .get(id)
            .is_none_or(|(v, r)| *v != version || r.is_empty())
        {
            return Ok(false);
        }
        channels
            .records
            .insert(id.to_owned(), (version + 1, Arc::from(&[][..])));
        channels
            .tombstones
            .push_back((now, id.to_owned(), version + 1));
        channels.changed(id);
        Ok(true)
    }

    async fn channel_versions(&self, ids: &[String]) -> Result<Vec<Option<u64>>, StateError> {
        let channels = self.channel_table()?;
        Ok(ids
            .iter()
            .map(|id| channels.records.get(id).map(|(v, _)| *v))
            .collect())
    }

    async fn channel_ids(&self) -> Result<Vec<String>, StateError> {
        let mut channels = self.channel_table()?;
        channels.prune(Instant::now());
        // Tombstones (empty records) are no channels.
        Ok(channels
            .records
            .iter()
            .filter(|(_, (_, r))| !r.is_empty())
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn channel_changes(&self) -> Result<Option<super::ChannelChanges>, StateError> {
        let mut channels = self.channel_table()?;
        channels.taken += 1;
        Ok(Some((channels.taken, channels.changed.drain().collect())))
    }

    async fn lease(&self, name: &str, owner: &str, lease: Duration) -> Result<bool, StateError> {
        // Named leases share the table of pending settlements' leases under their own prefix.
        self.lease_pending(&format!("lease\u{0}{name}"), owner, lease)
            .await
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn channel_records_swap_on_their_version_and_read_together_in_order() {
        block_on(async {
            let store = MemoryStore::default();
            assert!(store.swap_channel("a", 0, b"a1").await.expect("swap"));
            assert!(!store.swap_channel("a", 0, b"lost").await.expect("swap"));
            assert!(store.swap_channel("a", 1, b"a2").await.expect("swap"));
            assert!(store.swap_channel("b", 0, b"b1").await.expect("swap"));
            let ids = ["b", "none", "a"].map(String::from);
            assert_eq!(
                store.channels(&ids).await.expect("read"),
                vec![Some((1, b"b1".to_vec())), None, Some((2, b"a2".to_vec()))]
            );
            assert_eq!(
                store.channel_versions(&ids).await.expect("versions"),
                vec![Some(1), None, Some(2)]
            );
            let mut all = store.channel_ids().await.expect("ids");
            all.sort();
            assert_eq!(all, ["a", "b"]);
            // Dropped only at its version; a tombstone keeps the version going, so a swap
            // expecting an old version never succeeds on the record rebuilt later.
            assert!(!store.delete_channel("a", 1).await.expect("delete"));
            assert!(store.delete_channel("a", 2).await.expect("delete"));
            assert!(!store.delete_channel("a", 3).await.expect("delete"));
            assert_eq!(
                store.channel("a").await.expect("read"),
                Some((3, Vec::new()))
            );
            assert_eq!(store.channel_ids().await.expect("ids"), ["b"]);
            assert!(!store.swap_channel("a", 0, b"stale").await.expect("swap"));
            assert!(!store.swap_channel("a", 2, b"stale").await.expect("swap"));
            assert!(store.swap_channel("a", 3, b"a-again").await.expect("swap"));
            assert_eq!(
                store.channel("a").await.expect("read"),
                Some((4, b"a-again".to_vec()))
            );
            // Tombstones go after their time, unless the channel has a record again.
            assert!(store.delete_channel("b", 1).await.expect("delete"));
            let later = Instant::now() + CHANNEL_TOMBSTONE;
            {
                let mut table = store.channel_table().expect("table");
                assert_eq!(table.tombstones.len(), 2);
                table.prune(Instant::now());
                assert_eq!(table.tombstones.len(), 2, "not yet");
                table.prune(later + Duration::from_secs(1));
                assert!(table.tombstones.is_empty());
                assert_eq!(table.records.len(), 1, "{:?}", table.records.keys());
            }
            assert_eq!(store.channel("b").await.expect("read"), None);
            assert_eq!(
                store.channel("a").await.expect("read"),
                Some((4, b"a-again".to_vec()))
            );
        });
    }

    #[test]
    fn one_reservation_wins_and_outcomes_stick() {
        let store = Arc::new(MemoryStore::with_capacity(100));
        let expires = unix_now() + 300;
        let wins: usize = (0..8)
            .map(|_| {
                let s = store.clone();
                std::thread::spawn(move || {
                    block_on(s.reserve("k", expires)).is_ok_and(|r| r.is_ok()) as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum();
        assert_eq!(wins, 1);
        block_on(async {
            assert_eq!(
                store.reserve("k", expires).await,
                Ok(Err(Refused::InFlight))
            );
            store.settled("k").await.expect("settled");
            assert_eq!(
                store.reserve("k", expires).await,
                Ok(Err(Refused::AlreadyUsed))
            );
            assert_eq!(store.reserve("k2", expires).await, Ok(Ok(())));
            store.unknown("k2").await.expect("unknown");
            assert_eq!(
                store.reserve("k2", expires).await,
                Ok(Err(Refused::AlreadyUsed))
            );
            store.release("k2").await.expect("release");
            assert_eq!(store.reserve("k2", expires).await, Ok(Ok(())));
        });
    }

    #[test]
    fn quotas_never_exceed_their_maximum() {
        let store = Arc::new(MemoryStore::with_capacity(100));
        let expires = unix_now() + 600;
        let admitted: usize = (0..16)
            .map(|_| {
                let s = store.clone();
                std::thread::spawn(move || {
                    block_on(s.use_quota("p", 5, expires, true))
                        .is_ok_and(|q| q != Quota::Exhausted) as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum();
        assert_eq!(admitted, 5);
        block_on(async {
            assert_eq!(store.quota_used("p").await, Ok(5));
            assert_eq!(
                store.use_quota("p", 5, expires, false).await,
                Ok(Quota::Exhausted)
            );
            assert_eq!(
                store.use_quota("q", 2, expires, false).await,
                Ok(Quota::Left(1))
            );
            assert_eq!(
                store.use_quota("q", 2, expires, true).await,
                Ok(Quota::Left(1))
            );
            assert_eq!(
                store.use_quota("q", 2, expires, true).await,
                Ok(Quota::Left(0))
            );
            assert_eq!(
                store.use_quota("q", 2, expires, true).await,
                Ok(Quota::Exhausted)
            );
        });
    }

    #[test]
    fn verify_cache_revocations_and_pending_settlements() {
        let store = MemoryStore::with_capacity(100);
        block_on(async {
            assert_eq!(store.verified(&[1; 32]).await, Ok(false));
            store.remember_verified([1; 32]).await.expect("remember");
            assert_eq!(store.verified(&[1; 32]).await, Ok(true));
            assert_eq!(store.revoked("p1").await, Ok(false));
            store.revoke("p1", unix_now() + 60).await.expect("revoke");
            assert_eq!(store.revoked("p1").await, Ok(true));
            let p = PendingSettlement {
                key: "k".into(),
                valid_before: unix_now() + 300,
                rule: "r".into(),
                resource: "http://h/x".into(),
                payer: "0x1".into(),
                amount: "10".into(),
                asset: "0x2".into(),
                network: "eip155:1".into(),
                facilitator: "f".into(),
                settlement: "after".into(),
                claimed_tx: None,
                pay_to: "0x3".into(),
                nonce: "0x4".into(),
                replica: "a".into(),
                request_id: "req-1".into(),
                audience: "agent".into(),
            };
            store.put_pending(&p).await.expect("put");
            assert_eq!(store.pending().await, Ok(vec![p]));
            // One owner at a time; the holder renews, the other waits for the lease to end.
            let lease = Duration::from_millis(200);
            assert_eq!(store.lease_pending("k", "a", lease).await, Ok(true));
            assert_eq!(store.lease_pending("k", "b", lease).await, Ok(false));
            assert_eq!(store.lease_pending("k", "a", lease).await, Ok(true));
            std::thread::sleep(Duration::from_millis(250));
            assert_eq!(store.lease_pending("k", "b", lease).await, Ok(true));
            store.resolve_pending("k").await.expect("resolve");
            assert_eq!(store.pending().await, Ok(vec![]));
            assert_eq!(store.lease_pending("k", "a", lease).await, Ok(true));
        });
    }
}
