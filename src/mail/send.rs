//! Outgoing mail: building a reply as RFC 5322 bytes ([`build`], [`to_bytes`])
//! and handing it to an SMTP server or a folder of `.eml` files ([`Sender`]).
//!
//! A reply's Message-ID is fixed by the caller when the reply is queued and is
//! written exactly as given, so a retry after a temporary failure sends the
//! same message again (ARCHITECTURE guarantee 4). `Bcc` recipients are only
//! in the SMTP envelope, never in the headers.
//!
//! Errors are classified for the retry logic: [`SendError::Transient`]
//! (4xx replies, network trouble, timeouts: retry later),
//! [`SendError::Permanent`] (5xx replies: the server's answer, shown to the
//! agent) and [`SendError::Invalid`] (the message itself is wrong: never
//! retry). Bodies and passwords are never logged.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::{Secret, TlsMode};
use crate::mail::parse::Address;

/// Default for [`SmtpSettings::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`SmtpSettings::pool_max`].
pub const DEFAULT_POOL_MAX: u32 = 4;

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
    /// Connect timeout, and the unit of the overall deadline of one send
    /// (see [`Sender::send`]).
    pub timeout: Duration,
    /// At most this many connections (and concurrent sends).
    pub pool_max: u32,
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
            timeout: DEFAULT_TIMEOUT,
            pool_max: DEFAULT_POOL_MAX,
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
    let references: Vec<String> = mail
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
    let body: MultiPart = match &mail.html {
        None => {
            if attached.is_empty() {
                return builder.singlepart(text).map_err(invalid);
            }
            MultiPart::mixed().singlepart(text)
        }
        Some(html) => {
            let html = SinglePart::html(html.clone());
            let alternative = if inline.is_empty() {
                MultiPart::alternative().singlepart(text).singlepart(html)
            } else {
                let mut related = MultiPart::related().singlepart(html);
                for a in &inline {
                    let cid = a.content_id.as_deref().unwrap_or_default();
                    check_id("Content-ID", cid)?;
                    let part = Attachment::new_inline_with_name(cid.to_owned(), filename(a))
                        .body(a.bytes.clone(), content_type(a));
                    related = related.singlepart(part);
                }
                MultiPart::alternative().singlepart(text).multipart(related)
            };
            if attached.is_empty() {
                return builder.multipart(alternative).map_err(invalid);
            }
            MultiPart::mixed().multipart(alternative)
        }
    };
    let mut mixed = body;
    for a in attached {
        let part = Attachment::new(filename(a)).body(a.bytes.clone(), content_type(a));
        mixed = mixed.singlepart(part);
    }
    builder.multipart(mixed).map_err(invalid)
}

/// The formatted message (CRLF line endings), e.g. for a Sent copy or an `.eml`.
pub fn to_bytes(mail: &OutgoingMail) -> Result<Vec<u8>, SendError> {
    Ok(build(mail)?.formatted())
}

fn invalid(e: impl std::fmt::Display) -> SendError {
    SendError::Invalid(e.to_string())
}

fn mailbox(a: &Address) -> Result<Mailbox, SendError> {
    let email: lettre::Address = a
        .email
        .trim()
        .parse()
        .map_err(|e| SendError::Invalid(format!("address {:?}: {e}", a.email)))?;
    // lettre panics on control characters in a display name.
    let name = a.name.as_deref().map(one_line).filter(|n| !n.is_empty());
    Ok(Mailbox::new(name, email))
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

fn content_type(a: &OutgoingAttachment) -> ContentType {
    ContentType::parse(a.content_type.trim())
        .unwrap_or_else(|_| ContentType::parse("application/octet-stream").expect("valid"))
}

// ---------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------

type SmtpTransport = AsyncSmtpTransport<Tokio1Executor>;

/// Sends mail through one SMTP server (pooled connections) or into a folder.
/// Cheap to clone; clones share the pool. The SMTP pool is created on the
/// first send (it needs a Tokio runtime).
#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

enum Inner {
    Smtp(Box<SmtpInner>),
    File(PathBuf),
}

struct SmtpInner {
    builder: AsyncSmtpTransportBuilder,
    /// The live pool; `None` until the first send and after a reset.
    transport: Mutex<Option<Arc<SmtpTransport>>>,
    /// Bounds concurrent sends (and so connections) to `pool_max`: lettre's
    /// pool only bounds how many idle connections it keeps.
    permits: Semaphore,
    timeout: Duration,
    server: String,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.inner {
            Inner::Smtp(s) => f.debug_struct("Sender").field("smtp", &s.server).finish(),
            Inner::File(p) => f.debug_struct("Sender").field("file", p).finish(),
        }
    }
}

impl Sender {
    /// Checks the settings (reads `ca_file`); connects only when sending.
    pub fn new(t: Transport) -> Result<Sender, SendError> {
        let inner = match t {
            Transport::File(dir) => Inner::File(dir),
            Transport::Smtp(s) => Inner::Smtp(Box::new(smtp_inner(s)?)),
        };
        Ok(Sender {
            inner: Arc::new(inner),
        })
    }

    /// Sends `mail`; returns the server's final reply, e.g.
    /// `250 2.0.0 Ok: queued as X` (for the file transport: `written <path>`).
    ///
    /// One send must finish within `timeout × (3 + size in MiB)`, else it
    /// fails as [`SendError::Transient`]; the pool is then discarded, since
    /// the abandoned connection's state is unknown. When all recipients are
    /// refused or one is, nothing is sent (lettre aborts the transaction).
    pub async fn send(&self, mail: &OutgoingMail) -> Result<String, SendError> {
        let message = build(mail)?;
        let bytes = message.formatted();
        let envelope = message.envelope();
        let recipients = envelope.to().len();
        let result = match &*self.inner {
            Inner::File(dir) => write_file(dir, &mail.message_id, &bytes).await,
            Inner::Smtp(smtp) => smtp.send(envelope, &bytes).await,
        };
        match &result {
            Ok(response) => tracing::info!(
                message_id = %mail.message_id,
                recipients,
                size = bytes.len(),
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

fn smtp_inner(s: SmtpSettings) -> Result<SmtpInner, SendError> {
    if s.host.trim().is_empty() {
        return Err(SendError::Invalid("SMTP host is empty".into()));
    }
    let tls = match s.tls {
        TlsMode::None => Tls::None,
        TlsMode::Starttls => Tls::Required(tls_parameters(&s)?),
        TlsMode::Implicit => Tls::Wrapper(tls_parameters(&s)?),
    };
    let pool_max = s.pool_max.max(1);
    let mut builder = SmtpTransport::builder_dangerous(s.host.clone())
        .port(s.port)
        .tls(tls)
        .timeout(Some(s.timeout))
        .pool_config(PoolConfig::new().max_size(pool_max));
    match (&s.username, &s.password) {
        (Some(user), password) => {
            let secret = password.as_ref().map(|p| p.expose().to_owned());
            if s.xoauth2 && secret.is_none() {
                return Err(SendError::Invalid(
                    "XOAUTH2 needs an access token as the password".into(),
                ));
            }
            builder = builder
                .credentials(Credentials::new(user.clone(), secret.unwrap_or_default()))
                .authentication(if s.xoauth2 {
                    vec![Mechanism::Xoauth2]
                } else {
                    vec![Mechanism::Plain, Mechanism::Login]
                });
        }
        (None, Some(_)) => {
            return Err(SendError::Invalid(
                "an SMTP password is set without a username".into(),
            ));
        }
        (None, None) if s.xoauth2 => {
            return Err(SendError::Invalid("XOAUTH2 needs a username".into()));
        }
        (None, None) => {}
    }
    Ok(SmtpInner {
        builder,
        transport: Mutex::new(None),
        permits: Semaphore::new(pool_max as usize),
        timeout: s.timeout,
        server: format!("{}:{}", s.host, s.port),
    })
}

fn tls_parameters(s: &SmtpSettings) -> Result<TlsParameters, SendError> {
    let mut builder = TlsParameters::builder(s.host.clone());
    if let Some(path) = &s.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| SendError::Invalid(format!("ca_file {}: {e}", path.display())))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| SendError::Invalid(format!("ca_file {}: {e}", path.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    if s.accept_invalid_certs {
        builder = builder.dangerous_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| SendError::Invalid(format!("TLS settings: {e}")))
}

impl SmtpInner {
    fn transport(&self) -> Arc<SmtpTransport> {
        let mut slot = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert_with(|| Arc::new(self.builder.clone().build()))
            .clone()
    }

    /// Drops `transport` from use and closes its idle connections.
    fn reset(&self, transport: &Arc<SmtpTransport>) {
        let mut slot = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|t| Arc::ptr_eq(t, transport)) {
            *slot = None;
        }
        drop(slot);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let transport = Arc::clone(transport);
            handle.spawn(async move { transport.shutdown().await });
        }
    }

    async fn send(
        &self,
        envelope: &lettre::address::Envelope,
        bytes: &[u8],
    ) -> Result<String, SendError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::Transient("sender closed".into()))?;
        let mib = u32::try_from(bytes.len().div_ceil(1 << 20)).unwrap_or(u32::MAX);
        let deadline = self.timeout.saturating_mul(mib.saturating_add(3));
        let transport = self.transport();
        let guard = ResetOnDrop {
            inner: self,
            transport: &transport,
            armed: true,
        };
        let result = tokio::time::timeout(deadline, async {
            let mut guard = guard;
            let result = guard.transport.send_raw(envelope, bytes).await;
            guard.armed = false;
            result
        })
        .await;
        match result {
            Ok(Ok(response)) => Ok(response_text(&response)),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(SendError::Transient(format!(
                "no answer from {} within {} s",
                self.server,
                deadline.as_secs()
            ))),
        }
    }
}

/// Resets the pool when a send is abandoned midway (timeout or the caller
/// dropping the future): lettre would otherwise put the half-used connection
/// back into the pool, out of step with the server.
struct ResetOnDrop<'a> {
    inner: &'a SmtpInner,
    transport: &'a Arc<SmtpTransport>,
    armed: bool,
}

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            tracing::debug!(server = %self.inner.server, "send abandoned; resetting the SMTP pool");
            self.inner.reset(self.transport);
        }
    }
}

fn response_text(r: &lettre::transport::smtp::response::Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    if lines.is_empty() {
        r.code().to_string()
    } else {
        format!("{} {}", r.code(), lines.join(" "))
    }
}

/// Maps a lettre SMTP error to the retry classes.
fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let detail = e.source().map(|s| s.to_string()).unwrap_or_default();
    let server_text = |code: String| {
        if detail.is_empty() {
            code
        } else {
            format!("{code} {detail}")
        }
    };
    if e.is_permanent() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        SendError::Permanent(server_text(code))
    } else if e.is_transient() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        SendError::Transient(server_text(code))
    } else if e.is_client() {
        // The server cannot take this message as it is (no SMTPUTF8 for a
        // non-ASCII address, no common AUTH mechanism): retrying won't help.
        SendError::Permanent(e.to_string())
    } else {
        // Connection refused, DNS, TLS handshake, network, timeouts, a
        // garbled reply or a pool shut down: try again later.
        SendError::Transient(e.to_string())
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
