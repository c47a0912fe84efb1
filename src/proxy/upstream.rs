//! Choosing an upstream peer and preparing the request sent to it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pingora::http::RequestHeader;
use pingora::lb::Backend;
use pingora::upstreams::peer::HttpPeer;

use super::respond::UpstreamError;
use crate::snapshot::UpstreamPool;

/// Picks the next healthy peer of a pool, round-robin. Pools without a health check have
/// every peer ready; others skip the peers their check marked down. `read_within` shortens
/// the pool's read timeout (a body-metered payment's time left to deliver).
pub fn pick_peer(
    pool: &UpstreamPool,
    read_within: Option<Duration>,
) -> Result<Box<HttpPeer>, UpstreamError> {
    let backend = next_backend(pool).ok_or(UpstreamError::NoHealthyPeer)?;
    let mut peer = HttpPeer::new(backend.addr.clone(), pool.tls, pool.sni.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(pool.connect_timeout);
    o.read_timeout = Some(read_within.map_or(pool.read_timeout, |w| {
        w.max(Duration::from_millis(1)).min(pool.read_timeout)
    }));
    o.write_timeout = Some(pool.write_timeout);
    o.idle_timeout = Some(pool.idle_timeout);
    o.verify_cert = pool.verify_cert;
    o.verify_hostname = pool.verify_cert;
    o.ca = pool.ca.clone();
    Ok(Box::new(peer))
}

fn next_backend(pool: &UpstreamPool) -> Option<&Backend> {
    let n = pool.backends.len();
    if n == 0 {
        return None;
    }
    let start = pool.next.fetch_add(1, Ordering::Relaxed) % n;
    if pool.health_interval.is_none() {
        return pool.backends.get(start);
    }
    let backends = pool.lb.backends();
    (0..n)
        .filter_map(|i| pool.backends.get((start + i) % n))
        .find(|b| backends.ready(b))
}

/// Removes pass credentials (the `X402-Pass` header, a pass `Bearer` token, pass cookies) from
/// a request bound for the origin, whatever rule it matched: a pass is the gateway's
/// credential, never the origin's to log or replay. Other cookies and authorizations are kept.
pub fn strip_pass(req: &mut RequestHeader, cookie: &str) -> pingora::Result<()> {
    use crate::access::pass;
    let carries_pass = req.headers.contains_key(pass::HEADER)
        || req.headers.contains_key(http::header::AUTHORIZATION)
        || req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .any(|v| memchr_str(v.as_bytes(), cookie.as_bytes()));
    if !carries_pass {
        return Ok(());
    }
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

/// Removes client-supplied payer headers ([`crate::payment::PAYER_HEADERS`]) from a request
/// bound for the origin. One pass over the request's header names first: most requests carry
/// none, and each removal by name costs a parse and a lookup.
pub fn strip_payer_headers(req: &mut RequestHeader) {
    if !req
        .headers
        .keys()
        .any(|k| k.as_str().starts_with("x-payment-"))
    {
        return;
    }
    for h in crate::payment::PAYER_HEADERS {
        req.remove_header(h);
    }
}

/// Whether `needle` occurs in `hay`.
fn memchr_str(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
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
        // The client's list (kept as sent, like nginx's `$proxy_add_x_forwarded_for`), then
        // this client.
        let prev = req
            .headers
            .get("x-forwarded-for")
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty());
        let mut xff = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
        if let Some(p) = prev {
            xff.extend_from_slice(p);
            xff.extend_from_slice(b", ");
        }
        push_ip(&mut xff, ip);
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

/// Appends the textual form of an address: IPv4 digits by hand (the common case, and
/// `Display` costs a formatter per octet), IPv6 through `Display`.
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::push_ip;
    use std::net::IpAddr;

    #[test]
    fn addresses_print_as_display_does() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut samples: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "::1",
            "::ffff:1.2.3.4",
        ]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            samples.push(IpAddr::from((seed as u32).to_be_bytes()));
        }
        for ip in samples {
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).ok(), Some(ip.to_string()));
        }
    }
}
