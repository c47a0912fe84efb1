//! Where a request carries passes (the `X402-Pass` header, a `Bearer` token, the pass
//! cookie), how the cookie is set, and how it is removed from a `Cookie` header.

use http::HeaderMap;

use super::{HEADER, MAX_PRESENTED, TOKEN_PREFIX};

/// The pass tokens a request presents: the `X402-Pass` header, `Authorization: Bearer x402p1.…`,
/// and cookies named `cookie` (browsers send one per matching path). At most a few.
pub fn presented<'a>(headers: &'a HeaderMap, cookie: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for v in headers.get_all(HEADER) {
        if let Ok(s) = v.to_str() {
            out.push(s.trim());
        }
    }
    for v in headers.get_all(http::header::AUTHORIZATION) {
        if let Some(t) = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.starts_with(TOKEN_PREFIX))
        {
            out.push(t);
        }
    }
    for v in headers.get_all(http::header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, val)) = pair.split_once('=')
                && k.trim() == cookie
            {
                out.push(val.trim().trim_matches('"'));
            }
        }
    }
    out.truncate(MAX_PRESENTED);
    out
}

/// A `Cookie` header value without the pass cookies, or `None` when nothing is left.
pub fn cookie_without(value: &str, cookie: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.split_once('=').is_none_or(|(k, _)| k.trim() != cookie))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// `Set-Cookie` for a pass.
pub fn set_cookie(name: &str, token: &str, path: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={token}; Max-Age={max_age}; Path={path}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}
