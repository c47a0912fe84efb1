//! The built-in settler (`kind = "local"`) and the facilitator API on a real chain with no
//! third-party facilitator: the settler driven in-process, 50 concurrent settlements from one
//! relayer, the reference `@x402/express` server using the gateway as its facilitator, and the
//! gateway itself settling through its own settler. Every success is checked on chain.

use std::sync::Arc;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use serde_json::{Value, json};
use x402_gateway::facilitator::ChainConf;
use x402_gateway::facilitator::local::LocalSettler;
use x402_gateway::secret::Secret;

use crate::support::chain::{authorization_used, balance, hex_u64, relayer_nonce, rpc as rpc_call};
use crate::support::pay::{self, Auth};
use crate::support::*;

const PRICE: u128 = 10_000;

/// A devnet without the node facilitator: only our settler touches the chain.
struct Devnet(NodeProc);

impl Devnet {
    fn start(chain_id: u64, payers: usize) -> Devnet {
        Devnet(NodeProc::start(
            "lib/devnet.mjs",
            &[
                "--chain-id",
                &chain_id.to_string(),
                "--payers",
                &payers.to_string(),
                "--no-facilitator",
            ],
        ))
    }

    fn info(&self) -> &Value {
        &self.0.info
    }
    fn rpc(&self) -> &str {
        self.info()["rpcUrl"].as_str().expect("rpc")
    }
    fn token(&self) -> &str {
        self.info()["token"]["address"].as_str().expect("token")
    }
    fn pay_to(&self) -> &str {
        self.info()["payTo"].as_str().expect("payTo")
    }
    fn network(&self) -> String {
        format!(
            "eip155:{}",
            self.info()["chainId"].as_u64().expect("chain id")
        )
    }
    fn payer(&self, i: usize) -> (&str, &str) {
        let p = &self.info()["payers"][i];
        (
            p["address"].as_str().expect("address"),
            p["privateKey"].as_str().expect("key"),
        )
    }

    fn chain_conf(&self) -> ChainConf {
        ChainConf {
            caip2: self.network(),
            v1_name: self.info()["v1Network"].as_str().map(str::to_owned),
            chain_id: self.info()["chainId"].as_u64().expect("chain id"),
            rpc_urls: vec![Secret::new(self.rpc().to_owned())],
        }
    }

    fn settler(&self) -> LocalSettler {
        self.settler_with(self.chain_conf())
    }

    fn settler_with(&self, chain: ChainConf) -> LocalSettler {
        init_tls();
        LocalSettler::new(
            &Secret::new(RELAYER_KEY.into()),
            &[chain],
            Duration::from_secs(30),
            Duration::from_secs(5),
        )
        .expect("settler")
    }

    /// v2 requirements for `PRICE` of the devnet token.
    fn requirements(&self) -> Value {
        json!({
            "scheme": "exact",
            "network": self.network(),
            "amount": PRICE.to_string(),
            "asset": self.token(),
            "payTo": self.pay_to(),
            "maxTimeoutSeconds": 300,
            "extra": {
                "name": self.info()["token"]["name"],
                "version": self.info()["token"]["version"],
            },
        })
    }

    async fn balance(&self, who: &str) -> u128 {
        balance(self.rpc(), self.token(), who).await
    }

    /// A gateway.toml whose only facilitator is the built-in settler, optionally serving the
    /// facilitator API.
    fn gateway_config(&self, origin: &str, api: bool) -> String {
        let token = &self.info()["token"];
        let api = if api {
            "[facilitator_api]\nlisten = \"127.0.0.1:0\"\nsettler = \"self\"\n"
        } else {
            ""
        };
        format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 2

[admin]
listen = "127.0.0.1:0"

[upstreams.origin]
peers = ["{origin}"]

[[networks]]
id = "{network}"
rpc_urls = ["{rpc}"]

[[assets]]
id = "tusd"
network = "{network}"
address = "{address}"
name = "{name}"
version = "{version}"
decimals = 6
usd = true

[[facilitators]]
name = "self"
kind = "local"
relayer_key = "{RELAYER_KEY}"
networks = ["{network}"]
timeout_ms = 5000
receipt_timeout_ms = 30000

{api}
[logging]
level = "info"

[payment]
pay_to = "{pay_to}"
networks = ["{network}"]
"#,
            network = self.network(),
            rpc = self.rpc(),
            address = token["address"].as_str().expect("address"),
            name = token["name"].as_str().expect("name"),
            version = token["version"].as_str().expect("version"),
            pay_to = self.pay_to(),
        )
    }
}

const RULES: &str = r#"
[[rule]]
id = "weather"
path = "/api/weather"
price = "$0.01"
description = "Weather"
mime_type = "application/json"
"#;

/// A facilitator request body for a v2 payment.
fn v2_body(req: &Value, payload: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "x402Version": 2,
        "paymentPayload": {"x402Version": 2, "accepted": req, "payload": payload},
        "paymentRequirements": req,
    }))
    .expect("json")
}

/// A signed v2 body paying `req` from `key`.
fn signed_body(key: &PrivateKeySigner, req: &Value) -> Vec<u8> {
    v2_body(
        req,
        pay::signed_payload(key, req, &Auth::for_requirements(req)),
    )
}

fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// A transaction by hash.
async fn transaction(rpc: &str, hash: &str) -> Value {
    rpc_call(rpc, "eth_getTransactionByHash", json!([hash])).await
}

fn assert_tx_hash(tx: &str) {
    assert!(
        tx.starts_with("0x") && tx.len() == 66 && tx[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        "not a transaction hash: {tx:?}"
    );
}

#[tokio::test]
async fn settler_verifies_settles_and_refuses_replays_in_process() {
    let dev = Devnet::start(31337, 1);
    // The first endpoint refuses connections: every call falls back to the second.
    let mut chain = dev.chain_conf();
    chain.rpc_urls.insert(0, Secret::new(dead_url()));
    let settler = dev.settler_with(chain);
    let req = dev.requirements();
    let (payer, key) = dev.payer(0);
    let signer = pay::key(key);
    let auth = Auth::for_requirements(&req);
    let body = v2_body(&req, pay::signed_payload(&signer, &req, &auth));
    let (payer_before, merchant_before) =
        (dev.balance(payer).await, dev.balance(dev.pay_to()).await);
    let nonce_before = relayer_nonce(dev.rpc()).await;

    let (status, v) = settler.verify(&body).await;
    assert_eq!(status, 200, "{v:?}");
    assert!(v.valid(), "{v:?}");
    assert_eq!(v.payer.as_deref().map(lower), Some(lower(payer)));
    // Verifying moves nothing.
    assert_eq!(dev.balance(payer).await, payer_before);

    let (status, s) = settler.settle(&body).await;
    assert_eq!(status, 200, "{s:?}");
    assert!(s.succeeded(), "{s:?}");
    assert_tx_hash(&s.transaction);
    assert_eq!(s.network, "eip155:31337");
    assert_eq!(s.payer.as_deref().map(lower), Some(lower(payer)));
    assert_eq!(dev.balance(payer).await, payer_before - PRICE);
    assert_eq!(dev.balance(dev.pay_to()).await, merchant_before + PRICE);
    assert!(authorization_used(dev.rpc(), dev.token(), payer, &format!("{:#x}", auth.nonce)).await);
    let tx = transaction(dev.rpc(), &s.transaction).await;
    assert_eq!(lower(tx["from"].as_str().expect("from")), lower(RELAYER));
    assert_eq!(lower(tx["to"].as_str().expect("to")), lower(dev.token()));
    assert_eq!(tx["type"], "0x2", "EIP-1559 transaction expected: {tx}");

    // The same authorization again: refused, nothing sent, nothing moves.
    let (status, again) = settler.settle(&body).await;
    assert_eq!(status, 200);
    assert!(!again.succeeded());
    assert_eq!(
        again.error_reason.as_deref(),
        Some("invalid_exact_evm_nonce_already_used")
    );
    assert_eq!(again.transaction, "");
    let (_, v) = settler.verify(&body).await;
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_exact_evm_nonce_already_used")
    );
    assert_eq!(dev.balance(payer).await, payer_before - PRICE);
    assert_eq!(dev.balance(dev.pay_to()).await, merchant_before + PRICE);

    // A payer without tokens.
    let poor = PrivateKeySigner::random();
    let body = signed_body(&poor, &req);
    let (status, v) = settler.verify(&body).await;
    assert_eq!(status, 200);
    assert!(!v.valid());
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some("invalid_exact_evm_insufficient_balance")
    );
    assert_eq!(
        v.payer.as_deref().map(lower),
        Some(lower(&poor.address().to_string()))
    );
    let (status, s) = settler.settle(&body).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            s.succeeded(),
            s.error_reason.as_deref(),
            s.transaction.as_str()
        ),
        (false, Some("invalid_exact_evm_insufficient_balance"), "")
    );

    // A signature by someone else than `from`: refused locally.
    let mut forged = pay::signed_payload(
        &PrivateKeySigner::random(),
        &req,
        &Auth::for_requirements(&req),
    );
    forged["authorization"]["from"] = json!(payer);
    let (_, s) = settler.settle(&v2_body(&req, forged)).await;
    assert_eq!(
        s.error_reason.as_deref(),
        Some("invalid_exact_evm_signature")
    );

    // An "asset" without contract code would simulate fine: refused before any transaction.
    let mut no_token = req.clone();
    no_token["asset"] = json!(dev.pay_to());
    let (status, s) = settler.settle(&signed_body(&signer, &no_token)).await;
    assert_eq!(
        (status, s.error_reason.as_deref(), s.transaction.as_str()),
        (200, Some("asset_not_deployed_contract"), "")
    );
    assert_eq!(dev.balance(dev.pay_to()).await, merchant_before + PRICE);
    assert_eq!(relayer_nonce(dev.rpc()).await, nonce_before + 1);
}

#[tokio::test]
async fn settler_settles_v1_payments_under_v1_network_names() {
    let dev = Devnet::start(84532, 1);
    let settler = dev.settler();
    let supported = settler.supported();
    assert!(
        supported["kinds"]
            .as_array()
            .expect("kinds")
            .contains(&json!({"x402Version": 1, "scheme": "exact", "network": "base-sepolia"})),
        "{supported}"
    );
    let req = dev.requirements();
    let (payer, key) = dev.payer(0);
    let before = dev.balance(payer).await;
    let v1_requirements = json!({
        "scheme": "exact",
        "network": "base-sepolia",
        "maxAmountRequired": PRICE.to_string(),
        "resource": "http://127.0.0.1/weather",
        "description": "Weather",
        "mimeType": "application/json",
        "payTo": dev.pay_to(),
        "maxTimeoutSeconds": 300,
        "asset": dev.token(),
        "extra": req["extra"],
    });
    let payload = pay::signed_payload(&pay::key(key), &req, &Auth::for_requirements(&req));
    let body = serde_json::to_vec(&json!({
        "x402Version": 1,
        "paymentPayload": {"x402Version": 1, "scheme": "exact", "network": "base-sepolia", "payload": payload},
        "paymentRequirements": v1_requirements,
    }))
    .expect("json");
    let (status, s) = settler.settle(&body).await;
    assert_eq!(status, 200, "{s:?}");
    assert!(s.succeeded(), "{s:?}");
    assert_eq!(s.network, "base-sepolia");
    assert_tx_hash(&s.transaction);
    assert_eq!(dev.balance(payer).await, before - PRICE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_settlements_from_one_relayer_all_land() {
    const N: usize = 50;
    let dev = Devnet::start(31337, N);
    let settler = Arc::new(dev.settler());
    let req = dev.requirements();
    let mut payers = Vec::new();
    for i in 0..N {
        let (address, key) = dev.payer(i);
        payers.push((
            address.to_owned(),
            pay::key(key),
            dev.balance(address).await,
        ));
    }
    let merchant_before = dev.balance(dev.pay_to()).await;
    let nonce_before = relayer_nonce(dev.rpc()).await;

    let tasks: Vec<_> = payers
        .iter()
        .map(|(_, key, _)| {
            let (settler, body) = (settler.clone(), signed_body(key, &req));
            tokio::spawn(async move { settler.settle(&body).await })
        })
        .collect();
    let mut hashes = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, s) = t.await.expect("join");
        assert_eq!(status, 200, "payer {i}: {s:?}");
        assert!(s.succeeded(), "payer {i}: {s:?}");
        assert_eq!(
            s.payer.as_deref().map(lower),
            Some(lower(&payers[i].0)),
            "payer {i}"
        );
        assert_tx_hash(&s.transaction);
        hashes.push(s.transaction);
    }

    for (address, _, before) in &payers {
        assert_eq!(dev.balance(address).await, before - PRICE, "{address}");
    }
    assert_eq!(
        dev.balance(dev.pay_to()).await,
        merchant_before + PRICE * N as u128
    );
    // One transaction per settlement, on consecutive relayer nonces: none collided, none lost.
    let mut nonces = Vec::new();
    for h in &hashes {
        let tx = transaction(dev.rpc(), h).await;
        assert_eq!(lower(tx["from"].as_str().expect("from")), lower(RELAYER));
        nonces.push(hex_u64(&tx["nonce"]));
    }
    nonces.sort_unstable();
    let expected: Vec<u64> = (nonce_before..nonce_before + N as u64).collect();
    assert_eq!(nonces, expected);
    assert_eq!(relayer_nonce(dev.rpc()).await, nonce_before + N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_settlers_with_one_relayer_key_resynchronise_their_nonces() {
    // Two settlers that do not share nonce bookkeeping (as two gateway processes with the same
    // key would not) both start from the node's count, so their first transactions collide;
    // "nonce too low" must make the loser resynchronise and sign again.
    const N: usize = 10;
    let dev = Devnet::start(31337, N);
    let (a, b) = (Arc::new(dev.settler()), Arc::new(dev.settler()));
    let req = dev.requirements();
    let merchant_before = dev.balance(dev.pay_to()).await;
    let nonce_before = relayer_nonce(dev.rpc()).await;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let settler = if i % 2 == 0 { a.clone() } else { b.clone() };
            let body = signed_body(&pay::key(dev.payer(i).1), &req);
            tokio::spawn(async move { settler.settle(&body).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, s) = t.await.expect("join");
        assert_eq!((status, s.succeeded()), (200, true), "payer {i}: {s:?}");
    }
    assert_eq!(
        dev.balance(dev.pay_to()).await,
        merchant_before + PRICE * N as u128
    );
    assert_eq!(relayer_nonce(dev.rpc()).await, nonce_before + N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_settlement_transaction_is_sent_again() {
    // With automine off, the settler's transaction waits in the pool; another transaction of
    // the relayer with the same nonce and higher fees replaces it. The settler must notice that
    // its transaction can never be mined and sign the settlement again.
    let dev = Devnet::start(31337, 1);
    let rpc = dev.rpc().to_owned();
    let settler = Arc::new(dev.settler());
    let req = dev.requirements();
    let (payer, key) = dev.payer(0);
    let (payer_before, merchant_before) =
        (dev.balance(payer).await, dev.balance(dev.pay_to()).await);
    let nonce = relayer_nonce(&rpc).await;
    rpc_call(&rpc, "evm_setAutomine", json!([false])).await;

    let body = signed_body(&pay::key(key), &req);
    let task = {
        let settler = settler.clone();
        tokio::spawn(async move { settler.settle(&body).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hex_u64(&rpc_call(&rpc, "eth_getTransactionCount", json!([RELAYER, "pending"])).await)
        == nonce
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the settler never sent"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Anvil's accounts are unlocked: replace the pending settlement with a plain transfer.
    let replacement = rpc_call(
        &rpc,
        "eth_sendTransaction",
        json!([{
            "from": RELAYER,
            "to": RELAYER,
            "value": "0x0",
            "nonce": format!("{nonce:#x}"),
            "gas": "0x5208",
            "maxFeePerGas": "0x174876e800",
            "maxPriorityFeePerGas": "0xba43b7400",
        }]),
    )
    .await;
    rpc_call(&rpc, "evm_mine", json!([])).await;
    // Keep mining until the settlement is done.
    while !task.is_finished() {
        assert!(
            std::time::Instant::now() < deadline + Duration::from_secs(20),
            "settlement never finished"
        );
        rpc_call(&rpc, "evm_mine", json!([])).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rpc_call(&rpc, "evm_setAutomine", json!([true])).await;
    let (status, s) = task.await.expect("join");
    assert_eq!((status, s.succeeded()), (200, true), "{s:?}");
    assert_ne!(Value::String(s.transaction.clone()), replacement);
    let tx = transaction(&rpc, &s.transaction).await;
    assert_eq!(hex_u64(&tx["nonce"]), nonce + 1, "{tx}");
    assert_eq!(dev.balance(payer).await, payer_before - PRICE);
    assert_eq!(dev.balance(dev.pay_to()).await, merchant_before + PRICE);
    assert_eq!(relayer_nonce(&rpc).await, nonce + 2);
}

/// The facilitator API's address from the gateway's ready file.
fn facilitator_api_url(gw: &Gateway) -> String {
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(gw.path("ready.json")).expect("ready file"))
            .expect("ready json");
    format!(
        "http://{}",
        report["facilitator_api"]
            .as_str()
            .expect("facilitator_api in the ready file")
    )
}

#[tokio::test]
async fn reference_express_server_settles_through_the_gateway_facilitator_api() {
    let dev = Devnet::start(31337, 1);
    let origin = Origin::start("unused-origin");
    let gw = Gateway::start(&dev.gateway_config(&origin.addr, true), &[]);
    let api = facilitator_api_url(&gw);
    let http = client();

    // The API itself.
    let r = http
        .get(format!("{api}/supported"))
        .send()
        .await
        .expect("supported");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let supported: Value = r.json().await.expect("json");
    assert_eq!(
        supported,
        json!({
            "kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:31337"}],
            "extensions": [],
            "signers": {"eip155:*": [RELAYER]},
        })
    );
    let r = http
        .post(format!("{api}/verify"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("verify garbage");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["isValid"].clone(), v["invalidReason"].clone()),
        (json!(false), json!("invalid_payload"))
    );
    let r = http
        .post(format!("{api}/settle"))
        .body(vec![b' '; 70 * 1024])
        .send()
        .await
        .expect("big body");
    assert_eq!(r.status(), 413);
    assert_eq!(
        http.get(format!("{api}/verify"))
            .send()
            .await
            .expect("get")
            .status(),
        405
    );
    assert_eq!(
        http.get(format!("{api}/nope"))
            .send()
            .await
            .expect("404")
            .status(),
        404
    );

    // The reference server uses it as its facilitator; the reference client pays.
    let token = &dev.info()["token"];
    let express = NodeProc::start(
        "lib/express-server.mjs",
        &[
            "--facilitator-url",
            &api,
            "--pay-to",
            dev.pay_to(),
            "--token",
            dev.token(),
            "--token-name",
            token["name"].as_str().expect("name"),
            "--token-version",
            token["version"].as_str().expect("version"),
            "--network",
            &dev.network(),
            "--price",
            &PRICE.to_string(),
        ],
    );
    let resource = express.info["resource"]
        .as_str()
        .expect("resource")
        .to_owned();
    let (payer, key) = dev.payer(0);
    let (payer_before, merchant_before) =
        (dev.balance(payer).await, dev.balance(dev.pay_to()).await);
    let nonce_before = relayer_nonce(dev.rpc()).await;
    let args: Vec<String> = vec![
        "--url".into(),
        resource.clone(),
        "--private-key".into(),
        key.into(),
    ];
    let res = node_json("lib/pay-v2.mjs", &args, &[]).await;
    assert_eq!(res["status"], 200, "{res}\ngateway log:\n{}", gw.log_text());
    assert_eq!(
        serde_json::from_str::<Value>(res["body"].as_str().expect("body")).expect("json")["weather"],
        "sunny"
    );
    assert_eq!(res["receipt"]["success"], true, "{res}");
    assert_eq!(res["receipt"]["network"], "eip155:31337");
    let tx = res["receipt"]["transaction"]
        .as_str()
        .expect("tx")
        .to_owned();
    assert_tx_hash(&tx);
    assert_eq!(dev.balance(payer).await, payer_before - PRICE);
    assert_eq!(dev.balance(dev.pay_to()).await, merchant_before + PRICE);
    let sent = transaction(dev.rpc(), &tx).await;
    assert_eq!(lower(sent["from"].as_str().expect("from")), lower(RELAYER));
    assert_eq!(relayer_nonce(dev.rpc()).await, nonce_before + 1);

    // The same payment header again: the reference server asks our /verify, which refuses.
    let header = res["paymentHeader"].as_str().expect("header");
    let r = http
        .get(&resource)
        .header("PAYMENT-SIGNATURE", header)
        .send()
        .await
        .expect("replay");
    assert_eq!(r.status(), 402);
    let pr = decode_header(r.headers()["payment-required"].to_str().expect("ascii"));
    assert_eq!(pr["error"], "invalid_exact_evm_nonce_already_used", "{pr}");
    assert_eq!(dev.balance(payer).await, payer_before - PRICE);
    assert_eq!(dev.balance(dev.pay_to()).await, merchant_before + PRICE);

    // An unfunded payer gets our reason through the reference server.
    let poor = PrivateKeySigner::random();
    let poor_key = format!("0x{}", hex::encode(poor.to_bytes()));
    let args: Vec<String> = vec!["--url".into(), resource, "--private-key".into(), poor_key];
    let res = node_json("lib/pay-v2.mjs", &args, &[]).await;
    assert_eq!(res["status"], 402, "{res}");
    let pr = decode_header(
        res["headers"]["payment-required"]
            .as_str()
            .expect("payment-required"),
    );
    assert_eq!(
        pr["error"], "invalid_exact_evm_insufficient_balance",
        "{pr}"
    );
    assert_eq!(dev.balance(dev.pay_to()).await, merchant_before + PRICE);
    assert_eq!(relayer_nonce(dev.rpc()).await, nonce_before + 1);

    assert!(
        !gw.log_flushed().await.contains(&RELAYER_KEY[2..]),
        "the relayer key appeared in the gateway log"
    );
    drop(express);
}

#[tokio::test]
async fn gateway_with_only_a_local_facilitator_is_paid_by_the_reference_client() {
    let dev = Devnet::start(31337, 1);
    let origin = Origin::start("paid-origin");
    let gw = Gateway::start(
        &dev.gateway_config(&origin.addr, false),
        &[("rules.toml", RULES)],
    );
    let (payer, key) = dev.payer(0);
    let (payer_before, merchant_before) =
        (dev.balance(payer).await, dev.balance(dev.pay_to()).await);
    let nonce_before = relayer_nonce(dev.rpc()).await;

    let args: Vec<String> = vec![
        "--url".into(),
        gw.url("/api/weather"),
        "--private-key".into(),
        key.into(),
    ];
    let res = node_json("lib/pay-v2.mjs", &args, &[]).await;
    assert_eq!(res["status"], 200, "{res}\ngateway log:\n{}", gw.log_text());
    assert_eq!(res["receipt"]["success"], true, "{res}");
    let tx = res["receipt"]["transaction"]
        .as_str()
        .expect("tx")
        .to_owned();
    assert_tx_hash(&tx);
    assert_eq!(dev.balance(payer).await, payer_before - PRICE);
    assert_eq!(dev.balance(dev.pay_to()).await, merchant_before + PRICE);
    let sent = transaction(dev.rpc(), &tx).await;
    assert_eq!(lower(sent["from"].as_str().expect("from")), lower(RELAYER));
    assert_eq!(origin.requests().await, 1);

    // A replay moves nothing.
    let header = res["paymentHeader"].as_str().expect("header");
    let r = client()
        .get(gw.url("/api/weather"))
        .header("PAYMENT-SIGNATURE", header)
        .send()
        .await
        .expect("replay");
    assert_eq!(r.status(), 402);
    assert_eq!(dev.balance(payer).await, payer_before - PRICE);
    assert_eq!(dev.balance(dev.pay_to()).await, merchant_before + PRICE);

    // An unfunded payer: the settler's reason, nothing sent, the origin not reached.
    let poor = PrivateKeySigner::random();
    let r = client()
        .get(gw.url("/api/weather"))
        .send()
        .await
        .expect("402");
    let accepted =
        decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["accepts"][0]
            .clone();
    let header = pay::v2_header(
        &accepted,
        pay::signed_payload(&poor, &accepted, &Auth::for_requirements(&accepted)),
    );
    let r = client()
        .get(gw.url("/api/weather"))
        .header("PAYMENT-SIGNATURE", header)
        .send()
        .await
        .expect("unfunded");
    assert_eq!(r.status(), 402);
    let pr = decode_header(r.headers()["payment-required"].to_str().expect("ascii"));
    assert_eq!(
        pr["error"], "invalid_exact_evm_insufficient_balance",
        "{pr}"
    );
    assert_eq!(dev.balance(dev.pay_to()).await, merchant_before + PRICE);
    assert_eq!(relayer_nonce(dev.rpc()).await, nonce_before + 1);
    assert_eq!(origin.requests().await, 1);
    assert!(
        !gw.log_flushed().await.contains(&RELAYER_KEY[2..]),
        "the relayer key appeared in the gateway log"
    );
}

#[tokio::test]
async fn facilitator_api_requires_its_token_and_relays_only_real_payments_to_known_recipients() {
    let dev = Devnet::start(31337, 1);
    let origin = Origin::start("unused-origin");
    let (payer, _) = dev.payer(0);
    let config = dev.gateway_config(&origin.addr, true).replace(
        "settler = \"self\"\n",
        &format!(
            "settler = \"self\"\nauth_token = \"${{TEST_API_TOKEN}}\"\nrequests_per_second_per_client = 12\nrecipients = [\"{payer}\"]\n"
        ),
    );
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules");
    std::fs::write(dir.path().join("gateway.toml"), config).expect("write");
    let gw = Gateway::start_in_with_env(dir, &[("TEST_API_TOKEN", "s3cret-token")]);
    let api = facilitator_api_url(&gw);
    let (_, key) = dev.payer(0);
    let body = signed_body(&pay::key(key), &dev.requirements());
    let post = |path: &str, auth: Option<&str>, body: Vec<u8>| {
        let mut r = client()
            .post(format!("{api}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(
        post("/verify", None, body.clone())
            .await
            .expect("send")
            .status(),
        401
    );
    assert_eq!(
        post("/settle", Some("Bearer wrong"), body.clone())
            .await
            .expect("send")
            .status(),
        401
    );
    let ok = post("/verify", Some("Bearer s3cret-token"), body.clone())
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.expect("json")["isValid"], true);
    // A token nobody declared: the relayer will not pay gas for it.
    let mut req = dev.requirements();
    req["asset"] = json!("0x000000000000000000000000000000000000bEEF");
    let foreign = signed_body(&pay::key(key), &req);
    let r = post("/settle", Some("Bearer s3cret-token"), foreign)
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.expect("json")["errorReason"],
        "asset_not_accepted"
    );
    // Payments the relayer must not carry: to a stranger, of nothing, to oneself.
    let stranger = "0x000000000000000000000000000000000000dEaD";
    let relay = |req: Value| {
        let body = signed_body(&pay::key(key), &req);
        post("/settle", Some("Bearer s3cret-token"), body)
    };
    let mut to_stranger = dev.requirements();
    to_stranger["payTo"] = json!(stranger);
    let mut zero = dev.requirements();
    zero["amount"] = json!("0");
    let mut to_self = dev.requirements();
    to_self["payTo"] = json!(payer);
    let nonce_before = relayer_nonce(dev.rpc()).await;
    for (req, want) in [
        (to_stranger, "recipient_not_accepted"),
        (zero, "zero_value"),
        (to_self, "self_transfer"),
    ] {
        let r = relay(req).await.expect("send");
        assert_eq!(r.status(), 400, "{want}");
        assert_eq!(r.json::<Value>().await.expect("json")["errorReason"], want);
    }
    // The authorization's own `to` is checked too, whatever the requirements say.
    let mut lying = dev.requirements();
    lying["payTo"] = json!(stranger);
    let payload = pay::signed_payload(&pay::key(key), &lying, &Auth::for_requirements(&lying));
    let body = v2_body(&dev.requirements(), payload);
    let r = post("/verify", Some("Bearer s3cret-token"), body.clone())
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.expect("json")["invalidReason"],
        "recipient_not_accepted"
    );
    assert_eq!(relayer_nonce(dev.rpc()).await, nonce_before, "no gas spent");
    // More calls per second than allowed from one client: 429 with Retry-After.
    let mut limited = 0;
    for _ in 0..30 {
        let r = post("/verify", Some("Bearer s3cret-token"), body.clone())
            .await
            .expect("send");
        if r.status() == 429 {
            assert!(r.headers().get("retry-after").is_some());
            limited += 1;
        }
    }
    assert!(limited > 0, "no call was limited");
    assert!(!gw.log_flushed().await.contains("s3cret-token"));
}
