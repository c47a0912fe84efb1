//! Fuzzes request target classification and path normalization with raw request targets: no
//! panic; an accepted target is origin-form (its path starts with `/`), http(s) absolute-form
//! with a non-empty authority, or `*` for `OPTIONS` only; and the canonical form of its path
//! is stable (normalizing it again changes nothing) and free of dot segments, empty segments,
//! backslashes and control bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x402_gateway::pathnorm::{
    TargetForm, canonical_path, is_authority_byte, match_key, parse_target,
};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the method (OPTIONS or another); the rest is the raw target.
    let Some((&first, raw)) = data.split_first() else {
        return;
    };
    let options = first & 1 == 1;
    let Ok(target) = parse_target(raw, options) else {
        return;
    };
    match target.form {
        TargetForm::Asterisk => {
            assert!(options, "`*` accepted for a method other than OPTIONS");
            assert_eq!(target.path, "*");
            return;
        }
        TargetForm::Origin => {
            assert!(raw.first() == Some(&b'/'), "origin-form without a leading slash");
            assert!(target.authority.is_none());
        }
        TargetForm::Absolute => {
            let lower = String::from_utf8_lossy(raw).to_ascii_lowercase();
            assert!(
                lower.starts_with("http://") || lower.starts_with("https://"),
                "absolute-form with another scheme: {lower}"
            );
            let authority = target.authority.unwrap_or("");
            assert!(!authority.is_empty(), "absolute-form without a host");
            assert!(
                authority.bytes().all(is_authority_byte),
                "authority {authority:?}"
            );
        }
    }
    assert!(target.path.starts_with('/'), "{:?}", target.path);
    let Ok(c) = canonical_path(target.path) else {
        return;
    };
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
