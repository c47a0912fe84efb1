//! The channel turn's decisions: what continues a channel, what is stale, busy, beyond the
//! escrow or below what the chain already claimed, and when the mirror must be refreshed.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::B256;
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use serde_json::json;

use super::*;
use crate::schemes::Scheme;
use crate::schemes::evm_batch::{ChannelConfig, voucher_digest};
use crate::x402::networks::Asset;

const PRICE: u128 = 10_000;
const NOW: u64 = 1_700_000_000_000;
const TTL: Duration = Duration::from_secs(300);

struct Fixture {
    key: PrivateKeySigner,
    offer: Offer,
    config: ChannelConfig,
}

fn fixture() -> Fixture {
    let key = PrivateKeySigner::random();
    let asset = Arc::new(Asset {
        id: "tusd".into(),
        network: "eip155:31337".into(),
        address: "0x5FbDB2315678afecb367f032d93F642f64180aa3".into(),
        eip712_name: "Test USD".into(),
        eip712_version: "1".into(),
        decimals: 6,
        usd: true,
    });
    let mut offer = crate::schemes::BATCH.offer(
        asset,
        None,
        PRICE,
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        300,
    );
    offer.requirements.extra.insert(
        evm_batch::RECEIVER_AUTHORIZER.into(),
        json!("0x976EA74026E726554dB657fA54763abd0C3a0aa9"),
    );
    offer
        .requirements
        .extra
        .insert(evm_batch::WITHDRAW_DELAY.into(), json!(900));
    let config = ChannelConfig {
        payer: key.address(),
        payer_authorizer: key.address(),
        receiver: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
            .parse()
            .unwrap(),
        receiver_authorizer: "0x976EA74026E726554dB657fA54763abd0C3a0aa9"
            .parse()
            .unwrap(),
        token: "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .unwrap(),
        withdraw_delay: 900,
        salt: B256::ZERO,
    };
    Fixture { key, offer, config }
}

impl Fixture {
    fn payment(&self, kind: &str, max: u128) -> BatchPayment {
        let sep = self.offer.eip712_separator.unwrap();
        let id = self.config.id(&sep);
        let sig = self
            .key
            .sign_hash_sync(&voucher_digest(&sep, &id, max))
            .unwrap();
        let payload = json!({
            "type": kind,
            "channelConfig": self.config.to_json(),
            "voucher": {
                "channelId": format!("{id:#x}"),
                "maxClaimableAmount": max.to_string(),
                "signature": format!("0x{}", hex::encode(sig.as_bytes())),
            },
            "deposit": {"amount": "1000000", "authorization": {}},
        });
        evm_batch::check(&payload, &self.offer.requirements, &sep).unwrap()
    }

    fn record(&self, charged: u128, balance: u128, claimed: u128, synced: u64) -> ChannelRecord {
        let mut r = ChannelRecord::new(
            &self.payment("voucher", charged.max(1)),
            &self.offer.requirements,
        );
        r.charged = charged.to_string();
        r.signed_max = charged.to_string();
        r.signature = "0x01".into();
        r.balance = balance.to_string();
        r.total_claimed = claimed.to_string();
        r.synced_at = synced;
        r
    }
}

fn turn(
    f: &Fixture,
    current: Option<&ChannelRecord>,
    p: &BatchPayment,
    onchain: Option<&OnChain>,
) -> Result<Turn, BatchError> {
    take_turn(current, p, &f.offer, onchain, "me", NOW, TTL)
}

#[test]
fn a_voucher_that_continues_the_channel_takes_the_turn_without_a_network_call() {
    let f = fixture();
    let rec = f.record(30_000, 1_000_000, 0, NOW - 1_000);
    let Ok(Turn::Taken(next)) = turn(&f, Some(&rec), &f.payment("voucher", 40_000), None) else {
        panic!("expected the turn");
    };
    // Charged stays until the origin answered; the voucher waits in the pending charge.
    assert_eq!(next.charged, "30000");
    let pending = next.pending.unwrap();
    assert_eq!(pending.signed_max, "40000");
    assert_eq!(pending.id, "me");
    assert!(pending.expires_at > NOW);
}

#[test]
fn stale_replayed_or_skipping_vouchers_are_mismatches() {
    let f = fixture();
    let rec = f.record(30_000, 1_000_000, 0, NOW - 1_000);
    // Replayed (the last one again), stale (older), skipping ahead, and a free one.
    for max in [30_000, 20_000, 60_000, 30_001, 39_999] {
        assert_eq!(
            turn(&f, Some(&rec), &f.payment("voucher", max), None),
            Err(BatchError::CumulativeMismatch),
            "{max}"
        );
    }
}

#[test]
fn the_escrow_and_the_chain_bound_what_a_voucher_may_claim() {
    let f = fixture();
    let poor = f.record(30_000, 35_000, 0, NOW - 1_000);
    assert_eq!(
        turn(&f, Some(&poor), &f.payment("voucher", 40_000), None),
        Err(BatchError::CumulativeExceedsBalance)
    );
    // The chain already claimed more than this voucher: the store lost charges.
    let claimed = f.record(30_000, 1_000_000, 50_000, NOW - 1_000);
    assert_eq!(
        turn(&f, Some(&claimed), &f.payment("voucher", 40_000), None),
        Err(BatchError::CumulativeBelowClaimed)
    );
}

#[test]
fn a_pending_charge_holds_the_channel_until_it_expires() {
    let f = fixture();
    let mut rec = f.record(30_000, 1_000_000, 0, NOW - 1_000);
    rec.pending = Some(PendingCharge {
        id: "other".into(),
        signed_max: "40000".into(),
        signature: "0x02".into(),
        expires_at: NOW + 1,
    });
    assert_eq!(
        turn(&f, Some(&rec), &f.payment("voucher", 40_000), None),
        Err(BatchError::ChannelBusy)
    );
    rec.pending.as_mut().unwrap().expires_at = NOW;
    assert!(matches!(
        turn(&f, Some(&rec), &f.payment("voucher", 40_000), None),
        Ok(Turn::Taken(_))
    ));
}

#[test]
fn a_stale_mirror_or_an_unknown_channel_asks_the_facilitator_first() {
    let f = fixture();
    let old = f.record(30_000, 1_000_000, 0, NOW - TTL.as_millis() as u64 - 1);
    let v = f.payment("voucher", 40_000);
    assert_eq!(turn(&f, Some(&old), &v, None), Ok(Turn::VerifyFirst));
    assert_eq!(turn(&f, None, &v, None), Ok(Turn::VerifyFirst));
    // With the chain's word, an unknown channel continues from the voucher.
    let chain = OnChain {
        balance: 1_000_000,
        total_claimed: 20_000,
        ..OnChain::default()
    };
    let Ok(Turn::Taken(next)) = turn(&f, None, &v, Some(&chain)) else {
        panic!("expected the turn");
    };
    assert_eq!(next.charged, "30000");
    assert_eq!(next.balance, "1000000");
    assert_eq!(next.total_claimed, "20000");
    assert_eq!(next.synced_at, NOW);
}

#[test]
fn a_deposit_may_spend_what_it_brings() {
    let f = fixture();
    let d = f.payment("deposit", PRICE);
    let empty = OnChain::default();
    let Ok(Turn::Taken(next)) = turn(&f, None, &d, Some(&empty)) else {
        panic!("expected the turn");
    };
    assert_eq!(next.charged, "0");
    assert_eq!(next.pending.unwrap().signed_max, "10000");
}

#[test]
fn onchain_state_reads_the_facilitators_shapes() {
    let flat = json!({"channelId": "0x1", "balance": "500", "totalClaimed": "20", "withdrawRequestedAt": 7, "refundNonce": "2"});
    let nested = json!({"channelState": flat.clone()});
    for v in [flat, nested] {
        assert_eq!(
            OnChain::read(&v),
            Some(OnChain {
                balance: 500,
                total_claimed: 20,
                withdraw_requested_at: 7,
                refund_nonce: 2,
            })
        );
    }
    assert_eq!(OnChain::read(&json!({"totalClaimed": "1"})), None);
    assert_eq!(OnChain::read(&json!({"balance": "x"})), None);
}

#[test]
fn the_record_round_trips_and_says_what_is_unclaimed() {
    let f = fixture();
    let rec = f.record(30_000, 1_000_000, 10_000, NOW);
    let back = ChannelRecord::decode(&rec.encode()).unwrap();
    assert_eq!(back, rec);
    assert_eq!(back.unclaimed(), 20_000);
    assert_eq!(
        back.channel_state(Some("30000"))["chargedCumulativeAmount"],
        "30000"
    );
}

#[test]
fn the_mirror_is_trusted_for_a_third_of_the_withdraw_delay_within_bounds() {
    assert_eq!(mirror_ttl(900), Duration::from_secs(300));
    assert_eq!(mirror_ttl(60), Duration::from_secs(30));
    assert_eq!(mirror_ttl(2_592_000), Duration::from_secs(300));
    assert_eq!(mirror_ttl(450), Duration::from_secs(150));
}

#[test]
fn an_unknown_channel_continues_no_lower_than_the_chain_claimed_plus_the_price() {
    let f = fixture();
    let chain = OnChain {
        balance: 1_000_000,
        total_claimed: 50_000,
        ..OnChain::default()
    };
    // One unit above the claimed total would buy a request for one unit.
    for max in [50_001, 59_999] {
        assert_eq!(
            turn(&f, None, &f.payment("voucher", max), Some(&chain)),
            Err(BatchError::CumulativeBelowClaimed),
            "{max}"
        );
    }
    assert!(matches!(
        turn(&f, None, &f.payment("voucher", 60_000), Some(&chain)),
        Ok(Turn::Taken(_))
    ));
}

#[test]
fn a_pending_withdrawal_checks_every_voucher_against_the_chain() {
    let f = fixture();
    let mut rec = f.record(30_000, 1_000_000, 0, NOW - 1_000);
    rec.withdraw_requested_at = 1;
    assert_eq!(
        turn(&f, Some(&rec), &f.payment("voucher", 40_000), None),
        Ok(Turn::VerifyFirst)
    );
}

#[test]
fn the_claimed_total_never_goes_back() {
    let f = fixture();
    let mut rec = f.record(30_000, 1_000_000, 20_000, NOW);
    rec.set_onchain(
        &OnChain {
            balance: 900_000,
            total_claimed: 10_000,
            ..OnChain::default()
        },
        NOW + 1,
    );
    assert_eq!(rec.total_claimed, "20000");
    assert_eq!(rec.balance, "900000");
}

#[test]
fn a_commit_whose_answer_was_lost_is_known_by_its_id() {
    let f = fixture();
    let mut rec = f.record(30_000, 1_000_000, 0, NOW);
    assert!(!rec.committed_by("me"));
    assert!(!rec.committed_by(""));
    rec.committed = "me".into();
    assert!(rec.committed_by("me"));
    assert!(!rec.committed_by("other"));
    // Records written before the field existed read as never committed by anyone.
    let mut old = serde_json::to_value(&rec).unwrap();
    old.as_object_mut().unwrap().remove("committed");
    let back = ChannelRecord::decode(&serde_json::to_vec(&old).unwrap()).unwrap();
    assert!(!back.committed_by("me"));
}

#[tokio::test]
async fn a_commit_is_recorded_with_its_id_and_a_stale_turn_cannot_commit() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let f = fixture();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let facilitators = std::sync::Arc::new(crate::facilitator::dispatch::Facilitators::new(
        metrics.clone(),
        std::sync::Arc::new(crate::facilitator::local::Settlers::default()),
    ));
    let state: std::sync::Arc<dyn crate::state::StateStore> =
        std::sync::Arc::new(crate::state::MemoryStore::default());
    let payments = Payments::with_calls(metrics, facilitators.clone(), facilitators, state.clone());
    let p = f.payment("voucher", 40_000);
    let rec = f.record(30_000, 1_000_000, 0, now_ms());
    let id = rec.channel_id.clone();
    let Ok(Turn::Taken(next)) = take_turn(Some(&rec), &p, &f.offer, None, "turn-1", now_ms(), TTL)
    else {
        panic!("expected the turn");
    };
    assert!(state.swap_channel(&id, 0, &next.encode()).await.unwrap());
    let ticket = |pending: &str| Ticket {
        channel_id: id.clone(),
        pending_id: pending.into(),
        kind: Kind::Voucher,
        price: PRICE,
        record: (*next).clone(),
        version: 1,
        onchain: None,
    };
    // Someone else wrote the channel after the turn (the claimer recorded a claim): the
    // commit, tried first as the turn left the channel, reads it again and keeps that write.
    let mut claimed = (*next).clone();
    claimed.total_claimed = "20000".into();
    assert!(state.swap_channel(&id, 1, &claimed.encode()).await.unwrap());
    // Another turn's ticket cannot commit this one's charge.
    assert_eq!(
        payments.commit_channel(&ticket("turn-2"), None).await,
        Err("invalid_batch_settlement_evm_channel_busy")
    );
    let done = payments
        .commit_channel(&ticket("turn-1"), None)
        .await
        .unwrap();
    assert_eq!(done.charged, "40000");
    assert_eq!(done.total_claimed, "20000");
    assert!(done.committed_by("turn-1"));
    assert!(done.pending.is_none());
    // Committing again adds nothing: the turn is over.
    assert!(
        payments
            .commit_channel(&ticket("turn-1"), None)
            .await
            .is_err()
    );
}

fn chain(balance: u128, claimed: u128, nonce: u64) -> OnChain {
    OnChain {
        balance,
        total_claimed: claimed,
        withdraw_requested_at: 0,
        refund_nonce: nonce,
    }
}

#[test]
fn a_refund_names_what_was_charged_and_returns_at_most_the_rest() {
    let f = fixture();
    let rec = f.record(30_000, 1_000_000, 10_000, NOW - 1_000);
    let now = chain(1_000_000, 10_000, 3);
    let take = |p: &BatchPayment, requested, current: Option<&ChannelRecord>, o: &OnChain| {
        refund::take_refund_turn(current, p, requested, &f.offer, o, "me", NOW)
    };
    // All of it, part of it, and more than there is (capped).
    for (requested, want) in [
        (None, 970_000),
        (Some(5_000), 5_000),
        (Some(2_000_000), 970_000),
    ] {
        let t = take(&f.payment("refund", 30_000), requested, Some(&rec), &now).unwrap();
        assert_eq!((t.charged, t.amount), (30_000, want), "{requested:?}");
        // The channel is held: nothing is charged by the refund, the chain's state is taken.
        let pending = t.record.pending.as_ref().unwrap();
        assert_eq!(
            (pending.id.as_str(), pending.signed_max.as_str()),
            ("me", "30000")
        );
        assert!(pending.expires_at >= NOW + 60_000);
        assert_eq!(t.record.charged, "30000");
        assert_eq!(t.record.refund_nonce, 3);
    }
    // A voucher that charges something, or names less: the corrective 402.
    for max in [40_000, 20_000] {
        assert_eq!(
            take(&f.payment("refund", max), None, Some(&rec), &now),
            Err(BatchError::CumulativeMismatch),
            "{max}"
        );
    }
    // Busy while a charge is pending; nothing left once everything was charged.
    let mut busy = rec.clone();
    busy.pending = Some(PendingCharge {
        id: "other".into(),
        signed_max: "40000".into(),
        signature: String::new(),
        expires_at: NOW + 1,
    });
    assert_eq!(
        take(&f.payment("refund", 30_000), None, Some(&busy), &now),
        Err(BatchError::ChannelBusy)
    );
    assert_eq!(
        take(
            &f.payment("refund", 30_000),
            None,
            Some(&rec),
            &chain(30_000, 10_000, 0)
        ),
        Err(BatchError::RefundNoBalance)
    );
    // A channel this store does not know was charged what the voucher names, never less than
    // the chain claimed; claims made before it knew the channel are not its ledger's.
    let t = take(&f.payment("refund", 50_000), None, None, &now).unwrap();
    assert_eq!((t.charged, t.amount), (50_000, 950_000));
    assert_eq!(t.record.ledgered_claimed(), 10_000);
    assert_eq!(
        take(&f.payment("refund", 5_000), None, None, &now),
        Err(BatchError::CumulativeBelowClaimed)
    );
}

#[test]
fn after_a_refund_the_channel_is_what_the_facilitator_reported_or_what_the_refund_did() {
    let before = chain(1_000_000, 10_000, 3);
    assert_eq!(
        refund::after_refund(&before, 30_000, 970_000, None),
        chain(30_000, 30_000, 4)
    );
    let reported = chain(29_000, 30_000, 4);
    assert_eq!(
        refund::after_refund(&before, 30_000, 970_000, Some(reported.clone())),
        reported
    );
}

#[test]
fn refund_amounts_must_be_positive_integers() {
    let f = fixture();
    let sep = f.offer.eip712_separator.unwrap();
    let p = f.payment("refund", 30_000);
    let mut payload = json!({
        "type": "refund",
        "channelConfig": f.config.to_json(),
        "voucher": {
            "channelId": format!("{:#x}", p.channel_id),
            "maxClaimableAmount": "30000",
            "signature": p.signature,
        },
    });
    let check = |v: &serde_json::Value| evm_batch::check(v, &f.offer.requirements, &sep);
    assert_eq!(check(&payload).unwrap().kind, Kind::Refund { amount: None });
    payload["amount"] = json!("700");
    assert_eq!(
        check(&payload).unwrap().kind,
        Kind::Refund { amount: Some(700) }
    );
    for bad in [json!("0"), json!("-1"), json!("1e3"), json!(700), json!("")] {
        payload["amount"] = bad.clone();
        assert_eq!(
            check(&payload),
            Err(BatchError::RefundAmountInvalid),
            "{bad}"
        );
    }
}

#[test]
fn a_reading_from_before_a_refund_never_brings_the_refunded_escrow_back() {
    let f = fixture();
    // The record knows of a refund (nonce 2, escrow down to 40 000).
    let mut rec = f.record(30_000, 40_000, 10_000, NOW - 1_000);
    rec.refund_nonce = 2;
    let before_refund = chain(1_000_000, 20_000, 1);
    let mut read = rec.clone();
    read.set_onchain(&before_refund, NOW);
    assert_eq!(
        read.balance, "40000",
        "the escrow stays as the refund left it"
    );
    assert_eq!(read.refund_nonce, 2);
    assert_eq!(
        read.synced_at,
        NOW - 1_000,
        "an old reading refreshes nothing"
    );
    assert_eq!(
        read.total_claimed, "20000",
        "claims only go up, whoever read them"
    );
    // A voucher verified against such a reading reads the chain again instead of spending
    // the escrow that was refunded.
    assert_eq!(
        turn(
            &f,
            Some(&rec),
            &f.payment("voucher", 40_000),
            Some(&before_refund)
        ),
        Ok(Turn::VerifyFirst)
    );
    let after = chain(40_000, 10_000, 2);
    assert!(matches!(
        turn(&f, Some(&rec), &f.payment("voucher", 40_000), Some(&after)),
        Ok(Turn::Taken(_))
    ));
    // A refund holds its channel with the mirror stale: if the hold lapses unrecorded, the
    // next voucher reads the chain.
    let t = refund::take_refund_turn(
        Some(&rec),
        &f.payment("refund", 30_000),
        None,
        &f.offer,
        &after,
        "me",
        NOW,
    )
    .unwrap();
    assert_eq!(t.record.synced_at, 0);
}

#[test]
fn a_record_goes_only_once_it_owes_nothing_and_was_idle() {
    let f = fixture();
    let day = std::time::Duration::from_secs(86_400);
    let later = NOW + 86_400_000;
    // Everything charged claimed and ledgered, escrow left on chain, idle a day.
    let mut r = f.record(50_000, 1_000_000, 50_000, NOW);
    r.ledgered = Some("50000".into());
    assert!(r.retirable(later, day, false));
    // Not before the day is up.
    assert!(!r.retirable(later - 1, day, false));
    // With idle refunds on, the escrow keeps it (the claimer refunds it first).
    assert!(!r.retirable(later, day, true));
    let spent = {
        let mut s = r.clone();
        s.balance = "50000".into();
        s
    };
    assert!(spent.retirable(later, day, true));
    // Escrow with no committed voucher cannot be refunded cooperatively: it does not keep the
    // record for ever.
    let unsigned = {
        let mut u = r.clone();
        u.signature = String::new();
        u
    };
    assert!(!r.signature.is_empty());
    assert!(unsigned.retirable(later, day, true));
    assert!(!unsigned.idle_refundable(later, day));
    // Anything owed keeps it: a charge not claimed, a claim not ledgered, a sweep, a live
    // pending charge, a timed withdrawal.
    let mut unclaimed = r.clone();
    unclaimed.charged = "60000".into();
    let mut unledgered = r.clone();
    unledgered.ledgered = Some("40000".into());
    let mut owed = r.clone();
    owed.sweep_owed = true;
    let charge = |expires_at| {
        let mut p = r.clone();
        p.pending = Some(crate::payment::channel::PendingCharge {
            id: "p".into(),
            signed_max: "60000".into(),
            signature: "0x01".into(),
            expires_at,
        });
        p
    };
    // A charge that expired a moment ago may still be committed by its request; one that
    // expired a whole period ago cannot.
    let pending = charge(later + 1);
    let just_expired = charge(later - 1);
    assert!(charge(NOW).retirable(later, day, false));
    let mut withdrawing = r.clone();
    withdrawing.withdraw_requested_at = 1;
    // A claim recorded lately: the record stays a period after it too.
    let mut claimed_lately = r.clone();
    claimed_lately.claimed_at = later - 1;
    for kept in [
        unclaimed,
        unledgered,
        owed,
        pending,
        just_expired,
        withdrawing,
        claimed_lately,
    ] {
        assert!(!kept.retirable(later, day, false), "{kept:?}");
    }
}

/// Payments over a memory store holding two channels' records at version 1: `a` (a fixture
/// channel) and `b` (the same, as channel `0xbb`).
async fn two_stored_channels() -> (
    Arc<dyn crate::state::StateStore>,
    Payments,
    ChannelRecord,
    ChannelRecord,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let f = fixture();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let facilitators = Arc::new(crate::facilitator::dispatch::Facilitators::new(
        metrics.clone(),
        Arc::new(crate::facilitator::local::Settlers::default()),
    ));
    let state: Arc<dyn crate::state::StateStore> = Arc::new(crate::state::MemoryStore::default());
    let payments = Payments::with_calls(metrics, facilitators.clone(), facilitators, state.clone());
    let a = f.record(30_000, 1_000_000, 0, now_ms());
    let mut b = a.clone();
    b.channel_id = "0xbb".into();
    assert!(
        state
            .swap_channel(&a.channel_id, 0, &a.encode())
            .await
            .unwrap()
    );
    assert!(state.swap_channel("0xbb", 0, &b.encode()).await.unwrap());
    (state, payments, a, b)
}

#[tokio::test]
async fn the_claimer_decodes_a_record_again_only_when_its_version_moved() {
    let (state, payments, a, _) = two_stored_channels().await;
    let ids = vec![a.channel_id.clone(), "0xnone".to_owned(), "0xbb".to_owned()];

    let first = payments.read_records(&ids, true).await.unwrap();
    assert_eq!(first.len(), 2, "the channel without a record is left out");
    assert_eq!((first[0].0, first[0].1.charged.as_str()), (1, "30000"));
    assert_eq!(first[1].1.channel_id, "0xbb");
    // Nothing moved: the same decoded records, not a second decode.
    let again = payments.read_records(&ids, true).await.unwrap();
    assert!(Arc::ptr_eq(&first[0].1, &again[0].1) && Arc::ptr_eq(&first[1].1, &again[1].1));

    // A write moves the version: that record alone is read and decoded again.
    let mut charged = a.clone();
    charged.charged = "40000".into();
    assert!(
        state
            .swap_channel(&a.channel_id, 1, &charged.encode())
            .await
            .unwrap()
    );
    let moved = payments.read_records(&ids, true).await.unwrap();
    assert_eq!((moved[0].0, moved[0].1.charged.as_str()), (2, "40000"));
    assert!(Arc::ptr_eq(&first[1].1, &moved[1].1));

    // A dropped record (its tombstone) and one that no longer decodes are left out.
    assert!(state.delete_channel("0xbb", 1).await.unwrap());
    assert!(
        state
            .swap_channel(&a.channel_id, 2, b"not a record")
            .await
            .unwrap()
    );
    assert!(payments.read_records(&ids, true).await.unwrap().is_empty());

    // Entries of channels no longer listed go.
    assert!(
        state
            .swap_channel(&a.channel_id, 3, &a.encode())
            .await
            .unwrap()
    );
    let back = payments.read_records(&ids, true).await.unwrap();
    assert_eq!(back.len(), 1);
    payments.claimer_records.keep(&[], true);
    let fresh = payments.read_records(&ids, true).await.unwrap();
    assert!(!Arc::ptr_eq(&back[0].1, &fresh[0].1));
}

#[tokio::test]
async fn between_full_walks_the_claimer_reads_only_the_channels_written_since() {
    let (state, payments, a, b) = two_stored_channels().await;
    let records = &payments.claimer_records;
    let changes = || async { state.channel_changes().await.unwrap().expect("tracked") };
    let payments = &payments;
    // The interval's pass: starts afresh, takes the changes, walks every channel listed.
    let walk = |ids: Vec<String>| async move {
        payments.claimer_records.clear();
        let taken = payments
            .state
            .channel_changes()
            .await
            .unwrap()
            .expect("tracked");
        assert_eq!(payments.claimer_records.between_walks(taken), None);
        let read = payments.read_records(&ids, true).await.unwrap();
        payments.claimer_records.keep(&ids, true);
        read
    };

    // The first pass walks every channel.
    assert_eq!(walk(state.channel_ids().await.unwrap()).await.len(), 2);
    let charged_in = |read: &[(u64, Arc<ChannelRecord>)], id: &str| {
        read.iter()
            .find(|(_, r)| r.channel_id == id)
            .map(|(v, r)| (*v, r.charged.clone()))
    };

    // `b` is written and its change taken by another caller, then `a` is written: the gap in
    // the call numbers says so, and the pass walks every channel.
    let mut b2 = b.clone();
    b2.charged = "50000".into();
    assert!(state.swap_channel("0xbb", 1, &b2.encode()).await.unwrap());
    assert_eq!(changes().await.1, vec!["0xbb".to_owned()]);
    let mut a2 = a.clone();
    a2.charged = "40000".into();
    assert!(
        state
            .swap_channel(&a.channel_id, 1, &a2.encode())
            .await
            .unwrap()
    );
    let taken = changes().await;
    assert_eq!(taken.1, vec![a.channel_id.clone()]);
    assert_eq!(records.between_walks(taken), None, "changes went elsewhere");
    let read = walk(state.channel_ids().await.unwrap()).await;
    assert_eq!(charged_in(&read, "0xbb"), Some((2, "50000".into())));

    // Without a gap: `a`, written since, is read again; `b` is kept as decoded (here the store
    // changes under the claimer with the change taken elsewhere, so the kept copy shows).
    let mut a3 = a.clone();
    a3.charged = "45000".into();
    assert!(
        state
            .swap_channel(&a.channel_id, 2, &a3.encode())
            .await
            .unwrap()
    );
    let mut pass = records.between_walks(changes().await).expect("whole");
    pass.sort();
    let mut want = vec![a.channel_id.clone(), "0xbb".to_owned()];
    want.sort();
    assert_eq!(pass, want, "each channel once");
    assert!(state.swap_channel("0xbb", 2, &b.encode()).await.unwrap());
    assert_eq!(changes().await.1, vec!["0xbb".to_owned()]);
    let read = payments.read_records(&pass, false).await.unwrap();
    assert_eq!(
        charged_in(&read, &a.channel_id),
        Some((3, "45000".into())),
        "read again"
    );
    assert_eq!(
        charged_in(&read, "0xbb"),
        Some((2, "50000".into())),
        "kept, not read"
    );
    // Taken once: the next call finds nothing. Those two calls are a gap to the claimer.
    assert_eq!(changes().await.1, Vec::<String>::new());
    assert_eq!(records.between_walks(changes().await), None);
    walk(state.channel_ids().await.unwrap()).await;

    // A channel both written and marked to be read again is looked at once.
    let pass = records.between_walks(changes().await).expect("whole");
    assert_eq!(payments.read_records(&pass, false).await.unwrap().len(), 2);
    records.forget("0xbb", true);
    assert!(state.swap_channel("0xbb", 3, &b2.encode()).await.unwrap());
    let pass = records.between_walks(changes().await).expect("whole");
    assert_eq!(
        pass.iter().filter(|id| *id == "0xbb").count(),
        1,
        "{pass:?}"
    );
    assert_eq!(payments.read_records(&pass, false).await.unwrap().len(), 2);

    // A record that does not decode is read again next pass, though nothing wrote it.
    assert!(
        state
            .swap_channel("0xbb", 4, b"not a record")
            .await
            .unwrap()
    );
    let pass = records.between_walks(changes().await).expect("whole");
    assert_eq!(payments.read_records(&pass, false).await.unwrap().len(), 1);
    let pass = records.between_walks(changes().await).expect("whole");
    assert!(pass.contains(&"0xbb".to_owned()), "{pass:?}");

    // A dropped record is a change too; a walk that could not read everything, or a store
    // error (which clears what is kept), makes the next pass a full walk.
    assert!(state.swap_channel("0xbb", 5, &b2.encode()).await.unwrap());
    assert!(state.delete_channel("0xbb", 6).await.unwrap());
    assert_eq!(changes().await.1, vec!["0xbb".to_owned()]);
    let ids = state.channel_ids().await.unwrap();
    assert_eq!(ids, vec![a.channel_id.clone()]);
    walk(ids.clone()).await;
    records.keep(&ids, false);
    assert_eq!(records.between_walks(changes().await), None);
    walk(ids).await;
    assert!(records.between_walks(changes().await).is_some());
    records.clear();
    assert_eq!(records.between_walks(changes().await), None);
}
