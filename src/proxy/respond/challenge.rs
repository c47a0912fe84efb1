//! 402 challenges and the other answers about paying: the v2 `PAYMENT-REQUIRED` header with
//! the v1 JSON body (or the HTML page for people in browsers), refused payments and passes,
//! pay-per-crawl refusals, CORS headers and preflights.

use bytes::Bytes;
use rust_decimal::Decimal;

use super::{Answer, Reply};
use crate::access::Refusal;
use crate::access::crawler_price::{self, CrawlerPriceError};
use crate::access::pass::PassError;
use crate::payment::{PaymentError, Rejection};
use crate::proxy::ctx::Decision;
use crate::snapshot::Snapshot;
use crate::wallet_paywall::WalletPage;
use crate::x402::HEADER_PAYMENT_REQUIRED;
use crate::x402::challenge::Priced;

/// Headers a browser may read from x402 responses.
pub const EXPOSE_HEADERS: &str =
    "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE, X402-Pass, X402-Pass-Remaining";
/// Request headers a paying browser sends.
pub const ALLOW_HEADERS: &str =
    "PAYMENT-SIGNATURE, X-PAYMENT, SIGN-IN-WITH-X, Content-Type, Authorization";

/// What a 402 for one request needs besides its reason.
#[derive(Debug, Clone, Copy)]
pub struct Challenge<'a> {
    pub snap: &'a Snapshot,
    pub priced: &'a Priced,
    /// The resource URL the requirements name.
    pub url: &'a str,
    /// A person in a browser: the HTML page instead of the JSON form.
    pub browser: bool,
    /// The request's `Origin` (CORS).
    pub origin: Option<&'a str>,
    /// The USD price quoted to a crawler or verified bot (`crawler-price`).
    pub crawler_usd: Option<Decimal>,
}

impl Challenge<'_> {
    /// The 402: `PAYMENT-REQUIRED` (v2) plus the v1 JSON body, or an HTML page for browsers.
    /// `error` is the text clients see (a reason code, or a facilitator's reason).
    pub fn reply(&self, reason: &'static str, error: &str, payer: Option<&str>) -> Reply {
        let mut headers = cors(self.snap, self.origin);
        let required = self.priced.payment_required_header(error, self.url);
        if self.browser {
            let page = match &self.snap.wallet_paywall {
                // A wallet can pay: the reference paywall page with these requirements.
                Some(wallet) if WalletPage::serves(self.priced) => wallet.render(
                    self.priced,
                    &self.priced.payment_required_json(error, self.url),
                    self.url,
                ),
                _ => crate::proxy::paywall::render(
                    &self.snap.paywall,
                    self.priced,
                    self.url,
                    reason,
                    &required,
                ),
            };
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
            body: Bytes::from(self.priced.v1_body(v1_error, self.url, payer)),
        }
    }

    /// A sign-in that does not admit (and no payment): a 402 naming why, with fresh
    /// requirements and a fresh sign-in challenge; a 503 when the state store cannot say.
    pub fn sign_in_refused(&self, e: crate::access::siwx::SiwxError) -> Answer {
        let reason = e.reason();
        let challenge = Challenge {
            browser: false,
            ..*self
        };
        let mut reply = challenge.reply(reason, reason, None);
        if e == crate::access::siwx::SiwxError::Unavailable {
            reply.status = 503;
            reply.headers.push(("retry-after", "5".into()));
            return Answer::new(reply, Decision::Local);
        }
        Answer::new(reply, Decision::Challenged)
    }

    /// The answer to a refused payment: facilitator or state trouble is a 503 with
    /// `Retry-After`, too many refused attempts a 429, everything else a 402 carrying fresh
    /// requirements (never the HTML page once a payment was attempted), plus a
    /// `success:false` receipt when a settlement failed. `pass_error`: a presented pass that
    /// failed, the reason when no payment came with it.
    pub fn refused(&self, r: &Rejection, pass_error: Option<PassError>) -> Answer {
        if let (Some(e), PaymentError::MissingPayment) = (pass_error, &r.error) {
            let mut reply = self.reply(e.reason(), e.reason(), None);
            if e == PassError::Unavailable {
                // No verdict on the pass: the store that counts and revokes passes is down.
                reply.status = 503;
                reply.headers.push(("retry-after", "5".into()));
                return Answer::new(reply, Decision::Local);
            }
            return Answer::new(self.with_crawler_price(reply), Decision::Challenged);
        }
        let reason = r.error.reason();
        if matches!(
            r.error,
            PaymentError::IdentifierConflict
                | PaymentError::IdentifierInFlight
                | PaymentError::IdentifierSettled
        ) {
            // Not a payment problem: the name is taken (for good, or until the first attempt
            // ends). A 409 with the reason; no fresh requirements invite paying twice.
            let mut reply = Reply::error(409, reason, &r.error.to_string());
            if r.error == PaymentError::IdentifierInFlight {
                reply.headers.push(("retry-after", "1".into()));
            }
            reply.headers.extend(cors(self.snap, self.origin));
            return Answer::new(reply, Decision::Local);
        }
        let unpaid = r.error == PaymentError::MissingPayment;
        let challenge = Challenge {
            browser: self.browser && unpaid,
            ..*self
        };
        let mut reply = challenge.reply(reason, r.error.error_text(), r.payer.as_deref());
        let decision = match retry_after(&r.error) {
            Some((status, after)) => {
                reply.status = status;
                reply.headers.push(("retry-after", after.into()));
                Decision::Local
            }
            None => Decision::Challenged,
        };
        if let Some(receipt) = &r.receipt {
            reply.headers.push((
                crate::x402::receipt_header(r.version == 1),
                receipt.header_value(),
            ));
        }
        Answer::new(self.with_crawler_price(reply), decision)
    }

    /// Adds `crawler-price` to a 402 answered to a crawler or verified bot.
    fn with_crawler_price(&self, mut reply: Reply) -> Reply {
        if let (402, Some(u)) = (reply.status, self.crawler_usd) {
            reply
                .headers
                .push((crawler_price::PRICE, crawler_price::format_usd(u)));
        }
        reply
    }
}

/// The status and `Retry-After` of refusals that are no verdict on the payment: the
/// facilitators or the state store could not answer (503), or the client tried too often
/// (429). `None`: a 402.
fn retry_after(e: &PaymentError) -> Option<(u16, &'static str)> {
    match e {
        PaymentError::FacilitatorUnavailable
        | PaymentError::NoFacilitator
        | PaymentError::FacilitatorBusy
        | PaymentError::SettleUnconfirmed
        | PaymentError::StateUnavailable => Some((503, "5")),
        PaymentError::RateLimited => Some((429, "1")),
        _ => None,
    }
}

/// A refusal before payment: 403 for an audience the rule blocks; for crawlers and verified
/// bots, Cloudflare's `crawler-error` codes (403 forbidden, 400 bad price headers, 402 without
/// an x402 offer when the price does not fit the crawler's ceiling).
pub fn access_refused(r: &Refusal, rule_id: &str, usd: Option<Decimal>) -> Answer {
    match r {
        Refusal::Blocked => Answer::new(
            Reply::error(
                403,
                "audience_blocked",
                &format!("rule {rule_id} does not serve this audience"),
            ),
            Decision::Blocked,
        ),
        Refusal::Crawler(e) => {
            let (status, decision) = match e {
                CrawlerPriceError::Forbidden => (403, Decision::Blocked),
                CrawlerPriceError::InvalidValue | CrawlerPriceError::Conflicting => {
                    (400, Decision::Local)
                }
                CrawlerPriceError::AboveMax | CrawlerPriceError::NotExact => {
                    (402, Decision::Challenged)
                }
            };
            let mut reply = Reply::error(status, e.reason(), &e.to_string())
                .with_header(crawler_price::ERROR, e.code().to_owned());
            if status == 402
                && let Some(u) = usd
            {
                reply = reply.with_header(crawler_price::PRICE, crawler_price::format_usd(u));
            }
            Answer::new(reply, decision)
        }
    }
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
pub fn preflight(snap: &Snapshot, origin: Option<&str>, requested_headers: Option<&str>) -> Answer {
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
    let reply = Reply {
        status: 204,
        reason: "cors_preflight",
        content_type: "text/plain",
        headers,
        body: Bytes::new(),
    };
    Answer::new(reply, Decision::Local)
}
