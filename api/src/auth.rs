//! Who is calling, and what they may do.
//!
//! `Authorization: Bearer <token>` carries either the platform admin token or a tenant API
//! key. A key is looked up by its SHA-256 in the `rm.api_keys` read model, and the lookup is
//! reused for a short lease ([`KeyCache`], `SAAS_LEDGER_AUTH_CACHE_MS`, 1 s by default), so a
//! busy key costs no statement per request. A command that changes who may do what (a key
//! revoked; a tenant suspended, reactivated, cancelled or erased) empties this process's
//! cache at once and answers only once its read model has it and a whole lease has passed:
//! by then no instance still holds a lookup from before, so a revoked key is refused
//! everywhere as soon as `DELETE` has answered. The tenant of a request is the tenant of its
//! key; an `X-Tenant-ID` naming another tenant is refused. The admin may act for a tenant by
//! naming it in `X-Tenant-ID`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use commands::Actor;
use domain::tenant::ApiKeyRole;
use uuid::Uuid;

use crate::app::AppState;
use crate::error::ApiError;

/// The event types that change what a key may do: their commands wait out the lease.
pub const CHANGES_ACCESS: [&str; 5] = ["ApiKeyRevoked", "TenantSuspended", "TenantReactivated", "TenantCancelled", "TenantErased"];

/// Most lookups kept at once; past that the cache starts afresh.
const MAX_CACHED_KEYS: usize = 100_000;

/// API-key lookups reused for a lease, keyed by the key's hash. Only found keys are kept.
#[derive(Clone)]
pub struct KeyCache {
    lease: std::time::Duration,
    keys: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, CallerKey)>>>,
}

impl KeyCache {
    /// A cache whose lookups are reused for `lease` (zero: never reused).
    pub fn new(lease: std::time::Duration) -> Self {
        Self { lease, keys: Default::default() }
    }

    /// The lease.
    pub fn lease(&self) -> std::time::Duration {
        self.lease
    }

    /// A lookup of `hash` younger than the lease.
    pub fn get(&self, hash: &str) -> Option<CallerKey> {
        let keys = self.keys.lock().expect("not poisoned");
        keys.get(hash).filter(|(asked, _)| asked.elapsed() < self.lease).map(|(_, key)| key.clone())
    }

    /// Keeps `key`, looked up by a query sent at `asked`.
    pub fn put(&self, hash: &str, key: CallerKey, asked: std::time::Instant) {
        if self.lease.is_zero() {
            return;
        }
        let mut keys = self.keys.lock().expect("not poisoned");
        if keys.len() >= MAX_CACHED_KEYS {
            keys.retain(|_, (at, _)| at.elapsed() < self.lease);
            if keys.len() >= MAX_CACHED_KEYS {
                keys.clear();
            }
        }
        keys.insert(hash.to_owned(), (asked, key));
    }

    /// Something changed who may do what: forget every lookup here, and have the current
    /// request's answer wait out the lease (see [`crate::consistency`]).
    pub fn changed(&self) {
        self.keys.lock().expect("not poisoned").clear();
        crate::consistency::access_changed();
    }
}

/// The tenant-scoping header.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The platform admin, possibly acting for the tenant named in `X-Tenant-ID`.
    Admin {
        /// The tenant named in `X-Tenant-ID`, if any (it exists).
        acting_for: Option<Uuid>,
    },
    /// A tenant API key.
    Tenant(CallerKey),
}

/// A tenant API key that authenticated a request.
#[derive(Debug, Clone)]
pub struct CallerKey {
    /// The key's id.
    pub key_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its role.
    pub role: ApiKeyRole,
    /// The tenant's status when the key was looked up.
    pub tenant_status: String,
    /// The tenant's plan's requests per minute, if it limits them.
    pub rate_limit_per_minute: Option<i32>,
}

impl TryFrom<projections::tenants::reads::KeyGrant> for CallerKey {
    type Error = domain::ValidationError;

    fn try_from(grant: projections::tenants::reads::KeyGrant) -> Result<Self, Self::Error> {
        Ok(Self {
            key_id: grant.key_id,
            tenant_id: grant.tenant_id,
            role: ApiKeyRole::parse(&grant.role)?,
            tenant_status: grant.tenant_status,
            rate_limit_per_minute: grant.rate_limit_per_minute,
        })
    }
}

impl Caller {
    /// The actor recorded in event metadata.
    pub fn actor(&self) -> Actor {
        match self {
            Self::Admin { .. } => Actor::Admin,
            Self::Tenant(key) => Actor::ApiKey(key.key_id),
        }
    }

    /// Whether this is the platform admin.
    pub fn is_admin(&self) -> bool {
        matches!(self, Self::Admin { .. })
    }

    /// Whose data a read covers: the key's tenant, the tenant the admin named in `X-Tenant-ID`,
    /// or `None` (every tenant) for the admin naming none.
    pub fn tenant_scope(&self) -> Option<Uuid> {
        match self {
            Self::Admin { acting_for } => *acting_for,
            Self::Tenant(key) => Some(key.tenant_id),
        }
    }

    /// Whether the caller may see tenant `id`'s data.
    pub fn may_see(&self, id: Uuid) -> bool {
        match self {
            Self::Admin { .. } => true,
            Self::Tenant(key) => key.tenant_id == id,
        }
    }
}

/// Why a token that is neither the admin's nor an active key's is refused, as precisely as its
/// form tells: an admin token (`sla_`) that is not the current one was most likely rotated.
fn unknown_token(token: &str) -> &'static str {
    if token.starts_with("sla_") {
        "not the current admin token (it may have been replaced by `saas-ledger admin-token rotate`)"
    } else if token.starts_with(commands::api_keys::KEY_PREFIX) {
        "unknown or revoked API key"
    } else {
        "neither the admin token nor an API key (keys start with slk_, admin tokens with sla_)"
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| ApiError::unauthenticated("send Authorization: Bearer <token>"))?;
    let value = value.to_str().map_err(|_| ApiError::unauthenticated("the Authorization header is not valid text"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(ApiError::unauthenticated("the Authorization header must be \"Bearer <token>\"")),
    }
}

/// The tenant `X-Tenant-ID` names, by id or by code (see [`AppState::resolve_tenant`]).
async fn tenant_header(parts: &Parts, state: &AppState) -> Result<Option<Uuid>, ApiError> {
    match parts.headers.get(TENANT_HEADER) {
        None => Ok(None),
        Some(value) => {
            let invalid = || ApiError::validation("X-Tenant-ID", "must be a tenant id (UUID) or code (such as acme-clinic)");
            let value = value.to_str().map_err(|_| invalid())?.trim();
            if value.parse::<Uuid>().is_err() && domain::values::TenantCode::parse(value).is_err() {
                return Err(invalid());
            }
            state.resolve_tenant(value).await.map(Some)
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = bearer(parts)?;
        let named = tenant_header(parts, state).await?;
        let caller = if state.is_admin(token).await? {
            if let Some(id) = named {
                if !state.tenant_exists(id).await? {
                    return Err(ApiError::not_found("tenant"));
                }
            }
            Caller::Admin { acting_for: named }
        } else {
            let key = state
                .key_by_hash(&commands::api_keys::hash(token))
                .await?
                .ok_or_else(|| ApiError::unauthenticated(unknown_token(token)))?;
            if named.is_some_and(|id| id != key.tenant_id) {
                return Err(ApiError::forbidden("X-Tenant-ID names another tenant than the API key's"));
            }
            // Authorization before validation: a readonly key's write is refused here, before
            // any handler reads the body or the path.
            if !matches!(parts.method, Method::GET | Method::HEAD) && !key.role.may_write() {
                return Err(ApiError::forbidden("a readonly key may only read"));
            }
            Caller::Tenant(key)
        };
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// The caller of a whole request, for middleware: resolved (and cached in the request's
/// extensions, so the handler's extractor does not look it up again) and handed back with the
/// request.
pub async fn caller_of(request: axum::extract::Request, state: &AppState) -> (axum::extract::Request, Result<Caller, ApiError>) {
    let (mut parts, body) = request.into_parts();
    let caller = Caller::from_request_parts(&mut parts, state).await;
    (axum::extract::Request::from_parts(parts, body), caller)
}

/// The platform admin; a tenant key gets 403.
#[derive(Debug, Clone)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin { .. } => Ok(Admin),
            Caller::Tenant(_) => Err(ApiError::forbidden("this route is for the platform admin")),
        }
    }
}

/// A request on behalf of one tenant: a tenant key, or the admin naming the tenant in
/// `X-Tenant-ID`. Enforces the contract's gates on anything but reads: `readonly` keys may
/// only read (403), a suspended tenant's commands get 402 `TENANT_SUSPENDED` and a cancelled
/// tenant's 403 `TENANT_CANCELLED`.
#[derive(Debug, Clone)]
pub struct TenantCaller {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The key's role; `None` for the admin.
    pub role: Option<ApiKeyRole>,
    /// Who it is, for event metadata.
    pub actor: Actor,
}

impl TenantCaller {
    /// Refuses unless the caller is the admin or a key whose role may manage `role` keys
    /// (owners and admins).
    pub fn require_manager(&self) -> Result<(), ApiError> {
        match self.role {
            None | Some(ApiKeyRole::Owner | ApiKeyRole::Admin) => Ok(()),
            Some(role) => Err(ApiError::forbidden(format!("a {} key may not do this; use an owner or admin key", role.as_str()))),
        }
    }
}

/// A [`TenantCaller`] with an owner or admin key (or the admin acting for a tenant): the
/// role is checked when the caller is extracted, so before the body is read (a `member` key
/// sending an invalid body is 403, not 400).
#[derive(Debug, Clone)]
pub struct Manager(pub TenantCaller);

impl FromRequestParts<AppState> for Manager {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = TenantCaller::from_request_parts(parts, state).await?;
        caller.require_manager()?;
        Ok(Self(caller))
    }
}

impl FromRequestParts<AppState> for TenantCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self::gate(parts, state, false).await?.0)
    }
}

/// A tenant caller recording usage: as [`TenantCaller`], except that a cancelled tenant's key
/// is let through (with `cancelled` set), since usage that occurred before the cancellation
/// may arrive late and is still billed; the handler refuses anything later.
#[derive(Debug, Clone)]
pub struct UsageCaller {
    /// The caller.
    pub caller: TenantCaller,
    /// Whether the tenant is cancelled.
    pub cancelled: bool,
}

impl FromRequestParts<AppState> for UsageCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (caller, cancelled) = TenantCaller::gate(parts, state, true).await?;
        Ok(Self { caller, cancelled })
    }
}

impl TenantCaller {
    /// The caller and the contract's gates; with `cancelled_may_write`, a cancelled (not
    /// erased) tenant's key may write, and the answer says it is cancelled.
    async fn gate(parts: &mut Parts, state: &AppState, cancelled_may_write: bool) -> Result<(Self, bool), ApiError> {
        let is_read = matches!(parts.method, Method::GET | Method::HEAD);
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin { acting_for: Some(tenant_id) } => {
                // Not even the admin writes for an erased tenant: nothing personal may be
                // recorded for it again.
                let mut cancelled = false;
                if !is_read {
                    match state.tenant_status(tenant_id).await?.as_deref() {
                        Some("erased") => return Err(ApiError::new(StatusCode::FORBIDDEN, "TENANT_CANCELLED", "the tenant is erased")),
                        Some("cancelled") => cancelled = true,
                        _ => {}
                    }
                }
                Ok((Self { tenant_id, role: None, actor: Actor::Admin }, cancelled))
            }
            Caller::Admin { acting_for: None } => {
                Err(ApiError::validation("X-Tenant-ID", "the admin token must name a tenant in X-Tenant-ID for tenant routes"))
            }
            Caller::Tenant(key) => {
                if !is_read {
                    if !key.role.may_write() {
                        return Err(ApiError::forbidden("a readonly key may only read"));
                    }
                    match key.tenant_status.as_str() {
                        "suspended" => {
                            return Err(ApiError::new(
                                StatusCode::PAYMENT_REQUIRED,
                                "TENANT_SUSPENDED",
                                "the tenant is suspended; settle the open invoice to reactivate it",
                            ))
                        }
                        "cancelled" if cancelled_may_write => {}
                        "cancelled" | "erased" => {
                            return Err(ApiError::new(
                                StatusCode::FORBIDDEN,
                                "TENANT_CANCELLED",
                                format!("the tenant is {}", key.tenant_status),
                            ))
                        }
                        _ => {}
                    }
                }
                let cancelled = !is_read && key.tenant_status == "cancelled";
                Ok((Self { tenant_id: key.tenant_id, role: Some(key.role), actor: Actor::ApiKey(key.key_id) }, cancelled))
            }
        }
    }
}
