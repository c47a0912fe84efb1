//! The signed request: which components a signature covers and how they read from the
//! request (RFC 9421), and the checks that need no key (shape, covered components, time
//! window, which trusted agent it names, replay identifiers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use sha2::{Digest, Sha256};
use web_bot_auth::components::{
    CoveredComponent, DerivedComponent, HTTPField, HTTPFieldParameters,
};
use web_bot_auth::keyring::Algorithm;
use web_bot_auth::message_signatures::{MessageVerifier, SignedMessage};
use web_bot_auth::{SignatureAgentLink, WebBotAuthVerifier};

use super::{BotAuthConf, BotAuthError, origin_of};

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

/// A parsed signature, checked for shape and time, waiting for its key.
pub struct Parsed {
    pub(super) verifier: WebBotAuthVerifier,
    /// Trusted agent origins to try, in order.
    pub(super) candidates: Vec<Arc<str>>,
    pub(super) keyid: String,
    pub(super) replay_keys: [[u8; 32]; 2],
    pub(super) until: Instant,
    /// The same end in unix seconds, for a shared replay memory.
    pub(super) until_unix: u64,
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
        until_unix: (now.max(0) as u64).saturating_add(remaining),
    })
}
