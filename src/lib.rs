//! Switchboard: the email and instant-messaging task engine of a contact center.
pub mod adapters;
pub mod app;
pub mod chat;
pub mod config;
pub mod demo;
pub mod domain;
pub mod http;
pub mod image_proxy;
pub mod ingest;
pub mod mail;
pub mod metrics;
pub mod outbox;
pub mod retention;
pub mod routing;
pub mod store;
pub mod supervise;
pub mod webhooks;
