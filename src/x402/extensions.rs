//! Protocol extensions: reading the `payment-identifier` a client gave its payment, and the
//! per-answer Sign-In-With-X challenge a 402 carries (the static declarations are built by
//! `crate::discovery`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The Sign-In-With-X extension's key (and request header).
pub const SIGN_IN_WITH_X: &str = "sign-in-with-x";
/// How long a sign-in challenge is offered for.
const SIGN_IN_TTL: Duration = Duration::from_secs(5 * 60);

/// The extension's key.
pub const PAYMENT_IDENTIFIER: &str = "payment-identifier";
/// Shortest identifier accepted.
pub const PAYMENT_ID_MIN: usize = 16;
/// Longest identifier accepted.
pub const PAYMENT_ID_MAX: usize = 128;

/// Why a payment's identifier cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    #[error("payment identifier must be 16-128 letters, digits, '-' or '_'")]
    Malformed,
}

/// The identifier in a v2 payload's `extensions` (`extensions["payment-identifier"].info.id`),
/// if it names one. An extension that is present but malformed is an error, never ignored:
/// the client meant its payment to be recognised on retry.
pub fn payment_identifier(extensions: Option<&Value>) -> Result<Option<&str>, IdentifierError> {
    let Some(ext) = extensions.and_then(|e| e.get(PAYMENT_IDENTIFIER)) else {
        return Ok(None);
    };
    match ext.get("info").and_then(|i| i.get("id")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) if valid_id(id) => Ok(Some(id)),
        Some(_) => Err(IdentifierError::Malformed),
    }
}

fn valid_id(id: &str) -> bool {
    (PAYMENT_ID_MIN..=PAYMENT_ID_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The `sign-in-with-x` declaration of a 402 for `url` (under the public origin): a fresh
/// nonce and window, and the EVM chains the resource is paid on.
pub fn sign_in_challenge(url: &str, networks: &[&str], statement: Option<&str>) -> Value {
    let mut nonce = [0u8; 16];
    if getrandom::fill(&mut nonce).is_err() {
        // No randomness: a nonce made of the time still differs per challenge.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        nonce[..16].copy_from_slice(&t.as_nanos().to_be_bytes());
    }
    let now = SystemTime::now();
    let domain = super::url::authority(url);
    let mut info = json!({
        "domain": domain,
        "uri": url,
        "version": "1",
        "nonce": hex::encode(nonce),
        "issuedAt": humantime::format_rfc3339_millis(now).to_string(),
        "expirationTime": humantime::format_rfc3339_millis(now + SIGN_IN_TTL).to_string(),
        "resources": [url],
    });
    if let Some(s) = statement {
        info["statement"] = json!(s);
    }
    let chains: Vec<Value> = networks
        .iter()
        .filter(|n| n.starts_with("eip155:"))
        .map(|n| json!({"chainId": n, "type": "eip191"}))
        .collect();
    json!({
        "info": info,
        "supportedChains": chains,
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "domain": {"type": "string"},
                "address": {"type": "string"},
                "statement": {"type": "string"},
                "uri": {"type": "string", "format": "uri"},
                "version": {"type": "string"},
                "chainId": {"type": "string"},
                "type": {"type": "string"},
                "nonce": {"type": "string"},
                "issuedAt": {"type": "string", "format": "date-time"},
                "expirationTime": {"type": "string", "format": "date-time"},
                "notBefore": {"type": "string", "format": "date-time"},
                "requestId": {"type": "string"},
                "resources": {"type": "array", "items": {"type": "string", "format": "uri"}},
                "signature": {"type": "string"},
            },
            "required": ["domain", "address", "uri", "version", "chainId", "type", "nonce", "issuedAt", "signature"],
        },
    })
}

/// The state-store key recording that `payer` paid for `path` under `rule`.
pub fn sign_in_paid_key(rule: &str, path: &str, payer: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [b"siwx-paid".as_slice(), rule.as_bytes(), path.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(payer.to_ascii_lowercase().as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_valid_identifiers_and_refuses_malformed_ones() {
        let ext =
            |id: Value| json!({"payment-identifier": {"info": {"required": false, "id": id}}});
        assert_eq!(
            payment_identifier(Some(&ext(json!("pay_0123456789abcdef")))),
            Ok(Some("pay_0123456789abcdef"))
        );
        for bad in [
            json!("short"),
            json!("x".repeat(129)),
            json!("pay_0123456789abc/ef"),
            json!(7),
        ] {
            assert_eq!(
                payment_identifier(Some(&ext(bad))),
                Err(IdentifierError::Malformed)
            );
        }
        assert_eq!(payment_identifier(None), Ok(None));
        assert_eq!(payment_identifier(Some(&json!({"bazaar": {}}))), Ok(None));
        assert_eq!(
            payment_identifier(Some(
                &json!({"payment-identifier": {"info": {"required": true}}})
            )),
            Ok(None)
        );
    }

    #[test]
    fn a_challenge_is_bound_to_the_url_it_names() {
        let c = sign_in_challenge("https://api.example.com/premium", &["eip155:8453"], None);
        assert_eq!(c["info"]["domain"], "api.example.com");
        assert_eq!(c["info"]["uri"], "https://api.example.com/premium");
        assert_eq!(c["info"]["nonce"].as_str().map(str::len), Some(32));
        assert_eq!(c["supportedChains"][0]["chainId"], "eip155:8453");
        let d = sign_in_challenge("https://api.example.com/premium", &["eip155:8453"], None);
        assert_ne!(c["info"]["nonce"], d["info"]["nonce"]);
    }
}
