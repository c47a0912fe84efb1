//! Fuzzes Web Bot Auth signature headers (`Signature-Input`, `Signature`, `Signature-Agent`)
//! and key directories: parsing, time and component checks, then verification against a
//! cached key. Nothing may panic; arbitrary headers never verify, and a genuine signature
//! whose headers were edited verifies only if the edit left what was signed unchanged.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use x402_gateway::access::webbotauth::{self, BotAuth, BotAuthConf, SignedRequest, TrustedAgent};

const AUTHORITY: &str = "example.com";
const AGENT: &str = "\"https://bot.example\"";

struct Fixture {
    conf: BotAuthConf,
    auth: BotAuth,
    ring_json: String,
    key: SigningKey,
    kid: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = SigningKey::from_bytes(&[42u8; 32]);
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#).as_bytes(),
        ));
        let agent = TrustedAgent {
            origin: "https://bot.example".into(),
            operator: "Example".into(),
            purpose: None,
            directory: format!("https://bot.example{}", webbotauth::DIRECTORY_PATH),
        };
        Fixture {
            conf: BotAuthConf { agents: vec![agent], ..Default::default() },
            auth: BotAuth::default(),
            ring_json: format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}]}}"#),
            key,
            kid,
        }
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Parses and verifies; true when the signature is accepted.
fn verify(f: &Fixture, headers: &http::HeaderMap, path: &str) -> bool {
    let req = SignedRequest {
        headers,
        authority: AUTHORITY,
        method: "GET",
        scheme: "https",
        path,
        query: None,
    };
    let Ok(parsed) = webbotauth::parse(&f.conf, &req, now()) else { return false };
    let ring = webbotauth::parse_directory(f.ring_json.as_bytes(), now()).expect("ring");
    f.auth.finish(&f.conf, parsed, &ring, "https://bot.example").is_ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let f = fixture();
    let _ = webbotauth::parse_directory(rest, now());

    // Arbitrary header values: never accepted (the fuzzer holds no key).
    let mut parts = rest.split(|b| *b == b'\n');
    let mut h = http::HeaderMap::new();
    for name in ["signature-input", "signature", "signature-agent"] {
        if let Some(v) = parts.next().and_then(|p| http::HeaderValue::from_bytes(p).ok()) {
            h.append(name, v);
        }
    }
    assert!(!verify(f, &h, "/articles/1"), "unsigned input verified");

    // A genuine signature (fresh nonce per input), its Signature-Input edited by the input.
    if selector & 1 != 0 {
        let t = now();
        let nonce = URL_SAFE_NO_PAD.encode(Sha256::digest(data));
        let params = format!(
            "(\"@authority\" \"signature-agent\");created={t};expires={};keyid=\"{}\";nonce=\"{nonce}\";tag=\"web-bot-auth\";alg=\"ed25519\"",
            t + 60,
            f.kid
        );
        let base = format!(
            "\"@authority\": {AUTHORITY}\n\"signature-agent\": {AGENT}\n\"@signature-params\": {params}"
        );
        let sig = STANDARD.encode(f.key.sign(base.as_bytes()).to_bytes());
        let mut input = format!("sig1={params}").into_bytes();
        let original = input.clone();
        for edit in rest.chunks_exact(2) {
            let at = edit[0] as usize * input.len() / 256;
            input[at] = edit[1];
        }
        let Ok(v) = http::HeaderValue::from_bytes(&input) else { return };
        let mut h = http::HeaderMap::new();
        h.insert("signature-input", v);
        h.insert("signature", format!("sig1=:{sig}:").parse().expect("sig"));
        h.insert("signature-agent", AGENT.parse().expect("agent"));
        if verify(f, &h, "/articles/1") && input != original {
            // Only edits that leave the signed parameters in place may pass.
            let edited = String::from_utf8_lossy(&input);
            assert!(
                edited.contains(&f.kid) && edited.contains(&nonce) && edited.contains(&t.to_string()),
                "edited signature input verified: {edited}"
            );
        }
    }
});
