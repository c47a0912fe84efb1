//! How each configured facilitator is reached and believed: the runtime form of
//! `[[facilitators]]`, built by the configuration compiler.

use std::time::Duration;

use crate::secret::Secret;

/// A network the built-in settler can send transactions on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConf {
    pub caip2: String,
    pub v1_name: Option<String>,
    pub chain_id: u64,
    pub rpc_urls: Vec<Secret>,
}

/// How a facilitator is reached.
#[derive(Debug, Clone)]
pub enum FacilitatorKind {
    Http,
    /// Coinbase CDP: per-request JWT signed with this API key.
    Cdp {
        key_id: Secret,
        key_secret: Secret,
    },
    /// The built-in settler.
    Local {
        relayer_key: Secret,
        receipt_timeout: Duration,
        chains: Vec<ChainConf>,
    },
}

/// How a facilitator's `success: true` is believed (`[[facilitators]] confirm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirm {
    /// The transaction's receipt must show the transfer (payer, payTo, amount, nonce) on
    /// chain, where the network has `rpc_urls` (default).
    #[default]
    Receipt,
    /// The answer is believed as given.
    Trust,
}

/// A configured facilitator.
#[derive(Debug, Clone)]
pub struct FacilitatorConf {
    pub name: String,
    pub kind: FacilitatorKind,
    /// Base URL (`http`, `cdp`); empty for `local`.
    pub url: String,
    pub networks: Vec<String>,
    pub timeout: Duration,
    pub headers: Vec<(String, Secret)>,
    pub priority: u32,
    pub weight: u32,
    pub failure_threshold: u32,
    pub max_eject: Duration,
    /// How a settlement this facilitator reports is believed.
    pub confirm: Confirm,
    /// How long to look for the receipt of a transaction it reported.
    pub confirm_timeout: Duration,
    /// Its `/supported` signers are every address it sends settlements from. Read where it is
    /// used, so not part of the fingerprint: changing it keeps health and known signers.
    pub signers_complete: bool,
    /// Changes whenever anything above changes: runtime state (health, settlers) is keyed by it.
    pub fingerprint: String,
}
