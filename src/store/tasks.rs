//! Tasks: creation, listing and the transitions that agents and other
//! components cause (pickup, outcome, handled, transfer).
use super::TransferTo;
use super::events::holding_agents;
use super::offers::{
    Tell, change_payload, end_offers, lock_task, make_offer, record_task_change, service_routing,
    touch_activity, write_tell,
};
use super::rows::{Arg, RowExt, bind_all};
use super::{
    Agent, NewTask, Outcome, Session, Store, StoreError, StoreResult, Task, TaskExtras, TaskFilter,
    WriteTx, with_pool, with_reader,
};
use crate::domain::cursor::Cursor;
use crate::domain::customer::{CustomerKind, CustomerMatch};
use crate::domain::event::AgentEventKind;
use crate::domain::id::new_id;
use crate::domain::session::state_after;
use crate::domain::{Modality, SessionResult, SessionState, TaskEvent, TaskState, now_millis};

pub(super) const TASK_COLUMNS: &str = "id, service_id, modality, state, priority, arrived_at, updated_at, ended_at, \
     customer_kind, customer_ref, customer_name, customer_address, subject, params, external_id, \
     routed, task_priority, queued_at, ronas, customer_left_at, customer_details, language, reached, \
     context_cleared_at";

pub(super) fn task_from_row(row: &impl RowExt) -> StoreResult<Task> {
    Ok(Task {
        id: row.text("id")?,
        service_id: row.text("service_id")?,
        modality: Modality::parse(&row.text("modality")?)?,
        state: TaskState::parse(&row.text("state")?)?,
        priority: row.int("priority")? as i32,
        arrived_at: row.int("arrived_at")?,
        updated_at: row.int("updated_at")?,
        ended_at: row.opt_int("ended_at")?,
        customer: CustomerMatch {
            kind: CustomerKind::parse(&row.text("customer_kind")?),
            reference: row.opt_text("customer_ref")?,
            name: row.opt_text("customer_name")?,
            address: row.opt_text("customer_address")?,
        },
        subject: row.opt_text("subject")?,
        params: row.json("params")?,
        external_id: row.opt_text("external_id")?,
        routed: row.flag("routed")?,
        task_priority: row.int("task_priority")? as i32,
        queued_at: row.opt_int("queued_at")?,
        ronas: row.int("ronas")?,
        customer_left_at: row.opt_int("customer_left_at")?,
        details: row.json("customer_details")?,
        language: row.opt_text("language")?,
        reached: row.opt_text("reached")?,
        context_cleared_at: row.opt_int("context_cleared_at")?,
    })
}

/// Reads a task inside a transaction or from a pool.
macro_rules! fetch_task {
    ($exec:expr, $id:expr) => {{
        let sql = format!("SELECT {} FROM tasks WHERE id = $1", TASK_COLUMNS);
        match sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind($id)
            .fetch_optional($exec)
            .await?
        {
            Some(row) => task_from_row(&row)?,
            None => return Err(StoreError::NotFound(format!("task '{}'", $id))),
        }
    }};
}

/// Moves a task from the state it was read in; fails with a conflict when
/// someone else moved it first (the `WHERE state = …` guard).
macro_rules! move_task {
    ($exec:expr, $task:expr, $event:expr, $now:expr) => {{
        let next = $task.state.apply($event)?;
        let ended: Option<i64> = if next.is_final() { Some($now) } else { None };
        let done = sqlx::query(
            "UPDATE tasks SET state = $1, updated_at = $2, ended_at = COALESCE($3, ended_at)
             WHERE id = $4 AND state = $5",
        )
        .bind(next.as_str())
        .bind($now)
        .bind(ended)
        .bind(&$task.id)
        .bind($task.state.as_str())
        .execute($exec)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "task '{}' changed meanwhile: reload it and try again",
                $task.id
            )));
        }
        next
    }};
}

/// Inserts a user session for `agent` on `task`.
macro_rules! insert_session {
    ($exec:expr, $task:expr, $agent_id:expr, $state:expr, $result:expr, $answered:expr, $ended:expr, $now:expr) => {{
        let id = new_id("ses");
        sqlx::query(
            "INSERT INTO user_sessions (id, task_id, agent_id, service_id, modality, state, result,
                created_at, answered_at, ended_at, subject, customer_name, customer_address, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $8)",
        )
        .bind(&id)
        .bind(&$task.id)
        .bind($agent_id)
        .bind(&$task.service_id)
        .bind($task.modality.as_str())
        .bind($state.as_str())
        .bind($result.map(|r: SessionResult| r.as_str()))
        .bind($now)
        .bind($answered)
        .bind($ended)
        .bind(&$task.subject)
        .bind(&$task.customer.name)
        .bind(&$task.customer.address)
        .execute($exec)
        .await
        .map_err(|e| super::conflict_on_unique(e, "this agent already has an open session on this task"))?;
        id
    }};
}

/// Locks an agent's row (PostgreSQL `FOR NO KEY UPDATE`, as routing does): whoever changes an
/// agent's load holds it, so capacity is never exceeded.
macro_rules! lock_agent {
    ($store:expr, $tx:expr, $agent:expr) => {
        if matches!($store, Store::Postgres(..)) {
            sqlx::query("SELECT id FROM agents WHERE id = $1 FOR NO KEY UPDATE")
                .bind($agent)
                .fetch_optional(&mut *$tx)
                .await?;
        }
    };
}

/// Ends an offered or connected session with a result: answered ones go to
/// wrap-up, unanswered ones conclude at once.
macro_rules! end_open_session {
    ($exec:expr, $session_id:expr, $result:expr, $now:expr) => {{
        let result: SessionResult = $result;
        sqlx::query(
            "UPDATE user_sessions SET result = $1, ended_at = $2, updated_at = $2,
                state = CASE WHEN answered_at IS NULL THEN $3 ELSE $4 END
             WHERE id = $5 AND state IN ('offered', 'connected')",
        )
        .bind(result.as_str())
        .bind($now)
        .bind(state_after(result, false).as_str())
        .bind(state_after(result, true).as_str())
        .bind($session_id)
        .execute($exec)
        .await?
    }};
}

/// The task's interaction is over: its connected sessions go to wrap-up.
macro_rules! close_connected_sessions {
    ($exec:expr, $task_id:expr, $now:expr) => {
        sqlx::query(
            "UPDATE user_sessions SET state = 'wrap_up', ended_at = $1, updated_at = $1
             WHERE task_id = $2 AND state = 'connected'",
        )
        .bind($now)
        .bind($task_id)
        .execute($exec)
        .await?
    };
}

/// A task posted again with the `external_id` of a task that exists is that
/// task (a retry), unless it is plainly another one: a different modality
/// (its service may have changed since, by a transfer).
fn same_task(existing: Task, new: &NewTask) -> StoreResult<(Task, bool)> {
    if existing.modality != new.modality {
        return Err(StoreError::Closed {
            code: "external_id_reused",
            message: format!(
                "external_id: '{}' is already the id of task {} ({}, {}): a new task needs an external_id of its own",
                crate::domain::text::shown(new.external_id.as_deref().unwrap_or_default()),
                existing.id,
                existing.modality.as_str(),
                existing.service_id
            ),
        });
    }
    Ok((existing, false))
}

impl Store {
    /// Creates a queued task, resolving its customer. With an `external_id`,
    /// posting the same task again returns the first one (`false`: not created).
    pub async fn create_task(&self, new: &NewTask) -> StoreResult<(Task, bool)> {
        self.create_task_with(new, &TaskExtras::default()).await
    }

    /// [`Store::create_task`] with the customer's whole identity, the
    /// language and the address reached. The database announces the task
    /// (`task.created`) in the same transaction, as for every task.
    pub async fn create_task_with(
        &self,
        new: &NewTask,
        extras: &TaskExtras,
    ) -> StoreResult<(Task, bool)> {
        if let Some(ext) = &new.external_id
            && let Some(existing) = self.task_by_external_id(ext).await?
        {
            return same_task(existing, new);
        }
        let identity = match &extras.identity {
            Some(i) => i.clone(),
            None => crate::domain::customer::CustomerIdentity {
                address: new.customer_address.clone(),
                name: new.customer_name.clone(),
                ..Default::default()
            }
            .normalize(None, false, "customer")?,
        };
        let resolved = self.resolve_identity(&identity).await?;
        let customer = &resolved.matched;
        let details = serde_json::to_string(&resolved.details).unwrap_or_else(|_| "{}".into());
        let service = self.service(&new.service_id).await?;
        let id = new_id("tsk");
        let params = serde_json::to_string(&new.params).unwrap_or_else(|_| "{}".into());
        let now = now_millis();
        let priority = i64::from(service.settings.priority) + i64::from(new.priority);
        let inserted: Result<(), sqlx::Error> = with_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                sqlx::query(
                    "INSERT INTO tasks (id, service_id, modality, state, priority, arrived_at, updated_at,
                        customer_kind, customer_ref, customer_name, customer_address, subject, params, external_id,
                        routed, task_priority, queued_at, customer_details, language, reached)
                     VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $6, $16, $17, $18)",
                )
                .bind(&id)
                .bind(&new.service_id)
                .bind(new.modality.as_str())
                .bind(priority)
                .bind(new.arrived_at)
                .bind(now)
                .bind(customer.kind.as_str())
                .bind(&customer.reference)
                .bind(&customer.name)
                .bind(&customer.address)
                .bind(&new.subject)
                .bind(&params)
                .bind(&new.external_id)
                .bind(new.routed)
                .bind(i64::from(new.priority))
                .bind(&details)
                .bind(&extras.language)
                .bind(&extras.reached)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }
            .await
        });
        if inserted.is_ok() {
            self.ring_webhooks();
            if new.routed {
                self.wake_router();
            }
        }
        match inserted {
            Ok(()) => Ok((self.task(&id).await?, true)),
            // Two posts of the same external id raced: the other one won.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                let ext = new.external_id.as_deref().unwrap_or_default();
                let existing = self.task_by_external_id(ext).await?;
                existing
                    .ok_or_else(|| StoreError::Conflict("duplicate task".into()))
                    .and_then(|t| same_task(t, new))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn task(&self, id: &str) -> StoreResult<Task> {
        with_reader!(self, conn => Ok(fetch_task!(conn, id)))
    }

    /// The task a component posted with `external_id`, if any.
    pub async fn task_by_external_id(&self, external_id: &str) -> StoreResult<Option<Task>> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE external_id = $1");
        with_pool!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(external_id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(task_from_row(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Tasks for admins, newest first, with keyset pagination.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> StoreResult<Vec<Task>> {
        let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1 = 1");
        let mut args = Vec::new();
        let mut push = |clause: &str, arg: Arg, args: &mut Vec<Arg>| {
            args.push(arg);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(s) = &filter.service {
            push(" AND service_id = ?", Arg::Text(s.clone()), &mut args);
        }
        if let Some(s) = filter.state {
            push(" AND state = ?", Arg::Text(s.as_str().into()), &mut args);
        }
        if let Some(m) = filter.modality {
            push(" AND modality = ?", Arg::Text(m.as_str().into()), &mut args);
        }
        if let Some(services) = &filter.services {
            if services.is_empty() {
                return Ok(Vec::new());
            }
            sql.push_str(" AND service_id IN (");
            for (i, s) in services.iter().enumerate() {
                args.push(Arg::Text(s.clone()));
                sql.push_str(&format!(
                    "{}${}",
                    if i == 0 { "" } else { ", " },
                    args.len()
                ));
            }
            sql.push(')');
        }
        if let Some(Cursor { created_at, id }) = &filter.after {
            args.push(Arg::Int(*created_at));
            args.push(Arg::Text(id.clone()));
            let (a, b) = (args.len() - 1, args.len());
            sql.push_str(&format!(" AND (arrived_at, id) < (${a}, ${b})"));
        }
        args.push(Arg::Int(i64::from(filter.limit)));
        sql.push_str(&format!(
            " ORDER BY arrived_at DESC, id DESC LIMIT ${}",
            args.len()
        ));
        with_pool!(self, pool => {
            let rows = bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), &args).fetch_all(pool).await?;
            rows.iter().map(task_from_row).collect()
        })
    }

    /// An agent takes a queued task of one of their services (pickup
    /// distribution, or a routed task still waiting). Exactly one of several
    /// agents racing for a task wins, and the agent's capacity (offered and
    /// connected tasks) is checked under their row lock, as routing does.
    pub async fn pickup(&self, task_id: &str, agent: &Agent) -> StoreResult<Session> {
        super::retry_deadlocks("pickup", || self.pickup_once(task_id, agent)).await
    }

    async fn pickup_once(&self, task_id: &str, agent: &Agent) -> StoreResult<Session> {
        let now = now_millis();
        let session_id = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let Some(task) = lock_task!(self, tx, task_id) else {
                return Err(StoreError::NotFound(format!("task '{task_id}'")));
            };
            if !agent.services.contains(&task.service_id) {
                // Not a member: the task is none of the caller's business.
                return Err(StoreError::NotFound(format!("task '{task_id}'")));
            }
            if task.state != TaskState::Queued {
                let mine: Option<String> = sqlx::query_scalar(
                    "SELECT state FROM user_sessions WHERE task_id = $1 AND agent_id = $2
                       AND state IN ('offered', 'connected', 'wrap_up')",
                )
                .bind(task_id)
                .bind(&agent.id)
                .fetch_optional(&mut *tx)
                .await?;
                return Err(StoreError::Conflict(match mine.as_deref() {
                    Some("offered") => format!("task '{task_id}' is offered to you: accept the offer instead"),
                    Some(_) => format!("you already have task '{task_id}'"),
                    None => format!("task '{task_id}' is no longer waiting in the queue: someone else has it"),
                }));
            }
            lock_agent!(self, tx, &agent.id);
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM user_sessions WHERE agent_id = $1 AND modality = $2 AND state IN ('offered', 'connected')",
            )
            .bind(&agent.id)
            .bind(task.modality.as_str())
            .fetch_one(&mut *tx)
            .await?;
            let capacity = agent.capacity.for_modality(task.modality);
            if capacity == 0 {
                return Err(StoreError::Conflict(format!(
                    "you take no {} tasks (your capacity for them is 0): an admin can change it",
                    task.modality.as_str()
                )));
            }
            if open >= i64::from(capacity) {
                return Err(StoreError::Conflict(format!(
                    "you are at your capacity of {capacity} {} task(s), counting open offers: finish one first",
                    task.modality.as_str()
                )));
            }
            move_task!(&mut *tx, task, TaskEvent::Pickup, now);
            let id = insert_session!(&mut *tx, task, &agent.id, SessionState::Connected,
                Some(SessionResult::Accepted), Some(now), None::<i64>, now);
            touch_activity!(tx, &agent.id, task.modality, now);
            record_task_change!(tx, task_id, "task.accepted", Some(id.as_str()), Some(agent.id.as_str()),
                change_payload(&task, TaskState::Connected, serde_json::json!({"session_id": id, "agent": agent.id, "pickup": true})), now);
            // Every page of the agent's shows the task as theirs.
            let mut tell = Tell::default();
            tell.push(&agent.id, AgentEventKind::Task, task_id,
                serde_json::json!({"task_id": task_id, "session_id": id, "state": TaskState::Connected, "reason": "picked_up"}));
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (id, told)
        });
        let (session_id, told) = session_id;
        self.ring_agents(&told);
        self.ring_webhooks();
        self.session(&session_id).await
    }

    /// Records what another component (telephony) reports about an agent's part
    /// in a task: an answered call, a declined or unanswered offer, a caller who
    /// hung up, and whether the call has ended. An accept or a cancel ends the
    /// task's other open offers (withdrawn as taken, or cancelled), as routing
    /// does. Evaluates to the task and how offers ended by it, by result
    /// (for the metrics).
    pub async fn record_outcome(
        &self,
        task_id: &str,
        outcome: &Outcome,
    ) -> StoreResult<(Task, Vec<(&'static str, usize)>)> {
        let agent = self.agent(&outcome.agent_id).await?;
        let mut ended: Vec<(&'static str, usize)> = Vec::new();
        // An open offer to the agent is answered the way routing answers it.
        if let Some(offer) = self.open_offer(task_id, &agent.id).await? {
            match outcome.result {
                SessionResult::Accepted => {
                    let a = self
                        .answer_offer(&offer, &agent, crate::domain::routing::Answer::Accept)
                        .await?;
                    if a.answered_after_ms.is_some() {
                        // Answered for them: their page is told by the answer
                        // (a task event, reason `accepted`).
                        ended.push(("accepted", 1));
                    }
                    ended.push(("withdrawn", a.withdrawn));
                }
                SessionResult::Declined => {
                    let a = self
                        .answer_offer(&offer, &agent, crate::domain::routing::Answer::Decline)
                        .await?;
                    if a.answered_after_ms.is_some() {
                        ended.push(("declined", 1));
                        // Answered for them: their page drops the offer.
                        self.tell_agent(&agent.id, AgentEventKind::OfferWithdrawn, task_id,
                            serde_json::json!({"session_id": offer, "task_id": task_id, "result": "declined", "reason": "outcome"}))
                            .await?;
                    }
                    return Ok((self.task(task_id).await?, ended));
                }
                SessionResult::Rona => {
                    let n = self.expire_offer_now(task_id, &offer).await?;
                    ended.push(("rona", n));
                    return Ok((self.task(task_id).await?, ended));
                }
                _ => {}
            }
        }
        let now = now_millis();
        let told: Vec<String>;
        let mut tell = Tell::default();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut task = fetch_task!(&mut *tx, task_id);
            if !agent.services.contains(&task.service_id) {
                return Err(StoreError::Forbidden(format!(
                    "agent '{}' is not a member of service '{}'",
                    agent.id, task.service_id
                )));
            }
            // The task's sessions, newest first: one read decides what follows.
            let past: Vec<(String, String, String, Option<String>)> = sqlx::query(
                "SELECT id, agent_id, state, result FROM user_sessions WHERE task_id = $1 ORDER BY created_at DESC, id DESC",
            )
            .bind(task_id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.text("id")?, r.text("agent_id")?, r.text("state")?, r.opt_text("result")?)))
            .collect::<StoreResult<_>>()?;
            let open_id = past
                .iter()
                .find(|(_, a, state, _)| *a == agent.id && (state == "offered" || state == "connected"))
                .map(|(id, ..)| id.clone());
            // The agent's newest part, and whether it is the task's newest.
            let mine = past.iter().position(|(_, a, _, _)| *a == agent.id);
            let last_is_mine_with = |result: &str| {
                mine == Some(0) && past[0].3.as_deref() == Some(result)
            };
            // A retry of what the task last recorded changes nothing: a
            // decline or rona, an accept (ended or not) of the agent who holds
            // or held it last, a cancel of a cancelled task.
            let repeated = match outcome.result {
                SessionResult::Accepted => {
                    open_id.is_none()
                        && matches!(task.state, TaskState::WrapUp | TaskState::Concluded)
                        && last_is_mine_with("accepted")
                }
                SessionResult::Declined | SessionResult::Rona => {
                    open_id.is_none() && last_is_mine_with(outcome.result.as_str())
                }
                SessionResult::Cancelled => task.state == TaskState::Cancelled,
                _ => false,
            };
            if repeated {
                tx.rollback().await?;
                return Ok((task, ended));
            }
            if task.state.is_final() {
                return Err(StoreError::Conflict(format!(
                    "task '{task_id}' is {}: no outcome applies to it any more",
                    task.state.as_str()
                )));
            }
            match outcome.result {
                SessionResult::Accepted => {
                    if open_id.is_none() && matches!(task.state, TaskState::Connected | TaskState::WrapUp) {
                        let holder = past
                            .iter()
                            .find(|(_, _, state, result)| {
                                (state == "connected" || state == "wrap_up") && result.as_deref() != Some("transferred")
                            })
                            .map_or("another agent", |(_, a, ..)| a.as_str());
                        if holder == agent.id {
                            // Theirs already (a retry after another agent's
                            // decline was recorded): nothing changes.
                            tx.rollback().await?;
                            return Ok((task, ended));
                        }
                        return Err(StoreError::Conflict(format!(
                            "task '{task_id}' was accepted by '{holder}' already: an accept by '{}' no longer applies",
                            agent.id
                        )));
                    }
                    if open_id.is_none() {
                        let event = if task.state == TaskState::Offered { TaskEvent::Accept } else { TaskEvent::Pickup };
                        task.state = move_task!(&mut *tx, task, event, now);
                        let id = insert_session!(&mut *tx, task, &agent.id, SessionState::Connected,
                            Some(SessionResult::Accepted), Some(now), None::<i64>, now);
                        record_task_change!(tx, task_id, "task.accepted", Some(id.as_str()), Some(agent.id.as_str()),
                            change_payload(&task, task.state, serde_json::json!({"session_id": id, "agent": agent.id, "outcome": true})), now);
                        // Offered to others meanwhile: taken, as by an accept.
                        let n = end_offers!(tx, tell, task, None, SessionResult::Withdrawn, "taken", now).len();
                        ended.push(("withdrawn", n));
                    }
                }
                SessionResult::Declined | SessionResult::Rona => {
                    if open_id.is_some() {
                        return Err(StoreError::Conflict(format!(
                            "agent '{}' has already answered task '{task_id}'", agent.id
                        )));
                    }
                    // An agent who took the task cannot have declined or
                    // missed it afterwards.
                    if let Some((_, _, state, result)) = mine.map(|i| &past[i])
                        && (state == "wrap_up" || result.as_deref() == Some("accepted"))
                    {
                        return Err(StoreError::Conflict(format!(
                            "agent '{}' took task '{task_id}': a decline or a missed offer no longer applies",
                            agent.id
                        )));
                    }
                    // Back to the queue only when nobody else is offered it.
                    let others = past.iter().filter(|(_, _, state, _)| state == "offered").count();
                    if task.state == TaskState::Offered && others == 0 {
                        task.state = move_task!(&mut *tx, task, TaskEvent::Return, now);
                    }
                    let id = insert_session!(&mut *tx, task, &agent.id, SessionState::Concluded,
                        Some(outcome.result), None::<i64>, Some(now), now);
                    let kind = if outcome.result == SessionResult::Rona { "task.rona" } else { "task.declined" };
                    record_task_change!(tx, task_id, kind, Some(id.as_str()), Some(agent.id.as_str()),
                        change_payload(&task, task.state, serde_json::json!({"session_id": id, "agent": agent.id, "outcome": true})), now);
                }
                SessionResult::Cancelled => {
                    task.state = move_task!(&mut *tx, task, TaskEvent::Cancel, now);
                    if let Some(id) = &open_id {
                        end_open_session!(&mut *tx, id, SessionResult::Cancelled, now);
                    } else {
                        insert_session!(&mut *tx, task, &agent.id, SessionState::Concluded,
                            Some(SessionResult::Cancelled), None::<i64>, Some(now), now);
                    }
                    record_task_change!(tx, task_id, "task.cancelled", open_id.as_deref(), Some(agent.id.as_str()),
                        change_payload(&task, task.state, serde_json::json!({"reason": "outcome"})), now);
                    let n = end_offers!(tx, tell, task, None, SessionResult::Cancelled, "cancelled", now).len();
                    ended.push(("cancelled", n));
                }
                SessionResult::Transferred | SessionResult::Withdrawn => {
                    return Err(StoreError::Invalid(crate::domain::DomainError::Invalid(
                        "result: use accepted, declined, rona or cancelled (transfers have their own endpoint; withdrawn is set by routing)".into(),
                    )));
                }
            }
            let holders = holding_agents!(tx, task_id);
            if outcome.ended && task.state == TaskState::Connected {
                task.state = move_task!(&mut *tx, task, TaskEvent::Handle, now);
                close_connected_sessions!(&mut *tx, task_id, now);
                record_task_change!(tx, task_id, "task.handled", None::<&str>, Some(agent.id.as_str()),
                    change_payload(&task, task.state, serde_json::json!({"by": agent.id, "outcome": true})), now);
            }
            let mut concerned = holders;
            if !concerned.contains(&agent.id) {
                concerned.push(agent.id.clone());
                concerned.sort_unstable();
            }
            // One write of every agent's events, in agent order.
            for agent in &concerned {
                tell.push(agent, AgentEventKind::Task, task_id,
                    serde_json::json!({"task_id": task_id, "state": task.state.as_str(), "reason": "outcome"}));
            }
            told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
        });
        self.ring_agents(&told);
        // A session ended or a task back in its queue: work may be assigned.
        self.wake_router();
        self.ring_webhooks();
        Ok((self.task(task_id).await?, ended))
    }

    /// Tells one agent one thing (an event on their stream), on its own.
    async fn tell_agent(
        &self,
        agent_id: &str,
        kind: AgentEventKind,
        task_id: &str,
        fields: serde_json::Value,
    ) -> StoreResult<()> {
        let now = now_millis();
        let mut tell = Tell::default();
        tell.push(agent_id, kind, task_id, fields);
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            told
        });
        self.ring_agents(&told);
        Ok(())
    }

    /// The id of `agent_id`'s open offer on the task, if any.
    async fn open_offer(&self, task_id: &str, agent_id: &str) -> StoreResult<Option<String>> {
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar(
                "SELECT id FROM user_sessions WHERE task_id = $1 AND agent_id = $2 AND state = 'offered'",
            )
            .bind(task_id)
            .bind(agent_id)
            .fetch_optional(pool)
            .await?)
        })
    }

    /// The agent holding a task (or an admin) marks it handled: the task and its
    /// connected sessions go to wrap-up. Marking it again is a conflict, not
    /// a refusal; an agent who never had the task is told it does not exist.
    pub async fn mark_handled(&self, task_id: &str, agent: &Agent) -> StoreResult<Task> {
        super::retry_deadlocks("mark_handled", || self.mark_handled_once(task_id, agent)).await
    }

    async fn mark_handled_once(&self, task_id: &str, agent: &Agent) -> StoreResult<Task> {
        let now = now_millis();
        let mut tell = Tell::default();
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let Some(task) = lock_task!(self, tx, task_id) else {
                return Err(StoreError::NotFound(format!("task '{task_id}'")));
            };
            let mine: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT state, result FROM user_sessions WHERE task_id = $1 AND agent_id = $2",
            )
            .bind(task_id)
            .bind(&agent.id)
            .fetch_all(&mut *tx)
            .await?;
            let holds = mine.iter().any(|(state, _)| state == "connected");
            if !holds && !agent.admin {
                let in_wrap_up = mine.iter().any(|(state, result)| {
                    state == "wrap_up" && result.as_deref() == Some("accepted")
                });
                let saved = mine.iter().any(|(state, result)| {
                    state == "concluded" && result.as_deref() == Some("accepted")
                });
                return Err(if in_wrap_up {
                    StoreError::Conflict(format!("task '{task_id}' is already handled: wrap it up and save"))
                } else if saved {
                    StoreError::Conflict(format!("task '{task_id}' is already handled and your session is saved"))
                } else if mine.iter().any(|(_, r)| r.as_deref() == Some("transferred")) {
                    StoreError::Conflict(format!("you transferred task '{task_id}': its new holder ends it"))
                } else if mine.is_empty() && !agent.oversees(&task.service_id) {
                    StoreError::NotFound(format!("task '{task_id}'"))
                } else if mine.is_empty() {
                    // A supervisor looking on.
                    StoreError::Forbidden(format!("you do not hold task '{task_id}': its holder ends it"))
                } else {
                    StoreError::Forbidden(format!("you do not hold task '{task_id}': accept it first"))
                });
            }
            if task.state != TaskState::Connected {
                return Err(StoreError::Conflict(format!(
                    "task '{task_id}' is not connected to an agent{}",
                    if task.state == TaskState::WrapUp { ": it is already handled" } else { "" }
                )));
            }
            let holders = holding_agents!(tx, task_id);
            let state = move_task!(&mut *tx, task, TaskEvent::Handle, now);
            close_connected_sessions!(&mut *tx, task_id, now);
            for h in &holders {
                touch_activity!(tx, h, task.modality, now);
                tell.push(h, AgentEventKind::Task, task_id,
                    serde_json::json!({"task_id": task_id, "state": state, "reason": "handled"}));
            }
            record_task_change!(tx, task_id, "task.handled", None::<&str>, Some(agent.id.as_str()),
                change_payload(&task, state, serde_json::json!({"by": agent.id})), now);
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            told
        });
        self.ring_agents(&told);
        self.wake_router();
        self.task(task_id).await
    }

    /// Moves a task to another service's queue, or offers it to a named agent
    /// (in its service or another). The holder's session ends as
    /// `transferred` and waits for its wrap-up; the task stays one task.
    /// Admins may also move a task that waits or is offered (its offers are
    /// withdrawn). Evaluates to the task and how many offers it withdrew.
    pub async fn transfer(
        &self,
        task_id: &str,
        caller: &Agent,
        to: &TransferTo,
        grace_ms: crate::domain::Millis,
    ) -> StoreResult<(Task, usize)> {
        super::retry_deadlocks("transfer", || {
            self.transfer_once(task_id, caller, to, grace_ms)
        })
        .await
    }

    async fn transfer_once(
        &self,
        task_id: &str,
        caller: &Agent,
        to: &TransferTo,
        grace_ms: crate::domain::Millis,
    ) -> StoreResult<(Task, usize)> {
        if to.service.is_none() && to.agent.is_none() {
            return Err(StoreError::Invalid(crate::domain::DomainError::Invalid(
                "say where to: give service, agent, or both".into(),
            )));
        }
        if let Some(s) = &to.service {
            self.service(s).await?;
        }
        let target = match &to.agent {
            Some(a) => Some(self.agent(a).await?),
            None => None,
        };
        let now = now_millis();
        let mut tell = Tell::default();
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let Some(task) = lock_task!(self, tx, task_id) else {
                return Err(StoreError::NotFound(format!("task '{task_id}'")));
            };
            let mine: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, state FROM user_sessions WHERE task_id = $1 AND agent_id = $2",
            )
            .bind(task_id)
            .bind(&caller.id)
            .fetch_all(&mut *tx)
            .await?;
            let holder = mine.iter().find(|(_, state)| state == "connected").map(|(id, _)| id.clone());
            if holder.is_none() {
                let admin_may = caller.admin && matches!(task.state, TaskState::Queued | TaskState::Offered);
                if !admin_may && task.state == TaskState::WrapUp && mine.iter().any(|(_, state)| state == "wrap_up") {
                    return Err(StoreError::Conflict(format!(
                        "task '{task_id}' is in wrap-up (handled): it can no longer be transferred"
                    )));
                }
                if !admin_may {
                    // A supervisor of the task's service sees it: told why
                    // they cannot act, not that it does not exist.
                    let visible = caller.admin || !mine.is_empty()
                        || caller.oversees(&task.service_id)
                        || (task.state == TaskState::Queued && caller.services.contains(&task.service_id));
                    return Err(if visible {
                        StoreError::Forbidden(format!("you do not hold task '{task_id}'"))
                    } else {
                        StoreError::NotFound(format!("task '{task_id}'"))
                    });
                }
            }
            let to_service = to.service.clone().unwrap_or_else(|| task.service_id.clone());
            if target.is_none() && to_service == task.service_id {
                return Err(StoreError::Conflict(format!("task '{task_id}' is already in service '{to_service}'")));
            }
            if target.as_ref().is_some_and(|t| t.id == caller.id) {
                return Err(StoreError::Conflict("you cannot transfer a task to yourself".into()));
            }
            let (to_priority, to_rules) = service_routing!(tx, &to_service);
            // The named agent must be able to take it now, in a service of theirs
            // (its codes and its queue are what their page shows).
            if let Some(t) = &target {
                if !t.services.contains(&to_service) {
                    return Err(StoreError::Invalid(crate::domain::DomainError::Invalid(format!(
                        "agent: '{}' is not a member of service '{to_service}': choose a colleague of that service, or give the service too",
                        t.id
                    ))));
                }
                lock_agent!(self, tx, &t.id);
                let row = sqlx::query("SELECT presence, last_seen_at, rona_until FROM agents WHERE id = $1")
                    .bind(&t.id)
                    .fetch_one(&mut *tx)
                    .await?;
                let presence = crate::domain::Presence::parse(&row.text("presence")?)?;
                let effective = crate::domain::routing::effective_presence(presence, row.opt_int("last_seen_at")?, now, grace_ms);
                if effective != crate::domain::Presence::Available {
                    return Err(StoreError::Conflict(format!(
                        "agent '{}' is {}: choose someone available, or a service", t.id, effective.as_str()
                    )));
                }
                let open: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM user_sessions WHERE agent_id = $1 AND modality = $2 AND state IN ('offered', 'connected')",
                )
                .bind(&t.id)
                .bind(task.modality.as_str())
                .fetch_one(&mut *tx)
                .await?;
                if open >= i64::from(t.capacity.for_modality(task.modality)) {
                    return Err(StoreError::Conflict(format!(
                        "agent '{}' has no room for another {} task", t.id, task.modality.as_str()
                    )));
                }
            }
            let holders = holding_agents!(tx, task_id);
            let mut touched: Vec<String> = Vec::new();
            let withdrawn = end_offers!(tx, tell, task, None, SessionResult::Withdrawn, "transfer", now).len();
            let queued = task.state.apply(TaskEvent::Transfer)?;
            let service_changed = to_service != task.service_id;
            sqlx::query(
                "UPDATE tasks SET state = $1, service_id = $2, priority = $3 + task_priority, queued_at = $4,
                    updated_at = $4, ronas = CASE WHEN $5 THEN 0 ELSE ronas END
                 WHERE id = $6 AND state = $7",
            )
            .bind(queued.as_str())
            .bind(&to_service)
            .bind(i64::from(to_priority))
            .bind(now)
            .bind(service_changed)
            .bind(task_id)
            .bind(task.state.as_str())
            .execute(&mut *tx)
            .await?;
            // The holder's part ends after the task has moved: a move to
            // another service is that service's record (migration 0011); a
            // colleague in the same service makes a record of the holder's
            // own session (migration 0024).
            if let Some(h) = &holder {
                sqlx::query(
                    "UPDATE user_sessions SET result = 'transferred', end_reason = 'transfer', state = 'wrap_up',
                        ended_at = $1, updated_at = $1
                     WHERE id = $2 AND state = 'connected'",
                )
                .bind(now)
                .bind(h)
                .execute(&mut *tx)
                .await?;
                touched.push(caller.id.clone());
            }
            let mut moved = task.clone();
            moved.service_id = to_service.clone();
            moved.state = queued;
            let mut state = queued;
            if let Some(t) = &target {
                state = queued.apply(TaskEvent::Offer)?;
                sqlx::query("UPDATE tasks SET state = $1 WHERE id = $2").bind(state.as_str()).bind(task_id).execute(&mut *tx).await?;
                let expires_at = to_rules.offer_deadline(task.modality, now);
                make_offer!(tx, tell, &moved, &t.id, expires_at, now, serde_json::json!({"transfer": true}));
                touched.push(t.id.clone());
            }
            for h in &holders {
                tell.push(h, AgentEventKind::Task, task_id,
                    serde_json::json!({"task_id": task_id, "state": state, "reason": "transferred"}));
            }
            record_task_change!(tx, task_id, "task.transferred", holder.as_deref(), Some(caller.id.as_str()),
                change_payload(&moved, state, serde_json::json!({
                    "from_service": task.service_id, "to_service": to_service,
                    "from_agent": holder.as_ref().map(|_| caller.id.clone()),
                    "to_agent": target.as_ref().map(|t| t.id.clone()),
                })), now);
            touched.sort();
            for a in &touched {
                touch_activity!(tx, a, task.modality, now);
            }
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (told, withdrawn)
        });
        let (told, withdrawn) = told;
        self.ring_agents(&told);
        self.wake_router();
        Ok((self.task(task_id).await?, withdrawn))
    }
}
