//! Facilitators: `[[facilitators]]` of every kind (http, CDP, the built-in settler and its
//! chains) with their fingerprints, the facilitator API, and the recipients it relays to.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use toml::Spanned;

use super::shared::{check_addr, checked_address, secret};
use crate::access::RuleAction;
use crate::config::file::{FacilitatorKind as KindDef, FacilitatorSection, GatewayFile};
use crate::config::{Reporter, env};
use crate::facilitator::{ChainConf, FacilitatorConf, FacilitatorKind};
use crate::snapshot::Rule;
use crate::x402::networks::Registry;

/// `[[facilitators]]` → the facilitators, each name once.
pub(super) fn facilitators(
    rep: &mut Reporter,
    cfg: usize,
    base: &Path,
    registry: &Registry,
    list: &[FacilitatorSection],
) -> Vec<FacilitatorConf> {
    let mut facilitators = Vec::new();
    let mut fac_names = HashMap::new();
    for f in list {
        if let Some(prev) = fac_names.insert(f.name.get_ref().clone(), f.name.span()) {
            let at = rep.where_is(cfg, prev);
            rep.at(
                cfg,
                f.name.span(),
                "facilitators.name",
                format!("duplicate name, first at {at}"),
            );
        }
        if let Some(fc) = compile_facilitator(rep, cfg, base, registry, f) {
            facilitators.push(fc);
        }
    }
    facilitators
}

/// `[facilitator_api]` → its bearer token and the name of the built-in settler it serves.
pub(super) fn facilitator_api(
    rep: &mut Reporter,
    cfg: usize,
    g: &GatewayFile,
    facilitators: &[FacilitatorConf],
) -> (Option<env::Secret>, Option<String>) {
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
    (facilitator_api_token, facilitator_api_settler)
}

/// Every address a payment here may go to: the facilitator API relays only to these.
pub(super) fn recipients(
    rep: &mut Reporter,
    cfg: usize,
    g: &GatewayFile,
    rules: &[Rule],
    default_pay_to: Option<&str>,
) -> Vec<String> {
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
    recipients
}

/// The public endpoint of Coinbase CDP's facilitator.
pub const CDP_DEFAULT_URL: &str = "https://api.cdp.coinbase.com/platform/v2/x402";

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
        signers_complete: f.signers_complete,
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
