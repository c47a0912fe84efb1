//! Protocol extensions carried in a payment payload's `extensions`: reading the
//! `payment-identifier` a client gave its payment (the declarations a 402 carries are built by
//! `crate::discovery`).

use serde_json::Value;

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
}
