//! Shared caches and pass credentials: whatever lets a request of a priced rule through (a
//! pass, a free audience, shadow mode, a fail-open rule), the origin's answer leaves the
//! gateway private — no `public`/`s-maxage`, no CDN cache headers, a `Vary` on what decided
//! it — so a CDN in front never serves it to the next client; free rules are untouched. Pass
//! credentials never reach the origin, on any rule.

use std::collections::HashSet;

use serde_json::Value;
use x402_gateway::access::pass::{self, Algorithm, Claims, KeyMaterial, PassKeys, ScopeKind};
use x402_gateway::router::Methods;

use crate::support::pay::{self, Auth};
use crate::support::*;

const PASS_KEY: &str = "cache-pass-key-0123456789abcdef-0123456789";
/// A payer key for a payment that only needs to pass local checks (anvil account 2).
const PAYER_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";

const RULES: &str = r#"
[[rule]]
id = "humans-free"
prefix = "/cacheable/audience/"
price = "$0.01"
[rule.audiences]
human = "free"

[[rule]]
id = "shadow"
prefix = "/cacheable/shadow/"
price = "$0.01"
mode = "shadow"

[[rule]]
id = "open"
prefix = "/cacheable/open/"
price = "$0.01"
on_facilitator_failure = "open"

[[rule]]
id = "passes"
prefix = "/cacheable/pass/"
price = "$0.01"
pass = { ttl = "1h", scope = "rule" }

[[rule]]
id = "free"
prefix = "/cacheable/free/"
action = "free"
"#;

struct Seen {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// What the origin received (its echo).
    echo: Value,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Seen {
    let mut rb = client().get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("send");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    Seen {
        status,
        headers,
        echo: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// The origin's response as a shared cache must see it when something other than the price
/// let the request through.
fn assert_private(what: &str, r: &Seen) {
    assert_eq!(r.status, 200, "{what}: {:?}", r.headers);
    let cc = r.all("cache-control").join(", ");
    assert!(
        cc.contains("private") && !cc.contains("public") && !cc.contains("s-maxage"),
        "{what}: cache-control {cc:?}"
    );
    assert!(
        cc.contains("max-age=600"),
        "{what}: the origin's max-age stays: {cc:?}"
    );
    for h in ["cdn-cache-control", "surrogate-control"] {
        assert!(r.headers.get(h).is_none(), "{what}: {h} went out");
    }
    let vary = r.all("vary").join(", ").to_ascii_lowercase();
    for h in [
        "accept-encoding",
        "user-agent",
        "signature",
        "payment-signature",
        "cookie",
        "x402-pass",
    ] {
        assert!(
            vary.split(',').any(|v| v.trim() == h),
            "{what}: vary {vary:?} lacks {h}"
        );
    }
}

#[tokio::test]
async fn priced_content_let_through_unpaid_stays_out_of_shared_caches() {
    let origin = Origin::start("cache-origin");
    let extra = format!(
        r#"
{}
[passes]
signing_key = "k1"
[[passes.keys]]
id = "k1"
secret = "${{CACHE_PASS_KEY}}"
"#,
        facilitator_toml("down", &dead_url(), 0, "")
    );
    let gw = Gateway::start_with_env(
        &config(&origin.addr, &extra),
        &[("rules.toml", RULES)],
        &[("CACHE_PASS_KEY", PASS_KEY)],
    );
    let browser = [
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        ),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-language", "en"),
    ];

    // A human on a rule that is free for humans only.
    let r = get(&gw.url("/cacheable/audience/a"), &browser).await;
    assert_private("free audience", &r);
    // Shadow mode: decided and counted, forwarded without charging.
    let r = get(&gw.url("/cacheable/shadow/a"), &[]).await;
    assert_private("shadow", &r);
    // Fail open: a payment no facilitator could check, served unpaid.
    let challenge = client()
        .get(gw.url("/cacheable/open/a"))
        .send()
        .await
        .expect("challenge");
    assert_eq!(challenge.status(), 402);
    let accepted = decode_header(
        challenge.headers()["payment-required"]
            .to_str()
            .expect("ascii"),
    )["accepts"][0]
        .clone();
    let payment = pay::v2_header(
        &accepted,
        pay::signed_payload(
            &pay::key(PAYER_KEY),
            &accepted,
            &Auth::for_requirements(&accepted),
        ),
    );
    let r = get(
        &gw.url("/cacheable/open/a"),
        &[("payment-signature", &payment)],
    )
    .await;
    assert_private("fail open", &r);
    assert!(
        r.headers.get("payment-response").is_none(),
        "nothing was paid"
    );
    // A pass.
    let keys = PassKeys::new(
        Algorithm::HmacSha256,
        vec![("k1".into(), KeyMaterial::Hmac(PASS_KEY.as_bytes().to_vec()))],
        Some("k1"),
        "x402_pass".into(),
        HashSet::new(),
    )
    .expect("keys");
    let now = pay::now();
    let token = pass::mint(
        &keys,
        &Claims {
            id: "cache-pass".into(),
            rule: "passes".into(),
            host: "127.0.0.1".into(),
            scope: ScopeKind::Rule,
            path: String::new(),
            methods: Methods::bit("GET"),
            iat: now - 10,
            exp: now + 600,
            max_requests: 0,
            payer: "0x0000000000000000000000000000000000000001".into(),
            paid: None,
        },
    )
    .expect("mint");
    let r = get(&gw.url("/cacheable/pass/a"), &[("x402-pass", &token)]).await;
    assert_private("pass", &r);

    // A free rule: the origin's caching as it is.
    let r = get(&gw.url("/cacheable/free/a"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.all("cache-control"),
        vec!["public, max-age=600, s-maxage=3600"]
    );
    assert!(r.headers.get("cdn-cache-control").is_some());
    assert!(r.headers.get("surrogate-control").is_some());
    assert_eq!(r.all("vary"), vec!["Accept-Encoding"]);

    // Pass credentials never reach the origin, not even on a free rule; other cookies and
    // authorizations do.
    let cookie = format!("theme=dark; x402_pass={token}; lang=en");
    let bearer = format!("Bearer {token}");
    for (name, value, kept) in [
        ("cookie", cookie.as_str(), Some("theme=dark; lang=en")),
        ("x402-pass", token.as_str(), None),
        ("authorization", bearer.as_str(), None),
        (
            "authorization",
            "Bearer api-key-of-the-origin",
            Some("Bearer api-key-of-the-origin"),
        ),
    ] {
        for path in ["/cacheable/free/b", "/elsewhere/unmatched"] {
            let r = get(&gw.url(path), &[(name, value)]).await;
            assert_eq!(r.status, 200, "{path}");
            let seen = r.echo["headers"][name].as_str();
            assert_eq!(seen, kept, "{path}: {name} at the origin");
        }
    }
}
