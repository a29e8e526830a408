//! Drafts: reply, reply all, forward; versioned autosave; attachments; send once.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id, Params, RawBody};
use super::tasks::visible_task;
use crate::domain::millis_to_rfc3339;
use crate::domain::text::is_direction_control;
use crate::http::doc;
use crate::mail::Address;
use crate::mail::compose::{
    Context, DraftKind, MAX_NAME_CHARS, MAX_RECIPIENTS, MAX_SUBJECT_CHARS, Original,
    ReplyTemplates, new_message_id,
};
use crate::mail::preview::{RemoteImages, SanitizeOptions, sanitize_html};
use crate::store::DraftAttachment;
use crate::store::{Draft, DraftEdit, NewDraft};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::{IntoParams, ToSchema};

/// Largest attachment an agent may upload.
pub const MAX_ATTACHMENT_BYTES: usize = 20 * 1024 * 1024;

/// A draft as the API shows it. The fields in alphabetical order, as the
/// API has always written them.
#[derive(Serialize, ToSchema)]
#[schema(as = Draft)]
pub struct DraftView<'a> {
    attachments: &'a [DraftAttachment],
    /// SMTP attempts so far.
    attempts: i64,
    bcc: &'a [Address],
    /// The HTML part, sanitized like incoming mail; empty for a text-only message.
    body_html: &'a str,
    /// The plain-text part: prefilled with the signature and the quoted original (the service's
    /// templates).
    body_text: &'a str,
    cc: &'a [Address],
    #[schema(format = DateTime)]
    created_at: String,
    /// The service's first email address, with the service's name.
    from: &'a Address,
    #[schema(example = "drf_0123456789abcdef01234567")]
    id: &'a str,
    /// Message-ID of the answered message, without angle brackets.
    in_reply_to: Option<&'a str>,
    #[schema(value_type = DraftKind)]
    kind: &'a str,
    /// Why the last attempt failed (e.g. the SMTP server's answer).
    last_error: Option<&'a str>,
    /// The reply's Message-ID (without angle brackets), fixed when it is queued and reused by
    /// every retry; null before. A change to a failed draft clears it.
    message_id: Option<&'a str>,
    /// When a queued draft is (re)tried.
    #[schema(format = DateTime)]
    next_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    queued_at: Option<String>,
    /// The thread's Message-IDs, without angle brackets, oldest first.
    references: &'a [String],
    #[schema(format = DateTime)]
    sent_at: Option<String>,
    /// The SMTP server's answer when it accepted the message.
    smtp_response: Option<&'a str>,
    /// draft: being written; queued: waiting for the outbox (also between
    /// retries after a temporary SMTP failure); sending: claimed by an
    /// outbox worker; sent: accepted by the SMTP server (final); failed:
    /// refused permanently or out of attempts (`last_error`), and may be
    /// edited and sent again. Only draft and failed drafts can be changed.
    #[schema(value_type = String, example = "draft")]
    state: &'a str,
    subject: &'a str,
    #[schema(example = "tsk_0123456789abcdef01234567")]
    task_id: &'a str,
    to: &'a [Address],
    #[schema(format = DateTime)]
    updated_at: String,
    /// Goes up with every change (content, attachments, queueing, a failed attempt).
    #[schema(minimum = 1)]
    version: i64,
}

fn view(d: &Draft) -> DraftView<'_> {
    DraftView {
        attachments: &d.attachments,
        attempts: d.attempts,
        bcc: &d.bcc,
        body_html: &d.body_html,
        body_text: &d.body_text,
        cc: &d.cc,
        created_at: millis_to_rfc3339(d.created_at),
        from: &d.from,
        id: &d.id,
        in_reply_to: d.in_reply_to.as_deref(),
        kind: &d.kind,
        last_error: d.last_error.as_deref(),
        message_id: d.message_id.as_deref(),
        next_attempt_at: d.next_attempt_at.map(millis_to_rfc3339),
        queued_at: d.queued_at.map(millis_to_rfc3339),
        references: &d.references,
        sent_at: d.sent_at.map(millis_to_rfc3339),
        smtp_response: d.smtp_response.as_deref(),
        state: &d.state,
        subject: &d.subject,
        task_id: &d.task_id,
        to: &d.to,
        updated_at: millis_to_rfc3339(d.updated_at),
        version: d.version,
    }
}

fn respond(status: StatusCode, d: &Draft) -> Response {
    let mut r = (status, Json(view(d))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", d.version)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// Whether `agent` answers the task: connected to it, or in wrap-up after
/// handling it (not after passing it on, nor with an offer only).
fn answers(sessions: &[crate::store::Session], agent: &str) -> bool {
    sessions.iter().any(|s| {
        use crate::domain::session::{SessionResult, SessionState};
        s.agent_id == agent
            && matches!(s.state, SessionState::Connected | SessionState::WrapUp)
            && s.result != Some(SessionResult::Transferred)
    })
}

/// A draft is changed only while its author answers its task: after a
/// transfer or once the task is saved it could never be sent (discarding it
/// stays possible). Admins may.
async fn still_answering(state: &AppState, caller: &Caller, d: &Draft) -> ApiResult<()> {
    if caller.0.admin {
        return Ok(());
    }
    let sessions = state.store.task_sessions(&d.task_id).await?;
    if answers(&sessions, &d.agent_id) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "task '{}' is no longer yours (transferred or concluded): this draft can no longer be changed or sent; discard it",
        d.task_id
    )))
}

/// Whether `email` is one of the services' own addresses (stored trimmed
/// and lowercased).
fn is_own(own: &[String], email: &str) -> bool {
    own.iter().any(|o| o.eq_ignore_ascii_case(email.trim()))
}

/// Why `agent` may not answer `task`, in the words of what they can do.
fn why_not_answering(
    task: &crate::store::Task,
    sessions: &[crate::store::Session],
    agent: &str,
) -> String {
    use crate::domain::session::{SessionResult, SessionState};
    let id = &task.id;
    let mine = |f: &dyn Fn(&crate::store::Session) -> bool| {
        sessions.iter().any(|s| s.agent_id == agent && f(s))
    };
    if task.state.is_final() {
        format!(
            "task '{id}' is {}: it can no longer be answered",
            task.state.as_str()
        )
    } else if mine(&|s| s.state == SessionState::Offered) {
        format!("task '{id}' is offered to you: accept the offer to answer it")
    } else if mine(&|s| s.result == Some(SessionResult::Transferred)) {
        format!("you transferred task '{id}': its new holder answers it")
    } else if task.state == crate::domain::TaskState::Queued {
        format!("pick up task '{id}' to answer it")
    } else {
        format!("task '{id}' is with another agent: only its holder answers it")
    }
}

/// The draft if the caller wrote it (or is an admin); others get a 404.
async fn own_draft(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Draft> {
    let d = state.store.draft(id).await?;
    if d.agent_id != caller.0.id && !caller.0.admin {
        return Err(ApiError::not_found(format!("draft '{id}' not found")));
    }
    Ok(d)
}

/// HTML to send: sanitized as incoming mail is (no script, handler, form or
/// style that escapes), but remote images keep their links (the customer's
/// mail program decides whether to load them; the agent's page never does,
/// by its policy), and `cid:` images of the parts `carried` stay `cid:`.
fn outgoing_html(html: &str, carried: &[&str], max_data_image_bytes: usize) -> String {
    let cids: HashMap<String, String> = carried
        .iter()
        .map(|id| (crate::mail::preview::normalize_cid(id), format!("cid:{id}")))
        .collect();
    let keep = |url: &str| url.to_string();
    sanitize_html(
        html,
        &SanitizeOptions {
            cid_urls: &cids,
            remote: RemoteImages::Proxy(&keep),
            max_data_image_bytes,
        },
    )
    .html
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewDraft)]
pub struct NewDraftInput {
    kind: DraftKind,
    /// The message answered or forwarded; the newest inbound message of the task by default.
    message: Option<String>,
}

/// `POST /api/v1/tasks/{id}/drafts`: a prefilled draft for the task's holder.
#[utoipa::path(
    post,
    path = "/tasks/{id}/drafts",
    operation_id = "createDraft",
    tag = "drafts",
    summary = "Start a reply",
    description = "A draft prefilled from the answered message (by default the task's newest inbound message) and the service's reply templates: recipients (Reply-To, or From, each of its authors; a reply all adds the other recipients, leaving out every service's own addresses; a mail without a usable sender gets a reply to nobody, and a reply all to its other recipients), `Re:`/`Fwd:` subject, In-Reply-To and References, the signature and the quoted original. A forward keeps the original's attachments and starts with no recipient; a new message (`kind: new`) starts addressed to the task's customer when their email address is known. For the agent answering the task (connected, or in wrap-up after handling it; not after transferring it, nor with an offer only) and admins; 403 for an agent who sees the task without answering it, 404 when the task (or the named message on it) is not found. 409 when the service has no email address to send from, or the task has no message to answer. 422 when a reply to all would put more than 100 recipients in To or Cc (a draft holds at most 100 in each).",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    request_body(content = crate::http::drafts::NewDraftInput),
    responses(
        (status = 201, description = "Created.", body = crate::http::drafts::DraftView, headers(("ETag" = String, description = "The draft's version, quoted; send it back as `If-Match` with the next change. Example: `\"3\"`."))),
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
    caller: Caller,
    Id(task_id): Id<String>,
    Body(input): Body<NewDraftInput>,
) -> ApiResult<Response> {
    let (task, sessions) = visible_task(&state, &caller.0, &task_id).await?;
    if !answers(&sessions, &caller.0.id) && !caller.0.admin {
        return Err(ApiError::forbidden(why_not_answering(
            &task,
            &sessions,
            &caller.0.id,
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
    // The quoted original goes out as it came in (scripts and the like
    // removed): its remote images stay links for the customer's own mail
    // program, and a forward's inline images point at the parts it carries.
    let sanitized_html = match (&parsed, &original_detail) {
        (Some(p), Some(d)) => p.html_body.as_ref().map(|h| {
            let carried = if input.kind == DraftKind::Forward {
                d.attachments
                    .iter()
                    .filter_map(|a| a.content_id.as_deref())
                    .collect()
            } else {
                Vec::new()
            };
            outgoing_html(h, &carried, state.preview.max_data_image_bytes)
        }),
        _ => None,
    };
    let empty: Vec<Address> = Vec::new();
    let no_refs: Vec<String> = Vec::new();
    let original = match &parsed {
        Some(p) => Original {
            from: p.from.as_ref(),
            co_authors: &p.co_authors,
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
            co_authors: &empty,
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
    // Not only this service's addresses: the task may have come in through
    // another service's mailbox before a transfer.
    let own = state.store.own_addresses().await?;
    let mut prefill = templates
        .prefill(input.kind, &original, &ctx, &own)
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    // A new message goes to the task's customer where their email address
    // is known (a forward goes to whom the agent chooses).
    if input.kind == DraftKind::New
        && prefill.to.is_empty()
        && let Some(email) = task.customer.address.as_deref().map(str::trim)
        && crate::mail::compose::is_mail_address(email)
        && !is_own(&own, email)
    {
        prefill.to.push(Address {
            name: task.customer.name.clone(),
            email: email.to_string(),
        });
    }
    // A reply to all of a mail with more recipients than a draft may hold is
    // refused, not cut: nobody is dropped without the agent knowing.
    for (field, list) in [("to", &prefill.to), ("cc", &prefill.cc)] {
        if list.len() > MAX_RECIPIENTS {
            return Err(ApiError::invalid(format!(
                "{field}: this reply would go to {} recipients, at most {MAX_RECIPIENTS} are allowed: reply to the sender and add whom you need",
                list.len()
            )));
        }
    }
    // A forward keeps the original's attachments.
    let mut attachments = Vec::new();
    if input.kind == DraftKind::Forward
        && let Some(d) = &original_detail
    {
        let raw = state.store.message_raw(&d.id).await?;
        for a in &d.attachments {
            if let Some(bytes) = crate::mail::attachment_bytes(&raw, a.part_index) {
                let name = a.display_name();
                attachments.push((name, a.full_content_type(), bytes, a.content_id.clone()));
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
#[utoipa::path(
    get,
    path = "/drafts/{id}",
    operation_id = "getDraft",
    tag = "drafts",
    summary = "A draft",
    description = "The draft, with its version as the ETag. For the agent who wrote it and admins; 404 for anyone else.",
    params(
        ("id" = String, Path, description = "The draft id."),
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::drafts::DraftView, headers(("ETag" = String, description = "The draft's version, quoted; send it back as `If-Match` with the next change. Example: `\"3\"`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
    ),
)]
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

/// The draft's whole content: a field left out is saved empty. Attachments are changed with
/// their own operations.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftInput {
    #[serde(default)]
    to: Vec<Address>,
    #[serde(default)]
    cc: Vec<Address>,
    #[serde(default)]
    bcc: Vec<Address>,
    /// One line.
    #[serde(default)]
    subject: String,
    #[serde(default)]
    body_text: String,
    /// Sanitized on save like incoming mail (scripts, event handlers and remote loads removed).
    /// The two bodies together may be at most 5 MiB.
    #[serde(default)]
    body_html: String,
}

fn check_addresses(field: &str, list: &[Address]) -> ApiResult<()> {
    if list.len() > MAX_RECIPIENTS {
        return Err(ApiError::invalid(format!(
            "{field}: at most {MAX_RECIPIENTS} recipients (this list has {})",
            list.len()
        )));
    }
    for a in list {
        if !crate::mail::compose::is_mail_address(&a.email) {
            return Err(ApiError::invalid(format!(
                "{field}: '{}' is not an email address",
                a.email
            )));
        }
        if a.name
            .as_deref()
            .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS || n.chars().any(char::is_control))
        {
            return Err(ApiError::invalid(format!(
                "{field}: a display name is longer than {MAX_NAME_CHARS} characters or has control characters"
            )));
        }
    }
    Ok(())
}

/// `PUT /api/v1/drafts/{id}` with `If-Match: <version>`: autosave; 409 on a stale version.
#[utoipa::path(
    put,
    path = "/drafts/{id}",
    operation_id = "updateDraft",
    tag = "drafts",
    summary = "Save a draft (autosave)",
    description = "Replaces the draft's recipients, subject and bodies (a field left out is saved empty) if `If-Match` names its current version; the version goes up and the new one comes back as the ETag. Two tabs cannot overwrite each other: the older one gets 409 and reloads. A failed draft becomes a draft again. 422 (naming the field and the limit) for more than 100 recipients in a field, an address that is not an email address, a display name over 200 characters or with control characters, a subject that is not one line of at most 998 characters, or bodies over 5 MiB together. 403 once its task is no longer the author's (transferred on, or saved): such a draft can only be discarded.",
    params(
        ("id" = String, Path, description = "The draft id."),
        doc::IfMatch,
    ),
    request_body(content = crate::http::drafts::DraftInput),
    responses(
        (status = 200, description = "Saved.", body = crate::http::drafts::DraftView, headers(("ETag" = String, description = "The draft's version, quoted; send it back as `If-Match` with the next change. Example: `\"3\"`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::DraftConflict),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
        (status = 428, response = doc::PreconditionRequired),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Id(id): Id<String>,
    Body(input): Body<DraftInput>,
) -> ApiResult<Response> {
    let current = own_draft(&state, &caller, &id).await?;
    still_answering(&state, &caller, &current).await?;
    let version = if_match(&headers)?;
    check_addresses("to", &input.to)?;
    check_addresses("cc", &input.cc)?;
    check_addresses("bcc", &input.bcc)?;
    if input.subject.chars().count() > MAX_SUBJECT_CHARS || input.subject.contains(['\r', '\n']) {
        return Err(ApiError::invalid(format!(
            "subject must be one line of at most {MAX_SUBJECT_CHARS} characters"
        )));
    }
    if input.body_text.len() + input.body_html.len() > 5 * 1024 * 1024 {
        return Err(ApiError::invalid(
            "body_text and body_html together are larger than 5 MiB",
        ));
    }
    // The agent's HTML goes through the same sanitizer as incoming mail,
    // keeping what a sent mail needs: its images' links, and inline images
    // of the draft's own attachments.
    let body_html = if input.body_html.trim().is_empty() {
        String::new()
    } else {
        let carried: Vec<&str> = current
            .attachments
            .iter()
            .filter_map(|a| a.content_id.as_deref())
            .collect();
        outgoing_html(
            &input.body_html,
            &carried,
            state.preview.max_data_image_bytes,
        )
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
#[utoipa::path(
    delete,
    path = "/drafts/{id}",
    operation_id = "deleteDraft",
    tag = "drafts",
    summary = "Discard a draft",
    description = "Deletes a draft that was never queued, with its attachments. 409 once it is queued, sending, sent or failed.",
    params(
        ("id" = String, Path, description = "The draft id."),
    ),
    responses(
        (status = 204, description = "Discarded."),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<StatusCode> {
    own_draft(&state, &caller, &id).await?;
    state.store.delete_draft(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The attachment's name, 1 to 255 characters, without slashes or control characters.
    #[param(min_length = 1, max_length = 255)]
    filename: String,
}

/// `POST /api/v1/drafts/{id}/attachments?filename=…` with the file as the body
/// (its `Content-Type`), and `If-Match`.
#[utoipa::path(
    post,
    path = "/drafts/{id}/attachments",
    operation_id = "addDraftAttachment",
    tag = "drafts",
    summary = "Attach a file",
    description = "Adds the request body, as it is, as the draft's last attachment, named `filename` and typed by the request's Content-Type (its parameters dropped; `application/octet-stream` when missing or unreadable). Needs `If-Match`; the version goes up. At most 20 MiB: a larger body is refused with 413 (a plain-text answer from the body limit, not the JSON error shape). 400 for a missing, empty or unsafe `filename` (over 255 characters, slashes, control characters, text-direction controls); 422 for an empty body. 403 once its task is no longer the author's (transferred on, or saved): such a draft can only be discarded.",
    params(
        ("id" = String, Path, description = "The draft id."),
        doc::IfMatch,
        UploadQuery,
    ),
    request_body(content = inline(doc::Binary), content_type = "*/*", description = "The file's bytes, sent with its Content-Type."),
    responses(
        (status = 201, description = "Attached: the draft with the new attachment.", body = crate::http::drafts::DraftView, headers(("ETag" = String, description = "The draft's version, quoted; send it back as `If-Match` with the next change. Example: `\"3\"`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::DraftConflict),
        (status = 413, description = "The body is larger than 20 MiB (error code too_large).", body = doc::ErrorBody),
        (status = 422, response = doc::Unprocessable),
        (status = 428, response = doc::PreconditionRequired),
    ),
)]
pub async fn add_attachment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Id(id): Id<String>,
    Params(q): Params<UploadQuery>,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let d = own_draft(&state, &caller, &id).await?;
    still_answering(&state, &caller, &d).await?;
    let version = if_match(&headers)?;
    let name = q.filename.trim();
    if name.is_empty()
        || name.len() > 255
        || name
            .chars()
            .any(|c| c.is_control() || is_direction_control(c) || c == '/' || c == '\\')
    {
        return Err(ApiError::bad_request(
            "filename must be 1 to 255 characters, without slashes, control characters or text-direction controls (U+202A–U+202E, U+2066–U+2069, U+200E, U+200F, U+061C)",
        ));
    }
    if body.is_empty() {
        return Err(ApiError::invalid("the attachment is empty"));
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
#[utoipa::path(
    delete,
    path = "/drafts/{id}/attachments/{attachment}",
    operation_id = "removeDraftAttachment",
    tag = "drafts",
    summary = "Remove an attachment",
    description = "Removes one attachment from the draft. Needs `If-Match`; the version goes up. 404 when the draft or the attachment is not found. 403 once its task is no longer the author's (transferred on, or saved): such a draft can only be discarded.",
    params(
        ("id" = String, Path, description = "The draft id."),
        ("attachment" = String, Path, description = "The attachment id (`id` of a DraftAttachment)."),
        doc::IfMatch,
    ),
    responses(
        (status = 200, description = "Removed: the draft without it.", body = crate::http::drafts::DraftView, headers(("ETag" = String, description = "The draft's version, quoted; send it back as `If-Match` with the next change. Example: `\"3\"`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::DraftConflict),
        (status = 428, response = doc::PreconditionRequired),
    ),
)]
pub async fn remove_attachment(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Id((id, attachment)): Id<(String, String)>,
) -> ApiResult<Response> {
    let d = own_draft(&state, &caller, &id).await?;
    still_answering(&state, &caller, &d).await?;
    let version = if_match(&headers)?;
    let d = state
        .store
        .remove_draft_attachment(&id, version, &attachment)
        .await?;
    Ok(respond(StatusCode::OK, &d))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AttachmentOrder)]
pub struct OrderInput {
    /// Every attachment id of the draft, exactly once, in the new order.
    order: Vec<String>,
}

/// `PUT /api/v1/drafts/{id}/attachments` `{"order": [ids]}` with `If-Match`.
#[utoipa::path(
    put,
    path = "/drafts/{id}/attachments",
    operation_id = "reorderDraftAttachments",
    tag = "drafts",
    summary = "Reorder attachments",
    description = "Puts the draft's attachments in the given order; `order` must list every attachment of the draft exactly once (422 otherwise). Needs `If-Match`; the version goes up. 403 once its task is no longer the author's (transferred on, or saved): such a draft can only be discarded.",
    params(
        ("id" = String, Path, description = "The draft id."),
        doc::IfMatch,
    ),
    request_body(content = crate::http::drafts::OrderInput),
    responses(
        (status = 200, description = "Reordered.", body = crate::http::drafts::DraftView, headers(("ETag" = String, description = "The draft's version, quoted; send it back as `If-Match` with the next change. Example: `\"3\"`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::DraftConflict),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
        (status = 428, response = doc::PreconditionRequired),
    ),
)]
pub async fn reorder_attachments(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Id(id): Id<String>,
    Body(input): Body<OrderInput>,
) -> ApiResult<Response> {
    let d = own_draft(&state, &caller, &id).await?;
    still_answering(&state, &caller, &d).await?;
    let version = if_match(&headers)?;
    let d = state
        .store
        .reorder_draft_attachments(&id, version, &input.order)
        .await?;
    Ok(respond(StatusCode::OK, &d))
}

/// `POST /api/v1/drafts/{id}/unsend`: takes a queued draft back before
/// the outbox sends it.
#[utoipa::path(
    post,
    path = "/drafts/{id}/unsend",
    operation_id = "unsendDraft",
    tag = "drafts",
    summary = "Take a queued draft back",
    description = "Takes a draft that is queued (waiting for its first try, or for a retry after a temporary failure such as an SMTP server that is down) back from the outbox: it is a draft again (`state: draft`), to be changed, sent again or discarded; a change gives it a new Message-ID. Idempotent: a draft that is already a draft or failed is returned unchanged. 403 when its author no longer answers the task (transferred on, or concluded): it stays queued. 409 when it is being sent at this moment or was sent: a message handed to the SMTP server cannot be called back. No body.",
    params(
        ("id" = String, Path, description = "The draft id."),
    ),
    responses(
        (status = 200, description = "A draft again (or it was one already).", body = crate::http::drafts::DraftView, headers(("ETag" = String, description = "The draft's version, quoted."))),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn unsend(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Response> {
    let d = own_draft(&state, &caller, &id).await?;
    // As for sending: only while the author answers the task (a draft taken
    // back after a transfer could never be sent again).
    if d.state == "queued" && !caller.0.admin {
        let sessions = state.store.task_sessions(&d.task_id).await?;
        if !answers(&sessions, &d.agent_id) {
            return Err(ApiError::forbidden(format!(
                "task '{}' is no longer yours (transferred or concluded): the reply stays queued",
                d.task_id
            )));
        }
    }
    let (draft, taken_back) = state.store.unsend_draft(&id).await?;
    match draft.state.as_str() {
        "draft" | "failed" => {
            if taken_back {
                tracing::info!(draft = %id, "queued reply taken back");
            }
            Ok(respond(StatusCode::OK, &draft))
        }
        "sending" => Err(ApiError::conflict(
            "the reply is being handed to the mail server at this moment: it can no longer be taken back",
        )),
        _ => Err(ApiError::conflict(
            "the reply was sent: a message handed to the mail server cannot be called back",
        )),
    }
}

/// `POST /api/v1/drafts/{id}/send`: queues the draft (202). Idempotent: a
/// draft already queued or sent is not queued again. Its Message-ID is fixed
/// here and reused by every retry.
#[utoipa::path(
    post,
    path = "/drafts/{id}/send",
    operation_id = "sendDraft",
    tag = "drafts",
    summary = "Send a draft",
    description = "Queues the draft for the outbox and answers at once (202); the outbox sends it through `[smtp]`, retrying temporary failures with backoff, and `state` shows how it goes (queued, sending, sent or failed with `last_error`). Its Message-ID is fixed here and reused by every retry, so the customer gets one message. Idempotent: a draft already queued, sending or sent is returned unchanged, not queued again; a failed draft is queued again. Once sent, the reply joins the task's conversation as an outbound message. No body, no `If-Match`. 403 when its author no longer answers the task (transferred on, or concluded); 409 when this server has no `[smtp]` configured; 422 when the draft has no recipients, a recipient is a service's own address, or it has no text (nothing to read in `body_text` or `body_html`) and no attachment.",
    params(
        ("id" = String, Path, description = "The draft id."),
    ),
    responses(
        (status = 202, description = "Queued (or already queued or sent).", body = crate::http::drafts::DraftView, headers(("ETag" = String, description = "The draft's version, quoted; send it back as `If-Match` with the next change. Example: `\"3\"`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
        (status = 422, response = doc::Unprocessable),
    ),
)]
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
        // Only while the agent holds the task: a draft left open in a page
        // after a transfer is not sent on the task's new holders' behalf.
        let sessions = state.store.task_sessions(&d.task_id).await?;
        if !answers(&sessions, &d.agent_id) && !caller.0.admin {
            return Err(ApiError::forbidden(format!(
                "task '{}' is no longer yours (transferred or concluded): this draft cannot be sent",
                d.task_id
            )));
        }
        if d.to.is_empty() && d.cc.is_empty() && d.bcc.is_empty() {
            return Err(ApiError::invalid("the draft has no recipients"));
        }
        // Mail to a service of ours comes back as our own and is not taken
        // in again: nobody there would see it.
        let own = state.store.own_addresses().await?;
        for (field, list) in [("to", &d.to), ("cc", &d.cc), ("bcc", &d.bcc)] {
            if let Some(a) = list.iter().find(|a| is_own(&own, &a.email)) {
                return Err(ApiError::invalid(format!(
                    "{field}: '{}' is a service's own address: mail sent there is not taken in again; transfer the task to that service instead",
                    a.email
                )));
            }
        }
        if d.attachments.is_empty() && !crate::mail::compose::has_text(&d.body_text, &d.body_html) {
            return Err(ApiError::invalid(
                "the draft has no text: write a message (body_text or body_html) or attach a file",
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
        tracing::info!(draft = %id, message_id = draft.message_id.as_deref().unwrap_or_default(), "reply queued");
    }
    Ok(respond(StatusCode::ACCEPTED, &draft))
}
