//! `GET`/`POST /sign-in` and `POST /sign-out`.
use super::{html, local_path, render};
use crate::http::AppState;
use crate::http::doc;
use crate::http::extract::Params;
use crate::http::web_auth::{self, Credentials, SignInError};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignInQuery {
    /// A local path to go to after sign-in.
    next: Option<String>,
}

fn form_page(headers: &HeaderMap, status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let ctx = serde_json::json!({
        "title": "Sign in",
        "next": next,
        "error": error,
        // Where an SSO provider's button goes, once there is one.
        "methods": ["token"],
    });
    match render("sign_in.html", &ctx) {
        Ok(body) => html(headers, status, body),
        Err(e) => e.into_response(),
    }
}

/// `GET /sign-in`: the form (already signed in: on to the page).
#[utoipa::path(
    get,
    path = "/sign-in",
    operation_id = "signInPage",
    tag = "pages",
    summary = "Sign-in page",
    description = "The sign-in page. A link `/sign-in#token=<token>` (printed by `switchboard demo`) fills the form and sends it; the token stays in the fragment, never in a URL the server sees.",
    params(
        SignInQuery,
    ),
    responses(
        (status = 200, description = "The page (or fragment).", body = String, content_type = "text/html"),
        (status = 303, description = "Already signed in: on to `next`. A sign-in link's token (in the fragment, which the browser keeps across the redirect) is taken out of the address bar there, and the page asks whether to sign in with it (the browser session then ends and a new one starts)."),
        (status = 400, response = doc::BadRequest),
    ),
    security(()),
)]
pub async fn form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(q): Params<SignInQuery>,
) -> Response {
    let next = q.next.as_deref().and_then(local_path).unwrap_or("/");
    if let Ok(Some(_)) = web_auth::signed_in(&state, &headers).await {
        return (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, next.to_string())],
        )
            .into_response();
    }
    form_page(&headers, StatusCode::OK, next, None)
}

/// The sign-in form.
#[derive(Deserialize, ToSchema)]
pub struct SignInForm {
    /// How to sign in (today only `token`; SSO providers later).
    #[serde(default)]
    method: Option<String>,
    /// The agent's API token.
    #[serde(default)]
    token: String,
    /// A local path to go to afterwards.
    #[serde(default)]
    next: Option<String>,
}

/// The sign-out form (the handler reads its one field itself).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct SignOutForm {
    /// The session's CSRF token (or send it as `X-CSRF-Token`).
    csrf: Option<String>,
}

/// `POST /sign-in` (a form): checks the credentials, starts a session and
/// sets its cookie.
#[utoipa::path(
    post,
    path = "/sign-in",
    operation_id = "signIn",
    tag = "pages",
    summary = "Sign in",
    description = "Checks the token and starts a browser session: 303 to `next` with `Set-Cookie: sb_session=…; HttpOnly; SameSite=Strict` (and `Secure` when `http.public_url` is https). A form posted from another site (its `Origin`) is refused. A wrong token shows the form again with the reason.",
    request_body(content = crate::http::pages::sign_in::SignInForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "After the redirect: the page.", body = String, content_type = "text/html"),
        (status = 303, description = "Signed in: to `next`."),
        (status = 400, description = "No token given.", body = String, content_type = "text/html"),
        (status = 401, description = "Unknown or revoked token.", body = String, content_type = "text/html"),
        (status = 403, description = "Posted from another site.", body = String, content_type = "text/html"),
        (status = 503, description = "The token could not be checked just now.", body = String, content_type = "text/html"),
    ),
    security(()),
)]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let next_default = "/".to_string();
    let form: SignInForm = match serde_urlencoded_form(&body) {
        Some(f) => f,
        None => {
            return form_page(
                &headers,
                StatusCode::BAD_REQUEST,
                "/",
                Some("the sign-in form was not sent as a form"),
            );
        }
    };
    let next = form
        .next
        .as_deref()
        .and_then(local_path)
        .map(String::from)
        .unwrap_or(next_default);
    // Login CSRF: a sign-in form posted from another site is refused.
    if !web_auth::origin_is_ours(&state, &headers) {
        tracing::info!(
            origin = ?headers.get(header::ORIGIN),
            host = ?headers.get(header::HOST),
            fetch_site = ?headers.get("sec-fetch-site"),
            "sign-in refused: it came from another site"
        );
        return form_page(
            &headers,
            StatusCode::FORBIDDEN,
            &next,
            Some("this sign-in came from another site and was refused"),
        );
    }
    let credentials = match form.method.as_deref().unwrap_or("token") {
        "token" => Credentials::Token(form.token),
        _ => {
            return form_page(
                &headers,
                StatusCode::BAD_REQUEST,
                &next,
                Some("this way of signing in is not available"),
            );
        }
    };
    let (agent, token_hash) = match web_auth::verify(&state, &credentials).await {
        Ok(found) => found,
        Err(e) => {
            let status = match e {
                SignInError::Missing => StatusCode::BAD_REQUEST,
                SignInError::Unknown => StatusCode::UNAUTHORIZED,
                SignInError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            };
            return form_page(&headers, status, &next, Some(&e.to_string()));
        }
    };
    // Signing in over a browser session (a sign-in link opened while signed
    // in): the old session ends, so it is not left alive behind the new one.
    if let Ok(Some(old)) = web_auth::signed_in(&state, &headers).await {
        if let Err(e) = web_auth::end_session(&state, &headers).await {
            tracing::warn!(error = %e.message, "the previous browser session did not end");
        } else {
            tracing::info!(agent = %old.agent.id, "signed out by a new sign-in");
            if old.agent.id != agent.id {
                go_offline_if_gone(&state, &old.agent.id).await;
            }
        }
    }
    let value =
        match web_auth::start_session(&state, &agent, credentials.method(), token_hash).await {
            Ok(v) => v,
            Err(_) => {
                return form_page(
                    &headers,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &next,
                    Some(&SignInError::Unavailable.to_string()),
                );
            }
        };
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, state.web.set_cookie(&value));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    r
}

/// An agent signed out of their last browser session is offline: no offer
/// should wait for someone who left (their pending offers go back at once).
/// Signed in elsewhere too, they stay as they are.
async fn go_offline_if_gone(state: &AppState, agent_id: &str) {
    let now = crate::domain::now_millis();
    match state.store.live_web_sessions(agent_id, now).await {
        Ok(0) => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(agent = %agent_id, error = %e, "could not tell whether the agent is signed in elsewhere");
            return;
        }
    }
    let grace = state.routing.grace_ms();
    match state
        .store
        .set_presence(agent_id, crate::domain::routing::Presence::Offline, grace)
        .await
    {
        Ok((_, withdrawn)) => {
            state.metrics.offer_result("withdrawn", withdrawn);
            tracing::info!(agent = %agent_id, withdrawn, "offline after signing out");
        }
        Err(e) => {
            tracing::warn!(agent = %agent_id, error = %e, "could not set the agent offline at sign-out")
        }
    }
}

fn serde_urlencoded_form(body: &[u8]) -> Option<SignInForm> {
    let mut form = SignInForm {
        method: None,
        token: String::new(),
        next: None,
    };
    for (k, v) in url::form_urlencoded::parse(body) {
        match k.as_ref() {
            "method" => form.method = Some(v.into_owned()),
            "token" => form.token = v.into_owned(),
            "next" => form.next = Some(v.into_owned()),
            _ => {}
        }
    }
    Some(form)
}

/// `POST /sign-out` (a form with the CSRF token, or the header): ends the
/// session and removes the cookie.
#[utoipa::path(
    post,
    path = "/sign-out",
    operation_id = "signOut",
    tag = "pages",
    summary = "Sign out",
    description = "Ends the browser session (CSRF token as the form field `csrf` or the `X-CSRF-Token` header) and removes the cookie; 303 to /sign-in. An agent signed out of their last browser session goes offline (their pending offers go back to the queue at once).",
    request_body(content = crate::http::pages::sign_in::SignOutForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "After the redirect: the sign-in page.", body = String, content_type = "text/html"),
        (status = 303, description = "Signed out: to /sign-in."),
        (status = 403, description = "Without the session's CSRF token.", body = String, content_type = "text/html"),
    ),
    security(()),
)]
pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Ok(Some(s)) = web_auth::signed_in(&state, &headers).await {
        let form_token = url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned());
        if let Err(e) = web_auth::check_csrf(&state, &s, &headers, form_token.as_deref()) {
            return super::error_response(&headers, Some(&s), e);
        }
        if let Err(e) = web_auth::end_session(&state, &headers).await {
            return super::error_response(&headers, Some(&s), e);
        }
        tracing::info!(agent = %s.agent.id, "signed out");
        go_offline_if_gone(&state, &s.agent.id).await;
    }
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/sign-in")]).into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, state.web.clear_cookie());
    r
}
