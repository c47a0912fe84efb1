//! A priced rule's payment policy: when it settles relative to forwarding, and what happens
//! when no facilitator can answer. Plain runtime values; the configuration parses into them.

use serde::{Deserialize, Serialize};

/// When a payment is settled relative to forwarding.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Settlement {
    /// Forward, then settle if the origin answered < 400 (default).
    #[default]
    After,
    /// Settle, then forward.
    Before,
}

impl Settlement {
    /// The x402 payment flow this settlement is, as offers name it in `extra.paymentFlow`:
    /// `authorization` (verified before, settled after the origin answered) or `upfront`
    /// (settled before the origin is asked).
    pub fn payment_flow(self) -> &'static str {
        match self {
            Settlement::After => "authorization",
            Settlement::Before => "upfront",
        }
    }
}

/// What happens to a priced request when no facilitator can answer.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// 503 with `Retry-After`; the origin is not reached (default).
    #[default]
    Closed,
    /// Serve without payment, counted and logged.
    Open,
}

/// A priced rule's payment policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RulePolicy {
    pub settlement: Settlement,
    pub failure_policy: FailurePolicy,
    /// Keep the query in the resource URL given to facilitators and the ledger.
    pub resource_query: bool,
    /// How long a payer may read what it paid for again by signing in (Sign-In-With-X).
    pub sign_in: Option<std::time::Duration>,
    /// What sets an `upto` payment's charge.
    pub meter: Meter,
}

/// What sets a metered (`upto`) payment's charge, at most the ceiling the payer signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Meter {
    /// The origin's `Settlement-Overrides` header; settled before the first body byte.
    #[default]
    Origin,
    /// Atomic units per KiB of response body (started KiB count); settled when the body ended.
    Bytes(u128),
    /// Atomic units per second of response (started seconds count, from the origin's first
    /// byte); settled when the body ended.
    Seconds(u128),
}

impl Meter {
    /// Whether the charge is known only when the body ended.
    pub fn at_body_end(self) -> bool {
        !matches!(self, Meter::Origin)
    }

    /// The charge for a body of `bytes` that took `elapsed`, before the ceiling.
    pub fn charge(self, bytes: u64, elapsed: std::time::Duration) -> u128 {
        match self {
            Meter::Origin => 0,
            Meter::Bytes(per_kib) => u128::from(bytes.div_ceil(1024)).saturating_mul(per_kib),
            Meter::Seconds(per_second) => {
                let started = elapsed.as_millis().div_ceil(1000);
                started.saturating_mul(per_second)
            }
        }
    }
}
