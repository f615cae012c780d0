//! saas-ledger's write side. Aggregates from `domain` are wired to the Postgres event store
//! (cqrs-es + postgres-es, plain event store; snapshots of our own, [`snapshots`]), every command is stamped with
//! who/why/when metadata, and database-enforced rules come back as typed refusals.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod api_keys;
pub mod appender;
pub mod billing_run;
pub mod bookings;
pub mod books;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod db;
pub mod error;
pub mod members;
pub mod metadata;
pub mod metrics;
pub mod quota;
pub mod snapshots;
pub mod store;
pub mod subscriptions;
pub mod tenants;
pub mod usage;
pub mod vault;

pub use error::{CommandError, StoreRejection};
pub use metadata::{Actor, CommandContext};
pub use store::{AggregateStore, Committed};
