//! Payment schemes (`exact`, `upto`): one trait, one file per scheme. A scheme builds the requirements it offers
//! and checks a payload against them locally, without I/O; the gate and the facilitators do the
//! rest (verify, settle) as the scheme's settlement plan says.

pub mod evm_exact;
pub mod evm_upto;

use std::sync::Arc;

use serde_json::Value;

use crate::x402::challenge::Offer;
use crate::x402::networks::Asset;

pub use evm_exact::{ExactError, ExactEvm};
pub use evm_upto::{UptoError, UptoEvm};

/// What a scheme's local checks establish about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The payer, EIP-55 checksummed.
    pub payer: String,
    /// Unix seconds after which the payment can no longer settle.
    pub valid_before: u64,
    /// What makes this payment single-use (lower-case `0x…` EIP-3009 nonce for `exact`).
    pub nonce: String,
    /// Whether the signature was recovered locally or left to the facilitator.
    pub signature_checked: bool,
}

/// Why a payment fails a scheme's local checks. Each variant carries the scheme's own reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    #[error(transparent)]
    Exact(#[from] ExactError),
    #[error(transparent)]
    Upto(#[from] UptoError),
    /// The offer cannot be paid as configured (an asset address that does not parse).
    #[error("this offer cannot be paid")]
    Unusable,
}

impl SchemeError {
    /// Stable reason code (the x402 spec's where one exists).
    pub fn reason(&self) -> &'static str {
        match self {
            SchemeError::Exact(e) => e.reason(),
            SchemeError::Upto(e) => e.reason(),
            SchemeError::Unusable => "no_matching_requirements",
        }
    }
}

/// How a payment of a scheme is finished once the local checks pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlePlan {
    /// The facilitator's `/verify`, then `/settle` of the whole amount (`exact`).
    VerifyThenSettle,
    /// `/verify` of the ceiling, then `/settle` of what the response cost, at most the
    /// ceiling; nothing when it cost nothing (`upto`).
    VerifyThenSettleMetered,
}

/// A payment scheme.
pub trait Scheme: Send + Sync + std::fmt::Debug {
    /// The scheme's wire name (`exact`).
    fn id(&self) -> &'static str;

    /// The offer for `amount` atomic units of `asset` paid to `pay_to`, with what the checks
    /// need precomputed.
    fn offer(
        &self,
        asset: Arc<Asset>,
        v1_network: Option<String>,
        amount: u128,
        pay_to: &str,
        max_timeout_seconds: u64,
    ) -> Offer;

    /// Every local check of `payload` against `offer`, cheapest first; `now` is unix seconds.
    fn check(&self, payload: &Value, offer: &Offer, now: u64) -> Result<Checked, SchemeError>;

    /// What the facilitators do with a payment that passed the checks.
    fn settle_plan(&self) -> SettlePlan;
}

/// An offer's `extra` naming the token's EIP-712 domain (`name`, `version`).
pub fn token_domain_extra(asset: &Asset) -> serde_json::Map<String, Value> {
    let mut extra = serde_json::Map::new();
    extra.insert("name".into(), Value::String(asset.eip712_name.clone()));
    extra.insert(
        "version".into(),
        Value::String(asset.eip712_version.clone()),
    );
    extra
}

/// The `exact` scheme on EVM networks (EIP-3009).
pub static EXACT: ExactEvm = ExactEvm;

/// The `upto` scheme on EVM networks (Permit2, metered).
pub static UPTO: UptoEvm = UptoEvm;

/// The scheme named `id`, if the gateway speaks it.
pub fn by_id(id: &str) -> Option<&'static dyn Scheme> {
    match id {
        "exact" => Some(&EXACT),
        "upto" => Some(&UPTO),
        _ => None,
    }
}
