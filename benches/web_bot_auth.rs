//! Web Bot Auth verification with the agent's key directory already cached: parsing the
//! signature headers, rebuilding the signature base, the Ed25519 check and the replay record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmarks: a failed set-up step ends the run"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use x402_gateway::access::webbotauth::{self, BotAuth, BotAuthConf, SignedRequest, TrustedAgent};

const AUTHORITY: &str = "example.com";
const AGENT: &str = "\"https://bot.example\"";

struct Bot {
    key: SigningKey,
    kid: String,
    jwks: String,
}

fn bot() -> Bot {
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
    let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(
        format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#).as_bytes(),
    ));
    let jwks = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}]}}"#);
    Bot { key, kid, jwks }
}

/// Headers of a fresh signature (a new nonce each time, as real bots send).
fn signed(bot: &Bot, n: u64) -> HeaderMap {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let params = format!(
        "(\"@authority\" \"signature-agent\");created={now};expires={};keyid=\"{}\";nonce=\"bench-{n}\";tag=\"web-bot-auth\";alg=\"ed25519\"",
        now + 60,
        bot.kid
    );
    let base = format!(
        "\"@authority\": {AUTHORITY}\n\"signature-agent\": {AGENT}\n\"@signature-params\": {params}"
    );
    let sig = STANDARD.encode(bot.key.sign(base.as_bytes()).to_bytes());
    let mut h = HeaderMap::new();
    h.insert(
        "signature-input",
        format!("sig1={params}").parse().expect("v"),
    );
    h.insert("signature", format!("sig1=:{sig}:").parse().expect("v"));
    h.insert("signature-agent", AGENT.parse().expect("v"));
    h.insert(
        "user-agent",
        "Mozilla/5.0 (compatible; ExampleBot/1.0)"
            .parse()
            .expect("v"),
    );
    h
}

fn bench(c: &mut Criterion) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bot = bot();
    let agent = TrustedAgent {
        origin: "https://bot.example".into(),
        operator: "Example".into(),
        purpose: None,
        directory: format!("https://bot.example{}", webbotauth::DIRECTORY_PATH),
    };
    let conf = BotAuthConf {
        agents: vec![agent.clone()],
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let auth = BotAuth::default();
    let ring = webbotauth::parse_directory(bot.jwks.as_bytes(), 0).expect("jwks");
    rt.block_on(auth.prime(&agent, ring, Duration::from_secs(3_600)));
    let counter = Arc::new(AtomicU64::new(0));
    let next = || signed(&bot, counter.fetch_add(1, Ordering::Relaxed));

    let mut g = c.benchmark_group("web_bot_auth");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_cached_key", |b| {
        b.iter_batched(
            next,
            |h| {
                let req = SignedRequest {
                    headers: &h,
                    authority: AUTHORITY,
                    method: "GET",
                    scheme: "https",
                    path: "/articles/1",
                    query: None,
                };
                rt.block_on(auth.verify(&conf, black_box(&req)))
                    .expect("verified")
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
