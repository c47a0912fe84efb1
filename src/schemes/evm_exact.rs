//! Local checks of an `exact` EVM payment (EIP-3009 `transferWithAuthorization`), cheapest
//! first, one reason code each: recipient, amount, time window, nonce, and, for a 65-byte
//! signature, that the EIP-712 signature recovers the payer. Longer signatures (ERC-1271 and
//! ERC-6492 smart wallets) are left to the facilitator.

use std::sync::{Arc, LazyLock};

use alloy::primitives::{Address, B256, U256, keccak256};
use alloy::sol_types::{Eip712Domain, SolStruct};
use serde::Deserialize;
use serde_json::Value;

use super::{Checked, Scheme, SchemeError, SettlePlan, Window};
use crate::x402::challenge::Offer;
use crate::x402::networks::{Asset, chain_id_of};
use crate::x402::types::{ExactEvmPayload, RequirementsV2};

/// The `exact` scheme on EVM networks: an EIP-3009 `transferWithAuthorization` of exactly the
/// price, checked locally and settled by a facilitator.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExactEvm;

impl Scheme for ExactEvm {
    fn id(&self) -> &'static str {
        "exact"
    }

    /// `extra` is the token's EIP-712 domain `{name, version}`; the domain separator is
    /// computed here, once per configuration.
    fn offer(
        &self,
        asset: Arc<Asset>,
        v1_network: Option<String>,
        amount: u128,
        pay_to: &str,
        max_timeout_seconds: u64,
    ) -> Offer {
        let extra = super::token_domain_extra(&asset);
        let requirements = RequirementsV2 {
            scheme: "exact".into(),
            network: asset.network.clone(),
            amount: amount.to_string(),
            asset: asset.address.clone(),
            pay_to: pay_to.to_owned(),
            max_timeout_seconds,
            extra,
        };
        let chain_id = chain_id_of(&asset.network).unwrap_or(0);
        let eip712_separator = asset.address.parse().ok().map(|token| {
            domain(&asset.eip712_name, &asset.eip712_version, chain_id, token).separator()
        });
        Offer {
            asset,
            v1_network,
            requirements,
            eip712_separator,
        }
    }

    fn check(&self, payload: &Value, offer: &Offer, now: u64) -> Result<Checked, SchemeError> {
        // An asset address that does not parse: no signature can match it.
        let separator = offer.eip712_separator.ok_or(SchemeError::Unusable)?;
        Ok(check_with_separator(
            payload,
            &offer.requirements,
            &separator,
            now,
        )?)
    }

    fn settle_plan(&self) -> SettlePlan {
        SettlePlan::VerifyThenSettle
    }
}

alloy::sol! {
    /// The EIP-3009 typed message.
    #[derive(Debug)]
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// The facilitator needs at least this many seconds left to get a transaction mined.
pub const VALID_BEFORE_BUFFER_SECS: u64 = 6;
/// Clock skew tolerated between client and gateway when bounding `validBefore` from above.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Why an exact EVM payment fails a local check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExactError {
    #[error("payload is not an EIP-3009 authorization with a signature: {0}")]
    Payload(String),
    #[error("authorization `from` is not an address")]
    BadFrom,
    #[error("authorization recipient differs from payTo")]
    RecipientMismatch,
    #[error("authorization value is not a decimal integer")]
    BadValue,
    #[error("authorization value differs from the required amount")]
    ValueMismatch,
    #[error("authorization is not valid yet")]
    NotYetValid,
    #[error("authorization expires too soon or has expired")]
    Expired,
    #[error("authorization is valid for longer than maxTimeoutSeconds allows")]
    TooLong,
    #[error("nonce is not 32 bytes of hex")]
    BadNonce,
    #[error("signature is not hex")]
    BadSignatureEncoding,
    #[error("signature does not recover the payer")]
    BadSignature,
}

impl ExactError {
    /// Stable reason code (the x402 spec's where one exists).
    pub fn reason(&self) -> &'static str {
        match self {
            ExactError::Payload(_) | ExactError::BadFrom => "invalid_payload",
            ExactError::RecipientMismatch => "invalid_exact_evm_payload_recipient_mismatch",
            ExactError::BadValue | ExactError::ValueMismatch => {
                "invalid_exact_evm_payload_authorization_value_mismatch"
            }
            ExactError::NotYetValid => "invalid_exact_evm_payload_authorization_valid_after",
            ExactError::Expired => "invalid_exact_evm_payload_authorization_valid_before",
            ExactError::TooLong => "authorization_validity_too_long",
            ExactError::BadNonce => "invalid_exact_evm_payload_nonce",
            ExactError::BadSignatureEncoding | ExactError::BadSignature => {
                "invalid_exact_evm_payload_signature"
            }
        }
    }
}

fn parse_u256_decimal(s: &str) -> Option<U256> {
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    U256::from_str_radix(s, 10).ok()
}

fn parse_u64_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_address(s: &str) -> Option<Address> {
    let hex = s.strip_prefix("0x")?;
    if hex.len() != 40 {
        return None;
    }
    s.parse().ok()
}

/// The EIP-712 domain of an asset.
pub fn domain(name: &str, version: &str, chain_id: u64, token: Address) -> Eip712Domain {
    Eip712Domain::new(
        Some(name.to_owned().into()),
        Some(version.to_owned().into()),
        Some(U256::from(chain_id)),
        Some(token),
        None,
    )
}

/// `keccak256` of the EIP-712 type string of [`TransferWithAuthorization`], computed once.
static TYPE_HASH: LazyLock<B256> =
    LazyLock::new(|| keccak256(TransferWithAuthorization::eip712_encode_type().as_bytes()));

/// The EIP-712 digest a payer signs: `keccak256(0x1901 ‖ domainSeparator ‖ hashStruct(msg))`,
/// the same as `msg.eip712_signing_hash(domain)` with the domain separator and the type hash
/// computed once instead of on every request.
pub fn signing_hash(domain_separator: &B256, msg: &TransferWithAuthorization) -> B256 {
    super::eip712_digest(domain_separator, &TYPE_HASH, &msg.eip712_encode_data())
}

/// Runs every local check of `payload` against the gateway's own `req`. `domain` is the
/// token's EIP-712 domain; `now` is unix seconds.
pub fn check(
    payload: &Value,
    req: &RequirementsV2,
    domain: &Eip712Domain,
    now: u64,
) -> Result<Checked, ExactError> {
    check_with_separator(payload, req, &domain.separator(), now)
}

/// [`check`] with the token's EIP-712 domain separator already computed (see
/// [`crate::x402::challenge::Offer::eip712_separator`]).
pub fn check_with_separator(
    payload: &Value,
    req: &RequirementsV2,
    domain_separator: &B256,
    now: u64,
) -> Result<Checked, ExactError> {
    let p =
        ExactEvmPayload::deserialize(payload).map_err(|e| ExactError::Payload(e.to_string()))?;
    let a = &p.authorization;
    let from = parse_address(&a.from).ok_or(ExactError::BadFrom)?;
    let to = parse_address(&a.to).ok_or(ExactError::RecipientMismatch)?;
    let pay_to = parse_address(&req.pay_to).ok_or(ExactError::RecipientMismatch)?;
    if to != pay_to {
        return Err(ExactError::RecipientMismatch);
    }
    let value = parse_u256_decimal(&a.value).ok_or(ExactError::BadValue)?;
    let amount = parse_u256_decimal(&req.amount).ok_or(ExactError::ValueMismatch)?;
    if value != amount {
        return Err(ExactError::ValueMismatch);
    }
    let valid_after = parse_u64_decimal(&a.valid_after).ok_or(ExactError::NotYetValid)?;
    let valid_before = parse_u64_decimal(&a.valid_before).ok_or(ExactError::Expired)?;
    match super::window(valid_after, valid_before, now, req.max_timeout_seconds) {
        Window::Usable => {}
        Window::NotYetValid => return Err(ExactError::NotYetValid),
        Window::Expired => return Err(ExactError::Expired),
        Window::TooLong => return Err(ExactError::TooLong),
    }
    let nonce_hex = a.nonce.strip_prefix("0x").ok_or(ExactError::BadNonce)?;
    if nonce_hex.len() != 64 || !nonce_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ExactError::BadNonce);
    }
    let nonce: B256 = a.nonce.parse().map_err(|_| ExactError::BadNonce)?;
    let sig_hex = p
        .signature
        .strip_prefix("0x")
        .ok_or(ExactError::BadSignatureEncoding)?;
    if sig_hex.len() % 2 != 0 || !sig_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ExactError::BadSignatureEncoding);
    }
    let signature_checked = sig_hex.len() == 130;
    if signature_checked {
        let bytes = hex::decode(sig_hex).map_err(|_| ExactError::BadSignatureEncoding)?;
        let msg = TransferWithAuthorization {
            from,
            to,
            value,
            validAfter: U256::from(valid_after),
            validBefore: U256::from(valid_before),
            nonce,
        };
        // High-s signatures are malleable copies that EIP-3009 tokens refuse.
        let recovered = super::recover_low_s(&bytes, &signing_hash(domain_separator, &msg));
        if recovered != Some(from) {
            return Err(ExactError::BadSignature);
        }
    } else if sig_hex.len() < 130 {
        return Err(ExactError::BadSignature);
    }
    Ok(Checked {
        payer: from.to_checksum(None),
        valid_before,
        nonce: a.nonce.to_ascii_lowercase(),
        signature_checked,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use alloy::primitives::{Address, B256};
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;
    use serde_json::{Map, json};

    pub fn requirements(pay_to: Address, amount: &str) -> RequirementsV2 {
        RequirementsV2 {
            scheme: "exact".into(),
            network: "eip155:31337".into(),
            amount: amount.into(),
            asset: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            pay_to: pay_to.to_checksum(None),
            max_timeout_seconds: 300,
            extra: Map::new(),
        }
    }

    /// Signs an authorization the way x402 clients do.
    pub fn sign(
        key: &PrivateKeySigner,
        d: &Eip712Domain,
        to: Address,
        value: u64,
        valid_after: u64,
        valid_before: u64,
        nonce: B256,
    ) -> Value {
        let msg = TransferWithAuthorization {
            from: key.address(),
            to,
            value: U256::from(value),
            validAfter: U256::from(valid_after),
            validBefore: U256::from(valid_before),
            nonce,
        };
        let sig = key
            .sign_hash_sync(&msg.eip712_signing_hash(d))
            .expect("sign");
        json!({
            "signature": format!("0x{}", hex::encode(sig.as_bytes())),
            "authorization": {
                "from": key.address().to_checksum(None),
                "to": to.to_checksum(None),
                "value": value.to_string(),
                "validAfter": valid_after.to_string(),
                "validBefore": valid_before.to_string(),
                "nonce": format!("{nonce:#x}"),
            }
        })
    }

    #[test]
    fn signing_hash_is_eip712() {
        let token: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .expect("addr");
        let d = domain("Test USD", "1", 31337, token);
        let msg = TransferWithAuthorization {
            from: Address::repeat_byte(1),
            to: Address::repeat_byte(2),
            value: U256::from(10_000u64),
            validAfter: U256::from(1u64),
            validBefore: U256::from(2u64),
            nonce: B256::repeat_byte(3),
        };
        assert_eq!(
            signing_hash(&d.separator(), &msg),
            msg.eip712_signing_hash(&d)
        );
    }

    #[test]
    fn checks_in_order() {
        let key = PrivateKeySigner::random();
        let pay_to = Address::repeat_byte(0x11);
        let token: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .expect("addr");
        let d = domain("Test USD", "1", 31337, token);
        let now = 1_700_000_000;
        let nonce = B256::repeat_byte(7);
        let req = requirements(pay_to, "10000");
        let good = sign(&key, &d, pay_to, 10000, now - 600, now + 300, nonce);
        let ok = check(&good, &req, &d, now).expect("valid");
        assert_eq!(ok.payer, key.address().to_checksum(None));
        assert!(ok.signature_checked);

        let err = |v: Value| {
            check(&v, &req, &d, now)
                .map(|_| ())
                .expect_err("must be refused")
        };
        assert_eq!(
            err(sign(
                &key,
                &d,
                Address::repeat_byte(2),
                10000,
                now - 600,
                now + 300,
                nonce
            )),
            ExactError::RecipientMismatch
        );
        assert_eq!(
            err(sign(&key, &d, pay_to, 9999, now - 600, now + 300, nonce)),
            ExactError::ValueMismatch
        );
        assert_eq!(
            err(sign(&key, &d, pay_to, 10000, now + 10, now + 300, nonce)),
            ExactError::NotYetValid
        );
        assert_eq!(
            err(sign(&key, &d, pay_to, 10000, now - 600, now + 5, nonce)),
            ExactError::Expired
        );
        assert_eq!(
            err(sign(
                &key,
                &d,
                pay_to,
                10000,
                now - 600,
                now + 10_000,
                nonce
            )),
            ExactError::TooLong
        );
        let other_domain = domain("USDC", "2", 31337, token);
        assert_eq!(
            err(sign(
                &key,
                &other_domain,
                pay_to,
                10000,
                now - 600,
                now + 300,
                nonce
            )),
            ExactError::BadSignature
        );
        let mut tampered = good.clone();
        tampered["authorization"]["nonce"] = json!("0x1234");
        assert_eq!(err(tampered), ExactError::BadNonce);
        let mut tampered = good.clone();
        tampered["authorization"]["value"] = json!("-10000");
        assert_eq!(err(tampered), ExactError::BadValue);
        let mut tampered = good.clone();
        tampered["authorization"]["from"] = json!(Address::repeat_byte(3).to_checksum(None));
        assert_eq!(err(tampered), ExactError::BadSignature);
        let mut long = good.clone();
        long["signature"] = json!(format!("0x{}", "ab".repeat(200)));
        assert!(check(&long, &req, &d, now).is_ok_and(|c| !c.signature_checked));
        let mut garbage = good;
        garbage["signature"] = json!("0xzz");
        assert_eq!(err(garbage), ExactError::BadSignatureEncoding);
    }
}
