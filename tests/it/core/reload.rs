//! Hot reload: file watch and SIGHUP, invalid edits kept out, start-only settings refused,
//! and rules rewritten under load without a failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::*;

fn rules(price: &str) -> String {
    format!(
        r#"[[rule]]
id = "public"
prefix = "/public/"
action = "free"

[[rule]]
id = "weather"
path = "/api/weather"
price = "{price}"
"#
    )
}

async fn price(gw: &Gateway) -> Option<String> {
    get(&client(), &gw.url("/api/weather")).await.price()
}

async fn reloads(gw: &Gateway, outcome: &str) -> f64 {
    gw.metric(&format!(
        "x402_config_reloads_total{{outcome=\"{outcome}\"}}"
    ))
    .await
}

#[tokio::test]
async fn rules_file_edit_is_picked_up_by_the_watcher() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", &rules("$0.01"))]);
    assert_eq!(price(&gw).await.as_deref(), Some("10000"));
    let before = gw.config_view().await;
    assert_eq!(before["generation"], 1);

    // A request in flight across the swap keeps the generation it started with.
    let url = gw.url("/slow/700");
    let slow = tokio::spawn(async move { client().get(url).send().await });
    eventually(
        "the slow request at the origin",
        Duration::from_secs(5),
        || async { origin.requests().await >= 1 },
    )
    .await;
    gw.write("rules/site.toml", &rules("$0.02"));
    gw.wait_generation(2).await;
    assert_eq!(price(&gw).await.as_deref(), Some("20000"));
    let r = slow.await.expect("join").expect("slow request");
    assert_eq!(r.status(), 200);
    eventually(
        "the slow request's access log line",
        Duration::from_secs(5),
        || {
            let log = gw.log_text();
            let line = log
                .lines()
                .find(|l| l.contains("path=\"/slow/700\""))
                .map(str::to_owned);
            async move {
                line.is_some_and(|l| {
                    assert!(l.contains("generation=1"), "{l}");
                    true
                })
            }
        },
    )
    .await;
    let after = gw.config_view().await;
    assert_ne!(after["content_hash"], before["content_hash"]);
    assert_eq!(gw.metric("x402_config_generation").await, 2.0);
    assert!(reloads(&gw, "ok").await >= 1.0);

    // A new rules file is picked up too.
    gw.write(
        "rules/zz-more.toml",
        "[[rule]]\nid = \"more\"\npath = \"/more\"\nprice = \"$0.5\"\n",
    );
    gw.wait_generation(3).await;
    let r = get(&client(), &gw.url("/more")).await;
    assert_eq!(r.price().as_deref(), Some("500000"));
    assert_eq!(origin.requests().await, 1, "only the slow request");
}

#[tokio::test]
async fn sighup_reloads() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr)
        .reload("watch = false")
        .start(&[("site.toml", &rules("$0.01"))]);
    gw.write("rules/site.toml", &rules("$0.03"));
    // Without the watcher nothing changes until the signal.
    assert_eq!(price(&gw).await.as_deref(), Some("10000"));
    assert_eq!(gw.generation().await, 1);
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    gw.wait_generation(2).await;
    assert_eq!(price(&gw).await.as_deref(), Some("30000"));
    // A SIGHUP with nothing changed keeps the generation.
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    eventually("an unchanged reload", Duration::from_secs(10), || async {
        reloads(&gw, "unchanged").await >= 1.0
    })
    .await;
    assert_eq!(gw.generation().await, 2);
}

#[tokio::test]
async fn invalid_edit_keeps_the_old_config_and_is_counted() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", &rules("$0.01"))]);
    let c = client();
    let hash = gw.config_view().await["content_hash"].clone();

    let bad = rules("$0.0000001");
    gw.write("rules/site.toml", &bad);
    eventually(
        "the invalid reload to be counted",
        Duration::from_secs(10),
        || async { reloads(&gw, "invalid").await >= 1.0 },
    )
    .await;
    let view = gw.config_view().await;
    assert_eq!(view["generation"], 1);
    assert_eq!(view["content_hash"], hash);
    assert_eq!(gw.metric("x402_config_last_reload_success").await, 0.0);
    assert_eq!(price(&gw).await.as_deref(), Some("10000"));
    assert_eq!(get(&c, &gw.url("/public/x")).await.status, 200);
    // The log names the problem with its location.
    let site = gw.path("rules/site.toml");
    let expected = format!(
        "{}:{}: rule.price",
        site.display(),
        loc(&bad, "\"$0.0000001\"")
    );
    eventually("the problem in the log", Duration::from_secs(5), || {
        let found = gw.log_text().contains(&expected);
        async move { found }
    })
    .await;

    // Fixing the file applies the fix.
    gw.write("rules/site.toml", &rules("$0.04"));
    gw.wait_generation(2).await;
    assert_eq!(price(&gw).await.as_deref(), Some("40000"));
    assert_eq!(gw.metric("x402_config_last_reload_success").await, 1.0);
}

#[tokio::test]
async fn start_only_settings_are_refused_by_name() {
    let origin = Origin::start("o1");
    let cfg = Cfg::new(&origin.addr);
    let text = cfg.render();
    let gw = cfg.start(&[("site.toml", &rules("$0.01"))]);
    let c = client();

    let edits = [
        ("server.threads", text.replace("threads = 1", "threads = 2")),
        (
            "server.listen",
            text.replace(
                "listen = [\"127.0.0.1:0\"]",
                "listen = [\"127.0.0.1:0\", \"127.0.0.1:0\"]",
            ),
        ),
        (
            "admin.listen",
            text.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.2:0\""),
        ),
    ];
    for (n, (setting, edited)) in edits.iter().enumerate() {
        assert_ne!(edited, &text, "{setting}: the edit changed nothing");
        gw.write("gateway.toml", edited);
        let want = (n + 1) as f64;
        let named = format!("settings={setting}");
        eventually(
            &format!("a refused reload naming {setting}"),
            Duration::from_secs(10),
            || {
                let found = gw.log_text().contains(&named);
                async move { found }
            },
        )
        .await;
        assert!(reloads(&gw, "refused").await >= want);
        assert_eq!(gw.generation().await, 1);
        assert_eq!(price(&gw).await.as_deref(), Some("10000"));
        assert_eq!(get(&c, &gw.url("/public/x")).await.status, 200);
        // Put the original back (an unchanged reload) before the next edit.
        gw.write("gateway.toml", &text);
        eventually("the restore", Duration::from_secs(10), || async {
            reloads(&gw, "unchanged").await >= want
        })
        .await;
    }
    // A live-reloadable change in gateway.toml still applies.
    gw.write(
        "gateway.toml",
        &text.replace(
            "networks = [\"base-sepolia\"]",
            "networks = [\"base-sepolia\", \"base\"]",
        ),
    );
    gw.wait_generation(2).await;
    let r = get(&c, &gw.url("/api/weather")).await;
    let pr = r.payment_required();
    assert_eq!(pr["accepts"].as_array().map(Vec::len), Some(2));
    assert_eq!(pr["accepts"][1]["network"], "eip155:8453");
}

/// Rules are rewritten 50 times while clients loop over priced and free paths: no request
/// fails, every price a client sees is one that was configured, prices only move forward,
/// and the last one is what the gateway ends up charging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing() {
    let origin = Origin::start("o1");
    let gw = Arc::new(
        Cfg::new(&origin.addr)
            .reload("")
            .start(&[("site.toml", &rules("$0.001000"))]),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for k in 0..3 {
        let (gw, stop, ok) = (gw.clone(), stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut failures = Vec::new();
            let mut last_price = 0u64;
            let mut prices = std::collections::BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                // Priced (answered locally), free (proxied), and slow enough to be in
                // flight across swaps.
                let (path, want) = match k {
                    0 => ("/api/weather", 402),
                    1 => ("/public/x", 200),
                    _ => ("/slow/5", 200),
                };
                match c.get(gw.url(path)).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let header = r
                            .headers()
                            .get("payment-required")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        match r.bytes().await {
                            Err(e) => failures.push(format!("{path}: body: {e}")),
                            Ok(_) if status != want => {
                                failures.push(format!("{path}: status {status}"))
                            }
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if let Some(h) = header {
                                    let p: u64 = decode_header(&h)["accepts"][0]["amount"]
                                        .as_str()
                                        .and_then(|a| a.parse().ok())
                                        .unwrap_or(0);
                                    if !(1000..=1050).contains(&p) {
                                        failures.push(format!("unexpected price {p}"));
                                    }
                                    if p < last_price {
                                        failures
                                            .push(format!("price went back {last_price} → {p}"));
                                    }
                                    last_price = p;
                                    prices.insert(p);
                                }
                            }
                        }
                    }
                    Err(e) => failures.push(format!("{path}: {e:?}")),
                }
            }
            (failures, prices)
        }));
    }

    for i in 1..=50u64 {
        gw.write("rules/site.toml", &rules(&format!("$0.00{:04}", 1000 + i)));
        gw.wait_generation(i + 1).await;
    }
    // Let the clients see the final generation, then stop them.
    let served = ok.load(Ordering::Relaxed);
    eventually(
        "more requests after the last swap",
        Duration::from_secs(10),
        || {
            let n = ok.load(Ordering::Relaxed);
            async move { n >= served + 30 }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut all_prices = std::collections::BTreeSet::new();
    for c in clients {
        let (failures, prices) = c.await.expect("client task");
        assert!(
            failures.is_empty(),
            "{} failures: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        all_prices.extend(prices);
    }
    assert_eq!(price(&gw).await.as_deref(), Some("1050"));
    assert!(all_prices.contains(&1050), "the last price was never seen");
    assert!(
        all_prices.len() >= 5,
        "clients saw only {} distinct prices: {all_prices:?}",
        all_prices.len()
    );
    assert_eq!(gw.generation().await, 51);
    let m = gw.metrics().await;
    assert!(!m.contains("status=\"5xx\""), "{m}");
    eprintln!(
        "reload under load: {} requests, {} distinct prices seen",
        ok.load(Ordering::Relaxed),
        all_prices.len()
    );
}

/// Writes a new version of a Kubernetes volume at `dir` the way the kubelet's atomic writer
/// does: the files into a fresh `..<timestamp>` folder, a `..data_tmp` link to it renamed over
/// `..data`, the visible names as links into `..data`, then the old folder removed.
fn kubelet_write(dir: &std::path::Path, version: u32, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let stamp = format!("..2026_12_06_10_00_00.{version:09}");
    let fresh = dir.join(&stamp);
    for (name, body) in files {
        let path = fresh.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    symlink(&stamp, dir.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("rename over ..data");
    for (name, _) in files {
        let top = name.split('/').next().expect("name");
        let visible = dir.join(top);
        if std::fs::symlink_metadata(&visible).is_err() {
            symlink(format!("..data/{top}"), &visible).expect("visible link");
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).expect("remove the old version");
    }
}

#[tokio::test]
async fn a_kubernetes_configmap_update_is_picked_up() {
    let origin = Origin::start("o1");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(&origin.addr, "");
    kubelet_write(
        dir.path(),
        1,
        &[
            ("gateway.toml", &config),
            ("rules/site.toml", &rules("$0.01")),
        ],
    );
    let gw = Gateway::start_in(dir);
    assert_eq!(price(&gw).await.as_deref(), Some("10000"));

    // Each update swaps `..data`; the files the gateway reads are links that never change,
    // and the rules folder it watched is removed with the old version.
    for (version, (price_text, atomic)) in [(2, ("$0.02", "20000")), (3, ("$0.03", "30000"))] {
        kubelet_write(
            gw.dir.path(),
            version,
            &[
                ("gateway.toml", &config),
                ("rules/site.toml", &rules(price_text)),
            ],
        );
        gw.wait_generation(u64::from(version)).await;
        assert_eq!(price(&gw).await.as_deref(), Some(atomic));
    }
    assert_eq!(reloads(&gw, "invalid").await, 0.0);
}

#[tokio::test]
async fn rules_rewritten_without_pause_are_still_reloaded_while_it_lasts() {
    let origin = Origin::start("o1");
    let config = config(&origin.addr, "")
        .replace("debounce_ms = 50", "debounce_ms = 300\nmax_wait_ms = 400");
    let gw = Gateway::start(&config, &[("site.toml", &rules("$0.01"))]);
    // A new price every 50 ms for 3 s: never 300 ms of quiet.
    let started = std::time::Instant::now();
    let mut n = 0u32;
    let mut generations_while_writing = 0.0;
    while started.elapsed() < Duration::from_secs(3) {
        n += 1;
        gw.write("rules/site.toml", &rules(&format!("$0.{n:02}")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        generations_while_writing = gw.metric("x402_config_generation").await;
    }
    assert!(
        generations_while_writing >= 4.0,
        "reloaded {generations_while_writing} times while the rules kept changing"
    );
    // The last edit applies once the writes stop.
    let last = format!("{}", n * 10_000);
    eventually("the last price", Duration::from_secs(5), || {
        let gw = &gw;
        let last = last.clone();
        async move { price(gw).await.as_deref() == Some(last.as_str()) }
    })
    .await;
}
