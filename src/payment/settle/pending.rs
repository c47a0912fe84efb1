//! Settlements in flight, recorded in the state store so that the ledger stays complete when
//! a replica dies: a record is written when a payment is admitted (with its reservation, in
//! one round trip) and removed once the ledger has the outcome or the payment is released,
//! under a lease this replica renews while it works on it. Any replica takes over a record
//! whose lease ran out and resolves it from the chain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, B256};
use tokio::task::AbortHandle;

use super::record::Record;
use crate::facilitator::rpc::{ChainReader, ExpectedTransfer};
use crate::metrics::Metrics;
use crate::payment::confirm::{Lookup, Resolution, Verdict};
use crate::payment::ledger::{Ledger, LedgerConf};
use crate::payment::{Accepted, PaymentEnv, Payments};
use crate::state::{Admitted, StateError, StateStore};

/// How long a lease on a pending settlement lasts without renewal.
const LEASE: Duration = Duration::from_secs(10);
/// How often a held lease is renewed.
const RENEW: Duration = Duration::from_secs(3);
/// How often the chain is read while a settlement is watched.
const WATCH_POLL: Duration = Duration::from_secs(2);

/// Leases this replica holds, each with the task that renews it.
#[derive(Debug, Default)]
pub struct Leases(Mutex<HashMap<String, AbortHandle>>);

impl Leases {
    fn holds(&self, key: &str) -> bool {
        self.0.lock().is_ok_and(|m| m.contains_key(key))
    }

    fn insert(&self, key: String, task: AbortHandle) {
        if let Ok(mut m) = self.0.lock()
            && let Some(old) = m.insert(key, task)
        {
            old.abort();
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        if let Some(task) = self.0.lock().ok().and_then(|mut m| m.remove(key)) {
            task.abort();
        }
    }
}

/// Everything a background resolution needs, owned.
#[derive(Clone)]
pub(super) struct Resolver {
    state: Arc<dyn StateStore>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    leases: Arc<Leases>,
    ledger_conf: LedgerConf,
}

impl Resolver {
    /// The outcome is in the ledger: stop renewing the lease and drop the record.
    pub(super) async fn end(&self, key: &str) {
        self.leases.remove(key);
        if let Err(e) = self.state.resolve_pending(key).await {
            tracing::error!(error = %e, "cannot remove a resolved settlement from the state store");
        }
    }

    /// Watches the chain until it shows whose transaction used the authorization, or the
    /// authorization expired unused; marks the reservation, writes the ledger line and drops
    /// the record. `recovered`: the record was taken over from another replica, so a
    /// transaction that made exactly this transfer is this payment's settlement. `senders`:
    /// the signers of the facilitator that was asked, when its configuration says its list is
    /// complete (`signers_complete`) and it is known (never for a record taken over: its
    /// facilitator was another replica's choice).
    pub(super) async fn resolve(
        self,
        record: Record,
        reader: ChainReader,
        expected: ExpectedTransfer,
        claimed: Option<B256>,
        senders: Option<Arc<[Address]>>,
        recovered: bool,
    ) {
        let lookup = Lookup {
            reader: &reader,
            expected,
            claimed,
            senders,
        };
        let mut end = lookup.until_expiry(record.valid_before, WATCH_POLL).await;
        if recovered
            && let Resolution::Unattributed(tx) = &end
            && let Ok(hash) = tx.parse::<B256>()
        {
            let named = Lookup {
                reader: &reader,
                expected: lookup.expected,
                claimed: Some(hash),
                senders: None,
            };
            if let Verdict::Ours(tx) = named.look().await {
                end = Resolution::Ours(tx);
            }
        }
        let key = record.key.as_str();
        let mut other_sender = None;
        let (tx, marked) = match &end {
            Resolution::ExpiredUnused => (String::new(), self.state.release(key).await),
            Resolution::Ours(tx) | Resolution::Unattributed(tx) => {
                (tx.clone(), self.state.settled(key).await)
            }
            Resolution::NotOurs => (String::new(), self.state.settled(key).await),
            Resolution::SentByOther { tx, from } => {
                tracing::warn!(transaction = %tx, sender = %from, "a pending settlement was used on chain by a transaction from none of the facilitator's signers: another's payment");
                other_sender = Some(format!("sent by {from}"));
                (tx.clone(), self.state.settled(key).await)
            }
        };
        if let Err(e) = marked {
            tracing::error!(error = %e, "cannot record a resolved settlement in the state store");
        }
        self.metrics
            .settlements_resolved
            .with_label_values(&[end.label()])
            .inc();
        let reason = match (&other_sender, recovered) {
            (Some(sender), _) => Some(sender.as_str()),
            (None, true) => Some("recovered_from_another_replica"),
            (None, false) => None,
        };
        record.write(
            &self.ledger,
            &self.ledger_conf,
            end.label(),
            &tx,
            reason,
            None,
        );
        self.end(key).await;
    }
}

impl Payments {
    /// What a ledger line of this replica says of `a`.
    pub(in crate::payment) fn record(&self, a: &Accepted) -> Record {
        Record::of(a, &self.replica)
    }

    pub(super) fn resolver(&self, env: &PaymentEnv<'_>) -> Resolver {
        Resolver {
            state: self.state.clone(),
            ledger: self.ledger.clone(),
            metrics: self.metrics.clone(),
            leases: self.leases.clone(),
            ledger_conf: env.ledger.clone(),
        }
    }

    /// Admits a payment (one round trip): reserves it, records it as a settlement that may
    /// start, under this replica's lease (renewed from now until the record is resolved, so
    /// that another replica resolves it only should this one stop), and looks it up in the
    /// verify cache.
    ///
    /// A store no other process shares keeps no such record and no lease: nobody else could
    /// take the settlement over, and this process's own watch resolves what stays open.
    pub(in crate::payment) async fn admit(&self, a: &Accepted) -> Result<Admitted, StateError> {
        if !self.state.shared() {
            let reserved = self.state.reserve(a.key.as_str(), a.valid_before).await?;
            // A store that cannot be read means one more verify call, nothing worse.
            let verified =
                reserved.is_ok() && self.state.verified(&a.digest).await.unwrap_or(false);
            return Ok(Admitted { reserved, verified });
        }
        let record = self.record(a);
        let admitted = self
            .state
            .admit(
                &record.pending(None),
                a.valid_before,
                &a.digest,
                &self.instance,
                LEASE,
            )
            .await?;
        if admitted.reserved.is_ok() {
            self.renew_lease(record.key.as_str());
        }
        Ok(admitted)
    }

    /// The outcome is in the ledger: marks the reservation settled (when `settled`) and drops
    /// the record, in one round trip.
    pub(super) async fn conclude_pending(&self, a: &Accepted, settled: bool) {
        self.leases.remove(a.key.as_str());
        let concluded = if self.state.shared() {
            self.state.conclude_pending(a.key.as_str(), settled).await
        } else if settled {
            // No record was kept (see `admit`): only the reservation changes.
            self.state.settled(a.key.as_str()).await
        } else {
            Ok(())
        };
        if let Err(e) = concluded {
            tracing::error!(error = %e, payer = %a.payer, "cannot record a payment's outcome in the state store");
        }
    }

    /// Takes the lease on `key` and renews it until the record is resolved. False: another
    /// replica holds it.
    async fn hold_lease(&self, key: &str) -> bool {
        match self.state.lease_pending(key, &self.instance, LEASE).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the lease on a settlement in flight");
            }
        }
        self.renew_lease(key);
        true
    }

    /// Renews the lease on `key` until the record is resolved.
    fn renew_lease(&self, key: &str) {
        let (state, owned, owner) = (self.state.clone(), key.to_owned(), self.instance.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW).await;
                if let Err(e) = state.lease_pending(&owned, &owner, LEASE).await {
                    tracing::warn!(error = %e, "cannot renew the lease on a settlement in flight");
                }
            }
        });
        self.leases.insert(key.to_owned(), task.abort_handle());
    }

    /// Takes over settlements whose replica stopped renewing their lease (it died between
    /// settling and recording) and resolves each from the chain in the background.
    pub async fn sweep_pending(&self, env: &PaymentEnv<'_>) {
        if !self.state.shared() {
            // Only this process writes such a store, and it watches every open settlement.
            return;
        }
        let Ok(list) = self.state.pending().await else {
            return;
        };
        for p in list {
            if self.leases.holds(&p.key) || !self.hold_lease(&p.key).await {
                continue;
            }
            let resolver = self.resolver(env);
            let found = Record::from_pending(&p, &self.replica).and_then(|record| {
                let reader = self.calls.reader(env.registry, &record.network)?;
                let expected = record.expected_transfer()?;
                Some((record, reader, expected))
            });
            let Some((record, reader, expected)) = found else {
                // Nothing to look for on chain here: leave it to a replica that can.
                self.leases.remove(&p.key);
                continue;
            };
            tracing::warn!(replica = %p.replica, payer = %p.payer, "taking over a settlement in flight from a replica that stopped");
            let claimed = p.claimed_tx.as_deref().and_then(|t| t.parse().ok());
            tokio::spawn(resolver.resolve(record, reader, expected, claimed, None, true));
        }
    }
}
