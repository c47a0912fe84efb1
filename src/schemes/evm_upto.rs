//! Local checks of an `upto` EVM payment (Permit2 `PermitWitnessTransferFrom` for the x402
//! `upto` proxy): the payer signs a ceiling, the gateway charges what the response cost (at
//! most the ceiling) after the origin answered. Checked here, cheapest first: token, ceiling,
//! spender, recipient, facilitator, time window, nonce, and that the EIP-712 signature
//! recovers the payer.

use std::sync::{Arc, LazyLock};

use alloy::primitives::{Address, B256, U256, address, keccak256};
use alloy::sol_types::{Eip712Domain, SolStruct};
use serde::Deserialize;
use serde_json::Value;

use super::{Checked, Scheme, SchemeError, SettlePlan, Window};
use crate::x402::challenge::Offer;
use crate::x402::networks::{Asset, chain_id_of};
use crate::x402::types::RequirementsV2;

/// Permit2, at the address every chain has it.
pub const PERMIT2: Address = address!("0x000000000022D473030F116dDEE9F6B43aC78BA3");
/// The x402 `upto` proxy: the spender payers sign for.
pub const UPTO_PROXY: Address = address!("0x4020A4f3b7b90ccA423B9fabCc0CE57C6C240002");
/// The `extra` key naming the facilitator allowed to settle.
pub const FACILITATOR_ADDRESS: &str = "facilitatorAddress";

alloy::sol! {
    /// Permit2's token permission.
    #[derive(Debug)]
    struct TokenPermissions {
        address token;
        uint256 amount;
    }

    /// The `upto` witness: who is paid, who may settle, from when.
    #[derive(Debug)]
    struct Witness {
        address to;
        address facilitator;
        uint256 validAfter;
    }

    /// The typed message an `upto` payer signs.
    #[derive(Debug)]
    struct PermitWitnessTransferFrom {
        TokenPermissions permitted;
        address spender;
        uint256 nonce;
        uint256 deadline;
        Witness witness;
    }
}

alloy::sol! {
    /// The `upto` proxy's settlement calls (what a settling transaction's input decodes to).
    #[allow(missing_docs)]
    interface IUptoProxy {
        struct Permitted { address token; uint256 amount; }
        struct ProxyWitness { address to; address facilitator; uint256 validAfter; }
        struct PermitTransferFrom { Permitted permitted; uint256 nonce; uint256 deadline; }
        struct EIP2612Permit { uint256 value; uint256 deadline; bytes32 r; bytes32 s; uint8 v; }
        function settle(PermitTransferFrom permit, uint256 amount, address owner, ProxyWitness witness, bytes signature) external;
        function settleWithPermit(EIP2612Permit permit2612, PermitTransferFrom permit, uint256 amount, address owner, ProxyWitness witness, bytes signature) external;
    }
}

/// Whether a transaction's `input` is an `upto` settlement of exactly this payment: the
/// payer's permit `nonce` on `token`, `amount` to `pay_to`.
pub fn settles(
    input: &[u8],
    token: Address,
    payer: Address,
    pay_to: Address,
    nonce: U256,
    amount: U256,
) -> bool {
    use alloy::sol_types::SolCall;
    let check = |permit: &IUptoProxy::PermitTransferFrom,
                 a: U256,
                 owner: Address,
                 w: &IUptoProxy::ProxyWitness| {
        permit.nonce == nonce
            && permit.permitted.token == token
            && a == amount
            && owner == payer
            && w.to == pay_to
    };
    if let Ok(c) = IUptoProxy::settleCall::abi_decode(input) {
        return check(&c.permit, c.amount, c.owner, &c.witness);
    }
    if let Ok(c) = IUptoProxy::settleWithPermitCall::abi_decode(input) {
        return check(&c.permit, c.amount, c.owner, &c.witness);
    }
    false
}

/// The `upto` scheme on EVM networks.
#[derive(Debug, Clone, Copy, Default)]
pub struct UptoEvm;

/// Why an `upto` payment fails a local check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UptoError {
    #[error("payload is not a Permit2 authorization with a signature: {0}")]
    Payload(String),
    #[error("the permit is for another token")]
    TokenMismatch,
    #[error("the permit's amount is not the offered ceiling")]
    AmountMismatch,
    #[error("the permit's spender is not the upto proxy")]
    SpenderMismatch,
    #[error("the witness pays another recipient")]
    RecipientMismatch,
    #[error("the witness names another facilitator")]
    FacilitatorMismatch,
    #[error("the permit is not valid yet")]
    NotYetValid,
    #[error("the permit expires too soon or has expired")]
    Expired,
    #[error("the permit is valid for longer than maxTimeoutSeconds allows")]
    TooLong,
    #[error("the signature does not recover the payer")]
    BadSignature,
}

impl UptoError {
    /// Stable reason code (the reference facilitator's where it has one).
    pub fn reason(&self) -> &'static str {
        match self {
            UptoError::Payload(_) => "invalid_payload",
            UptoError::TokenMismatch => "permit2_token_mismatch",
            UptoError::AmountMismatch => "permit2_amount_mismatch",
            UptoError::SpenderMismatch => "invalid_permit2_spender",
            UptoError::RecipientMismatch => "invalid_permit2_recipient_mismatch",
            UptoError::FacilitatorMismatch => "invalid_upto_evm_facilitator_mismatch",
            UptoError::NotYetValid => "permit2_not_yet_valid",
            UptoError::Expired => "permit2_deadline_expired",
            UptoError::TooLong => "authorization_validity_too_long",
            UptoError::BadSignature => "invalid_permit2_signature",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Permitted {
    token: String,
    amount: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WitnessJson {
    to: String,
    facilitator: String,
    valid_after: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Authorization {
    from: String,
    permitted: Permitted,
    spender: String,
    nonce: String,
    deadline: String,
    witness: WitnessJson,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UptoPayload {
    signature: String,
    permit2_authorization: Authorization,
}

/// Permit2's EIP-712 domain on a chain (no version).
fn permit2_domain(chain_id: u64) -> Eip712Domain {
    Eip712Domain::new(
        Some("Permit2".into()),
        None,
        Some(U256::from(chain_id)),
        Some(PERMIT2),
        None,
    )
}

/// `keccak256` of the type string, once.
static TYPE_HASH: LazyLock<B256> =
    LazyLock::new(|| keccak256(PermitWitnessTransferFrom::eip712_encode_type().as_bytes()));

fn u256(s: &str) -> Option<U256> {
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    U256::from_str_radix(s, 10).ok()
}

fn addr(s: &str) -> Option<Address> {
    (s.len() == 42 && s.starts_with("0x"))
        .then(|| s.parse().ok())
        .flatten()
}

impl Scheme for UptoEvm {
    fn id(&self) -> &'static str {
        "upto"
    }

    /// `extra`: the token's EIP-712 name and version, `assetTransferMethod: permit2`; the
    /// facilitator's address is added by the configuration (it comes from the facilitator).
    /// The domain separator kept is Permit2's on the asset's chain.
    fn offer(
        &self,
        asset: Arc<Asset>,
        _v1_network: Option<String>,
        amount: u128,
        pay_to: &str,
        max_timeout_seconds: u64,
    ) -> Offer {
        let mut extra = super::token_domain_extra(&asset);
        extra.insert(
            "assetTransferMethod".into(),
            Value::String("permit2".into()),
        );
        let requirements = RequirementsV2 {
            scheme: "upto".into(),
            network: asset.network.clone(),
            amount: amount.to_string(),
            asset: asset.address.clone(),
            pay_to: pay_to.to_owned(),
            max_timeout_seconds,
            extra,
        };
        let separator = chain_id_of(&asset.network).map(|c| permit2_domain(c).separator());
        Offer {
            asset,
            // v2 only: v1 clients know no `upto`.
            v1_network: None,
            requirements,
            eip712_separator: separator,
        }
    }

    fn check(&self, payload: &Value, offer: &Offer, now: u64) -> Result<Checked, SchemeError> {
        let separator = offer.eip712_separator.ok_or(SchemeError::Unusable)?;
        Ok(check(payload, &offer.requirements, &separator, now)?)
    }

    fn settle_plan(&self) -> SettlePlan {
        SettlePlan::VerifyThenSettleMetered
    }
}

/// Every local check of an `upto` payload against the gateway's own requirements.
pub fn check(
    payload: &Value,
    req: &RequirementsV2,
    permit2_separator: &B256,
    now: u64,
) -> Result<Checked, UptoError> {
    let p = UptoPayload::deserialize(payload).map_err(|e| UptoError::Payload(e.to_string()))?;
    let a = &p.permit2_authorization;
    let from = addr(&a.from).ok_or_else(|| UptoError::Payload("from is not an address".into()))?;
    let token = addr(&a.permitted.token).ok_or(UptoError::TokenMismatch)?;
    if Some(token) != addr(&req.asset) {
        return Err(UptoError::TokenMismatch);
    }
    let amount = u256(&a.permitted.amount).ok_or(UptoError::AmountMismatch)?;
    if Some(amount) != u256(&req.amount) {
        return Err(UptoError::AmountMismatch);
    }
    let spender = addr(&a.spender).ok_or(UptoError::SpenderMismatch)?;
    if spender != UPTO_PROXY {
        return Err(UptoError::SpenderMismatch);
    }
    let to = addr(&a.witness.to).ok_or(UptoError::RecipientMismatch)?;
    if Some(to) != addr(&req.pay_to) {
        return Err(UptoError::RecipientMismatch);
    }
    let facilitator = addr(&a.witness.facilitator).ok_or(UptoError::FacilitatorMismatch)?;
    let ours = req
        .extra
        .get(FACILITATOR_ADDRESS)
        .and_then(Value::as_str)
        .and_then(addr);
    if ours != Some(facilitator) {
        return Err(UptoError::FacilitatorMismatch);
    }
    let valid_after = u256(&a.witness.valid_after).ok_or(UptoError::NotYetValid)?;
    let deadline = u256(&a.deadline)
        .and_then(|d| u64::try_from(d).ok())
        .ok_or(UptoError::Expired)?;
    let after = u64::try_from(valid_after).unwrap_or(u64::MAX);
    match super::window(after, deadline, now, req.max_timeout_seconds) {
        Window::Usable => {}
        Window::NotYetValid => return Err(UptoError::NotYetValid),
        Window::Expired => return Err(UptoError::Expired),
        Window::TooLong => return Err(UptoError::TooLong),
    }
    let nonce = u256(&a.nonce).ok_or_else(|| UptoError::Payload("nonce is not a number".into()))?;
    let sig_hex = p
        .signature
        .strip_prefix("0x")
        .ok_or(UptoError::BadSignature)?;
    let signature_checked = sig_hex.len() == 130;
    if signature_checked {
        let bytes = hex::decode(sig_hex).map_err(|_| UptoError::BadSignature)?;
        let msg = PermitWitnessTransferFrom {
            permitted: TokenPermissions { token, amount },
            spender,
            nonce,
            deadline: U256::from(deadline),
            witness: Witness {
                to,
                facilitator,
                validAfter: valid_after,
            },
        };
        let digest = super::eip712_digest(permit2_separator, &TYPE_HASH, &msg.eip712_encode_data());
        if super::recover_low_s(&bytes, &digest) != Some(from) {
            return Err(UptoError::BadSignature);
        }
    } else if sig_hex.len() < 130 || !sig_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UptoError::BadSignature);
    }
    Ok(Checked {
        payer: from.to_checksum(None),
        valid_before: deadline,
        nonce: format!("permit2:{nonce}"),
        signature_checked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;
    use serde_json::json;

    const FACILITATOR: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
    const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

    fn req(pay_to: &str) -> RequirementsV2 {
        let mut extra = serde_json::Map::new();
        extra.insert(FACILITATOR_ADDRESS.into(), json!(FACILITATOR));
        RequirementsV2 {
            scheme: "upto".into(),
            network: "eip155:31337".into(),
            amount: "50000".into(),
            asset: TOKEN.into(),
            pay_to: pay_to.into(),
            max_timeout_seconds: 300,
            extra,
        }
    }

    fn signed(
        key: &PrivateKeySigner,
        pay_to: Address,
        amount: u64,
        facilitator: Address,
        now: u64,
    ) -> Value {
        let msg = PermitWitnessTransferFrom {
            permitted: TokenPermissions {
                token: TOKEN.parse().expect("token"),
                amount: U256::from(amount),
            },
            spender: UPTO_PROXY,
            nonce: U256::from(7u64),
            deadline: U256::from(now + 200),
            witness: Witness {
                to: pay_to,
                facilitator,
                validAfter: U256::ZERO,
            },
        };
        let sig = key
            .sign_hash_sync(&msg.eip712_signing_hash(&permit2_domain(31337)))
            .expect("sign");
        json!({
            "signature": format!("0x{}", hex::encode(sig.as_bytes())),
            "permit2Authorization": {
                "from": key.address().to_checksum(None),
                "permitted": {"token": TOKEN, "amount": amount.to_string()},
                "spender": UPTO_PROXY.to_checksum(None),
                "nonce": "7",
                "deadline": (now + 200).to_string(),
                "witness": {"to": pay_to.to_checksum(None), "facilitator": facilitator.to_checksum(None), "validAfter": "0"},
            },
        })
    }

    #[test]
    fn a_permit_for_the_ceiling_recipient_and_facilitator_passes_and_others_do_not() {
        let key = PrivateKeySigner::random();
        let pay_to = PrivateKeySigner::random().address();
        let fac: Address = FACILITATOR.parse().expect("fac");
        let now = 1_900_000_000;
        let sep = permit2_domain(31337).separator();
        let r = req(&pay_to.to_checksum(None));
        let ok = check(&signed(&key, pay_to, 50_000, fac, now), &r, &sep, now).expect("valid");
        assert_eq!(ok.payer, key.address().to_checksum(None));
        assert_eq!(ok.nonce, "permit2:7");
        assert_eq!(
            check(&signed(&key, pay_to, 40_000, fac, now), &r, &sep, now),
            Err(UptoError::AmountMismatch)
        );
        let other = PrivateKeySigner::random().address();
        assert_eq!(
            check(&signed(&key, other, 50_000, fac, now), &r, &sep, now),
            Err(UptoError::RecipientMismatch)
        );
        assert_eq!(
            check(&signed(&key, pay_to, 50_000, other, now), &r, &sep, now),
            Err(UptoError::FacilitatorMismatch)
        );
        let mut forged = signed(&key, pay_to, 50_000, fac, now);
        forged["permit2Authorization"]["from"] = json!(other.to_checksum(None));
        assert_eq!(check(&forged, &r, &sep, now), Err(UptoError::BadSignature));
        assert_eq!(
            check(
                &signed(&key, pay_to, 50_000, fac, now),
                &r,
                &sep,
                now + 1_000
            ),
            Err(UptoError::Expired)
        );
    }
}
