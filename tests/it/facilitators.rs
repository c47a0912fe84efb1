//! Facilitator pools: failover, circuit breaking, failure policy and unknown settlement
//! outcomes, against real facilitators that misbehave on purpose, checked on chain.

use serde_json::{Value, json};
use std::time::{Duration, Instant};

use crate::support::chain::balance;
use crate::support::pay::{self, Auth};
use crate::support::*;

/// anvil account 0: a second relayer, so the two facilitators never share account nonces.
const SECOND_RELAYER_KEY: &str =
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

const RULES: &str = r#"
[[rule]]
id = "weather"
path = "/api/weather"
price = "$0.01"

[[rule]]
id = "status"
prefix = "/status"
price = "$0.01"

[[rule]]
id = "open"
prefix = "/open"
price = "$0.01"
on_facilitator_failure = "open"
"#;

/// A devnet whose own facilitator is `a` (fault-injected), a second real facilitator `b`,
/// and a gateway that prefers `a`.
pub(crate) struct Two {
    pub(crate) dev: NodeProc,
    b: NodeProc,
    _origin: Origin,
    pub(crate) gw: Gateway,
}

fn s(v: &Value) -> String {
    v.as_str().expect("string").to_owned()
}

impl Two {
    fn start(a_url: Option<&str>, a_extra: &str) -> Two {
        Self::start_with(a_url, a_extra, "")
    }

    /// As [`Two::start`], with `config_extra` appended to the gateway's configuration (after
    /// `[payment]`).
    pub(crate) fn start_with(a_url: Option<&str>, a_extra: &str, config_extra: &str) -> Two {
        let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "2"]);
        let rpc = s(&dev.info["rpcUrl"]);
        let b = NodeProc::start(
            "lib/facilitator.mjs",
            &["--rpc-url", &rpc, "--private-key", SECOND_RELAYER_KEY],
        );
        let origin = Origin::start("o");
        let a_url = a_url
            .map(str::to_owned)
            .unwrap_or_else(|| s(&dev.info["facilitatorUrl"]));
        let facs = facilitator_toml("a", &a_url, 0, a_extra)
            + &facilitator_toml("b", &s(&b.info["facilitatorUrl"]), 1, "");
        let gw = Gateway::start(
            &paid_config(&origin.addr, &dev.info, &facs, config_extra),
            &[("rules.toml", RULES)],
        );
        Two {
            dev,
            b,
            _origin: origin,
            gw,
        }
    }

    fn a_url(&self, path: &str) -> String {
        format!("{}{path}", s(&self.dev.info["facilitatorUrl"]))
    }
    fn b_url(&self, path: &str) -> String {
        format!("{}{path}", s(&self.b.info["facilitatorUrl"]))
    }
    pub(crate) fn payer(&self) -> (String, String) {
        (
            s(&self.dev.info["payers"][0]["address"]),
            s(&self.dev.info["payers"][0]["privateKey"]),
        )
    }
    pub(crate) async fn balance(&self, who: &str) -> u128 {
        balance(
            &s(&self.dev.info["rpcUrl"]),
            &s(&self.dev.info["token"]["address"]),
            who,
        )
        .await
    }
    pub(crate) async fn configure_a(&self, cfg: Value) {
        let r = client()
            .post(self.a_url("/__config"))
            .json(&cfg)
            .send()
            .await
            .expect("config");
        assert!(r.status().is_success());
    }
    /// Calls (`/verify`, `/settle`) a facilitator received.
    pub(crate) async fn a_calls(&self) -> Vec<String> {
        facilitator_paths(&self.a_url("")).await
    }
    pub(crate) async fn b_calls(&self) -> Vec<String> {
        facilitator_paths(&self.b_url("")).await
    }
    /// A fresh signed payment for `path`.
    pub(crate) async fn header(&self, path: &str) -> String {
        pay::fresh_header(&self.gw, path, &self.payer().1).await
    }
    /// The payment in `header` settled first by `b` (another relayer), as another replica's
    /// facilitator would; then `a` says it is valid (its check ran before `b`'s transfer
    /// landed) and fails its settle without naming a transaction.
    async fn settle_at_b_then_fail_at_a(&self, header: &str) {
        let payload = decode_header(header);
        let settled: Value = client()
            .post(self.b_url("/settle"))
            .json(&json!({
                "x402Version": 2,
                "paymentPayload": payload,
                "paymentRequirements": payload["accepted"],
            }))
            .send()
            .await
            .expect("settle at b")
            .json()
            .await
            .expect("json");
        assert_eq!(settled["success"], true, "{settled}");
        let (payer, _) = self.payer();
        self.configure_a(json!({
            "verifyOverride": {"status": 200, "body": {"isValid": true, "payer": payer}, "times": 1},
            "settleOverride": {"status": 500, "body": "internal error", "times": 1},
        }))
        .await;
    }
    pub(crate) async fn pay(&self, path: &str, header: &str) -> reqwest::Response {
        client()
            .get(self.gw.url(path))
            .header("PAYMENT-SIGNATURE", header)
            .send()
            .await
            .expect("pay")
    }
}

#[tokio::test]
async fn verify_fails_over_on_refused_hung_broken_and_garbage_answers() {
    // Refused connections: the preferred facilitator is not there at all.
    let t = Two::start(Some(&dead_url()), "");
    let (payer, _) = t.payer();
    let before = t.balance(&payer).await;
    let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(t.b_calls().await, vec!["/verify", "/settle"]);
    assert_eq!(t.balance(&payer).await, before - 10_000);
    drop(t);

    // Hung, 500 and 200-with-garbage answers from the preferred facilitator.
    let t = Two::start(None, "failure_threshold = 10");
    let (payer, _) = t.payer();
    let before = t.balance(&payer).await;
    let faults = [
        json!({"verifyDelayMs": 10_000}),
        json!({"verifyDelayMs": null, "verifyOverride": {"status": 500, "body": "internal error", "times": 1}}),
        json!({"verifyOverride": {"status": 200, "body": "{not json", "times": 1}}),
        json!({"verifyOverride": {"status": 200, "body": {"isValid": "true"}, "times": 1}}),
    ];
    for (n, fault) in faults.iter().enumerate() {
        t.configure_a(fault.clone()).await;
        let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
        assert_eq!(
            r.status(),
            200,
            "fault {fault}: {}",
            r.text().await.unwrap_or_default()
        );
        assert_eq!(
            t.balance(&payer).await,
            before - 10_000 * (n as u128 + 1),
            "fault {fault}"
        );
    }
    assert!(
        t.a_calls().await.iter().all(|c| c == "/verify"),
        "a never settled"
    );
    assert_eq!(
        t.b_calls().await.iter().filter(|c| *c == "/settle").count(),
        4
    );
    assert!(
        t.gw.metric(r#"x402_facilitator_failovers_total{operation="verify"}"#)
            .await
            >= 4.0
    );
}

#[tokio::test]
async fn a_lying_settle_is_checked_on_chain_and_never_settled_twice() {
    let t = Two::start(None, "confirm_timeout_ms = 1500");
    let (payer, _) = t.payer();
    let before = t.balance(&payer).await;
    // `success: true` (the literal) with a transaction hash that does not exist: the chain
    // shows nothing, so nothing is served and nothing is charged.
    let made_up = format!("0x{}", "ab".repeat(32));
    t.configure_a(json!({"settleOverride": {"status": 200, "body": {"success": true, "transaction": made_up, "network": "x", "payer": payer}, "times": 1}})).await;
    let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
    assert_eq!(r.status(), 503, "unconfirmed: no content");
    assert!(r.headers().get("retry-after").is_some());
    let pr = decode_header(r.headers()["payment-required"].to_str().expect("ascii"));
    assert_eq!(pr["error"], "settlement_unconfirmed");
    let body = r.text().await.expect("body");
    assert!(
        !body.contains("\"origin\""),
        "the origin's answer leaked: {body}"
    );
    assert_eq!(t.balance(&payer).await, before);
    assert!(
        !t.b_calls().await.contains(&"/settle".to_string()),
        "an unconfirmed settlement is never retried elsewhere"
    );
    let ledger = std::fs::read_to_string(t.gw.path("receipts.jsonl")).expect("ledger");
    assert!(ledger.contains("\"settle_unconfirmed\""), "{ledger}");
    assert!(!ledger.contains("\"settled\""), "{ledger}");
    assert_eq!(
        t.gw.metric(r#"x402_settlements_unconfirmed_total{facilitator="a",why="receipt_missing"}"#)
            .await,
        1.0
    );
    // An error is logged.
    t.gw.log_containing("the chain does not confirm").await;

    // A real transaction that is not this payment (an earlier settlement's): refused too.
    let earlier = t.pay("/api/weather", &t.header("/api/weather").await).await;
    assert_eq!(earlier.status(), 200, "an honest settlement is served");
    let real = decode_header(
        earlier.headers()["payment-response"]
            .to_str()
            .expect("ascii"),
    )["transaction"]
        .clone();
    let paid = t.balance(&payer).await;
    assert_eq!(paid, before - 10_000);
    t.configure_a(json!({"settleOverride": {"status": 200, "body": {"success": true, "transaction": real, "network": "x", "payer": payer}, "times": 1}})).await;
    let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
    assert_eq!(r.status(), 503);
    assert_eq!(t.balance(&payer).await, paid, "nothing moved for it");
    assert_eq!(
        t.gw.metric(
            r#"x402_settlements_unconfirmed_total{facilitator="a",why="receipt_mismatch"}"#
        )
        .await,
        1.0
    );
    // The same answer given as the string "true" is not a success at all: the outcome is
    // unknown, resolved from the chain, and nothing is served.
    t.configure_a(json!({"settleOverride": {"status": 200, "body": {"success": "true", "transaction": "0xabc"}, "times": 1}})).await;
    let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
    assert_eq!(r.status(), 503);
    assert_eq!(t.balance(&payer).await, paid);
    assert_eq!(
        t.gw.metric(r#"x402_settlements_resolved_total{result="pending"}"#)
            .await,
        1.0
    );
}

/// A facilitator that settles and then drops the connection named no transaction: the chain
/// shows the authorization used, but nothing says by whose call (another replica sharing the
/// facilitator may have sent the same payment). Nothing is served, nothing is settled twice,
/// and the ledger keeps the transaction found for reconciliation. So even when the
/// facilitator's signers are known complete: the transaction came from one of them.
#[tokio::test]
async fn a_connection_dropped_after_settling_serves_nothing_and_keeps_the_transaction() {
    let t = Two::start(None, "signers_complete = true");
    t.gw.wait_facilitator_signers("a").await;
    let (payer, _) = t.payer();
    let before = t.balance(&payer).await;
    t.configure_a(json!({"settleDropConnection": 1})).await;
    let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
    assert_eq!(r.status(), 503, "unattributed: no content");
    let pr = decode_header(r.headers()["payment-required"].to_str().expect("ascii"));
    assert_eq!(pr["error"], "settlement_unconfirmed");
    assert_eq!(
        t.balance(&payer).await,
        before - 10_000,
        "charged exactly once (by the facilitator's transaction)"
    );
    assert_eq!(t.a_calls().await, vec!["/verify", "/settle"]);
    assert!(
        t.b_calls().await.is_empty(),
        "never settled again elsewhere"
    );
    let ledger: Vec<Value> = std::fs::read_to_string(t.gw.path("receipts.jsonl"))
        .expect("ledger")
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0]["event"], "settle_unattributed");
    let tx = s(&ledger[0]["transaction"]);
    assert!(
        tx.starts_with("0x") && tx.len() == 66,
        "the transaction comes from the chain's logs: {tx}"
    );
    assert_eq!(
        t.gw.metric(r#"x402_settlements_resolved_total{result="unattributed"}"#)
            .await,
        1.0
    );
}

/// A facilitator whose settle fails without naming a transaction, when the chain shows the
/// payment used by a transaction sent from none of the signers its `/supported` lists (and
/// its configuration says the list is whole): another facilitator's (another replica given
/// the same payment), so a used payment, refused as such (`402 payment_already_used`),
/// nothing served and nothing charged again. Sent from its own signer, the same failure stays
/// unattributed (the test above).
#[tokio::test]
async fn a_failed_settle_after_another_facilitators_transaction_is_a_used_payment() {
    let t = Two::start(None, "signers_complete = true");
    let (payer, _) = t.payer();
    t.gw.wait_facilitator_signers("a").await;
    let before = t.balance(&payer).await;
    let header = t.header("/api/weather").await;
    t.settle_at_b_then_fail_at_a(&header).await;
    assert_eq!(t.balance(&payer).await, before - 10_000);
    let r = t.pay("/api/weather", &header).await;
    assert_eq!(r.status(), 402);
    let pr = decode_header(r.headers()["payment-required"].to_str().expect("ascii"));
    assert_eq!(pr["error"], "payment_already_used");
    let body = r.text().await.expect("body");
    assert!(
        !body.contains("\"origin\""),
        "the origin's answer leaked: {body}"
    );
    assert_eq!(t.balance(&payer).await, before - 10_000, "moved once, by b");
    assert_eq!(t.a_calls().await, vec!["/verify", "/settle"]);
    let ledger = t.gw.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0]["event"], "used_elsewhere");
    let tx = s(&ledger[0]["transaction"]);
    assert!(
        tx.starts_with("0x") && tx.len() == 66,
        "the ledger keeps b's transaction: {tx}"
    );
    let b_signer = s(&t.b.info["facilitatorSigner"]);
    assert_eq!(
        ledger[0]["reason"],
        format!("payment_already_used: sent by {b_signer}"),
        "and its sender"
    );
    assert_eq!(
        t.gw.metric(r#"x402_settlements_resolved_total{result="used_by_other_sender"}"#)
            .await,
        1.0
    );
    // A warning names the sender.
    t.gw.log_containing("from none of the facilitator's signers")
        .await;

    // Without `signers_complete` (the default; a reload, keeping the facilitator's health and
    // known signers), the same case may have been this request's: a 503, nothing served.
    let config = std::fs::read_to_string(t.gw.path("gateway.toml")).expect("config");
    assert!(config.contains("signers_complete = true"));
    t.gw.write(
        "gateway.toml",
        &config.replacen("signers_complete = true", "signers_complete = false", 1),
    );
    t.gw.wait_generation(2).await;
    let ready = t.gw.admin_json("/readyz").await;
    assert_eq!(
        ready["facilitator_signers"]["a"]["complete"], false,
        "{ready}"
    );
    assert!(
        ready["facilitator_signers"]["a"]["listed"]["eip155:*"].is_array(),
        "{ready}"
    );
    let header = t.header("/api/weather").await;
    t.settle_at_b_then_fail_at_a(&header).await;
    let r = t.pay("/api/weather", &header).await;
    assert_eq!(r.status(), 503);
    let pr = decode_header(r.headers()["payment-required"].to_str().expect("ascii"));
    assert_eq!(pr["error"], "settlement_unconfirmed");
    assert_eq!(
        t.balance(&payer).await,
        before - 20_000,
        "b's two transfers"
    );
    assert_eq!(t.gw.ledger()[1]["event"], "settle_unattributed");
}

#[tokio::test]
async fn settle_fails_over_only_when_the_call_never_left() {
    let t = Two::start(None, "");
    let (payer, _) = t.payer();
    let before = t.balance(&payer).await;
    let header = t.header("/status/500").await;
    // First use: verified by `a`, the origin fails, nothing settles, the payment is released.
    assert_eq!(t.pay("/status/500", &header).await.status(), 500);
    assert_eq!(t.a_calls().await, vec!["/verify"]);
    // `a` goes away (a reload points it at a dead port); the cached verification stands and
    // settlement moves on to `b`, because the call to `a` provably never left.
    let config = std::fs::read_to_string(t.gw.path("gateway.toml")).expect("config");
    let a_url = s(&t.dev.info["facilitatorUrl"]);
    t.gw.write("gateway.toml", &config.replacen(&a_url, &dead_url(), 1));
    t.gw.wait_generation(2).await;
    let r = t.pay("/status/200", &header).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        t.b_calls().await,
        vec!["/settle"],
        "b settled without verifying again"
    );
    assert_eq!(t.balance(&payer).await, before - 10_000);
    assert!(
        t.gw.metric(r#"x402_facilitator_failovers_total{operation="settle"}"#)
            .await
            >= 1.0
    );
}

/// A reload that moves a facilitator elsewhere asks the new place's `/supported` at once (a
/// full round of probes is a minute away), and nothing the old place said carries over.
#[tokio::test]
async fn a_facilitator_moved_by_a_reload_is_asked_at_once() {
    let t = Two::start(None, "");
    t.gw.wait_facilitator_signers("a").await;
    t.gw.wait_facilitator_signers("b").await;
    let ready = t.gw.admin_json("/readyz").await;
    let listed = |r: &Value, name: &str| r["facilitator_signers"][name]["listed"].clone();
    let b_lists = listed(&ready, "b");
    assert_ne!(listed(&ready, "a"), b_lists, "{ready}");
    // `a` now names `b`'s address.
    let config = std::fs::read_to_string(t.gw.path("gateway.toml")).expect("config");
    let a_url = s(&t.dev.info["facilitatorUrl"]);
    let b_url = s(&t.b.info["facilitatorUrl"]);
    t.gw.write("gateway.toml", &config.replacen(&a_url, &b_url, 1));
    t.gw.wait_generation(2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = t.gw.admin_json("/readyz").await;
        if listed(&ready, "a") == b_lists {
            break;
        }
        assert!(Instant::now() < deadline, "a never asked again: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (payer, _) = t.payer();
    let before = t.balance(&payer).await;
    let header = t.header("/status/200").await;
    assert_eq!(t.pay("/status/200", &header).await.status(), 200);
    assert_eq!(t.balance(&payer).await, before - 10_000);
    assert!(t.a_calls().await.is_empty(), "{:?}", t.a_calls().await);
}

#[tokio::test]
async fn failure_policy_closed_answers_503_and_open_serves_unpaid() {
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1"]);
    let origin = Origin::start("o");
    let facs = facilitator_toml("down", &dead_url(), 0, "");
    let gw = Gateway::start(
        &paid_config(&origin.addr, &dev.info, &facs, ""),
        &[("rules.toml", RULES)],
    );
    let (payer, key) = (
        s(&dev.info["payers"][0]["address"]),
        s(&dev.info["payers"][0]["privateKey"]),
    );
    let (rpc, token) = (s(&dev.info["rpcUrl"]), s(&dev.info["token"]["address"]));
    let before = balance(&rpc, &token, &payer).await;
    let sign = |path: &'static str| {
        let (gw_url, key) = (gw.url(path), key.clone());
        async move {
            let r = client().get(gw_url).send().await.expect("get");
            let accepted = decode_header(r.headers()["payment-required"].to_str().expect("ascii"))
                ["accepts"][0]
                .clone();
            pay::v2_header(
                &accepted,
                pay::signed_payload(
                    &pay::key(&key),
                    &accepted,
                    &Auth::for_requirements(&accepted),
                ),
            )
        }
    };
    let closed = client()
        .get(gw.url("/api/weather"))
        .header("PAYMENT-SIGNATURE", sign("/api/weather").await)
        .send()
        .await
        .expect("get");
    assert_eq!(closed.status(), 503);
    assert!(closed.headers().get("retry-after").is_some());
    assert_eq!(
        origin.requests().await,
        0,
        "closed: the origin is not reached"
    );
    let open = client()
        .get(gw.url("/open/page"))
        .header("PAYMENT-SIGNATURE", sign("/open/page").await)
        .send()
        .await
        .expect("get");
    assert_eq!(open.status(), 200, "open: served without payment");
    assert!(open.headers().get("payment-response").is_none());
    assert_eq!(origin.requests().await, 1);
    assert_eq!(
        balance(&rpc, &token, &payer).await,
        before,
        "nobody was charged"
    );
    assert_eq!(
        gw.metric(
            r#"x402_payments_total{outcome="served_unpaid",reason="facilitator_unavailable"}"#
        )
        .await,
        1.0
    );
    // Without a payment header, even an open rule asks for one.
    assert_eq!(
        client()
            .get(gw.url("/open/page"))
            .send()
            .await
            .expect("get")
            .status(),
        402
    );
}

#[tokio::test]
async fn a_failing_facilitator_is_ejected_then_recovers() {
    let t = Two::start(None, "failure_threshold = 2\nmax_eject_ms = 1000");
    // `a` fails two `/verify` calls, and its `/supported` fails until the test says otherwise:
    // once its ejection runs out, only a request's trial call could bring it back, so it stays
    // out while nothing is asked of it, however long the payments through `b` take.
    t.configure_a(json!({
        "verifyOverride": {"status": 500, "body": "down", "times": 2},
        "supportedOverride": {"status": 500, "body": "down"},
    }))
    .await;
    for _ in 0..2 {
        let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        t.a_calls().await.len(),
        2,
        "both failed at `a` and went to `b`: {:?}",
        t.a_calls().await
    );
    assert_eq!(
        t.gw.metric(r#"x402_facilitator_healthy{facilitator="a"}"#)
            .await,
        0.0,
        "after two failures `a` is out of rotation"
    );
    assert_eq!(
        t.gw.metric(r#"x402_facilitator_ejections_total{facilitator="a"}"#)
            .await,
        1.0
    );
    // Its /supported probe brings it back once it answers again.
    t.configure_a(json!({"supportedOverride": null})).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while t
        .gw
        .metric(r#"x402_facilitator_healthy{facilitator="a"}"#)
        .await
        != 1.0
    {
        assert!(std::time::Instant::now() < deadline, "a never recovered");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
    let status = r.status();
    assert_eq!(
        status,
        200,
        "{}\n{}",
        r.text().await.unwrap_or_default(),
        t.gw.log_text()
    );
    assert_eq!(
        t.a_calls().await.len(),
        4,
        "back in rotation: a verifies and settles again"
    );
    let ready: Value = client()
        .get(t.gw.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["ready"], true, "{ready}");
}

#[tokio::test]
async fn cdp_requests_carry_a_jwt_for_the_exact_call() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use p256::pkcs8::EncodePublicKey;
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1"]);
    let origin = Origin::start("o");
    let secret = p256::SecretKey::from_slice(&[5u8; 32]).expect("key");
    let pem = secret
        .to_sec1_pem(p256::pkcs8::LineEnding::LF)
        .expect("pem")
        .to_string();
    let public = secret
        .public_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .expect("public");
    let fac_url = s(&dev.info["facilitatorUrl"]);
    let facs = format!(
        "[[facilitators]]\nname = \"cdp\"\nkind = \"cdp\"\nurl = \"{fac_url}\"\napi_key_id = \"${{TEST_CDP_KEY_ID}}\"\napi_key_secret = \"${{TEST_CDP_KEY_SECRET}}\"\n"
    );
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules");
    std::fs::write(dir.path().join("rules/r.toml"), RULES).expect("write");
    std::fs::write(
        dir.path().join("gateway.toml"),
        paid_config(&origin.addr, &dev.info, &facs, ""),
    )
    .expect("write");
    let gw = Gateway::start_in_with_env(
        dir,
        &[
            ("TEST_CDP_KEY_ID", "organizations/test/apiKeys/k1"),
            ("TEST_CDP_KEY_SECRET", &pem),
        ],
    );
    let key = s(&dev.info["payers"][0]["privateKey"]);
    let r = client()
        .get(gw.url("/api/weather"))
        .send()
        .await
        .expect("get");
    let accepted =
        decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["accepts"][0]
            .clone();
    let h = pay::v2_header(
        &accepted,
        pay::signed_payload(
            &pay::key(&key),
            &accepted,
            &Auth::for_requirements(&accepted),
        ),
    );
    let r = client()
        .get(gw.url("/api/weather"))
        .header("PAYMENT-SIGNATURE", h)
        .send()
        .await
        .expect("pay");
    assert_eq!(r.status(), 200);
    let log = facilitator_log(&fac_url).await;
    let dec = DecodingKey::from_ec_pem(public.as_bytes()).expect("decoding key");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_aud = false;
    let mut seen = Vec::new();
    for e in &log {
        let auth = s(&e["headers"]["authorization"]);
        let token = auth.strip_prefix("Bearer ").expect("bearer");
        let data = jsonwebtoken::decode::<Value>(token, &dec, &validation)
            .expect("signed by the configured key");
        assert_eq!(data.claims["sub"], "organizations/test/apiKeys/k1");
        assert_eq!(
            data.header.kid.as_deref(),
            Some("organizations/test/apiKeys/k1")
        );
        let method = s(&e["method"]);
        assert_eq!(
            data.claims["uris"][0],
            format!("{method} 127.0.0.1{}", s(&e["path"]))
        );
        seen.push(s(&e["path"]));
    }
    assert!(
        seen.contains(&"/verify".to_string()) && seen.contains(&"/settle".to_string()),
        "{seen:?}"
    );
    let view = gw.config_view().await;
    assert!(
        !view.to_string().contains("BEGIN EC PRIVATE KEY"),
        "secrets never appear in /config"
    );
    assert!(!gw.log_flushed().await.contains("BEGIN EC PRIVATE KEY"));
}

/// Declines are not outages, and refusals cost the client: a facilitator that answers 429 (or
/// refuses a settlement with a 401 and no verdict) is never taken out of rotation, and a
/// fail-open rule does not serve unpaid on it (503 `facilitator_busy`); a v1 payment where no
/// facilitator takes v1 is `unsupported_version`, not an outage, even on a fail-open rule;
/// payments the facilitator refuses count per payer and per client address, and past the
/// limit the next attempt is a 429 `too_many_payment_attempts` with `Retry-After` and no
/// facilitator call.
#[tokio::test]
async fn declines_are_not_outages_and_refused_payments_are_rate_limited() {
    let dev = NodeProc::start("lib/devnet.mjs", &["--chain-id", "84532", "--payers", "2"]);
    let fac = s(&dev.info["facilitatorUrl"]);
    let configure = |cfg: Value| {
        let url = format!("{fac}/__config");
        async move {
            let r = client().post(url).json(&cfg).send().await.expect("config");
            assert!(r.status().is_success());
        }
    };
    // The facilitator takes v2 payments only.
    let supported: Value = client()
        .get(format!("{fac}/supported"))
        .send()
        .await
        .expect("supported")
        .json()
        .await
        .expect("json");
    let v2: Vec<Value> = supported["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .filter(|k| k["x402Version"] == 2)
        .cloned()
        .collect();
    assert!(!v2.is_empty() && v2.len() < supported["kinds"].as_array().map_or(0, Vec::len));
    configure(json!({"supportedOverride": {"status": 200, "body": {"kinds": v2, "extensions": [], "signers": {}}}})).await;
    let origin = Origin::start("o");
    let gw = Gateway::start(
        &paid_config(
            &origin.addr,
            &dev.info,
            &facilitator_toml("a", &fac, 0, "failure_threshold = 2"),
            "failed_payments_per_client = 3\nfailed_payments_per_payer = 2",
        ),
        &[("rules.toml", RULES)],
    );
    let key = |i: usize| s(&dev.info["payers"][i]["privateKey"]);
    let accepted = |path: &'static str| {
        let url = gw.url(path);
        async move {
            let r = client().get(url).send().await.expect("get");
            decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["accepts"][0]
                .clone()
        }
    };
    let open = accepted("/open/x").await;
    let v2_payment = |i: usize| {
        pay::v2_header(
            &open,
            pay::signed_payload(&pay::key(&key(i)), &open, &Auth::for_requirements(&open)),
        )
    };
    let send = |name: &'static str, value: String| {
        let url = gw.url("/open/x");
        async move {
            let r = client()
                .get(url)
                .header(name, value)
                .send()
                .await
                .expect("send");
            let status = r.status().as_u16();
            let retry = r.headers().contains_key("retry-after");
            let pr = r
                .headers()
                .get("payment-required")
                .map(|v| decode_header(v.to_str().expect("ascii")));
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let reason = pr
                .map(|p| p["error"].clone())
                .unwrap_or_else(|| body["error"].clone());
            (status, reason, retry)
        }
    };
    let ejections = r#"x402_facilitator_ejections_total{facilitator="a"}"#;

    // Rate limited, three times over the ejection threshold: busy, never unpaid, never ejected.
    configure(
        json!({"verifyOverride": {"status": 429, "body": {"error": "slow down"}, "times": 3}}),
    )
    .await;
    for _ in 0..3 {
        let (status, reason, retry) = send("PAYMENT-SIGNATURE", v2_payment(0)).await;
        assert_eq!(
            (status, reason.as_str(), retry),
            (503, Some("facilitator_busy"), true)
        );
    }
    assert_eq!(gw.metric(ejections).await, 0.0);
    assert_eq!(
        origin.requests().await,
        0,
        "a decline opened a fail-open rule"
    );

    // A v1 payment where no facilitator takes v1: the client's choice, not an outage.
    let v1_offer = {
        let r = client().get(gw.url("/open/x")).send().await.expect("get");
        r.json::<Value>().await.expect("v1 body")["accepts"][0].clone()
    };
    let v1 = pay::v1_header(
        v1_offer["network"].as_str().expect("v1 network"),
        pay::signed_payload(&pay::key(&key(0)), &open, &Auth::for_requirements(&open)),
    );
    let (status, reason, _) = send("X-PAYMENT", v1).await;
    assert_eq!(
        (status, reason.as_str()),
        (402, Some("unsupported_version"))
    );
    assert_eq!(origin.requests().await, 0);

    // Refused payments: two for payer 0 reach the payer limit, one for payer 1 the client's.
    configure(json!({"verifyOverride": {"status": 200, "body": {"isValid": false, "invalidReason": "insufficient_funds"}, "times": 3}})).await;
    let verifies = |log: &Value| {
        log.as_array()
            .expect("array")
            .iter()
            .filter(|e| e["path"] == "/verify")
            .count()
    };
    let log_now = || async {
        client()
            .get(format!("{fac}/__log"))
            .send()
            .await
            .expect("log")
            .json::<Value>()
            .await
            .expect("json")
    };
    for _ in 0..2 {
        let (status, reason, _) = send("PAYMENT-SIGNATURE", v2_payment(0)).await;
        assert_eq!((status, reason.as_str()), (402, Some("insufficient_funds")));
    }
    let before = verifies(&log_now().await);
    let (status, reason, retry) = send("PAYMENT-SIGNATURE", v2_payment(0)).await;
    assert_eq!(
        (status, reason.as_str(), retry),
        (429, Some("too_many_payment_attempts"), true)
    );
    assert_eq!(
        verifies(&log_now().await),
        before,
        "a limited payer reached the facilitator"
    );
    let (status, reason, _) = send("PAYMENT-SIGNATURE", v2_payment(1)).await;
    assert_eq!(
        (status, reason.as_str()),
        (402, Some("insufficient_funds")),
        "another payer"
    );
    let before = verifies(&log_now().await);
    let (status, reason, retry) = send("PAYMENT-SIGNATURE", v2_payment(1)).await;
    assert_eq!(
        (status, reason.as_str(), retry),
        (429, Some("too_many_payment_attempts"), true),
        "three refusals from this address"
    );
    assert_eq!(verifies(&log_now().await), before);
    assert_eq!(gw.metric(ejections).await, 0.0);
    assert_eq!(origin.requests().await, 0);
}

/// A settlement refused with a 401 and no verdict is a decline, not an outage: the facilitator
/// stays in rotation however often it happens, the outcome is read from the chain (nothing
/// moved), and the client is not served.
#[tokio::test]
async fn a_settle_declined_without_a_verdict_never_ejects() {
    let t = Two::start(None, "failure_threshold = 1");
    let (payer, _) = t.payer();
    let before = t.balance(&payer).await;
    t.configure_a(
        json!({"settleOverride": {"status": 401, "body": {"error": "unauthorized"}, "times": 2}}),
    )
    .await;
    for _ in 0..2 {
        let header = t.header("/api/weather").await;
        let r = t.pay("/api/weather", &header).await;
        assert!(
            r.status() == 402 || r.status() == 503,
            "not served: {}",
            r.status()
        );
    }
    assert_eq!(
        t.gw.metric(r#"x402_facilitator_ejections_total{facilitator="a"}"#)
            .await,
        0.0
    );
    assert_eq!(
        t.b_calls().await,
        Vec::<String>::new(),
        "no failover on a decline"
    );
    assert_eq!(t.balance(&payer).await, before);
}

/// `confirm = "trust"` believes a facilitator's `success: true` as given (for facilitators
/// an operator runs themselves, or networks without RPC): the same made-up transaction that
/// `receipt` mode refuses is served and recorded, and nothing is counted as unconfirmed.
#[tokio::test]
async fn confirm_trust_believes_the_facilitator_as_given() {
    let t = Two::start(None, "confirm = \"trust\"");
    let (payer, _) = t.payer();
    let made_up = format!("0x{}", "cd".repeat(32));
    t.configure_a(json!({"settleOverride": {"status": 200, "body": {"success": true, "transaction": made_up, "network": "x", "payer": payer}, "times": 1}})).await;
    let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
    assert_eq!(r.status(), 200, "trusted as configured");
    let receipt = decode_header(r.headers()["payment-response"].to_str().expect("ascii"));
    assert_eq!(receipt["transaction"], made_up.as_str());
    let ledger = std::fs::read_to_string(t.gw.path("receipts.jsonl")).expect("ledger");
    assert!(
        ledger.contains("\"settled\"") && ledger.contains(&made_up),
        "{ledger}"
    );
    assert!(
        !t.gw
            .metrics()
            .await
            .contains("x402_settlements_unconfirmed_total{"),
        "nothing was checked"
    );
}

/// A paying client's W3C trace context and the request's id reach the facilitator on both
/// `/verify` and `/settle`, and the ledger line names the same request.
#[tokio::test]
async fn trace_context_and_request_id_reach_the_facilitator() {
    let t = Two::start(None, "");
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let header = t.header("/api/weather").await;
    let r = client()
        .get(t.gw.url("/api/weather"))
        .header("PAYMENT-SIGNATURE", &header)
        .header("traceparent", tp)
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .expect("pay");
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let calls = facilitator_calls(&t.a_url("")).await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    for c in &calls {
        assert_eq!(c["headers"]["traceparent"], tp, "{c}");
        assert_eq!(c["headers"]["tracestate"], "congo=t61rcWkgMzE", "{c}");
        assert_eq!(c["headers"]["x-request-id"], id.as_str(), "{c}");
    }
    let ledger = std::fs::read_to_string(t.gw.path("receipts.jsonl")).expect("ledger");
    assert!(
        ledger.contains(&format!("\"request_id\":\"{id}\"")),
        "{ledger}"
    );
}
