//! Free paths: bodies stream byte-exact both ways, HEAD, WebSocket upgrades, graceful drain.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;

const WS_RULES: &str = r#"
[[rule]]
id = "ws"
path = "/ws"
action = "free"

[[rule]]
id = "paid-ws"
path = "/paid/ws"
price = "$0.01"
"#;

#[tokio::test]
async fn free_path_streams_a_10_mib_download_byte_exact() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", SITE_RULES)]);
    let c = client();

    // No rule matches `/bytes/…`: forwarded untouched.
    let r = get(&c, &gw.url("/bytes/10485760")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len(), 10 * 1024 * 1024);
    assert!(r.body[..] == pattern(10 * 1024 * 1024)[..], "body differs");
    assert_eq!(origin.requests().await, 1);
}

/// A chunked upload of several MiB is echoed byte-exact, and the echo starts arriving while the
/// upload is still being sent: the gateway streams the request body instead of buffering it.
#[tokio::test]
async fn chunked_upload_is_streamed_and_echoed_byte_exact() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", SITE_RULES)]);

    const TOTAL: usize = 6 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let payload: Arc<Vec<u8>> = Arc::new((0..TOTAL).map(|i| (i * 7 + i / 65536) as u8).collect());
    let received = Arc::new(AtomicUsize::new(0));

    let mut conn = RawConn::connect(&gw.addr);
    let mut writer = conn.stream.try_clone().expect("clone");
    let (p, seen) = (payload.clone(), received.clone());
    let upload = std::thread::spawn(move || -> Result<(), String> {
        writer
            .write_all(
                b"POST /echo HTTP/1.1\r\nHost: shop.test\r\nContent-Type: application/x-test\r\n\
                  Transfer-Encoding: chunked\r\n\r\n",
            )
            .map_err(|e| e.to_string())?;
        for (n, chunk) in p.chunks(CHUNK).enumerate() {
            if n == p.len() / CHUNK / 2 {
                // Half sent: the echo of the first half must come back before the rest is sent.
                let deadline = Instant::now() + Duration::from_secs(10);
                while seen.load(Ordering::SeqCst) < 1024 * 1024 {
                    if Instant::now() > deadline {
                        return Err(
                            "no echo before the upload finished: request body buffered".into()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            write!(writer, "{:x}\r\n", chunk.len()).map_err(|e| e.to_string())?;
            writer.write_all(chunk).map_err(|e| e.to_string())?;
            writer.write_all(b"\r\n").map_err(|e| e.to_string())?;
        }
        writer.write_all(b"0\r\n\r\n").map_err(|e| e.to_string())?;
        Ok(())
    });

    // Read the response head, then the chunked body, publishing progress for the writer.
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 65536];
    let head_end = loop {
        if let Some(i) = find(&raw, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.stream.read(&mut buf).expect("read head");
        assert!(n > 0, "closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/x-test"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut wire = raw.split_off(head_end);
    let mut body = Vec::with_capacity(TOTAL);
    let mut pos = 0;
    loop {
        // Decode as many whole chunks as are buffered.
        let mut progressed = true;
        let mut done = false;
        while progressed {
            progressed = false;
            if let Some(i) = find(&wire[pos..], b"\r\n") {
                let size_text = String::from_utf8_lossy(&wire[pos..pos + i]).into_owned();
                let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
                if size == 0 {
                    done = true;
                    break;
                }
                let start = pos + i + 2;
                if wire.len() >= start + size + 2 {
                    body.extend_from_slice(&wire[start..start + size]);
                    pos = start + size + 2;
                    progressed = true;
                    received.store(body.len(), Ordering::SeqCst);
                }
            }
        }
        if done {
            break;
        }
        let n = conn.stream.read(&mut buf).expect("read body");
        assert!(n > 0, "closed mid-body after {} bytes", body.len());
        wire.extend_from_slice(&buf[..n]);
    }
    upload.join().expect("upload thread").expect("upload");
    assert_eq!(body.len(), TOTAL);
    assert!(body == payload[..], "echoed body differs");
    assert_eq!(origin.requests().await, 1);

    // The origin saw a chunked request, not one the gateway had buffered and measured.
    let mut conn = RawConn::connect(&gw.addr);
    conn.send(
        b"POST /public/headers HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    let r = conn.response(false).expect("response");
    assert_eq!(r.status, 200);
    let seen = r.json();
    assert_eq!(seen["headers"]["transfer-encoding"], "chunked", "{seen}");
    assert!(seen["headers"].get("content-length").is_none(), "{seen}");
}

#[tokio::test]
async fn head_requests_get_headers_only() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("site.toml", SITE_RULES)]);

    // Free: the origin's headers, no body.
    let r = raw_once(
        &gw.addr,
        b"HEAD /public/../fixed/1000 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    )
    .expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    // Nothing follows the head: the connection closes with no body bytes.
    let mut conn = RawConn::connect(&gw.addr);
    conn.send(b"HEAD /fixed/1000 HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
    let r = conn.response(true).expect("response");
    assert_eq!(r.status, 200);
    let mut rest = Vec::new();
    let _ = conn.stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "HEAD response carried a body: {rest:?}");

    // Priced GET rule: HEAD is covered by GET, gets the 402 headers and no body.
    let mut conn = RawConn::connect(&gw.addr);
    conn.send(b"HEAD /api/weather HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
    let r = conn.response(true).expect("response");
    assert_eq!(r.status, 402);
    let pr = decode_header(r.header("payment-required").expect("PAYMENT-REQUIRED"));
    assert_eq!(pr["accepts"][0]["amount"], "10000");
    let mut rest = Vec::new();
    let _ = conn.stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "HEAD 402 carried a body: {rest:?}");
    assert_eq!(origin.requests().await, 2, "only the two free HEADs");
}

#[tokio::test]
async fn websocket_upgrade_passes_through_on_a_free_rule() {
    let origin = Origin::start("o1");
    let gw = Cfg::new(&origin.addr).start(&[("ws.toml", WS_RULES)]);

    let upgrade = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: shop.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let mut conn = RawConn::connect(&gw.addr);
    conn.send(upgrade("/ws").as_bytes());
    let r = conn.response(false).expect("response");
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{r:?}"
    );
    assert!(
        r.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    );
    // The connection is now a raw byte pipe to the origin, both ways.
    for msg in [
        &b"hello over the gateway"[..],
        &[0u8, 1, 2, 255, 254][..],
        &[b'z'; 70000][..],
    ] {
        conn.send(msg);
        assert_eq!(conn.read_exact_bytes(msg.len()), msg);
    }

    // The same upgrade on a priced rule is challenged and never reaches the origin.
    let before = origin.requests().await;
    let r = raw_once(&gw.addr, upgrade("/paid/ws").as_bytes()).expect("response");
    assert_eq!(r.status, 402);
    assert_eq!(origin.requests().await, before);
}

/// SIGTERM: a request already in flight completes, then the process exits.
#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let origin = Origin::start("o1");
    let mut gw = Cfg::new(&origin.addr)
        .grace(2)
        .start(&[("site.toml", SITE_RULES)]);
    let c = client();
    let url = gw.url("/slow/1500");
    let slow = tokio::spawn(async move { c.get(url).send().await });
    eventually(
        "the slow request to reach the origin",
        Duration::from_secs(5),
        || {
            let o = &origin;
            async move { o.requests().await >= 1 }
        },
    )
    .await;
    let start = Instant::now();
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    let r = slow
        .await
        .expect("join")
        .expect("the in-flight request failed");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["path"], "/slow/1500");
    assert!(
        gw.wait_exit(Duration::from_secs(10)),
        "gateway still running {:?} after SIGTERM",
        start.elapsed()
    );
    // The listener is gone.
    assert!(std::net::TcpStream::connect(&gw.addr).is_err());
}
