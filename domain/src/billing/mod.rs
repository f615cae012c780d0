//! Billing rules as plain functions: money rounding, anchor-day periods, proration, add-on and
//! usage prices, and invoice assembly. Every rule takes its instants as arguments.

pub mod charges;
pub mod invoice;
pub mod money;
pub mod period;
pub mod pricing;
pub mod proration;
pub mod revenue_recognition;
