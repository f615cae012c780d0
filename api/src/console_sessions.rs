//! The console's sign-in sessions (`console_sessions`): a random token in an `HttpOnly`
//! cookie, stored only as its SHA-256 with who signed in (the admin, or the hash of an owner
//! or admin key, looked up again on every page so that a revoked key ends the session) and the
//! session's CSRF token.

use sqlx::PgPool;

/// A live session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    /// Whether the platform admin signed in.
    pub admin: bool,
    /// Otherwise, the SHA-256 of the API key that did.
    pub key_sha256: Option<String>,
    /// The token every form must carry.
    pub csrf: String,
}

/// The session store, on the primary.
#[derive(Debug, Clone, Copy)]
pub struct Sessions<'a>(pub &'a PgPool);

impl Sessions<'_> {
    /// The live (unexpired) session whose token has SHA-256 `token_sha256`.
    pub async fn find(&self, token_sha256: &str) -> Result<Option<Session>, sqlx::Error> {
        sqlx::query_as("SELECT admin, key_sha256, csrf FROM console_sessions WHERE token_sha256 = $1 AND expires_at > now()")
            .bind(token_sha256)
            .fetch_optional(self.0)
            .await
    }

    /// Opens a session for `hours`; expired sessions are deleted as new ones come.
    pub async fn open(
        &self,
        token_sha256: &str,
        admin: bool,
        key_sha256: Option<String>,
        csrf: &str,
        hours: i32,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO console_sessions (token_sha256, admin, key_sha256, csrf, expires_at)
             VALUES ($1, $2, $3, $4, now() + make_interval(hours => $5))",
        )
        .bind(token_sha256)
        .bind(admin)
        .bind(key_sha256)
        .bind(csrf)
        .bind(hours)
        .execute(self.0)
        .await?;
        let _ = sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()").execute(self.0).await;
        Ok(())
    }

    /// Ends the session whose token has SHA-256 `token_sha256`.
    pub async fn close(&self, token_sha256: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM console_sessions WHERE token_sha256 = $1").bind(token_sha256).execute(self.0).await.map(|_| ())
    }
}
