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
pub type Signers = Vec<(String, Vec<Address>)>;

/// The last `/supported` answer of each facilitator, by name, and the signers each
/// configuration of a facilitator has listed (by its fingerprint: a facilitator renamed,
/// moved or given other keys starts again).
#[derive(Debug, Default)]
pub struct SupportedCache {
    kinds: ArcSwap<HashMap<String, Vec<Kind>>>,
    signers: ArcSwap<HashMap<String, Signers>>,
}

/// The most signer addresses kept for one facilitator configuration, across its answers: a
/// list that grows past this (a facilitator naming new addresses on every answer) counts as
/// unknown rather than as memory that only grows.
const MAX_SIGNERS: usize = 256;

/// Parses the `signers` map of a v2 `/supported` answer: EVM patterns only (other families'
/// keys are not EVM addresses). `None` when an EVM pattern's list is not an array of
/// addresses: a list read in part is not a complete one.
pub fn parse_signers(v: &serde_json::Value) -> Option<Signers> {
    let Some(map) = v.get("signers").and_then(|s| s.as_object()) else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    for (pattern, list) in map.iter().filter(|(p, _)| p.starts_with("eip155:")) {
        let addrs = list
            .as_array()?
            .iter()
            .map(|a| a.as_str()?.parse().ok())
            .collect::<Option<Vec<Address>>>()?;
        out.push((pattern.clone(), addrs));
    }
    Some(out)
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
    /// Keeps a facilitator's `/supported` answer: its kinds, and its signers added to those
    /// its configuration listed before (a fleet behind one URL may answer with one instance's
    /// relayer at a time). An answer whose signers cannot all be read forgets them.
    pub fn store(&self, fac: &FacilitatorConf, answer: &serde_json::Value) {
        self.kinds.rcu(|kinds| {
            let mut map = (**kinds).clone();
            map.insert(fac.name.clone(), parse_kinds(answer));
            map
        });
        let listed = parse_signers(answer);
        self.signers.rcu(|signers| {
            let mut map = (**signers).clone();
            match &listed {
                None => {
                    map.remove(&fac.fingerprint);
                }
                Some(listed) => {
                    let known = map.entry(fac.fingerprint.clone()).or_default();
                    for (pattern, addrs) in listed {
                        match known.iter_mut().find(|(p, _)| p == pattern) {
                            Some((_, have)) => {
                                for a in addrs {
                                    if !have.contains(a) {
                                        have.push(*a);
                                    }
                                }
                            }
                            None => known.push((pattern.clone(), addrs.clone())),
                        }
                    }
                    if known.iter().map(|(_, a)| a.len()).sum::<usize>() > MAX_SIGNERS {
                        map.remove(&fac.fingerprint);
                    }
                }
            }
            map
        });
    }

    /// Forgets the signers of configurations no longer in `facilitators`.
    pub fn retain(&self, facilitators: &[FacilitatorConf]) {
        let live = |k: &String| facilitators.iter().any(|f| &f.fingerprint == k);
        if self.signers.load().keys().all(live) {
            return;
        }
        self.signers.rcu(|signers| {
            let mut map = (**signers).clone();
            map.retain(|k, _| live(k));
            map
        });
    }

    /// A facilitator's signers as its configuration's `/supported` answers listed them (EVM
    /// patterns only), as a JSON object of pattern to checksummed addresses; `None` when not
    /// known.
    pub fn signers_view(&self, fac: &FacilitatorConf) -> Option<serde_json::Value> {
        let signers = self.signers.load();
        let list = signers.get(&fac.fingerprint)?;
        Some(serde_json::Value::Object(
            list.iter()
                .map(|(pattern, addrs)| {
                    let addrs = addrs.iter().map(|a| a.to_checksum(None).into()).collect();
                    (pattern.clone(), serde_json::Value::Array(addrs))
                })
                .collect(),
        ))
    }

    /// The addresses a facilitator sends `network`'s transactions from, when its
    /// configuration says its `/supported` lists them all (`signers_complete`) and it listed
    /// some for that network; otherwise `None`.
    pub fn senders(&self, fac: &FacilitatorConf, network: &str) -> Option<Arc<[Address]>> {
        if !fac.signers_complete {
            return None;
        }
        let signers = self.signers.load();
        let mut found: Vec<Address> = Vec::new();
        for (pattern, addrs) in signers.get(&fac.fingerprint)? {
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

    fn fac(name: &str, fingerprint: &str, complete: bool) -> FacilitatorConf {
        FacilitatorConf {
            name: name.into(),
            kind: crate::facilitator::conf::FacilitatorKind::Http,
            url: "http://127.0.0.1:1".into(),
            networks: Vec::new(),
            timeout: std::time::Duration::from_secs(1),
            headers: Vec::new(),
            priority: 0,
            weight: 1,
            failure_threshold: 1,
            max_eject: std::time::Duration::from_secs(1),
            confirm: crate::facilitator::Confirm::Receipt,
            confirm_timeout: std::time::Duration::from_secs(1),
            signers_complete: complete,
            fingerprint: fingerprint.into(),
        }
    }

    fn answer(signers: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:8453"}],
            "signers": signers,
        })
    }

    #[test]
    fn senders_come_from_the_signers_that_cover_the_network() {
        let cache = SupportedCache::default();
        let f = fac("f", "f1", true);
        assert_eq!(cache.senders(&f, "eip155:8453"), None, "nothing known yet");
        cache.store(
            &f,
            &answer(serde_json::json!({
                "eip155:*": [A],
                "eip155:84532": [B],
                "eip1550:*": [B],
                "solana:*": ["CKPKJWNdJEqa81x7CkZ14BVPiY6y16Sxs7owznqtWYp5"],
                "eip155:1": []
            })),
        );
        let a: Address = A.parse().expect("a");
        let b: Address = B.parse().expect("b");
        assert_eq!(cache.senders(&f, "eip155:8453").as_deref(), Some(&[a][..]));
        let mut both = cache.senders(&f, "eip155:84532").expect("both").to_vec();
        both.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(both, want);
        assert_eq!(cache.senders(&f, "solana:mainnet"), None);
        assert_eq!(
            cache.signers_view(&f).expect("known")["eip155:84532"],
            serde_json::json!([B])
        );
        // Only a configuration that says its list is complete uses it.
        let incomplete = fac("f", "f1", false);
        assert_eq!(cache.senders(&incomplete, "eip155:8453"), None);
        // Another configuration under the same name (moved, other keys) starts again.
        let moved = fac("f", "f2", true);
        assert_eq!(cache.senders(&moved, "eip155:8453"), None);
        assert_eq!(cache.signers_view(&moved), None);
    }

    #[test]
    fn signers_add_up_across_answers_and_an_unreadable_list_forgets_them() {
        let cache = SupportedCache::default();
        let f = fac("f", "f1", true);
        let (a, b): (Address, Address) = (A.parse().expect("a"), B.parse().expect("b"));
        cache.store(&f, &answer(serde_json::json!({"eip155:*": [A]})));
        // Another instance behind the same URL answers with its own relayer.
        cache.store(&f, &answer(serde_json::json!({"eip155:*": [B]})));
        assert_eq!(
            cache.senders(&f, "eip155:8453").as_deref(),
            Some(&[a, b][..])
        );
        cache.store(&f, &serde_json::json!({"kinds": []}));
        assert_eq!(
            cache.senders(&f, "eip155:8453").as_deref(),
            Some(&[a, b][..]),
            "an answer without signers takes none away"
        );
        for bad in [
            serde_json::json!({"eip155:*": [A, "not an address"]}),
            serde_json::json!({"eip155:*": A}),
            serde_json::json!({"eip155:*": [7]}),
        ] {
            cache.store(&f, &answer(serde_json::json!({"eip155:*": [A]})));
            cache.store(&f, &answer(bad.clone()));
            assert_eq!(cache.senders(&f, "eip155:8453"), None, "{bad}");
            assert_eq!(cache.signers_view(&f), None, "{bad}");
        }
        // A list that keeps growing is not one to trust.
        for n in 0..=MAX_SIGNERS {
            let addr = Address::left_padding_from(&(n as u64 + 1).to_be_bytes());
            cache.store(
                &f,
                &answer(serde_json::json!({"eip155:*": [addr.to_checksum(None)]})),
            );
        }
        assert_eq!(cache.senders(&f, "eip155:8453"), None);
        // Configurations no longer configured are forgotten.
        cache.store(&f, &answer(serde_json::json!({"eip155:*": [A]})));
        cache.retain(&[fac("f", "f2", true)]);
        assert_eq!(cache.senders(&f, "eip155:8453"), None);
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
