//! Settlement: through the facilitator that verified (another only when the call provably
//! never left), the facilitator's word confirmed on chain, unclear outcomes resolved from the
//! chain (never by settling again), receipts, failed deliveries, and one ledger writer.
//!
//! This file settles and records the outcome; `chain.rs` is the one place that reads the
//! chain (confirmations, refusals, pending outcomes), `delivery.rs` follows the origin's
//! answer after the gate, `record.rs` writes the ledger.

mod chain;
mod delivery;
mod pending;
mod record;

use std::time::Instant;

use alloy::primitives::B256;

use super::confirm::{Lookup, Verdict};
use super::{Accepted, PaymentEnv, PaymentError, Payments, Stage};
use crate::facilitator::{FacilitatorConf, FacilitatorError};
use crate::x402::types::SettleResponse;

use chain::RESOLVE_POLL;
pub use chain::RESOLVE_WINDOW;
pub use delivery::CLIENT_GONE;
pub use pending::Leases;
pub(in crate::payment) use record::Record;

impl Payments {
    /// Settles through the facilitator that verified, moving on to another only when the call
    /// provably never reached it. A reported success is confirmed on chain (where the network
    /// has an RPC and the facilitator is not trusted as is); an unclear outcome is resolved
    /// from the chain, never by settling again, and counts as settled only when this request's
    /// own transaction made the transfer. Sets `stage` and `receipt` and writes the ledger.
    pub(super) async fn settle(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        upstream_status: Option<u16>,
    ) {
        if a.released {
            // What it held went back (a copy may hold it now): never settled after that.
            tracing::error!(payer = %a.payer, rule = %a.rule_id, "a payment given back was not settled");
            return;
        }
        if a.channel.is_some() {
            self.settle_channel(env, a, upstream_status).await;
            return;
        }
        if a.metered() {
            let charged = a
                .charged
                .unwrap_or_else(|| a.offer.requirements.amount.parse().unwrap_or(0));
            if charged == 0 {
                // Nothing to move: no transaction, nothing settled on chain.
                let receipt = SettleResponse {
                    success: true.into(),
                    error_reason: None,
                    payer: Some(a.payer.clone()),
                    transaction: String::new(),
                    network: a.offer.requirements.network.clone(),
                    ..Default::default()
                };
                self.finish_settlement(env, a, Stage::Settled, receipt, None, upstream_status)
                    .await;
                return;
            }
            // `/settle` names what the response cost; `/verify` named the ceiling.
            a.facilitator_body = with_amount(&a.facilitator_body, charged);
        }
        let mut candidates = self.candidates(env, a);
        if let Some(name) = &a.facilitator {
            match env.facilitators.iter().find(|f| &f.name == name) {
                Some(verifier) => {
                    candidates.retain(|f| f.name != verifier.name);
                    candidates.insert(0, verifier);
                }
                None => candidates.sort_by_key(|f| &f.name != name),
            }
        }
        let mut outcome: Option<(&FacilitatorConf, Result<SettleResponse, FacilitatorError>)> =
            None;
        for (n, fac) in candidates.into_iter().enumerate() {
            if n > 0 {
                self.metrics
                    .facilitator_failovers
                    .with_label_values(&["settle"])
                    .inc();
            }
            let t = Instant::now();
            let r = self
                .calls
                .settle(fac, &a.facilitator_body, &a.correlation)
                .await;
            a.facilitator_time += t.elapsed();
            let retry = matches!(&r, Err(e) if e.not_sent());
            outcome = Some((fac, r));
            if !retry {
                break;
            }
        }
        let network = a.offer.requirements.network.clone();
        let Some((fac, result)) = outcome else {
            a.facilitator = Some(String::new());
            let receipt = failed_receipt(&a.payer, &network, "facilitator_unavailable");
            self.finish_settlement(
                env,
                a,
                Stage::SettleFailed,
                receipt,
                Some("facilitator_unavailable".into()),
                upstream_status,
            )
            .await;
            return;
        };
        a.facilitator = Some(fac.name.clone());
        let claim = Claim::of(result);
        a.claimed_tx = claim.transaction();
        let (stage, receipt, reason) = match claim {
            Claim::Refused(s, reason) => match self.refusal_on_chain(env, a).await {
                // The chain shows the authorization used after all, by the transaction the
                // facilitator named: a confused facilitator, but a settled payment.
                Some(Verdict::Ours(tx)) => (Stage::Settled, settled_receipt(a, &network, tx), None),
                // Used by a transaction this request did not cause: not its payment.
                Some(_) => (Stage::NotOurs, s, Some(reason)),
                None if NONCE_USED_REASONS.contains(&reason.as_str()) => {
                    (Stage::NotOurs, s, Some(reason))
                }
                None => (Stage::SettleFailed, s, Some(reason)),
            },
            Claim::Unsent => (
                Stage::SettleFailed,
                failed_receipt(&a.payer, &network, "facilitator_unavailable"),
                Some("facilitator_unavailable".into()),
            ),
            Claim::Busy => (
                Stage::SettleFailed,
                failed_receipt(&a.payer, &network, "facilitator_busy"),
                Some("facilitator_busy".into()),
            ),
            Claim::Duplicate(s) => (
                // Another call is settling this very authorization: not this request's.
                Stage::NotOurs,
                SettleResponse {
                    success: false.into(),
                    ..s
                },
                Some("duplicate_settlement".into()),
            ),
            Claim::Success(s) => self.confirm_success(env, a, fac, s).await,
            Claim::Unclear(tx) => {
                let tx_text = tx.map(|t| format!("{t:#x}")).unwrap_or_default();
                tracing::warn!(facilitator = %fac.name, transaction = %tx_text, "settlement outcome unknown");
                let permit2_reader = a
                    .metered()
                    .then(|| self.calls.reader(env.registry, &network))
                    .flatten();
                let verdict = match (permit2_reader, tx, self.lookup(env, a)) {
                    // `upto`: the named transaction must settle this permit and charge.
                    (Some(reader), Some(tx), _) => {
                        chain::permit2_settlement(&reader, a, tx, env.pending_wait).await
                    }
                    (_, _, Some((reader, expected))) => {
                        Lookup {
                            reader: &reader,
                            expected,
                            claimed: tx,
                            // A transaction sent from none of this facilitator's signers
                            // is another's: the precise `payment_already_used`.
                            senders: self.calls.senders(fac, &network),
                        }
                        .within(env.pending_wait, RESOLVE_POLL)
                        .await
                    }
                    _ => Verdict::Unknown,
                };
                self.count_resolution(&verdict);
                let unresolved = |why: &str, tx: String| SettleResponse {
                    transaction: tx,
                    ..failed_receipt(&a.payer, &network, why)
                };
                match verdict {
                    Verdict::Ours(tx) => (Stage::Settled, settled_receipt(a, &network, tx), None),
                    Verdict::NotOurs => (
                        Stage::NotOurs,
                        failed_receipt(&a.payer, &network, "payment_already_used"),
                        Some("payment_already_used".into()),
                    ),
                    // Sent from none of the signers this facilitator says are all of its
                    // own: another's settlement of the same payment. The ledger keeps the
                    // transaction and the log its sender, for reconciliation.
                    Verdict::SentByOther { tx, from } => {
                        tracing::warn!(
                            facilitator = %fac.name,
                            payer = %a.payer,
                            transaction = %tx,
                            sender = %from,
                            rule = %a.rule_id,
                            "an unclear settlement was used on chain by a transaction from none of the facilitator's signers: refused as a used payment"
                        );
                        (
                            Stage::NotOurs,
                            unresolved("payment_already_used", tx),
                            Some(format!("payment_already_used: sent by {from}")),
                        )
                    }
                    Verdict::Failed | Verdict::Mismatch => (
                        Stage::SettleFailed,
                        unresolved("settlement_failed", tx_text),
                        Some("settlement_failed".into()),
                    ),
                    // Used by a transaction nobody named: perhaps this request's, perhaps
                    // another replica's through the same facilitator. Not served; the ledger
                    // keeps the transaction for reconciliation.
                    Verdict::Unattributed(found) => (
                        Stage::Unattributed,
                        unresolved("settlement_unconfirmed", found),
                        Some("settlement_unconfirmed: unattributed".into()),
                    ),
                    Verdict::Unknown => (
                        Stage::Unknown,
                        unresolved("settlement_unconfirmed", tx_text),
                        Some("settlement_unconfirmed".into()),
                    ),
                }
            }
        };
        self.finish_settlement(env, a, stage, receipt, reason, upstream_status)
            .await;
    }

    /// Records a settlement's outcome: stage, receipt, replay state, metrics and the ledger.
    async fn finish_settlement(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        stage: Stage,
        mut receipt: SettleResponse,
        reason: Option<String>,
        upstream_status: Option<u16>,
    ) {
        a.stage = stage;
        // The receipt of a single payment says what it always said: a facilitator's
        // scheme-specific additions are not passed on.
        receipt.amount = None;
        receipt.extra = None;
        let event = match stage {
            Stage::Settled => {
                self.metrics
                    .payments
                    .with_label_values(&["settled", ""])
                    .inc();
                self.count_revenue(a);
                "settled"
            }
            Stage::SettleFailed => {
                self.metrics
                    .payments
                    .with_label_values(&[
                        "settle_failed",
                        crate::payment::reasons::label(reason.as_deref().unwrap_or("")),
                    ])
                    .inc();
                "settle_failed"
            }
            Stage::NotOurs => {
                // Used by something else: never reusable here.
                self.metrics
                    .payments
                    .with_label_values(&[
                        "used_elsewhere",
                        crate::payment::reasons::label(reason.as_deref().unwrap_or("")),
                    ])
                    .inc();
                "used_elsewhere"
            }
            Stage::Unattributed => {
                // Used on chain: never reusable, and nothing left to watch.
                self.metrics
                    .payments
                    .with_label_values(&["unattributed", ""])
                    .inc();
                tracing::error!(
                    facilitator = %a.facilitator.as_deref().unwrap_or(""),
                    payer = %a.payer,
                    transaction = %receipt.transaction,
                    rule = %a.rule_id,
                    "an unclear settlement was used on chain by a transaction no facilitator named: nothing served; reconcile from the ledger"
                );
                "settle_unattributed"
            }
            Stage::Unconfirmed => {
                self.metrics
                    .payments
                    .with_label_values(&[
                        "unconfirmed",
                        crate::payment::reasons::label(reason.as_deref().unwrap_or("")),
                    ])
                    .inc();
                "settle_unconfirmed"
            }
            Stage::Verified | Stage::Unknown => {
                self.metrics
                    .payments
                    .with_label_values(&["settle_pending", ""])
                    .inc();
                "settle_pending"
            }
        };
        // The reservation: never reusable once the chain may hold the payment; watched
        // until it resolves when the outcome is open.
        // (A final outcome is marked with the record's removal, after the ledger line.)
        let open = matches!(stage, Stage::Unconfirmed | Stage::Verified | Stage::Unknown);
        if open && let Err(e) = self.state.unknown(a.key.as_str()).await {
            tracing::error!(error = %e, payer = %a.payer, "cannot record a payment's outcome in the state store");
        }
        if receipt.payer.is_none() {
            receipt.payer = Some(a.payer.clone());
        }
        if a.version == 1 {
            receipt.network = a.offer.v1_network.clone().unwrap_or_default();
        } else if receipt.network.is_empty() {
            receipt.network = a.offer.requirements.network.clone();
        }
        self.record(a).write(
            &self.ledger,
            env.ledger,
            event,
            &receipt.transaction,
            reason.as_deref(),
            upstream_status,
        );
        a.receipt = Some(receipt);
        if stage == Stage::Settled {
            if a.metered() {
                // A metered charge paid for one response as it came (perhaps a part of it,
                // perhaps nothing): it buys no replay and no sign-in re-access. The name is
                // freed; the spent permit answers any copy.
                self.forget_identifier(a.identifier.as_ref()).await;
            } else {
                self.complete_identifier(a).await;
                self.remember_payer(a).await;
            }
        }
        // The ledger has the outcome; an open one is watched until the chain resolves it.
        if open {
            self.watch_pending(env, a).await;
        } else {
            let used = matches!(stage, Stage::Settled | Stage::NotOurs | Stage::Unattributed);
            self.conclude_pending(a, used).await;
        }
    }

    /// Counts a settled (or, for a channel, committed) payment's amount as revenue.
    pub(in crate::payment) fn count_revenue(&self, a: &Accepted) {
        let r = &a.offer.requirements;
        let amount = match &a.channel {
            Some(t) => u64::try_from(t.price).ok(),
            None => a.amount().parse::<u64>().ok(),
        };
        if let Some(v) = amount {
            self.metrics
                .revenue
                .with_label_values(&[
                    r.network.as_str(),
                    r.asset.as_str(),
                    a.rule_id.as_str(),
                    a.audience,
                ])
                .inc_by(v);
            if a.offer.asset.usd {
                self.metrics
                    .revenue_usd
                    .with_label_values(&[a.rule_id.as_str(), a.audience])
                    .inc_by(crate::x402::networks::atomic_to_usd(
                        v,
                        a.offer.asset.decimals,
                    ));
            }
        }
    }

    /// A settled payment on a rule with a sign-in window: its payer may read the resource
    /// again by signing in until the window ends.
    async fn remember_payer(&self, a: &Accepted) {
        let Some(window) = a.sign_in else {
            return;
        };
        let key = crate::x402::extensions::sign_in_paid_key(
            &a.rule_id,
            crate::x402::url::path(&a.resource),
            &a.payer,
        );
        let until = super::unix_now() + window.as_secs();
        if let Err(e) = self.state.remember_paid(&key, until).await {
            tracing::error!(error = %e, payer = %a.payer, "cannot record a payer for sign-in re-access");
        }
    }

    pub(super) fn settle_error(&self, a: &Accepted) -> PaymentError {
        match a.stage {
            Stage::Unknown | Stage::Unconfirmed | Stage::Unattributed => {
                PaymentError::SettleUnconfirmed
            }
            Stage::NotOurs => PaymentError::AlreadyUsed,
            _ => {
                let reason = a
                    .receipt
                    .as_ref()
                    .and_then(|r| r.error_reason.clone())
                    .unwrap_or_else(|| "settlement_failed".into());
                match reason.as_str() {
                    "facilitator_unavailable" => PaymentError::FacilitatorUnavailable,
                    "facilitator_busy" => PaymentError::FacilitatorBusy,
                    _ => PaymentError::SettleFailed(reason),
                }
            }
        }
    }

    /// Gives back the reservation of a payment that provably did not settle, once: a
    /// client may send the same payment again as soon as it reads the answer.
    pub(super) async fn release_unless_unknown(&self, a: &mut Accepted) {
        if matches!(a.stage, Stage::Verified | Stage::SettleFailed) && !a.released {
            a.released = true;
            self.release(&a.key, Some(a.digest)).await;
            self.forget_identifier(a.identifier.as_ref()).await;
        }
    }
}

/// Settle refusals that mean the nonce was already used on chain: someone else's payment.
const NONCE_USED_REASONS: [&str; 3] = [
    "invalid_exact_evm_nonce_already_used",
    "invalid_exact_evm_payload_authorization_nonce_used",
    "nonce_already_used",
];

/// What a facilitator's `/settle` answer claims.
enum Claim {
    /// `success: true` with a transaction.
    Success(SettleResponse),
    /// A refusal: provably not settled by this call.
    Refused(SettleResponse, String),
    /// Another call is settling this authorization right now.
    Duplicate(SettleResponse),
    /// Pending, a timeout, a broken answer: perhaps settled (by the named transaction, if any).
    Unclear(Option<B256>),
    /// The call never reached any facilitator.
    Unsent,
    /// The facilitators declined the call (rate limited): not acted on, and not an outage.
    Busy,
}

impl Claim {
    /// The transaction the facilitator named for this settlement.
    fn transaction(&self) -> Option<B256> {
        match self {
            Claim::Success(s) | Claim::Refused(s, _) | Claim::Duplicate(s) => {
                s.transaction.parse().ok()
            }
            Claim::Unclear(tx) => *tx,
            Claim::Unsent | Claim::Busy => None,
        }
    }

    fn of(result: Result<SettleResponse, FacilitatorError>) -> Claim {
        match result {
            Ok(s) if s.succeeded() => Claim::Success(s),
            Ok(s) if s.error_reason.as_deref() == Some("duplicate_settlement") => {
                Claim::Duplicate(s)
            }
            Ok(s) if s.error_reason.as_deref() == Some("settlement_pending") => {
                Claim::Unclear(s.transaction.parse().ok())
            }
            Ok(s) if s.success == serde_json::Value::Bool(false) => {
                let reason = s
                    .error_reason
                    .clone()
                    .unwrap_or_else(|| "settlement_failed".into());
                Claim::Refused(s, reason)
            }
            // A success flag that is not literally `true`, or one without a transaction.
            Ok(s) => Claim::Unclear(s.transaction.parse().ok()),
            // Rate limited: provably not acted on.
            Err(FacilitatorError::Declined { status: 429 }) => Claim::Busy,
            // Any other refusal without a verdict: perhaps acted on; the chain tells.
            Err(FacilitatorError::Declined { .. }) => Claim::Unclear(None),
            Err(e) if e.not_sent() => Claim::Unsent,
            Err(_) => Claim::Unclear(None),
        }
    }
}

/// A facilitator request body with `paymentRequirements.amount` set to `amount` (a metered
/// charge); the body as it was when it is not one.
fn with_amount(body: &[u8], amount: u128) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    if let Some(r) = v
        .get_mut("paymentRequirements")
        .and_then(serde_json::Value::as_object_mut)
    {
        r.insert(
            "amount".into(),
            serde_json::Value::String(amount.to_string()),
        );
    }
    serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
}

/// The receipt of a settlement found on chain.
fn settled_receipt(a: &Accepted, network: &str, tx: String) -> SettleResponse {
    SettleResponse {
        success: true.into(),
        error_reason: None,
        payer: Some(a.payer.clone()),
        transaction: tx,
        network: network.into(),
        ..Default::default()
    }
}

fn failed_receipt(payer: &str, network: &str, reason: &str) -> SettleResponse {
    SettleResponse {
        success: false.into(),
        error_reason: Some(reason.into()),
        payer: Some(payer.into()),
        transaction: String::new(),
        network: network.into(),
        ..Default::default()
    }
}
