//! Prefilling drafts: recipients, subject, threading headers and the body of a
//! reply, reply-all, forward or new message (ARCHITECTURE.md, Draft and
//! guarantee 4), plus Message-IDs that Switchboard can later recognise as its
//! own (a reply to one threads back, a bounce of one is matched).
//!
//! Everything here is pure: no I/O. The body is rendered from four MiniJinja
//! templates ([`TEMPLATE_NAMES`]); the defaults live in `templates/reply/` and
//! an administrator may replace any of them ([`ReplyTemplates::with_overrides`]),
//! which is refused with the template's name and line when the source is broken.
//!
//! Template environment: `*_html` templates are HTML-autoescaped, text ones are
//! not; undefined variables are errors (so a typo is caught when an override is
//! checked); a missing value (`none`) prints as nothing; `trim_blocks` and
//! `lstrip_blocks` are on, so a `{% ... %}` line leaves no blank line behind.
//! The `quote` filter prefixes every line with `> ` (an empty line gets `>`).
//!
//! Variables: `kind` (`"reply"`, `"reply_all"`, `"forward"`, `"new"`),
//! `customer {name}`, `agent {name, email}`, `service {name}`,
//! `task {id, subject}`, `original {from, reply_to, to, cc, date, date_iso,
//! subject, message_id, text, html}`. Addresses (`customer`, `agent`,
//! `original.from` and the items of the lists) print as `Name <email>` and have
//! `.name`, `.email` and `.display`; `original.from` is falsy when unknown.
//! `original.date` is RFC 2822 (`Tue, 4 Mar 2025 09:30:00 +0000`), `date_iso`
//! RFC 3339. `original.text` is the text body, or a plain rendering of the HTML
//! body when there is none. `original.html` is the already sanitized HTML body,
//! marked safe; it is `none` when the original has no HTML body.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use minijinja::value::{Object, ObjectRepr};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::parse::{Address, ParsedMail};

/// What the agent is writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DraftKind {
    Reply,
    ReplyAll,
    Forward,
    New,
}

impl DraftKind {
    /// The snake_case name (as serialized, and as `kind` in templates).
    pub fn as_str(self) -> &'static str {
        match self {
            DraftKind::Reply => "reply",
            DraftKind::ReplyAll => "reply_all",
            DraftKind::Forward => "forward",
            DraftKind::New => "new",
        }
    }
}

/// The message being answered or forwarded. Message ids are without angle
/// brackets (as in [`ParsedMail`]); `html_body` must already be sanitized.
#[derive(Debug, Clone, Copy, Default)]
pub struct Original<'a> {
    pub from: Option<&'a Address>,
    /// The other From mailboxes of a mail with several authors.
    pub co_authors: &'a [Address],
    pub reply_to: &'a [Address],
    pub to: &'a [Address],
    pub cc: &'a [Address],
    pub subject: Option<&'a str>,
    pub date: Option<DateTime<Utc>>,
    pub message_id: Option<&'a str>,
    pub references: &'a [String],
    pub text_body: Option<&'a str>,
    /// Already sanitized HTML (see `crate::mail::preview::sanitize_html`).
    pub html_body: Option<&'a str>,
}

impl<'a> Original<'a> {
    /// The fields of a parsed message; `sanitized_html` replaces its raw HTML
    /// body, which must never be quoted as it is.
    pub fn from_parsed(mail: &'a ParsedMail, sanitized_html: Option<&'a str>) -> Self {
        Original {
            from: mail.from.as_ref(),
            co_authors: &mail.co_authors,
            reply_to: &mail.reply_to,
            to: &mail.to,
            cc: &mail.cc,
            subject: mail.subject.as_deref(),
            date: mail.date,
            message_id: mail.message_id.as_deref(),
            references: &mail.references,
            text_body: mail.text_body.as_deref(),
            html_body: sanitized_html,
        }
    }
}

/// Who writes, for whom, in which service and task.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    pub customer_name: Option<&'a str>,
    pub agent_name: &'a str,
    pub agent_email: &'a str,
    pub service_name: &'a str,
    pub task_id: &'a str,
    /// The task's subject: the subject of a new message, and the fallback
    /// when the original has none.
    pub subject: &'a str,
}

/// The initial content of a draft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prefill {
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub subject: String,
    /// Message-ID of the original, without angle brackets.
    pub in_reply_to: Option<String>,
    /// Thread ids without angle brackets, oldest first.
    pub references: Vec<String>,
    pub body_text: String,
    pub body_html: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
}

// ---------------------------------------------------------------------------
// Recipients

/// Recipients `(to, cc)` of a draft.
///
/// * `Reply`: every Reply-To address if there is one, else From (each of
///   its authors, when it names several: RFC 5322 3.6.3).
/// * `ReplyAll`: that, plus the original To (into To) and Cc (into Cc).
/// * `Forward`, `New`: nobody.
///
/// The service's `own_addresses` are removed (case-insensitively) from both
/// kinds of reply, so a reply never goes to our own mailbox; a Reply-To that
/// named only our own addresses falls back to From; when that leaves nobody
/// because the original was our own message, the reply goes to that
/// message's To, as mail clients do. A mail without a usable sender gets a
/// reply to nobody (the agent fills it in), never one to its other
/// recipients; a reply-all, which asks for them, goes to them (the agent
/// sees them in the draft). Duplicates (case-insensitive on the
/// address) are removed, keeping the first occurrence and its display name
/// (or a later display name when the first had none). If To ends up empty,
/// the first Cc moves to To. Entries with an empty address are skipped.
pub fn recipients(
    kind: DraftKind,
    original: &Original,
    own_addresses: &[String],
) -> (Vec<Address>, Vec<Address>) {
    if matches!(kind, DraftKind::Forward | DraftKind::New) {
        return (Vec::new(), Vec::new());
    }
    let own: HashSet<String> = own_addresses.iter().map(|a| address_key(a)).collect();
    let mut list = RecipientList {
        own,
        seen: HashMap::new(),
        to: Vec::new(),
        cc: Vec::new(),
    };
    let primary: Vec<&Address> = if original.reply_to.is_empty() {
        original
            .from
            .into_iter()
            .chain(original.co_authors)
            .collect()
    } else {
        original.reply_to.iter().collect()
    };
    for a in primary {
        list.push(a, false);
    }
    // A Reply-To that named only our own address: the sender, then.
    if list.to.is_empty() && !original.reply_to.is_empty() {
        for a in original.from.into_iter().chain(original.co_authors) {
            list.push(a, false);
        }
    }
    // Our own message (its sender is one of our addresses): its To, as mail
    // clients do. Never for a mail without a (usable) sender: a reply goes
    // only to whoever wrote, never to the others it was sent to.
    let ours = original
        .from
        .is_some_and(|f| list.own.contains(&address_key(&f.email)));
    if (list.to.is_empty() && ours) || kind == DraftKind::ReplyAll {
        for a in original.to {
            list.push(a, false);
        }
    }
    if kind == DraftKind::ReplyAll {
        for a in original.cc {
            list.push(a, true);
        }
    }
    let RecipientList { mut to, mut cc, .. } = list;
    if to.is_empty() && !cc.is_empty() {
        to.push(cc.remove(0));
    }
    (to, cc)
}

struct RecipientList {
    own: HashSet<String>,
    /// Address key → (in cc, index).
    seen: HashMap<String, (bool, usize)>,
    to: Vec<Address>,
    cc: Vec<Address>,
}

impl RecipientList {
    fn push(&mut self, address: &Address, cc: bool) {
        let key = address_key(&address.email);
        // Nobody to write to: not an address a draft may hold.
        if key.is_empty() || self.own.contains(&key) || !is_mail_address(address.email.trim()) {
            return;
        }
        if let Some(&(in_cc, index)) = self.seen.get(&key) {
            let kept = if in_cc {
                &mut self.cc[index]
            } else {
                &mut self.to[index]
            };
            if kept.name.is_none() {
                kept.name.clone_from(&address.name);
            }
            return;
        }
        let list = if cc { &mut self.cc } else { &mut self.to };
        self.seen.insert(key, (cc, list.len()));
        list.push(Address {
            name: address.name.clone(),
            email: address.email.trim().to_string(),
        });
    }
}

/// The recipients a message goes to, each address once: a later duplicate
/// (compared case-insensitively, as mail systems deliver them) is dropped,
/// To before Cc before Bcc, keeping the first and its display name. An
/// agent who typed one address twice mails it once.
pub fn unique_recipients(
    to: &[Address],
    cc: &[Address],
    bcc: &[Address],
) -> (Vec<Address>, Vec<Address>, Vec<Address>) {
    let mut seen = HashSet::new();
    let mut keep = |list: &[Address]| -> Vec<Address> {
        list.iter()
            .filter(|a| seen.insert(address_key(&a.email)))
            .cloned()
            .collect()
    };
    let to = keep(to);
    let cc = keep(cc);
    let bcc = keep(bcc);
    (to, cc, bcc)
}

/// Whether `email` is an address a draft may hold and a reply be sent to:
/// `local@domain` with a dotted domain (or `localhost`), at most 320 bytes,
/// that the sender reads as an address. The local part is a dot-atom
/// without white space, control characters or `<>,;"`, or a quoted string
/// (`"john doe"@example.com`, RFC 5321 4.1.2).
pub fn is_mail_address(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let plain = |s: &str| {
        !s.is_empty()
            && !s.contains(|c: char| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '<' | '>' | ',' | ';' | '"' | '@')
            })
    };
    let quoted = local.len() >= 2
        && local.starts_with('"')
        && local.ends_with('"')
        && !local.contains(|c: char| c.is_control());
    email.len() <= 320
        && (plain(local) || quoted)
        && plain(domain)
        && (domain.contains('.') || domain == "localhost")
        && email.parse::<lettre::Address>().is_ok()
}

/// Comparison key of an address: trimmed, without angle brackets, lowercased.
fn address_key(email: &str) -> String {
    email
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_lowercase()
}

// ---------------------------------------------------------------------------
// Subjects

/// Reply prefixes of common mail clients and languages (compared
/// case-insensitively).
const REPLY_PREFIXES: &[&str] = &[
    "re", "aw", "sv", "vs", "antw", "odp", "ynt", "res", "rif", "回复", "答复", "回覆",
];

/// Forward prefixes of common mail clients and languages.
const FORWARD_PREFIXES: &[&str] = &[
    "fwd", "fw", "wg", "tr", "enc", "vl", "rv", "doorst", "转发", "轉寄",
];

/// The longest subject a draft has, in characters (RFC 5322's line limit).
pub const MAX_SUBJECT_CHARS: usize = 998;
/// The longest display name of a draft's recipient, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The most recipients a draft has in each of To, Cc and Bcc.
pub const MAX_RECIPIENTS: usize = 100;

/// `Re: <subject>`, never `Re: Re: ...`: leading reply prefixes (`Re:`, `RE:`,
/// `Aw:`, `Sv:`, `Antw:`, with counters such as `Re[2]:`, in any case, repeated)
/// are removed first. Forward prefixes are kept (`Re: Fwd: x`). A missing or
/// blank subject gives `Re: ` and nothing after it, as Thunderbird and
/// Outlook write it (a placeholder such as "(no subject)" is the agent's
/// page's, not the customer's). Line breaks become spaces.
pub fn reply_subject(original: Option<&str>) -> String {
    format!("Re: {}", strip_prefixes(original, REPLY_PREFIXES))
}

/// `Fwd: <subject>`, never `Fwd: Fwd: ...`: leading forward prefixes (`Fwd:`,
/// `FW:`, `WG:`, `TR:`, ...) are removed first; reply prefixes are kept
/// (`Fwd: Re: x`). A missing or blank subject gives `Fwd: `.
pub fn forward_subject(original: Option<&str>) -> String {
    format!("Fwd: {}", strip_prefixes(original, FORWARD_PREFIXES))
}

fn strip_prefixes(subject: Option<&str>, prefixes: &[&str]) -> String {
    let clean = one_line(subject.unwrap_or(""));
    let mut rest = clean.as_str();
    while let Some(after) = strip_prefix(rest, prefixes) {
        rest = after.trim_start();
    }
    rest.to_string()
}

/// Whitespace runs (line breaks included) become one space; trimmed.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// If `s` starts with one of `prefixes` (then an optional counter `[2]`, `(2)`
/// or `^2`, optional blanks, and `:` or a full-width `：`), the rest.
fn strip_prefix<'s>(s: &'s str, prefixes: &[&str]) -> Option<&'s str> {
    for prefix in prefixes {
        let Some(head) = s.get(..prefix.len()) else {
            continue;
        };
        if !head.eq_ignore_ascii_case(prefix) {
            continue;
        }
        let mut rest = &s[prefix.len()..];
        if let Some(inner) = rest.strip_prefix(['[', '(']) {
            let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && inner[digits..].starts_with([']', ')']) {
                rest = &inner[digits + 1..];
            }
        } else if let Some(inner) = rest.strip_prefix('^') {
            let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 {
                rest = &inner[digits..];
            }
        }
        let rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix([':', '：']) {
            return Some(after);
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Threading

/// At most this many ids go into `References` (RFC 5322 §3.6.4 allows
/// trimming: the first one, the thread root, and the most recent ones).
pub const MAX_REFERENCES: usize = 20;

/// `(In-Reply-To, References)` of a reply: the original's Message-ID, and the
/// original's References followed by its Message-ID, without duplicates
/// (first occurrence kept), trimmed to [`MAX_REFERENCES`] by keeping the
/// first and the last 19. Ids are returned without angle brackets; an id
/// that could not be written safely into a header (whitespace, control
/// characters, angle brackets, over 998 bytes) is dropped.
pub fn thread_headers(original: &Original) -> (Option<String>, Vec<String>) {
    let in_reply_to = original.message_id.and_then(clean_id);
    let mut seen = HashSet::new();
    let mut references: Vec<String> = original
        .references
        .iter()
        .filter_map(|r| clean_id(r))
        .chain(in_reply_to.clone())
        .filter(|id| seen.insert(id.clone()))
        .collect();
    if references.len() > MAX_REFERENCES {
        references.drain(1..references.len() - (MAX_REFERENCES - 1));
    }
    (in_reply_to, references)
}

fn clean_id(id: &str) -> Option<String> {
    let id = id.trim();
    let id = id.strip_prefix('<').unwrap_or(id);
    let id = id.strip_suffix('>').unwrap_or(id).trim();
    let ok = !id.is_empty()
        && id.len() <= 998
        && !id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    ok.then(|| id.to_string())
}

// ---------------------------------------------------------------------------
// Templates

/// Names of the reply templates, in the order of [`ReplyTemplates`]' sources.
pub const TEMPLATE_NAMES: [&str; 4] = [
    "quote_text",
    "quote_html",
    "signature_text",
    "signature_html",
];

const DEFAULT_SOURCES: [&str; 4] = [
    include_str!("../../templates/reply/quote_text.j2"),
    include_str!("../../templates/reply/quote_html.j2"),
    include_str!("../../templates/reply/signature_text.j2"),
    include_str!("../../templates/reply/signature_html.j2"),
];

const QUOTE_TEXT: usize = 0;
const QUOTE_HTML: usize = 1;
const SIGNATURE_TEXT: usize = 2;
const SIGNATURE_HTML: usize = 3;

/// An override larger than this is refused.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// The four reply templates (defaults, or an administrator's overrides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTemplates {
    sources: [Cow<'static, str>; 4],
}

impl Default for ReplyTemplates {
    fn default() -> Self {
        Self::defaults()
    }
}

impl ReplyTemplates {
    /// The built-in templates from `templates/reply/*.j2`.
    pub fn defaults() -> ReplyTemplates {
        ReplyTemplates {
            sources: DEFAULT_SOURCES.map(Cow::Borrowed),
        }
    }

    /// The defaults with some templates replaced, by name (one of
    /// [`TEMPLATE_NAMES`]). Each template is compiled and rendered with sample
    /// data for every kind of draft, with and without optional values; the
    /// first failure is returned naming the template and the line. An empty
    /// source is allowed (e.g. no signature).
    pub fn with_overrides(
        overrides: &HashMap<String, String>,
    ) -> Result<ReplyTemplates, ComposeError> {
        let mut templates = Self::defaults();
        let mut names: Vec<&String> = overrides.keys().collect();
        names.sort();
        for name in names {
            let Some(index) = TEMPLATE_NAMES.iter().position(|n| n == name) else {
                return Err(ComposeError::Template {
                    name: name.clone(),
                    message: format!(
                        "unknown template, expected one of {}",
                        TEMPLATE_NAMES.join(", ")
                    ),
                });
            };
            let source = &overrides[name];
            if source.len() > MAX_TEMPLATE_BYTES {
                return Err(ComposeError::Template {
                    name: name.clone(),
                    message: format!(
                        "{} bytes is over the limit of {MAX_TEMPLATE_BYTES} bytes",
                        source.len()
                    ),
                });
            }
            templates.sources[index] = Cow::Owned(source.clone());
        }
        templates.check()?;
        Ok(templates)
    }

    /// The source of template `name`, if it is one of [`TEMPLATE_NAMES`].
    pub fn source(&self, name: &str) -> Option<&str> {
        let index = TEMPLATE_NAMES.iter().position(|n| *n == name)?;
        Some(&self.sources[index])
    }

    /// Compiles every template and renders each with sample data.
    fn check(&self) -> Result<(), ComposeError> {
        let env = self.environment()?;
        let sample = Sample::new();
        for full in [true, false] {
            let (original, ctx) = sample.get(full);
            for kind in [
                DraftKind::Reply,
                DraftKind::ReplyAll,
                DraftKind::Forward,
                DraftKind::New,
            ] {
                let vars = template_vars(kind, &original, &ctx);
                for index in 0..TEMPLATE_NAMES.len() {
                    render(&env, index, &vars).map_err(|e| match e {
                        ComposeError::Template { name, message } => ComposeError::Template {
                            name,
                            message: format!(
                                "{message} (with sample data for a {} {})",
                                if full { "full" } else { "sparse" },
                                kind.as_str()
                            ),
                        },
                    })?;
                }
            }
        }
        Ok(())
    }

    fn environment(&self) -> Result<Environment<'_>, ComposeError> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with("_html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_formatter(|out, state, value| {
            if value.is_none() {
                Ok(())
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_filter("quote", quote_lines);
        for (name, source) in TEMPLATE_NAMES.iter().zip(&self.sources) {
            env.add_template(name, source)
                .map_err(|e| template_error(name, &e))?;
        }
        Ok(env)
    }

    /// The prefilled draft: [`recipients`], subject ([`reply_subject`],
    /// [`forward_subject`], or the task subject for a new message),
    /// [`thread_headers`] (a forward carries References only, so an answer
    /// from its recipient threads back; a new message neither), and the body:
    /// the signature, then (except for a new message) the quoted original or
    /// the forwarded-message block.
    pub fn prefill(
        &self,
        kind: DraftKind,
        original: &Original,
        ctx: &Context,
        own_addresses: &[String],
    ) -> Result<Prefill, ComposeError> {
        let (mut to, mut cc) = recipients(kind, original, own_addresses);
        // Within what the draft API takes back: a display name of at most
        // 200 characters, a subject of one line of at most 998.
        for a in to.iter_mut().chain(cc.iter_mut()) {
            if let Some(name) = &mut a.name {
                crate::domain::text::replace_controls(name);
                if name.chars().count() > MAX_NAME_CHARS {
                    *name = name.chars().take(MAX_NAME_CHARS).collect();
                }
            }
        }
        let original_subject = original
            .subject
            .filter(|s| !s.trim().is_empty())
            .or(Some(ctx.subject));
        let subject = match kind {
            DraftKind::Reply | DraftKind::ReplyAll => reply_subject(original_subject),
            DraftKind::Forward => forward_subject(original_subject),
            DraftKind::New => one_line(ctx.subject),
        };
        let (in_reply_to, references) = match kind {
            DraftKind::Reply | DraftKind::ReplyAll => thread_headers(original),
            DraftKind::Forward => (None, thread_headers(original).1),
            DraftKind::New => (None, Vec::new()),
        };

        let env = self.environment()?;
        let vars = template_vars(kind, original, ctx);
        let signature_text = render(&env, SIGNATURE_TEXT, &vars)?;
        let signature_html = render(&env, SIGNATURE_HTML, &vars)?;
        let (quote_text, quote_html) = if kind == DraftKind::New {
            (String::new(), String::new())
        } else {
            (
                render(&env, QUOTE_TEXT, &vars)?,
                render(&env, QUOTE_HTML, &vars)?,
            )
        };
        let mut body_text = [signature_text.trim_end(), quote_text.trim_end()]
            .into_iter()
            .filter(|part| !part.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n\n");
        if !body_text.is_empty() {
            body_text.push('\n');
        }
        let body_html = [signature_html.trim(), quote_html.trim()]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        let subject = if subject.chars().count() > MAX_SUBJECT_CHARS {
            subject.chars().take(MAX_SUBJECT_CHARS).collect()
        } else {
            subject
        };
        Ok(Prefill {
            to,
            cc,
            subject,
            in_reply_to,
            references,
            body_text,
            body_html,
        })
    }
}

fn render(env: &Environment<'_>, index: usize, vars: &Value) -> Result<String, ComposeError> {
    let name = TEMPLATE_NAMES[index];
    env.get_template(name)
        .and_then(|t| t.render(vars))
        .map_err(|e| template_error(name, &e))
}

/// `line N: <kind>: <detail>`, naming an included template if the error is there.
fn template_error(name: &str, err: &minijinja::Error) -> ComposeError {
    let mut message = String::new();
    if let Some(other) = err.name().filter(|n| *n != name) {
        message.push_str(&format!("in {other}: "));
    }
    if let Some(line) = err.line() {
        message.push_str(&format!("line {line}: "));
    }
    message.push_str(&err.kind().to_string());
    if let Some(detail) = err.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    ComposeError::Template {
        name: name.to_string(),
        message,
    }
}

/// The `quote` filter: `> ` before every line (`>` alone on an empty line).
fn quote_lines(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.is_empty() {
                ">".to_string()
            } else {
                format!("> {line}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An address (or a person without one) in templates: prints as
/// `Name <email>`, has `.name`, `.email` and `.display`, is falsy when empty.
#[derive(Debug)]
struct Person {
    name: Option<String>,
    email: Option<String>,
}

impl Person {
    fn value(name: Option<&str>, email: Option<&str>) -> Value {
        let keep = |s: Option<&str>| s.map(str::trim).filter(|s| !s.is_empty()).map(String::from);
        Value::from_object(Person {
            name: keep(name),
            email: keep(email),
        })
    }

    fn address(address: Option<&Address>) -> Value {
        Self::value(
            address.and_then(|a| a.name.as_deref()),
            address.map(|a| a.email.as_str()),
        )
    }

    fn list(addresses: &[Address]) -> Value {
        Value::from(
            addresses
                .iter()
                .map(|a| Self::address(Some(a)))
                .collect::<Vec<_>>(),
        )
    }

    fn display(&self) -> String {
        match (&self.name, &self.email) {
            (Some(name), Some(email)) => format!("{name} <{email}>"),
            (Some(name), None) => name.clone(),
            (None, Some(email)) => email.clone(),
            (None, None) => String::new(),
        }
    }
}

impl Object for Person {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "name" => Some(Value::from(self.name.clone())),
            "email" => Some(Value::from(self.email.clone())),
            "display" => Some(Value::from(self.display())),
            _ => None,
        }
    }

    fn is_true(self: &Arc<Self>) -> bool {
        self.name.is_some() || self.email.is_some()
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

fn template_vars(kind: DraftKind, original: &Original, ctx: &Context) -> Value {
    let html = original
        .html_body
        .filter(|h| !h.trim().is_empty())
        .map(|h| Value::from_safe_string(h.to_string()))
        .unwrap_or(Value::from(()));
    let text = match original.text_body.filter(|t| !t.trim().is_empty()) {
        Some(text) => text.replace("\r\n", "\n").trim_end().to_string(),
        None => original.html_body.map(html_to_text).unwrap_or_default(),
    };
    minijinja::context! {
        kind => kind.as_str(),
        customer => Person::value(ctx.customer_name, None),
        agent => Person::value(Some(ctx.agent_name), Some(ctx.agent_email)),
        service => minijinja::context! { name => ctx.service_name },
        task => minijinja::context! { id => ctx.task_id, subject => ctx.subject },
        original => minijinja::context! {
            from => Person::address(original.from),
            reply_to => Person::list(original.reply_to),
            to => Person::list(original.to),
            cc => Person::list(original.cc),
            date => original.date.map(|d| d.to_rfc2822()),
            date_iso => original.date.map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true)),
            subject => original.subject,
            message_id => original.message_id,
            text => text,
            html => html,
        },
    }
}

/// Data for checking templates: one original with every field set (and
/// characters that need escaping), one with none.
struct Sample {
    from: Address,
    to: Vec<Address>,
    cc: Vec<Address>,
    references: Vec<String>,
}

impl Sample {
    fn new() -> Self {
        let addr = |name: &str, email: &str| Address {
            name: Some(name.to_string()),
            email: email.to_string(),
        };
        Sample {
            from: addr("Erika Müller <& Co>", "erika@kunde.example"),
            to: vec![
                addr("Support", "support@service.example"),
                Address {
                    name: None,
                    email: "jan@kunde.example".into(),
                },
            ],
            cc: vec![addr("O'Brien, Pat", "pat@kunde.example")],
            references: vec!["root@kunde.example".into()],
        }
    }

    fn get(&self, full: bool) -> (Original<'_>, Context<'static>) {
        if !full {
            return (
                Original::default(),
                Context {
                    agent_name: "Agent",
                    agent_email: "agent@service.example",
                    ..Context::default()
                },
            );
        }
        let original = Original {
            from: Some(&self.from),
            co_authors: &[],
            reply_to: std::slice::from_ref(&self.from),
            to: &self.to,
            cc: &self.cc,
            subject: Some("Order #42 <urgent> & \"late\""),
            date: DateTime::from_timestamp(1_741_080_600, 0),
            message_id: Some("m1@kunde.example"),
            references: &self.references,
            text_body: Some("Hello,\n\nwhere is my order?\n> quoted line\n\nErika"),
            html_body: Some("<p>Hello,</p><p>where is my <b>order</b>?</p>"),
        };
        let ctx = Context {
            customer_name: Some("Erika Müller"),
            agent_name: "Sam Agent",
            agent_email: "sam@service.example",
            service_name: "Support",
            task_id: "tsk_0123456789abcdef",
            subject: "Order #42",
        };
        (original, ctx)
    }
}

// ---------------------------------------------------------------------------
// HTML to text (for originals that have only an HTML body)

/// Whether a message's bodies say anything a reader would see: text other
/// than whitespace in the plain body, or in the HTML once its tags are gone
/// (an editor's empty `<p><br></p>` says nothing).
pub fn has_text(body_text: &str, body_html: &str) -> bool {
    !body_text.trim().is_empty() || !html_to_text(body_html).trim().is_empty()
}

/// A readable plain-text rendering of (sanitized) HTML: tags removed, block
/// elements and `<br>` become line breaks, list items get `- `, entities are
/// decoded, whitespace outside `<pre>` is collapsed, at most one blank line.
fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    let mut pre = 0usize;
    let mut hidden = 0usize;
    loop {
        let Some(lt) = rest.find('<') else {
            if hidden == 0 {
                push_text(&mut out, rest, pre > 0);
            }
            break;
        };
        if hidden == 0 {
            push_text(&mut out, &rest[..lt], pre > 0);
        }
        rest = &rest[lt..];
        if let Some(comment) = rest.strip_prefix("<!--") {
            rest = comment.find("-->").map_or("", |end| &comment[end + 3..]);
            continue;
        }
        let Some(end) = tag_end(rest) else {
            if hidden == 0 {
                push_text(&mut out, rest, pre > 0);
            }
            break;
        };
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        let closing = tag.starts_with('/');
        let name = tag
            .trim_start_matches('/')
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        match name.as_str() {
            "br" => out.push('\n'),
            "p" | "blockquote" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "table" | "ul"
            | "ol" => blank_line(&mut out),
            "pre" => {
                blank_line(&mut out);
                pre = if closing {
                    pre.saturating_sub(1)
                } else {
                    pre + 1
                };
            }
            "div" | "tr" | "hr" | "section" | "article" | "header" | "footer" | "dl" | "dt"
            | "dd" | "address" | "center" => new_line(&mut out),
            "li" => {
                new_line(&mut out);
                if !closing {
                    out.push_str("- ");
                }
            }
            "td" | "th" if closing => out.push(' '),
            "script" | "style" | "head" | "title" | "template" => {
                hidden = if closing {
                    hidden.saturating_sub(1)
                } else {
                    hidden + 1
                };
            }
            _ => {}
        }
    }
    // Trailing blanks off every line; at most one blank line in a row.
    let mut text = String::with_capacity(out.len());
    let mut blank = 0;
    for line in out.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        text.push_str(line);
        text.push('\n');
    }
    text.trim().to_string()
}

/// Index of the `>` that closes the tag starting at `s[0] == '<'`, skipping
/// quoted attribute values.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn push_text(out: &mut String, raw: &str, pre: bool) {
    let mut collapsed = String::with_capacity(raw.len());
    for c in raw.chars() {
        if !pre && c.is_ascii_whitespace() {
            let last = collapsed.chars().last().or_else(|| out.chars().last());
            if !matches!(last, None | Some(' ') | Some('\n')) {
                collapsed.push(' ');
            }
        } else {
            collapsed.push(c);
        }
    }
    out.push_str(&decode_entities(&collapsed));
}

fn new_line(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

fn blank_line(out: &mut String) {
    new_line(out);
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
}

fn decode_entities(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest
            .get(1..rest.len().min(12))
            .and_then(|window| window.find(';').map(|semi| &window[..semi]))
            .and_then(|entity| Some((entity, decode_entity(entity)?)));
        match decoded {
            Some((entity, c)) => {
                out.push(c);
                rest = &rest[entity.len() + 2..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn decode_entity(entity: &str) -> Option<char> {
    let numeric = |digits: &str, radix| {
        u32::from_str_radix(digits, radix)
            .ok()
            .and_then(char::from_u32)
    };
    match entity {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        _ => {
            let n = entity.strip_prefix('#')?;
            match n.strip_prefix(['x', 'X']) {
                Some(hex) => numeric(hex, 16),
                None => numeric(n, 10),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Message-IDs

type HmacSha256 = Hmac<Sha256>;

/// Domain used by [`new_message_id`] when the one given is not a plain
/// ASCII host name.
const FALLBACK_DOMAIN: &str = "switchboard.invalid";

fn message_id_tag(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    // Domain separation: the key may also sign other things (links).
    mac.update(b"switchboard message-id\0");
    mac
}

/// A fresh Message-ID, without angle brackets:
/// `sb.<20 hex random>.<8 hex HMAC-SHA256 of the random part>@<domain>`.
/// [`is_our_message_id`] recognises it with the same key. `domain` is
/// lowercased; one that is not a plain ASCII host name (letters, digits, `-`,
/// `.`) is replaced by `switchboard.invalid`.
pub fn new_message_id(key: &[u8], domain: &str) -> String {
    use rand::Rng;
    let random: [u8; 10] = rand::rng().random();
    let random = hex::encode(random);
    let mut mac = message_id_tag(key);
    mac.update(random.as_bytes());
    let tag = hex::encode(&mac.finalize().into_bytes()[..4]);
    let domain = domain.trim().trim_matches('.').to_ascii_lowercase();
    let valid = !domain.is_empty()
        && domain.len() <= 253
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let domain = if valid {
        domain.as_str()
    } else {
        FALLBACK_DOMAIN
    };
    format!("sb.{random}.{tag}@{domain}")
}

/// Whether `id` was made by [`new_message_id`] with `key`: the HMAC is checked
/// in constant time. Surrounding whitespace and angle brackets are tolerated,
/// as is any case (the domain is not part of the check).
pub fn is_our_message_id(key: &[u8], id: &str) -> bool {
    let id = id.trim();
    let id = id.strip_prefix('<').unwrap_or(id);
    let id = id.strip_suffix('>').unwrap_or(id).trim();
    let Some((local, domain)) = id.rsplit_once('@') else {
        return false;
    };
    if domain.is_empty() {
        return false;
    }
    let Some(rest) = local
        .get(..3)
        .filter(|p| p.eq_ignore_ascii_case("sb."))
        .map(|_| &local[3..])
    else {
        return false;
    };
    let Some((random, tag)) = rest.split_once('.') else {
        return false;
    };
    let is_hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex(random, 20) || !is_hex(tag, 8) {
        return false;
    }
    let Ok(tag) = hex::decode(tag) else {
        return false;
    };
    let mut mac = message_id_tag(key);
    mac.update(random.to_ascii_lowercase().as_bytes());
    mac.verify_truncated_left(&tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(name: Option<&str>, email: &str) -> Address {
        Address {
            name: name.map(String::from),
            email: email.to_string(),
        }
    }

    fn emails(list: &[Address]) -> Vec<&str> {
        list.iter().map(|a| a.email.as_str()).collect()
    }

    fn own() -> Vec<String> {
        vec![
            "support@service.example".into(),
            "Help@Service.Example".into(),
        ]
    }

    fn ctx() -> Context<'static> {
        Context {
            customer_name: Some("Erika Müller"),
            agent_name: "Sam Agent",
            agent_email: "sam@service.example",
            service_name: "Support",
            task_id: "tsk_1",
            subject: "Order 42",
        }
    }

    #[test]
    fn a_body_of_markup_or_blanks_has_no_text() {
        assert!(!has_text("", ""));
        assert!(!has_text(" \r\n\t", "<p><br></p>\n<div>&nbsp;</div>"));
        assert!(!has_text("", "<!-- nothing --><p>\u{a0}</p>"));
        assert!(has_text("Thanks!", ""));
        assert!(has_text("", "<p>Thanks&amp;bye</p>"));
    }

    #[test]
    fn reply_goes_to_every_reply_to_else_from() {
        let from = addr(Some("Erika"), "erika@kunde.example");
        let reply_to = [
            addr(Some("Orders"), "orders@kunde.example"),
            addr(None, "boss@kunde.example"),
        ];
        let to = [addr(None, "support@service.example")];
        let mut original = Original {
            from: Some(&from),
            reply_to: &reply_to,
            to: &to,
            ..Original::default()
        };
        let (to_list, cc) = recipients(DraftKind::Reply, &original, &own());
        assert_eq!(
            emails(&to_list),
            ["orders@kunde.example", "boss@kunde.example"]
        );
        assert!(cc.is_empty());

        original.reply_to = &[];
        let (to_list, cc) = recipients(DraftKind::Reply, &original, &own());
        assert_eq!(to_list, std::slice::from_ref(&from));
        assert!(cc.is_empty());

        // A Reply-To naming only our own address: the sender.
        let ours = [addr(Some("Support"), "Support@service.example")];
        original.reply_to = &ours;
        let (to_list, _) = recipients(DraftKind::Reply, &original, &own());
        assert_eq!(to_list, std::slice::from_ref(&from));

        for kind in [DraftKind::Forward, DraftKind::New] {
            assert_eq!(recipients(kind, &original, &own()), (vec![], vec![]));
        }
    }

    #[test]
    fn mail_addresses_a_reply_can_go_to() {
        for good in [
            "anna@example.org",
            "a.b+tag@sub.example.co.uk",
            "\"john doe\"@quoted.example",
            "\"a@b\"@quoted.example",
            "info@bücher.example",
            "root@localhost",
        ] {
            assert!(is_mail_address(good), "{good}");
        }
        for bad in [
            "@localhost",
            "@example.org",
            "anna@",
            "anna",
            "anna@example",
            "an na@example.org",
            "anna@exa mple.org",
            "<anna@example.org>",
            "a,b@example.org",
            "\"unterminated@example.org",
            "\"a\nb\"@example.org",
            "a@@example.org",
            "anna@example.org;",
        ] {
            assert!(!is_mail_address(bad), "{bad:?}");
        }
        assert!(!is_mail_address(&format!(
            "{}@example.org",
            "a".repeat(320)
        )));
    }

    #[test]
    fn reply_all_drops_own_addresses_in_any_case_and_duplicates() {
        let from = addr(Some("Erika"), "erika@kunde.example");
        let to = [
            addr(Some("Support"), "SUPPORT@service.example"),
            addr(None, "Erika@Kunde.example"),
            addr(Some("Jan"), "jan@kunde.example"),
        ];
        let cc = [
            addr(None, "help@service.example"),
            addr(Some("Jan again"), "JAN@kunde.example"),
            addr(Some("Müller, Jürgen"), "juergen@kunde.example"),
            addr(Some("Pat"), "pat@kunde.example"),
            addr(None, "pat@KUNDE.example"),
            addr(None, "erika@kunde.example"),
            addr(None, "  "),
        ];
        let original = Original {
            from: Some(&from),
            to: &to,
            cc: &cc,
            ..Original::default()
        };
        let (to_list, cc_list) = recipients(DraftKind::ReplyAll, &original, &own());
        assert_eq!(
            emails(&to_list),
            ["erika@kunde.example", "jan@kunde.example"]
        );
        assert_eq!(to_list[0].name.as_deref(), Some("Erika"));
        assert_eq!(to_list[1].name.as_deref(), Some("Jan"));
        assert_eq!(
            emails(&cc_list),
            ["juergen@kunde.example", "pat@kunde.example"]
        );
        // Decoded display names with commas and non-ASCII are kept as they are.
        assert_eq!(cc_list[0].name.as_deref(), Some("Müller, Jürgen"));
    }

    #[test]
    fn a_mail_of_several_authors_is_answered_to_them_all() {
        let from = addr(Some("A One"), "a1@ex73.example");
        let co = [addr(Some("B Two"), "b2@ex73.example")];
        let original = Original {
            from: Some(&from),
            co_authors: &co,
            ..Original::default()
        };
        let (to, cc) = recipients(DraftKind::Reply, &original, &own());
        assert_eq!(emails(&to), ["a1@ex73.example", "b2@ex73.example"]);
        assert!(cc.is_empty());
        // A Reply-To still decides.
        let reply_to = [addr(None, "team@ex73.example")];
        let with_reply_to = Original {
            reply_to: &reply_to,
            ..original
        };
        let (to, _) = recipients(DraftKind::Reply, &with_reply_to, &own());
        assert_eq!(emails(&to), ["team@ex73.example"]);
        // The parser keeps them all.
        let parsed = crate::mail::parse_message(
            b"From: A One <a1@ex73.example>, B Two <b2@ex73.example>\r\nSubject: s\r\n\r\nbody\r\n",
            &crate::mail::ParseLimits::default(),
        )
        .unwrap();
        let (to, _) = recipients(
            DraftKind::Reply,
            &Original::from_parsed(&parsed, None),
            &own(),
        );
        assert_eq!(emails(&to), ["a1@ex73.example", "b2@ex73.example"]);
    }

    #[test]
    fn each_recipient_is_mailed_once() {
        let to = [
            addr(Some("Html"), "html@ex20.example"),
            addr(None, "HTML@ex20.example"),
            addr(None, "other@ex20.example"),
        ];
        let cc = [
            addr(None, "html@EX20.example"),
            addr(None, "cc@ex20.example"),
        ];
        let bcc = [
            addr(None, " html@ex20.example"),
            addr(None, "OTHER@ex20.example"),
        ];
        let (to, cc, bcc) = unique_recipients(&to, &cc, &bcc);
        assert_eq!(emails(&to), ["html@ex20.example", "other@ex20.example"]);
        assert_eq!(to[0].name.as_deref(), Some("Html"));
        assert_eq!(emails(&cc), ["cc@ex20.example"]);
        assert!(bcc.is_empty(), "{bcc:?}");
    }

    #[test]
    fn reply_all_with_reply_to_and_many_cc() {
        let from = addr(Some("Erika"), "erika@kunde.example");
        let reply_to = [addr(Some("Team"), "team@kunde.example")];
        let to = [addr(None, "support@service.example")];
        let cc: Vec<Address> = (0..30)
            .map(|i| addr(Some(&format!("P{i}")), &format!("p{i}@kunde.example")))
            .collect();
        let original = Original {
            from: Some(&from),
            reply_to: &reply_to,
            to: &to,
            cc: &cc,
            ..Original::default()
        };
        let (to_list, cc_list) = recipients(DraftKind::ReplyAll, &original, &own());
        // Reply-To replaces From; the original sender is not added back.
        assert_eq!(emails(&to_list), ["team@kunde.example"]);
        assert_eq!(cc_list, cc);
    }

    #[test]
    fn reply_all_moves_first_cc_to_to_when_to_is_empty() {
        let from = addr(None, "Support@Service.example");
        let to = [addr(None, "help@service.example")];
        let cc = [
            addr(Some("A"), "a@kunde.example"),
            addr(Some("B"), "b@kunde.example"),
        ];
        let original = Original {
            from: Some(&from),
            to: &to,
            cc: &cc,
            ..Original::default()
        };
        let (to_list, cc_list) = recipients(DraftKind::ReplyAll, &original, &own());
        assert_eq!(emails(&to_list), ["a@kunde.example"]);
        assert_eq!(emails(&cc_list), ["b@kunde.example"]);
    }

    #[test]
    fn replying_to_our_own_message_goes_to_its_recipients() {
        let from = addr(Some("Support"), "support@service.example");
        let to = [addr(Some("Erika"), "erika@kunde.example")];
        let original = Original {
            from: Some(&from),
            to: &to,
            ..Original::default()
        };
        let (to_list, cc) = recipients(DraftKind::Reply, &original, &own());
        assert_eq!(to_list, to);
        assert!(cc.is_empty());
        // No sender at all: nobody rather than a guess.
        let empty = Original::default();
        assert_eq!(
            recipients(DraftKind::Reply, &empty, &own()),
            (vec![], vec![])
        );
        // A sender whose address is not one: nobody either.
        let broken = addr(Some("Bad"), "not an address");
        let unusable = Original {
            from: Some(&broken),
            to: &[addr(None, "third@partner.example")],
            ..Original::default()
        };
        assert_eq!(
            recipients(DraftKind::Reply, &unusable, &own()),
            (vec![], vec![])
        );
        // Nor the others a sender-less mail went to: a reply goes only to
        // whoever wrote (reply all, asked for, goes to them all).
        let others = [
            addr(None, "support@service.example"),
            addr(Some("Third Party"), "third@partner.example"),
        ];
        let cc = [addr(None, "cc@partner.example")];
        let sender_less = Original {
            to: &others,
            cc: &cc,
            ..Original::default()
        };
        assert_eq!(
            recipients(DraftKind::Reply, &sender_less, &own()),
            (vec![], vec![])
        );
        let (to_list, cc_list) = recipients(DraftKind::ReplyAll, &sender_less, &own());
        assert_eq!(emails(&to_list), ["third@partner.example"]);
        assert_eq!(emails(&cc_list), ["cc@partner.example"]);
    }

    #[test]
    fn reply_subjects() {
        let cases = [
            ("Re: Re: x", "Re: x"),
            ("RE: x", "Re: x"),
            ("Aw: x", "Re: x"),
            ("AW: Re: x", "Re: x"),
            ("Re[3]: x", "Re: x"),
            ("Re(2): x", "Re: x"),
            ("re : x", "Re: x"),
            ("Sv: Antw: x", "Re: x"),
            ("回复：x", "Re: x"),
            ("Fwd: x", "Re: Fwd: x"),
            ("x", "Re: x"),
            ("Reminder: x", "Re: Reminder: x"),
            ("Results", "Re: Results"),
            ("[Ticket #7] Re: x", "Re: [Ticket #7] Re: x"),
            ("  line\r\n break  ", "Re: line break"),
            ("", "Re: "),
            ("  ", "Re: "),
            ("Re:", "Re: "),
        ];
        for (input, want) in cases {
            assert_eq!(reply_subject(Some(input)), want, "{input:?}");
        }
        assert_eq!(reply_subject(None), "Re: ");
    }

    #[test]
    fn forward_subjects() {
        let cases = [
            ("Fwd: Fwd: x", "Fwd: x"),
            ("FW: x", "Fwd: x"),
            ("WG: Fwd: x", "Fwd: x"),
            ("Fwd[2]: x", "Fwd: x"),
            ("Re: x", "Fwd: Re: x"),
            ("x", "Fwd: x"),
            ("", "Fwd: "),
        ];
        for (input, want) in cases {
            assert_eq!(forward_subject(Some(input)), want, "{input:?}");
        }
        assert_eq!(forward_subject(None), "Fwd: ");
    }

    #[test]
    fn thread_headers_append_dedup_and_trim() {
        let refs: Vec<String> = ["a@x", "<b@x>", "a@x", "bad id@x", ""]
            .map(String::from)
            .to_vec();
        let original = Original {
            message_id: Some("<m@x>"),
            references: &refs,
            ..Original::default()
        };
        let (irt, references) = thread_headers(&original);
        assert_eq!(irt.as_deref(), Some("m@x"));
        assert_eq!(references, ["a@x", "b@x", "m@x"]);

        // The original's own id already in its References is not repeated.
        let refs = vec!["root@x".to_string(), "m@x".to_string()];
        let original = Original {
            message_id: Some("m@x"),
            references: &refs,
            ..Original::default()
        };
        assert_eq!(thread_headers(&original).1, ["root@x", "m@x"]);

        // Long chains keep the root and the 19 most recent.
        let refs: Vec<String> = (0..50).map(|i| format!("r{i}@x")).collect();
        let original = Original {
            message_id: Some("m@x"),
            references: &refs,
            ..Original::default()
        };
        let (_, references) = thread_headers(&original);
        assert_eq!(references.len(), MAX_REFERENCES);
        assert_eq!(references[0], "r0@x");
        assert_eq!(references[1], "r32@x");
        assert_eq!(references[18], "r49@x");
        assert_eq!(references[19], "m@x");
        let unique: HashSet<_> = references.iter().collect();
        assert_eq!(unique.len(), references.len());

        // No Message-ID: no In-Reply-To, References as they were.
        let refs = vec!["a@x".to_string()];
        let original = Original {
            references: &refs,
            ..Original::default()
        };
        assert_eq!(thread_headers(&original), (None, vec!["a@x".to_string()]));
    }

    fn sample_original<'a>(
        from: &'a Address,
        to: &'a [Address],
        refs: &'a [String],
        text: Option<&'a str>,
        html: Option<&'a str>,
    ) -> Original<'a> {
        Original {
            from: Some(from),
            to,
            subject: Some("Where is my order?"),
            date: DateTime::from_timestamp(1_741_080_600, 0),
            message_id: Some("m1@kunde.example"),
            references: refs,
            text_body: text,
            html_body: html,
            ..Original::default()
        }
    }

    #[test]
    fn reply_quotes_text_and_html() {
        let from = addr(Some("Erika Müller"), "erika@kunde.example");
        let to = [addr(Some("Support"), "support@service.example")];
        let refs = vec!["root@kunde.example".to_string()];
        let original = sample_original(
            &from,
            &to,
            &refs,
            Some("Hello,\r\n\r\nwhere is my order?\r\n> old quote\r\n"),
            Some("<p>Hello,</p><p>where is my <b>order</b>?</p>"),
        );
        let p = ReplyTemplates::defaults()
            .prefill(DraftKind::Reply, &original, &ctx(), &own())
            .unwrap();
        assert_eq!(p.to, std::slice::from_ref(&from));
        assert!(p.cc.is_empty());
        assert_eq!(p.subject, "Re: Where is my order?");
        assert_eq!(p.in_reply_to.as_deref(), Some("m1@kunde.example"));
        assert_eq!(p.references, ["root@kunde.example", "m1@kunde.example"]);
        assert_eq!(
            p.body_text,
            "Kind regards,\nSam Agent\nSupport\n\n\
             On Tue, 4 Mar 2025 09:30:00 +0000, Erika Müller <erika@kunde.example> wrote:\n\
             > Hello,\n>\n> where is my order?\n> > old quote\n"
        );
        assert!(p.body_html.starts_with(
            "<div class=\"sb-signature\"><p>Kind regards,<br>Sam Agent<br>Support</p></div>"
        ));
        assert!(p.body_html.contains(
            "<p>On Tue, 4 Mar 2025 09:30:00 +0000, Erika Müller &lt;erika@kunde.example&gt; wrote:</p>"
        ));
        assert!(p.body_html.contains("<blockquote type=\"cite\""));
        assert!(
            p.body_html
                .contains("<p>Hello,</p><p>where is my <b>order</b>?</p>\n</blockquote>")
        );
    }

    #[test]
    fn text_only_original_is_escaped_in_html() {
        let from = addr(Some("<script>alert(1)</script>"), "evil@kunde.example");
        let evil = "bye</blockquote><script>alert(1)</script>\n& more";
        let original = sample_original(&from, &[], &[], Some(evil), None);
        let p = ReplyTemplates::defaults()
            .prefill(DraftKind::Reply, &original, &ctx(), &own())
            .unwrap();
        assert!(!p.body_html.contains("<script>"), "{}", p.body_html);
        assert!(!p.body_html.contains("</blockquote><script"));
        assert!(p.body_html.contains(
            "<div style=\"white-space:pre-wrap\">bye&lt;&#x2f;blockquote&gt;&lt;script&gt;alert(1)&lt;&#x2f;script&gt;\n&amp; more</div>"
        ));
        assert_eq!(p.body_html.matches("<blockquote").count(), 1);
        assert_eq!(p.body_html.matches("</blockquote>").count(), 1);
        // The text part is not escaped.
        assert!(
            p.body_text
                .contains("> bye</blockquote><script>alert(1)</script>\n> & more")
        );
    }

    #[test]
    fn html_only_original_is_quoted_as_text_too() {
        let from = addr(None, "erika@kunde.example");
        let html = "<div>Hello&nbsp;there,<br>line &amp; two</div><ul><li>one</li><li>two</li></ul><p>a  \n b</p>";
        let original = sample_original(&from, &[], &[], None, Some(html));
        let p = ReplyTemplates::defaults()
            .prefill(DraftKind::Reply, &original, &ctx(), &own())
            .unwrap();
        assert!(
            p.body_text.ends_with(
                "erika@kunde.example wrote:\n> Hello there,\n> line & two\n>\n> - one\n> - two\n>\n> a b\n"
            ),
            "{}",
            p.body_text
        );
    }

    #[test]
    fn forward_block() {
        let from = addr(Some("Erika Müller"), "erika@kunde.example");
        let to = [
            addr(Some("Support"), "support@service.example"),
            addr(None, "jan@kunde.example"),
        ];
        let refs = vec!["root@kunde.example".to_string()];
        let original = sample_original(
            &from,
            &to,
            &refs,
            Some("Hello,\n> not a quote\nErika"),
            None,
        );
        let p = ReplyTemplates::defaults()
            .prefill(DraftKind::Forward, &original, &ctx(), &own())
            .unwrap();
        assert!(p.to.is_empty() && p.cc.is_empty());
        assert_eq!(p.subject, "Fwd: Where is my order?");
        assert_eq!(p.in_reply_to, None);
        assert_eq!(p.references, ["root@kunde.example", "m1@kunde.example"]);
        assert_eq!(
            p.body_text,
            "Kind regards,\nSam Agent\nSupport\n\n\
             ---------- Forwarded message ----------\n\
             From: Erika Müller <erika@kunde.example>\n\
             Date: Tue, 4 Mar 2025 09:30:00 +0000\n\
             Subject: Where is my order?\n\
             To: Support <support@service.example>, jan@kunde.example\n\
             \n\
             Hello,\n> not a quote\nErika\n"
        );
        assert!(
            p.body_html
                .contains("---------- Forwarded message ----------<br>")
        );
        assert!(
            p.body_html
                .contains("From: Erika Müller &lt;erika@kunde.example&gt;<br>")
        );
        assert!(
            p.body_html
                .contains("To: Support &lt;support@service.example&gt;, jan@kunde.example<br>")
        );
        assert!(
            p.body_html.contains(
                "<div style=\"white-space:pre-wrap\">Hello,\n&gt; not a quote\nErika</div>"
            )
        );
        assert!(!p.body_html.contains("<blockquote"));
    }

    #[test]
    fn new_message_has_signature_only() {
        let original = Original::default();
        let p = ReplyTemplates::defaults()
            .prefill(DraftKind::New, &original, &ctx(), &own())
            .unwrap();
        assert_eq!(p.subject, "Order 42");
        assert_eq!((p.in_reply_to, p.references), (None, vec![]));
        assert_eq!(p.body_text, "Kind regards,\nSam Agent\nSupport\n");
        assert_eq!(
            p.body_html,
            "<div class=\"sb-signature\"><p>Kind regards,<br>Sam Agent<br>Support</p></div>"
        );
    }

    #[test]
    fn sparse_original_renders() {
        let original = Original::default();
        for kind in [DraftKind::Reply, DraftKind::ReplyAll, DraftKind::Forward] {
            let p = ReplyTemplates::defaults()
                .prefill(kind, &original, &ctx(), &own())
                .unwrap();
            assert!(!p.body_text.contains("none"), "{}", p.body_text);
            assert!(!p.body_html.contains("none"), "{}", p.body_html);
        }
        let p = ReplyTemplates::defaults()
            .prefill(DraftKind::Reply, &original, &ctx(), &own())
            .unwrap();
        assert_eq!(p.subject, "Re: Order 42");
        assert!(p.body_text.contains("The sender wrote:"));
    }

    #[test]
    fn defaults_pass_their_own_check() {
        ReplyTemplates::defaults().check().unwrap();
        assert_eq!(
            ReplyTemplates::with_overrides(&HashMap::new()).unwrap(),
            ReplyTemplates::defaults()
        );
    }

    fn overrides(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_replace_templates() {
        let templates = ReplyTemplates::with_overrides(&overrides(&[
            (
                "signature_text",
                "Best,\n{{ agent.name }} ({{ agent.email }})\n{% if customer %}For {{ customer.name }}\n{% endif %}Ref {{ task.id }}",
            ),
            ("signature_html", "<p>{{ agent }} – {{ service.name }}</p>"),
            ("quote_text", "{{ original.from.name }}:\n{{ original.text|quote }}"),
        ]))
        .unwrap();
        assert_eq!(
            templates.source("quote_html"),
            Some(DEFAULT_SOURCES[QUOTE_HTML])
        );
        let from = addr(Some("Erika"), "erika@kunde.example");
        let original = sample_original(&from, &[], &[], Some("hi"), None);
        let context = Context {
            agent_name: "Sam <S>",
            ..ctx()
        };
        let p = templates
            .prefill(DraftKind::Reply, &original, &context, &own())
            .unwrap();
        assert_eq!(
            p.body_text,
            "Best,\nSam <S> (sam@service.example)\nFor Erika Müller\nRef tsk_1\n\nErika:\n> hi\n"
        );
        assert!(p.body_html.starts_with(
            "<p>Sam &lt;S&gt; &lt;sam@service.example&gt; – Support</p>\n<div class=\"sb-quote\">"
        ));

        // An empty signature is allowed.
        let templates =
            ReplyTemplates::with_overrides(&overrides(&[("signature_text", "")])).unwrap();
        let p = templates
            .prefill(DraftKind::Reply, &original, &ctx(), &own())
            .unwrap();
        assert!(p.body_text.starts_with("On Tue"));
    }

    fn refusal(pairs: &[(&str, &str)]) -> (String, String) {
        match ReplyTemplates::with_overrides(&overrides(pairs)) {
            Err(ComposeError::Template { name, message }) => (name, message),
            Ok(_) => panic!("accepted {pairs:?}"),
        }
    }

    #[test]
    fn broken_templates_are_refused_with_name_and_line() {
        let (name, message) = refusal(&[("quote_html", "<p>\n{% if original.html %}\n<b>")]);
        assert_eq!(name, "quote_html");
        assert!(message.starts_with("line 3: syntax error"), "{message}");

        let (name, message) = refusal(&[("signature_text", "Regards\n\n{{ agent.name|shout }}")]);
        assert_eq!(name, "signature_text");
        assert!(message.contains("line 3: unknown filter"), "{message}");

        // Only reached for a forward.
        let (name, message) = refusal(&[(
            "quote_text",
            "{% if kind == \"forward\" %}\n{{ original.text|nope }}\n{% endif %}",
        )]);
        assert_eq!(name, "quote_text");
        assert!(message.contains("line 2: unknown filter"), "{message}");
        assert!(message.contains("forward"), "{message}");

        // A typo in a variable name.
        let (name, message) = refusal(&[("signature_html", "<p>{{ agnet.name }}</p>")]);
        assert_eq!(name, "signature_html");
        assert!(message.contains("line 1: undefined"), "{message}");

        // Fails only when the original has no recipients.
        let (_, message) = refusal(&[("quote_text", "{{ original.to[0].email }}")]);
        assert!(message.contains("sparse"), "{message}");

        let (name, message) = refusal(&[("footer", "x")]);
        assert_eq!(name, "footer");
        assert!(message.contains("unknown template"), "{message}");

        let err = ReplyTemplates::with_overrides(&overrides(&[("quote_html", "{% for %}")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("template quote_html: line 1: syntax error"),
            "{err}"
        );
    }

    #[test]
    fn message_ids_round_trip_and_forgeries_fail() {
        let key = b"0123456789abcdef0123456789abcdef";
        let id = new_message_id(key, "Mail.Service.Example");
        let (local, domain) = id.split_once('@').unwrap();
        assert_eq!(domain, "mail.service.example");
        let parts: Vec<&str> = local.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], "sb");
        assert_eq!(parts[1].len(), 20);
        assert_eq!(parts[2].len(), 8);
        assert!(!id.contains('<') && !id.contains('>'));

        assert!(is_our_message_id(key, &id));
        assert!(is_our_message_id(key, &format!("<{id}>")));
        assert!(is_our_message_id(
            key,
            &format!(" <{}> ", id.to_uppercase())
        ));
        assert!(is_our_message_id(
            key,
            &id.replace("mail.service.example", "other.example")
        ));
        assert!(!is_our_message_id(b"another key", &id));
        assert_ne!(
            new_message_id(key, "x.example"),
            new_message_id(key, "x.example")
        );

        // Tampering with the random part or the tag.
        let flip = |s: &str, at: usize| {
            let mut bytes = s.as_bytes().to_vec();
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).unwrap()
        };
        assert!(!is_our_message_id(key, &flip(&id, 3)));
        assert!(!is_our_message_id(key, &flip(&id, 24)));
        for forged in [
            "sb.00000000000000000000.00000000@service.example",
            "sb.0000000000000000000.00000000@service.example",
            "xx.00000000000000000000.00000000@service.example",
            "sb.00000000000000000000.00000000",
            "",
            "<>",
            "m1@kunde.example",
            "sb.zzzzzzzzzzzzzzzzzzzz.zzzzzzzz@x",
            "sb.ää@x",
        ] {
            assert!(!is_our_message_id(key, forged), "{forged}");
        }

        // A domain that could break the header is replaced.
        assert!(new_message_id(key, "evil>\r\nBcc: x").ends_with("@switchboard.invalid"));
        assert!(new_message_id(key, "").ends_with("@switchboard.invalid"));
    }
}
