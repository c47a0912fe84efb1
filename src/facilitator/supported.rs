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

/// What a facilitator configuration's answers said about its signers.
#[derive(Debug, Clone)]
enum Listed {
    /// The addresses its answers listed, added up.
    Known(Signers),
    /// An answer listed signers that could not all be read, or more than [`MAX_SIGNERS`]:
    /// no list of this configuration is trusted again (until it changes).
    Untrusted,
}

/// The kinds each facilitator configuration's last `/supported` answer named, and the
/// signers its answers have listed, both by the configuration's fingerprint: a facilitator
/// renamed, moved or given other keys starts again (tried for every kind until it answers),
/// never with what its previous configuration said.
#[derive(Debug, Default)]
pub struct SupportedCache {
    kinds: ArcSwap<HashMap<String, Vec<Kind>>>,
    signers: ArcSwap<HashMap<String, Listed>>,
}

/// The most signer addresses kept for one facilitator configuration, across its answers: a
/// list that grows past this (a facilitator naming new addresses on every answer) counts as
/// unknown rather than as memory that only grows.
const MAX_SIGNERS: usize = 256;

/// Parses the `signers` map of a v2 `/supported` answer: EVM patterns only (other families'
/// keys are not EVM addresses); no `signers` lists none. `None` when `signers` is not an
/// object, an EVM pattern's list is not an array of addresses (a list read in part is not a
/// complete one), or it names more than [`MAX_SIGNERS`] addresses.
pub fn parse_signers(v: &serde_json::Value) -> Option<Signers> {
    let map = match v.get("signers") {
        None | Some(serde_json::Value::Null) => return Some(Vec::new()),
        Some(s) => s.as_object()?,
    };
    let mut out = Vec::new();
    let mut total = 0usize;
    for (pattern, list) in map.iter().filter(|(p, _)| p.starts_with("eip155:")) {
        let list = list.as_array()?;
        total += list.len();
        if total > MAX_SIGNERS {
            return None;
        }
        let addrs = list
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
    /// its configuration listed before (an address listed once is still trusted to be one of
    /// its own). An answer whose signers cannot all be read, or a list that grows past
    /// [`MAX_SIGNERS`], makes this configuration's list untrusted for good.
    pub fn store(&self, fac: &FacilitatorConf, answer: &serde_json::Value) {
        self.kinds.rcu(|kinds| {
            let mut map = (**kinds).clone();
            map.insert(fac.fingerprint.clone(), parse_kinds(answer));
            map
        });
        let listed = parse_signers(answer);
        self.signers.rcu(|signers| {
            let mut map = (**signers).clone();
            let entry = map
                .entry(fac.fingerprint.clone())
                .or_insert_with(|| Listed::Known(Vec::new()));
            match (&listed, &mut *entry) {
                (_, Listed::Untrusted) => {}
                (None, _) => *entry = Listed::Untrusted,
                (Some(listed), Listed::Known(known)) => {
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
                        *entry = Listed::Untrusted;
                    }
                }
            }
            map
        });
    }

    /// Forgets the kinds and signers of configurations no longer in `facilitators`.
    pub fn retain(&self, facilitators: &[FacilitatorConf]) {
        let live = |k: &String| facilitators.iter().any(|f| &f.fingerprint == k);
        if !self.kinds.load().keys().all(live) {
            self.kinds.rcu(|kinds| {
                let mut map = (**kinds).clone();
                map.retain(|k, _| live(k));
                map
            });
        }
        if !self.signers.load().keys().all(live) {
            self.signers.rcu(|signers| {
                let mut map = (**signers).clone();
                map.retain(|k, _| live(k));
                map
            });
        }
    }

    /// Whether this facilitator configuration's `/supported` has answered.
    #[cfg(test)]
    pub fn answered(&self, fac: &FacilitatorConf) -> bool {
        self.kinds.load().contains_key(&fac.fingerprint)
    }

    /// A facilitator's signers as its configuration's `/supported` answers listed them (EVM
    /// patterns only), as a JSON object of pattern to checksummed addresses; `"untrusted"`
    /// once a list could not all be read or grew too long; `None` before the first answer.
    pub fn signers_view(&self, fac: &FacilitatorConf) -> Option<serde_json::Value> {
        let signers = self.signers.load();
        let list = match signers.get(&fac.fingerprint)? {
            Listed::Known(list) => list,
            Listed::Untrusted => return Some("untrusted".into()),
        };
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
        let Listed::Known(list) = signers.get(&fac.fingerprint)? else {
            return None;
        };
        let mut found: Vec<Address> = Vec::new();
        for (pattern, addrs) in list {
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
        match self.kinds.load().get(&fac.fingerprint) {
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
        let too_many: Vec<String> = (0..=MAX_SIGNERS)
            .map(|n| Address::left_padding_from(&(n as u64 + 1).to_be_bytes()).to_checksum(None))
            .collect();
        for (n, bad) in [
            serde_json::json!({"eip155:*": [A, "not an address"]}),
            serde_json::json!({"eip155:*": A}),
            serde_json::json!({"eip155:*": [7]}),
            serde_json::json!([A]),
            serde_json::json!({"eip155:*": too_many}),
        ]
        .into_iter()
        .enumerate()
        {
            // A fresh configuration each time: untrusted sticks.
            let f = fac("f", &format!("bad{n}"), true);
            cache.store(&f, &answer(serde_json::json!({"eip155:*": [A]})));
            assert!(cache.senders(&f, "eip155:8453").is_some());
            cache.store(&f, &answer(bad.clone()));
            assert_eq!(cache.senders(&f, "eip155:8453"), None, "{bad}");
            assert_eq!(cache.signers_view(&f), Some("untrusted".into()), "{bad}");
            // A good answer later does not make the list complete again.
            cache.store(&f, &answer(serde_json::json!({"eip155:*": [A]})));
            assert_eq!(cache.senders(&f, "eip155:8453"), None, "{bad}");
        }
        // A list that keeps growing, one answer at a time, is not one to trust either.
        let g = fac("g", "g1", true);
        for addr in &too_many {
            cache.store(&g, &answer(serde_json::json!({"eip155:*": [addr]})));
        }
        assert_eq!(cache.senders(&g, "eip155:8453"), None);
        cache.store(&g, &answer(serde_json::json!({"eip155:*": [A]})));
        assert_eq!(cache.senders(&g, "eip155:8453"), None, "sticks");
        // Configurations no longer configured are forgotten.
        cache.retain(&[fac("f", "f2", true)]);
        assert_eq!(cache.senders(&f, "eip155:8453"), None);
        assert_eq!(cache.signers_view(&g), None);
    }

    /// What a facilitator supports is its configuration's: the same name moved elsewhere is
    /// tried for every kind until its own `/supported` answers, not held to the old answer.
    #[test]
    fn kinds_belong_to_a_configuration_not_a_name() {
        let cache = SupportedCache::default();
        let old = fac("f", "f1", false);
        let moved = fac("f", "f2", false);
        assert!(!cache.answered(&old));
        assert!(
            cache.allows(&old, 2, "upto", "eip155:8453", None),
            "unknown: tried"
        );
        cache.store(&old, &answer(serde_json::json!({})));
        assert!(cache.answered(&old));
        assert!(cache.allows(&old, 2, "exact", "eip155:8453", None));
        assert!(!cache.allows(&old, 2, "upto", "eip155:8453", None));
        assert!(!cache.answered(&moved));
        assert!(cache.allows(&moved, 2, "upto", "eip155:8453", None));
        cache.store(
            &moved,
            &serde_json::json!({"kinds": [{"x402Version": 2, "scheme": "upto", "network": "eip155:8453"}]}),
        );
        assert!(!cache.allows(&moved, 2, "exact", "eip155:8453", None));
        assert!(cache.allows(&moved, 2, "upto", "eip155:8453", None));
        // The old configuration goes with the reload that replaced it.
        cache.retain(std::slice::from_ref(&moved));
        assert!(!cache.answered(&old));
        assert!(cache.answered(&moved));
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
