//! `${VAR}` and `${VAR:-default}` expansion for secrets. Errors name the variable; values
//! are never printed.

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
    Ok(Secret::new(out))
}

/// Expands from the process environment.
pub fn expand(input: &str) -> Result<Secret, EnvError> {
    expand_with(input, |k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

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
