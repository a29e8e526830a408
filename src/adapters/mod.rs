//! Adapters: one module for each outside system, turning the configuration's
//! plain data into live connections. Engines (ingestion, the outbox) use them;
//! they use nothing of the engines.
//!
//! - [`imap`]: an IMAP account and its session (fetch, flag, move, IDLE,
//!   append), shared by mailbox ingestion and the outbox's Sent copies;
//! - [`smtp`]: building, DKIM-signing and sending replies over a pool of
//!   SMTP connections (or into a folder of `.eml` files);
//! - [`oauth_token`]: XOAUTH2 access tokens from a command or a file;
//! - [`matrix`]: a Matrix bot account (sync, join, invite, kick).
pub mod imap;
pub mod matrix;
pub mod oauth_token;
pub mod smtp;

use crate::config::{Config, Problem};

/// Problems only the adapters find in a configuration (a DKIM key that is
/// not one, or does not fit its algorithm), named with their keys. Pass it
/// to [`Config::load_checked`].
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(smtp) = &config.smtp
        && let Err(dkim) = smtp::dkim_signer(smtp)
    {
        problems.extend(dkim);
    }
    problems
}
