//! The soak: the real gateway under mixed free, unpaid, paid, admin and reload traffic for a
//! configurable time, checked for flat memory, no unexpected status, and a ledger that equals
//! the token transfers on chain.
//!
//! The duration is `X402_SOAK_SECONDS` (default 20, so `cargo test` stays cheap). The documented
//! ten-minute soak is `scripts/soak.sh`, which runs
//!
//! ```text
//! X402_SOAK_SECONDS=600 cargo test --locked --test it soak -- --nocapture --test-threads 1
//! ```
//!
//! Setup: a devnet (anvil and our EIP-3009 token, no node facilitator), the demo origin, and
//! the gateway binary settling through its built-in settler (`kind = "local"`), so every paid
//! request sends a real `transferWithAuthorization` to the chain. Payments are signed in this
//! process, each with a fresh nonce.
//!
//! Traffic, concurrently until the deadline:
//! - free: keep-alive GET/POST to free and unmatched paths (echo, streamed and fixed bodies);
//!   expected 200 with the origin's exact body;
//! - unpaid: GETs to priced rules; expected 402 with a valid `PAYMENT-REQUIRED` whose amount is
//!   the price of a configuration generation live during the request;
//! - paid: `PAYMENT-SIGNATURE` for the stable `weather` rule; expected 200 and a successful
//!   `PAYMENT-RESPONSE` naming a transaction;
//! - reloads: the rules file rewritten (another rule's price changed, a rule added or removed),
//!   the new generation awaited and probed, then traffic goes on;
//! - admin: `/metrics` and `/healthz`.
//!
//! Checked at the end: gateway RSS after the warm-up (a quarter of the run, at most 150 s,
//! which covers the 120 s verify cache and the replay guard's lifetime for the 60 s
//! authorizations used here) against RSS at the end; zero unexpected statuses; the origin saw
//! exactly the requests that should reach it; the ledger's `settled` entries, the receipts the
//! clients got, the `Transfer` logs to `pay_to` and the `AuthorizationUsed` logs all name the
//! same transactions and nonces, one each, and the balance deltas match.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{B256, keccak256};
use alloy::signers::local::PrivateKeySigner;
use serde_json::{Value, json};

use crate::support::chain::{authorization_used, balance, hex_u64, rpc};
use crate::support::pay::{self, Auth};
use crate::support::*;

/// The `weather` price ($0.01 of a 6-decimal token); no reload changes it.
const PRICE: u128 = 10_000;
/// Authorizations are valid this long (and the priced rules offer this `maxTimeoutSeconds`).
const VALIDITY_SECS: u64 = 60;
const PAYERS: usize = 8;
const FREE_WORKERS: usize = 8;
const UNPAID_WORKERS: usize = 2;
/// Pause between reloads (pacing, not synchronization: each reload is awaited by generation).
const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Allowed RSS growth between the end of the warm-up and the end: 10 %, plus this much.
/// The gateway's RSS is a few tens of MiB, where allocator noise alone (a new arena, a
/// fragmented page, the high-water mark of a burst of concurrent bodies) moves it by a few
/// MiB; a leak grows without bound and shows up as a trend in the samples printed below.
const RSS_SLACK_KIB: u64 = 4 * 1024;

fn soak_duration() -> Duration {
    let secs = std::env::var("X402_SOAK_SECONDS")
        .ok()
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .expect("X402_SOAK_SECONDS must be a whole number of seconds")
        })
        .unwrap_or(20);
    Duration::from_secs(secs.max(4))
}

/// Price of the `news` rule after reload `k` (0 is the initial file), in token units.
fn news_price(k: usize) -> u128 {
    (k as u128 % 4 + 1) * 1_000
}

/// The rules file of reload `k`: `news` changes price every time, `extra` comes and goes.
fn rules(k: usize) -> String {
    let extra = if k % 2 == 1 {
        "\n[[rule]]\nid = \"extra\"\npath = \"/api/extra\"\nprice = \"$0.02\"\n"
    } else {
        ""
    };
    format!(
        r#"# soak reload {k}
[[rule]]
id = "pages"
prefix = "/page/"
action = "free"

[[rule]]
id = "weather"
path = "/api/weather"
price = "$0.01"
max_timeout_seconds = {VALIDITY_SECS}
description = "Weather"
mime_type = "application/json"

[[rule]]
id = "news"
path = "/api/news"
price = {{ amount = "{news}", asset = "tusd" }}
max_timeout_seconds = {VALIDITY_SECS}
{extra}"#,
        news = news_price(k),
    )
}

fn gateway_config(origin: &str, dev: &Value) -> String {
    // Quiet access log: a soak writes millions of requests.
    let facilitators = format!(
        "{}\n[reload]\ndebounce_ms = 50\n",
        local_settler_toml(dev, 5000, 30000)
    );
    let config = paid_config(origin, dev, &facilitators, "").replace(
        "[logging]\nlevel = \"info\"\n",
        "[logging]\nlevel = \"info\"\naccess_log = false\n",
    );
    assert!(
        config.contains("access_log = false"),
        "no [logging] section to quiet"
    );
    config
}

/// A base64 JSON header (`PAYMENT-REQUIRED`, `PAYMENT-RESPONSE`), or `None`.
fn try_decode(v: &str) -> Option<Value> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One successful payment, as the client saw it.
#[derive(Debug, Clone)]
struct Paid {
    payer: usize,
    nonce: B256,
    transaction: String,
}

/// What the traffic tasks share.
#[derive(Default)]
struct Tally {
    free: AtomicU64,
    unpaid: AtomicU64,
    paid: AtomicU64,
    admin: AtomicU64,
    reloads: AtomicU64,
    /// Probes after a reload that reached the origin (the `extra` rule absent).
    probes_forwarded: AtomicU64,
    unexpected: AtomicU64,
    first_unexpected: Mutex<Vec<String>>,
    payments: Mutex<Vec<Paid>>,
    /// Payments answered with anything but a successful receipt: (payer, nonce).
    refused: Mutex<Vec<(usize, B256)>>,
    /// `news` prices in the order they were written, and how many of them are confirmed live.
    news_written: Mutex<Vec<u128>>,
    news_confirmed: AtomicUsize,
}

impl Tally {
    fn unexpected(&self, what: String) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_unexpected.lock().expect("lock");
        if first.len() < 20 {
            first.push(what);
        }
    }

    /// An answer with a status its class never gets: counted with the start of its body.
    async fn wrong_status(&self, what: &str, r: reqwest::Response) {
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        self.unexpected(format!("{what}: status {status}: {body:.200}"));
    }
}

/// Everything a traffic task needs.
struct Ctx {
    gw_url: String,
    admin_url: String,
    network: String,
    asset: String,
    pay_to: String,
    deadline: Instant,
    tally: Tally,
}

impl Ctx {
    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Checks a 402's `PAYMENT-REQUIRED`, returning what is wrong with it.
    fn check_402(&self, r: &reqwest::Response, amounts: &[u128]) -> Result<(), String> {
        let header = r
            .headers()
            .get("payment-required")
            .ok_or("no PAYMENT-REQUIRED")?
            .to_str()
            .map_err(|e| e.to_string())?;
        let pr = try_decode(header).ok_or(format!("undecodable PAYMENT-REQUIRED {header}"))?;
        let a = &pr["accepts"][0];
        let amount: u128 = a["amount"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let ok = pr["x402Version"] == 2
            && pr["error"] == "payment_required"
            && a["scheme"] == "exact"
            && a["network"] == self.network.as_str()
            && a["asset"].as_str().map(str::to_ascii_lowercase) == Some(self.asset.clone())
            && a["payTo"].as_str().map(str::to_ascii_lowercase) == Some(self.pay_to.clone())
            && amounts.contains(&amount);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "PAYMENT-REQUIRED {pr} (expected amount in {amounts:?})"
            ))
        }
    }
}

/// The expected body of a free request `i`, and the request.
fn free_request(
    http: &reqwest::Client,
    ctx: &Ctx,
    w: usize,
    i: u64,
) -> (reqwest::RequestBuilder, Option<Vec<u8>>) {
    match i % 4 {
        0 => (http.get(format!("{}/page/{w}/{i}?q={i}", ctx.gw_url)), None),
        1 => (
            http.get(format!("{}/bytes/65536", ctx.gw_url)),
            Some((0..65536u64).map(|i| ((i * 31 + 7) % 251) as u8).collect()),
        ),
        2 => {
            let body: Vec<u8> = (0..4096u32).map(|j| (j as u64 + i) as u8).collect();
            (
                http.post(format!("{}/echo", ctx.gw_url))
                    .header("content-type", "application/octet-stream")
                    .body(body.clone()),
                Some(body),
            )
        }
        _ => (
            http.get(format!("{}/fixed/1000", ctx.gw_url)),
            Some(vec![b'x'; 1000]),
        ),
    }
}

async fn free_worker(ctx: Arc<Ctx>, w: usize) {
    let http = client();
    let mut i = 0u64;
    while ctx.running() {
        i += 1;
        let (req, expected) = free_request(&http, &ctx, w, i);
        let what = format!("free #{i} of worker {w}");
        match req.send().await {
            Ok(r) if r.status() == 200 => match r.bytes().await {
                Ok(body)
                    if expected.as_ref().is_none_or(|e| body[..] == e[..]) && !body.is_empty() =>
                {
                    ctx.tally.free.fetch_add(1, Ordering::Relaxed);
                }
                Ok(body) => ctx
                    .tally
                    .unexpected(format!("{what}: wrong body ({} bytes)", body.len())),
                Err(e) => ctx.tally.unexpected(format!("{what}: body error {e}")),
            },
            Ok(r) => ctx.tally.wrong_status(&what, r).await,
            Err(e) => ctx.tally.unexpected(format!("{what}: {e}")),
        }
    }
}

async fn unpaid_worker(ctx: Arc<Ctx>, w: usize) {
    let http = client();
    let mut i = 0u64;
    while ctx.running() {
        i += 1;
        let news = i.is_multiple_of(2);
        let path = if news { "/api/news" } else { "/api/weather" };
        // The generations this request can see: from the last confirmed one when it is sent
        // to the last one written when its answer is in.
        let lo = ctx.tally.news_confirmed.load(Ordering::Acquire);
        let res = http
            .get(format!("{}{path}?w={w}&i={i}", ctx.gw_url))
            .send()
            .await;
        let amounts: Vec<u128> = if news {
            let written = ctx.tally.news_written.lock().expect("lock");
            written[lo.min(written.len() - 1)..].to_vec()
        } else {
            vec![PRICE]
        };
        let what = format!("unpaid {path} #{i} of worker {w}");
        match res {
            Ok(r) if r.status() == 402 => match ctx.check_402(&r, &amounts) {
                Ok(()) => {
                    let _ = r.bytes().await;
                    ctx.tally.unpaid.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => ctx.tally.unexpected(format!("{what}: {e}")),
            },
            Ok(r) => ctx.tally.wrong_status(&what, r).await,
            Err(e) => ctx.tally.unexpected(format!("{what}: {e}")),
        }
    }
}

async fn paid_worker(ctx: Arc<Ctx>, payer: usize, key: PrivateKeySigner, accepted: Value) {
    let http = client();
    let mut i = 0u64;
    while ctx.running() {
        i += 1;
        let now = pay::now();
        let auth = Auth {
            to: ctx.pay_to.clone(),
            value: PRICE,
            valid_after: now - 60,
            valid_before: now + VALIDITY_SECS,
            nonce: pay::random_nonce(),
        };
        let header = pay::v2_header(&accepted, pay::signed_payload(&key, &accepted, &auth));
        let what = format!("paid #{i} of payer {payer} (nonce {:#x})", auth.nonce);
        let res = http
            .get(format!("{}/api/weather?payer={payer}&i={i}", ctx.gw_url))
            .header("PAYMENT-SIGNATURE", header)
            .send()
            .await;
        match res {
            Ok(r) if r.status() == 200 => {
                let receipt = r
                    .headers()
                    .get("payment-response")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| try_decode(v).ok_or(v.to_owned()));
                let body = r.bytes().await;
                match (receipt, body) {
                    (Some(Ok(rc)), Ok(body))
                        if rc["success"] == true
                            && rc["transaction"].as_str().is_some_and(|t| t.len() == 66)
                            && !body.is_empty() =>
                    {
                        ctx.tally.paid.fetch_add(1, Ordering::Relaxed);
                        ctx.tally.payments.lock().expect("lock").push(Paid {
                            payer,
                            nonce: auth.nonce,
                            transaction: rc["transaction"]
                                .as_str()
                                .expect("tx")
                                .to_ascii_lowercase(),
                        });
                    }
                    (rc, body) => {
                        ctx.tally
                            .refused
                            .lock()
                            .expect("lock")
                            .push((payer, auth.nonce));
                        ctx.tally.unexpected(format!(
                            "{what}: 200 with receipt {:?}, body {:?}",
                            rc,
                            body.map(|b| b.len())
                        ))
                    }
                }
            }
            Ok(r) => {
                ctx.tally
                    .refused
                    .lock()
                    .expect("lock")
                    .push((payer, auth.nonce));
                let status = r.status();
                let reason = r
                    .headers()
                    .get("payment-required")
                    .and_then(|v| v.to_str().ok())
                    .and_then(try_decode)
                    .map(|v| v["error"].to_string());
                let body = r.text().await.unwrap_or_default();
                ctx.tally
                    .unexpected(format!("{what}: status {status} ({reason:?}): {body:.200}"));
            }
            Err(e) => {
                ctx.tally
                    .refused
                    .lock()
                    .expect("lock")
                    .push((payer, auth.nonce));
                ctx.tally.unexpected(format!("{what}: {e}"));
            }
        }
    }
}

async fn admin_worker(ctx: Arc<Ctx>) {
    let http = client();
    let mut i = 0u64;
    while ctx.running() {
        i += 1;
        let path = if i.is_multiple_of(2) {
            "/metrics"
        } else {
            "/healthz"
        };
        match http.get(format!("{}{path}", ctx.admin_url)).send().await {
            Ok(r) if r.status() == 200 => match r.bytes().await {
                Ok(_) => {
                    ctx.tally.admin.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => ctx
                    .tally
                    .unexpected(format!("admin {path}: body error {e}")),
            },
            Ok(r) => ctx
                .tally
                .unexpected(format!("admin {path}: status {}", r.status())),
            Err(e) => ctx.tally.unexpected(format!("admin {path}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rewrites the rules file every [`RELOAD_EVERY`], waits for each new generation, and probes
/// the rule that comes and goes.
async fn reloader(ctx: Arc<Ctx>, gw: Arc<Gateway>) {
    let http = client();
    let mut k = 0;
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        if !ctx.running() {
            return;
        }
        k += 1;
        let g = gw.generation().await;
        ctx.tally
            .news_written
            .lock()
            .expect("lock")
            .push(news_price(k));
        gw.write("rules/soak.toml", &rules(k));
        gw.wait_generation(g + 1).await;
        ctx.tally.news_confirmed.store(k, Ordering::Release);
        ctx.tally.reloads.fetch_add(1, Ordering::Relaxed);

        let expected = if k % 2 == 1 { 402 } else { 200 };
        match http.get(format!("{}/api/extra", ctx.gw_url)).send().await {
            Ok(r) if r.status() == expected => {
                if expected == 200 {
                    ctx.tally.probes_forwarded.fetch_add(1, Ordering::Relaxed);
                }
                let _ = r.bytes().await;
            }
            Ok(r) => ctx.tally.unexpected(format!(
                "probe /api/extra after reload {k}: status {} (expected {expected})",
                r.status()
            )),
            Err(e) => ctx
                .tally
                .unexpected(format!("probe /api/extra after reload {k}: {e}")),
        }
    }
}

fn topic_address(addr: &str) -> String {
    format!(
        "0x{:0>64}",
        addr.trim_start_matches("0x").to_ascii_lowercase()
    )
}

/// The logs of `token` with `topics` in blocks `from..=to`, fetched in slices.
async fn logs(rpc_url: &str, token: &str, topics: Value, from: u64, to: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut start = from;
    while start <= to {
        let end = (start + 4_999).min(to);
        let page = rpc(
            rpc_url,
            "eth_getLogs",
            json!([{
                "address": token,
                "fromBlock": format!("{start:#x}"),
                "toBlock": format!("{end:#x}"),
                "topics": topics,
            }]),
        )
        .await;
        out.extend(page.as_array().expect("logs").iter().cloned());
        start = end + 1;
    }
    out
}

/// All ledger lines, rotated files included.
fn ledger(gw: &Gateway) -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(gw.dir.path())
        .expect("gateway dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("receipts.jsonl"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .expect("ledger")
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("ledger line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_mixed_traffic_keeps_memory_flat_and_the_ledger_equal_to_the_chain() {
    let duration = soak_duration();
    let warmup = (duration / 4).min(Duration::from_secs(150));
    let dev = NodeProc::start(
        "lib/devnet.mjs",
        &[
            "--chain-id",
            "31337",
            "--payers",
            &PAYERS.to_string(),
            "--payer-balance",
            "1000000000000",
            "--no-facilitator",
        ],
    );
    let info = dev.info.clone();
    let rpc_url = info["rpcUrl"].as_str().expect("rpc").to_owned();
    let token = info["token"]["address"]
        .as_str()
        .expect("token")
        .to_ascii_lowercase();
    let pay_to = info["payTo"].as_str().expect("payTo").to_ascii_lowercase();
    let network = format!("eip155:{}", info["chainId"].as_u64().expect("chain id"));
    let payers: Vec<(String, PrivateKeySigner)> = (0..PAYERS)
        .map(|i| {
            let p = &info["payers"][i];
            (
                p["address"].as_str().expect("address").to_ascii_lowercase(),
                pay::key(p["privateKey"].as_str().expect("key")),
            )
        })
        .collect();

    let origin = Origin::start("soak-origin");
    let gw = Arc::new(Gateway::start(
        &gateway_config(&origin.addr, &info),
        &[("soak.toml", &rules(0))],
    ));

    // The requirements the paid workers sign for, from a real 402.
    let r = client()
        .get(gw.url("/api/weather"))
        .send()
        .await
        .expect("402");
    assert_eq!(r.status(), 402, "{}", gw.log_text());
    let accepted =
        decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["accepts"][0]
            .clone();
    assert_eq!(accepted["amount"], PRICE.to_string());

    let mut payers_before = Vec::new();
    for (address, _) in &payers {
        payers_before.push(balance(&rpc_url, &token, address).await);
    }
    let merchant_before = balance(&rpc_url, &token, &pay_to).await;
    let block_before = hex_u64(&rpc(&rpc_url, "eth_blockNumber", json!([])).await);
    let origin_before = origin.requests().await;

    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        gw_url: format!("http://{}", gw.addr),
        admin_url: format!("http://{}", gw.admin),
        network: network.clone(),
        asset: token.clone(),
        pay_to: pay_to.clone(),
        deadline: start + duration,
        tally: Tally {
            news_written: Mutex::new(vec![news_price(0)]),
            ..Tally::default()
        },
    });
    let mut tasks = Vec::new();
    for w in 0..FREE_WORKERS {
        tasks.push(tokio::spawn(free_worker(ctx.clone(), w)));
    }
    for w in 0..UNPAID_WORKERS {
        tasks.push(tokio::spawn(unpaid_worker(ctx.clone(), w)));
    }
    for (i, (_, key)) in payers.iter().enumerate() {
        tasks.push(tokio::spawn(paid_worker(
            ctx.clone(),
            i,
            key.clone(),
            accepted.clone(),
        )));
    }
    tasks.push(tokio::spawn(admin_worker(ctx.clone())));
    tasks.push(tokio::spawn(reloader(ctx.clone(), gw.clone())));

    // RSS: sampled every few seconds for the trend; the first sample after the warm-up is the
    // baseline.
    let pid = gw.pid();
    let every = (duration / 20).max(Duration::from_secs(1));
    let mut samples = vec![(0u64, rss_kib(pid))];
    let mut baseline = None;
    while ctx.running() {
        tokio::time::sleep(every.min(ctx.deadline.saturating_duration_since(Instant::now()))).await;
        let t = start.elapsed();
        let rss = rss_kib(pid);
        samples.push((t.as_secs(), rss));
        if baseline.is_none() && t >= warmup {
            baseline = Some((t, rss, ctx.tally.paid.load(Ordering::Relaxed)));
        }
    }
    for t in tasks {
        t.await.expect("traffic task");
    }
    let elapsed = start.elapsed();
    let rss_end = rss_kib(pid);
    let (warm_at, rss_start, _) = baseline.expect("baseline sample");

    let t = &ctx.tally;
    let (free, unpaid, paid, admin, reloads) = (
        t.free.load(Ordering::Relaxed),
        t.unpaid.load(Ordering::Relaxed),
        t.paid.load(Ordering::Relaxed),
        t.admin.load(Ordering::Relaxed),
        t.reloads.load(Ordering::Relaxed),
    );
    let secs = elapsed.as_secs_f64();
    let total = free + unpaid + paid + admin;
    println!(
        "soak: {:.0} s, warm-up {} s, gateway pid {pid}",
        secs,
        warm_at.as_secs()
    );
    println!(
        "soak: free {free} ({:.0}/s), unpaid 402 {unpaid} ({:.0}/s), paid {paid} ({:.1}/s), admin {admin}, reloads {reloads}; total {total} ({:.0} req/s)",
        free as f64 / secs,
        unpaid as f64 / secs,
        paid as f64 / secs,
        total as f64 / secs,
    );
    println!(
        "soak: RSS after warm-up {}, at end {} ({:+.1} %), high-water {}",
        mib(rss_start),
        mib(rss_end),
        (rss_end as f64 / rss_start as f64 - 1.0) * 100.0,
        mib(samples.iter().map(|s| s.1).max().unwrap_or(0).max(rss_end)),
    );
    println!(
        "soak: RSS trend (s: MiB) {}",
        samples
            .iter()
            .map(|(s, k)| format!("{s}:{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" ")
    );

    // No unexpected answer of any kind. A refused payment must not have moved tokens either.
    let refused = t.refused.lock().expect("lock").clone();
    let mut moved = Vec::new();
    for (payer, nonce) in &refused {
        let nonce = format!("{nonce:#x}");
        if authorization_used(&rpc_url, &token, &payers[*payer].0, &nonce).await {
            moved.push(nonce);
        }
    }
    let unexpected = t.unexpected.load(Ordering::Relaxed);
    assert_eq!(
        unexpected,
        0,
        "{unexpected} unexpected answers; the first:\n{}\n{} refused payments, of which {} \
         moved tokens anyway: {moved:?}\ngateway warnings:\n{}",
        t.first_unexpected.lock().expect("lock").join("\n"),
        refused.len(),
        moved.len(),
        gw.log_text()
            .lines()
            .filter(|l| !l.contains(" INFO "))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(free > 0 && unpaid > 0 && paid > 0 && admin > 0 && reloads > 0);

    // Memory stays flat after the warm-up.
    assert!(
        rss_end <= rss_start + rss_start / 10 + RSS_SLACK_KIB,
        "RSS grew from {} to {}",
        mib(rss_start),
        mib(rss_end)
    );

    // The origin saw the free and paid requests and the forwarded probes, nothing unpaid.
    assert_eq!(
        origin.requests().await - origin_before,
        free + paid + t.probes_forwarded.load(Ordering::Relaxed)
    );

    // Ledger == receipts == chain.
    let payments = t.payments.lock().expect("lock").clone();
    assert_eq!(payments.len() as u64, paid);
    let receipt_txs: HashSet<String> = payments.iter().map(|p| p.transaction.clone()).collect();
    assert_eq!(
        receipt_txs.len(),
        payments.len(),
        "a transaction in two receipts"
    );
    let nonces: HashSet<String> = payments.iter().map(|p| format!("{:#x}", p.nonce)).collect();
    assert_eq!(nonces.len(), payments.len());

    let entries = ledger(&gw);
    let events: HashMap<&str, usize> = entries.iter().fold(HashMap::new(), |mut m, e| {
        *m.entry(e["event"].as_str().unwrap_or("?")).or_default() += 1;
        m
    });
    assert_eq!(
        events.get("settled").copied(),
        Some(payments.len()),
        "ledger events {events:?}"
    );
    assert_eq!(events.len(), 1, "ledger events {events:?}");
    let mut ledger_txs = HashSet::new();
    let mut ledger_total = 0u128;
    for e in &entries {
        assert_eq!(e["rule"], "weather", "{e}");
        assert_eq!(e["network"], network.as_str(), "{e}");
        let tx = e["transaction"].as_str().expect("tx").to_ascii_lowercase();
        assert!(
            ledger_txs.insert(tx),
            "a transaction twice in the ledger: {e}"
        );
        ledger_total += e["amount"]
            .as_str()
            .expect("amount")
            .parse::<u128>()
            .expect("amount");
    }
    assert_eq!(
        ledger_txs, receipt_txs,
        "ledger and receipts name different transactions"
    );
    assert_eq!(ledger_total, PRICE * paid as u128);

    let block_after = hex_u64(&rpc(&rpc_url, "eth_blockNumber", json!([])).await);
    let transfer = format!("{:#x}", keccak256("Transfer(address,address,uint256)"));
    let transfers = logs(
        &rpc_url,
        &token,
        json!([transfer, null, topic_address(&pay_to)]),
        block_before + 1,
        block_after,
    )
    .await;
    let chain_txs: HashSet<String> = transfers
        .iter()
        .map(|l| {
            l["transactionHash"]
                .as_str()
                .expect("tx")
                .to_ascii_lowercase()
        })
        .collect();
    assert_eq!(transfers.len(), payments.len(), "Transfer logs to pay_to");
    assert_eq!(
        chain_txs, ledger_txs,
        "chain and ledger name different transactions"
    );
    let chain_total: u128 = transfers
        .iter()
        .map(|l| {
            u128::from_str_radix(
                l["data"].as_str().expect("data").trim_start_matches("0x"),
                16,
            )
            .expect("value")
        })
        .sum();
    assert_eq!(chain_total, ledger_total);
    let used = logs(
        &rpc_url,
        &token,
        json!([format!(
            "{:#x}",
            keccak256("AuthorizationUsed(address,bytes32)")
        )]),
        block_before + 1,
        block_after,
    )
    .await;
    let used_nonces: HashSet<String> = used
        .iter()
        .map(|l| l["topics"][2].as_str().expect("nonce").to_ascii_lowercase())
        .collect();
    assert_eq!(used.len(), payments.len());
    assert_eq!(
        used_nonces, nonces,
        "nonces used on chain differ from the ones paid"
    );

    assert_eq!(
        balance(&rpc_url, &token, &pay_to).await,
        merchant_before + ledger_total
    );
    for (i, (address, _)) in payers.iter().enumerate() {
        let n = payments.iter().filter(|p| p.payer == i).count() as u128;
        assert_eq!(
            balance(&rpc_url, &token, address).await,
            payers_before[i] - n * PRICE,
            "payer {i}"
        );
    }
    println!(
        "soak: ledger {} settled entries, {} token units; chain {} transfers to pay_to, {} nonces used",
        entries.len(),
        ledger_total,
        transfers.len(),
        used_nonces.len()
    );
    drop(dev);
}
