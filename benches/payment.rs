//! The local payment path: decoding a v2 `PAYMENT-SIGNATURE` header, matching it to the rule's
//! offer, the EIP-3009 checks and EIP-712 signature recovery — everything the gate does before
//! the replay guard and the facilitator — and the rejection of a malformed header.
//!
//! Times are CPU time of the benchmarking thread (see support/cpu_time.rs).
//!
//! Targets: decode + checks + recovery ≥ 20 000/s on one core (< 50 µs); malformed header
//! rejected in < 5 µs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmarks: a failed set-up step ends the run"
)]

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, Signature, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolStruct;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/cpu_time.rs"]
mod cpu_time;
use cpu_time::CpuTime;
use http::{HeaderMap, HeaderValue};
use x402_gateway::access::RuleAction;
use x402_gateway::payment::decode;
use x402_gateway::schemes::evm_exact::{self, TransferWithAuthorization};
use x402_gateway::x402::codec;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[admin]
enabled = false

[upstreams.origin]
peers = ["127.0.0.1:9"]

[payment]
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
networks = ["base-sepolia"]

[reload]
watch = false

[ledger]
path = ""
"#;

const RULES: &str = r#"
[[rule]]
id = "weather"
path = "/api/weather"
price = "$0.01"
description = "Current weather report"
mime_type = "application/json"
"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn bench_payment(c: &mut Criterion<CpuTime>) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules dir");
    std::fs::write(dir.path().join("gateway.toml"), CONFIG).expect("config");
    std::fs::write(dir.path().join("rules/bench.toml"), RULES).expect("rules");
    let snap = x402_gateway::config::load(&dir.path().join("gateway.toml"), 1, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let RuleAction::Pay(priced) = &snap.rules[0].action else {
        panic!("rule is not priced")
    };
    let offer = &priced.offers[0];
    let req = &offer.requirements;
    let chain_id = snap
        .registry
        .network(&req.network)
        .expect("network")
        .chain_id;
    let token: Address = req.asset.parse().expect("asset");
    let domain = evm_exact::domain(
        &offer.asset.eip712_name,
        &offer.asset.eip712_version,
        chain_id,
        token,
    );

    // A payment signed the way x402 clients sign it.
    let key = PrivateKeySigner::random();
    let pay_to: Address = req.pay_to.parse().expect("pay_to");
    let t = now();
    let (valid_after, valid_before) = (t - 600, t + 240);
    let nonce = B256::repeat_byte(7);
    let value: u64 = req.amount.parse().expect("amount");
    let msg = TransferWithAuthorization {
        from: key.address(),
        to: pay_to,
        value: U256::from(value),
        validAfter: U256::from(valid_after),
        validBefore: U256::from(valid_before),
        nonce,
    };
    let hash = msg.eip712_signing_hash(&domain);
    let sig = key.sign_hash_sync(&hash).expect("sign");
    let payload = serde_json::json!({
        "x402Version": 2,
        "resource": {
            "url": "http://127.0.0.1/api/weather",
            "description": priced.description,
            "mimeType": priced.mime_type,
        },
        "accepted": req,
        "payload": {
            "signature": format!("0x{}", hex::encode(sig.as_bytes())),
            "authorization": {
                "from": key.address().to_checksum(None),
                "to": pay_to.to_checksum(None),
                "value": value.to_string(),
                "validAfter": valid_after.to_string(),
                "validBefore": valid_before.to_string(),
                "nonce": format!("{nonce:#x}"),
            }
        }
    });
    let header = codec::encode(payload.to_string().as_bytes());
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1"));
    headers.insert("user-agent", HeaderValue::from_static("x402-client/1.0"));
    headers.insert("accept", HeaderValue::from_static("application/json"));
    headers.insert(
        "payment-signature",
        HeaderValue::from_str(&header).expect("header"),
    );
    let limit = snap.payment.max_header_bytes;

    // What the gate does before the replay guard: find, decode, match, check, recover.
    let full = || {
        let found = decode::find(&headers).expect("find").expect("header");
        let decoded = decode::decode(found, priced, limit).expect("decode");
        let offer = &priced.offers[decoded.offer];
        let separator = offer.eip712_separator.expect("separator");
        evm_exact::check_with_separator(&decoded.payload, &offer.requirements, &separator, now())
            .expect("valid payment")
    };
    let checked = full();
    assert!(checked.signature_checked);
    assert_eq!(checked.payer, key.address().to_checksum(None));

    let mut g = c.benchmark_group("payment");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_check_recover", |b| b.iter(|| black_box(full())));
    g.bench_function("decode_match", |b| {
        b.iter(|| {
            let found = decode::find(black_box(&headers))
                .expect("find")
                .expect("header");
            black_box(decode::decode(found, priced, limit).expect("decode"))
        })
    });
    let sig = Signature::try_from(sig.as_bytes().as_slice()).expect("signature");
    g.bench_function("eip712_hash", |b| {
        b.iter(|| black_box(black_box(&msg).eip712_signing_hash(black_box(&domain))))
    });
    let separator = domain.separator();
    assert_eq!(offer.eip712_separator, Some(separator));
    assert_eq!(evm_exact::signing_hash(&separator, &msg), hash);
    g.bench_function("eip712_hash_cached_separator", |b| {
        b.iter(|| {
            black_box(evm_exact::signing_hash(
                black_box(&separator),
                black_box(&msg),
            ))
        })
    });
    // What the gateway's checks call: alloy's consensus crypto (libsecp256k1, low s only).
    g.bench_function("recover_gateway", |b| {
        b.iter(|| {
            black_box(
                alloy::consensus::crypto::secp256k1::recover_signer(
                    black_box(&sig),
                    black_box(hash),
                )
                .expect("recover"),
            )
        })
    });
    // The backend `recover_address_from_prehash` uses (libsecp256k1 when alloy's `secp256k1`
    // feature is on), then each backend explicitly.
    g.bench_function("recover_only", |b| {
        b.iter(|| {
            black_box(
                sig.recover_address_from_prehash(black_box(&hash))
                    .expect("recover"),
            )
        })
    });
    g.bench_function("recover_k256", |b| {
        b.iter(|| {
            let vk = sig.recover_from_prehash(black_box(&hash)).expect("recover");
            black_box(Address::from_public_key(&vk))
        })
    });
    g.bench_function("recover_secp256k1", |b| {
        b.iter(|| {
            let pk = sig
                .recover_from_prehash_secp256k1(black_box(&hash))
                .expect("recover");
            black_box(Address::from_raw_public_key(
                &pk.serialize_uncompressed()[1..],
            ))
        })
    });

    // Malformed headers: rejected before any JSON or crypto.
    let garbage = HeaderValue::from_static("!!not*base64%%{\"x402Version\":2}");
    let mut bad = HeaderMap::new();
    bad.insert("payment-signature", garbage);
    g.bench_function("reject_garbage_base64", |b| {
        b.iter(|| {
            let found = decode::find(black_box(&bad))
                .expect("find")
                .expect("header");
            black_box(decode::decode(found, priced, limit).is_err())
        })
    });
    let not_json =
        HeaderValue::from_str(&codec::encode(b"{\"x402Version\":2,\"accepted\":")).expect("header");
    let mut bad = HeaderMap::new();
    bad.insert("payment-signature", not_json);
    g.bench_function("reject_truncated_json", |b| {
        b.iter(|| {
            let found = decode::find(black_box(&bad))
                .expect("find")
                .expect("header");
            black_box(decode::decode(found, priced, limit).is_err())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = cpu_time::criterion();
    targets = bench_payment
}
criterion_main!(benches);
