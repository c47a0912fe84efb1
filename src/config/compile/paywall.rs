//! Paywall: the page a payment-required response shows to browsers, from `[paywall] template`
//! (a file relative to gateway.toml) or the built-in page.

use std::path::Path;
use std::sync::Arc;

use crate::config::Reporter;
use crate::config::access_file::PaywallSection;
use crate::template::Template;
use crate::wallet_paywall::WalletPage;

/// The built-in paywall page.
pub(crate) const DEFAULT_PAYWALL: &str = include_str!("../../../templates/paywall.html");

/// `[paywall]` → the template (a file relative to gateway.toml, or the built-in page).
pub(super) fn paywall(
    rep: &mut Reporter,
    cfg: usize,
    base: &Path,
    s: &PaywallSection,
) -> Arc<Template> {
    let fallback = || {
        Arc::new(
            Template::parse(DEFAULT_PAYWALL, "built-in").unwrap_or_else(|e| {
                Template::literal(&format!("payment required ({e})"), "built-in")
            }),
        )
    };
    let Some(t) = &s.template else {
        return fallback();
    };
    let path = base.join(t.get_ref());
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            rep.at(
                cfg,
                t.span(),
                "paywall.template",
                format!("cannot read {}: {e}", path.display()),
            );
            return fallback();
        }
    };
    let src = rep.add_source(path.clone(), text.clone());
    match Template::parse(&text, path.display().to_string()) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            rep.at(src, e.offset..e.offset, "paywall.template", e);
            fallback()
        }
    }
}

/// `[paywall] wallet` → the wallet page, split where each request's requirements go.
pub(super) fn wallet(
    rep: &mut Reporter,
    cfg: usize,
    base: &Path,
    s: &PaywallSection,
) -> Option<Arc<WalletPage>> {
    let w = s.wallet.as_ref()?;
    let path = base.join(w.get_ref());
    let html = match std::fs::read_to_string(&path) {
        Ok(html) => html,
        Err(e) => {
            rep.at(
                cfg,
                w.span(),
                "paywall.wallet",
                format!(
                    "cannot read {}: {e} (scripts/paywall-bundle.sh makes it)",
                    path.display()
                ),
            );
            return None;
        }
    };
    let page = WalletPage::new(&html, &s.app_name, &s.app_logo, &path.display().to_string());
    if page.is_none() {
        rep.at(
            cfg,
            w.span(),
            "paywall.wallet",
            format!(
                "{} has no </head> to put the payment details before",
                path.display()
            ),
        );
    }
    rep.files_read.push((path, html.into_bytes()));
    page.map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_paywall_parses() {
        assert!(Template::parse(DEFAULT_PAYWALL, "built-in").is_ok());
    }
}
