//! x402 payments end to end: the reference clients pay the gateway, a real facilitator settles
//! on a real chain, and every refusal is checked against the chain and the facilitator's log.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::chain::balance;
use crate::support::pay::{self, Auth};
use crate::support::*;

/// A devnet, an origin and a gateway in front of it.
struct Paid {
    dev: NodeProc,
    origin: Origin,
    gw: Gateway,
}

const RULES: &str = r#"
[[rule]]
id = "weather"
path = "/api/weather"
price = "$0.01"
description = "Weather"
mime_type = "application/json"

[[rule]]
id = "status"
prefix = "/status"
price = "$0.01"

[[rule]]
id = "bytes"
prefix = "/bytes"
price = "$0.01"

[[rule]]
id = "search"
prefix = "/search"
price = "$0.01"
resource_query = true
"#;

fn pay_config(origin: &str, dev: &Value, facilitator_url: Option<&str>, extra: &str) -> String {
    let fac_url = facilitator_url
        .map(str::to_owned)
        .unwrap_or_else(|| dev["facilitatorUrl"].as_str().expect("fac").to_owned());
    paid_config(
        origin,
        dev,
        &facilitator_toml("local", &fac_url, 0, ""),
        extra,
    )
}

impl Paid {
    fn start(chain_id: u32, payers: usize, payment_extra: &str) -> Paid {
        let dev = NodeProc::start(
            "lib/devnet.mjs",
            &[
                "--chain-id",
                &chain_id.to_string(),
                "--payers",
                &payers.to_string(),
            ],
        );
        let origin = Origin::start("paid-origin");
        let gw = Gateway::start(
            &pay_config(&origin.addr, &dev.info, None, payment_extra),
            &[("rules.toml", RULES)],
        );
        Paid { dev, origin, gw }
    }

    fn rpc(&self) -> &str {
        self.dev.info["rpcUrl"].as_str().expect("rpc")
    }
    fn token(&self) -> &str {
        self.dev.info["token"]["address"].as_str().expect("token")
    }
    fn pay_to(&self) -> &str {
        self.dev.info["payTo"].as_str().expect("payTo")
    }
    fn payer(&self, i: usize) -> (&str, &str) {
        let p = &self.dev.info["payers"][i];
        (
            p["address"].as_str().expect("address"),
            p["privateKey"].as_str().expect("key"),
        )
    }
    fn fac(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.dev.info["facilitatorUrl"].as_str().expect("fac")
        )
    }

    async fn balance(&self, who: &str) -> u128 {
        balance(self.rpc(), self.token(), who).await
    }

    /// Requests the facilitator received, by path.
    async fn facilitator_calls(&self) -> Vec<String> {
        facilitator_paths(&self.fac("")).await
    }

    async fn facilitator_config(&self, cfg: Value) {
        let r = client()
            .post(self.fac("/__config"))
            .json(&cfg)
            .send()
            .await
            .expect("config");
        assert!(
            r.status().is_success(),
            "facilitator config refused: {}",
            r.text().await.unwrap_or_default()
        );
    }

    /// The requirements the gateway offers for `path` (its first `accepts` entry).
    async fn accepted(&self, path: &str) -> Value {
        let r = client().get(self.gw.url(path)).send().await.expect("get");
        assert_eq!(r.status(), 402);
        decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["accepts"][0]
            .clone()
    }

    fn ledger(&self) -> Vec<Value> {
        std::fs::read_to_string(self.gw.path("receipts.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("ledger line"))
            .collect()
    }
}

#[tokio::test]
async fn v2_client_pays_once_and_replay_moves_nothing() {
    let p = Paid::start(31337, 1, "");
    let (payer, key) = p.payer(0);
    let (payer_before, merchant_before) = (p.balance(payer).await, p.balance(p.pay_to()).await);

    let res = pay_v2(&p.gw.url("/api/weather?city=Paris"), key, &[]).await;
    assert_eq!(res["status"], 200, "{res}");
    let body: Value =
        serde_json::from_str(res["body"].as_str().expect("body")).expect("origin json");
    assert_eq!(body["origin"], "paid-origin");
    assert_eq!(body["query"], "city=Paris");
    assert!(
        body["headers"].get("payment-signature").is_none(),
        "payment header must not reach the origin"
    );
    assert_eq!(res["receipt"]["success"], true, "{res}");
    let tx = res["receipt"]["transaction"]
        .as_str()
        .expect("tx")
        .to_owned();
    assert!(tx.starts_with("0x") && tx.len() == 66, "{tx}");
    assert_eq!(res["receipt"]["network"], "eip155:31337");
    assert!(
        res["headers"]["cache-control"]
            .as_str()
            .expect("cc")
            .contains("private")
    );
    assert_eq!(p.balance(payer).await, payer_before - 10_000);
    assert_eq!(p.balance(p.pay_to()).await, merchant_before + 10_000);

    let ledger = p.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0]["event"], "settled");
    assert_eq!(ledger[0]["transaction"], tx.as_str());
    assert_eq!(
        ledger[0]["payer"].as_str().map(str::to_ascii_lowercase),
        Some(payer.to_ascii_lowercase())
    );
    assert_eq!(ledger[0]["amount"], "10000");
    assert_eq!(ledger[0]["rule"], "weather");
    // The query may carry personal data or tokens: neither the ledger nor the facilitator
    // gets it (the rule does not set `resource_query`).
    assert_eq!(ledger[0]["resource"], p.gw.url("/api/weather"));
    let calls = facilitator_calls(&p.fac("")).await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    // The facilitator and the ledger see the id the client got.
    let request_id = res["headers"]["x-request-id"]
        .as_str()
        .expect("x-request-id");
    assert_eq!(ledger[0]["request_id"], request_id);
    for c in &calls {
        assert_eq!(c["headers"]["x-request-id"], request_id, "{c}");
        assert_eq!(
            c["body"]["paymentPayload"]["resource"]["url"],
            p.gw.url("/api/weather"),
            "{c}"
        );
        assert!(!c["body"].to_string().contains("Paris"), "{c}");
    }

    // The same header again: refused locally, nothing moves.
    let header = res["paymentHeader"].as_str().expect("header");
    let r = client()
        .get(p.gw.url("/api/weather?city=Paris"))
        .header("PAYMENT-SIGNATURE", header)
        .send()
        .await
        .expect("replay");
    assert_eq!(r.status(), 402);
    let pr = decode_header(r.headers()["payment-required"].to_str().expect("ascii"));
    assert_eq!(pr["error"], "payment_already_used");
    assert_eq!(p.balance(payer).await, payer_before - 10_000);
    assert_eq!(p.balance(p.pay_to()).await, merchant_before + 10_000);
    assert_eq!(
        p.gw.metric(r#"x402_payments_total{outcome="settled",reason=""}"#)
            .await,
        1.0
    );
    assert_eq!(p.gw.metric(r#"x402_revenue_atomic_total{asset="0x5FbDB2315678afecb367f032d93F642f64180aa3",audience="agent",network="eip155:31337",rule="weather"}"#).await, 10000.0);
    assert_eq!(
        p.gw.metric(r#"x402_revenue_usd_total{audience="agent",rule="weather"}"#)
            .await,
        0.01
    );
    assert_eq!(p.origin.requests().await, 1);

    // A rule that keeps the query (`resource_query = true`): the ledger and the facilitator
    // see it.
    let kept = pay_v2(&p.gw.url("/search?q=rome"), key, &[]).await;
    assert_eq!(kept["status"], 200, "{kept}");
    let ledger = p.ledger();
    assert_eq!(ledger[1]["resource"], p.gw.url("/search?q=rome"));
    let log = facilitator_log(&p.fac("")).await;
    let settle = log
        .iter()
        .rfind(|e| e["path"] == "/settle")
        .expect("a settle call");
    assert_eq!(
        settle["body"]["paymentPayload"]["resource"]["url"],
        p.gw.url("/search?q=rome")
    );
}

#[tokio::test]
async fn v1_legacy_client_pays_once() {
    let p = Paid::start(84532, 1, "");
    let (payer, key) = p.payer(0);
    let (payer_before, merchant_before) = (p.balance(payer).await, p.balance(p.pay_to()).await);
    let args: Vec<String> = [
        "--url",
        &p.gw.url("/api/weather"),
        "--private-key",
        key,
        "--chain-id",
        "84532",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let res = node_json("lib/pay-v1.mjs", &args, &[]).await;
    assert_eq!(res["status"], 200, "{res}");
    assert_eq!(res["receipt"]["success"], true, "{res}");
    assert_eq!(res["receipt"]["network"], "base-sepolia");
    assert!(res["headers"].get("x-payment-response").is_some());
    assert_eq!(p.balance(payer).await, payer_before - 10_000);
    assert_eq!(p.balance(p.pay_to()).await, merchant_before + 10_000);
    let calls = p.facilitator_calls().await;
    assert_eq!(
        calls.iter().filter(|c| *c == "/settle").count(),
        1,
        "{calls:?}"
    );
}

#[tokio::test]
async fn concurrent_copies_of_one_payment_settle_once() {
    let p = Paid::start(31337, 1, "");
    let (payer, key) = p.payer(0);
    let before = p.balance(payer).await;
    let accepted = p.accepted("/api/weather").await;
    let header = pay::v2_header(
        &accepted,
        pay::signed_payload(
            &pay::key(key),
            &accepted,
            &Auth::for_requirements(&accepted),
        ),
    );
    let sends = (0..4).map(|_| {
        let (url, h) = (p.gw.url("/api/weather"), header.clone());
        tokio::spawn(async move {
            client()
                .get(url)
                .header("PAYMENT-SIGNATURE", h)
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        })
    });
    let mut statuses = Vec::new();
    for s in sends {
        statuses.push(s.await.expect("join"));
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 402, 402, 402]);
    assert_eq!(p.balance(payer).await, before - 10_000);
    let calls = p.facilitator_calls().await;
    assert_eq!(
        calls.iter().filter(|c| *c == "/settle").count(),
        1,
        "{calls:?}"
    );
}

#[tokio::test]
async fn unfunded_payer_gets_the_facilitator_reason_and_nothing_moves() {
    let p = Paid::start(31337, 1, "");
    let merchant_before = p.balance(p.pay_to()).await;
    let poor = alloy::signers::local::PrivateKeySigner::random();
    let accepted = p.accepted("/api/weather").await;
    let header = pay::v2_header(
        &accepted,
        pay::signed_payload(&poor, &accepted, &Auth::for_requirements(&accepted)),
    );
    let r = client()
        .get(p.gw.url("/api/weather"))
        .header("PAYMENT-SIGNATURE", header)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 402);
    let pr = decode_header(r.headers()["payment-required"].to_str().expect("ascii"));
    assert_eq!(
        pr["error"], "invalid_exact_evm_insufficient_balance",
        "{pr}"
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body["payer"].as_str().map(str::to_ascii_lowercase),
        Some(poor.address().to_string().to_ascii_lowercase())
    );
    assert_eq!(p.balance(p.pay_to()).await, merchant_before);
    assert_eq!(p.facilitator_calls().await, vec!["/verify".to_string()]);
    assert_eq!(p.origin.requests().await, 0);
}

#[tokio::test]
async fn bad_payments_are_refused_locally_without_a_facilitator_call() {
    let p = Paid::start(31337, 1, "");
    let (payer, key) = p.payer(0);
    let signer = pay::key(key);
    let accepted = p.accepted("/api/weather").await;
    let good = Auth::for_requirements(&accepted);
    let signed = |a: &Auth| pay::signed_payload(&signer, &accepted, a);
    let with = |f: &dyn Fn(&mut Auth)| {
        let mut a = good.clone();
        a.nonce = pay::random_nonce();
        f(&mut a);
        pay::v2_header(&accepted, signed(&a))
    };
    let accepted_other = |k: &str, v: Value| {
        let mut acc = accepted.clone();
        acc[k] = v;
        pay::v2_header(&acc, signed(&good))
    };
    let mut bad_sig = signed(&good);
    let s = bad_sig["signature"].as_str().expect("sig").to_owned();
    bad_sig["signature"] =
        json!(format!("{}{}", &s[..10], if &s[10..11] == "a" { "b" } else { "a" }) + &s[11..]);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "underpaid",
            with(&|a| a.value = 9_999),
            "invalid_exact_evm_payload_authorization_value_mismatch",
        ),
        (
            "overpaid",
            with(&|a| a.value = 10_001),
            "invalid_exact_evm_payload_authorization_value_mismatch",
        ),
        (
            "wrong payTo",
            with(&|a| a.to = "0x000000000000000000000000000000000000dEaD".into()),
            "invalid_exact_evm_payload_recipient_mismatch",
        ),
        (
            "expired",
            with(&|a| a.valid_before = pay::now() + 2),
            "invalid_exact_evm_payload_authorization_valid_before",
        ),
        (
            "not yet valid",
            with(&|a| a.valid_after = pay::now() + 120),
            "invalid_exact_evm_payload_authorization_valid_after",
        ),
        (
            "too long",
            with(&|a| a.valid_before = pay::now() + 86_400),
            "authorization_validity_too_long",
        ),
        (
            "echoed asset changed",
            accepted_other("asset", json!("0x000000000000000000000000000000000000bEEF")),
            "no_matching_requirements",
        ),
        (
            "echoed amount changed",
            accepted_other("amount", json!("1")),
            "no_matching_requirements",
        ),
        (
            "echoed payTo changed",
            accepted_other("payTo", json!("0x000000000000000000000000000000000000dEaD")),
            "no_matching_requirements",
        ),
        (
            "wrong network",
            accepted_other("network", json!("eip155:8453")),
            "invalid_network",
        ),
        (
            "wrong scheme",
            accepted_other("scheme", json!("upto")),
            "unsupported_scheme",
        ),
        (
            "bad signature",
            pay::v2_header(&accepted, bad_sig),
            "invalid_exact_evm_payload_signature",
        ),
        (
            "garbage base64",
            "!!!not-base64!!!".into(),
            "invalid_payment_header_encoding",
        ),
        (
            "url-safe base64",
            pay::v2_header(&accepted, signed(&good))
                .replace('+', "-")
                .replace('/', "_")
                + "-_",
            "invalid_payment_header_encoding",
        ),
        (
            "not json",
            pay::b64(&json!("just a string")),
            "invalid_payload",
        ),
        ("oversized", "A".repeat(20_000), "payment_header_too_large"),
        (
            "v1 version in v2 header",
            pay::b64(&json!({"x402Version": 1, "accepted": accepted, "payload": signed(&good)})),
            "invalid_x402_version",
        ),
    ];
    for (name, header, reason) in &cases {
        let r = client()
            .get(p.gw.url("/api/weather"))
            .header("PAYMENT-SIGNATURE", header)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 402, "{name}");
        let pr = decode_header(r.headers()["payment-required"].to_str().expect("ascii"));
        assert_eq!(pr["error"], *reason, "{name}");
        assert_eq!(
            pr["accepts"][0], accepted,
            "{name}: a refusal carries the requirements"
        );
    }
    // Both headers at once, and two copies of one.
    let h = pay::v2_header(&accepted, signed(&good));
    let r = client()
        .get(p.gw.url("/api/weather"))
        .header("PAYMENT-SIGNATURE", &h)
        .header("X-PAYMENT", &h)
        .send()
        .await
        .expect("send");
    assert_eq!(
        decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["error"],
        "multiple_payment_headers"
    );
    assert!(
        p.facilitator_calls().await.is_empty(),
        "no refusal may reach the facilitator"
    );
    assert_eq!(p.origin.requests().await, 0);
    assert!(p.balance(payer).await > 0);
}

#[tokio::test]
async fn origin_error_in_after_mode_settles_nothing() {
    let p = Paid::start(31337, 1, "");
    let (payer, key) = p.payer(0);
    let before = p.balance(payer).await;
    let res = pay_v2(&p.gw.url("/status/500"), key, &[]).await;
    assert_eq!(res["status"], 500, "{res}");
    assert!(res["receipt"].is_null());
    assert_eq!(p.balance(payer).await, before);
    let calls = p.facilitator_calls().await;
    assert!(
        calls.contains(&"/verify".to_string()) && !calls.contains(&"/settle".to_string()),
        "{calls:?}"
    );
    assert!(p.ledger().is_empty());
    // The reservation was released: the same, unsettled payment still buys a request that
    // succeeds (the requirements are identical), and then it is spent.
    let header = res["paymentHeader"].as_str().expect("header");
    let r = client()
        .get(p.gw.url("/status/200"))
        .header("PAYMENT-SIGNATURE", header)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(p.balance(payer).await, before - 10_000);
    let calls = p.facilitator_calls().await;
    assert_eq!(
        calls,
        vec!["/verify".to_string(), "/settle".to_string()],
        "the retried payload was not re-verified"
    );
}

#[tokio::test]
async fn before_mode_settles_first_and_records_a_failed_delivery() {
    let p = Paid::start(31337, 1, "settlement = \"before\"");
    let (payer, key) = p.payer(0);
    let before = p.balance(payer).await;
    let res = pay_v2(&p.gw.url("/status/500"), key, &[]).await;
    assert_eq!(res["status"], 500, "{res}");
    assert_eq!(
        res["receipt"]["success"], true,
        "the receipt is returned with the origin's failure: {res}"
    );
    assert_eq!(p.balance(payer).await, before - 10_000);
    let ledger = p.ledger();
    let events: Vec<&str> = ledger
        .iter()
        .map(|l| l["event"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(events, vec!["settled", "delivery_failed"], "{ledger:?}");
    assert_eq!(ledger[1]["upstream_status"], 500);
    assert_eq!(p.gw.metric("x402_failed_deliveries_total").await, 1.0);
}

/// The client reads the head of a paid 200 MB answer and hangs up: the payment settled (the
/// status line went out), the body did not arrive, and the ledger says so for the refund
/// trail: `settled`, then `delivery_failed` with `client_disconnected`, once.
#[tokio::test]
async fn a_client_gone_mid_body_after_settlement_is_recorded_as_a_failed_delivery() {
    use std::io::{Read, Write};
    let p = Paid::start(31337, 1, "");
    let (payer, key) = p.payer(0);
    let before = p.balance(payer).await;
    let path = "/bytes/200000000";
    let accepted = p.accepted(path).await;
    let header = pay::v2_header(
        &accepted,
        pay::signed_payload(
            &pay::key(key),
            &accepted,
            &Auth::for_requirements(&accepted),
        ),
    );
    let mut s = std::net::TcpStream::connect(&p.gw.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nPAYMENT-SIGNATURE: {header}\r\n\r\n",
        p.gw.addr
    )
    .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() < 64 * 1024 {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head:.200}");
    assert!(head.contains("payment-response:"), "{head:.400}");
    // Unread data in the socket: closing it resets the connection.
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events: Vec<String> = p
            .ledger()
            .iter()
            .map(|l| l["event"].as_str().unwrap_or("").to_owned())
            .collect();
        if events.len() >= 2 || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        events,
        vec!["settled", "delivery_failed"],
        "{}",
        p.gw.log_text()
    );
    let ledger = p.ledger();
    assert_eq!(ledger[1]["reason"], "client_disconnected");
    assert_eq!(ledger[1]["transaction"], ledger[0]["transaction"]);
    assert_eq!(p.balance(payer).await, before - 10_000, "charged once");
    assert_eq!(p.gw.metric("x402_failed_deliveries_total").await, 1.0);
}

#[tokio::test]
async fn facilitator_down_or_slow_charges_nothing() {
    // Down: a port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1"]);
    let origin = Origin::start("o");
    let gw = Gateway::start(
        &pay_config(&origin.addr, &dev.info, Some(&dead_url), ""),
        &[("rules.toml", RULES)],
    );
    let s = |v: &Value| v.as_str().expect("string").to_owned();
    let (key, payer) = (
        s(&dev.info["payers"][0]["privateKey"]),
        s(&dev.info["payers"][0]["address"]),
    );
    let (rpc, token) = (s(&dev.info["rpcUrl"]), s(&dev.info["token"]["address"]));
    let (key, payer, rpc, token) = (key.as_str(), payer.as_str(), rpc.as_str(), token.as_str());
    let before = balance(rpc, token, payer).await;
    let res = pay_v2(&gw.url("/api/weather"), key, &[]).await;
    assert_eq!(res["status"], 503, "{res}");
    assert!(res["headers"]["retry-after"].is_string());
    assert_eq!(
        decode_header(res["headers"]["payment-required"].as_str().expect("pr"))["error"],
        "facilitator_unavailable"
    );
    assert_eq!(balance(rpc, token, payer).await, before);
    assert_eq!(origin.requests().await, 0);
    drop(gw);

    // Slow: verify takes longer than the gateway's 5 s timeout.
    let p = Paid {
        gw: Gateway::start(
            &pay_config(&origin.addr, &dev.info, None, ""),
            &[("rules.toml", RULES)],
        ),
        dev,
        origin,
    };
    p.facilitator_config(json!({"verifyDelayMs": 10_000})).await;
    let started = std::time::Instant::now();
    let res = pay_v2(&p.gw.url("/api/weather"), key, &[]).await;
    assert_eq!(res["status"], 503, "{res}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(p.balance(payer).await, before);
    assert!(!p.facilitator_calls().await.contains(&"/settle".to_string()));
}

#[tokio::test]
async fn failed_settlement_after_the_origin_answered_sends_no_content() {
    let p = Paid::start(31337, 1, "forward_payer_headers = true");
    let (payer, key) = p.payer(0);
    let before = p.balance(payer).await;
    p.facilitator_config(json!({"settleOverride": {"status": 200, "body": {"success": false, "errorReason": "invalid_exact_evm_transaction_failed", "transaction": "", "network": "eip155:31337"}, "times": 1}})).await;
    let res = pay_v2(&p.gw.url("/api/weather"), key, &[]).await;
    assert_eq!(res["status"], 402, "{res}");
    let body = res["body"].as_str().expect("body");
    assert!(
        !body.contains("paid-origin"),
        "origin content leaked: {body}"
    );
    assert_eq!(res["receipt"]["success"], false, "{res}");
    assert_eq!(
        res["receipt"]["errorReason"],
        "invalid_exact_evm_transaction_failed"
    );
    assert_eq!(
        decode_header(res["headers"]["payment-required"].as_str().expect("pr"))["error"],
        "invalid_exact_evm_transaction_failed"
    );
    assert_eq!(p.balance(payer).await, before);
    let ledger = p.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0]["event"], "settle_failed");

    // The facilitator said it did not settle: the payment may be used again, and now it works.
    let header = res["paymentHeader"].as_str().expect("header");
    let r = client()
        .get(p.gw.url("/api/weather"))
        .header("PAYMENT-SIGNATURE", header)
        .header("X-Payment-Payer", "0xspoofed")
        .send()
        .await
        .expect("retry");
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.expect("json");
    assert_eq!(
        seen["headers"]["x-payment-payer"]
            .as_str()
            .map(str::to_ascii_lowercase),
        Some(payer.to_ascii_lowercase())
    );
    assert_eq!(seen["headers"]["x-payment-amount"], "10000");
    assert_eq!(seen["headers"]["x-payment-rule"], "weather");
    assert_eq!(p.balance(payer).await, before - 10_000);
}

#[tokio::test]
async fn payer_headers_cannot_be_spoofed_on_free_routes() {
    let p = Paid::start(31337, 1, "forward_payer_headers = true");
    let r = client()
        .get(p.gw.url("/free/page"))
        .header("X-Payment-Payer", "0xspoofed")
        .header("X-Payment-Amount", "999")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.expect("json");
    assert!(
        seen["headers"].get("x-payment-payer").is_none()
            && seen["headers"].get("x-payment-amount").is_none(),
        "{seen}"
    );
}

/// Two replicas share nothing but the chain: a payment settled by one and replayed at the other
/// is refused there (by the facilitator's check of the on-chain nonce, or at settlement), no
/// content is sent for it and no tokens move a second time.
#[tokio::test]
async fn a_payment_replayed_at_another_replica_moves_nothing_and_serves_nothing() {
    let p = Paid::start(31337, 1, "");
    let replica_origin = Origin::start("replica-origin");
    let replica = Gateway::start(
        &pay_config(&replica_origin.addr, &p.dev.info, None, ""),
        &[("rules.toml", RULES)],
    );
    let (payer, key) = p.payer(0);
    let (payer_before, merchant_before) = (p.balance(payer).await, p.balance(p.pay_to()).await);
    let res = pay_v2(&p.gw.url("/api/weather"), key, &[]).await;
    assert_eq!(res["status"], 200, "{res}");
    let header = res["paymentHeader"].as_str().expect("header");

    let r = client()
        .get(replica.url("/api/weather"))
        .header("PAYMENT-SIGNATURE", header)
        .send()
        .await
        .expect("replay");
    assert_eq!(r.status(), 402);
    let reason = decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["error"]
        .as_str()
        .expect("reason")
        .to_owned();
    let body = r.text().await.expect("body");
    assert!(
        !body.contains("replica-origin"),
        "content served for a replayed payment: {body}"
    );
    // The facilitator's verify reads the nonce's state on chain: refused before forwarding.
    assert_eq!(reason, "invalid_exact_evm_nonce_already_used");
    assert_eq!(replica_origin.requests().await, 0);
    assert_eq!(p.balance(payer).await, payer_before - 10_000);
    assert_eq!(p.balance(p.pay_to()).await, merchant_before + 10_000);
    let settled = std::fs::read_to_string(replica.path("receipts.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"settled\""))
        .count();
    assert_eq!(settled, 0, "the replica recorded a settlement");
}

/// Sends `head` and `body` on one connection (the body right away, as clients that do not
/// wait for `100 Continue` do) and returns every status line received and the final body.
fn exchange(addr: &str, head: &str, body: &[u8]) -> (Vec<u16>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(body).expect("body");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let statuses = text
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
        .collect();
    let body = text.rsplit("\r\n\r\n").next().unwrap_or("").to_owned();
    (statuses, body)
}

/// `100 Continue` and `103 Early Hints` are not the answer: a paid request whose origin sends
/// one and then fails is not charged; one that then succeeds is charged once, on the final
/// status.
#[tokio::test]
async fn interim_responses_never_settle_only_the_final_status_does() {
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1"]);
    let origin = Origin::start_lenient("interim-origin");
    let rules = "[[rule]]\nid = \"interim\"\nprefix = \"/interim/\"\nprice = \"$0.01\"\n";
    let gw = Gateway::start(
        &pay_config(&origin.addr, &dev.info, None, ""),
        &[("rules.toml", rules)],
    );
    let (rpc, token) = (
        dev.info["rpcUrl"].as_str().expect("rpc"),
        dev.info["token"]["address"].as_str().expect("token"),
    );
    let payer = dev.info["payers"][0]["address"].as_str().expect("payer");
    let key = pay::key(dev.info["payers"][0]["privateKey"].as_str().expect("key"));
    let start = balance(rpc, token, payer).await;
    let header_for = |path: &str| {
        let r = raw_request(
            &gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr).as_bytes(),
        );
        let v = r
            .lines()
            .find_map(|l| {
                l.strip_prefix("payment-required: ")
                    .or_else(|| l.strip_prefix("PAYMENT-REQUIRED: "))
            })
            .expect("challenge");
        let accepted = decode_header(v.trim())["accepts"][0].clone();
        pay::v2_header(
            &accepted,
            pay::signed_payload(&key, &accepted, &Auth::for_requirements(&accepted)),
        )
    };
    let send = |path: &str, sig: &str| {
        exchange(
            &gw.addr,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nExpect: 100-continue\r\nContent-Length: 5\r\nPAYMENT-SIGNATURE: {sig}\r\nConnection: close\r\n\r\n",
                gw.addr
            ),
            b"hello",
        )
    };
    // 100, then 500: nothing charged, no receipt, nothing in the ledger.
    let sig = header_for("/interim/100/500");
    let (statuses, _) = send("/interim/100/500", &sig);
    assert_eq!(statuses.last(), Some(&500), "{statuses:?}");
    assert_eq!(balance(rpc, token, payer).await, start, "charged for a 500");
    assert!(
        std::fs::read_to_string(gw.path("receipts.jsonl"))
            .unwrap_or_default()
            .is_empty()
    );
    // 103, then 500: the same.
    let sig = header_for("/interim/103/500");
    let (statuses, _) = send("/interim/103/500", &sig);
    assert_eq!(statuses.last(), Some(&500), "{statuses:?}");
    assert_eq!(balance(rpc, token, payer).await, start, "charged for a 500");
    // 100, then 200: charged once, on the final status, with the receipt on the 200.
    let sig = header_for("/interim/100/200");
    let (statuses, body) = send("/interim/100/200", &sig);
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    assert!(body.contains("\"lenient\":true"), "{body}");
    assert_eq!(balance(rpc, token, payer).await, start - 10_000);
    let ledger = std::fs::read_to_string(gw.path("receipts.jsonl")).unwrap_or_default();
    let lines: Vec<Value> = ledger
        .lines()
        .map(|l| serde_json::from_str(l).expect("ledger line"))
        .collect();
    assert_eq!(lines.len(), 1, "{ledger}");
    assert_eq!(lines[0]["event"], "settled");
    assert_eq!(lines[0]["upstream_status"], 200);
}

/// Two replicas, each with its own facilitator (and relayer), given the same payment at the
/// same instant: both verify it (the nonce is still unused), both settle after a slow origin,
/// and the chain lets one transaction through. Exactly one client gets the content; the
/// other's settlement is not its own and serves nothing; one transfer, one `settled` line.
#[tokio::test]
async fn the_same_payment_at_two_replicas_at_once_serves_once_and_moves_once() {
    const SECOND_RELAYER_KEY: &str =
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1"]);
    let rpc = dev.info["rpcUrl"].as_str().expect("rpc").to_owned();
    let other_fac = NodeProc::start(
        "lib/facilitator.mjs",
        &["--rpc-url", &rpc, "--private-key", SECOND_RELAYER_KEY],
    );
    let rules = "[[rule]]\nid = \"slow\"\nprefix = \"/slow/\"\nprice = \"$0.01\"\n";
    let (oa, ob) = (Origin::start("replica-a"), Origin::start("replica-b"));
    // Each replica's facilitator lists every address it settles from (`signers_complete`).
    let config = |origin: &str, fac: &str| {
        paid_config(
            origin,
            &dev.info,
            &facilitator_toml("local", fac, 0, "signers_complete = true"),
            "",
        )
    };
    let a_url = dev.info["facilitatorUrl"].as_str().expect("fac");
    let a = Gateway::start(&config(&oa.addr, a_url), &[("rules.toml", rules)]);
    let b_url = other_fac.info["facilitatorUrl"].as_str().expect("fac");
    let b = Gateway::start(&config(&ob.addr, b_url), &[("rules.toml", rules)]);
    // A third replica shares `a`'s facilitator: the second settle of one authorization then
    // reaches the same facilitator (a duplicate, or a nonce already used).
    let oc = Origin::start("replica-c");
    let c = Gateway::start(&config(&oc.addr, a_url), &[("rules.toml", rules)]);
    let token = dev.info["token"]["address"].as_str().expect("token");
    let payer = dev.info["payers"][0]["address"].as_str().expect("payer");
    let key = pay::key(dev.info["payers"][0]["privateKey"].as_str().expect("key"));
    let start = balance(&rpc, token, payer).await;
    for gw in [&a, &b, &c] {
        gw.wait_facilitator_signers("local").await;
    }
    // `a` and `b` settle through different facilitators (different signers); `a` and `c`
    // through the same one.
    let pairs = [(&a, &b), (&b, &a), (&a, &c), (&c, &a)];
    for (round, (first, second)) in pairs.into_iter().enumerate() {
        let round = round as u128;
        let r = client().get(a.url("/slow/600")).send().await.expect("402");
        let accepted =
            decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["accepts"][0]
                .clone();
        let header = pay::v2_header(
            &accepted,
            pay::signed_payload(&key, &accepted, &Auth::for_requirements(&accepted)),
        );
        let send = |gw: &Gateway| {
            client()
                .get(gw.url("/slow/600"))
                .header("PAYMENT-SIGNATURE", &header)
                .send()
        };
        let (ra, rb) = tokio::join!(send(first), send(second));
        let mut served = 0;
        for (name, r) in [("first", ra), ("second", rb)] {
            let r = r.expect("send");
            let status = r.status().as_u16();
            let reason = r
                .headers()
                .get("payment-required")
                .and_then(|v| v.to_str().ok())
                .map(|v| decode_header(v)["error"].clone());
            let body = r.text().await.unwrap_or_default();
            if status == 200 {
                served += 1;
                assert!(body.contains("replica-"), "{name}: {body}");
            } else {
                // The loser is refused as a used payment. Its facilitator's settle can fail
                // without naming a transaction (a 500 when the other replica's transfer
                // landed between that facilitator's checks and its send): the chain then
                // shows the authorization used by a transaction nobody named. Sent from
                // another facilitator's signer, that is still a used payment; from the
                // loser's own facilitator's signer (a shared facilitator), it may have been
                // this very request's, so it is an unconfirmed settlement (503). Either way
                // nothing is served or charged.
                let reason = reason.as_ref().and_then(|r| r.as_str());
                let shared = round >= 2;
                assert!(
                    (status == 402 && reason == Some("payment_already_used"))
                        || (shared && status == 503 && reason == Some("settlement_unconfirmed")),
                    "round {round}: {name} answered {status} ({reason:?})"
                );
                assert!(
                    !body.contains("\"origin\":\"replica-"),
                    "{name} answered {status} with the origin's content: {body}"
                );
            }
        }
        assert_eq!(served, 1, "round {round}: exactly one replica serves");
        assert_eq!(
            balance(&rpc, token, payer).await,
            start - 10_000 * (round + 1),
            "round {round}: one transfer"
        );
    }
    let settled = |gw: &Gateway| {
        std::fs::read_to_string(gw.path("receipts.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"event\":\"settled\""))
            .count()
    };
    assert_eq!(
        settled(&a) + settled(&b) + settled(&c),
        4,
        "one settled line per payment"
    );
}
