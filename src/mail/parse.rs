//! Parsing of raw RFC 5322 / MIME messages into the fields Switchboard needs.
//!
//! Everything here is pure (no I/O) and must never panic on hostile input
//! (ARCHITECTURE.md, guarantee 6): a message that mail-parser can make any sense
//! of yields a best-effort [`ParsedMail`]; only empty input, input without a
//! single header, or input above [`ParseLimits::max_message_bytes`] is refused.
//!
//! Attachment contents are not kept: [`AttachmentMeta::part_index`] identifies
//! the MIME part and [`attachment_bytes`] re-parses the stored raw message to
//! fetch the decoded bytes on demand.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDate, Utc};
use mail_parser::{
    Encoding, HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType,
    decoders::{
        base64::base64_decode, charsets::map::charset_decoder,
        quoted_printable::quoted_printable_decode,
    },
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::undecoded::Undecoded;
use crate::domain::text::{replace_controls, strip_direction_controls, strip_direction_formatting};
use std::collections::HashMap;

/// Default for [`ParseLimits::max_message_bytes`]: 50 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 50 * 1024 * 1024;

/// At most this many header fields of the top-level header block are copied
/// into [`ParsedMail::headers`] (hostile mail can carry hundreds of thousands).
pub const MAX_HEADER_FIELDS: usize = 1000;
/// Header values copied into [`ParsedMail::headers`] are cut to this many bytes
/// (at a character boundary).
pub const MAX_HEADER_VALUE_BYTES: usize = 16 * 1024;
/// Subjects and display names are cut to this many bytes (at a character boundary).
pub const MAX_DISPLAY_BYTES: usize = 4 * 1024;
/// At most this many ids are kept from `References` (the first, which is the
/// thread root, and the most recent ones) and from `In-Reply-To`.
pub const MAX_REFERENCES: usize = 100;
/// A Message-ID longer than this (the RFC 5322 line limit) is treated as absent,
/// so the content hash is used for deduplication instead.
pub const MAX_MESSAGE_ID_BYTES: usize = 998;

/// Limits applied by [`parse_message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Larger messages are refused with [`ParseError::TooLarge`].
    pub max_message_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Why a raw message could not be turned into a [`ParsedMail`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("message is empty or has no header fields")]
    Unparseable,
}

/// A mailbox address. `email` has its domain part lowercased (the local part
/// is case-sensitive per RFC 5321 and is kept as written).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Address {
    /// Display name; null or absent when there is none. No control characters.
    pub name: Option<String>,
    /// local@domain, without angle brackets, spaces or `<>,;"`.
    pub email: String,
}

/// Metadata of one attachment; the bytes are fetched with [`attachment_bytes`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    /// Decoded file name (RFC 2047 / RFC 2231 handled), if any.
    pub filename: Option<String>,
    /// Lowercased `type/subtype`, `application/octet-stream` when unknown.
    pub content_type: String,
    /// The `charset` of a text part, lowercased (`koi8-r`), as the sender
    /// labelled it: its bytes are kept in it, so a download or a forward
    /// names it (see [`AttachmentMeta::full_content_type`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charset: Option<String>,
    /// Size in bytes after transfer decoding (what [`attachment_bytes`] returns).
    pub size: usize,
    /// Content-ID without angle brackets (target of `cid:` URLs).
    pub content_id: Option<String>,
    /// `true` for parts shown inside the body (e.g. images referenced by `cid:`).
    pub inline: bool,
    /// Index of the MIME part in mail-parser's flattened part list; stable for
    /// a given raw message, pass it to [`attachment_bytes`].
    pub part_index: usize,
}

impl AttachmentMeta {
    /// The type with its charset, as a `Content-Type` value:
    /// `text/plain; charset=koi8-r`.
    pub fn full_content_type(&self) -> String {
        match &self.charset {
            Some(charset) => format!("{}; charset={charset}", self.content_type),
            None => self.content_type.clone(),
        }
    }

    /// The name to show and save it under: its own, else `attachment-<part>`
    /// with the extension its type usually has (`attachment-2.ics` for an
    /// invitation), so a saved file opens with the right program.
    pub fn display_name(&self) -> String {
        if let Some(name) = self.filename.as_deref().filter(|n| !n.trim().is_empty()) {
            return name.to_string();
        }
        let ext = match self.content_type.as_str() {
            "text/calendar" => ".ics",
            "text/plain" => ".txt",
            "text/html" => ".html",
            "text/csv" => ".csv",
            "text/vcard" | "text/x-vcard" => ".vcf",
            "application/pdf" => ".pdf",
            "application/zip" => ".zip",
            "application/json" => ".json",
            "application/ics" => ".ics",
            "message/rfc822" => ".eml",
            "message/delivery-status" => ".txt",
            "image/png" => ".png",
            "image/jpeg" => ".jpg",
            "image/gif" => ".gif",
            "image/webp" => ".webp",
            "audio/mpeg" => ".mp3",
            "video/mp4" => ".mp4",
            _ => "",
        };
        format!("attachment-{}{ext}", self.part_index)
    }
}

/// The fields of a message that Switchboard uses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParsedMail {
    /// Message-ID without angle brackets.
    pub message_id: Option<String>,
    /// In-Reply-To ids without angle brackets.
    pub in_reply_to: Vec<String>,
    /// References ids without angle brackets, oldest first.
    pub references: Vec<String>,
    /// Decoded subject.
    pub subject: Option<String>,
    pub from: Option<Address>,
    /// The From mailboxes after the first, of a mail with several authors
    /// (RFC 5322 3.6.2); replies go to them all (3.6.3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub co_authors: Vec<Address>,
    pub reply_to: Vec<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub date: Option<DateTime<Utc>>,
    /// The text/plain body (several inline text parts are joined); `None` when
    /// the message only has an HTML body.
    pub text_body: Option<String>,
    /// The text/html body, if any.
    pub html_body: Option<String>,
    pub attachments: Vec<AttachmentMeta>,
    /// Hex SHA-256 over the body and the From, To, Date, Subject and Message-ID
    /// header values. Trace headers added during delivery (Received,
    /// Delivered-To, Return-Path, X-...) are left out, and line endings are
    /// normalised, so the same mail delivered to two mailboxes hashes the same.
    pub content_hash: String,
    /// Top-level header fields in order: name as written, raw value (not RFC
    /// 2047-decoded) unfolded, trimmed and decoded to UTF-8 lossily. Capped by
    /// [`MAX_HEADER_FIELDS`] and [`MAX_HEADER_VALUE_BYTES`].
    pub headers: Vec<(String, String)>,
}

impl ParsedMail {
    /// Makes every text safe for both backends: the one place between parsing
    /// and storage where hostile bytes (a raw NUL in `From`, `References`, a
    /// body, a file name...) are removed, so one mail cannot fail its batch.
    /// The content hash is kept: it is over the raw source.
    pub fn make_storable(&mut self) {
        let opt = |s: &mut Option<String>| {
            if let Some(s) = s {
                strip_nul(s)
            }
        };
        opt(&mut self.message_id);
        self.in_reply_to.iter_mut().for_each(strip_nul);
        self.references.iter_mut().for_each(strip_nul);
        self.in_reply_to.retain(|s| !s.is_empty());
        self.references.retain(|s| !s.is_empty());
        opt(&mut self.subject);
        // Shown on one line of the page: no bidirectional control may make
        // them read otherwise than they are (see `domain::text`).
        if let Some(s) = &mut self.subject {
            strip_direction_formatting(s);
            replace_controls(s);
        }
        for a in self
            .from
            .iter_mut()
            .chain(self.co_authors.iter_mut())
            .chain(self.reply_to.iter_mut())
            .chain(self.to.iter_mut())
            .chain(self.cc.iter_mut())
        {
            strip_nul(&mut a.email);
            opt(&mut a.name);
            if let Some(name) = &mut a.name {
                strip_direction_formatting(name);
                replace_controls(name);
            }
        }
        opt(&mut self.text_body);
        opt(&mut self.html_body);
        for a in &mut self.attachments {
            opt(&mut a.filename);
            if let Some(name) = &mut a.filename {
                strip_direction_controls(name);
                replace_controls(name);
            }
            strip_nul(&mut a.content_type);
            opt(&mut a.charset);
            opt(&mut a.content_id);
        }
        for (name, value) in &mut self.headers {
            strip_nul(name);
            strip_nul(value);
        }
    }

    /// Value of the first header field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Values of all header fields called `name` (case-insensitive), in order.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a raw message. Never panics; see the module documentation.
pub fn parse_message(raw: &[u8], limits: &ParseLimits) -> Result<ParsedMail, ParseError> {
    parse_message_with(raw, limits, true)
}

/// [`parse_message`]; with `skim`, attachments are not decoded where that
/// gives the same result (see [`Undecoded`]).
pub(super) fn parse_message_with(
    raw: &[u8],
    limits: &ParseLimits,
    skim: bool,
) -> Result<ParsedMail, ParseError> {
    if raw.len() > limits.max_message_bytes {
        return Err(ParseError::TooLarge {
            size: raw.len(),
            limit: limits.max_message_bytes,
        });
    }
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Unparseable);
    }
    // Attachments' bytes are not needed here, only their sizes: parse a copy
    // in which they are not decoded where that gives the same result.
    let undecoded = if skim { Undecoded::of(raw) } else { None };
    let mut decoded_sizes = HashMap::new();
    let skimmed = undecoded.as_ref().and_then(|copy| {
        let message = parse_raw(&copy.bytes)?;
        decoded_sizes = copy.sizes(&message)?;
        Some(message)
    });
    let message = match skimmed {
        Some(message) => message,
        None => parse_raw(raw).ok_or(ParseError::Unparseable)?,
    };
    let Some(root) = message.parts.first() else {
        return Err(ParseError::Unparseable);
    };
    // mail-parser takes almost anything for a header; require at least one
    // field with a valid RFC 5322 name (printable ASCII without ':').
    let valid_name =
        |name: &str| !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if !root.headers.iter().any(|h| valid_name(h.name.as_str())) {
        return Err(ParseError::Unparseable);
    }

    // Raw 8-bit header text that is not UTF-8 is almost always Latin-1 /
    // Windows-1252 from old mailers; mail-parser would turn it into U+FFFD.
    // Re-parse such a header block transcoded line by line.
    // Likewise an encoded word in a charset mail-parser does not know, whose
    // bytes are not UTF-8: it is read as Windows-1252 (see `legacy_8bit`).
    let header_end = (root.offset_body as usize).min(raw.len());
    let transcoded = readable_header_block(raw.get(..header_end).unwrap_or_default());
    let header_message = transcoded
        .as_deref()
        .and_then(|block| guarded(|| MessageParser::default().parse_headers(block)));
    let (hdr, hdr_raw): (&Message<'_>, &[u8]) = match (&header_message, &transcoded) {
        (Some(m), Some(block)) if !m.parts.is_empty() => (m, block),
        _ => (&message, raw),
    };

    let message_id = hdr
        .header_values(HeaderName::MessageId)
        .next()
        .and_then(|v| ids_of(v).into_iter().next())
        .filter(|id| id.len() <= MAX_MESSAGE_ID_BYTES);

    let mut in_reply_to: Vec<String> = hdr
        .header_values(HeaderName::InReplyTo)
        .flat_map(ids_of)
        .collect();
    cap_ids(&mut in_reply_to);
    let mut references: Vec<String> = hdr
        .header_values(HeaderName::References)
        .flat_map(ids_of)
        .collect();
    cap_ids(&mut references);

    let subject = hdr
        .subject()
        .map(|s| truncate_str(s.trim(), MAX_DISPLAY_BYTES).to_string())
        .filter(|s| !s.is_empty());

    let mut authors = addresses(hdr, HeaderName::From).into_iter();
    let from = authors.next();
    let co_authors: Vec<Address> = authors.collect();
    let reply_to = addresses(hdr, HeaderName::ReplyTo);
    let to = addresses(hdr, HeaderName::To);
    let cc = addresses(hdr, HeaderName::Cc);

    let date = hdr.date().and_then(to_chrono);

    let text_body = join_bodies(raw, &message, &message.text_body, false);
    let html_body = join_bodies(raw, &message, &message.html_body, true);

    let attachments = message
        .attachments
        .iter()
        .filter_map(|&id| {
            let index = id as usize;
            message.parts.get(index).map(|part| {
                let mut meta = attachment_meta(raw, part, index);
                if let Some(size) = decoded_sizes.get(&index) {
                    meta.size = *size;
                }
                meta
            })
        })
        .collect();

    let headers = hdr
        .headers()
        .iter()
        .take(MAX_HEADER_FIELDS)
        .map(|h| {
            let value = raw_header_value(hdr_raw, h.offset_start, h.offset_end);
            (
                h.name.as_str().to_string(),
                truncate_str(&value, MAX_HEADER_VALUE_BYTES).to_string(),
            )
        })
        .collect();

    let content_hash = content_hash(raw, &message);

    let mut parsed = ParsedMail {
        message_id,
        in_reply_to,
        references,
        subject,
        from,
        co_authors,
        reply_to,
        to,
        cc,
        date,
        text_body,
        html_body,
        attachments,
        content_hash,
        headers,
    };
    parsed.make_storable();
    Ok(parsed)
}

/// Removes NUL characters, which no text column of PostgreSQL can hold and
/// which no header or body needs, in place.
pub fn strip_nul(s: &mut String) {
    if s.contains('\0') {
        s.retain(|c| c != '\0');
    }
}

/// Re-parses `raw` and returns the transfer-decoded bytes of the MIME part
/// `part_index` (see [`AttachmentMeta::part_index`]). Text parts are returned
/// in their original charset, a `message/rfc822` part as the embedded raw
/// message. `None` if there is no such leaf part.
pub fn attachment_bytes(raw: &[u8], part_index: usize) -> Option<Vec<u8>> {
    let message = parse_raw(raw)?;
    let part = message.parts.get(part_index)?;
    if matches!(part.body, PartType::Multipart(_)) {
        return None;
    }
    Some(decoded_part_bytes(raw, part).into_owned())
}

/// `MessageParser::parse`, with a panic turned into `None`.
pub(crate) fn parse_raw(raw: &[u8]) -> Option<Message<'_>> {
    guarded(|| MessageParser::default().parse(raw))
}

/// mail-parser does not panic in release builds, but it has `debug_assert!`s
/// on some recovery paths; in debug builds a hostile message must not take
/// the worker down either (guarantee 6).
fn guarded<'a>(
    f: impl FnOnce() -> Option<Message<'a>> + std::panic::UnwindSafe,
) -> Option<Message<'a>> {
    std::panic::catch_unwind(f).ok().flatten()
}

/// Strips reply and forward prefixes (`Re:`, `RE:`, `Fwd:`, `FW:`, `AW:`,
/// `WG:`, `Sv:`, `Re[2]:`, ... repeated, in any case) from the start of a
/// subject for threading by subject. Tags such as `[Ticket #42]` and everything
/// after the prefixes are kept; runs of whitespace become one space.
pub fn normalize_subject(s: &str) -> String {
    let mut rest = s.trim_start();
    while let Some(after) = strip_reply_prefix(rest) {
        rest = after.trim_start();
    }
    rest.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reply/forward prefixes in common mail clients and languages.
const REPLY_PREFIXES: &[&str] = &[
    "re", "fwd", "fw", "aw", "wg", "sv", "vs", "antw", "doorst", "tr", "rif", "res", "enc", "odp",
    "ynt", "vl", "回复", "答复", "转发", "回覆", "轉寄",
];

/// If `s` starts with a reply/forward prefix (word, optional counter such as
/// `[2]`, `(2)` or `^2`, optional spaces, then `:` or a full-width `：`),
/// returns the rest after the colon.
fn strip_reply_prefix(s: &str) -> Option<&str> {
    for prefix in REPLY_PREFIXES {
        let Some(head) = s.get(..prefix.len()) else {
            continue;
        };
        if !head.eq_ignore_ascii_case(prefix) {
            continue;
        }
        let mut rest = &s[prefix.len()..];
        // Optional counter: Re[2]: Re(2): Re^2:
        if let Some(inner) = rest.strip_prefix('[').or_else(|| rest.strip_prefix('(')) {
            let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
            let close = inner[digits..].chars().next();
            if digits > 0 && matches!(close, Some(']') | Some(')')) {
                rest = &inner[digits + 1..];
            }
        } else if let Some(inner) = rest.strip_prefix('^') {
            let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 {
                rest = &inner[digits..];
            }
        }
        let rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(':').or_else(|| rest.strip_prefix('：')) {
            return Some(after);
        }
    }
    None
}

/// Lowercases the domain part of an address and strips angle brackets and
/// whitespace. Returns `None` for an empty address.
pub(crate) fn normalize_email(address: &str) -> Option<String> {
    let trimmed = address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    if trimmed.is_empty() {
        return None;
    }
    Some(match trimmed.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_lowercase()),
        None => trimmed.to_string(),
    })
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Message ids of a Message-ID / In-Reply-To / References value, without
/// angle brackets. Tolerates ids without brackets.
fn ids_of(value: &HeaderValue<'_>) -> Vec<String> {
    let raw: Vec<&str> = match value {
        HeaderValue::Text(t) => vec![t.as_ref()],
        HeaderValue::TextList(list) => list.iter().map(|t| t.as_ref()).collect(),
        _ => Vec::new(),
    };
    raw.into_iter()
        .flat_map(|s| s.split_whitespace())
        .map(|s| {
            s.trim_matches(|c| c == '<' || c == '>' || c == ',')
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// A header block as mail-parser should read it: lines that are not UTF-8
/// transcoded, encoded words repaired (see [`repair_encoded_words`]); `None`
/// when it reads well as it is.
fn readable_header_block(block: &[u8]) -> Option<Vec<u8>> {
    let transcoded = std::str::from_utf8(block)
        .is_err()
        .then(|| transcode_8bit_lines(block));
    repair_encoded_words(transcoded.as_deref().unwrap_or(block)).or(transcoded)
}

/// Lines that are not valid UTF-8 are decoded as Windows-1252 (a superset
/// of printable ISO-8859-1); valid lines are kept as they are.
fn transcode_8bit_lines(block: &[u8]) -> Vec<u8> {
    let latin1 = charset_decoder(b"windows-1252");
    let mut out = Vec::with_capacity(block.len() + block.len() / 8);
    for line in block.split_inclusive(|&b| b == b'\n') {
        match (std::str::from_utf8(line), latin1) {
            (Ok(_), _) => out.extend_from_slice(line),
            (Err(_), Some(decode)) => out.extend_from_slice(decode(line).as_bytes()),
            (Err(_), None) => out.extend_from_slice(String::from_utf8_lossy(line).as_bytes()),
        }
    }
    out
}

/// Whether `label` names UTF-8 (or ASCII), which mail-parser reads without
/// a decoder of its own.
fn is_utf8_label(label: &str) -> bool {
    let l = label.trim().to_ascii_lowercase();
    matches!(
        l.as_str(),
        "utf-8"
            | "utf8"
            | "unicode-1-1-utf-8"
            | "unicode11utf8"
            | "unicode20utf8"
            | "x-unicode20utf8"
    )
}

/// Whether `label` names US-ASCII, which cannot hold an 8-bit byte
/// (mail-parser reads it as Windows-1252).
fn is_ascii_label(label: &str) -> bool {
    let l = label.trim().to_ascii_lowercase().replace('_', "-");
    matches!(
        l.as_str(),
        "us-ascii"
            | "ascii"
            | "us"
            | "ansi-x3.4-1968"
            | "ansi-x3.4-1986"
            | "iso646-us"
            | "iso-646.irv:1991"
            | "iso-ir-6"
            | "ibm367"
            | "cp367"
            | "csascii"
    )
}

/// A text part labelled US-ASCII whose bytes are 8-bit and valid UTF-8:
/// the label is wrong (ASCII has no 8-bit byte), and UTF-8 is what such
/// bytes almost always are; `None` when mail-parser's reading stands.
fn ascii_labelled_utf8_body(raw: &[u8], part: &MessagePart<'_>) -> Option<String> {
    let label = part.content_type()?.attribute("charset")?;
    if !is_ascii_label(label) {
        return None;
    }
    let bytes = decoded_part_bytes(raw, part);
    if bytes.is_ascii() {
        return None;
    }
    String::from_utf8(bytes.into_owned()).ok()
}

/// Whether text labelled `label` (`None`: no label) is legacy 8-bit text
/// when its bytes are not UTF-8: no label, or one mail-parser does not know
/// (it then reads the bytes as UTF-8, each stray byte a replacement
/// character). Such text is almost always Windows-1252 (a superset of
/// printable ISO-8859-1) from an old mailer or an unregistered label
/// (`latin`, `8bit`, `x-unknown`).
fn legacy_8bit(label: Option<&str>) -> bool {
    label.is_none_or(|l| {
        // An RFC 2231 language suffix: `iso-8859-1*de`.
        let l = l.split('*').next().unwrap_or_default();
        charset_decoder(l.trim().as_bytes()).is_none() && !is_utf8_label(l)
    })
}

/// A text part of legacy 8-bit text (see [`legacy_8bit`]) decoded as
/// Windows-1252; `None` when mail-parser's reading stands.
fn legacy_8bit_body(raw: &[u8], part: &MessagePart<'_>, text: &str) -> Option<String> {
    if !text.contains('\u{FFFD}') {
        return None;
    }
    let label = part.content_type().and_then(|ct| ct.attribute("charset"));
    if !legacy_8bit(label) {
        return None;
    }
    let bytes = decoded_part_bytes(raw, part);
    if std::str::from_utf8(&bytes).is_ok() {
        return None;
    }
    // HTML without a MIME label may name its charset in a `<meta>` tag.
    let meta = matches!(part.body, PartType::Html(_))
        .then(|| meta_charset(&bytes))
        .flatten()
        .and_then(charset_decoder);
    meta.or_else(|| charset_decoder(b"windows-1252"))
        .map(|decode| decode(&bytes))
}

/// The charset an HTML document names near its start (`<meta charset=…>` or
/// `content="text/html; charset=…"`).
fn meta_charset(html: &[u8]) -> Option<&[u8]> {
    let head = &html[..html.len().min(4096)];
    let lower = head.to_ascii_lowercase();
    let at = memchr::memmem::find(&lower, b"charset=")? + b"charset=".len();
    let value = &head[at..];
    let value = value
        .strip_prefix(b"\"")
        .or_else(|| value.strip_prefix(b"'"))
        .unwrap_or(value);
    let end = value
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')))
        .unwrap_or(value.len());
    (end > 0).then(|| &value[..end])
}

/// The file name of `part` read from its header block as the top-level
/// headers are read (8-bit lines and unknown charsets as Windows-1252);
/// `None` when that changes nothing.
fn legacy_8bit_name(raw: &[u8], part: &MessagePart<'_>) -> Option<String> {
    let block = raw.get(part.offset_header as usize..part.offset_body as usize)?;
    let fixed = readable_header_block(block)?;
    let headers = guarded(|| MessageParser::default().parse_headers(&fixed))?;
    let name = headers.parts.first()?.attachment_name()?.to_string();
    (!name.contains('\u{FFFD}')).then_some(name)
}

/// An RFC 2047 encoded word of a header block: `=?label?B|Q?payload?=`.
struct EncodedWord<'a> {
    /// Where `=?` starts and where `?=` ends (exclusive).
    start: usize,
    end: usize,
    label: &'a [u8],
    /// The decoded payload; `None` when it does not decode.
    bytes: Option<Vec<u8>>,
}

/// The encoded words of `block`, in order (each within one line).
fn encoded_words(block: &[u8]) -> Vec<EncodedWord<'_>> {
    let mut words = Vec::new();
    let mut after = 0;
    for start in memchr::memmem::find_iter(block, b"=?") {
        if start < after {
            continue;
        }
        let rest = &block[start + 2..];
        let line = &rest[..memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len())];
        let mut fields = line.splitn(3, |&b| b == b'?');
        let (Some(label), Some(kind), Some(tail)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some(payload_len) = memchr::memmem::find(tail, b"?=") else {
            continue;
        };
        if label.is_empty() || label.len() > 40 {
            continue;
        }
        let payload = &tail[..payload_len];
        let bytes = match kind {
            b"B" | b"b" => base64_decode(payload),
            b"Q" | b"q" => {
                let spaced: Vec<u8> = payload
                    .iter()
                    .map(|&b| if b == b'_' { b' ' } else { b })
                    .collect();
                quoted_printable_decode(&spaced)
            }
            _ => continue,
        };
        let end = start + 2 + label.len() + 1 + kind.len() + 1 + payload_len + 2;
        after = end;
        words.push(EncodedWord {
            start,
            end,
            label,
            bytes,
        });
    }
    words
}

/// The header block with its encoded words repaired, `None` when none needs
/// it: a word of legacy 8-bit text (see [`legacy_8bit`]) is relabelled
/// `windows-1252`; adjacent UTF-8 words that each hold part of a character
/// (split by the sender's mail program, which RFC 2047 does not allow but
/// some do) are joined into one.
fn repair_encoded_words(block: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let words = encoded_words(block);
    let utf8 = |w: &EncodedWord<'_>| std::str::from_utf8(w.label).is_ok_and(is_utf8_label);
    let valid = |w: &EncodedWord<'_>| {
        w.bytes
            .as_deref()
            .is_some_and(|b| std::str::from_utf8(b).is_ok())
    };
    // (start, end, replacement), in order and not overlapping.
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        // A run of adjacent UTF-8 words (only white space between them).
        let mut j = i;
        while utf8(w)
            && j + 1 < words.len()
            && utf8(&words[j + 1])
            && block[words[j].end..words[j + 1].start]
                .iter()
                .all(u8::is_ascii_whitespace)
        {
            j += 1;
        }
        if j > i && words[i..=j].iter().any(|w| !valid(w)) {
            let joined = words[i..=j]
                .iter()
                .map(|w| w.bytes.clone())
                .collect::<Option<Vec<_>>>()
                .map(|parts| parts.concat())
                .filter(|b| std::str::from_utf8(b).is_ok());
            if let Some(joined) = joined {
                let encoded = base64::engine::general_purpose::STANDARD.encode(&joined);
                edits.push((
                    w.start,
                    words[j].end,
                    format!("=?utf-8?B?{encoded}?=").into_bytes(),
                ));
                i = j + 1;
                continue;
            }
        }
        let legacy = std::str::from_utf8(w.label).is_ok_and(|l| legacy_8bit(Some(l)));
        let ascii = std::str::from_utf8(w.label).is_ok_and(is_ascii_label);
        if legacy && w.bytes.is_some() && !valid(w) {
            edits.push((
                w.start + 2,
                w.start + 2 + w.label.len(),
                b"windows-1252".to_vec(),
            ));
        } else if ascii && valid(w) && w.bytes.as_deref().is_some_and(|b| !b.is_ascii()) {
            // 8-bit bytes under an ASCII label: UTF-8 (see
            // `ascii_labelled_utf8_body`).
            edits.push((w.start + 2, w.start + 2 + w.label.len(), b"utf-8".to_vec()));
        }
        i += 1;
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(block.len() + 16);
    let mut copied = 0;
    for (start, end, replacement) in edits {
        out.extend_from_slice(&block[copied..start]);
        out.extend_from_slice(&replacement);
        copied = end;
    }
    out.extend_from_slice(&block[copied..]);
    Some(out)
}

/// Keeps the first id (the thread root) and the most recent ones.
fn cap_ids(ids: &mut Vec<String>) {
    if ids.len() > MAX_REFERENCES {
        let tail_start = ids.len() - (MAX_REFERENCES - 1);
        ids.drain(1..tail_start);
    }
}

/// All addresses of all header fields `name`, with groups flattened and
/// entries without an address dropped.
fn addresses(message: &Message<'_>, name: HeaderName<'static>) -> Vec<Address> {
    let mut out = Vec::new();
    for value in message.header_values(name) {
        let Some(list) = value.as_address() else {
            continue;
        };
        for addr in list.iter() {
            let Some(email) = addr.address().and_then(normalize_email) else {
                continue;
            };
            let name = addr
                .name()
                .map(|n| truncate_str(unquote_name(n), MAX_DISPLAY_BYTES).to_string())
                .filter(|n| !n.is_empty());
            out.push(Address { name, email });
        }
    }
    out
}

/// A display name without the quotes a sender put around it (an encoded
/// word inside a quoted string, `"=?utf-8?q?M=C3=BCller,_Hans?="`, decodes
/// with its quotes kept): `Müller, Hans`.
fn unquote_name(n: &str) -> &str {
    let t = n.trim();
    let inner = t
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .or_else(|| t.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')));
    match inner {
        Some(i) if !i.contains('"') => i.trim(),
        _ => t,
    }
}

fn to_chrono(dt: &mail_parser::DateTime) -> Option<DateTime<Utc>> {
    if !dt.is_valid() {
        return None;
    }
    let local =
        NaiveDate::from_ymd_opt(i32::from(dt.year), u32::from(dt.month), u32::from(dt.day))?
            .and_hms_opt(
                u32::from(dt.hour),
                u32::from(dt.minute),
                u32::from(dt.second),
            )?;
    let offset = i64::from(dt.tz_hour) * 3600 + i64::from(dt.tz_minute) * 60;
    // tz_before_gmt means a negative offset (e.g. -0500): UTC = local + 5h.
    let offset = if dt.tz_before_gmt { offset } else { -offset };
    let utc = local.and_utc().timestamp().checked_add(offset)?;
    DateTime::from_timestamp(utc, 0)
}

/// Joins the text (or HTML) body parts listed by mail-parser. mail-parser also
/// lists converted alternatives (an HTML part as text body when there is no
/// text/plain part and vice versa); those are skipped.
fn join_bodies(raw: &[u8], message: &Message<'_>, ids: &[u32], html: bool) -> Option<String> {
    let mut out: Option<String> = None;
    for &id in ids {
        let Some(part) = message.parts.get(id as usize) else {
            continue;
        };
        let text = match (&part.body, html) {
            (PartType::Text(t), false) | (PartType::Html(t), true) => t.as_ref(),
            _ => continue,
        };
        let redecoded = utf7_body(raw, part)
            .or_else(|| ascii_labelled_utf8_body(raw, part))
            .or_else(|| legacy_8bit_body(raw, part, text));
        let text = redecoded.as_deref().unwrap_or(text);
        match &mut out {
            Some(acc) => {
                if !acc.ends_with('\n') {
                    acc.push('\n');
                }
                acc.push_str(text);
            }
            None => out = Some(text.to_string()),
        }
    }
    out
}

/// mail-parser 0.11 drops the character that ends a UTF-7 base64 run when it
/// is not `-` (RFC 2152 keeps it: "A+ImIDkQ." is "A≢Α."), so a 7bit/8bit
/// UTF-7 part is decoded again from its raw bytes.
fn utf7_body(raw: &[u8], part: &MessagePart<'_>) -> Option<String> {
    let is_utf7 = part
        .content_type()
        .and_then(|ct| ct.attribute("charset"))
        .is_some_and(|c| c.eq_ignore_ascii_case("utf-7") || c.eq_ignore_ascii_case("utf7"));
    if !is_utf7 || part.encoding != mail_parser::Encoding::None {
        return None;
    }
    let body = raw.get(part.offset_body as usize..part.offset_end as usize)?;
    decode_utf7(body)
}

/// RFC 2152 UTF-7: `+` starts a modified-base64 run of UTF-16 code units,
/// ended by any character outside the base64 alphabet (absorbed only if `-`);
/// `+-` is a literal `+`. `None` when the input is not 7-bit.
pub fn decode_utf7(input: &[u8]) -> Option<String> {
    fn b64(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    }
    if !input.is_ascii() {
        return None;
    }
    let mut units: Vec<u16> = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        if c != b'+' {
            units.push(u16::from(c));
            i += 1;
            continue;
        }
        i += 1;
        if input.get(i) == Some(&b'-') {
            units.push(u16::from(b'+'));
            i += 1;
            continue;
        }
        let (mut bits, mut nbits) = (0u32, 0u32);
        while let Some(v) = input.get(i).and_then(|&c| b64(c)) {
            bits = (bits << 6) | v;
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push(((bits >> nbits) & 0xFFFF) as u16);
            }
            i += 1;
        }
        if input.get(i) == Some(&b'-') {
            i += 1;
        }
    }
    Some(String::from_utf16_lossy(&units))
}

fn attachment_meta(raw: &[u8], part: &MessagePart<'_>, part_index: usize) -> AttachmentMeta {
    let content_type = part
        .content_type()
        .map(|ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_string(),
        })
        .map(|ct| ct.trim().to_ascii_lowercase())
        .filter(|ct| ct.contains('/'))
        .unwrap_or_else(|| {
            // No (usable) Content-Type: text/plain per RFC 2045, except where
            // mail-parser decided the part is a message or binary.
            match part.body {
                PartType::Message(_) => "message/rfc822",
                PartType::Binary(_) | PartType::InlineBinary(_) => "application/octet-stream",
                _ => "text/plain",
            }
            .to_string()
        });
    // Only a label that can be written back as a MIME token.
    let charset = part
        .content_type()
        .filter(|_| content_type.starts_with("text/"))
        .and_then(|ct| ct.attribute("charset"))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 40
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'+-.^_`{|}~".contains(&b))
        });
    let filename = part
        .attachment_name()
        .map(|n| {
            if n.contains('\u{FFFD}') {
                // mail-parser applies an RFC 2231 charset only to the first
                // continuation segment; decode the raw parameter ourselves.
                if let Some(fixed) = rfc2231_filename(raw, part) {
                    return fixed;
                }
                // Raw 8-bit, or an encoded word in a charset mail-parser
                // does not know: read as the top-level headers are.
                if let Some(fixed) = legacy_8bit_name(raw, part) {
                    return fixed;
                }
            }
            n.to_string()
        })
        .map(|n| truncate_str(n.trim(), MAX_DISPLAY_BYTES).to_string())
        .filter(|n| !n.is_empty())
        .or_else(|| {
            // A forwarded message without a file name: use its subject.
            part.message()
                .and_then(|m| m.subject())
                .map(|s| truncate_str(s.trim(), MAX_DISPLAY_BYTES).to_string())
                .filter(|s| !s.is_empty())
                .map(|s| format!("{s}.eml"))
        });
    let content_id = part
        .content_id()
        .map(|id| id.trim().trim_matches(|c| c == '<' || c == '>').to_string())
        .filter(|id| !id.is_empty());
    let disposition_inline = part.content_disposition().is_some_and(|d| d.is_inline());
    let inline = matches!(part.body, PartType::InlineBinary(_))
        || disposition_inline && content_id.is_some();
    let size = match &part.body {
        PartType::Binary(b) | PartType::InlineBinary(b) => b.len(),
        _ => decoded_part_bytes(raw, part).len(),
    };
    AttachmentMeta {
        filename,
        content_type,
        charset,
        size,
        content_id,
        inline,
        part_index,
    }
}

/// Decodes an RFC 2231 `filename` (Content-Disposition) or `name`
/// (Content-Type) parameter, possibly split into continuations, from the raw
/// header of `part`.
fn rfc2231_filename(raw: &[u8], part: &MessagePart<'_>) -> Option<String> {
    let find = |header: HeaderName<'static>, param: &str| {
        part.headers
            .iter()
            .filter(|h| h.name == header)
            .find_map(|h| {
                rfc2231_param(&raw_header_value(raw, h.offset_start, h.offset_end), param)
            })
    };
    find(HeaderName::ContentDisposition, "filename")
        .or_else(|| find(HeaderName::ContentType, "name"))
}

/// The value of the RFC 2231 extended parameter `param` in a raw
/// `type; a=b; param*0*=charset'lang'%xx; param*1*=%yy` header value.
fn rfc2231_param(header_value: &str, param: &str) -> Option<String> {
    let mut segments: Vec<(u32, bool, &str)> = Vec::new();
    for piece in split_params(header_value) {
        let Some((name, value)) = piece.split_once('=') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let Some(rest) = name.strip_prefix(param).and_then(|r| r.strip_prefix('*')) else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let (index, encoded) = match rest {
            "" => (0, true),
            r => match r.strip_suffix('*') {
                Some(n) => (n.parse().ok()?, true),
                None => (r.parse().ok()?, false),
            },
        };
        segments.push((index, encoded, value));
    }
    segments.sort_by_key(|s| s.0);
    let mut charset = None;
    let mut bytes = Vec::new();
    for (i, (_, encoded, value)) in segments.iter().enumerate() {
        let mut value = *value;
        if i == 0 && *encoded {
            let mut it = value.splitn(3, '\'');
            if let (Some(cs), Some(_lang), Some(v)) = (it.next(), it.next(), it.next()) {
                charset = Some(cs);
                value = v;
            }
        }
        if *encoded {
            bytes.extend(percent_decode(value));
        } else {
            bytes.extend_from_slice(value.as_bytes());
        }
    }
    if segments.is_empty() {
        return None;
    }
    let decoder = charset.and_then(|cs| charset_decoder(cs.as_bytes()));
    Some(match (decoder, String::from_utf8(bytes)) {
        (Some(decode), Ok(text)) => decode(text.as_bytes()),
        (Some(decode), Err(e)) => decode(e.as_bytes()),
        (None, Ok(text)) => text,
        // Not UTF-8 and no charset mail-parser knows: legacy 8-bit text.
        (None, Err(e)) => match charset_decoder(b"windows-1252") {
            Some(decode) if legacy_8bit(charset) => decode(e.as_bytes()),
            _ => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        },
    })
}

/// Splits a header value at `;` outside double quotes.
fn split_params(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ';' if !in_quotes => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The transfer-decoded bytes of a leaf part, without charset conversion.
fn decoded_part_bytes<'a>(raw: &'a [u8], part: &'a MessagePart<'a>) -> Cow<'a, [u8]> {
    match &part.body {
        // Already transfer-decoded by mail-parser and never charset-converted.
        PartType::Binary(b) | PartType::InlineBinary(b) => Cow::Borrowed(b.as_ref()),
        PartType::Multipart(_) => Cow::Borrowed(&[]),
        PartType::Message(m) if part.encoding != Encoding::None => {
            // The embedded message was base64/QP-encoded: mail-parser keeps
            // the decoded bytes.
            Cow::Borrowed(m.raw_message.as_ref())
        }
        _ => {
            let encoded = raw
                .get(part.offset_body as usize..part.offset_end as usize)
                .unwrap_or_default();
            let decoded = match part.encoding {
                Encoding::None => return Cow::Borrowed(encoded),
                Encoding::Base64 => base64_decode(encoded),
                Encoding::QuotedPrintable => quoted_printable_decode(encoded),
            };
            match decoded {
                Some(bytes) => Cow::Owned(bytes),
                // Cannot happen for parts mail-parser decoded successfully;
                // fall back to its (charset-converted) contents.
                None => Cow::Borrowed(part.contents()),
            }
        }
    }
}

/// Raw header value: lossily decoded, unfolded, trimmed.
fn raw_header_value(raw: &[u8], start: u32, end: u32) -> String {
    let bytes = raw.get(start as usize..end as usize).unwrap_or_default();
    let value = String::from_utf8_lossy(bytes);
    let unfolded: String = value.chars().filter(|&c| c != '\r' && c != '\n').collect();
    unfolded.trim().to_string()
}

/// See [`ParsedMail::content_hash`].
fn content_hash(raw: &[u8], message: &Message<'_>) -> String {
    const HASHED_HEADERS: [HeaderName<'static>; 5] = [
        HeaderName::From,
        HeaderName::To,
        HeaderName::Date,
        HeaderName::Subject,
        HeaderName::MessageId,
    ];
    let mut hasher = Sha256::new();
    let root_headers = message.parts.first().map(|p| p.headers.as_slice());
    for name in HASHED_HEADERS {
        hasher.update(name.as_str().to_ascii_lowercase().as_bytes());
        let header = root_headers
            .unwrap_or_default()
            .iter()
            .find(|h| h.name == name);
        match header {
            Some(h) => {
                let value = raw_header_value(raw, h.offset_start, h.offset_end);
                let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
                hasher.update(b":");
                hasher.update(value.as_bytes());
            }
            None => hasher.update(b"!"),
        }
        hasher.update(b"\n");
    }
    hasher.update(b"\n");
    let body_start = message
        .parts
        .first()
        .map_or(raw.len(), |p| p.offset_body as usize);
    let body = raw.get(body_start..).unwrap_or_default();
    // Normalise line endings (CRLF from IMAP, LF from maildir) and trailing
    // blank lines, which some delivery agents add.
    let mut end = body.len();
    while end > 0 && matches!(body[end - 1], b'\r' | b'\n' | b' ' | b'\t') {
        end -= 1;
    }
    let body = &body[..end];
    // The body without the CR of each CRLF.
    let mut start = 0;
    for i in memchr::memchr_iter(b'\r', body) {
        if body.get(i + 1) == Some(&b'\n') {
            hasher.update(&body[start..i]);
            start = i + 1;
        }
    }
    hasher.update(&body[start..]);
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn display_names_lose_their_quotes() {
        assert_eq!(unquote_name("\"Müller, Hans\""), "Müller, Hans");
        assert_eq!(unquote_name(" 'Ada' "), "Ada");
        assert_eq!(unquote_name("Ada \"The\" Lovelace"), "Ada \"The\" Lovelace");
        assert_eq!(unquote_name("\"a\" and \"b\""), "\"a\" and \"b\"");
    }

    #[test]
    fn unnamed_parts_are_named_with_their_type_extension() {
        let meta = |ct: &str, name: Option<&str>| AttachmentMeta {
            filename: name.map(str::to_string),
            content_type: ct.into(),
            charset: None,
            size: 0,
            content_id: None,
            inline: false,
            part_index: 2,
        };
        assert_eq!(
            meta("text/calendar", None).display_name(),
            "attachment-2.ics"
        );
        assert_eq!(
            meta("application/x-unknown", None).display_name(),
            "attachment-2"
        );
        assert_eq!(
            meta("text/calendar", Some("invite.ics")).display_name(),
            "invite.ics"
        );
    }

    use super::*;

    fn parse(raw: &[u8]) -> ParsedMail {
        match parse_message(raw, &ParseLimits::default()) {
            Ok(mail) => mail,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    fn addr(name: Option<&str>, email: &str) -> Address {
        Address {
            name: name.map(str::to_string),
            email: email.to_string(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid test date")
            .with_timezone(&Utc)
    }

    const PLAIN: &[u8] = include_bytes!("../../tests/fixtures/mail/plain.eml");
    const HTML_ATTACHMENT: &[u8] = include_bytes!("../../tests/fixtures/mail/html_attachment.eml");
    const ISO_8859_1: &[u8] = include_bytes!("../../tests/fixtures/mail/iso_8859_1.eml");
    const WINDOWS_1252: &[u8] = include_bytes!("../../tests/fixtures/mail/windows_1252.eml");
    const ISO_2022_JP: &[u8] = include_bytes!("../../tests/fixtures/mail/iso_2022_jp.eml");
    const GB18030: &[u8] = include_bytes!("../../tests/fixtures/mail/gb18030.eml");
    const RFC2231: &[u8] = include_bytes!("../../tests/fixtures/mail/rfc2231_filename.eml");
    const DSN_BOUNCE: &[u8] = include_bytes!("../../tests/fixtures/mail/dsn_bounce.eml");
    const MAILING_LIST: &[u8] = include_bytes!("../../tests/fixtures/mail/mailing_list.eml");
    const NO_MESSAGE_ID: &[u8] = include_bytes!("../../tests/fixtures/mail/no_message_id.eml");
    const MALFORMED: &[u8] = include_bytes!("../../tests/fixtures/mail/malformed.eml");
    const FORWARDED: &[u8] = include_bytes!("../../tests/fixtures/mail/forwarded_rfc822.eml");

    #[test]
    fn plain_message_fields() {
        let mail = parse(PLAIN);
        assert_eq!(
            mail.message_id.as_deref(),
            Some("CAF=abc123.456@mail.example.com")
        );
        assert_eq!(mail.in_reply_to, vec!["reply-1@shop.example"]);
        assert_eq!(
            mail.references,
            vec!["orig-0@shop.example", "reply-1@shop.example"]
        );
        assert_eq!(
            mail.subject.as_deref(),
            Some("Re: Order #12345 – wrong size")
        );
        assert_eq!(
            mail.from,
            Some(addr(Some("Jane Döe"), "Jane.Doe@example.com"))
        );
        assert_eq!(
            mail.reply_to,
            vec![addr(Some("Jane (billing)"), "billing@example.com")]
        );
        assert_eq!(
            mail.to,
            vec![addr(Some("Shop Support"), "support@shop.example")]
        );
        assert_eq!(
            mail.cc,
            vec![
                addr(Some("Bob"), "bob@example.org"),
                addr(None, "carol@example.org")
            ]
        );
        assert_eq!(mail.date, Some(utc("2025-03-04T09:15:30Z")));
        let text = mail.text_body.as_deref().unwrap_or_default();
        assert!(text.starts_with("Hello,\r\n\r\nthe shoes I received are size 42"));
        assert!(text.contains("Grüße,\r\nJane"));
        assert!(text.contains("> Thank you for your order."));
        assert_eq!(mail.html_body, None);
        assert!(mail.attachments.is_empty());
        assert_eq!(mail.content_hash.len(), 64);
        assert!(mail.content_hash.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn raw_headers_are_kept_in_order_and_unfolded() {
        let mail = parse(PLAIN);
        let names: Vec<&str> = mail.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            &names[..5],
            &[
                "Return-Path",
                "Delivered-To",
                "Received",
                "X-Spam-Score",
                "From"
            ]
        );
        assert_eq!(mail.header("x-spam-score"), Some("0.1"));
        assert_eq!(
            mail.header("SUBJECT"),
            Some("=?UTF-8?Q?Re:_Order_=2312345_=E2=80=93_wrong_size?=")
        );
        assert_eq!(
            mail.header("References"),
            Some("<orig-0@shop.example> <reply-1@shop.example>")
        );
        assert_eq!(
            mail.header("Received"),
            Some(
                "from mx.example.com (mx.example.com [192.0.2.10])\tby mail.shop.example (Postfix) with ESMTPS id 4AbC1234\tfor <support@shop.example>; Tue, 04 Mar 2025 10:15:32 +0100 (CET)"
            )
        );
        assert_eq!(mail.header_all("from").count(), 1);
        assert_eq!(mail.header("List-Id"), None);
    }

    #[test]
    fn html_with_inline_image_and_attachment() {
        let mail = parse(HTML_ATTACHMENT);
        assert_eq!(
            mail.text_body.as_deref(),
            Some("Please see the attached invoice. Logo below.\r\n")
        );
        let html = mail.html_body.as_deref().unwrap_or_default();
        assert!(html.contains(r#"<img src="cid:logo123@kunde.example" alt="logo">"#));
        assert_eq!(mail.date, Some(utc("2025-03-05T13:00:00Z")));
        assert_eq!(mail.attachments.len(), 2);

        let logo = &mail.attachments[0];
        assert_eq!(logo.filename.as_deref(), Some("logo.png"));
        assert_eq!(logo.content_type, "image/png");
        assert_eq!(logo.content_id.as_deref(), Some("logo123@kunde.example"));
        assert!(logo.inline);
        assert_eq!(logo.size, 66);
        let png = attachment_bytes(HTML_ATTACHMENT, logo.part_index).unwrap_or_default();
        assert_eq!(png.len(), 66);
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(png.ends_with(b"IEND\xaeB`\x82"));

        let pdf = &mail.attachments[1];
        assert_eq!(pdf.filename.as_deref(), Some("invoice-2025-03.pdf"));
        assert_eq!(pdf.content_type, "application/pdf");
        assert_eq!(pdf.content_id, None);
        assert!(!pdf.inline);
        let bytes = attachment_bytes(HTML_ATTACHMENT, pdf.part_index).unwrap_or_default();
        assert_eq!(bytes.len(), pdf.size);
        assert!(bytes.starts_with(b"%PDF-1.4\n"));
        assert!(bytes.ends_with(b"%%EOF\n"));
    }

    #[test]
    fn attachment_bytes_rejects_non_leaf_and_unknown_parts() {
        // Part 0 is the multipart/mixed root, part 1 the multipart/related.
        assert_eq!(attachment_bytes(HTML_ATTACHMENT, 0), None);
        assert_eq!(attachment_bytes(HTML_ATTACHMENT, 1), None);
        assert_eq!(attachment_bytes(HTML_ATTACHMENT, 999), None);
        assert_eq!(attachment_bytes(b"", 0), None);
        // A single-part message's only part is its body.
        assert!(attachment_bytes(PLAIN, 0).is_some());
    }

    #[test]
    fn iso_8859_1_headers_and_body() {
        let mail = parse(ISO_8859_1);
        assert_eq!(
            mail.subject.as_deref(),
            Some("Stornierung für Bestellung äöü")
        );
        assert_eq!(
            mail.from,
            Some(addr(Some("Jürgen Müller"), "juergen@beispiel.example"))
        );
        let text = mail.text_body.as_deref().unwrap_or_default();
        assert!(text.contains("ich möchte meine Bestellung stornieren. Größe passt nicht."));
        assert!(text.contains("Jürgen Müller"));
    }

    #[test]
    fn windows_1252_headers_and_body() {
        let mail = parse(WINDOWS_1252);
        assert_eq!(mail.subject.as_deref(), Some("Price € question – “urgent”"));
        assert_eq!(
            mail.from,
            Some(addr(Some("Chris O'Neil"), "chris@example.net"))
        );
        let text = mail.text_body.as_deref().unwrap_or_default();
        assert!(text.contains("Hello – the price was €49 but I was charged “€59”. That’s wrong…"));
    }

    #[test]
    fn iso_2022_jp_headers_and_body() {
        let mail = parse(ISO_2022_JP);
        assert_eq!(mail.subject.as_deref(), Some("注文について"));
        assert_eq!(mail.from, Some(addr(Some("田中太郎"), "tanaka@example.jp")));
        let text = mail.text_body.as_deref().unwrap_or_default();
        assert!(text.contains("お世話になっております。"));
        assert!(text.contains("注文番号１２３４５の件で連絡しました。"));
        assert_eq!(mail.date, Some(utc("2025-03-10T09:30:00Z")));
    }

    #[test]
    fn gb18030_headers_and_body() {
        let mail = parse(GB18030);
        assert_eq!(mail.subject.as_deref(), Some("订单查询"));
        assert_eq!(mail.from, Some(addr(Some("王小明"), "wang@example.cn")));
        assert_eq!(
            mail.text_body.as_deref(),
            Some("您好，我的订单还没有发货。请尽快处理。谢谢！\r\n")
        );
    }

    #[test]
    fn rfc2231_filenames() {
        let mail = parse(RFC2231);
        assert_eq!(mail.text_body.as_deref(), Some("Two files attached.\r\n"));
        assert_eq!(mail.attachments.len(), 2);
        let pdf = &mail.attachments[0];
        assert_eq!(pdf.filename.as_deref(), Some("€ rates 2025.pdf"));
        assert_eq!(pdf.content_type, "application/octet-stream");
        let csv = &mail.attachments[1];
        assert_eq!(csv.filename.as_deref(), Some("Lista de precios año.csv"));
        assert_eq!(csv.content_type, "text/csv");
        assert_eq!(csv.charset.as_deref(), Some("utf-8"));
        assert_eq!(csv.full_content_type(), "text/csv; charset=utf-8");
        assert_eq!(pdf.charset, None, "a charset is kept for text only");
        // Text attachments come back in their original charset and size.
        let bytes = attachment_bytes(RFC2231, csv.part_index).unwrap_or_default();
        assert_eq!(bytes, "name;price\nÄpfel;1,99 €\n".as_bytes());
        assert_eq!(csv.size, bytes.len());
    }

    #[test]
    fn utf8_labelled_us_ascii_is_read_as_utf8() {
        let plain = parse(
            "From: lie@ex76.example\r\nSubject: declared ascii\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 8bit\r\n\r\nnaïve café ✓\r\n"
                .as_bytes(),
        );
        assert_eq!(plain.text_body.as_deref(), Some("naïve café ✓\r\n"));
        let html = parse(
            b"From: nc@ex181.example\r\nSubject: =?us-ascii?Q?na=C3=AFve_subject?=\r\n\
MIME-Version: 1.0\r\nContent-Type: text/html; charset=US-ASCII\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>na=C3=AFve caf=C3=A9 html</p>",
        );
        assert_eq!(html.subject.as_deref(), Some("naïve subject"));
        assert_eq!(html.html_body.as_deref(), Some("<p>naïve café html</p>"));
        // 8-bit bytes under the label that are not UTF-8 stay Windows-1252.
        let latin = parse(
            b"From: a@x.example\r\nSubject: =?us-ascii?Q?caf=E9?=\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\r\ncaf\xe9\r\n",
        );
        assert_eq!(latin.subject.as_deref(), Some("café"));
        assert_eq!(latin.text_body.as_deref(), Some("café\r\n"));
    }

    #[test]
    fn a_text_attachment_keeps_its_charset() {
        let raw = b"From: a@x.example\r\nSubject: s\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=M\r\n\r\n--M\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
see attached\r\n--M\r\nContent-Type: text/plain; charset=\"KOI8-R\"; name=\"report.txt\"\r\n\
Content-Disposition: attachment; filename=\"report.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
79Teo9QgzyDQ0s/EwdbByAo=\r\n--M\r\nContent-Type: text/plain; charset=\"a b\"\r\n\
Content-Disposition: attachment; filename=\"odd.txt\"\r\n\r\nodd\r\n--M--\r\n";
        let mail = parse(raw);
        let report = &mail.attachments[0];
        assert_eq!(report.full_content_type(), "text/plain; charset=koi8-r");
        // A label that is no MIME token is not written back.
        assert_eq!(mail.attachments[1].full_content_type(), "text/plain");
        // Stored before this field existed: no charset.
        let old: AttachmentMeta = serde_json::from_str(
            r#"{"filename":"a.txt","content_type":"text/plain","size":1,"content_id":null,"inline":false,"part_index":1}"#,
        )
        .unwrap();
        assert_eq!(old.charset, None);
    }

    #[test]
    fn forwarded_message_is_an_attachment() {
        let mail = parse(FORWARDED);
        assert_eq!(mail.subject.as_deref(), Some("Fwd: Shipping confirmation"));
        assert_eq!(
            mail.text_body.as_deref(),
            Some("See the forwarded mail below.\r\n")
        );
        assert_eq!(mail.attachments.len(), 1);
        let att = &mail.attachments[0];
        assert_eq!(att.content_type, "message/rfc822");
        assert_eq!(att.filename.as_deref(), Some("Shipping confirmation.eml"));
        assert!(!att.inline);
        let inner = attachment_bytes(FORWARDED, att.part_index).unwrap_or_default();
        assert_eq!(inner.len(), att.size);
        assert!(inner.starts_with(b"From: Shop <noreply@shop.example>\r\n"));
        assert!(inner.ends_with(b"--innerb--\r\n"));
        // The embedded message parses on its own.
        let nested = parse(&inner);
        assert_eq!(nested.message_id.as_deref(), Some("ship-99@shop.example"));
        assert_eq!(
            nested.text_body.as_deref(),
            Some("Your parcel is on its way.\r\n")
        );
        assert_eq!(nested.attachments.len(), 1);
        assert_eq!(nested.attachments[0].filename.as_deref(), Some("label.pdf"));
    }

    #[test]
    fn utf7_keeps_the_character_that_ends_a_run() {
        assert_eq!(
            super::decode_utf7(b"Hi Mom -+Jjo--! A+ImIDkQ. +ZeVnLIqe +AKM-1").as_deref(),
            Some("Hi Mom -\u{263A}-! A\u{2262}\u{391}. \u{65E5}\u{672C}\u{8A9E} \u{A3}1")
        );
        assert_eq!(
            super::decode_utf7(b"1 +- 1 = 2").as_deref(),
            Some("1 + 1 = 2")
        );
        assert_eq!(super::decode_utf7("é".as_bytes()), None);
    }

    #[test]
    fn html_only_message_has_no_text_body() {
        let mail = parse(MAILING_LIST);
        assert_eq!(mail.text_body, None);
        assert_eq!(
            mail.html_body.as_deref(),
            Some(
                "<html><body><h1>March update</h1><p>New products are here.</p></body></html>\r\n"
            )
        );
        assert!(mail.attachments.is_empty());
    }

    #[test]
    fn missing_message_id_and_bare_lf() {
        assert!(!NO_MESSAGE_ID.contains(&b'\r'));
        let mail = parse(NO_MESSAGE_ID);
        assert_eq!(mail.message_id, None);
        assert_eq!(mail.from, Some(addr(None, "legacy-system@erp.example")));
        assert_eq!(mail.subject.as_deref(), Some("Nightly export finished"));
        assert_eq!(mail.date, Some(utc("2025-03-16T01:00:00Z")));
        assert_eq!(
            mail.text_body.as_deref(),
            Some("Export finished with 0 errors.\n")
        );
    }

    #[test]
    fn dsn_parts_are_attachments() {
        let mail = parse(DSN_BOUNCE);
        let types: Vec<&str> = mail
            .attachments
            .iter()
            .map(|a| a.content_type.as_str())
            .collect();
        assert_eq!(
            types,
            vec!["message/delivery-status", "text/rfc822-headers"]
        );
        assert_eq!(
            mail.message_id.as_deref(),
            Some("20250313090005.7D2B1C0001@mail.shop.example")
        );
        assert_eq!(
            mail.from,
            Some(addr(
                Some("Mail Delivery System"),
                "MAILER-DAEMON@mail.shop.example"
            ))
        );
    }

    #[test]
    fn malformed_message_is_best_effort() {
        let mail = parse(MALFORMED);
        // Unparseable From: no address rather than garbage.
        assert_eq!(mail.from, None);
        // Empty group: no recipients.
        assert!(mail.to.is_empty());
        // Group flattened; `<>` and a name without address dropped.
        assert_eq!(
            mail.cc,
            vec![
                addr(None, "alice@example.com"),
                addr(Some("Bob"), "BOB@example.com")
            ]
        );
        assert_eq!(mail.date, None);
        assert_eq!(
            mail.message_id.as_deref(),
            Some("no-brackets-id@example.com")
        );
        let subject = mail.subject.as_deref().unwrap_or_default();
        assert!(subject.contains("broken-base64"));
        assert_eq!(
            mail.text_body.as_deref(),
            Some("Visible text before the truncation.\r\n")
        );
        // The broken base64 part is kept as an attachment with its raw text.
        assert_eq!(mail.attachments.len(), 1);
        let att = &mail.attachments[0];
        assert_eq!(att.content_type, "application/octet-stream");
        let bytes = attachment_bytes(MALFORMED, att.part_index).unwrap_or_default();
        assert_eq!(bytes, b"%%%% not base64 at all %%%%\r\n");
        assert_eq!(att.size, bytes.len());
    }

    #[test]
    fn empty_and_headerless_input_is_unparseable() {
        let limits = ParseLimits::default();
        assert_eq!(parse_message(b"", &limits), Err(ParseError::Unparseable));
        assert_eq!(
            parse_message(b"\r\n\r\n  \n", &limits),
            Err(ParseError::Unparseable)
        );
        assert_eq!(
            parse_message(b"\r\nno headers, just a body\r\n", &limits),
            Err(ParseError::Unparseable)
        );
        assert_eq!(
            parse_message(&[0xff, 0xfe, 0x00, 0x01], &limits),
            Err(ParseError::Unparseable)
        );
    }

    #[test]
    fn too_large_is_refused_before_parsing() {
        let limits = ParseLimits {
            max_message_bytes: 100,
        };
        assert_eq!(
            parse_message(PLAIN, &limits),
            Err(ParseError::TooLarge {
                size: PLAIN.len(),
                limit: 100
            })
        );
        assert_eq!(ParseLimits::default().max_message_bytes, 50 * 1024 * 1024);
        let err = ParseError::TooLarge {
            size: 200,
            limit: 100,
        };
        assert_eq!(
            err.to_string(),
            "message of 200 bytes exceeds the limit of 100 bytes"
        );
    }

    #[test]
    fn headers_only_message() {
        let mail = parse(b"From: a@b.example\r\nSubject: hi\r\n");
        assert_eq!(mail.subject.as_deref(), Some("hi"));
        assert_eq!(mail.from, Some(addr(None, "a@b.example")));
        assert_eq!(mail.text_body.unwrap_or_default(), "");
    }

    #[test]
    fn huge_headers_are_capped_without_panicking() {
        let mut raw = Vec::new();
        raw.extend_from_slice(b"From: a@b.example\r\nSubject: ");
        raw.extend(std::iter::repeat_n(b'x', 200_000));
        raw.extend_from_slice(b"\r\n");
        for i in 0..3000 {
            raw.extend_from_slice(format!("X-Trace-{i}: hop {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"References:");
        for i in 0..500 {
            raw.extend_from_slice(format!(" <ref-{i}@x.example>").as_bytes());
        }
        raw.extend_from_slice(b"\r\nMessage-ID: <");
        raw.extend(std::iter::repeat_n(b'y', 5000));
        raw.extend_from_slice(b"@x>\r\n\r\nbody\r\n");
        let mail = parse(&raw);
        assert_eq!(
            mail.subject.as_ref().map(String::len),
            Some(MAX_DISPLAY_BYTES)
        );
        assert_eq!(mail.headers.len(), MAX_HEADER_FIELDS);
        assert_eq!(mail.headers[1].1.len(), MAX_HEADER_VALUE_BYTES);
        assert_eq!(mail.references.len(), MAX_REFERENCES);
        assert_eq!(mail.references[0], "ref-0@x.example");
        assert_eq!(mail.references[1], "ref-401@x.example");
        assert_eq!(mail.references[99], "ref-499@x.example");
        assert_eq!(mail.message_id, None);
        assert_eq!(mail.text_body.as_deref(), Some("body\r\n"));
    }

    #[test]
    fn unknown_charsets_and_unlabelled_8bit_text_read_as_windows_1252() {
        // Labels mail-parser does not know, and 8-bit text with no label.
        let raw = b"From: =?x-unknown?Q?J=FCrgen_M=FCller?= <j@example.net>\r\n\
Subject: =?latin?B?UHLoaXMg4CBs4A==?= and =?x-unknown?Q?ok_=C3=A9?=\r\n\
Content-Type: text/plain; charset=\"x-user-latin\"\r\n\
Content-Transfer-Encoding: 8bit\r\n\r\n\
Gr\xfc\xdfe, \x80 49\r\n";
        let mail = parse(raw);
        assert_eq!(
            mail.subject.as_deref(),
            Some("Pr\u{e8}is \u{e0} l\u{e0} and ok \u{e9}")
        );
        assert_eq!(
            mail.from,
            Some(addr(Some("J\u{fc}rgen M\u{fc}ller"), "j@example.net"))
        );
        assert_eq!(
            mail.text_body.as_deref(),
            Some("Gr\u{fc}\u{df}e, \u{20ac} 49\r\n")
        );

        // A file name in an unknown charset, and one in raw 8-bit.
        let named = b"From: a@example.net\r\nSubject: x\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n\
--b\r\nContent-Type: application/pdf\r\n\
Content-Disposition: attachment; filename=\"=?x-unknown?Q?R=E9sum=E9?=.pdf\"\r\n\r\nx\r\n\
--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"Gr\xfc\xdfe.pdf\"\r\n\r\ny\r\n\
--b\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename*=x-unknown''J%FCrgen.txt\r\n\r\nz\r\n\
--b--\r\n";
        let names: Vec<Option<String>> = parse(named)
            .attachments
            .into_iter()
            .map(|a| a.filename)
            .collect();
        assert_eq!(
            names,
            vec![
                Some("R\u{e9}sum\u{e9}.pdf".into()),
                Some("Gr\u{fc}\u{df}e.pdf".into()),
                Some("J\u{fc}rgen.txt".into())
            ]
        );

        let unlabelled = b"From: a@example.net\r\nSubject: x\r\n\
Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
caf=E9\r\n";
        assert_eq!(
            parse(unlabelled).text_body.as_deref(),
            Some("caf\u{e9}\r\n")
        );
        // HTML without a MIME label, naming its charset in a <meta> tag.
        let html = b"From: a@example.net\r\nContent-Type: text/html\r\n\r\n\
<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=koi8-r\"></head>\
<body>\xf0\xd2\xc9\xd7\xc5\xd4</body></html>\r\n";
        let body = parse(html).html_body.unwrap_or_default();
        assert!(
            body.contains("<body>\u{41f}\u{440}\u{438}\u{432}\u{435}\u{442}</body>"),
            "{body}"
        );

        // Valid UTF-8 under an unknown label, and stray bytes under a UTF-8
        // label, are read as mail-parser reads them.
        let utf8 = "From: a@example.net\r\nSubject: =?x-unknown?B?w6k=?=\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\nd\u{e9}j\u{e0}\r\n";
        let mail = parse(utf8.as_bytes());
        assert_eq!(mail.subject.as_deref(), Some("\u{e9}"));
        assert_eq!(mail.text_body.as_deref(), Some("d\u{e9}j\u{e0}\r\n"));
        // A character split across two encoded words ("€" is E2 82 AC).
        let split = b"From: a@example.net\r\nSubject: =?utf-8?B?UHJpY2Ug4oI=?=\r\n =?UTF-8?B?rCA0OQ==?=\r\n\r\nx\r\n";
        assert_eq!(parse(split).subject.as_deref(), Some("Price \u{20ac} 49"));
        let mislabelled =
            b"From: a@example.net\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xe9\r\n";
        assert_eq!(
            parse(mislabelled).text_body.as_deref(),
            Some("\u{fffd}\r\n")
        );
    }

    #[test]
    fn hostile_inputs_never_panic() {
        let limits = ParseLimits::default();
        let mut cases: Vec<Vec<u8>> = vec![
            b"From:\r\n\r\n".to_vec(),
            b":\r\n\r\n".to_vec(),
            b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\n--\r\n".to_vec(),
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\n--x--".to_vec(),
            b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!".to_vec(),
            b"Date: Mon, 31 Feb 2025 25:61:61 +9999\r\nTo: ,,,;;;<<>>@@\r\n\r\nx".to_vec(),
            b"Subject: =?utf-8?q?=FF=FE=?=\r\nFrom: =?x-unknown?B?AAAA?= <@>\r\n\r\n".to_vec(),
            b"From: a@b\n\rX: \x00\x01\xff\r\n\r\n\x00\xff".to_vec(),
        ];
        // Deeply nested multiparts and messages.
        let mut nested = Vec::new();
        for i in 0..200 {
            nested.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        nested.extend_from_slice(b"Content-Type: text/plain\r\n\r\ndeep\r\n");
        cases.push(nested);
        let mut messages = Vec::new();
        for _ in 0..50 {
            messages
                .extend_from_slice(b"From: a@b.example\r\nContent-Type: message/rfc822\r\n\r\n");
        }
        cases.push(messages);
        // Every prefix of every fixture (truncated downloads).
        for fixture in [
            PLAIN,
            HTML_ATTACHMENT,
            DSN_BOUNCE,
            MALFORMED,
            FORWARDED,
            RFC2231,
        ] {
            for len in (0..fixture.len()).step_by(7) {
                cases.push(fixture[..len].to_vec());
            }
        }
        // Only an empty input and one without a single valid header field
        // name are refused, as `Unparseable`; everything else parses.
        let mut parsed = 0;
        for raw in &cases {
            let shown = String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned();
            let refused = raw.iter().all(u8::is_ascii_whitespace) || raw.as_slice() == b":\r\n\r\n";
            match parse_message(raw, &limits) {
                Ok(mail) => {
                    assert!(!refused, "parsed what should be refused: {shown:?}");
                    for att in &mail.attachments {
                        assert!(
                            attachment_bytes(raw, att.part_index).is_some(),
                            "attachment {} listed but not found: {shown:?}",
                            att.part_index
                        );
                    }
                    assert!(serde_json::to_string(&mail).is_ok(), "{shown:?}");
                    parsed += 1;
                }
                Err(e) => assert!(
                    refused && e == ParseError::Unparseable,
                    "{e:?} for {shown:?}"
                ),
            }
        }
        assert!(
            parsed > cases.len() / 2,
            "{parsed} of {} parsed",
            cases.len()
        );
    }

    #[test]
    fn mail_parser_debug_assertions_are_contained() {
        // This fuzzed message trips a `debug_assert!` inside mail-parser
        // ("Invalid part ID"). In debug builds it must be refused, not panic
        // through; in release builds mail-parser recovers.
        let raw = include_bytes!("../../tests/fixtures/mail/parser_debug_assert.eml");
        match parse_message(raw, &ParseLimits::default()) {
            Ok(mail) => assert_eq!(mail.message_id.as_deref(), Some("fwd-1@example.org")),
            Err(e) => assert_eq!(e, ParseError::Unparseable),
        }
        let _ = attachment_bytes(raw, 2);
    }

    #[test]
    fn content_hash_ignores_trace_headers_and_line_endings() {
        let a = b"Return-Path: <x@a.example>\r\nDelivered-To: one@shop.example\r\nReceived: from a by b; Mon, 3 Mar 2025 10:00:00 +0000\r\nFrom: x@a.example\r\nTo: one@shop.example, two@shop.example\r\nSubject: Hi\r\nDate: Mon, 3 Mar 2025 10:00:00 +0000\r\nMessage-ID: <m1@a.example>\r\nX-Spam-Status: No\r\n\r\nHello\r\nthere\r\n";
        let b = b"Delivered-To: two@shop.example\nReceived: from a by c; Mon, 3 Mar 2025 10:00:01 +0000\nFrom: x@a.example\nTo: one@shop.example,\n two@shop.example\nX-Original-To: two@shop.example\nSubject: Hi\nDate: Mon, 3 Mar 2025 10:00:00 +0000\nMessage-ID: <m1@a.example>\n\nHello\nthere\n\n";
        let ha = parse(a).content_hash;
        let hb = parse(b).content_hash;
        assert_eq!(ha, hb);

        // A different body or a different hashed header changes the hash.
        let c = String::from_utf8_lossy(a).replace("there", "where");
        assert_ne!(parse(c.as_bytes()).content_hash, ha);
        let d = String::from_utf8_lossy(a).replace("Subject: Hi", "Subject: Ho");
        assert_ne!(parse(d.as_bytes()).content_hash, ha);
        let e = String::from_utf8_lossy(a).replace("Message-ID: <m1@a.example>\r\n", "");
        assert_ne!(parse(e.as_bytes()).content_hash, ha);

        // Deterministic and equal to the fixture's own re-parse.
        assert_eq!(parse(PLAIN).content_hash, parse(PLAIN).content_hash);
        assert_ne!(parse(PLAIN).content_hash, parse(ISO_8859_1).content_hash);
    }

    /// Stored hashes find duplicates across upgrades: the hash of a mail
    /// must not change from one release to the next. (Values of the byte by
    /// byte implementation that came before the `memchr` one.)
    #[test]
    fn content_hash_is_stable_across_releases() {
        let crlf = b"From: x@a.example\r\nTo: one@shop.example\r\nSubject: Hi\r\nDate: Mon, 3 Mar 2025 10:00:00 +0000\r\nMessage-ID: <m1@a.example>\r\n\r\nHello\r\n\rthere\r\r\n\r\n end\r \r\n\r\n";
        let lf = String::from_utf8_lossy(crlf).replace("\r\n", "\n");
        let lone_cr = b"From: x@a.example\r\n\r\n\r\r\rbody\r";
        let got = [
            parse(crlf).content_hash,
            parse(lf.as_bytes()).content_hash,
            parse(lone_cr).content_hash,
            parse(PLAIN).content_hash,
        ];
        assert_eq!(
            got,
            [
                "b6a5128cb1847906b3b2e3ee637d48d0650bd70b1fe1cb43e08febf224275522",
                "b506dc53bfe021e2b4efc72bb8d484f581c74948c97fe945868c5d0b4ba4ecb9",
                "7724d83770b4036fd1cd5cc5a9f7496257f4f90f1dbc9a1e368b86ba287b410d",
                "2aef567bc1f99192940dd93be547f044e03f0acb074c3f3bf5a395a4f4bf232d",
            ]
        );
    }

    #[test]
    fn serializes_to_json() {
        let mail = parse(HTML_ATTACHMENT);
        let json = serde_json::to_value(&mail).unwrap_or_default();
        assert_eq!(json["message_id"], "html-att-1@kunde.example");
        assert_eq!(json["from"]["email"], "max@kunde.example");
        assert_eq!(json["date"], "2025-03-05T13:00:00Z");
        assert_eq!(
            json["attachments"][0]["content_id"],
            "logo123@kunde.example"
        );
        let back: ParsedMail = serde_json::from_value(json).unwrap_or_default();
        assert_eq!(back, mail);
    }

    #[test]
    fn email_normalisation() {
        assert_eq!(
            normalize_email(" <Jane.Doe@Example.COM> ").as_deref(),
            Some("Jane.Doe@example.com")
        );
        assert_eq!(
            normalize_email("\"a@b\"@EXAMPLE.org").as_deref(),
            Some("\"a@b\"@example.org")
        );
        assert_eq!(normalize_email("Root").as_deref(), Some("Root"));
        assert_eq!(normalize_email(" <> "), None);
    }

    #[test]
    fn subject_normalisation() {
        let cases = [
            ("Re: Order 42", "Order 42"),
            ("RE: RE: Re:Order 42", "Order 42"),
            ("Fwd: FW: fw: Order 42", "Order 42"),
            ("AW: WG: Sv: SV: Order 42", "Order 42"),
            ("Re[2]: Re(3): Re^4: Order 42", "Order 42"),
            ("RE : Commande 42", "Commande 42"),
            ("Antw: TR: RIF: Bestelling", "Bestelling"),
            ("回复：订单", "订单"),
            ("Re: [Ticket #42] Re: Order", "[Ticket #42] Re: Order"),
            ("[list] Re: topic", "[list] Re: topic"),
            ("  Order   42  ", "Order 42"),
            ("Regarding: prices", "Regarding: prices"),
            ("Ready for pickup", "Ready for pickup"),
            ("Re", "Re"),
            ("Re:", ""),
            ("Re[: x", "Re[: x"),
            ("", ""),
            ("Äh: Re: x", "Äh: Re: x"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_subject(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn raw_8bit_latin1_headers() {
        let raw = b"From: J\xfcrgen M\xfcller <j@x.example>\r\nTo: =?UTF-8?Q?=C3=84rger?= <a@x.example>\r\nSubject: Gr\xfc\xdfe \x80 \r\nX-Note: caf\xc3\xa9\r\n\r\nbody \xfc\r\n";
        let mail = parse(raw);
        assert_eq!(mail.subject.as_deref(), Some("Grüße €"));
        assert_eq!(mail.from, Some(addr(Some("Jürgen Müller"), "j@x.example")));
        assert_eq!(mail.to, vec![addr(Some("Ärger"), "a@x.example")]);
        // Valid UTF-8 lines are left alone.
        assert_eq!(mail.header("X-Note"), Some("café"));
        assert_eq!(mail.header("Subject"), Some("Grüße €"));
        // The body (no charset given, not UTF-8) is read as Windows-1252 too.
        assert_eq!(mail.text_body.as_deref(), Some("body \u{fc}\r\n"));
    }

    #[test]
    fn rfc2047_attachment_name() {
        let raw = b"From: a@x.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf; name=\"=?UTF-8?B?UmVjaG51bmcgw5xiZXJzaWNodC5wZGY=?=\"\r\nContent-Disposition: attachment\r\n\r\n%PDF\r\n--b--\r\n";
        let mail = parse(raw);
        assert_eq!(mail.attachments.len(), 1);
        assert_eq!(
            mail.attachments[0].filename.as_deref(),
            Some("Rechnung Übersicht.pdf")
        );
        assert_eq!(
            attachment_bytes(raw, mail.attachments[0].part_index),
            Some(b"%PDF".to_vec())
        );
    }

    #[test]
    fn rfc2231_parameter_decoding() {
        assert_eq!(
            rfc2231_param(
                "attachment; filename*0*=iso-8859-1'es'Lista%20de%20pre; filename*1*=cios%20a%F1o.csv",
                "filename"
            )
            .as_deref(),
            Some("Lista de precios año.csv")
        );
        assert_eq!(
            rfc2231_param("attachment; filename*=UTF-8''%E2%82%AC.pdf", "filename").as_deref(),
            Some("€.pdf")
        );
        assert_eq!(
            rfc2231_param(
                "attachment; x=\"a;filename*0=b\"; filename*1=\"two.txt\"; filename*0=\"part \"",
                "filename"
            )
            .as_deref(),
            Some("part two.txt")
        );
        assert_eq!(
            rfc2231_param("attachment; filename=plain.txt", "filename"),
            None
        );
        assert_eq!(rfc2231_param("attachment; filename*x=1", "filename"), None);
        assert_eq!(percent_decode("%41%4"), b"A%4");
        assert_eq!(percent_decode("%zz%"), b"%zz%");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_str("äöü", 3), "ä");
        assert_eq!(truncate_str("äöü", 4), "äö");
        assert_eq!(truncate_str("abc", 10), "abc");
    }

    #[test]
    fn date_conversion_handles_offsets() {
        let mail = parse(b"From: a@b.example\r\nDate: Thu, 1 Jan 1970 05:30:00 +0530\r\n\r\nx");
        assert_eq!(mail.date, Some(utc("1970-01-01T00:00:00Z")));
        let mail = parse(b"From: a@b.example\r\nDate: Sat, 31 Feb 2025 10:00:00 +0000\r\n\r\nx");
        assert_eq!(mail.date, None);
    }
}
