//! Automatic mail recorded without a task or conversation (auto-replies,
//! bulk mail and bounces under the `drop` policy, or under `attach` with
//! nothing to attach to): listed for operators, and made a customer's task
//! when an operator finds it was one.
use super::rows::{RowExt, storable};
use super::{Store, StoreError, StoreResult, WriteTx, with_pool};
use crate::domain::cursor::Cursor;
use crate::domain::id::new_id;
use crate::domain::ingest::address_reached;
use crate::domain::now_millis;

/// A recorded mail as operators see it.
#[derive(Debug, Clone)]
pub struct RecordedMail {
    pub id: String,
    pub service_id: String,
    pub mailbox_id: Option<String>,
    /// `auto_reply`, `bulk` or `bounce`.
    pub kind: String,
    /// Why it was taken for automatic mail (the classification, as JSON).
    pub classification: serde_json::Value,
    pub from_address: Option<String>,
    pub from_name: Option<String>,
    pub subject: Option<String>,
    pub received_at: i64,
    pub size: i64,
}

const COLUMNS: &str = "id, service_id, mailbox_id, kind, classification, from_address, from_name, subject, received_at, size";

fn recorded_from_row<R: RowExt>(row: &R) -> StoreResult<RecordedMail> {
    Ok(RecordedMail {
        id: row.text("id")?,
        service_id: row.text("service_id")?,
        mailbox_id: row.opt_text("mailbox_id")?,
        kind: row.text("kind")?,
        classification: serde_json::from_str(&row.text("classification")?)
            .unwrap_or(serde_json::Value::Null),
        from_address: row.opt_text("from_address")?,
        from_name: row.opt_text("from_name")?,
        subject: row.opt_text("subject")?,
        received_at: row.int("received_at")?,
        size: row.int("size")?,
    })
}

/// A recorded mail's task, once made.
#[derive(Debug, Clone)]
pub struct QueuedRecorded {
    pub task_id: String,
    pub conversation_id: String,
    pub service_id: String,
}

impl Store {
    /// Recorded mail, newest first, after `after` (the last of the previous
    /// page); `service` filters (empty: every service). Reads `limit` rows
    /// (one more than a page, to tell whether another follows).
    pub async fn recorded_mail(
        &self,
        service: Option<&str>,
        after: Option<&Cursor>,
        limit: u32,
    ) -> StoreResult<Vec<RecordedMail>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM messages WHERE disposition = 'recorded' AND ($1 = '' OR service_id = $1)
               AND ($2 = '' OR received_at < $3 OR (received_at = $3 AND id < $2))
             ORDER BY received_at DESC, id DESC LIMIT $4"
        );
        with_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(service.unwrap_or(""))
                .bind(after.map_or("", |c| c.id.as_str()))
                .bind(after.map_or(0, |c| c.created_at))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(recorded_from_row).collect()
        })
    }

    /// How many mails are recorded without a task.
    pub async fn recorded_count(&self, service: Option<&str>) -> StoreResult<i64> {
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar("SELECT count(*) FROM messages WHERE disposition = 'recorded' AND ($1 = '' OR service_id = $1)")
                .bind(service.unwrap_or(""))
                .fetch_one(pool)
                .await?)
        })
    }

    /// One recorded mail; `NotFound` when there is no such message, or it
    /// is not (or no longer) recorded without a task.
    pub async fn recorded(&self, id: &str) -> StoreResult<RecordedMail> {
        let sql = format!(
            "SELECT {COLUMNS}, disposition FROM messages WHERE id = $1 AND direction = 'inbound'"
        );
        with_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("recorded mail '{id}'")))?;
            let disposition = row.text("disposition")?;
            // Taken for automatic mail (its classification), stored as a
            // customer's: an operator made it a task.
            let made = disposition == "queued"
                && row.text("kind")? == "normal"
                && !row.text("classification")?.contains("\"kind\":\"normal\"");
            if made {
                return Err(StoreError::Conflict(format!(
                    "mail '{id}' was made a task already"
                )));
            }
            if disposition != "recorded" {
                return Err(StoreError::Conflict(format!(
                    "mail '{id}' is not recorded without a task: it was {disposition}"
                )));
            }
            recorded_from_row(&row)
        })
    }

    /// Makes a recorded mail a customer's mail: a new conversation and a
    /// queued task of its service, as if it had come in as normal mail (the
    /// sender resolved as the customer, the service's priority, the address
    /// it reached). The message is marked `normal` and `queued` in the same
    /// transaction, so two operators asking at once make one task: the
    /// other gets `Conflict`.
    pub async fn queue_recorded(&self, id: &str) -> StoreResult<QueuedRecorded> {
        let mail = self.recorded(id).await?;
        let service = self.service(&mail.service_id).await?;
        let (message_id, recipients): (Option<String>, String) = with_pool!(self, pool => {
            sqlx::query_as("SELECT message_id, recipients FROM messages WHERE id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?
        });
        let recipients: serde_json::Value =
            serde_json::from_str(&recipients).unwrap_or(serde_json::Value::Null);
        let emails = |field: &str| -> Vec<String> {
            recipients[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["email"].as_str().map(String::from))
                .collect()
        };
        let (to, cc) = (emails("to"), emails("cc"));
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        let cc: Vec<&str> = cc.iter().map(String::as_str).collect();
        let reached = address_reached(&to, &cc, &service.email_addresses);
        let resolved = self
            .resolve_customer(mail.from_address.as_deref(), mail.from_name.as_deref())
            .await?;
        let customer = &resolved.matched;
        let details = super::batch::mail_customer_details(customer, &resolved.details);
        let params =
            super::batch::mail_task_params(mail.mailbox_id.as_deref(), message_id.as_deref());
        let (task_id, conversation_id) = (new_id("tsk"), new_id("cnv"));
        let now = now_millis();
        let claimed = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("INSERT INTO conversations (id, service_id, subject, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)")
                .bind(&conversation_id)
                .bind(&mail.service_id)
                .bind(&mail.subject)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO tasks (id, service_id, modality, state, priority, arrived_at, updated_at, customer_kind,
                    customer_ref, customer_name, customer_address, subject, params, conversation_id,
                    customer_details, reached)
                 VALUES ($1, $2, 'email', 'queued', $3, $4, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(&task_id)
            .bind(&mail.service_id)
            .bind(i64::from(service.settings.priority))
            .bind(now)
            .bind(customer.kind.as_str())
            .bind(&customer.reference)
            .bind(customer.name.as_deref().map(storable))
            .bind(customer.address.as_deref().map(storable))
            .bind(&mail.subject)
            .bind(params)
            .bind(&conversation_id)
            .bind(storable(&details).into_owned())
            .bind(reached.as_deref().map(storable))
            .execute(&mut *tx)
            .await?;
            let n = sqlx::query(
                "UPDATE messages SET disposition = 'queued', kind = 'normal', conversation_id = $2, task_id = $3
                 WHERE id = $1 AND disposition = 'recorded'",
            )
            .bind(id)
            .bind(&conversation_id)
            .bind(&task_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            n == 1
        });
        if !claimed {
            return Err(StoreError::Conflict(format!(
                "mail '{id}' was made a task meanwhile"
            )));
        }
        self.wake_router();
        self.ring_webhooks();
        Ok(QueuedRecorded {
            task_id,
            conversation_id,
            service_id: mail.service_id,
        })
    }
}
