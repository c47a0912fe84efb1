//! Upstream failures: down → 502, slow → 504, dead peers leave the rotation, readiness.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::*;

#[tokio::test]
async fn upstream_down_is_a_502_with_a_reason() {
    let dead = dead_addr();
    let gw = Cfg::new(&dead).start(&[("site.toml", SITE_RULES)]);
    let c = client();
    for path in ["/", "/public/x", "/unmatched"] {
        let r = get(&c, &gw.url(path)).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json"))
        );
        assert_eq!(r.json()["error"], "upstream_unavailable", "{path}");
    }
    // Priced paths are still challenged locally; blocked ones still refused.
    assert_eq!(get(&c, &gw.url("/api/weather")).await.status, 402);
    assert_eq!(get(&c, &gw.url("/admin")).await.status, 403);
    // The gateway keeps serving on the same connection pool.
    assert_eq!(get(&c, &gw.url("/")).await.status, 502);
    let m = gw.metrics().await;
    assert!(
        m.lines().any(|l| l.starts_with("x402_requests_total")
            && l.contains("decision=\"failed\"")
            && l.contains("status=\"5xx\"")),
        "{m}"
    );
}

#[tokio::test]
async fn slow_upstream_is_a_504_with_a_reason() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr)
        .read_timeout_ms(300)
        .start(&[("site.toml", SITE_RULES)]);
    let c = client();
    let start = Instant::now();
    let r = get(&c, &gw.url("/slow/3000")).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "the timeout did not cut the wait: {:?}",
        start.elapsed()
    );
    // A fast request after that is fine.
    let r = get(&c, &gw.url("/slow/10")).await;
    assert_eq!(r.status, 200);
}

async fn readyz(gw: &Gateway) -> (u16, Value) {
    let r = get(&client(), &gw.admin_url("/readyz")).await;
    (r.status, r.json())
}

fn healthy(report: &Value, upstream: &str) -> u64 {
    report["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == upstream))
        .and_then(|u| u["healthy"].as_u64())
        .unwrap_or(u64::MAX)
}

#[tokio::test]
async fn dead_health_checked_peer_leaves_the_rotation() {
    let o1 = Origin::start("o1");
    let o2 = Origin::start("o2");
    let gw = Cfg::new(&o1.addr)
        .peers(&[&o1.addr, &o2.addr])
        .upstream(
            r#"
[upstreams.origin.health_check]
kind = "tcp"
interval_ms = 100
"#,
        )
        .start(&[("site.toml", FREE_RULES)]);
    let c = client();

    // Both peers serve, round-robin.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = get(&c, &gw.url("/who")).await;
        assert_eq!(r.status, 200);
        seen.insert(r.json()["origin"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (status, report) = readyz(&gw).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["ready"], true);
    assert_eq!(healthy(&report, "origin"), 2, "{report}");
    assert_eq!(report["upstreams"][0]["peers"], 2);

    // o2 dies; the health check notices.
    kill(Pid::from_raw(o2.pid() as i32), Signal::SIGKILL).expect("kill o2");
    eventually("o2 marked unhealthy", Duration::from_secs(10), || async {
        healthy(&readyz(&gw).await.1, "origin") == 1
    })
    .await;
    let (status, report) = readyz(&gw).await;
    assert_eq!(status, 200, "one healthy peer is enough: {report}");
    assert!(
        gw.metrics()
            .await
            .contains("x402_upstream_healthy_peers{upstream=\"origin\"} 1")
    );

    // Every request now succeeds on o1.
    let before = o1.requests().await;
    for n in 0..20 {
        let r = get(&c, &gw.url("/who")).await;
        assert_eq!(r.status, 200, "request {n}: {}", r.text());
        assert_eq!(r.json()["origin"], "o1");
    }
    assert_eq!(o1.requests().await, before + 20);

    // o1 dies too: not ready, and requests fail fast with a reason.
    kill(Pid::from_raw(o1.pid() as i32), Signal::SIGKILL).expect("kill o1");
    eventually("readyz 503", Duration::from_secs(10), || async {
        readyz(&gw).await.0 == 503
    })
    .await;
    let (_, report) = readyz(&gw).await;
    assert_eq!(report["ready"], false);
    assert_eq!(healthy(&report, "origin"), 0);
    let r = get(&c, &gw.url("/who")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "no_healthy_upstream");
    // The admin surface keeps answering.
    assert_eq!(get(&c, &gw.admin_url("/healthz")).await.status, 200);
}
