//! Rules: each `[[rule]]` compiled (host, path, methods, upstream, action, access), unique
//! ids, `accept_passes_from` checks, and the router with its conflicts.

use std::collections::{BTreeMap, HashMap};

use toml::Spanned;

use super::access;
use super::prices::{PerRule, PriceSpec, parse_price, price_value, priced_action};
use super::shared::check_timeout;
use crate::access::{RuleAccess, RuleAction};
use crate::config::rules_file::{ActionDef, RuleDef};
use crate::config::{ParsedRule, Reporter};
use crate::payment::RulePolicy;
use crate::router::{HostPattern, Methods, PathPattern, Route, Router};
use crate::snapshot::Rule;
use crate::x402::networks::Registry;

/// Every rule, compiled, and the router that picks one per request.
pub(super) fn rules(
    rep: &mut Reporter,
    parsed: &[ParsedRule],
    ctx: &RuleCtx<'_>,
) -> (Vec<Rule>, Router) {
    let mut rules = Vec::new();
    let mut routes = Vec::new();
    let mut origins: Vec<&ParsedRule> = Vec::new();
    let mut ids: HashMap<String, String> = HashMap::new();
    for pr in parsed {
        let id = pr.def.id.get_ref();
        let here = rep.where_is(pr.src, pr.def.id.span());
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            rep.at(
                pr.src,
                pr.def.id.span(),
                "rule.id",
                "must be non-empty letters, digits, '-', '_' or '.'",
            );
        }
        if let Some(first) = ids.insert(id.clone(), here.clone()) {
            rep.at(
                pr.src,
                pr.def.id.span(),
                "rule.id",
                format!("duplicate rule id `{id}`, first at {first}"),
            );
        }
        if let Some((rule, route)) = compile_rule(rep, ctx, pr, here) {
            rules.push(rule);
            routes.push(route);
            origins.push(pr);
        }
    }
    // `accept_passes_from` names rules that exist and sell passes.
    for pr in &origins {
        for name in pr.def.accept_passes_from.iter().flatten() {
            let n = name.get_ref();
            let sells = origins
                .iter()
                .any(|o| o.def.id.get_ref() == n && o.def.pass.is_some());
            if n != "*" && !sells {
                rep.at(
                    pr.src,
                    name.span(),
                    "rule.accept_passes_from",
                    format!("no rule `{n}` that issues passes (`pass = {{ … }}`)"),
                );
            }
        }
    }
    let (router, conflicts) = Router::build(routes);
    for c in conflicts {
        let (a, b) = (origins[c.0], origins[c.1]);
        let where_a = rep.where_is(a.src, a.def.id.span());
        rep.at(
            b.src,
            b.def.id.span(),
            "rule",
            format!(
                "rule `{}` and rule `{}` ({where_a}) are equally specific and can match the same request",
                b.def.id.get_ref(),
                a.def.id.get_ref()
            ),
        );
    }
    (rules, router)
}

pub(super) struct RuleCtx<'a> {
    pub access: &'a access::AccessCtx<'a>,
    pub registry: &'a Registry,
    pub default_pay_to: Option<&'a str>,
    pub default_networks: &'a [Spanned<String>],
    pub default_timeout: u64,
    pub default_settlement: crate::payment::Settlement,
    pub default_failure_policy: crate::payment::FailurePolicy,
    pub default_resource_query: bool,
    pub upstream_index: &'a BTreeMap<String, usize>,
    pub default_upstream: usize,
    pub case_sensitive: bool,
    pub discovery: &'a crate::discovery::DiscoverySettings,
    /// `Some(required)` when the gateway honours `payment-identifier`.
    pub payment_identifier: Option<bool>,
    /// `[payment] public_base_url` (what sign-ins are bound to).
    pub public_base_url: Option<&'a str>,
}

/// `meter` (and `meter_price`) of a rule that offers `upto`: the price per KiB or second in
/// the atomic units of its `upto` offers' asset.
fn meter_of(rep: &mut Reporter, pr: &ParsedRule, action: &RuleAction) -> crate::payment::Meter {
    use crate::payment::Meter;
    let d = &pr.def;
    let kind = d.meter.as_ref().map_or("origin", |m| m.get_ref().as_str());
    let per_unit = |rep: &mut Reporter| -> Option<u128> {
        let Some(p) = &d.meter_price else {
            rep.at(
                pr.src,
                d.id.span(),
                "rule.meter_price",
                format!("`meter = \"{kind}\"` needs `meter_price`, the price per unit"),
            );
            return None;
        };
        let decimals = match action {
            RuleAction::Pay(priced) => priced
                .offers
                .iter()
                .find(|o| o.requirements.scheme == "upto")
                .map(|o| o.asset.decimals),
            _ => None,
        }?;
        match p.get_ref() {
            toml::Value::String(s) if s.starts_with('$') => {
                match s[1..].parse::<rust_decimal::Decimal>() {
                    Ok(usd) => crate::config::price::usd_to_atomic(usd, decimals)
                        .map_err(|e| rep.at(pr.src, p.span(), "rule.meter_price", e))
                        .ok(),
                    Err(_) => {
                        rep.at(pr.src, p.span(), "rule.meter_price", "not a dollar amount");
                        None
                    }
                }
            }
            toml::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            _ => {
                rep.at(
                    pr.src,
                    p.span(),
                    "rule.meter_price",
                    "expected \"$0.0001\" or atomic units as a string (\"100\")",
                );
                None
            }
        }
    };
    let priced_unit = |rep: &mut Reporter| {
        let n = per_unit(rep).unwrap_or(0);
        if n == 0
            && let Some(p) = &d.meter_price
        {
            rep.at(pr.src, p.span(), "rule.meter_price", "must be above zero");
        }
        n
    };
    match kind {
        "origin" => Meter::Origin,
        "bytes" => Meter::Bytes(priced_unit(rep)),
        "seconds" => Meter::Seconds(priced_unit(rep)),
        other => {
            if let Some(m) = &d.meter {
                rep.at(
                    pr.src,
                    m.span(),
                    "rule.meter",
                    format!("unknown meter `{other}`: `origin`, `bytes` or `seconds`"),
                );
            }
            Meter::Origin
        }
    }
}

/// A rule's 402 with the offers of `priced` that `keep` keeps, then `more`.
fn with_more_offers(
    priced: &crate::x402::challenge::Priced,
    keep: impl Fn(&crate::x402::challenge::Offer) -> bool,
    more: Vec<crate::x402::challenge::Offer>,
    per_rule: &PerRule<'_>,
) -> RuleAction {
    let mut offers: Vec<_> = priced
        .offers
        .iter()
        .filter(|o| keep(o))
        .map(|o| crate::x402::challenge::Offer::clone(o))
        .collect();
    offers.extend(more);
    RuleAction::Pay(std::sync::Arc::new(
        crate::x402::challenge::Priced::new(
            offers,
            priced.description.clone(),
            priced.mime_type.clone(),
        )
        .with_usd(priced.usd)
        .with_extensions(per_rule.extensions)
        .with_sign_in(per_rule.sign_in),
    ))
}

/// The schemes a rule offers.
#[derive(Debug, Clone, Copy, Default)]
struct Offered {
    exact: bool,
    upto: bool,
    batch: bool,
}

/// `schemes`: which of `exact`, `upto` and `batch-settlement` the rule offers (default `exact`
/// only).
fn schemes_of(rep: &mut Reporter, pr: &ParsedRule) -> Offered {
    let only_exact = Offered {
        exact: true,
        ..Offered::default()
    };
    let Some(list) = &pr.def.schemes else {
        if pr.def.max_price.is_some() {
            rep.at(
                pr.src,
                pr.def.id.span(),
                "rule.max_price",
                "`max_price` is the `upto` ceiling: add `schemes = [\"upto\"]`",
            );
        }
        return only_exact;
    };
    let mut o = Offered::default();
    for s in list.get_ref() {
        match s.as_str() {
            "exact" => o.exact = true,
            "upto" => o.upto = true,
            crate::schemes::evm_batch::SCHEME => o.batch = true,
            other => rep.at(
                pr.src,
                list.span(),
                "rule.schemes",
                format!("unknown scheme `{other}`: `exact`, `upto` or `batch-settlement`"),
            ),
        }
    }
    if !o.exact && !o.upto && !o.batch {
        rep.at(
            pr.src,
            list.span(),
            "rule.schemes",
            "name `exact`, `upto`, `batch-settlement`, or several",
        );
        return only_exact;
    }
    if !o.batch
        && (pr.def.receiver_authorizer.is_some()
            || pr.def.withdraw_delay_seconds.is_some()
            || pr.def.min_deposit.is_some()
            || pr.def.deposit_method.is_some())
    {
        rep.at(
            pr.src,
            list.span(),
            "rule.schemes",
            "`receiver_authorizer`, `withdraw_delay_seconds`, `min_deposit` and `deposit_method` are for `batch-settlement`: add it to `schemes`",
        );
    }
    o
}

/// `sign_in_window`: a duration, on a rule whose resources are named under the configured
/// public origin (sign-ins are bound to it, never to `Host`).
fn sign_in_window(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
) -> Option<std::time::Duration> {
    let w = pr.def.sign_in_window.as_ref()?;
    let window = match humantime::parse_duration(w.get_ref().trim()) {
        Ok(d) if !d.is_zero() && d <= std::time::Duration::from_secs(365 * 86_400) => d,
        _ => {
            rep.at(
                pr.src,
                w.span(),
                "rule.sign_in_window",
                "must be a duration such as \"24h\" (at most a year)",
            );
            return None;
        }
    };
    if ctx.public_base_url.is_none() {
        rep.at(
            pr.src,
            w.span(),
            "rule.sign_in_window",
            "needs `[payment] public_base_url`: sign-ins are bound to the public origin",
        );
        return None;
    }
    Some(window)
}

fn compile_rule(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
    here: String,
) -> Option<(Rule, Route)> {
    let src = pr.src;
    let d: &RuleDef = &pr.def;
    let issues_before = rep.issues.len();

    let host = match &d.host {
        Some(h) => HostPattern::parse(h.get_ref()).unwrap_or_else(|e| {
            rep.at(src, h.span(), "rule.host", e);
            HostPattern::Any
        }),
        None => HostPattern::Any,
    };
    let (path_text, path) = match (&d.path, &d.prefix) {
        (Some(_), Some(p)) => {
            rep.at(
                src,
                p.span(),
                "rule.prefix",
                "give either `path` or `prefix`, not both",
            );
            (String::new(), None)
        }
        (Some(p), None) => (
            p.get_ref().clone(),
            PathPattern::glob(p.get_ref(), ctx.case_sensitive)
                .map_err(|e| rep.at(src, p.span(), "rule.path", e))
                .ok(),
        ),
        (None, Some(p)) => (
            format!("{}**", p.get_ref().trim_end_matches('/').to_owned() + "/"),
            PathPattern::prefix(p.get_ref(), ctx.case_sensitive)
                .map_err(|e| rep.at(src, p.span(), "rule.prefix", e))
                .ok(),
        ),
        (None, None) => (
            "/**".into(),
            PathPattern::glob("/**", ctx.case_sensitive).ok(),
        ),
    };
    let mut methods = 0u16;
    if let Some(ms) = &d.methods {
        if ms.get_ref().is_empty() {
            rep.at(
                src,
                ms.span(),
                "rule.methods",
                "empty list; leave `methods` out to match every method",
            );
        }
        for m in ms.get_ref() {
            match Methods::parse(m) {
                Some(b) => methods |= b,
                None => rep.at(
                    src,
                    ms.span(),
                    "rule.methods",
                    format!("unknown method `{m}`"),
                ),
            }
        }
    }
    let upstream = match &d.upstream {
        Some(u) => match ctx.upstream_index.get(u.get_ref()) {
            Some(&i) => i,
            None => {
                rep.at(
                    src,
                    u.span(),
                    "rule.upstream",
                    format!("unknown upstream `{}`", u.get_ref()),
                );
                0
            }
        },
        None => ctx.default_upstream,
    };
    let timeout = match &d.max_timeout_seconds {
        Some(t) => {
            check_timeout(rep, src, t, "rule.max_timeout_seconds");
            *t.get_ref()
        }
        None => ctx.default_timeout,
    };

    let discovery = super::discovery::rule(
        rep,
        pr,
        methods,
        &path_text,
        path.as_ref(),
        ctx.case_sensitive,
    );
    let extensions =
        super::discovery::extensions(ctx.discovery, &discovery, ctx.payment_identifier);
    let sign_in = sign_in_window(rep, ctx, pr);
    let per_rule = PerRule {
        timeout,
        extensions: Some(&extensions),
        sign_in: sign_in.is_some(),
    };
    let price = d
        .price
        .as_ref()
        .and_then(|p| parse_price(rep, src, p, "rule.price").map(|s| (s, p.span())));
    let Offered { exact, upto, batch } = schemes_of(rep, pr);
    let action_def = d.action.as_ref().map(|a| (*a.get_ref(), a.span()));
    if upto
        && !exact
        && let Some(p) = &d.price
    {
        rep.at(
            src,
            p.span(),
            "rule.price",
            "a rule that offers only `upto` takes `max_price`, not `price` (add \"exact\" to `schemes` to offer both)",
        );
    }
    let action = match (action_def, price) {
        (None, _) if upto && !exact => match super::prices::upto_offers(rep, ctx, pr, timeout) {
            Some(offers) => RuleAction::Pay(std::sync::Arc::new(
                crate::x402::challenge::Priced::new(
                    offers,
                    d.description.clone().unwrap_or_default(),
                    d.mime_type.clone().unwrap_or_default(),
                )
                .with_extensions(per_rule.extensions)
                .with_sign_in(per_rule.sign_in),
            )),
            None => RuleAction::Free,
        },
        (Some((ActionDef::Block, _)), None) => RuleAction::Block,
        (Some((ActionDef::Free, _)), None)
        | (Some((ActionDef::Free, _)), Some((PriceSpec::Zero, _))) => RuleAction::Free,
        (Some((ActionDef::Block | ActionDef::Free, span)), Some(_)) => {
            rep.at(
                src,
                span,
                "rule.action",
                "a `free` or `block` rule takes no price",
            );
            RuleAction::Free
        }
        (Some((ActionDef::Pay, span)), None) => {
            rep.at(src, span, "rule.price", "a `pay` rule needs a price");
            RuleAction::Free
        }
        (None, None) => {
            if d.price.is_none() {
                rep.at(
                    src,
                    d.id.span(),
                    "rule.price",
                    "give a `price`, or `action = \"free\"` / `\"block\"`",
                );
            }
            RuleAction::Free
        }
        (_, Some((spec, span))) => priced_action(rep, ctx, pr, spec, span, &per_rule, "rule.price")
            .unwrap_or(RuleAction::Free),
    };
    // Both schemes: the `upto` offers beside the `exact` ones, in one 402.
    let action = match action {
        RuleAction::Pay(priced) if upto && exact => {
            match super::prices::upto_offers(rep, ctx, pr, timeout) {
                Some(more) => with_more_offers(&priced, |_| true, more, &per_rule),
                None => RuleAction::Pay(priced),
            }
        }
        other => other,
    };
    // `batch-settlement` beside the others (its offers are paid from channels), or alone
    // (the rule's price is then charged per voucher only).
    let action = match action {
        RuleAction::Pay(priced) if batch => {
            match super::prices::batch_offers(rep, ctx, pr, timeout) {
                Some(more) => {
                    let keep = |o: &crate::x402::challenge::Offer| {
                        (exact && o.requirements.scheme == "exact")
                            || (upto && o.requirements.scheme == "upto")
                    };
                    with_more_offers(&priced, keep, more, &per_rule)
                }
                None => RuleAction::Pay(priced),
            }
        }
        other => other,
    };
    if batch && d.settlement == Some(crate::payment::Settlement::Before) {
        rep.at(
            src,
            d.id.span(),
            "rule.settlement",
            "`batch-settlement` charges a channel once the origin answered: it settles after (settlement = \"after\")",
        );
    }
    if upto && d.settlement == Some(crate::payment::Settlement::Before) {
        rep.at(
            src,
            d.id.span(),
            "rule.settlement",
            "`upto` charges what the response cost, known only after the origin answered: it settles after (settlement = \"after\")",
        );
    }
    let meter = if upto {
        meter_of(rep, pr, &action)
    } else {
        crate::payment::Meter::Origin
    };
    let least = crate::payment::METERED_MIN_TIMEOUT_SECS;
    if meter.at_body_end() && timeout < least {
        let span = d
            .max_timeout_seconds
            .as_ref()
            .map_or(d.id.span(), |t| t.span());
        rep.at(
            src,
            span,
            "rule.max_timeout_seconds",
            format!(
                "a body-metered rule needs at least {least}: payers sign permits for this long, its responses stop {} s before they end so that what was delivered can settle, and clocks differ",
                crate::payment::METERED_STOP_SECS
            ),
        );
    }
    let access = access::rule_access(
        rep,
        ctx.access,
        pr,
        &action,
        methods,
        &path_text,
        &mut |rep: &mut Reporter, v: &Spanned<toml::Value>, field: &str| {
            price_value(rep, ctx, pr, v, &per_rule, field)
        },
    );
    if rep.issues.len() > issues_before {
        return None;
    }
    let path = path?;
    let route = Route {
        host: host.clone(),
        methods: Methods(methods),
        path,
    };
    let rule = Rule {
        id: d.id.get_ref().clone(),
        origin: here,
        action,
        upstream,
        methods: Methods(methods),
        host: d
            .host
            .as_ref()
            .map_or_else(|| "*".into(), |h| h.get_ref().clone()),
        path: path_text,
        payment: RulePolicy {
            // `upto` charges what the response cost: always after the origin answered.
            settlement: if upto {
                crate::payment::Settlement::After
            } else {
                d.settlement.unwrap_or(ctx.default_settlement)
            },
            failure_policy: d
                .on_facilitator_failure
                .unwrap_or(ctx.default_failure_policy),
            resource_query: d.resource_query.unwrap_or(ctx.default_resource_query),
            sign_in,
            meter,
        },
        discovery,
        access: RuleAccess {
            accept_passes_from: d
                .accept_passes_from
                .iter()
                .flatten()
                .map(|n| n.get_ref().clone())
                .collect(),
            ..access
        },
    };
    Some((rule, route))
}
