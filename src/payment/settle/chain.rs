//! Reading the chain for settlements: a facilitator's success confirmed by its transaction's
//! receipt, a refusal checked against the nonce's state, and pending outcomes watched until
//! the chain shows whose transaction used the authorization or it expired unused.

use std::time::Duration;

use alloy::primitives::B256;

use super::record::Record;
use crate::facilitator::rpc::{ChainReader, ExpectedTransfer};
use crate::facilitator::{Confirm, FacilitatorConf, FacilitatorKind};
use crate::payment::confirm::{Lookup, Resolution, Verdict};
use crate::payment::{Accepted, PaymentEnv, Payments, Stage};
use crate::x402::types::SettleResponse;

/// How long to read the chain for a settlement whose outcome the facilitator left unknown
/// before answering the client; a background watch goes on until the authorization expires.
pub const RESOLVE_WINDOW: Duration = Duration::from_secs(3);
pub(super) const RESOLVE_POLL: Duration = Duration::from_millis(200);

impl Payments {
    /// A facilitator's `success: true`: believed as given for the built-in settler (which
    /// checks its own receipts), for `confirm = "trust"` and on networks without RPC; otherwise
    /// the named transaction's receipt must show this transfer.
    pub(super) async fn confirm_success(
        &self,
        env: &PaymentEnv<'_>,
        a: &Accepted,
        fac: &FacilitatorConf,
        s: SettleResponse,
    ) -> (Stage, SettleResponse, Option<String>) {
        let trusted =
            fac.confirm == Confirm::Trust || matches!(fac.kind, FacilitatorKind::Local { .. });
        if trusted {
            return (Stage::Settled, s, None);
        }
        let claimed: Option<B256> = s.transaction.parse().ok();
        let Some((reader, expected)) = self.lookup(env, a) else {
            return (Stage::Settled, s, None);
        };
        let verdict = match claimed {
            Some(_) => {
                Lookup {
                    reader: &reader,
                    expected,
                    claimed,
                }
                .within(fac.confirm_timeout, RESOLVE_POLL)
                .await
            }
            // Not even a transaction hash.
            None => Verdict::Mismatch,
        };
        let why = match verdict {
            Verdict::Ours(_) => return (Stage::Settled, s, None),
            Verdict::NotOurs | Verdict::Unattributed(_) => "used_elsewhere",
            Verdict::Mismatch | Verdict::Failed => "receipt_mismatch",
            Verdict::Unknown => "receipt_missing",
        };
        self.metrics
            .settlements_unconfirmed
            .with_label_values(&[fac.name.as_str(), why])
            .inc();
        tracing::error!(
            facilitator = %fac.name,
            transaction = %s.transaction,
            payer = %a.payer,
            rule = %a.rule_id,
            why,
            "a facilitator reported a settlement the chain does not confirm: nothing served"
        );
        let receipt = SettleResponse {
            success: false.into(),
            error_reason: Some("settlement_unconfirmed".into()),
            ..s
        };
        (
            Stage::Unconfirmed,
            receipt,
            Some(format!("settlement_unconfirmed: {why}")),
        )
    }

    /// The chain reader and the expected transfer for a payment, when its network has RPC.
    pub(super) fn lookup(
        &self,
        env: &PaymentEnv<'_>,
        a: &Accepted,
    ) -> Option<(ChainReader, ExpectedTransfer)> {
        let reader = self
            .calls
            .reader(env.registry, &a.offer.requirements.network)?;
        Some((reader, a.expected_transfer()?))
    }

    /// For a refused settlement: `None` when the chain shows the authorization unused (or
    /// cannot be read), else whose transaction used it.
    pub(super) async fn refusal_on_chain(
        &self,
        env: &PaymentEnv<'_>,
        a: &Accepted,
    ) -> Option<Verdict> {
        let (reader, expected) = self.lookup(env, a)?;
        let e = &expected;
        if !matches!(
            reader.authorization_used(e.token, e.payer, e.nonce).await,
            Ok(true)
        ) {
            return None;
        }
        let v = Lookup {
            reader: &reader,
            expected,
            claimed: a.claimed_tx,
        }
        .look()
        .await;
        Some(v)
    }

    pub(super) fn count_resolution(&self, v: &Verdict) {
        let label = match v {
            Verdict::Ours(_) => "settled",
            Verdict::NotOurs => "used_elsewhere",
            Verdict::Unattributed(_) => "unattributed",
            Verdict::Failed | Verdict::Mismatch => "failed",
            Verdict::Unknown => "pending",
        };
        self.metrics
            .settlements_resolved
            .with_label_values(&[label])
            .inc();
    }

    /// Watches an unresolved settlement until the chain shows whose transaction used the
    /// authorization, or the authorization expires unused, and records the outcome. The
    /// reservation is released only once it provably never settled (expired unused).
    pub(super) async fn watch_pending(&self, env: &PaymentEnv<'_>, a: &Accepted) {
        let Some(reader) = self
            .calls
            .reader(env.registry, &a.offer.requirements.network)
        else {
            return;
        };
        let Some(expected) = a.expected_transfer() else {
            return;
        };
        let (state, ledger, metrics) = (
            self.state.clone(),
            self.ledger.clone(),
            self.metrics.clone(),
        );
        let ledger_conf = env.ledger.clone();
        let record = Record::of(a);
        let claimed = a.claimed_tx;
        let pending = record.pending(claimed);
        if let Err(e) = state.put_pending(&pending).await {
            tracing::error!(error = %e, "cannot record a pending settlement in the state store");
        }
        tokio::spawn(async move {
            let lookup = Lookup {
                reader: &reader,
                expected,
                claimed,
            };
            let end = lookup
                .until_expiry(record.valid_before, Duration::from_secs(2))
                .await;
            let (tx, marked) = match &end {
                Resolution::ExpiredUnused => {
                    (String::new(), state.release(record.key.as_str()).await)
                }
                Resolution::Ours(tx) | Resolution::Unattributed(tx) => {
                    (tx.clone(), state.settled(record.key.as_str()).await)
                }
                Resolution::NotOurs => (String::new(), state.settled(record.key.as_str()).await),
            };
            let resolved = state.resolve_pending(record.key.as_str()).await;
            if let Err(e) = marked.and(resolved) {
                tracing::error!(error = %e, "cannot record a resolved settlement in the state store");
            }
            metrics
                .settlements_resolved
                .with_label_values(&[end.label()])
                .inc();
            record.write(&ledger, &ledger_conf, end.label(), &tx, None, None);
        });
    }
}
