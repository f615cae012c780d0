//! Billing periods with anchor-day semantics, as Stripe does: every period boundary is the
//! anchor plus a whole number of months, clamped to the month's last day, always computed from
//! the anchor (never from the previous boundary, which would drift): an anchor of Jan 31 gives
//! Feb 28 (29), Mar 31, Apr 30. Yearly periods are 12 months. All in UTC.

use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};

use crate::plan::BillingPeriod;

/// A half-open interval `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Period))]
pub struct Period {
    /// First instant.
    pub start: DateTime<Utc>,
    /// First instant after.
    pub end: DateTime<Utc>,
}

impl Period {
    /// Length in seconds.
    pub fn seconds(&self) -> i64 {
        (self.end - self.start).num_seconds()
    }
}

/// How many months one period of this kind spans.
pub fn months_in(period: BillingPeriod) -> u32 {
    match period {
        BillingPeriod::Monthly => 1,
        BillingPeriod::Yearly => 12,
    }
}

/// The anchor plus `months`, clamped to the end of the target month.
pub fn add_months(anchor: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    anchor.checked_add_months(Months::new(months)).expect("billing dates stay within chrono's range")
}

/// The `index`-th period (0-based) of a subscription anchored at `anchor`.
pub fn nth(anchor: DateTime<Utc>, period: BillingPeriod, index: u32) -> Period {
    let months = months_in(period);
    Period { start: add_months(anchor, months * index), end: add_months(anchor, months * (index + 1)) }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 10, 30, 0).unwrap()
    }

    #[test]
    fn month_ends_clamp_and_do_not_drift() {
        let anchor = utc(2027, 1, 31);
        let ends: Vec<_> = (0..4).map(|i| nth(anchor, BillingPeriod::Monthly, i).end).collect();
        assert_eq!(ends, [utc(2027, 2, 28), utc(2027, 3, 31), utc(2027, 4, 30), utc(2027, 5, 31)]);
        assert_eq!(nth(utc(2028, 1, 31), BillingPeriod::Monthly, 0).end, utc(2028, 2, 29));
    }

    #[test]
    fn yearly_periods_clamp_leap_days() {
        let anchor = utc(2028, 2, 29);
        assert_eq!(nth(anchor, BillingPeriod::Yearly, 0).end, utc(2029, 2, 28));
        assert_eq!(nth(anchor, BillingPeriod::Yearly, 3).end, utc(2032, 2, 29));
    }
}
