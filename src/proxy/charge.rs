//! The glue between the access decision and the payment gate for rules that charge or price
//! by audience: decide who is asking, forward or refuse, run the gate; and, on the origin's
//! answer, settle and add the receipt or replace the answer with the settlement's refusal.

use std::sync::Arc;

use pingora::ErrorType;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::ctx::{Decision, RequestCtx};
use super::respond::{self, Challenge};
use super::{Gateway, request};
use crate::access::siwx;
use crate::access::{AccessState, Forwarded, Outcome};
use crate::payment::{Admission, Caller};
use crate::snapshot::{Rule, Snapshot};

impl From<Forwarded> for Decision {
    fn from(f: Forwarded) -> Self {
        match f {
            Forwarded::Free => Decision::Free,
            Forwarded::Pass => Decision::Pass,
            Forwarded::Shadow => Decision::Shadow,
        }
    }
}

impl Gateway {
    /// Admits a Sign-In-With-X header on a rule with a sign-in window: bound to the configured
    /// public origin and this resource, signed, used once, by a wallet that paid for it.
    async fn sign_in(
        &self,
        snap: &Snapshot,
        rule: &Rule,
        priced: &crate::x402::challenge::Priced,
        url: &str,
        header: &[u8],
    ) -> std::result::Result<(), siwx::SiwxError> {
        let origin = snap
            .payment
            .public_base_url
            .as_deref()
            .ok_or(siwx::SiwxError::UriMismatch)?;
        let chains: Vec<u64> = priced
            .offers
            .iter()
            .filter_map(|o| o.requirements.network.strip_prefix("eip155:")?.parse().ok())
            .collect();
        let expect = siwx::Expect {
            origin,
            path: crate::x402::url::path(url),
            chains: &chains,
        };
        let address = siwx::admit(&**self.payments.state(), header, &expect, &rule.id).await?;
        tracing::debug!(rule = %rule.id, %address, "signed in: a past payer reads again");
        Ok(())
    }

    /// A rule that charges or prices by audience: decide who is asking and what they pay, then
    /// forward, refuse, or run the payment gate.
    pub(super) async fn access_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Arc<Snapshot>,
        rule: &Rule,
    ) -> Result<bool> {
        let req = session.req_header();
        if request::is_preflight(req) {
            if rule.access.shadow {
                ctx.decision = Decision::Shadow;
                return Ok(false);
            }
            let a = respond::preflight(
                snap,
                request::header(req, "origin"),
                request::header(req, "access-control-request-headers"),
            );
            return self.answer(session, ctx, a).await;
        }
        let https = request::resource_is_https(snap, req, self.tls);
        let mut state = Box::<AccessState>::default();
        let outcome = {
            let parts = request::AccessParts::of(req, snap.case_sensitive, https);
            let view = parts.view(&req.headers);
            self.access
                .decide(&snap.access_env(), rule.access_rule(), &view, &mut state)
                .await
        };
        let crawler_usd = state.crawler_usd;
        ctx.access = Some(state);
        match outcome {
            Outcome::Forward(how) => {
                ctx.decision = how.into();
                Ok(false)
            }
            Outcome::Refused(r) => {
                let a = respond::access_refused(&r, &rule.id, crawler_usd);
                self.answer(session, ctx, a).await
            }
            Outcome::Charge { priced, pass_error } => {
                ctx.priced = Some(priced.clone());
                let url = request::resource_url(
                    snap,
                    session.req_header(),
                    ctx.rewrite.as_deref(),
                    self.tls,
                );
                // A past payer signing in instead of paying (Sign-In-With-X).
                let mut sign_in_error = None;
                if rule.payment.sign_in.is_some()
                    && let Some(header) = session.req_header().headers.get(siwx::HEADER)
                {
                    match self
                        .sign_in(snap, rule, &priced, &url, header.as_bytes())
                        .await
                    {
                        Ok(()) => {
                            ctx.decision = Decision::SignedIn;
                            return Ok(false);
                        }
                        Err(e) => sign_in_error = Some(e),
                    }
                }
                let client = super::client::client_ip(
                    session
                        .client_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.ip()),
                    &session.req_header().headers,
                    &snap.trusted_proxies,
                );
                let req = session.req_header();
                let admission = self
                    .payments
                    .gate(
                        &snap.payment_env(),
                        rule.payment_rule(),
                        &priced,
                        &req.headers,
                        &url,
                        Caller {
                            ip: client,
                            audience: ctx.audience(),
                            correlation: &ctx.correlation,
                            method: req.method.as_str(),
                        },
                    )
                    .await;
                match admission {
                    Ok(Admission::Paid(accepted)) => {
                        ctx.decision = Decision::Paid;
                        ctx.payment = Some(accepted);
                        Ok(false)
                    }
                    Ok(Admission::Replayed(receipt)) => {
                        ctx.decision = Decision::Replayed;
                        ctx.replayed = Some(receipt);
                        Ok(false)
                    }
                    Ok(Admission::Unpaid(reason)) => {
                        ctx.decision = Decision::Unpaid;
                        ctx.reason = Some(reason);
                        Ok(false)
                    }
                    Ok(Admission::Refunded(r)) => {
                        let cors = respond::cors(snap, request::header(req, "origin"));
                        self.answer(session, ctx, respond::refunded(&r, cors)).await
                    }
                    Err(rejection) => {
                        let challenge = Challenge {
                            snap,
                            // A channel's corrective 402 carries its state in the offer.
                            priced: rejection.corrective.as_deref().unwrap_or(&priced),
                            url: &url,
                            // The HTML page is for people; crawlers and agents get JSON.
                            browser: ctx.is_human(),
                            origin: request::header(req, "origin"),
                            crawler_usd,
                        };
                        let a = match sign_in_error {
                            // Signed in but not admitted, and no payment came with it.
                            Some(e)
                                if rejection.error
                                    == crate::payment::PaymentError::MissingPayment =>
                            {
                                challenge.sign_in_refused(e)
                            }
                            _ => challenge.refused(&rejection, pass_error),
                        };
                        self.answer(session, ctx, a).await
                    }
                }
            }
        }
    }

    /// Parks a body-metered payment whose response is about to stream: its deadline's timer
    /// settles it if the request has not ended by then.
    fn park_metered(&self, ctx: &mut RequestCtx) {
        let (Some(deadline), Some(started)) = (ctx.delivery_deadline, ctx.response_started) else {
            return;
        };
        if deadline <= std::time::Instant::now() {
            // Already due: the first chunk is cut and the request settles nothing.
            return;
        }
        let Some(a) = ctx.payment.take() else {
            return;
        };
        match super::metered::DeliveryWatch::start(
            self.payments.clone(),
            ctx.snap.clone(),
            a,
            started,
            deadline,
        ) {
            Ok(watch) => ctx.watch = Some(watch),
            Err(a) => ctx.payment = Some(a),
        }
    }

    /// The response to a paid request: settle (in `after` mode) and add the receipt, or turn
    /// the response into the settlement failure's answer.
    pub(super) async fn paid_response(
        &self,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let priced = ctx.charged_price();
        let Some(accepted) = ctx.payment.as_mut() else {
            return Ok(());
        };
        let snap = ctx.snap.clone();
        let status = upstream_response.status.as_u16();
        // A metered (`upto`) charge is what the origin says the response cost, capped at the
        // ceiling; the statement is for the gateway, never for the client.
        if accepted.metered() {
            let stated = upstream_response
                .headers
                .get(respond::SETTLEMENT_OVERRIDES)
                .and_then(|v| v.to_str().ok());
            accepted.meter_from_origin(stated);
        }
        upstream_response.remove_header(respond::SETTLEMENT_OVERRIDES);
        if accepted.settles_at_body_end() && status < 400 {
            // Charged by the body: counted as it passes, settled when it ended; response time
            // runs from when the request went to the origin.
            ctx.response_started =
                Some(ctx.upstream_started.unwrap_or_else(std::time::Instant::now));
            ctx.delivery_deadline = accepted.delivery_deadline();
        }
        match self
            .payments
            .on_response(&snap.payment_env(), accepted, status)
            .await
        {
            Ok(receipt) => {
                if !receipt.is_empty() {
                    respond::mark_paid_response(upstream_response, &receipt)?;
                }
                if let Some(state) = &ctx.access {
                    let extra = self
                        .access
                        .on_paid_response(&snap.access_env(), state, accepted);
                    respond::append_headers(upstream_response, &extra)?;
                }
                self.park_metered(ctx);
                Ok(())
            }
            Err(rejection) => {
                let challenge = priced.as_deref().map(|p| Challenge {
                    snap: &snap,
                    priced: p,
                    url: &accepted.resource,
                    browser: false,
                    origin: None,
                    crawler_usd: None,
                });
                let a = respond::settlement_failed(challenge, &rejection);
                ctx.reason = Some(a.reply.reason);
                ctx.failure = Some(a);
                Error::e_explain(
                    ErrorType::Custom("settlement_failed"),
                    "settlement failed after the origin answered",
                )
            }
        }
    }
}
