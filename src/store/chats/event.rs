//! One chat event applied inside a write transaction: the chat (created on
//! its first event, locked after), its task (created, completed, told the
//! customer left or came back), the message and the holders' events.
use crate::domain::chat::ChatEvent;
use crate::domain::customer::ResolvedCustomer;
use serde::Serialize;

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
    /// ([`Store::resolve_chat_customer`](crate::store::Store::resolve_chat_customer)); resolved in it otherwise, when
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
    /// The leave was someone else's than the customer's (another member of
    /// the room): nothing changed.
    #[serde(skip)]
    pub not_the_customer: bool,
    /// The customer wrote again after leaving (`task.customer_back`).
    #[serde(skip)]
    pub customer_back: bool,
    /// Offers that ended because the customer left.
    #[serde(skip)]
    pub offers_cancelled: usize,
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
        let from_customer = $crate::domain::chat::speaks_for_customer(e.kind, e.from);
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
        // Someone else than the customer leaving (another member of a
        // Matrix room, one declining its invite) changes nothing.
        let not_the_customer = e.kind == ChatEventKind::CustomerLeft
            && !$crate::domain::chat::leave_is_customers(input.sender_id.as_deref(), known_customer.user_id.as_deref());
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
            not_the_customer,
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
            // A leave the customer's own later line overtook (events out
            // of order) changes nothing: they are still in the chat.
            if !not_the_customer && $crate::domain::chat::leave_to_check(e.kind, &chat_state, e.sent_at) {
                let last_line: Option<i64> = sqlx::query_scalar(
                    // Only lines the chat system stamped: a line without
                    // `sent_at` has our clock's time (`received_at`), which
                    // says nothing against the chat system's.
                    "SELECT MAX(sent_at) FROM chat_messages WHERE chat_id = $1 AND sender = 'customer' AND sent_at <> received_at",
                )
                .bind(&chat_row)
                .fetch_one(&mut *$tx)
                .await?;
                outcome.leave_overtaken = $crate::domain::chat::leave_overtaken(e.sent_at, last_line);
            }
            // A late event joins the chat's last task.
            let planned = if not_the_customer {
                TaskPlan::Keep
            } else {
                $crate::domain::chat::settled_plan(
                    plan(e.kind, e.from, task.as_ref().map(|t| t.state)),
                    outcome.leave_overtaken,
                    late,
                    task.is_some(),
                )
            };
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
                        $crate::domain::chat::customer_returns(e.kind, e.from, &chat_state, t.state, late)
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
                ChatEventKind::CustomerLeft if !outcome.leave_overtaken && !not_the_customer => {
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
                // An agent's line after the task is over is the chat's,
                // not part of the saved task.
                let task_id = task
                    .as_ref()
                    .filter(|t| $crate::domain::chat::line_joins_task(e.from, t.state))
                    .map(|t| t.id.clone());
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
pub(super) use apply_chat_input;
