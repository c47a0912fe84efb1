//! Settlement: through the facilitator that verified (another only when the call provably
//! never left), the facilitator's word confirmed on chain, unclear outcomes resolved from the
//! chain (never by settling again), receipts, failed deliveries, and one ledger writer.

use std::time::Duration;

use alloy::primitives::B256;

use std::time::Instant;

use super::confirm::{Lookup, Resolution, Verdict};
use super::ledger::{Ledger, LedgerConf, LedgerEntry, now_rfc3339};
use super::replay::ReplayKey;
use super::{
    Accepted, FailurePolicy, PaymentEnv, PaymentError, Payments, Rejection, Settlement, Stage,
};
use crate::facilitator::rpc::{ChainReader, ExpectedTransfer};
use crate::facilitator::{Confirm, FacilitatorConf, FacilitatorError, FacilitatorKind};
use crate::state::PendingSettlement;
use crate::x402::types::SettleResponse;

/// How long to read the chain for a settlement whose outcome the facilitator left unknown
/// before answering the client; a background watch goes on until the authorization expires.
pub const RESOLVE_WINDOW: Duration = Duration::from_secs(3);
const RESOLVE_POLL: Duration = Duration::from_millis(200);

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
            let r = self.calls.settle(fac, &a.facilitator_body).await;
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
                let verdict = match self.lookup(env, a) {
                    Some((reader, expected)) => {
                        Lookup {
                            reader: &reader,
                            expected,
                            claimed: tx,
                        }
                        .within(RESOLVE_WINDOW, RESOLVE_POLL)
                        .await
                    }
                    None => Verdict::Unknown,
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

    /// A facilitator's `success: true`: believed as given for the built-in settler (which
    /// checks its own receipts), for `confirm = "trust"` and on networks without RPC; otherwise
    /// the named transaction's receipt must show this transfer.
    async fn confirm_success(
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
    fn lookup(
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
    async fn refusal_on_chain(&self, env: &PaymentEnv<'_>, a: &Accepted) -> Option<Verdict> {
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

    fn count_resolution(&self, v: &Verdict) {
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
        let event = match stage {
            Stage::Settled => {
                self.metrics
                    .payments
                    .with_label_values(&["settled", ""])
                    .inc();
                let r = &a.offer.requirements;
                if let Ok(v) = r.amount.parse::<u64>() {
                    self.metrics
                        .revenue
                        .with_label_values(&[r.network.as_str(), r.asset.as_str()])
                        .inc_by(v);
                }
                "settled"
            }
            Stage::SettleFailed => {
                self.metrics
                    .payments
                    .with_label_values(&["settle_failed", reason.as_deref().unwrap_or("")])
                    .inc();
                "settle_failed"
            }
            Stage::NotOurs => {
                // Used by something else: never reusable here.
                self.metrics
                    .payments
                    .with_label_values(&["used_elsewhere", reason.as_deref().unwrap_or("")])
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
                    .with_label_values(&["unconfirmed", reason.as_deref().unwrap_or("")])
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
        let marked = match stage {
            Stage::Settled | Stage::NotOurs | Stage::Unattributed => {
                self.state.settled(a.key.as_str()).await
            }
            Stage::Unconfirmed | Stage::Verified | Stage::Unknown => {
                self.watch_pending(env, a).await;
                self.state.unknown(a.key.as_str()).await
            }
            Stage::SettleFailed => Ok(()),
        };
        if let Err(e) = marked {
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
        Record::of(a).write(
            &self.ledger,
            env.ledger,
            event,
            &receipt.transaction,
            reason.as_deref(),
            upstream_status,
        );
        a.receipt = Some(receipt);
    }

    /// Watches an unresolved settlement until the chain shows whose transaction used the
    /// authorization, or the authorization expires unused, and records the outcome. The
    /// reservation is released only once it provably never settled (expired unused).
    async fn watch_pending(&self, env: &PaymentEnv<'_>, a: &Accepted) {
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

    /// Releases the reservation of a payment that provably did not settle.
    pub(super) async fn release_unless_unknown(&self, a: &Accepted) {
        if matches!(a.stage, Stage::Verified | Stage::SettleFailed) {
            self.release(&a.key).await;
        }
    }
    /// Called with the origin's status before any body byte is sent. Settles in `after` mode
    /// when the status is below 400. Returns headers to add, or the reply that replaces the
    /// origin's response.
    pub async fn on_response(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        status: u16,
    ) -> Result<Vec<(&'static str, String)>, Rejection> {
        if a.stage == Stage::Verified {
            if status >= 400 {
                // Not served: no settlement; `finish` releases the reservation.
                self.metrics
                    .payments
                    .with_label_values(&["not_settled", "origin_error"])
                    .inc();
                return Ok(Vec::new());
            }
            self.settle(env, a, Some(status)).await;
            if a.stage != Stage::Settled {
                let error = self.settle_error(a);
                if a.stage == Stage::SettleFailed
                    && a.failure_policy == FailurePolicy::Open
                    && error == PaymentError::FacilitatorUnavailable
                {
                    self.metrics
                        .payments
                        .with_label_values(&["served_unpaid", error.reason()])
                        .inc();
                    tracing::warn!(rule = %a.rule_id, "no facilitator could settle: serving unpaid (failure policy open)");
                    return Ok(Vec::new());
                }
                return Err(Rejection {
                    error,
                    version: a.version,
                    payer: Some(a.payer.clone()),
                    receipt: a.receipt.clone(),
                });
            }
        } else if a.stage == Stage::Settled && status >= 400 {
            self.record_failed_delivery(env, a, Some(status), ORIGIN_FAILED);
        }
        self.metrics.payment_overhead.observe(
            a.started
                .elapsed()
                .saturating_sub(a.facilitator_time)
                .as_secs_f64(),
        );
        Ok(self.receipt_headers(a))
    }

    /// Receipt headers for a settled payment.
    pub fn receipt_headers(&self, a: &Accepted) -> Vec<(&'static str, String)> {
        match &a.receipt {
            Some(r) if a.stage == Stage::Settled => {
                vec![(
                    crate::x402::receipt_header(a.version == 1),
                    r.header_value(),
                )]
            }
            _ => Vec::new(),
        }
    }

    fn record_failed_delivery(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        status: Option<u16>,
        reason: &str,
    ) {
        if a.delivery_recorded {
            return;
        }
        a.delivery_recorded = true;
        self.metrics.failed_deliveries.inc();
        let tx = a
            .receipt
            .as_ref()
            .map(|r| r.transaction.clone())
            .unwrap_or_default();
        Record::of(a).write(
            &self.ledger,
            env.ledger,
            "delivery_failed",
            &tx,
            Some(reason),
            status,
        );
        tracing::warn!(rule = %a.rule_id, payer = %a.payer, transaction = %tx, reason, "paid request not delivered");
    }

    /// Called when proxying failed after the gate accepted the payment. Returns receipt
    /// headers for the error reply when the payment was already settled.
    pub fn on_failure(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        settlement_reply: bool,
    ) -> Vec<(&'static str, String)> {
        if a.stage == Stage::Settled && !settlement_reply {
            self.record_failed_delivery(env, a, None, ORIGIN_FAILED);
            return self.receipt_headers(a);
        }
        Vec::new()
    }

    /// End of the request: a payment that did not settle releases its reservation so the
    /// client may use it again; a settled one whose response broke off (`interrupted`: why,
    /// e.g. the client went away mid-body) leaves a `delivery_failed` line, once.
    pub async fn finish(&self, env: &PaymentEnv<'_>, a: &mut Accepted, interrupted: Option<&str>) {
        if let Some(why) = interrupted
            && a.stage == Stage::Settled
        {
            self.record_failed_delivery(env, a, None, why);
        }
        self.release_unless_unknown(a).await;
    }
}

/// What a ledger line says of a payment, owned so that a background watch can write it later.
#[derive(Debug, Clone)]
struct Record {
    key: ReplayKey,
    valid_before: u64,
    rule: String,
    resource: String,
    payer: String,
    amount: String,
    asset: String,
    network: String,
    facilitator: String,
    settlement: Settlement,
}

impl Record {
    fn of(a: &Accepted) -> Self {
        let r = &a.offer.requirements;
        Record {
            key: a.key.clone(),
            valid_before: a.valid_before,
            rule: a.rule_id.clone(),
            resource: a.resource.clone(),
            payer: a.payer.clone(),
            amount: r.amount.clone(),
            asset: r.asset.clone(),
            network: r.network.clone(),
            facilitator: a.facilitator.clone().unwrap_or_default(),
            settlement: a.settlement,
        }
    }

    /// What the state store keeps of a settlement whose outcome is pending.
    fn pending(&self, claimed: Option<B256>) -> PendingSettlement {
        PendingSettlement {
            key: self.key.as_str().to_owned(),
            valid_before: self.valid_before,
            rule: self.rule.clone(),
            resource: self.resource.clone(),
            payer: self.payer.clone(),
            amount: self.amount.clone(),
            asset: self.asset.clone(),
            network: self.network.clone(),
            facilitator: self.facilitator.clone(),
            settlement: self.settlement_name().to_owned(),
            claimed_tx: claimed.map(|t| format!("{t:#x}")),
        }
    }

    fn settlement_name(&self) -> &'static str {
        match self.settlement {
            Settlement::Before => "before",
            Settlement::After => "after",
        }
    }

    /// The one place a ledger line is written.
    fn write(
        &self,
        ledger: &Ledger,
        conf: &LedgerConf,
        event: &str,
        tx: &str,
        reason: Option<&str>,
        upstream_status: Option<u16>,
    ) {
        let entry = LedgerEntry {
            time: now_rfc3339(),
            event,
            rule: &self.rule,
            resource: &self.resource,
            payer: &self.payer,
            amount: &self.amount,
            asset: &self.asset,
            network: &self.network,
            transaction: tx,
            facilitator: &self.facilitator,
            settlement: self.settlement_name(),
            reason,
            upstream_status,
        };
        ledger.record(conf, &entry);
    }
}

/// The `delivery_failed` reason when the origin failed after the payment settled.
const ORIGIN_FAILED: &str = "origin_failed_after_settlement";
/// The `delivery_failed` reason when the client went away before the response was complete.
pub const CLIENT_GONE: &str = "client_disconnected";

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

/// The receipt of a settlement found on chain.
fn settled_receipt(a: &Accepted, network: &str, tx: String) -> SettleResponse {
    SettleResponse {
        success: true.into(),
        error_reason: None,
        payer: Some(a.payer.clone()),
        transaction: tx,
        network: network.into(),
    }
}

fn failed_receipt(payer: &str, network: &str, reason: &str) -> SettleResponse {
    SettleResponse {
        success: false.into(),
        error_reason: Some(reason.into()),
        payer: Some(payer.into()),
        transaction: String::new(),
        network: network.into(),
    }
}
