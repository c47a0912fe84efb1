//! The facilitator API listener (a service beside the admin listener): serves `POST /verify`, `POST /settle` and `GET /supported`
//! (x402-notes §3) from the built-in settler named by `[facilitator_api] settler`, so other x402
//! servers can use the gateway as their facilitator.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;
use serde_json::json;

use crate::facilitator::local::{LocalSettler, Settlers};
use crate::snapshot::Snapshot;

/// Largest request body accepted; beyond it the answer is 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The facilitator API app. The settler is looked up in the current snapshot on every request,
/// so a reload that changes `[facilitator_api] settler` or the settler's settings applies at once.
pub struct FacilitatorApi {
    pub config: Arc<ArcSwap<Snapshot>>,
    pub settlers: Arc<Settlers>,
    /// `/verify` and `/settle` calls per client address in the current second.
    pub calls: pingora_limits::rate::Rate,
}

impl FacilitatorApi {
    pub fn new(config: Arc<ArcSwap<Snapshot>>, settlers: Arc<Settlers>) -> Self {
        FacilitatorApi {
            config,
            settlers,
            calls: pingora_limits::rate::Rate::new(Duration::from_secs(1)),
        }
    }
}

fn respond(status: u16, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_response(status: u16, v: &impl Serialize) -> Response<Vec<u8>> {
    respond(status, serde_json::to_vec(v).unwrap_or_default())
}

fn error(status: u16, reason: &str) -> Response<Vec<u8>> {
    json_response(status, &json!({ "error": reason }))
}

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    Unreadable,
}

/// Reads the whole request body, refusing more than `limit` bytes.
async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    session.set_read_timeout(Some(BODY_READ_TIMEOUT));
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => return Err(BodyError::Unreadable),
        }
    }
}

impl FacilitatorApi {
    /// The settler serving the API under the current configuration, or why there is none.
    fn settler(&self) -> Result<Arc<LocalSettler>, &'static str> {
        let snap = self.config.load();
        let Some(name) = snap.facilitator_api_settler.as_deref() else {
            return Err("facilitator_api_disabled");
        };
        let Some(fac) = snap.facilitators.iter().find(|f| f.name == name) else {
            return Err("settler_not_configured");
        };
        self.settlers.get(fac).map_err(|e| {
            tracing::error!(facilitator = %name, error = %e, "cannot build the settler");
            "settler_unavailable"
        })
    }

    async fn handle(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let allow = match path.as_str() {
            "/verify" | "/settle" => "POST",
            "/supported" => "GET",
            _ => return error(404, "not_found"),
        };
        if method.as_str() != allow {
            let mut r = error(405, "method_not_allowed");
            if let Ok(v) = http::HeaderValue::from_str(allow) {
                r.headers_mut().insert(http::header::ALLOW, v);
            }
            return r;
        }
        let settler = match self.settler() {
            Ok(s) => s,
            Err(why) => return error(503, why),
        };
        if path == "/supported" {
            return json_response(200, &settler.supported());
        }
        let snap = self.config.load_full();
        if let Some(token) = &snap.facilitator_api_token
            && !token.is_bearer_of(&session.req_header().headers)
        {
            return error(401, "unauthorized");
        }
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(ip) = client
            && snap.facilitator_api_rate != 0
            && self.calls.observe(&ip, 1) > snap.facilitator_api_rate as isize
        {
            let mut r = error(429, "too_many_requests");
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            return r;
        }
        let body = match read_body(session, MAX_BODY_BYTES).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return error(413, "body_too_large"),
            Err(BodyError::Unreadable) => return error(400, "unreadable_body"),
        };
        if let Some(reason) = refusal(&snap, &body) {
            // The relayer pays gas only for real payments, in tokens this gateway knows, to
            // recipients this gateway serves.
            return if path == "/verify" {
                json_response(
                    400,
                    &json!({"isValid": false, "invalidReason": reason, "payer": ""}),
                )
            } else {
                json_response(
                    400,
                    &json!({"success": false, "errorReason": reason, "transaction": "", "network": "", "payer": ""}),
                )
            };
        }
        if path == "/verify" {
            let (status, v) = settler.verify(&body).await;
            tracing::debug!(status, valid = v.valid(), reason = ?v.invalid_reason, "facilitator api /verify");
            json_response(status, &v)
        } else {
            let (status, s) = settler.settle(&body).await;
            tracing::info!(status, success = s.succeeded(), reason = ?s.error_reason, transaction = %s.transaction, "facilitator api /settle");
            json_response(status, &s)
        }
    }
}

/// Why the API will not relay a `/verify` or `/settle` body, if it will not: an asset the
/// configuration does not declare (`asset_not_accepted`), a recipient that is no `payTo` of
/// this configuration (`recipient_not_accepted`), a zero-value authorization (`zero_value`), or
/// one paying its own signer (`self_transfer`). Malformed bodies are the settler's to refuse
/// with its own reasons.
fn refusal(snap: &Snapshot, body: &[u8]) -> Option<&'static str> {
    let v = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let req = &v["paymentRequirements"];
    if let (Some(network), Some(asset)) = (req["network"].as_str(), req["asset"].as_str()) {
        let declared = snap
            .registry
            .network(network)
            .is_some_and(|n| snap.registry.asset(&n.caip2, asset).is_some());
        if !declared {
            return Some("asset_not_accepted");
        }
    }
    let lower = |v: &serde_json::Value| v.as_str().map(str::to_ascii_lowercase);
    let known = |addr: Option<String>| addr.is_some_and(|a| snap.recipients.contains(&a));
    if req.get("payTo").is_some() && !known(lower(&req["payTo"])) {
        return Some("recipient_not_accepted");
    }
    let auth = &v["paymentPayload"]["payload"]["authorization"];
    if auth.is_object() {
        if auth.get("to").is_some() && !known(lower(&auth["to"])) {
            return Some("recipient_not_accepted");
        }
        let value = auth["value"].as_str().map(str::trim);
        if value.is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b == b'0')) {
            return Some("zero_value");
        }
        if let (Some(from), Some(to)) = (lower(&auth["from"]), lower(&auth["to"]))
            && from == to
        {
            return Some("self_transfer");
        }
    }
    None
}

#[async_trait]
impl ServeHttp for FacilitatorApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let r = self.handle(session).await;
        if !session.is_body_done() {
            // The body was not (fully) read: do not reuse the connection.
            session.set_keepalive(None);
        }
        r
    }
}
