//! The one ledger writer: what a ledger line says of a payment, owned so that a background
//! watch can write it later, and what the state store keeps of a pending settlement.

use alloy::primitives::B256;

use crate::facilitator::rpc::ExpectedTransfer;
use crate::payment::ledger::{Ledger, LedgerConf, LedgerEntry, now_rfc3339};
use crate::payment::replay::ReplayKey;
use crate::payment::{Accepted, Settlement};
use crate::state::PendingSettlement;

/// What a ledger line says of a payment, owned so that a background watch can write it later.
#[derive(Debug, Clone)]
pub(in crate::payment) struct Record {
    pub(super) key: ReplayKey,
    pub(super) valid_before: u64,
    pub(super) rule: String,
    pub(super) resource: String,
    pub(super) payer: String,
    pub(super) amount: String,
    pub(super) asset: String,
    pub(super) network: String,
    pub(super) facilitator: String,
    pub(super) settlement: Settlement,
    pub(super) pay_to: String,
    pub(super) nonce: String,
    /// The replica writing the line.
    pub(super) replica: String,
    /// The id of the request that paid.
    pub(super) request_id: String,
    /// Its audience (`""` when its rule does not classify).
    pub(super) audience: String,
}

impl Record {
    pub(super) fn of(a: &Accepted, replica: &str) -> Self {
        let r = &a.offer.requirements;
        Record {
            key: a.key.clone(),
            valid_before: a.valid_before,
            rule: a.rule_id.clone(),
            resource: a.resource.clone(),
            payer: a.payer.clone(),
            amount: a.amount(),
            asset: r.asset.clone(),
            network: r.network.clone(),
            facilitator: a.facilitator.clone().unwrap_or_default(),
            settlement: a.settlement,
            pay_to: r.pay_to.clone(),
            nonce: a.nonce.clone(),
            replica: replica.to_owned(),
            request_id: a.correlation.request_id.clone(),
            audience: a.audience.to_owned(),
        }
    }

    /// A line of the channel claimer: `amount` claimed from (or swept for) a channel.
    pub(in crate::payment) fn for_channel(
        r: &crate::payment::channel::ChannelRecord,
        amount: u128,
        replica: &str,
    ) -> Self {
        Record {
            key: ReplayKey::new(&r.network, &r.asset, &r.payer, &r.channel_id),
            valid_before: u64::MAX,
            rule: String::new(),
            resource: r.channel_id.clone(),
            payer: r.payer.clone(),
            amount: amount.to_string(),
            asset: r.asset.clone(),
            network: r.network.clone(),
            facilitator: String::new(),
            settlement: Settlement::After,
            pay_to: r.receiver.clone(),
            nonce: r.channel_id.clone(),
            replica: replica.to_owned(),
            request_id: String::new(),
            audience: String::new(),
        }
    }

    /// A pending settlement another replica started, to be resolved and written by
    /// `replica`. `None` for a record too old to know what to look for.
    pub(super) fn from_pending(p: &PendingSettlement, replica: &str) -> Option<Self> {
        if p.pay_to.is_empty() || p.nonce.is_empty() {
            return None;
        }
        Some(Record {
            key: ReplayKey::from_stored(&p.key),
            valid_before: p.valid_before,
            rule: p.rule.clone(),
            resource: p.resource.clone(),
            payer: p.payer.clone(),
            amount: p.amount.clone(),
            asset: p.asset.clone(),
            network: p.network.clone(),
            facilitator: p.facilitator.clone(),
            settlement: if p.settlement == "before" {
                Settlement::Before
            } else {
                Settlement::After
            },
            pay_to: p.pay_to.clone(),
            nonce: p.nonce.clone(),
            replica: replica.to_owned(),
            request_id: p.request_id.clone(),
            audience: p.audience.clone(),
        })
    }

    /// The transfer this payment makes, as the chain should show it.
    pub(super) fn expected_transfer(&self) -> Option<ExpectedTransfer> {
        Some(ExpectedTransfer {
            token: self.asset.parse().ok()?,
            payer: self.payer.parse().ok()?,
            pay_to: self.pay_to.parse().ok()?,
            value: self.amount.parse().ok()?,
            nonce: self.nonce.parse().ok()?,
        })
    }

    /// What the state store keeps of a settlement whose outcome is pending.
    pub(super) fn pending(&self, claimed: Option<B256>) -> PendingSettlement {
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
            pay_to: self.pay_to.clone(),
            nonce: self.nonce.clone(),
            replica: self.replica.clone(),
            request_id: self.request_id.clone(),
            audience: self.audience.clone(),
        }
    }

    pub(super) fn settlement_name(&self) -> &'static str {
        match self.settlement {
            Settlement::Before => "before",
            Settlement::After => "after",
        }
    }

    /// The one place a ledger line is written.
    pub(in crate::payment) fn write(
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
            replica: &self.replica,
            request_id: &self.request_id,
            audience: &self.audience,
        };
        ledger.record(conf, &entry);
    }
}
