//! The API's OpenAPI document, generated from the handlers' own annotations
//! (`#[utoipa::path]`) and types (`ToSchema`, `IntoParams`): the router and
//! the document are built from the same `routes!` calls (see
//! [`super::router`]), so a route cannot exist undocumented, nor a
//! documented one be missing. Served at `GET /api/v1/openapi.json`; printed
//! by `switchboard openapi`.
use serde::Serialize;
use std::sync::LazyLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder, header::HeaderBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// The one error shape of the API.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// Machine-readable: invalid_request, unauthorized, forbidden, not_found,
    /// conflict, method_not_allowed, not_ready, internal; link_expired (a
    /// preview link token that has expired), if_match_required (a draft
    /// change without If-Match), image_refused (the image proxy would not or
    /// could not fetch the image).
    #[schema(example = "not_found")]
    pub code: &'a str,
    /// What went wrong, for humans.
    #[schema(example = "task 'tsk_0123' not found")]
    pub message: &'a str,
}

/// The `If-Match` header of a draft change (optimistic concurrency).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatch {
    /// The version the change is based on: the draft's ETag (`"3"`; `3` and `W/"3"` are accepted too). Without it the change is refused with 428 (code if_match_required); a version that is not a number is a 400; a version that is no longer current is a 409.
    #[serde(rename = "If-Match")]
    pub if_match: String,
}

/// Bytes of any type (a file, an image, a mail's raw source).
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .into()
    }
}

impl ToSchema for Binary {}

/// A reusable error response (`#/components/responses/<name>`) whose body is
/// [`ErrorBody`].
macro_rules! error_responses {
    ($($(#[$doc:meta])* $name:ident = $description:literal;)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl<'r> utoipa::ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), error_response($description).into())
            }
        }
    )*};
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("Error"))),
        )
        .build()
}

error_responses! {
    BadRequest = "The request is malformed: invalid query parameters (unknown ones included), a body that is not JSON, a path id that cannot be read.";
    Forbidden = "The token is valid but may not do this (e.g. it is not an admin token, or the caller does not hold the task).";
    NotFound = "The record does not exist, or is not visible to the caller.";
    Conflict = "The record is not in a state that allows this (e.g. already saved, not queued, changed meanwhile).";
    Unprocessable = "The body is JSON of the wrong shape (missing or unknown fields, wrong types or enum values), or breaks a rule (unknown service, out-of-range value, code not in the catalog).";
    UnsupportedMediaType = "The body was not sent with Content-Type: application/json.";
    PreconditionRequired = "The change was sent without `If-Match` (code if_match_required).";
    DraftConflict = "The draft changed meanwhile (`If-Match` names an older version: reload it), or it was queued or sent and can no longer be changed.";
}

/// 401, with `WWW-Authenticate: Bearer`.
pub struct Unauthorized;

impl<'r> utoipa::ToResponse<'r> for Unauthorized {
    fn response() -> (&'r str, RefOr<Response>) {
        let mut response = error_response("No bearer token, or an unknown or revoked one.");
        response.headers.insert(
            "WWW-Authenticate".into(),
            HeaderBuilder::new()
                .schema(String::schema())
                .description(Some("Always `Bearer`."))
                .build(),
        );
        ("Unauthorized", response.into())
    }
}

use utoipa::PartialSchema;

/// What the annotations do not say: the title and description, the tags,
/// the security schemes and the reusable responses.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "Switchboard's contact-center task engine: My Sessions, wrap-up and save, tasks (pickup, outcomes, handled, transfer) and their email messages, safe previews of the mail (attachments, image proxy), replies (drafts, attachments, sending), administration, operators' mailbox ingestion (mailbox health, quarantine), instant messaging, routing (presence, offers), session details (the directory, the address book, \"Update task\") and signed outbound webhooks.\n\nThis document is generated from the handlers' own types and annotations (utoipa), so it describes the router as it is.\n\nAuthentication: `Authorization: Bearer <token>`; the pages call the same API with their session cookie instead (`sb_session`, set by POST /sign-in), and then every state-changing request must carry the session's CSRF token in `X-CSRF-Token` (403, code csrf, otherwise). Agent tokens see their own data, admin tokens everything; integration tokens only what their scopes allow (`tasks:read`, `tasks:write`); on any other endpoint they get 403 (code forbidden), not 401. Errors are always `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`; unknown paths answer 404 with message \"no such endpoint\", unsupported methods 405 (code method_not_allowed). Any operation may also answer 500 (code internal) on a storage failure.\n\nTimes are RFC 3339 in UTC. Task and session lists are newest first with opaque keyset cursors (`limit` 1–200, default 50).",
    ),
    servers((url = "/")),
    tags(
        (name = "health", description = "Liveness, readiness, metrics and this document (no token needed)."),
        (name = "pages", description = "Server-rendered pages."),
        (name = "sessions", description = "My Sessions, wrap-up and save."),
        (name = "tasks", description = "Tasks: listing, creation from other components, pickup, outcomes, handled, transfer."),
        (name = "mail", description = "Safe previews of a task's mail, its attachments and the image proxy. A preview is a complete HTML document served with a strict Content-Security-Policy, meant for an `<iframe sandbox>`. Browsers cannot send a bearer header from a frame, so these can also be opened with a short-lived link token signed for the task (`?token=`): GET /api/v1/tasks/{id} hands one out in `preview_url` (valid until `links_expire_at`, `[preview] link_ttl_secs`, 15 minutes by default), and every link inside a preview carries one. Mail content is for the task's holders (present and past) and admins."),
        (name = "drafts", description = "Replies: a draft prefilled from the task's mail (reply, reply all, forward, or a new message), saved with optimistic versioning (the version is the ETag; changes need `If-Match`), attachments, and sending through the outbox (`[smtp]`), exactly once. A draft is visible to the agent who wrote it and to admins; others get 404."),
        (name = "admin", description = "Services, code catalogs, agents and contacts (admin tokens)."),
        (name = "ops", description = "Operators: mailbox health and the quarantine (admin tokens). Ingestion is exactly-once: a mail's message, the task or conversation entry it makes, any quarantine entry and the mailbox cursor are committed in one transaction, fenced by the mailbox's lease (one worker at a time), so a crash or a lost lease never loses a mail nor takes it in twice. A mail already stored for the service (same content, whatever the mailbox, UIDVALIDITY or number of deliveries) is counted as a duplicate and makes nothing new."),
        (name = "chat", description = "Instant messaging: the signed chat webhook, open-chat handles, chat channels' health and the handle signing keys. Chat events (webhook, Matrix, JetStream) become IM tasks routed like every task; a delivery repeated with the same event id has one effect."),
        (name = "routing", description = "Presence, offers and their answers, agents and queues."),
        (name = "directory", description = "The internal directory and the external address book."),
        (name = "webhooks", description = "Signed outbound webhooks: subscriptions and deliveries."),
    ),
    components(
        schemas(ErrorBody),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            Unprocessable,
            UnsupportedMediaType,
            PreconditionRequired,
            DraftConflict
        ),
    ),
    security(("bearerAuth" = [])),
    modifiers(&SecuritySchemes),
)]
struct Base;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An agent's or admin's token, as configured or set through PUT /api/v1/admin/agents/{id}; or an integration's token (`[[integrations]]`), limited to its scopes.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cookieAuth",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "sb_session",
                "The browser session of the pages, set by POST /sign-in. Opaque (never the token); ends at sign-out, after 12 hours, or when the agent's token is revoked. State-changing requests need `X-CSRF-Token`.",
            ))),
        );
    }
}

/// The whole document: [`Base`] with every operation of the router.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, paths) = super::routes().split_for_parts();
    let mut api = Base::openapi().merge_from(paths);
    // A public operation says `security: []` (no token at all), which the
    // annotation `security(())` writes as one empty requirement.
    for item in api.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(security) = &mut op.security {
                security
                    .retain(|r| r != &utoipa::openapi::security::SecurityRequirement::default());
            }
        }
    }
    api
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        document().to_json().unwrap_or_else(|e| {
            format!("{{\"error\": \"cannot write the OpenAPI document: {e}\"}}")
        })
    });
    &JSON
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "health",
    summary = "This document",
    description = "The API described as OpenAPI 3.1, generated from the handlers' own types and annotations.",
    responses(
        (status = 200, description = "The OpenAPI document.", body = serde_json::Value),
    ),
    security(()),
)]
pub async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
}
