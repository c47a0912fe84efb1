//! Payment schemes (`exact`, `upto`, `batch-settlement`): one trait, one file per scheme. A scheme builds the requirements it offers
//! and checks a payload against them locally, without I/O; the gate and the facilitators do the
//! rest (verify, settle) as the scheme's settlement plan says.

pub mod evm_batch;
pub mod evm_exact;
pub mod evm_upto;

use std::sync::Arc;

use alloy::primitives::{Address, B256, Signature, keccak256};
use serde_json::Value;

use crate::x402::challenge::Offer;
use crate::x402::networks::Asset;

pub use evm_batch::{BatchError, BatchEvm};
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
    #[error(transparent)]
    Batch(#[from] BatchError),
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
            SchemeError::Batch(e) => e.reason(),
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
    /// Channel payments (`batch-settlement`): a deposit goes through the facilitator's
    /// `/verify` and `/settle`; a voucher is checked here against the channel's state and
    /// claimed on chain later, with many others.
    Channel,
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

/// Where a signed validity window (`valid_after`..`valid_before`, unix seconds) stands at
/// `now` for an offer that allows `max_timeout` seconds: usable, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    Usable,
    NotYetValid,
    /// Ends too soon for a settlement to land, or has ended.
    Expired,
    /// Longer than the offer allows.
    TooLong,
}

pub(crate) fn window(valid_after: u64, valid_before: u64, now: u64, max_timeout: u64) -> Window {
    use evm_exact::{CLOCK_SKEW_SECS, VALID_BEFORE_BUFFER_SECS};
    if valid_after > now {
        Window::NotYetValid
    } else if valid_before < now.saturating_add(VALID_BEFORE_BUFFER_SECS) {
        Window::Expired
    } else if valid_before
        > now
            .saturating_add(max_timeout)
            .saturating_add(CLOCK_SKEW_SECS)
    {
        Window::TooLong
    } else {
        Window::Usable
    }
}

/// The EIP-712 digest `keccak256(0x1901 ‖ domainSeparator ‖ keccak256(typeHash ‖ data))`,
/// with the domain separator and the type hash computed once elsewhere.
pub(crate) fn eip712_digest(domain_separator: &B256, type_hash: &B256, data: &[u8]) -> B256 {
    let mut encoded = Vec::with_capacity(32 + data.len());
    encoded.extend_from_slice(type_hash.as_slice());
    encoded.extend_from_slice(data);
    let struct_hash = keccak256(&encoded);
    let mut digest = [0u8; 66];
    digest[0] = 0x19;
    digest[1] = 0x01;
    digest[2..34].copy_from_slice(domain_separator.as_slice());
    digest[34..].copy_from_slice(struct_hash.as_slice());
    keccak256(digest)
}

/// The signer of `digest` from a 65-byte signature, refusing high-s (malleable) copies.
///
/// Through alloy's consensus crypto (libsecp256k1, as `Signature::recover_*` with the
/// `secp256k1` feature): about 1 % fewer instructions per voucher, the same native time
/// (`benches/payment.rs`: `recover_gateway` beside `recover_only`).
pub(crate) fn recover_low_s(signature: &[u8], digest: &B256) -> Option<Address> {
    let sig = Signature::try_from(signature).ok()?;
    alloy::consensus::crypto::secp256k1::recover_signer(&sig, *digest).ok()
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

/// The `batch-settlement` scheme on EVM networks (channels, vouchers).
pub static BATCH: BatchEvm = BatchEvm;

/// The scheme named `id`, if the gateway speaks it.
pub fn by_id(id: &str) -> Option<&'static dyn Scheme> {
    match id {
        "exact" => Some(&EXACT),
        "upto" => Some(&UPTO),
        evm_batch::SCHEME => Some(&BATCH),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::U256;
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;

    use super::*;

    /// The order of secp256k1's group.
    const N: U256 = U256::from_be_bytes([
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFE, 0xBA, 0xAE, 0xDC, 0xE6, 0xAF, 0x48, 0xA0, 0x3B, 0xBF, 0xD2, 0x5E, 0x8C, 0xD0, 0x36,
        0x41, 0x41,
    ]);

    #[test]
    fn recovery_finds_the_signer_and_refuses_malleable_and_broken_signatures() {
        for i in 0..32u8 {
            let key = PrivateKeySigner::random();
            let digest = keccak256([i; 40]);
            let sig = key.sign_hash_sync(&digest).unwrap();
            let bytes = sig.as_bytes();
            // libsecp256k1 (used here) and the pure-Rust k256 agree, with `v` as 27/28 or 0/1.
            let k256 = sig.recover_from_prehash(&digest).unwrap();
            assert_eq!(Address::from_public_key(&k256), key.address());
            assert_eq!(recover_low_s(&bytes, &digest), Some(key.address()));
            let mut zero_one = bytes;
            zero_one[64] -= 27;
            assert_eq!(recover_low_s(&zero_one, &digest), Some(key.address()));
            // Another digest recovers someone else.
            let other = keccak256([i.wrapping_add(1); 40]);
            assert_ne!(recover_low_s(&bytes, &other), Some(key.address()));
            // The high-s twin (s' = n - s, parity flipped) is as valid on the curve, and refused.
            let twin = Signature::new(sig.r(), N - sig.s(), !sig.v());
            assert_eq!(
                twin.recover_address_from_prehash(&digest).unwrap(),
                key.address()
            );
            assert_eq!(recover_low_s(&twin.as_bytes(), &digest), None);
            // Wrong lengths, r = 0 and a recovery byte out of range are no signer.
            assert_eq!(recover_low_s(&bytes[..64], &digest), None);
            let mut zero_r = bytes;
            zero_r[..32].fill(0);
            assert_eq!(recover_low_s(&zero_r, &digest), None);
            let mut bad_v = bytes;
            bad_v[64] = 5;
            assert_eq!(recover_low_s(&bad_v, &digest), None);
        }
    }
}
