//! Cooperative refunds (`batch-settlement` `refund` payloads): a payer asks for the escrow the
//! gateway did not charge. The channel's turn is held while the facilitator lands one
//! transaction that first claims every charge (the payer's zero-charge voucher) and then
//! returns the rest, signed by the receiver authorizer; the request is answered by the gateway
//! (no origin), with the refund's receipt.

use std::time::Duration;

use serde_json::{Value, json};

use super::record::RawJson;
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
    // Held with the mirror stale: if the hold lapses before the refund is recorded (the
    // gateway stopped, the write failed), the next voucher reads the chain.
    next.synced_at = 0;
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
        who: (Option<std::net::IpAddr>, Option<&str>),
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
        // A voucher whose signature was checked here and that does not name what the channel
        // was charged is answered with where the channel stands before anything goes to the
        // facilitator. One only the facilitator can check (a smart-wallet payer's) shows
        // nothing of the channel until it did: the loop below answers its mismatch.
        if p.signature_checked
            && let (_, Some(known)) = self
                .read_channel(&channel_id)
                .await
                .map_err(|e| self.reject(fail(e)))?
            && known.charged() != p.max_claimable
        {
            return Err(self.reject(mismatch(known)));
        }
        let mut onchain = self
            .channel_verify_counted(env, &mut accepted, raw, priced, who)
            .await
            .map_err(|e| self.reject(fail(e)))?;
        let mut verifies = 1;
        let waiting_since = std::time::Instant::now();
        let mut poll = TURN_POLL;
        let mut turn = None;
        for _ in 0..super::SWAP_TRIES * 64 {
            let (version, record) = self
                .read_channel(&channel_id)
                .await
                .map_err(|e| self.reject(fail(e)))?;
            // A reading from before a refund the record knows of (one that landed while this
            // one waited): read the chain again.
            if record.as_ref().is_some_and(|r| r.predates(&onchain)) {
                verifies += 1;
                if verifies > super::MAX_VERIFIES {
                    return Err(self.reject(fail(PaymentError::FacilitatorUnavailable)));
                }
                onchain = self
                    .channel_verify_counted(env, &mut accepted, raw, priced, who)
                    .await
                    .map_err(|e| self.reject(fail(e)))?;
                continue;
            }
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
                } else if reason == "facilitator_unavailable" {
                    PaymentError::FacilitatorUnavailable
                } else {
                    PaymentError::SettleFailed(reason)
                };
                return Err(self.reject(Rejection {
                    receipt: Some(receipt),
                    ..fail(error)
                }));
            }
        };
        let reported = settled.extra.as_ref().and_then(OnChain::read);
        let refunded = settled
            .amount
            .as_deref()
            .and_then(|a| a.parse::<u128>().ok())
            .unwrap_or(turn.amount);
        let after = after_refund(&onchain, turn.charged, turn.amount, reported);
        let tx = settled.transaction;
        let voucher = (turn.charged.to_string(), p.signature.clone());
        let record = self
            .record_refund(
                env,
                &channel_id,
                &pending_id,
                voucher,
                &after,
                *turn.record,
                &tx,
                refunded,
            )
            .await;
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

    /// Records a refund that landed: the channel is free again and mirrors the chain after
    /// it; the claim it made (of the charges) and the refund are ledger lines, and the claimed
    /// funds are owed a sweep. `voucher`: the refund's voucher (cumulative amount, signature),
    /// kept when the record holds none. `fallback`: the channel as the refund found it, for
    /// the answer when the record could not be written.
    #[allow(
        clippy::too_many_arguments,
        reason = "what the refund did, named where it was learnt"
    )]
    pub(super) async fn record_refund(
        &self,
        env: &PaymentEnv<'_>,
        channel_id: &str,
        pending_id: &str,
        voucher: (String, String),
        after: &OnChain,
        fallback: ChannelRecord,
        tx: &str,
        refunded: u128,
    ) -> ChannelRecord {
        let mut claimed = 0;
        let finished = self
            .update_channel(channel_id, |r| {
                // What the ledger accounted for before this refund's claim.
                let ledgered = r.ledgered_claimed();
                if r.pending.as_ref().is_some_and(|x| x.id == pending_id) {
                    r.pending = None;
                }
                if r.signature.is_empty() {
                    (r.signed_max, r.signature) = voucher.clone();
                }
                // Always: a reading after the refund (its nonce spent) replaces any before it.
                r.set_onchain(after, super::now_ms());
                claimed = after.total_claimed.saturating_sub(ledgered);
                r.ledgered = Some(ledgered.max(after.total_claimed).to_string());
                r.sweep_owed |= claimed > 0;
                true
            })
            .await;
        let record = match finished {
            Ok(Some(r)) => r,
            outcome => {
                // The write may have gone through (its answer lost): the claim is ledgered
                // here only if the record says so; if not, the claimer finds it on chain.
                let landed = matches!(outcome, Err(()))
                    && matches!(
                        self.read_channel(channel_id).await,
                        Ok((_, Some(r))) if r.refund_nonce >= after.refund_nonce
                            && r.ledgered_claimed() >= after.total_claimed
                    );
                if !landed {
                    claimed = 0;
                }
                tracing::warn!(channel = %channel_id, transaction = %tx, "a refund landed but its channel record may not say so");
                let mut r = fallback;
                r.set_onchain(after, super::now_ms());
                r
            }
        };
        if claimed > 0 {
            self.channel_line(env, &record, claimed, "channel_claimed", tx, None);
        }
        self.channel_line(env, &record, refunded, "channel_refunded", tx, None);
        self.metrics
            .channel_claims
            .with_label_values(&["refund", "ok"])
            .inc();
        tracing::info!(channel = %channel_id, %refunded, %claimed, transaction = %tx, "refunded a payment channel");
        record
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
        let chain = crate::x402::networks::chain_id_of(&turn.record.network)
            .ok_or(PaymentError::InvalidNetwork)?;
        enrich_refund(
            payload.clone(),
            RefundTerms {
                config: &RawJson::of(&p.config.to_json()),
                channel_id: p.channel_id,
                separator: evm_batch::domain_separator(chain),
                voucher_max: turn.charged,
                voucher_signature: &p.signature,
                charged: turn.charged,
                claimed: onchain.total_claimed,
                amount: turn.amount,
                nonce: onchain.refund_nonce,
            },
            env.channels.key_for(&turn.record.receiver_authorizer),
        )
        .map_err(PaymentError::Payload)
    }
}

impl Payments {
    /// Refunds a channel idle past `[payment] channel_refund_idle_seconds` (the claimer, which
    /// read it from the chain just before): holds its turn unless a request came since, then
    /// has the facilitator claim its charges and return the rest. `Ok(None)`: a request took
    /// the channel first.
    pub(super) async fn refund_idle(
        &self,
        env: &PaymentEnv<'_>,
        r: &ChannelRecord,
    ) -> Result<Option<ChannelRecord>, String> {
        let pending_id = super::pending_id();
        let charged = r.charged();
        let now = super::now_ms();
        let held = self
            .update_channel(&r.channel_id, |c| {
                if c.last_request_at != r.last_request_at
                    || c.charged() != charged
                    || c.pending_live(now)
                {
                    return false;
                }
                c.pending = Some(PendingCharge {
                    id: pending_id.clone(),
                    signed_max: c.signed_max.clone(),
                    signature: c.signature.clone(),
                    expires_at: now + REFUND_HOLD.as_millis() as u64,
                });
                // Held with the mirror stale (see `take_refund_turn`).
                c.synced_at = 0;
                true
            })
            .await
            .map_err(|()| "state_unavailable".to_owned())?;
        let Some(held) = held.filter(|c| c.pending.as_ref().is_some_and(|p| p.id == pending_id))
        else {
            return Ok(None);
        };
        let amount = held.balance().saturating_sub(charged);
        if amount == 0 {
            self.release_turn(&held.channel_id, &pending_id).await;
            return Ok(None);
        }
        let built = (|| {
            let channel_id: alloy::primitives::B256 = held
                .channel_id
                .parse()
                .map_err(|_| "a channel id does not parse".to_owned())?;
            let chain = crate::x402::networks::chain_id_of(&held.network)
                .ok_or_else(|| "not an EVM network".to_owned())?;
            let base = json!({
                "type": "refund",
                "channelConfig": held.config,
                "voucher": {
                    "channelId": held.channel_id,
                    "maxClaimableAmount": held.signed_max,
                    "signature": held.signature,
                },
            });
            enrich_refund(
                base,
                RefundTerms {
                    config: &held.config,
                    channel_id,
                    separator: evm_batch::domain_separator(chain),
                    voucher_max: held.signed_max(),
                    voucher_signature: &held.signature,
                    charged,
                    claimed: held.total_claimed(),
                    amount,
                    nonce: held.refund_nonce,
                },
                env.channels.key_for(&held.receiver_authorizer),
            )
        })();
        let payload = match built {
            Ok(p) => p,
            Err(e) => {
                self.release_turn(&held.channel_id, &pending_id).await;
                return Err(e);
            }
        };
        let settled = self
            .channel_call(
                env,
                &held.network,
                &held.asset,
                &held.receiver,
                &held.receiver_authorizer,
                payload,
            )
            .await;
        let s = match settled {
            Ok(s) => s,
            Err(e) => {
                self.metrics
                    .channel_claims
                    .with_label_values(&["refund", "failed"])
                    .inc();
                if e.unknown {
                    // It may have landed: the channel stays held until the turn expires, and
                    // its next request reads the chain again.
                    self.update_channel(&held.channel_id, |c| {
                        c.synced_at = 0;
                        true
                    })
                    .await
                    .ok();
                } else {
                    self.release_turn(&held.channel_id, &pending_id).await;
                }
                return Err(e.reason);
            }
        };
        let reported = s.extra.as_ref().and_then(OnChain::read);
        let refunded = s
            .amount
            .as_deref()
            .and_then(|a| a.parse::<u128>().ok())
            .unwrap_or(amount);
        let after = after_refund(&held.onchain(), charged, amount, reported);
        let voucher = (held.signed_max.clone(), held.signature.clone());
        let id = held.channel_id.clone();
        Ok(Some(
            self.record_refund(
                env,
                &id,
                &pending_id,
                voucher,
                &after,
                held,
                &s.transaction,
                refunded,
            )
            .await,
        ))
    }
}

/// What a refund transaction does: claim the charges with the channel's voucher, then return
/// `amount` at refund nonce `nonce`.
pub(super) struct RefundTerms<'a> {
    pub config: &'a RawJson,
    pub channel_id: alloy::primitives::B256,
    pub separator: alloy::primitives::B256,
    pub voucher_max: u128,
    pub voucher_signature: &'a str,
    pub charged: u128,
    /// The chain's claimed total: no claim when the charges are all claimed.
    pub claimed: u128,
    pub amount: u128,
    pub nonce: u64,
}

/// A refund payload (`type`, `channelConfig`, `voucher`) with what the facilitator's
/// settlement needs: the amount, the nonce, the claim of the charges and, given the receiver
/// authorizer's key, its refund and claim signatures (else the facilitator signs).
pub(super) fn enrich_refund(
    mut payload: Value,
    t: RefundTerms<'_>,
    key: Option<&std::sync::Arc<alloy::signers::local::PrivateKeySigner>>,
) -> Result<Value, String> {
    let claims: Vec<Value> = if t.charged > t.claimed {
        vec![json!({
            "voucher": {"channel": t.config, "maxClaimableAmount": t.voucher_max.to_string()},
            "signature": t.voucher_signature,
            "totalClaimed": t.charged.to_string(),
        })]
    } else {
        Vec::new()
    };
    let Some(fields) = payload.as_object_mut() else {
        return Err("the refund payload is not an object".into());
    };
    fields.insert("amount".into(), Value::String(t.amount.to_string()));
    fields.insert("refundNonce".into(), Value::String(t.nonce.to_string()));
    if let Some(key) = key {
        use alloy::signers::SignerSync;
        let sign = |digest| {
            key.sign_hash_sync(&digest)
                .map(|s| Value::String(format!("0x{}", hex::encode(s.as_bytes()))))
                .map_err(|e| format!("cannot sign the refund: {e}"))
        };
        fields.insert(
            "refundAuthorizerSignature".into(),
            sign(evm_batch::refund_digest(
                &t.separator,
                &t.channel_id,
                t.nonce,
                t.amount,
            ))?,
        );
        if !claims.is_empty() {
            let entry = ClaimEntry {
                channel_id: t.channel_id,
                max_claimable: t.voucher_max,
                total_claimed: t.charged,
            };
            fields.insert(
                "claimAuthorizerSignature".into(),
                sign(evm_batch::claim_batch_digest(&t.separator, &[entry]))?,
            );
        }
    }
    fields.insert("claims".into(), Value::Array(claims));
    Ok(payload)
}

/// A facilitator request body with its payment payload replaced.
fn set_payload(body: &[u8], payload: Value) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    *v.get_mut("paymentPayload")?.get_mut("payload")? = payload;
    serde_json::to_vec(&v).ok()
}
