//! Server-rendered pages.
use axum::http::header;
use axum::response::IntoResponse;

const MY_SESSIONS: &str = include_str!("../../templates/my_sessions.html");

/// `GET /`: the agent's My Sessions page. The page holds no data itself: it asks
/// for the agent's token and reads `/api/v1/me/sessions` with it, so the same
/// authorisation rules apply as for the API.
pub async fn my_sessions_page() -> impl IntoResponse {
    html(MY_SESSIONS)
}

/// A page with the headers every page gets: a CSP that allows only our own
/// script and API, no framing, no sniffing, no referrer.
pub fn html(body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}
