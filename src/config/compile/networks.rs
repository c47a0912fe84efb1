//! The network and asset registry: the built-in networks and assets plus `[[networks]]` and
//! `[[assets]]`.

use crate::config::Reporter;
use crate::config::file::GatewayFile;
use crate::x402::networks::{self, Asset, Registry};

use super::shared::secret;

/// `[[networks]]` and `[[assets]]` added to the built-in registry.
pub(super) fn registry(rep: &mut Reporter, cfg: usize, g: &GatewayFile) -> Registry {
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
    registry
}
