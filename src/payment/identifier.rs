//! The `payment-identifier` extension: a client names its payment so that a retry (after a
//! dropped connection, say) is served again without a second charge. The name is bound to
//! the payment and to the request (method, canonical resource URL, rule); the same name with
//! another payment or request is a conflict. Only `GET` and `HEAD` are answered again (the
//! origin answers the retry; nothing is cached); other methods learn that the payment
//! settled. Records live in the state store, so a retry may land on any replica, and are
//! claimed only after the payment passed its local checks (for a channel voucher, before its
//! cumulative amount meets the channel's record: a voucher refused there frees its name).

use sha2::{Digest, Sha256};

use super::decode::Decoded;
use super::{Accepted, PaymentEnv, PaymentError, Payments, unix_now};
use crate::state::Identified;
use crate::x402::challenge::Offer;
use crate::x402::extensions;

/// A payment identifier this request claimed, with the record it wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    pub id: String,
    pub record: Identified,
    /// Unix seconds the record is kept until.
    pub until: u64,
}

/// What an identifier says about a request.
#[derive(Debug)]
pub(super) enum Lookup {
    /// No identifier (or the extension is off): an ordinary payment.
    Unnamed,
    /// Claimed by this request: it pays as usual, and its outcome is recorded under the name.
    Claimed(Named),
    /// The same payment for the same request already settled: serve it again, uncharged,
    /// with the original receipt (its header, named for the payment's protocol version).
    Settled(Vec<(&'static str, String)>),
}

fn hex_digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The record a payment writes under its identifier while in flight.
pub(super) fn record(
    decoded: &Decoded,
    offer: &Offer,
    method: &str,
    url: &str,
    rule: &str,
) -> Identified {
    let payload = serde_json::to_vec(&decoded.payload).unwrap_or_default();
    let accepted = serde_json::to_vec(&offer.requirements).unwrap_or_default();
    Identified {
        payment: hex_digest(&[&payload, &accepted]),
        request: hex_digest(&[method.as_bytes(), url.as_bytes(), rule.as_bytes()]),
        receipt: String::new(),
        version: decoded.version,
    }
}

impl Payments {
    /// Reads the payment's identifier and claims it, or finds what it already names. Called
    /// after the payment passed every local check, never before.
    pub(super) async fn identify(
        &self,
        env: &PaymentEnv<'_>,
        decoded: &Decoded,
        method: &str,
        claim: impl FnOnce() -> Identified,
    ) -> Result<Lookup, PaymentError> {
        let Some(window) = env.identifier.window else {
            return Ok(Lookup::Unnamed);
        };
        let id = extensions::payment_identifier(decoded.extensions.as_ref())
            .map_err(|_| PaymentError::BadIdentifier)?;
        let Some(id) = id else {
            return if env.identifier.required {
                Err(PaymentError::IdentifierRequired)
            } else {
                Ok(Lookup::Unnamed)
            };
        };
        let record = claim();
        let until = unix_now() + window.as_secs();
        let existing = self
            .state
            .claim_identifier(id, &record, until)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot claim a payment identifier");
                PaymentError::StateUnavailable
            })?;
        let Some(existing) = existing else {
            return Ok(Lookup::Claimed(Named {
                id: id.to_owned(),
                record,
                until,
            }));
        };
        if existing.payment != record.payment || existing.request != record.request {
            tracing::debug!(id, "a payment identifier names another payment or request");
            return Err(PaymentError::IdentifierConflict);
        }
        if existing.receipt.is_empty() {
            return Err(PaymentError::IdentifierInFlight);
        }
        // The origin answers a replay again: only for methods without side effects (a POST
        // body is not part of the binding, and running it twice would be unpaid work).
        if !matches!(method, "GET" | "HEAD") {
            return Err(PaymentError::IdentifierSettled);
        }
        self.metrics
            .payments
            .with_label_values(&["replayed", ""])
            .inc();
        let header = crate::x402::receipt_header(existing.version == 1);
        Ok(Lookup::Settled(vec![(header, existing.receipt)]))
    }

    /// The named payment settled: its identifier now serves retries with this receipt.
    pub(super) async fn complete_identifier(&self, a: &Accepted) {
        let (Some(named), Some(receipt)) = (&a.identifier, &a.receipt) else {
            return;
        };
        let record = Identified {
            receipt: receipt.header_value(),
            ..named.record.clone()
        };
        if let Err(e) = self
            .state
            .complete_identifier(&named.id, &record, named.until)
            .await
        {
            tracing::error!(error = %e, id = %named.id, "cannot record a settled payment identifier");
        }
    }

    /// The named payment did not settle: the identifier may name a new attempt.
    pub(super) async fn forget_identifier(&self, named: Option<&Named>) {
        let Some(named) = named else {
            return;
        };
        if let Err(e) = self.state.forget_identifier(&named.id, &named.record).await {
            tracing::warn!(error = %e, id = %named.id, "cannot free a payment identifier; it frees itself when its window ends");
        }
    }
}
