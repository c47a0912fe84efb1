//! Pre-signs x402 v2 `PAYMENT-SIGNATURE` header values for `benches/load.sh`: one valid
//! EIP-3009 authorization per line, each with its own nonce, for the offer of a 402 answer.
//!
//! `bench-payments --required PAYMENT-REQUIRED-VALUE --count N --out FILE [--valid-seconds S]
//!  [--key HEX] [--accept I] [--channels C]`
//!
//! For a `batch-settlement` offer, `--channels C` (default 1000) spreads the payments over C
//! channels of the key (salts 0..C): line k is the voucher of channel k mod C for the
//! (k div C + 1)-th request, cumulative amount (k div C + 1) x price. Sent in file order by
//! many connections at once, consecutive requests are on different channels and each channel
//! sees its vouchers in order.
//!
//! `--required` is the base64 `PAYMENT-REQUIRED` header of the gateway's 402 (its
//! `accepts[I]` is paid), `--valid-seconds` how long past now the authorizations stay valid
//! (default 3600; the rule's `max_timeout_seconds` must allow it). The key defaults to a
//! well-known development key: the facilitator of the load script never moves money.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark tool: a failed set-up step ends the run"
)]

use std::io::Write;

use alloy::primitives::{Address, B256, U256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use x402_gateway::schemes::evm_batch::{self, ChannelConfig};
use x402_gateway::schemes::evm_exact::{TransferWithAuthorization, domain, signing_hash};

/// Anvil's first development account: public knowledge, never holds real funds.
const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

struct Args {
    required: String,
    count: usize,
    out: String,
    valid_seconds: u64,
    key: String,
    accept: usize,
    channels: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-payments --required B64 --count N --out FILE [--valid-seconds S] [--key HEX] [--accept I] [--channels C]"
    );
    std::process::exit(2)
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("bench-payments: {msg}");
    std::process::exit(1)
}

fn parse_args() -> Args {
    let mut a = Args {
        required: String::new(),
        count: 0,
        out: String::new(),
        valid_seconds: 3600,
        key: DEV_KEY.to_owned(),
        accept: 0,
        channels: 1000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(k) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match k.as_str() {
            "--required" => a.required = v,
            "--count" => a.count = v.parse().unwrap_or_else(|_| usage()),
            "--out" => a.out = v,
            "--valid-seconds" => a.valid_seconds = v.parse().unwrap_or_else(|_| usage()),
            "--key" => a.key = v,
            "--accept" => a.accept = v.parse().unwrap_or_else(|_| usage()),
            "--channels" => a.channels = v.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if a.required.is_empty() || a.out.is_empty() || a.count == 0 || a.channels == 0 {
        usage()
    }
    a
}

fn str_field<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| fail(format!("the offer has no {ptr}")))
}

fn main() {
    let args = parse_args();
    let required: Value = STANDARD
        .decode(args.required.trim())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| fail("--required is not a base64 JSON PAYMENT-REQUIRED value"));
    let accepted = required
        .pointer(&format!("/accepts/{}", args.accept))
        .cloned()
        .unwrap_or_else(|| fail(format!("no accepts[{}] in the 402", args.accept)));
    let chain_id: u64 = str_field(&accepted, "/network")
        .strip_prefix("eip155:")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| fail("not an eip155 network"));
    let token: Address = str_field(&accepted, "/asset")
        .parse()
        .unwrap_or_else(|_| fail("bad asset address"));
    let to: Address = str_field(&accepted, "/payTo")
        .parse()
        .unwrap_or_else(|_| fail("bad payTo address"));
    let value: u128 = str_field(&accepted, "/amount")
        .parse()
        .unwrap_or_else(|_| fail("bad amount"));
    let key: PrivateKeySigner = args.key.parse().unwrap_or_else(|_| fail("bad --key"));
    if str_field(&accepted, "/scheme") == evm_batch::SCHEME {
        let vouchers = Vouchers::new(&accepted, key, chain_id, token, to, value, args.channels);
        return write_lines(&args, &|i| vouchers.line(i));
    }
    let separator = domain(
        str_field(&accepted, "/extra/name"),
        str_field(&accepted, "/extra/version"),
        chain_id,
        token,
    )
    .separator();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (valid_after, valid_before) = (now.saturating_sub(600), now + args.valid_seconds);
    // Nonces: 16 random bytes (distinct between runs) followed by a counter.
    let mut prefix = [0u8; 16];
    getrandom::fill(&mut prefix).unwrap_or_else(|e| fail(format!("no randomness: {e}")));
    let sign = |i: usize| -> String {
        let mut n = [0u8; 32];
        n[..16].copy_from_slice(&prefix);
        n[24..].copy_from_slice(&(i as u64).to_be_bytes());
        let nonce = B256::from(n);
        let msg = TransferWithAuthorization {
            from: key.address(),
            to,
            value: U256::from(value),
            validAfter: U256::from(valid_after),
            validBefore: U256::from(valid_before),
            nonce,
        };
        let sig = key
            .sign_hash_sync(&signing_hash(&separator, &msg))
            .unwrap_or_else(|e| fail(format!("signing: {e}")));
        let payment = json!({
            "x402Version": 2,
            "accepted": accepted,
            "payload": {
                "signature": format!("0x{}", hex::encode(sig.as_bytes())),
                "authorization": {
                    "from": key.address().to_checksum(None),
                    "to": to.to_checksum(None),
                    "value": value.to_string(),
                    "validAfter": valid_after.to_string(),
                    "validBefore": valid_before.to_string(),
                    "nonce": format!("{nonce:#x}"),
                }
            }
        });
        STANDARD.encode(payment.to_string())
    };
    write_lines(&args, &sign);
}

/// Signs `args.count` lines with `sign` on every core and writes them in order.
fn write_lines(args: &Args, sign: &(dyn Fn(usize) -> String + Sync)) {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = args.count.div_ceil(workers);
    let parts: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let sign = &sign;
                let range = (w * chunk)..((w + 1) * chunk).min(args.count);
                s.spawn(move || range.map(sign).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| fail("a signing thread panicked"))
            })
            .collect()
    });
    let file = std::fs::File::create(&args.out)
        .unwrap_or_else(|e| fail(format!("cannot write {}: {e}", args.out)));
    let mut w = std::io::BufWriter::new(file);
    for line in parts.iter().flatten() {
        writeln!(w, "{line}").unwrap_or_else(|e| fail(format!("write: {e}")));
    }
    w.flush().unwrap_or_else(|e| fail(format!("write: {e}")));
}

/// `batch-settlement` vouchers over many channels of one payer.
struct Vouchers {
    accepted: Value,
    key: PrivateKeySigner,
    separator: B256,
    configs: Vec<(ChannelConfig, B256)>,
    price: u128,
}

impl Vouchers {
    fn new(
        accepted: &Value,
        key: PrivateKeySigner,
        chain_id: u64,
        token: Address,
        receiver: Address,
        price: u128,
        channels: usize,
    ) -> Self {
        let separator = evm_batch::domain_separator(chain_id);
        let receiver_authorizer: Address = str_field(accepted, "/extra/receiverAuthorizer")
            .parse()
            .unwrap_or_else(|_| fail("bad extra.receiverAuthorizer"));
        let withdraw_delay = accepted
            .pointer("/extra/withdrawDelay")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| fail("the offer has no extra.withdrawDelay"));
        let configs = (0..channels)
            .map(|c| {
                let config = ChannelConfig {
                    payer: key.address(),
                    payer_authorizer: key.address(),
                    receiver,
                    receiver_authorizer,
                    token,
                    withdraw_delay,
                    salt: B256::from(U256::from(c)),
                };
                let id = config.id(&separator);
                (config, id)
            })
            .collect();
        Vouchers {
            accepted: accepted.clone(),
            key,
            separator,
            configs,
            price,
        }
    }

    /// Line `i`: channel `i mod C`'s voucher for its `(i div C + 1)`-th request.
    fn line(&self, i: usize) -> String {
        let (config, id) = &self.configs[i % self.configs.len()];
        let max = self.price * (i / self.configs.len() + 1) as u128;
        let sig = self
            .key
            .sign_hash_sync(&evm_batch::voucher_digest(&self.separator, id, max))
            .unwrap_or_else(|e| fail(format!("signing: {e}")));
        let payment = json!({
            "x402Version": 2,
            "accepted": self.accepted,
            "payload": {
                "type": "voucher",
                "channelConfig": config.to_json(),
                "voucher": {
                    "channelId": format!("{id:#x}"),
                    "maxClaimableAmount": max.to_string(),
                    "signature": format!("0x{}", hex::encode(sig.as_bytes())),
                },
            }
        });
        STANDARD.encode(payment.to_string())
    }
}
