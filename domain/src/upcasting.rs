//! Upcasters: old event versions are lifted to the current shape when read, so the log is
//! never rewritten. Used when aggregates are loaded, by projections and by replay (the audit
//! chain alone hashes events exactly as stored).
//!
//! History:
//! - `TenantSuspended` 1.0 → 1.1: added `source` (who suspended: `admin` or `billing`);
//!   every 1.0 suspension was the admin's.

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster, SerializedEvent};
use serde_json::Value;

/// Every upcaster, oldest change first.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(SemanticVersionEventUpcaster::new(
        "TenantSuspended",
        "1.1",
        Box::new(|mut payload: Value| {
            if let Some(fields) = payload.as_object_mut() {
                fields.entry("source").or_insert_with(|| Value::String("admin".to_owned()));
            }
            payload
        }),
    ))]
}

/// Lifts `event` through every upcaster that applies to it.
pub fn upcast(event: SerializedEvent, upcasters: &[Box<dyn EventUpcaster>]) -> SerializedEvent {
    upcasters.iter().fold(
        event,
        |event, upcaster| if upcaster.can_upcast(&event.event_type, &event.event_version) { upcaster.upcast(event) } else { event },
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tenant::{SuspensionSource, TenantEvent};

    fn stored(version: &str, payload: Value) -> SerializedEvent {
        SerializedEvent::new("t".into(), 3, "Tenant".into(), "TenantSuspended".into(), version.into(), payload, json!({}))
    }

    #[test]
    fn a_version_1_0_suspension_reads_as_the_admins() {
        let old = stored("1.0", json!({"type": "TenantSuspended", "reason": "x", "suspended_at": "2026-01-01T00:00:00Z"}));
        assert!(serde_json::from_value::<TenantEvent>(old.payload.clone()).is_err(), "1.0 does not fit the current shape");
        let lifted = upcast(old, &upcasters());
        assert_eq!(lifted.event_version, "1.1.0");
        let event: TenantEvent = serde_json::from_value(lifted.payload).unwrap();
        assert!(matches!(event, TenantEvent::TenantSuspended { source: SuspensionSource::Admin, .. }));
    }

    #[test]
    fn current_versions_pass_unchanged() {
        let current =
            stored("1.1", json!({"type": "TenantSuspended", "reason": "x", "source": "billing", "suspended_at": "2026-01-01T00:00:00Z"}));
        assert_eq!(upcast(current.clone(), &upcasters()), current);
    }
}
