//! Call transcripts (see [`crate::domain::transcript`]): each line stored
//! once by its poster's id, under the task's lock, and its holders told;
//! read back in the order spoken, in the shape of a chat transcript.
use super::chats::{ChatMessage, chat_message_from_row};
use super::offers::{Tell, lock_task, write_tell};
use super::rows::RowExt;
use super::{Store, StoreError, StoreResult, WriteTx, with_pool};
use crate::domain::chat::Sender;
use crate::domain::event::AgentEventKind;
use crate::domain::id::new_id;
use crate::domain::transcript::{TranscriptLine, same_line};
use crate::domain::{Modality, millis_to_rfc3339, now_millis};
use serde_json::json;

/// What a post of lines did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranscriptPost {
    /// Stored: `added` new lines; `repeated` were stored before, word for word.
    Stored { added: u64, repeated: u64 },
    /// A line's id was stored before with other content: nothing was stored.
    IdReused(String),
}

impl Store {
    /// Adds `lines` to the transcript of call task `task_id`, all or none.
    /// The holders of the task are told (SSE `transcript`) when lines were added.
    pub async fn add_call_transcript(
        &self,
        task_id: &str,
        lines: &[TranscriptLine],
    ) -> StoreResult<TranscriptPost> {
        let now = now_millis();
        let mut tell = Tell::default();
        let (post, told) = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let task = lock_task!(self, tx, task_id)
                .ok_or_else(|| StoreError::NotFound(format!("task '{task_id}'")))?;
            if task.modality != Modality::Call {
                return Err(StoreError::Conflict(format!(
                    "task '{task_id}' is an {} task: only call tasks take a transcript",
                    task.modality.as_str()
                )));
            }
            let mut seq: i64 = sqlx::query_scalar(
                "SELECT coalesce(max(seq), 0) FROM call_transcript_lines WHERE task_id = $1",
            )
            .bind(task_id)
            .fetch_one(&mut *tx)
            .await?;
            let (mut added, mut repeated) = (0u64, 0u64);
            for line in lines {
                seq += 1;
                let inserted = sqlx::query(
                    "INSERT INTO call_transcript_lines
                        (id, task_id, external_id, speaker, speaker_name, text, spoken_at, received_at, seq)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (task_id, external_id) DO NOTHING",
                )
                .bind(new_id("trl"))
                .bind(task_id)
                .bind(&line.external_id)
                .bind(line.speaker.as_str())
                .bind(&line.speaker_name)
                .bind(&line.text)
                .bind(line.spoken_at)
                .bind(now)
                .bind(seq)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 1 {
                    added += 1;
                    continue;
                }
                let r = sqlx::query(
                    "SELECT speaker, speaker_name, text, spoken_at FROM call_transcript_lines
                     WHERE task_id = $1 AND external_id = $2",
                )
                .bind(task_id)
                .bind(&line.external_id)
                .fetch_one(&mut *tx)
                .await?;
                let stored = TranscriptLine {
                    external_id: line.external_id.clone(),
                    speaker: Sender::parse(&r.text("speaker")?).ok_or_else(|| {
                        StoreError::Corrupt(format!("transcript line '{}' has no speaker", line.external_id))
                    })?,
                    speaker_name: r.opt_text("speaker_name")?,
                    text: r.text("text")?,
                    spoken_at: r.int("spoken_at")?,
                    timed: true,
                };
                if !same_line(&stored, line) {
                    // Dropping the transaction rolls back the lines before it.
                    return Ok(TranscriptPost::IdReused(line.external_id.clone()));
                }
                repeated += 1;
            }
            if added == 0 {
                return Ok(TranscriptPost::Stored { added, repeated });
            }
            sqlx::query("UPDATE tasks SET updated_at = $1 WHERE id = $2")
                .bind(now)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
            let last = lines.iter().map(|l| l.spoken_at).max().unwrap_or(now);
            for agent in super::events::holding_agents!(tx, task_id) {
                tell.push(
                    &agent,
                    AgentEventKind::Transcript,
                    task_id,
                    json!({"task_id": task_id, "added": added, "spoken_at": millis_to_rfc3339(last)}),
                );
            }
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (TranscriptPost::Stored { added, repeated }, told)
        });
        self.ring_agents(&told);
        Ok(post)
    }

    /// The transcript of a call task, in the order spoken, as chat lines are
    /// shown (`sender` is the speaker).
    pub async fn call_transcript(&self, task_id: &str) -> StoreResult<Vec<ChatMessage>> {
        with_pool!(self, pool => {
            // Under the chat transcript's column names, read the same way.
            let rows = sqlx::query(
                "SELECT id, task_id, speaker AS sender, CAST(NULL AS TEXT) AS sender_id, speaker_name AS sender_name,
                    text, spoken_at AS sent_at, received_at, CAST(NULL AS TEXT) AS delivery
                 FROM call_transcript_lines WHERE task_id = $1 ORDER BY spoken_at, seq, id",
            )
            .bind(task_id)
            .fetch_all(pool)
            .await?;
            rows.iter().map(chat_message_from_row).collect()
        })
    }
}
