//! Tasks: the admins' list, posting tasks from other components, pickup,
//! outcomes, handled and transfer.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id, Params};
use super::views;
use crate::domain::cursor::{Cursor, page_limit};
use crate::domain::task::validate_priority;
use crate::domain::{Modality, SessionResult, TaskState, now_millis};
use crate::store::{NewTask, Outcome, Task, TaskFilter, TransferTo};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksQuery {
    service: Option<String>,
    state: Option<String>,
    modality: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /api/v1/tasks` (admins, and integrations with `tasks:read`).
pub async fn list(
    State(state): State<AppState>,
    caller: super::principal::Principal,
    Params(q): Params<TasksQuery>,
) -> ApiResult<Json<Value>> {
    caller.require("tasks:read", false)?;
    let bad = |e: crate::domain::DomainError| ApiError::bad_request(e.to_string());
    let limit = page_limit(q.limit).map_err(bad)?;
    let filter = TaskFilter {
        service: q.service.filter(|s| !s.is_empty()),
        state: q
            .state
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(TaskState::parse)
            .transpose()
            .map_err(bad)?,
        modality: q
            .modality
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(Modality::parse)
            .transpose()
            .map_err(bad)?,
        after: q
            .cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(Cursor::decode)
            .transpose()
            .map_err(bad)?,
        limit,
    };
    let tasks = state.store.list_tasks(&filter).await?;
    let next = (tasks.len() == limit as usize)
        .then(|| tasks.last())
        .flatten()
        .map(|t| {
            Cursor {
                created_at: t.arrived_at,
                id: t.id.clone(),
            }
            .encode()
        });
    Ok(Json(json!({
        "items": tasks.iter().map(|t| views::task(t, None)).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignInput {
    agent: String,
    result: SessionResult,
    #[serde(default)]
    ended: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTaskInput {
    service: String,
    modality: Modality,
    external_id: Option<String>,
    subject: Option<String>,
    /// Name, e-mail, phone, UPN, the address they came from, postal address, IP.
    customer: Option<crate::domain::customer::CustomerIdentity>,
    /// The customer's language (e.g. `de`).
    language: Option<String>,
    /// The service address or number the customer reached.
    reached: Option<String>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    /// Arrival time (RFC 3339); now when absent.
    arrived_at: Option<chrono::DateTime<chrono::Utc>>,
    /// An outcome to record at once (a call that was already answered).
    outcome: Option<AssignInput>,
    /// Offer the task to agents (default: yes for email and IM; for a call
    /// only when asked, since telephony usually routes calls itself).
    route: Option<bool>,
}

fn check_len(field: &str, value: Option<&str>, max: usize) -> ApiResult<()> {
    match value {
        Some(v) if v.chars().count() > max => Err(ApiError::bad_request(format!(
            "{field} is longer than {max} characters"
        ))),
        Some(v) if v.chars().any(|c| c.is_control() && c != '\t') => Err(ApiError::bad_request(
            format!("{field} contains control characters"),
        )),
        _ => Ok(()),
    }
}

/// `POST /api/v1/tasks` (admins and integrations): a task from another
/// component, e.g. a call from telephony. Idempotent on `external_id`.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(input): Body<NewTaskInput>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require_admin()?;
    check_len("external_id", input.external_id.as_deref(), 200)?;
    check_len("subject", input.subject.as_deref(), 998)?;
    check_len("language", input.language.as_deref(), 35)?;
    check_len("reached", input.reached.as_deref(), 320)?;
    let identity = input.customer.clone().unwrap_or_default().normalize(
        state.details.default_calling_code,
        true,
        "customer",
    )?;
    let (address, name) = (identity.address.clone(), identity.name.clone());
    crate::domain::context::check_parameters(&input.parameters, "parameters", false)?;
    if serde_json::to_string(&input.parameters).map_or(0, |s| s.len())
        > super::details::MAX_PARAMETERS_BYTES
    {
        return Err(ApiError::bad_request("parameters are larger than 16 KiB"));
    }
    let service = state
        .store
        .service(&input.service)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound(_) => {
                super::error::unknown_service("service", &input.service)
            }
            other => other.into(),
        })?;
    let priority = validate_priority(input.priority.unwrap_or(0))?;
    let routed = input.outcome.is_none() && input.route.unwrap_or(input.modality != Modality::Call);
    let new = NewTask {
        service_id: service.id,
        modality: input.modality,
        priority,
        routed,
        arrived_at: input
            .arrived_at
            .map_or_else(now_millis, |t| t.timestamp_millis()),
        customer_address: address,
        customer_name: name,
        subject: input.subject,
        params: Value::Object(input.parameters),
        external_id: input.external_id,
    };
    let extras = crate::store::TaskExtras {
        identity: Some(identity),
        language: input.language.filter(|l| !l.trim().is_empty()),
        reached: input.reached.filter(|r| !r.trim().is_empty()),
    };
    let (mut task, created) = state.store.create_task_with(&new, &extras).await?;
    if created {
        state
            .metrics
            .tasks_created
            .with_label_values(&[task.service_id.as_str(), task.modality.as_str(), "api"])
            .inc();
        tracing::info!(task = %task.id, service = %task.service_id, modality = task.modality.as_str(), "task created");
        if let Some(o) = input.outcome {
            task = record(&state, &task.id, o).await?;
        }
    }
    let sessions = state.store.task_sessions(&task.id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(views::task(&task, Some(&sessions)))))
}

async fn record(state: &AppState, task_id: &str, o: AssignInput) -> ApiResult<Task> {
    let outcome = Outcome {
        agent_id: o.agent,
        result: o.result,
        ended: o.ended,
    };
    Ok(state.store.record_outcome(task_id, &outcome).await?)
}

/// `POST /api/v1/tasks/{id}/outcome` (admins and integrations): what happened
/// to an agent's part in the task, e.g. the call was answered, or ended.
pub async fn outcome(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(input): Body<AssignInput>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let task = record(&state, &id, input).await?;
    let sessions = state.store.task_sessions(&task.id).await?;
    Ok(Json(views::task(&task, Some(&sessions))))
}

/// The task if `agent` may see it: admins, agents who have (had) a session on
/// it, and members of its service while it waits in the queue. Others get a
/// 404, as if it did not exist. Agents see only their own sessions on it.
pub async fn visible_task(
    state: &AppState,
    agent: &crate::store::Agent,
    id: &str,
) -> ApiResult<(Task, Vec<crate::store::Session>)> {
    let task = state.store.task(id).await?;
    let sessions = state.store.task_sessions(id).await?;
    let involved = sessions.iter().any(|s| s.agent_id == agent.id);
    let may_pick = task.state == TaskState::Queued && agent.services.contains(&task.service_id);
    if !(agent.admin || involved || may_pick) {
        return Err(ApiError::not_found(format!("task '{id}' not found")));
    }
    let visible = if agent.admin {
        sessions
    } else {
        sessions
            .into_iter()
            .filter(|s| s.agent_id == agent.id)
            .collect()
    };
    Ok((task, visible))
}

/// `GET /api/v1/tasks/{id}`, with its session details (customer,
/// parameters, context links; see [`super::details`]); email tasks carry a
/// signed `preview_url` a browser can open. Integrations with `tasks:read`
/// read every task.
pub async fn get(
    State(state): State<AppState>,
    caller: super::principal::Principal,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    let (task, sessions, may_preview) = match &caller {
        super::principal::Principal::Agent(agent) => {
            let (task, sessions) = visible_task(&state, agent, &id).await?;
            let may_preview = agent.admin || !sessions.is_empty();
            (task, sessions, may_preview)
        }
        super::principal::Principal::Integration(_) => {
            caller.require("tasks:read", false)?;
            let task = state.store.task(&id).await?;
            let sessions = state.store.task_sessions(&id).await?;
            (task, sessions, false)
        }
    };
    let mut view = super::details::task_view(&state, &task, &sessions).await?;
    if task.modality == Modality::Im {
        view["chat"] = super::chat::task_chat(&state, &task).await?;
    }
    // Links to the mail itself go to its holders (present and past) and admins.
    if task.modality == Modality::Email && may_preview {
        let (token, expires) = super::preview::task_link(&state, &task.id);
        view["preview_url"] = json!(format!("/api/v1/tasks/{}/preview?token={token}", task.id));
        view["links_expire_at"] = json!(crate::domain::millis_to_rfc3339(expires * 1000));
    }
    Ok(Json(view))
}

/// `POST /api/v1/tasks/{id}/pickup`: the caller takes a queued task of their service.
pub async fn pickup(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<axum::response::Response> {
    let session = state.store.pickup(&id, &caller.0).await?;
    state.metrics.pickups.inc();
    tracing::info!(task = %id, agent = %caller.0.id, "task picked up");
    let mut response = views::session_response(&session);
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// `POST /api/v1/tasks/{id}/handled`: the holder ends the interaction; the task goes to wrap-up.
pub async fn handled(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    let task = state.store.mark_handled(&id, &caller.0).await?;
    Ok(Json(views::task(&task, None)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferInput {
    service: Option<String>,
    agent: Option<String>,
}

/// `POST /api/v1/tasks/{id}/transfer`: `{"service": …}` to another service's
/// queue, `{"agent": …}` offered to a named agent, or both.
pub async fn transfer(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(input): Body<TransferInput>,
) -> ApiResult<Json<Value>> {
    check_len("service", input.service.as_deref(), 64)?;
    check_len("agent", input.agent.as_deref(), 64)?;
    let to = TransferTo {
        service: input.service.filter(|s| !s.is_empty()),
        agent: input.agent.filter(|s| !s.is_empty()),
    };
    let task = state
        .store
        .transfer(&id, &caller.0, &to, state.routing.grace_ms())
        .await
        .map_err(unknown_target)?;
    tracing::info!(task = %id, to_service = ?to.service, to_agent = ?to.agent, agent = %caller.0.id, "task transferred");
    Ok(Json(views::task(&task, None)))
}

/// A transfer to a service or agent that does not exist is a bad request
/// body (422), not a missing task.
fn unknown_target(e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::NotFound(what)
            if what.starts_with("service ") || what.starts_with("agent ") =>
        {
            let field = if what.starts_with("service ") {
                "service"
            } else {
                "agent"
            };
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("{field}: unknown {what}"),
            )
        }
        other => other.into(),
    }
}

/// `POST /api/v1/tasks/{id}/cancel` (admins and integrations: the channel):
/// the customer left. A waiting or offered task is cancelled; on a connected
/// one it is recorded and the agent told. Idempotent.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let before = state.store.task(&id).await?;
    let task = state.store.cancel_task(&id).await?;
    if before.state == TaskState::Offered {
        let ended = state
            .store
            .task_sessions(&id)
            .await?
            .iter()
            .filter(|s| s.end_reason.as_deref() == Some("cancelled"))
            .count();
        state.metrics.offer_result("cancelled", ended);
    }
    tracing::info!(task = %id, state = task.state.as_str(), "customer left");
    Ok(Json(views::task(&task, None)))
}

/// `GET /api/v1/tasks/{id}/messages`: the conversation's messages on this task,
/// for those who may see the task.
pub async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    let (task, _) = visible_task(&state, &caller.0, &id).await?;
    if task.modality == Modality::Im {
        return Ok(Json(super::chat::transcript(&state, &id).await?));
    }
    let messages = state.store.task_messages(&id).await?;
    let items: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "direction": m.direction,
                "kind": m.kind,
                "disposition": m.disposition,
                "message_id": m.message_id,
                "subject": m.subject,
                "from": {"address": m.from_address, "name": m.from_name},
                "received_at": crate::domain::millis_to_rfc3339(m.received_at),
                "size": m.size,
                "delivery_status": m.delivery_status,
                "conversation_id": m.conversation_id,
                "preview_url": format!("/api/v1/messages/{}/preview", m.id),
            })
        })
        .collect();
    Ok(Json(json!({"items": items})))
}
