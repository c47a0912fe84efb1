//! The `[payment]` section: the defaults a priced rule falls back on and the settings of the
//! payment gate.

use toml::Spanned;

use super::shared::{check_timeout, checked_address};
use crate::config::Reporter;
use crate::config::file::PaymentSection;
use crate::snapshot::PaymentSettings;
use crate::x402::networks::Registry;

/// What `[payment]` compiles to.
pub(super) struct Payment {
    /// The checksummed `pay_to` of rules that name none.
    pub default_pay_to: Option<String>,
    /// The CAIP-2 ids of the networks of rules that name none.
    pub default_networks: Vec<Spanned<String>>,
    pub settings: PaymentSettings,
}

/// `[payment]` → the rule defaults and the gate's settings.
pub(super) fn payment(
    rep: &mut Reporter,
    cfg: usize,
    pay: &PaymentSection,
    registry: &Registry,
) -> Payment {
    let default_pay_to = pay
        .pay_to
        .as_ref()
        .and_then(|p| checked_address(rep, cfg, p, "payment.pay_to"));
    let mut default_networks = Vec::new();
    for n in &pay.networks {
        match registry.network(n.get_ref()) {
            Some(net) => default_networks.push(Spanned::new(n.span(), net.caip2.clone())),
            None => rep.at(
                cfg,
                n.span(),
                "payment.networks",
                format!("unknown network `{}`", n.get_ref()),
            ),
        }
    }
    check_timeout(
        rep,
        cfg,
        &pay.max_timeout_seconds,
        "payment.max_timeout_seconds",
    );
    let public_base_url = pay.public_base_url.as_ref().and_then(|u| {
        let s = u.get_ref().trim_end_matches('/');
        match s.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri.query().is_none() =>
            {
                Some(s.to_owned())
            }
            _ => {
                rep.at(
                    cfg,
                    u.span(),
                    "payment.public_base_url",
                    "must be an http(s) URL such as https://example.com",
                );
                None
            }
        }
    });
    if pay.require_payment_identifier && pay.payment_identifier_window_seconds == 0 {
        rep.file(
            &rep.sources[cfg].path.clone(),
            "payment.require_payment_identifier",
            "needs `payment_identifier_window_seconds` above 0",
        );
    }
    if pay.pending_settlement_wait_ms > 120_000 {
        rep.file(
            &rep.sources[cfg].path.clone(),
            "payment.pending_settlement_wait_ms",
            "must be at most 120000 (clients and proxies give up long before)",
        );
    }
    if pay.payment_identifier_window_seconds > 7 * 86_400 {
        rep.file(
            &rep.sources[cfg].path.clone(),
            "payment.payment_identifier_window_seconds",
            "must be at most 604800 (7 days)",
        );
    }
    if pay.channel_claim_interval_seconds == 0 || pay.channel_claim_interval_seconds > 86_400 {
        rep.file(
            &rep.sources[cfg].path.clone(),
            "payment.channel_claim_interval_seconds",
            "must be between 1 and 86400",
        );
    }
    if pay.channel_refund_idle_seconds > 365 * 86_400 {
        rep.file(
            &rep.sources[cfg].path.clone(),
            "payment.channel_refund_idle_seconds",
            "must be at most 31536000 (a year; 0: never)",
        );
    }
    if pay.channel_retire_seconds > 0 && !(10..=365 * 86_400).contains(&pay.channel_retire_seconds)
    {
        rep.file(
            &rep.sources[cfg].path.clone(),
            "payment.channel_retire_seconds",
            "must be between 10 and 31536000 (a year; 0: never)",
        );
    }
    if pay.channel_claims_per_transaction == 0 || pay.channel_claims_per_transaction > 1000 {
        rep.file(
            &rep.sources[cfg].path.clone(),
            "payment.channel_claims_per_transaction",
            "must be between 1 and 1000",
        );
    }
    if pay.max_header_bytes < 1024 || pay.max_header_bytes > 64 * 1024 {
        rep.file(
            &rep.sources[cfg].path.clone(),
            "payment.max_header_bytes",
            "must be between 1024 and 65536",
        );
    }
    Payment {
        default_pay_to,
        default_networks,
        settings: PaymentSettings {
            public_base_url,
            trust_forwarded_headers: pay.trust_forwarded_headers,
            max_header_bytes: pay.max_header_bytes,
            forward_payer_headers: pay.forward_payer_headers,
            cors_allow_origins: pay.cors_allow_origins.clone(),
            failed_payments_per_client: pay.failed_payments_per_client,
            failed_payments_per_payer: pay.failed_payments_per_payer,
            payment_identifier_window: (pay.payment_identifier_window_seconds > 0)
                .then(|| std::time::Duration::from_secs(pay.payment_identifier_window_seconds)),
            require_payment_identifier: pay.require_payment_identifier,
            pending_settlement_wait: std::time::Duration::from_millis(
                pay.pending_settlement_wait_ms,
            ),
        },
    }
}
