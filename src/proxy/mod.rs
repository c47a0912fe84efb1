//! The Pingora `ProxyHttp` implementation: thin phase methods that load the snapshot, call
//! the domain (routing, access, payment), hand its outcome to `respond`, and write what
//! comes back. The glue between the access decision and the payment gate is in `charge.rs`.

mod charge;
pub mod client;
pub mod ctx;
pub mod documents;
pub mod metered;
pub mod paywall;
pub mod request;
pub mod respond;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::ErrorType;
use pingora::http::ResponseHeader;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::access::{Access, RuleAction};
use crate::correlation::{Correlation, REQUEST_ID};
use crate::metrics::{Metrics, status_class};
use crate::payment::Payments;
use crate::snapshot::Snapshot;
use ctx::{Decision, RequestCtx};
use metered::{DELIVERY_DEADLINE, Delivery, delivery_left, metered_delivery};
use respond::{Answer, UpstreamError};

/// The gateway service.
pub struct Gateway {
    pub config: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub payments: Arc<Payments>,
    /// Audiences, Web Bot Auth and passes.
    pub access: Arc<Access>,
    /// Whether this service terminates TLS (for `X-Forwarded-Proto` and resource URLs).
    pub tls: bool,
}

impl Gateway {
    /// Writes an answer of the gateway's own and counts the request under its decision.
    async fn answer(&self, session: &mut Session, ctx: &mut RequestCtx, a: Answer) -> Result<bool> {
        ctx.decision = a.decision;
        ctx.reason = Some(a.reply.reason);
        if request::has_body(session.req_header()) {
            // The body was not read: do not try to reuse the connection.
            session.set_keepalive(None);
        }
        respond::send(session, &a.reply, &ctx.correlation.request_id).await?;
        Ok(true)
    }
}

/// An informational (1xx) response other than `101 Switching Protocols`, which is final for
/// the HTTP exchange (the connection then carries the upgraded protocol).
fn is_interim(resp: &ResponseHeader) -> bool {
    resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS
}

/// Why a response that was under way did not reach the client, for the ledger. `cut`: its
/// delivery deadline had passed, so a write that timed out was the deadline's doing.
fn delivery_failure(e: &Error, cut: bool) -> &'static str {
    if e.etype() == &ErrorType::Custom(DELIVERY_DEADLINE)
        || (cut && e.etype() == &ErrorType::WriteTimedout)
    {
        return DELIVERY_DEADLINE;
    }
    match e.esource() {
        ErrorSource::Downstream => crate::payment::CLIENT_GONE,
        ErrorSource::Upstream => "origin_failed_after_settlement",
        _ => "proxy_error",
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {
        // None: the gateway never compresses, and Pingora's default adds a disabled
        // compression module whose context every request would build and call.
    }

    fn new_ctx(&self) -> RequestCtx {
        crate::header_deadline::head_read();
        RequestCtx::new(
            self.config.load_full(),
            crate::metrics::InFlight::new(&self.metrics.in_flight),
        )
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snap = ctx.snap.clone();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.correlation = Correlation::of(
            &session.req_header().headers,
            client::is_trusted(peer, &snap.trusted_proxies),
        );
        ctx.span = crate::traces::start_request(
            &mut ctx.correlation,
            session.req_header().method.as_str(),
        );
        let routed = match request::route(&snap, session.req_header()) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .answer(session, ctx, respond::request_refused(&e))
                    .await;
            }
        };
        if let Some(doc) = routed.document {
            let base = request::resource_url(&snap, session.req_header(), Some(""), self.tls);
            return self
                .answer(session, ctx, respond::document(&snap, doc, &base))
                .await;
        }
        let Some(rule) = ctx.routed(routed).and_then(|i| snap.rules.get(i)) else {
            return Ok(false);
        };
        if rule.needs_access() {
            // Boxed: its state is large, and free requests should not carry it.
            return Box::pin(self.access_filter(session, ctx, &snap, rule)).await;
        }
        // Plain free and block rules: no classification, no allocation.
        match &rule.action {
            RuleAction::Block => self.answer(session, ctx, respond::blocked(&rule.id)).await,
            _ => {
                ctx.decision = Decision::Free;
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .snap
            .upstreams
            .get(ctx.upstream)
            .or_else(|| ctx.snap.upstreams.first());
        let Some(pool) = pool else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "no upstream configured");
        };
        let now = Instant::now();
        ctx.upstream_started = Some(now);
        // A body-metered payment's origin cannot keep a read waiting past the moment its
        // response must stop.
        let deadline = ctx.payment.as_ref().and_then(|p| p.delivery_deadline());
        upstream::pick_peer(pool, deadline.map(|d| d.saturating_duration_since(now))).or_else(|e| {
            ctx.upstream_failure = Some(e);
            Error::e_explain(ErrorType::ConnectNoRoute, e.to_string()).map_err(|mut err| {
                err.esource = ErrorSource::Upstream;
                err
            })
        })
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(pool) = ctx.snap.upstreams.get(ctx.upstream) else {
            return Ok(());
        };
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        upstream::prepare_request(
            upstream_request,
            pool,
            client_ip,
            self.tls,
            ctx.snap.payment.trust_forwarded_headers,
            ctx.rewrite.as_deref(),
        )?;
        upstream::strip_payer_headers(upstream_request);
        upstream_request.insert_header(REQUEST_ID, ctx.correlation.request_id.as_str())?;
        if ctx.span.is_some() {
            // Traced: the origin's parent is the gateway's span.
            if let Some(t) = &ctx.correlation.traceparent {
                upstream_request.insert_header("traceparent", t.as_str())?;
            }
            match &ctx.correlation.tracestate {
                Some(s) => upstream_request.insert_header("tracestate", s.as_str())?,
                None => {
                    upstream_request.remove_header("tracestate");
                }
            }
        }
        if let Some(keys) = &ctx.snap.passes {
            upstream::strip_pass(upstream_request, &keys.cookie)?;
        }
        if let Some(p) = &ctx.payment {
            for (k, v) in self
                .payments
                .upstream_headers(ctx.snap.payment.forward_payer_headers, p)
            {
                upstream_request.insert_header(k, v)?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(start), Some(pool)) =
            (ctx.upstream_started, ctx.snap.upstreams.get(ctx.upstream))
        {
            pool.latency
                .get_or_init(|| {
                    self.metrics
                        .upstream_latency
                        .with_label_values(&[pool.name.as_str()])
                })
                .observe(start.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if is_interim(upstream_response) {
            // `100 Continue`, `103 Early Hints`: not the answer. Only the final status settles.
            return Ok(());
        }
        upstream_response.insert_header(REQUEST_ID, ctx.correlation.request_id.as_str())?;
        if ctx.access.is_none() {
            // Free, unmatched and blocked rules: the origin's response as it is.
            return Ok(());
        }
        let vary = if ctx.snap.passes.is_some() {
            respond::VARY_PRICED_PASSES_VALUE
        } else {
            respond::VARY_PRICED_VALUE
        };
        respond::keep_private(upstream_response, vary)?;
        if ctx.payment.is_none() {
            // A metered charge statement is for the gateway (a paid response reads and drops
            // it); never for the client, whatever admitted it.
            upstream_response.remove_header(respond::SETTLEMENT_OVERRIDES);
        }
        if ctx.decision == Decision::Pass {
            respond::mark_paid_response(upstream_response, &[])?;
            if let Some(state) = &ctx.access {
                respond::append_headers(upstream_response, &self.access.on_pass_response(state))?;
            }
            return Ok(());
        }
        if let Some(receipt) = &ctx.replayed {
            respond::mark_paid_response(upstream_response, receipt)?;
            return Ok(());
        }
        if ctx.payment.is_none() {
            return Ok(());
        }
        // Boxed: settlement's state is large, and unpaid responses should not carry it.
        Box::pin(self.paid_response(upstream_response, ctx)).await
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, error: &Error) -> bool {
        // Clients closing keep-alive connections and failed settlements are not proxy errors.
        matches!(
            error.etype(),
            ErrorType::ConnectionClosed
                | ErrorType::Custom("settlement_failed")
                | ErrorType::Custom(DELIVERY_DEADLINE)
        ) || (error.esource() == &ErrorSource::Downstream
            && matches!(error.etype(), ErrorType::ReadError | ErrorType::WriteError))
            || ctx.upstream_failure == Some(UpstreamError::NoHealthyPeer)
            // A client write stopped by a body-metered response's deadline.
            || (error.etype() == &ErrorType::WriteTimedout
                && ctx.delivery_deadline.is_some_and(|d| Instant::now() >= d))
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let written = session.response_written().is_some();
        ctx.unpark();
        let settlement = ctx.failure.take();
        ctx.decision = respond::failure_decision(settlement.as_ref());
        let settlement_reply = settlement.is_some();
        let mut reply = match settlement {
            Some(a) => Some(a.reply),
            None => respond::proxy_failure(e, ctx.upstream_failure),
        };
        if let Some(p) = ctx.payment.as_mut() {
            if !written {
                p.undelivered();
            }
            if let Some(r) = reply.as_mut() {
                r.headers.extend(
                    self.payments
                        .on_failure(&ctx.snap.payment_env(), p, settlement_reply)
                        .await,
                );
            }
        }
        let code = match reply {
            Some(r) if !written => {
                ctx.reason = Some(r.reason);
                // The connection is not reused after this reply (`can_reuse_downstream` below):
                // say `Connection: close`, or keep-alive clients race into a reset.
                session.set_keepalive(None);
                let _ = respond::send(session, &r, &ctx.correlation.request_id).await;
                r.status
            }
            _ => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        // Only a body-metered payment counts what it delivers, and stops in time to settle it.
        if ctx.response_started.is_none() {
            return Ok(None);
        }
        // The chunk handed over before this one went out.
        ctx.body_bytes = ctx
            .body_bytes
            .saturating_add(std::mem::take(&mut ctx.body_in_flight));
        let chunk = body
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|b| b.len() as u64);
        let standing = delivery_left(ctx.delivery_deadline, Instant::now());
        // The deadline's timer took the payment: nothing more goes out, not even a clean end.
        let stopped = ctx
            .watch
            .as_ref()
            .is_some_and(|w| w.progress(ctx.body_bytes, chunk.unwrap_or(0), end_of_stream));
        if stopped || (chunk.is_some() && standing == Some(Delivery::Stop)) {
            ctx.reason = Some(DELIVERY_DEADLINE);
            return Error::e_explain(
                ErrorType::Custom(DELIVERY_DEADLINE),
                "a body-metered response reached the end its payment can settle by",
            );
        }
        if let Some(len) = chunk {
            // A client that stops reading cannot hold the response past the deadline either.
            if let Some(Delivery::Left(left)) = standing {
                session.set_write_timeout(Some(left));
            }
            ctx.body_in_flight = len;
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        // A payment the deadline's timer took is settled before the request ends.
        if !ctx.unpark()
            && let Some(w) = &ctx.watch
        {
            w.settled().await;
        }
        let now = Instant::now();
        let cut = e.is_some() && ctx.delivery_deadline.is_some_and(|d| now >= d);
        let (bytes, elapsed) = metered_delivery(
            (ctx.body_bytes, ctx.body_in_flight),
            ctx.response_started,
            ctx.delivery_deadline,
            e.is_none(),
            now,
        );
        if let Some(p) = ctx.payment.as_mut()
            && p.settles_at_body_end()
        {
            // The body ended (or broke off): charge what was delivered.
            self.payments
                .settle_metered(&ctx.snap.payment_env(), p, bytes, elapsed)
                .await;
        }
        if let Some(mut p) = ctx.payment.take() {
            let interrupted = e.map(|e| delivery_failure(e, cut));
            self.payments
                .finish(&ctx.snap.payment_env(), &mut p, interrupted)
                .await;
        }
        self.metrics
            .requests
            .with_label_values(&[ctx.rule_id(), ctx.decision.label(), status_class(status)])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[ctx.rule_id(), ctx.decision.label()])
            .observe(ctx.started.elapsed().as_secs_f64());
        if let Some(span) = ctx.span.take() {
            let req = session.req_header();
            crate::traces::end_request(
                span,
                crate::traces::Outcome {
                    path: req.uri.path(),
                    status,
                    rule: ctx.rule_id(),
                    decision: ctx.decision.label(),
                    reason: ctx.reason.unwrap_or(""),
                    audience: ctx.audience(),
                },
            );
        }
        if let Some(reason) = ctx.reason {
            self.metrics
                .local_replies
                .with_label_values(&[reason])
                .inc();
        }
        if ctx.snap.logging.access_log {
            let req = session.req_header();
            let path = match &ctx.rewrite {
                Some(r) => r.split('?').next().unwrap_or(r),
                None => req.uri.path(),
            };
            tracing::info!(
                target: "access",
                method = req.method.as_str(),
                target_raw = %String::from_utf8_lossy(req.raw_path()),
                path,
                status,
                rule = ctx.rule_id(),
                decision = ctx.decision.label(),
                reason = ctx.reason.unwrap_or(""),
                audience = ctx.audience(),
                request_id = ctx.correlation.request_id.as_str(),
                micros = ctx.started.elapsed().as_micros() as u64,
                client = %client_for_log(session, &ctx.snap.trusted_proxies),
                generation = ctx.snap.generation,
            );
        }
    }
}

/// The client as the access log names it: the peer (address and port), or, behind a trusted
/// proxy, the address it forwarded for.
fn client_for_log(session: &Session, trusted: &[ipnet::IpNet]) -> String {
    let peer = session.client_addr();
    if trusted.is_empty() {
        return peer.map(|a| a.to_string()).unwrap_or_default();
    }
    let ip = peer.and_then(|a| a.as_inet()).map(|a| a.ip());
    client::client_ip(ip, &session.req_header().headers, trusted)
        .map(|c| {
            if Some(c) == ip {
                peer.map(|a| a.to_string()).unwrap_or_default()
            } else {
                c.to_string()
            }
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cut is ledgered as the deadline's: its own error, or a client write the deadline
    /// timed out; before the deadline a timed-out write is the client's.
    #[test]
    fn a_cut_at_the_delivery_deadline_is_ledgered_as_such() {
        let cut = Error::explain(ErrorType::Custom(DELIVERY_DEADLINE), "cut");
        assert_eq!(delivery_failure(&cut, true), DELIVERY_DEADLINE);
        let mut slow = Error::explain(ErrorType::WriteTimedout, "slow reader");
        slow.esource = ErrorSource::Downstream;
        assert_eq!(delivery_failure(&slow, true), DELIVERY_DEADLINE);
        assert_eq!(delivery_failure(&slow, false), crate::payment::CLIENT_GONE);
    }
}
