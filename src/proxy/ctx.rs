//! Per-request state carried between proxy phases.

use std::sync::Arc;
use std::time::Instant;

use crate::snapshot::Snapshot;

/// How the gateway decided to handle a request (the `decision` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No rule matched: forwarded.
    Unmatched,
    /// A free rule matched: forwarded.
    Free,
    /// Refused by a `block` rule.
    Blocked,
    /// Answered with a 402 challenge (no or unusable payment).
    Challenged,
    /// A payment was accepted and the request forwarded.
    Paid,
    /// No facilitator could check the payment and the rule fails open: forwarded unpaid.
    Unpaid,
    /// Answered locally for another reason (bad request, preflight, facilitator down).
    Local,
    /// Failed while proxying (upstream down, timeout).
    Failed,
    /// A valid pass admitted the request: forwarded without payment.
    Pass,
    /// A shadow-mode rule: decided and counted, forwarded without charging.
    Shadow,
    /// The retry of a settled payment (`payment-identifier`): forwarded again, uncharged.
    Replayed,
    /// A past payer signed in (Sign-In-With-X): forwarded without payment.
    SignedIn,
    /// A payment channel's cooperative refund: answered by the gateway with its receipt.
    Refunded,
}

impl Decision {
    pub fn label(self) -> &'static str {
        match self {
            Decision::Unmatched => "unmatched",
            Decision::Free => "free",
            Decision::Blocked => "blocked",
            Decision::Challenged => "challenged",
            Decision::Paid => "paid",
            Decision::Unpaid => "unpaid_open",
            Decision::Local => "local",
            Decision::Failed => "failed",
            Decision::Pass => "pass",
            Decision::Shadow => "shadow",
            Decision::Replayed => "replayed",
            Decision::SignedIn => "signed_in",
            Decision::Refunded => "refunded",
        }
    }
}

/// State of one request.
pub struct RequestCtx {
    /// The configuration generation this request uses from start to end.
    pub snap: Arc<Snapshot>,
    pub rule: Option<usize>,
    /// Path and query sent upstream when the canonical form differs from the raw one.
    pub rewrite: Option<String>,
    pub decision: Decision,
    /// Reason code of a local reply.
    pub reason: Option<&'static str>,
    /// When the request began (the duration histogram and the access log).
    pub started: Instant,
    pub upstream_started: Option<Instant>,
    pub upstream: usize,
    /// Payment accepted for this request, if any.
    pub payment: Option<Box<crate::payment::Accepted>>,
    /// The original receipt header of a replayed payment (`payment-identifier`).
    pub replayed: Option<Vec<(&'static str, String)>>,
    /// Body bytes passed to the client (counted for body-metered payments only): those whose
    /// write finished, and the last chunk handed over, counted once it went out.
    pub body_bytes: u64,
    pub body_in_flight: u64,
    /// When the origin's response head arrived (body-metered payments only).
    pub response_started: Option<Instant>,
    /// When a body-metered response must stop for its payment to still settle.
    pub delivery_deadline: Option<Instant>,
    /// Where a body-metered payment waits while its response streams (`payment` is `None`
    /// meanwhile): taken back when the request ends, or by its deadline's timer.
    pub watch: Option<Arc<super::metered::DeliveryWatch>>,
    /// Audience, pass and shadow state (rules that charge or price by audience only).
    pub access: Option<Box<crate::access::AccessState>>,
    /// The price this request was charged at (its audience's).
    pub priced: Option<Arc<crate::x402::challenge::Priced>>,
    /// The answer that replaces the origin's response (its payment did not settle).
    pub failure: Option<super::respond::Answer>,
    /// Why no upstream peer could be used, when choosing one already failed.
    pub upstream_failure: Option<super::respond::UpstreamError>,
    /// The request's id and trace context.
    pub correlation: crate::correlation::Correlation,
    /// Its exported trace span, when traces are on.
    pub span: Option<crate::traces::RequestSpan>,
    /// Counts this request in `x402_requests_in_flight` until it is dropped.
    _in_flight: crate::metrics::InFlight,
}

impl RequestCtx {
    /// Takes a parked body-metered payment back into `payment`, unless its deadline's timer
    /// took it (and settles it): `false` then. `true` when nothing was parked.
    pub fn unpark(&mut self) -> bool {
        let Some(w) = &self.watch else {
            return true;
        };
        match w.take() {
            Some(a) => {
                self.payment = Some(a);
                true
            }
            None => false,
        }
    }

    pub fn new(snap: Arc<Snapshot>, in_flight: crate::metrics::InFlight) -> Self {
        let upstream = snap.default_upstream;
        let started = Instant::now();
        RequestCtx {
            snap,
            rule: None,
            rewrite: None,
            decision: Decision::Unmatched,
            reason: None,
            started,
            upstream_started: None,
            upstream,
            payment: None,
            replayed: None,
            body_bytes: 0,
            body_in_flight: 0,
            response_started: None,
            delivery_deadline: None,
            watch: None,
            access: None,
            priced: None,
            failure: None,
            upstream_failure: None,
            correlation: crate::correlation::Correlation::default(),
            span: None,
            _in_flight: in_flight,
        }
    }

    /// Takes a routing result: the rule (its index returned), the canonical path and the
    /// rule's upstream.
    pub fn routed(&mut self, routed: super::request::Routed) -> Option<usize> {
        self.rule = routed.rule;
        self.rewrite = routed.rewrite;
        let i = routed.rule?;
        if let Some(rule) = self.snap.rules.get(i) {
            self.upstream = rule.upstream;
        }
        Some(i)
    }

    /// Whether the request was classified as a person in a browser.
    pub fn is_human(&self) -> bool {
        self.access
            .as_ref()
            .and_then(|a| a.audience.as_ref())
            .is_some_and(|a| *a == crate::access::audience::Audience::Human)
    }

    /// The price the request is charged: its audience's, else the rule's own.
    pub fn charged_price(&self) -> Option<Arc<crate::x402::challenge::Priced>> {
        self.priced.clone().or_else(|| {
            self.rule
                .and_then(|i| self.snap.rules.get(i))
                .and_then(|r| match &r.action {
                    crate::access::RuleAction::Pay(p) => Some(p.clone()),
                    _ => None,
                })
        })
    }

    /// The audience kind label, or `""` when the request was not classified.
    pub fn audience(&self) -> &'static str {
        self.access.as_ref().map_or("", |a| a.audience_label())
    }

    /// The id of the matched rule, or `-` when none matched.
    pub fn rule_id(&self) -> &str {
        self.rule
            .and_then(|i| self.snap.rules.get(i))
            .map_or("-", |r| r.id.as_str())
    }
}
