//! Request path normalization: the one canonical form that both routing and the origin see.
//!
//! Percent-encoded unreserved characters are decoded, other escapes are upper-cased, encoded and
//! literal backslashes and slashes become `/`, `.` and `..` segments are resolved and `//`
//! collapsed. Control bytes (raw or encoded) are refused. The gateway forwards the canonical
//! path, so a request cannot be priced as one path and served as another.

use std::borrow::Cow;

/// Why a request path is refused (always a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path must start with '/'")]
    NotAbsolute,
    #[error("malformed percent-encoding in request path")]
    BadEscape,
    #[error("control or NUL byte in request path")]
    ControlByte,
    #[error(
        "request target must be origin-form (/path), http(s) absolute-form with a host, or OPTIONS *"
    )]
    InvalidTarget,
}

impl PathError {
    /// Stable reason code.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "bad_request_path",
            PathError::BadEscape => "bad_percent_encoding",
            PathError::ControlByte => "control_byte_in_path",
            PathError::InvalidTarget => "invalid_request_target",
        }
    }
}

/// The form of an accepted request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `http://host/path?query` or `https://…`.
    Absolute,
    /// `*`, for `OPTIONS` only.
    Asterisk,
}

/// A request target split into the parts the gateway routes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub form: TargetForm,
    /// The authority of an absolute-form target (`host[:port]`).
    pub authority: Option<&'a str>,
    /// The path as sent: starts with `/` (`*` for the asterisk form), not yet canonical.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// Classifies a raw request target. Only origin-form, `http`/`https` absolute-form with a
/// non-empty authority, and `*` with `OPTIONS` are accepted: anything else (no leading slash,
/// another scheme, a scheme without `//`, backslashes or userinfo in the authority, bytes
/// that are not UTF-8) is [`PathError::InvalidTarget`], since lenient origins resolve such
/// targets to paths the gateway never priced.
pub fn parse_target(raw: &[u8], is_options: bool) -> Result<Target<'_>, PathError> {
    let raw = std::str::from_utf8(raw).map_err(|_| PathError::InvalidTarget)?;
    if raw.starts_with('/') {
        let (path, query) = split_query(raw);
        return Ok(Target {
            form: TargetForm::Origin,
            authority: None,
            path,
            query,
        });
    }
    if raw == "*" {
        return if is_options {
            Ok(Target {
                form: TargetForm::Asterisk,
                authority: None,
                path: raw,
                query: None,
            })
        } else {
            Err(PathError::InvalidTarget)
        };
    }
    let (scheme, rest) = raw.split_once("://").ok_or(PathError::InvalidTarget)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(PathError::InvalidTarget);
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    // A host name, an IPv4 or bracketed IPv6 literal, and a port: nothing that a lenient
    // parser could split differently (user info, backslashes, escapes, fragments, spaces).
    if authority.is_empty() || !authority.bytes().all(is_authority_byte) {
        return Err(PathError::InvalidTarget);
    }
    let (path, query) = match path_and_query.strip_prefix('?') {
        Some(q) => ("/", Some(q)),
        None if path_and_query.is_empty() => ("/", None),
        None => split_query(path_and_query),
    };
    Ok(Target {
        form: TargetForm::Absolute,
        authority: Some(authority),
        path,
        query,
    })
}

/// Bytes allowed in an absolute-form target's authority.
pub fn is_authority_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
}

fn split_query(pq: &str) -> (&str, Option<&str>) {
    match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters that may stay literal in a canonical path (RFC 3986 pchar minus `%`).
fn is_path_literal(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Returns the canonical form of `raw` (the path part of a request target, without the query).
/// Borrows when the input is already canonical, which is the common case.
pub fn canonical_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(bytes)? {
        return Ok(Cow::Borrowed(raw));
    }
    // Pass 1: unescape and canonicalize escapes into a byte string of path characters.
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (h, l) = match (
                bytes.get(i + 1).copied().and_then(hex_val),
                bytes.get(i + 2).copied().and_then(hex_val),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadEscape),
            };
            let v = (h << 4) | l;
            if v < 0x20 || v == 0x7f {
                return Err(PathError::ControlByte);
            }
            if is_unreserved(v) {
                decoded.push(v);
            } else if v == b'/' || v == b'\\' {
                decoded.push(b'/');
            } else {
                decoded.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 15) as usize]]);
            }
            i += 3;
            continue;
        }
        if b < 0x20 || b == 0x7f {
            return Err(PathError::ControlByte);
        }
        if b == b'\\' {
            decoded.push(b'/');
        } else if is_path_literal(b) {
            decoded.push(b);
        } else {
            decoded.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
        i += 1;
    }
    // Pass 2: resolve dot segments (also `..;x` and `.;x`, which servlet containers read as
    // `..` and `.`) and collapse empty ones.
    let trailing = ends_as_directory(&decoded);
    let mut segments: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&c| c == b'/') {
        match (seg, dot_name(seg)) {
            (b"", _) | (_, b".") => {}
            (_, b"..") => {
                segments.pop();
            }
            (s, _) => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        // Every byte is ASCII by construction.
        out.extend(s.iter().map(|&c| c as char));
    }
    if segments.is_empty() || trailing {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// A segment without its `;params`.
fn dot_name(seg: &[u8]) -> &[u8] {
    seg.split(|&c| c == b';').next().unwrap_or(seg)
}

/// Whether a segment is `.` or `..`, with or without `;params`.
fn is_dot_segment(seg: &[u8]) -> bool {
    matches!(dot_name(seg), b"." | b"..")
}

/// Whether the decoded path names a directory (ends in `/`, `/.` or `/..`).
fn ends_as_directory(p: &[u8]) -> bool {
    p.ends_with(b"/") || p.rsplit(|&c| c == b'/').next().is_some_and(is_dot_segment)
}

/// Fast check that a path needs no rewriting.
fn is_canonical(bytes: &[u8]) -> Result<bool, PathError> {
    let mut prev_slash = false;
    let mut seg_start = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        if b < 0x20 || b == 0x7f {
            return Err(PathError::ControlByte);
        }
        if b == b'%' || b == b'\\' || !is_path_literal(b) {
            return Ok(false);
        }
        if b == b'/' {
            if prev_slash {
                return Ok(false);
            }
            if is_dot_segment(&bytes[seg_start..i]) {
                return Ok(false);
            }
            seg_start = i + 1;
            prev_slash = true;
        } else {
            prev_slash = false;
        }
    }
    Ok(!is_dot_segment(&bytes[seg_start..]))
}

/// The key routing matches on: the canonical path with `;params` dropped from each segment
/// (segments left empty by that disappear), no trailing slash (except for `/`), and lower-cased
/// unless matching is case-sensitive.
pub fn match_key<'a>(canonical: &'a str, case_sensitive: bool) -> Cow<'a, str> {
    let needs_lower = !case_sensitive && canonical.bytes().any(|b| b.is_ascii_uppercase());
    let has_params = canonical.contains(';');
    let trailing = canonical.len() > 1 && canonical.ends_with('/');
    if !needs_lower && !has_params && !trailing {
        return Cow::Borrowed(canonical);
    }
    let mut out = String::with_capacity(canonical.len());
    for seg in canonical.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        if seg.is_empty() {
            continue;
        }
        out.push('/');
        if case_sensitive {
            out.push_str(seg);
        } else {
            out.extend(seg.chars().map(|c| c.to_ascii_lowercase()));
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> String {
        canonical_path(p)
            .map(|c| c.into_owned())
            .unwrap_or_else(|e| format!("ERR {e:?}"))
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(c("/"), "/");
        assert_eq!(c("/api/weather"), "/api/weather");
        assert!(matches!(
            canonical_path("/api/weather"),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(c("/free/../paid/x"), "/paid/x");
        assert_eq!(c("/free/%2e%2e/paid/x"), "/paid/x");
        assert_eq!(c("/free/%2E%2E%2Fpaid%2fx"), "/paid/x");
        assert_eq!(c("//paid///x"), "/paid/x");
        assert_eq!(c("/./paid/./x/"), "/paid/x/");
        assert_eq!(c("/paid/x/.."), "/paid/");
        assert_eq!(c("/../../etc"), "/etc");
        assert_eq!(c("/free\\..\\paid"), "/paid");
        assert_eq!(c("/a%5c..%5cpaid"), "/paid");
        assert_eq!(c("/%61pi"), "/api");
        assert_eq!(c("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(c("/a b"), "/a%20b");
        assert_eq!(c("/a%00b"), "ERR ControlByte");
        assert_eq!(c("/a%0ab"), "ERR ControlByte");
        assert_eq!(c("/a\tb"), "ERR ControlByte");
        assert_eq!(c("/a%zz"), "ERR BadEscape");
        assert_eq!(c("/a%2"), "ERR BadEscape");
        assert_eq!(c("api"), "ERR NotAbsolute");
        assert_eq!(c("/.."), "/");
        assert_eq!(c("/a/."), "/a/");
        // Servlet containers read `..;x` as `..`: so does the gateway.
        assert_eq!(c("/free/..;/paid/x"), "/paid/x");
        assert_eq!(c("/free/..;a=b/paid/x"), "/paid/x");
        assert_eq!(c("/free/.;/../paid"), "/paid");
        assert_eq!(c("/paid/x/..;"), "/paid/");
        assert_eq!(c("/a/..b/c"), "/a/..b/c");
        assert_eq!(c("/a/;x/b"), "/a/;x/b");
    }

    #[test]
    fn request_targets() {
        fn t(raw: &str) -> Result<Target<'_>, PathError> {
            parse_target(raw.as_bytes(), false)
        }
        let ok = |raw: &'static str| t(raw).map(|t| (t.form, t.authority, t.path, t.query));
        assert_eq!(
            ok("/a/b?x=1"),
            Ok((TargetForm::Origin, None, "/a/b", Some("x=1")))
        );
        assert_eq!(ok("/"), Ok((TargetForm::Origin, None, "/", None)));
        assert_eq!(
            ok("http://h.example:8080/a?q"),
            Ok((
                TargetForm::Absolute,
                Some("h.example:8080"),
                "/a",
                Some("q")
            ))
        );
        assert_eq!(
            ok("HTTPS://h"),
            Ok((TargetForm::Absolute, Some("h"), "/", None))
        );
        assert_eq!(
            ok("http://h?q"),
            Ok((TargetForm::Absolute, Some("h"), "/", Some("q")))
        );
        assert_eq!(
            ok("http://[::1]:80/x"),
            Ok((TargetForm::Absolute, Some("[::1]:80"), "/x", None))
        );
        for bad in [
            "api/weather",
            "\\api\\weather",
            "..//api/weather",
            "%2Fapi%2Fweather",
            "x:/api/weather",
            "http:/api/weather",
            "http:api/weather",
            "http:\\\\h/api",
            "http://h\\x/api",
            "http:///api",
            "http://user@h/api",
            "http://h#frag/api",
            "http://h%2e/api",
            "http://h x/api",
            "ws://h/api",
            "wss://h/api",
            "ftp://h/api",
            "h/api?x",
            "?q",
            "*",
            "",
        ] {
            assert_eq!(t(bad), Err(PathError::InvalidTarget), "{bad:?}");
        }
        assert_eq!(
            parse_target(b"*", true).map(|t| t.form),
            Ok(TargetForm::Asterisk)
        );
        assert_eq!(
            parse_target(b"/caf\xff", false),
            Err(PathError::InvalidTarget)
        );
    }

    #[test]
    fn match_keys() {
        assert_eq!(match_key("/API/Weather/", false), "/api/weather");
        assert_eq!(match_key("/API/Weather/", true), "/API/Weather");
        assert_eq!(
            match_key("/api/secret;jsessionid=1/x", false),
            "/api/secret/x"
        );
        assert_eq!(match_key("/", false), "/");
        assert_eq!(match_key("/api/;x/secret", false), "/api/secret");
        assert_eq!(match_key("/;jsessionid=1", false), "/");
        assert!(matches!(match_key("/api/x", false), Cow::Borrowed(_)));
    }
}
