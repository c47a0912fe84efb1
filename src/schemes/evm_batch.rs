//! Local checks and EIP-712 hashing of the `batch-settlement` scheme on EVM: a payer escrows
//! tokens in an on-chain channel once (a `deposit` payload), then pays each request with a
//! cumulative voucher (`voucher` payload) the gateway checks without a network call; the
//! receiver side later claims many channels' latest vouchers in one transaction. Here: the
//! payload's shape, that its channel is the one the offer describes (receiver, receiver
//! authorizer, token, withdraw delay) and that its id is the configuration's EIP-712 hash,
//! and that the voucher recovers the committed payer authorizer. Channel state (what was
//! charged, what the chain holds) is the payment engine's.

use std::sync::{Arc, LazyLock};

use alloy::primitives::{Address, B256, U256, address, keccak256};
use alloy::sol_types::Eip712Domain;
use serde::Deserialize;
use serde_json::Value;

use super::{Checked, Scheme, SchemeError, SettlePlan};
use crate::x402::challenge::Offer;
use crate::x402::networks::{Asset, chain_id_of};
use crate::x402::types::RequirementsV2;

/// The channel contract, at the address every chain has it.
pub const BATCH_SETTLEMENT: Address = address!("0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");
/// The scheme's wire name.
pub const SCHEME: &str = "batch-settlement";
/// `extra` keys of a `batch-settlement` offer.
pub const RECEIVER_AUTHORIZER: &str = "receiverAuthorizer";
pub const WITHDRAW_DELAY: &str = "withdrawDelay";
pub const MIN_DEPOSIT: &str = "minDeposit";
/// Present (`"permit2"`) when deposits go through Permit2 instead of ERC-3009.
pub const ASSET_TRANSFER_METHOD: &str = "assetTransferMethod";
/// Bounds the channel contract puts on a channel's withdraw delay (seconds).
pub const MIN_WITHDRAW_DELAY: u64 = 900;
pub const MAX_WITHDRAW_DELAY: u64 = 2_592_000;

static CHANNEL_CONFIG_TYPEHASH: LazyLock<B256> = LazyLock::new(|| {
    keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)",
    )
});
static VOUCHER_TYPEHASH: LazyLock<B256> =
    LazyLock::new(|| keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)"));
static REFUND_TYPEHASH: LazyLock<B256> =
    LazyLock::new(|| keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)"));
static CLAIM_ENTRY_TYPEHASH: LazyLock<B256> = LazyLock::new(|| {
    keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)")
});
static CLAIM_BATCH_TYPEHASH: LazyLock<B256> = LazyLock::new(|| {
    keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)",
    )
});

/// The channel contract's EIP-712 domain on a chain.
pub fn domain_separator(chain_id: u64) -> B256 {
    Eip712Domain::new(
        Some("x402 Batch Settlement".into()),
        Some("1".into()),
        Some(U256::from(chain_id)),
        Some(BATCH_SETTLEMENT),
        None,
    )
    .separator()
}

/// A channel's immutable configuration, as the payer committed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    pub payer: Address,
    pub payer_authorizer: Address,
    pub receiver: Address,
    pub receiver_authorizer: Address,
    pub token: Address,
    pub withdraw_delay: u64,
    pub salt: B256,
}

fn word_address(out: &mut Vec<u8>, a: &Address) {
    out.extend_from_slice(&[0u8; 12]);
    out.extend_from_slice(a.as_slice());
}

fn word_u128(out: &mut Vec<u8>, v: u128) {
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&v.to_be_bytes());
}

impl ChannelConfig {
    /// The channel's id: the EIP-712 hash of this configuration in the contract's domain.
    pub fn id(&self, separator: &B256) -> B256 {
        let mut data = Vec::with_capacity(7 * 32);
        word_address(&mut data, &self.payer);
        word_address(&mut data, &self.payer_authorizer);
        word_address(&mut data, &self.receiver);
        word_address(&mut data, &self.receiver_authorizer);
        word_address(&mut data, &self.token);
        data.extend_from_slice(&U256::from(self.withdraw_delay).to_be_bytes::<32>());
        data.extend_from_slice(self.salt.as_slice());
        super::eip712_digest(separator, &CHANNEL_CONFIG_TYPEHASH, &data)
    }

    /// The configuration as the wire and the contract calls carry it (checksummed addresses,
    /// the delay as a number, the salt in hex).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "payer": self.payer.to_checksum(None),
            "payerAuthorizer": self.payer_authorizer.to_checksum(None),
            "receiver": self.receiver.to_checksum(None),
            "receiverAuthorizer": self.receiver_authorizer.to_checksum(None),
            "token": self.token.to_checksum(None),
            "withdrawDelay": self.withdraw_delay,
            "salt": format!("{:#x}", self.salt),
        })
    }
}

/// What a payer signs for each request: the channel may claim up to `max_claimable` in total.
pub fn voucher_digest(separator: &B256, channel_id: &B256, max_claimable: u128) -> B256 {
    let mut data = Vec::with_capacity(64);
    data.extend_from_slice(channel_id.as_slice());
    word_u128(&mut data, max_claimable);
    super::eip712_digest(separator, &VOUCHER_TYPEHASH, &data)
}

/// What the receiver authorizer signs to return `amount` of unclaimed escrow at `nonce`.
pub fn refund_digest(separator: &B256, channel_id: &B256, nonce: u64, amount: u128) -> B256 {
    let mut data = Vec::with_capacity(96);
    data.extend_from_slice(channel_id.as_slice());
    data.extend_from_slice(&U256::from(nonce).to_be_bytes::<32>());
    word_u128(&mut data, amount);
    super::eip712_digest(separator, &REFUND_TYPEHASH, &data)
}

/// One row of a claim: a channel's latest voucher and the total it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimEntry {
    pub channel_id: B256,
    pub max_claimable: u128,
    pub total_claimed: u128,
}

/// What the receiver authorizer signs for `claimWithSignature` over `entries`, in order.
pub fn claim_batch_digest(separator: &B256, entries: &[ClaimEntry]) -> B256 {
    let mut hashes = Vec::with_capacity(entries.len() * 32);
    for e in entries {
        let mut row = Vec::with_capacity(4 * 32);
        row.extend_from_slice(CLAIM_ENTRY_TYPEHASH.as_slice());
        row.extend_from_slice(e.channel_id.as_slice());
        word_u128(&mut row, e.max_claimable);
        word_u128(&mut row, e.total_claimed);
        hashes.extend_from_slice(keccak256(&row).as_slice());
    }
    let root = keccak256(&hashes);
    super::eip712_digest(separator, &CLAIM_BATCH_TYPEHASH, root.as_slice())
}

/// Why a `batch-settlement` payment fails a local check. Reason codes are the reference
/// implementation's, so clients can act on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("payload is not a batch-settlement deposit, voucher or refund: {0}")]
    Payload(String),
    #[error("the channel pays another receiver")]
    ReceiverMismatch,
    #[error("the channel names another receiver authorizer")]
    ReceiverAuthorizerMismatch,
    #[error("the channel escrows another token")]
    TokenMismatch,
    #[error("the channel's withdraw delay is not the offered one")]
    WithdrawDelayMismatch,
    #[error("the channel id is not a 32-byte hex string")]
    ChannelIdInvalid,
    #[error("the channel id is not the hash of the channel's configuration")]
    ChannelIdMismatch,
    #[error("the voucher is not signed by the channel's payer authorizer")]
    VoucherSignature,
    #[error("the voucher's cumulative amount does not match what this channel was charged")]
    CumulativeMismatch,
    #[error("the voucher's cumulative amount exceeds the channel's balance")]
    CumulativeExceedsBalance,
    #[error("the voucher's cumulative amount is not above what was already claimed")]
    CumulativeBelowClaimed,
    #[error("another request on this channel is being processed")]
    ChannelBusy,
    #[error("no deposit is known for this channel: deposit first")]
    MissingChannel,
    #[error("the deposit is below the minimum this offer asks")]
    DepositBelowMinimum,
    #[error("the refund amount is not a positive integer")]
    RefundAmountInvalid,
    #[error("the channel holds nothing that was not charged: nothing to refund")]
    RefundNoBalance,
}

impl BatchError {
    /// Stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            BatchError::Payload(_) => "invalid_batch_settlement_evm_payload_type",
            BatchError::ReceiverMismatch => "invalid_batch_settlement_evm_receiver_mismatch",
            BatchError::ReceiverAuthorizerMismatch => {
                "invalid_batch_settlement_evm_receiver_authorizer_mismatch"
            }
            BatchError::TokenMismatch => "invalid_batch_settlement_evm_token_mismatch",
            BatchError::WithdrawDelayMismatch => {
                "invalid_batch_settlement_evm_withdraw_delay_mismatch"
            }
            BatchError::ChannelIdInvalid => "invalid_batch_settlement_evm_channel_id_invalid",
            BatchError::ChannelIdMismatch => "invalid_batch_settlement_evm_channel_id_mismatch",
            BatchError::VoucherSignature => "invalid_batch_settlement_evm_voucher_signature",
            BatchError::CumulativeMismatch => {
                "invalid_batch_settlement_evm_cumulative_amount_mismatch"
            }
            BatchError::CumulativeExceedsBalance => {
                "invalid_batch_settlement_evm_cumulative_exceeds_balance"
            }
            BatchError::CumulativeBelowClaimed => {
                "invalid_batch_settlement_evm_cumulative_below_claimed"
            }
            BatchError::ChannelBusy => "invalid_batch_settlement_evm_channel_busy",
            BatchError::MissingChannel => "invalid_batch_settlement_evm_missing_channel",
            BatchError::DepositBelowMinimum => {
                "invalid_batch_settlement_evm_deposit_below_min_deposit"
            }
            BatchError::RefundAmountInvalid => "invalid_batch_settlement_evm_refund_amount_invalid",
            BatchError::RefundNoBalance => "invalid_batch_settlement_evm_refund_no_balance",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigJson {
    payer: String,
    payer_authorizer: String,
    receiver: String,
    receiver_authorizer: String,
    token: String,
    withdraw_delay: Value,
    salt: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VoucherJson {
    channel_id: String,
    max_claimable_amount: String,
    signature: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DepositJson {
    amount: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PayloadJson {
    #[serde(rename = "type")]
    kind: String,
    channel_config: ConfigJson,
    voucher: VoucherJson,
    #[serde(default)]
    deposit: Option<DepositJson>,
    /// A refund's amount (absent: all the escrow not charged).
    #[serde(default)]
    amount: Option<Value>,
}

/// What a `batch-settlement` payload asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Open or top up the channel (the facilitator deposits on chain), paying this request
    /// with the voucher that comes with it.
    Deposit { amount: u128 },
    /// Pay this request from the channel's escrow.
    Voucher,
    /// Ask for escrow not charged back: `amount`, or (`None`) all of it.
    Refund { amount: Option<u128> },
}

/// A payload that passed every local check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPayment {
    pub kind: Kind,
    pub config: ChannelConfig,
    pub channel_id: B256,
    /// The voucher's cumulative ceiling.
    pub max_claimable: u128,
    /// The voucher's signature (hex, as sent).
    pub signature: String,
    /// Whether the voucher's signature was recovered here (false: the payer authorizer is
    /// zero, the payer is checked by ERC-1271 through a facilitator).
    pub signature_checked: bool,
}

fn addr(s: &str) -> Option<Address> {
    (s.len() == 42 && s.starts_with("0x"))
        .then(|| s.parse().ok())
        .flatten()
}

fn uint128(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn bytes32(s: &str) -> Option<B256> {
    (s.len() == 66 && s.starts_with("0x") && s[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// The offer's receiver authorizer and withdraw delay.
fn offered(req: &RequirementsV2) -> Option<(Address, u64)> {
    let authorizer = req
        .extra
        .get(RECEIVER_AUTHORIZER)
        .and_then(Value::as_str)
        .and_then(addr)?;
    let delay = req.extra.get(WITHDRAW_DELAY).and_then(Value::as_u64)?;
    Some((authorizer, delay))
}

/// Whether the payload and its parts are JSON objects: derived structs would also read arrays
/// by position, and what is forwarded or edited later must be what the spec describes.
fn objects(payload: &Value) -> bool {
    let Some(o) = payload.as_object() else {
        return false;
    };
    ["channelConfig", "voucher"]
        .iter()
        .all(|k| o.get(*k).is_none_or(Value::is_object))
        && o.get("deposit")
            .is_none_or(|d| d.is_object() || d.is_null())
}

/// Every local check of a `batch-settlement` payload against the gateway's own offer.
pub fn check(
    payload: &Value,
    req: &RequirementsV2,
    separator: &B256,
) -> Result<BatchPayment, BatchError> {
    let bad = |m: &str| BatchError::Payload(m.to_owned());
    if !objects(payload) {
        return Err(bad(
            "the payload and its channelConfig, voucher and deposit are objects",
        ));
    }
    let p = PayloadJson::deserialize(payload).map_err(|e| BatchError::Payload(e.to_string()))?;
    let c = &p.channel_config;
    let config = ChannelConfig {
        payer: addr(&c.payer).ok_or_else(|| bad("payer is not an address"))?,
        payer_authorizer: addr(&c.payer_authorizer)
            .ok_or_else(|| bad("payerAuthorizer is not an address"))?,
        receiver: addr(&c.receiver).ok_or(BatchError::ReceiverMismatch)?,
        receiver_authorizer: addr(&c.receiver_authorizer)
            .ok_or(BatchError::ReceiverAuthorizerMismatch)?,
        token: addr(&c.token).ok_or(BatchError::TokenMismatch)?,
        withdraw_delay: c
            .withdraw_delay
            .as_u64()
            .ok_or(BatchError::WithdrawDelayMismatch)?,
        salt: bytes32(&c.salt).ok_or_else(|| bad("salt is not 32 bytes of hex"))?,
    };
    if config.payer == Address::ZERO {
        return Err(bad("payer is the zero address"));
    }
    if Some(config.receiver) != addr(&req.pay_to) {
        return Err(BatchError::ReceiverMismatch);
    }
    // An offer without them does not compile; a payload cannot match it.
    let (authorizer, delay) = offered(req).ok_or(BatchError::ReceiverAuthorizerMismatch)?;
    if config.receiver_authorizer != authorizer {
        return Err(BatchError::ReceiverAuthorizerMismatch);
    }
    if Some(config.token) != addr(&req.asset) {
        return Err(BatchError::TokenMismatch);
    }
    if config.withdraw_delay != delay {
        return Err(BatchError::WithdrawDelayMismatch);
    }
    let claimed_id = bytes32(&p.voucher.channel_id).ok_or(BatchError::ChannelIdInvalid)?;
    let channel_id = config.id(separator);
    if claimed_id != channel_id {
        return Err(BatchError::ChannelIdMismatch);
    }
    let max_claimable = uint128(&p.voucher.max_claimable_amount)
        .ok_or_else(|| bad("voucher.maxClaimableAmount is not a uint128"))?;
    let kind = match p.kind.as_str() {
        "voucher" => Kind::Voucher,
        "refund" => {
            let amount = match &p.amount {
                None => None,
                Some(Value::String(a)) => Some(
                    uint128(a)
                        .filter(|a| *a > 0)
                        .ok_or(BatchError::RefundAmountInvalid)?,
                ),
                Some(_) => return Err(BatchError::RefundAmountInvalid),
            };
            Kind::Refund { amount }
        }
        "deposit" => {
            let amount = p
                .deposit
                .as_ref()
                .and_then(|d| uint128(&d.amount))
                .filter(|a| *a > 0)
                .ok_or_else(|| bad("deposit.amount is not a positive uint128"))?;
            Kind::Deposit { amount }
        }
        other => return Err(BatchError::Payload(format!("unknown type `{other}`"))),
    };
    let signature = p.voucher.signature;
    let signature_checked = config.payer_authorizer != Address::ZERO;
    if signature_checked {
        let raw = hex::decode(signature.trim_start_matches("0x"))
            .map_err(|_| BatchError::VoucherSignature)?;
        let digest = voucher_digest(separator, &channel_id, max_claimable);
        if super::recover_low_s(&raw, &digest) != Some(config.payer_authorizer) {
            return Err(BatchError::VoucherSignature);
        }
    }
    Ok(BatchPayment {
        kind,
        config,
        channel_id,
        max_claimable,
        signature,
        signature_checked,
    })
}

/// The `batch-settlement` scheme on EVM networks.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchEvm;

impl Scheme for BatchEvm {
    fn id(&self) -> &'static str {
        SCHEME
    }

    /// `extra`: the token's EIP-712 name and version (ERC-3009 deposits); the receiver
    /// authorizer, withdraw delay and minimum deposit are added by the configuration. The
    /// domain separator kept is the channel contract's on the asset's chain.
    fn offer(
        &self,
        asset: Arc<Asset>,
        _v1_network: Option<String>,
        amount: u128,
        pay_to: &str,
        max_timeout_seconds: u64,
    ) -> Offer {
        let extra = super::token_domain_extra(&asset);
        let requirements = RequirementsV2 {
            scheme: SCHEME.into(),
            network: asset.network.clone(),
            amount: amount.to_string(),
            asset: asset.address.clone(),
            pay_to: pay_to.to_owned(),
            max_timeout_seconds,
            extra,
        };
        let separator = chain_id_of(&asset.network).map(domain_separator);
        Offer {
            asset,
            // v2 only: v1 clients know no `batch-settlement`.
            v1_network: None,
            requirements,
            eip712_separator: separator,
        }
    }

    fn check(&self, payload: &Value, offer: &Offer, _now: u64) -> Result<Checked, SchemeError> {
        let separator = offer.eip712_separator.ok_or(SchemeError::Unusable)?;
        let p = check(payload, &offer.requirements, &separator)?;
        Ok(Checked {
            payer: p.config.payer.to_checksum(None),
            valid_before: u64::MAX,
            nonce: format!("{:#x}", p.channel_id),
            signature_checked: p.signature_checked,
        })
    }

    fn settle_plan(&self) -> SettlePlan {
        SettlePlan::Channel
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;

    const PAYER_KEY: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";

    fn config() -> ChannelConfig {
        let payer: Address = address!("0x90F79bf6EB2c4f870365E785982E1f101E93b906");
        ChannelConfig {
            payer,
            payer_authorizer: payer,
            receiver: address!("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
            receiver_authorizer: address!("0x976EA74026E726554dB657fA54763abd0C3a0aa9"),
            token: address!("0x5FbDB2315678afecb367f032d93F642f64180aa3"),
            withdraw_delay: 900,
            salt: B256::with_last_byte(1),
        }
    }

    fn requirements() -> RequirementsV2 {
        let mut extra = serde_json::Map::new();
        extra.insert(
            RECEIVER_AUTHORIZER.into(),
            "0x976EA74026E726554dB657fA54763abd0C3a0aa9".into(),
        );
        extra.insert(WITHDRAW_DELAY.into(), 900.into());
        RequirementsV2 {
            scheme: SCHEME.into(),
            network: "eip155:31337".into(),
            amount: "10000".into(),
            asset: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
            max_timeout_seconds: 300,
            extra,
        }
    }

    // Values computed by the reference @x402/evm batch-settlement package (computeChannelId,
    // signVoucher, viem hashTypedData) for the configuration above on chain 31337.
    const CHANNEL_ID: &str = "0xd5a090f333ed89caa3b5a238069f3c242acc02d32bfb670ec35457e3c53f5e98";
    const VOUCHER_SIG: &str = "0x98c6afb3e90554634cf0fe791ec99b18525c24c45b08f49ae7bd6ce6b7158b0443149df114950ee009e0264acca16e9b665e5bf001bced76216f5d330799b9521c";

    #[test]
    fn hashes_match_the_reference_package() {
        let sep = domain_separator(31337);
        let id = config().id(&sep);
        assert_eq!(format!("{id:#x}"), CHANNEL_ID);
        assert_eq!(
            format!("{:#x}", voucher_digest(&sep, &id, 30_000)),
            "0x73ea7b90fc00240d7c9e5f51f78595381c498190b405366ae9d73c447bfdc27a"
        );
        let entry = ClaimEntry {
            channel_id: id,
            max_claimable: 30_000,
            total_claimed: 20_000,
        };
        assert_eq!(
            format!("{:#x}", claim_batch_digest(&sep, &[entry])),
            "0x7940605d63ccb3af8cb9f2dafa5029517ad51b859e76126af18658aca24a73a4"
        );
        assert_eq!(
            format!("{:#x}", refund_digest(&sep, &id, 2, 5_000)),
            "0x5b23259ffcb75822f95e224277dfbee3290a558223f31b8287c6c81f097ae969"
        );
    }

    fn payload(kind: &str, max: &str, sig: &str, edit: impl FnOnce(&mut Value)) -> Value {
        let mut v = serde_json::json!({
            "type": kind,
            "channelConfig": config().to_json(),
            "voucher": {"channelId": CHANNEL_ID, "maxClaimableAmount": max, "signature": sig},
            "deposit": {"amount": "1000000", "authorization": {}},
        });
        edit(&mut v);
        v
    }

    #[test]
    fn a_reference_voucher_passes_and_each_mismatch_has_its_reason() {
        let sep = domain_separator(31337);
        let req = requirements();
        let ok = check(
            &payload("voucher", "30000", VOUCHER_SIG, |_| {}),
            &req,
            &sep,
        )
        .unwrap();
        assert_eq!(ok.kind, Kind::Voucher);
        assert_eq!(ok.max_claimable, 30_000);
        assert!(ok.signature_checked);
        let dep = check(
            &payload("deposit", "30000", VOUCHER_SIG, |_| {}),
            &req,
            &sep,
        )
        .unwrap();
        assert_eq!(dep.kind, Kind::Deposit { amount: 1_000_000 });

        let reason = |v: Value| check(&v, &req, &sep).unwrap_err().reason();
        // Arrays a derived struct would read by position are no payload, whole or in part.
        let positional =
            |v: &Value| Value::Array(v.as_object().unwrap().values().cloned().collect());
        let good = payload("voucher", "30000", VOUCHER_SIG, |_| {});
        for bad in [
            positional(&good),
            payload("voucher", "30000", VOUCHER_SIG, |v| {
                v["voucher"] = positional(&v["voucher"]);
            }),
            payload("voucher", "30000", VOUCHER_SIG, |v| {
                v["channelConfig"] = positional(&v["channelConfig"]);
            }),
            payload("deposit", "30000", VOUCHER_SIG, |v| {
                v["deposit"] = positional(&v["deposit"]);
            }),
        ] {
            assert_eq!(reason(bad), "invalid_batch_settlement_evm_payload_type");
        }
        // Signed for 30000, claimed as 40000.
        assert_eq!(
            reason(payload("voucher", "40000", VOUCHER_SIG, |_| {})),
            "invalid_batch_settlement_evm_voucher_signature"
        );
        let other = PrivateKeySigner::random();
        let sig = other
            .sign_hash_sync(&voucher_digest(&sep, &config().id(&sep), 30_000))
            .unwrap();
        let forged = format!("0x{}", hex::encode(sig.as_bytes()));
        assert_eq!(
            reason(payload("voucher", "30000", &forged, |_| {})),
            "invalid_batch_settlement_evm_voucher_signature"
        );
        assert_eq!(
            reason(payload("voucher", "30000", VOUCHER_SIG, |v| {
                v["channelConfig"]["receiver"] = "0x0000000000000000000000000000000000000001".into()
            })),
            "invalid_batch_settlement_evm_receiver_mismatch"
        );
        assert_eq!(
            reason(payload("voucher", "30000", VOUCHER_SIG, |v| {
                v["channelConfig"]["receiverAuthorizer"] =
                    "0x0000000000000000000000000000000000000001".into()
            })),
            "invalid_batch_settlement_evm_receiver_authorizer_mismatch"
        );
        assert_eq!(
            reason(payload("voucher", "30000", VOUCHER_SIG, |v| {
                v["channelConfig"]["token"] = "0x0000000000000000000000000000000000000001".into()
            })),
            "invalid_batch_settlement_evm_token_mismatch"
        );
        assert_eq!(
            reason(payload("voucher", "30000", VOUCHER_SIG, |v| {
                v["channelConfig"]["withdrawDelay"] = 901.into()
            })),
            "invalid_batch_settlement_evm_withdraw_delay_mismatch"
        );
        // Another salt is another channel: the id no longer binds.
        assert_eq!(
            reason(payload("voucher", "30000", VOUCHER_SIG, |v| {
                v["channelConfig"]["salt"] = format!("{:#x}", B256::with_last_byte(2)).into()
            })),
            "invalid_batch_settlement_evm_channel_id_mismatch"
        );
        assert_eq!(
            reason(payload("voucher", "30000", VOUCHER_SIG, |v| {
                v["voucher"]["channelId"] = "0x12".into()
            })),
            "invalid_batch_settlement_evm_channel_id_invalid"
        );
        for bad in [
            payload("coupon", "30000", VOUCHER_SIG, |_| {}),
            payload("voucher", "-1", VOUCHER_SIG, |_| {}),
            payload(
                "voucher",
                "340282366920938463463374607431768211456",
                VOUCHER_SIG,
                |_| {},
            ),
            payload("deposit", "30000", VOUCHER_SIG, |v| {
                v["deposit"]["amount"] = "0".into()
            }),
            payload("voucher", "30000", VOUCHER_SIG, |v| {
                v["channelConfig"]["payer"] = "0x0000000000000000000000000000000000000000".into()
            }),
            serde_json::json!([1, 2]),
            serde_json::json!({"type": "voucher"}),
        ] {
            assert_eq!(reason(bad), "invalid_batch_settlement_evm_payload_type");
        }
    }

    #[test]
    fn a_zero_payer_authorizer_leaves_the_signature_to_the_facilitator() {
        let sep = domain_separator(31337);
        let mut c = config();
        c.payer_authorizer = Address::ZERO;
        let id = c.id(&sep);
        let v = serde_json::json!({
            "type": "voucher",
            "channelConfig": c.to_json(),
            "voucher": {"channelId": format!("{id:#x}"), "maxClaimableAmount": "10", "signature": "0x"},
        });
        let p = check(&v, &requirements(), &sep).unwrap();
        assert!(!p.signature_checked);
        assert_eq!(p.channel_id, id);
    }

    #[test]
    fn the_payer_key_signs_what_the_reference_signs() {
        let key: PrivateKeySigner = PAYER_KEY.parse().unwrap();
        let sep = domain_separator(31337);
        let sig = key
            .sign_hash_sync(&voucher_digest(&sep, &config().id(&sep), 30_000))
            .unwrap();
        assert_eq!(format!("0x{}", hex::encode(sig.as_bytes())), VOUCHER_SIG);
    }
}
