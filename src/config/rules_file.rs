//! `rules/*.toml` as written: `[[rule]]` tables (and `[[crawler]]`, see `access_file`), unknown
//! keys refused.

use serde::Deserialize;
use toml::Spanned;

use super::access_file::{AudiencesDef, ModeDef, OperatorsDef, PassDef};
use super::file::{FailurePolicy, Settlement};

/// What a matching rule does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionDef {
    /// Require payment (the default when a price is given).
    Pay,
    /// Forward without payment.
    Free,
    /// Answer 403.
    Block,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub id: Spanned<String>,
    /// Host glob (`example.com`, `*.example.com`); default any host.
    pub host: Option<Spanned<String>>,
    /// Path glob: `*` within a segment, `**` across segments.
    pub path: Option<Spanned<String>>,
    /// Path prefix: `/api/` means `/api/**`.
    pub prefix: Option<Spanned<String>>,
    /// Methods; default any. `GET` also covers `HEAD`.
    pub methods: Option<Spanned<Vec<String>>>,
    /// `"$0.01"`, `0`, or `{ amount = "10000", asset = "usdc" }`.
    pub price: Option<Spanned<toml::Value>>,
    pub action: Option<Spanned<ActionDef>>,
    pub pay_to: Option<Spanned<String>>,
    pub networks: Option<Vec<Spanned<String>>>,
    pub upstream: Option<Spanned<String>>,
    pub description: Option<String>,
    pub mime_type: Option<String>,
    pub settlement: Option<Settlement>,
    pub max_timeout_seconds: Option<Spanned<u64>>,
    pub on_facilitator_failure: Option<FailurePolicy>,
    /// Keep the query string in the resource URL sent to facilitators and written to the
    /// ledger (default `[payment] resource_query`, false).
    pub resource_query: Option<bool>,
    /// Prices per audience (`human`, `training`, `search`, `user`, `agent`, `verified`).
    pub audiences: Option<Spanned<AudiencesDef>>,
    /// Prices per verified operator.
    pub operators: Option<Spanned<OperatorsDef>>,
    /// A pass issued after a settled payment.
    pub pass: Option<Spanned<PassDef>>,
    /// Rule ids whose passes this rule honours at any price (`"*"`: every rule). Without it,
    /// a pass bought under another rule admits only where it paid at least this rule's price.
    pub accept_passes_from: Option<Vec<Spanned<String>>>,
    /// `enforce` (default) or `shadow`.
    pub mode: Option<Spanned<ModeDef>>,
    /// Schemes offered: `"exact"` (default), `"upto"`, `"batch-settlement"`, or several
    /// (`["exact", "upto"]`).
    pub schemes: Option<Spanned<Vec<String>>>,
    /// `upto`: the ceiling a payer signs for (`"$0.05"` or `{ amount, asset }`).
    pub max_price: Option<Spanned<toml::Value>>,
    /// `upto`: what sets the charge; `"origin"` (default): the origin's `Settlement-Overrides`
    /// response header (`{"amount": "1234"}`, `"50%"` of the ceiling or `"$0.002"`), capped
    /// at the ceiling and removed before the client sees it (without it the ceiling is
    /// charged); `"bytes"` / `"seconds"`: `meter_price` per started KiB of body / second of
    /// response, settled when the body ended.
    pub meter: Option<Spanned<String>>,
    /// `upto` with `meter = "bytes"` or `"seconds"`: the price of each started KiB of body, or
    /// of each started second of response (`"$0.0001"` or `{ amount, asset }`).
    pub meter_price: Option<Spanned<toml::Value>>,
    /// `upto`: the facilitator allowed to settle (its `/supported` `extra.facilitatorAddress`).
    pub facilitator_address: Option<Spanned<String>>,
    /// `batch-settlement`: who authorizes claims and refunds of the rule's channels: a private
    /// key (`"${RECEIVER_AUTHORIZER_KEY}"`, the gateway signs) or an address (the facilitator
    /// signs; its `/supported` `extra.receiverAuthorizer`).
    pub receiver_authorizer: Option<Spanned<String>>,
    /// `batch-settlement`: how long a payer's timed withdrawal waits, in seconds (900 to
    /// 2592000; default 900): the time the claimer has to claim before escrow leaves.
    pub withdraw_delay_seconds: Option<Spanned<u64>>,
    /// `batch-settlement`: the deposit the 402 asks a new channel for (`"$5"` or
    /// `{ amount, asset }`; default ten requests' worth). Reference clients deposit it.
    pub min_deposit: Option<Spanned<toml::Value>>,
    /// `batch-settlement`: how payers fund channels: `"eip3009"` (default; a token with
    /// ERC-3009) or `"permit2"` (any ERC-20: the payer approves Permit2 once, then signs a
    /// Permit2 transfer bound to the channel for each deposit).
    pub deposit_method: Option<Spanned<String>>,
    /// How long a wallet that paid may read the resource again by signing in with it
    /// (Sign-In-With-X; `"24h"`). Needs `[payment] public_base_url`.
    pub sign_in_window: Option<Spanned<String>>,
    /// How discovery surfaces describe this rule (the `bazaar` extension of its 402s, the
    /// `/.well-known/x402` list and the OpenAPI document).
    pub discovery: Option<Spanned<DiscoveryDef>>,
}

/// `[rule.discovery]`: what catalogs and agents learn about a priced rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryDef {
    /// Listed in the `bazaar` extension and the discovery documents (default true).
    pub listed: Option<bool>,
    /// The method callers use (default: the rule's first method, else `GET`).
    pub method: Option<Spanned<String>>,
    /// `json`, `form-data` or `text`, for `POST`, `PUT` and `PATCH` (default `json`).
    pub body_type: Option<Spanned<String>>,
    /// An example input (query parameters, or the body).
    pub input: Option<toml::Table>,
    /// JSON Schema of the query parameters or the body.
    pub input_schema: Option<toml::Table>,
    /// An example response.
    pub output_example: Option<toml::Value>,
    /// JSON Schema of the response.
    pub output_schema: Option<toml::Table>,
    /// The path the documents list for a rule whose path is a pattern (`/api/weather` for
    /// `prefix = "/api/"`); a rule with a literal path lists that path.
    pub path: Option<Spanned<String>>,
}
