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
    // `a` fails `/verify` twice: those calls fail over to `b`, and `a` is ejected.
    let mut settled = 0u128;
    t.configure_a(json!({"verifyOverride": {"status": 500, "body": "down", "times": 2}}))
        .await;
    for _ in 0..4 {
        let r = t.pay("/api/weather", &t.header("/api/weather").await).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        settled += 10_000;
    }
    assert_eq!(
        t.gw.metric(r#"x402_facilitator_healthy{facilitator="a"}"#)
            .await,
        0.0
    );
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
        assert_eq!(r.status(), 200);
        settled += 10_000;
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
    assert_eq!(all.len(), 11, "{rules}");
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
