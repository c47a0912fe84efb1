//! HTTP client for one facilitator API. Bodies are parsed whatever the status code, and
//! `isValid` / `success` count only when they are literally `true`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;

use super::conf::FacilitatorConf;
use crate::metrics::Metrics;
use crate::x402::types::{SettleResponse, VerifyResponse};

/// Why a facilitator call produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FacilitatorError {
    /// The request never reached the facilitator (connection refused, DNS, TLS).
    #[error("facilitator unreachable: {0}")]
    Connect(String),
    /// No answer in time. For `/settle` the outcome is unknown.
    #[error("facilitator timed out")]
    Timeout,
    /// An answer without a usable body.
    #[error("facilitator answered {status} without a usable body")]
    BadResponse { status: u16 },
    /// The facilitator cannot be used as configured (for example a bad key).
    #[error("facilitator misconfigured: {0}")]
    Config(String),
    /// A 4xx answer without a verdict (rate limited, unauthorized): the facilitator is up and
    /// declined the call. Not an outage: it neither ejects the facilitator nor opens a
    /// fail-open rule.
    #[error("facilitator declined the call with {status}")]
    Declined { status: u16 },
}

impl FacilitatorError {
    /// Whether the call provably did not reach the facilitator.
    pub fn not_sent(&self) -> bool {
        matches!(
            self,
            FacilitatorError::Connect(_)
                | FacilitatorError::Config(_)
                | FacilitatorError::Declined { status: 429 }
        )
    }

    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            FacilitatorError::Connect(_) => "connect",
            FacilitatorError::Timeout => "timeout",
            FacilitatorError::BadResponse { .. } => "bad_response",
            FacilitatorError::Config(_) => "config",
            FacilitatorError::Declined { .. } => "declined",
        }
    }
}

/// The request body of `/verify` and `/settle`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest<'a> {
    pub x402_version: u8,
    pub payment_payload: &'a RawValue,
    pub payment_requirements: &'a RawValue,
}

/// A shared HTTP client for every facilitator.
#[derive(Debug, Clone)]
pub struct FacilitatorClient {
    http: reqwest::Client,
    metrics: std::sync::Arc<Metrics>,
    /// Each facilitator's endpoint URLs, parsed once per base URL instead of per call.
    endpoints: std::sync::Arc<RwLock<HashMap<String, Arc<Endpoints>>>>,
}

/// The parsed URLs of one facilitator's endpoints.
#[derive(Debug)]
struct Endpoints {
    verify: Option<reqwest::Url>,
    settle: Option<reqwest::Url>,
    supported: Option<reqwest::Url>,
}

/// Base URLs kept at most (a reload may bring new ones; the map is emptied when full).
const MAX_ENDPOINTS: usize = 256;

impl Endpoints {
    fn parse(base: &str) -> Self {
        let url = |op: &str| reqwest::Url::parse(&format!("{base}/{op}")).ok();
        Endpoints {
            verify: url("verify"),
            settle: url("settle"),
            supported: url("supported"),
        }
    }

    fn get(&self, op: &str) -> Option<&reqwest::Url> {
        match op {
            "verify" => self.verify.as_ref(),
            "settle" => self.settle.as_ref(),
            "supported" => self.supported.as_ref(),
            _ => None,
        }
    }
}

impl FacilitatorClient {
    pub fn new(metrics: std::sync::Arc<Metrics>) -> Self {
        // No redirects: a facilitator's answer comes from the configured URL or not at all
        // (a redirect would send payment payloads and API keys where the operator never chose).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // No hidden retries either: a failed call is the pool's to fail over, and a
            // settlement is never sent twice behind its back. A policy that allows no retry at
            // all also spares the copy of every request (headers, extensions, body) that
            // reqwest's retry layer makes up front while any retry remains possible.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("x402-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| {
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap_or_default()
            });
        FacilitatorClient {
            http,
            metrics,
            endpoints: Arc::default(),
        }
    }

    /// The parsed URL of `op` at `base`.
    fn endpoint(&self, base: &str, op: &'static str) -> Result<reqwest::Url, FacilitatorError> {
        let cached = self
            .endpoints
            .read()
            .ok()
            .and_then(|m| m.get(base).cloned());
        let endpoints = match cached {
            Some(e) => e,
            None => {
                let e = Arc::new(Endpoints::parse(base));
                if let Ok(mut m) = self.endpoints.write() {
                    if m.len() >= MAX_ENDPOINTS {
                        m.clear();
                    }
                    m.insert(base.to_owned(), e.clone());
                }
                e
            }
        };
        endpoints
            .get(op)
            .cloned()
            .ok_or_else(|| FacilitatorError::Config("the facilitator URL does not parse".into()))
    }

    async fn call(
        &self,
        fac: &FacilitatorConf,
        op: &'static str,
        body: Option<Vec<u8>>,
        auth: &[(&'static str, String)],
    ) -> Result<(u16, Vec<u8>), FacilitatorError> {
        let url = match self.endpoint(&fac.url, op) {
            Ok(url) => url,
            Err(e) => {
                self.metrics
                    .facilitator_errors
                    .with_label_values(&[fac.name.as_str(), op, e.kind()])
                    .inc();
                return Err(e);
            }
        };
        let mut req = match &body {
            Some(_) => self
                .http
                .post(url)
                .header("content-type", "application/json"),
            None => self.http.get(url),
        };
        for (k, v) in &fac.headers {
            req = req.header(k.as_str(), v.expose());
        }
        for (k, v) in auth {
            req = req.header(*k, v.as_str());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let started = Instant::now();
        let result = async {
            let resp = req.timeout(fac.timeout).send().await.map_err(classify)?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(classify)?;
            Ok::<_, FacilitatorError>((status, bytes.to_vec()))
        }
        .await;
        let labels = [fac.name.as_str(), op];
        self.metrics
            .facilitator_latency
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics
                .facilitator_errors
                .with_label_values(&[fac.name.as_str(), op, e.kind()])
                .inc();
        }
        result
    }

    /// `POST /verify`.
    pub async fn verify(
        &self,
        fac: &FacilitatorConf,
        body: Vec<u8>,
        auth: &[(&'static str, String)],
    ) -> Result<VerifyResponse, FacilitatorError> {
        let (status, bytes) = self.call(fac, "verify", Some(body), auth).await?;
        parse_verify(status, &bytes).inspect_err(|e| {
            self.metrics
                .facilitator_errors
                .with_label_values(&[fac.name.as_str(), "verify", e.kind()])
                .inc();
        })
    }

    /// `POST /settle`.
    pub async fn settle(
        &self,
        fac: &FacilitatorConf,
        body: Vec<u8>,
        auth: &[(&'static str, String)],
    ) -> Result<SettleResponse, FacilitatorError> {
        let (status, bytes) = self.call(fac, "settle", Some(body), auth).await?;
        parse_settle(status, &bytes).inspect_err(|e| {
            self.metrics
                .facilitator_errors
                .with_label_values(&[fac.name.as_str(), "settle", e.kind()])
                .inc();
        })
    }

    /// `GET /supported`, raw JSON.
    pub async fn supported(
        &self,
        fac: &FacilitatorConf,
        auth: &[(&'static str, String)],
    ) -> Result<serde_json::Value, FacilitatorError> {
        let (status, bytes) = self.call(fac, "supported", None, auth).await?;
        if !(200..300).contains(&status) {
            return Err(FacilitatorError::BadResponse { status });
        }
        serde_json::from_slice(&bytes).map_err(|_| FacilitatorError::BadResponse { status })
    }
}

fn classify(e: reqwest::Error) -> FacilitatorError {
    if e.is_timeout() {
        FacilitatorError::Timeout
    } else if e.is_connect() {
        // Without the URL: it may carry an API key.
        FacilitatorError::Connect(e.without_url().to_string())
    } else {
        // Reset after sending, or a broken body: the request may have been acted on.
        FacilitatorError::BadResponse { status: 0 }
    }
}

/// Parses a `/verify` answer: a JSON object with an `isValid` key, whatever the status.
pub fn parse_verify(status: u16, body: &[u8]) -> Result<VerifyResponse, FacilitatorError> {
    if status >= 500 {
        // The facilitator failed (its node is down, an exception): not a verdict on the
        // payment. Failing over, or the failure policy, decides what the client gets.
        return Err(FacilitatorError::BadResponse { status });
    }
    let no_verdict = || {
        if (400..500).contains(&status) {
            FacilitatorError::Declined { status }
        } else {
            FacilitatorError::BadResponse { status }
        }
    };
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| no_verdict())?;
    if !v.get("isValid").is_some_and(|x| x.is_boolean()) {
        return Err(no_verdict());
    }
    let r: VerifyResponse =
        serde_json::from_value(v).map_err(|_| FacilitatorError::BadResponse { status })?;
    if r.valid() && !(200..300).contains(&status) {
        // A success flag on an error status is not a success.
        return Err(FacilitatorError::BadResponse { status });
    }
    Ok(r)
}

/// Parses a `/settle` answer: a JSON object with a `success` key, whatever the status. A
/// 4xx without one is [`FacilitatorError::Declined`]: the facilitator is up and refused the
/// call (unauthorized, malformed), which is no outage; only a 429 is known not to have been
/// acted on.
pub fn parse_settle(status: u16, body: &[u8]) -> Result<SettleResponse, FacilitatorError> {
    if status == 429 {
        // Rate limited: the call was not acted on, whatever the body says.
        return Err(FacilitatorError::Declined { status });
    }
    let no_verdict = || {
        if (400..500).contains(&status) {
            FacilitatorError::Declined { status }
        } else {
            FacilitatorError::BadResponse { status }
        }
    };
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| no_verdict())?;
    if v.get("success").is_none() {
        return Err(no_verdict());
    }
    let mut r: SettleResponse =
        serde_json::from_value(v).map_err(|_| FacilitatorError::BadResponse { status })?;
    if r.succeeded() && (!(200..300).contains(&status) || r.transaction.is_empty()) {
        // Claimed success without a transaction or on an error status: the outcome is unknown.
        r.success = serde_json::Value::Null;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Endpoint URLs are the base URL joined with the operation, parsed once per base; a base
    /// that does not parse is a configuration error, not a call.
    #[test]
    fn endpoints_are_parsed_once_per_base() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = FacilitatorClient::new(Arc::new(Metrics::new()));
        for (base, op, want) in [
            ("http://127.0.0.1:9", "verify", "http://127.0.0.1:9/verify"),
            (
                "https://f.example/x402",
                "settle",
                "https://f.example/x402/settle",
            ),
            (
                "https://f.example/x402",
                "supported",
                "https://f.example/x402/supported",
            ),
        ] {
            let url = client.endpoint(base, op).expect("parses");
            assert_eq!(url.as_str(), want);
        }
        assert_eq!(client.endpoints.read().expect("lock").len(), 2);
        assert!(matches!(
            client.endpoint("not a url", "verify"),
            Err(FacilitatorError::Config(_))
        ));
        for i in 0..MAX_ENDPOINTS + 1 {
            let _ = client.endpoint(&format!("http://h{i}.example"), "verify");
        }
        assert!(client.endpoints.read().expect("lock").len() <= MAX_ENDPOINTS);
    }

    /// Odd `/verify` answers: a verdict needs an object with a boolean `isValid`.
    #[test]
    fn odd_verify_answers() {
        // A verdict whose other fields have the wrong type: bad, not "no verdict".
        assert_eq!(
            parse_verify(200, br#"{"isValid":false,"invalidReason":5}"#).err(),
            Some(FacilitatorError::BadResponse { status: 200 })
        );
        assert_eq!(
            parse_verify(400, br#"{"isValid":false,"invalidReason":5}"#).err(),
            Some(FacilitatorError::BadResponse { status: 400 })
        );
        // No boolean isValid: no verdict (declined on a 4xx).
        for body in [
            &br#"{"payer":"0x1"}"#[..],
            br#"{"isValid":null}"#,
            br#"{"isValid":1}"#,
            b"[]",
        ] {
            assert_eq!(
                parse_verify(403, body).err(),
                Some(FacilitatorError::Declined { status: 403 })
            );
        }
        // An array is never a verdict, whatever it holds, on any status.
        for status in [200, 201] {
            for body in [&b"[true]"[..], b"[true,null,null,\"0x1\"]", b"\n[false]"] {
                assert_eq!(
                    parse_verify(status, body).err(),
                    Some(FacilitatorError::BadResponse { status })
                );
            }
        }
        // A repeated key: the last one counts, as in the tree.
        assert!(parse_verify(200, br#"{"isValid":false,"isValid":true}"#).is_ok_and(|r| r.valid()));
        // Not UTF-8, even in a field nobody reads: no verdict (a fuzzer's find).
        assert!(parse_verify(200, b"{\"isValid\":true,\"npayer\":\"0x\x9e\x9e1\"}").is_err());
        assert!(
            parse_settle(
                200,
                b"{\"success\":true,\"transaction\":\"0x1\",\"n\":\"\x9e\"}"
            )
            .is_err()
        );
        // Unknown fields are ignored.
        assert!(
            parse_verify(200, br#"{"isValid":true,"extra":{"a":[1]}}"#).is_ok_and(|r| r.valid())
        );
    }

    #[test]
    fn only_literal_true_counts() {
        assert!(parse_verify(200, br#"{"isValid":true,"payer":"0x1"}"#).is_ok_and(|r| r.valid()));
        assert!(parse_verify(200, br#"{"isValid":"true"}"#).is_err());
        assert!(
            parse_verify(
                400,
                br#"{"isValid":false,"invalidReason":"insufficient_funds"}"#
            )
            .is_ok_and(|r| !r.valid() && r.invalid_reason.as_deref() == Some("insufficient_funds"))
        );
        assert!(parse_verify(500, br#"{"isValid":true}"#).is_err());
        // A 5xx refusal is the facilitator failing (its node down), not a verdict.
        assert!(
            parse_verify(
                500,
                br#"{"isValid":false,"invalidReason":"unexpected_verify_error"}"#
            )
            .is_err()
        );
        assert!(
            parse_verify(
                400,
                br#"{"isValid":false,"invalidReason":"invalid_payload"}"#
            )
            .is_ok()
        );
        assert!(parse_verify(200, b"garbage").is_err());
        assert!(
            parse_settle(
                200,
                br#"{"success":true,"transaction":"0xab","network":"n"}"#
            )
            .is_ok_and(|r| r.succeeded())
        );
        assert!(
            parse_settle(200, br#"{"success":"true","transaction":"0xab"}"#)
                .is_ok_and(|r| !r.succeeded())
        );
        assert!(
            parse_settle(200, br#"{"success":true,"transaction":""}"#)
                .is_ok_and(|r| !r.succeeded())
        );
        assert!(parse_settle(200, br#"{"ok":1}"#).is_err());
        // 4xx without a verdict: declined, not an outage; 429 was never acted on.
        assert_eq!(
            parse_verify(429, b"slow down").err(),
            Some(FacilitatorError::Declined { status: 429 })
        );
        assert_eq!(
            parse_verify(401, br#"{"error":"unauthorized"}"#).err(),
            Some(FacilitatorError::Declined { status: 401 })
        );
        assert!(
            parse_settle(429, br#"{"success":false}"#)
                .is_err_and(|e| e.not_sent() && e.kind() == "declined")
        );
        // A settle refused without a verdict: declined (no outage), but perhaps acted on.
        assert!(
            parse_settle(401, br#"{"error":"unauthorized"}"#)
                .is_err_and(|e| !e.not_sent() && e == FacilitatorError::Declined { status: 401 })
        );
        assert_eq!(
            parse_settle(502, b"bad gateway").err(),
            Some(FacilitatorError::BadResponse { status: 502 })
        );
        // A verdict on a 4xx is a verdict.
        assert!(
            parse_settle(400, br#"{"success":false,"errorReason":"invalid_payload"}"#)
                .is_ok_and(|r| !r.succeeded())
        );
    }
}
