//! Pay-per-crawl price hints (Cloudflare's `crawler-*` headers): formats `crawler-price`, parses
//! a crawler's `crawler-max-price` / `crawler-exact-price`, and checks a price against them.

use std::str::FromStr;

use http::HeaderMap;
use rust_decimal::Decimal;

/// Request header: the most the crawler will pay (`USD 0.05`).
pub const MAX_PRICE: &str = "crawler-max-price";
/// Request header: the exact price the crawler accepts (`USD 0.01`).
pub const EXACT_PRICE: &str = "crawler-exact-price";
/// Response header on a 402: the price (`USD 0.01`).
pub const PRICE: &str = "crawler-price";
/// Response header on a paid response: what was charged.
pub const CHARGED: &str = "crawler-charged";
/// Response header naming why a crawler request was refused.
pub const ERROR: &str = "crawler-error";

/// Why a crawler's price headers refuse the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CrawlerPriceError {
    #[error("crawler-max-price or crawler-exact-price is not `USD <amount>`")]
    InvalidValue,
    #[error("both crawler-max-price and crawler-exact-price were sent")]
    Conflicting,
    #[error("the price is above crawler-max-price")]
    AboveMax,
    #[error("the price is not crawler-exact-price")]
    NotExact,
    #[error("crawlers may not fetch this resource")]
    Forbidden,
}

impl CrawlerPriceError {
    /// The `crawler-error` header value (Cloudflare's code).
    pub fn code(self) -> &'static str {
        match self {
            CrawlerPriceError::InvalidValue => "InvalidCrawlerPriceValue",
            CrawlerPriceError::Conflicting => "ConflictingPriceHeaders",
            CrawlerPriceError::AboveMax => "InvalidCrawlerMaxPrice",
            CrawlerPriceError::NotExact => "InvalidCrawlerExactPrice",
            CrawlerPriceError::Forbidden => "CrawlerForbidden",
        }
    }

    /// The snake_case reason code (bodies, logs, metrics).
    pub fn reason(self) -> &'static str {
        match self {
            CrawlerPriceError::InvalidValue => "invalid_crawler_price_value",
            CrawlerPriceError::Conflicting => "conflicting_price_headers",
            CrawlerPriceError::AboveMax => "invalid_crawler_max_price",
            CrawlerPriceError::NotExact => "invalid_crawler_exact_price",
            CrawlerPriceError::Forbidden => "crawler_forbidden",
        }
    }
}

/// What the crawler said it will pay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ceiling {
    None,
    Max(Decimal),
    Exact(Decimal),
}

/// `USD 0.01` → 0.01. The currency must be USD; the amount a plain non-negative decimal.
pub fn parse_usd(v: &str) -> Option<Decimal> {
    let mut parts = v.split_ascii_whitespace();
    let (cur, amount) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || !cur.eq_ignore_ascii_case("USD") {
        return None;
    }
    if amount.is_empty()
        || !amount.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        || amount.bytes().filter(|&b| b == b'.').count() > 1
        || !amount.bytes().any(|b| b.is_ascii_digit())
    {
        return None;
    }
    Decimal::from_str(amount).ok()
}

/// `crawler-price` text: at least two decimals (`USD 0.01`, `USD 0.005`, `USD 1.00`).
pub fn format_usd(d: Decimal) -> String {
    let n = d.normalize();
    if n.scale() < 2 {
        format!("USD {:.2}", n)
    } else {
        format!("USD {n}")
    }
}

/// Reads the crawler's ceiling. Malformed or both headers refuse the request.
pub fn ceiling(headers: &HeaderMap) -> Result<Ceiling, CrawlerPriceError> {
    let one = |name: &str| -> Result<Option<Decimal>, CrawlerPriceError> {
        let mut all = headers.get_all(name).iter();
        let Some(v) = all.next() else {
            return Ok(None);
        };
        if all.next().is_some() {
            return Err(CrawlerPriceError::InvalidValue);
        }
        v.to_str()
            .ok()
            .and_then(parse_usd)
            .map(Some)
            .ok_or(CrawlerPriceError::InvalidValue)
    };
    match (one(MAX_PRICE)?, one(EXACT_PRICE)?) {
        (Some(_), Some(_)) => Err(CrawlerPriceError::Conflicting),
        (Some(m), None) => Ok(Ceiling::Max(m)),
        (None, Some(e)) => Ok(Ceiling::Exact(e)),
        (None, None) => Ok(Ceiling::None),
    }
}

/// Whether `price` fits the crawler's ceiling.
pub fn check(price: Decimal, c: Ceiling) -> Result<(), CrawlerPriceError> {
    match c {
        Ceiling::None => Ok(()),
        Ceiling::Max(m) if price > m => Err(CrawlerPriceError::AboveMax),
        Ceiling::Exact(e) if price != e => Err(CrawlerPriceError::NotExact),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    #[test]
    fn parse_and_format() {
        assert_eq!(parse_usd("USD 0.01"), Some(d("0.01")));
        assert_eq!(parse_usd("usd  1"), Some(d("1")));
        assert_eq!(parse_usd("EUR 1"), None);
        assert_eq!(parse_usd("USD -1"), None);
        assert_eq!(parse_usd("USD 1e3"), None);
        assert_eq!(parse_usd("USD"), None);
        assert_eq!(parse_usd("USD 1 2"), None);
        assert_eq!(parse_usd("USD ."), None);
        assert_eq!(format_usd(d("0.01")), "USD 0.01");
        assert_eq!(format_usd(d("0.0050")), "USD 0.005");
        assert_eq!(format_usd(d("1")), "USD 1.00");
        assert_eq!(format_usd(d("0.1")), "USD 0.10");
    }

    #[test]
    fn ceilings() {
        let mut h = HeaderMap::new();
        assert_eq!(ceiling(&h), Ok(Ceiling::None));
        h.insert(MAX_PRICE, "USD 0.02".parse().expect("v"));
        assert_eq!(ceiling(&h), Ok(Ceiling::Max(d("0.02"))));
        assert_eq!(check(d("0.01"), Ceiling::Max(d("0.02"))), Ok(()));
        assert_eq!(check(d("0.02"), Ceiling::Max(d("0.02"))), Ok(()));
        assert_eq!(
            check(d("0.03"), Ceiling::Max(d("0.02"))),
            Err(CrawlerPriceError::AboveMax)
        );
        assert_eq!(check(d("0.010"), Ceiling::Exact(d("0.01"))), Ok(()));
        assert_eq!(
            check(d("0.02"), Ceiling::Exact(d("0.01"))),
            Err(CrawlerPriceError::NotExact)
        );
        h.insert(EXACT_PRICE, "USD 0.01".parse().expect("v"));
        assert_eq!(ceiling(&h), Err(CrawlerPriceError::Conflicting));
        let mut bad = HeaderMap::new();
        bad.insert(EXACT_PRICE, "0.01".parse().expect("v"));
        assert_eq!(ceiling(&bad), Err(CrawlerPriceError::InvalidValue));
    }
}
