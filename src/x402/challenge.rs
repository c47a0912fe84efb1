//! Builds the 402 challenge: the v2 `PAYMENT-REQUIRED` header value and the v1 JSON body, from
//! a rule's precomputed offers and the request's resource URL. Output is deterministic: the same
//! offers and URL always give byte-identical requirements.

use std::sync::Arc;

use alloy::primitives::B256;

use super::codec;
use super::networks::Asset;
use super::types::{
    PaymentRequiredV1, PaymentRequiredV2, RequirementsV1, RequirementsV2, ResourceRef,
};

/// One way to pay for a rule: a scheme on a network with an asset, amount and recipient. Built
/// by the scheme (`crate::schemes::Scheme::offer`), once per configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub asset: Arc<Asset>,
    /// The v1 network name, when the network has one (only those appear in the v1 body).
    pub v1_network: Option<String>,
    /// The requirements exactly as the gateway issues them (v2 form).
    pub requirements: RequirementsV2,
    /// The asset's EIP-712 domain separator (name, version, chain id, contract), computed once
    /// per configuration instead of on every payment; `None` if the address does not parse.
    pub eip712_separator: Option<B256>,
}

/// What a rule charges: its offers plus the resource description.
#[derive(Debug, Clone, PartialEq)]
pub struct Priced {
    pub offers: Vec<Offer>,
    pub requirements_v2: Vec<RequirementsV2>,
    pub description: String,
    pub mime_type: String,
    /// The price in US dollars when it was written as `"$…"` (pay-per-crawl headers).
    pub usd: Option<rust_decimal::Decimal>,
    /// Each offer as (network, asset address in lower case, atomic amount): what a pass
    /// bought elsewhere is compared with.
    pub price_points: Vec<(String, String, u128)>,
    /// The v2 `extensions` object (`bazaar`, `payment-identifier`) as compact JSON, built once
    /// per configuration.
    pub extensions: Option<Arc<str>>,
    /// Each 402 offers past payers a Sign-In-With-X challenge (fresh per request).
    pub sign_in: bool,
}

impl Priced {
    pub fn new(offers: Vec<Offer>, description: String, mime_type: String) -> Self {
        let requirements_v2 = offers.iter().map(|o| o.requirements.clone()).collect();
        let price_points = offers
            .iter()
            .filter_map(|o| {
                let r = &o.requirements;
                Some((
                    r.network.clone(),
                    r.asset.to_ascii_lowercase(),
                    r.amount.parse().ok()?,
                ))
            })
            .collect();
        Priced {
            offers,
            requirements_v2,
            description,
            mime_type,
            usd: None,
            price_points,
            extensions: None,
            sign_in: false,
        }
    }

    /// Offers Sign-In-With-X in every 402 of this price.
    pub fn with_sign_in(mut self, sign_in: bool) -> Self {
        self.sign_in = sign_in;
        self
    }

    /// Adds the `extensions` object every v2 402 of this price carries (`None` or an empty
    /// object: none).
    pub fn with_extensions(
        mut self,
        extensions: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Self {
        self.extensions = extensions
            .filter(|e| !e.is_empty())
            .and_then(|e| serde_json::to_string(e).ok())
            .map(Arc::from);
        self
    }

    /// Records the USD price this was compiled from.
    pub fn with_usd(mut self, usd: Option<rust_decimal::Decimal>) -> Self {
        self.usd = usd;
        self
    }

    /// The v2 `PaymentRequired` JSON (compact).
    pub fn payment_required_json(&self, error: &str, url: &str) -> String {
        let pr = PaymentRequiredV2 {
            x402_version: 2,
            error,
            resource: ResourceRef {
                url,
                description: &self.description,
                mime_type: &self.mime_type,
            },
            accepts: &self.requirements_v2,
        };
        let mut json = serde_json::to_string(&pr).unwrap_or_default();
        // `extensions` goes last, as the reference writes it; the static part is precomputed,
        // a sign-in challenge (fresh nonce and times) is made per answer.
        let sign_in = self.sign_in.then(|| {
            let networks: Vec<&str> = self
                .offers
                .iter()
                .map(|o| o.requirements.network.as_str())
                .collect();
            super::extensions::sign_in_challenge(url, &networks, None).to_string()
        });
        if (self.extensions.is_some() || sign_in.is_some()) && json.ends_with('}') {
            json.pop();
            json.push_str(",\"extensions\":");
            match (&self.extensions, &sign_in) {
                (Some(ext), Some(siwx)) => {
                    json.push_str(&ext[..ext.len() - 1]);
                    json.push_str(",\"sign-in-with-x\":");
                    json.push_str(siwx);
                    json.push('}');
                }
                (Some(ext), None) => json.push_str(ext),
                (None, Some(siwx)) => {
                    json.push_str("{\"sign-in-with-x\":");
                    json.push_str(siwx);
                    json.push('}');
                }
                (None, None) => {}
            }
            json.push('}');
        }
        json
    }

    /// The `PAYMENT-REQUIRED` header value: base64 of [`Self::payment_required_json`].
    pub fn payment_required_header(&self, error: &str, url: &str) -> String {
        codec::encode(self.payment_required_json(error, url).as_bytes())
    }

    /// The v1 402 body `{x402Version: 1, error, accepts}`. Networks without a v1 name are left out.
    pub fn v1_body(&self, error: &str, url: &str, payer: Option<&str>) -> String {
        let accepts = self
            .offers
            .iter()
            .filter_map(|o| {
                let network = o.v1_network.as_deref()?;
                let r = &o.requirements;
                Some(RequirementsV1 {
                    scheme: &r.scheme,
                    network,
                    max_amount_required: &r.amount,
                    resource: url,
                    description: &self.description,
                    mime_type: &self.mime_type,
                    pay_to: &r.pay_to,
                    max_timeout_seconds: r.max_timeout_seconds,
                    asset: &r.asset,
                    extra: &r.extra,
                })
            })
            .collect();
        let body = PaymentRequiredV1 {
            x402_version: 1,
            error,
            accepts,
            payer,
        };
        serde_json::to_string(&body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemes::{EXACT, Scheme};

    fn asset() -> Arc<Asset> {
        Arc::new(Asset {
            id: "usdc".into(),
            network: "eip155:84532".into(),
            address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
            eip712_name: "USDC".into(),
            eip712_version: "2".into(),
            decimals: 6,
            usd: true,
        })
    }

    #[test]
    fn v2_header_shape_and_order() {
        let p = Priced::new(
            vec![EXACT.offer(
                asset(),
                Some("base-sepolia".into()),
                10000,
                "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                300,
            )],
            "Weather".into(),
            "application/json".into(),
        );
        let json = p.payment_required_json("payment_required", "http://h/w?x=1");
        assert_eq!(
            json,
            concat!(
                r#"{"x402Version":2,"error":"payment_required","resource":{"url":"http://h/w?x=1","description":"Weather","mimeType":"application/json"},"#,
                r#""accepts":[{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","#,
                r#""payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":300,"extra":{"name":"USDC","version":"2"}}]}"#
            )
        );
        let v1 = p.v1_body("X-PAYMENT header is required", "http://h/w", None);
        assert!(v1.starts_with(r#"{"x402Version":1,"error":"X-PAYMENT header is required","accepts":[{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","resource":"http://h/w""#), "{v1}");
        assert_eq!(
            p.payment_required_header("e", "u"),
            p.payment_required_header("e", "u")
        );
    }
}
