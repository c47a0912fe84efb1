//! The server's startup settings: listen addresses, TLS listeners, threads and timeouts, the
//! admin listener, the hosts served and the proxies trusted to name the client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::shared::{check_addr, reported, secret};
use crate::config::file::{AdminSection, GatewayFile};
use crate::config::{Reporter, env};
use crate::router::HostPattern;
use crate::snapshot::{StartupSettings, TlsListen};

/// Bytes of a client connection's writes held until a flush, by default: a 402's head with its
/// body, or a proxied head with a small body, leaves in one segment.
const DEFAULT_WRITE_BUFFER: usize = 8 * 1024;
/// The largest write buffer accepted (256 KiB): each client connection holds one for its life.
const MAX_WRITE_BUFFER: usize = 256 * 1024;

/// `[server] trusted_proxies` → the networks whose forwarding headers are believed.
pub(super) fn trusted_proxies(rep: &mut Reporter, cfg: usize, g: &GatewayFile) -> Vec<IpNet> {
    let Some(s) = &g.server else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in &s.trusted_proxies {
        let text = p.get_ref().trim();
        match text
            .parse::<IpNet>()
            .ok()
            .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        {
            Some(net) => out.push(net),
            None => rep.at(
                cfg,
                p.span(),
                "server.trusted_proxies",
                format!("`{text}` is not a network (`10.0.0.0/8`) or an address"),
            ),
        }
    }
    out
}

/// `[server]` and `[admin]` → the startup settings and the hosts served.
pub(super) fn startup(
    rep: &mut Reporter,
    cfg: usize,
    g: &GatewayFile,
    base: &Path,
) -> (StartupSettings, Vec<HostPattern>) {
    let server = g.server.clone();
    let mut listen = Vec::new();
    let mut tls = Vec::new();
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut grace, mut shutdown, mut pool_size) = (5, 3, 128);
    let mut header_read_timeout = Duration::from_secs(30);
    let mut write_buffer = DEFAULT_WRITE_BUFFER;
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
            if let Some(b) = &s.write_buffer_bytes {
                if *b.get_ref() > MAX_WRITE_BUFFER {
                    rep.at(
                        cfg,
                        b.span(),
                        "server.write_buffer_bytes",
                        "must be between 0 and 262144",
                    );
                }
                write_buffer = *b.get_ref();
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
        write_buffer_bytes: write_buffer,
        facilitator_api: g
            .facilitator_api
            .as_ref()
            .map(|a| a.listen.get_ref().clone()),
        state: crate::state::StateConf::default(),
    };
    (startup, hosts)
}

/// The certificate of each TLS listener, loaded and checked (the key matches the chain); the
/// files' content goes into the content hash, so a renewed certificate reloads.
pub(super) fn tls_keys(
    rep: &mut Reporter,
    cfg: usize,
    g: &GatewayFile,
    base: &Path,
) -> Vec<Arc<rustls::sign::CertifiedKey>> {
    let mut keys = Vec::new();
    for t in g.server.iter().flat_map(|s| &s.tls) {
        let (cert, key) = (base.join(t.cert.get_ref()), base.join(t.key.get_ref()));
        if !cert.is_file() || !key.is_file() {
            continue; // reported by `startup`
        }
        match crate::tls::load_listener(&cert, &key) {
            Ok(files) => {
                keys.push(files.certified);
                rep.files_read.push((cert, files.cert_pem));
                rep.files_read.push((key, files.key_pem));
            }
            Err(e) => rep.at(cfg, t.cert.span(), "server.tls.cert", e),
        }
    }
    keys
}

/// The admin listener's bearer token, if one is set.
pub(super) fn admin_token(
    rep: &mut Reporter,
    cfg: usize,
    admin: &AdminSection,
) -> Option<env::Secret> {
    admin
        .auth_token
        .as_ref()
        .and_then(|t| secret(rep, cfg, t, "admin.auth_token"))
}
