//! Test harness shared by the integration tests.
pub mod app;
pub mod browser;
pub mod chat;
pub mod mail;
pub mod process;
pub mod servers;
pub mod smtp;
pub mod sse;
