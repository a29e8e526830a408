//! The chat of an IM task, as stored: which chat a task came from, and
//! whether a channel has seen a chat.
use crate::domain::Millis;
use crate::store::rows::RowExt;
use crate::store::{Store, StoreResult, Task, with_pool};
use serde::Serialize;

/// The chat of an IM task.
#[derive(Debug, Clone, Serialize)]
pub struct ChatRecord {
    pub id: String,
    pub channel_id: String,
    /// The chat's id on the platform (a Matrix room id).
    pub external_id: String,
    pub state: String,
    pub task_id: Option<String>,
    pub member_agent: Option<String>,
    pub member_user: Option<String>,
    pub left_at: Option<Millis>,
    pub ended_at: Option<Millis>,
}

const CHAT_COLUMNS: &str =
    "id, channel_id, external_id, state, task_id, member_agent, member_user, left_at, ended_at";

fn chat_from_row(r: &impl RowExt) -> StoreResult<ChatRecord> {
    Ok(ChatRecord {
        id: r.text("id")?,
        channel_id: r.text("channel_id")?,
        external_id: r.text("external_id")?,
        state: r.text("state")?,
        task_id: r.opt_text("task_id")?,
        member_agent: r.opt_text("member_agent")?,
        member_user: r.opt_text("member_user")?,
        left_at: r.opt_int("left_at")?,
        ended_at: r.opt_int("ended_at")?,
    })
}

impl Store {
    /// The chat an IM task came from.
    pub async fn chat_of_task(&self, task: &Task) -> StoreResult<Option<ChatRecord>> {
        // By the database's links, not the task's parameters: those are
        // removed when the task ends (unless its service stores context).
        let sql = format!(
            "SELECT {CHAT_COLUMNS} FROM chats WHERE task_id = $1
             OR id = (SELECT chat_id FROM chat_messages WHERE task_id = $1 ORDER BY sent_at LIMIT 1)
             LIMIT 1"
        );
        with_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&task.id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(chat_from_row).transpose()
        })
    }

    /// Whether a channel has seen a chat before.
    pub async fn chat_exists(&self, channel_id: &str, external_id: &str) -> StoreResult<bool> {
        with_pool!(self, pool => {
            let v: Option<String> = sqlx::query_scalar("SELECT id FROM chats WHERE channel_id = $1 AND external_id = $2")
                .bind(channel_id)
                .bind(external_id)
                .fetch_optional(pool)
                .await?;
            Ok(v.is_some())
        })
    }
}
