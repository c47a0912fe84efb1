//! Compiles what was read into a [`Snapshot`], checking every value and recording each problem
//! with its location. Nothing here opens a socket: pools are data until a server runs them.

use std::collections::{BTreeMap, HashMap};
use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use pingora::lb::LoadBalancer;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use sha2::{Digest, Sha256};
use toml::Spanned;

use super::file::{FacilitatorKind as KindDef, FacilitatorSection, HealthKind, UpstreamSection};
use super::price::{self, PriceError};
use super::rules_file::{ActionDef, RuleDef};
use super::{Parsed, ParsedRule, Reporter, env};
use crate::access::{RuleAccess, RuleAction};
use crate::facilitator::{ChainConf, FacilitatorConf, FacilitatorKind};
use crate::payment::RulePolicy;
use crate::router::{HostPattern, Methods, PathPattern, Route, Router};
use crate::schemes::{EXACT, Scheme};
use crate::snapshot::{
    PaymentSettings, Rule, Snapshot, Sources, StartupSettings, TlsListen, UpstreamPool,
};
use crate::x402::challenge::{Offer, Priced};
use crate::x402::networks::{self, Asset, Registry};

const MAX_TIMEOUT_LIMIT: u64 = 86_400;

/// Compiles parsed files. Returns `None` only when a part needed to go on is missing; the
/// caller treats any recorded issue as failure.
pub fn compile(
    p: &Parsed,
    rep: &mut Reporter,
    generation: u64,
    previous: Option<&Snapshot>,
) -> Option<Snapshot> {
    let g = &p.gateway;
    let cfg = 0usize; // gateway.toml is always source 0
    let base = rep.sources[cfg]
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();

    // Startup settings.
    let server = g.server.clone();
    let mut listen = Vec::new();
    let mut tls = Vec::new();
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut grace, mut shutdown, mut pool_size) = (5, 3, 128);
    let mut header_read_timeout = Duration::from_secs(30);
    let mut hosts = Vec::new();
    match &server {
        // A `[server]` that failed to parse was already reported; "missing" would be noise.
        None if reported(rep, "server") => {}
        None => rep.file(
            &rep.sources[cfg].path.clone(),
            "server",
            "missing `[server]` section",
        ),
        Some(s) => {
            for l in &s.listen {
                check_addr(rep, cfg, l, "server.listen");
                listen.push(l.get_ref().clone());
            }
            for t in &s.tls {
                check_addr(rep, cfg, &t.listen, "server.tls.listen");
                let cert = base.join(t.cert.get_ref());
                let key = base.join(t.key.get_ref());
                if !cert.is_file() {
                    rep.at(
                        cfg,
                        t.cert.span(),
                        "server.tls.cert",
                        format!("no such file {}", cert.display()),
                    );
                }
                if !key.is_file() {
                    rep.at(
                        cfg,
                        t.key.span(),
                        "server.tls.key",
                        format!("no such file {}", key.display()),
                    );
                }
                tls.push(TlsListen {
                    addr: t.listen.get_ref().clone(),
                    cert,
                    key,
                    h2: t.h2,
                });
            }
            if s.listen.is_empty() && s.tls.is_empty() {
                rep.file(
                    &rep.sources[cfg].path.clone(),
                    "server.listen",
                    "no listen address",
                );
            }
            if let Some(t) = &s.threads {
                if *t.get_ref() == 0 || *t.get_ref() > 1024 {
                    rep.at(
                        cfg,
                        t.span(),
                        "server.threads",
                        "must be between 1 and 1024",
                    );
                }
                threads = *t.get_ref();
            }
            grace = s.grace_period_seconds;
            shutdown = s.graceful_shutdown_timeout_seconds;
            pool_size = s.upstream_keepalive_pool_size;
            if let Some(t) = &s.header_read_timeout_ms {
                if !(100..=600_000).contains(t.get_ref()) {
                    rep.at(
                        cfg,
                        t.span(),
                        "server.header_read_timeout_ms",
                        "must be between 100 and 600000",
                    );
                }
                header_read_timeout = Duration::from_millis(*t.get_ref());
            }
            for h in &s.hosts {
                match crate::router::HostPattern::parse(h.get_ref()) {
                    Ok(p) => hosts.push(p),
                    Err(e) => rep.at(cfg, h.span(), "server.hosts", e),
                }
            }
        }
    }
    let admin = if g.admin.enabled {
        check_addr(rep, cfg, &g.admin.listen, "admin.listen");
        if g.admin.auth_token.is_none()
            && let Ok(addr) = g.admin.listen.get_ref().parse::<std::net::SocketAddr>()
            && !addr.ip().is_loopback()
        {
            rep.at(
                cfg,
                g.admin.listen.span(),
                "admin.listen",
                "an admin listener off loopback needs `auth_token` (it shows the configuration and revokes passes)",
            );
        }
        Some(g.admin.listen.get_ref().clone())
    } else {
        None
    };
    let startup = StartupSettings {
        listen,
        tls,
        threads,
        admin,
        grace_period_seconds: grace,
        graceful_shutdown_timeout_seconds: shutdown,
        upstream_keepalive_pool_size: pool_size,
        header_read_timeout,
        facilitator_api: g
            .facilitator_api
            .as_ref()
            .map(|a| a.listen.get_ref().clone()),
    };

    // Networks and assets.
    let mut registry = Registry::builtin();
    for n in &g.networks {
        let v1 = n.v1_name.as_ref().map(|v| v.get_ref().as_str());
        if let Err(e) = registry.add_network(n.id.get_ref(), v1) {
            let span = match (&e, &n.v1_name) {
                (networks::RegistryError::V1NameTaken(..), Some(v)) => v.span(),
                _ => n.id.span(),
            };
            rep.at(cfg, span, "networks", e);
            continue;
        }
        let mut urls = Vec::new();
        for u in &n.rpc_urls {
            // `${VAR}`: hosted endpoints carry API keys in the URL.
            let Some(url) = secret(rep, cfg, u, "networks.rpc_urls") else {
                continue;
            };
            match url.expose().parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some() =>
                {
                    urls.push(url)
                }
                _ => rep.at(cfg, u.span(), "networks.rpc_urls", "must be an http(s) URL"),
            }
        }
        registry.set_rpc_urls(n.id.get_ref(), urls);
    }
    for a in &g.assets {
        let Some(net) = registry
            .network(a.network.get_ref())
            .map(|n| n.caip2.clone())
        else {
            rep.at(
                cfg,
                a.network.span(),
                "assets.network",
                format!("unknown network `{}`", a.network.get_ref()),
            );
            continue;
        };
        if *a.decimals.get_ref() > 36 {
            rep.at(
                cfg,
                a.decimals.span(),
                "assets.decimals",
                "must be at most 36",
            );
            continue;
        }
        let asset = Asset {
            id: a.id.get_ref().clone(),
            network: net,
            address: a.address.get_ref().clone(),
            eip712_name: a.name.clone(),
            eip712_version: a.version.clone(),
            decimals: *a.decimals.get_ref(),
            usd: a.usd,
        };
        if let Err(e) = registry.add_asset(asset) {
            let span = match e {
                networks::RegistryError::BadAddress(_) => a.address.span(),
                _ => a.id.span(),
            };
            rep.at(cfg, span, "assets", e);
        }
    }

    // Payment defaults.
    let pay = &g.payment;
    let default_pay_to = pay
        .pay_to
        .as_ref()
        .and_then(|p| checked_address(rep, cfg, p, "payment.pay_to"));
    let mut default_networks = Vec::new();
    for n in &pay.networks {
        match registry.network(n.get_ref()) {
            Some(net) => default_networks.push(Spanned::new(n.span(), net.caip2.clone())),
            None => rep.at(
                cfg,
                n.span(),
                "payment.networks",
                format!("unknown network `{}`", n.get_ref()),
            ),
        }
    }
    check_timeout(
        rep,
        cfg,
        &pay.max_timeout_seconds,
        "payment.max_timeout_seconds",
    );
    let public_base_url = pay.public_base_url.as_ref().and_then(|u| {
        let s = u.get_ref().trim_end_matches('/');
        match s.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri.query().is_none() =>
            {
                Some(s.to_owned())
            }
            _ => {
                rep.at(
                    cfg,
                    u.span(),
                    "payment.public_base_url",
                    "must be an http(s) URL such as https://example.com",
                );
                None
            }
        }
    });
    if pay.max_header_bytes < 1024 || pay.max_header_bytes > 64 * 1024 {
        rep.file(
            &rep.sources[cfg].path.clone(),
            "payment.max_header_bytes",
            "must be between 1024 and 65536",
        );
    }

    // Upstreams.
    let mut upstreams = Vec::new();
    let mut upstream_index = BTreeMap::new();
    let mut defaults = Vec::new();
    for (name, u) in &g.upstreams {
        if let Some(pool) = build_pool(rep, cfg, name, u, previous) {
            if u.get_ref().default {
                defaults.push(upstreams.len());
            }
            upstream_index.insert(name.clone(), upstreams.len());
            upstreams.push(pool);
        }
    }
    let default_upstream = match (defaults.as_slice(), g.upstreams.len()) {
        ([one], _) => *one,
        // An upstream section that failed to parse was already reported; counting the
        // remaining ones would only add follow-on noise.
        _ if reported(rep, "upstreams") => 0,
        ([], 1) => 0,
        ([], 0) => {
            rep.file(
                &rep.sources[cfg].path.clone(),
                "upstreams",
                "at least one upstream is required",
            );
            0
        }
        ([], _) => {
            rep.file(
                &rep.sources[cfg].path.clone(),
                "upstreams",
                "several upstreams: mark one with `default = true`",
            );
            0
        }
        (_, _) => {
            rep.file(
                &rep.sources[cfg].path.clone(),
                "upstreams",
                "only one upstream may have `default = true`",
            );
            0
        }
    };

    // Facilitators.
    let mut facilitators = Vec::new();
    let mut fac_names = HashMap::new();
    for f in &g.facilitators {
        if let Some(prev) = fac_names.insert(f.name.get_ref().clone(), f.name.span()) {
            let at = rep.where_is(cfg, prev);
            rep.at(
                cfg,
                f.name.span(),
                "facilitators.name",
                format!("duplicate name, first at {at}"),
            );
        }
        if let Some(fc) = compile_facilitator(rep, cfg, &base, &registry, f) {
            facilitators.push(fc);
        }
    }
    let admin_token = g
        .admin
        .auth_token
        .as_ref()
        .and_then(|t| secret(rep, cfg, t, "admin.auth_token"));
    let facilitator_api_token = g
        .facilitator_api
        .as_ref()
        .and_then(|api| api.auth_token.as_ref())
        .and_then(|t| secret(rep, cfg, t, "facilitator_api.auth_token"));
    let facilitator_api_settler = g.facilitator_api.as_ref().map(|api| {
        check_addr(rep, cfg, &api.listen, "facilitator_api.listen");
        if api.auth_token.is_none()
            && let Ok(addr) = api.listen.get_ref().parse::<std::net::SocketAddr>()
            && !addr.ip().is_loopback()
        {
            rep.at(
                cfg,
                api.listen.span(),
                "facilitator_api.listen",
                "a facilitator API off loopback needs `auth_token` (its relayer pays the gas of every settlement)",
            );
        }
        let name = api.settler.get_ref();
        let local = facilitators
            .iter()
            .any(|f| &f.name == name && matches!(f.kind, FacilitatorKind::Local { .. }));
        if !local {
            rep.at(
                cfg,
                api.settler.span(),
                "facilitator_api.settler",
                format!("`{name}` is not a `kind = \"local\"` facilitator"),
            );
        }
        name.clone()
    });

    // Audiences and access: trusted bot agents, pass keys, the paywall page, crawlers.
    let web_bot_auth = super::access::web_bot_auth(rep, cfg, &g.web_bot_auth);
    let pass_keys = super::access::passes(rep, cfg, g.passes.as_ref());
    let paywall = super::access::paywall(rep, cfg, &base, &g.paywall);
    let crawlers = super::access::crawlers(rep, &p.crawlers);
    let access = super::access::AccessCtx {
        operators: web_bot_auth
            .operators()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        passes: pass_keys.as_deref(),
        case_sensitive: g.rules.case_sensitive,
    };

    // Rules.
    let case_sensitive = g.rules.case_sensitive;
    let ctx = RuleCtx {
        access: &access,
        registry: &registry,
        default_pay_to: default_pay_to.as_deref(),
        default_networks: &default_networks,
        default_timeout: *pay.max_timeout_seconds.get_ref(),
        default_settlement: pay.settlement,
        default_failure_policy: pay.on_facilitator_failure,
        default_resource_query: pay.resource_query,
        upstream_index: &upstream_index,
        default_upstream,
        case_sensitive,
    };
    let mut rules = Vec::new();
    let mut routes = Vec::new();
    let mut origins: Vec<&ParsedRule> = Vec::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    for pr in &p.rules {
        let id = pr.def.id.get_ref();
        let here = rep.where_is(pr.src, pr.def.id.span());
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            rep.at(
                pr.src,
                pr.def.id.span(),
                "rule.id",
                "must be non-empty letters, digits, '-', '_' or '.'",
            );
        }
        if let Some(first) = ids.insert(id.clone(), here.clone()) {
            rep.at(
                pr.src,
                pr.def.id.span(),
                "rule.id",
                format!("duplicate rule id `{id}`, first at {first}"),
            );
        }
        if let Some((rule, route)) = compile_rule(rep, &ctx, pr, here) {
            rules.push(rule);
            routes.push(route);
            origins.push(pr);
        }
    }
    // `accept_passes_from` names rules that exist and sell passes.
    for pr in &origins {
        for name in pr.def.accept_passes_from.iter().flatten() {
            let n = name.get_ref();
            let sells = origins
                .iter()
                .any(|o| o.def.id.get_ref() == n && o.def.pass.is_some());
            if n != "*" && !sells {
                rep.at(
                    pr.src,
                    name.span(),
                    "rule.accept_passes_from",
                    format!("no rule `{n}` that issues passes (`pass = {{ … }}`)"),
                );
            }
        }
    }
    let (router, conflicts) = Router::build(routes);
    for c in conflicts {
        let (a, b) = (origins[c.0], origins[c.1]);
        let where_a = rep.where_is(a.src, a.def.id.span());
        rep.at(
            b.src,
            b.def.id.span(),
            "rule",
            format!(
                "rule `{}` and rule `{}` ({where_a}) are equally specific and can match the same request",
                b.def.id.get_ref(),
                a.def.id.get_ref()
            ),
        );
    }

    if !rep.issues.is_empty() {
        return None;
    }

    let mut hasher = Sha256::new();
    for s in &rep.sources {
        hasher.update(s.path.display().to_string().as_bytes());
        hasher.update([0]);
        hasher.update(s.text.as_bytes());
        hasher.update([0]);
    }
    // Every address a payment here may go to: the facilitator API relays only to these.
    let mut recipients: Vec<String> = rules
        .iter()
        .flat_map(|r| {
            let audience = r.access.audiences.iter().flat_map(|a| {
                [
                    &a.human,
                    &a.training,
                    &a.search,
                    &a.user,
                    &a.agent,
                    &a.verified,
                ]
                .into_iter()
                .flatten()
                .chain(a.operators.iter().map(|(_, p)| p))
            });
            std::iter::once(&r.action).chain(audience)
        })
        .filter_map(|a| match a {
            RuleAction::Pay(p) => Some(p),
            _ => None,
        })
        .flat_map(|p| {
            p.offers
                .iter()
                .map(|o| o.requirements.pay_to.to_ascii_lowercase())
        })
        .chain(default_pay_to.iter().map(|p| p.to_ascii_lowercase()))
        .collect();
    for r in g.facilitator_api.iter().flat_map(|api| &api.recipients) {
        if let Some(a) = checked_address(rep, cfg, r, "facilitator_api.recipients") {
            recipients.push(a.to_ascii_lowercase());
        }
    }
    recipients.sort();
    recipients.dedup();
    let mut snapshot = Snapshot {
        generation,
        content_hash: hex::encode(hasher.finalize()),
        loaded_at: SystemTime::now(),
        sources: Sources {
            config: rep.sources[cfg].path.clone(),
            rules_dir: p.rules_dir.clone(),
            rule_files: p.rule_files.clone(),
        },
        startup,
        router,
        rules,
        upstreams,
        upstream_index,
        default_upstream,
        payment: PaymentSettings {
            public_base_url,
            trust_forwarded_headers: pay.trust_forwarded_headers,
            max_header_bytes: pay.max_header_bytes,
            forward_payer_headers: pay.forward_payer_headers,
            cors_allow_origins: pay.cors_allow_origins.clone(),
            failed_payments_per_client: pay.failed_payments_per_client,
            failed_payments_per_payer: pay.failed_payments_per_payer,
        },
        registry,
        facilitators,
        facilitator_api_settler,
        facilitator_api_token,
        facilitator_api_rate: g
            .facilitator_api
            .as_ref()
            .map_or(0, |api| api.requests_per_second_per_client),
        recipients,
        admin_token,
        ledger: crate::payment::ledger::LedgerConf {
            path: (!g.ledger.path.is_empty()).then(|| base.join(&g.ledger.path)),
            max_bytes: g.ledger.max_bytes.max(4096),
            keep: g.ledger.keep,
        },
        reload: crate::snapshot::ReloadSettings {
            watch: g.reload.watch,
            debounce: Duration::from_millis(g.reload.debounce_ms),
        },
        logging: crate::snapshot::LogSettings {
            format: g.logging.format,
            level: g.logging.level.clone(),
            access_log: g.logging.access_log,
        },
        case_sensitive,
        unmatched: g.rules.unmatched,
        hosts,
        warnings: Vec::new(),
        crawlers: Arc::new(crawlers),
        web_bot_auth: Arc::new(web_bot_auth),
        passes: pass_keys,
        paywall,
    };
    snapshot.warnings = super::lint::warnings(&snapshot);
    Some(snapshot)
}

/// Whether a problem was already recorded for `field` or one of its sub-fields.
fn reported(rep: &Reporter, field: &str) -> bool {
    rep.issues.iter().any(|i| {
        i.field
            .strip_prefix(field)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

fn check_addr(rep: &mut Reporter, src: usize, addr: &Spanned<String>, field: &str) {
    if addr.get_ref().parse::<std::net::SocketAddr>().is_err() {
        rep.at(
            src,
            addr.span(),
            field,
            format!("`{}` is not an IP:port address", addr.get_ref()),
        );
    }
}

fn check_timeout(rep: &mut Reporter, src: usize, t: &Spanned<u64>, field: &str) {
    if *t.get_ref() == 0 || *t.get_ref() > MAX_TIMEOUT_LIMIT {
        rep.at(
            src,
            t.span(),
            field,
            format!("must be between 1 and {MAX_TIMEOUT_LIMIT}"),
        );
    }
}

fn checked_address(
    rep: &mut Reporter,
    src: usize,
    a: &Spanned<String>,
    field: &str,
) -> Option<String> {
    let c = networks::checksum_address(a.get_ref());
    if c.is_none() {
        rep.at(
            src,
            a.span(),
            field,
            format!("`{}` is not a 0x-prefixed 20-byte address", a.get_ref()),
        );
    }
    c
}

fn fingerprint(u: &UpstreamSection) -> String {
    let peers: Vec<&String> = u.peers.get_ref().iter().map(|p| p.get_ref()).collect();
    format!(
        "{peers:?}|{}|{:?}|{}|{:?}|{}|{}|{}|{}|{:?}",
        u.tls,
        u.sni.as_ref().map(|s| s.get_ref()),
        u.verify_cert,
        u.host.as_ref().map(|s| s.get_ref()),
        u.connect_timeout_ms,
        u.read_timeout_ms,
        u.write_timeout_ms,
        u.idle_timeout_ms,
        u.health_check
    )
}

fn build_pool(
    rep: &mut Reporter,
    src: usize,
    name: &str,
    u: &Spanned<UpstreamSection>,
    previous: Option<&Snapshot>,
) -> Option<Arc<UpstreamPool>> {
    let field = format!("upstreams.{name}");
    let sec = u.get_ref();
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        rep.at(
            src,
            u.span(),
            &field,
            "upstream names use letters, digits, '-' and '_'",
        );
    }
    if sec.peers.get_ref().is_empty() {
        rep.at(
            src,
            sec.peers.span(),
            format!("{field}.peers"),
            "needs at least one peer",
        );
        return None;
    }
    let mut ok = true;
    let mut peers = Vec::new();
    for p in sec.peers.get_ref() {
        match p.get_ref().to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(_)) => peers.push(p.get_ref().clone()),
            Ok(None) => {
                rep.at(
                    src,
                    p.span(),
                    format!("{field}.peers"),
                    format!("`{}` resolves to no address", p.get_ref()),
                );
                ok = false;
            }
            Err(e) => {
                rep.at(
                    src,
                    p.span(),
                    format!("{field}.peers"),
                    format!("`{}` is not host:port ({e})", p.get_ref()),
                );
                ok = false;
            }
        }
    }
    if let Some(h) = &sec.host
        && (http::HeaderValue::from_str(h.get_ref()).is_err() || h.get_ref().is_empty())
    {
        rep.at(
            src,
            h.span(),
            format!("{field}.host"),
            "not a valid Host header value",
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    let fp = fingerprint(sec);
    if let Some(prev) = previous.and_then(|s| {
        s.upstreams
            .iter()
            .find(|p| p.name == name && p.fingerprint == fp)
    }) {
        return Some(prev.clone());
    }
    let sni = sec
        .sni
        .as_ref()
        .map(|s| s.get_ref().clone())
        .unwrap_or_else(|| {
            let first = &peers[0];
            first.rsplit_once(':').map_or(first.clone(), |(h, _)| {
                h.trim_matches(['[', ']']).to_string()
            })
        });
    let mut lb = match LoadBalancer::<RoundRobin>::try_from_iter(peers.iter().map(String::as_str)) {
        Ok(lb) => lb,
        Err(e) => {
            rep.at(src, sec.peers.span(), format!("{field}.peers"), e);
            return None;
        }
    };
    let mut health_interval = None;
    if let Some(hc) = &sec.health_check {
        let interval = Duration::from_millis(hc.interval_ms.max(50));
        health_interval = Some(interval);
        match hc.kind {
            HealthKind::Tcp => {
                let mut check = TcpHealthCheck::new();
                check.consecutive_success = hc.healthy_after.max(1);
                check.consecutive_failure = hc.unhealthy_after.max(1);
                lb.set_health_check(check);
            }
            HealthKind::Http => {
                let host = hc
                    .host
                    .clone()
                    .or_else(|| sec.host.as_ref().map(|h| h.get_ref().clone()))
                    .unwrap_or_else(|| "localhost".into());
                let mut check = HttpHealthCheck::new(&host, sec.tls);
                check.consecutive_success = hc.healthy_after.max(1);
                check.consecutive_failure = hc.unhealthy_after.max(1);
                if sec.tls {
                    check.peer_template.sni = sni.clone();
                    check.peer_template.options.verify_cert = sec.verify_cert;
                }
                match pingora::http::RequestHeader::build("GET", hc.path.as_bytes(), None) {
                    Ok(mut req) => {
                        let _ = req.insert_header("Host", &host);
                        let _ = req.insert_header("User-Agent", "x402-gateway-health");
                        check.req = req;
                    }
                    Err(_) => {
                        rep.at(
                            src,
                            u.span(),
                            format!("{field}.health_check.path"),
                            "not a valid request path",
                        );
                        return None;
                    }
                }
                lb.set_health_check(Box::new(check));
            }
        }
        lb.health_check_frequency = Some(interval);
        lb.parallel_health_check = true;
    }
    let backends = lb.backends().get_backend().iter().cloned().collect();
    Some(Arc::new(UpstreamPool {
        name: name.to_owned(),
        lb: Arc::new(lb),
        tls: sec.tls,
        sni,
        verify_cert: sec.verify_cert,
        host_rewrite: sec.host.as_ref().map(|h| h.get_ref().clone()),
        connect_timeout: Duration::from_millis(sec.connect_timeout_ms.max(1)),
        read_timeout: Duration::from_millis(sec.read_timeout_ms.max(1)),
        write_timeout: Duration::from_millis(sec.write_timeout_ms.max(1)),
        idle_timeout: Duration::from_millis(sec.idle_timeout_ms.max(1)),
        health_interval,
        fingerprint: fp,
        peers,
        backends,
        next: AtomicUsize::new(0),
        latency: OnceLock::new(),
    }))
}

struct RuleCtx<'a> {
    access: &'a super::access::AccessCtx<'a>,
    registry: &'a Registry,
    default_pay_to: Option<&'a str>,
    default_networks: &'a [Spanned<String>],
    default_timeout: u64,
    default_settlement: crate::payment::Settlement,
    default_failure_policy: crate::payment::FailurePolicy,
    default_resource_query: bool,
    upstream_index: &'a BTreeMap<String, usize>,
    default_upstream: usize,
    case_sensitive: bool,
}

/// What the `price` key says.
enum PriceSpec {
    Zero,
    Usd(rust_decimal::Decimal),
    Atomic(u128, String),
}

fn parse_price(
    rep: &mut Reporter,
    src: usize,
    v: &Spanned<toml::Value>,
    field: &str,
) -> Option<PriceSpec> {
    let fail = |rep: &mut Reporter, m: String| {
        rep.at(src, v.span(), field, m);
        None
    };
    match v.get_ref() {
        toml::Value::Integer(0) => Some(PriceSpec::Zero),
        toml::Value::Integer(_) | toml::Value::Float(_) => {
            fail(rep, "a number price must be 0; write dollars as \"$0.01\" or atomic units as { amount, asset }".into())
        }
        toml::Value::String(s) => match price::parse_usd(s) {
            Ok(d) if d.is_zero() => Some(PriceSpec::Zero),
            Ok(d) => Some(PriceSpec::Usd(d)),
            Err(e) => fail(rep, e.to_string()),
        },
        toml::Value::Table(t) => {
            let unknown: Vec<&String> = t.keys().filter(|k| *k != "amount" && *k != "asset").collect();
            if !unknown.is_empty() {
                return fail(rep, format!("unknown key `{}` in price, expected `amount` and `asset`", unknown[0]));
            }
            let amount = match t.get("amount") {
                Some(toml::Value::String(s)) => price::parse_atomic(s),
                Some(toml::Value::Integer(i)) if *i >= 0 => Ok(*i as u128),
                Some(_) => Err(PriceError::BadAtomic("amount".into())),
                None => return fail(rep, "price table needs `amount`".into()),
            };
            let asset = match t.get("asset") {
                Some(toml::Value::String(s)) => s.clone(),
                _ => return fail(rep, "price table needs `asset` (an asset id or address)".into()),
            };
            match amount {
                Ok(0) => Some(PriceSpec::Zero),
                Ok(a) => Some(PriceSpec::Atomic(a, asset)),
                Err(e) => fail(rep, e.to_string()),
            }
        }
        other => fail(rep, format!("expected \"$0.01\", 0 or {{ amount, asset }}, found {}", other.type_str())),
    }
}

fn compile_rule(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
    here: String,
) -> Option<(Rule, Route)> {
    let src = pr.src;
    let d: &RuleDef = &pr.def;
    let issues_before = rep.issues.len();

    let host = match &d.host {
        Some(h) => HostPattern::parse(h.get_ref()).unwrap_or_else(|e| {
            rep.at(src, h.span(), "rule.host", e);
            HostPattern::Any
        }),
        None => HostPattern::Any,
    };
    let (path_text, path) = match (&d.path, &d.prefix) {
        (Some(_), Some(p)) => {
            rep.at(
                src,
                p.span(),
                "rule.prefix",
                "give either `path` or `prefix`, not both",
            );
            (String::new(), None)
        }
        (Some(p), None) => (
            p.get_ref().clone(),
            PathPattern::glob(p.get_ref(), ctx.case_sensitive)
                .map_err(|e| rep.at(src, p.span(), "rule.path", e))
                .ok(),
        ),
        (None, Some(p)) => (
            format!("{}**", p.get_ref().trim_end_matches('/').to_owned() + "/"),
            PathPattern::prefix(p.get_ref(), ctx.case_sensitive)
                .map_err(|e| rep.at(src, p.span(), "rule.prefix", e))
                .ok(),
        ),
        (None, None) => (
            "/**".into(),
            PathPattern::glob("/**", ctx.case_sensitive).ok(),
        ),
    };
    let mut methods = 0u16;
    if let Some(ms) = &d.methods {
        if ms.get_ref().is_empty() {
            rep.at(
                src,
                ms.span(),
                "rule.methods",
                "empty list; leave `methods` out to match every method",
            );
        }
        for m in ms.get_ref() {
            match Methods::parse(m) {
                Some(b) => methods |= b,
                None => rep.at(
                    src,
                    ms.span(),
                    "rule.methods",
                    format!("unknown method `{m}`"),
                ),
            }
        }
    }
    let upstream = match &d.upstream {
        Some(u) => match ctx.upstream_index.get(u.get_ref()) {
            Some(&i) => i,
            None => {
                rep.at(
                    src,
                    u.span(),
                    "rule.upstream",
                    format!("unknown upstream `{}`", u.get_ref()),
                );
                0
            }
        },
        None => ctx.default_upstream,
    };
    let timeout = match &d.max_timeout_seconds {
        Some(t) => {
            check_timeout(rep, src, t, "rule.max_timeout_seconds");
            *t.get_ref()
        }
        None => ctx.default_timeout,
    };

    let price = d
        .price
        .as_ref()
        .and_then(|p| parse_price(rep, src, p, "rule.price").map(|s| (s, p.span())));
    let action_def = d.action.as_ref().map(|a| (*a.get_ref(), a.span()));
    let action = match (action_def, price) {
        (Some((ActionDef::Block, _)), None) => RuleAction::Block,
        (Some((ActionDef::Free, _)), None)
        | (Some((ActionDef::Free, _)), Some((PriceSpec::Zero, _))) => RuleAction::Free,
        (Some((ActionDef::Block | ActionDef::Free, span)), Some(_)) => {
            rep.at(
                src,
                span,
                "rule.action",
                "a `free` or `block` rule takes no price",
            );
            RuleAction::Free
        }
        (Some((ActionDef::Pay, span)), None) => {
            rep.at(src, span, "rule.price", "a `pay` rule needs a price");
            RuleAction::Free
        }
        (None, None) => {
            if d.price.is_none() {
                rep.at(
                    src,
                    d.id.span(),
                    "rule.price",
                    "give a `price`, or `action = \"free\"` / `\"block\"`",
                );
            }
            RuleAction::Free
        }
        (_, Some((spec, span))) => priced_action(rep, ctx, pr, spec, span, timeout, "rule.price")
            .unwrap_or(RuleAction::Free),
    };
    let access = super::access::rule_access(
        rep,
        ctx.access,
        pr,
        &action,
        methods,
        &path_text,
        &mut |rep: &mut Reporter, v: &Spanned<toml::Value>, field: &str| {
            price_value(rep, ctx, pr, v, timeout, field)
        },
    );
    if rep.issues.len() > issues_before {
        return None;
    }
    let path = path?;
    let route = Route {
        host: host.clone(),
        methods: Methods(methods),
        path,
    };
    let rule = Rule {
        id: d.id.get_ref().clone(),
        origin: here,
        action,
        upstream,
        methods: Methods(methods),
        host: d
            .host
            .as_ref()
            .map_or_else(|| "*".into(), |h| h.get_ref().clone()),
        path: path_text,
        payment: RulePolicy {
            settlement: d.settlement.unwrap_or(ctx.default_settlement),
            failure_policy: d
                .on_facilitator_failure
                .unwrap_or(ctx.default_failure_policy),
            resource_query: d.resource_query.unwrap_or(ctx.default_resource_query),
        },
        access: RuleAccess {
            accept_passes_from: d
                .accept_passes_from
                .iter()
                .flatten()
                .map(|n| n.get_ref().clone())
                .collect(),
            ..access
        },
    };
    Some((rule, route))
}

/// A compiled price: free for zero, else the offers with the rule's description and, for
/// `"$…"` prices, the USD amount (for pay-per-crawl headers).
fn priced_action(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
    spec: PriceSpec,
    span: std::ops::Range<usize>,
    timeout: u64,
    field: &str,
) -> Option<RuleAction> {
    let usd = match &spec {
        PriceSpec::Zero => return Some(RuleAction::Free),
        PriceSpec::Usd(d) => Some(*d),
        PriceSpec::Atomic(..) => None,
    };
    let d = &pr.def;
    let offers = build_offers(rep, ctx, pr, spec, span, timeout, field)?;
    Some(RuleAction::Pay(Arc::new(
        Priced::new(
            offers,
            d.description.clone().unwrap_or_default(),
            d.mime_type.clone().unwrap_or_default(),
        )
        .with_usd(usd),
    )))
}

/// An `audiences` / `operators` value: `"free"`, `"block"`, or a price.
fn price_value(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
    v: &Spanned<toml::Value>,
    timeout: u64,
    field: &str,
) -> Option<RuleAction> {
    match v.get_ref() {
        toml::Value::String(s) if s == "free" => Some(RuleAction::Free),
        toml::Value::String(s) if s == "block" => Some(RuleAction::Block),
        _ => {
            let spec = parse_price(rep, pr.src, v, field)?;
            priced_action(rep, ctx, pr, spec, v.span(), timeout, field)
        }
    }
}

fn build_offers(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
    spec: PriceSpec,
    price_span: std::ops::Range<usize>,
    timeout: u64,
    field: &str,
) -> Option<Vec<Offer>> {
    let src = pr.src;
    let d = &pr.def;
    let pay_to = match &d.pay_to {
        Some(p) => checked_address(rep, src, p, "rule.pay_to")?,
        None => match ctx.default_pay_to {
            Some(p) => p.to_owned(),
            None => {
                rep.at(
                    src,
                    d.id.span(),
                    "rule.pay_to",
                    "priced rule needs `pay_to` here or in `[payment]`",
                );
                return None;
            }
        },
    };
    let mut nets: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    match &d.networks {
        Some(list) => {
            for n in list {
                match ctx.registry.network(n.get_ref()) {
                    Some(net) => nets.push((net.caip2.clone(), n.span())),
                    None => rep.at(
                        src,
                        n.span(),
                        "rule.networks",
                        format!("unknown network `{}`", n.get_ref()),
                    ),
                }
            }
        }
        None => nets.extend(
            ctx.default_networks
                .iter()
                .map(|n| (n.get_ref().clone(), price_span.clone())),
        ),
    }
    let mut offers = Vec::new();
    match spec {
        PriceSpec::Zero => {}
        PriceSpec::Usd(usd) => {
            if nets.is_empty() {
                rep.at(
                    src,
                    price_span,
                    "rule.networks",
                    "no networks to offer: set `networks` here or in `[payment]`",
                );
                return None;
            }
            for (caip2, span) in nets {
                let Some(net) = ctx.registry.network(&caip2) else {
                    continue;
                };
                let Some(asset) = net.usd_asset.clone() else {
                    rep.at(
                        src,
                        span,
                        field,
                        format!("network {caip2} has no USD asset: declare one with `usd = true` or price in atomic units"),
                    );
                    continue;
                };
                match price::usd_to_atomic(usd, asset.decimals) {
                    Ok(amount) => offers.push(EXACT.offer(
                        asset,
                        net.v1_name.clone(),
                        amount,
                        &pay_to,
                        timeout,
                    )),
                    Err(e) => rep.at(src, price_span.clone(), field, e),
                }
            }
        }
        PriceSpec::Atomic(amount, asset_ref) => {
            let asset = if asset_ref.starts_with("0x") {
                let candidates: Vec<String> = if nets.is_empty() {
                    ctx.registry.networks().map(|n| n.caip2.clone()).collect()
                } else {
                    nets.iter().map(|n| n.0.clone()).collect()
                };
                candidates
                    .iter()
                    .find_map(|n| ctx.registry.asset(n, &asset_ref))
            } else if asset_ref == "usdc" {
                nets.first().and_then(|n| ctx.registry.asset(&n.0, "usdc"))
            } else {
                ctx.registry.asset_by_id(&asset_ref)
            };
            let Some(asset) = asset else {
                rep.at(
                    src,
                    price_span,
                    field,
                    format!("unknown asset `{asset_ref}` (declare it under `[[assets]]`)"),
                );
                return None;
            };
            if !nets.is_empty() && !nets.iter().any(|n| n.0 == asset.network) {
                rep.at(
                    src,
                    price_span,
                    field,
                    format!(
                        "asset `{asset_ref}` is on {}, which this rule does not offer",
                        asset.network
                    ),
                );
                return None;
            }
            let v1 = ctx
                .registry
                .network(&asset.network)
                .and_then(|n| n.v1_name.clone());
            offers.push(EXACT.offer(asset, v1, amount, &pay_to, timeout));
        }
    }
    Some(offers)
}

/// The public endpoint of Coinbase CDP's facilitator.
pub const CDP_DEFAULT_URL: &str = "https://api.cdp.coinbase.com/platform/v2/x402";

fn secret(rep: &mut Reporter, src: usize, v: &Spanned<String>, field: &str) -> Option<env::Secret> {
    env::expand(v.get_ref())
        .map_err(|e| rep.at(src, v.span(), field, e))
        .ok()
}

fn compile_facilitator(
    rep: &mut Reporter,
    cfg: usize,
    base: &Path,
    registry: &Registry,
    f: &FacilitatorSection,
) -> Option<FacilitatorConf> {
    let before = rep.issues.len();
    let name = f.name.get_ref().clone();
    let check_url = |rep: &mut Reporter, u: &Spanned<String>| {
        let url = u.get_ref().trim_end_matches('/').to_owned();
        match url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some() => {}
            _ => rep.at(cfg, u.span(), "facilitators.url", "must be an http(s) URL"),
        }
        url
    };
    let mut nets = Vec::new();
    for n in &f.networks {
        match registry.network(n.get_ref()) {
            Some(net) => nets.push(net.caip2.clone()),
            None => rep.at(
                cfg,
                n.span(),
                "facilitators.networks",
                format!("unknown network `{}`", n.get_ref()),
            ),
        }
    }
    let mut headers = Vec::new();
    for (k, v) in &f.headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            rep.at(
                cfg,
                v.span(),
                format!("facilitators.headers.{k}"),
                "not a valid header name",
            );
        }
        match env::expand(v.get_ref()) {
            Ok(s) if http::HeaderValue::from_str(s.expose()).is_ok() => {
                headers.push((k.clone(), s))
            }
            Ok(_) => rep.at(
                cfg,
                v.span(),
                format!("facilitators.headers.{k}"),
                "value is not a valid header value",
            ),
            Err(e) => rep.at(cfg, v.span(), format!("facilitators.headers.{k}"), e),
        }
    }
    let not_for = |rep: &mut Reporter, v: &Option<Spanned<String>>, field: &str, kind: &str| {
        if let Some(v) = v {
            rep.at(
                cfg,
                v.span(),
                format!("facilitators.{field}"),
                format!("not used by kind = \"{kind}\""),
            );
        }
    };
    let (kind, url) = match f.kind {
        KindDef::Http => {
            not_for(rep, &f.api_key_id, "api_key_id", "http");
            not_for(rep, &f.api_key_secret, "api_key_secret", "http");
            not_for(rep, &f.relayer_key, "relayer_key", "http");
            not_for(rep, &f.relayer_key_file, "relayer_key_file", "http");
            let url = match &f.url {
                Some(u) => check_url(rep, u),
                None => {
                    rep.at(
                        cfg,
                        f.name.span(),
                        "facilitators.url",
                        "an http facilitator needs `url`",
                    );
                    String::new()
                }
            };
            (FacilitatorKind::Http, url)
        }
        KindDef::Cdp => {
            not_for(rep, &f.relayer_key, "relayer_key", "cdp");
            not_for(rep, &f.relayer_key_file, "relayer_key_file", "cdp");
            let url = f
                .url
                .as_ref()
                .map_or_else(|| CDP_DEFAULT_URL.to_owned(), |u| check_url(rep, u));
            let id = f
                .api_key_id
                .as_ref()
                .and_then(|v| secret(rep, cfg, v, "facilitators.api_key_id"));
            let key = f
                .api_key_secret
                .as_ref()
                .and_then(|v| secret(rep, cfg, v, "facilitators.api_key_secret"));
            match (id, key) {
                (Some(key_id), Some(key_secret)) => {
                    if let Err(e) = crate::facilitator::cdp::SigningKey::parse(key_secret.expose())
                        && let Some(v) = &f.api_key_secret
                    {
                        rep.at(cfg, v.span(), "facilitators.api_key_secret", e);
                    }
                    (FacilitatorKind::Cdp { key_id, key_secret }, url)
                }
                _ => {
                    if f.api_key_id.is_none() || f.api_key_secret.is_none() {
                        rep.at(
                            cfg,
                            f.name.span(),
                            "facilitators",
                            "a cdp facilitator needs `api_key_id` and `api_key_secret`",
                        );
                    }
                    (FacilitatorKind::Http, url)
                }
            }
        }
        KindDef::Local => {
            not_for(rep, &f.url, "url", "local");
            not_for(rep, &f.api_key_id, "api_key_id", "local");
            not_for(rep, &f.api_key_secret, "api_key_secret", "local");
            let key = match (&f.relayer_key, &f.relayer_key_file) {
                (Some(k), None) => secret(rep, cfg, k, "facilitators.relayer_key"),
                (None, Some(file)) => {
                    let path = base.join(file.get_ref());
                    match std::fs::read_to_string(&path) {
                        Ok(text) => Some(env::Secret::new(text.trim().to_owned())),
                        Err(e) => {
                            rep.at(
                                cfg,
                                file.span(),
                                "facilitators.relayer_key_file",
                                format!("cannot read {}: {e}", path.display()),
                            );
                            None
                        }
                    }
                }
                _ => {
                    rep.at(cfg, f.name.span(), "facilitators", "a local facilitator needs exactly one of `relayer_key` and `relayer_key_file`");
                    None
                }
            };
            if let Some(k) = &key {
                let hex_key = k.expose().strip_prefix("0x").unwrap_or(k.expose());
                if hex_key.len() != 64 || !hex_key.bytes().all(|b| b.is_ascii_hexdigit()) {
                    let span = f
                        .relayer_key
                        .as_ref()
                        .or(f.relayer_key_file.as_ref())
                        .map(|v| v.span())
                        .unwrap_or_default();
                    rep.at(
                        cfg,
                        span,
                        "facilitators.relayer_key",
                        "the relayer key must be 32 bytes of hex",
                    );
                }
            }
            let wanted: Vec<String> = if nets.is_empty() {
                registry
                    .networks()
                    .filter(|n| !n.rpc_urls.is_empty())
                    .map(|n| n.caip2.clone())
                    .collect()
            } else {
                nets.clone()
            };
            let mut chains = Vec::new();
            for caip2 in &wanted {
                let Some(n) = registry.network(caip2) else {
                    continue;
                };
                if n.rpc_urls.is_empty() {
                    rep.at(
                        cfg,
                        f.name.span(),
                        "facilitators.networks",
                        format!("network {caip2} has no `rpc_urls` in `[[networks]]`"),
                    );
                    continue;
                }
                chains.push(ChainConf {
                    caip2: n.caip2.clone(),
                    v1_name: n.v1_name.clone(),
                    chain_id: n.chain_id,
                    rpc_urls: n.rpc_urls.clone(),
                });
            }
            if wanted.is_empty() {
                rep.at(
                    cfg,
                    f.name.span(),
                    "facilitators",
                    "a local facilitator needs a network with `rpc_urls`",
                );
            }
            if nets.is_empty() {
                nets = wanted;
            }
            match key {
                Some(relayer_key) => (
                    FacilitatorKind::Local {
                        relayer_key,
                        receipt_timeout: Duration::from_millis(f.receipt_timeout_ms.max(100)),
                        chains,
                    },
                    String::new(),
                ),
                None => (FacilitatorKind::Http, String::new()),
            }
        }
    };
    if f.weight == 0 {
        rep.at(
            cfg,
            f.name.span(),
            "facilitators.weight",
            "must be at least 1",
        );
    }
    if rep.issues.len() > before {
        return None;
    }
    let fingerprint = {
        let mut h = Sha256::new();
        h.update(format!(
            "{name}|{:?}|{url}|{nets:?}|{}|{}|{}|{:?}|{}",
            f.kind,
            f.timeout_ms,
            f.max_eject_ms,
            f.receipt_timeout_ms,
            f.confirm,
            f.confirm_timeout_ms
        ));
        for (k, v) in &headers {
            h.update(k.as_bytes());
            h.update(v.expose().as_bytes());
        }
        if let FacilitatorKind::Cdp { key_id, key_secret } = &kind {
            h.update(key_id.expose().as_bytes());
            h.update(key_secret.expose().as_bytes());
        }
        if let FacilitatorKind::Local {
            relayer_key,
            chains,
            ..
        } = &kind
        {
            h.update(relayer_key.expose().as_bytes());
            // Debug redacts the RPC URLs: hash them as they are, so a new endpoint makes a
            // new settler.
            h.update(format!("{chains:?}"));
            for c in chains {
                for u in &c.rpc_urls {
                    h.update(b"|");
                    h.update(u.expose().as_bytes());
                }
            }
        }
        hex::encode(h.finalize())
    };
    Some(FacilitatorConf {
        name,
        kind,
        url,
        networks: nets,
        timeout: Duration::from_millis(f.timeout_ms.max(1)),
        headers,
        priority: f.priority,
        weight: f.weight.max(1),
        failure_threshold: f.failure_threshold.max(1),
        max_eject: Duration::from_millis(f.max_eject_ms.max(1000)),
        confirm: f.confirm,
        confirm_timeout: Duration::from_millis(f.confirm_timeout_ms.max(100)),
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::load_from_texts;

    const BASE: &str = r#"
[server]
listen = ["127.0.0.1:0"]

[upstreams.origin]
peers = ["127.0.0.1:1"]

[payment]
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
networks = ["base-sepolia"]
"#;

    fn load(extra: &str) -> Result<crate::snapshot::Snapshot, crate::config::Issues> {
        load_from_texts(
            Path::new("gateway.toml"),
            &format!("{BASE}{extra}"),
            &[(PathBuf::from("rules/r.toml"), String::new())],
        )
    }

    #[test]
    fn a_facilitator_api_off_loopback_needs_a_token() {
        let api = r#"
[[networks]]
id = "eip155:31337"
rpc_urls = ["http://127.0.0.1:1"]

[[facilitators]]
name = "self"
kind = "local"
relayer_key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
networks = ["eip155:31337"]

[facilitator_api]
listen = "0.0.0.0:9403"
settler = "self"
"#;
        let issues = load(api).err().map(|i| i.to_string()).unwrap_or_default();
        assert!(
            issues.contains(
                "facilitator_api.listen: a facilitator API off loopback needs `auth_token`"
            ),
            "{issues}"
        );
        let on_loopback = api.replace("0.0.0.0:9403", "127.0.0.1:9403");
        assert!(load(&on_loopback).is_ok());
        let with_token = format!("{api}auth_token = \"t0ken\"\n");
        let snap = load(&with_token).expect("valid");
        assert_eq!(
            snap.recipients,
            vec!["0x209693bc6afc0c5328ba36faf03c514ef312287c".to_owned()]
        );
    }
}
