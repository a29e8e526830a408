//! What an agent may read about their own work: the waiting queue of their
//! services and each service's code catalog.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::Params;
use super::views;
use crate::http::doc;
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use utoipa::ToSchema;

/// The queued tasks an agent may pick up.
#[derive(Serialize, ToSchema)]
pub struct QueuePage<'a> {
    /// Up to `limit` of them, most urgent first.
    items: Vec<views::TaskView<'a>>,
    /// How many there are in all.
    total: i64,
}

/// The caller's services.
#[derive(Serialize, ToSchema)]
pub struct MyServices {
    items: Vec<MyService>,
}

/// A service the caller serves, with its active codes.
#[derive(Serialize, ToSchema)]
pub struct MyService {
    /// The active codes of its catalog.
    codes: Vec<ActiveCode>,
    /// Whether wrap-up codes are used in this service.
    codes_enabled: bool,
    id: String,
    name: String,
}

/// An active wrap-up code.
#[derive(Serialize, ToSchema)]
pub struct ActiveCode {
    code: String,
    /// Where it may be used: `primary`, `secondary` or `any`.
    kind: crate::domain::CodeKind,
    label: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// How many (1–200).
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
}

/// `GET /api/v1/me/queue`: the queued tasks of the caller's services (the
/// tasks they may pick up), most urgent first: higher priority, then the
/// longest waiting. `total` counts them all; `items` holds up to `limit`
/// (1–200, default 50).
#[utoipa::path(
    get,
    path = "/me/queue",
    operation_id = "myQueue",
    tag = "tasks",
    summary = "Waiting work",
    description = "The queued tasks of the caller's services (what they may pick up), most urgent first: higher priority, then the longest waiting. `total` counts all of them.",
    params(
        QueueQuery,
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::me::QueuePage),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
    ),
)]
pub async fn queue(
    State(state): State<AppState>,
    Caller(agent): Caller,
    Params(q): Params<QueueQuery>,
) -> ApiResult<axum::response::Response> {
    let limit = crate::domain::cursor::page_limit(q.limit)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let tasks = state.store.waiting_tasks(&agent.services, limit).await?;
    let total = state.store.waiting_count(&agent.services).await?;
    Ok(Json(QueuePage {
        items: tasks.iter().map(|t| views::task(t, None)).collect(),
        total,
    })
    .into_response())
}

/// `GET /api/v1/me/services`: the caller's services, each with whether codes
/// are enabled and its code catalog (active codes), read-only.
#[utoipa::path(
    get,
    path = "/me/services",
    operation_id = "myServices",
    tag = "tasks",
    summary = "The caller's services and code catalogs",
    description = "Each service the caller serves, whether codes are enabled there, and its active codes (read-only).",
    responses(
        (status = 200, description = "OK", body = crate::http::me::MyServices),
        (status = 401, response = doc::Unauthorized),
    ),
)]
pub async fn services(
    State(state): State<AppState>,
    Caller(agent): Caller,
) -> ApiResult<Json<MyServices>> {
    let mut items = Vec::with_capacity(agent.services.len());
    for id in &agent.services {
        // The caller's memberships are read once every few seconds: a
        // service deleted meanwhile is left out, not a 404 for the rest.
        let s = match state.store.service(id).await {
            Err(crate::store::StoreError::NotFound(_)) => continue,
            other => other?,
        };
        items.push(MyService {
            codes: s
                .codes
                .into_iter()
                .filter(|c| c.active)
                .map(|c| ActiveCode {
                    code: c.code,
                    kind: c.kind,
                    label: c.label,
                })
                .collect(),
            codes_enabled: s.settings.codes_enabled,
            id: s.id,
            name: s.name,
        });
    }
    Ok(Json(MyServices { items }))
}
