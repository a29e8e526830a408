//! Agent events: stored in the same transaction as the change they announce,
//! numbered per agent, and read back by the SSE stream. The database is the
//! source of truth; a doorbell (in-process broadcast, and PostgreSQL
//! `NOTIFY` across workers) only says "look now" so streams do not poll.
use super::{Store, StoreResult, with_pool};
use crate::domain::Millis;
use crate::domain::event::AgentEventKind;
use std::sync::{Arc, OnceLock};
use tokio::sync::{broadcast, watch};

/// The PostgreSQL channel that carries the id of an agent with new events.
pub const PG_CHANNEL: &str = "switchboard_agent_events";

/// Rung for every agent when notifications may have been missed.
pub const EVERYONE: &str = "*";

/// One stored event.
#[derive(Debug, Clone)]
pub struct AgentEvent {
    pub seq: i64,
    pub kind: String,
    pub task_id: Option<String>,
    /// A JSON object (what the stream sends as `data:`).
    pub payload: String,
    pub created_at: Millis,
}

/// Inside a write transaction (`$tx`, on `$store`'s backend): gives `$agent`
/// its next event number and stores the event. Bumping the counter row locks
/// it until commit, so one agent's events become visible in number order.
/// After the commit, the writer rings the agent ([`Store::ring_agents`]).
macro_rules! record_agent_event {
    ($store:expr, $tx:expr, $agent:expr, $kind:expr, $task:expr, $payload:expr, $now:expr) => {{
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO agent_event_counters (agent_id, last_seq) VALUES ($1, 1)
             ON CONFLICT (agent_id) DO UPDATE SET last_seq = agent_event_counters.last_seq + 1
             RETURNING last_seq",
        )
        .bind($agent)
        .fetch_one(&mut *$tx)
        .await?;
        sqlx::query(
            "INSERT INTO agent_events (agent_id, seq, kind, task_id, payload, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind($agent)
        .bind(seq)
        .bind($crate::domain::event::AgentEventKind::as_str($kind))
        .bind($task)
        .bind($payload)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
    }};
}
pub(crate) use record_agent_event;

/// Inside a transaction: the agents holding `$task` (offered, connected or in
/// wrap-up; not those who transferred it away), as `Vec<String>` sorted by
/// bytes. Every writer takes counter locks in this one order (a database
/// collation could differ between backends), so they cannot deadlock.
macro_rules! holding_agents {
    ($tx:expr, $task:expr) => {{
        let mut agents: Vec<String> = sqlx::query_scalar(
            "SELECT agent_id FROM user_sessions
             WHERE task_id = $1 AND state IN ('offered', 'connected', 'wrap_up')
               AND (result IS NULL OR result <> 'transferred')",
        )
        .bind($task)
        .fetch_all(&mut *$tx)
        .await?;
        agents.sort_unstable();
        agents.dedup();
        agents
    }};
}
pub(crate) use holding_agents;

/// The process-wide doorbell: agent ids (or [`EVERYONE`]) whose streams
/// should look for new events.
pub fn doorbell() -> &'static broadcast::Sender<Arc<str>> {
    static BELL: OnceLock<broadcast::Sender<Arc<str>>> = OnceLock::new();
    BELL.get_or_init(|| broadcast::channel(1024).0)
}

/// Rings the doorbell for `agents`, after their events were committed.
pub fn ring<'a>(agents: impl IntoIterator<Item = &'a String>) {
    for agent in agents {
        // No receiver (no open stream) is not an error.
        let _ = doorbell().send(Arc::from(agent.as_str()));
    }
}

impl Store {
    /// Events of `agent_id` numbered above `after`, oldest first.
    pub async fn agent_events_after(
        &self,
        agent_id: &str,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<AgentEvent>> {
        use sqlx::Row;
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT seq, kind, task_id, payload, created_at FROM agent_events
                 WHERE agent_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(agent_id)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            let mut events = Vec::with_capacity(rows.len());
            for r in rows {
                events.push(AgentEvent {
                    seq: r.try_get("seq")?,
                    kind: r.try_get("kind")?,
                    task_id: r.try_get("task_id")?,
                    payload: r.try_get("payload")?,
                    created_at: r.try_get("created_at")?,
                });
            }
            Ok(events)
        })
    }

    /// The number of `agent_id`'s newest event (0 when none yet).
    pub async fn latest_agent_event(&self, agent_id: &str) -> StoreResult<i64> {
        with_pool!(self, pool => {
            let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM agent_event_counters WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_optional(pool)
                .await?;
            Ok(seq.unwrap_or(0))
        })
    }

    /// Deletes events created before `before`; returns how many. Counters
    /// stay, so numbers are never reused.
    pub async fn prune_agent_events(&self, before: Millis) -> StoreResult<u64> {
        with_pool!(self, pool => {
            Ok(sqlx::query("DELETE FROM agent_events WHERE created_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected())
        })
    }
}

/// Forwards PostgreSQL notifications (events committed by any worker) to this
/// process's doorbell until `shutdown`, over one connection of its own (not
/// taken from the pool). When the connection drops, every
/// stream is told to look (notifications may have been missed) and the
/// listener reconnects. Does nothing on SQLite: one process writes and reads.
pub async fn forward_notifications(
    store: Store,
    database_url: String,
    mut shutdown: watch::Receiver<bool>,
) {
    if !matches!(store, Store::Postgres(..)) {
        return;
    }
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // A connection of its own, outside the pool: it is held for good.
        let mut listener = match sqlx::postgres::PgListener::connect(&database_url).await {
            Ok(l) => l,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot listen for agent events; retrying");
                if wait_or_stop(&mut shutdown, failures).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all([PG_CHANNEL, super::routing::PG_CHANNEL])
            .await
        {
            failures += 1;
            tracing::warn!(error = %e, "cannot listen for agent events; retrying");
            if wait_or_stop(&mut shutdown, failures).await {
                return;
            }
            continue;
        }
        failures = 0;
        // Anything committed while we were not listening: look now.
        let _ = doorbell().send(Arc::from(EVERYONE));
        super::routing::wake_router();
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                received = listener.try_recv() => match received {
                    Ok(Some(n)) if n.channel() == super::routing::PG_CHANNEL => {
                        super::routing::wake_router();
                    }
                    Ok(Some(n)) => {
                        let _ = doorbell().send(Arc::from(n.payload()));
                    }
                    Ok(None) => {
                        tracing::info!("agent event listener reconnected");
                        let _ = doorbell().send(Arc::from(EVERYONE));
                        super::routing::wake_router();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "agent event listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
        failures += 1;
        if wait_or_stop(&mut shutdown, failures).await {
            return;
        }
    }
}

/// Waits before a reconnect (1 s, 2 s, … up to 30 s); true when shutting down.
async fn wait_or_stop(shutdown: &mut watch::Receiver<bool>, failures: u32) -> bool {
    let delay = std::time::Duration::from_secs(u64::from(failures.min(30)));
    tokio::select! {
        () = stopped(shutdown) => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// What an event says, as the JSON object sent to the client.
pub(crate) fn payload(kind: AgentEventKind, fields: serde_json::Value) -> String {
    let mut object = match fields {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    object.insert("type".into(), kind.as_str().into());
    serde_json::Value::Object(object).to_string()
}

/// Deletes events past their retention now and then every hour, until
/// `shutdown`.
pub async fn prune_periodically(store: Store, mut shutdown: watch::Receiver<bool>) {
    use crate::domain::event::EVENT_RETENTION_MILLIS;
    loop {
        let before = crate::domain::now_millis() - EVENT_RETENTION_MILLIS;
        match store.prune_agent_events(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old agent events deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot delete old agent events"),
        }
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}

/// Returns once `shutdown` says stop (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
