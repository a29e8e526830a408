//! Instant messaging storage: chat channels and their health, chats with
//! their IM tasks and transcripts, the events they were built from (a
//! sender's event id has one effect), the Matrix handoff membership, and the
//! keys that sign open-chat handles.
//!
//! Every chat event is applied in one transaction: the chat (created on its
//! first event, locked after), its task (created, or told the customer left),
//! the message, the holders' events, and either the delivery's id with the
//! answer given (webhook, JetStream) or the source's cursor under the
//! owner's fence (Matrix `since`).
use super::chat_sets::ChatSets;
use super::offers::{Tell, customer_left, lock_task, write_tell};
use super::ownership::{Fence, check_fence};
use super::rows::{RowExt, placeholders, storable};
use super::{Store, StoreError, StoreResult, Task, WriteTx, with_pool};
use crate::domain::chat::{
    ChatEvent, ChatEventKind, CustomerIdentity, Membership, Sender, TaskPlan, desired_membership,
    plan,
};
use crate::domain::customer::ResolvedCustomer;
use crate::domain::event::AgentEventKind;
use crate::domain::handle::SessionNow;
use crate::domain::id::new_id;
use crate::domain::{Millis, TaskState, millis_to_rfc3339, now_millis};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashSet;

/// A configured chat channel, registered at start.
#[derive(Debug, Clone)]
pub struct ChannelSpec {
    pub id: String,
    pub service_id: String,
    /// `webhook`, `matrix` or `jetstream`.
    pub kind: String,
    /// Where it reads from, without secrets.
    pub description: String,
}

/// A chat channel as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelState {
    pub id: String,
    pub service: String,
    pub kind: String,
    pub description: String,
    pub status: String,
    pub worker: Option<String>,
    pub last_event_at: Option<Millis>,
    pub synced_at: Option<Millis>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    pub events_total: i64,
    pub duplicates_total: i64,
    pub errors_total: i64,
    /// Messages in the channel's transcripts (all time).
    pub messages_total: i64,
    pub chats_total: i64,
    /// Chats whose task is waiting, offered or connected.
    pub chats_live: i64,
    pub updated_at: Millis,
}

/// One event to apply, with what was worked out before the transaction.
#[derive(Debug, Clone)]
pub struct ChatInput {
    pub event: ChatEvent,
    /// The message's id at the source (the Matrix event id; the event id of
    /// a delivery): a message is stored once per chat.
    pub message_ref: String,
    /// Who sent it on the platform (a Matrix user id), if known.
    pub sender_id: Option<String>,
    /// The customer, if resolved before the transaction
    /// ([`Store::resolve_chat_customer`]); resolved in it otherwise, when
    /// the event creates a task.
    pub customer: Option<ResolvedCustomer>,
}

/// What applying one event did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatOutcome {
    /// The chat's id on the platform.
    pub chat_id: String,
    /// The chat's task after the event.
    pub task_id: Option<String>,
    pub task_created: bool,
    /// The message stored, if the event carried one.
    pub message_id: Option<String>,
    /// The message was stored before (a repeated delivery from the source).
    pub duplicate_message: bool,
    /// The customer's leaving cancelled the waiting task.
    pub task_cancelled: bool,
    /// A `chat.customer_left` sent before a line the customer wrote (taken
    /// in first): the customer is still in the chat, nothing changed.
    #[serde(skip)]
    pub leave_overtaken: bool,
    /// The customer wrote again after leaving (`task.customer_back`).
    #[serde(skip)]
    pub customer_back: bool,
    /// Offers that ended because the customer left.
    #[serde(skip)]
    pub offers_cancelled: usize,
}

/// One transaction's worth of a pulled channel's events (Matrix), with the
/// cursor after them.
#[derive(Debug, Clone)]
pub struct ChatBatch {
    pub channel_id: String,
    pub service_id: String,
    pub fence: Fence,
    pub cursor: Option<String>,
    pub inputs: Vec<ChatInput>,
}

/// The answer to a delivery (webhook or JetStream): stored with its event
/// id, given again for a repeated delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    /// 201 when the event created a task, else 200.
    pub status: u16,
    pub body: Value,
    /// This delivery repeated an event already applied: nothing changed.
    pub replay: bool,
    /// Offers that ended because the customer left (none for a replay).
    pub offers_cancelled: usize,
}

/// A delivered event waiting to be applied with others
/// ([`Store::apply_chat_deliveries`]).
#[derive(Debug, Clone)]
pub struct ChatDelivery {
    pub service_id: String,
    pub input: ChatInput,
    /// Of the delivery's raw body: a reused event id with other content is refused.
    pub content_hash: String,
}

/// Whether applying an event of `kind` may write a task change beyond the
/// task's creation (the customer left: `task.customer_left`, a cancel; the
/// customer back: `task.customer_back`), for
/// the webhook deliverers to be woken after the commit.
fn records_change(kind: ChatEventKind, outcome: &ChatOutcome) -> bool {
    matches!(kind, ChatEventKind::CustomerLeft | ChatEventKind::Ended) || outcome.customer_back
}

/// The answer to a delivered event: 201 when it created a task, else 200.
fn delivery_answer(e: &ChatEvent, outcome: &ChatOutcome) -> (u16, Value) {
    let status: u16 = if outcome.task_created { 201 } else { 200 };
    let mut body = json!({
        "event": e.id,
        "type": e.kind,
        "chat_id": e.chat_id,
        "task_id": outcome.task_id,
        "task_created": outcome.task_created,
        "message_id": outcome.message_id,
        "customer_left": matches!(e.kind, ChatEventKind::CustomerLeft | ChatEventKind::Ended)
            && !outcome.leave_overtaken,
    });
    if outcome.leave_overtaken {
        body["leave_overtaken"] = Value::Bool(true);
    }
    (status, body)
}

/// The My Sessions entries of the parts that have task `$task` now
/// (offered or accepted, not saved) take its subject and customer again,
/// after a start completed it (the chat's first message came before its
/// start, so the offer was made before they were known).
macro_rules! sessions_follow_task {
    ($tx:expr, $task:expr, $now:expr) => {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE user_sessions SET subject = (SELECT subject FROM tasks WHERE id = $1),
                customer_name = (SELECT customer_name FROM tasks WHERE id = $1),
                customer_address = (SELECT customer_address FROM tasks WHERE id = $1), updated_at = $2
             WHERE task_id = $1 AND {}",
            $crate::store::sessions::HAS_THE_TASK
        )))
        .bind($task)
        .bind($now)
        .execute(&mut *$tx)
        .await?
    };
}
pub(crate) use sessions_follow_task;

/// A stored chat message, for the transcript.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub id: String,
    pub task_id: Option<String>,
    pub sender: String,
    pub sender_id: Option<String>,
    pub sender_name: Option<String>,
    pub text: String,
    pub sent_at: Millis,
    pub received_at: Millis,
    /// For replies relayed by Switchboard: `pending`, `sent` or `failed`.
    pub delivery: Option<String>,
}

/// A transcript line read with the columns `id, task_id, sender, sender_id,
/// sender_name, text, sent_at, received_at, delivery` (a chat's, or a call's
/// under those names).
pub(super) fn chat_message_from_row(r: &impl RowExt) -> StoreResult<ChatMessage> {
    Ok(ChatMessage {
        id: r.text("id")?,
        task_id: r.opt_text("task_id")?,
        sender: r.text("sender")?,
        sender_id: r.opt_text("sender_id")?,
        sender_name: r.opt_text("sender_name")?,
        text: r.text("text")?,
        sent_at: r.int("sent_at")?,
        received_at: r.int("received_at")?,
        delivery: r.opt_text("delivery")?,
    })
}

/// An agent's reply waiting to be relayed into its chat.
#[derive(Debug, Clone)]
pub struct PendingReply {
    pub id: String,
    /// The chat's id on the platform (a Matrix room id).
    pub chat_id: String,
    pub text: String,
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    pub sent_at: Millis,
    pub attempts: i64,
    /// The chat has ended since the reply was written: it cannot reach the
    /// customer any more.
    pub chat_ended: bool,
}

/// Rung when a reply is queued for relay, so this process's relay loops
/// look at once (others look every second).
pub fn relay_bell() -> &'static tokio::sync::watch::Sender<u64> {
    static BELL: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> = std::sync::OnceLock::new();
    BELL.get_or_init(|| tokio::sync::watch::channel(0).0)
}

/// The chat of an IM task.
#[derive(Debug, Clone, Serialize)]
pub struct ChatRecord {
    pub id: String,
    pub channel_id: String,
    /// The chat's id on the platform (a Matrix room id).
    pub external_id: String,
    pub state: String,
    pub task_id: Option<String>,
    pub member_agent: Option<String>,
    pub member_user: Option<String>,
    pub left_at: Option<Millis>,
    pub ended_at: Option<Millis>,
}

/// A Matrix room whose agent membership differs from what its task wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipChange {
    pub chat: String,
    pub room_id: String,
    /// Who was invited last (to remove, if another agent should be in).
    pub member_agent: Option<String>,
    pub member_user: Option<String>,
    /// Who should be in now (`None`: nobody).
    pub want_agent: Option<String>,
    /// Their Matrix user id (`None` when they have none configured).
    pub want_user: Option<String>,
}

/// Where an open-chat handle's session stands, with what the link opens.
#[derive(Debug, Clone)]
pub struct HandleTarget {
    pub now: SessionNow,
    pub chat: Option<ChatRecord>,
}

/// A user session's task, agent, state and result.
type SessionRow = (String, String, String, Option<String>);
/// A room, its member, its task's state, holder and the holder's Matrix id.
type MemberRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

/// A pending reply: id, chat, text, agent id and name, sent at, attempts,
/// the chat's state.
type ReplyRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    String,
);

const CHAT_COLUMNS: &str =
    "id, channel_id, external_id, state, task_id, member_agent, member_user, left_at, ended_at";

fn chat_from_row(r: &impl RowExt) -> StoreResult<ChatRecord> {
    Ok(ChatRecord {
        id: r.text("id")?,
        channel_id: r.text("channel_id")?,
        external_id: r.text("external_id")?,
        state: r.text("state")?,
        task_id: r.opt_text("task_id")?,
        member_agent: r.opt_text("member_agent")?,
        member_user: r.opt_text("member_user")?,
        left_at: r.opt_int("left_at")?,
        ended_at: r.opt_int("ended_at")?,
    })
}

/// What a task's parameters keep of the chat and of everything the channel
/// told about the customer (so no detail is lost, whatever the resolver
/// makes of it).
pub fn chat_params(channel_id: &str, event: &ChatEvent) -> Value {
    let mut p = json!({
        "channel": channel_id,
        "chat_id": event.chat_id,
        "customer": event.customer,
    });
    if let Some(l) = &event.language {
        p["language"] = json!(l);
    }
    if let Some(s) = &event.subject {
        p["subject"] = json!(s);
    }
    if !event.parameters.is_empty() {
        p["parameters"] = Value::Object(event.parameters.clone());
    }
    p
}

/// A task's parameters completed by a start's (a start that finds its
/// chat's task live).
pub(super) fn completed_params(params: &Value, e: &ChatEvent) -> Value {
    let mut params = params.clone();
    if let (Value::Object(have), Value::Object(more)) = (&mut params, chat_params(&e.channel, e)) {
        have.extend(more);
    }
    params
}

/// The customer a start brings to a task whose customer is anonymous.
pub(super) fn better_customer(
    input: &ChatInput,
    current: crate::domain::CustomerKind,
) -> Option<&crate::domain::customer::CustomerMatch> {
    input.customer.as_ref().map(|r| &r.matched).filter(|_| {
        current == crate::domain::CustomerKind::Anonymous && !input.event.customer.is_empty()
    })
}

/// The name shown beside a message: the customer's; a bot's or an agent's
/// when their message event names one.
pub(super) fn sender_name(e: &ChatEvent) -> Option<String> {
    match e.from {
        Sender::Customer => e.customer.name.clone(),
        _ => e
            .customer
            .name
            .clone()
            .filter(|_| e.kind == ChatEventKind::Message),
    }
}

/// What the holders of a task are told of a new message in its chat.
pub(super) fn message_told(
    e: &ChatEvent,
    task_id: &str,
    message_id: &str,
    sender_name: Option<&str>,
    text: &str,
    sent_at: Millis,
) -> Value {
    json!({
        "task_id": task_id,
        "chat_id": e.chat_id,
        "message_id": message_id,
        "from": e.from,
        "sender_name": sender_name,
        "text": storable(text),
        "sent_at": millis_to_rfc3339(sent_at),
    })
}

/// Inside a write transaction: applies one [`ChatInput`] of channel
/// `$channel` (service `$service`). Evaluates to a [`ChatOutcome`].
macro_rules! apply_chat_input {
    ($store:expr, $tx:expr, $tell:expr, $channel:expr, $service:expr, $input:expr, $now:expr) => {{
        let input: &ChatInput = $input;
        let channel: &str = $channel;
        let service: &str = $service;
        let now: Millis = $now;
        let e = &input.event;
        let identity = &e.customer;
        // The chat, created or found and locked in one statement (the
        // update of a found row locks it); a start also completes what the
        // chat knows of its customer.
        let fresh_id = new_id("cht");
        // A bot's or an agent's line says nothing of the customer.
        let from_customer = e.kind == ChatEventKind::Started || e.from == $crate::domain::chat::Sender::Customer;
        let row = sqlx::query(
            "INSERT INTO chats (id, channel_id, external_id, service_id, state, customer_user_id, customer_name,
                customer_email, customer_phone, language, created_at, updated_at)
             VALUES ($1, $2, $3, $4, 'open', $5, $6, $7, $8, $9, $10, $10)
             ON CONFLICT (channel_id, external_id) DO UPDATE SET
                customer_user_id = CASE WHEN $11 THEN COALESCE($12, chats.customer_user_id) ELSE chats.customer_user_id END,
                customer_name = CASE WHEN $11 THEN COALESCE(excluded.customer_name, chats.customer_name) ELSE chats.customer_name END,
                customer_email = CASE WHEN $11 THEN COALESCE(excluded.customer_email, chats.customer_email) ELSE chats.customer_email END,
                customer_phone = CASE WHEN $11 THEN COALESCE(excluded.customer_phone, chats.customer_phone) ELSE chats.customer_phone END,
                language = CASE WHEN $11 THEN COALESCE(excluded.language, chats.language) ELSE chats.language END,
                updated_at = CASE WHEN $11 THEN excluded.updated_at ELSE chats.updated_at END
             RETURNING id, task_id, state, messages_total, COALESCE(ended_at, left_at) AS closed_at,
                customer_user_id, customer_name, customer_email, customer_phone, language",
        )
        .bind(&fresh_id)
        .bind(channel)
        .bind(storable(&e.chat_id))
        .bind(service)
        .bind(identity.user_id.as_deref().or(input.sender_id.as_deref()).filter(|_| from_customer).map(storable))
        .bind(identity.name.as_deref().filter(|_| from_customer).map(storable))
        .bind(identity.email.as_deref().filter(|_| from_customer).map(storable))
        .bind(identity.phone.as_deref().filter(|_| from_customer).map(storable))
        .bind(e.language.as_deref())
        .bind(now)
        .bind(e.kind == ChatEventKind::Started)
        .bind(identity.user_id.as_deref().map(storable))
        .fetch_one(&mut *$tx)
        .await?;
        let chat_row = row.text("id")?;
        let chat_state = row.text("state")?;
        let closed_at = row.opt_int("closed_at")?;
        let mut messages_total = row.int("messages_total")?;
        // What the chat knows of its customer (from its start), for a task
        // made by an event that says nothing of them (a follow-up).
        let known_customer = $crate::domain::chat::CustomerIdentity {
            name: row.opt_text("customer_name")?,
            email: row.opt_text("customer_email")?,
            phone: row.opt_text("customer_phone")?,
            user_id: row.opt_text("customer_user_id")?,
        };
        let known_language = row.opt_text("language")?;
        // An event written before the chat closed opens no conversation
        // (see `written_before_close`); the chat stays closed.
        let late = $crate::domain::chat::written_before_close(&chat_state, closed_at, e.sent_at, messages_total == 0);
        let mut stale_open = false;
        // The customer writing again, after the leave, in a chat whose task
        // is still with its agent: they are back (the chat opens again).
        let mut customer_back = false;
        let mut task: Option<Task> = match row.opt_text("task_id")? {
            Some(id) => lock_task!($store, $tx, &id),
            None => None,
        };
        let mut outcome = ChatOutcome {
            chat_id: e.chat_id.clone(),
            task_id: task.as_ref().map(|t| t.id.clone()),
            ..ChatOutcome::default()
        };
        // A message the chat already has (the source delivered it again) changes nothing.
        let created_chat = chat_row == fresh_id;
        let known = if e.text.is_some() && !created_chat {
            let id: Option<String> = sqlx::query_scalar(
                "SELECT id FROM chat_messages WHERE chat_id = $1 AND external_id = $2",
            )
            .bind(&chat_row)
            .bind(storable(&input.message_ref))
            .fetch_optional(&mut *$tx)
            .await?;
            id
        } else {
            None
        };
        if let Some(id) = known {
            outcome.message_id = Some(id);
            outcome.duplicate_message = true;
        } else {
            let mut repeated: Option<String> = None;
            let mut planned = plan(e.kind, e.from, task.as_ref().map(|t| t.state));
            // A leave the customer's own later line overtook (events out
            // of order) changes nothing: they are still in the chat.
            if e.kind == ChatEventKind::CustomerLeft && chat_state == "open" && e.sent_at.is_some() {
                let last_line: Option<i64> = sqlx::query_scalar(
                    // Only lines the chat system stamped: a line without
                    // `sent_at` has our clock's time (`received_at`), which
                    // says nothing against the chat system's.
                    "SELECT MAX(sent_at) FROM chat_messages WHERE chat_id = $1 AND sender = 'customer' AND sent_at <> received_at",
                )
                .bind(&chat_row)
                .fetch_one(&mut *$tx)
                .await?;
                if $crate::domain::chat::leave_overtaken(e.sent_at, last_line) {
                    outcome.leave_overtaken = true;
                    planned = TaskPlan::Keep;
                }
            }
            if late && planned == TaskPlan::Create && task.is_some() {
                // It joins the chat's last task.
                planned = TaskPlan::Keep;
            }
            match planned {
                TaskPlan::Create => {
                    let (priority, _) = $crate::store::offers::service_routing!($tx, service);
                    // An event that says nothing of the customer (a line
                    // after the chat's task was wrapped up) is the customer
                    // the chat knows, about what its last task was about.
                    let follow_up = task.is_some() && identity.is_empty() && !known_customer.is_empty();
                    let mut said = std::borrow::Cow::Borrowed(e);
                    if follow_up {
                        let t = said.to_mut();
                        t.customer = known_customer.clone();
                        t.language = t.language.take().or(known_language.clone());
                    }
                    if e.subject.is_none()
                        && let Some(previous) = task.as_ref().and_then(|t| t.subject.clone())
                    {
                        said.to_mut().subject = Some(previous);
                    }
                    let e: &$crate::domain::chat::ChatEvent = &said;
                    // Resolved here when the caller did not (a message that opens a chat).
                    let resolved = match &input.customer {
                        Some(c) if !follow_up => c.clone(),
                        _ => $store.resolve_chat_customer(&e.customer, input.sender_id.as_deref()).await?,
                    };
                    let task_id = new_id("tsk");
                    let params = chat_params(channel, e).to_string();
                    let details = serde_json::to_string(&resolved.details).unwrap_or_else(|_| "{}".into());
                    let customer = &resolved.matched;
                    let sql = format!(
                        "INSERT INTO tasks (id, service_id, modality, state, priority, arrived_at, updated_at,
                            customer_kind, customer_ref, customer_name, customer_address, subject, params,
                            routed, task_priority, queued_at, customer_details, language, reached)
                         VALUES ($1, $2, 'im', 'queued', $3, $4, $4, $5, $6, $7, $8, $9, $10, $11, 0, $4, $12, $13, $14)
                         RETURNING {}",
                        crate::store::tasks::TASK_COLUMNS
                    );
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&task_id)
                    .bind(service)
                    .bind(i64::from(priority))
                    .bind(now)
                    .bind(customer.kind.as_str())
                    .bind(&customer.reference)
                    .bind(customer.name.as_deref().map(storable))
                    .bind(customer.address.as_deref().map(storable))
                    .bind(e.subject.as_deref().map(storable))
                    .bind(storable(&params))
                    .bind(true)
                    .bind(storable(&details))
                    .bind(e.language.as_deref())
                    // What the customer reached: the chat channel.
                    .bind(channel)
                    .fetch_one(&mut *$tx)
                    .await?;
                    // The database logs task.created (a trigger on tasks);
                    // the chat is linked to the task at the end. Lines
                    // written before it (a bot's greeting before the
                    // customer's first line) join it.
                    if task.is_none() && messages_total > 0 {
                        sqlx::query("UPDATE chat_messages SET task_id = $1 WHERE chat_id = $2 AND task_id IS NULL")
                            .bind(&task_id)
                            .bind(&chat_row)
                            .execute(&mut *$tx)
                            .await?;
                    }
                    outcome.task_created = true;
                    outcome.task_id = Some(task_id.clone());
                    let made = crate::store::tasks::task_from_row(&row)?;
                    if late {
                        let reason = if chat_state == "ended" { "chat_ended" } else { "customer_left" };
                        outcome.offers_cancelled = customer_left!($tx, $tell, made, reason, now);
                        outcome.task_cancelled = true;
                        stale_open = true;
                        task = lock_task!($store, $tx, &task_id);
                    } else {
                        task = Some(made);
                    }
                }
                TaskPlan::Keep => {
                    if let Some(t) = task.as_ref().filter(|t| {
                        !late && chat_state == "left" && !t.state.is_final()
                            && $crate::domain::chat::customer_is_back(e.kind, e.from)
                    }) {
                        customer_back = true;
                        let cleared = sqlx::query("UPDATE tasks SET customer_left_at = NULL, updated_at = $2 WHERE id = $1 AND customer_left_at IS NOT NULL")
                            .bind(&t.id)
                            .bind(now)
                            .execute(&mut *$tx)
                            .await?
                            .rows_affected();
                        if cleared > 0 {
                            outcome.customer_back = true;
                            // Told as the leave was: the holder's page, and
                            // subscribers of task changes.
                            let holders = $crate::store::events::holding_agents!($tx, &t.id);
                            for agent in &holders {
                                $tell.push(agent, $crate::domain::event::AgentEventKind::Task, &t.id,
                                    serde_json::json!({"task_id": t.id, "state": t.state, "reason": "customer_back"}));
                            }
                            $crate::store::offers::record_task_change!($tx, &t.id, "task.customer_back", None::<&str>, None::<&str>,
                                $crate::store::offers::change_payload(t, t.state, serde_json::json!({"reason": "customer_back"})), now);
                        }
                    }
                    // A start that finds the chat's task live repeats a
                    // line the chat has (the chat system started it again):
                    // that line is not stored twice.
                    if let (ChatEventKind::Started, Some(text), Some(live)) = (e.kind, e.text.as_deref(), task.as_ref()) {
                        repeated = sqlx::query_scalar(
                            "SELECT id FROM chat_messages WHERE chat_id = $1 AND task_id = $3 AND sender = 'customer' AND text = $2
                             ORDER BY seq LIMIT 1",
                        )
                        .bind(&chat_row)
                        .bind(storable(text))
                        .bind(&live.id)
                        .fetch_optional(&mut *$tx)
                        .await?;
                    }
                    // A start that arrives after the chat's first message
                    // (events taken out of order) completes the live task.
                    if let (ChatEventKind::Started, Some(t)) = (e.kind, task.as_ref().filter(|t| !t.state.is_final())) {
                        let params = $crate::store::chats::completed_params(&t.params, e);
                        let better = $crate::store::chats::better_customer(input, t.customer.kind);
                        sqlx::query(
                            "UPDATE tasks SET subject = COALESCE(subject, $2), params = $3,
                                customer_kind = COALESCE($4, customer_kind), customer_ref = COALESCE($5, customer_ref),
                                customer_name = COALESCE($6, customer_name), customer_address = COALESCE($7, customer_address),
                                updated_at = $8
                             WHERE id = $1",
                        )
                        .bind(&t.id)
                        .bind(e.subject.as_deref().map(storable))
                        .bind(storable(&params.to_string()))
                        .bind(better.map(|c| c.kind.as_str()))
                        .bind(better.and_then(|c| c.reference.clone()))
                        .bind(better.and_then(|c| c.name.as_deref().map(storable)))
                        .bind(better.and_then(|c| c.address.as_deref().map(storable)))
                        .bind(now)
                        .execute(&mut *$tx)
                        .await?;
                        $crate::store::chats::sessions_follow_task!($tx, &t.id, now);
                    }
                }
                TaskPlan::CustomerLeft => {
                    if let Some(t) = task.as_ref() {
                        let reason = if e.kind == ChatEventKind::Ended { "chat_ended" } else { "customer_left" };
                        outcome.task_cancelled = matches!(t.state, TaskState::Queued | TaskState::Offered);
                        outcome.offers_cancelled = customer_left!($tx, $tell, t, reason, now);
                    }
                }
            }
            match e.kind {
                // When it closed: by the chat system's clock where the event
                // says (late events are told apart by it), else now.
                ChatEventKind::CustomerLeft if !outcome.leave_overtaken => {
                    sqlx::query("UPDATE chats SET state = 'left', left_at = COALESCE(left_at, $3), updated_at = $2 WHERE id = $1")
                        .bind(&chat_row)
                        .bind(now)
                        .bind(e.sent_at.unwrap_or(now))
                        .execute(&mut *$tx)
                        .await?;
                }
                ChatEventKind::Ended => {
                    sqlx::query("UPDATE chats SET state = 'ended', ended_at = COALESCE(ended_at, $3), updated_at = $2 WHERE id = $1")
                        .bind(&chat_row)
                        .bind(now)
                        .bind(e.sent_at.unwrap_or(now))
                        .execute(&mut *$tx)
                        .await?;
                    // Replies still waiting to be relayed can reach nobody
                    // now: failed at once, told to whoever holds their task.
                    let failed: Vec<(String, Option<String>)> = sqlx::query_as(
                        "UPDATE chat_messages SET delivery = 'failed',
                            delivery_error = 'the chat ended before the reply was delivered'
                         WHERE chat_id = $1 AND delivery = 'pending' RETURNING id, task_id",
                    )
                    .bind(&chat_row)
                    .fetch_all(&mut *$tx)
                    .await?;
                    for (message_id, task_id) in &failed {
                        let Some(task_id) = task_id else { continue };
                        for agent in $crate::store::events::holding_agents!($tx, task_id) {
                            $tell.push(&agent, AgentEventKind::ChatMessage, task_id,
                                serde_json::json!({"task_id": task_id, "message_id": message_id, "delivery": "failed"}));
                        }
                    }
                }
                _ => {}
            }
            if let Some(id) = repeated {
                outcome.message_id = Some(id);
                outcome.duplicate_message = true;
            } else if let Some(text) = &e.text {
                messages_total += 1;
                let message_id = new_id("chm");
                let task_id = task.as_ref().map(|t| t.id.clone());
                let sender_name = $crate::store::chats::sender_name(e);
                let sent_at = e.sent_at.unwrap_or(now);
                sqlx::query(
                    "INSERT INTO chat_messages (id, chat_id, task_id, external_id, sender, sender_id, sender_name,
                        text, sent_at, received_at, seq)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&message_id)
                .bind(&chat_row)
                .bind(&task_id)
                .bind(storable(&input.message_ref))
                .bind(e.from.as_str())
                .bind(input.sender_id.as_deref().map(storable))
                .bind(sender_name.as_deref().map(storable))
                .bind(storable(text))
                .bind(sent_at)
                .bind(now)
                .bind(messages_total)
                .execute(&mut *$tx)
                .await?;
                if let Some(task_id) = &task_id {
                    if !outcome.task_created {
                        sqlx::query("UPDATE tasks SET updated_at = $1 WHERE id = $2")
                            .bind(now)
                            .bind(task_id)
                            .execute(&mut *$tx)
                            .await?;
                    }
                    // A task made by this event has nobody holding it yet.
                    let holders = if outcome.task_created {
                        Vec::new()
                    } else {
                        $crate::store::events::holding_agents!($tx, task_id)
                    };
                    for agent in holders {
                        $tell.push(&agent, AgentEventKind::ChatMessage, task_id,
                            $crate::store::chats::message_told(e, task_id, &message_id, sender_name.as_deref(), text, sent_at));
                    }
                }
                outcome.message_id = Some(message_id);
            }
            // The chat's link to a task made by this event, and its count of
            // messages, in one update.
            if outcome.task_created || e.text.is_some() || customer_back {
                let new_task = if outcome.task_created { outcome.task_id.as_deref() } else { None };
                let reopen = (new_task.is_some() && !stale_open) || customer_back;
                sqlx::query(
                    "UPDATE chats SET task_id = COALESCE($2, task_id),
                        state = CASE WHEN $3 THEN 'open' ELSE state END,
                        left_at = CASE WHEN $3 THEN NULL ELSE left_at END,
                        ended_at = CASE WHEN $3 THEN NULL ELSE ended_at END,
                        messages_total = $4, updated_at = $5
                     WHERE id = $1",
                )
                .bind(&chat_row)
                .bind(new_task)
                .bind(reopen)
                .bind(messages_total)
                .bind(now)
                .execute(&mut *$tx)
                .await?;
            }
        }
        outcome
    }};
}

impl Store {
    /// Resolves the customer of a chat, the one place where this happens:
    /// by the best address the channel gave (e-mail, else phone, else the
    /// platform's user id) and the given name.
    pub async fn resolve_chat_customer(
        &self,
        identity: &CustomerIdentity,
        sender_id: Option<&str>,
    ) -> StoreResult<ResolvedCustomer> {
        // The chat platform's user id is the customer's UPN / chat user id:
        // the directory resolves colleagues by it.
        let upn = identity.user_id.as_deref().or(sender_id).map(String::from);
        let full = crate::domain::customer::CustomerIdentity {
            name: identity.name.clone(),
            email: identity.email.clone(),
            phone: identity.phone.clone(),
            upn,
            address: identity.best_address().or(sender_id).map(String::from),
            ..Default::default()
        };
        // Lenient: a malformed field the channel sent is dropped, not fatal.
        let normal = full.normalize(None, false, "customer")?;
        self.resolve_identity(&normal).await
    }

    /// Registers (or updates) a configured chat channel; its cursor is kept.
    pub async fn register_chat_channel(&self, spec: &ChannelSpec) -> StoreResult<()> {
        let status = if spec.kind == "webhook" {
            "ready"
        } else {
            "waiting"
        };
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO chat_channels (id, service_id, kind, description, status, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, kind = excluded.kind,
                    description = excluded.description, updated_at = excluded.updated_at,
                    status = CASE WHEN excluded.kind = 'webhook' THEN 'ready' ELSE chat_channels.status END",
            )
            .bind(&spec.id)
            .bind(&spec.service_id)
            .bind(&spec.kind)
            .bind(&spec.description)
            .bind(status)
            .bind(now_millis())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records a channel's status as the worker serving it sees it;
    /// `caught_up` marks it in sync now.
    pub async fn set_chat_channel_status(
        &self,
        channel_id: &str,
        status: &str,
        worker: Option<&str>,
        caught_up: bool,
    ) -> StoreResult<()> {
        let now = now_millis();
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE chat_channels SET status = $2, worker = $3, updated_at = $4,
                    synced_at = CASE WHEN $5 THEN $4 ELSE synced_at END
                 WHERE id = $1",
            )
            .bind(channel_id)
            .bind(status)
            .bind(worker)
            .bind(now)
            .bind(caught_up)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records a failure of a channel (connection, sync, protocol); never secrets.
    pub async fn record_chat_channel_error(
        &self,
        channel_id: &str,
        error: &str,
    ) -> StoreResult<()> {
        let now = now_millis();
        let error: String = error.chars().take(1000).collect();
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE chat_channels SET status = 'error', last_error = $2, last_error_at = $3,
                    errors_total = errors_total + 1, updated_at = $3 WHERE id = $1",
            )
            .bind(channel_id)
            .bind(&error)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records an event a channel could not apply (malformed, or for
    /// another channel), keeping the channel's status.
    pub async fn record_chat_event_refused(&self, channel_id: &str, why: &str) -> StoreResult<()> {
        let now = now_millis();
        let why: String = why.chars().take(1000).collect();
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE chat_channels SET last_error = $2, last_error_at = $3, errors_total = errors_total + 1,
                    updated_at = $3 WHERE id = $1",
            )
            .bind(channel_id)
            .bind(&why)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Counts an event a channel delivered again (a webhook replay).
    pub async fn count_chat_duplicate(&self, channel_id: &str) -> StoreResult<()> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE chat_channels SET duplicates_total = duplicates_total + 1 WHERE id = $1")
                .bind(channel_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Every chat channel with its health and counts.
    pub async fn chat_channels(&self) -> StoreResult<Vec<ChannelState>> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT ch.id, ch.service_id, ch.kind, ch.description, ch.status, ch.worker,
                    COALESCE((SELECT max(e.received_at) FROM chat_events e WHERE e.channel_id = ch.id), ch.last_event_at) AS last_event_at,
                    ch.synced_at, ch.last_error, ch.last_error_at,
                    ch.events_total + (SELECT count(*) FROM chat_events e WHERE e.channel_id = ch.id) AS events_total,
                    ch.duplicates_total, ch.errors_total, ch.updated_at,
                    (SELECT count(*) FROM chat_messages m JOIN chats c ON c.id = m.chat_id WHERE c.channel_id = ch.id) AS messages_total,
                    (SELECT count(*) FROM chats c WHERE c.channel_id = ch.id) AS chats_total,
                    (SELECT count(*) FROM chats c JOIN tasks t ON t.id = c.task_id
                      WHERE c.channel_id = ch.id AND t.state IN ('queued', 'offered', 'connected')) AS chats_live
                 FROM chat_channels ch ORDER BY ch.id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(ChannelState {
                        id: r.text("id")?,
                        service: r.text("service_id")?,
                        kind: r.text("kind")?,
                        description: r.text("description")?,
                        status: r.text("status")?,
                        worker: r.opt_text("worker")?,
                        last_event_at: r.opt_int("last_event_at")?,
                        synced_at: r.opt_int("synced_at")?,
                        last_error: r.opt_text("last_error")?,
                        last_error_at: r.opt_int("last_error_at")?,
                        events_total: r.int("events_total")?,
                        duplicates_total: r.int("duplicates_total")?,
                        errors_total: r.int("errors_total")?,
                        messages_total: r.int("messages_total")?,
                        chats_total: r.int("chats_total")?,
                        chats_live: r.int("chats_live")?,
                        updated_at: r.int("updated_at")?,
                    })
                })
                .collect()
        })
    }

    /// The committed cursor of a pulled channel (Matrix `since`).
    pub async fn chat_cursor(&self, channel_id: &str) -> StoreResult<Option<String>> {
        with_pool!(self, pool => {
            let v: Option<Option<String>> = sqlx::query_scalar("SELECT cursor FROM chat_channels WHERE id = $1")
                .bind(channel_id)
                .fetch_optional(pool)
                .await?;
            v.ok_or_else(|| StoreError::NotFound(format!("chat channel '{channel_id}'")))
        })
    }

    /// The answer stored for a delivery's event id: (content hash, status, body).
    async fn stored_delivery(
        &self,
        channel_id: &str,
        event_id: &str,
    ) -> StoreResult<Option<(String, u16, Value)>> {
        let row: Option<(String, i64, String)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT content_hash, status, response FROM chat_events WHERE channel_id = $1 AND event_id = $2")
                .bind(channel_id)
                .bind(event_id)
                .fetch_optional(pool)
                .await?
        });
        match row {
            None => Ok(None),
            Some((hash, status, body)) => {
                let body = serde_json::from_str(&body)
                    .map_err(|e| StoreError::Corrupt(format!("stored chat event answer: {e}")))?;
                Ok(Some((hash, u16::try_from(status).unwrap_or(200), body)))
            }
        }
    }

    fn replay_of(
        &self,
        stored: (String, u16, Value),
        content_hash: &str,
        event_id: &str,
    ) -> StoreResult<Delivered> {
        let (hash, status, body) = stored;
        if hash != content_hash {
            return Err(StoreError::Closed {
                code: "event_id_reused",
                message: format!(
                    "event id '{}' was already used for a different event: give every event its own id",
                    crate::domain::clip(event_id, 80)
                ),
            });
        }
        Ok(Delivered {
            status,
            body,
            replay: true,
            offers_cancelled: 0,
        })
    }

    /// Applies several delivered events (webhook deliveries that arrived
    /// together) in one transaction, each exactly once and in the order
    /// given for each chat, answering each as [`Store::apply_chat_delivery`]
    /// would: repeated ids get the first answer. Should anything fail, the
    /// transaction is rolled back and each event is applied on its own, so
    /// one bad event costs only itself.
    pub async fn apply_chat_deliveries(
        &self,
        jobs: &[ChatDelivery],
    ) -> Vec<StoreResult<Delivered>> {
        // One event alone: at once on SQLite; on PostgreSQL by the same
        // set-wise statements as a batch.
        if jobs.len() == 1 && self.backend() == super::Backend::Sqlite {
            let j = &jobs[0];
            return vec![
                self.apply_chat_delivery(&j.service_id, &j.input, &j.content_hash)
                    .await,
            ];
        }
        match self.try_apply_chat_deliveries(jobs).await {
            Ok(answers) => {
                let mut out = Vec::with_capacity(jobs.len());
                for (job, answer) in jobs.iter().zip(answers) {
                    out.push(match answer {
                        Some(delivered) => Ok(delivered),
                        // Applied earlier (or earlier in this batch): its first answer.
                        None => match self
                            .stored_delivery(&job.input.event.channel, &job.input.event.id)
                            .await
                        {
                            Ok(Some(stored)) => {
                                self.replay_of(stored, &job.content_hash, &job.input.event.id)
                            }
                            Ok(None) => Err(StoreError::Conflict(
                                "the event was being applied concurrently: send it again".into(),
                            )),
                            Err(e) => Err(e),
                        },
                    });
                }
                out
            }
            Err(e) => {
                tracing::debug!(events = jobs.len(), error = %e, "a batch of chat events failed; applying them one by one");
                let mut out = Vec::with_capacity(jobs.len());
                for j in jobs {
                    out.push(
                        self.apply_chat_delivery(&j.service_id, &j.input, &j.content_hash)
                            .await,
                    );
                }
                out
            }
        }
    }

    /// One transaction for a batch: `None` for an event applied before (or
    /// earlier in the batch), to be answered from its stored answer.
    async fn try_apply_chat_deliveries(
        &self,
        jobs: &[ChatDelivery],
    ) -> StoreResult<Vec<Option<Delivered>>> {
        // Applied before: one look per channel.
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        let mut channels: Vec<&str> = jobs
            .iter()
            .map(|j| j.input.event.channel.as_str())
            .collect();
        channels.sort_unstable();
        channels.dedup();
        for channel in channels {
            let ids: Vec<&str> = jobs
                .iter()
                .filter(|j| j.input.event.channel == channel)
                .map(|j| j.input.event.id.as_str())
                .collect();
            let ids: Vec<String> = ids.iter().map(|id| storable(id).into_owned()).collect();
            let known: Vec<String> = match self {
                // One statement shape whatever the batch's size; one primary
                // key lookup per id (a plan made while the table was small
                // read every event of the channel instead).
                Store::Postgres(pool, _) => sqlx::query_scalar(
                    "SELECT v.id FROM unnest($2::text[]) AS v(id)
                     CROSS JOIN LATERAL (SELECT 1 FROM chat_events e
                                         WHERE e.channel_id = $1 AND e.event_id = v.id LIMIT 1) AS known",
                )
                .bind(channel)
                .bind(&ids)
                .fetch_all(pool)
                .await?,
                Store::Sqlite(pool, _) => {
                    let sql = format!(
                        "SELECT event_id FROM chat_events WHERE channel_id = $1 AND event_id IN ({})",
                        placeholders(2, ids.len())
                    );
                    let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(channel);
                    for id in &ids {
                        q = q.bind(id);
                    }
                    q.fetch_all(pool).await?
                }
            };
            for id in known {
                if let Some(j) = jobs.iter().find(|j| {
                    j.input.event.channel == channel && storable(&j.input.event.id) == id.as_str()
                }) {
                    seen.insert((j.input.event.channel.as_str(), j.input.event.id.as_str()));
                }
            }
        }
        // In arrival order, the first delivery of each id is the one applied;
        // a later one (or one applied before) is answered from the store.
        let skip: Vec<bool> = jobs
            .iter()
            .map(|j| !seen.insert((j.input.event.channel.as_str(), j.input.event.id.as_str())))
            .collect();
        // Each chat's events in the order given; chats in one order in
        // every batch, so batches lock chats (and their tasks) in the same
        // order (the set-wise path locks them all first, in this order).
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&jobs[a].input.event, &jobs[b].input.event);
            (x.channel.as_str(), x.chat_id.as_str()).cmp(&(y.channel.as_str(), y.chat_id.as_str()))
        });
        let now = now_millis();
        let mut tell = Tell::default();
        let mut answers: Vec<Option<Delivered>> = (0..jobs.len()).map(|_| None).collect();
        let mut woke = false;
        let mut changed = false;
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let order: Vec<usize> = order.into_iter().filter(|&i| !skip[i]).collect();
            // Set-wise where it can (PostgreSQL), event by event for the rest.
            let sets = ChatSets::apply_chat_sets(&mut *tx, self, jobs, &order, now, &mut tell).await?;
            let mut outcomes = sets.outcomes;
            for i in sets.left {
                let job = &jobs[i];
                let outcome = apply_chat_input!(self, tx, tell, &job.input.event.channel, &job.service_id, &job.input, now);
                outcomes.push((i, outcome));
            }
            let mut applied: Vec<(usize, u16, String)> = Vec::new();
            for (i, outcome) in outcomes {
                let e = &jobs[i].input.event;
                woke |= outcome.task_created || outcome.task_cancelled;
                changed |= records_change(e.kind, &outcome);
                let (status, body) = delivery_answer(e, &outcome);
                applied.push((i, status, body.to_string()));
                answers[i] = Some(Delivered { status, body, replay: false, offers_cancelled: outcome.offers_cancelled });
            }
            for chunk in applied.chunks(100) {
                let mut sql = String::from(
                    "INSERT INTO chat_events (channel_id, event_id, kind, content_hash, status, response, received_at) VALUES ",
                );
                let rows: Vec<String> = (0..chunk.len()).map(|k| format!("({})", placeholders(k * 7 + 1, 7))).collect();
                sql.push_str(&rows.join(", "));
                sql.push_str(" ON CONFLICT (channel_id, event_id) DO NOTHING");
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (i, status, body) in chunk {
                    let job = &jobs[*i];
                    let e = &job.input.event;
                    q = q
                        .bind(&e.channel)
                        .bind(storable(&e.id))
                        .bind(e.kind.as_str())
                        .bind(&job.content_hash)
                        .bind(i64::from(*status))
                        .bind(body)
                        .bind(now);
                }
                if q.execute(&mut *tx).await?.rows_affected() != chunk.len() as u64 {
                    // Another worker applied one of them meanwhile: undo all,
                    // and let each be applied (or answered) on its own.
                    tx.rollback().await?;
                    return Err(StoreError::Conflict("a chat event of the batch was applied concurrently".into()));
                }
            }
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            told
        });
        self.ring_agents(&told);
        if woke {
            self.wake_router();
        }
        if changed {
            self.ring_webhooks();
        }
        Ok(answers)
    }

    /// Applies a delivered event (webhook or JetStream) exactly once: a
    /// repeated delivery of the same event id changes nothing and gets the
    /// first answer; a different event under a used id is refused.
    pub async fn apply_chat_delivery(
        &self,
        service_id: &str,
        input: &ChatInput,
        content_hash: &str,
    ) -> StoreResult<Delivered> {
        let e = &input.event;
        if let Some(stored) = self.stored_delivery(&e.channel, &e.id).await? {
            return self.replay_of(stored, content_hash, &e.id);
        }
        let now = now_millis();
        let mut tell = Tell::default();
        let applied = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let outcome = apply_chat_input!(self, tx, tell, &e.channel, service_id, input, now);
            let (status, body) = delivery_answer(e, &outcome);
            let inserted = sqlx::query(
                "INSERT INTO chat_events (channel_id, event_id, kind, content_hash, status, response, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (channel_id, event_id) DO NOTHING",
            )
            .bind(&e.channel)
            .bind(storable(&e.id))
            .bind(e.kind.as_str())
            .bind(content_hash)
            .bind(i64::from(status))
            .bind(body.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // The same event was applied concurrently (another worker,
                // another delivery): this one changes nothing.
                tx.rollback().await?;
                None
            } else {
                // No channel counter here: one row updated by every delivery
                // would serialise them all on its lock (through the commit).
                // Deliveries are counted from `chat_events`.
                let told = write_tell!(self, tx, tell, now);
                tx.commit().await?;
                Some((Delivered { status, body, replay: false, offers_cancelled: outcome.offers_cancelled }, told, outcome))
            }
        });
        match applied {
            Some((delivered, told, outcome)) => {
                self.ring_agents(&told);
                if outcome.task_created || outcome.task_cancelled {
                    self.wake_router();
                }
                if records_change(e.kind, &outcome) {
                    self.ring_webhooks();
                }
                Ok(delivered)
            }
            None => match self.stored_delivery(&e.channel, &e.id).await? {
                Some(stored) => self.replay_of(stored, content_hash, &e.id),
                None => Err(StoreError::Conflict(
                    "the event was being applied concurrently: send it again".into(),
                )),
            },
        }
    }

    /// Commits a pulled channel's batch exactly once: its chats, tasks,
    /// messages and the channel's cursor, in one transaction under the
    /// owner's fence (fails with `LeaseLost`, changing nothing, when another
    /// worker owns the channel now).
    pub async fn commit_chat_batch(&self, batch: &ChatBatch) -> StoreResult<Vec<ChatOutcome>> {
        let now = now_millis();
        let mut tell = Tell::default();
        let (outcomes, told) = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            check_fence!(self, tx, &batch.fence);
            let mut outcomes = Vec::with_capacity(batch.inputs.len());
            for input in &batch.inputs {
                let o = apply_chat_input!(self, tx, tell, &batch.channel_id, &batch.service_id, input, now);
                outcomes.push(o);
            }
            let duplicates = outcomes.iter().filter(|o| o.duplicate_message).count() as i64;
            let events = outcomes.len() as i64 - duplicates;
            sqlx::query(
                "UPDATE chat_channels SET cursor = COALESCE($2, cursor), events_total = events_total + $3,
                    duplicates_total = duplicates_total + $4,
                    last_event_at = CASE WHEN $3 > 0 THEN $5 ELSE last_event_at END, updated_at = $5
                 WHERE id = $1",
            )
            .bind(&batch.channel_id)
            .bind(&batch.cursor)
            .bind(events)
            .bind(duplicates)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (outcomes, told)
        });
        self.ring_agents(&told);
        if outcomes.iter().any(|o| o.task_created || o.task_cancelled) {
            self.wake_router();
        }
        if batch
            .inputs
            .iter()
            .zip(&outcomes)
            .any(|(i, o)| records_change(i.event.kind, o))
        {
            self.ring_webhooks();
        }
        Ok(outcomes)
    }

    /// The chat an IM task came from.
    pub async fn chat_of_task(&self, task: &Task) -> StoreResult<Option<ChatRecord>> {
        // By the database's links, not the task's parameters: those are
        // removed when the task ends (unless its service stores context).
        let sql = format!(
            "SELECT {CHAT_COLUMNS} FROM chats WHERE task_id = $1
             OR id = (SELECT chat_id FROM chat_messages WHERE task_id = $1 ORDER BY sent_at LIMIT 1)
             LIMIT 1"
        );
        with_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&task.id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(chat_from_row).transpose()
        })
    }

    /// The transcript of an IM task: the messages of its chat while it was
    /// the chat's task, in the order they were sent.
    pub async fn chat_transcript(&self, task_id: &str) -> StoreResult<Vec<ChatMessage>> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, task_id, sender, sender_id, sender_name, text, sent_at, received_at, delivery
                 FROM chat_messages WHERE task_id = $1 ORDER BY sent_at, seq, id",
            )
            .bind(task_id)
            .fetch_all(pool)
            .await?;
            rows.iter().map(chat_message_from_row).collect()
        })
    }

    /// The caller's connected session on a task (they hold it now).
    pub async fn holding_session(
        &self,
        task_id: &str,
        agent_id: &str,
    ) -> StoreResult<Option<String>> {
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar(
                "SELECT id FROM user_sessions WHERE task_id = $1 AND agent_id = $2 AND state = 'connected'
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(task_id)
            .bind(agent_id)
            .fetch_optional(pool)
            .await?)
        })
    }

    /// Where the session an open-chat handle names stands now, and the chat
    /// it opens.
    pub async fn handle_target(
        &self,
        task_id: &str,
        session_id: &str,
        agent_id: &str,
    ) -> StoreResult<HandleTarget> {
        let (session, holders): (Option<SessionRow>, Vec<String>) = with_pool!(self, pool => {
            let session = sqlx::query_as(
                "SELECT task_id, agent_id, state, result FROM user_sessions WHERE id = $1",
            )
            .bind(session_id)
            .fetch_optional(pool)
            .await?;
            let holders = sqlx::query_scalar(
                "SELECT agent_id FROM user_sessions WHERE task_id = $1 AND state = 'connected'",
            )
            .bind(task_id)
            .fetch_all(pool)
            .await?;
            (session, holders)
        });
        let ours = session
            .as_ref()
            .filter(|(t, a, _, _)| t == task_id && a == agent_id);
        let connected = ours.is_some_and(|(_, _, state, _)| state == "connected");
        let transferred = ours.is_some_and(|(_, _, _, r)| r.as_deref() == Some("transferred"));
        let task = self.task(task_id).await?;
        let moved_on = transferred
            || holders.iter().any(|h| h != agent_id)
            || (!connected && matches!(task.state, TaskState::Queued | TaskState::Offered));
        Ok(HandleTarget {
            now: SessionNow {
                connected,
                moved_on,
            },
            chat: self.chat_of_task(&task).await?,
        })
    }

    /// Agents' Matrix user ids: user id → agent id.
    pub async fn agent_matrix_users(
        &self,
    ) -> StoreResult<std::collections::HashMap<String, String>> {
        let rows: Vec<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT matrix_user_id, id FROM agents WHERE matrix_user_id IS NOT NULL")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().collect())
    }

    /// Whether a channel has seen a chat before.
    pub async fn chat_exists(&self, channel_id: &str, external_id: &str) -> StoreResult<bool> {
        with_pool!(self, pool => {
            let v: Option<String> = sqlx::query_scalar("SELECT id FROM chats WHERE channel_id = $1 AND external_id = $2")
                .bind(channel_id)
                .bind(external_id)
                .fetch_optional(pool)
                .await?;
            Ok(v.is_some())
        })
    }

    /// Sets an agent's Matrix user id (the handoff invites it).
    pub async fn set_agent_matrix_user(
        &self,
        agent_id: &str,
        user: Option<&str>,
    ) -> StoreResult<()> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE agents SET matrix_user_id = $2 WHERE id = $1")
                .bind(agent_id)
                .bind(user)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// An agent's Matrix user id, if set.
    pub async fn agent_matrix_user(&self, agent_id: &str) -> StoreResult<Option<String>> {
        with_pool!(self, pool => {
            let v: Option<Option<String>> = sqlx::query_scalar("SELECT matrix_user_id FROM agents WHERE id = $1")
                .bind(agent_id)
                .fetch_optional(pool)
                .await?;
            Ok(v.flatten())
        })
    }

    /// The rooms of a channel whose agent membership differs from what
    /// their live task wants ([`desired_membership`]): read from state, so
    /// it is right whatever order changes committed in.
    pub async fn membership_changes(&self, channel_id: &str) -> StoreResult<Vec<MembershipChange>> {
        let rows: Vec<MemberRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT c.id, c.external_id, c.member_agent, c.member_user, t.state AS task_state,
                        h.agent_id AS holder, a.matrix_user_id AS holder_user
                 FROM chats c JOIN tasks t ON t.id = c.task_id
                 LEFT JOIN user_sessions h ON h.task_id = t.id AND h.state = 'connected'
                 LEFT JOIN agents a ON a.id = h.agent_id
                 WHERE c.channel_id = $1 AND t.state IN ('queued', 'offered', 'connected')
                 ORDER BY c.id",
            )
            .bind(channel_id)
            .fetch_all(pool)
            .await?
        });
        let mut out = Vec::new();
        for (chat, room_id, member_agent, member_user, state, holder, holder_user) in rows {
            let state = TaskState::parse(&state)?;
            let (want_agent, want_user) = match desired_membership(state, holder.as_deref()) {
                Membership::Keep => continue,
                Membership::Nobody => (None, None),
                Membership::Holder(h) => (Some(h), holder_user),
            };
            if want_agent == member_agent {
                continue;
            }
            out.push(MembershipChange {
                chat,
                room_id,
                member_agent,
                member_user,
                want_agent,
                want_user,
            });
        }
        Ok(out)
    }

    /// Records who is in a room now (only while `fence` is current).
    pub async fn set_chat_member(
        &self,
        chat: &str,
        fence: &Fence,
        agent: Option<&str>,
        user: Option<&str>,
    ) -> StoreResult<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE chats SET member_agent = $4, member_user = $5, updated_at = $6 WHERE id = $1
                 AND EXISTS (SELECT 1 FROM ownership o WHERE o.kind = $2 AND o.id = chats.channel_id AND o.epoch = $3)",
            )
            .bind(chat)
            .bind(&fence.kind)
            .bind(fence.epoch)
            .bind(agent)
            .bind(user)
            .bind(now_millis())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// The keys that sign open-chat handles, newest first: (key id, key).
    /// One is made when there is none.
    pub async fn chat_handle_keys(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let mut keys = self.read_chat_handle_keys().await?;
        if keys.is_empty() {
            self.rotate_chat_handle_key(false, 0).await?;
            keys = self.read_chat_handle_keys().await?;
        }
        Ok(keys)
    }

    async fn read_chat_handle_keys(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let rows: Vec<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT name, value FROM server_keys WHERE name LIKE 'chat_handle:%' ORDER BY created_at DESC, name DESC",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(name, value)| {
                let kid = name.trim_start_matches("chat_handle:").to_string();
                let key = hex::decode(value)
                    .map_err(|e| StoreError::Corrupt(format!("chat handle key: {e}")))?;
                Ok((kid, key))
            })
            .collect()
    }

    /// Makes a new handle-signing key (the newest signs from now on). An
    /// older key is deleted once the key after it has signed for longer than
    /// `keep_ms` (every handle it signed has expired), or at once with
    /// `retire_all` (every handle made before stops working). Returns the
    /// new key's id.
    pub async fn rotate_chat_handle_key(
        &self,
        retire_all: bool,
        keep_ms: Millis,
    ) -> StoreResult<String> {
        use rand::Rng;
        let fresh: [u8; 32] = rand::rng().random();
        let kid = hex::encode(rand::rng().random::<[u8; 4]>());
        let now = now_millis();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut keys: Vec<(String, i64)> = sqlx::query_as(
                "SELECT name, created_at FROM server_keys WHERE name LIKE 'chat_handle:%' ORDER BY created_at, name",
            )
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO server_keys (name, value, created_at) VALUES ($1, $2, $3)")
                .bind(format!("chat_handle:{kid}"))
                .bind(hex::encode(fresh))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            keys.push((format!("chat_handle:{kid}"), now));
            for pair in keys.windows(2) {
                let (name, _) = &pair[0];
                let (_, successor_since) = pair[1];
                if retire_all || successor_since < now - keep_ms {
                    sqlx::query("DELETE FROM server_keys WHERE name = $1")
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(kid)
    }

    /// An agent's reply, to be relayed into the chat of an IM task they hold
    /// (channels with relay on): stored in the transcript as `agent`,
    /// pending delivery. Refused unless `agent` holds the task now.
    pub async fn queue_chat_reply(
        &self,
        task_id: &str,
        agent: &super::Agent,
        text: &str,
    ) -> StoreResult<ChatMessage> {
        let now = now_millis();
        let task = self.task(task_id).await?;
        let chat = self.chat_of_task(&task).await?.ok_or_else(|| {
            StoreError::Conflict(format!(
                "task '{task_id}' has no chat: it was not created by a chat channel"
            ))
        })?;
        let id = new_id("chm");
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let Some(task) = lock_task!(self, tx, task_id) else {
                return Err(StoreError::NotFound(format!("task '{task_id}'")));
            };
            let holds: Option<String> = sqlx::query_scalar(
                "SELECT id FROM user_sessions WHERE task_id = $1 AND agent_id = $2 AND state = 'connected'",
            )
            .bind(&task.id)
            .bind(&agent.id)
            .fetch_optional(&mut *tx)
            .await?;
            if holds.is_none() {
                return Err(StoreError::Forbidden(format!(
                    "you do not hold task '{task_id}' now: only its holder writes in its chat"
                )));
            }
            let seq: i64 = sqlx::query_scalar(
                "UPDATE chats SET messages_total = messages_total + 1, updated_at = $2 WHERE id = $1 RETURNING messages_total",
            )
            .bind(&chat.id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO chat_messages (id, chat_id, task_id, external_id, sender, sender_id, sender_name, text,
                    sent_at, received_at, seq, delivery, delivery_next_at)
                 VALUES ($1, $2, $3, $1, 'agent', $4, $5, $6, $7, $7, $8, 'pending', $7)",
            )
            .bind(&id)
            .bind(&chat.id)
            .bind(&task.id)
            .bind(&agent.id)
            .bind(&agent.name)
            .bind(storable(text))
            .bind(now)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE tasks SET updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(&task.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        relay_bell().send_modify(|n| *n = n.wrapping_add(1));
        Ok(ChatMessage {
            id,
            task_id: Some(task_id.to_string()),
            sender: "agent".into(),
            sender_id: Some(agent.id.clone()),
            sender_name: Some(agent.name.clone()),
            text: storable(text).into_owned(),
            sent_at: now,
            received_at: now,
            delivery: Some("pending".into()),
        })
    }

    /// Replies of a channel due for delivery, oldest first.
    pub async fn pending_chat_replies(
        &self,
        channel_id: &str,
        limit: u32,
    ) -> StoreResult<Vec<PendingReply>> {
        let now = now_millis();
        let rows: Vec<ReplyRow> = with_pool!(self, pool => {
            sqlx::query_as(
                // In the order they were written, per chat: a reply being
                // retried holds back the later ones of its chat.
                "SELECT m.id, c.external_id, m.text, m.sender_id, m.sender_name, m.sent_at, m.delivery_attempts, c.state
                 FROM chat_messages m JOIN chats c ON c.id = m.chat_id
                 WHERE m.delivery = 'pending' AND m.delivery_next_at <= $2 AND c.channel_id = $1
                   AND NOT EXISTS (SELECT 1 FROM chat_messages e
                                   WHERE e.chat_id = m.chat_id AND e.delivery = 'pending' AND e.seq < m.seq)
                 ORDER BY m.delivery_next_at, m.seq LIMIT $3",
            )
            .bind(channel_id)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(id, chat_id, text, agent_id, agent_name, sent_at, attempts, state)| {
                    PendingReply {
                        id,
                        chat_id,
                        text,
                        agent_id,
                        agent_name,
                        sent_at,
                        attempts,
                        chat_ended: state == "ended",
                    }
                },
            )
            .collect())
    }

    /// Records a reply's delivery: taken by the chat system, or failed
    /// (retried with a growing delay, given up after `max_attempts`; 0
    /// gives up at once). Only while `fence` (the channel's owner) is
    /// current. A reply given up is told to the agents holding its task (their
    /// page shows it failed); answers whether it was given up.
    pub async fn finish_chat_reply(
        &self,
        message_id: &str,
        fence: &Fence,
        outcome: Result<(), String>,
        max_attempts: i64,
    ) -> StoreResult<bool> {
        let now = now_millis();
        let mut given_up = false;
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            check_fence!(self, tx, fence);
            match &outcome {
                Ok(()) => {
                    sqlx::query("UPDATE chat_messages SET delivery = 'sent', delivery_error = NULL, delivery_attempts = delivery_attempts + 1 WHERE id = $1 AND delivery = 'pending'")
                        .bind(message_id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Vec::new()
                }
                Err(why) => {
                    let attempts: i64 = sqlx::query_scalar("SELECT delivery_attempts FROM chat_messages WHERE id = $1")
                        .bind(message_id)
                        .fetch_one(&mut *tx)
                        .await?;
                    let attempts = attempts + 1;
                    let delay = 1000i64.saturating_mul(1 << attempts.clamp(0, 8));
                    let why: String = why.chars().take(500).collect();
                    let after: Option<(Option<String>, String)> = sqlx::query_as(
                        "UPDATE chat_messages SET delivery_attempts = $2, delivery_error = $3, delivery_next_at = $4,
                            delivery = CASE WHEN $2 >= $5 THEN 'failed' ELSE 'pending' END
                         WHERE id = $1 AND delivery = 'pending'
                         RETURNING task_id, delivery",
                    )
                    .bind(message_id)
                    .bind(attempts)
                    .bind(&why)
                    .bind(now + delay)
                    .bind(max_attempts)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let mut tell = super::offers::Tell::default();
                    if let Some((task_id, delivery)) = &after
                        && delivery == "failed"
                    {
                        given_up = true;
                        if let Some(task_id) = task_id {
                            for agent in super::events::holding_agents!(tx, task_id) {
                                tell.push(&agent, AgentEventKind::ChatMessage, task_id,
                                    json!({"task_id": task_id, "message_id": message_id, "delivery": "failed"}));
                            }
                        }
                    }
                    let told = super::offers::write_tell!(self, tx, tell, now);
                    tx.commit().await?;
                    told
                }
            }
        });
        self.ring_agents(&told);
        Ok(given_up)
    }

    /// A relayed reply's delivery state: (`pending` | `sent` | `failed`, attempts, error).
    pub async fn chat_reply_delivery(
        &self,
        message_id: &str,
    ) -> StoreResult<(Option<String>, i64, Option<String>)> {
        with_pool!(self, pool => {
            let row: Option<(Option<String>, i64, Option<String>)> = sqlx::query_as(
                "SELECT delivery, delivery_attempts, delivery_error FROM chat_messages WHERE id = $1",
            )
            .bind(message_id)
            .fetch_optional(pool)
            .await?;
            row.ok_or_else(|| StoreError::NotFound(format!("chat message '{message_id}'")))
        })
    }

    /// Deletes delivery records older than `before` (a sender's repeat
    /// after that is a new event); returns how many.
    pub async fn prune_chat_events(&self, before: Millis) -> StoreResult<u64> {
        with_pool!(self, pool => {
            Ok(sqlx::query("DELETE FROM chat_events WHERE received_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected())
        })
    }
}
