//! Passes: the `[passes]` key set (algorithm, `${VAR}` secrets or public keys, signing key,
//! cookie, revocations) and the checks a rule's pass policy is built from: its lifetime, its
//! cookie path, and a prefix pass lying inside the rule that sells it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use toml::Spanned;

use crate::access::pass::{self, Algorithm, KeyMaterial, PassKeys};
use crate::config::access_file::PassesSection;
use crate::config::{Reporter, env};

fn id_like(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// 32 bytes from base64 (standard or url-safe, padded or not) or hex.
fn key_bytes(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let decoded = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(s).ok()?
    } else {
        let e = base64::engine::general_purpose::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let url = base64::engine::general_purpose::GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        e.decode(s).or_else(|_| url.decode(s)).ok()?
    };
    decoded.try_into().ok()
}

/// `[passes]` → the key set. Secrets come from `${VAR}` and are never printed.
pub(super) fn passes(
    rep: &mut Reporter,
    cfg: usize,
    s: Option<&PassesSection>,
) -> Option<Arc<PassKeys>> {
    let s = s?;
    let before = rep.issues.len();
    let algorithm = match s.algorithm.get_ref().as_str() {
        "hmac-sha256" => Algorithm::HmacSha256,
        "ed25519" => Algorithm::Ed25519,
        other => {
            rep.at(
                cfg,
                s.algorithm.span(),
                "passes.algorithm",
                format!("unknown algorithm `{other}`, expected `hmac-sha256` or `ed25519`"),
            );
            return None;
        }
    };
    if s.keys.is_empty() {
        rep.file(
            &rep.sources[cfg].path.clone(),
            "passes.keys",
            "at least one `[[passes.keys]]` is required",
        );
    }
    let mut ids: HashMap<&str, std::ops::Range<usize>> = HashMap::new();
    let mut keys = Vec::new();
    for k in &s.keys {
        let id = k.id.get_ref();
        if !id_like(id) {
            rep.at(
                cfg,
                k.id.span(),
                "passes.keys.id",
                "use letters, digits, '-' and '_'",
            );
        }
        if let Some(first) = ids.insert(id, k.id.span()) {
            let at = rep.where_is(cfg, first);
            rep.at(
                cfg,
                k.id.span(),
                "passes.keys.id",
                format!("duplicate key id, first at {at}"),
            );
        }
        let secret = k.secret.as_ref().and_then(|v| {
            env::expand(v.get_ref())
                .map_err(|e| rep.at(cfg, v.span(), "passes.keys.secret", e))
                .ok()
                .map(|s| (s, v.span()))
        });
        let material = match (algorithm, secret, &k.public_key) {
            (Algorithm::HmacSha256, Some((secret, span)), None) => {
                if secret.expose().len() < 32 {
                    rep.at(
                        cfg,
                        span,
                        "passes.keys.secret",
                        "an HMAC secret needs at least 32 bytes",
                    );
                    continue;
                }
                KeyMaterial::Hmac(secret.expose().as_bytes().to_vec())
            }
            (Algorithm::HmacSha256, _, Some(p)) => {
                rep.at(
                    cfg,
                    p.span(),
                    "passes.keys.public_key",
                    "public keys are for `ed25519`; HMAC keys are `secret`s",
                );
                continue;
            }
            (Algorithm::Ed25519, Some((secret, span)), None) => match key_bytes(secret.expose()) {
                Some(seed) => KeyMaterial::Ed25519Private(seed),
                None => {
                    rep.at(
                        cfg,
                        span,
                        "passes.keys.secret",
                        "an Ed25519 private key is 32 bytes, base64 or hex",
                    );
                    continue;
                }
            },
            (Algorithm::Ed25519, None, Some(p)) => match key_bytes(p.get_ref()) {
                Some(pk) => KeyMaterial::Ed25519Public(pk),
                None => {
                    rep.at(
                        cfg,
                        p.span(),
                        "passes.keys.public_key",
                        "an Ed25519 public key is 32 bytes, base64 or hex",
                    );
                    continue;
                }
            },
            (Algorithm::Ed25519, Some((_, span)), Some(_)) => {
                rep.at(
                    cfg,
                    span,
                    "passes.keys",
                    "give `secret` or `public_key`, not both",
                );
                continue;
            }
            (_, None, None) => {
                if k.secret.is_none() {
                    rep.at(
                        cfg,
                        k.id.span(),
                        "passes.keys",
                        "a key needs `secret` (or `public_key` for ed25519)",
                    );
                }
                continue;
            }
        };
        keys.push((id.clone(), material));
    }
    let signing = s.signing_key.as_ref().map(|k| k.get_ref().as_str());
    if let Some(sk) = &s.signing_key {
        let found = s.keys.iter().find(|k| k.id.get_ref() == sk.get_ref());
        match found {
            None => rep.at(
                cfg,
                sk.span(),
                "passes.signing_key",
                format!("no `[[passes.keys]]` has id `{}`", sk.get_ref()),
            ),
            Some(k) if k.secret.is_none() => rep.at(
                cfg,
                sk.span(),
                "passes.signing_key",
                "the signing key needs a `secret` (a public key cannot sign)",
            ),
            _ => {}
        }
    }
    let cookie = s
        .cookie
        .as_ref()
        .map_or_else(|| "x402_pass".to_owned(), |c| c.get_ref().clone());
    if let Some(c) = &s.cookie
        && !id_like(c.get_ref())
    {
        rep.at(
            cfg,
            c.span(),
            "passes.cookie",
            "use letters, digits, '-' and '_'",
        );
    }
    let revoked: HashSet<String> = s.revoked.iter().map(|r| r.get_ref().clone()).collect();
    if rep.issues.len() > before {
        return None;
    }
    match PassKeys::new(algorithm, keys, signing, cookie, revoked) {
        Ok(k) => Some(Arc::new(k)),
        Err(e) => {
            rep.file(&rep.sources[cfg].path.clone(), "passes", e);
            None
        }
    }
}

/// The literal leading part of a rule's path pattern, for a pass cookie's `Path`.
pub(super) fn literal_prefix(pattern: &str) -> String {
    let mut out = String::new();
    for seg in pattern.split('/').skip(1) {
        if seg.contains('*') || seg.is_empty() {
            break;
        }
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() { "/".into() } else { out }
}

/// Whether every path under a pass `prefix` (routing-key form) is one the rule's `pattern`
/// matches: the pattern must cover a whole subtree (`/a/**`, or `prefix = "/a/"`) and the
/// prefix must lie inside it.
pub(super) fn prefix_inside(
    prefix: &str,
    pattern: &str,
    case_sensitive: bool,
) -> Result<(), String> {
    let Some(base) = pattern
        .strip_suffix("/**")
        .or_else(|| (pattern == "/**").then_some(""))
    else {
        return Err(format!(
            "a prefix pass needs a rule whose path covers a whole subtree (`prefix = \"/…/\"` or `path = \"/…/**\"`); `{pattern}` does not"
        ));
    };
    if base.contains('*') {
        return Err(format!(
            "a prefix pass needs a rule whose path is a literal subtree; `{pattern}` has wildcards before `/**`"
        ));
    }
    let base_key = crate::pathnorm::match_key(base, case_sensitive);
    if !pass::under_prefix(prefix, &format!("{base_key}/")) {
        return Err(format!(
            "must lie inside the rule's path `{pattern}`: a pass for `{prefix}` would open paths this rule does not price"
        ));
    }
    Ok(())
}

/// A pass lifetime: a number of seconds or a duration like `"1h"`, at most 30 days.
pub(super) fn ttl(v: &Spanned<toml::Value>) -> Result<Duration, String> {
    let d = match v.get_ref() {
        toml::Value::Integer(i) if *i > 0 => Duration::from_secs(*i as u64),
        toml::Value::String(s) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("`{s}` is not a duration like \"1h\" or \"30m\": {e}"))?,
        _ => return Err("expected a duration like \"1h\" or a number of seconds".into()),
    };
    if d < Duration::from_secs(1) || d > pass::MAX_TTL {
        return Err("must be between 1 second and 30 days".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_prefix("/images/**/*.jpg"), "/images");
        assert_eq!(literal_prefix("/reports/**"), "/reports");
        assert_eq!(literal_prefix("/**"), "/");
        assert_eq!(literal_prefix("/api/weather"), "/api/weather");
        assert_eq!(literal_prefix("/"), "/");
    }

    #[test]
    fn prefix_passes_lie_inside_their_rule() {
        assert!(prefix_inside("/articles/", "/articles/**", false).is_ok());
        assert!(prefix_inside("/articles/2026/", "/articles/**", false).is_ok());
        assert!(prefix_inside("/articles", "/articles/**", false).is_ok());
        assert!(prefix_inside("/anything/", "/**", false).is_ok());
        assert!(prefix_inside("/", "/**", false).is_ok());
        // Wider than the rule, beside it, or a rule that is no subtree.
        assert!(prefix_inside("/", "/articles/**", false).is_err());
        assert!(prefix_inside("/art/", "/articles/**", false).is_err());
        assert!(prefix_inside("/articlesx/", "/articles/**", false).is_err());
        assert!(prefix_inside("/api/weather", "/api/weather", false).is_err());
        assert!(prefix_inside("/img/", "/img/*.png", false).is_err());
        assert!(prefix_inside("/a/x/", "/a/*/**", false).is_err());
        // Routing keys are lower case unless rules are case-sensitive.
        assert!(prefix_inside("/articles/", "/Articles/**", false).is_ok());
        assert!(prefix_inside("/articles/", "/Articles/**", true).is_err());
    }

    #[test]
    fn key_encodings() {
        let k = [7u8; 32];
        assert_eq!(key_bytes(&hex::encode(k)), Some(k));
        assert_eq!(
            key_bytes(&base64::engine::general_purpose::STANDARD.encode(k)),
            Some(k)
        );
        assert_eq!(
            key_bytes(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k)),
            Some(k)
        );
        assert_eq!(key_bytes("short"), None);
    }
}
