//! The shipped dashboard and alert rules against a real Prometheus (the distribution's
//! package): it scrapes a gateway on Redis that served free, 402, paid, failed-over and
//! refused-settlement traffic and reloaded its rules, and every query of
//! `deploy/grafana/x402-gateway.json` returns data; `promtool` checks and unit-tests
//! `deploy/prometheus/alerts.yml`, and Prometheus evaluates every rule without error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::facilitators::Two;
use crate::support::redis::Redis;
use crate::support::*;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

/// A Prometheus process scraping the given targets every second, with the shipped alert rules.
struct Prometheus {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: x402-gateway\n    static_configs:\n      - targets: [{}]\n",
            deploy("prometheus/alerts.yml").display(),
            targets
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        // Prometheus cannot report a port it picked itself: take one the OS just handed out.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (the distribution's package) must be installed");
        let mut p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        wait_for("prometheus ready", Duration::from_secs(30), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited: {status}");
            }
            ready(port).then_some(())
        });
        p
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url =
            reqwest::Url::parse_with_params(&format!("{}{path}", self.url), query).expect("url");
        let r = client().get(url).send().await.expect("prometheus api");
        r.json().await.expect("json")
    }

    /// An instant query's samples (an error fails the test: the query does not parse).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let v = self.get("/api/v1/query", &[("query", expr)]).await;
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// Whether `GET /-/ready` on the port answers 200.
fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every query of the dashboard, with Grafana's variables replaced as Grafana would for a
/// recent range on every replica.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/x402-gateway.json")).expect("dashboard");
    let d: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "10m")
                .replace("$instance", ".*")
                .replace("$job", ".*");
            assert!(!expr.contains('$'), "an unknown variable in {expr}");
            out.push((p["title"].as_str().expect("title").to_owned(), expr));
        }
    }
    out
}

/// Whether a sample holds a number (not NaN: 0/0 or a quantile of nothing).
fn has_number(samples: &[Value]) -> bool {
    samples.iter().any(|s| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| !v.is_nan())
    })
}

/// The `x402_…` and `process_…` metric names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        if (rest.starts_with("x402_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_owned());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let dir = deploy("prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool (the distribution's prometheus package) must be installed");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let redis = Redis::start();
    let t = Two::start_with(
        None,
        "failure_threshold = 2\nmax_eject_ms = 60000",
        &format!(
            "\n[state]\nbackend = \"redis\"\nurl = \"{}\"\nreplica_id = \"a\"\n",
            redis.url()
        ),
    );
    let admin =
        t.gw.admin_url("")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
    let prom = Prometheus::start(std::slice::from_ref(&admin));
    let (payer, _) = t.payer();
    let pay_to = t.dev.info["payTo"].as_str().expect("payTo").to_owned();
    let (payer_before, merchant_before) = (t.balance(&payer).await, t.balance(&pay_to).await);

    // The names the dashboard and the alerts read are all the gateway's: registered in
    // src/metrics.rs (a family shows in /metrics once it has a series), or the process
    // collector's.
    let exposition = t.gw.metrics().await;
    let registered =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
            .expect("metrics.rs");
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("alerts");
    let queries = dashboard_queries();
    for name in queries
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .chain(metric_names(&alerts))
    {
        let base = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(&name);
        let known = if base.starts_with("process_") {
            exposition.contains(&format!("# TYPE {base} "))
        } else {
            registered.contains(&format!("\"{base}\""))
        };
        assert!(known, "{name} is not a metric the gateway exports");
    }

    // Traffic: free (unmatched), 402s, paid, a failover after `a` fails twice (ejected), a
    // settlement the facilitator refuses, and a reload.
    for _ in 0..5 {
        let r = client().get(t.gw.url("/free")).send().await.expect("free");
        assert_eq!(r.status(), 200);
    }
    // A settlement the facilitator refuses: nothing served, nothing moved.
    t.configure_a(json!({"settleOverride": {"status": 200, "body": {"success": false, "errorReason": "invalid_exact_evm_transaction_failed", "transaction": "", "network": "eip155:31337"}, "times": 1}})).await;
    let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
    assert_eq!(r.status(), 402, "{}", r.text().await.unwrap_or_default());
    assert_eq!(t.balance(&payer).await, payer_before);
    // `a` fails `/verify` twice: those calls fail over to `b`, and `a` is ejected. Its
    // `/supported` fails meanwhile, so no probe brings it back before the gauge is read.
    let mut settled = 0u128;
    t.configure_a(json!({
        "verifyOverride": {"status": 500, "body": "down", "times": 2},
        "supportedOverride": {"status": 500, "body": "down"},
    }))
    .await;
    for i in 0..4 {
        let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        settled += 10_000;
        if i == 1 {
            // The two failures, and no request since that could try `a` again.
            assert_eq!(
                t.gw.metric(r#"x402_facilitator_healthy{facilitator="a"}"#)
                    .await,
                0.0
            );
            t.configure_a(json!({"supportedOverride": null})).await;
        }
    }
    t.gw.write(
        "rules/rules.toml",
        &format!(
            "{}\n[[rule]]\nid = \"added\"\npath = \"/added\"\nprice = \"$0.02\"\n",
            std::fs::read_to_string(t.gw.path("rules/rules.toml")).expect("rules")
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while t.gw.metric("x402_config_generation").await < 2.0 {
        assert!(Instant::now() < deadline, "the rules were not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every panel's query returns a number while the traffic is in its window.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut missing: Vec<(String, String)>;
    loop {
        // Keep traffic flowing, as on a live site: a rate over series that appeared at their
        // final value is 0, and a quantile of nothing is NaN.
        let r = client()
            .get(t.gw.url("/api/weather"))
            .send()
            .await
            .expect("402");
        assert_eq!(r.status(), 402);
        let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
        if r.status() == 200 {
            settled += 10_000;
        } else {
            // A loaded machine may make the state store or a facilitator miss its deadline:
            // the gateway then answers 503 and charges nothing (the balances below prove it).
            let status = r.status().as_u16();
            let required = r
                .headers()
                .get("payment-required")
                .and_then(|v| v.to_str().ok())
                .map(decode_header)
                .unwrap_or_default();
            assert!(
                status == 503
                    && ["state_unavailable", "facilitator_unavailable"]
                        .contains(&required["error"].as_str().unwrap_or("")),
                "{status}: {required}"
            );
        }
        missing = Vec::new();
        for (title, expr) in &queries {
            if !has_number(&prom.query(expr).await) {
                missing.push((title.clone(), expr.clone()));
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        missing.is_empty(),
        "dashboard queries without data: {missing:#?}"
    );

    // Key figures agree with the chain and the ledger.
    assert_eq!(t.balance(&payer).await, payer_before - settled);
    assert_eq!(t.balance(&pay_to).await, merchant_before + settled);
    // The dollars Prometheus scraped reach what moved on chain (once the last scrape is in).
    let want = settled as f64 / 1e6;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let usd = prom.query("sum(x402_revenue_usd_total)").await;
        let usd: f64 = usd[0]["value"][1]
            .as_str()
            .expect("value")
            .parse()
            .expect("number");
        if (usd - want).abs() < 1e-9 {
            break;
        }
        assert!(
            usd < want + 1e-9,
            "more revenue than moved on chain: {usd} > {want}"
        );
        assert!(Instant::now() < deadline, "revenue {usd}, on chain {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ledger = std::fs::read_to_string(t.gw.path("receipts.jsonl")).expect("ledger");
    assert_eq!(
        ledger.lines().filter(|l| l.contains("\"settled\"")).count() as u128,
        settled / 10_000
    );

    // Prometheus loaded the shipped rules and evaluates each without error.
    let rules = prom.get("/api/v1/rules", &[]).await;
    let all: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect();
    assert_eq!(
        all.len(),
        alerts.matches("- alert: ").count(),
        "every rule of alerts.yml is loaded: {rules}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rules = prom.get("/api/v1/rules", &[]).await;
        let unhealthy: Vec<String> = rules["data"]["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().expect("rules"))
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if unhealthy.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{unhealthy:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(redis);
}

/// With `[logging] otlp_endpoint`, every request is a span exported to a local OTLP/HTTP
/// receiver: a child of the client's `traceparent` when it sent one (the origin then receives
/// the gateway's span as its parent), with the rule, decision and status; a paid request's
/// `/verify` and `/settle` calls are child spans, and the facilitator receives them as parents.
#[tokio::test]
async fn request_and_facilitator_spans_reach_an_otlp_receiver() {
    use crate::support::otlp::{OtlpReceiver, attribute};
    use crate::support::pay;

    let receiver = OtlpReceiver::start();
    let dev = NodeProc::start("lib/devnet.mjs", &["--payers", "1"]);
    let origin = Origin::start("traced-origin");
    let fac = dev.info["facilitatorUrl"].as_str().expect("fac").to_owned();
    let cfg = paid_config(&origin.addr, &dev.info, &facilitator_toml("local", &fac, 0, ""), "")
        .replace(
            "[logging]\nlevel = \"info\"\n",
            &format!(
                "[logging]\nlevel = \"info\"\notlp_endpoint = \"{}\"\notlp_service_name = \"shop-gateway\"\n",
                receiver.url
            ),
        );
    assert!(cfg.contains("otlp_endpoint"));
    let gw = Gateway::start(
        &cfg,
        &[(
            "rules.toml",
            "[[rule]]\nid = \"free\"\nprefix = \"/free\"\naction = \"free\"\n\n[[rule]]\nid = \"weather\"\npath = \"/api/weather\"\nprice = \"$0.01\"\n",
        )],
    );
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let r = client()
        .get(gw.url("/free/a"))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .send()
        .await
        .expect("get");
    let request_id = r.headers()["x-request-id"].to_str().expect("id").to_owned();
    let echo: Value = r.json().await.expect("echo");
    let seen = echo["headers"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .to_owned();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts[1], trace, "same trace: {seen}");
    assert_ne!(
        parts[2], parent,
        "the origin's parent is the gateway's span: {seen}"
    );
    let gateway_span = parts[2].to_owned();

    // A paid request, no trace context from the client: a new trace.
    let key = dev.info["payers"][0]["privateKey"].as_str().expect("key");
    let header = pay::fresh_header(&gw, "/api/weather", key).await;
    let r = client()
        .get(gw.url("/api/weather"))
        .header("PAYMENT-SIGNATURE", header)
        .send()
        .await
        .expect("pay");
    assert_eq!(r.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = receiver.spans();
        let calls = spans
            .iter()
            .filter(|s| s["name"] == "facilitator verify" || s["name"] == "facilitator settle")
            .count();
        // The request's own span ends in its logging phase, after the facilitator spans and
        // after the answer: it may leave in a later batch than theirs.
        let paid = spans
            .iter()
            .any(|s| attribute(s, "x402.decision").as_deref() == Some("paid"));
        if calls == 2 && paid && spans.iter().any(|s| s["spanId"] == gateway_span.as_str()) {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans received: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let free = spans
        .iter()
        .find(|s| s["spanId"] == gateway_span.as_str())
        .expect("the free request's span");
    assert_eq!(free["traceId"], trace);
    assert_eq!(free["parentSpanId"], parent);
    assert_eq!(attribute(free, "x402.rule").as_deref(), Some("free"));
    assert_eq!(attribute(free, "x402.decision").as_deref(), Some("free"));
    assert_eq!(
        attribute(free, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attribute(free, "x402.request_id"), Some(request_id));
    assert!(
        free["resource"].to_string().contains("shop-gateway"),
        "service.name: {}",
        free["resource"]
    );

    let paid = spans
        .iter()
        .find(|s| attribute(s, "x402.decision").as_deref() == Some("paid"))
        .expect("the paid request's span");
    assert_ne!(paid["traceId"], trace, "a new trace");
    let calls = facilitator_calls(&fac).await;
    for op in ["verify", "settle"] {
        let call = spans
            .iter()
            .find(|s| s["name"] == format!("facilitator {op}"))
            .expect("a facilitator span");
        assert_eq!(
            call["parentSpanId"], paid["spanId"],
            "{op} under the request"
        );
        assert_eq!(call["traceId"], paid["traceId"]);
        let received = calls
            .iter()
            .find(|e| e["path"] == format!("/{op}"))
            .expect("the facilitator call");
        let tp = received["headers"]["traceparent"]
            .as_str()
            .expect("traceparent");
        assert_eq!(
            tp.split('-').nth(2),
            call["spanId"].as_str(),
            "the facilitator's parent is the call span: {tp}"
        );
    }
}
