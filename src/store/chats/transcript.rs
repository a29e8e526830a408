//! A chat's lines: how a stored line is read, who it is shown from, what
//! the task's holders are told of a new one, and an IM task's transcript.
use crate::domain::chat::{ChatEvent, ChatEventKind, Sender};
use crate::domain::{Millis, millis_to_rfc3339};
use crate::store::rows::{RowExt, storable};
use crate::store::{Store, StoreResult, with_pool};
use serde::Serialize;
use serde_json::{Value, json};

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
pub(in crate::store) fn chat_message_from_row(r: &impl RowExt) -> StoreResult<ChatMessage> {
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

/// The name shown beside a message: the customer's; a bot's or an agent's
/// when their message event names one.
pub(in crate::store) fn sender_name(e: &ChatEvent) -> Option<String> {
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
pub(in crate::store) fn message_told(
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

impl Store {
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
}
