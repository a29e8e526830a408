//! Delivered chat events (webhook, JetStream), each applied exactly once:
//! the answer is stored with the event's id and given again for a repeated
//! delivery; deliveries that arrive together are applied in one
//! transaction.
use super::customer::chat_params;
use super::event::{ChatInput, ChatOutcome, apply_chat_input};
use super::sets::ChatSets;
use crate::domain::chat::{ChatEvent, ChatEventKind, TaskPlan, plan};
use crate::domain::event::AgentEventKind;
use crate::domain::id::new_id;
use crate::domain::{Millis, TaskState, now_millis};
use crate::store::offers::{Tell, customer_left, lock_task, write_tell};
use crate::store::rows::{RowExt, placeholders, storable};
use crate::store::{Store, StoreError, StoreResult, Task, WriteTx, with_pool};
use serde_json::{Value, json};
use std::collections::HashSet;

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
pub(super) fn records_change(kind: ChatEventKind, outcome: &ChatOutcome) -> bool {
    (matches!(kind, ChatEventKind::CustomerLeft | ChatEventKind::Ended)
        && !outcome.not_the_customer)
        || outcome.customer_back
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
            && !outcome.leave_overtaken
            && !outcome.not_the_customer,
    });
    if outcome.leave_overtaken {
        body["leave_overtaken"] = Value::Bool(true);
    }
    (status, body)
}

impl Store {
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
        if jobs.len() == 1 && self.backend() == crate::store::Backend::Sqlite {
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
