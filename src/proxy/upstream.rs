//! Choosing an upstream peer and preparing the request sent to it.

use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use super::respond::UpstreamError;
use crate::snapshot::UpstreamPool;

/// Picks the next healthy peer of a pool, round-robin.
pub fn pick_peer(pool: &UpstreamPool) -> Result<Box<HttpPeer>, UpstreamError> {
    let backend = pool
        .lb
        .select(b"", 256)
        .ok_or(UpstreamError::NoHealthyPeer)?;
    let mut peer = HttpPeer::new(backend.addr, pool.tls, pool.sni.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(pool.connect_timeout);
    o.read_timeout = Some(pool.read_timeout);
    o.write_timeout = Some(pool.write_timeout);
    o.idle_timeout = Some(pool.idle_timeout);
    o.verify_cert = pool.verify_cert;
    o.verify_hostname = pool.verify_cert;
    Ok(Box::new(peer))
}

/// Appends `X-Forwarded-For` and sets `X-Forwarded-Proto` / `-Host` unless the client's are
/// trusted; rewrites Host when the pool asks for it; applies a canonical path rewrite.
pub fn prepare_request(
    req: &mut RequestHeader,
    pool: &UpstreamPool,
    client_ip: Option<std::net::IpAddr>,
    tls: bool,
    trust_forwarded: bool,
    rewrite: Option<&str>,
) -> pingora::Result<()> {
    if let Some(path) = rewrite {
        req.set_raw_path(path.as_bytes())?;
    }
    if let Some(ip) = client_ip {
        let xff = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        req.insert_header("x-forwarded-for", xff)?;
    }
    if !(trust_forwarded && req.headers.contains_key("x-forwarded-proto")) {
        req.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
    }
    if !(trust_forwarded && req.headers.contains_key("x-forwarded-host"))
        && let Some(host) = req.headers.get(http::header::HOST).cloned()
    {
        req.insert_header("x-forwarded-host", host)?;
    }
    if let Some(h) = &pool.host_rewrite {
        req.insert_header(http::header::HOST, h.as_str())?;
    }
    // Payment headers are for the gateway; the origin never sees them.
    req.remove_header(crate::x402::HEADER_PAYMENT_SIGNATURE);
    req.remove_header(crate::x402::HEADER_X_PAYMENT);
    Ok(())
}
