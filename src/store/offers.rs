//! Offers and their ends: accept, decline, RONA (the durable deadline fires),
//! withdrawal (a broadcast peer accepted, the agent went away) and the
//! customer leaving. Every change of a task here first locks the task row, so
//! an accept and a RONA of the same offer are decided one after the other and
//! can never both win.
use super::events;
use super::sessions::{SESSION_COLUMNS, session_from_row};
use super::{
    Agent, Session, Store, StoreError, StoreResult, Task, WriteTx, retry_deadlocks, with_pool,
};
use crate::domain::event::AgentEventKind;
use crate::domain::routing::{
    AfterRona, Answer, AnswerDecision, OfferStatus, after_rona, decide_answer,
};
use crate::domain::{Millis, SessionResult, TaskState, millis_to_rfc3339, now_millis};
use serde_json::json;

/// Locks and reads a task (`None` when missing): `FOR UPDATE` on PostgreSQL
/// (SQLite's write transaction already excludes every other writer). With
/// `skip_busy`, a task another worker holds is skipped (`SKIP LOCKED`) rather
/// than waited for: for sweeps, where that worker deals with it.
macro_rules! lock_task_row {
    ($store:expr, $tx:expr, $id:expr, $skip_busy:expr) => {{
        let lock = match ($store, $skip_busy) {
            ($crate::store::Store::Postgres(..), false) => " FOR UPDATE",
            ($crate::store::Store::Postgres(..), true) => " FOR UPDATE SKIP LOCKED",
            _ => "",
        };
        let sql = format!(
            "SELECT {} FROM tasks WHERE id = $1{lock}",
            $crate::store::tasks::TASK_COLUMNS
        );
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind($id)
            .fetch_optional(&mut *$tx)
            .await?
        {
            Some(row) => Some($crate::store::tasks::task_from_row(&row)?),
            None => None,
        }
    }};
}

/// Locks and reads a task, waiting for another writer of it (see [`lock_task_row!`]).
macro_rules! lock_task {
    ($store:expr, $tx:expr, $id:expr) => {
        $crate::store::offers::lock_task_row!($store, $tx, $id, false)
    };
}
pub(crate) use {lock_task, lock_task_row};

/// Like [`lock_task!`], but skips a task another worker holds.
macro_rules! lock_task_unless_busy {
    ($store:expr, $tx:expr, $id:expr) => {
        $crate::store::offers::lock_task_row!($store, $tx, $id, true)
    };
}

/// Appends to the log of task changes (what integrations and telephony read),
/// in the transaction that made the change.
macro_rules! record_task_change {
    ($tx:expr, $task:expr, $kind:expr, $session:expr, $agent:expr, $payload:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO task_changes (task_id, kind, session_id, agent_id, payload, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind($task)
        .bind($kind)
        .bind($session)
        .bind($agent)
        .bind($payload)
        .bind($now)
        .execute(&mut *$tx)
        .await?
    };
}
pub(crate) use record_task_change;

/// Agent events a transaction writes at its end, in agent order, so every
/// writer takes the agents' event-counter locks in one order.
#[derive(Debug, Default)]
pub(crate) struct Tell {
    items: Vec<(String, AgentEventKind, String, String)>,
}

impl Tell {
    pub(crate) fn push(
        &mut self,
        agent: &str,
        kind: AgentEventKind,
        task_id: &str,
        fields: serde_json::Value,
    ) {
        self.items.push((
            agent.to_string(),
            kind,
            task_id.to_string(),
            events::payload(kind, fields),
        ));
    }

    /// Sorted by agent, keeping each agent's events in the order pushed.
    pub(crate) fn take_sorted(&mut self) -> Vec<(String, AgentEventKind, String, String)> {
        let mut items = std::mem::take(&mut self.items);
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items
    }
}

/// Writes a [`Tell`]'s events into the transaction, a few statements per
/// agent whatever the number of events: the agent's counter is bumped once
/// for all of them and the events are inserted together. Evaluates to the
/// agents told, whom the writer rings after the commit
/// ([`super::Store::ring_agents`]).
macro_rules! write_tell {
    ($store:expr, $tx:expr, $tell:expr, $now:expr) => {{
        let items = $tell.take_sorted();
        let mut told: Vec<String> = Vec::new();
        let mut start = 0usize;
        while start < items.len() {
            let agent = &items[start].0;
            let end = items[start..].iter().position(|i| &i.0 != agent).map_or(items.len(), |p| start + p);
            let group = &items[start..end];
            let k = group.len() as i64;
            let last: i64 = sqlx::query_scalar(
                "INSERT INTO agent_event_counters (agent_id, last_seq) VALUES ($1, $2)
                 ON CONFLICT (agent_id) DO UPDATE SET last_seq = agent_event_counters.last_seq + excluded.last_seq
                 RETURNING last_seq",
            )
            .bind(agent)
            .bind(k)
            .fetch_one(&mut *$tx)
            .await?;
            // In chunks, well under every backend's limit of bound values.
            for (c, chunk) in group.chunks(500).enumerate() {
                let mut sql = String::from(
                    "INSERT INTO agent_events (agent_id, seq, kind, task_id, payload, created_at) VALUES ",
                );
                for i in 0..chunk.len() {
                    let b = i * 6;
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(&format!("(${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6));
                }
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (i, (agent, kind, task, payload)) in chunk.iter().enumerate() {
                    let task: Option<&str> = (!task.is_empty()).then_some(task.as_str());
                    q = q
                        .bind(agent)
                        .bind(last - k + 1 + (c * 500 + i) as i64)
                        .bind($crate::domain::event::AgentEventKind::as_str(*kind))
                        .bind(task)
                        .bind(payload)
                        .bind($now);
                }
                q.execute(&mut *$tx).await?;
            }
            told.push(agent.clone());
            start = end;
        }
        told
    }};
}
pub(crate) use write_tell;

/// Inside a transaction: offers `$task` (as it will be: its service and
/// state after the change) to `$agent` until `$expires_at`: the offered
/// session, the agent's `offer` event, and the `task.offered` change (with
/// `$extra` fields). Evaluates to the session id.
macro_rules! make_offer {
    ($tx:expr, $tell:expr, $task:expr, $agent:expr, $expires_at:expr, $now:expr, $extra:expr) => {{
        let task: &$crate::store::Task = $task;
        let agent: &str = $agent;
        let expires_at: $crate::domain::Millis = $expires_at;
        let session_id = $crate::domain::id::new_id("ses");
        sqlx::query(
            "INSERT INTO user_sessions (id, task_id, agent_id, service_id, modality, state,
                created_at, subject, customer_name, customer_address, updated_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, 'offered', $6, $7, $8, $9, $6, $10)",
        )
        .bind(&session_id)
        .bind(&task.id)
        .bind(agent)
        .bind(&task.service_id)
        .bind(task.modality.as_str())
        .bind($now)
        .bind(&task.subject)
        .bind(&task.customer.name)
        .bind(&task.customer.address)
        .bind(expires_at)
        .execute(&mut *$tx)
        .await?;
        $tell.push(
            agent,
            $crate::domain::event::AgentEventKind::Offer,
            &task.id,
            $crate::store::offers::offer_fields(task, &session_id, expires_at),
        );
        let mut fields = serde_json::json!({
            "session_id": session_id,
            "agent": agent,
            "expires_at": $crate::domain::millis_to_rfc3339(expires_at),
        });
        if let (Some(f), serde_json::Value::Object(more)) = (fields.as_object_mut(), $extra) {
            f.extend(more);
        }
        $crate::store::offers::record_task_change!($tx, &task.id, "task.offered", Some(session_id.as_str()), Some(agent),
            $crate::store::offers::change_payload(task, $crate::domain::TaskState::Offered, fields), $now);
        session_id
    }};
}
pub(crate) use make_offer;

/// The fields an offer event carries.
pub(crate) fn offer_fields(task: &Task, session_id: &str, expires_at: Millis) -> serde_json::Value {
    json!({
        "session_id": session_id,
        "task_id": task.id,
        "service": task.service_id,
        "modality": task.modality,
        "priority": task.priority,
        "subject": task.subject,
        "customer": {
            "kind": task.customer.kind,
            "name": task.customer.name,
            "address": task.customer.address,
        },
        "expires_at": millis_to_rfc3339(expires_at),
    })
}

/// A task change's payload.
pub(crate) fn change_payload(task: &Task, state: TaskState, extra: serde_json::Value) -> String {
    let mut v = json!({
        "task_id": task.id,
        "service": task.service_id,
        "modality": task.modality,
        "state": state,
    });
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v.to_string()
}

/// Ends the task's open offers, except the session `$except`, with `$result`
/// and `$reason`, and tells each agent. Evaluates to the (session, agent) pairs ended.
macro_rules! end_offers {
    ($tx:expr, $tell:expr, $task:expr, $except:expr, $result:expr, $reason:expr, $now:expr) => {{
        let except: Option<&str> = $except;
        let result: $crate::domain::SessionResult = $result;
        let reason: &str = $reason;
        let rows = sqlx::query(
            "SELECT id, agent_id FROM user_sessions WHERE task_id = $1 AND state = 'offered' ORDER BY agent_id",
        )
        .bind(&$task.id)
        .fetch_all(&mut *$tx)
        .await?;
        let mut ended: Vec<(String, String)> = Vec::new();
        for r in &rows {
            let id = $crate::store::rows::RowExt::text(r, "id")?;
            if except == Some(id.as_str()) {
                continue;
            }
            let agent = $crate::store::rows::RowExt::text(r, "agent_id")?;
            sqlx::query(
                "UPDATE user_sessions SET state = 'concluded', result = $1, end_reason = $2,
                    ended_at = $3, updated_at = $3
                 WHERE id = $4 AND state = 'offered'",
            )
            .bind(result.as_str())
            .bind(reason)
            .bind($now)
            .bind(&id)
            .execute(&mut *$tx)
            .await?;
            $tell.push(
                &agent,
                $crate::domain::event::AgentEventKind::OfferWithdrawn,
                &$task.id,
                serde_json::json!({"session_id": id, "task_id": $task.id, "result": result, "reason": reason}),
            );
            // Subscribers learn of each withdrawn offer, as of one withdrawn
            // for the agent's presence (a cancel is told by `task.cancelled`).
            if result == $crate::domain::SessionResult::Withdrawn {
                $crate::store::offers::record_task_change!($tx, &$task.id, "task.withdrawn", Some(id.as_str()), Some(agent.as_str()),
                    $crate::store::offers::change_payload(&$task, $task.state, serde_json::json!({"session_id": id, "agent": agent, "reason": reason})), $now);
            }
            ended.push((id, agent));
        }
        ended
    }};
}

/// Puts a task back in its queue (from `$from`), keeping its place by arrival.
macro_rules! requeue_task {
    ($tx:expr, $task_id:expr, $from:expr, $now:expr) => {{
        let done = sqlx::query(
            "UPDATE tasks SET state = 'queued', queued_at = $1, updated_at = $1 WHERE id = $2 AND state = $3",
        )
        .bind($now)
        .bind($task_id)
        .bind($crate::domain::TaskState::as_str($from))
        .execute(&mut *$tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err($crate::store::StoreError::Conflict(format!(
                "task '{}' changed meanwhile: try again",
                $task_id
            )));
        }
    }};
}
pub(crate) use requeue_task;

/// Records that agents were offered or finished a task of a modality: the
/// clock of "longest idle".
macro_rules! touch_activity {
    ($tx:expr, $agent:expr, $modality:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO agent_activity (agent_id, modality, last_at) VALUES ($1, $2, $3)
             ON CONFLICT (agent_id, modality) DO UPDATE SET last_at = excluded.last_at",
        )
        .bind($agent)
        .bind($crate::domain::Modality::as_str($modality))
        .bind($now)
        .execute(&mut *$tx)
        .await?
    };
}
pub(crate) use touch_activity;

/// The routing rules of a service, read inside a transaction.
macro_rules! service_routing {
    ($tx:expr, $service_id:expr) => {{
        let text: Option<String> =
            sqlx::query_scalar("SELECT settings FROM services WHERE id = $1")
                .bind($service_id)
                .fetch_optional(&mut *$tx)
                .await?;
        let text = text.ok_or_else(|| {
            $crate::store::StoreError::NotFound(format!("service '{}'", $service_id))
        })?;
        let settings: $crate::domain::service::ServiceSettings = serde_json::from_str(&text)
            .map_err(|e| {
                $crate::store::StoreError::Corrupt(format!(
                    "settings of service '{}': {e}",
                    $service_id
                ))
            })?;
        (
            settings.priority,
            $crate::domain::routing::ServiceRouting::from_settings(&settings),
        )
    }};
}
#[allow(unused_imports)]
pub(crate) use end_offers;
pub(crate) use service_routing;

/// Pauses agents after RONAs (`(agent, until)` pairs), in agent order so that
/// concurrent transactions lock agents in one order.
macro_rules! pause_agents {
    ($tx:expr, $pauses:expr) => {{
        let mut pauses: Vec<(String, $crate::domain::Millis)> = std::mem::take(&mut $pauses);
        pauses.sort();
        for (agent, until) in &pauses {
            // Never shorter: an old missed offer noticed late does not cut
            // the pause of a newer one.
            sqlx::query(
                "UPDATE agents SET rona_until = CASE WHEN rona_until IS NULL OR rona_until < $1 THEN $1 ELSE rona_until END
                 WHERE id = $2",
            )
                .bind(*until)
                .bind(agent)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

/// Inside a transaction holding the task's lock: the offers of `$task` that
/// are due end as RONAs, their agents are to be paused (`$pauses`, applied
/// with [`pause_agents!`]), and when no offer is left
/// the task goes back to its queue (or to the overflow service after
/// `max_ronas`). Evaluates to the number of offers that timed out.
macro_rules! fire_ronas {
    ($tx:expr, $tell:expr, $pauses:expr, $task:expr, $only:expr, $now:expr) => {{
        let only: Option<&str> = $only;
        let task: &$crate::store::Task = $task;
        let rows = sqlx::query(
            "SELECT id, agent_id, expires_at FROM user_sessions
             WHERE task_id = $1 AND state = 'offered' AND expires_at <= $2 ORDER BY agent_id",
        )
        .bind(&task.id)
        .bind($now)
        .fetch_all(&mut *$tx)
        .await?;
        let (_, rules) = $crate::store::offers::service_routing!($tx, &task.service_id);
        let ronas_now = u32::try_from(task.ronas + 1).unwrap_or(u32::MAX);
        let AfterRona { overflow_to, .. } = after_rona(&rules, ronas_now, $now);
        let mut fired = 0usize;
        for r in &rows {
            let id = $crate::store::rows::RowExt::text(r, "id")?;
            if only.is_some_and(|o| o != id) {
                continue;
            }
            let agent = $crate::store::rows::RowExt::text(r, "agent_id")?;
            // The offer ended at its deadline, and the pause counts from
            // there, also when it is noticed later (after a restart).
            let due: $crate::domain::Millis = $crate::store::rows::RowExt::int(r, "expires_at")?;
            let pause_until = after_rona(&rules, ronas_now, due).pause_until;
            let done = sqlx::query(
                "UPDATE user_sessions SET state = 'concluded', result = 'rona', end_reason = 'timeout',
                    ended_at = $1, updated_at = $3
                 WHERE id = $2 AND state = 'offered'",
            )
            .bind(due)
            .bind(&id)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
            if done.rows_affected() != 1 {
                continue;
            }
            fired += 1;
            $pauses.push((agent.clone(), pause_until));
            $tell.push(
                &agent,
                $crate::domain::event::AgentEventKind::OfferWithdrawn,
                &task.id,
                serde_json::json!({"session_id": id, "task_id": task.id, "result": "rona", "reason": "timeout",
                       "paused_until": (pause_until > $now).then(|| millis_to_rfc3339(pause_until))}),
            );
            $crate::store::offers::record_task_change!($tx, &task.id, "task.rona", Some(id.as_str()), Some(agent.as_str()),
                $crate::store::offers::change_payload(task, $crate::domain::TaskState::Offered, serde_json::json!({"session_id": id, "agent": agent})), $now);
        }
        if fired > 0 {
            let still_offered: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM user_sessions WHERE task_id = $1 AND state = 'offered'",
            )
            .bind(&task.id)
            .fetch_one(&mut *$tx)
            .await?;
            if still_offered == 0 && task.state == $crate::domain::TaskState::Offered {
                match &overflow_to {
                    Some(to) => {
                        let (to_priority, _) = $crate::store::offers::service_routing!($tx, to);
                        sqlx::query(
                            "UPDATE tasks SET state = 'queued', service_id = $1, priority = $2 + task_priority,
                                ronas = 0, queued_at = $3, updated_at = $3
                             WHERE id = $4 AND state = 'offered'",
                        )
                        .bind(to)
                        .bind(i64::from(to_priority))
                        .bind($now)
                        .bind(&task.id)
                        .execute(&mut *$tx)
                        .await?;
                        $crate::store::offers::record_task_change!($tx, &task.id, "task.overflowed", None::<&str>, None::<&str>,
                            $crate::store::offers::change_payload(task, $crate::domain::TaskState::Queued, serde_json::json!({"from_service": task.service_id, "to_service": to, "ronas": ronas_now})), $now);
                    }
                    None => {
                        sqlx::query(
                            "UPDATE tasks SET state = 'queued', ronas = ronas + 1, queued_at = $1, updated_at = $1
                             WHERE id = $2 AND state = 'offered'",
                        )
                        .bind($now)
                        .bind(&task.id)
                        .execute(&mut *$tx)
                        .await?;
                    }
                }
            }
        }
        fired
    }};
}

/// Inside a transaction holding the task's lock: withdraws `$agent`'s open
/// offer on `$task` (the agent is not available: went away, or set another
/// presence; `$reason` says which: `presence`, or `membership` when the
/// agent left the task's service). When `$seen_before` is given, only if the
/// agent was last seen before it (re-checked under the lock). Evaluates to 0
/// or 1.
macro_rules! withdraw_agent_offer {
    ($store:expr, $tx:expr, $tell:expr, $task:expr, $agent:expr, $seen_before:expr, $reason:expr, $now:expr) => {{
        let reason: &str = $reason;
        let task: &$crate::store::Task = $task;
        let seen_before: Option<$crate::domain::Millis> = $seen_before;
        let agent_row = sqlx::query("SELECT presence, last_seen_at FROM agents WHERE id = $1")
            .bind($agent)
            .fetch_optional(&mut *$tx)
            .await?;
        let away = match (&agent_row, seen_before) {
            (Some(r), Some(cut)) => {
                $crate::store::rows::RowExt::text(r, "presence")? != "available" || $crate::store::rows::RowExt::opt_int(r, "last_seen_at")?.is_none_or(|s| s < cut)
            }
            (Some(_), None) => true,
            (None, _) => true,
        };
        let session: Option<String> = if away {
            sqlx::query_scalar(
                "SELECT id FROM user_sessions WHERE task_id = $1 AND agent_id = $2 AND state = 'offered'",
            )
            .bind(&task.id)
            .bind($agent)
            .fetch_optional(&mut *$tx)
            .await?
        } else {
            None
        };
        match session {
            None => 0usize,
            Some(id) => {
                sqlx::query(
                    "UPDATE user_sessions SET state = 'concluded', result = 'withdrawn', end_reason = $3,
                        ended_at = $1, updated_at = $1
                     WHERE id = $2 AND state = 'offered'",
                )
                .bind($now)
                .bind(&id)
                .bind(reason)
                .execute(&mut *$tx)
                .await?;
                $tell.push(
                    $agent,
                    $crate::domain::event::AgentEventKind::OfferWithdrawn,
                    &task.id,
                    serde_json::json!({"session_id": id, "task_id": task.id, "result": "withdrawn", "reason": reason}),
                );
                let still_offered: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM user_sessions WHERE task_id = $1 AND state = 'offered'",
                )
                .bind(&task.id)
                .fetch_one(&mut *$tx)
                .await?;
                if still_offered == 0 && task.state == $crate::domain::TaskState::Offered {
                    $crate::store::offers::requeue_task!($tx, &task.id, $crate::domain::TaskState::Offered, $now);
                }
                let agent_id: &str = $agent;
                $crate::store::offers::record_task_change!($tx, &task.id, "task.withdrawn", Some(id.as_str()), Some(agent_id),
                    $crate::store::offers::change_payload(task, $crate::domain::TaskState::Queued, serde_json::json!({"session_id": id, "agent": agent_id, "reason": reason})), $now);
                1usize
            }
        }
    }};
}
pub(crate) use withdraw_agent_offer;

/// Inside a transaction holding the task's lock: the customer left (or the
/// chat ended; `$reason` says which). A queued or offered task is cancelled
/// (its open offers end as `cancelled`); on a connected task (or one in
/// wrap-up) it is recorded once and the holders are told. A concluded task
/// is a conflict; a cancelled one is left as it is. Evaluates to the number
/// of offers it ended (for `switchboard_offer_results_total`).
macro_rules! customer_left {
    ($tx:expr, $tell:expr, $task:expr, $reason:expr, $now:expr) => {{
        let task: &$crate::store::Task = &$task;
        let reason: &str = $reason;
        let now: $crate::domain::Millis = $now;
        match task.state {
            $crate::domain::TaskState::Queued | $crate::domain::TaskState::Offered => {
                let ended = $crate::store::offers::end_offers!(
                    $tx, $tell, task, None, $crate::domain::SessionResult::Cancelled, "cancelled", now
                );
                for (_, agent) in &ended {
                    $crate::store::offers::touch_activity!($tx, agent, task.modality, now);
                }
                let next = task.state.apply($crate::domain::TaskEvent::Cancel)?;
                sqlx::query(
                    "UPDATE tasks SET state = 'cancelled', ended_at = $1, updated_at = $1, customer_left_at = $1
                     WHERE id = $2 AND state = $3",
                )
                .bind(now)
                .bind(&task.id)
                .bind(task.state.as_str())
                .execute(&mut *$tx)
                .await?;
                $crate::store::offers::record_task_change!($tx, &task.id, "task.cancelled", None::<&str>, None::<&str>,
                    $crate::store::offers::change_payload(task, next, serde_json::json!({"reason": reason})), now);
                ended.len()
            }
            $crate::domain::TaskState::Connected | $crate::domain::TaskState::WrapUp => {
                if task.customer_left_at.is_none() {
                    sqlx::query("UPDATE tasks SET customer_left_at = $1, updated_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(&task.id)
                        .execute(&mut *$tx)
                        .await?;
                    let holders = $crate::store::events::holding_agents!($tx, &task.id);
                    for agent in &holders {
                        $tell.push(agent, $crate::domain::event::AgentEventKind::Task, &task.id,
                            serde_json::json!({"task_id": task.id, "state": task.state, "reason": reason}));
                    }
                    $crate::store::offers::record_task_change!($tx, &task.id, "task.customer_left", None::<&str>, None::<&str>,
                        $crate::store::offers::change_payload(task, task.state, serde_json::json!({"reason": reason})), now);
                }
                0usize
            }
            $crate::domain::TaskState::Cancelled => 0usize,
            $crate::domain::TaskState::Concluded => {
                return Err($crate::store::StoreError::Conflict(format!(
                    "task '{}' is concluded: there is nothing left to cancel",
                    task.id
                )));
            }
        }
    }};
}
pub(crate) use customer_left;

/// What answering an offer did.
#[derive(Debug, Clone)]
pub struct Answered {
    pub session: Session,
    /// The offer's age when answered (for the time-to-accept histogram);
    /// `None` when the same answer was given before.
    pub answered_after_ms: Option<Millis>,
    /// Other agents' offers of the task withdrawn by this accept (a broadcast).
    pub withdrawn: usize,
}

impl Store {
    /// The agent's answer to an offer. An accept connects the task (the
    /// other broadcast offers are withdrawn); a decline ends the offer and
    /// sends the task on. Answering twice the same way is answered as the
    /// first time; an offer that is over is refused with the reason.
    pub async fn answer_offer(
        &self,
        session_id: &str,
        agent: &Agent,
        answer: Answer,
    ) -> StoreResult<Answered> {
        super::retry_deadlocks("answer_offer", || {
            self.answer_offer_once(session_id, agent, answer)
        })
        .await
    }

    async fn answer_offer_once(
        &self,
        session_id: &str,
        agent: &Agent,
        answer: Answer,
    ) -> StoreResult<Answered> {
        let now = now_millis();
        let mut tell = Tell::default();
        let mut refused: Option<StoreError> = None;
        let mut answered_after = None;
        let mut withdrawn = 0;
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let sql = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id = $1");
            let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(session_id).fetch_optional(&mut *tx).await? else {
                return Err(StoreError::NotFound(format!("offer '{session_id}'")));
            };
            let first = session_from_row(&row)?;
            if first.agent_id != agent.id {
                // Whether another agent's offer exists is not the caller's business.
                return Err(StoreError::NotFound(format!("offer '{session_id}'")));
            }
            let Some(task) = lock_task!(self, tx, &first.task_id) else {
                return Err(StoreError::NotFound(format!("offer '{session_id}'")));
            };
            // Read again under the task's lock: this is the state that counts.
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(session_id).fetch_one(&mut *tx).await?;
            let session = session_from_row(&row)?;
            let status = OfferStatus {
                state: session.state,
                result: session.result,
                end_reason: session.end_reason.clone(),
                expires_at: session.expires_at,
            };
            match decide_answer(&status, answer, now) {
                AnswerDecision::Accept => {
                    sqlx::query(
                        "UPDATE user_sessions SET state = 'connected', result = 'accepted', answered_at = $1, updated_at = $1
                         WHERE id = $2 AND state = 'offered'",
                    )
                    .bind(now)
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await?;
                    withdrawn = end_offers!(tx, tell, task, Some(session_id), SessionResult::Withdrawn, "taken", now).len();
                    let next = task.state.apply(crate::domain::TaskEvent::Accept)?;
                    sqlx::query("UPDATE tasks SET state = $1, updated_at = $2 WHERE id = $3 AND state = 'offered'")
                        .bind(next.as_str())
                        .bind(now)
                        .bind(&task.id)
                        .execute(&mut *tx)
                        .await?;
                    touch_activity!(tx, &agent.id, task.modality, now);
                    record_task_change!(tx, &task.id, "task.accepted", Some(session_id), Some(agent.id.as_str()),
                        change_payload(&task, next, json!({"session_id": session_id, "agent": agent.id})), now);
                    // Every page of the agent's shows the task as theirs
                    // (another tab, or telephony answering for them).
                    tell.push(&agent.id, AgentEventKind::Task, &task.id,
                        json!({"task_id": task.id, "session_id": session_id, "state": next, "reason": "accepted"}));
                    answered_after = Some(now - session.created_at);
                }
                AnswerDecision::Decline => {
                    sqlx::query(
                        "UPDATE user_sessions SET state = 'concluded', result = 'declined', end_reason = 'declined',
                            answered_at = $1, ended_at = $1, updated_at = $1
                         WHERE id = $2 AND state = 'offered'",
                    )
                    .bind(now)
                    .bind(session_id)
                    .execute(&mut *tx)
                    .await?;
                    let still_offered: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM user_sessions WHERE task_id = $1 AND state = 'offered'",
                    )
                    .bind(&task.id)
                    .fetch_one(&mut *tx)
                    .await?;
                    let state = if still_offered == 0 && task.state == TaskState::Offered {
                        requeue_task!(tx, &task.id, TaskState::Offered, now);
                        TaskState::Queued
                    } else {
                        task.state
                    };
                    touch_activity!(tx, &agent.id, task.modality, now);
                    record_task_change!(tx, &task.id, "task.declined", Some(session_id), Some(agent.id.as_str()),
                        change_payload(&task, state, json!({"session_id": session_id, "agent": agent.id})), now);
                    answered_after = Some(now - session.created_at);
                }
                AnswerDecision::ExpireNow => {
                    let mut pauses = Vec::new();
                    fire_ronas!(tx, tell, pauses, &task, Some(session_id), now);
                    pause_agents!(tx, pauses);
                    refused = Some(StoreError::ExpiredOnAnswer(
                        "this offer expired before it was answered and went to the next agent".into(),
                    ));
                }
                AnswerDecision::AlreadyDone => {}
                AnswerDecision::Refused { code, reason } => {
                    return Err(StoreError::Closed { code, message: reason });
                }
            }
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            told
        });
        self.ring_agents(&told);
        self.wake_router();
        if let Some(e) = refused {
            return Err(e);
        }
        Ok(Answered {
            session: self.session(session_id).await?,
            answered_after_ms: answered_after,
            withdrawn,
        })
    }

    /// Fires every offer whose deadline has passed (RONA), at most `limit`
    /// tasks' worth. Offers of a task another worker is changing right now
    /// are left to it (or to the next sweep).
    pub async fn fire_due_offers(&self, limit: u32) -> StoreResult<usize> {
        retry_deadlocks("fire_due_offers", || self.fire_due_offers_once(limit)).await
    }

    async fn fire_due_offers_once(&self, limit: u32) -> StoreResult<usize> {
        let now = now_millis();
        let mut tell = Tell::default();
        let (fired, told) = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let due: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT task_id FROM user_sessions WHERE state = 'offered' AND expires_at <= $1
                 ORDER BY task_id LIMIT $2",
            )
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            if due.is_empty() {
                tx.rollback().await?;
                return Ok(0);
            }
            // One transaction for the whole sweep: tasks in id order, each
            // skipped when another worker holds it (it deals with it).
            let mut pauses: Vec<(String, Millis)> = Vec::new();
            let mut fired = 0usize;
            for task_id in &due {
                let Some(task) = lock_task_unless_busy!(self, tx, task_id) else {
                    continue;
                };
                let n = fire_ronas!(tx, tell, pauses, &task, None, now);
                if n > 0 {
                    tracing::info!(task = %task_id, offers = n, "offer not answered in time (RONA)");
                }
                fired += n;
            }
            pause_agents!(tx, pauses);
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (fired, told)
        });
        self.ring_agents(&told);
        if fired > 0 {
            self.wake_router();
        }
        Ok(fired)
    }

    /// Ends the offer `session_id` on `task_id` as a RONA now (telephony
    /// reported that the agent did not answer).
    pub async fn expire_offer_now(&self, task_id: &str, session_id: &str) -> StoreResult<usize> {
        super::retry_deadlocks("expire_offer_now", || {
            self.expire_offer_now_once(task_id, session_id)
        })
        .await
    }

    async fn expire_offer_now_once(&self, task_id: &str, session_id: &str) -> StoreResult<usize> {
        let now = now_millis();
        let mut tell = Tell::default();
        let (n, told) = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let Some(task) = lock_task!(self, tx, task_id) else {
                return Err(StoreError::NotFound(format!("task '{task_id}'")));
            };
            sqlx::query("UPDATE user_sessions SET expires_at = $1 WHERE id = $2 AND state = 'offered'")
                .bind(now)
                .bind(session_id)
                .execute(&mut *tx)
                .await?;
            let mut pauses = Vec::new();
            let n = fire_ronas!(tx, tell, pauses, &task, Some(session_id), now);
            pause_agents!(tx, pauses);
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (n, told)
        });
        self.ring_agents(&told);
        self.wake_router();
        Ok(n)
    }

    /// Withdraws the open offers of agents who went away (no client within
    /// `grace_ms`) or are no longer available; their tasks go back to the queue.
    pub async fn withdraw_offers_of_absent(&self, grace_ms: Millis) -> StoreResult<usize> {
        retry_deadlocks("withdraw_offers_of_absent", || {
            self.withdraw_offers_of_absent_once(grace_ms)
        })
        .await
    }

    async fn withdraw_offers_of_absent_once(&self, grace_ms: Millis) -> StoreResult<usize> {
        let now = now_millis();
        let cut = now - grace_ms;
        let mut tell = Tell::default();
        let (withdrawn, told) = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT s.task_id, s.agent_id FROM user_sessions s JOIN agents a ON a.id = s.agent_id
                 WHERE s.state = 'offered'
                   AND (a.presence <> 'available' OR a.last_seen_at IS NULL OR a.last_seen_at < $1)
                 ORDER BY s.task_id, s.agent_id LIMIT 500",
            )
            .bind(cut)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                tx.rollback().await?;
                return Ok(0);
            }
            let mut withdrawn = 0usize;
            let mut locked: Option<(String, Option<Task>)> = None;
            for (task_id, agent_id) in &rows {
                // Each task once, in id order; skipped when another worker holds it.
                if locked.as_ref().is_none_or(|(id, _)| id != task_id) {
                    let task = lock_task_unless_busy!(self, tx, task_id);
                    locked = Some((task_id.clone(), task));
                }
                let Some((_, Some(task))) = &locked else { continue };
                let n = withdraw_agent_offer!(self, tx, tell, task, agent_id, Some(cut), "presence", now);
                if n > 0 {
                    tracing::info!(task = %task_id, agent = %agent_id, "offer withdrawn: the agent is not available");
                }
                withdrawn += n;
            }
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (withdrawn, told)
        });
        self.ring_agents(&told);
        if withdrawn > 0 {
            self.wake_router();
        }
        Ok(withdrawn)
    }

    /// The customer left (a caller hung up, a chat customer went away): a
    /// queued or offered task is cancelled (open offers end as `cancelled`);
    /// on a connected task it is recorded and the holders are told. Idempotent.
    /// Also returns how many offers it ended.
    pub async fn cancel_task(&self, task_id: &str) -> StoreResult<(Task, usize)> {
        super::retry_deadlocks("cancel_task", || self.cancel_task_once(task_id)).await
    }

    async fn cancel_task_once(&self, task_id: &str) -> StoreResult<(Task, usize)> {
        let now = now_millis();
        let mut tell = Tell::default();
        let (told, ended) = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let Some(task) = lock_task!(self, tx, task_id) else {
                return Err(StoreError::NotFound(format!("task '{task_id}'")));
            };
            let ended = customer_left!(tx, tell, task, "customer_left", now);
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (told, ended)
        });
        self.ring_agents(&told);
        self.wake_router();
        Ok((self.task(task_id).await?, ended))
    }
}
