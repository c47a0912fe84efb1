//! Compiles what was read into a [`Snapshot`], checking every value and recording each problem
//! with its location. Nothing here opens a socket: pools are data until a server runs them.

mod access;
mod agents;
mod discovery;
mod facilitators;
mod networks;
mod passes;
mod payment;
pub(crate) mod paywall;
mod prices;
mod rules;
mod server;
mod shared;
mod state;
#[cfg(test)]
mod tests;
mod upstreams;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::{Parsed, Reporter};
use crate::snapshot::{Snapshot, Sources};
use rules::RuleCtx;

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

    let (mut startup, hosts) = server::startup(rep, cfg, g, &base);
    let tls_keys = server::tls_keys(rep, cfg, g, &base);
    let trusted_proxies = server::trusted_proxies(rep, cfg, g);
    startup.state = state::state(rep, cfg, &g.state);
    let registry = networks::registry(rep, cfg, g);
    let pay = &g.payment;
    let payment = payment::payment(rep, cfg, pay, &registry);
    let upstreams = upstreams::upstreams(rep, cfg, g, previous);
    let facilitators = facilitators::facilitators(rep, cfg, &base, &registry, &g.facilitators);
    let admin_token = server::admin_token(rep, cfg, &g.admin);
    let (facilitator_api_token, facilitator_api_settler) =
        facilitators::facilitator_api(rep, cfg, g, &facilitators);

    // Audiences and access: trusted bot agents, pass keys, the paywall page, crawlers.
    let web_bot_auth = agents::web_bot_auth(rep, cfg, &g.web_bot_auth);
    let pass_keys = passes::passes(rep, cfg, g.passes.as_ref());
    let paywall = paywall::paywall(rep, cfg, &base, &g.paywall);
    let wallet_paywall = paywall::wallet(rep, cfg, &base, &g.paywall);
    let crawlers = agents::crawlers(rep, &p.crawlers);
    let access = access::AccessCtx {
        operators: web_bot_auth
            .operators()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        passes: pass_keys.as_deref(),
        case_sensitive: g.rules.case_sensitive,
    };

    let case_sensitive = g.rules.case_sensitive;
    let discovery = discovery::settings(rep, cfg, &g.discovery);
    let ctx = RuleCtx {
        access: &access,
        registry: &registry,
        default_pay_to: payment.default_pay_to.as_deref(),
        default_networks: &payment.default_networks,
        default_timeout: *pay.max_timeout_seconds.get_ref(),
        default_settlement: pay.settlement,
        default_failure_policy: pay.on_facilitator_failure,
        default_resource_query: pay.resource_query,
        upstream_index: &upstreams.index,
        default_upstream: upstreams.default,
        case_sensitive,
        discovery: &discovery,
        payment_identifier: payment
            .settings
            .payment_identifier_window
            .map(|_| payment.settings.require_payment_identifier),
        public_base_url: payment.settings.public_base_url.as_deref(),
    };
    let (rules, router) = rules::rules(rep, &p.rules, &ctx);

    if !rep.issues.is_empty() {
        return None;
    }

    let content_hash = content_hash(rep);
    let recipients =
        facilitators::recipients(rep, cfg, g, &rules, payment.default_pay_to.as_deref());
    let mut snapshot = Snapshot {
        generation,
        content_hash,
        loaded_at: SystemTime::now(),
        sources: Sources {
            config: rep.sources[cfg].path.clone(),
            rules_dir: p.rules_dir.clone(),
            rule_files: p.rule_files.clone(),
            other_files: rep.files_read.iter().map(|(p, _)| p.clone()).collect(),
        },
        tls_keys,
        startup,
        router,
        rules,
        upstreams: upstreams.pools,
        upstream_index: upstreams.index,
        default_upstream: upstreams.default,
        payment: payment.settings,
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
        strict_readiness: g.admin.strict_readiness,
        ledger: crate::payment::ledger::LedgerConf {
            path: (!g.ledger.path.is_empty()).then(|| base.join(&g.ledger.path)),
            max_bytes: g.ledger.max_bytes.max(4096),
            keep: g.ledger.keep,
        },
        reload: crate::snapshot::ReloadSettings {
            watch: g.reload.watch,
            debounce: Duration::from_millis(g.reload.debounce_ms),
            max_wait: Duration::from_millis(g.reload.max_wait_ms),
        },
        logging: crate::snapshot::LogSettings {
            format: g.logging.format,
            level: g.logging.level.clone(),
            access_log: g.logging.access_log,
            otlp_endpoint: g.logging.otlp_endpoint.as_ref().and_then(|e| {
                let url = e.get_ref().trim_end_matches('/');
                match url.parse::<http::Uri>() {
                    Ok(u)
                        if matches!(u.scheme_str(), Some("http" | "https"))
                            && u.authority().is_some() =>
                    {
                        Some(url.to_owned())
                    }
                    _ => {
                        rep.at(
                            cfg,
                            e.span(),
                            "logging.otlp_endpoint",
                            "expected an http:// or https:// URL of an OTLP/HTTP collector",
                        );
                        None
                    }
                }
            }),
            otlp_service_name: g.logging.otlp_service_name.clone(),
        },
        case_sensitive,
        unmatched: g.rules.unmatched,
        hosts,
        trusted_proxies,
        warnings: Vec::new(),
        crawlers: Arc::new(crawlers),
        web_bot_auth: Arc::new(web_bot_auth),
        passes: pass_keys,
        paywall,
        wallet_paywall,
        discovery,
        channels: crate::payment::channel::claimer::ChannelsConf {
            authorizers: channel_authorizers(&p.rules),
            claim_interval: Duration::from_secs(pay.channel_claim_interval_seconds.max(1)),
            claim_threshold: u128::from(pay.channel_claim_threshold),
            max_claims: pay.channel_claims_per_transaction.max(1),
            refund_idle: (pay.channel_refund_idle_seconds > 0)
                .then(|| Duration::from_secs(pay.channel_refund_idle_seconds)),
            retire_after: (pay.channel_retire_seconds > 0)
                .then(|| Duration::from_secs(pay.channel_retire_seconds)),
        },
    };
    snapshot.warnings = super::lint::warnings(&snapshot);
    // Payments to the address of the shipped examples reach whoever holds its key.
    let example_pay_to = g
        .payment
        .pay_to
        .iter()
        .map(|addr| (cfg, addr, "payment.pay_to"))
        .chain(p.rules.iter().filter_map(|r| {
            r.def
                .pay_to
                .as_ref()
                .map(|addr| (r.src, addr, "rule.pay_to"))
        }))
        .filter(|(_, addr, _)| super::lint::is_example_pay_to(addr.get_ref()));
    for (src, addr, field) in example_pay_to {
        snapshot.warnings.push(format!(
            "{}: {field}: `{}` is the address of the shipped examples: payments to it are not \
             yours. Set your own address",
            rep.where_is(src, addr.span()),
            addr.get_ref()
        ));
    }
    Some(snapshot)
}

/// The receiver authorizers the `batch-settlement` rules name, once each (a rule's own errors
/// are reported where the rule is compiled).
fn channel_authorizers(
    rules: &[crate::config::ParsedRule],
) -> Vec<crate::payment::channel::claimer::Authorizer> {
    let mut out: Vec<crate::payment::channel::claimer::Authorizer> = Vec::new();
    for r in rules {
        let Some(a) = &r.def.receiver_authorizer else {
            continue;
        };
        let Ok(auth) = crate::payment::channel::claimer::Authorizer::parse(a.get_ref()) else {
            continue;
        };
        match out.iter_mut().find(|x| x.address == auth.address) {
            Some(x) if x.key.is_none() => x.key = auth.key,
            Some(_) => {}
            None => out.push(auth),
        }
    }
    out
}

/// A hash of every file read, path and text, to tell one configuration from another.
fn content_hash(rep: &Reporter) -> String {
    let mut hasher = Sha256::new();
    for s in &rep.sources {
        hasher.update(s.path.display().to_string().as_bytes());
        hasher.update([0]);
        hasher.update(s.text.as_bytes());
        hasher.update([0]);
    }
    for (path, content) in &rep.files_read {
        hasher.update(path.display().to_string().as_bytes());
        hasher.update([0]);
        hasher.update(content);
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}
