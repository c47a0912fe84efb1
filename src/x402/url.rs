//! The parts of an absolute URL the protocol names (resource URLs, the public base, sign-in
//! URIs): its origin, its authority and its path, read without allocating.

/// `scheme://host[:port]`, or `None` when `url` is not absolute.
pub fn origin(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    Some(&url[..scheme.len() + 3 + authority_len(rest)])
}

/// `host[:port]` (empty when `url` is not absolute).
pub fn authority(url: &str) -> &str {
    url.split_once("://")
        .map_or("", |(_, rest)| &rest[..authority_len(rest)])
}

/// The path, without query or fragment (`/` when there is none).
pub fn path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let after = &rest[authority_len(rest)..];
    match after.split(['?', '#']).next() {
        Some(p) if !p.is_empty() => p,
        _ => "/",
    }
}

fn authority_len(rest: &str) -> usize {
    rest.find(['/', '?', '#']).unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_authority_and_path() {
        let u = "https://api.example.com:8443/premium/a?x=/b#f";
        assert_eq!(origin(u), Some("https://api.example.com:8443"));
        assert_eq!(authority(u), "api.example.com:8443");
        assert_eq!(path(u), "/premium/a");
        assert_eq!(path("https://h?x=/a"), "/");
        assert_eq!(path("https://h"), "/");
        assert_eq!(origin("/relative"), None);
        assert_eq!(authority("/relative"), "");
    }
}
