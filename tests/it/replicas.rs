//! Replicas sharing one state store: three gateway processes with the same configuration and
//! `[state] backend = "redis"` in front of one origin, a real Redis (or a three-master Redis
//! Cluster), and for payments a real chain and facilitator. One payment sent to every replica
//! at once is served and settled once; a pass quota and a revocation hold across replicas;
//! when Redis goes away priced requests are refused without charging while free ones flow, and
//! the replicas recover on their own; a Redis that lost everything does not let a settled
//! payment pay twice.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use x402_gateway::access::pass::{self, Algorithm, Claims, KeyMaterial, PassKeys, ScopeKind};
use x402_gateway::router::Methods;

use crate::support::chain::{balance, transfers_from};
use crate::support::pay::{self, Auth};
use crate::support::redis::{Redis, RedisCluster};
use crate::support::*;

/// The price of `/api/weather`, in the token's atomic units.
const PRICE: u128 = 10_000;

/// The HMAC key the replicas sign and check passes with (from `${TEST_PASS_KEY}`).
const PASS_KEY: &str = "replica-pass-key-0123456789abcdef-012345";

const RULES: &str = r#"
[[rule]]
id = "weather"
path = "/api/weather"
price = "$0.01"

[[rule]]
id = "articles"
prefix = "/articles/"
price = "$0.01"
pass = { ttl = "1h", scope = "prefix", prefix = "/articles/", max_requests = 10 }

[[rule]]
id = "free"
prefix = "/free/"
action = "free"
"#;

const PASSES: &str = r#"
[passes]
signing_key = "k1"

[[passes.keys]]
id = "k1"
secret = "${TEST_PASS_KEY}"
"#;

/// A `[state]` section on Redis: `urls[0]` as `url`, the rest as `cluster`.
fn state(urls: &[String], replica: &str) -> String {
    let (first, rest) = urls.split_first().expect("a url");
    let cluster = if rest.is_empty() {
        String::new()
    } else {
        format!(
            "cluster = [{}]\n",
            rest.iter()
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!(
        "\n[state]\nbackend = \"redis\"\nurl = \"{first}\"\n{cluster}replica_id = \"{replica}\"\n"
    )
}

const REPLICAS: [&str; 3] = ["a", "b", "c"];

/// Starts one gateway per replica id with `config(replica id)`, and waits until each one's
/// state store answers.
async fn replicas(config: impl Fn(&str) -> String, env: &[(&str, &str)]) -> Vec<Gateway> {
    let gws: Vec<Gateway> = REPLICAS
        .iter()
        .map(|r| Gateway::start_with_env(&config(r), &[("rules.toml", RULES)], env))
        .collect();
    for gw in &gws {
        wait_state(gw, true).await;
    }
    gws
}

/// Three replicas on `redis` selling passes (no payments), in front of `origin`.
async fn pass_replicas(redis: &Redis, origin: &Origin) -> Vec<Gateway> {
    replicas(
        |r| {
            config(
                &origin.addr,
                &format!("{}{PASSES}", state(&[redis.url()], r)),
            )
        },
        &[("TEST_PASS_KEY", PASS_KEY)],
    )
    .await
}

/// `/readyz`: its status and report.
async fn readyz(gw: &Gateway) -> (u16, Value) {
    let r = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    let status = r.status().as_u16();
    (status, r.json().await.expect("readyz json"))
}

/// Polls `/readyz` until its `state.ok` is `ok`; returns the report.
async fn wait_state(gw: &Gateway, ok: bool) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, report) = readyz(gw).await;
        if report["state"]["ok"] == ok {
            return (status, report);
        }
        assert!(
            Instant::now() < deadline,
            "state.ok never became {ok}: {report}\nlog:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One answer, with the reason of a gateway refusal.
#[derive(Debug)]
struct Got {
    status: u16,
    reason: String,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    let mut rb = client().get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.expect("send");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.expect("body");
    let reason = match headers
        .get("payment-required")
        .and_then(|v| v.to_str().ok())
    {
        Some(pr) => decode_header(pr)["error"].as_str().unwrap_or("").to_owned(),
        None => serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default(),
    };
    Got {
        status,
        reason,
        headers,
        body,
    }
}

/// Sends every `(url, header value)` at once (all spawned before any is awaited), each with
/// the header `name`; the answers in the same order.
async fn all_at_once(name: &'static str, requests: Vec<(String, String)>) -> Vec<Got> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(url, value)| tokio::spawn(async move { get(&url, &[(name, &value)]).await }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

/// How many answers had each `status reason`.
fn tally(got: &[Got]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for g in got {
        *t.entry(format!("{} {}", g.status, g.reason)).or_insert(0) += 1;
    }
    t
}

/// A devnet (chain, token, facilitator), one origin and three replicas on one Redis (or
/// cluster).
struct Paid {
    dev: NodeProc,
    origin: Origin,
    gws: Vec<Gateway>,
}

impl Paid {
    /// `state_for(replica id)` is the `[state]` section; `env` is every replica's environment.
    async fn start(state_for: impl Fn(&str) -> String, env: &[(&str, &str)]) -> Paid {
        let dev = NodeProc::start("lib/devnet.mjs", &["--chain-id", "31337", "--payers", "1"]);
        let origin = Origin::start("replicas-origin");
        let fac = dev.info["facilitatorUrl"].as_str().expect("fac").to_owned();
        let mut env = env.to_vec();
        env.push(("TEST_PASS_KEY", PASS_KEY));
        let gws = replicas(
            |r| {
                paid_config(
                    &origin.addr,
                    &dev.info,
                    &facilitator_toml("devnet", &fac, 0, ""),
                    &format!("{}{PASSES}", state_for(r)),
                )
            },
            &env,
        )
        .await;
        Paid { dev, origin, gws }
    }

    fn rpc(&self) -> &str {
        self.dev.info["rpcUrl"].as_str().expect("rpc")
    }
    fn token(&self) -> &str {
        self.dev.info["token"]["address"].as_str().expect("token")
    }
    fn payer(&self) -> &str {
        self.dev.info["payers"][0]["address"]
            .as_str()
            .expect("payer")
    }
    fn pay_to(&self) -> &str {
        self.dev.info["payTo"].as_str().expect("payTo")
    }

    /// The payer's and the merchant's balances and the payer's transfers on chain.
    async fn money(&self) -> (u128, u128, usize) {
        (
            balance(self.rpc(), self.token(), self.payer()).await,
            balance(self.rpc(), self.token(), self.pay_to()).await,
            transfers_from(self.rpc(), self.token(), self.payer()).await,
        )
    }

    /// A fresh payment for `/api/weather`, signed by the payer, as a `PAYMENT-SIGNATURE`.
    async fn payment(&self) -> String {
        let r = get(&self.gws[0].url("/api/weather"), &[]).await;
        assert_eq!(r.status, 402, "{}", r.body);
        let accepted =
            decode_header(r.header("payment-required").expect("PAYMENT-REQUIRED"))["accepts"][0]
                .clone();
        let key = pay::key(
            self.dev.info["payers"][0]["privateKey"]
                .as_str()
                .expect("key"),
        );
        pay::v2_header(
            &accepted,
            pay::signed_payload(&key, &accepted, &Auth::for_requirements(&accepted)),
        )
    }

    fn fac(&self) -> &str {
        self.dev.info["facilitatorUrl"].as_str().expect("fac")
    }

    /// Merges `patch` into the facilitator's fault injection.
    async fn fault(&self, patch: Value) {
        let r = client()
            .post(format!("{}/__config", self.fac()))
            .json(&patch)
            .send()
            .await
            .expect("facilitator config");
        assert_eq!(r.status().as_u16(), 200, "{patch}");
    }

    /// `/settle` calls the facilitator received.
    async fn settles(&self) -> usize {
        calls_on(self.fac(), "/settle").await
    }

    /// Every replica's ledger lines.
    fn ledger(&self) -> Vec<Value> {
        self.gws
            .iter()
            .flat_map(|gw| {
                std::fs::read_to_string(gw.path("receipts.jsonl"))
                    .unwrap_or_default()
                    .lines()
                    .map(|l| serde_json::from_str::<Value>(l).expect("ledger line"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn settled_lines(&self) -> usize {
        self.ledger()
            .iter()
            .filter(|e| e["event"] == "settled")
            .count()
    }

    fn logs(&self) -> String {
        self.gws
            .iter()
            .zip(REPLICAS)
            .map(|(gw, r)| format!("--- replica {r}:\n{}", gw.log_text()))
            .collect()
    }
}

/// One signed payment sent as twelve simultaneous copies, four to each replica: one is served
/// and settled, the others are refused as in flight or used, and the chain moved the price
/// once.
async fn one_payment_twelve_copies(p: &Paid) {
    let header = p.payment().await;
    let (payer_before, merchant_before, transfers_before) = p.money().await;
    let served_before = p.origin.requests().await;
    let got = all_at_once(
        "payment-signature",
        (0..12)
            .map(|i| (p.gws[i % 3].url("/api/weather"), header.clone()))
            .collect(),
    )
    .await;
    let t = tally(&got);
    eprintln!("twelve copies of one payment: {t:?}");
    let ok: Vec<&Got> = got.iter().filter(|g| g.status < 300).collect();
    assert_eq!(
        ok.len(),
        1,
        "exactly one copy is served: {t:?}\n{}",
        p.logs()
    );
    assert_eq!(ok[0].status, 200, "{t:?}");
    let receipt = decode_header(ok[0].header("payment-response").expect("receipt"));
    assert_eq!(receipt["success"], true, "{receipt}");
    for g in got.iter().filter(|g| g.status >= 300) {
        assert_eq!(g.status, 402, "{t:?}");
        assert!(
            ["payment_in_flight", "payment_already_used"].contains(&g.reason.as_str()),
            "a copy refused for another reason: {t:?}"
        );
    }
    assert_eq!(
        p.origin.requests().await - served_before,
        1,
        "the origin served the payment once"
    );
    let (payer_after, merchant_after, transfers_after) = p.money().await;
    assert_eq!(payer_after, payer_before - PRICE, "the payer paid once");
    assert_eq!(
        merchant_after,
        merchant_before + PRICE,
        "the merchant got it once"
    );
    assert_eq!(
        transfers_after - transfers_before,
        1,
        "one transfer on chain"
    );
    assert_eq!(p.settles().await, 1, "one /settle call in all");
    assert_eq!(
        p.settled_lines(),
        1,
        "one settled line in the three ledgers"
    );
}

/// A pass signed with the replicas' key for `/articles/` (prefix scope).
fn mint_pass(id: &str, max_requests: u32) -> String {
    let keys = PassKeys::new(
        Algorithm::HmacSha256,
        vec![("k1".into(), KeyMaterial::Hmac(PASS_KEY.as_bytes().to_vec()))],
        Some("k1"),
        "x402_pass".into(),
        HashSet::new(),
    )
    .expect("keys");
    let now = pay::now();
    pass::mint(
        &keys,
        &Claims {
            id: id.into(),
            rule: "articles".into(),
            host: "127.0.0.1".into(),
            scope: ScopeKind::Prefix,
            path: "/articles".into(),
            methods: Methods::bit("GET"),
            iat: now - 10,
            exp: now + 600,
            max_requests,
            payer: "0x0000000000000000000000000000000000000001".into(),
            paid: None,
        },
    )
    .expect("mint")
}

/// A pass good for ten requests, used thirty times at once, round-robin over the replicas:
/// ten are admitted (each told a different number of requests left), twenty are refused.
async fn pass_quota_shared(gws: &[Gateway], origin: &Origin, id: &str) {
    let token = mint_pass(id, 10);
    let served_before = origin.requests().await;
    let got = all_at_once(
        "x402-pass",
        (0..30)
            .map(|i| (gws[i % 3].url(&format!("/articles/{i}")), token.clone()))
            .collect(),
    )
    .await;
    let t = tally(&got);
    let admitted: Vec<&Got> = got.iter().filter(|g| g.status < 300).collect();
    assert_eq!(admitted.len(), 10, "{t:?}");
    assert!(admitted.iter().all(|g| g.status == 200), "{t:?}");
    let mut left: Vec<u32> = admitted
        .iter()
        .map(|g| {
            g.header("x402-pass-remaining")
                .expect("X402-Pass-Remaining")
                .parse()
                .expect("a number")
        })
        .collect();
    left.sort_unstable();
    assert_eq!(
        left,
        (0..10).collect::<Vec<u32>>(),
        "each admitted request counted once"
    );
    assert_eq!(
        t.get("402 pass_exhausted"),
        Some(&20),
        "the other twenty are refused as exhausted: {t:?}"
    );
    assert_eq!(origin.requests().await - served_before, 10);
    // Exhausted everywhere afterwards.
    for gw in gws {
        let r = get(&gw.url("/articles/after"), &[("x402-pass", &token)]).await;
        assert_eq!((r.status, r.reason.as_str()), (402, "pass_exhausted"));
    }
}

#[tokio::test]
async fn one_payment_sent_to_three_replicas_at_once_is_served_and_settled_once() {
    let redis = Redis::start();
    let p = Paid::start(|r| state(&[redis.url()], r), &[]).await;
    one_payment_twelve_copies(&p).await;
    // The store holds the payment as settled: a copy sent later to any replica is refused
    // without a facilitator call.
    let header = p.payment().await;
    let waits_before = store_round_trips(&p.gws[2]).await;
    let first = get(
        &p.gws[2].url("/api/weather"),
        &[("payment-signature", &header)],
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    // Two round trips to the store: one before the facilitator is asked (reservation, record
    // of the settlement in flight, verify cache) and one after the ledger line.
    assert_eq!(
        store_round_trips(&p.gws[2]).await - waits_before,
        2.0,
        "{}",
        p.gws[2].metrics().await
    );
    let settles = p.settles().await;
    for gw in &p.gws {
        let before = store_round_trips(gw).await;
        let r = get(&gw.url("/api/weather"), &[("payment-signature", &header)]).await;
        assert_eq!((r.status, r.reason.as_str()), (402, "payment_already_used"));
        assert_eq!(
            store_round_trips(gw).await - before,
            1.0,
            "a copy costs one"
        );
    }
    assert_eq!(p.settles().await, settles);
    let keys = redis.command(&["DBSIZE"]).expect("DBSIZE");
    assert_ne!(keys, "0", "the replicas keep their state in Redis");
}

/// Store operations requests at `gw` waited for so far (one round trip each), leaving out the
/// background ones (copies of the mirrored sets, sweeps of pending settlements, leases, the
/// channel claimer's listings, readiness pings).
async fn store_round_trips(gw: &Gateway) -> f64 {
    gw.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("x402_state_seconds_count{"))
        .filter(|l| {
            ![
                "revocations",
                "limits",
                "pending",
                "lease",
                "channel_ids",
                "channel_changes",
                "ping",
            ]
            .iter()
            .any(|op| l.contains(&format!("op=\"{op}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_pass_quota_is_counted_once_across_replicas() {
    let redis = Redis::start();
    let origin = Origin::start("replicas-pass-origin");
    let gws = pass_replicas(&redis, &origin).await;
    pass_quota_shared(&gws, &origin, "quota-1").await;
    assert_eq!(
        redis
            .command(&["GET", "x402:q:quota-1"])
            .expect("GET quota"),
        "10",
        "the count lives in Redis"
    );
}

/// A large quota is counted in blocks each replica takes from the store: still never more
/// than `max_requests` in total, and a block left unused goes back to the store.
#[tokio::test]
async fn a_large_pass_quota_counted_in_blocks_admits_exactly_its_maximum() {
    let redis = Redis::start();
    let origin = Origin::start("replicas-blocks-origin");
    let gws = pass_replicas(&redis, &origin).await;
    // 640 requests: blocks of up to ten (1/64 of what is left), one at a time near the end.
    let token = mint_pass("blocks", 640);
    let mut admitted = 0;
    for round in 0..30 {
        let got = all_at_once(
            "x402-pass",
            (0..30)
                .map(|i| {
                    let gw = &gws[(i + round) % 3];
                    (gw.url(&format!("/articles/{round}-{i}")), token.clone())
                })
                .collect(),
        )
        .await;
        for g in &got {
            match g.status {
                200 => admitted += 1,
                402 => assert_eq!(g.reason, "pass_exhausted", "{}", g.body),
                other => panic!("unexpected {other}: {}", g.body),
            }
        }
    }
    assert_eq!(admitted, 640, "900 asked, exactly the maximum admitted");
    assert_eq!(
        redis.command(&["GET", "x402:q:blocks"]).expect("GET"),
        "640"
    );

    // A block taken and then left unused goes back: the store counts only what was used.
    let token = mint_pass("returned", 6400);
    for (n, gw) in gws.iter().enumerate() {
        for i in 0..3 {
            let r = get(
                &gw.url(&format!("/articles/r{i}")),
                &[("x402-pass", &token)],
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            if (n, i) == (0, 1) {
                // The first use is taken alone, the second takes a block. Read at once: a
                // block goes back after a second unused.
                let taken: u64 = redis
                    .command(&["GET", "x402:q:returned"])
                    .expect("GET")
                    .parse()
                    .expect("count");
                assert!(taken > 2, "the replica took a block, not one use: {taken}");
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.command(&["GET", "x402:q:returned"]).expect("GET") != "9" {
        assert!(
            Instant::now() < deadline,
            "unused blocks were not given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_pass_revoked_at_one_replica_is_refused_at_the_others_within_a_second() {
    let redis = Redis::start();
    let origin = Origin::start("replicas-revoke-origin");
    let gws = pass_replicas(&redis, &origin).await;
    let token = mint_pass("revoke-me", 0);
    let other = mint_pass("keep-me", 0);
    for gw in &gws {
        let r = get(&gw.url("/articles/x"), &[("x402-pass", &token)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Each replica has loaded its copy of the revocations (a read of the version, then of the
    // set), so what is measured below is the copy's refresh, not a first load.
    const LOADS: &str = r#"x402_state_seconds_count{op="revocations"}"#;
    const LOOKUPS: &str = r#"x402_state_seconds_count{op="revoked"}"#;
    for gw in &gws {
        let deadline = Instant::now() + Duration::from_secs(5);
        while gw.metric(LOADS).await < 2.0 {
            assert!(Instant::now() < deadline, "{}", gw.metrics().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let lookups_before = [gws[1].metric(LOOKUPS).await, gws[2].metric(LOOKUPS).await];

    let started = Instant::now();
    let r = client()
        .post(gws[0].admin_url("/passes/revoke"))
        .json(&json!({"id": "revoke-me"}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.expect("json")["revoked"],
        json!(["revoke-me"])
    );
    // The replica that revoked it knows at once.
    let r = get(&gws[0].url("/articles/x"), &[("x402-pass", &token)]).await;
    assert_eq!((r.status, r.reason.as_str()), (402, "pass_revoked"));

    // The others within a second: poll both, note when each first refuses it.
    let mut refused_after: [Option<Duration>; 2] = [None, None];
    while refused_after.iter().any(Option::is_none) {
        for (i, gw) in gws[1..].iter().enumerate() {
            if refused_after[i].is_some() {
                continue;
            }
            let r = get(&gw.url("/articles/x"), &[("x402-pass", &token)]).await;
            match (r.status, r.reason.as_str()) {
                (402, "pass_revoked") => refused_after[i] = Some(started.elapsed()),
                (200, _) => {}
                other => panic!("replica {}: {other:?} {}", REPLICAS[i + 1], r.body),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the revocation never reached every replica: {refused_after:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let slowest = refused_after
        .iter()
        .flatten()
        .max()
        .copied()
        .expect("times");
    eprintln!("revocation reached the other replicas after {refused_after:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "revocation took {slowest:?} to reach every replica"
    );
    assert_eq!(
        [gws[1].metric(LOOKUPS).await, gws[2].metric(LOOKUPS).await],
        lookups_before,
        "the other replicas learnt it from their refreshed copy, not by asking Redis"
    );
    // It stays revoked everywhere, and only that pass is.
    for gw in &gws {
        let r = get(&gw.url("/articles/y"), &[("x402-pass", &token)]).await;
        assert_eq!((r.status, r.reason.as_str()), (402, "pass_revoked"));
        let r = get(&gw.url("/articles/y"), &[("x402-pass", &other)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// Sends `header: value` to `url` again while the answer is a 503 (a replica still
/// reconnecting), for at most 15 s; the first other answer.
async fn past_503(url: &str, header: &str, value: &str) -> Got {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(url, &[(header, value)]).await;
        if r.status != 503 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn while_redis_is_down_priced_requests_get_503_without_charge_and_recover_after() {
    let mut redis = Redis::start();
    let url = redis.url();
    // The url through `${VAR}`, as deployments write it.
    let p = Paid::start(
        |r| {
            format!(
                "\n[state]\nbackend = \"redis\"\nurl = \"${{X402_TEST_REDIS}}\"\nreplica_id = \"{r}\"\n"
            )
        },
        &[("X402_TEST_REDIS", &url)],
    )
    .await;
    let view = p.gws[1].config_view().await;
    assert_eq!(view["state"]["backend"], "redis", "{}", view["state"]);
    assert_eq!(view["state"]["on_unavailable"], "closed");
    assert_eq!(view["state"]["replica_id"], "b");

    // Working before the outage: a payment, a pass with a quota, a pass without one.
    let before_outage = p.payment().await;
    let r = get(
        &p.gws[0].url("/api/weather"),
        &[("payment-signature", &before_outage)],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, p.logs());
    let counted = mint_pass("outage-counted", 10);
    let unlimited = mint_pass("outage-unlimited", 0);
    for token in [&counted, &unlimited] {
        let r = get(&p.gws[0].url("/articles/a"), &[("x402-pass", token)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    redis.stop();
    let stopped = Instant::now();
    let (payer_before, merchant_before, transfers_before) = p.money().await;
    let settles_before = p.settles().await;
    let served_before = p.origin.requests().await;

    // Priced requests with a valid payment: 503 state_unavailable at every replica.
    let mut during = Vec::new();
    for _ in &p.gws {
        during.push(p.payment().await);
    }
    for (gw, header) in p.gws.iter().zip(&during) {
        let r = get(&gw.url("/api/weather"), &[("payment-signature", header)]).await;
        assert_eq!(
            (r.status, r.reason.as_str()),
            (503, "state_unavailable"),
            "{}",
            r.body
        );
        assert!(
            r.header("retry-after").is_some(),
            "a 503 says when to retry"
        );
        assert!(
            r.header("payment-response").is_none(),
            "nothing was settled"
        );
        // A pass whose quota lives in the store cannot be checked either.
        let r = get(&gw.url("/articles/b"), &[("x402-pass", &counted)]).await;
        assert_eq!(
            (r.status, r.reason.as_str()),
            (503, "state_unavailable"),
            "{}",
            r.body
        );
    }
    assert_eq!(
        p.origin.requests().await,
        served_before,
        "the origin was not reached for them"
    );
    // Free requests flow.
    for gw in &p.gws {
        let r = get(&gw.url("/free/ping"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(p.origin.requests().await, served_before + 3);
    // Every replica reports the store down, and stays ready: its free routes are serving.
    for gw in &p.gws {
        let (status, report) = wait_state(gw, false).await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["ready"], true);
        assert_eq!(report["degraded"], json!(["state"]), "{report}");
        assert_eq!(report["state"]["backend"], "redis");
        assert!(
            report["state"]["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "{report}"
        );
        assert_eq!(gw.metric("x402_state_up").await, 0.0);
        assert!(
            gw.metric(r#"x402_state_errors_total{op="admit"}"#).await >= 1.0,
            "{}",
            gw.metrics().await
        );
    }
    // A pass without a quota is checked against the replica's copy of the revocations, which
    // is trusted for a short while only: then it is refused too.
    for gw in &p.gws {
        let r = loop {
            let r = get(&gw.url("/articles/c"), &[("x402-pass", &unlimited)]).await;
            if r.status != 200 || stopped.elapsed() > Duration::from_secs(10) {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            (r.status, r.reason.as_str()),
            (503, "state_unavailable"),
            "{}",
            r.body
        );
    }
    eprintln!(
        "a pass without a quota was refused {:?} after Redis stopped",
        stopped.elapsed()
    );
    assert_eq!(
        p.money().await,
        (payer_before, merchant_before, transfers_before),
        "nothing was charged"
    );
    assert_eq!(p.settles().await, settles_before, "nothing was settled");

    // Redis back, empty, on the same port: the same gateways take payments and passes again.
    redis.restart();
    let served_before = p.origin.requests().await;
    for (i, gw) in p.gws.iter().enumerate() {
        // The payment refused during the outage was never reserved nor charged: it pays now.
        let r = past_503(&gw.url("/api/weather"), "payment-signature", &during[i]).await;
        assert_eq!(
            r.status,
            200,
            "replica {}: {} {}\n{}",
            REPLICAS[i],
            r.reason,
            r.body,
            p.logs()
        );
        for token in [&counted, &unlimited] {
            let r = past_503(&gw.url("/articles/d"), "x402-pass", token).await;
            assert_eq!(r.status, 200, "{} {}", r.reason, r.body);
        }
        let (status, report) = wait_state(gw, true).await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(gw.metric("x402_state_up").await, 1.0);
        assert!(gw.metric("x402_state_reconnects_total").await >= 2.0);
    }
    assert_eq!(p.origin.requests().await, served_before + 3 * 3);
    let (payer_after, merchant_after, transfers_after) = p.money().await;
    assert_eq!(payer_after, payer_before - 3 * PRICE);
    assert_eq!(merchant_after, merchant_before + 3 * PRICE);
    assert_eq!(transfers_after, transfers_before + 3);
    assert_eq!(p.settled_lines(), 4, "one before the outage, three after");
}

#[tokio::test]
async fn a_redis_restarted_empty_does_not_let_a_settled_payment_pay_again() {
    let mut redis = Redis::start();
    let p = Paid::start(|r| state(&[redis.url()], r), &[]).await;
    let header = p.payment().await;
    let r = get(
        &p.gws[0].url("/api/weather"),
        &[("payment-signature", &header)],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, p.logs());
    let (payer_before, merchant_before, transfers_before) = p.money().await;
    assert_eq!(transfers_before, 1);
    let served_before = p.origin.requests().await;

    // Everything the replicas shared is gone.
    redis.restart();
    assert_eq!(redis.command(&["DBSIZE"]).expect("DBSIZE"), "0");

    // The same payment at the two other replicas: the store no longer knows it, the chain
    // does. Retry while a replica is still reconnecting (503).
    for gw in &p.gws[1..] {
        let r = past_503(&gw.url("/api/weather"), "payment-signature", &header).await;
        eprintln!(
            "replay after the store was emptied: {} {}",
            r.status, r.reason
        );
        assert_eq!(r.status, 402, "{} {}\n{}", r.reason, r.body, p.logs());
        assert!(
            [
                "payment_already_used",
                "invalid_exact_evm_payload_authorization_nonce_used",
                "invalid_exact_evm_nonce_already_used",
            ]
            .contains(&r.reason.as_str()),
            "refused for an unexpected reason: {} {}",
            r.reason,
            r.body
        );
        assert!(r.header("payment-response").is_none());
    }
    assert_eq!(
        p.origin.requests().await,
        served_before,
        "the replays never reached the origin"
    );
    assert_eq!(
        p.money().await,
        (payer_before, merchant_before, transfers_before),
        "the chain shows one transfer"
    );
    assert_eq!(p.settles().await, 1, "the replays were never settled");
    assert_eq!(p.settled_lines(), 1);
}

/// A replica killed after its facilitator put the transfer on chain and before the replica
/// recorded it leaves its settlement in flight in the store; another replica takes it over
/// once the lease runs out, finds the transfer on chain and writes it to its own ledger, so
/// the ledgers together hold every transfer.
#[tokio::test]
async fn a_replica_killed_between_settling_and_recording_is_resolved_by_another() {
    let redis = Redis::start();
    let mut p = Paid::start(|r| state(&[redis.url()], r), &[]).await;
    // The facilitator settles at once and holds its answer for a minute.
    p.fault(json!({"settleReplyDelayMs": 60_000})).await;
    let header = p.payment().await;
    let url = p.gws[0].url("/api/weather");
    let sent = header.clone();
    let request = tokio::spawn(async move {
        client()
            .get(url)
            .header("payment-signature", sent)
            .send()
            .await
    });
    // The transfer is on chain and the replica waits for the facilitator's answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.money().await.2 == 0 {
        assert!(
            Instant::now() < deadline,
            "no transfer on chain
{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        redis
            .command(&["ZCARD", "x402:pending:index"])
            .expect("ZCARD"),
        "1",
        "the settlement in flight is recorded in the store"
    );
    p.gws[0].signal(nix::sys::signal::Signal::SIGKILL);
    assert!(p.gws[0].wait_exit(Duration::from_secs(10)));
    assert!(
        request.await.expect("join").is_err(),
        "the killed replica never answered"
    );
    assert!(p.ledger().is_empty(), "nothing was recorded yet");

    // Another replica resolves it from the chain once the lease has run out.
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        if let Some(l) = p
            .ledger()
            .into_iter()
            .find(|l| l["reason"] == "recovered_from_another_replica")
        {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no replica took the settlement over
{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(line["event"], "settled_late", "{line}");
    assert!(line["replica"] == "b" || line["replica"] == "c", "{line}");
    assert_eq!(
        line["payer"].as_str().map(str::to_lowercase),
        Some(p.payer().to_lowercase())
    );
    assert_eq!(line["amount"], PRICE.to_string());
    assert!(
        line["transaction"]
            .as_str()
            .is_some_and(|t| t.len() == 66 && t.starts_with("0x")),
        "{line}"
    );
    // Ledger == chain: one transfer, one line naming it, and the record is gone.
    let (_, _, transfers) = p.money().await;
    assert_eq!(transfers, 1);
    let with_tx: Vec<Value> = p
        .ledger()
        .into_iter()
        .filter(|l| !l["transaction"].as_str().unwrap_or("").is_empty())
        .collect();
    assert_eq!(with_tx.len(), 1, "{with_tx:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis
        .command(&["ZCARD", "x402:pending:index"])
        .expect("ZCARD")
        != "0"
    {
        assert!(Instant::now() < deadline, "the record stayed in the store");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The payment stays spent at the replicas that are left.
    let r = get(
        &p.gws[1].url("/api/weather"),
        &[("payment-signature", &header)],
    )
    .await;
    assert_eq!(r.status, 402, "{}", r.body);
    assert_eq!(r.reason, "payment_already_used", "{}", r.body);
    assert_eq!(p.money().await.2, 1);
}

/// Payments a facilitator refuses count against their payer on every replica: past
/// `failed_payments_per_payer` refusals at one replica, the payer's next attempt at each of the
/// others is a 429 before any facilitator call.
#[tokio::test]
async fn refused_payments_at_one_replica_limit_the_payer_at_every_replica() {
    let redis = Redis::start();
    let p = Paid::start(
        |r| {
            format!(
                "failed_payments_per_payer = 2\n{}",
                state(&[redis.url()], r)
            )
        },
        &[],
    )
    .await;
    let refusal =
        json!({"isValid": false, "invalidReason": "insufficient_funds", "payer": p.payer()});
    p.fault(json!({"verifyOverride": {"status": 200, "body": refusal, "times": 2}}))
        .await;
    for _ in 0..2 {
        let header = p.payment().await;
        let r = get(
            &p.gws[0].url("/api/weather"),
            &[("payment-signature", &header)],
        )
        .await;
        assert_eq!(r.status, 402, "{}", r.body);
    }
    // The payer is in the shared set of limited keys; wait until the other replicas have read
    // it (two refreshes of their copy after it got there).
    let key = format!("payer:{}", p.payer().to_lowercase());
    let score = redis
        .command(&["ZSCORE", "x402:{limited}:set", &key])
        .expect("ZSCORE");
    assert!(!score.is_empty(), "the payer is limited in the store");
    const LOADS: &str = r#"x402_state_seconds_count{op="limits"}"#;
    for gw in &p.gws[1..] {
        let start = gw.metric(LOADS).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while gw.metric(LOADS).await < start + 2.0 {
            assert!(Instant::now() < deadline, "no refresh of the limits");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let verifies_before = calls_on(p.fac(), "/verify").await;
    for gw in &p.gws[1..] {
        let header = p.payment().await;
        let r = get(&gw.url("/api/weather"), &[("payment-signature", &header)]).await;
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(r.reason, "too_many_payment_attempts", "{}", r.body);
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(
        calls_on(p.fac(), "/verify").await,
        verifies_before,
        "limited attempts never reach the facilitator"
    );
    assert_eq!(p.money().await.2, 0, "nothing was charged");
}

/// Calls the facilitator received on `path`.
async fn calls_on(fac: &str, path: &str) -> usize {
    facilitator_log(fac)
        .await
        .iter()
        .filter(|e| e["path"] == path)
        .count()
}

/// `on_unavailable = "open"`: while Redis is away a replica goes on with its own memory: a
/// payment is served and settled once, and a copy of it at the same replica is refused.
#[tokio::test]
async fn with_the_open_policy_a_replica_goes_on_alone_while_redis_is_down() {
    let mut redis = Redis::start();
    let p = Paid::start(
        |r| format!("{}on_unavailable = \"open\"\n", state(&[redis.url()], r)),
        &[],
    )
    .await;
    let header = p.payment().await;
    redis.stop();
    wait_state(&p.gws[0], false).await;
    let r = get(
        &p.gws[0].url("/api/weather"),
        &[("payment-signature", &header)],
    )
    .await;
    assert_eq!(r.status, 200, "{} {}\n{}", r.reason, r.body, p.logs());
    assert!(r.header("payment-response").is_some());
    assert_eq!(p.money().await.2, 1, "one transfer");
    let again = get(
        &p.gws[0].url("/api/weather"),
        &[("payment-signature", &header)],
    )
    .await;
    assert_eq!(again.status, 402, "{}", again.body);
    assert_eq!(again.reason, "payment_already_used", "{}", again.body);
    assert_eq!(p.money().await.2, 1, "still one transfer");
    assert_eq!(p.settled_lines(), 1);
}

#[tokio::test]
async fn on_a_redis_cluster_one_payment_settles_once_and_a_pass_quota_holds() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls();
    let p = Paid::start(|r| state(&urls, r), &[]).await;
    let view = p.gws[0].config_view().await;
    assert_eq!(
        view["state"]["cluster"].as_array().map(Vec::len),
        Some(2),
        "{}",
        view["state"]
    );
    one_payment_twelve_copies(&p).await;
    pass_quota_shared(&p.gws, &p.origin, "cluster-quota").await;
    // A revocation (a set and its version under one hash tag, written in one transaction)
    // reaches the other replicas.
    let token = mint_pass("cluster-revoked", 0);
    let r = get(&p.gws[1].url("/articles/x"), &[("x402-pass", &token)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = client()
        .post(p.gws[0].admin_url("/passes/revoke"))
        .json(&json!({"id": "cluster-revoked"}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(
        r.status(),
        200,
        "{}\n{}",
        r.text().await.unwrap_or_default(),
        p.logs()
    );
    for gw in &p.gws[1..] {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let r = get(&gw.url("/articles/x"), &[("x402-pass", &token)]).await;
            if (r.status, r.reason.as_str()) == (402, "pass_revoked") {
                break;
            }
            assert_eq!(r.status, 200, "{}", r.body);
            assert!(Instant::now() < deadline, "the revocation never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The keys are spread over the masters, not all on one.
    let sizes: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.command(&["DBSIZE"]).expect("DBSIZE"))
        .collect();
    assert!(
        sizes.iter().filter(|s| *s != "0").count() >= 2,
        "keys on one master only: {sizes:?}"
    );
}

#[tokio::test]
async fn memory_is_the_default_store_and_check_wants_a_url_for_redis() {
    let origin = Origin::start("replicas-default-origin");
    let gw = Gateway::start_with_env(
        &config(&origin.addr, PASSES),
        &[("rules.toml", RULES)],
        &[("TEST_PASS_KEY", PASS_KEY)],
    );
    let view = gw.config_view().await;
    assert_eq!(view["state"]["backend"], "memory", "{}", view["state"]);
    assert!(view["state"].get("url").is_none(), "{}", view["state"]);
    let (_, report) = readyz(&gw).await;
    assert_eq!(report["state"]["backend"], "memory", "{report}");
    assert_eq!(report["state"]["ok"], true, "{report}");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules");
    let cfg = config(
        "127.0.0.1:9",
        &format!("{PASSES}\n[state]\nbackend = \"redis\"\nreplica_id = \"a\"\n"),
    );
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, &cfg).expect("config");
    std::fs::write(dir.path().join("rules/a.toml"), RULES).expect("rules");
    let out = std::process::Command::new(GATEWAY_BIN)
        .args(["check", "-c"])
        .arg(&file)
        .env("TEST_PASS_KEY", PASS_KEY)
        .output()
        .expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let off = cfg.find("\"redis\"").expect("backend value");
    let line = cfg[..off].matches('\n').count() + 1;
    let col = off - cfg[..off].rfind('\n').map_or(0, |i| i + 1) + 1;
    let expected = format!(
        "{}:{line}:{col}: state.url: the `redis` backend needs a url",
        file.display()
    );
    assert!(err.contains(&expected), "missing\n  {expected}\nin\n{err}");
}

/// A payment whose settlement failed before any money moved is released with its
/// verification remembered in the store: sent again to another replica it settles there
/// without a second `/verify`, and moves once.
#[tokio::test]
async fn a_payment_released_unsettled_is_not_verified_twice_across_replicas() {
    let redis = Redis::start();
    let p = Paid::start(|r| state(&[redis.url()], r), &[]).await;
    p.fault(json!({"settleOverride": {
        "status": 200,
        "times": 1,
        "body": {"success": false, "errorReason": "Transaction reverted: out of gas (0x5c1e)", "transaction": "", "network": "eip155:31337"},
    }}))
    .await;
    let header = p.payment().await;
    let verifies = calls_on(p.fac(), "/verify").await;
    let r = get(
        &p.gws[0].url("/api/weather"),
        &[("payment-signature", &header)],
    )
    .await;
    assert_eq!(r.status, 402, "{}", r.body);
    assert_eq!(p.money().await.2, 0, "nothing moved");
    assert_eq!(calls_on(p.fac(), "/verify").await, verifies + 1);
    // The facilitator's free text is no metric label.
    assert_eq!(
        p.gws[0]
            .metric(r#"x402_payments_total{outcome="settle_failed",reason="other"}"#)
            .await,
        1.0,
        "{}",
        p.gws[0].metrics().await
    );
    assert_eq!(
        redis
            .command(&["ZCARD", "x402:pending:index"])
            .expect("ZCARD"),
        "0",
        "nothing of it is pending"
    );

    let r = get(
        &p.gws[1].url("/api/weather"),
        &[("payment-signature", &header)],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, p.logs());
    assert_eq!(
        calls_on(p.fac(), "/verify").await,
        verifies + 1,
        "the second replica reused the first one's verification"
    );
    assert_eq!(p.money().await.2, 1, "one transfer");
    assert_eq!(p.settled_lines(), 1);
}

/// `/readyz` with a state store that cannot be reached and no facilitator: ready and degraded
/// by default (free routes serve, priced ones answer 503 on their own); unready with
/// `strict_readiness`.
#[tokio::test]
async fn strict_readiness_fails_readyz_while_the_store_is_down() {
    let origin = Origin::start("replicas-strict-origin");
    let dead = dead_url();
    let dead = dead.trim_start_matches("http://");
    let store = format!(
        "{PASSES}\n[state]\nbackend = \"redis\"\nurl = \"redis://{dead}\"\nreplica_id = \"a\"\n"
    );
    for (strict, want) in [(false, 200), (true, 503)] {
        let mut cfg = config(&origin.addr, &store);
        if strict {
            cfg = cfg.replace("[admin]\n", "[admin]\nstrict_readiness = true\n");
        }
        let gw = Gateway::start_with_env(
            &cfg,
            &[("rules.toml", RULES)],
            &[("TEST_PASS_KEY", PASS_KEY)],
        );
        let (status, report) = readyz(&gw).await;
        assert_eq!(status, want, "{report}");
        assert_eq!(report["ready"], !strict, "{report}");
        assert_eq!(report["strict"], strict, "{report}");
        // No facilitator answers here either (the default one is not reachable offline).
        assert_eq!(
            report["degraded"],
            json!(["facilitators", "state"]),
            "{report}"
        );
        let r = get(&gw.url("/free/ping"), &[]).await;
        assert_eq!(r.status, 200, "free routes serve either way: {}", r.body);
    }
}
