//! Routing at the edge: presence, offers and their answers, and the
//! admins' view of agents and queues.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id};
use super::views;
use crate::domain::routing::{Answer, slot};
use crate::domain::{Modality, Presence, millis_to_rfc3339, now_millis};
use crate::store::{AgentStatus, PresenceView, QueueStatus, time_or_null};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

fn presence_view(p: &PresenceView) -> Value {
    json!({
        "status": p.status,
        "effective": p.effective,
        "since": time_or_null(p.since),
        "last_seen_at": time_or_null(p.last_seen_at),
        "paused_until": time_or_null(p.paused_until),
    })
}

/// `GET /api/v1/me/presence`. Counts as the client being there.
pub async fn get_presence(
    State(state): State<AppState>,
    Caller(agent): Caller,
) -> ApiResult<Json<Value>> {
    let grace = state.routing.grace_ms();
    state.store.touch_agent(&agent.id, grace).await?;
    Ok(Json(presence_view(
        &state.store.presence(&agent.id, grace).await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceInput {
    status: String,
}

/// `PUT /api/v1/me/presence` `{"status": "available" | "busy" | "away" | "offline"}`.
/// Anything but `available` withdraws pending offers at once; `available`
/// also ends a pause after a RONA.
pub async fn put_presence(
    State(state): State<AppState>,
    Caller(agent): Caller,
    Body(input): Body<PresenceInput>,
) -> ApiResult<Json<Value>> {
    let status = Presence::parse(&input.status)
        .map_err(|e| ApiError::bad_request(format!("status: {e}")))?;
    let view = state
        .store
        .set_presence(&agent.id, status, state.routing.grace_ms())
        .await?;
    tracing::info!(agent = %agent.id, status = status.as_str(), "presence set");
    Ok(Json(presence_view(&view)))
}

/// `GET /api/v1/me/offers`: the caller's pending offers, soonest deadline first.
pub async fn my_offers(
    State(state): State<AppState>,
    Caller(agent): Caller,
) -> ApiResult<Json<Value>> {
    let offers = state.store.my_offers(&agent.id).await?;
    let items: Vec<Value> = offers
        .iter()
        .map(|(session, task)| {
            let mut v = views::session_value(session);
            v["task"] = views::task(task, None);
            v
        })
        .collect();
    Ok(Json(json!({"items": items})))
}

async fn answer(
    state: &AppState,
    agent: &crate::store::Agent,
    id: &str,
    answer: Answer,
) -> ApiResult<Json<Value>> {
    let result = state.store.answer_offer(id, agent, answer).await;
    if let Err(crate::store::StoreError::Closed {
        code: "offer_expired",
        ..
    }) = &result
    {
        // Answered too late: the RONA fired on the way.
        state.metrics.offer_result("rona", 1);
    }
    let answered = result?;
    if let Some(ms) = answered.answered_after_ms {
        match answer {
            Answer::Accept => {
                state.metrics.offer_result("accepted", 1);
                state
                    .metrics
                    .time_to_accept
                    .observe(ms.max(0) as f64 / 1000.0);
                tracing::info!(session = %id, agent = %agent.id, "offer accepted");
            }
            Answer::Decline => {
                state.metrics.offer_result("declined", 1);
                tracing::info!(session = %id, agent = %agent.id, "offer declined");
            }
        }
    }
    Ok(Json(views::session_value(&answered.session)))
}

/// `POST /api/v1/offers/{session_id}/accept`.
pub async fn accept(
    State(state): State<AppState>,
    Caller(agent): Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    answer(&state, &agent, &id, Answer::Accept).await
}

/// `POST /api/v1/offers/{session_id}/decline`.
pub async fn decline(
    State(state): State<AppState>,
    Caller(agent): Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    answer(&state, &agent, &id, Answer::Decline).await
}

fn agent_view(a: &AgentStatus, now: i64) -> Value {
    let per_modality = |f: &dyn Fn(usize) -> Value| -> Value {
        let mut m = serde_json::Map::new();
        for modality in Modality::ALL {
            m.insert(modality.as_str().into(), f(slot(modality)));
        }
        Value::Object(m)
    };
    json!({
        "id": a.id,
        "name": a.name,
        "services": a.services,
        "presence": presence_view(&a.presence),
        "routable": a.routable,
        "load": per_modality(&|s| {
            let l = a.load[s];
            json!({"offered": l.offered, "connected": l.connected, "capacity": l.capacity})
        }),
        "idle_secs": per_modality(&|s| match a.idle_since[s] {
            Some(t) if a.routable => json!((now - t).max(0) / 1000),
            _ => Value::Null,
        }),
    })
}

/// `GET /api/v1/agents` (admins): every agent's presence, load and idle time.
pub async fn agents(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let now = now_millis();
    let list = state
        .store
        .agents_overview(state.routing.grace_ms())
        .await?;
    Ok(Json(json!({
        "items": list.iter().map(|a| agent_view(a, now)).collect::<Vec<_>>(),
        "presence_grace_secs": state.routing.presence_grace_secs,
    })))
}

pub(crate) fn queue_view(q: &QueueStatus, now: i64) -> Value {
    json!({
        "service": q.service_id,
        "modality": q.modality,
        "distribution": q.distribution.as_str(),
        "queued": q.queued,
        "offered": q.offered,
        "connected": q.connected,
        "oldest_queued_at": q.oldest_queued_at.map(millis_to_rfc3339),
        "oldest_waiting_secs": q.oldest_queued_at.map(|t| (now - t).max(0) / 1000),
        "agents_available": q.agents_available,
        "agents_busy": q.agents_busy,
    })
}

/// `GET /api/v1/ops/queues` (admins): every queue (service and modality)
/// with its depth, oldest waiting task and the agents who can serve it.
pub async fn queues(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let now = now_millis();
    let list = state.store.queue_overview(state.routing.grace_ms()).await?;
    Ok(Json(json!({
        "items": list.iter().map(|q| queue_view(q, now)).collect::<Vec<_>>(),
    })))
}
