//! Reading a payment from request headers: exactly one header, strict base64, size limit,
//! typed JSON, version agreement, and matching against the gateway's own requirements.

use http::HeaderMap;
use serde_json::Value;

use super::PaymentError;
use crate::x402::challenge::Priced;
use crate::x402::codec;
use crate::x402::types::{
    DEFAULT_PAYMENT_FLOW, PAYMENT_FLOW, PaymentPayloadV1, PaymentPayloadV2, RequirementsV2,
};
use crate::x402::{HEADER_PAYMENT_SIGNATURE, HEADER_X_PAYMENT};

/// The payment header found on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a> {
    /// 1 for `X-PAYMENT`, 2 for `PAYMENT-SIGNATURE`.
    pub version: u8,
    pub value: &'a [u8],
}

/// Finds the payment header. More than one payment header is refused.
pub fn find(headers: &HeaderMap) -> Result<Option<Found<'_>>, PaymentError> {
    let mut v2 = headers.get_all(HEADER_PAYMENT_SIGNATURE).iter();
    let mut v1 = headers.get_all(HEADER_X_PAYMENT).iter();
    let (a, b) = (v2.next(), v1.next());
    if v2.next().is_some() || v1.next().is_some() || (a.is_some() && b.is_some()) {
        return Err(PaymentError::MultipleHeaders);
    }
    Ok(match (a, b) {
        (Some(v), None) => Some(Found {
            version: 2,
            value: v.as_bytes(),
        }),
        (None, Some(v)) => Some(Found {
            version: 1,
            value: v.as_bytes(),
        }),
        _ => None,
    })
}

/// A decoded payment matched to one of the rule's offers.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub version: u8,
    /// The decoded JSON exactly as the client sent it (forwarded verbatim to the facilitator).
    pub raw: String,
    /// The scheme payload (`{signature, authorization}` for exact EVM).
    pub payload: Value,
    /// Index of the matched offer in [`Priced::offers`].
    pub offer: usize,
    /// The v2 payload's `extensions` (`None` for v1).
    pub extensions: Option<Value>,
}

fn addr_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether a client's echoed `accepted` is one of the gateway's requirements: every field
/// equal (addresses case-insensitively), and the gateway's `extra` contained in the client's.
/// A payment flow the client left out is the default one (`authorization`), as clients
/// that predate flows read every offer; any flow it names must be the offer's.
pub fn accepted_matches(accepted: &RequirementsV2, ours: &RequirementsV2) -> bool {
    accepted.scheme == ours.scheme
        && accepted.network == ours.network
        && accepted.amount == ours.amount
        && addr_eq(&accepted.asset, &ours.asset)
        && addr_eq(&accepted.pay_to, &ours.pay_to)
        && accepted.max_timeout_seconds == ours.max_timeout_seconds
        && flow(&accepted.extra) == flow(&ours.extra)
        && ours
            .extra
            .iter()
            .filter(|(k, _)| k.as_str() != PAYMENT_FLOW)
            .all(|(k, v)| accepted.extra.get(k) == Some(v))
}

/// The payment flow `extra` names (the default when it names none; `None` when the field is
/// not a string).
fn flow(extra: &serde_json::Map<String, Value>) -> Option<&str> {
    match extra.get(PAYMENT_FLOW) {
        None | Some(Value::Null) => Some(DEFAULT_PAYMENT_FLOW),
        Some(Value::String(f)) => Some(f),
        Some(_) => None,
    }
}

/// The version of a payload, read without building the rest.
#[derive(serde::Deserialize)]
struct VersionProbe<'a> {
    #[serde(rename = "x402Version", borrow, default)]
    version: Option<&'a serde_json::value::RawValue>,
}

/// Decodes a payment header and matches it to an offer of `priced`.
pub fn decode(found: Found<'_>, priced: &Priced, limit: usize) -> Result<Decoded, PaymentError> {
    let raw_bytes = codec::decode(found.value, limit).map_err(PaymentError::Decode)?;
    let raw = String::from_utf8(raw_bytes)
        .map_err(|_| PaymentError::Payload("payload is not UTF-8".into()))?;
    // The common case in one pass: a well-formed payload of the header's own version.
    let typed = match parse(&raw, found.version) {
        Ok(p) if p.version() == found.version => p,
        // Otherwise the first error a client should see: not JSON, not an object, no or
        // another version (one pass over the text for it, nothing built), then the shape.
        _ => {
            probe_version(&raw, found.version)?;
            parse(&raw, found.version).map_err(|e| PaymentError::Payload(e.to_string()))?
        }
    };
    match typed {
        Typed::V2(p) => {
            let a = &p.accepted;
            if !priced
                .offers
                .iter()
                .any(|o| o.requirements.scheme == a.scheme)
            {
                return Err(PaymentError::UnsupportedScheme);
            }
            if !priced
                .offers
                .iter()
                .any(|o| o.requirements.scheme == a.scheme && o.requirements.network == a.network)
            {
                return Err(PaymentError::InvalidNetwork);
            }
            let offer = priced
                .offers
                .iter()
                .position(|o| accepted_matches(a, &o.requirements))
                .ok_or(PaymentError::NoMatch)?;
            Ok(Decoded {
                version: 2,
                raw,
                payload: p.payload,
                offer,
                extensions: p.extensions,
            })
        }
        Typed::V1(p) => {
            if !priced
                .offers
                .iter()
                .any(|o| o.requirements.scheme == p.scheme)
            {
                return Err(PaymentError::UnsupportedScheme);
            }
            let offer = priced
                .offers
                .iter()
                .position(|o| {
                    o.requirements.scheme == p.scheme
                        && o.v1_network.as_deref() == Some(p.network.as_str())
                })
                .ok_or(PaymentError::InvalidNetwork)?;
            Ok(Decoded {
                version: 1,
                raw,
                payload: p.payload,
                offer,
                extensions: None,
            })
        }
    }
}

/// A payload parsed as the version its header names.
#[allow(
    clippy::large_enum_variant,
    reason = "lives on the stack for one call; boxing would add an allocation per payment"
)]
enum Typed {
    V2(PaymentPayloadV2),
    V1(PaymentPayloadV1),
}

impl Typed {
    /// The `x402Version` the payload itself states.
    fn version(&self) -> u8 {
        match self {
            Typed::V2(p) => p.x402_version,
            Typed::V1(p) => p.x402_version,
        }
    }
}

fn parse(raw: &str, version: u8) -> Result<Typed, serde_json::Error> {
    if version == 2 {
        serde_json::from_str(raw).map(Typed::V2)
    } else {
        serde_json::from_str(raw).map(Typed::V1)
    }
}

/// Checks that `raw` is a JSON object stating `x402Version` = `version`, with the error a
/// client should see when it is not.
fn probe_version(raw: &str, version: u8) -> Result<(), PaymentError> {
    if !raw.trim_start().starts_with('{') {
        // Not an object: say whether it is JSON at all.
        serde_json::from_str::<serde::de::IgnoredAny>(raw)
            .map_err(|e| PaymentError::Payload(e.to_string()))?;
        return Err(PaymentError::Payload("payload is not a JSON object".into()));
    }
    let stated = match serde_json::from_str::<VersionProbe<'_>>(raw) {
        Ok(probe) => probe.version.and_then(|v| v.get().parse::<u64>().ok()),
        // Odd but perhaps valid JSON (a repeated key): read as a tree, the last key winning.
        Err(_) => serde_json::from_str::<Value>(raw)
            .map_err(|e| PaymentError::Payload(e.to_string()))?
            .get("x402Version")
            .and_then(Value::as_u64),
    };
    match stated {
        Some(v) if v == u64::from(version) => Ok(()),
        Some(_) => Err(PaymentError::VersionMismatch),
        None => Err(PaymentError::Payload("missing x402Version".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemes::{EXACT, Scheme};
    use crate::x402::networks::Registry;

    fn priced() -> Priced {
        let asset = Registry::builtin()
            .asset("eip155:84532", "usdc")
            .expect("usdc");
        let offer = EXACT.offer(
            asset,
            Some("base-sepolia".into()),
            10_000,
            "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
            300,
        );
        Priced::new(vec![offer], "W".into(), "application/json".into())
    }

    fn decode_json(version: u8, json: &str) -> Result<Decoded, PaymentError> {
        let value = codec::encode(json.as_bytes());
        decode(
            Found {
                version,
                value: value.as_bytes(),
            },
            &priced(),
            64 * 1024,
        )
    }

    fn payload_error(r: Result<Decoded, PaymentError>) -> String {
        match r {
            Err(PaymentError::Payload(m)) => m,
            other => panic!("expected a payload error, got {other:?}"),
        }
    }

    /// The version is read without building a JSON tree; what is not an object, has no
    /// numeric version, or names the other version is refused as before.
    #[test]
    fn versions_and_shapes() {
        assert_eq!(
            payload_error(decode_json(2, "[2]")),
            "payload is not a JSON object"
        );
        assert_eq!(
            payload_error(decode_json(2, " \"x402Version\"")),
            "payload is not a JSON object"
        );
        assert!(payload_error(decode_json(2, "nope")).contains("expected"));
        assert!(payload_error(decode_json(2, "{\"x402Version\":2")).contains("EOF"));
        for missing in [
            "{}",
            "{\"x402Version\":null}",
            "{\"x402Version\":\"2\"}",
            "{\"x402Version\":2.0}",
            "{\"x402Version\":-2}",
            "{\"x402Version\":{\"v\":2}}",
        ] {
            assert_eq!(
                payload_error(decode_json(2, missing)),
                "missing x402Version",
                "{missing}"
            );
        }
        assert!(matches!(
            decode_json(2, "{\"x402Version\":1}"),
            Err(PaymentError::VersionMismatch)
        ));
        assert!(matches!(
            decode_json(1, "{\"x402Version\":2}"),
            Err(PaymentError::VersionMismatch)
        ));
        // A repeated version: the last one counts, as in a JSON tree.
        assert!(matches!(
            decode_json(2, "{\"x402Version\":2,\"x402Version\":1}"),
            Err(PaymentError::VersionMismatch)
        ));
        // The right version, then the typed parse decides.
        assert!(payload_error(decode_json(2, "{\"x402Version\":2}")).contains("missing field"));
    }
}
