//! saas-ledger's write side. Aggregates from `domain` are wired to the Postgres event store
//! (cqrs-es + postgres-es, plain event store, no snapshots), every command is stamped with
//! who/why/when metadata, and database-enforced rules come back as typed refusals.
#![forbid(unsafe_code)]

pub mod api_keys;
pub mod clock;
pub mod db;
pub mod error;
pub mod metadata;
pub mod store;
pub mod tenants;

pub use error::{CommandError, StoreRejection};
pub use metadata::{Actor, CommandContext};
pub use store::{AggregateStore, Committed};
