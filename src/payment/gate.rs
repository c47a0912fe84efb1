//! The gate: everything a priced request's payment goes through before the request is
//! forwarded — decode, match against the offers, the scheme's local checks, the per-client and
//! per-payer limits, the replay reservation, and the facilitator's verify (cached), then, in
//! `before` mode, settlement.

use crate::payment::Caller;
use std::time::Instant;

use http::HeaderMap;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::identifier::{self, Lookup};
use super::limits::FAILURE_WINDOW;
use super::replay::ReplayKey;
use super::{
    Accepted, Admission, Paying, PaymentEnv, PaymentError, Payments, Rejection, RuleRef,
    Settlement, Stage, decode, unix_now,
};
use crate::facilitator::client::FacilitatorRequest;
use crate::facilitator::{FacilitatorConf, FacilitatorError};
use crate::schemes;
use crate::state::{Admitted, Attempter, Refused};
use crate::x402::challenge::{Offer, Priced};
use crate::x402::types::RequirementsV1;

/// The checks the gate makes before any facilitator call (decode, match, exact-scheme checks
/// with signature recovery), without reserving, verifying or settling anything: what shadow
/// mode uses to say whether a payment would have been accepted. Returns the payer.
pub fn check_locally(
    priced: &Priced,
    headers: &HeaderMap,
    max_header_bytes: usize,
) -> Result<String, PaymentError> {
    let found = decode::find(headers)?.ok_or(PaymentError::MissingPayment)?;
    let decoded = decode::decode(found, priced, max_header_bytes)?;
    let offer = priced
        .offers
        .get(decoded.offer)
        .ok_or(PaymentError::NoMatch)?;
    let scheme =
        schemes::by_id(&offer.requirements.scheme).ok_or(PaymentError::UnsupportedScheme)?;
    let checked = scheme.check(&decoded.payload, offer, unix_now())?;
    Ok(checked.payer)
}

impl Payments {
    /// Counts a refused attempt in the state store, so that every replica sharing it limits
    /// the key (a store that cannot count leaves the limit to this replica's own window).
    pub(super) async fn count_refusal(&self, who: Attempter<'_>, limit: u32) {
        if let Err(e) = self.state.count_refusal(who, FAILURE_WINDOW, limit).await {
            tracing::debug!(error = %e, "cannot count a refused payment in the state store");
        }
    }

    /// Whether a payer (lower case) has had too many payments refused lately, here or on any
    /// replica sharing the store.
    pub(super) fn payer_limited(&self, env: &PaymentEnv<'_>, payer_key: &str) -> bool {
        let limit = env.limits.failed_per_payer;
        self.failures_payer.exceeded(&payer_key, limit)
            || (limit > 0 && self.state.limited(Attempter::Payer(payer_key)))
    }

    /// Counts a facilitator's `invalid` verdict (a call spent on a payment that does not pay)
    /// against the client and `signer`: the payer (lower case) when its signature was
    /// recovered here, else `None`. A payer address anyone can write into a payload is no
    /// one's to count against (or anyone could lock a payer out). Other errors are not theirs.
    pub(super) async fn count_invalid(
        &self,
        env: &PaymentEnv<'_>,
        e: &PaymentError,
        client: Option<std::net::IpAddr>,
        signer: Option<&str>,
    ) {
        if !matches!(e, PaymentError::Invalid(_)) {
            return;
        }
        if let Some(ip) = client {
            self.failures_client.count(&ip);
            self.count_refusal(Attempter::Client(ip), env.limits.failed_per_client)
                .await;
        }
        if let Some(signer) = signer {
            self.failures_payer.count(&signer);
            self.count_refusal(Attempter::Payer(signer), env.limits.failed_per_payer)
                .await;
        }
    }

    /// Checks the payment on a priced request. `Ok` means forward; `Err` is the answer.
    pub async fn gate(
        &self,
        env: &PaymentEnv<'_>,
        rule: RuleRef<'_>,
        priced: &Priced,
        headers: &HeaderMap,
        url: &str,
        caller: Caller<'_>,
    ) -> Result<Admission, Rejection> {
        let started = Instant::now();
        let client = caller.ip;
        let found = match decode::find(headers) {
            Ok(Some(f)) => f,
            Ok(None) => return Err(PaymentError::MissingPayment.into()),
            Err(e) => return Err(self.reject(e.into())),
        };
        let version = found.version;
        if let Some(ip) = client
            && (self
                .failures_client
                .exceeded(&ip, env.limits.failed_per_client)
                || (env.limits.failed_per_client > 0 && self.state.limited(Attempter::Client(ip))))
        {
            return Err(self.reject(Rejection {
                version,
                ..PaymentError::RateLimited.into()
            }));
        }
        let fail = |error: PaymentError, payer: Option<String>| Rejection {
            error,
            version,
            payer,
            receipt: None,
            corrective: None,
        };
        let decoded = decode::decode(found, priced, env.limits.max_header_bytes)
            .map_err(|e| self.reject(fail(e, None)))?;
        let offer = &priced.offers[decoded.offer];
        let req = &offer.requirements;
        if super::channel::is_channel(offer) {
            // What facilitators and the ledger see: no query string unless the rule keeps it.
            let recorded = if rule.policy.resource_query {
                url
            } else {
                url.split('?').next().unwrap_or(url)
            };
            return self
                .channel_gate(
                    env,
                    rule,
                    priced,
                    offer,
                    &decoded,
                    (url, recorded),
                    caller,
                    started,
                )
                .await;
        }
        let scheme = schemes::by_id(&req.scheme)
            .ok_or_else(|| self.reject(fail(PaymentError::UnsupportedScheme, None)))?;
        let now = unix_now();
        let checked = scheme
            .check(&decoded.payload, offer, now)
            .map_err(|e| self.reject(fail(PaymentError::Scheme(e), None)))?;
        if let Err(e) = delivery_window(rule.policy.meter, scheme.settle_plan(), &checked, now) {
            return Err(self.reject(fail(PaymentError::Scheme(e), Some(checked.payer))));
        }
        let payer = checked.payer.clone();
        let payer_key = payer.to_ascii_lowercase();
        if self.payer_limited(env, &payer_key) {
            return Err(self.reject(fail(PaymentError::RateLimited, Some(payer))));
        }
        let key = ReplayKey::new(&req.network, &req.asset, &payer, &checked.nonce);
        // What facilitators and the ledger see: no query string unless the rule keeps it.
        let recorded = if rule.policy.resource_query {
            url
        } else {
            url.split('?').next().unwrap_or(url)
        };
        let body = facilitator_body(version, &decoded.raw, offer, priced, recorded)
            .map_err(|e| self.reject(fail(e, Some(payer.clone()))))?;
        let digest = Sha256::digest(&body).into();
        let paying = Paying {
            payer,
            key,
            nonce: checked.nonce.clone(),
            valid_before: checked.valid_before,
        };
        let mut accepted = Box::new(Accepted {
            digest,
            facilitator_body: body,
            ..Accepted::verified(
                version,
                &rule,
                &caller,
                recorded.to_owned(),
                offer.clone(),
                paying,
                started,
            )
        });
        // A named payment: claim its identifier, or serve the retry of one that settled.
        let claim = || identifier::record(&decoded, offer, caller.method, url, rule.id);
        match self.identify(env, &decoded, caller.method, claim).await {
            Ok(Lookup::Unnamed) => {}
            Ok(Lookup::Claimed(named)) => accepted.identifier = Some(named),
            Ok(Lookup::Settled(receipt)) => return Ok(Admission::Replayed(receipt)),
            Err(e) => return Err(self.reject(fail(e, Some(accepted.payer.clone())))),
        }
        // One round trip: the reservation, the record another replica would resolve should
        // this one stop, and the verify cache.
        let verified = match self.admit(&accepted).await {
            Ok(Admitted {
                reserved: Ok(()),
                verified,
            }) => verified,
            Ok(Admitted {
                reserved: Err(refused),
                ..
            }) => {
                let e = match refused {
                    Refused::InFlight => PaymentError::InFlight,
                    Refused::AlreadyUsed => PaymentError::AlreadyUsed,
                };
                self.forget_identifier(accepted.identifier.as_ref()).await;
                return Err(self.reject(fail(e, Some(accepted.payer.clone()))));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reserve a payment");
                self.forget_identifier(accepted.identifier.as_ref()).await;
                let e = PaymentError::StateUnavailable;
                return Err(self.reject(fail(e, Some(accepted.payer.clone()))));
            }
        };
        if let Err(e) = self.verify(env, &mut accepted, verified).await {
            self.release(&accepted.key, None).await;
            self.forget_identifier(accepted.identifier.as_ref()).await;
            let signer = checked.signature_checked.then_some(payer_key.as_str());
            self.count_invalid(env, &e, client, signer).await;
            if self.fails_open(rule.policy, &e) {
                return Ok(self.served_unpaid(rule.id, e.reason()));
            }
            return Err(self.reject(fail(e, Some(accepted.payer.clone()))));
        }
        if accepted.settlement == Settlement::Before {
            self.settle(env, &mut accepted, None).await;
            if accepted.stage != Stage::Settled {
                let error = self.settle_error(&accepted);
                self.release_unless_unknown(&mut accepted).await;
                if accepted.stage == Stage::SettleFailed && self.fails_open(rule.policy, &error) {
                    return Ok(self.served_unpaid(rule.id, error.reason()));
                }
                let receipt = accepted.receipt.clone();
                return Err(self.reject(Rejection {
                    error,
                    version,
                    payer: Some(accepted.payer.clone()),
                    receipt,
                    corrective: None,
                }));
            }
        }
        Ok(Admission::Paid(accepted))
    }

    pub(super) fn candidates<'a>(
        &self,
        env: &PaymentEnv<'a>,
        a: &Accepted,
    ) -> Vec<&'a FacilitatorConf> {
        let r = &a.offer.requirements;
        self.calls.candidates(
            env.facilitators,
            a.version,
            &r.scheme,
            &r.network,
            a.offer.v1_network.as_deref(),
        )
    }

    /// Verifies through a facilitator, unless one did recently (`cached`).
    async fn verify(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
        cached: bool,
    ) -> Result<(), PaymentError> {
        if cached {
            return Ok(());
        }
        self.verify_extra(env, a).await.map(|_| ())
    }

    /// Verifies through a facilitator; a valid answer's `extra` (a channel's on-chain state)
    /// comes back.
    pub(super) async fn verify_extra(
        &self,
        env: &PaymentEnv<'_>,
        a: &mut Accepted,
    ) -> Result<Option<serde_json::Value>, PaymentError> {
        let candidates = self.candidates(env, a);
        if candidates.is_empty() {
            let r = &a.offer.requirements;
            let other_version = self.calls.candidates(
                env.facilitators,
                if a.version == 1 { 2 } else { 1 },
                &r.scheme,
                &r.network,
                a.offer.v1_network.as_deref(),
            );
            // Facilitators serve this network, just not in this protocol version: the client's
            // choice, not an outage.
            return Err(if other_version.is_empty() {
                PaymentError::NoFacilitator
            } else {
                PaymentError::UnsupportedVersion
            });
        }
        let mut all_declined = true;
        for (n, fac) in candidates.into_iter().enumerate() {
            if n > 0 {
                self.metrics
                    .facilitator_failovers
                    .with_label_values(&["verify"])
                    .inc();
            }
            let t = Instant::now();
            let result = self
                .calls
                .verify(fac, &a.facilitator_body, &a.correlation)
                .await;
            a.facilitator_time += t.elapsed();
            match result {
                // Remembered only if the payment is released unsettled (a settled one cannot
                // come back).
                Ok(v) if v.valid() => {
                    a.facilitator = Some(fac.name.clone());
                    return Ok(v.extra);
                }
                Ok(v) => {
                    if let Some(p) = v.payer.filter(|p| !p.is_empty()) {
                        a.payer = p;
                    }
                    return Err(PaymentError::Invalid(
                        v.invalid_reason.unwrap_or_else(|| "invalid_payment".into()),
                    ));
                }
                // Verify never moves money: any failure may try the next facilitator.
                Err(e) => {
                    all_declined &= matches!(e, FacilitatorError::Declined { .. });
                    tracing::warn!(facilitator = %fac.name, error = %e, "verify failed");
                }
            }
        }
        Err(if all_declined {
            PaymentError::FacilitatorBusy
        } else {
            PaymentError::FacilitatorUnavailable
        })
    }
}

/// A body-metered payment settles when its response ended, so its permit must outlast some
/// delivery: one that ends within [`super::METERED_STOP_SECS`] plus
/// [`super::METERED_MIN_DELIVERY_SECS`] is refused as expiring too soon (and a response it pays
/// for stops [`super::METERED_STOP_SECS`] before the permit ends).
fn delivery_window(
    meter: super::policy::Meter,
    plan: schemes::SettlePlan,
    checked: &schemes::Checked,
    now: u64,
) -> Result<(), schemes::SchemeError> {
    let least = now
        .saturating_add(super::METERED_STOP_SECS)
        .saturating_add(super::METERED_MIN_DELIVERY_SECS);
    if plan == schemes::SettlePlan::VerifyThenSettleMetered
        && meter.at_body_end()
        && checked.valid_before < least
    {
        return Err(schemes::evm_upto::UptoError::Expired.into());
    }
    Ok(())
}

/// A v2 payload whose `resource.url` carries more than `url` (the query string the gateway
/// keeps from facilitators), rewritten with `url`; `None` when it can go verbatim.
fn v2_payload_without_query(version: u8, raw: &str, url: &str) -> Option<String> {
    if version != 2 || !raw.contains('?') {
        return None;
    }
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw).ok()?;
    let res = v.get_mut("resource")?.as_object_mut()?;
    let current = res.get("url")?.as_str()?;
    if current == url || !current.contains('?') {
        return None;
    }
    res.insert("url".into(), serde_json::Value::String(url.to_owned()));
    serde_json::to_string(&v).ok()
}

/// The `/verify` and `/settle` body: the client's payload (verbatim, unless its resource URL
/// carries a query the gateway keeps from facilitators) and the gateway's own
/// requirements (v2 form, or v1 form with resource details).
pub(super) fn facilitator_body(
    version: u8,
    raw: &str,
    offer: &Offer,
    priced: &Priced,
    url: &str,
) -> Result<Vec<u8>, PaymentError> {
    let payload = match v2_payload_without_query(version, raw, url) {
        Some(p) => RawValue::from_string(p),
        None => RawValue::from_string(raw.to_owned()),
    }
    .map_err(|e| PaymentError::Payload(e.to_string()))?;
    let r = &offer.requirements;
    let reqs = if version == 1 {
        let network = offer
            .v1_network
            .as_deref()
            .ok_or(PaymentError::InvalidNetwork)?;
        serde_json::to_string(&RequirementsV1 {
            scheme: &r.scheme,
            network,
            max_amount_required: &r.amount,
            resource: url,
            description: &priced.description,
            mime_type: &priced.mime_type,
            pay_to: &r.pay_to,
            max_timeout_seconds: r.max_timeout_seconds,
            asset: &r.asset,
            extra: &r.extra,
        })
    } else {
        serde_json::to_string(r)
    }
    .map_err(|e| PaymentError::Payload(e.to_string()))?;
    let reqs = RawValue::from_string(reqs).map_err(|e| PaymentError::Payload(e.to_string()))?;
    serde_json::to_vec(&FacilitatorRequest {
        x402_version: version,
        payment_payload: &payload,
        payment_requirements: &reqs,
    })
    .map_err(|e| PaymentError::Payload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::policy::Meter;
    use crate::schemes::{Checked, SettlePlan};

    fn ending(valid_before: u64) -> Checked {
        Checked {
            payer: "0x1".into(),
            valid_before,
            nonce: "0x2".into(),
            signature_checked: true,
        }
    }

    /// A body-metered permit must outlast the stop before its end plus some delivery; other
    /// payments keep the scheme's own window.
    #[test]
    fn a_body_metered_permit_must_leave_time_to_deliver() {
        let now = 1_000_000;
        let least =
            now + crate::payment::METERED_STOP_SECS + crate::payment::METERED_MIN_DELIVERY_SECS;
        let metered = SettlePlan::VerifyThenSettleMetered;
        for meter in [Meter::Bytes(1), Meter::Seconds(1)] {
            assert!(delivery_window(meter, metered, &ending(least), now).is_ok());
            assert_eq!(
                delivery_window(meter, metered, &ending(least - 1), now).map_err(|e| e.reason()),
                Err("permit2_deadline_expired")
            );
        }
        // Charged on the head, or not metered: nothing to deliver after the charge is known.
        assert!(delivery_window(Meter::Origin, metered, &ending(now + 7), now).is_ok());
        assert!(
            delivery_window(
                Meter::Bytes(1),
                SettlePlan::VerifyThenSettle,
                &ending(now + 7),
                now
            )
            .is_ok()
        );
    }
}
