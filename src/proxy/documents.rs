//! The discovery documents (`[discovery]`), built from a configuration generation and the base URL resources
//! are named under: `/.well-known/x402` (`{version, resources, ownershipProofs}`) and an
//! OpenAPI 3.1 document whose priced operations carry `x-payment-info` and a `402` response.

use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use crate::access::RuleAction;
use crate::router::HostPattern;
use crate::snapshot::{Rule, Snapshot};
use crate::x402::challenge::Priced;

/// A listed rule: the path the documents name, and the price it charges.
struct Listed<'a> {
    rule: &'a Rule,
    path: &'a str,
    priced: &'a Priced,
}

/// What a rule charges when it charges: its own price, else the first audience price (a rule
/// free for people and priced for agents is still a paid resource).
fn charged(rule: &Rule) -> Option<&Priced> {
    if let RuleAction::Pay(p) = &rule.action {
        return Some(p);
    }
    let a = rule.access.audiences.as_deref()?;
    [
        &a.agent,
        &a.user,
        &a.search,
        &a.training,
        &a.verified,
        &a.human,
    ]
    .into_iter()
    .flatten()
    .chain(a.operators.iter().map(|(_, action)| action))
    .find_map(|action| match action {
        RuleAction::Pay(p) => Some(&**p),
        _ => None,
    })
}

/// The host of a base URL (`https://example.com:8443` → `example.com`).
fn host_of(base: &str) -> String {
    let authority = crate::x402::url::authority(base);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.to_ascii_lowercase()
}

/// Priced, listed rules with a path, served on `base`'s host, in configuration order.
fn listed<'a>(snap: &'a Snapshot, base: &str) -> Vec<Listed<'a>> {
    let host = host_of(base);
    snap.rules
        .iter()
        .filter(|r| r.discovery.listed)
        .filter(|r| HostPattern::parse(&r.host).is_ok_and(|p| p.matches(&host)))
        .filter_map(|rule| {
            Some(Listed {
                rule,
                path: rule.discovery.path.as_deref()?,
                priced: charged(rule)?,
            })
        })
        .collect()
}

/// `/.well-known/x402`: the resource URLs, and the ownership proofs when configured.
pub fn well_known(snap: &Snapshot, base: &str) -> Value {
    let base = base.trim_end_matches('/');
    let mut resources: Vec<String> = Vec::new();
    for l in listed(snap, base) {
        let url = format!("{base}{}", l.path);
        if !resources.contains(&url) {
            resources.push(url);
        }
    }
    let mut doc = Map::new();
    doc.insert("version".into(), json!(1));
    doc.insert("resources".into(), json!(resources));
    if !snap.discovery.ownership_proofs.is_empty() {
        doc.insert(
            "ownershipProofs".into(),
            json!(snap.discovery.ownership_proofs),
        );
    }
    Value::Object(doc)
}

/// A price as `x-payment-info` gives it: US dollars when the rule was priced in dollars,
/// else whole units of the first offer's asset.
fn payment_info(priced: &Priced) -> Value {
    let price = match priced.usd {
        Some(usd) => {
            json!({"mode": "fixed", "currency": "USD", "amount": usd.normalize().to_string()})
        }
        None => {
            let amount = priced.offers.first().and_then(|o| {
                let atomic: i128 = o.requirements.amount.parse().ok()?;
                let d = Decimal::try_from_i128_with_scale(atomic, o.asset.decimals).ok()?;
                Some(d.normalize().to_string())
            });
            json!({"mode": "fixed", "amount": amount.unwrap_or_default()})
        }
    };
    json!({"price": price, "protocols": [{"x402": {}}]})
}

/// One operation of the OpenAPI document.
fn operation(l: &Listed<'_>) -> Value {
    let d = &l.rule.discovery;
    let mut op = Map::new();
    op.insert("operationId".into(), json!(l.rule.id));
    let summary = if l.priced.description.is_empty() {
        l.rule.id.clone()
    } else {
        l.priced.description.clone()
    };
    op.insert("summary".into(), json!(summary));
    let schema = d.input_schema.clone();
    match &d.body_type {
        Some(body_type) => {
            let mime = match body_type.as_str() {
                "form-data" => "multipart/form-data",
                "text" => "text/plain",
                _ => "application/json",
            };
            let mut media = Map::new();
            media.insert(
                "schema".into(),
                schema.unwrap_or_else(|| json!({"type": "object"})),
            );
            if let Some(example) = &d.input {
                media.insert("example".into(), example.clone());
            }
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {mime: Value::Object(media)}}),
            );
        }
        None => {
            let required: Vec<&str> = schema
                .as_ref()
                .and_then(|s| s.get("required"))
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let params: Vec<Value> = schema
                .as_ref()
                .and_then(|s| s.get("properties"))
                .and_then(Value::as_object)
                .map(|props| {
                    props
                        .iter()
                        .map(|(name, s)| {
                            json!({
                                "name": name,
                                "in": "query",
                                "required": required.contains(&name.as_str()),
                                "schema": s,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !params.is_empty() {
                op.insert("parameters".into(), Value::Array(params));
            }
        }
    }
    let mime = if l.priced.mime_type.is_empty() {
        "application/json"
    } else {
        l.priced.mime_type.as_str()
    };
    let mut ok = Map::new();
    ok.insert("description".into(), json!("Paid response"));
    if d.output_schema.is_some() || d.output_example.is_some() {
        let mut media = Map::new();
        if let Some(s) = &d.output_schema {
            media.insert("schema".into(), s.clone());
        }
        if let Some(e) = &d.output_example {
            media.insert("example".into(), e.clone());
        }
        ok.insert("content".into(), json!({mime: Value::Object(media)}));
    }
    op.insert(
        "responses".into(),
        json!({
            "200": Value::Object(ok),
            "402": {"description": "Payment Required: the x402 requirements are in the PAYMENT-REQUIRED header (v2) and the JSON body (v1)"},
        }),
    );
    op.insert("x-payment-info".into(), payment_info(l.priced));
    Value::Object(op)
}

/// The OpenAPI 3.1 document of priced routes.
pub fn openapi(snap: &Snapshot, base: &str) -> Value {
    let base = base.trim_end_matches('/');
    let s = &snap.discovery;
    let mut paths: Map<String, Value> = Map::new();
    for l in listed(snap, base) {
        let item = paths
            .entry(l.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        let method = l.rule.discovery.method.to_ascii_lowercase();
        if let Some(item) = item.as_object_mut()
            && !item.contains_key(&method)
        {
            item.insert(method, operation(&l));
        }
    }
    let mut info = Map::new();
    info.insert("title".into(), json!(s.title));
    info.insert("version".into(), json!(s.version));
    if let Some(d) = &s.description {
        info.insert("description".into(), json!(d));
    }
    let mut doc = Map::new();
    doc.insert("openapi".into(), json!("3.1.0"));
    doc.insert("info".into(), Value::Object(info));
    doc.insert("servers".into(), json!([{"url": base}]));
    doc.insert("paths".into(), Value::Object(paths));
    if !s.ownership_proofs.is_empty() {
        doc.insert(
            "x-discovery".into(),
            json!({"ownershipProofs": s.ownership_proofs}),
        );
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_a_base_url() {
        assert_eq!(host_of("https://Example.com"), "example.com");
        assert_eq!(host_of("http://127.0.0.1:8080/"), "127.0.0.1");
        assert_eq!(host_of("http://[::1]:80"), "::1");
    }
}
