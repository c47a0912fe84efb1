//! `${VAR}` expansion for secrets. Errors name the variable; values are never printed.

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

/// Expands every `${VAR}` in `input` using `lookup`. `$$` is a literal `$`.
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
            let name = &body[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(EnvError::BadName);
            }
            out.push_str(&lookup(name).ok_or_else(|| EnvError::Missing(name.into()))?);
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
        assert_eq!(
            format!("{:?}", expand_with("${TOKEN}", look)),
            "Ok(<redacted>)"
        );
    }
}
