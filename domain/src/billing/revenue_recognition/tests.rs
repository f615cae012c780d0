//! The rule's tests: the contract's worked examples and its properties.
use chrono::Duration;
use proptest::prelude::*;

use super::*;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn m(s: &str) -> Month {
    Month::parse(s, "month").unwrap()
}

fn shown(schedule: &Schedule) -> Vec<(String, String)> {
    schedule.iter().map(|(m, a)| (m.to_string(), a.to_string())).collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(m, a)| (m.to_string(), a.to_string())).collect()
}

fn period(start: &str, end: &str) -> Period {
    Period { start: at(start), end: at(end) }
}

#[test]
fn months_are_written_and_read_as_year_and_month() {
    assert_eq!(m("2027-03").to_string(), "2027-03");
    assert_eq!(m("2027-12").next(), m("2028-01"));
    assert_eq!(m("2027-01").prev(), m("2026-12"));
    assert_eq!(m("2027-02").end(), at("2027-03-01T00:00:00Z"));
    for bad in ["2027-13", "2027-00", "2027-3", "27-03", "2027/03", "", "2027-03-01", "１２３４-01"] {
        assert_eq!(Month::parse(bad, "month").unwrap_err().field, "month", "{bad}");
    }
}

#[test]
fn a_monthly_line_from_the_15th_is_recognized_by_the_day() {
    let s = straight_line(d("31.00"), period("2027-01-15T00:00:00Z", "2027-02-15T00:00:00Z"));
    assert_eq!(shown(&s), pairs(&[("2027-01", "17.00"), ("2027-02", "14.00")]));
}

#[test]
fn a_yearly_line_gets_each_month_its_days() {
    let s = straight_line(d("365.00"), period("2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"));
    let days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    assert_eq!(s.len(), 12);
    for ((_, amount), days) in s.iter().zip(days) {
        assert_eq!(*amount, Decimal::from(days));
    }
}

#[test]
fn a_period_starting_and_ending_at_noon_splits_the_half_days() {
    let s = straight_line(d("120.00"), period("2027-06-15T12:00:00Z", "2027-10-13T12:00:00Z"));
    assert_eq!(
        shown(&s),
        pairs(&[("2027-06", "15.50"), ("2027-07", "31.00"), ("2027-08", "31.00"), ("2027-09", "30.00"), ("2027-10", "12.50")])
    );
}

#[test]
fn an_upgrade_on_the_21st_recognizes_the_new_price_for_the_rest_of_april() {
    let april = period("2027-04-01T00:00:00Z", "2027-05-01T00:00:00Z");
    let rest = period("2027-04-21T00:00:00Z", "2027-05-01T00:00:00Z");
    let plan = InvoiceLine::fixed(LineKind::Plan, "Basic", d("90.00")).over(april);
    let first = InvoiceRevenue::recognize(Issued { lines: &[plan], period: april, issued_at: april.start }, &|_, _| Vec::new());
    let lines = [
        InvoiceLine::fixed(LineKind::Proration, "Unused time on Basic", d("-30.00")).over(rest),
        InvoiceLine::fixed(LineKind::Proration, "Remaining time on Pro", d("40.00")).over(rest),
    ];
    let upgrade = InvoiceRevenue::recognize(Issued { lines: &lines, period: rest, issued_at: rest.start }, &|_, _| Vec::new());
    let may = period("2027-05-01T00:00:00Z", "2027-06-01T00:00:00Z");
    let renewal = InvoiceRevenue::recognize(
        Issued { lines: &[InvoiceLine::fixed(LineKind::Plan, "Pro", d("120.00")).over(may)], period: may, issued_at: may.start },
        &|_, _| Vec::new(),
    );
    let mut books = Schedule::new();
    for invoice in [first, upgrade, renewal] {
        for (month, amount) in invoice.schedule() {
            *books.entry(month).or_default() += amount;
        }
    }
    assert_eq!(shown(&books), pairs(&[("2027-04", "100.00"), ("2027-05", "120.00")]));
}

#[test]
fn usage_is_recognized_as_consumed_and_lines_without_a_period_when_issued() {
    let p = period("2027-01-15T00:00:00Z", "2027-02-15T00:00:00Z");
    let lines = [
        InvoiceLine::fixed(LineKind::Usage, "api calls", d("10.00")).over(p).of_metric("api_calls"),
        InvoiceLine::fixed(LineKind::Credit, "Carried", d("5.00")),
    ];
    let consumed = |metric: &str, _: Period| {
        assert_eq!(metric, "api_calls");
        vec![(m("2027-01"), d("900")), (m("2027-02"), d("100"))]
    };
    let r = InvoiceRevenue::recognize(Issued { lines: &lines, period: p, issued_at: at("2027-02-15T00:00:00Z") }, &consumed);
    assert_eq!(shown(&r.line_schedule(0)), pairs(&[("2027-01", "9.00"), ("2027-02", "1.00")]));
    assert_eq!(shown(&r.line_schedule(1)), pairs(&[("2027-02", "5.00")]));
    // Nothing consumed: by the second.
    let r = InvoiceRevenue::recognize(Issued { lines: &lines, period: p, issued_at: p.end }, &|_, _| Vec::new());
    assert_eq!(shown(&r.line_schedule(0)), pairs(&[("2027-01", "5.48"), ("2027-02", "4.52")]));
}

#[test]
fn a_discount_follows_the_lines_it_reduces() {
    let jan = period("2027-01-01T00:00:00Z", "2027-02-01T00:00:00Z");
    let year = period("2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z");
    let lines = [
        InvoiceLine::fixed(LineKind::Plan, "Plan", d("365.00")).over(year),
        InvoiceLine::fixed(LineKind::Addon, "Seats", d("31.00")).over(jan),
        InvoiceLine::fixed(LineKind::Discount, "10 % off", d("-39.60")),
    ];
    let r = InvoiceRevenue::recognize(Issued { lines: &lines, period: year, issued_at: year.start }, &|_, _| Vec::new());
    let discount = r.line_schedule(2);
    assert_eq!(discount.values().sum::<Decimal>(), d("-39.60"));
    // 365/396 of it over the year by the day, 31/396 of it in January.
    assert_eq!(discount[&m("2027-02")], d("-2.80"));
    assert_eq!(discount[&m("2027-01")], d("-6.20"));
    assert_eq!(r.schedule().values().sum::<Decimal>(), d("356.40"));
}

#[test]
fn a_credit_note_reverses_what_was_recognized_in_its_own_month_and_lowers_the_rest() {
    let year = period("2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z");
    let lines = [InvoiceLine::fixed(LineKind::Plan, "Plan", d("365.00")).over(year)];
    let mut r = InvoiceRevenue::recognize(Issued { lines: &lines, period: year, issued_at: year.start }, &|_, _| Vec::new());
    // 36.50 credited in April: 90 of 365 days were recognized before (January – March).
    let effect = r.credit(d("36.50"), m("2027-04"));
    assert_eq!(effect.reversed, d("9.00"));
    assert_eq!(effect.lowered.values().sum::<Decimal>(), d("27.50"));
    let s = r.line_schedule(0);
    assert_eq!(s[&m("2027-01")], d("31.00"), "an earlier month never changes");
    assert_eq!(s[&m("2027-03")], d("31.00"));
    assert_eq!(s.values().sum::<Decimal>(), d("328.50"));
    assert_eq!(r.line_credited(0), d("36.50"));
    // A void in June takes what is left.
    let left = r.billed() - r.credited();
    let effect = r.credit(left, m("2027-06"));
    assert_eq!(effect.reversed + effect.lowered.values().sum::<Decimal>(), d("328.50"));
    let s = r.line_schedule(0);
    assert_eq!(s.values().sum::<Decimal>(), Decimal::ZERO);
    assert!(s.range(m("2027-07")..).all(|(_, a)| a.is_zero()));
    assert_eq!(s[&m("2027-05")], d("27.90"), "May as the credit note in April left it");
}

#[test]
fn catch_up_books_closed_months_in_the_first_open_one() {
    let s = straight_line(d("120.00"), period("2027-06-15T12:00:00Z", "2027-10-13T12:00:00Z"));
    let booked = catch_up(s, Some(m("2027-08")));
    assert_eq!(shown(&booked), pairs(&[("2027-08", "77.50"), ("2027-09", "30.00"), ("2027-10", "12.50")]));
}

fn any_period() -> impl Strategy<Value = Period> {
    (0i64..3 * 365 * 86_400, 0i64..800 * 86_400).prop_map(|(offset, length)| {
        let start = at("2027-01-01T00:00:00Z") + Duration::seconds(offset);
        Period { start, end: start + Duration::seconds(length) }
    })
}

proptest! {
    #[test]
    fn months_sum_to_the_line_exactly_and_a_positive_line_has_no_negative_month(cents in -10_000_000i64..10_000_000, p in any_period()) {
        let amount = Decimal::new(cents, 2);
        let s = straight_line(amount, p);
        prop_assert_eq!(s.values().sum::<Decimal>(), amount);
        if cents >= 0 {
            prop_assert!(s.values().all(|a| *a >= Decimal::ZERO));
        }
        prop_assert!(s.keys().all(|month| *month >= Month::of(p.start)));
    }

    #[test]
    fn allocations_sum_exactly(cents in -10_000_000i64..10_000_000, weights in prop::collection::vec(1i64..1_000_000, 1..20)) {
        let weights: Vec<Decimal> = weights.into_iter().map(|w| Decimal::new(w, 2)).collect();
        let parts = allocate(Decimal::new(cents, 2), &weights).unwrap();
        prop_assert_eq!(parts.iter().sum::<Decimal>(), Decimal::new(cents, 2));
        prop_assert!(parts.iter().all(|p| p.scale() <= 2));
        if cents >= 0 {
            prop_assert!(parts.iter().all(|p| *p >= Decimal::ZERO));
        }
    }

    #[test]
    fn a_credit_note_never_changes_a_month_before_its_own(
        cents in 1i64..10_000_000,
        p in any_period(),
        credit_cents in prop::collection::vec(1i64..10_000_000, 1..4),
        offsets in prop::collection::vec(0i64..40, 1..4),
    ) {
        let amount = Decimal::new(cents, 2);
        let lines = [InvoiceLine::fixed(LineKind::Plan, "x", amount).over(p)];
        let mut r = InvoiceRevenue::recognize(Issued { lines: &lines, period: p, issued_at: p.start }, &|_, _| Vec::new());
        let mut month = Month::of(p.start);
        for (c, offset) in credit_cents.into_iter().zip(offsets) {
            for _ in 0..offset {
                month = month.next();
            }
            let left = r.billed() - r.credited();
            let share = Decimal::new(c, 2).min(left);
            let before = r.schedule();
            let effect = r.credit(share, month);
            let after = r.schedule();
            for (m, a) in before.range(..month) {
                prop_assert_eq!(after.get(m).copied().unwrap_or_default(), *a);
            }
            prop_assert_eq!(effect.reversed + effect.lowered.values().sum::<Decimal>(), share);
            prop_assert_eq!(after.values().sum::<Decimal>(), amount - r.credited());
            // Only the credit's own month can go below zero (what it reverses).
            prop_assert!(after.range(month.next()..).all(|(_, a)| *a >= Decimal::ZERO));
        }
    }
}
