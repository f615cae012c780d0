//! The public event types: which log events an endpoint can subscribe to, under which name, and the
//! body each delivery carries (its `webhook-id` derived from the event's position, so a retry is
//! recognisable).

use super::*;

/// Every public event type an endpoint may subscribe to.
pub const EVENT_TYPES: [&str; 19] = [
    "tenant.created",
    "tenant.suspended",
    "tenant.reactivated",
    "tenant.cancelled",
    "subscription.updated",
    "subscription.past_due",
    "subscription.suspended",
    "subscription.cancelled",
    "subscription.trial_will_end",
    "invoice.issued",
    "invoice.paid",
    "invoice.voided",
    "invoice.payment_reminder",
    "booking.confirmed",
    "booking.cancelled",
    "member.invited",
    "member.removed",
    "quota.threshold_reached",
    "*",
];

/// The public type of a log event, if it has one.
pub fn public_type(event_type: &str) -> Option<&'static str> {
    Some(match event_type {
        "TenantCreated" => "tenant.created",
        "TenantSuspended" => "tenant.suspended",
        "TenantReactivated" => "tenant.reactivated",
        "TenantCancelled" => "tenant.cancelled",
        "SubscriptionStarted"
        | "PlanChanged"
        | "PlanChangeScheduled"
        | "ScheduledPlanChangeDropped"
        | "CancellationScheduled"
        | "CancellationWithdrawn"
        | "AddonsChanged"
        | "SeatAdded"
        | "CouponApplied"
        | "CouponRemoved"
        | "NetTermsChanged"
        | "SubscriptionReactivated" => "subscription.updated",
        "PaymentFailed" => "subscription.past_due",
        "SubscriptionSuspended" => "subscription.suspended",
        "SubscriptionCancelled" => "subscription.cancelled",
        "InvoiceIssued" => "invoice.issued",
        "PaymentSucceeded" => "invoice.paid",
        "InvoiceVoided" => "invoice.voided",
        "PaymentReminder" => "invoice.payment_reminder",
        "BookingConfirmed" => "booking.confirmed",
        "BookingCancelled" => "booking.cancelled",
        "MemberInvited" => "member.invited",
        "MemberRemoved" => "member.removed",
        _ => return None,
    })
}

/// The log event types that have a public type (what the fan-out reads).
pub fn mapped_event_types() -> Vec<String> {
    [
        "TenantCreated",
        "TenantSuspended",
        "TenantReactivated",
        "TenantCancelled",
        "SubscriptionStarted",
        "PlanChanged",
        "PlanChangeScheduled",
        "ScheduledPlanChangeDropped",
        "CancellationScheduled",
        "CancellationWithdrawn",
        "AddonsChanged",
        "SeatAdded",
        "CouponApplied",
        "CouponRemoved",
        "NetTermsChanged",
        "SubscriptionReactivated",
        "PaymentFailed",
        "SubscriptionSuspended",
        "SubscriptionCancelled",
        "InvoiceIssued",
        "PaymentSucceeded",
        "InvoiceVoided",
        "PaymentReminder",
        "BookingConfirmed",
        "BookingCancelled",
        "MemberInvited",
        "MemberRemoved",
    ]
    .iter()
    .map(|t| (*t).to_owned())
    .collect()
}

/// The body of `event`'s delivery: `{id, type, created_at, tenant_id, data}`.
pub fn body(event: &StoredEvent, public: &str) -> String {
    json!({
        "id": event_id(event.position),
        "type": public,
        "created_at": event.occurred_at().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "tenant_id": event.tenant_id,
        "data": data(event),
    })
    .to_string()
}

/// The event's payload, with the aggregate it belongs to and its log position.
pub(super) fn data(event: &StoredEvent) -> Value {
    let mut data = match &event.payload {
        Value::Object(map) => map.clone(),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("value".to_owned(), other.clone());
            map
        }
    };
    data.remove("type");
    data.insert("event_type".to_owned(), json!(event.event_type));
    data.insert("aggregate_type".to_owned(), json!(event.aggregate_type));
    data.insert("aggregate_id".to_owned(), json!(event.aggregate_id));
    data.insert("position".to_owned(), json!(event.position));
    Value::Object(data)
}

/// The `webhook-id` of the event at `position`.
pub fn event_id(position: i64) -> String {
    format!("evt_{position}")
}
