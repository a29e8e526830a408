//! Messages as previews need them, the cached sanitized body, and the server
//! key that signs browser links.
use super::rows::{RowExt, storable};
use super::{Store, StoreError, StoreResult, with_pool};
use crate::domain::now_millis;
use crate::mail::AttachmentMeta;

/// A stored message with what a preview shows (no raw source).
#[derive(Debug, Clone)]
pub struct MessageDetail {
    pub id: String,
    pub task_id: Option<String>,
    pub service_id: String,
    pub direction: String,
    pub kind: String,
    pub subject: Option<String>,
    pub from_address: Option<String>,
    pub from_name: Option<String>,
    /// `{"to": [...], "cc": [...], "reply_to": [...]}` of `{name, email}`.
    pub recipients: serde_json::Value,
    pub sent_at: Option<i64>,
    pub received_at: i64,
    pub size: i64,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub attachments: Vec<AttachmentMeta>,
    pub preview_html: Option<String>,
    pub preview_remote_blocked: Option<i64>,
}

/// A message as the email widget shows it (see [`Store::task_message_cards`]).
#[derive(Debug, Clone)]
pub struct MessageCard {
    pub id: String,
    pub direction: String,
    pub kind: String,
    pub subject: Option<String>,
    pub from_address: Option<String>,
    pub from_name: Option<String>,
    pub received_at: i64,
    pub delivery_status: Option<String>,
    pub recipients: serde_json::Value,
    pub attachments: Vec<AttachmentMeta>,
    pub remote_blocked: Option<i64>,
}

/// How many messages a task has, and when (the details' messages summary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub total: i64,
    /// From the customer: inbound mail, the customer's chat lines.
    pub inbound: i64,
    /// To the customer: replies sent, agents' and bots' chat lines.
    pub outbound: i64,
    pub first_at: Option<i64>,
    pub last_at: Option<i64>,
    /// `inbound` or `outbound`: who wrote last.
    pub last_direction: Option<String>,
}

impl Store {
    /// A task's message counts: its mail, an IM task's chat lines, a call
    /// task's transcript lines, in one indexed query.
    pub async fn task_message_counts(
        &self,
        task_id: &str,
        modality: crate::domain::Modality,
    ) -> StoreResult<MessageCounts> {
        use crate::domain::Modality;
        let sql = match modality {
            Modality::Call => {
                "SELECT count(*) AS total,
                    coalesce(sum(CASE WHEN speaker = 'customer' THEN 1 ELSE 0 END), 0) AS inbound,
                    min(spoken_at) AS first_at, max(spoken_at) AS last_at,
                    (SELECT CASE WHEN l.speaker = 'customer' THEN 'inbound' ELSE 'outbound' END
                       FROM call_transcript_lines l WHERE l.task_id = $1
                       ORDER BY l.spoken_at DESC, l.seq DESC, l.id DESC LIMIT 1) AS last_direction
                 FROM call_transcript_lines WHERE task_id = $1"
            }
            Modality::Im => {
                "SELECT count(*) AS total,
                    coalesce(sum(CASE WHEN sender = 'customer' THEN 1 ELSE 0 END), 0) AS inbound,
                    min(sent_at) AS first_at, max(sent_at) AS last_at,
                    (SELECT CASE WHEN l.sender = 'customer' THEN 'inbound' ELSE 'outbound' END
                       FROM chat_messages l WHERE l.task_id = $1
                       ORDER BY l.sent_at DESC, l.seq DESC, l.id DESC LIMIT 1) AS last_direction
                 FROM chat_messages WHERE task_id = $1"
            }
            Modality::Email => {
                "SELECT count(*) AS total,
                    coalesce(sum(CASE WHEN direction = 'inbound' THEN 1 ELSE 0 END), 0) AS inbound,
                    min(received_at) AS first_at, max(received_at) AS last_at,
                    (SELECT l.direction FROM messages l WHERE l.task_id = $1
                       ORDER BY l.received_at DESC, COALESCE(l.sent_at, l.received_at) DESC, l.id DESC LIMIT 1) AS last_direction
                 FROM messages WHERE task_id = $1"
            }
        };
        with_pool!(self, pool => {
            let r = sqlx::query(sql).bind(task_id).fetch_one(pool).await?;
            let total = r.int("total")?;
            let inbound = r.int("inbound")?;
            Ok(MessageCounts {
                total,
                inbound,
                outbound: total - inbound,
                first_at: r.opt_int("first_at")?,
                last_at: r.opt_int("last_at")?,
                last_direction: r.opt_text("last_direction")?,
            })
        })
    }

    pub async fn message(&self, id: &str) -> StoreResult<MessageDetail> {
        with_pool!(self, pool => {
            let r = sqlx::query(
                "SELECT id, task_id, service_id, direction, kind, subject, from_address, from_name, recipients, sent_at,
                    received_at, size, text_body, html_body, attachments, preview_html, preview_remote_blocked
                 FROM messages WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("message '{id}'")))?;
            Ok(MessageDetail {
                id: r.text("id")?,
                task_id: r.opt_text("task_id")?,
                service_id: r.text("service_id")?,
                direction: r.text("direction")?,
                kind: r.text("kind")?,
                subject: r.opt_text("subject")?,
                from_address: r.opt_text("from_address")?,
                from_name: r.opt_text("from_name")?,
                recipients: r.json("recipients")?,
                sent_at: r.opt_int("sent_at")?,
                received_at: r.int("received_at")?,
                size: r.int("size")?,
                text_body: r.opt_text("text_body")?,
                html_body: r.opt_text("html_body")?,
                attachments: r.json("attachments")?,
                preview_html: r.opt_text("preview_html")?,
                preview_remote_blocked: r.opt_int("preview_remote_blocked")?,
            })
        })
    }

    /// The messages of a task as the email widget shows them, oldest first,
    /// in one query: who, when, what, its attachments, and how many remote
    /// images its cached preview blocks (`None` until the preview was made).
    pub async fn task_message_cards(&self, task_id: &str) -> StoreResult<Vec<MessageCard>> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, direction, kind, subject, from_address, from_name, received_at, delivery_status,
                    recipients, attachments, preview_remote_blocked FROM messages
                 WHERE task_id = $1 ORDER BY received_at, COALESCE(sent_at, received_at), id",
            )
            .bind(task_id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(MessageCard {
                        id: r.text("id")?,
                        direction: r.text("direction")?,
                        kind: r.text("kind")?,
                        subject: r.opt_text("subject")?,
                        from_address: r.opt_text("from_address")?,
                        from_name: r.opt_text("from_name")?,
                        received_at: r.int("received_at")?,
                        delivery_status: r.opt_text("delivery_status")?,
                        recipients: r.json("recipients")?,
                        attachments: r.json("attachments")?,
                        remote_blocked: r.opt_int("preview_remote_blocked")?,
                    })
                })
                .collect()
        })
    }

    /// The raw source of a message.
    pub async fn message_raw(&self, id: &str) -> StoreResult<Vec<u8>> {
        with_pool!(self, pool => {
            // Staged sources live in message_sources (migration 17).
            let row = sqlx::query(
                "SELECT CASE WHEN m.source_id IS NULL THEN m.raw ELSE s.raw END AS raw,
                        CASE WHEN m.source_id IS NULL THEN m.raw_encoding ELSE s.raw_encoding END AS raw_encoding
                 FROM messages m LEFT JOIN message_sources s ON s.id = m.source_id WHERE m.id = $1",
            )
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("message '{id}'")))?;
            let stored = row
                .opt_bytes("raw")?
                .ok_or_else(|| StoreError::Corrupt(format!("message '{id}' has no raw source")))?;
            super::source::unpack(stored, row.opt_text("raw_encoding")?.as_deref())
        })
    }

    /// Keeps the sanitized body so it is computed once per message.
    pub async fn store_preview(
        &self,
        id: &str,
        html: &str,
        remote_blocked: usize,
    ) -> StoreResult<()> {
        let html = storable(html);
        with_pool!(self, pool => {
            sqlx::query("UPDATE messages SET preview_html = $2, preview_remote_blocked = $3 WHERE id = $1")
                .bind(id)
                .bind(&html)
                .bind(remote_blocked as i64)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The key that signs browser links, made once and shared by every worker.
    pub async fn link_key(&self) -> StoreResult<Vec<u8>> {
        use rand::Rng;
        let fresh: [u8; 32] = rand::rng().random();
        with_pool!(self, pool => {
            sqlx::query("INSERT INTO server_keys (name, value, created_at) VALUES ('links', $1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(hex::encode(fresh))
                .bind(now_millis())
                .execute(pool)
                .await?;
            let value: String = sqlx::query_scalar("SELECT value FROM server_keys WHERE name = 'links'")
                .fetch_one(pool)
                .await?;
            hex::decode(value).map_err(|e| StoreError::Corrupt(format!("server key: {e}")))
        })
    }
}
