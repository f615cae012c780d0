//! Endpoint signing secrets: made at registration (shown once), kept sealed with the server's key
//! (`domain::sealing`), and the Standard Webhooks signature of each delivery.

use super::*;

/// Seals endpoint secrets with the server's key (see `domain::sealing`; the endpoint id as
/// associated data): the database holds only sealed secrets.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: SealingKey,
}

pub(super) const SEALED_PREFIX: &str = "wsk1:";

impl Sealer {
    /// A sealer with `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        Self { key: SealingKey::new(key) }
    }

    /// Seals `secret` for endpoint `id`.
    pub fn seal(&self, id: Uuid, secret: &str) -> String {
        self.key.seal_text(SEALED_PREFIX, rand::random(), id.as_bytes(), secret)
    }

    /// Opens what [`Self::seal`] sealed for endpoint `id` (`None`: another key, or not ours).
    pub fn open(&self, id: Uuid, sealed: &str) -> Option<String> {
        self.key.open_text(SEALED_PREFIX, id.as_bytes(), sealed)
    }
}

/// A new signing secret: `whsec_` + base64 of 24 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("whsec_{}", STANDARD.encode(bytes))
}

/// `v1,<base64 HMAC-SHA256(secret bytes, "<id>.<timestamp>.<body>")>`.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}
