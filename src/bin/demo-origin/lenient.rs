//! `--lenient`: an origin that, like many real servers (Go's `url.ParseRequestURI` with
//! `ServeMux`, Apache, framework routers), resolves whatever request target it is given
//! instead of refusing odd ones: a scheme and authority are dropped (with or without `//`), a
//! missing leading slash is added, backslashes are slashes, every escape (`%2F` too) is
//! decoded, dot segments are resolved, and the method is upper-cased. Bypass tests put it
//! behind the gateway so that a request the gateway priced as one thing and forwarded as
//! another shows up as a 200 for priced content.
//!
//! It speaks just enough HTTP/1.1 over raw sockets for that (keep-alive, `Content-Length`
//! bodies) and answers `/interim/<1xx>/<status>` with that informational response first (after
//! which it reads the body), for the tests of `100 Continue` and `103 Early Hints`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the origin has served, for `/__origin/stats`.
#[derive(Default)]
pub struct Stats {
    requests: AtomicU64,
    /// Every resolved path and method served, one `METHOD path` per line.
    served: std::sync::Mutex<Vec<String>>,
}

/// The path a lenient server derives from a raw request target.
pub fn resolve(target: &str) -> String {
    let mut rest = target;
    // A scheme: letters before the first ':' that comes before any '/'.
    if let Some(colon) = rest.find(':')
        && !rest[..colon].contains(['/', '\\', '?'])
        && !rest[..colon].is_empty()
    {
        rest = &rest[colon + 1..];
        let unslashed = rest.trim_start_matches(['/', '\\']);
        if rest.len() - unslashed.len() >= 2 {
            // `//authority`: drop it up to the next separator.
            let end = unslashed.find(['/', '\\', '?']).unwrap_or(unslashed.len());
            rest = &unslashed[end..];
        }
    }
    let path = rest.split('?').next().unwrap_or("");
    let decoded = percent_decode(path).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One parsed request head.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    content_length: usize,
    chunked: bool,
}

fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_ascii_uppercase();
    let target = first.next()?.to_owned();
    let mut headers = Vec::new();
    let (mut content_length, mut chunked) = (0, false);
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
        if k == "content-length" {
            content_length = v.parse().unwrap_or(0);
        }
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
        headers.push((k, v));
    }
    Some(Head {
        method,
        target,
        headers,
        content_length,
        chunked,
    })
}

async fn write_response(s: &mut TcpStream, status: u16, body: &str, close: bool) -> bool {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    s.write_all(head.as_bytes()).await.is_ok() && s.write_all(body.as_bytes()).await.is_ok()
}

async fn serve(mut s: TcpStream, name: Arc<str>, stats: Arc<Stats>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Some(head) = parse_head(&buf[..end]) else {
            let _ = write_response(&mut s, 400, "{\"error\":\"bad head\"}", true).await;
            return;
        };
        buf.drain(..end);
        let path = resolve(&head.target);
        if path == "/__origin/stats" {
            let served = stats.served.lock().map(|v| v.clone()).unwrap_or_default();
            let body = serde_json::json!({
                "requests": stats.requests.load(Ordering::Relaxed),
                "name": &*name,
                "served": served,
            })
            .to_string();
            if !write_response(&mut s, 200, &body, false).await {
                return;
            }
            continue;
        }
        if path == "/__origin/health" {
            if !write_response(&mut s, 200, "\"ok\"", false).await {
                return;
            }
            continue;
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut status = 200;
        if let ["interim", code, fin] = parts.as_slice() {
            let code: u16 = code.parse().unwrap_or(100);
            let extra = if code == 103 {
                "link: </style.css>; rel=preload\r\n"
            } else {
                ""
            };
            let line = format!("HTTP/1.1 {code} Interim\r\n{extra}\r\n");
            if s.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            status = fin.parse().unwrap_or(500);
        }
        // The body, which the gateway forwards after a `100 Continue`.
        while buf.len() < head.content_length {
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head.content_length.min(buf.len()));
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut v) = stats.served.lock() {
            v.push(format!("{} {path}", head.method));
        }
        let headers: serde_json::Map<String, serde_json::Value> = head
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let body = serde_json::json!({
            "origin": &*name,
            "lenient": true,
            "method": head.method,
            "target": head.target,
            "path": path,
            "headers": headers,
        })
        .to_string();
        // A chunked body is not read: close instead of misreading it as the next request.
        if !write_response(&mut s, status, &body, head.chunked).await || head.chunked {
            return;
        }
    }
}

/// Serves connections on `listener` until the process ends.
pub async fn run(listener: TcpListener, name: String) {
    let name: Arc<str> = name.into();
    let stats = Arc::new(Stats::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, name.clone(), stats.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn resolves_like_a_lenient_server() {
        for (target, want) in [
            ("/api/weather", "/api/weather"),
            ("api/weather", "/api/weather"),
            ("\\api\\weather", "/api/weather"),
            ("/free/../api/weather", "/api/weather"),
            ("/api%2Fweather", "/api/weather"),
            ("x:/api/weather", "/api/weather"),
            ("http:api/weather", "/api/weather"),
            ("http://h/api/weather?q=1", "/api/weather"),
            ("ws://h/api/weather", "/api/weather"),
            ("http:\\\\h\\api\\weather", "/api/weather"),
        ] {
            assert_eq!(resolve(target), want, "{target}");
        }
    }
}
