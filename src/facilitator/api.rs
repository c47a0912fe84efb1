//! The facilitator API listener: serves `POST /verify`, `POST /settle` and `GET /supported`
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

use super::local::{LocalSettler, Settlers};
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
        let body = match read_body(session, MAX_BODY_BYTES).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return error(413, "body_too_large"),
            Err(BodyError::Unreadable) => return error(400, "unreadable_body"),
        };
        if !asset_is_declared(&snap, &body) {
            // The relayer pays gas only for tokens this gateway knows.
            let reason = "asset_not_accepted";
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

/// Whether the requirements in a `/verify` or `/settle` body name a network and asset the
/// configuration declares (built-in USDC or an `[[assets]]` entry).
fn asset_is_declared(snap: &Snapshot, body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        // Malformed bodies are the settler's to refuse with its own reason.
        return true;
    };
    let req = &v["paymentRequirements"];
    let (Some(network), Some(asset)) = (req["network"].as_str(), req["asset"].as_str()) else {
        return true;
    };
    snap.registry
        .network(network)
        .is_some_and(|n| snap.registry.asset(&n.caip2, asset).is_some())
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
