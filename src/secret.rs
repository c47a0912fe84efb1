//! Values that must never be printed: `Secret` (Debug shows `<redacted>`) and the redacted
//! form of URLs that may carry credentials (API keys in paths, queries or user info).

use std::fmt;

/// A string that may hold a secret: its value never appears in Debug output, logs or `/config`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `headers` carry `Authorization: Bearer <this secret>`, compared in constant time.
    pub fn is_bearer_of(&self, headers: &http::HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .trim();
        given.len() == self.0.len() && bool::from(given.as_bytes().ct_eq(self.0.as_bytes()))
    }

    /// The URL this secret holds with everything but scheme, host and port replaced (see
    /// [`redact_url`]).
    pub fn redacted_url(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `scheme://host[:port]` of a URL, followed by `/<redacted>` when it had a path, query or
/// user info (where hosted RPC and facilitator providers put API keys). Text that does not
/// parse as a URL is `<redacted>` as a whole.
pub fn redact_url(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return "<redacted>".into();
    };
    let (Some(scheme), Some(auth)) = (uri.scheme_str(), uri.authority()) else {
        return "<redacted>".into();
    };
    let host = auth.host();
    let mut out = format!("{scheme}://{host}");
    if let Some(port) = auth.port_u16() {
        out.push_str(&format!(":{port}"));
    }
    let more = auth.as_str().contains('@')
        || uri.query().is_some()
        || !uri.path().trim_start_matches('/').is_empty();
    if more {
        out.push_str("/<redacted>");
    }
    out
}

/// `text` with every occurrence of `url` (as written, and without a trailing `/`) replaced by
/// its redacted form: for error messages of HTTP clients that quote the URL they called.
pub fn scrub(text: &str, url: &str) -> String {
    let bare = url.trim_end_matches('/');
    if bare.is_empty() || !text.contains(bare) {
        return text.to_owned();
    }
    text.replace(bare, &redact_url(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_only_scheme_host_and_port() {
        assert_eq!(
            redact_url("https://base-mainnet.example/v2/KEY123"),
            "https://base-mainnet.example/<redacted>"
        );
        assert_eq!(
            redact_url("https://user:pw@rpc.example:8443/"),
            "https://rpc.example:8443/<redacted>"
        );
        assert_eq!(redact_url("http://127.0.0.1:8545"), "http://127.0.0.1:8545");
        assert_eq!(
            redact_url("https://rpc.example/?apikey=K"),
            "https://rpc.example/<redacted>"
        );
        assert_eq!(redact_url("not a url KEY"), "<redacted>");
        assert_eq!(format!("{:?}", Secret::new("KEY".into())), "<redacted>");
    }

    #[test]
    fn error_texts_lose_the_url() {
        let url = "https://rpc.example/v2/KEY123";
        let text = format!("error sending request for url ({url}/): connection refused");
        let s = scrub(&text, url);
        assert!(!s.contains("KEY123"), "{s}");
        assert!(s.contains("https://rpc.example/<redacted>"), "{s}");
    }
}
