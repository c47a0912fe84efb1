//! Fuzzes pass tokens a client presents: extraction from headers and cookies, then signature,
//! payload and time checks under HMAC-SHA256 and Ed25519 keys. Nothing may panic, and a token
//! that verifies must be exactly the token the key signs for its claims (no malleable form).
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use x402_gateway::access::pass::{self, Algorithm, Claims, KeyMaterial, PassKeys, ScopeKind};

const NOW: u64 = 1_800_000_000;

fn keys(alg: Algorithm) -> &'static PassKeys {
    static HMAC: OnceLock<PassKeys> = OnceLock::new();
    static ED: OnceLock<PassKeys> = OnceLock::new();
    let (cell, material) = match alg {
        Algorithm::HmacSha256 => (&HMAC, KeyMaterial::Hmac(b"fuzz-pass-key-0123456789abcdef-0123".to_vec())),
        Algorithm::Ed25519 => (&ED, KeyMaterial::Ed25519Private([9u8; 32])),
    };
    cell.get_or_init(|| {
        PassKeys::new(alg, vec![("k1".into(), material)], Some("k1"), "x402_pass".into(), HashSet::new())
            .expect("keys")
    })
}

fn check(keys: &PassKeys, token: &str) {
    if let Ok(claims) = pass::verify(keys, token, NOW) {
        assert_eq!(
            pass::mint(keys, &claims).as_deref(),
            Some(token),
            "a token that verifies must be the one the key signs"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let keys = keys(if selector & 1 == 0 { Algorithm::HmacSha256 } else { Algorithm::Ed25519 });

    // The bytes as a token, as sent.
    check(keys, &String::from_utf8_lossy(rest));

    // A genuine token with byte edits driven by the input: (position, value) pairs.
    if selector & 2 != 0 {
        let claims = Claims {
            id: "fuzz".into(),
            rule: "articles".into(),
            host: "example.com".into(),
            scope: ScopeKind::Prefix,
            path: "/articles".into(),
            methods: 0,
            iat: NOW - 10,
            exp: NOW + 3_600,
            max_requests: 3,
            payer: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            paid: Some(pass::Paid {
                network: "eip155:8453".into(),
                asset: "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913".into(),
                amount: 10_000,
            }),
        };
        let mut bytes = pass::mint(keys, &claims).expect("mint").into_bytes();
        for edit in rest.chunks_exact(2) {
            let at = edit[0] as usize * bytes.len() / 256;
            bytes[at] = edit[1];
        }
        if let Ok(token) = String::from_utf8(bytes) {
            check(keys, &token);
        }
    }

    // Extraction from the places a request can carry one.
    if let Ok(v) = http::HeaderValue::from_bytes(rest) {
        let mut h = http::HeaderMap::new();
        h.append("x402-pass", v.clone());
        h.append(http::header::AUTHORIZATION, v.clone());
        h.append(http::header::COOKIE, v);
        for token in pass::presented(&h, "x402_pass") {
            check(keys, token);
        }
        if let Ok(s) = std::str::from_utf8(rest) {
            let _ = pass::cookie_without(s, "x402_pass");
        }
    }
});
