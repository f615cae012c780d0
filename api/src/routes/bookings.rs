//! Bookings: create, reschedule, cancel, list, read. Overlaps, seats and the monthly quota
//! hold under any number of concurrent requests (see `migrations/0003_bookings_and_quotas.sql`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commands::bookings::{CustomerDetails, NewBooking};
use commands::vault::PersonalDataKey;
use domain::booking::BookingCommand;
use domain::values::{DisplayName, Email};
use projections::bookings::reads::{BookingFilter, BookingRow};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{page_limit, parse_time_cursor, time_cursor, Page};
use crate::app::AppState;
use crate::auth::TenantCaller;
use crate::error::ApiError;
use crate::extract::{path_id, ApiJson, ApiQuery, OptionalJson};

/// The booking routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/bookings", post(create).get(list))
        .route("/v1/bookings/{id}", get(read))
        .route("/v1/bookings/{id}/reschedule", post(reschedule))
        .route("/v1/bookings/{id}/cancel", post(cancel))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CustomerBody {
    /// 1 to 200 characters, not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$",
        example = "Ada Lovelace"
    )]
    name: String,
    /// An e-mail address.
    #[schema(
        max_length = 254,
        pattern = r"^[^\s@\u0000-\u001f\u007f]{1,64}@[^\s@.\u0000-\u001f\u007f]+(\.[^\s@.\u0000-\u001f\u007f]+)+$",
        example = "ada@example.com"
    )]
    email: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBooking {
    /// The room or event.
    #[schema(format = Uuid)]
    resource_id: String,
    /// Start (RFC 3339).
    starts_at: DateTime<Utc>,
    /// End, after the start.
    ends_at: DateTime<Utc>,
    /// Seats (events; default 1).
    #[schema(minimum = 1, maximum = 1_000_000)]
    seats: Option<i64>,
    /// Who booked.
    customer: CustomerBody,
}

/// The booking resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct BookingView {
    id: Uuid,
    tenant_id: Uuid,
    resource_id: Uuid,
    resource_kind: String,
    status: String,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    seats: i32,
    /// `{name, email}`; both `null` once the tenant's personal data was erased.
    customer: CustomerView,
    cancel_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A booking's customer; `null` fields once the tenant's personal data was erased.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
struct CustomerView {
    /// The customer's name.
    name: Option<String>,
    /// The customer's e-mail.
    email: Option<String>,
}

impl BookingView {
    /// The view of a row, its customer opened with the tenant's key (`null` once erased).
    fn open(r: BookingRow, key: &PersonalDataKey) -> Self {
        Self {
            id: r.id,
            tenant_id: r.tenant_id,
            resource_id: r.resource_id,
            resource_kind: r.resource_kind,
            status: r.status,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            seats: r.seats,
            customer: CustomerView { name: key.open(&r.customer_name), email: key.open(&r.customer_email) },
            cancel_reason: r.cancel_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

async fn load(state: &AppState, tenant_id: Uuid, id: Uuid) -> Result<BookingView, ApiError> {
    let row = state.reads().bookings().booking(tenant_id, id).await?;
    let row = row.ok_or_else(|| ApiError::not_found("booking"))?;
    Ok(BookingView::open(row, &state.vault().key(tenant_id).await?))
}

/// `POST /v1/bookings` → 201 `{id, status: "confirmed", ...}`; 409 `BOOKING_OVERLAP` or
/// `CAPACITY_EXCEEDED`, 429 `QUOTA_EXCEEDED`. `seats` defaults to 1.
#[utoipa::path(
    post,
    path = "/v1/bookings",
    tag = "bookings",
    params(crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = CreateBooking,
    responses(
        (status = 201, description = "The confirmed booking", body = BookingView),
        crate::openapi::CommandErrors,
        (status = 409, description = "IDEMPOTENCY_KEY_REUSED, IDEMPOTENCY_KEY_IN_USE, CONCURRENT_MODIFICATION, INVALID_STATE_TRANSITION and the route's own conflicts; BOOKING_OVERLAP, CAPACITY_EXCEEDED, IDEMPOTENCY_KEY_REUSED", body = crate::openapi::ErrorBody),
        (status = 429, description = "QUOTA_EXCEEDED (details: metric, limit, used), RATE_LIMITED; RATE_LIMITED: the key's plan allows no more requests this minute (see Retry-After)", body = crate::openapi::ErrorBody)
    ),
)]
async fn create(
    State(state): State<AppState>,
    caller: TenantCaller,
    ApiJson(body): ApiJson<CreateBooking>,
) -> Result<(StatusCode, Json<BookingView>), ApiError> {
    let seats = body.seats.unwrap_or(1);
    let seats = u32::try_from(seats)
        .ok()
        .filter(|s| (1..=1_000_000).contains(s))
        .ok_or_else(|| ApiError::validation("seats", "must be between 1 and 1000000"))?;
    let request = NewBooking {
        resource_id: path_id(&body.resource_id, "resource")?,
        starts_at: body.starts_at,
        ends_at: body.ends_at,
        seats,
        customer: CustomerDetails {
            name: DisplayName::parse(&body.customer.name, "customer.name")?,
            email: Email::parse(&body.customer.email, "customer.email")?,
        },
    };
    let tenant_id = caller.tenant_id;
    let context = state.context(Some(tenant_id), caller.actor);
    let customer =
        CustomerView { name: Some(request.customer.name.as_str().to_owned()), email: Some(request.customer.email.as_str().to_owned()) };
    let app = state.clone();
    // Answered on commit, from the event itself: the reads of bookings wait for it (see
    // `consistency`), and nothing else this answer shows is a read model.
    let view = state
        .detach(async move {
            let (id, committed) = app.bookings().book(tenant_id, request, &context).await?;
            let confirmed = committed.events.iter().find_map(|e| match &e.payload {
                domain::booking::BookingEvent::BookingConfirmed {
                    tenant_id,
                    resource_id,
                    resource_kind,
                    starts_at,
                    ends_at,
                    seats,
                    confirmed_at,
                    ..
                } => Some(BookingView {
                    id,
                    tenant_id: *tenant_id,
                    resource_id: *resource_id,
                    resource_kind: resource_kind.as_str().to_owned(),
                    status: "confirmed".to_owned(),
                    starts_at: *starts_at,
                    ends_at: *ends_at,
                    seats: *seats as i32,
                    customer: customer.clone(),
                    cancel_reason: None,
                    created_at: *confirmed_at,
                    updated_at: *confirmed_at,
                }),
                _ => None,
            });
            confirmed.ok_or_else(|| ApiError::internal("a new booking's events hold no confirmation"))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn execute(
    state: AppState,
    caller: TenantCaller,
    id: String,
    command: impl FnOnce(DateTime<Utc>) -> BookingCommand,
) -> Result<Json<BookingView>, ApiError> {
    let id = path_id(&id, "booking")?;
    let tenant_id = caller.tenant_id;
    let context = state.context(Some(tenant_id), caller.actor);
    let command = command(context.at);
    let app = state.clone();
    state
        .detach(async move {
            let committed = app.bookings().execute(tenant_id, id, command, &context).await?;
            app.settle(&id.to_string(), &committed).await;
            Ok(())
        })
        .await?;
    Ok(Json(load(&state, tenant_id, id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Reschedule {
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
}

/// `POST /v1/bookings/{id}/reschedule {starts_at, ends_at}`.
#[utoipa::path(
    post,
    path = "/v1/bookings/{id}/reschedule",
    tag = "bookings",
    params(("id" = Uuid, Path, description = "Booking id"), crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = Reschedule,
    responses(
        (status = 200, description = "The moved booking", body = BookingView),
        crate::openapi::CommandErrors,
        crate::openapi::NotFound
    ),
)]
async fn reschedule(
    State(state): State<AppState>,
    caller: TenantCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Reschedule>,
) -> Result<Json<BookingView>, ApiError> {
    execute(state, caller, id, |at| BookingCommand::Reschedule { starts_at: body.starts_at, ends_at: body.ends_at, at }).await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CancelBooking)]
struct Cancel {
    /// Why (kept with the booking): not blank, no control characters.
    #[schema(max_length = 200, pattern = r"^[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f][^\u0000-\u001f\u007f]*$")]
    reason: Option<String>,
}

/// `POST /v1/bookings/{id}/cancel {reason}`: frees the slot or seats at once.
#[utoipa::path(
    post,
    path = "/v1/bookings/{id}/cancel",
    tag = "bookings",
    params(("id" = Uuid, Path, description = "Booking id"), crate::openapi::TenantHeader, crate::openapi::IdempotencyHeader),
    request_body = Option<Cancel>,
    responses(
        (status = 200, description = "The cancelled booking", body = BookingView),
        crate::openapi::CommandErrors,
        crate::openapi::NotFound
    ),
)]
async fn cancel(
    State(state): State<AppState>,
    caller: TenantCaller,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<Cancel>,
) -> Result<Json<BookingView>, ApiError> {
    let reason = DisplayName::parse(body.reason.as_deref().unwrap_or("cancelled"), "reason")?.into_inner();
    execute(state, caller, id, |at| BookingCommand::Cancel { reason, at }).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    resource_id: Option<Uuid>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    #[param(pattern = "^(confirmed|cancelled)$")]
    status: Option<String>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /v1/bookings?resource_id&from&to&status&limit&cursor`: by start time; `from`/`to`
/// select bookings that overlap `[from, to)`.
#[utoipa::path(
    get,
    path = "/v1/bookings",
    tag = "bookings",
    params(ListQuery, crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "A page of bookings: {data, has_more, next_cursor}", body = crate::routes::Page<BookingView>),
        crate::openapi::AuthErrors,
        crate::openapi::Invalid
    ),
)]
async fn list(
    State(state): State<AppState>,
    caller: TenantCaller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<BookingView>>, ApiError> {
    let limit = page_limit(q.limit)?;
    if let Some(status) = q.status.as_deref() {
        if !["confirmed", "cancelled"].contains(&status) {
            return Err(ApiError::validation("status", "must be confirmed or cancelled"));
        }
    }
    let cursor = parse_time_cursor(q.cursor.as_deref())?;
    let filter = BookingFilter { resource_id: q.resource_id, from: q.from, to: q.to, status: q.status };
    let rows = state.reads().bookings().list(caller.tenant_id, filter, cursor, limit + 1).await?;
    let page = Page::from_rows(rows, limit, |r| time_cursor(r.starts_at, r.id));
    let key = state.vault().key(caller.tenant_id).await?;
    let data = page.data.into_iter().map(|row| BookingView::open(row, &key)).collect();
    Ok(Json(Page { data, has_more: page.has_more, next_cursor: page.next_cursor }))
}

/// `GET /v1/bookings/{id}`.
#[utoipa::path(
    get,
    path = "/v1/bookings/{id}",
    tag = "bookings",
    params(("id" = Uuid, Path, description = "Booking id"), crate::openapi::TenantHeader),
    responses(
        (status = 200, description = "The booking", body = BookingView),
        crate::openapi::AuthErrors,
        crate::openapi::NotFound
    ),
)]
async fn read(State(state): State<AppState>, caller: TenantCaller, Path(id): Path<String>) -> Result<Json<BookingView>, ApiError> {
    Ok(Json(load(&state, caller.tenant_id, path_id(&id, "booking")?).await?))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, read, reschedule, cancel))]
pub struct Docs;
