//! The routing pass: reads the queues and the agents who may take work,
//! asks the domain's rules who gets what, and makes the offers, in one
//! transaction. Capacity is checked and taken under the agents' row locks in
//! that transaction, so no number of workers can exceed it; tasks are taken
//! with `SKIP LOCKED`, so no two workers offer the same task.
use super::offers::{Tell, make_offer, touch_activity, write_tell};
use super::rows::{RowExt, placeholders};
use super::{Capacity, Store, StoreError, StoreResult, Task, WriteTx, with_pool};
use crate::domain::routing::{
    Candidate, QueuedTask, Refusal, ServiceRouting, may_receive_offers, plan_offers, slot,
};
use crate::domain::service::ServiceSettings;
use crate::domain::{Millis, Modality, Presence, now_millis};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use tokio::sync::watch;

/// The PostgreSQL channel on which every worker's router is woken
/// ([`Store::wake_router`], after the commit of a change).
pub const PG_CHANNEL: &str = "switchboard_routing";

/// The process's router doorbell: rung after commits that may let work be
/// assigned (a task queued, capacity freed, an agent available, an offer
/// made or ended). Every router of the process sees every ring.
pub fn bell() -> &'static watch::Sender<u64> {
    static BELL: OnceLock<watch::Sender<u64>> = OnceLock::new();
    BELL.get_or_init(|| watch::channel(0).0)
}

/// Wakes this process's routers ([`Store::wake_router`] wakes other workers' too).
pub fn wake_router() {
    bell().send_modify(|n| *n = n.wrapping_add(1));
}

/// One offer made by a pass (for metrics).
#[derive(Debug, Clone)]
pub struct MadeOffer {
    pub task_id: String,
    pub service_id: String,
    pub modality: Modality,
    pub agent_id: String,
    pub session_id: String,
    /// How long the task had waited in its queue.
    pub waited_ms: Millis,
}

/// What a routing pass did.
#[derive(Debug, Clone, Default)]
pub struct PassResult {
    pub offers: Vec<MadeOffer>,
    /// The pass took as many tasks as it may: run another at once.
    pub more: bool,
}

/// A queued task read by the pass.
struct Queued {
    task: QueuedTask,
    full: Task,
    queued_at: Millis,
}

fn parse_modality(s: &str) -> StoreResult<Modality> {
    Ok(Modality::parse(s)?)
}

/// Inside a transaction: the load (offered and connected sessions) of each
/// of `$agents` per modality, as `((agent, slot), n)` pairs.
macro_rules! read_loads {
    ($tx:expr, $agents:expr) => {{
        let agents: &[String] = $agents;
        let mut out: Vec<((String, usize), u32)> = Vec::new();
        if !agents.is_empty() {
            let sql = format!(
                "SELECT agent_id, modality, count(*) AS n FROM user_sessions
                 WHERE state IN ('offered', 'connected') AND agent_id IN ({}) GROUP BY agent_id, modality",
                placeholders(1, agents.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in agents {
                q = q.bind(id);
            }
            for r in q.fetch_all(&mut *$tx).await? {
                let m = slot(parse_modality(&r.text("modality")?)?);
                out.push(((r.text("agent_id")?, m), u32::try_from(r.int("n")?).unwrap_or(u32::MAX)));
            }
        }
        out
    }};
}

impl Store {
    /// The routing rules of every service that makes offers.
    pub async fn routed_services(&self) -> StoreResult<HashMap<String, ServiceRouting>> {
        let rows: Vec<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT id, settings FROM services").fetch_all(pool).await?
        });
        let mut out = HashMap::new();
        for (id, text) in rows {
            let settings: ServiceSettings = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("settings of service '{id}': {e}")))?;
            let rules = ServiceRouting::from_settings(&settings);
            if rules.offers_per_task() > 0 {
                out.insert(id, rules);
            }
        }
        Ok(out)
    }

    /// One routing pass: offers up to `batch` queued tasks to agents who may
    /// take them. Safe to run in every worker at once.
    /// `services` are the rules of the services that make offers
    /// ([`Store::routed_services`], which the engine refreshes now and then).
    pub async fn route_once(
        &self,
        grace_ms: Millis,
        batch: usize,
        services: &HashMap<String, ServiceRouting>,
    ) -> StoreResult<PassResult> {
        if services.is_empty() {
            return Ok(PassResult::default());
        }
        let now = now_millis();
        let postgres = matches!(self, Store::Postgres(..));
        let mut tell = Tell::default();
        let mut made = Vec::new();
        let mut more = false;
        let told = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // Who may take work now, and where (read without locks: this only
            // chooses which queues to look at).
            let rows = sqlx::query(
                "SELECT a.id, s.service_id FROM agents a JOIN agent_services s ON s.agent_id = a.id
                 WHERE a.presence = 'available' AND a.last_seen_at >= $1
                   AND (a.rona_until IS NULL OR a.rona_until <= $2)",
            )
            .bind(now - grace_ms)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            let mut members: HashMap<String, HashSet<String>> = HashMap::new();
            for r in &rows {
                let service = r.text("service_id")?;
                if services.contains_key(&service) {
                    members.entry(r.text("id")?).or_default().insert(service);
                }
            }
            if members.is_empty() {
                tx.rollback().await?;
                return Ok(PassResult::default());
            }
            // The head of each queue with someone to serve it; behind a head
            // that is full, the head of each modality it holds little of: a
            // backlog of mail that nobody has room for must not hide the chat
            // or the call behind it from an agent who has.
            let served: HashSet<&String> = members.values().flatten().collect();
            let reserve = (batch / 4).max(1);
            let mut queued: Vec<Queued> = Vec::new();
            let mut seen: HashSet<String> = HashSet::new();
            for service in served {
                let head_sql = format!(
                    "SELECT {} FROM tasks WHERE state = 'queued' AND routed AND service_id = $1
                     ORDER BY priority DESC, arrived_at, id LIMIT {batch}",
                    super::tasks::TASK_COLUMNS,
                );
                let mut rows = sqlx::query(sqlx::AssertSqlSafe(head_sql))
                    .bind(service)
                    .fetch_all(&mut *tx)
                    .await?;
                if rows.len() >= batch {
                    // A full head: the heads of the modalities it holds
                    // fewer than `reserve` of, in one statement.
                    let mut in_head = [0usize; 3];
                    for r in &rows {
                        in_head[slot(parse_modality(&r.text("modality")?)?)] += 1;
                    }
                    let short: Vec<Modality> = Modality::ALL
                        .into_iter()
                        .filter(|m| in_head[slot(*m)] < reserve)
                        .collect();
                    if !short.is_empty() {
                        let heads_sql = short
                            .iter()
                            .enumerate()
                            .map(|(k, _)| {
                                format!(
                                    "SELECT * FROM (SELECT {} FROM tasks WHERE state = 'queued' AND routed
                                       AND service_id = $1 AND modality = ${}
                                     ORDER BY priority DESC, arrived_at, id LIMIT {reserve}) h{k}",
                                    super::tasks::TASK_COLUMNS,
                                    k + 2
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" UNION ALL ");
                        let mut q = sqlx::query(sqlx::AssertSqlSafe(heads_sql)).bind(service);
                        for m in &short {
                            q = q.bind(m.as_str());
                        }
                        rows.extend(q.fetch_all(&mut *tx).await?);
                    }
                }
                for r in &rows {
                    let full = super::tasks::task_from_row(r)?;
                    if !seen.insert(full.id.clone()) {
                        continue;
                    }
                    queued.push(Queued {
                        task: QueuedTask {
                            id: full.id.clone(),
                            service_id: full.service_id.clone(),
                            modality: full.modality,
                            priority: i64::from(full.priority),
                            arrived_at: full.arrived_at,
                        },
                        queued_at: full.queued_at.unwrap_or(full.arrived_at),
                        full,
                    });
                }
            }
            if queued.is_empty() {
                tx.rollback().await?;
                return Ok(PassResult::default());
            }
            queued.sort_by(|a, b| crate::domain::routing::queue_order(&a.task, &b.task));
            // The first `batch` in queue order, and the head (a quarter of
            // `batch`) of each modality that would otherwise have less: at
            // most 1.5 × `batch` tasks in one pass, none hidden for good.
            let mut per_modality = [0usize; 3];
            let before = queued.len();
            let mut position = 0usize;
            queued.retain(|q| {
                position += 1;
                let n = &mut per_modality[slot(q.task.modality)];
                *n += 1;
                position <= batch || *n <= reserve
            });
            more |= queued.len() < before;
            // Take the tasks: on PostgreSQL those another worker is routing are skipped.
            let ids: Vec<&str> = queued.iter().map(|q| q.task.id.as_str()).collect();
            let lock_sql = format!(
                "SELECT id FROM tasks WHERE id IN ({}) AND state = 'queued' ORDER BY id{}",
                placeholders(1, ids.len()),
                if postgres { " FOR UPDATE SKIP LOCKED" } else { "" }
            );
            let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(lock_sql));
            for id in &ids {
                q = q.bind(*id);
            }
            let locked: HashSet<String> = q.fetch_all(&mut *tx).await?.into_iter().collect();
            queued.retain(|q| locked.contains(&q.task.id));
            if queued.is_empty() {
                tx.rollback().await?;
                return Ok(PassResult { offers: Vec::new(), more });
            }
            // The agents who could serve them, read without locks: the plan is
            // made on this view, then checked under the chosen agents' locks.
            let wanted: HashSet<&String> = queued.iter().map(|q| &q.task.service_id).collect();
            let mut agent_ids: Vec<&String> = members
                .iter()
                .filter(|(_, s)| s.iter().any(|x| wanted.contains(x)))
                .map(|(a, _)| a)
                .collect();
            agent_ids.sort();
            let agent_sql = format!(
                "SELECT id, presence, last_seen_at, rona_until, presence_changed_at, capacity FROM agents WHERE id IN ({})",
                placeholders(1, agent_ids.len()),
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(agent_sql));
            for id in &agent_ids {
                q = q.bind(id.as_str());
            }
            let agent_rows = q.fetch_all(&mut *tx).await?;
            let mut candidates: Vec<Candidate> = Vec::with_capacity(agent_rows.len());
            let mut since: HashMap<String, Millis> = HashMap::new();
            let mut capacities: HashMap<String, [u32; 3]> = HashMap::new();
            for r in &agent_rows {
                let id = r.text("id")?;
                let presence = Presence::parse(&r.text("presence")?)?;
                if !may_receive_offers(presence, r.opt_int("last_seen_at")?, r.opt_int("rona_until")?, now, grace_ms) {
                    continue;
                }
                let capacity: Capacity = r.json("capacity")?;
                let caps = [capacity.email, capacity.im, capacity.call];
                since.insert(id.clone(), r.opt_int("presence_changed_at")?.unwrap_or(0));
                capacities.insert(id.clone(), caps);
                candidates.push(Candidate {
                    services: members.get(&id).cloned().unwrap_or_default(),
                    room: caps,
                    idle_since: [0; 3],
                    id,
                });
            }
            if candidates.is_empty() {
                tx.rollback().await?;
                return Ok(PassResult::default());
            }
            let cand_ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
            let index: HashMap<String, usize> = cand_ids.iter().cloned().enumerate().map(|(i, id)| (id, i)).collect();
            for ((agent, m), n) in read_loads!(tx, &cand_ids) {
                if let Some(&i) = index.get(&agent) {
                    candidates[i].room[m] = candidates[i].room[m].saturating_sub(n);
                }
            }
            // How long each has been idle per modality.
            let activity_sql = format!(
                "SELECT agent_id, modality, last_at FROM agent_activity WHERE agent_id IN ({})",
                placeholders(1, cand_ids.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(activity_sql));
            for id in &cand_ids {
                q = q.bind(id);
            }
            let mut last: HashMap<(String, usize), Millis> = HashMap::new();
            for r in q.fetch_all(&mut *tx).await? {
                last.insert((r.text("agent_id")?, slot(parse_modality(&r.text("modality")?)?)), r.int("last_at")?);
            }
            for c in &mut candidates {
                let available_since = since.get(&c.id).copied().unwrap_or(0);
                for m in Modality::ALL {
                    let s = slot(m);
                    c.idle_since[s] = last.get(&(c.id.clone(), s)).copied().unwrap_or(0).max(available_since);
                }
            }
            // Who refused which task, and who already has an open session on it.
            let task_ids: Vec<&str> = queued.iter().map(|q| q.task.id.as_str()).collect();
            let history_sql = format!(
                "SELECT task_id, agent_id, state, result, COALESCE(ended_at, created_at) AS at FROM user_sessions
                 WHERE task_id IN ({}) AND (result IN ('declined', 'rona') OR state IN ('offered', 'connected'))",
                placeholders(1, task_ids.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(history_sql));
            for id in &task_ids {
                q = q.bind(*id);
            }
            let mut refusals: HashMap<String, Vec<Refusal>> = HashMap::new();
            let mut open: HashMap<String, HashSet<String>> = HashMap::new();
            for r in q.fetch_all(&mut *tx).await? {
                let task = r.text("task_id")?;
                let agent = r.text("agent_id")?;
                match r.text("state")?.as_str() {
                    "offered" | "connected" => {
                        open.entry(task).or_default().insert(agent);
                    }
                    _ => refusals.entry(task).or_default().push(Refusal { agent_id: agent, at: r.int("at")? }),
                }
            }
            let tasks: Vec<QueuedTask> = queued.iter().map(|q| q.task.clone()).collect();
            let plan = plan_offers(&tasks, &mut candidates, services, &refusals, &open, now);
            // Lock the chosen agents, in one order, and read them again: from
            // here their presence and load cannot change under us, whatever
            // other workers do. One another worker is busy with is left for
            // the next pass. NO KEY UPDATE: exclusive among routers and
            // whoever changes an agent's load, but not against rows that
            // merely refer to the agent (events, sessions), which would deadlock.
            let mut chosen: Vec<&String> = plan.iter().flat_map(|p| p.agents.iter()).collect();
            chosen.sort();
            chosen.dedup();
            let mut room: HashMap<String, [u32; 3]> = HashMap::new();
            if !chosen.is_empty() {
                let lock_sql = format!(
                    "SELECT id, presence, last_seen_at, rona_until FROM agents WHERE id IN ({}) ORDER BY id{}",
                    placeholders(1, chosen.len()),
                    if postgres { " FOR NO KEY UPDATE SKIP LOCKED" } else { "" }
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(lock_sql));
                for id in &chosen {
                    q = q.bind(id.as_str());
                }
                let mut held: Vec<String> = Vec::new();
                for r in q.fetch_all(&mut *tx).await? {
                    let presence = Presence::parse(&r.text("presence")?)?;
                    if may_receive_offers(presence, r.opt_int("last_seen_at")?, r.opt_int("rona_until")?, now, grace_ms) {
                        held.push(r.text("id")?);
                    }
                }
                for id in &held {
                    room.insert(id.clone(), capacities.get(id).copied().unwrap_or_default());
                }
                for ((agent, m), n) in read_loads!(tx, &held) {
                    if let Some(r) = room.get_mut(&agent) {
                        r[m] = r[m].saturating_sub(n);
                    }
                }
            }
            let mut touched: Vec<(String, Modality)> = Vec::new();
            let by_id: HashMap<&str, &Queued> = queued.iter().map(|q| (q.task.id.as_str(), q)).collect();
            for offer in &plan {
                let Some(q) = by_id.get(offer.task_id.as_str()) else { continue };
                let Some(rules) = services.get(&q.task.service_id) else { continue };
                let m = slot(q.task.modality);
                // Only to agents still able to take it, as checked under their locks.
                let agents: Vec<&String> = offer
                    .agents
                    .iter()
                    .filter(|a| match room.get_mut(*a) {
                        Some(r) if r[m] > 0 => {
                            r[m] -= 1;
                            true
                        }
                        _ => false,
                    })
                    .collect();
                if agents.len() < offer.agents.len() {
                    // Another worker was faster for some agent: look again soon.
                    more = true;
                }
                if agents.is_empty() {
                    continue;
                }
                let expires_at = rules.offer_deadline(q.task.modality, now);
                let task = &q.full;
                let moved = sqlx::query(
                    "UPDATE tasks SET state = 'offered', updated_at = $1 WHERE id = $2 AND state = 'queued'",
                )
                .bind(now)
                .bind(&offer.task_id)
                .execute(&mut *tx)
                .await?;
                if moved.rows_affected() != 1 {
                    continue;
                }
                for agent in agents {
                    let session_id = make_offer!(tx, tell, task, agent, expires_at, now, json!({}));
                    touched.push((agent.clone(), task.modality));
                    made.push(MadeOffer {
                        task_id: task.id.clone(),
                        service_id: task.service_id.clone(),
                        modality: task.modality,
                        agent_id: agent.clone(),
                        session_id,
                        waited_ms: now - q.queued_at,
                    });
                }
            }
            // Row locks in one order in every transaction: activity rows by
            // agent, then the agents' event counters.
            touched.sort();
            touched.dedup();
            for (agent, modality) in &touched {
                touch_activity!(tx, agent, *modality, now);
            }
            let told = write_tell!(self, tx, tell, now);
            tx.commit().await?;
            told
        });
        self.ring_agents(&told);
        if !made.is_empty() {
            // Their `task.offered` changes are in the outbox.
            self.ring_webhooks();
        }
        // Another pass only when this one got somewhere: the same heads,
        // offered to nobody, would be the same again.
        let more = more && !made.is_empty();
        Ok(PassResult { offers: made, more })
    }

    /// The next moment a sweep has work: the earliest offer deadline, or the
    /// moment an agent with an open offer passes the presence grace period.
    pub async fn next_routing_deadline(&self, grace_ms: Millis) -> StoreResult<Option<Millis>> {
        with_pool!(self, pool => {
            let expiry: Option<i64> = sqlx::query_scalar(
                "SELECT min(expires_at) FROM user_sessions WHERE state = 'offered'",
            )
            .fetch_one(pool)
            .await?;
            let seen: Option<i64> = sqlx::query_scalar(
                // Driven by the pending offers (the partial index on offered
                // sessions), not by every agent's history.
                "SELECT min(COALESCE(a.last_seen_at, 0)) FROM user_sessions s
                 JOIN agents a ON a.id = s.agent_id WHERE s.state = 'offered'",
            )
            .fetch_one(pool)
            .await?;
            let lapse = seen.map(|s| s + grace_ms + 1);
            Ok(match (expiry, lapse) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
        })
    }
}
