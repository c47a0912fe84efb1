//! Pass verification speed: the work a request carrying a pass costs the gateway (HMAC-SHA256
//! and Ed25519, the bare signature check and the full admission with scope and quota).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmarks: a failed set-up step ends the run"
)]

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::HeaderMap;
use x402_gateway::access::pass::{
    self, Algorithm, Claims, KeyMaterial, PassEngine, PassKeys, ScopeKind, Target,
};
use x402_gateway::router::Methods;
use x402_gateway::state::MemoryStore;

fn claims(max_requests: u32) -> Claims {
    let now = pass::unix_now();
    Claims {
        id: pass::new_id(),
        rule: "articles".into(),
        host: "example.com".into(),
        scope: ScopeKind::Prefix,
        path: "/articles".into(),
        methods: Methods::bit("GET"),
        iat: now,
        exp: now + 3_600,
        max_requests,
        payer: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
        paid: None,
    }
}

fn keys(alg: Algorithm) -> PassKeys {
    let material = match alg {
        Algorithm::HmacSha256 => {
            KeyMaterial::Hmac(b"bench-pass-key-0123456789abcdef-0123".to_vec())
        }
        Algorithm::Ed25519 => KeyMaterial::Ed25519Private([7u8; 32]),
    };
    PassKeys::new(
        alg,
        vec![("k1".into(), material)],
        Some("k1"),
        "x402_pass".into(),
        HashSet::new(),
    )
    .expect("keys")
}

fn bench(c: &mut Criterion) {
    let target = Target {
        host: "example.com",
        rule: "articles",
        key: "/articles/2026/11/some-story",
        method: Methods::bit("GET"),
        price: &[],
        honours: &[],
    };
    let mut g = c.benchmark_group("pass");
    g.throughput(Throughput::Elements(1));
    for (name, alg) in [
        ("hmac-sha256", Algorithm::HmacSha256),
        ("ed25519", Algorithm::Ed25519),
    ] {
        let k = keys(alg);
        let token = pass::mint(&k, &claims(0)).expect("mint");
        let now = pass::unix_now();
        g.bench_function(format!("{name}/verify"), |b| {
            b.iter(|| pass::verify(&k, black_box(&token), now).expect("valid"))
        });
        // What a request pays: find the token in the headers, verify it (once, then from the
        // verified-token cache), check revocation, scope and method, count it against the
        // quota in the (in-memory) state store.
        let engine = PassEngine::default();
        let store = MemoryStore::default();
        let limited = pass::mint(&k, &claims(u32::MAX)).expect("mint");
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            format!("theme=dark; x402_pass={limited}")
                .parse()
                .expect("v"),
        );
        g.bench_function(format!("{name}/admit_with_quota"), |b| {
            b.iter(|| {
                let tokens = pass::presented(black_box(&headers), "x402_pass");
                // The in-memory store never waits: the future is ready on its first poll.
                engine
                    .admit(&k, &store, &tokens, &target, true)
                    .now_or_never()
                    .expect("ready")
                    .expect("admitted")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
