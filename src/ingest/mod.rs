//! Sources that produce tasks: IMAP and Maildir mailboxes.
pub mod backoff;
mod imap_sync;
pub mod job;
pub mod maildir;
pub mod prepare;
pub mod refetch;
pub mod worker;
