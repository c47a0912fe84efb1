//! Priced paths: the 402 challenge's header and body, determinism, CORS, the browser page.

use super::*;

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn unpaid_request_gets_v2_header_and_v1_body_in_documented_shapes() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", SITE_RULES)]);
    let c = client();
    let url = gw.url("/api/weather?city=paris");

    let r = get(&c, &url).await;
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json"))
    );

    // PAYMENT-REQUIRED: standard padded base64 of compact JSON.
    let raw = r.header("payment-required").expect("PAYMENT-REQUIRED");
    assert!(
        raw.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            && raw.len() % 4 == 0,
        "not standard padded base64: {raw}"
    );
    let pr = decode_header(raw);
    let compact = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .expect("base64")
    };
    assert_eq!(
        serde_json::to_vec(&pr).expect("json"),
        compact,
        "header JSON is not compact"
    );
    assert_eq!(
        keys(&pr),
        ["x402Version", "error", "resource", "accepts", "extensions"]
    );
    // The extensions every priced 402 declares by default: the rule's discovery entry and
    // payment identifiers (optional for clients).
    assert_eq!(keys(&pr["extensions"]), ["bazaar", "payment-identifier"]);
    assert_eq!(pr["extensions"]["bazaar"]["info"]["input"]["type"], "http");
    assert_eq!(pr["extensions"]["bazaar"]["info"]["input"]["method"], "GET");
    assert_eq!(
        pr["extensions"]["payment-identifier"]["info"],
        serde_json::json!({"required": false})
    );
    assert_eq!(pr["x402Version"], 2);
    assert_eq!(pr["error"], "payment_required");
    assert_eq!(keys(&pr["resource"]), ["url", "description", "mimeType"]);
    assert_eq!(pr["resource"]["url"], url);
    assert_eq!(pr["resource"]["description"], "Weather");
    assert_eq!(pr["resource"]["mimeType"], "application/json");
    let accepts = pr["accepts"].as_array().expect("accepts");
    assert_eq!(accepts.len(), 1);
    let a = &accepts[0];
    assert_eq!(
        keys(a),
        [
            "scheme",
            "network",
            "amount",
            "asset",
            "payTo",
            "maxTimeoutSeconds",
            "extra"
        ]
    );
    assert_eq!(a["scheme"], "exact");
    assert_eq!(a["network"], "eip155:84532");
    assert_eq!(a["amount"], "10000");
    assert_eq!(a["asset"], BASE_SEPOLIA_USDC);
    assert_eq!(a["payTo"], PAY_TO);
    assert_eq!(a["maxTimeoutSeconds"], 300);
    assert_eq!(keys(&a["extra"]), ["name", "version", "paymentFlow"]);
    assert_eq!(a["extra"]["name"], "USDC");
    assert_eq!(a["extra"]["version"], "2");
    // Settled after the origin answered: the `authorization` flow.
    assert_eq!(a["extra"]["paymentFlow"], "authorization");

    // The v1 body, for legacy clients.
    let v1 = r.json();
    assert_eq!(keys(&v1), ["x402Version", "error", "accepts"]);
    assert_eq!(v1["x402Version"], 1);
    assert_eq!(v1["error"], "X-PAYMENT header is required");
    let a1 = &v1["accepts"][0];
    assert_eq!(
        keys(a1),
        [
            "scheme",
            "network",
            "maxAmountRequired",
            "resource",
            "description",
            "mimeType",
            "payTo",
            "maxTimeoutSeconds",
            "asset",
            "extra"
        ]
    );
    assert_eq!(a1["scheme"], "exact");
    assert_eq!(a1["network"], "base-sepolia");
    assert_eq!(a1["maxAmountRequired"], "10000");
    assert_eq!(a1["resource"], url);
    assert_eq!(a1["description"], "Weather");
    assert_eq!(a1["mimeType"], "application/json");
    assert_eq!(a1["payTo"], PAY_TO);
    assert_eq!(a1["maxTimeoutSeconds"], 300);
    assert_eq!(a1["asset"], BASE_SEPOLIA_USDC);
    assert_eq!(a1["extra"], a["extra"]);

    // Deterministic: the same request gets byte-identical requirements.
    let again = get(&c, &url).await;
    assert_eq!(again.header("payment-required"), Some(raw));
    assert_eq!(again.body, r.body);
    assert_eq!(origin.requests().await, 0, "402s never reach the origin");
}

#[tokio::test]
async fn cors_preflight_and_exposed_headers_on_a_priced_route() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", SITE_RULES)]);
    let c = client();

    // The weather rule is GET-only: the browser's preflight for that GET must still be
    // answered by the gateway, allowing the payment header.
    let r = send(
        &c,
        "OPTIONS",
        &gw.url("/api/weather"),
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "payment-signature"),
        ],
    )
    .await;
    assert_eq!(r.status, 204, "{:?} {}", r.headers, r.text());
    let allow = r
        .header("access-control-allow-headers")
        .expect("allow-headers");
    assert!(
        allow
            .split(',')
            .any(|h| h.trim().eq_ignore_ascii_case("PAYMENT-SIGNATURE")),
        "{allow}"
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(
        r.header("access-control-allow-methods")
            .is_some_and(|m| m.contains("GET")),
        "{:?}",
        r.headers
    );
    assert!(r.body.is_empty());

    // The 402 lets browser scripts read the payment headers.
    let r = send(
        &c,
        "GET",
        &gw.url("/api/weather"),
        &[("origin", "https://app.example")],
    )
    .await;
    assert_eq!(r.status, 402);
    let expose = r
        .header("access-control-expose-headers")
        .expect("expose-headers");
    for h in ["PAYMENT-REQUIRED", "PAYMENT-RESPONSE", "X-PAYMENT-RESPONSE"] {
        assert!(
            expose.split(',').any(|e| e.trim().eq_ignore_ascii_case(h)),
            "{h} not in {expose}"
        );
    }
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(origin.requests().await, 0, "nothing reached the origin");
}

#[tokio::test]
async fn browsers_get_an_html_paywall_with_the_same_requirements() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", SITE_RULES)]);
    let c = client();
    let url = gw.url("/api/weather");

    let agent = get(&c, &url).await;
    let browser = send(
        &c,
        "GET",
        &url,
        &[
            ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
            ),
        ],
    )
    .await;
    assert_eq!(browser.status, 402);
    assert!(
        browser
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/html")),
        "{:?}",
        browser.headers
    );
    assert_eq!(browser.header("cache-control"), Some("no-store"));
    assert_eq!(
        browser.header("payment-required"),
        agent.header("payment-required"),
        "the page carries the same requirements"
    );
    let page = browser.text();
    assert!(page.contains("<html") || page.contains("<!DOCTYPE") || page.contains("<!doctype"));
    assert!(page.contains("$0.01"), "price not on the page: {page}");
    assert!(page.contains(PAY_TO), "recipient not on the page");

    // An HTML Accept without a browser User-Agent is an agent: JSON.
    let r = send(&c, "GET", &url, &[("accept", "text/html")]).await;
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json"))
    );
    assert_eq!(origin.requests().await, 0);
}
