//! Fuzzes the parsing of facilitator answers, which arrive from the network: no panic, and
//! only a literal `true` ever counts as valid or settled.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x402_gateway::facilitator::client::{parse_settle, parse_verify};

fuzz_target!(|data: &[u8]| {
    let status = 200;
    if let Ok(v) = parse_verify(status, data) {
        if v.valid() {
            let raw: serde_json::Value = serde_json::from_slice(data).expect("parsed before");
            assert_eq!(raw["isValid"], serde_json::Value::Bool(true));
        }
    }
    if let Ok(s) = parse_settle(status, data) {
        if s.succeeded() {
            let raw: serde_json::Value = serde_json::from_slice(data).expect("parsed before");
            assert_eq!(raw["success"], serde_json::Value::Bool(true));
            assert!(!s.transaction.is_empty());
        }
    }
});
