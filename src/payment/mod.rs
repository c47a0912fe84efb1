//! The payment gate: decode → match → local checks → replay guard → verify (cached) →
//! settlement policy, and receipts. Works on plain HTTP header maps; never touches a socket
//! except through the facilitator client.

pub mod confirm;
pub mod decode;
pub mod ledger;
pub mod pass;
pub mod policy;
pub mod replay;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use alloy::primitives::B256;

use crate::facilitator::FacilitatorError;
use crate::facilitator::client::FacilitatorRequest;
use crate::facilitator::dispatch::Facilitators;
use crate::facilitator::local::Settlers;
use crate::facilitator::rpc::{ChainReader, ExpectedTransfer};
use crate::metrics::Metrics;
use crate::schemes::{self, SchemeError};
use crate::snapshot::{Confirm, FacilitatorConf, FacilitatorKind, Rule, Snapshot};
use crate::x402::challenge::{Offer, Priced};
use crate::x402::codec::DecodeError;
use crate::x402::types::{RequirementsV1, SettleResponse};
use confirm::{Lookup, Verdict};
use ledger::{Ledger, LedgerEntry};
pub use policy::{FailurePolicy, Settlement};
use replay::{Refused, ReplayGuard, ReplayKey};

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
}

impl From<PaymentError> for Rejection {
    fn from(error: PaymentError) -> Self {
        Rejection {
            error,
            version: 2,
            payer: None,
            receipt: None,
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
    pub resource: String,
    pub offer: Offer,
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
    pub facilitator: Option<String>,
    pub stage: Stage,
    pub receipt: Option<SettleResponse>,
    /// The transaction a facilitator named for this settlement, if any.
    pub claimed_tx: Option<B256>,
    pub started: Instant,
    pub facilitator_time: Duration,
    /// A `delivery_failed` line was written for this payment.
    pub delivery_recorded: bool,
}

impl Accepted {
    /// The transfer this payment makes, as the chain should show it.
    pub fn expected_transfer(&self) -> Option<ExpectedTransfer> {
        let (token, payer, nonce) = self.chain_ids()?;
        let r = &self.offer.requirements;
        Some(ExpectedTransfer {
            token,
            payer,
            pay_to: r.pay_to.parse().ok()?,
            value: r.amount.parse().ok()?,
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

/// The checks the gate makes before any facilitator call (decode, match, exact-scheme checks
/// with signature recovery), without reserving, verifying or settling anything: what shadow
/// mode uses to say whether a payment would have been accepted. Returns the payer.
pub fn check_locally(
    snap: &Snapshot,
    priced: &Priced,
    headers: &HeaderMap,
) -> Result<String, PaymentError> {
    let found = decode::find(headers)?.ok_or(PaymentError::MissingPayment)?;
    let decoded = decode::decode(found, priced, snap.payment.max_header_bytes)?;
    let offer = priced
        .offers
        .get(decoded.offer)
        .ok_or(PaymentError::NoMatch)?;
    let scheme =
        schemes::by_id(&offer.requirements.scheme).ok_or(PaymentError::UnsupportedScheme)?;
    let checked = scheme.check(&decoded.payload, offer, unix_now())?;
    Ok(checked.payer)
}

/// What the gate decided for a priced request.
#[derive(Debug)]
pub enum Admission {
    /// Verified (and, in `before` mode, settled): forward.
    Paid(Box<Accepted>),
    /// No facilitator could check the payment and the rule fails open: forward unpaid.
    Unpaid(&'static str),
}

/// How long to read the chain for a settlement whose outcome the facilitator left unknown
/// before answering the client; a background watch goes on until the authorization expires.
pub const RESOLVE_WINDOW: Duration = Duration::from_secs(3);
const RESOLVE_POLL: Duration = Duration::from_millis(200);

/// The payment engine shared by every request.
pub struct Payments {
    pub facilitators: Arc<Facilitators>,
    replay: Arc<ReplayGuard>,
    verified: moka::sync::Cache<[u8; 32], ()>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// Payments facilitators refused, per client address and per payer.
    failures_client: FailureWindow,
    failures_payer: FailureWindow,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments").finish_non_exhaustive()
    }
}

impl Payments {
    pub fn new(metrics: Arc<Metrics>, settlers: Arc<Settlers>) -> Self {
        Payments {
            facilitators: Arc::new(Facilitators::new(metrics.clone(), settlers)),
            replay: Arc::new(ReplayGuard::default()),
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(120))
                .build(),
            ledger: Arc::new(Ledger::new(metrics.ledger_errors.clone())),
            metrics,
            failures_client: FailureWindow::default(),
            failures_payer: FailureWindow::default(),
        }
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
    fn fails_open(&self, rule: &Rule, e: &PaymentError) -> bool {
        rule.failure_policy == FailurePolicy::Open
            && matches!(
                e,
                PaymentError::FacilitatorUnavailable | PaymentError::NoFacilitator
            )
    }

    fn served_unpaid(&self, rule: &Rule, reason: &'static str) -> Admission {
        self.metrics
            .payments
            .with_label_values(&["served_unpaid", reason])
            .inc();
        tracing::warn!(rule = %rule.id, reason, "no facilitator available: serving unpaid (failure policy open)");
        Admission::Unpaid(reason)
    }

    /// Checks the payment on a priced request. `Ok` means forward; `Err` is the answer.
    pub async fn gate(
        &self,
        snap: &Snapshot,
        rule: &Rule,
        priced: &Priced,
        headers: &HeaderMap,
        url: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<Admission, Rejection> {
        let started = Instant::now();
        let found = match decode::find(headers) {
            Ok(Some(f)) => f,
            Ok(None) => return Err(PaymentError::MissingPayment.into()),
            Err(e) => return Err(self.reject(e.into())),
        };
        let version = found.version;
        if let Some(ip) = client
            && self
                .failures_client
                .exceeded(&ip, snap.payment.failed_payments_per_client)
        {
            return Err(self.reject(Rejection {
                version,
                ..PaymentError::RateLimited.into()
            }));
        }
        let fail = |error: PaymentError, payer: Option<String>| Rejection {
            error,
            version,
            payer,
            receipt: None,
        };
        let decoded = decode::decode(found, priced, snap.payment.max_header_bytes)
            .map_err(|e| self.reject(fail(e, None)))?;
        let offer = &priced.offers[decoded.offer];
        let req = &offer.requirements;
        let scheme = schemes::by_id(&req.scheme)
            .ok_or_else(|| self.reject(fail(PaymentError::UnsupportedScheme, None)))?;
        let checked = scheme
            .check(&decoded.payload, offer, unix_now())
            .map_err(|e| self.reject(fail(PaymentError::Scheme(e), None)))?;
        let payer = checked.payer.clone();
        let payer_key = payer.to_ascii_lowercase();
        if self
            .failures_payer
            .exceeded(&payer_key, snap.payment.failed_payments_per_payer)
        {
            return Err(self.reject(fail(PaymentError::RateLimited, Some(payer))));
        }
        let key = ReplayKey::new(&req.network, &req.asset, &payer, &checked.nonce);
        self.replay
            .reserve(&key, checked.valid_before)
            .map_err(|r| {
                let e = match r {
                    Refused::InFlight => PaymentError::InFlight,
                    Refused::AlreadyUsed => PaymentError::AlreadyUsed,
                };
                self.reject(fail(e, Some(payer.clone())))
            })?;
        // What facilitators and the ledger see: no query string unless the rule keeps it.
        let recorded = if rule.resource_query {
            url
        } else {
            url.split('?').next().unwrap_or(url)
        };
        let body = match facilitator_body(version, &decoded.raw, offer, priced, recorded) {
            Ok(b) => b,
            Err(e) => {
                self.replay.release(&key);
                return Err(self.reject(fail(e, Some(payer))));
            }
        };
        let mut accepted = Box::new(Accepted {
            version,
            rule_id: rule.id.clone(),
            resource: recorded.to_owned(),
            offer: offer.clone(),
            payer,
            key,
            nonce: checked.nonce.clone(),
            valid_before: checked.valid_before,
            settlement: rule.settlement,
            failure_policy: rule.failure_policy,
            facilitator_body: body,
            facilitator: None,
            stage: Stage::Verified,
            receipt: None,
            claimed_tx: None,
            started,
            facilitator_time: Duration::ZERO,
            delivery_recorded: false,
        });
        if let Err(e) = self.verify(snap, &mut accepted).await {
            self.replay.release(&accepted.key);
            if matches!(e, PaymentError::Invalid(_)) {
                // A facilitator call spent on a payment that does not pay.
                if let Some(ip) = client {
                    self.failures_client.count(&ip);
                }
                self.failures_payer.count(&payer_key);
            }
            if self.fails_open(rule, &e) {
                return Ok(self.served_unpaid(rule, e.reason()));
            }
            return Err(self.reject(fail(e, Some(accepted.payer.clone()))));
        }
        if accepted.settlement == Settlement::Before {
            self.settle(snap, &mut accepted, None).await;
            if accepted.stage != Stage::Settled {
                let error = self.settle_error(&accepted);
                self.release_unless_unknown(&accepted);
                if accepted.stage == Stage::SettleFailed && self.fails_open(rule, &error) {
                    return Ok(self.served_unpaid(rule, error.reason()));
                }
                let receipt = accepted.receipt.clone();
                return Err(self.reject(Rejection {
                    error,
                    version,
                    payer: Some(accepted.payer.clone()),
                    receipt,
                }));
            }
        }
        Ok(Admission::Paid(accepted))
    }

    fn candidates<'a>(&self, snap: &'a Snapshot, a: &Accepted) -> Vec<&'a FacilitatorConf> {
        let r = &a.offer.requirements;
        self.facilitators.candidates(
            snap,
            a.version,
            &r.scheme,
            &r.network,
            a.offer.v1_network.as_deref(),
        )
    }

    async fn verify(&self, snap: &Snapshot, a: &mut Accepted) -> Result<(), PaymentError> {
        let digest: [u8; 32] = Sha256::digest(&a.facilitator_body).into();
        if self.verified.get(&digest).is_some() {
            return Ok(());
        }
        let candidates = self.candidates(snap, a);
        if candidates.is_empty() {
            let r = &a.offer.requirements;
            let other_version = self.facilitators.candidates(
                snap,
                if a.version == 1 { 2 } else { 1 },
                &r.scheme,
                &r.network,
                a.offer.v1_network.as_deref(),
            );
            // Facilitators serve this network, just not in this protocol version: the client's
            // choice, not an outage.
            return Err(if other_version.is_empty() {
                PaymentError::NoFacilitator
            } else {
                PaymentError::UnsupportedVersion
            });
        }
        let mut all_declined = true;
        for (n, fac) in candidates.into_iter().enumerate() {
            if n > 0 {
                self.metrics
                    .facilitator_failovers
                    .with_label_values(&["verify"])
                    .inc();
            }
            let t = Instant::now();
            let result = self.facilitators.verify(fac, &a.facilitator_body).await;
            a.facilitator_time += t.elapsed();
            match result {
                Ok(v) if v.valid() => {
                    self.verified.insert(digest, ());
                    a.facilitator = Some(fac.name.clone());
                    return Ok(());
                }
                Ok(v) => {
                    if let Some(p) = v.payer.filter(|p| !p.is_empty()) {
                        a.payer = p;
                    }
                    return Err(PaymentError::Invalid(
                        v.invalid_reason.unwrap_or_else(|| "invalid_payment".into()),
                    ));
                }
                // Verify never moves money: any failure may try the next facilitator.
                Err(e) => {
                    all_declined &= matches!(e, FacilitatorError::Declined { .. });
                    tracing::warn!(facilitator = %fac.name, error = %e, "verify failed");
                }
            }
        }
        Err(if all_declined {
            PaymentError::FacilitatorBusy
        } else {
            PaymentError::FacilitatorUnavailable
        })
    }

    /// Settles through the facilitator that verified, moving on to another only when the call
    /// provably never reached it. A reported success is confirmed on chain (where the network
    /// has an RPC and the facilitator is not trusted as is); an unclear outcome is resolved
    /// from the chain, never by settling again, and counts as settled only when this request's
    /// own transaction made the transfer. Sets `stage` and `receipt` and writes the ledger.
    async fn settle(&self, snap: &Snapshot, a: &mut Accepted, upstream_status: Option<u16>) {
        let mut candidates = self.candidates(snap, a);
        if let Some(name) = &a.facilitator {
            match snap.facilitators.iter().find(|f| &f.name == name) {
                Some(verifier) => {
                    candidates.retain(|f| f.name != verifier.name);
                    candidates.insert(0, verifier);
                }
                None => candidates.sort_by_key(|f| &f.name != name),
            }
        }
        let mut outcome: Option<(&FacilitatorConf, Result<SettleResponse, FacilitatorError>)> =
            None;
        for (n, fac) in candidates.into_iter().enumerate() {
            if n > 0 {
                self.metrics
                    .facilitator_failovers
                    .with_label_values(&["settle"])
                    .inc();
            }
            let t = Instant::now();
            let r = self.facilitators.settle(fac, &a.facilitator_body).await;
            a.facilitator_time += t.elapsed();
            let retry = matches!(&r, Err(e) if e.not_sent());
            outcome = Some((fac, r));
            if !retry {
                break;
            }
        }
        let network = a.offer.requirements.network.clone();
        let Some((fac, result)) = outcome else {
            a.facilitator = Some(String::new());
            let receipt = failed_receipt(&a.payer, &network, "facilitator_unavailable");
            self.finish_settlement(
                snap,
                a,
                Stage::SettleFailed,
                receipt,
                Some("facilitator_unavailable".into()),
                upstream_status,
            );
            return;
        };
        a.facilitator = Some(fac.name.clone());
        let claim = Claim::of(result);
        a.claimed_tx = claim.transaction();
        let (stage, receipt, reason) = match claim {
            Claim::Refused(s, reason) => match self.refusal_on_chain(snap, a).await {
                // The chain shows the authorization used after all, by the transaction the
                // facilitator named: a confused facilitator, but a settled payment.
                Some(Verdict::Ours(tx)) => (Stage::Settled, settled_receipt(a, &network, tx), None),
                // Used by a transaction this request did not cause: not its payment.
                Some(_) => (Stage::NotOurs, s, Some(reason)),
                None if NONCE_USED_REASONS.contains(&reason.as_str()) => {
                    (Stage::NotOurs, s, Some(reason))
                }
                None => (Stage::SettleFailed, s, Some(reason)),
            },
            Claim::Unsent => (
                Stage::SettleFailed,
                failed_receipt(&a.payer, &network, "facilitator_unavailable"),
                Some("facilitator_unavailable".into()),
            ),
            Claim::Busy => (
                Stage::SettleFailed,
                failed_receipt(&a.payer, &network, "facilitator_busy"),
                Some("facilitator_busy".into()),
            ),
            Claim::Duplicate(s) => (
                // Another call is settling this very authorization: not this request's.
                Stage::NotOurs,
                SettleResponse {
                    success: false.into(),
                    ..s
                },
                Some("duplicate_settlement".into()),
            ),
            Claim::Success(s) => self.confirm_success(snap, a, fac, s).await,
            Claim::Unclear(tx) => {
                let tx_text = tx.map(|t| format!("{t:#x}")).unwrap_or_default();
                tracing::warn!(facilitator = %fac.name, transaction = %tx_text, "settlement outcome unknown");
                let verdict = match self.lookup(snap, a) {
                    Some((reader, expected)) => {
                        Lookup {
                            reader: &reader,
                            expected,
                            claimed: tx,
                        }
                        .within(RESOLVE_WINDOW, RESOLVE_POLL)
                        .await
                    }
                    None => Verdict::Unknown,
                };
                self.count_resolution(&verdict);
                let unresolved = |why: &str, tx: String| SettleResponse {
                    transaction: tx,
                    ..failed_receipt(&a.payer, &network, why)
                };
                match verdict {
                    Verdict::Ours(tx) => (Stage::Settled, settled_receipt(a, &network, tx), None),
                    Verdict::NotOurs => (
                        Stage::NotOurs,
                        failed_receipt(&a.payer, &network, "payment_already_used"),
                        Some("payment_already_used".into()),
                    ),
                    Verdict::Failed | Verdict::Mismatch => (
                        Stage::SettleFailed,
                        unresolved("settlement_failed", tx_text),
                        Some("settlement_failed".into()),
                    ),
                    // Used by a transaction nobody named: perhaps this request's, perhaps
                    // another replica's through the same facilitator. Not served; the ledger
                    // keeps the transaction for reconciliation.
                    Verdict::Unattributed(found) => (
                        Stage::Unattributed,
                        unresolved("settlement_unconfirmed", found),
                        Some("settlement_unconfirmed: unattributed".into()),
                    ),
                    Verdict::Unknown => (
                        Stage::Unknown,
                        unresolved("settlement_unconfirmed", tx_text),
                        Some("settlement_unconfirmed".into()),
                    ),
                }
            }
        };
        self.finish_settlement(snap, a, stage, receipt, reason, upstream_status);
    }

    /// A facilitator's `success: true`: believed as given for the built-in settler (which
    /// checks its own receipts), for `confirm = "trust"` and on networks without RPC; otherwise
    /// the named transaction's receipt must show this transfer.
    async fn confirm_success(
        &self,
        snap: &Snapshot,
        a: &Accepted,
        fac: &FacilitatorConf,
        s: SettleResponse,
    ) -> (Stage, SettleResponse, Option<String>) {
        let trusted =
            fac.confirm == Confirm::Trust || matches!(fac.kind, FacilitatorKind::Local { .. });
        if trusted {
            return (Stage::Settled, s, None);
        }
        let claimed: Option<B256> = s.transaction.parse().ok();
        let Some((reader, expected)) = self.lookup(snap, a) else {
            return (Stage::Settled, s, None);
        };
        let verdict = match claimed {
            Some(_) => {
                Lookup {
                    reader: &reader,
                    expected,
                    claimed,
                }
                .within(fac.confirm_timeout, RESOLVE_POLL)
                .await
            }
            // Not even a transaction hash.
            None => Verdict::Mismatch,
        };
        let why = match verdict {
            Verdict::Ours(_) => return (Stage::Settled, s, None),
            Verdict::NotOurs | Verdict::Unattributed(_) => "used_elsewhere",
            Verdict::Mismatch | Verdict::Failed => "receipt_mismatch",
            Verdict::Unknown => "receipt_missing",
        };
        self.metrics
            .settlements_unconfirmed
            .with_label_values(&[fac.name.as_str(), why])
            .inc();
        tracing::error!(
            facilitator = %fac.name,
            transaction = %s.transaction,
            payer = %a.payer,
            rule = %a.rule_id,
            why,
            "a facilitator reported a settlement the chain does not confirm: nothing served"
        );
        let receipt = SettleResponse {
            success: false.into(),
            error_reason: Some("settlement_unconfirmed".into()),
            ..s
        };
        (
            Stage::Unconfirmed,
            receipt,
            Some(format!("settlement_unconfirmed: {why}")),
        )
    }

    /// The chain reader and the expected transfer for a payment, when its network has RPC.
    fn lookup(&self, snap: &Snapshot, a: &Accepted) -> Option<(ChainReader, ExpectedTransfer)> {
        let reader = self
            .facilitators
            .reader(snap, &a.offer.requirements.network)?;
        Some((reader, a.expected_transfer()?))
    }

    /// For a refused settlement: `None` when the chain shows the authorization unused (or
    /// cannot be read), else whose transaction used it.
    async fn refusal_on_chain(&self, snap: &Snapshot, a: &Accepted) -> Option<Verdict> {
        let (reader, expected) = self.lookup(snap, a)?;
        let e = &expected;
        if !matches!(
            reader.authorization_used(e.token, e.payer, e.nonce).await,
            Ok(true)
        ) {
            return None;
        }
        let v = Lookup {
            reader: &reader,
            expected,
            claimed: a.claimed_tx,
        }
        .look()
        .await;
        Some(v)
    }

    fn count_resolution(&self, v: &Verdict) {
        let label = match v {
            Verdict::Ours(_) => "settled",
            Verdict::NotOurs => "used_elsewhere",
            Verdict::Unattributed(_) => "unattributed",
            Verdict::Failed | Verdict::Mismatch => "failed",
            Verdict::Unknown => "pending",
        };
        self.metrics
            .settlements_resolved
            .with_label_values(&[label])
            .inc();
    }

    /// Records a settlement's outcome: stage, receipt, replay state, metrics and the ledger.
    fn finish_settlement(
        &self,
        snap: &Snapshot,
        a: &mut Accepted,
        stage: Stage,
        mut receipt: SettleResponse,
        reason: Option<String>,
        upstream_status: Option<u16>,
    ) {
        a.stage = stage;
        let r = &a.offer.requirements;
        let event = match stage {
            Stage::Settled => {
                self.replay.settled(&a.key);
                self.metrics
                    .payments
                    .with_label_values(&["settled", ""])
                    .inc();
                if let Ok(v) = r.amount.parse::<u64>() {
                    self.metrics
                        .revenue
                        .with_label_values(&[r.network.as_str(), r.asset.as_str()])
                        .inc_by(v);
                }
                "settled"
            }
            Stage::SettleFailed => {
                self.metrics
                    .payments
                    .with_label_values(&["settle_failed", reason.as_deref().unwrap_or("")])
                    .inc();
                "settle_failed"
            }
            Stage::NotOurs => {
                // Used by something else: never reusable here.
                self.replay.settled(&a.key);
                self.metrics
                    .payments
                    .with_label_values(&["used_elsewhere", reason.as_deref().unwrap_or("")])
                    .inc();
                "used_elsewhere"
            }
            Stage::Unattributed => {
                // Used on chain: never reusable, and nothing left to watch.
                self.replay.settled(&a.key);
                self.metrics
                    .payments
                    .with_label_values(&["unattributed", ""])
                    .inc();
                tracing::error!(
                    facilitator = %a.facilitator.as_deref().unwrap_or(""),
                    payer = %a.payer,
                    transaction = %receipt.transaction,
                    rule = %a.rule_id,
                    "an unclear settlement was used on chain by a transaction no facilitator named: nothing served; reconcile from the ledger"
                );
                "settle_unattributed"
            }
            Stage::Unconfirmed => {
                self.replay.unknown(&a.key);
                self.metrics
                    .payments
                    .with_label_values(&["unconfirmed", reason.as_deref().unwrap_or("")])
                    .inc();
                self.watch_pending(snap, a);
                "settle_unconfirmed"
            }
            Stage::Verified | Stage::Unknown => {
                self.replay.unknown(&a.key);
                self.metrics
                    .payments
                    .with_label_values(&["settle_pending", ""])
                    .inc();
                self.watch_pending(snap, a);
                "settle_pending"
            }
        };
        if receipt.payer.is_none() {
            receipt.payer = Some(a.payer.clone());
        }
        if a.version == 1 {
            receipt.network = a.offer.v1_network.clone().unwrap_or_default();
        } else if receipt.network.is_empty() {
            receipt.network = r.network.clone();
        }
        write_ledger(
            &self.ledger,
            snap,
            a,
            event,
            &receipt.transaction.clone(),
            reason.as_deref(),
            upstream_status,
        );
        a.receipt = Some(receipt);
    }

    /// Watches an unresolved settlement until the chain shows whose transaction used the
    /// authorization, or the authorization expires unused, and records the outcome. The
    /// reservation is released only once it provably never settled (expired unused).
    fn watch_pending(&self, snap: &Snapshot, a: &Accepted) {
        let Some(reader) = self
            .facilitators
            .reader(snap, &a.offer.requirements.network)
        else {
            return;
        };
        let Some(expected) = a.expected_transfer() else {
            return;
        };
        let (replay, ledger, metrics) = (
            self.replay.clone(),
            self.ledger.clone(),
            self.metrics.clone(),
        );
        let snap_ledger = snap.ledger.clone();
        let record = PendingRecord::from(a);
        let claimed = a.claimed_tx;
        tokio::spawn(async move {
            let lookup = Lookup {
                reader: &reader,
                expected,
                claimed,
            };
            loop {
                let (label, tx) = match lookup.look().await {
                    Verdict::Ours(tx) => {
                        replay.settled(&record.key);
                        ("settled_late", tx)
                    }
                    Verdict::NotOurs => {
                        replay.settled(&record.key);
                        ("used_elsewhere", String::new())
                    }
                    Verdict::Unattributed(tx) => {
                        replay.settled(&record.key);
                        ("used_unattributed", tx)
                    }
                    _ if unix_now() > record.valid_before + 5 => {
                        let e = &lookup.expected;
                        match reader.authorization_used(e.token, e.payer, e.nonce).await {
                            Ok(false) => {
                                replay.release(&record.key);
                                ("expired_unsettled", String::new())
                            }
                            // Used, by a transaction not in reach or not ours.
                            Ok(true) => {
                                replay.settled(&record.key);
                                ("used_elsewhere", String::new())
                            }
                            Err(_) => {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                continue;
                            }
                        }
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                };
                metrics
                    .settlements_resolved
                    .with_label_values(&[label])
                    .inc();
                record.write(&ledger, &snap_ledger, label, &tx);
                return;
            }
        });
    }

    fn settle_error(&self, a: &Accepted) -> PaymentError {
        match a.stage {
            Stage::Unknown | Stage::Unconfirmed | Stage::Unattributed => {
                PaymentError::SettleUnconfirmed
            }
            Stage::NotOurs => PaymentError::AlreadyUsed,
            _ => {
                let reason = a
                    .receipt
                    .as_ref()
                    .and_then(|r| r.error_reason.clone())
                    .unwrap_or_else(|| "settlement_failed".into());
                match reason.as_str() {
                    "facilitator_unavailable" => PaymentError::FacilitatorUnavailable,
                    "facilitator_busy" => PaymentError::FacilitatorBusy,
                    _ => PaymentError::SettleFailed(reason),
                }
            }
        }
    }

    /// Releases the reservation of a payment that provably did not settle.
    fn release_unless_unknown(&self, a: &Accepted) {
        if matches!(a.stage, Stage::Verified | Stage::SettleFailed) {
            self.replay.release(&a.key);
        }
    }

    /// Headers telling the origin who paid (when configured). Client copies are removed first.
    pub fn upstream_headers(&self, snap: &Snapshot, a: &Accepted) -> Vec<(&'static str, String)> {
        if !snap.payment.forward_payer_headers {
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

    /// Called with the origin's status before any body byte is sent. Settles in `after` mode
    /// when the status is below 400. Returns headers to add, or the reply that replaces the
    /// origin's response.
    pub async fn on_response(
        &self,
        snap: &Snapshot,
        a: &mut Accepted,
        status: u16,
    ) -> Result<Vec<(&'static str, String)>, Rejection> {
        if a.stage == Stage::Verified {
            if status >= 400 {
                // Not served: no settlement; `finish` releases the reservation.
                self.metrics
                    .payments
                    .with_label_values(&["not_settled", "origin_error"])
                    .inc();
                return Ok(Vec::new());
            }
            self.settle(snap, a, Some(status)).await;
            if a.stage != Stage::Settled {
                let error = self.settle_error(a);
                if a.stage == Stage::SettleFailed
                    && a.failure_policy == FailurePolicy::Open
                    && error == PaymentError::FacilitatorUnavailable
                {
                    self.metrics
                        .payments
                        .with_label_values(&["served_unpaid", error.reason()])
                        .inc();
                    tracing::warn!(rule = %a.rule_id, "no facilitator could settle: serving unpaid (failure policy open)");
                    return Ok(Vec::new());
                }
                return Err(Rejection {
                    error,
                    version: a.version,
                    payer: Some(a.payer.clone()),
                    receipt: a.receipt.clone(),
                });
            }
        } else if a.stage == Stage::Settled && status >= 400 {
            self.record_failed_delivery(snap, a, Some(status), ORIGIN_FAILED);
        }
        self.metrics.payment_overhead.observe(
            a.started
                .elapsed()
                .saturating_sub(a.facilitator_time)
                .as_secs_f64(),
        );
        Ok(self.receipt_headers(a))
    }

    /// Receipt headers for a settled payment.
    pub fn receipt_headers(&self, a: &Accepted) -> Vec<(&'static str, String)> {
        match &a.receipt {
            Some(r) if a.stage == Stage::Settled => {
                vec![(
                    crate::x402::receipt_header(a.version == 1),
                    r.header_value(),
                )]
            }
            _ => Vec::new(),
        }
    }

    fn record_failed_delivery(
        &self,
        snap: &Snapshot,
        a: &mut Accepted,
        status: Option<u16>,
        reason: &str,
    ) {
        if a.delivery_recorded {
            return;
        }
        a.delivery_recorded = true;
        self.metrics.failed_deliveries.inc();
        let tx = a
            .receipt
            .as_ref()
            .map(|r| r.transaction.clone())
            .unwrap_or_default();
        write_ledger(
            &self.ledger,
            snap,
            a,
            "delivery_failed",
            &tx,
            Some(reason),
            status,
        );
        tracing::warn!(rule = %a.rule_id, payer = %a.payer, transaction = %tx, reason, "paid request not delivered");
    }

    /// Called when proxying failed after the gate accepted the payment. Returns receipt
    /// headers for the error reply when the payment was already settled.
    pub fn on_failure(
        &self,
        snap: &Snapshot,
        a: &mut Accepted,
        settlement_reply: bool,
    ) -> Vec<(&'static str, String)> {
        if a.stage == Stage::Settled && !settlement_reply {
            self.record_failed_delivery(snap, a, None, ORIGIN_FAILED);
            return self.receipt_headers(a);
        }
        Vec::new()
    }

    /// End of the request: a payment that did not settle releases its reservation so the
    /// client may use it again; a settled one whose response broke off (`interrupted`: why,
    /// e.g. the client went away mid-body) leaves a `delivery_failed` line, once.
    pub fn finish(&self, snap: &Snapshot, a: &mut Accepted, interrupted: Option<&str>) {
        if let Some(why) = interrupted
            && a.stage == Stage::Settled
        {
            self.record_failed_delivery(snap, a, None, why);
        }
        self.release_unless_unknown(a);
    }
}

/// What the background watch of a pending settlement needs to write its outcome.
struct PendingRecord {
    key: ReplayKey,
    valid_before: u64,
    rule: String,
    resource: String,
    payer: String,
    amount: String,
    asset: String,
    network: String,
    facilitator: String,
    settlement: Settlement,
}

impl PendingRecord {
    fn from(a: &Accepted) -> Self {
        let r = &a.offer.requirements;
        PendingRecord {
            key: a.key.clone(),
            valid_before: a.valid_before,
            rule: a.rule_id.clone(),
            resource: a.resource.clone(),
            payer: a.payer.clone(),
            amount: r.amount.clone(),
            asset: r.asset.clone(),
            network: r.network.clone(),
            facilitator: a.facilitator.clone().unwrap_or_default(),
            settlement: a.settlement,
        }
    }

    fn write(&self, ledger: &Ledger, conf: &ledger::LedgerConf, event: &str, tx: &str) {
        let entry = LedgerEntry {
            time: ledger::now_rfc3339(),
            event,
            rule: &self.rule,
            resource: &self.resource,
            payer: &self.payer,
            amount: &self.amount,
            asset: &self.asset,
            network: &self.network,
            transaction: tx,
            facilitator: &self.facilitator,
            settlement: if self.settlement == Settlement::Before {
                "before"
            } else {
                "after"
            },
            reason: None,
            upstream_status: None,
        };
        ledger.record(conf, &entry);
    }
}

fn write_ledger(
    ledger: &Ledger,
    snap: &Snapshot,
    a: &Accepted,
    event: &str,
    tx: &str,
    reason: Option<&str>,
    status: Option<u16>,
) {
    let r = &a.offer.requirements;
    let entry = LedgerEntry {
        time: ledger::now_rfc3339(),
        event,
        rule: &a.rule_id,
        resource: &a.resource,
        payer: &a.payer,
        amount: &r.amount,
        asset: &r.asset,
        network: &r.network,
        transaction: tx,
        facilitator: a.facilitator.as_deref().unwrap_or(""),
        settlement: if a.settlement == Settlement::Before {
            "before"
        } else {
            "after"
        },
        reason,
        upstream_status: status,
    };
    ledger.record(&snap.ledger, &entry);
}

/// The `delivery_failed` reason when the origin failed after the payment settled.
const ORIGIN_FAILED: &str = "origin_failed_after_settlement";
/// The `delivery_failed` reason when the client went away before the response was complete.
pub const CLIENT_GONE: &str = "client_disconnected";

/// Settle refusals that mean the nonce was already used on chain: someone else's payment.
const NONCE_USED_REASONS: [&str; 3] = [
    "invalid_exact_evm_nonce_already_used",
    "invalid_exact_evm_payload_authorization_nonce_used",
    "nonce_already_used",
];

/// What a facilitator's `/settle` answer claims.
enum Claim {
    /// `success: true` with a transaction.
    Success(SettleResponse),
    /// A refusal: provably not settled by this call.
    Refused(SettleResponse, String),
    /// Another call is settling this authorization right now.
    Duplicate(SettleResponse),
    /// Pending, a timeout, a broken answer: perhaps settled (by the named transaction, if any).
    Unclear(Option<B256>),
    /// The call never reached any facilitator.
    Unsent,
    /// The facilitators declined the call (rate limited): not acted on, and not an outage.
    Busy,
}

impl Claim {
    /// The transaction the facilitator named for this settlement.
    fn transaction(&self) -> Option<B256> {
        match self {
            Claim::Success(s) | Claim::Refused(s, _) | Claim::Duplicate(s) => {
                s.transaction.parse().ok()
            }
            Claim::Unclear(tx) => *tx,
            Claim::Unsent | Claim::Busy => None,
        }
    }

    fn of(result: Result<SettleResponse, FacilitatorError>) -> Claim {
        match result {
            Ok(s) if s.succeeded() => Claim::Success(s),
            Ok(s) if s.error_reason.as_deref() == Some("duplicate_settlement") => {
                Claim::Duplicate(s)
            }
            Ok(s) if s.error_reason.as_deref() == Some("settlement_pending") => {
                Claim::Unclear(s.transaction.parse().ok())
            }
            Ok(s) if s.success == serde_json::Value::Bool(false) => {
                let reason = s
                    .error_reason
                    .clone()
                    .unwrap_or_else(|| "settlement_failed".into());
                Claim::Refused(s, reason)
            }
            // A success flag that is not literally `true`, or one without a transaction.
            Ok(s) => Claim::Unclear(s.transaction.parse().ok()),
            // Rate limited: provably not acted on.
            Err(FacilitatorError::Declined { status: 429 }) => Claim::Busy,
            // Any other refusal without a verdict: perhaps acted on; the chain tells.
            Err(FacilitatorError::Declined { .. }) => Claim::Unclear(None),
            Err(e) if e.not_sent() => Claim::Unsent,
            Err(_) => Claim::Unclear(None),
        }
    }
}

/// The receipt of a settlement found on chain.
fn settled_receipt(a: &Accepted, network: &str, tx: String) -> SettleResponse {
    SettleResponse {
        success: true.into(),
        error_reason: None,
        payer: Some(a.payer.clone()),
        transaction: tx,
        network: network.into(),
    }
}

fn failed_receipt(payer: &str, network: &str, reason: &str) -> SettleResponse {
    SettleResponse {
        success: false.into(),
        error_reason: Some(reason.into()),
        payer: Some(payer.into()),
        transaction: String::new(),
        network: network.into(),
    }
}

/// A v2 payload whose `resource.url` carries more than `url` (the query string the gateway
/// keeps from facilitators), rewritten with `url`; `None` when it can go verbatim.
fn v2_payload_without_query(version: u8, raw: &str, url: &str) -> Option<String> {
    if version != 2 || !raw.contains('?') {
        return None;
    }
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw).ok()?;
    let res = v.get_mut("resource")?.as_object_mut()?;
    let current = res.get("url")?.as_str()?;
    if current == url || !current.contains('?') {
        return None;
    }
    res.insert("url".into(), serde_json::Value::String(url.to_owned()));
    serde_json::to_string(&v).ok()
}

/// Refused payments per key over a sliding window of [`FAILURE_WINDOW`], estimated in
/// constant memory (Pingora's count-min rate estimator), so a flood of keys costs nothing.
pub struct FailureWindow(pingora_limits::rate::Rate);

/// How long a refused payment counts against its client and payer.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);

impl Default for FailureWindow {
    fn default() -> Self {
        FailureWindow(pingora_limits::rate::Rate::new(FAILURE_WINDOW))
    }
}

impl FailureWindow {
    pub fn count<K: std::hash::Hash>(&self, key: &K) {
        self.0.observe(key, 1);
    }

    /// Whether `key` has `limit` or more failures in the current or the previous window
    /// (`limit` 0: never).
    pub fn exceeded<K: std::hash::Hash>(&self, key: &K, limit: u32) -> bool {
        if limit == 0 {
            return false;
        }
        let limit = f64::from(limit);
        let current = self.0.observe(key, 0) as f64;
        let previous = self.0.rate(key) * FAILURE_WINDOW.as_secs_f64();
        current >= limit || previous >= limit
    }
}

/// The `/verify` and `/settle` body: the client's payload (verbatim, unless its resource URL
/// carries a query the gateway keeps from facilitators) and the gateway's own
/// requirements (v2 form, or v1 form with resource details).
fn facilitator_body(
    version: u8,
    raw: &str,
    offer: &Offer,
    priced: &Priced,
    url: &str,
) -> Result<Vec<u8>, PaymentError> {
    let payload = match v2_payload_without_query(version, raw, url) {
        Some(p) => RawValue::from_string(p),
        None => RawValue::from_string(raw.to_owned()),
    }
    .map_err(|e| PaymentError::Payload(e.to_string()))?;
    let r = &offer.requirements;
    let reqs = if version == 1 {
        let network = offer
            .v1_network
            .as_deref()
            .ok_or(PaymentError::InvalidNetwork)?;
        serde_json::to_string(&RequirementsV1 {
            scheme: &r.scheme,
            network,
            max_amount_required: &r.amount,
            resource: url,
            description: &priced.description,
            mime_type: &priced.mime_type,
            pay_to: &r.pay_to,
            max_timeout_seconds: r.max_timeout_seconds,
            asset: &r.asset,
            extra: &r.extra,
        })
    } else {
        serde_json::to_string(r)
    }
    .map_err(|e| PaymentError::Payload(e.to_string()))?;
    let reqs = RawValue::from_string(reqs).map_err(|e| PaymentError::Payload(e.to_string()))?;
    serde_json::to_vec(&FacilitatorRequest {
        x402_version: version,
        payment_payload: &payload,
        payment_requirements: &reqs,
    })
    .map_err(|e| PaymentError::Payload(e.to_string()))
}
