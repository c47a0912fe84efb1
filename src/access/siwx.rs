//! Sign-In-With-X re-access (CAIP-122; EIP-4361 messages signed with EIP-191): a wallet that
//! paid for a resource within its rule's window reads it again by signing in instead of paying.
//! The challenge is bound to the configured public origin (never to `Host`), each nonce is
//! used once (in the state store, so on every replica), and the payment history is what the
//! gateway itself recorded when payments settled. The challenge a 402 carries is
//! `x402::extensions::sign_in_challenge`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, Signature};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::state::StateStore;
use crate::x402::url;

/// The request header carrying a sign-in, and the extension's key.
pub const HEADER: &str = crate::x402::extensions::SIGN_IN_WITH_X;
/// How old a sign-in message may be.
pub const MAX_AGE: Duration = Duration::from_secs(5 * 60);
/// Clock skew tolerated for `issuedAt` in the future.
const SKEW: Duration = Duration::from_secs(30);
/// Largest sign-in header accepted.
const MAX_HEADER: usize = 8 * 1024;

/// A client's sign-in (the challenge echoed, plus its address and signature).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    pub domain: String,
    pub address: String,
    pub statement: Option<String>,
    pub uri: String,
    pub version: String,
    pub chain_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub nonce: String,
    pub issued_at: String,
    pub expiration_time: Option<String>,
    pub not_before: Option<String>,
    pub request_id: Option<String>,
    pub resources: Option<Vec<String>>,
    pub signature_scheme: Option<String>,
    pub signature: String,
}

/// Why a sign-in does not admit. Each has a stable reason (the reference package's where it
/// has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SiwxError {
    #[error("the sign-in header is not base64 JSON of a sign-in message")]
    Malformed,
    #[error("the sign-in is for another domain")]
    DomainMismatch,
    #[error("the sign-in is for another site or resource")]
    UriMismatch,
    #[error("the sign-in's issuedAt is not a time")]
    IssuedAt,
    #[error("the sign-in is too old")]
    TooOld,
    #[error("the sign-in is issued in the future")]
    InFuture,
    #[error("the sign-in expired")]
    Expired,
    #[error("the sign-in is not valid yet")]
    NotYetValid,
    #[error("the sign-in is not for a chain this resource is paid on, or not an EIP-191 sign-in")]
    Chain,
    #[error("the signature does not recover the address")]
    Signature,
    #[error("this sign-in was already used")]
    Replayed,
    #[error("this address has not paid for this resource recently")]
    NotPaid,
    #[error("sign-ins cannot be checked right now")]
    Unavailable,
}

impl SiwxError {
    /// Stable reason code.
    pub fn reason(self) -> &'static str {
        match self {
            SiwxError::Malformed => "invalid_siwx_payload",
            SiwxError::DomainMismatch => "invalid_siwx_domain_mismatch",
            SiwxError::UriMismatch => "invalid_siwx_uri_mismatch",
            SiwxError::IssuedAt => "invalid_siwx_issued_at",
            SiwxError::TooOld => "invalid_siwx_issued_at_too_old",
            SiwxError::InFuture => "invalid_siwx_issued_at_in_future",
            SiwxError::Expired => "invalid_siwx_expired",
            SiwxError::NotYetValid => "invalid_siwx_not_yet_valid",
            SiwxError::Chain => "invalid_siwx_chain",
            SiwxError::Signature => "invalid_siwx_signature",
            SiwxError::Replayed => "invalid_siwx_nonce",
            SiwxError::NotPaid => "siwx_not_paid",
            SiwxError::Unavailable => "state_unavailable",
        }
    }
}

/// What a sign-in must match: the configured public origin and the requested resource.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// `scheme://host[:port]` of `[payment] public_base_url`.
    pub origin: &'a str,
    /// The canonical path requested.
    pub path: &'a str,
    /// The EVM chain ids the rule is paid on.
    pub chains: &'a [u64],
}

/// A sign-in whose message checks out (signature included), before the nonce and the payment
/// history are consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub address: Address,
    pub nonce: String,
    /// Unix seconds after which the message could not be used anyway (the nonce is kept
    /// until then).
    pub until: u64,
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The EIP-4361 message the client signed, exactly as the reference formats it.
pub fn message(p: &Proof, chain_id: u64) -> String {
    let mut m = format!(
        "{} wants you to sign in with your Ethereum account:\n{}",
        p.domain, p.address
    );
    match &p.statement {
        Some(s) => {
            m.push_str("\n\n");
            m.push_str(s);
            m.push('\n');
        }
        None => m.push_str("\n\n"),
    }
    m.push_str(&format!(
        "\nURI: {}\nVersion: {}\nChain ID: {chain_id}\nNonce: {}\nIssued At: {}",
        p.uri, p.version, p.nonce, p.issued_at
    ));
    if let Some(e) = &p.expiration_time {
        m.push_str(&format!("\nExpiration Time: {e}"));
    }
    if let Some(n) = &p.not_before {
        m.push_str(&format!("\nNot Before: {n}"));
    }
    if let Some(r) = &p.request_id {
        m.push_str(&format!("\nRequest ID: {r}"));
    }
    if let Some(rs) = &p.resources {
        m.push_str("\nResources:");
        for r in rs {
            m.push_str(&format!("\n- {r}"));
        }
    }
    m
}

/// Every check that needs no state: the header's form, the origin and resource it is bound
/// to, its time window, the chain, and that the EIP-191 signature recovers the address.
pub fn verify(header: &[u8], expect: &Expect<'_>, now: SystemTime) -> Result<Verified, SiwxError> {
    let raw = crate::x402::codec::decode(header, MAX_HEADER).map_err(|_| SiwxError::Malformed)?;
    let p: Proof = serde_json::from_slice(&raw).map_err(|_| SiwxError::Malformed)?;
    if !p.domain.eq_ignore_ascii_case(url::authority(expect.origin)) {
        return Err(SiwxError::DomainMismatch);
    }
    let uri_origin = url::origin(&p.uri).ok_or(SiwxError::UriMismatch)?;
    let expected_origin = url::origin(expect.origin).unwrap_or(expect.origin);
    if !uri_origin.eq_ignore_ascii_case(expected_origin) || url::path(&p.uri) != expect.path {
        return Err(SiwxError::UriMismatch);
    }
    let issued = parse_time(&p.issued_at).ok_or(SiwxError::IssuedAt)?;
    if issued > now + SKEW {
        return Err(SiwxError::InFuture);
    }
    if now.duration_since(issued).unwrap_or_default() > MAX_AGE {
        return Err(SiwxError::TooOld);
    }
    let mut until = issued + MAX_AGE;
    if let Some(e) = &p.expiration_time {
        let e = parse_time(e).ok_or(SiwxError::Expired)?;
        if e <= now {
            return Err(SiwxError::Expired);
        }
        until = until.min(e);
    }
    if let Some(n) = &p.not_before
        && parse_time(n).is_none_or(|n| n > now)
    {
        return Err(SiwxError::NotYetValid);
    }
    let chain_id: u64 = p
        .chain_id
        .strip_prefix("eip155:")
        .and_then(|c| c.parse().ok())
        .filter(|c| expect.chains.contains(c))
        .ok_or(SiwxError::Chain)?;
    if p.kind != "eip191" || p.signature_scheme.as_deref().is_some_and(|s| s != "eip191") {
        // Smart-wallet schemes (EIP-1271, EIP-6492) need the chain; not taken here.
        return Err(SiwxError::Chain);
    }
    if p.nonce.len() < 8
        || p.nonce.len() > 128
        || !p.nonce.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(SiwxError::Malformed);
    }
    let address: Address = p.address.parse().map_err(|_| SiwxError::Malformed)?;
    let sig_bytes =
        hex::decode(p.signature.trim_start_matches("0x")).map_err(|_| SiwxError::Signature)?;
    let sig = Signature::try_from(sig_bytes.as_slice()).map_err(|_| SiwxError::Signature)?;
    let recovered = sig
        .recover_address_from_msg(message(&p, chain_id).as_bytes())
        .map_err(|_| SiwxError::Signature)?;
    if recovered != address {
        return Err(SiwxError::Signature);
    }
    Ok(Verified {
        address,
        nonce: p.nonce,
        until: secs(until),
    })
}

fn nonce_key(nonce: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"siwx-nonce\0");
    h.update(nonce.as_bytes());
    h.finalize().into()
}

/// Admits a sign-in: every stateless check, then the payment history, then the nonce (used
/// once, on every replica). Returns the signed-in address.
pub async fn admit(
    state: &dyn StateStore,
    header: &[u8],
    expect: &Expect<'_>,
    rule: &str,
) -> Result<Address, SiwxError> {
    let v = verify(header, expect, SystemTime::now())?;
    let paid = state
        .paid_within(&crate::x402::extensions::sign_in_paid_key(
            rule,
            expect.path,
            &v.address.to_string(),
        ))
        .await
        .map_err(|_| SiwxError::Unavailable)?;
    if !paid {
        return Err(SiwxError::NotPaid);
    }
    let first = state
        .first_seen(&nonce_key(&v.nonce), v.until)
        .await
        .map_err(|_| SiwxError::Unavailable)?;
    if !first {
        return Err(SiwxError::Replayed);
    }
    Ok(v.address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;
    use serde_json::{Value, json};

    const ORIGIN: &str = "https://api.example.com";

    /// A change to a sign-in before it is signed.
    type Edit = Box<dyn FnOnce(&mut Value)>;

    fn signed(key: &PrivateKeySigner, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let now = SystemTime::now();
        let mut p = json!({
            "domain": "api.example.com",
            "address": key.address().to_checksum(None),
            "uri": "https://api.example.com/premium?x=1",
            "version": "1",
            "chainId": "eip155:8453",
            "type": "eip191",
            "nonce": "a1b2c3d4e5f67890a1b2c3d4e5f67890",
            "issuedAt": humantime::format_rfc3339_millis(now).to_string(),
            "expirationTime": humantime::format_rfc3339_millis(now + Duration::from_secs(300)).to_string(),
            "resources": ["https://api.example.com/premium?x=1"],
            "signature": "",
        });
        edit(&mut p);
        let proof: Proof = serde_json::from_value(p.clone()).expect("proof");
        let chain: u64 = proof.chain_id[7..].parse().expect("chain");
        let sig = key
            .sign_message_sync(message(&proof, chain).as_bytes())
            .expect("sign");
        p["signature"] = json!(format!("0x{}", hex::encode(sig.as_bytes())));
        crate::x402::codec::encode(p.to_string().as_bytes()).into_bytes()
    }

    fn expect() -> Expect<'static> {
        Expect {
            origin: ORIGIN,
            path: "/premium",
            chains: &[8453],
        }
    }

    #[test]
    fn the_message_is_eip_4361() {
        let p: Proof = serde_json::from_value(json!({
            "domain": "api.example.com", "address": "0x857b06519E91e3A54538791bDbb0E22373e36b66",
            "statement": "Sign in to access premium data", "uri": "https://api.example.com/premium-data",
            "version": "1", "chainId": "eip155:8453", "type": "eip191",
            "nonce": "a1b2c3d4e5f67890a1b2c3d4e5f67890", "issuedAt": "2024-01-15T10:30:00.000Z",
            "expirationTime": "2024-01-15T10:35:00.000Z",
            "resources": ["https://api.example.com/premium-data"], "signature": "0x"
        }))
        .expect("proof");
        assert_eq!(
            message(&p, 8453),
            "api.example.com wants you to sign in with your Ethereum account:\n\
             0x857b06519E91e3A54538791bDbb0E22373e36b66\n\n\
             Sign in to access premium data\n\n\
             URI: https://api.example.com/premium-data\nVersion: 1\nChain ID: 8453\n\
             Nonce: a1b2c3d4e5f67890a1b2c3d4e5f67890\nIssued At: 2024-01-15T10:30:00.000Z\n\
             Expiration Time: 2024-01-15T10:35:00.000Z\nResources:\n\
             - https://api.example.com/premium-data"
        );
    }

    #[test]
    fn a_signed_message_for_this_origin_and_resource_verifies() {
        let key = PrivateKeySigner::random();
        let v = verify(&signed(&key, |_| {}), &expect(), SystemTime::now()).expect("verified");
        assert_eq!(v.address, key.address());
    }

    #[test]
    fn other_domains_resources_chains_times_and_signers_are_refused() {
        let key = PrivateKeySigner::random();
        let now = SystemTime::now();
        let cases: Vec<(Edit, SiwxError)> = vec![
            (
                Box::new(|p| p["domain"] = json!("evil.example")),
                SiwxError::DomainMismatch,
            ),
            (
                Box::new(|p| p["uri"] = json!("https://evil.example/premium")),
                SiwxError::UriMismatch,
            ),
            (
                Box::new(|p| p["uri"] = json!("https://api.example.com/other")),
                SiwxError::UriMismatch,
            ),
            (
                Box::new(|p| p["chainId"] = json!("eip155:1")),
                SiwxError::Chain,
            ),
            (
                Box::new(move |p| {
                    p["issuedAt"] = json!(
                        humantime::format_rfc3339_millis(now - Duration::from_secs(600))
                            .to_string()
                    )
                }),
                SiwxError::TooOld,
            ),
            (
                Box::new(move |p| {
                    p["expirationTime"] = json!(
                        humantime::format_rfc3339_millis(now - Duration::from_secs(1)).to_string()
                    )
                }),
                SiwxError::Expired,
            ),
        ];
        for (edit, want) in cases {
            assert_eq!(verify(&signed(&key, edit), &expect(), now), Err(want));
        }
        // Signed by one key, claiming another address.
        let other = PrivateKeySigner::random().address().to_checksum(None);
        let forged = signed(&key, |_| {});
        let mut v: Value =
            serde_json::from_slice(&crate::x402::codec::decode(&forged, MAX_HEADER).expect("b64"))
                .expect("json");
        v["address"] = json!(other);
        let forged = crate::x402::codec::encode(v.to_string().as_bytes());
        assert_eq!(
            verify(forged.as_bytes(), &expect(), now),
            Err(SiwxError::Signature)
        );
        assert_eq!(verify(b"!!", &expect(), now), Err(SiwxError::Malformed));
    }
}
