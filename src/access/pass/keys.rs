//! Pass keys and tokens: HMAC-SHA256 or Ed25519 keys (several for rotation, one signing),
//! `x402p1.<kid>.<payload>.<signature>` tokens minted and verified byte for byte.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Claims, MAX_TOKEN_BYTES, PassError, TOKEN_PREFIX, check_time};

type HmacSha256 = Hmac<Sha256>;

/// How passes are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Algorithm {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "ed25519")]
    Ed25519,
}

enum Verifier {
    Hmac(HmacSha256),
    Ed25519(ed25519_dalek::VerifyingKey),
}

enum Signer {
    Hmac(HmacSha256),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// A key from `[[passes.keys]]`.
pub enum KeyMaterial {
    /// HMAC secret (at least 32 bytes).
    Hmac(Vec<u8>),
    /// Ed25519 private key (signs and verifies).
    Ed25519Private([u8; 32]),
    /// Ed25519 public key (verifies only).
    Ed25519Public([u8; 32]),
}

/// The compiled `[passes]` section. Key material never appears in Debug output.
pub struct PassKeys {
    pub algorithm: Algorithm,
    /// Id of the key that signs new passes (`None`: this gateway only verifies).
    pub signing_kid: Option<String>,
    signer: Option<Signer>,
    /// Key id, verifier, and a fingerprint of the key (what the verified-token cache is keyed
    /// on besides the token, so that a cached token ends with its key).
    verifiers: Vec<(String, Verifier, [u8; 32])>,
    /// Cookie name for browsers.
    pub cookie: String,
    /// Pass ids revoked in configuration.
    pub revoked: HashSet<String>,
}

impl std::fmt::Debug for PassKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassKeys")
            .field("algorithm", &self.algorithm)
            .field("signing_kid", &self.signing_kid)
            .field("kids", &self.kids())
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl PassKeys {
    /// Builds the key set. `keys` are (id, material); `signing` names the signing key.
    pub fn new(
        algorithm: Algorithm,
        keys: Vec<(String, KeyMaterial)>,
        signing: Option<&str>,
        cookie: String,
        revoked: HashSet<String>,
    ) -> Result<PassKeys, String> {
        let mut verifiers = Vec::new();
        let mut signer = None;
        for (kid, m) in keys {
            let is_signer = signing == Some(kid.as_str());
            match (algorithm, m) {
                (Algorithm::HmacSha256, KeyMaterial::Hmac(secret)) => {
                    let mac = HmacSha256::new_from_slice(&secret).map_err(|e| e.to_string())?;
                    if is_signer {
                        signer = Some(Signer::Hmac(mac.clone()));
                    }
                    let print = fingerprint(b"hmac-sha256", &secret);
                    verifiers.push((kid, Verifier::Hmac(mac), print));
                }
                (Algorithm::Ed25519, KeyMaterial::Ed25519Private(seed)) => {
                    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
                    let vk = sk.verifying_key();
                    let print = fingerprint(b"ed25519", vk.as_bytes());
                    verifiers.push((kid, Verifier::Ed25519(vk), print));
                    if is_signer {
                        signer = Some(Signer::Ed25519(Box::new(sk)));
                    }
                }
                (Algorithm::Ed25519, KeyMaterial::Ed25519Public(pk)) => {
                    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk)
                        .map_err(|e| format!("key `{kid}`: {e}"))?;
                    if is_signer {
                        return Err(format!("key `{kid}` has only a public key and cannot sign"));
                    }
                    let print = fingerprint(b"ed25519", vk.as_bytes());
                    verifiers.push((kid, Verifier::Ed25519(vk), print));
                }
                (_, _) => return Err(format!("key `{kid}` does not fit the algorithm")),
            }
        }
        if signing.is_some() && signer.is_none() {
            return Err("the signing key is not among the keys".into());
        }
        Ok(PassKeys {
            algorithm,
            signing_kid: signing.map(str::to_owned),
            signer,
            verifiers,
            cookie,
            revoked,
        })
    }

    /// The key ids, for `/config`.
    pub fn kids(&self) -> Vec<&str> {
        self.verifiers.iter().map(|(k, _, _)| k.as_str()).collect()
    }

    /// Whether this gateway can issue passes.
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    fn verifier(&self, kid: &str) -> Option<&Verifier> {
        self.verifiers
            .iter()
            .find(|(k, _, _)| k == kid)
            .map(|(_, v, _)| v)
    }

    pub(super) fn fingerprint(&self, kid: &str) -> Option<&[u8; 32]> {
        self.verifiers
            .iter()
            .find(|(k, _, _)| k == kid)
            .map(|(_, _, f)| f)
    }
}

/// A digest that names a key without revealing it.
fn fingerprint(kind: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(kind);
    h.update([0]);
    h.update(key);
    h.finalize().into()
}

/// The key id a token names (`x402p1.<kid>.…`).
pub(super) fn token_kid(token: &str) -> Result<&str, PassError> {
    token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|b| b.split_once('.'))
        .map(|(kid, _)| kid)
        .ok_or(PassError::Malformed)
}

/// Signs claims into a token: `x402p1.<kid>.<payload>.<signature>` (base64url).
pub fn mint(keys: &PassKeys, claims: &Claims) -> Option<String> {
    let kid = keys.signing_kid.as_deref()?;
    let payload = serde_json::to_vec(claims).ok()?;
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + kid.len() + payload.len() * 2);
    token.push_str(TOKEN_PREFIX);
    token.push_str(kid);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let sig = match keys.signer.as_ref()? {
        Signer::Hmac(mac) => {
            let mut m = mac.clone();
            m.update(token.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        Signer::Ed25519(sk) => {
            use ed25519_dalek::Signer as _;
            sk.sign(token.as_bytes()).to_bytes().to_vec()
        }
    };
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&sig, &mut token);
    Some(token)
}

/// Checks a token's signature and time window (and configured revocations); returns its claims.
pub fn verify(keys: &PassKeys, token: &str, now: u64) -> Result<Claims, PassError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(PassError::Malformed);
    }
    let body = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(PassError::Malformed)?;
    let (signed, sig_b64) = token.rsplit_once('.').ok_or(PassError::Malformed)?;
    let (kid, rest) = body.split_once('.').ok_or(PassError::Malformed)?;
    let payload_b64 = rest
        .rsplit_once('.')
        .map(|(p, _)| p)
        .ok_or(PassError::Malformed)?;
    let verifier = keys.verifier(kid).ok_or(PassError::UnknownKey)?;
    let mut sig = [0u8; 64];
    let n = URL_SAFE_NO_PAD
        .decode_slice(sig_b64, &mut sig)
        .map_err(|_| PassError::Malformed)?;
    match verifier {
        Verifier::Hmac(mac) => {
            let mut m = mac.clone();
            m.update(signed.as_bytes());
            m.verify_slice(&sig[..n])
                .map_err(|_| PassError::BadSignature)?;
        }
        Verifier::Ed25519(vk) => {
            let s = ed25519_dalek::Signature::from_slice(&sig[..n])
                .map_err(|_| PassError::BadSignature)?;
            vk.verify_strict(signed.as_bytes(), &s)
                .map_err(|_| PassError::BadSignature)?;
        }
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| PassError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| PassError::Malformed)?;
    check_time(&claims, now)?;
    if keys.revoked.contains(&claims.id) {
        return Err(PassError::Revoked);
    }
    Ok(claims)
}
