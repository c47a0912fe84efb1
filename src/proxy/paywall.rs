//! The HTML 402 page shown to browsers: self-contained (no external scripts or styles), stating
//! the resource, the price in each accepted asset, and how to pay.

use std::fmt::Write;

use rust_decimal::Decimal;

use crate::x402::challenge::Priced;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
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
    out
}

/// An atomic amount in whole units (`10000` with 6 decimals → `0.01`).
pub fn whole_units(atomic: &str, decimals: u32) -> String {
    match atomic.parse::<i128>() {
        Ok(a) if decimals <= 28 => Decimal::try_from_i128_with_scale(a, decimals)
            .map(|d| d.normalize().to_string())
            .unwrap_or_else(|_| atomic.to_owned()),
        _ => atomic.to_owned(),
    }
}

/// Renders the page.
pub fn render(priced: &Priced, url: &str) -> String {
    let mut rows = String::new();
    for o in &priced.offers {
        let r = &o.requirements;
        let amount = whole_units(&r.amount, o.asset.decimals);
        let symbol = if o.asset.usd {
            format!("{} (USD)", o.asset.eip712_name)
        } else {
            o.asset.eip712_name.clone()
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            escape(&amount),
            escape(&symbol),
            escape(&r.network),
            escape(&r.asset),
            escape(&r.pay_to)
        );
    }
    let headline = priced
        .offers
        .first()
        .map(|o| {
            let amount = whole_units(&o.requirements.amount, o.asset.decimals);
            if o.asset.usd {
                format!("${amount}")
            } else {
                format!("{amount} {}", o.asset.eip712_name)
            }
        })
        .unwrap_or_default();
    let description = if priced.description.is_empty() {
        String::new()
    } else {
        format!("<p>{}</p>", escape(&priced.description))
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Payment required: {headline}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem;color:#1b1b1b}}
h1{{font-size:1.6rem}}.price{{font-size:2.4rem;font-weight:700;margin:.5rem 0}}table{{border-collapse:collapse;width:100%;font-size:.9rem}}
td,th{{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;word-break:break-all}}code{{font-size:.8rem}}</style></head>
<body><main>
<h1>Payment required</h1>
<p class="price" id="price">{headline}</p>
<p>for <a href="{url_attr}">{url_text}</a></p>
{description}
<h2>Accepted payments</h2>
<table><thead><tr><th>Amount</th><th>Asset</th><th>Network</th><th>Token</th><th>Pay to</th></tr></thead><tbody>{rows}</tbody></table>
<h2>How to pay</h2>
<p>This resource is sold over the <a href="https://x402.org">x402</a> protocol. Request it with an x402 client
(for example <code>@x402/fetch</code>): the client reads the <code>PAYMENT-REQUIRED</code> header of this response,
signs a payment for one of the offers above, and retries with a <code>PAYMENT-SIGNATURE</code> header.</p>
</main></body></html>
"#,
        url_attr = escape(url),
        url_text = escape(url),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_escaping() {
        assert_eq!(whole_units("10000", 6), "0.01");
        assert_eq!(whole_units("1000000", 6), "1");
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
