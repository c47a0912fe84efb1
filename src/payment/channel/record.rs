//! A payment channel's record in the state store: what the gateway charged it, the latest
//! voucher (what the claimer claims), the gateway's mirror of the channel's on-chain state,
//! and the one charge that may be pending at a time.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::OnChain;
use crate::schemes::evm_batch::BatchPayment;
use crate::x402::types::RequirementsV2;

/// One channel as the gateway knows it. Amounts are decimal strings (they are `uint128`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelRecord {
    pub channel_id: String,
    /// CAIP-2 network, token and receiver: what the claimer groups channels by.
    pub network: String,
    pub asset: String,
    pub receiver: String,
    pub receiver_authorizer: String,
    pub payer: String,
    /// The channel's configuration as the contract calls take it.
    pub config: RawJson,
    /// Everything this channel was charged, cumulatively.
    pub charged: String,
    /// The latest voucher: its cumulative ceiling and signature (empty before the first).
    pub signed_max: String,
    pub signature: String,
    /// The mirror of the chain: escrow, claimed total, a timed withdrawal's start, the refund
    /// nonce, and when they were read (unix ms).
    pub balance: String,
    pub total_claimed: String,
    pub withdraw_requested_at: u64,
    pub refund_nonce: u64,
    pub synced_at: u64,
    /// Unix ms of the last committed charge.
    #[serde(default)]
    pub last_request_at: u64,
    /// The id of the last committed charge: a commit whose answer was lost tells from it
    /// whether its write went through.
    #[serde(default)]
    pub committed: String,
    /// The charge being served now, if any.
    #[serde(default)]
    pub pending: Option<PendingCharge>,
    /// The claimed total the ledger accounts for (`channel_claimed` lines); `None` in a record
    /// written before it was kept: the mirror's claimed total. Claims the chain shows beyond it
    /// (a claimer stopped between its transaction and its record) are ledgered by the claimer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledgered: Option<String>,
    /// Claimed funds wait to be swept to the receiver (a refund's claim, a claim found on
    /// chain): the claimer's next pass sweeps the receiver.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sweep_owed: bool,
    /// Unix ms of the last claim the claimer recorded (a record stays a while after it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub claimed_at: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// JSON kept as its text: a record is read and written on every charge, and this part of it
/// never changes, so it is copied as it is rather than parsed into a tree and written again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    pub fn of(v: &Value) -> Self {
        // A JSON tree always serializes.
        RawJson(serde_json::value::to_raw_value(v).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }

    pub fn null() -> Self {
        RawJson(RawValue::NULL.to_owned())
    }

    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

/// A charge waiting for the origin's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingCharge {
    pub id: String,
    pub signed_max: String,
    pub signature: String,
    /// Unix ms after which another request may take the channel.
    pub expires_at: u64,
}

fn uint(s: &str) -> u128 {
    s.parse().unwrap_or(0)
}

impl ChannelRecord {
    /// A channel this store has not seen, as a payment describes it.
    pub fn new(p: &BatchPayment, req: &RequirementsV2) -> Self {
        ChannelRecord {
            channel_id: format!("{:#x}", p.channel_id),
            payer: p.config.payer.to_checksum(None),
            config: RawJson::of(&p.config.to_json()),
            ..Self::receiver(
                &req.network,
                &p.config.token.to_checksum(None),
                &p.config.receiver.to_checksum(None),
                &p.config.receiver_authorizer.to_checksum(None),
            )
        }
    }

    /// No channel: a receiver's totals in one token (what a sweep's ledger line names).
    pub fn receiver(network: &str, asset: &str, receiver: &str, authorizer: &str) -> Self {
        ChannelRecord {
            channel_id: String::new(),
            network: network.to_owned(),
            asset: asset.to_owned(),
            receiver: receiver.to_owned(),
            receiver_authorizer: authorizer.to_owned(),
            payer: String::new(),
            config: RawJson::null(),
            charged: "0".into(),
            signed_max: "0".into(),
            signature: String::new(),
            balance: "0".into(),
            total_claimed: "0".into(),
            withdraw_requested_at: 0,
            refund_nonce: 0,
            synced_at: 0,
            last_request_at: 0,
            committed: String::new(),
            pending: None,
            ledgered: None,
            sweep_owed: false,
            claimed_at: 0,
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        // A record of strings and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn charged(&self) -> u128 {
        uint(&self.charged)
    }

    pub fn signed_max(&self) -> u128 {
        uint(&self.signed_max)
    }

    pub fn total_claimed(&self) -> u128 {
        uint(&self.total_claimed)
    }

    pub fn balance(&self) -> u128 {
        uint(&self.balance)
    }

    /// The claimed total the ledger accounts for.
    pub fn ledgered_claimed(&self) -> u128 {
        self.ledgered
            .as_deref()
            .map_or_else(|| self.total_claimed(), uint)
    }

    /// What the latest voucher entitles the receiver to that is not claimed on chain yet.
    pub fn unclaimed(&self) -> u128 {
        self.signed_max().saturating_sub(self.total_claimed())
    }

    /// Whether the charge `pending_id` is committed in this record (the last commit was it).
    pub fn committed_by(&self, pending_id: &str) -> bool {
        !pending_id.is_empty() && self.committed == pending_id
    }

    /// Whether an idle refund is due: no request for `idle`, no charge pending, escrow not
    /// charged in the mirror, a voucher to claim the charges with, no timed withdrawal (the
    /// payer is taking the escrow back already).
    pub fn idle_refundable(&self, now_ms: u64, idle: std::time::Duration) -> bool {
        self.last_request_at > 0
            && now_ms.saturating_sub(self.last_request_at) >= idle.as_millis() as u64
            && !self.pending_live(now_ms)
            && self.balance() > self.charged()
            && !self.signature.is_empty()
            && self.withdraw_requested_at == 0
    }

    /// Whether the record can go: every charge is claimed and ledgered, nothing waits to be
    /// swept, no charge or withdrawal is pending, and nothing happened on it for `after`.
    /// What is left (escrow, the claimed total) is on chain, where the next request on the
    /// channel reads it; with idle refunds on (`refunds_idle`), escrow not yet refunded keeps
    /// the record, which is how the claimer finds it, unless no voucher was ever committed
    /// (a deposit whose request failed): a cooperative refund carries one, so nothing would
    /// ever refund it, and the payer's timed withdrawal takes it back.
    pub fn retirable(&self, now_ms: u64, after: std::time::Duration, refunds_idle: bool) -> bool {
        let after = after.as_millis() as u64;
        let last = self
            .last_request_at
            .max(self.synced_at)
            .max(self.claimed_at);
        now_ms.saturating_sub(last) >= after
            // A charge that expired long ago: its request is over.
            && self
                .pending
                .as_ref()
                .is_none_or(|p| now_ms.saturating_sub(p.expires_at) >= after)
            && self.charged() <= self.total_claimed()
            && self.ledgered_claimed() >= self.total_claimed()
            && !self.sweep_owed
            && self.withdraw_requested_at == 0
            && !(refunds_idle && self.balance() > self.total_claimed() && !self.signature.is_empty())
    }

    pub fn pending_live(&self, now_ms: u64) -> bool {
        self.pending.as_ref().is_some_and(|p| p.expires_at > now_ms)
    }

    pub fn mirror_fresh(&self, now_ms: u64, ttl: std::time::Duration) -> bool {
        self.synced_at > 0 && now_ms.saturating_sub(self.synced_at) <= ttl.as_millis() as u64
    }

    pub fn onchain(&self) -> OnChain {
        OnChain {
            balance: self.balance(),
            total_claimed: self.total_claimed(),
            withdraw_requested_at: self.withdraw_requested_at,
            refund_nonce: self.refund_nonce,
        }
    }

    /// Takes what the chain was read to hold. The claimed total never goes back: a report
    /// older than a claim this record already knows of (a verification reused after a lost
    /// swap, a read that raced a claim) must not make that claim look unclaimed again.
    ///
    /// A reading whose refund nonce is below the record's was taken before a refund this
    /// record knows of: its escrow is gone, so only its claimed total is taken.
    pub fn set_onchain(&mut self, o: &OnChain, now_ms: u64) {
        self.total_claimed = o.total_claimed.max(self.total_claimed()).to_string();
        if o.refund_nonce < self.refund_nonce {
            return;
        }
        self.balance = o.balance.to_string();
        self.withdraw_requested_at = o.withdraw_requested_at;
        self.refund_nonce = o.refund_nonce;
        self.synced_at = now_ms;
    }

    /// Whether a chain reading predates a refund this record knows of.
    pub fn predates(&self, o: &OnChain) -> bool {
        o.refund_nonce < self.refund_nonce
    }

    /// The `channelState` object of receipts and corrective 402s.
    pub fn channel_state(&self, charged: Option<&str>) -> Value {
        let mut v = json!({
            "channelId": self.channel_id,
            "balance": self.balance,
            "totalClaimed": self.total_claimed,
            "withdrawRequestedAt": self.withdraw_requested_at,
            "refundNonce": self.refund_nonce.to_string(),
        });
        if let (Some(c), Some(o)) = (charged, v.as_object_mut()) {
            o.insert(
                "chargedCumulativeAmount".into(),
                Value::String(c.to_owned()),
            );
        }
        v
    }
}
