//! A paywall a browser can pay: with `[paywall] wallet`, a person in headless Chromium gets the
//! reference `@x402/paywall` page served by the gateway (no CDN), connects a test EIP-1193
//! wallet holding a devnet key, clicks "Pay now", and sees the origin's content; the tokens
//! moved on chain, the ledger has the settlement, the origin was asked once.

use serde_json::Value;

use crate::support::chain::balance;
use crate::support::*;

const RULES: &str = r#"
[[rule]]
id = "article"
path = "/article"
price = "$0.01"
description = "Today's article </script><b>"
mime_type = "application/json"
"#;

#[tokio::test]
async fn a_reader_pays_the_wallet_paywall_in_a_browser_and_sees_the_content() {
    let page = repo().join("tests/interop/paywall/evm-paywall.html");
    assert!(
        page.is_file(),
        "{} missing: scripts/deps.sh makes it with scripts/paywall-bundle.sh",
        page.display()
    );
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1"]);
    let origin = Origin::start("wallet-origin");
    let fac = dev.info["facilitatorUrl"].as_str().expect("facilitator");
    let cfg = paid_config(
        &origin.addr,
        &dev.info,
        &facilitator_toml("local", fac, 0, ""),
        &format!(
            // Unmatched requests (the browser's /favicon.ico) never reach the origin, so its
            // count is the paid request alone.
            "\n[paywall]\nwallet = \"{}\"\napp_name = \"Test Shop\"\n\n[rules]\nunmatched = \"block\"\n",
            page.display()
        ),
    );
    let gw = Gateway::start(&cfg, &[("rules.toml", RULES)]);
    let rpc = dev.info["rpcUrl"].as_str().expect("rpc").to_owned();
    let token = dev.info["token"]["address"]
        .as_str()
        .expect("token")
        .to_owned();
    let payer = dev.info["payers"][0]["address"]
        .as_str()
        .expect("payer")
        .to_owned();
    let key = dev.info["payers"][0]["privateKey"]
        .as_str()
        .expect("key")
        .to_owned();
    let pay_to = dev.info["payTo"].as_str().expect("payTo").to_owned();
    let (payer_before, merchant_before) = (
        balance(&rpc, &token, &payer).await,
        balance(&rpc, &token, &pay_to).await,
    );

    // What a browser is sent: the bundled page with this request's requirements, encoded so
    // the description cannot end the script.
    let r = client()
        .get(gw.url("/article"))
        .header("accept", "text/html,application/xhtml+xml")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 402);
    let html = r.text().await.expect("html");
    assert!(
        html.contains("window.x402 = {amount: 0.01, paymentRequired: {"),
        "{}",
        &html[..400]
    );
    assert!(html.contains(&pay_to) || html.contains(&pay_to.to_lowercase()));
    assert!(html.contains("\\u003c/script\\u003e\\u003cb\\u003e"));
    assert!(!html.contains("</script><b>"));
    assert!(!html.contains("<script src="), "no external script");

    let out: Value = node_json(
        "lib/wallet-pay.mjs",
        &[
            "--url".into(),
            gw.url("/article"),
            "--rpc-url".into(),
            rpc.clone(),
            "--private-key".into(),
            key,
        ],
        &[],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    let text = out["text"].as_str().expect("text");
    assert!(
        text.contains("wallet-origin"),
        "the origin's answer is shown: {out}"
    );
    let calls: Vec<&str> = out["walletCalls"]
        .as_array()
        .expect("calls")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(calls.contains(&"eth_signTypedData_v4"), "{out}");

    assert_eq!(balance(&rpc, &token, &payer).await, payer_before - 10_000);
    assert_eq!(
        balance(&rpc, &token, &pay_to).await,
        merchant_before + 10_000
    );
    let ledger = std::fs::read_to_string(gw.path("receipts.jsonl")).expect("ledger");
    assert_eq!(ledger.matches("\"settled\"").count(), 1, "{ledger}");
    assert_eq!(origin.requests().await, 1);
}
