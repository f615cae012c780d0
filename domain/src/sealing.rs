//! Sealing: authenticated encryption of small values, written once for every use.
//!
//! XChaCha20-Poly1305 with a fresh random 192-bit nonce per value, stored as `nonce ‖
//! ciphertext` (or, as text, a version prefix and that in URL-safe base64 without padding). The
//! associated data binds a sealed value to what it belongs to, so it cannot be moved: a tenant's
//! id for personal data (`commands::vault`, `pii1:`), an endpoint's id for webhook signing
//! secrets (`projections::webhooks`, `wsk1:`), nothing for replayed idempotent answers (whose
//! key is derived from the client's own key, `api::idempotency`).
//!
//! The nonce is an argument, so this stays a pure function of its inputs (and its tests are
//! exact); callers draw it from the operating system's generator. With 192-bit nonces, random
//! ones do not collide in any number of values a key will ever seal.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The length of a nonce, in bytes.
pub const NONCE_LEN: usize = 24;

/// A 256-bit key, ready to seal and open.
#[derive(Clone)]
pub struct SealingKey(XChaCha20Poly1305);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    /// The key `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        Self(XChaCha20Poly1305::new(key.into()))
    }

    /// The key in `key`, if it is 32 bytes long.
    pub fn from_slice(key: &[u8]) -> Option<Self> {
        XChaCha20Poly1305::new_from_slice(key).ok().map(Self)
    }

    /// `nonce ‖ ciphertext` of `clear`, bound to `aad`.
    pub fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], clear: &[u8]) -> Vec<u8> {
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: clear, aad })
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend(sealed);
        bytes
    }

    /// What [`Self::seal`] sealed with this key and `aad`; `None` for anything else (another
    /// key, other associated data, a changed byte, too short).
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.0.decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad }).ok()
    }

    /// `clear` sealed as text: `prefix` followed by the sealed bytes in URL-safe base64.
    pub fn seal_text(&self, prefix: &str, nonce: [u8; NONCE_LEN], aad: &[u8], clear: &str) -> String {
        format!("{prefix}{}", URL_SAFE_NO_PAD.encode(self.seal(nonce, aad, clear.as_bytes())))
    }

    /// What [`Self::seal_text`] sealed with this key, `prefix` and `aad`.
    pub fn open_text(&self, prefix: &str, aad: &[u8], sealed: &str) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed.strip_prefix(prefix)?).ok()?;
        String::from_utf8(self.open(aad, &bytes)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; NONCE_LEN] = [9; NONCE_LEN];

    #[test]
    fn a_sealed_value_opens_with_its_key_and_associated_data_only() {
        let key = SealingKey::new(&[7; 32]);
        let sealed = key.seal_text("pii1:", NONCE, b"tenant-a", "ada@example.com");
        assert!(sealed.starts_with("pii1:") && !sealed.contains("ada"));
        assert_eq!(key.open_text("pii1:", b"tenant-a", &sealed).as_deref(), Some("ada@example.com"));
        assert_eq!(key.open_text("pii1:", b"tenant-b", &sealed), None, "moved to another owner");
        assert_eq!(key.open_text("wsk1:", b"tenant-a", &sealed), None, "another kind of value");
        assert_eq!(SealingKey::new(&[8; 32]).open_text("pii1:", b"tenant-a", &sealed), None, "another key");
        let mut bytes = key.seal(NONCE, b"", b"reply");
        assert_eq!(key.open(b"", &bytes).as_deref(), Some(&b"reply"[..]));
        *bytes.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(b"", &bytes), None, "a changed byte");
        assert_eq!(key.open(b"", &bytes[..NONCE_LEN - 1]), None, "too short");
    }

    #[test]
    fn sealing_is_a_function_of_the_nonce_and_two_nonces_give_two_texts() {
        let key = SealingKey::new(&[7; 32]);
        assert_eq!(key.seal(NONCE, b"a", b"x"), key.seal(NONCE, b"a", b"x"));
        assert_ne!(key.seal(NONCE, b"a", b"x"), key.seal([1; NONCE_LEN], b"a", b"x"));
        assert_eq!(&key.seal(NONCE, b"a", b"x")[..NONCE_LEN], &NONCE);
    }
}
