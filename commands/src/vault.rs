//! Personal data, sealed per tenant (crypto-shredding).
//!
//! Personal fields (a tenant's billing e-mail, a booking customer's name and e-mail) never reach
//! the event store in clear: before a command runs they are sealed with the tenant's own
//! 256-bit key (XChaCha20-Poly1305, a random 192-bit nonce per value, the tenant id as
//! associated data so a value cannot be moved to another tenant). Events, read models, replay
//! and exports all carry the sealed form; readers open it with the key when they answer.
//! Erasing a tenant deletes its key: every copy of its personal data, wherever it was copied
//! to, becomes unreadable at once, while the log stays append-only and its hash chain valid.
//!
//! Sealed text looks like `pii1:<base64url(nonce ‖ ciphertext)>`. Text without the prefix is
//! legacy clear text written before sealing existed and is returned as is.

use domain::sealing::SealingKey;
use domain::values::Sealed;
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

const PREFIX: &str = "pii1:";

/// Why a value could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The tenant was erased: nothing personal may be stored for it again.
    #[error("the tenant's personal data was erased")]
    Erased,
    /// The key table could not be read or written.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One tenant's key, ready to seal and open.
#[derive(Clone)]
pub struct PersonalDataKey {
    tenant_id: Uuid,
    cipher: Option<SealingKey>,
    /// A key for digests, derived from the tenant's key (gone with it).
    digest_key: Option<[u8; 32]>,
}

/// The digest key derived from a tenant's key: `SHA-256("saas-ledger digest" ‖ key)`.
fn digest_key(key: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::new().chain_update(b"saas-ledger digest").chain_update(key).finalize().into()
}

impl std::fmt::Debug for PersonalDataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonalDataKey").field("tenant_id", &self.tenant_id).field("erased", &self.cipher.is_none()).finish()
    }
}

impl PersonalDataKey {
    /// A keyed digest of `clear` (hex): equal for equal text, meaningless without the tenant's
    /// key, so a uniqueness index can hold it instead of the personal value. `None` once erased.
    pub fn digest(&self, clear: &str) -> Option<String> {
        use sha2::Digest;
        let key = self.digest_key?;
        // SHA-256 over key ‖ text ‖ key: a keyed hash without length-extension concerns here.
        Some(hex::encode(sha2::Sha256::new().chain_update(key).chain_update(clear.as_bytes()).chain_update(key).finalize()))
    }

    /// Whether the key is gone (the tenant was erased).
    pub fn is_erased(&self) -> bool {
        self.cipher.is_none()
    }

    /// Seals `clear` (fails for an erased tenant).
    pub fn seal(&self, clear: &str) -> Result<Sealed, VaultError> {
        let cipher = self.cipher.as_ref().ok_or(VaultError::Erased)?;
        Ok(Sealed::from_stored(cipher.seal_text(PREFIX, rand::random(), self.tenant_id.as_bytes(), clear)))
    }

    /// Opens a stored value: the clear text, or `None` when the key is erased or the value
    /// does not open (tampered, or another tenant's).
    pub fn open(&self, stored: &str) -> Option<String> {
        if !is_sealed(stored) {
            return Some(stored.to_owned());
        }
        self.cipher.as_ref()?.open_text(PREFIX, self.tenant_id.as_bytes(), stored)
    }
}

impl PersonalDataKey {
    /// Opens every sealed string inside `value` in place (`null` where it cannot be opened).
    pub fn open_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) if is_sealed(text) => {
                *value = self.open(text).map_or(serde_json::Value::Null, serde_json::Value::String);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.open_json(v)),
            serde_json::Value::Object(fields) => fields.values_mut().for_each(|v| self.open_json(v)),
            _ => {}
        }
    }
}

/// Whether `stored` is sealed (not legacy clear text).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The per-tenant keys, kept in `personal_data_keys`.
#[derive(Debug, Clone)]
pub struct Vault {
    pool: PgPool,
    /// Connections that commit without waiting for the WAL flush, for new keys only (see
    /// [`Vault::key_for_new_tenant`]).
    deferred: PgPool,
}

impl Vault {
    /// A vault over `pool`'s key table.
    pub fn new(pool: PgPool) -> Self {
        let deferred = crate::db::derive(&pool, 4, &[("synchronous_commit", "off")]);
        Self { pool, deferred }
    }

    /// `tenant_id`'s key, created on first use, unless the tenant was erased.
    pub async fn key_for_writing(&self, tenant_id: Uuid) -> Result<PersonalDataKey, VaultError> {
        // The common case, a tenant with a key already, is one read.
        let existing: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT key FROM personal_data_keys WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?;
        self.key_for_writing_from(tenant_id, existing).await
    }

    /// [`Self::key_for_writing`] for a tenant whose id was just made (a sign-up): the key is
    /// made and stored in one statement; should the id have a row after all, it is read.
    ///
    /// The statement commits without waiting for its WAL record to reach the disk
    /// (`synchronous_commit = off`): the caller's next step is to append the tenant's events
    /// sealed with this key, synchronously, and that commit's WAL flush (and, with a
    /// synchronous standby, its replication) covers every record written before it, this one
    /// included. So the key is durable whenever anything sealed with it is; a crash before that
    /// loses at most a key nothing uses. One WAL flush per sign-up instead of two.
    pub async fn key_for_new_tenant(&self, tenant_id: Uuid) -> Result<PersonalDataKey, VaultError> {
        let mut fresh = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut fresh);
        let stored: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO personal_data_keys (tenant_id, key) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING RETURNING tenant_id",
        )
        .bind(tenant_id)
        .bind(&fresh[..])
        .fetch_optional(&self.deferred)
        .await?;
        match stored {
            Some(_) => {
                let cipher = SealingKey::from_slice(&fresh).expect("a 32-byte key");
                Ok(PersonalDataKey { tenant_id, cipher: Some(cipher), digest_key: Some(digest_key(&fresh)) })
            }
            None => self.key_for_writing(tenant_id).await,
        }
    }

    /// [`Self::key_for_writing`], given the tenant's row of `personal_data_keys` as a caller
    /// already read it in a statement of its own (`None`: no row; `Some(None)`: erased).
    pub async fn key_for_writing_from(&self, tenant_id: Uuid, existing: Option<Option<Vec<u8>>>) -> Result<PersonalDataKey, VaultError> {
        match existing {
            Some(Some(key)) if key.len() == 32 => {
                let cipher = SealingKey::from_slice(&key).expect("a 32-byte key");
                return Ok(PersonalDataKey { tenant_id, cipher: Some(cipher), digest_key: Some(digest_key(&key)) });
            }
            Some(_) => return Err(VaultError::Erased),
            None => {}
        }
        let mut fresh = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut fresh);
        // Erasure leaves the row with no key, so a key is never made again for that tenant;
        // the primary key serialises a sign-up racing an erasure.
        sqlx::query("INSERT INTO personal_data_keys (tenant_id, key) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING")
            .bind(tenant_id)
            .bind(&fresh[..])
            .execute(&self.pool)
            .await?;
        let key = self.key(tenant_id).await?;
        if key.is_erased() {
            return Err(VaultError::Erased);
        }
        Ok(key)
    }

    /// `tenant_id`'s key for reading (an erased or keyless tenant opens nothing sealed).
    pub async fn key(&self, tenant_id: Uuid) -> Result<PersonalDataKey, sqlx::Error> {
        let key: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT key FROM personal_data_keys WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?;
        let key = key.flatten().filter(|k| k.len() == 32);
        let cipher = key.as_ref().map(|k| SealingKey::from_slice(k).expect("a 32-byte key"));
        Ok(PersonalDataKey { tenant_id, cipher, digest_key: key.as_deref().map(digest_key) })
    }

    /// Opens every sealed string of the JSON document `body` with the key of the tenant its
    /// `tenant_id` field names (sealed values of an erased tenant become `null`). A body that
    /// is not JSON, names no tenant, or whose key cannot be read is returned as it is.
    pub async fn open_json_text(&self, body: String) -> String {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&body) else { return body };
        let Some(tenant) = value.get("tenant_id").and_then(serde_json::Value::as_str).and_then(|t| t.parse::<Uuid>().ok()) else {
            return body;
        };
        let Ok(key) = self.key(tenant).await else { return body };
        key.open_json(&mut value);
        value.to_string()
    }

    /// Destroys `tenant_id`'s key; the row stays, keyless, so no new key is ever made for it.
    /// Returns whether a key existed.
    pub async fn shred(&self, tenant_id: Uuid) -> Result<bool, sqlx::Error> {
        let had_key: Option<bool> = sqlx::query_scalar(
            "WITH old AS (SELECT key IS NOT NULL AS had FROM personal_data_keys WHERE tenant_id = $1 FOR UPDATE)
             INSERT INTO personal_data_keys (tenant_id, key, erased_at) VALUES ($1, NULL, now())
             ON CONFLICT (tenant_id) DO UPDATE SET key = NULL, erased_at = coalesce(personal_data_keys.erased_at, now())
             RETURNING (SELECT had FROM old)",
        )
        .bind(tenant_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(had_key.unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant_id: Uuid) -> PersonalDataKey {
        PersonalDataKey { tenant_id, cipher: Some(SealingKey::from_slice(&[7u8; 32]).unwrap()), digest_key: Some(digest_key(&[7u8; 32])) }
    }

    #[test]
    fn sealed_values_open_with_the_key_and_nothing_else() {
        let tenant = Uuid::now_v7();
        let k = key(tenant);
        let sealed = k.seal("ada@example.com").unwrap();
        assert!(is_sealed(sealed.as_str()));
        assert!(!sealed.as_str().contains("ada"));
        assert_eq!(k.open(sealed.as_str()).as_deref(), Some("ada@example.com"));
        // Two seals of one value differ (random nonce), so equal values cannot be linked.
        assert_ne!(k.seal("ada@example.com").unwrap(), sealed);
        // Another tenant's key (same bytes, other tenant id) does not open it.
        assert_eq!(key(Uuid::now_v7()).open(sealed.as_str()), None);
        // An erased key opens nothing sealed and seals nothing.
        let erased = PersonalDataKey { tenant_id: tenant, cipher: None, digest_key: None };
        assert_eq!(erased.open(sealed.as_str()), None);
        assert!(matches!(erased.seal("x"), Err(VaultError::Erased)));
        // A flipped character is detected.
        let mut tampered = sealed.as_str().to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(k.open(&tampered), None);
        // Legacy clear text reads as itself.
        assert_eq!(k.open("old@example.com").as_deref(), Some("old@example.com"));
    }
}
