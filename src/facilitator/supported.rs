//! What each facilitator says it supports (`/supported`), fetched at start and refreshed in the
//! background, and the choice of facilitator for a payment.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::conf::FacilitatorConf;
use crate::x402::challenge::Offer;

/// One supported kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kind {
    pub version: u8,
    pub scheme: String,
    pub network: String,
}

/// The last `/supported` answer of each facilitator, by name.
#[derive(Debug, Default)]
pub struct SupportedCache {
    kinds: ArcSwap<HashMap<String, Vec<Kind>>>,
}

/// Parses the `kinds` array of a `/supported` answer.
pub fn parse_kinds(v: &serde_json::Value) -> Vec<Kind> {
    v.get("kinds")
        .and_then(|k| k.as_array())
        .map(|arr| {
            arr.iter()
                .filter_map(|k| {
                    Some(Kind {
                        version: u8::try_from(k.get("x402Version")?.as_u64()?).ok()?,
                        scheme: k.get("scheme")?.as_str()?.to_owned(),
                        network: k.get("network")?.as_str()?.to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

impl SupportedCache {
    pub fn store(&self, name: &str, kinds: Vec<Kind>) {
        let mut map = (**self.kinds.load()).clone();
        map.insert(name.to_owned(), kinds);
        self.kinds.store(Arc::new(map));
    }

    /// Whether a facilitator may be asked about (version, scheme, network). A facilitator whose
    /// `/supported` is not known yet is tried rather than skipped.
    pub fn allows(
        &self,
        fac: &FacilitatorConf,
        version: u8,
        scheme: &str,
        network: &str,
        v1_name: Option<&str>,
    ) -> bool {
        if !fac.networks.is_empty() && !fac.networks.iter().any(|n| n == network) {
            return false;
        }
        match self.kinds.load().get(&fac.name) {
            None => true,
            Some(kinds) => kinds.iter().any(|k| {
                k.version == version
                    && k.scheme == scheme
                    && (k.network == network || Some(k.network.as_str()) == v1_name)
            }),
        }
    }

    /// The facilitators to use for a payment, in configured order.
    pub fn candidates<'a>(
        &self,
        facilitators: &'a [FacilitatorConf],
        version: u8,
        scheme: &str,
        network: &str,
        v1_name: Option<&str>,
    ) -> Vec<&'a FacilitatorConf> {
        facilitators
            .iter()
            .filter(|f| self.allows(f, version, scheme, network, v1_name))
            .collect()
    }

    /// The networks of `offers` (each priced rule's, as `(rule id, offer)`) that no
    /// facilitator can serve, as `rule: network` strings.
    pub fn unserved<'a>(
        &self,
        facilitators: &[FacilitatorConf],
        offers: impl IntoIterator<Item = (&'a str, &'a Offer)>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (rule, o) in offers {
            let (n, scheme) = (&o.requirements.network, &o.requirements.scheme);
            let v1 = o.v1_network.as_deref();
            let any = self.candidates(facilitators, 2, scheme, n, v1).len()
                + self.candidates(facilitators, 1, scheme, n, v1).len();
            if any == 0 {
                out.push(format!("{rule}: {n}"));
            }
        }
        out
    }
}
