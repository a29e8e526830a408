//! Presence and load: what agents say about themselves, when their client
//! was last seen, their pending offers, and the operators' view of agents and
//! queues.
use super::offers::{Tell, lock_task, withdraw_agent_offer, write_tell};
use super::rows::RowExt;
use super::sessions::session_from_row;
use super::{Capacity, Session, Store, StoreError, StoreResult, Task, WriteTx, with_pool};
use crate::domain::event::AgentEventKind;
use crate::domain::routing::{Distribution, effective_presence, may_receive_offers, slot};
use crate::domain::service::ServiceSettings;
use crate::domain::{Millis, Modality, Presence, TaskState, millis_to_rfc3339, now_millis};
use serde_json::json;
use std::collections::HashMap;

/// An agent's presence as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceView {
    /// What the agent set.
    pub status: Presence,
    /// What routing acts on: `offline` when their client has gone away.
    pub effective: Presence,
    pub since: Option<Millis>,
    pub last_seen_at: Option<Millis>,
    /// After a RONA: no offers until then (or until they set available again).
    pub paused_until: Option<Millis>,
}

/// Offered and connected tasks of one modality, against the capacity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub offered: i64,
    pub connected: i64,
    pub capacity: u32,
}

/// One agent in the admins' overview.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    pub id: String,
    pub name: String,
    pub services: Vec<String>,
    pub presence: PresenceView,
    /// Whether routing may offer them work now.
    pub routable: bool,
    /// Per modality (email, im, call).
    pub load: [Load; 3],
    /// Since when idle per modality (their last task of it, or becoming available).
    pub idle_since: [Option<Millis>; 3],
}

/// One queue (a service and a modality) in the operators' overview.
#[derive(Debug, Clone)]
pub struct QueueStatus {
    pub service_id: String,
    pub modality: Modality,
    pub distribution: Distribution,
    /// Tasks waiting.
    pub queued: i64,
    /// Tasks offered to agents, not yet answered.
    pub offered: i64,
    /// Tasks connected to an agent.
    pub connected: i64,
    /// When the longest-waiting task entered the queue.
    pub oldest_queued_at: Option<Millis>,
    /// Members who may be offered a task of this modality now.
    pub agents_available: i64,
    /// Members online but without room (or set busy, or paused after a RONA).
    pub agents_busy: i64,
}

fn presence_from_row(
    row: &impl RowExt,
    now: Millis,
    grace_ms: Millis,
) -> StoreResult<PresenceView> {
    let status = Presence::parse(&row.text("presence")?)?;
    let last_seen_at = row.opt_int("last_seen_at")?;
    Ok(PresenceView {
        status,
        effective: effective_presence(status, last_seen_at, now, grace_ms),
        since: row.opt_int("presence_changed_at")?,
        last_seen_at,
        paused_until: row.opt_int("rona_until")?.filter(|u| *u > now),
    })
}

impl Store {
    /// The agent's presence.
    pub async fn presence(&self, agent_id: &str, grace_ms: Millis) -> StoreResult<PresenceView> {
        let now = now_millis();
        with_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT presence, presence_changed_at, last_seen_at, rona_until FROM agents WHERE id = $1",
            )
            .bind(agent_id)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("agent '{agent_id}'")))?;
            presence_from_row(&row, now, grace_ms)
        })
    }

    /// Sets the agent's presence (which also counts as their client being
    /// seen). Anything but `available` withdraws their pending offers at once
    /// (how many is returned); `available` ends a pause after a RONA.
    pub async fn set_presence(
        &self,
        agent_id: &str,
        status: Presence,
        grace_ms: Millis,
    ) -> StoreResult<(PresenceView, usize)> {
        super::retry_deadlocks("set_presence", || {
            self.set_presence_once(agent_id, status, grace_ms)
        })
        .await
    }

    async fn set_presence_once(
        &self,
        agent_id: &str,
        status: Presence,
        grace_ms: Millis,
    ) -> StoreResult<(PresenceView, usize)> {
        let now = now_millis();
        let mut tell = Tell::default();
        let (told, withdrawn) = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // Tasks first, then the agent: the order every writer locks in.
            let offered: Vec<String> = if status == Presence::Available {
                Vec::new()
            } else {
                sqlx::query_scalar(
                    "SELECT task_id FROM user_sessions WHERE agent_id = $1 AND state = 'offered' ORDER BY task_id",
                )
                .bind(agent_id)
                .fetch_all(&mut *tx)
                .await?
            };
            let mut tasks: Vec<Task> = Vec::with_capacity(offered.len());
            for id in &offered {
                if let Some(t) = lock_task!(self, tx, id) {
                    tasks.push(t);
                }
            }
            let before = sqlx::query("SELECT presence FROM agents WHERE id = $1")
                .bind(agent_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("agent '{agent_id}'")))?;
            let changed = before.text("presence")? != status.as_str();
            sqlx::query(
                "UPDATE agents SET presence = $1, last_seen_at = $2,
                    presence_changed_at = CASE WHEN $3 OR presence_changed_at IS NULL THEN $2 ELSE presence_changed_at END,
                    rona_until = CASE WHEN $4 THEN NULL ELSE rona_until END
                 WHERE id = $5",
            )
            .bind(status.as_str())
            .bind(now)
            .bind(changed)
            .bind(status == Presence::Available)
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
            let mut withdrawn = 0;
            for task in &tasks {
                withdrawn += withdraw_agent_offer!(self, tx, tell, task, agent_id, None, "presence", now);
            }
            tell.push(agent_id, AgentEventKind::Presence, "",
                json!({"status": status, "since_change": changed}));
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (told, withdrawn)
        });
        self.ring_agents(&told);
        self.wake_router();
        Ok((self.presence(agent_id, grace_ms).await?, withdrawn))
    }

    /// Withdraws the agent's open offers of tasks in services they are no
    /// longer a member of (an admin changed their services): the tasks go
    /// back to their queues at once. Evaluates to how many.
    pub async fn withdraw_offers_outside_services(&self, agent_id: &str) -> StoreResult<usize> {
        let now = now_millis();
        let mut tell = Tell::default();
        let (told, withdrawn) = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let offered: Vec<String> = sqlx::query_scalar(
                "SELECT s.task_id FROM user_sessions s JOIN tasks t ON t.id = s.task_id
                 WHERE s.agent_id = $1 AND s.state = 'offered'
                   AND t.service_id NOT IN (SELECT service_id FROM agent_services WHERE agent_id = $1)
                 ORDER BY s.task_id",
            )
            .bind(agent_id)
            .fetch_all(&mut *tx)
            .await?;
            let mut withdrawn = 0;
            for id in &offered {
                if let Some(task) = lock_task!(self, tx, id) {
                    withdrawn += withdraw_agent_offer!(self, tx, tell, &task, agent_id, None, "membership", now);
                }
            }
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            (told, withdrawn)
        });
        if withdrawn > 0 {
            self.ring_agents(&told);
            self.wake_router();
        }
        Ok(withdrawn)
    }

    /// The agent's client is there (an open event stream beats with this).
    /// When the agent had been away longer than `grace_ms`, routing is woken:
    /// they may take work again.
    pub async fn touch_agent(&self, agent_id: &str, grace_ms: Millis) -> StoreResult<()> {
        let now = now_millis();
        let returned = with_pool!(self, pool => {
            let back = sqlx::query(
                "UPDATE agents SET last_seen_at = $1 WHERE id = $2 AND (last_seen_at IS NULL OR last_seen_at < $3)",
            )
            .bind(now)
            .bind(agent_id)
            .bind(now - grace_ms)
            .execute(pool)
            .await?
            .rows_affected() == 1;
            if !back {
                sqlx::query("UPDATE agents SET last_seen_at = $1 WHERE id = $2")
                    .bind(now)
                    .bind(agent_id)
                    .execute(pool)
                    .await?;
            }
            back
        });
        if returned {
            self.wake_router();
        }
        Ok(())
    }

    /// The agent's pending offers, with their tasks, the soonest deadline first.
    pub async fn my_offers(&self, agent_id: &str) -> StoreResult<Vec<(Session, Task)>> {
        // `state <> 'concluded'` lets SQLite use the index of live sessions
        // (`user_sessions_agent_live`) instead of walking the whole history.
        let sql = format!(
            "SELECT {} FROM user_sessions WHERE agent_id = $1 AND state <> 'concluded' AND state = 'offered' \
             ORDER BY expires_at, id",
            super::sessions::SESSION_COLUMNS
        );
        let sessions: Vec<Session> = with_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(agent_id).fetch_all(pool).await?;
            rows.iter().map(session_from_row).collect::<StoreResult<Vec<_>>>()?
        });
        let mut out = Vec::with_capacity(sessions.len());
        for s in sessions {
            let task = self.task(&s.task_id).await?;
            out.push((s, task));
        }
        Ok(out)
    }

    /// Every agent with presence, load and idle time (admins).
    pub async fn agents_overview(&self, grace_ms: Millis) -> StoreResult<Vec<AgentStatus>> {
        let now = now_millis();
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, name, presence, presence_changed_at, last_seen_at, rona_until, capacity FROM agents ORDER BY id",
            )
            .fetch_all(pool)
            .await?;
            let mut services: HashMap<String, Vec<String>> = HashMap::new();
            for (agent, service) in sqlx::query_as::<_, (String, String)>(
                "SELECT agent_id, service_id FROM agent_services ORDER BY agent_id, service_id",
            )
            .fetch_all(pool)
            .await?
            {
                services.entry(agent).or_default().push(service);
            }
            let mut loads: HashMap<(String, usize), (i64, i64)> = HashMap::new();
            for r in sqlx::query(
                "SELECT agent_id, modality, state, count(*) AS n FROM user_sessions
                 WHERE state IN ('offered', 'connected') GROUP BY agent_id, modality, state",
            )
            .fetch_all(pool)
            .await?
            {
                let m = slot(Modality::parse(&r.text("modality")?)?);
                let e = loads.entry((r.text("agent_id")?, m)).or_default();
                if r.text("state")? == "offered" {
                    e.0 += r.int("n")?;
                } else {
                    e.1 += r.int("n")?;
                }
            }
            let mut activity: HashMap<(String, usize), Millis> = HashMap::new();
            for r in sqlx::query("SELECT agent_id, modality, last_at FROM agent_activity").fetch_all(pool).await? {
                activity.insert((r.text("agent_id")?, slot(Modality::parse(&r.text("modality")?)?)), r.int("last_at")?);
            }
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let id = r.text("id")?;
                let presence = presence_from_row(r, now, grace_ms)?;
                let capacity: Capacity = r.json("capacity")?;
                let caps = [capacity.email, capacity.im, capacity.call];
                let mut load = [Load::default(); 3];
                let mut idle_since = [None; 3];
                for m in Modality::ALL {
                    let s = slot(m);
                    let (offered, connected) = loads.get(&(id.clone(), s)).copied().unwrap_or_default();
                    load[s] = Load { offered, connected, capacity: caps[s] };
                    let last = activity.get(&(id.clone(), s)).copied();
                    let available = presence.since.filter(|_| presence.status == Presence::Available);
                    idle_since[s] = match (last, available) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                }
                let routable = may_receive_offers(presence.status, presence.last_seen_at, presence.paused_until, now, grace_ms);
                out.push(AgentStatus {
                    name: r.text("name")?,
                    services: services.remove(&id).unwrap_or_default(),
                    presence,
                    routable,
                    load,
                    idle_since,
                    id,
                });
            }
            Ok(out)
        })
    }

    /// Every queue (service and modality) with depth, age and agents (operators).
    pub async fn queue_overview(&self, grace_ms: Millis) -> StoreResult<Vec<QueueStatus>> {
        let agents = self.agents_overview(grace_ms).await?;
        let (services, counts) = with_pool!(self, pool => {
            let services: Vec<(String, String)> = sqlx::query_as("SELECT id, settings FROM services ORDER BY id")
                .fetch_all(pool)
                .await?;
            let counts = sqlx::query(
                // The customer's wait counts from arrival: a task that went
                // back to its queue (missed, declined) keeps its age.
                "SELECT service_id, modality, state, count(*) AS n, min(arrived_at) AS oldest
                 FROM tasks WHERE state IN ('queued', 'offered', 'connected')
                 GROUP BY service_id, modality, state",
            )
            .fetch_all(pool)
            .await?;
            let mut parsed: Vec<(String, String, String, i64, Option<i64>)> = Vec::with_capacity(counts.len());
            for r in &counts {
                parsed.push((r.text("service_id")?, r.text("modality")?, r.text("state")?, r.int("n")?, r.opt_int("oldest")?));
            }
            (services, parsed)
        });
        let mut out = Vec::new();
        for (id, settings) in services {
            let settings: ServiceSettings = serde_json::from_str(&settings)
                .map_err(|e| StoreError::Corrupt(format!("settings of service '{id}': {e}")))?;
            for m in Modality::ALL {
                let mut q = QueueStatus {
                    service_id: id.clone(),
                    modality: m,
                    distribution: settings.distribution,
                    queued: 0,
                    offered: 0,
                    connected: 0,
                    oldest_queued_at: None,
                    agents_available: 0,
                    agents_busy: 0,
                };
                for (service, modality, state, n, oldest) in &counts {
                    if service != &id || modality != m.as_str() {
                        continue;
                    }
                    match TaskState::parse(state)? {
                        TaskState::Queued => {
                            q.queued = *n;
                            q.oldest_queued_at = *oldest;
                        }
                        TaskState::Offered => q.offered = *n,
                        _ => q.connected = *n,
                    }
                }
                let s = slot(m);
                for a in agents.iter().filter(|a| a.services.contains(&id)) {
                    let l = a.load[s];
                    let room = i64::from(l.capacity) - l.offered - l.connected > 0;
                    if a.routable && room {
                        q.agents_available += 1;
                    } else if matches!(a.presence.effective, Presence::Available | Presence::Busy) {
                        q.agents_busy += 1;
                    }
                }
                out.push(q);
            }
        }
        Ok(out)
    }
}

/// For the API: a time or null.
pub fn time_or_null(ms: Option<Millis>) -> serde_json::Value {
    ms.map_or(serde_json::Value::Null, |m| json!(millis_to_rfc3339(m)))
}
