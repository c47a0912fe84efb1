//! Reading the chain over JSON-RPC: token balances and EIP-3009 authorization state.

use serde_json::{Value, json};

use super::client;

/// One JSON-RPC call; panics unless it has a result.
pub async fn rpc(url: &str, method: &str, params: Value) -> Value {
    let v: Value = client()
        .post(url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .expect("rpc")
        .json()
        .await
        .expect("rpc json");
    v.get("result")
        .cloned()
        .unwrap_or_else(|| panic!("{method} failed: {v}"))
}

/// A JSON-RPC quantity (`"0x…"`) as an integer.
pub fn hex_u64(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().expect("hex").trim_start_matches("0x"), 16).expect("hex number")
}

/// The mined transaction count of the built-in settler's relayer ([`super::RELAYER`]).
pub async fn relayer_nonce(url: &str) -> u64 {
    hex_u64(
        &rpc(
            url,
            "eth_getTransactionCount",
            json!([super::RELAYER, "latest"]),
        )
        .await,
    )
}

async fn eth_call(url: &str, to: &str, data: String) -> String {
    let v = rpc(url, "eth_call", json!([{"to": to, "data": data}, "latest"])).await;
    v.as_str()
        .unwrap_or_else(|| panic!("eth_call: not a string: {v}"))
        .to_owned()
}

fn word(addr: &str) -> String {
    format!(
        "{:0>64}",
        addr.trim_start_matches("0x").to_ascii_lowercase()
    )
}

/// `balanceOf(addr)` of an ERC-20, as an integer.
pub async fn balance(rpc: &str, token: &str, addr: &str) -> u128 {
    let out = eth_call(rpc, token, format!("0x70a08231{}", word(addr))).await;
    let hex = out.trim_start_matches("0x");
    u128::from_str_radix(&hex[hex.len().saturating_sub(32)..], 16).expect("balance hex")
}

/// `authorizationState(authorizer, nonce)`.
pub async fn authorization_used(rpc: &str, token: &str, authorizer: &str, nonce: &str) -> bool {
    let out = eth_call(
        rpc,
        token,
        format!("0xe94a0102{}{}", word(authorizer), word(nonce)),
    )
    .await;
    out.ends_with('1')
}

/// The token's `Transfer` logs from `from`, over the whole chain: one per transfer the payer
/// made.
pub async fn transfers_from(url: &str, token: &str, from: &str) -> usize {
    let transfer = format!(
        "{:#x}",
        alloy::primitives::keccak256("Transfer(address,address,uint256)")
    );
    let logs = rpc(
        url,
        "eth_getLogs",
        json!([{
            "address": token,
            "fromBlock": "0x0",
            "toBlock": "latest",
            "topics": [transfer, format!("0x{}", word(from))],
        }]),
    )
    .await;
    logs.as_array().expect("logs").len()
}
