//! saas-ledger's read side.
//!
//! Events are appended by the write side in per-aggregate order only. Here they get one global
//! order ([`sequencer`]), are read in that order ([`log`]), and are folded into read models by
//! projectors whose checkpoints commit together with their writes ([`runner`]), so that a
//! crash can neither lose nor double-apply an event.
#![forbid(unsafe_code)]

pub mod audit;
pub mod billing;
pub mod bookings;
pub mod catalog;
pub mod checkpoint;
pub mod leader;
pub mod log;
pub mod reads;
pub mod relay;
pub mod replay;
pub mod replicas;
pub mod revenue;
pub mod runner;
pub mod sequencer;
pub mod simulation;
pub mod tenants;
pub mod usage;
pub mod webhooks;

pub use log::{EventLog, StoredEvent};
pub use reads::ReadModels;
pub use runner::{Projection, ProjectionError, Projections, RunInfo};
pub use sequencer::Sequencer;

/// The projections this build maintains, in the order they are started.
pub fn all() -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(tenants::TenantsProjection),
        std::sync::Arc::new(catalog::CatalogProjection),
        std::sync::Arc::new(billing::BillingProjection),
        std::sync::Arc::new(usage::UsageProjection),
        std::sync::Arc::new(bookings::BookingsProjection),
        std::sync::Arc::new(revenue::RevenueProjection),
        std::sync::Arc::new(audit::AuditProjection::default()),
    ]
}
