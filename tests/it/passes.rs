//! Passes: issued after a real on-chain settlement, they open the next N requests without a
//! payment (as a header, a cookie or a bearer token) and then stop; forged, expired,
//! out-of-scope and revoked passes are refused with their reason and the usual challenge.

use std::collections::HashSet;

use serde_json::{Value, json};
use x402_gateway::access::pass::{self, Algorithm, Claims, KeyMaterial, PassKeys, ScopeKind};
use x402_gateway::router::Methods;

use crate::support::chain::balance;
use crate::support::pay::{self, Auth};
use crate::support::*;

/// The HMAC key the tests' gateways sign passes with (from `${TEST_PASS_KEY}`).
const PASS_KEY: &str = "test-pass-key-0123456789abcdef-0123456789";

/// A `[passes]` section signing with `k1`; `extra` goes in the section itself.
fn passes(extra: &str) -> String {
    format!(
        r#"
[passes]
signing_key = "k1"
{extra}
[[passes.keys]]
id = "k1"
secret = "${{TEST_PASS_KEY}}"
"#
    )
}

const RULES: &str = r#"
[[rule]]
id = "articles"
prefix = "/articles/"
price = "$0.01"
description = "Articles"
pass = { ttl = "1h", scope = "prefix", prefix = "/articles/", methods = ["GET"], max_requests = 3 }

[[rule]]
id = "single"
prefix = "/single/"
price = "$0.01"
pass = { ttl = 600, max_requests = 5 }
"#;

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn error(&self) -> String {
        decode_header(self.header("payment-required").expect("PAYMENT-REQUIRED"))["error"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    let mut rb = client().get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("send");
    Got {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.expect("body"),
    }
}

#[tokio::test]
async fn a_pass_after_an_onchain_payment_opens_the_next_requests_then_stops() {
    let dev = NodeProc::start("lib/devnet.mjs", &["--chain-id", "31337", "--payers", "1"]);
    let info = &dev.info;
    let origin = Origin::start("pass-origin");
    let fac_url = info["facilitatorUrl"].as_str().expect("fac").to_owned();
    let cfg = paid_config(
        &origin.addr,
        info,
        &facilitator_toml("devnet", &fac_url, 0, ""),
        &passes(""),
    );
    let gw = Gateway::start_with_env(
        &cfg,
        &[("rules.toml", RULES)],
        &[("TEST_PASS_KEY", PASS_KEY)],
    );
    let rpc = info["rpcUrl"].as_str().expect("rpc");
    let token = info["token"]["address"].as_str().expect("token");
    let payer = info["payers"][0]["address"].as_str().expect("payer");
    let key = info["payers"][0]["privateKey"].as_str().expect("key");
    let before = balance(rpc, token, payer).await;

    // Pay once, with a real signature, settled on chain.
    let r = get(&gw.url("/articles/one"), &[]).await;
    assert_eq!(r.status, 402);
    let accepted = decode_header(r.header("payment-required").expect("pr"))["accepts"][0].clone();
    let header = pay::v2_header(
        &accepted,
        pay::signed_payload(
            &pay::key(key),
            &accepted,
            &Auth::for_requirements(&accepted),
        ),
    );
    let paid = get(&gw.url("/articles/one"), &[("payment-signature", &header)]).await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    let receipt = decode_header(paid.header("payment-response").expect("receipt"));
    assert_eq!(receipt["success"], true);
    assert_eq!(
        balance(rpc, token, payer).await,
        before - 10_000,
        "settled on chain"
    );

    // The pass: a header for agents, a cookie for browsers, scoped to the prefix.
    let token_value = paid.header("x402-pass").expect("X402-Pass").to_owned();
    assert!(token_value.starts_with("x402p1.k1."), "{token_value}");
    let cookie = paid.header("set-cookie").expect("Set-Cookie").to_owned();
    assert_eq!(
        cookie,
        format!("x402_pass={token_value}; Max-Age=3600; Path=/articles; HttpOnly; SameSite=Lax"),
        "http: no Secure"
    );
    let claims = pass::verify(
        &PassKeys::new(
            Algorithm::HmacSha256,
            vec![("k1".into(), KeyMaterial::Hmac(PASS_KEY.as_bytes().to_vec()))],
            None,
            "x402_pass".into(),
            HashSet::new(),
        )
        .expect("keys"),
        &token_value,
        pay::now(),
    )
    .expect("a pass signed with the configured key");
    assert_eq!(claims.rule, "articles");
    assert_eq!(claims.max_requests, 3);
    // What it paid, so that other rules honour it only where they cost no more.
    let paid = claims.paid.clone().expect("the pass says what it paid");
    assert_eq!(
        (paid.network.as_str(), paid.asset.as_str(), paid.amount),
        (
            accepted["network"].as_str().expect("network"),
            token.to_ascii_lowercase().as_str(),
            10_000
        )
    );
    assert_eq!(
        claims.payer.to_ascii_lowercase(),
        payer.to_ascii_lowercase()
    );

    // Three more requests anywhere under the prefix, each way of presenting it, no payment.
    let cookie_header = format!("theme=dark; x402_pass={token_value}");
    let bearer = format!("Bearer {token_value}");
    let ways: [(&str, &str); 3] = [
        ("x402-pass", &token_value),
        ("cookie", &cookie_header),
        ("authorization", &bearer),
    ];
    for (n, (name, value)) in ways.iter().enumerate() {
        let r = get(&gw.url(&format!("/articles/{n}")), &[(name, value)]).await;
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(
            r.header("x402-pass-remaining"),
            Some((2 - n).to_string().as_str())
        );
        assert!(
            r.header("cache-control")
                .is_some_and(|c| c.contains("private"))
        );
        assert_eq!(r.header("payment-response"), None, "nothing was paid");
        let echo: Value = serde_json::from_str(&r.body).expect("origin echo");
        let seen = &echo["headers"];
        assert!(
            seen.get("x402-pass").is_none(),
            "the pass reached the origin"
        );
        assert!(
            seen.get("authorization").is_none(),
            "the bearer pass reached the origin"
        );
        if *name == "cookie" {
            assert_eq!(seen["cookie"], "theme=dark", "other cookies are kept");
        }
    }

    // The fourth is refused: exhausted, with a fresh challenge.
    let r = get(&gw.url("/articles/4"), &[("x402-pass", &token_value)]).await;
    assert_eq!(r.status, 402);
    assert_eq!(r.error(), "pass_exhausted");
    // Not for other rules either (prefix scope), and not for other methods.
    let r = get(&gw.url("/single/x"), &[("x402-pass", &token_value)]).await;
    assert_eq!(r.status, 402);
    assert_eq!(r.error(), "pass_out_of_scope");

    assert_eq!(
        origin.requests().await,
        4,
        "the paid request and three with the pass"
    );
    assert_eq!(
        balance(rpc, token, payer).await,
        before - 10_000,
        "one payment"
    );
    let log = facilitator_log(&fac_url).await;
    let settles = log.iter().filter(|e| e["path"] == "/settle").count();
    assert_eq!(settles, 1, "{log:?}");
    let m = |q: &'static str| gw.metric(q);
    assert_eq!(m("x402_passes_total{outcome=\"issued\"}").await, 1.0);
    assert_eq!(m("x402_passes_total{outcome=\"accepted\"}").await, 3.0);
    assert_eq!(
        m("x402_passes_total{outcome=\"pass_exhausted\"}").await,
        1.0
    );
    assert_eq!(
        m("x402_requests_total{decision=\"pass\",rule=\"articles\",status=\"2xx\"}").await,
        3.0
    );
}

/// A gateway with passes and no facilitator at all: a valid pass must not need one.
fn pass_gateway(origin: &str) -> Gateway {
    Gateway::start_with_env(
        &config(origin, &passes("revoked = [\"revoked-in-config\"]")),
        &[("rules.toml", RULES)],
        &[("TEST_PASS_KEY", PASS_KEY)],
    )
}

fn keys(secret: &str) -> PassKeys {
    PassKeys::new(
        Algorithm::HmacSha256,
        vec![("k1".into(), KeyMaterial::Hmac(secret.as_bytes().to_vec()))],
        Some("k1"),
        "x402_pass".into(),
        HashSet::new(),
    )
    .expect("keys")
}

fn claims(id: &str, scope: ScopeKind, path: &str, exp_offset: i64) -> Claims {
    let now = pay::now();
    Claims {
        id: id.into(),
        rule: "articles".into(),
        host: "127.0.0.1".into(),
        scope,
        path: path.into(),
        methods: Methods::bit("GET"),
        iat: now - 10,
        exp: (now as i64 + exp_offset) as u64,
        max_requests: 0,
        payer: "0x0000000000000000000000000000000000000001".into(),
        paid: None,
    }
}

#[tokio::test]
async fn forged_expired_out_of_scope_and_revoked_passes_are_refused() {
    let origin = Origin::start("pass-refusals");
    let gw = pass_gateway(&origin.addr);
    let good_keys = keys(PASS_KEY);
    let mint = |c: &Claims| pass::mint(&good_keys, c).expect("mint");
    let url = gw.url("/articles/a");

    // A valid pass minted with the gateway's key opens the page, with no facilitator configured.
    let valid = mint(&claims("valid-1", ScopeKind::Prefix, "/articles", 600));
    let r = get(&url, &[("x402-pass", &valid)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x402-pass-remaining"), None, "unlimited pass");

    // Forged: signed with another key, or the payload changed after signing.
    let forged = pass::mint(
        &keys("some-other-key-0123456789abcdef-0123456789"),
        &claims("forged-1", ScopeKind::Prefix, "/articles", 600),
    )
    .expect("mint");
    let r = get(&url, &[("x402-pass", &forged)]).await;
    assert_eq!((r.status, r.error()), (402, "pass_invalid".into()));
    let parts: Vec<&str> = valid.split('.').collect();
    let mut widened = claims("valid-1", ScopeKind::Prefix, "/", 600);
    widened.max_requests = 0;
    let payload = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&widened).expect("json"))
    };
    let tampered = format!("x402p1.k1.{payload}.{}", parts[3]);
    let r = get(&gw.url("/single/a"), &[("x402-pass", &tampered)]).await;
    assert_eq!((r.status, r.error()), (402, "pass_invalid".into()));
    let r = get(&url, &[("x402-pass", "x402p1.garbage")]).await;
    assert_eq!((r.status, r.error()), (402, "pass_invalid".into()));

    // Expired.
    let expired = mint(&claims("expired-1", ScopeKind::Prefix, "/articles", -1));
    let r = get(&url, &[("x402-pass", &expired)]).await;
    assert_eq!((r.status, r.error()), (402, "pass_expired".into()));
    // A browser with an expired cookie gets the paywall page, naming the reason.
    let r = get(
        &url,
        &[
            ("accept", "text/html"),
            ("user-agent", "Mozilla/5.0 (X11) Firefox/128.0"),
            ("cookie", &format!("x402_pass={expired}")),
        ],
    )
    .await;
    assert_eq!(r.status, 402);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(r.body.contains("pass_expired"), "{}", r.body);
    assert!(r.body.contains("$0.01"));

    // Out of scope: another resource, another host, another method.
    let one = mint(&claims("res-1", ScopeKind::Resource, "/articles/a", 600));
    let r = get(&gw.url("/articles/b"), &[("x402-pass", &one)]).await;
    assert_eq!((r.status, r.error()), (402, "pass_out_of_scope".into()));
    let r = get(&url, &[("x402-pass", &one)]).await;
    assert_eq!(r.status, 200);
    let mut other_host = claims("host-1", ScopeKind::Prefix, "/articles", 600);
    other_host.host = "example.com".into();
    let r = get(&url, &[("x402-pass", &mint(&other_host))]).await;
    assert_eq!((r.status, r.error()), (402, "pass_out_of_scope".into()));
    let r = client()
        .post(&url)
        .header("x402-pass", &valid)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 402);
    assert_eq!(
        decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["error"],
        "pass_out_of_scope"
    );

    // Revoked: in the configuration, and at run time through the admin listener.
    let r = get(
        &url,
        &[(
            "x402-pass",
            &mint(&claims(
                "revoked-in-config",
                ScopeKind::Prefix,
                "/articles",
                600,
            )),
        )],
    )
    .await;
    assert_eq!((r.status, r.error()), (402, "pass_revoked".into()));
    let revoke = client()
        .post(gw.admin_url("/passes/revoke"))
        .json(&json!({"id": "valid-1"}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoke.status(), 200);
    assert_eq!(
        revoke.json::<Value>().await.expect("json")["revoked"],
        json!(["valid-1"])
    );
    let r = get(&url, &[("x402-pass", &valid)]).await;
    assert_eq!((r.status, r.error()), (402, "pass_revoked".into()));
    // Revoking by token works too; junk is refused.
    let r = client()
        .post(gw.admin_url("/passes/revoke"))
        .json(&json!({"token": one}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 200);
    assert_eq!(
        get(&url, &[("x402-pass", &one)]).await.error(),
        "pass_revoked"
    );
    let r = client()
        .post(gw.admin_url("/passes/revoke"))
        .body("nope")
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 400);
    let r = client()
        .get(gw.admin_url("/passes/revoke"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 405);

    assert_eq!(
        origin.requests().await,
        2,
        "only the two valid passes got through"
    );
    assert_eq!(
        gw.metric("x402_passes_total{outcome=\"pass_invalid\"}")
            .await,
        3.0
    );
    assert_eq!(
        gw.metric("x402_passes_total{outcome=\"pass_revoked\"}")
            .await,
        3.0
    );
    // /config shows the pass settings, never the key.
    let view = gw.config_view().await;
    assert_eq!(view["passes"]["keys"], json!(["k1"]));
    assert!(
        !view.to_string().contains(PASS_KEY),
        "the secret leaked into /config"
    );
    assert!(
        !gw.log_flushed().await.contains(PASS_KEY),
        "the secret leaked into the log"
    );
}

/// A rule that sells prefix passes, with dearer, cheaper and opted-in rules inside its prefix.
const NESTED_RULES: &str = r#"
[[rule]]
id = "articles"
prefix = "/articles/"
price = "$0.01"
pass = { ttl = "1h", scope = "prefix", prefix = "/articles/" }

[[rule]]
id = "premium"
prefix = "/articles/premium/"
price = "$0.05"

[[rule]]
id = "cheap"
prefix = "/articles/cheap/"
price = "$0.005"

[[rule]]
id = "extras"
prefix = "/articles/extras/"
price = "$0.05"
accept_passes_from = ["articles"]
"#;

/// A prefix pass opens the rule that sold it and any rule inside its prefix that costs no
/// more, never a dearer one (unless that rule names the seller in `accept_passes_from`); a
/// pass that paid in another asset, or says nothing of what it paid, opens only its own rule.
#[tokio::test]
async fn a_prefix_pass_opens_no_dearer_rule_inside_its_prefix() {
    let origin = Origin::start("pass-nested");
    let gw = Gateway::start_with_env(
        &config(&origin.addr, &passes("")),
        &[("rules.toml", NESTED_RULES)],
        &[("TEST_PASS_KEY", PASS_KEY)],
    );
    let challenge = get(&gw.url("/articles/a"), &[]).await;
    let accepted =
        decode_header(challenge.header("payment-required").expect("pr"))["accepts"][0].clone();
    let asset = accepted["asset"]
        .as_str()
        .expect("asset")
        .to_ascii_lowercase();
    let network = accepted["network"].as_str().expect("network").to_owned();
    let keys = keys(PASS_KEY);
    let bought = |id: &str, paid: Option<pass::Paid>| {
        let mut c = claims(id, ScopeKind::Prefix, "/articles", 600);
        c.paid = paid;
        pass::mint(&keys, &c).expect("mint")
    };
    let cent = bought(
        "cent",
        Some(pass::Paid {
            network: network.clone(),
            asset: asset.clone(),
            amount: 10_000,
        }),
    );
    let other_asset = bought(
        "other-asset",
        Some(pass::Paid {
            network: network.clone(),
            asset: "0x0000000000000000000000000000000000000bad".into(),
            amount: 1_000_000_000,
        }),
    );
    let unpriced = bought("unpriced", None);

    let cases: [(&str, &str, u16, &str); 12] = [
        (&cent, "/articles/a", 200, ""),
        (&cent, "/articles/cheap/a", 200, ""),
        (&cent, "/articles/premium/a", 402, "pass_insufficient"),
        (&cent, "/articles/extras/a", 200, ""),
        (&other_asset, "/articles/a", 200, ""),
        (&other_asset, "/articles/cheap/a", 402, "pass_insufficient"),
        (
            &other_asset,
            "/articles/premium/a",
            402,
            "pass_insufficient",
        ),
        (&other_asset, "/articles/extras/a", 200, ""),
        (&unpriced, "/articles/a", 200, ""),
        (&unpriced, "/articles/cheap/a", 402, "pass_insufficient"),
        (&unpriced, "/articles/premium/a", 402, "pass_insufficient"),
        (&unpriced, "/articles/extras/a", 200, ""),
    ];
    let mut failures = Vec::new();
    for (token, path, status, reason) in cases {
        let r = get(&gw.url(path), &[("x402-pass", token)]).await;
        let got_reason = if r.status == 402 {
            r.error()
        } else {
            String::new()
        };
        if r.status != status || got_reason != reason {
            failures.push(format!(
                "{path} with pass {}: got {} {got_reason:?}, want {status} {reason:?}",
                &token[..20],
                r.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(origin.requests().await, 7, "the seven admitted requests");
    assert_eq!(
        gw.metric("x402_passes_total{outcome=\"pass_insufficient\"}")
            .await,
        5.0
    );
}

/// `check` refuses a prefix pass wider than the rule that sells it, and `accept_passes_from`
/// naming a rule that issues no passes.
#[test]
fn check_refuses_a_pass_wider_than_its_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules");
    let cfg = config("127.0.0.1:9", &passes(""));
    std::fs::write(dir.path().join("gateway.toml"), &cfg).expect("config");
    let rules = r#"[[rule]]
id = "articles"
prefix = "/articles/"
price = "$0.01"
pass = { ttl = "1h", scope = "prefix", prefix = "/" }

[[rule]]
id = "pdfs"
path = "/docs/*.pdf"
price = "$0.01"
pass = { ttl = "1h", scope = "prefix", prefix = "/docs/" }

[[rule]]
id = "premium"
prefix = "/articles/premium/"
price = "$0.05"
accept_passes_from = ["pdfs-typo"]
"#;
    std::fs::write(dir.path().join("rules/a.toml"), rules).expect("rules");
    let out = std::process::Command::new(GATEWAY_BIN)
        .args(["check", "-c"])
        .arg(dir.path().join("gateway.toml"))
        .env("TEST_PASS_KEY", PASS_KEY)
        .output()
        .expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let file = dir.path().join("rules/a.toml").display().to_string();
    let at = |needle: &str| {
        let off = rules.find(needle).expect("needle");
        let before = &rules[..off];
        let line = before.matches('\n').count() + 1;
        let col = off - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{file}:{line}:{col}")
    };
    for expected in [
        format!(
            "{}: rule.pass.prefix: must lie inside the rule's path `/articles/**`",
            at("\"/\" }")
        ),
        format!(
            "{}: rule.pass.prefix: a prefix pass needs a rule whose path covers a whole subtree",
            at("\"/docs/\" }")
        ),
        format!(
            "{}: rule.accept_passes_from: no rule `pdfs-typo` that issues passes",
            at("\"pdfs-typo\"")
        ),
    ] {
        assert!(err.contains(&expected), "missing\n  {expected}\nin\n{err}");
    }
}
