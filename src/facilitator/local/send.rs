//! Sending a verified settlement: the relayer's nonce lanes, building, signing and
//! broadcasting `transferWithAuthorization`, waiting for and reading its receipt, resending it
//! when another transaction of the relayer replaced it, and classifying the outcome as settled,
//! refused or pending.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::network::eip2718::Encodable2718;
use alloy::network::{NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, keccak256};
use alloy::providers::Provider;
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::sol_types::{SolCall, SolEvent};
use alloy::transports::{TransportError, TransportErrorKind};
use serde_json::Value;

use super::verify::{Auth, Verified};
use super::{Chain, LocalSettler, reason};
use crate::facilitator::rpc::IEip3009;
use crate::x402::types::SettleResponse;

/// The next account nonce of one relayer on one chain. Held (locked) from signing until the
/// node accepted the transaction, so concurrent settlements get consecutive nonces. `None`
/// means "ask the node" (at start and after anything that may have desynchronised it).
#[derive(Debug, Default)]
pub(super) struct NonceLane {
    next: tokio::sync::Mutex<Option<u64>>,
}

/// Nonce lanes by (relayer, chain id), shared by every settler of a
/// [`Settlers`](super::Settlers) registry so that an old and a new settler for the same key
/// never hand out the same nonce.
pub(super) type Lanes = Mutex<HashMap<(Address, u64), Arc<NonceLane>>>;

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

/// The answer of a settlement that did not succeed.
pub(super) fn failed(
    status: u16,
    reason: &str,
    tx: String,
    network: String,
    payer: Option<String>,
) -> (u16, SettleResponse) {
    (
        status,
        SettleResponse {
            success: Value::Bool(false),
            error_reason: Some(reason.to_owned()),
            payer,
            transaction: tx,
            network,
            ..Default::default()
        },
    )
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

impl LocalSettler {
    /// Sends the transaction of a verified payment, signs it again when another transaction of
    /// the relayer replaced it, and classifies the outcome: settled, refused or pending.
    pub(super) async fn settle_verified(&self, v: Verified<'_>) -> (u16, SettleResponse) {
        let payer = Some(v.payer.clone());
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
                ..Default::default()
            },
        )
    }

    pub(super) fn call_request(&self, auth: &Auth) -> TransactionRequest {
        TransactionRequest::default()
            .with_from(self.address)
            .with_to(auth.token)
            .with_input(auth.calldata())
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

#[cfg(test)]
mod tests {
    use alloy::primitives::{Address, U256};

    use super::*;

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
}
