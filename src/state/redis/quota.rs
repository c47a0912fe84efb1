//! Pass quotas counted in blocks: a replica takes several requests of a large quota from
//! Redis at once and counts them down in memory, so most requests with a pass cost no round
//! trip. A block is at most 1/64 of what the store had left, so near the end (and for small
//! quotas) every request asks the store; a block left unused for a while goes back to it.
//! The store's count includes the blocks replicas hold, so never more than `max_requests` are
//! admitted in total; a replica that dies loses its block (the payer gets fewer, never more).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A block is at most this share of what the store had left.
const SHARE: u64 = 64;
/// ... and at most this many requests.
const MAX_BLOCK: u64 = 4096;
/// A block unused this long goes back to the store.
pub(super) const IDLE: Duration = Duration::from_secs(1);

/// What this replica holds of one pass's quota.
struct Block {
    /// Requests left in the block.
    units: u64,
    /// What the store had left after the block was taken (others take from it since).
    store_left: u64,
    last_used: Instant,
}

/// This replica's blocks, by pass id.
#[derive(Default)]
pub(super) struct Blocks(Mutex<HashMap<String, Block>>);

impl Blocks {
    /// Counts one request against this replica's block of pass `id`: what is left after it
    /// (the block and what the store had), or `None` when the block is empty.
    pub(super) fn take(&self, id: &str) -> Option<u64> {
        let mut map = self.0.lock().ok()?;
        let b = map.get_mut(id)?;
        if b.units == 0 {
            return None;
        }
        b.units -= 1;
        b.last_used = Instant::now();
        Some(b.units + b.store_left)
    }

    /// How many requests to take from the store for pass `id` now: one at first, then a share
    /// of what the store had left when last asked.
    pub(super) fn size(&self, id: &str) -> u64 {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(id).map(|b| b.store_left / SHARE))
            .unwrap_or(0)
            .clamp(1, MAX_BLOCK)
    }

    /// Keeps `units` more requests of pass `id` (the store has `store_left` after them).
    pub(super) fn keep(&self, id: &str, units: u64, store_left: u64) {
        if let Ok(mut map) = self.0.lock() {
            let b = map.entry(id.to_owned()).or_insert(Block {
                units: 0,
                store_left,
                last_used: Instant::now(),
            });
            b.units += units;
            b.store_left = store_left;
            b.last_used = Instant::now();
        }
    }

    /// Requests held for pass `id` (counted in the store, not used yet).
    pub(super) fn held(&self, id: &str) -> u64 {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(id).map(|b| b.units))
            .unwrap_or(0)
    }

    /// Removes the blocks unused for `IDLE` and returns what they held, to give back.
    pub(super) fn idle(&self) -> Vec<(String, u64)> {
        let Ok(mut map) = self.0.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut out = Vec::new();
        map.retain(|id, b| {
            if now.duration_since(b.last_used) < IDLE {
                return true;
            }
            if b.units > 0 {
                out.push((id.clone(), b.units));
            }
            false
        });
        out
    }
}

/// Of a block of `size` taken when the store's count went from `before` to `before + size`,
/// how many requests fit under `max`.
pub(super) fn granted(before: u64, size: u64, max: u64) -> u64 {
    size.min(max.saturating_sub(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_a_share_of_what_is_left_and_never_pass_the_maximum() {
        let blocks = Blocks::default();
        assert_eq!(blocks.size("p"), 1, "one at first");
        blocks.keep("p", 0, 6400);
        assert_eq!(blocks.size("p"), 100);
        blocks.keep("p", 99, 6300);
        for n in (0..99).rev() {
            assert_eq!(blocks.take("p"), Some(n + 6300));
        }
        assert_eq!(blocks.take("p"), None, "the block is used up");
        blocks.keep("p", 0, 10);
        assert_eq!(blocks.size("p"), 1, "near the end, one at a time");
        assert_eq!(granted(8, 5, 10), 2);
        assert_eq!(granted(10, 1, 10), 0);
        assert_eq!(granted(12, 1, 10), 0);
        assert_eq!(granted(0, 4096, u64::from(u32::MAX)), 4096);
        assert!(blocks.idle().is_empty(), "used just now");
    }
}
