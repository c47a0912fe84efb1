//! Unit tests of passes: minting, verification, rotation, forgery, scopes, prices, quotas,
//! revocation, and where requests carry them.

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderMap;

use super::keys::*;
use super::*;
use crate::state::{MemoryStore, StateStore};

/// The engine with an in-memory state store, driven synchronously.
#[derive(Default)]
struct TestEngine {
    engine: PassEngine,
    store: MemoryStore,
}

impl TestEngine {
    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn admit(
        &self,
        keys: &PassKeys,
        tokens: &[&str],
        target: &Target<'_>,
        consume: bool,
    ) -> Result<Admitted, PassError> {
        Self::run(
            self.engine
                .admit(keys, &self.store, tokens, target, consume),
        )
    }

    fn revoke(&self, id: &str) {
        Self::run(self.store.revoke(id, unix_now() + 60)).expect("revoke");
    }

    fn claims(&self, keys: &PassKeys, token: &str, now: u64) -> Result<Arc<Claims>, PassError> {
        self.engine.claims(keys, token, now)
    }
}

fn hmac_keys(signing: &str) -> PassKeys {
    PassKeys::new(
        Algorithm::HmacSha256,
        vec![
            ("k1".into(), KeyMaterial::Hmac(vec![1u8; 32])),
            ("k2".into(), KeyMaterial::Hmac(vec![2u8; 32])),
        ],
        Some(signing),
        "x402_pass".into(),
        HashSet::new(),
    )
    .expect("keys")
}

fn single_key(algorithm: Algorithm, kid: &str, m: KeyMaterial, signs: bool) -> PassKeys {
    PassKeys::new(
        algorithm,
        vec![(kid.into(), m)],
        signs.then_some(kid),
        "x402_pass".into(),
        HashSet::new(),
    )
    .expect("keys")
}

#[test]
fn a_verified_token_does_not_outlive_its_key() {
    // The verified-token cache lives across reloads; a reload that drops a key, or binds
    // its id to another key, must end the passes that key signed at once.
    for algorithm in [Algorithm::Ed25519, Algorithm::HmacSha256] {
        let material = |b: u8| match algorithm {
            Algorithm::Ed25519 => KeyMaterial::Ed25519Private([b; 32]),
            Algorithm::HmacSha256 => KeyMaterial::Hmac(vec![b; 32]),
        };
        let old = single_key(algorithm, "k1", material(7), true);
        let engine = TestEngine::default();
        let now = unix_now();
        let token = mint(&old, &claims(ScopeKind::Rule, "/", now + 600, 0)).expect("mint");
        assert!(engine.claims(&old, &token, now).is_ok(), "{algorithm:?}");
        assert!(
            engine.claims(&old, &token, now).is_ok(),
            "{algorithm:?} cached"
        );

        let rebound = single_key(algorithm, "k1", material(8), true);
        assert_eq!(
            engine.claims(&rebound, &token, now).err(),
            Some(PassError::BadSignature),
            "{algorithm:?}: k1 now names another key"
        );
        let dropped = single_key(algorithm, "k2", material(7), true);
        assert_eq!(
            engine.claims(&dropped, &token, now).err(),
            Some(PassError::UnknownKey),
            "{algorithm:?}: k1 is gone"
        );
        // The old configuration still accepts it (from the cache).
        assert!(engine.claims(&old, &token, now).is_ok(), "{algorithm:?}");
    }
}

fn claims(scope: ScopeKind, path: &str, exp: u64, n: u32) -> Claims {
    Claims {
        id: new_id(),
        rule: "articles".into(),
        host: "example.com".into(),
        scope,
        path: path.into(),
        methods: Methods::bit("GET"),
        iat: unix_now(),
        exp,
        max_requests: n,
        payer: "0xabc".into(),
        paid: Some(Paid {
            network: "eip155:8453".into(),
            asset: "0xaa".into(),
            amount: 100,
        }),
    }
}

fn price(points: &[(&str, &str, u128)]) -> Vec<(String, String, u128)> {
    points
        .iter()
        .map(|(n, a, x)| (n.to_string(), a.to_string(), *x))
        .collect()
}

/// What every test target costs: exactly what [`claims`] paid.
static PRICE: std::sync::LazyLock<Vec<(String, String, u128)>> =
    std::sync::LazyLock::new(|| price(&[("eip155:8453", "0xaa", 100)]));

fn target<'a>(key: &'a str, rule: &'a str, method: &str) -> Target<'a> {
    Target {
        host: "example.com",
        rule,
        key,
        method: Methods::bit(method),
        price: &PRICE,
        honours: &[],
    }
}

#[test]
fn another_rule_honours_a_pass_only_at_no_higher_price() {
    let keys = hmac_keys("k1");
    let engine = TestEngine::default();
    let now = unix_now();
    let pre = mint(&keys, &claims(ScopeKind::Prefix, "/articles/", now + 60, 0)).expect("m");
    let at = |rule: &str, points: &[(&str, &str, u128)], honours: &[String]| {
        let points = price(points);
        let t = Target {
            price: &points,
            honours,
            ..target("/articles/premium/1", rule, "GET")
        };
        engine.admit(&keys, &[&pre], &t, false).map(|_| ())
    };
    // The rule that sold it: always, whatever it costs now.
    assert_eq!(at("articles", &[("eip155:8453", "0xaa", 500)], &[]), Ok(()));
    // Another rule at the same or a lower price in the same asset.
    assert_eq!(at("premium", &[("eip155:8453", "0xaa", 100)], &[]), Ok(()));
    assert_eq!(
        at(
            "premium",
            &[("eip155:1", "0xbb", 1), ("eip155:8453", "0xaa", 99)],
            &[]
        ),
        Ok(())
    );
    // Dearer, another asset or network, or free of offers: not covered.
    let insufficient = Err(PassError::Insufficient);
    assert_eq!(
        at("premium", &[("eip155:8453", "0xaa", 101)], &[]),
        insufficient
    );
    assert_eq!(
        at("premium", &[("eip155:8453", "0xbb", 1)], &[]),
        insufficient
    );
    assert_eq!(at("premium", &[("eip155:1", "0xaa", 1)], &[]), insufficient);
    assert_eq!(at("premium", &[], &[]), insufficient);
    assert_eq!(PassError::Insufficient.reason(), "pass_insufficient");
    // Unless that rule opts in, by name or for every rule.
    let dear = [("eip155:8453", "0xaa", 10_000)];
    assert_eq!(at("premium", &dear, &["articles".into()]), Ok(()));
    assert_eq!(at("premium", &dear, &["*".into()]), Ok(()));
    assert_eq!(at("premium", &dear, &["other".into()]), insufficient);
    // A pass that does not say what it paid is honoured by its own rule only.
    let mut unpriced = claims(ScopeKind::Prefix, "/articles/", now + 60, 0);
    unpriced.paid = None;
    let tok = mint(&keys, &unpriced).expect("m");
    let t = target("/articles/1", "premium", "GET");
    assert_eq!(
        engine.admit(&keys, &[&tok], &t, false).map(|_| ()),
        insufficient
    );
    let own = target("/articles/1", "articles", "GET");
    assert!(engine.admit(&keys, &[&tok], &own, false).is_ok());
}

#[test]
fn mint_verify_rotate_and_forge() {
    let now = unix_now();
    let c = claims(ScopeKind::Resource, "/articles/1", now + 60, 0);
    let old = hmac_keys("k1");
    let token = mint(&old, &c).expect("mint");
    assert!(token.starts_with("x402p1.k1."));
    // Rotation: the new signing key is k2; passes signed with k1 still verify.
    let new = hmac_keys("k2");
    assert_eq!(verify(&new, &token, now), Ok(c.clone()));
    let t2 = mint(&new, &c).expect("mint");
    assert!(t2.starts_with("x402p1.k2."));
    // Forgery: any change to the payload breaks the signature.
    let mut forged = c.clone();
    forged.max_requests = 1000;
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("x402p1.k1.{forged_payload}.{}", parts[3]);
    assert_eq!(verify(&new, &tampered, now), Err(PassError::BadSignature));
    // Unknown key, garbage, expiry.
    let other = PassKeys::new(
        Algorithm::HmacSha256,
        vec![("k9".into(), KeyMaterial::Hmac(vec![9u8; 32]))],
        Some("k9"),
        "x402_pass".into(),
        HashSet::new(),
    )
    .expect("keys");
    assert_eq!(verify(&other, &token, now), Err(PassError::UnknownKey));
    assert_eq!(verify(&new, "x402p1.k1", now), Err(PassError::Malformed));
    assert_eq!(verify(&new, "nope", now), Err(PassError::Malformed));
    assert_eq!(verify(&new, &token, now + 60), Err(PassError::Expired));
    assert_eq!(PassError::Expired.reason(), "pass_expired");
    assert_eq!(PassError::BadSignature.reason(), "pass_invalid");
}

#[test]
fn ed25519_passes_and_verify_only_keys() {
    let seed = [7u8; 32];
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let signer = PassKeys::new(
        Algorithm::Ed25519,
        vec![("e1".into(), KeyMaterial::Ed25519Private(seed))],
        Some("e1"),
        "p".into(),
        HashSet::new(),
    )
    .expect("keys");
    let verifier_only = PassKeys::new(
        Algorithm::Ed25519,
        vec![("e1".into(), KeyMaterial::Ed25519Public(public))],
        None,
        "p".into(),
        HashSet::new(),
    )
    .expect("keys");
    assert!(!verifier_only.can_sign());
    let now = unix_now();
    let c = claims(ScopeKind::Rule, "", now + 60, 2);
    let token = mint(&signer, &c).expect("mint");
    assert_eq!(verify(&verifier_only, &token, now), Ok(c.clone()));
    let engine = TestEngine::default();
    let t = target("/anything", "articles", "GET");
    // Cached after the first check; the quota still counts.
    assert_eq!(
        engine
            .admit(&verifier_only, &[&token], &t, true)
            .map(|a| a.remaining),
        Ok(Some(1))
    );
    assert_eq!(
        engine
            .admit(&verifier_only, &[&token], &t, true)
            .map(|a| a.remaining),
        Ok(Some(0))
    );
    assert_eq!(
        engine.admit(&verifier_only, &[&token], &t, true),
        Err(PassError::Exhausted)
    );
}

#[test]
fn scopes_methods_quota_and_revocation() {
    let keys = hmac_keys("k1");
    let engine = TestEngine::default();
    let now = unix_now();
    let res = mint(
        &keys,
        &claims(ScopeKind::Resource, "/articles/1", now + 60, 0),
    )
    .expect("m");
    let pre = mint(&keys, &claims(ScopeKind::Prefix, "/articles/", now + 60, 2)).expect("m");
    let ok = |tok: &str, key: &str, method: &str| {
        engine
            .admit(&keys, &[tok], &target(key, "other", method), false)
            .map(|_| ())
    };
    assert_eq!(ok(&res, "/articles/1", "GET"), Ok(()));
    assert_eq!(ok(&res, "/articles/1", "HEAD"), Ok(()));
    assert_eq!(ok(&res, "/articles/2", "GET"), Err(PassError::OutOfScope));
    assert_eq!(ok(&res, "/articles/1", "POST"), Err(PassError::OutOfScope));
    assert_eq!(ok(&pre, "/articles/2/x", "GET"), Ok(()));
    assert_eq!(ok(&pre, "/articles", "GET"), Ok(()));
    assert_eq!(ok(&pre, "/articlesx", "GET"), Err(PassError::OutOfScope));
    let mut other_host = target("/articles/1", "articles", "GET");
    other_host.host = "evil.com";
    assert_eq!(
        engine.admit(&keys, &[&res], &other_host, false).map(|_| ()),
        Err(PassError::OutOfScope)
    );
    // Quota: two requests, then exhausted; looking does not count.
    let t = target("/articles/9", "articles", "GET");
    assert!(engine.admit(&keys, &[&pre], &t, false).is_ok());
    assert!(engine.admit(&keys, &[&pre], &t, true).is_ok());
    assert!(engine.admit(&keys, &[&pre], &t, true).is_ok());
    assert_eq!(
        engine.admit(&keys, &[&pre], &t, true),
        Err(PassError::Exhausted)
    );
    // Of several tokens, the first that admits wins; else the most relevant error.
    assert!(
        engine
            .admit(
                &keys,
                &["garbage", &res],
                &target("/articles/1", "x", "GET"),
                true
            )
            .is_ok()
    );
    assert_eq!(
        engine.admit(&keys, &[&res, &pre], &t, true),
        Err(PassError::Exhausted)
    );
    // Runtime revocation.
    let id = verify(&keys, &res, now).expect("v").id;
    engine.revoke(&id);
    assert_eq!(ok(&res, "/articles/1", "GET"), Err(PassError::Revoked));
    // Configured revocation.
    let mut revoked = hmac_keys("k1");
    revoked.revoked.insert(id);
    assert_eq!(verify(&revoked, &res, now), Err(PassError::Revoked));
}

#[test]
fn presented_tokens_and_cookie_stripping() {
    let mut h = HeaderMap::new();
    h.append(
        "cookie",
        "a=1; x402_pass=x402p1.k.p.s; b=2".parse().expect("v"),
    );
    h.append("cookie", "x402_pass=\"x402p1.k.q.s\"".parse().expect("v"));
    h.append("authorization", "Bearer x402p1.k.r.s".parse().expect("v"));
    h.append("x402-pass", "x402p1.k.t.s".parse().expect("v"));
    assert_eq!(
        presented(&h, "x402_pass"),
        vec![
            "x402p1.k.t.s",
            "x402p1.k.r.s",
            "x402p1.k.p.s",
            "x402p1.k.q.s"
        ]
    );
    let mut api = HeaderMap::new();
    api.append("authorization", "Bearer some-api-key".parse().expect("v"));
    assert!(presented(&api, "x402_pass").is_empty());
    assert_eq!(
        cookie_without("a=1; x402_pass=t; b=2", "x402_pass"),
        Some("a=1; b=2".into())
    );
    assert_eq!(cookie_without("x402_pass=t", "x402_pass"), None);
    assert!(under_prefix("/a", "/"));
    assert_eq!(
        set_cookie("x402_pass", "t", "/articles", 3600, true),
        "x402_pass=t; Max-Age=3600; Path=/articles; HttpOnly; SameSite=Lax; Secure"
    );
}
