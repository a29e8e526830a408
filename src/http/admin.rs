//! Admin endpoints: upsert services, code catalogs, agents and external contacts.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id, ListBody};
use super::views;
use crate::domain::id::validate_slug;
use crate::domain::routing::Distribution;
use crate::domain::service::{
    CapacityDefaults, ContextLink, MAX_KEEP_CONTEXT_DAYS, RonaTimeouts, Service, ServiceSettings,
};
use crate::domain::token::{MIN_TOKEN_LEN, hash_token};
use crate::domain::wrapup::CatalogCode;
use crate::http::doc;
use crate::store::{AgentUpsert, Capacity};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

fn slug(what: &str, id: &str) -> ApiResult<()> {
    validate_slug(what, id).map_err(|e| ApiError::invalid(e.to_string()))
}

fn email_like(field: &str, s: &str) -> ApiResult<()> {
    let ok = s.len() <= 320
        && s.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !s.contains(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field}: '{s}' is not an email address"
        )))
    }
}

/// A service to create or replace; settings left out take their defaults.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceInput {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// The service's own addresses (never reply recipients); stored trimmed
    /// and lowercased.
    #[serde(default)]
    email_addresses: Vec<String>,
    #[schema(value_type = Option<i32>, minimum = -100, maximum = 100, default = 0)]
    priority: Option<serde_json::Number>,
    /// Seconds an offer waits for an answer: one number for every modality,
    /// or per modality (the others keeping the default of 30).
    #[schema(value_type = Option<RonaTimeoutsInput>)]
    rona_timeout_secs: Option<RonaTimeouts>,
    #[schema(default = true)]
    codes_enabled: Option<bool>,
    /// The context links of the session details, with `$(placeholders)`; an
    /// unknown placeholder is refused.
    context_links: Option<Vec<ContextLink>>,
    /// Days the conversation context is kept after the session; 0 deletes it at once.
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 30, default = 0)]
    keep_context_days: Option<serde_json::Number>,
    /// What to do with auto-replies and bounces: `drop`, `attach` or `queue`.
    #[schema(default = "attach")]
    auto_reply_policy: Option<String>,
    /// Sending a reply concludes the agent's part (as if marked handled).
    #[schema(default = false)]
    conclude_on_send: Option<bool>,
    /// Replaces the code catalog when given (codes left out are retired);
    /// kept as is when absent.
    codes: Option<Vec<CatalogCode>>,
    /// How tasks reach agents.
    distribution: Option<Distribution>,
    /// Agents offered a task at once under `broadcast` (1 to 100).
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100)]
    broadcast_size: Option<serde_json::Number>,
    /// After a RONA the agent gets no offer for this long, seconds (0 to 86400).
    #[schema(value_type = Option<u32>, maximum = 86400)]
    rona_reset_secs: Option<serde_json::Number>,
    /// After this many RONAs a task goes to `overflow_service` (unlimited when unset).
    #[schema(value_type = Option<u32>, minimum = 1)]
    max_ronas: Option<serde_json::Number>,
    /// An existing service; needs `max_ronas`.
    overflow_service: Option<String>,
    /// The capacity of member agents who set none for a modality (`email`,
    /// `im`, `call`), as they are put; a modality left out takes the
    /// global default (email 3, im 2, call 1).
    capacity: Option<CapacityDefaults>,
}

/// A service body as `PUT` reads it: one as `GET` gives it has its `id`
/// (which must be the path's) taken off and its `settings` lifted to the
/// top level, where each may stand once.
fn as_written(
    id: &str,
    mut body: serde_json::Map<String, serde_json::Value>,
) -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    if let Some(given) = body.remove("id")
        && given.as_str() != Some(id)
    {
        return Err(ApiError::invalid(format!(
            "id: {} is not the service of the path ('{}')",
            crate::domain::clip(&given.to_string(), 80),
            crate::domain::clip(id, 80)
        )));
    }
    match body.remove("settings") {
        None => {}
        Some(serde_json::Value::Object(settings)) => {
            for (key, value) in settings {
                if body.contains_key(&key) {
                    return Err(ApiError::invalid(format!(
                        "settings.{}: given at the top level too; give it once",
                        crate::domain::clip(&key, 80)
                    )));
                }
                body.insert(key, value);
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "settings: must be an object of the service's settings",
            ));
        }
    }
    Ok(body)
}

/// An error about a key that was written inside `settings` names it
/// there (`settings.bogus`), where the client wrote it.
fn as_in_settings(mut e: ApiError, lifted: &[String]) -> ApiError {
    const HEAD: &str = "invalid request body: ";
    if let Some(rest) = e.message.strip_prefix(HEAD)
        && let Some((path, _)) = rest.split_once(": ")
        && lifted.iter().any(|k| {
            path == k || path.starts_with(&format!("{k}.")) || path.starts_with(&format!("{k}["))
        })
    {
        e.message = format!("{HEAD}settings.{rest}");
    }
    e
}

/// A whole-number field of a body, when given, within its own range.
fn whole(field: &str, n: &Option<serde_json::Number>, lo: u32, hi: u32) -> ApiResult<Option<u32>> {
    n.as_ref()
        .map(|n| crate::domain::field_in(field, n, lo, hi))
        .transpose()
        .map_err(|e| ApiError::invalid(e.to_string()))
}

/// `rona_timeout_secs` as it may be written: seconds for every modality, or
/// per modality.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: RonaTimeouts reads it
pub enum RonaTimeoutsInput {
    All(u32),
    Each(RonaTimeouts),
}

/// Checks the name of a service or an agent: 1 to 200 characters, on one
/// line of every page, so no control or text-direction characters (U+202E
/// would turn the text after it around).
fn display_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::invalid("name must be 1 to 200 characters"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || crate::domain::text::is_direction_control(c))
    {
        return Err(ApiError::invalid(
            "name may not contain control or text-direction characters",
        ));
    }
    Ok(())
}

/// Checks a code catalog: valid, unique codes with labels.
pub fn check_codes(codes: &[CatalogCode]) -> ApiResult<()> {
    let mut seen = std::collections::HashSet::new();
    for (i, c) in codes.iter().enumerate() {
        slug(&format!("codes[{i}].code"), &c.code)?;
        if c.label.trim().is_empty() || c.label.len() > 200 {
            return Err(ApiError::invalid(format!(
                "codes[{i}].label must be 1 to 200 characters"
            )));
        }
        if !seen.insert(&c.code) {
            return Err(ApiError::invalid(format!(
                "codes[{i}].code: duplicate code '{}'",
                c.code
            )));
        }
    }
    Ok(())
}

/// `PUT /api/v1/admin/services/{id}`.
#[utoipa::path(
    put,
    path = "/admin/services/{id}",
    operation_id = "putService",
    tag = "admin",
    summary = "Create or replace a service",
    description = "Creates the service or replaces its name, addresses and settings (absent settings take their defaults). A service as `GET` gives it is taken as well (its `id`, which must be the path's, and its `settings` object, whose fields may also stand at the top level, not both), so a service read, changed and written back is taken. Admins only.",
    params(
        ("id" = String, Path, description = "The service id (1–64 of letters, digits, '.', '_', '-', '@')."),
    ),
    request_body(content = crate::http::admin::ServiceInput),
    responses(
        (status = 200, description = "OK", body = crate::domain::service::Service),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn put_service(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(body): Body<serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<Json<Service>> {
    caller.require_admin()?;
    slug("service id", &id)?;
    let lifted: Vec<String> = match body.get("settings") {
        Some(serde_json::Value::Object(settings)) => settings.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let input: ServiceInput = super::extract::from_object(as_written(&id, body)?)
        .map_err(|e| as_in_settings(e, &lifted))?;
    display_name(&input.name)?;
    for a in &input.email_addresses {
        email_like("email_addresses", a)?;
    }
    let defaults = ServiceSettings::default();
    let settings = ServiceSettings {
        priority: crate::domain::task::priority_or(input.priority.as_ref(), defaults.priority)?,
        rona_timeout_secs: input
            .rona_timeout_secs
            .unwrap_or(defaults.rona_timeout_secs),
        codes_enabled: input.codes_enabled.unwrap_or(defaults.codes_enabled),
        context_links: input.context_links.unwrap_or_default(),
        keep_context_days: whole(
            "keep_context_days",
            &input.keep_context_days,
            0,
            MAX_KEEP_CONTEXT_DAYS,
        )?
        .unwrap_or(0),
        auto_reply_policy: input
            .auto_reply_policy
            .unwrap_or(defaults.auto_reply_policy),
        conclude_on_send: input.conclude_on_send.unwrap_or(false),
        distribution: input.distribution.unwrap_or(defaults.distribution),
        broadcast_size: whole("broadcast_size", &input.broadcast_size, 1, 100)?
            .unwrap_or(defaults.broadcast_size),
        rona_reset_secs: whole("rona_reset_secs", &input.rona_reset_secs, 0, 86_400)?
            .unwrap_or(defaults.rona_reset_secs),
        max_ronas: whole("max_ronas", &input.max_ronas, 1, u32::MAX)?,
        overflow_service: input.overflow_service,
        capacity: input.capacity.unwrap_or_default(),
    };
    settings
        .check_routing(&id)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Some(o) = &settings.overflow_service {
        if state.store.service(o).await.is_err() {
            return Err(ApiError::invalid(format!(
                "overflow_service: unknown service '{}'",
                crate::domain::clip(o, 64)
            )));
        }
        if settings.max_ronas.is_none() {
            return Err(ApiError::invalid(
                "overflow_service: set max_ronas too: how many RONAs send a task there",
            ));
        }
    }
    if settings.max_ronas.is_some() && settings.overflow_service.is_none() {
        return Err(ApiError::invalid(
            "max_ronas: set overflow_service too: where a task goes after this many RONAs (without it there is no limit: leave max_ronas out)",
        ));
    }
    crate::domain::context::check_context_links(&settings.context_links, "context_links")?;
    if !matches!(
        settings.auto_reply_policy.as_str(),
        "drop" | "attach" | "queue"
    ) {
        return Err(ApiError::invalid(
            "auto_reply_policy must be drop, attach or queue",
        ));
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
    Ok(Json(state.store.service(&id).await?))
}

/// `DELETE /api/v1/admin/services/{id}`: refused (`409`) while it has live
/// tasks; its stored conversation context is deleted at once, its members
/// and codes go; its history keeps its name. Declared in the configuration,
/// it comes back at the next start.
#[utoipa::path(
    delete,
    path = "/admin/services/{id}",
    operation_id = "deleteService",
    tag = "admin",
    summary = "Delete a service",
    description = "Admins only. 409 while the service has live tasks, or while another service overflows into it (`overflow_service`).",
    params(
        ("id" = String, Path, description = "The service id (1–64 of letters, digits, '.', '_', '-', '@')."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/admin/services/{id}",
    operation_id = "getService",
    tag = "admin",
    summary = "A service",
    description = "The service with its settings and code catalog. Admins only.",
    params(
        ("id" = String, Path, description = "The service id (1–64 of letters, digits, '.', '_', '-', '@')."),
    ),
    responses(
        (status = 200, description = "OK", body = crate::domain::service::Service),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn get_service(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Service>> {
    caller.require_admin()?;
    Ok(Json(state.store.service(&id).await?))
}

/// `PUT /api/v1/admin/services/{id}/codes`: replaces the code catalog
/// (codes left out are retired, so saved sessions keep their meaning).
#[utoipa::path(
    put,
    path = "/admin/services/{id}/codes",
    operation_id = "putServiceCodes",
    tag = "admin",
    summary = "Replace a service's code catalog",
    description = "Replaces the code catalog: codes left out are retired (inactive), so saved sessions keep their meaning. Codes must be unique slugs with 1–200 character labels. Admins only.",
    params(
        ("id" = String, Path, description = "The service id."),
    ),
    request_body(content = Vec<crate::domain::wrapup::CatalogCode>),
    responses(
        (status = 200, description = "OK", body = crate::domain::service::Service),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn put_codes(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    ListBody(codes): ListBody<Vec<CatalogCode>>,
) -> ApiResult<Json<Service>> {
    caller.require_admin()?;
    check_codes(&codes)?;
    let service = state.store.service(&id).await?;
    state.store.upsert_service(&service, Some(&codes)).await?;
    Ok(Json(state.store.service(&id).await?))
}

/// An agent to create or replace.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentInput {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    #[schema(max_length = 320)]
    email: String,
    /// A new bearer token (stored hashed); the stored one is kept when absent.
    #[schema(min_length = 16, max_length = 512, pattern = "^\\S+$")]
    token: Option<String>,
    /// Existing service ids (422 otherwise).
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    admin: bool,
    /// Also reads the work of their services: every task of them with every
    /// session, their queues and agents (read-only).
    #[serde(default)]
    supervisor: bool,
    /// How many tasks of each modality the agent handles at once (`email`,
    /// `im`, `call`; other keys are refused, so a misspelt modality does
    /// not fall back unseen). A modality left out takes the smallest
    /// default of the agent's services that set one, else the global
    /// default (email 3, im 2, call 1).
    capacity: Option<CapacityDefaults>,
}

/// `PUT /api/v1/admin/agents/{id}`.
#[utoipa::path(
    put,
    path = "/admin/agents/{id}",
    operation_id = "putAgent",
    tag = "admin",
    summary = "Create or replace an agent",
    description = "Creates the agent or replaces it; the token is stored hashed, and the stored one is kept when `token` is absent (409 when another agent or an integration already uses the token). Admins only.",
    params(
        ("id" = String, Path, description = "The agent id (1–64 of letters, digits, '.', '_', '-', '@')."),
    ),
    request_body(content = crate::http::admin::AgentInput),
    responses(
        (status = 200, description = "OK", body = crate::http::views::AgentView),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 409, response = doc::Conflict),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn put_agent(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(input): Body<AgentInput>,
) -> ApiResult<axum::response::Response> {
    caller.require_admin()?;
    slug("agent id", &id)?;
    display_name(&input.name)?;
    email_like("email", &input.email)?;
    if let Some(t) = &input.token
        && (t.len() < MIN_TOKEN_LEN || t.len() > 512 || t.contains(char::is_whitespace))
    {
        return Err(ApiError::invalid(format!(
            "token must be {MIN_TOKEN_LEN} to 512 characters without spaces"
        )));
    }
    let mut service_capacity = Vec::with_capacity(input.services.len());
    for s in &input.services {
        match state.store.service(s).await {
            Ok(service) => service_capacity.push(service.settings.capacity),
            Err(_) => {
                return Err(ApiError::invalid(format!(
                    "services: unknown service '{s}'"
                )));
            }
        }
    }
    let upsert = AgentUpsert {
        id: id.clone(),
        name: input.name.trim().to_string(),
        email: input.email,
        token_hash: input.token.as_deref().map(hash_token),
        admin: input.admin,
        supervisor: input.supervisor,
        capacity: Capacity::or_default(
            input
                .capacity
                .unwrap_or_default()
                .or_smallest_of(&service_capacity),
        ),
        services: input.services,
    };
    // An integration's token is not also an agent's: whoever holds it would
    // act as both.
    if let Some(hash) = &upsert.token_hash
        && let Some(i) = state.details.integrations.get(hash)
    {
        return Err(ApiError::conflict(format!(
            "token: integration '{}' already uses this token; give the agent another one",
            i.id
        )));
    }
    let withdrawn = state.store.upsert_agent(&upsert).await?;
    state.metrics.offer_result("withdrawn", withdrawn);
    // A changed or revoked token must stop working at once.
    state.tokens.clear();
    Ok(Json(views::agent(&state.store.agent(&id).await?)).into_response())
}

/// `GET /api/v1/admin/agents/{id}`.
#[utoipa::path(
    get,
    path = "/admin/agents/{id}",
    operation_id = "getAgent",
    tag = "admin",
    summary = "An agent",
    description = "The agent, without its token. Admins only.",
    params(
        ("id" = String, Path, description = "The agent id (1–64 of letters, digits, '.', '_', '-', '@')."),
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::views::AgentView),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<axum::response::Response> {
    caller.require_admin()?;
    Ok(Json(views::agent(&state.store.agent(&id).await?)).into_response())
}

/// `GET /api/v1/admin/contacts/{id}`.
#[utoipa::path(
    get,
    path = "/admin/contacts/{id}",
    operation_id = "getContact",
    tag = "admin",
    summary = "A contact",
    description = "An entry of the external address book. Admins only.",
    params(
        ("id" = String, Path, description = "The contact id (1–64 of letters, digits, '.', '_', '-', '@')."),
    ),
    responses(
        (status = 200, description = "OK", body = crate::store::Contact),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn get_contact(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<crate::store::Contact>> {
    caller.require_admin()?;
    Ok(Json(state.store.contact(&id).await?))
}

/// `PUT /api/v1/admin/services/{id}/templates`: overrides of the reply
/// templates (`quote_text`, `quote_html`, `signature_text`, `signature_html`);
/// a template that does not parse or render is refused here, not when a reply is written.
#[utoipa::path(
    put,
    path = "/admin/services/{id}/templates",
    operation_id = "putServiceTemplates",
    tag = "admin",
    summary = "Set a service's reply templates",
    description = "Replaces the service's overrides of the reply templates used to prefill drafts (`quote_text`, `quote_html`, `signature_text`, `signature_html`); a template left out goes back to the built-in default, `{}` restores them all. Every template is compiled and rendered with sample data for every kind of draft, with and without optional values, so a broken one is refused here (422, the message naming the template and the line, e.g. `template quote_html: line 3: syntax error: ...`), not when an agent starts a reply. 422 also for an unknown template name or a template over 64 KiB. Admins only; 404 for an unknown service.",
    params(
        ("id" = String, Path, description = "The service id."),
    ),
    request_body(content = crate::http::admin::TemplatesInput),
    responses(
        (status = 200, description = "OK", body = crate::http::admin::TemplatesSet),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn put_templates(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(templates): Body<std::collections::HashMap<String, String>>,
) -> ApiResult<Json<TemplatesSet>> {
    caller.require_admin()?;
    state.store.service(&id).await?;
    crate::mail::compose::ReplyTemplates::with_overrides(&templates)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    state.store.set_reply_templates(&id, &templates).await?;
    Ok(Json(TemplatesSet {
        service: id,
        templates: templates.into_iter().collect(),
    }))
}

/// Overrides of a service's reply templates (MiniJinja), by name; each at
/// most 64 KiB, an empty source allowed (e.g. no signature). A template left
/// out uses the built-in default. Variables: kind (reply, reply_all,
/// forward, new), customer {name}, agent {name, email}, service {name}, task
/// {id, subject}, original {from, reply_to, to, cc, date, date_iso, subject,
/// message_id, text, html}; addresses print as `Name <email>` and have .name
/// and .email. Filter: quote (prefixes every line with `> `). The HTML
/// templates are autoescaped.
///
/// The schema of the map `PUT /api/v1/admin/services/{id}/templates` reads:
/// the template names above (a test checks them against the composer's).
#[derive(ToSchema)]
#[schema(as = ReplyTemplates, example = json!({"signature_text": "Kind regards,\n{{ agent.name }}\n{{ service.name }}", "signature_html": "<p>Kind regards,<br>{{ agent.name }}<br>{{ service.name }}</p>"}))]
#[allow(dead_code)] // a schema only
pub struct TemplatesInput {
    /// The plain-text part below the signature: the quoted (or forwarded) original.
    #[schema(max_length = 65536)]
    quote_text: Option<String>,
    /// The HTML part below the signature: the quoted (or forwarded) original.
    #[schema(max_length = 65536)]
    quote_html: Option<String>,
    /// The plain-text signature, above the quote.
    #[schema(max_length = 65536)]
    signature_text: Option<String>,
    /// The HTML signature, above the quote.
    #[schema(max_length = 65536)]
    signature_html: Option<String>,
}

/// A service's reply templates as set.
#[derive(Serialize, ToSchema)]
#[schema(as = ReplyTemplatesSet)]
pub struct TemplatesSet {
    /// The service id.
    service: String,
    #[schema(value_type = TemplatesInput)]
    templates: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_templates_schema_names_every_template() {
        let schema =
            serde_json::to_value(<super::TemplatesInput as utoipa::PartialSchema>::schema())
                .unwrap_or_default();
        let mut documented: Vec<&str> = schema["properties"]
            .as_object()
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        documented.sort_unstable();
        let mut names = crate::mail::compose::TEMPLATE_NAMES.to_vec();
        names.sort_unstable();
        assert_eq!(documented, names);
    }
}
