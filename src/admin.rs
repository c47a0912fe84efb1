//! The admin listener (loopback by default): `/metrics`, `/healthz`, `/readyz`, `/config`,
//! `/revenue` (the revenue page), and `POST /passes/revoke`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{Value, json};

use crate::access::Access;
use crate::access::RuleAction;
use crate::access::pass;
use crate::metrics::Metrics;
use crate::payment::Payments;
use crate::snapshot::Snapshot;

/// The admin HTTP app.
pub struct Admin {
    pub config: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub payments: Arc<Payments>,
    pub access: Arc<Access>,
}

/// Largest `POST /passes/revoke` body.
const MAX_REVOKE_BODY: usize = 16 * 1024;

/// `POST /passes/revoke` with `{"id": "…"}`, `{"ids": […]}` or `{"token": "x402p1.…"}`: the
/// passes are refused from now on (in this process; list them under `[passes] revoked` to keep
/// them refused across restarts).
pub async fn revoke(snap: &Snapshot, access: &Access, body: &[u8]) -> (StatusCode, Value) {
    let bad = |m: &str| {
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "message": m}),
        )
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return bad("expected JSON: {\"id\": \"…\"} or {\"token\": \"…\"}");
    };
    let mut ids: Vec<String> = Vec::new();
    if let Some(id) = v.get("id").and_then(Value::as_str) {
        ids.push(id.to_owned());
    }
    if let Some(list) = v.get("ids").and_then(Value::as_array) {
        ids.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    if let Some(token) = v.get("token").and_then(Value::as_str) {
        let Some(keys) = &snap.passes else {
            return bad("no [passes] configured");
        };
        match pass::verify(keys, token.trim(), pass::unix_now()) {
            Ok(c) => ids.push(c.id),
            Err(pass::PassError::Expired) => {
                return (
                    StatusCode::OK,
                    json!({"revoked": [], "note": "already expired"}),
                );
            }
            Err(e) => return bad(&format!("not a pass of this gateway: {}", e.reason())),
        }
    }
    ids.retain(|i| !i.is_empty() && i.len() <= 64);
    if ids.is_empty() {
        return bad("give `id`, `ids` or `token`");
    }
    for id in &ids {
        if let Err(e) = access.revoke(id).await {
            tracing::error!(pass = %id, error = %e, "cannot revoke the pass");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "state_unavailable", "message": e.to_string()}),
            );
        }
        tracing::info!(pass = %id, "pass revoked");
    }
    (StatusCode::OK, json!({"revoked": ids}))
}

/// Probes (`/healthz`, `/readyz`) are always open; everything else needs the admin token when
/// one is configured.
pub fn authorized(snap: &Snapshot, path: &str, headers: &http::HeaderMap) -> bool {
    match &snap.admin_token {
        None => true,
        Some(_) if path == "/healthz" || path == "/readyz" => true,
        Some(token) => token.is_bearer_of(headers),
    }
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

/// The readiness report and whether the gateway is ready. `store` is how the state store
/// answered a ping just now.
pub fn readiness(
    snap: &Snapshot,
    payments: &Payments,
    store: Result<(), crate::state::StateError>,
) -> (bool, Value) {
    let health = upstream_health(snap);
    let upstreams_ok = health.iter().all(|(_, healthy, _)| *healthy > 0);
    let unserved = payments
        .facilitators
        .supported
        .unserved(&snap.facilitators, snap.priced_offers());
    let without = payments
        .facilitators
        .networks_without_facilitator(&snap.facilitators, snap.priced_offers());
    let ledger = payments.ledger().health(&snap.ledger);
    let store_ok = store.is_ok();
    // Outages that only take priced routes down (they answer 503 on their own, free routes
    // keep flowing) make the replica degraded, not unready, unless readiness is strict.
    let mut degraded = Vec::new();
    if !without.is_empty() {
        degraded.push("facilitators");
    }
    if !store_ok {
        degraded.push("state");
    }
    let claimer = payments.claimer_status();
    if claimer
        .as_ref()
        .is_some_and(|c| c["failures"].as_u64().unwrap_or(0) > 0)
    {
        // Claims failing: vouchers stay unclaimed and a payer's timed withdrawal may win.
        degraded.push("channel_claimer");
    }
    let ready = upstreams_ok && ledger.ok && (degraded.is_empty() || !snap.strict_readiness);
    let report = json!({
        "ready": ready,
        "degraded": degraded,
        "strict": snap.strict_readiness,
        "ledger": ledger,
        "state": {
            "backend": payments.state().backend(),
            "ok": store_ok,
            "error": store.err().map(|e| e.to_string()),
        },
        "networks_without_healthy_facilitator": without,
        "generation": snap.generation,
        "upstreams": health.iter().map(|(n, h, t)| json!({"name": n, "healthy": h, "peers": t})).collect::<Vec<_>>(),
        "unserved_payment_routes": unserved,
        // The addresses each facilitator says it settles from; with `signers_complete`, a
        // transaction found on chain from none of them is not that facilitator's.
        "facilitator_signers": snap.facilitators.iter().map(|f| (
            f.name.clone(),
            json!({
                "complete": f.signers_complete,
                "listed": payments.facilitators.supported.signers_view(f),
            }),
        )).collect::<serde_json::Map<_, _>>(),
        "channel_claimer": claimer,
    });
    (ready, report)
}

/// A price, `free` or `block`, for `/config`.
fn action_view(a: &RuleAction) -> Value {
    match a {
        RuleAction::Pay(p) => json!({
            "usd": p.usd.map(|u| u.normalize().to_string()),
            "accepts": p.requirements_v2,
        }),
        other => json!(other.name()),
    }
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
                "settlement": r.payment.settlement,
            });
            if let RuleAction::Pay(p) = &r.action {
                v["accepts"] = serde_json::to_value(&p.requirements_v2).unwrap_or(Value::Null);
            }
            if let Some(a) = &r.access.audiences {
                let name = |x: &Option<RuleAction>| x.as_ref().map(action_view);
                v["audiences"] = json!({
                    "human": name(&a.human),
                    "training": name(&a.training),
                    "search": name(&a.search),
                    "user": name(&a.user),
                    "agent": name(&a.agent),
                    "verified": name(&a.verified),
                    "operators": a.operators.iter().map(|(o, x)| (o.clone(), action_view(x))).collect::<serde_json::Map<_, _>>(),
                });
            }
            if let Some(p) = &r.access.pass {
                v["pass"] = json!({
                    "ttl_seconds": p.ttl.as_secs(),
                    "scope": p.scope,
                    "prefix": p.prefix,
                    "methods": p.methods.names(),
                    "max_requests": p.max_requests,
                });
            }
            if r.access.shadow {
                v["mode"] = json!("shadow");
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
        "crawlers": snap.crawlers.crawlers.iter().map(|c| json!({
            "name": c.name,
            "operator": c.operator,
            "purpose": c.purpose,
            "user_agent": c.user_agent,
            "signature_agent": c.signature_agent,
        })).collect::<Vec<_>>(),
        "web_bot_auth": {
            "agents": snap.web_bot_auth.agents.iter().map(|a| json!({
                "origin": &*a.origin,
                "operator": &*a.operator,
                "purpose": a.purpose,
                "directory": a.directory,
            })).collect::<Vec<_>>(),
        },
        "passes": snap.passes.as_ref().map(|k| json!({
            "algorithm": k.algorithm,
            "keys": k.kids(),
            "signing_key": k.signing_kid,
            "cookie": k.cookie,
            "revoked": k.revoked.len(),
        })),
        "paywall_template": snap.paywall.source,
        "paywall_wallet": snap.wallet_paywall.as_ref().map(|w| w.source.clone()),
        "state": snap.startup.state.public(),
        "channels": {
            "claim_interval_seconds": snap.channels.claim_interval.as_secs(),
            "claim_threshold": snap.channels.claim_threshold.to_string(),
            "claims_per_transaction": snap.channels.max_claims,
            // Who signs claims and refunds; never the key.
            "receiver_authorizers": snap.channels.authorizers.iter().map(|a| json!({
                "address": a.address.to_checksum(None),
                "signer": if a.key.is_some() { "gateway" } else { "facilitator" },
            })).collect::<Vec<_>>(),
        },
        // Networks with JSON-RPC endpoints; the URLs only as `scheme://host[:port]` (hosted
        // endpoints carry API keys in the path or query).
        "networks": snap.registry.networks().filter(|n| !n.rpc_urls.is_empty()).map(|n| json!({
            "id": n.caip2,
            "v1_name": n.v1_name,
            "chain_id": n.chain_id,
            "rpc_urls": n.rpc_urls.iter().map(|u| u.redacted_url()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "facilitators": snap.facilitators.iter().map(|f| json!({
            "name": f.name,
            "url": f.url,
            "networks": f.networks,
            "timeout_ms": f.timeout.as_millis() as u64,
            "headers": f.headers.iter().map(|(k, _)| (k.clone(), Value::String("<redacted>".into()))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Gathers what the revenue page shows: the ledger's last seven days (read off the request
/// thread), facilitator health and the shadow-mode counters.
async fn revenue_page(
    snap: &Arc<Snapshot>,
    payments: &Payments,
    metrics: &Metrics,
) -> crate::revenue_page::Page {
    use crate::payment::receipts::{self, Filter};
    use crate::revenue_page::{FacilitatorRow, Page, ShadowRow};

    let day = |ago: u64| {
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(ago * 86_400);
        let stamp = humantime::format_rfc3339(t).to_string();
        stamp.get(..10).unwrap_or(&stamp).to_owned()
    };
    let (today, week_from) = (day(0), day(6));
    let mut page = Page {
        today: today.clone(),
        week_from: week_from.clone(),
        no_ledger: snap.ledger.path.is_none(),
        ..Page::default()
    };
    if let Some(path) = snap.ledger.path.clone() {
        let filter = Filter {
            since: Some(week_from),
            ..Filter::default()
        };
        let read = tokio::task::spawn_blocking(move || receipts::read(&path, &filter))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        page.skipped = read.skipped.len();
        page.week_summary = receipts::summarize(&read.receipts, &snap.registry);
        page.today_summary = receipts::summarize(
            read.receipts.iter().filter(|r| r.time.starts_with(&today)),
            &snap.registry,
        );
        page.recent = read.receipts.iter().rev().take(20).cloned().collect();
    }
    page.facilitators = snap
        .facilitators
        .iter()
        .map(|f| FacilitatorRow {
            name: f.name.clone(),
            healthy: payments.facilitators.pool.health(f).healthy(),
        })
        .collect();
    for family in metrics.registry.gather() {
        if family.name() != "x402_shadow_amount_atomic_total" {
            continue;
        }
        for m in family.get_metric() {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let (network, asset) = (label("network"), label("asset"));
            let atomic = m.get_counter().get_value() as u64;
            let usd = snap
                .registry
                .asset(&network, &asset)
                .filter(|a| a.usd)
                .map(|a| crate::x402::networks::atomic_to_usd(atomic, a.decimals));
            page.shadow.push(ShadowRow {
                rule: label("rule"),
                network,
                asset,
                atomic,
                usd,
            });
        }
    }
    page
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let snap = self.config.load_full();
        if !authorized(&snap, &path, &session.req_header().headers) {
            let mut r = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "unauthorized", "message": "Authorization: Bearer <admin.auth_token> required"}),
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        if path == "/passes/revoke" {
            if session.req_header().method != http::Method::POST {
                return json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({"error": "method_not_allowed", "message": "use POST"}),
                );
            }
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = session.read_request_body().await {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_REVOKE_BODY {
                    return json_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &json!({"error": "body_too_large"}),
                    );
                }
            }
            let (status, v) = revoke(&snap, &self.access, &body).await;
            return json_response(status, &v);
        }
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
                let store = self.payments.state().ping().await;
                let (ready, report) = readiness(&snap, &self.payments, store);
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
            "/revenue" => {
                let page = revenue_page(&snap, &self.payments, &self.metrics).await;
                respond(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    crate::revenue_page::render(&page).into_bytes(),
                )
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }
}
