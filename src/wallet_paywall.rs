//! The wallet paywall: the reference `@x402/paywall` EVM page (a self-contained HTML file
//! made by `scripts/paywall-bundle.sh`, served by the gateway itself, no CDN) with this
//! request's payment requirements spliced in before its `</head>` as `window.x402`, encoded
//! so that no value can end the script or the document.

use std::fmt::Write as _;

use crate::x402::challenge::Priced;

/// The page split at its first `</head>`, and the settings of `[paywall]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletPage {
    /// Everything before the first `</head>`.
    pub head: String,
    /// `</head>` and everything after it.
    pub tail: String,
    pub app_name: String,
    pub app_logo: String,
    /// Where the file came from (for `/config`).
    pub source: String,
}

impl WalletPage {
    /// Splits `html` at its first `</head>`; `None` when it has none.
    pub fn new(html: &str, app_name: &str, app_logo: &str, source: &str) -> Option<WalletPage> {
        let at = html.find("</head>")?;
        Some(WalletPage {
            head: html[..at].to_owned(),
            tail: html[at..].to_owned(),
            app_name: app_name.to_owned(),
            app_logo: app_logo.to_owned(),
            source: source.to_owned(),
        })
    }

    /// Whether this page can pay `priced`: its first offer (the one the page uses) is on an
    /// EVM network.
    pub fn serves(priced: &Priced) -> bool {
        priced
            .offers
            .first()
            .is_some_and(|o| o.requirements.network.starts_with("eip155:"))
    }

    /// The page for one request: `payment_required` is the v2 `PaymentRequired` JSON sent in
    /// the `PAYMENT-REQUIRED` header, `url` the resource the page pays for and reloads.
    pub fn render(&self, priced: &Priced, payment_required: &str, url: &str) -> String {
        // A display number, as the reference computes it (the page shows it, never signs it).
        let amount = priced
            .offers
            .first()
            .and_then(|o| {
                let atomic: u64 = o.requirements.amount.parse().ok()?;
                serde_json::Number::from_f64(crate::x402::networks::atomic_to_usd(
                    atomic,
                    o.asset.decimals,
                ))
            })
            .map_or_else(|| "0".to_owned(), |n| n.to_string());
        let mut out = String::with_capacity(self.head.len() + self.tail.len() + 4096);
        out.push_str(&self.head);
        let _ = writeln!(
            out,
            "<script>window.x402 = {{amount: {}, paymentRequired: {}, testnet: false, currentUrl: {}, config: {{chainConfig: {{}}}}, appName: {}, appLogo: {}}};</script>",
            script_safe(&amount),
            script_safe(payment_required),
            script_safe(&json_string(url)),
            script_safe(&json_string(&self.app_name)),
            script_safe(&json_string(&self.app_logo)),
        );
        out.push_str(&self.tail);
        out
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// JSON (or a number) made safe inside `<script>`: `<`, `>` and `&` as `\u` escapes (so no
/// value can close the script), and the two line separators JavaScript once refused.
fn script_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_end_the_script_or_the_document() {
        let page = WalletPage::new(
            "<html><head><title>t</title></head><body>$' $&</body></html>",
            "Shop </script><script>alert(1)</script>",
            "",
            "test",
        )
        .expect("a head");
        let priced = Priced::new(Vec::new(), "x".into(), "text/html".into());
        let html = page.render(
            &priced,
            r#"{"resource":{"description":"</script><script>alert(2)</script> $' \u2028"}}"#,
            "http://shop.test/a?b=</script>",
        );
        assert_eq!(html.matches("<script>").count(), 1, "{html}");
        assert_eq!(html.matches("</script>").count(), 1, "{html}");
        assert!(html.ends_with("</head><body>$' $&</body></html>"), "{html}");
        assert!(html.contains("\\u003c/script\\u003e"));
        assert!(WalletPage::new("<html>no head</html>", "", "", "x").is_none());
    }
}
