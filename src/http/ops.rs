//! Operators: mailbox health and the quarantine (see, retry, release, dismiss).
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Id, Params};
use crate::domain::millis_to_rfc3339;
use crate::ingest::prepare::{MailLimits, Origin, prepare};
use crate::mail::ParsedMail;
use crate::store::{Incoming, IncomingMail, IngestBatch, MailboxState, QuarantineEntry};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(millis_to_rfc3339(m)))
}

/// Seconds the mailbox is behind: 0 while in sync, else the time since it last was.
pub fn lag_seconds(m: &MailboxState, now: i64) -> f64 {
    let in_sync = matches!(m.status.as_str(), "idle" | "polling") && m.backlog == 0;
    if in_sync {
        return 0.0;
    }
    match m.synced_at.or(m.last_sync_at) {
        Some(t) => ((now - t).max(0) as f64) / 1000.0,
        None => 0.0,
    }
}

fn mailbox_view(m: &MailboxState, now: i64) -> Value {
    json!({
        "id": m.id,
        "service": m.service,
        "kind": m.kind,
        "source": m.description,
        "state": m.status,
        "up": matches!(m.status.as_str(), "idle" | "polling" | "syncing"),
        "push": m.push,
        "worker": m.worker,
        "lease_expires_at": time(m.lease_expires_at),
        "cursor": {"uid_validity": m.uid_validity, "last_uid": m.last_uid},
        "last_sync_at": time(m.last_sync_at),
        "last_successful_sync_at": time(m.synced_at),
        "last_error": m.last_error,
        "last_error_at": time(m.last_error_at),
        "backlog": m.backlog,
        "lag_seconds": lag_seconds(m, now),
        "counts": {
            "ingested": m.ingested_total,
            "duplicates": m.duplicates_total,
            "errors": m.errors_total,
            "quarantined": m.quarantined,
        },
    })
}

/// `GET /api/v1/ops/mailboxes`.
pub async fn mailboxes(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let now = crate::domain::now_millis();
    let list = state.store.mailboxes().await?;
    Ok(Json(
        json!({"items": list.iter().map(|m| mailbox_view(m, now)).collect::<Vec<_>>()}),
    ))
}

fn quarantine_view(q: &QuarantineEntry) -> Value {
    json!({
        "id": q.id,
        "mailbox": q.mailbox_id,
        "service": q.service_id,
        "uid": q.uid,
        "source_ref": q.source_ref,
        "reason": q.reason,
        "detail": q.detail,
        "size": q.size,
        "raw_kept": q.has_raw,
        "state": q.state,
        "message": q.message_ref,
        "created_at": time(Some(q.created_at)),
        "resolved_at": time(q.resolved_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineQuery {
    state: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/ops/quarantine?state=held|ingested|dismissed`.
pub async fn quarantine(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<QuarantineQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let filter = q.state.filter(|s| !s.is_empty());
    if let Some(s) = &filter
        && !matches!(s.as_str(), "held" | "ingested" | "dismissed")
    {
        return Err(ApiError::bad_request(format!(
            "state '{s}' is not held, ingested or dismissed"
        )));
    }
    let limit = crate::domain::cursor::page_limit(q.limit)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let items = state.store.quarantine(filter.as_deref(), limit).await?;
    Ok(Json(
        json!({"items": items.iter().map(quarantine_view).collect::<Vec<_>>()}),
    ))
}

/// `GET /api/v1/ops/quarantine/{id}/raw`: the raw source, as a download.
pub async fn quarantine_raw(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    let (entry, raw) = state.store.quarantine_entry(&id).await?;
    let raw = raw.ok_or_else(|| {
        ApiError::not_found(format!(
            "the raw source of '{id}' was not kept: {}",
            entry.detail
        ))
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "message/rfc822".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.eml\""),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        raw,
    ))
}

async fn ingest_entry(
    state: &AppState,
    entry: &QuarantineEntry,
    item: Incoming,
) -> ApiResult<Json<Value>> {
    if let Incoming::Quarantine(q) = &item {
        return Err(ApiError::conflict(format!(
            "still cannot take it in: {}",
            q.detail
        )));
    }
    let report = state
        .store
        .commit_batch(&IngestBatch {
            mailbox_id: entry.mailbox_id.clone(),
            service_id: entry.service_id.clone(),
            fence: None,
            cursor: None,
            items: vec![item],
            resolves_quarantine: Some(entry.id.clone()),
        })
        .await?;
    tracing::info!(quarantine = %entry.id, tasks = report.new_tasks.len(), "quarantined mail ingested");
    if !report.new_tasks.is_empty() {
        state
            .metrics
            .tasks_created
            .with_label_values(&[entry.service_id.as_str(), "email", "mail"])
            .inc_by(report.new_tasks.len() as u64);
    }
    Ok(Json(json!({
        "tasks": report.new_tasks,
        "messages": report.messages,
        "duplicate": report.duplicates > 0,
    })))
}

async fn held(state: &AppState, id: &str) -> ApiResult<(QuarantineEntry, Vec<u8>)> {
    let (entry, raw) = state.store.quarantine_entry(id).await?;
    if entry.state != "held" {
        return Err(ApiError::conflict(format!(
            "quarantine entry '{id}' is already {}",
            entry.state
        )));
    }
    let raw = raw.ok_or_else(|| {
        ApiError::conflict(format!(
            "the raw source was not kept ({}); raise the limit and fetch it from its mailbox",
            entry.detail
        ))
    })?;
    Ok((entry, raw))
}

/// `POST /api/v1/ops/quarantine/{id}/retry`: parse again with the current limits.
pub async fn quarantine_retry(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let (entry, raw) = held(&state, &id).await?;
    let limits = MailLimits {
        max_message_bytes: state.ingest_limits.max_message_bytes,
        parse_timeout: state.ingest_limits.parse_timeout,
    };
    let item = prepare(
        &state.store,
        &Default::default(),
        raw,
        Origin::default(),
        &limits,
    )
    .await?;
    ingest_entry(&state, &entry, item).await
}

/// `POST /api/v1/ops/quarantine/{id}/release`: take it in as best it can be,
/// even unparsed: a task whose message keeps the raw source.
pub async fn quarantine_release(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let (entry, raw) = held(&state, &id).await?;
    let limits = MailLimits {
        max_message_bytes: u64::MAX,
        parse_timeout: state.ingest_limits.parse_timeout,
    };
    let item = match prepare(
        &state.store,
        &Default::default(),
        raw.clone(),
        Origin::default(),
        &limits,
    )
    .await?
    {
        Incoming::Quarantine(_) => {
            use sha2::Digest;
            let mut parsed = ParsedMail {
                subject: Some(format!(
                    "(unreadable message from the quarantine: {})",
                    entry.reason
                )),
                text_body: Some(
                    String::from_utf8_lossy(&raw[..raw.len().min(64 * 1024)]).into_owned(),
                ),
                content_hash: hex::encode(sha2::Sha256::digest(&raw)),
                ..ParsedMail::default()
            };
            parsed.make_storable();
            Incoming::Mail(Box::new(IncomingMail {
                uid: entry.uid.map(|u| u as u32),
                source_ref: entry.source_ref.clone(),
                packed: None,
                raw,
                parsed,
                kind: crate::mail::MailKind::Normal,
                customer: state.store.resolve_customer(None, None).await?,
            }))
        }
        ok => ok,
    };
    ingest_entry(&state, &entry, item).await
}

/// `POST /api/v1/ops/quarantine/{id}/dismiss`: keep it on record, never ingest.
pub async fn quarantine_dismiss(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    state.store.dismiss_quarantine(&id).await?;
    Ok(Json(json!({"id": id, "state": "dismissed"})))
}
