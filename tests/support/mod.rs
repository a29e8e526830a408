//! Test harness shared by the integration tests.
pub mod app;
pub mod servers;
