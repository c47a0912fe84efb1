//! Passes: compact signed tokens issued after a settled payment that let the payer's next
//! requests through without paying again, bound to a scope, methods, an expiry, a request
//! quota and what was paid. This file holds what a pass says and what it covers; `keys.rs`
//! signs and verifies tokens, `engine.rs` admits requests (quotas and revocations in the
//! state store), `cookie.rs` finds tokens in requests and sets the cookie.

mod cookie;
mod engine;
mod keys;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::router::Methods;
pub use cookie::{cookie_without, presented, set_cookie};
pub use engine::{Admitted, PassEngine};
pub use keys::{Algorithm, KeyMaterial, PassKeys, mint, verify};

/// Every token starts with this (so a `Bearer` value that is not a pass is left alone).
pub const TOKEN_PREFIX: &str = "x402p1.";
/// Request and response header carrying a pass for agents.
pub const HEADER: &str = "x402-pass";
/// Response header: requests left on the pass that admitted this request.
pub const HEADER_REMAINING: &str = "x402-pass-remaining";
/// Longest pass lifetime accepted in configuration.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Longest token accepted.
const MAX_TOKEN_BYTES: usize = 2048;
/// Tokens tried per request (cookies with the same name for different paths, plus headers).
const MAX_PRESENTED: usize = 4;
/// Clock skew allowed on `iat`.
const SKEW_SECONDS: u64 = 60;

/// Why a pass does not admit a request. Each variant has one reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PassError {
    #[error("the pass is not a well-formed token")]
    Malformed,
    #[error("the pass was signed with an unknown key")]
    UnknownKey,
    #[error("the pass signature is invalid")]
    BadSignature,
    #[error("the pass is not valid yet")]
    NotYetValid,
    #[error("the pass has expired")]
    Expired,
    #[error("the pass does not cover this request")]
    OutOfScope,
    /// Bought under another rule for less than this request costs (or in another asset).
    #[error("the pass was bought for less than this request costs")]
    Insufficient,
    #[error("the pass has no requests left")]
    Exhausted,
    #[error("the pass was revoked")]
    Revoked,
    /// The state store (quotas, revocations) could not be read.
    #[error("passes cannot be checked right now")]
    Unavailable,
}

impl PassError {
    /// Stable reason code (the 402's `error`, logs, metrics).
    pub fn reason(self) -> &'static str {
        match self {
            PassError::Malformed
            | PassError::UnknownKey
            | PassError::BadSignature
            | PassError::NotYetValid => "pass_invalid",
            PassError::Expired => "pass_expired",
            PassError::OutOfScope => "pass_out_of_scope",
            PassError::Insufficient => "pass_insufficient",
            PassError::Exhausted => "pass_exhausted",
            PassError::Revoked => "pass_revoked",
            PassError::Unavailable => "state_unavailable",
        }
    }

    /// Which error to report when several presented passes fail: the one most about this
    /// request (an expired pass for this page beats a pass for another page).
    fn rank(self) -> u8 {
        match self {
            PassError::OutOfScope | PassError::Insufficient => 0,
            PassError::Malformed | PassError::UnknownKey | PassError::BadSignature => 1,
            PassError::NotYetValid => 2,
            PassError::Expired | PassError::Exhausted | PassError::Revoked => 3,
            PassError::Unavailable => 4,
        }
    }
}

/// What a pass covers, besides its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScopeKind {
    /// The one path it was bought for.
    #[serde(rename = "res")]
    Resource,
    /// Everything the rule it was bought under matches.
    #[serde(rename = "rule")]
    Rule,
    /// Every path under a prefix.
    #[serde(rename = "pre")]
    Prefix,
}

/// A rule's `pass = { … }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassPolicy {
    pub ttl: Duration,
    pub scope: ScopeKind,
    /// For `prefix` scope: the prefix in routing-key form (`/articles/`).
    pub prefix: Option<String>,
    /// Methods the pass admits (`ANY`: every method).
    pub methods: Methods,
    /// Requests the pass admits after the paid one (`None`: unlimited until expiry).
    pub max_requests: Option<u32>,
    /// Cookie `Path` for `rule` and `prefix` scopes (the resource's path for `resource`).
    pub cookie_path: String,
}

/// What a pass says. Short field names keep the token small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Random id (base64url of 16 bytes): the quota key and what revocation names.
    pub id: String,
    /// Rule id it was bought under.
    #[serde(rename = "r")]
    pub rule: String,
    /// Host it is valid for.
    #[serde(rename = "h")]
    pub host: String,
    #[serde(rename = "s")]
    pub scope: ScopeKind,
    /// Resource routing key (`res`) or prefix (`pre`); empty for `rule`.
    #[serde(rename = "p")]
    pub path: String,
    /// Method bits (see [`Methods`]); 0 = any.
    #[serde(rename = "m")]
    pub methods: u16,
    pub iat: u64,
    pub exp: u64,
    /// Requests admitted; 0 = unlimited.
    #[serde(rename = "n")]
    pub max_requests: u32,
    /// Who paid.
    #[serde(rename = "by")]
    pub payer: String,
    /// What was paid for it: another rule honours the pass only where it costs no more.
    #[serde(rename = "pd", default, skip_serializing_if = "Option::is_none")]
    pub paid: Option<Paid>,
}

/// The payment a pass was bought with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paid {
    /// CAIP-2 network.
    #[serde(rename = "n")]
    pub network: String,
    /// Token address, lower case.
    #[serde(rename = "t")]
    pub asset: String,
    /// Atomic units.
    #[serde(rename = "a")]
    pub amount: u128,
}

/// Where a request goes, for scope checks.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Normalized host (no port, lower case).
    pub host: &'a str,
    pub rule: &'a str,
    /// Routing key of the path (canonical, lower-cased unless case-sensitive).
    pub key: &'a str,
    /// Method bit ([`Methods::bit`]).
    pub method: u16,
    /// What this request costs, as (network, asset in lower case, atomic amount) offers: a
    /// pass bought under another rule admits it only if it paid at least as much in one.
    pub price: &'a [(String, String, u128)],
    /// Rules whose passes this rule honours at any price (`accept_passes_from`; `*`: all).
    pub honours: &'a [String],
}

impl Claims {
    /// Whether this pass covers a request.
    pub fn covers(&self, t: &Target<'_>) -> Result<(), PassError> {
        if self.host != t.host {
            return Err(PassError::OutOfScope);
        }
        let mut method = t.method;
        if method == Methods::bit("HEAD") {
            method |= Methods::bit("GET");
        }
        if !Methods(self.methods).matches(method) {
            return Err(PassError::OutOfScope);
        }
        let ok = match self.scope {
            ScopeKind::Resource => self.path == t.key,
            ScopeKind::Rule => self.rule == t.rule,
            ScopeKind::Prefix => under_prefix(t.key, &self.path),
        };
        if !ok {
            return Err(PassError::OutOfScope);
        }
        if self.rule == t.rule || t.honours.iter().any(|r| r == "*" || *r == self.rule) {
            return Ok(());
        }
        // Another rule (a dearer one inside the prefix, a rule that took over a resource on
        // reload): only where this pass paid at least its price, in the same asset.
        let covered = self.paid.as_ref().is_some_and(|p| {
            t.price.iter().any(|(network, asset, amount)| {
                *network == p.network && *asset == p.asset && *amount <= p.amount
            })
        });
        if covered {
            Ok(())
        } else {
            Err(PassError::Insufficient)
        }
    }
}

/// Whether a routing key lies under a prefix (`/a/` covers `/a` and `/a/b`, not `/ab`).
pub fn under_prefix(key: &str, prefix: &str) -> bool {
    let bare = prefix.trim_end_matches('/');
    if bare.is_empty() {
        return true;
    }
    match key.strip_prefix(bare) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn check_time(c: &Claims, now: u64) -> Result<(), PassError> {
    if c.iat > now + SKEW_SECONDS {
        return Err(PassError::NotYetValid);
    }
    if now >= c.exp {
        return Err(PassError::Expired);
    }
    Ok(())
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh pass id: 16 random bytes, base64url.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: fall back to a hash of the time and address space layout.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let h = Sha256::digest(format!("{t}{:p}", &b).as_bytes());
        b.copy_from_slice(&h[..16]);
    }
    URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests;
