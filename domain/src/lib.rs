//! saas-ledger's domain: the aggregates (Tenant, ...), their commands and events, the value
//! objects that prove their input valid, and the pricing, period and quota rules.
//!
//! This crate is pure. It does no I/O and reads no clock: every instant it needs arrives as an
//! argument, so every rule is a deterministic function that tests can pin down exactly.
#![forbid(unsafe_code)]

pub mod billing;
pub mod booking;
pub mod books;
pub mod coupon;
pub mod error;
pub mod member;
pub mod plan;
pub mod resource;
pub mod sealing;
pub mod subscription;
pub mod tenant;
pub mod upcasting;
pub mod usage;
pub mod values;

pub use error::{Rejection, RejectionKind, ValidationError};
