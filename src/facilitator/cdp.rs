//! Coinbase CDP facilitator authentication: a short-lived JWT per request, signed with the
//! API key (ES256 for EC P-256 keys, EdDSA for Ed25519 keys), bound by its `uris` claim to one
//! method, host and path.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::Serialize;

/// Lifetime of one token.
pub const TOKEN_TTL_SECS: u64 = 120;

/// Why a CDP API key secret is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdpKeyError {
    #[error("not an EC P-256 private key in PEM form")]
    BadPem,
    #[error("not a base64 Ed25519 key (32-byte seed or 64-byte seed and public key)")]
    BadEd25519,
    #[error("cannot encode the key")]
    Encode,
}

/// A parsed API key secret.
#[derive(Clone)]
pub struct SigningKey {
    alg: Algorithm,
    key: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, <redacted>)", self.alg)
    }
}

#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iss: &'a str,
    uris: [String; 1],
    iat: u64,
    nbf: u64,
    exp: u64,
}

impl SigningKey {
    /// Parses a secret: a PEM EC key (SEC1 or PKCS#8; `\n` escapes allowed, as keys often
    /// arrive through environment variables) or a base64 Ed25519 key.
    pub fn parse(secret: &str) -> Result<Self, CdpKeyError> {
        let s = secret.trim();
        if s.contains("-----BEGIN") {
            let pem = s.replace("\\n", "\n");
            let key = p256::SecretKey::from_sec1_pem(&pem)
                .or_else(|_| p256::SecretKey::from_pkcs8_pem(&pem))
                .map_err(|_| CdpKeyError::BadPem)?;
            let der = key.to_pkcs8_der().map_err(|_| CdpKeyError::Encode)?;
            return Ok(SigningKey {
                alg: Algorithm::ES256,
                key: EncodingKey::from_ec_der(der.as_bytes()),
            });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| CdpKeyError::BadEd25519)?;
        let seed: [u8; 32] = match bytes.len() {
            32 | 64 => bytes[..32]
                .try_into()
                .map_err(|_| CdpKeyError::BadEd25519)?,
            _ => return Err(CdpKeyError::BadEd25519),
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if bytes.len() == 64 && key.verifying_key().as_bytes() != &bytes[32..] {
            return Err(CdpKeyError::BadEd25519);
        }
        let der = key.to_pkcs8_der().map_err(|_| CdpKeyError::Encode)?;
        Ok(SigningKey {
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(der.as_bytes()),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// A token for one request: `uris = ["METHOD host/path"]`, valid for two minutes.
    pub fn token(
        &self,
        key_id: &str,
        method: &str,
        host: &str,
        path: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut nonce = [0u8; 16];
        let _ = getrandom::fill(&mut nonce);
        let mut header = Header::new(self.alg);
        header.kid = Some(key_id.to_owned());
        header.nonce = Some(hex::encode(nonce));
        let claims = Claims {
            sub: key_id,
            iss: "cdp",
            uris: [format!("{method} {host}{path}")],
            iat: now,
            nbf: now,
            exp: now + TOKEN_TTL_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use p256::pkcs8::EncodePublicKey;

    fn check(token: &str, key: &DecodingKey, alg: Algorithm) -> serde_json::Value {
        let mut v = Validation::new(alg);
        v.set_required_spec_claims(&["exp", "nbf", "sub"]);
        v.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &v).expect("valid token");
        assert_eq!(
            data.header.kid.as_deref(),
            Some("organizations/o/apiKeys/k")
        );
        assert_eq!(data.header.nonce.as_ref().map(String::len), Some(32));
        data.claims
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key() {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).expect("key");
        let sec1 = secret
            .to_sec1_pem(p256::pkcs8::LineEnding::LF)
            .expect("pem");
        let public = secret
            .public_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("pub");
        // As found in environment variables: escaped newlines.
        let key = SigningKey::parse(&sec1.replace('\n', "\\n")).expect("parse");
        assert_eq!(key.algorithm(), Algorithm::ES256);
        let token = key
            .token(
                "organizations/o/apiKeys/k",
                "POST",
                "api.cdp.coinbase.com",
                "/platform/v2/x402/verify",
            )
            .expect("jwt");
        let claims = check(
            &token,
            &DecodingKey::from_ec_pem(public.as_bytes()).expect("dec"),
            Algorithm::ES256,
        );
        assert_eq!(
            claims["uris"][0],
            "POST api.cdp.coinbase.com/platform/v2/x402/verify"
        );
        assert_eq!(claims["iss"], "cdp");
        assert_eq!(claims["sub"], "organizations/o/apiKeys/k");
        assert_eq!(
            claims["exp"]
                .as_u64()
                .zip(claims["nbf"].as_u64())
                .map(|(e, n)| e - n),
            Some(TOKEN_TTL_SECS)
        );
    }

    #[test]
    fn ed25519_tokens_verify_with_the_public_key() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let mut both = sk.to_bytes().to_vec();
        both.extend_from_slice(sk.verifying_key().as_bytes());
        let secret = base64::engine::general_purpose::STANDARD.encode(&both);
        let key = SigningKey::parse(&secret).expect("parse");
        assert_eq!(key.algorithm(), Algorithm::EdDSA);
        let token = key
            .token(
                "organizations/o/apiKeys/k",
                "GET",
                "api.cdp.coinbase.com",
                "/platform/v2/x402/supported",
            )
            .expect("jwt");
        let dec = DecodingKey::from_ed_der(sk.verifying_key().as_bytes());
        let claims = check(&token, &dec, Algorithm::EdDSA);
        assert_eq!(
            claims["uris"][0],
            "GET api.cdp.coinbase.com/platform/v2/x402/supported"
        );
        // A different key does not verify it.
        let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
        let mut v = Validation::new(Algorithm::EdDSA);
        v.validate_aud = false;
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &DecodingKey::from_ed_der(other.verifying_key().as_bytes()),
                &v
            )
            .is_err()
        );
        // Mismatched public half is refused.
        both[40] ^= 1;
        assert_eq!(
            SigningKey::parse(&base64::engine::general_purpose::STANDARD.encode(&both)).map(|_| ()),
            Err(CdpKeyError::BadEd25519)
        );
    }
}
