//! Chat channels as configured and as operators see them: registration,
//! the status the serving worker reports, failures and refused events,
//! the counters, and a pulled channel's committed cursor.
use crate::domain::{Millis, now_millis};
use crate::store::rows::RowExt;
use crate::store::{Store, StoreError, StoreResult, with_pool};
use serde::Serialize;

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

impl Store {
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
}
