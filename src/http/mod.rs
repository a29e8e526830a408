//! The HTTP edge: axum routes for the API, pages and metrics.
mod admin;
mod assets;
pub(crate) mod auth;
mod chat;
pub mod details;
mod directory;
pub mod doc;
mod drafts;
mod error;
pub(crate) mod events;
mod extract;
mod gate;
mod health;
mod me;
pub(crate) mod ops;
mod pages;
mod preview;
pub mod principal;
mod recorded;
mod routing;
mod session_json;
mod sessions;
pub mod starting;
mod tasks;
mod transcript;
mod views;
pub(crate) mod web_auth;
mod webhooks;

pub use error::ApiError;
pub use health::Metrics;

use crate::store::Store;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use std::sync::Arc;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// What every handler can reach: one allocation shared by every request
/// (axum clones the state for each extraction; a clone is one count).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state's parts (see [`AppState`]).
pub struct Shared {
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
    /// The configured mailboxes by id, to fetch a set-aside mail again.
    pub mailboxes: Arc<std::collections::HashMap<String, crate::config::MailboxConfig>>,
    /// The time limit of each IMAP step (`ingest.io_timeout_secs`).
    pub imap_timeout: std::time::Duration,
}

/// Every route of the service, with the document that describes them: each
/// handler carries its `#[utoipa::path]` (method, path, parameters, bodies,
/// answers), and `routes!` registers it with the router and the document at
/// once, so neither can have a route the other lacks. Routes are added only
/// through `.routes(routes!(...))` (tests/openapi.rs checks it).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    let api =
        OpenApiRouter::new()
            .routes(routes!(sessions::my_sessions))
            .routes(routes!(events::stream))
            .routes(routes!(me::queue))
            .routes(routes!(me::services))
            .routes(routes!(routing::get_presence, routing::put_presence))
            .routes(routes!(routing::my_offers))
            .routes(routes!(routing::accept))
            .routes(routes!(routing::decline))
            .routes(routes!(routing::agents))
            .routes(routes!(routing::queues))
            .routes(routes!(tasks::cancel))
            .routes(routes!(sessions::get_session))
            .routes(routes!(sessions::put_wrapup))
            .routes(routes!(sessions::save))
            .routes(routes!(tasks::list, tasks::create))
            .routes(routes!(tasks::get, details::update_task))
            .routes(routes!(tasks::pickup))
            .routes(routes!(tasks::outcome))
            .routes(routes!(tasks::handled))
            .routes(routes!(tasks::transfer))
            .routes(routes!(
                admin::get_service,
                admin::put_service,
                admin::delete_service
            ))
            .routes(routes!(admin::put_codes))
            .routes(routes!(admin::put_templates))
            .routes(routes!(drafts::create))
            .routes(routes!(drafts::get, drafts::update, drafts::delete))
            .routes(
                routes!(drafts::add_attachment, drafts::reorder_attachments).layer(
                    axum::extract::DefaultBodyLimit::max(drafts::MAX_ATTACHMENT_BYTES),
                ),
            )
            .routes(routes!(drafts::remove_attachment))
            .routes(routes!(drafts::send))
            .routes(routes!(drafts::unsend))
            .routes(routes!(admin::get_agent, admin::put_agent))
            .routes(routes!(admin::get_contact, directory::put_contact))
            .routes(routes!(directory::import_contacts).layer(
                axum::extract::DefaultBodyLimit::max(directory::MAX_IMPORT_BYTES),
            ))
            .routes(routes!(directory::get_user, directory::put_user))
            .routes(
                routes!(directory::import_users).layer(axum::extract::DefaultBodyLimit::max(
                    directory::MAX_IMPORT_BYTES,
                )),
            )
            .routes(routes!(directory::search_contacts))
            .routes(routes!(webhooks::list, webhooks::create))
            .routes(routes!(webhooks::get, webhooks::put, webhooks::delete))
            .routes(routes!(webhooks::redeliver_all))
            .routes(routes!(webhooks::deliveries))
            .routes(routes!(webhooks::redeliver))
            .routes(routes!(tasks::messages))
            .routes(routes!(transcript::add))
            .routes(routes!(preview::task_preview))
            .routes(routes!(preview::message_preview))
            .routes(routes!(preview::attachment))
            .routes(routes!(preview::image_proxy))
            .routes(routes!(ops::mailboxes))
            .routes(routes!(ops::quarantine))
            .routes(routes!(ops::quarantine_raw))
            .routes(routes!(ops::quarantine_retry))
            .routes(routes!(ops::quarantine_release))
            .routes(routes!(ops::quarantine_dismiss))
            .routes(routes!(recorded::list))
            .routes(routes!(recorded::raw))
            .routes(routes!(recorded::make_task))
            .routes(routes!(doc::openapi))
            .routes(
                routes!(chat::events).layer(axum::extract::DefaultBodyLimit::max(
                    crate::domain::chat::MAX_EVENT_BYTES,
                )),
            )
            .routes(routes!(chat::chat_handle))
            .routes(routes!(chat::reply))
            .routes(routes!(chat::channels))
            .routes(routes!(chat::rotate_keys));
    OpenApiRouter::new()
        .routes(routes!(pages::workspace::page))
        .routes(routes!(pages::ops::page))
        .routes(routes!(pages::sign_in::form, pages::sign_in::submit))
        .routes(routes!(pages::sign_in::sign_out))
        .routes(routes!(pages::workspace::ping))
        .routes(routes!(pages::workspace::rows))
        .routes(routes!(pages::workspace::detail))
        .routes(routes!(pages::workspace::queue))
        .routes(routes!(pages::workspace::offers))
        .routes(routes!(pages::workspace::transfer_agents))
        .routes(routes!(pages::ops::mailboxes))
        .routes(routes!(pages::ops::quarantine))
        .routes(routes!(pages::ops::recorded))
        .routes(routes!(pages::ops::queues))
        .routes(routes!(pages::ops::agents))
        .routes(routes!(pages::ops::channels))
        .routes(routes!(pages::ops::deliveries))
        .routes(routes!(assets::serve))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(chat::open))
        .nest("/api/v1", api)
}

/// The service's router: [`routes`] with the answers for unknown paths and
/// methods, and the request counter.
pub fn router(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), gate::check))
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
