//! The claimer: turns the latest vouchers of payment channels into on-chain claims. One
//! replica at a time (a lease in the state store) walks the channels, groups what their
//! vouchers entitle the receiver to beyond what the chain records as claimed by network,
//! token, receiver and receiver authorizer, and has a facilitator submit it with
//! `claimWithSignature` (many channels per transaction, signed by the gateway's receiver
//! authorizer key or, without one, by the facilitator's), then `settle` sweeps the claimed
//! funds to the receiver. A group is claimed on the configured interval, sooner when its
//! unclaimed value passes the threshold or a payer started a timed withdrawal. Every claim and
//! sweep is a ledger line.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use serde_json::{Value, json};

use super::ChannelRecord;
use crate::payment::{PaymentEnv, Payments};
use crate::schemes::evm_batch::{self, ClaimEntry};
use crate::state::ChannelChanges;
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
    /// Channels idle this long with escrow not charged are refunded (`None`: never).
    pub refund_idle: Option<Duration>,
    /// Records of channels that owe nothing and were idle this long are dropped (`None`:
    /// never).
    pub retire_after: Option<Duration>,
}

impl Default for ChannelsConf {
    fn default() -> Self {
        ChannelsConf {
            authorizers: Vec::new(),
            claim_interval: Duration::from_secs(60),
            claim_threshold: 0,
            max_claims: 100,
            refund_idle: None,
            retire_after: Some(Duration::from_secs(86_400)),
        }
    }
}

impl ChannelsConf {
    pub(super) fn key_for(&self, address: &str) -> Option<&Arc<PrivateKeySigner>> {
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
    /// Idle channels refunded.
    pub refunds: usize,
    /// Records dropped: their channels owed nothing and were idle.
    pub retired: usize,
    pub failures: usize,
    /// Value still unclaimed after the pass, in atomic units (all groups).
    pub unclaimed: u128,
}

/// Why a channel action's `/settle` did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub reason: String,
    /// The facilitator may have sent the transaction (the answer was lost): its outcome is
    /// unknown until the chain is read.
    pub unknown: bool,
}

impl From<CallError> for String {
    fn from(e: CallError) -> String {
        e.reason
    }
}

/// The lease that makes one replica the claimer.
const LEASE_NAME: &str = "channel-claimer";
/// How long a claimer's lease lasts without renewal.
pub const CLAIMER_LEASE: Duration = Duration::from_secs(10);
/// Channel records the claimer asks the store for at once.
const RECORDS_PER_READ: usize = 1024;

/// The channels of one claim transaction's group.
type Group = (String, String, String, String);

/// Decoded records the claimer keeps between passes, at most.
const CACHED_RECORDS: usize = 100_000;

/// What this replica's claimer is doing, for `/readyz`: whether it holds the lease now (said as
/// soon as a pass takes or loses it, not when that pass ends) and what its last finished pass
/// did (a pass that only found another replica leading did nothing).
#[derive(Default)]
pub struct ClaimerView(std::sync::Mutex<ViewState>);

#[derive(Default)]
struct ViewState {
    /// Whether a pass has started yet.
    started: bool,
    leader: bool,
    /// When the last pass ended (unix seconds) and its report.
    last: Option<(u64, ClaimReport)>,
}

impl ClaimerView {
    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        // A panic elsewhere while holding the lock leaves a view that is still whole.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This replica took (or kept) the lease; its pass goes on.
    fn lead(&self) {
        let mut v = self.lock();
        v.leader = true;
        v.started = true;
    }

    /// A pass ended with `report`; returns it.
    pub(crate) fn passed(&self, report: ClaimReport) -> ClaimReport {
        let mut v = self.lock();
        v.started = true;
        v.leader = report.leader;
        v.last = Some((crate::state::unix_now(), report.clone()));
        report
    }

    /// The view as `/readyz` shows it; `None` before the first pass. The counts are the last
    /// finished pass's (zero while the first one runs).
    pub(crate) fn status(&self) -> Option<Value> {
        let v = self.lock();
        if !v.started {
            return None;
        }
        let none = (0, ClaimReport::default());
        let (at, r) = v.last.as_ref().unwrap_or(&none);
        Some(json!({
            "last_pass_unix": v.last.as_ref().map(|_| at),
            "leader": v.leader,
            "channels": r.channels,
            "claimed_channels": r.claimed,
            "claim_transactions": r.claim_transactions,
            "sweeps": r.sweeps,
            "refunds": r.refunds,
            "retired": r.retired,
            "failures": r.failures,
            "unclaimed": r.unclaimed.to_string(),
        }))
    }
}

/// The records the claimer decoded, by channel id, at the version it read. A full walk lists
/// every channel, reads only the versions, and reads and decodes again just the records that
/// changed since the last pass (every write moves a version on, and a dropped record's
/// tombstone keeps it going). Between full walks, where the store keeps the channels written
/// since the claimer last asked ([`crate::state::StateStore::channel_changes`]), a pass reads
/// just those: the rest are as kept. Versions repeat only when the store loses data, so what is
/// kept is bounded in age and trust: the interval's pass, any pass after a store error, and
/// any pass whose changes' number is not one more than the last this claimer took (another
/// replica led in between, or a call was repeated) start afresh with a full walk (a store that
/// loses writes it acknowledged, in a failover, may leave a kept record stale until the
/// interval's walk); a record is retired only from a fresh read; at most [`CACHED_RECORDS`]
/// are kept (with more channels every pass is a full walk, and the rest are decoded every
/// pass). Only the lease holder keeps any; entries of channels no longer listed go at the end
/// of each full walk.
#[derive(Default)]
pub struct ClaimerRecords(std::sync::Mutex<Kept>);

#[derive(Default)]
pub(super) struct Kept {
    records: std::collections::HashMap<String, (u64, Arc<ChannelRecord>)>,
    /// Whether `records` holds every channel the last full walk listed, and every change
    /// since was read: a pass may then read just the changed ones.
    whole: bool,
    /// Channels to read again next pass though no write named them (a record that did not
    /// decode, one a retirement looked at but left).
    again: std::collections::HashSet<String>,
    /// The number of the store's last [`crate::state::StateStore::channel_changes`] call
    /// this claimer made: the next must be one more, or changes went to someone else.
    changes_taken: Option<u64>,
}

impl ClaimerRecords {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // The map is only ever replaced whole-entry; a panic elsewhere leaves it usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn clear(&self) {
        let mut k = self.lock();
        k.records.clear();
        k.again.clear();
        k.whole = false;
    }

    /// After a full walk that listed `ids` and read them all: keeps the entries of `ids`
    /// alone, and says whether what is kept (or marked to be read again) is every channel.
    pub(super) fn keep(&self, ids: &[String], read_all: bool) {
        let listed: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut k = self.lock();
        k.records.retain(|id, _| listed.contains(id.as_str()));
        k.again.retain(|id| listed.contains(id.as_str()));
        k.whole = read_all && k.records.len() + k.again.len() == ids.len();
    }

    /// The channels a pass between full walks looks at: every kept one, and the channels the
    /// store's call number `taken` says were written since the last pass (read again, as are
    /// those marked to be); `None` when a full walk is due: nothing kept is trusted yet, or
    /// changes went to another caller in between.
    pub(super) fn between_walks(&self, (taken, changed): ChannelChanges) -> Option<Vec<String>> {
        let mut k = self.lock();
        let last = k.changes_taken.replace(taken);
        if !k.whole || last.is_none_or(|last| last.checked_add(1) != Some(taken)) {
            // The walk lists and reads every channel.
            k.whole = false;
            k.again.clear();
            return None;
        }
        let mut ids: Vec<String> = k.records.keys().cloned().collect();
        let again = std::mem::take(&mut k.again);
        let extra: std::collections::HashSet<String> = changed.into_iter().chain(again).collect();
        for id in extra {
            if k.records.remove(&id).is_none() {
                ids.push(id);
            }
        }
        Some(ids)
    }

    /// Drops channel `id`'s entry; `again`: read it next pass though no write names it.
    pub(super) fn forget(&self, id: &str, again: bool) {
        let mut k = self.lock();
        k.records.remove(id);
        if again {
            k.again.insert(id.to_owned());
        }
    }
}

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
            Ok(false) => {
                // Another replica claims: what this one decoded would only age.
                self.claimer_records.clear();
                return self.claimer_view.passed(report);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the channel claimer's lease");
                self.claimer_records.clear();
                return self.claimer_view.passed(report);
            }
        }
        // Said at once: a pass that claims and sweeps lasts a few blocks.
        self.claimer_view.lead();
        if all {
            // The interval's pass reads every record afresh.
            self.claimer_records.clear();
        }
        // What changed since the last pass, taken before anything is read: a write after this
        // is in the next pass's changes.
        let changed = match self.state.channel_changes().await {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which payment channels changed");
                self.claimer_records.clear();
                return self.claimer_view.passed(report);
            }
        };
        let between = changed.and_then(|c| self.claimer_records.between_walks(c));
        let walk = between.is_none();
        let ids = match between {
            Some(ids) => ids,
            None => match self.state.channel_ids().await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list payment channels");
                    self.claimer_records.clear();
                    return self.claimer_view.passed(report);
                }
            },
        };
        // Whether every record listed was read (a chunk that failed leaves the kept ones
        // unsure: the next pass walks them all).
        let mut read_all = true;
        let mut groups: std::collections::BTreeMap<Group, Vec<ChannelRecord>> =
            std::collections::BTreeMap::new();
        // Receivers with claimed funds waiting to be swept (a refund's claim, a claim found
        // on chain), and the channels that say so.
        let mut owed: std::collections::BTreeMap<Group, Vec<(String, u128)>> =
            std::collections::BTreeMap::new();
        let mut per_network: std::collections::BTreeMap<String, i64> =
            std::collections::BTreeMap::new();
        // Read a chunk at a time: only the channels with something to claim are kept here (the
        // decoded records themselves stay in `claimer_records`).
        let mut chunks = ids.chunks(RECORDS_PER_READ);
        let mut records = Vec::new().into_iter();
        loop {
            let (_, read) = match records.next() {
                Some(found) => found,
                None => {
                    let Some(chunk) = chunks.next() else { break };
                    match self.read_records(chunk, walk).await {
                        Ok(found) => records = found.into_iter(),
                        // The other chunks are still claimed this pass; the next pass reads
                        // everything afresh.
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read payment channels");
                            self.claimer_records.clear();
                            read_all = false;
                        }
                    }
                    continue;
                }
            };
            // Borrowed from the kept record; copied only when this pass changes or claims it
            // (most channels, idle or claimed up, are only counted).
            let mut r: Cow<'_, ChannelRecord> = Cow::Borrowed(&read);
            if let Some(after) = conf.retire_after
                && r.retirable(super::now_ms(), after, conf.refund_idle.is_some())
            {
                // Still a network with channels, for the gauge below.
                per_network.entry(r.network.clone()).or_default();
                // Dropped only as the store holds it now, decided again on that: the record
                // read may be one kept from an earlier pass. Left, it is read again next pass.
                self.claimer_records.forget(&r.channel_id, true);
                let now = match self.state.channel(&r.channel_id).await {
                    Ok(Some((v, bytes))) => ChannelRecord::decode(&bytes).map(|fresh| (v, fresh)),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(channel = %r.channel_id, error = %e, "cannot read a channel to retire");
                        None
                    }
                };
                let Some((version, _)) = now.filter(|(_, fresh)| {
                    fresh.retirable(super::now_ms(), after, conf.refund_idle.is_some())
                }) else {
                    // Changed or gone: looked at again on the next pass.
                    continue;
                };
                match self.state.delete_channel(&r.channel_id, version).await {
                    Ok(true) => report.retired += 1,
                    // Written since it was read: looked at again on the next pass.
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(channel = %r.channel_id, error = %e, "cannot drop a retired channel's record");
                    }
                }
                continue;
            }
            // Idle refunds on the passes that read the chain (every few seconds, not every
            // tick: a refund that keeps failing is not retried in a tight loop).
            let idle = refresh
                && conf
                    .refund_idle
                    .is_some_and(|d| r.idle_refundable(super::now_ms(), d));
            if (refresh && r.unclaimed() > 0) || idle {
                r = Cow::Owned(self.refresh_mirror(env, r.into_owned()).await);
            }
            if idle && r.idle_refundable(super::now_ms(), conf.refund_idle.unwrap_or_default()) {
                match self.refund_idle(env, &r).await {
                    Ok(Some(after)) => {
                        report.refunds += 1;
                        r = Cow::Owned(after);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        report.failures += 1;
                        tracing::warn!(channel = %r.channel_id, error = %e, "idle channel refund failed");
                    }
                }
            }
            *per_network.entry(r.network.clone()).or_default() += 1;
            report.channels += 1;
            let key = (
                r.network.clone(),
                r.asset.clone(),
                r.receiver.clone(),
                r.receiver_authorizer.clone(),
            );
            // A claim the chain holds that no ledger line accounts for: a claimer stopped
            // between its transaction and its record.
            let found = r.total_claimed().saturating_sub(r.ledgered_claimed());
            if found > 0 {
                let delta = self
                    .mark_claimed(&r.channel_id, r.total_claimed(), true)
                    .await;
                if delta > 0 {
                    self.channel_line(
                        env,
                        &r,
                        delta,
                        "channel_claimed",
                        "",
                        Some("found_on_chain"),
                    );
                }
                let r = r.to_mut();
                r.sweep_owed = true;
                r.ledgered = Some(r.total_claimed.clone());
            }
            if r.sweep_owed {
                owed.entry(key.clone())
                    .or_default()
                    .push((r.channel_id.clone(), r.ledgered_claimed()));
            }
            // A channel held by a refund: the refund's own transaction claims it.
            let refunding = r.pending_live(super::now_ms())
                && r.pending
                    .as_ref()
                    .is_some_and(|p| p.signed_max == r.charged);
            if r.unclaimed() == 0 || r.signature.is_empty() || refunding {
                continue;
            }
            groups.entry(key).or_default().push(r.into_owned());
        }
        for (network, n) in &per_network {
            self.metrics.channels.with_label_values(&[network]).set(*n);
        }
        for ((network, asset, receiver, authorizer), records) in groups {
            let unclaimed = records
                .iter()
                .map(ChannelRecord::unclaimed)
                .fold(0u128, u128::saturating_add);
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
                let key = (
                    network.clone(),
                    asset.clone(),
                    receiver.clone(),
                    authorizer.clone(),
                );
                let flagged = owed.remove(&key).unwrap_or_default();
                self.sweep_group(env, &key, &flagged, &mut report).await;
            }
            report.unclaimed += left;
            self.metrics
                .channel_unclaimed
                .with_label_values(&[&network, &asset])
                .set(i64::try_from(left).unwrap_or(i64::MAX));
        }
        // Receivers owed a sweep whose channels had nothing to claim this pass.
        for (key, flagged) in owed {
            self.sweep_group(env, &key, &flagged, &mut report).await;
        }
        if walk {
            self.claimer_records.keep(&ids, read_all);
        }
        self.claimer_view.passed(report)
    }

    /// The records of channels `ids` that have one, in order, with their versions. `walk`:
    /// the versions first, then a read and decode of just the records whose version moved
    /// since this replica's last pass; otherwise (between full walks) the kept records as they
    /// are, and a read of the others. A record that does not decode is left out (and read
    /// again next pass).
    pub(super) async fn read_records(
        &self,
        ids: &[String],
        walk: bool,
    ) -> Result<Vec<(u64, Arc<ChannelRecord>)>, crate::state::StateError> {
        let versions = if walk {
            self.state.channel_versions(ids).await?
        } else {
            // Kept: as read; not kept: a version no record has, read below.
            let kept = self.claimer_records.lock();
            ids.iter()
                .map(|id| Some(kept.records.get(id.as_str()).map_or(u64::MAX, |(v, _)| *v)))
                .collect()
        };
        // In order: the kept records that did not move, a gap for each one to read again.
        let mut out: Vec<Option<(u64, Arc<ChannelRecord>)>> = Vec::with_capacity(ids.len());
        let mut stale: Vec<usize> = Vec::new();
        {
            let mut kept = self.claimer_records.lock();
            for (i, (id, v)) in ids.iter().zip(&versions).enumerate() {
                out.push(None);
                match (v, kept.records.get(id.as_str())) {
                    (None, _) => {
                        kept.records.remove(id.as_str());
                    }
                    (Some(v), Some((at, r))) if at == v => out[i] = Some((*at, r.clone())),
                    (Some(_), _) => stale.push(i),
                }
            }
        }
        if stale.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let stale_ids: Vec<String> = stale.iter().map(|&i| ids[i].clone()).collect();
        let fresh = self.state.channels(&stale_ids).await?;
        let mut kept = self.claimer_records.lock();
        for (&i, found) in stale.iter().zip(fresh) {
            let id = ids[i].as_str();
            // Read again because it moved: taken at the version that read found.
            match found {
                Some((v, bytes)) if !bytes.is_empty() => match ChannelRecord::decode(&bytes) {
                    Some(r) => {
                        let r = Arc::new(r);
                        if kept.records.len() < CACHED_RECORDS || kept.records.contains_key(id) {
                            kept.records.insert(id.to_owned(), (v, r.clone()));
                        } else {
                            // Not kept: only a full walk sees it again.
                            kept.whole = false;
                        }
                        out[i] = Some((v, r));
                    }
                    None => {
                        kept.records.remove(id);
                        kept.again.insert(id.to_owned());
                    }
                },
                // Gone, or its tombstone.
                _ => {
                    kept.records.remove(id);
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// What `/readyz` says of the claimer on this replica, if it ran a pass.
    pub fn claimer_status(&self) -> Option<Value> {
        self.claimer_view.status()
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
        let tx = self
            .channel_call(env, network, asset, receiver, authorizer, payload)
            .await
            .inspect_err(|_| {
                self.metrics
                    .channel_claims
                    .with_label_values(&["claim", "failed"])
                    .inc();
            })?
            .transaction;
        self.metrics
            .channel_claim_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .channel_claims
            .with_label_values(&["claim", "ok"])
            .inc();
        let mut claimed = 0u128;
        for r in records {
            let delta = self
                .mark_claimed(&r.channel_id, r.signed_max(), false)
                .await;
            claimed = claimed.saturating_add(delta);
            self.channel_line(env, r, delta, "channel_claimed", &tx, None);
        }
        tracing::info!(%network, %receiver, channels = records.len(), %claimed, transaction = %tx, "claimed payment channels");
        Ok(claimed)
    }

    /// Sweeps one receiver's claimed funds, then clears the sweep the `flagged` channels
    /// were owed (unless a claim was ledgered since they were read: that one may have landed
    /// after the sweep).
    async fn sweep_group(
        &self,
        env: &PaymentEnv<'_>,
        (network, asset, receiver, authorizer): &Group,
        flagged: &[(String, u128)],
        report: &mut ClaimReport,
    ) {
        match self.sweep(env, network, asset, receiver, authorizer).await {
            Ok(swept) => {
                report.sweeps += usize::from(swept);
                for (id, ledgered) in flagged {
                    let cleared = self
                        .update_channel(id, |r| {
                            let clear = r.sweep_owed && r.ledgered_claimed() == *ledgered;
                            r.sweep_owed &= !clear;
                            clear
                        })
                        .await;
                    if cleared.is_err() {
                        tracing::debug!(channel = %id, "a channel's swept flag stays: the next pass sweeps again");
                    }
                }
            }
            Err(e) => {
                report.failures += 1;
                tracing::warn!(%network, %receiver, error = %e, "channel sweep failed");
            }
        }
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
            Ok(s) => {
                self.metrics
                    .channel_claims
                    .with_label_values(&["settle", "ok"])
                    .inc();
                let line = ChannelRecord::receiver(network, asset, receiver, authorizer);
                let amount = s.amount.and_then(|a| a.parse().ok()).unwrap_or(0);
                self.channel_line(env, &line, amount, "channel_swept", &s.transaction, None);
                Ok(true)
            }
            // Nothing claimed and not yet swept: not a failure.
            Err(e) if e.reason.contains("nothing_to_settle") => Ok(false),
            Err(e) => {
                self.metrics
                    .channel_claims
                    .with_label_values(&["settle", "failed"])
                    .inc();
                Err(e.reason)
            }
        }
    }

    /// One `/settle` call of a channel action (`claim`, `settle`) through the facilitators
    /// serving the network; the transaction and the amount it reports.
    pub(super) async fn channel_call(
        &self,
        env: &PaymentEnv<'_>,
        network: &str,
        asset: &str,
        receiver: &str,
        authorizer: &str,
        payload: Value,
    ) -> Result<crate::x402::types::SettleResponse, CallError> {
        let refused = |reason: String| CallError {
            reason,
            unknown: false,
        };
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
        .map_err(|e| refused(e.to_string()))?;
        let correlation = crate::correlation::Correlation::of(&http::HeaderMap::new(), false);
        let candidates =
            self.calls
                .candidates(env.facilitators, 2, evm_batch::SCHEME, network, None);
        if candidates.is_empty() {
            return Err(refused(
                "no facilitator serves batch-settlement on this network".into(),
            ));
        }
        let mut last = String::from("facilitator_unavailable");
        for fac in candidates {
            match self.calls.settle(fac, &body, &correlation).await {
                Ok(s) if s.succeeded() => return Ok(s),
                // A transaction named without success (pending, unclear): it may land.
                Ok(s) if !s.transaction.is_empty() => {
                    return Err(CallError {
                        reason: s
                            .error_reason
                            .unwrap_or_else(|| "settlement_unconfirmed".into()),
                        unknown: true,
                    });
                }
                Ok(s) => {
                    return Err(refused(
                        s.error_reason.unwrap_or_else(|| "settlement_failed".into()),
                    ));
                }
                // Never reached the facilitator: the next one may try.
                Err(e) if e.not_sent() => last = e.to_string(),
                Err(e) => {
                    return Err(CallError {
                        reason: e.to_string(),
                        unknown: true,
                    });
                }
            }
        }
        Err(refused(last))
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
        match self
            .update_channel(&r.channel_id, |current| {
                current.set_onchain(&onchain, super::now_ms());
                true
            })
            .await
        {
            Ok(Some(current)) => current,
            _ => r,
        }
    }

    /// Records that the chain now holds `total` as claimed for a channel and that the ledger
    /// accounts for it; the value this added (what the ledger line says was claimed).
    /// `owe_sweep`: the claimed funds wait for a sweep this pass will not make.
    pub(super) async fn mark_claimed(
        &self,
        channel_id: &str,
        total: u128,
        owe_sweep: bool,
    ) -> u128 {
        let mut delta = 0;
        let wrote = self
            .update_channel(channel_id, |r| {
                delta = total.saturating_sub(r.ledgered_claimed());
                if delta == 0 && r.total_claimed() >= total {
                    return false;
                }
                r.total_claimed = total.max(r.total_claimed()).to_string();
                r.ledgered = Some(total.max(r.ledgered_claimed()).to_string());
                r.synced_at = r.synced_at.max(1);
                r.claimed_at = super::now_ms();
                r.sweep_owed |= owe_sweep && delta > 0;
                true
            })
            .await;
        match wrote {
            Ok(Some(_)) => delta,
            // Gone, or lost every race: another pass sees the claim again.
            Ok(None) => 0,
            // A write whose answer was lost may have gone through: ledgered here if the record
            // says so; if not, the next pass finds the claim on chain.
            Err(()) => match self.read_channel(channel_id).await {
                Ok((_, Some(r))) if r.ledgered_claimed() >= total => delta,
                _ => 0,
            },
        }
    }

    /// A ledger line of the claimer (`channel_claimed` per channel, `channel_swept` per
    /// receiver), with the transaction that did it.
    pub(super) fn channel_line(
        &self,
        env: &PaymentEnv<'_>,
        r: &ChannelRecord,
        amount: u128,
        event: &str,
        tx: &str,
        reason: Option<&str>,
    ) {
        crate::payment::settle::Record::for_channel(r, amount, &self.replica).write(
            &self.ledger,
            env.ledger,
            event,
            tx,
            reason,
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claimer_view_says_who_leads_as_soon_as_a_pass_knows() {
        let view = ClaimerView::default();
        assert_eq!(view.status(), None, "no pass yet");
        // A pass took the lease and is still claiming: it leads, nothing finished yet.
        view.lead();
        let now = view.status().expect("started");
        assert_eq!(now["leader"], true);
        assert!(now["last_pass_unix"].is_null(), "{now}");
        let done = ClaimReport {
            leader: true,
            claimed: 3,
            claim_transactions: 1,
            ..ClaimReport::default()
        };
        assert_eq!(view.passed(done.clone()), done);
        let now = view.status().expect("passed");
        assert_eq!(
            (now["leader"].clone(), now["claimed_channels"].clone()),
            (json!(true), json!(3))
        );
        assert!(
            now["last_pass_unix"].as_u64().is_some_and(|t| t > 0),
            "{now}"
        );
        // The lease went to another replica: this one no longer leads and claimed nothing.
        view.passed(ClaimReport::default());
        let now = view.status().expect("passed");
        assert_eq!(
            (now["leader"].clone(), now["claimed_channels"].clone()),
            (json!(false), json!(0))
        );
    }
}
