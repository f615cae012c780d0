//! What the tenant routes answer: the tenant (its personal data opened with its key, `null` once
//! erased) and, once, the sign-up with its owner key.

use super::*;

/// The tenant resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct TenantView {
    pub(crate) id: Uuid,
    pub(crate) code: String,
    name: String,
    business_type: String,
    timezone: String,
    currency: String,
    locale: String,
    /// `null` once the tenant's personal data was erased.
    billing_email: Option<String>,
    plan: String,
    plan_version: i32,
    billing_period: String,
    trial_days: i32,
    tax_rate: String,
    /// Days after issue an invoice is due.
    net_terms_days: i32,
    subscription_id: Uuid,
    status: String,
    status_reason: Option<String>,
    branding: BrandingView,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A tenant's branding; absent parts are `null`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct BrandingView {
    /// `#RRGGBB`.
    primary_color: Option<String>,
    /// `#RRGGBB`.
    secondary_color: Option<String>,
    /// An `https://` URL.
    logo_url: Option<String>,
    /// The tenant's own domain.
    custom_domain: Option<String>,
}

/// What `POST /v1/tenants` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SignedUp {
    /// The tenant's id.
    pub(crate) id: Uuid,
    /// Its code.
    pub(crate) code: String,
    /// The owner API key (`slk_...`): shown this once.
    pub(crate) api_key: String,
    /// The key's id.
    pub(crate) api_key_id: Uuid,
    /// The subscription's id.
    pub(crate) subscription_id: Uuid,
    /// The tenant's status.
    #[schema(example = "active")]
    pub(crate) status: String,
}

impl TenantView {
    /// The view of a row, its personal data opened with the tenant's key.
    pub(crate) fn open(r: TenantRow, key: &PersonalDataKey) -> Self {
        Self {
            id: r.id,
            code: r.code,
            name: r.name,
            business_type: r.business_type,
            timezone: r.timezone,
            currency: r.currency,
            locale: r.locale,
            billing_email: key.open(&r.billing_email),
            plan: r.plan,
            plan_version: r.plan_version,
            billing_period: r.billing_period,
            trial_days: r.trial_days,
            tax_rate: r.tax_rate.normalize().to_string(),
            net_terms_days: r.net_terms_days,
            subscription_id: r.subscription_id,
            status: r.status,
            status_reason: r.status_reason,
            branding: BrandingView {
                primary_color: r.primary_color,
                secondary_color: r.secondary_color,
                logo_url: r.logo_url,
                custom_domain: r.custom_domain,
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

pub(crate) async fn load(state: &AppState, id: Uuid) -> Result<TenantView, ApiError> {
    let row = state.reads().tenants().find(id).await?;
    let row = row.ok_or_else(|| ApiError::not_found("tenant"))?;
    Ok(TenantView::open(row, &state.vault().key(id).await?))
}
