//! A request's correlation: its id (taken from a trusted proxy's header, else generated) and
//! its W3C trace context (`traceparent`, `tracestate`), carried to the origin, the
//! facilitator, the access log, the ledger and the response.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;

/// The header that carries a request's id, to the origin and the facilitator and back to the
/// client.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest request id accepted from a trusted proxy.
const MAX_ID_LEN: usize = 128;

/// What ties one request's traces together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Correlation {
    pub request_id: String,
    /// The client's `traceparent`, when it is a valid W3C one.
    pub traceparent: Option<String>,
    /// Its `tracestate`, kept only beside a valid `traceparent`.
    pub tracestate: Option<String>,
}

impl Correlation {
    /// Reads the request: its `X-Request-Id` when the peer is a trusted proxy and the id is
    /// sane, else a new one; the trace context when valid.
    pub fn of(headers: &HeaderMap, peer_trusted: bool) -> Correlation {
        let request_id = peer_trusted
            .then(|| headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()))
            .flatten()
            .filter(|id| is_valid_id(id))
            .map_or_else(generate, str::to_owned);
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .filter(|t| is_valid_traceparent(t))
            .map(str::to_owned);
        let tracestate = traceparent
            .as_ref()
            .and_then(|_| headers.get("tracestate"))
            .and_then(|v| v.to_str().ok())
            .filter(|s| s.len() <= 512)
            .map(str::to_owned);
        Correlation {
            request_id,
            traceparent,
            tracestate,
        }
    }

    /// The headers that carry this correlation to a facilitator.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(3);
        if !self.request_id.is_empty() {
            out.push((REQUEST_ID, self.request_id.clone()));
        }
        if let Some(t) = &self.traceparent {
            out.push(("traceparent", t.clone()));
        }
        if let Some(s) = &self.tracestate {
            out.push(("tracestate", s.clone()));
        }
        out
    }
}

/// A request id from outside: 1 to 128 characters of letters, digits and `-._:+/=@`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:+/=@".contains(&b))
}

/// A W3C `traceparent` of version `00`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex
/// flags>`, lower-case, ids not all zero. Other versions are read the same way on their
/// first four fields, as the specification asks.
pub fn is_valid_traceparent(t: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut parts = t.split('-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let rest_ok = if version == "00" {
        parts.next().is_none()
    } else {
        true
    };
    hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
        && rest_ok
}

/// A new request id: 32 lower-case hex digits, a random per-process half and a counter, so
/// ids never repeat within a process and almost surely not across replicas.
pub fn generate() -> String {
    static PREFIX: LazyLock<u64> = LazyLock::new(|| {
        let mut b = [0u8; 8];
        // Without randomness, the clock still tells processes apart.
        if getrandom::fill(&mut b).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            b = (nanos ^ u64::from(std::process::id())).to_le_bytes();
        }
        u64::from_le_bytes(b)
    });
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut s = String::with_capacity(32);
    let _ = write!(s, "{:016x}{n:016x}", *PREFIX);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn ids_come_from_trusted_proxies_only_and_must_be_sane() {
        let h = headers(&[("x-request-id", "lb-1234")]);
        assert_eq!(Correlation::of(&h, true).request_id, "lb-1234");
        let untrusted = Correlation::of(&h, false).request_id;
        assert_ne!(untrusted, "lb-1234");
        assert_eq!(untrusted.len(), 32);
        for bad in ["", "has space", "quote\"", &"a".repeat(129), "semi;colon"] {
            let h = headers(&[("x-request-id", bad)]);
            let id = Correlation::of(&h, true).request_id;
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32, "{bad:?} is replaced");
        }
        assert!(is_valid_id(&"a".repeat(128)));
    }

    #[test]
    fn generated_ids_do_not_repeat() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(&a[..16], &b[..16], "one process, one prefix");
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn traceparent_follows_the_w3c_format() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(ok));
        assert!(is_valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
        }
        let h = headers(&[("traceparent", ok), ("tracestate", "vendor=1")]);
        let c = Correlation::of(&h, false);
        assert_eq!(c.traceparent.as_deref(), Some(ok));
        assert_eq!(c.tracestate.as_deref(), Some("vendor=1"));
        let h = headers(&[("traceparent", "bad"), ("tracestate", "vendor=1")]);
        let c = Correlation::of(&h, false);
        assert_eq!((c.traceparent, c.tracestate), (None, None));
    }
}
