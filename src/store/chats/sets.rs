//! Delivered chat events applied set-wise on PostgreSQL: a batch's chats,
//! tasks, messages and chat updates read and written by a few statements
//! over arrays (`unnest`), instead of six to eight statements per event.
//!
//! On PostgreSQL most of an event's cost was the round trips of its small
//! statements (the socket, executor start-up), not the rows; a batch of
//! events now costs about as many round trips as one. The rules are those of
//! `apply_chat_input!` in `event.rs`, worked out in memory between the
//! reads and the writes: a chat's events in the order given, a message the
//! chat has (or that came earlier in the batch) stored once, a task created
//! as [`plan`] says, a start that finds its chat's task live completes it.
//! Whatever this path does not cover (a customer leaving, an ended chat, two
//! starts of one chat in a batch, a start whose platform sender is not its
//! customer's user id, a chat whose task is over or wrapped up, a chat
//! holding lines without a task) is left, per chat, to the per-event path in
//! the same transaction. SQLite, where a statement costs no round trip, leaves
//! everything to that path.
//!
//! Plans: the batch's transaction turns sequential scans off (`SET LOCAL
//! enable_seqscan = off`) before its first statement. Prepared statements
//! keep their plans; a plan made while the tables were small (a fresh
//! database, or before autovacuum's next look) would join the arrays to
//! whole-table scans and stay so as the tables grow: measured, the closed
//! loop fell from 2,000 to 1,000 events/s within a minute of intake.
//! Planning every statement afresh instead cost 5 ms per batch.
//!
//! Locks: every chat of the batch that exists is locked (and read) first,
//! in (channel, chat id) order, then their tasks; so two batches (of two
//! workers) that share chats wait for each other instead of deadlocking. A holder is told
//! of a chat's messages in the chat's order; across chats, the events of the
//! chats applied set-wise come before those of the chats left to the
//! per-event path.
use super::customer::{better_customer, chat_params, completed_params};
use super::delivery::ChatDelivery;
use super::event::ChatOutcome;
use super::transcript::{message_told, sender_name};
use crate::domain::chat::{ChatEventKind, TaskPlan, plan};
use crate::domain::customer::CustomerMatch;
use crate::domain::event::AgentEventKind;
use crate::domain::id::new_id;
use crate::domain::{Millis, TaskState};
use crate::store::offers::{Tell, service_routing};
use crate::store::rows::storable;
use crate::store::tasks::{TASK_COLUMNS, task_from_row};
use crate::store::{Store, StoreResult, Task};
use std::collections::{HashMap, HashSet};

/// What the set-wise path did with a batch.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Outcomes of the events it applied: (index into the jobs, outcome).
    pub outcomes: Vec<(usize, ChatOutcome)>,
    /// Indexes of the events left to the per-event path, in the order to
    /// apply them (a chat's events together, in their order).
    pub left: Vec<usize>,
}

/// Applies what it can of a batch inside the caller's write transaction.
pub(crate) trait ChatSets {
    /// `order`: the indexes of the events to apply, each chat's events in
    /// their order.
    async fn apply_chat_sets(
        &mut self,
        store: &Store,
        jobs: &[ChatDelivery],
        order: &[usize],
        now: Millis,
        tell: &mut Tell,
    ) -> StoreResult<Applied>;
}

impl ChatSets for sqlx::SqliteConnection {
    async fn apply_chat_sets(
        &mut self,
        _store: &Store,
        _jobs: &[ChatDelivery],
        order: &[usize],
        _now: Millis,
        _tell: &mut Tell,
    ) -> StoreResult<Applied> {
        Ok(Applied {
            outcomes: Vec::new(),
            left: order.to_vec(),
        })
    }
}

/// One chat's events in a batch.
struct Group {
    channel: String,
    chat_id: String,
    /// Indexes into the jobs, in order.
    events: Vec<usize>,
    /// The first event is a start (the chat's customer fields are updated).
    started: bool,
    /// A start after the chat's first event in the batch.
    late_start: Option<usize>,
    /// The chat's row, found or inserted.
    row: Option<ChatRow>,
}

#[derive(Debug, Clone)]
struct ChatRow {
    id: String,
    created: bool,
    task_id: Option<String>,
    messages_total: i64,
}

/// Whether the set-wise path can apply a chat's events: starts and
/// messages only, one start at most, and no platform sender other than the
/// identity's own (the chat's row gets the identity's user id).
fn covered(jobs: &[ChatDelivery], events: &[usize]) -> bool {
    let mut starts = 0;
    events.iter().all(|&i| {
        let input = &jobs[i].input;
        let e = &input.event;
        match e.kind {
            ChatEventKind::Started => {
                starts += 1;
                starts == 1 && (input.sender_id.is_none() || input.sender_id == e.customer.user_id)
            }
            ChatEventKind::Message => true,
            ChatEventKind::CustomerLeft | ChatEventKind::Ended => false,
        }
    })
}

/// What a chat knows of its customer from an event, as the chat's row
/// holds it: platform user id, name, e-mail, phone, language. The user id is
/// the identity's, else the platform sender's: the per-event path inserts
/// that, but updates with the identity's alone, so a start is only taken
/// here when the two agree ([`covered`]).
type ChatCustomer = [Option<String>; 5];

fn chat_customer(jobs: &[ChatDelivery], i: usize) -> ChatCustomer {
    let input = &jobs[i].input;
    let e = &input.event;
    let identity = &e.customer;
    // A bot's or an agent's line says nothing of the customer.
    let customer = crate::domain::chat::speaks_for_customer(e.kind, e.from);
    let text = |s: Option<&str>| s.filter(|_| customer).map(|s| storable(s).into_owned());
    [
        text(identity.user_id.as_deref().or(input.sender_id.as_deref())),
        text(identity.name.as_deref()),
        text(identity.email.as_deref()),
        text(identity.phone.as_deref()),
        e.language.clone(),
    ]
}

/// A task as the batch sees it.
struct TaskView {
    id: String,
    state: TaskState,
    /// Made by this batch: its index in the tasks to insert.
    new: Option<usize>,
}

/// A start's completion of a task that existed before the batch.
struct Completion {
    id: String,
    subject: Option<String>,
    params: String,
    better: Option<CustomerMatch>,
}

/// A task to insert.
struct NewTask {
    id: String,
    service: String,
    priority: i64,
    customer: CustomerMatch,
    subject: Option<String>,
    params: serde_json::Value,
    details: String,
    language: Option<String>,
    /// The chat channel: what the customer reached.
    channel: String,
}

/// A message to insert.
struct NewMessage {
    id: String,
    chat: String,
    task: Option<String>,
    external_id: String,
    sender: &'static str,
    sender_id: Option<String>,
    sender_name: Option<String>,
    text: String,
    sent_at: Millis,
    seq: i64,
}

/// What the batch changes of a chat.
struct ChatUpdate {
    id: String,
    /// The task a start (or a customer's message) made.
    task: Option<String>,
    /// Messages in the chat after the batch.
    total: i64,
    /// What a start on a chat that existed says of the customer.
    customer: Option<ChatCustomer>,
}

/// An event for the holders of a task that existed before the batch.
struct Told {
    task: String,
    payload: serde_json::Value,
}

impl ChatSets for sqlx::PgConnection {
    async fn apply_chat_sets(
        &mut self,
        store: &Store,
        jobs: &[ChatDelivery],
        order: &[usize],
        now: Millis,
        tell: &mut Tell,
    ) -> StoreResult<Applied> {
        let mut applied = Applied::default();
        // Index lookups, whatever the tables' statistics said when these
        // statements were first planned (see the module's documentation).
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *self)
            .await?;
        // The chats, in the order given.
        let mut groups: Vec<Group> = Vec::new();
        for &i in order {
            let e = &jobs[i].input.event;
            match groups
                .last_mut()
                .filter(|g| g.channel == e.channel && g.chat_id == e.chat_id)
            {
                Some(g) => g.events.push(i),
                None => groups.push(Group {
                    channel: e.channel.clone(),
                    chat_id: e.chat_id.clone(),
                    events: vec![i],
                    started: e.kind == ChatEventKind::Started,
                    late_start: None,
                    row: None,
                }),
            }
        }
        for g in &mut groups {
            g.late_start = g
                .events
                .iter()
                .skip(1)
                .copied()
                .find(|&i| jobs[i].input.event.kind == ChatEventKind::Started);
        }
        let (mut mine, mut theirs): (Vec<Group>, Vec<Group>) =
            groups.into_iter().partition(|g| covered(jobs, &g.events));
        applied.left = theirs.iter().flat_map(|g| g.events.clone()).collect();
        if mine.is_empty() {
            return Ok(applied);
        }

        // 0. Every chat of the batch that exists, locked in one order (the
        // groups come sorted by channel and chat id) and read.
        let (lock_channels, lock_chats): (Vec<String>, Vec<String>) = mine
            .iter()
            .chain(&theirs)
            .map(|g| (g.channel.clone(), storable(&g.chat_id).into_owned()))
            .unzip();
        let found: Vec<(String, String, String, Option<String>, i64, String)> = sqlx::query_as(
            "SELECT c.id, c.channel_id, c.external_id, c.task_id, c.messages_total, c.state FROM chats c
             JOIN unnest($1::text[], $2::text[]) AS v(channel, external)
               ON c.channel_id = v.channel AND c.external_id = v.external
             ORDER BY c.channel_id, c.external_id
             FOR UPDATE OF c",
        )
        .bind(&lock_channels)
        .bind(&lock_chats)
        .fetch_all(&mut *self)
        .await?;
        // A closed chat (left or ended): its events go the per-event way,
        // which tells a late event (written before the close) from a new one.
        let mut closed: HashSet<(String, String)> = found
            .iter()
            .filter(|(.., state)| state != "open")
            .map(|(_, ch, ext, ..)| (ch.clone(), ext.clone()))
            .collect();
        let mut by_key: HashMap<(String, String), (String, Option<String>, i64)> = found
            .into_iter()
            .map(|(id, ch, ext, task, total, _)| ((ch, ext), (id, task, total)))
            .collect();

        // 1. The chats that do not exist yet, in one statement, each holding
        // what its first event says, completed by a later start's (as that
        // start's update would leave it). A chat another worker made
        // meanwhile comes back locked, as one that existed.
        let key = |g: &Group| (g.channel.clone(), storable(&g.chat_id).into_owned());
        let missing: Vec<usize> = (0..mine.len())
            .filter(|&g| !by_key.contains_key(&key(&mine[g])))
            .collect();
        let mut fresh: HashMap<(String, String), String> = HashMap::new();
        if !missing.is_empty() {
            let (mut ids, mut channel, mut external, mut service) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut user, mut name, mut email, mut phone, mut language) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for &g in &missing {
                let job = &jobs[mine[g].events[0]];
                let mut values = chat_customer(jobs, mine[g].events[0]);
                if let Some(late) = mine[g].late_start {
                    for (have, start) in values.iter_mut().zip(chat_customer(jobs, late)) {
                        if start.is_some() {
                            *have = start;
                        }
                    }
                }
                let [u, n, m, p, l] = values;
                let id = new_id("cht");
                fresh.insert(key(&mine[g]), id.clone());
                ids.push(id);
                channel.push(mine[g].channel.clone());
                external.push(storable(&mine[g].chat_id).into_owned());
                service.push(job.service_id.clone());
                user.push(u);
                name.push(n);
                email.push(m);
                phone.push(p);
                language.push(l);
            }
            let rows: Vec<(String, String, String, Option<String>, i64, String)> = sqlx::query_as(
                "INSERT INTO chats (id, channel_id, external_id, service_id, state, customer_user_id, customer_name,
                    customer_email, customer_phone, language, created_at, updated_at)
                 SELECT v.id, v.channel, v.external, v.service, 'open', v.usr, v.name, v.email, v.phone, v.lang, $10, $10
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                             $8::text[], $9::text[]) AS v(id, channel, external, service, usr, name, email, phone, lang)
                 ON CONFLICT (channel_id, external_id) DO UPDATE SET updated_at = chats.updated_at
                 RETURNING id, channel_id, external_id, task_id, messages_total, state",
            )
            .bind(&ids)
            .bind(&channel)
            .bind(&external)
            .bind(&service)
            .bind(&user)
            .bind(&name)
            .bind(&email)
            .bind(&phone)
            .bind(&language)
            .bind(now)
            .fetch_all(&mut *self)
            .await?;
            // One another worker made and closed meanwhile is closed too.
            closed.extend(
                rows.iter()
                    .filter(|(.., state)| state != "open")
                    .map(|(_, ch, ext, ..)| (ch.clone(), ext.clone())),
            );
            by_key.extend(
                rows.into_iter()
                    .map(|(id, ch, ext, task, total, _)| ((ch, ext), (id, task, total))),
            );
        }
        if !closed.is_empty() {
            // Nothing is written for them yet: the per-event path takes them whole.
            let (late, keep): (Vec<Group>, Vec<Group>) =
                mine.into_iter().partition(|g| closed.contains(&key(g)));
            mine = keep;
            applied
                .left
                .extend(late.iter().flat_map(|g| g.events.clone()));
            theirs.extend(late);
            if mine.is_empty() {
                return Ok(applied);
            }
        }
        for g in &mut mine {
            let k = key(g);
            let (id, task_id, messages_total) = by_key.remove(&k).ok_or_else(|| {
                crate::store::StoreError::Corrupt(format!(
                    "chat '{}' of channel '{}' was neither found nor created",
                    g.chat_id, g.channel
                ))
            })?;
            g.row = Some(ChatRow {
                created: fresh.get(&k) == Some(&id),
                id,
                task_id,
                messages_total,
            });
        }
        let rows: Vec<ChatRow> = mine
            .iter()
            .map(|g| {
                g.row
                    .clone()
                    .expect("every chat was found or created above")
            })
            .collect();

        // 2. Their tasks, locked in one order.
        let mut task_ids: Vec<String> = rows.iter().filter_map(|r| r.task_id.clone()).collect();
        task_ids.sort_unstable();
        task_ids.dedup();
        let mut tasks: HashMap<String, Task> = HashMap::new();
        if !task_ids.is_empty() {
            let sql = format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE"
            );
            for row in sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&task_ids)
                .fetch_all(&mut *self)
                .await?
            {
                let t = task_from_row(&row)?;
                tasks.insert(t.id.clone(), t);
            }
        }

        // Chats whose events need what only the per-event path does, taken
        // there whole (nothing is written for them yet): a task over or
        // wrapped up (a follow-up task takes the customer the chat knows),
        // lines without a task (they join the task that is made).
        let handed: Vec<bool> = rows
            .iter()
            .map(|r| match &r.task_id {
                Some(id) => tasks
                    .get(id)
                    .is_some_and(|t| !crate::domain::chat::task_is_live(t.state)),
                None => r.messages_total > 0,
            })
            .collect();
        let (mine, rows) = if handed.contains(&true) {
            let (mut keep_groups, mut keep_rows) = (Vec::new(), Vec::new());
            for ((g, r), hand) in mine.into_iter().zip(rows).zip(&handed) {
                if *hand {
                    applied.left.extend(g.events.iter().copied());
                } else {
                    keep_groups.push(g);
                    keep_rows.push(r);
                }
            }
            if keep_groups.is_empty() {
                return Ok(applied);
            }
            (keep_groups, keep_rows)
        } else {
            (mine, rows)
        };

        // 3. The messages these chats already have, of those arriving.
        let mut known: HashMap<(String, String), String> = HashMap::new();
        let (mut look_chats, mut look_refs) = (Vec::new(), Vec::new());
        for (g, row) in mine.iter().zip(&rows) {
            if row.created {
                continue;
            }
            look_chats.push(row.id.clone());
            for &i in &g.events {
                if jobs[i].input.event.text.is_some() {
                    look_refs.push(storable(&jobs[i].input.message_ref).into_owned());
                }
            }
        }
        if !look_refs.is_empty() {
            let found: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT chat_id, external_id, id FROM chat_messages
                 WHERE chat_id = ANY($1) AND external_id = ANY($2)",
            )
            .bind(&look_chats)
            .bind(&look_refs)
            .fetch_all(&mut *self)
            .await?;
            for (chat, external, id) in found {
                known.insert((chat, external), id);
            }
        }

        // 3b. A start on a chat that existed may repeat a line the chat has
        // (the chat system started it again): that line is stored once.
        // (chat, text) → (the line's task, its id).
        let mut said: HashMap<(String, String), (Option<String>, String)> = HashMap::new();
        let (mut said_chats, mut said_texts) = (Vec::new(), Vec::new());
        for (g, row) in mine.iter().zip(&rows) {
            for &i in g.events.iter().filter(|_| !row.created) {
                let e = &jobs[i].input.event;
                if let (ChatEventKind::Started, Some(text)) = (e.kind, e.text.as_deref()) {
                    said_chats.push(row.id.clone());
                    said_texts.push(storable(text).into_owned());
                }
            }
        }
        if !said_texts.is_empty() {
            // Lines of the task each chat points at (its live task).
            let found: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
                "SELECT DISTINCT ON (m.chat_id, m.text) m.chat_id, m.text, m.task_id, m.id
                 FROM chat_messages m JOIN chats c ON c.id = m.chat_id AND c.task_id = m.task_id
                 WHERE m.chat_id = ANY($1) AND m.sender = 'customer' AND m.text = ANY($2)
                 ORDER BY m.chat_id, m.text, m.seq",
            )
            .bind(&said_chats)
            .bind(&said_texts)
            .fetch_all(&mut *self)
            .await?;
            for (chat, text, task, id) in found {
                said.insert((chat, text), (task, id));
            }
        }

        // 4. Each chat's events in memory, in order.
        let mut priorities: HashMap<String, i64> = HashMap::new();
        let mut new_tasks: Vec<NewTask> = Vec::new();
        let mut new_messages: Vec<NewMessage> = Vec::new();
        let mut completions: Vec<Completion> = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        let mut told: Vec<Told> = Vec::new();
        let mut chat_updates: Vec<ChatUpdate> = Vec::new();
        for (g, row) in mine.iter().zip(&rows) {
            let before: Option<&Task> = row.task_id.as_ref().and_then(|id| tasks.get(id));
            let mut task: Option<TaskView> = before.map(|t| TaskView {
                id: t.id.clone(),
                state: t.state,
                new: None,
            });
            let mut made: Option<String> = None;
            let mut total = row.messages_total;
            let mut stored = false;
            for &i in &g.events {
                let job = &jobs[i];
                let input = &job.input;
                let e = &input.event;
                let identity = &e.customer;
                let mut outcome = ChatOutcome {
                    chat_id: e.chat_id.clone(),
                    task_id: task.as_ref().map(|t| t.id.clone()),
                    ..ChatOutcome::default()
                };
                let reference = storable(&input.message_ref).into_owned();
                if e.text.is_some()
                    && let Some(id) = known.get(&(row.id.clone(), reference.clone()))
                {
                    outcome.message_id = Some(id.clone());
                    outcome.duplicate_message = true;
                    applied.outcomes.push((i, outcome));
                    continue;
                }
                let planned = plan(e.kind, e.from, task.as_ref().map(|t| t.state));
                // A start that finds the chat's task live, repeating a
                // customer's line of the chat (before or in this batch).
                let repeated = match (planned, e.kind, e.text.as_deref(), task.as_ref()) {
                    (TaskPlan::Keep, ChatEventKind::Started, Some(text), Some(live)) => {
                        let text = storable(text);
                        said.get(&(row.id.clone(), text.to_string()))
                            .filter(|(t, _)| t.as_deref() == Some(live.id.as_str()))
                            .map(|(_, id)| id.clone())
                            .or_else(|| {
                                new_messages
                                    .iter()
                                    .find(|m| {
                                        m.chat == row.id
                                            && m.task.as_deref() == Some(live.id.as_str())
                                            && m.sender == "customer"
                                            && m.text == text
                                    })
                                    .map(|m| m.id.clone())
                            })
                    }
                    _ => None,
                };
                if let (TaskPlan::Keep, ChatEventKind::Started, Some(t)) =
                    (planned, e.kind, task.as_ref())
                {
                    // A start that finds the chat's task live (it came after
                    // the chat's first message) completes that task.
                    match (t.new, before) {
                        (Some(k), _) => {
                            let n = &mut new_tasks[k];
                            n.params = completed_params(&n.params, e);
                            n.subject = n
                                .subject
                                .take()
                                .or_else(|| e.subject.as_deref().map(|s| storable(s).into_owned()));
                            if let Some(b) = better_customer(input, n.customer.kind) {
                                n.customer = CustomerMatch {
                                    kind: b.kind,
                                    reference: b.reference.clone().or(n.customer.reference.take()),
                                    name: b.name.clone().or(n.customer.name.take()),
                                    address: b.address.clone().or(n.customer.address.take()),
                                };
                            }
                        }
                        (None, Some(b)) => completions.push(Completion {
                            id: b.id.clone(),
                            subject: e.subject.as_deref().map(|s| storable(s).into_owned()),
                            params: storable(&completed_params(&b.params, e).to_string())
                                .into_owned(),
                            better: better_customer(input, b.customer.kind).cloned(),
                        }),
                        (None, None) => {}
                    }
                }
                if planned == TaskPlan::Create {
                    let priority = match priorities.get(&job.service_id) {
                        Some(p) => *p,
                        None => {
                            let (p, _) = service_routing!(self, job.service_id.as_str());
                            let p = i64::from(p);
                            priorities.insert(job.service_id.clone(), p);
                            p
                        }
                    };
                    let resolved = match &input.customer {
                        Some(c) => c.clone(),
                        None => {
                            store
                                .resolve_chat_customer(identity, input.sender_id.as_deref())
                                .await?
                        }
                    };
                    let customer = &resolved.matched;
                    let id = new_id("tsk");
                    new_tasks.push(NewTask {
                        id: id.clone(),
                        service: job.service_id.clone(),
                        priority,
                        customer: customer.clone(),
                        subject: e.subject.as_deref().map(|s| storable(s).into_owned()),
                        params: chat_params(&e.channel, e),
                        details: storable(
                            &serde_json::to_string(&resolved.details)
                                .unwrap_or_else(|_| "{}".into()),
                        )
                        .into_owned(),
                        language: e.language.clone(),
                        channel: e.channel.clone(),
                    });
                    outcome.task_created = true;
                    outcome.task_id = Some(id.clone());
                    // Lines written before it in this batch (a bot's
                    // greeting) join it, as in the per-event path.
                    if task.is_none() {
                        for m in new_messages
                            .iter_mut()
                            .filter(|m| m.chat == row.id && m.task.is_none())
                        {
                            m.task = Some(id.clone());
                        }
                    }
                    task = Some(TaskView {
                        id: id.clone(),
                        state: TaskState::Queued,
                        new: Some(new_tasks.len() - 1),
                    });
                    made = Some(id);
                }
                if let Some(id) = repeated {
                    outcome.message_id = Some(id);
                    outcome.duplicate_message = true;
                } else if let Some(text) = &e.text {
                    total += 1;
                    let message_id = new_id("chm");
                    let task_id = task.as_ref().map(|t| t.id.clone());
                    let sender_name = sender_name(e);
                    let sent_at = e.sent_at.unwrap_or(now);
                    // A task that existed before the batch is touched, and
                    // its holders are told; a task made here has nobody yet.
                    if let Some(t) = task_id
                        .as_ref()
                        .filter(|t| before.is_some_and(|b| &b.id == *t))
                    {
                        touched.push(t.clone());
                        told.push(Told {
                            task: t.clone(),
                            payload: message_told(
                                e,
                                t,
                                &message_id,
                                sender_name.as_deref(),
                                text,
                                sent_at,
                            ),
                        });
                    }
                    new_messages.push(NewMessage {
                        id: message_id.clone(),
                        chat: row.id.clone(),
                        task: task_id,
                        external_id: reference.clone(),
                        sender: e.from.as_str(),
                        sender_id: input.sender_id.as_deref().map(|s| storable(s).into_owned()),
                        sender_name: sender_name.as_deref().map(|s| storable(s).into_owned()),
                        text: storable(text).into_owned(),
                        sent_at,
                        seq: total,
                    });
                    known.insert((row.id.clone(), reference), message_id.clone());
                    outcome.message_id = Some(message_id);
                }
                stored |= outcome.task_created || e.text.is_some();
                applied.outcomes.push((i, outcome));
            }
            // A start on a chat that existed completes what the chat knows
            // of its customer.
            let start = (!row.created)
                .then(|| {
                    if g.started {
                        Some(g.events[0])
                    } else {
                        g.late_start
                    }
                })
                .flatten();
            if stored || start.is_some() {
                chat_updates.push(ChatUpdate {
                    id: row.id.clone(),
                    task: made,
                    total,
                    customer: start.map(|i| chat_customer(jobs, i)),
                });
            }
        }

        // 5. Everything worked out above, written by one statement (its
        // parts all run; foreign keys are checked at its end, when the new
        // tasks exist): the new tasks (the database logs each one's
        // task.created), the messages, the tasks that existed before (a
        // start's completion, the time of a new message), the chats; and
        // who holds the touched tasks.
        touched.sort_unstable();
        touched.dedup();
        let mut old_tasks: Vec<String> = touched.clone();
        for c in &completions {
            if !old_tasks.contains(&c.id) {
                old_tasks.push(c.id.clone());
            }
        }
        if new_tasks.is_empty()
            && new_messages.is_empty()
            && old_tasks.is_empty()
            && chat_updates.is_empty()
        {
            return Ok(applied);
        }
        let completion = |id: &String| completions.iter().find(|c| &c.id == id);
        let better = |f: fn(&CustomerMatch) -> Option<String>| {
            old_tasks
                .iter()
                .map(|id| completion(id).and_then(|c| c.better.as_ref()).and_then(f))
                .collect::<Vec<_>>()
        };
        let task_col = |f: fn(&NewTask) -> String| new_tasks.iter().map(f).collect::<Vec<_>>();
        let task_opt =
            |f: fn(&NewTask) -> Option<String>| new_tasks.iter().map(f).collect::<Vec<_>>();
        let msg_col = |f: fn(&NewMessage) -> String| new_messages.iter().map(f).collect::<Vec<_>>();
        let msg_opt =
            |f: fn(&NewMessage) -> Option<String>| new_messages.iter().map(f).collect::<Vec<_>>();
        let msg_int = |f: fn(&NewMessage) -> i64| new_messages.iter().map(f).collect::<Vec<_>>();
        let chat_customer_col = |k: usize| {
            chat_updates
                .iter()
                .map(|c| c.customer.as_ref().and_then(|v| v[k].clone()))
                .collect::<Vec<_>>()
        };
        let holders: Vec<(String, String)> = sqlx::query_as(
            "WITH new_tasks AS (
                INSERT INTO tasks (id, service_id, modality, state, priority, arrived_at, updated_at,
                    customer_kind, customer_ref, customer_name, customer_address, subject, params,
                    routed, task_priority, queued_at, customer_details, language, reached)
                SELECT v.id, v.service, 'im', 'queued', v.priority, $40, $40, v.kind, v.ref, v.name, v.address,
                    v.subject, v.params, TRUE, 0, $40, v.details, v.lang, v.channel
                FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
                            $8::text[], $9::text[], $10::text[], $11::text[], $41::text[])
                   AS v(id, service, priority, kind, ref, name, address, subject, params, details, lang, channel)
             ), new_messages AS (
                INSERT INTO chat_messages (id, chat_id, task_id, external_id, sender, sender_id, sender_name,
                    text, sent_at, received_at, seq)
                SELECT v.id, v.chat, v.task, v.external, v.sender, v.sender_id, v.sender_name, v.text, v.sent_at, $40, v.seq
                FROM unnest($12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[],
                            $19::text[], $20::bigint[], $21::bigint[])
                   AS v(id, chat, task, external, sender, sender_id, sender_name, text, sent_at, seq)
             ), old_tasks AS (
                UPDATE tasks SET
                    subject = CASE WHEN v.complete THEN COALESCE(tasks.subject, v.subject) ELSE tasks.subject END,
                    params = CASE WHEN v.complete THEN v.params ELSE tasks.params END,
                    customer_kind = COALESCE(v.kind, tasks.customer_kind), customer_ref = COALESCE(v.ref, tasks.customer_ref),
                    customer_name = COALESCE(v.name, tasks.customer_name),
                    customer_address = COALESCE(v.address, tasks.customer_address), updated_at = $40
                FROM unnest($22::text[], $23::bool[], $24::text[], $25::text[], $26::text[], $27::text[], $28::text[],
                            $29::text[]) AS v(id, complete, subject, params, kind, ref, name, address)
                WHERE tasks.id = v.id
             ), chat_updates AS (
                UPDATE chats SET task_id = COALESCE(v.task, chats.task_id),
                    state = CASE WHEN v.task IS NOT NULL THEN 'open' ELSE chats.state END,
                    left_at = CASE WHEN v.task IS NOT NULL THEN NULL ELSE chats.left_at END,
                    ended_at = CASE WHEN v.task IS NOT NULL THEN NULL ELSE chats.ended_at END,
                    customer_user_id = CASE WHEN v.started THEN COALESCE(v.usr, chats.customer_user_id) ELSE chats.customer_user_id END,
                    customer_name = CASE WHEN v.started THEN COALESCE(v.name, chats.customer_name) ELSE chats.customer_name END,
                    customer_email = CASE WHEN v.started THEN COALESCE(v.email, chats.customer_email) ELSE chats.customer_email END,
                    customer_phone = CASE WHEN v.started THEN COALESCE(v.phone, chats.customer_phone) ELSE chats.customer_phone END,
                    language = CASE WHEN v.started THEN COALESCE(v.lang, chats.language) ELSE chats.language END,
                    messages_total = v.total, updated_at = $40
                FROM unnest($30::text[], $31::text[], $32::bigint[], $33::bool[], $34::text[], $35::text[], $36::text[],
                            $37::text[], $38::text[]) AS v(id, task, total, started, usr, name, email, phone, lang)
                WHERE chats.id = v.id
             )
             SELECT DISTINCT task_id, agent_id FROM user_sessions
             WHERE task_id = ANY($39) AND state IN ('offered', 'connected', 'wrap_up')
               AND (result IS NULL OR result <> 'transferred')
             ORDER BY task_id, agent_id",
        )
        // $1–$11: the new tasks.
        .bind(task_col(|t| t.id.clone()))
        .bind(task_col(|t| t.service.clone()))
        .bind(new_tasks.iter().map(|t| t.priority).collect::<Vec<i64>>())
        .bind(task_col(|t| t.customer.kind.as_str().to_string()))
        .bind(task_opt(|t| t.customer.reference.clone()))
        .bind(task_opt(|t| t.customer.name.as_deref().map(|s| storable(s).into_owned())))
        .bind(task_opt(|t| t.customer.address.as_deref().map(|s| storable(s).into_owned())))
        .bind(task_opt(|t| t.subject.clone()))
        .bind(task_col(|t| storable(&t.params.to_string()).into_owned()))
        .bind(task_col(|t| t.details.clone()))
        .bind(task_opt(|t| t.language.clone()))
        // $12–$21: the messages.
        .bind(msg_col(|m| m.id.clone()))
        .bind(msg_col(|m| m.chat.clone()))
        .bind(msg_opt(|m| m.task.clone()))
        .bind(msg_col(|m| m.external_id.clone()))
        .bind(msg_col(|m| m.sender.to_string()))
        .bind(msg_opt(|m| m.sender_id.clone()))
        .bind(msg_opt(|m| m.sender_name.clone()))
        .bind(msg_col(|m| m.text.clone()))
        .bind(msg_int(|m| m.sent_at))
        .bind(msg_int(|m| m.seq))
        // $22–$29: the tasks that existed before.
        .bind(&old_tasks)
        .bind(old_tasks.iter().map(|id| completion(id).is_some()).collect::<Vec<_>>())
        .bind(old_tasks.iter().map(|id| completion(id).and_then(|c| c.subject.clone())).collect::<Vec<_>>())
        .bind(old_tasks.iter().map(|id| completion(id).map(|c| c.params.clone())).collect::<Vec<_>>())
        .bind(better(|b| Some(b.kind.as_str().to_string())))
        .bind(better(|b| b.reference.clone()))
        .bind(better(|b| b.name.as_deref().map(|s| storable(s).into_owned())))
        .bind(better(|b| b.address.as_deref().map(|s| storable(s).into_owned())))
        // $30–$38: the chats.
        .bind(chat_updates.iter().map(|c| c.id.clone()).collect::<Vec<_>>())
        .bind(chat_updates.iter().map(|c| c.task.clone()).collect::<Vec<_>>())
        .bind(chat_updates.iter().map(|c| c.total).collect::<Vec<_>>())
        .bind(chat_updates.iter().map(|c| c.customer.is_some()).collect::<Vec<_>>())
        .bind(chat_customer_col(0))
        .bind(chat_customer_col(1))
        .bind(chat_customer_col(2))
        .bind(chat_customer_col(3))
        .bind(chat_customer_col(4))
        // $39: the touched tasks, whose holders are told; $40: now; $41:
        // the new tasks' channels.
        .bind(&touched)
        .bind(now)
        .bind(task_col(|t| t.channel.clone()))
        .fetch_all(&mut *self)
        .await?;
        // The entries of those who have a completed task take what it now says.
        for c in &completions {
            let tx = &mut *self;
            super::event::sessions_follow_task!(tx, &c.id, now);
        }
        for t in &told {
            for (_, agent) in holders.iter().filter(|(task, _)| *task == t.task) {
                tell.push(
                    agent,
                    AgentEventKind::ChatMessage,
                    &t.task,
                    t.payload.clone(),
                );
            }
        }
        Ok(applied)
    }
}
