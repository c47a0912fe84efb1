//! The admin listener: /metrics, /healthz, /readyz, /config (secrets redacted).

use super::*;

/// The value of the first series of `name` whose labels include every `label="value"` given.
fn series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_by_rule_decision_and_status() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", SITE_RULES)]);
    let c = client();
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/api/weather")).await.status, 402);
    }
    assert_eq!(get(&c, &gw.url("/")).await.status, 200);
    assert_eq!(get(&c, &gw.url("/public/a")).await.status, 200);
    assert_eq!(get(&c, &gw.url("/nothing/matches")).await.status, 200);
    assert_eq!(get(&c, &gw.url("/admin/x")).await.status, 403);
    assert_eq!(get(&c, &gw.url("/public/%zz")).await.status, 400);

    let m = gw.metrics().await;
    let req = |rule: &str, decision: &str, status: &str| {
        series(
            &m,
            "x402_requests_total",
            &[("rule", rule), ("decision", decision), ("status", status)],
        )
    };
    assert_eq!(req("weather", "challenged", "4xx"), Some(3.0), "{m}");
    assert_eq!(req("home", "free", "2xx"), Some(1.0), "{m}");
    assert_eq!(req("public", "free", "2xx"), Some(1.0), "{m}");
    assert_eq!(req("-", "unmatched", "2xx"), Some(1.0), "{m}");
    assert_eq!(req("admin", "blocked", "4xx"), Some(1.0), "{m}");
    assert_eq!(req("-", "local", "4xx"), Some(1.0), "{m}");
    assert_eq!(series(&m, "x402_config_generation", &[]), Some(1.0), "{m}");
    assert_eq!(
        series(
            &m,
            "x402_upstream_response_seconds_count",
            &[("upstream", "origin")]
        ),
        Some(3.0),
        "{m}"
    );
    assert!(
        m.contains("# TYPE x402_upstream_response_seconds histogram"),
        "{m}"
    );
    assert!(
        series(
            &m,
            "x402_upstream_response_seconds_bucket",
            &[("upstream", "origin"), ("le", "+Inf")]
        ) == Some(3.0),
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            "x402_local_replies_total",
            &[("reason", "payment_required")]
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        series(
            &m,
            "x402_local_replies_total",
            &[("reason", "blocked_by_rule")]
        ),
        Some(1.0),
        "{m}"
    );
    // Every request above has ended; the build and the last load are named.
    assert_eq!(series(&m, "x402_requests_in_flight", &[]), Some(0.0), "{m}");
    assert_eq!(
        series(
            &m,
            "x402_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series(&m, "x402_config_last_reload_success", &[]),
        Some(1.0)
    );
    let loaded =
        series(&m, "x402_config_last_reload_success_timestamp_seconds", &[]).expect("timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(loaded <= now && loaded > now - 600.0, "{loaded} {now}");
}

/// A request the origin is still answering is in flight; once it ends it is not.
#[tokio::test]
async fn requests_in_flight_are_counted_while_they_last() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", FREE_RULES)]);
    let url = gw.url("/slow/1500");
    let slow = tokio::spawn(async move { client().get(url).send().await });
    eventually("one request in flight", Duration::from_secs(5), || async {
        series(&gw.metrics_now().await, "x402_requests_in_flight", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(slow.await.expect("join").expect("slow").status(), 200);
    eventually("none in flight", Duration::from_secs(5), || async {
        series(&gw.metrics_now().await, "x402_requests_in_flight", &[]) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn health_readiness_and_config_views() {
    let origin = Origin::start("o1");
    let secret = "tok-3f9a-SECRET-VALUE";
    let cfg = Cfg::new(&origin.addr).extra(
        r#"
[[facilitators]]
name = "private"
url = "http://127.0.0.1:1/facilitator"
networks = ["base-sepolia"]
timeout_ms = 500
headers = { Authorization = "Bearer ${X402_TEST_FACILITATOR_TOKEN}", X-Plain = "not-a-var" }
"#,
    );
    // Only free rules: readiness then depends on the upstreams alone.
    let gw = Gateway::start_with_env(
        &cfg.render(),
        &[("site.toml", FREE_RULES)],
        &[("X402_TEST_FACILITATOR_TOKEN", secret)],
    );
    let c = client();

    let r = get(&c, &gw.admin_url("/healthz")).await;
    assert_eq!(r.status, 200);

    let r = get(&c, &gw.admin_url("/readyz")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["ready"], true);
    assert_eq!(v["generation"], 1);
    assert_eq!(v["upstreams"][0]["name"], "origin");
    assert_eq!(v["upstreams"][0]["healthy"], 1);
    assert_eq!(v["upstreams"][0]["peers"], 1);
    assert_eq!(v["ledger"], serde_json::json!({"ok": true, "errors": 0}));

    let r = get(&c, &gw.admin_url("/config")).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        !text.contains(secret),
        "the secret leaked into /config: {text}"
    );
    let v = r.json();
    assert_eq!(v["generation"], 1);
    let hash = v["content_hash"].as_str().expect("content_hash");
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hash}"
    );
    let fac = &v["facilitators"][0];
    assert_eq!(fac["name"], "private");
    assert_eq!(fac["headers"]["Authorization"], "<redacted>", "{fac}");
    assert!(
        v["rules"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["id"] == "admin" && r["action"] == "block")),
        "{v}"
    );
    assert_eq!(v["upstreams"][0]["name"], "origin");

    let r = get(&c, &gw.admin_url("/nope")).await;
    assert_eq!(r.status, 404);
    // The admin listener is not the proxy: its paths are not forwarded.
    assert_eq!(origin.requests().await, 0);

    // The secret is sent where it belongs only; the logs never show it.
    assert!(
        !gw.log_flushed().await.contains(secret),
        "the secret leaked into the log"
    );
}

#[tokio::test]
async fn several_listen_addresses_serve_the_same_rules() {
    let origin = Origin::start("o1");
    let cfg = Cfg::new(&origin.addr).render().replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"127.0.0.1:0\"]",
    );
    let gw = Gateway::start(&cfg, &[("site.toml", SITE_RULES)]);
    let ready: Value =
        serde_json::from_str(&std::fs::read_to_string(gw.path("ready.json")).expect("ready file"))
            .expect("json");
    let listen: Vec<&str> = ready["listen"]
        .as_array()
        .expect("listen")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(listen.len(), 2, "{ready}");
    assert_ne!(listen[0], listen[1]);
    let c = client();
    for addr in listen {
        assert_eq!(
            get(&c, &format!("http://{addr}/api/weather")).await.status,
            402
        );
        assert_eq!(
            get(&c, &format!("http://{addr}/public/x")).await.status,
            200
        );
    }
    assert_eq!(origin.requests().await, 2);
}

#[tokio::test]
async fn admin_token_guards_everything_but_the_probes() {
    let origin = Origin::start("o1");
    let cfg = config(&origin.addr, "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "[admin]\nlisten = \"127.0.0.1:0\"\nauth_token = \"${X402_TEST_ADMIN_TOKEN}\"\n",
    );
    assert!(
        cfg.contains("auth_token"),
        "admin section not found in the test config"
    );
    let gw = Gateway::start_with_env(
        &cfg,
        &[("site.toml", SITE_RULES)],
        &[("X402_TEST_ADMIN_TOKEN", "s3cret-admin-token")],
    );
    let c = client();
    for path in ["/healthz", "/readyz"] {
        let r = c.get(gw.admin_url(path)).send().await.expect("probe");
        assert_ne!(r.status(), 401, "{path} is a probe and stays open");
    }
    for (path, post) in [
        ("/metrics", false),
        ("/config", false),
        ("/passes/revoke", true),
    ] {
        let req = |token: Option<&str>| {
            let mut r = if post {
                c.post(gw.admin_url(path)).body(r#"{"id":"p1"}"#)
            } else {
                c.get(gw.admin_url(path))
            };
            if let Some(t) = token {
                r = r.header("authorization", format!("Bearer {t}"));
            }
            r.send()
        };
        let none = req(None).await.expect("send");
        assert_eq!(none.status(), 401, "{path} without a token");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let body: Value = none.json().await.expect("json");
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(
            req(Some("wrong")).await.expect("send").status(),
            401,
            "{path} wrong token"
        );
        assert_eq!(
            req(Some("s3cret-admin-token-"))
                .await
                .expect("send")
                .status(),
            401,
            "{path} token with a suffix"
        );
        let ok = req(Some("s3cret-admin-token")).await.expect("send");
        assert_ne!(ok.status(), 401, "{path} with the token");
        assert!(ok.status().as_u16() < 500, "{path}: {}", ok.status());
    }
    // The token itself never shows in /config or the log.
    let view = c
        .get(gw.admin_url("/config"))
        .header("authorization", "Bearer s3cret-admin-token")
        .send()
        .await
        .expect("config")
        .text()
        .await
        .expect("text");
    assert!(!view.contains("s3cret-admin-token"));
    assert!(!gw.log_flushed().await.contains("s3cret-admin-token"));
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules dir");
    let cfg = config("127.0.0.1:9", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "[admin]\nlisten = \"0.0.0.0:0\"\n",
    );
    std::fs::write(dir.path().join("gateway.toml"), &cfg).expect("write");
    let path = dir.path().join("gateway.toml");
    let (code, out, err) = gateway_cli(&["check", "-c", path.to_str().expect("utf-8")], &[]);
    assert_eq!(code, 1, "{out}{err}");
    let line = cfg
        .lines()
        .position(|l| l.contains("0.0.0.0:0"))
        .expect("line")
        + 1;
    let want = format!(
        "gateway.toml:{line}:10: admin.listen: an admin listener off loopback needs `auth_token`"
    );
    assert!(
        format!("{out}{err}").contains(&want),
        "want {want}\n{out}{err}"
    );
}

/// Behind a trusted proxy the access log names the address it forwarded for; a peer that is
/// not trusted is the client, whatever its headers say.
#[tokio::test]
async fn the_client_behind_a_trusted_proxy_is_the_one_it_forwarded_for() {
    let origin = Origin::start("o1");
    let trusted = config(&origin.addr, "").replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
    );
    let plain = config(&origin.addr, "");
    for (cfg, want) in [
        (trusted, "client=203.0.113.7 "),
        (plain, "client=127.0.0.1:"),
    ] {
        let gw = Gateway::start(&cfg, &[("site.toml", FREE_RULES)]);
        let r = client()
            .get(gw.url("/public/who"))
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.1.2.3")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 200);
        eventually("the access log line", Duration::from_secs(5), || {
            let log = gw.log_text();
            let want = want.to_owned();
            async move {
                log.lines()
                    .find(|l| l.contains("path=\"/public/who\""))
                    .is_some_and(|l| {
                        assert!(l.contains(&want), "{want} in {l}");
                        true
                    })
            }
        })
        .await;
    }
}

/// `${VAR}` and `${VAR:-default}` work in any string field of `gateway.toml` and the rule
/// files; a secret field is expanded once (a `$` in its value stays), and an unset variable
/// is reported at its place.
#[tokio::test]
async fn any_string_field_takes_environment_variables() {
    let origin = Origin::start("o1");
    let pay_to = "0x1111111111111111111111111111111111111111";
    let cfg = config("${X402_TEST_ORIGIN}", "")
        .replace(PAY_TO, "${X402_TEST_PAY_TO}")
        .replace(
            "[admin]\nlisten = \"127.0.0.1:0\"\n",
            "[admin]\nlisten = \"${X402_TEST_ADMIN_LISTEN:-127.0.0.1:0}\"\nauth_token = \"${X402_TEST_ADMIN_TOKEN}\"\n",
        );
    let rules = r#"
[[rule]]
id = "weather"
path = "${X402_TEST_PATH}"
price = "${X402_TEST_PRICE:-$0.05}"
description = "Weather for ${X402_TEST_CITY}, $$5 a month elsewhere"
"#;
    // A token with `$` signs: expanded again it would lose one or fail.
    let token = "tok$${X402_TEST_CITY}$$";
    let env = [
        ("X402_TEST_ORIGIN", origin.addr.as_str()),
        ("X402_TEST_PAY_TO", pay_to),
        ("X402_TEST_ADMIN_TOKEN", token),
        ("X402_TEST_PATH", "/api/weather"),
        ("X402_TEST_CITY", "Paris"),
    ];
    let gw = Gateway::start_with_env(&cfg, &[("site.toml", rules)], &env);
    let c = client();
    let r = get(&c, &gw.url("/api/weather")).await;
    assert_eq!(r.status, 402);
    let pr = r.payment_required();
    assert_eq!(pr["accepts"][0]["payTo"], pay_to);
    assert_eq!(
        pr["accepts"][0]["amount"], "50000",
        "the default price applies"
    );
    assert_eq!(
        pr["resource"]["description"],
        "Weather for Paris, $5 a month elsewhere"
    );
    assert_eq!(
        get(&c, &gw.url("/other")).await.status,
        200,
        "origin from ${{…}}"
    );
    let with = |t: &str| {
        c.get(gw.admin_url("/config"))
            .header("authorization", format!("Bearer {t}"))
            .send()
    };
    assert_eq!(with(token).await.expect("config").status(), 200);
    assert_eq!(with("tok$Paris$").await.expect("config").status(), 401);
    drop(gw);

    // Unset variables are reported where they are used, all at once.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules dir");
    std::fs::write(dir.path().join("gateway.toml"), &cfg).expect("write");
    std::fs::write(dir.path().join("rules/site.toml"), rules).expect("write");
    let path = dir.path().join("gateway.toml");
    let (code, _, err) = gateway_cli(
        &["check", "-c", path.to_str().expect("utf-8")],
        &[("X402_TEST_ADMIN_TOKEN", "x"), ("X402_TEST_CITY", "Paris")],
    );
    assert_eq!(code, 1, "{err}");
    for want in [
        "upstreams.origin.peers: environment variable `X402_TEST_ORIGIN` is not set",
        "payment.pay_to: environment variable `X402_TEST_PAY_TO` is not set",
        "site.toml:4:8: rule.path: environment variable `X402_TEST_PATH` is not set",
    ] {
        assert!(err.contains(want), "{want} not in:\n{err}");
    }
}

/// Every request gets an id, generated unless a trusted proxy sent a sane one; the origin, the
/// access log and the client (on proxied and local answers alike) see the same id, and the
/// client's W3C trace context reaches the origin unchanged.
#[tokio::test]
async fn request_ids_reach_the_origin_the_log_and_the_client() {
    let origin = Origin::start("o1");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let c = client();
    let id_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .expect("an x-request-id on every answer")
    };
    let generated = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());

    // The peer is not a trusted proxy: its id is replaced.
    let gw = Gateway::start(&config(&origin.addr, ""), &[("site.toml", SITE_RULES)]);
    let r = c
        .get(gw.url("/public/a"))
        .header("x-request-id", "client-chosen")
        .header("traceparent", tp)
        .header("tracestate", "vendor=1")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let id = id_of(&r);
    assert!(generated(&id), "{id}");
    let body: Value = r.json().await.expect("origin echo");
    assert_eq!(body["headers"]["x-request-id"], id.as_str(), "{body}");
    assert_eq!(body["headers"]["traceparent"], tp);
    assert_eq!(body["headers"]["tracestate"], "vendor=1");
    let r = c.get(gw.url("/api/weather")).send().await.expect("get");
    assert_eq!(r.status(), 402);
    let local = id_of(&r);
    assert!(generated(&local) && local != id, "{local}");
    let r = c.get(gw.url("/admin/x")).send().await.expect("get");
    assert_eq!(r.status(), 403);
    assert!(generated(&id_of(&r)));
    let log_has = |gw: &Gateway, id: &str| {
        gw.log_text()
            .lines()
            .any(|l| l.contains("access") && l.contains(id))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !(log_has(&gw, &id) && log_has(&gw, &local)) {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(gw);

    // Behind a trusted proxy its id is kept, unless it is not a sane one.
    let cfg = config(&origin.addr, "").replace(
        "threads = 1\n",
        "threads = 1\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    );
    let gw = Gateway::start(&cfg, &[("site.toml", SITE_RULES)]);
    let r = c
        .get(gw.url("/public/a"))
        .header("x-request-id", "lb-7f3a:1")
        .send()
        .await
        .expect("get");
    assert_eq!(id_of(&r), "lb-7f3a:1");
    let body: Value = r.json().await.expect("origin echo");
    assert_eq!(body["headers"]["x-request-id"], "lb-7f3a:1");
    let r = c
        .get(gw.url("/public/a"))
        .header("x-request-id", "two words")
        .send()
        .await
        .expect("get");
    assert!(generated(&id_of(&r)));
    // A malformed traceparent is not the gateway's to fix: it reaches the origin as sent, and
    // is not passed to facilitators.
    let r = c
        .get(gw.url("/public/a"))
        .header("traceparent", "garbage")
        .send()
        .await
        .expect("get");
    let body: Value = r.json().await.expect("origin echo");
    assert_eq!(body["headers"]["traceparent"], "garbage");
}
