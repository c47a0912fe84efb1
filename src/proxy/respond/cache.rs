//! Caching of origin responses the gateway lets through on priced rules: private, no CDN
//! cache headers, a `Vary` on what decided it; and the receipt headers a paid response gains.

use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

use super::challenge::EXPOSE_HEADERS;

/// What a response of a priced rule varies on: the audience (user agent, Web Bot Auth
/// signature, crawler price headers) and the payment.
pub const VARY_PRICED: &str = "User-Agent, Signature, Signature-Input, Signature-Agent, Crawler-Max-Price, Crawler-Exact-Price, PAYMENT-SIGNATURE, X-PAYMENT";
/// [`VARY_PRICED`] where passes are configured: pass cookies and tokens too.
pub const VARY_PRICED_PASSES: &str = "User-Agent, Signature, Signature-Input, Signature-Agent, Crawler-Max-Price, Crawler-Exact-Price, PAYMENT-SIGNATURE, X-PAYMENT, Cookie, Authorization, X402-Pass";

/// Origin headers that tell CDNs to store a response whatever `Cache-Control` says.
const CDN_CACHE_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("cdn-cache-control"),
    HeaderName::from_static("surrogate-control"),
    HeaderName::from_static("cloudflare-cdn-cache-control"),
    HeaderName::from_static("edge-control"),
];
/// Header values checked at compile time and copied without a check per response.
const PRIVATE: HeaderValue = HeaderValue::from_static("private");
const EXPOSE: HeaderValue = HeaderValue::from_static(EXPOSE_HEADERS);
/// [`VARY_PRICED`] and [`VARY_PRICED_PASSES`] as header values.
pub const VARY_PRICED_VALUE: HeaderValue = HeaderValue::from_static(VARY_PRICED);
pub const VARY_PRICED_PASSES_VALUE: HeaderValue = HeaderValue::from_static(VARY_PRICED_PASSES);

/// Keeps an origin response of a priced (or audience-priced) rule out of shared caches,
/// whatever let it through (payment, pass, fail-open, shadow, a free audience): the next
/// client may not be entitled to it. `Cache-Control` gains `private` (losing `public` and
/// `s-maxage`), CDN-specific cache headers are dropped, and `Vary` names what changed the
/// decision.
pub fn keep_private(resp: &mut ResponseHeader, vary: HeaderValue) -> pingora::Result<()> {
    match resp
        .headers
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(private_cache_control)
    {
        Some(cc) => resp.insert_header("cache-control", cc)?,
        None => resp.insert_header("cache-control", PRIVATE)?,
    }
    for h in &CDN_CACHE_HEADERS {
        if resp.headers.contains_key(h) {
            resp.remove_header(h);
        }
    }
    resp.append_header("vary", vary)?;
    Ok(())
}

/// Adds receipt headers to a paid origin response and lets browsers read them.
pub fn mark_paid_response(
    resp: &mut ResponseHeader,
    receipt: &[(&'static str, String)],
) -> pingora::Result<()> {
    for (k, v) in receipt {
        resp.insert_header(*k, v.as_str())?;
    }
    match resp
        .headers
        .get(http::header::ACCESS_CONTROL_EXPOSE_HEADERS)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) if !prev.trim().is_empty() => {
            let expose = format!("{prev}, {EXPOSE_HEADERS}");
            resp.insert_header("access-control-expose-headers", expose)?;
        }
        _ => resp.insert_header("access-control-expose-headers", EXPOSE)?,
    }
    Ok(())
}

/// Rewrites an origin `Cache-Control` so shared caches never store a paid response.
pub fn private_cache_control(cc: &str) -> String {
    let mut parts: Vec<&str> = cc
        .split(',')
        .map(str::trim)
        .filter(|d| {
            let name = d
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            !d.is_empty() && name != "public" && name != "s-maxage" && name != "private"
        })
        .collect();
    parts.push("private");
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paid_responses_are_private() {
        assert_eq!(
            private_cache_control("public, max-age=60, s-maxage=600"),
            "max-age=60, private"
        );
        assert_eq!(private_cache_control("no-cache"), "no-cache, private");
        assert_eq!(private_cache_control("private"), "private");
    }
}
