//! Drafts: reply, reply all, forward; versioned autosave; attachments; send once.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id, Params, RawBody};
use super::tasks::visible_task;
use crate::domain::millis_to_rfc3339;
use crate::mail::Address;
use crate::mail::compose::{Context, DraftKind, Original, ReplyTemplates, new_message_id};
use crate::mail::preview::{RemoteImages, SanitizeOptions, sanitize_html};
use crate::store::{Draft, DraftEdit, NewDraft};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Largest attachment an agent may upload.
pub const MAX_ATTACHMENT_BYTES: usize = 20 * 1024 * 1024;

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(millis_to_rfc3339(m)))
}

fn view(d: &Draft) -> Value {
    json!({
        "id": d.id,
        "task_id": d.task_id,
        "kind": d.kind,
        "state": d.state,
        "version": d.version,
        "from": d.from,
        "to": d.to,
        "cc": d.cc,
        "bcc": d.bcc,
        "subject": d.subject,
        "body_text": d.body_text,
        "body_html": d.body_html,
        "in_reply_to": d.in_reply_to,
        "references": d.references,
        "message_id": d.message_id,
        "attachments": d.attachments,
        "attempts": d.attempts,
        "next_attempt_at": time(d.next_attempt_at),
        "last_error": d.last_error,
        "smtp_response": d.smtp_response,
        "queued_at": time(d.queued_at),
        "sent_at": time(d.sent_at),
        "created_at": time(Some(d.created_at)),
        "updated_at": time(Some(d.updated_at)),
    })
}

/// The draft with its version as an ETag, so a client can send `If-Match`.
fn respond(status: StatusCode, d: &Draft) -> Response {
    let mut r = (status, Json(view(d))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", d.version)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// The draft if the caller wrote it (or is an admin); others get a 404.
async fn own_draft(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Draft> {
    let d = state.store.draft(id).await?;
    if d.agent_id != caller.0.id && !caller.0.admin {
        return Err(ApiError::not_found(format!("draft '{id}' not found")));
    }
    Ok(d)
}

/// The version named by `If-Match` (`"3"`, `3` or `W/"3"`); required for changes.
fn if_match(headers: &HeaderMap) -> ApiResult<i64> {
    let raw = headers.get(header::IF_MATCH).ok_or_else(|| {
        ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "if_match_required",
            "send If-Match: <version> (the draft's ETag)",
        )
    })?;
    raw.to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::bad_request("If-Match must be the draft's version number"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDraftInput {
    kind: DraftKind,
    /// The message answered or forwarded; the newest inbound message of the task by default.
    message: Option<String>,
}

/// `POST /api/v1/tasks/{id}/drafts`: a prefilled draft for the task's holder.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Id(task_id): Id<String>,
    Body(input): Body<NewDraftInput>,
) -> ApiResult<Response> {
    let (task, sessions) = visible_task(&state, &caller.0, &task_id).await?;
    let holds = sessions
        .iter()
        .any(|s| s.agent_id == caller.0.id && s.state.is_live());
    if !holds && !caller.0.admin {
        return Err(ApiError::forbidden(format!(
            "pick up task '{task_id}' to answer it"
        )));
    }
    let service = state.store.service(&task.service_id).await?;
    let from_address = service.email_addresses.first().cloned().ok_or_else(|| {
        ApiError::conflict(format!(
            "service '{}' has no email address to send from: set email_address",
            service.id
        ))
    })?;
    let message_id = match (input.message, input.kind) {
        (Some(m), _) => Some(m),
        (None, DraftKind::New) => None,
        (None, _) => state.store.latest_inbound_message(&task_id).await?,
    };
    let original_detail = match &message_id {
        Some(m) => {
            let d = state.store.message(m).await?;
            if d.task_id.as_deref() != Some(task_id.as_str()) {
                return Err(ApiError::not_found(format!(
                    "message '{m}' not found on task '{task_id}'"
                )));
            }
            Some(d)
        }
        None if input.kind == DraftKind::New => None,
        None => {
            return Err(ApiError::conflict(format!(
                "task '{task_id}' has no message to answer"
            )));
        }
    };
    let parsed = match &original_detail {
        Some(d) => {
            let raw = state.store.message_raw(&d.id).await?;
            let limits = crate::mail::ParseLimits {
                max_message_bytes: usize::MAX,
            };
            tokio::task::spawn_blocking(move || crate::mail::parse_message(&raw, &limits).ok())
                .await
                .ok()
                .flatten()
        }
        None => None,
    };
    let sanitized_html = match (&parsed, &original_detail) {
        (Some(p), Some(_)) => p.html_body.as_ref().map(|h| {
            let cids = HashMap::new();
            sanitize_html(
                h,
                &SanitizeOptions {
                    cid_urls: &cids,
                    remote: RemoteImages::Block,
                    max_data_image_bytes: state.preview.max_data_image_bytes,
                },
            )
            .html
        }),
        _ => None,
    };
    let empty: Vec<Address> = Vec::new();
    let no_refs: Vec<String> = Vec::new();
    let original = match &parsed {
        Some(p) => Original {
            from: p.from.as_ref(),
            reply_to: &p.reply_to,
            to: &p.to,
            cc: &p.cc,
            subject: p.subject.as_deref(),
            date: p.date,
            message_id: p.message_id.as_deref(),
            references: &p.references,
            text_body: p.text_body.as_deref(),
            html_body: sanitized_html.as_deref(),
        },
        None => Original {
            from: None,
            reply_to: &empty,
            to: &empty,
            cc: &empty,
            subject: task.subject.as_deref(),
            date: None,
            message_id: None,
            references: &no_refs,
            text_body: None,
            html_body: None,
        },
    };
    let templates = state.store.reply_templates(&service.id).await?;
    let templates = ReplyTemplates::with_overrides(&templates)
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    let subject = task.subject.clone().unwrap_or_default();
    let ctx = Context {
        customer_name: task.customer.name.as_deref(),
        agent_name: &caller.0.name,
        agent_email: &caller.0.email,
        service_name: &service.name,
        task_id: &task.id,
        subject: &subject,
    };
    let prefill = templates
        .prefill(input.kind, &original, &ctx, &service.email_addresses)
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    // A forward keeps the original's attachments.
    let mut attachments = Vec::new();
    if input.kind == DraftKind::Forward
        && let Some(d) = &original_detail
    {
        let raw = state.store.message_raw(&d.id).await?;
        for a in &d.attachments {
            if let Some(bytes) = crate::mail::attachment_bytes(&raw, a.part_index) {
                let name = a
                    .filename
                    .clone()
                    .unwrap_or_else(|| format!("attachment-{}", a.part_index));
                attachments.push((name, a.content_type.clone(), bytes, a.content_id.clone()));
            }
        }
    }
    let draft = state
        .store
        .create_draft(&NewDraft {
            task_id: task.id.clone(),
            service_id: service.id.clone(),
            agent_id: caller.0.id.clone(),
            reply_to_message: original_detail.map(|d| d.id),
            kind: serde_json::to_value(input.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| "reply".into()),
            from: Address {
                name: Some(service.name.clone()),
                email: from_address,
            },
            to: prefill.to,
            cc: prefill.cc,
            subject: prefill.subject,
            body_text: prefill.body_text,
            body_html: prefill.body_html,
            in_reply_to: prefill.in_reply_to,
            references: prefill.references,
            attachments,
        })
        .await?;
    tracing::info!(draft = %draft.id, task = %task.id, kind = %draft.kind, "draft created");
    Ok(respond(StatusCode::CREATED, &draft))
}

/// `GET /api/v1/drafts/{id}`.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Response> {
    Ok(respond(
        StatusCode::OK,
        &own_draft(&state, &caller, &id).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftInput {
    #[serde(default)]
    to: Vec<Address>,
    #[serde(default)]
    cc: Vec<Address>,
    #[serde(default)]
    bcc: Vec<Address>,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    body_text: String,
    #[serde(default)]
    body_html: String,
}

fn check_addresses(field: &str, list: &[Address]) -> ApiResult<()> {
    if list.len() > 100 {
        return Err(ApiError::bad_request(format!(
            "{field}: at most 100 recipients"
        )));
    }
    for a in list {
        let ok = a.email.len() <= 320
            && a.email
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') || d == "localhost")
            && !a.email.contains(|c: char| {
                c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"')
            });
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("{field}: '{}' is not an email address", a.email),
            ));
        }
        if a.name
            .as_deref()
            .is_some_and(|n| n.len() > 200 || n.chars().any(char::is_control))
        {
            return Err(ApiError::bad_request(format!(
                "{field}: a display name is too long or has control characters"
            )));
        }
    }
    Ok(())
}

/// `PUT /api/v1/drafts/{id}` with `If-Match: <version>`: autosave; 409 on a stale version.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Id(id): Id<String>,
    Body(input): Body<DraftInput>,
) -> ApiResult<Response> {
    own_draft(&state, &caller, &id).await?;
    let version = if_match(&headers)?;
    check_addresses("to", &input.to)?;
    check_addresses("cc", &input.cc)?;
    check_addresses("bcc", &input.bcc)?;
    if input.subject.chars().count() > 998 || input.subject.contains(['\r', '\n']) {
        return Err(ApiError::bad_request(
            "subject must be one line of at most 998 characters",
        ));
    }
    if input.body_text.len() + input.body_html.len() > 5 * 1024 * 1024 {
        return Err(ApiError::bad_request("the body is larger than 5 MiB"));
    }
    // The agent's HTML goes through the same sanitizer as incoming mail.
    let cids = HashMap::new();
    let body_html = if input.body_html.trim().is_empty() {
        String::new()
    } else {
        sanitize_html(
            &input.body_html,
            &SanitizeOptions {
                cid_urls: &cids,
                remote: RemoteImages::Block,
                max_data_image_bytes: state.preview.max_data_image_bytes,
            },
        )
        .html
    };
    let edit = DraftEdit {
        to: input.to,
        cc: input.cc,
        bcc: input.bcc,
        subject: input.subject,
        body_text: input.body_text,
        body_html,
    };
    let d = state.store.update_draft(&id, version, &edit).await?;
    Ok(respond(StatusCode::OK, &d))
}

/// `DELETE /api/v1/drafts/{id}`: discards a draft that was never queued.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<StatusCode> {
    own_draft(&state, &caller, &id).await?;
    state.store.delete_draft(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    filename: String,
}

/// `POST /api/v1/drafts/{id}/attachments?filename=…` with the file as the body
/// (its `Content-Type`), and `If-Match`.
pub async fn add_attachment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Id(id): Id<String>,
    Params(q): Params<UploadQuery>,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    own_draft(&state, &caller, &id).await?;
    let version = if_match(&headers)?;
    let name = q.filename.trim();
    if name.is_empty()
        || name.len() > 255
        || name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
    {
        return Err(ApiError::bad_request(
            "filename must be 1 to 255 characters, without slashes or control characters",
        ));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("the attachment is empty"));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| v.contains('/') && v.len() < 128)
        .unwrap_or_else(|| "application/octet-stream".into());
    let d = state
        .store
        .add_draft_attachment(&id, version, name, &content_type, &body)
        .await?;
    Ok(respond(StatusCode::CREATED, &d))
}

/// `DELETE /api/v1/drafts/{id}/attachments/{attachment}` with `If-Match`.
pub async fn remove_attachment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Id((id, attachment)): Id<(String, String)>,
) -> ApiResult<Response> {
    own_draft(&state, &caller, &id).await?;
    let version = if_match(&headers)?;
    let d = state
        .store
        .remove_draft_attachment(&id, version, &attachment)
        .await?;
    Ok(respond(StatusCode::OK, &d))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderInput {
    order: Vec<String>,
}

/// `PUT /api/v1/drafts/{id}/attachments` `{"order": [ids]}` with `If-Match`.
pub async fn reorder_attachments(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Id(id): Id<String>,
    Body(input): Body<OrderInput>,
) -> ApiResult<Response> {
    own_draft(&state, &caller, &id).await?;
    let version = if_match(&headers)?;
    let d = state
        .store
        .reorder_draft_attachments(&id, version, &input.order)
        .await?;
    Ok(respond(StatusCode::OK, &d))
}

/// `POST /api/v1/drafts/{id}/send`: queues the draft (202). Idempotent: a
/// draft already queued or sent is not queued again. Its Message-ID is fixed
/// here and reused by every retry.
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Response> {
    let d = own_draft(&state, &caller, &id).await?;
    if !state.can_send {
        return Err(ApiError::conflict(
            "this server has no [smtp] configured: replies cannot be sent",
        ));
    }
    if d.state == "draft" || d.state == "failed" {
        if d.to.is_empty() && d.cc.is_empty() && d.bcc.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "the draft has no recipients",
            ));
        }
        if d.subject.trim().is_empty()
            && d.body_text.trim().is_empty()
            && d.body_html.trim().is_empty()
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "the draft is empty",
            ));
        }
    }
    let domain = d
        .from
        .email
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| "switchboard.invalid".into());
    let (draft, queued) = state
        .store
        .queue_draft(&id, &new_message_id(&state.link_key, &domain))
        .await?;
    if queued {
        state.outbox.notify_one();
        tracing::info!(draft = %id, message_id = ?draft.message_id, "reply queued");
    }
    Ok(respond(StatusCode::ACCEPTED, &draft))
}
