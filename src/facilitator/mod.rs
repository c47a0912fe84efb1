//! Talking to x402 facilitators: the HTTP client for `/verify`, `/settle` and `/supported`,
//! and the cached view of what each facilitator supports. Knows nothing of the gate's policy.

pub mod cdp;
pub mod client;
pub mod conf;
pub mod dispatch;
pub mod local;
pub mod pool;
pub mod probe_log;
pub mod rpc;
pub mod supported;

pub use client::{FacilitatorClient, FacilitatorError};
pub use conf::{ChainConf, Confirm, FacilitatorConf, FacilitatorKind};

use crate::correlation::Correlation;
use async_trait::async_trait;

use crate::x402::networks::Registry;
use crate::x402::types::{SettleResponse, VerifyResponse};

/// The facilitator calls the payment engine makes: which facilitators serve a payment, verify,
/// settle, and a chain reader for confirming what they report. [`dispatch::Facilitators`] is
/// the real one; the engine takes any, so it can be exercised without a network.
#[async_trait]
pub trait Facilitate: Send + Sync {
    /// The facilitators to try for a payment, best first.
    fn candidates<'a>(
        &self,
        facilitators: &'a [FacilitatorConf],
        version: u8,
        scheme: &str,
        network: &str,
        v1_name: Option<&str>,
    ) -> Vec<&'a FacilitatorConf>;

    /// `/verify` on one facilitator, carrying the request's correlation headers.
    async fn verify(
        &self,
        fac: &FacilitatorConf,
        body: &[u8],
        correlation: &Correlation,
    ) -> Result<VerifyResponse, FacilitatorError>;

    /// `/settle` on one facilitator, carrying the request's correlation headers.
    async fn settle(
        &self,
        fac: &FacilitatorConf,
        body: &[u8],
        correlation: &Correlation,
    ) -> Result<SettleResponse, FacilitatorError>;

    /// A chain reader for a network, when it has RPC endpoints.
    fn reader(&self, registry: &Registry, network: &str) -> Option<rpc::ChainReader>;

    /// The addresses a facilitator sends `network`'s transactions from, as its `/supported`
    /// lists them, when its configuration says that list is complete (`signers_complete`);
    /// `None` otherwise or when not known.
    fn senders(
        &self,
        _fac: &FacilitatorConf,
        _network: &str,
    ) -> Option<std::sync::Arc<[alloy::primitives::Address]>> {
        None
    }
}

#[async_trait]
impl Facilitate for dispatch::Facilitators {
    fn candidates<'a>(
        &self,
        facilitators: &'a [FacilitatorConf],
        version: u8,
        scheme: &str,
        network: &str,
        v1_name: Option<&str>,
    ) -> Vec<&'a FacilitatorConf> {
        dispatch::Facilitators::candidates(self, facilitators, version, scheme, network, v1_name)
    }

    async fn verify(
        &self,
        fac: &FacilitatorConf,
        body: &[u8],
        correlation: &Correlation,
    ) -> Result<VerifyResponse, FacilitatorError> {
        dispatch::Facilitators::verify(self, fac, body, correlation).await
    }

    async fn settle(
        &self,
        fac: &FacilitatorConf,
        body: &[u8],
        correlation: &Correlation,
    ) -> Result<SettleResponse, FacilitatorError> {
        dispatch::Facilitators::settle(self, fac, body, correlation).await
    }

    fn reader(&self, registry: &Registry, network: &str) -> Option<rpc::ChainReader> {
        dispatch::Facilitators::reader(self, registry, network)
    }

    fn senders(
        &self,
        fac: &FacilitatorConf,
        network: &str,
    ) -> Option<std::sync::Arc<[alloy::primitives::Address]>> {
        self.supported.senders(fac, network)
    }
}
