//! Revenue recognition: when the money an invoice bills becomes revenue.
//!
//! - A line with a service period is recognized **straight-line by the second** over `[start,
//!   end)` in UTC calendar months, by **running-total rounding**: month m gets `round(A × W(≤ m) /
//!   W) − round(A × W(< m) / W)` where `W` counts the line's seconds (its weights) up to the end of
//!   month m, rounded half away from zero to the cent once per boundary. So the months always sum
//!   to the line exactly, and a positive line never gets a negative month.
//! - `usage`/`overage` lines are weighted by the quantity consumed in each month of the period
//!   they bill instead of by seconds (as consumed); with nothing consumed, by seconds.
//! - Lines without a period are recognized in the month they are issued.
//! - A `discount` line is allocated to the invoice's other lines in proportion to their amounts
//!   (running-total rounding in line order), and each part follows its line's weights.
//! - A credit note's subtotal is taken from the invoice's parts in proportion to their amounts;
//!   of a part's share C, `C × (recognized before the credit note's month) / (its amount)` is
//!   reversed in the credit note's month, and the rest lowers the part's months from the credit
//!   note's month on, in proportion to them. No month before the credit note's changes. A void
//!   is a credit note for what is left of the subtotal.
//! - Closed months never change: whatever would land in one is booked in the first open month
//!   ([`catch_up`]).
//!
//! Pure: the projection (`projections::revenue`) feeds it the log's facts.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::invoice::{InvoiceLine, LineKind};
use super::money::round_cents;
use super::period::Period;
use crate::ValidationError;

/// A calendar month in UTC, written `2027-03`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Month {
    year: i32,
    month: u32,
}

impl Month {
    /// `year`-`month`, if `month` is 1..=12 and the year within 1970..=9999.
    pub fn new(year: i32, month: u32) -> Option<Self> {
        ((1..=12).contains(&month) && (1970..=9999).contains(&year)).then_some(Self { year, month })
    }

    /// The month `at` falls in.
    pub fn of(at: DateTime<Utc>) -> Self {
        Self { year: at.year(), month: at.month() }
    }

    /// Parses `2027-03` (a month of 1970..=9999).
    pub fn parse(input: &str, field: &str) -> Result<Self, ValidationError> {
        let err = || ValidationError::new(field, "must be a month written YYYY-MM, such as \"2027-03\"");
        let (y, m) = input.split_once('-').ok_or_else(err)?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        Self::new(y.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?).ok_or_else(err)
    }

    /// Its first instant.
    pub fn start(self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0).single().expect("a valid month")
    }

    /// The first instant after it.
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }

    /// The month after.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self { year: self.year + 1, month: 1 }
        } else {
            Self { year: self.year, month: self.month + 1 }
        }
    }

    /// The month before.
    pub fn prev(self) -> Self {
        if self.month == 1 {
            Self { year: self.year - 1, month: 12 }
        } else {
            Self { year: self.year, month: self.month - 1 }
        }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl From<Month> for String {
    fn from(m: Month) -> Self {
        m.to_string()
    }
}

impl TryFrom<String> for Month {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s, "month").map_err(|e| e.message)
    }
}

/// Amounts per month.
pub type Schedule = BTreeMap<Month, Decimal>;

/// Weights per month, in month order.
pub type Weights = Vec<(Month, Decimal)>;

/// The seconds of `period` in each month it touches (an empty period: one second in its start's month).
pub fn seconds_by_month(period: Period) -> Weights {
    if period.end <= period.start {
        return vec![(Month::of(period.start), Decimal::ONE)];
    }
    let mut weights = Vec::new();
    let mut month = Month::of(period.start);
    while month.start() < period.end {
        let from = period.start.max(month.start());
        let to = period.end.min(month.end());
        if to > from {
            weights.push((month, Decimal::from((to - from).num_seconds())));
        }
        month = month.next();
    }
    weights
}

/// `amount` split in proportion to `weights` by running-total rounding: part i is
/// `round(amount × w(≤ i) / w) − round(amount × w(< i) / w)`. The parts sum to `amount` exactly;
/// with positive weights, a positive amount never gets a negative part. `None` when the weights
/// sum to zero.
pub fn allocate(amount: Decimal, weights: &[Decimal]) -> Option<Vec<Decimal>> {
    let total: Decimal = weights.iter().sum();
    if total.is_zero() {
        return None;
    }
    let amount = round_cents(amount);
    let (mut cumulative, mut booked) = (Decimal::ZERO, Decimal::ZERO);
    let mut parts = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        cumulative += w;
        // The last boundary is the whole amount exactly (no division on it).
        let upto = if i + 1 == weights.len() { amount } else { round_cents(amount * cumulative / total) };
        parts.push(upto - booked);
        booked = upto;
    }
    Some(parts)
}

/// `amount` spread over the months of `weights` ([`allocate`]); all in the first month when the
/// weights sum to zero.
pub fn spread(amount: Decimal, weights: &[(Month, Decimal)]) -> Schedule {
    let mut schedule = Schedule::new();
    match allocate(amount, &weights.iter().map(|(_, w)| *w).collect::<Vec<_>>()) {
        Some(parts) => {
            for ((month, _), part) in weights.iter().zip(parts) {
                *schedule.entry(*month).or_default() += part;
            }
        }
        None => {
            if let Some((month, _)) = weights.first() {
                schedule.insert(*month, round_cents(amount));
            }
        }
    }
    schedule
}

/// `amount` straight-line by the second over `period`.
pub fn straight_line(amount: Decimal, period: Period) -> Schedule {
    spread(amount, &seconds_by_month(period))
}

/// `schedule` with every month before `first_open` moved to `first_open` (closed months never
/// change: catch-up). `None`: nothing is closed.
pub fn catch_up(schedule: Schedule, first_open: Option<Month>) -> Schedule {
    let Some(first_open) = first_open else { return schedule };
    let mut booked = Schedule::new();
    for (month, amount) in schedule {
        *booked.entry(month.max(first_open)).or_default() += amount;
    }
    booked
}

/// What a credit does to one schedule: how much already recognized is reversed in the credit's
/// month, and how much each month from it on is lowered (both positive for a credit that takes
/// revenue away).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreditEffect {
    /// Taken back, in the credit's month, of what was recognized before it.
    pub reversed: Decimal,
    /// Taken from each month from the credit's month on.
    pub lowered: Schedule,
}

impl CreditEffect {
    fn add(&mut self, other: CreditEffect) {
        self.reversed += other.reversed;
        for (month, amount) in other.lowered {
            *self.lowered.entry(month).or_default() += amount;
        }
        self.lowered.retain(|_, a| !a.is_zero());
    }

    /// The change to recognized revenue per month (negative for a credit).
    pub fn deltas(&self, month: Month) -> Schedule {
        let mut deltas: Schedule = self.lowered.iter().map(|(m, a)| (*m, -*a)).collect();
        if !self.reversed.is_zero() {
            *deltas.entry(month).or_default() -= self.reversed;
        }
        deltas
    }
}

/// A credit of `share` against `schedule` in `month`: `share × (recognized before month) /
/// (what the schedule holds)` is reversed in `month`; the rest lowers the months from `month` on
/// in proportion to them. `schedule` is changed accordingly; nothing before `month` changes.
pub fn credit(schedule: &mut Schedule, share: Decimal, month: Month) -> CreditEffect {
    let share = round_cents(share);
    if share.is_zero() {
        return CreditEffect::default();
    }
    let held: Decimal = schedule.values().sum();
    let before: Decimal = schedule.range(..month).map(|(_, a)| *a).sum();
    let remaining: Weights = schedule.range(month..).map(|(m, a)| (*m, *a)).filter(|(_, a)| !a.is_zero()).collect();
    let reversed = if held.is_zero() { share } else { round_cents(share * before / held) };
    let rest = share - reversed;
    let mut effect = CreditEffect { reversed, lowered: Schedule::new() };
    if !rest.is_zero() {
        if remaining.iter().map(|(_, a)| *a).sum::<Decimal>().is_zero() {
            effect.reversed += rest;
        } else {
            effect.lowered = spread(rest, &remaining);
            effect.lowered.retain(|_, a| !a.is_zero());
        }
    }
    for (m, delta) in effect.deltas(month) {
        *schedule.entry(m).or_default() += delta;
    }
    effect
}

/// One part of an invoice's revenue: a line, or a discount's allocation to a line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The index of the invoice line it belongs to (the discount line for an allocation).
    pub line: usize,
    /// Its amount as billed.
    pub amount: Decimal,
    /// What credit notes and voids took from it.
    #[serde(default)]
    pub credited: Decimal,
    /// What is recognized in each month (as booked: after catch-up and credits).
    pub schedule: Schedule,
}

/// One line as the schedule shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecognizedLine {
    /// Its description.
    pub description: String,
    /// Its kind.
    pub kind: LineKind,
    /// Its amount.
    pub amount: Decimal,
}

/// An invoice's revenue: its lines and the parts they are recognized by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceRevenue {
    /// The invoice's lines.
    pub lines: Vec<RecognizedLine>,
    /// The parts (each line's own, then the discounts' allocations).
    pub parts: Vec<Part>,
}

/// Where an invoice's lines come from, for [`InvoiceRevenue::recognize`].
pub struct Issued<'a> {
    /// The lines.
    pub lines: &'a [InvoiceLine],
    /// The invoice's period (the service period of plan and add-on lines of invoices issued
    /// before lines carried their own).
    pub period: Period,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
}

impl InvoiceRevenue {
    /// The schedule of every line of an invoice. `consumed(metric, period)` answers how much of
    /// `metric` was consumed in each month of `period` (usage lines are recognized as consumed).
    pub fn recognize(issued: Issued<'_>, consumed: &dyn Fn(&str, Period) -> Weights) -> Self {
        let Issued { lines, period, issued_at } = issued;
        let basis = |line: &InvoiceLine| -> Weights {
            let own = line.period.or(matches!(line.kind, LineKind::Plan | LineKind::Addon).then_some(period));
            match (own, line.kind) {
                (Some(p), LineKind::Usage | LineKind::Overage) => {
                    let used = line.metric.as_deref().map(|m| consumed(m, p)).unwrap_or_default();
                    let used: Weights = used.into_iter().filter(|(month, w)| *month >= Month::of(p.start) && !w.is_zero()).collect();
                    if used.iter().map(|(_, w)| *w).sum::<Decimal>() > Decimal::ZERO {
                        used
                    } else {
                        seconds_by_month(p)
                    }
                }
                (Some(p), _) => seconds_by_month(p),
                (None, _) => vec![(Month::of(issued_at), Decimal::ONE)],
            }
        };
        let bases: Vec<Weights> = lines.iter().map(basis).collect();
        let mut parts: Vec<Part> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.kind != LineKind::Discount)
            .map(|(i, l)| Part { line: i, amount: l.amount, credited: Decimal::ZERO, schedule: spread(l.amount, &bases[i]) })
            .collect();
        let targets: Vec<usize> = (0..lines.len())
            .filter(|&i| !matches!(lines[i].kind, LineKind::Discount | LineKind::Credit) && !lines[i].amount.is_zero())
            .collect();
        for (i, discount) in lines.iter().enumerate().filter(|(_, l)| l.kind == LineKind::Discount) {
            let weights: Vec<Decimal> = targets.iter().map(|&t| lines[t].amount).collect();
            match allocate(discount.amount, &weights) {
                Some(shares) => {
                    for (&t, share) in targets.iter().zip(shares) {
                        parts.push(Part { line: i, amount: share, credited: Decimal::ZERO, schedule: spread(share, &bases[t]) });
                    }
                }
                None => parts.push(Part {
                    line: i,
                    amount: discount.amount,
                    credited: Decimal::ZERO,
                    schedule: spread(discount.amount, &bases[i]),
                }),
            }
        }
        let lines = lines.iter().map(|l| RecognizedLine { description: l.description.clone(), kind: l.kind, amount: l.amount }).collect();
        Self { lines, parts }
    }

    /// Moves whatever lands before `first_open` to it ([`catch_up`]).
    pub fn catch_up(&mut self, first_open: Option<Month>) {
        for part in &mut self.parts {
            part.schedule = catch_up(std::mem::take(&mut part.schedule), first_open);
        }
    }

    /// The sum of its parts as recognized, per month.
    pub fn schedule(&self) -> Schedule {
        let mut total = Schedule::new();
        for part in &self.parts {
            for (month, amount) in &part.schedule {
                *total.entry(*month).or_default() += amount;
            }
        }
        total
    }

    /// Line `line`'s schedule (its own part and, for a discount, its allocations).
    pub fn line_schedule(&self, line: usize) -> Schedule {
        let mut total = Schedule::new();
        for part in self.parts.iter().filter(|p| p.line == line) {
            for (month, amount) in &part.schedule {
                *total.entry(*month).or_default() += amount;
            }
        }
        total
    }

    /// What credit notes and voids took from line `line`.
    pub fn line_credited(&self, line: usize) -> Decimal {
        self.parts.iter().filter(|p| p.line == line).map(|p| p.credited).sum()
    }

    /// What the parts billed (the invoice's subtotal).
    pub fn billed(&self) -> Decimal {
        self.parts.iter().map(|p| p.amount).sum()
    }

    /// What credits took so far.
    pub fn credited(&self) -> Decimal {
        self.parts.iter().map(|p| p.credited).sum()
    }

    /// A credit note of `subtotal` in `month` (a void: what is left of the subtotal): taken from
    /// the parts in proportion to their amounts. Answers its effect on the invoice's revenue.
    pub fn credit(&mut self, subtotal: Decimal, month: Month) -> CreditEffect {
        let mut effect = CreditEffect::default();
        let weights: Vec<Decimal> = self.parts.iter().map(|p| p.amount).collect();
        let Some(shares) = allocate(subtotal, &weights) else {
            // Nothing billed to take it from: all of it in its month.
            effect.reversed = round_cents(subtotal);
            return effect;
        };
        for (part, share) in self.parts.iter_mut().zip(shares) {
            part.credited += share;
            effect.add(credit(&mut part.schedule, share, month));
        }
        effect
    }
}

#[cfg(test)]
mod tests;
