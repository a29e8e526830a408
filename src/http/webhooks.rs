//! Outbound webhook subscriptions (admins) and their deliveries: the dead
//! letters operators look at and send again.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id, Params};
use crate::domain::id::validate_slug;
use crate::domain::millis_to_rfc3339;
use crate::domain::webhook::{MIN_SECRET_LEN, check_events};
use crate::http::doc;
use crate::image_proxy::{check_destination, is_forbidden_ip};
use crate::store::webhooks::{Delivery, DeliveryFilter, Subscription, SubscriptionUpsert};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Longest subscriber URL.
pub const MAX_URL_LEN: usize = 2000;

/// A subscription to create or replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// Only on `POST` (a random id when left out).
    pub id: Option<String>,
    pub url: String,
    /// Event types (`task.created`, `session.saved`, …) or `["*"]`.
    pub events: Vec<String>,
    /// The signing secret (at least 16 characters); made up and shown once
    /// when a new subscription has none.
    pub secret: Option<String>,
    pub description: Option<String>,
    pub active: Option<bool>,
}

/// A subscription as shown (never its secret, except once, when made up).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Only in the answer that created it without a secret given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl SubscriptionView {
    fn of(s: Subscription, secret: Option<String>) -> SubscriptionView {
        SubscriptionView {
            id: s.id,
            url: s.url,
            events: s.events,
            description: s.description,
            active: s.active,
            created_at: millis_to_rfc3339(s.created_at),
            updated_at: millis_to_rfc3339(s.updated_at),
            secret,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionList {
    pub items: Vec<SubscriptionView>,
}

/// Checks a subscriber URL with the image proxy's rules: `http(s)`, no
/// credentials, and no loopback, private or link-local destination (also
/// after DNS, where the name resolves now) unless `allow_loopback` lets
/// loopback through (tests).
async fn check_url(url: &str, allow_loopback: bool) -> ApiResult<String> {
    let url = url.trim();
    if url.len() > MAX_URL_LEN {
        return Err(ApiError::invalid(format!(
            "url: longer than {MAX_URL_LEN} characters"
        )));
    }
    let parsed =
        url::Url::parse(url).map_err(|e| ApiError::invalid(format!("url: not a URL: {e}")))?;
    check_destination(&parsed, allow_loopback)
        .map_err(|e| ApiError::invalid(format!("url: {}", destination_error(&e))))?;
    if let Some(url::Host::Domain(host)) = parsed.host() {
        let port = parsed.port_or_known_default().unwrap_or(443);
        let lookup = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            tokio::net::lookup_host((host.to_string(), port)),
        )
        .await;
        // A name that does not resolve now may later: deliveries check again.
        if let Ok(Ok(addrs)) = lookup {
            let addrs: Vec<_> = addrs.collect();
            if !addrs.is_empty()
                && addrs
                    .iter()
                    .all(|a| is_forbidden_ip(a.ip(), allow_loopback))
            {
                return Err(ApiError::invalid(format!(
                    "url: host `{}` resolves only to loopback, private or link-local addresses",
                    crate::domain::clip(host, 64)
                )));
            }
        }
    }
    Ok(parsed.to_string())
}

/// What is wrong with a destination, in the words of webhooks.
pub fn destination_error(e: &crate::image_proxy::ProxyError) -> String {
    use crate::image_proxy::ProxyError;
    match e {
        ProxyError::BadUrl(m) => m.clone(),
        ProxyError::Forbidden(m) => format!("forbidden destination: {m}"),
        other => other.to_string(),
    }
}

async fn upsert(
    state: &AppState,
    id: String,
    input: SubscriptionInput,
    creating: bool,
) -> ApiResult<(Subscription, Option<String>)> {
    validate_slug("id", &id).map_err(|e| ApiError::invalid(e.to_string()))?;
    if id == "deliveries" {
        return Err(ApiError::invalid("id: 'deliveries' is reserved"));
    }
    let url = check_url(&input.url, state.details.webhooks_allow_loopback).await?;
    check_events(&input.events).map_err(ApiError::invalid)?;
    if let Some(s) = &input.secret
        && (s.len() < MIN_SECRET_LEN || s.len() > 256 || s.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(format!(
            "secret: use {MIN_SECRET_LEN} to 256 characters"
        )));
    }
    if let Some(d) = &input.description
        && d.chars().count() > 200
    {
        return Err(ApiError::invalid("description: longer than 200 characters"));
    }
    let exists = match state.store.subscription(&id).await {
        Ok(_) => true,
        Err(crate::store::StoreError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if creating && exists {
        return Err(ApiError::conflict(format!(
            "webhook subscription '{id}' exists: PUT it to change it"
        )));
    }
    let made_up = (!exists && input.secret.is_none())
        .then(|| format!("whsec_{}", crate::domain::token::generate_token()));
    let upsert = SubscriptionUpsert {
        id: id.clone(),
        url,
        events: input.events,
        secret: input.secret.or_else(|| made_up.clone()),
        description: input.description,
        active: input.active.unwrap_or(true),
    };
    state.store.upsert_subscription(&upsert).await?;
    tracing::info!(subscription = %id, events = upsert.events.len(), active = upsert.active, "webhook subscription saved");
    Ok((state.store.subscription(&id).await?, made_up))
}

/// `POST /api/v1/admin/webhooks`: a new subscription (`201`).
#[utoipa::path(
    post,
    path = "/admin/webhooks",
    operation_id = "createWebhook",
    tag = "webhooks",
    summary = "Subscribe a URL to task changes",
    description = "Admins only: URL and events (`task.created`, `task.updated`, `task.concluded`, `session.saved`); the signing secret is shown once.",
    request_body(content = crate::http::webhooks::SubscriptionInput, description = "The subscription."),
    responses(
        (status = 201, description = "The subscription with its secret.", body = crate::http::webhooks::SubscriptionView),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(mut input): Body<SubscriptionInput>,
) -> ApiResult<(StatusCode, Json<SubscriptionView>)> {
    caller.require_admin()?;
    let id = input
        .id
        .take()
        .unwrap_or_else(|| crate::domain::id::new_id("whk"));
    let (s, secret) = upsert(&state, id, input, true).await?;
    Ok((StatusCode::CREATED, Json(SubscriptionView::of(s, secret))))
}

/// `PUT /api/v1/admin/webhooks/{id}`: create or replace (the secret is kept
/// when none is given).
#[utoipa::path(
    put,
    path = "/admin/webhooks/{id}",
    operation_id = "putWebhook",
    tag = "webhooks",
    summary = "Change a webhook subscription",
    description = "Admins only.",
    params(
        ("id" = String, Path, description = "The subscription id."),
    ),
    request_body(content = crate::http::webhooks::SubscriptionInput, description = "The subscription."),
    responses(
        (status = 200, description = "The subscription.", body = crate::http::webhooks::SubscriptionView),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(input): Body<SubscriptionInput>,
) -> ApiResult<Json<SubscriptionView>> {
    caller.require_admin()?;
    if input.id.as_deref().is_some_and(|i| i != id) {
        return Err(ApiError::invalid(
            "id: the body names another id than the path",
        ));
    }
    let (s, secret) = upsert(&state, id, input, false).await?;
    Ok(Json(SubscriptionView::of(s, secret)))
}

/// `GET /api/v1/admin/webhooks`.
#[utoipa::path(
    get,
    path = "/admin/webhooks",
    operation_id = "listWebhooks",
    tag = "webhooks",
    summary = "Outbound webhook subscriptions",
    description = "Admins only.",
    responses(
        (status = 200, description = "The subscriptions.", body = crate::http::webhooks::SubscriptionList),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SubscriptionList>> {
    caller.require_admin()?;
    let items = state
        .store
        .subscriptions()
        .await?
        .into_iter()
        .map(|s| SubscriptionView::of(s, None))
        .collect();
    Ok(Json(SubscriptionList { items }))
}

/// `GET /api/v1/admin/webhooks/{id}`.
#[utoipa::path(
    get,
    path = "/admin/webhooks/{id}",
    operation_id = "getWebhook",
    tag = "webhooks",
    summary = "A webhook subscription",
    description = "Admins only.",
    params(
        ("id" = String, Path, description = "The subscription id."),
    ),
    responses(
        (status = 200, description = "The subscription.", body = crate::http::webhooks::SubscriptionView),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<SubscriptionView>> {
    caller.require_admin()?;
    Ok(Json(SubscriptionView::of(
        state.store.subscription(&id).await?,
        None,
    )))
}

/// `DELETE /api/v1/admin/webhooks/{id}`: the subscription and its deliveries.
#[utoipa::path(
    delete,
    path = "/admin/webhooks/{id}",
    operation_id = "deleteWebhook",
    tag = "webhooks",
    summary = "Delete a webhook subscription",
    description = "Admins only; its pending deliveries are dropped.",
    params(
        ("id" = String, Path, description = "The subscription id."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    state.store.delete_subscription(&id).await?;
    tracing::info!(subscription = %id, "webhook subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only deliveries in this state (`pending`, `delivered` or `dead`).
    state: Option<String>,
    /// Only deliveries of this subscription.
    subscription: Option<String>,
    /// Only deliveries of this task's changes.
    task: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A delivery as operators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The same on every attempt (also `X-Switchboard-Delivery`).
    pub id: String,
    pub subscription: String,
    pub change_id: i64,
    pub task_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    pub attempts: i64,
    pub changed_at: String,
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
    pub dead_at: Option<String>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        let t = |v: Option<i64>| v.map(millis_to_rfc3339);
        DeliveryView {
            id: d.id.to_string(),
            subscription: d.subscription_id,
            change_id: d.change_id,
            task_id: d.task_id,
            kind: d.kind,
            state: d.state,
            attempts: d.attempts,
            changed_at: millis_to_rfc3339(d.changed_at),
            next_attempt_at: t(d.next_attempt_at),
            last_attempt_at: t(d.last_attempt_at),
            last_status: d.last_status,
            last_error: d.last_error,
            delivered_at: t(d.delivered_at),
            dead_at: t(d.dead_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/admin/webhooks/deliveries?state=dead&subscription=&task=`:
/// deliveries newest first (dead letters with `state=dead`).
#[utoipa::path(
    get,
    path = "/admin/webhooks/deliveries",
    operation_id = "listWebhookDeliveries",
    tag = "webhooks",
    summary = "Webhook deliveries",
    description = "Admins only: deliveries by state (`pending`, `failing`, `dead`, `delivered`) with attempts and the last error.",
    params(
        DeliveriesQuery,
    ),
    responses(
        (status = 200, description = "The deliveries.", body = crate::http::webhooks::DeliveryList),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
    ),
)]
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<DeliveriesQuery>,
) -> ApiResult<Json<DeliveryList>> {
    caller.require_admin()?;
    if let Some(s) = q.state.as_deref()
        && !matches!(s, "pending" | "delivered" | "dead")
    {
        return Err(ApiError::bad_request(
            "state: use pending, delivered or dead",
        ));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request("limit: use 1 to 200"));
    }
    let before = q
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::bad_request("cursor: not a cursor of this list"))
        })
        .transpose()?;
    // One more than the page: a next page is offered only when there is one.
    let mut items = state
        .store
        .deliveries(&DeliveryFilter {
            state: q.state,
            subscription: q.subscription,
            task: q.task,
            before,
            limit: limit + 1,
        })
        .await?;
    let more = crate::domain::cursor::cut_to_page(&mut items, limit);
    let next_cursor = more
        .then(|| items.last().map(|d| d.id.to_string()))
        .flatten();
    Ok(Json(DeliveryList {
        items: items.into_iter().map(DeliveryView::from).collect(),
        next_cursor,
    }))
}

/// What a redelivery did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivered {
    pub redelivered: u64,
}

/// `POST /api/v1/admin/webhooks/deliveries/{id}/redeliver`: a dead letter
/// goes out again, with the same delivery id (`409` unless it is dead).
#[utoipa::path(
    post,
    path = "/admin/webhooks/deliveries/{id}/redeliver",
    operation_id = "redeliverWebhookDelivery",
    tag = "webhooks",
    summary = "Redeliver one delivery",
    description = "Admins only. No body.",
    params(
        ("id" = String, Path, description = "The delivery id."),
    ),
    responses(
        (status = 200, description = "The delivery, queued again.", body = crate::http::webhooks::DeliveryView),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<DeliveryView>> {
    caller.require_admin()?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::not_found(format!(
            "delivery '{}' not found",
            crate::domain::clip(&id, 40)
        ))
    })?;
    let n = state.store.redeliver(Some(id), None).await?;
    if n == 0 {
        let d = state.store.delivery(id).await?;
        return Err(ApiError::conflict(format!(
            "delivery {id} is {}: only dead deliveries are sent again",
            d.state
        )));
    }
    tracing::info!(delivery = id, "dead delivery sent again");
    Ok(Json(state.store.delivery(id).await?.into()))
}

/// `POST /api/v1/admin/webhooks/{id}/redeliver`: every dead letter of a
/// subscription goes out again.
#[utoipa::path(
    post,
    path = "/admin/webhooks/{id}/redeliver",
    operation_id = "redeliverWebhook",
    tag = "webhooks",
    summary = "Redeliver a subscription's dead-lettered deliveries",
    description = "Admins only. No body.",
    params(
        ("id" = String, Path, description = "The subscription id."),
    ),
    responses(
        (status = 200, description = "How many were queued again.", body = crate::http::webhooks::Redelivered),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn redeliver_all(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<Redelivered>> {
    caller.require_admin()?;
    state.store.subscription(&id).await?;
    let redelivered = state.store.redeliver(None, Some(&id)).await?;
    tracing::info!(subscription = %id, redelivered, "dead deliveries sent again");
    Ok(Json(Redelivered { redelivered }))
}
