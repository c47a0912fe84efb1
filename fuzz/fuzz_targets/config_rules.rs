//! Fuzzes the configuration reader with an arbitrary rules file next to a fixed valid
//! gateway.toml: every input is either compiled or reported, never a panic, and every
//! reported problem carries a location.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;

const GATEWAY: &str = r#"
[server]
listen = ["127.0.0.1:0"]
[upstreams.origin]
peers = ["127.0.0.1:9"]
[payment]
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
networks = ["base-sepolia"]
"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let rules = vec![(PathBuf::from("rules/fuzz.toml"), text.to_owned())];
    if let Err(issues) = x402_gateway::config::load_from_texts(Path::new("gateway.toml"), GATEWAY, &rules) {
        assert!(!issues.0.is_empty());
        for i in &issues.0 {
            assert!(i.line >= 1 && i.col >= 1, "{i}");
        }
    }
});
