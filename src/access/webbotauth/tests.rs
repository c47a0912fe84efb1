//! Unit tests of Web Bot Auth: origins and authorities, signing and verifying, refusals,
//! replays and key directories.

use std::time::Duration;

use http::HeaderMap;
use web_bot_auth::components::{CoveredComponent, DerivedComponent, HTTPField};
use web_bot_auth::keyring::{Algorithm, Thumbprintable};

use super::directory::max_age;
use super::*;
use signing::sign;

/// Signing helpers for tests (the crate's own signer).
pub(crate) mod signing {
    use super::*;
    use web_bot_auth::message_signatures::{MessageSigner, UnsignedMessage};

    struct Unsigned {
        components: Vec<(CoveredComponent, String)>,
        input: String,
        signature: String,
    }

    impl UnsignedMessage for Unsigned {
        fn fetch_components_to_cover(&self) -> indexmap::IndexMap<CoveredComponent, String> {
            self.components.iter().cloned().collect()
        }
        fn register_header_contents(&mut self, input: String, signature: String) {
            self.input = format!("sig1={input}");
            self.signature = format!("sig1={signature}");
        }
    }

    /// (Signature-Input, Signature) over @authority (and signature-agent when given).
    pub fn sign(
        seed: &[u8; 32],
        keyid: &str,
        authority: &str,
        agent: Option<&str>,
        expires: Duration,
        nonce: &str,
    ) -> (String, String) {
        let mut components = vec![(
            CoveredComponent::Derived(DerivedComponent::Authority { req: false }),
            authority.to_owned(),
        )];
        if let Some(a) = agent {
            components.push((
                CoveredComponent::HTTP(HTTPField {
                    name: "signature-agent".into(),
                    parameters: web_bot_auth::components::HTTPFieldParametersSet(vec![]),
                }),
                a.to_owned(),
            ));
        }
        let mut m = Unsigned {
            components,
            input: String::new(),
            signature: String::new(),
        };
        MessageSigner {
            keyid: keyid.into(),
            nonce: nonce.into(),
            tag: "web-bot-auth".into(),
        }
        .generate_signature_headers_content(&mut m, expires, Algorithm::Ed25519, seed)
        .expect("sign");
        (m.input, m.signature)
    }
}

#[test]
fn origins_and_authorities() {
    assert_eq!(
        origin_of("https://ChatGPT.com/"),
        Some("https://chatgpt.com".into())
    );
    assert_eq!(
        origin_of("https://a.example:443/x"),
        Some("https://a.example".into())
    );
    assert_eq!(
        origin_of("http://127.0.0.1:8080"),
        Some("http://127.0.0.1:8080".into())
    );
    assert_eq!(origin_of("ftp://a"), None);
    assert_eq!(origin_of("https://u@a.example"), None);
    assert!(is_loopback_origin("http://127.0.0.1:9"));
    assert!(is_loopback_origin("http://localhost:9"));
    assert!(is_loopback_origin("http://[::1]:9"));
    assert!(!is_loopback_origin("https://chatgpt.com"));
    assert_eq!(authority("Example.com:443", true), "example.com");
    assert_eq!(authority("example.com:8443", true), "example.com:8443");
    assert_eq!(max_age("public, max-age=600"), Some(600));
    assert_eq!(max_age("no-store"), None);
    let c = BotAuthConf::default();
    assert_eq!(cache_ttl(Some("max-age=600"), &c), Duration::from_secs(600));
    assert_eq!(
        cache_ttl(Some("max-age=0"), &c),
        Duration::from_secs(60),
        "floor"
    );
    assert_eq!(
        cache_ttl(Some("max-age=9999999"), &c),
        Duration::from_secs(86_400),
        "ceiling"
    );
    assert_eq!(cache_ttl(None, &c), Duration::from_secs(3_600), "default");
}

fn jwks(seed: &[u8; 32]) -> (String, String) {
    use base64::Engine;
    let pk = ed25519_dalek::SigningKey::from_bytes(seed)
        .verifying_key()
        .to_bytes();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pk);
    let t = Thumbprintable::OKP {
        crv: "Ed25519".into(),
        x: x.clone(),
    };
    (
        format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","use":"sig"}}]}}"#),
        t.b64_thumbprint(),
    )
}

fn conf() -> (BotAuthConf, TrustedAgent) {
    let agent = TrustedAgent {
        origin: "https://bot.example".into(),
        operator: "Example".into(),
        purpose: Some(Purpose::Training),
        directory: format!("https://bot.example{DIRECTORY_PATH}"),
    };
    (
        BotAuthConf {
            agents: vec![agent.clone()],
            ..Default::default()
        },
        agent,
    )
}

fn request<'a>(h: &'a HeaderMap) -> SignedRequest<'a> {
    SignedRequest {
        headers: h,
        authority: "site.example",
        method: "GET",
        scheme: "https",
        path: "/a",
        query: None,
    }
}

#[tokio::test]
async fn verifies_rejects_and_refuses_replays() {
    let seed = [3u8; 32];
    let (dir, kid) = jwks(&seed);
    let (conf, agent) = conf();
    let ring = parse_directory(dir.as_bytes(), unix_now()).expect("ring");
    let auth = BotAuth::default();
    auth.prime(&agent, ring, Duration::from_secs(60)).await;
    let signed = |agent_hdr: Option<&str>, nonce: &str, exp: Duration| {
        let (input, sig) = sign(&seed, &kid, "site.example", agent_hdr, exp, nonce);
        let mut h = HeaderMap::new();
        h.insert("signature-input", input.parse().expect("v"));
        h.insert("signature", sig.parse().expect("v"));
        if let Some(a) = agent_hdr {
            h.insert("signature-agent", a.parse().expect("v"));
        }
        h
    };
    let h = signed(
        Some("\"https://bot.example\""),
        "n1",
        Duration::from_secs(60),
    );
    let v = auth.verify(&conf, &request(&h)).await.expect("verified");
    assert_eq!(&*v.operator, "Example");
    // The same signature again.
    assert_eq!(
        auth.verify(&conf, &request(&h)).await,
        Err(BotAuthError::Replayed)
    );
    // Without Signature-Agent: keyid found among trusted directories.
    let h = signed(None, "n2", Duration::from_secs(60));
    assert!(auth.verify(&conf, &request(&h)).await.is_ok());
    // Another authority than the one signed.
    let h = signed(
        Some("\"https://bot.example\""),
        "n3",
        Duration::from_secs(60),
    );
    let mut other = request(&h);
    other.authority = "evil.example";
    assert_eq!(
        auth.verify(&conf, &other).await,
        Err(BotAuthError::BadSignature)
    );
    // An agent nobody trusts.
    let h = signed(
        Some("\"https://else.example\""),
        "n4",
        Duration::from_secs(60),
    );
    assert_eq!(
        auth.verify(&conf, &request(&h)).await,
        Err(BotAuthError::UntrustedAgent)
    );
    // Signature-Agent present but not covered: not a web-bot-auth signature.
    let mut h = signed(None, "n5", Duration::from_secs(60));
    h.insert(
        "signature-agent",
        "\"https://bot.example\"".parse().expect("v"),
    );
    assert_eq!(
        auth.verify(&conf, &request(&h)).await,
        Err(BotAuthError::MissingComponents)
    );
    // Too long a validity.
    let h = signed(
        Some("\"https://bot.example\""),
        "n6",
        Duration::from_secs(7200),
    );
    assert_eq!(
        auth.verify(&conf, &request(&h)).await,
        Err(BotAuthError::TooLong)
    );
    // Wrong key.
    let (input, sig) = sign(
        &[9u8; 32],
        &kid,
        "site.example",
        None,
        Duration::from_secs(60),
        "n7",
    );
    let mut h = HeaderMap::new();
    h.insert("signature-input", input.parse().expect("v"));
    h.insert("signature", sig.parse().expect("v"));
    assert_eq!(
        auth.verify(&conf, &request(&h)).await,
        Err(BotAuthError::BadSignature)
    );
    let mut junk = HeaderMap::new();
    junk.insert("signature-input", "nope".parse().expect("v"));
    junk.insert("signature", "nope".parse().expect("v"));
    assert_eq!(
        auth.verify(&conf, &request(&junk)).await,
        Err(BotAuthError::Malformed)
    );
    assert_eq!(
        auth.verify(&BotAuthConf::default(), &request(&junk)).await,
        Err(BotAuthError::Disabled)
    );
}

#[test]
fn directory_parsing_honours_key_validity() {
    let (dir, kid) = jwks(&[5u8; 32]);
    let ring = parse_directory(dir.as_bytes(), unix_now()).expect("ring");
    assert!(ring.get(&kid).is_some());
    let expired = dir.replace("\"use\":\"sig\"", "\"use\":\"sig\",\"exp\":1");
    let ring = parse_directory(expired.as_bytes(), unix_now()).expect("ring");
    assert!(ring.get(&kid).is_none());
    assert!(parse_directory(b"[]", 0).is_none());
}
