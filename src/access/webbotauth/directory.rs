//! Key directories of trusted agents: fetched over HTTP (no redirects, size-capped), parsed
//! as JWKS, cached for their Cache-Control lifetime within the configured bounds, failures
//! remembered briefly, refetched once when a key is unknown (rotation).

use std::sync::Arc;
use std::time::{Duration, Instant};

use web_bot_auth::keyring::{Algorithm, KeyRing, Thumbprintable};

use super::{BotAuth, BotAuthConf, BotAuthError, Parsed, TrustedAgent, unix_now};

/// Largest key directory read.
const MAX_DIRECTORY_BYTES: usize = 64 * 1024;
/// How long a failed directory fetch is remembered before the next try.
const FAILURE_BACKOFF: Duration = Duration::from_secs(10);

/// A fetched key directory, or a remembered failure.
#[derive(Debug)]
pub(super) enum Directory {
    Keys {
        ring: KeyRing,
        fetched: Instant,
        ttl: Duration,
    },
    Failed,
}

pub(super) struct DirectoryExpiry;

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

/// `max-age` of a Cache-Control value.
pub(super) fn max_age(cc: &str) -> Option<u64> {
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
    pub(super) async fn key_for(
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
