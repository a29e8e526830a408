//! User sessions: My Sessions, wrap-up and save.
use super::rows::{Arg, RowExt, bind_all, like_pattern};
use super::{
    QueueStats, Session, SessionFilter, Store, StoreError, StoreResult, WriteTx, with_pool,
};
use crate::domain::session::check_can_save;
use crate::domain::wrapup::{WrapUp, WrapUpCodes};
use crate::domain::{Modality, SessionResult, SessionState, now_millis};

pub(super) const SESSION_COLUMNS: &str = "id, task_id, agent_id, service_id, modality, state, result, created_at, \
     answered_at, ended_at, saved_at, subject, customer_name, customer_address, codes_primary, codes_secondary, tags, \
     expires_at, end_reason";

pub(super) fn session_from_row(row: &impl RowExt) -> StoreResult<Session> {
    Ok(Session {
        id: row.text("id")?,
        task_id: row.text("task_id")?,
        agent_id: row.text("agent_id")?,
        service_id: row.text("service_id")?,
        modality: Modality::parse(&row.text("modality")?)?,
        state: SessionState::parse(&row.text("state")?)?,
        result: row
            .opt_text("result")?
            .map(|r| SessionResult::parse(&r))
            .transpose()?,
        created_at: row.int("created_at")?,
        answered_at: row.opt_int("answered_at")?,
        ended_at: row.opt_int("ended_at")?,
        saved_at: row.opt_int("saved_at")?,
        subject: row.opt_text("subject")?,
        customer_name: row.opt_text("customer_name")?,
        customer_address: row.opt_text("customer_address")?,
        wrapup: WrapUp {
            codes: WrapUpCodes {
                primary: row.json("codes_primary")?,
                secondary: row.json("codes_secondary")?,
            },
            tags: row.json("tags")?,
        },
        expires_at: row.opt_int("expires_at")?,
        end_reason: row.opt_text("end_reason")?,
    })
}

impl Store {
    pub async fn session(&self, id: &str) -> StoreResult<Session> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id = $1");
        with_pool!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(pool).await? {
                Some(row) => session_from_row(&row),
                None => Err(StoreError::NotFound(format!("session '{id}'"))),
            }
        })
    }

    /// The sessions of one task, oldest first.
    pub async fn task_sessions(&self, task_id: &str) -> StoreResult<Vec<Session>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM user_sessions WHERE task_id = $1 ORDER BY created_at, id"
        );
        with_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(task_id).fetch_all(pool).await?;
            rows.iter().map(session_from_row).collect()
        })
    }

    /// One agent's sessions, newest first. Only `agent_id`'s rows can come back.
    pub async fn my_sessions(
        &self,
        agent_id: &str,
        filter: &SessionFilter,
    ) -> StoreResult<Vec<Session>> {
        let mut sql = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE agent_id = $1");
        let mut args = vec![Arg::Text(agent_id.to_string())];
        match filter.live {
            Some(true) => sql.push_str(" AND state <> 'concluded'"),
            Some(false) => sql.push_str(" AND state = 'concluded'"),
            None => {}
        }
        if let Some(m) = filter.modality {
            args.push(Arg::Text(m.as_str().into()));
            sql.push_str(&format!(" AND modality = ${}", args.len()));
        }
        if let Some(q) = filter
            .query
            .as_deref()
            .map(str::trim)
            .filter(|q| !q.is_empty())
        {
            args.push(Arg::Text(like_pattern(q)));
            let n = args.len();
            sql.push_str(&format!(
                " AND (lower(subject) LIKE ${n} ESCAPE '\\' OR lower(customer_name) LIKE ${n} ESCAPE '\\' \
                 OR lower(customer_address) LIKE ${n} ESCAPE '\\' OR lower(tags) LIKE ${n} ESCAPE '\\')"
            ));
        }
        if let Some(c) = &filter.after {
            args.push(Arg::Int(c.created_at));
            args.push(Arg::Text(c.id.clone()));
            let (a, b) = (args.len() - 1, args.len());
            // A row comparison is an index condition on both backends.
            sql.push_str(&format!(" AND (created_at, id) < (${a}, ${b})"));
        }
        args.push(Arg::Int(i64::from(filter.limit)));
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT ${}",
            args.len()
        ));
        with_pool!(self, pool => {
            let rows = bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), &args).fetch_all(pool).await?;
            rows.iter().map(session_from_row).collect()
        })
    }

    /// Replaces a live session's wrap-up (already validated against the catalog).
    pub async fn set_wrapup(&self, session_id: &str, wrapup: &WrapUp) -> StoreResult<Session> {
        let json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        let done = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE user_sessions SET codes_primary = $1, codes_secondary = $2, tags = $3, updated_at = $4
                 WHERE id = $5 AND state <> 'concluded'",
            )
            .bind(json(&wrapup.codes.primary))
            .bind(json(&wrapup.codes.secondary))
            .bind(json(&wrapup.tags))
            .bind(now_millis())
            .bind(session_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if done != 1 {
            // Tell "gone" from "saved meanwhile".
            self.session(session_id).await?;
            return Err(StoreError::Conflict(format!(
                "session '{session_id}' is saved: a saved session is final"
            )));
        }
        self.session(session_id).await
    }

    /// Concludes a session in wrap-up: from now on the database refuses any
    /// change to it. Concludes the task too when it was its last open session.
    pub async fn save_session(&self, session_id: &str) -> StoreResult<Session> {
        let now = now_millis();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let sql = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id = $1");
            let session = match sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(session_id).fetch_optional(&mut *tx).await? {
                Some(row) => session_from_row(&row)?,
                None => return Err(StoreError::NotFound(format!("session '{session_id}'"))),
            };
            check_can_save(session.state).map_err(|e| StoreError::Conflict(e.to_string()))?;
            // The task's changes are written under its lock, so they keep their order.
            let task = super::offers::lock_task!(self, tx, &session.task_id)
                .ok_or_else(|| StoreError::NotFound(format!("task '{}'", session.task_id)))?;
            let done = sqlx::query(
                "UPDATE user_sessions SET state = 'concluded', saved_at = $1, ended_at = COALESCE(ended_at, $1), updated_at = $1
                 WHERE id = $2 AND state = 'wrap_up'",
            )
            .bind(now)
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict(format!("session '{session_id}' is already saved")));
            }
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM user_sessions WHERE task_id = $1 AND state <> 'concluded'",
            )
            .bind(&session.task_id)
            .fetch_one(&mut *tx)
            .await?;
            super::offers::record_task_change!(tx, &session.task_id, "session.saved", Some(session_id), Some(session.agent_id.as_str()),
                super::offers::change_payload(&task, task.state, serde_json::json!({
                    "session_id": session_id, "agent": session.agent_id, "result": session.result,
                })), now);
            if open == 0 {
                let concluded = sqlx::query(
                    "UPDATE tasks SET state = 'concluded', updated_at = $1, ended_at = COALESCE(ended_at, $1)
                     WHERE id = $2 AND state = 'wrap_up'",
                )
                .bind(now)
                .bind(&session.task_id)
                .execute(&mut *tx)
                .await?;
                if concluded.rows_affected() == 1 {
                    super::offers::record_task_change!(tx, &session.task_id, "task.concluded", None::<&str>, None::<&str>,
                        super::offers::change_payload(&task, crate::domain::TaskState::Concluded, serde_json::json!({})), now);
                }
            }
            tx.commit().await?;
        });
        super::webhooks::ring();
        self.session(session_id).await
    }

    /// Counts for the metrics endpoint.
    pub async fn queue_stats(&self) -> StoreResult<QueueStats> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT service_id, state, count(*) AS n FROM tasks
                 WHERE state NOT IN ('concluded', 'cancelled') GROUP BY service_id, state ORDER BY service_id, state",
            )
            .fetch_all(pool)
            .await?;
            let mut stats = QueueStats::default();
            for r in &rows {
                stats.tasks.push((r.text("service_id")?, r.text("state")?, r.int("n")?));
            }
            let rows = sqlx::query(
                "SELECT COALESCE(result, 'open') AS result, count(*) AS n FROM user_sessions GROUP BY COALESCE(result, 'open') ORDER BY 1",
            )
            .fetch_all(pool)
            .await?;
            for r in &rows {
                stats.sessions.push((r.text("result")?, r.int("n")?));
            }
            Ok(stats)
        })
    }
}
