//! Tenant API keys: 256 random bits shown once, stored only as a SHA-256 hash.
//!
//! A fast hash is the right tool here (unlike for passwords): the secret has full entropy, so
//! there is nothing to guess, and every request must look its key up by hash in one index probe.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// The prefix every key starts with, so a leaked key is recognisable (secret scanners).
pub const KEY_PREFIX: &str = "slk_";

/// A freshly generated key.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The secret, to hand to the client once.
    pub secret: String,
    /// SHA-256 of the secret, hex, as stored.
    pub hash: String,
    /// The first characters of the secret, safe to show in lists.
    pub display_prefix: String,
}

/// Generates a new key from the OS's random source.
pub fn generate() -> GeneratedKey {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    GeneratedKey { hash: hash(&secret), display_prefix: secret[..KEY_PREFIX.len() + 8].to_owned(), secret }
}

/// The stored form of a presented secret.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_hash_to_their_stored_form() {
        let a = generate();
        let b = generate();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), KEY_PREFIX.len() + 64);
        assert_eq!(hash(&a.secret), a.hash);
        assert!(a.secret.starts_with(&a.display_prefix));
    }
}
