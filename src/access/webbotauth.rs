//! Web Bot Auth: verifies a request's RFC 9421 HTTP Message Signature (`Signature`,
//! `Signature-Input`, `Signature-Agent`; Ed25519; tag `web-bot-auth`) with Cloudflare's
//! `web-bot-auth` crate, against the key directory of an agent the configuration trusts
//! (fetched, cached per its Cache-Control), and refuses replays.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use sha2::{Digest, Sha256};
use web_bot_auth::components::{
    CoveredComponent, DerivedComponent, HTTPField, HTTPFieldParameters,
};
use web_bot_auth::keyring::{Algorithm, KeyRing, Thumbprintable};
use web_bot_auth::message_signatures::{MessageVerifier, SignedMessage};
use web_bot_auth::{ImplementationError, SignatureAgentLink, WebBotAuthVerifier};

use crate::access::audience::{Purpose, VerifiedAgent};

/// Where an agent publishes its keys, under its origin.
pub const DIRECTORY_PATH: &str = "/.well-known/http-message-signatures-directory";
/// Largest key directory read.
const MAX_DIRECTORY_BYTES: usize = 64 * 1024;
/// How long a failed directory fetch is remembered before the next try.
const FAILURE_BACKOFF: Duration = Duration::from_secs(10);

/// An agent whose signatures the gateway accepts (`[web_bot_auth] agents`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedAgent {
    /// `scheme://host[:port]`, lower case, no trailing slash.
    pub origin: Arc<str>,
    pub operator: Arc<str>,
    pub purpose: Option<Purpose>,
    /// The directory URL fetched (always under `origin`).
    pub directory: String,
}

/// The compiled `[web_bot_auth]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotAuthConf {
    pub agents: Vec<TrustedAgent>,
    /// Directory cache lifetime bounds and the default when the directory sends no max-age.
    pub min_cache: Duration,
    pub max_cache: Duration,
    pub default_cache: Duration,
    /// Longest accepted `expires - created`.
    pub max_validity: u64,
    /// Clock skew allowed on `created`.
    pub skew: u64,
    pub fetch_timeout: Duration,
}

impl Default for BotAuthConf {
    fn default() -> Self {
        BotAuthConf {
            agents: Vec::new(),
            min_cache: Duration::from_secs(60),
            max_cache: Duration::from_secs(86_400),
            default_cache: Duration::from_secs(3_600),
            max_validity: 3_600,
            skew: 60,
            fetch_timeout: Duration::from_secs(3),
        }
    }
}

impl BotAuthConf {
    pub fn enabled(&self) -> bool {
        !self.agents.is_empty()
    }

    fn agent(&self, origin: &str) -> Option<&TrustedAgent> {
        self.agents.iter().find(|a| &*a.origin == origin)
    }

    /// The operators configured, for validating `[rule.operators]`.
    pub fn operators(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.agents.iter().map(|a| &*a.operator).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// `scheme://host[:port]` of an http(s) URL, lower-cased, default port dropped.
pub fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.trim().parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let auth = uri.authority()?;
    if auth.as_str().contains('@') {
        return None;
    }
    let host = auth.host().to_ascii_lowercase();
    let port = match (auth.port_u16(), scheme.as_str()) {
        (Some(80), "http") | (Some(443), "https") | (None, _) => String::new(),
        (Some(p), _) => format!(":{p}"),
    };
    Some(format!("{scheme}://{host}{port}"))
}

/// Whether an origin's host is a loopback address or `localhost`.
pub fn is_loopback_origin(origin: &str) -> bool {
    let Ok(uri) = origin.parse::<http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why a signature does not verify. Each variant has one reason code (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BotAuthError {
    #[error("no agent is trusted ([web_bot_auth] has no agents)")]
    Disabled,
    #[error("malformed Signature, Signature-Input or Signature-Agent")]
    Malformed,
    #[error(
        "the signature is not a web-bot-auth signature covering @authority (and signature-agent)"
    )]
    MissingComponents,
    #[error("signature-agent is not a trusted agent")]
    UntrustedAgent,
    #[error("the agent's key directory could not be fetched")]
    DirectoryUnavailable,
    #[error("keyid is not in the agent's key directory")]
    UnknownKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("signature expired")]
    Expired,
    #[error("signature created in the future")]
    NotYetValid,
    #[error("signature validity is longer than allowed")]
    TooLong,
    #[error("signature was already used")]
    Replayed,
}

impl BotAuthError {
    pub fn reason(self) -> &'static str {
        match self {
            BotAuthError::Disabled => "disabled",
            BotAuthError::Malformed => "malformed",
            BotAuthError::MissingComponents => "missing_components",
            BotAuthError::UntrustedAgent => "untrusted_agent",
            BotAuthError::DirectoryUnavailable => "directory_unavailable",
            BotAuthError::UnknownKey => "unknown_key",
            BotAuthError::BadSignature => "bad_signature",
            BotAuthError::Expired => "expired",
            BotAuthError::NotYetValid => "not_yet_valid",
            BotAuthError::TooLong => "validity_too_long",
            BotAuthError::Replayed => "replayed",
        }
    }
}

/// Whether a request carries a signature at all (cheap; no parsing).
pub fn is_signed(headers: &HeaderMap) -> bool {
    headers.contains_key("signature-input") && headers.contains_key("signature")
}

/// A request as the signature sees it.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub headers: &'a HeaderMap,
    /// `@authority`: host[:port] as requested, lower case, default port dropped.
    pub authority: &'a str,
    pub method: &'a str,
    pub scheme: &'a str,
    /// Raw path as sent (`@path`).
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// `@authority` from a Host header value and the scheme.
pub fn authority(host: &str, https: bool) -> String {
    let h = host.trim().to_ascii_lowercase();
    let default = if https { ":443" } else { ":80" };
    match h.strip_suffix(default) {
        Some(s) => s.to_owned(),
        None => h,
    }
}

impl SignedRequest<'_> {
    fn field(&self, f: &HTTPField) -> Vec<String> {
        let values = self
            .headers
            .get_all(f.name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok());
        let key = f.parameters.0.iter().find_map(|p| match p {
            HTTPFieldParameters::Key(k) => Some(k.as_str()),
            _ => None,
        });
        if f.parameters
            .0
            .iter()
            .any(|p| matches!(p, HTTPFieldParameters::Bs | HTTPFieldParameters::Tr))
        {
            return Vec::new();
        }
        match key {
            None => values.map(|v| v.trim().to_owned()).collect(),
            Some(k) => {
                // The serialized value of one dictionary member (RFC 9421 §2.1.2).
                let joined: Vec<&str> = values.collect();
                let Ok(dict) = sfv::Parser::new(&joined.join(", ")).parse_dictionary() else {
                    return Vec::new();
                };
                use sfv::SerializeValue;
                dict.into_iter()
                    .find(|(name, _)| name.as_str() == k)
                    .and_then(|(_, entry)| match entry {
                        sfv::ListEntry::Item(item) => Some(item.serialize_value()),
                        inner @ sfv::ListEntry::InnerList(_) => vec![inner].serialize_value(),
                    })
                    .into_iter()
                    .collect()
            }
        }
    }
}

impl SignedMessage for SignedRequest<'_> {
    fn lookup_component(&self, name: &CoveredComponent) -> Vec<String> {
        let query = || {
            self.query
                .map_or_else(|| "?".to_owned(), |q| format!("?{q}"))
        };
        let one = |s: String| vec![s];
        match name {
            CoveredComponent::HTTP(f) => self.field(f),
            CoveredComponent::Derived(d) => match d {
                DerivedComponent::Authority { .. } => one(self.authority.to_owned()),
                DerivedComponent::Method { .. } => one(self.method.to_owned()),
                DerivedComponent::Scheme { .. } => one(self.scheme.to_owned()),
                DerivedComponent::Path { .. } => one(if self.path.is_empty() {
                    "/".into()
                } else {
                    self.path.to_owned()
                }),
                DerivedComponent::Query { .. } => one(query()),
                DerivedComponent::RequestTarget { .. } => one(match self.query {
                    Some(q) => format!("{}?{q}", self.path),
                    None => self.path.to_owned(),
                }),
                DerivedComponent::TargetUri { .. } => one(format!(
                    "{}://{}{}{}",
                    self.scheme,
                    self.authority,
                    self.path,
                    self.query.map_or_else(String::new, |q| format!("?{q}"))
                )),
                DerivedComponent::QueryParams { .. } | DerivedComponent::Status { .. } => {
                    Vec::new()
                }
            },
        }
    }
}

/// A fetched key directory, or a remembered failure.
#[derive(Debug)]
enum Directory {
    Keys {
        ring: KeyRing,
        fetched: Instant,
        ttl: Duration,
    },
    Failed,
}

struct DirectoryExpiry;

impl moka::Expiry<String, Arc<Directory>> for DirectoryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Directory>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match &**value {
            Directory::Keys { ttl, .. } => *ttl,
            Directory::Failed => FAILURE_BACKOFF,
        })
    }
}

struct UntilInstant;

impl moka::Expiry<[u8; 32], Instant> for UntilInstant {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Instant,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.saturating_duration_since(created_at))
    }
}

/// The runtime side: directory cache, replay memory, HTTP client.
pub struct BotAuth {
    http: reqwest::Client,
    directories: moka::future::Cache<String, Arc<Directory>>,
    seen: moka::sync::Cache<[u8; 32], Instant>,
}

impl std::fmt::Debug for BotAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotAuth").finish_non_exhaustive()
    }
}

impl Default for BotAuth {
    fn default() -> Self {
        // reqwest is built without a default TLS provider; the server installs ring at start,
        // `explain` and tests may not have.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            // Only the configured directory URL is fetched, never where it redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("x402-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        BotAuth {
            http,
            directories: moka::future::Cache::builder()
                .max_capacity(1_000)
                .expire_after(DirectoryExpiry)
                .build(),
            seen: moka::sync::Cache::builder()
                .max_capacity(2_000_000)
                .expire_after(UntilInstant)
                .build(),
        }
    }
}

/// Unix seconds now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `max-age` of a Cache-Control value.
fn max_age(cc: &str) -> Option<u64> {
    cc.split(',').find_map(|d| {
        let (k, v) = d.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
    })
}

/// How long a directory is cached: its max-age (or the default), within the floor and ceiling.
pub fn cache_ttl(cache_control: Option<&str>, conf: &BotAuthConf) -> Duration {
    cache_control
        .and_then(max_age)
        .map_or(conf.default_cache, Duration::from_secs)
        .clamp(conf.min_cache, conf.max_cache)
}

/// Parses a key directory (JWKS). Ed25519 keys valid now (`nbf`/`exp`) are imported under
/// their JWK thumbprint, and under their `kid` when it differs.
pub fn parse_directory(body: &[u8], now: i64) -> Option<KeyRing> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let keys = v.get("keys")?.as_array()?;
    let mut ring = KeyRing::default();
    for k in keys {
        let within = |field: &str, ok: fn(i64, i64) -> bool| {
            k.get(field)
                .and_then(serde_json::Value::as_i64)
                .is_none_or(|t| ok(t, now))
        };
        if !within("nbf", |t, now| t <= now) || !within("exp", |t, now| now < t) {
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Thumbprintable>(k.clone()) else {
            continue;
        };
        let (Ok(public), Ok(Algorithm::Ed25519)) = (jwk.public_key(), jwk.algorithm()) else {
            continue;
        };
        let thumb = jwk.b64_thumbprint();
        if let Some(kid) = k.get("kid").and_then(serde_json::Value::as_str)
            && kid != thumb
        {
            ring.import_raw(kid.to_owned(), Algorithm::Ed25519, public.clone());
        }
        ring.import_raw(thumb, Algorithm::Ed25519, public);
    }
    Some(ring)
}

/// A parsed signature, checked for shape and time, waiting for its key.
pub struct Parsed {
    verifier: WebBotAuthVerifier,
    /// Trusted agent origins to try, in order.
    candidates: Vec<Arc<str>>,
    keyid: String,
    replay_keys: [[u8; 32]; 2],
    until: Instant,
}

impl Parsed {
    pub fn keyid(&self) -> &str {
        &self.keyid
    }
}

/// Parses and checks everything that needs no key: shape, required components, time window,
/// and which trusted agent it names.
pub fn parse(
    conf: &BotAuthConf,
    req: &SignedRequest<'_>,
    now: i64,
) -> Result<Parsed, BotAuthError> {
    if !conf.enabled() {
        return Err(BotAuthError::Disabled);
    }
    let verifier = WebBotAuthVerifier::parse(req).map_err(|_| {
        // It parses as some signature, just not a web-bot-auth one covering what it must.
        if MessageVerifier::parse(req, |_| true).is_ok() {
            BotAuthError::MissingComponents
        } else {
            BotAuthError::Malformed
        }
    })?;
    let label = verifier.get_parsed_label();
    let d = &label.base.parameters.details;
    if d.algorithm
        .as_ref()
        .is_some_and(|a| *a != Algorithm::Ed25519)
    {
        return Err(BotAuthError::Malformed);
    }
    let (Some(created), Some(expires), Some(keyid)) = (d.created, d.expires, d.keyid.clone())
    else {
        return Err(BotAuthError::MissingComponents);
    };
    if created > now + conf.skew as i64 {
        return Err(BotAuthError::NotYetValid);
    }
    if expires <= now {
        return Err(BotAuthError::Expired);
    }
    if expires - created > conf.max_validity as i64 || expires < created {
        return Err(BotAuthError::TooLong);
    }
    let links = verifier.get_signature_agents();
    let candidates: Vec<Arc<str>> = if links.is_empty() {
        // No Signature-Agent: the keyid (a JWK thumbprint) is looked up in every trusted
        // agent's directory.
        conf.agents.iter().map(|a| a.origin.clone()).collect()
    } else {
        let trusted: Vec<Arc<str>> = links
            .iter()
            .filter_map(|l| match l {
                SignatureAgentLink::External(url) => origin_of(url),
                // Keys carried in the request prove nothing about who sent it.
                SignatureAgentLink::Inline(_) => None,
            })
            .filter_map(|o| conf.agent(&o).map(|a| a.origin.clone()))
            .collect();
        if trusted.is_empty() {
            return Err(BotAuthError::UntrustedAgent);
        }
        trusted
    };
    let sig_key: [u8; 32] = Sha256::digest(&label.signature).into();
    let nonce_key: [u8; 32] = {
        let mut h = Sha256::new();
        h.update(b"nonce\0");
        h.update(keyid.as_bytes());
        h.update([0]);
        h.update(d.nonce.as_deref().unwrap_or("").as_bytes());
        if d.nonce.is_none() {
            // No nonce: only the signature itself identifies a replay.
            h.update(label.signature.as_slice());
        }
        h.finalize().into()
    };
    let remaining = (expires - now + conf.skew as i64).max(1) as u64;
    Ok(Parsed {
        verifier,
        candidates,
        keyid,
        replay_keys: [sig_key, nonce_key],
        until: Instant::now() + Duration::from_secs(remaining),
    })
}

impl BotAuth {
    async fn fetch(&self, conf: &BotAuthConf, agent: &TrustedAgent) -> Arc<Directory> {
        let started = Instant::now();
        let result: Result<(KeyRing, Duration), String> = async {
            let resp = self
                .http
                .get(&agent.directory)
                .header(
                    "accept",
                    "application/http-message-signatures-directory+json, application/json",
                )
                .timeout(conf.fetch_timeout)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            let ttl = cache_ttl(
                resp.headers()
                    .get("cache-control")
                    .and_then(|v| v.to_str().ok()),
                conf,
            );
            let mut resp = resp;
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_DIRECTORY_BYTES {
                    return Err("directory too large".into());
                }
            }
            let ring = parse_directory(&body, unix_now()).ok_or("not a key directory")?;
            Ok((ring, ttl))
        }
        .await;
        match result {
            Ok((ring, ttl)) => {
                tracing::debug!(agent = %agent.origin, ttl = ttl.as_secs(), "key directory fetched");
                Arc::new(Directory::Keys {
                    ring,
                    fetched: started,
                    ttl,
                })
            }
            Err(e) => {
                tracing::warn!(agent = %agent.origin, directory = %agent.directory, error = %e, "cannot fetch key directory");
                Arc::new(Directory::Failed)
            }
        }
    }

    async fn directory(&self, conf: &BotAuthConf, agent: &TrustedAgent) -> Arc<Directory> {
        self.directories
            .get_with(agent.directory.clone(), self.fetch(conf, agent))
            .await
    }

    /// Finds the key for a parsed signature in its agent's directory, refetching once when a
    /// keyid is unknown and the cached copy is older than the cache floor (key rotation).
    async fn key_for(
        &self,
        conf: &BotAuthConf,
        p: &Parsed,
    ) -> Result<(Arc<Directory>, Arc<str>), BotAuthError> {
        let mut unavailable = false;
        for origin in &p.candidates {
            let Some(agent) = conf.agent(origin) else {
                continue;
            };
            let mut dir = self.directory(conf, agent).await;
            if let Directory::Keys { ring, fetched, .. } = &*dir
                && ring.get(&p.keyid).is_none()
                && fetched.elapsed() >= conf.min_cache
            {
                self.directories.invalidate(&agent.directory).await;
                dir = self.directory(conf, agent).await;
            }
            match &*dir {
                Directory::Keys { ring, .. } if ring.get(&p.keyid).is_some() => {
                    return Ok((dir.clone(), agent.origin.clone()));
                }
                Directory::Keys { .. } => {}
                Directory::Failed => unavailable = true,
            }
        }
        Err(if unavailable {
            BotAuthError::DirectoryUnavailable
        } else {
            BotAuthError::UnknownKey
        })
    }

    /// Verifies a request's signature: shape and time, the trusted agent's key, the Ed25519
    /// signature, then replay (the signature and its nonce are accepted once within their
    /// validity).
    pub async fn verify(
        &self,
        conf: &BotAuthConf,
        req: &SignedRequest<'_>,
    ) -> Result<VerifiedAgent, BotAuthError> {
        let parsed = parse(conf, req, unix_now())?;
        let (dir, origin) = self.key_for(conf, &parsed).await?;
        let Directory::Keys { ring, .. } = &*dir else {
            return Err(BotAuthError::DirectoryUnavailable);
        };
        self.finish(conf, parsed, ring, &origin)
    }

    /// The synchronous tail of [`Self::verify`], once the key is at hand.
    pub fn finish(
        &self,
        conf: &BotAuthConf,
        parsed: Parsed,
        ring: &KeyRing,
        origin: &str,
    ) -> Result<VerifiedAgent, BotAuthError> {
        let Parsed {
            verifier,
            replay_keys,
            until,
            ..
        } = parsed;
        verifier.verify(ring, None).map_err(|e| match e {
            ImplementationError::NoSuchKey => BotAuthError::UnknownKey,
            ImplementationError::FailedToVerify(_)
            | ImplementationError::InvalidSignatureLength
            | ImplementationError::InvalidKeyLength => BotAuthError::BadSignature,
            _ => BotAuthError::Malformed,
        })?;
        for key in replay_keys {
            if !self.seen.entry(key).or_insert_with(|| until).is_fresh() {
                return Err(BotAuthError::Replayed);
            }
        }
        let agent = conf.agent(origin).ok_or(BotAuthError::UntrustedAgent)?;
        Ok(VerifiedAgent {
            origin: agent.origin.clone(),
            operator: agent.operator.clone(),
            purpose: agent.purpose,
        })
    }

    /// Puts a directory in the cache (benchmarks and tests: verification with a cached key).
    pub async fn prime(&self, agent: &TrustedAgent, ring: KeyRing, ttl: Duration) {
        self.directories
            .insert(
                agent.directory.clone(),
                Arc::new(Directory::Keys {
                    ring,
                    fetched: Instant::now(),
                    ttl,
                }),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signing::sign;

    /// Signing helpers for tests (the crate's own signer).
    pub(crate) mod signing {
        use super::super::*;
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
}
