//! Passes: compact signed tokens issued after a settled payment that let the payer's next
//! requests through without paying again, bound to a scope, methods, an expiry and a request
//! quota. Verified locally (HMAC-SHA256 or Ed25519, several verification keys for rotation);
//! quotas and runtime revocations are kept in the state store.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::router::Methods;
use crate::state::{Quota, StateStore};

type HmacSha256 = Hmac<Sha256>;

/// Every token starts with this (so a `Bearer` value that is not a pass is left alone).
pub const TOKEN_PREFIX: &str = "x402p1.";
/// Request and response header carrying a pass for agents.
pub const HEADER: &str = "x402-pass";
/// Response header: requests left on the pass that admitted this request.
pub const HEADER_REMAINING: &str = "x402-pass-remaining";
/// Longest pass lifetime accepted in configuration.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Longest token accepted.
const MAX_TOKEN_BYTES: usize = 2048;
/// Tokens tried per request (cookies with the same name for different paths, plus headers).
const MAX_PRESENTED: usize = 4;
/// Clock skew allowed on `iat`.
const SKEW_SECONDS: u64 = 60;

/// Why a pass does not admit a request. Each variant has one reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PassError {
    #[error("the pass is not a well-formed token")]
    Malformed,
    #[error("the pass was signed with an unknown key")]
    UnknownKey,
    #[error("the pass signature is invalid")]
    BadSignature,
    #[error("the pass is not valid yet")]
    NotYetValid,
    #[error("the pass has expired")]
    Expired,
    #[error("the pass does not cover this request")]
    OutOfScope,
    /// Bought under another rule for less than this request costs (or in another asset).
    #[error("the pass was bought for less than this request costs")]
    Insufficient,
    #[error("the pass has no requests left")]
    Exhausted,
    #[error("the pass was revoked")]
    Revoked,
    /// The state store (quotas, revocations) could not be read.
    #[error("passes cannot be checked right now")]
    Unavailable,
}

impl PassError {
    /// Stable reason code (the 402's `error`, logs, metrics).
    pub fn reason(self) -> &'static str {
        match self {
            PassError::Malformed
            | PassError::UnknownKey
            | PassError::BadSignature
            | PassError::NotYetValid => "pass_invalid",
            PassError::Expired => "pass_expired",
            PassError::OutOfScope => "pass_out_of_scope",
            PassError::Insufficient => "pass_insufficient",
            PassError::Exhausted => "pass_exhausted",
            PassError::Revoked => "pass_revoked",
            PassError::Unavailable => "state_unavailable",
        }
    }

    /// Which error to report when several presented passes fail: the one most about this
    /// request (an expired pass for this page beats a pass for another page).
    fn rank(self) -> u8 {
        match self {
            PassError::OutOfScope | PassError::Insufficient => 0,
            PassError::Malformed | PassError::UnknownKey | PassError::BadSignature => 1,
            PassError::NotYetValid => 2,
            PassError::Expired | PassError::Exhausted | PassError::Revoked => 3,
            PassError::Unavailable => 4,
        }
    }
}

/// How passes are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Algorithm {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "ed25519")]
    Ed25519,
}

enum Verifier {
    Hmac(HmacSha256),
    Ed25519(ed25519_dalek::VerifyingKey),
}

enum Signer {
    Hmac(HmacSha256),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// A key from `[[passes.keys]]`.
pub enum KeyMaterial {
    /// HMAC secret (at least 32 bytes).
    Hmac(Vec<u8>),
    /// Ed25519 private key (signs and verifies).
    Ed25519Private([u8; 32]),
    /// Ed25519 public key (verifies only).
    Ed25519Public([u8; 32]),
}

/// The compiled `[passes]` section. Key material never appears in Debug output.
pub struct PassKeys {
    pub algorithm: Algorithm,
    /// Id of the key that signs new passes (`None`: this gateway only verifies).
    pub signing_kid: Option<String>,
    signer: Option<Signer>,
    /// Key id, verifier, and a fingerprint of the key (what the verified-token cache is keyed
    /// on besides the token, so that a cached token ends with its key).
    verifiers: Vec<(String, Verifier, [u8; 32])>,
    /// Cookie name for browsers.
    pub cookie: String,
    /// Pass ids revoked in configuration.
    pub revoked: HashSet<String>,
}

impl std::fmt::Debug for PassKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassKeys")
            .field("algorithm", &self.algorithm)
            .field("signing_kid", &self.signing_kid)
            .field("kids", &self.kids())
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

impl PassKeys {
    /// Builds the key set. `keys` are (id, material); `signing` names the signing key.
    pub fn new(
        algorithm: Algorithm,
        keys: Vec<(String, KeyMaterial)>,
        signing: Option<&str>,
        cookie: String,
        revoked: HashSet<String>,
    ) -> Result<PassKeys, String> {
        let mut verifiers = Vec::new();
        let mut signer = None;
        for (kid, m) in keys {
            let is_signer = signing == Some(kid.as_str());
            match (algorithm, m) {
                (Algorithm::HmacSha256, KeyMaterial::Hmac(secret)) => {
                    let mac = HmacSha256::new_from_slice(&secret).map_err(|e| e.to_string())?;
                    if is_signer {
                        signer = Some(Signer::Hmac(mac.clone()));
                    }
                    let print = fingerprint(b"hmac-sha256", &secret);
                    verifiers.push((kid, Verifier::Hmac(mac), print));
                }
                (Algorithm::Ed25519, KeyMaterial::Ed25519Private(seed)) => {
                    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
                    let vk = sk.verifying_key();
                    let print = fingerprint(b"ed25519", vk.as_bytes());
                    verifiers.push((kid, Verifier::Ed25519(vk), print));
                    if is_signer {
                        signer = Some(Signer::Ed25519(Box::new(sk)));
                    }
                }
                (Algorithm::Ed25519, KeyMaterial::Ed25519Public(pk)) => {
                    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk)
                        .map_err(|e| format!("key `{kid}`: {e}"))?;
                    if is_signer {
                        return Err(format!("key `{kid}` has only a public key and cannot sign"));
                    }
                    let print = fingerprint(b"ed25519", vk.as_bytes());
                    verifiers.push((kid, Verifier::Ed25519(vk), print));
                }
                (_, _) => return Err(format!("key `{kid}` does not fit the algorithm")),
            }
        }
        if signing.is_some() && signer.is_none() {
            return Err("the signing key is not among the keys".into());
        }
        Ok(PassKeys {
            algorithm,
            signing_kid: signing.map(str::to_owned),
            signer,
            verifiers,
            cookie,
            revoked,
        })
    }

    /// The key ids, for `/config`.
    pub fn kids(&self) -> Vec<&str> {
        self.verifiers.iter().map(|(k, _, _)| k.as_str()).collect()
    }

    /// Whether this gateway can issue passes.
    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    fn verifier(&self, kid: &str) -> Option<&Verifier> {
        self.verifiers
            .iter()
            .find(|(k, _, _)| k == kid)
            .map(|(_, v, _)| v)
    }

    fn fingerprint(&self, kid: &str) -> Option<&[u8; 32]> {
        self.verifiers
            .iter()
            .find(|(k, _, _)| k == kid)
            .map(|(_, _, f)| f)
    }
}

/// A digest that names a key without revealing it.
fn fingerprint(kind: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(kind);
    h.update([0]);
    h.update(key);
    h.finalize().into()
}

/// The key id a token names (`x402p1.<kid>.…`).
fn token_kid(token: &str) -> Result<&str, PassError> {
    token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|b| b.split_once('.'))
        .map(|(kid, _)| kid)
        .ok_or(PassError::Malformed)
}

/// What a pass covers, besides its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScopeKind {
    /// The one path it was bought for.
    #[serde(rename = "res")]
    Resource,
    /// Everything the rule it was bought under matches.
    #[serde(rename = "rule")]
    Rule,
    /// Every path under a prefix.
    #[serde(rename = "pre")]
    Prefix,
}

/// A rule's `pass = { … }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassPolicy {
    pub ttl: Duration,
    pub scope: ScopeKind,
    /// For `prefix` scope: the prefix in routing-key form (`/articles/`).
    pub prefix: Option<String>,
    /// Methods the pass admits (`ANY`: every method).
    pub methods: Methods,
    /// Requests the pass admits after the paid one (`None`: unlimited until expiry).
    pub max_requests: Option<u32>,
    /// Cookie `Path` for `rule` and `prefix` scopes (the resource's path for `resource`).
    pub cookie_path: String,
}

/// What a pass says. Short field names keep the token small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Random id (base64url of 16 bytes): the quota key and what revocation names.
    pub id: String,
    /// Rule id it was bought under.
    #[serde(rename = "r")]
    pub rule: String,
    /// Host it is valid for.
    #[serde(rename = "h")]
    pub host: String,
    #[serde(rename = "s")]
    pub scope: ScopeKind,
    /// Resource routing key (`res`) or prefix (`pre`); empty for `rule`.
    #[serde(rename = "p")]
    pub path: String,
    /// Method bits (see [`Methods`]); 0 = any.
    #[serde(rename = "m")]
    pub methods: u16,
    pub iat: u64,
    pub exp: u64,
    /// Requests admitted; 0 = unlimited.
    #[serde(rename = "n")]
    pub max_requests: u32,
    /// Who paid.
    #[serde(rename = "by")]
    pub payer: String,
    /// What was paid for it: another rule honours the pass only where it costs no more.
    #[serde(rename = "pd", default, skip_serializing_if = "Option::is_none")]
    pub paid: Option<Paid>,
}

/// The payment a pass was bought with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paid {
    /// CAIP-2 network.
    #[serde(rename = "n")]
    pub network: String,
    /// Token address, lower case.
    #[serde(rename = "t")]
    pub asset: String,
    /// Atomic units.
    #[serde(rename = "a")]
    pub amount: u128,
}

/// Where a request goes, for scope checks.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Normalized host (no port, lower case).
    pub host: &'a str,
    pub rule: &'a str,
    /// Routing key of the path (canonical, lower-cased unless case-sensitive).
    pub key: &'a str,
    /// Method bit ([`Methods::bit`]).
    pub method: u16,
    /// What this request costs, as (network, asset in lower case, atomic amount) offers: a
    /// pass bought under another rule admits it only if it paid at least as much in one.
    pub price: &'a [(String, String, u128)],
    /// Rules whose passes this rule honours at any price (`accept_passes_from`; `*`: all).
    pub honours: &'a [String],
}

impl Claims {
    /// Whether this pass covers a request.
    pub fn covers(&self, t: &Target<'_>) -> Result<(), PassError> {
        if self.host != t.host {
            return Err(PassError::OutOfScope);
        }
        let mut method = t.method;
        if method == Methods::bit("HEAD") {
            method |= Methods::bit("GET");
        }
        if !Methods(self.methods).matches(method) {
            return Err(PassError::OutOfScope);
        }
        let ok = match self.scope {
            ScopeKind::Resource => self.path == t.key,
            ScopeKind::Rule => self.rule == t.rule,
            ScopeKind::Prefix => under_prefix(t.key, &self.path),
        };
        if !ok {
            return Err(PassError::OutOfScope);
        }
        if self.rule == t.rule || t.honours.iter().any(|r| r == "*" || *r == self.rule) {
            return Ok(());
        }
        // Another rule (a dearer one inside the prefix, a rule that took over a resource on
        // reload): only where this pass paid at least its price, in the same asset.
        let covered = self.paid.as_ref().is_some_and(|p| {
            t.price.iter().any(|(network, asset, amount)| {
                *network == p.network && *asset == p.asset && *amount <= p.amount
            })
        });
        if covered {
            Ok(())
        } else {
            Err(PassError::Insufficient)
        }
    }
}

/// Whether a routing key lies under a prefix (`/a/` covers `/a` and `/a/b`, not `/ab`).
pub fn under_prefix(key: &str, prefix: &str) -> bool {
    let bare = prefix.trim_end_matches('/');
    if bare.is_empty() {
        return true;
    }
    match key.strip_prefix(bare) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Signs claims into a token: `x402p1.<kid>.<payload>.<signature>` (base64url).
pub fn mint(keys: &PassKeys, claims: &Claims) -> Option<String> {
    let kid = keys.signing_kid.as_deref()?;
    let payload = serde_json::to_vec(claims).ok()?;
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + kid.len() + payload.len() * 2);
    token.push_str(TOKEN_PREFIX);
    token.push_str(kid);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let sig = match keys.signer.as_ref()? {
        Signer::Hmac(mac) => {
            let mut m = mac.clone();
            m.update(token.as_bytes());
            m.finalize().into_bytes().to_vec()
        }
        Signer::Ed25519(sk) => {
            use ed25519_dalek::Signer as _;
            sk.sign(token.as_bytes()).to_bytes().to_vec()
        }
    };
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&sig, &mut token);
    Some(token)
}

/// Checks a token's signature and time window (and configured revocations); returns its claims.
pub fn verify(keys: &PassKeys, token: &str, now: u64) -> Result<Claims, PassError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(PassError::Malformed);
    }
    let body = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(PassError::Malformed)?;
    let (signed, sig_b64) = token.rsplit_once('.').ok_or(PassError::Malformed)?;
    let (kid, rest) = body.split_once('.').ok_or(PassError::Malformed)?;
    let payload_b64 = rest
        .rsplit_once('.')
        .map(|(p, _)| p)
        .ok_or(PassError::Malformed)?;
    let verifier = keys.verifier(kid).ok_or(PassError::UnknownKey)?;
    let mut sig = [0u8; 64];
    let n = URL_SAFE_NO_PAD
        .decode_slice(sig_b64, &mut sig)
        .map_err(|_| PassError::Malformed)?;
    match verifier {
        Verifier::Hmac(mac) => {
            let mut m = mac.clone();
            m.update(signed.as_bytes());
            m.verify_slice(&sig[..n])
                .map_err(|_| PassError::BadSignature)?;
        }
        Verifier::Ed25519(vk) => {
            let s = ed25519_dalek::Signature::from_slice(&sig[..n])
                .map_err(|_| PassError::BadSignature)?;
            vk.verify_strict(signed.as_bytes(), &s)
                .map_err(|_| PassError::BadSignature)?;
        }
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| PassError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| PassError::Malformed)?;
    check_time(&claims, now)?;
    if keys.revoked.contains(&claims.id) {
        return Err(PassError::Revoked);
    }
    Ok(claims)
}

fn check_time(c: &Claims, now: u64) -> Result<(), PassError> {
    if c.iat > now + SKEW_SECONDS {
        return Err(PassError::NotYetValid);
    }
    if now >= c.exp {
        return Err(PassError::Expired);
    }
    Ok(())
}

/// The pass tokens a request presents: the `X402-Pass` header, `Authorization: Bearer x402p1.…`,
/// and cookies named `cookie` (browsers send one per matching path). At most a few.
pub fn presented<'a>(headers: &'a HeaderMap, cookie: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for v in headers.get_all(HEADER) {
        if let Ok(s) = v.to_str() {
            out.push(s.trim());
        }
    }
    for v in headers.get_all(http::header::AUTHORIZATION) {
        if let Some(t) = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.starts_with(TOKEN_PREFIX))
        {
            out.push(t);
        }
    }
    for v in headers.get_all(http::header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, val)) = pair.split_once('=')
                && k.trim() == cookie
            {
                out.push(val.trim().trim_matches('"'));
            }
        }
    }
    out.truncate(MAX_PRESENTED);
    out
}

/// A `Cookie` header value without the pass cookies, or `None` when nothing is left.
pub fn cookie_without(value: &str, cookie: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.split_once('=').is_none_or(|(k, _)| k.trim() != cookie))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// A pass that admitted a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub id: String,
    /// Requests left after this one (`None`: unlimited).
    pub remaining: Option<u32>,
    pub expires: u64,
}

/// Pass checks shared by every request: verified tokens are cached in this process (a
/// token's signature is checked and its claims parsed once); request quotas and runtime
/// revocations live in the state store.
pub struct PassEngine {
    verified: moka::sync::Cache<[u8; 32], Arc<Claims>>,
}

impl std::fmt::Debug for PassEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassEngine").finish_non_exhaustive()
    }
}

impl Default for PassEngine {
    fn default() -> Self {
        PassEngine {
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl PassEngine {
    fn claims(&self, keys: &PassKeys, token: &str, now: u64) -> Result<Arc<Claims>, PassError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(PassError::Malformed);
        }
        // Cached under the token and its key's fingerprint: a reload that drops the key or
        // binds its id to another key misses the cache and fails verification.
        let key = keys
            .fingerprint(token_kid(token)?)
            .ok_or(PassError::UnknownKey)?;
        let mut h = Sha256::new();
        h.update(key);
        h.update(token.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        if let Some(c) = self.verified.get(&digest) {
            check_time(&c, now)?;
            if keys.revoked.contains(&c.id) {
                return Err(PassError::Revoked);
            }
            return Ok(c);
        }
        let c = Arc::new(verify(keys, token, now)?);
        self.verified.insert(digest, c.clone());
        Ok(c)
    }

    /// Checks one token for a request; `consume` counts the request against the quota
    /// (shadow mode only looks).
    pub async fn admit_one(
        &self,
        keys: &PassKeys,
        state: &dyn StateStore,
        token: &str,
        target: &Target<'_>,
        consume: bool,
        now: u64,
    ) -> Result<Admitted, PassError> {
        let c = self.claims(keys, token, now)?;
        if state
            .revoked(&c.id)
            .await
            .map_err(|_| PassError::Unavailable)?
        {
            return Err(PassError::Revoked);
        }
        c.covers(target)?;
        let remaining = if c.max_requests == 0 {
            None
        } else {
            match state
                .use_quota(&c.id, c.max_requests, c.exp, consume)
                .await
                .map_err(|_| PassError::Unavailable)?
            {
                Quota::Left(n) => Some(n),
                Quota::Exhausted => return Err(PassError::Exhausted),
            }
        };
        Ok(Admitted {
            id: c.id.clone(),
            remaining,
            expires: c.exp,
        })
    }

    /// Tries each presented token; the first that admits the request wins. Otherwise the most
    /// relevant failure.
    pub async fn admit(
        &self,
        keys: &PassKeys,
        state: &dyn StateStore,
        tokens: &[&str],
        target: &Target<'_>,
        consume: bool,
    ) -> Result<Admitted, PassError> {
        let now = unix_now();
        let mut worst: Option<PassError> = None;
        for t in tokens {
            match self.admit_one(keys, state, t, target, consume, now).await {
                Ok(a) => return Ok(a),
                Err(e) => {
                    if worst.is_none_or(|w| e.rank() > w.rank()) {
                        worst = Some(e);
                    }
                }
            }
        }
        Err(worst.unwrap_or(PassError::Malformed))
    }
}

/// A fresh pass id: 16 random bytes, base64url.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: fall back to a hash of the time and address space layout.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let h = Sha256::digest(format!("{t}{:p}", &b).as_bytes());
        b.copy_from_slice(&h[..16]);
    }
    URL_SAFE_NO_PAD.encode(b)
}

/// `Set-Cookie` for a pass.
pub fn set_cookie(name: &str, token: &str, path: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={token}; Max-Age={max_age}; Path={path}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    /// The engine with an in-memory state store, driven synchronously.
    #[derive(Default)]
    struct TestEngine {
        engine: PassEngine,
        store: MemoryStore,
    }

    impl TestEngine {
        fn run<T>(f: impl std::future::Future<Output = T>) -> T {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
                .block_on(f)
        }

        fn admit(
            &self,
            keys: &PassKeys,
            tokens: &[&str],
            target: &Target<'_>,
            consume: bool,
        ) -> Result<Admitted, PassError> {
            Self::run(
                self.engine
                    .admit(keys, &self.store, tokens, target, consume),
            )
        }

        fn revoke(&self, id: &str) {
            Self::run(self.store.revoke(id, unix_now() + 60)).expect("revoke");
        }

        fn claims(&self, keys: &PassKeys, token: &str, now: u64) -> Result<Arc<Claims>, PassError> {
            self.engine.claims(keys, token, now)
        }
    }

    fn hmac_keys(signing: &str) -> PassKeys {
        PassKeys::new(
            Algorithm::HmacSha256,
            vec![
                ("k1".into(), KeyMaterial::Hmac(vec![1u8; 32])),
                ("k2".into(), KeyMaterial::Hmac(vec![2u8; 32])),
            ],
            Some(signing),
            "x402_pass".into(),
            HashSet::new(),
        )
        .expect("keys")
    }

    fn single_key(algorithm: Algorithm, kid: &str, m: KeyMaterial, signs: bool) -> PassKeys {
        PassKeys::new(
            algorithm,
            vec![(kid.into(), m)],
            signs.then_some(kid),
            "x402_pass".into(),
            HashSet::new(),
        )
        .expect("keys")
    }

    #[test]
    fn a_verified_token_does_not_outlive_its_key() {
        // The verified-token cache lives across reloads; a reload that drops a key, or binds
        // its id to another key, must end the passes that key signed at once.
        for algorithm in [Algorithm::Ed25519, Algorithm::HmacSha256] {
            let material = |b: u8| match algorithm {
                Algorithm::Ed25519 => KeyMaterial::Ed25519Private([b; 32]),
                Algorithm::HmacSha256 => KeyMaterial::Hmac(vec![b; 32]),
            };
            let old = single_key(algorithm, "k1", material(7), true);
            let engine = TestEngine::default();
            let now = unix_now();
            let token = mint(&old, &claims(ScopeKind::Rule, "/", now + 600, 0)).expect("mint");
            assert!(engine.claims(&old, &token, now).is_ok(), "{algorithm:?}");
            assert!(
                engine.claims(&old, &token, now).is_ok(),
                "{algorithm:?} cached"
            );

            let rebound = single_key(algorithm, "k1", material(8), true);
            assert_eq!(
                engine.claims(&rebound, &token, now).err(),
                Some(PassError::BadSignature),
                "{algorithm:?}: k1 now names another key"
            );
            let dropped = single_key(algorithm, "k2", material(7), true);
            assert_eq!(
                engine.claims(&dropped, &token, now).err(),
                Some(PassError::UnknownKey),
                "{algorithm:?}: k1 is gone"
            );
            // The old configuration still accepts it (from the cache).
            assert!(engine.claims(&old, &token, now).is_ok(), "{algorithm:?}");
        }
    }

    fn claims(scope: ScopeKind, path: &str, exp: u64, n: u32) -> Claims {
        Claims {
            id: new_id(),
            rule: "articles".into(),
            host: "example.com".into(),
            scope,
            path: path.into(),
            methods: Methods::bit("GET"),
            iat: unix_now(),
            exp,
            max_requests: n,
            payer: "0xabc".into(),
            paid: Some(Paid {
                network: "eip155:8453".into(),
                asset: "0xaa".into(),
                amount: 100,
            }),
        }
    }

    fn price(points: &[(&str, &str, u128)]) -> Vec<(String, String, u128)> {
        points
            .iter()
            .map(|(n, a, x)| (n.to_string(), a.to_string(), *x))
            .collect()
    }

    /// What every test target costs: exactly what [`claims`] paid.
    static PRICE: std::sync::LazyLock<Vec<(String, String, u128)>> =
        std::sync::LazyLock::new(|| price(&[("eip155:8453", "0xaa", 100)]));

    fn target<'a>(key: &'a str, rule: &'a str, method: &str) -> Target<'a> {
        Target {
            host: "example.com",
            rule,
            key,
            method: Methods::bit(method),
            price: &PRICE,
            honours: &[],
        }
    }

    #[test]
    fn another_rule_honours_a_pass_only_at_no_higher_price() {
        let keys = hmac_keys("k1");
        let engine = TestEngine::default();
        let now = unix_now();
        let pre = mint(&keys, &claims(ScopeKind::Prefix, "/articles/", now + 60, 0)).expect("m");
        let at = |rule: &str, points: &[(&str, &str, u128)], honours: &[String]| {
            let points = price(points);
            let t = Target {
                price: &points,
                honours,
                ..target("/articles/premium/1", rule, "GET")
            };
            engine.admit(&keys, &[&pre], &t, false).map(|_| ())
        };
        // The rule that sold it: always, whatever it costs now.
        assert_eq!(at("articles", &[("eip155:8453", "0xaa", 500)], &[]), Ok(()));
        // Another rule at the same or a lower price in the same asset.
        assert_eq!(at("premium", &[("eip155:8453", "0xaa", 100)], &[]), Ok(()));
        assert_eq!(
            at(
                "premium",
                &[("eip155:1", "0xbb", 1), ("eip155:8453", "0xaa", 99)],
                &[]
            ),
            Ok(())
        );
        // Dearer, another asset or network, or free of offers: not covered.
        let insufficient = Err(PassError::Insufficient);
        assert_eq!(
            at("premium", &[("eip155:8453", "0xaa", 101)], &[]),
            insufficient
        );
        assert_eq!(
            at("premium", &[("eip155:8453", "0xbb", 1)], &[]),
            insufficient
        );
        assert_eq!(at("premium", &[("eip155:1", "0xaa", 1)], &[]), insufficient);
        assert_eq!(at("premium", &[], &[]), insufficient);
        assert_eq!(PassError::Insufficient.reason(), "pass_insufficient");
        // Unless that rule opts in, by name or for every rule.
        let dear = [("eip155:8453", "0xaa", 10_000)];
        assert_eq!(at("premium", &dear, &["articles".into()]), Ok(()));
        assert_eq!(at("premium", &dear, &["*".into()]), Ok(()));
        assert_eq!(at("premium", &dear, &["other".into()]), insufficient);
        // A pass that does not say what it paid is honoured by its own rule only.
        let mut unpriced = claims(ScopeKind::Prefix, "/articles/", now + 60, 0);
        unpriced.paid = None;
        let tok = mint(&keys, &unpriced).expect("m");
        let t = target("/articles/1", "premium", "GET");
        assert_eq!(
            engine.admit(&keys, &[&tok], &t, false).map(|_| ()),
            insufficient
        );
        let own = target("/articles/1", "articles", "GET");
        assert!(engine.admit(&keys, &[&tok], &own, false).is_ok());
    }

    #[test]
    fn mint_verify_rotate_and_forge() {
        let now = unix_now();
        let c = claims(ScopeKind::Resource, "/articles/1", now + 60, 0);
        let old = hmac_keys("k1");
        let token = mint(&old, &c).expect("mint");
        assert!(token.starts_with("x402p1.k1."));
        // Rotation: the new signing key is k2; passes signed with k1 still verify.
        let new = hmac_keys("k2");
        assert_eq!(verify(&new, &token, now), Ok(c.clone()));
        let t2 = mint(&new, &c).expect("mint");
        assert!(t2.starts_with("x402p1.k2."));
        // Forgery: any change to the payload breaks the signature.
        let mut forged = c.clone();
        forged.max_requests = 1000;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("x402p1.k1.{forged_payload}.{}", parts[3]);
        assert_eq!(verify(&new, &tampered, now), Err(PassError::BadSignature));
        // Unknown key, garbage, expiry.
        let other = PassKeys::new(
            Algorithm::HmacSha256,
            vec![("k9".into(), KeyMaterial::Hmac(vec![9u8; 32]))],
            Some("k9"),
            "x402_pass".into(),
            HashSet::new(),
        )
        .expect("keys");
        assert_eq!(verify(&other, &token, now), Err(PassError::UnknownKey));
        assert_eq!(verify(&new, "x402p1.k1", now), Err(PassError::Malformed));
        assert_eq!(verify(&new, "nope", now), Err(PassError::Malformed));
        assert_eq!(verify(&new, &token, now + 60), Err(PassError::Expired));
        assert_eq!(PassError::Expired.reason(), "pass_expired");
        assert_eq!(PassError::BadSignature.reason(), "pass_invalid");
    }

    #[test]
    fn ed25519_passes_and_verify_only_keys() {
        let seed = [7u8; 32];
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        let signer = PassKeys::new(
            Algorithm::Ed25519,
            vec![("e1".into(), KeyMaterial::Ed25519Private(seed))],
            Some("e1"),
            "p".into(),
            HashSet::new(),
        )
        .expect("keys");
        let verifier_only = PassKeys::new(
            Algorithm::Ed25519,
            vec![("e1".into(), KeyMaterial::Ed25519Public(public))],
            None,
            "p".into(),
            HashSet::new(),
        )
        .expect("keys");
        assert!(!verifier_only.can_sign());
        let now = unix_now();
        let c = claims(ScopeKind::Rule, "", now + 60, 2);
        let token = mint(&signer, &c).expect("mint");
        assert_eq!(verify(&verifier_only, &token, now), Ok(c.clone()));
        let engine = TestEngine::default();
        let t = target("/anything", "articles", "GET");
        // Cached after the first check; the quota still counts.
        assert_eq!(
            engine
                .admit(&verifier_only, &[&token], &t, true)
                .map(|a| a.remaining),
            Ok(Some(1))
        );
        assert_eq!(
            engine
                .admit(&verifier_only, &[&token], &t, true)
                .map(|a| a.remaining),
            Ok(Some(0))
        );
        assert_eq!(
            engine.admit(&verifier_only, &[&token], &t, true),
            Err(PassError::Exhausted)
        );
    }

    #[test]
    fn scopes_methods_quota_and_revocation() {
        let keys = hmac_keys("k1");
        let engine = TestEngine::default();
        let now = unix_now();
        let res = mint(
            &keys,
            &claims(ScopeKind::Resource, "/articles/1", now + 60, 0),
        )
        .expect("m");
        let pre = mint(&keys, &claims(ScopeKind::Prefix, "/articles/", now + 60, 2)).expect("m");
        let ok = |tok: &str, key: &str, method: &str| {
            engine
                .admit(&keys, &[tok], &target(key, "other", method), false)
                .map(|_| ())
        };
        assert_eq!(ok(&res, "/articles/1", "GET"), Ok(()));
        assert_eq!(ok(&res, "/articles/1", "HEAD"), Ok(()));
        assert_eq!(ok(&res, "/articles/2", "GET"), Err(PassError::OutOfScope));
        assert_eq!(ok(&res, "/articles/1", "POST"), Err(PassError::OutOfScope));
        assert_eq!(ok(&pre, "/articles/2/x", "GET"), Ok(()));
        assert_eq!(ok(&pre, "/articles", "GET"), Ok(()));
        assert_eq!(ok(&pre, "/articlesx", "GET"), Err(PassError::OutOfScope));
        let mut other_host = target("/articles/1", "articles", "GET");
        other_host.host = "evil.com";
        assert_eq!(
            engine.admit(&keys, &[&res], &other_host, false).map(|_| ()),
            Err(PassError::OutOfScope)
        );
        // Quota: two requests, then exhausted; looking does not count.
        let t = target("/articles/9", "articles", "GET");
        assert!(engine.admit(&keys, &[&pre], &t, false).is_ok());
        assert!(engine.admit(&keys, &[&pre], &t, true).is_ok());
        assert!(engine.admit(&keys, &[&pre], &t, true).is_ok());
        assert_eq!(
            engine.admit(&keys, &[&pre], &t, true),
            Err(PassError::Exhausted)
        );
        // Of several tokens, the first that admits wins; else the most relevant error.
        assert!(
            engine
                .admit(
                    &keys,
                    &["garbage", &res],
                    &target("/articles/1", "x", "GET"),
                    true
                )
                .is_ok()
        );
        assert_eq!(
            engine.admit(&keys, &[&res, &pre], &t, true),
            Err(PassError::Exhausted)
        );
        // Runtime revocation.
        let id = verify(&keys, &res, now).expect("v").id;
        engine.revoke(&id);
        assert_eq!(ok(&res, "/articles/1", "GET"), Err(PassError::Revoked));
        // Configured revocation.
        let mut revoked = hmac_keys("k1");
        revoked.revoked.insert(id);
        assert_eq!(verify(&revoked, &res, now), Err(PassError::Revoked));
    }

    #[test]
    fn presented_tokens_and_cookie_stripping() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            "a=1; x402_pass=x402p1.k.p.s; b=2".parse().expect("v"),
        );
        h.append("cookie", "x402_pass=\"x402p1.k.q.s\"".parse().expect("v"));
        h.append("authorization", "Bearer x402p1.k.r.s".parse().expect("v"));
        h.append("x402-pass", "x402p1.k.t.s".parse().expect("v"));
        assert_eq!(
            presented(&h, "x402_pass"),
            vec![
                "x402p1.k.t.s",
                "x402p1.k.r.s",
                "x402p1.k.p.s",
                "x402p1.k.q.s"
            ]
        );
        let mut api = HeaderMap::new();
        api.append("authorization", "Bearer some-api-key".parse().expect("v"));
        assert!(presented(&api, "x402_pass").is_empty());
        assert_eq!(
            cookie_without("a=1; x402_pass=t; b=2", "x402_pass"),
            Some("a=1; b=2".into())
        );
        assert_eq!(cookie_without("x402_pass=t", "x402_pass"), None);
        assert!(under_prefix("/a", "/"));
        assert_eq!(
            set_cookie("x402_pass", "t", "/articles", 3600, true),
            "x402_pass=t; Max-Age=3600; Path=/articles; HttpOnly; SameSite=Lax; Secure"
        );
    }
}
