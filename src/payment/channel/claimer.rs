//! The claimer: turns the latest vouchers of payment channels into on-chain claims. One
//! replica at a time (a lease in the state store) walks the channels, groups what their
//! vouchers entitle the receiver to beyond what the chain records as claimed by network,
//! token, receiver and receiver authorizer, and has a facilitator submit it with
//! `claimWithSignature` (many channels per transaction, signed by the gateway's receiver
//! authorizer key or, without one, by the facilitator's), then `settle` sweeps the claimed
//! funds to the receiver. A group is claimed on the configured interval, sooner when its
//! unclaimed value passes the threshold or a payer started a timed withdrawal. Every claim and
//! sweep is a ledger line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use serde_json::{Value, json};

use super::ChannelRecord;
use crate::payment::{PaymentEnv, Payments};
use crate::schemes::evm_batch::{self, ClaimEntry};
use crate::x402::networks::chain_id_of;

/// Who authorizes claims and refunds for channels naming `address`: the gateway with its own
/// key, or (no key) the facilitator, which must advertise that address.
#[derive(Clone)]
pub struct Authorizer {
    pub address: Address,
    pub key: Option<Arc<PrivateKeySigner>>,
}

impl Authorizer {
    /// `receiver_authorizer` as configured: a private key (0x and 64 hex digits: the gateway
    /// signs) or an address (the facilitator signs).
    pub fn parse(s: &str) -> Result<Authorizer, &'static str> {
        let s = s.trim();
        if s.len() == 66 && s.starts_with("0x") {
            let key: PrivateKeySigner =
                s.parse().map_err(|_| "not a valid secp256k1 private key")?;
            return Ok(Authorizer {
                address: key.address(),
                key: Some(Arc::new(key)),
            });
        }
        if s.len() == 42 && s.starts_with("0x") {
            let address: Address = s.parse().map_err(|_| "not an address")?;
            if address == Address::ZERO {
                return Err("the zero address cannot authorize claims");
            }
            return Ok(Authorizer { address, key: None });
        }
        Err(
            "expected a private key (0x and 64 hex digits, e.g. \"${RECEIVER_AUTHORIZER_KEY}\") or an address",
        )
    }
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("address", &self.address)
            .field("key", &self.key.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

/// When and how channels are claimed (`[payment]` `channel_*`), and by whose signature.
#[derive(Debug, Clone)]
pub struct ChannelsConf {
    pub authorizers: Vec<Authorizer>,
    /// Every group with unclaimed value is claimed at least this often.
    pub claim_interval: Duration,
    /// A group whose unclaimed value reaches this (atomic units) is claimed at once (0: only
    /// on the interval).
    pub claim_threshold: u128,
    /// Channels per claim transaction at most.
    pub max_claims: usize,
}

impl Default for ChannelsConf {
    fn default() -> Self {
        ChannelsConf {
            authorizers: Vec::new(),
            claim_interval: Duration::from_secs(60),
            claim_threshold: 0,
            max_claims: 100,
        }
    }
}

impl ChannelsConf {
    fn key_for(&self, address: &str) -> Option<&Arc<PrivateKeySigner>> {
        let a: Address = address.parse().ok()?;
        self.authorizers
            .iter()
            .find(|x| x.address == a)
            .and_then(|x| x.key.as_ref())
    }
}

/// What one claimer pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimReport {
    /// Whether this replica held the lease (only the holder claims).
    pub leader: bool,
    pub channels: usize,
    /// Channels claimed, claim transactions sent, and sweep transactions sent.
    pub claimed: usize,
    pub claim_transactions: usize,
    pub sweeps: usize,
    pub failures: usize,
    /// Value still unclaimed after the pass, in atomic units (all groups).
    pub unclaimed: u128,
}

/// The lease that makes one replica the claimer.
const LEASE_NAME: &str = "channel-claimer";
/// How long a claimer's lease lasts without renewal.
pub const CLAIMER_LEASE: Duration = Duration::from_secs(10);

/// The channels of one claim transaction's group.
type Group = (String, String, String, String);

impl Payments {
    /// One claimer pass: when this replica holds (or takes) the claimer's lease, claims the
    /// groups that are due (`all`: every group with unclaimed value, the interval's pass) and
    /// sweeps what was claimed to the receivers. `refresh`: first read each channel with
    /// unclaimed value from the chain (where the network has an RPC endpoint): a timed
    /// withdrawal a payer started, or claims another replica landed before it stopped.
    pub async fn claim_channels(
        &self,
        env: &PaymentEnv<'_>,
        conf: &ChannelsConf,
        all: bool,
        refresh: bool,
    ) -> ClaimReport {
        let mut report = ClaimReport::default();
        match self
            .state
            .lease(LEASE_NAME, &self.instance, CLAIMER_LEASE)
            .await
        {
            Ok(true) => report.leader = true,
            Ok(false) => return report,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the channel claimer's lease");
                return report;
            }
        }
        let ids = match self.state.channel_ids().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list payment channels");
                return report;
            }
        };
        let mut groups: std::collections::BTreeMap<Group, Vec<ChannelRecord>> =
            std::collections::BTreeMap::new();
        let mut per_network: std::collections::BTreeMap<String, i64> =
            std::collections::BTreeMap::new();
        for id in &ids {
            let Ok(Some((_, bytes))) = self.state.channel(id).await else {
                continue;
            };
            let Some(mut r) = ChannelRecord::decode(&bytes) else {
                continue;
            };
            if refresh && r.unclaimed() > 0 {
                r = self.refresh_mirror(env, r).await;
            }
            *per_network.entry(r.network.clone()).or_default() += 1;
            report.channels += 1;
            if r.unclaimed() == 0 || r.signature.is_empty() {
                continue;
            }
            let key = (
                r.network.clone(),
                r.asset.clone(),
                r.receiver.clone(),
                r.receiver_authorizer.clone(),
            );
            groups.entry(key).or_default().push(r);
        }
        for (network, n) in &per_network {
            self.metrics.channels.with_label_values(&[network]).set(*n);
        }
        for ((network, asset, receiver, authorizer), records) in groups {
            let unclaimed: u128 = records.iter().map(ChannelRecord::unclaimed).sum();
            let withdrawing = records.iter().any(|r| r.withdraw_requested_at != 0);
            let due = all
                || withdrawing
                || (conf.claim_threshold > 0 && unclaimed >= conf.claim_threshold);
            let mut left = unclaimed;
            if due {
                for chunk in records.chunks(conf.max_claims.max(1)) {
                    match self
                        .claim_group(env, conf, &network, &asset, &receiver, &authorizer, chunk)
                        .await
                    {
                        Ok(claimed) => {
                            report.claim_transactions += 1;
                            report.claimed += chunk.len();
                            left = left.saturating_sub(claimed);
                        }
                        Err(e) => {
                            report.failures += 1;
                            tracing::warn!(%network, %receiver, error = %e, "channel claim failed");
                        }
                    }
                }
                match self
                    .sweep(env, &network, &asset, &receiver, &authorizer)
                    .await
                {
                    Ok(true) => report.sweeps += 1,
                    Ok(false) => {}
                    Err(e) => {
                        report.failures += 1;
                        tracing::warn!(%network, %receiver, error = %e, "channel sweep failed");
                    }
                }
            }
            report.unclaimed += left;
            self.metrics
                .channel_unclaimed
                .with_label_values(&[&network, &asset])
                .set(i64::try_from(left).unwrap_or(i64::MAX));
        }
        if let Ok(mut last) = self.claimer.lock() {
            *last = Some((crate::state::unix_now(), report.clone()));
        }
        report
    }

    /// What `/readyz` says of the claimer: this replica's last pass, if it ran one.
    pub fn claimer_status(&self) -> Option<Value> {
        let last = self.claimer.lock().ok()?.clone()?;
        let (at, r) = last;
        Some(json!({
            "last_pass_unix": at,
            "leader": r.leader,
            "channels": r.channels,
            "claimed_channels": r.claimed,
            "claim_transactions": r.claim_transactions,
            "sweeps": r.sweeps,
            "failures": r.failures,
            "unclaimed": r.unclaimed.to_string(),
        }))
    }

    /// Claims the latest vouchers of `records` (one group) in one transaction; returns the
    /// value claimed.
    #[allow(
        clippy::too_many_arguments,
        reason = "the group's four names and its channels"
    )]
    async fn claim_group(
        &self,
        env: &PaymentEnv<'_>,
        conf: &ChannelsConf,
        network: &str,
        asset: &str,
        receiver: &str,
        authorizer: &str,
        records: &[ChannelRecord],
    ) -> Result<u128, String> {
        let chain = chain_id_of(network).ok_or("not an EVM network")?;
        let separator = evm_batch::domain_separator(chain);
        let mut claims = Vec::with_capacity(records.len());
        let mut entries = Vec::with_capacity(records.len());
        for r in records {
            let id: B256 = r
                .channel_id
                .parse()
                .map_err(|_| "a channel id does not parse")?;
            let total = r.signed_max();
            entries.push(ClaimEntry {
                channel_id: id,
                max_claimable: total,
                total_claimed: total,
            });
            claims.push(json!({
                "voucher": {"channel": r.config, "maxClaimableAmount": r.signed_max},
                "signature": r.signature,
                "totalClaimed": r.signed_max,
            }));
        }
        let mut payload = json!({"type": "claim", "claims": claims});
        if let Some(key) = conf.key_for(authorizer) {
            let digest = evm_batch::claim_batch_digest(&separator, &entries);
            let sig = key
                .sign_hash_sync(&digest)
                .map_err(|e| format!("cannot sign the claim batch: {e}"))?;
            payload["claimAuthorizerSignature"] =
                Value::String(format!("0x{}", hex::encode(sig.as_bytes())));
        }
        let started = Instant::now();
        let (tx, _) = self
            .channel_call(env, network, asset, receiver, authorizer, payload)
            .await
            .inspect_err(|_| {
                self.metrics
                    .channel_claims
                    .with_label_values(&["claim", "failed"])
                    .inc();
            })?;
        self.metrics
            .channel_claim_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .channel_claims
            .with_label_values(&["claim", "ok"])
            .inc();
        let mut claimed = 0u128;
        for r in records {
            let delta = self.mark_claimed(&r.channel_id, r.signed_max()).await;
            claimed += delta;
            self.channel_line(env, r, delta, "channel_claimed", &tx);
        }
        tracing::info!(%network, %receiver, channels = records.len(), %claimed, transaction = %tx, "claimed payment channels");
        Ok(claimed)
    }

    /// Sweeps what was claimed for `receiver` in `asset` to it; false when there was nothing.
    async fn sweep(
        &self,
        env: &PaymentEnv<'_>,
        network: &str,
        asset: &str,
        receiver: &str,
        authorizer: &str,
    ) -> Result<bool, String> {
        let payload = json!({"type": "settle", "receiver": receiver, "token": asset});
        match self
            .channel_call(env, network, asset, receiver, authorizer, payload)
            .await
        {
            Ok((tx, amount)) => {
                self.metrics
                    .channel_claims
                    .with_label_values(&["settle", "ok"])
                    .inc();
                let line = ChannelRecord::receiver(network, asset, receiver, authorizer);
                let amount = amount.and_then(|a| a.parse().ok()).unwrap_or(0);
                self.channel_line(env, &line, amount, "channel_swept", &tx);
                Ok(true)
            }
            // Nothing claimed and not yet swept: not a failure.
            Err(e) if e.contains("nothing_to_settle") => Ok(false),
            Err(e) => {
                self.metrics
                    .channel_claims
                    .with_label_values(&["settle", "failed"])
                    .inc();
                Err(e)
            }
        }
    }

    /// One `/settle` call of a channel action (`claim`, `settle`) through the facilitators
    /// serving the network; the transaction and the amount it reports.
    async fn channel_call(
        &self,
        env: &PaymentEnv<'_>,
        network: &str,
        asset: &str,
        receiver: &str,
        authorizer: &str,
        payload: Value,
    ) -> Result<(String, Option<String>), String> {
        let requirements = json!({
            "scheme": evm_batch::SCHEME,
            "network": network,
            "amount": "0",
            "asset": asset,
            "payTo": receiver,
            "maxTimeoutSeconds": 300,
            "extra": {"receiverAuthorizer": authorizer},
        });
        let body = serde_json::to_vec(&json!({
            "x402Version": 2,
            "paymentPayload": {"x402Version": 2, "accepted": requirements, "payload": payload},
            "paymentRequirements": requirements,
        }))
        .map_err(|e| e.to_string())?;
        let correlation = crate::correlation::Correlation::of(&http::HeaderMap::new(), false);
        let candidates =
            self.calls
                .candidates(env.facilitators, 2, evm_batch::SCHEME, network, None);
        if candidates.is_empty() {
            return Err("no facilitator serves batch-settlement on this network".into());
        }
        let mut last = String::from("facilitator_unavailable");
        for fac in candidates {
            match self.calls.settle(fac, &body, &correlation).await {
                Ok(s) if s.succeeded() => return Ok((s.transaction, s.amount)),
                Ok(s) => {
                    return Err(s.error_reason.unwrap_or_else(|| "settlement_failed".into()));
                }
                // Never reached the facilitator: the next one may try.
                Err(e) if e.not_sent() => last = e.to_string(),
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(last)
    }

    /// The channel's record with its mirror of the chain read again (kept as it was when the
    /// network has no RPC endpoint or the read fails).
    async fn refresh_mirror(&self, env: &PaymentEnv<'_>, r: ChannelRecord) -> ChannelRecord {
        let (Some(reader), Ok(id)) = (
            self.calls.reader(env.registry, &r.network),
            r.channel_id.parse::<B256>(),
        ) else {
            return r;
        };
        let chain = match reader.channel(id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(channel = %r.channel_id, error = %e, "cannot read a channel from the chain");
                return r;
            }
        };
        let onchain = super::OnChain {
            balance: chain.balance,
            total_claimed: chain.total_claimed,
            withdraw_requested_at: chain.withdraw_initiated_at,
            refund_nonce: chain.refund_nonce,
        };
        for _ in 0..super::SWAP_TRIES {
            let Ok(Some((version, bytes))) = self.state.channel(&r.channel_id).await else {
                return r;
            };
            let Some(mut current) = ChannelRecord::decode(&bytes) else {
                return r;
            };
            current.set_onchain(&onchain, super::now_ms());
            match self
                .state
                .swap_channel(&r.channel_id, version, &current.encode())
                .await
            {
                Ok(true) => return current,
                Ok(false) => continue,
                Err(_) => return current,
            }
        }
        r
    }

    /// Records that the chain now holds `total` as claimed for a channel; the value this
    /// added (what the ledger line says was claimed).
    async fn mark_claimed(&self, channel_id: &str, total: u128) -> u128 {
        for _ in 0..super::SWAP_TRIES {
            let Ok(Some((version, bytes))) = self.state.channel(channel_id).await else {
                return 0;
            };
            let Some(mut r) = ChannelRecord::decode(&bytes) else {
                return 0;
            };
            let before = r.total_claimed();
            if total <= before {
                return 0;
            }
            r.total_claimed = total.to_string();
            r.synced_at = r.synced_at.max(1);
            match self
                .state
                .swap_channel(channel_id, version, &r.encode())
                .await
            {
                Ok(true) => return total - before,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a channel's claim");
                    return total - before;
                }
            }
        }
        0
    }

    /// A ledger line of the claimer (`channel_claimed` per channel, `channel_swept` per
    /// receiver), with the transaction that did it.
    fn channel_line(
        &self,
        env: &PaymentEnv<'_>,
        r: &ChannelRecord,
        amount: u128,
        event: &str,
        tx: &str,
    ) {
        crate::payment::settle::Record::for_channel(r, amount, &self.replica).write(
            &self.ledger,
            env.ledger,
            event,
            tx,
            None,
            None,
        );
    }
}
