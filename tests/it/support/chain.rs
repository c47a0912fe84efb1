//! Reading the chain over JSON-RPC: token balances and EIP-3009 authorization state.

use serde_json::{Value, json};

use super::client;

async fn eth_call(rpc: &str, to: &str, data: String) -> String {
    let v: Value = client()
        .post(rpc)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [{"to": to, "data": data}, "latest"]}))
        .send()
        .await
        .expect("rpc")
        .json()
        .await
        .expect("rpc json");
    v["result"]
        .as_str()
        .unwrap_or_else(|| panic!("eth_call failed: {v}"))
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
