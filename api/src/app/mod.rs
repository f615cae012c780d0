//! The application: configuration in, a running server out.
//!
//! - [`state`]: [`AppState`], built once at start-up: the primary pool, the read-side handle,
//!   the clock, the command services, the caches, and read-your-writes helpers for handlers.
//! - [`startup`]: [`Application::build`] (database, migrations, projectors, writer, jobs) and
//!   serving until shutdown.
//! - [`middleware`]: the router with the layers every request passes (request ids, the
//!   contract's error shape, limits, timeouts, rate limits, idempotency, consistency).
//! - [`jobs`]: the background work each instance runs (the billing loop, housekeeping).

pub mod jobs;
pub mod middleware;
pub mod startup;
pub mod state;

pub use startup::Application;
pub use state::AppState;
