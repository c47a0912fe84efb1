//! Gateway core: proxying, routing, 402 challenges, path safety, reload, ops surface.

use std::time::Duration;

use crate::support::*;

const SITE_RULES: &str = r#"
[[rule]]
id = "home"
path = "/"
action = "free"

[[rule]]
id = "weather"
path = "/api/weather"
methods = ["GET"]
price = "$0.01"
description = "Weather"
mime_type = "application/json"

[[rule]]
id = "admin"
prefix = "/admin"
action = "block"
"#;

#[tokio::test]
async fn free_path_streams_and_priced_path_challenges() {
    let origin = Origin::start("o1");
    let gw = Gateway::start(&config(&origin.addr, ""), &[("site.toml", SITE_RULES)]);
    let c = client();

    let r = c.get(gw.url("/bytes/10485760")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("body");
    assert_eq!(body.len(), 10 * 1024 * 1024);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, &b)| b == ((i as u64 * 31 + 7) % 251) as u8)
    );

    let r = c.get(gw.url("/api/weather")).send().await.expect("get");
    assert_eq!(r.status(), 402);
    let pr = decode_header(r.headers()["payment-required"].to_str().expect("ascii"));
    assert_eq!(pr["x402Version"], 2);
    assert_eq!(pr["accepts"][0]["amount"], "10000");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["x402Version"], 1);
    assert_eq!(body["accepts"][0]["network"], "base-sepolia");
    assert_eq!(
        origin.requests().await,
        1,
        "the 402 never reached the origin"
    );

    let r = c.get(gw.url("/admin/x")).send().await.expect("get");
    assert_eq!(r.status(), 403);
    let _ = gw.log_text();
    tokio::time::sleep(Duration::from_millis(0)).await;
}
