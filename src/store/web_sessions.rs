//! Browser sign-in sessions (the pages' cookie) and the agents' view of
//! their services' queues.
use super::rows::RowExt;
use super::tasks::{TASK_COLUMNS, task_from_row};
use super::{Store, StoreResult, Task, with_pool};

/// A stored browser session (never the cookie itself: only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    pub agent_id: String,
    /// How the agent signed in: `token` (later an SSO provider's name).
    pub method: String,
    /// For `token` sign-ins: the hash of the token used; the session ends
    /// when the agent's token is no longer this one.
    pub token_hash: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl Store {
    /// Stores a new browser session under the hash of its cookie, and drops
    /// expired ones.
    pub async fn create_web_session(&self, id_hash: &str, s: &WebSession) -> StoreResult<()> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM web_sessions WHERE expires_at < $1")
                .bind(s.created_at)
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO web_sessions (id_hash, agent_id, method, token_hash, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id_hash)
            .bind(&s.agent_id)
            .bind(&s.method)
            .bind(&s.token_hash)
            .bind(s.created_at)
            .bind(s.expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The browser session stored under `id_hash`, if it has not expired.
    pub async fn web_session(&self, id_hash: &str, now: i64) -> StoreResult<Option<WebSession>> {
        with_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT agent_id, method, token_hash, created_at, expires_at FROM web_sessions
                 WHERE id_hash = $1 AND expires_at > $2",
            )
            .bind(id_hash)
            .bind(now)
            .fetch_optional(pool)
            .await?;
            row.map(|r| {
                Ok(WebSession {
                    agent_id: r.text("agent_id")?,
                    method: r.text("method")?,
                    token_hash: r.opt_text("token_hash")?,
                    created_at: r.int("created_at")?,
                    expires_at: r.int("expires_at")?,
                })
            })
            .transpose()
        })
    }

    /// How many browser sessions `agent_id` has that have not expired at `now`.
    pub async fn live_web_sessions(&self, agent_id: &str, now: i64) -> StoreResult<i64> {
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar("SELECT count(*) FROM web_sessions WHERE agent_id = $1 AND expires_at > $2")
                .bind(agent_id)
                .bind(now)
                .fetch_one(pool)
                .await?)
        })
    }

    /// Ends a browser session (sign-out).
    pub async fn delete_web_session(&self, id_hash: &str) -> StoreResult<()> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Queued tasks of `services`, most urgent first: higher priority, then
    /// the longest waiting. What an agent of those services may pick up.
    pub async fn waiting_tasks(&self, services: &[String], limit: u32) -> StoreResult<Vec<Task>> {
        if services.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (1..=services.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'queued' AND service_id IN ({})
             ORDER BY priority DESC, arrived_at ASC, id ASC LIMIT ${}",
            marks.join(", "),
            services.len() + 1
        );
        with_pool!(self, pool => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for s in services {
                q = q.bind(s);
            }
            let rows = q.bind(i64::from(limit)).fetch_all(pool).await?;
            rows.iter().map(task_from_row).collect()
        })
    }

    /// How many tasks of `services` are queued.
    pub async fn waiting_count(&self, services: &[String]) -> StoreResult<i64> {
        if services.is_empty() {
            return Ok(0);
        }
        let marks: Vec<String> = (1..=services.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT count(*) FROM tasks WHERE state = 'queued' AND service_id IN ({})",
            marks.join(", ")
        );
        with_pool!(self, pool => {
            let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.as_str()));
            for s in services {
                q = q.bind(s);
            }
            Ok(q.fetch_one(pool).await?)
        })
    }
}
