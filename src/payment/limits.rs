//! Limits on refused payment attempts, per client address and per payer.

use std::time::Duration;

/// Refused payments per key over a sliding window of [`FAILURE_WINDOW`], estimated in
/// constant memory (Pingora's count-min rate estimator), so a flood of keys costs nothing.
pub struct FailureWindow(pingora_limits::rate::Rate);

/// How long a refused payment counts against its client and payer.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);

impl Default for FailureWindow {
    fn default() -> Self {
        FailureWindow(pingora_limits::rate::Rate::new(FAILURE_WINDOW))
    }
}

impl FailureWindow {
    pub fn count<K: std::hash::Hash>(&self, key: &K) {
        self.0.observe(key, 1);
    }

    /// Whether `key` has `limit` or more failures in the current or the previous window
    /// (`limit` 0: never).
    pub fn exceeded<K: std::hash::Hash>(&self, key: &K, limit: u32) -> bool {
        if limit == 0 {
            return false;
        }
        let limit = f64::from(limit);
        let current = self.0.observe(key, 0) as f64;
        let previous = self.0.rate(key) * FAILURE_WINDOW.as_secs_f64();
        current >= limit || previous >= limit
    }
}
