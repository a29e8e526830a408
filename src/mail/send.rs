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
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
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
                        .body(a.bytes.clone(), content_type(a));
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
        let part = Attachment::new(filename(a)).body(a.bytes.clone(), content_type(a));
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
// DKIM
// ---------------------------------------------------------------------------

/// Headers the DKIM signature covers (those present; a listed header that is
/// absent is signed as absent, so it cannot be added later). `Content-Type`
/// is not among them: lettre keeps the top-level `Content-Type` with the MIME
/// body rather than the message headers, so its signer cannot hash it.
const DKIM_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Auto-Submitted",
];

/// Smallest RSA key accepted (RFC 8301: at least 1024 bits; 2048 recommended).
const DKIM_MIN_RSA_BITS: usize = 1024;

/// Longest header block that is signed. lettre's relaxed canonicalization
/// recurses once per character of the signed headers, so signing runs on a
/// thread whose stack grows with them ([`DKIM_STACK_PER_BYTE`]).
const DKIM_MAX_HEADER_BYTES: usize = 256 * 1024;
/// Stack for the signing thread per header byte (measured: about 60 in a
/// debug build), on top of [`DKIM_STACK_BASE`]. Untouched stack costs no memory.
const DKIM_STACK_PER_BYTE: usize = 512;
const DKIM_STACK_BASE: usize = 1 << 20;

/// At most this many ids in `References`: the first and the latest ones
/// (RFC 5322 3.6.4 lets a long list be shortened; threading needs the ends).
const MAX_REFERENCES: usize = 20;

/// Why a DKIM signer cannot be set up. Never shows key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkimError {
    #[error("{0:?} is not a domain name (letters, digits and '-', dot-separated)")]
    Domain(String),
    #[error("{0:?} is not a DKIM selector (letters, digits and '-', dot-separated)")]
    Selector(String),
    #[error(
        "not a private key: {0} (expected PEM: PKCS#1 'RSA PRIVATE KEY', PKCS#8 'PRIVATE KEY' for RSA or Ed25519, or an Ed25519 seed in base64)"
    )]
    Format(String),
    #[error(
        "the key is encrypted; store it decrypted and readable only by switchboard (openssl pkey -in key.pem -out plain.pem)"
    )]
    Encrypted,
    #[error("the key is an {found} key but dkim_algorithm is {configured}")]
    Mismatch {
        found: DkimAlgorithm,
        configured: DkimAlgorithm,
    },
    #[error("the RSA key has {0} bits; DKIM needs at least 1024 (use 2048)")]
    WeakRsa(usize),
    #[error("the key cannot be used: {0}")]
    Key(String),
}

/// Signs outgoing mail with DKIM (RFC 6376; RSA-SHA256 or Ed25519-SHA256,
/// relaxed/relaxed canonicalization) for `domain`, whose public key is
/// published in DNS at `<selector>._domainkey.<domain>`.
///
/// The signature carries the signing time (`t=`, set by lettre from the
/// clock), so signing the same message twice gives two different
/// `DKIM-Signature` values; everything else is identical.
pub struct DkimSigner {
    config: DkimConfig,
    domain: String,
    selector: String,
    algorithm: DkimAlgorithm,
}

impl std::fmt::Debug for DkimSigner {
    // lettre's key types would print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl DkimSigner {
    /// Checks the domain and selector and reads the private key: PEM
    /// (PKCS#1 RSA, PKCS#8 RSA or Ed25519, unencrypted) or, for Ed25519, the
    /// 32-byte seed in base64 as lettre takes it.
    pub fn new(
        domain: &str,
        selector: &str,
        algorithm: DkimAlgorithm,
        private_key: &str,
    ) -> Result<DkimSigner, DkimError> {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_dns_name(&domain) || !domain.contains('.') {
            return Err(DkimError::Domain(domain));
        }
        let selector = selector.trim().to_owned();
        if !is_dns_name(&selector) {
            return Err(DkimError::Selector(selector));
        }
        let key = match (key_material(private_key)?, algorithm) {
            (KeyMaterial::Rsa { pkcs1_pem }, DkimAlgorithm::Rsa) => {
                DkimSigningKey::new(&pkcs1_pem, DkimSigningAlgorithm::Rsa)
            }
            (KeyMaterial::Ed25519 { seed_base64 }, DkimAlgorithm::Ed25519) => {
                DkimSigningKey::new(&seed_base64, DkimSigningAlgorithm::Ed25519)
            }
            (KeyMaterial::Rsa { .. }, configured) => {
                return Err(DkimError::Mismatch {
                    found: DkimAlgorithm::Rsa,
                    configured,
                });
            }
            (KeyMaterial::Ed25519 { .. }, configured) => {
                return Err(DkimError::Mismatch {
                    found: DkimAlgorithm::Ed25519,
                    configured,
                });
            }
        }
        .map_err(|e| {
            let detail = e.source().map(|s| format!(": {s}")).unwrap_or_default();
            DkimError::Key(format!("{e}{detail}"))
        })?;
        let headers = DKIM_SIGNED_HEADERS
            .iter()
            .map(|h| HeaderName::new_from_ascii_str(h))
            .collect();
        // Relaxed headers: lettre folds the finished DKIM-Signature header
        // differently from the one it hashed (with an empty b=).
        let canonicalization = DkimCanonicalization {
            header: DkimCanonicalizationType::Relaxed,
            body: DkimCanonicalizationType::Relaxed,
        };
        Ok(DkimSigner {
            config: DkimConfig::new(
                selector.clone(),
                domain.clone(),
                key,
                headers,
                canonicalization,
            ),
            domain,
            selector,
            algorithm,
        })
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }

    pub fn algorithm(&self) -> DkimAlgorithm {
        self.algorithm
    }

    /// The header names the signature covers (when present).
    pub fn signed_headers() -> &'static [&'static str] {
        DKIM_SIGNED_HEADERS
    }

    /// Adds the DKIM-Signature field. Headers too long to sign make the
    /// message [`SendError::Invalid`].
    fn sign(&self, message: &mut lettre::Message) -> Result<(), SendError> {
        let header_bytes = message.headers().to_string().len();
        if header_bytes > DKIM_MAX_HEADER_BYTES {
            return Err(SendError::Invalid(format!(
                "the headers are too long to sign ({} KiB, at most {} KiB)",
                header_bytes / 1024,
                DKIM_MAX_HEADER_BYTES / 1024
            )));
        }
        let stack = DKIM_STACK_BASE + header_bytes * DKIM_STACK_PER_BYTE;
        std::thread::scope(|scope| {
            let signing = std::thread::Builder::new()
                .name("dkim-sign".into())
                .stack_size(stack)
                .spawn_scoped(scope, || message.sign(&self.config))
                .map_err(|e| SendError::Transient(format!("cannot start DKIM signing: {e}")))?;
            // lettre unwraps inside; a panic there fails this message only.
            signing
                .join()
                .map_err(|_| SendError::Invalid("DKIM signing failed".into()))
        })
    }
}

/// A DNS name of letters, digits and inner hyphens, dot-separated (also
/// keeps `;` and `=` out of the DKIM-Signature tags).
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A private key in the form lettre's [`DkimSigningKey::new`] takes.
enum KeyMaterial {
    Rsa { pkcs1_pem: String },
    Ed25519 { seed_base64: String },
}

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

fn key_material(text: &str) -> Result<KeyMaterial, DkimError> {
    let text = text.trim();
    if !text.contains("-----BEGIN ") {
        let compact: String = text.split_whitespace().collect();
        return match BASE64.decode(compact.as_bytes()) {
            Ok(seed) if seed.len() == 32 => Ok(KeyMaterial::Ed25519 {
                seed_base64: compact,
            }),
            _ => Err(DkimError::Format("no PEM block".into())),
        };
    }
    let mut labels = Vec::new();
    for block in pem_blocks(text) {
        let (label, headers, der) = block?;
        match label.as_str() {
            "RSA PRIVATE KEY" if headers.contains("ENCRYPTED") => {
                return Err(DkimError::Encrypted);
            }
            "RSA PRIVATE KEY" => return rsa_pkcs1(&der),
            "PRIVATE KEY" => return pkcs8(&der),
            "ENCRYPTED PRIVATE KEY" => return Err(DkimError::Encrypted),
            other => labels.push(other.to_owned()),
        }
    }
    Err(DkimError::Format(format!(
        "no usable private key among the PEM blocks {labels:?}"
    )))
}

/// Each `-----BEGIN X-----` … `-----END X-----` block: its label, its
/// header lines (RFC 1421 `Proc-Type: …`) and its decoded bytes.
fn pem_blocks(text: &str) -> impl Iterator<Item = Result<(String, String, Vec<u8>), DkimError>> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find("-----BEGIN ")?;
        let after = &rest[start + "-----BEGIN ".len()..];
        let Some(label_end) = after.find("-----") else {
            rest = "";
            return Some(Err(DkimError::Format("unterminated PEM header".into())));
        };
        let label = after[..label_end].to_owned();
        let body_and_rest = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body_and_rest.find(&end_marker) else {
            rest = "";
            return Some(Err(DkimError::Format(format!("no END line for {label}"))));
        };
        let body = &body_and_rest[..end];
        rest = &body_and_rest[end + end_marker.len()..];
        let mut headers = String::new();
        let mut b64 = String::new();
        for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line.contains(':') {
                headers.push_str(line);
                headers.push('\n');
            } else {
                b64.push_str(line);
            }
        }
        Some(
            BASE64
                .decode(b64.as_bytes())
                .map(|der| (label.clone(), headers, der))
                .map_err(|e| DkimError::Format(format!("{label}: bad base64: {e}"))),
        )
    })
}

/// A minimal DER reader: enough to take PKCS#8 and PKCS#1 keys apart.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element's tag and contents.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        self.0 = rest;
        Some((tag, content))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, content) if t == tag => Some(content),
            _ => None,
        }
    }
}

const DER_INTEGER: u8 = 0x02;
const DER_OCTET_STRING: u8 = 0x04;
const DER_OID: u8 = 0x06;
const DER_SEQUENCE: u8 = 0x30;

/// PKCS#8 `PrivateKeyInfo`: RSA (the inner PKCS#1 key) or Ed25519 (the seed).
fn pkcs8(der: &[u8]) -> Result<KeyMaterial, DkimError> {
    let bad = || DkimError::Format("malformed PKCS#8 structure".into());
    let mut outer = Der(Der(der).expect(DER_SEQUENCE).ok_or_else(bad)?);
    outer.expect(DER_INTEGER).ok_or_else(bad)?;
    let mut algorithm = Der(outer.expect(DER_SEQUENCE).ok_or_else(bad)?);
    let oid = algorithm.expect(DER_OID).ok_or_else(bad)?;
    let private_key = outer.expect(DER_OCTET_STRING).ok_or_else(bad)?;
    if oid == OID_RSA_ENCRYPTION {
        rsa_pkcs1(private_key)
    } else if oid == OID_ED25519 {
        let seed = Der(private_key).expect(DER_OCTET_STRING).ok_or_else(bad)?;
        if seed.len() != 32 {
            return Err(bad());
        }
        Ok(KeyMaterial::Ed25519 {
            seed_base64: BASE64.encode(seed),
        })
    } else {
        Err(DkimError::Format(
            "a PKCS#8 key that is neither RSA nor Ed25519 (DKIM signs with those two)".into(),
        ))
    }
}

/// PKCS#1 `RSAPrivateKey`: checks the modulus size, gives it back as PEM.
fn rsa_pkcs1(der: &[u8]) -> Result<KeyMaterial, DkimError> {
    let bad = || DkimError::Format("malformed PKCS#1 RSA key".into());
    let mut key = Der(Der(der).expect(DER_SEQUENCE).ok_or_else(bad)?);
    key.expect(DER_INTEGER).ok_or_else(bad)?;
    let modulus = key.expect(DER_INTEGER).ok_or_else(bad)?;
    let significant: &[u8] = match modulus.iter().position(|b| *b != 0) {
        Some(i) => &modulus[i..],
        None => &[],
    };
    let bits = match significant.first() {
        Some(top) => significant.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if bits < DKIM_MIN_RSA_BITS {
        return Err(DkimError::WeakRsa(bits));
    }
    let b64 = BASE64.encode(der);
    let mut pem = String::from("-----BEGIN RSA PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END RSA PRIVATE KEY-----\n");
    Ok(KeyMaterial::Rsa { pkcs1_pem: pem })
}

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

/// Our own pool of SMTP connections. lettre's pooled transport is not used
/// because it never sets `TCP_NODELAY`: it writes a message and its final
/// `.` separately, and Nagle's algorithm then holds the `.` back until the
/// server's delayed ACK, about 40 ms per message.
///
/// A connection is only ever in the idle list between transactions, in step
/// with the server; one whose send failed midway, timed out or was dropped
/// is closed, never reused. At most `pool_max` sends (and so connections)
/// at once.
struct SmtpPool {
    host: String,
    port: u16,
    tls: TlsMode,
    tls_parameters: Option<TlsParameters>,
    login: Option<(Credentials, Vec<Mechanism>)>,
    hello: ClientId,
    timeout: Duration,
    idle_timeout: Duration,
    idle: Mutex<Vec<IdleConnection>>,
    permits: Semaphore,
    reaper: AtomicBool,
    server: String,
}

struct IdleConnection {
    conn: AsyncSmtpConnection,
    since: Instant,
}

/// Where a transaction failed.
enum Stage {
    /// `MAIL FROM`, the first command: nothing of the message was sent.
    Mail,
    Later,
}

impl SmtpPool {
    fn new(s: SmtpSettings) -> Result<SmtpPool, SendError> {
        if s.host.trim().is_empty() {
            return Err(SendError::Invalid("SMTP host is empty".into()));
        }
        let tls_parameters = match s.tls {
            TlsMode::None => None,
            TlsMode::Starttls | TlsMode::Implicit => Some(tls_parameters(&s)?),
        };
        let login = match (&s.username, &s.password) {
            (Some(user), password) => {
                let secret = password.as_ref().map(|p| p.expose().to_owned());
                if s.xoauth2 && secret.is_none() {
                    return Err(SendError::Invalid(
                        "XOAUTH2 needs an access token as the password".into(),
                    ));
                }
                let mechanisms = if s.xoauth2 {
                    vec![Mechanism::Xoauth2]
                } else {
                    vec![Mechanism::Plain, Mechanism::Login]
                };
                Some((
                    Credentials::new(user.clone(), secret.unwrap_or_default()),
                    mechanisms,
                ))
            }
            (None, Some(_)) => {
                return Err(SendError::Invalid(
                    "an SMTP password is set without a username".into(),
                ));
            }
            (None, None) if s.xoauth2 => {
                return Err(SendError::Invalid("XOAUTH2 needs a username".into()));
            }
            (None, None) => None,
        };
        let pool_max = s.pool_max.max(1) as usize;
        Ok(SmtpPool {
            server: format!("{}:{}", s.host, s.port),
            host: s.host,
            port: s.port,
            tls: s.tls,
            tls_parameters,
            login,
            hello: ClientId::default(),
            timeout: s.timeout,
            idle_timeout: s.idle_timeout.max(Duration::from_millis(100)),
            idle: Mutex::new(Vec::with_capacity(pool_max)),
            permits: Semaphore::new(pool_max),
            reaper: AtomicBool::new(false),
        })
    }

    async fn send(
        self: &Arc<Self>,
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
        // On a timeout the future, and with it the connection, is dropped:
        // only finished transactions return a connection to the pool.
        match tokio::time::timeout(deadline, self.send_within(envelope, bytes)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Transient(format!(
                "no answer from {} within {} s",
                self.server,
                deadline.as_secs()
            ))),
        }
    }

    async fn send_within(
        self: &Arc<Self>,
        envelope: &lettre::address::Envelope,
        bytes: &[u8],
    ) -> Result<String, SendError> {
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            if let Err(e) = check_capabilities(&conn, envelope, bytes) {
                self.put_idle(conn);
                return Err(e);
            }
            match transaction(&mut conn, envelope, bytes).await {
                Ok(response) => {
                    self.put_idle(conn);
                    return Ok(response_text(&response));
                }
                // The first command on a connection that sat in the pool
                // failed: the server has closed it (idle timeout, per
                // connection limit, restart). Nothing was sent: use another.
                Err((Stage::Mail, e)) if reused && !e.is_permanent() => {
                    tracing::debug!(server = %self.server, error = %e, "pooled SMTP connection is gone; reconnecting");
                }
                Err((_, e)) => {
                    // A complete reply (other than 421, closing): the session
                    // is in step; RSET ends the transaction and keeps it.
                    let in_step = e.status().is_some_and(|c| c.to_string() != "421");
                    if in_step && conn.command(Rset).await.is_ok() {
                        self.put_idle(conn);
                    }
                    return Err(classify(&e));
                }
            }
        }
    }

    /// A new connection: TCP (with `TCP_NODELAY`), TLS as configured, the
    /// greeting, EHLO and AUTH, all within `timeout`.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let setup = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| {
                    SendError::Transient(format!("cannot connect to {}: {e}", self.server))
                })?;
            tcp.set_nodelay(true).map_err(|e| {
                SendError::Transient(format!("socket option for {}: {e}", self.server))
            })?;
            let stream: Box<dyn AsyncTokioStream> = match (&self.tls, &self.tls_parameters) {
                (TlsMode::Implicit, Some(params)) => Box::new(
                    implicit_tls::ImplicitTls::handshake(tcp, params.clone())
                        .await
                        .map_err(|e| classify(&e))?,
                ),
                _ => Box::new(tcp),
            };
            let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
                .await
                .map_err(|e| classify(&e))?;
            if let (TlsMode::Starttls, Some(params)) = (&self.tls, &self.tls_parameters) {
                conn.starttls(params.clone(), &self.hello)
                    .await
                    .map_err(|e| classify(&e))?;
            }
            if let Some((credentials, mechanisms)) = &self.login {
                conn.auth(mechanisms, credentials)
                    .await
                    .map_err(|e| classify(&e))?;
            }
            Ok(conn)
        };
        match tokio::time::timeout(self.timeout, setup).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Transient(format!(
                "{} did not complete the SMTP greeting, TLS and login within {} s",
                self.server,
                self.timeout.as_secs()
            ))),
        }
    }

    /// The most recently used idle connection that has not expired.
    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout {
                return Some(c.conn);
            }
        }
        None
    }

    fn put_idle(self: &Arc<Self>, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(IdleConnection {
                conn,
                since: Instant::now(),
            });
        self.start_reaper();
    }

    /// A task that closes expired idle connections (QUIT) until the pool is
    /// dropped; started on the first connection put back.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaper.store(false, Ordering::Release);
            return;
        };
        let pool: Weak<SmtpPool> = Arc::downgrade(self);
        let every = self.idle_timeout / 2;
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { break };
                let expired: Vec<IdleConnection> = {
                    let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                    let (expired, keep) = std::mem::take(&mut *idle)
                        .into_iter()
                        .partition(|c| c.since.elapsed() >= pool.idle_timeout);
                    *idle = keep;
                    expired
                };
                drop(pool);
                for mut c in expired {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), c.conn.command(Quit)).await;
                }
            }
        });
    }
}

/// What lettre's own `send` refuses before the transaction.
fn check_capabilities(
    conn: &AsyncSmtpConnection,
    envelope: &lettre::address::Envelope,
    bytes: &[u8],
) -> Result<(), SendError> {
    let info = conn.server_info();
    if !envelope_is_ascii(envelope) && !info.supports_feature(Extension::SmtpUtfEight) {
        return Err(SendError::Permanent(
            "an address is not ASCII and the server does not support SMTPUTF8".into(),
        ));
    }
    if !bytes.is_ascii() && !info.supports_feature(Extension::EightBitMime) {
        return Err(SendError::Permanent(
            "the message is not 7-bit and the server does not support 8BITMIME".into(),
        ));
    }
    Ok(())
}

fn envelope_is_ascii(envelope: &lettre::address::Envelope) -> bool {
    envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .all(|a| AsRef::<str>::as_ref(a).is_ascii())
}

/// MAIL, RCPT for each recipient, DATA and the message; stops at the first
/// refusal (one refused recipient: nothing is sent).
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    envelope: &lettre::address::Envelope,
    bytes: &[u8],
) -> Result<lettre::transport::smtp::response::Response, (Stage, lettre::transport::smtp::Error)> {
    let mut parameters = Vec::new();
    if !envelope_is_ascii(envelope) {
        parameters.push(MailParameter::SmtpUtfEight);
    }
    if !bytes.is_ascii() {
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(envelope.from().cloned(), parameters))
        .await
        .map_err(|e| (Stage::Mail, e))?;
    let later = |e| (Stage::Later, e);
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), vec![]))
            .await
            .map_err(later)?;
    }
    conn.command(Data).await.map_err(later)?;
    // lettre ends the data with CRLF "." CRLF even after a final CRLF of the
    // message, which the server would keep as an extra empty line: leave
    // ours out, so the server stores exactly `bytes`.
    conn.message(bytes.strip_suffix(b"\r\n").unwrap_or(bytes))
        .await
        .map_err(later)
}

/// SMTPS: TLS from the first byte, before the greeting.
mod implicit_tls {
    // `AsyncNetworkStream` is public but deprecated in lettre 0.11; it is the
    // only way to use lettre's own TLS set-up (the same certificate checks as
    // STARTTLS) on a socket of ours before `connect_with_transport` reads the
    // greeting. It speaks futures-io, which lettre enables in futures-util.
    #![allow(deprecated)]

    use std::io;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::io::{AsyncRead as FuturesRead, AsyncWrite as FuturesWrite};
    use lettre::transport::smtp::client::{AsyncNetworkStream, AsyncTokioStream, TlsParameters};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;

    #[derive(Debug)]
    pub(super) struct ImplicitTls(AsyncNetworkStream);

    impl ImplicitTls {
        pub(super) async fn handshake(
            tcp: TcpStream,
            params: TlsParameters,
        ) -> Result<ImplicitTls, lettre::transport::smtp::Error> {
            let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
            stream.upgrade_tls(params).await?;
            Ok(ImplicitTls(stream))
        }
    }

    impl AsyncTokioStream for ImplicitTls {
        fn peer_addr(&self) -> io::Result<SocketAddr> {
            self.0.peer_addr()
        }
    }

    impl AsyncRead for ImplicitTls {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let unfilled = buf.initialize_unfilled();
            match Pin::new(&mut self.get_mut().0).poll_read(cx, unfilled) {
                Poll::Ready(Ok(n)) => {
                    buf.advance(n);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for ImplicitTls {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_close(cx)
        }
    }
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
        // The server cannot take this message as it is (no common AUTH
        // mechanism, no STARTTLS where it is required): retrying won't help.
        SendError::Permanent(e.to_string())
    } else {
        // Connection refused, DNS, TLS handshake, network, timeouts or a
        // garbled reply: try again later.
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
