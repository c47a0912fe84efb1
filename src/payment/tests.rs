//! The gate and settlement against a scripted facilitator and the in-memory state store: one
//! test per edge case, no socket, no chain (the test network has no RPC, so facilitators'
//! answers are taken as given and nothing is read from a chain).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use async_trait::async_trait;
use base64::Engine;
use http::HeaderMap;
use serde_json::{Value, json};

use super::ledger::LedgerConf;
use super::*;
use crate::facilitator::local::Settlers;
use crate::facilitator::rpc::ChainReader;
use crate::facilitator::{Confirm, FacilitatorError, FacilitatorKind};
use crate::schemes::evm_exact::{domain, tests::sign};
use crate::schemes::{EXACT, Scheme};
use crate::state::{MemoryStore, PendingSettlement, Quota, Refused, StateError};
use crate::x402::challenge::Priced;
use crate::x402::types::VerifyResponse;

const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

/// A facilitator that answers from a script and counts its calls.
#[derive(Default)]
struct Script {
    verify: Mutex<VecDeque<Result<VerifyResponse, FacilitatorError>>>,
    settle: Mutex<VecDeque<Result<SettleResponse, FacilitatorError>>>,
    verifies: AtomicUsize,
    settles: AtomicUsize,
    /// Protocol versions it takes (none: every version).
    versions: Vec<u8>,
}

impl Script {
    fn verifies(self: &Arc<Self>, answers: Vec<Result<VerifyResponse, FacilitatorError>>) {
        self.verify.lock().expect("lock").extend(answers);
    }
    fn settles(self: &Arc<Self>, answers: Vec<Result<SettleResponse, FacilitatorError>>) {
        self.settle.lock().expect("lock").extend(answers);
    }
    fn calls(&self) -> (usize, usize) {
        (
            self.verifies.load(Ordering::SeqCst),
            self.settles.load(Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl Facilitate for Script {
    fn candidates<'a>(
        &self,
        facilitators: &'a [FacilitatorConf],
        version: u8,
        _scheme: &str,
        _network: &str,
        _v1_name: Option<&str>,
    ) -> Vec<&'a FacilitatorConf> {
        if !self.versions.is_empty() && !self.versions.contains(&version) {
            return Vec::new();
        }
        facilitators.iter().collect()
    }

    async fn verify(
        &self,
        _fac: &FacilitatorConf,
        _body: &[u8],
        _correlation: &crate::correlation::Correlation,
    ) -> Result<VerifyResponse, FacilitatorError> {
        self.verifies.fetch_add(1, Ordering::SeqCst);
        self.verify
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(Ok(valid()))
    }

    async fn settle(
        &self,
        _fac: &FacilitatorConf,
        _body: &[u8],
        _correlation: &crate::correlation::Correlation,
    ) -> Result<SettleResponse, FacilitatorError> {
        self.settles.fetch_add(1, Ordering::SeqCst);
        self.settle
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| Ok(settled("0xabc")))
    }

    fn reader(&self, _registry: &Registry, _network: &str) -> Option<ChainReader> {
        None
    }
}

/// A state store that is down.
#[derive(Debug)]
struct Down;

#[async_trait]
impl StateStore for Down {
    async fn reserve(&self, _: &str, _: u64) -> Result<Result<(), Refused>, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn settled(&self, _: &str) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn unknown(&self, _: &str) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn release(&self, _: &str) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn verified(&self, _: &[u8; 32]) -> Result<bool, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn remember_verified(&self, _: [u8; 32]) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn use_quota(&self, _: &str, _: u32, _: u64, _: bool) -> Result<Quota, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn quota_used(&self, _: &str) -> Result<u32, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn revoke(&self, _: &str, _: u64) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn revoked(&self, _: &str) -> Result<bool, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn put_pending(&self, _: &PendingSettlement) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn resolve_pending(&self, _: &str) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn pending(&self) -> Result<Vec<PendingSettlement>, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn lease_pending(
        &self,
        _: &str,
        _: &str,
        _: std::time::Duration,
    ) -> Result<bool, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn first_seen(&self, _: &[u8; 32], _: u64) -> Result<bool, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn count_refusal(
        &self,
        _: crate::state::Attempter<'_>,
        _: std::time::Duration,
        _: u32,
    ) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    fn limited(&self, _: crate::state::Attempter<'_>) -> bool {
        false
    }
    async fn claim_identifier(
        &self,
        _: &str,
        _: &crate::state::Identified,
        _: u64,
    ) -> Result<Option<crate::state::Identified>, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn complete_identifier(
        &self,
        _: &str,
        _: &crate::state::Identified,
        _: u64,
    ) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn forget_identifier(
        &self,
        _: &str,
        _: &crate::state::Identified,
    ) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn remember_paid(&self, _: &[u8; 32], _: u64) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn paid_within(&self, _: &[u8; 32]) -> Result<bool, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn channel(&self, _: &str) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn swap_channel(&self, _: &str, _: u64, _: &[u8]) -> Result<bool, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn delete_channel(&self, _: &str, _: u64) -> Result<bool, StateError> {
        Ok(false)
    }
    async fn channel_ids(&self) -> Result<Vec<String>, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn lease(&self, _: &str, _: &str, _: Duration) -> Result<bool, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    fn backend(&self) -> &'static str {
        "down"
    }
    async fn ping(&self) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
}

/// A fresh EIP-3009 nonce.
fn nonce() -> B256 {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("randomness");
    B256::from(b)
}

fn valid() -> VerifyResponse {
    serde_json::from_value(json!({"isValid": true, "payer": "0x1"})).expect("verify answer")
}

fn invalid(reason: &str) -> VerifyResponse {
    serde_json::from_value(json!({"isValid": false, "invalidReason": reason}))
        .expect("verify answer")
}

fn settled(tx: &str) -> SettleResponse {
    SettleResponse {
        success: true.into(),
        transaction: format!("{tx}{}", "0".repeat(66 - tx.len())),
        network: "eip155:84532".into(),
        ..Default::default()
    }
}

fn refused(reason: &str) -> SettleResponse {
    SettleResponse {
        success: false.into(),
        error_reason: Some(reason.into()),
        ..Default::default()
    }
}

/// One priced rule on Base Sepolia USDC, a facilitator, a scripted answer sheet.
struct Bench {
    script: Arc<Script>,
    payments: Payments,
    priced: Priced,
    facilitators: Vec<FacilitatorConf>,
    registry: Registry,
    ledger: LedgerConf,
    key: PrivateKeySigner,
    channels: crate::payment::channel::claimer::ChannelsConf,
}

impl Bench {
    fn new() -> Bench {
        Self::with(Script::default(), Arc::new(MemoryStore::default()))
    }

    fn with(script: Script, state: Arc<dyn StateStore>) -> Bench {
        // The real facilitators (unused here) build an HTTP client, which needs this.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let metrics = Arc::new(Metrics::new());
        let script = Arc::new(script);
        let facilitators = Arc::new(Facilitators::new(
            metrics.clone(),
            Arc::new(Settlers::default()),
        ));
        let payments = Payments::with_calls(metrics, facilitators, script.clone(), state);
        let registry = Registry::builtin();
        let asset = registry.asset("eip155:84532", "usdc").expect("usdc");
        let offer = EXACT.offer(asset, Some("base-sepolia".into()), 10_000, PAY_TO, 300);
        let priced = Priced::new(vec![offer], "Weather".into(), "application/json".into());
        let fac = FacilitatorConf {
            name: "f".into(),
            kind: FacilitatorKind::Http,
            url: "http://127.0.0.1:9".into(),
            networks: vec!["eip155:84532".into()],
            timeout: Duration::from_secs(1),
            headers: Vec::new(),
            priority: 0,
            weight: 1,
            failure_threshold: 3,
            max_eject: Duration::from_secs(30),
            confirm: Confirm::Receipt,
            confirm_timeout: Duration::from_secs(1),
            signers_complete: false,
            fingerprint: "f".into(),
        };
        Bench {
            script,
            payments,
            priced,
            facilitators: vec![fac],
            registry,
            ledger: LedgerConf {
                path: None,
                max_bytes: 1 << 20,
                keep: 1,
            },
            key: PrivateKeySigner::random(),
            channels: crate::payment::channel::claimer::ChannelsConf::default(),
        }
    }

    fn env(&self) -> PaymentEnv<'_> {
        PaymentEnv {
            facilitators: &self.facilitators,
            registry: &self.registry,
            ledger: &self.ledger,
            limits: Limits {
                max_header_bytes: 16 * 1024,
                failed_per_client: 3,
                failed_per_payer: 2,
            },
            pending_wait: RESOLVE_WINDOW,
            identifier: IdentifierConf {
                window: Some(Duration::from_secs(900)),
                required: false,
            },
            channels: &self.channels,
        }
    }

    /// A v2 payment of `value` with a fresh nonce (the price is 10000).
    fn payment(&self, value: u64) -> HeaderMap {
        self.payment_with(value, nonce())
    }

    fn payment_with(&self, value: u64, nonce: B256) -> HeaderMap {
        self.payment_named(value, nonce, None)
    }

    /// A v2 payment whose `payment-identifier` is `id` (none: no extension).
    fn payment_named(&self, value: u64, nonce: B256, id: Option<&str>) -> HeaderMap {
        let req = &self.priced.offers[0].requirements;
        let token: Address = req.asset.parse().expect("asset");
        let d = domain("USDC", "2", 84532, token);
        let now = unix_now();
        let to: Address = PAY_TO.parse().expect("pay_to");
        let payload = sign(&self.key, &d, to, value, now - 60, now + 200, nonce);
        let accepted = serde_json::to_value(req).expect("requirements");
        let mut header = json!({"x402Version": 2, "accepted": accepted, "payload": payload});
        if let Some(id) = id {
            header["extensions"] =
                json!({"payment-identifier": {"info": {"required": false, "id": id}}});
        }
        let mut h = HeaderMap::new();
        h.insert(
            "payment-signature",
            base64::engine::general_purpose::STANDARD
                .encode(header.to_string())
                .parse()
                .expect("header value"),
        );
        h
    }

    async fn gate(&self, headers: &HeaderMap, policy: RulePolicy) -> Result<Admission, Rejection> {
        self.gate_at(headers, policy, "http://gw.test/api/weather")
            .await
    }

    async fn gate_at(
        &self,
        headers: &HeaderMap,
        policy: RulePolicy,
        url: &str,
    ) -> Result<Admission, Rejection> {
        self.gate_with(headers, policy, url, "GET").await
    }

    async fn gate_with(
        &self,
        headers: &HeaderMap,
        policy: RulePolicy,
        url: &str,
        method: &str,
    ) -> Result<Admission, Rejection> {
        self.payments
            .gate(
                &self.env(),
                RuleRef {
                    id: "weather",
                    policy,
                },
                &self.priced,
                headers,
                url,
                crate::payment::Caller {
                    ip: Some(IpAddr::from([192, 0, 2, 1])),
                    audience: "",
                    correlation: &crate::correlation::Correlation::default(),
                    method,
                },
            )
            .await
    }

    /// The gate's admission of a payment it must accept.
    async fn paid(&self, headers: &HeaderMap, policy: RulePolicy) -> Box<Accepted> {
        match self.gate(headers, policy).await {
            Ok(Admission::Paid(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    /// Gate, then the origin's status, then the end of the request.
    async fn request(
        &self,
        headers: &HeaderMap,
        policy: RulePolicy,
        origin_status: u16,
    ) -> Result<Vec<(&'static str, String)>, Rejection> {
        let mut accepted = match self.gate(headers, policy).await? {
            Admission::Paid(a) => a,
            Admission::Unpaid(reason) => panic!("served unpaid: {reason}"),
            Admission::Replayed(receipt) => return Ok(receipt),
            Admission::Refunded(r) => panic!("an exact payment answered as a refund: {r:?}"),
        };
        let out = self
            .payments
            .on_response(&self.env(), &mut accepted, origin_status)
            .await;
        self.payments.finish(&self.env(), &mut accepted, None).await;
        out
    }
}

fn after() -> RulePolicy {
    RulePolicy::default()
}

fn before() -> RulePolicy {
    RulePolicy {
        settlement: Settlement::Before,
        ..RulePolicy::default()
    }
}

fn open() -> RulePolicy {
    RulePolicy {
        failure_policy: FailurePolicy::Open,
        ..RulePolicy::default()
    }
}

fn error_of(r: Result<Admission, Rejection>) -> PaymentError {
    match r {
        Ok(_) => panic!("admitted"),
        Err(r) => r.error,
    }
}

#[tokio::test]
async fn no_payment_is_payment_required_without_a_facilitator_call() {
    let b = Bench::new();
    assert_eq!(
        error_of(b.gate(&HeaderMap::new(), after()).await),
        PaymentError::MissingPayment
    );
    assert_eq!(b.script.calls(), (0, 0));
}

#[tokio::test]
async fn a_wrong_amount_is_refused_locally_without_a_facilitator_call() {
    let b = Bench::new();
    let e = error_of(b.gate(&b.payment(9_999), after()).await);
    assert_eq!(
        e.reason(),
        "invalid_exact_evm_payload_authorization_value_mismatch"
    );
    assert_eq!(b.script.calls(), (0, 0));
}

#[tokio::test]
async fn after_mode_settles_when_the_origin_answers_below_400() {
    let b = Bench::new();
    let receipt = b.request(&b.payment(10_000), after(), 200).await;
    let receipt = receipt.expect("paid");
    assert_eq!(receipt[0].0, "PAYMENT-RESPONSE");
    assert_eq!(b.script.calls(), (1, 1));
}

#[tokio::test]
async fn an_origin_error_settles_nothing_and_frees_the_payment() {
    let b = Bench::new();
    let nonce = nonce();
    let receipt = b
        .request(&b.payment_with(10_000, nonce), after(), 502)
        .await;
    assert_eq!(receipt, Ok(Vec::new()));
    assert_eq!(b.script.calls(), (1, 0));
    // The same payment may be used again: it never settled (the verification is cached).
    let again = b
        .request(&b.payment_with(10_000, nonce), after(), 200)
        .await;
    assert!(again.is_ok(), "{again:?}");
    assert_eq!(b.script.calls(), (1, 1));
}

#[tokio::test]
async fn a_copy_in_flight_is_refused_and_a_settled_payment_is_already_used() {
    let b = Bench::new();
    let nonce = nonce();
    let first = b.paid(&b.payment_with(10_000, nonce), after()).await;
    assert_eq!(
        error_of(b.gate(&b.payment_with(10_000, nonce), after()).await),
        PaymentError::InFlight
    );
    let mut first = first;
    assert!(
        b.payments
            .on_response(&b.env(), &mut first, 200)
            .await
            .is_ok()
    );
    b.payments.finish(&b.env(), &mut first, None).await;
    assert_eq!(
        error_of(b.gate(&b.payment_with(10_000, nonce), after()).await),
        PaymentError::AlreadyUsed
    );
    assert_eq!(b.script.calls(), (1, 1));
}

#[tokio::test]
async fn a_facilitator_refusal_is_its_reason_and_counts_against_the_payer() {
    let b = Bench::new();
    b.script.verifies(vec![
        Ok(invalid("insufficient_funds")),
        Ok(invalid("insufficient_funds")),
    ]);
    for _ in 0..2 {
        let e = error_of(b.gate(&b.payment(10_000), after()).await);
        assert_eq!(e.error_text(), "insufficient_funds");
    }
    // The payer's limit (2) is reached: refused before any call.
    assert_eq!(
        error_of(b.gate(&b.payment(10_000), after()).await),
        PaymentError::RateLimited
    );
    assert_eq!(b.script.calls(), (2, 0));
}

#[tokio::test]
async fn an_outage_is_unavailable_when_closed_and_serves_unpaid_when_open() {
    let b = Bench::new();
    let down = || Err(FacilitatorError::Connect("refused".into()));
    b.script.verifies(vec![down(), down()]);
    assert_eq!(
        error_of(b.gate(&b.payment(10_000), after()).await),
        PaymentError::FacilitatorUnavailable
    );
    match b.gate(&b.payment(10_000), open()).await {
        Ok(Admission::Unpaid(reason)) => assert_eq!(reason, "facilitator_unavailable"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_declining_facilitator_is_busy_and_never_opens_a_fail_open_rule() {
    let b = Bench::new();
    b.script
        .verifies(vec![Err(FacilitatorError::Declined { status: 429 })]);
    assert_eq!(
        error_of(b.gate(&b.payment(10_000), open()).await),
        PaymentError::FacilitatorBusy
    );
}

#[tokio::test]
async fn v1_where_no_facilitator_takes_v1_is_unsupported_version_not_an_outage() {
    let b = Bench::with(
        Script {
            versions: vec![2],
            ..Script::default()
        },
        Arc::new(MemoryStore::default()),
    );
    let req = &b.priced.offers[0].requirements;
    let token: Address = req.asset.parse().expect("asset");
    let now = unix_now();
    let payload = sign(
        &b.key,
        &domain("USDC", "2", 84532, token),
        PAY_TO.parse().expect("pay_to"),
        10_000,
        now - 60,
        now + 200,
        nonce(),
    );
    let v1 =
        json!({"x402Version": 1, "scheme": "exact", "network": "base-sepolia", "payload": payload});
    let mut h = HeaderMap::new();
    h.insert(
        "x-payment",
        base64::engine::general_purpose::STANDARD
            .encode(v1.to_string())
            .parse()
            .expect("header value"),
    );
    assert_eq!(
        error_of(b.gate(&h, open()).await),
        PaymentError::UnsupportedVersion
    );
}

#[tokio::test]
async fn before_mode_settles_in_the_gate_and_a_refusal_frees_the_payment() {
    let b = Bench::new();
    let nonce = nonce();
    b.script.settles(vec![Ok(refused("insufficient_funds"))]);
    let e = error_of(b.gate(&b.payment_with(10_000, nonce), before()).await);
    assert_eq!(e, PaymentError::SettleFailed("insufficient_funds".into()));
    // Provably not settled: the payment may be tried again, and now it settles first.
    match b.gate(&b.payment_with(10_000, nonce), before()).await {
        Ok(Admission::Paid(a)) => assert_eq!(a.stage, Stage::Settled),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.script.calls().1, 2);
}

#[tokio::test]
async fn a_settlement_that_failed_after_the_origin_answered_replaces_the_answer() {
    let b = Bench::new();
    b.script.settles(vec![Ok(refused("invalid_payload"))]);
    let r = b.request(&b.payment(10_000), after(), 200).await;
    let r = r.expect_err("refused");
    assert_eq!(
        r.error,
        PaymentError::SettleFailed("invalid_payload".into())
    );
    assert!(r.receipt.is_some_and(|s| !s.succeeded()));
}

/// A payment that did not settle is free again when its answer goes out (a refused
/// settlement, an origin error, an origin that could not be reached), not when the request's
/// logging ends; and the first request's end never frees a copy's reservation.
#[tokio::test]
async fn an_unsettled_payment_is_free_when_answered_and_freed_only_once() {
    // Status 0: proxying failed before the origin answered.
    for (settles, status) in [
        (Some(refused("invalid_payload")), 200),
        (None, 502),
        (None, 0),
    ] {
        let b = Bench::new();
        let nonce = nonce();
        if let Some(s) = settles {
            b.script.settles(vec![Ok(s)]);
        }
        let mut first = b.paid(&b.payment_with(10_000, nonce), after()).await;
        if status == 0 {
            let headers = b.payments.on_failure(&b.env(), &mut first, false).await;
            assert!(headers.is_empty(), "{headers:?}");
        } else {
            let _ = b.payments.on_response(&b.env(), &mut first, status).await;
        }
        // Answered, not yet ended: the same payment is taken again at once.
        let mut copy = b.paid(&b.payment_with(10_000, nonce), after()).await;
        b.payments.finish(&b.env(), &mut first, None).await;
        // The first request's end left the copy's reservation alone.
        assert_eq!(
            error_of(b.gate(&b.payment_with(10_000, nonce), after()).await),
            PaymentError::InFlight,
            "origin status {status}"
        );
        assert!(
            b.payments
                .on_response(&b.env(), &mut copy, 200)
                .await
                .is_ok()
        );
        b.payments.finish(&b.env(), &mut copy, None).await;
    }
}

/// A body-metered response whose origin broke off mid-body keeps its reservation: the end
/// of the request charges what was delivered, and a copy meanwhile is in flight, then used.
#[tokio::test]
async fn a_metered_answer_cut_off_mid_body_keeps_its_payment_until_charged() {
    let b = Bench::new();
    let nonce = nonce();
    let mut first = b.paid(&b.payment_with(10_000, nonce), after()).await;
    Arc::make_mut(&mut first.offer).requirements.scheme = "upto".into();
    first.meter = policy::Meter::Bytes(10);
    assert!(first.settles_at_body_end());
    assert_eq!(
        b.payments.on_response(&b.env(), &mut first, 200).await,
        Ok(Vec::new())
    );
    // The origin fails after the head went out.
    assert!(
        b.payments
            .on_failure(&b.env(), &mut first, false)
            .await
            .is_empty()
    );
    assert_eq!(
        error_of(b.gate(&b.payment_with(10_000, nonce), after()).await),
        PaymentError::InFlight
    );
    b.payments
        .settle_metered(&b.env(), &mut first, 4096, Duration::from_millis(10))
        .await;
    assert_eq!(first.stage, Stage::Settled);
    assert_eq!(first.charged, Some(40));
    b.payments.finish(&b.env(), &mut first, None).await;
    assert_eq!(
        error_of(b.gate(&b.payment_with(10_000, nonce), after()).await),
        PaymentError::AlreadyUsed
    );
    assert_eq!(b.script.calls(), (1, 1));
}

#[tokio::test]
async fn an_unclear_settlement_is_unconfirmed_and_keeps_the_payment_reserved() {
    let b = Bench::new();
    let nonce = nonce();
    b.script.settles(vec![Err(FacilitatorError::Timeout)]);
    let r = b
        .request(&b.payment_with(10_000, nonce), after(), 200)
        .await
        .expect_err("unconfirmed");
    assert_eq!(r.error, PaymentError::SettleUnconfirmed);
    // The chain may hold it: never reusable, never settled again.
    assert_eq!(
        error_of(b.gate(&b.payment_with(10_000, nonce), after()).await),
        PaymentError::AlreadyUsed
    );
    assert_eq!(b.script.calls().1, 1);
}

#[tokio::test]
async fn a_state_store_that_is_down_is_unavailable_never_unpaid() {
    let b = Bench::with(Script::default(), Arc::new(Down));
    assert_eq!(
        error_of(b.gate(&b.payment(10_000), open()).await),
        PaymentError::StateUnavailable
    );
    assert_eq!(b.script.calls(), (0, 0));
}

#[test]
fn reasons_are_stable() {
    let v: Value = json!([
        PaymentError::MissingPayment.reason(),
        PaymentError::StateUnavailable.reason(),
        PaymentError::RateLimited.reason(),
        PaymentError::UnsupportedVersion.reason(),
    ]);
    assert_eq!(
        v,
        json!([
            "payment_required",
            "state_unavailable",
            "too_many_payment_attempts",
            "unsupported_version"
        ])
    );
}

const PAYMENT_ID: &str = "pay_0123456789abcdef0123";

#[tokio::test]
async fn a_named_payment_retried_after_settling_is_served_again_uncharged() {
    let b = Bench::new();
    let nonce = nonce();
    let header = b.payment_named(10_000, nonce, Some(PAYMENT_ID));
    let first = b.request(&header, after(), 200).await.expect("paid");
    assert_eq!(b.script.calls(), (1, 1));
    match b.gate(&header, after()).await {
        Ok(Admission::Replayed(receipt)) => assert_eq!(receipt, first),
        other => panic!("{other:?}"),
    }
    // Served from the record: no facilitator call, no second settlement.
    assert_eq!(b.script.calls(), (1, 1));
    // The same payment without its name is what it always was: already used.
    assert_eq!(
        error_of(b.gate(&b.payment_with(10_000, nonce), after()).await),
        PaymentError::AlreadyUsed
    );
}

#[tokio::test]
async fn a_name_bound_to_another_payment_or_request_is_a_conflict() {
    let b = Bench::new();
    let header = b.payment_named(10_000, nonce(), Some(PAYMENT_ID));
    b.request(&header, after(), 200).await.expect("paid");
    let other_payment = b.payment_named(10_000, nonce(), Some(PAYMENT_ID));
    assert_eq!(
        error_of(b.gate(&other_payment, after()).await),
        PaymentError::IdentifierConflict
    );
    assert_eq!(
        error_of(
            b.gate_at(&header, after(), "http://gw.test/api/weather?city=Oslo")
                .await
        ),
        PaymentError::IdentifierConflict
    );
    assert_eq!(b.script.calls(), (1, 1));
}

#[tokio::test]
async fn a_named_payment_in_flight_is_not_replayed_and_an_unserved_one_frees_its_name() {
    let b = Bench::new();
    let header = b.payment_named(10_000, nonce(), Some(PAYMENT_ID));
    let mut first = b.paid(&header, after()).await;
    assert_eq!(
        error_of(b.gate(&header, after()).await),
        PaymentError::IdentifierInFlight
    );
    // The origin fails: nothing settles, and the name may pay again.
    let out = b.payments.on_response(&b.env(), &mut first, 503).await;
    assert_eq!(out, Ok(Vec::new()));
    b.payments.finish(&b.env(), &mut first, None).await;
    let again = b.request(&header, after(), 200).await;
    assert!(again.as_ref().is_ok_and(|r| !r.is_empty()), "{again:?}");
    assert_eq!(b.script.calls().1, 1);
}

#[tokio::test]
async fn a_malformed_name_is_refused_before_any_facilitator_call() {
    let b = Bench::new();
    let header = b.payment_named(10_000, nonce(), Some("too-short"));
    assert_eq!(
        error_of(b.gate(&header, after()).await),
        PaymentError::BadIdentifier
    );
    assert_eq!(b.script.calls(), (0, 0));
}

#[test]
fn metered_amounts_read_like_the_reference_overrides() {
    assert_eq!(metered_amount("12345", 50_000, 6), Some(12_345));
    assert_eq!(metered_amount("50%", 50_000, 6), Some(25_000));
    assert_eq!(metered_amount("12.5%", 50_000, 6), Some(6_250));
    assert_eq!(metered_amount("$0.002", 50_000, 6), Some(2_000));
    for bad in [
        "",
        "-1",
        "1.5",
        "12.345%",
        "$0.0000001",
        "abc",
        "0x10",
        "79228162514264337593543950335%",
        "$79228162514264337593543950335",
    ] {
        assert_eq!(metered_amount(bad, 50_000, 6), None, "{bad}");
    }
}

#[tokio::test]
async fn a_named_payment_is_not_answered_twice_for_a_method_with_side_effects() {
    let b = Bench::new();
    let header = b.payment_named(10_000, nonce(), Some(PAYMENT_ID));
    let mut first = match b
        .gate_with(&header, after(), "http://gw.test/api/weather", "POST")
        .await
    {
        Ok(Admission::Paid(a)) => a,
        other => panic!("{other:?}"),
    };
    let out = b.payments.on_response(&b.env(), &mut first, 200).await;
    assert!(out.is_ok_and(|r| !r.is_empty()));
    b.payments.finish(&b.env(), &mut first, None).await;
    assert_eq!(
        error_of(
            b.gate_with(&header, after(), "http://gw.test/api/weather", "POST")
                .await
        ),
        PaymentError::IdentifierSettled
    );
    assert_eq!(b.script.calls(), (1, 1));
}
