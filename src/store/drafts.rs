//! Drafts and the outbox: versioned edits, queueing once, claiming for
//! sending (exactly one worker per draft), and recording the result.
use super::events::{self, record_agent_event};
use super::rows::{RowExt, storable};
use super::{Store, StoreError, StoreResult, WriteTx, with_pool};
use crate::domain::event::AgentEventKind;
use crate::domain::id::new_id;
use crate::domain::now_millis;
use crate::mail::Address;
use serde::Serialize;

/// An attachment of a draft (without its bytes).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DraftAttachment {
    pub id: String,
    /// Order in the message; attachments are listed by position.
    pub position: i64,
    pub filename: String,
    /// Lowercased `type/subtype`.
    pub content_type: String,
    /// Size in bytes.
    pub size: i64,
    /// The Content-ID of an inline part kept from a forwarded original; null for uploads.
    pub content_id: Option<String>,
}

/// A draft as stored.
#[derive(Debug, Clone)]
pub struct Draft {
    pub id: String,
    pub task_id: String,
    pub service_id: String,
    pub agent_id: String,
    pub reply_to_message: Option<String>,
    pub kind: String,
    pub state: String,
    pub version: i64,
    pub from: Address,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    pub message_id: Option<String>,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    pub smtp_response: Option<String>,
    pub queued_at: Option<i64>,
    pub sent_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub attachments: Vec<DraftAttachment>,
}

/// A draft to create.
#[derive(Debug, Clone)]
pub struct NewDraft {
    pub task_id: String,
    pub service_id: String,
    pub agent_id: String,
    pub reply_to_message: Option<String>,
    pub kind: String,
    pub from: Address,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    /// Attachments carried over (a forward keeps the original's).
    pub attachments: Vec<(String, String, Vec<u8>, Option<String>)>,
}

/// The editable part of a draft.
#[derive(Debug, Clone)]
pub struct DraftEdit {
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
}

/// A sent reply as the conversation keeps it.
#[derive(Debug, Clone)]
pub struct SentRecord {
    pub raw: Vec<u8>,
    pub smtp_response: String,
}

const DRAFT_COLUMNS: &str = "id, task_id, service_id, agent_id, reply_to_message, kind, state, version, from_address, from_name, \
    to_addrs, cc_addrs, bcc_addrs, subject, body_text, body_html, in_reply_to, refs, message_id, attempts, next_attempt_at, \
    last_error, smtp_response, queued_at, sent_at, created_at, updated_at";

fn draft_from_row(r: &impl RowExt, attachments: Vec<DraftAttachment>) -> StoreResult<Draft> {
    Ok(Draft {
        id: r.text("id")?,
        task_id: r.text("task_id")?,
        service_id: r.text("service_id")?,
        agent_id: r.text("agent_id")?,
        reply_to_message: r.opt_text("reply_to_message")?,
        kind: r.text("kind")?,
        state: r.text("state")?,
        version: r.int("version")?,
        from: Address {
            name: r.opt_text("from_name")?,
            email: r.text("from_address")?,
        },
        to: r.json("to_addrs")?,
        cc: r.json("cc_addrs")?,
        bcc: r.json("bcc_addrs")?,
        subject: r.text("subject")?,
        body_text: r.text("body_text")?,
        body_html: r.text("body_html")?,
        in_reply_to: r.opt_text("in_reply_to")?,
        references: r.json("refs")?,
        message_id: r.opt_text("message_id")?,
        attempts: r.int("attempts")?,
        next_attempt_at: r.opt_int("next_attempt_at")?,
        last_error: r.opt_text("last_error")?,
        smtp_response: r.opt_text("smtp_response")?,
        queued_at: r.opt_int("queued_at")?,
        sent_at: r.opt_int("sent_at")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        attachments,
    })
}

/// Inside a write transaction: tells the author of a draft that it changed
/// state (`$row`: its `agent_id`, `task_id` and `kind`, as the change
/// returned them; `None` when nothing changed), so that every page of theirs
/// shows the thread as it is. The agent to ring after the commit, if any.
macro_rules! announce_draft {
    ($store:expr, $tx:expr, $id:expr, $row:expr, $state:expr, $reason:expr, $now:expr) => {{
        match $row {
            Some(row) => {
                let agent = row.text("agent_id")?;
                let task = row.text("task_id")?;
                let body = events::payload(AgentEventKind::Draft, serde_json::json!({
                    "draft_id": $id, "task_id": task, "kind": row.text("kind")?,
                    "state": $state, "reason": $reason,
                }));
                record_agent_event!($store, $tx, &agent, AgentEventKind::Draft, &task, &body, $now);
                Some(agent)
            }
            None => None,
        }
    }};
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

impl Store {
    pub async fn create_draft(&self, new: &NewDraft) -> StoreResult<Draft> {
        let id = new_id("drf");
        let now = now_millis();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO drafts (id, task_id, service_id, agent_id, reply_to_message, kind, from_address, from_name,
                    to_addrs, cc_addrs, subject, body_text, body_html, in_reply_to, refs, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16)",
            )
            .bind(&id)
            .bind(&new.task_id)
            .bind(&new.service_id)
            .bind(&new.agent_id)
            .bind(&new.reply_to_message)
            .bind(&new.kind)
            .bind(&new.from.email)
            .bind(&new.from.name)
            .bind(json(&new.to))
            .bind(json(&new.cc))
            .bind(&new.subject)
            .bind(storable(&new.body_text))
            .bind(storable(&new.body_html))
            .bind(&new.in_reply_to)
            .bind(json(&new.references))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            for (i, (filename, content_type, bytes, cid)) in new.attachments.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO draft_attachments (id, draft_id, position, filename, content_type, size, content_id, bytes)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(new_id("dat"))
                .bind(&id)
                .bind(i as i64)
                .bind(filename)
                .bind(content_type)
                .bind(bytes.len() as i64)
                .bind(cid)
                .bind(bytes)
                .execute(&mut *tx)
                .await?;
            }
            // Every page of the author's hears of it: another tab's Reply
            // then opens this draft instead of making a second one.
            let body = events::payload(AgentEventKind::Draft, serde_json::json!({
                "draft_id": id, "task_id": new.task_id, "kind": new.kind, "state": "draft", "reason": "created",
            }));
            record_agent_event!(self, tx, &new.agent_id, AgentEventKind::Draft, &new.task_id, &body, now);
            tx.commit().await?;
        });
        self.ring_agents([&new.agent_id]);
        self.draft(&id).await
    }

    pub async fn draft(&self, id: &str) -> StoreResult<Draft> {
        let sql = format!("SELECT {DRAFT_COLUMNS} FROM drafts WHERE id = $1");
        with_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("draft '{id}'")))?;
            let rows = sqlx::query(
                "SELECT id, position, filename, content_type, size, content_id FROM draft_attachments WHERE draft_id = $1 ORDER BY position, id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let mut attachments = Vec::with_capacity(rows.len());
            for r in &rows {
                attachments.push(DraftAttachment {
                    id: r.text("id")?,
                    position: r.int("position")?,
                    filename: r.text("filename")?,
                    content_type: r.text("content_type")?,
                    size: r.int("size")?,
                    content_id: r.opt_text("content_id")?,
                });
            }
            draft_from_row(&row, attachments)
        })
    }

    /// The drafts one agent wrote on a task, oldest first (the page shows
    /// them on the thread with their state).
    pub async fn task_drafts(&self, task_id: &str, agent_id: &str) -> StoreResult<Vec<Draft>> {
        let ids: Vec<String> = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT id FROM drafts WHERE task_id = $1 AND agent_id = $2 ORDER BY created_at, id",
            )
            .bind(task_id)
            .bind(agent_id)
            .fetch_all(pool)
            .await?
        });
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.draft(&id).await?);
        }
        Ok(out)
    }

    /// Explains why a versioned change to a draft did not apply.
    async fn draft_conflict(&self, id: &str, expected: i64) -> StoreError {
        match self.draft(id).await {
            Err(e) => e,
            Ok(d) if d.state != "draft" && d.state != "failed" => StoreError::Conflict(format!(
                "draft '{id}' is {} and can no longer be changed",
                d.state
            )),
            Ok(d) => StoreError::Conflict(format!(
                "draft '{id}' is at version {}, not {expected}: someone saved it meanwhile; reload it",
                d.version
            )),
        }
    }

    /// Replaces a draft's content if it is still at `expected` version.
    pub async fn update_draft(
        &self,
        id: &str,
        expected: i64,
        edit: &DraftEdit,
    ) -> StoreResult<Draft> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE drafts SET to_addrs = $3, cc_addrs = $4, bcc_addrs = $5, subject = $6, body_text = $7, body_html = $8,
                    version = version + 1, updated_at = $9, state = 'draft', message_id = NULL
                 WHERE id = $1 AND version = $2 AND state IN ('draft', 'failed')",
            )
            .bind(id)
            .bind(expected)
            .bind(json(&edit.to))
            .bind(json(&edit.cc))
            .bind(json(&edit.bcc))
            .bind(&edit.subject)
            .bind(storable(&edit.body_text))
            .bind(storable(&edit.body_html))
            .bind(now_millis())
            .execute(pool)
            .await?
            .rows_affected()
        });
        if n != 1 {
            return Err(self.draft_conflict(id, expected).await);
        }
        self.draft(id).await
    }

    /// Bumps the version if it is `expected` (inside the attachment changes).
    async fn bump_version(&self, id: &str, expected: i64) -> StoreResult<()> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE drafts SET version = version + 1, updated_at = $3, state = 'draft', message_id = NULL
                 WHERE id = $1 AND version = $2 AND state IN ('draft', 'failed')",
            )
                .bind(id)
                .bind(expected)
                .bind(now_millis())
                .execute(pool)
                .await?
                .rows_affected()
        });
        if n != 1 {
            return Err(self.draft_conflict(id, expected).await);
        }
        Ok(())
    }

    pub async fn add_draft_attachment(
        &self,
        id: &str,
        expected: i64,
        filename: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> StoreResult<Draft> {
        self.bump_version(id, expected).await?;
        with_pool!(self, pool => {
            let next: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM draft_attachments WHERE draft_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?;
            sqlx::query(
                "INSERT INTO draft_attachments (id, draft_id, position, filename, content_type, size, bytes) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(new_id("dat"))
            .bind(id)
            .bind(next.map_or(0, |n| n + 1))
            .bind(filename)
            .bind(content_type)
            .bind(bytes.len() as i64)
            .bind(bytes)
            .execute(pool)
            .await?;
        });
        self.draft(id).await
    }

    pub async fn remove_draft_attachment(
        &self,
        id: &str,
        expected: i64,
        attachment: &str,
    ) -> StoreResult<Draft> {
        let exists = self
            .draft(id)
            .await?
            .attachments
            .iter()
            .any(|a| a.id == attachment);
        if !exists {
            return Err(StoreError::NotFound(format!(
                "attachment '{attachment}' of draft '{id}'"
            )));
        }
        self.bump_version(id, expected).await?;
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM draft_attachments WHERE draft_id = $1 AND id = $2")
                .bind(id)
                .bind(attachment)
                .execute(pool)
                .await?;
        });
        self.draft(id).await
    }

    /// Puts the attachments in the given order (every attachment exactly once).
    pub async fn reorder_draft_attachments(
        &self,
        id: &str,
        expected: i64,
        order: &[String],
    ) -> StoreResult<Draft> {
        let current = self.draft(id).await?;
        let mut have: Vec<&str> = current.attachments.iter().map(|a| a.id.as_str()).collect();
        let mut want: Vec<&str> = order.iter().map(String::as_str).collect();
        have.sort_unstable();
        want.sort_unstable();
        if have != want {
            return Err(StoreError::Invalid(crate::domain::DomainError::Invalid(
                "order must list every attachment of the draft exactly once".into(),
            )));
        }
        self.bump_version(id, expected).await?;
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for (i, a) in order.iter().enumerate() {
                sqlx::query("UPDATE draft_attachments SET position = $3 WHERE draft_id = $1 AND id = $2")
                    .bind(id)
                    .bind(a)
                    .bind(i as i64)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        self.draft(id).await
    }

    /// The bytes of a draft's attachments, in order.
    pub async fn draft_attachment_bytes(
        &self,
        id: &str,
    ) -> StoreResult<Vec<(DraftAttachment, Vec<u8>)>> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, position, filename, content_type, size, content_id, bytes FROM draft_attachments WHERE draft_id = $1 ORDER BY position, id",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push((
                    DraftAttachment {
                        id: r.text("id")?,
                        position: r.int("position")?,
                        filename: r.text("filename")?,
                        content_type: r.text("content_type")?,
                        size: r.int("size")?,
                        content_id: r.opt_text("content_id")?,
                    },
                    r.opt_bytes("bytes")?.unwrap_or_default(),
                ));
            }
            Ok(out)
        })
    }

    /// Discards a draft that was never queued.
    pub async fn delete_draft(&self, id: &str) -> StoreResult<()> {
        let now = now_millis();
        let told: Option<String> = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let gone = sqlx::query("DELETE FROM drafts WHERE id = $1 AND state = 'draft' RETURNING agent_id, task_id, kind")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let told = announce_draft!(self, tx, id, gone, "discarded", "discarded", now);
            tx.commit().await?;
            told
        });
        if told.is_some() {
            self.ring_agents(told.as_ref());
            return Ok(());
        }
        let d = self.draft(id).await?;
        Err(StoreError::Conflict(format!(
            "draft '{id}' is {} and can no longer be discarded",
            d.state
        )))
    }

    /// Queues a draft for sending with its Message-ID fixed now. Idempotent:
    /// a draft already queued, sending or sent is returned unchanged.
    pub async fn queue_draft(&self, id: &str, message_id: &str) -> StoreResult<(Draft, bool)> {
        let now = now_millis();
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row = sqlx::query(
                "UPDATE drafts SET state = 'queued', message_id = COALESCE(message_id, $2), queued_at = $3, next_attempt_at = $3,
                    attempts = CASE WHEN message_id IS NULL THEN 0 ELSE attempts END,
                    last_error = NULL, version = version + 1, updated_at = $3
                 WHERE id = $1 AND state IN ('draft', 'failed')
                 RETURNING agent_id, task_id, kind",
            )
            .bind(id)
            .bind(message_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let told = announce_draft!(self, tx, id, row, "queued", "queued", now);
            tx.commit().await?;
            told
        });
        self.ring_agents(told.as_ref());
        Ok((self.draft(id).await?, told.is_some()))
    }

    /// Takes a queued draft back from the outbox (it waits for its first
    /// try or a retry): a draft again, to be changed, sent or discarded.
    /// Only while it is `queued`: the outbox claims it with the same kind
    /// of conditional update, so one of the two wins. Returns the draft and
    /// whether this call took it back.
    pub async fn unsend_draft(&self, id: &str) -> StoreResult<(Draft, bool)> {
        let now = now_millis();
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let row = sqlx::query(
                "UPDATE drafts SET state = 'draft', next_attempt_at = NULL, version = version + 1, updated_at = $2
                 WHERE id = $1 AND state = 'queued'
                 RETURNING agent_id, task_id, kind",
            )
            .bind(id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let told = announce_draft!(self, tx, id, row, "draft", "taken_back", now);
            tx.commit().await?;
            told
        });
        self.ring_agents(told.as_ref());
        Ok((self.draft(id).await?, told.is_some()))
    }

    /// Claims the next draft due for sending, for `lease_ms`: a queued draft
    /// whose time has come, or one whose sender died mid-send (its claim
    /// expired). Exactly one worker gets each.
    pub async fn claim_due_draft(&self, owner: &str, lease_ms: i64) -> StoreResult<Option<Draft>> {
        let now = now_millis();
        let id: Option<String> = match self {
            Store::Postgres(pool, _) => {
                // Due queued drafts first, served in order by the outbox index;
                // a sender that died mid-send is looked for only when none is due.
                let queued: Option<String> = sqlx::query_scalar(
                    "UPDATE drafts SET state = 'sending', claimed_by = $1, claim_expires_at = $2, attempts = attempts + 1, updated_at = $3
                     WHERE id = (
                        SELECT id FROM drafts WHERE state = 'queued' AND next_attempt_at <= $3
                        ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING id",
                )
                .bind(owner)
                .bind(now + lease_ms)
                .bind(now)
                .fetch_optional(pool)
                .await?;
                match queued {
                    Some(id) => Some(id),
                    None => {
                        sqlx::query_scalar(
                            "UPDATE drafts SET state = 'sending', claimed_by = $1, claim_expires_at = $2, attempts = attempts + 1, updated_at = $3
                             WHERE id = (
                                SELECT id FROM drafts WHERE state = 'sending' AND claim_expires_at < $3
                                ORDER BY claim_expires_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                             RETURNING id",
                        )
                        .bind(owner)
                        .bind(now + lease_ms)
                        .bind(now)
                        .fetch_optional(pool)
                        .await?
                    }
                }
            }
            Store::Sqlite(pool, _) => {
                let mut tx = pool.begin_write().await?;
                let id: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM drafts WHERE (state = 'queued' AND next_attempt_at <= $1) OR (state = 'sending' AND claim_expires_at < $1)
                     ORDER BY next_attempt_at LIMIT 1",
                )
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(id) = &id {
                    sqlx::query(
                        "UPDATE drafts SET state = 'sending', claimed_by = $2, claim_expires_at = $3, attempts = attempts + 1, updated_at = $4 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(owner)
                    .bind(now + lease_ms)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                id
            }
        };
        match id {
            Some(id) => Ok(Some(self.draft(&id).await?)),
            None => Ok(None),
        }
    }

    /// Records a successful send: the draft becomes final, and the reply joins
    /// the task's conversation (so the customer's answer threads back to it).
    pub async fn mark_draft_sent(
        &self,
        draft: &Draft,
        owner: &str,
        sent: &SentRecord,
    ) -> StoreResult<()> {
        use sha2::Digest;
        let now = now_millis();
        let hash = hex::encode(sha2::Sha256::digest(&sent.raw));
        let recipients =
            serde_json::json!({"to": draft.to, "cc": draft.cc, "bcc": draft.bcc}).to_string();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "UPDATE drafts SET state = 'sent', sent_at = $3, smtp_response = $4, claimed_by = NULL, claim_expires_at = NULL, next_attempt_at = NULL, last_error = NULL, updated_at = $3
                 WHERE id = $1 AND state = 'sending' AND claimed_by = $2",
            )
            .bind(&draft.id)
            .bind(owner)
            .bind(now)
            .bind(&sent.smtp_response)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                return Err(StoreError::Conflict(format!("draft '{}' is no longer claimed by this worker", draft.id)));
            }
            let conversation: Option<String> = sqlx::query_scalar("SELECT conversation_id FROM tasks WHERE id = $1")
                .bind(&draft.task_id)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
            sqlx::query(
                "INSERT INTO messages (id, service_id, conversation_id, task_id, direction, kind, disposition, message_id, content_hash,
                    in_reply_to, refs, subject, from_address, from_name, recipients, sent_at, received_at, size, text_body, html_body, raw)
                 VALUES ($1, $2, $3, $4, 'outbound', 'normal', 'sent', $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15, $16, $17)",
            )
            .bind(new_id("msg"))
            .bind(&draft.service_id)
            .bind(&conversation)
            .bind(&draft.task_id)
            .bind(&draft.message_id)
            .bind(&hash)
            .bind(&draft.in_reply_to)
            .bind(json(&draft.references))
            .bind(&draft.subject)
            .bind(&draft.from.email)
            .bind(&draft.from.name)
            .bind(&recipients)
            .bind(now)
            .bind(sent.raw.len() as i64)
            .bind(&draft.body_text)
            .bind(&draft.body_html)
            .bind(&sent.raw)
            .execute(&mut *tx)
            .await?;
            let body = events::payload(AgentEventKind::Draft, serde_json::json!({
                "draft_id": draft.id, "task_id": draft.task_id, "kind": draft.kind, "state": "sent", "reason": "sent",
                "message_id": draft.message_id, "smtp_response": sent.smtp_response,
            }));
            record_agent_event!(self, tx, &draft.agent_id, AgentEventKind::Draft, &draft.task_id, &body, now);
            tx.commit().await?;
        });
        self.ring_agents([&draft.agent_id]);
        Ok(())
    }

    /// A temporary failure: back to the queue until `next_attempt_at`.
    pub async fn mark_draft_retry(
        &self,
        id: &str,
        owner: &str,
        error: &str,
        next_attempt_at: i64,
    ) -> StoreResult<()> {
        self.release_draft(id, owner, "queued", error, Some(next_attempt_at))
            .await
    }

    /// A permanent failure: the agent sees the server's answer and may edit and send again.
    pub async fn mark_draft_failed(&self, id: &str, owner: &str, error: &str) -> StoreResult<()> {
        self.release_draft(id, owner, "failed", error, None).await
    }

    async fn release_draft(
        &self,
        id: &str,
        owner: &str,
        state: &str,
        error: &str,
        next: Option<i64>,
    ) -> StoreResult<()> {
        let error: String = error.chars().take(1000).collect();
        let now = now_millis();
        let mut told = None;
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let released = sqlx::query(
                "UPDATE drafts SET state = $3, last_error = $4, next_attempt_at = $5, claimed_by = NULL, claim_expires_at = NULL,
                    version = version + 1, updated_at = $6
                 WHERE id = $1 AND claimed_by = $2 AND state = 'sending'
                 RETURNING agent_id, task_id, version, kind",
            )
            .bind(id)
            .bind(owner)
            .bind(state)
            .bind(&error)
            .bind(next)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            // The agent is told when a reply failed for good; retries are quiet.
            if let Some(row) = released.filter(|_| state == "failed") {
                let agent = row.text("agent_id")?;
                let task = row.text("task_id")?;
                let body = events::payload(AgentEventKind::Draft, serde_json::json!({
                    "draft_id": id, "task_id": task, "kind": row.text("kind")?, "state": state,
                    "reason": state, "version": row.int("version")?, "error": error,
                }));
                record_agent_event!(self, tx, &agent, AgentEventKind::Draft, &task, &body, now);
                told = Some(agent);
            }
            tx.commit().await?;
        });
        self.ring_agents(told.as_ref());
        Ok(())
    }

    /// The newest inbound message of a task (what a reply answers by
    /// default): a person's mail before any automatic one (an auto-reply or
    /// bounce is answered only when there is nothing else); mails taken in
    /// together are ordered by their own Date.
    pub async fn latest_inbound_message(&self, task_id: &str) -> StoreResult<Option<String>> {
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar(
                "SELECT id FROM messages WHERE task_id = $1 AND direction = 'inbound'
                 ORDER BY CASE WHEN kind = 'normal' THEN 0 ELSE 1 END,
                    received_at DESC, COALESCE(sent_at, received_at) DESC, id DESC LIMIT 1",
            )
            .bind(task_id)
            .fetch_optional(pool)
            .await?)
        })
    }
}
