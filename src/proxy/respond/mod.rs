//! The one place that turns outcomes into responses: every answer the gateway writes itself
//! (402 challenges, 4xx refusals, 5xx failures, CORS preflights) with a stable snake_case
//! reason and the decision it is counted under, and the headers it adds to origin responses.

mod cache;
mod challenge;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};
use serde::Serialize;

use super::ctx::Decision;
use super::request::RequestError;
use crate::payment::Rejection;
pub use cache::{
    VARY_PRICED_PASSES_VALUE, VARY_PRICED_VALUE, keep_private, mark_paid_response,
    private_cache_control,
};
pub use challenge::{ALLOW_HEADERS, Challenge, EXPOSE_HEADERS, access_refused, cors, preflight};

/// A response the gateway writes itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// Stable reason code (also the metric label and the log field).
    pub reason: &'static str,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl Reply {
    /// A JSON error `{error, message}`.
    pub fn error(status: u16, reason: &'static str, message: &str) -> Self {
        let body = serde_json::to_vec(&ErrorBody {
            error: reason,
            message,
        })
        .unwrap_or_default();
        Reply {
            status,
            reason,
            content_type: "application/json",
            headers: vec![("cache-control", "no-store".into())],
            body: Bytes::from(body),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// A reply and the decision the request is counted under.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub reply: Reply,
    pub decision: Decision,
}

impl Answer {
    pub fn new(reply: Reply, decision: Decision) -> Self {
        Answer { reply, decision }
    }
}

/// The answer to a payment channel's cooperative refund that landed: the reference server's
/// acknowledgement, with the refund's receipt.
pub fn refunded(r: &crate::payment::Refunded, cors: Vec<(&'static str, String)>) -> Answer {
    let body = serde_json::json!({"message": "Refund acknowledged", "channelId": r.channel_id});
    let mut headers = vec![("cache-control", "no-store".to_owned())];
    headers.extend(r.receipt.iter().cloned());
    headers.extend(cors);
    Answer::new(
        Reply {
            status: 200,
            reason: "refund_acknowledged",
            content_type: "application/json",
            headers,
            body: Bytes::from(body.to_string()),
        },
        Decision::Refunded,
    )
}

/// Refusals of malformed requests (and of requests no rule or host takes).
pub fn request_refused(e: &RequestError) -> Answer {
    let (status, reason, decision) = match e {
        RequestError::Path(p) => (400, p.reason(), Decision::Local),
        RequestError::DuplicateHost => (400, "duplicate_host_header", Decision::Local),
        RequestError::HostMismatch => (400, "host_mismatch", Decision::Local),
        RequestError::MissingHost => (400, "missing_host", Decision::Local),
        RequestError::BadHost => (400, "bad_host", Decision::Local),
        RequestError::HeadersTooLarge => (431, "request_headers_too_large", Decision::Local),
        RequestError::BadMethod => (400, "invalid_method", Decision::Local),
        RequestError::UnknownHost => (421, "unknown_host", Decision::Local),
        RequestError::Unmatched => (403, "no_matching_rule", Decision::Local),
    };
    Answer::new(Reply::error(status, reason, &e.to_string()), decision)
}

/// The response header an origin states a metered charge in (the reference middleware's).
pub const SETTLEMENT_OVERRIDES: &str = "settlement-overrides";

/// A discovery document (`[discovery]`), generated from this generation's rules; `base` is
/// the scheme and host resources are named under.
pub fn document(
    snap: &crate::snapshot::Snapshot,
    doc: super::request::Document,
    base: &str,
) -> Answer {
    let value = match doc {
        super::request::Document::WellKnown => crate::proxy::documents::well_known(snap, base),
        super::request::Document::OpenApi => crate::proxy::documents::openapi(snap, base),
    };
    let body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    Answer::new(
        Reply {
            status: 200,
            reason: "discovery_document",
            content_type: "application/json",
            headers: vec![
                ("cache-control", "public, max-age=300".into()),
                ("access-control-allow-origin", "*".into()),
            ],
            body: Bytes::from(body),
        },
        Decision::Local,
    )
}

/// 403 for a `block` rule.
pub fn blocked(rule_id: &str) -> Answer {
    Answer::new(
        Reply::error(
            403,
            "blocked_by_rule",
            &format!("blocked by rule {rule_id}"),
        ),
        Decision::Blocked,
    )
}

/// Failures to reach the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("no healthy upstream peer")]
    NoHealthyPeer,
    #[error("upstream refused or failed the connection")]
    Unavailable,
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream sent an invalid response")]
    BadResponse,
}

impl From<UpstreamError> for Reply {
    fn from(e: UpstreamError) -> Self {
        let (status, reason) = match e {
            UpstreamError::NoHealthyPeer => (502, "no_healthy_upstream"),
            UpstreamError::Unavailable => (502, "upstream_unavailable"),
            UpstreamError::Timeout => (504, "upstream_timeout"),
            UpstreamError::BadResponse => (502, "upstream_bad_response"),
        };
        Reply::error(status, reason, &e.to_string())
    }
}

/// What a proxying error means for the client: an upstream failure (`picked`: the one
/// choosing a peer already found), a malformed request, or `None` when the client went away
/// and nothing can be written.
pub fn proxy_failure(e: &Error, picked: Option<UpstreamError>) -> Option<Reply> {
    if e.esource() == &ErrorSource::Upstream {
        let u = picked.unwrap_or(match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout => UpstreamError::Timeout,
            ErrorType::InvalidHTTPHeader => UpstreamError::BadResponse,
            _ => UpstreamError::Unavailable,
        });
        return Some(Reply::from(u));
    }
    match (e.esource(), e.etype()) {
        (
            ErrorSource::Downstream,
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError,
        ) => None,
        (ErrorSource::Downstream, _) => Some(Reply::error(400, "bad_request", "malformed request")),
        (_, ErrorType::HTTPStatus(code)) if (400..600).contains(code) => Some(Reply::error(
            *code,
            "upstream_unavailable",
            "request could not be proxied",
        )),
        _ => Some(Reply::error(
            502,
            "proxy_error",
            "request could not be proxied",
        )),
    }
}

/// The answer that replaces an origin response whose payment did not settle: the challenge
/// of the price charged (with the `success:false` receipt), or a bare 402 when the rule has
/// no price any more.
pub fn settlement_failed(challenge: Option<Challenge<'_>>, r: &Rejection) -> Answer {
    match challenge {
        Some(c) => c.refused(r, None),
        None => Answer::new(
            Reply::error(402, r.error.reason(), r.error.error_text()),
            Decision::Challenged,
        ),
    }
}

/// How a request whose proxying failed is counted: a paid request whose settlement failed
/// is `challenged` when its answer is the 402, any other failure `failed`.
pub fn failure_decision(settlement: Option<&Answer>) -> Decision {
    match settlement {
        Some(a) if a.decision == Decision::Challenged => Decision::Challenged,
        _ => Decision::Failed,
    }
}

/// Appends headers to an origin response (pass cookies must not replace the origin's own).
pub fn append_headers(
    resp: &mut ResponseHeader,
    headers: &[(&'static str, String)],
) -> pingora::Result<()> {
    for (k, v) in headers {
        resp.append_header(*k, v.as_str())?;
    }
    Ok(())
}

/// Writes a reply, with the request's id. HEAD requests get the headers only.
pub async fn send(session: &mut Session, reply: &Reply, request_id: &str) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 3))?;
    resp.insert_header("content-type", reply.content_type)?;
    resp.insert_header("content-length", reply.body.len().to_string())?;
    if !request_id.is_empty() {
        resp.insert_header(crate::correlation::REQUEST_ID, request_id)?;
    }
    for (k, v) in &reply.headers {
        resp.append_header(*k, v.as_str())?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    let no_body = head || reply.body.is_empty();
    session
        .write_response_header(Box::new(resp), no_body)
        .await?;
    if !no_body {
        session
            .write_response_body(Some(reply.body.clone()), true)
            .await?;
    }
    Ok(())
}
