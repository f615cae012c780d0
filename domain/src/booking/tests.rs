//! Given/when/then tests of every booking transition and refusal.

use chrono::TimeZone;
use cqrs_es::test::TestFramework;

use super::*;
use crate::values::Sealed;

fn at(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 10, h, 0, 0).unwrap()
}

fn room() -> BookedResource {
    BookedResource { id: Uuid::from_u128(5), kind: ResourceKind::Room, capacity: 4 }
}

fn customer() -> Customer {
    Customer { name: Sealed::from_stored("pii1:name".into()), email: Sealed::from_stored("pii1:email".into()) }
}

fn create(resource: BookedResource, starts: u32, ends: u32, seats: u32, limits: BookingLimits) -> BookingCommand {
    BookingCommand::Create {
        tenant_id: Uuid::from_u128(1),
        resource,
        starts_at: at(starts),
        ends_at: at(ends),
        seats,
        customer: customer(),
        limits,
        at: at(8),
    }
}

fn run(given: Vec<BookingEvent>, command: BookingCommand) -> Result<Vec<BookingEvent>, BookingError> {
    TestFramework::<Booking>::with(()).given(given).when(command).inspect_result()
}

#[test]
fn a_valid_booking_is_confirmed_with_the_limits_the_store_enforces() {
    let limits = BookingLimits { bookings_per_month: Some(100), tickets_per_event: Some(50) };
    let events = run(vec![], create(room(), 10, 11, 2, limits)).unwrap();
    let BookingEvent::BookingConfirmed { quota_limit, quota_period_start, capacity_limit, .. } = &events[0] else { panic!() };
    assert_eq!((*quota_limit, *capacity_limit), (Some(100), 4));
    assert_eq!(*quota_period_start, Utc.with_ymd_and_hms(2027, 3, 1, 0, 0, 0).unwrap());
    let event = BookedResource { id: Uuid::from_u128(6), kind: ResourceKind::Event, capacity: 500 };
    let events = run(vec![], create(event, 10, 12, 3, limits)).unwrap();
    assert!(matches!(events[0], BookingEvent::BookingConfirmed { capacity_limit: 50, .. }), "the plan's tickets per event cap the seats");
}

#[test]
fn bad_slots_and_seat_counts_are_refused() {
    let limits = BookingLimits::default();
    assert!(matches!(run(vec![], create(room(), 11, 10, 1, limits)), Err(BookingError::Invalid(e)) if e.field == "ends_at"));
    assert!(matches!(run(vec![], create(room(), 10, 10, 1, limits)), Err(BookingError::Invalid(_))));
    assert!(matches!(run(vec![], create(room(), 1, 7, 1, limits)), Err(BookingError::Invalid(_))), "already over");
    let long = BookingCommand::Create {
        tenant_id: Uuid::nil(),
        resource: room(),
        starts_at: at(10),
        ends_at: at(10) + Duration::hours(25),
        seats: 1,
        customer: customer(),
        limits,
        at: at(8),
    };
    assert!(matches!(run(vec![], long), Err(BookingError::Invalid(_))));
    assert!(matches!(run(vec![], create(room(), 10, 11, 0, limits)), Err(BookingError::Invalid(e)) if e.field == "seats"));
    assert!(matches!(run(vec![], create(room(), 10, 11, 5, limits)), Err(BookingError::CapacityExceeded { capacity: 4, requested: 5 })));
}

#[test]
fn reschedule_and_cancel_a_confirmed_booking_only() {
    let confirmed = run(vec![], create(room(), 10, 11, 1, BookingLimits::default())).unwrap();
    let moved = run(confirmed.clone(), BookingCommand::Reschedule { starts_at: at(14), ends_at: at(15), at: at(9) }).unwrap();
    assert!(matches!(moved[0], BookingEvent::BookingRescheduled { .. }));
    let cancelled = run(confirmed.clone(), BookingCommand::Cancel { reason: "ill".into(), at: at(9) }).unwrap();
    assert!(matches!(cancelled[0], BookingEvent::BookingCancelled { seats: 1, .. }));
    let mut all = confirmed.clone();
    all.extend(cancelled);
    assert!(matches!(run(all.clone(), BookingCommand::Cancel { reason: "x".into(), at: at(9) }), Err(BookingError::Cancelled("cancel"))));
    assert!(matches!(
        run(all, BookingCommand::Reschedule { starts_at: at(14), ends_at: at(15), at: at(9) }),
        Err(BookingError::Cancelled(_))
    ));
    assert!(matches!(run(vec![], BookingCommand::Cancel { reason: "x".into(), at: at(9) }), Err(BookingError::NotFound)));
    assert!(matches!(run(confirmed.clone(), create(room(), 10, 11, 1, BookingLimits::default())), Err(BookingError::AlreadyExists)));
}
