//! Whose transaction settled a payment. A facilitator's word is checked on chain: the
//! transaction it names must show this very transfer (payer, payTo, amount, nonce), and an
//! authorization found used counts as this request's payment only when the transaction that
//! used it is the one this request caused — the hash the facilitator (or the built-in settler)
//! returned. A transaction found without such a hash proves little about who sent it: another
//! replica given the same payment may share the facilitator and its signer. Where the
//! facilitator's configuration says its `/supported` signers are all of its addresses
//! (`signers_complete`), one thing more: a transaction sent from none of them is not that
//! facilitator's, so not this request's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};

use crate::facilitator::rpc::{ChainReader, ExpectedTransfer};

/// What the chain says about one settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This request's transaction made the transfer (its hash).
    Ours(String),
    /// The authorization was used (or canceled) by a transaction this request did not cause.
    NotOurs,
    /// The named transaction did not make the transfer and the authorization is unused.
    Failed,
    /// The named transaction made something else than this transfer (a facilitator naming a
    /// transaction that is not this payment).
    Mismatch,
    /// Used, but no transaction was named to tell whose it was (the found one, if any).
    Unattributed(String),
    /// Used by a transaction nobody named, sent from an address (`from`) that is none of
    /// the signers of the facilitator this request asked: another's payment.
    SentByOther { tx: String, from: String },
    /// Nothing can be said yet.
    Unknown,
}

/// How a watched settlement ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// This request's transaction made the transfer after all (its hash).
    Ours(String),
    /// Used by a transaction this request did not cause.
    NotOurs,
    /// Used by a transaction nobody named (the one found, if any).
    Unattributed(String),
    /// Used by a transaction nobody named, sent from none of the asked facilitator's signers.
    SentByOther { tx: String, from: String },
    /// The authorization expired unused: provably never settled.
    ExpiredUnused,
}

impl Resolution {
    /// The ledger event and metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Resolution::Ours(_) => "settled_late",
            Resolution::NotOurs => "used_elsewhere",
            Resolution::Unattributed(_) => "used_unattributed",
            Resolution::SentByOther { .. } => "used_by_other_sender",
            Resolution::ExpiredUnused => "expired_unsettled",
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What to look for.
pub struct Lookup<'a> {
    pub reader: &'a ChainReader,
    pub expected: ExpectedTransfer,
    /// The transaction the facilitator named, when it named one.
    pub claimed: Option<B256>,
    /// The addresses the facilitator asked to settle sends transactions from, when its
    /// configuration says its list is complete: a found transaction sent from none of them is
    /// not this request's.
    pub senders: Option<Arc<[Address]>>,
}

impl std::fmt::Debug for Lookup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup")
            .field("expected", &self.expected)
            .field("claimed", &self.claimed)
            .field("senders", &self.senders)
            .finish_non_exhaustive()
    }
}

impl Lookup<'_> {
    /// One look at the chain.
    pub async fn look(&self) -> Verdict {
        let e = &self.expected;
        if let Some(tx) = self.claimed {
            match self.reader.receipt(tx).await {
                Ok(Some(r)) if e.paid_by(&r) => return Verdict::Ours(format!("{tx:#x}")),
                Ok(Some(r)) if r.status() => return Verdict::Mismatch,
                Ok(Some(_)) => {
                    // Reverted: perhaps because something else used the nonce first.
                    return match self.used_by().await {
                        Some(None) => Verdict::Failed,
                        Some(Some(_)) => Verdict::NotOurs,
                        None => Verdict::Unknown,
                    };
                }
                Ok(None) | Err(_) => {}
            }
            // No receipt from the node: the token's `AuthorizationUsed` log in the named
            // transaction is proof enough (the signed authorization fixes payee and amount,
            // which the gate checked); another transaction using the nonce is not ours.
            return match self.used_by().await {
                Some(Some(Some(other))) if other == tx => Verdict::Ours(format!("{tx:#x}")),
                Some(Some(Some(_))) => Verdict::NotOurs,
                _ => Verdict::Unknown,
            };
        }
        match self.used_by().await {
            Some(Some(Some(other))) => match self.other_sender(other).await {
                Some(from) => Verdict::SentByOther {
                    tx: format!("{other:#x}"),
                    from: from.to_checksum(None),
                },
                None => Verdict::Unattributed(format!("{other:#x}")),
            },
            Some(Some(None)) => Verdict::Unattributed(String::new()),
            Some(None) | None => Verdict::Unknown,
        }
    }

    /// `tx`'s sender when it is none of the facilitator's signers. Signers not known as
    /// complete, or a sender the node cannot tell, prove nothing.
    async fn other_sender(&self, tx: B256) -> Option<Address> {
        let senders = self.senders.as_deref()?;
        match self.reader.transaction_sender(tx).await {
            Ok(Some(from)) if !senders.contains(&from) => Some(from),
            Ok(_) | Err(_) => None,
        }
    }

    /// Reads the authorization: `None` when the chain cannot be read, `Some(None)` when it is
    /// unused, `Some(Some(tx))` when used (by `tx`, if a transaction in reach logged it).
    async fn used_by(&self) -> Option<Option<Option<B256>>> {
        let e = &self.expected;
        match self
            .reader
            .authorization_used(e.token, e.payer, e.nonce)
            .await
        {
            Ok(false) => Some(None),
            Ok(true) => match self
                .reader
                .authorization_tx(e.token, e.payer, e.nonce)
                .await
            {
                Ok(tx) => Some(Some(tx)),
                Err(_) => None,
            },
            Err(_) => None,
        }
    }

    /// Watches a settlement left unresolved until the chain shows whose transaction used the
    /// authorization, or the authorization has expired (`valid_before`, unix seconds) and the
    /// chain shows it unused or used by a transaction out of reach.
    pub async fn until_expiry(&self, valid_before: u64, poll: Duration) -> Resolution {
        loop {
            match self.look().await {
                Verdict::Ours(tx) => return Resolution::Ours(tx),
                Verdict::NotOurs => return Resolution::NotOurs,
                Verdict::Unattributed(tx) => return Resolution::Unattributed(tx),
                Verdict::SentByOther { tx, from } => {
                    return Resolution::SentByOther { tx, from };
                }
                _ if unix_now() > valid_before.saturating_add(5) => {
                    let e = &self.expected;
                    match self
                        .reader
                        .authorization_used(e.token, e.payer, e.nonce)
                        .await
                    {
                        Ok(false) => return Resolution::ExpiredUnused,
                        // Used, by a transaction not in reach or not ours.
                        Ok(true) => return Resolution::NotOurs,
                        Err(_) => {}
                    }
                }
                _ => {}
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Looks until the chain gives an answer or `window` has passed.
    pub async fn within(&self, window: Duration, poll: Duration) -> Verdict {
        let deadline = Instant::now() + window;
        loop {
            let v = self.look().await;
            if v != Verdict::Unknown || Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(poll).await;
        }
    }
}
