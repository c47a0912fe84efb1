//! Prices: a rule's `price` (or an audience's) parsed and compiled into offers, one per
//! network, in the rule's or the `[payment]` defaults' currency and recipient.

use std::sync::Arc;

use toml::Spanned;

use super::rules::RuleCtx;
use super::shared::checked_address;
use crate::access::RuleAction;
use crate::config::price::{self, PriceError};
use crate::config::{ParsedRule, Reporter};
use crate::schemes::{BATCH, EXACT, Scheme, UPTO};
use crate::x402::challenge::{Offer, Priced};
use crate::x402::types::PAYMENT_FLOW;

/// What the `price` key says.
pub(super) enum PriceSpec {
    Zero,
    Usd(rust_decimal::Decimal),
    Atomic(u128, String),
}

pub(super) fn parse_price(
    rep: &mut Reporter,
    src: usize,
    v: &Spanned<toml::Value>,
    field: &str,
) -> Option<PriceSpec> {
    let fail = |rep: &mut Reporter, m: String| {
        rep.at(src, v.span(), field, m);
        None
    };
    match v.get_ref() {
        toml::Value::Integer(0) => Some(PriceSpec::Zero),
        toml::Value::Integer(_) | toml::Value::Float(_) => {
            fail(rep, "a number price must be 0; write dollars as \"$0.01\" or atomic units as { amount, asset }".into())
        }
        toml::Value::String(s) => match price::parse_usd(s) {
            Ok(d) if d.is_zero() => Some(PriceSpec::Zero),
            Ok(d) => Some(PriceSpec::Usd(d)),
            Err(e) => fail(rep, e.to_string()),
        },
        toml::Value::Table(t) => {
            let unknown: Vec<&String> = t.keys().filter(|k| *k != "amount" && *k != "asset").collect();
            if !unknown.is_empty() {
                return fail(rep, format!("unknown key `{}` in price, expected `amount` and `asset`", unknown[0]));
            }
            let amount = match t.get("amount") {
                Some(toml::Value::String(s)) => price::parse_atomic(s),
                Some(toml::Value::Integer(i)) if *i >= 0 => Ok(*i as u128),
                Some(_) => Err(PriceError::BadAtomic("amount".into())),
                None => return fail(rep, "price table needs `amount`".into()),
            };
            let asset = match t.get("asset") {
                Some(toml::Value::String(s)) => s.clone(),
                _ => return fail(rep, "price table needs `asset` (an asset id or address)".into()),
            };
            match amount {
                Ok(0) => Some(PriceSpec::Zero),
                Ok(a) => Some(PriceSpec::Atomic(a, asset)),
                Err(e) => fail(rep, e.to_string()),
            }
        }
        other => fail(rep, format!("expected \"$0.01\", 0 or {{ amount, asset }}, found {}", other.type_str())),
    }
}

/// What every price of one rule shares: its `max_timeout_seconds` and the `extensions` object
/// its 402s carry.
pub(super) struct PerRule<'a> {
    pub timeout: u64,
    pub extensions: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// Its 402s offer Sign-In-With-X to past payers.
    pub sign_in: bool,
}

/// A compiled price: free for zero, else the offers with the rule's description and, for
/// `"$…"` prices, the USD amount (for pay-per-crawl headers).
pub(super) fn priced_action(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
    spec: PriceSpec,
    span: std::ops::Range<usize>,
    per_rule: &PerRule<'_>,
    field: &str,
) -> Option<RuleAction> {
    let timeout = per_rule.timeout;
    let usd = match &spec {
        PriceSpec::Zero => return Some(RuleAction::Free),
        PriceSpec::Usd(d) => Some(*d),
        PriceSpec::Atomic(..) => None,
    };
    let d = &pr.def;
    let mut offers = build_offers(rep, ctx, pr, &EXACT, spec, span, timeout, field)?;
    // Clients pick offers by flow: settle-after is `authorization`, settle-before `upfront`.
    // A rule that offers `upto` settles after the origin answered, whatever the default.
    let offers_upto = d
        .schemes
        .as_ref()
        .is_some_and(|s| s.get_ref().iter().any(|x| x == "upto"));
    let flow = if offers_upto {
        crate::payment::Settlement::After
    } else {
        d.settlement.unwrap_or(ctx.default_settlement)
    }
    .payment_flow();
    for o in &mut offers {
        o.requirements
            .extra
            .insert(PAYMENT_FLOW.into(), serde_json::Value::String(flow.into()));
    }
    Some(RuleAction::Pay(Arc::new(
        Priced::new(
            offers,
            d.description.clone().unwrap_or_default(),
            d.mime_type.clone().unwrap_or_default(),
        )
        .with_usd(usd)
        .with_extensions(per_rule.extensions)
        .with_sign_in(per_rule.sign_in),
    )))
}

/// An `audiences` / `operators` value: `"free"`, `"block"`, or a price.
pub(super) fn price_value(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
    v: &Spanned<toml::Value>,
    per_rule: &PerRule<'_>,
    field: &str,
) -> Option<RuleAction> {
    match v.get_ref() {
        toml::Value::String(s) if s == "free" => Some(RuleAction::Free),
        toml::Value::String(s) if s == "block" => Some(RuleAction::Block),
        _ => {
            let spec = parse_price(rep, pr.src, v, field)?;
            priced_action(rep, ctx, pr, spec, v.span(), per_rule, field)
        }
    }
}

/// The rule's `upto` offers: its `max_price` as the ceiling on each network, paid through the
/// `upto` proxy and settled by `facilitator_address`.
pub(super) fn upto_offers(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
    timeout: u64,
) -> Option<Vec<Offer>> {
    let d = &pr.def;
    let Some(max) = &d.max_price else {
        rep.at(
            pr.src,
            d.id.span(),
            "rule.max_price",
            "a rule that offers `upto` needs `max_price`, the ceiling payers sign for",
        );
        return None;
    };
    let facilitator = match &d.facilitator_address {
        Some(a) => checked_address(rep, pr.src, a, "rule.facilitator_address")?,
        None => {
            rep.at(
                pr.src,
                d.id.span(),
                "rule.facilitator_address",
                "a rule that offers `upto` needs the settling facilitator's address (its /supported extra.facilitatorAddress)",
            );
            return None;
        }
    };
    let spec = parse_price(rep, pr.src, max, "rule.max_price")?;
    if matches!(spec, PriceSpec::Zero) {
        rep.at(pr.src, max.span(), "rule.max_price", "must be above zero");
        return None;
    }
    let mut offers = build_offers(
        rep,
        ctx,
        pr,
        &UPTO,
        spec,
        max.span(),
        timeout,
        "rule.max_price",
    )?;
    for o in &mut offers {
        let extra = &mut o.requirements.extra;
        extra.insert(
            crate::schemes::evm_upto::FACILITATOR_ADDRESS.into(),
            serde_json::Value::String(facilitator.clone()),
        );
        extra.insert(
            PAYMENT_FLOW.into(),
            serde_json::Value::String(crate::payment::Settlement::After.payment_flow().into()),
        );
    }
    Some(offers)
}

/// The rule's `batch-settlement` offers: its `price` per request on each network, paid from
/// channels whose claims `receiver_authorizer` authorizes, with its `withdraw_delay_seconds`.
pub(super) fn batch_offers(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
    timeout: u64,
) -> Option<Vec<Offer>> {
    use crate::schemes::evm_batch;
    let d = &pr.def;
    let Some(p) = &d.price else {
        rep.at(
            pr.src,
            d.id.span(),
            "rule.price",
            "a rule that offers `batch-settlement` needs `price`, what each request is charged",
        );
        return None;
    };
    let authorizer = match &d.receiver_authorizer {
        Some(a) => match crate::payment::channel::claimer::Authorizer::parse(a.get_ref()) {
            Ok(auth) => auth.address,
            Err(m) => {
                rep.at(pr.src, a.span(), "rule.receiver_authorizer", m);
                return None;
            }
        },
        None => {
            rep.at(
                pr.src,
                d.id.span(),
                "rule.receiver_authorizer",
                "a rule that offers `batch-settlement` needs `receiver_authorizer`: a private key (the gateway signs claims) or the facilitator's address",
            );
            return None;
        }
    };
    let delay = match &d.withdraw_delay_seconds {
        Some(w) => {
            let v = *w.get_ref();
            if !(evm_batch::MIN_WITHDRAW_DELAY..=evm_batch::MAX_WITHDRAW_DELAY).contains(&v) {
                rep.at(
                    pr.src,
                    w.span(),
                    "rule.withdraw_delay_seconds",
                    format!(
                        "must be between {} and {} (the channel contract's bounds)",
                        evm_batch::MIN_WITHDRAW_DELAY,
                        evm_batch::MAX_WITHDRAW_DELAY
                    ),
                );
                return None;
            }
            v
        }
        None => evm_batch::MIN_WITHDRAW_DELAY,
    };
    let min_deposit = match &d.min_deposit {
        Some(m) => match parse_price(rep, pr.src, m, "rule.min_deposit")? {
            PriceSpec::Zero => {
                rep.at(pr.src, m.span(), "rule.min_deposit", "must be above zero");
                return None;
            }
            spec => Some((spec, m.span())),
        },
        None => None,
    };
    let permit2 = match &d.deposit_method {
        None => false,
        Some(m) => match m.get_ref().as_str() {
            "eip3009" => false,
            "permit2" => true,
            _ => {
                rep.at(
                    pr.src,
                    m.span(),
                    "rule.deposit_method",
                    "must be \"eip3009\" (a token with ERC-3009) or \"permit2\" (any ERC-20 the payer approved Permit2 for)",
                );
                return None;
            }
        },
    };
    let spec = parse_price(rep, pr.src, p, "rule.price")?;
    if matches!(spec, PriceSpec::Zero) {
        return None;
    }
    let mut offers = build_offers(rep, ctx, pr, &BATCH, spec, p.span(), timeout, "rule.price")?;
    for o in &mut offers {
        let price = o.requirements.amount.parse::<u128>().unwrap_or(0);
        // The reference server's hint unless the rule says: ten requests' worth. Never below
        // one request.
        let min_deposit = match &min_deposit {
            None => price.saturating_mul(10),
            Some((PriceSpec::Usd(usd), span)) => {
                match price::usd_to_atomic(*usd, o.asset.decimals) {
                    Ok(a) => a,
                    Err(e) => {
                        rep.at(pr.src, span.clone(), "rule.min_deposit", e);
                        return None;
                    }
                }
            }
            Some((PriceSpec::Atomic(a, _), _)) => *a,
            Some((PriceSpec::Zero, _)) => 0,
        }
        .max(price)
        .to_string();
        let extra = &mut o.requirements.extra;
        extra.insert(
            evm_batch::RECEIVER_AUTHORIZER.into(),
            serde_json::Value::String(authorizer.to_checksum(None)),
        );
        extra.insert(evm_batch::WITHDRAW_DELAY.into(), delay.into());
        extra.insert(
            evm_batch::MIN_DEPOSIT.into(),
            serde_json::Value::String(min_deposit),
        );
        if permit2 {
            extra.insert(
                evm_batch::ASSET_TRANSFER_METHOD.into(),
                serde_json::Value::String("permit2".into()),
            );
        }
    }
    Some(offers)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site per scheme; a struct would only rename them"
)]
fn build_offers(
    rep: &mut Reporter,
    ctx: &RuleCtx<'_>,
    pr: &ParsedRule,
    scheme: &dyn Scheme,
    spec: PriceSpec,
    price_span: std::ops::Range<usize>,
    timeout: u64,
    field: &str,
) -> Option<Vec<Offer>> {
    let src = pr.src;
    let d = &pr.def;
    let pay_to = match &d.pay_to {
        Some(p) => checked_address(rep, src, p, "rule.pay_to")?,
        None => match ctx.default_pay_to {
            Some(p) => p.to_owned(),
            None => {
                rep.at(
                    src,
                    d.id.span(),
                    "rule.pay_to",
                    "priced rule needs `pay_to` here or in `[payment]`",
                );
                return None;
            }
        },
    };
    let mut nets: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    match &d.networks {
        Some(list) => {
            for n in list {
                match ctx.registry.network(n.get_ref()) {
                    Some(net) => nets.push((net.caip2.clone(), n.span())),
                    None => rep.at(
                        src,
                        n.span(),
                        "rule.networks",
                        format!("unknown network `{}`", n.get_ref()),
                    ),
                }
            }
        }
        None => nets.extend(
            ctx.default_networks
                .iter()
                .map(|n| (n.get_ref().clone(), price_span.clone())),
        ),
    }
    let mut offers = Vec::new();
    match spec {
        PriceSpec::Zero => {}
        PriceSpec::Usd(usd) => {
            if nets.is_empty() {
                rep.at(
                    src,
                    price_span,
                    "rule.networks",
                    "no networks to offer: set `networks` here or in `[payment]`",
                );
                return None;
            }
            for (caip2, span) in nets {
                let Some(net) = ctx.registry.network(&caip2) else {
                    continue;
                };
                let Some(asset) = net.usd_asset.clone() else {
                    rep.at(
                        src,
                        span,
                        field,
                        format!("network {caip2} has no USD asset: declare one with `usd = true` or price in atomic units"),
                    );
                    continue;
                };
                match price::usd_to_atomic(usd, asset.decimals) {
                    Ok(amount) => offers.push(scheme.offer(
                        asset,
                        net.v1_name.clone(),
                        amount,
                        &pay_to,
                        timeout,
                    )),
                    Err(e) => rep.at(src, price_span.clone(), field, e),
                }
            }
        }
        PriceSpec::Atomic(amount, asset_ref) => {
            let asset = if asset_ref.starts_with("0x") {
                let candidates: Vec<String> = if nets.is_empty() {
                    ctx.registry.networks().map(|n| n.caip2.clone()).collect()
                } else {
                    nets.iter().map(|n| n.0.clone()).collect()
                };
                candidates
                    .iter()
                    .find_map(|n| ctx.registry.asset(n, &asset_ref))
            } else if asset_ref == "usdc" {
                nets.first().and_then(|n| ctx.registry.asset(&n.0, "usdc"))
            } else {
                ctx.registry.asset_by_id(&asset_ref)
            };
            let Some(asset) = asset else {
                rep.at(
                    src,
                    price_span,
                    field,
                    format!("unknown asset `{asset_ref}` (declare it under `[[assets]]`)"),
                );
                return None;
            };
            if !nets.is_empty() && !nets.iter().any(|n| n.0 == asset.network) {
                rep.at(
                    src,
                    price_span,
                    field,
                    format!(
                        "asset `{asset_ref}` is on {}, which this rule does not offer",
                        asset.network
                    ),
                );
                return None;
            }
            let v1 = ctx
                .registry
                .network(&asset.network)
                .and_then(|n| n.v1_name.clone());
            offers.push(scheme.offer(asset, v1, amount, &pay_to, timeout));
        }
    }
    Some(offers)
}
