//! Fuzzes request path normalization: no panic, and the canonical form is stable (normalizing
//! it again changes nothing) and free of dot segments, empty segments and control bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x402_gateway::pathnorm::{canonical_path, match_key};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(c) = canonical_path(s) else { return };
    let again = canonical_path(&c).expect("a canonical path stays valid");
    assert_eq!(again.as_ref(), c.as_ref(), "canonical form is a fixed point");
    assert!(c.starts_with('/'));
    assert!(!c.contains("//"), "{c}");
    assert!(!c.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\'), "{c}");
    for seg in c.split('/') {
        assert!(seg != "." && seg != "..", "{c}");
    }
    for case_sensitive in [false, true] {
        let k = match_key(&c, case_sensitive);
        assert!(k.starts_with('/'));
        assert!(k.len() == 1 || !k.ends_with('/'), "{k}");
    }
});
