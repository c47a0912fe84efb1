//! Every metric the gateway exports, defined once, on its own registry. Labels are low
//! cardinality: rule ids come from configuration, statuses are classes.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Requests by rule, decision and status class.
    pub requests: IntCounterVec,
    /// Time from the request head to the end of its logging, by rule and decision.
    pub request_duration: HistogramVec,
    /// Time from the upstream connection to its response header, by upstream.
    pub upstream_latency: HistogramVec,
    /// Requests the gateway answered itself, by reason code.
    pub local_replies: IntCounterVec,
    pub config_generation: IntGauge,
    /// 1 when the last reload attempt applied (or found nothing changed), 0 when it failed.
    pub reload_success: IntGauge,
    /// Unix time of the last configuration load that applied (start-up included).
    pub reload_timestamp: IntGauge,
    /// Requests being handled now.
    pub in_flight: IntGauge,
    /// Reloads by outcome (`ok`, `invalid`, `refused`).
    pub reloads: IntCounterVec,
    /// Healthy peers per upstream.
    pub upstream_healthy_peers: IntGaugeVec,
    /// Payments by outcome (`settled`, `rejected`, `settle_failed`, ...) and reason.
    pub payments: IntCounterVec,
    /// Settled revenue in atomic units, by network, asset, rule and audience.
    pub revenue: IntCounterVec,
    /// Settled revenue in US dollars (assets declared worth one dollar a unit), by rule and
    /// audience.
    pub revenue_usd: CounterVec,
    /// Facilitator call latency by facilitator and operation.
    pub facilitator_latency: HistogramVec,
    /// Facilitator call errors by facilitator, operation and kind.
    pub facilitator_errors: IntCounterVec,
    /// Time the gateway itself spends on a paid request outside facilitator calls.
    pub payment_overhead: Histogram,
    /// Paid requests not delivered after their settlement (origin failed after a `before`
    /// settlement, or broke off its body after an `after` one).
    pub failed_deliveries: IntCounter,
    /// Receipts ledger lines that could not be written.
    pub ledger_errors: IntCounter,
    /// Payment channels (`batch-settlement`) with a record, by network.
    pub channels: IntGaugeVec,
    /// Value the channels' latest vouchers entitle the receiver to that is not claimed on
    /// chain yet, in atomic units, by network and asset.
    pub channel_unclaimed: IntGaugeVec,
    /// Claim and sweep transactions by operation (`claim`, `settle`) and outcome.
    pub channel_claims: IntCounterVec,
    /// Time from a claim round's start to its claim transaction's answer.
    pub channel_claim_seconds: Histogram,
    /// Connections closed because no complete request head arrived in time.
    pub header_timeouts: IntCounter,
    /// Calls that moved on to the next facilitator, by operation.
    pub facilitator_failovers: IntCounterVec,
    /// Facilitators taken out of rotation.
    pub facilitator_ejections: IntCounterVec,
    /// 1 when a facilitator is in rotation, 0 when ejected.
    pub facilitator_healthy: IntGaugeVec,
    /// Settlements whose outcome was settled by reading the chain, by result.
    pub settlements_resolved: IntCounterVec,
    /// Settlements a facilitator reported that the chain did not confirm, by facilitator and
    /// why (`receipt_missing`, `receipt_mismatch`, `used_elsewhere`): alert on any.
    pub settlements_unconfirmed: IntCounterVec,
    /// Classified requests (priced or audience-priced rules) by audience kind and purpose.
    pub audience_requests: IntCounterVec,
    /// Requests whose User-Agent claimed a signing crawler without its signature, by crawler.
    pub spoofed_crawlers: IntCounterVec,
    /// Web Bot Auth verifications by outcome (`verified` or a failure reason).
    pub web_bot_auth: IntCounterVec,
    /// Passes by outcome (`issued`, `accepted`, or a refusal reason).
    pub passes: IntCounterVec,
    /// Shadow-mode decisions by rule and decision.
    pub shadow_decisions: IntCounterVec,
    /// What shadow-mode rules would have charged, in atomic units.
    pub shadow_amount: IntCounterVec,
    /// State store command latency by operation.
    pub state_seconds: HistogramVec,
    /// State store commands that failed or timed out, by operation.
    pub state_errors: IntCounterVec,
    /// 1 while the shared state store answers.
    pub state_up: IntGauge,
    /// Times the shared state store answered again after failing.
    pub state_reconnects: IntCounter,
}

#[allow(
    clippy::panic,
    reason = "start-up only: fixed metric names and labels register once or the build is broken"
)]
fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

/// Counts a request in flight for as long as it lives.
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[allow(
    clippy::panic,
    reason = "start-up only: fixed metric names and labels register once or the build is broken"
)]
fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

#[allow(
    clippy::panic,
    reason = "start-up only: fixed metric names and labels register once or the build is broken"
)]
fn histogram(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    reg.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

impl Metrics {
    /// Creates and registers every metric. Names are fixed, so this cannot fail at run time.
    #[allow(
        clippy::panic,
        reason = "start-up only: fixed metric names and labels register once or the build is broken"
    )]
    pub fn new() -> Self {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let requests = counter(
            &registry,
            "x402_requests_total",
            "Requests by rule, decision and status class",
            &["rule", "decision", "status"],
        );
        let request_duration = histogram(
            &registry,
            "x402_request_duration_seconds",
            "Request duration from its head to its end, by rule and decision",
            &["rule", "decision"],
            latency_buckets.clone(),
        );
        let upstream_latency = histogram(
            &registry,
            "x402_upstream_response_seconds",
            "Upstream time to response header",
            &["upstream"],
            latency_buckets.clone(),
        );
        let local_replies = counter(
            &registry,
            "x402_local_replies_total",
            "Responses the gateway wrote itself, by reason",
            &["reason"],
        );
        let config_generation = IntGauge::new(
            "x402_config_generation",
            "Generation of the configuration in use",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(config_generation.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let reloads = counter(
            &registry,
            "x402_config_reloads_total",
            "Configuration reloads by outcome",
            &["outcome"],
        );
        let upstream_healthy_peers = IntGaugeVec::new(
            Opts::new("x402_upstream_healthy_peers", "Healthy peers per upstream"),
            &["upstream"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(upstream_healthy_peers.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let payments = counter(
            &registry,
            "x402_payments_total",
            "Payments by outcome and reason",
            &["outcome", "reason"],
        );
        let revenue = counter(
            &registry,
            "x402_revenue_atomic_total",
            "Settled amounts in atomic units",
            &["network", "asset", "rule", "audience"],
        );
        let revenue_usd = CounterVec::new(
            Opts::new(
                "x402_revenue_usd_total",
                "Settled amounts in US dollars, for assets worth one dollar a unit",
            ),
            &["rule", "audience"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(revenue_usd.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let facilitator_latency = histogram(
            &registry,
            "x402_facilitator_seconds",
            "Facilitator call latency",
            &["facilitator", "operation"],
            latency_buckets.clone(),
        );
        let facilitator_errors = counter(
            &registry,
            "x402_facilitator_errors_total",
            "Facilitator call errors",
            &["facilitator", "operation", "kind"],
        );
        let payment_overhead = Histogram::with_opts(
            HistogramOpts::new(
                "x402_payment_gateway_seconds",
                "Gateway time on a paid request outside facilitator calls",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
            ]),
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(payment_overhead.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let channels = IntGaugeVec::new(
            Opts::new(
                "x402_channels",
                "Payment channels with a record, by network",
            ),
            &["network"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(channels.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let channel_unclaimed = IntGaugeVec::new(
            Opts::new(
                "x402_channel_unclaimed_atomic",
                "Voucher value not claimed on chain yet, in atomic units",
            ),
            &["network", "asset"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(channel_unclaimed.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let channel_claims = counter(
            &registry,
            "x402_channel_claims_total",
            "Channel claim and sweep transactions by operation and outcome",
            &["operation", "outcome"],
        );
        let channel_claim_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "x402_channel_claim_seconds",
                "Time a channel claim transaction took to answer",
            )
            .buckets(latency_buckets),
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(channel_claim_seconds.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let failed_deliveries = IntCounter::new(
            "x402_failed_deliveries_total",
            "Paid requests not delivered after their settlement",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(failed_deliveries.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let ledger_errors = IntCounter::new(
            "x402_ledger_errors_total",
            "Receipts ledger lines that could not be written",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(ledger_errors.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let header_timeouts = IntCounter::new(
            "x402_header_timeouts_total",
            "Connections closed because no complete request head arrived in time",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(header_timeouts.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let facilitator_failovers = counter(
            &registry,
            "x402_facilitator_failovers_total",
            "Calls moved on to the next facilitator",
            &["operation"],
        );
        let facilitator_ejections = counter(
            &registry,
            "x402_facilitator_ejections_total",
            "Facilitators taken out of rotation",
            &["facilitator"],
        );
        let facilitator_healthy = IntGaugeVec::new(
            Opts::new("x402_facilitator_healthy", "1 when in rotation"),
            &["facilitator"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(facilitator_healthy.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let settlements_resolved = counter(
            &registry,
            "x402_settlements_resolved_total",
            "Unknown settlement outcomes resolved from the chain",
            &["result"],
        );
        let settlements_unconfirmed = counter(
            &registry,
            "x402_settlements_unconfirmed_total",
            "Settlements a facilitator reported that the chain did not confirm",
            &["facilitator", "why"],
        );
        let audience_requests = counter(
            &registry,
            "x402_audience_requests_total",
            "Classified requests by audience kind and purpose",
            &["audience", "purpose"],
        );
        let spoofed_crawlers = counter(
            &registry,
            "x402_spoofed_crawlers_total",
            "User agents claiming a signing crawler without its signature",
            &["crawler"],
        );
        let web_bot_auth = counter(
            &registry,
            "x402_web_bot_auth_total",
            "Web Bot Auth verifications by outcome",
            &["outcome"],
        );
        let passes = counter(
            &registry,
            "x402_passes_total",
            "Passes issued, accepted and refused",
            &["outcome"],
        );
        let shadow_decisions = counter(
            &registry,
            "x402_shadow_decisions_total",
            "Decisions of shadow-mode rules (forwarded without charging)",
            &["rule", "decision"],
        );
        let shadow_amount = counter(
            &registry,
            "x402_shadow_amount_atomic_total",
            "Atomic units shadow-mode rules would have charged",
            &["rule", "network", "asset"],
        );
        let state_seconds = histogram(
            &registry,
            "x402_state_seconds",
            "State store command latency by operation",
            &["op"],
            vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ],
        );
        let state_errors = counter(
            &registry,
            "x402_state_errors_total",
            "State store commands that failed or timed out, by operation",
            &["op"],
        );
        let state_up = IntGauge::new(
            "x402_state_up",
            "1 while the state store answers (always 1 for the memory backend)",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(state_up.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let reload_success = gauge(
            &registry,
            "x402_config_last_reload_success",
            "1 when the last reload attempt applied or found nothing changed, 0 when it failed",
        );
        reload_success.set(1);
        let reload_timestamp = gauge(
            &registry,
            "x402_config_last_reload_success_timestamp_seconds",
            "Unix time of the last configuration load that applied (start-up included)",
        );
        let in_flight = gauge(
            &registry,
            "x402_requests_in_flight",
            "Requests being handled now",
        );
        let build_info = IntGaugeVec::new(
            Opts::new(
                "x402_build_info",
                "The running build: always 1, labelled with its version",
            ),
            &["version"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(build_info.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let state_reconnects = IntCounter::new(
            "x402_state_reconnects_total",
            "Times the shared state store answered again after failing",
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        registry
            .register(Box::new(state_reconnects.clone()))
            .unwrap_or_else(|e| panic!("metric: {e}"));
        Metrics {
            reload_success,
            reload_timestamp,
            in_flight,
            state_seconds,
            state_errors,
            state_up,
            state_reconnects,
            registry,
            audience_requests,
            spoofed_crawlers,
            web_bot_auth,
            passes,
            shadow_decisions,
            shadow_amount,
            facilitator_failovers,
            facilitator_ejections,
            facilitator_healthy,
            settlements_resolved,
            settlements_unconfirmed,
            requests,
            request_duration,
            upstream_latency,
            local_replies,
            config_generation,
            reloads,
            upstream_healthy_peers,
            payments,
            revenue,
            revenue_usd,
            facilitator_latency,
            facilitator_errors,
            payment_overhead,
            failed_deliveries,
            ledger_errors,
            header_timeouts,
            channels,
            channel_unclaimed,
            channel_claims,
            channel_claim_seconds,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The label for a status code: `2xx` … `5xx`, or `none` when nothing was sent.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}
