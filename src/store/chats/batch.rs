//! A pulled channel's events (Matrix) committed in one transaction with
//! the channel's cursor, under the owner's fence.
use super::customer::chat_params;
use super::delivery::records_change;
use super::event::{ChatInput, ChatOutcome, apply_chat_input};
use crate::domain::chat::{ChatEventKind, TaskPlan, plan};
use crate::domain::event::AgentEventKind;
use crate::domain::id::new_id;
use crate::domain::{Millis, TaskState, now_millis};
use crate::store::offers::{Tell, customer_left, lock_task, write_tell};
use crate::store::ownership::{Fence, check_fence};
use crate::store::rows::{RowExt, storable};
use crate::store::{Store, StoreResult, Task, WriteTx, with_pool};

/// One transaction's worth of a pulled channel's events (Matrix), with the
/// cursor after them.
#[derive(Debug, Clone)]
pub struct ChatBatch {
    pub channel_id: String,
    pub service_id: String,
    pub fence: Fence,
    pub cursor: Option<String>,
    pub inputs: Vec<ChatInput>,
}

impl Store {
    /// Commits a pulled channel's batch exactly once: its chats, tasks,
    /// messages and the channel's cursor, in one transaction under the
    /// owner's fence (fails with `LeaseLost`, changing nothing, when another
    /// worker owns the channel now).
    pub async fn commit_chat_batch(&self, batch: &ChatBatch) -> StoreResult<Vec<ChatOutcome>> {
        let now = now_millis();
        let mut tell = Tell::default();
        let (outcomes, told) = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            check_fence!(self, tx, &batch.fence);
            let mut outcomes = Vec::with_capacity(batch.inputs.len());
            for input in &batch.inputs {
                let o = apply_chat_input!(self, tx, tell, &batch.channel_id, &batch.service_id, input, now);
                outcomes.push(o);
            }
            let duplicates = outcomes.iter().filter(|o| o.duplicate_message).count() as i64;
            let events = outcomes.len() as i64 - duplicates;
            sqlx::query(
                "UPDATE chat_channels SET cursor = COALESCE($2, cursor), events_total = events_total + $3,
                    duplicates_total = duplicates_total + $4,
                    last_event_at = CASE WHEN $3 > 0 THEN $5 ELSE last_event_at END, updated_at = $5
                 WHERE id = $1",
            )
            .bind(&batch.channel_id)
            .bind(&batch.cursor)
            .bind(events)
            .bind(duplicates)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (outcomes, told)
        });
        self.ring_agents(&told);
        if outcomes.iter().any(|o| o.task_created || o.task_cancelled) {
            self.wake_router();
        }
        if batch
            .inputs
            .iter()
            .zip(&outcomes)
            .any(|(i, o)| records_change(i.event.kind, o))
        {
            self.ring_webhooks();
        }
        Ok(outcomes)
    }
}
