//! Sources that produce tasks: IMAP and Maildir mailboxes.
pub mod backoff;
pub mod maildir;
pub mod prepare;
pub mod worker;
