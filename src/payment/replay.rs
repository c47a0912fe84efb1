//! The replay guard: an atomic reservation of (network, asset, payer, nonce) held until the
//! authorization expires, so concurrent or repeated copies of one payment cannot both pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::Expiry;
use moka::sync::Cache;

/// Identity of an authorization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplayKey(String);

impl ReplayKey {
    pub fn new(network: &str, asset: &str, payer: &str, nonce: &str) -> Self {
        ReplayKey(format!(
            "{network}|{}|{}|{}",
            asset.to_ascii_lowercase(),
            payer.to_ascii_lowercase(),
            nonce.to_ascii_lowercase()
        ))
    }
}

const IN_FLIGHT: u8 = 0;
const SETTLED: u8 = 1;
const UNKNOWN: u8 = 2;

#[derive(Debug)]
struct Entry {
    state: AtomicU8,
    valid_before: u64,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Another request with this payment is being processed.
    InFlight,
    /// This payment was settled, or may have been.
    AlreadyUsed,
}

struct UntilValidBefore;

impl Expiry<ReplayKey, Arc<Entry>> for UntilValidBefore {
    fn expire_after_create(
        &self,
        _k: &ReplayKey,
        v: &Arc<Entry>,
        _at: Instant,
    ) -> Option<Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Keep a minute past expiry: the chain refuses the authorization by then anyway.
        Some(Duration::from_secs(v.valid_before.saturating_sub(now) + 60))
    }
}

/// In-process replay state.
pub struct ReplayGuard {
    cache: Cache<ReplayKey, Arc<Entry>>,
}

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new(1_000_000)
    }
}

impl ReplayGuard {
    pub fn new(capacity: u64) -> Self {
        ReplayGuard {
            cache: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilValidBefore)
                .build(),
        }
    }

    /// Reserves a payment. Exactly one of several concurrent callers succeeds.
    pub fn reserve(&self, key: &ReplayKey, valid_before: u64) -> Result<(), Refused> {
        let entry = self.cache.entry(key.clone()).or_insert_with(|| {
            Arc::new(Entry {
                state: AtomicU8::new(IN_FLIGHT),
                valid_before,
            })
        });
        if entry.is_fresh() {
            return Ok(());
        }
        match entry.value().state.load(Ordering::Acquire) {
            IN_FLIGHT => Err(Refused::InFlight),
            _ => Err(Refused::AlreadyUsed),
        }
    }

    /// The payment settled: keep it until it expires.
    pub fn settled(&self, key: &ReplayKey) {
        if let Some(e) = self.cache.get(key) {
            e.state.store(SETTLED, Ordering::Release);
        }
    }

    /// The settlement outcome is unknown: keep it, the chain may have it.
    pub fn unknown(&self, key: &ReplayKey) {
        if let Some(e) = self.cache.get(key) {
            e.state.store(UNKNOWN, Ordering::Release);
        }
    }

    /// The payment provably did not settle: the client may use it again.
    pub fn release(&self, key: &ReplayKey) {
        self.cache.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reservation_wins() {
        let g = Arc::new(ReplayGuard::new(100));
        let k = ReplayKey::new("eip155:1", "0xA", "0xB", "0xC");
        let vb = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 300;
        let wins: usize = (0..8)
            .map(|_| {
                let (g, k) = (g.clone(), k.clone());
                std::thread::spawn(move || g.reserve(&k, vb).is_ok() as usize)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum();
        assert_eq!(wins, 1);
        assert_eq!(g.reserve(&k, vb), Err(Refused::InFlight));
        g.settled(&k);
        assert_eq!(g.reserve(&k, vb), Err(Refused::AlreadyUsed));
        let k2 = ReplayKey::new("eip155:1", "0xa", "0xb", "0xD");
        assert_eq!(g.reserve(&k2, vb), Ok(()));
        g.release(&k2);
        assert_eq!(g.reserve(&k2, vb), Ok(()));
        assert_eq!(
            ReplayKey::new("n", "0xAB", "0xCD", "0xEF"),
            ReplayKey::new("n", "0xab", "0xcd", "0xef")
        );
    }
}
