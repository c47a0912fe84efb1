//! Reading EIP-3009 tokens and transactions over JSON-RPC, trying each configured endpoint in
//! turn: whether an authorization was used, which transaction used it, what a transaction did. Used to resolve settlements whose
//! outcome a facilitator left unknown, and by the built-in settler.

// The generated bindings mirror the token ABI, whose calls take many arguments.
#![allow(clippy::too_many_arguments)]

use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::{Filter, TransactionReceipt};
use alloy::sol_types::SolEvent;
use alloy::transports::http::Http;

use crate::secret::{self, Secret};

alloy::sol! {
    /// The parts of an EIP-3009 token the gateway reads or calls.
    #[sol(rpc)]
    interface IEip3009 {
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function balanceOf(address account) external view returns (uint256);
        function name() external view returns (string);
        function version() external view returns (string);
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
        event Transfer(address indexed from, address indexed to, uint256 value);
    }
}

alloy::sol! {
    /// The `batch-settlement` channel contract's views the claimer reads.
    #[sol(rpc)]
    interface IBatchSettlement {
        function channels(bytes32 channelId) external view returns (uint128 balance, uint128 totalClaimed);
        function pendingWithdrawals(bytes32 channelId) external view returns (uint128 amount, uint40 initiatedAt);
        function refundNonce(bytes32 channelId) external view returns (uint256);
    }
}

/// A `batch-settlement` channel as the chain holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOnChain {
    pub balance: u128,
    pub total_claimed: u128,
    /// Unix seconds a timed withdrawal started (0: none pending).
    pub withdraw_initiated_at: u64,
    pub refund_nonce: u64,
}

/// One EIP-3009 transfer as the chain should show it: `AuthorizationUsed(payer, nonce)` and
/// `Transfer(payer, pay_to, value)`, both logged by `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedTransfer {
    pub token: Address,
    pub payer: Address,
    pub pay_to: Address,
    pub value: U256,
    pub nonce: B256,
}

impl ExpectedTransfer {
    /// Whether a receipt is a successful transaction that did exactly this transfer.
    pub fn paid_by(&self, receipt: &TransactionReceipt) -> bool {
        if !receipt.status() {
            return false;
        }
        let logs = receipt.inner.logs();
        let from_token = |l: &&alloy::rpc::types::Log| l.inner.address == self.token;
        let used = logs.iter().filter(from_token).any(|l| {
            IEip3009::AuthorizationUsed::decode_log_data(&l.inner.data)
                .is_ok_and(|e| e.authorizer == self.payer && e.nonce == self.nonce)
        });
        let moved = logs.iter().filter(from_token).any(|l| {
            IEip3009::Transfer::decode_log_data(&l.inner.data)
                .is_ok_and(|t| t.from == self.payer && t.to == self.pay_to && t.value == self.value)
        });
        used && moved
    }
}

/// How far back to look for the transaction that used an authorization.
pub const LOG_LOOKBACK_BLOCKS: u64 = 5_000;

/// Why no endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("no RPC endpoint configured")]
    NoEndpoint,
    /// The URL in its redacted form.
    #[error("bad RPC URL {0}")]
    BadUrl(String),
    #[error("every RPC endpoint failed; last error: {0}")]
    AllFailed(String),
}

/// JSON-RPC access to one chain through several endpoints.
#[derive(Clone)]
pub struct ChainReader {
    /// Each endpoint's URL (a secret: hosted endpoints carry API keys) and provider.
    providers: Vec<(Secret, DynProvider)>,
    timeout: Duration,
}

impl std::fmt::Debug for ChainReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainReader")
            .field("endpoints", &self.providers.len())
            .finish()
    }
}

impl ChainReader {
    /// A reader over `urls`, tried in order; each call gives up after `timeout`.
    pub fn new(urls: &[Secret], timeout: Duration) -> Result<Self, RpcError> {
        if urls.is_empty() {
            return Err(RpcError::NoEndpoint);
        }
        // One HTTP client for every endpoint, following no redirects: a node that answers
        // with one is misconfigured or hostile, and must not send the gateway elsewhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|_| RpcError::NoEndpoint)?;
        let providers = urls
            .iter()
            .map(|u| {
                let url = u
                    .expose()
                    .parse()
                    .map_err(|_| RpcError::BadUrl(u.redacted_url()))?;
                let transport = Http::with_client(http.clone(), url);
                let client = RpcClient::new(transport, false);
                Ok((
                    u.clone(),
                    ProviderBuilder::new().connect_client(client).erased(),
                ))
            })
            .collect::<Result<Vec<_>, RpcError>>()?;
        Ok(ChainReader { providers, timeout })
    }

    /// The endpoints' providers, in order.
    pub fn providers(&self) -> impl Iterator<Item = &DynProvider> {
        self.providers.iter().map(|(_, p)| p)
    }

    /// Runs `f` against each endpoint until one answers.
    pub async fn first_ok<T, F, Fut, E>(&self, f: F) -> Result<T, RpcError>
    where
        F: Fn(DynProvider) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut last = String::from("no endpoint tried");
        for (url, p) in &self.providers {
            // Errors quote the URL they called: only its redacted form is kept.
            match tokio::time::timeout(self.timeout, f(p.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    last = format!(
                        "{}: {}",
                        url.redacted_url(),
                        secret::scrub(&e.to_string(), url.expose())
                    )
                }
                Err(_) => last = format!("{}: timed out", url.redacted_url()),
            }
        }
        Err(RpcError::AllFailed(last))
    }

    /// `authorizationState(authorizer, nonce)`: whether the authorization was used or canceled.
    pub async fn authorization_used(
        &self,
        token: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<bool, RpcError> {
        self.first_ok(|p| async move {
            IEip3009::new(token, p)
                .authorizationState(authorizer, nonce)
                .call()
                .await
        })
        .await
    }

    /// A `batch-settlement` channel's escrow, claimed total, pending withdrawal and refund
    /// nonce, read from the channel contract.
    pub async fn channel(&self, channel_id: B256) -> Result<ChannelOnChain, RpcError> {
        let contract = crate::schemes::evm_batch::BATCH_SETTLEMENT;
        self.first_ok(|p| async move {
            let c = IBatchSettlement::new(contract, p);
            let ch = c.channels(channel_id).call().await?;
            let w = c.pendingWithdrawals(channel_id).call().await?;
            let nonce = c.refundNonce(channel_id).call().await?;
            Ok::<_, alloy::contract::Error>(ChannelOnChain {
                balance: ch.balance,
                total_claimed: ch.totalClaimed,
                withdraw_initiated_at: w.initiatedAt.to::<u64>(),
                refund_nonce: u64::try_from(nonce).unwrap_or(u64::MAX),
            })
        })
        .await
    }

    /// The input (calldata) of a transaction, `None` while the node does not have it.
    pub async fn transaction_input(
        &self,
        tx: B256,
    ) -> Result<Option<alloy::primitives::Bytes>, RpcError> {
        self.first_ok(|p| async move {
            let t = p.get_transaction_by_hash(tx).await?;
            Ok::<_, alloy::transports::TransportError>(
                t.map(|t| alloy::consensus::Transaction::input(&t).clone()),
            )
        })
        .await
    }

    /// The receipt of a transaction, `None` while the node does not have it.
    pub async fn receipt(&self, tx: B256) -> Result<Option<TransactionReceipt>, RpcError> {
        self.first_ok(|p| async move { p.get_transaction_receipt(tx).await })
            .await
    }

    /// The account that sent a transaction, `None` while the node does not have it.
    pub async fn transaction_sender(&self, tx: B256) -> Result<Option<Address>, RpcError> {
        use alloy::network::TransactionResponse;
        self.first_ok(|p| async move {
            Ok::<_, alloy::transports::TransportError>(
                p.get_transaction_by_hash(tx).await?.map(|t| t.from()),
            )
        })
        .await
    }

    /// The transaction that emitted `AuthorizationUsed(authorizer, nonce)` in recent blocks.
    pub async fn authorization_tx(
        &self,
        token: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<Option<B256>, RpcError> {
        self.first_ok(|p| async move {
            let head = p.get_block_number().await?;
            let filter = Filter::new()
                .address(token)
                .event_signature(IEip3009::AuthorizationUsed::SIGNATURE_HASH)
                .topic1(authorizer.into_word())
                .topic2(nonce)
                .from_block(head.saturating_sub(LOG_LOOKBACK_BLOCKS))
                .to_block(head);
            let logs = p.get_logs(&filter).await?;
            Ok::<_, alloy::transports::TransportError>(logs.last().and_then(|l| l.transaction_hash))
        })
        .await
    }
}
