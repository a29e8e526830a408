//! Server-rendered pages: the agents' workspace (My Sessions, `/`), the
//! operators' page (`/ops`) and sign-in. Rendered from `templates/pages/`
//! with autoescaping; the page script (`static/app.js`) and htmx are served
//! from our own origin (see [`super::assets`]). Pages read fragments under
//! `/ui/` and change things through the JSON API with their session cookie
//! and CSRF token, so every rule of the API applies to them too.
pub mod ops;
pub mod sign_in;
pub mod workspace;

use super::AppState;
use super::assets;
use super::error::ApiError;
use super::web_auth::{self, SignedIn};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;

/// The pages' own policy: scripts, styles and frames from our origin only,
/// no inline script or style, nothing from anywhere else.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const TEMPLATES: &[(&str, &str)] = &[
    (
        "layout.html",
        include_str!("../../../templates/pages/layout.html"),
    ),
    (
        "sign_in.html",
        include_str!("../../../templates/pages/sign_in.html"),
    ),
    (
        "message.html",
        include_str!("../../../templates/pages/message.html"),
    ),
    (
        "workspace.html",
        include_str!("../../../templates/pages/workspace.html"),
    ),
    (
        "session_rows.html",
        include_str!("../../../templates/pages/session_rows.html"),
    ),
    (
        "offers.html",
        include_str!("../../../templates/pages/offers.html"),
    ),
    (
        "transfer_agents.html",
        include_str!("../../../templates/pages/transfer_agents.html"),
    ),
    (
        "queue.html",
        include_str!("../../../templates/pages/queue.html"),
    ),
    (
        "session_detail.html",
        include_str!("../../../templates/pages/session_detail.html"),
    ),
    (
        "email_widget.html",
        include_str!("../../../templates/pages/email_widget.html"),
    ),
    (
        "im_widget.html",
        include_str!("../../../templates/pages/im_widget.html"),
    ),
    (
        "call_widget.html",
        include_str!("../../../templates/pages/call_widget.html"),
    ),
    (
        "transcript_lines.html",
        include_str!("../../../templates/pages/transcript_lines.html"),
    ),
    (
        "ops.html",
        include_str!("../../../templates/pages/ops.html"),
    ),
    (
        "ops_mailboxes.html",
        include_str!("../../../templates/pages/ops_mailboxes.html"),
    ),
    (
        "ops_queues.html",
        include_str!("../../../templates/pages/ops_queues.html"),
    ),
    (
        "ops_agents.html",
        include_str!("../../../templates/pages/ops_agents.html"),
    ),
    (
        "ops_channels.html",
        include_str!("../../../templates/pages/ops_channels.html"),
    ),
    (
        "ops_deliveries.html",
        include_str!("../../../templates/pages/ops_deliveries.html"),
    ),
    (
        "ops_quarantine.html",
        include_str!("../../../templates/pages/ops_quarantine.html"),
    ),
    (
        "ops_recorded.html",
        include_str!("../../../templates/pages/ops_recorded.html"),
    ),
];

fn environment() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        env.add_function("asset", |name: String| {
            minijinja::Value::from_safe_string(assets::url(&name))
        });
        for (name, source) in TEMPLATES {
            // A template that fails to parse is a build mistake, caught by the tests.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "page template is broken");
            }
        }
        env
    })
}

/// Renders a template of `templates/pages/`.
pub fn render(name: &str, ctx: &impl serde::Serialize) -> Result<String, ApiError> {
    environment()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| {
            tracing::error!(template = name, error = %e, "page could not be rendered");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the page could not be shown; the error has been logged",
            )
        })
}

/// `response` with [`PAGE_CSP`] widened to frame `origins` too (the
/// embedded conversation context of the agent's services; each checked by
/// [`crate::domain::context::ContextLink::embed_origin`]).
pub fn with_frames(mut response: Response, origins: &[String]) -> Response {
    if origins.is_empty() {
        return response;
    }
    let csp = PAGE_CSP.replace(
        "frame-src 'self'",
        &format!("frame-src 'self' {}", origins.join(" ")),
    );
    if let Ok(value) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// HTML with the headers every page and fragment gets: our CSP, no
/// sniffing, no referrer, never cached (it shows an agent's own data),
/// gzip-compressed when the client takes it.
pub fn html(headers: &HeaderMap, status: StatusCode, body: String) -> Response {
    let mut response = if body.len() > 1024 && assets::accepts_gzip(headers) {
        let mut r = (
            status,
            assets::gzip(body.as_bytes(), flate2::Compression::fast()),
        )
            .into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        (status, body).into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Same-origin: our own requests keep their Origin (a form posted under
    // `no-referrer` says `Origin: null`, which the CSRF check refuses);
    // nothing is sent to other sites.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

/// A short page that says what happened, in words.
pub fn message_page(
    headers: &HeaderMap,
    status: StatusCode,
    title: &str,
    text: &str,
    user: Option<&SignedIn>,
) -> Response {
    let ctx = serde_json::json!({
        "title": title,
        "text": text,
        "agent": user.map(agent_view),
        "csrf": user.map(|u| u.csrf.clone()),
    });
    match render("message.html", &ctx) {
        Ok(body) => html(headers, status, body),
        Err(e) => e.into_response(),
    }
}

/// What the layout shows of the signed-in agent.
pub fn agent_view(u: &SignedIn) -> serde_json::Value {
    serde_json::json!({
        "id": u.agent.id,
        "name": u.agent.name,
        "admin": u.agent.admin,
    })
}

/// Whether the request was made by htmx (a fragment), not a navigation.
fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// A local path to come back to after sign-in (never another site).
pub fn local_path(p: &str) -> Option<&str> {
    let ok = p.starts_with('/')
        && !p.starts_with("//")
        && !p.starts_with("/\\")
        && p.len() <= 2000
        && !p.chars().any(|c| c.is_control());
    ok.then_some(p)
}

/// A signed-in browser, for pages and fragments. Without one, a page
/// navigation is sent to the sign-in page; an htmx request is told to go
/// there (`HX-Redirect`); anything else gets a 401 in the API's shape.
pub struct PageUser(pub SignedIn);

impl FromRequestParts<AppState> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match web_auth::signed_in(state, &parts.headers).await {
            Ok(Some(s)) => Ok(PageUser(s)),
            Ok(None) => Err(to_sign_in(parts)),
            Err(e) => Err(e.into_response()),
        }
    }
}

fn to_sign_in(parts: &Parts) -> Response {
    // Back to where the browser was after signing in: the page itself, or
    // for a fragment the page that asked for it (htmx's HX-Current-URL).
    let sign_in_then = |next: Option<&str>| match next.and_then(local_path).filter(|p| *p != "/") {
        Some(p) => format!(
            "/sign-in?next={}",
            url::form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()
        ),
        None => "/sign-in".to_string(),
    };
    if is_htmx(&parts.headers) {
        let page = parts
            .headers
            .get("hx-current-url")
            .and_then(|v| v.to_str().ok())
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_string(),
            });
        let mut r = web_auth::signed_out().into_response();
        if let Ok(location) = HeaderValue::from_str(&sign_in_then(page.as_deref())) {
            r.headers_mut().insert("hx-redirect", location);
        }
        return r;
    }
    let wants_html = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if !wants_html && parts.uri.path().starts_with("/ui/") {
        return web_auth::signed_out().into_response();
    }
    let location = sign_in_then(parts.uri.path_and_query().map(|p| p.as_str()));
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response()
}

/// A page-rendering error as a short page (navigations) or a fragment that
/// says it (htmx).
pub fn error_response(headers: &HeaderMap, user: Option<&SignedIn>, e: ApiError) -> Response {
    if is_htmx(headers) {
        let body = format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            minijinja::HtmlEscape(&e.message)
        );
        return html(headers, e.status, body);
    }
    let title = match e.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        s if s.is_server_error() => "Something went wrong",
        _ => "That did not work",
    };
    message_page(headers, e.status, title, &e.message, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            assert!(
                environment().get_template(name).is_ok(),
                "template {name} does not parse"
            );
        }
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path("/ops"), Some("/ops"));
        assert_eq!(local_path("//evil.example/"), None);
        assert_eq!(local_path("/\\evil.example"), None);
        assert_eq!(local_path("https://evil.example/"), None);
    }
}
