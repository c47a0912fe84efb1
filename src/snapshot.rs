//! The immutable runtime view of one configuration generation: router, rules with their
//! compiled prices, upstream pools, payment settings. Held in an `ArcSwap`; a request loads it
//! once and keeps it to the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use prometheus::Histogram;

use crate::access::{AccessEnv, AccessRule, RuleAccess, RuleAction};
use crate::facilitator::FacilitatorConf;
use crate::payment::{Limits, PaymentEnv, RulePolicy, RuleRef};
use crate::router::{Methods, Router};
use crate::secret::Secret;
use crate::x402::challenge::Offer;
use crate::x402::networks::Registry;

/// What happens to a request no rule matches (`[rules] unmatched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Forwarded to the default upstream, free (default).
    #[default]
    Forward,
    /// Refused with a 403 `no_matching_rule`.
    Block,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    /// `file:line:col` of its `[[rule]]`.
    pub origin: String,
    pub action: RuleAction,
    /// Index into [`Snapshot::upstreams`].
    pub upstream: usize,
    pub methods: Methods,
    pub host: String,
    pub path: String,
    /// When it settles and what happens when no facilitator answers.
    pub payment: RulePolicy,
    /// Audience prices, passes and shadow mode.
    pub access: RuleAccess,
    /// How discovery surfaces describe it.
    pub discovery: crate::discovery::RuleDiscovery,
}

impl Rule {
    /// This rule as the access decision sees it.
    pub fn access_rule(&self) -> AccessRule<'_> {
        AccessRule {
            id: &self.id,
            action: &self.action,
            access: &self.access,
        }
    }

    /// This rule as the payment gate sees it.
    pub fn payment_rule(&self) -> RuleRef<'_> {
        RuleRef {
            id: &self.id,
            policy: self.payment,
        }
    }

    /// Whether a request on this rule goes through the access path (audience, passes, shadow);
    /// plain free and block rules do not, so they cost nothing extra.
    pub fn needs_access(&self) -> bool {
        self.access.shadow
            || self.access.audiences.is_some()
            || matches!(self.action, RuleAction::Pay(_))
    }
}

/// A named pool of origin peers.
pub struct UpstreamPool {
    pub name: String,
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub tls: bool,
    pub sni: String,
    pub verify_cert: bool,
    /// CA certificates the peers' certificates are verified against (`ca_file`).
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    pub host_rewrite: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub health_interval: Option<Duration>,
    /// Fingerprint of the section: unchanged pools keep their health state across reloads.
    pub fingerprint: String,
    pub peers: Vec<String>,
    /// The pool's backends in a fixed order, for round-robin without the load balancer's
    /// per-call bookkeeping (the load balancer still runs the health checks).
    pub backends: Vec<Backend>,
    /// Round-robin position.
    pub next: AtomicUsize,
    /// This pool's upstream latency histogram, resolved on first use.
    pub latency: OnceLock<Histogram>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("name", &self.name)
            .field("peers", &self.peers)
            .finish()
    }
}

/// Payment settings shared by every rule.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    pub public_base_url: Option<String>,
    pub trust_forwarded_headers: bool,
    pub max_header_bytes: usize,
    pub forward_payer_headers: bool,
    pub cors_allow_origins: Vec<String>,
    /// Refused payments per client address allowed per failure window (0: no limit).
    pub failed_payments_per_client: u32,
    /// Refused payments per payer allowed per failure window (0: no limit).
    pub failed_payments_per_payer: u32,
    /// How long a `payment-identifier` is remembered (`None`: the extension is off).
    pub payment_identifier_window: Option<Duration>,
    /// Payments without a `payment-identifier` are refused.
    pub require_payment_identifier: bool,
    /// How long a request waits on the chain for a settlement left pending.
    pub pending_settlement_wait: Duration,
}

/// A TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListen {
    pub addr: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub h2: bool,
}

/// Settings that only take effect at start; a reload that changes them is refused by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupSettings {
    pub listen: Vec<String>,
    pub tls: Vec<TlsListen>,
    pub threads: usize,
    pub admin: Option<String>,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upstream_keepalive_pool_size: usize,
    /// Longest wait for a complete request head on a downstream connection.
    pub header_read_timeout: Duration,
    /// Bytes of each client connection's writes held until a flush.
    pub write_buffer_bytes: usize,
    pub facilitator_api: Option<String>,
    /// `[state]`: the store and this replica's name.
    pub state: crate::state::StateConf,
}

impl StartupSettings {
    /// Names of the settings that differ from `other`.
    pub fn changed_from(&self, other: &StartupSettings) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.listen != other.listen {
            out.push("server.listen");
        }
        if self.tls != other.tls {
            out.push("server.tls");
        }
        if self.threads != other.threads {
            out.push("server.threads");
        }
        if self.admin != other.admin {
            out.push("admin.listen");
        }
        if self.grace_period_seconds != other.grace_period_seconds {
            out.push("server.grace_period_seconds");
        }
        if self.graceful_shutdown_timeout_seconds != other.graceful_shutdown_timeout_seconds {
            out.push("server.graceful_shutdown_timeout_seconds");
        }
        if self.upstream_keepalive_pool_size != other.upstream_keepalive_pool_size {
            out.push("server.upstream_keepalive_pool_size");
        }
        if self.header_read_timeout != other.header_read_timeout {
            out.push("server.header_read_timeout_ms");
        }
        if self.write_buffer_bytes != other.write_buffer_bytes {
            out.push("server.write_buffer_bytes");
        }
        if self.facilitator_api != other.facilitator_api {
            out.push("facilitator_api.listen");
        }
        if self.state != other.state {
            out.push("state");
        }
        out
    }
}

/// Log output format (`[logging] format`).
#[derive(Debug, Clone, Copy, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// How the process logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter (`info`, `x402_gateway=debug,warn`).
    pub level: String,
    /// One structured event per request.
    pub access_log: bool,
    /// The OTLP/HTTP collector spans are exported to, if any.
    pub otlp_endpoint: Option<String>,
    pub otlp_service_name: String,
}

/// How configuration changes are picked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSettings {
    /// Watch the files (besides SIGHUP).
    pub watch: bool,
    /// Quiet time after the last change before reloading.
    pub debounce: Duration,
    /// Longest wait after the first change of a burst: files that keep changing are still
    /// reloaded this often.
    pub max_wait: Duration,
}

/// Where a snapshot was read from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub config: PathBuf,
    pub rules_dir: PathBuf,
    pub rule_files: Vec<PathBuf>,
    /// Other files read (TLS certificates and keys, CA bundles): a change reloads.
    pub other_files: Vec<PathBuf>,
}

/// One configuration generation.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    /// sha256 over every file read, in order.
    pub content_hash: String,
    /// The certificate of each TLS listener (`startup.tls`, same order), from this
    /// generation's files.
    pub tls_keys: Vec<Arc<rustls::sign::CertifiedKey>>,
    pub loaded_at: SystemTime,
    pub sources: Sources,
    pub startup: StartupSettings,
    pub router: Router,
    pub rules: Vec<Rule>,
    pub upstreams: Vec<Arc<UpstreamPool>>,
    pub upstream_index: BTreeMap<String, usize>,
    pub default_upstream: usize,
    pub payment: PaymentSettings,
    pub registry: Registry,
    pub facilitators: Vec<FacilitatorConf>,
    /// The `local` facilitator that backs the facilitator API, when it is served.
    pub facilitator_api_settler: Option<String>,
    /// Bearer token the facilitator API requires, when configured.
    pub facilitator_api_token: Option<Secret>,
    /// Facilitator API calls per second per client address (0: no limit).
    pub facilitator_api_rate: u32,
    /// Every `payTo` this configuration names (lower-case): the only recipients the
    /// facilitator API relays payments to.
    pub recipients: Vec<String>,
    /// Bearer token the admin listener requires (all but `/healthz` and `/readyz`).
    pub admin_token: Option<Secret>,
    /// `/readyz` fails on facilitator and state store outages too.
    pub strict_readiness: bool,
    pub ledger: crate::payment::ledger::LedgerConf,
    pub reload: ReloadSettings,
    pub logging: LogSettings,
    pub case_sensitive: bool,
    /// What requests no rule matches get.
    pub unmatched: Unmatched,
    /// `[server] hosts`: the only Host values served (empty: any).
    pub hosts: Vec<crate::router::HostPattern>,
    /// `[server] trusted_proxies`: peers whose forwarding headers name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Things that are valid but probably not what the operator wants, each
    /// `file:line:col: field: message`; `check` prints them and every load logs them.
    pub warnings: Vec<String>,
    /// The `[[crawler]]` list of every rules file.
    pub crawlers: Arc<crate::access::audience::CrawlerSet>,
    /// Agents whose Web Bot Auth signatures are accepted.
    pub web_bot_auth: Arc<crate::access::webbotauth::BotAuthConf>,
    /// Pass keys (`None`: no `[passes]` section).
    pub passes: Option<Arc<crate::access::pass::PassKeys>>,
    /// The browser paywall page.
    pub paywall: Arc<crate::template::Template>,
    /// The wallet paywall page (`[paywall] wallet`), when configured.
    pub wallet_paywall: Option<Arc<crate::wallet_paywall::WalletPage>>,
    /// `[discovery]`: the documents served and the `bazaar` extension.
    pub discovery: crate::discovery::DiscoverySettings,
    /// `batch-settlement` channels: who authorizes their claims, and when the claimer runs.
    pub channels: crate::payment::channel::claimer::ChannelsConf,
}

impl Snapshot {
    /// What the access decision reads from this generation.
    pub fn access_env(&self) -> AccessEnv<'_> {
        AccessEnv {
            crawlers: &self.crawlers,
            web_bot_auth: &self.web_bot_auth,
            passes: self.passes.as_deref(),
            max_payment_header_bytes: self.payment.max_header_bytes,
        }
    }

    /// What the payment engine reads from this generation.
    pub fn payment_env(&self) -> PaymentEnv<'_> {
        PaymentEnv {
            facilitators: &self.facilitators,
            registry: &self.registry,
            ledger: &self.ledger,
            limits: Limits {
                max_header_bytes: self.payment.max_header_bytes,
                failed_per_client: self.payment.failed_payments_per_client,
                failed_per_payer: self.payment.failed_payments_per_payer,
            },
            pending_wait: self.payment.pending_settlement_wait,
            identifier: crate::payment::IdentifierConf {
                window: self.payment.payment_identifier_window,
                required: self.payment.require_payment_identifier,
            },
            channels: &self.channels,
        }
    }

    /// Every offer of every priced rule, as `(rule id, offer)`.
    pub fn priced_offers(&self) -> impl Iterator<Item = (&str, &Offer)> {
        self.rules.iter().flat_map(|r| match &r.action {
            RuleAction::Pay(p) => p.offers.iter().map(|o| (r.id.as_str(), &**o)).collect(),
            _ => Vec::new(),
        })
    }

    /// The rule for a request, by index into [`Self::rules`].
    pub fn route(&self, host: &str, method: &str, key: &str) -> Option<usize> {
        let mut bit = Methods::bit(method);
        if bit == Methods::bit("HEAD") {
            // HEAD is answered like GET: a rule for GET covers it.
            bit |= Methods::bit("GET");
        }
        self.router.find(host, bit, key)
    }
}

/// Resolves listen addresses with port 0 to free ports, so the process can report them. Every
/// probe socket stays bound until the picker is dropped: two `:0` addresses of one process
/// (a proxy listener and the admin one, say) never get the same port.
#[derive(Debug, Default)]
pub struct PortPicker {
    held: Vec<std::net::TcpListener>,
}

impl PortPicker {
    /// `addr` itself when its port is set; otherwise the same host with a port no other
    /// address of this picker got.
    pub fn resolve(&mut self, addr: &str) -> std::io::Result<String> {
        let parsed: SocketAddr = addr.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
        })?;
        if parsed.port() != 0 {
            return Ok(addr.to_owned());
        }
        let l = std::net::TcpListener::bind(parsed)?;
        let picked = l.local_addr()?.to_string();
        self.held.push(l);
        Ok(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::PortPicker;
    use std::collections::HashSet;

    #[test]
    fn every_port_zero_address_of_one_picker_gets_its_own_port() {
        let mut ports = PortPicker::default();
        let picked: Vec<String> = (0..64)
            .map(|_| ports.resolve("127.0.0.1:0").expect("free port"))
            .collect();
        let distinct: HashSet<&String> = picked.iter().collect();
        assert_eq!(distinct.len(), picked.len(), "{picked:?}");
        assert!(picked.iter().all(|a| !a.ends_with(":0")), "{picked:?}");
        // A set port is kept as written, and a bad address is an error, not a panic.
        assert_eq!(
            ports.resolve("127.0.0.1:8080").expect("set"),
            "127.0.0.1:8080"
        );
        assert!(ports.resolve("not an address").is_err());
    }
}
