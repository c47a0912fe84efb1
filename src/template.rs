//! A minimal HTML template: literal text and `{{name}}` placeholders from a fixed list, parsed
//! once at configuration time (unknown names are located errors) and rendered with every value
//! HTML-escaped, except the one placeholder documented as gateway-built HTML.

use std::fmt;

/// The values a paywall template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// Headline price (`$0.01`).
    Price,
    /// The resource URL.
    Resource,
    /// The rule's description.
    Description,
    /// Why the page is shown (`payment_required`, `pass_expired`, ...).
    Reason,
    /// Accepted networks, comma separated.
    Networks,
    /// The first offer's recipient.
    PayTo,
    /// The first offer's asset name.
    Asset,
    /// The `PAYMENT-REQUIRED` header value (base64), for scripts in custom templates.
    PaymentRequired,
    /// Table rows, one per offer: HTML built by the gateway from escaped values.
    Offers,
}

impl Placeholder {
    pub const ALL: [(&'static str, Placeholder); 9] = [
        ("price", Placeholder::Price),
        ("resource", Placeholder::Resource),
        ("description", Placeholder::Description),
        ("reason", Placeholder::Reason),
        ("networks", Placeholder::Networks),
        ("pay_to", Placeholder::PayTo),
        ("asset", Placeholder::Asset),
        ("payment_required", Placeholder::PaymentRequired),
        ("offers", Placeholder::Offers),
    ];

    fn parse(name: &str) -> Option<Placeholder> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }

    /// Whether the value is inserted as HTML (gateway-built) rather than escaped text.
    pub fn is_html(self) -> bool {
        self == Placeholder::Offers
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Placeholder),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// Where it came from (`built-in` or a path), for `/config`.
    pub source: String,
}

/// A template problem at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Template {
    /// Parses `{{name}}` placeholders (spaces inside the braces allowed).
    pub fn parse(text: &str, source: impl Into<String>) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0usize;
        while let Some(i) = rest.find("{{") {
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_owned()));
            }
            let after = &rest[i + 2..];
            let end = after.find("}}").ok_or_else(|| TemplateError {
                offset: offset + i,
                message: "`{{` without a closing `}}`".into(),
            })?;
            let name = after[..end].trim();
            let var = Placeholder::parse(name).ok_or_else(|| TemplateError {
                offset: offset + i,
                message: format!(
                    "unknown placeholder `{{{{{name}}}}}`, expected one of {}",
                    Placeholder::ALL
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
            parts.push(Part::Var(var));
            let consumed = i + 2 + end + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template {
            parts,
            source: source.into(),
        })
    }

    /// A template of plain text.
    pub fn literal(text: &str, source: impl Into<String>) -> Template {
        Template {
            parts: vec![Part::Text(text.to_owned())],
            source: source.into(),
        }
    }

    /// Renders with `value` giving each placeholder's raw value; text values are escaped.
    pub fn render(&self, value: impl Fn(Placeholder) -> String) -> String {
        let mut out = String::with_capacity(4096);
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) if v.is_html() => out.push_str(&value(*v)),
                Part::Var(v) => escape_into(&mut out, &value(*v)),
            }
        }
        out
    }

    /// Whether the template uses a placeholder.
    pub fn uses(&self, p: Placeholder) -> bool {
        self.parts.contains(&Part::Var(p))
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_render_escape() {
        let t = Template::parse(
            "<p>{{ price }} for {{resource}}</p><table>{{offers}}</table>",
            "t",
        )
        .expect("parse");
        let html = t.render(|p| match p {
            Placeholder::Price => "$0.01".into(),
            Placeholder::Resource => "http://h/a?x=<script>".into(),
            Placeholder::Offers => "<tr><td>1</td></tr>".into(),
            _ => String::new(),
        });
        assert_eq!(
            html,
            "<p>$0.01 for http://h/a?x=&lt;script&gt;</p><table><tr><td>1</td></tr></table>"
        );
        assert!(t.uses(Placeholder::Price));
        assert!(!t.uses(Placeholder::PayTo));
    }

    #[test]
    fn errors_are_located() {
        let e = Template::parse("ab {{nope}}", "t").expect_err("unknown");
        assert_eq!(e.offset, 3);
        assert!(e.message.contains("`{{nope}}`"), "{}", e.message);
        let e = Template::parse("{{price}} x {{price", "t").expect_err("open");
        assert_eq!(e.offset, 12);
    }
}
