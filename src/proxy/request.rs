//! Pure request analysis: which host and canonical path a request names, which rule it hits,
//! what its resource URL is, and whether it comes from a browser or is a CORS preflight.

use std::borrow::Cow;

use pingora::http::RequestHeader;

use crate::pathnorm::{self, PathError, TargetForm};
use crate::router::Methods;
use crate::snapshot::{Snapshot, Unmatched};

/// Why a request is refused before routing (always a 4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("several Host headers")]
    DuplicateHost,
    #[error("Host header does not match the request target")]
    HostMismatch,
    #[error("Host header is missing")]
    MissingHost,
    #[error("Host header is not a valid host name")]
    BadHost,
    #[error("request headers are too large")]
    HeadersTooLarge,
    #[error("method names are case-sensitive: send standard methods in upper case")]
    BadMethod,
    #[error("this gateway does not serve that host")]
    UnknownHost,
    #[error("no rule matches this request")]
    Unmatched,
}

/// Largest request header section (names and values) accepted besides the payment header's own
/// allowance (`payment.max_header_bytes`); larger requests get a 431 and never reach the origin.
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// Whether the request's headers exceed [`MAX_REQUEST_HEADER_BYTES`] plus `payment_allowance`.
pub fn headers_too_large(req: &RequestHeader, payment_allowance: usize) -> bool {
    let size: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    size > MAX_REQUEST_HEADER_BYTES + payment_allowance
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Index of the matched rule, if any.
    pub rule: Option<usize>,
    /// The path and query to send upstream, when the canonical path differs from the raw one.
    pub rewrite: Option<String>,
    /// A discovery document the gateway answers itself.
    pub document: Option<Document>,
}

/// The discovery documents served on the public listener (`[discovery]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    WellKnown,
    OpenApi,
}

/// The discovery document at `canonical`, for `GET` and `HEAD`.
fn document(snap: &Snapshot, method: &str, canonical: &str) -> Option<Document> {
    if !matches!(method, "GET" | "HEAD") {
        return None;
    }
    let d = &snap.discovery;
    if d.well_known.as_deref() == Some(canonical) {
        Some(Document::WellKnown)
    } else if d.openapi.as_deref() == Some(canonical) {
        Some(Document::OpenApi)
    } else {
        None
    }
}

/// Normalizes a Host value: no port, no trailing dot, lower-case. Borrows when already so.
pub fn normalize_host(raw: &str) -> Result<Cow<'_, str>, RequestError> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal
        let end = rest.find(']').ok_or(RequestError::BadHost)?;
        let after = &rest[end + 1..];
        if !(after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())))
        {
            return Err(RequestError::BadHost);
        }
        &raw[..end + 2]
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return Err(RequestError::BadHost),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':'));
    if !ok {
        return Err(RequestError::BadHost);
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(host))
    }
}

/// The request's host: the target's authority (absolute-form or HTTP/2) or the single Host
/// header; both present and different is refused.
pub fn request_host(req: &RequestHeader) -> Result<Cow<'_, str>, RequestError> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(RequestError::DuplicateHost);
    }
    let header = match header {
        Some(v) => Some(v.to_str().map_err(|_| RequestError::BadHost)?),
        None => None,
    };
    let authority = req
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| absolute_form_authority(req));
    match (authority, header) {
        (Some(a), Some(h)) => {
            let (na, nh) = (normalize_host(a)?, normalize_host(h)?);
            if na != nh {
                return Err(RequestError::HostMismatch);
            }
            Ok(nh)
        }
        (Some(a), None) => normalize_host(a),
        (None, Some(h)) => normalize_host(h),
        (None, None)
            if req.version == http::Version::HTTP_10 || req.version == http::Version::HTTP_09 =>
        {
            Ok(Cow::Borrowed(""))
        }
        (None, None) => Err(RequestError::MissingHost),
    }
}

/// The authority of an absolute-form request target (`GET http://host/path`), which Pingora
/// keeps verbatim rather than in the URI.
pub fn absolute_form_authority(req: &RequestHeader) -> Option<&str> {
    let raw = req.raw_path();
    if raw.first() == Some(&b'/') {
        // Origin-form, the common case.
        return None;
    }
    pathnorm::parse_target(raw, false).ok()?.authority
}

/// Whether a method is a known method spelled in another case (`get`, `Post`): methods are
/// case-sensitive, but lenient origins treat `get` as `GET`, so such a request could reach a
/// priced resource through a rule that names methods. Refused, never routed.
fn is_miscased_method(method: &str) -> bool {
    method.bytes().any(|b| b.is_ascii_lowercase()) && Methods::parse(method).is_some()
}

/// Routes a request against a snapshot. The request target is classified first (only
/// origin-form, http(s) absolute-form and `OPTIONS *` are accepted), then its path is put in
/// canonical form: that canonical path is what the rules match and what the origin receives.
/// A CORS preflight is routed as the request it asks about (`Access-Control-Request-Method`),
/// so a GET-only priced rule answers its preflight.
pub fn route(snap: &Snapshot, req: &RequestHeader) -> Result<Routed, RequestError> {
    if headers_too_large(req, snap.payment.max_header_bytes) {
        return Err(RequestError::HeadersTooLarge);
    }
    let method = req.method.as_str();
    if is_miscased_method(method) {
        return Err(RequestError::BadMethod);
    }
    let target = pathnorm::parse_target(req.raw_path(), req.method == http::Method::OPTIONS)?;
    let host = request_host(req)?;
    if !snap.hosts.is_empty() && !snap.hosts.iter().any(|h| h.matches(&host)) {
        return Err(RequestError::UnknownHost);
    }
    if target.form == TargetForm::Asterisk {
        return match snap.unmatched {
            Unmatched::Forward => Ok(Routed {
                rule: None,
                rewrite: None,
                document: None,
            }),
            Unmatched::Block => Err(RequestError::Unmatched),
        };
    }
    let canonical = pathnorm::canonical_path(target.path)?;
    if let Some(doc) = document(snap, method, &canonical) {
        return Ok(Routed {
            rule: None,
            rewrite: None,
            document: Some(doc),
        });
    }
    let key = pathnorm::match_key(&canonical, snap.case_sensitive);
    let method = if is_preflight(req) {
        let asked = header(req, "access-control-request-method").map_or("OPTIONS", str::trim);
        // Browsers send standard methods upper-cased (Fetch's method normalization).
        Methods::canonical_name(asked).unwrap_or(asked)
    } else {
        method
    };
    let rule = snap.route(&host, method, &key);
    if rule.is_none() && snap.unmatched == Unmatched::Block {
        return Err(RequestError::Unmatched);
    }
    // The origin receives the canonical origin-form path and the query as sent, whatever form
    // the target came in.
    let rewrite = match canonical {
        Cow::Borrowed(_) if target.form == TargetForm::Origin => None,
        canonical => {
            let mut p = canonical.into_owned();
            if let Some(q) = target.query {
                p.push('?');
                p.push_str(q);
            }
            Some(p)
        }
    };
    Ok(Routed {
        rule,
        rewrite,
        document: None,
    })
}

pub fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The URL clients see for this resource: the configured public base, else the request's
/// scheme and Host (or the forwarded ones when trusted), then the canonical path and query.
pub fn resource_url(
    snap: &Snapshot,
    req: &RequestHeader,
    rewrite: Option<&str>,
    tls: bool,
) -> String {
    let path_and_query = match rewrite {
        Some(p) => p,
        None => req.uri.path_and_query().map_or("/", |p| p.as_str()),
    };
    if let Some(base) = &snap.payment.public_base_url {
        return format!("{base}{path_and_query}");
    }
    let trusted = snap.payment.trust_forwarded_headers;
    let scheme = request_scheme(snap, req, tls);
    let forwarded_host = trusted
        .then(|| header(req, "x-forwarded-host"))
        .flatten()
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|h| normalize_host(h).is_ok() && !h.is_empty());
    let host = forwarded_host
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .or_else(|| absolute_form_authority(req))
        .or_else(|| header(req, "host"))
        .unwrap_or("localhost");
    format!("{scheme}://{host}{path_and_query}")
}

/// The scheme a client used: a trusted `X-Forwarded-Proto`, else the listener's.
fn request_scheme<'a>(snap: &Snapshot, req: &'a RequestHeader, tls: bool) -> &'a str {
    snap.payment
        .trust_forwarded_headers
        .then(|| header(req, "x-forwarded-proto"))
        .flatten()
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|s| *s == "http" || *s == "https")
        .unwrap_or(if tls { "https" } else { "http" })
}

/// Whether [`resource_url`] is an `https` URL, without building it (a request a pass admits
/// never needs the URL).
pub fn resource_is_https(snap: &Snapshot, req: &RequestHeader, tls: bool) -> bool {
    match &snap.payment.public_base_url {
        Some(base) => base.starts_with("https:"),
        None => request_scheme(snap, req, tls) == "https",
    }
}

/// The parts of a request the access decision reads, borrowed where the request already has
/// them in the right form (the common case).
#[derive(Debug)]
pub struct AccessParts<'a> {
    method: &'a str,
    host: Cow<'a, str>,
    /// `@authority`, computed only for signed requests.
    authority: String,
    https: bool,
    path: &'a str,
    query: Option<&'a str>,
    canonical: Cow<'a, str>,
    /// The routing key when it differs from `canonical`.
    key: Option<String>,
}

impl<'a> AccessParts<'a> {
    /// Reads a request that routing already accepted.
    pub fn of(req: &'a RequestHeader, case_sensitive: bool, https: bool) -> Self {
        let host = request_host(req).unwrap_or(Cow::Borrowed(""));
        let path = req.uri.path();
        let canonical = pathnorm::canonical_path(path).unwrap_or(Cow::Borrowed(path));
        let key = match pathnorm::match_key(&canonical, case_sensitive) {
            Cow::Borrowed(_) => None,
            Cow::Owned(k) => Some(k),
        };
        let authority = if crate::access::webbotauth::is_signed(&req.headers) {
            let raw = req
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| absolute_form_authority(req))
                .or_else(|| header(req, "host"))
                .unwrap_or("");
            crate::access::webbotauth::authority(raw, https)
        } else {
            String::new()
        };
        AccessParts {
            method: req.method.as_str(),
            host,
            authority,
            https,
            path,
            query: req.uri.query(),
            canonical,
            key,
        }
    }

    pub fn view<'s>(&'s self, headers: &'s http::HeaderMap) -> crate::access::RequestView<'s> {
        crate::access::RequestView {
            headers,
            method: self.method,
            host: &self.host,
            authority: &self.authority,
            https: self.https,
            path: self.path,
            query: self.query,
            canonical: &self.canonical,
            key: self.key.as_deref().unwrap_or(&self.canonical),
        }
    }
}

/// A browser navigation: it accepts HTML and says Mozilla (the reference servers' test).
pub fn is_browser(req: &RequestHeader) -> bool {
    let accepts_html = req
        .headers
        .get_all("accept")
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")));
    accepts_html && header(req, "user-agent").is_some_and(|ua| ua.contains("Mozilla"))
}

/// A CORS preflight.
pub fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key("origin")
        && req.headers.contains_key("access-control-request-method")
}

/// Whether the request carries a body the gateway has not read.
pub fn has_body(req: &RequestHeader) -> bool {
    let cl = header(req, "content-length").is_some_and(|v| v.trim() != "0");
    cl || req.headers.contains_key("transfer-encoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(payment_extra: &str) -> Snapshot {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[upstreams.origin]\npeers = [\"127.0.0.1:1\"]\n\n\
             [payment]\npay_to = \"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\"\n\
             networks = [\"base-sepolia\"]\n{payment_extra}\n"
        );
        crate::config::load_from_texts(std::path::Path::new("gateway.toml"), &text, &[])
            .expect("config")
    }

    /// Whether a request's resource URL is https, answered without building it, agrees with
    /// the URL for every source of the scheme: the public base URL, a trusted or untrusted
    /// `X-Forwarded-Proto` (well-formed or not), and the listener.
    #[test]
    fn the_cheap_scheme_check_agrees_with_the_resource_url() {
        let snaps = [
            snapshot(""),
            snapshot("trust_forwarded_headers = true"),
            snapshot("public_base_url = \"https://pay.example\""),
            snapshot("public_base_url = \"http://pay.example\"\ntrust_forwarded_headers = true"),
        ];
        for snap in &snaps {
            for proto in [
                None,
                Some("https"),
                Some("http"),
                Some("https, http"),
                Some("ftp"),
            ] {
                let mut req = RequestHeader::build("GET", b"/a?b=1", None).expect("req");
                req.append_header("Host", "h.example").expect("h");
                if let Some(p) = proto {
                    req.append_header("X-Forwarded-Proto", p).expect("h");
                }
                for tls in [false, true] {
                    assert_eq!(
                        resource_is_https(snap, &req, tls),
                        resource_url(snap, &req, None, tls).starts_with("https:"),
                        "{proto:?} tls={tls} base={:?}",
                        snap.payment.public_base_url
                    );
                }
            }
        }
    }

    #[test]
    fn hosts_normalize() {
        assert_eq!(
            normalize_host("Example.COM:8080").as_deref(),
            Ok("example.com")
        );
        assert_eq!(normalize_host("example.com.").as_deref(), Ok("example.com"));
        assert_eq!(normalize_host("[::1]:80").as_deref(), Ok("[::1]"));
        assert_eq!(normalize_host("a b"), Err(RequestError::BadHost));
        assert_eq!(normalize_host("a/b"), Err(RequestError::BadHost));
        assert_eq!(normalize_host("a@b"), Err(RequestError::BadHost));
        assert_eq!(normalize_host("a:x"), Err(RequestError::BadHost));
    }

    #[test]
    fn host_games() {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("req");
        req.append_header("Host", "a.com").expect("h");
        assert_eq!(request_host(&req).as_deref(), Ok("a.com"));
        req.append_header("Host", "b.com").expect("h");
        assert_eq!(request_host(&req), Err(RequestError::DuplicateHost));
        let mut req = RequestHeader::build("GET", b"http://a.com/x", None).expect("req");
        req.append_header("Host", "b.com").expect("h");
        assert_eq!(request_host(&req), Err(RequestError::HostMismatch));
        let req = RequestHeader::build("GET", b"/x", None).expect("req");
        assert_eq!(request_host(&req), Err(RequestError::MissingHost));
    }
}
