//! Chats: the events chat channels deliver (by signed webhook, from NATS
//! JetStream, or translated from Matrix), how a webhook delivery is
//! authenticated, and what an event does to a chat and its IM task. Plain
//! rules, no I/O.
use super::{Millis, TaskState};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A delivery whose timestamp is further than this from now is refused.
pub const MAX_SKEW_SECS: i64 = 300;
/// Longest message text kept (characters); longer text is refused.
pub const MAX_TEXT_CHARS: usize = 16 * 1024;
/// Largest `parameters` object (serialized bytes).
pub const MAX_PARAMETERS_BYTES: usize = 16 * 1024;
/// Largest event body the webhook reads.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// What a chat event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ChatEventKind {
    #[serde(rename = "chat.started")]
    Started,
    #[serde(rename = "chat.message")]
    Message,
    #[serde(rename = "chat.customer_left")]
    CustomerLeft,
    #[serde(rename = "chat.ended")]
    Ended,
}

impl ChatEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatEventKind::Started => "chat.started",
            ChatEventKind::Message => "chat.message",
            ChatEventKind::CustomerLeft => "chat.customer_left",
            ChatEventKind::Ended => "chat.ended",
        }
    }

    pub fn parse(s: &str) -> Option<ChatEventKind> {
        Some(match s {
            "chat.started" => ChatEventKind::Started,
            "chat.message" => ChatEventKind::Message,
            "chat.customer_left" => ChatEventKind::CustomerLeft,
            "chat.ended" => ChatEventKind::Ended,
            _ => return None,
        })
    }
}

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sender {
    Customer,
    Bot,
    Agent,
}

impl Sender {
    pub fn as_str(self) -> &'static str {
        match self {
            Sender::Customer => "customer",
            Sender::Bot => "bot",
            Sender::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Sender> {
        Some(match s {
            "customer" => Sender::Customer,
            "bot" => Sender::Bot,
            "agent" => Sender::Agent,
            _ => return None,
        })
    }
}

/// Everything a channel told us about the customer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CustomerIdentity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The chat platform's user id (a Matrix user id, a web chat visitor id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl CustomerIdentity {
    /// The best address to resolve the customer by: e-mail, else phone,
    /// else the chat platform's user id.
    pub fn best_address(&self) -> Option<&str> {
        self.email
            .as_deref()
            .or(self.phone.as_deref())
            .or(self.user_id.as_deref())
    }

    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.email.is_none()
            && self.phone.is_none()
            && self.user_id.is_none()
    }
}

/// One event of a chat channel, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatEvent {
    /// The sender's id of this event: a repeated delivery carries the same.
    pub id: String,
    /// The configured channel it belongs to.
    pub channel: String,
    pub kind: ChatEventKind,
    /// The chat's id on the platform (a Matrix room id for Matrix).
    pub chat_id: String,
    pub customer: CustomerIdentity,
    pub subject: Option<String>,
    pub language: Option<String>,
    pub parameters: Map<String, Value>,
    pub text: Option<String>,
    /// Who wrote `text` (customer for `chat.started`).
    pub from: Sender,
    /// When the platform says it was sent (now when not given).
    pub sent_at: Option<Millis>,
}

/// A field of an event is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct EventError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> EventError {
    EventError {
        field: field.to_string(),
        message: message.into(),
    }
}

const COMMON_FIELDS: &[&str] = &["id", "channel", "type", "chat_id", "sent_at"];

/// Reads the `channel` of an event body without trusting anything else in
/// it: what picks the secret its signature is checked with.
pub fn channel_of(body: &[u8]) -> Result<String, EventError> {
    #[derive(serde::Deserialize)]
    struct Only {
        channel: Option<Value>,
    }
    let only: Only = serde_json::from_slice(body).map_err(|e| {
        bad(
            "body",
            format!("not a JSON object ({})", short_json_error(&e)),
        )
    })?;
    match only.channel {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(s),
        Some(Value::String(_)) => Err(bad("channel", "must be 1 to 64 characters")),
        Some(_) => Err(bad("channel", "must be a string")),
        None => Err(bad("channel", "missing: name the configured chat channel")),
    }
}

fn short_json_error(e: &serde_json::Error) -> String {
    format!("line {} column {}", e.line(), e.column())
}

/// Parses and validates an event body (already authenticated).
pub fn parse_event(body: &[u8]) -> Result<ChatEvent, EventError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad("body", format!("not valid JSON ({})", short_json_error(&e))))?;
    parse_event_value(&value)
}

/// Like [`parse_event`], from a JSON value.
pub fn parse_event_value(value: &Value) -> Result<ChatEvent, EventError> {
    let Value::Object(obj) = value else {
        return Err(bad("body", "must be a JSON object"));
    };
    let id = text_field(obj, "id", 200, true)?.unwrap_or_default();
    let channel = text_field(obj, "channel", 64, true)?.unwrap_or_default();
    let type_name = text_field(obj, "type", 64, true)?.unwrap_or_default();
    let kind = ChatEventKind::parse(&type_name).ok_or_else(|| {
        bad(
            "type",
            format!(
                "unknown event type '{}': expected chat.started, chat.message, chat.customer_left or chat.ended",
                super::clip(&type_name, 40)
            ),
        )
    })?;
    let allowed: &[&str] = match kind {
        ChatEventKind::Started => &["customer", "subject", "language", "parameters", "text"],
        // `agent`: a relayed reply as Switchboard sent it, echoed back by
        // the chat system (checked, then recognised as the stored line).
        ChatEventKind::Message => &["from", "text", "sender_name", "agent"],
        ChatEventKind::CustomerLeft | ChatEventKind::Ended => &["reason"],
    };
    for key in obj.keys() {
        if !COMMON_FIELDS.contains(&key.as_str()) && !allowed.contains(&key.as_str()) {
            return Err(bad(
                &super::clip(key, 64),
                format!("unknown field for {}", kind.as_str()),
            ));
        }
    }
    let chat_id = text_field(obj, "chat_id", 255, true)?.unwrap_or_default();
    text_field(obj, "agent", 64, false)?;
    let sent_at = match obj.get("sent_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    bad(
                        "sent_at",
                        "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z",
                    )
                })?
                .timestamp_millis(),
        ),
        Some(_) => return Err(bad("sent_at", "must be an RFC 3339 time string")),
    };
    let mut event = ChatEvent {
        id,
        channel,
        kind,
        chat_id,
        customer: CustomerIdentity::default(),
        subject: None,
        language: None,
        parameters: Map::new(),
        text: None,
        from: Sender::Customer,
        sent_at,
    };
    match kind {
        ChatEventKind::Started => {
            if let Some(c) = obj.get("customer").filter(|v| !v.is_null()) {
                event.customer = parse_customer(c)?;
            }
            event.subject = text_field(obj, "subject", 998, false)?.map(|mut subject| {
                // Shown on one line of the page (see `domain::text`).
                super::text::strip_direction_formatting(&mut subject);
                subject
            });
            event.language = text_field(obj, "language", 35, false)?;
            if let Some(l) = &event.language
                && !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(bad("language", "must be a language tag such as de-CH"));
            }
            match obj.get("parameters") {
                None | Some(Value::Null) => {}
                Some(Value::Object(p)) => {
                    if serde_json::to_string(p).map_or(0, |s| s.len()) > MAX_PARAMETERS_BYTES {
                        return Err(bad(
                            "parameters",
                            format!("larger than {} KiB", MAX_PARAMETERS_BYTES / 1024),
                        ));
                    }
                    event.parameters = p.clone();
                }
                Some(_) => return Err(bad("parameters", "must be a JSON object")),
            }
            event.text = message_text(obj, false)?;
        }
        ChatEventKind::Message => {
            let from = text_field(obj, "from", 16, true)?.unwrap_or_default();
            event.from = Sender::parse(&from).ok_or_else(|| {
                bad(
                    "from",
                    format!("'{}' is not customer, bot or agent", super::clip(&from, 20)),
                )
            })?;
            event.text = message_text(obj, true)?;
            if let Some(mut name) = text_field(obj, "sender_name", 200, false)? {
                // Shown on one line of the page (see `domain::text`).
                super::text::strip_direction_formatting(&mut name);
                event.customer.name = Some(name).filter(|n| !n.trim().is_empty());
            }
        }
        ChatEventKind::CustomerLeft | ChatEventKind::Ended => {
            text_field(obj, "reason", 200, false)?;
        }
    }
    Ok(event)
}

fn parse_customer(v: &Value) -> Result<CustomerIdentity, EventError> {
    let Value::Object(c) = v else {
        return Err(bad("customer", "must be a JSON object"));
    };
    for key in c.keys() {
        if !["name", "email", "phone", "user_id"].contains(&key.as_str()) {
            return Err(bad(
                &format!("customer.{}", super::clip(key, 64)),
                "unknown field: use name, email, phone or user_id",
            ));
        }
    }
    let field = |k: &str, max| -> Result<Option<String>, EventError> {
        match c.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let s = s.trim();
                if s.chars().count() > max {
                    Err(bad(
                        &format!("customer.{k}"),
                        format!("longer than {max} characters"),
                    ))
                } else if s.chars().any(char::is_control) {
                    Err(bad(&format!("customer.{k}"), "contains control characters"))
                } else if s.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(s.to_string()))
                }
            }
            Some(_) => Err(bad(&format!("customer.{k}"), "must be a string")),
        }
    };
    let identity = CustomerIdentity {
        // Shown on one line of the page (see `domain::text`).
        name: field("name", 200)?
            .map(|mut name| {
                super::text::strip_direction_formatting(&mut name);
                name
            })
            .filter(|n| !n.trim().is_empty()),
        email: field("email", 320)?,
        phone: field("phone", 40)?,
        user_id: field("user_id", 255)?,
    };
    if let Some(e) = &identity.email {
        let ok = e
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !e.contains(' '));
        if !ok {
            return Err(bad("customer.email", "is not an e-mail address"));
        }
    }
    if let Some(p) = &identity.phone
        && (!p
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
            || p.chars().filter(char::is_ascii_digit).count() < 3)
    {
        return Err(bad(
            "customer.phone",
            "is not a phone number (digits, spaces, + - ( ) .)",
        ));
    }
    Ok(identity)
}

/// An optional (or required) string field of at most `max` characters,
/// without control characters; empty strings count as missing.
fn text_field(
    obj: &Map<String, Value>,
    key: &str,
    max: usize,
    required: bool,
) -> Result<Option<String>, EventError> {
    match obj.get(key) {
        None | Some(Value::Null) if required => Err(bad(key, "missing")),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > max {
                return Err(bad(key, format!("longer than {max} characters")));
            }
            if s.chars().any(char::is_control) {
                return Err(bad(key, "contains control characters"));
            }
            if s.trim().is_empty() {
                return if required {
                    Err(bad(key, "must not be empty"))
                } else {
                    Ok(None)
                };
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(bad(key, "must be a string")),
    }
}

/// A line longer than [`MAX_TEXT_CHARS`] from a channel that cannot be told
/// (a Matrix room: the customer already wrote it), cut there with a note
/// that says so and how long it was; shorter ones as they are.
pub fn clipped_line(text: &str) -> String {
    let n = text.chars().count();
    if n <= MAX_TEXT_CHARS {
        return text.to_string();
    }
    let note = format!(" … [cut: {n} characters in all; the whole message is in the chat]");
    let keep = MAX_TEXT_CHARS.saturating_sub(note.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(&note);
    out
}

/// A message's `text`, at most [`MAX_TEXT_CHARS`], kept as
/// [`super::text::chat_line`] has it (a stray control character pasted along
/// is dropped rather than the customer's line refused, as mail intake
/// does). Text that shows nothing (spaces, zero-width characters) counts as
/// empty.
fn message_text(obj: &Map<String, Value>, required: bool) -> Result<Option<String>, EventError> {
    match obj.get("text") {
        None | Some(Value::Null) if required => Err(bad("text", "missing")),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > MAX_TEXT_CHARS {
                return Err(bad(
                    "text",
                    format!("longer than {MAX_TEXT_CHARS} characters"),
                ));
            }
            if super::text::shows_nothing(s) {
                return if required {
                    Err(bad("text", "must not be empty"))
                } else {
                    Ok(None)
                };
            }
            Ok(Some(super::text::chat_line(s)))
        }
        Some(_) => Err(bad("text", "must be a string")),
    }
}

/// A fingerprint of an event's content (keys sorted), to tell a repeated
/// delivery from a different event that reuses an id.
pub fn content_hash(body: &[u8]) -> String {
    use sha2::Digest;
    let canonical = serde_json::from_slice::<Value>(body)
        .map(|v| v.to_string())
        .unwrap_or_default();
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// Why a webhook delivery was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("send X-Switchboard-Timestamp: <unix seconds>")]
    MissingTimestamp,
    #[error("X-Switchboard-Timestamp must be a whole number of seconds since 1970")]
    BadTimestamp,
    #[error(
        "X-Switchboard-Timestamp is {skew} s away from the server's clock (at most {MAX_SKEW_SECS} s): sign each delivery when you send it"
    )]
    Stale { skew: i64 },
    #[error(
        "send X-Switchboard-Signature: sha256=<hex of HMAC-SHA256(secret, \"<timestamp>.<body>\")>"
    )]
    MissingSignature,
    #[error("X-Switchboard-Signature must be sha256=<64 hex digits>")]
    BadFormat,
    #[error(
        "the signature does not match: check the channel's secret and that the body is signed as sent"
    )]
    Mismatch,
}

impl SignatureError {
    /// A stable code for the API's error shape.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::MissingTimestamp | SignatureError::MissingSignature => {
                "signature_missing"
            }
            SignatureError::BadTimestamp | SignatureError::BadFormat => "signature_malformed",
            SignatureError::Stale { .. } => "timestamp_stale",
            SignatureError::Mismatch => "signature_invalid",
        }
    }
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The `X-Switchboard-Signature` value for `body` sent at `timestamp`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(
            mac(secret, &timestamp.to_string(), body)
                .finalize()
                .into_bytes()
        )
    )
}

/// Checks a delivery: its timestamp within [`MAX_SKEW_SECS`] of `now`
/// (Unix seconds) and its signature made with one of `secrets` (several
/// while a secret is rotated), compared in constant time.
pub fn verify_signature(
    secrets: &[&[u8]],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let ts_text = timestamp
        .map(str::trim)
        .ok_or(SignatureError::MissingTimestamp)?;
    if ts_text.is_empty() {
        return Err(SignatureError::MissingTimestamp);
    }
    if ts_text.len() > 12 || !ts_text.chars().all(|c| c.is_ascii_digit()) {
        return Err(SignatureError::BadTimestamp);
    }
    let ts: i64 = ts_text.parse().map_err(|_| SignatureError::BadTimestamp)?;
    let skew = (now - ts).abs();
    if skew > MAX_SKEW_SECS {
        return Err(SignatureError::Stale { skew });
    }
    let sig = signature
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(SignatureError::MissingSignature)?;
    let hex_part = sig
        .strip_prefix("sha256=")
        .ok_or(SignatureError::BadFormat)?;
    if hex_part.len() != 64 {
        return Err(SignatureError::BadFormat);
    }
    let given = hex::decode(hex_part).map_err(|_| SignatureError::BadFormat)?;
    let mut ok = false;
    for secret in secrets {
        // Every secret is tried, so timing does not tell which one matched.
        ok |= mac(secret, ts_text, body).verify_slice(&given).is_ok();
    }
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Whether a task is still with its customer (a new conversation is not needed).
pub fn task_is_live(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Queued | TaskState::Offered | TaskState::Connected
    )
}

/// What an event does to its chat's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPlan {
    /// Nothing: the message joins the chat's current task (if any).
    Keep,
    /// A new IM task is created for the chat (a new conversation).
    Create,
    /// The customer left (or the chat ended): a waiting task is cancelled,
    /// a connected one records it.
    CustomerLeft,
}

/// Decides what an event does, given the state of the chat's latest task
/// (`None`: the chat has no task yet). A start creates a task unless one is
/// live; a customer's message creates one only when there is none or it is
/// no longer live (wrapped up by its agent, or over: like mail that reopens
/// a conversation); a bot's or an agent's message never does.
pub fn plan(kind: ChatEventKind, from: Sender, latest: Option<TaskState>) -> TaskPlan {
    match kind {
        ChatEventKind::Started => match latest {
            Some(s) if task_is_live(s) => TaskPlan::Keep,
            _ => TaskPlan::Create,
        },
        ChatEventKind::Message => match (from, latest) {
            (Sender::Customer, None) => TaskPlan::Create,
            // Over, or wrapped up by its agent: a new conversation (as a start would).
            (Sender::Customer, Some(s)) if !task_is_live(s) => TaskPlan::Create,
            _ => TaskPlan::Keep,
        },
        ChatEventKind::CustomerLeft | ChatEventKind::Ended => match latest {
            Some(s) if !s.is_final() => TaskPlan::CustomerLeft,
            _ => TaskPlan::Keep,
        },
    }
}

/// How far ahead of this server's clock an event's `sent_at` may be (a chat
/// system's clock may run a little ahead).
pub const MAX_CLOCK_AHEAD_MS: Millis = 5 * 60 * 1000;

/// An event's `sent_at` as Switchboard orders by it: a time further ahead
/// of `now` than [`MAX_CLOCK_AHEAD_MS`] is taken as `now` (when it was
/// received), so that a wrong clock cannot place an event after everything
/// still to come (a far-future `chat.ended` would silence its chat).
pub fn bounded_sent_at(sent_at: Option<Millis>, now: Millis) -> Option<Millis> {
    sent_at.map(|s| {
        if s > now.saturating_add(MAX_CLOCK_AHEAD_MS) {
            now
        } else {
            s
        }
    })
}

/// Whether an event comes from before its chat closed, taken in after the
/// close (out of order): the chat is left or ended, and the event was sent
/// no later than the close (`closed_at` is the closing event's own
/// `sent_at`, else when it was taken in: the chat system's clock on both
/// sides when it sends times). An event without `sent_at` counts as such
/// only while the chat holds nothing (the close made it). Such an event
/// opens no conversation: it joins the chat's last task, or, when the chat
/// has none, its task is made and cancelled at once (recorded as abandoned,
/// never offered), and the chat stays closed.
pub fn written_before_close(
    chat_state: &str,
    closed_at: Option<Millis>,
    sent_at: Option<Millis>,
    chat_empty: bool,
) -> bool {
    if !matches!(chat_state, "left" | "ended") {
        return false;
    }
    match (closed_at, sent_at) {
        (Some(closed), Some(sent)) => sent <= closed,
        _ => chat_empty,
    }
}

/// Whether a `chat.customer_left` was overtaken by the customer's own
/// words: by the chat system's clock it was sent before the customer's
/// latest line, which was taken in first (events out of order). The
/// customer wrote after leaving, so they are still in the chat and the
/// leave changes nothing. A leave without `sent_at` is taken as it comes.
pub fn leave_overtaken(left_at: Option<Millis>, last_customer_line: Option<Millis>) -> bool {
    matches!((left_at, last_customer_line), (Some(left), Some(line)) if line > left)
}

/// Whether an event tells that the customer is in the chat again, after a
/// leave, while its task is still with an agent: a line of theirs, or the
/// chat system starting the chat again.
pub fn customer_is_back(kind: ChatEventKind, from: Sender) -> bool {
    matches!(
        (kind, from),
        (ChatEventKind::Message, Sender::Customer) | (ChatEventKind::Started, _)
    )
}

/// Whether an event speaks for the customer, so the chat may learn who they
/// are from it: a start, or a line of theirs. A bot's or an agent's line
/// says nothing of the customer.
pub fn speaks_for_customer(kind: ChatEventKind, from: Sender) -> bool {
    kind == ChatEventKind::Started || from == Sender::Customer
}

/// Whether a leave is the chat's customer leaving: a leave that names who
/// left (a Matrix member) counts only when that is the customer the chat
/// knows; another member leaving a room (or declining its invite) leaves the
/// customer in the chat. A leave that names nobody (a webhook's
/// `chat.customer_left`), or a chat whose customer is not known, counts.
pub fn leave_is_customers(leaver: Option<&str>, customer: Option<&str>) -> bool {
    match (leaver, customer) {
        (Some(leaver), Some(customer)) => leaver == customer,
        _ => true,
    }
}

/// Whether a `chat.customer_left` is to be checked against the customer's
/// latest line ([`leave_overtaken`]): only a leave the chat system stamped
/// with `sent_at`, in a chat still open.
pub fn leave_to_check(kind: ChatEventKind, chat_state: &str, sent_at: Option<Millis>) -> bool {
    kind == ChatEventKind::CustomerLeft && chat_state == "open" && sent_at.is_some()
}

/// What an event does to its chat's task once the chat's history is known:
/// a leave the customer's own later line overtook changes nothing; an event
/// written before the chat closed ([`written_before_close`]) opens no new
/// conversation when the chat has a task (it joins the last one).
pub fn settled_plan(planned: TaskPlan, overtaken: bool, late: bool, has_task: bool) -> TaskPlan {
    if overtaken || (late && planned == TaskPlan::Create && has_task) {
        TaskPlan::Keep
    } else {
        planned
    }
}

/// Whether an event brings the customer back into a chat they left while
/// its task is still with an agent ([`customer_is_back`]); an event written
/// before the chat closed does not.
pub fn customer_returns(
    kind: ChatEventKind,
    from: Sender,
    chat_state: &str,
    task: TaskState,
    late: bool,
) -> bool {
    !late && chat_state == "left" && !task.is_final() && customer_is_back(kind, from)
}

/// Whether a chat system's refusal of a relayed reply is for good, so the
/// reply fails at once rather than holding back the chat's later replies
/// through its retries: a redirect (`reply_url` is not the final address)
/// and a 4xx (the reply itself, or where it is sent, refused), except 408
/// (timeout), 425 (too early), 429 (too many requests) and 401 (the
/// credentials: the operator's to fix, as an expired token, while the
/// reply waits). 5xx and network errors are retried.
pub fn refusal_is_final(status: u16) -> bool {
    (300..500).contains(&status) && !matches!(status, 401 | 408 | 425 | 429)
}

/// Whether a Matrix homeserver's refusal of a relayed reply is for good:
/// by its status ([`refusal_is_final`]), or by its error code when that
/// says the event can never be sent (too large, not allowed, malformed),
/// whatever status a proxy in front of it answered.
pub fn matrix_refusal_is_final(status: u16, errcode: &str) -> bool {
    match errcode {
        "M_LIMIT_EXCEEDED" => false,
        "M_TOO_LARGE" | "M_FORBIDDEN" | "M_BAD_JSON" | "M_NOT_JSON" => true,
        _ => refusal_is_final(status),
    }
}

/// At most this many bytes of a reply's text, as a JSON string, go into a
/// Matrix room: a Matrix event is at most 65,536 bytes as JSON, and the
/// rest of the event (ids, hashes, signatures) needs room too.
pub const MAX_MATRIX_TEXT_BYTES: usize = 60_000;

/// How long a relayed reply waits before its next attempt after `attempts`
/// failed ones: one second, doubled per attempt, at most 256 seconds.
pub fn reply_retry_delay(attempts: i64) -> Millis {
    1000i64.saturating_mul(1 << attempts.clamp(0, 8))
}

/// Who should be in a chat room for its task (the Matrix handoff).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Leave the room as it is (the task is in wrap-up: its agent stays
    /// while their session is live).
    Keep,
    /// This agent (the task's holder) should be in, and no other agent.
    Holder(String),
    /// No agent should be in (the task went back to a queue, or is over).
    Nobody,
}

/// The room's desired agent: the holder while one is connected; nobody while
/// the task waits or is offered (e.g. after a transfer to a service); as it
/// is while the task is in wrap-up (its agent may still read the chat);
/// nobody once the task is over (concluded or cancelled), so that the last
/// agent reads nothing of the customer's next conversation.
pub fn desired_membership(state: TaskState, holder: Option<&str>) -> Membership {
    match (state, holder) {
        (TaskState::Connected, Some(h)) => Membership::Holder(h.to_string()),
        (TaskState::Queued | TaskState::Offered, _) => Membership::Nobody,
        (TaskState::Concluded | TaskState::Cancelled, _) => Membership::Nobody,
        // Connected without a holder cannot be; wrap-up keeps the room.
        (TaskState::Connected | TaskState::WrapUp, _) => Membership::Keep,
    }
}

/// Whether a chat line from `from` joins the chat's task in `state`: an
/// agent's line once the task is over (concluded or cancelled: saved) is
/// the chat's, outside any task, for it was written after the
/// conversation ended (an agent still in the room, another agent who
/// joined it).
pub fn line_joins_task(from: Sender, state: TaskState) -> bool {
    !(from == Sender::Agent && state.is_final())
}

/// Expands a channel's `chat_url_template`: `{chat_id}` (and `{room_id}`),
/// `{agent_id}`, `{agent_upn}` and `{agent_matrix_user_id}`, each value
/// percent-encoded for a URL component.
pub fn chat_url(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        let placeholder = format!("{{{name}}}");
        if out.contains(&placeholder) {
            let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes())
                .collect::<String>()
                .replace('+', "%20");
            out = out.replace(&placeholder, &encoded);
        }
    }
    out
}

/// The placeholders a `chat_url_template` may use.
pub const URL_PLACEHOLDERS: &[&str] = &[
    "chat_id",
    "room_id",
    "agent_id",
    "agent_upn",
    "agent_matrix_user_id",
];

/// Checks a `chat_url_template`: http(s) and only known placeholders.
pub fn check_url_template(template: &str) -> Result<(), String> {
    if !(template.starts_with("https://") || template.starts_with("http://")) {
        return Err("must start with https:// or http://".into());
    }
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "has a '{' without its '}'".to_string())?;
        let name = &after[..close];
        if !URL_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{}}}: use {}",
                super::clip(name, 40),
                URL_PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatEvent, EventError> {
        parse_event(v.to_string().as_bytes())
    }

    fn message(text: &str) -> Result<ChatEvent, EventError> {
        parse(serde_json::json!({
            "id": "evt-m", "channel": "web", "type": "chat.message", "chat_id": "c-1",
            "from": "customer", "text": text,
        }))
    }

    #[test]
    fn a_line_keeps_its_words_without_stray_controls_and_invisible_text_is_empty() {
        // A stray escape, form feed, DEL or NEL pasted along is dropped, not
        // the customer's line refused; breaks and tabs stay.
        let e = message("a\u{1b}b\u{c}c\u{7f}d\u{85}e\n\tf\r\ng\u{b}h")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.text.as_deref(), Some("ab cd e\n\tf\r\ng h"));
        let e = message("caf\u{e9} \u{200b}ok").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.text.as_deref(), Some("caf\u{e9} \u{200b}ok"));
        // Nothing visible: refused as empty, like a line of spaces.
        for blank in [
            "\u{200b}",
            "\u{feff}",
            " \u{200d}\u{2060} ",
            "\u{1b}",
            "\u{202e}\n",
            "   ",
            "\u{3164}\u{115f}",
            "\u{fe0f}\u{e0041}",
            "\u{34f}\u{180e}\u{ad}",
        ] {
            let err = message(blank)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("text") && err.contains("must not be empty"),
                "{blank:?}: {err}"
            );
        }
    }

    #[test]
    fn a_started_event_parses_with_its_identity() {
        let e = parse(serde_json::json!({
            "id": "evt-1", "channel": "web", "type": "chat.started", "chat_id": "c-1",
            "customer": {"name": "Ann", "email": "ann@example.com", "phone": "+41 44 000 00 00", "user_id": "u1"},
            "subject": "Billing", "language": "de-CH", "parameters": {"ticket": "#42"},
            "text": "Hello", "sent_at": "2026-01-31T12:00:00Z"
        }))
        .unwrap();
        assert_eq!(e.kind, ChatEventKind::Started);
        assert_eq!(e.customer.best_address(), Some("ann@example.com"));
        assert_eq!(e.text.as_deref(), Some("Hello"));
        assert_eq!(e.parameters["ticket"], "#42");
        assert_eq!(e.sent_at, Some(1_769_860_800_000));
    }

    #[test]
    fn names_and_subjects_lose_direction_formatting() {
        let started = parse(serde_json::json!({
            "id": "e1", "channel": "web", "type": "chat.started", "chat_id": "c1",
            "customer": {"name": "Eve \u{202E}gnp.exe"}, "subject": "Invoice \u{2067}x\u{2069}",
        }))
        .unwrap();
        assert_eq!(started.customer.name.as_deref(), Some("Eve gnp.exe"));
        assert_eq!(started.subject.as_deref(), Some("Invoice x"));
        let message = parse(serde_json::json!({
            "id": "e2", "channel": "web", "type": "chat.message", "chat_id": "c1",
            "from": "customer", "text": "hi", "sender_name": "\u{202E}Mallory",
        }))
        .unwrap();
        assert_eq!(message.customer.name.as_deref(), Some("Mallory"));
    }

    #[test]
    fn bad_fields_are_named() {
        let base = serde_json::json!({"id": "e", "channel": "web", "type": "chat.message", "chat_id": "c", "from": "customer", "text": "hi"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            parse(b).unwrap_err().field
        };
        assert_eq!(with("type", "chat.exploded".into()), "type");
        assert_eq!(with("from", "robot".into()), "from");
        assert_eq!(with("text", Value::Null), "text");
        assert_eq!(with("text", "a".repeat(MAX_TEXT_CHARS + 1).into()), "text");
        assert_eq!(with("chat_id", 5.into()), "chat_id");
        assert_eq!(with("sent_at", "yesterday".into()), "sent_at");
        assert_eq!(with("colour", "red".into()), "colour");
        assert_eq!(with("id", "".into()), "id");
        let mut started = base.clone();
        started["type"] = "chat.started".into();
        started.as_object_mut().unwrap().remove("from");
        started["customer"] = serde_json::json!({"email": "not-an-address"});
        assert_eq!(parse(started.clone()).unwrap_err().field, "customer.email");
        started["customer"] = serde_json::json!({"fax": "1"});
        assert_eq!(parse(started).unwrap_err().field, "customer.fax");
        assert_eq!(parse_event(b"{not json").unwrap_err().field, "body");
        assert_eq!(parse_event(b"[1]").unwrap_err().field, "body");
    }

    #[test]
    fn signatures_verify_with_any_active_secret_within_the_window() {
        let body = br#"{"id":"1"}"#;
        let sig = sign(b"new", 1000, body);
        let secrets: [&[u8]; 2] = [b"old", b"new"];
        assert_eq!(
            verify_signature(&secrets, Some("1000"), Some(&sig), body, 1100),
            Ok(())
        );
        assert_eq!(
            verify_signature(&[b"old"], Some("1000"), Some(&sig), body, 1100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&secrets, Some("1000"), Some(&sig), b"{\"id\":\"2\"}", 1100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&secrets, Some("1000"), Some(&sig), body, 1301),
            Err(SignatureError::Stale { skew: 301 })
        );
        assert_eq!(
            verify_signature(&secrets, Some("1000"), Some(&sig), body, 699),
            Err(SignatureError::Stale { skew: 301 })
        );
        // The timestamp is signed: another one does not verify.
        assert_eq!(
            verify_signature(&secrets, Some("1001"), Some(&sig), body, 1100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&secrets, None, Some(&sig), body, 1100),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            verify_signature(&secrets, Some("1000"), None, body, 1100),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            verify_signature(&secrets, Some("1e3"), Some(&sig), body, 1100),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify_signature(&secrets, Some("1000"), Some("md5=00"), body, 1100),
            Err(SignatureError::BadFormat)
        );
    }

    #[test]
    fn the_readme_worked_example_signs_as_documented() {
        let body = br#"{"id":"evt-1","channel":"web","type":"chat.message","chat_id":"c-42","from":"customer","text":"Hi"}"#;
        assert_eq!(
            sign(b"example-secret-0123456789", 1_767_225_600, body),
            "sha256=12d6586feed64af16143a6322ec6926509189aa6129437b3eedb2545b997806e"
        );
    }

    #[test]
    fn plans_follow_the_chat() {
        use ChatEventKind::*;
        assert_eq!(plan(Started, Sender::Customer, None), TaskPlan::Create);
        assert_eq!(
            plan(Started, Sender::Customer, Some(TaskState::Offered)),
            TaskPlan::Keep
        );
        assert_eq!(
            plan(Started, Sender::Customer, Some(TaskState::WrapUp)),
            TaskPlan::Create
        );
        assert_eq!(plan(Message, Sender::Customer, None), TaskPlan::Create);
        assert_eq!(plan(Message, Sender::Bot, None), TaskPlan::Keep);
        // Wrapped up by its agent (who can no longer answer in it): a new
        // task, as a new start makes.
        assert_eq!(
            plan(Message, Sender::Customer, Some(TaskState::WrapUp)),
            TaskPlan::Create
        );
        assert_eq!(
            plan(Message, Sender::Agent, Some(TaskState::WrapUp)),
            TaskPlan::Keep
        );
        assert_eq!(
            plan(Message, Sender::Customer, Some(TaskState::Concluded)),
            TaskPlan::Create
        );
        assert_eq!(
            plan(CustomerLeft, Sender::Customer, Some(TaskState::Queued)),
            TaskPlan::CustomerLeft
        );
        assert_eq!(
            plan(Ended, Sender::Customer, Some(TaskState::Cancelled)),
            TaskPlan::Keep
        );
        assert_eq!(plan(Ended, Sender::Customer, None), TaskPlan::Keep);
    }

    #[test]
    fn a_leave_sent_before_the_customers_latest_line_changes_nothing() {
        assert!(leave_overtaken(Some(100), Some(101)));
        // At or after the latest line, or with no line: the customer left.
        assert!(!leave_overtaken(Some(100), Some(100)));
        assert!(!leave_overtaken(Some(100), Some(99)));
        assert!(!leave_overtaken(Some(100), None));
        // No clock of the chat system's to compare: the leave counts.
        assert!(!leave_overtaken(None, Some(1)));
    }

    #[test]
    fn a_customer_is_back_by_a_line_of_theirs_or_a_new_start() {
        assert!(customer_is_back(ChatEventKind::Message, Sender::Customer));
        assert!(customer_is_back(ChatEventKind::Started, Sender::Customer));
        assert!(!customer_is_back(ChatEventKind::Message, Sender::Agent));
        assert!(!customer_is_back(ChatEventKind::Message, Sender::Bot));
        assert!(!customer_is_back(
            ChatEventKind::CustomerLeft,
            Sender::Customer
        ));
        assert!(!customer_is_back(ChatEventKind::Ended, Sender::Customer));
    }

    #[test]
    fn only_what_was_written_before_a_close_is_stale() {
        // Sent before (or at) the close: stale.
        assert!(written_before_close("ended", Some(100), Some(100), false));
        assert!(written_before_close("left", Some(100), Some(50), false));
        // Sent after the close: a new conversation.
        assert!(!written_before_close("ended", Some(100), Some(101), false));
        // No time: stale only while the close made the chat and nothing else.
        assert!(written_before_close("ended", Some(100), None, true));
        assert!(!written_before_close("ended", Some(100), None, false));
        // An open chat is never closed.
        assert!(!written_before_close("open", None, Some(1), true));
    }

    #[test]
    fn only_a_start_or_the_customers_own_line_speaks_for_them() {
        assert!(speaks_for_customer(
            ChatEventKind::Started,
            Sender::Customer
        ));
        // A start tells of the customer whoever the platform says sent it.
        assert!(speaks_for_customer(ChatEventKind::Started, Sender::Bot));
        assert!(speaks_for_customer(
            ChatEventKind::Message,
            Sender::Customer
        ));
        assert!(speaks_for_customer(
            ChatEventKind::CustomerLeft,
            Sender::Customer
        ));
        assert!(!speaks_for_customer(ChatEventKind::Message, Sender::Bot));
        assert!(!speaks_for_customer(ChatEventKind::Message, Sender::Agent));
        assert!(!speaks_for_customer(ChatEventKind::Ended, Sender::Agent));
    }

    #[test]
    fn only_a_stamped_leave_in_an_open_chat_is_checked_for_being_overtaken() {
        assert!(leave_to_check(ChatEventKind::CustomerLeft, "open", Some(1)));
        // No `sent_at`: taken as it comes.
        assert!(!leave_to_check(ChatEventKind::CustomerLeft, "open", None));
        // Already left or ended: nothing to overtake.
        assert!(!leave_to_check(
            ChatEventKind::CustomerLeft,
            "left",
            Some(1)
        ));
        assert!(!leave_to_check(
            ChatEventKind::CustomerLeft,
            "ended",
            Some(1)
        ));
        assert!(!leave_to_check(ChatEventKind::Ended, "open", Some(1)));
        assert!(!leave_to_check(ChatEventKind::Message, "open", Some(1)));
    }

    #[test]
    fn an_overtaken_leave_keeps_the_task_and_a_late_line_joins_the_last_one() {
        use TaskPlan::*;
        // Overtaken: the customer is still in the chat, whatever was planned.
        assert_eq!(settled_plan(CustomerLeft, true, false, true), Keep);
        assert_eq!(settled_plan(CustomerLeft, true, true, true), Keep);
        // Late, with a task: no new conversation.
        assert_eq!(settled_plan(Create, false, true, true), Keep);
        // Late, with no task yet: the task is made (and cancelled by the caller).
        assert_eq!(settled_plan(Create, false, true, false), Create);
        // Late leaves and lines that keep are as planned.
        assert_eq!(settled_plan(CustomerLeft, false, true, true), CustomerLeft);
        assert_eq!(settled_plan(Keep, false, true, true), Keep);
        // In time: as planned.
        for p in [Keep, Create, CustomerLeft] {
            assert_eq!(settled_plan(p, false, false, true), p);
            assert_eq!(settled_plan(p, false, false, false), p);
        }
    }

    #[test]
    fn the_customer_returns_to_a_chat_they_left_while_their_task_is_held() {
        let (m, s) = (ChatEventKind::Message, ChatEventKind::Started);
        assert!(customer_returns(
            m,
            Sender::Customer,
            "left",
            TaskState::Connected,
            false
        ));
        assert!(customer_returns(
            s,
            Sender::Bot,
            "left",
            TaskState::WrapUp,
            false
        ));
        assert!(customer_returns(
            m,
            Sender::Customer,
            "left",
            TaskState::Queued,
            false
        ));
        // Written before the leave (late), or the chat not left.
        assert!(!customer_returns(
            m,
            Sender::Customer,
            "left",
            TaskState::Connected,
            true
        ));
        assert!(!customer_returns(
            m,
            Sender::Customer,
            "open",
            TaskState::Connected,
            false
        ));
        assert!(!customer_returns(
            m,
            Sender::Customer,
            "ended",
            TaskState::Connected,
            false
        ));
        // The task is over, or it is not the customer's line.
        assert!(!customer_returns(
            m,
            Sender::Customer,
            "left",
            TaskState::Concluded,
            false
        ));
        assert!(!customer_returns(
            m,
            Sender::Customer,
            "left",
            TaskState::Cancelled,
            false
        ));
        assert!(!customer_returns(
            m,
            Sender::Agent,
            "left",
            TaskState::Connected,
            false
        ));
        assert!(!customer_returns(
            ChatEventKind::CustomerLeft,
            Sender::Customer,
            "left",
            TaskState::Connected,
            false
        ));
    }

    #[test]
    fn a_reply_is_retried_after_a_doubling_delay_of_at_most_256_seconds() {
        assert_eq!(reply_retry_delay(0), 1_000);
        assert_eq!(reply_retry_delay(1), 2_000);
        assert_eq!(reply_retry_delay(2), 4_000);
        assert_eq!(reply_retry_delay(8), 256_000);
        assert_eq!(reply_retry_delay(9), 256_000);
        assert_eq!(reply_retry_delay(i64::MAX), 256_000);
        assert_eq!(reply_retry_delay(-3), 1_000);
    }

    #[test]
    fn the_room_follows_the_holder() {
        assert_eq!(
            desired_membership(TaskState::Connected, Some("alice")),
            Membership::Holder("alice".into())
        );
        assert_eq!(
            desired_membership(TaskState::Queued, None),
            Membership::Nobody
        );
        assert_eq!(
            desired_membership(TaskState::Offered, None),
            Membership::Nobody
        );
        assert_eq!(
            desired_membership(TaskState::WrapUp, None),
            Membership::Keep
        );
        assert_eq!(
            desired_membership(TaskState::WrapUp, Some("alice")),
            Membership::Keep
        );
        assert_eq!(
            desired_membership(TaskState::Concluded, None),
            Membership::Nobody
        );
        assert_eq!(
            desired_membership(TaskState::Cancelled, None),
            Membership::Nobody
        );
    }

    #[test]
    fn an_agents_line_after_the_task_is_over_joins_no_task() {
        assert!(line_joins_task(Sender::Agent, TaskState::Connected));
        assert!(line_joins_task(Sender::Agent, TaskState::WrapUp));
        assert!(!line_joins_task(Sender::Agent, TaskState::Concluded));
        assert!(!line_joins_task(Sender::Agent, TaskState::Cancelled));
        assert!(line_joins_task(Sender::Customer, TaskState::Concluded));
        assert!(line_joins_task(Sender::Bot, TaskState::Concluded));
    }

    #[test]
    fn chat_urls_encode_values_and_templates_are_checked() {
        assert_eq!(
            chat_url(
                "https://matrix.to/#/{room_id}",
                &[("room_id", "!abc:example.org")]
            ),
            "https://matrix.to/#/%21abc%3Aexample.org"
        );
        assert_eq!(
            chat_url(
                "https://chat.example.com/c/{chat_id}?a={agent_upn}",
                &[("chat_id", "a b/&"), ("agent_upn", "x@y")]
            ),
            "https://chat.example.com/c/a%20b%2F%26?a=x%40y"
        );
        assert!(check_url_template("https://x/{chat_id}").is_ok());
        assert!(check_url_template("javascript:alert(1)").is_err());
        assert!(
            check_url_template("https://x/{nope}")
                .unwrap_err()
                .contains("nope")
        );
        assert!(check_url_template("https://x/{chat_id").is_err());
    }

    #[test]
    fn a_sent_at_far_ahead_is_taken_as_received() {
        let now = 1_800_000_000_000;
        assert_eq!(bounded_sent_at(None, now), None);
        assert_eq!(bounded_sent_at(Some(now - 1), now), Some(now - 1));
        assert_eq!(
            bounded_sent_at(Some(now + MAX_CLOCK_AHEAD_MS), now),
            Some(now + MAX_CLOCK_AHEAD_MS)
        );
        assert_eq!(bounded_sent_at(Some(4_102_444_800_000), now), Some(now));
    }

    #[test]
    fn final_refusals_of_a_reply() {
        for s in [301, 302, 307, 400, 403, 404, 413, 422] {
            assert!(refusal_is_final(s), "{s}");
        }
        for s in [401, 408, 425, 429, 500, 502, 503, 504] {
            assert!(!refusal_is_final(s), "{s}");
        }
        assert!(matrix_refusal_is_final(413, "M_TOO_LARGE"));
        assert!(matrix_refusal_is_final(502, "M_TOO_LARGE"));
        assert!(matrix_refusal_is_final(403, "M_FORBIDDEN"));
        assert!(matrix_refusal_is_final(400, "M_BAD_JSON"));
        assert!(!matrix_refusal_is_final(429, "M_LIMIT_EXCEEDED"));
        assert!(!matrix_refusal_is_final(400, "M_LIMIT_EXCEEDED"));
        assert!(!matrix_refusal_is_final(502, ""));
        assert!(!matrix_refusal_is_final(401, "M_UNKNOWN_TOKEN"));
        assert!(matrix_refusal_is_final(413, ""));
    }

    #[test]
    fn only_the_customer_leaving_is_a_leave() {
        assert!(leave_is_customers(Some("@c:x"), Some("@c:x")));
        assert!(!leave_is_customers(Some("@other:x"), Some("@c:x")));
        // A webhook's leave names nobody; an unknown customer cannot be told apart.
        assert!(leave_is_customers(None, Some("@c:x")));
        assert!(leave_is_customers(Some("@c:x"), None));
    }

    #[test]
    fn a_line_too_long_is_cut_with_a_note() {
        let long = "L".repeat(50_000);
        let cut = clipped_line(&long);
        assert_eq!(cut.chars().count(), MAX_TEXT_CHARS);
        assert!(
            cut.ends_with("[cut: 50000 characters in all; the whole message is in the chat]"),
            "{}",
            &cut[cut.len() - 80..]
        );
        assert_eq!(clipped_line("short"), "short");
    }
}
