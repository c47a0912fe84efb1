//! TLS end to end, with certificates made here by a local CA: the listener negotiates h2 and
//! http/1.1 by ALPN and picks up a renewed certificate when its files change (a broken one is
//! refused and the last good one kept); a payment over HTTP/2 settles on chain; an origin over
//! TLS gets the configured SNI and is verified against its own CA, and a wrong CA or name is a
//! 502 that never reaches it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::core::SITE_RULES;
use crate::facilitators::Two;
use crate::support::*;

/// A local CA that issues server certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names`, written as `<stem>.crt` and `<stem>.key` in `dir`.
    fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k, cert.der().to_vec())
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).expect("write ca");
    }
}

/// Replaces `to` with `from` in one rename, as certificate tools do.
fn swap(from: &Path, to: &Path) {
    let tmp = to.with_extension("swap");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

/// A TLS connection to `addr` for `localhost` trusting only `ca`, offering `alpn`.
async fn connect(
    addr: &str,
    ca: &Ca,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("ca pem"))
        .expect("ca");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake with a certificate of the CA")
}

/// The negotiated protocol and the certificate the listener presented.
async fn handshake(addr: &str, ca: &Ca, alpn: &[&[u8]]) -> (Option<Vec<u8>>, Vec<u8>) {
    let s = connect(addr, ca, alpn).await;
    let conn = s.get_ref().1;
    (
        conn.alpn_protocol().map(<[u8]>::to_vec),
        conn.peer_certificates().expect("certificates")[0].to_vec(),
    )
}

/// One HTTP/2 GET over a TLS connection; the status, headers and body.
async fn h2_get(
    addr: &str,
    ca: &Ca,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Vec<u8>) {
    let tls = connect(addr, ca, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method("GET")
        .uri(format!("https://localhost{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, _) = send
        .send_request(req.body(()).expect("request"), true)
        .expect("send");
    let resp = resp.await.expect("response");
    let (parts, mut body) = resp.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (parts.status.as_u16(), parts.headers, bytes)
}

fn tls_table(cert: &Path, key: &Path) -> String {
    format!(
        "\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\nh2 = true\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
async fn the_listener_speaks_h2_and_http1_and_picks_up_a_renewed_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("x402 test CA");
    let (cert, key, first) = ca.issue(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let origin = Origin::start("o1");
    let gw = Gateway::start(
        &(config(&origin.addr, "") + &tls_table(&cert, &key)),
        &[("site.toml", SITE_RULES)],
    );
    let addr = gw.tls_addr();

    assert_eq!(
        handshake(&addr, &ca, &[b"h2", b"http/1.1"]).await,
        (Some(b"h2".to_vec()), first.clone())
    );
    assert_eq!(
        handshake(&addr, &ca, &[b"http/1.1"]).await.0,
        Some(b"http/1.1".to_vec())
    );
    let (status, _, body) = h2_get(&addr, &ca, "/public/a", &[]).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_slice(&body).expect("origin echo");
    assert_eq!(body["origin"], "o1");
    let (status, headers, _) = h2_get(&addr, &ca, "/api/weather", &[]).await;
    assert_eq!(status, 402);
    assert!(headers.contains_key("payment-required"));

    // Renewed: new files in place (key first, then the certificate); new connections get the
    // new certificate without a restart.
    let (next_cert, next_key, second) = ca.issue(dir.path(), "next", &["localhost"]);
    swap(&next_key, &key);
    swap(&next_cert, &cert);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, presented) = handshake(&addr, &ca, &[b"h2"]).await;
        if presented == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken file is refused: the listener keeps the last good certificate.
    let failed_before = gw
        .metric(r#"x402_config_reloads_total{outcome="invalid"}"#)
        .await;
    std::fs::write(dir.path().join("broken"), "not a certificate").expect("write");
    swap(&dir.path().join("broken"), &cert);
    let deadline = Instant::now() + Duration::from_secs(15);
    while gw
        .metric(r#"x402_config_reloads_total{outcome="invalid"}"#)
        .await
        <= failed_before
    {
        assert!(Instant::now() < deadline, "{}", gw.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(handshake(&addr, &ca, &[b"h2"]).await.1, second);
    gw.log_containing("server.tls.cert").await;
}

#[tokio::test]
async fn a_payment_over_http2_settles_on_chain() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("x402 test CA");
    let (cert, key, _) = ca.issue(dir.path(), "server", &["localhost"]);
    let t = Two::start_with(None, "", &tls_table(&cert, &key));
    let addr = t.gw.tls_addr();
    let (payer, _) = t.payer();
    let before = t.balance(&payer).await;
    let header = t.header("/api/weather").await;
    let (status, headers, body) = h2_get(
        &addr,
        &ca,
        "/api/weather",
        &[("payment-signature", header.as_str())],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let receipt = decode_header(headers["payment-response"].to_str().expect("ascii"));
    assert_eq!(receipt["success"], true);
    assert_eq!(t.balance(&payer).await, before - 10_000);
    // The same payment again, over HTTP/2 too: refused, nothing moves.
    let (status, _, _) = h2_get(
        &addr,
        &ca,
        "/api/weather",
        &[("payment-signature", header.as_str())],
    )
    .await;
    assert_eq!(status, 402);
    assert_eq!(t.balance(&payer).await, before - 10_000);
}

#[tokio::test]
async fn an_origin_over_tls_is_verified_against_its_ca_with_the_configured_sni() {
    let dir = tempfile::tempdir().expect("dir");
    let origin_ca = Ca::new("origin CA");
    let other_ca = Ca::new("some other CA");
    let (cert, key, _) = origin_ca.issue(dir.path(), "origin", &["origin.test"]);
    origin_ca.write(&dir.path().join("origin-ca.pem"));
    other_ca.write(&dir.path().join("other-ca.pem"));
    let origin = Origin::start_with(
        "tls-origin",
        &[
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ],
    );
    let upstream = |sni: &str, ca: &str| {
        config(&origin.addr, "").replace(
            "connect_timeout_ms = 1000\n",
            &format!(
                "connect_timeout_ms = 1000\ntls = true\nsni = \"{sni}\"\nca_file = \"{}\"\n",
                dir.path().join(ca).display()
            ),
        )
    };
    let c = client();

    let gw = Gateway::start(
        &upstream("origin.test", "origin-ca.pem"),
        &[("site.toml", SITE_RULES)],
    );
    let r = c.get(gw.url("/public/a")).send().await.expect("get");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("echo");
    assert_eq!(body["origin"], "tls-origin");
    assert_eq!(body["tls_sni"], "origin.test", "{body}");
    drop(gw);

    for (sni, ca, why) in [
        ("origin.test", "other-ca.pem", "a certificate of another CA"),
        (
            "wrong.test",
            "origin-ca.pem",
            "a certificate for another name",
        ),
    ] {
        let gw = Gateway::start(&upstream(sni, ca), &[("site.toml", SITE_RULES)]);
        let r = c.get(gw.url("/public/a")).send().await.expect("get");
        assert_eq!(r.status(), 502, "{why}");
        let body: Value = r.json().await.expect("a JSON error");
        assert_eq!(body["error"], "upstream_unavailable", "{why}: {body}");
    }

    // A CA file that is not one is a configuration error, reported where it is named.
    std::fs::write(dir.path().join("junk.pem"), "junk").expect("write");
    let d = tempfile::tempdir().expect("dir");
    std::fs::create_dir(d.path().join("rules")).expect("rules");
    std::fs::write(
        d.path().join("gateway.toml"),
        upstream("origin.test", "junk.pem"),
    )
    .expect("write");
    std::fs::write(d.path().join("rules/site.toml"), SITE_RULES).expect("write");
    let path = d.path().join("gateway.toml");
    let (code, _, err) =
        crate::core::gateway_cli(&["check", "-c", path.to_str().expect("utf-8")], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("upstreams.origin.ca_file:") && err.contains("holds no PEM certificate"),
        "{err}"
    );
}
