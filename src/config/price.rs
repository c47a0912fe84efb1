//! Prices: `"$0.01"` converted exactly into an asset's atomic units with decimal arithmetic.

use rust_decimal::Decimal;
use std::str::FromStr;

/// Why a price is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("`{0}` is not a USD amount like \"$0.01\"")]
    NotUsd(String),
    #[error("${0} is not a whole number of atomic units of an asset with {1} decimals")]
    Fraction(String, u32),
    #[error("price must not be negative")]
    Negative,
    #[error("price is too large")]
    TooLarge,
    #[error("`{0}` is not a non-negative integer amount of atomic units")]
    BadAtomic(String),
}

/// Parses `"$1.25"` / `"$0"` into a decimal number of dollars.
pub fn parse_usd(s: &str) -> Result<Decimal, PriceError> {
    let body = s
        .trim()
        .strip_prefix('$')
        .ok_or_else(|| PriceError::NotUsd(s.into()))?;
    if body.starts_with('-') {
        return Err(PriceError::Negative);
    }
    let digits = body.bytes().filter(u8::is_ascii_digit).count();
    let dots = body.bytes().filter(|&b| b == b'.').count();
    if digits == 0
        || dots > 1
        || !body
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'_')
    {
        return Err(PriceError::NotUsd(s.into()));
    }
    Decimal::from_str(&body.replace('_', "")).map_err(|_| PriceError::NotUsd(s.into()))
}

/// Converts dollars into atomic units of an asset with `decimals` decimals, exactly.
pub fn usd_to_atomic(usd: Decimal, decimals: u32) -> Result<u128, PriceError> {
    if usd.is_sign_negative() && !usd.is_zero() {
        return Err(PriceError::Negative);
    }
    let scale =
        Decimal::from_i128_with_scale(10i128.checked_pow(decimals).ok_or(PriceError::TooLarge)?, 0);
    let atomic = usd.checked_mul(scale).ok_or(PriceError::TooLarge)?;
    if !atomic.fract().is_zero() {
        return Err(PriceError::Fraction(usd.normalize().to_string(), decimals));
    }
    u128::try_from(atomic.trunc()).map_err(|_| PriceError::TooLarge)
}

/// Parses an atomic amount (`"10000"`).
pub fn parse_atomic(s: &str) -> Result<u128, PriceError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(PriceError::BadAtomic(s.into()));
    }
    s.parse().map_err(|_| PriceError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_conversion_is_exact() {
        let c = |s: &str, d| parse_usd(s).and_then(|u| usd_to_atomic(u, d));
        assert_eq!(c("$0.01", 6), Ok(10_000));
        assert_eq!(c("$1", 6), Ok(1_000_000));
        assert_eq!(c("$0.000001", 6), Ok(1));
        assert_eq!(
            c("$0.0000001", 6),
            Err(PriceError::Fraction("0.0000001".into(), 6))
        );
        assert_eq!(c("$0.1", 18), Ok(100_000_000_000_000_000));
        assert_eq!(c("$0", 6), Ok(0));
        assert_eq!(c("$-1", 6), Err(PriceError::Negative));
        assert!(matches!(c("0.01", 6), Err(PriceError::NotUsd(_))));
        assert!(matches!(c("$1e3", 6), Err(PriceError::NotUsd(_))));
        assert!(matches!(c("$1.2.3", 6), Err(PriceError::NotUsd(_))));
        assert_eq!(parse_atomic("10000"), Ok(10000));
        assert!(parse_atomic("01").is_err());
        assert!(parse_atomic("-1").is_err());
    }
}
