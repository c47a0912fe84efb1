//! The audience and access parts of the configuration as written: `[web_bot_auth]`, `[passes]`,
//! `[paywall]` in gateway.toml, `[[crawler]]` tables and a rule's `audiences`, `operators`,
//! `pass` and `mode` in rules files. Unknown keys are refused.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::access::audience::Purpose;

/// `[rule.audiences]`: a price (same forms as `price`), `"free"` or `"block"` per audience.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudiencesDef {
    pub human: Option<Spanned<toml::Value>>,
    pub training: Option<Spanned<toml::Value>>,
    pub search: Option<Spanned<toml::Value>>,
    pub user: Option<Spanned<toml::Value>>,
    pub agent: Option<Spanned<toml::Value>>,
    /// Any bot with a valid Web Bot Auth signature.
    pub verified: Option<Spanned<toml::Value>>,
}

/// `[rule.operators]`: verified operator name → price, `"free"` or `"block"`.
pub type OperatorsDef = BTreeMap<String, Spanned<toml::Value>>;

/// `pass = { ttl, scope, prefix, methods, max_requests }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassDef {
    /// `"1h"`, `"30m"` or seconds.
    pub ttl: Spanned<toml::Value>,
    /// `resource` (default), `rule` or `prefix`.
    pub scope: Option<Spanned<String>>,
    /// For `scope = "prefix"`.
    pub prefix: Option<Spanned<String>>,
    /// Methods the pass admits (default: the rule's).
    pub methods: Option<Spanned<Vec<String>>>,
    /// Requests admitted after the paid one (default: unlimited until expiry).
    pub max_requests: Option<Spanned<i64>>,
}

/// A rule's mode.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModeDef {
    /// Charge (default).
    Enforce,
    /// Compute and count the decision, forward without charging.
    Shadow,
}

/// One `[[crawler]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrawlerDef {
    pub name: Spanned<String>,
    pub operator: Spanned<String>,
    pub purpose: Spanned<Purpose>,
    /// Case-insensitive substring of the User-Agent. Leave it out for robots.txt-only tokens.
    pub user_agent: Option<Spanned<String>>,
    /// Origin of the operator's Web Bot Auth key directory: requests claiming this crawler
    /// must be signed by it.
    pub signature_agent: Option<Spanned<String>>,
    /// Free text (documentation link, notes).
    pub description: Option<String>,
}

/// `[web_bot_auth]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebBotAuthSection {
    /// Agents whose signatures are accepted; only their directories are ever fetched.
    #[serde(default)]
    pub agents: Vec<AgentDef>,
    #[serde(default = "default_min_cache")]
    pub min_cache_seconds: u64,
    #[serde(default = "default_max_cache")]
    pub max_cache_seconds: u64,
    #[serde(default = "default_cache")]
    pub default_cache_seconds: u64,
    #[serde(default = "default_validity")]
    pub max_validity_seconds: u64,
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout_ms: u64,
}

fn default_min_cache() -> u64 {
    60
}
fn default_max_cache() -> u64 {
    86_400
}
fn default_cache() -> u64 {
    3_600
}
fn default_validity() -> u64 {
    3_600
}
fn default_skew() -> u64 {
    60
}
fn default_fetch_timeout() -> u64 {
    3_000
}

impl Default for WebBotAuthSection {
    fn default() -> Self {
        WebBotAuthSection {
            agents: Vec::new(),
            min_cache_seconds: default_min_cache(),
            max_cache_seconds: default_max_cache(),
            default_cache_seconds: default_cache(),
            max_validity_seconds: default_validity(),
            clock_skew_seconds: default_skew(),
            fetch_timeout_ms: default_fetch_timeout(),
        }
    }
}

/// `{ origin = "https://chatgpt.com", operator = "OpenAI", purpose = "user" }`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentDef {
    /// `https://host`; `http://` only for loopback hosts.
    pub origin: Spanned<String>,
    pub operator: Spanned<String>,
    pub purpose: Option<Spanned<Purpose>>,
    /// Directory path under the origin (default `/.well-known/http-message-signatures-directory`).
    pub directory_path: Option<Spanned<String>>,
}

/// `[passes]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassesSection {
    /// `hmac-sha256` (default) or `ed25519`.
    #[serde(default = "default_algorithm")]
    pub algorithm: Spanned<String>,
    /// Id of the key that signs new passes; without it this gateway only verifies.
    pub signing_key: Option<Spanned<String>>,
    #[serde(default)]
    pub keys: Vec<PassKeyDef>,
    /// Cookie name (default `x402_pass`).
    pub cookie: Option<Spanned<String>>,
    /// Pass ids refused from now on.
    #[serde(default)]
    pub revoked: Vec<Spanned<String>>,
}

fn default_algorithm() -> Spanned<String> {
    Spanned::new(0..0, "hmac-sha256".into())
}

/// `[[passes.keys]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassKeyDef {
    pub id: Spanned<String>,
    /// HMAC secret (≥ 32 bytes), or an Ed25519 private key (32 bytes, base64 or hex). `${VAR}`.
    pub secret: Option<Spanned<String>>,
    /// Ed25519 public key (32 bytes, base64 or hex): verifies passes, cannot sign.
    pub public_key: Option<Spanned<String>>,
}

/// `[paywall]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PaywallSection {
    /// HTML template, relative to gateway.toml (default: the built-in page).
    pub template: Option<Spanned<String>>,
    /// The wallet paywall page made by `scripts/paywall-bundle.sh` (the reference
    /// `@x402/paywall` EVM page), relative to gateway.toml: browsers get it instead of the
    /// template when the first offer is on an EVM network, and can pay from their wallet.
    pub wallet: Option<Spanned<String>>,
    /// The site's name, shown by the wallet page.
    #[serde(default)]
    pub app_name: String,
    /// The site's logo URL, passed to the wallet page.
    #[serde(default)]
    pub app_logo: String,
}
