//! Builds the 402 challenge: the v2 `PAYMENT-REQUIRED` header value and the v1 JSON body, from
//! a rule's precomputed offers and the request's resource URL. Both documents are serialized
//! once per configuration with markers where the per-request strings go (the error text, the
//! resource URL); a 402 splices the escaped strings into those templates. Output is
//! deterministic and byte-identical to serializing the documents per request.

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
    /// Shared: a payment in flight holds its offer without copying it.
    pub offers: Vec<Arc<Offer>>,
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
    /// The v2 `PaymentRequired` JSON with holes for the error and the URL; `None` when the
    /// document has a part made per request (a sign-in challenge) or did not split cleanly.
    v2_template: Option<Template>,
    /// The v1 body (without `payer`) with holes for the error and each offer's URL.
    v1_template: Option<Template>,
}

/// Where a per-request string goes in a [`Template`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hole {
    Error,
    Url,
}

/// A JSON document serialized once, split at the places where per-request strings go.
#[derive(Debug, Clone, PartialEq)]
struct Template {
    /// `parts.len() == holes.len() + 1`: part, hole, part, …, part.
    parts: Vec<Box<str>>,
    holes: Vec<Hole>,
    /// Bytes of the parts: the output's size before the strings.
    fixed_len: usize,
    /// Base64 of the last part from byte 0, 1 and 2 on: a header value encodes only what
    /// comes before it (plus up to two of its bytes, to reach a 3-byte boundary) per request.
    last_base64: [Option<Box<str>>; 3],
}

/// Stand-ins serialized where the error and the URL go: control characters no configured
/// text holds (a template whose markers do not come out as expected is not used).
const ERROR_MARK: &str = "\u{0}x402-error\u{0}";
const URL_MARK: &str = "\u{0}x402-url\u{0}";

impl Template {
    /// Splits `json` (serialized with the markers) at every marker; `None` unless exactly
    /// one error hole and `urls` URL holes came out.
    fn split(json: &str, urls: usize) -> Option<Template> {
        let em = serde_json::to_string(ERROR_MARK).ok()?;
        let um = serde_json::to_string(URL_MARK).ok()?;
        let (mut parts, mut holes, mut rest): (Vec<Box<str>>, _, _) =
            (Vec::new(), Vec::new(), json);
        loop {
            let next = match (rest.find(&em), rest.find(&um)) {
                (Some(e), Some(u)) if e < u => (e, Hole::Error, em.len()),
                (Some(e), None) => (e, Hole::Error, em.len()),
                (_, Some(u)) => (u, Hole::Url, um.len()),
                (None, None) => break,
            };
            let (at, hole, len) = next;
            parts.push(Box::from(&rest[..at]));
            holes.push(hole);
            rest = &rest[at + len..];
        }
        parts.push(Box::from(rest));
        let count = |h| holes.iter().filter(|x| **x == h).count();
        if count(Hole::Error) != 1 || count(Hole::Url) != urls {
            return None;
        }
        let fixed_len = parts.iter().map(|p| p.len()).sum();
        let last = parts.last().map(|p| p.as_bytes()).unwrap_or_default();
        let last_base64 =
            [0, 1, 2].map(|j| last.get(j..).map(|rest| Box::from(codec::encode(rest))));
        Some(Template {
            parts,
            holes,
            fixed_len,
            last_base64,
        })
    }

    /// The document with `error` and `url` (JSON-escaped) in the holes; without its last
    /// part when `last` is false.
    fn render(&self, error: &str, url: &str, extra: usize, last: bool) -> Vec<u8> {
        let urls = self.holes.len().saturating_sub(1);
        let mut out =
            Vec::with_capacity(self.fixed_len + error.len() + 2 + urls * (url.len() + 2) + extra);
        for (i, part) in self.parts.iter().enumerate() {
            let value = match self.holes.get(i) {
                Some(Hole::Error) => error,
                Some(Hole::Url) => url,
                None => {
                    if last {
                        out.extend_from_slice(part.as_bytes());
                    }
                    break;
                }
            };
            out.extend_from_slice(part.as_bytes());
            if serde_json::to_writer(&mut out, value).is_err() {
                out.extend_from_slice(b"\"\"");
            }
        }
        out
    }

    /// Base64 of [`Self::render`]: the part before the last hole's end is encoded per
    /// request, up to a 3-byte boundary, and the precomputed encoding of the rest follows.
    fn render_base64(&self, error: &str, url: &str) -> String {
        let mut head = self.render(error, url, 2, false);
        let last = self.parts.last().map(|p| p.as_bytes()).unwrap_or_default();
        let take = (3 - head.len() % 3) % 3;
        match (last.get(..take), &self.last_base64[take]) {
            (Some(bridge), Some(rest)) => {
                head.extend_from_slice(bridge);
                let mut out = codec::encode(&head);
                out.push_str(rest);
                out
            }
            // A last part shorter than the bridge: encode the whole document.
            _ => codec::encode(&self.render(error, url, 0, true)),
        }
    }
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
            offers: offers.into_iter().map(Arc::new).collect(),
            requirements_v2,
            description,
            mime_type,
            usd: None,
            price_points,
            extensions: None,
            sign_in: false,
            v2_template: None,
            v1_template: None,
        }
        .with_templates()
    }

    /// Serializes the 402 documents with markers and keeps them as templates.
    fn with_templates(mut self) -> Self {
        self.v2_template = if self.sign_in {
            None
        } else {
            Template::split(&self.serialize_v2(ERROR_MARK, URL_MARK), 1)
        };
        let v1_offers = self
            .offers
            .iter()
            .filter(|o| o.v1_network.is_some())
            .count();
        self.v1_template = Template::split(&self.serialize_v1(ERROR_MARK, URL_MARK), v1_offers);
        self
    }

    /// Offers Sign-In-With-X in every 402 of this price.
    pub fn with_sign_in(mut self, sign_in: bool) -> Self {
        self.sign_in = sign_in;
        self.with_templates()
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
        self.with_templates()
    }

    /// The same 402 with other offers (a corrective 402 carrying a channel's state),
    /// serialized per answer rather than from templates.
    pub fn with_offers(&self, offers: Vec<Offer>) -> Priced {
        let mut p = self.clone();
        p.requirements_v2 = offers.iter().map(|o| o.requirements.clone()).collect();
        p.offers = offers.into_iter().map(Arc::new).collect();
        p.v2_template = None;
        p.v1_template = None;
        p
    }

    /// Records the USD price this was compiled from.
    pub fn with_usd(mut self, usd: Option<rust_decimal::Decimal>) -> Self {
        self.usd = usd;
        self
    }

    /// The v2 `PaymentRequired` JSON (compact).
    pub fn payment_required_json(&self, error: &str, url: &str) -> String {
        match &self.v2_template {
            Some(t) => String::from_utf8(t.render(error, url, 0, true))
                .unwrap_or_else(|_| self.serialize_v2(error, url)),
            None => self.serialize_v2(error, url),
        }
    }

    /// The v2 `PaymentRequired` JSON serialized from its parts (the template's source, and
    /// the form of a 402 carrying a fresh sign-in challenge).
    fn serialize_v2(&self, error: &str, url: &str) -> String {
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
        match &self.v2_template {
            Some(t) => t.render_base64(error, url),
            None => codec::encode(self.serialize_v2(error, url).as_bytes()),
        }
    }

    /// The v1 402 body `{x402Version: 1, error, accepts}` (and `payer` when known). Networks
    /// without a v1 name are left out.
    pub fn v1_body(&self, error: &str, url: &str, payer: Option<&str>) -> Vec<u8> {
        let Some(t) = &self.v1_template else {
            return self.serialize_v1_with(error, url, payer).into_bytes();
        };
        let mut out = t.render(error, url, payer.map_or(0, |p| p.len() + 12), true);
        // `payer` is the last field and left out when absent: it goes before the closing brace.
        if let Some(payer) = payer
            && out.last() == Some(&b'}')
        {
            out.pop();
            out.extend_from_slice(b",\"payer\":");
            if serde_json::to_writer(&mut out, payer).is_err() {
                out.extend_from_slice(b"\"\"");
            }
            out.push(b'}');
        }
        out
    }

    /// The v1 body without `payer` serialized from its parts (the template's source).
    fn serialize_v1(&self, error: &str, url: &str) -> String {
        self.serialize_v1_with(error, url, None)
    }

    fn serialize_v1_with(&self, error: &str, url: &str, payer: Option<&str>) -> String {
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
        let v1 = String::from_utf8(p.v1_body("X-PAYMENT header is required", "http://h/w", None))
            .unwrap();
        assert!(v1.starts_with(r#"{"x402Version":1,"error":"X-PAYMENT header is required","accepts":[{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","resource":"http://h/w""#), "{v1}");
        assert_eq!(
            p.payment_required_header("e", "u"),
            p.payment_required_header("e", "u")
        );
    }

    fn two_offers() -> Priced {
        let other = Arc::new(Asset {
            network: "eip155:31337".into(),
            ..(*asset()).clone()
        });
        let pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
        Priced::new(
            vec![
                EXACT.offer(asset(), Some("base-sepolia".into()), 10000, pay_to, 300),
                EXACT.offer(other, None, 20000, pay_to, 60),
                EXACT.offer(asset(), Some("base-sepolia".into()), 30000, pay_to, 300),
            ],
            "Weather \"now\" <b>".into(),
            "application/json".into(),
        )
    }

    /// The templates give byte for byte what serializing each 402 gives, for every kind of
    /// string a request brings (quotes, backslashes, control characters, non-ASCII, empty).
    #[test]
    fn templates_equal_per_request_serialization() {
        let mut ext = serde_json::Map::new();
        ext.insert(
            "bazaar".into(),
            serde_json::json!({"info": {"x": "\u{1}é"}}),
        );
        let plain = two_offers();
        let extended = two_offers().with_extensions(Some(&ext));
        let urls = [
            "http://h/w?x=1",
            "http://h/w?x=12",
            "http://h/w?x=123",
            "https://h/a\"b\\c\u{7}d/é/\u{0}x402-url\u{0}",
            "",
        ];
        let errors = [
            "payment_required",
            "bad \"sig\"\n",
            "\u{0}x402-error\u{0}",
            "",
        ];
        for p in [&plain, &extended] {
            assert!(p.v2_template.is_some() && p.v1_template.is_some());
            for url in urls {
                for error in errors {
                    assert_eq!(
                        p.payment_required_json(error, url),
                        p.serialize_v2(error, url)
                    );
                    assert_eq!(
                        p.payment_required_header(error, url),
                        codec::encode(p.serialize_v2(error, url).as_bytes())
                    );
                    for payer in [None, Some("0xAbC"), Some("\"")] {
                        assert_eq!(
                            String::from_utf8(p.v1_body(error, url, payer)).unwrap(),
                            p.serialize_v1_with(error, url, payer)
                        );
                    }
                }
            }
        }
        // Only the offers with a v1 name are in the v1 body, each naming the URL.
        let v1 = String::from_utf8(plain.v1_body("e", "http://u/", None)).unwrap();
        assert_eq!(v1.matches("\"resource\":\"http://u/\"").count(), 2);
    }

    /// A price whose 402 carries a fresh sign-in challenge has no v2 template; a text that
    /// holds a marker does not split as expected and falls back to serializing.
    #[test]
    fn per_request_parts_and_odd_texts_fall_back() {
        let p = two_offers().with_sign_in(true);
        assert!(p.v2_template.is_none() && p.v1_template.is_some());
        let json = p.payment_required_json("e", "http://h/w");
        assert!(json.contains("\"sign-in-with-x\""), "{json}");
        let odd = Priced::new(
            vec![EXACT.offer(
                asset(),
                None,
                1,
                "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                1,
            )],
            URL_MARK.into(),
            "text/plain".into(),
        );
        assert!(odd.v2_template.is_none());
        assert_eq!(
            odd.payment_required_json("e", "u"),
            odd.serialize_v2("e", "u")
        );
    }
}
