//! Compiles the audience and access configuration: the `[[crawler]]` list, `[web_bot_auth]`
//! trusted agents, `[passes]` keys, the `[paywall]` template, and each rule's audience prices,
//! operator prices, pass policy and mode. Every problem is recorded with its location.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use toml::Spanned;

use super::access_file::{ModeDef, PassesSection, PaywallSection, WebBotAuthSection};
use super::{ParsedCrawler, ParsedRule, Reporter, env};
use crate::access::audience::{AudiencePrices, Crawler, CrawlerSet};
use crate::access::pass::{self, Algorithm, KeyMaterial, PassKeys, PassPolicy, ScopeKind};
use crate::access::webbotauth::{self, BotAuthConf, TrustedAgent};
use crate::access::{RuleAccess, RuleAction};
use crate::router::Methods;
use crate::template::Template;

/// The built-in paywall page.
pub const DEFAULT_PAYWALL: &str = include_str!("../../templates/paywall.html");

fn id_like(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// `[web_bot_auth]` → trusted agents. Only `https://` origins, or `http://` for loopback hosts
/// listed explicitly; nothing else is ever fetched.
pub fn web_bot_auth(rep: &mut Reporter, cfg: usize, s: &WebBotAuthSection) -> BotAuthConf {
    let mut agents = Vec::new();
    let mut seen: HashMap<String, std::ops::Range<usize>> = HashMap::new();
    for a in &s.agents {
        let raw = a.origin.get_ref();
        let Some(origin) = webbotauth::origin_of(raw) else {
            rep.at(
                cfg,
                a.origin.span(),
                "web_bot_auth.agents.origin",
                format!("`{raw}` is not an http(s) origin"),
            );
            continue;
        };
        let path_ok = raw
            .trim()
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.path(), "" | "/") && u.query().is_none());
        if !path_ok {
            rep.at(
                cfg,
                a.origin.span(),
                "web_bot_auth.agents.origin",
                "give the origin only (`https://host`); set `directory_path` for another path",
            );
            continue;
        }
        if origin.starts_with("http://") && !webbotauth::is_loopback_origin(&origin) {
            rep.at(
                cfg,
                a.origin.span(),
                "web_bot_auth.agents.origin",
                "key directories are fetched over https (http:// only for loopback hosts)",
            );
            continue;
        }
        if let Some(first) = seen.insert(origin.clone(), a.origin.span()) {
            let at = rep.where_is(cfg, first);
            rep.at(
                cfg,
                a.origin.span(),
                "web_bot_auth.agents.origin",
                format!("duplicate agent, first at {at}"),
            );
            continue;
        }
        if a.operator.get_ref().trim().is_empty() {
            rep.at(
                cfg,
                a.operator.span(),
                "web_bot_auth.agents.operator",
                "must not be empty",
            );
            continue;
        }
        let path = match &a.directory_path {
            Some(p) if !p.get_ref().starts_with('/') || p.get_ref().contains(['?', '#']) => {
                rep.at(
                    cfg,
                    p.span(),
                    "web_bot_auth.agents.directory_path",
                    "must be a path starting with '/'",
                );
                continue;
            }
            Some(p) => p.get_ref().clone(),
            None => webbotauth::DIRECTORY_PATH.to_owned(),
        };
        agents.push(TrustedAgent {
            directory: format!("{origin}{path}"),
            origin: origin.into(),
            operator: a.operator.get_ref().trim().into(),
            purpose: a.purpose.as_ref().map(|p| *p.get_ref()),
        });
    }
    let path = rep.sources[cfg].path.clone();
    if s.min_cache_seconds == 0 || s.min_cache_seconds > s.max_cache_seconds {
        rep.file(
            &path,
            "web_bot_auth.min_cache_seconds",
            "must be at least 1 and at most max_cache_seconds",
        );
    }
    if s.max_validity_seconds == 0 {
        rep.file(
            &path,
            "web_bot_auth.max_validity_seconds",
            "must be at least 1",
        );
    }
    BotAuthConf {
        agents,
        min_cache: Duration::from_secs(s.min_cache_seconds.max(1)),
        max_cache: Duration::from_secs(s.max_cache_seconds.max(s.min_cache_seconds.max(1))),
        default_cache: Duration::from_secs(s.default_cache_seconds),
        max_validity: s.max_validity_seconds,
        skew: s.clock_skew_seconds,
        fetch_timeout: Duration::from_millis(s.fetch_timeout_ms.max(1)),
    }
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
pub fn passes(rep: &mut Reporter, cfg: usize, s: Option<&PassesSection>) -> Option<Arc<PassKeys>> {
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

/// `[paywall]` → the template (a file relative to gateway.toml, or the built-in page).
pub fn paywall(rep: &mut Reporter, cfg: usize, base: &Path, s: &PaywallSection) -> Arc<Template> {
    let fallback = || {
        Arc::new(
            Template::parse(DEFAULT_PAYWALL, "built-in").unwrap_or_else(|e| {
                Template::literal(&format!("payment required ({e})"), "built-in")
            }),
        )
    };
    let Some(t) = &s.template else {
        return fallback();
    };
    let path = base.join(t.get_ref());
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            rep.at(
                cfg,
                t.span(),
                "paywall.template",
                format!("cannot read {}: {e}", path.display()),
            );
            return fallback();
        }
    };
    let src = rep.add_source(path.clone(), text.clone());
    match Template::parse(&text, path.display().to_string()) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            rep.at(src, e.offset..e.offset, "paywall.template", e);
            fallback()
        }
    }
}

/// `[[crawler]]` tables from every rules file → the matcher.
pub fn crawlers(rep: &mut Reporter, list: &[ParsedCrawler]) -> CrawlerSet {
    let mut out = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut tokens: HashMap<String, String> = HashMap::new();
    for pc in list {
        let d = &pc.def;
        let here = rep.where_is(pc.src, d.name.span());
        let name = d.name.get_ref().trim();
        if name.is_empty() {
            rep.at(pc.src, d.name.span(), "crawler.name", "must not be empty");
            continue;
        }
        if let Some(first) = names.insert(name.to_ascii_lowercase(), here.clone()) {
            rep.at(
                pc.src,
                d.name.span(),
                "crawler.name",
                format!("duplicate crawler `{name}`, first at {first}"),
            );
            continue;
        }
        if d.operator.get_ref().trim().is_empty() {
            rep.at(
                pc.src,
                d.operator.span(),
                "crawler.operator",
                "must not be empty",
            );
            continue;
        }
        let user_agent = match &d.user_agent {
            Some(ua) if ua.get_ref().trim().len() < 3 => {
                rep.at(
                    pc.src,
                    ua.span(),
                    "crawler.user_agent",
                    "needs at least 3 characters (it matches as a substring)",
                );
                continue;
            }
            Some(ua) => {
                let token = ua.get_ref().trim().to_owned();
                if let Some(first) = tokens.insert(token.to_ascii_lowercase(), here.clone()) {
                    rep.at(
                        pc.src,
                        ua.span(),
                        "crawler.user_agent",
                        format!(
                            "user agent `{token}` is already matched by the crawler at {first}"
                        ),
                    );
                    continue;
                }
                Some(token)
            }
            None => None,
        };
        let signature_agent = match &d.signature_agent {
            Some(s) => match webbotauth::origin_of(s.get_ref()) {
                Some(o) => Some(o),
                None => {
                    rep.at(
                        pc.src,
                        s.span(),
                        "crawler.signature_agent",
                        "must be the http(s) origin of the operator's key directory",
                    );
                    continue;
                }
            },
            None => None,
        };
        out.push(Crawler {
            name: name.to_owned(),
            operator: d.operator.get_ref().trim().to_owned(),
            purpose: *d.purpose.get_ref(),
            user_agent,
            signature_agent,
            origin: here,
        });
    }
    match CrawlerSet::new(out) {
        Ok(s) => s,
        Err(e) => {
            if let Some(first) = list.first() {
                rep.at(first.src, first.span.clone(), "crawler", e);
            }
            CrawlerSet::default()
        }
    }
}

/// What a rule needs from the rest of the configuration.
#[derive(Debug)]
pub struct AccessCtx<'a> {
    pub operators: Vec<String>,
    pub passes: Option<&'a PassKeys>,
    pub case_sensitive: bool,
}

/// A price value of `audiences` / `operators`: `"free"`, `"block"` or a price.
pub type PriceFn<'a> =
    dyn FnMut(&mut Reporter, &Spanned<toml::Value>, &str) -> Option<RuleAction> + 'a;

/// The literal leading part of a rule's path pattern, for a pass cookie's `Path`.
pub fn literal_prefix(pattern: &str) -> String {
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
pub fn prefix_inside(prefix: &str, pattern: &str, case_sensitive: bool) -> Result<(), String> {
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

fn ttl(v: &Spanned<toml::Value>) -> Result<Duration, String> {
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

/// Compiles a rule's `audiences`, `operators`, `pass` and `mode`.
pub fn rule_access(
    rep: &mut Reporter,
    actx: &AccessCtx<'_>,
    pr: &ParsedRule,
    default: &RuleAction,
    rule_methods: u16,
    path_text: &str,
    price: &mut PriceFn<'_>,
) -> RuleAccess {
    let src = pr.src;
    let d = &pr.def;
    let mut out = RuleAccess {
        shadow: d
            .mode
            .as_ref()
            .is_some_and(|m| *m.get_ref() == ModeDef::Shadow),
        ..Default::default()
    };
    let mut prices = AudiencePrices::default();
    let mut any = false;
    if let Some(a) = &d.audiences {
        let a = a.get_ref();
        type Slot<'s> = (
            &'s Option<Spanned<toml::Value>>,
            &'s mut Option<RuleAction>,
            &'s str,
        );
        let slots: [Slot<'_>; 6] = [
            (&a.human, &mut prices.human, "rule.audiences.human"),
            (&a.training, &mut prices.training, "rule.audiences.training"),
            (&a.search, &mut prices.search, "rule.audiences.search"),
            (&a.user, &mut prices.user, "rule.audiences.user"),
            (&a.agent, &mut prices.agent, "rule.audiences.agent"),
            (&a.verified, &mut prices.verified, "rule.audiences.verified"),
        ];
        for (v, slot, field) in slots {
            if let Some(v) = v {
                *slot = price(rep, v, field);
                any = true;
            }
        }
    }
    if let Some(ops) = &d.operators {
        for (name, v) in ops.get_ref() {
            if !actx.operators.iter().any(|o| o == name) {
                let known = if actx.operators.is_empty() {
                    "none: add agents under [web_bot_auth]".to_owned()
                } else {
                    actx.operators.join(", ")
                };
                rep.at(
                    src,
                    v.span(),
                    format!("rule.operators.{name}"),
                    format!(
                        "`{name}` is not an operator of a [web_bot_auth] agent (known: {known})"
                    ),
                );
                continue;
            }
            if let Some(act) = price(rep, v, &format!("rule.operators.{name}")) {
                prices.operators.push((name.clone(), act));
            }
            any = true;
        }
    }
    let may_charge = matches!(default, RuleAction::Pay(_)) || prices.any_priced();
    if any {
        out.audiences = Some(Arc::new(prices));
    }
    if let Some(p) = &d.pass {
        let span = p.span();
        let p = p.get_ref();
        let before = rep.issues.len();
        if actx.passes.is_none_or(|k| !k.can_sign()) {
            rep.at(
                src,
                span.clone(),
                "rule.pass",
                "passes need a `[passes]` section with a `signing_key`",
            );
        }
        if !may_charge {
            rep.at(
                src,
                span.clone(),
                "rule.pass",
                "this rule never charges, so it never issues a pass",
            );
        }
        let ttl = ttl(&p.ttl)
            .map_err(|e| rep.at(src, p.ttl.span(), "rule.pass.ttl", e))
            .ok();
        let scope = match p.scope.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("resource", _)) => ScopeKind::Resource,
            Some(("rule", _)) => ScopeKind::Rule,
            Some(("prefix", _)) => ScopeKind::Prefix,
            Some((other, span)) => {
                rep.at(
                    src,
                    span,
                    "rule.pass.scope",
                    format!("unknown scope `{other}`, expected `resource`, `rule` or `prefix`"),
                );
                ScopeKind::Resource
            }
        };
        let mut prefix_key = None;
        let mut cookie_path = match scope {
            ScopeKind::Rule => literal_prefix(path_text),
            _ => "/".to_owned(),
        };
        match (scope, &p.prefix) {
            (ScopeKind::Prefix, Some(pre)) => {
                let raw = pre.get_ref();
                match crate::pathnorm::canonical_path(raw) {
                    Ok(c) if !raw.contains('*') => {
                        let key = crate::pathnorm::match_key(&c, actx.case_sensitive);
                        // The pass must not open more than the rule that sells it.
                        if let Err(e) = prefix_inside(&key, path_text, actx.case_sensitive) {
                            rep.at(src, pre.span(), "rule.pass.prefix", e);
                        }
                        prefix_key = Some(key.into_owned());
                        let trimmed = c.trim_end_matches('/');
                        cookie_path = if trimmed.is_empty() {
                            "/".into()
                        } else {
                            trimmed.to_owned()
                        };
                    }
                    _ => rep.at(
                        src,
                        pre.span(),
                        "rule.pass.prefix",
                        "must be a literal path starting with '/'",
                    ),
                }
            }
            (ScopeKind::Prefix, None) => rep.at(
                src,
                span.clone(),
                "rule.pass.prefix",
                "`scope = \"prefix\"` needs `prefix`",
            ),
            (_, Some(pre)) => rep.at(
                src,
                pre.span(),
                "rule.pass.prefix",
                "`prefix` is only for `scope = \"prefix\"`",
            ),
            (_, None) => {}
        }
        let mut methods = rule_methods;
        if let Some(ms) = &p.methods {
            methods = 0;
            if ms.get_ref().is_empty() {
                rep.at(src, ms.span(), "rule.pass.methods", "empty list");
            }
            for m in ms.get_ref() {
                match Methods::parse(m) {
                    Some(b) => methods |= b,
                    None => rep.at(
                        src,
                        ms.span(),
                        "rule.pass.methods",
                        format!("unknown method `{m}`"),
                    ),
                }
            }
        }
        let max_requests = match &p.max_requests {
            Some(n) if *n.get_ref() < 1 || *n.get_ref() > i64::from(u32::MAX) => {
                rep.at(
                    src,
                    n.span(),
                    "rule.pass.max_requests",
                    "must be between 1 and 4294967295",
                );
                None
            }
            Some(n) => Some(*n.get_ref() as u32),
            None => None,
        };
        if rep.issues.len() == before
            && let Some(ttl) = ttl
        {
            out.pass = Some(Arc::new(PassPolicy {
                ttl,
                scope,
                prefix: prefix_key,
                methods: Methods(methods),
                max_requests,
                cookie_path,
            }));
        }
    }
    out
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

    #[test]
    fn built_in_paywall_parses() {
        assert!(Template::parse(DEFAULT_PAYWALL, "built-in").is_ok());
    }
}
