//! Conversation context: a task's live context ("Update task"), the records
//! kept when a task leaves or ends in a service, their retention, and
//! deleting a service with its stored context.
//!
//! The records are written by the database itself (triggers on `tasks`, see
//! migration 0011), so every way a task leaves a service (transfer, overflow)
//! or ends (concluded, cancelled, whatever the path) follows the same rule,
//! in the same transaction: a record per service part, with data only when
//! the service keeps context, and the task's live context removed at the end.
use super::events::holding_agents;
use super::offers::{Tell, change_payload, lock_task, record_task_change, write_tell};
use super::rows::RowExt;
use super::{Store, StoreError, StoreResult, Task, WriteTx, with_pool, with_reader};
use crate::domain::customer::{CustomerDetails, CustomerKind, CustomerUpdate};
use crate::domain::event::AgentEventKind;
use crate::domain::service::ServiceSettings;
use crate::domain::{Millis, now_millis};
use serde_json::{Map, Value};

/// One part of a task in a service that is over: what was known when the
/// task left the service or ended there.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextRecord {
    pub id: i64,
    pub task_id: String,
    pub service_id: String,
    pub ended_at: Millis,
    /// `transferred`, `concluded`, `cancelled`, or `session_over`.
    pub reason: String,
    /// Days the service kept it for, as set then (0: nothing kept).
    pub keep_days: i64,
    pub customer_kind: CustomerKind,
    pub customer_ref: Option<String>,
    pub customer_name: Option<String>,
    pub customer_address: Option<String>,
    pub subject: Option<String>,
    /// `None` when nothing was kept, or the retention job removed it.
    pub details: Option<CustomerDetails>,
    pub params: Option<Map<String, Value>>,
    pub language: Option<String>,
    pub reached: Option<String>,
    pub purged_at: Option<Millis>,
    /// The session whose end it records (`session_over`: an agent's part
    /// over while the task stayed in the service); `None` for a service's part.
    pub session_id: Option<String>,
}

fn record_from_row(r: &impl RowExt) -> StoreResult<ContextRecord> {
    let json = |col: &str| -> StoreResult<Option<String>> { r.opt_text(col) };
    Ok(ContextRecord {
        id: r.int("id")?,
        task_id: r.text("task_id")?,
        service_id: r.text("service_id")?,
        ended_at: r.int("ended_at")?,
        reason: r.text("reason")?,
        keep_days: r.int("keep_days")?,
        customer_kind: CustomerKind::parse(&r.opt_text("customer_kind")?.unwrap_or_default()),
        customer_ref: r.opt_text("customer_ref")?,
        customer_name: r.opt_text("customer_name")?,
        customer_address: r.opt_text("customer_address")?,
        subject: r.opt_text("subject")?,
        details: json("customer_details")?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("context record details: {e}")))?,
        params: json("params")?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("context record parameters: {e}")))?,
        language: r.opt_text("language")?,
        reached: r.opt_text("reached")?,
        purged_at: r.opt_int("purged_at")?,
        session_id: r.opt_text("session_id")?,
    })
}

/// What "Update task" changes: customer fields and custom parameters
/// (`null` removes one), checked by the caller.
#[derive(Debug, Clone, Default)]
pub struct ContextUpdate {
    pub customer: CustomerUpdate,
    pub parameters: Map<String, Value>,
    /// Who asked (`integration:<id>` or `agent:<id>`), for the change log.
    pub by: String,
}

/// A service's name and settings, also when it was deleted.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    pub name: String,
    pub settings: ServiceSettings,
    pub deleted: bool,
}

impl Store {
    /// The records of a task, in the order its parts ended.
    pub async fn context_records(&self, task_id: &str) -> StoreResult<Vec<ContextRecord>> {
        with_reader!(self, conn => {
            let rows = sqlx::query(
                "SELECT id, task_id, service_id, ended_at, reason, keep_days, customer_kind, customer_ref,
                    customer_name, customer_address, subject, customer_details, params, language, reached, purged_at,
                    session_id
                 FROM context_records WHERE task_id = $1 ORDER BY ended_at, id",
            )
            .bind(task_id)
            .fetch_all(conn)
            .await?;
            rows.iter().map(record_from_row).collect()
        })
    }

    /// A service's name and settings (its context items and whether it keeps
    /// context), including a deleted one; `None` when unknown.
    pub async fn service_context(&self, id: &str) -> StoreResult<Option<ServiceContext>> {
        with_pool!(self, pool => {
            let Some(row) = sqlx::query("SELECT name, settings, deleted_at FROM services WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
            else {
                return Ok(None);
            };
            Ok(Some(ServiceContext {
                name: row.text("name")?,
                settings: row.json("settings")?,
                deleted: row.opt_int("deleted_at")?.is_some(),
            }))
        })
    }

    /// "Update task": sets customer fields and custom parameters of a live
    /// task (not once it is concluded or cancelled: a conflict). An anonymous
    /// customer given an e-mail, phone or UPN is looked up again. The change
    /// is logged (`task.updated`, with the names of the fields, not their
    /// values) in the same transaction.
    pub async fn update_task_context(
        &self,
        task_id: &str,
        update: &ContextUpdate,
    ) -> StoreResult<Task> {
        let before = self.task(task_id).await?;
        // Looked up before the write, outside its transaction; the write checks the task again.
        let mut rematch = None;
        if before.customer.kind == CustomerKind::Anonymous
            && !(update.customer.email.is_keep()
                && update.customer.phone.is_keep()
                && update.customer.upn.is_keep())
        {
            let mut details = before.details.clone();
            update.customer.apply_details(&mut details);
            let identity = crate::domain::customer::NormalIdentity {
                name: None,
                address: before.customer.address.clone(),
                details,
            };
            let resolved = self.resolve_identity(&identity).await?;
            if resolved.matched.kind != CustomerKind::Anonymous {
                rematch = Some(resolved);
            }
        }
        let now = now_millis();
        let changed_customer = update.customer.changed();
        let changed_params: Vec<&String> = update.parameters.keys().collect();
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let Some(task) = lock_task!(self, tx, task_id) else {
                return Err(StoreError::NotFound(format!("task '{task_id}'")));
            };
            if task.state.is_final() {
                return Err(StoreError::Conflict(format!(
                    "task '{task_id}' is {}: its context can no longer change",
                    task.state.as_str()
                )));
            }
            let current = match &task.params {
                Value::Object(m) => m.clone(),
                _ => Map::new(),
            };
            let params = crate::domain::context::merge_parameters(&current, &update.parameters)?;
            let mut details = task.details.clone();
            update.customer.apply_details(&mut details);
            let mut kind = task.customer.kind;
            let mut reference = task.customer.reference.clone();
            let mut name = task.customer.name.clone();
            if let Some(r) = &rematch {
                details.fill_from(&r.details);
                kind = r.matched.kind;
                reference.clone_from(&r.matched.reference);
                name.clone_from(&r.matched.name);
            }
            update.customer.name.apply(&mut name);
            sqlx::query(
                "UPDATE tasks SET params = $1, customer_details = $2, customer_name = $3, customer_kind = $4,
                    customer_ref = $5, updated_at = $6
                 WHERE id = $7",
            )
            .bind(Value::Object(params).to_string())
            .bind(serde_json::to_string(&details).unwrap_or_else(|_| "{}".into()))
            .bind(&name)
            .bind(kind.as_str())
            .bind(&reference)
            .bind(now)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
            if name != task.customer.name {
                // The entries in My Sessions show the name too: those of
                // the parts that have the task now (offered or accepted,
                // not saved). A part that is over keeps the name it knew.
                let sql = format!(
                    "UPDATE user_sessions SET customer_name = $1, updated_at = $2 WHERE task_id = $3 AND {}",
                    super::sessions::HAS_THE_TASK
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&name)
                .bind(now)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
            }
            record_task_change!(tx, task_id, "task.updated", None::<&str>, None::<&str>,
                change_payload(&task, task.state, serde_json::json!({
                    "by": update.by,
                    "customer": changed_customer,
                    "parameters": changed_params,
                    "customer_kind": kind,
                })), now);
            // The pages of those who have the task show its context: they follow.
            let mut tell = Tell::default();
            for agent in holding_agents!(tx, task_id) {
                tell.push(&agent, AgentEventKind::Task, task_id,
                    serde_json::json!({"task_id": task_id, "state": task.state, "reason": "updated"}));
            }
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            told
        });
        self.ring_agents(&told);
        self.ring_webhooks();
        self.task(task_id).await
    }

    /// Empties the kept records whose days are over (a day is `day_ms`);
    /// returns how many.
    pub async fn purge_expired_context(&self, day_ms: i64) -> StoreResult<u64> {
        let now = now_millis();
        with_pool!(self, pool => {
            Ok(sqlx::query(
                "UPDATE context_records SET customer_details = NULL, params = NULL, language = NULL,
                    reached = NULL, purged_at = $1
                 WHERE keep_days > 0 AND purged_at IS NULL AND ended_at + keep_days * $2 <= $1",
            )
            .bind(now)
            .bind(day_ms)
            .execute(pool)
            .await?
            .rows_affected())
        })
    }

    /// Claims the periodic job `name` for this period: true for exactly one
    /// caller per `period_ms`, whichever worker comes first.
    pub async fn claim_periodic_job(
        &self,
        name: &str,
        period_ms: i64,
        worker: &str,
    ) -> StoreResult<bool> {
        let now = now_millis();
        with_pool!(self, pool => {
            sqlx::query("INSERT INTO periodic_jobs (name, next_run_at) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .execute(pool)
                .await?;
            let n = sqlx::query(
                "UPDATE periodic_jobs SET next_run_at = $2 + $3, last_run_at = $2, last_worker = $4
                 WHERE name = $1 AND next_run_at <= $2",
            )
            .bind(name)
            .bind(now)
            .bind(period_ms)
            .bind(worker)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(n == 1)
        })
    }

    /// Deletes a service: refused while it has live tasks; its stored
    /// context is removed at once, its members and code catalog go, and the
    /// service stays only as the name its history refers to. Returns how
    /// many context records were emptied.
    pub async fn delete_service(&self, id: &str) -> StoreResult<u64> {
        let now = now_millis();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM services WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("service '{id}'")));
            }
            let live: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM tasks WHERE service_id = $1 AND state NOT IN ('concluded', 'cancelled')",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            if live > 0 {
                return Err(StoreError::Conflict(format!(
                    "service '{id}' has {live} live task(s): transfer or finish them first"
                )));
            }
            // A service another one overflows into stays: its tasks would
            // otherwise move to a service nobody serves.
            let others = sqlx::query("SELECT id, settings FROM services WHERE deleted_at IS NULL AND id <> $1 ORDER BY id")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            for r in &others {
                let settings: serde_json::Value = serde_json::from_str(&r.text("settings")?).unwrap_or_default();
                if settings["overflow_service"].as_str() == Some(id) {
                    return Err(StoreError::Conflict(format!(
                        "service '{}' overflows into service '{id}': change its overflow_service first",
                        r.text("id")?
                    )));
                }
            }
            let purged = sqlx::query(
                "UPDATE context_records SET customer_details = NULL, params = NULL, language = NULL,
                    reached = NULL, purged_at = $1
                 WHERE service_id = $2 AND purged_at IS NULL AND keep_days > 0",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM agent_services WHERE service_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("UPDATE service_codes SET active = FALSE WHERE service_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("UPDATE services SET deleted_at = $1, updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(purged)
        })
    }
}
