//! Fuzzes the payment header path a client controls: header lookup, strict base64, JSON,
//! version agreement, requirement matching, the local `exact` (EIP-3009) and `upto` (Permit2)
//! checks, the `payment-identifier` extension, and the Sign-In-With-X header. Nothing may
//! panic, and anything accepted must match one of the offers exactly.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use x402_gateway::payment::decode::{self, Found};
use x402_gateway::access::siwx;
use x402_gateway::schemes::{self, EXACT, Scheme, UPTO, evm_exact};
use x402_gateway::x402::challenge::Priced;
use x402_gateway::x402::networks::Asset;

fn priced() -> &'static Priced {
    static P: OnceLock<Priced> = OnceLock::new();
    P.get_or_init(|| {
        let asset = Arc::new(Asset {
            id: "tusd".into(),
            network: "eip155:31337".into(),
            address: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            eip712_name: "Test USD".into(),
            eip712_version: "1".into(),
            decimals: 6,
            usd: true,
        });
        let pay_to = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
        let exact = EXACT.offer(asset.clone(), Some("anvil".into()), 10_000, pay_to, 300);
        let mut upto = UPTO.offer(asset, None, 50_000, pay_to, 300);
        upto.requirements.extra.insert(
            schemes::evm_upto::FACILITATOR_ADDRESS.into(),
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".into(),
        );
        Priced::new(vec![exact, upto], "fuzz".into(), "application/json".into())
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let version = if selector & 1 == 0 { 2 } else { 1 };
    let p = priced();
    // Raw header bytes, and the same bytes as a JSON payload behind valid base64.
    let encoded = x402_gateway::x402::codec::encode(rest);
    for value in [rest, encoded.as_bytes()] {
        if let Ok(d) = decode::decode(Found { version, value }, p, 16 * 1024) {
            let offer = &p.offers[d.offer];
            assert_eq!(d.version, version);
            let token = offer.requirements.asset.parse().expect("asset");
            let domain = evm_exact::domain("Test USD", "1", 31337, token);
            let _ = evm_exact::check(&d.payload, &offer.requirements, &domain, 1_800_000_000);
            if let Some(scheme) = schemes::by_id(&offer.requirements.scheme) {
                let _ = scheme.check(&d.payload, offer, 1_800_000_000);
            }
            let _ = x402_gateway::x402::extensions::payment_identifier(d.extensions.as_ref());
        }
    }
    // The same bytes as a sign-in header.
    let expect = siwx::Expect {
        origin: "https://api.example.com",
        path: "/premium",
        chains: &[31337],
    };
    let _ = siwx::verify(rest, &expect, std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000));
    let _ = siwx::verify(encoded.as_bytes(), &expect, std::time::SystemTime::now());
    // The header lookup on a real header map.
    if let Ok(v) = http::HeaderValue::from_bytes(rest) {
        let mut h = http::HeaderMap::new();
        h.append("payment-signature", v.clone());
        if selector & 2 == 0 {
            h.append("x-payment", v);
        }
        let _ = decode::find(&h);
    }
});
