//! The operators' page, `/ops` (admins): mailboxes and the quarantine,
//! refreshed live.
use super::{PageUser, agent_view, error_response, html, message_page, render};
use crate::domain::millis_to_rfc3339;
use crate::http::AppState;
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
pub async fn mailboxes(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    if !user.agent.admin {
        return not_admin(&headers, &user);
    }
    let result = async {
        render(
            "ops_mailboxes.html",
            &json!({"mailboxes": mailboxes_view(&state).await?}),
        )
    }
    .await;
    match result {
        Ok(body) => html(&headers, StatusCode::OK, body),
        Err(e) => error_response(&headers, Some(&user), e),
    }
}

/// `GET /ui/ops/quarantine`.
pub async fn quarantine(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageUser(user): PageUser,
) -> Response {
    if !user.agent.admin {
        return not_admin(&headers, &user);
    }
    let result = async {
        render(
            "ops_quarantine.html",
            &json!({"quarantine": quarantine_view(&state).await?}),
        )
    }
    .await;
    match result {
        Ok(body) => html(&headers, StatusCode::OK, body),
        Err(e) => error_response(&headers, Some(&user), e),
    }
}
