//! `batch-settlement` through the gateway with the reference batch client: one deposit, then
//! vouchers checked locally with no transaction per request; the claimer lands the charges on
//! chain in batches; what must be refused is refused with the scheme's reasons, nothing served.

use serde_json::{Value, json};

use crate::support::chain::{balance, rpc};
use crate::support::pay::b64;
use crate::support::*;

/// The receiver authorizer's key (a public anvil test key no other role here uses).
const AUTHORIZER_KEY: &str = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6";
/// Its address.
const AUTHORIZER_ADDRESS: &str = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720";
/// The channel contract, where the reference packages expect it.
const CHANNELS: &str = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003";

fn rules() -> String {
    format!(
        r#"
[[rule]]
id = "api"
prefix = "/api/"
methods = ["GET"]
schemes = ["batch-settlement"]
price = "$0.01"
min_deposit = "$5"
receiver_authorizer = "{AUTHORIZER_KEY}"

[[rule]]
id = "report"
prefix = "/report/"
methods = ["GET"]
schemes = ["batch-settlement"]
price = "$4"
min_deposit = "$5"
receiver_authorizer = "{AUTHORIZER_KEY}"

[[rule]]
id = "permit2"
prefix = "/p2/"
methods = ["GET"]
schemes = ["batch-settlement"]
price = "$0.01"
min_deposit = "$5"
receiver_authorizer = "{AUTHORIZER_KEY}"
deposit_method = "permit2"
"#
    )
}

/// Sends one voucher payment built by `lib/batch-voucher.mjs` for `path`'s 402; the answer's
/// status and its `error`.
async fn voucher(gw: &Gateway, path: &str, key: &str, max: u128, extra: &[&str]) -> (u16, Value) {
    let header = voucher_header(gw, path, key, max, extra).await;
    let (status, required, _) = send_voucher(gw, path, &header).await;
    (status, required)
}

/// The `PAYMENT-SIGNATURE` of one voucher built by `lib/batch-voucher.mjs` for `path`'s 402.
async fn voucher_header(gw: &Gateway, path: &str, key: &str, max: u128, extra: &[&str]) -> String {
    let mut args: Vec<String> = vec![
        "--url".into(),
        gw.url(path),
        "--private-key".into(),
        key.into(),
        "--max".into(),
        max.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let built = node_json("lib/batch-voucher.mjs", &args, &[]).await;
    built["header"]
        .as_str()
        .unwrap_or_else(|| panic!("{built}"))
        .to_owned()
}

/// `header` with its payment named `id` (the `payment-identifier` extension).
fn with_identifier(header: &str, id: &str) -> String {
    let mut payment = decode_header(header);
    payment["extensions"]["payment-identifier"] = json!({ "info": { "id": id } });
    b64(&payment)
}

/// Sends a voucher payment: the answer's status, its `PAYMENT-REQUIRED` (decoded; null on
/// success) and its `PAYMENT-RESPONSE` header as sent.
async fn send_voucher(gw: &Gateway, path: &str, header: &str) -> (u16, Value, Option<String>) {
    let r = client()
        .get(gw.url(path))
        .header("payment-signature", header)
        .send()
        .await
        .expect("paid request");
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|h| h.to_str().expect("ascii").to_owned())
    };
    let required = header("payment-required").map_or(Value::Null, |h| decode_header(&h));
    (status, required, header("payment-response"))
}

/// `receivers(receiver, token)` of the channel contract: (claimed, settled).
async fn receiver_totals(rpc_url: &str, receiver: &str, token: &str) -> (u128, u128) {
    let word = |a: &str| format!("{:0>64}", a.trim_start_matches("0x").to_ascii_lowercase());
    // receivers(address,address)
    let selector = &format!(
        "{:#x}",
        alloy::primitives::keccak256("receivers(address,address)")
    )[..10];
    let out = rpc(
        rpc_url,
        "eth_call",
        json!([{"to": CHANNELS, "data": format!("{selector}{}{}", word(receiver), word(token))}, "latest"]),
    )
    .await;
    let hex = out
        .as_str()
        .expect("hex")
        .trim_start_matches("0x")
        .to_owned();
    let claimed = u128::from_str_radix(&hex[32..64], 16).expect("claimed");
    let settled = u128::from_str_radix(&hex[96..128], 16).expect("settled");
    (claimed, settled)
}

/// Transactions mined so far (anvil mines one block per transaction).
async fn block_number(rpc_url: &str) -> u64 {
    crate::support::chain::hex_u64(&rpc(rpc_url, "eth_blockNumber", json!([])).await)
}

async fn pay_batch(urls: &str, rpc_url: &str, key: &str, extra: &[&str]) -> Value {
    let mut args: Vec<String> = vec![
        "--url".into(),
        urls.into(),
        "--rpc-url".into(),
        rpc_url.into(),
        "--private-key".into(),
        key.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    node_json("lib/pay-batch.mjs", &args, &[]).await
}

fn ledger_sum(gw: &Gateway, event: &str) -> u128 {
    gw.ledger()
        .iter()
        .filter(|l| l["event"] == event)
        .map(|l| {
            l["amount"]
                .as_str()
                .unwrap_or("0")
                .parse::<u128>()
                .unwrap_or(0)
        })
        .sum()
}

/// A dev chain with the reference facilitator, the demo origin, and what the tests read.
struct Net {
    dev: NodeProc,
    origin: Origin,
    rpc: String,
    token: String,
    pay_to: String,
}

impl Net {
    fn start(payers: &str) -> Net {
        Self::start_with(payers, &[])
    }

    /// As `start`, with more `lib/devnet.mjs` flags.
    fn start_with(payers: &str, flags: &[&str]) -> Net {
        let mut args = vec!["--chain-id", "31337", "--payers", payers];
        args.extend_from_slice(flags);
        let dev = NodeProc::start("lib/devnet.mjs", &args);
        let field = |v: &Value| v.as_str().expect("devnet field").to_owned();
        Net {
            rpc: field(&dev.info["rpcUrl"]),
            token: field(&dev.info["token"]["address"]),
            pay_to: field(&dev.info["payTo"]),
            origin: Origin::start("channel-origin"),
            dev,
        }
    }

    /// Payer `i`'s address and key.
    fn payer(&self, i: usize) -> (&str, &str) {
        let p = &self.dev.info["payers"][i];
        (
            p["address"].as_str().expect("address"),
            p["privateKey"].as_str().expect("key"),
        )
    }

    /// A gateway selling the rules above through the devnet's facilitator, with
    /// `payment_extra` in `[payment]` and, given `(redis url, replica id)`, on Redis.
    fn gateway(&self, payment_extra: &str, redis: Option<(&str, &str)>) -> Gateway {
        self.gateway_selling(&rules(), payment_extra, redis)
    }

    /// As `gateway`, selling `rules`.
    fn gateway_selling(
        &self,
        rules: &str,
        payment_extra: &str,
        redis: Option<(&str, &str)>,
    ) -> Gateway {
        let fac = self.dev.info["facilitatorUrl"].as_str().expect("fac");
        let mut cfg = paid_config(
            &self.origin.addr,
            &self.dev.info,
            &facilitator_toml("node", fac, 0, ""),
            payment_extra,
        );
        if let Some((url, replica)) = redis {
            cfg.push_str(&format!(
                "\n[state]\nbackend = \"redis\"\nurl = \"{url}\"\nreplica_id = \"{replica}\"\n"
            ));
        }
        Gateway::start(&cfg, &[("rules.toml", rules)])
    }
}

/// Stops the gateway (SIGTERM: its claimer's last pass claims every channel) and waits until
/// the chain shows `want` claimed and swept to the receiver, and the ledger says the same.
async fn stop_and_expect_claimed(gw: &Gateway, net: &Net, want: u128) {
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    let totals = wait_totals(&net.rpc, &net.pay_to, &net.token, want).await;
    assert_eq!(totals, (want, want));
    wait_for(
        "the ledger's claim lines",
        std::time::Duration::from_secs(10),
        || (ledger_sum(gw, "channel_claimed") == want).then_some(()),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn vouchers_pay_per_request_and_the_claimer_lands_them_on_chain() {
    let net = Net::start("2");
    let gw = net.gateway(
        "channel_claim_interval_seconds = 2\nchannel_claim_threshold = 500000",
        None,
    );
    let (origin, rpc_url, token, pay_to) = (&net.origin, &*net.rpc, &*net.token, &*net.pay_to);
    let (payer, key) = net.payer(0);

    // The 402 offers the channel scheme with what the reference client needs.
    let pr = payment_required(&gw.url("/api/x")).await;
    let offer = &pr["accepts"][0];
    assert_eq!(offer["scheme"], "batch-settlement", "{pr}");
    assert_eq!(offer["amount"], "10000", "{pr}");
    assert_eq!(offer["extra"]["withdrawDelay"], 900, "{pr}");
    assert_eq!(offer["extra"]["minDeposit"], "5000000", "{pr}");
    assert!(offer["extra"]["receiverAuthorizer"].is_string(), "{pr}");

    // One deposit, then vouchers: 200 answers, one transaction (the deposit) while they are
    // served, each request charged the price.
    let payer_before = balance(rpc_url, token, payer).await;
    let receiver_before = balance(rpc_url, token, pay_to).await;
    let blocks_before = block_number(rpc_url).await;
    let started = std::time::Instant::now();
    let out = pay_batch(&gw.url("/api/item"), rpc_url, key, &["--requests", "200"]).await;
    assert!(out["error"].is_null(), "{}", out["error"]);
    assert_eq!(out["statuses"]["200"], 200, "{}", out["statuses"]);
    assert_eq!(out["sent"]["deposit"], 1, "{}", out["sent"]);
    assert_eq!(out["sent"]["voucher"], 199, "{}", out["sent"]);
    let last = &out["results"][199]["receipt"];
    assert_eq!(last["success"], true, "{last}");
    assert_eq!(last["transaction"], "", "{last}");
    assert_eq!(last["extra"]["chargedAmount"], "10000", "{last}");
    assert_eq!(
        last["extra"]["channelState"]["chargedCumulativeAmount"], "2000000",
        "{last}"
    );
    let first = &out["results"][0]["receipt"];
    assert!(
        first["transaction"].as_str().is_some_and(|t| t.len() == 66),
        "{first}"
    );
    assert_eq!(
        payer_before - balance(rpc_url, token, payer).await,
        5_000_000
    );
    assert_eq!(origin.requests().await, 200);
    assert_eq!(ledger_sum(&gw, "channel_charged"), 2_000_000);

    // What must be refused is refused locally with the scheme's reason, and nothing is served
    // or charged: the last voucher replayed, an older one, one beyond the escrow (a $4 request
    // on a channel holding $5 with $2 charged), one not signed by the payer authorizer, and one
    // for a channel paying another receiver.
    let (served, charged) = (origin.requests().await, ledger_sum(&gw, "channel_charged"));
    let other = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    let payer2 = net.payer(1).1;
    for (path, max, extra, reason) in [
        // A new channel opened with less than the 402 asks.
        (
            "/api/item",
            10_000,
            vec!["--deposit", "10000"],
            "invalid_batch_settlement_evm_deposit_below_min_deposit",
        ),
        (
            "/api/item",
            2_000_000,
            vec![],
            "invalid_batch_settlement_evm_cumulative_amount_mismatch",
        ),
        (
            "/api/item",
            1_000_000,
            vec![],
            "invalid_batch_settlement_evm_cumulative_amount_mismatch",
        ),
        (
            "/report/q",
            6_000_000,
            vec![],
            "invalid_batch_settlement_evm_cumulative_exceeds_balance",
        ),
        (
            "/api/item",
            2_010_000,
            vec!["--signer-key", other],
            "invalid_batch_settlement_evm_voucher_signature",
        ),
        (
            "/api/item",
            2_010_000,
            vec!["--receiver", "0x000000000000000000000000000000000000dEaD"],
            "invalid_batch_settlement_evm_receiver_mismatch",
        ),
    ] {
        let who = if extra.first() == Some(&"--deposit") {
            payer2
        } else {
            key
        };
        let (status, required) = voucher(&gw, path, who, max, &extra).await;
        assert_eq!(status, 402, "{reason}: {required}");
        assert_eq!(required["error"], reason, "{required}");
        if reason.ends_with("cumulative_amount_mismatch") {
            // The corrective 402: where the channel stands and the latest voucher.
            let extra = &required["accepts"][0]["extra"];
            assert_eq!(
                extra["channelState"]["chargedCumulativeAmount"], "2000000",
                "{extra}"
            );
            assert_eq!(
                extra["voucherState"]["signedMaxClaimable"], "2000000",
                "{extra}"
            );
        }
    }
    assert_eq!(origin.requests().await, served);
    assert_eq!(ledger_sum(&gw, "channel_charged"), charged);
    // The channel still takes the next voucher. Named (`payment-identifier`), its retry is
    // served again with the same receipt and charged once, not answered as a stale voucher
    // the client would pay for again.
    let header = voucher_header(&gw, "/api/item", key, 2_010_000, &[]).await;
    let named = with_identifier(&header, "channel-retry-0000000001");
    let (status, required, receipt) = send_voucher(&gw, "/api/item", &named).await;
    assert_eq!(status, 200, "{required}");
    assert!(receipt.is_some());
    let served = origin.requests().await;
    let (status, required, again) = send_voucher(&gw, "/api/item", &named).await;
    assert_eq!(status, 200, "{required}");
    assert_eq!(again, receipt);
    assert_eq!(origin.requests().await, served + 1);
    assert_eq!(ledger_sum(&gw, "channel_charged"), 2_010_000);
    // The same name on another payment is a conflict; the same voucher unnamed, or under
    // another name, is stale.
    let next = voucher_header(&gw, "/api/item", key, 2_020_000, &[]).await;
    let conflict = client()
        .get(gw.url("/api/item"))
        .header(
            "payment-signature",
            with_identifier(&next, "channel-retry-0000000001"),
        )
        .send()
        .await
        .expect("named request");
    assert_eq!(conflict.status(), 409);
    let body: Value = conflict.json().await.expect("json");
    assert_eq!(body["error"], "payment_identifier_conflict", "{body}");
    // Twice under the new name: a refused voucher frees the name it claimed.
    let renamed = with_identifier(&header, "channel-retry-0000000002");
    for stale in [header.clone(), renamed.clone(), renamed] {
        let (status, required, _) = send_voucher(&gw, "/api/item", &stale).await;
        assert_eq!(status, 402, "{required}");
        assert_eq!(
            required["error"], "invalid_batch_settlement_evm_cumulative_amount_mismatch",
            "{required}"
        );
    }
    assert_eq!(origin.requests().await, served + 1);
    assert_eq!(ledger_sum(&gw, "channel_charged"), 2_010_000);
    // A gateway that requires names refuses an unnamed voucher, nothing served.
    let strict = net.gateway("require_payment_identifier = true", None);
    let (status, required) = voucher(&strict, "/api/item", key, 2_020_000, &[]).await;
    assert_eq!(status, 402, "{required}");
    assert_eq!(
        required["error"], "payment_identifier_required",
        "{required}"
    );
    assert_eq!(origin.requests().await, served + 1);
    drop(strict);

    // Past the threshold the claimer claims and sweeps, in a few transactions, not one per
    // request: the receiver holds what was charged, and the ledger says what the chain says.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (claimed, settled) = loop {
        let totals = receiver_totals(rpc_url, pay_to, token).await;
        if totals == (2_010_000, 2_010_000) || std::time::Instant::now() > deadline {
            break totals;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!((claimed, settled), (2_010_000, 2_010_000));
    // At most a claim and a sweep per tick of the two-second schedule and per crossing of
    // the threshold (2.01 USDC charged against 0.5), however slow this machine is; and far
    // from one per request.
    let transactions = block_number(rpc_url).await - blocks_before;
    let ticks = started.elapsed().as_secs() / 2 + 1;
    let bound = 1 + 2 * (ticks + 2_010_000 / 500_000);
    assert!(
        transactions <= bound && transactions < 60,
        "one deposit and a few claims and sweeps, not one per request: {transactions} (bound {bound})"
    );
    wait_for(
        "the ledger's sweep lines",
        std::time::Duration::from_secs(10),
        || (ledger_sum(&gw, "channel_swept") == 2_010_000).then_some(()),
    );
    assert_eq!(ledger_sum(&gw, "channel_claimed"), claimed);
    assert_eq!(
        balance(rpc_url, token, pay_to).await - receiver_before,
        settled
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("x402_channel_claims_total{operation=\"claim\",outcome=\"ok\"}"),
        "{metrics}"
    );
}

/// Polls the chain until the receiver's claimed and settled totals reach `want` (or 30 s).
async fn wait_totals(rpc_url: &str, receiver: &str, token: &str, want: u128) -> (u128, u128) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let totals = receiver_totals(rpc_url, receiver, token).await;
        if totals == (want, want) || std::time::Instant::now() > deadline {
            return totals;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_channel_hammered_through_three_replicas_is_charged_once_per_answer() {
    let redis = crate::support::redis::Redis::start();
    let net = Net::start("1");
    let (origin, rpc_url, token, pay_to) = (&net.origin, &*net.rpc, &*net.token, &*net.pay_to);
    let (payer, key) = net.payer(0);
    let payer_before = balance(rpc_url, token, payer).await;
    let gws: Vec<Gateway> = ["a", "b", "c"]
        .iter()
        .map(|r| {
            net.gateway(
                "channel_claim_interval_seconds = 2",
                Some((&redis.url(), r)),
            )
        })
        .collect();
    let urls: Vec<String> = gws.iter().map(|g| g.url("/api/item")).collect();

    // Eight workers share one client, so one channel; requests round-robin over the replicas.
    // Workers that signed the same next voucher lose the race: the corrective 402 tells the
    // client where the channel stands (a request whose retry loses again is refused).
    let out = pay_batch(
        &urls.join(","),
        rpc_url,
        key,
        &["--requests", "120", "--concurrency", "8"],
    )
    .await;
    assert!(out["error"].is_null(), "{}", out["error"]);
    let refusals: std::collections::BTreeMap<String, usize> = out["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["status"] != 200)
        .fold(Default::default(), |mut m, r| {
            let body: Value =
                serde_json::from_str(r["body"].as_str().unwrap_or("")).unwrap_or_default();
            *m.entry(body["error"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
            m
        });
    let served = out["statuses"]["200"].as_u64().unwrap_or(0) as u128;
    assert!(served >= 8, "{} {refusals:?}", out["statuses"]);
    assert!(
        refusals
            .keys()
            .all(|k| k == "invalid_batch_settlement_evm_cumulative_amount_mismatch"),
        "{refusals:?}"
    );
    // Each worker started without a channel and sent a deposit; one landed, the others lost
    // the channel's turn before anything was settled.
    assert_eq!(
        payer_before - balance(rpc_url, token, payer).await,
        5_000_000,
        "{}",
        out["sent"]
    );

    // A client that lost its state (a new process) resynchronizes from the first corrective
    // 402 and then pays every request.
    let again = pay_batch(&urls.join(","), rpc_url, key, &["--requests", "12"]).await;
    assert_eq!(again["statuses"]["200"], 12, "{}", again["statuses"]);
    assert_eq!(again["sent"]["deposit"], 0, "{}", again["sent"]);
    let ok = served + 12;
    let results: Vec<Value> = out["results"]
        .as_array()
        .into_iter()
        .chain(again["results"].as_array())
        .flatten()
        .cloned()
        .collect();

    // Charged exactly once per answer, across the replicas; nothing served unpaid.
    let charged: u128 = gws.iter().map(|g| ledger_sum(g, "channel_charged")).sum();
    assert_eq!(charged, ok * 10_000);
    assert_eq!(origin.requests().await as u128, ok);
    let highest = results
        .iter()
        .filter_map(|r| {
            r["receipt"]["extra"]["channelState"]["chargedCumulativeAmount"]
                .as_str()
                .and_then(|c| c.parse::<u128>().ok())
        })
        .max()
        .expect("receipts");
    assert_eq!(highest, charged);

    // One replica claims (the lease): the chain holds each charge once.
    let (claimed, settled) = wait_totals(rpc_url, pay_to, token, charged).await;
    assert_eq!((claimed, settled), (charged, charged));
    let ledger_claimed: u128 = gws.iter().map(|g| ledger_sum(g, "channel_claimed")).sum();
    assert_eq!(ledger_claimed, claimed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_withdrawal_is_claimed_against_before_it_completes() {
    let net = Net::start("1");
    // Claims only on the hour: what claims here is the withdrawal.
    let gw = net.gateway("channel_claim_interval_seconds = 3600", None);
    let (rpc_url, token, pay_to) = (&*net.rpc, &*net.token, &*net.pay_to);
    let (payer, key) = net.payer(0);
    let out = pay_batch(&gw.url("/api/item"), rpc_url, key, &["--requests", "20"]).await;
    assert_eq!(out["statuses"]["200"], 20, "{}", out["statuses"]);
    assert_eq!(receiver_totals(rpc_url, pay_to, token).await, (0, 0));

    // The payer starts taking all of its escrow back; the claimer sees it on chain and claims
    // what was charged before the delay ends.
    let withdraw = |extra: &'static [&'static str]| {
        let mut args: Vec<String> = vec![
            "--url".into(),
            gw.url("/api/item"),
            "--rpc-url".into(),
            rpc_url.into(),
            "--private-key".into(),
            key.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        async move { node_json("lib/batch-withdraw.mjs", &args, &[]).await }
    };
    let started = withdraw(&["--amount", "5000000"]).await;
    assert!(started["error"].is_null(), "{started}");
    let (claimed, settled) = wait_totals(rpc_url, pay_to, token, 200_000).await;
    assert_eq!((claimed, settled), (200_000, 200_000));

    // After the delay the payer gets back only what was not charged.
    rpc(rpc_url, "evm_increaseTime", json!([900])).await;
    rpc(rpc_url, "evm_mine", json!([])).await;
    let before = balance(rpc_url, token, payer).await;
    let done = withdraw(&["--finalize"]).await;
    assert!(done["error"].is_null(), "{done}");
    assert_eq!(balance(rpc_url, token, payer).await - before, 4_800_000);
    assert_eq!(ledger_sum(&gw, "channel_claimed"), 200_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_claiming_replica_dies_another_takes_the_lease_and_claims_nothing_twice() {
    let redis = crate::support::redis::Redis::start();
    let net = Net::start("1");
    let (rpc_url, token, pay_to) = (&*net.rpc, &*net.token, &*net.pay_to);
    let key = net.payer(0).1;
    let gws: Vec<Gateway> = ["a", "b"]
        .iter()
        .map(|r| {
            net.gateway(
                "channel_claim_interval_seconds = 1",
                Some((&redis.url(), r)),
            )
        })
        .collect();
    let both = format!("{},{}", gws[0].url("/api/item"), gws[1].url("/api/item"));
    let first = pay_batch(&both, rpc_url, key, &["--requests", "30"]).await;
    assert_eq!(first["statuses"]["200"], 30, "{}", first["statuses"]);
    let (claimed, _) = wait_totals(rpc_url, pay_to, token, 300_000).await;
    assert_eq!(claimed, 300_000);

    // The replica that claimed dies; the other takes the lease once it runs out and claims
    // what was charged since, once.
    let leader = (0..2)
        .find(|i| ledger_sum(&gws[*i], "channel_claimed") > 0)
        .expect("a replica claimed");
    gws[leader].signal(nix::sys::signal::Signal::SIGKILL);
    let survivor = 1 - leader;
    let dead_claimed = ledger_sum(&gws[leader], "channel_claimed");
    let more = pay_batch(
        &gws[survivor].url("/api/item"),
        rpc_url,
        key,
        &["--requests", "20"],
    )
    .await;
    assert_eq!(more["statuses"]["200"], 20, "{}", more["statuses"]);
    let (claimed, settled) = wait_totals(rpc_url, pay_to, token, 500_000).await;
    assert_eq!((claimed, settled), (500_000, 500_000));
    assert_eq!(
        dead_claimed + ledger_sum(&gws[survivor], "channel_claimed"),
        claimed,
        "each claim is in one ledger, once"
    );
    assert!(ledger_sum(&gws[survivor], "channel_claimed") > 0);
    let ready = gws[survivor].admin_json("/readyz").await;
    assert_eq!(ready["channel_claimer"]["leader"], true, "{ready}");
    let view = gws[survivor].config_view().await;
    assert_eq!(
        view["channels"]["receiver_authorizers"][0]["signer"], "gateway",
        "{}",
        view["channels"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_claims_what_was_charged_and_returns_the_rest_on_chain() {
    let net = Net::start("1");
    // Claims only on the hour: what claims here is the refunds.
    let gw = net.gateway("channel_claim_interval_seconds = 3600", None);
    let (origin, rpc_url, token, pay_to) = (&net.origin, &*net.rpc, &*net.token, &*net.pay_to);
    let (payer, key) = net.payer(0);
    let url = gw.url("/api/item");

    // 20 requests, then the reference client asks for $1 back: one transaction claims the
    // $0.20 charged and returns $1; the gateway answers it, the origin never sees it.
    let before = balance(rpc_url, token, payer).await;
    let out = pay_batch(
        &url,
        rpc_url,
        key,
        &["--requests", "20", "--refund", "1000000"],
    )
    .await;
    assert_eq!(out["statuses"]["200"], 20, "{}", out["statuses"]);
    let refund = &out["refund"];
    assert!(refund["error"].is_null(), "{refund}");
    let receipt = &refund["receipt"];
    assert_eq!(receipt["success"], true, "{receipt}");
    assert_eq!(receipt["amount"], "1000000", "{receipt}");
    let tx = receipt["transaction"].as_str().expect("transaction");
    assert_eq!(tx.len(), 66, "{receipt}");
    let state = &receipt["extra"]["channelState"];
    assert_eq!(state["balance"], "4000000", "{receipt}");
    assert_eq!(state["totalClaimed"], "200000", "{receipt}");
    assert_eq!(state["chargedCumulativeAmount"], "200000", "{receipt}");
    assert_eq!(before - balance(rpc_url, token, payer).await, 4_000_000);
    assert_eq!(receiver_totals(rpc_url, pay_to, token).await.0, 200_000);
    assert_eq!(origin.requests().await, 20);
    let refunds: Vec<Value> = gw
        .ledger()
        .into_iter()
        .filter(|l| l["event"] == "channel_refunded" || l["event"] == "channel_claimed")
        .collect();
    // The refund and the claim it made, both in the refund's transaction.
    assert_eq!(refunds.len(), 2, "{refunds:?}");
    assert!(
        refunds.iter().all(|l| l["transaction"] == tx),
        "{refunds:?}"
    );
    assert_eq!(ledger_sum(&gw, "channel_refunded"), 1_000_000);
    assert_eq!(ledger_sum(&gw, "channel_claimed"), 200_000);

    // Refunds the gateway refuses, with the scheme's reasons and nothing moved: one whose
    // voucher does not name what was charged (the corrective 402 says what was), and one
    // signed by someone else.
    let (status, required) = voucher(&gw, "/api/item", key, 150_000, &["--refund", "all"]).await;
    assert_eq!(status, 402, "{required}");
    assert_eq!(
        required["error"], "invalid_batch_settlement_evm_cumulative_amount_mismatch",
        "{required}"
    );
    assert_eq!(
        required["accepts"][0]["extra"]["channelState"]["chargedCumulativeAmount"], "200000",
        "{required}"
    );
    let other = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    let (status, required) = voucher(
        &gw,
        "/api/item",
        key,
        200_000,
        &["--refund", "all", "--signer-key", other],
    )
    .await;
    assert_eq!(status, 402, "{required}");
    assert_eq!(
        required["error"], "invalid_batch_settlement_evm_voucher_signature",
        "{required}"
    );

    // A new client (no state) resynchronizes, pays 5 more requests from the escrow left, then
    // takes all the rest back.
    let out = pay_batch(&url, rpc_url, key, &["--requests", "5", "--refund", "all"]).await;
    assert_eq!(out["statuses"]["200"], 5, "{}", out["statuses"]);
    assert_eq!(out["sent"]["deposit"], 0, "{}", out["sent"]);
    let receipt = &out["refund"]["receipt"];
    assert_eq!(receipt["amount"], "3750000", "{}", out["refund"]);
    assert_eq!(before - balance(rpc_url, token, payer).await, 250_000);

    // The claimer sweeps what the refunds claimed to the receiver; the ledger says what the
    // chain says, and the payer paid exactly what was served.
    let (claimed, settled) = wait_totals(rpc_url, pay_to, token, 250_000).await;
    assert_eq!((claimed, settled), (250_000, 250_000));
    wait_for(
        "the ledger's sweep line",
        std::time::Duration::from_secs(10),
        || (ledger_sum(&gw, "channel_swept") == 250_000).then_some(()),
    );
    assert_eq!(ledger_sum(&gw, "channel_claimed"), 250_000);
    assert_eq!(ledger_sum(&gw, "channel_refunded"), 4_750_000);

    // Nothing is left to refund: refused before any transaction.
    let blocks = block_number(rpc_url).await;
    let (status, required) = voucher(&gw, "/api/item", key, 250_000, &["--refund", "all"]).await;
    assert_eq!(status, 402, "{required}");
    assert_eq!(
        required["error"], "invalid_batch_settlement_evm_refund_no_balance",
        "{required}"
    );
    assert_eq!(block_number(rpc_url).await, blocks);
    assert_eq!(ledger_sum(&gw, "channel_charged"), 250_000);
    assert_eq!(origin.requests().await, 25);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("x402_channel_claims_total{operation=\"refund\",outcome=\"ok\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_channel_is_refunded_with_its_charges_claimed_then_retired() {
    let net = Net::start("1");
    // On Redis: the record is dropped by its script (a tombstone keeps the version).
    let redis = crate::support::redis::Redis::start();
    let gw = net.gateway(
        "channel_claim_interval_seconds = 3600\nchannel_refund_idle_seconds = 2\nchannel_retire_seconds = 10",
        Some((&redis.url(), "idle-1")),
    );
    let (rpc_url, token, pay_to) = (&*net.rpc, &*net.token, &*net.pay_to);
    let (payer, key) = net.payer(0);
    let before = balance(rpc_url, token, payer).await;
    let out = pay_batch(&gw.url("/api/item"), rpc_url, key, &["--requests", "10"]).await;
    assert_eq!(out["statuses"]["200"], 10, "{}", out["statuses"]);
    assert_eq!(before - balance(rpc_url, token, payer).await, 5_000_000);

    // Two seconds without a request: the claimer claims the $0.10 charged and returns the
    // rest in one transaction, then sweeps the claim to the receiver.
    let (claimed, settled) = wait_totals(rpc_url, pay_to, token, 100_000).await;
    assert_eq!((claimed, settled), (100_000, 100_000));
    assert_eq!(before - balance(rpc_url, token, payer).await, 100_000);
    wait_for(
        "the ledger's refund and sweep lines",
        std::time::Duration::from_secs(10),
        || (ledger_sum(&gw, "channel_swept") == 100_000).then_some(()),
    );
    assert_eq!(ledger_sum(&gw, "channel_refunded"), 4_900_000);
    assert_eq!(ledger_sum(&gw, "channel_claimed"), 100_000);
    let ready = gw.admin_json("/readyz").await;
    assert_eq!(ready["channel_claimer"]["failures"], 0, "{ready}");

    // It owes nothing now: ten seconds later its record leaves the state store.
    let gauge = "x402_channels{network=\"eip155:31337\"}";
    assert!(gw.metrics().await.contains(&format!("{gauge} 1")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !gw.metrics().await.contains(&format!("{gauge} 0")) {
        assert!(std::time::Instant::now() < deadline, "never retired");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // The same channel paid again starts from the chain: a top-up (the escrow went back),
    // then vouchers continuing from what was claimed; the new charges land on chain too.
    let out = pay_batch(&gw.url("/api/item"), rpc_url, key, &["--requests", "3"]).await;
    assert_eq!(out["statuses"]["200"], 3, "{}", out);
    assert_eq!(out["sent"]["deposit"], 1, "{}", out["sent"]);
    let last = &out["results"][2]["receipt"]["extra"]["channelState"];
    assert_eq!(last["chargedCumulativeAmount"], "130000", "{last}");
    assert_eq!(ledger_sum(&gw, "channel_charged"), 130_000);
    stop_and_expect_claimed(&gw, &net, 130_000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_stops_claims_everything_it_served_first() {
    let net = Net::start("1");
    let gw = net.gateway("channel_claim_interval_seconds = 3600", None);
    let (rpc_url, token, pay_to) = (&*net.rpc, &*net.token, &*net.pay_to);
    let key = net.payer(0).1;
    let out = pay_batch(&gw.url("/api/item"), rpc_url, key, &["--requests", "15"]).await;
    assert_eq!(out["statuses"]["200"], 15, "{}", out["statuses"]);
    assert_eq!(receiver_totals(rpc_url, pay_to, token).await, (0, 0));
    // Stopped before the interval came: the last pass, after the last answer, claims and
    // sweeps every charge.
    stop_and_expect_claimed(&gw, &net, 150_000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permit2_deposit_opens_the_channel_and_its_charges_land_on_chain() {
    // Payers approved Permit2 once, as a token without ERC-3009 needs.
    let net = Net::start_with("1", &["--permit2-approve"]);
    let gw = net.gateway("channel_claim_interval_seconds = 3600", None);
    let (rpc_url, token) = (&*net.rpc, &*net.token);
    let (payer, key) = net.payer(0);

    // The 402 tells the reference client to deposit through Permit2.
    let pr = payment_required(&gw.url("/p2/x")).await;
    assert_eq!(
        pr["accepts"][0]["extra"]["assetTransferMethod"], "permit2",
        "{pr}"
    );

    let payer_before = balance(rpc_url, token, payer).await;
    let blocks_before = block_number(rpc_url).await;
    let out = pay_batch(&gw.url("/p2/item"), rpc_url, key, &["--requests", "20"]).await;
    assert!(out["error"].is_null(), "{}", out["error"]);
    assert_eq!(out["statuses"]["200"], 20, "{}", out["statuses"]);
    assert_eq!(out["sent"]["deposit"], 1, "{}", out["sent"]);
    assert_eq!(out["sent"]["voucher"], 19, "{}", out["sent"]);
    let first = &out["results"][0]["receipt"];
    assert!(
        first["transaction"].as_str().is_some_and(|t| t.len() == 66),
        "{first}"
    );
    // The deposit is the only transaction, and it moved the escrow through Permit2.
    assert_eq!(block_number(rpc_url).await - blocks_before, 1);
    assert_eq!(
        payer_before - balance(rpc_url, token, payer).await,
        5_000_000
    );
    assert_eq!(balance(rpc_url, token, CHANNELS).await, 5_000_000);
    assert_eq!(net.origin.requests().await, 20);
    assert_eq!(ledger_sum(&gw, "channel_charged"), 200_000);

    // The charges land on chain like any channel's: claimed and swept when the gateway stops.
    stop_and_expect_claimed(&gw, &net, 200_000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_smart_wallet_pays_with_vouchers_its_contract_checks() {
    let net = Net::start("1");
    let gw = net.gateway(
        "channel_claim_interval_seconds = 3600\nfailed_payments_per_payer = 1\nfailed_payments_per_client = 3",
        None,
    );
    let (rpc_url, token) = (&*net.rpc, &*net.token);
    let key = net.payer(0).1;
    // Our ERC-1271 wallet, owned by the payer's key, holding 10 TUSD.
    let args: Vec<String> = ["--rpc-url", rpc_url, "--private-key", key, "--token", token]
        .iter()
        .map(|s| s.to_string())
        .chain(["--fund".to_owned(), "10000000".to_owned()])
        .collect();
    let made = node_json("lib/smart-wallet.mjs", &args, &[]).await;
    let wallet = made["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{made}"))
        .to_owned();

    // The channel's payer is the wallet and its payer authorizer the zero address: the gateway
    // cannot recover a voucher's signer, so every voucher is checked by the facilitator, which
    // asks the wallet (ERC-1271).
    let out = pay_batch(
        &gw.url("/api/item"),
        rpc_url,
        key,
        &["--requests", "10", "--wallet", &wallet],
    )
    .await;
    assert!(out["error"].is_null(), "{}", out["error"]);
    assert_eq!(out["statuses"]["200"], 10, "{}", out["statuses"]);
    assert_eq!(out["sent"]["deposit"], 1, "{}", out["sent"]);
    assert_eq!(out["sent"]["voucher"], 9, "{}", out["sent"]);
    assert_eq!(balance(rpc_url, token, &wallet).await, 5_000_000);
    assert_eq!(net.origin.requests().await, 10);
    assert_eq!(ledger_sum(&gw, "channel_charged"), 100_000);

    // The next voucher signed by another key is refused (the wallet says no), nothing served.
    let other = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    let (status, required) = voucher(&gw, "/api/item", other, 110_000, &["--payer", &wallet]).await;
    assert_eq!(status, 402, "{required}");
    assert_eq!(
        required["error"], "invalid_batch_settlement_evm_voucher_signature",
        "{required}"
    );
    assert_eq!(net.origin.requests().await, 10);
    assert_eq!(ledger_sum(&gw, "channel_charged"), 100_000);
    // The owner's is taken: a refusal of a signature nobody here could check does not count
    // against the payer the payload names (one refusal would be its limit here), or anyone
    // could lock a payer out.
    let (status, required) = voucher(&gw, "/api/item", key, 110_000, &["--payer", &wallet]).await;
    assert_eq!(status, 200, "{required}");
    // A refund asked with a signature the gateway cannot check and a wrong amount shows
    // nothing of the channel (its charges, the owner's last voucher) until the facilitator
    // checked the signature, and the wallet says no.
    let (status, required) = voucher(
        &gw,
        "/api/item",
        other,
        50_000,
        &["--payer", &wallet, "--refund", "all"],
    )
    .await;
    assert_eq!(status, 402, "{required}");
    assert_eq!(
        required["error"], "invalid_batch_settlement_evm_voucher_signature",
        "{required}"
    );
    let offers = required["accepts"].as_array().expect("accepts");
    assert!(
        offers
            .iter()
            .all(|o| o["extra"].get("channelState").is_none()
                && o["extra"].get("voucherState").is_none()),
        "{required}"
    );
    // Each signature the facilitator refused counts against the client that sent it, as for
    // any scheme: after its third, this client's next payment waits (429), nothing served.
    let (status, required) = voucher(&gw, "/api/item", other, 120_000, &["--payer", &wallet]).await;
    assert_eq!(
        required["error"], "invalid_batch_settlement_evm_voucher_signature",
        "{required}"
    );
    let (status_limited, _) = voucher(&gw, "/api/item", key, 120_000, &["--payer", &wallet]).await;
    assert_eq!((status, status_limited), (402, 429));
    assert_eq!(net.origin.requests().await, 11);

    // The claims land: the channel contract checks each voucher with the wallet too.
    stop_and_expect_claimed(&gw, &net, 110_000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_authorizer_address_the_facilitator_signs_the_claims_and_refunds() {
    // The facilitator holds the receiver authorizer's key; the gateway only knows its address
    // and sends claims and refunds unsigned.
    let net = Net::start_with("1", &["--batch-authorizer-key", AUTHORIZER_KEY]);
    let rules = rules().replace(AUTHORIZER_KEY, AUTHORIZER_ADDRESS);
    let gw = net.gateway_selling(&rules, "channel_claim_interval_seconds = 3600", None);
    let (rpc_url, token, pay_to) = (&*net.rpc, &*net.token, &*net.pay_to);
    let (payer, key) = net.payer(0);
    let url = gw.url("/api/item");
    let before = balance(rpc_url, token, payer).await;

    // 10 requests, then all the escrow not charged back: one transaction (claim + refund)
    // that only the facilitator could sign.
    let out = pay_batch(&url, rpc_url, key, &["--requests", "10", "--refund", "all"]).await;
    assert_eq!(out["statuses"]["200"], 10, "{}", out["statuses"]);
    let receipt = &out["refund"]["receipt"];
    assert_eq!(receipt["success"], true, "{}", out["refund"]);
    assert_eq!(receipt["amount"], "4900000", "{receipt}");
    assert_eq!(before - balance(rpc_url, token, payer).await, 100_000);
    assert_eq!(receiver_totals(rpc_url, pay_to, token).await.0, 100_000);

    // A second channel's charges, claimed when the gateway stops: a claim the facilitator
    // signs. The receiver ends up with both, swept.
    let out = pay_batch(
        &url,
        rpc_url,
        key,
        &["--requests", "5", "--salt", &format!("0x{:064x}", 7)],
    )
    .await;
    assert_eq!(out["statuses"]["200"], 5, "{}", out["statuses"]);
    stop_and_expect_claimed(&gw, &net, 150_000).await;
    assert_eq!(ledger_sum(&gw, "channel_refunded"), 4_900_000);
}
