//! Agents' replies relayed into their chat: queued in the transcript as
//! pending, picked up by the channel's relay loop in each chat's order,
//! retried with a growing delay and given up after the last attempt.
use super::transcript::ChatMessage;
use crate::domain::event::AgentEventKind;
use crate::domain::id::new_id;
use crate::domain::{Millis, now_millis};
use crate::store::offers::{Tell, lock_task, write_tell};
use crate::store::ownership::{Fence, check_fence};
use crate::store::rows::storable;
use crate::store::{Store, StoreError, StoreResult, WriteTx, with_pool};
use serde_json::json;

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

impl Store {
    /// An agent's reply, to be relayed into the chat of an IM task they hold
    /// (channels with relay on): stored in the transcript as `agent`,
    /// pending delivery. Refused unless `agent` holds the task now.
    pub async fn queue_chat_reply(
        &self,
        task_id: &str,
        agent: &crate::store::Agent,
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
                    let delay = crate::domain::chat::reply_retry_delay(attempts);
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
                    let mut tell = Tell::default();
                    if let Some((task_id, delivery)) = &after
                        && delivery == "failed"
                    {
                        given_up = true;
                        if let Some(task_id) = task_id {
                            for agent in crate::store::events::holding_agents!(tx, task_id) {
                                tell.push(&agent, AgentEventKind::ChatMessage, task_id,
                                    json!({"task_id": task_id, "message_id": message_id, "delivery": "failed"}));
                            }
                        }
                    }
                    let told = write_tell!(self, tx, tell, now);
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
}
