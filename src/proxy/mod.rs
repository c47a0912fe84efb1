//! The Pingora `ProxyHttp` implementation: thin phase methods that load the snapshot, call the
//! pure routing and payment functions, and write what they return.

pub mod ctx;
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

use crate::access::RuleAction;
use crate::access::{Access, AccessState, Forwarded, Outcome};
use crate::metrics::{Metrics, status_class};
use crate::payment::{Admission, PaymentError, Payments};
use crate::snapshot::{Rule, Snapshot};
use ctx::{Decision, RequestCtx};
use respond::{Reply, UpstreamError};

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
    async fn reply(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        decision: Decision,
        reply: &Reply,
    ) -> Result<bool> {
        ctx.decision = decision;
        ctx.reason = Some(reply.reason);
        if request::has_body(session.req_header()) {
            // The body was not read: do not try to reuse the connection.
            session.set_keepalive(None);
        }
        respond::send(session, reply).await?;
        Ok(true)
    }
}

impl Gateway {
    /// A rule that charges or prices by audience: decide who is asking and what they pay, then
    /// forward, refuse, or run the payment gate.
    async fn access_filter(
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
            let origin = req.headers.get("origin").and_then(|v| v.to_str().ok());
            let asked = req
                .headers
                .get("access-control-request-headers")
                .and_then(|v| v.to_str().ok());
            let reply = respond::preflight(snap, origin, asked);
            return self.reply(session, ctx, Decision::Local, &reply).await;
        }
        let url = request::resource_url(snap, req, ctx.rewrite.as_deref(), self.tls);
        let mut state = Box::<AccessState>::default();
        let outcome = {
            let parts =
                request::AccessParts::of(req, snap.case_sensitive, url.starts_with("https:"));
            let view = parts.view(&req.headers);
            self.access
                .decide(&snap.access_env(), rule.access_rule(), &view, &mut state)
                .await
        };
        let crawler_usd = state.crawler_usd;
        ctx.access = Some(state);
        let (priced, pass_error) = match outcome {
            Outcome::Forward(how) => {
                ctx.decision = match how {
                    Forwarded::Free => Decision::Free,
                    Forwarded::Pass => Decision::Pass,
                    Forwarded::Shadow => Decision::Shadow,
                };
                return Ok(false);
            }
            Outcome::Refused(r) => {
                let reply = respond::access_refusal(&r, &rule.id, crawler_usd);
                let decision = match reply.status {
                    402 => Decision::Challenged,
                    403 => Decision::Blocked,
                    _ => Decision::Local,
                };
                return self.reply(session, ctx, decision, &reply).await;
            }
            Outcome::Charge { priced, pass_error } => (priced, pass_error),
        };
        ctx.priced = Some(priced.clone());
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header();
        match self
            .payments
            .gate(
                &snap.payment_env(),
                rule.payment_rule(),
                &priced,
                &req.headers,
                &url,
                client,
            )
            .await
        {
            Ok(Admission::Paid(accepted)) => {
                ctx.decision = Decision::Paid;
                ctx.payment = Some(accepted);
                Ok(false)
            }
            Ok(Admission::Unpaid(reason)) => {
                ctx.decision = Decision::Unpaid;
                ctx.reason = Some(reason);
                Ok(false)
            }
            Err(rejection) => {
                let origin = req.headers.get("origin").and_then(|v| v.to_str().ok());
                // The HTML page is for people; crawlers and agents get the JSON form.
                let browser = ctx
                    .access
                    .as_ref()
                    .and_then(|a| a.audience.as_ref())
                    .is_some_and(|a| *a == crate::access::audience::Audience::Human);
                let mut reply = match pass_error {
                    Some(e) if rejection.error == PaymentError::MissingPayment => {
                        respond::pass_refused(snap, &priced, &url, e, browser, origin)
                    }
                    _ => {
                        respond::payment_rejection(snap, &priced, &url, &rejection, browser, origin)
                    }
                };
                respond::add_crawler_price(&mut reply, crawler_usd);
                let decision = if reply.status == 402 {
                    Decision::Challenged
                } else {
                    Decision::Local
                };
                self.reply(session, ctx, decision, &reply).await
            }
        }
    }
}

impl Gateway {
    /// The response to a paid request: settle (in `after` mode) and add the receipt, or turn
    /// the response into the settlement failure's reply.
    async fn paid_response(
        &self,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(accepted) = ctx.payment.as_mut() else {
            return Ok(());
        };
        let snap = ctx.snap.clone();
        let status = upstream_response.status.as_u16();
        match self
            .payments
            .on_response(&snap.payment_env(), accepted, status)
            .await
        {
            Ok(headers) => {
                if !headers.is_empty() {
                    respond::mark_paid_response(upstream_response, &headers)?;
                }
                if let Some(state) = &ctx.access {
                    let extra = self
                        .access
                        .on_paid_response(&snap.access_env(), state, accepted);
                    respond::append_headers(upstream_response, &extra)?;
                }
                Ok(())
            }
            Err(rejection) => {
                let priced = ctx.priced.clone().or_else(|| {
                    ctx.rule
                        .and_then(|i| snap.rules.get(i))
                        .and_then(|r| match &r.action {
                            RuleAction::Pay(p) => Some(p.clone()),
                            _ => None,
                        })
                });
                let reply = match priced {
                    Some(p) => respond::payment_rejection(
                        &snap,
                        &p,
                        &accepted.resource,
                        &rejection,
                        false,
                        None,
                    ),
                    None => {
                        Reply::error(402, rejection.error.reason(), rejection.error.error_text())
                    }
                };
                ctx.reason = Some(reply.reason);
                ctx.failure_reply = Some(reply);
                Error::e_explain(
                    ErrorType::Custom("settlement_failed"),
                    "settlement failed after the origin answered",
                )
            }
        }
    }
}

/// An informational (1xx) response other than `101 Switching Protocols`, which is final for
/// the HTTP exchange (the connection then carries the upgraded protocol).
fn is_interim(resp: &ResponseHeader) -> bool {
    resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS
}

/// Why a response that was under way did not reach the client, for the ledger.
fn delivery_failure(e: &Error) -> &'static str {
    match e.esource() {
        ErrorSource::Downstream => crate::payment::CLIENT_GONE,
        ErrorSource::Upstream => "origin_failed_after_settlement",
        _ => "proxy_error",
    }
}

fn upstream_error(e: &Error) -> Option<UpstreamError> {
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    Some(match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::TLSHandshakeTimedout => UpstreamError::Timeout,
        ErrorType::InvalidHTTPHeader => UpstreamError::BadResponse,
        _ => UpstreamError::Unavailable,
    })
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
        RequestCtx::new(self.config.load_full())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snap = ctx.snap.clone();
        let routed = match request::route(&snap, session.req_header()) {
            Ok(r) => r,
            Err(e) => {
                return self
                    .reply(session, ctx, Decision::Local, &Reply::from(&e))
                    .await;
            }
        };
        ctx.rule = routed.rule;
        ctx.rewrite = routed.rewrite;
        let Some(rule) = routed.rule.and_then(|i| snap.rules.get(i)) else {
            return Ok(false);
        };
        ctx.upstream = rule.upstream;
        if !rule.needs_access() {
            // Plain free and block rules: no classification, no allocation.
            return match &rule.action {
                RuleAction::Block => {
                    self.reply(session, ctx, Decision::Blocked, &respond::blocked(&rule.id))
                        .await
                }
                _ => {
                    ctx.decision = Decision::Free;
                    Ok(false)
                }
            };
        }
        // Boxed: its state is large, and free requests should not carry it.
        Box::pin(self.access_filter(session, ctx, &snap, rule)).await
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
        ctx.upstream_started = Some(Instant::now());
        upstream::pick_peer(pool).or_else(|e| {
            ctx.reason = Some("no_healthy_upstream");
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
        if ctx.access.is_none() {
            // Free, unmatched and blocked rules: the origin's response as it is.
            return Ok(());
        }
        let vary = if ctx.snap.passes.is_some() {
            respond::VARY_PRICED_PASSES
        } else {
            respond::VARY_PRICED
        };
        respond::keep_private(upstream_response, vary)?;
        if ctx.decision == Decision::Pass {
            respond::mark_paid_response(upstream_response, &[])?;
            if let Some(state) = &ctx.access {
                respond::append_headers(upstream_response, &self.access.on_pass_response(state))?;
            }
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
            ErrorType::ConnectionClosed | ErrorType::Custom("settlement_failed")
        ) || (error.esource() == &ErrorSource::Downstream
            && matches!(error.etype(), ErrorType::ReadError | ErrorType::WriteError))
            || ctx.reason == Some("no_healthy_upstream")
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let written = session.response_written().is_some();
        let settlement_reply = ctx.failure_reply.is_some();
        let mut reply = match ctx.failure_reply.take() {
            Some(r) => Some(r),
            None => match upstream_error(e) {
                Some(u) => {
                    let u = if ctx.reason == Some("no_healthy_upstream") {
                        UpstreamError::NoHealthyPeer
                    } else {
                        u
                    };
                    Some(Reply::from(u))
                }
                None => match (e.esource(), e.etype()) {
                    (
                        ErrorSource::Downstream,
                        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError,
                    ) => None,
                    (ErrorSource::Downstream, _) => {
                        Some(Reply::error(400, "bad_request", "malformed request"))
                    }
                    (_, ErrorType::HTTPStatus(code)) if (400..600).contains(code) => {
                        Some(Reply::error(
                            *code,
                            "upstream_unavailable",
                            "request could not be proxied",
                        ))
                    }
                    _ => Some(Reply::error(
                        502,
                        "proxy_error",
                        "request could not be proxied",
                    )),
                },
            },
        };
        if let (Some(r), Some(p)) = (reply.as_mut(), ctx.payment.as_mut()) {
            r.headers.extend(self.payments.on_failure(
                &ctx.snap.payment_env(),
                p,
                settlement_reply,
            ));
        }
        ctx.decision =
            if ctx.decision == Decision::Paid && reply.as_ref().is_some_and(|r| r.status == 402) {
                Decision::Challenged
            } else {
                Decision::Failed
            };
        let code = match reply {
            Some(r) if !written => {
                ctx.reason = Some(r.reason);
                // The connection is not reused after this reply (`can_reuse_downstream` below):
                // say `Connection: close`, or keep-alive clients race into a reset.
                session.set_keepalive(None);
                let _ = respond::send(session, &r).await;
                r.status
            }
            _ => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let Some(mut p) = ctx.payment.take() {
            self.payments
                .finish(&ctx.snap.payment_env(), &mut p, e.map(delivery_failure))
                .await;
        }
        self.metrics
            .requests
            .with_label_values(&[ctx.rule_id(), ctx.decision.label(), status_class(status)])
            .inc();
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
                micros = ctx.started.map_or(0, |t| t.elapsed().as_micros() as u64),
                client = session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
                generation = ctx.snap.generation,
            );
        }
    }
}
