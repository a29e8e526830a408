//! Session details: the customer, the parameters (system and custom) and the
//! resolved context links of a task and of each of its sessions, as `GET
//! /api/v1/tasks/{id}` shows them, and "Update task" (`PATCH
//! /api/v1/tasks/{id}`) for integrations.
//!
//! A live task shows its live context. A session whose part of the task is
//! over shows what its service kept (resolved with the service's current
//! URL templates), or `"available": false` with the fields that are "not
//! available" listed in `not_available` (the customer's name stays, resolved
//! again from the directory where it came from there).
use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id};
use super::principal::{Integrations, Principal};
use super::views;
use crate::domain::context::{
    ContextSource, ContextValues, NotAvailable, RecordFacts, ResolvedLink, SessionFacts,
    check_parameters, kept_until, resolve_links, session_context_source,
};
use crate::domain::customer::{
    CustomerDetails, CustomerIdentity, CustomerKind, CustomerUpdate, looks_like_email,
};
use crate::domain::phone::{looks_like_phone, normalize_phone};
use crate::domain::{Modality, SessionResult, SessionState, millis_to_rfc3339};
use crate::http::doc;
use crate::store::{ContextRecord, ContextUpdate, ServiceContext, Session, Task};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use utoipa::ToSchema;

/// What the details need from the configuration.
#[derive(Debug, Clone, Default)]
pub struct DetailsState {
    pub integrations: Integrations,
    /// For national phone numbers (`[directory] default_calling_code`).
    pub default_calling_code: Option<u16>,
    /// `[webhooks] allow_loopback` (tests only).
    pub webhooks_allow_loopback: bool,
    /// The length of a day of `keep_context_days`, ms (`[context] day_secs`).
    pub day_ms: i64,
    /// Services' context settings read lately (see [`DetailsState::service`]).
    services: ServiceCache,
}

/// Services' names and context settings, kept for [`SERVICE_CACHE_TTL`]: a
/// change made through this worker shows at once (the cache is cleared), one
/// made through another within the TTL.
#[derive(Debug, Default)]
struct ServiceCache(
    std::sync::Mutex<HashMap<String, (std::time::Instant, Option<ServiceContext>)>>,
);

impl Clone for ServiceCache {
    fn clone(&self) -> Self {
        ServiceCache::default()
    }
}

/// How long a service's context settings are reused.
pub const SERVICE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl DetailsState {
    pub fn from_config(config: &crate::config::Config) -> DetailsState {
        DetailsState {
            integrations: Integrations::from_config(config),
            default_calling_code: config.directory.default_calling_code,
            webhooks_allow_loopback: config.webhooks.allow_loopback,
            day_ms: i64::try_from(config.context.day_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            services: ServiceCache::default(),
        }
    }

    /// A service's name and context settings (also of a deleted one).
    pub async fn service(
        &self,
        store: &crate::store::Store,
        id: &str,
    ) -> ApiResult<Option<ServiceContext>> {
        if let Ok(cache) = self.services.0.lock()
            && let Some((at, s)) = cache.get(id)
            && at.elapsed() < SERVICE_CACHE_TTL
        {
            return Ok(s.clone());
        }
        // Without its settings the details show no links rather than fail.
        let s = store.service_context(id).await.unwrap_or_else(|e| {
            tracing::warn!(service = %id, error = %e, "cannot read a service's context settings");
            None
        });
        if let Ok(mut cache) = self.services.0.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(id.to_string(), (std::time::Instant::now(), s.clone()));
        }
        Ok(s)
    }

    /// Forgets what was read of services (one was changed here).
    pub fn forget_services(&self) {
        if let Ok(mut cache) = self.services.0.lock() {
            cache.clear();
        }
    }
}

/// The fields a historic session without stored context shows as "not available".
pub const NOT_AVAILABLE_FIELDS: &[&str] = &[
    "customer.email",
    "customer.phone",
    "customer.upn",
    "customer.postal_address",
    "customer.ip",
    "customer.company",
    "parameters",
    "context_links",
];

/// The customer as the details show them.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = CustomerDetails)]
pub struct CustomerView {
    pub kind: CustomerKind,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub upn: Option<String>,
    /// The address the customer reached us from.
    pub address: Option<String>,
    /// Up to 10 lines (`\n`; `\r\n` is taken too) and 500 characters.
    pub postal_address: Option<String>,
    pub ip: Option<String>,
    pub company: Option<String>,
    /// What to call them: the name, else the address, else "Anonymous".
    pub display: String,
}

/// The system fields of a task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SystemParameters {
    pub task_id: String,
    pub service: String,
    pub service_name: Option<String>,
    pub modality: Modality,
    pub arrived_at: String,
    pub subject: Option<String>,
    pub language: Option<String>,
    /// The service address or number the customer reached.
    pub reached: Option<String>,
    pub customer_kind: CustomerKind,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ParametersView {
    pub system: SystemParameters,
    /// Custom parameters set by integrations.
    #[schema(value_type = Object)]
    pub custom: Map<String, Value>,
}

/// The session details of a task or a session.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ContextView {
    pub available: bool,
    /// `live` or `stored` when available.
    #[schema(value_type = Option<String>)]
    pub source: Option<&'static str>,
    /// Why not, when not available.
    pub reason: Option<NotAvailable>,
    /// Until when stored context is kept.
    pub kept_until: Option<String>,
    pub customer: CustomerView,
    pub parameters: Option<ParametersView>,
    pub context_links: Vec<ResolvedLink>,
    /// The fields to show as "not available".
    #[schema(value_type = Vec<String>)]
    pub not_available: Vec<&'static str>,
}

fn display(name: &Option<String>, address: &Option<String>) -> String {
    name.clone()
        .or_else(|| address.clone())
        .unwrap_or_else(|| "Anonymous".into())
}

/// A live task's details, completed from its address where they were not
/// stored (mail tasks know the sender's address only as the address).
fn live_details(task: &Task) -> CustomerDetails {
    let mut d = task.details.clone();
    if let Some(a) = &task.customer.address {
        if d.email.is_none() && looks_like_email(a) {
            d.email = Some(a.to_lowercase());
        } else if d.phone.is_none() && looks_like_phone(a) {
            d.phone = normalize_phone(a, None).ok();
        }
    }
    d
}

/// The placeholders' values of a live task.
fn live_values(task: &Task) -> ContextValues {
    ContextValues {
        customer_name: task.customer.name.clone(),
        customer_kind: Some(task.customer.kind.as_str().into()),
        customer_id: task.customer.reference.clone(),
        customer_address: task.customer.address.clone(),
        details: live_details(task),
        task_id: task.id.clone(),
        service: task.service_id.clone(),
        modality: task.modality.as_str().into(),
        subject: task.subject.clone(),
        language: task.language.clone(),
        reached: task.reached.clone(),
        arrived_at: Some(millis_to_rfc3339(task.arrived_at)),
        parameters: match &task.params {
            Value::Object(m) => m.clone(),
            _ => Map::new(),
        },
    }
}

/// The placeholders' values of a stored record of `task`.
fn stored_values(task: &Task, r: &ContextRecord) -> ContextValues {
    ContextValues {
        customer_name: r.customer_name.clone(),
        customer_kind: Some(r.customer_kind.as_str().into()),
        customer_id: r.customer_ref.clone(),
        customer_address: r.customer_address.clone(),
        details: r.details.clone().unwrap_or_default(),
        task_id: task.id.clone(),
        service: r.service_id.clone(),
        modality: task.modality.as_str().into(),
        subject: r.subject.clone(),
        language: r.language.clone(),
        reached: r.reached.clone(),
        arrived_at: Some(millis_to_rfc3339(task.arrived_at)),
        parameters: r.params.clone().unwrap_or_default(),
    }
}

fn available_view(
    values: &ContextValues,
    service: Option<&ServiceContext>,
    modality: Modality,
    source: &'static str,
    kept: Option<i64>,
) -> ContextView {
    let d = &values.details;
    let kind = CustomerKind::parse(values.customer_kind.as_deref().unwrap_or_default());
    let links = service
        .filter(|s| !s.deleted)
        .map(|s| resolve_links(&s.settings.context_links, values))
        .unwrap_or_default();
    ContextView {
        available: true,
        source: Some(source),
        reason: None,
        kept_until: kept.map(millis_to_rfc3339),
        customer: CustomerView {
            kind,
            reference: values.customer_id.clone(),
            name: values.customer_name.clone(),
            email: d.email.clone(),
            phone: d.phone.clone(),
            upn: d.upn.clone(),
            address: values.customer_address.clone(),
            postal_address: d.postal_address.clone(),
            ip: d.ip.clone(),
            company: d.company.clone(),
            display: display(&values.customer_name, &values.customer_address),
        },
        parameters: Some(ParametersView {
            system: SystemParameters {
                task_id: values.task_id.clone(),
                service: values.service.clone(),
                service_name: service.map(|s| s.name.clone()),
                modality,
                arrived_at: values.arrived_at.clone().unwrap_or_default(),
                subject: values.subject.clone(),
                language: values.language.clone(),
                reached: values.reached.clone(),
                customer_kind: kind,
            },
            custom: values.parameters.clone(),
        }),
        context_links: links,
        not_available: Vec::new(),
    }
}

fn unavailable_view(
    reason: NotAvailable,
    kind: CustomerKind,
    reference: Option<String>,
    name: Option<String>,
    address: Option<String>,
) -> ContextView {
    ContextView {
        available: false,
        source: None,
        reason: Some(reason),
        kept_until: None,
        customer: CustomerView {
            kind,
            display: display(&name, &address),
            reference,
            name,
            email: None,
            phone: None,
            upn: None,
            address,
            postal_address: None,
            ip: None,
            company: None,
        },
        parameters: None,
        context_links: Vec::new(),
        not_available: NOT_AVAILABLE_FIELDS.to_vec(),
    }
}

/// Reads what the details of a task and its sessions need, once.
struct Sources {
    records: Vec<ContextRecord>,
    services: HashMap<String, Option<ServiceContext>>,
    names: HashMap<(&'static str, String), Option<String>>,
}

impl Sources {
    async fn load(state: &AppState, task: &Task, sessions: &[Session]) -> ApiResult<Sources> {
        let mut services = HashMap::new();
        for id in std::iter::once(&task.service_id).chain(sessions.iter().map(|s| &s.service_id)) {
            if !services.contains_key(id) {
                services.insert(id.clone(), state.details.service(&state.store, id).await?);
            }
        }
        // Records exist only once a part of the task is over.
        let records = if task.state.is_final()
            || sessions.iter().any(|s| {
                s.service_id != task.service_id
                    || s.state == SessionState::Concluded
                    || s.result == Some(SessionResult::Transferred)
            }) {
            state.store.context_records(&task.id).await?
        } else {
            Vec::new()
        };
        Ok(Sources {
            records,
            services,
            names: HashMap::new(),
        })
    }

    fn service(&self, id: &str) -> Option<&ServiceContext> {
        self.services.get(id).and_then(Option::as_ref)
    }

    /// The name to show where the context is not available: the
    /// directory's, where the customer came from there; else the one known.
    async fn name(
        &mut self,
        state: &AppState,
        kind: CustomerKind,
        reference: Option<&str>,
        known: Option<String>,
    ) -> ApiResult<Option<String>> {
        let Some(r) = reference.filter(|_| kind != CustomerKind::Anonymous) else {
            return Ok(known);
        };
        let key = (kind.as_str(), r.to_string());
        if !self.names.contains_key(&key) {
            // A failed lookup shows the name known, never an error.
            let found = state
                .store
                .directory_name(kind, r)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot look up a customer's name");
                    None
                });
            self.names.insert(key.clone(), found);
        }
        Ok(self.names.get(&key).cloned().flatten().or(known))
    }
}

/// The details of a session.
async fn session_view(
    state: &AppState,
    sources: &mut Sources,
    task: &Task,
    session: &Session,
) -> ApiResult<ContextView> {
    let facts: Vec<RecordFacts<'_>> = sources
        .records
        .iter()
        .map(|r| RecordFacts {
            service_id: &r.service_id,
            ended_at: r.ended_at,
            keep_days: r.keep_days,
            purged: r.purged_at.is_some(),
            session: r.session_id.as_deref(),
        })
        .collect();
    let over = session.state == SessionState::Concluded
        || session.result == Some(SessionResult::Transferred);
    let source = session_context_source(
        SessionFacts {
            id: &session.id,
            service_id: &session.service_id,
            created_at: session.created_at,
            over,
        },
        &facts,
        &task.service_id,
        task.state.is_final(),
        crate::domain::now_millis(),
        state.details.day_ms,
    );
    drop(facts);
    Ok(match source {
        ContextSource::Live => available_view(
            &live_values(task),
            sources.service(&task.service_id),
            task.modality,
            "live",
            None,
        ),
        ContextSource::Stored(i) => {
            let r = &sources.records[i];
            let until = kept_until(r.ended_at, r.keep_days, state.details.day_ms);
            let mut values = stored_values(task, r);
            // The name is resolved again from the directory (and the
            // address book), as for a record not kept: the record keeps
            // what it was when no entry names the customer.
            let (kind, reference, known) = (
                r.customer_kind,
                r.customer_ref.clone(),
                values.customer_name.take(),
            );
            values.customer_name = sources
                .name(state, kind, reference.as_deref(), known)
                .await?;
            let r = &sources.records[i];
            available_view(
                &values,
                sources.service(&r.service_id),
                task.modality,
                "stored",
                Some(until),
            )
        }
        ContextSource::NotAvailable(reason) => {
            let name = sources
                .name(
                    state,
                    task.customer.kind,
                    task.customer.reference.as_deref(),
                    session.customer_name.clone(),
                )
                .await?;
            unavailable_view(
                reason,
                task.customer.kind,
                task.customer.reference.clone(),
                name,
                session.customer_address.clone(),
            )
        }
    })
}

/// The session details of one session, as its widgets show them: live
/// while the task is, else the stored record, else "not available".
pub async fn session_context(
    state: &AppState,
    task: &Task,
    session: &Session,
) -> ApiResult<ContextView> {
    let mut sources = Sources::load(state, task, std::slice::from_ref(session)).await?;
    session_view(state, &mut sources, task, session).await
}

/// `GET /api/v1/tasks/{id}`'s body: the task, its customer with the known
/// details, its system parameters, its details (`context`), and each
/// session with its own `context`.
pub async fn task_view<'a>(
    state: &AppState,
    task: &'a Task,
    sessions: &'a [Session],
    counts: Option<crate::store::MessageCounts>,
) -> ApiResult<views::TaskDetails<'a>> {
    let mut sources = Sources::load(state, task, sessions).await?;
    let context = if task.state.is_final() {
        let name = sources
            .name(
                state,
                task.customer.kind,
                task.customer.reference.as_deref(),
                task.customer.name.clone(),
            )
            .await?;
        unavailable_view(
            NotAvailable::Ended,
            task.customer.kind,
            task.customer.reference.clone(),
            name,
            task.customer.address.clone(),
        )
    } else {
        available_view(
            &live_values(task),
            sources.service(&task.service_id),
            task.modality,
            "live",
            None,
        )
    };
    let system = context
        .parameters
        .as_ref()
        .map(|p| p.system.clone())
        .unwrap_or_else(|| SystemParameters {
            task_id: task.id.clone(),
            service: task.service_id.clone(),
            service_name: sources.service(&task.service_id).map(|s| s.name.clone()),
            modality: task.modality,
            arrived_at: millis_to_rfc3339(task.arrived_at),
            subject: task.subject.clone(),
            language: None,
            reached: None,
            customer_kind: task.customer.kind,
        });
    let mut per_session = Vec::with_capacity(sessions.len());
    for s in sessions {
        per_session.push((s, session_view(state, &mut sources, task, s).await?));
    }
    // Read with the task where the caller could (`Store::task_with_counts`).
    let counts = match counts {
        Some(c) => c,
        None => {
            state
                .store
                .task_message_counts(&task.id, task.modality)
                .await?
        }
    };
    Ok(views::task_details(
        task,
        context.customer.clone(),
        context,
        system,
        per_session,
        counts,
    ))
}

/// The largest custom parameters of a task, serialised.
pub const MAX_PARAMETERS_BYTES: usize = 16 * 1024;

/// "Update task": customer fields (an empty text clears one) and custom
/// parameters (`null` removes one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UpdateTask)]
pub struct UpdateTaskInput {
    /// Customer fields to set; an empty text clears one.
    pub customer: Option<CustomerIdentity>,
    /// Custom parameters to set; `null` removes one. At most 16 KiB as JSON
    /// after the update.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

/// `PATCH /api/v1/tasks/{id}`: integrations (`tasks:write`) and admins set
/// customer fields and custom parameters of a live task; `409` once it is
/// concluded or cancelled.
#[utoipa::path(
    patch,
    path = "/tasks/{id}",
    operation_id = "updateTask",
    tag = "tasks",
    summary = "Update a live task (\"Update task\")",
    description = "Sets customer fields and custom parameters of a live task, with an integration token (scope `tasks:write`) or an admin token. 409 when the task has concluded; 422 names the field and the limit.",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    request_body(content = crate::http::details::UpdateTaskInput, description = "Customer fields and parameters to set."),
    responses(
        (status = 200, description = "The task with its details (a receipt for an integration without `tasks:read`).", body = crate::http::views::TaskDetailsAnswer),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn update_task(
    State(state): State<AppState>,
    principal: Principal,
    Id(id): Id<String>,
    Body(input): Body<UpdateTaskInput>,
) -> ApiResult<axum::response::Response> {
    principal.require("tasks:write", false)?;
    let customer = match &input.customer {
        Some(c) => {
            CustomerUpdate::from_identity(c, state.details.default_calling_code, "customer")?
        }
        None => CustomerUpdate::default(),
    };
    check_parameters(&input.parameters, "parameters", true)?;
    if Value::Object(input.parameters.clone()).to_string().len() > MAX_PARAMETERS_BYTES {
        return Err(ApiError::invalid("parameters: larger than 16 KiB"));
    }
    if customer.changed().is_empty() && input.parameters.is_empty() {
        return Err(ApiError::invalid(
            "nothing to update: give customer fields or parameters",
        ));
    }
    let current = state.store.task(&id).await?;
    let merged = crate::domain::context::merge_parameters(
        current.params.as_object().unwrap_or(&Map::new()),
        &input.parameters,
    )?;
    if Value::Object(merged).to_string().len() > MAX_PARAMETERS_BYTES {
        return Err(ApiError::invalid(
            "parameters: larger than 16 KiB after this update",
        ));
    }
    let update = ContextUpdate {
        customer,
        parameters: input.parameters,
        by: principal.label(),
    };
    let task = state.store.update_task_context(&id, &update).await?;
    tracing::info!(task = %id, by = %update.by, customer = ?update.customer.changed(),
        parameters = update.parameters.len(), "task updated");
    // An integration that may change tasks but not read them learns only
    // which task it changed.
    if !principal.sees_everything() {
        return Ok(axum::response::IntoResponse::into_response(Json(
            views::TaskDetailsAnswer::Receipt(views::receipt(&task)),
        )));
    }
    let sessions = state.store.task_sessions(&id).await?;
    Ok(axum::response::IntoResponse::into_response(Json(
        views::TaskDetailsAnswer::Details(Box::new(
            task_view(&state, &task, &sessions, None).await?,
        )),
    )))
}
