//! Domain types and rules, free of I/O: the task state machine, user sessions,
//! wrap-up, customers, identifiers and pagination cursors.
pub mod context;
pub mod cursor;
pub mod customer;
pub mod event;
pub mod id;
pub mod ingest;
pub mod link;
pub mod phone;
pub mod routing;
pub mod service;
pub mod session;
pub mod task;
pub mod token;
pub mod webhook;
pub mod wrapup;

pub use customer::{CustomerKind, CustomerMatch};
pub use routing::Presence;
pub use session::{SessionResult, SessionState};
pub use task::{Modality, TaskEvent, TaskState};
pub use wrapup::{CodeKind, WrapUp};

/// A rule of the domain was broken; the message says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("a task in state '{from}' cannot {event}")]
    InvalidTransition {
        from: &'static str,
        event: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Milliseconds since the Unix epoch: the one time representation stored by both backends.
pub type Millis = i64;

/// The current time in milliseconds since the epoch.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 rendering of a stored timestamp, for the API.
pub fn millis_to_rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// At most `max` characters of `s`, with an ellipsis when cut: for echoing
/// outside input in error messages without echoing all of it.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}
