//! Active health checks: one task per upstream pool that has a check configured, running for
//! as long as some configuration generation still uses that pool.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::snapshot::{Snapshot, UpstreamPool};

/// Starts health-check tasks for new pools after each reload.
pub struct HealthService {
    pub config: Arc<ArcSwap<Snapshot>>,
}

async fn check_loop(pool: Weak<UpstreamPool>, interval: Duration) {
    loop {
        let Some(p) = pool.upgrade() else { return };
        p.lb.backends().run_health_check(true).await;
        drop(p);
        tokio::time::sleep(interval).await;
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut started: HashSet<usize> = HashSet::new();
        loop {
            let snap = self.config.load_full();
            for pool in &snap.upstreams {
                let id = Arc::as_ptr(pool) as usize;
                if let Some(interval) = pool.health_interval
                    && started.insert(id)
                {
                    tokio::spawn(check_loop(Arc::downgrade(pool), interval));
                }
            }
            started.retain(|id| {
                snap.upstreams
                    .iter()
                    .any(|p| Arc::as_ptr(p) as usize == *id)
            });
            drop(snap);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}
