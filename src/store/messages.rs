//! Messages as previews need them, the cached sanitized body, and the server
//! key that signs browser links.
use super::rows::{RowExt, storable};
use super::{Store, StoreError, StoreResult, Task, with_pool, with_reader};
use crate::domain::{Modality, now_millis};
use crate::mail::AttachmentMeta;

/// A stored message with what a preview shows (no raw source).
#[derive(Debug, Clone)]
pub struct MessageDetail {
    pub id: String,
    pub task_id: Option<String>,
    pub service_id: String,
    pub direction: String,
    pub kind: String,
    pub subject: Option<String>,
    pub from_address: Option<String>,
    pub from_name: Option<String>,
    /// `{"to": [...], "cc": [...], "reply_to": [...]}` of `{name, email}`.
    pub recipients: serde_json::Value,
    pub sent_at: Option<i64>,
    pub received_at: i64,
    pub size: i64,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub attachments: Vec<AttachmentMeta>,
    pub preview_html: Option<String>,
    pub preview_remote_blocked: Option<i64>,
}

/// A message as the email widget shows it (see [`Store::task_message_cards`]).
#[derive(Debug, Clone)]
pub struct MessageCard {
    pub id: String,
    /// The task it belongs to (another task than the one shown, for the
    /// earlier exchange of a conversation).
    pub task_id: Option<String>,
    pub conversation_id: Option<String>,
    pub direction: String,
    pub kind: String,
    pub disposition: String,
    /// The Message-ID header, without angle brackets.
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub from_address: Option<String>,
    pub from_name: Option<String>,
    pub received_at: i64,
    /// Size of the raw source in bytes.
    pub size: i64,
    pub delivery_status: Option<String>,
    pub recipients: serde_json::Value,
    pub attachments: Vec<AttachmentMeta>,
    pub remote_blocked: Option<i64>,
}

/// How many messages a task has, and when (the details' messages summary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub total: i64,
    /// From the customer: inbound mail, the customer's chat lines.
    pub inbound: i64,
    /// To the customer: replies sent, agents' and bots' chat lines.
    pub outbound: i64,
    pub first_at: Option<i64>,
    pub last_at: Option<i64>,
    /// `inbound` or `outbound`: who wrote last.
    pub last_direction: Option<String>,
}

/// Where a task's messages are, by modality: the table, the test of a line
/// from the customer, and its time.
fn message_source(m: Modality) -> [&'static str; 3] {
    match m {
        Modality::Email => ["messages", "direction = 'inbound'", "received_at"],
        Modality::Im => ["chat_messages", "sender = 'customer'", "sent_at"],
        Modality::Call => ["call_transcript_lines", "speaker = 'customer'", "spoken_at"],
    }
}

/// A scalar subquery of the counts of task `$1` in one text, `total inbound
/// first last` (-1 for none), read in one pass over the task's index range:
/// `last` is the latest time doubled, plus one when that line came from the
/// customer (who wrote last; at equal times the customer's line counts as
/// the later). SQL both backends run.
fn counts_subquery(m: Modality, received_until: Option<&str>) -> String {
    let [table, inbound, at] = message_source(m);
    let until = received_until
        .map(|p| format!(" AND received_at <= {p}"))
        .unwrap_or_default();
    format!(
        "SELECT count(*) || ' ' || coalesce(sum(CASE WHEN {inbound} THEN 1 ELSE 0 END), 0) || ' ' \
         || coalesce(min({at}), -1) || ' ' \
         || coalesce(max({at} * 2 + CASE WHEN {inbound} THEN 1 ELSE 0 END), -1) \
         FROM {table} WHERE task_id = $1{until}"
    )
}

/// `message_counts` of task `$1`, whatever its modality (`modality` names
/// the task's column, or a bound modality).
fn counts_columns(modality: &str) -> String {
    counts_columns_until(modality, None)
}

/// [`counts_columns`] of what was received until the parameter named.
fn counts_columns_until(modality: &str, received_until: Option<&str>) -> String {
    let [e, i, c] =
        [Modality::Email, Modality::Im, Modality::Call].map(|m| counts_subquery(m, received_until));
    format!(
        "CASE {modality} WHEN 'email' THEN ({e}) WHEN 'im' THEN ({i}) ELSE ({c}) END AS message_counts"
    )
}

/// The counts of one row read with [`counts_columns`].
fn counts_from_row(r: &impl RowExt) -> StoreResult<MessageCounts> {
    let packed = r.text("message_counts")?;
    let n: Vec<i64> = packed
        .split(' ')
        .map(|x| x.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| StoreError::Corrupt(format!("message counts '{packed}'")))?;
    let [total, inbound, first, last] = n[..] else {
        return Err(StoreError::Corrupt(format!("message counts '{packed}'")));
    };
    let at = |t: i64| (t >= 0).then_some(t);
    Ok(MessageCounts {
        total,
        inbound,
        outbound: total - inbound,
        first_at: at(first),
        last_at: at(last).map(|l| l / 2),
        last_direction: at(last)
            .map(|l| if l % 2 == 1 { "inbound" } else { "outbound" }.to_string()),
    })
}

static TASK_WITH_COUNTS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {}, {} FROM tasks WHERE id = $1",
        super::tasks::TASK_COLUMNS,
        counts_columns("modality")
    )
});

static COUNTS_ONLY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {}", counts_columns("$2")));

static COUNTS_UNTIL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {}", counts_columns_until("$2", Some("$3"))));

impl Store {
    /// [`Store::task_message_counts`] of what Switchboard had received by
    /// `until` (what an agent whose part is over reads).
    pub async fn task_message_counts_until(
        &self,
        task_id: &str,
        modality: Modality,
        until: i64,
    ) -> StoreResult<MessageCounts> {
        with_pool!(self, pool => {
            let r = sqlx::query(sqlx::AssertSqlSafe(COUNTS_UNTIL.as_str()))
                .bind(task_id)
                .bind(modality.as_str())
                .bind(until)
                .fetch_one(pool)
                .await?;
            counts_from_row(&r)
        })
    }

    /// A task's message counts: its mail, an IM task's chat lines, a call
    /// task's transcript lines, in one statement.
    pub async fn task_message_counts(
        &self,
        task_id: &str,
        modality: Modality,
    ) -> StoreResult<MessageCounts> {
        with_reader!(self, conn => {
            let r = sqlx::query(sqlx::AssertSqlSafe(COUNTS_ONLY.as_str()))
                .bind(task_id)
                .bind(modality.as_str())
                .fetch_one(conn)
                .await?;
            counts_from_row(&r)
        })
    }

    /// A task with its message counts, in the one statement that reads the
    /// task (the task's details are read on every click).
    pub async fn task_with_counts(&self, id: &str) -> StoreResult<(Task, MessageCounts)> {
        with_reader!(self, conn => {
            let r = sqlx::query(sqlx::AssertSqlSafe(TASK_WITH_COUNTS.as_str()))
                .bind(id)
                .fetch_optional(conn)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("task '{id}'")))?;
            Ok((super::tasks::task_from_row(&r)?, counts_from_row(&r)?))
        })
    }

    pub async fn message(&self, id: &str) -> StoreResult<MessageDetail> {
        with_pool!(self, pool => {
            let r = sqlx::query(
                "SELECT id, task_id, service_id, direction, kind, subject, from_address, from_name, recipients, sent_at,
                    received_at, size, text_body, html_body, attachments, preview_html, preview_remote_blocked
                 FROM messages WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("message '{id}'")))?;
            Ok(MessageDetail {
                id: r.text("id")?,
                task_id: r.opt_text("task_id")?,
                service_id: r.text("service_id")?,
                direction: r.text("direction")?,
                kind: r.text("kind")?,
                subject: r.opt_text("subject")?,
                from_address: r.opt_text("from_address")?,
                from_name: r.opt_text("from_name")?,
                recipients: r.json("recipients")?,
                sent_at: r.opt_int("sent_at")?,
                received_at: r.int("received_at")?,
                size: r.int("size")?,
                text_body: r.opt_text("text_body")?,
                html_body: r.opt_text("html_body")?,
                attachments: r.json("attachments")?,
                preview_html: r.opt_text("preview_html")?,
                preview_remote_blocked: r.opt_int("preview_remote_blocked")?,
            })
        })
    }

    /// The messages of a task as the email widget shows them, oldest first,
    /// in one query: who, when, what, its attachments, and how many remote
    /// images its cached preview blocks (`None` until the preview was made).
    pub async fn task_message_cards(&self, task_id: &str) -> StoreResult<Vec<MessageCard>> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, task_id, conversation_id, direction, kind, disposition, message_id, subject, from_address,
                    from_name, received_at, size, delivery_status, recipients, attachments, preview_remote_blocked
                 FROM messages
                 WHERE task_id = $1 ORDER BY received_at, COALESCE(sent_at, received_at), id",
            )
            .bind(task_id)
            .fetch_all(pool)
            .await?;
            rows.iter().map(card_from_row).collect()
        })
    }

    /// The earlier exchange of a task's conversation: the messages of the
    /// conversation's tasks that arrived before this one (a follow-up's
    /// predecessors) with the same customer, received before it arrived,
    /// the newest `limit`, oldest first. Threading follows Message-IDs,
    /// which anyone can quote: a stranger's mail that quotes another
    /// customer's thread does not get to see it. Mail kept without a task
    /// (automatic mail attached to the conversation) is not part of it.
    pub async fn earlier_message_cards(
        &self,
        task_id: &str,
        limit: usize,
    ) -> StoreResult<Vec<MessageCard>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut cards: Vec<MessageCard> = with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT m.id, m.task_id, m.conversation_id, m.direction, m.kind, m.disposition, m.message_id, m.subject,
                    m.from_address, m.from_name, m.received_at, m.size, m.delivery_status, m.recipients,
                    m.attachments, m.preview_remote_blocked
                 FROM tasks t
                 JOIN tasks o ON o.conversation_id = t.conversation_id
                    AND (o.arrived_at < t.arrived_at OR (o.arrived_at = t.arrived_at AND o.id < t.id))
                    AND (lower(o.customer_address) = lower(t.customer_address)
                         OR (o.customer_kind <> 'anonymous' AND o.customer_kind = t.customer_kind
                             AND o.customer_ref = t.customer_ref))
                 JOIN messages m ON m.task_id = o.id AND m.received_at <= t.arrived_at
                 WHERE t.id = $1
                 ORDER BY m.received_at DESC, COALESCE(m.sent_at, m.received_at) DESC, m.id DESC
                 LIMIT $2",
            )
            .bind(task_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter().map(card_from_row).collect::<StoreResult<Vec<_>>>()
        })?;
        cards.reverse();
        Ok(cards)
    }

    /// The raw source of a message.
    pub async fn message_raw(&self, id: &str) -> StoreResult<Vec<u8>> {
        // Staged sources live in message_sources (PostgreSQL, migration 17)
        // or in SQLite's sources file (migration 22).
        let sql = match self {
            Store::Postgres(..) => "SELECT CASE WHEN m.source_id IS NULL THEN m.raw ELSE s.raw END AS raw,
                    CASE WHEN m.source_id IS NULL THEN m.raw_encoding ELSE s.raw_encoding END AS raw_encoding,
                    NULL AS raw_file_id
                 FROM messages m LEFT JOIN message_sources s ON s.id = m.source_id WHERE m.id = $1",
            Store::Sqlite(..) => {
                "SELECT raw, raw_encoding, CAST(raw_file_id AS TEXT) AS raw_file_id FROM messages WHERE id = $1"
            }
        };
        with_pool!(self, pool => {
            let row = sqlx::query(sql)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("message '{id}'")))?;
            if let Some(file_id) = row.opt_text("raw_file_id")? {
                return self.source_from_file(&file_id).await;
            }
            let stored = row
                .opt_bytes("raw")?
                .ok_or_else(|| StoreError::Corrupt(format!("message '{id}' has no raw source")))?;
            super::source::unpack(stored, row.opt_text("raw_encoding")?.as_deref())
        })
    }

    /// Keeps the sanitized body so it is computed once per message.
    pub async fn store_preview(
        &self,
        id: &str,
        html: &str,
        remote_blocked: usize,
    ) -> StoreResult<()> {
        let html = storable(html);
        with_pool!(self, pool => {
            sqlx::query("UPDATE messages SET preview_html = $2, preview_remote_blocked = $3 WHERE id = $1")
                .bind(id)
                .bind(&html)
                .bind(remote_blocked as i64)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The key that signs browser links, made once and shared by every worker.
    pub async fn link_key(&self) -> StoreResult<Vec<u8>> {
        use rand::Rng;
        let fresh: [u8; 32] = rand::rng().random();
        with_pool!(self, pool => {
            sqlx::query("INSERT INTO server_keys (name, value, created_at) VALUES ('links', $1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(hex::encode(fresh))
                .bind(now_millis())
                .execute(pool)
                .await?;
            let value: String = sqlx::query_scalar("SELECT value FROM server_keys WHERE name = 'links'")
                .fetch_one(pool)
                .await?;
            hex::decode(value).map_err(|e| StoreError::Corrupt(format!("server key: {e}")))
        })
    }
}

/// A [`MessageCard`] from a row of `messages`.
fn card_from_row<R: RowExt>(r: &R) -> StoreResult<MessageCard> {
    Ok(MessageCard {
        id: r.text("id")?,
        task_id: r.opt_text("task_id")?,
        conversation_id: r.opt_text("conversation_id")?,
        direction: r.text("direction")?,
        kind: r.text("kind")?,
        disposition: r.text("disposition")?,
        message_id: r.opt_text("message_id")?,
        subject: r.opt_text("subject")?,
        from_address: r.opt_text("from_address")?,
        from_name: r.opt_text("from_name")?,
        received_at: r.int("received_at")?,
        size: r.int("size")?,
        delivery_status: r.opt_text("delivery_status")?,
        recipients: r.json("recipients")?,
        attachments: r.json("attachments")?,
        remote_blocked: r.opt_int("preview_remote_blocked")?,
    })
}
