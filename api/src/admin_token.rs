//! The platform admin's credential: `SAAS_LEDGER_ADMIN_TOKEN` if configured; otherwise one
//! generated at the first start and kept in the database (its SHA-256 only), so that restarts
//! and other instances honour the same token, printed once where it cannot be missed, and
//! replaced by `saas-ledger admin-token rotate`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use sqlx::PgPool;
use subtle::ConstantTimeEq;

/// How the admin is recognised.
pub enum AdminCredential {
    /// `SAAS_LEDGER_ADMIN_TOKEN`: compared as it is.
    Configured(String),
    /// The stored credential's hash, read again once `lease` has passed (a rotation reaches
    /// every instance within it).
    Stored {
        /// The pool it is read from.
        pool: PgPool,
        /// How long a read hash is trusted.
        lease: Duration,
        /// The last hash read, and when.
        seen: Mutex<Option<(Instant, String)>>,
    },
}

impl AdminCredential {
    /// Whether `token` is the admin's.
    pub async fn admits(&self, token: &str) -> Result<bool, sqlx::Error> {
        match self {
            Self::Configured(admin) => Ok(bool::from(token.as_bytes().ct_eq(admin.as_bytes()))),
            Self::Stored { pool, lease, seen } => {
                let fresh = seen.lock().expect("not poisoned").as_ref().filter(|(at, _)| at.elapsed() < *lease).map(|(_, h)| h.clone());
                let stored = match fresh {
                    Some(hash) => hash,
                    None => {
                        let hash: String = sqlx::query_scalar("SELECT token_sha256 FROM admin_credential").fetch_one(pool).await?;
                        *seen.lock().expect("not poisoned") = Some((Instant::now(), hash.clone()));
                        hash
                    }
                };
                Ok(bool::from(commands::api_keys::hash(token).as_bytes().ct_eq(stored.as_bytes())))
            }
        }
    }
}

/// A new admin token (`sla_` and 64 hex digits).
fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("sla_{}", hex::encode(bytes))
}

/// Makes sure a credential is stored; returns the token if this call generated it (the first
/// start of the first instance: the caller prints it once), `None` if one was stored already.
pub async fn ensure(pool: &PgPool) -> Result<Option<String>, sqlx::Error> {
    let token = generate();
    let inserted = sqlx::query("INSERT INTO admin_credential (token_sha256) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(commands::api_keys::hash(&token))
        .execute(pool)
        .await?
        .rows_affected();
    Ok((inserted == 1).then_some(token))
}

/// Replaces the stored credential with a new one and returns it; the old token stops working
/// on every instance within its lease (`SAAS_LEDGER_AUTH_CACHE_MS`).
pub async fn rotate(pool: &PgPool) -> Result<String, sqlx::Error> {
    let token = generate();
    sqlx::query(
        "INSERT INTO admin_credential (token_sha256) VALUES ($1)
         ON CONFLICT (id) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256, rotated_at = now()",
    )
    .bind(commands::api_keys::hash(&token))
    .execute(pool)
    .await?;
    Ok(token)
}
