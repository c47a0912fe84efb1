//! A small origin server for the demo, the tests and the load script. It echoes what it
//! received, streams bodies of any size (or slowly, chunk by chunk), answers any status,
//! stalls, resets mid-body and accepts WebSocket upgrades, so that the gateway can be checked
//! against a real process.
//! `--lenient` makes it resolve any request target the way lenient servers do (see
//! `lenient.rs`), for the bypass tests; `--tls-cert` and `--tls-key` serve it over TLS (the
//! echo then names the server name the client asked for).

mod lenient;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Body = BoxBody<Bytes, std::io::Error>;

struct State {
    name: String,
    requests: AtomicU64,
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn response(status: u16, content_type: &str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

/// Byte `i` of every generated body.
fn pattern_byte(i: u64) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

fn pattern_body(len: u64) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let chunks = stream::iter((0..len.div_ceil(CHUNK)).map(move |c| {
        let start = c * CHUNK;
        let end = (start + CHUNK).min(len);
        let data: Vec<u8> = (start..end).map(pattern_byte).collect();
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(data)))
    }));
    BodyExt::boxed(StreamBody::new(chunks))
}

/// The server name a TLS client asked for, on requests that came over `--tls-cert`.
#[derive(Debug, Clone)]
struct Sni(String);

/// A TLS acceptor for `--tls-cert` and `--tls-key` (PEM files), when both are given.
fn tls_acceptor() -> Option<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (arg("--tls-cert")?, arg("--tls-key")?);
    let chain: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&cert) {
        Ok(it) => it.filter_map(Result::ok).collect(),
        Err(e) => {
            eprintln!("demo-origin: cannot read {cert}: {e}");
            std::process::exit(2);
        }
    };
    let key = match PrivateKeyDer::from_pem_file(&key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("demo-origin: cannot read {key}: {e}");
            std::process::exit(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    match rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
    {
        Ok(c) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(c))),
        Err(e) => {
            eprintln!("demo-origin: bad certificate or key: {e}");
            std::process::exit(2);
        }
    }
}

fn echo_json(state: &State, req: &Request<Incoming>) -> String {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let mut v = serde_json::json!({
        "origin": state.name,
        "method": req.method().as_str(),
        "target": req.uri().to_string(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    if let Some(Sni(name)) = req.extensions().get::<Sni>() {
        v["tls_sni"] = serde_json::Value::String(name.clone());
    }
    v.to_string()
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/__origin/stats" {
        let n = state.requests.load(Ordering::Relaxed);
        return Ok(response(
            200,
            "application/json",
            full(format!("{{\"requests\":{n},\"name\":\"{}\"}}", state.name)),
        ));
    }
    if path == "/__origin/health" {
        return Ok(response(200, "text/plain", full("ok")));
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match parts.as_slice() {
        ["bytes", n] => match n.parse::<u64>() {
            Ok(n) => response(200, "application/octet-stream", pattern_body(n)),
            Err(_) => response(400, "text/plain", full("bad length")),
        },
        ["fixed", n] => match n.parse::<usize>() {
            Ok(n) => response(200, "application/octet-stream", full(vec![b'x'; n])),
            Err(_) => response(400, "text/plain", full("bad length")),
        },
        ["echo"] => {
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            let body = req.into_body().map_err(std::io::Error::other).boxed();
            response(200, &ct, body)
        }
        ["status", code] => {
            let code = code.parse().unwrap_or(500);
            response(
                code,
                "application/json",
                full(format!(
                    "{{\"status\":{code},\"origin\":\"{}\"}}",
                    state.name
                )),
            )
        }
        ["drip", chunks, ms] => match (chunks.parse::<u32>(), ms.parse::<u64>()) {
            // `chunks` KiB, one every `ms` milliseconds: a stream that takes its time.
            (Ok(chunks), Ok(ms)) => {
                let gap = Duration::from_millis(ms);
                let drips = stream::iter(0..chunks).then(move |i| async move {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    Ok(Frame::data(Bytes::from(vec![b'd'; 1024])))
                });
                response(
                    200,
                    "application/octet-stream",
                    BodyExt::boxed(StreamBody::new(drips)),
                )
            }
            _ => response(400, "text/plain", full("bad drip")),
        },
        ["slow", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
            response(200, "application/json", full(echo_json(&state, &req)))
        }
        ["reset"] => {
            // Promise 1 MiB, send 64 KiB, then fail the body: the connection is cut mid-body.
            let chunks = stream::iter(0..2).map(|i| {
                if i == 0 {
                    Ok(Frame::data(Bytes::from(vec![b'r'; 64 * 1024])))
                } else {
                    Err(std::io::Error::other("reset"))
                }
            });
            let mut r = response(
                200,
                "application/octet-stream",
                BodyExt::boxed(StreamBody::new(chunks)),
            );
            r.headers_mut().insert(
                "content-length",
                hyper::header::HeaderValue::from(1024 * 1024),
            );
            r
        }
        ["cacheable", ..] => {
            // What a CDN-fronted origin sends: store it everywhere, for a long time.
            let mut r = response(200, "application/json", full(echo_json(&state, &req)));
            let h = r.headers_mut();
            for (k, v) in [
                ("cache-control", "public, max-age=600, s-maxage=3600"),
                ("cdn-cache-control", "max-age=3600"),
                ("surrogate-control", "max-age=3600"),
                ("vary", "Accept-Encoding"),
            ] {
                h.insert(k, hyper::header::HeaderValue::from_static(v));
            }
            r
        }
        ["metered", amount] => {
            // A metered API: it states what the answer cost (the `upto` scheme's charge) in
            // the reference middleware's `Settlement-Overrides` header.
            let mut r = response(200, "application/json", full(echo_json(&state, &req)));
            let stated = serde_json::json!({ "amount": amount }).to_string();
            if let Ok(v) = hyper::header::HeaderValue::from_str(&stated) {
                r.headers_mut().insert("settlement-overrides", v);
            }
            r
        }
        ["ws"] => return Ok(upgrade(req)),
        _ => response(200, "application/json", full(echo_json(&state, &req))),
    };
    Ok(resp)
}

/// Accepts a WebSocket upgrade and echoes raw bytes on the upgraded connection.
fn upgrade(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
    else {
        return response(400, "text/plain", full("not an upgrade"));
    };
    let mut h = Sha1::new();
    h.update(&key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(&mut req).await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut r = response(101, "text/plain", full(Bytes::new()));
    r.headers_mut().remove("content-type");
    let h = r.headers_mut();
    h.insert(
        "upgrade",
        hyper::header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        "connection",
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = accept.parse() {
        h.insert("sec-websocket-accept", v);
    }
    r
}

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

#[tokio::main]
async fn main() {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:8080".into());
    let name = arg("--name").unwrap_or_else(|| "demo".into());
    let ready = arg("--ready-file").map(PathBuf::from);
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo-origin: bad --listen {listen}: {e}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-origin: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let local = listener
        .local_addr()
        .map_or(listen.clone(), |a| a.to_string());
    println!("demo-origin listening on {local}");
    if let Some(path) = ready {
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, &local)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .is_err()
        {
            eprintln!("demo-origin: cannot write ready file");
        }
    }
    if std::env::args().any(|a| a == "--lenient") {
        lenient::run(listener, name).await;
        return;
    }
    let state = Arc::new(State {
        name,
        requests: AtomicU64::new(0),
    });
    let tls = tls_acceptor();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        if let Some(acceptor) = tls.clone() {
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = stream.get_ref().1.server_name().map(str::to_owned);
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    if let Some(name) = &sni {
                        req.extensions_mut().insert(Sni(name.clone()));
                    }
                    handle(state.clone(), req)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
            continue;
        }
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}
