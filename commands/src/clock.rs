//! The one place the write side learns the time. Production reads the system clock; tests and
//! demos use a clock they move by hand. Domain code never calls either: it receives instants.
//!
//! Both tell time to the microsecond, Postgres's precision: an instant the server makes reads
//! the same from an aggregate's state (`GET /v1/subscription`) as from a read model (invoices),
//! instead of nanoseconds in one and microseconds in the other.

use std::sync::Mutex;

use chrono::{DateTime, SubsecRound, Utc};

/// `at` to the microsecond (truncated).
pub fn to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// A source of "now".
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        to_micros(Utc::now())
    }
}

/// A clock that stands still until it is moved, and only ever moves forward.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { now: Mutex::new(to_micros(start)) }
    }

    /// Moves the clock to `to`; refuses (returning the current time) to go backwards.
    pub fn advance_to(&self, to: DateTime<Utc>) -> Result<DateTime<Utc>, DateTime<Utc>> {
        let to = to_micros(to);
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        if to < *now {
            return Err(*now);
        }
        *now = to;
        Ok(to)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_clocks_tell_time_to_the_microsecond() {
        let has_micros_only = |t: DateTime<Utc>| t.timestamp_subsec_nanos().is_multiple_of(1_000);
        assert!(has_micros_only(SystemClock.now()));
        let nanos = DateTime::parse_from_rfc3339("2027-01-07T01:53:48.453375499Z").unwrap().with_timezone(&Utc);
        let clock = ManualClock::new(nanos);
        assert_eq!(clock.now().to_rfc3339(), "2027-01-07T01:53:48.453375+00:00");
        let later = nanos + chrono::Duration::nanoseconds(1_999);
        assert_eq!(clock.advance_to(later).unwrap().timestamp_subsec_nanos(), 453_377_000);
        assert!(has_micros_only(clock.now()));
    }
}
