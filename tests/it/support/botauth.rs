//! Web Bot Auth for tests: Ed25519 keys generated here, RFC 9421 signatures built by hand (so
//! the gateway's verifier is checked against an independent signer, with any covered
//! components and any `created`/`expires`), and a key directory server on loopback that counts
//! its requests.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

/// A bot's signing key.
pub struct BotKey {
    key: SigningKey,
    /// `x` of the JWK (base64url public key).
    pub x: String,
    /// RFC 7638 JWK thumbprint: the `keyid`.
    pub thumbprint: String,
}

impl BotKey {
    pub fn new(seed: u8) -> BotKey {
        let mut s = [0u8; 32];
        for (i, b) in s.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(i as u8);
        }
        let key = SigningKey::from_bytes(&s);
        let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        BotKey { key, x, thumbprint }
    }

    /// The JWK as published in a directory.
    pub fn jwk(&self) -> String {
        format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{}","kid":"{}","use":"sig"}}"#,
            self.x, self.thumbprint
        )
    }
}

/// A key directory body.
pub fn jwks(keys: &[&BotKey]) -> String {
    let list: Vec<String> = keys.iter().map(|k| k.jwk()).collect();
    format!(r#"{{"keys":[{}]}}"#, list.join(","))
}

/// What to sign.
#[derive(Debug, Clone)]
pub struct Sig<'a> {
    /// `@authority` (host:port the request is sent to).
    pub authority: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The Signature-Agent header value (an sf-string such as `"http://127.0.0.1:9"`).
    pub agent: Option<&'a str>,
    /// Covered components, in order.
    pub components: Vec<&'a str>,
    pub created: i64,
    pub expires: i64,
    pub nonce: &'a str,
    pub tag: &'a str,
    /// `keyid` to claim (default: the signing key's thumbprint).
    pub keyid: Option<&'a str>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl<'a> Sig<'a> {
    /// A web-bot-auth signature over `@authority` and `signature-agent`, valid for a minute.
    pub fn standard(authority: &'a str, agent: &'a str, nonce: &'a str) -> Sig<'a> {
        Sig {
            authority,
            method: "GET",
            path: "/",
            agent: Some(agent),
            components: vec!["@authority", "signature-agent"],
            created: now(),
            expires: now() + 60,
            nonce,
            tag: "web-bot-auth",
            keyid: None,
        }
    }
}

/// The request headers (`Signature-Input`, `Signature`, `Signature-Agent`) of a signature by
/// `key` (`keyid` = its thumbprint).
pub fn sign(key: &BotKey, s: &Sig<'_>) -> Vec<(&'static str, String)> {
    let list = s
        .components
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(" ");
    let params = format!(
        "({list});created={};expires={};keyid=\"{}\";nonce=\"{}\";tag=\"{}\";alg=\"ed25519\"",
        s.created,
        s.expires,
        s.keyid.unwrap_or(&key.thumbprint),
        s.nonce,
        s.tag
    );
    let mut base = String::new();
    for c in &s.components {
        let value = match *c {
            "@authority" => s.authority.to_owned(),
            "@method" => s.method.to_owned(),
            "@path" => s.path.to_owned(),
            "signature-agent" => s.agent.unwrap_or("").to_owned(),
            other => panic!("test signer does not know {other}"),
        };
        base.push_str(&format!("\"{c}\": {value}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {params}"));
    let sig = key.key.sign(base.as_bytes());
    let mut out = vec![
        ("signature-input", format!("sig1={params}")),
        (
            "signature",
            format!("sig1=:{}:", STANDARD.encode(sig.to_bytes())),
        ),
    ];
    if let Some(a) = s.agent {
        out.push(("signature-agent", a.to_owned()));
    }
    out
}

/// A key directory on loopback: answers every request with the body and Cache-Control given.
pub struct Directory {
    pub addr: String,
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Directory {
    pub fn start(body: String, cache_control: &str) -> Directory {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let body = Arc::new(Mutex::new(body));
        let (h, st, cc, b) = (
            hits.clone(),
            stop.clone(),
            cache_control.to_owned(),
            body.clone(),
        );
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut c) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                if !head.starts_with("GET /.well-known/http-message-signatures-directory ") {
                    let _ = c.write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    continue;
                }
                h.fetch_add(1, Ordering::SeqCst);
                let body = b.lock().map(|g| g.clone()).unwrap_or_default();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/http-message-signatures-directory+json\r\ncache-control: {cc}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes());
            }
        });
        Directory {
            addr,
            hits,
            body,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Signature-Agent header value naming this directory.
    pub fn agent_header(&self) -> String {
        format!("\"{}\"", self.origin())
    }

    /// Publishes another key set (key rotation).
    pub fn set_body(&self, body: String) {
        if let Ok(mut g) = self.body.lock() {
            *g = body;
        }
    }

    /// Directory requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
