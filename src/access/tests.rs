//! The access decision on plain values: a crawler list, pass keys, a rule's audience prices,
//! and header maps, with the in-memory state store. No socket, no process.

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderMap;
use rust_decimal::Decimal;

use super::audience::{AudiencePrices, Crawler, CrawlerSet, Purpose};
use super::crawler_price::CrawlerPriceError;
use super::pass::{self, Algorithm, Claims, KeyMaterial, PassError, PassKeys, ScopeKind};
use super::webbotauth::BotAuthConf;
use super::*;
use crate::schemes::{EXACT, Scheme};
use crate::state::MemoryStore;
use crate::x402::networks::Registry;

const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const KEY: &[u8] = b"access-tests-pass-key-0123456789abcdef";

fn price(atomic: u128, usd: Option<&str>) -> Arc<Priced> {
    let registry = Registry::builtin();
    let asset = registry.asset("eip155:84532", "usdc").expect("usdc");
    let offer = EXACT.offer(asset, Some("base-sepolia".into()), atomic, PAY_TO, 300);
    Arc::new(
        Priced::new(vec![offer], "Articles".into(), "text/html".into())
            .with_usd(usd.map(|u| u.parse::<Decimal>().expect("usd"))),
    )
}

struct World {
    access: Access,
    crawlers: CrawlerSet,
    bots: BotAuthConf,
    keys: PassKeys,
}

impl World {
    fn new() -> World {
        let crawlers = CrawlerSet::new(vec![Crawler {
            name: "GPTBot".into(),
            operator: "OpenAI".into(),
            purpose: Purpose::Training,
            user_agent: Some("GPTBot".into()),
            signature_agent: None,
            origin: "test".into(),
        }])
        .expect("crawlers");
        let keys = PassKeys::new(
            Algorithm::HmacSha256,
            vec![("k1".into(), KeyMaterial::Hmac(KEY.to_vec()))],
            Some("k1"),
            "x402_pass".into(),
            HashSet::new(),
        )
        .expect("keys");
        World {
            access: Access::new(Arc::new(Metrics::new()), Arc::new(MemoryStore::default())),
            crawlers,
            bots: BotAuthConf::default(),
            keys,
        }
    }

    fn env(&self) -> AccessEnv<'_> {
        AccessEnv {
            crawlers: &self.crawlers,
            web_bot_auth: &self.bots,
            passes: Some(&self.keys),
            max_payment_header_bytes: 16 * 1024,
        }
    }

    /// Decides `GET /articles/x` on `example.com` with these headers.
    async fn decide(
        &self,
        action: &RuleAction,
        access: &RuleAccess,
        headers: &[(&str, &str)],
    ) -> (Outcome, AccessState) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let view = RequestView {
            headers: &h,
            method: "GET",
            host: "example.com",
            authority: "example.com",
            https: true,
            path: "/articles/x",
            query: None,
            canonical: "/articles/x",
            key: "/articles/x",
        };
        let rule = AccessRule {
            id: "articles",
            action,
            access,
        };
        let mut state = AccessState::default();
        let outcome = self
            .access
            .decide(&self.env(), rule, &view, &mut state)
            .await;
        (outcome, state)
    }

    fn pass(&self, max_requests: u32) -> String {
        let now = pass::unix_now();
        pass::mint(
            &self.keys,
            &Claims {
                id: pass::new_id(),
                rule: "articles".into(),
                host: "example.com".into(),
                scope: ScopeKind::Rule,
                path: String::new(),
                methods: 0,
                iat: now,
                exp: now + 600,
                max_requests,
                payer: "0x1".into(),
                paid: None,
            },
        )
        .expect("mint")
    }
}

const BROWSER: [(&str, &str); 2] = [
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    ),
    ("accept", "text/html"),
];
const GPTBOT: [(&str, &str); 1] = [("user-agent", "Mozilla/5.0 (compatible; GPTBot/1.2)")];
const SCRIPT: [(&str, &str); 1] = [("user-agent", "curl/8.0")];

fn by_audience(human: RuleAction, training: RuleAction) -> RuleAccess {
    RuleAccess {
        audiences: Some(Arc::new(AudiencePrices {
            human: Some(human),
            training: Some(training),
            ..AudiencePrices::default()
        })),
        ..RuleAccess::default()
    }
}

fn charged(o: &Outcome) -> Option<String> {
    match o {
        Outcome::Charge { priced, .. } => Some(priced.offers[0].requirements.amount.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn people_read_free_where_the_rule_says_so_and_crawlers_pay_their_price() {
    let w = World::new();
    let rule = RuleAction::Pay(price(10_000, Some("0.01")));
    let access = by_audience(
        RuleAction::Free,
        RuleAction::Pay(price(5_000, Some("0.005"))),
    );
    let (o, s) = w.decide(&rule, &access, &BROWSER).await;
    assert!(matches!(o, Outcome::Forward(Forwarded::Free)), "{o:?}");
    assert_eq!(s.audience_label(), "human");
    let (o, s) = w.decide(&rule, &access, &GPTBOT).await;
    assert_eq!(charged(&o).as_deref(), Some("5000"));
    assert_eq!(s.crawler_usd, Some("0.005".parse().expect("usd")));
    // Anyone else pays the rule's own price.
    let (o, _) = w.decide(&rule, &access, &SCRIPT).await;
    assert_eq!(charged(&o).as_deref(), Some("10000"));
}

#[tokio::test]
async fn a_blocked_audience_is_refused_and_a_blocked_crawler_gets_the_crawler_code() {
    let w = World::new();
    let rule = RuleAction::Pay(price(10_000, Some("0.01")));
    let access = by_audience(RuleAction::Block, RuleAction::Block);
    let (o, _) = w.decide(&rule, &access, &BROWSER).await;
    assert!(matches!(o, Outcome::Refused(Refusal::Blocked)), "{o:?}");
    let (o, _) = w.decide(&rule, &access, &GPTBOT).await;
    assert!(
        matches!(
            o,
            Outcome::Refused(Refusal::Crawler(CrawlerPriceError::Forbidden))
        ),
        "{o:?}"
    );
}

#[tokio::test]
async fn a_crawler_whose_ceiling_is_below_the_price_is_refused_before_any_payment() {
    let w = World::new();
    let rule = RuleAction::Pay(price(10_000, Some("0.01")));
    let mut headers = GPTBOT.to_vec();
    headers.push(("crawler-max-price", "USD 0.001"));
    let (o, _) = w.decide(&rule, &RuleAccess::default(), &headers).await;
    assert!(
        matches!(
            o,
            Outcome::Refused(Refusal::Crawler(CrawlerPriceError::AboveMax))
        ),
        "{o:?}"
    );
}

#[tokio::test]
async fn a_pass_admits_until_its_quota_is_used_then_the_request_is_charged() {
    let w = World::new();
    let rule = RuleAction::Pay(price(10_000, None));
    let token = w.pass(2);
    let headers = [("x402-pass", token.as_str())];
    for left in [1u32, 0] {
        let (o, s) = w.decide(&rule, &RuleAccess::default(), &headers).await;
        assert!(matches!(o, Outcome::Forward(Forwarded::Pass)), "{o:?}");
        assert_eq!(s.admitted.and_then(|a| a.remaining), Some(left));
    }
    let (o, _) = w.decide(&rule, &RuleAccess::default(), &headers).await;
    match o {
        Outcome::Charge { pass_error, .. } => assert_eq!(pass_error, Some(PassError::Exhausted)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_revoked_pass_is_refused_at_once() {
    let w = World::new();
    let rule = RuleAction::Pay(price(10_000, None));
    let token = w.pass(0);
    let id = pass::verify(&w.keys, &token, pass::unix_now())
        .expect("valid")
        .id;
    w.access.revoke(&id).await.expect("revoke");
    let (o, _) = w
        .decide(&rule, &RuleAccess::default(), &[("x402-pass", &token)])
        .await;
    match o {
        Outcome::Charge { pass_error, .. } => assert_eq!(pass_error, Some(PassError::Revoked)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn shadow_mode_forwards_and_says_what_it_would_have_done() {
    let w = World::new();
    let rule = RuleAction::Pay(price(10_000, None));
    let access = RuleAccess {
        shadow: true,
        ..RuleAccess::default()
    };
    let (o, s) = w.decide(&rule, &access, &SCRIPT).await;
    assert!(matches!(o, Outcome::Forward(Forwarded::Shadow)), "{o:?}");
    assert_eq!(s.shadow, Some("charge"));
    // Looking through a pass in shadow mode never uses its quota.
    let token = w.pass(1);
    let (_, s) = w.decide(&rule, &access, &[("x402-pass", &token)]).await;
    assert_eq!(s.shadow, Some("pass"));
    let (o, _) = w
        .decide(&rule, &RuleAccess::default(), &[("x402-pass", &token)])
        .await;
    assert!(matches!(o, Outcome::Forward(Forwarded::Pass)), "{o:?}");
}

#[tokio::test]
async fn a_user_agent_alone_never_earns_a_verified_price() {
    let w = World::new();
    let rule = RuleAction::Pay(price(10_000, None));
    let access = RuleAccess {
        audiences: Some(Arc::new(AudiencePrices {
            verified: Some(RuleAction::Free),
            ..AudiencePrices::default()
        })),
        ..RuleAccess::default()
    };
    // A signature header with no trusted agent configured proves nothing.
    let headers = [
        ("user-agent", "SignedBot/1.0"),
        ("signature-agent", "\"https://bots.example\""),
    ];
    let (o, s) = w.decide(&rule, &access, &headers).await;
    assert_eq!(charged(&o).as_deref(), Some("10000"));
    assert_ne!(s.audience_label(), "verified");
}
