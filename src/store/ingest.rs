//! Ingestion storage: mailboxes (cursor, lease, health) and the quarantine.
//! The commit of a batch of incoming mail is [`super::batch`].
use super::ownership::{Fence, check_fence};
use super::rows::RowExt;
use super::{Store, StoreError, StoreResult, WriteTx, with_pool};
use crate::domain::ingest::MailboxCursor;
use crate::domain::{Millis, now_millis};
use serde::Serialize;

/// A configured mailbox, registered at start.
#[derive(Debug, Clone)]
pub struct MailboxSpec {
    pub id: String,
    pub service_id: String,
    pub kind: String,
    /// Where it reads from (host/user/folder or path), without secrets.
    pub description: String,
}

/// A mailbox as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxState {
    pub id: String,
    pub service: String,
    pub kind: String,
    pub description: String,
    pub status: String,
    pub push: bool,
    pub worker: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub uid_validity: Option<i64>,
    pub last_uid: i64,
    pub last_sync_at: Option<Millis>,
    pub synced_at: Option<Millis>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    pub backlog: i64,
    pub ingested_total: i64,
    pub duplicates_total: i64,
    pub errors_total: i64,
    pub quarantined: i64,
}

/// A quarantined mail as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub id: String,
    pub mailbox_id: String,
    pub service_id: String,
    pub uid: Option<i64>,
    /// The folder's UIDVALIDITY when it was set aside (IMAP): its UID
    /// names the same mail only while the folder keeps it.
    pub uid_validity: Option<i64>,
    pub source_ref: Option<String>,
    pub reason: String,
    pub detail: String,
    pub size: i64,
    pub has_raw: bool,
    pub state: String,
    pub message_ref: Option<String>,
    pub created_at: Millis,
    pub resolved_at: Option<Millis>,
}

const MAILBOX_COLUMNS: &str = "m.id, m.service_id, m.kind, m.description, m.status, m.push, m.lease_owner, \
    m.lease_expires_at, m.uid_validity, m.last_uid, m.last_sync_at, m.synced_at, m.last_error, m.last_error_at, \
    m.backlog, m.ingested_total, m.duplicates_total, m.errors_total";

fn mailbox_from_row(r: &impl RowExt) -> StoreResult<MailboxState> {
    Ok(MailboxState {
        id: r.text("id")?,
        service: r.text("service_id")?,
        kind: r.text("kind")?,
        description: r.text("description")?,
        status: r.text("status")?,
        push: r.flag("push")?,
        worker: r.opt_text("lease_owner")?,
        lease_expires_at: r.opt_int("lease_expires_at")?,
        uid_validity: r.opt_int("uid_validity")?,
        last_uid: r.int("last_uid")?,
        last_sync_at: r.opt_int("last_sync_at")?,
        synced_at: r.opt_int("synced_at")?,
        last_error: r.opt_text("last_error")?,
        last_error_at: r.opt_int("last_error_at")?,
        backlog: r.int("backlog")?,
        ingested_total: r.int("ingested_total")?,
        duplicates_total: r.int("duplicates_total")?,
        errors_total: r.int("errors_total")?,
        quarantined: r.int("quarantined")?,
    })
}

const QUARANTINE_COLUMNS: &str = "id, mailbox_id, service_id, uid, uid_validity, source_ref, reason, detail, size, \
    raw IS NOT NULL AS has_raw, state, message_ref, created_at, resolved_at";

fn quarantine_from_row(r: &impl RowExt) -> StoreResult<QuarantineEntry> {
    Ok(QuarantineEntry {
        id: r.text("id")?,
        mailbox_id: r.text("mailbox_id")?,
        service_id: r.text("service_id")?,
        uid: r.opt_int("uid")?,
        uid_validity: r.opt_int("uid_validity")?,
        source_ref: r.opt_text("source_ref")?,
        reason: r.text("reason")?,
        detail: r.text("detail")?,
        size: r.int("size")?,
        has_raw: r.flag("has_raw")?,
        state: r.text("state")?,
        message_ref: r.opt_text("message_ref")?,
        created_at: r.int("created_at")?,
        resolved_at: r.opt_int("resolved_at")?,
    })
}

impl Store {
    /// Registers (or updates) a configured mailbox; its cursor is kept.
    pub async fn register_mailbox(&self, spec: &MailboxSpec) -> StoreResult<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO mailboxes (id, service_id, kind, description, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, kind = excluded.kind,
                    description = excluded.description, updated_at = excluded.updated_at",
            )
            .bind(&spec.id)
            .bind(&spec.service_id)
            .bind(&spec.kind)
            .bind(&spec.description)
            .bind(now_millis())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records which worker owns a mailbox now (for the operators' view; the
    /// ownership itself is in `ownership`).
    pub async fn mailbox_owned(&self, mailbox_id: &str, worker: &str) -> StoreResult<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE mailboxes SET lease_owner = $2, lease_expires_at = NULL, status = 'connecting', push = FALSE
                 WHERE id = $1",
            )
            .bind(mailbox_id)
            .bind(worker)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records that a worker gave a mailbox up (at shutdown, or when another
    /// took it over).
    pub async fn mailbox_released(&self, mailbox_id: &str, worker: &str) -> StoreResult<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE mailboxes SET lease_owner = NULL, lease_expires_at = NULL, status = 'waiting', push = FALSE
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(mailbox_id)
            .bind(worker)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The committed cursor of a mailbox.
    pub async fn mailbox_cursor(&self, mailbox_id: &str) -> StoreResult<Option<MailboxCursor>> {
        with_pool!(self, pool => {
            let row = sqlx::query("SELECT uid_validity, last_uid FROM mailboxes WHERE id = $1")
                .bind(mailbox_id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("mailbox '{mailbox_id}'")))?;
            Ok(row.opt_int("uid_validity")?.map(|v| MailboxCursor {
                uid_validity: v as u32,
                last_uid: row.int("last_uid").unwrap_or(0) as u32,
            }))
        })
    }

    /// Moves the cursor without ingesting (a UIDVALIDITY change resets it to
    /// 0); fails with `LeaseLost` unless `fence` is current.
    pub async fn reset_cursor(
        &self,
        mailbox_id: &str,
        fence: &Fence,
        cursor: MailboxCursor,
    ) -> StoreResult<()> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            check_fence!(self, tx, fence);
            sqlx::query(
                "UPDATE mailboxes SET uid_validity = $2, last_uid = $3, flagged_uid = $3, updated_at = $4 WHERE id = $1",
            )
            .bind(mailbox_id)
            .bind(i64::from(cursor.uid_validity))
            .bind(i64::from(cursor.last_uid))
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The highest UID whose after-ingest action is done.
    pub async fn flagged_uid(&self, mailbox_id: &str) -> StoreResult<u32> {
        with_pool!(self, pool => {
            let v: Option<i64> = sqlx::query_scalar("SELECT flagged_uid FROM mailboxes WHERE id = $1")
                .bind(mailbox_id)
                .fetch_optional(pool)
                .await?;
            Ok(v.unwrap_or(0) as u32)
        })
    }

    /// Records that the after-ingest action is done up to `uid` (only while
    /// `fence` is current).
    pub async fn set_flagged_uid(
        &self,
        mailbox_id: &str,
        fence: &Fence,
        uid: u32,
    ) -> StoreResult<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE mailboxes SET flagged_uid = $4 WHERE id = $1 AND flagged_uid < $4
                 AND EXISTS (SELECT 1 FROM ownership o WHERE o.kind = $2 AND o.id = $1 AND o.epoch = $3)",
            )
            .bind(mailbox_id)
            .bind(&fence.kind)
            .bind(fence.epoch)
            .bind(i64::from(uid))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records a mailbox's health as the worker holding it sees it.
    pub async fn set_mailbox_status(
        &self,
        mailbox_id: &str,
        status: &str,
        push: bool,
        backlog: i64,
    ) -> StoreResult<()> {
        let now = now_millis();
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE mailboxes SET status = $2, push = $3, backlog = $4, updated_at = $5,
                    last_sync_at = CASE WHEN $2 IN ('idle', 'polling', 'syncing') THEN $5 ELSE last_sync_at END,
                    synced_at = CASE WHEN $4 = 0 AND $2 IN ('idle', 'polling') THEN $5 ELSE synced_at END
                 WHERE id = $1",
            )
            .bind(mailbox_id)
            .bind(status)
            .bind(push)
            .bind(backlog)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records a failure of a mailbox (connection, login, protocol); never secrets.
    pub async fn record_mailbox_error(&self, mailbox_id: &str, error: &str) -> StoreResult<()> {
        let now = now_millis();
        let error: String = error.chars().take(1000).collect();
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE mailboxes SET status = 'error', push = FALSE, last_error = $2, last_error_at = $3,
                    errors_total = errors_total + 1, updated_at = $3 WHERE id = $1",
            )
            .bind(mailbox_id)
            .bind(&error)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Every mailbox with its health and counts.
    pub async fn mailboxes(&self) -> StoreResult<Vec<MailboxState>> {
        let sql = format!(
            "SELECT {MAILBOX_COLUMNS}, (SELECT count(*) FROM quarantine q WHERE q.mailbox_id = m.id AND q.state = 'held') AS quarantined
             FROM mailboxes m ORDER BY m.id"
        );
        with_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(pool).await?;
            rows.iter().map(mailbox_from_row).collect()
        })
    }

    /// Quarantined mail, newest first; `state` filters (`held`, `ingested`, `dismissed`).
    pub async fn quarantine(
        &self,
        state: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<QuarantineEntry>> {
        let sql = format!(
            "SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE ($1 = '' OR state = $1) ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        with_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(state.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(quarantine_from_row).collect()
        })
    }

    /// One quarantine entry and its raw source, if kept.
    pub async fn quarantine_entry(
        &self,
        id: &str,
    ) -> StoreResult<(QuarantineEntry, Option<Vec<u8>>)> {
        let sql = format!("SELECT {QUARANTINE_COLUMNS}, raw FROM quarantine WHERE id = $1");
        with_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("quarantine entry '{id}'")))?;
            Ok((quarantine_from_row(&row)?, row.opt_bytes("raw")?))
        })
    }

    /// Dismisses a held quarantine entry (kept for the record, never ingested).
    pub async fn dismiss_quarantine(&self, id: &str) -> StoreResult<()> {
        let n = with_pool!(self, pool => {
            sqlx::query("UPDATE quarantine SET state = 'dismissed', resolved_at = $2 WHERE id = $1 AND state = 'held'")
                .bind(id)
                .bind(now_millis())
                .execute(pool)
                .await?
                .rows_affected()
        });
        if n == 1 {
            return Ok(());
        }
        // Tell "no such entry" (404) from "already released or dismissed".
        let (entry, _) = self.quarantine_entry(id).await?;
        Err(StoreError::Conflict(format!(
            "quarantine entry '{id}' is not held: it is {}",
            entry.state
        )))
    }
}
