//! The platform's books: which months of revenue are closed. One stream (`Books`/`revenue`).
//!
//! A month is closed once it has ended, in order (the earliest open month first); only the
//! latest closed month can be reopened, with a reason. Both are events, so that the revenue
//! projection books whatever would change a closed month in the first open one (catch-up), and a
//! replay of the log gives the same books.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::billing::revenue_recognition::Month;
use crate::{Rejection, RejectionKind, ValidationError};

/// The id of the books' one stream.
pub const BOOKS_ID: &str = "revenue";

/// The books: the months closed, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = domain::Books))]
pub struct Books {
    /// Closed months (`YYYY-MM`), in the order they were closed (consecutive).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub closed: Vec<Month>,
}

impl Books {
    /// The latest closed month.
    pub fn closed_through(&self) -> Option<Month> {
        self.closed.last().copied()
    }
}

/// What can be done to the books.
#[derive(Debug, Clone)]
pub enum BooksCommand {
    /// Close `month`. `first_month` is the first month the books hold anything in (`None`: they
    /// are empty), the earliest month that can be closed first.
    Close {
        /// The month.
        month: Month,
        /// The books' first month.
        first_month: Option<Month>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Reopen `month`, the latest closed one.
    Reopen {
        /// The month.
        month: Month,
        /// Why (audited).
        reason: String,
        /// Now.
        at: DateTime<Utc>,
    },
}

/// What happened to the books.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum BooksEvent {
    /// A month was closed: its figures never change from here on.
    MonthClosed {
        /// The month.
        month: Month,
        /// When.
        at: DateTime<Utc>,
    },
    /// The latest closed month was reopened.
    MonthReopened {
        /// The month.
        month: Month,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for BooksEvent {
    fn event_type(&self) -> String {
        match self {
            Self::MonthClosed { .. } => "MonthClosed",
            Self::MonthReopened { .. } => "MonthReopened",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why the books refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BooksError {
    /// Bad input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Not the month that can be closed or reopened now.
    #[error("{0}")]
    Conflict(String),
}

impl Rejection for BooksError {
    fn kind(&self) -> RejectionKind {
        match self {
            Self::Invalid(_) => RejectionKind::Validation,
            Self::Conflict(_) => RejectionKind::Conflict,
        }
    }
    fn code(&self) -> &str {
        match self {
            Self::Invalid(_) => "VALIDATION_FAILED",
            Self::Conflict(_) => "CONFLICT",
        }
    }
    fn details(&self) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Self::Invalid(e) => e.details(),
            Self::Conflict(_) => {
                let mut details = serde_json::Map::new();
                details.insert("field".into(), "month".into());
                details
            }
        }
    }
}

impl Aggregate for Books {
    const TYPE: &'static str = "Books";
    type Command = BooksCommand;
    type Event = BooksEvent;
    type Error = BooksError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &Self::Services, sink: &EventSink<Self>) -> Result<(), Self::Error> {
        match command {
            BooksCommand::Close { month, first_month, at } => {
                if month.end() > at {
                    return Err(BooksError::Conflict(format!("{month} has not ended yet: a month is closed once it is over")));
                }
                let earliest = match self.closed_through() {
                    Some(last) => Some(last.next()),
                    None => first_month,
                };
                match earliest {
                    Some(earliest) if month < earliest => {
                        return Err(BooksError::Conflict(format!(
                            "{month} is closed already (the books are closed through {})",
                            earliest.prev()
                        )));
                    }
                    Some(earliest) if month > earliest => {
                        return Err(BooksError::Conflict(format!("months are closed in order: close {earliest} first")));
                    }
                    _ => {}
                }
                sink.write(BooksEvent::MonthClosed { month, at }, self).await;
                Ok(())
            }
            BooksCommand::Reopen { month, reason, at } => {
                let reason = reason.trim().to_owned();
                if reason.is_empty() || reason.chars().count() > 500 {
                    return Err(ValidationError::new("reason", "must say why the month is reopened (1 to 500 characters)").into());
                }
                match self.closed_through() {
                    Some(last) if last == month => {}
                    Some(last) => {
                        return Err(BooksError::Conflict(format!("only the latest closed month ({last}) can be reopened")));
                    }
                    None => return Err(BooksError::Conflict(format!("{month} is not closed: no month is"))),
                }
                sink.write(BooksEvent::MonthReopened { month, reason, at }, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            BooksEvent::MonthClosed { month, .. } => self.closed.push(month),
            BooksEvent::MonthReopened { month, .. } => {
                if self.closed.last() == Some(&month) {
                    self.closed.pop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn m(s: &str) -> Month {
        Month::parse(s, "month").unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    type Books_ = TestFramework<Books>;

    #[test]
    fn months_close_in_order_once_they_have_ended() {
        let now = at("2027-05-02T00:00:00Z");
        let closed = |month: &str| BooksEvent::MonthClosed { month: m(month), at: now };
        Books_::with(())
            .given_no_previous_events()
            .when(BooksCommand::Close { month: m("2027-01"), first_month: Some(m("2027-01")), at: now })
            .then_expect_events(vec![closed("2027-01")]);
        for (month, why) in [("2027-03", "close 2027-02 first"), ("2027-01", "closed already"), ("2027-05", "has not ended")] {
            let result = Books_::with(())
                .given(vec![closed("2027-01")])
                .when(BooksCommand::Close { month: m(month), first_month: Some(m("2027-01")), at: now })
                .inspect_result();
            assert!(matches!(&result, Err(BooksError::Conflict(message)) if message.contains(why)), "{month}: {result:?}");
        }
        let result = Books_::with(())
            .given_no_previous_events()
            .when(BooksCommand::Close { month: m("2027-02"), first_month: Some(m("2027-01")), at: now })
            .inspect_result();
        assert!(matches!(result, Err(BooksError::Conflict(_))), "the books begin in January");
    }

    #[test]
    fn only_the_latest_closed_month_reopens_with_a_reason() {
        let now = at("2027-05-02T00:00:00Z");
        let closed = |month: &str| BooksEvent::MonthClosed { month: m(month), at: now };
        let given = vec![closed("2027-01"), closed("2027-02")];
        Books_::with(())
            .given(given.clone())
            .when(BooksCommand::Reopen { month: m("2027-02"), reason: "late invoice".into(), at: now })
            .then_expect_events(vec![BooksEvent::MonthReopened { month: m("2027-02"), reason: "late invoice".into(), at: now }]);
        let result = Books_::with(())
            .given(given.clone())
            .when(BooksCommand::Reopen { month: m("2027-01"), reason: "x".into(), at: now })
            .inspect_result();
        assert!(matches!(result, Err(BooksError::Conflict(_))));
        let result =
            Books_::with(()).given(given).when(BooksCommand::Reopen { month: m("2027-02"), reason: "  ".into(), at: now }).inspect_result();
        assert!(matches!(result, Err(BooksError::Invalid(e)) if e.field == "reason"));
        let mut books = Books::default();
        books.apply(closed("2027-01"));
        books.apply(closed("2027-02"));
        books.apply(BooksEvent::MonthReopened { month: m("2027-02"), reason: "x".into(), at: now });
        assert_eq!(books.closed_through(), Some(m("2027-01")));
    }
}
