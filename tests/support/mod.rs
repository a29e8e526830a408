//! Test harness shared by the integration tests.
pub mod app;
pub mod mail;
pub mod servers;
