//! My Sessions, wrap-up and save.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id, Params};
use super::views;
use crate::domain::cursor::{Cursor, cut_to_page, page_limit};
use crate::domain::{Modality, WrapUp};
use crate::http::doc;
use crate::store::{Session, SessionFilter};
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MySessionsQuery {
    /// live: not yet concluded; concluded: saved or never answered; all (or absent): both. One
    /// of: `live`, `concluded`, `all`.
    state: Option<String>,
    /// Only sessions of this modality.
    #[param(value_type = Option<crate::domain::Modality>)]
    modality: Option<String>,
    /// Case-insensitive substring of the customer's name or address, the subject or the tags,
    /// in the caller's own sessions (served by an index on both backends).
    #[param(max_length = 200)]
    q: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /api/v1/me/sessions`: the caller's own sessions, newest first.
#[utoipa::path(
    get,
    path = "/me/sessions",
    operation_id = "mySessions",
    tag = "sessions",
    summary = "My Sessions",
    description = "The caller's own sessions, newest first, with keyset pagination. Unknown query parameters are refused (400).",
    params(
        MySessionsQuery,
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::views::SessionPage),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
    ),
)]
pub async fn my_sessions(
    State(state): State<AppState>,
    Caller(agent): Caller,
    Params(query): Params<MySessionsQuery>,
) -> ApiResult<Response> {
    let live = match query.state.as_deref() {
        None | Some("") | Some("all") => None,
        Some("live") => Some(true),
        Some("concluded") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state '{other}' is not live or concluded"
            )));
        }
    };
    let modality = match query.modality.as_deref() {
        None | Some("") => None,
        Some(m) => Some(Modality::parse(m).map_err(|e| ApiError::bad_request(e.to_string()))?),
    };
    if query.q.as_deref().is_some_and(|q| q.chars().count() > 200) {
        return Err(ApiError::bad_request("q is longer than 200 characters"));
    }
    let limit = page_limit(query.limit).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let after = query
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(Cursor::decode)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let filter = SessionFilter {
        live,
        modality,
        phone: query.q.as_deref().and_then(|q| {
            crate::domain::phone::phone_search_form(q, state.details.default_calling_code)
        }),
        query: query.q,
        after,
        // One more than the page: a next page is offered only when there is one.
        limit: limit + 1,
    };
    let mut sessions = state.store.my_sessions(&agent.id, &filter).await?;
    let more = cut_to_page(&mut sessions, limit);
    let next = more.then(|| next_cursor(&sessions)).flatten();
    Ok(views::sessions_page(&sessions, next.as_deref()))
}

/// The cursor after the last of `sessions`.
fn next_cursor(sessions: &[Session]) -> Option<String> {
    sessions.last().map(|s| {
        Cursor {
            created_at: s.created_at,
            id: s.id.clone(),
        }
        .encode()
    })
}

/// The session, if the caller may act on it: only its own agent.
async fn own_session(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Session> {
    let session = state.store.session(id).await?;
    if session.agent_id != caller.0.id {
        // Not "forbidden": whether another agent's session exists is not the caller's business.
        return Err(ApiError::not_found(format!("session '{id}' not found")));
    }
    Ok(session)
}

/// `GET /api/v1/sessions/{id}`.
#[utoipa::path(
    get,
    path = "/sessions/{id}",
    operation_id = "getSession",
    tag = "sessions",
    summary = "A session",
    description = "The caller's own session; admins see any. Another agent's session answers 404. The `ETag` is the wrap-up's fingerprint, for `If-Match` on `PUT /sessions/{id}/wrapup`.",
    params(
        ("id" = String, Path, description = "The session id."),
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::views::SessionFields),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn get_session(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Response> {
    let session = if caller.0.admin {
        state.store.session(&id).await?
    } else {
        own_session(&state, &caller, &id).await?
    };
    Ok(with_wrapup_etag(
        views::session_response(&session),
        &session,
    ))
}

/// `response` with the session's wrap-up fingerprint as its `ETag`: what
/// `If-Match` on `PUT …/wrapup` compares, so a client's first write can be
/// conditional too.
fn with_wrapup_etag(mut response: Response, session: &crate::store::Session) -> Response {
    if let Ok(v) =
        axum::http::HeaderValue::from_str(&format!("\"{}\"", session.wrapup.fingerprint()))
    {
        response.headers_mut().insert(axum::http::header::ETAG, v);
    }
    response
}

/// `PUT /api/v1/sessions/{id}/wrapup`: codes from the service's catalog and tags.
#[utoipa::path(
    put,
    path = "/sessions/{id}/wrapup",
    operation_id = "putWrapup",
    tag = "sessions",
    summary = "Set the wrap-up",
    description = "Replaces the wrap-up of the caller's own live session: codes from the service's catalog and tags. An offer not yet accepted has none to set (409), and a saved session is final (409). Optional `If-Match: \"<fingerprint>\"` (the `ETag` this endpoint answered last; the workspace page keeps the one it rendered): 412 (code wrapup_changed) when the codes and tags changed since, so a second tab cannot overwrite them unseen (checked in one transaction with the write).",
    params(
        ("id" = String, Path, description = "The session id."),
    ),
    request_body(content = crate::domain::WrapUp),
    responses(
        (status = 200, description = "OK", body = crate::http::views::SessionFields),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
        (status = 412, description = "The codes and tags changed since the `If-Match` fingerprint (code wrapup_changed).", body = doc::ErrorBody),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn put_wrapup(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    headers: axum::http::HeaderMap,
    Body(wrapup): Body<WrapUp>,
) -> ApiResult<Response> {
    let session = own_session(&state, &caller, &id).await?;
    // Before the body is checked: a saved session is a 409 whatever it holds.
    if let Some(why) = session.wrapup_closed() {
        return Err(ApiError::conflict(why));
    }
    // With If-Match: only over the codes and tags the caller read (a second
    // tab's older view must not overwrite what was kept meanwhile), checked
    // in one transaction with the write.
    let based_on = headers
        .get(axum::http::header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .unwrap_or_default()
                .trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .to_string()
        })
        .filter(|v| v != "*");
    // A fingerprint is 24 hex digits: anything else is no version at all.
    if let Some(b) = &based_on
        && !(b.len() == 24 && b.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(ApiError::bad_request(
            "If-Match: not a wrap-up ETag (24 hex digits in quotes, as GET /sessions/{id} or this endpoint answered it), nor *",
        ));
    }
    // A view already stale is told so before the body is looked at; the
    // store checks again under the lock.
    if based_on
        .as_deref()
        .is_some_and(|b| b != session.wrapup.fingerprint())
    {
        return Err(crate::store::StoreError::wrapup_changed().into());
    }
    let service = state.store.service(&session.service_id).await?;
    let wrapup = wrapup.validated(
        &service.codes,
        service.settings.codes_enabled,
        &session.wrapup.codes,
    )?;
    let session = state
        .store
        .set_wrapup(&id, &wrapup, based_on.as_deref())
        .await?;
    Ok(with_wrapup_etag(
        views::session_response(&session),
        &session,
    ))
}

/// `POST /api/v1/sessions/{id}/save`: concludes the reporting record, once.
#[utoipa::path(
    post,
    path = "/sessions/{id}/save",
    operation_id = "saveSession",
    tag = "sessions",
    summary = "Save (conclude) a session",
    description = "Concludes the caller's own session in wrap_up: from then on it is a final, immutable reporting record. Saving is final: a second save answers 409, as does saving a session still offered or connected. Concludes the task too when it was its last open session (parts transferred away are saved on their own and do not hold it open). No body.",
    params(
        ("id" = String, Path, description = "The session id."),
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::views::SessionFields),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn save(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Response> {
    own_session(&state, &caller, &id).await?;
    let session = state.store.save_session(&id).await?;
    state.metrics.saves.inc();
    tracing::info!(session = %id, agent = %caller.0.id, "session saved");
    Ok(views::session_response(&session))
}
