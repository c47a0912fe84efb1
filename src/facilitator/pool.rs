//! Facilitator pools: which facilitators to try for a payment and in what order (priority,
//! then weight), each one's health from live results and `/supported` probes, and circuit
//! breaking (ejection with doubling back-off, a trial call once it expires).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::conf::FacilitatorConf;

/// First ejection length; each further one doubles, up to the facilitator's `max_eject`.
pub const BASE_EJECT: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Health of one facilitator.
#[derive(Debug, Default)]
pub struct Health {
    failures: AtomicU32,
    /// Unix milliseconds until which it is out of rotation; 0 when in rotation.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
}

impl Health {
    /// In rotation, or its ejection has expired (a trial call is allowed).
    pub fn available(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Acquire);
        until == 0 || now_ms() >= until
    }

    /// Fully healthy: not ejected and not on trial.
    pub fn healthy(&self) -> bool {
        self.ejected_until.load(Ordering::Acquire) == 0
    }
}

/// The health of every configured facilitator, keyed by its fingerprint.
#[derive(Debug, Default)]
pub struct Pool {
    health: Mutex<HashMap<String, Arc<Health>>>,
    turn: AtomicU64,
}

impl Pool {
    pub fn health(&self, fac: &FacilitatorConf) -> Arc<Health> {
        let mut map = self.health.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(fac.fingerprint.clone()).or_default().clone()
    }

    /// Records a good answer: back in rotation.
    pub fn success(&self, fac: &FacilitatorConf) {
        let h = self.health(fac);
        h.failures.store(0, Ordering::Release);
        h.ejections.store(0, Ordering::Release);
        h.ejected_until.store(0, Ordering::Release);
    }

    /// Records a failure; enough of them in a row take it out of rotation. Returns whether
    /// this failure ejected it.
    pub fn failure(&self, fac: &FacilitatorConf) -> bool {
        let h = self.health(fac);
        let now = now_ms();
        let until = h.ejected_until.load(Ordering::Acquire);
        if until != 0 && now < until {
            // Calls that were under way when it was ejected: already out of rotation, and
            // they say nothing new (the back-off doubles on a failed trial, not on these).
            return false;
        }
        let failures = h.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < fac.failure_threshold {
            return false;
        }
        let n = h.ejections.load(Ordering::Acquire).min(16);
        let eject = BASE_EJECT.saturating_mul(1 << n).min(fac.max_eject);
        // Of several failures at once, one ejects.
        if h.ejected_until
            .compare_exchange(
                until,
                now + eject.as_millis() as u64,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        h.ejections.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Orders the candidates: available ones only, lower priority first, and within a
    /// priority a weighted rotation so that load spreads by weight.
    pub fn order<'a>(&self, candidates: Vec<&'a FacilitatorConf>) -> Vec<&'a FacilitatorConf> {
        let mut avail: Vec<&FacilitatorConf> = candidates
            .into_iter()
            .filter(|f| self.health(f).available())
            .collect();
        avail.sort_by_key(|f| f.priority);
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::with_capacity(avail.len());
        for group in avail.chunk_by(|a, b| a.priority == b.priority) {
            let total: u64 = group.iter().map(|f| u64::from(f.weight)).sum();
            let mut slot = turn % total.max(1);
            let first = group
                .iter()
                .position(|f| {
                    let w = u64::from(f.weight);
                    if slot < w {
                        true
                    } else {
                        slot -= w;
                        false
                    }
                })
                .unwrap_or(0);
            out.extend(group[first..].iter().chain(&group[..first]).copied());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facilitator::FacilitatorKind;

    fn fac(name: &str, priority: u32, weight: u32) -> FacilitatorConf {
        FacilitatorConf {
            name: name.into(),
            kind: FacilitatorKind::Http,
            url: format!("http://{name}"),
            networks: vec![],
            timeout: Duration::from_secs(1),
            headers: vec![],
            priority,
            weight,
            failure_threshold: 2,
            max_eject: Duration::from_secs(30),
            confirm: crate::facilitator::Confirm::Receipt,
            confirm_timeout: Duration::from_secs(10),
            signers_complete: false,
            fingerprint: name.into(),
        }
    }

    #[test]
    fn priority_then_weight() {
        let pool = Pool::default();
        let (a, b, c) = (fac("a", 0, 3), fac("b", 0, 1), fac("c", 1, 1));
        let mut firsts = HashMap::new();
        for _ in 0..400 {
            let order = pool.order(vec![&c, &a, &b]);
            assert_eq!(order.len(), 3);
            assert_eq!(order[2].name, "c", "lower priority always last");
            *firsts.entry(order[0].name.clone()).or_insert(0) += 1;
        }
        assert_eq!(firsts.get("a"), Some(&300));
        assert_eq!(firsts.get("b"), Some(&100));
    }

    #[test]
    fn ejection_and_recovery() {
        let pool = Pool::default();
        let (a, b) = (fac("a", 0, 1), fac("b", 1, 1));
        assert!(!pool.failure(&a));
        assert!(pool.failure(&a), "second failure in a row ejects");
        assert_eq!(
            pool.order(vec![&a, &b])
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            vec!["b"]
        );
        assert!(!pool.health(&a).healthy());
        // Failures of calls that were under way neither extend the ejection nor double it.
        let until = pool.health(&a).ejected_until.load(Ordering::Acquire);
        for _ in 0..5 {
            assert!(!pool.failure(&a));
        }
        assert_eq!(pool.health(&a).ejected_until.load(Ordering::Acquire), until);
        assert_eq!(pool.health(&a).ejections.load(Ordering::Acquire), 1);
        // A failed trial after the ejection expires ejects again, for twice as long.
        pool.health(&a).ejected_until.store(1, Ordering::Release);
        let before = now_ms();
        assert!(pool.failure(&a));
        let second = pool.health(&a).ejected_until.load(Ordering::Acquire) - before;
        let doubled = 2 * BASE_EJECT.as_millis() as u64;
        assert!((doubled..doubled + 1_000).contains(&second), "{second}");
        pool.success(&a);
        assert!(pool.health(&a).healthy());
        assert_eq!(pool.order(vec![&a, &b])[0].name, "a");
    }
}
