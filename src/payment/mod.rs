//! The payment engine: the gate (decode → match → the scheme's local checks → rate limits →
//! replay reservation → verify, cached) in `gate.rs`, settlement (settle, confirm on chain,
//! unclear outcomes, the ledger, receipts) in `settle.rs`. Works on plain HTTP header maps and
//! the values of one configuration generation ([`PaymentEnv`]); never touches a socket except
//! through the facilitator client.

pub mod channel;
pub mod confirm;
pub mod decode;
mod gate;
pub mod identifier;
pub mod ledger;
pub mod limits;
pub mod policy;
pub mod reasons;
pub mod receipts;
pub mod replay;
mod settle;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::B256;

use crate::facilitator::dispatch::Facilitators;
use crate::facilitator::local::Settlers;
use crate::facilitator::rpc::ExpectedTransfer;
use crate::facilitator::{Facilitate, FacilitatorConf};
use crate::metrics::Metrics;
use crate::schemes::SchemeError;
use crate::state::StateStore;
use crate::x402::challenge::Offer;
use crate::x402::codec::DecodeError;
use crate::x402::networks::Registry;
use crate::x402::types::SettleResponse;
pub use gate::check_locally;
use ledger::{Ledger, LedgerConf};
use limits::FailureWindow;
pub use policy::{FailurePolicy, Meter, RulePolicy, Settlement};
use replay::ReplayKey;
pub use settle::{CLIENT_GONE, RESOLVE_WINDOW};

/// What the payment engine reads from one configuration generation.
#[derive(Debug, Clone, Copy)]
pub struct PaymentEnv<'a> {
    pub facilitators: &'a [FacilitatorConf],
    /// Networks and assets (and the chains' RPC endpoints).
    pub registry: &'a Registry,
    pub ledger: &'a LedgerConf,
    pub limits: Limits,
    /// How long a request waits on the chain for a settlement a facilitator left pending.
    pub pending_wait: Duration,
    /// The `payment-identifier` extension.
    pub identifier: IdentifierConf,
    /// `batch-settlement` channels: whose keys sign claims and refunds.
    pub channels: &'a channel::claimer::ChannelsConf,
}

/// How the gate honours `payment-identifier`.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentifierConf {
    /// How long an identifier is remembered (`None`: the extension is off).
    pub window: Option<Duration>,
    /// Payments without one are refused.
    pub required: bool,
}

/// The rule a priced request matched, as the gate needs it.
#[derive(Debug, Clone, Copy)]
pub struct RuleRef<'a> {
    pub id: &'a str,
    pub policy: RulePolicy,
}

/// Who is paying, as the gate needs it: the client's address (for the per-client limits)
/// and the request's correlation (sent to facilitators, written to the ledger).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub ip: Option<std::net::IpAddr>,
    /// The audience the request was classified into (`""` when its rule does not classify).
    pub audience: &'static str,
    pub correlation: &'a crate::correlation::Correlation,
    /// The request method (what a `payment-identifier` is bound to, with the URL).
    pub method: &'a str,
}

/// Bounds on what a client may send and try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payment header accepted.
    pub max_header_bytes: usize,
    /// Refused payments per client address allowed per failure window (0: no limit).
    pub failed_per_client: u32,
    /// Refused payments per payer allowed per failure window (0: no limit).
    pub failed_per_payer: u32,
}

/// Why a request is not (yet) paid. Each variant has one stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("payment required")]
    MissingPayment,
    #[error("more than one payment header")]
    MultipleHeaders,
    #[error(transparent)]
    Decode(DecodeError),
    #[error("x402Version does not match the header it came in")]
    VersionMismatch,
    #[error("malformed payment payload: {0}")]
    Payload(String),
    #[error("scheme not offered here")]
    UnsupportedScheme,
    #[error("network not offered here")]
    InvalidNetwork,
    #[error("payment does not match the requirements offered")]
    NoMatch,
    #[error(transparent)]
    Scheme(#[from] SchemeError),
    #[error("this payment is already being processed")]
    InFlight,
    #[error("this payment was already used")]
    AlreadyUsed,
    #[error("facilitator rejected the payment: {0}")]
    Invalid(String),
    #[error("no facilitator serves this network")]
    NoFacilitator,
    #[error("facilitator unavailable")]
    FacilitatorUnavailable,
    #[error("the facilitator declined to answer now; try again")]
    FacilitatorBusy,
    #[error("no facilitator here takes payments of this x402 version")]
    UnsupportedVersion,
    #[error("too many payment attempts; try again later")]
    RateLimited,
    #[error("settlement failed: {0}")]
    SettleFailed(String),
    #[error("settlement outcome unknown")]
    SettleUnconfirmed,
    #[error("payments cannot be checked right now")]
    StateUnavailable,
    #[error("the payment-identifier must be 16-128 letters, digits, '-' or '_'")]
    BadIdentifier,
    #[error("this gateway requires a payment-identifier with each payment")]
    IdentifierRequired,
    #[error("this payment-identifier already names another payment or request")]
    IdentifierConflict,
    #[error("the payment named by this payment-identifier is still being processed")]
    IdentifierInFlight,
    #[error(
        "the payment named by this payment-identifier settled; a request with side effects is not answered twice"
    )]
    IdentifierSettled,
}

impl PaymentError {
    /// Stable reason code (metric label, log field, and the `error` of 402s except
    /// facilitator reasons, which are passed through).
    pub fn reason(&self) -> &'static str {
        match self {
            PaymentError::MissingPayment => "payment_required",
            PaymentError::MultipleHeaders => "multiple_payment_headers",
            PaymentError::Decode(d) => d.reason(),
            PaymentError::VersionMismatch => "invalid_x402_version",
            PaymentError::Payload(_) => "invalid_payload",
            PaymentError::UnsupportedScheme => "unsupported_scheme",
            PaymentError::InvalidNetwork => "invalid_network",
            PaymentError::NoMatch => "no_matching_requirements",
            PaymentError::Scheme(e) => e.reason(),
            PaymentError::InFlight => "payment_in_flight",
            PaymentError::AlreadyUsed => "payment_already_used",
            PaymentError::Invalid(_) => "facilitator_rejected",
            PaymentError::NoFacilitator => "no_facilitator",
            PaymentError::FacilitatorUnavailable => "facilitator_unavailable",
            PaymentError::FacilitatorBusy => "facilitator_busy",
            PaymentError::UnsupportedVersion => "unsupported_version",
            PaymentError::RateLimited => "too_many_payment_attempts",
            PaymentError::SettleFailed(_) => "settlement_failed",
            PaymentError::SettleUnconfirmed => "settlement_unconfirmed",
            PaymentError::StateUnavailable => "state_unavailable",
            PaymentError::BadIdentifier => "invalid_payment_identifier",
            PaymentError::IdentifierRequired => "payment_identifier_required",
            PaymentError::IdentifierConflict => "payment_identifier_conflict",
            PaymentError::IdentifierInFlight => "payment_identifier_in_progress",
            PaymentError::IdentifierSettled => "payment_identifier_settled",
        }
    }

    /// The `error` text of the 402: the facilitator's own reason where there is one.
    pub fn error_text(&self) -> &str {
        match self {
            PaymentError::Invalid(r) | PaymentError::SettleFailed(r) => r,
            other => other.reason(),
        }
    }
}

/// A refused payment, with what the answer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub error: PaymentError,
    /// Protocol version to answer in (2 when the client sent nothing usable).
    pub version: u8,
    pub payer: Option<String>,
    /// A failed settlement's receipt, sent back in the receipt header.
    pub receipt: Option<SettleResponse>,
    /// The 402 to answer instead of the rule's own: a channel's corrective requirements
    /// (its state and latest voucher, which the client resynchronizes from).
    pub corrective: Option<Box<crate::x402::challenge::Priced>>,
}

impl From<PaymentError> for Rejection {
    fn from(error: PaymentError) -> Self {
        Rejection {
            error,
            version: 2,
            payer: None,
            receipt: None,
            corrective: None,
        }
    }
}

/// Where an accepted payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Verified,
    Settled,
    /// Settlement refused by the facilitator: provably not settled.
    SettleFailed,
    /// Settlement outcome not known.
    Unknown,
    /// The facilitator reported a settlement the chain does not confirm.
    Unconfirmed,
    /// The authorization was used by a transaction this request did not cause.
    NotOurs,
    /// The authorization was used, by a transaction nobody named: not provably this request's.
    Unattributed,
}

/// A payment that passed verification, carried through the request.
#[derive(Debug)]
pub struct Accepted {
    pub version: u8,
    pub rule_id: String,
    /// The audience the request was classified into (`""` when the rule has none): a
    /// metrics label.
    pub audience: &'static str,
    /// The request's id and trace context: sent to facilitators, written to the ledger.
    pub correlation: crate::correlation::Correlation,
    pub resource: String,
    /// The rule's offer it pays, shared with the configuration.
    pub offer: Arc<Offer>,
    pub payer: String,
    pub key: ReplayKey,
    /// Lower-case `0x…` EIP-3009 nonce.
    pub nonce: String,
    /// Unix seconds after which the authorization can no longer settle.
    pub valid_before: u64,
    pub settlement: Settlement,
    pub failure_policy: FailurePolicy,
    /// Body sent to `/verify` and `/settle`.
    pub facilitator_body: Vec<u8>,
    /// SHA-256 of that body: its name in the verify cache.
    pub digest: [u8; 32],
    pub facilitator: Option<String>,
    pub stage: Stage,
    pub receipt: Option<SettleResponse>,
    /// The transaction a facilitator named for this settlement, if any.
    pub claimed_tx: Option<B256>,
    pub started: Instant,
    pub facilitator_time: Duration,
    /// A `delivery_failed` line was written for this payment.
    pub delivery_recorded: bool,
    /// The replay reservation (a channel payment: its turn on the channel) was given back,
    /// the payment not having settled; never twice, as a copy of the payment (another
    /// request on the channel) may have taken it since.
    pub released: bool,
    /// The `payment-identifier` this payment claimed.
    pub identifier: Option<identifier::Named>,
    /// How long the payer may sign in to read the resource again (the rule's window).
    pub sign_in: Option<Duration>,
    /// What a metered (`upto`) payment charges, once the origin answered (at most the
    /// ceiling); `None`: the offered amount.
    pub charged: Option<u128>,
    /// What sets the charge of a metered payment.
    pub meter: Meter,
    /// The origin's status of a body-metered response, once its head was passed on (cleared
    /// by [`Accepted::undelivered`]).
    pub delivered_status: Option<u16>,
    /// A channel payment (`batch-settlement`): its turn on the channel.
    pub channel: Option<Box<channel::Ticket>>,
}

/// Who pays and which authorization: what a scheme's check establishes about a payment.
#[derive(Debug)]
pub struct Paying {
    pub payer: String,
    pub key: ReplayKey,
    /// Lower-case `0x…` nonce (a channel's id for channel payments).
    pub nonce: String,
    /// Unix seconds after which the authorization can no longer settle.
    pub valid_before: u64,
}

impl Accepted {
    /// A payment just verified for `rule`, with the rule's policies, before any facilitator
    /// was asked to settle it (no facilitator body: set it when there is one).
    pub fn verified(
        version: u8,
        rule: &RuleRef<'_>,
        caller: &Caller<'_>,
        resource: String,
        offer: Arc<Offer>,
        paying: Paying,
        started: Instant,
    ) -> Accepted {
        Accepted {
            version,
            rule_id: rule.id.to_owned(),
            audience: caller.audience,
            correlation: caller.correlation.clone(),
            resource,
            offer,
            payer: paying.payer,
            key: paying.key,
            nonce: paying.nonce,
            valid_before: paying.valid_before,
            settlement: rule.policy.settlement,
            failure_policy: rule.policy.failure_policy,
            digest: [0; 32],
            facilitator_body: Vec::new(),
            facilitator: None,
            stage: Stage::Verified,
            receipt: None,
            claimed_tx: None,
            released: false,
            started,
            facilitator_time: Duration::ZERO,
            delivery_recorded: false,
            identifier: None,
            sign_in: rule.policy.sign_in,
            charged: None,
            meter: rule.policy.meter,
            delivered_status: None,
            channel: None,
        }
    }

    /// The amount this payment moves: the metered charge, else the offered amount.
    pub fn amount(&self) -> String {
        match self.charged {
            Some(c) => c.to_string(),
            None => self.offer.requirements.amount.clone(),
        }
    }

    /// Whether the charge is metered (the scheme settles what the response cost, `upto`):
    /// known only once the origin answered.
    pub fn metered(&self) -> bool {
        crate::schemes::by_id(&self.offer.requirements.scheme)
            .is_some_and(|s| s.settle_plan() == crate::schemes::SettlePlan::VerifyThenSettleMetered)
    }

    /// Proxying failed before the response head reached the client: a body-metered answer
    /// delivered nothing, so nothing is charged for it and the payment can be given back.
    pub fn undelivered(&mut self) {
        self.delivered_status = None;
    }

    /// Whether a metered payment settles when the body ended (bytes, seconds).
    pub fn settles_at_body_end(&self) -> bool {
        self.metered() && self.meter.at_body_end()
    }

    /// When a body-metered response must stop so that what it delivered can still be settled:
    /// [`METERED_STOP_SECS`] before the payer's permit ends. `None` for any other payment.
    pub fn delivery_deadline(&self) -> Option<Instant> {
        if !self.settles_at_body_end() {
            return None;
        }
        let left = self
            .valid_before
            .saturating_sub(unix_now())
            .saturating_sub(METERED_STOP_SECS);
        let now = Instant::now();
        // A window no `Instant` can hold stops at once rather than never.
        Some(now.checked_add(Duration::from_secs(left)).unwrap_or(now))
    }

    /// Sets a body-time metered charge: `bytes` of body in `elapsed`, capped at the ceiling.
    pub fn meter_body(&mut self, bytes: u64, elapsed: Duration) -> u128 {
        let ceiling: u128 = self.offer.requirements.amount.parse().unwrap_or(0);
        let charge = self.meter.charge(bytes, elapsed).min(ceiling);
        self.charged = Some(charge);
        charge
    }

    /// Sets a metered payment's charge from the origin's `Settlement-Overrides` header
    /// (`{"amount": "1234"}`, `"50%"` of the ceiling, or `"$0.002"`), capped at the ceiling;
    /// a missing or unreadable header charges the ceiling. Returns the charge.
    pub fn meter_from_origin(&mut self, header: Option<&str>) -> u128 {
        let ceiling: u128 = self.offer.requirements.amount.parse().unwrap_or(0);
        let stated = header.and_then(|h| {
            let v: serde_json::Value = serde_json::from_str(h).ok()?;
            let raw = v.get("amount")?.as_str()?.trim().to_owned();
            metered_amount(&raw, ceiling, self.offer.asset.decimals)
        });
        let charge = stated.map_or(ceiling, |c| c.min(ceiling));
        self.charged = Some(charge);
        charge
    }

    /// The transfer this payment makes, as the chain should show it.
    pub fn expected_transfer(&self) -> Option<ExpectedTransfer> {
        let (token, payer, nonce) = self.chain_ids()?;
        let r = &self.offer.requirements;
        Some(ExpectedTransfer {
            token,
            payer,
            pay_to: r.pay_to.parse().ok()?,
            value: self.amount().parse().ok()?,
            nonce,
        })
    }

    /// Token, payer and nonce as chain types.
    pub fn chain_ids(
        &self,
    ) -> Option<(
        alloy::primitives::Address,
        alloy::primitives::Address,
        alloy::primitives::B256,
    )> {
        Some((
            self.offer.requirements.asset.parse().ok()?,
            self.payer.parse().ok()?,
            self.nonce.parse().ok()?,
        ))
    }
}

/// Seconds before a payer's permit ends that a body-metered response stops: the facilitator's
/// own margin for getting a settlement mined ([`crate::schemes::evm_exact::VALID_BEFORE_BUFFER_SECS`])
/// and time to reach it. A permit that ends sooner cannot settle what was delivered.
pub const METERED_STOP_SECS: u64 = crate::schemes::evm_exact::VALID_BEFORE_BUFFER_SECS + 4;
/// The least delivery time a body-metered payment must leave before [`METERED_STOP_SECS`]: a
/// permit ending sooner than both together is refused as expiring too soon.
pub const METERED_MIN_DELIVERY_SECS: u64 = 5;
/// The least `max_timeout_seconds` of a body-metered rule: what the gate asks of a permit, plus
/// room for a client clock behind the gateway's and the time a payment takes to arrive (the
/// reference clients sign permits ending `max_timeout_seconds` from their own clock).
pub const METERED_MIN_TIMEOUT_SECS: u64 = METERED_STOP_SECS + METERED_MIN_DELIVERY_SECS + 10;

/// Headers that tell the origin who paid ([`Payments::upstream_headers`]). Clients cannot set
/// them: the proxy removes client copies.
pub const PAYER_HEADERS: [&str; 6] = [
    "x-payment-payer",
    "x-payment-amount",
    "x-payment-asset",
    "x-payment-network",
    "x-payment-rule",
    "x-payment-transaction",
];

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the gate decided for a priced request.
#[derive(Debug)]
pub enum Admission {
    /// Verified (and, in `before` mode, settled): forward.
    Paid(Box<Accepted>),
    /// No facilitator could check the payment and the rule fails open: forward unpaid.
    Unpaid(&'static str),
    /// A retry of a payment that already settled (same `payment-identifier`, payment and
    /// request): forward again, uncharged, with the original receipt header.
    Replayed(Vec<(&'static str, String)>),
    /// A channel's cooperative refund landed: answered by the gateway, never forwarded.
    Refunded(Box<Refunded>),
}

/// A landed refund, as its answer needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refunded {
    pub channel_id: String,
    /// The refund's receipt header.
    pub receipt: Vec<(&'static str, String)>,
}

/// An override amount in atomic units: a plain integer, a percentage of `ceiling` (two
/// decimals at most), or US dollars (`$0.002`) in an asset with `decimals`.
pub fn metered_amount(raw: &str, ceiling: u128, decimals: u32) -> Option<u128> {
    // e.g. "12345", "50%", "12.5%", "$0.002"
    if let Some(pct) = raw.strip_suffix('%') {
        let d: rust_decimal::Decimal = pct.parse().ok()?;
        if d.is_sign_negative() || d.scale() > 2 {
            return None;
        }
        let hundredths = rust_decimal::prelude::ToPrimitive::to_u128(
            &d.checked_mul(rust_decimal::Decimal::from(100))?,
        )?;
        return ceiling.checked_mul(hundredths).map(|v| v / 10_000);
    }
    if let Some(usd) = raw.strip_prefix('$') {
        let d: rust_decimal::Decimal = usd.parse().ok()?;
        let atomic = d.checked_mul(rust_decimal::Decimal::from(10u64.checked_pow(decimals)?))?;
        if d.is_sign_negative() || !atomic.fract().is_zero() {
            return None;
        }
        return rust_decimal::prelude::ToPrimitive::to_u128(&atomic);
    }
    if raw.is_empty() || raw.len() > 39 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// The payment engine shared by every request.
pub struct Payments {
    /// The facilitators (their pool, `/supported` lists, settlers) for the services that
    /// watch them.
    pub facilitators: Arc<Facilitators>,
    /// The facilitator calls the engine makes (the same facilitators, behind a trait).
    calls: Arc<dyn Facilitate>,
    /// Payment reservations, the verify cache and pending settlements.
    state: Arc<dyn StateStore>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// Payments facilitators refused, per client address and per payer.
    failures_client: FailureWindow,
    failures_payer: FailureWindow,
    /// This replica's name in the ledger.
    replica: String,
    /// This process's name on leases of settlements in flight (unique per start).
    instance: String,
    /// Leases this process holds on settlements in flight.
    leases: Arc<settle::Leases>,
    /// The channel claimer on this replica: whether it leads, and its last pass.
    claimer_view: channel::claimer::ClaimerView,
    /// The channel records the claimer decoded on its last pass, at their versions.
    claimer_records: channel::claimer::ClaimerRecords,
    /// Channels this replica wrote last, as it wrote them (version, record): the next request
    /// on one tries its compare-and-swap without reading the store first.
    channel_cache: channel::ChannelCache,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments").finish_non_exhaustive()
    }
}

impl Payments {
    pub fn new(metrics: Arc<Metrics>, settlers: Arc<Settlers>, state: Arc<dyn StateStore>) -> Self {
        let facilitators = Arc::new(Facilitators::new(metrics.clone(), settlers));
        Self::with_calls(metrics, facilitators.clone(), facilitators, state)
    }

    /// An engine whose facilitator calls go to `calls` (tests use a scripted one).
    pub fn with_calls(
        metrics: Arc<Metrics>,
        facilitators: Arc<Facilitators>,
        calls: Arc<dyn Facilitate>,
        state: Arc<dyn StateStore>,
    ) -> Self {
        Payments {
            facilitators,
            calls,
            state,
            ledger: Arc::new(Ledger::new(metrics.ledger_errors.clone())),
            metrics,
            failures_client: FailureWindow::default(),
            failures_payer: FailureWindow::default(),
            replica: String::new(),
            instance: instance_id(),
            leases: Arc::default(),
            claimer_view: channel::claimer::ClaimerView::default(),
            claimer_records: channel::claimer::ClaimerRecords::default(),
            channel_cache: channel::ChannelCache::default(),
        }
    }

    /// Names this replica in ledger lines (`[state] replica_id`).
    pub fn with_replica(mut self, replica: &str) -> Self {
        self.replica = replica.to_owned();
        self
    }

    /// Releases a reservation: the payment provably did not settle. A store that cannot be
    /// told keeps it until it expires (the client may then not reuse it sooner). `verified`:
    /// a facilitator verified it (the digest of its request body), which the verify cache
    /// then remembers for the next attempt.
    async fn release(&self, key: &ReplayKey, verified: Option<[u8; 32]>) {
        self.leases.remove(key.as_str());
        let released = match verified {
            Some(digest) => self.state.release_verified(key.as_str(), digest).await,
            None => self.state.release(key.as_str()).await,
        };
        if let Err(e) = released {
            tracing::error!(error = %e, "cannot release a payment reservation");
        }
    }

    /// The state store (health in `/readyz`).
    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.state
    }

    /// The receipts ledger (health in `/readyz`, sync at shutdown).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn reject(&self, r: Rejection) -> Rejection {
        if r.error != PaymentError::MissingPayment {
            self.metrics
                .payments
                .with_label_values(&["rejected", r.error.reason()])
                .inc();
        }
        r
    }

    /// Whether a failure to reach any facilitator lets the request through unpaid.
    fn fails_open(&self, policy: RulePolicy, e: &PaymentError) -> bool {
        policy.failure_policy == FailurePolicy::Open
            && matches!(
                e,
                PaymentError::FacilitatorUnavailable | PaymentError::NoFacilitator
            )
    }

    fn served_unpaid(&self, rule: &str, reason: &'static str) -> Admission {
        self.metrics
            .payments
            .with_label_values(&["served_unpaid", reason])
            .inc();
        tracing::warn!(
            rule,
            reason,
            "no facilitator available: serving unpaid (failure policy open)"
        );
        Admission::Unpaid(reason)
    }
    /// Headers telling the origin who paid (`enabled`: `[payment] forward_payer_headers`).
    /// Client copies are removed first.
    pub fn upstream_headers(&self, enabled: bool, a: &Accepted) -> Vec<(&'static str, String)> {
        if !enabled {
            return Vec::new();
        }
        let r = &a.offer.requirements;
        let mut out = vec![
            ("x-payment-payer", a.payer.clone()),
            ("x-payment-amount", r.amount.clone()),
            ("x-payment-asset", r.asset.clone()),
            ("x-payment-network", r.network.clone()),
            ("x-payment-rule", a.rule_id.clone()),
        ];
        if let Some(tx) = a
            .receipt
            .as_ref()
            .map(|r| r.transaction.clone())
            .filter(|t| !t.is_empty())
        {
            out.push(("x-payment-transaction", tx));
        }
        out
    }
}

#[cfg(test)]
mod tests;

/// A name for this process that no other process shares: process id and a random part.
fn instance_id() -> String {
    let mut random = [0u8; 8];
    if getrandom::fill(&mut random).is_err() {
        // No randomness: the start time still tells two starts of one process id apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        random = (nanos as u64).to_le_bytes();
    }
    format!("{}-{}", std::process::id(), hex::encode(random))
}
