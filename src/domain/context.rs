//! Conversation context: the links a service builds from a task's customer
//! and parameters (a CRM search, a ticket, a map), and the rules for custom
//! parameters. Free of I/O.
//!
//! A URL template is an `http(s)://` URL with placeholders `$(Namespace.Field)`
//! in its path, query or fragment (never in the scheme or host, so a value can
//! never send the link elsewhere). Each value is percent-encoded for where it
//! stands: in the path and the query everything but the unreserved characters
//! (`A-Z a-z 0-9 - . _ ~`) is encoded, so a value cannot add a path segment, a
//! query parameter or a fragment; in the fragment `/` and `?` may stay. A
//! value that is only `.` or `..` in the path counts as missing (it would move
//! the link up the path).
use super::DomainError;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

/// Characters encoded in the path and the query: all but the unreserved ones.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// In the fragment `/` and `?` are data, not delimiters (RFC 3986 §3.5).
const FRAGMENT: &AsciiSet = &COMPONENT.remove(b'/').remove(b'?');

/// Longest URL template accepted.
pub const MAX_TEMPLATE_LEN: usize = 2048;
/// Longest link label.
pub const MAX_LABEL_LEN: usize = 100;
/// Context links a service may have.
pub const MAX_LINKS: usize = 20;

/// The template of a `map` item without its own: a map search for the
/// customer's postal address, else their IP address.
pub const DEFAULT_MAP_TEMPLATE: &str =
    "https://www.google.com/maps/search/?api=1&query=$(Customer.Location)";

/// A field of the customer a placeholder can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerField {
    Name,
    Email,
    Phone,
    Upn,
    /// The address the customer reached us from (e-mail address, number, chat id).
    Address,
    PostalAddress,
    Ip,
    /// The postal address, else the IP address: what a map shows.
    Location,
    /// `internal`, `external` or `anonymous`.
    Kind,
    /// The directory or address-book id that matched.
    Id,
}

/// A field of the task a placeholder can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskField {
    Id,
    Service,
    Modality,
    Subject,
    Language,
    /// The service address or number the customer reached.
    Reached,
    ArrivedAt,
}

const CUSTOMER_FIELDS: &[(&str, CustomerField)] = &[
    ("Name", CustomerField::Name),
    ("Email", CustomerField::Email),
    ("Phone", CustomerField::Phone),
    ("Upn", CustomerField::Upn),
    ("Address", CustomerField::Address),
    ("PostalAddress", CustomerField::PostalAddress),
    ("Ip", CustomerField::Ip),
    ("Location", CustomerField::Location),
    ("Kind", CustomerField::Kind),
    ("Id", CustomerField::Id),
];

const TASK_FIELDS: &[(&str, TaskField)] = &[
    ("Id", TaskField::Id),
    ("Service", TaskField::Service),
    ("Modality", TaskField::Modality),
    ("Subject", TaskField::Subject),
    ("Language", TaskField::Language),
    ("Reached", TaskField::Reached),
    ("ArrivedAt", TaskField::ArrivedAt),
];

/// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    Customer(CustomerField),
    Task(TaskField),
    /// A custom parameter, by name.
    Parameter(String),
}

impl Placeholder {
    /// Reads `Namespace.Field` (the text between `$(` and `)`).
    pub fn parse(text: &str) -> Result<Placeholder, String> {
        let known = || {
            let c: Vec<String> = CUSTOMER_FIELDS
                .iter()
                .map(|(n, _)| format!("Customer.{n}"))
                .collect();
            let t: Vec<String> = TASK_FIELDS
                .iter()
                .map(|(n, _)| format!("Task.{n}"))
                .collect();
            format!(
                "use {}, {} or Parameters.<Name>",
                c.join(", "),
                t.join(", ")
            )
        };
        let unknown = || {
            format!(
                "unknown placeholder $({}): {}",
                super::clip(text, 64),
                known()
            )
        };
        let (ns, field) = text.split_once('.').ok_or_else(unknown)?;
        match ns {
            "Customer" => CUSTOMER_FIELDS
                .iter()
                .find(|(n, _)| *n == field)
                .map(|(_, f)| Placeholder::Customer(*f))
                .ok_or_else(unknown),
            "Task" => TASK_FIELDS
                .iter()
                .find(|(n, _)| *n == field)
                .map(|(_, f)| Placeholder::Task(*f))
                .ok_or_else(unknown),
            "Parameters" => {
                check_parameter_name(field)
                    .map_err(|e| format!("placeholder $({}): {e}", super::clip(text, 64)))?;
                Ok(Placeholder::Parameter(field.to_string()))
            }
            _ => Err(unknown()),
        }
    }

    /// The placeholder as written in a template, without `$(` `)`.
    pub fn name(&self) -> String {
        match self {
            Placeholder::Customer(f) => format!(
                "Customer.{}",
                CUSTOMER_FIELDS
                    .iter()
                    .find(|(_, x)| x == f)
                    .map_or("?", |(n, _)| n)
            ),
            Placeholder::Task(f) => format!(
                "Task.{}",
                TASK_FIELDS
                    .iter()
                    .find(|(_, x)| x == f)
                    .map_or("?", |(n, _)| n)
            ),
            Placeholder::Parameter(p) => format!("Parameters.{p}"),
        }
    }
}

/// Where in a URL a placeholder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Path,
    Query,
    Fragment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Value(Placeholder, Position),
}

/// A checked URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    parts: Vec<Part>,
}

impl UrlTemplate {
    /// Checks a template: `http://` or `https://` and a fixed host, known
    /// placeholders only, properly closed, at most [`MAX_TEMPLATE_LEN`].
    pub fn parse(template: &str) -> Result<UrlTemplate, String> {
        if template.len() > MAX_TEMPLATE_LEN {
            return Err(format!("is longer than {MAX_TEMPLATE_LEN} characters"));
        }
        if template
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err("contains spaces or control characters: write them as %20 …".into());
        }
        let lower = template.to_ascii_lowercase();
        let scheme_len = if lower.starts_with("https://") {
            8
        } else if lower.starts_with("http://") {
            7
        } else {
            return Err("must start with https:// or http://".into());
        };
        let authority_end = template[scheme_len..]
            .find(['/', '?', '#'])
            .map_or(template.len(), |i| i + scheme_len);
        let authority = &template[scheme_len..authority_end];
        if authority.contains("$(") {
            return Err(
                "a placeholder may not stand in the host: put it in the path or the query".into(),
            );
        }
        if authority.is_empty() {
            return Err("has no host".into());
        }
        let mut parts = vec![Part::Literal(template[..authority_end].to_string())];
        let mut position = Position::Path;
        let mut literal = String::new();
        let mut rest = &template[authority_end..];
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("$(") {
                let end = after
                    .find(')')
                    .ok_or_else(|| "has a '$(' without its ')'".to_string())?;
                let placeholder = Placeholder::parse(&after[..end])?;
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Value(placeholder, position));
                rest = &after[end + 1..];
                continue;
            }
            let c = rest.chars().next().unwrap_or_default();
            match (c, position) {
                ('?', Position::Path) => position = Position::Query,
                ('#', Position::Path | Position::Query) => position = Position::Fragment,
                _ => {}
            }
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let template = UrlTemplate { parts };
        // With every value in place the result must be a URL.
        let sample = template.render(&|_| Some("x".into())).url;
        url::Url::parse(&sample).map_err(|e| format!("is not a URL: {e}"))?;
        Ok(template)
    }

    /// The placeholders used, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(ph, _) => Some(ph),
            Part::Literal(_) => None,
        })
    }

    /// Fills the template; a value `value` does not know is left empty and
    /// listed in `missing`.
    pub fn render(&self, value: &dyn Fn(&Placeholder) -> Option<String>) -> Rendered {
        let mut url = String::new();
        let mut missing = Vec::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => url.push_str(l),
                Part::Value(ph, position) => {
                    let v = value(ph)
                        .filter(|v| !v.is_empty())
                        .filter(|v| !(*position == Position::Path && (v == "." || v == "..")));
                    match v {
                        Some(v) => {
                            let set = match position {
                                Position::Path | Position::Query => COMPONENT,
                                Position::Fragment => FRAGMENT,
                            };
                            url.extend(utf8_percent_encode(&v, set));
                        }
                        None => missing.push(ph.name()),
                    }
                }
            }
        }
        Rendered { url, missing }
    }
}

/// A filled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub url: String,
    /// Placeholders without a value (left empty in `url`).
    pub missing: Vec<String>,
}

/// What a context item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// A link (opened with "Portal context", or embedded).
    #[default]
    Link,
    /// A map of the customer's location (postal address, else IP).
    Map,
}

/// What an item does when one of its values is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WhenMissing {
    /// The item is left out.
    #[default]
    Omit,
    /// The item is kept with the missing values empty.
    Empty,
}

/// A context item of a service, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextLink {
    pub label: String,
    /// For a `map` item it may be left out: a map search for the
    /// customer's location (`https://www.google.com/maps/search/?api=1&query=$(Customer.Location)`).
    #[serde(default)]
    pub url_template: String,
    /// The item shown embedded in the agent's page (a sandboxed frame); at most one.
    #[serde(default)]
    pub embed: bool,
    #[serde(default)]
    pub kind: LinkKind,
    #[serde(default)]
    pub when_missing: WhenMissing,
}

impl ContextLink {
    /// The origin (`scheme://host[:port]`) the embedded item is framed from,
    /// for the page's `frame-src`: only where the template fixes it (no
    /// placeholder before the path) and it is a plain web origin.
    pub fn embed_origin(&self) -> Option<String> {
        if !self.embed {
            return None;
        }
        let template = self.template();
        let (scheme, rest) = template.split_once("://")?;
        if scheme != "https" && scheme != "http" {
            return None;
        }
        let authority = rest.split(['/', '?', '#']).next()?;
        let plain = !authority.is_empty()
            && authority
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        plain.then(|| format!("{scheme}://{}", authority.to_ascii_lowercase()))
    }

    /// The template in force: its own, or the default map.
    pub fn template(&self) -> &str {
        if self.url_template.is_empty() && self.kind == LinkKind::Map {
            DEFAULT_MAP_TEMPLATE
        } else {
            &self.url_template
        }
    }
}

/// Checks a service's context items; errors name `{prefix}[i].field`.
pub fn check_context_links(links: &[ContextLink], prefix: &str) -> Result<(), DomainError> {
    let bad = |i: usize, field: &str, why: String| {
        DomainError::Invalid(format!("{prefix}[{i}].{field}: {why}"))
    };
    if links.len() > MAX_LINKS {
        return Err(DomainError::Invalid(format!(
            "{prefix}: {} items, at most {MAX_LINKS}",
            links.len()
        )));
    }
    let mut embedded = None;
    for (i, l) in links.iter().enumerate() {
        let label = l.label.trim();
        if label.is_empty() || label.chars().count() > MAX_LABEL_LEN {
            return Err(bad(
                i,
                "label",
                format!("must be 1 to {MAX_LABEL_LEN} characters"),
            ));
        }
        if l.label.chars().any(char::is_control) {
            return Err(bad(i, "label", "contains control characters".into()));
        }
        if l.url_template.is_empty() && l.kind == LinkKind::Link {
            return Err(bad(i, "url_template", "is required for a link".into()));
        }
        UrlTemplate::parse(l.template()).map_err(|why| bad(i, "url_template", why))?;
        if carries_credentials(l.template()) {
            return Err(bad(
                i,
                "url_template",
                "may not carry a user name or password (every agent's page shows the link): let the site sign its users in".into(),
            ));
        }
        if l.embed {
            if let Some(first) = embedded {
                return Err(bad(
                    i,
                    "embed",
                    format!("{prefix}[{first}] is already the embedded item: at most one"),
                ));
            }
            embedded = Some(i);
        }
    }
    Ok(())
}

/// Whether a link's authority holds `user:password@` (or `user@`). Checked
/// when links are written, not when they are shown, so that a link stored
/// before the check still shows.
fn carries_credentials(template: &str) -> bool {
    let after_scheme = template.split_once("://").map_or("", |(_, rest)| rest);
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    authority.contains('@')
}

/// The values a task (or a stored record of it) gives its placeholders.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContextValues {
    pub customer_name: Option<String>,
    pub customer_kind: Option<String>,
    pub customer_id: Option<String>,
    pub customer_address: Option<String>,
    pub details: super::customer::CustomerDetails,
    pub task_id: String,
    pub service: String,
    pub modality: String,
    pub subject: Option<String>,
    pub language: Option<String>,
    pub reached: Option<String>,
    pub arrived_at: Option<String>,
    pub parameters: serde_json::Map<String, serde_json::Value>,
}

impl ContextValues {
    /// The value of one placeholder, if known.
    pub fn value(&self, p: &Placeholder) -> Option<String> {
        let d = &self.details;
        match p {
            Placeholder::Customer(f) => match f {
                CustomerField::Name => self.customer_name.clone(),
                CustomerField::Email => d.email.clone(),
                CustomerField::Phone => d.phone.clone(),
                CustomerField::Upn => d.upn.clone(),
                CustomerField::Address => self.customer_address.clone(),
                CustomerField::PostalAddress => d.postal_address.as_deref().map(one_line),
                CustomerField::Ip => d.ip.clone(),
                CustomerField::Location => d
                    .postal_address
                    .as_deref()
                    .map(one_line)
                    .or_else(|| d.ip.clone()),
                CustomerField::Kind => self.customer_kind.clone(),
                CustomerField::Id => self.customer_id.clone(),
            },
            Placeholder::Task(f) => match f {
                TaskField::Id => Some(self.task_id.clone()),
                TaskField::Service => Some(self.service.clone()),
                TaskField::Modality => Some(self.modality.clone()),
                TaskField::Subject => self.subject.clone(),
                TaskField::Language => self.language.clone(),
                TaskField::Reached => self.reached.clone(),
                TaskField::ArrivedAt => self.arrived_at.clone(),
            },
            // A chat keeps what its start brought under `parameters` (beside
            // its channel and chat id): read as the task's own, which win.
            // (Parameters set through the API are never objects.)
            Placeholder::Parameter(name) => match self.parameters.get(name).or_else(|| {
                self.parameters
                    .get("parameters")
                    .and_then(|p| p.as_object())
                    .and_then(|p| p.get(name))
            })? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            },
        }
    }
}

/// A context item filled for one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ResolvedLink {
    pub label: String,
    pub kind: LinkKind,
    pub url: String,
    pub embed: bool,
    /// Placeholders that had no value (only for `when_missing = "empty"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// Fills a service's items for a task, in order; an item with a missing
/// value is left out or kept empty, as it says. An item whose stored
/// template no longer parses is left out.
pub fn resolve_links(links: &[ContextLink], values: &ContextValues) -> Vec<ResolvedLink> {
    links
        .iter()
        .filter_map(|l| {
            let template = UrlTemplate::parse(l.template()).ok()?;
            let rendered = template.render(&|p| values.value(p));
            if !rendered.missing.is_empty() && l.when_missing == WhenMissing::Omit {
                return None;
            }
            Some(ResolvedLink {
                label: l.label.trim().to_string(),
                kind: l.kind,
                url: rendered.url,
                embed: l.embed,
                missing: rendered.missing,
            })
        })
        .collect()
}

/// Custom parameters a task may carry.
pub const MAX_PARAMETERS: usize = 50;
/// Longest name of a custom parameter.
pub const MAX_PARAMETER_NAME: usize = 64;
/// Longest text value of a custom parameter.
pub const MAX_PARAMETER_VALUE: usize = 1000;

/// A parameter name: 1 to 64 of `A-Z a-z 0-9 _ -`, so `$(Parameters.Name)`
/// can name it.
pub fn check_parameter_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_PARAMETER_NAME {
        return Err(format!(
            "a parameter name is 1 to {MAX_PARAMETER_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(format!(
            "a parameter name may not contain '{}': use letters, digits, '_' and '-'",
            c.escape_default()
        ));
    }
    Ok(())
}

/// Checks custom parameters (names, and values: text of at most 1000
/// characters, a number or a boolean; `null` only where `allow_null`, as
/// "remove it"). Errors name `{prefix}.{name}` and the limit.
pub fn check_parameters(
    params: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    allow_null: bool,
) -> Result<(), DomainError> {
    for (name, value) in params {
        let shown = super::clip(name, MAX_PARAMETER_NAME);
        check_parameter_name(name)
            .map_err(|e| DomainError::Invalid(format!("{prefix}.{shown}: {e}")))?;
        let bad = |why: String| DomainError::Invalid(format!("{prefix}.{name}: {why}"));
        match value {
            serde_json::Value::String(s) => {
                if s.chars().count() > MAX_PARAMETER_VALUE {
                    return Err(bad(format!(
                        "is longer than {MAX_PARAMETER_VALUE} characters"
                    )));
                }
                if s.chars().any(|c| c.is_control() && c != '\t') {
                    return Err(bad("contains control characters".into()));
                }
            }
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {}
            serde_json::Value::Null if allow_null => {}
            _ => {
                return Err(bad("must be text, a number or true/false".to_string()
                    + if allow_null { " (null removes it)" } else { "" }));
            }
        }
    }
    Ok(())
}

/// Applies an update to a task's parameters (`null` removes one) and checks
/// the result's size.
pub fn merge_parameters(
    current: &serde_json::Map<String, serde_json::Value>,
    update: &serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, DomainError> {
    let mut merged = current.clone();
    for (k, v) in update {
        if v.is_null() {
            merged.remove(k);
        } else {
            merged.insert(k.clone(), v.clone());
        }
    }
    // (A task that came with more, before this limit held for new tasks,
    // can still be updated as long as it does not grow.)
    if merged.len() > MAX_PARAMETERS && merged.len() > current.len() {
        return Err(DomainError::Invalid(format!(
            "parameters: {} after this update, at most {MAX_PARAMETERS}",
            merged.len()
        )));
    }
    Ok(merged)
}

/// Why a session's context is not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotAvailable {
    /// The service does not keep context after a session.
    NotKept,
    /// It was kept, and its days are over.
    Expired,
    /// The task has ended (for the task as a whole: see its sessions).
    Ended,
}

/// Where the context of a session (or of a task) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextSource {
    /// The task's live context.
    Live,
    /// The stored record at this index.
    Stored(usize),
    NotAvailable(NotAvailable),
}

/// What the rule needs to know of a record: one part of a task in a service
/// that is over (it left the service, or ended there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFacts<'a> {
    pub service_id: &'a str,
    pub ended_at: i64,
    pub keep_days: i64,
    pub purged: bool,
    /// The session whose end it records (an agent's part over while the
    /// task stayed in its service); `None` for a service's part.
    pub session: Option<&'a str>,
}

/// What the rule needs to know of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionFacts<'a> {
    pub id: &'a str,
    pub service_id: &'a str,
    pub created_at: i64,
    /// Its part is over: concluded, or it transferred the task away.
    pub over: bool,
}

/// Whose context a session shows. A session whose end was recorded (its
/// part was over while the task stayed in its service) shows that record.
/// Otherwise the part of the task the session belongs to is the first
/// record of its service that ended at or after the session began; a part
/// that is over shows its record: kept (and within its days) or "not
/// available". A part still going on shows the live context to the sessions
/// still in it; a session over without a record of its own (history from
/// before such records were written) shows nothing, never what later
/// holders have added.
pub fn session_context_source(
    session: SessionFacts<'_>,
    records: &[RecordFacts<'_>],
    task_service: &str,
    task_ended: bool,
    now: i64,
    day_ms: i64,
) -> ContextSource {
    let kept = |i: usize, r: &RecordFacts<'_>| {
        if r.keep_days <= 0 {
            return ContextSource::NotAvailable(NotAvailable::NotKept);
        }
        let until = r
            .ended_at
            .saturating_add(r.keep_days.saturating_mul(day_ms));
        if r.purged || now >= until {
            return ContextSource::NotAvailable(NotAvailable::Expired);
        }
        ContextSource::Stored(i)
    };
    if let Some((i, r)) = records
        .iter()
        .enumerate()
        .find(|(_, r)| r.session == Some(session.id))
    {
        return kept(i, r);
    }
    let part = records
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.session.is_none()
                && r.service_id == session.service_id
                && r.ended_at >= session.created_at
        })
        .min_by_key(|(_, r)| r.ended_at);
    if let Some((i, r)) = part {
        return kept(i, r);
    }
    if task_ended || task_service != session.service_id || session.over {
        // History from before records were written: nothing was kept.
        return ContextSource::NotAvailable(NotAvailable::NotKept);
    }
    ContextSource::Live
}

/// When a kept record's days are over.
pub fn kept_until(ended_at: i64, keep_days: i64, day_ms: i64) -> i64 {
    ended_at.saturating_add(keep_days.saturating_mul(day_ms))
}

/// A multi-line value (a postal address) on one line, its lines joined with
/// ", ", as a search or a map takes it.
fn one_line(v: &str) -> String {
    v.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn link(template: &str) -> ContextLink {
        ContextLink {
            label: "CRM".into(),
            url_template: template.into(),
            embed: false,
            kind: LinkKind::Link,
            when_missing: WhenMissing::Omit,
        }
    }

    fn values() -> ContextValues {
        let mut v = ContextValues {
            customer_name: Some("John Doe".into()),
            customer_address: Some("+41440000000".into()),
            task_id: "tsk_1".into(),
            service: "support".into(),
            modality: "call".into(),
            ..Default::default()
        };
        v.details.email = Some("john@example.com".into());
        v.details.phone = Some("+41440000000".into());
        v
    }

    fn url(template: &str, values: &ContextValues) -> String {
        let t = UrlTemplate::parse(template).unwrap();
        t.render(&|p| values.value(p)).url
    }

    #[test]
    fn only_a_fixed_web_origin_is_framed() {
        let link = |url: &str, embed| ContextLink {
            label: "x".into(),
            url_template: url.into(),
            embed,
            kind: LinkKind::default(),
            when_missing: WhenMissing::default(),
        };
        assert_eq!(
            link(
                "https://CRM.example.org:8443/t/$(Parameters.TicketId)",
                true
            )
            .embed_origin(),
            Some("https://crm.example.org:8443".into())
        );
        assert_eq!(
            link("https://crm.example.org?q=$(Task.Id)", true).embed_origin(),
            Some("https://crm.example.org".into())
        );
        assert_eq!(
            link("https://crm.example.org/", false).embed_origin(),
            None,
            "not embedded"
        );
        assert_eq!(
            link("https://$(Parameters.Host)/t", true).embed_origin(),
            None,
            "a placeholder in the host"
        );
        assert_eq!(link("javascript:alert(1)", true).embed_origin(), None);
        assert_eq!(
            link("https://a.org; script-src *", true).embed_origin(),
            None,
            "nothing more in the CSP"
        );
    }

    #[test]
    fn every_placeholder_kind_fills() {
        let mut v = values();
        v.parameters.insert("TicketId".into(), json!("1111"));
        v.parameters.insert("Count".into(), json!(3));
        assert_eq!(
            url(
                "https://crm.example/c/$(Customer.Email)?phone=$(Customer.Phone)&name=$(Customer.Name)&t=$(Task.Id)&ticket=$(Parameters.TicketId)&n=$(Parameters.Count)",
                &v
            ),
            "https://crm.example/c/john%40example.com?phone=%2B41440000000&name=John%20Doe&t=tsk_1&ticket=1111&n=3"
        );
    }

    #[test]
    fn hostile_values_stay_inside_their_place() {
        let hostile = [
            "a&b=c",
            "x#frag",
            "say \"hi\"",
            "two words",
            "javascript:alert(1)",
            "../../admin",
            "100%",
            "ü/?",
        ];
        for h in hostile {
            let mut v = values();
            v.parameters.insert("T".into(), json!(h));
            let u = url(
                "https://crm.example/tickets/$(Parameters.T)?q=$(Parameters.T)&x=1#$(Parameters.T)",
                &v,
            );
            let parsed = url::Url::parse(&u).unwrap();
            assert_eq!(parsed.scheme(), "https", "{h}: {u}");
            assert_eq!(parsed.host_str(), Some("crm.example"), "{h}: {u}");
            // One path segment, whatever the value.
            let segments: Vec<&str> = parsed.path_segments().unwrap().collect();
            assert_eq!(segments.len(), 2, "{h}: {u}");
            let decoded = percent_encoding::percent_decode_str(segments[1])
                .decode_utf8()
                .unwrap();
            assert_eq!(decoded, h, "{u}");
            // Exactly the two query parameters, the first one the value.
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(
                pairs,
                vec![("q".into(), h.into()), ("x".into(), "1".into())],
                "{u}"
            );
            let fragment = percent_encoding::percent_decode_str(parsed.fragment().unwrap())
                .decode_utf8()
                .unwrap();
            assert_eq!(fragment, h, "{u}");
            assert!(!u.contains(' ') && !u.contains('"'), "{u}");
        }
        // A value cannot become the link itself.
        let mut v = values();
        v.parameters
            .insert("T".into(), json!("javascript:alert(1)"));
        assert_eq!(
            url("https://crm.example/$(Parameters.T)", &v),
            "https://crm.example/javascript%3Aalert%281%29"
        );
    }

    #[test]
    fn the_fragment_keeps_slashes_and_question_marks() {
        let mut v = values();
        v.parameters.insert("P".into(), json!("a/b?c d#e"));
        assert_eq!(
            url("https://app.example/#/ticket/$(Parameters.P)", &v),
            "https://app.example/#/ticket/a/b?c%20d%23e"
        );
    }

    #[test]
    fn dot_segments_count_as_missing() {
        let mut v = values();
        v.parameters.insert("P".into(), json!(".."));
        let t = UrlTemplate::parse("https://crm.example/a/$(Parameters.P)").unwrap();
        let r = t.render(&|p| v.value(p));
        assert_eq!(r.missing, vec!["Parameters.P".to_string()]);
        // In the query they are only text.
        assert_eq!(
            url("https://crm.example/a?p=$(Parameters.P)", &v),
            "https://crm.example/a?p=.."
        );
    }

    #[test]
    fn unknown_placeholders_and_unsafe_templates_are_refused() {
        for (template, expected) in [
            (
                "https://crm.example/$(Customer.Fax)",
                "unknown placeholder $(Customer.Fax)",
            ),
            (
                "https://crm.example/$(Caller.Name)",
                "unknown placeholder $(Caller.Name)",
            ),
            ("https://crm.example/$(Customer", "without its ')'"),
            ("https://$(Customer.Email)/x", "in the host"),
            ("javascript:alert(1)", "must start with https://"),
            ("$(Parameters.Url)", "must start with https://"),
            ("https://crm.example/a b", "spaces"),
            (
                "https://crm.example/$(Parameters.a.b)",
                "may not contain '.'",
            ),
            ("https:///x", "no host"),
        ] {
            let err = UrlTemplate::parse(template).unwrap_err();
            assert!(err.contains(expected), "{template}: {err}");
        }
        for template in [
            "https://me:secret@crm.example/$(Task.Id)",
            "http://me@crm.example",
        ] {
            let err = check_context_links(&[link(template)], "context_links")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("context_links[0].url_template: may not carry a user name"),
                "{template}: {err}"
            );
        }
        assert!(
            check_context_links(&[link("https://crm.example/a@b?x=$(Customer.Email)")], "l")
                .is_ok(),
            "an @ in the path or the query is not a credential"
        );
        let err = check_context_links(
            &[link("https://ok.example/"), link("https://x/$(Task.Nope)")],
            "context_links",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("context_links[1].url_template: unknown placeholder $(Task.Nope)"),
            "{err}"
        );
        let mut two = vec![link("https://a.example/"), link("https://b.example/")];
        two[0].embed = true;
        two[1].embed = true;
        let err = check_context_links(&two, "c").unwrap_err().to_string();
        assert!(err.starts_with("c[1].embed"), "{err}");
        let mut map = link("");
        map.kind = LinkKind::Map;
        assert!(check_context_links(&[map], "c").is_ok());
        assert!(check_context_links(&[link("")], "c").is_err());
    }

    #[test]
    fn a_missing_value_omits_the_item_or_leaves_it_empty() {
        let v = values();
        let mut omit = link("https://crm.example/t/$(Parameters.TicketId)");
        omit.label = "Ticket".into();
        let mut empty = link("https://crm.example/search?q=$(Parameters.TicketId)");
        empty.when_missing = WhenMissing::Empty;
        empty.embed = true;
        let resolved = resolve_links(&[omit, empty], &v);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].url, "https://crm.example/search?q=");
        assert_eq!(resolved[0].missing, vec!["Parameters.TicketId".to_string()]);
        assert!(resolved[0].embed);
    }

    #[test]
    fn a_chat_s_parameters_fill_parameter_placeholders() {
        let mut v = values();
        v.parameters = json!({"channel": "web", "TicketId": "#1", "parameters": {"TicketId": "#2", "Order": "A-7"}})
            .as_object()
            .unwrap()
            .clone();
        let get = |name: &str| v.value(&Placeholder::Parameter(name.into()));
        assert_eq!(get("Order").as_deref(), Some("A-7"));
        assert_eq!(
            get("TicketId").as_deref(),
            Some("#1"),
            "the task's own wins"
        );
        assert_eq!(get("Missing"), None);
    }

    #[test]
    fn a_map_shows_the_postal_address_else_the_ip() {
        let mut map = link("");
        map.kind = LinkKind::Map;
        map.label = "Map".into();
        let mut v = values();
        assert!(resolve_links(std::slice::from_ref(&map), &v).is_empty());
        v.details.ip = Some("203.0.113.7".into());
        assert_eq!(
            resolve_links(std::slice::from_ref(&map), &v)[0].url,
            "https://www.google.com/maps/search/?api=1&query=203.0.113.7"
        );
        // A postal address of several lines goes on one, joined with ", ".
        v.details.postal_address = Some("Bahnhofstrasse 1\n8001 Zürich".into());
        let r = resolve_links(&[map], &v);
        assert_eq!(
            r[0].url,
            "https://www.google.com/maps/search/?api=1&query=Bahnhofstrasse%201%2C%208001%20Z%C3%BCrich"
        );
        assert_eq!(r[0].kind, LinkKind::Map);
    }

    #[test]
    fn parameters_are_checked_and_merged() {
        let ok = json!({"TicketId": "#1111", "n": 2, "vip": true});
        assert!(check_parameters(ok.as_object().unwrap(), "parameters", false).is_ok());
        let bad = json!({"Ticket Id": "x"});
        let err = check_parameters(bad.as_object().unwrap(), "parameters", false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("parameters.Ticket Id: "), "{err}");
        let long = json!({"T": "x".repeat(1001)});
        let err = check_parameters(long.as_object().unwrap(), "parameters", false)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "parameters.T: is longer than 1000 characters");
        let nested = json!({"T": {"a": 1}});
        assert!(check_parameters(nested.as_object().unwrap(), "parameters", true).is_err());
        let null = json!({"T": null});
        assert!(check_parameters(null.as_object().unwrap(), "parameters", false).is_err());
        assert!(check_parameters(null.as_object().unwrap(), "parameters", true).is_ok());
        let current = json!({"A": "1", "B": "2"});
        let update = json!({"B": null, "C": "3"});
        let merged =
            merge_parameters(current.as_object().unwrap(), update.as_object().unwrap()).unwrap();
        assert_eq!(
            serde_json::Value::Object(merged),
            json!({"A": "1", "C": "3"})
        );
        let many: serde_json::Map<String, serde_json::Value> =
            (0..51).map(|i| (format!("p{i}"), json!(i))).collect();
        let err = merge_parameters(&serde_json::Map::new(), &many)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 50"), "{err}");
        // A task that holds more already is not stuck: an update that does
        // not add to them is taken, one that adds is refused.
        let sixty: serde_json::Map<String, serde_json::Value> =
            (0..60).map(|i| (format!("p{i}"), json!(i))).collect();
        let rename = json!({"p0": null, "p1": "x"});
        assert!(merge_parameters(&sixty, rename.as_object().unwrap()).is_ok());
        let more = json!({"new": 1});
        assert!(merge_parameters(&sixty, more.as_object().unwrap()).is_err());
    }

    #[test]
    fn each_part_of_a_task_shows_its_own_record() {
        const DAY: i64 = 86_400_000;
        // A (keeps) -> B (does not) -> C (keeps, where it ended).
        let record = |service_id, ended_at, keep_days| RecordFacts {
            service_id,
            ended_at,
            keep_days,
            purged: false,
            session: None,
        };
        let records = [
            record("a", 100, 30),
            record("b", 200, 0),
            record("c", 300, 7),
        ];
        let s = |service, created_at| SessionFacts {
            id: "ses_1",
            service_id: service,
            created_at,
            over: true,
        };
        let source = |session| session_context_source(session, &records, "c", true, 400, DAY);
        assert_eq!(source(s("a", 10)), ContextSource::Stored(0));
        assert_eq!(
            source(s("b", 150)),
            ContextSource::NotAvailable(NotAvailable::NotKept)
        );
        assert_eq!(source(s("c", 250)), ContextSource::Stored(2));
        // Its days over (or purged by the retention job): gone.
        assert_eq!(
            session_context_source(s("c", 250), &records, "c", true, 300 + 7 * DAY, DAY),
            ContextSource::NotAvailable(NotAvailable::Expired)
        );
        let mut purged = records;
        purged[0].purged = true;
        assert_eq!(
            session_context_source(s("a", 10), &purged, "c", true, 400, DAY),
            ContextSource::NotAvailable(NotAvailable::Expired)
        );
    }

    #[test]
    fn a_part_still_going_on_shows_the_live_context_to_its_live_sessions() {
        let live = SessionFacts {
            id: "ses_1",
            service_id: "a",
            created_at: 10,
            over: false,
        };
        let over = SessionFacts { over: true, ..live };
        assert_eq!(
            session_context_source(live, &[], "a", false, 50, 1),
            ContextSource::Live
        );
        // Over without a record of its own: never what later holders added.
        assert_eq!(
            session_context_source(over, &[], "a", false, 50, 1),
            ContextSource::NotAvailable(NotAvailable::NotKept)
        );
        // The task went back to A later: the first part's record still counts.
        let records = [RecordFacts {
            service_id: "a",
            ended_at: 20,
            keep_days: 0,
            purged: false,
            session: None,
        }];
        assert_eq!(
            session_context_source(over, &records, "a", false, 50, 1),
            ContextSource::NotAvailable(NotAvailable::NotKept)
        );
        let later = SessionFacts {
            id: "ses_2",
            created_at: 30,
            ..live
        };
        assert_eq!(
            session_context_source(later, &records, "a", false, 50, 1),
            ContextSource::Live
        );
    }

    #[test]
    fn a_session_over_while_its_task_stays_shows_its_own_record() {
        const DAY: i64 = 86_400_000;
        // Alice's part ended at 20 (recorded, kept 30 days); Bob holds the
        // task in the same service now; the service's part is still going on.
        let records = [RecordFacts {
            service_id: "a",
            ended_at: 20,
            keep_days: 30,
            purged: false,
            session: Some("ses_alice"),
        }];
        let alice = SessionFacts {
            id: "ses_alice",
            service_id: "a",
            created_at: 10,
            over: true,
        };
        let bob = SessionFacts {
            id: "ses_bob",
            created_at: 15,
            over: false,
            ..alice
        };
        assert_eq!(
            session_context_source(alice, &records, "a", false, 50, DAY),
            ContextSource::Stored(0)
        );
        // Another session's record is not Bob's part: he sees the live context.
        assert_eq!(
            session_context_source(bob, &records, "a", false, 50, DAY),
            ContextSource::Live
        );
        // Not kept by the service, or its days over.
        let mut not_kept = records;
        not_kept[0].keep_days = 0;
        assert_eq!(
            session_context_source(alice, &not_kept, "a", false, 50, DAY),
            ContextSource::NotAvailable(NotAvailable::NotKept)
        );
        assert_eq!(
            session_context_source(alice, &records, "a", false, 20 + 30 * DAY, DAY),
            ContextSource::NotAvailable(NotAvailable::Expired)
        );
    }
}
