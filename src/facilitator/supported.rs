//! What each facilitator says it supports (`/supported`), fetched at start and refreshed in the
//! background, and the choice of facilitator for a payment.

use std::collections::HashMap;
use std::sync::Arc;

use alloy::primitives::Address;
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

/// The addresses a facilitator sends transactions from, by CAIP-2 pattern (`eip155:*` or one
/// network), as its `/supported` lists them under `signers`.
pub type Signers = Vec<(String, Arc<[Address]>)>;

/// The last `/supported` answer of each facilitator, by name.
#[derive(Debug, Default)]
pub struct SupportedCache {
    kinds: ArcSwap<HashMap<String, Vec<Kind>>>,
    signers: ArcSwap<HashMap<String, Signers>>,
}

/// Parses the `signers` map of a v2 `/supported` answer: EVM addresses only (other families'
/// keys are not addresses), patterns with no valid address left out.
pub fn parse_signers(v: &serde_json::Value) -> Signers {
    let Some(map) = v.get("signers").and_then(|s| s.as_object()) else {
        return Vec::new();
    };
    map.iter()
        .filter(|(pattern, _)| pattern.starts_with("eip155:"))
        .filter_map(|(pattern, list)| {
            let addrs: Vec<Address> = list
                .as_array()?
                .iter()
                .filter_map(|a| a.as_str()?.parse().ok())
                .collect();
            (!addrs.is_empty()).then(|| (pattern.clone(), Arc::from(addrs)))
        })
        .collect()
}

/// Whether a CAIP-2 pattern (`eip155:8453`, or a namespace wildcard `eip155:*`) covers `network`.
fn covers(pattern: &str, network: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => network.starts_with(prefix) && prefix.ends_with(':'),
        None => pattern == network,
    }
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
    /// Keeps a facilitator's `/supported` answer: its kinds and its signers.
    pub fn store(&self, name: &str, answer: &serde_json::Value) {
        let mut map = (**self.kinds.load()).clone();
        map.insert(name.to_owned(), parse_kinds(answer));
        self.kinds.store(Arc::new(map));
        let mut map = (**self.signers.load()).clone();
        map.insert(name.to_owned(), parse_signers(answer));
        self.signers.store(Arc::new(map));
    }

    /// A facilitator's signers as its last `/supported` listed them (EVM patterns only), as a
    /// JSON object of pattern to checksummed addresses; `None` before its first answer.
    pub fn signers_view(&self, name: &str) -> Option<serde_json::Value> {
        let signers = self.signers.load();
        let list = signers.get(name)?;
        Some(serde_json::Value::Object(
            list.iter()
                .map(|(pattern, addrs)| {
                    let addrs = addrs.iter().map(|a| a.to_checksum(None).into()).collect();
                    (pattern.clone(), serde_json::Value::Array(addrs))
                })
                .collect(),
        ))
    }

    /// The addresses a facilitator said it sends `network`'s transactions from; `None` when
    /// its `/supported` is not known or lists none for that network.
    pub fn senders(&self, name: &str, network: &str) -> Option<Arc<[Address]>> {
        let signers = self.signers.load();
        let mut found: Vec<Address> = Vec::new();
        for (pattern, addrs) in signers.get(name)? {
            if covers(pattern, network) {
                found.extend(addrs.iter().copied());
            }
        }
        (!found.is_empty()).then(|| Arc::from(found))
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
    const B: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

    #[test]
    fn senders_come_from_the_signers_that_cover_the_network() {
        let cache = SupportedCache::default();
        assert_eq!(cache.senders("f", "eip155:8453"), None, "nothing known yet");
        cache.store(
            "f",
            &serde_json::json!({
                "kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:8453"}],
                "signers": {
                    "eip155:*": [A, "not an address"],
                    "eip155:84532": [B],
                    "eip1550:*": [B],
                    "solana:*": ["CKPKJWNdJEqa81x7CkZ14BVPiY6y16Sxs7owznqtWYp5"],
                    "eip155:1": []
                }
            }),
        );
        let a: Address = A.parse().expect("a");
        let b: Address = B.parse().expect("b");
        assert_eq!(cache.senders("f", "eip155:8453").as_deref(), Some(&[a][..]));
        let mut both = cache.senders("f", "eip155:84532").expect("both").to_vec();
        both.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(both, want);
        assert_eq!(cache.senders("f", "solana:mainnet"), None);
        assert_eq!(
            cache.senders("g", "eip155:8453"),
            None,
            "another facilitator"
        );
        // An answer without signers forgets the old ones.
        assert_eq!(
            cache.signers_view("f").expect("known")["eip155:84532"],
            serde_json::json!([B])
        );
        assert_eq!(cache.signers_view("g"), None);
        cache.store("f", &serde_json::json!({"kinds": []}));
        assert_eq!(cache.senders("f", "eip155:8453"), None);
        assert_eq!(cache.signers_view("f"), Some(serde_json::json!({})));
    }

    #[test]
    fn patterns_cover_their_namespace_or_one_network() {
        assert!(covers("eip155:*", "eip155:1"));
        assert!(covers("eip155:1", "eip155:1"));
        assert!(!covers("eip155:1", "eip155:10"));
        assert!(!covers("eip155:*", "eip1550:1"));
        assert!(
            !covers("eip*", "eip155:1"),
            "a wildcard covers one namespace"
        );
    }
}
