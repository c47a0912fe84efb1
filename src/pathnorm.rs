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
}

impl PathError {
    /// Stable reason code.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "bad_request_path",
            PathError::BadEscape => "bad_percent_encoding",
            PathError::ControlByte => "control_byte_in_path",
        }
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
