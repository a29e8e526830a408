//! The agents' workspace, `/`: My Sessions, Waiting work and the widgets of
//! the selected session, with the fragments the page refreshes live.
use super::{PageUser, agent_view, error_response, html, render};
use crate::domain::cursor::{Cursor, cut_to_page, page_limit};
use crate::domain::customer::CustomerKind;
use crate::domain::wrapup::CodeKind;
use crate::domain::{
    Modality, Presence, SessionResult, SessionState, TaskState, millis_to_rfc3339,
};
use crate::http::AppState;
use crate::http::doc;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Id, Params};
use crate::store::{Session, SessionFilter, Task};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

/// Concluded sessions per page of history (more load as the agent scrolls).
const HISTORY_PAGE: u32 = 50;
/// Live sessions shown at most (an agent rarely holds more than a handful).
const LIVE_MAX: u32 = 200;
/// Waiting tasks shown at first; "Show more" adds as many again.
const QUEUE_PAGE: u32 = 50;
/// Waiting tasks shown at most, however often "Show more" is clicked.
const QUEUE_MAX: u32 = 1000;

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(millis_to_rfc3339(m)))
}

/// A short UTC time shown until the script puts it in the agent's time zone.
fn short_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%d %b %H:%M UTC").to_string())
        .unwrap_or_default()
}

pub fn modality_label(m: Modality) -> &'static str {
    match m {
        Modality::Email => "Email",
        Modality::Im => "Chat",
        Modality::Call => "Call",
    }
}

/// The result as the list shows it: a key for the colour and the word.
pub fn result_view(s: &Session) -> (&'static str, &'static str) {
    match (s.result, s.state) {
        (Some(SessionResult::Accepted), _) => ("accepted", "Accepted"),
        (Some(SessionResult::Declined), _) => ("declined", "Declined"),
        (Some(SessionResult::Cancelled), _) => ("cancelled", "Cancelled"),
        (Some(SessionResult::Rona), _) => ("rona", "RONA"),
        (Some(SessionResult::Transferred), _) => ("transferred", "Transferred"),
        (Some(SessionResult::Withdrawn), _) => ("withdrawn", "Withdrawn"),
        (None, SessionState::Offered) => ("offered", "Offered"),
        (None, _) => ("open", "Open"),
    }
}

fn state_label(s: SessionState) -> &'static str {
    match s {
        SessionState::Offered => "Incoming",
        SessionState::Connected => "Live",
        SessionState::WrapUp => "Wrap-up",
        SessionState::Concluded => "Concluded",
    }
}

/// One entry of the sessions list.
pub fn session_row(s: &Session) -> Value {
    let (result, result_label) = result_view(s);
    let customer = s
        .customer_name
        .clone()
        .or_else(|| s.customer_address.clone())
        .unwrap_or_else(|| "Anonymous".into());
    json!({
        "id": s.id,
        "task_id": s.task_id,
        "modality": s.modality.as_str(),
        "modality_label": modality_label(s.modality),
        "state": s.state.as_str(),
        "state_label": state_label(s.state),
        "result": result,
        "result_label": result_label,
        // Incoming and ongoing: the pulsing icon.
        "pulsing": matches!(s.state, SessionState::Offered | SessionState::Connected),
        // Not saved yet (and can be): the info icon.
        "unsaved": matches!(s.state, SessionState::Connected | SessionState::WrapUp),
        "subject": s.subject.clone().unwrap_or_else(|| "(no subject)".into()),
        "customer": customer,
        "created_at": millis_to_rfc3339(s.created_at),
        "created_short": short_time(s.created_at),
        "tags": s.wrapup.tags,
    })
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// all (default), live or concluded. One of: `all`, `live`, `concluded`.
    state: Option<String>,
    /// Only this modality.
    #[param(value_type = Option<crate::domain::Modality>)]
    modality: Option<String>,
    /// Search in customer, subject, tags.
    #[param(max_length = 200)]
    q: Option<String>,
    /// Older history.
    cursor: Option<String>,
    /// A session to open.
    session: Option<String>,
}

/// The sessions list for the filters: live sessions first (all of them),
/// then the history newest first, a page at a time. Returns the rows and
/// the URL of the next page of history, if there is one.
pub async fn list_sessions(
    state: &AppState,
    agent_id: &str,
    q: &ListQuery,
) -> ApiResult<(Vec<Value>, Option<String>)> {
    let which = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("all");
    if !matches!(which, "all" | "live" | "concluded") {
        return Err(ApiError::bad_request(
            "state must be all, live or concluded",
        ));
    }
    let modality = match q.modality.as_deref().filter(|m| !m.is_empty()) {
        None => None,
        Some(m) => Some(
            Modality::parse(m)
                .map_err(|_| ApiError::bad_request("modality must be email, im or call"))?,
        ),
    };
    let text = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if text.is_some_and(|t| t.chars().count() > 200) {
        return Err(ApiError::bad_request(
            "the search is longer than 200 characters",
        ));
    }
    let after = q
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(Cursor::decode)
        .transpose()
        .map_err(|_| ApiError::bad_request("this page of history is no longer valid: reload"))?;
    let filter = |live: Option<bool>, after: Option<Cursor>, limit: u32| SessionFilter {
        live,
        modality,
        query: text.map(String::from),
        phone: text.and_then(|q| {
            crate::domain::phone::phone_search_form(q, state.details.default_calling_code)
        }),
        after,
        limit,
    };
    let mut rows = Vec::new();
    // Live sessions lead the first page (unless only history is asked for).
    if after.is_none() && which != "concluded" {
        let live = state
            .store
            .my_sessions(agent_id, &filter(Some(true), None, LIVE_MAX))
            .await?;
        rows.extend(live.iter().map(session_row));
    }
    if which == "live" {
        return Ok((rows, None));
    }
    let limit = page_limit(Some(HISTORY_PAGE)).unwrap_or(HISTORY_PAGE);
    // One more than the page: "more" only when there is more.
    let mut history = state
        .store
        .my_sessions(agent_id, &filter(Some(false), after, limit + 1))
        .await?;
    let more = cut_to_page(&mut history, limit);
    rows.extend(history.iter().map(session_row));
    let next = more.then(|| history.last()).flatten().map(|s| {
        let cursor = Cursor {
            created_at: s.created_at,
            id: s.id.clone(),
        }
        .encode();
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        url.append_pair("state", "concluded");
        if let Some(m) = modality {
            url.append_pair("modality", m.as_str());
        }
        if let Some(t) = text {
            url.append_pair("q", t);
        }
        url.append_pair("cursor", &cursor);
        format!("/ui/sessions?{}", url.finish())
    });
    Ok((rows, next))
}

/// A service's name as the page shows it (cached; a service removed
/// meanwhile shows its id).
async fn service_name(state: &AppState, id: &str) -> ApiResult<String> {
    Ok(state
        .details
        .service(&state.store, id)
        .await?
        .map_or_else(|| id.to_string(), |s| s.name))
}

/// The waiting work of the agent's services, most urgent first: the first
/// `limit` tasks (a page of them unless the agent asked for more).
async fn queue_view(state: &AppState, services: &[String], limit: Option<u32>) -> ApiResult<Value> {
    let limit = limit.unwrap_or(QUEUE_PAGE).clamp(QUEUE_PAGE, QUEUE_MAX);
    let tasks = state.store.waiting_tasks(services, limit).await?;
    let total = state.store.waiting_count(services).await?;
    let mut names = std::collections::HashMap::new();
    for id in services {
        names.insert(id.as_str(), service_name(state, id).await?);
    }
    let items: Vec<Value> = tasks
        .iter()
        .map(|t| {
            let name = names
                .get(t.service_id.as_str())
                .cloned()
                .unwrap_or_else(|| t.service_id.clone());
            queue_item(t, &name)
        })
        .collect();
    let shown = items.len() as i64;
    let rest = (total - shown).max(0);
    Ok(json!({
        "items": items,
        "total": total,
        "shown": shown,
        "rest": rest,
        // Shown after the next "Show more" (none once the most is shown).
        "more": (rest > 0 && limit < QUEUE_MAX).then(|| rest.min(i64::from(QUEUE_PAGE))),
        "limit": limit,
    }))
}

fn queue_item(t: &Task, service_name: &str) -> Value {
    json!({
        "id": t.id,
        "service": t.service_id,
        "service_name": service_name,
        "modality": t.modality.as_str(),
        "modality_label": modality_label(t.modality),
        "priority": t.priority,
        "subject": t.subject.clone().unwrap_or_else(|| "(no subject)".into()),
        "customer": t.customer.name.clone().or_else(|| t.customer.address.clone()).unwrap_or_else(|| "Anonymous".into()),
        "arrived_at": millis_to_rfc3339(t.arrived_at),
        "arrived_short": short_time(t.arrived_at),
    })
}

/// `GET /`: the workspace. `?session=<id>` opens that session's widgets.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "mySessionsPage",
    tag = "pages",
    summary = "My Sessions",
    description = "The agents' workspace, My Sessions (server-rendered HTML with htmx): the sessions list (live first, then history as the agent scrolls), Waiting work, and the widgets of the selected session (`?session=<id>`). Signed out, it sends the browser to /sign-in (303).",
    params(
        ListQuery,
    ),
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 303, description = "Not signed in: to /sign-in."),
        (status = 400, response = doc::BadRequest),
    ),
    security(()),
)]
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
    Params(q): Params<ListQuery>,
) -> Response {
    let result: ApiResult<String> = async {
        let (rows, next) = list_sessions(&state, &user.agent.id, &q).await?;
        let queue = queue_view(&state, &user.agent.services, None).await?;
        let offers = offers_view(&state, &user.agent.id).await?;
        let presence = state
            .store
            .presence(&user.agent.id, state.routing.grace_ms())
            .await?;
        // A link to a session that is gone, or not the agent's, opens the
        // workspace all the same, saying so where the session would be.
        let (detail, detail_missing) = match q.session.as_deref().filter(|s| !s.is_empty()) {
            Some(id) => match detail_view(&state, &user.agent, id).await {
                Ok(d) => (Some(d), false),
                Err(e)
                    if e.status == StatusCode::NOT_FOUND || e.status == StatusCode::FORBIDDEN =>
                {
                    (None, true)
                }
                Err(e) => return Err(e),
            },
            None => (None, false),
        };
        render(
            "workspace.html",
            &json!({
                "title": "My Sessions",
                "agent": agent_view(&user),
                "csrf": user.csrf,
                "rows": rows,
                "next": next,
                "first": true,
                "queue": queue,
                "offers": offers,
                "presence": presence_choice(presence.status),
                "detail": detail,
                "detail_missing": detail_missing,
                "filters": {
                    "state": q.state.clone().unwrap_or_default(),
                    "modality": q.modality.clone().unwrap_or_default(),
                    "q": q.q.clone().unwrap_or_default(),
                },
                "services": user.agent.services,
            }),
        )
    }
    .await;
    match result {
        Ok(body) => super::with_frames(
            html(&headers, StatusCode::OK, body),
            &embed_origins(&state, &user.agent.services).await,
        ),
        Err(e) => error_response(&headers, Some(&user), e),
    }
}

/// Where the embedded context of `services` is framed from (the page's
/// `frame-src`); a service that cannot be read adds nothing.
async fn embed_origins(state: &AppState, services: &[String]) -> Vec<String> {
    let mut origins = Vec::new();
    for id in services {
        if let Ok(service) = state.store.service(id).await {
            for origin in service
                .settings
                .context_links
                .iter()
                .filter_map(|l| l.embed_origin())
            {
                if !origins.contains(&origin) {
                    origins.push(origin);
                }
            }
        }
    }
    origins
}

/// `GET /ui/sessions`: rows of the sessions list (filters, next page).
#[utoipa::path(
    get,
    path = "/ui/sessions",
    operation_id = "uiSessions",
    tag = "pages",
    summary = "Sessions list fragment",
    description = "Fragment: rows of the sessions list for the filters (live first, then history; `cursor` for older pages). Signed out: 401 (with `HX-Redirect: /sign-in` for htmx).",
    params(
        ListQuery,
    ),
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn rows(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
    Params(q): Params<ListQuery>,
) -> Response {
    let result = async {
        let (rows, next) = list_sessions(&state, &user.agent.id, &q).await?;
        render(
            "session_rows.html",
            &json!({"rows": rows, "next": next, "first": q.cursor.is_none()}),
        )
    }
    .await;
    match result {
        Ok(body) => html(&headers, StatusCode::OK, body),
        Err(e) => error_response(&headers, Some(&user), e),
    }
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// How many waiting tasks to show, most urgent first (50 by default, at most 1000): "Show more" asks for more.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// `GET /ui/queue`: Waiting work.
#[utoipa::path(
    get,
    path = "/ui/queue",
    operation_id = "uiQueue",
    tag = "pages",
    summary = "Waiting work fragment",
    description = "Fragment: Waiting work, the queued tasks of the agent's services, most urgent first (the first `limit`).",
    params(QueueQuery),
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn queue(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
    Params(q): Params<QueueQuery>,
) -> Response {
    let result = async {
        let queue = queue_view(&state, &user.agent.services, q.limit).await?;
        render("queue.html", &json!({"queue": queue}))
    }
    .await;
    match result {
        Ok(body) => html(&headers, StatusCode::OK, body),
        Err(e) => error_response(&headers, Some(&user), e),
    }
}

/// The presence selector's options, with the agent's own one selected.
pub fn presence_choice(current: Presence) -> Value {
    let options: Vec<Value> = Presence::ALL
        .iter()
        .map(|p| {
            json!({
                "value": p.as_str(),
                "label": match p {
                    Presence::Available => "Available",
                    Presence::Busy => "Busy",
                    Presence::Away => "Away",
                    Presence::Offline => "Offline",
                },
                "selected": *p == current,
            })
        })
        .collect();
    json!({"status": current.as_str(), "options": options})
}

/// The agent's pending offers, soonest deadline first.
async fn offers_view(state: &AppState, agent_id: &str) -> ApiResult<Vec<Value>> {
    let offers = state.store.my_offers(agent_id).await?;
    let mut items = Vec::with_capacity(offers.len());
    for (session, task) in &offers {
        // Cached (the card refreshes often); a service removed meanwhile shows its id.
        let service = state
            .details
            .service(&state.store, &task.service_id)
            .await?
            .map_or_else(|| task.service_id.clone(), |s| s.name);
        items.push(json!({
            "session": session.id,
            "task": task.id,
            "modality": task.modality.as_str(),
            "modality_label": modality_label(task.modality),
            "service": service,
            "subject": task.subject.clone().unwrap_or_else(|| "(no subject)".into()),
            "customer": task.customer.name.clone().or_else(|| task.customer.address.clone()).unwrap_or_else(|| "Anonymous".into()),
            "customer_kind": customer_kind_label(task.customer.kind),
            "priority": task.priority,
            "expires_at": time(session.expires_at),
        }));
    }
    Ok(items)
}

/// `GET /ui/offers`: the incoming offers card (empty when there is none).
#[utoipa::path(
    get,
    path = "/ui/offers",
    operation_id = "uiOffers",
    tag = "pages",
    summary = "Incoming offers fragment",
    description = "Fragment: the agent's pending offers (modality, service, customer, subject, the time left before RONA) with Accept and Decline; empty when there is none.",
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 401, response = doc::Unauthorized),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn offers(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    let result = async {
        let offers = offers_view(&state, &user.agent.id).await?;
        render("offers.html", &json!({"offers": offers}))
    }
    .await;
    match result {
        Ok(body) => html(&headers, StatusCode::OK, body),
        Err(e) => error_response(&headers, Some(&user), e),
    }
}

/// The colleagues' list for a task of this service (its members only). The
/// page asks with `hx-params="none"`: htmx would send the list's own value.
#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransferAgentsQuery {
    /// Only the members of this service (the task's).
    service: Option<String>,
    /// The task's channel: a colleague at their capacity for it has no room.
    modality: Option<Modality>,
}

/// `GET /ui/transfer-agents`: the colleagues a task can be transferred to,
/// those who can take it now first (loaded when the agent opens the list).
#[utoipa::path(
    get,
    path = "/ui/transfer-agents",
    operation_id = "uiTransferAgents",
    tag = "pages",
    summary = "Transfer colleagues fragment",
    description = "Fragment: the options of the transfer-to-a-colleague list (the members of `service` when given), the agents who can take work now first.",
    params(TransferAgentsQuery),
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 401, response = doc::Unauthorized),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn transfer_agents(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
    Params(q): Params<TransferAgentsQuery>,
) -> Response {
    let result = async {
        let mut agents: Vec<Value> = state
            .store
            .agents_overview(state.routing.grace_ms())
            .await?
            .iter()
            .filter(|a| a.id != user.agent.id && !a.services.is_empty())
            .filter(|a| q.service.as_ref().is_none_or(|s| a.services.contains(s)))
            .map(|a| {
                // Room for the task now: taking work, and under their
                // capacity for its channel (offers counted, as transfer does).
                let room = a.routable
                    && q.modality.is_none_or(|m| {
                        let l = a.load[crate::domain::routing::slot(m)];
                        l.offered + l.connected < i64::from(l.capacity)
                    });
                json!({
                    "id": a.id,
                    "name": a.name,
                    "presence": a.presence.effective.as_str(),
                    "routable": room,
                })
            })
            .collect();
        agents.sort_by_key(|a| !a["routable"].as_bool().unwrap_or(false));
        render("transfer_agents.html", &json!({"agents": agents}))
    }
    .await;
    match result {
        Ok(body) => html(&headers, StatusCode::OK, body),
        Err(e) => error_response(&headers, Some(&user), e),
    }
}

/// `GET /ui/sessions/{id}`: the widgets of one of the agent's sessions.
#[utoipa::path(
    get,
    path = "/ui/sessions/{id}",
    operation_id = "uiSession",
    tag = "pages",
    summary = "Session widgets fragment",
    description = "Fragment: the widgets of one of the agent's sessions (result and connected time, session details, codes and tags, email widget).",
    params(
        ("id" = String, Path, description = "A session id."),
    ),
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, description = "Not one of the caller's sessions.", body = String, content_type = "text/html"),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
    Id(id): Id<String>,
) -> Response {
    let result = async {
        let detail = detail_view(&state, &user.agent, &id).await?;
        render(
            "session_detail.html",
            &json!({"detail": detail, "csrf": user.csrf}),
        )
    }
    .await;
    match result {
        Ok(body) => html(&headers, StatusCode::OK, body),
        Err(e) => error_response(&headers, Some(&user), e),
    }
}

/// The tags as the page's one text field shows them: separated by commas,
/// a tag holding a comma or a double quote written in double quotes (its
/// quotes doubled), as `static/app.js` reads them back.
fn tags_text(tags: &[String]) -> String {
    tags.iter()
        .map(|t| {
            if t.contains([',', '"']) {
                format!("\"{}\"", t.replace('"', "\"\""))
            } else {
                t.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn customer_kind_label(k: CustomerKind) -> &'static str {
    match k {
        CustomerKind::Internal => "Internal (directory)",
        CustomerKind::External => "External contact",
        CustomerKind::Anonymous => "Anonymous",
    }
}

/// A parameter's value in words: a text as it is, a list joined, an object
/// as `name: value` pairs (a chat's `customer`), never raw JSON.
fn param_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items
            .iter()
            .map(param_text)
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| (k, param_text(v)))
            .filter(|(_, t)| !t.is_empty())
            .map(|(k, t)| format!("{k}: {t}"))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// Everything the widgets of a session show.
pub async fn detail_view(
    state: &AppState,
    agent: &crate::store::Agent,
    id: &str,
) -> ApiResult<Value> {
    let session = state.store.session(id).await?;
    if session.agent_id != agent.id {
        return Err(ApiError::not_found(
            "this session is not one of yours (or does not exist)",
        ));
    }
    let task = state.store.task(&session.task_id).await?;
    let service = state.store.service(&session.service_id).await?;
    let mut row = session_row(&session);
    row["answered_at"] = time(session.answered_at);
    row["ended_at"] = time(session.ended_at);
    row["saved_at"] = time(session.saved_at);
    row["saved_short"] = json!(session.saved_at.map(short_time));
    let holds = session.state == SessionState::Connected;
    let codes_for = |slot: CodeKind, picked: &[String]| -> Vec<Value> {
        service
            .codes
            .iter()
            .filter(|c| c.active && (c.kind == slot || c.kind == CodeKind::Any))
            .map(|c| {
                json!({
                    "code": c.code,
                    "label": c.label,
                    "checked": picked.contains(&c.code),
                })
            })
            // A code retired since it was picked stays shown, and kept.
            .chain(
                picked
                    .iter()
                    .filter(|p| !service.codes.iter().any(|c| &c.code == *p))
                    .map(|p| json!({"code": p, "label": p, "checked": true, "retired": true})),
            )
            .collect()
    };
    let label_of = |code: &String| {
        service
            .codes
            .iter()
            .find(|c| &c.code == code)
            .map_or_else(|| code.clone(), |c| c.label.clone())
    };
    let params: Vec<Value> = task
        .params
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| json!({"name": k, "value": param_text(v)}))
                .collect()
        })
        .unwrap_or_default();
    let mut transfer_targets = Vec::new();
    for id in state.store.service_ids().await? {
        if id != task.service_id {
            let name = service_name(state, &id).await?;
            transfer_targets.push(json!({"id": id, "name": name}));
        }
    }
    let moved_to = if task.service_id != session.service_id {
        Some(service_name(state, &task.service_id).await?)
    } else {
        None
    };
    // An agent whose part is over reads what had come in until then.
    let until =
        crate::http::tasks::read_until(agent, &task, &state.store.task_sessions(&task.id).await?);
    let email = if task.modality == Modality::Email {
        Some(email_view(state, agent, &task, holds, until).await?)
    } else {
        None
    };
    let context = crate::http::details::session_context(state, &task, &session).await?;
    let im = if task.modality == Modality::Im {
        Some(im_view(state, &task, holds, until).await?)
    } else {
        None
    };
    let call = if task.modality == Modality::Call {
        Some(call_view(state, &task, until).await?)
    } else {
        None
    };
    let mut context = context_view(&context);
    // Links the service has but left out here (their values unknown) are
    // not "no links in this service".
    context["links_configured"] = json!(!service.settings.context_links.is_empty());
    // Changes when what the details widget shows does: a refresh while the
    // agent types replaces it only then (an embedded page is not reloaded
    // at every chat line).
    let context_version = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        context.to_string().hash(&mut h);
        task.service_id.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    // The customer left (hung up, left the chat) while this part is live:
    // the part goes on to its wrap-up, but the contact itself is over.
    let left_at = task
        .customer_left_at
        .filter(|_| session.state.is_live())
        .map(millis_to_rfc3339);
    let left_words = match task.modality {
        Modality::Call => "The caller hung up",
        Modality::Im => "The customer left the chat",
        Modality::Email => "The customer left",
    };
    Ok(json!({
        "im": im,
        "call": call,
        "left_at": left_at,
        "left_words": left_words,
        "context": context,
        "context_version": context_version,
        "session": row,
        "live": session.state.is_live(),
        "holds": holds,
        "can_wrapup": matches!(session.state, SessionState::Connected | SessionState::WrapUp),
        "can_save": session.state == SessionState::WrapUp,
        // Saved by the agent (a declined or unanswered offer concludes without a save).
        "saved": session.state == SessionState::Concluded && session.saved_at.is_some(),
        "concluded": session.state == SessionState::Concluded,
        "wrapup": {
            "primary": session.wrapup.codes.primary.iter().map(label_of).collect::<Vec<_>>(),
            "secondary": session.wrapup.codes.secondary.iter().map(label_of).collect::<Vec<_>>(),
            "tags": session.wrapup.tags,
            "tags_text": tags_text(&session.wrapup.tags),
            "etag": session.wrapup.fingerprint(),
        },
        "codes": {
            "enabled": service.settings.codes_enabled,
            "primary": codes_for(CodeKind::Primary, &session.wrapup.codes.primary),
            "secondary": codes_for(CodeKind::Secondary, &session.wrapup.codes.secondary),
        },
        "task": {
            "id": task.id,
            "state": task.state.as_str(),
            "queued": task.state == TaskState::Queued,
            // The service of this session (the task may have moved on).
            "service": session.service_id,
            "service_name": service.name,
            "moved_to": moved_to,
            "modality": task.modality.as_str(),
            "modality_label": modality_label(task.modality),
            "priority": task.priority,
            "arrived_at": millis_to_rfc3339(task.arrived_at),
            "arrived_short": short_time(task.arrived_at),
            "subject": task.subject,
            "external_id": task.external_id,
            "customer": {
                "kind": task.customer.kind.as_str(),
                "kind_label": customer_kind_label(task.customer.kind),
                "name": task.customer.name,
                "address": task.customer.address,
            },
            "params": params,
        },
        "transfer_targets": transfer_targets,
        "email": email,
    }))
}

/// The session details widget: the customer with what is known of them,
/// the parameters, and the conversation context links.
fn context_view(c: &crate::http::details::ContextView) -> Value {
    use crate::domain::context::{LinkKind, NotAvailable};
    let known = |label: &str, v: &Option<String>| {
        v.as_ref()
            .filter(|v| !v.is_empty())
            .map(|v| json!({"label": label, "value": v}))
    };
    let cu = &c.customer;
    let customer: Vec<Value> = [
        // The name leads the widget already (as `display`).
        known("Name", &cu.name.clone().filter(|n| *n != cu.display)),
        known("E-mail", &cu.email),
        known("Phone", &cu.phone),
        known("UPN", &cu.upn),
        known("Reached us from", &cu.address),
        known("Company", &cu.company),
        known("Postal address", &cu.postal_address),
        known("IP address", &cu.ip),
        known("Reference", &cu.reference),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (system, custom) = match &c.parameters {
        Some(p) => {
            let s = &p.system;
            let system: Vec<Value> = [known("Language", &s.language), known("Reached", &s.reached)]
                .into_iter()
                .flatten()
                .collect();
            let custom: Vec<Value> = p
                .custom
                .iter()
                .map(|(k, v)| json!({"label": k, "value": param_text(v)}))
                .collect();
            (system, custom)
        }
        None => (Vec::new(), Vec::new()),
    };
    // Only web links become links (templates are checked, this is a second lock).
    let links: Vec<Value> = c
        .context_links
        .iter()
        .filter(|l| l.url.starts_with("https://") || l.url.starts_with("http://"))
        .map(|l| {
            json!({
                "label": l.label,
                "url": l.url,
                "map": l.kind == LinkKind::Map,
                "embed": l.embed,
                "incomplete": !l.missing.is_empty(),
            })
        })
        .collect();
    let why = c.reason.map(|r| match r {
        NotAvailable::NotKept => {
            "this service does not keep session details once a session is over"
        }
        NotAvailable::Expired => {
            "the stored details of this session have been deleted (their days are over)"
        }
        NotAvailable::Ended => "the task has ended",
    });
    json!({
        "available": c.available,
        "stored": c.source == Some("stored"),
        "kept_until": c.kept_until,
        "why": why,
        "kind_label": customer_kind_label(cu.kind),
        "display": cu.display,
        "customer": customer,
        "system": system,
        "custom": custom,
        "links": links,
    })
}

/// Transcript lines shown at most (the newest).
const TRANSCRIPT_MAX: usize = 500;

/// The newest [`TRANSCRIPT_MAX`] lines of a transcript as the page shows
/// them (who, when, what), and how many older ones are left out.
fn transcript_lines(
    task: &Task,
    transcript: &[crate::store::chats::ChatMessage],
) -> (Vec<Value>, usize) {
    let skipped = transcript.len().saturating_sub(TRANSCRIPT_MAX);
    let lines = transcript[skipped..]
        .iter()
        .map(|m| {
            let who = match m.sender.as_str() {
                "customer" => "Customer",
                "agent" => "Agent",
                "bot" => "Bot",
                _ => "System",
            };
            json!({
                "sender": m.sender,
                "who": m
                    .sender_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .or_else(|| (m.sender == "customer").then(|| task.customer.name.clone()).flatten())
                    .unwrap_or_else(|| who.into()),
                "text": m.text,
                "sent_at": millis_to_rfc3339(m.sent_at),
                "sent_short": short_time(m.sent_at),
                "delivery": m.delivery,
            })
        })
        .collect();
    (lines, skipped)
}

/// The call widget: the transcript telephony posted, as it grows.
async fn call_view(state: &AppState, task: &Task, until: Option<i64>) -> ApiResult<Value> {
    let mut transcript = state.store.call_transcript(&task.id).await?;
    transcript.retain(|m| until.is_none_or(|u| m.received_at <= u));
    let (lines, skipped) = transcript_lines(task, &transcript);
    Ok(json!({
        "lines": lines,
        "skipped": skipped,
        "empty": if task.customer_left_at.is_some() || task.state.is_final() {
            "No transcript was posted for this call."
        } else {
            "No transcript yet: telephony adds it as the call goes."
        },
    }))
}

/// The IM widget: the chat's state, its transcript as it grows, and whether
/// the agent may open it (only the holder gets an open-chat handle).
async fn im_view(
    state: &AppState,
    task: &Task,
    holds: bool,
    until: Option<i64>,
) -> ApiResult<Value> {
    let chat = state.store.chat_of_task(task).await?;
    let mut transcript = state.store.chat_transcript(&task.id).await?;
    transcript.retain(|m| until.is_none_or(|u| m.received_at <= u));
    let (lines, skipped) = transcript_lines(task, &transcript);
    // A leave told through the API (`POST …/cancel`) is the task's, not
    // the chat's: the customer left all the same.
    let chat_state = chat.as_ref().map(|c| match c.state.as_str() {
        "open" if task.customer_left_at.is_some() => "The customer left",
        "open" => "Open",
        "left" => "The customer left",
        "ended" => "Ended",
        _ => "Unknown",
    });
    Ok(json!({
        "has_chat": chat.is_some(),
        "state": chat_state,
        "channel": chat.as_ref().map(|c| c.channel_id.clone()),
        "lines": lines,
        "skipped": skipped,
        "empty": "No messages yet.",
        "can_open": holds && chat.as_ref().is_some_and(|c| c.state != "ended"),
        // A channel with relay on takes the holder's words from this page.
        "can_write": holds
            && chat.as_ref().is_some_and(|c| {
                c.state != "ended"
                    && state.chat.channel(&c.channel_id).is_some_and(|ch| ch.config.relay)
            }),
        "ended_for_holder": holds && chat.as_ref().is_some_and(|c| c.state == "ended"),
    }))
}

fn names(list: &Value) -> String {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    let email = x["email"].as_str()?;
                    Some(match x["name"].as_str().filter(|n| !n.is_empty()) {
                        Some(n) => format!("{n} <{email}>"),
                        None => email.to_string(),
                    })
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn draft_state_label(state: &str) -> &'static str {
    match state {
        "draft" => "Draft (not sent)",
        "queued" => "Queued for sending",
        "sending" => "Sending",
        "sent" => "Sent",
        "failed" => "Failed",
        _ => "Unknown",
    }
}

/// One message of the email widget: who, when, what, its attachments and
/// preview, read through `token` (a link token of the task it belongs to).
fn mail_card(m: &crate::store::MessageCard, token: &str, open: bool) -> Value {
    let attachments: Vec<Value> = m
        .attachments
        .iter()
        .filter(|a| !(a.inline && a.content_id.is_some() && a.content_type.starts_with("image/")))
        .map(|a| {
            json!({
                "name": a.display_name(),
                "size": crate::mail::document::human_size(a.size as u64),
                "url": format!("/api/v1/attachments/{}.{}?token={token}", m.id, a.part_index),
            })
        })
        .collect();
    let preview = format!("/api/v1/messages/{}/preview?token={token}", m.id);
    json!({
        "id": m.id,
        "direction": m.direction,
        "inbound": m.direction == "inbound",
        "kind": m.kind,
        "subject": m.subject.clone().unwrap_or_else(|| "(no subject)".into()),
        "from": match (&m.from_name, &m.from_address) {
            (Some(n), Some(a)) if !n.is_empty() => format!("{n} <{a}>"),
            (_, Some(a)) => a.clone(),
            _ => "unknown sender".into(),
        },
        "to": names(&m.recipients["to"]),
        "received_at": millis_to_rfc3339(m.received_at),
        "received_short": short_time(m.received_at),
        "delivery_status": m.delivery_status,
        "preview_url": preview,
        "attachments": attachments,
        "open": open,
    })
}

/// The email widget: the conversation, its previews and attachments, and
/// the agent's replies with their state.
async fn email_view(
    state: &AppState,
    agent: &crate::store::Agent,
    task: &Task,
    holds: bool,
    until: Option<i64>,
) -> ApiResult<Value> {
    let mut cards = state.store.task_message_cards(&task.id).await?;
    cards.retain(|m| until.is_none_or(|u| m.received_at <= u));
    let (token, _) = crate::http::preview::task_link_until(state, &task.id, until);
    // The mail a reply answers: a person's newest, else an automatic one's
    // (as `Store::latest_inbound_message` picks it).
    let inbound = || cards.iter().rev().filter(|m| m.direction == "inbound");
    let newest_inbound = inbound()
        .find(|m| m.kind == "normal")
        .or_else(|| inbound().next())
        .map(|m| m.id.clone());
    let mut messages = Vec::with_capacity(cards.len());
    for m in &cards {
        let open = Some(&m.id) == newest_inbound.as_ref();
        messages.push(mail_card(m, &token, open));
    }
    // The earlier exchange of the conversation (a follow-up's predecessors):
    // each message is read through a link of the task it belongs to.
    let mut older = state
        .store
        .earlier_message_cards(&task.id, crate::http::preview::EARLIER_SHOWN + 1)
        .await?;
    let earlier_more = older.len() > crate::http::preview::EARLIER_SHOWN;
    if earlier_more {
        older.remove(0);
    }
    let mut earlier = Vec::with_capacity(older.len());
    for (m, _, token) in crate::http::preview::earlier_links(state, task.arrived_at, &older) {
        earlier.push(mail_card(m, &token, false));
    }
    let drafts: Vec<Value> = state
        .store
        .task_drafts(&task.id, &agent.id)
        .await?
        .iter()
        .map(|d| {
            json!({
                "id": d.id,
                "kind": d.kind,
                "state": d.state,
                "state_label": draft_state_label(&d.state),
                "editable": d.state == "draft" || d.state == "failed",
                "subject": d.subject,
                "to": d.to.iter().map(|a| a.email.clone()).collect::<Vec<_>>().join(", "),
                "attachments": d.attachments.len(),
                "last_error": d.last_error,
                "smtp_response": d.smtp_response,
                "queued_at": time(d.queued_at),
                "sent_at": time(d.sent_at),
                "sent_short": d.sent_at.map(short_time),
                "updated_at": millis_to_rfc3339(d.updated_at),
                "updated_short": short_time(d.updated_at),
            })
        })
        .collect();
    Ok(json!({
        "messages": messages,
        "earlier": earlier,
        "earlier_more": earlier_more,
        "has_mail": !cards.is_empty(),
        "can_reply": holds && newest_inbound.is_some(),
        "holds": holds,
        "drafts": drafts,
        "can_send": state.can_send,
    }))
}

/// `GET /ui/ping`: 204 while the browser is signed in (the page asks when
/// its event stream drops, to tell "signed out" from "network down").
#[utoipa::path(
    get,
    path = "/ui/ping",
    operation_id = "uiPing",
    tag = "pages",
    summary = "Signed in?",
    description = "204 while the browser session is valid; 401 otherwise (the page asks when its event stream drops).",
    responses(
        (status = 204, description = "Signed in."),
        (status = 401, response = doc::Unauthorized),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn ping(PageUser(_): PageUser) -> impl IntoResponse {
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::{param_text, tags_text};
    use serde_json::json;

    #[test]
    fn parameters_read_as_words_not_json() {
        assert_eq!(param_text(&json!("#1111")), "#1111");
        assert_eq!(param_text(&json!(3)), "3");
        assert_eq!(param_text(&json!(["a", "b", null])), "a, b");
        assert_eq!(
            param_text(&json!({"email": "dana@customer.example", "name": "Dana", "user_id": null})),
            "email: dana@customer.example; name: Dana"
        );
    }

    #[test]
    fn tags_with_commas_or_quotes_are_quoted_for_the_page() {
        let tags = ["vip".to_string(), "a,b".into(), "he said \"hi\"".into()];
        assert_eq!(tags_text(&tags), "vip, \"a,b\", \"he said \"\"hi\"\"\"");
    }
}
