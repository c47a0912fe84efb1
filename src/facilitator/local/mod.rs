//! The built-in settler (`kind = "local"`): verifies `exact` EIP-3009 payments with the local
//! checks plus an `eth_call` simulation, and settles them by sending `transferWithAuthorization`
//! with a relayer key, answering in the facilitator API's shapes (x402-notes §3, §4.3).
//! [`Settlers`] keeps one settler per facilitator configuration across reloads.
//!
//! `verify` decodes a facilitator request and runs the checks that answer `/verify`; `send`
//! holds the relayer's nonce lanes, signs and broadcasts the transaction, waits for its receipt,
//! resends it when replaced, and classifies the outcome of a settlement (settled, refused or
//! pending).

mod send;
mod verify;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use serde_json::{Value, json};

use self::send::{Lanes, NonceLane, failed};
use crate::facilitator::conf::{ChainConf, FacilitatorConf, FacilitatorKind};
use crate::facilitator::rpc::{ChainReader, RpcError};
use crate::secret::Secret;
use crate::x402::types::{SettleResponse, VerifyResponse};

/// Reason strings, as `@x402/evm` 2.27 and the x402 spec spell them (x402-notes §3.6).
pub mod reason {
    pub const INVALID_PAYLOAD: &str = "invalid_payload";
    pub const INVALID_REQUIREMENTS: &str = "invalid_payment_requirements";
    pub const INVALID_VERSION: &str = "invalid_x402_version";
    pub const UNSUPPORTED_SCHEME: &str = "unsupported_scheme";
    pub const INVALID_NETWORK: &str = "invalid_network";
    pub const SCHEME: &str = "invalid_exact_evm_scheme";
    pub const NETWORK_MISMATCH: &str = "invalid_exact_evm_network_mismatch";
    /// x402-rs' name: the payload's `accepted` is not the requirements it is verified against.
    pub const ACCEPTED_MISMATCH: &str = "accepted_requirements_mismatch";
    pub const MISSING_DOMAIN: &str = "invalid_exact_evm_missing_eip712_domain";
    pub const RECIPIENT: &str = "invalid_exact_evm_recipient_mismatch";
    pub const SIGNATURE: &str = "invalid_exact_evm_signature";
    pub const PARSE_SIGNATURE: &str = "invalid_exact_evm_failed_to_parse_signature";
    pub const VALUE: &str = "invalid_exact_evm_payload_authorization_value_mismatch";
    pub const VALID_AFTER: &str = "invalid_exact_evm_payload_authorization_valid_after";
    pub const VALID_BEFORE: &str = "invalid_exact_evm_payload_authorization_valid_before";
    pub const TOO_LONG: &str = "authorization_validity_too_long";
    pub const NONCE_USED: &str = "invalid_exact_evm_nonce_already_used";
    pub const BALANCE: &str = "invalid_exact_evm_insufficient_balance";
    pub const SIMULATION: &str = "invalid_exact_evm_transaction_simulation_failed";
    pub const UNDEPLOYED: &str = "invalid_exact_evm_payload_undeployed_smart_wallet";
    /// The asset address holds no contract.
    pub const ASSET_NOT_DEPLOYED: &str = "asset_not_deployed_contract";
    pub const TX_FAILED: &str = "invalid_exact_evm_transaction_failed";
    pub const TRANSFER_EVENT: &str = "invalid_exact_evm_transfer_event_mismatch";
    /// Sent, but no receipt within `receipt_timeout`: the outcome is not known yet.
    pub const PENDING: &str = "settlement_pending";
    /// The same authorization is being settled by another call right now.
    pub const DUPLICATE: &str = "duplicate_settlement";
    pub const VERIFY_ERROR: &str = "unexpected_verify_error";
    pub const SETTLE_ERROR: &str = "unexpected_settle_error";
}

/// Why a settler cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    /// The relayer key is not a secp256k1 private key. Never carries the key.
    #[error("the relayer key is not a valid 32-byte secp256k1 private key")]
    BadKey,
    #[error("no chain configured")]
    NoChains,
    #[error("network {network}: {source}")]
    Rpc { network: String, source: RpcError },
    #[error("facilitator `{0}` is not `kind = \"local\"`")]
    NotLocal(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Chain {
    conf: ChainConf,
    reader: ChainReader,
    lane: Arc<NonceLane>,
}

/// The built-in settler for one relayer key and its chains.
pub struct LocalSettler {
    address: Address,
    wallet: EthereumWallet,
    chains: Vec<Chain>,
    receipt_timeout: Duration,
    rpc_timeout: Duration,
    /// Authorizations (token, from, nonce) being settled right now.
    in_flight: Mutex<HashSet<(Address, Address, B256)>>,
    /// Assets seen to hold contract code, by (chain id, address).
    deployed: Mutex<HashSet<(u64, Address)>>,
}

impl std::fmt::Debug for LocalSettler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSettler")
            .field("relayer", &self.address)
            .field(
                "networks",
                &self
                    .chains
                    .iter()
                    .map(|c| &c.conf.caip2)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Releases an in-flight authorization when a settlement ends, however it ends.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<(Address, Address, B256)>>,
    key: (Address, Address, B256),
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.key);
    }
}

impl LocalSettler {
    /// A settler sending from `relayer_key` on `chains`. No I/O happens here.
    pub fn new(
        relayer_key: &Secret,
        chains: &[ChainConf],
        receipt_timeout: Duration,
        rpc_timeout: Duration,
    ) -> Result<Self, LocalError> {
        Self::with_lanes(
            relayer_key,
            chains,
            receipt_timeout,
            rpc_timeout,
            &Lanes::default(),
        )
    }

    fn with_lanes(
        relayer_key: &Secret,
        chains: &[ChainConf],
        receipt_timeout: Duration,
        rpc_timeout: Duration,
        lanes: &Lanes,
    ) -> Result<Self, LocalError> {
        let signer: PrivateKeySigner = relayer_key
            .expose()
            .trim()
            .parse()
            .map_err(|_| LocalError::BadKey)?;
        let address = signer.address();
        if chains.is_empty() {
            return Err(LocalError::NoChains);
        }
        let chains = chains
            .iter()
            .map(|c| {
                let reader = ChainReader::new(&c.rpc_urls, rpc_timeout).map_err(|source| {
                    LocalError::Rpc {
                        network: c.caip2.clone(),
                        source,
                    }
                })?;
                let lane = lock(lanes)
                    .entry((address, c.chain_id))
                    .or_default()
                    .clone();
                Ok(Chain {
                    conf: c.clone(),
                    reader,
                    lane,
                })
            })
            .collect::<Result<Vec<_>, LocalError>>()?;
        Ok(LocalSettler {
            address,
            wallet: EthereumWallet::from(signer),
            chains,
            receipt_timeout,
            rpc_timeout,
            in_flight: Mutex::new(HashSet::new()),
            deployed: Mutex::new(HashSet::new()),
        })
    }

    /// The relayer's address: it sends the transactions and pays their gas.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The `GET /supported` answer.
    pub fn supported(&self) -> Value {
        let v2 = self
            .chains
            .iter()
            .map(|c| json!({"x402Version": 2, "scheme": "exact", "network": c.conf.caip2}));
        let v1 = self.chains.iter().filter_map(|c| {
            c.conf
                .v1_name
                .as_ref()
                .map(|n| json!({"x402Version": 1, "scheme": "exact", "network": n}))
        });
        json!({
            "kinds": v2.chain(v1).collect::<Vec<_>>(),
            "extensions": [],
            "signers": {"eip155:*": [self.address.to_checksum(None)]},
        })
    }

    /// `POST /verify`: the HTTP status and the answer. 200 for valid and for ordinary invalid
    /// payments, 400 for malformed bodies, 503 when no RPC endpoint answers.
    pub async fn verify(&self, body: &[u8]) -> (u16, VerifyResponse) {
        match self.check(body).await {
            Ok(v) => (
                200,
                VerifyResponse {
                    is_valid: Value::Bool(true),
                    payer: Some(v.payer),
                    ..VerifyResponse::default()
                },
            ),
            Err(r) => (
                r.status,
                VerifyResponse {
                    is_valid: Value::Bool(false),
                    invalid_reason: Some(r.reason.to_owned()),
                    invalid_message: r.message,
                    payer: r.payer,
                    extra: None,
                },
            ),
        }
    }

    /// `POST /settle`: verifies, sends `transferWithAuthorization`, waits for the receipt and
    /// checks its `Transfer` event. Statuses as for [`Self::verify`]; a settlement the node
    /// refused answers 500; `transaction` is set whenever a transaction was sent.
    pub async fn settle(&self, body: &[u8]) -> (u16, SettleResponse) {
        let v = match self.check(body).await {
            Ok(v) => v,
            Err(r) => {
                let why = if r.reason == reason::VERIFY_ERROR {
                    reason::SETTLE_ERROR
                } else {
                    r.reason
                };
                return failed(r.status, why, String::new(), r.network, r.payer);
            }
        };
        let key = (v.auth.token, v.auth.from, v.auth.nonce);
        if !lock(&self.in_flight).insert(key) {
            return failed(
                200,
                reason::DUPLICATE,
                String::new(),
                v.network,
                Some(v.payer),
            );
        }
        let _in_flight = InFlight {
            set: &self.in_flight,
            key,
        };
        self.settle_verified(v).await
    }
}

/// The settlers of every `kind = "local"` facilitator, created on first use and kept per
/// configuration fingerprint, so a reload that leaves a facilitator unchanged keeps its
/// settler (and its nonce bookkeeping). Nonce lanes are shared by relayer and chain across
/// all settlers of the registry.
#[derive(Debug, Default)]
pub struct Settlers {
    by_fingerprint: Mutex<HashMap<String, Arc<LocalSettler>>>,
    lanes: Lanes,
}

impl Settlers {
    /// The settler for `fac`, creating it on first use.
    pub fn get(&self, fac: &FacilitatorConf) -> Result<Arc<LocalSettler>, LocalError> {
        let FacilitatorKind::Local {
            relayer_key,
            receipt_timeout,
            chains,
        } = &fac.kind
        else {
            return Err(LocalError::NotLocal(fac.name.clone()));
        };
        let mut map = lock(&self.by_fingerprint);
        if let Some(s) = map.get(&fac.fingerprint) {
            return Ok(s.clone());
        }
        let settler = Arc::new(LocalSettler::with_lanes(
            relayer_key,
            chains,
            *receipt_timeout,
            fac.timeout,
            &self.lanes,
        )?);
        tracing::info!(facilitator = %fac.name, relayer = %settler.address(), "built-in settler ready");
        map.insert(fac.fingerprint.clone(), settler.clone());
        Ok(settler)
    }

    /// Drops the settlers of facilitators no longer configured (call after a reload).
    /// Settlements in progress keep theirs until they finish.
    pub fn retain(&self, live: &[FacilitatorConf]) {
        lock(&self.by_fingerprint).retain(|fp, _| live.iter().any(|f| &f.fingerprint == fp));
    }

    /// How many settlers exist.
    pub fn len(&self) -> usize {
        lock(&self.by_fingerprint).len()
    }

    /// Whether none exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anvil account 1: a public test key.
    pub(super) const KEY: &str =
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    pub(super) const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

    pub(super) fn init() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    /// A chain whose only endpoint refuses connections: nothing here reaches a chain.
    pub(super) fn chains() -> Vec<ChainConf> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        vec![
            ChainConf {
                caip2: "eip155:31337".into(),
                v1_name: None,
                chain_id: 31337,
                rpc_urls: vec![Secret::new(format!("http://127.0.0.1:{port}"))],
            },
            ChainConf {
                caip2: "eip155:84532".into(),
                v1_name: Some("base-sepolia".into()),
                chain_id: 84532,
                rpc_urls: vec![Secret::new(format!("http://127.0.0.1:{port}"))],
            },
        ]
    }

    pub(super) fn settler() -> LocalSettler {
        init();
        LocalSettler::new(
            &Secret::new(KEY.into()),
            &chains(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect("settler")
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        init();
        let secret = Secret::new("0xnot-a-key-deadbeef".into());
        let err = LocalSettler::new(
            &secret,
            &chains(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect_err("bad key");
        assert_eq!(err, LocalError::BadKey);
        assert!(!err.to_string().contains("deadbeef"));
        let no_chains = LocalSettler::new(
            &Secret::new(KEY.into()),
            &[],
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!(no_chains.map(|_| ()), Err(LocalError::NoChains));
        let s = settler();
        let debug = format!("{s:?}");
        assert!(!debug.contains("59c6995e"), "{debug}");
        assert_eq!(
            s.address().to_checksum(None),
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
        );
    }

    #[test]
    fn supported_lists_v2_and_v1_kinds_and_the_signer() {
        let s = settler();
        assert_eq!(
            s.supported(),
            json!({
                "kinds": [
                    {"x402Version": 2, "scheme": "exact", "network": "eip155:31337"},
                    {"x402Version": 2, "scheme": "exact", "network": "eip155:84532"},
                    {"x402Version": 1, "scheme": "exact", "network": "base-sepolia"},
                ],
                "extensions": [],
                "signers": {"eip155:*": ["0x70997970C51812dc3A010C7d01b50e0d17dc79C8"]},
            })
        );
    }

    #[test]
    fn settlers_are_kept_per_fingerprint() {
        init();
        let settlers = Settlers::default();
        let fac = |fp: &str| FacilitatorConf {
            name: "self".into(),
            kind: FacilitatorKind::Local {
                relayer_key: Secret::new(KEY.into()),
                receipt_timeout: Duration::from_secs(5),
                chains: chains(),
            },
            url: String::new(),
            networks: vec!["eip155:31337".into()],
            timeout: Duration::from_secs(2),
            headers: vec![],
            priority: 0,
            weight: 1,
            failure_threshold: 3,
            max_eject: Duration::from_secs(30),
            confirm: crate::facilitator::Confirm::Receipt,
            confirm_timeout: Duration::from_secs(10),
            signers_complete: false,
            fingerprint: fp.into(),
        };
        let a = settlers.get(&fac("a")).expect("a");
        let again = settlers.get(&fac("a")).expect("a again");
        assert!(Arc::ptr_eq(&a, &again));
        let b = settlers.get(&fac("b")).expect("b");
        assert!(!Arc::ptr_eq(&a, &b));
        // Same relayer and chain: one nonce lane.
        assert!(Arc::ptr_eq(&a.chains[0].lane, &b.chains[0].lane));
        assert_eq!(settlers.len(), 2);
        settlers.retain(&[fac("b")]);
        assert_eq!(settlers.len(), 1);
        let mut http = fac("c");
        http.kind = FacilitatorKind::Http;
        assert_eq!(
            settlers.get(&http).map(|_| ()),
            Err(LocalError::NotLocal("self".into()))
        );
    }
}
