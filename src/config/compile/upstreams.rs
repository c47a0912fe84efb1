//! Upstream pools: peers, TLS and timeouts, health checks, the default upstream, and reuse of
//! an unchanged pool (with its health state) from the previous snapshot.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pingora::lb::LoadBalancer;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use toml::Spanned;

use super::shared::reported;
use crate::config::Reporter;
use crate::config::file::{GatewayFile, HealthKind, UpstreamSection};
use crate::snapshot::{Snapshot, UpstreamPool};

/// The compiled pools, by name, and the one unrouted requests go to.
pub(super) struct Upstreams {
    pub pools: Vec<Arc<UpstreamPool>>,
    pub index: BTreeMap<String, usize>,
    pub default: usize,
}

/// `[upstreams.*]` → the pools. `previous` lends unchanged pools their health state.
pub(super) fn upstreams(
    rep: &mut Reporter,
    cfg: usize,
    g: &GatewayFile,
    previous: Option<&Snapshot>,
) -> Upstreams {
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
    Upstreams {
        pools: upstreams,
        index: upstream_index,
        default: default_upstream,
    }
}

fn fingerprint(u: &UpstreamSection) -> String {
    let peers: Vec<&String> = u.peers.get_ref().iter().map(|p| p.get_ref()).collect();
    format!(
        "{peers:?}|{}|{:?}|{}|{:?}|{:?}|{}|{}|{}|{}|{:?}",
        u.tls,
        u.sni.as_ref().map(|s| s.get_ref()),
        u.verify_cert,
        u.ca_file.as_ref().map(|s| s.get_ref()),
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
    let ca = sec.ca_file.as_ref().and_then(|f| {
        let base = rep.sources[src]
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = base.join(f.get_ref());
        match crate::tls::load_ca(&path) {
            Ok((ca, pem)) => {
                rep.files_read.push((path, pem));
                Some(ca)
            }
            Err(e) => {
                rep.at(src, f.span(), format!("{field}.ca_file"), e);
                None
            }
        }
    });
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
                    check.peer_template.options.ca = ca.clone();
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
        ca,
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
