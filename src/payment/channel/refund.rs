//! Cooperative refunds (`batch-settlement` `refund` payloads): a payer asks for the escrow the
//! gateway did not charge. The channel's turn is held while the facilitator lands one
//! transaction that first claims every charge (the payer's zero-charge voucher) and then
//! returns the rest, signed by the receiver authorizer; the request is answered by the gateway
//! (no origin), with the refund's receipt.

use std::time::Duration;

use serde_json::{Value, json};

use super::{ChannelRecord, OnChain, PendingCharge, TURN_POLL, TURN_POLL_MAX, TURN_WAIT};
use crate::payment::{
    Accepted, Admission, PaymentEnv, PaymentError, Payments, Refunded, Rejection,
};
use crate::schemes::SchemeError;
use crate::schemes::evm_batch::{self, BatchError, BatchPayment, ClaimEntry};
use crate::x402::challenge::{Offer, Priced};
use crate::x402::types::SettleResponse;

/// How long a refund holds its channel: no voucher is served while the escrow it is checked
/// against may be shrinking. Long enough for a slow chain; a gateway that died mid-refund
/// frees the channel when it expires.
const REFUND_HOLD: Duration = Duration::from_secs(120);

/// What a refund will do once it holds the channel.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundTurn {
    /// The channel with the refund pending in it.
    pub record: Box<ChannelRecord>,
    /// What the channel was charged: claimed before the refund.
    pub charged: u128,
    /// What goes back to the payer.
    pub amount: u128,
}

/// Takes a refund's turn on a channel, or says why not: the pure decision. `onchain`: the
/// chain as the facilitator just read it; `requested`: the payload's amount (`None`: all the
/// escrow not charged, which is also the most a refund returns).
pub fn take_refund_turn(
    current: Option<&ChannelRecord>,
    p: &BatchPayment,
    requested: Option<u128>,
    offer: &Offer,
    onchain: &OnChain,
    pending_id: &str,
    now_ms: u64,
) -> Result<RefundTurn, BatchError> {
    if let Some(c) = current
        && c.pending_live(now_ms)
    {
        return Err(BatchError::ChannelBusy);
    }
    // A refund's voucher charges nothing: it names what the channel was charged. A channel
    // this store does not know was charged what the voucher says, never below the chain's
    // claims.
    let charged = current.map_or(p.max_claimable, ChannelRecord::charged);
    if p.max_claimable != charged {
        return Err(BatchError::CumulativeMismatch);
    }
    if charged < onchain.total_claimed {
        return Err(BatchError::CumulativeBelowClaimed);
    }
    let remainder = onchain.balance.saturating_sub(charged);
    if remainder == 0 {
        return Err(BatchError::RefundNoBalance);
    }
    let amount = requested.map_or(remainder, |r| r.min(remainder));
    let mut next = match current {
        Some(c) => c.clone(),
        None => {
            let mut r = ChannelRecord::new(p, &offer.requirements);
            r.charged = charged.to_string();
            r.ledgered = Some(onchain.total_claimed.to_string());
            r
        }
    };
    next.set_onchain(onchain, now_ms);
    next.pending = Some(PendingCharge {
        id: pending_id.to_owned(),
        signed_max: charged.to_string(),
        signature: p.signature.clone(),
        expires_at: now_ms + REFUND_HOLD.as_millis() as u64,
    });
    Ok(RefundTurn {
        record: Box::new(next),
        charged,
        amount,
    })
}

/// The channel's state after a refund: what the facilitator reported, else what the refund
/// did to the state it started from (the charges claimed, `amount` returned, the nonce spent).
pub fn after_refund(
    before: &OnChain,
    charged: u128,
    amount: u128,
    reported: Option<OnChain>,
) -> OnChain {
    reported.unwrap_or_else(|| OnChain {
        balance: before.balance.saturating_sub(amount),
        total_claimed: before.total_claimed.max(charged),
        withdraw_requested_at: before.withdraw_requested_at,
        refund_nonce: before.refund_nonce.saturating_add(1),
    })
}

impl Payments {
    /// A refund payload that passed the local checks: the facilitator's `/verify` (the chain's
    /// state now), the channel's turn, then claim-and-refund through the facilitator.
    #[allow(
        clippy::too_many_arguments,
        reason = "the gate's own arguments, passed through"
    )]
    pub(super) async fn channel_refund(
        &self,
        env: &PaymentEnv<'_>,
        p: &BatchPayment,
        requested: Option<u128>,
        mut accepted: Box<Accepted>,
        payload: &Value,
        raw: &str,
        priced: &Priced,
        offer: &Offer,
    ) -> Result<Admission, Rejection> {
        let payer = accepted.payer.clone();
        let fail = |error: PaymentError| Rejection {
            error,
            version: 2,
            payer: Some(payer.clone()),
            receipt: None,
            corrective: None,
        };
        let channel_id = accepted.nonce.clone();
        let pending_id = super::pending_id();
        let mismatch = |shown: ChannelRecord| Rejection {
            corrective: super::corrective(priced, offer, &shown),
            ..fail(SchemeError::Batch(BatchError::CumulativeMismatch).into())
        };
        // A voucher that does not name what the channel was charged is answered with where
        // the channel stands before anything goes to the chain's facilitator.
        if let (_, Some(known)) = self
            .read_channel(&channel_id)
            .await
            .map_err(|e| self.reject(fail(e)))?
            && known.charged() != p.max_claimable
        {
            return Err(self.reject(mismatch(known)));
        }
        let onchain = self
            .channel_verify(env, &mut accepted, raw, priced)
            .await
            .map_err(|e| self.reject(fail(e)))?;
        let waiting_since = std::time::Instant::now();
        let mut poll = TURN_POLL;
        let mut turn = None;
        for _ in 0..super::SWAP_TRIES * 64 {
            let (version, record) = self
                .read_channel(&channel_id)
                .await
                .map_err(|e| self.reject(fail(e)))?;
            let taken = take_refund_turn(
                record.as_ref(),
                p,
                requested,
                offer,
                &onchain,
                &pending_id,
                super::now_ms(),
            );
            let t = match taken {
                Ok(t) => t,
                Err(BatchError::ChannelBusy) if waiting_since.elapsed() < TURN_WAIT => {
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(TURN_POLL_MAX);
                    continue;
                }
                Err(BatchError::CumulativeMismatch) => {
                    let shown =
                        record.unwrap_or_else(|| ChannelRecord::new(p, &offer.requirements));
                    return Err(self.reject(mismatch(shown)));
                }
                Err(e) => return Err(self.reject(fail(SchemeError::Batch(e).into()))),
            };
            match self
                .state
                .swap_channel(&channel_id, version, &t.record.encode())
                .await
            {
                Ok(true) => {
                    turn = Some(t);
                    break;
                }
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot write a payment channel");
                    self.release_turn(&channel_id, &pending_id).await;
                    return Err(self.reject(fail(PaymentError::StateUnavailable)));
                }
            }
        }
        let Some(turn) = turn else {
            return Err(self.reject(fail(SchemeError::Batch(BatchError::ChannelBusy).into())));
        };
        let enriched = match self.refund_payload(env, p, &turn, &onchain, payload) {
            Ok(v) => v,
            Err(e) => {
                self.release_turn(&channel_id, &pending_id).await;
                return Err(self.reject(fail(e)));
            }
        };
        match set_payload(&accepted.facilitator_body, enriched) {
            Some(body) => accepted.facilitator_body = body,
            None => {
                self.release_turn(&channel_id, &pending_id).await;
                return Err(self.reject(fail(PaymentError::Payload(
                    "cannot build the refund's settlement".into(),
                ))));
            }
        }
        let network = offer.requirements.network.clone();
        let settled = match self.settle_on_chain(env, &mut accepted).await {
            Ok(s) => s,
            Err(reason) => {
                let unknown = reason == "settlement_unconfirmed";
                if unknown {
                    // The refund may have landed: the channel stays held until the turn
                    // expires, and its next request reads the chain again.
                    self.update_channel(&channel_id, |r| {
                        r.synced_at = 0;
                        true
                    })
                    .await
                    .ok();
                } else {
                    self.release_turn(&channel_id, &pending_id).await;
                }
                self.metrics
                    .channel_claims
                    .with_label_values(&["refund", "failed"])
                    .inc();
                let receipt = SettleResponse {
                    success: false.into(),
                    error_reason: Some(reason.clone()),
                    payer: Some(payer.clone()),
                    network,
                    ..Default::default()
                };
                let error = if unknown {
                    PaymentError::SettleUnconfirmed
                } else {
                    PaymentError::SettleFailed(reason)
                };
                return Err(self.reject(Rejection {
                    receipt: Some(receipt),
                    ..fail(error)
                }));
            }
        };
        self.metrics
            .channel_claims
            .with_label_values(&["refund", "ok"])
            .inc();
        let reported = settled.extra.as_ref().and_then(OnChain::read);
        let refunded = settled
            .amount
            .as_deref()
            .and_then(|a| a.parse::<u128>().ok())
            .unwrap_or(turn.amount);
        let after = after_refund(&onchain, turn.charged, turn.amount, reported);
        let tx = settled.transaction;
        let mut claimed = 0;
        let finished = self
            .update_channel(&channel_id, |r| {
                if r.pending.as_ref().is_none_or(|x| x.id != pending_id) {
                    return false;
                }
                r.pending = None;
                if r.signature.is_empty() {
                    r.signed_max = turn.charged.to_string();
                    r.signature = p.signature.clone();
                }
                r.set_onchain(&after, super::now_ms());
                claimed = after.total_claimed.saturating_sub(r.ledgered_claimed());
                if claimed > 0 {
                    r.ledgered = Some(after.total_claimed.to_string());
                    r.sweep_owed = true;
                }
                true
            })
            .await;
        let record = match finished {
            Ok(Some(r)) => r,
            _ => {
                // The refund landed but its record did not: the channel's next request reads
                // the chain again, and the claimer ledgers the claim it finds there.
                tracing::warn!(channel = %channel_id, transaction = %tx, "a refund landed but its channel record was not updated");
                let mut r = *turn.record;
                r.set_onchain(&after, super::now_ms());
                r
            }
        };
        if claimed > 0 {
            self.channel_line(env, &record, claimed, "channel_claimed", &tx, None);
        }
        self.channel_line(env, &record, refunded, "channel_refunded", &tx, None);
        tracing::info!(channel = %channel_id, %refunded, %claimed, transaction = %tx, "refunded a payment channel");
        let receipt = SettleResponse {
            success: true.into(),
            error_reason: None,
            payer: Some(payer),
            transaction: tx,
            network,
            amount: Some(refunded.to_string()),
            extra: Some(json!({
                "channelState": record.channel_state(Some(&record.charged)),
            })),
        };
        Ok(Admission::Refunded(Box::new(Refunded {
            channel_id,
            receipt: vec![(crate::x402::receipt_header(false), receipt.header_value())],
        })))
    }

    /// The refund payload the facilitator settles: the payer's own, plus the amount, the
    /// refund nonce, the claim of everything charged (the payer's zero-charge voucher) and,
    /// when the gateway holds the receiver authorizer's key, its signatures.
    fn refund_payload(
        &self,
        env: &PaymentEnv<'_>,
        p: &BatchPayment,
        turn: &RefundTurn,
        onchain: &OnChain,
        payload: &Value,
    ) -> Result<Value, PaymentError> {
        let mut payload = payload.clone();
        let chain = crate::x402::networks::chain_id_of(&turn.record.network)
            .ok_or(PaymentError::InvalidNetwork)?;
        let separator = evm_batch::domain_separator(chain);
        let claims: Vec<Value> = if turn.charged > onchain.total_claimed {
            vec![json!({
                "voucher": {"channel": p.config.to_json(), "maxClaimableAmount": turn.charged.to_string()},
                "signature": p.signature,
                "totalClaimed": turn.charged.to_string(),
            })]
        } else {
            Vec::new()
        };
        payload["amount"] = Value::String(turn.amount.to_string());
        payload["refundNonce"] = Value::String(onchain.refund_nonce.to_string());
        if let Some(key) = env.channels.key_for(&turn.record.receiver_authorizer) {
            use alloy::signers::SignerSync;
            let sign = |digest| {
                key.sign_hash_sync(&digest)
                    .map(|s| Value::String(format!("0x{}", hex::encode(s.as_bytes()))))
                    .map_err(|e| PaymentError::Payload(format!("cannot sign the refund: {e}")))
            };
            payload["refundAuthorizerSignature"] = sign(evm_batch::refund_digest(
                &separator,
                &p.channel_id,
                onchain.refund_nonce,
                turn.amount,
            ))?;
            if !claims.is_empty() {
                let entry = ClaimEntry {
                    channel_id: p.channel_id,
                    max_claimable: turn.charged,
                    total_claimed: turn.charged,
                };
                payload["claimAuthorizerSignature"] =
                    sign(evm_batch::claim_batch_digest(&separator, &[entry]))?;
            }
        }
        payload["claims"] = Value::Array(claims);
        Ok(payload)
    }
}

/// A facilitator request body with its payment payload replaced.
fn set_payload(body: &[u8], payload: Value) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    *v.get_mut("paymentPayload")?.get_mut("payload")? = payload;
    serde_json::to_vec(&v).ok()
}
