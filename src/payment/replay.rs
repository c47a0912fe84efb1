//! The identity of a payment for the replay guard: (network, asset, payer, nonce), case
//! folded, so that copies of one authorization share one reservation in the state store.

/// Identity of an authorization.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplayKey(String);

impl ReplayKey {
    pub fn new(network: &str, asset: &str, payer: &str, nonce: &str) -> Self {
        ReplayKey(format!(
            "{network}|{}|{}|{}",
            asset.to_ascii_lowercase(),
            payer.to_ascii_lowercase(),
            nonce.to_ascii_lowercase()
        ))
    }

    /// A key read back from the state store.
    pub fn from_stored(key: &str) -> Self {
        ReplayKey(key.to_owned())
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fold_case() {
        assert_eq!(
            ReplayKey::new("n", "0xAB", "0xCD", "0xEF"),
            ReplayKey::new("n", "0xab", "0xcd", "0xef")
        );
        assert_ne!(
            ReplayKey::new("n", "0xab", "0xcd", "0xef"),
            ReplayKey::new("m", "0xab", "0xcd", "0xef")
        );
    }
}
