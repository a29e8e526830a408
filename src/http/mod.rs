//! The HTTP edge: axum routes for the API, pages and metrics.
mod admin;
mod assets;
pub(crate) mod auth;
mod chat;
pub mod details;
mod directory;
mod drafts;
mod error;
pub(crate) mod events;
mod extract;
mod health;
mod me;
pub(crate) mod ops;
mod pages;
mod preview;
pub mod principal;
mod routing;
mod sessions;
mod tasks;
mod views;
pub(crate) mod web_auth;
mod webhooks;

pub use error::ApiError;
pub use health::{Metrics, OPENAPI};

use crate::store::Store;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub ingest_limits: crate::ingest::prepare::MailLimits,
    /// Signs the short-lived links browsers follow (previews, inline images).
    pub link_key: Arc<Vec<u8>>,
    pub preview: crate::config::PreviewConfig,
    pub images: crate::image_proxy::ImageFetcher,
    /// Wakes the outbox when a reply is queued.
    pub outbox: Arc<tokio::sync::Notify>,
    /// Whether `[smtp]` is configured (replies can go out).
    pub can_send: bool,
    pub tokens: Arc<auth::TokenCache>,
    /// Becomes true when the server stops: long-lived responses (event
    /// streams) end so the graceful shutdown can finish.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Event streams open per agent (capped).
    pub event_streams: Arc<events::OpenStreams>,
    /// Browser sessions of the pages (cookie settings, a short cache).
    pub web: Arc<web_auth::WebAuth>,
    /// Presence grace period and routing settings.
    pub routing: crate::config::RoutingConfig,
    /// Integrations' tokens and the settings of session details, the
    /// directory and webhooks.
    pub details: Arc<details::DetailsState>,
    /// Chat channels and open-chat handle keys.
    pub chat: Arc<crate::chat::ChatRuntime>,
}

/// Every route of the service.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/me/sessions", get(sessions::my_sessions))
        .route("/me/events", get(events::stream))
        .route("/me/queue", get(me::queue))
        .route("/me/services", get(me::services))
        .route(
            "/me/presence",
            get(routing::get_presence).put(routing::put_presence),
        )
        .route("/me/offers", get(routing::my_offers))
        .route("/offers/{id}/accept", post(routing::accept))
        .route("/offers/{id}/decline", post(routing::decline))
        .route("/agents", get(routing::agents))
        .route("/ops/queues", get(routing::queues))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/sessions/{id}", get(sessions::get_session))
        .route("/sessions/{id}/wrapup", put(sessions::put_wrapup))
        .route("/sessions/{id}/save", post(sessions::save))
        .route("/tasks", get(tasks::list).post(tasks::create))
        .route("/tasks/{id}", get(tasks::get).patch(details::update_task))
        .route("/tasks/{id}/pickup", post(tasks::pickup))
        .route("/tasks/{id}/outcome", post(tasks::outcome))
        .route("/tasks/{id}/handled", post(tasks::handled))
        .route("/tasks/{id}/transfer", post(tasks::transfer))
        .route(
            "/admin/services/{id}",
            get(admin::get_service)
                .put(admin::put_service)
                .delete(admin::delete_service),
        )
        .route("/admin/services/{id}/codes", put(admin::put_codes))
        .route("/admin/services/{id}/templates", put(admin::put_templates))
        .route("/tasks/{id}/drafts", post(drafts::create))
        .route(
            "/drafts/{id}",
            get(drafts::get).put(drafts::update).delete(drafts::delete),
        )
        .route(
            "/drafts/{id}/attachments",
            post(drafts::add_attachment)
                .put(drafts::reorder_attachments)
                .layer(axum::extract::DefaultBodyLimit::max(
                    drafts::MAX_ATTACHMENT_BYTES,
                )),
        )
        .route(
            "/drafts/{id}/attachments/{attachment}",
            axum::routing::delete(drafts::remove_attachment),
        )
        .route("/drafts/{id}/send", post(drafts::send))
        .route(
            "/admin/agents/{id}",
            get(admin::get_agent).put(admin::put_agent),
        )
        .route(
            "/admin/contacts/{id}",
            get(admin::get_contact).put(directory::put_contact),
        )
        .route(
            "/admin/contacts/import",
            post(directory::import_contacts).layer(axum::extract::DefaultBodyLimit::max(
                directory::MAX_IMPORT_BYTES,
            )),
        )
        .route(
            "/admin/directory/{id}",
            get(directory::get_user).put(directory::put_user),
        )
        .route(
            "/admin/directory/import",
            post(directory::import_users).layer(axum::extract::DefaultBodyLimit::max(
                directory::MAX_IMPORT_BYTES,
            )),
        )
        .route("/contacts", get(directory::search_contacts))
        .route(
            "/admin/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/admin/webhooks/{id}",
            get(webhooks::get)
                .put(webhooks::put)
                .delete(webhooks::delete),
        )
        .route(
            "/admin/webhooks/{id}/redeliver",
            post(webhooks::redeliver_all),
        )
        .route("/admin/webhooks/deliveries", get(webhooks::deliveries))
        .route(
            "/admin/webhooks/deliveries/{id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/tasks/{id}/messages", get(tasks::messages))
        .route("/tasks/{id}/preview", get(preview::task_preview))
        .route("/messages/{id}/preview", get(preview::message_preview))
        .route("/attachments/{id}", get(preview::attachment))
        .route("/image-proxy", get(preview::image_proxy))
        .route("/ops/mailboxes", get(ops::mailboxes))
        .route("/ops/quarantine", get(ops::quarantine))
        .route("/ops/quarantine/{id}/raw", get(ops::quarantine_raw))
        .route("/ops/quarantine/{id}/retry", post(ops::quarantine_retry))
        .route(
            "/ops/quarantine/{id}/release",
            post(ops::quarantine_release),
        )
        .route(
            "/ops/quarantine/{id}/dismiss",
            post(ops::quarantine_dismiss),
        )
        .route("/openapi.json", get(health::openapi))
        .route(
            "/chat/events",
            post(chat::events).layer(axum::extract::DefaultBodyLimit::max(
                crate::domain::chat::MAX_EVENT_BYTES,
            )),
        )
        .route("/tasks/{id}/chat-handle", get(chat::chat_handle))
        .route("/tasks/{id}/chat-messages", post(chat::reply))
        .route("/ops/channels", get(chat::channels))
        .route("/admin/chat-handle-keys/rotate", post(chat::rotate_keys));
    Router::new()
        .route("/", get(pages::workspace::page))
        .route("/ops", get(pages::ops::page))
        .route(
            "/sign-in",
            get(pages::sign_in::form).post(pages::sign_in::submit),
        )
        .route("/sign-out", post(pages::sign_in::sign_out))
        .route("/ui/ping", get(pages::workspace::ping))
        .route("/ui/sessions", get(pages::workspace::rows))
        .route("/ui/sessions/{id}", get(pages::workspace::detail))
        .route("/ui/queue", get(pages::workspace::queue))
        .route("/ui/offers", get(pages::workspace::offers))
        .route(
            "/ui/transfer-agents",
            get(pages::workspace::transfer_agents),
        )
        .route("/ui/ops/mailboxes", get(pages::ops::mailboxes))
        .route("/ui/ops/quarantine", get(pages::ops::quarantine))
        .route("/ui/ops/queues", get(pages::ops::queues))
        .route("/ui/ops/agents", get(pages::ops::agents))
        .route("/ui/ops/channels", get(pages::ops::channels))
        .route("/ui/ops/deliveries", get(pages::ops::deliveries))
        .route("/static/{file}", get(assets::serve))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/chat/open/{token}", get(chat::open))
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    state.metrics.http_requests.inc();
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}
