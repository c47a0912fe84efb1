//! Rule matching: hosts, methods, globs, prefixes, specificity, blocking, per-rule upstreams,
//! Host handling and forwarded headers.

use super::*;

const RULES: &str = r#"
# Hosts: exact beats glob beats any.
[[rule]]
id = "host-exact"
host = "api.shop.test"
path = "/r/host"
price = "$0.02"

[[rule]]
id = "host-glob"
host = "*.shop.test"
path = "/r/host"
price = "$0.03"

[[rule]]
id = "host-any"
path = "/r/host"
price = "$0.04"

# Methods.
[[rule]]
id = "m-post"
path = "/r/method"
methods = ["POST"]
price = "$0.05"

[[rule]]
id = "m-get"
path = "/r/method"
methods = ["get"]
price = "$0.06"

# Globs and prefixes.
[[rule]]
id = "star"
path = "/r/files/*.pdf"
price = "$0.07"

[[rule]]
id = "dstar"
path = "/r/docs/**"
price = "$0.08"

[[rule]]
id = "pre"
prefix = "/r/pre/"
price = "$0.09"

[[rule]]
id = "mid-star"
path = "/r/*/mid"
price = "$0.13"

# Specificity: exact beats globs; more literal text beats less; `*` beats `**`.
[[rule]]
id = "spec-rest"
path = "/r/spec/**"
price = "$0.11"

[[rule]]
id = "spec-star"
path = "/r/spec/*"
price = "$0.10"

[[rule]]
id = "spec-ab"
path = "/r/spec/ab*"
price = "$0.12"

[[rule]]
id = "spec-exact"
path = "/r/spec/exact"
action = "free"

# Blocking, upstream choice, Host rewriting.
[[rule]]
id = "blk"
prefix = "/r/blocked"
action = "block"

[[rule]]
id = "to-second"
prefix = "/r/second"
action = "free"
upstream = "second"

[[rule]]
id = "rewrite"
prefix = "/r/rewrite"
action = "free"
upstream = "rewritten"
"#;

struct Site {
    o1: Origin,
    o2: Origin,
    gw: Gateway,
    c: reqwest::Client,
}

fn site() -> Site {
    let o1 = Origin::start("o1");
    let o2 = Origin::start("o2");
    let extra = format!(
        r#"
[upstreams.second]
peers = ["{o2}"]

[upstreams.rewritten]
peers = ["{o1}"]
host = "internal.origin"
"#,
        o1 = o1.addr,
        o2 = o2.addr
    );
    let gw = Cfg::new(&o1.addr)
        .upstream("default = true")
        .extra(&extra)
        .start(&[("routing.toml", RULES)]);
    Site {
        o1,
        o2,
        gw,
        c: client(),
    }
}

impl Site {
    async fn req(&self, method: &str, path: &str, host: &str) -> Got {
        send(&self.c, method, &self.gw.url(path), &[("host", host)]).await
    }

    /// The price of a request (atomic units), or `None` when it was not challenged.
    async fn price(&self, method: &str, path: &str, host: &str) -> Option<String> {
        let r = self.req(method, path, host).await;
        match r.status {
            402 => r.price(),
            200 => None,
            s => panic!("{method} {host}{path}: unexpected {s}: {}", r.text()),
        }
    }

    async fn origin_requests(&self) -> u64 {
        self.o1.requests().await + self.o2.requests().await
    }
}

#[tokio::test]
async fn most_specific_rule_wins_across_hosts_methods_and_globs() {
    let s = site();
    let p = |amount: &str| Some(amount.to_owned());
    let cases: &[(&str, &str, &str, Option<String>)] = &[
        // hosts
        ("GET", "/r/host", "api.shop.test", p("20000")),
        ("GET", "/r/host", "API.Shop.Test:8080", p("20000")),
        ("GET", "/r/host", "www.shop.test", p("30000")),
        ("GET", "/r/host", "a.b.shop.test", p("30000")),
        ("GET", "/r/host", "shop.test", p("40000")),
        ("GET", "/r/host", "other.example", p("40000")),
        // methods: GET covers HEAD; other methods fall through (no rule: forwarded)
        ("GET", "/r/method", "x.test", p("60000")),
        ("HEAD", "/r/method", "x.test", p("60000")),
        ("POST", "/r/method", "x.test", p("50000")),
        ("PUT", "/r/method", "x.test", None),
        ("DELETE", "/r/method", "x.test", None),
        // `*` stays within one segment
        ("GET", "/r/files/report.pdf", "x.test", p("70000")),
        ("GET", "/r/files/.pdf", "x.test", p("70000")),
        ("GET", "/r/files/a/report.pdf", "x.test", None),
        ("GET", "/r/files/report.pdfx", "x.test", None),
        ("GET", "/r/files/report.txt", "x.test", None),
        ("GET", "/r/x/mid", "x.test", p("130000")),
        ("GET", "/r/x/y/mid", "x.test", None),
        // `**` spans zero or more segments
        ("GET", "/r/docs", "x.test", p("80000")),
        ("GET", "/r/docs/a", "x.test", p("80000")),
        ("GET", "/r/docs/a/b/c.html", "x.test", p("80000")),
        ("GET", "/r/docsx", "x.test", None),
        // prefixes
        ("GET", "/r/pre", "x.test", p("90000")),
        ("GET", "/r/pre/", "x.test", p("90000")),
        ("GET", "/r/pre/a/b", "x.test", p("90000")),
        ("GET", "/r/prefix", "x.test", None),
        // specificity
        ("GET", "/r/spec/exact", "x.test", None),
        ("GET", "/r/spec/abc", "x.test", p("120000")),
        ("GET", "/r/spec/ab", "x.test", p("120000")),
        ("GET", "/r/spec/zzz", "x.test", p("100000")),
        ("GET", "/r/spec/zzz/deeper", "x.test", p("110000")),
        ("GET", "/r/spec", "x.test", p("110000")),
        // nothing matches: forwarded
        ("GET", "/elsewhere", "x.test", None),
        ("POST", "/", "x.test", None),
    ];
    let mut forwarded = 0;
    for (method, path, host, want) in cases {
        let got = s.price(method, path, host).await;
        assert_eq!(&got, want, "{method} {host}{path}");
        if want.is_none() {
            forwarded += 1;
        }
    }
    assert_eq!(
        s.origin_requests().await,
        forwarded,
        "exactly the unpriced requests reached an origin"
    );
}

#[tokio::test]
async fn blocked_rules_answer_403_with_a_reason() {
    let s = site();
    for path in [
        "/r/blocked",
        "/r/blocked/x/y",
        "/r/BLOCKED/x",
        "/r/x/../blocked/y",
    ] {
        let r = s.req("GET", path, "x.test").await;
        assert_eq!(r.status, 403, "{path}");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json"))
        );
        let v = r.json();
        assert_eq!(v["error"], "blocked_by_rule", "{v}");
        let r = s.req("POST", path, "x.test").await;
        assert_eq!(r.status, 403, "POST {path}");
    }
    assert_eq!(s.origin_requests().await, 0);
}

#[tokio::test]
async fn rules_choose_upstreams_and_host_is_kept_or_rewritten() {
    let s = site();
    let host = "api.shop.test";

    // Unmatched requests go to the default upstream, Host kept as the client sent it.
    let v = s.req("GET", "/echo-me?a=1", host).await.json();
    assert_eq!(v["origin"], "o1");
    assert_eq!(v["headers"]["host"], host);
    assert_eq!(v["path"], "/echo-me");
    assert_eq!(v["query"], "a=1");

    // A rule with `upstream = "second"`.
    let v = s.req("GET", "/r/second/x", host).await.json();
    assert_eq!(v["origin"], "o2");
    assert_eq!(v["headers"]["host"], host);

    // An upstream with `host = "internal.origin"` rewrites Host; X-Forwarded-Host keeps the
    // client's.
    let v = s.req("GET", "/r/rewrite/x", host).await.json();
    assert_eq!(v["origin"], "o1");
    assert_eq!(v["headers"]["host"], "internal.origin");
    assert_eq!(v["headers"]["x-forwarded-host"], host);

    assert_eq!(s.o1.requests().await, 2);
    assert_eq!(s.o2.requests().await, 1);
}

#[tokio::test]
async fn origin_sees_forwarded_headers() {
    let s = site();
    let v = s.req("GET", "/headers", "api.shop.test").await.json();
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(h["x-forwarded-proto"], "http", "{v}");
    assert_eq!(h["x-forwarded-host"], "api.shop.test", "{v}");

    // A client's X-Forwarded-For is appended to; its -Proto and -Host are not trusted.
    let r = send(
        &s.c,
        "GET",
        &s.gw.url("/headers"),
        &[
            ("host", "api.shop.test"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await;
    let v = r.json();
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "{v}");
    assert_eq!(h["x-forwarded-proto"], "http", "{v}");
    assert_eq!(h["x-forwarded-host"], "api.shop.test", "{v}");

    // Payment headers are the gateway's business: never forwarded.
    let r = send(
        &s.c,
        "GET",
        &s.gw.url("/headers"),
        &[
            ("host", "api.shop.test"),
            ("payment-signature", "abc"),
            ("x-payment", "abc"),
        ],
    )
    .await;
    let v = r.json();
    assert!(v["headers"].get("payment-signature").is_none(), "{v}");
    assert!(v["headers"].get("x-payment").is_none(), "{v}");
}

/// `[server] hosts` answers any other Host (or none, on HTTP/1.0) with a 421 before routing;
/// `[rules] unmatched = "block"` refuses what no rule matches with a 403; `check` warns when a
/// host-scoped priced rule leaves other hosts reaching the origin free.
#[tokio::test]
async fn hosts_list_and_unmatched_block_close_the_free_side_doors() {
    let origin = Origin::start("hosts-origin");
    let rules = r#"
[[rule]]
id = "shop"
host = "shop.test"
prefix = "/paid/"
methods = ["GET"]
price = "$0.01"

[[rule]]
id = "free"
prefix = "/free/"
action = "free"
"#;
    let cfg = config(&origin.addr, "")
        .replace(
            "threads = 1\n",
            "threads = 1\nhosts = [\"shop.test\", \"*.cdn.test\"]\n",
        )
        .replace("[reload]", "[rules]\nunmatched = \"block\"\n\n[reload]");
    let gw = Gateway::start(&cfg, &[("rules.toml", rules)]);
    let c = client();
    let get =
        |host: &'static str, path: &'static str| c.get(gw.url(path)).header("host", host).send();
    let status_reason = |r: reqwest::Response| async move {
        let s = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        (s, v["error"].as_str().map(str::to_owned))
    };
    let before = origin.requests().await;
    for (host, path, want, reason) in [
        ("other.test", "/paid/x", 421, Some("unknown_host")),
        ("other.test", "/free/x", 421, Some("unknown_host")),
        ("shop.test.evil", "/free/x", 421, Some("unknown_host")),
        ("shop.test", "/paid/x", 402, None),
        ("shop.test", "/elsewhere", 403, Some("no_matching_rule")),
        ("a.cdn.test", "/paid/x", 403, Some("no_matching_rule")),
    ] {
        let r = get(host, path).await.expect("send");
        let (s, why) = status_reason(r).await;
        assert_eq!(s, want, "{host}{path}");
        if reason.is_some() {
            assert_eq!(why.as_deref(), reason, "{host}{path}");
        }
    }
    assert_eq!(
        origin.requests().await,
        before,
        "nothing reached the origin"
    );
    for host in ["shop.test", "SHOP.test:8080", "x.cdn.test"] {
        let r = get(host, "/free/x").await.expect("send");
        assert_eq!(r.status(), 200, "{host}");
    }
    // HTTP/1.0 without a Host names no listed host.
    let resp = raw_request(&gw.addr, b"GET /free/x HTTP/1.0\r\n\r\n");
    assert_eq!(raw_status(&resp), 421, "{resp}");

    // `check` warns about the side door when neither defence is on.
    let open = config(&origin.addr, "");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules");
    std::fs::write(dir.path().join("gateway.toml"), &open).expect("write");
    std::fs::write(dir.path().join("rules/r.toml"), rules).expect("write");
    let out = std::process::Command::new(GATEWAY_BIN)
        .args(["check", "-c"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: ") && text.contains("rule `shop` prices only host `shop.test`"),
        "{text}"
    );
    std::fs::write(dir.path().join("gateway.toml"), &cfg).expect("write");
    let out = std::process::Command::new(GATEWAY_BIN)
        .args(["check", "-c"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("warning: "), "{text}");
}
