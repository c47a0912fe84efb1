//! Faults and resource exhaustion with real misbehaving processes: origins that reset mid-body
//! or trickle their headers, a chain RPC node that never answers, idle and slowloris
//! connection floods, and oversized request bodies. Each test checks what the client gets
//! and, where money is involved, the ledger, the metrics and the chain.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::chain::{balance, relayer_nonce};
use crate::support::faulty::{FaultyServer, RESET_DECLARED, RESET_SENT};
use crate::support::pay;
use crate::support::*;

const RULES: &str = r#"
[[rule]]
id = "paid"
prefix = "/paid"
price = "$0.01"
"#;

/// How a raw response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The whole declared body arrived.
    Complete,
    /// The server closed the connection (FIN) before the declared end.
    Closed,
    /// The connection was reset.
    Reset,
    /// Nothing more arrived before the test's deadline.
    TimedOut,
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
    end: End,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Writes `request` on a fresh connection and reads one response until its declared end, the
/// connection's end, or `limit`.
async fn exchange(addr: &str, request: &[u8], limit: Duration) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    read_response(&mut s, limit).await
}

async fn read_response(s: &mut TcpStream, limit: Duration) -> RawResponse {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut head_end = None;
    let end = loop {
        if let Some(h) = head_end {
            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
            let declared = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if declared.is_some_and(|n| buf.len() >= h + 4 + n) {
                break End::Complete;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => break End::TimedOut,
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
            Ok(Err(e)) => panic!("read: {e}"),
        }
        if head_end.is_none() {
            head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        }
    };
    let h = head_end.unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..h]).into_owned();
    RawResponse {
        status: raw_status(&head),
        body: buf.get(h + 4..).unwrap_or_default().to_vec(),
        head,
        end,
    }
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n{extra}\r\n").into_bytes()
}

/// A devnet with the reference facilitator, a misbehaving origin and a gateway.
struct Paid {
    dev: NodeProc,
    origin: FaultyServer,
    gw: Gateway,
}

fn text(v: &Value) -> &str {
    v.as_str().expect("string")
}

impl Paid {
    /// `upstream` and `server` are added to the `[upstreams.origin]` and `[server]` tables.
    fn start(pause: Duration, upstream: &str, server: &str) -> Paid {
        let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1"]);
        let origin = FaultyServer::origin(pause);
        let fac = facilitator_toml("node", text(&dev.info["facilitatorUrl"]), 0, "");
        let config = paid_config(&origin.addr, &dev.info, &fac, "")
            .replace(
                &format!("peers = [\"{}\"]\n", origin.addr),
                &format!("peers = [\"{}\"]\n{upstream}\n", origin.addr),
            )
            .replace("[server]\n", &format!("[server]\n{server}\n"));
        let gw = Gateway::start(&config, &[("rules.toml", RULES)]);
        Paid { dev, origin, gw }
    }

    fn payer(&self) -> (&str, &str) {
        let p = &self.dev.info["payers"][0];
        (text(&p["address"]), text(&p["privateKey"]))
    }

    async fn balance(&self, who: &str) -> u128 {
        balance(
            text(&self.dev.info["rpcUrl"]),
            text(&self.dev.info["token"]["address"]),
            who,
        )
        .await
    }

    /// (payer, merchant) balances.
    async fn balances(&self) -> (u128, u128) {
        (
            self.balance(self.payer().0).await,
            self.balance(text(&self.dev.info["payTo"])).await,
        )
    }

    /// Paths of the `/verify` and `/settle` calls the facilitator received.
    async fn facilitator_calls(&self) -> Vec<String> {
        facilitator_paths(text(&self.dev.info["facilitatorUrl"])).await
    }

    fn ledger_events(&self) -> Vec<Value> {
        ledger(&self.gw)
    }

    /// A fresh signed `PAYMENT-SIGNATURE` for `path`.
    async fn header(&self, path: &str) -> String {
        pay::fresh_header(&self.gw, path, self.payer().1).await
    }
}

fn ledger(gw: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(gw.path("receipts.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("ledger line"))
        .collect()
}

fn events(ledger: &[Value]) -> Vec<&str> {
    ledger
        .iter()
        .map(|l| l["event"].as_str().unwrap_or(""))
        .collect()
}

const SETTLED: &str = r#"x402_payments_total{outcome="settled",reason=""}"#;

#[tokio::test]
async fn origin_reset_mid_body_on_a_free_route_aborts_the_response() {
    let origin = FaultyServer::origin(Duration::ZERO);
    let gw = Gateway::start(&config(&origin.addr, ""), &[]);
    let r = exchange(&gw.addr, &get("/files/reset", ""), Duration::from_secs(20)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-length"),
        Some(RESET_DECLARED.to_string().as_str())
    );
    assert!(
        matches!(r.end, End::Closed | End::Reset),
        "the client must see the connection end, not wait: {:?} after {} bytes",
        r.end,
        r.body.len()
    );
    assert!(r.body.len() <= RESET_SENT, "{} body bytes", r.body.len());
    // The gateway is still up and serves the next request through the same upstream.
    let r = exchange(&gw.addr, &get("/files/ok", ""), Duration::from_secs(20)).await;
    assert_eq!((r.status, r.end), (200, End::Complete), "{r:?}");
    assert_eq!(r.json()["bytes"], 0);
    assert_eq!(origin.seen.requests(), 2);
    let failed = gw
        .metrics()
        .await
        .lines()
        .any(|l| l.starts_with("x402_requests_total") && l.contains("decision=\"failed\""));
    assert!(failed, "the aborted response is counted as failed");
}

/// In the default `after` mode the gateway settles when the origin's status line arrives,
/// before any body byte (the body is streamed, never buffered). An origin that breaks off its
/// body after that has been paid for: the client gets the receipt with a truncated body, and
/// the ledger records the settlement and then a `delivery_failed` line naming the same
/// transaction, so the operator can refund. Not charging here would mean holding the whole
/// response until its end before settling (buffering), which `after` mode does not do.
#[tokio::test]
async fn origin_reset_mid_body_on_a_paid_route_is_recorded_as_a_failed_delivery() {
    let p = Paid::start(Duration::ZERO, "", "");
    let (payer_before, merchant_before) = p.balances().await;
    let header = p.header("/paid/reset").await;
    let r = exchange(
        &p.gw.addr,
        &get("/paid/reset", &format!("PAYMENT-SIGNATURE: {header}\r\n")),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        matches!(r.end, End::Closed | End::Reset),
        "the client must see the connection end: {:?}",
        r.end
    );
    assert!(r.body.len() <= RESET_SENT, "{} body bytes", r.body.len());
    // The head went out before the body broke: it carries the receipt.
    let receipt = decode_header(r.header("payment-response").expect("receipt"));
    assert_eq!(receipt["success"], true, "{receipt}");
    let tx = text(&receipt["transaction"]).to_owned();

    assert_eq!(p.facilitator_calls().await, vec!["/verify", "/settle"]);
    assert_eq!(
        p.balances().await,
        (payer_before - 10_000, merchant_before + 10_000)
    );
    let ledger = p.ledger_events();
    assert_eq!(
        events(&ledger),
        vec!["settled", "delivery_failed"],
        "{ledger:?}"
    );
    assert_eq!(ledger[0]["settlement"], "after");
    assert_eq!(ledger[0]["upstream_status"], 200);
    assert_eq!(ledger[1]["transaction"], tx.as_str());
    assert_eq!(ledger[1]["reason"], "origin_failed_after_settlement");
    assert_eq!(p.gw.metric(SETTLED).await, 1.0);
    assert_eq!(p.gw.metric("x402_failed_deliveries_total").await, 1.0);
    assert_eq!(
        p.gw.metric(r#"x402_requests_total{decision="failed",rule="paid",status="2xx"}"#)
            .await,
        1.0
    );
    // Still serving.
    let r = exchange(&p.gw.addr, &get("/free/ok", ""), Duration::from_secs(20)).await;
    assert_eq!((r.status, r.end), (200, End::Complete), "{r:?}");
}

#[tokio::test]
async fn origin_trickling_its_headers_is_a_504_and_never_charged() {
    // Bytes every 400 ms; the upstream read timeout is 150 ms.
    let p = Paid::start(Duration::from_millis(400), "read_timeout_ms = 150", "");
    let r = exchange(
        &p.gw.addr,
        &get("/free/slow-head", ""),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!((r.status, r.end), (504, End::Complete), "{r:?}");
    assert_eq!(r.json()["error"], "upstream_timeout");

    let (payer, _) = p.payer();
    let payer = payer.to_owned();
    let before = p.balances().await;
    let header = p.header("/paid/slow-head").await;
    let r = exchange(
        &p.gw.addr,
        &get(
            "/paid/slow-head",
            &format!("PAYMENT-SIGNATURE: {header}\r\n"),
        ),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!((r.status, r.end), (504, End::Complete), "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{r:?}"
    );
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(r.header("payment-response").is_none(), "{r:?}");
    assert_eq!(p.facilitator_calls().await, vec!["/verify"]);
    assert_eq!(p.balances().await, before);
    assert_eq!(p.balance(&payer).await, before.0);
    assert!(
        !events(&p.ledger_events()).contains(&"settled"),
        "{:?}",
        p.ledger_events()
    );
    assert_eq!(p.gw.metric(SETTLED).await, 0.0);
    assert_eq!(p.origin.seen.requests(), 2);
}

/// A gateway whose only facilitator is the built-in settler, reaching the chain through `rpc`
/// (1 s per RPC call, 2 s for a receipt).
fn local_settler_config(origin: &str, dev: &Value, rpc: &str) -> String {
    let mut info = dev.clone();
    info["rpcUrl"] = Value::String(rpc.to_owned());
    paid_config(origin, &info, &local_settler_toml(dev, 1000, 2000), "")
}

/// The chain node accepts connections and never answers. Once its RPC timeout passes the
/// settler fails (a 5xx, not a verdict on the payment), so the closed failure policy answers
/// 503 `facilitator_unavailable` with `Retry-After`; nothing is sent or charged; free routes
/// are served meanwhile. The same payment goes through exactly once when the node is
/// back (a reload pointing at a working one).
#[tokio::test]
async fn stalled_chain_rpc_refuses_payments_without_charging_and_free_routes_flow() {
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1", "--no-facilitator"]);
    let (rpc, token) = (
        text(&dev.info["rpcUrl"]),
        text(&dev.info["token"]["address"]),
    );
    let (payer, key) = (
        text(&dev.info["payers"][0]["address"]),
        text(&dev.info["payers"][0]["privateKey"]),
    );
    let pay_to = text(&dev.info["payTo"]);
    let node = FaultyServer::stall();
    let origin = Origin::start("o");
    let gw = Gateway::start(
        &local_settler_config(&origin.addr, &dev.info, &node.url()),
        &[("rules.toml", RULES)],
    );
    let before = (
        balance(rpc, token, payer).await,
        balance(rpc, token, pay_to).await,
    );
    let nonce_before = relayer_nonce(rpc).await;
    let header = pay::fresh_header(&gw, "/paid/weather", key).await;

    let started = Instant::now();
    let paying = tokio::spawn({
        let (url, header) = (gw.url("/paid/weather"), header.clone());
        async move {
            let r = client()
                .get(url)
                .header("PAYMENT-SIGNATURE", header)
                .send()
                .await
                .expect("send");
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").is_some();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body, retry_after)
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.seen.connections() == 0 {
        assert!(
            Instant::now() < deadline,
            "the settler never reached the node"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While the payment waits on the node, free traffic flows.
    let r = client()
        .get(gw.url("/free/page"))
        .send()
        .await
        .expect("free");
    assert_eq!(r.status(), 200);
    assert!(
        !paying.is_finished(),
        "the payment did not wait on the node"
    );

    let (status, body, retry_after) = paying.await.expect("join");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "facilitator_unavailable", "{body}");
    assert!(retry_after, "a 503 says when to retry");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not bounded by the 1 s RPC timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        (
            balance(rpc, token, payer).await,
            balance(rpc, token, pay_to).await
        ),
        before
    );
    assert_eq!(
        relayer_nonce(rpc).await,
        nonce_before,
        "a transaction was sent"
    );
    assert!(ledger(&gw).is_empty(), "{:?}", ledger(&gw));
    assert_eq!(gw.metric(SETTLED).await, 0.0);
    assert_eq!(
        origin.requests().await,
        1,
        "only the free request reached it"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("x402_payments_total{")
                && l.contains(r#"reason="facilitator_unavailable""#)
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // The node is back: the refused payment was not consumed and now pays, once.
    let config = local_settler_config(&origin.addr, &dev.info, rpc);
    let generation = gw.generation().await;
    gw.write("gateway.toml", &config);
    gw.wait_generation(generation + 1).await;
    let r = client()
        .get(gw.url("/paid/weather"))
        .header("PAYMENT-SIGNATURE", &header)
        .send()
        .await
        .expect("retry");
    assert_eq!(r.status(), 200, "{}", gw.log_text());
    assert_eq!(
        (
            balance(rpc, token, payer).await,
            balance(rpc, token, pay_to).await
        ),
        (before.0 - 10_000, before.1 + 10_000)
    );
    assert_eq!(relayer_nonce(rpc).await, nonce_before + 1);
    assert_eq!(events(&ledger(&gw)), vec!["settled"]);
}

/// A facilitator and a chain node that answer with redirects: the gateway follows neither
/// (a redirect would carry payment payloads, API keys and JSON-RPC calls where the operator
/// never pointed it), so the payment is refused with a 503, the real facilitator and node
/// behind the redirects hear nothing, and nothing moves. The node's URL comes from `${VAR}`
/// and carries a key: `/config` and the log show it only as scheme, host and port.
#[tokio::test]
async fn redirects_from_facilitators_and_nodes_are_not_followed_and_node_keys_stay_secret() {
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1"]);
    let (rpc, token) = (
        text(&dev.info["rpcUrl"]),
        text(&dev.info["token"]["address"]),
    );
    let (payer, key) = (
        text(&dev.info["payers"][0]["address"]),
        text(&dev.info["payers"][0]["privateKey"]),
    );
    let network = format!("eip155:{}", dev.info["chainId"].as_u64().expect("chain id"));
    let fac_url = text(&dev.info["facilitatorUrl"]);
    let origin = Origin::start("o");
    let before = balance(rpc, token, payer).await;
    let nonce_before = relayer_nonce(rpc).await;

    // A facilitator URL that redirects to the real facilitator.
    let fac_redirect = FaultyServer::redirect(fac_url);
    let gw = Gateway::start(
        &paid_config(
            &origin.addr,
            &dev.info,
            &facilitator_toml(
                "redirecting",
                &fac_redirect.url(),
                0,
                &format!("networks = [\"{network}\"]"),
            ),
            "",
        ),
        &[("rules.toml", RULES)],
    );
    let header = pay::fresh_header(&gw, "/paid/x", key).await;
    let r = client()
        .get(gw.url("/paid/x"))
        .header("PAYMENT-SIGNATURE", &header)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"],
        "facilitator_unavailable"
    );
    assert!(
        fac_redirect.seen.requests() > 0,
        "the facilitator was never called"
    );
    let log = facilitator_log(fac_url).await;
    assert!(log.is_empty(), "a redirect was followed: {log:?}");
    drop(gw);

    // A node URL, from the environment, with a key in its query, that redirects to the node.
    let node_redirect = FaultyServer::redirect(rpc);
    let secret_url = format!("{}/?apikey=NODE-KEY-0123456789", node_redirect.url());
    let gw = Gateway::start_with_env(
        &local_settler_config(&origin.addr, &dev.info, "${TEST_NODE_URL}"),
        &[("rules.toml", RULES)],
        &[("TEST_NODE_URL", &secret_url)],
    );
    let header = pay::fresh_header(&gw, "/paid/y", key).await;
    let r = client()
        .get(gw.url("/paid/y"))
        .header("PAYMENT-SIGNATURE", &header)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 503, "{}", gw.log_text());
    assert!(
        node_redirect.seen.requests() > 0,
        "the node was never called"
    );
    assert_eq!(
        relayer_nonce(rpc).await,
        nonce_before,
        "a transaction was sent"
    );
    assert_eq!(balance(rpc, token, payer).await, before, "tokens moved");
    assert_eq!(origin.requests().await, 0);
    let view = gw.config_view().await;
    let net = view["networks"]
        .as_array()
        .expect("networks")
        .iter()
        .find(|n| n["id"] == network.as_str())
        .cloned()
        .expect("the network in /config");
    assert_eq!(
        net["rpc_urls"],
        serde_json::json!([format!("{}/<redacted>", node_redirect.url())])
    );
    assert!(!view.to_string().contains("NODE-KEY"), "{view}");
    let log = gw.log_flushed().await;
    assert!(
        !log.contains("NODE-KEY"),
        "the node's key is in the log:\n{log}"
    );
}

/// The node takes the settlement transaction but never answers for its receipt. The settler
/// must not call that a refusal: the payment went through (in its own transaction), so the
/// client is served with a receipt, charged once, and the ledger names the transaction.
#[tokio::test]
async fn settlement_whose_receipt_never_comes_is_served_and_charged_once() {
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1", "--no-facilitator"]);
    let (rpc, token) = (
        text(&dev.info["rpcUrl"]),
        text(&dev.info["token"]["address"]),
    );
    let (payer, key) = (
        text(&dev.info["payers"][0]["address"]),
        text(&dev.info["payers"][0]["privateKey"]),
    );
    let node = FaultyServer::rpc_stalling(rpc, &["eth_getTransactionReceipt"]);
    let origin = Origin::start("o");
    let gw = Gateway::start(
        &local_settler_config(&origin.addr, &dev.info, &node.url()),
        &[("rules.toml", RULES)],
    );
    let before = balance(rpc, token, payer).await;
    let nonce_before = relayer_nonce(rpc).await;
    let header = pay::fresh_header(&gw, "/paid/weather", key).await;
    let r = client()
        .get(gw.url("/paid/weather"))
        .header("PAYMENT-SIGNATURE", &header)
        .send()
        .await
        .expect("pay");
    let status = r.status().as_u16();
    let receipt = r
        .headers()
        .get("payment-response")
        .map(|v| decode_header(v.to_str().expect("ascii")));
    assert_eq!(status, 200, "{receipt:?}\n{}", gw.log_text());
    let receipt = receipt.expect("receipt");
    assert_eq!(receipt["success"], true, "{receipt}");
    assert_eq!(balance(rpc, token, payer).await, before - 10_000);
    assert_eq!(
        relayer_nonce(rpc).await,
        nonce_before + 1,
        "one transaction"
    );
    let ledger = ledger(&gw);
    assert_eq!(events(&ledger), vec!["settled"], "{ledger:?}");
    assert_eq!(ledger[0]["transaction"], receipt["transaction"]);
    // The same payment again: refused, nothing moves.
    let r = client()
        .get(gw.url("/paid/weather"))
        .header("PAYMENT-SIGNATURE", &header)
        .send()
        .await
        .expect("replay");
    assert_eq!(r.status(), 402);
    assert_eq!(balance(rpc, token, payer).await, before - 10_000);
    assert_eq!(relayer_nonce(rpc).await, nonce_before + 1);
}

/// Raises this process's open-file limit to its hard limit (children inherit it) and returns
/// how many idle connections a test can open: 10 000, or fewer when the hard limit cannot
/// hold them with room to spare.
fn raise_nofile() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    10_000.min(
        usize::try_from(hard)
            .unwrap_or(usize::MAX)
            .saturating_sub(1_000),
    )
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// 10 000 connections that never send a byte; a new connection is still served at once. (The
/// gateway and this process each hold one end of every connection: the hard limit on open
/// files must exceed 10 000 for the full count; below that the test uses what it allows.)
#[tokio::test]
async fn ten_thousand_idle_connections_do_not_stop_service() {
    let n = raise_nofile();
    let origin = FaultyServer::origin(Duration::ZERO);
    let gw = Gateway::start(&config(&origin.addr, ""), &[]);
    let base = open_fds(gw.pid());
    let mut idle = Vec::with_capacity(n);
    while idle.len() < n {
        let mut wave = tokio::task::JoinSet::new();
        for _ in 0..256.min(n - idle.len()) {
            let addr = gw.addr.clone();
            wave.spawn(async move { TcpStream::connect(addr).await.expect("connect") });
        }
        while let Some(s) = wave.join_next().await {
            idle.push(s.expect("join"));
        }
    }
    // Every one of them accepted by the gateway, not just queued by the kernel.
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(gw.pid()) < base + n {
        assert!(
            Instant::now() < deadline,
            "the gateway accepted {} of {n}",
            open_fds(gw.pid()) - base
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "idle connections: {n}; gateway descriptors {}",
        open_fds(gw.pid())
    );
    let r = exchange(&gw.addr, &get("/any/ok", ""), Duration::from_secs(20)).await;
    assert_eq!((r.status, r.end), (200, End::Complete), "{r:?}");
    assert_eq!(r.json()["bytes"], 0);
    let r = client()
        .get(gw.admin_url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    // The idle connections are still open (none was dropped to make room).
    let mut probe = [0u8; 1];
    for s in idle.iter().step_by(997) {
        assert!(
            matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "an idle connection was closed"
        );
    }
    drop(idle);
}

/// Slowloris: connections that trickle header bytes (one every 200 ms, far inside Pingora's
/// 60 s per-read limit) are closed, unanswered, once the head deadline passes; a normal
/// request meanwhile is served.
#[tokio::test]
async fn slowloris_connections_are_closed_at_the_head_deadline_and_others_served() {
    const SLOW: usize = 200;
    let origin = FaultyServer::origin(Duration::ZERO);
    let gw = Gateway::start(
        &config(&origin.addr, "")
            .replace("[server]\n", "[server]\nheader_read_timeout_ms = 1500\n"),
        &[],
    );
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..SLOW {
        let addr = gw.addr.clone();
        slow.spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /slow/ok HTTP/1.1\r\nHost: site.test\r\nX-Slow: ")
                .await
                .expect("write");
            let mut trickled = 0usize;
            let mut buf = [0u8; 1024];
            let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                tokio::select! {
                    got = s.read(&mut buf) => {
                        return match got {
                            Ok(0) => (End::Closed, trickled, 0),
                            Ok(n) => (End::Complete, trickled, n),
                            Err(_) => (End::Reset, trickled, 0),
                        };
                    }
                    () = tokio::time::sleep(Duration::from_millis(200)) => {
                        if tokio::time::Instant::now() > give_up {
                            return (End::TimedOut, trickled, 0);
                        }
                        if s.write_all(b"a").await.is_err() {
                            return (End::Reset, trickled, 0);
                        }
                        trickled += 1;
                    }
                }
            }
        });
    }
    // Others are served while the slow ones hold their connections.
    let r = exchange(&gw.addr, &get("/fast/ok", ""), Duration::from_secs(20)).await;
    assert_eq!((r.status, r.end), (200, End::Complete), "{r:?}");
    let mut trickled = Vec::new();
    while let Some(done) = slow.join_next().await {
        let (end, bytes, answered) = done.expect("join");
        assert!(
            matches!(end, End::Closed | End::Reset) && answered == 0,
            "a slow connection ended {end:?} with {answered} response bytes"
        );
        trickled.push(bytes);
    }
    assert!(
        trickled.iter().all(|&b| b >= 2),
        "closed before trickling: {trickled:?}"
    );
    assert_eq!(
        origin.seen.requests(),
        1,
        "no slow request reached the origin"
    );
    assert!(gw.metric("x402_header_timeouts_total").await >= SLOW as f64);
    // And a normal keep-alive client after all that.
    let r = client()
        .get(gw.url("/after/ok"))
        .send()
        .await
        .expect("after");
    assert_eq!(r.status(), 200);
}

const BIG: usize = 50 * 1024 * 1024;

fn post_head(path: &str, len: usize, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: site.test\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Writes `len` zero bytes in 64 KiB pieces; returns how many were written before an error.
async fn write_body(w: &mut (impl AsyncWriteExt + Unpin), len: usize) -> usize {
    let piece = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = piece.len().min(len - sent);
        if w.write_all(&piece[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    sent
}

fn vm_hwm_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A 50 MiB POST to a priced route: without payment it is refused at once, unread, and never
/// reaches the origin; with a payment it is streamed to the origin without the gateway's peak
/// memory growing by anything like the body's size, and charged once.
#[tokio::test]
async fn oversized_bodies_are_refused_unread_or_streamed_when_paid() {
    let p = Paid::start(Duration::ZERO, "", "");
    // No payment, no body byte sent: the 402 comes without waiting for the body.
    let r = exchange(
        &p.gw.addr,
        &post_head("/paid/upload", BIG, ""),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!((r.status, r.end), (402, End::Complete), "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    // No payment, the body sent as fast as possible: refused, and the connection closed
    // long before 50 MiB could be pushed into it.
    let s = TcpStream::connect(&p.gw.addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(&post_head("/paid/upload", BIG, ""))
        .await
        .expect("head");
    let writer = tokio::spawn(async move { write_body(&mut wr, BIG).await });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut answer)).await;
    assert_eq!(raw_status(&String::from_utf8_lossy(&answer)), 402);
    let pushed = writer.await.expect("join");
    assert!(pushed < BIG, "the gateway read the whole unpaid body");
    assert_eq!(p.origin.seen.requests(), 0);
    assert_eq!(p.origin.seen.body_bytes(), 0);
    assert!(p.facilitator_calls().await.is_empty());

    // Paid: a 1 MiB warm-up, then 50 MiB.
    let before = p.balances().await;
    let pid = p.gw.pid();
    let mut hwm = Vec::new();
    for len in [1024 * 1024, BIG] {
        let header = p.header("/paid/upload").await;
        let mut s = TcpStream::connect(&p.gw.addr).await.expect("connect");
        hwm.push(vm_hwm_kib(pid));
        s.write_all(&post_head(
            "/paid/upload",
            len,
            &format!("PAYMENT-SIGNATURE: {header}\r\n"),
        ))
        .await
        .expect("head");
        assert_eq!(write_body(&mut s, len).await, len);
        let r = read_response(&mut s, Duration::from_secs(60)).await;
        assert_eq!((r.status, r.end), (200, End::Complete), "{r:?}");
        assert_eq!(r.json()["bytes"], len);
        assert!(r.header("payment-response").is_some());
    }
    hwm.push(vm_hwm_kib(pid));
    eprintln!("gateway VmHWM kB: before warm-up, before 50 MiB, after: {hwm:?}");
    assert!(
        hwm[2] - hwm[1] < 16 * 1024,
        "peak RSS grew by {} KiB while streaming 50 MiB",
        hwm[2] - hwm[1]
    );
    assert_eq!(p.origin.seen.body_bytes(), (BIG + 1024 * 1024) as u64);
    assert_eq!(p.balances().await, (before.0 - 20_000, before.1 + 20_000));
    assert_eq!(events(&p.ledger_events()), vec!["settled", "settled"]);
}
