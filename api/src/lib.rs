//! saas-ledger's HTTP API: axum routers per resource, authentication, the contract's error
//! shape, and the application that ties the write side, the read side and the server together.
//! Handlers stay thin: extract (caller, tenant, body) → build a command → execute → answer.
#![forbid(unsafe_code)]

pub mod admin_token;
pub mod amounts;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod consistency;
pub mod console;
pub mod console_sessions;
pub mod demo;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod quota_alerts;
pub mod quota_cache;
pub mod rate_limit;
pub mod routes;

pub use app::{AppState, Application};
pub use config::Config;
pub use error::ApiError;
