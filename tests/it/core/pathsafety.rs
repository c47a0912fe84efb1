//! Path normalization: no spelling of a priced path reaches the origin unpaid, malformed
//! requests are refused with a 4xx before routing, and the origin sees the canonical path.

use super::*;

const RULES: &str = r#"
[[rule]]
id = "public"
prefix = "/public/"
action = "free"

[[rule]]
id = "weather"
path = "/api/weather"
methods = ["GET"]
price = "$0.01"

[[rule]]
id = "secret"
prefix = "/api/secret/"
price = "$0.02"
"#;

fn get_req(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn non_canonical_spellings_of_a_priced_path_stay_priced() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("rules.toml", RULES)]);
    let a = gw.addr.clone();
    let weather: Vec<String> = [
        "/api/weather",
        "/api/./weather",
        "/./api/weather",
        "/api//weather",
        "//api/weather",
        "///api///weather",
        "/x/../api/weather",
        "/x/y/../../api/weather",
        "/../api/weather",
        "/public/../api/weather",
        "/public/%2e%2e/api/weather",
        "/public/%2E%2E/api/weather",
        "/public/.%2e/api/weather",
        "/api/%2e/weather",
        "/api/%2e%2e/api/weather",
        "/api%2Fweather",
        "/api%2fweather",
        "/public%2F..%2Fapi%2Fweather",
        "/%61pi/weather",
        "/%61%70%69/%77%65%61%74%68%65%72",
        "/API/WEATHER",
        "/Api/Weather",
        "/api/weather/",
        "/api/weather//",
        "/api/weather/.",
        "/api/weather/x/..",
        "/api/weather;jsessionid=x",
        "/api;x=1/weather",
        "/api/weather;",
        "/api\\weather",
        "/public\\..\\api\\weather",
        "/api%5cweather",
        "/public%5c..%5capi%5cweather",
        "/api/weather?city=paris",
        "/api/weather?",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([
        // absolute-form request targets
        "http://shop.test/api/weather".to_owned(),
        "http://shop.test/public/../api/weather".to_owned(),
    ])
    .collect();
    for target in &weather {
        let r = raw_once(&a, &get_req(target))
            .unwrap_or_else(|| panic!("{target}: connection closed without a response"));
        assert_eq!(r.status, 402, "{target}: {r:?}");
        let pr = decode_header(r.header("payment-required").expect("PAYMENT-REQUIRED"));
        assert_eq!(pr["accepts"][0]["amount"], "10000", "{target}");
        assert_eq!(origin.requests().await, 0, "{target} reached the origin");
    }
    // Spellings that may be refused instead (Pingora compares an absolute-form authority with
    // Host literally, case and port included), but are never served unpaid.
    for target in [
        "http://SHOP.test/public/../api/weather",
        "http://shop.test:80/api//weather?x=1",
        "/api/weather#fragment",
        "/public/../api/weather#x",
    ] {
        let r = raw_once(&a, &get_req(target))
            .unwrap_or_else(|| panic!("{target}: connection closed without a response"));
        assert!(
            r.status == 402 || (400..500).contains(&r.status),
            "{target}: {r:?}"
        );
        assert_eq!(origin.requests().await, 0, "{target} reached the origin");
    }
    for target in [
        "/api/secret/x",
        "/api/secret/../secret/x",
        "/public/..;/api/secret/x",
        "/public/..;x=1/api/secret/x",
        "/public/.;/../api/secret/x",
        "/api/secret;a=b/x",
        "/api/;/secret/x",
        "/API/Secret/X",
    ] {
        let r = raw_once(&a, &get_req(target))
            .unwrap_or_else(|| panic!("{target}: connection closed without a response"));
        assert!(
            r.status == 402 || (400..500).contains(&r.status),
            "{target}: {r:?}"
        );
        if r.status == 402 {
            let pr = decode_header(r.header("payment-required").expect("PAYMENT-REQUIRED"));
            assert_eq!(pr["accepts"][0]["amount"], "20000", "{target}");
        }
        assert_eq!(origin.requests().await, 0, "{target} reached the origin");
    }
    // The resource URL names the canonical path, so a client pays for what it gets.
    let r = raw_once(&a, &get_req("/public/%2e%2e/API//weather?x=1")).expect("response");
    let pr = decode_header(r.header("payment-required").expect("PAYMENT-REQUIRED"));
    assert_eq!(pr["resource"]["url"], "http://shop.test/API/weather?x=1");
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_and_never_reach_the_origin() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("rules.toml", RULES)]);
    let a = gw.addr.clone();

    let big = "a".repeat(100 * 1024);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "raw NUL in path",
            b"GET /public/a\0b HTTP/1.1\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        (
            "raw NUL in priced path",
            b"GET /api/weather\0 HTTP/1.1\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        ("%00 in path", get_req("/public/a%00b")),
        ("%00 in priced path", get_req("/api/weather%00")),
        ("%0a in path", get_req("/public/a%0Ab")),
        (
            "%0d%0a header injection",
            get_req("/public/a%0d%0aX-Injected:%20yes"),
        ),
        ("%7f in path", get_req("/public/a%7fb")),
        (
            "raw control byte",
            b"GET /public/a\x01b HTTP/1.1\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        (
            "raw tab",
            b"GET /public/a\tb HTTP/1.1\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        (
            "control byte in a header",
            b"GET /public/x HTTP/1.1\r\nHost: shop.test\r\nX-A: a\x01b\r\n\r\n".to_vec(),
        ),
        ("bad escape %zz", get_req("/public/%zz")),
        ("truncated escape", get_req("/public/a%2")),
        ("truncated escape at end", get_req("/public/a%")),
        (
            "two Host headers",
            b"GET /public/x HTTP/1.1\r\nHost: shop.test\r\nHost: evil.test\r\n\r\n".to_vec(),
        ),
        (
            "two Host headers, same value",
            b"GET /public/x HTTP/1.1\r\nHost: shop.test\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        (
            "no Host on HTTP/1.1",
            b"GET /public/x HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "bad Host",
            b"GET /public/x HTTP/1.1\r\nHost: shop.test/x\r\n\r\n".to_vec(),
        ),
        (
            "Host with userinfo",
            b"GET /public/x HTTP/1.1\r\nHost: a@shop.test\r\n\r\n".to_vec(),
        ),
        (
            "absolute-form host differs from Host",
            b"GET http://other.test/public/x HTTP/1.1\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        (
            "absolute-form priced path, Host differs",
            b"GET http://shop.test/api/weather HTTP/1.1\r\nHost: other.test\r\n\r\n".to_vec(),
        ),
        (
            "relative request target",
            b"GET public/x HTTP/1.1\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        (
            "asterisk target on GET",
            b"GET * HTTP/1.1\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        (
            "oversized header",
            format!("GET /public/x HTTP/1.1\r\nHost: shop.test\r\nX-Big: {big}\r\n\r\n")
                .into_bytes(),
        ),
        (
            "oversized header, priced path",
            format!("GET /api/weather HTTP/1.1\r\nHost: shop.test\r\nX-Big: {big}\r\n\r\n")
                .into_bytes(),
        ),
        (
            "missing version",
            b"GET /public/x\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        (
            "unknown version",
            b"GET /public/x HTTP/9.9\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        ("garbage request line", b"THIS IS NOT HTTP\r\n\r\n".to_vec()),
        (
            "bad method token",
            b"G(T /public/x HTTP/1.1\r\nHost: shop.test\r\n\r\n".to_vec(),
        ),
        (
            "header without colon",
            b"GET /public/x HTTP/1.1\r\nHost: shop.test\r\nNoColonHere\r\n\r\n".to_vec(),
        ),
        (
            "space before colon",
            b"GET /public/x HTTP/1.1\r\nHost : shop.test\r\n\r\n".to_vec(),
        ),
        (
            "CL and bad CL",
            b"POST /public/x HTTP/1.1\r\nHost: shop.test\r\nContent-Length: abc\r\n\r\n".to_vec(),
        ),
    ];
    let mut failures = Vec::new();
    let mut reached_before = 0;
    for (what, bytes) in &cases {
        let r = raw_once(&a, bytes);
        let status = r.as_ref().map_or(0, |r| r.status);
        let reached = origin.requests().await;
        if !(400..500).contains(&status) || reached != reached_before {
            failures.push(format!(
                "{what}: status {status}, reached the origin: {}: {:?}",
                reached != reached_before,
                r.map(|r| {
                    let body = String::from_utf8_lossy(&r.body);
                    (r.headers, body.chars().take(300).collect::<String>())
                })
            ));
        }
        reached_before = reached;
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));

    // Refusals carry a reason code.
    let r = raw_once(&a, &get_req("/public/a%00b")).expect("response");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "control_byte_in_path");
    let r = raw_once(&a, &get_req("/public/%zz")).expect("response");
    assert_eq!(r.json()["error"], "bad_percent_encoding");
    let r = raw_once(
        &a,
        b"GET /public/x HTTP/1.1\r\nHost: shop.test\r\nHost: evil.test\r\n\r\n",
    )
    .expect("response");
    // (Pingora refuses ambiguous authorities itself, with an empty 400.)
    assert_eq!(r.status, 400);
    let r = raw_once(
        &a,
        b"GET http://other.test/public/x HTTP/1.1\r\nHost: shop.test\r\n\r\n",
    )
    .expect("response");
    assert_eq!(r.status, 400);
    let r = raw_once(
        &a,
        format!("GET /public/x HTTP/1.1\r\nHost: shop.test\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .expect("response");
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "request_headers_too_large");

    // The gateway still serves normally afterwards.
    let r = raw_once(&a, &get_req("/public/ok")).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(origin.requests().await, 1);
}

#[tokio::test]
async fn origin_receives_the_canonical_path() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("rules.toml", RULES)]);
    let a = gw.addr.clone();
    let cases = [
        ("/public/a/./b/../c", "/public/a/c", None),
        ("/public//a///b", "/public/a/b", None),
        ("/public/a/%2e%2e/b", "/public/b", None),
        ("/public/a%2Fb", "/public/a/b", None),
        ("/public/%7Euser/%41", "/public/~user/A", None),
        ("/public/a\\b", "/public/a/b", None),
        ("/public/caf%c3%a9", "/public/caf%C3%A9", None),
        ("/public/a b", "/public/a%20b", None),
        ("/PUBLIC/./X?q=1%2F2&r", "/PUBLIC/X", Some("q=1%2F2&r")),
        (
            "http://shop.test/public/x/../y?z=1",
            "/public/y",
            Some("z=1"),
        ),
        ("http://shop.test/public/plain", "/public/plain", None),
    ];
    for (n, (target, path, query)) in cases.iter().enumerate() {
        let r = raw_once(&a, &get_req(target)).expect("response");
        assert_eq!(r.status, 200, "{target}: {r:?}");
        let v = r.json();
        assert_eq!(v["path"], *path, "{target}: {v}");
        assert_eq!(v["query"].as_str(), *query, "{target}: {v}");
        // Origin-form upstream, never the absolute form.
        assert!(
            v["target"].as_str().is_some_and(|t| t.starts_with('/')),
            "{v}"
        );
        assert_eq!(v["headers"]["host"], "shop.test", "{v}");
        assert_eq!(origin.requests().await, n as u64 + 1);
    }
}
