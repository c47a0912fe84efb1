//! Web Bot Auth: verifies a request's RFC 9421 HTTP Message Signature (`Signature`,
//! `Signature-Input`, `Signature-Agent`; Ed25519; tag `web-bot-auth`) with Cloudflare's
//! `web-bot-auth` crate, against the key directory of an agent the configuration trusts
//! (fetched, cached per its Cache-Control), and refuses replays.
//!
//! `message.rs` reads the signed request and checks what needs no key, `directory.rs` finds
//! the key; this file holds the configuration, the reason codes and the verification itself.

mod directory;
mod message;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use web_bot_auth::ImplementationError;
use web_bot_auth::keyring::KeyRing;

use crate::access::audience::{Purpose, VerifiedAgent};
use crate::state::StateStore;
use directory::{Directory, DirectoryExpiry};
pub use directory::{cache_ttl, parse_directory};
pub use message::{Parsed, SignedRequest, authority, is_signed, parse};

/// Where an agent publishes its keys, under its origin.
pub const DIRECTORY_PATH: &str = "/.well-known/http-message-signatures-directory";

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
    #[error("the shared replay memory did not answer")]
    StateUnavailable,
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
            BotAuthError::StateUnavailable => "state_unavailable",
        }
    }
}

/// Replay memory entries live until the signature they remember expires.
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

impl BotAuth {
    /// Verifies a request's signature: shape and time, the trusted agent's key, the Ed25519
    /// signature, then replay (the signature and its nonce are accepted once within their
    /// validity).
    pub async fn verify(
        &self,
        conf: &BotAuthConf,
        req: &SignedRequest<'_>,
    ) -> Result<VerifiedAgent, BotAuthError> {
        self.verify_with(conf, req, None).await
    }

    /// [`Self::verify`], with the replay memory shared by every replica using `shared` as
    /// well as this process's own: a signature is accepted once across all of them. A store
    /// that does not answer makes the signature count as unverified.
    pub async fn verify_shared(
        &self,
        conf: &BotAuthConf,
        req: &SignedRequest<'_>,
        shared: &dyn StateStore,
    ) -> Result<VerifiedAgent, BotAuthError> {
        self.verify_with(conf, req, Some(shared)).await
    }

    async fn verify_with(
        &self,
        conf: &BotAuthConf,
        req: &SignedRequest<'_>,
        shared: Option<&dyn StateStore>,
    ) -> Result<VerifiedAgent, BotAuthError> {
        let parsed = parse(conf, req, unix_now())?;
        let (keys, until) = (parsed.replay_keys, parsed.until_unix);
        let (dir, origin) = self.key_for(conf, &parsed).await?;
        let Directory::Keys { ring, .. } = &*dir else {
            return Err(BotAuthError::DirectoryUnavailable);
        };
        let agent = self.finish(conf, parsed, ring, &origin)?;
        let Some(shared) = shared else {
            return Ok(agent);
        };
        for key in keys {
            match shared.first_seen(&key, until).await {
                Ok(true) => {}
                Ok(false) => return Err(BotAuthError::Replayed),
                Err(_) => return Err(BotAuthError::StateUnavailable),
            }
        }
        Ok(agent)
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
}
