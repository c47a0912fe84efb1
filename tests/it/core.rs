//! Gateway core: proxying, routing, 402 challenges, path safety, reload, ops surface.
//!
//! Every test starts its own gateway (one worker thread) in front of its own demo origin, on
//! ports the OS picks, and synchronizes by polling. The helpers below build configurations and
//! send requests that reqwest cannot (raw TCP).

mod challenge;
mod cli;
mod ops;
mod pathsafety;
mod reload;
mod routing;
mod streaming;
mod upstream;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// The demo site: a free home page and public folder, a priced GET endpoint, a blocked area.
pub const SITE_RULES: &str = r#"
[[rule]]
id = "home"
path = "/"
action = "free"

[[rule]]
id = "public"
prefix = "/public/"
action = "free"

[[rule]]
id = "weather"
path = "/api/weather"
methods = ["GET"]
price = "$0.01"
description = "Weather"
mime_type = "application/json"

[[rule]]
id = "admin"
prefix = "/admin"
action = "block"
"#;

/// Free and blocked rules only: with nothing priced, readiness depends on upstreams alone.
pub const FREE_RULES: &str = r#"
[[rule]]
id = "public"
prefix = "/"
action = "free"

[[rule]]
id = "admin"
prefix = "/admin"
action = "block"
"#;

/// Base Sepolia USDC, the asset `$` prices on `base-sepolia` are paid in.
pub const BASE_SEPOLIA_USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

/// A gateway.toml for the core tests: one worker thread, listeners on port 0, one upstream
/// `origin` (peers as given), payment on base-sepolia, fast reload debounce.
#[derive(Debug, Clone)]
pub struct Cfg {
    pub peers: Vec<String>,
    pub grace_period_seconds: u64,
    pub read_timeout_ms: u64,
    /// Extra lines at the end of `[upstreams.origin]` (may open sub-tables).
    pub upstream: String,
    /// Extra lines in `[reload]`.
    pub reload: String,
    /// Appended at the end (more sections).
    pub extra: String,
}

impl Cfg {
    pub fn new(origin: &str) -> Cfg {
        Cfg {
            peers: vec![origin.to_owned()],
            grace_period_seconds: 0,
            read_timeout_ms: 5000,
            upstream: String::new(),
            reload: String::new(),
            extra: String::new(),
        }
    }

    pub fn peers(mut self, peers: &[&str]) -> Cfg {
        self.peers = peers.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    pub fn grace(mut self, seconds: u64) -> Cfg {
        self.grace_period_seconds = seconds;
        self
    }

    pub fn read_timeout_ms(mut self, ms: u64) -> Cfg {
        self.read_timeout_ms = ms;
        self
    }

    pub fn upstream(mut self, lines: &str) -> Cfg {
        self.upstream = lines.to_owned();
        self
    }

    pub fn reload(mut self, lines: &str) -> Cfg {
        self.reload = lines.to_owned();
        self
    }

    pub fn extra(mut self, text: &str) -> Cfg {
        self.extra = text.to_owned();
        self
    }

    pub fn render(&self) -> String {
        let peers = self
            .peers
            .iter()
            .map(|p| format!("{p:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"[server]
listen = ["127.0.0.1:0"]
threads = 1
grace_period_seconds = {grace}
graceful_shutdown_timeout_seconds = 2

[admin]
listen = "127.0.0.1:0"

[upstreams.origin]
peers = [{peers}]
connect_timeout_ms = 1000
read_timeout_ms = {read}
{upstream}

[payment]
pay_to = "{PAY_TO}"
networks = ["base-sepolia"]

[reload]
debounce_ms = 50
{reload}

[logging]
level = "info"

[ledger]
path = ""
{extra}
"#,
            grace = self.grace_period_seconds,
            read = self.read_timeout_ms,
            upstream = self.upstream,
            reload = self.reload,
            extra = self.extra,
        )
    }

    pub fn start(&self, rules: &[(&str, &str)]) -> Gateway {
        Gateway::start(&self.render(), rules)
    }
}

/// An address nothing listens on (bound by the OS, then released).
pub fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr").to_string();
    drop(l);
    a
}

/// What one request got back.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The decoded `PAYMENT-REQUIRED` header.
    pub fn payment_required(&self) -> Value {
        decode_header(
            self.header("payment-required")
                .unwrap_or_else(|| panic!("no PAYMENT-REQUIRED header on {self:?}")),
        )
    }

    /// The amount of the first accepted offer, for a 402; `None` otherwise.
    pub fn price(&self) -> Option<String> {
        if self.status != 402 {
            return None;
        }
        self.payment_required()["accepts"][0]["amount"]
            .as_str()
            .map(str::to_owned)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request with optional headers and reads the whole answer.
pub async fn send(c: &reqwest::Client, method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = c.request(method, url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {url}: {e:?}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.expect("body");
    Got {
        status,
        headers,
        body,
    }
}

pub async fn get(c: &reqwest::Client, url: &str) -> Got {
    send(c, "GET", url, &[]).await
}

/// `x402-gateway ARGS…` to completion: exit code, stdout, stderr.
pub fn gateway_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(GATEWAY_BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("run x402-gateway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `line:col` (1-based, columns in characters) where `needle` first starts in `text`.
pub fn loc(text: &str, needle: &str) -> String {
    let off = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    format!("{line}:{col}")
}

/// Polls an async condition until it holds, or panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw HTTP/1.1 exchange over one connection: send bytes, read one response (head and, by
/// Content-Length or chunked framing, body). `None` when the server closed without answering.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// One raw response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl RawConn {
    pub fn connect(addr: &str) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads more bytes into the buffer; false at end of stream or on error.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads exactly `n` bytes past what was already consumed.
    pub fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "connection ended before {n} bytes");
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one response. `head_request`: the response to a HEAD has no body.
    pub fn response(&mut self, head_request: bool) -> Option<RawResponse> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 101 || status == 204 || status == 304 {
            return Some(resp);
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            resp.body = self.chunked_body();
        } else if let Some(n) = resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            resp.body = self.read_exact_bytes(n);
        } else {
            while self.fill() {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return l;
            }
            assert!(self.fill(), "connection ended inside a chunked body");
        }
    }

    fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            if size == 0 {
                // trailers until the empty line
                while !self.line().is_empty() {}
                return body;
            }
            body.extend(self.read_exact_bytes(size));
            let crlf = self.read_exact_bytes(2);
            assert_eq!(crlf, b"\r\n", "chunk not followed by CRLF");
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection; `None` when the server closed without answering.
pub fn raw_once(addr: &str, request: &[u8]) -> Option<RawResponse> {
    let mut c = RawConn::connect(addr);
    c.send(request);
    let head = request.starts_with(b"HEAD ");
    c.response(head)
}

/// The generated body of the demo origin's `/bytes/N`.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 31 + 7) % 251) as u8)
        .collect()
}
