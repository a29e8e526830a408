//! `POST /api/v1/tasks/{id}/transcript`: the transcript of a call, posted by
//! telephony or a transcription service (admins and integrations with
//! `tasks:write`). Its lines list with `GET /api/v1/tasks/{id}/messages`,
//! count in the task's messages summary, and show in the workspace.
use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id};
use super::principal::Principal;
use crate::domain::now_millis;
use crate::domain::transcript::{PostedLine, check_lines};
use crate::http::doc;
use crate::store::TranscriptPost;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Lines of a call's transcript.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TranscriptInput, example = json!({"lines": [
    {"id": "call-4711/1", "speaker": "customer", "text": "Hello, my parcel is late.", "at": "2026-12-06T10:00:03Z"},
    {"id": "call-4711/2", "speaker": "agent", "name": "Alice", "text": "Let me look it up.", "at": "2026-12-06T10:00:07Z"}
]}))]
pub struct TranscriptInput {
    /// 1 to 500 lines.
    #[schema(min_items = 1, max_items = 500)]
    lines: Vec<LineInput>,
}

/// One line of a transcript.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TranscriptLineInput)]
pub struct LineInput {
    /// The line's id at the poster: stored once (a repeated post of the same
    /// line changes nothing; other words under a used id are a 409).
    #[schema(max_length = 200)]
    id: String,
    /// `customer`, `agent` or `bot` (an IVR or voice bot).
    #[schema(example = "customer")]
    speaker: String,
    /// The speaker's name as the poster knows it.
    #[schema(max_length = 200)]
    name: Option<String>,
    /// What was said; line breaks allowed.
    #[schema(max_length = 16384)]
    text: String,
    /// When it was said (RFC 3339); when received if absent. Lines are
    /// shown in this order.
    #[schema(value_type = Option<String>, format = DateTime)]
    at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a post did.
#[derive(Serialize, ToSchema)]
pub struct TranscriptPosted {
    /// New lines stored.
    added: u64,
    /// Lines stored before, word for word (a retried post).
    repeated: u64,
}

/// `POST /api/v1/tasks/{id}/transcript`.
#[utoipa::path(
    post,
    path = "/tasks/{id}/transcript",
    operation_id = "addCallTranscript",
    tag = "tasks",
    summary = "Add lines to a call's transcript (admins and integrations)",
    description = "Admins and integrations with `tasks:write` (telephony, a transcription service) add what was said in a call task, live or after the call (also once it has ended). Each line is stored once by its `id`: a retried post answers 200 with the lines counted as `repeated`; a post that reuses an id for other words is refused with 409 `line_id_reused` and stores none of its lines. The lines list with GET /api/v1/tasks/{id}/messages (in the order spoken, like an IM transcript), count in the task's `messages` summary, show in the agents' page, and the agents holding the task get an SSE `transcript` event. 409 `not_a_call` for an email or IM task (their messages come from their channel). At most 500 lines per request, and a body of at most 2 MiB (413 beyond); a line that breaks a rule (empty or too long text, unknown speaker, an id repeated in the request) is a 422 naming it (`lines[3].text`), and nothing is stored.",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    request_body(content = crate::http::transcript::TranscriptInput),
    responses(
        (status = 200, description = "Stored.", body = crate::http::transcript::TranscriptPosted),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn add(
    State(state): State<AppState>,
    principal: Principal,
    Id(id): Id<String>,
    Body(input): Body<TranscriptInput>,
) -> ApiResult<(StatusCode, Json<TranscriptPosted>)> {
    principal.require("tasks:write", false)?;
    let posted = input
        .lines
        .into_iter()
        .map(|l| PostedLine {
            id: l.id,
            speaker: l.speaker,
            name: l.name,
            text: l.text,
            at: l.at.map(|t| t.timestamp_millis()),
        })
        .collect();
    let lines = check_lines(posted, now_millis()).map_err(|e| ApiError::invalid(e.to_string()))?;
    let task = state.store.task(&id).await?;
    if task.modality != crate::domain::Modality::Call {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_a_call",
            format!(
                "task '{id}' is an {} task: only call tasks take a transcript (its messages come from its channel)",
                task.modality.as_str()
            ),
        ));
    }
    match state.store.add_call_transcript(&id, &lines).await? {
        TranscriptPost::Stored { added, repeated } => {
            tracing::info!(task = %id, by = %principal.label(), added, repeated, "call transcript lines stored");
            Ok((StatusCode::OK, Json(TranscriptPosted { added, repeated })))
        }
        TranscriptPost::IdReused(line) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "line_id_reused",
            format!(
                "line id '{}' was posted before with other words (speaker, name, text or time): a line's id names one line; nothing of this post was stored",
                super::error::shown(&line)
            ),
        )),
    }
}
