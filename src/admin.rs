//! The admin listener (loopback by default): `/metrics`, `/healthz`, `/readyz`, `/config`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{Value, json};

use crate::metrics::Metrics;
use crate::payment::Payments;
use crate::snapshot::{RuleAction, Snapshot};

/// The admin HTTP app.
pub struct Admin {
    pub config: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub payments: Arc<Payments>,
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_response(status: StatusCode, v: &Value) -> Response<Vec<u8>> {
    respond(
        status,
        "application/json",
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )
}

/// Healthy peers per upstream.
pub fn upstream_health(snap: &Snapshot) -> Vec<(String, usize, usize)> {
    snap.upstreams
        .iter()
        .map(|u| {
            let backends = u.lb.backends().get_backend();
            let healthy = backends.iter().filter(|b| u.lb.backends().ready(b)).count();
            (u.name.clone(), healthy, backends.len())
        })
        .collect()
}

/// The readiness report and whether the gateway is ready.
pub fn readiness(snap: &Snapshot, payments: &Payments) -> (bool, Value) {
    let health = upstream_health(snap);
    let upstreams_ok = health.iter().all(|(_, healthy, _)| *healthy > 0);
    let unserved = payments.facilitators.supported.unserved(snap);
    let without = payments.facilitators.networks_without_facilitator(snap);
    let ready = upstreams_ok && without.is_empty();
    let report = json!({
        "ready": ready,
        "networks_without_healthy_facilitator": without,
        "generation": snap.generation,
        "upstreams": health.iter().map(|(n, h, t)| json!({"name": n, "healthy": h, "peers": t})).collect::<Vec<_>>(),
        "unserved_payment_routes": unserved,
    });
    (ready, report)
}

/// The configuration view: what is loaded, with secrets redacted.
pub fn config_view(snap: &Snapshot) -> Value {
    let rules: Vec<Value> = snap
        .rules
        .iter()
        .map(|r| {
            let mut v = json!({
                "id": r.id,
                "origin": r.origin,
                "host": r.host,
                "path": r.path,
                "methods": r.methods.names(),
                "action": r.action.name(),
                "upstream": snap.upstreams.get(r.upstream).map(|u| u.name.clone()),
                "settlement": r.settlement,
            });
            if let RuleAction::Pay(p) = &r.action {
                v["accepts"] = serde_json::to_value(&p.requirements_v2).unwrap_or(Value::Null);
            }
            v
        })
        .collect();
    json!({
        "generation": snap.generation,
        "content_hash": snap.content_hash,
        "loaded_at": humantime::format_rfc3339_seconds(snap.loaded_at).to_string(),
        "config_file": snap.sources.config.display().to_string(),
        "rule_files": snap.sources.rule_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "rules": rules,
        "upstreams": snap.upstreams.iter().map(|u| json!({"name": u.name, "peers": u.peers, "tls": u.tls, "host": u.host_rewrite})).collect::<Vec<_>>(),
        "facilitators": snap.facilitators.iter().map(|f| json!({
            "name": f.name,
            "url": f.url,
            "networks": f.networks,
            "timeout_ms": f.timeout.as_millis() as u64,
            "headers": f.headers.iter().map(|(k, _)| (k.clone(), Value::String("<redacted>".into()))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let snap = self.config.load_full();
        match path.as_str() {
            "/metrics" => {
                for (name, healthy, _) in upstream_health(&snap) {
                    self.metrics
                        .upstream_healthy_peers
                        .with_label_values(&[name.as_str()])
                        .set(healthy as i64);
                }
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            "/healthz" => respond(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let (ready, report) = readiness(&snap, &self.payments);
                json_response(
                    if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    },
                    &report,
                )
            }
            "/config" => json_response(StatusCode::OK, &config_view(&snap)),
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }
}
