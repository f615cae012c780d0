//! The platform's books: closing and reopening months of revenue (`domain::books`).

use domain::billing::revenue_recognition::Month;
use domain::books::{Books as BooksAggregate, BooksCommand, BooksError, BOOKS_ID};

use crate::{AggregateStore, CommandContext, CommandError, Committed};

/// The books service: one stream, `Books`/`revenue`.
pub struct Books {
    store: AggregateStore<BooksAggregate>,
}

impl Books {
    /// Wraps the books' store.
    pub fn new(store: AggregateStore<BooksAggregate>) -> Self {
        Self { store }
    }

    /// Closes `month` (`first_month`: the first month the books hold anything in, as the
    /// revenue projection has it).
    pub async fn close(
        &self,
        month: Month,
        first_month: Option<Month>,
        context: &CommandContext,
    ) -> Result<Committed<BooksAggregate>, CommandError<BooksError>> {
        self.store.execute(BOOKS_ID, BooksCommand::Close { month, first_month, at: context.at }, context).await
    }

    /// Reopens `month`, the latest closed one, for `reason`.
    pub async fn reopen(
        &self,
        month: Month,
        reason: String,
        context: &CommandContext,
    ) -> Result<Committed<BooksAggregate>, CommandError<BooksError>> {
        self.store.execute(BOOKS_ID, BooksCommand::Reopen { month, reason, at: context.at }, context).await
    }

    /// The books as the log has them.
    pub async fn state(&self) -> Result<BooksAggregate, CommandError<BooksError>> {
        Ok(self.store.load(BOOKS_ID).await?.map(|(books, _)| books).unwrap_or_default())
    }
}
