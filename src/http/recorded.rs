//! Operators: automatic mail recorded without a task (see it, download it,
//! make it a customer's task when it was one).
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Id, Params};
use crate::domain::cursor::{Cursor, cut_to_page};
use crate::domain::millis_to_rfc3339;
use crate::http::doc;
use crate::store::RecordedMail;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// An automatic mail kept without a task or conversation.
#[derive(Serialize, ToSchema)]
#[schema(as = RecordedMail)]
pub struct RecordedView<'a> {
    /// The message id.
    id: &'a str,
    /// The service id.
    service: &'a str,
    /// The mailbox id it came through.
    mailbox: Option<&'a str>,
    /// What it was taken for: `auto_reply`, `bulk` or `bounce`.
    kind: &'a str,
    /// Why: the classification ingestion made of its headers.
    #[schema(value_type = Object)]
    classification: &'a serde_json::Value,
    from: Option<&'a str>,
    from_name: Option<&'a str>,
    subject: Option<&'a str>,
    #[schema(format = DateTime)]
    received_at: String,
    /// Size of the mail in bytes.
    size: i64,
}

pub fn recorded_view(m: &RecordedMail) -> RecordedView<'_> {
    RecordedView {
        id: &m.id,
        service: &m.service_id,
        mailbox: m.mailbox_id.as_deref(),
        kind: &m.kind,
        classification: &m.classification,
        from: m.from_address.as_deref(),
        from_name: m.from_name.as_deref(),
        subject: m.subject.as_deref(),
        received_at: millis_to_rfc3339(m.received_at),
        size: m.size,
    }
}

/// Recorded mail, newest first.
#[derive(Serialize, ToSchema)]
pub struct RecordedList<'a> {
    items: Vec<RecordedView<'a>>,
    /// How many there are in all (of the service, when filtered).
    total: i64,
    /// The next page's `cursor`; null on the last page.
    next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecordedQuery {
    /// Only the mail of this service; every service when absent or empty.
    service: Option<String>,
    /// At most this many.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /api/v1/ops/recorded`.
#[utoipa::path(
    get,
    path = "/ops/recorded",
    operation_id = "listRecordedMail",
    tag = "ops",
    summary = "Automatic mail kept without a task",
    description = "Auto-replies, bulk mail and bounces that ingestion kept without a task or conversation (the service's `auto_reply_policy` is `drop`, or `attach` and the mail threads onto nothing), newest first, a page at a time (`cursor` from `next_cursor`), with their `total`. Such mail is stored and counted (`switchboard_ingest_mail_total{outcome=\"recorded\"}`) but no agent sees it: here an operator can check that no customer's mail was taken for automatic mail, and make it a task (POST …/{id}/task). Admins only. Unknown query parameters are refused (400).",
    params(RecordedQuery),
    responses(
        (status = 200, description = "OK", body = crate::http::recorded::RecordedList),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<RecordedQuery>,
) -> ApiResult<axum::response::Response> {
    caller.require_admin()?;
    let limit = crate::domain::cursor::page_limit(q.limit)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let service = q.service.filter(|s| !s.is_empty());
    let after = q
        .cursor
        .filter(|c| !c.is_empty())
        .map(|c| Cursor::decode(&c))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut items = state
        .store
        .recorded_mail(service.as_deref(), after.as_ref(), limit + 1)
        .await?;
    let more = cut_to_page(&mut items, limit);
    let next_cursor = more.then(|| items.last()).flatten().map(|m| {
        Cursor {
            created_at: m.received_at,
            id: m.id.clone(),
        }
        .encode()
    });
    let total = state.store.recorded_count(service.as_deref()).await?;
    Ok(Json(RecordedList {
        items: items.iter().map(recorded_view).collect(),
        total,
        next_cursor,
    })
    .into_response())
}

/// `GET /api/v1/ops/recorded/{id}/raw`.
#[utoipa::path(
    get,
    path = "/ops/recorded/{id}/raw",
    operation_id = "downloadRecordedRaw",
    tag = "ops",
    summary = "The raw source of a recorded mail",
    description = "The mail exactly as it was received, as a `message/rfc822` download (`<id>.eml`). Admins only. 404 when there is no such message; 409 when it is no longer recorded without a task.",
    params(
        ("id" = String, Path, description = "The message id (`id` of a RecordedMail)."),
    ),
    responses(
        (status = 200, description = "The raw source.", body = inline(doc::Binary), content_type = "message/rfc822", headers(("Content-Disposition" = String, description = "Example: `attachment; filename=\"msg_0123456789abcdef01234567.eml\"`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn raw(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    state.store.recorded(&id).await?;
    let raw = state.store.message_raw(&id).await?;
    Ok(super::ops::eml_download(&id, raw))
}

/// The task a recorded mail became.
#[derive(Serialize, ToSchema)]
#[schema(as = RecordedTask)]
pub struct Made {
    /// The message id.
    message: String,
    /// The new task, queued in the mail's service.
    task: String,
    /// Its new conversation: the customer's replies thread onto it.
    conversation: String,
}

/// `POST /api/v1/ops/recorded/{id}/task`.
#[utoipa::path(
    post,
    path = "/ops/recorded/{id}/task",
    operation_id = "makeRecordedTask",
    tag = "ops",
    summary = "Make a recorded mail a customer's task",
    description = "For a customer's mail that was taken for automatic mail: a new conversation and a queued task of its service, as if it had come in as normal mail (its sender resolved as the customer through the directory and address book, the service's priority, the address it reached); the message becomes `normal` and `queued` in the same transaction, so it is made a task exactly once (a second call, or two operators at once, get 409). Routing offers it like any other task. Admins only. 404 when there is no such message; 409 when it is not (or no longer) recorded without a task. No body.",
    params(
        ("id" = String, Path, description = "The message id (`id` of a RecordedMail)."),
    ),
    responses(
        (status = 201, description = "Made a task.", body = crate::http::recorded::Made),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn make_task(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<impl IntoResponse> {
    caller.require_admin()?;
    let made = state.store.queue_recorded(&id).await?;
    state
        .metrics
        .tasks_created
        .with_label_values(&[made.service_id.as_str(), "email", "mail"])
        .inc();
    tracing::info!(message = %id, task = %made.task_id, service = %made.service_id, "recorded mail made a task");
    Ok((
        StatusCode::CREATED,
        Json(Made {
            message: id,
            task: made.task_id,
            conversation: made.conversation_id,
        }),
    ))
}
