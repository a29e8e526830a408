//! Outgoing mail: building a reply as RFC 5322 bytes ([`build`], [`to_bytes`]),
//! signing it with DKIM when configured ([`DkimSigner`]), and handing it to an
//! SMTP server or a folder of `.eml` files ([`Sender`]).
//!
//! A reply's Message-ID is fixed by the caller when the reply is queued and is
//! written exactly as given, so a retry after a temporary failure sends the
//! same message again (ARCHITECTURE guarantee 4). `Bcc` recipients are only
//! in the SMTP envelope, never in the headers. [`Sender::prepare`] builds,
//! signs and formats a message once; the outbox sends those bytes and keeps
//! the very same bytes as the Sent copy and the record.
//!
//! Errors are classified for the retry logic: [`SendError::Transient`]
//! (4xx replies, network trouble, timeouts: retry later),
//! [`SendError::Permanent`] (5xx replies: the server's answer, shown to the
//! agent) and [`SendError::Invalid`] (the message itself is wrong: never
//! retry). Bodies, passwords and keys are never logged.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig, DkimSigningAlgorithm,
    DkimSigningKey,
};
use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::{DkimAlgorithm, Secret, TlsMode};
use crate::mail::parse::Address;

mod dkim;
mod setup;
mod smtp_pool;
pub use dkim::{DkimError, DkimSigner};
pub use setup::{dkim_signer, transport};
use smtp_pool::SmtpPool;

/// Default for [`SmtpSettings::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`SmtpSettings::pool_max`].
pub const DEFAULT_POOL_MAX: u32 = 4;
/// Default for [`SmtpSettings::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A file attached to an outgoing mail. With a `content_id` the part is an
/// inline part of the HTML body (referenced as `cid:<content_id>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingAttachment {
    pub filename: String,
    /// `type/subtype`; an unparseable value is sent as `application/octet-stream`.
    pub content_type: String,
    pub bytes: Vec<u8>,
    /// Content-ID without angle brackets.
    pub content_id: Option<String>,
}

/// A message to send. Ids are given without angle brackets.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingMail {
    pub from: Address,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    /// Only in the SMTP envelope, never in the headers.
    pub bcc: Vec<Address>,
    pub reply_to: Option<Address>,
    pub subject: String,
    /// Message-ID without `<>`; fixed when the reply is queued.
    pub message_id: String,
    pub in_reply_to: Option<String>,
    /// Oldest first.
    pub references: Vec<String>,
    pub date: DateTime<Utc>,
    pub text: String,
    pub html: Option<String>,
    pub attachments: Vec<OutgoingAttachment>,
    /// Adds `Auto-Submitted: auto-replied` (RFC 3834).
    pub auto_submitted: bool,
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// 4xx reply, network trouble, TLS trouble or a timeout: retry later.
    #[error("temporary failure: {0}")]
    Transient(String),
    /// 5xx reply (or a server that cannot take this message): the server's
    /// answer, e.g. `550 5.1.1 no such user`.
    #[error("rejected: {0}")]
    Permanent(String),
    /// The message (or the transport configuration) is wrong: never retry.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl SendError {
    /// Whether sending again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient(_))
    }

    /// The same error about `what` (`recipient a@b.example: 550 …`).
    pub fn about(self, what: &str) -> SendError {
        match self {
            SendError::Transient(s) => SendError::Transient(format!("{what}: {s}")),
            SendError::Permanent(s) => SendError::Permanent(format!("{what}: {s}")),
            SendError::Invalid(s) => SendError::Invalid(format!("{what}: {s}")),
        }
    }

    /// The text without the classification prefix (for the agent).
    pub fn message(&self) -> &str {
        match self {
            SendError::Transient(s) | SendError::Permanent(s) | SendError::Invalid(s) => s,
        }
    }
}

/// How to reach an SMTP server.
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Authenticate with XOAUTH2, the password being the access token.
    pub xoauth2: bool,
    /// XOAUTH2: a command printing a fresh access token, run for every new
    /// connection (instead of `password`).
    pub token_command: Option<String>,
    /// XOAUTH2: a file holding the access token, read for every new
    /// connection (instead of `password`; another process refreshes it).
    pub token_file: Option<PathBuf>,
    /// Connect timeout, and the unit of the overall deadline of one send
    /// (see [`Sender::send`]).
    pub timeout: Duration,
    /// At most this many connections (and concurrent sends).
    pub pool_max: u32,
    /// An idle pooled connection is closed (QUIT) after this long.
    pub idle_timeout: Duration,
    /// Accept any server certificate. Tests only.
    pub accept_invalid_certs: bool,
    /// PEM certificates to trust besides the public (webpki) roots.
    pub ca_file: Option<PathBuf>,
}

impl SmtpSettings {
    /// Settings with the defaults: STARTTLS, no login, 30 s, 4 connections.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        SmtpSettings {
            host: host.into(),
            port,
            tls: TlsMode::default(),
            username: None,
            password: None,
            xoauth2: false,
            token_command: None,
            token_file: None,
            timeout: DEFAULT_TIMEOUT,
            pool_max: DEFAULT_POOL_MAX,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            accept_invalid_certs: false,
            ca_file: None,
        }
    }
}

/// Where outgoing mail goes.
#[derive(Clone, Debug)]
pub enum Transport {
    Smtp(SmtpSettings),
    /// Write each message as `<message-id>.eml` into this folder (the demo).
    File(PathBuf),
}

// ---------------------------------------------------------------------------
// Building the message
// ---------------------------------------------------------------------------

/// Builds the MIME message: `text/plain` alone, or `multipart/alternative`
/// with the HTML; inline parts (with a `content_id`) go into a
/// `multipart/related` next to the HTML, other attachments into
/// `multipart/mixed`. The envelope is set to From → To + Cc + Bcc.
pub fn build(mail: &OutgoingMail) -> Result<lettre::Message, SendError> {
    let from = mailbox(&mail.from)?;
    let to = mail.to.iter().map(mailbox).collect::<Result<Vec<_>, _>>()?;
    let cc = mail.cc.iter().map(mailbox).collect::<Result<Vec<_>, _>>()?;
    let bcc = mail
        .bcc
        .iter()
        .map(mailbox)
        .collect::<Result<Vec<_>, _>>()?;

    let mut recipients: Vec<lettre::Address> = Vec::new();
    for mb in to.iter().chain(&cc).chain(&bcc) {
        if !recipients.contains(&mb.email) {
            recipients.push(mb.email.clone());
        }
    }
    let envelope = lettre::address::Envelope::new(Some(from.email.clone()), recipients)
        .map_err(|e| SendError::Invalid(format!("no recipients: {e}")))?;

    check_id("Message-ID", &mail.message_id)?;
    if !mail.message_id.contains('@') {
        return Err(SendError::Invalid(format!(
            "Message-ID {:?} has no '@'",
            mail.message_id
        )));
    }

    let mut builder = lettre::Message::builder()
        .from(from)
        .subject(one_line(&mail.subject))
        .date(SystemTime::from(mail.date))
        .message_id(Some(format!("<{}>", mail.message_id)))
        .envelope(envelope);
    for mb in to {
        builder = builder.to(mb);
    }
    for mb in cc {
        builder = builder.cc(mb);
    }
    if let Some(reply_to) = &mail.reply_to {
        builder = builder.reply_to(mailbox(reply_to)?);
    }
    // Ids of the customer's messages come from the outside; one that cannot
    // be written as a msg-id is left out rather than blocking the reply.
    if let Some(id) = mail.in_reply_to.as_deref() {
        if check_id("In-Reply-To", id).is_ok() {
            builder = builder.in_reply_to(format!("<{id}>"));
        } else {
            tracing::warn!(message_id = %mail.message_id, "unusable In-Reply-To id left out");
        }
    }
    let mut references: Vec<String> = mail
        .references
        .iter()
        .filter(|id| {
            let ok = check_id("References", id).is_ok();
            if !ok {
                tracing::warn!(message_id = %mail.message_id, "unusable References id left out");
            }
            ok
        })
        .map(|id| format!("<{id}>"))
        .collect();
    if references.len() > MAX_REFERENCES {
        // The thread's root and the latest ids; the customer's mail decides
        // how many there are.
        references.drain(1..references.len() - (MAX_REFERENCES - 1));
    }
    if !references.is_empty() {
        // One header: lettre's `references()` replaces rather than appends.
        builder = builder.references(references.join(" "));
    }
    if mail.auto_submitted {
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-replied".to_owned(),
        ));
    }

    let (inline, attached): (Vec<&OutgoingAttachment>, Vec<&OutgoingAttachment>) = mail
        .attachments
        .iter()
        .partition(|a| a.content_id.is_some() && mail.html.is_some());

    let text = SinglePart::plain(mail.text.clone());
    let mixed = || MultiPart::mixed().boundary(boundary(&mail.message_id, "mixed"));
    let body: MultiPart = match &mail.html {
        None => {
            if attached.is_empty() {
                return builder.singlepart(text).map_err(invalid);
            }
            mixed().singlepart(text)
        }
        Some(html) => {
            let html = SinglePart::html(html.clone());
            let alternative =
                MultiPart::alternative().boundary(boundary(&mail.message_id, "alternative"));
            let alternative = if inline.is_empty() {
                alternative.singlepart(text).singlepart(html)
            } else {
                let mut related = MultiPart::related()
                    .boundary(boundary(&mail.message_id, "related"))
                    .singlepart(html);
                for a in &inline {
                    let cid = a.content_id.as_deref().unwrap_or_default();
                    check_id("Content-ID", cid)?;
                    let part = Attachment::new_inline_with_name(cid.to_owned(), filename(a))
                        .body(attachment_body(a)?, content_type(a));
                    related = related.singlepart(part);
                }
                alternative.singlepart(text).multipart(related)
            };
            if attached.is_empty() {
                return builder.multipart(alternative).map_err(invalid);
            }
            mixed().multipart(alternative)
        }
    };
    let mut mixed = body;
    for a in attached {
        let part = match message_body(a) {
            Some(body) => Attachment::new(filename(a)).body(body, content_type(a)),
            // Not writable as message/rfc822 (a NUL, a line over 998
            // bytes): the same bytes as a file.
            None if is_rfc822(a) => Attachment::new(eml_name(a)).body(
                file_body(&a.bytes)?,
                ContentType::parse("application/octet-stream").map_err(invalid)?,
            ),
            None => Attachment::new(filename(a)).body(file_body(&a.bytes)?, content_type(a)),
        };
        mixed = mixed.singlepart(part);
    }
    builder.multipart(mixed).map_err(invalid)
}

/// A MIME boundary derived from the Message-ID (lettre's are random), so
/// that building the same reply twice gives the same bytes: a retry is the
/// same message. The hash keeps it out of any part's content, and `=_`
/// cannot occur in quoted-printable or base64.
fn boundary(message_id: &str, kind: &str) -> String {
    let hash = Sha256::digest(format!("switchboard mime boundary\n{kind}\n{message_id}"));
    format!("=_{kind}_{}", hex::encode(&hash[..16]))
}

/// The formatted message (CRLF line endings), unsigned; the same bytes each
/// time for the same mail.
pub fn to_bytes(mail: &OutgoingMail) -> Result<Vec<u8>, SendError> {
    Ok(build(mail)?.formatted())
}

fn invalid(e: impl std::fmt::Display) -> SendError {
    SendError::Invalid(e.to_string())
}

fn mailbox(a: &Address) -> Result<Mailbox, SendError> {
    let email: lettre::Address = ascii_domain(a.email.trim())
        .parse()
        .map_err(|e| SendError::Invalid(format!("address {:?}: {e}", a.email)))?;
    // lettre panics on control characters in a display name.
    let name = a.name.as_deref().map(one_line).filter(|n| !n.is_empty());
    Ok(Mailbox::new(name, email))
}

/// `email` with an international domain written in ASCII (IDNA: `bücher.example`
/// → `xn--bcher-kva.example`) when its local part is ASCII, so that the
/// reply needs no SMTPUTF8 and every server takes it; as it stands
/// otherwise (a non-ASCII local part has no ASCII form).
fn ascii_domain(email: &str) -> std::borrow::Cow<'_, str> {
    if let Some((local, domain)) = email.rsplit_once('@')
        && local.is_ascii()
        && !domain.is_ascii()
        && let Ok(url::Host::Domain(ascii)) = url::Host::parse(domain)
    {
        return format!("{local}@{ascii}").into();
    }
    email.into()
}

/// `s` on one line: control characters (CR, LF, tab, ...) become spaces,
/// runs of spaces one space, trimmed.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A msg-id / Content-ID written between `<>`: printable ASCII without
/// spaces or angle brackets.
fn check_id(what: &str, id: &str) -> Result<(), SendError> {
    let ok = !id.is_empty()
        && id.len() <= 900
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>');
    if ok {
        Ok(())
    } else {
        Err(SendError::Invalid(format!(
            "{what} {id:?} is not a valid id"
        )))
    }
}

fn filename(a: &OutgoingAttachment) -> String {
    let name: String = a.filename.chars().filter(|c| !c.is_control()).collect();
    let name = name.trim();
    if name.is_empty() {
        "attachment".to_owned()
    } else {
        name.to_owned()
    }
}

fn is_rfc822(a: &OutgoingAttachment) -> bool {
    a.content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("message/rfc822"))
}

/// The body of an attachment: a message as [`message_body`] writes it,
/// anything else in base64. Never as its bytes stand (lettre's choice for
/// short ASCII lines): a file's bare LF, CR or NUL would go out labelled
/// `7bit`, and a customer's file holding `<LF>.<LF>` and SMTP commands
/// could end the message early at a server that reads a bare LF as a line
/// end (SMTP smuggling).
fn attachment_body(a: &OutgoingAttachment) -> Result<Body, SendError> {
    match message_body(a) {
        Some(body) => Ok(body),
        None => file_body(&a.bytes),
    }
}

/// Bytes as a file part: base64, whatever they hold.
fn file_body(bytes: &[u8]) -> Result<Body, SendError> {
    Body::new_with_encoding(bytes.to_vec(), ContentTransferEncoding::Base64)
        .map_err(|_| SendError::Invalid("attachment cannot be encoded".into()))
}

/// A `message/rfc822` attachment as RFC 2046 5.2.1 allows it: `7bit` when
/// its bytes are ASCII, else `8bit` (sent with `BODY=8BITMIME`), never
/// quoted-printable or base64, which mail programs do not decode for a
/// message. Line ends become CRLF. `None` when `a` is no message, or one
/// that neither can carry (a NUL, a line over 998 bytes): it is then sent
/// as a file.
fn message_body(a: &OutgoingAttachment) -> Option<Body> {
    if !is_rfc822(a) {
        return None;
    }
    let crlf = crlf_line_ends(&a.bytes);
    let fits = !crlf.contains(&0)
        && crlf
            .split(|&b| b == b'\n')
            .all(|line| line.strip_suffix(b"\r").unwrap_or(line).len() <= 998);
    if !fits {
        return None;
    }
    let encoding = if crlf.is_ascii() {
        ContentTransferEncoding::SevenBit
    } else {
        ContentTransferEncoding::EightBit
    };
    Some(Body::dangerous_pre_encoded(crlf, encoding))
}

/// `bytes` with every line end (LF, CR or CRLF) written as CRLF.
fn crlf_line_ends(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

/// The file name of a message sent as a file: its own, ending in `.eml`.
fn eml_name(a: &OutgoingAttachment) -> String {
    let name = filename(a);
    if name.to_ascii_lowercase().ends_with(".eml") {
        name
    } else if name == "attachment" {
        "message.eml".to_owned()
    } else {
        format!("{name}.eml")
    }
}

fn content_type(a: &OutgoingAttachment) -> ContentType {
    ContentType::parse(a.content_type.trim())
        .unwrap_or_else(|_| ContentType::parse("application/octet-stream").expect("valid"))
}

/// At most this many ids in `References`: the first and the latest ones
/// (RFC 5322 3.6.4 lets a long list be shortened; threading needs the ends).
const MAX_REFERENCES: usize = 20;

// ---------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------

/// A message ready to go: built, DKIM-signed when the [`Sender`] signs, and
/// formatted once. Sending these bytes and keeping them (Sent copy, record)
/// keeps what was sent and what is kept identical.
#[derive(Clone)]
pub struct PreparedMail {
    message_id: String,
    envelope: lettre::address::Envelope,
    bytes: Vec<u8>,
}

impl PreparedMail {
    /// The exact bytes that are sent (CRLF line endings).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Message-ID without `<>`.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// Envelope recipients (To, Cc and Bcc, each once).
    pub fn recipients(&self) -> Vec<String> {
        self.envelope.to().iter().map(ToString::to_string).collect()
    }
}

impl std::fmt::Debug for PreparedMail {
    // Never the body.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMail")
            .field("message_id", &self.message_id)
            .field("size", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// Sends mail through one SMTP server (a pool of connections of our own) or
/// into a folder, DKIM-signing it when asked to. Cheap to clone; clones share
/// the pool.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
    dkim: Option<Arc<DkimSigner>>,
}

enum Inner {
    Smtp(Arc<SmtpPool>),
    File(PathBuf),
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Sender");
        match &*self.inner {
            Inner::Smtp(s) => d.field("smtp", &s.server),
            Inner::File(p) => d.field("file", p),
        };
        d.field("dkim", &self.dkim).finish()
    }
}

impl Sender {
    /// Checks the settings (reads `ca_file`); connects only when sending.
    pub fn new(t: Transport) -> Result<Sender, SendError> {
        let inner = match t {
            Transport::File(dir) => Inner::File(dir),
            Transport::Smtp(s) => Inner::Smtp(Arc::new(SmtpPool::new(s)?)),
        };
        Ok(Sender {
            inner: Arc::new(inner),
            dkim: None,
        })
    }

    /// This sender, signing every message with `signer`.
    pub fn with_dkim(mut self, signer: DkimSigner) -> Sender {
        self.dkim = Some(Arc::new(signer));
        self
    }

    /// The DKIM signer, if this sender signs.
    pub fn dkim(&self) -> Option<&DkimSigner> {
        self.dkim.as_deref()
    }

    /// Builds `mail`, signs it when DKIM is on, and formats it.
    pub fn prepare(&self, mail: &OutgoingMail) -> Result<PreparedMail, SendError> {
        let mut message = build(mail)?;
        if let Some(dkim) = &self.dkim {
            dkim.sign(&mut message)?;
        }
        Ok(PreparedMail {
            message_id: mail.message_id.clone(),
            envelope: message.envelope().clone(),
            bytes: message.formatted(),
        })
    }

    /// [`Sender::prepare`] then [`Sender::send_prepared`].
    pub async fn send(&self, mail: &OutgoingMail) -> Result<String, SendError> {
        let prepared = self.prepare(mail)?;
        self.send_prepared(&prepared).await
    }

    /// Sends exactly `mail.bytes()`; returns the server's final reply, e.g.
    /// `250 2.0.0 Ok: queued as X` (for the file transport: `written <path>`).
    ///
    /// One send must finish within `timeout × (3 + size in MiB)`, else it
    /// fails as [`SendError::Transient`] and its connection is closed, since
    /// its state is unknown. When all recipients are refused or one is,
    /// nothing is sent (the transaction is reset).
    pub async fn send_prepared(&self, mail: &PreparedMail) -> Result<String, SendError> {
        let recipients = mail.envelope.to().len();
        let result = match &*self.inner {
            Inner::File(dir) => write_file(dir, &mail.message_id, &mail.bytes).await,
            Inner::Smtp(pool) => pool.send(&mail.envelope, &mail.bytes).await,
        };
        match &result {
            Ok(response) => tracing::info!(
                message_id = %mail.message_id,
                recipients,
                size = mail.bytes.len(),
                dkim = self.dkim.is_some(),
                response = %response,
                "mail sent"
            ),
            Err(e) => tracing::warn!(
                message_id = %mail.message_id,
                recipients,
                error = %e,
                "mail not sent"
            ),
        }
        result
    }
}

/// Writes the message as `<dir>/<message-id>.eml` (atomically; a resend
/// overwrites the same file).
async fn write_file(dir: &Path, message_id: &str, bytes: &[u8]) -> Result<String, SendError> {
    let io = |e: std::io::Error| SendError::Transient(format!("{}: {e}", dir.display()));
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let safe: String = message_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._@+-=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = safe.trim_start_matches('.');
    let name = if safe == message_id && !safe.is_empty() {
        format!("{safe}.eml")
    } else {
        let hash = hex::encode(&Sha256::digest(message_id.as_bytes())[..6]);
        format!("{safe}-{hash}.eml")
    };
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&tmp, bytes).await.map_err(io)?;
    tokio::fs::rename(&tmp, &path).await.map_err(io)?;
    Ok(format!("written {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::dkim::{KeyMaterial, key_material};
    use super::*;
    use crate::mail::parse::{ParseLimits, parse_message};

    fn addr(name: Option<&str>, email: &str) -> Address {
        Address {
            name: name.map(str::to_owned),
            email: email.to_owned(),
        }
    }

    fn sample() -> OutgoingMail {
        OutgoingMail {
            from: addr(Some("Jörg Müller (Support)"), "support@example.com"),
            to: vec![addr(Some("Kunde, Anna"), "anna@example.org")],
            cc: vec![],
            bcc: vec![addr(None, "audit@example.com")],
            reply_to: None,
            subject: "Re: Grüße aus Köln".into(),
            message_id: "abc.1@switchboard.example".into(),
            in_reply_to: Some("orig@example.org".into()),
            references: vec!["root@example.org".into(), "orig@example.org".into()],
            date: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            text: "Hallo\nWelt".into(),
            html: None,
            attachments: vec![],
            auto_submitted: false,
        }
    }

    #[test]
    fn round_trips_through_the_parser() {
        let mut mail = sample();
        mail.html = Some("<p>Hallo <img src=\"cid:logo@x\"></p>".into());
        mail.attachments = vec![
            OutgoingAttachment {
                filename: "Rechnung \"März\".pdf".into(),
                content_type: "application/pdf".into(),
                bytes: b"%PDF-1.4".to_vec(),
                content_id: None,
            },
            OutgoingAttachment {
                filename: "logo.png".into(),
                content_type: "image/png".into(),
                bytes: vec![0x89, b'P', b'N', b'G'],
                content_id: Some("logo@x".into()),
            },
        ];
        let raw = to_bytes(&mail).unwrap();
        assert!(raw.is_ascii());
        assert_eq!(
            to_bytes(&mail).unwrap(),
            raw,
            "the same mail, the same bytes"
        );
        let parsed = parse_message(&raw, &ParseLimits::default()).unwrap();
        assert_eq!(parsed.subject.as_deref(), Some("Re: Grüße aus Köln"));
        assert_eq!(parsed.from, Some(mail.from.clone()));
        assert_eq!(parsed.to, mail.to);
        assert_eq!(
            parsed.message_id.as_deref(),
            Some("abc.1@switchboard.example")
        );
        assert_eq!(parsed.in_reply_to, vec!["orig@example.org".to_owned()]);
        assert_eq!(parsed.references, mail.references);
        assert!(parsed.text_body.unwrap().contains("Welt"));
        assert!(parsed.html_body.unwrap().contains("cid:logo@x"));
        let names: Vec<_> = parsed
            .attachments
            .iter()
            .map(|a| a.filename.clone())
            .collect();
        assert!(
            names.contains(&Some("Rechnung \"März\".pdf".into())),
            "{names:?}"
        );
        let logo = parsed
            .attachments
            .iter()
            .find(|a| a.content_id.as_deref() == Some("logo@x"))
            .unwrap();
        assert!(logo.inline);
        let text = String::from_utf8(raw).unwrap();
        assert!(!text.contains("audit@example.com"), "Bcc leaked");
        assert!(!text.contains("Auto-Submitted"));
    }

    /// The part of `raw` from the header naming `filename` to the next
    /// boundary.
    fn part_of<'a>(raw: &'a str, filename: &str) -> &'a str {
        let at = raw
            .find(filename)
            .unwrap_or_else(|| panic!("{filename}: {raw}"));
        let start = raw[..at].rfind("\r\n--").unwrap();
        let end = raw[at..].find("\r\n--=_").map_or(raw.len(), |e| at + e);
        &raw[start..end]
    }

    #[test]
    fn an_attached_message_is_sent_7bit_or_8bit_never_encoded() {
        let inner_ascii = b"From: a@x.example\nSubject: hi\nContent-Type: text/html; charset=utf-8\n\n<p a=\"b\">=C3 x</p> <img src=\"https://tracker.example/a-long-line-of-more-than-78-characters.gif\">\n";
        let inner_8bit = "From: b@x.example\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße = equals\r\n".as_bytes();
        let mut long = b"From: c@x.example\r\n\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 1200));
        let message = |name: &str, bytes: &[u8]| OutgoingAttachment {
            filename: name.into(),
            content_type: "message/rfc822".into(),
            bytes: bytes.to_vec(),
            content_id: None,
        };
        let mut mail = sample();
        mail.attachments = vec![
            message("ascii.eml", inner_ascii),
            message("eight.eml", inner_8bit),
            message("long", &long),
        ];
        let raw = to_bytes(&mail).unwrap();
        let text = String::from_utf8(raw.clone()).unwrap();

        let ascii = part_of(&text, "ascii.eml");
        assert!(
            ascii.contains("Content-Type: message/rfc822\r\n"),
            "{ascii}"
        );
        assert!(
            ascii.contains("Content-Transfer-Encoding: 7bit\r\n"),
            "{ascii}"
        );
        assert!(
            ascii.ends_with("\r\n\r\nFrom: a@x.example\r\nSubject: hi\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p a=\"b\">=C3 x</p> <img src=\"https://tracker.example/a-long-line-of-more-than-78-characters.gif\">\r\n"),
            "verbatim, CRLF: {ascii:?}"
        );
        let eight = part_of(&text, "eight.eml");
        assert!(
            eight.contains("Content-Type: message/rfc822\r\n"),
            "{eight}"
        );
        assert!(
            eight.contains("Content-Transfer-Encoding: 8bit\r\n"),
            "{eight}"
        );
        assert!(eight.contains("\r\n\r\nGrüße = equals\r\n"), "{eight}");
        // A line over 998 bytes cannot be a message part: a file, base64.
        let file = part_of(&text, "long.eml");
        assert!(
            file.contains("Content-Type: application/octet-stream\r\n"),
            "{file}"
        );
        assert!(
            file.contains("Content-Transfer-Encoding: base64\r\n"),
            "{file}"
        );

        // What a mail program reads back: the messages as they were.
        let parsed = parse_message(&raw, &ParseLimits::default()).unwrap();
        let bytes = |name: &str| {
            let a = parsed
                .attachments
                .iter()
                .find(|a| a.filename.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{name}: {:?}", parsed.attachments));
            crate::mail::attachment_bytes(&raw, a.part_index).unwrap()
        };
        assert_eq!(bytes("eight.eml"), inner_8bit);
        assert_eq!(bytes("long.eml"), long);
    }

    #[test]
    fn an_international_domain_goes_in_ascii() {
        let mut mail = sample();
        mail.to = vec![addr(Some("Bücher"), "info@Bücher.example")];
        mail.cc = vec![addr(None, "josé@müller.example")];
        let message = build(&mail).unwrap();
        let recipients: Vec<String> = message
            .envelope()
            .to()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            recipients.contains(&"info@xn--bcher-kva.example".to_string()),
            "{recipients:?}"
        );
        assert!(
            recipients.contains(&"josé@müller.example".to_string()),
            "a non-ASCII local part has no ASCII form: {recipients:?}"
        );
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(text.contains("info@xn--bcher-kva.example"), "{text}");
    }

    #[test]
    fn a_file_goes_base64_whatever_it_holds() {
        // A customer's file that would end the message early at a server
        // that reads a bare LF as a line end, and smuggle another one.
        let smuggler = b"id;name\n1;Anna\n.\nMAIL FROM:<ceo@example.com>\nRCPT TO:<v@target.example>\nDATA\nSubject: wire\n\npay\n.\n".to_vec();
        let odd = b"a\rb\0c\r\nd".to_vec();
        let file = |name: &str, bytes: &[u8]| OutgoingAttachment {
            filename: name.into(),
            content_type: "text/csv".into(),
            bytes: bytes.to_vec(),
            content_id: None,
        };
        let mut mail = sample();
        mail.html = Some("<p>x <img src=\"cid:i@x\"></p>".into());
        mail.attachments = vec![
            file("notes.csv", &smuggler),
            file("odd.csv", &odd),
            OutgoingAttachment {
                content_id: Some("i@x".into()),
                ..file("inline.txt", b"1\n.\n2")
            },
        ];
        let raw = to_bytes(&mail).unwrap();
        for (i, &b) in raw.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(raw[i - 1], b'\r', "bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(raw.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
        assert!(!raw.contains(&0), "NUL on the wire");
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(!text.contains("MAIL FROM"), "{text}");
        for name in ["notes.csv", "odd.csv", "inline.txt"] {
            let part = part_of(&text, name);
            assert!(
                part.contains("Content-Transfer-Encoding: base64\r\n"),
                "{part}"
            );
        }
        let parsed = parse_message(&raw, &ParseLimits::default()).unwrap();
        for (name, bytes) in [("notes.csv", &smuggler), ("odd.csv", &odd)] {
            let a = parsed
                .attachments
                .iter()
                .find(|a| a.filename.as_deref() == Some(name))
                .unwrap();
            assert_eq!(
                &crate::mail::attachment_bytes(&raw, a.part_index).unwrap(),
                bytes,
                "{name} read back as sent"
            );
        }
    }

    #[test]
    fn plain_text_only_and_auto_submitted() {
        let mut mail = sample();
        mail.auto_submitted = true;
        let message = build(&mail).unwrap();
        let envelope = message.envelope();
        let to: Vec<String> = envelope.to().iter().map(ToString::to_string).collect();
        assert_eq!(to, ["anna@example.org", "audit@example.com"]);
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(
            raw.contains("\r\nAuto-Submitted: auto-replied\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("\r\nMessage-ID: <abc.1@switchboard.example>\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("\r\nReferences: <root@example.org> <orig@example.org>\r\n"),
            "{raw}"
        );
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8"),
            "{raw}"
        );
    }

    #[test]
    fn rejects_bad_input() {
        let mut mail = sample();
        mail.to = vec![addr(None, "not an address")];
        assert!(matches!(build(&mail), Err(SendError::Invalid(_))));
        let mut mail = sample();
        mail.to.clear();
        mail.bcc.clear();
        assert!(matches!(build(&mail), Err(SendError::Invalid(_))));
        let mut mail = sample();
        mail.message_id = "a b@c".into();
        assert!(matches!(build(&mail), Err(SendError::Invalid(_))));
        let mut mail = sample();
        mail.from = addr(None, "x@y\r\nBcc: evil@z");
        assert!(matches!(build(&mail), Err(SendError::Invalid(_))));
        // A customer's odd id is left out instead of blocking the reply.
        let mut mail = sample();
        mail.in_reply_to = Some("bad id".into());
        let raw = String::from_utf8(to_bytes(&mail).unwrap()).unwrap();
        assert!(!raw.contains("In-Reply-To"));
    }

    #[test]
    fn tricky_display_names_round_trip() {
        let names = [
            "Müller, Jörg",
            "\"Quoted\" O'Brien",
            "back\\slash (comment) <angle> @at; semi: colon",
            "😀 Emoji Person",
            "日本語の名前",
            "zero\u{200B}width\u{FEFF} bom\u{2028}sep\u{7f}del",
            "combining e\u{301}\u{301}",
            "tab\tand\r\nnewline",
            &"Very Long Name ".repeat(20),
        ];
        for name in names {
            let mut mail = sample();
            mail.from.name = Some(name.to_owned());
            mail.subject = format!("Re: {name}");
            let raw = to_bytes(&mail).unwrap();
            assert!(raw.is_ascii());
            let parsed = parse_message(&raw, &ParseLimits::default()).unwrap();
            let want = one_line(name);
            assert_eq!(
                parsed.from.unwrap().name.as_deref(),
                Some(want.as_str()),
                "{name}"
            );
            assert_eq!(
                parsed.subject.as_deref(),
                Some(format!("Re: {want}").as_str())
            );
        }
    }

    fn pem(label: &str, der: &[u8]) -> String {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            BASE64.encode(der)
        )
    }

    /// PKCS#8 of an Ed25519 key (RFC 8410) with the seed 0, 1, … 31.
    fn ed25519_pkcs8() -> Vec<u8> {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend(0u8..32);
        der
    }

    #[test]
    fn dkim_keys_are_taken_apart_without_panicking() {
        let der = ed25519_pkcs8();
        match key_material(&pem("PRIVATE KEY", &der)) {
            Ok(KeyMaterial::Ed25519 { seed_base64 }) => {
                assert_eq!(
                    BASE64.decode(seed_base64).unwrap(),
                    (0u8..32).collect::<Vec<_>>()
                )
            }
            _ => panic!("an Ed25519 PKCS#8 key"),
        }
        // Every truncation, and absurd lengths, are refused.
        for n in 0..der.len() {
            assert!(key_material(&pem("PRIVATE KEY", &der[..n])).is_err(), "{n}");
        }
        let mut huge = der.clone();
        huge[1] = 0x84;
        assert!(key_material(&pem("PRIVATE KEY", &huge)).is_err());
        assert!(matches!(
            key_material(&pem("RSA PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00])),
            Err(DkimError::Format(_))
        ));
        // A tiny RSA modulus is refused before lettre could panic signing with it.
        let tiny = [0x30, 0x08, 0x02, 0x01, 0x00, 0x02, 0x03, 0x00, 0xc3, 0x51];
        assert_eq!(
            key_material(&pem("RSA PRIVATE KEY", &tiny)).err(),
            Some(DkimError::WeakRsa(16))
        );
        let encrypted = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(key_material(encrypted).err(), Some(DkimError::Encrypted));
        let signer = DkimSigner::new(
            "Example.COM.",
            "s1",
            DkimAlgorithm::Ed25519,
            &pem("PRIVATE KEY", &der),
        )
        .unwrap();
        assert_eq!(signer.domain(), "example.com");
        let shown = format!("{signer:?}");
        assert!(!shown.contains("AAECAwQF"), "{shown}");
    }

    #[test]
    fn dkim_signature_covers_the_threading_headers() {
        let signer = DkimSigner::new(
            "example.com",
            "s1",
            DkimAlgorithm::Ed25519,
            &pem("PRIVATE KEY", &ed25519_pkcs8()),
        )
        .unwrap();
        let sender = Sender::new(Transport::File(std::env::temp_dir()))
            .unwrap()
            .with_dkim(signer);
        let prepared = sender.prepare(&sample()).unwrap();
        let text = String::from_utf8(prepared.bytes().to_vec()).unwrap();
        let field = text
            .split("\r\n")
            .skip_while(|l| !l.starts_with("DKIM-Signature:"))
            .take_while(|l| l.starts_with("DKIM-Signature:") || l.starts_with(' '))
            .collect::<String>();
        let h = field
            .split(';')
            .find_map(|t| t.trim().strip_prefix("h="))
            .unwrap()
            .replace(' ', "");
        for name in [
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "in-reply-to",
            "references",
        ] {
            assert!(h.split(':').any(|x| x == name), "{name} not in h={h}");
        }
        assert!(
            field.contains("d=example.com;") && field.contains("s=s1;"),
            "{field}"
        );
        assert_eq!(prepared.message_id(), "abc.1@switchboard.example");
    }

    #[test]
    fn huge_headers_are_signed_or_refused_but_never_crash() {
        let signer = DkimSigner::new(
            "example.com",
            "s1",
            DkimAlgorithm::Ed25519,
            &pem("PRIVATE KEY", &ed25519_pkcs8()),
        )
        .unwrap();
        let sender = Sender::new(Transport::File(std::env::temp_dir()))
            .unwrap()
            .with_dkim(signer);
        // A customer's thread of 5000 ids: the first and the latest 19 are kept.
        let mut mail = sample();
        mail.references = (0..5000)
            .map(|i| format!("ref.{i}.abcdefghijklmnop@example.org"))
            .collect();
        // Long headers that stay: a 60 KB subject and 800 Cc recipients.
        mail.subject = "Re: ".to_owned() + &"long subject ".repeat(5000);
        mail.cc = (0..800)
            .map(|i| addr(None, &format!("person.{i}@example.org")))
            .collect();
        // On a thread with the stack of a tokio worker (2 MiB): lettre's
        // signer recursed once per header character and overflowed it.
        let prepared = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || sender.prepare(&mail))
            .unwrap()
            .join()
            .unwrap()
            .expect("signed");
        let text = String::from_utf8(prepared.bytes().to_vec()).unwrap();
        assert!(text.contains("DKIM-Signature:"));
        let parsed = parse_message(prepared.bytes(), &ParseLimits::default()).unwrap();
        assert_eq!(parsed.references.len(), MAX_REFERENCES);
        assert_eq!(parsed.references[0], "ref.0.abcdefghijklmnop@example.org");
        assert_eq!(
            parsed.references.last().map(String::as_str),
            Some("ref.4999.abcdefghijklmnop@example.org")
        );
        // Past the limit: refused, not signed and not crashed.
        let signer = DkimSigner::new(
            "example.com",
            "s1",
            DkimAlgorithm::Ed25519,
            &pem("PRIVATE KEY", &ed25519_pkcs8()),
        )
        .unwrap();
        let sender = Sender::new(Transport::File(std::env::temp_dir()))
            .unwrap()
            .with_dkim(signer);
        let mut mail = sample();
        mail.subject = "x ".repeat(200_000);
        assert!(matches!(sender.prepare(&mail), Err(SendError::Invalid(_))));
    }

    #[test]
    fn header_injection_is_encoded() {
        let mut mail = sample();
        mail.subject = "Hi\r\nBcc: evil@example.net".into();
        mail.from.name = Some("Eve\r\nX-Evil: 1".into());
        let raw = String::from_utf8(to_bytes(&mail).unwrap()).unwrap();
        assert!(!raw.contains("\r\nBcc:"), "{raw}");
        assert!(!raw.contains("\r\nX-Evil:"), "{raw}");
    }
}
