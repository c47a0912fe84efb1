//! `${VAR}` and `${VAR:-default}` expansion in configuration strings: every string of a
//! parsed file is expanded in place (keeping its position for error messages), except secret
//! fields, which are expanded only when compiled into a [`Secret`] so their values are never
//! printed. Errors name the variable, never a value.

use std::borrow::Cow;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Reporter;

pub use crate::secret::Secret;

/// Why a `${VAR}` reference could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable `{0}` is not set")]
    Missing(String),
    #[error("unterminated `${{` reference")]
    Unterminated,
    #[error("`${{}}` needs a variable name of letters, digits and '_'")]
    BadName,
}

/// Expands every `${VAR}` in `input` using `lookup`; `${VAR:-default}` gives `default` when
/// `VAR` is unset or empty. `$$` is a literal `$`.
pub fn expand_with(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Secret, EnvError> {
    expand_text(input, lookup).map(Secret::new)
}

/// As [`expand_with`], for a value that is not secret.
fn expand_text(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(EnvError::Unterminated)?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&body[..end], None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(EnvError::BadName);
            }
            let value = match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_owned(),
                (Some(v), _) => v,
                (None, Some(d)) => d.to_owned(),
                (None, None) => return Err(EnvError::Missing(name.into())),
            };
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands from the process environment.
pub fn expand(input: &str) -> Result<Secret, EnvError> {
    expand_with(input, |k| std::env::var(k).ok())
}

/// Fields of `gateway.toml` whose values are secrets (`*` stands for any array index or table
/// key): left as written here and expanded when compiled.
pub const SECRET_FIELDS: &[&str] = &[
    "admin.auth_token",
    "facilitator_api.auth_token",
    "facilitators.*.api_key_id",
    "facilitators.*.api_key_secret",
    "facilitators.*.relayer_key",
    "facilitators.*.headers.*",
    "networks.*.rpc_urls.*",
    "passes.keys.*.secret",
    "state.url",
    "state.cluster.*",
];

/// Expands `${VAR}` in every string of a parsed document but the fields `secret` names,
/// recording each failure at the string's position (the string stays as written).
pub fn expand_document(rep: &mut Reporter, src: usize, doc: &mut DeTable<'_>, secret: &[&str]) {
    let lookup = |k: &str| std::env::var(k).ok();
    let mut path = Vec::new();
    for (key, value) in doc.iter_mut() {
        path.push(key.get_ref().to_string());
        walk(rep, src, value, &mut path, secret, &lookup);
        path.pop();
    }
}

fn walk(
    rep: &mut Reporter,
    src: usize,
    value: &mut Spanned<DeValue<'_>>,
    path: &mut Vec<String>,
    secret: &[&str],
    lookup: &impl Fn(&str) -> Option<String>,
) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) => {
            if !s.contains('$') || is_secret(path, secret) {
                return;
            }
            match expand_text(s, lookup) {
                Ok(v) => *s = Cow::Owned(v),
                Err(e) => {
                    let field: Vec<&str> = path
                        .iter()
                        .map(String::as_str)
                        .filter(|p| !p.starts_with('[') || !p.ends_with(']'))
                        .collect();
                    rep.at(src, span, field.join("."), e);
                }
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                walk(rep, src, item, path, secret, lookup);
                path.pop();
            }
        }
        DeValue::Table(t) => {
            for (key, v) in t.iter_mut() {
                path.push(key.get_ref().to_string());
                walk(rep, src, v, path, secret, lookup);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Whether `path` (keys and `[i]` indices) matches one of the dotted patterns, where `*`
/// matches one index or key.
fn is_secret(path: &[String], patterns: &[&str]) -> bool {
    patterns.iter().any(|p| {
        let parts: Vec<&str> = p.split('.').collect();
        parts.len() == path.len()
            && parts
                .iter()
                .zip(path)
                .all(|(want, got)| *want == "*" || *want == got)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_paths_match_with_wildcards() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_secret(&p(&["admin", "auth_token"]), SECRET_FIELDS));
        assert!(is_secret(
            &p(&["facilitators", "[1]", "headers", "Authorization"]),
            SECRET_FIELDS
        ));
        assert!(is_secret(
            &p(&["networks", "[0]", "rpc_urls", "[2]"]),
            SECRET_FIELDS
        ));
        assert!(!is_secret(
            &p(&["facilitators", "[1]", "url"]),
            SECRET_FIELDS
        ));
        assert!(!is_secret(&p(&["admin", "listen"]), SECRET_FIELDS));
    }

    #[test]
    fn expansion() {
        let look = |k: &str| (k == "TOKEN").then(|| "s3cret".to_string());
        assert_eq!(
            expand_with("Bearer ${TOKEN}", look).map(|s| s.expose().to_owned()),
            Ok("Bearer s3cret".into())
        );
        assert_eq!(
            expand_with("a$$b $x", look).map(|s| s.expose().to_owned()),
            Ok("a$b $x".into())
        );
        assert_eq!(
            expand_with("${NOPE}", look),
            Err(EnvError::Missing("NOPE".into()))
        );
        assert_eq!(expand_with("${TOKEN", look), Err(EnvError::Unterminated));
        let text = |input: &str| expand_with(input, look).map(|s| s.expose().to_owned());
        assert_eq!(text("${TOKEN:-other}"), Ok("s3cret".into()));
        assert_eq!(text("${NOPE:-other}"), Ok("other".into()));
        assert_eq!(text("x${NOPE:-}y"), Ok("xy".into()));
        assert_eq!(
            text("redis://${NOPE:-127.0.0.1:6379}/0"),
            Ok("redis://127.0.0.1:6379/0".into())
        );
        let empty = |k: &str| (k == "EMPTY").then(String::new);
        assert_eq!(
            expand_with("${EMPTY:-d}", empty).map(|s| s.expose().to_owned()),
            Ok("d".into())
        );
        assert_eq!(
            expand_with("${EMPTY}", empty).map(|s| s.expose().to_owned()),
            Ok(String::new())
        );
        assert_eq!(text("${:-d}"), Err(EnvError::BadName));
        assert_eq!(text("${NO PE:-d}"), Err(EnvError::BadName));
        assert_eq!(
            format!("{:?}", expand_with("${TOKEN}", look)),
            "Ok(<redacted>)"
        );
    }
}
