//! Misbehaving TCP servers for fault tests: an origin whose behaviour is chosen by the request
//! path (reset mid-body, headers trickled byte by byte, or a body sink that counts what it
//! received), and a server that accepts connections and never answers (a stalled RPC node).
//! Each runs on its own thread and runtime, so a test blocking its own thread cannot stall it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the servers saw.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Request heads read completely.
    pub requests: AtomicU64,
    /// Request body bytes read.
    pub body_bytes: AtomicU64,
}

impl Counters {
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }
}

/// A server on its own thread; stopped (and every connection dropped) when dropped.
pub struct FaultyServer {
    pub addr: String,
    pub seen: Arc<Counters>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone)]
enum Kind {
    Origin(Duration),
    Stall,
    /// Forwards JSON-RPC calls to `target`, except calls of the listed methods, which are
    /// held unanswered.
    Rpc {
        target: Arc<str>,
        stall: Arc<[&'static str]>,
    },
    /// Answers every request with `307` to the same path on `target`.
    Redirect(Arc<str>),
}

/// Bytes the reset origin declares, and sends before resetting.
pub const RESET_DECLARED: usize = 1_000_000;
pub const RESET_SENT: usize = 10_000;
/// The body the trickling origin ends with (if anyone waits that long).
pub const SLOW_BODY: &str = "ok";

impl FaultyServer {
    /// An origin that acts by the last path segment of each request:
    /// - `reset`: a 200 head with `Content-Length: RESET_DECLARED`, `RESET_SENT` body bytes, then
    ///   a TCP reset (SO_LINGER 0 and close);
    /// - `slow-head`: a complete response written one byte at a time, `pause` between bytes;
    /// - anything else: reads the whole request body (Content-Length or chunked), counting it,
    ///   and answers 200 `{"bytes": n}`.
    pub fn origin(pause: Duration) -> FaultyServer {
        Self::start(Kind::Origin(pause))
    }

    /// Accepts connections, reads and discards what arrives, never answers.
    pub fn stall() -> FaultyServer {
        Self::start(Kind::Stall)
    }

    /// A JSON-RPC proxy to `target` that never answers calls of the `stall` methods.
    pub fn rpc_stalling(target: &str, stall: &[&'static str]) -> FaultyServer {
        Self::start(Kind::Rpc {
            target: target.into(),
            stall: stall.into(),
        })
    }

    /// Redirects every request (307, same path) to `target`: a facilitator or node that
    /// would send its caller somewhere the operator never configured.
    pub fn redirect(target: &str) -> FaultyServer {
        Self::start(Kind::Redirect(target.trim_end_matches('/').into()))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn start(kind: Kind) -> FaultyServer {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Counters::default());
        let (stop, mut stopped) = watch::channel(false);
        let counters = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            counters.connections.fetch_add(1, Ordering::SeqCst);
                            let (counters, kind) = (counters.clone(), kind.clone());
                            tokio::spawn(async move {
                                match kind {
                                    Kind::Origin(pause) => serve_origin(stream, counters, pause).await,
                                    Kind::Stall => stall(stream).await,
                                    Kind::Rpc { target, stall } => {
                                        serve_rpc(stream, counters, &target, &stall).await
                                    }
                                    Kind::Redirect(target) => {
                                        serve_redirect(stream, counters, &target).await
                                    }
                                }
                            });
                        }
                    }
                }
            });
        });
        FaultyServer {
            addr,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

async fn stall(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// A request head: path, declared length, chunked, and bytes already read past the head.
struct Head {
    path: String,
    content_length: u64,
    chunked: bool,
    rest: Vec<u8>,
}

async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 256 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let header = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    Some(Head {
        path,
        content_length: header("content-length:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        chunked: header("transfer-encoding:").is_some_and(|v| v.contains("chunked")),
        rest: buf[end + 4..].to_vec(),
    })
}

/// Appends what one read brings; `None` at end of stream or on error.
async fn fill(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 64 * 1024];
    let n = stream.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    pending.extend_from_slice(&chunk[..n]);
    Some(())
}

/// Reads a request body, returning its length (chunk framing not counted).
async fn read_body(stream: &mut TcpStream, head: &Head, counters: &Counters) -> Option<u64> {
    let mut pending = head.rest.clone();
    let mut total = 0u64;
    if !head.chunked {
        total += pending.len() as u64;
        counters
            .body_bytes
            .fetch_add(pending.len() as u64, Ordering::SeqCst);
        while total < head.content_length {
            pending.clear();
            fill(stream, &mut pending).await?;
            total += pending.len() as u64;
            counters
                .body_bytes
                .fetch_add(pending.len() as u64, Ordering::SeqCst);
        }
        return Some(total);
    }
    loop {
        let line_end = loop {
            if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(stream, &mut pending).await?;
        };
        let size_text = String::from_utf8_lossy(&pending[..line_end]).to_string();
        let size = u64::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        pending.drain(..line_end + 2);
        if size == 0 {
            return Some(total);
        }
        while (pending.len() as u64) < size + 2 {
            fill(stream, &mut pending).await?;
        }
        pending.drain(..size as usize + 2);
        total += size;
        counters.body_bytes.fetch_add(size, Ordering::SeqCst);
    }
}

async fn serve_origin(mut stream: TcpStream, counters: Arc<Counters>, pause: Duration) {
    while let Some(head) = read_head(&mut stream).await {
        counters.requests.fetch_add(1, Ordering::SeqCst);
        let last = head.path.rsplit('/').next().unwrap_or("").to_owned();
        match last.split('?').next().unwrap_or("") {
            "reset" => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {RESET_DECLARED}\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&vec![b'x'; RESET_SENT]).await;
                let _ = stream.flush().await;
                let _ = stream.set_zero_linger();
                return;
            }
            "slow-head" => {
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{SLOW_BODY}",
                    SLOW_BODY.len()
                );
                for b in response.bytes() {
                    if stream.write_all(&[b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
            _ => {
                let Some(n) = read_body(&mut stream, &head, &counters).await else {
                    return;
                };
                let body = format!("{{\"bytes\":{n}}}");
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn serve_rpc(mut stream: TcpStream, counters: Arc<Counters>, target: &str, held: &[&str]) {
    let http = super::client();
    while let Some(head) = read_head(&mut stream).await {
        counters.requests.fetch_add(1, Ordering::SeqCst);
        let mut body = head.rest.clone();
        while (body.len() as u64) < head.content_length {
            if fill(&mut stream, &mut body).await.is_none() {
                return;
            }
        }
        let call: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let calls = match &call {
            serde_json::Value::Array(a) => a.clone(),
            one => vec![one.clone()],
        };
        if calls
            .iter()
            .any(|c| held.contains(&c["method"].as_str().unwrap_or("")))
        {
            return stall(stream).await;
        }
        let Ok(answer) = http
            .post(target)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
        else {
            return;
        };
        let status = answer.status().as_u16();
        let Ok(bytes) = answer.bytes().await else {
            return;
        };
        let head = format!(
            "HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            bytes.len()
        );
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(&bytes).await.is_err()
        {
            return;
        }
    }
}

async fn serve_redirect(mut stream: TcpStream, counters: Arc<Counters>, target: &str) {
    while let Some(head) = read_head(&mut stream).await {
        counters.requests.fetch_add(1, Ordering::SeqCst);
        let mut body = head.rest.clone();
        while (body.len() as u64) < head.content_length {
            if fill(&mut stream, &mut body).await.is_none() {
                return;
            }
        }
        let response = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}{}\r\nContent-Length: 0\r\n\r\n",
            head.path
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
