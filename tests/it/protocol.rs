//! Protocol parity with the reference packages: the payment flow each offer names, the
//! `payment-identifier` extension (a retry served again without a second charge, on any
//! replica sharing the state store; a conflicting reuse refused), the `bazaar` extension as
//! `@x402/extensions` reads it, and the discovery documents as `@agentcash/discovery` and an
//! OpenAPI validator read them. Payments are real: a chain, a facilitator, the reference client.

use serde_json::Value;

use crate::support::chain::balance;
use crate::support::redis::Redis;
use crate::support::*;

const RULES: &str = r#"
[[rule]]
id = "weather"
path = "/api/weather"
methods = ["GET"]
price = "$0.01"
description = "Current weather"
mime_type = "application/json"

[rule.discovery]
input = { city = "Paris" }
input_schema = { properties = { city = { type = "string", description = "City name" } }, required = ["city"] }
output_example = { city = "Paris", temperature_c = 18 }
output_schema = { properties = { temperature_c = { type = "number" } } }

[[rule]]
id = "summarize"
path = "/api/summarize"
methods = ["POST"]
price = "$0.02"
settlement = "before"
description = "Summarize a text"

[rule.discovery]
body_type = "json"
input = { text = "A long text" }
input_schema = { properties = { text = { type = "string" } }, required = ["text"] }

[[rule]]
id = "reports"
prefix = "/reports/"
price = "$0.05"
description = "Research reports"

[rule.discovery]
path = "/reports/latest"

[[rule]]
id = "hidden"
path = "/api/hidden"
price = "$0.01"

[rule.discovery]
listed = false
"#;

const PAYMENT_ID: &str = "pay_protocol_0123456789abcdef";

/// The fleet's public name: every replica names resources under it, so a payment bound to a
/// request at one replica is the same request at the other.
const PUBLIC: &str = "http://api.protocol.test";

/// A devnet, an origin, and replicas `a` and `b` sharing one Redis.
struct Fleet {
    dev: NodeProc,
    _origin: Origin,
    _redis: Redis,
    a: Gateway,
    b: Gateway,
}

impl Fleet {
    fn start() -> Fleet {
        let dev = NodeProc::start("lib/devnet.mjs", &["--chain-id", "31337", "--payers", "1"]);
        let origin = Origin::start("protocol-origin");
        let redis = Redis::start();
        let fac = dev.info["facilitatorUrl"].as_str().expect("fac").to_owned();
        let replica = |name: &str| {
            let config = paid_config(
                &origin.addr,
                &dev.info,
                &facilitator_toml("local", &fac, 0, ""),
                &format!("public_base_url = \"{PUBLIC}\""),
            ) + &format!(
                "\n[state]\nbackend = \"redis\"\nurl = \"{}\"\nreplica_id = \"{name}\"\n\n[discovery]\nwell_known = \"/.well-known/x402\"\nopenapi = \"/openapi.json\"\ntitle = \"Protocol test API\"\nownership_proofs = [\"0xproof\"]\n",
                redis.url()
            );
            Gateway::start(&config, &[("rules.toml", RULES)])
        };
        let (a, b) = (replica("a"), replica("b"));
        Fleet {
            dev,
            _origin: origin,
            _redis: redis,
            a,
            b,
        }
    }

    fn payer(&self) -> (&str, &str) {
        let p = &self.dev.info["payers"][0];
        (
            p["address"].as_str().expect("address"),
            p["privateKey"].as_str().expect("key"),
        )
    }

    async fn balance(&self, who: &str) -> u128 {
        balance(
            self.dev.info["rpcUrl"].as_str().expect("rpc"),
            self.dev.info["token"]["address"].as_str().expect("token"),
            who,
        )
        .await
    }

    fn pay_to(&self) -> &str {
        self.dev.info["payTo"].as_str().expect("payTo")
    }

    /// The reference client's payment for `url` (built, not sent).
    async fn reference_payment(&self, url: &str, extra: &[&str]) -> Value {
        let out = reference("pay", url, self.payer().1, extra).await;
        assert!(out["error"].is_null(), "{url}: {out}");
        out
    }
}

/// Runs `lib/extensions.mjs` in `mode` on `url` as the payer holding `key` (the reference
/// packages' side of each check).
async fn reference(mode: &str, url: &str, key: &str, extra: &[&str]) -> Value {
    let mut args = vec![mode.to_owned()];
    args.extend(payer_args(url, key, extra));
    node_json("lib/extensions.mjs", &args, &[]).await
}

async fn send(gw: &Gateway, path: &str, header: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .header("PAYMENT-SIGNATURE", header)
        .send()
        .await
        .expect("paid request")
}

#[tokio::test(flavor = "multi_thread")]
async fn flows_identifiers_and_discovery_with_the_reference_packages() {
    let f = Fleet::start();
    let (payer, _) = f.payer();
    let (payer_before, merchant_before) = (f.balance(payer).await, f.balance(f.pay_to()).await);

    // Payment flows: the client drops the offer whose flow it does not know (put first, and
    // cheaper) and pays ours, echoing the flow we marked.
    let made = f
        .reference_payment(
            &f.a.url("/api/weather?city=Paris"),
            &["--payment-id", PAYMENT_ID, "--unknown-flow"],
        )
        .await;
    let accepted = &made["paymentPayload"]["accepted"];
    assert_eq!(accepted["extra"]["paymentFlow"], "authorization", "{made}");
    assert_eq!(accepted["amount"], "10000", "{made}");
    // The extensions as the reference packages read them.
    assert_eq!(made["bazaar"]["valid"], true, "{made}");
    assert_eq!(made["bazaar"]["spec"]["valid"], true, "{made}");
    assert_eq!(made["bazaar"]["discovery"]["method"], "GET", "{made}");
    assert_eq!(
        made["bazaar"]["discovery"]["discoveryInfo"]["input"]["queryParams"]["city"],
        "Paris"
    );
    assert_eq!(made["paymentIdentifier"]["valid"], true, "{made}");
    assert_eq!(
        made["paymentPayload"]["extensions"]["payment-identifier"]["info"]["id"],
        PAYMENT_ID
    );
    let header = made["header"].as_str().expect("header").to_owned();

    // Paid once at replica a.
    let first = send(&f.a, "/api/weather?city=Paris", &header).await;
    assert_eq!(first.status(), 200);
    let receipt = first
        .headers()
        .get("payment-response")
        .expect("receipt")
        .to_str()
        .expect("ascii")
        .to_owned();
    let tx = decode_header(&receipt)["transaction"]
        .as_str()
        .expect("tx")
        .to_owned();
    assert_eq!(f.balance(payer).await, payer_before - 10_000);
    assert_eq!(f.balance(f.pay_to()).await, merchant_before + 10_000);

    // The client lost the answer and retries the same payment: served again, uncharged, with
    // the same receipt; at replica b as well.
    for gw in [&f.a, &f.b] {
        let again = send(gw, "/api/weather?city=Paris", &header).await;
        if again.status() != 200 {
            panic!(
                "retry: {} {}\n{}",
                again.status(),
                again.text().await.unwrap_or_default(),
                gw.log_text()
            );
        }
        assert_eq!(
            again
                .headers()
                .get("payment-response")
                .map(|v| v.as_bytes()),
            Some(receipt.as_bytes())
        );
        let body: Value = again.json().await.expect("origin json");
        assert_eq!(body["origin"], "protocol-origin");
    }
    assert_eq!(f.balance(payer).await, payer_before - 10_000);
    assert_eq!(f.balance(f.pay_to()).await, merchant_before + 10_000);
    let settled: Vec<Value> = [&f.a, &f.b]
        .iter()
        .flat_map(|gw| gw.ledger())
        .filter(|l| l["event"] == "settled")
        .collect();
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0]["transaction"], tx.as_str());

    // Another payment under the same name, or the same payment for another request: 409,
    // nothing moves.
    let other = f
        .reference_payment(
            &f.b.url("/api/weather?city=Paris"),
            &["--payment-id", PAYMENT_ID],
        )
        .await;
    let conflict = send(
        &f.b,
        "/api/weather?city=Paris",
        other["header"].as_str().expect("h"),
    )
    .await;
    assert_eq!(conflict.status(), 409);
    let body: Value = conflict.json().await.expect("json");
    assert_eq!(body["error"], "payment_identifier_conflict");
    let elsewhere = send(&f.a, "/api/weather?city=Oslo", &header).await;
    assert_eq!(elsewhere.status(), 409);
    assert_eq!(f.balance(payer).await, payer_before - 10_000);

    // A settle-before rule is offered as `upfront`, and the client pays it as such.
    let upfront = f
        .reference_payment(&f.a.url("/api/summarize"), &["--method", "POST"])
        .await;
    assert_eq!(
        upfront["paymentPayload"]["accepted"]["extra"]["paymentFlow"], "upfront",
        "{upfront}"
    );
    assert_eq!(
        upfront["bazaar"]["discovery"]["method"], "POST",
        "{upfront}"
    );
    assert_eq!(
        upfront["paymentPayload"]["extensions"]["bazaar"]["info"]["input"]["bodyType"],
        "json"
    );
    // An unlisted rule carries no bazaar extension.
    let hidden = f.reference_payment(&f.a.url("/api/hidden"), &[]).await;
    assert!(hidden["bazaar"].is_null(), "{hidden}");

    // Discovery documents, read by the discovery packages.
    let d = node_json(
        "lib/extensions.mjs",
        &["discover".into(), "--origin".into(), f.a.url("")],
        &[],
    )
    .await;
    assert!(d["error"].is_null(), "{d}");
    assert_eq!(d["openapiValid"], true, "{d}");
    assert_eq!(d["discovery"]["found"], true, "{d}");
    let endpoints = d["discovery"]["endpoints"].as_array().expect("endpoints");
    let keys: Vec<String> = endpoints
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["method"].as_str().unwrap_or(""),
                e["path"].as_str().unwrap_or("")
            )
        })
        .collect();
    for want in [
        "GET /api/weather",
        "POST /api/summarize",
        "GET /reports/latest",
    ] {
        assert!(
            keys.iter().any(|k| k == want),
            "{want} missing from {keys:?} ({d})"
        );
    }
    assert!(!keys.iter().any(|k| k.contains("hidden")), "{keys:?}");
    let wk = &d["wellKnown"]["body"];
    assert_eq!(wk["version"], 1, "{d}");
    assert_eq!(wk["ownershipProofs"][0], "0xproof");
    let resources: Vec<&str> = wk["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        resources,
        [
            format!("{PUBLIC}/api/weather"),
            format!("{PUBLIC}/api/summarize"),
            format!("{PUBLIC}/reports/latest")
        ]
    );
    // The command line prints the same document the listener serves.
    let served: Value = client()
        .get(f.a.url("/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let (code, stdout, stderr) = crate::core::gateway_cli(
        &[
            "discovery",
            "-c",
            f.a.path("gateway.toml").to_str().expect("path"),
            "--base-url",
            PUBLIC,
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).expect("printed json");
    assert_eq!(printed, served);
}

const SIGN_IN_RULES: &str = r#"
[[rule]]
id = "article"
path = "/articles/one"
methods = ["GET"]
price = "$0.01"
description = "One article"
sign_in_window = "1h"
"#;

/// The error a 402 names (its v1 body's `error`).
async fn refusal(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_past_payer_signs_in_instead_of_paying_again() {
    let dev = NodeProc::start("lib/devnet.mjs", &["--chain-id", "31337", "--payers", "2"]);
    let origin = Origin::start("sign-in-origin");
    let fac = dev.info["facilitatorUrl"].as_str().expect("fac").to_owned();
    // Sign-ins are bound to the public origin, which here is the gateway's own address: the
    // reference client signs only for the origin that answered.
    let port = crate::support::redis::free_port();
    let public = format!("http://127.0.0.1:{port}");
    let config = paid_config(
        &origin.addr,
        &dev.info,
        &facilitator_toml("local", &fac, 0, ""),
        &format!("public_base_url = \"{public}\""),
    )
    .replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:{port}\"]"),
    );
    let gw = Gateway::start(&config, &[("rules.toml", SIGN_IN_RULES)]);
    let url = gw.url("/articles/one");
    let key = |i: usize| {
        dev.info["payers"][i]["privateKey"]
            .as_str()
            .expect("key")
            .to_owned()
    };
    let payer = dev.info["payers"][0]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let (rpc, token) = (
        dev.info["rpcUrl"].as_str().expect("rpc"),
        dev.info["token"]["address"].as_str().expect("token"),
    );

    // The 402 offers sign-in, bound to the public origin and this resource.
    let r = client().get(&url).send().await.expect("402");
    let pr = decode_header(
        r.headers()
            .get("payment-required")
            .expect("header")
            .to_str()
            .expect("ascii"),
    );
    let info = &pr["extensions"]["sign-in-with-x"]["info"];
    assert_eq!(info["domain"], format!("127.0.0.1:{port}"));
    assert_eq!(info["uri"], url);
    assert_eq!(
        pr["extensions"]["sign-in-with-x"]["supportedChains"][0]["chainId"],
        "eip155:31337"
    );

    // Not paid yet: signing in is not enough.
    let before = reference("siwx-fetch", &url, &key(0), &[]).await;
    assert_eq!(before["status"], 402, "{before}");
    assert!(
        before["body"]
            .as_str()
            .unwrap_or("")
            .contains("siwx_not_paid"),
        "{before}"
    );

    // Paid once with the reference client.
    let paid = pay_v2(&url, &key(0), &[]).await;
    assert_eq!(paid["status"], 200, "{paid}");
    let after_payment = balance(rpc, token, &payer).await;

    // Signed in: read again without paying (the reference client's own flow).
    let again = reference("siwx-fetch", &url, &key(0), &[]).await;
    assert_eq!(again["status"], 200, "{again}");
    assert!(
        again["body"]
            .as_str()
            .unwrap_or("")
            .contains("sign-in-origin"),
        "{again}"
    );

    // A sign-in works once: replayed, it is refused.
    let made = reference("siwx-header", &url, &key(0), &[]).await;
    assert!(made["error"].is_null(), "{made}");
    let header = made["header"].as_str().expect("header");
    let first = client()
        .get(&url)
        .header("SIGN-IN-WITH-X", header)
        .send()
        .await
        .expect("sign-in");
    assert_eq!(first.status(), 200);
    let replayed = client()
        .get(&url)
        .header("SIGN-IN-WITH-X", header)
        .send()
        .await
        .expect("replay");
    assert_eq!(refusal(replayed).await, (402, "invalid_siwx_nonce".into()));

    // Signed for another domain: refused, whatever Host the request names.
    let other = reference("siwx-header", &url, &key(0), &["--domain", "evil.example"]).await;
    let res = client()
        .get(&url)
        .header("SIGN-IN-WITH-X", other["header"].as_str().expect("header"))
        .header("Host", "evil.example")
        .send()
        .await
        .expect("other domain");
    assert_eq!(
        refusal(res).await,
        (402, "invalid_siwx_domain_mismatch".into())
    );

    // An address that never paid: refused.
    let stranger = reference("siwx-fetch", &url, &key(1), &[]).await;
    assert_eq!(stranger["status"], 402, "{stranger}");
    assert!(
        stranger["body"]
            .as_str()
            .unwrap_or("")
            .contains("siwx_not_paid"),
        "{stranger}"
    );

    // Nothing moved after the one payment.
    assert_eq!(balance(rpc, token, &payer).await, after_payment);
}

const PENDING_RULES: &str = r#"
[[rule]]
id = "lands"
path = "/lands"
methods = ["GET"]
price = "$0.01"

[[rule]]
id = "never"
path = "/never"
methods = ["GET"]
price = "$0.01"
max_timeout_seconds = 15
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_settlement_is_followed_on_chain_until_it_lands_or_expires() {
    let dev = NodeProc::start("lib/devnet.mjs", &["--chain-id", "31337", "--payers", "1"]);
    let origin = Origin::start("pending-origin");
    let fac = dev.info["facilitatorUrl"].as_str().expect("fac").to_owned();
    let gw = Gateway::start(
        &paid_config(
            &origin.addr,
            &dev.info,
            &facilitator_toml("local", &fac, 0, ""),
            "pending_settlement_wait_ms = 8000",
        ),
        &[("rules.toml", PENDING_RULES)],
    );
    let (payer, key) = (
        dev.info["payers"][0]["address"].as_str().expect("address"),
        dev.info["payers"][0]["privateKey"].as_str().expect("key"),
    );
    let (rpc, token) = (
        dev.info["rpcUrl"].as_str().expect("rpc"),
        dev.info["token"]["address"].as_str().expect("token"),
    );
    let pending = |land: Value| {
        let fac = fac.clone();
        async move {
            facilitator_config(
                &fac,
                &serde_json::json!({"settlePending": {"landAfterMs": land}}),
            )
            .await;
        }
    };
    let before = balance(rpc, token, payer).await;

    // The facilitator answers `settlement_pending` and the transaction lands 3 s later: the
    // gateway follows it on chain and answers 200 with the receipt, charged once.
    pending(serde_json::json!(3000)).await;
    let paid = pay_v2(&gw.url("/lands"), key, &[]).await;
    assert_eq!(paid["status"], 200, "{paid}");
    assert!(
        paid["body"]
            .as_str()
            .unwrap_or("")
            .contains("pending-origin"),
        "{paid}"
    );
    let tx = paid["receipt"]["transaction"]
        .as_str()
        .expect("tx")
        .to_owned();
    assert_eq!(paid["receipt"]["success"], true);
    assert_eq!(balance(rpc, token, payer).await, before - 10_000);
    let settled: Vec<Value> = gw
        .ledger()
        .into_iter()
        .filter(|l| l["rule"] == "lands")
        .collect();
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0]["event"], "settled");
    assert_eq!(settled[0]["transaction"], tx.as_str());

    // One that never lands: no body, nothing charged; the ledger says pending, and once the
    // authorization expired unused, expired.
    pending(Value::Null).await;
    let stuck = pay_v2(&gw.url("/never"), key, &[]).await;
    assert_eq!(stuck["status"], 503, "{stuck}");
    assert!(
        !stuck["body"]
            .as_str()
            .unwrap_or("")
            .contains("pending-origin"),
        "{stuck}"
    );
    let events = |gw: &Gateway| -> Vec<String> {
        gw.ledger()
            .into_iter()
            .filter(|l| l["rule"] == "never")
            .map(|l| l["event"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(events(&gw), ["settle_pending"]);
    wait_for(
        "the pending settlement to expire",
        std::time::Duration::from_secs(60),
        || {
            let e = events(&gw);
            (e.len() == 2).then_some(e)
        },
    );
    assert_eq!(events(&gw), ["settle_pending", "expired_unsettled"]);
    assert_eq!(balance(rpc, token, payer).await, before - 10_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn our_permit2_and_upto_proxy_settle_with_the_reference_packages() {
    let out = node_json("lib/upto-contracts.mjs", &[], &[]).await;
    assert!(out["error"].is_null(), "{out}");
    let steps = out["steps"].as_object().expect("steps");
    for name in [
        "verify",
        "settle_less_than_ceiling",
        "replay_refused",
        "over_ceiling_refused",
        "other_sender_refused",
        "other_recipient_refused",
        "zero_moves_nothing",
    ] {
        assert_eq!(steps[name]["ok"], true, "{name}: {}", steps[name]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn our_batch_settlement_contracts_work_with_the_reference_packages() {
    let out = node_json("lib/batch-contracts.mjs", &[], &[]).await;
    assert!(out["error"].is_null(), "{out}");
    let steps = out["steps"].as_object().expect("steps");
    for name in [
        "channel_id_matches_reference",
        "deposit_verify",
        "deposit_settle",
        "deposit_replay_refused",
        "voucher_verify",
        "forged_voucher_refused_by_facilitator",
        "claim_above_voucher_refused",
        "claim_above_escrow_refused",
        "forged_voucher_refused_on_chain",
        "claim_by_stranger_refused",
        "batch_signed_by_someone_else_refused",
        "claim",
        "claim_replay_is_a_no_op",
        "settle",
        "settle_twice_pays_once",
        "refund_with_claim",
        "refund_nonce_reuse_refused",
        "collector_called_directly_refused",
        "withdraw_delay_out_of_range_refused",
        "withdraw_before_delay_refused",
        "claim_during_withdraw_delay",
        "withdraw_after_delay_takes_only_unclaimed",
        "withdrawal_cleared",
        "contract_holds_exactly_what_it_owes",
        "deposit_nonce_binds_channel",
        "permit2_deposit_signed_by_reference_client",
        "permit2_deposit_needs_allowance",
        "permit2_deposit_verify",
        "permit2_deposit_bound_to_its_channel",
        "permit2_deposit_settle",
        "permit2_deposit_replay_refused",
        "permit2_collector_called_directly_refused",
    ] {
        assert_eq!(steps[name]["ok"], true, "{name}: {}", steps[name]);
    }
    // No step the script added since is left unchecked.
    for (name, step) in steps {
        assert_eq!(step["ok"], true, "{name}: {step}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upto_charges_what_the_origin_states_never_above_the_ceiling() {
    let dev = NodeProc::start(
        "lib/devnet.mjs",
        &["--chain-id", "31337", "--payers", "1", "--permit2-approve"],
    );
    let origin = Origin::start("metered-origin");
    let fac = dev.info["facilitatorUrl"].as_str().expect("fac").to_owned();
    let signer = dev.info["facilitatorSigner"].as_str().expect("signer");
    let rules = format!(
        r#"
[[rule]]
id = "completion"
prefix = "/metered/"
methods = ["GET"]
schemes = ["exact", "upto"]
price = "$0.01"
max_price = "$0.05"
meter = "origin"
facilitator_address = "{signer}"

[[rule]]
id = "download"
prefix = "/bytes/"
methods = ["GET"]
schemes = ["upto"]
max_price = "$0.05"
meter = "bytes"
meter_price = "$0.0001"
facilitator_address = "{signer}"

[[rule]]
id = "stream"
prefix = "/slow/"
methods = ["GET"]
schemes = ["upto"]
max_price = "$0.05"
meter = "seconds"
meter_price = "$0.001"
facilitator_address = "{signer}"

[[rule]]
id = "drip"
prefix = "/drip/"
methods = ["GET"]
schemes = ["upto"]
max_price = "$0.05"
meter = "bytes"
meter_price = "$0.0001"
max_timeout_seconds = 25
facilitator_address = "{signer}"
"#
    );
    let gw = Gateway::start(
        &paid_config(
            &origin.addr,
            &dev.info,
            &facilitator_toml("local", &fac, 0, ""),
            "",
        ),
        &[("rules.toml", &rules)],
    );
    let (payer, key) = (
        dev.info["payers"][0]["address"].as_str().expect("address"),
        dev.info["payers"][0]["privateKey"].as_str().expect("key"),
    );
    let (rpc, token) = (
        dev.info["rpcUrl"].as_str().expect("rpc"),
        dev.info["token"]["address"].as_str().expect("token"),
    );
    let pay_to = dev.info["payTo"].as_str().expect("payTo");

    // One 402 offers both: exact at the price, upto at the ceiling through the upto proxy.
    let r = client()
        .get(gw.url("/metered/1"))
        .send()
        .await
        .expect("402");
    let pr = decode_header(
        r.headers()
            .get("payment-required")
            .expect("header")
            .to_str()
            .expect("ascii"),
    );
    let schemes: Vec<(&str, &str)> = pr["accepts"]
        .as_array()
        .expect("accepts")
        .iter()
        .map(|a| {
            (
                a["scheme"].as_str().unwrap_or(""),
                a["amount"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(schemes, [("exact", "10000"), ("upto", "50000")]);

    let paid_path = |path: &str| {
        let url = gw.url(path);
        async move { reference("pay-upto", &url, key, &[]).await }
    };
    let settled_amounts = || -> Vec<String> {
        gw.ledger()
            .into_iter()
            .filter(|l| l["event"] == "settled")
            .map(|l| l["amount"].as_str().unwrap_or("").to_owned())
            .collect()
    };

    // The origin states 12345: exactly that moves, and the statement never reaches the client.
    let (p0, m0) = (
        balance(rpc, token, payer).await,
        balance(rpc, token, pay_to).await,
    );
    let paid = paid_path("/metered/12345").await;
    assert_eq!(paid["status"], 200, "{paid}");
    assert_eq!(paid["accepted"]["scheme"], "upto", "{paid}");
    assert_eq!(paid["receipt"]["success"], true, "{paid}");
    assert!(
        paid["headers"].get("settlement-overrides").is_none(),
        "{paid}"
    );
    assert_eq!(balance(rpc, token, payer).await, p0 - 12_345);
    assert_eq!(balance(rpc, token, pay_to).await, m0 + 12_345);

    // An origin that overstates is capped at the ceiling the payer signed.
    let over = paid_path("/metered/999999999").await;
    assert_eq!(over["status"], 200, "{over}");
    assert_eq!(balance(rpc, token, payer).await, p0 - 12_345 - 50_000);

    // A zero charge moves nothing and names no transaction.
    let zero = paid_path("/metered/0").await;
    assert_eq!(zero["status"], 200, "{zero}");
    assert_eq!(zero["receipt"]["transaction"], "", "{zero}");
    assert_eq!(balance(rpc, token, payer).await, p0 - 12_345 - 50_000);

    assert_eq!(settled_amounts(), ["12345", "50000", "0"]);

    // Charged by the body, settled when it ended (the receipt is in the ledger): 10 KiB at
    // $0.0001 per started KiB is 1000 units; a 10 MB body is capped at the ceiling.
    let before = balance(rpc, token, payer).await;
    let small = paid_path("/bytes/10240").await;
    assert_eq!(small["status"], 200, "{small}");
    let settled = |n: usize| {
        wait_for(
            "the body-metered settlement",
            std::time::Duration::from_secs(30),
            || {
                let s = settled_amounts();
                (s.len() >= n).then_some(s)
            },
        )
    };
    assert_eq!(settled(4)[3], "1000");
    assert_eq!(balance(rpc, token, payer).await, before - 1_000);
    let big = paid_path("/bytes/10000000").await;
    assert_eq!(big["status"], 200, "{big}");
    assert_eq!(settled(5)[4], "50000");
    assert_eq!(balance(rpc, token, payer).await, before - 1_000 - 50_000);

    // A facilitator that claims an earlier settlement's transaction for a new payment is not
    // believed: the named transaction does not settle this permit, so nothing is served.
    let earlier = paid["receipt"]["transaction"].as_str().expect("tx");
    let lie = serde_json::json!({"settleOverride": {"status": 200, "times": 1, "body": {
        "success": true, "transaction": earlier, "network": "eip155:31337", "payer": payer}}});
    facilitator_config(&fac, &lie).await;
    let before_lie = balance(rpc, token, payer).await;
    let lied = paid_path("/metered/777").await;
    assert_ne!(lied["status"], 200, "{lied}");
    assert!(
        !lied["body"]
            .as_str()
            .unwrap_or("")
            .contains("metered-origin"),
        "{lied}"
    );
    assert_eq!(balance(rpc, token, payer).await, before_lie);

    // Charged by the second: a response that took 1.5 s pays for 2 started seconds (3 if this
    // machine added more than half a second of its own), never 1.
    let started = std::time::Instant::now();
    let slow = paid_path("/slow/1500").await;
    assert_eq!(slow["status"], 200, "{slow}");
    let charged: u128 = settled(6)[5].parse().expect("amount");
    let most = 1_000 * (started.elapsed().as_millis().div_ceil(1000));
    assert!(
        charged >= 2_000 && charged <= most && charged.is_multiple_of(1_000),
        "charged {charged}, at most {most}"
    );
    assert_eq!(
        balance(rpc, token, payer).await,
        before - 1_000 - 50_000 - charged
    );

    // A body-metered response stops before the payer's permit ends, and what it delivered
    // settles while the permit still can, even across a silence: the reference client signs
    // for the rule's 25 s and the response must stop 10 s before that. Of three KiB dripped
    // 12 s apart, one or two go out before that moment; the origin is then silent until the
    // third, after it, so the deadline's timer settles what went out, and the third is cut.
    let before_drip = balance(rpc, token, payer).await;
    let drip = paid_path("/drip/3/12000").await;
    assert_eq!(drip["status"], 200, "{drip}");
    assert!(
        drip["body"].is_null() && !drip["error"].is_null(),
        "the body was cut: {drip}"
    );
    let charged: u128 = settled(7)[6].parse().expect("amount");
    // A chunk counts once its write finished, which the next chunk shows: at the deadline
    // that is usually the first KiB (never more than the two sent before it).
    assert!(
        charged <= 200 && charged.is_multiple_of(100),
        "charged {charged} for what went out of 3 KiB"
    );
    assert_eq!(balance(rpc, token, payer).await, before_drip - charged);
    let cut = wait_for(
        "the cut delivery's ledger line",
        std::time::Duration::from_secs(10),
        || {
            gw.ledger()
                .into_iter()
                .find(|l| l["event"] == "delivery_failed" && l["rule"] == "drip")
        },
    );
    assert_eq!(cut["reason"], "metered_delivery_deadline", "{cut}");
}
