//! Decoding a facilitator request body (v2 or v1) and the checks that answer `/verify`: the
//! local `exact` checks, the asset's code and an `eth_call` simulation, each refusal mapped to
//! the reference reason codes.

use std::time::{SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Chain, LocalSettler, lock, reason};
use crate::facilitator::rpc::IEip3009;
use crate::schemes::evm_exact::{self, ExactError};
use crate::x402::types::{ExactEvmPayload, PaymentPayloadV1, PaymentPayloadV2, RequirementsV2};

/// A refused request, with what the response needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) status: u16,
    pub(super) reason: &'static str,
    pub(super) message: Option<String>,
    /// The network as the request named it ("" when unknown).
    pub(super) network: String,
    pub(super) payer: Option<String>,
}

/// A request that names a chain this settler serves, normalised to v2 requirements.
struct Request<'s> {
    chain: &'s Chain,
    /// The network as the request named it: CAIP-2 for v2, the v1 name for v1.
    network: String,
    requirements: RequirementsV2,
    payload: Value,
    payer: Option<String>,
}

/// An authorization that passed the local checks.
#[derive(Debug, Clone)]
pub(super) struct Auth {
    pub(super) token: Address,
    pub(super) from: Address,
    pub(super) to: Address,
    pub(super) value: U256,
    pub(super) valid_after: U256,
    pub(super) valid_before: U256,
    pub(super) nonce: B256,
    pub(super) signature: Vec<u8>,
}

/// A payment that passed verification.
pub(super) struct Verified<'s> {
    pub(super) chain: &'s Chain,
    pub(super) network: String,
    pub(super) payer: String,
    pub(super) auth: Auth,
}

/// The v1 requirements as a facilitator receives them (only the fields settlement needs).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequirementsV1Wire {
    scheme: String,
    network: String,
    max_amount_required: String,
    pay_to: String,
    max_timeout_seconds: u64,
    asset: String,
    #[serde(default)]
    extra: Option<Map<String, Value>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn exact_reason(e: &ExactError) -> &'static str {
    match e {
        ExactError::Payload(_) | ExactError::BadFrom | ExactError::BadNonce => {
            reason::INVALID_PAYLOAD
        }
        ExactError::RecipientMismatch => reason::RECIPIENT,
        ExactError::BadValue | ExactError::ValueMismatch => reason::VALUE,
        ExactError::NotYetValid => reason::VALID_AFTER,
        ExactError::Expired => reason::VALID_BEFORE,
        ExactError::TooLong => reason::TOO_LONG,
        ExactError::BadSignatureEncoding => reason::PARSE_SIGNATURE,
        ExactError::BadSignature => reason::SIGNATURE,
    }
}

/// `accepted` matches `required` the way the reference server matches them: every field
/// equal, and `accepted.extra` holding at least every entry of `required.extra`.
fn accepted_matches(accepted: &RequirementsV2, required: &RequirementsV2) -> bool {
    accepted.scheme == required.scheme
        && accepted.network == required.network
        && accepted.amount == required.amount
        && accepted.asset.eq_ignore_ascii_case(&required.asset)
        && accepted.pay_to.eq_ignore_ascii_case(&required.pay_to)
        && accepted.max_timeout_seconds == required.max_timeout_seconds
        && required
            .extra
            .iter()
            .all(|(k, v)| accepted.extra.get(k) == Some(v))
}

/// The payer named by an exact payload, checksummed when it is an address.
fn payer_of(payload: &Value) -> Option<String> {
    let from = payload.get("authorization")?.get("from")?.as_str()?;
    Some(
        from.parse::<Address>()
            .map_or_else(|_| from.to_owned(), |a| a.to_checksum(None)),
    )
}

impl LocalSettler {
    /// Parses the request body and finds its chain.
    fn parse(&self, body: &[u8]) -> Result<Request<'_>, Refusal> {
        let bad = |reason: &'static str, message: String| Refusal {
            status: 400,
            reason,
            message: Some(message),
            network: String::new(),
            payer: None,
        };
        let body: Value = serde_json::from_slice(body)
            .map_err(|e| bad(reason::INVALID_PAYLOAD, format!("body is not JSON: {e}")))?;
        let payload = body
            .get("paymentPayload")
            .filter(|v| v.is_object())
            .ok_or_else(|| {
                bad(
                    reason::INVALID_PAYLOAD,
                    "missing paymentPayload object".into(),
                )
            })?;
        let requirements = body
            .get("paymentRequirements")
            .filter(|v| v.is_object())
            .ok_or_else(|| {
                bad(
                    reason::INVALID_REQUIREMENTS,
                    "missing paymentRequirements object".into(),
                )
            })?;
        let version = match (body.get("x402Version"), payload.get("x402Version")) {
            (Some(top), inner) => {
                let top = top.as_u64().ok_or_else(|| {
                    bad(
                        reason::INVALID_VERSION,
                        "x402Version is not a number".into(),
                    )
                })?;
                if inner.is_some_and(|i| i.as_u64() != Some(top)) {
                    return Err(Refusal {
                        status: 200,
                        ..bad(
                            reason::INVALID_VERSION,
                            "x402Version differs from paymentPayload.x402Version".into(),
                        )
                    });
                }
                top
            }
            (None, Some(inner)) => inner.as_u64().ok_or_else(|| {
                bad(
                    reason::INVALID_VERSION,
                    "x402Version is not a number".into(),
                )
            })?,
            (None, None) => return Err(bad(reason::INVALID_VERSION, "missing x402Version".into())),
        };
        let payer = payload.get("payload").and_then(payer_of);
        let invalid = |reason: &'static str, network: &str, message: Option<String>| Refusal {
            status: 200,
            reason,
            message,
            network: network.to_owned(),
            payer: payer.clone(),
        };
        match version {
            2 => {
                let p: PaymentPayloadV2 = serde_json::from_value(payload.clone())
                    .map_err(|e| bad(reason::INVALID_PAYLOAD, e.to_string()))?;
                let req: RequirementsV2 = serde_json::from_value(requirements.clone())
                    .map_err(|e| bad(reason::INVALID_REQUIREMENTS, e.to_string()))?;
                let network = req.network.clone();
                if req.scheme != "exact" {
                    return Err(invalid(reason::UNSUPPORTED_SCHEME, &network, None));
                }
                let chain = self
                    .chains
                    .iter()
                    .find(|c| c.conf.caip2 == req.network)
                    .ok_or_else(|| invalid(reason::INVALID_NETWORK, &network, None))?;
                if p.accepted.scheme != "exact" {
                    return Err(invalid(reason::SCHEME, &network, None));
                }
                if p.accepted.network != req.network {
                    return Err(invalid(reason::NETWORK_MISMATCH, &network, None));
                }
                if !accepted_matches(&p.accepted, &req) {
                    return Err(invalid(reason::ACCEPTED_MISMATCH, &network, None));
                }
                Ok(Request {
                    chain,
                    network,
                    requirements: req,
                    payload: p.payload,
                    payer,
                })
            }
            1 => {
                let p: PaymentPayloadV1 = serde_json::from_value(payload.clone())
                    .map_err(|e| bad(reason::INVALID_PAYLOAD, e.to_string()))?;
                let req: RequirementsV1Wire = serde_json::from_value(requirements.clone())
                    .map_err(|e| bad(reason::INVALID_REQUIREMENTS, e.to_string()))?;
                let network = req.network.clone();
                if req.scheme != "exact" {
                    return Err(invalid(reason::UNSUPPORTED_SCHEME, &network, None));
                }
                let chain = self
                    .chains
                    .iter()
                    .find(|c| c.conf.v1_name.as_deref() == Some(req.network.as_str()))
                    .ok_or_else(|| invalid(reason::INVALID_NETWORK, &network, None))?;
                if p.scheme != "exact" {
                    return Err(invalid(reason::SCHEME, &network, None));
                }
                if p.network != req.network {
                    return Err(invalid(reason::NETWORK_MISMATCH, &network, None));
                }
                Ok(Request {
                    chain,
                    network,
                    requirements: RequirementsV2 {
                        scheme: req.scheme,
                        network: chain.conf.caip2.clone(),
                        amount: req.max_amount_required,
                        asset: req.asset,
                        pay_to: req.pay_to,
                        max_timeout_seconds: req.max_timeout_seconds,
                        extra: req.extra.unwrap_or_default(),
                    },
                    payload: p.payload,
                    payer,
                })
            }
            _ => Err(invalid(
                reason::INVALID_VERSION,
                "",
                Some(format!("x402Version {version} is not supported")),
            )),
        }
    }

    /// Everything `/verify` checks: the request, the local checks and the simulation.
    pub(super) async fn check(&self, body: &[u8]) -> Result<Verified<'_>, Refusal> {
        let r = self.parse(body)?;
        let refuse = |status: u16, reason: &'static str, message: Option<String>| Refusal {
            status,
            reason,
            message,
            network: r.network.clone(),
            payer: r.payer.clone(),
        };
        let req = &r.requirements;
        let text = |k: &str| req.extra.get(k).and_then(Value::as_str);
        let (Some(name), Some(version)) = (text("name"), text("version")) else {
            return Err(refuse(200, reason::MISSING_DOMAIN, None));
        };
        let token: Address = req.asset.parse().map_err(|_| {
            refuse(
                200,
                reason::INVALID_REQUIREMENTS,
                Some("asset is not an address".into()),
            )
        })?;
        let domain = evm_exact::domain(name, version, r.chain.conf.chain_id, token);
        let checked = evm_exact::check(&r.payload, req, &domain, unix_now())
            .map_err(|e| refuse(200, exact_reason(&e), Some(e.to_string())))?;
        let p: ExactEvmPayload = serde_json::from_value(r.payload.clone())
            .map_err(|e| refuse(200, reason::INVALID_PAYLOAD, Some(e.to_string())))?;
        let a = &p.authorization;
        let num = |s: &str| U256::from_str_radix(s, 10).ok();
        let auth = (|| {
            Some(Auth {
                token,
                from: a.from.parse().ok()?,
                to: a.to.parse().ok()?,
                value: num(&a.value)?,
                valid_after: num(&a.valid_after)?,
                valid_before: num(&a.valid_before)?,
                nonce: a.nonce.parse().ok()?,
                signature: hex::decode(p.signature.trim_start_matches("0x")).ok()?,
            })
        })()
        .ok_or_else(|| refuse(200, reason::INVALID_PAYLOAD, None))?;
        match self.deployed(r.chain, token).await {
            Some(true) => {}
            Some(false) => return Err(refuse(200, reason::ASSET_NOT_DEPLOYED, None)),
            None => {
                return Err(refuse(
                    503,
                    reason::VERIFY_ERROR,
                    Some("no RPC endpoint answered".into()),
                ));
            }
        }
        match self.simulate(r.chain, &auth).await {
            Simulation::Ok => Ok(Verified {
                chain: r.chain,
                network: r.network.clone(),
                payer: checked.payer,
                auth,
            }),
            Simulation::Reverted(msg) => {
                let why = self.diagnose(r.chain, &auth).await;
                Err(refuse(200, why, Some(msg)))
            }
            Simulation::Unavailable(msg) => {
                tracing::warn!(network = %r.network, error = %msg, "cannot simulate: no RPC endpoint answered");
                Err(refuse(
                    503,
                    reason::VERIFY_ERROR,
                    Some("no RPC endpoint answered".into()),
                ))
            }
        }
    }

    /// Whether `token` holds contract code (`None`: no endpoint answered). A call to an address
    /// without code "succeeds", so the simulation alone cannot tell.
    async fn deployed(&self, chain: &Chain, token: Address) -> Option<bool> {
        let key = (chain.conf.chain_id, token);
        if lock(&self.deployed).contains(&key) {
            return Some(true);
        }
        let code = chain
            .reader
            .first_ok(|p| async move { p.get_code_at(token).await })
            .await
            .ok()?;
        if !code.is_empty() {
            lock(&self.deployed).insert(key);
        }
        Some(!code.is_empty())
    }

    /// `eth_call` of `transferWithAuthorization` from the relayer, endpoint by endpoint until
    /// one answers.
    async fn simulate(&self, chain: &Chain, auth: &Auth) -> Simulation {
        let tx = self.call_request(auth);
        let mut last = String::from("no endpoint");
        for (i, p) in chain.reader.providers().enumerate() {
            match tokio::time::timeout(self.rpc_timeout, p.call(tx.clone())).await {
                Ok(Ok(_)) => return Simulation::Ok,
                Ok(Err(e)) if e.is_error_resp() => return Simulation::Reverted(e.to_string()),
                Ok(Err(e)) => last = format!("endpoint {i}: {e}"),
                Err(_) => last = format!("endpoint {i}: timed out"),
            }
        }
        Simulation::Unavailable(last)
    }

    /// Why a simulation failed, as @x402/evm reports it: used nonce, short balance, an
    /// undeployed smart wallet, or a generic simulation failure.
    pub(super) async fn diagnose(&self, chain: &Chain, auth: &Auth) -> &'static str {
        let (token, from) = (auth.token, auth.from);
        if let Ok(true) = chain
            .reader
            .authorization_used(token, from, auth.nonce)
            .await
        {
            return reason::NONCE_USED;
        }
        let balance = chain
            .reader
            .first_ok(|p| async move { IEip3009::new(token, p).balanceOf(from).call().await })
            .await;
        if balance.is_ok_and(|b| b < auth.value) {
            return reason::BALANCE;
        }
        if auth.signature.len() != 65 {
            let code = chain
                .reader
                .first_ok(|p| async move { p.get_code_at(from).await })
                .await;
            if code.is_ok_and(|c| c.is_empty()) {
                return reason::UNDEPLOYED;
            }
        }
        reason::SIMULATION
    }
}

/// The outcome of an `eth_call` simulation.
enum Simulation {
    Ok,
    Reverted(String),
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use alloy::signers::local::PrivateKeySigner;
    use serde_json::json;

    use super::super::tests::{TOKEN, settler};
    use super::*;
    use crate::schemes::evm_exact::tests::sign;

    fn requirements(network: &str) -> Value {
        json!({
            "scheme": "exact",
            "network": network,
            "amount": "10000",
            "asset": TOKEN,
            "payTo": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
            "maxTimeoutSeconds": 300,
            "extra": {"name": "Test USD", "version": "1"},
        })
    }

    fn payload(payer: &PrivateKeySigner, chain_id: u64, value: u64) -> Value {
        let token: Address = TOKEN.parse().expect("token");
        let to: Address = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
            .parse()
            .expect("to");
        let now = unix_now();
        sign(
            payer,
            &evm_exact::domain("Test USD", "1", chain_id, token),
            to,
            value,
            now - 600,
            now + 300,
            B256::repeat_byte(9),
        )
    }

    fn v2_body(req: &Value, payload: &Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "x402Version": 2,
            "paymentPayload": {"x402Version": 2, "accepted": req, "payload": payload},
            "paymentRequirements": req,
        }))
        .expect("json")
    }

    #[tokio::test]
    async fn malformed_bodies_are_400() {
        let s = settler();
        let req = requirements("eip155:31337");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), reason::INVALID_PAYLOAD),
            (b"[]".to_vec(), reason::INVALID_PAYLOAD),
            (
                serde_json::to_vec(&json!({"x402Version": 2, "paymentRequirements": req}))
                    .expect("json"),
                reason::INVALID_PAYLOAD,
            ),
            (
                serde_json::to_vec(
                    &json!({"x402Version": 2, "paymentPayload": {"x402Version": 2}}),
                )
                .expect("json"),
                reason::INVALID_REQUIREMENTS,
            ),
            (
                serde_json::to_vec(&json!({"x402Version": 2, "paymentPayload": {"x402Version": 2, "payload": {}}, "paymentRequirements": req}))
                    .expect("json"),
                reason::INVALID_PAYLOAD,
            ),
            (
                serde_json::to_vec(&json!({"x402Version": 2, "paymentPayload": {"x402Version": 2, "accepted": req, "payload": {}}, "paymentRequirements": {"scheme": "exact"}}))
                    .expect("json"),
                reason::INVALID_REQUIREMENTS,
            ),
            (
                serde_json::to_vec(&json!({"x402Version": "2", "paymentPayload": {}, "paymentRequirements": {}}))
                    .expect("json"),
                reason::INVALID_VERSION,
            ),
        ];
        for (body, want) in cases {
            let (status, v) = s.verify(&body).await;
            assert_eq!(
                (status, v.invalid_reason.as_deref()),
                (400, Some(want)),
                "{}",
                String::from_utf8_lossy(&body)
            );
            assert!(!v.valid());
            let (status, r) = s.settle(&body).await;
            assert_eq!((status, r.error_reason.as_deref()), (400, Some(want)));
            assert!(!r.succeeded());
            assert_eq!(r.transaction, "");
        }
    }

    #[tokio::test]
    async fn ordinary_refusals_are_200_with_the_reference_reasons() {
        let s = settler();
        let payer = PrivateKeySigner::random();
        let req = requirements("eip155:31337");
        let good = payload(&payer, 31337, 10000);
        let check = |body: Vec<u8>, want: &'static str| {
            let s = &s;
            async move {
                let (status, v) = s.verify(&body).await;
                assert_eq!(
                    (status, v.invalid_reason.as_deref()),
                    (200, Some(want)),
                    "{v:?}"
                );
                let (status, r) = s.settle(&body).await;
                assert_eq!((status, r.error_reason.as_deref()), (200, Some(want)));
                assert_eq!(r.transaction, "");
                r
            }
        };
        // Unknown network, reported as the request named it.
        let r = check(
            v2_body(&requirements("eip155:1"), &good),
            reason::INVALID_NETWORK,
        )
        .await;
        assert_eq!(r.network, "eip155:1");
        assert_eq!(
            r.payer.as_deref(),
            Some(payer.address().to_checksum(None).as_str())
        );
        // Other scheme.
        let mut upto = req.clone();
        upto["scheme"] = json!("upto");
        check(v2_body(&upto, &good), reason::UNSUPPORTED_SCHEME).await;
        // `accepted` differs from the requirements.
        let mut accepted = req.clone();
        accepted["amount"] = json!("1");
        let body = serde_json::to_vec(&json!({
            "x402Version": 2,
            "paymentPayload": {"x402Version": 2, "accepted": accepted, "payload": good},
            "paymentRequirements": req,
        }))
        .expect("json");
        check(body, reason::ACCEPTED_MISMATCH).await;
        // Extra keys in the echoed `extra` are fine, missing ones are not.
        let mut fewer = req.clone();
        fewer["extra"] = json!({"name": "Test USD"});
        let body = serde_json::to_vec(&json!({
            "x402Version": 2,
            "paymentPayload": {"x402Version": 2, "accepted": fewer, "payload": good},
            "paymentRequirements": req,
        }))
        .expect("json");
        check(body, reason::ACCEPTED_MISMATCH).await;
        // No EIP-712 domain.
        let mut bare = req.clone();
        bare["extra"] = json!({});
        check(v2_body(&bare, &good), reason::MISSING_DOMAIN).await;
        // Local checks.
        check(v2_body(&req, &payload(&payer, 31337, 9999)), reason::VALUE).await;
        check(v2_body(&req, &payload(&payer, 1, 10000)), reason::SIGNATURE).await;
        let mut garbled = good.clone();
        garbled["signature"] = json!("0xzz");
        check(v2_body(&req, &garbled), reason::PARSE_SIGNATURE).await;
        let mut elsewhere = good.clone();
        elsewhere["authorization"]["to"] = json!("0x000000000000000000000000000000000000dEaD");
        check(v2_body(&req, &elsewhere), reason::RECIPIENT).await;
        // Version 3.
        let body = serde_json::to_vec(&json!({
            "x402Version": 3,
            "paymentPayload": {"x402Version": 3},
            "paymentRequirements": req,
        }))
        .expect("json");
        check(body, reason::INVALID_VERSION).await;
    }

    #[tokio::test]
    async fn v1_bodies_use_v1_names() {
        let s = settler();
        let payer = PrivateKeySigner::random();
        let req = json!({
            "scheme": "exact",
            "network": "base-sepolia",
            "maxAmountRequired": "10000",
            "resource": "http://example.com/x",
            "description": "",
            "mimeType": "",
            "payTo": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
            "maxTimeoutSeconds": 300,
            "asset": TOKEN,
            "extra": {"name": "Test USD", "version": "1"},
        });
        let body = |network: &str, value: u64| {
            serde_json::to_vec(&json!({
                "x402Version": 1,
                "paymentPayload": {"x402Version": 1, "scheme": "exact", "network": network, "payload": payload(&payer, 84532, value)},
                "paymentRequirements": req,
            }))
            .expect("json")
        };
        let (status, v) = s.verify(&body("base", 10000)).await;
        assert_eq!(
            (status, v.invalid_reason.as_deref()),
            (200, Some(reason::NETWORK_MISMATCH))
        );
        let (status, r) = s.settle(&body("base-sepolia", 9999)).await;
        assert_eq!(
            (status, r.error_reason.as_deref(), r.network.as_str()),
            (200, Some(reason::VALUE), "base-sepolia")
        );
        // Valid locally; the chain cannot be reached, which is not the payer's fault.
        let (status, v) = s.verify(&body("base-sepolia", 10000)).await;
        assert_eq!(
            (status, v.invalid_reason.as_deref()),
            (503, Some(reason::VERIFY_ERROR))
        );
        let (status, r) = s.settle(&body("base-sepolia", 10000)).await;
        assert_eq!(
            (status, r.error_reason.as_deref(), r.transaction.as_str()),
            (503, Some(reason::SETTLE_ERROR), "")
        );
    }
}
