//! End-to-end tests: the real server, real Postgres, one database per test.

mod analytics;
mod audit;
mod auth;
mod bad_input;
mod batches;
mod billing;
mod bookings;
mod consistency;
mod coupons;
mod credits;
mod first_day;
mod fuzz;
mod gdpr;
mod global_order;
mod instances;
mod late_usage;
mod members;
mod openapi;
mod operability;
mod projector_crash;
mod rebuild;
mod relay;
mod replay;
mod revenue;
mod tenants;
mod usage;
