//! A facilitator that approves everything at once, for `benches/load.sh`: `GET /supported`,
//! `POST /verify` (`isValid: true`) and `POST /settle` (`success: true` with a made-up
//! transaction hash), so that the paid path measures the gateway and not a chain. For
//! `batch-settlement` payloads `/verify` reports a channel holding plenty and nothing claimed,
//! and `/settle` counts the claimer's `claim` and `settle` calls, which `GET /stats` reports
//! (`{"settled", "claims", "sweeps"}`).
//!
//! `bench-facilitator --listen 127.0.0.1:8600 [--network eip155:84532]`
//!
//! Never point a real gateway at it: it accepts any payment without looking at it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark tool: a failed set-up step ends the run"
)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

struct State {
    supported: Bytes,
    network: String,
    settled: AtomicU64,
    claims: AtomicU64,
    sweeps: AtomicU64,
}

/// What the facilitator is asked, read from a `/verify` or `/settle` body.
struct Asked {
    /// The payer: an EIP-3009 authorization's `from`, or a channel's payer.
    payer: String,
    /// A `batch-settlement` payload's `type` (`deposit`, `voucher`, `claim`, ...).
    channel: Option<String>,
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn asked(body: &[u8]) -> Asked {
    let v = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
    let text = |p: &str| v.pointer(p).and_then(|f| f.as_str()).map(str::to_owned);
    let batch = text("/paymentRequirements/scheme").as_deref() == Some("batch-settlement");
    Asked {
        payer: text("/paymentPayload/payload/authorization/from")
            .or_else(|| text("/paymentPayload/payload/channelConfig/payer"))
            .unwrap_or_default(),
        channel: batch
            .then(|| text("/paymentPayload/payload/type"))
            .flatten(),
    }
}

/// A channel's state as a facilitator reports it: plenty in escrow, nothing claimed.
const CHANNEL_STATE: &str = r#"{"balance":"1000000000000000000000","totalClaimed":"0","withdrawRequestedAt":0,"refundNonce":"0"}"#;

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(json(StatusCode::BAD_REQUEST, "{}")),
    };
    let resp = match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/supported") => json(StatusCode::OK, state.supported.clone()),
        (&Method::GET, "/stats") => json(
            StatusCode::OK,
            format!(
                r#"{{"settled":{},"claims":{},"sweeps":{}}}"#,
                state.settled.load(Ordering::Relaxed),
                state.claims.load(Ordering::Relaxed),
                state.sweeps.load(Ordering::Relaxed)
            ),
        ),
        (&Method::POST, "/verify") => {
            let a = asked(&body);
            let extra = if a.channel.is_some() {
                format!(r#","extra":{CHANNEL_STATE}"#)
            } else {
                String::new()
            };
            json(
                StatusCode::OK,
                format!(r#"{{"isValid":true,"payer":"{}"{extra}}}"#, a.payer),
            )
        }
        (&Method::POST, "/settle") => {
            let a = asked(&body);
            match a.channel.as_deref() {
                Some("claim") => state.claims.fetch_add(1, Ordering::Relaxed),
                Some("settle") => state.sweeps.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            let extra = if a.channel.is_some() {
                format!(r#","amount":"0","extra":{{"channelState":{CHANNEL_STATE}}}"#)
            } else {
                String::new()
            };
            let n = state.settled.fetch_add(1, Ordering::Relaxed) + 1;
            json(
                StatusCode::OK,
                format!(
                    r#"{{"success":true,"transaction":"0x{n:064x}","network":"{}","payer":"{}"{extra}}}"#,
                    state.network, a.payer
                ),
            )
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#),
    };
    Ok(resp)
}

fn usage() -> ! {
    eprintln!("usage: bench-facilitator --listen ADDR [--network CAIP-2] [--v1-name NAME]");
    std::process::exit(2)
}

fn main() -> std::io::Result<()> {
    let (mut listen, mut network, mut v1) =
        (None, "eip155:84532".to_owned(), "base-sepolia".to_owned());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = Some(v),
            "--network" => network = v,
            "--v1-name" => v1 = v,
            _ => usage(),
        }
    }
    let Some(listen) = listen else { usage() };
    let supported = serde_json::json!({
        "kinds": [
            {"x402Version": 2, "scheme": "exact", "network": network},
            {"x402Version": 2, "scheme": "batch-settlement", "network": network},
            {"x402Version": 1, "scheme": "exact", "network": v1},
        ],
        "extensions": [],
        "signers": {},
    });
    let state = Arc::new(State {
        supported: Bytes::from(supported.to_string()),
        network,
        settled: AtomicU64::new(0),
        claims: AtomicU64::new(0),
        sweeps: AtomicU64::new(0),
    });
    // One thread: the gateway and the origin need the other cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(state.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
