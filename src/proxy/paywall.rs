//! The HTML 402 page shown to browsers: the configured template (or the built-in one, which is
//! self-contained: no external scripts or styles) filled with the resource, the price in each
//! accepted asset, the networks, and how to pay.

use std::fmt::Write;

use rust_decimal::Decimal;

use crate::template::{Placeholder, Template, escape};
use crate::x402::challenge::Priced;

/// An atomic amount in whole units (`10000` with 6 decimals → `0.01`).
pub fn whole_units(atomic: &str, decimals: u32) -> String {
    match atomic.parse::<i128>() {
        Ok(a) if decimals <= 28 => Decimal::try_from_i128_with_scale(a, decimals)
            .map(|d| d.normalize().to_string())
            .unwrap_or_else(|_| atomic.to_owned()),
        _ => atomic.to_owned(),
    }
}

/// The headline price: `$0.01` for USD assets, `0.01 NAME` otherwise.
pub fn headline(priced: &Priced) -> String {
    if let Some(usd) = priced.usd {
        return format!("${}", usd.normalize());
    }
    priced
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
        .unwrap_or_default()
}

fn offer_rows(priced: &Priced) -> String {
    let mut rows = String::new();
    for o in &priced.offers {
        let r = &o.requirements;
        let amount = whole_units(&r.amount, o.asset.decimals);
        let symbol = if o.asset.usd {
            format!("{} (USD)", o.asset.eip712_name)
        } else {
            o.asset.eip712_name.clone()
        };
        let network = match &o.v1_network {
            Some(v1) => format!("{} ({v1})", r.network),
            None => r.network.clone(),
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            escape(&amount),
            escape(&symbol),
            escape(&network),
            escape(&r.asset),
            escape(&r.pay_to)
        );
    }
    rows
}

/// Renders the page. `payment_required` is the `PAYMENT-REQUIRED` header value sent with it.
pub fn render(
    template: &Template,
    priced: &Priced,
    url: &str,
    reason: &str,
    payment_required: &str,
) -> String {
    template.render(|p| match p {
        Placeholder::Price => headline(priced),
        Placeholder::Resource => url.to_owned(),
        Placeholder::Description => priced.description.clone(),
        Placeholder::Reason => reason.to_owned(),
        Placeholder::Networks => {
            let mut nets: Vec<String> = Vec::new();
            for o in &priced.offers {
                let n = match &o.v1_network {
                    Some(v1) => format!("{} ({v1})", o.requirements.network),
                    None => o.requirements.network.clone(),
                };
                if !nets.contains(&n) {
                    nets.push(n);
                }
            }
            nets.join(", ")
        }
        Placeholder::PayTo => priced
            .offers
            .first()
            .map(|o| o.requirements.pay_to.clone())
            .unwrap_or_default(),
        Placeholder::Asset => priced
            .offers
            .first()
            .map(|o| o.asset.eip712_name.clone())
            .unwrap_or_default(),
        Placeholder::PaymentRequired => payment_required.to_owned(),
        Placeholder::Offers => offer_rows(priced),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile::paywall::DEFAULT_PAYWALL;

    #[test]
    fn units() {
        assert_eq!(whole_units("10000", 6), "0.01");
        assert_eq!(whole_units("1000000", 6), "1");
    }

    #[test]
    fn built_in_page_shows_price_and_escapes() {
        let t = Template::parse(DEFAULT_PAYWALL, "built-in").expect("template");
        let p = Priced::new(Vec::new(), "<b>Report</b>".into(), String::new())
            .with_usd(Some(Decimal::new(5, 3)));
        let html = render(&t, &p, "http://h/a?b=<c>", "payment_required", "eyJ9");
        assert!(
            html.contains(r#"<p class="price" id="price">$0.005</p>"#),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;Report&lt;/b&gt;"));
        assert!(html.contains("http://h/a?b=&lt;c&gt;"));
        assert!(!html.contains("<script"), "self-contained, no scripts");
        assert!(!html.contains("src=\"http"), "no external resources");
    }
}
