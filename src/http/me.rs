//! What an agent may read about their own work: the waiting queue of their
//! services and each service's code catalog.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::Params;
use super::views;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueQuery {
    limit: Option<u32>,
}

/// `GET /api/v1/me/queue`: the queued tasks of the caller's services (the
/// tasks they may pick up), most urgent first: higher priority, then the
/// longest waiting. `total` counts them all; `items` holds up to `limit`
/// (1–200, default 50).
pub async fn queue(
    State(state): State<AppState>,
    Caller(agent): Caller,
    Params(q): Params<QueueQuery>,
) -> ApiResult<Json<Value>> {
    let limit = crate::domain::cursor::page_limit(q.limit)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let tasks = state.store.waiting_tasks(&agent.services, limit).await?;
    let total = state.store.waiting_count(&agent.services).await?;
    Ok(Json(json!({
        "items": tasks.iter().map(|t| views::task(t, None)).collect::<Vec<_>>(),
        "total": total,
    })))
}

/// `GET /api/v1/me/services`: the caller's services, each with whether codes
/// are enabled and its code catalog (active codes), read-only.
pub async fn services(
    State(state): State<AppState>,
    Caller(agent): Caller,
) -> ApiResult<Json<Value>> {
    let mut items = Vec::with_capacity(agent.services.len());
    for id in &agent.services {
        let s = state.store.service(id).await?;
        items.push(json!({
            "id": s.id,
            "name": s.name,
            "codes_enabled": s.settings.codes_enabled,
            "codes": s.codes.iter().filter(|c| c.active).map(|c| json!({
                "code": c.code,
                "label": c.label,
                "kind": c.kind.as_str(),
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(Json(json!({"items": items})))
}
