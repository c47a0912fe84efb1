//! The bad-input matrix: hostile requests, each with the status and reason code it must get.
//! None may yield a 5xx, a panic, a bypass (the origin reached on a priced route) or a call to
//! the facilitator.

use serde_json::{Value, json};

use crate::support::pay::{self, Auth};
use crate::support::*;

const RULES: &str = r#"
[[rule]]
id = "weather"
path = "/api/weather"
methods = ["GET"]
price = "$0.01"

[[rule]]
id = "premium"
path = "/api/premium"
methods = ["PUT"]
price = "$0.05"

[[rule]]
id = "site"
host = "shop.example"
prefix = "/"
price = "$0.02"

[[rule]]
id = "free"
prefix = "/free"
action = "free"
"#;

/// How a row is sent.
enum Send {
    /// Method, path, headers (name, raw value bytes).
    Http(&'static str, String, Vec<(&'static str, Vec<u8>)>),
    /// Bytes on a fresh connection.
    Raw(Vec<u8>),
}

struct Row {
    name: &'static str,
    send: Send,
    status: u16,
    /// Expected reason code; `None` when Pingora refuses the request before the gateway sees it.
    reason: Option<&'static str>,
    /// Whether the origin may see this request (only free routes).
    reaches_origin: bool,
}

fn row(name: &'static str, send: Send, status: u16, reason: Option<&'static str>) -> Row {
    Row {
        name,
        send,
        status,
        reason,
        reaches_origin: false,
    }
}

fn get(path: &str, headers: Vec<(&'static str, Vec<u8>)>) -> Send {
    Send::Http("GET", path.to_owned(), headers)
}

fn sig(v: impl Into<Vec<u8>>) -> Vec<(&'static str, Vec<u8>)> {
    vec![("payment-signature", v.into())]
}

fn with_json(base: &Value, path: &[&str], v: Value) -> String {
    let mut out = base.clone();
    let mut cur = &mut out;
    for (i, k) in path.iter().enumerate() {
        if i + 1 == path.len() {
            cur[*k] = v.clone();
        } else {
            cur = &mut cur[*k];
        }
    }
    pay::b64(&out)
}

#[tokio::test]
async fn forty_plus_hostile_requests_get_their_reasons_and_nothing_leaks() {
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1"]);
    let origin = Origin::start("hostile-origin");
    let fac = dev.info["facilitatorUrl"].as_str().expect("fac").to_owned();
    let gw = Gateway::start(
        &paid_config(
            &origin.addr,
            &dev.info,
            &facilitator_toml("local", &fac, 0, ""),
            "",
        ),
        &[("rules.toml", RULES)],
    );
    let c = client();
    let r = c
        .get(gw.url("/api/weather"))
        .send()
        .await
        .expect("challenge");
    let accepted =
        decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["accepts"][0]
            .clone();
    let key = pay::key(dev.info["payers"][0]["privateKey"].as_str().expect("key"));
    let auth = Auth::for_requirements(&accepted);
    let payload = pay::signed_payload(&key, &accepted, &auth);
    let good_json = json!({"x402Version": 2, "accepted": accepted, "payload": payload});
    let good = pay::b64(&good_json);
    let v1_json =
        json!({"x402Version": 1, "scheme": "exact", "network": "base-sepolia", "payload": payload});
    let host = gw.addr.clone();
    let raw = |req: String| Send::Raw(req.into_bytes());
    let auth_with = |f: &dyn Fn(&mut Auth)| {
        let mut a = Auth::for_requirements(&accepted);
        f(&mut a);
        pay::v2_header(&accepted, pay::signed_payload(&key, &accepted, &a))
    };
    // Deep enough to trip the JSON parser's recursion limit, small enough for the header allowance.
    let nested = format!("{}{}", "[".repeat(4_000), "]".repeat(4_000));

    let rows = vec![
        row(
            "truncated base64",
            get("/api/weather", sig(&good[..good.len() - 5])),
            402,
            Some("invalid_payment_header_encoding"),
        ),
        row(
            "extra padding",
            get("/api/weather", sig(format!("{good}=="))),
            402,
            Some("invalid_payment_header_encoding"),
        ),
        row(
            "missing padding",
            get("/api/weather", sig(good.trim_end_matches('='))),
            402,
            Some("invalid_payment_header_encoding"),
        ),
        row(
            "url-safe alphabet",
            get(
                "/api/weather",
                sig(good.replace('+', "-").replace('/', "_") + "-_"),
            ),
            402,
            Some("invalid_payment_header_encoding"),
        ),
        row(
            "space inside base64",
            get(
                "/api/weather",
                sig(format!("{} {}", &good[..8], &good[8..])),
            ),
            402,
            Some("invalid_payment_header_encoding"),
        ),
        row(
            "empty header",
            get("/api/weather", sig("")),
            402,
            Some("invalid_payment_header_encoding"),
        ),
        row(
            "base64 of garbage bytes",
            get(
                "/api/weather",
                sig(pay::b64(&json!("x")).replace("Ing", "AAA")),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "invalid UTF-8 in JSON",
            get(
                "/api/weather",
                sig(x402_gateway::x402::codec::encode(
                    b"{\"x402Version\":2,\"a\":\"\xff\xfe\"}",
                )),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "JSON null",
            get("/api/weather", sig(pay::b64(&Value::Null))),
            402,
            Some("invalid_payload"),
        ),
        row(
            "JSON array",
            get("/api/weather", sig(pay::b64(&json!([good_json.clone()])))),
            402,
            Some("invalid_payload"),
        ),
        row(
            "deeply nested JSON",
            get(
                "/api/weather",
                sig(x402_gateway::x402::codec::encode(nested.as_bytes())),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "duplicate keys",
            get(
                "/api/weather",
                sig(x402_gateway::x402::codec::encode(
                    format!(
                        "{{\"x402Version\":2,\"accepted\":{a},\"accepted\":{a},\"payload\":{p}}}",
                        a = accepted,
                        p = payload
                    )
                    .as_bytes(),
                )),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "version as string",
            get(
                "/api/weather",
                sig(with_json(&good_json, &["x402Version"], json!("2"))),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "version as float",
            get(
                "/api/weather",
                sig(with_json(&good_json, &["x402Version"], json!(2.5))),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "version 3",
            get(
                "/api/weather",
                sig(with_json(&good_json, &["x402Version"], json!(3))),
            ),
            402,
            Some("invalid_x402_version"),
        ),
        row(
            "v1 payload in v2 header",
            get("/api/weather", sig(pay::b64(&v1_json))),
            402,
            Some("invalid_x402_version"),
        ),
        row(
            "v2 payload in v1 header",
            get(
                "/api/weather",
                vec![("x-payment", good.clone().into_bytes())],
            ),
            402,
            Some("invalid_x402_version"),
        ),
        row(
            "accepted is an array",
            get(
                "/api/weather",
                sig(with_json(&good_json, &["accepted"], json!([1, 2]))),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "payload null",
            get(
                "/api/weather",
                sig(with_json(&good_json, &["payload"], Value::Null)),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "huge maxTimeoutSeconds",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["accepted", "maxTimeoutSeconds"],
                    json!(1e30),
                )),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "huge value",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["payload", "authorization", "value"],
                    json!("9".repeat(90)),
                )),
            ),
            402,
            Some("invalid_exact_evm_payload_authorization_value_mismatch"),
        ),
        row(
            "negative value",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["payload", "authorization", "value"],
                    json!("-10000"),
                )),
            ),
            402,
            Some("invalid_exact_evm_payload_authorization_value_mismatch"),
        ),
        row(
            "numeric value",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["payload", "authorization", "value"],
                    json!(10000),
                )),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "non-numeric validBefore",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["payload", "authorization", "validBefore"],
                    json!("soon"),
                )),
            ),
            402,
            Some("invalid_exact_evm_payload_authorization_valid_before"),
        ),
        row(
            "unknown authorization field",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["payload", "authorization", "extraField"],
                    json!(1),
                )),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "from not an address",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["payload", "authorization", "from"],
                    json!("alice"),
                )),
            ),
            402,
            Some("invalid_payload"),
        ),
        row(
            "short nonce",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["payload", "authorization", "nonce"],
                    json!("0x1234"),
                )),
            ),
            402,
            Some("invalid_exact_evm_payload_nonce"),
        ),
        row(
            "64-byte signature",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["payload", "signature"],
                    json!(format!("0x{}", "ab".repeat(64))),
                )),
            ),
            402,
            Some("invalid_exact_evm_payload_signature"),
        ),
        row(
            "odd-length signature",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["payload", "signature"],
                    json!("0xabc"),
                )),
            ),
            402,
            Some("invalid_exact_evm_payload_signature"),
        ),
        row(
            "expired",
            get(
                "/api/weather",
                sig(auth_with(&|a| a.valid_before = pay::now() - 1)),
            ),
            402,
            Some("invalid_exact_evm_payload_authorization_valid_before"),
        ),
        row(
            "not yet valid",
            get(
                "/api/weather",
                sig(auth_with(&|a| a.valid_after = u64::MAX / 2)),
            ),
            402,
            Some("invalid_exact_evm_payload_authorization_valid_after"),
        ),
        row(
            "underpaid",
            get("/api/weather", sig(auth_with(&|a| a.value = 1))),
            402,
            Some("invalid_exact_evm_payload_authorization_value_mismatch"),
        ),
        row(
            "extra missing from accepted",
            get(
                "/api/weather",
                sig(with_json(&good_json, &["accepted", "extra"], json!({}))),
            ),
            402,
            Some("no_matching_requirements"),
        ),
        row(
            "other network",
            get(
                "/api/weather",
                sig(with_json(
                    &good_json,
                    &["accepted", "network"],
                    json!("eip155:1"),
                )),
            ),
            402,
            Some("invalid_network"),
        ),
        row(
            "v1 on a network without a v1 name",
            get(
                "/api/weather",
                vec![("x-payment", pay::b64(&v1_json).into_bytes())],
            ),
            402,
            Some("invalid_network"),
        ),
        row(
            "three payment headers",
            get(
                "/api/weather",
                vec![
                    ("payment-signature", good.clone().into()),
                    ("payment-signature", good.clone().into()),
                    ("payment-signature", good.clone().into()),
                ],
            ),
            402,
            Some("multiple_payment_headers"),
        ),
        row(
            "v1 and v2 headers at once",
            get(
                "/api/weather",
                vec![
                    ("payment-signature", good.clone().into()),
                    ("x-payment", good.clone().into()),
                ],
            ),
            402,
            Some("multiple_payment_headers"),
        ),
        row(
            "oversized payment header",
            get("/api/weather", sig("A".repeat(20_000))),
            402,
            Some("payment_header_too_large"),
        ),
        row(
            "100 KiB of other headers",
            get("/api/weather", vec![("x-filler", vec![b'a'; 100 << 10])]),
            431,
            Some("request_headers_too_large"),
        ),
        // Past Pingora's own header buffer: refused with an empty 400 before the gateway runs.
        row(
            "1 MiB header",
            get("/api/weather", vec![("x-filler", vec![b'a'; 1 << 20])]),
            400,
            None,
        ),
        row(
            "payment moved to another method and rule",
            Send::Http("PUT", "/api/premium".into(), sig(good.clone())),
            402,
            Some("no_matching_requirements"),
        ),
        row(
            "payment for a host-specific rule",
            Send::Http(
                "GET",
                "/anything".into(),
                vec![
                    ("host", b"shop.example".to_vec()),
                    ("payment-signature", good.clone().into()),
                ],
            ),
            402,
            Some("no_matching_requirements"),
        ),
        row(
            "obs-text bytes in payment header",
            get("/api/weather", sig(b"\xff\xfe\xfd".to_vec())),
            402,
            Some("invalid_payment_header_encoding"),
        ),
        row(
            "NUL in header (raw)",
            raw(format!(
                "GET /api/weather HTTP/1.1\r\nHost: {host}\r\nPayment-Signature: ab\0cd\r\n\r\n"
            )),
            400,
            None,
        ),
        row(
            "control byte in header (raw)",
            raw(format!(
                "GET /api/weather HTTP/1.1\r\nHost: {host}\r\nX-A: a\x01b\r\n\r\n"
            )),
            400,
            None,
        ),
        row(
            "NUL in path (raw)",
            raw(format!(
                "GET /api/weather%00 HTTP/1.1\r\nHost: {host}\r\n\r\n"
            )),
            400,
            Some("control_byte_in_path"),
        ),
        row(
            "dot-dot into priced path",
            raw(format!(
                "GET /free/../api/weather HTTP/1.1\r\nHost: {host}\r\n\r\n"
            )),
            402,
            Some("payment_required"),
        ),
        row(
            "encoded slash into priced path",
            raw(format!(
                "GET /free%2F..%2Fapi%2Fweather HTTP/1.1\r\nHost: {host}\r\n\r\n"
            )),
            402,
            Some("payment_required"),
        ),
        row(
            "two Host headers (raw)",
            raw(format!(
                "GET /free/x HTTP/1.1\r\nHost: {host}\r\nHost: shop.example\r\n\r\n"
            )),
            400,
            None,
        ),
        row(
            "absolute-form host mismatch (raw)",
            raw(format!(
                "GET http://shop.example/free/x HTTP/1.1\r\nHost: {host}\r\n\r\n"
            )),
            400,
            None,
        ),
        row(
            "host with a space (raw)",
            raw("GET /free/x HTTP/1.1\r\nHost: a b\r\n\r\n".into()),
            400,
            None,
        ),
        row(
            "smuggling: differing Content-Lengths (raw)",
            raw(format!(
                "POST /free/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"
            )),
            400,
            None,
        ),
        row(
            "smuggling: chunked not last (raw)",
            raw(format!(
                "POST /free/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
            )),
            400,
            None,
        ),
        row(
            "bad request line (raw)",
            raw("GET\r\n\r\n".into()),
            400,
            None,
        ),
        row(
            "100 KiB URL (raw)",
            raw(format!(
                "GET /api/weather?{} HTTP/1.1\r\nHost: {host}\r\n\r\n",
                "a".repeat(100 * 1024)
            )),
            414,
            None,
        ),
    ];
    assert!(rows.len() >= 40, "{} rows", rows.len());
    let mut free = vec![Row {
        reaches_origin: true,
        ..row(
            "payment header on a free route is stripped",
            get("/free/x", sig(good.clone())),
            200,
            None,
        )
    }];
    free.push(Row {
        reaches_origin: true,
        ..row(
            "lowercase header name",
            get("/free/y", vec![("payment-signature", b"zz".to_vec())]),
            200,
            None,
        )
    });
    // RFC 9112 §6.3: Transfer-Encoding wins, Content-Length is dropped before the origin sees
    // the request, and the connection closes after it.
    free.push(Row { reaches_origin: true, ..row("smuggling: CL and TE (raw)", raw(format!("POST /free/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")), 200, None) });

    let mut failures = Vec::new();
    for r in rows.iter().chain(&free) {
        let before = origin.requests().await;
        let (status, reason) = match &r.send {
            Send::Http(method, path, headers) => {
                let mut req = c.request(method.parse().expect("method"), gw.url(path));
                for (k, v) in headers {
                    req = req.header(
                        *k,
                        reqwest::header::HeaderValue::from_bytes(v).expect("header value"),
                    );
                }
                let resp = req.send().await.expect("send");
                let status = resp.status().as_u16();
                let pr = resp
                    .headers()
                    .get("payment-required")
                    .and_then(|v| v.to_str().ok())
                    .map(decode_header);
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if r.reaches_origin {
                    assert!(
                        body["headers"].get("payment-signature").is_none(),
                        "{}: payment header reached the origin",
                        r.name
                    );
                }
                let reason = pr
                    .map(|p| p["error"].clone())
                    .unwrap_or_else(|| body["error"].clone());
                (status, reason.as_str().map(str::to_owned))
            }
            Send::Raw(bytes) => {
                let resp = raw_request(&gw.addr, bytes);
                let status = raw_status(&resp);
                let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
                let pr = resp
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("PAYMENT-REQUIRED: ")
                            .or_else(|| l.strip_prefix("payment-required: "))
                    })
                    .map(|v| decode_header(v.trim()));
                let reason = pr
                    .map(|p| p["error"].clone())
                    .or_else(|| {
                        serde_json::from_str::<Value>(body)
                            .ok()
                            .map(|b| b["error"].clone())
                    })
                    .and_then(|v| v.as_str().map(str::to_owned));
                (status, reason)
            }
        };
        let reached = origin.requests().await > before;
        let ok_status = status == r.status
            || (r.reason.is_none()
                && (400..500).contains(&status)
                && (400..500).contains(&r.status));
        if !ok_status
            || (r.reason.is_some() && reason.as_deref() != r.reason)
            || reached != r.reaches_origin
            || status >= 500
        {
            failures.push(format!(
                "{}: got {status} {reason:?} (origin reached: {reached}), want {} {:?}",
                r.name, r.status, r.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let calls = facilitator_paths(&fac).await;
    assert!(
        calls.is_empty(),
        "no hostile request may reach the facilitator: {calls:?}"
    );
    // Still serving.
    assert_eq!(
        c.get(gw.url("/free/ok"))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
}

/// Rules for the request-target matrix: priced paths, a free area and a free home page, in
/// front of a lenient origin.
const TARGET_RULES: &str = r#"
[[rule]]
id = "home"
path = "/"
action = "free"

[[rule]]
id = "weather"
path = "/api/weather"
methods = ["GET"]
price = "$0.01"

[[rule]]
id = "paid"
prefix = "/paid/"
price = "$0.01"

[[rule]]
id = "free"
prefix = "/free"
action = "free"
"#;

/// Every request-target shape an attacker can send, against a lenient origin (which resolves
/// `api/weather`, `\api\weather`, `x:/api/weather`, `%2F` … to the priced path): each is a 400
/// before routing or is priced as the path the origin would resolve; free ones reach the
/// origin in canonical origin-form; the origin never serves a priced path; the access log
/// records the raw target and the canonical path.
#[tokio::test]
async fn odd_request_targets_never_reach_priced_content_on_a_lenient_origin() {
    let origin = Origin::start_lenient("lenient");
    let gw = Gateway::start(
        &config(&origin.addr, "format = \"json\"\n"),
        &[("rules.toml", TARGET_RULES)],
    );
    let host = gw.addr.clone();
    let ask = |method: &str, target: &str| {
        let resp = raw_request(
            &gw.addr,
            format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        let mut json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        // A 402's reason is the `error` of its PAYMENT-REQUIRED header.
        if let Some(v) = resp.lines().find_map(|l| {
            l.strip_prefix("payment-required: ")
                .or_else(|| l.strip_prefix("PAYMENT-REQUIRED: "))
        }) {
            json["error"] = decode_header(v.trim())["error"].clone();
        }
        (raw_status(&resp), json)
    };
    let a = |p: &str| format!("http://{host}{p}");
    // (method, target, status, reason). Reason `None`: not checked — answers from the origin,
    // and the `http:`-scheme targets without `//host` or with a backslash or `@` in the
    // authority, which Pingora itself refuses with a bare 400 before the gateway sees them.
    let rows: Vec<(&str, String, u16, Option<&str>)> = vec![
        (
            "GET",
            "api/weather".into(),
            400,
            Some("invalid_request_target"),
        ),
        (
            "GET",
            "\\api\\weather".into(),
            400,
            Some("invalid_request_target"),
        ),
        ("GET", "paid/x".into(), 400, Some("invalid_request_target")),
        (
            "GET",
            "..\\paid\\x".into(),
            400,
            Some("invalid_request_target"),
        ),
        (
            "GET",
            "%2Fapi%2Fweather".into(),
            400,
            Some("invalid_request_target"),
        ),
        (
            "GET",
            "x:/api/weather".into(),
            400,
            Some("invalid_request_target"),
        ),
        ("GET", "http:/api/weather".into(), 400, None),
        ("GET", "http:api/weather".into(), 400, None),
        ("GET", "http:\\\\h\\api\\weather".into(), 400, None),
        ("GET", format!("http://{host}\\@x/api/weather"), 400, None),
        ("GET", "http:///api/weather".into(), 400, None),
        (
            "GET",
            format!("ws://{host}/api/weather"),
            400,
            Some("invalid_request_target"),
        ),
        (
            "GET",
            format!("wss://{host}/paid/x"),
            400,
            Some("invalid_request_target"),
        ),
        (
            "GET",
            format!("ftp://{host}/paid/x"),
            400,
            Some("invalid_request_target"),
        ),
        (
            "GET",
            "?/api/weather".into(),
            400,
            Some("invalid_request_target"),
        ),
        ("GET", "*".into(), 400, Some("invalid_request_target")),
        (
            "GET",
            "/free/../api/weather".into(),
            402,
            Some("payment_required"),
        ),
        (
            "GET",
            "/free/%2e%2e/api/weather".into(),
            402,
            Some("payment_required"),
        ),
        (
            "GET",
            "/api%2Fweather".into(),
            402,
            Some("payment_required"),
        ),
        (
            "GET",
            "/free%2F..%2Fpaid%2Fx".into(),
            402,
            Some("payment_required"),
        ),
        (
            "GET",
            "/free\\..\\paid\\x".into(),
            402,
            Some("payment_required"),
        ),
        (
            "GET",
            "//api//weather".into(),
            402,
            Some("payment_required"),
        ),
        (
            "GET",
            "/free/..;/paid/x".into(),
            402,
            Some("payment_required"),
        ),
        ("GET", "/API/Weather".into(), 402, Some("payment_required")),
        ("GET", a("/api/weather"), 402, Some("payment_required")),
        ("GET", a("/free/../paid/x"), 402, Some("payment_required")),
        (
            "GET",
            format!("HTTP://{host}/api/weather"),
            402,
            Some("payment_required"),
        ),
        ("POST", "/paid/x".into(), 402, Some("payment_required")),
        ("get", "/api/weather".into(), 400, Some("invalid_method")),
        ("Get", "/api/weather".into(), 400, Some("invalid_method")),
        ("pOsT", "/paid/x".into(), 400, Some("invalid_method")),
        ("get", "/free/x".into(), 400, Some("invalid_method")),
        // Free requests reach the origin, always in canonical origin-form.
        ("GET", "/free/./x".into(), 200, None),
        ("GET", a("/free/x?q=1"), 200, None),
        ("GET", format!("http://{host}"), 200, None),
        ("OPTIONS", "*".into(), 200, None),
    ];
    let mut failures = Vec::new();
    for (method, target, status, reason) in &rows {
        let (got, body) = ask(method, target);
        let got_reason = body["error"].as_str();
        if got != *status || (reason.is_some() && got_reason != *reason) {
            failures.push(format!(
                "{method} {target}: got {got} {got_reason:?}, want {status} {reason:?}"
            ));
        }
        if got == 200 {
            let sent = body["target"].as_str().unwrap_or("");
            let expect = match target.as_str() {
                "*" => "*",
                t if t.ends_with(&host) => "/",
                t if t.contains("?q=1") => "/free/x?q=1",
                _ => "/free/x",
            };
            if sent != expect {
                failures.push(format!(
                    "{method} {target}: the origin received {sent:?}, want {expect:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let served = origin.served().await;
    let priced: Vec<&String> = served
        .iter()
        .filter(|s| {
            let p = s
                .split_once(' ')
                .map_or("", |(_, p)| p)
                .to_ascii_lowercase();
            p == "/api/weather" || p.starts_with("/paid/")
        })
        .collect();
    assert!(
        priced.is_empty(),
        "the origin served priced content: {priced:?}"
    );
    assert_eq!(served.len(), 4, "{served:?}");
    // The access log has the raw target and the canonical path.
    let log = gw
        .log_containing(r#""target_raw":"/free%2F..%2Fpaid%2Fx""#)
        .await;
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target_raw"] == "/free%2F..%2Fpaid%2Fx")
        .unwrap_or_else(|| panic!("no access line for the encoded target:\n{log}"));
    assert_eq!(line["path"], "/paid/x", "{line}");
    assert_eq!(line["rule"], "paid", "{line}");
}

/// The same attack over HTTP/2 on a TLS listener, with a real HTTP/2 client: `:path` values
/// an HTTP library can carry are refused or priced as the path a lenient origin would resolve;
/// an `:authority` that disagrees with `Host` is refused; miscased methods are refused; free
/// requests reach the origin in canonical origin-form. `:path` values no library sends (no
/// leading slash, absolute-form, backslashes), written as raw frames, are malformed under
/// RFC 9113 §8.3.1 and reset by the HTTP/2 layer before routing. The lenient origin never
/// serves priced content.
#[tokio::test]
async fn odd_targets_over_http2_never_reach_priced_content() {
    use crate::support::tls::{
        H2Answer, RawH2, h2_connect, h2_raw_request, h2_request, tls_listener_toml,
    };
    let origin = Origin::start_lenient("lenient-h2");
    let gw = Gateway::start(
        &config(&origin.addr, &tls_listener_toml()),
        &[("rules.toml", TARGET_RULES)],
    );
    let tls = gw.tls_addr();
    let send = h2_connect(&tls).await;
    let port = tls.rsplit(':').next().expect("port").to_owned();
    let authority = format!("localhost:{port}");
    // (method, :path, extra headers, status, reason). Reason `None`: not checked (answers from
    // the origin, and refusals Pingora makes before the gateway sees the request).
    let other_host = [("host", "evil.example")];
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        u16,
        Option<&'a str>,
    );
    let rows: Vec<Row<'_>> = vec![
        ("GET", "*", &[], 400, Some("invalid_request_target")),
        (
            "GET",
            "?/api/weather",
            &[],
            400,
            Some("invalid_request_target"),
        ),
        (
            "GET",
            "/free/../api/weather",
            &[],
            402,
            Some("payment_required"),
        ),
        ("GET", "/api%2Fweather", &[], 402, Some("payment_required")),
        (
            "GET",
            "/free\\..\\paid\\x",
            &[],
            402,
            Some("payment_required"),
        ),
        (
            "GET",
            "/free/..;/paid/x",
            &[],
            402,
            Some("payment_required"),
        ),
        ("GET", "//api//weather", &[], 402, Some("payment_required")),
        ("GET", "/API/Weather", &[], 402, Some("payment_required")),
        (
            "GET",
            "/free/%2e%2e/paid/x",
            &[],
            402,
            Some("payment_required"),
        ),
        // Pingora refuses conflicting authority fields itself (RFC 9113 §8.3.1), bare.
        ("GET", "/free/x", &other_host, 400, None),
        ("get", "/api/weather", &[], 400, Some("invalid_method")),
        ("Get", "/free/x", &[], 400, Some("invalid_method")),
        ("GET", "/free/./x", &[], 200, None),
        ("GET", "/free%2Fx", &[], 200, None),
        ("GET", "/free/x?q=1", &[], 200, None),
    ];
    let mut failures = Vec::new();
    for (method, path, headers, status, reason) in &rows {
        let answer = h2_request(&send, method, &authority, path, headers).await;
        let (got, head, body) = match answer {
            H2Answer::Response(s, h, b) => (s, h, b),
            H2Answer::Reset(e) => {
                failures.push(format!(
                    "{method} {path}: stream reset ({e}), want {status}"
                ));
                continue;
            }
        };
        let mut json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if let Some(v) = head.get("payment-required").and_then(|v| v.to_str().ok()) {
            json["error"] = decode_header(v)["error"].clone();
        }
        let got_reason = json["error"].as_str();
        if got != *status || (reason.is_some() && got_reason != *reason) {
            failures.push(format!(
                "{method} {path}: got {got} {got_reason:?}, want {status} {reason:?}"
            ));
        }
        if got == 200 {
            let sent = json["target"].as_str().unwrap_or("");
            let expect = if path.contains("?q=1") {
                "/free/x?q=1"
            } else {
                "/free/x"
            };
            if sent != expect {
                failures.push(format!(
                    "{method} {path}: the origin received {sent:?}, want {expect:?}"
                ));
            }
        }
    }
    // Raw frames: what no HTTP library sends. A well-formed request first, so a broken raw
    // client cannot pass for a refusal.
    let raw = |path: &'static str| {
        let (tls, authority) = (tls.clone(), authority.clone());
        async move {
            h2_raw_request(
                &tls,
                &[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", &authority),
                    (":path", path),
                ],
            )
            .await
        }
    };
    assert_eq!(
        raw("/free/raw").await,
        RawH2::Answered,
        "the raw client works"
    );
    for path in [
        "api/weather",
        "paid/x",
        "\\api\\weather",
        "%2Fapi%2Fweather",
        "x:/api/weather",
        "https://localhost/api/weather",
        "http:/api/weather",
    ] {
        match raw(path).await {
            RawH2::Reset(_) | RawH2::GoAway(_) => {}
            other => failures.push(format!("raw :path {path:?}: {other:?}, want a reset")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let served = origin.served().await;
    assert!(
        !served.iter().any(|s| {
            let p = s
                .split_once(' ')
                .map_or("", |(_, p)| p)
                .to_ascii_lowercase();
            p == "/api/weather" || p.starts_with("/paid/")
        }),
        "the origin served priced content: {served:?}"
    );
    assert_eq!(served.len(), 4, "{served:?}");
}
