//! One front for every configured facilitator, whatever its kind: HTTP, Coinbase CDP (a JWT
//! per call) or the built-in settler. Records each call's outcome in the pool's health and
//! keeps the per-network chain readers used to resolve unknown settlement outcomes.

use crate::correlation::Correlation;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::cdp::SigningKey;
use super::client::{FacilitatorClient, FacilitatorError};
use super::conf::{FacilitatorConf, FacilitatorKind};
use super::local::Settlers;
use super::pool::Pool;
use super::rpc::ChainReader;
use super::supported::SupportedCache;
use crate::metrics::Metrics;
use crate::x402::challenge::Offer;
use crate::x402::networks::Registry;
use crate::x402::types::{SettleResponse, VerifyResponse};

/// Timeout of one JSON-RPC read.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Every facilitator, as the payment gate sees them.
pub struct Facilitators {
    pub client: FacilitatorClient,
    pub pool: Pool,
    pub supported: SupportedCache,
    pub settlers: Arc<Settlers>,
    cdp_keys: Mutex<HashMap<String, Arc<SigningKey>>>,
    readers: Mutex<HashMap<String, ChainReader>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Facilitators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Facilitators").finish_non_exhaustive()
    }
}

/// Which call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Verify,
    Settle,
    Supported,
}

impl Op {
    pub fn path(self) -> &'static str {
        match self {
            Op::Verify => "verify",
            Op::Settle => "settle",
            Op::Supported => "supported",
        }
    }
}

impl Facilitators {
    pub fn new(metrics: Arc<Metrics>, settlers: Arc<Settlers>) -> Self {
        Facilitators {
            client: FacilitatorClient::new(metrics.clone()),
            pool: Pool::default(),
            supported: SupportedCache::default(),
            settlers,
            cdp_keys: Mutex::new(HashMap::new()),
            readers: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Facilitators to try for a payment, best first: those that serve it, in rotation,
    /// ordered by priority and weight.
    pub fn candidates<'a>(
        &self,
        facilitators: &'a [FacilitatorConf],
        version: u8,
        scheme: &str,
        network: &str,
        v1_name: Option<&str>,
    ) -> Vec<&'a FacilitatorConf> {
        self.pool.order(
            self.supported
                .candidates(facilitators, version, scheme, network, v1_name),
        )
    }

    /// Authentication headers for one call.
    fn auth(
        &self,
        fac: &FacilitatorConf,
        op: Op,
    ) -> Result<Vec<(&'static str, String)>, FacilitatorError> {
        let FacilitatorKind::Cdp { key_id, key_secret } = &fac.kind else {
            return Ok(Vec::new());
        };
        let key = {
            let mut keys = self.cdp_keys.lock().unwrap_or_else(|p| p.into_inner());
            match keys.get(&fac.fingerprint) {
                Some(k) => k.clone(),
                None => {
                    let k = Arc::new(
                        SigningKey::parse(key_secret.expose())
                            .map_err(|e| FacilitatorError::Config(e.to_string()))?,
                    );
                    keys.insert(fac.fingerprint.clone(), k.clone());
                    k
                }
            }
        };
        let uri: http::Uri = format!("{}/{}", fac.url, op.path())
            .parse()
            .map_err(|_| FacilitatorError::Config("bad url".into()))?;
        let host = uri.host().unwrap_or_default();
        let method = if op == Op::Supported { "GET" } else { "POST" };
        let token = key
            .token(key_id.expose(), method, host, uri.path())
            .map_err(|e| FacilitatorError::Config(e.to_string()))?;
        Ok(vec![
            ("authorization", format!("Bearer {token}")),
            (
                "correlation-context",
                format!(
                    "sdk_language=rust,source=x402-gateway,source_version={}",
                    env!("CARGO_PKG_VERSION")
                ),
            ),
        ])
    }

    fn record<T>(&self, fac: &FacilitatorConf, result: &Result<T, FacilitatorError>) {
        match result {
            Ok(_) => {
                self.pool.success(fac);
                self.metrics
                    .facilitator_healthy
                    .with_label_values(&[fac.name.as_str()])
                    .set(1);
            }
            // Declined calls (4xx, 429) and local misconfiguration say nothing about health.
            Err(FacilitatorError::Config(_) | FacilitatorError::Declined { .. }) => {}
            Err(_) => {
                if self.pool.failure(fac) {
                    self.metrics
                        .facilitator_ejections
                        .with_label_values(&[fac.name.as_str()])
                        .inc();
                    self.metrics
                        .facilitator_healthy
                        .with_label_values(&[fac.name.as_str()])
                        .set(0);
                    tracing::warn!(facilitator = %fac.name, "facilitator taken out of rotation");
                }
            }
        }
    }

    /// `/verify` on one facilitator, with the request's correlation headers.
    pub async fn verify(
        &self,
        fac: &FacilitatorConf,
        body: &[u8],
        correlation: &Correlation,
    ) -> Result<VerifyResponse, FacilitatorError> {
        let result = match &fac.kind {
            FacilitatorKind::Local { .. } => match self.settlers.get(fac) {
                Ok(s) => match s.verify(body).await {
                    // As for HTTP facilitators: a 5xx is the settler failing, not a verdict.
                    (status, _) if status >= 500 => Err(FacilitatorError::BadResponse { status }),
                    (_, r) => Ok(r),
                },
                Err(e) => Err(FacilitatorError::Config(e.to_string())),
            },
            _ => {
                let (span, traced) =
                    crate::traces::facilitator_call(correlation, "verify", &fac.name);
                let mut headers = self.auth(fac, Op::Verify)?;
                headers.extend(traced.as_ref().unwrap_or(correlation).headers());
                let r = self.client.verify(fac, body.to_vec(), &headers).await;
                end_call(span, r.as_ref().err());
                r
            }
        };
        self.record(fac, &result);
        result
    }

    /// `/settle` on one facilitator, with the request's correlation headers.
    pub async fn settle(
        &self,
        fac: &FacilitatorConf,
        body: &[u8],
        correlation: &Correlation,
    ) -> Result<SettleResponse, FacilitatorError> {
        let result = match &fac.kind {
            FacilitatorKind::Local { .. } => match self.settlers.get(fac) {
                Ok(s) => Ok(s.settle(body).await.1),
                Err(e) => Err(FacilitatorError::Config(e.to_string())),
            },
            _ => {
                let (span, traced) =
                    crate::traces::facilitator_call(correlation, "settle", &fac.name);
                let mut headers = self.auth(fac, Op::Settle)?;
                headers.extend(traced.as_ref().unwrap_or(correlation).headers());
                let r = self.client.settle(fac, body.to_vec(), &headers).await;
                end_call(span, r.as_ref().err());
                r
            }
        };
        self.record(fac, &result);
        result
    }

    /// `/supported` on one facilitator; a good answer also brings it back into rotation.
    pub async fn probe(
        &self,
        fac: &FacilitatorConf,
    ) -> Result<serde_json::Value, FacilitatorError> {
        let result = match &fac.kind {
            FacilitatorKind::Local { .. } => match self.settlers.get(fac) {
                Ok(s) => Ok(s.supported()),
                Err(e) => Err(FacilitatorError::Config(e.to_string())),
            },
            _ => {
                let auth = self.auth(fac, Op::Supported)?;
                self.client.supported(fac, &auth).await
            }
        };
        self.record(fac, &result);
        if let Ok(v) = &result {
            self.supported.store(fac, v);
        }
        result
    }

    /// A chain reader for a network, when it has RPC endpoints.
    pub fn reader(&self, registry: &Registry, network: &str) -> Option<ChainReader> {
        let net = registry.network(network)?;
        if net.rpc_urls.is_empty() {
            return None;
        }
        let urls: Vec<&str> = net.rpc_urls.iter().map(|u| u.expose()).collect();
        let key = format!("{network}|{}", urls.join(","));
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = readers.get(&key) {
            return Some(r.clone());
        }
        let r = ChainReader::new(&net.rpc_urls, RPC_TIMEOUT).ok()?;
        readers.insert(key, r.clone());
        Some(r)
    }

    /// The networks of `offers` (each priced rule's, as `(rule id, offer)`) that no
    /// facilitator in rotation serves.
    pub fn networks_without_facilitator<'a>(
        &self,
        facilitators: &[FacilitatorConf],
        offers: impl IntoIterator<Item = (&'a str, &'a Offer)>,
    ) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, o) in offers {
            let (n, scheme) = (&o.requirements.network, &o.requirements.scheme);
            if out.contains(n) {
                continue;
            }
            let v1 = o.v1_network.as_deref();
            let healthy = self
                .supported
                .candidates(facilitators, 2, scheme, n, v1)
                .into_iter()
                .chain(self.supported.candidates(facilitators, 1, scheme, n, v1))
                .any(|f| self.pool.health(f).healthy());
            if !healthy {
                out.push(n.clone());
            }
        }
        out
    }
}

/// Ends a facilitator call's span, marked failed when the call failed.
fn end_call(span: Option<crate::traces::RequestSpan>, error: Option<&FacilitatorError>) {
    use opentelemetry::trace::{Span, Status};
    if let Some(mut s) = span {
        if let Some(e) = error {
            s.set_status(Status::error(e.to_string()));
        }
        s.end();
    }
}
