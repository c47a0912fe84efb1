//! The built-in settler (`kind = "local"`): verifies `exact` EIP-3009 payments with the local
//! checks plus an `eth_call` simulation, and settles them by sending `transferWithAuthorization`
//! with a relayer key, answering in the facilitator API's shapes (x402-notes §3, §4.3).
//! [`Settlers`] keeps one settler per facilitator configuration across reloads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::network::eip2718::Encodable2718;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::providers::Provider;
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent};
use alloy::transports::{TransportError, TransportErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::conf::{ChainConf, FacilitatorConf, FacilitatorKind};
use crate::facilitator::rpc::{ChainReader, IEip3009, RpcError};
use crate::schemes::evm_exact::{self, ExactError};
use crate::secret::Secret;
use crate::x402::types::{
    ExactEvmPayload, PaymentPayloadV1, PaymentPayloadV2, RequirementsV2, SettleResponse,
    VerifyResponse,
};

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

/// The next account nonce of one relayer on one chain. Held (locked) from signing until the
/// node accepted the transaction, so concurrent settlements get consecutive nonces. `None`
/// means "ask the node" (at start and after anything that may have desynchronised it).
#[derive(Debug, Default)]
struct NonceLane {
    next: tokio::sync::Mutex<Option<u64>>,
}

/// Nonce lanes by (relayer, chain id), shared by every settler of a [`Settlers`] registry so
/// that an old and a new settler for the same key never hand out the same nonce.
type Lanes = Mutex<HashMap<(Address, u64), Arc<NonceLane>>>;

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

/// A refused request, with what the response needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    status: u16,
    reason: &'static str,
    message: Option<String>,
    /// The network as the request named it ("" when unknown).
    network: String,
    payer: Option<String>,
}

/// A request that names a chain this settler serves, normalised to v2 requirements.
struct Request<'s> {
    chain: &'s Chain,
    /// The network as the request named it: CAIP-2 for v2, the v1 name for v1.
    network: String,
    requirements: RequirementsV2,
    payload: Value,
    payer: Option<String>,
}

/// An authorization that passed the local checks.
#[derive(Debug, Clone)]
struct Auth {
    token: Address,
    from: Address,
    to: Address,
    value: U256,
    valid_after: U256,
    valid_before: U256,
    nonce: B256,
    signature: Vec<u8>,
}

impl Auth {
    /// `transferWithAuthorization` calldata: the (v,r,s) overload for 65-byte signatures, the
    /// `bytes signature` overload otherwise.
    fn calldata(&self) -> Bytes {
        if let [r @ .., v] = self.signature.as_slice()
            && self.signature.len() == 65
        {
            let v = if *v < 27 { v + 27 } else { *v };
            IEip3009::transferWithAuthorization_0Call {
                from: self.from,
                to: self.to,
                value: self.value,
                validAfter: self.valid_after,
                validBefore: self.valid_before,
                nonce: self.nonce,
                v,
                r: B256::from_slice(&r[..32]),
                s: B256::from_slice(&r[32..64]),
            }
            .abi_encode()
            .into()
        } else {
            IEip3009::transferWithAuthorization_1Call {
                from: self.from,
                to: self.to,
                value: self.value,
                validAfter: self.valid_after,
                validBefore: self.valid_before,
                nonce: self.nonce,
                signature: self.signature.clone().into(),
            }
            .abi_encode()
            .into()
        }
    }
}

/// A payment that passed verification.
struct Verified<'s> {
    chain: &'s Chain,
    network: String,
    payer: String,
    auth: Auth,
}

/// The v1 requirements as a facilitator receives them (only the fields settlement needs).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequirementsV1Wire {
    scheme: String,
    network: String,
    max_amount_required: String,
    pay_to: String,
    max_timeout_seconds: u64,
    asset: String,
    #[serde(default)]
    extra: Option<Map<String, Value>>,
}

/// What the node said to a raw transaction.
enum Broadcast {
    Accepted,
    /// Some endpoint may have taken it: only the chain can tell.
    Ambiguous,
    /// The nonce was taken: resynchronise and sign again.
    NonceConflict(String),
    /// Refused for another reason (for example no gas money): not sent.
    Rejected(String),
    /// No endpoint could be reached: not sent.
    NotSent(String),
}

/// Why no transaction went out.
enum SendError {
    /// Gas estimation reverted: the authorization cannot be executed now.
    Reverted(String),
    /// No endpoint answered: nothing was sent.
    Unavailable(String),
    /// A node refused the signed transaction: nothing was sent.
    Rejected(String),
}

/// A transaction handed to the network.
struct Sent {
    hash: B256,
    nonce: u64,
}

/// How waiting for a receipt ended.
enum Wait {
    Receipt(Box<TransactionReceipt>),
    /// Another transaction of the relayer took our nonce: ours can never be mined.
    Replaced,
    TimedOut,
}

/// How many times a settlement is signed again after its transaction was replaced.
const MAX_RESENDS: u32 = 3;
/// How long a receipt is still looked for once its transaction's relayer nonce is used.
const REPLACED_GRACE: Duration = Duration::from_secs(2);
/// How many times a nonce conflict is resolved by asking the node before giving up.
const MAX_NONCE_RETRIES: u64 = 10;

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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn exact_reason(e: &ExactError) -> &'static str {
    match e {
        ExactError::Payload(_) | ExactError::BadFrom | ExactError::BadNonce => {
            reason::INVALID_PAYLOAD
        }
        ExactError::RecipientMismatch => reason::RECIPIENT,
        ExactError::BadValue | ExactError::ValueMismatch => reason::VALUE,
        ExactError::NotYetValid => reason::VALID_AFTER,
        ExactError::Expired => reason::VALID_BEFORE,
        ExactError::TooLong => reason::TOO_LONG,
        ExactError::BadSignatureEncoding => reason::PARSE_SIGNATURE,
        ExactError::BadSignature => reason::SIGNATURE,
    }
}

/// Whether a transport error means the request never reached the endpoint.
fn is_connect_error(e: &TransportError) -> bool {
    match e.as_transport_err() {
        Some(TransportErrorKind::Custom(inner)) => inner
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_connect),
        _ => false,
    }
}

/// `accepted` matches `required` the way the reference server matches them: every field
/// equal, and `accepted.extra` holding at least every entry of `required.extra`.
fn accepted_matches(accepted: &RequirementsV2, required: &RequirementsV2) -> bool {
    accepted.scheme == required.scheme
        && accepted.network == required.network
        && accepted.amount == required.amount
        && accepted.asset.eq_ignore_ascii_case(&required.asset)
        && accepted.pay_to.eq_ignore_ascii_case(&required.pay_to)
        && accepted.max_timeout_seconds == required.max_timeout_seconds
        && required
            .extra
            .iter()
            .all(|(k, v)| accepted.extra.get(k) == Some(v))
}

/// The payer named by an exact payload, checksummed when it is an address.
fn payer_of(payload: &Value) -> Option<String> {
    let from = payload.get("authorization")?.get("from")?.as_str()?;
    Some(
        from.parse::<Address>()
            .map_or_else(|_| from.to_owned(), |a| a.to_checksum(None)),
    )
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
                },
            ),
        }
    }

    /// `POST /settle`: verifies, sends `transferWithAuthorization`, waits for the receipt and
    /// checks its `Transfer` event. Statuses as for [`Self::verify`]; a settlement the node
    /// refused answers 500; `transaction` is set whenever a transaction was sent.
    pub async fn settle(&self, body: &[u8]) -> (u16, SettleResponse) {
        let failed = |status: u16, reason: &str, tx: String, network: String, payer| {
            (
                status,
                SettleResponse {
                    success: Value::Bool(false),
                    error_reason: Some(reason.to_owned()),
                    payer,
                    transaction: tx,
                    network,
                },
            )
        };
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
        let payer = Some(v.payer.clone());
        let key = (v.auth.token, v.auth.from, v.auth.nonce);
        if !lock(&self.in_flight).insert(key) {
            return failed(200, reason::DUPLICATE, String::new(), v.network, payer);
        }
        let _in_flight = InFlight {
            set: &self.in_flight,
            key,
        };
        let deadline = Instant::now() + self.receipt_timeout;
        let mut resends = 0;
        // The transaction last sent for this authorization, once one was.
        let mut sent_before: Option<String> = None;
        // Every transaction this call sent: only these are this settlement's own.
        let mut sent_all: Vec<B256> = Vec::new();
        let (receipt, tx) = loop {
            let sent = match self.send(v.chain, &v.auth).await {
                Ok(s) => s,
                Err(SendError::Reverted(msg)) => {
                    let why = self.diagnose(v.chain, &v.auth).await;
                    if let Some(earlier) = sent_before.take()
                        && why == reason::NONCE_USED
                    {
                        // Used since we sent it, most likely by our own earlier transaction:
                        // the payer may have paid, so the outcome is unknown, not refused.
                        tracing::warn!(network = %v.network, transaction = %earlier, "authorization used after a resend; outcome unknown");
                        return failed(200, reason::PENDING, earlier, v.network, payer);
                    }
                    tracing::info!(network = %v.network, payer = %v.payer, reason = why, detail = %msg, "settlement refused before sending");
                    return failed(200, why, String::new(), v.network, payer);
                }
                Err(SendError::Unavailable(msg)) => {
                    tracing::warn!(network = %v.network, error = %msg, "settlement not sent: no RPC endpoint answered");
                    return failed(503, reason::SETTLE_ERROR, String::new(), v.network, payer);
                }
                Err(SendError::Rejected(msg)) => {
                    tracing::error!(network = %v.network, relayer = %self.address, error = %msg, "the node refused the settlement transaction");
                    return failed(500, reason::SETTLE_ERROR, String::new(), v.network, payer);
                }
            };
            let tx = format!("{:#x}", sent.hash);
            sent_before = Some(tx.clone());
            sent_all.push(sent.hash);
            match self.wait_receipt(v.chain, &sent, deadline).await {
                Wait::Receipt(r) => break (r, tx),
                Wait::TimedOut => {
                    tracing::warn!(network = %v.network, transaction = %tx, "no receipt within the receipt timeout");
                    // If the node dropped it, the next settlement must reuse its nonce.
                    *v.chain.lane.next.lock().await = None;
                    return failed(200, reason::PENDING, tx, v.network, payer);
                }
                Wait::Replaced => {
                    *v.chain.lane.next.lock().await = None;
                    // Someone may have submitted this very authorization meanwhile.
                    let (token, from, nonce) = (v.auth.token, v.auth.from, v.auth.nonce);
                    if let Ok(true) = v.chain.reader.authorization_used(token, from, nonce).await {
                        let found = v.chain.reader.authorization_tx(token, from, nonce).await;
                        let other = match found {
                            Ok(Some(other)) if sent_all.contains(&other) => other,
                            // Used by a transaction this call did not send (another
                            // relayer, the payer, a cancellation): someone else's payment.
                            Ok(Some(other)) => {
                                tracing::warn!(network = %v.network, transaction = %other, "authorization used by a transaction this settler did not send");
                                return failed(
                                    200,
                                    reason::NONCE_USED,
                                    String::new(),
                                    v.network,
                                    payer,
                                );
                            }
                            // Used, but by no transaction in reach: canceled, or long ago.
                            Ok(None) => {
                                return failed(
                                    200,
                                    reason::NONCE_USED,
                                    String::new(),
                                    v.network,
                                    payer,
                                );
                            }
                            // Used by a transaction we cannot name: perhaps ours. The payer
                            // may have paid, so the outcome is unknown, not refused.
                            Err(_) => return failed(200, reason::PENDING, tx, v.network, payer),
                        };
                        let receipt = v
                            .chain
                            .reader
                            .first_ok(|p| async move { p.get_transaction_receipt(other).await })
                            .await;
                        match receipt {
                            Ok(Some(r)) => break (Box::new(r), format!("{other:#x}")),
                            // The authorization went through (perhaps in our own transaction,
                            // whose receipt the node would not give us): not a refusal.
                            _ => {
                                return failed(
                                    200,
                                    reason::PENDING,
                                    format!("{other:#x}"),
                                    v.network,
                                    payer,
                                );
                            }
                        }
                    }
                    resends += 1;
                    if resends > MAX_RESENDS || Instant::now() >= deadline {
                        return failed(200, reason::PENDING, tx, v.network, payer);
                    }
                    tracing::warn!(network = %v.network, transaction = %tx, "settlement transaction replaced by another of the relayer; sending again");
                }
            }
        };
        if !receipt.status() {
            tracing::warn!(network = %v.network, transaction = %tx, "settlement transaction reverted");
            return failed(200, reason::TX_FAILED, tx, v.network, payer);
        }
        if !transfer_logged(&receipt, &v.auth) {
            tracing::error!(network = %v.network, transaction = %tx, "settlement transaction has no matching Transfer event");
            return failed(200, reason::TRANSFER_EVENT, tx, v.network, payer);
        }
        tracing::info!(network = %v.network, transaction = %tx, payer = %v.payer, "settled on chain");
        (
            200,
            SettleResponse {
                success: Value::Bool(true),
                error_reason: None,
                payer,
                transaction: tx,
                network: v.network,
            },
        )
    }

    /// Parses the request body and finds its chain.
    fn parse(&self, body: &[u8]) -> Result<Request<'_>, Refusal> {
        let bad = |reason: &'static str, message: String| Refusal {
            status: 400,
            reason,
            message: Some(message),
            network: String::new(),
            payer: None,
        };
        let body: Value = serde_json::from_slice(body)
            .map_err(|e| bad(reason::INVALID_PAYLOAD, format!("body is not JSON: {e}")))?;
        let payload = body
            .get("paymentPayload")
            .filter(|v| v.is_object())
            .ok_or_else(|| {
                bad(
                    reason::INVALID_PAYLOAD,
                    "missing paymentPayload object".into(),
                )
            })?;
        let requirements = body
            .get("paymentRequirements")
            .filter(|v| v.is_object())
            .ok_or_else(|| {
                bad(
                    reason::INVALID_REQUIREMENTS,
                    "missing paymentRequirements object".into(),
                )
            })?;
        let version = match (body.get("x402Version"), payload.get("x402Version")) {
            (Some(top), inner) => {
                let top = top.as_u64().ok_or_else(|| {
                    bad(
                        reason::INVALID_VERSION,
                        "x402Version is not a number".into(),
                    )
                })?;
                if inner.is_some_and(|i| i.as_u64() != Some(top)) {
                    return Err(Refusal {
                        status: 200,
                        ..bad(
                            reason::INVALID_VERSION,
                            "x402Version differs from paymentPayload.x402Version".into(),
                        )
                    });
                }
                top
            }
            (None, Some(inner)) => inner.as_u64().ok_or_else(|| {
                bad(
                    reason::INVALID_VERSION,
                    "x402Version is not a number".into(),
                )
            })?,
            (None, None) => return Err(bad(reason::INVALID_VERSION, "missing x402Version".into())),
        };
        let payer = payload.get("payload").and_then(payer_of);
        let invalid = |reason: &'static str, network: &str, message: Option<String>| Refusal {
            status: 200,
            reason,
            message,
            network: network.to_owned(),
            payer: payer.clone(),
        };
        match version {
            2 => {
                let p: PaymentPayloadV2 = serde_json::from_value(payload.clone())
                    .map_err(|e| bad(reason::INVALID_PAYLOAD, e.to_string()))?;
                let req: RequirementsV2 = serde_json::from_value(requirements.clone())
                    .map_err(|e| bad(reason::INVALID_REQUIREMENTS, e.to_string()))?;
                let network = req.network.clone();
                if req.scheme != "exact" {
                    return Err(invalid(reason::UNSUPPORTED_SCHEME, &network, None));
                }
                let chain = self
                    .chains
                    .iter()
                    .find(|c| c.conf.caip2 == req.network)
                    .ok_or_else(|| invalid(reason::INVALID_NETWORK, &network, None))?;
                if p.accepted.scheme != "exact" {
                    return Err(invalid(reason::SCHEME, &network, None));
                }
                if p.accepted.network != req.network {
                    return Err(invalid(reason::NETWORK_MISMATCH, &network, None));
                }
                if !accepted_matches(&p.accepted, &req) {
                    return Err(invalid(reason::ACCEPTED_MISMATCH, &network, None));
                }
                Ok(Request {
                    chain,
                    network,
                    requirements: req,
                    payload: p.payload,
                    payer,
                })
            }
            1 => {
                let p: PaymentPayloadV1 = serde_json::from_value(payload.clone())
                    .map_err(|e| bad(reason::INVALID_PAYLOAD, e.to_string()))?;
                let req: RequirementsV1Wire = serde_json::from_value(requirements.clone())
                    .map_err(|e| bad(reason::INVALID_REQUIREMENTS, e.to_string()))?;
                let network = req.network.clone();
                if req.scheme != "exact" {
                    return Err(invalid(reason::UNSUPPORTED_SCHEME, &network, None));
                }
                let chain = self
                    .chains
                    .iter()
                    .find(|c| c.conf.v1_name.as_deref() == Some(req.network.as_str()))
                    .ok_or_else(|| invalid(reason::INVALID_NETWORK, &network, None))?;
                if p.scheme != "exact" {
                    return Err(invalid(reason::SCHEME, &network, None));
                }
                if p.network != req.network {
                    return Err(invalid(reason::NETWORK_MISMATCH, &network, None));
                }
                Ok(Request {
                    chain,
                    network,
                    requirements: RequirementsV2 {
                        scheme: req.scheme,
                        network: chain.conf.caip2.clone(),
                        amount: req.max_amount_required,
                        asset: req.asset,
                        pay_to: req.pay_to,
                        max_timeout_seconds: req.max_timeout_seconds,
                        extra: req.extra.unwrap_or_default(),
                    },
                    payload: p.payload,
                    payer,
                })
            }
            _ => Err(invalid(
                reason::INVALID_VERSION,
                "",
                Some(format!("x402Version {version} is not supported")),
            )),
        }
    }

    /// Everything `/verify` checks: the request, the local checks and the simulation.
    async fn check(&self, body: &[u8]) -> Result<Verified<'_>, Refusal> {
        let r = self.parse(body)?;
        let refuse = |status: u16, reason: &'static str, message: Option<String>| Refusal {
            status,
            reason,
            message,
            network: r.network.clone(),
            payer: r.payer.clone(),
        };
        let req = &r.requirements;
        let text = |k: &str| req.extra.get(k).and_then(Value::as_str);
        let (Some(name), Some(version)) = (text("name"), text("version")) else {
            return Err(refuse(200, reason::MISSING_DOMAIN, None));
        };
        let token: Address = req.asset.parse().map_err(|_| {
            refuse(
                200,
                reason::INVALID_REQUIREMENTS,
                Some("asset is not an address".into()),
            )
        })?;
        let domain = evm_exact::domain(name, version, r.chain.conf.chain_id, token);
        let checked = evm_exact::check(&r.payload, req, &domain, unix_now())
            .map_err(|e| refuse(200, exact_reason(&e), Some(e.to_string())))?;
        let p: ExactEvmPayload = serde_json::from_value(r.payload.clone())
            .map_err(|e| refuse(200, reason::INVALID_PAYLOAD, Some(e.to_string())))?;
        let a = &p.authorization;
        let num = |s: &str| U256::from_str_radix(s, 10).ok();
        let auth = (|| {
            Some(Auth {
                token,
                from: a.from.parse().ok()?,
                to: a.to.parse().ok()?,
                value: num(&a.value)?,
                valid_after: num(&a.valid_after)?,
                valid_before: num(&a.valid_before)?,
                nonce: a.nonce.parse().ok()?,
                signature: hex::decode(p.signature.trim_start_matches("0x")).ok()?,
            })
        })()
        .ok_or_else(|| refuse(200, reason::INVALID_PAYLOAD, None))?;
        match self.deployed(r.chain, token).await {
            Some(true) => {}
            Some(false) => return Err(refuse(200, reason::ASSET_NOT_DEPLOYED, None)),
            None => {
                return Err(refuse(
                    503,
                    reason::VERIFY_ERROR,
                    Some("no RPC endpoint answered".into()),
                ));
            }
        }
        match self.simulate(r.chain, &auth).await {
            Simulation::Ok => Ok(Verified {
                chain: r.chain,
                network: r.network.clone(),
                payer: checked.payer,
                auth,
            }),
            Simulation::Reverted(msg) => {
                let why = self.diagnose(r.chain, &auth).await;
                Err(refuse(200, why, Some(msg)))
            }
            Simulation::Unavailable(msg) => {
                tracing::warn!(network = %r.network, error = %msg, "cannot simulate: no RPC endpoint answered");
                Err(refuse(
                    503,
                    reason::VERIFY_ERROR,
                    Some("no RPC endpoint answered".into()),
                ))
            }
        }
    }

    /// Whether `token` holds contract code (`None`: no endpoint answered). A call to an address
    /// without code "succeeds", so the simulation alone cannot tell.
    async fn deployed(&self, chain: &Chain, token: Address) -> Option<bool> {
        let key = (chain.conf.chain_id, token);
        if lock(&self.deployed).contains(&key) {
            return Some(true);
        }
        let code = chain
            .reader
            .first_ok(|p| async move { p.get_code_at(token).await })
            .await
            .ok()?;
        if !code.is_empty() {
            lock(&self.deployed).insert(key);
        }
        Some(!code.is_empty())
    }

    fn call_request(&self, auth: &Auth) -> TransactionRequest {
        TransactionRequest::default()
            .with_from(self.address)
            .with_to(auth.token)
            .with_input(auth.calldata())
    }

    /// `eth_call` of `transferWithAuthorization` from the relayer, endpoint by endpoint until
    /// one answers.
    async fn simulate(&self, chain: &Chain, auth: &Auth) -> Simulation {
        let tx = self.call_request(auth);
        let mut last = String::from("no endpoint");
        for (i, p) in chain.reader.providers().enumerate() {
            match tokio::time::timeout(self.rpc_timeout, p.call(tx.clone())).await {
                Ok(Ok(_)) => return Simulation::Ok,
                Ok(Err(e)) if e.is_error_resp() => return Simulation::Reverted(e.to_string()),
                Ok(Err(e)) => last = format!("endpoint {i}: {e}"),
                Err(_) => last = format!("endpoint {i}: timed out"),
            }
        }
        Simulation::Unavailable(last)
    }

    /// Why a simulation failed, as @x402/evm reports it: used nonce, short balance, an
    /// undeployed smart wallet, or a generic simulation failure.
    async fn diagnose(&self, chain: &Chain, auth: &Auth) -> &'static str {
        let (token, from) = (auth.token, auth.from);
        if let Ok(true) = chain
            .reader
            .authorization_used(token, from, auth.nonce)
            .await
        {
            return reason::NONCE_USED;
        }
        let balance = chain
            .reader
            .first_ok(|p| async move { IEip3009::new(token, p).balanceOf(from).call().await })
            .await;
        if balance.is_ok_and(|b| b < auth.value) {
            return reason::BALANCE;
        }
        if auth.signature.len() != 65 {
            let code = chain
                .reader
                .first_ok(|p| async move { p.get_code_at(from).await })
                .await;
            if code.is_ok_and(|c| c.is_empty()) {
                return reason::UNDEPLOYED;
            }
        }
        reason::SIMULATION
    }

    /// Signs and broadcasts the settlement. The nonce lane stays locked from choosing the
    /// nonce until a node accepted the transaction.
    async fn send(&self, chain: &Chain, auth: &Auth) -> Result<Sent, SendError> {
        let call = self.call_request(auth);
        let mut gas = None;
        let mut last = String::from("no endpoint");
        for (i, p) in chain.reader.providers().enumerate() {
            match tokio::time::timeout(self.rpc_timeout, p.estimate_gas(call.clone())).await {
                Ok(Ok(g)) => {
                    gas = Some(g);
                    break;
                }
                Ok(Err(e)) if e.is_error_resp() => return Err(SendError::Reverted(e.to_string())),
                Ok(Err(e)) => last = format!("endpoint {i}: {e}"),
                Err(_) => last = format!("endpoint {i}: timed out"),
            }
        }
        let gas = gas.ok_or(SendError::Unavailable(last))?;
        // A margin over the estimate: the state may change between estimate and inclusion.
        let gas = gas.saturating_add(gas / 5).saturating_add(10_000);
        let fees = self.fees(chain).await?;

        let mut next = chain.lane.next.lock().await;
        let mut last = String::new();
        for attempt in 0..MAX_NONCE_RETRIES {
            if attempt > 0 {
                // Another sender holds the nonce; give its transaction a moment to land.
                tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
            }
            let nonce = match *next {
                Some(n) => n,
                None => {
                    let relayer = self.address;
                    chain
                        .reader
                        .first_ok(
                            |p| async move { p.get_transaction_count(relayer).pending().await },
                        )
                        .await
                        .map_err(|e| SendError::Unavailable(e.to_string()))?
                }
            };
            let envelope = call
                .clone()
                .with_nonce(nonce)
                .with_chain_id(chain.conf.chain_id)
                .with_gas_limit(gas)
                .with_max_fee_per_gas(fees.0)
                .with_max_priority_fee_per_gas(fees.1)
                .build(&self.wallet)
                .await
                .map_err(|e| SendError::Rejected(format!("cannot sign: {e}")))?;
            let raw = envelope.encoded_2718();
            let hash = keccak256(&raw);
            match self.broadcast(chain, &raw).await {
                Broadcast::Accepted => {
                    *next = Some(nonce + 1);
                    return Ok(Sent { hash, nonce });
                }
                Broadcast::Ambiguous => {
                    *next = None;
                    return Ok(Sent { hash, nonce });
                }
                Broadcast::NonceConflict(msg) => {
                    tracing::debug!(nonce, error = %msg, "relayer nonce taken; resynchronising");
                    *next = None;
                    last = msg;
                }
                Broadcast::Rejected(msg) => {
                    *next = None;
                    return Err(SendError::Rejected(msg));
                }
                Broadcast::NotSent(msg) => {
                    *next = None;
                    return Err(SendError::Unavailable(msg));
                }
            }
        }
        Err(SendError::Rejected(format!(
            "nonce conflicts did not resolve: {last}"
        )))
    }

    /// EIP-1559 fees (max fee, priority fee) from the node; the gas price when the node has no
    /// fee history.
    async fn fees(&self, chain: &Chain) -> Result<(u128, u128), SendError> {
        if let Ok(f) = chain
            .reader
            .first_ok(|p| async move { p.estimate_eip1559_fees().await })
            .await
        {
            return Ok((f.max_fee_per_gas, f.max_priority_fee_per_gas));
        }
        let price = chain
            .reader
            .first_ok(|p| async move { p.get_gas_price().await })
            .await
            .map_err(|e| SendError::Unavailable(e.to_string()))?;
        Ok((price.saturating_mul(2), price))
    }

    /// Sends a signed transaction to the endpoints in order until one accepts it. The same
    /// bytes go to every endpoint, so a retry can never become a second transaction.
    async fn broadcast(&self, chain: &Chain, raw: &[u8]) -> Broadcast {
        let mut ambiguous = false;
        let mut last = String::from("no endpoint");
        for (i, p) in chain.reader.providers().enumerate() {
            match tokio::time::timeout(self.rpc_timeout, p.send_raw_transaction(raw)).await {
                Ok(Ok(_)) => return Broadcast::Accepted,
                Ok(Err(e)) => {
                    if let Some(resp) = e.as_error_resp() {
                        let msg = resp.message.to_ascii_lowercase();
                        if msg.contains("already known") || msg.contains("known transaction") {
                            return Broadcast::Accepted;
                        }
                        if ambiguous {
                            // An earlier endpoint may have taken it (and used the nonce).
                            return Broadcast::Ambiguous;
                        }
                        if msg.contains("nonce too low")
                            || msg.contains("replacement transaction underpriced")
                            || msg.contains("nonce has already been used")
                        {
                            return Broadcast::NonceConflict(resp.message.to_string());
                        }
                        return Broadcast::Rejected(resp.message.to_string());
                    }
                    if !is_connect_error(&e) {
                        ambiguous = true;
                    }
                    last = format!("endpoint {i}: {e}");
                }
                Err(_) => {
                    ambiguous = true;
                    last = format!("endpoint {i}: timed out");
                }
            }
        }
        if ambiguous {
            tracing::warn!(error = %last, "settlement broadcast outcome unknown; waiting for a receipt");
            Broadcast::Ambiguous
        } else {
            Broadcast::NotSent(last)
        }
    }

    /// Polls for the receipt until `deadline`, watching for the nonce being taken by another
    /// transaction of the relayer (a replacement, or a send that never arrived).
    async fn wait_receipt(&self, chain: &Chain, sent: &Sent, deadline: Instant) -> Wait {
        let hash = sent.hash;
        let relayer = self.address;
        let receipt = || async move {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = tokio::time::timeout(
                left,
                chain
                    .reader
                    .first_ok(|p| async move { p.get_transaction_receipt(hash).await }),
            )
            .await;
            match got {
                Ok(Ok(Some(r))) => Some(Box::new(r)),
                _ => None,
            }
        };
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(r) = receipt().await {
                return Wait::Receipt(r);
            }
            let mined = chain
                .reader
                .first_ok(|p| async move { p.get_transaction_count(relayer).latest().await })
                .await;
            if mined.is_ok_and(|n| n > sent.nonce) {
                // Our nonce is used; unless by us (mined just now), ours can never be mined.
                // A node can count the nonce before it serves the receipt (anvil does under
                // load, and so can endpoints behind a load balancer): look again for a moment.
                let grace = (Instant::now() + REPLACED_GRACE).min(deadline);
                loop {
                    if let Some(r) = receipt().await {
                        return Wait::Receipt(r);
                    }
                    if Instant::now() >= grace {
                        return Wait::Replaced;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wait::TimedOut;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// Whether the token logged `Transfer(from, to, value)` for this authorization.
fn transfer_logged(receipt: &TransactionReceipt, auth: &Auth) -> bool {
    receipt.inner.logs().iter().any(|l| {
        l.inner.address == auth.token
            && IEip3009::Transfer::decode_log_data(&l.inner.data)
                .is_ok_and(|t| t.from == auth.from && t.to == auth.to && t.value == auth.value)
    })
}

/// The outcome of an `eth_call` simulation.
enum Simulation {
    Ok,
    Reverted(String),
    Unavailable(String),
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
    use crate::schemes::evm_exact::tests::sign;
    use alloy::signers::local::PrivateKeySigner;

    /// Anvil account 1: a public test key.
    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

    fn init() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    /// A chain whose only endpoint refuses connections: nothing here reaches a chain.
    fn chains() -> Vec<ChainConf> {
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

    fn settler() -> LocalSettler {
        init();
        LocalSettler::new(
            &Secret::new(KEY.into()),
            &chains(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect("settler")
    }

    fn requirements(network: &str) -> Value {
        json!({
            "scheme": "exact",
            "network": network,
            "amount": "10000",
            "asset": TOKEN,
            "payTo": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
            "maxTimeoutSeconds": 300,
            "extra": {"name": "Test USD", "version": "1"},
        })
    }

    fn payload(payer: &PrivateKeySigner, chain_id: u64, value: u64) -> Value {
        let token: Address = TOKEN.parse().expect("token");
        let to: Address = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
            .parse()
            .expect("to");
        let now = unix_now();
        sign(
            payer,
            &evm_exact::domain("Test USD", "1", chain_id, token),
            to,
            value,
            now - 600,
            now + 300,
            B256::repeat_byte(9),
        )
    }

    fn v2_body(req: &Value, payload: &Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "x402Version": 2,
            "paymentPayload": {"x402Version": 2, "accepted": req, "payload": payload},
            "paymentRequirements": req,
        }))
        .expect("json")
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

    #[tokio::test]
    async fn malformed_bodies_are_400() {
        let s = settler();
        let req = requirements("eip155:31337");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), reason::INVALID_PAYLOAD),
            (b"[]".to_vec(), reason::INVALID_PAYLOAD),
            (
                serde_json::to_vec(&json!({"x402Version": 2, "paymentRequirements": req}))
                    .expect("json"),
                reason::INVALID_PAYLOAD,
            ),
            (
                serde_json::to_vec(
                    &json!({"x402Version": 2, "paymentPayload": {"x402Version": 2}}),
                )
                .expect("json"),
                reason::INVALID_REQUIREMENTS,
            ),
            (
                serde_json::to_vec(&json!({"x402Version": 2, "paymentPayload": {"x402Version": 2, "payload": {}}, "paymentRequirements": req}))
                    .expect("json"),
                reason::INVALID_PAYLOAD,
            ),
            (
                serde_json::to_vec(&json!({"x402Version": 2, "paymentPayload": {"x402Version": 2, "accepted": req, "payload": {}}, "paymentRequirements": {"scheme": "exact"}}))
                    .expect("json"),
                reason::INVALID_REQUIREMENTS,
            ),
            (
                serde_json::to_vec(&json!({"x402Version": "2", "paymentPayload": {}, "paymentRequirements": {}}))
                    .expect("json"),
                reason::INVALID_VERSION,
            ),
        ];
        for (body, want) in cases {
            let (status, v) = s.verify(&body).await;
            assert_eq!(
                (status, v.invalid_reason.as_deref()),
                (400, Some(want)),
                "{}",
                String::from_utf8_lossy(&body)
            );
            assert!(!v.valid());
            let (status, r) = s.settle(&body).await;
            assert_eq!((status, r.error_reason.as_deref()), (400, Some(want)));
            assert!(!r.succeeded());
            assert_eq!(r.transaction, "");
        }
    }

    #[tokio::test]
    async fn ordinary_refusals_are_200_with_the_reference_reasons() {
        let s = settler();
        let payer = PrivateKeySigner::random();
        let req = requirements("eip155:31337");
        let good = payload(&payer, 31337, 10000);
        let check = |body: Vec<u8>, want: &'static str| {
            let s = &s;
            async move {
                let (status, v) = s.verify(&body).await;
                assert_eq!(
                    (status, v.invalid_reason.as_deref()),
                    (200, Some(want)),
                    "{v:?}"
                );
                let (status, r) = s.settle(&body).await;
                assert_eq!((status, r.error_reason.as_deref()), (200, Some(want)));
                assert_eq!(r.transaction, "");
                r
            }
        };
        // Unknown network, reported as the request named it.
        let r = check(
            v2_body(&requirements("eip155:1"), &good),
            reason::INVALID_NETWORK,
        )
        .await;
        assert_eq!(r.network, "eip155:1");
        assert_eq!(
            r.payer.as_deref(),
            Some(payer.address().to_checksum(None).as_str())
        );
        // Other scheme.
        let mut upto = req.clone();
        upto["scheme"] = json!("upto");
        check(v2_body(&upto, &good), reason::UNSUPPORTED_SCHEME).await;
        // `accepted` differs from the requirements.
        let mut accepted = req.clone();
        accepted["amount"] = json!("1");
        let body = serde_json::to_vec(&json!({
            "x402Version": 2,
            "paymentPayload": {"x402Version": 2, "accepted": accepted, "payload": good},
            "paymentRequirements": req,
        }))
        .expect("json");
        check(body, reason::ACCEPTED_MISMATCH).await;
        // Extra keys in the echoed `extra` are fine, missing ones are not.
        let mut fewer = req.clone();
        fewer["extra"] = json!({"name": "Test USD"});
        let body = serde_json::to_vec(&json!({
            "x402Version": 2,
            "paymentPayload": {"x402Version": 2, "accepted": fewer, "payload": good},
            "paymentRequirements": req,
        }))
        .expect("json");
        check(body, reason::ACCEPTED_MISMATCH).await;
        // No EIP-712 domain.
        let mut bare = req.clone();
        bare["extra"] = json!({});
        check(v2_body(&bare, &good), reason::MISSING_DOMAIN).await;
        // Local checks.
        check(v2_body(&req, &payload(&payer, 31337, 9999)), reason::VALUE).await;
        check(v2_body(&req, &payload(&payer, 1, 10000)), reason::SIGNATURE).await;
        let mut garbled = good.clone();
        garbled["signature"] = json!("0xzz");
        check(v2_body(&req, &garbled), reason::PARSE_SIGNATURE).await;
        let mut elsewhere = good.clone();
        elsewhere["authorization"]["to"] = json!("0x000000000000000000000000000000000000dEaD");
        check(v2_body(&req, &elsewhere), reason::RECIPIENT).await;
        // Version 3.
        let body = serde_json::to_vec(&json!({
            "x402Version": 3,
            "paymentPayload": {"x402Version": 3},
            "paymentRequirements": req,
        }))
        .expect("json");
        check(body, reason::INVALID_VERSION).await;
    }

    #[tokio::test]
    async fn v1_bodies_use_v1_names() {
        let s = settler();
        let payer = PrivateKeySigner::random();
        let req = json!({
            "scheme": "exact",
            "network": "base-sepolia",
            "maxAmountRequired": "10000",
            "resource": "http://example.com/x",
            "description": "",
            "mimeType": "",
            "payTo": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
            "maxTimeoutSeconds": 300,
            "asset": TOKEN,
            "extra": {"name": "Test USD", "version": "1"},
        });
        let body = |network: &str, value: u64| {
            serde_json::to_vec(&json!({
                "x402Version": 1,
                "paymentPayload": {"x402Version": 1, "scheme": "exact", "network": network, "payload": payload(&payer, 84532, value)},
                "paymentRequirements": req,
            }))
            .expect("json")
        };
        let (status, v) = s.verify(&body("base", 10000)).await;
        assert_eq!(
            (status, v.invalid_reason.as_deref()),
            (200, Some(reason::NETWORK_MISMATCH))
        );
        let (status, r) = s.settle(&body("base-sepolia", 9999)).await;
        assert_eq!(
            (status, r.error_reason.as_deref(), r.network.as_str()),
            (200, Some(reason::VALUE), "base-sepolia")
        );
        // Valid locally; the chain cannot be reached, which is not the payer's fault.
        let (status, v) = s.verify(&body("base-sepolia", 10000)).await;
        assert_eq!(
            (status, v.invalid_reason.as_deref()),
            (503, Some(reason::VERIFY_ERROR))
        );
        let (status, r) = s.settle(&body("base-sepolia", 10000)).await;
        assert_eq!(
            (status, r.error_reason.as_deref(), r.transaction.as_str()),
            (503, Some(reason::SETTLE_ERROR), "")
        );
    }

    #[test]
    fn calldata_picks_the_overload_by_signature_length() {
        let auth = Auth {
            token: Address::repeat_byte(1),
            from: Address::repeat_byte(2),
            to: Address::repeat_byte(3),
            value: U256::from(10_000),
            valid_after: U256::ZERO,
            valid_before: U256::from(u64::MAX),
            nonce: B256::repeat_byte(4),
            signature: [vec![0x11; 64], vec![0x1c]].concat(),
        };
        let short = auth.calldata();
        assert_eq!(
            short[..4],
            IEip3009::transferWithAuthorization_0Call::SELECTOR
        );
        let decoded =
            IEip3009::transferWithAuthorization_0Call::abi_decode(&short).expect("decode");
        assert_eq!(decoded.v, 28);
        assert_eq!(decoded.r, B256::repeat_byte(0x11));
        let mut zero_one = auth.clone();
        zero_one.signature[64] = 1;
        let decoded = IEip3009::transferWithAuthorization_0Call::abi_decode(&zero_one.calldata())
            .expect("decode");
        assert_eq!(decoded.v, 28);
        let mut long = auth;
        long.signature = vec![0x22; 100];
        let data = long.calldata();
        assert_eq!(
            data[..4],
            IEip3009::transferWithAuthorization_1Call::SELECTOR
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
