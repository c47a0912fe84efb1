//! Who the client is: the peer's address, or, when the peer is a trusted proxy (`[server]
//! trusted_proxies`), the address that proxy says it forwarded for (`Forwarded: for=`, else
//! `X-Forwarded-For`), read from the right, past every trusted hop.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Whether the peer is one of the trusted proxies (its forwarding headers count).
pub fn is_trusted(peer: Option<IpAddr>, trusted: &[IpNet]) -> bool {
    peer.is_some_and(|ip| trusted.iter().any(|n| n.contains(&ip)))
}

/// The client's address for logs, limits and the ledger. Headers count only when the peer is
/// trusted: anyone else could write them.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops = match forwarded_for(headers) {
        Some(hops) => hops,
        None => x_forwarded_for(headers),
    };
    // From the nearest hop outwards: the first address not trusted is the client; a hop that
    // cannot be read ends the walk at the last one that could (a trusted proxy vouched for it).
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            None => break,
        }
    }
    Some(client)
}

/// The `for=` addresses of every `Forwarded` element, in order (`None`: not an address, e.g.
/// `unknown` or an obfuscated name); `None` when the header is absent.
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut out = Vec::new();
    let mut any = false;
    for value in headers.get_all("forwarded") {
        any = true;
        let Ok(text) = value.to_str() else {
            out.push(None);
            continue;
        };
        for element in text.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
            });
            if let Some(node) = node {
                out.push(parse_node(node.trim_matches('"')));
            }
        }
    }
    any.then_some(out)
}

/// `X-Forwarded-For`'s addresses, in order.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// An address, with or without a port (`192.0.2.1:80`, `[2001:db8::1]:80`, `2001:db8::1`).
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

/// `10.0.0.0/8`, or one address (`192.0.2.1`, `2001:db8::1`).
pub fn parse_trusted(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = ["10.0.0.0/8", "127.0.0.1"]
            .iter()
            .map(|s| parse_trusted(s).expect("net"))
            .collect();
        let xff = headers(&[("x-forwarded-for", "198.51.100.9, 203.0.113.7, 10.1.2.3")]);
        // An untrusted peer: its headers are ignored.
        assert_eq!(
            client_ip(Some(ip("192.0.2.1")), &xff, &trusted),
            Some(ip("192.0.2.1"))
        );
        // No proxy trusted at all.
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &xff, &[]),
            Some(ip("127.0.0.1"))
        );
        // A trusted peer: the rightmost address not trusted (the first may be forged).
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &xff, &trusted),
            Some(ip("203.0.113.7"))
        );
        // Every hop trusted: the farthest one.
        let inner = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.2.3")]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), &inner, &trusted),
            Some(ip("10.9.9.9"))
        );
        // A hop that is not an address stops the walk at the last one read.
        let junk = headers(&[("x-forwarded-for", "203.0.113.7, garbage, 10.1.2.3")]);
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &junk, &trusted),
            Some(ip("10.1.2.3"))
        );
        // No header: the peer.
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &HeaderMap::new(), &trusted),
            Some(ip("127.0.0.1"))
        );
        // `Forwarded` wins over `X-Forwarded-For`; ports and brackets are read.
        let fwd = headers(&[
            (
                "forwarded",
                "for=198.51.100.9;proto=https, for=\"[2001:db8::7]:4711\"",
            ),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &fwd, &trusted),
            Some(ip("2001:db8::7"))
        );
        let port = headers(&[("forwarded", "for=\"192.0.2.60:8080\"")]);
        assert_eq!(
            client_ip(Some(ip("127.0.0.1")), &port, &trusted),
            Some(ip("192.0.2.60"))
        );
        assert_eq!(parse_trusted("nonsense"), None);
        assert_eq!(client_ip(None, &xff, &trusted), None);
    }
}
