//! Access: a rule's `audiences` and `operators` prices, its `pass` policy and its `mode`,
//! checked against the trusted agents and pass keys compiled before the rules.

use std::sync::Arc;

use toml::Spanned;

use super::passes::{literal_prefix, prefix_inside, ttl};
use crate::access::audience::AudiencePrices;
use crate::access::pass::{PassKeys, PassPolicy, ScopeKind};
use crate::access::{RuleAccess, RuleAction};
use crate::config::access_file::ModeDef;
use crate::config::{ParsedRule, Reporter};
use crate::router::Methods;

/// What a rule needs from the rest of the configuration.
#[derive(Debug)]
pub(super) struct AccessCtx<'a> {
    pub(super) operators: Vec<String>,
    pub(super) passes: Option<&'a PassKeys>,
    pub(super) case_sensitive: bool,
}

/// A price value of `audiences` / `operators`: `"free"`, `"block"` or a price.
type PriceFn<'a> = dyn FnMut(&mut Reporter, &Spanned<toml::Value>, &str) -> Option<RuleAction> + 'a;

/// Compiles a rule's `audiences`, `operators`, `pass` and `mode`.
pub(super) fn rule_access(
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
