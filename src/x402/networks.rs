//! The registry of EVM networks and their assets: CAIP-2 ids, v1 names, chain ids, and the
//! EIP-712 domains of the stablecoins used to turn USD prices into atomic amounts.

use std::collections::BTreeMap;
use std::sync::Arc;

/// An ERC-20 asset that can be paid with EIP-3009 `transferWithAuthorization`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Asset {
    /// The name the config uses for this asset (`usdc` for built-in ones).
    pub id: String,
    /// The CAIP-2 id of the network it lives on.
    pub network: String,
    /// The contract address, EIP-55 checksummed.
    pub address: String,
    /// EIP-712 domain `name`.
    pub eip712_name: String,
    /// EIP-712 domain `version`.
    pub eip712_version: String,
    pub decimals: u32,
    /// Whether one whole unit is worth one US dollar (so `"$0.01"` prices can use it).
    pub usd: bool,
}

/// One EVM network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// CAIP-2 id, `eip155:<chain id>`.
    pub caip2: String,
    /// The v1 short name (`base`, `base-sepolia`), when the network has one.
    pub v1_name: Option<String>,
    pub chain_id: u64,
    /// The asset USD prices are paid in on this network, if any.
    pub usd_asset: Option<Arc<Asset>>,
    /// JSON-RPC endpoints, when configured (may carry API keys: never printed).
    pub rpc_urls: Vec<crate::secret::Secret>,
}

struct BuiltIn {
    v1: Option<&'static str>,
    chain_id: u64,
    usdc: Option<(&'static str, &'static str)>,
}

const fn net(
    v1: Option<&'static str>,
    chain_id: u64,
    usdc: Option<(&'static str, &'static str)>,
) -> BuiltIn {
    BuiltIn { v1, chain_id, usdc }
}

const USD_COIN: &str = "USD Coin";

/// Built-in networks. USDC addresses and EIP-712 names as deployed; note Base Sepolia and Polygon
/// Amoy name their token `USDC` while the mainnets use `USD Coin`. All use domain version `2`.
const BUILT_IN: &[BuiltIn] = &[
    net(
        Some("base"),
        8453,
        Some(("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", USD_COIN)),
    ),
    net(
        Some("base-sepolia"),
        84532,
        Some(("0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC")),
    ),
    net(
        Some("ethereum"),
        1,
        Some(("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", USD_COIN)),
    ),
    net(Some("sepolia"), 11155111, None),
    net(
        Some("avalanche"),
        43114,
        Some(("0xB97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E", USD_COIN)),
    ),
    net(
        Some("avalanche-fuji"),
        43113,
        Some(("0x5425890298aed601595a70AB815c96711a31Bc65", USD_COIN)),
    ),
    net(
        Some("polygon"),
        137,
        Some(("0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359", USD_COIN)),
    ),
    net(
        Some("polygon-amoy"),
        80002,
        Some(("0x41E94Eb019C0762f9Bfcf9Fb1E58725BfB0e7582", "USDC")),
    ),
    net(
        None,
        42161,
        Some(("0xaf88d065e77c8cC2239327C5EDb3A432268e5831", USD_COIN)),
    ),
    net(
        None,
        421614,
        Some(("0x75faf114eafb1BDbe2F0316DF893fd58CE46AA4d", USD_COIN)),
    ),
    net(Some("sei"), 1329, None),
    net(Some("sei-testnet"), 1328, None),
    net(Some("iotex"), 4689, None),
    net(Some("abstract"), 2741, None),
    net(Some("abstract-testnet"), 11124, None),
    net(Some("peaq"), 3338, None),
    net(Some("story"), 1514, None),
    net(Some("educhain"), 41923, None),
    net(Some("skale-base-sepolia"), 324705682, None),
];

/// The networks and assets one configuration knows: the built-ins plus those it declares.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    networks: BTreeMap<String, Network>,
    /// Assets by (network, lowercase address) and by id.
    assets_by_address: BTreeMap<(String, String), Arc<Asset>>,
    assets_by_id: BTreeMap<String, Arc<Asset>>,
}

/// Why a network or asset could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("`{0}` is not a CAIP-2 EVM network id (expected eip155:<chain id>)")]
    BadNetworkId(String),
    #[error("v1 name `{0}` is already used by {1}")]
    V1NameTaken(String, String),
    #[error("unknown network `{0}`")]
    UnknownNetwork(String),
    #[error("asset id `{0}` is already declared")]
    DuplicateAssetId(String),
    #[error("`{0}` is not a 20-byte hex address")]
    BadAddress(String),
}

/// Parses `eip155:<id>` into the chain id.
pub fn chain_id_of(caip2: &str) -> Option<u64> {
    let id = caip2.strip_prefix("eip155:")?;
    if id.is_empty() || id.starts_with('0') || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// Dollars worth `atomic` units of a one-dollar asset with `decimals` decimals, for metrics
/// (a float: dashboards sum it; the ledger keeps the exact atomic amount).
pub fn atomic_to_usd(atomic: u64, decimals: u32) -> f64 {
    atomic as f64 / 10f64.powi(decimals.min(i32::MAX as u32) as i32)
}

/// Returns the EIP-55 checksummed form of a hex address, or `None` if it is not one.
pub fn checksum_address(addr: &str) -> Option<String> {
    let parsed: alloy::primitives::Address = addr.parse().ok()?;
    let hex = addr
        .strip_prefix("0x")
        .or_else(|| addr.strip_prefix("0X"))?;
    if hex.len() != 40 {
        return None;
    }
    Some(parsed.to_checksum(None))
}

impl Registry {
    /// The registry of built-in networks and their USDC deployments.
    pub fn builtin() -> Self {
        let mut r = Registry::default();
        for b in BUILT_IN {
            let caip2 = format!("eip155:{}", b.chain_id);
            let usd_asset = b.usdc.map(|(address, name)| {
                Arc::new(Asset {
                    id: "usdc".into(),
                    network: caip2.clone(),
                    address: address.into(),
                    eip712_name: name.into(),
                    eip712_version: "2".into(),
                    decimals: 6,
                    usd: true,
                })
            });
            if let Some(a) = &usd_asset {
                r.assets_by_address
                    .insert((caip2.clone(), a.address.to_ascii_lowercase()), a.clone());
            }
            r.networks.insert(
                caip2.clone(),
                Network {
                    caip2,
                    v1_name: b.v1.map(str::to_owned),
                    chain_id: b.chain_id,
                    usd_asset,
                    rpc_urls: Vec::new(),
                },
            );
        }
        r
    }

    /// Declares a network that is not built in (a local or private chain), or renames the v1
    /// name of a built-in one.
    pub fn add_network(&mut self, caip2: &str, v1_name: Option<&str>) -> Result<(), RegistryError> {
        let chain_id =
            chain_id_of(caip2).ok_or_else(|| RegistryError::BadNetworkId(caip2.into()))?;
        if let Some(name) = v1_name
            && let Some(other) = self
                .networks
                .values()
                .find(|n| n.caip2 != caip2 && n.v1_name.as_deref() == Some(name))
        {
            return Err(RegistryError::V1NameTaken(name.into(), other.caip2.clone()));
        }
        let entry = self
            .networks
            .entry(caip2.to_owned())
            .or_insert_with(|| Network {
                caip2: caip2.to_owned(),
                v1_name: None,
                chain_id,
                usd_asset: None,
                rpc_urls: Vec::new(),
            });
        if v1_name.is_some() {
            entry.v1_name = v1_name.map(str::to_owned);
        }
        Ok(())
    }

    /// Sets the JSON-RPC endpoints of a known network.
    pub fn set_rpc_urls(&mut self, caip2: &str, urls: Vec<crate::secret::Secret>) {
        if let Some(n) = self.networks.get_mut(caip2) {
            n.rpc_urls = urls;
        }
    }

    /// Declares an asset. When `asset.usd` is set it becomes the network's USD asset, replacing
    /// the built-in USDC for `"$…"` prices.
    pub fn add_asset(&mut self, mut asset: Asset) -> Result<Arc<Asset>, RegistryError> {
        if !self.networks.contains_key(&asset.network) {
            return Err(RegistryError::UnknownNetwork(asset.network.clone()));
        }
        asset.address = checksum_address(&asset.address)
            .ok_or_else(|| RegistryError::BadAddress(asset.address.clone()))?;
        if self.assets_by_id.contains_key(&asset.id) || asset.id == "usdc" {
            return Err(RegistryError::DuplicateAssetId(asset.id.clone()));
        }
        let asset = Arc::new(asset);
        self.assets_by_id.insert(asset.id.clone(), asset.clone());
        self.assets_by_address.insert(
            (asset.network.clone(), asset.address.to_ascii_lowercase()),
            asset.clone(),
        );
        if asset.usd
            && let Some(n) = self.networks.get_mut(&asset.network)
        {
            n.usd_asset = Some(asset.clone());
        }
        Ok(asset)
    }

    /// Finds a network by CAIP-2 id or v1 name.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.get(name).or_else(|| {
            self.networks
                .values()
                .find(|n| n.v1_name.as_deref() == Some(name))
        })
    }

    /// Finds an asset by declared id (or `usdc`) on a network, or by address.
    pub fn asset(&self, network: &str, id_or_address: &str) -> Option<Arc<Asset>> {
        if id_or_address.starts_with("0x") || id_or_address.starts_with("0X") {
            return self
                .assets_by_address
                .get(&(network.to_owned(), id_or_address.to_ascii_lowercase()))
                .cloned();
        }
        if id_or_address == "usdc" {
            return self
                .networks
                .get(network)?
                .usd_asset
                .clone()
                .filter(|a| a.id == "usdc");
        }
        self.assets_by_id
            .get(id_or_address)
            .filter(|a| a.network == network)
            .cloned()
    }

    /// Finds a declared asset by id, whatever its network.
    pub fn asset_by_id(&self, id: &str) -> Option<Arc<Asset>> {
        self.assets_by_id.get(id).cloned()
    }

    /// All known networks, by CAIP-2 id.
    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.values()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn atomic_units_become_dollars() {
        assert_eq!(super::atomic_to_usd(10_000, 6), 0.01);
        assert_eq!(super::atomic_to_usd(1_500_000, 6), 1.5);
        assert_eq!(super::atomic_to_usd(7, 0), 7.0);
    }

    use super::*;

    #[test]
    fn base_and_base_sepolia_have_different_domain_names() {
        let r = Registry::builtin();
        let base = r
            .network("base")
            .and_then(|n| n.usd_asset.clone())
            .map(|a| a.eip712_name.clone());
        let sep = r
            .network("eip155:84532")
            .and_then(|n| n.usd_asset.clone())
            .map(|a| a.eip712_name.clone());
        assert_eq!(base.as_deref(), Some("USD Coin"));
        assert_eq!(sep.as_deref(), Some("USDC"));
        assert_eq!(r.network("base-sepolia").map(|n| n.chain_id), Some(84532));
    }

    #[test]
    fn chain_ids_parse_strictly() {
        assert_eq!(chain_id_of("eip155:31337"), Some(31337));
        assert_eq!(chain_id_of("eip155:031337"), None);
        assert_eq!(chain_id_of("eip155:"), None);
        assert_eq!(chain_id_of("solana:abc"), None);
        assert_eq!(chain_id_of("eip155:1x"), None);
    }

    #[test]
    fn custom_assets_replace_the_usd_asset() {
        let mut r = Registry::builtin();
        r.add_network("eip155:31337", None).expect("network");
        let a = r
            .add_asset(Asset {
                id: "tusd".into(),
                network: "eip155:31337".into(),
                address: "0x5fbdb2315678afecb367f032d93f642f64180aa3".into(),
                eip712_name: "Test USD".into(),
                eip712_version: "1".into(),
                decimals: 6,
                usd: true,
            })
            .expect("asset");
        assert_eq!(a.address, "0x5FbDB2315678afecb367f032d93F642f64180aa3");
        let n = r.network("eip155:31337").expect("net");
        assert_eq!(n.usd_asset.as_ref().map(|a| a.id.as_str()), Some("tusd"));
        assert!(
            r.asset("eip155:31337", "0x5FBDB2315678AFECB367F032D93F642F64180AA3")
                .is_some()
        );
        assert_eq!(
            r.add_network("eip155:1", Some("base")),
            Err(RegistryError::V1NameTaken(
                "base".into(),
                "eip155:8453".into()
            ))
        );
    }
}
