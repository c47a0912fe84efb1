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

/// Removes pass credentials (the `X402-Pass` header, a pass `Bearer` token, pass cookies) from
/// a request bound for the origin. Other cookies and authorizations are kept.
pub fn strip_pass(req: &mut RequestHeader, cookie: &str) -> pingora::Result<()> {
    use crate::payment::pass;
    req.remove_header(pass::HEADER);
    let bearer_pass = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .is_some_and(|t| t.trim().starts_with(pass::TOKEN_PREFIX));
    if bearer_pass {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    let cookies: Vec<String> = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| pass::cookie_without(v, cookie))
        .collect();
    if req.headers.contains_key(http::header::COOKIE) {
        req.remove_header(&http::header::COOKIE);
        if !cookies.is_empty() {
            req.insert_header(http::header::COOKIE, cookies.join("; "))?;
        }
    }
    Ok(())
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
    // Payment headers are for the gateway; the origin never sees them. (Looked for in one pass
    // first: most requests carry none.)
    if req
        .headers
        .keys()
        .any(|k| k == crate::x402::HEADER_PAYMENT_SIGNATURE || k == crate::x402::HEADER_X_PAYMENT)
    {
        req.remove_header(crate::x402::HEADER_PAYMENT_SIGNATURE);
        req.remove_header(crate::x402::HEADER_X_PAYMENT);
    }
    Ok(())
}
