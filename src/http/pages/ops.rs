//! The operators' page, `/ops` (admins): queues, agents, mailboxes, chat
//! channels, the quarantine and failing webhook deliveries, refreshed live.
use super::workspace::modality_label;
use super::{PageUser, agent_view, error_response, html, message_page, render};
use crate::domain::routing::slot;
use crate::domain::{Modality, millis_to_rfc3339};
use crate::http::AppState;
use crate::http::doc;
use crate::http::error::ApiResult;
use crate::http::ops::lag_seconds;
use crate::mail::document::human_size;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

fn when(ms: Option<i64>) -> Value {
    match ms {
        Some(m) => json!({
            "iso": millis_to_rfc3339(m),
            "short": chrono::DateTime::from_timestamp_millis(m)
                .map(|d| d.format("%d %b %H:%M:%S UTC").to_string())
                .unwrap_or_default(),
        }),
        None => Value::Null,
    }
}

fn lag_text(secs: f64) -> String {
    let s = secs.round() as i64;
    match s {
        0 => "in sync".into(),
        1..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

fn state_label(status: &str) -> &'static str {
    match status {
        "idle" => "Up (push)",
        "polling" => "Up (polling)",
        "syncing" => "Syncing",
        "connecting" => "Connecting",
        "error" => "Failing",
        "waiting" => "Waiting for a worker",
        _ => "Unknown",
    }
}

async fn mailboxes_view(state: &AppState) -> ApiResult<Vec<Value>> {
    let now = crate::domain::now_millis();
    Ok(state
        .store
        .mailboxes()
        .await?
        .iter()
        .map(|m| {
            let up = matches!(m.status.as_str(), "idle" | "polling" | "syncing");
            json!({
                "id": m.id,
                "service": m.service,
                "kind": m.kind,
                "source": m.description,
                "status": m.status,
                "state_label": state_label(&m.status),
                "up": up,
                "push": m.push,
                "worker": m.worker,
                "last_sync": when(m.synced_at.or(m.last_sync_at)),
                "last_error": m.last_error,
                "last_error_at": when(m.last_error_at),
                "backlog": m.backlog,
                "lag": lag_text(lag_seconds(m, now)),
                "ingested": m.ingested_total,
                "duplicates": m.duplicates_total,
                "errors": m.errors_total,
                "quarantined": m.quarantined,
            })
        })
        .collect())
}

fn reason_label(reason: &str) -> &'static str {
    match reason {
        "too_large" => "Too large",
        "unparseable" => "Cannot be read",
        "timeout" => "Took too long to read",
        "unstorable" => "Refused by the database",
        _ => "Held",
    }
}

async fn quarantine_view(state: &AppState) -> ApiResult<Vec<Value>> {
    Ok(state
        .store
        .quarantine(Some("held"), 100)
        .await?
        .iter()
        .map(|q| {
            json!({
                "id": q.id,
                "mailbox": q.mailbox_id,
                "service": q.service_id,
                "reason": q.reason,
                "reason_label": reason_label(&q.reason),
                "detail": q.detail,
                "size": human_size(q.size.max(0) as u64),
                "raw_kept": q.has_raw,
                "created": when(Some(q.created_at)),
            })
        })
        .collect())
}

/// What automatic mail was taken for, for people.
fn kind_label(kind: &str) -> &'static str {
    match kind {
        "auto_reply" => "Auto-reply",
        "bulk" => "Bulk mail",
        "bounce" => "Bounce",
        _ => "Automatic mail",
    }
}

/// The newest recorded mail, and how many there are in all.
async fn recorded_view(state: &AppState) -> ApiResult<Value> {
    let total = state.store.recorded_count(None).await?;
    let items: Vec<Value> = state
        .store
        .recorded_mail(None, None, 50)
        .await?
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "service": m.service_id,
                "mailbox": m.mailbox_id,
                "kind_label": kind_label(&m.kind),
                "from": m.from_address,
                "from_name": m.from_name,
                "subject": m.subject.as_deref().unwrap_or("(no subject)"),
                "received": when(Some(m.received_at)),
            })
        })
        .collect();
    Ok(json!({"items": items, "total": total}))
}

fn wait_text(secs: i64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

/// Every queue (a service and a modality): depth, oldest waiting, agents.
async fn queues_view(state: &AppState) -> ApiResult<Vec<Value>> {
    let now = crate::domain::now_millis();
    Ok(state
        .store
        .queue_overview(state.routing.grace_ms())
        .await?
        .iter()
        .map(|q| {
            json!({
                "service": q.service_id,
                "modality": modality_label(q.modality),
                "distribution": q.distribution.as_str().replace('_', " "),
                "queued": q.queued,
                "offered": q.offered,
                "connected": q.connected,
                "oldest": q.oldest_queued_at.map(|t| wait_text((now - t).max(0) / 1000)),
                "agents_available": q.agents_available,
                "agents_busy": q.agents_busy,
            })
        })
        .collect())
}

/// Every agent: presence as set and as routing sees it, load per modality.
async fn agents_view(state: &AppState) -> ApiResult<Vec<Value>> {
    Ok(state
        .store
        .agents_overview(state.routing.grace_ms())
        .await?
        .iter()
        .map(|a| {
            let load: Vec<Value> = Modality::ALL
                .iter()
                .map(|m| {
                    let l = a.load[slot(*m)];
                    json!({
                        "modality": modality_label(*m),
                        "connected": l.connected,
                        "offered": l.offered,
                        "capacity": l.capacity,
                    })
                })
                .collect();
            let p = &a.presence;
            json!({
                "id": a.id,
                "name": a.name,
                "services": a.services.join(", "),
                "status": p.status.as_str(),
                "effective": p.effective.as_str(),
                // Set available (or busy…) but their page is gone: routing sees them offline.
                "away_from_client": p.effective != p.status,
                "paused_until": when(p.paused_until),
                "routable": a.routable,
                "load": load,
            })
        })
        .collect())
}

/// Every chat channel with its health.
async fn channels_view(state: &AppState) -> ApiResult<Vec<Value>> {
    let now = crate::domain::now_millis();
    Ok(state
        .store
        .chat_channels()
        .await?
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "service": c.service,
                "kind": c.kind,
                "source": c.description,
                "status": c.status,
                "up": matches!(c.status.as_str(), "idle" | "syncing" | "ready" | "consuming"),
                "worker": c.worker,
                "last_event": when(c.last_event_at),
                "last_error": c.last_error,
                "last_error_at": when(c.last_error_at),
                "lag": lag_text(crate::http::chat::lag_seconds(c, now)),
                "events": c.events_total,
                "messages": c.messages_total,
                "duplicates": c.duplicates_total,
                "errors": c.errors_total,
                "chats": c.chats_total,
                "live_chats": c.chats_live,
            })
        })
        .collect())
}

/// Webhook deliveries shown at most, per state.
const DELIVERIES_MAX: u32 = 50;

/// Webhook deliveries that need an operator: dead letters (with Redeliver)
/// and deliveries still being retried after a failure.
async fn deliveries_view(state: &AppState) -> ApiResult<Vec<Value>> {
    let list = |which: &str| crate::store::webhooks::DeliveryFilter {
        state: Some(which.into()),
        subscription: None,
        task: None,
        before: None,
        limit: DELIVERIES_MAX,
    };
    let dead = state.store.deliveries(&list("dead")).await?;
    let pending = state.store.deliveries(&list("pending")).await?;
    Ok(dead
        .iter()
        .chain(pending.iter().filter(|d| d.attempts > 0))
        .map(|d| {
            let dead = d.state == "dead";
            json!({
                "id": d.id,
                "subscription": d.subscription_id,
                "kind": d.kind,
                "task": d.task_id,
                "dead": dead,
                "state_label": if dead { "Dead letter" } else { "Retrying" },
                "attempts": d.attempts,
                "last_attempt": when(d.last_attempt_at),
                "next_attempt": when(d.next_attempt_at.filter(|_| !dead)),
                "last_status": d.last_status,
                "last_error": d.last_error,
            })
        })
        .collect())
}

/// The parts of the page that refresh by themselves.
#[derive(Clone, Copy)]
enum Part {
    Mailboxes,
    Quarantine,
    Recorded,
    Queues,
    Agents,
    Channels,
    Deliveries,
}

/// One admins' fragment of the page, refreshed live.
async fn fragment(
    state: &AppState,
    headers: &HeaderMap,
    user: &crate::http::web_auth::SignedIn,
    part: Part,
) -> Response {
    if !user.agent.admin {
        return not_admin(headers, user);
    }
    let result = async {
        match part {
            Part::Mailboxes => render(
                "ops_mailboxes.html",
                &json!({"mailboxes": mailboxes_view(state).await?}),
            ),
            Part::Quarantine => render(
                "ops_quarantine.html",
                &json!({"quarantine": quarantine_view(state).await?}),
            ),
            Part::Recorded => render(
                "ops_recorded.html",
                &json!({"recorded": recorded_view(state).await?}),
            ),
            Part::Queues => render(
                "ops_queues.html",
                &json!({"queues": queues_view(state).await?}),
            ),
            Part::Agents => render(
                "ops_agents.html",
                &json!({"agents": agents_view(state).await?}),
            ),
            Part::Channels => render(
                "ops_channels.html",
                &json!({"channels": channels_view(state).await?}),
            ),
            Part::Deliveries => render(
                "ops_deliveries.html",
                &json!({"deliveries": deliveries_view(state).await?}),
            ),
        }
    }
    .await;
    match result {
        Ok(body) => html(headers, StatusCode::OK, body),
        Err(e) => error_response(headers, Some(user), e),
    }
}

/// `GET /ui/ops/queues`.
#[utoipa::path(
    get,
    path = "/ui/ops/queues",
    operation_id = "uiOpsQueues",
    tag = "pages",
    summary = "Queues fragment",
    description = "Fragment of the operators' page: every queue (service and modality) with its depth, oldest waiting, offered and connected tasks and the agents available and busy (admins).",
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 401, response = doc::Unauthorized),
        (status = 403, description = "Not an admin.", body = String, content_type = "text/html"),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn queues(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    fragment(&state, &headers, &user, Part::Queues).await
}

/// `GET /ui/ops/agents`.
#[utoipa::path(
    get,
    path = "/ui/ops/agents",
    operation_id = "uiOpsAgents",
    tag = "pages",
    summary = "Agents fragment",
    description = "Fragment of the operators' page: every agent's presence (as set and as routing sees it) and load per modality (admins).",
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 401, response = doc::Unauthorized),
        (status = 403, description = "Not an admin.", body = String, content_type = "text/html"),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn agents(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    fragment(&state, &headers, &user, Part::Agents).await
}

/// `GET /ui/ops/channels`.
#[utoipa::path(
    get,
    path = "/ui/ops/channels",
    operation_id = "uiOpsChannels",
    tag = "pages",
    summary = "Chat channels fragment",
    description = "Fragment of the operators' page: every chat channel with its state, last event, lag, counts and last error (admins).",
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 401, response = doc::Unauthorized),
        (status = 403, description = "Not an admin.", body = String, content_type = "text/html"),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn channels(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    fragment(&state, &headers, &user, Part::Channels).await
}

/// `GET /ui/ops/deliveries`.
#[utoipa::path(
    get,
    path = "/ui/ops/deliveries",
    operation_id = "uiOpsDeliveries",
    tag = "pages",
    summary = "Webhook deliveries fragment",
    description = "Fragment of the operators' page: webhook deliveries being retried after a failure and dead letters, with Redeliver (admins).",
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 401, response = doc::Unauthorized),
        (status = 403, description = "Not an admin.", body = String, content_type = "text/html"),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    fragment(&state, &headers, &user, Part::Deliveries).await
}

fn not_admin(headers: &HeaderMap, user: &crate::http::web_auth::SignedIn) -> Response {
    message_page(
        headers,
        StatusCode::FORBIDDEN,
        "For operators only",
        "The operators' page is for administrators. Your sessions are on My Sessions.",
        Some(user),
    )
}

/// `GET /ops`.
#[utoipa::path(
    get,
    path = "/ops",
    operation_id = "opsPage",
    tag = "pages",
    summary = "The operators' page",
    description = "The operators' page (admins): mailboxes, the quarantine (retry, release, dismiss, raw download), automatic mail kept without a task (raw download, make a task), queues, agents, chat channels and failing webhook deliveries, refreshed live. Signed out: 303 to /sign-in; not an admin: 403 page.",
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 303, description = "Not signed in: to /sign-in."),
        (status = 403, description = "Not an admin.", body = String, content_type = "text/html"),
    ),
    security(()),
)]
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    if !user.agent.admin {
        return not_admin(&headers, &user);
    }
    let result = async {
        let mailboxes = mailboxes_view(&state).await?;
        let quarantine = quarantine_view(&state).await?;
        let recorded = recorded_view(&state).await?;
        let queues = queues_view(&state).await?;
        let agents = agents_view(&state).await?;
        let channels = channels_view(&state).await?;
        let deliveries = deliveries_view(&state).await?;
        let presence = state
            .store
            .presence(&user.agent.id, state.routing.grace_ms())
            .await?;
        render(
            "ops.html",
            &json!({
                "title": "Operations",
                "agent": agent_view(&user),
                "csrf": user.csrf,
                "mailboxes": mailboxes,
                "quarantine": quarantine,
                "recorded": recorded,
                "queues": queues,
                "agents": agents,
                "channels": channels,
                "deliveries": deliveries,
                "presence": super::workspace::presence_choice(presence.status),
            }),
        )
    }
    .await;
    match result {
        Ok(body) => html(&headers, StatusCode::OK, body),
        Err(e) => error_response(&headers, Some(&user), e),
    }
}

/// `GET /ui/ops/mailboxes`.
#[utoipa::path(
    get,
    path = "/ui/ops/mailboxes",
    operation_id = "uiOpsMailboxes",
    tag = "pages",
    summary = "Mailboxes fragment",
    description = "Fragment of the operators' page: the mailboxes (admins).",
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 401, response = doc::Unauthorized),
        (status = 403, description = "Not an admin.", body = String, content_type = "text/html"),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn mailboxes(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    fragment(&state, &headers, &user, Part::Mailboxes).await
}

/// `GET /ui/ops/recorded`.
#[utoipa::path(
    get,
    path = "/ui/ops/recorded",
    operation_id = "uiOpsRecorded",
    tag = "pages",
    summary = "Recorded mail fragment",
    description = "Fragment of the operators' page: automatic mail kept without a task (admins).",
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 401, response = doc::Unauthorized),
        (status = 403, description = "Not an admin.", body = String, content_type = "text/html"),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn recorded(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    fragment(&state, &headers, &user, Part::Recorded).await
}

/// `GET /ui/ops/quarantine`.
#[utoipa::path(
    get,
    path = "/ui/ops/quarantine",
    operation_id = "uiOpsQuarantine",
    tag = "pages",
    summary = "Quarantine fragment",
    description = "Fragment of the operators' page: the held quarantine (admins).",
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 401, response = doc::Unauthorized),
        (status = 403, description = "Not an admin.", body = String, content_type = "text/html"),
    ),
    security(("cookieAuth" = [])),
)]
pub async fn quarantine(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    fragment(&state, &headers, &user, Part::Quarantine).await
}
