//! Fuzzes the `batch-settlement` payloads a client controls and the channel records the state
//! store hands back: the payload checks (configuration, channel id, voucher signature, deposit
//! and refund amounts), a channel's turn and a refund's turn against a known record, the
//! record's decoder, and the on-chain state a facilitator reports. Nothing may panic; a turn
//! taken charges exactly the price, and a refund's never more than the escrow not charged.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use x402_gateway::payment::channel::refund::take_refund_turn;
use x402_gateway::payment::channel::{ChannelRecord, OnChain, Turn, take_turn};
use x402_gateway::schemes::evm_batch::{self, Kind};
use x402_gateway::schemes::{BATCH, Scheme};
use x402_gateway::x402::challenge::Offer;
use x402_gateway::x402::networks::Asset;

const PRICE: u128 = 10_000;
const NOW: u64 = 1_800_000_000_000;

fn offer() -> &'static Offer {
    static O: OnceLock<Offer> = OnceLock::new();
    O.get_or_init(|| {
        let asset = Arc::new(Asset {
            id: "tusd".into(),
            network: "eip155:31337".into(),
            address: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
            eip712_name: "Test USD".into(),
            eip712_version: "1".into(),
            decimals: 6,
            usd: true,
        });
        let mut o = BATCH.offer(asset, None, PRICE, "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", 300);
        o.requirements.extra.insert(
            evm_batch::RECEIVER_AUTHORIZER.into(),
            json!("0x976EA74026E726554dB657fA54763abd0C3a0aa9"),
        );
        o.requirements.extra.insert(evm_batch::WITHDRAW_DELAY.into(), json!(900));
        o
    })
}

fuzz_target!(|data: &[u8]| {
    let o = offer();
    let separator = o.eip712_separator.expect("separator");
    // Stored records and facilitator reports: decoded or refused, never a panic.
    if let Some(r) = ChannelRecord::decode(data) {
        let _ = (r.unclaimed(), r.ledgered_claimed(), r.channel_state(Some(&r.charged)));
        assert!(ChannelRecord::decode(&r.encode()).is_some());
    }
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let onchain = OnChain::read(&v).unwrap_or(OnChain {
        balance: 1_000_000,
        total_claimed: 20_000,
        withdraw_requested_at: 0,
        refund_nonce: 1,
    });
    let Ok(p) = evm_batch::check(&v, &o.requirements, &separator) else { return };
    assert_eq!(p.channel_id, p.config.id(&separator));
    let mut known = ChannelRecord::new(&p, &o.requirements);
    known.charged = "30000".into();
    known.signed_max = "30000".into();
    known.signature = "0x01".into();
    known.set_onchain(&onchain, NOW - 1_000);
    for current in [None, Some(&known)] {
        match p.kind {
            Kind::Refund { amount } => {
                if let Ok(t) = take_refund_turn(current, &p, amount, o, &onchain, "f", NOW) {
                    assert_eq!(t.charged, p.max_claimable);
                    assert!(t.amount > 0 && t.amount <= onchain.balance - t.charged);
                }
            }
            _ => {
                let turn = take_turn(current, &p, o, Some(&onchain), "f", NOW, Duration::from_secs(300));
                if let Ok(Turn::Taken(next)) = turn {
                    let pending = next.pending.as_ref().expect("a pending charge");
                    assert_eq!(pending.signed_max, p.max_claimable.to_string());
                    assert_eq!(next.charged() + PRICE, p.max_claimable);
                }
            }
        }
    }
});
