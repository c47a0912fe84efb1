//! Building x402 payments in the test process: EIP-3009 authorizations signed with a real key,
//! wrapped as v2 `PAYMENT-SIGNATURE` or v1 `X-PAYMENT` headers, so that a test can change
//! exactly one thing and keep the signature valid.

use alloy::primitives::{Address, B256, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolStruct;
use base64::Engine;
use serde_json::{Value, json};
use x402_gateway::schemes::evm_exact::{TransferWithAuthorization, domain};

/// The fields of one authorization.
#[derive(Debug, Clone)]
pub struct Auth {
    pub to: String,
    pub value: u128,
    pub valid_after: u64,
    pub valid_before: u64,
    pub nonce: B256,
}

/// 32 random bytes for an EIP-3009 nonce.
pub fn random_nonce() -> B256 {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    B256::from(out)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Auth {
    /// A valid authorization for `accepted` (a v2 requirements object).
    pub fn for_requirements(accepted: &Value) -> Auth {
        Auth {
            to: accepted["payTo"].as_str().expect("payTo").to_owned(),
            value: accepted["amount"]
                .as_str()
                .expect("amount")
                .parse()
                .expect("amount"),
            valid_after: now() - 600,
            valid_before: now() + 300,
            nonce: random_nonce(),
        }
    }
}

/// Signs `auth` with `key` for the token and chain of `accepted`.
pub fn signed_payload(key: &PrivateKeySigner, accepted: &Value, auth: &Auth) -> Value {
    let chain_id: u64 = accepted["network"]
        .as_str()
        .and_then(|n| n.strip_prefix("eip155:"))
        .expect("eip155")
        .parse()
        .expect("id");
    let token: Address = accepted["asset"]
        .as_str()
        .expect("asset")
        .parse()
        .expect("addr");
    let d = domain(
        accepted["extra"]["name"].as_str().expect("name"),
        accepted["extra"]["version"].as_str().expect("version"),
        chain_id,
        token,
    );
    let to: Address = auth.to.parse().expect("to");
    let msg = TransferWithAuthorization {
        from: key.address(),
        to,
        value: U256::from(auth.value),
        validAfter: U256::from(auth.valid_after),
        validBefore: U256::from(auth.valid_before),
        nonce: auth.nonce,
    };
    let sig = key
        .sign_hash_sync(&msg.eip712_signing_hash(&d))
        .expect("sign");
    json!({
        "signature": format!("0x{}", hex::encode(sig.as_bytes())),
        "authorization": {
            "from": key.address().to_checksum(None),
            "to": to.to_checksum(None),
            "value": auth.value.to_string(),
            "validAfter": auth.valid_after.to_string(),
            "validBefore": auth.valid_before.to_string(),
            "nonce": format!("{:#x}", auth.nonce),
        }
    })
}

pub fn b64(v: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(v).expect("json"))
}

/// A v2 `PAYMENT-SIGNATURE` value.
pub fn v2_header(accepted: &Value, payload: Value) -> String {
    b64(&json!({"x402Version": 2, "accepted": accepted, "payload": payload}))
}

/// A v1 `X-PAYMENT` value.
pub fn v1_header(network: &str, payload: Value) -> String {
    b64(&json!({"x402Version": 1, "scheme": "exact", "network": network, "payload": payload}))
}

pub fn key(hex_key: &str) -> PrivateKeySigner {
    hex_key.parse().expect("private key")
}

/// A fresh v2 payment for `path` of `gw`, signed by `key` (hex) for the first offer of the
/// 402 the gateway answers now.
pub async fn fresh_header(gw: &super::Gateway, path: &str, key_hex: &str) -> String {
    let r = super::client().get(gw.url(path)).send().await.expect("get");
    assert_eq!(r.status(), 402);
    let accepted =
        super::decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["accepts"]
            [0]
        .clone();
    v2_header(
        &accepted,
        signed_payload(&key(key_hex), &accepted, &Auth::for_requirements(&accepted)),
    )
}
