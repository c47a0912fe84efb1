//! Discovery: `[discovery]` (the documents' paths and titles, whether 402s carry `bazaar`)
//! and each rule's `[rule.discovery]` (method, input and output, the path the documents
//! list), plus the `extensions` object a rule's 402s carry.

use serde_json::{Map, Value};

use crate::config::file::DiscoverySection;
use crate::config::rules_file::DiscoveryDef;
use crate::config::{ParsedRule, Reporter};
use crate::discovery::{BODY_METHODS, BODY_TYPES, DiscoverySettings, QUERY_METHODS, RuleDiscovery};
use crate::router::{Methods, PathPattern};

/// `[discovery]` → the settings; document paths must be absolute and distinct.
pub(super) fn settings(rep: &mut Reporter, cfg: usize, s: &DiscoverySection) -> DiscoverySettings {
    let mut path = |p: &Option<toml::Spanned<String>>, field: &str| {
        let p = p.as_ref()?;
        let text = p.get_ref();
        if !text.starts_with('/') || text.contains(['?', '#', ' ']) {
            rep.at(
                cfg,
                p.span(),
                field,
                "must be an absolute path such as /.well-known/x402",
            );
            return None;
        }
        Some(text.clone())
    };
    let well_known = path(&s.well_known, "discovery.well_known");
    let openapi = path(&s.openapi, "discovery.openapi");
    if let (Some(a), Some(b)) = (&well_known, &openapi)
        && a == b
        && let Some(span) = s.openapi.as_ref().map(|o| o.span())
    {
        rep.at(
            cfg,
            span,
            "discovery.openapi",
            "is the same path as `well_known`",
        );
    }
    DiscoverySettings {
        bazaar: s.bazaar,
        well_known,
        openapi,
        title: s.title.clone().unwrap_or_else(|| "x402-gateway".into()),
        version: s.version.clone().unwrap_or_else(|| "1.0.0".into()),
        description: s.description.clone(),
        ownership_proofs: s.ownership_proofs.clone(),
    }
}

/// A rule's `[rule.discovery]` (defaults when absent). `methods` are the rule's method bits,
/// `path_text` its path as written and `pattern` the compiled one.
pub(super) fn rule(
    rep: &mut Reporter,
    pr: &ParsedRule,
    methods: u16,
    path_text: &str,
    pattern: Option<&PathPattern>,
    case_sensitive: bool,
) -> RuleDiscovery {
    let src = pr.src;
    let empty = DiscoveryDef {
        listed: None,
        method: None,
        body_type: None,
        input: None,
        input_schema: None,
        output_example: None,
        output_schema: None,
        path: None,
    };
    let d = pr.def.discovery.as_ref().map_or(&empty, |d| d.get_ref());
    let known = |m: &str| QUERY_METHODS.contains(&m) || BODY_METHODS.contains(&m);
    let rule_methods = Methods(methods);
    let method = match &d.method {
        Some(m) => {
            let upper = m.get_ref().to_ascii_uppercase();
            if !known(&upper) {
                rep.at(
                    src,
                    m.span(),
                    "rule.discovery.method",
                    "must be GET, HEAD, DELETE, POST, PUT or PATCH",
                );
            } else if !rule_methods.matches(Methods::bit(&upper)) {
                rep.at(
                    src,
                    m.span(),
                    "rule.discovery.method",
                    format!("the rule does not match `{upper}`"),
                );
            }
            upper
        }
        None => rule_methods
            .names()
            .into_iter()
            .find(|m| known(m))
            .unwrap_or("GET")
            .to_owned(),
    };
    let body_type = if BODY_METHODS.contains(&method.as_str()) {
        let t = d
            .body_type
            .as_ref()
            .map_or_else(|| "json".to_owned(), |t| t.get_ref().clone());
        if !BODY_TYPES.contains(&t.as_str())
            && let Some(span) = d.body_type.as_ref().map(|t| t.span())
        {
            rep.at(
                src,
                span,
                "rule.discovery.body_type",
                "must be json, form-data or text",
            );
        }
        Some(t)
    } else {
        if let Some(t) = &d.body_type {
            rep.at(
                src,
                t.span(),
                "rule.discovery.body_type",
                format!("`{method}` takes its input in the query string, not a body"),
            );
        }
        None
    };
    let literal = !path_text.contains('*');
    let path = match &d.path {
        Some(p) => {
            let text = p.get_ref();
            let matches = crate::pathnorm::canonical_path(text).is_ok_and(|canon| {
                let key = crate::pathnorm::match_key(&canon, case_sensitive);
                pattern.is_none_or(|pat| pat.matches(&key))
            });
            if !text.starts_with('/') || !matches {
                rep.at(
                    src,
                    p.span(),
                    "rule.discovery.path",
                    format!("`{text}` is not a path this rule matches (`{path_text}`)"),
                );
            }
            Some(text.clone())
        }
        None if literal => Some(path_text.to_owned()),
        None => None,
    };
    let json = |t: &Option<toml::Table>| t.as_ref().and_then(|t| serde_json::to_value(t).ok());
    RuleDiscovery {
        listed: d.listed.unwrap_or(true),
        method,
        body_type,
        input: json(&d.input),
        input_schema: json(&d.input_schema),
        output_example: d
            .output_example
            .as_ref()
            .and_then(|v| serde_json::to_value(v).ok()),
        output_schema: json(&d.output_schema),
        path,
    }
}

/// The `extensions` object of a rule's 402s: `bazaar` for listed rules (when `[discovery]
/// bazaar` is on) and `payment-identifier` when the gateway honours identifiers.
pub(super) fn extensions(
    settings: &DiscoverySettings,
    rule: &RuleDiscovery,
    payment_identifier: Option<bool>,
) -> Map<String, Value> {
    let mut ext = Map::new();
    if settings.bazaar && rule.listed {
        ext.insert("bazaar".into(), rule.bazaar());
    }
    if let Some(required) = payment_identifier {
        ext.insert(
            crate::x402::extensions::PAYMENT_IDENTIFIER.into(),
            crate::discovery::payment_identifier(required),
        );
    }
    ext
}
