//! Mail handling: parsing ([`parse`]) and loop-protection classification
//! ([`classify`]). Both modules are pure: no I/O.
pub mod classify;
pub mod compose;
pub mod document;
pub mod forwarded;
pub mod parse;
pub mod preview;
mod undecoded;

pub use classify::{MailKind, classify};
pub use parse::{
    Address, AttachmentMeta, ParseError, ParseLimits, ParsedMail, attachment_bytes,
    normalize_subject, parse_message,
};
