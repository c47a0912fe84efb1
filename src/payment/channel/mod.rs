//! Payment channels (`batch-settlement`): a request paid by a voucher is charged against its
//! channel's state in the state store, serialized per channel (a pending charge in the
//! channel's record, written by compare-and-swap, so replicas sharing the store take turns),
//! and committed only once the origin answered with success; a deposit first goes through the
//! facilitator (`/verify`, then `/settle` after the origin answered). A voucher whose
//! cumulative amount does not continue the channel's charges gets the corrective 402 the
//! reference client resynchronizes from. The claimer (`claimer.rs`) turns the latest
//! vouchers into on-chain claims.

pub mod claimer;
mod record;
pub mod refund;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::decode::Decoded;
use super::identifier::Lookup;
use super::replay::ReplayKey;
use super::{
    Accepted, Admission, Caller, Paying, PaymentEnv, PaymentError, Payments, Rejection, RuleRef,
    Settlement, Stage,
};
use crate::schemes::evm_batch::{self, BatchError, BatchPayment, Kind};
use crate::schemes::{SchemeError, by_id};
use crate::x402::challenge::{Offer, Priced};
use crate::x402::types::SettleResponse;
pub use record::{ChannelRecord, PendingCharge};

/// How long a charge may stay pending (the origin's answer) before another request on the
/// channel may take over; at least this, at most [`MAX_PENDING`], else `maxTimeoutSeconds`.
const MIN_PENDING: Duration = Duration::from_secs(5);
const MAX_PENDING: Duration = Duration::from_secs(600);
/// How many times a charge retries a compare-and-swap another request won.
const SWAP_TRIES: usize = 4;
/// How many facilitator readings a voucher waits for that are not older than its channel.
const MAX_VERIFIES: usize = 3;
/// How long a request waits for its turn while another request on its channel is served;
/// past that it is refused as busy.
const TURN_WAIT: Duration = Duration::from_secs(5);
/// How soon a waiting request looks again, doubling up to [`TURN_POLL_MAX`].
const TURN_POLL: Duration = Duration::from_millis(2);
const TURN_POLL_MAX: Duration = Duration::from_millis(50);

/// How long a channel this replica wrote is remembered as it wrote it.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// Channels remembered at most.
const CACHE_CHANNELS: u64 = 100_000;

/// Channels this replica wrote last, as it wrote them (version, record). A request on one
/// tries its compare-and-swap with what is remembered instead of reading the store first;
/// when another replica (or the claimer) wrote since, the swap fails on the version and the
/// store is read. Remembered briefly: a store that lost its data starts versions again.
pub struct ChannelCache(moka::sync::Cache<String, (u64, std::sync::Arc<ChannelRecord>)>);

impl Default for ChannelCache {
    fn default() -> Self {
        ChannelCache(
            moka::sync::Cache::builder()
                .max_capacity(CACHE_CHANNELS)
                .time_to_live(CACHE_TTL)
                .build(),
        )
    }
}

impl ChannelCache {
    fn get(&self, channel_id: &str) -> Option<(u64, ChannelRecord)> {
        self.0.get(channel_id).map(|(v, r)| (v, (*r).clone()))
    }

    fn put(&self, channel_id: &str, version: u64, record: ChannelRecord) {
        self.0.insert(
            channel_id.to_owned(),
            (version, std::sync::Arc::new(record)),
        );
    }

    fn forget(&self, channel_id: &str) {
        self.0.invalidate(channel_id);
    }
}

/// A channel payment carried through the request: which charge is pending on which channel.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub channel_id: String,
    /// Names this request's pending charge in the channel's record.
    pub pending_id: String,
    pub kind: Kind,
    /// What this request is charged (the offer's price).
    pub price: u128,
    /// The channel as this request left it when it took its turn, and its version then.
    pub record: ChannelRecord,
    pub version: u64,
    /// The channel's on-chain state a facilitator reported (`/verify` of a deposit or of a
    /// voucher whose mirror was stale).
    pub onchain: Option<Value>,
}

/// The channel state a facilitator's `/verify` or `/settle` extra reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OnChain {
    pub balance: u128,
    pub total_claimed: u128,
    pub withdraw_requested_at: u64,
    pub refund_nonce: u64,
}

impl OnChain {
    /// Reads `{balance, totalClaimed, withdrawRequestedAt, refundNonce}` (top level or under
    /// `channelState`); `None` without a readable balance.
    pub fn read(extra: &Value) -> Option<OnChain> {
        let s = extra.get("channelState").unwrap_or(extra);
        let uint = |k: &str| -> Option<u128> {
            match s.get(k)? {
                Value::String(t) => t.parse().ok(),
                Value::Number(n) => n.as_u64().map(u128::from),
                _ => None,
            }
        };
        Some(OnChain {
            balance: uint("balance")?,
            total_claimed: uint("totalClaimed").unwrap_or(0),
            withdraw_requested_at: uint("withdrawRequestedAt")
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0),
            refund_nonce: uint("refundNonce")
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0),
        })
    }
}

/// What taking a turn on a channel decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// The charge is pending in this record.
    Taken(Box<ChannelRecord>),
    /// The channel's mirror of the chain is too old (or the signature needs a facilitator):
    /// verify first, then take the turn with what the facilitator reports.
    VerifyFirst,
}

/// How long the channel's mirror of the chain is trusted for a local voucher check: a third
/// of the withdraw delay, between 30 s and 5 min.
pub fn mirror_ttl(withdraw_delay: u64) -> Duration {
    Duration::from_secs((withdraw_delay / 3).clamp(30, 300))
}

/// How long a pending charge holds the channel.
fn pending_for(max_timeout_seconds: u64) -> Duration {
    Duration::from_secs(max_timeout_seconds).clamp(MIN_PENDING, MAX_PENDING)
}

/// Takes this request's turn on a channel, or says why not: the pure decision.
///
/// `onchain`: what a facilitator just reported of the chain (a deposit's verification, or a
/// voucher verified because the mirror was stale); `None`: the record's mirror is used.
#[allow(
    clippy::too_many_arguments,
    reason = "one pure decision over the request's facts; a struct would only rename them"
)]
pub fn take_turn(
    current: Option<&ChannelRecord>,
    p: &BatchPayment,
    offer: &Offer,
    onchain: Option<&OnChain>,
    pending_id: &str,
    now_ms: u64,
    ttl: Duration,
) -> Result<Turn, BatchError> {
    let price: u128 = offer.requirements.amount.parse().unwrap_or(0);
    if let Some(c) = current
        && c.pending_live(now_ms)
    {
        return Err(BatchError::ChannelBusy);
    }
    // What the channel was charged so far; a channel this store does not know continues
    // from the voucher (as the reference server does), bounded below by the chain.
    let charged = match current {
        Some(c) => c.charged(),
        None => p.max_claimable.saturating_sub(price),
    };
    let expected = charged
        .checked_add(price)
        .ok_or(BatchError::CumulativeMismatch)?;
    if p.max_claimable != expected {
        return Err(BatchError::CumulativeMismatch);
    }
    let mirror = match (onchain, current) {
        // A reading from before a refund this record knows of: read the chain again.
        (Some(o), Some(c)) if c.predates(o) => return Ok(Turn::VerifyFirst),
        (Some(o), _) => o.clone(),
        // While a payer's timed withdrawal is pending the escrow may shrink any moment: each
        // voucher is checked against the chain.
        (None, Some(c))
            if p.signature_checked
                && c.withdraw_requested_at == 0
                && c.mirror_fresh(now_ms, ttl) =>
        {
            c.onchain()
        }
        _ => return Ok(Turn::VerifyFirst),
    };
    // A channel this store does not know continues from the voucher, but never below what
    // the chain already claimed plus this request.
    if current.is_none() && p.max_claimable < mirror.total_claimed.saturating_add(price) {
        return Err(BatchError::CumulativeBelowClaimed);
    }
    let deposit = match p.kind {
        Kind::Deposit { amount } => amount,
        _ => 0,
    };
    // A deposit's voucher spends the balance the deposit is about to add.
    if p.max_claimable > mirror.balance.saturating_add(deposit) {
        return Err(BatchError::CumulativeExceedsBalance);
    }
    if p.max_claimable <= mirror.total_claimed {
        return Err(BatchError::CumulativeBelowClaimed);
    }
    let pending = PendingCharge {
        id: pending_id.to_owned(),
        signed_max: p.max_claimable.to_string(),
        signature: p.signature.clone(),
        expires_at: now_ms + pending_for(offer.requirements.max_timeout_seconds).as_millis() as u64,
    };
    let mut next = match current {
        Some(c) => c.clone(),
        None => {
            // Claims made before this store knew the channel are not this ledger's.
            let mut r = ChannelRecord::new(p, &offer.requirements);
            r.ledgered = Some(mirror.total_claimed.to_string());
            r
        }
    };
    next.charged = charged.to_string();
    if onchain.is_some() {
        next.set_onchain(&mirror, now_ms);
    }
    next.pending = Some(pending);
    Ok(Turn::Taken(Box::new(next)))
}

impl Payments {
    /// The gate for a `batch-settlement` payment: local checks, the channel's turn (a
    /// facilitator's `/verify` first for a deposit, or when the channel's mirror of the chain
    /// is stale), then forward; the charge commits when the origin answered.
    #[allow(
        clippy::too_many_arguments,
        reason = "the gate's own arguments, passed through"
    )]
    pub(super) async fn channel_gate(
        &self,
        env: &PaymentEnv<'_>,
        rule: RuleRef<'_>,
        priced: &Priced,
        offer: &Arc<Offer>,
        decoded: &Decoded,
        (url, resource): (&str, &str),
        caller: Caller<'_>,
        started: std::time::Instant,
    ) -> Result<Admission, Rejection> {
        let (payload, raw) = (&decoded.payload, decoded.raw.as_str());
        let fail = |error: PaymentError, payer: Option<String>| Rejection {
            error,
            version: 2,
            payer,
            receipt: None,
            corrective: None,
        };
        let separator = offer
            .eip712_separator
            .ok_or_else(|| self.reject(fail(SchemeError::Unusable.into(), None)))?;
        let p = evm_batch::check(payload, &offer.requirements, &separator)
            .map_err(|e| self.reject(fail(SchemeError::Batch(e).into(), None)))?;
        let payer = p.config.payer.to_checksum(None);
        // Who signed, when it was recovered here: the payer authorizer (the payer itself for
        // the reference client). Refusals count against that key, never against a payer
        // address anyone can name in a channel configuration.
        let signer = p
            .signature_checked
            .then(|| format!("{:#x}", p.config.payer_authorizer));
        if signer
            .as_deref()
            .is_some_and(|k| self.payer_limited(env, k))
        {
            return Err(self.reject(fail(PaymentError::RateLimited, Some(payer))));
        }
        let price: u128 = offer.requirements.amount.parse().unwrap_or(0);
        if let Kind::Deposit { amount } = p.kind {
            let min = offer
                .requirements
                .extra
                .get(evm_batch::MIN_DEPOSIT)
                .and_then(Value::as_str)
                .and_then(|m| m.parse::<u128>().ok())
                .unwrap_or(price);
            if amount < min {
                return Err(self.reject(fail(
                    SchemeError::Batch(BatchError::DepositBelowMinimum).into(),
                    Some(payer),
                )));
            }
        }
        // The `payment-identifier` extension, after the local checks: a retry of a voucher that
        // was charged is served again uncharged (not answered as a stale voucher, which the
        // client would pay again). A refund is no payment for a resource: not named.
        let named = if matches!(p.kind, Kind::Refund { .. }) {
            None
        } else {
            let claim = || super::identifier::record(decoded, offer, caller.method, url, rule.id);
            match self.identify(env, decoded, caller.method, claim).await {
                Ok(Lookup::Unnamed) => None,
                Ok(Lookup::Claimed(named)) => Some(named),
                Ok(Lookup::Settled(receipt)) => return Ok(Admission::Replayed(receipt)),
                Err(e) => return Err(self.reject(fail(e, Some(payer)))),
            }
        };
        // Whatever refuses the payment from here frees its name for another attempt.
        let admitted = async {
            let channel_id = format!("{:#x}", p.channel_id);
            let pending_id = pending_id();
            let ttl = mirror_ttl(
                offer
                    .requirements
                    .extra
                    .get(evm_batch::WITHDRAW_DELAY)
                    .and_then(Value::as_u64)
                    .unwrap_or(evm_batch::MIN_WITHDRAW_DELAY),
            );
            let r = &offer.requirements;
            let paying = Paying {
                payer: payer.clone(),
                key: ReplayKey::new(&r.network, &r.asset, &payer, &channel_id),
                nonce: channel_id.clone(),
                valid_before: u64::MAX,
            };
            // The facilitator body is built when a facilitator is asked (a deposit, a stale
            // mirror): a voucher checked here never needs it. Channel payments use no verify cache.
            let mut accepted = Box::new(Accepted {
                // Channel charges commit after the origin answered, whatever the rule's default.
                settlement: Settlement::After,
                sign_in: None,
                identifier: named.clone(),
                ..Accepted::verified(
                    2,
                    &rule,
                    &caller,
                    resource.to_owned(),
                    offer.clone(),
                    paying,
                    started,
                )
            });
            if let Kind::Refund { amount } = p.kind {
                return self
                    .channel_refund(
                        env,
                        &p,
                        amount,
                        accepted,
                        payload,
                        raw,
                        priced,
                        offer,
                        (caller.ip, signer.as_deref()),
                    )
                    .await;
            }
            let mut onchain: Option<OnChain> = None;
            let waiting_since = std::time::Instant::now();
            let mut poll = TURN_POLL;
            let mut lost = 0;
            let mut verifies = 0;
            // What this replica wrote last, tried before reading the store.
            let mut remembered = self.channel_cache.get(&channel_id);
            while lost < SWAP_TRIES {
                let now = now_ms();
                let cached = remembered.is_some();
                let (version, record) = match remembered.take() {
                    Some((v, r)) => (v, Some(r)),
                    None => self
                        .read_channel(&channel_id)
                        .await
                        .map_err(|e| self.reject(fail(e, Some(payer.clone()))))?,
                };
                let needs_facilitator =
                    matches!(p.kind, Kind::Deposit { .. }) || !p.signature_checked;
                if needs_facilitator && onchain.is_none() {
                    let who = (caller.ip, signer.as_deref());
                    onchain = Some(
                        self.channel_verify_counted(env, &mut accepted, raw, priced, who)
                            .await
                            .map_err(|e| self.reject(fail(e, Some(payer.clone()))))?,
                    );
                }
                let turn = take_turn(
                    record.as_ref(),
                    &p,
                    offer,
                    onchain.as_ref(),
                    &pending_id,
                    now,
                    ttl,
                );
                // Only a turn taken is checked by the store (the swap fails if the channel moved
                // on); any other verdict is made on the store's own record.
                if cached && !matches!(turn, Ok(Turn::Taken(_))) {
                    self.channel_cache.forget(&channel_id);
                    continue;
                }
                let next = match turn {
                    Ok(Turn::Taken(next)) => next,
                    Ok(Turn::VerifyFirst) => {
                        // A facilitator whose readings stay older than the record (a lagging
                        // node) cannot check this voucher.
                        verifies += 1;
                        if verifies > MAX_VERIFIES {
                            return Err(self
                                .reject(fail(PaymentError::FacilitatorUnavailable, Some(payer))));
                        }
                        let who = (caller.ip, signer.as_deref());
                        onchain = Some(
                            self.channel_verify_counted(env, &mut accepted, raw, priced, who)
                                .await
                                .map_err(|e| self.reject(fail(e, Some(payer.clone()))))?,
                        );
                        continue;
                    }
                    // Another request on this channel is being served: wait for its answer.
                    Err(BatchError::ChannelBusy) if waiting_since.elapsed() < TURN_WAIT => {
                        tokio::time::sleep(poll).await;
                        poll = (poll * 2).min(TURN_POLL_MAX);
                        continue;
                    }
                    Err(BatchError::CumulativeMismatch) => {
                        let shown = record.unwrap_or_else(|| {
                            let mut r = ChannelRecord::new(&p, &offer.requirements);
                            r.charged = p.max_claimable.saturating_sub(price).to_string();
                            r
                        });
                        return Err(self.reject(Rejection {
                            corrective: corrective(priced, offer, &shown),
                            ..fail(
                                SchemeError::Batch(BatchError::CumulativeMismatch).into(),
                                Some(payer),
                            )
                        }));
                    }
                    Err(e) => {
                        return Err(self.reject(fail(SchemeError::Batch(e).into(), Some(payer))));
                    }
                };
                match self
                    .state
                    .swap_channel(&channel_id, version, &next.encode())
                    .await
                {
                    Ok(true) => {
                        accepted.channel = Some(Box::new(Ticket {
                            channel_id,
                            pending_id,
                            kind: p.kind,
                            price,
                            record: *next,
                            version: version + 1,
                            onchain: None,
                        }));
                        return Ok(Admission::Paid(accepted));
                    }
                    // Another request changed the channel first: look again (in the store).
                    Ok(false) => {
                        self.channel_cache.forget(&channel_id);
                        lost += 1;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot write a payment channel");
                        // The write may have gone through: the turn is given back, so the channel
                        // is not held until the pending charge expires.
                        self.release_turn(&channel_id, &pending_id).await;
                        return Err(self.reject(fail(PaymentError::StateUnavailable, Some(payer))));
                    }
                }
            }
            Err(self.reject(fail(
                SchemeError::Batch(BatchError::ChannelBusy).into(),
                Some(payer),
            )))
        }
        .await;
        if admitted.is_err() {
            self.forget_identifier(named.as_ref()).await;
        }
        admitted
    }

    /// A channel's record and its version (0 and `None`: the store does not know it).
    async fn read_channel(
        &self,
        channel_id: &str,
    ) -> Result<(u64, Option<ChannelRecord>), PaymentError> {
        match self.state.channel(channel_id).await {
            Ok(None) => Ok((0, None)),
            // A dropped record's tombstone: no record, at a version still going.
            Ok(Some((v, bytes))) if bytes.is_empty() => Ok((v, None)),
            Ok(Some((v, bytes))) => match ChannelRecord::decode(&bytes) {
                Some(r) => Ok((v, Some(r))),
                None => {
                    tracing::error!(channel = %channel_id, "a payment channel's record does not parse");
                    Err(PaymentError::StateUnavailable)
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot read a payment channel");
                Err(PaymentError::StateUnavailable)
            }
        }
    }

    /// A facilitator's `/verify` of a channel payment (a deposit, or a voucher checked on
    /// chain), returning the channel's on-chain state it reports.
    async fn channel_verify(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        raw: &str,
        priced: &Priced,
    ) -> Result<OnChain, PaymentError> {
        if a.facilitator_body.is_empty() {
            a.facilitator_body =
                super::gate::facilitator_body(a.version, raw, &a.offer, priced, &a.resource)?;
        }
        let extra = self.verify_extra(env, a).await?;
        Ok(extra.as_ref().and_then(OnChain::read).unwrap_or_default())
    }

    /// [`Self::channel_verify`], counting a facilitator's `invalid` verdict against the client
    /// and the signer recovered here (`who`), as refused payments are.
    async fn channel_verify_counted(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        raw: &str,
        priced: &Priced,
        (client, signer): (Option<std::net::IpAddr>, Option<&str>),
    ) -> Result<OnChain, PaymentError> {
        let verified = self.channel_verify(env, a, raw, priced).await;
        if let Err(e) = &verified {
            self.count_invalid(env, e, client, signer).await;
        }
        verified
    }

    /// Commits (or, for a deposit, settles on chain and then commits) a channel payment whose
    /// origin answered with success. Sets `stage` and `receipt` and writes the ledger.
    pub(super) async fn settle_channel(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        upstream_status: Option<u16>,
    ) {
        let Some(ticket) = a.channel.clone() else {
            return;
        };
        let network = a.offer.requirements.network.clone();
        // The deposit's transaction, the channel after it, and whether the facilitator
        // reported that state (rather than it being worked out here).
        let mut deposited: Option<(String, Option<OnChain>, bool)> = None;
        if matches!(ticket.kind, Kind::Deposit { .. }) {
            match self.settle_on_chain(env, a).await {
                Ok(s) => {
                    let (tx, onchain) = (s.transaction, s.extra.as_ref().and_then(OnChain::read));
                    let reported = onchain.is_some();
                    // Without the state after the deposit: what it was, plus the deposit, not
                    // trusted as a reading (the next voucher asks the facilitator).
                    let onchain = onchain.or_else(|| {
                        let Kind::Deposit { amount } = ticket.kind else {
                            return None;
                        };
                        let mut o = ticket.record.onchain();
                        o.balance = o.balance.saturating_add(amount);
                        Some(o)
                    });
                    deposited = Some((tx, onchain, reported));
                }
                Err(reason) => {
                    self.end_channel_turn(a).await;
                    a.released = true;
                    a.stage = Stage::SettleFailed;
                    let receipt = SettleResponse {
                        success: false.into(),
                        error_reason: Some(reason.clone()),
                        payer: Some(a.payer.clone()),
                        network,
                        ..Default::default()
                    };
                    self.metrics
                        .payments
                        .with_label_values(&[
                            "settle_failed",
                            crate::payment::reasons::label(&reason),
                        ])
                        .inc();
                    self.record(a).write(
                        &self.ledger,
                        env.ledger,
                        "settle_failed",
                        "",
                        Some(&reason),
                        upstream_status,
                    );
                    a.receipt = Some(receipt);
                    return;
                }
            }
        }
        let committed = self
            .commit_channel(
                &ticket,
                deposited
                    .as_ref()
                    .and_then(|d| d.1.as_ref().map(|o| (o, d.2))),
            )
            .await;
        let (tx, record) = match committed {
            Ok(record) => (deposited.map(|d| d.0).unwrap_or_default(), record),
            Err(reason) => {
                // The charge could not be recorded: nothing is charged, nothing served. A
                // deposit that landed stays the payer's escrow: its transaction is named in the
                // answer and the ledger.
                let tx = deposited.map(|d| d.0).unwrap_or_default();
                a.stage = Stage::SettleFailed;
                if !tx.is_empty() {
                    self.record(a).write(
                        &self.ledger,
                        env.ledger,
                        "channel_deposit_uncommitted",
                        &tx,
                        Some(reason),
                        upstream_status,
                    );
                }
                a.receipt = Some(SettleResponse {
                    success: false.into(),
                    error_reason: Some(reason.into()),
                    payer: Some(a.payer.clone()),
                    transaction: tx,
                    network,
                    ..Default::default()
                });
                self.metrics
                    .payments
                    .with_label_values(&["settle_failed", reason])
                    .inc();
                return;
            }
        };
        a.stage = Stage::Settled;
        let charged = record.charged().to_string();
        a.receipt = Some(SettleResponse {
            success: true.into(),
            error_reason: None,
            payer: Some(a.payer.clone()),
            transaction: tx.clone(),
            network,
            amount: Some(if tx.is_empty() {
                String::new()
            } else {
                a.amount()
            }),
            extra: Some(json!({
                "channelState": record.channel_state(Some(&charged)),
                "chargedAmount": ticket.price.to_string(),
            })),
        });
        self.metrics
            .payments
            .with_label_values(&["settled", ""])
            .inc();
        self.count_revenue(a);
        self.record(a).write(
            &self.ledger,
            env.ledger,
            "channel_charged",
            &tx,
            None,
            upstream_status,
        );
        // A named payment's retry is now served again with this receipt.
        self.complete_identifier(a).await;
    }

    /// A deposit's or refund's `/settle`, through the facilitator that verified it: the
    /// facilitator's answer, or the refusal's reason.
    async fn settle_on_chain(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
    ) -> Result<SettleResponse, String> {
        let mut candidates = self.candidates(env, a);
        if let Some(name) = &a.facilitator {
            candidates.sort_by_key(|f| &f.name != name);
        }
        for fac in candidates {
            let t = std::time::Instant::now();
            let r = self
                .calls
                .settle(fac, &a.facilitator_body, &a.correlation)
                .await;
            a.facilitator_time += t.elapsed();
            match r {
                Ok(s) if s.succeeded() => {
                    a.facilitator = Some(fac.name.clone());
                    return Ok(s);
                }
                // A transaction named without success (pending, unclear): it may land.
                Ok(s) if !s.transaction.is_empty() => {
                    return Err("settlement_unconfirmed".into());
                }
                Ok(s) => {
                    return Err(s.error_reason.unwrap_or_else(|| "settlement_failed".into()));
                }
                Err(e) if e.not_sent() => continue,
                Err(e) => {
                    tracing::warn!(facilitator = %fac.name, error = %e, "deposit settlement outcome unknown");
                    return Err("settlement_unconfirmed".into());
                }
            }
        }
        Err("facilitator_unavailable".into())
    }

    /// Adds this request's price to the channel's charges, if its turn still holds.
    async fn commit_channel(
        &self,
        t: &Ticket,
        deposited: Option<(&OnChain, bool)>,
    ) -> Result<ChannelRecord, &'static str> {
        // First as this request left the channel (nobody wrote since, usually), then as the
        // store has it.
        let mut left = Some((t.version, t.record.clone()));
        for _ in 0..SWAP_TRIES {
            let (version, mut record) = match left.take() {
                Some(known) => known,
                None => match self.state.channel(&t.channel_id).await {
                    Ok(Some((_, bytes))) if bytes.is_empty() => {
                        return Err("invalid_batch_settlement_evm_missing_channel");
                    }
                    Ok(Some((v, bytes))) => match ChannelRecord::decode(&bytes) {
                        Some(r) => (v, r),
                        None => return Err("state_unavailable"),
                    },
                    Ok(None) => return Err("invalid_batch_settlement_evm_missing_channel"),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read a payment channel to commit a charge");
                        return Err("state_unavailable");
                    }
                },
            };
            let Some(pending) = record.pending.clone().filter(|p| p.id == t.pending_id) else {
                return Err("invalid_batch_settlement_evm_channel_busy");
            };
            let charged = record.charged().saturating_add(t.price);
            if pending.signed_max.parse::<u128>().ok() != Some(charged) {
                return Err("invalid_batch_settlement_evm_charge_exceeds_signed_cumulative");
            }
            record.charged = charged.to_string();
            record.signed_max = pending.signed_max;
            record.signature = pending.signature;
            record.committed = pending.id;
            record.pending = None;
            record.last_request_at = now_ms();
            if let Some((o, reported)) = deposited {
                // A state worked out here leaves the mirror stale: it is read on the next use.
                record.set_onchain(o, if reported { now_ms() } else { 0 });
            }
            match self
                .state
                .swap_channel(&t.channel_id, version, &record.encode())
                .await
            {
                Ok(true) => {
                    self.channel_cache
                        .put(&t.channel_id, version + 1, record.clone());
                    return Ok(record);
                }
                Ok(false) => continue,
                Err(e) => {
                    // The store may have applied the write before its answer was lost: a
                    // charge that went through is served, one that did not is not.
                    if let Ok(Some((_, bytes))) = self.state.channel(&t.channel_id).await
                        && let Some(now) = ChannelRecord::decode(&bytes)
                        && now.committed_by(&t.pending_id)
                    {
                        return Ok(now);
                    }
                    tracing::error!(error = %e, "cannot commit a channel charge");
                    return Err("state_unavailable");
                }
            }
        }
        Err("invalid_batch_settlement_evm_channel_busy")
    }

    /// Ends a channel payment's turn without a charge (the origin failed, the client went
    /// away, the deposit did not settle): the channel is free for the next request.
    pub(super) async fn end_channel_turn(&self, a: &Accepted) {
        if let Some(t) = &a.channel {
            self.release_turn(&t.channel_id, &t.pending_id).await;
        }
        self.forget_identifier(a.identifier.as_ref()).await;
    }

    /// Clears the pending charge `pending_id` from a channel's record, if it is still there.
    /// When the store fails the pending charge expires on its own.
    async fn release_turn(&self, channel_id: &str, pending_id: &str) {
        let released = self
            .update_channel(channel_id, |r| {
                let ours = r.pending.as_ref().is_some_and(|p| p.id == pending_id);
                if ours {
                    r.pending = None;
                }
                ours
            })
            .await;
        if released.is_err() {
            tracing::warn!(channel = %channel_id, "cannot release a channel's pending charge");
        }
    }

    /// Applies `change` to a channel's record by compare-and-swap, read again after a lost
    /// race; `change` returns false to leave the record as it is. `Err`: the store failed.
    async fn update_channel(
        &self,
        channel_id: &str,
        mut change: impl FnMut(&mut ChannelRecord) -> bool,
    ) -> Result<Option<ChannelRecord>, ()> {
        for _ in 0..SWAP_TRIES {
            let (version, bytes) = match self.state.channel(channel_id).await {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a payment channel");
                    return Err(());
                }
            };
            let Some(mut r) = ChannelRecord::decode(&bytes) else {
                return Ok(None);
            };
            if !change(&mut r) {
                return Ok(Some(r));
            }
            match self
                .state
                .swap_channel(channel_id, version, &r.encode())
                .await
            {
                Ok(true) => return Ok(Some(r)),
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write a payment channel");
                    return Err(());
                }
            }
        }
        Ok(None)
    }
}

/// The requirements of a corrective 402: the channel's offer with the channel's state and the
/// latest voucher the gateway holds, which the reference client resynchronizes from.
fn corrective(priced: &Priced, offer: &Offer, record: &ChannelRecord) -> Option<Box<Priced>> {
    let mut offers: Vec<Offer> = priced.offers.iter().map(|o| Offer::clone(o)).collect();
    let o = offers.iter_mut().find(|o| {
        o.requirements.scheme == evm_batch::SCHEME
            && o.requirements.network == offer.requirements.network
            && o.requirements.asset == offer.requirements.asset
    })?;
    let extra = &mut o.requirements.extra;
    extra.insert(
        "channelState".into(),
        record.channel_state(Some(&record.charged)),
    );
    if !record.signature.is_empty() {
        extra.insert(
            "voucherState".into(),
            json!({"signedMaxClaimable": record.signed_max, "signature": record.signature}),
        );
    }
    Some(Box::new(priced.with_offers(offers)))
}

/// Whether an offer is paid through a channel.
pub fn is_channel(offer: &Offer) -> bool {
    by_id(&offer.requirements.scheme)
        .is_some_and(|s| s.settle_plan() == crate::schemes::SettlePlan::Channel)
}

fn pending_id() -> String {
    let mut random = [0u8; 12];
    if getrandom::fill(&mut random).is_err() {
        random[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    hex::encode(random)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
