//! TLS and HTTP/2 for tests: a `[[server.tls]]` listener with the committed self-signed test
//! certificate (`support/tls/`, for `localhost` and 127.0.0.1, test use only), and a real
//! HTTP/2 client (the `h2` crate over rustls, ALPN `h2`) that can send any `:method`, `:path`
//! and `:authority`, as hostile clients do.

use std::sync::Arc;

use bytes::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{Gateway, init_tls, repo};

fn cert_path() -> std::path::PathBuf {
    repo().join("tests/it/support/tls/cert.pem")
}

/// A `[[server.tls]]` table: a TLS listener on port 0 offering HTTP/2.
pub fn tls_listener_toml() -> String {
    let dir = repo().join("tests/it/support/tls");
    format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\nh2 = true\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

impl Gateway {
    /// The address of the first TLS listener (from the ready file).
    pub fn tls_addr(&self) -> String {
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.path("ready.json")).expect("ready file"))
                .expect("ready json");
        report["tls"][0]
            .as_str()
            .expect("a TLS listener")
            .to_owned()
    }
}

/// Trusts exactly the test certificate (no clock or name checks: the test pins the bytes).
#[derive(Debug)]
struct ThisCertificate(CertificateDer<'static>);

impl ServerCertVerifier for ThisCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the test certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An HTTP/2 connection to a TLS listener, negotiated through ALPN.
pub async fn h2_connect(addr: &str) -> h2::client::SendRequest<Bytes> {
    init_tls();
    let cert = CertificateDer::from_pem_file(cert_path()).expect("test certificate");
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ThisCertificate(cert)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the listener did not negotiate HTTP/2"
    );
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// What an HTTP/2 request got.
#[derive(Debug)]
pub enum H2Answer {
    /// A response: status, headers and body.
    Response(u16, http::HeaderMap, Vec<u8>),
    /// The server reset the stream (or the connection) instead of answering.
    Reset(String),
}

/// Sends one request with exactly these pseudo-headers (`:scheme https`) and headers.
pub async fn h2_request(
    send: &h2::client::SendRequest<Bytes>,
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> H2Answer {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    parts.authority = Some(authority.parse().expect("authority"));
    parts.path_and_query = Some(
        http::uri::PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(path.as_bytes()))
            .expect("a :path the h2 crate can carry"),
    );
    let mut req = http::Request::builder()
        .method(http::Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(http::Uri::from_parts(parts).expect("uri"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).expect("request");
    let mut send = match send.clone().ready().await {
        Ok(s) => s,
        Err(e) => return H2Answer::Reset(e.to_string()),
    };
    let resp = match send.send_request(req, true) {
        Ok((resp, _)) => resp.await,
        Err(e) => return H2Answer::Reset(e.to_string()),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return H2Answer::Reset(e.to_string()),
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(c) => {
                let _ = body.flow_control().release_capacity(c.len());
                out.extend_from_slice(&c);
            }
            Err(e) => return H2Answer::Reset(e.to_string()),
        }
    }
    H2Answer::Response(status, headers, out)
}

/// How the server dealt with one request sent as raw HTTP/2 frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawH2 {
    /// `RST_STREAM` on the request's stream, with its error code.
    Reset(u32),
    /// `GOAWAY` for the connection, with its error code.
    GoAway(u32),
    /// A `HEADERS` frame answered the request (the request was taken).
    Answered,
    /// The connection closed or went quiet without any of those.
    Nothing,
}

/// Sends one request as raw HTTP/2 frames, with header fields exactly as given (pseudo-headers
/// included, HPACK literals, no validation), for values no HTTP library will send — a
/// `:path` without a leading slash, say. Reports how the server answered.
pub async fn h2_raw_request(addr: &str, fields: &[(&str, &str)]) -> RawH2 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init_tls();
    let cert = CertificateDer::from_pem_file(cert_path()).expect("test certificate");
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ThisCertificate(cert)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    // HPACK: each field a literal without indexing, new name, no Huffman coding.
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        hpack_len(&mut block, name.len());
        block.extend_from_slice(name.as_bytes());
        hpack_len(&mut block, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 4, 0, 0, &[]); // SETTINGS
    frame(&mut out, 1, 0x5, 1, &block); // HEADERS, END_STREAM | END_HEADERS, stream 1
    tls.write_all(&out).await.expect("write");
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            let code_at = |i: usize| {
                payload
                    .get(i..i + 4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match (kind, stream) {
                (1, 1) => return RawH2::Answered,
                (3, 1) => return RawH2::Reset(code_at(0)),
                (7, _) => return RawH2::GoAway(code_at(4)),
                (4, 0) if flags & 1 == 0 => {
                    // Acknowledge the server's SETTINGS.
                    let mut ack = Vec::new();
                    frame(&mut ack, 4, 1, 0, &[]);
                    let _ = tls.write_all(&ack).await;
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 16384];
        let read = tokio::time::timeout_at(deadline, tls.read(&mut chunk)).await;
        match read {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return RawH2::Nothing,
        }
    }
}

/// An HPACK integer with a 7-bit prefix (string lengths, no Huffman flag).
fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// One HTTP/2 frame.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}
