//! `gateway.toml` as written: one struct per section, unknown keys refused.

pub use crate::payment::policy::{FailurePolicy, Settlement};
pub use crate::snapshot::LogFormat;
use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `[server]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Plain HTTP listen addresses (`host:port`; port 0 picks a free port).
    #[serde(default)]
    pub listen: Vec<Spanned<String>>,
    /// TLS listeners.
    #[serde(default)]
    pub tls: Vec<TlsListener>,
    /// Worker threads (default: number of CPUs).
    pub threads: Option<Spanned<usize>>,
    /// SIGTERM: new connections stop at once; in-flight requests then get this many seconds
    /// (always waited in full) before the workers stop (default 5).
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    /// Then the longest time the workers get to stop (default 3).
    #[serde(default = "default_shutdown")]
    pub graceful_shutdown_timeout_seconds: u64,
    /// Idle upstream connections kept per process (default 128).
    #[serde(default = "default_pool")]
    pub upstream_keepalive_pool_size: usize,
    /// Longest wait for a complete request head, idle keep-alive time included; then the
    /// connection is closed (default 30 000).
    pub header_read_timeout_ms: Option<Spanned<u64>>,
    /// Bytes of each client connection's writes held until a flush, so a response head and a
    /// body of known length leave together (default 8 192, at most 262 144; 0: every write goes
    /// out at once).
    pub write_buffer_bytes: Option<Spanned<usize>>,
    /// The only Host values served (names or globs such as `*.example.com`); any other Host,
    /// or none, gets a 421 before routing. Default: any host.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Proxies (CIDRs or addresses) whose `Forwarded` / `X-Forwarded-For` name the client for
    /// logs, limits and the ledger. Default: none; the peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
}

fn default_grace() -> u64 {
    5
}
fn default_shutdown() -> u64 {
    3
}
fn default_pool() -> usize {
    128
}

/// `[[server.tls]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    pub listen: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    /// Offer HTTP/2 through ALPN (default true).
    #[serde(default = "yes")]
    pub h2: bool,
}

fn yes() -> bool {
    true
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default = "default_admin")]
    pub listen: Spanned<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// When set (`${VAR}`), every endpoint but `/healthz` and `/readyz` requires
    /// `Authorization: Bearer <token>`. Required when `listen` is not a loopback address.
    pub auth_token: Option<Spanned<String>>,
    /// `/readyz` also fails while a priced network has no healthy facilitator or the shared
    /// state store is down (by default they are reported, and only take priced routes down).
    #[serde(default)]
    pub strict_readiness: bool,
}

fn default_admin() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9402".into())
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            listen: default_admin(),
            enabled: true,
            auth_token: None,
            strict_readiness: false,
        }
    }
}

/// `[upstreams.NAME]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// `host:port` of each peer, used round-robin.
    pub peers: Spanned<Vec<Spanned<String>>>,
    /// The upstream used by requests no rule sends elsewhere.
    #[serde(default)]
    pub default: bool,
    /// Connect to the peers with TLS.
    #[serde(default)]
    pub tls: bool,
    /// SNI and certificate name for TLS (default: the peer's host).
    pub sni: Option<Spanned<String>>,
    /// Verify the peer certificate (default true).
    #[serde(default = "yes")]
    pub verify_cert: bool,
    /// Verify it against these CA certificates (a PEM file, relative to gateway.toml)
    /// instead of the system's roots: an origin with a private CA.
    pub ca_file: Option<Spanned<String>>,
    /// Rewrite the Host header to this value (default: keep the client's).
    pub host: Option<Spanned<String>>,
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_ms")]
    pub read_timeout_ms: u64,
    #[serde(default = "default_read_ms")]
    pub write_timeout_ms: u64,
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    pub health_check: Option<HealthCheckSection>,
}

fn default_connect_ms() -> u64 {
    2_000
}
fn default_read_ms() -> u64 {
    30_000
}
fn default_idle_ms() -> u64 {
    60_000
}

/// Active health check kind.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    Tcp,
    Http,
}

/// `[upstreams.NAME.health_check]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(default = "default_kind")]
    pub kind: HealthKind,
    /// Path requested by `http` checks (2xx = healthy).
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// Host header of `http` checks (default: the upstream's `host`, else `localhost`).
    pub host: Option<String>,
    #[serde(default = "default_hc_interval")]
    pub interval_ms: u64,
    #[serde(default = "one")]
    pub healthy_after: usize,
    #[serde(default = "one")]
    pub unhealthy_after: usize,
}

fn default_kind() -> HealthKind {
    HealthKind::Tcp
}
fn default_hc_path() -> String {
    "/".into()
}
fn default_hc_interval() -> u64 {
    1_000
}
fn one() -> usize {
    1
}

/// `[payment]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PaymentSection {
    /// Default recipient address.
    pub pay_to: Option<Spanned<String>>,
    /// Networks offered, in order (CAIP-2 ids or v1 names). USD prices use each network's USD asset.
    #[serde(default)]
    pub networks: Vec<Spanned<String>>,
    #[serde(default = "default_timeout")]
    pub max_timeout_seconds: Spanned<u64>,
    /// Base of resource URLs (`https://example.com`); default: the request's scheme and Host.
    pub public_base_url: Option<Spanned<String>>,
    /// Take scheme and host from `X-Forwarded-Proto` / `X-Forwarded-Host` for resource URLs.
    #[serde(default)]
    pub trust_forwarded_headers: bool,
    #[serde(default = "default_settlement")]
    pub settlement: Settlement,
    /// Largest accepted payment header, in bytes.
    #[serde(default = "default_header_limit")]
    pub max_header_bytes: usize,
    /// Tell the origin who paid (`X-Payment-Payer`, `X-Payment-Amount`, ...).
    #[serde(default)]
    pub forward_payer_headers: bool,
    /// Origins allowed to read 402s and receipts from browsers (`*` or a list).
    #[serde(default = "default_cors")]
    pub cors_allow_origins: Vec<String>,
    /// No facilitator available: `closed` (503) or `open` (serve unpaid, counted).
    #[serde(default)]
    pub on_facilitator_failure: FailurePolicy,
    /// Payments from one client address that a facilitator may refuse (unfunded or forged
    /// payments, each a facilitator call) within 10 s; past that, that client's payment
    /// attempts get a 429 with `Retry-After` until its failures age out. 0: no limit
    /// (default 50).
    #[serde(default = "default_client_failures")]
    pub failed_payments_per_client: u32,
    /// The same per payer address (default 20).
    #[serde(default = "default_payer_failures")]
    pub failed_payments_per_payer: u32,
    /// Put the query string into resource URLs sent to facilitators and written to the
    /// ledger (default false: queries may carry personal data or tokens).
    #[serde(default)]
    pub resource_query: bool,
    /// How long a payment named by the `payment-identifier` extension is remembered: a retry
    /// with the same identifier and payload is served again without a second charge (default
    /// 900 s; 0: the extension is not offered and identifiers are ignored).
    #[serde(default = "default_identifier_window")]
    pub payment_identifier_window_seconds: u64,
    /// Refuse payments that carry no `payment-identifier` (default false).
    #[serde(default)]
    pub require_payment_identifier: bool,
    /// How long a request waits for a settlement the facilitator left pending (it named a
    /// transaction the chain does not show yet) before it is answered without content; the
    /// ledger line is settled later either way (default 3000).
    #[serde(default = "default_pending_wait")]
    pub pending_settlement_wait_ms: u64,
    /// `batch-settlement`: every channel's unclaimed vouchers are claimed on chain at least
    /// this often, in seconds (default 60).
    #[serde(default = "default_claim_interval")]
    pub channel_claim_interval_seconds: u64,
    /// `batch-settlement`: a receiver's unclaimed value (atomic units) that is claimed at once,
    /// without waiting for the interval (default 0: only on the interval).
    #[serde(default)]
    pub channel_claim_threshold: u64,
    /// `batch-settlement`: channels claimed in one transaction at most (default 100).
    #[serde(default = "default_claims_per_transaction")]
    pub channel_claims_per_transaction: usize,
    /// `batch-settlement`: a channel without a request for this long (seconds) that still
    /// holds escrow not charged gets it refunded, its charges claimed in the same transaction
    /// (default 0: only when the payer asks).
    #[serde(default)]
    pub channel_refund_idle_seconds: u64,
    /// `batch-settlement`: a channel's record is dropped from the state store once it owes
    /// nothing (every charge claimed, ledgered and swept; with idle refunds on, no escrow
    /// left) and had no request for this long (seconds; default a day; 0: kept forever). A
    /// later request on it starts again from the chain.
    #[serde(default = "default_channel_retire")]
    pub channel_retire_seconds: u64,
}

fn default_channel_retire() -> u64 {
    86_400
}

fn default_claim_interval() -> u64 {
    60
}

fn default_claims_per_transaction() -> usize {
    100
}

fn default_pending_wait() -> u64 {
    u64::try_from(crate::payment::RESOLVE_WINDOW.as_millis()).unwrap_or(3_000)
}

fn default_identifier_window() -> u64 {
    900
}

fn default_client_failures() -> u32 {
    50
}
fn default_payer_failures() -> u32 {
    20
}

fn default_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 300)
}
fn default_settlement() -> Settlement {
    Settlement::After
}
fn default_header_limit() -> usize {
    16 * 1024
}
fn default_cors() -> Vec<String> {
    vec!["*".into()]
}

impl Default for PaymentSection {
    fn default() -> Self {
        PaymentSection {
            pay_to: None,
            networks: Vec::new(),
            max_timeout_seconds: default_timeout(),
            public_base_url: None,
            trust_forwarded_headers: false,
            settlement: default_settlement(),
            max_header_bytes: default_header_limit(),
            forward_payer_headers: false,
            cors_allow_origins: default_cors(),
            payment_identifier_window_seconds: default_identifier_window(),
            require_payment_identifier: false,
            pending_settlement_wait_ms: default_pending_wait(),
            channel_claim_interval_seconds: default_claim_interval(),
            channel_claim_threshold: 0,
            channel_claims_per_transaction: default_claims_per_transaction(),
            channel_refund_idle_seconds: 0,
            channel_retire_seconds: default_channel_retire(),
            on_facilitator_failure: FailurePolicy::Closed,
            failed_payments_per_client: default_client_failures(),
            failed_payments_per_payer: default_payer_failures(),
            resource_query: false,
        }
    }
}

/// `[[networks]]`: a chain that is not built in, a v1 name for one, or its RPC endpoints.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkDecl {
    pub id: Spanned<String>,
    pub v1_name: Option<Spanned<String>>,
    /// JSON-RPC endpoints, tried in order: used by the built-in settler and to resolve
    /// settlements whose outcome a facilitator left unknown.
    #[serde(default)]
    pub rpc_urls: Vec<Spanned<String>>,
}

/// `[[assets]]`: an EIP-3009 token.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AssetDecl {
    pub id: Spanned<String>,
    pub network: Spanned<String>,
    pub address: Spanned<String>,
    /// EIP-712 domain name and version of the token.
    pub name: String,
    pub version: String,
    pub decimals: Spanned<u32>,
    /// One unit is one US dollar: `"$…"` prices on this network are paid in this asset.
    #[serde(default)]
    pub usd: bool,
}

/// How a facilitator is reached.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FacilitatorKind {
    /// An x402 facilitator over HTTP (default).
    #[default]
    Http,
    /// Coinbase CDP's facilitator: HTTP with a per-request JWT.
    Cdp,
    /// The built-in settler: verifies and settles on chain with a relayer key, no third party.
    Local,
}

/// `[[facilitators]]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FacilitatorSection {
    pub name: Spanned<String>,
    #[serde(default)]
    pub kind: FacilitatorKind,
    /// Base URL (`http` and `cdp`; CDP defaults to its public endpoint).
    pub url: Option<Spanned<String>>,
    /// Networks this facilitator is used for (default: those its `/supported` lists; for
    /// `local`, every network with `rpc_urls`).
    #[serde(default)]
    pub networks: Vec<Spanned<String>>,
    #[serde(default = "default_fac_timeout")]
    pub timeout_ms: u64,
    /// Lower is tried first.
    #[serde(default)]
    pub priority: u32,
    /// Share of calls among facilitators of the same priority.
    #[serde(default = "one_u32")]
    pub weight: u32,
    /// Consecutive failures that take it out of rotation.
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
    /// Longest time out of rotation before a recovery probe (doubling from 1 s).
    #[serde(default = "default_eject_ms")]
    pub max_eject_ms: u64,
    /// Extra request headers (values may use `${VAR}`).
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    /// CDP API key id (`${VAR}`).
    pub api_key_id: Option<Spanned<String>>,
    /// CDP API key secret: an EC P-256 PEM or a base64 Ed25519 key (`${VAR}`).
    pub api_key_secret: Option<Spanned<String>>,
    /// `local`: the relayer's private key (`${VAR}`), or a file holding it.
    pub relayer_key: Option<Spanned<String>>,
    pub relayer_key_file: Option<Spanned<String>>,
    /// `local`: how long to wait for a transaction receipt.
    #[serde(default = "default_receipt_ms")]
    pub receipt_timeout_ms: u64,
    /// `receipt` (default): a settlement this facilitator reports counts only once the
    /// transaction's receipt shows the transfer on chain (where the network has `rpc_urls`);
    /// `trust`: its answer is believed. The built-in settler checks its own receipts.
    #[serde(default)]
    pub confirm: crate::facilitator::Confirm,
    /// How long to look for that receipt before the settlement counts as unconfirmed.
    #[serde(default = "default_confirm_ms")]
    pub confirm_timeout_ms: u64,
    /// Its `/supported` lists every address it sends settlements from: a settlement it left
    /// unclear whose authorization a transaction from another address used is another's
    /// payment (`payment_already_used`), not perhaps this request's (a 503).
    #[serde(default)]
    pub signers_complete: bool,
}

fn default_confirm_ms() -> u64 {
    10_000
}

fn default_fac_timeout() -> u64 {
    10_000
}
fn one_u32() -> u32 {
    1
}
fn default_threshold() -> u32 {
    3
}
fn default_eject_ms() -> u64 {
    30_000
}
fn default_receipt_ms() -> u64 {
    30_000
}

/// `[facilitator_api]`: serve `/verify`, `/settle`, `/supported` from the built-in settler.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FacilitatorApiSection {
    pub listen: Spanned<String>,
    /// Name of a `kind = "local"` facilitator.
    pub settler: Spanned<String>,
    /// When set (`${VAR}`), `/verify` and `/settle` require `Authorization: Bearer <token>`.
    /// Required when `listen` is not a loopback address.
    pub auth_token: Option<Spanned<String>>,
    /// Addresses, besides every `pay_to` of this configuration, that payments relayed
    /// through the API may go to (for other x402 servers using this facilitator).
    #[serde(default)]
    pub recipients: Vec<Spanned<String>>,
    /// `/verify` and `/settle` calls per second from one client address; more get a 429
    /// (default 20, 0: no limit).
    #[serde(default = "default_api_rate")]
    pub requests_per_second_per_client: u32,
}

fn default_api_rate() -> u32 {
    20
}

/// `[reload]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReloadSection {
    #[serde(default = "yes")]
    pub watch: bool,
    #[serde(default = "default_debounce")]
    pub debounce_ms: u64,
    #[serde(default = "default_max_wait")]
    pub max_wait_ms: u64,
}

fn default_debounce() -> u64 {
    200
}

fn default_max_wait() -> u64 {
    1000
}

impl Default for ReloadSection {
    fn default() -> Self {
        ReloadSection {
            watch: true,
            debounce_ms: default_debounce(),
            max_wait_ms: default_max_wait(),
        }
    }
}

/// `[logging]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    #[serde(default = "default_format")]
    pub format: LogFormat,
    /// A tracing filter (`info`, `x402_gateway=debug,warn`).
    #[serde(default = "default_level")]
    pub level: String,
    /// One structured event per request.
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Export a trace span per request (and per facilitator call) to this OTLP/HTTP
    /// collector (`http://host:4318`; spans go to `/v1/traces`). Applies at start.
    pub otlp_endpoint: Option<Spanned<String>>,
    /// The `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub otlp_service_name: String,
}

fn default_service_name() -> String {
    "x402-gateway".into()
}

fn default_format() -> LogFormat {
    LogFormat::Pretty
}
fn default_level() -> String {
    "info".into()
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection {
            format: default_format(),
            level: default_level(),
            access_log: true,
            otlp_endpoint: None,
            otlp_service_name: default_service_name(),
        }
    }
}

/// `[rules]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RulesSection {
    /// Folder of `*.toml` rule files, relative to this file (default `rules`).
    #[serde(default = "default_rules_dir")]
    pub dir: Spanned<String>,
    /// Match paths case-sensitively (default false: `/API` is priced like `/api`).
    #[serde(default)]
    pub case_sensitive: bool,
    /// Requests no rule matches: `forward` (default, free) or `block` (403).
    #[serde(default)]
    pub unmatched: crate::snapshot::Unmatched,
}

fn default_rules_dir() -> Spanned<String> {
    Spanned::new(0..0, "rules".into())
}

impl Default for RulesSection {
    fn default() -> Self {
        RulesSection {
            dir: default_rules_dir(),
            case_sensitive: false,
            unmatched: crate::snapshot::Unmatched::Forward,
        }
    }
}

/// `[ledger]`: where settlements are recorded.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// JSON-lines file, relative to this file (default `receipts.jsonl`); `""` turns it off.
    #[serde(default = "default_ledger_path")]
    pub path: String,
    /// Rotate when the file would grow past this size (default 64 MiB).
    #[serde(default = "default_ledger_max")]
    pub max_bytes: u64,
    /// Rotated files kept (default 5); 0 never rotates (the file only grows, nothing is
    /// ever deleted).
    #[serde(default = "default_ledger_keep")]
    pub keep: usize,
}

fn default_ledger_path() -> String {
    "receipts.jsonl".into()
}
fn default_ledger_max() -> u64 {
    64 * 1024 * 1024
}
fn default_ledger_keep() -> usize {
    5
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            path: default_ledger_path(),
            max_bytes: default_ledger_max(),
            keep: default_ledger_keep(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayFile {
    pub server: Option<ServerSection>,
    pub admin: AdminSection,
    pub upstreams: BTreeMap<String, Spanned<UpstreamSection>>,
    pub payment: PaymentSection,
    pub networks: Vec<NetworkDecl>,
    pub assets: Vec<AssetDecl>,
    pub facilitators: Vec<FacilitatorSection>,
    pub reload: ReloadSection,
    pub logging: LoggingSection,
    pub rules: RulesSection,
    pub ledger: LedgerSection,
    pub facilitator_api: Option<FacilitatorApiSection>,
    pub web_bot_auth: super::access_file::WebBotAuthSection,
    pub passes: Option<super::access_file::PassesSection>,
    pub paywall: super::access_file::PaywallSection,
    pub state: super::state_file::StateSection,
    pub discovery: DiscoverySection,
}

/// `[discovery]`: the `bazaar` extension in 402s and the documents that list priced resources.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    /// Put the `bazaar` extension in the 402s of listed rules (default true).
    #[serde(default = "yes")]
    pub bazaar: bool,
    /// Path of the `/.well-known/x402` document on the public listener (default: not served).
    pub well_known: Option<Spanned<String>>,
    /// Path of the OpenAPI 3.1 document of priced routes (default: not served).
    pub openapi: Option<Spanned<String>>,
    /// OpenAPI `info.title` (default `x402-gateway`).
    pub title: Option<String>,
    /// OpenAPI `info.version` (default `1.0.0`).
    pub version: Option<String>,
    /// OpenAPI `info.description`.
    pub description: Option<String>,
    /// Signatures proving control of the `payTo` addresses, listed as given.
    #[serde(default)]
    pub ownership_proofs: Vec<String>,
}

impl Default for DiscoverySection {
    fn default() -> Self {
        DiscoverySection {
            bazaar: true,
            well_known: None,
            openapi: None,
            title: None,
            version: None,
            description: None,
            ownership_proofs: Vec::new(),
        }
    }
}
