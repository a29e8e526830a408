//! Operators: mailbox health and the quarantine (see, retry, release, dismiss).
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Id, Params};
use crate::domain::millis_to_rfc3339;
use crate::http::doc;
use crate::ingest::prepare::{MailLimits, Origin, prepare};
use crate::mail::ParsedMail;
use crate::store::{Incoming, IncomingMail, IngestBatch, MailboxState, QuarantineEntry};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use utoipa::ToSchema;

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

/// A mailbox's ingestion status.
#[derive(Serialize, ToSchema)]
#[schema(as = Mailbox)]
pub struct MailboxView<'a> {
    /// Mail seen in the mailbox and not yet taken in.
    backlog: i64,
    counts: MailboxCounts,
    /// The sync cursor, committed with the mail it took in. For Maildir, uid_validity is null
    /// and last_uid 0.
    cursor: MailboxCursor,
    id: &'a str,
    kind: &'a str,
    /// How far behind the mailbox is: 0 while it is in sync (idle or polling with no backlog),
    /// otherwise the seconds since it last was in sync (last_successful_sync_at, or
    /// last_sync_at when it never was); 0 when it has never synced. The same value as the
    /// switchboard_ingest_lag_seconds metric.
    lag_seconds: f64,
    /// The last connection, login or protocol failure; never secrets.
    last_error: Option<&'a str>,
    #[schema(format = DateTime)]
    last_error_at: Option<String>,
    /// When it was last in sync: idle or polling with no backlog.
    #[schema(format = DateTime)]
    last_successful_sync_at: Option<String>,
    /// When a worker last reported the mailbox reachable (syncing, idle or polling) or
    /// committed mail from it.
    #[schema(format = DateTime)]
    last_sync_at: Option<String>,
    /// When the worker's lease runs out unless renewed.
    #[schema(format = DateTime)]
    lease_expires_at: Option<String>,
    /// Whether new mail is pushed (IMAP IDLE) rather than polled.
    push: bool,
    /// The service its mail goes to.
    service: &'a str,
    /// Where it reads from (host, user and folder, or a path); never secrets.
    source: &'a str,
    /// waiting: no worker holds it; connecting; syncing: taking in a backlog; idle: in sync,
    /// waiting for IMAP IDLE pushes; polling: in sync, checking at intervals; error: the last
    /// attempt failed (see last_error).
    state: &'a str,
    /// True while state is idle, polling or syncing.
    up: bool,
    /// The instance holding the mailbox's lease; null when none does.
    worker: Option<&'a str>,
}

/// The sync cursor, committed with the mail it took in. For Maildir,
/// uid_validity is null and last_uid 0.
#[derive(Serialize, ToSchema)]
pub struct MailboxCursor {
    /// The highest UID taken in.
    last_uid: i64,
    uid_validity: Option<i64>,
}

/// A mailbox's counters since it was first synced.
#[derive(Serialize, ToSchema)]
pub struct MailboxCounts {
    /// Mail skipped because the service already had it.
    duplicates: i64,
    /// Failures of the mailbox (connection, login, protocol).
    errors: i64,
    /// Messages stored from it.
    ingested: i64,
    /// Quarantine entries from it still held.
    quarantined: i64,
}

/// Every mailbox.
#[derive(Serialize, ToSchema)]
pub struct MailboxList<'a> {
    items: Vec<MailboxView<'a>>,
}

fn mailbox_view(m: &MailboxState, now: i64) -> MailboxView<'_> {
    MailboxView {
        backlog: m.backlog,
        counts: MailboxCounts {
            duplicates: m.duplicates_total,
            errors: m.errors_total,
            ingested: m.ingested_total,
            quarantined: m.quarantined,
        },
        cursor: MailboxCursor {
            last_uid: m.last_uid,
            uid_validity: m.uid_validity,
        },
        id: &m.id,
        kind: &m.kind,
        lag_seconds: lag_seconds(m, now),
        last_error: m.last_error.as_deref(),
        last_error_at: m.last_error_at.map(millis_to_rfc3339),
        last_successful_sync_at: m.synced_at.map(millis_to_rfc3339),
        last_sync_at: m.last_sync_at.map(millis_to_rfc3339),
        lease_expires_at: m.lease_expires_at.map(millis_to_rfc3339),
        push: m.push,
        service: &m.service,
        source: &m.description,
        state: &m.status,
        up: matches!(m.status.as_str(), "idle" | "polling" | "syncing"),
        worker: m.worker.as_deref(),
    }
}

/// `GET /api/v1/ops/mailboxes`.
#[utoipa::path(
    get,
    path = "/ops/mailboxes",
    operation_id = "listMailboxes",
    tag = "ops",
    summary = "Mailbox health",
    description = "Every configured mailbox, by id, with its state, lease, cursor, last sync and error, backlog, lag and counts. Admins only. Ingestion is exactly-once: a mail's message, the task or conversation entry it makes, any quarantine entry and the mailbox cursor are committed in one transaction, fenced by the mailbox's lease (one worker at a time), so a crash or a lost lease never loses a mail nor takes it in twice. A mail already stored for the service (same content, whatever the mailbox, UIDVALIDITY or number of deliveries) is counted as a duplicate and makes nothing new. `lag_seconds` is 0 while a mailbox is in sync, otherwise the seconds since it last was.",
    responses(
        (status = 200, description = "OK", body = crate::http::ops::MailboxList),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
    ),
)]
pub async fn mailboxes(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::response::Response> {
    caller.require_admin()?;
    let now = crate::domain::now_millis();
    let list = state.store.mailboxes().await?;
    Ok(Json(MailboxList {
        items: list.iter().map(|m| mailbox_view(m, now)).collect(),
    })
    .into_response())
}

/// A mail that could not be taken in.
#[derive(Serialize, ToSchema)]
#[schema(as = QuarantineEntry)]
pub struct QuarantineView<'a> {
    #[schema(format = DateTime)]
    created_at: String,
    /// What went wrong, for humans.
    detail: &'a str,
    id: &'a str,
    /// The mailbox id.
    mailbox: &'a str,
    /// Once ingested: the message it became (null if it turned out to be a duplicate).
    message: Option<&'a str>,
    /// Whether the raw source is stored (see GET .../raw). It is not for mail over the size
    /// limit: that mail stays in its mailbox.
    raw_kept: bool,
    reason: &'a str,
    /// When it was ingested or dismissed.
    #[schema(format = DateTime)]
    resolved_at: Option<String>,
    /// The service id.
    service: &'a str,
    /// Size of the mail in bytes.
    size: i64,
    /// Where the mail is in its mailbox: `folder:uid` for IMAP, the file name for Maildir.
    source_ref: Option<&'a str>,
    /// held: waiting for an operator; ingested: taken in by retry or release; dismissed: kept
    /// on record, never ingested.
    state: &'a str,
    /// The IMAP UID; null for Maildir.
    uid: Option<i64>,
}

/// Quarantine entries, newest first.
#[derive(Serialize, ToSchema)]
pub struct QuarantineList<'a> {
    items: Vec<QuarantineView<'a>>,
}

fn quarantine_view(q: &QuarantineEntry) -> QuarantineView<'_> {
    QuarantineView {
        created_at: millis_to_rfc3339(q.created_at),
        detail: &q.detail,
        id: &q.id,
        mailbox: &q.mailbox_id,
        message: q.message_ref.as_deref(),
        raw_kept: q.has_raw,
        reason: &q.reason,
        resolved_at: q.resolved_at.map(millis_to_rfc3339),
        service: &q.service_id,
        size: q.size,
        source_ref: q.source_ref.as_deref(),
        state: &q.state,
        uid: q.uid,
    }
}

/// What taking a quarantined mail in made.
#[derive(Serialize, ToSchema)]
#[schema(as = QuarantineIngested)]
pub struct Ingested {
    /// True when the service already had this mail: nothing new was made.
    duplicate: bool,
    /// Ids of the messages stored.
    messages: Vec<String>,
    /// Ids of the tasks created (none when the mail joined an open task, was attached or
    /// recorded, or was a duplicate).
    tasks: Vec<String>,
}

/// A dismissed quarantine entry.
#[derive(Serialize, ToSchema)]
#[schema(as = QuarantineDismissed)]
pub struct Dismissed {
    id: String,
    /// Always `dismissed`.
    state: &'static str,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QuarantineQuery {
    /// Only entries in this state; every state when absent or empty. One of: `held`,
    /// `ingested`, `dismissed`.
    state: Option<String>,
    /// At most this many entries.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
}

/// `GET /api/v1/ops/quarantine?state=held|ingested|dismissed`.
#[utoipa::path(
    get,
    path = "/ops/quarantine",
    operation_id = "listQuarantine",
    tag = "ops",
    summary = "Quarantined mail",
    description = "Mail that could not be taken in, newest first (a single page: no cursor). Admins only. Unknown query parameters are refused (400).",
    params(
        QuarantineQuery,
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::ops::QuarantineList),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
    ),
)]
pub async fn quarantine(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<QuarantineQuery>,
) -> ApiResult<axum::response::Response> {
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
    Ok(Json(QuarantineList {
        items: items.iter().map(quarantine_view).collect(),
    })
    .into_response())
}

/// `GET /api/v1/ops/quarantine/{id}/raw`: the raw source, as a download.
#[utoipa::path(
    get,
    path = "/ops/quarantine/{id}/raw",
    operation_id = "downloadQuarantineRaw",
    tag = "ops",
    summary = "The raw source of a quarantined mail",
    description = "The mail exactly as it was received, as a `message/rfc822` download (`<id>.eml`). Admins only. 404 when there is no such entry, or when its raw source was not kept (mail over the size limit stays in its mailbox; `raw_kept` is false).",
    params(
        ("id" = String, Path, description = "The quarantine entry id (`id` of a QuarantineEntry)."),
    ),
    responses(
        (status = 200, description = "The raw source.", body = inline(doc::Binary), content_type = "message/rfc822", headers(("Content-Disposition" = String, description = "Example: `attachment; filename=\"qrn_0123456789abcdef01234567.eml\"`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
    ),
)]
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
    Ok(eml_download(&id, raw))
}

/// A mail's raw source as a download: `message/rfc822`, `<id>.eml`.
pub(super) fn eml_download(id: &str, raw: Vec<u8>) -> impl IntoResponse + use<> {
    (
        [
            (header::CONTENT_TYPE, "message/rfc822".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}.eml\""),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        raw,
    )
}

async fn ingest_entry(
    state: &AppState,
    entry: &QuarantineEntry,
    item: Incoming,
) -> ApiResult<Json<Ingested>> {
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
    state
        .metrics
        .ingest_outcomes(&entry.mailbox_id, report.outcomes());
    if !report.new_tasks.is_empty() {
        state
            .metrics
            .tasks_created
            .with_label_values(&[entry.service_id.as_str(), "email", "mail"])
            .inc_by(report.new_tasks.len() as u64);
    }
    Ok(Json(Ingested {
        duplicate: report.duplicates > 0,
        messages: report.messages,
        tasks: report.new_tasks,
    }))
}

/// A held entry and its raw source; a mail set aside for its size is
/// fetched again from its mailbox, unless it is over `max_bytes` (then
/// nothing is downloaded only to be refused).
async fn held(state: &AppState, id: &str, max_bytes: u64) -> ApiResult<(QuarantineEntry, Vec<u8>)> {
    let (entry, raw) = state.store.quarantine_entry(id).await?;
    if entry.state != "held" {
        return Err(ApiError::conflict(format!(
            "quarantine entry '{id}' is already {}",
            entry.state
        )));
    }
    let raw = match raw {
        Some(raw) => raw,
        // Set aside for its size, its source not kept: fetched again from
        // its mailbox (its IMAP folder by UID, its Maildir file), where it
        // still is.
        None if entry.reason == "too_large" && entry.size.max(0) as u64 > max_bytes => {
            return Err(ApiError::conflict(format!(
                "still cannot take it in: it is {} bytes, over ingest.max_message_bytes ({max_bytes}); raise the limit, or release it",
                entry.size
            )));
        }
        None if entry.reason == "too_large" => crate::ingest::refetch::refetch(
            state.mailboxes.get(&entry.mailbox_id),
            &entry,
            state.imap_timeout,
        )
        .await
        .map_err(|e| {
            ApiError::conflict(format!(
                "the mail was set aside for its size and its source was not kept; fetching it again from mailbox '{}' failed: {e}",
                entry.mailbox_id
            ))
        })?,
        None => {
            return Err(ApiError::conflict(format!(
                "the raw source was not kept ({})",
                entry.detail
            )));
        }
    };
    Ok((entry, raw))
}

/// `POST /api/v1/ops/quarantine/{id}/retry`: parse again with the current limits.
#[utoipa::path(
    post,
    path = "/ops/quarantine/{id}/retry",
    operation_id = "retryQuarantine",
    tag = "ops",
    summary = "Parse a quarantined mail again",
    description = "Parses the held mail again with the current limits (ingest.max_message_bytes, the parse timeout) and, if that now succeeds, takes it in like any other mail: threading, the service's auto-reply policy, deduplication. The message, its task and the entry's move to `ingested` are committed together, exactly once; the mailbox cursor does not move. Admins only. 409 when the entry is no longer held (already ingested or dismissed), when it still cannot be parsed or is still over the limit (the entry stays held: raise `ingest.max_message_bytes`, release or dismiss it), or when a mail set aside for its size (its source not kept) cannot be fetched again from its mailbox (its IMAP folder by UID, its Maildir file; the mail found must be the size recorded). 404 when there is no such entry. No body.",
    params(
        ("id" = String, Path, description = "The quarantine entry id (`id` of a QuarantineEntry)."),
    ),
    responses(
        (status = 200, description = "Taken in.", body = crate::http::ops::Ingested),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn quarantine_retry(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Ingested>> {
    caller.require_admin()?;
    let (entry, raw) = held(&state, &id, state.ingest_limits.max_message_bytes).await?;
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
#[utoipa::path(
    post,
    path = "/ops/quarantine/{id}/release",
    operation_id = "releaseQuarantine",
    tag = "ops",
    summary = "Take a quarantined mail in as best it can be",
    description = "Takes the held mail in as best it can be, even unparsed. It is parsed without the size limit; if it still cannot be parsed, it becomes a task anyway, with the subject \"(unreadable message from the quarantine: <reason>)\", its first 64 KiB as text and no known customer, whose message keeps the raw source. Committed exactly once, with the entry's move to `ingested`; a mail the service already has is a duplicate and makes nothing new. Admins only. A mail set aside for its size is fetched again from its mailbox first, as for retry. 409 when the entry is no longer held (already ingested or dismissed) or when its source can be neither found nor fetched again. 404 when there is no such entry. No body.",
    params(
        ("id" = String, Path, description = "The quarantine entry id (`id` of a QuarantineEntry)."),
    ),
    responses(
        (status = 200, description = "Taken in.", body = crate::http::ops::Ingested),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn quarantine_release(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Ingested>> {
    caller.require_admin()?;
    let (entry, raw) = held(&state, &id, u64::MAX).await?;
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
                source_id: None,
                raw,
                parsed,
                kind: crate::mail::MailKind::Normal,
                customer: state.store.resolve_customer(None, None).await?.matched,
                customer_details: Default::default(),
            }))
        }
        ok => ok,
    };
    ingest_entry(&state, &entry, item).await
}

/// `POST /api/v1/ops/quarantine/{id}/dismiss`: keep it on record, never ingest.
#[utoipa::path(
    post,
    path = "/ops/quarantine/{id}/dismiss",
    operation_id = "dismissQuarantine",
    tag = "ops",
    summary = "Dismiss a quarantined mail",
    description = "Dismisses the held mail: it is kept on record (with its raw source, if kept) and never ingested. Admins only. 404 for an unknown id; 409 when the entry was already ingested or dismissed. No body.",
    params(
        ("id" = String, Path, description = "The quarantine entry id (`id` of a QuarantineEntry)."),
    ),
    responses(
        (status = 200, description = "Dismissed.", body = crate::http::ops::Dismissed),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn quarantine_dismiss(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Dismissed>> {
    caller.require_admin()?;
    state.store.dismiss_quarantine(&id).await?;
    Ok(Json(Dismissed {
        id,
        state: "dismissed",
    }))
}
