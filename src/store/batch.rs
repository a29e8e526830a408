//! The exactly-once commit of a batch of incoming mail: its messages,
//! the conversations and tasks they make, its quarantine entries and the
//! mailbox cursor, in one transaction; a mail the database refuses goes
//! to the quarantine and the rest of its batch commits.
use super::events::{self, holding_agents, record_agent_event};
use super::ownership::{Fence, check_fence};
use super::rows::{Arg, RowExt, bind_all, placeholders, storable, value_rows};
use super::{Store, StoreError, StoreResult, WriteTx, with_pool};
use crate::domain::customer::{CustomerDetails, CustomerMatch};
use crate::domain::event::AgentEventKind;
use crate::domain::id::new_id;
use crate::domain::ingest::{
    AutoReplyPolicy, Disposition, MailboxCursor, QuarantineReason, address_reached, decide,
};
use crate::domain::service::Service;
use crate::domain::threading::{Anchor, BatchThreading, LatestTask};
use crate::domain::{TaskState, millis_to_rfc3339, now_millis};
use crate::mail::{MailKind, ParsedMail};

/// A mail ready to be committed: parsed, classified and its customer resolved.
#[derive(Debug, Clone)]
pub struct IncomingMail {
    /// Where it came from (UID and folder, or file name), for the quarantine
    /// should the database refuse it.
    pub uid: Option<u32>,
    pub source_ref: Option<String>,
    pub raw: Vec<u8>,
    /// `raw` packed for storage ([`super::source::pack`]), where that pays.
    pub packed: Option<Vec<u8>>,
    /// The staged source, once [`Store::stage_sources`] wrote it ahead of
    /// the batch (PostgreSQL's `message_sources`, SQLite's sources file):
    /// the message then names it (`source_id`, `raw_file_id`) instead of
    /// holding the bytes.
    pub source_id: Option<String>,
    pub parsed: ParsedMail,
    pub kind: MailKind,
    pub customer: CustomerMatch,
    /// The customer's details as resolved (the directory's or address
    /// book's entry fills what the sender's address does not give).
    pub customer_details: CustomerDetails,
}

/// A mail that could not be taken in, with its raw source where we have it.
#[derive(Debug, Clone)]
pub struct QuarantinedMail {
    pub uid: Option<u32>,
    pub source_ref: Option<String>,
    pub reason: QuarantineReason,
    pub detail: String,
    pub size: u64,
    pub raw: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub enum Incoming {
    Mail(Box<IncomingMail>),
    Quarantine(QuarantinedMail),
}

/// One transaction's worth of a mailbox's mail.
#[derive(Debug, Clone)]
pub struct IngestBatch {
    pub mailbox_id: String,
    pub service_id: String,
    /// The mailbox's ownership; the commit fails with `LeaseLost` if it is
    /// no longer current. `None` for operator actions (quarantine retry),
    /// which do not move the cursor.
    pub fence: Option<Fence>,
    /// The cursor after this batch (IMAP); `None` for Maildir.
    pub cursor: Option<MailboxCursor>,
    pub items: Vec<Incoming>,
    /// A quarantine entry this batch resolves.
    pub resolves_quarantine: Option<String>,
}

/// What a committed batch did.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    /// Tasks created.
    pub new_tasks: Vec<String>,
    /// (task, message) for mail appended to an open task: its holder is told.
    pub appended: Vec<(String, String)>,
    /// Message ids stored, in batch order.
    pub messages: Vec<String>,
    pub duplicates: usize,
    pub quarantined: usize,
    /// Stored mail by what became of it ([`Disposition::as_str`]).
    pub dispositions: std::collections::BTreeMap<&'static str, usize>,
}

impl IngestReport {
    fn absorb(&mut self, other: IngestReport) {
        self.new_tasks.extend(other.new_tasks);
        self.appended.extend(other.appended);
        self.messages.extend(other.messages);
        self.duplicates += other.duplicates;
        self.quarantined += other.quarantined;
        for (d, n) in other.dispositions {
            *self.dispositions.entry(d).or_default() += n;
        }
    }

    /// What became of the batch's mail, as counts by outcome: each
    /// disposition, then `duplicate` and `quarantined`.
    pub fn outcomes(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        self.dispositions
            .iter()
            .map(|(d, n)| (*d, *n))
            .chain([
                ("duplicate", self.duplicates),
                ("quarantined", self.quarantined),
            ])
            .filter(|(_, n)| *n > 0)
    }

    /// Logs what a committed batch of `mailbox` did (ids and counts, no content).
    pub fn log(&self, mailbox: &str, last_uid: Option<u32>) {
        for (task, message) in &self.appended {
            tracing::info!(mailbox = %mailbox, task = %task, message_id = %message, "new message on an open task");
        }
        tracing::info!(
            mailbox = %mailbox,
            tasks = self.new_tasks.len(),
            messages = self.messages.len(),
            duplicates = self.duplicates,
            quarantined = self.quarantined,
            last_uid,
            "batch committed"
        );
    }
}

/// The insert of inbound messages, up to `VALUES`; `$staged` is the column
/// naming a source staged ahead of the batch. Each row is [`MESSAGE_ROW`].
macro_rules! insert_messages {
    ($staged:literal) => {
        concat!(
            "INSERT INTO messages (id, service_id, mailbox_id, direction, kind, disposition, message_id, content_hash,
                in_reply_to, refs, subject, from_address, from_name, recipients, sent_at, received_at, size,
                text_body, html_body, attachments, classification, raw, conversation_id, task_id, raw_encoding, ",
            $staged,
            ") VALUES "
        )
    };
}

/// One row of [`insert_messages!`].
const MESSAGE_ROW: &str =
    "(?, ?, ?, 'inbound', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// A mail stored meanwhile (same service, same content) is not written twice.
const ON_MESSAGE_CONFLICT: &str =
    " ON CONFLICT (service_id, content_hash) WHERE direction = 'inbound' DO NOTHING";

/// Rows per multi-row insert. SQLite's time per row grows with the rows of
/// a statement: a 3,000-mail backlog's messages took 0.53 s in statements
/// of 50 rows and 0.29 s in statements of 10 (one statement per mail: 0.30 s,
/// but 3,000 hops to SQLite's thread instead of 300).
const ROWS_PER_INSERT: usize = 10;

/// Events to ring once a batch is committed: (agent, task, event body).
type Tell = Vec<(String, String, String)>;

/// The kind of bulk mail relayed by the service's own list.
static NORMAL: MailKind = MailKind::Normal;

/// What becomes of one new mail of a batch, decided before anything is written.
struct Plan<'a> {
    mail: &'a IncomingMail,
    /// The mail's kind for this service: bulk mail relayed by the
    /// service's own list (its address as a group) is normal mail.
    kind: &'a MailKind,
    row_id: String,
    disposition: Disposition,
    conversation_id: Option<String>,
    task_id: Option<String>,
    new_conversation: bool,
    new_task: bool,
}

/// The threading of a batch's `fresh` mail (each with its references):
/// the stored messages they name, read once, and their conversations'
/// newest tasks ([`BatchThreading`]).
macro_rules! thread_anchors {
    ($tx:ident, $batch:expr, $fresh:expr) => {{
        let fresh: &[(&IncomingMail, Vec<String>)] = $fresh;
        let anchors_of = |refs: &[&str], this_service: bool| {
            let mut args = Vec::with_capacity(refs.len() + 1);
            let scope = if this_service {
                args.push(Arg::Text($batch.service_id.clone()));
                "service_id = $1".to_string()
            } else {
                format!("{ANY_SERVICE} AND direction = 'outbound'")
            };
            let first = args.len() + 1;
            args.extend(refs.iter().map(|r| Arg::Text((*r).to_string())));
            let sql = format!(
                "SELECT message_id, conversation_id, received_at FROM messages WHERE {scope} \
                 AND message_id IN ({}) AND conversation_id IS NOT NULL",
                placeholders(first, refs.len())
            );
            (sql, args)
        };
        let mut own: Vec<Anchor> = Vec::new();
        let mut elsewhere: Vec<Anchor> = Vec::new();
        // The service's own messages for every reference; our replies of
        // any service only for mail that has none of those.
        for this_service in [true, false] {
            let wanted: std::collections::BTreeSet<&str> = if this_service {
                fresh.iter().flat_map(|(_, refs)| refs.iter().map(String::as_str)).collect()
            } else {
                let named: std::collections::HashSet<&str> =
                    own.iter().map(|a| a.message_id.as_str()).collect();
                fresh
                    .iter()
                    .filter(|(_, refs)| !refs.iter().any(|r| named.contains(r.as_str())))
                    .flat_map(|(_, refs)| refs.iter().map(String::as_str))
                    .collect()
            };
            let wanted: Vec<&str> = wanted.into_iter().collect();
            let mut anchors = Vec::new();
            for part in wanted.chunks(500) {
                let (sql, args) = anchors_of(part, this_service);
                let rows = bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
                    .fetch_all(&mut *$tx)
                    .await?;
                for r in &rows {
                    anchors.push(Anchor {
                        message_id: r.text("message_id")?,
                        conversation_id: r.text("conversation_id")?,
                        received_at: r.int("received_at")?,
                    });
                }
            }
            if this_service {
                own = anchors;
            } else {
                elsewhere = anchors;
            }
        }
        let conversations: Vec<&str> = own
            .iter()
            .chain(&elsewhere)
            .map(|a| a.conversation_id.as_str())
            .collect::<std::collections::BTreeSet<&str>>()
            .into_iter()
            .collect();
        let mut latest = Vec::new();
        for part in conversations.chunks(500) {
            let sql = format!(
                "SELECT conversation_id, id, state FROM (SELECT conversation_id, id, state, \
                 row_number() OVER (PARTITION BY conversation_id ORDER BY arrived_at DESC, id DESC) AS n \
                 FROM tasks WHERE conversation_id IN ({})) AS newest WHERE n = 1",
                placeholders(1, part.len())
            );
            let args: Vec<Arg> = part.iter().map(|c| Arg::Text((*c).to_string())).collect();
            let rows = bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), &args)
                .fetch_all(&mut *$tx)
                .await?;
            for r in &rows {
                latest.push(LatestTask {
                    conversation_id: r.text("conversation_id")?,
                    task_id: r.text("id")?,
                    state: TaskState::parse(&r.text("state")?)?,
                });
            }
        }
        BatchThreading::new(own, elsewhere, latest)
    }};
}

/// Messages of every service, through the `(service_id, message_id)` index:
/// our own replies are looked up across services (to thread an answer, to
/// know a reply of ours come back, to mark a bounced one), since a task
/// (and its conversation) may move to another service.
const ANY_SERVICE: &str = "service_id IN (SELECT id FROM services)";

fn storable_opt(s: &Option<String>) -> Option<std::borrow::Cow<'_, str>> {
    s.as_deref().map(storable)
}

/// The database's reason when it refused the data of a mail itself: a value
/// it cannot hold, a constraint, a size limit. `None` for everything else —
/// a lost connection, a deadlock, a busy file, a missing table, a full disk —
/// which a retry may cure and must not send mail to the quarantine.
fn refusal(e: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    let code = db.code()?;
    let refused = if code.len() == 5 {
        // PostgreSQL SQLSTATE classes: 22 data exception (e.g. 22021, a NUL
        // byte), 23 integrity constraint violation, 54 program limit exceeded.
        ["22", "23", "54"]
            .iter()
            .any(|class| code.starts_with(class))
    } else {
        // SQLite primary result codes (the low byte of an extended code):
        // 18 TOOBIG, 19 CONSTRAINT, 20 MISMATCH.
        code.parse::<i64>()
            .is_ok_and(|c| matches!(c & 0xff, 18..=20))
    };
    refused.then(|| db.message().chars().take(300).collect())
}

/// The message ids a mail refers to, newest reference first, bounded, as
/// they are stored; a bounce or a delivery notice (a delay warning) first
/// refers to the mail it reports (named inside the report), so it joins
/// that conversation with its reason.
fn thread_refs(mail: &IncomingMail) -> Vec<String> {
    let parsed = &mail.parsed;
    let mut ids: Vec<String> = Vec::new();
    if let MailKind::Bounce {
        original_message_id: Some(original),
        ..
    }
    | MailKind::Notice {
        original_message_id: Some(original),
    } = &mail.kind
    {
        ids.push(original.clone());
    }
    for r in parsed
        .in_reply_to
        .iter()
        .chain(parsed.references.iter().rev())
    {
        if !ids.contains(r) {
            ids.push(r.clone());
        }
    }
    ids.truncate(50);
    ids.iter().map(|r| storable(r).into_owned()).collect()
}

/// A mail task's custom parameters: the mailbox it came through and its
/// Message-ID.
pub(super) fn mail_task_params(mailbox: Option<&str>, message_id: Option<&str>) -> String {
    serde_json::json!({"mailbox": mailbox, "message_id": message_id}).to_string()
}

/// What the directory or address book knows of a mail's sender beyond
/// their address (phone, UPN, company…), as a task keeps it: only for a
/// customer found there.
pub(super) fn mail_customer_details(customer: &CustomerMatch, details: &CustomerDetails) -> String {
    (customer.reference.is_some() && *details != CustomerDetails::default())
        .then(|| serde_json::to_string(details).ok())
        .flatten()
        .unwrap_or_else(|| "{}".to_string())
}

impl Store {
    /// Commits a batch of a mailbox's mail in one transaction: the cursor
    /// (behind the fence), each new mail's conversation, task and message,
    /// and the events of the agents holding the tasks that got mail.
    ///
    /// Everything is decided in memory first, threading included (the
    /// stored messages the batch refers to are read once, and the batch's
    /// own mail joins them as it is decided, so a reply threads onto a mail
    /// of the same batch), then written in multi-row inserts of
    /// [`ROWS_PER_INSERT`] rows. On PostgreSQL another worker may store the
    /// same mail meanwhile (two mailboxes of one service): the insert then
    /// comes up short, the transaction is rolled back, and the batch is
    /// committed again, which counts that mail a duplicate. Each such try
    /// knows one more of the batch's mail stored than the one before, so
    /// there are at most one more tries than mails. Mail already stored for
    /// the service (same content hash) is a duplicate and skipped. Fails
    /// with `LeaseLost`, changing nothing, when the fence is no longer the
    /// mailbox's ownership.
    pub async fn commit_batch(&self, batch: &IngestBatch) -> StoreResult<IngestReport> {
        let service = self.service(&batch.service_id).await?;
        let policy = AutoReplyPolicy::parse(&service.settings.auto_reply_policy)
            .unwrap_or(AutoReplyPolicy::Attach);
        let tries = batch.items.len() + 1;
        for _ in 0..tries {
            if let Some((report, tell)) = self.try_commit_batch(batch, &service, policy).await? {
                self.ring_agents(tell.iter().map(|(agent, _, _)| agent));
                if !report.new_tasks.is_empty() {
                    self.wake_router();
                }
                return Ok(report);
            }
        }
        Err(StoreError::Conflict(format!(
            "mailbox {}: mail of this batch was stored by another worker at each of {tries} tries",
            batch.mailbox_id
        )))
    }

    /// One try of [`Store::commit_batch`]: `None` when another worker
    /// stored a mail of the batch meanwhile (nothing was committed). Also
    /// returns the events to ring.
    async fn try_commit_batch(
        &self,
        batch: &IngestBatch,
        service: &Service,
        policy: AutoReplyPolicy,
    ) -> StoreResult<Option<(IngestReport, Tell)>> {
        let settings = &service.settings;
        let now = now_millis();
        let mut report = IngestReport::default();
        // For the holders of tasks that get mail.
        let mut tell: Tell = Vec::new();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // The fence: a worker that lost its mailbox commits nothing.
            if let Some(fence) = &batch.fence {
                check_fence!(self, tx, fence);
                sqlx::query(
                    "UPDATE mailboxes SET uid_validity = COALESCE($2, uid_validity), last_uid = COALESCE($3, last_uid),
                        last_sync_at = $4, updated_at = $4 WHERE id = $1",
                )
                .bind(&batch.mailbox_id)
                .bind(batch.cursor.map(|c| i64::from(c.uid_validity)))
                .bind(batch.cursor.map(|c| i64::from(c.last_uid)))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            // Asked once for the whole batch: mail the service already has
            // (by content hash), and our own mail come back (a Bcc to the
            // service, a forwarding rule), whose Message-ID is one the
            // service sent: it is stored already, as sent, and taken in it
            // would show the agent's reply as the customer's.
            let hashes: Vec<&str> = batch.items.iter().filter_map(|i| match i {
                Incoming::Mail(m) => Some(m.parsed.content_hash.as_str()),
                Incoming::Quarantine(_) => None,
            }).collect();
            let ids: Vec<&str> = batch.items.iter().filter_map(|i| match i {
                Incoming::Mail(m) => m.parsed.message_id.as_deref(),
                Incoming::Quarantine(_) => None,
            }).collect();
            let mut known_hashes = std::collections::HashSet::new();
            let mut own_ids = std::collections::HashSet::new();
            // A duplicate is one of this service's; a reply of ours may have
            // been sent by any service (a task transferred after it came in).
            for (column, direction, this_service, values, found) in [
                ("content_hash", "inbound", true, &hashes, &mut known_hashes),
                ("message_id", "outbound", false, &ids, &mut own_ids),
            ] {
                for part in values.chunks(500) {
                    let mut args = Vec::with_capacity(part.len() + 1);
                    let scope = if this_service {
                        args.push(Arg::Text(batch.service_id.clone()));
                        "service_id = $1"
                    } else {
                        ANY_SERVICE
                    };
                    let mut marks = Vec::with_capacity(part.len());
                    for v in part {
                        args.push(Arg::Text((*v).to_string()));
                        marks.push(format!("${}", args.len()));
                    }
                    let sql = format!(
                        "SELECT {column} FROM messages WHERE {scope} AND direction = '{direction}' AND {column} IN ({})",
                        marks.join(", ")
                    );
                    let rows: Vec<String> = bind_all!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)), &args)
                        .fetch_all(&mut *tx)
                        .await?;
                    found.extend(rows);
                }
            }
            // Sources staged for mail that turns out to be a duplicate.
            let mut unused_sources: Vec<&String> = Vec::new();
            // A staged source is named by `source_id` (PostgreSQL's
            // `message_sources`) or `raw_file_id` (SQLite's sources file).
            let sqlite = matches!(self, Store::Sqlite(..));
            // Sources pruned since their staging (a batch a day late) are
            // kept in the row instead. On PostgreSQL the staged rows are
            // share-locked until the commit, so a prune waits for it.
            let mut missing = self.staged_missing(&batch.items).await?;
            if !sqlite {
                let staged = super::source::staged_ids(&batch.items);
                let mut found = std::collections::HashSet::new();
                for part in staged.chunks(500) {
                    let args: Vec<Arg> = part.iter().map(|id| Arg::Text((*id).to_string())).collect();
                    let sql = format!("SELECT id FROM message_sources WHERE id IN ({}) FOR KEY SHARE", placeholders(1, part.len()));
                    let rows: Vec<String> = bind_all!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)), &args)
                        .fetch_all(&mut *tx)
                        .await?;
                    found.extend(rows);
                }
                missing.extend(staged.into_iter().filter(|id| !found.contains(*id)));
            }
            // The new mail, in batch order: not stored yet, not ours come
            // back, not a second copy of a mail earlier in this batch.
            let mut fresh: Vec<(&IncomingMail, Vec<String>)> = Vec::new();
            for item in &batch.items {
                let mail = match item {
                    Incoming::Quarantine(q) => {
                        let n = sqlx::query(
                            "INSERT INTO quarantine (id, mailbox_id, service_id, uid_validity, uid, source_ref, reason, detail, size, raw, created_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
                        )
                        .bind(new_id("qrn"))
                        .bind(&batch.mailbox_id)
                        .bind(&batch.service_id)
                        .bind(batch.cursor.map(|c| i64::from(c.uid_validity)))
                        .bind(q.uid.map(i64::from))
                        .bind(storable_opt(&q.source_ref))
                        .bind(q.reason.as_str())
                        .bind(storable(&q.detail))
                        .bind(q.size as i64)
                        .bind(&q.raw)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        report.quarantined += n as usize;
                        continue;
                    }
                    Incoming::Mail(m) => m,
                };
                let p = &mail.parsed;
                let own = p.message_id.as_ref().is_some_and(|id| own_ids.contains(id));
                if own || !known_hashes.insert(p.content_hash.clone()) {
                    report.duplicates += 1;
                    unused_sources.extend(mail.source_id.iter());
                    continue;
                }
                fresh.push((&**mail, thread_refs(mail)));
            }
            let mut threads = thread_anchors!(tx, batch, &fresh);
            // Everything decided, in batch order, before anything is written.
            let mut plans: Vec<Plan<'_>> = Vec::with_capacity(fresh.len());
            for (mail, refs) in &fresh {
                let thread = threads.thread(refs);
                let threaded_to = thread.as_ref().map(|t| t.conversation_id.clone());
                let kind = if mail.kind == MailKind::Bulk
                    && crate::mail::classify::relayed_by_own_list(&mail.parsed, &service.email_addresses)
                {
                    &NORMAL
                } else {
                    &mail.kind
                };
                let automatic = !matches!(kind, MailKind::Normal);
                let disposition = decide(automatic, policy, thread);
                let (mut new_conversation, mut new_task) = (false, false);
                let (conversation_id, task_id) = match &disposition {
                    Disposition::Queued => {
                        (new_conversation, new_task) = (true, true);
                        (Some(new_id("cnv")), Some(new_id("tsk")))
                    }
                    Disposition::Reopened { conversation_id } => {
                        new_task = true;
                        (Some(conversation_id.clone()), Some(new_id("tsk")))
                    }
                    // The task is its conversation's newest.
                    Disposition::Appended { task_id } => (threaded_to, Some(task_id.clone())),
                    Disposition::Attached { conversation_id, task_id } => (Some(conversation_id.clone()), task_id.clone()),
                    Disposition::Recorded => (None, None),
                };
                if let Some(c) = &conversation_id {
                    threads.stored(mail.parsed.message_id.as_deref().map(storable).as_deref(), c, now);
                    if let (true, Some(t)) = (new_task, &task_id) {
                        threads.task_created(c, t);
                    }
                }
                plans.push(Plan {
                    mail,
                    kind,
                    row_id: new_id("msg"),
                    disposition,
                    conversation_id,
                    task_id,
                    new_conversation,
                    new_task,
                });
            }
            // What the mail creates, written before the messages that point at it.
            let created: Vec<&Plan<'_>> = plans.iter().filter(|p| p.new_conversation).collect();
            for part in created.chunks(ROWS_PER_INSERT) {
                let sql = format!(
                    "INSERT INTO conversations (id, service_id, subject, created_at, updated_at) VALUES {}",
                    value_rows("(?, ?, ?, ?, ?)", part.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for p in part {
                    q = q.bind(&p.conversation_id)
                        .bind(&batch.service_id)
                        .bind(storable_opt(&p.mail.parsed.subject))
                        .bind(now)
                        .bind(now);
                }
                q.execute(&mut *tx).await?;
            }
            let created: Vec<&Plan<'_>> = plans.iter().filter(|p| p.new_task).collect();
            for part in created.chunks(ROWS_PER_INSERT) {
                let sql = format!(
                    "INSERT INTO tasks (id, service_id, modality, state, priority, arrived_at, updated_at, customer_kind,
                        customer_ref, customer_name, customer_address, subject, params, conversation_id,
                        customer_details, reached) VALUES {}",
                    value_rows("(?, ?, 'email', 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", part.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for p in part {
                    let m = p.mail;
                    let params = mail_task_params(Some(&batch.mailbox_id), m.parsed.message_id.as_deref());
                    let details = mail_customer_details(&m.customer, &m.customer_details);
                    let to: Vec<&str> = m.parsed.to.iter().map(|a| a.email.as_str()).collect();
                    let cc: Vec<&str> = m.parsed.cc.iter().map(|a| a.email.as_str()).collect();
                    let reached = address_reached(&to, &cc, &service.email_addresses);
                    q = q.bind(&p.task_id)
                        .bind(&batch.service_id)
                        .bind(i64::from(settings.priority))
                        .bind(now)
                        .bind(now)
                        .bind(m.customer.kind.as_str())
                        .bind(&m.customer.reference)
                        .bind(storable_opt(&m.customer.name))
                        .bind(storable_opt(&m.customer.address))
                        .bind(storable_opt(&m.parsed.subject))
                        .bind(params)
                        .bind(&p.conversation_id)
                        .bind(storable(&details).into_owned())
                        .bind(reached.as_deref().map(storable));
                }
                q.execute(&mut *tx).await?;
            }
            // One write of each message, with everything decided.
            for part in plans.chunks(ROWS_PER_INSERT) {
                let sql = format!(
                    "{}{}{ON_MESSAGE_CONFLICT}",
                    if sqlite { insert_messages!("raw_file_id") } else { insert_messages!("source_id") },
                    value_rows(MESSAGE_ROW, part.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for plan in part {
                    let (mail, p) = (plan.mail, &plan.mail.parsed);
                    let recipients = serde_json::json!({"to": p.to, "cc": p.cc, "reply_to": p.reply_to}).to_string();
                    let staged = mail.source_id.as_deref().filter(|id| !missing.contains(id));
                    q = q.bind(&plan.row_id)
                        .bind(&batch.service_id)
                        .bind(&batch.mailbox_id)
                        .bind(plan.kind.as_str())
                        .bind(plan.disposition.as_str())
                        .bind(storable_opt(&p.message_id))
                        .bind(&p.content_hash)
                        .bind(p.in_reply_to.first().map(|s| storable(s)))
                        .bind(storable(&serde_json::to_string(&p.references).unwrap_or_else(|_| "[]".into())).into_owned())
                        .bind(storable_opt(&p.subject))
                        .bind(p.from.as_ref().map(|a| storable(&a.email)))
                        .bind(p.from.as_ref().and_then(|a| a.name.as_deref()).map(storable))
                        .bind(storable(&recipients).into_owned())
                        .bind(p.date.map(|d| d.timestamp_millis()))
                        .bind(now)
                        .bind(mail.raw.len() as i64)
                        .bind(storable_opt(&p.text_body))
                        .bind(storable_opt(&p.html_body))
                        .bind(storable(&serde_json::to_string(&p.attachments).unwrap_or_else(|_| "[]".into())).into_owned())
                        .bind(storable(&serde_json::to_string(plan.kind).unwrap_or_else(|_| "{}".into())).into_owned())
                        .bind(match staged {
                            None => Some(mail.packed.as_deref().unwrap_or(&mail.raw)),
                            // SQLite's `raw` is NOT NULL: empty where the source is staged.
                            Some(_) if sqlite => Some(&[][..]),
                            Some(_) => None,
                        })
                        .bind(&plan.conversation_id)
                        .bind(&plan.task_id)
                        .bind(mail.packed.as_ref().filter(|_| staged.is_none()).map(|_| super::source::LZ4))
                        .bind(staged);
                }
                if (q.execute(&mut *tx).await?.rows_affected() as usize) < part.len() {
                    // Another worker stored a mail of the batch meanwhile.
                    tx.rollback().await?;
                    tracing::debug!(mailbox = %batch.mailbox_id, "a mail of the batch was stored meanwhile; committing the batch again");
                    return Ok(None);
                }
            }
            let mut appended_to = std::collections::BTreeSet::new();
            // Holders of each task that got mail, asked once per task.
            let mut holders: std::collections::HashMap<&str, Vec<String>> = std::collections::HashMap::new();
            for plan in &plans {
                let (mail, p, disposition) = (plan.mail, &plan.mail.parsed, &plan.disposition);
                report.messages.push(plan.row_id.clone());
                *report.dispositions.entry(disposition.as_str()).or_default() += 1;
                if let (true, Some(id)) = (plan.new_task, &plan.task_id) {
                    report.new_tasks.push(id.clone());
                }
                if let MailKind::Bounce { original_message_id: Some(original), .. } = &mail.kind {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE messages SET delivery_status = 'bounced' WHERE {ANY_SERVICE} AND message_id = $1 AND direction = 'outbound'",
                    )))
                    .bind(storable(original))
                    .execute(&mut *tx)
                    .await?;
                }
                if let Disposition::Appended { task_id } = disposition {
                    appended_to.insert(task_id.as_str());
                    report.appended.push((task_id.clone(), plan.row_id.clone()));
                }
                // The agents holding an open task are told of the new message.
                if let Disposition::Appended { task_id } | Disposition::Attached { task_id: Some(task_id), .. } = disposition {
                    let body = events::payload(AgentEventKind::Message, serde_json::json!({
                        "task_id": task_id,
                        "message_id": plan.row_id,
                        "disposition": disposition.as_str(),
                        "kind": plan.kind.as_str(),
                        "from": p.from.as_ref().map(|a| storable(&a.email)),
                        "from_name": p.from.as_ref().and_then(|a| a.name.as_deref()).map(storable),
                        "subject": storable_opt(&p.subject),
                        "received_at": millis_to_rfc3339(now),
                    }));
                    if !holders.contains_key(task_id.as_str()) {
                        let agents = holding_agents!(tx, task_id);
                        holders.insert(task_id.as_str(), agents);
                    }
                    for agent in holders.get(task_id.as_str()).into_iter().flatten() {
                        tell.push((agent.clone(), task_id.clone(), body.clone()));
                    }
                }
            }
            let appended_to: Vec<&str> = appended_to.into_iter().collect();
            for part in appended_to.chunks(500) {
                let sql = format!("UPDATE tasks SET updated_at = $1 WHERE id IN ({})", placeholders(2, part.len()));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
                for id in part {
                    q = q.bind(*id);
                }
                q.execute(&mut *tx).await?;
            }
            // Events last, in agent order: the counter rows they lock are held
            // briefly and always taken in the same order (no deadlocks).
            tell.sort_by(|a, b| a.0.cmp(&b.0));
            for (agent, task_id, body) in &tell {
                record_agent_event!(self, tx, agent, AgentEventKind::Message, task_id, body, now);
            }
            if let Some(q) = &batch.resolves_quarantine {
                sqlx::query("UPDATE quarantine SET state = 'ingested', message_ref = $2, resolved_at = $3 WHERE id = $1 AND state = 'held'")
                    .bind(q)
                    .bind(report.messages.first())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            if !sqlite {
                for id in &unused_sources {
                    sqlx::query("DELETE FROM message_sources WHERE id = $1").bind(*id).execute(&mut *tx).await?;
                }
            }
            sqlx::query(
                "UPDATE mailboxes SET ingested_total = ingested_total + $2, duplicates_total = duplicates_total + $3 WHERE id = $1",
            )
            .bind(&batch.mailbox_id)
            .bind(report.messages.len() as i64)
            .bind(report.duplicates as i64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            self.drop_unused_sources(&unused_sources).await;
        });
        Ok(Some((report, tell)))
    }

    /// Commits a batch as [`Store::commit_batch`] does, but a mail the
    /// database refuses (a value it cannot hold, a constraint) cannot stall
    /// its mailbox: the batch is then committed one mail at a time, a mail
    /// refused on its own goes to the quarantine with the database's reason,
    /// and the cursor moves with the last part. A lost fence, a lost
    /// connection or a transient conflict is returned as it is (the caller
    /// retries); exactly once holds because every part is its own
    /// transaction and a mail already stored is a duplicate.
    pub async fn commit_batch_resilient(&self, batch: &IngestBatch) -> StoreResult<IngestReport> {
        let reason = match self.commit_batch(batch).await {
            Err(StoreError::Database(e)) if batch.resolves_quarantine.is_none() => {
                match refusal(&e) {
                    Some(reason) => reason,
                    None => return Err(StoreError::Database(e)),
                }
            }
            other => return other,
        };
        tracing::warn!(mailbox = %batch.mailbox_id, error = %reason, "the database refused a batch: committing its mail one by one");
        let mut report = IngestReport::default();
        let mut rest = Vec::new();
        for item in &batch.items {
            let Incoming::Mail(mail) = item else {
                rest.push(item.clone());
                continue;
            };
            let single = IngestBatch {
                mailbox_id: batch.mailbox_id.clone(),
                service_id: batch.service_id.clone(),
                fence: batch.fence.clone(),
                cursor: None,
                items: vec![item.clone()],
                resolves_quarantine: None,
            };
            match self.commit_batch(&single).await {
                Ok(part) => report.absorb(part),
                Err(StoreError::Database(e)) => match refusal(&e) {
                    Some(reason) => {
                        tracing::warn!(mailbox = %batch.mailbox_id, uid = mail.uid, error = %reason, "the database refused a mail: quarantined");
                        rest.push(Incoming::Quarantine(QuarantinedMail {
                            uid: mail.uid,
                            source_ref: mail.source_ref.clone(),
                            reason: QuarantineReason::Unstorable,
                            detail: format!("the database refused to store this message: {reason}"),
                            size: mail.raw.len() as u64,
                            raw: Some(mail.raw.clone()),
                        }))
                    }
                    None => return Err(StoreError::Database(e)),
                },
                Err(e) => return Err(e),
            }
        }
        let last = IngestBatch {
            items: rest,
            ..batch.clone()
        };
        let last = match self.commit_batch(&last).await {
            // Even the quarantine entries refused (a source too large for a
            // row): they are kept without it, and say where it stays.
            Err(StoreError::Database(e)) if refusal(&e).is_some() => {
                let items = last
                    .items
                    .into_iter()
                    .map(|item| match item {
                        Incoming::Quarantine(mut q) if q.raw.is_some() => {
                            q.raw = None;
                            q.detail.push_str(
                                " (its source could not be kept either: it stays at its origin)",
                            );
                            Incoming::Quarantine(q)
                        }
                        other => other,
                    })
                    .collect();
                self.commit_batch(&IngestBatch { items, ..last }).await?
            }
            other => other?,
        };
        report.absorb(last);
        Ok(report)
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::refusal;
    use std::borrow::Cow;

    #[derive(Debug)]
    struct Db(&'static str);
    impl std::fmt::Display for Db {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("refused")
        }
    }
    impl std::error::Error for Db {}
    impl sqlx::error::DatabaseError for Db {
        fn message(&self) -> &str {
            "refused"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn refused(code: &'static str) -> bool {
        refusal(&sqlx::Error::Database(Box::new(Db(code)))).is_some()
    }

    #[test]
    fn only_the_data_itself_is_a_refusal() {
        // PostgreSQL: a NUL byte, a string too long, a unique or check violation, a row too big.
        for code in ["22021", "22001", "23505", "23514", "54000"] {
            assert!(refused(code), "{code}");
        }
        // Deadlock, serialization, missing table, read-only, disk full, too many connections.
        for code in [
            "40P01", "40001", "42P01", "25006", "53100", "53300", "57P01",
        ] {
            assert!(!refused(code), "{code}");
        }
        // SQLite: TOOBIG, CONSTRAINT_CHECK, CONSTRAINT_UNIQUE, MISMATCH; not BUSY, LOCKED, FULL, IOERR.
        for code in ["18", "275", "2067", "20"] {
            assert!(refused(code), "{code}");
        }
        for code in ["5", "517", "6", "13", "10", "3338"] {
            assert!(!refused(code), "{code}");
        }
        assert!(refusal(&sqlx::Error::PoolTimedOut).is_none());
    }
}
