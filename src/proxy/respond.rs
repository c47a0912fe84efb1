//! The one place that turns outcomes into responses the gateway writes itself: 402 challenges
//! (JSON for agents, HTML for browsers), 4xx refusals, 5xx upstream failures, CORS preflights.
//! Every body carries a stable snake_case reason code.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde::Serialize;

use super::request::RequestError;
use crate::access::Refusal;
use crate::access::crawler_price::{self, CrawlerPriceError};
use crate::access::pass::PassError;
use crate::payment::{PaymentError, Rejection};
use crate::snapshot::Snapshot;
use crate::x402::HEADER_PAYMENT_REQUIRED;
use crate::x402::challenge::Priced;

/// Headers a browser may read from x402 responses.
pub const EXPOSE_HEADERS: &str =
    "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE, X402-Pass, X402-Pass-Remaining";
/// Request headers a paying browser sends.
pub const ALLOW_HEADERS: &str =
    "PAYMENT-SIGNATURE, X-PAYMENT, SIGN-IN-WITH-X, Content-Type, Authorization";

/// A response the gateway writes itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// Stable reason code (also the metric label and the log field).
    pub reason: &'static str,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl Reply {
    /// A JSON error `{error, message}`.
    pub fn error(status: u16, reason: &'static str, message: &str) -> Self {
        let body = serde_json::to_vec(&ErrorBody {
            error: reason,
            message,
        })
        .unwrap_or_default();
        Reply {
            status,
            reason,
            content_type: "application/json",
            headers: vec![("cache-control", "no-store".into())],
            body: Bytes::from(body),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// Refusals of malformed requests.
impl From<&RequestError> for Reply {
    fn from(e: &RequestError) -> Self {
        let (status, reason) = match e {
            RequestError::Path(p) => (400, p.reason()),
            RequestError::DuplicateHost => (400, "duplicate_host_header"),
            RequestError::HostMismatch => (400, "host_mismatch"),
            RequestError::MissingHost => (400, "missing_host"),
            RequestError::BadHost => (400, "bad_host"),
            RequestError::HeadersTooLarge => (431, "request_headers_too_large"),
            RequestError::BadMethod => (400, "invalid_method"),
            RequestError::UnknownHost => (421, "unknown_host"),
            RequestError::Unmatched => (403, "no_matching_rule"),
        };
        Reply::error(status, reason, &e.to_string())
    }
}

/// Failures to reach the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("no healthy upstream peer")]
    NoHealthyPeer,
    #[error("upstream refused or failed the connection")]
    Unavailable,
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream sent an invalid response")]
    BadResponse,
}

impl From<UpstreamError> for Reply {
    fn from(e: UpstreamError) -> Self {
        let (status, reason) = match e {
            UpstreamError::NoHealthyPeer => (502, "no_healthy_upstream"),
            UpstreamError::Unavailable => (502, "upstream_unavailable"),
            UpstreamError::Timeout => (504, "upstream_timeout"),
            UpstreamError::BadResponse => (502, "upstream_bad_response"),
        };
        Reply::error(status, reason, &e.to_string())
    }
}

/// 403 for a `block` rule.
pub fn blocked(rule_id: &str) -> Reply {
    Reply::error(
        403,
        "blocked_by_rule",
        &format!("blocked by rule {rule_id}"),
    )
}

/// A refusal before payment: 403 for an audience the rule blocks; for crawlers and verified
/// bots, Cloudflare's `crawler-error` codes (403 forbidden, 400 bad price headers, 402 without
/// an x402 offer when the price does not fit the crawler's ceiling).
pub fn access_refusal(r: &Refusal, rule_id: &str, usd: Option<rust_decimal::Decimal>) -> Reply {
    match r {
        Refusal::Blocked => Reply::error(
            403,
            "audience_blocked",
            &format!("rule {rule_id} does not serve this audience"),
        ),
        Refusal::Crawler(e) => {
            let status = match e {
                CrawlerPriceError::Forbidden => 403,
                CrawlerPriceError::InvalidValue | CrawlerPriceError::Conflicting => 400,
                CrawlerPriceError::AboveMax | CrawlerPriceError::NotExact => 402,
            };
            let mut reply = Reply::error(status, e.reason(), &e.to_string())
                .with_header(crawler_price::ERROR, e.code().to_owned());
            if status == 402
                && let Some(u) = usd
            {
                reply = reply.with_header(crawler_price::PRICE, crawler_price::format_usd(u));
            }
            reply
        }
    }
}

/// The 402 for a presented pass that does not admit the request, with the usual challenge.
pub fn pass_refused(
    snap: &Snapshot,
    priced: &Priced,
    url: &str,
    e: PassError,
    browser: bool,
    origin: Option<&str>,
) -> Reply {
    challenge(
        snap,
        priced,
        url,
        e.reason(),
        e.reason(),
        browser,
        origin,
        None,
    )
}

/// Adds `crawler-price` to a 402 answered to a crawler or verified bot.
pub fn add_crawler_price(reply: &mut Reply, usd: Option<rust_decimal::Decimal>) {
    if let (402, Some(u)) = (reply.status, usd) {
        reply
            .headers
            .push((crawler_price::PRICE, crawler_price::format_usd(u)));
    }
}

/// Appends headers to an origin response (pass cookies must not replace the origin's own).
pub fn append_headers(
    resp: &mut ResponseHeader,
    headers: &[(&'static str, String)],
) -> pingora::Result<()> {
    for (k, v) in headers {
        resp.append_header(*k, v.as_str())?;
    }
    Ok(())
}

/// CORS headers for a response to `origin`.
pub fn cors(snap: &Snapshot, origin: Option<&str>) -> Vec<(&'static str, String)> {
    let allowed = &snap.payment.cors_allow_origins;
    let mut out = Vec::with_capacity(3);
    if allowed.iter().any(|o| o == "*") {
        out.push(("access-control-allow-origin", "*".to_owned()));
    } else if let Some(o) = origin.filter(|o| allowed.iter().any(|a| a == o)) {
        out.push(("access-control-allow-origin", o.to_owned()));
        out.push(("vary", "Origin".to_owned()));
    }
    out.push(("access-control-expose-headers", EXPOSE_HEADERS.to_owned()));
    out
}

/// 204 answer to a CORS preflight on a priced route.
pub fn preflight(snap: &Snapshot, origin: Option<&str>, requested_headers: Option<&str>) -> Reply {
    let mut headers = cors(snap, origin);
    headers.push((
        "access-control-allow-methods",
        "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".into(),
    ));
    let allow = match requested_headers {
        Some(r) if !r.trim().is_empty() => format!("{ALLOW_HEADERS}, {r}"),
        _ => ALLOW_HEADERS.to_owned(),
    };
    headers.push(("access-control-allow-headers", allow));
    headers.push(("access-control-max-age", "600".into()));
    Reply {
        status: 204,
        reason: "cors_preflight",
        content_type: "text/plain",
        headers,
        body: Bytes::new(),
    }
}

/// The 402 challenge: `PAYMENT-REQUIRED` (v2) plus the v1 JSON body, or an HTML page for
/// browsers. `error` is the text clients see (a reason code, or a facilitator's reason).
#[allow(clippy::too_many_arguments)]
pub fn challenge(
    snap: &Snapshot,
    priced: &Priced,
    url: &str,
    reason: &'static str,
    error: &str,
    browser: bool,
    origin: Option<&str>,
    payer: Option<&str>,
) -> Reply {
    let mut headers = cors(snap, origin);
    let required = priced.payment_required_header(error, url);
    if browser {
        let page = super::paywall::render(&snap.paywall, priced, url, reason, &required);
        headers.push((HEADER_PAYMENT_REQUIRED, required));
        headers.push(("cache-control", "no-store".into()));
        return Reply {
            status: 402,
            reason,
            content_type: "text/html; charset=utf-8",
            headers,
            body: Bytes::from(page),
        };
    }
    headers.push((HEADER_PAYMENT_REQUIRED, required));
    headers.push(("cache-control", "no-store".into()));
    let v1_error = if reason == "payment_required" {
        "X-PAYMENT header is required"
    } else {
        error
    };
    Reply {
        status: 402,
        reason,
        content_type: "application/json",
        headers,
        body: Bytes::from(priced.v1_body(v1_error, url, payer)),
    }
}

/// The answer to a refused payment. Facilitator trouble is a 503 with `Retry-After`;
/// everything else is a 402 carrying fresh requirements (never the HTML page once a payment
/// was attempted), plus a `success:false` receipt when a settlement failed.
pub fn payment_rejection(
    snap: &Snapshot,
    priced: &Priced,
    url: &str,
    r: &Rejection,
    browser: bool,
    origin: Option<&str>,
) -> Reply {
    let reason = r.error.reason();
    let unpaid = r.error == PaymentError::MissingPayment;
    let mut reply = challenge(
        snap,
        priced,
        url,
        reason,
        r.error.error_text(),
        browser && unpaid,
        origin,
        r.payer.as_deref(),
    );
    if matches!(
        r.error,
        PaymentError::FacilitatorUnavailable
            | PaymentError::NoFacilitator
            | PaymentError::FacilitatorBusy
            | PaymentError::SettleUnconfirmed
            | PaymentError::StateUnavailable
    ) {
        reply.status = 503;
        reply.headers.push(("retry-after", "5".into()));
    }
    if r.error == PaymentError::RateLimited {
        reply.status = 429;
        reply.headers.push(("retry-after", "1".into()));
    }
    if let Some(receipt) = &r.receipt {
        reply.headers.push((
            crate::x402::receipt_header(r.version == 1),
            receipt.header_value(),
        ));
    }
    reply
}

/// Writes a reply. HEAD requests get the headers only.
pub async fn send(session: &mut Session, reply: &Reply) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
    resp.insert_header("content-type", reply.content_type)?;
    resp.insert_header("content-length", reply.body.len().to_string())?;
    for (k, v) in &reply.headers {
        resp.append_header(*k, v.as_str())?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    let no_body = head || reply.body.is_empty();
    session
        .write_response_header(Box::new(resp), no_body)
        .await?;
    if !no_body {
        session
            .write_response_body(Some(reply.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// What a response of a priced rule varies on: the audience (user agent, Web Bot Auth
/// signature, crawler price headers) and the payment.
pub const VARY_PRICED: &str = "User-Agent, Signature, Signature-Input, Signature-Agent, Crawler-Max-Price, Crawler-Exact-Price, PAYMENT-SIGNATURE, X-PAYMENT";
/// [`VARY_PRICED`] where passes are configured: pass cookies and tokens too.
pub const VARY_PRICED_PASSES: &str = "User-Agent, Signature, Signature-Input, Signature-Agent, Crawler-Max-Price, Crawler-Exact-Price, PAYMENT-SIGNATURE, X-PAYMENT, Cookie, Authorization, X402-Pass";

/// Origin headers that tell CDNs to store a response whatever `Cache-Control` says.
const CDN_CACHE_HEADERS: [&str; 4] = [
    "cdn-cache-control",
    "surrogate-control",
    "cloudflare-cdn-cache-control",
    "edge-control",
];

/// Keeps an origin response of a priced (or audience-priced) rule out of shared caches,
/// whatever let it through (payment, pass, fail-open, shadow, a free audience): the next
/// client may not be entitled to it. `Cache-Control` gains `private` (losing `public` and
/// `s-maxage`), CDN-specific cache headers are dropped, and `Vary` names what changed the
/// decision.
pub fn keep_private(resp: &mut ResponseHeader, vary: &'static str) -> pingora::Result<()> {
    let cc = resp
        .headers
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(private_cache_control);
    resp.insert_header("cache-control", cc.unwrap_or_else(|| "private".into()))?;
    for h in CDN_CACHE_HEADERS {
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
    let expose = match resp
        .headers
        .get("access-control-expose-headers")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {EXPOSE_HEADERS}"),
        _ => EXPOSE_HEADERS.to_owned(),
    };
    resp.insert_header("access-control-expose-headers", expose)?;
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
