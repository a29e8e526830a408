//! Tasks: the admins' list, posting tasks from other components, pickup,
//! outcomes, handled and transfer.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id, Params};
use super::principal::Principal;
use super::views;
use crate::domain::cursor::{Cursor, cut_to_page, page_limit};
use crate::domain::task::priority_or;
use crate::domain::{Modality, SessionResult, TaskState, now_millis};
use crate::http::doc;
use crate::store::{NewTask, Outcome, Session, Task, TaskFilter, TransferTo};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TasksQuery {
    /// Only tasks of this service.
    service: Option<String>,
    /// Only tasks in this state.
    #[param(value_type = Option<TaskState>)]
    state: Option<String>,
    /// Only tasks of this modality.
    #[param(value_type = Option<Modality>)]
    modality: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of tasks.
#[derive(Serialize, ToSchema)]
#[schema(as = TaskPage)]
pub struct TaskPage<'a> {
    items: Vec<views::TaskView<'a>>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// `GET /api/v1/tasks` (admins, and integrations with `tasks:read`).
#[utoipa::path(
    get,
    path = "/tasks",
    operation_id = "listTasks",
    tag = "tasks",
    summary = "List tasks (admins, supervisors, integrations)",
    description = "Tasks, newest first by arrival, with keyset pagination. Admins and integrations with `tasks:read` list every task; supervisors the tasks of their own services (403 for `service=` of another); other agents get 403. Unknown query parameters are refused (400).",
    params(
        TasksQuery,
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::tasks::TaskPage),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: super::principal::Principal,
    Params(q): Params<TasksQuery>,
) -> ApiResult<Response> {
    // Supervisors read the tasks of their own services.
    let services = match &caller {
        Principal::Agent(a) if a.supervisor && !a.admin => {
            if let Some(s) = q.service.as_deref().filter(|s| !s.is_empty())
                && !a.services.iter().any(|m| m == s)
            {
                return Err(ApiError::forbidden(format!(
                    "service '{}' is not one you supervise ({})",
                    super::error::shown(s),
                    a.services.join(", ")
                )));
            }
            Some(a.services.clone())
        }
        _ => {
            caller.require("tasks:read", false)?;
            None
        }
    };
    let bad = |e: crate::domain::DomainError| ApiError::bad_request(e.to_string());
    let limit = page_limit(q.limit).map_err(bad)?;
    let filter = TaskFilter {
        service: q.service.filter(|s| !s.is_empty()),
        services,
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
    // One more than the page: a next page is offered only when there is one.
    let mut tasks = state
        .store
        .list_tasks(&TaskFilter {
            limit: limit + 1,
            ..filter
        })
        .await?;
    let more = cut_to_page(&mut tasks, limit);
    let next = more.then(|| tasks.last()).flatten().map(|t| {
        Cursor {
            created_at: t.arrived_at,
            id: t.id.clone(),
        }
        .encode()
    });
    Ok(Json(TaskPage {
        items: tasks.iter().map(|t| views::task(t, None)).collect(),
        next_cursor: next,
    })
    .into_response())
}

/// What happened to an agent's part in a task (e.g. reported by telephony).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OutcomeInput)]
pub struct AssignInput {
    /// The agent id; the agent must be a member of the task's service.
    agent: String,
    /// `transferred` is refused (422): use the transfer endpoint.
    result: SessionResult,
    /// The interaction is over (the call ended): a connected task goes to wrap-up.
    #[serde(default)]
    ended: bool,
}

/// A task from another component.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewTask, example = json!({"service": "support", "modality": "call", "external_id": "call-4711", "customer": {"phone": "+1 555 0100"}}))]
pub struct NewTaskInput {
    /// An existing service id (422 otherwise).
    service: String,
    modality: Modality,
    /// The id the posting component knows the task by; makes creation idempotent.
    #[schema(max_length = 200)]
    external_id: Option<String>,
    #[schema(max_length = 998)]
    subject: Option<String>,
    /// Name, e-mail, phone, UPN, the address they came from, postal address, IP.
    customer: Option<crate::domain::customer::CustomerIdentity>,
    /// The customer's language (e.g. `de`).
    language: Option<String>,
    /// The service address or number the customer reached.
    reached: Option<String>,
    /// Higher is served first; added to the service's priority (0 when absent).
    #[serde(default)]
    #[schema(value_type = Option<i32>, minimum = -100, maximum = 100)]
    priority: Option<serde_json::Number>,
    /// Free-form custom parameters, at most 16 KiB as JSON.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: serde_json::Map<String, Value>,
    /// Arrival time (RFC 3339); now when absent. At most 5 minutes ahead of
    /// the server's clock and 30 days back (it orders the queue).
    #[schema(value_type = Option<String>, format = DateTime)]
    arrived_at: Option<chrono::DateTime<chrono::Utc>>,
    /// An outcome to record at once (a call that was already answered); only
    /// applied when the task is created. Checked first: an unknown agent, one
    /// not in the service, or a result other than accepted, declined, rona or
    /// cancelled is a 422 and no task is made.
    outcome: Option<AssignInput>,
    /// Offer the task to agents (default: yes for email and IM; for a call
    /// only when asked, since telephony usually routes calls itself).
    route: Option<bool>,
}

fn check_len(field: &str, value: Option<&str>, max: usize) -> ApiResult<()> {
    match value {
        Some(v) if v.chars().count() > max => Err(ApiError::invalid(format!(
            "{field} is longer than {max} characters"
        ))),
        Some(v) if v.chars().any(|c| c.is_control() && c != '\t') => Err(ApiError::invalid(
            format!("{field} contains control characters"),
        )),
        _ => Ok(()),
    }
}

/// `POST /api/v1/tasks` (admins and integrations): a task from another
/// component, e.g. a call from telephony. Idempotent on `external_id`.
#[utoipa::path(
    post,
    path = "/tasks",
    operation_id = "createTask",
    tag = "tasks",
    summary = "Create a task (admins and integrations)",
    description = "Admins and integrations with `tasks:write`. A task from another component (e.g. a call from telephony), so it lists beside email and IM. Idempotent on `external_id`: the first post creates the task (201); a later post with the same `external_id` answers the existing task with 200 and changes nothing (its `outcome` is not applied again). The same `external_id` posted for another modality is not a retry: 409 `external_id_reused`, naming the task that has it. The customer is resolved from `customer.address`.",
    request_body(content = crate::http::tasks::NewTaskInput),
    responses(
        (status = 200, description = "A task with this external_id already exists; it is returned unchanged (a receipt for an integration without `tasks:read`).", body = crate::http::views::TaskAnswer),
        (status = 201, description = "Created, with its sessions (a receipt for an integration without `tasks:read`).", body = crate::http::views::TaskAnswer),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Body(input): Body<NewTaskInput>,
) -> ApiResult<Response> {
    principal.require("tasks:write", false)?;
    check_len("external_id", input.external_id.as_deref(), 200)?;
    // A blank key would make every later post without a real one a retry
    // of the first.
    if input
        .external_id
        .as_deref()
        .is_some_and(|e| e.trim().is_empty())
    {
        return Err(ApiError::invalid(
            "external_id must not be empty or blank: leave it out for a task without one",
        ));
    }
    check_len("subject", input.subject.as_deref(), 998)?;
    check_len("language", input.language.as_deref(), 35)?;
    check_len("reached", input.reached.as_deref(), 320)?;
    let given = input.customer.clone().unwrap_or_default();
    let mut identity = given.normalize(state.details.default_calling_code, true, "customer")?;
    if input.modality == Modality::Call {
        identity = identity.phone_first(
            given
                .address
                .as_deref()
                .is_some_and(|a| !a.trim().is_empty()),
        );
    }
    let (address, name) = (identity.address.clone(), identity.name.clone());
    crate::domain::context::check_parameters(&input.parameters, "parameters", false)?;
    let max = crate::domain::context::MAX_PARAMETERS;
    if input.parameters.len() > max {
        return Err(ApiError::invalid(format!(
            "parameters: {} given, at most {max}",
            input.parameters.len()
        )));
    }
    if serde_json::to_string(&input.parameters).map_or(0, |s| s.len())
        > super::details::MAX_PARAMETERS_BYTES
    {
        return Err(ApiError::invalid("parameters are larger than 16 KiB"));
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
    // (A retry of a post that made its task answers that task: nothing to check.)
    let retried = match input.external_id.as_deref() {
        Some(ext) => state.store.task_by_external_id(ext).await?.is_some(),
        None => false,
    };
    if let Some(o) = input.outcome.as_ref().filter(|_| !retried) {
        check_outcome(&state, &service.id, o).await?;
    }
    let now = now_millis();
    let arrived_at = match input.arrived_at.map(|t| t.timestamp_millis()) {
        None => now,
        Some(t) if t > now + crate::domain::chat::MAX_CLOCK_AHEAD_MS => {
            return Err(ApiError::invalid(
                "arrived_at: is more than 5 minutes ahead of this server's clock",
            ));
        }
        Some(t) if t < now - MAX_ARRIVED_AGO_MS => {
            return Err(ApiError::invalid("arrived_at: is more than 30 days ago"));
        }
        Some(t) => t,
    };
    let priority = priority_or(input.priority.as_ref(), 0)?;
    let routed = input.outcome.is_none() && input.route.unwrap_or(input.modality != Modality::Call);
    let new = NewTask {
        service_id: service.id,
        modality: input.modality,
        priority,
        routed,
        arrived_at,
        customer_address: address,
        customer_name: name,
        // Shown on one line of the page (see `domain::text`).
        subject: input.subject.map(|mut subject| {
            crate::domain::text::strip_direction_formatting(&mut subject);
            subject
        }),
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
    Ok((status, Json(answer(&principal, &task, Some(&sessions)))).into_response())
}

/// An outcome posted with a new task is checked before the task is made,
/// so that a task is created with its outcome or not at all.
async fn check_outcome(state: &AppState, service: &str, o: &AssignInput) -> ApiResult<()> {
    let invalid = ApiError::invalid;
    if !matches!(
        o.result,
        SessionResult::Accepted
            | SessionResult::Declined
            | SessionResult::Rona
            | SessionResult::Cancelled
    ) {
        return Err(invalid(format!(
            "outcome.result: '{}' cannot be posted; use accepted, declined, rona or cancelled",
            o.result.as_str()
        )));
    }
    let agent = match state.store.agent(&o.agent).await {
        Ok(a) => a,
        Err(crate::store::StoreError::NotFound(_)) => {
            return Err(invalid(format!(
                "outcome.agent: unknown agent '{}'",
                super::error::shown(&o.agent)
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if !agent.services.iter().any(|s| s == service) {
        return Err(invalid(format!(
            "outcome.agent: agent '{}' is not a member of service '{service}'",
            agent.id
        )));
    }
    Ok(())
}

async fn record(state: &AppState, task_id: &str, o: AssignInput) -> ApiResult<Task> {
    let outcome = Outcome {
        agent_id: o.agent,
        result: o.result,
        ended: o.ended,
    };
    let (task, ended) = state.store.record_outcome(task_id, &outcome).await?;
    for (result, n) in ended {
        state.metrics.offer_result(result, n);
    }
    Ok(task)
}

/// `POST /api/v1/tasks/{id}/outcome` (admins and integrations): what happened
/// to an agent's part in the task, e.g. the call was answered, or ended.
#[utoipa::path(
    post,
    path = "/tasks/{id}/outcome",
    operation_id = "recordOutcome",
    tag = "tasks",
    summary = "Record an agent's outcome (admins and integrations)",
    description = "What happened to an agent's part in the task, e.g. the call was answered (accepted), declined, unanswered (rona) or the caller hung up (cancelled); `ended` moves a connected task to wrap-up. Safe to retry: the outcome the task last recorded, posted again for the same agent, changes nothing (a decline or rona that is the task's latest, an accept — ended or not — of the agent who has or had it last, a cancel of a cancelled task); a second decline or rona of the same agent with no other part between counts as that retry. Admins and integrations with `tasks:write`. 404 for an unknown task or agent; 403 when the agent is not a member of the task's service; 409 when the task's state does not allow it, or for a decline or a missed offer (rona) of an agent who took the task.",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    request_body(content = crate::http::tasks::AssignInput),
    responses(
        (status = 200, description = "The task with its sessions (a receipt for an integration without `tasks:read`).", body = crate::http::views::TaskAnswer),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn outcome(
    State(state): State<AppState>,
    principal: Principal,
    Id(id): Id<String>,
    Body(input): Body<AssignInput>,
) -> ApiResult<Response> {
    principal.require("tasks:write", false)?;
    let task = record(&state, &id, input).await?;
    let sessions = state.store.task_sessions(&task.id).await?;
    Ok(Json(answer(&principal, &task, Some(&sessions))).into_response())
}

/// A changed task as `principal` may read it: whole, or a receipt for an
/// integration without `tasks:read`.
fn answer<'a>(
    principal: &Principal,
    task: &'a Task,
    sessions: Option<&'a [Session]>,
) -> views::TaskAnswer<'a> {
    if principal.sees_everything() {
        views::TaskAnswer::Task(views::task(task, sessions))
    } else {
        views::TaskAnswer::Receipt(views::receipt(task))
    }
}

/// The task if `agent` may see it: admins (with every session), the
/// supervisors of its service or of a service it went through (with the
/// sessions of the services they supervise), agents who have (had) a session
/// on it, and members of its service while it waits in the queue. Others get
/// a 404, as if it did not exist. Agents see only their own sessions on it.
pub async fn visible_task(
    state: &AppState,
    agent: &crate::store::Agent,
    id: &str,
) -> ApiResult<(Task, Vec<crate::store::Session>)> {
    let task = state.store.task(id).await?;
    let sessions = state.store.task_sessions(id).await?;
    visible(agent, task, sessions)
}

/// Whether a session is a part in the task now: not concluded, and not one
/// that transferred the task away (in wrap-up after the transfer too).
fn has_it(s: &Session) -> bool {
    s.state != crate::domain::SessionState::Concluded
        && s.result != Some(crate::domain::SessionResult::Transferred)
}

/// Up to when `agent` may read a task's conversation (its mail, chat lines,
/// call transcript; by when Switchboard received each): everything (`None`)
/// for admins, the supervisors of its service and whoever has a part in it
/// now; for an agent whose part is over (transferred on, declined, missed,
/// withdrawn, concluded), or a supervisor of a service it left, until that
/// part ended. `sessions` are those [`visible_task`] answers.
pub fn read_until(
    agent: &crate::store::Agent,
    task: &Task,
    sessions: &[Session],
) -> Option<crate::domain::Millis> {
    if agent.admin || agent.oversees(&task.service_id) {
        return None;
    }
    let seen: Vec<&Session> = sessions
        .iter()
        .filter(|s| s.agent_id == agent.id || agent.oversees(&s.service_id))
        .collect();
    if seen.is_empty() || seen.iter().any(|s| has_it(s)) {
        return None;
    }
    seen.iter()
        .map(|s| s.ended_at.unwrap_or(s.created_at))
        .max()
}

/// [`visible_task`] for a task and its sessions already read.
fn visible(
    agent: &crate::store::Agent,
    task: Task,
    sessions: Vec<crate::store::Session>,
) -> ApiResult<(Task, Vec<crate::store::Session>)> {
    let id = &task.id;
    let involved = sessions.iter().any(|s| s.agent_id == agent.id);
    let may_pick = task.state == TaskState::Queued && agent.services.contains(&task.service_id);
    // A supervisor oversees the parts played in their services: the task
    // while it is in one, and their services' sessions of it wherever it went.
    let oversees = agent.oversees(&task.service_id)
        || (agent.supervisor && sessions.iter().any(|s| agent.oversees(&s.service_id)));
    if !(oversees || involved || may_pick) {
        return Err(ApiError::not_found(format!("task '{id}' not found")));
    }
    let visible = if agent.admin {
        sessions
    } else {
        sessions
            .into_iter()
            .filter(|s| s.agent_id == agent.id || agent.oversees(&s.service_id))
            .collect()
    };
    Ok((task, visible))
}

/// `GET /api/v1/tasks/{id}`, with its session details (customer,
/// parameters, context links; see [`super::details`]); email tasks carry a
/// signed `preview_url` a browser can open. Integrations with `tasks:read`
/// read every task.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    operation_id = "getTask",
    tag = "tasks",
    summary = "A task with its sessions",
    description = "Visible to admins and the supervisors of its service (with every session), to agents who have (had) a session on it and to members of its service while it is queued; 404 for anyone else. Agents see only their own sessions on it; an agent whose part in a live task is over (transferred on, declined, missed) sees its details as their own latest session shows them (what its service kept, else not available) and no custom `parameters`. `messages` summarizes its messages (count, inbound and outbound, first and last, who wrote last; an IM task's chat lines, a call task's transcript) with the `url` that lists them. Email tasks also carry `preview_url` and `links_expire_at` for the task's holders (present and past), admins and the supervisors of its service: a link to the task's safe preview that a browser can open without a bearer header.",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::views::TaskDetails),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: super::principal::Principal,
    Id(id): Id<String>,
) -> ApiResult<Response> {
    // The task with its message counts, in one statement.
    let (task, mut counts) = state.store.task_with_counts(&id).await?;
    let (task, sessions, may_preview, past_holder) = match &caller {
        super::principal::Principal::Agent(agent) => {
            let sessions = state.store.task_sessions(&id).await?;
            let (task, sessions) = visible(agent, task, sessions)?;
            let oversees = agent.oversees(&task.service_id);
            let may_preview = oversees || !sessions.is_empty();
            // The live details are for whoever has the task now (and the
            // members of its queue while it waits), not for an agent whose
            // part in it is over.
            // (A part that transferred the task away is over, in wrap-up too.)
            let has_it = sessions.iter().any(has_it);
            let may_pick =
                task.state == TaskState::Queued && agent.services.contains(&task.service_id);
            let past_holder = !oversees && !has_it && !may_pick;
            // Their summary counts what they may read.
            if let Some(until) = read_until(agent, &task, &sessions) {
                counts = state
                    .store
                    .task_message_counts_until(&task.id, task.modality, until)
                    .await?;
            }
            (task, sessions, may_preview, past_holder)
        }
        super::principal::Principal::Integration(_) => {
            caller.require("tasks:read", false)?;
            let sessions = state.store.task_sessions(&id).await?;
            (task, sessions, false, false)
        }
    };
    let mut view = super::details::task_view(&state, &task, &sessions, Some(counts)).await?;
    if past_holder {
        let part_service = sessions
            .last()
            .map(|s| s.service_id.as_str())
            .filter(|s| *s != task.service_id);
        let name = match part_service {
            Some(id) => state.store.service(id).await.ok().map(|s| s.name),
            None => None,
        };
        view.as_past_holder(name);
    }
    if task.modality == Modality::Im {
        view.chat = Some(super::chat::task_chat(&state, &task).await?);
    }
    // Links to the mail itself go to its holders (present and past), admins
    // and the supervisors of its service.
    if task.modality == Modality::Email && may_preview {
        let until = match &caller {
            super::principal::Principal::Agent(agent) => read_until(agent, &task, &sessions),
            super::principal::Principal::Integration(_) => None,
        };
        let (token, expires) = super::preview::task_link_until(&state, &task.id, until);
        view.preview_url = Some(format!("/api/v1/tasks/{}/preview?token={token}", task.id));
        view.links_expire_at = Some(crate::domain::millis_to_rfc3339(expires * 1000));
    }
    Ok(Json(view).into_response())
}

/// `POST /api/v1/tasks/{id}/pickup`: the caller takes a queued task of their service.
#[utoipa::path(
    post,
    path = "/tasks/{id}/pickup",
    operation_id = "pickupTask",
    tag = "tasks",
    summary = "Pick up a queued task",
    description = "The caller takes a queued task of one of their services (pickup distribution) and gets a connected session. Exactly one of several agents racing wins; the others get 409, as does an agent at their capacity for the modality. 404 when the caller is not a member of the task's service (the task is none of their business). No body.",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    responses(
        (status = 201, description = "Picked up: the new session.", body = crate::http::views::SessionFields),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
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
#[utoipa::path(
    post,
    path = "/tasks/{id}/handled",
    operation_id = "markHandled",
    tag = "tasks",
    summary = "Mark a task handled",
    description = "The agent holding the task (or an admin) ends the interaction: the task and its connected sessions go to wrap_up. 403 when the caller does not hold it; 409 when it is not connected. No body.",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::views::TaskView),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn handled(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Response> {
    let task = state.store.mark_handled(&id, &caller.0).await?;
    Ok(Json(views::task(&task, None)).into_response())
}

/// Where a task goes: to a service's queue, offered to a named agent, or both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferInput {
    /// The service whose queue the task moves to.
    #[schema(max_length = 64)]
    service: Option<String>,
    /// The agent the task is offered to.
    #[schema(max_length = 64)]
    agent: Option<String>,
}

/// `POST /api/v1/tasks/{id}/transfer`: `{"service": …}` to another service's
/// queue, `{"agent": …}` offered to a named agent, or both.
#[utoipa::path(
    post,
    path = "/tasks/{id}/transfer",
    operation_id = "transferTask",
    tag = "tasks",
    summary = "Transfer a task to another service",
    description = "Moves a task the caller holds to the queue of another service (`service`), or offers it directly to a colleague (`agent`, optionally with the `service` it goes to; the colleague must be a member of that service, available and with room); the caller's session ends as `transferred` and waits for its wrap-up. Admins may also move a queued task. 404 for an unknown task; 403 when the caller does not hold it; 409 when it is already in that service, handled (in wrap-up), or the colleague is not available or has no room. A `service` or `agent` that does not exist, or a colleague who is not a member of the service, is 422.",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    request_body(content = crate::http::tasks::TransferInput),
    responses(
        (status = 200, description = "OK", body = crate::http::views::TaskView),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn transfer(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(input): Body<TransferInput>,
) -> ApiResult<Response> {
    check_len("service", input.service.as_deref(), 64)?;
    check_len("agent", input.agent.as_deref(), 64)?;
    let to = TransferTo {
        service: input.service.filter(|s| !s.is_empty()),
        agent: input.agent.filter(|s| !s.is_empty()),
    };
    let (task, withdrawn) = state
        .store
        .transfer(&id, &caller.0, &to, state.routing.grace_ms())
        .await
        .map_err(unknown_target)?;
    state.metrics.offer_result("withdrawn", withdrawn);
    if to.agent.is_some() {
        // The named agent's offer, made by the transfer, not by routing.
        state
            .metrics
            .offers
            .with_label_values(&[task.service_id.as_str(), task.modality.as_str()])
            .inc();
    }
    tracing::info!(task = %id, to_service = to.service.as_deref().unwrap_or("-"), to_agent = to.agent.as_deref().unwrap_or("-"), agent = %caller.0.id, "task transferred");
    Ok(Json(views::task(&task, None)).into_response())
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
            ApiError::invalid(format!("{field}: unknown {what}"))
        }
        other => other.into(),
    }
}

/// `POST /api/v1/tasks/{id}/cancel` (admins and integrations: the channel):
/// the customer left. A waiting or offered task is cancelled; on a connected
/// one it is recorded and the agent told. Idempotent.
#[utoipa::path(
    post,
    path = "/tasks/{id}/cancel",
    operation_id = "cancelTask",
    tag = "tasks",
    summary = "Cancel a live task",
    description = "Admins and integrations with `tasks:write` (telephony, a chat system): the task concludes as cancelled; pending offers end as cancelled. 409 when it has already concluded. No body.",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    responses(
        (status = 200, description = "The task (a receipt for an integration without `tasks:read`).", body = crate::http::views::TaskAnswer),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Id(id): Id<String>,
) -> ApiResult<Response> {
    principal.require("tasks:write", false)?;
    let (task, ended) = state.store.cancel_task(&id).await?;
    state.metrics.offer_result("cancelled", ended);
    tracing::info!(task = %id, state = task.state.as_str(), "customer left");
    Ok(Json(answer(&principal, &task, None)).into_response())
}

/// `GET /api/v1/tasks/{id}/messages`: the conversation's messages on this task,
/// for those who may see the task.
#[utoipa::path(
    get,
    path = "/tasks/{id}/messages",
    operation_id = "listTaskMessages",
    tag = "tasks",
    summary = "A task's messages (email; an IM task's transcript)",
    description = "The messages of the task's conversation that belong to this task, oldest first, without raw source or bodies (for an agent whose part in the task is over, those that had come in when it ended), and (`earlier`) the conversation's earlier exchange: the messages of its tasks that arrived before this one, for those who may read this task's mail. Visible to whoever may see the task (GET /api/v1/tasks/{id}): admins, the supervisors of its service, agents who have (had) a session on it and members of its service while it is queued; 404 for anyone else. An IM task answers its chat transcript instead, a call task its transcript as posted by telephony (POST /api/v1/tasks/{id}/transcript; `from` is the speaker), in the same shape. Each email message has a `preview_url` (for holders, admins and supervisors, with the bearer token).",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::tasks::TaskMessages),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<TaskMessages>> {
    let (task, sessions) = visible_task(&state, &caller.0, &id).await?;
    // An agent whose part is over reads what had come in until then.
    let until = read_until(&caller.0, &task, &sessions);
    match task.modality {
        Modality::Im => {
            return Ok(Json(TaskMessages::Chat(
                super::chat::transcript(&state, &id, until).await?,
            )));
        }
        Modality::Call => {
            return Ok(Json(TaskMessages::Chat(
                super::chat::call_transcript(&state, &id, until).await?,
            )));
        }
        Modality::Email => {}
    }
    let items = state
        .store
        .task_message_cards(&id)
        .await?
        .iter()
        .filter(|m| until.is_none_or(|u| m.received_at <= u))
        .map(|m| MessageView::of(m, format!("/api/v1/messages/{}/preview", m.id)))
        .collect();
    // The conversation's earlier tasks, for those who may read this task's
    // mail; each preview carries a link token of the task it belongs to.
    let mut earlier = Vec::new();
    if caller.0.oversees(&task.service_id) || !sessions.is_empty() {
        let older = state
            .store
            .earlier_message_cards(&id, EARLIER_LISTED)
            .await?;
        earlier = super::preview::earlier_links(&state, task.arrived_at, &older)
            .into_iter()
            .map(|(m, _, token)| {
                MessageView::of(
                    m,
                    format!("/api/v1/messages/{}/preview?token={token}", m.id),
                )
            })
            .collect();
    }
    Ok(Json(TaskMessages::Mail(MessageList { items, earlier })))
}

/// How far back a posted task's `arrived_at` may be.
const MAX_ARRIVED_AGO_MS: i64 = 30 * 24 * 3600 * 1000;

/// How many messages of a conversation's earlier tasks
/// `GET /api/v1/tasks/{id}/messages` lists (the newest ones).
const EARLIER_LISTED: usize = 50;

/// The conversation of a task: its email messages, or an IM task's transcript.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TaskMessages {
    Mail(MessageList),
    Chat(super::chat::Transcript),
}

/// The email messages of a task.
#[derive(Serialize, ToSchema)]
pub struct MessageList {
    items: Vec<MessageView>,
    /// The earlier exchange of the conversation: the messages of its tasks
    /// that arrived before this one (a follow-up's predecessors) with the
    /// same customer (address or directory entry: quoting a Message-ID does
    /// not show a stranger another customer's mail), received before this
    /// one arrived, the newest 50, oldest first. Only for those who may read
    /// this task's mail (its holders, present and past, admins and the
    /// supervisors of its service); empty for anyone else. Their
    /// `preview_url` carries a link token of the task each belongs to that
    /// reads up to this task's arrival.
    earlier: Vec<MessageView>,
}

/// A stored email message of a task, without its raw source or bodies.
#[derive(Serialize, ToSchema)]
#[schema(as = Message)]
pub struct MessageView {
    #[schema(example = "cnv_0123456789abcdef01234567")]
    conversation_id: Option<String>,
    /// For outbound mail: `bounced` once a bounce for it came in; otherwise null.
    delivery_status: Option<String>,
    /// `inbound` or `outbound`.
    direction: String,
    /// What ingestion did with it: queued (a new task in a new conversation),
    /// appended (joined the conversation's open task), reopened (a new task
    /// in a conversation whose tasks were all finished), attached (automatic
    /// mail added to its conversation without a task), recorded (automatic
    /// mail kept without a conversation or task), sent (a reply sent from a
    /// draft).
    disposition: String,
    from: MessageFrom,
    #[schema(example = "msg_0123456789abcdef01234567")]
    id: String,
    /// How the mail was classified (`normal`, `auto_reply`, `bulk`,
    /// `bounce`): automatic mail never triggers an automatic answer.
    kind: String,
    /// The Message-ID header, without angle brackets.
    #[schema(example = "m1@analytical.example")]
    message_id: Option<String>,
    /// This message's preview (GET /api/v1/messages/{id}/preview), for the
    /// task's holders and admins; it carries no link token (use the bearer
    /// token, or the task's `preview_url`).
    #[schema(example = "/api/v1/messages/msg_0123456789abcdef01234567/preview")]
    preview_url: String,
    /// When it was taken in.
    #[schema(format = DateTime)]
    received_at: String,
    /// Size of the raw source in bytes.
    size: i64,
    subject: Option<String>,
    /// The task it belongs to (another task for the `earlier` exchange).
    #[schema(example = "tsk_0123456789abcdef01234567")]
    task_id: Option<String>,
}

impl MessageView {
    fn of(m: &crate::store::MessageCard, preview_url: String) -> Self {
        MessageView {
            conversation_id: m.conversation_id.clone(),
            delivery_status: m.delivery_status.clone(),
            direction: m.direction.clone(),
            disposition: m.disposition.clone(),
            from: MessageFrom {
                address: m.from_address.clone(),
                name: m.from_name.clone(),
            },
            preview_url,
            id: m.id.clone(),
            kind: m.kind.clone(),
            message_id: m.message_id.clone(),
            received_at: crate::domain::millis_to_rfc3339(m.received_at),
            size: m.size,
            subject: m.subject.clone(),
            task_id: m.task_id.clone(),
        }
    }
}

/// The sender of a message.
#[derive(Serialize, ToSchema)]
pub struct MessageFrom {
    /// As written in the mail (the local part keeps its case).
    address: Option<String>,
    name: Option<String>,
}
