//! Open-chat handles: where the session a handle names stands now, and
//! the keys that sign handles (made, rotated, retired).
use super::record::ChatRecord;
use crate::domain::handle::{SessionNow, retired_keys, session_now};
use crate::domain::{Millis, now_millis};
use crate::store::{Store, StoreError, StoreResult, WriteTx, with_pool};

/// Where an open-chat handle's session stands, with what the link opens.
#[derive(Debug, Clone)]
pub struct HandleTarget {
    pub now: SessionNow,
    pub chat: Option<ChatRecord>,
}

/// A user session's task, agent, state and result.
type SessionRow = (String, String, String, Option<String>);

impl Store {
    /// The caller's connected session on a task (they hold it now).
    pub async fn holding_session(
        &self,
        task_id: &str,
        agent_id: &str,
    ) -> StoreResult<Option<String>> {
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar(
                "SELECT id FROM user_sessions WHERE task_id = $1 AND agent_id = $2 AND state = 'connected'
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(task_id)
            .bind(agent_id)
            .fetch_optional(pool)
            .await?)
        })
    }

    /// Where the session an open-chat handle names stands now, and the chat
    /// it opens.
    pub async fn handle_target(
        &self,
        task_id: &str,
        session_id: &str,
        agent_id: &str,
    ) -> StoreResult<HandleTarget> {
        let (session, holders): (Option<SessionRow>, Vec<String>) = with_pool!(self, pool => {
            let session = sqlx::query_as(
                "SELECT task_id, agent_id, state, result FROM user_sessions WHERE id = $1",
            )
            .bind(session_id)
            .fetch_optional(pool)
            .await?;
            let holders = sqlx::query_scalar(
                "SELECT agent_id FROM user_sessions WHERE task_id = $1 AND state = 'connected'",
            )
            .bind(task_id)
            .fetch_all(pool)
            .await?;
            (session, holders)
        });
        let ours = session
            .as_ref()
            .filter(|(t, a, _, _)| t == task_id && a == agent_id)
            .map(|(_, _, state, result)| (state.as_str(), result.as_deref()));
        let task = self.task(task_id).await?;
        Ok(HandleTarget {
            now: session_now(ours, &holders, agent_id, task.state),
            chat: self.chat_of_task(&task).await?,
        })
    }

    /// The keys that sign open-chat handles, newest first: (key id, key).
    /// One is made when there is none.
    pub async fn chat_handle_keys(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let mut keys = self.read_chat_handle_keys().await?;
        if keys.is_empty() {
            self.rotate_chat_handle_key(false, 0).await?;
            keys = self.read_chat_handle_keys().await?;
        }
        Ok(keys)
    }

    async fn read_chat_handle_keys(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let rows: Vec<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT name, value FROM server_keys WHERE name LIKE 'chat_handle:%' ORDER BY created_at DESC, name DESC",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(name, value)| {
                let kid = name.trim_start_matches("chat_handle:").to_string();
                let key = hex::decode(value)
                    .map_err(|e| StoreError::Corrupt(format!("chat handle key: {e}")))?;
                Ok((kid, key))
            })
            .collect()
    }

    /// Makes a new handle-signing key (the newest signs from now on). An
    /// older key is deleted once the key after it has signed for longer than
    /// `keep_ms` (every handle it signed has expired), or at once with
    /// `retire_all` (every handle made before stops working). Returns the
    /// new key's id.
    pub async fn rotate_chat_handle_key(
        &self,
        retire_all: bool,
        keep_ms: Millis,
    ) -> StoreResult<String> {
        use rand::Rng;
        let fresh: [u8; 32] = rand::rng().random();
        let kid = hex::encode(rand::rng().random::<[u8; 4]>());
        let now = now_millis();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut keys: Vec<(String, i64)> = sqlx::query_as(
                "SELECT name, created_at FROM server_keys WHERE name LIKE 'chat_handle:%' ORDER BY created_at, name",
            )
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO server_keys (name, value, created_at) VALUES ($1, $2, $3)")
                .bind(format!("chat_handle:{kid}"))
                .bind(hex::encode(fresh))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            keys.push((format!("chat_handle:{kid}"), now));
            for name in retired_keys(&keys, now, keep_ms, retire_all) {
                sqlx::query("DELETE FROM server_keys WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(kid)
    }
}
