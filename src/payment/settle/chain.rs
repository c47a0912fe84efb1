//! Reading the chain for settlements: a facilitator's success confirmed by its transaction's
//! receipt, a refusal checked against the nonce's state, and pending outcomes watched until
//! the chain shows whose transaction used the authorization or it expired unused.

use std::time::Duration;

use alloy::primitives::B256;

use crate::facilitator::rpc::{ChainReader, ExpectedTransfer};
use crate::facilitator::{Confirm, FacilitatorConf, FacilitatorKind};
use crate::payment::confirm::{Lookup, Verdict};
use crate::payment::{Accepted, PaymentEnv, Payments, Stage};
use crate::x402::types::SettleResponse;

/// How long to read the chain for a settlement whose outcome the facilitator left unknown
/// before answering the client, where the configuration says nothing (`[payment]
/// pending_settlement_wait_ms`); a background watch goes on until the authorization expires.
pub const RESOLVE_WINDOW: Duration = Duration::from_secs(3);
pub(super) const RESOLVE_POLL: Duration = Duration::from_millis(200);

/// Whether `tx` is this `upto` payment's settlement: a successful call of the canonical
/// `upto` proxy whose input settles exactly this permit (payer, nonce, token), this charge, to
/// this recipient (the proxy reverts unless Permit2 moved it). Polled until `patience` ends.
pub(super) async fn permit2_settlement(
    reader: &ChainReader,
    a: &Accepted,
    tx: B256,
    patience: Duration,
) -> Verdict {
    use crate::schemes::evm_upto::{UPTO_PROXY, settles};
    let r = &a.offer.requirements;
    let parsed = (|| {
        Some((
            r.asset.parse().ok()?,
            a.payer.parse().ok()?,
            r.pay_to.parse().ok()?,
            a.nonce.strip_prefix("permit2:")?.parse().ok()?,
            a.amount().parse().ok()?,
        ))
    })();
    let Some((token, payer, pay_to, nonce, amount)) = parsed else {
        return Verdict::Mismatch;
    };
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Ok(Some(receipt)) = reader.receipt(tx).await {
            if !receipt.status() {
                return Verdict::Failed;
            }
            if receipt.to != Some(UPTO_PROXY) {
                return Verdict::Mismatch;
            }
            return match reader.transaction_input(tx).await {
                Ok(Some(input)) if settles(&input, token, payer, pay_to, nonce, amount) => {
                    Verdict::Ours(format!("{tx:#x}"))
                }
                Ok(Some(_)) => Verdict::Mismatch,
                _ => Verdict::Unknown,
            };
        }
        if std::time::Instant::now() >= deadline {
            return Verdict::Unknown;
        }
        tokio::time::sleep(RESOLVE_POLL).await;
    }
}

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
        if a.metered() {
            let Some(reader) = self
                .calls
                .reader(env.registry, &a.offer.requirements.network)
            else {
                return (Stage::Settled, s, None);
            };
            let verdict = match claimed {
                Some(tx) => permit2_settlement(&reader, a, tx, fac.confirm_timeout).await,
                None => Verdict::Mismatch,
            };
            return self.confirmed(a, fac, s, verdict);
        }
        let Some((reader, expected)) = self.lookup(env, a) else {
            return (Stage::Settled, s, None);
        };
        let verdict = match claimed {
            Some(_) => {
                Lookup {
                    reader: &reader,
                    expected,
                    claimed,
                    senders: None,
                }
                .within(fac.confirm_timeout, RESOLVE_POLL)
                .await
            }
            // Not even a transaction hash.
            None => Verdict::Mismatch,
        };
        self.confirmed(a, fac, s, verdict)
    }

    /// What the chain's verdict on a reported success means for the payment.
    fn confirmed(
        &self,
        a: &Accepted,
        fac: &FacilitatorConf,
        s: SettleResponse,
        verdict: Verdict,
    ) -> (Stage, SettleResponse, Option<String>) {
        let why = match verdict {
            Verdict::Ours(_) => return (Stage::Settled, s, None),
            Verdict::NotOurs | Verdict::Unattributed(_) | Verdict::SentByOther { .. } => {
                "used_elsewhere"
            }
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
            senders: None,
        }
        .look()
        .await;
        Some(v)
    }

    pub(super) fn count_resolution(&self, v: &Verdict) {
        let label = match v {
            Verdict::Ours(_) => "settled",
            Verdict::NotOurs => "used_elsewhere",
            Verdict::SentByOther { .. } => "used_by_other_sender",
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
    /// reservation is released only once it provably never settled (expired unused). The
    /// record in the state store names the transaction the facilitator claimed, so a replica
    /// that takes it over looks for the same one.
    pub(super) async fn watch_pending(&self, env: &PaymentEnv<'_>, a: &Accepted) {
        let resolver = self.resolver(env);
        let record = self.record(a);
        let claimed = a.claimed_tx;
        if self.state.shared()
            && let Err(e) = self.state.put_pending(&record.pending(claimed)).await
        {
            tracing::error!(error = %e, "cannot record a pending settlement in the state store");
        }
        let found = self
            .calls
            .reader(env.registry, &a.offer.requirements.network)
            .zip(a.expected_transfer());
        let Some((reader, expected)) = found else {
            // No chain to read on this network: nobody can resolve it; the ledger says
            // `settle_pending` and the reservation stays refused until it expires.
            resolver.end(a.key.as_str()).await;
            return;
        };
        // The facilitator that was asked: a transaction from none of its signers is not ours.
        let senders = a
            .facilitator
            .as_deref()
            .and_then(|name| env.facilitators.iter().find(|f| f.name == name))
            .and_then(|fac| self.calls.senders(fac, &a.offer.requirements.network));
        tokio::spawn(resolver.resolve(record, reader, expected, claimed, senders, false));
    }
}
