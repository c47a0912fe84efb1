//! Audiences: crawler matching and spoofing, per-audience prices in 402s, pay-per-crawl price
//! headers, Web Bot Auth against a key directory on loopback, shadow mode, the browser paywall
//! in headless Chromium, and located configuration errors.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::botauth::{self, BotKey, Directory, Sig};
use crate::support::*;

const BROWSER_UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const GPTBOT_UA: &str = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.1; +https://openai.com/gptbot";
/// Base Sepolia USDC, what `$` prices on `base-sepolia` are paid in.
const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

/// Crawlers and rules: articles priced by audience, premium blocked for bots.
fn rules(directory_origin: &str) -> String {
    format!(
        r#"
[[crawler]]
name = "GPTBot"
operator = "OpenAI"
purpose = "training"
user_agent = "GPTBot"

[[crawler]]
name = "Googlebot"
operator = "Google"
purpose = "search"
user_agent = "Googlebot"

[[crawler]]
name = "FetchBot"
operator = "Fetchers"
purpose = "user"
user_agent = "FetchBot"

[[crawler]]
name = "SignedBot"
operator = "TestBots"
purpose = "training"
user_agent = "SignedBot"
signature_agent = "{directory_origin}"

[[crawler]]
name = "Robots-Only"
operator = "Google"
purpose = "training"

[[rule]]
id = "home"
path = "/"
action = "free"

[[rule]]
id = "articles"
prefix = "/articles/"
price = "$0.01"
description = "Articles"

[rule.audiences]
human = "free"
search = "free"
training = "$0.005"
agent = "$0.02"

[rule.operators]
TestBots = "$0.002"

[[rule]]
id = "premium"
prefix = "/premium/"
price = "$0.01"

[rule.audiences]
training = "block"
agent = "block"

[[rule]]
id = "shadowed"
prefix = "/shadow/"
price = "$0.01"
mode = "shadow"

[rule.audiences]
human = "free"
agent = "block"
"#
    )
}

fn gateway_toml(origin: &str, directory_origin: &str, extra: &str) -> String {
    config(
        origin,
        &format!(
            r#"
[web_bot_auth]
agents = [{{ origin = "{directory_origin}", operator = "TestBots", purpose = "training" }}]
{extra}
"#
        ),
    )
}

struct Site {
    origin: Origin,
    gw: Gateway,
    dir: Directory,
    key: BotKey,
}

impl Site {
    fn start() -> Site {
        let key = BotKey::new(1);
        let dir = Directory::start(botauth::jwks(&[&key]), "max-age=300");
        let origin = Origin::start("aud-origin");
        let gw = Gateway::start(
            &gateway_toml(&origin.addr, &dir.origin(), ""),
            &[("site.toml", &rules(&dir.origin()))],
        );
        Site {
            origin,
            gw,
            dir,
            key,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        let c = client();
        let mut rb = c.get(self.gw.url(path));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.expect("send");
        Got {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.expect("body"),
        }
    }
}

/// One response, read whole.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The first offer's amount of a 402 with an x402 offer.
    fn amount(&self) -> String {
        assert_eq!(self.status, 402, "{self:?}");
        let pr = decode_header(self.header("payment-required").expect("PAYMENT-REQUIRED"));
        pr["accepts"][0]["amount"]
            .as_str()
            .expect("amount")
            .to_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

#[tokio::test]
async fn each_audience_gets_its_price_and_spoofed_crawlers_are_agents() {
    let s = Site::start();
    let html = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

    // People in browsers read free; search engines index free.
    let r = s
        .get("/articles/1", &[html, ("user-agent", BROWSER_UA)])
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s
        .get(
            "/articles/1",
            &[("user-agent", "Mozilla/5.0 (compatible; Googlebot/2.1)")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.origin.requests().await, 2);

    // A training crawler pays its price, with the pay-per-crawl hint.
    let r = s
        .get("/articles/1", &[html, ("user-agent", GPTBOT_UA)])
        .await;
    assert_eq!(r.amount(), "5000");
    assert_eq!(r.header("crawler-price"), Some("USD 0.005"));
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "crawlers get JSON even with a Mozilla UA and text/html: {r:?}"
    );
    // A user-triggered fetcher has no audience price here: the rule's default.
    let r = s
        .get("/articles/1", &[("user-agent", "FetchBot/2.0")])
        .await;
    assert_eq!(r.amount(), "10000");
    assert_eq!(r.header("crawler-price"), Some("USD 0.01"));
    // Anything else is an agent; agents get no crawler headers.
    let r = s.get("/articles/1", &[("user-agent", "curl/8.5")]).await;
    assert_eq!(r.amount(), "20000");
    assert_eq!(r.header("crawler-price"), None);

    // Claiming a crawler that always signs, without its signature: an agent, counted.
    let r = s
        .get("/articles/1", &[("user-agent", "SignedBot/1.0")])
        .await;
    assert_eq!(r.amount(), "20000", "a spoofed claim is priced as an agent");
    assert_eq!(r.header("crawler-price"), None);
    assert_eq!(
        s.gw.metric("x402_spoofed_crawlers_total{crawler=\"SignedBot\"}")
            .await,
        1.0
    );

    // Blocked audiences: crawlers get the pay-per-crawl code, agents a plain 403.
    let r = s.get("/premium/x", &[("user-agent", GPTBOT_UA)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("crawler-error"), Some("CrawlerForbidden"));
    assert_eq!(r.json()["error"], "crawler_forbidden");
    let r = s.get("/premium/x", &[("user-agent", "curl/8.5")]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "audience_blocked");
    assert_eq!(r.header("crawler-error"), None);
    // ... and people pay the default, on the HTML page.
    let r = s
        .get("/premium/x", &[html, ("user-agent", BROWSER_UA)])
        .await;
    assert_eq!(r.status, 402);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert_eq!(
        s.origin.requests().await,
        2,
        "nothing else reached the origin"
    );

    let m = |q: &'static str| s.gw.metric(q);
    assert_eq!(
        m("x402_audience_requests_total{audience=\"crawler\",purpose=\"training\"}").await,
        2.0
    );
    assert_eq!(
        m("x402_audience_requests_total{audience=\"crawler\",purpose=\"search\"}").await,
        1.0
    );
    assert_eq!(
        m("x402_audience_requests_total{audience=\"human\",purpose=\"\"}").await,
        2.0
    );
    assert_eq!(
        m("x402_audience_requests_total{audience=\"agent\",purpose=\"\"}").await,
        3.0
    );
    // Free and unmatched rules are never classified.
    let r = s.get("/", &[("user-agent", GPTBOT_UA)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        m("x402_audience_requests_total{audience=\"crawler\",purpose=\"training\"}").await,
        2.0
    );
    s.gw.log_containing("claims a signing crawler without its signature")
        .await;
}

#[tokio::test]
async fn pay_per_crawl_price_headers() {
    let s = Site::start();
    let bot = ("user-agent", GPTBOT_UA);

    // Above the crawler's ceiling: a 402 without an offer, naming the price.
    let r = s
        .get("/articles/a", &[bot, ("crawler-max-price", "USD 0.004")])
        .await;
    assert_eq!(r.status, 402);
    assert_eq!(r.header("crawler-error"), Some("InvalidCrawlerMaxPrice"));
    assert_eq!(r.header("crawler-price"), Some("USD 0.005"));
    assert_eq!(
        r.header("payment-required"),
        None,
        "no offer it would refuse"
    );
    assert_eq!(r.json()["error"], "invalid_crawler_max_price");
    // At or under the ceiling: the usual offer.
    let r = s
        .get("/articles/a", &[bot, ("crawler-max-price", "USD 0.005")])
        .await;
    assert_eq!(r.amount(), "5000");
    let r = s
        .get("/articles/a", &[bot, ("crawler-exact-price", "USD 0.0050")])
        .await;
    assert_eq!(r.amount(), "5000");
    let r = s
        .get("/articles/a", &[bot, ("crawler-exact-price", "USD 0.006")])
        .await;
    assert_eq!(r.status, 402);
    assert_eq!(r.header("crawler-error"), Some("InvalidCrawlerExactPrice"));
    assert_eq!(r.json()["error"], "invalid_crawler_exact_price");
    assert_eq!(r.header("payment-required"), None);
    // Malformed and conflicting headers are the client's mistake.
    let r = s
        .get("/articles/a", &[bot, ("crawler-max-price", "0.01")])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("crawler-error"), Some("InvalidCrawlerPriceValue"));
    assert_eq!(r.json()["error"], "invalid_crawler_price_value");
    let r = s
        .get(
            "/articles/a",
            &[
                bot,
                ("crawler-max-price", "USD 0.01"),
                ("crawler-exact-price", "USD 0.005"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("crawler-error"), Some("ConflictingPriceHeaders"));
    assert_eq!(r.json()["error"], "conflicting_price_headers");
    // People are not crawlers: the headers mean nothing for them.
    let r = s
        .get(
            "/articles/a",
            &[
                ("accept", "text/html"),
                ("user-agent", BROWSER_UA),
                ("crawler-max-price", "garbage"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.gw.metric("x402_local_replies_total{reason=\"invalid_crawler_max_price\"}")
            .await,
        1.0
    );
    assert_eq!(s.origin.requests().await, 1);
}

#[tokio::test]
async fn web_bot_auth_verifies_against_a_trusted_loopback_directory() {
    let s = Site::start();
    let authority = s.gw.addr.clone();
    let agent = s.dir.agent_header();
    let ua = ("user-agent", "SignedBot/1.0 (+https://bot.example)");
    let send = |sig: Vec<(&'static str, String)>, ua: (&'static str, &'static str)| {
        let s = &s;
        async move {
            let mut h: Vec<(&str, &str)> = sig.iter().map(|(k, v)| (*k, v.as_str())).collect();
            h.push(ua);
            s.get("/articles/x", &h).await
        }
    };
    let outcome = |o: &'static str| {
        let gw = &s.gw;
        async move {
            gw.metric(&format!("x402_web_bot_auth_total{{outcome=\"{o}\"}}"))
                .await
        }
    };

    // Valid: the verified operator's price.
    let good = botauth::sign(&s.key, &Sig::standard(&authority, &agent, "nonce-1"));
    let r = send(good.clone(), ua).await;
    assert_eq!(
        r.amount(),
        "2000",
        "verified TestBots pays its operator price"
    );
    assert_eq!(r.header("crawler-price"), Some("USD 0.002"));
    assert_eq!(outcome("verified").await, 1.0);

    // The same signature again: a replay, not verified, so the UA claim is a spoof.
    let r = send(good, ua).await;
    assert_eq!(r.amount(), "20000");
    assert_eq!(outcome("replayed").await, 1.0);

    // A signed request needs no crawler user agent: the signature says who it is.
    let r = send(
        botauth::sign(&s.key, &Sig::standard(&authority, &agent, "nonce-2")),
        ("user-agent", "curl/8.5"),
    )
    .await;
    assert_eq!(r.amount(), "2000");

    // Expired.
    let mut expired = Sig::standard(&authority, &agent, "nonce-3");
    expired.created = botauth::now() - 120;
    expired.expires = botauth::now() - 60;
    let r = send(botauth::sign(&s.key, &expired), ua).await;
    assert_eq!(r.amount(), "20000");
    assert_eq!(outcome("expired").await, 1.0);

    // Signed with a key the directory does not have (its own keyid), or with another key
    // under the directory key's id.
    let other = BotKey::new(2);
    let r = send(
        botauth::sign(&other, &Sig::standard(&authority, &agent, "nonce-4")),
        ua,
    )
    .await;
    assert_eq!(r.amount(), "20000");
    assert_eq!(outcome("unknown_key").await, 1.0);
    let mut stolen_id = Sig::standard(&authority, &agent, "nonce-5");
    stolen_id.keyid = Some(&s.key.thumbprint);
    let r = send(botauth::sign(&other, &stolen_id), ua).await;
    assert_eq!(r.amount(), "20000");
    assert_eq!(outcome("bad_signature").await, 1.0);

    // Signed for another host.
    let r = send(
        botauth::sign(&s.key, &Sig::standard("evil.example", &agent, "nonce-6")),
        ua,
    )
    .await;
    assert_eq!(r.amount(), "20000");
    assert_eq!(outcome("bad_signature").await, 2.0);

    // Wrong covered components: no @authority, or Signature-Agent sent but not covered.
    let mut no_authority = Sig::standard(&authority, &agent, "nonce-7");
    no_authority.components = vec!["@method", "@path", "signature-agent"];
    no_authority.path = "/articles/x";
    let r = send(botauth::sign(&s.key, &no_authority), ua).await;
    assert_eq!(r.amount(), "20000");
    let mut agent_uncovered = Sig::standard(&authority, &agent, "nonce-8");
    agent_uncovered.components = vec!["@authority"];
    let r = send(botauth::sign(&s.key, &agent_uncovered), ua).await;
    assert_eq!(r.amount(), "20000");
    let mut wrong_tag = Sig::standard(&authority, &agent, "nonce-9");
    wrong_tag.tag = "something-else";
    let r = send(botauth::sign(&s.key, &wrong_tag), ua).await;
    assert_eq!(r.amount(), "20000");
    assert_eq!(outcome("missing_components").await, 3.0);

    // An agent nobody trusts: refused, and its directory never fetched.
    let rogue = Directory::start(botauth::jwks(&[&other]), "max-age=300");
    let rogue_agent = rogue.agent_header();
    let r = send(
        botauth::sign(&other, &Sig::standard(&authority, &rogue_agent, "nonce-10")),
        ua,
    )
    .await;
    assert_eq!(r.amount(), "20000");
    assert_eq!(outcome("untrusted_agent").await, 1.0);
    assert_eq!(rogue.hits(), 0, "an untrusted directory is never fetched");

    // Everything above used one directory fetch (cached per its max-age).
    assert_eq!(s.dir.hits(), 1);
    assert_eq!(
        s.gw.metric("x402_audience_requests_total{audience=\"verified\",purpose=\"training\"}")
            .await,
        2.0
    );
    assert_eq!(s.origin.requests().await, 0);

    // `explain` shows the audience and the decision for a user agent and signature headers.
    let fresh = botauth::sign(&s.key, &Sig::standard(&authority, &agent, "nonce-11"));
    let mut args: Vec<String> = vec![
        "explain".into(),
        "-c".into(),
        s.gw.path("gateway.toml").display().to_string(),
        "GET".into(),
        format!("http://{authority}/articles/x"),
        "-H".into(),
        "User-Agent: SignedBot/1.0".into(),
    ];
    for (k, v) in &fresh {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    let out = Command::new(GATEWAY_BIN)
        .args(&args)
        .output()
        .expect("explain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["audience"]["kind"], "verified", "{v}");
    assert_eq!(v["audience"]["web_bot_auth"], "verified");
    assert_eq!(v["decision"], "pay");
    assert_eq!(v["status"], 402);
    assert_eq!(v["crawlerPrice"], "USD 0.002");
    assert_eq!(v["paymentRequired"]["accepts"][0]["amount"], "2000");
    let out = Command::new(GATEWAY_BIN)
        .args([
            "explain",
            "-c",
            &s.gw.path("gateway.toml").display().to_string(),
            "GET",
            &format!("http://{authority}/articles/x"),
            "-H",
            "User-Agent: SignedBot/1.0",
        ])
        .output()
        .expect("explain");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["audience"]["kind"], "agent", "{v}");
    assert!(
        v["audience"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("spoofed SignedBot")),
        "{v}"
    );
}

#[tokio::test]
async fn key_directories_are_cached_by_max_age_and_follow_key_rotation() {
    let old = BotKey::new(7);
    let new = BotKey::new(8);
    let dir = Directory::start(botauth::jwks(&[&old]), "max-age=1");
    let origin = Origin::start("rotation-origin");
    let gw = Gateway::start(
        &gateway_toml(&origin.addr, &dir.origin(), "min_cache_seconds = 1"),
        &[("site.toml", &rules(&dir.origin()))],
    );
    let agent = dir.agent_header();
    assert_eq!(signed_price(&gw, &agent, &old, "a").await, "2000");
    assert_eq!(signed_price(&gw, &agent, &old, "b").await, "2000");
    assert_eq!(dir.hits(), 1, "cached");

    // The agent rotates its key. Once the cached copy is older than the floor (1 s here), an
    // unknown keyid refetches the directory, and the new key verifies.
    dir.set_body(botauth::jwks(&[&new]));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        if signed_price(&gw, &agent, &new, &format!("rot-{n}")).await == "2000" {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated key never verified");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dir.hits() >= 2);
    // The retired key no longer verifies.
    assert_eq!(signed_price(&gw, &agent, &old, "c").await, "20000");
}

/// The price an agent pays on `/articles/r` with a signature by `key`.
async fn signed_price(gw: &Gateway, agent: &str, key: &BotKey, nonce: &str) -> String {
    let sig = botauth::sign(key, &Sig::standard(&gw.addr, agent, nonce));
    let mut rb = client()
        .get(gw.url("/articles/r"))
        .header("user-agent", "curl/8.5");
    for (k, v) in &sig {
        rb = rb.header(*k, v);
    }
    let r = rb.send().await.expect("send");
    decode_header(r.headers()["payment-required"].to_str().expect("ascii"))["accepts"][0]["amount"]
        .as_str()
        .expect("amount")
        .to_owned()
}

#[tokio::test]
async fn the_crawler_list_reloads_like_any_rules_file() {
    let s = Site::start();
    let r = s.get("/articles/1", &[("user-agent", "NewBot/0.1")]).await;
    assert_eq!(r.amount(), "20000", "unknown: an agent");
    let g = s.gw.generation().await;
    let updated = format!(
        "{}\n[[crawler]]\nname = \"NewBot\"\noperator = \"New\"\npurpose = \"training\"\nuser_agent = \"newbot\"\n",
        rules(&s.dir.origin())
    );
    s.gw.write("rules/site.toml", &updated);
    s.gw.wait_generation(g + 1).await;
    let r = s.get("/articles/1", &[("user-agent", "NewBot/0.1")]).await;
    assert_eq!(r.amount(), "5000", "now a training crawler");
    assert_eq!(r.header("crawler-price"), Some("USD 0.005"));
    let view = s.gw.config_view().await;
    assert!(
        view["crawlers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "NewBot")),
        "{view}"
    );
}

#[tokio::test]
async fn shadow_mode_decides_counts_and_forwards() {
    let s = Site::start();
    let html = ("accept", "text/html");
    for (ua, accept) in [
        ("curl/8.5", None),
        (GPTBOT_UA, None),
        (BROWSER_UA, Some(html)),
    ] {
        let mut h = vec![("user-agent", ua)];
        h.extend(accept);
        let r = s.get("/shadow/page", &h).await;
        assert_eq!(r.status, 200, "shadow mode forwards: {r:?}");
        assert_eq!(r.header("payment-required"), None);
    }
    // A payment that would be refused is not charged either: forwarded and counted.
    let r = s
        .get(
            "/shadow/page",
            &[
                ("user-agent", GPTBOT_UA),
                ("payment-signature", "bm90LWpzb24="),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.origin.requests().await, 4);
    let d = |decision: &'static str| {
        let gw = &s.gw;
        async move {
            gw.metric(&format!(
                "x402_shadow_decisions_total{{decision=\"{decision}\",rule=\"shadowed\"}}"
            ))
            .await
        }
    };
    assert_eq!(d("block").await, 1.0);
    assert_eq!(d("charge").await, 1.0);
    assert_eq!(d("free").await, 1.0);
    assert_eq!(d("rejected").await, 1.0);
    assert_eq!(
        s.gw.metric(&format!(
            "x402_shadow_amount_atomic_total{{asset=\"{USDC}\",network=\"eip155:84532\",rule=\"shadowed\"}}"
        ))
        .await,
        20_000.0,
        "the charge and the rejected payment would each have cost $0.01"
    );
    assert_eq!(
        s.gw.metric("x402_requests_total{decision=\"shadow\",rule=\"shadowed\",status=\"2xx\"}")
            .await,
        4.0
    );
    s.gw.log_containing("shadow mode: forwarded without charging")
        .await;
}

#[tokio::test]
async fn the_paywall_page_renders_in_headless_chromium() {
    let origin = Origin::start("pw-origin");
    let gw = Gateway::start(
        &config(&origin.addr, ""),
        &[(
            "site.toml",
            r#"
[[rule]]
id = "report"
path = "/reports/annual"
price = "$0.25"
description = "Annual report <2026>"
"#,
        )],
    );
    let url = gw.url("/reports/annual");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium(&["--dump-dom"], &url)
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        text.contains(r#"<p class="price" id="price">$0.25</p>"#),
        "price not in the rendered DOM:\n{text}\nstderr: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(text.contains("Annual report &lt;2026&gt;"), "{text}");
    assert!(text.contains("eip155:84532 (base-sepolia)"), "{text}");
    assert!(text.contains(PAY_TO), "{text}");

    screenshot(&url, "1024,768", 5_000).await;
    // Chromium was answered with the HTML 402 both times.
    assert!(
        gw.metric("x402_requests_total{decision=\"challenged\",rule=\"report\",status=\"4xx\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn operators_replace_the_paywall_template() {
    let origin = Origin::start("tpl-origin");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules");
    std::fs::write(
        dir.path().join("page.html"),
        "<!doctype html><title>{{ price }}</title><p id=p>Pay {{price}} for {{resource}} on {{networks}} ({{reason}})</p>",
    )
    .expect("template");
    std::fs::write(
        dir.path().join("gateway.toml"),
        config(&origin.addr, "[paywall]\ntemplate = \"page.html\"\n"),
    )
    .expect("config");
    std::fs::write(
        dir.path().join("rules/site.toml"),
        "[[rule]]\nid = \"x\"\npath = \"/x\"\nprice = \"$0.03\"\n",
    )
    .expect("rules");
    let gw = Gateway::start_in(dir);
    let r = client()
        .get(gw.url("/x?a=<b>"))
        .header("accept", "text/html")
        .header("user-agent", BROWSER_UA)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 402);
    assert!(r.headers().contains_key("payment-required"));
    let body = r.text().await.expect("body");
    assert_eq!(
        body,
        format!(
            "<!doctype html><title>$0.03</title><p id=p>Pay $0.03 for http://{}/x?a=%3Cb%3E on eip155:84532 (base-sepolia) (payment_required)</p>",
            gw.addr
        )
    );
    // A placeholder that does not exist is a located error.
    gw.write("page.html", "<p>\n  {{prise}}</p>");
    let (code, _, err) = {
        let out = Command::new(GATEWAY_BIN)
            .args(["check", "-c"])
            .arg(gw.path("gateway.toml"))
            .output()
            .expect("check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "{}:2:3: paywall.template: unknown placeholder `{{{{prise}}}}`",
            gw.path("page.html").display()
        )),
        "{err}"
    );
}

#[test]
fn access_configuration_errors_are_located() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules");
    let cfg = config(
        "127.0.0.1:9",
        r#"
[web_bot_auth]
agents = [
  { origin = "http://bots.example", operator = "Plain" },
  { origin = "https://ok.example", operator = "Known" },
]
"#,
    );
    std::fs::write(dir.path().join("gateway.toml"), &cfg).expect("config");
    let rules = r#"
[[crawler]]
name = "A"
operator = "X"
purpose = "training"
user_agent = "ABot"

[[crawler]]
name = "A"
operator = "X"
purpose = "search"
user_agent = "OtherBot"

[[crawler]]
name = "B"
operator = "X"
purpose = "shopping"

[[rule]]
id = "r1"
path = "/r1"
price = "$0.01"
pass = { ttl = "1h" }

[rule.audiences]
training = "$0.0000001"

[[rule]]
id = "r3"
path = "/r3"
price = "$0.01"

[rule.audiences]
robots = "free"

[[rule]]
id = "r2"
path = "/r2"
price = "$0.01"
pass = { ttl = "forever", scope = "prefix" }

[rule.operators]
Unknown = "$0.01"
"#;
    std::fs::write(dir.path().join("rules/a.toml"), rules).expect("rules");
    let out = Command::new(GATEWAY_BIN)
        .args(["check", "-c"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let g = dir.path().join("gateway.toml").display().to_string();
    let r = dir.path().join("rules/a.toml").display().to_string();
    let at = |file: &str, text: &str, needle: &str| format!("{file}:{}", loc_of(text, needle));
    for expected in [
        format!(
            "{}: web_bot_auth.agents.origin: key directories are fetched over https",
            at(&g, &cfg, "\"http://bots.example\"")
        ),
        format!(
            "{}: crawler.name: duplicate crawler `A`",
            at(&r, rules, "\"A\"\noperator = \"X\"\npurpose = \"search\"")
        ),
        format!(
            "{}: crawler[2]: unknown variant `shopping`",
            at(&r, rules, "\"shopping\"")
        ),
        format!(
            "{}: rule[1]: unknown field `robots`",
            at(&r, rules, "robots")
        ),
        format!(
            "{}: rule.audiences.training: $0.0000001 is not a whole number",
            at(&r, rules, "\"$0.0000001\"")
        ),
        format!(
            "{}: rule.pass: passes need a `[passes]` section",
            at(&r, rules, "{ ttl = \"1h\" }")
        ),
        format!(
            "{}: rule.pass.ttl: `forever` is not a duration",
            at(&r, rules, "\"forever\"")
        ),
        format!(
            "{}: rule.pass.prefix: `scope = \"prefix\"` needs `prefix`",
            at(&r, rules, "{ ttl = \"forever\"")
        ),
        format!(
            "{r}:{}: rule.operators.Unknown: `Unknown` is not an operator of a [web_bot_auth] agent (known: Known)",
            loc_at(
                rules,
                rules.find("Unknown = ").expect("op") + "Unknown = ".len()
            )
        ),
    ] {
        assert!(err.contains(&expected), "missing\n  {expected}\nin\n{err}");
    }
}

/// `line:col` where `needle` starts.
fn loc_of(text: &str, needle: &str) -> String {
    let off = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    loc_at(text, off)
}

/// `line:col` of a byte offset.
fn loc_at(text: &str, off: usize) -> String {
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    format!("{line}:{col}")
}

/// Replicas sharing a Redis accept a Web Bot Auth signature once between them: the same
/// signed request sent to another replica is a replay there, priced as the unverified agent
/// it then is.
#[tokio::test]
async fn a_signature_used_at_one_replica_is_a_replay_at_another() {
    let redis = crate::support::redis::Redis::start();
    let key = BotKey::new(1);
    let dir = Directory::start(botauth::jwks(&[&key]), "max-age=300");
    let origin = Origin::start("aud-replicas-origin");
    let state = format!(
        "\n[state]\nbackend = \"redis\"\nurl = \"{}\"\n",
        redis.url()
    );
    let gws: Vec<Gateway> = (0..2)
        .map(|_| {
            Gateway::start(
                &gateway_toml(&origin.addr, &dir.origin(), &state),
                &[("site.toml", &rules(&dir.origin()))],
            )
        })
        .collect();
    // The same authority at both replicas (one site behind a load balancer).
    let authority = "site.example";
    let agent = dir.agent_header();
    let sig = botauth::sign(&key, &Sig::standard(authority, &agent, "nonce-shared"));
    let send = |gw: &Gateway| {
        let url = gw.url("/articles/x");
        let sig = sig.clone();
        async move {
            let mut rb = client()
                .get(url)
                .header("host", authority)
                .header("user-agent", "SignedBot/1.0 (+https://bot.example)");
            for (k, v) in &sig {
                rb = rb.header(*k, v);
            }
            let r = rb.send().await.expect("send");
            Got {
                status: r.status().as_u16(),
                headers: r.headers().clone(),
                body: r.bytes().await.expect("body"),
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    for gw in &gws {
        // Each replica's store connection is up before the signature is spent.
        while client()
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .json::<Value>()
            .await
            .expect("readyz json")["state"]["ok"]
            != true
        {
            assert!(Instant::now() < deadline, "{}", gw.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let r = send(&gws[0]).await;
    assert_eq!(
        r.amount(),
        "2000",
        "verified TestBots pays its operator price"
    );
    let r = send(&gws[1]).await;
    assert_eq!(r.amount(), "20000", "a replay is an unverified agent");
    assert_eq!(
        gws[1]
            .metric("x402_web_bot_auth_total{outcome=\"replayed\"}")
            .await,
        1.0
    );
}
