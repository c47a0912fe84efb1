//! Admitting a request with a pass: the token's claims (verified once, then cached in this
//! process under the token, with the fingerprint of the key that verified it), revocation and
//! quota (in the state store), scope.

use std::sync::Arc;
use std::time::Duration;

use super::keys::token_kid;
use super::{Claims, MAX_TOKEN_BYTES, PassError, PassKeys, Target, check_time, unix_now, verify};
use crate::state::{Quota, StateStore};

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
    /// Keyed by the whole token (compared byte for byte, hashed with the cache's keyed
    /// hasher): a hit costs no cryptographic hash. The value keeps the fingerprint of the key
    /// that verified the token.
    verified: moka::sync::Cache<Box<str>, Verified, foldhash::quality::RandomState>,
}

/// A token's claims and the key it was verified with.
#[derive(Clone)]
struct Verified {
    key: [u8; 32],
    claims: Arc<Claims>,
}

impl std::fmt::Debug for PassEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassEngine").finish_non_exhaustive()
    }
}

impl Default for PassEngine {
    fn default() -> Self {
        PassEngine {
            // Weighed by the bytes a token and its claims take: at most 32 MiB of them.
            // Keyed by whole tokens (hundreds of bytes): hashed with foldhash (randomly
            // seeded) rather than SipHash, which cost more than the rest of the lookup. Only
            // tokens that verified are inserted, so colliding keys cannot be planted.
            verified: moka::sync::Cache::<Box<str>, Verified>::builder()
                .weigher(|token, _| {
                    u32::try_from(token.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(256)
                })
                .max_capacity(32 * 1024 * 1024)
                .time_to_live(Duration::from_secs(600))
                .build_with_hasher(foldhash::quality::RandomState::default()),
        }
    }
}

impl PassEngine {
    pub(super) fn claims(
        &self,
        keys: &PassKeys,
        token: &str,
        now: u64,
    ) -> Result<Arc<Claims>, PassError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(PassError::Malformed);
        }
        // Cached with its key's fingerprint: a reload that drops the key or binds its id to
        // another key misses the cache and verification decides again.
        let key = keys
            .fingerprint(token_kid(token)?)
            .ok_or(PassError::UnknownKey)?;
        if let Some(v) = self.verified.get(token)
            && v.key == *key
        {
            check_time(&v.claims, now)?;
            if keys.revoked.contains(&v.claims.id) {
                return Err(PassError::Revoked);
            }
            return Ok(v.claims);
        }
        let claims = Arc::new(verify(keys, token, now)?);
        self.verified.insert(
            Box::from(token),
            Verified {
                key: *key,
                claims: claims.clone(),
            },
        );
        Ok(claims)
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
