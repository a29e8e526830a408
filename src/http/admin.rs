//! Admin endpoints: upsert services, code catalogs, agents and external contacts.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id, ListBody};
use super::views;
use crate::domain::id::validate_slug;
use crate::domain::routing::Distribution;
use crate::domain::service::{ContextLink, RonaTimeouts, Service, ServiceSettings};
use crate::domain::token::{MIN_TOKEN_LEN, hash_token};
use crate::domain::wrapup::CatalogCode;
use crate::store::{AgentUpsert, Capacity};
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        message,
    )
}

fn slug(what: &str, id: &str) -> ApiResult<()> {
    validate_slug(what, id).map_err(|e| invalid(e.to_string()))
}

fn email_like(field: &str, s: &str) -> ApiResult<()> {
    let ok = s.len() <= 320
        && s.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !s.contains(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{field}: '{s}' is not an email address")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInput {
    name: String,
    #[serde(default)]
    email_addresses: Vec<String>,
    priority: Option<i32>,
    rona_timeout_secs: Option<RonaTimeouts>,
    codes_enabled: Option<bool>,
    context_links: Option<Vec<ContextLink>>,
    keep_context_days: Option<u32>,
    auto_reply_policy: Option<String>,
    conclude_on_send: Option<bool>,
    codes: Option<Vec<CatalogCode>>,
    distribution: Option<Distribution>,
    broadcast_size: Option<u32>,
    rona_reset_secs: Option<u32>,
    max_ronas: Option<u32>,
    overflow_service: Option<String>,
}

/// Checks a code catalog: valid, unique codes with labels.
pub fn check_codes(codes: &[CatalogCode]) -> ApiResult<()> {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in codes.iter().enumerate() {
        slug(&format!("codes[{i}].code"), &c.code)?;
        if c.label.trim().is_empty() || c.label.len() > 200 {
            return Err(invalid(format!(
                "codes[{i}].label must be 1 to 200 characters"
            )));
        }
        if !seen.insert(&c.code) {
            return Err(invalid(format!(
                "codes[{i}].code: duplicate code '{}'",
                c.code
            )));
        }
    }
    Ok(())
}

/// `PUT /api/v1/admin/services/{id}`.
pub async fn put_service(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(input): Body<ServiceInput>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    slug("service id", &id)?;
    if input.name.trim().is_empty() || input.name.len() > 200 {
        return Err(invalid("name must be 1 to 200 characters"));
    }
    for a in &input.email_addresses {
        email_like("email_addresses", a)?;
    }
    let defaults = ServiceSettings::default();
    let settings = ServiceSettings {
        priority: crate::domain::task::validate_priority(
            input.priority.unwrap_or(defaults.priority),
        )?,
        rona_timeout_secs: input
            .rona_timeout_secs
            .unwrap_or(defaults.rona_timeout_secs),
        codes_enabled: input.codes_enabled.unwrap_or(defaults.codes_enabled),
        context_links: input.context_links.unwrap_or_default(),
        keep_context_days: input.keep_context_days.unwrap_or(0),
        auto_reply_policy: input
            .auto_reply_policy
            .unwrap_or(defaults.auto_reply_policy),
        conclude_on_send: input.conclude_on_send.unwrap_or(false),
        distribution: input.distribution.unwrap_or(defaults.distribution),
        broadcast_size: input.broadcast_size.unwrap_or(defaults.broadcast_size),
        rona_reset_secs: input.rona_reset_secs.unwrap_or(defaults.rona_reset_secs),
        max_ronas: input.max_ronas,
        overflow_service: input.overflow_service,
    };
    settings
        .check_routing(&id)
        .map_err(|e| invalid(e.to_string()))?;
    if let Some(o) = &settings.overflow_service {
        if state.store.service(o).await.is_err() {
            return Err(invalid(format!(
                "overflow_service: unknown service '{}'",
                crate::domain::clip(o, 64)
            )));
        }
        if settings.max_ronas.is_none() {
            return Err(invalid(
                "overflow_service: set max_ronas too: how many RONAs send a task there",
            ));
        }
    }
    if settings.keep_context_days > crate::domain::service::MAX_KEEP_CONTEXT_DAYS {
        return Err(invalid(
            "keep_context_days: context may be kept for at most 30 days",
        ));
    }
    crate::domain::context::check_context_links(&settings.context_links, "context_links")?;
    if !matches!(
        settings.auto_reply_policy.as_str(),
        "drop" | "attach" | "queue"
    ) {
        return Err(invalid("auto_reply_policy must be drop, attach or queue"));
    }
    if let Some(codes) = &input.codes {
        check_codes(codes)?;
    }
    let service = Service {
        id: id.clone(),
        name: input.name.trim().to_string(),
        email_addresses: input
            .email_addresses
            .iter()
            .map(|a| a.trim().to_lowercase())
            .collect(),
        settings,
        codes: Vec::new(),
    };
    state
        .store
        .upsert_service(&service, input.codes.as_deref())
        .await?;
    state.details.forget_services();
    Ok(Json(
        serde_json::to_value(state.store.service(&id).await?).unwrap_or_default(),
    ))
}

/// `DELETE /api/v1/admin/services/{id}`: refused (`409`) while it has live
/// tasks; its stored conversation context is deleted at once, its members
/// and codes go; its history keeps its name. Declared in the configuration,
/// it comes back at the next start.
pub async fn delete_service(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<axum::http::StatusCode> {
    caller.require_admin()?;
    let purged = state.store.delete_service(&id).await?;
    state.details.forget_services();
    tracing::info!(service = %id, context_records = purged, "service deleted with its stored context");
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// `GET /api/v1/admin/services/{id}`.
pub async fn get_service(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(
        serde_json::to_value(state.store.service(&id).await?).unwrap_or_default(),
    ))
}

/// `PUT /api/v1/admin/services/{id}/codes`: replaces the code catalog
/// (codes left out are retired, so saved sessions keep their meaning).
pub async fn put_codes(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    ListBody(codes): ListBody<Vec<CatalogCode>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    check_codes(&codes)?;
    let service = state.store.service(&id).await?;
    state.store.upsert_service(&service, Some(&codes)).await?;
    Ok(Json(
        serde_json::to_value(state.store.service(&id).await?).unwrap_or_default(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInput {
    name: String,
    email: String,
    /// A new bearer token; the stored one is kept when absent.
    token: Option<String>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    admin: bool,
    capacity: Option<Capacity>,
}

/// `PUT /api/v1/admin/agents/{id}`.
pub async fn put_agent(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(input): Body<AgentInput>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    slug("agent id", &id)?;
    if input.name.trim().is_empty() || input.name.len() > 200 {
        return Err(invalid("name must be 1 to 200 characters"));
    }
    email_like("email", &input.email)?;
    if let Some(t) = &input.token
        && (t.len() < MIN_TOKEN_LEN || t.len() > 512 || t.contains(char::is_whitespace))
    {
        return Err(invalid(format!(
            "token must be {MIN_TOKEN_LEN} to 512 characters without spaces"
        )));
    }
    for s in &input.services {
        if state.store.service(s).await.is_err() {
            return Err(invalid(format!("services: unknown service '{s}'")));
        }
    }
    let upsert = AgentUpsert {
        id: id.clone(),
        name: input.name.trim().to_string(),
        email: input.email,
        token_hash: input.token.as_deref().map(hash_token),
        admin: input.admin,
        capacity: input.capacity.unwrap_or_default(),
        services: input.services,
    };
    state.store.upsert_agent(&upsert).await?;
    // A changed or revoked token must stop working at once.
    state.tokens.clear();
    Ok(Json(views::agent(&state.store.agent(&id).await?)))
}

/// `GET /api/v1/admin/agents/{id}`.
pub async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(views::agent(&state.store.agent(&id).await?)))
}

/// `GET /api/v1/admin/contacts/{id}`.
pub async fn get_contact(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    Ok(Json(json!(state.store.contact(&id).await?)))
}

/// `PUT /api/v1/admin/services/{id}/templates`: overrides of the reply
/// templates (`quote_text`, `quote_html`, `signature_text`, `signature_html`);
/// a template that does not parse or render is refused here, not when a reply is written.
pub async fn put_templates(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(templates): Body<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    state.store.service(&id).await?;
    crate::mail::compose::ReplyTemplates::with_overrides(&templates)
        .map_err(|e| invalid(e.to_string()))?;
    state.store.set_reply_templates(&id, &templates).await?;
    Ok(Json(json!({"service": id, "templates": templates})))
}
