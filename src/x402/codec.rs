//! The header codec: strict standard padded base64 around compact JSON, with a size limit.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Why a payment header could not be decoded. Each maps to one stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payment header exceeds {0} bytes")]
    TooLarge(usize),
    #[error("payment header is empty")]
    Empty,
    #[error("payment header is not standard padded base64")]
    Base64,
    #[error("payment header is not a JSON object: {0}")]
    Json(String),
}

impl DecodeError {
    /// The stable reason code for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_) => "payment_header_too_large",
            DecodeError::Empty | DecodeError::Base64 => "invalid_payment_header_encoding",
            DecodeError::Json(_) => "invalid_payload",
        }
    }
}

/// Encodes bytes as standard padded base64.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a header value: strict standard alphabet with padding, nothing around it.
pub fn decode(value: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    if value.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    if value.is_empty() {
        return Err(DecodeError::Empty);
    }
    // The standard engine is strict on its own: only the standard alphabet, canonical
    // padding (so a length that is a multiple of 4), no trailing bits, no whitespace.
    STANDARD.decode(value).map_err(|_| DecodeError::Base64)
}

/// Decodes a header into a typed JSON value.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    value: &[u8],
    limit: usize,
) -> Result<(T, Vec<u8>), DecodeError> {
    let raw = decode(value, limit)?;
    let parsed = serde_json::from_slice(&raw).map_err(|e| DecodeError::Json(e.to_string()))?;
    Ok((parsed, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_base64() {
        assert_eq!(
            decode(b"eyJhIjoxfQ==", 100).as_deref(),
            Ok(&b"{\"a\":1}"[..])
        );
        assert_eq!(decode(b"eyJhIjoxfQ", 100), Err(DecodeError::Base64));
        assert_eq!(decode(b"eyJhIjoxfQ==\n", 100), Err(DecodeError::Base64));
        assert_eq!(decode(b"ey-hIjoxfQ==", 100), Err(DecodeError::Base64));
        assert_eq!(decode(b"", 100), Err(DecodeError::Empty));
        assert_eq!(decode(&[b'A'; 200], 100), Err(DecodeError::TooLarge(100)));
        // non-canonical trailing bits
        assert_eq!(decode(b"eyJhIjoxfR==", 100), Err(DecodeError::Base64));
        // url-safe alphabet, missing or extra padding, padding inside, whitespace anywhere
        for bad in [
            &b"eyJh_joxfQ=="[..],
            b"eyJhIjoxfQ=",
            b"eyJhIjoxfQ===",
            b"eyJh=joxfQ==",
            b" eyJhIjoxfQ==",
            b"eyJhIjox\tfQ==",
            b"eyJhIjoxfQ==\r",
            b"====",
            b"e===",
        ] {
            assert_eq!(decode(bad, 100), Err(DecodeError::Base64), "{bad:?}");
        }
        assert_eq!(decode(b"YQ==", 100).as_deref(), Ok(&b"a"[..]));
    }
}
