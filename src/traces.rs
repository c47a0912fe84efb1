//! OpenTelemetry traces, when `[logging] otlp_endpoint` is set: one server span per request
//! (a child of the client's `traceparent` when it sent one) and one client span per
//! facilitator call under it, exported over OTLP/HTTP in batches. The origin and the
//! facilitators receive the gateway's span as their parent. Off, nothing here runs.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};

use crate::correlation::Correlation;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// A span being recorded (ended when dropped, or by [`end_request`]).
pub type RequestSpan = opentelemetry_sdk::trace::Span;

/// Starts exporting to `endpoint` (an OTLP/HTTP collector); the provider flushes and stops
/// when [`shutdown`] is called with it.
pub fn init(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_secs(1))
                .with_max_queue_size(8192)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    let _ = TRACER.set(provider.tracer("x402-gateway"));
    Ok(provider)
}

/// Flushes what is queued and stops the exporter.
pub fn shutdown(provider: &SdkTracerProvider) {
    if let Err(e) = provider.shutdown() {
        tracing::warn!(error = %e, "traces: shutdown");
    }
}

/// The trace context a correlation carries, as a parent.
fn parent_of(c: &Correlation) -> Context {
    let mut carrier = std::collections::HashMap::new();
    if let Some(t) = &c.traceparent {
        carrier.insert("traceparent".to_owned(), t.clone());
    }
    if let Some(s) = &c.tracestate {
        carrier.insert("tracestate".to_owned(), s.clone());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// Writes `cx`'s span as the correlation's trace context: what the next hop receives.
fn carry(c: &mut Correlation, cx: &Context) {
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    if let Some(t) = carrier.remove("traceparent") {
        c.traceparent = Some(t);
    }
    c.tracestate = carrier.remove("tracestate").filter(|s| !s.is_empty());
}

/// Starts the request's server span (when exporting) and makes it the parent the origin and
/// the facilitators see.
pub fn start_request(c: &mut Correlation, method: &str) -> Option<RequestSpan> {
    let tracer = TRACER.get()?;
    let parent = parent_of(c);
    let span = tracer
        .span_builder(format!("{method} request"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.to_owned()),
            KeyValue::new("x402.request_id", c.request_id.clone()),
        ])
        .start_with_context(tracer, &parent);
    let cx = parent.with_remote_span_context(span.span_context().clone());
    carry(c, &cx);
    Some(span)
}

/// What a request's span records when it ends.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub path: &'a str,
    pub status: u16,
    pub rule: &'a str,
    pub decision: &'a str,
    pub reason: &'a str,
    pub audience: &'a str,
}

/// Ends the request's span with what happened.
pub fn end_request(mut span: RequestSpan, o: Outcome<'_>) {
    span.set_attributes([
        KeyValue::new("url.path", o.path.to_owned()),
        KeyValue::new("http.response.status_code", i64::from(o.status)),
        KeyValue::new("x402.rule", o.rule.to_owned()),
        KeyValue::new("x402.decision", o.decision.to_owned()),
        KeyValue::new("x402.reason", o.reason.to_owned()),
        KeyValue::new("x402.audience", o.audience.to_owned()),
    ]);
    if o.status >= 500 || o.status == 0 {
        span.set_status(Status::error(format!("status {}", o.status)));
    }
    span.end();
}

/// A facilitator call's client span, child of the request's; the correlation returned is
/// what the facilitator receives (this span as its parent).
pub fn facilitator_call(
    c: &Correlation,
    operation: &'static str,
    facilitator: &str,
) -> (Option<RequestSpan>, Option<Correlation>) {
    let Some(tracer) = TRACER.get() else {
        return (None, None);
    };
    let parent = parent_of(c);
    let span = tracer
        .span_builder(format!("facilitator {operation}"))
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("x402.facilitator", facilitator.to_owned()),
            KeyValue::new("x402.operation", operation),
        ])
        .start_with_context(tracer, &parent);
    let mut next = c.clone();
    carry(
        &mut next,
        &parent.with_remote_span_context(span.span_context().clone()),
    );
    (Some(span), Some(next))
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}
