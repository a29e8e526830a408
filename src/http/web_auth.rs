//! Signing in to the pages: a session cookie for browsers, and CSRF
//! protection for every state-changing request a page makes.
//!
//! The cookie holds a random id (never the agent's token); the database keeps
//! only its SHA-256. A session signed in with a token is tied to that token:
//! each request checks (through the token cache) that the token still names
//! the agent, so revoking or replacing a token signs its browsers out.
//!
//! CSRF: the cookie is `SameSite=Strict`, and a cookie-authenticated request
//! that changes state must also carry the session's CSRF token in
//! `X-CSRF-Token` (the page has it in a `<meta>` tag) and, when the browser
//! sends one, an `Origin` of our own.
use super::AppState;
use super::error::ApiError;
use crate::domain::now_millis;
use crate::domain::token::hash_token;
use crate::store::{Agent, WebSession};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "sb_session";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a browser session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The ways an agent can sign in to the pages. Today their API token; an SSO
/// provider (OpenID Connect) becomes another variant whose callback ends in
/// [`start_session`] like the token form does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInMethod {
    /// The agent pastes their API token on the sign-in page.
    Token,
}

impl SignInMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SignInMethod::Token => "token",
        }
    }
}

/// What a sign-in form submitted.
pub enum Credentials {
    Token(String),
}

impl Credentials {
    pub fn method(&self) -> SignInMethod {
        match self {
            Credentials::Token(_) => SignInMethod::Token,
        }
    }
}

/// Why a sign-in was refused, in words for the sign-in page.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("paste your token to sign in")]
    Missing,
    #[error("this token is unknown or has been revoked: ask your administrator for a new one")]
    Unknown,
    #[error("the server could not check the token just now; try again in a moment")]
    Unavailable,
}

/// Checks credentials and names the agent (and the token hash that ties the
/// session to the token).
pub async fn verify(
    state: &AppState,
    credentials: &Credentials,
) -> Result<(Agent, Option<String>), SignInError> {
    match credentials {
        Credentials::Token(token) => {
            let token = token.trim();
            if token.is_empty() {
                return Err(SignInError::Missing);
            }
            // A token is one line of printable text; anything else is no token of ours.
            if token.len() > 512 || token.chars().any(|c| c.is_control() || c == ' ') {
                return Err(SignInError::Unknown);
            }
            let hash = hash_token(token);
            match agent_for_token_hash(state, &hash).await {
                Ok(Some(agent)) => Ok((agent, Some(hash))),
                Ok(None) => Err(SignInError::Unknown),
                Err(_) => Err(SignInError::Unavailable),
            }
        }
    }
}

async fn agent_for_token_hash(state: &AppState, hash: &str) -> Result<Option<Agent>, ApiError> {
    // The token cache is keyed by the digest's bytes; a stored hash is its hex.
    let digest: Option<[u8; 32]> = hex::decode(hash).ok().and_then(|b| b.try_into().ok());
    if let Some(agent) = digest.and_then(|d| state.tokens.get(&d)) {
        return Ok(Some(agent));
    }
    let agent = state.store.agent_by_token_hash(hash).await?;
    if let (Some(a), Some(d)) = (&agent, digest) {
        state.tokens.put(d, a.clone());
    }
    Ok(agent)
}

/// Browser sessions and how to set their cookie.
#[derive(Debug)]
pub struct WebAuth {
    /// `Secure` cookies: the server is reached over HTTPS (`http.public_url`).
    pub secure: bool,
    /// The origin agents reach us at, when configured (`https://sb.example.com`).
    pub public_origin: Option<String>,
    cache: Mutex<HashMap<String, (WebSession, Instant)>>,
}

impl WebAuth {
    /// A few seconds: sign-out on another worker and revoked tokens show within this.
    const CACHE_TTL: Duration = Duration::from_secs(5);
    const CACHE_MAX: usize = 10_000;

    pub fn new(public_url: Option<&str>) -> WebAuth {
        let parsed = public_url.and_then(|u| url::Url::parse(u).ok());
        WebAuth {
            secure: parsed.as_ref().is_some_and(|u| u.scheme() == "https"),
            public_origin: parsed.map(|u| u.origin().ascii_serialization()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, id_hash: &str) -> Option<WebSession> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(id_hash)
            .filter(|(_, at)| at.elapsed() < Self::CACHE_TTL)
            .map(|(s, _)| s.clone())
    }

    fn remember(&self, id_hash: &str, s: &WebSession) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= Self::CACHE_MAX {
                cache.retain(|_, (_, at)| at.elapsed() < Self::CACHE_TTL);
            }
            if cache.len() < Self::CACHE_MAX {
                cache.insert(id_hash.to_string(), (s.clone(), Instant::now()));
            }
        }
    }

    fn forget(&self, id_hash: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(id_hash);
        }
    }

    /// The `Set-Cookie` value that starts a session.
    pub fn set_cookie(&self, value: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let v = format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_TTL.as_secs()
        );
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn clear_cookie(&self) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"
        ))
        .unwrap_or(HeaderValue::from_static(""))
    }
}

/// A signed-in browser: the agent, and the CSRF token of their session.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub agent: Agent,
    pub csrf: String,
}

/// Starts a browser session for `agent`; returns the cookie value.
pub async fn start_session(
    state: &AppState,
    agent: &Agent,
    method: SignInMethod,
    token_hash: Option<String>,
) -> Result<String, ApiError> {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    let value = hex::encode(bytes);
    let now = now_millis();
    let session = WebSession {
        agent_id: agent.id.clone(),
        method: method.as_str().to_string(),
        token_hash,
        created_at: now,
        expires_at: now + SESSION_TTL.as_millis() as i64,
    };
    state
        .store
        .create_web_session(&hash_token(&value), &session)
        .await?;
    tracing::info!(agent = %agent.id, method = method.as_str(), "signed in");
    Ok(value)
}

/// Ends the browser session of this request, if any.
pub async fn end_session(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(value) = cookie_value(headers) {
        let id_hash = hash_token(value);
        state.web.forget(&id_hash);
        state.store.delete_web_session(&id_hash).await?;
    }
    Ok(())
}

/// The session cookie's value, if the request carries one.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The signed-in browser of this request: `Ok(None)` without a (valid)
/// cookie. Ends sessions whose token was revoked or replaced.
pub async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<SignedIn>, ApiError> {
    let Some(value) = cookie_value(headers) else {
        return Ok(None);
    };
    let id_hash = hash_token(value);
    let now = now_millis();
    let session = match state.web.cached(&id_hash) {
        Some(s) if s.expires_at > now => s,
        _ => match state.store.web_session(&id_hash, now).await? {
            Some(s) => {
                state.web.remember(&id_hash, &s);
                s
            }
            None => return Ok(None),
        },
    };
    let agent = match &session.token_hash {
        Some(token_hash) => agent_for_token_hash(state, token_hash).await?,
        None => match state.store.agent(&session.agent_id).await {
            Ok(a) => Some(a),
            Err(crate::store::StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        },
    };
    match agent {
        Some(agent) if agent.id == session.agent_id => Ok(Some(SignedIn {
            csrf: csrf_token(state, &id_hash),
            agent,
        })),
        _ => {
            // The token was revoked or now names someone else: this browser is signed out.
            tracing::info!(agent = %session.agent_id, "browser session ended: its token is no longer valid");
            state.web.forget(&id_hash);
            state.store.delete_web_session(&id_hash).await?;
            Ok(None)
        }
    }
}

/// The CSRF token of a session: derived from the server key and the session,
/// so it needs no storage and cannot be guessed without both.
fn csrf_token(state: &AppState, id_hash: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(state.link_key.as_slice())
        .expect("HMAC takes a key of any length");
    mac.update(b"csrf:");
    mac.update(id_hash.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..20])
}

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request's `Origin` (when the browser sent one) is ours: the
/// configured public origin, or the origin of the `Host` it was sent to.
pub fn origin_is_ours(state: &AppState, headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if state.web.public_origin.as_deref() == Some(origin) {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// Refuses a state-changing request whose CSRF token or origin is not the
/// session's own.
pub fn check_csrf(
    state: &AppState,
    s: &SignedIn,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<(), ApiError> {
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .or(form_token)
        .unwrap_or_default();
    if !same_bytes(sent.as_bytes(), s.csrf.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "this request did not come from a Switchboard page (its CSRF token is missing or wrong): reload the page and try again",
        ));
    }
    if !origin_is_ours(state, headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "this request came from another site and was refused",
        ));
    }
    Ok(())
}

/// The caller of an API request that carries the session cookie instead of
/// a bearer token: `Ok(None)` when there is no cookie. A state-changing
/// request must pass the CSRF check.
pub async fn cookie_caller(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<Agent>, ApiError> {
    if cookie_value(headers).is_none() {
        return Ok(None);
    }
    let Some(s) = signed_in(state, headers).await? else {
        return Err(signed_out());
    };
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        check_csrf(state, &s, headers, None)?;
    }
    Ok(Some(s.agent))
}

/// The answer to a request whose browser session has ended.
pub fn signed_out() -> ApiError {
    ApiError::unauthorized(
        "you are signed out (your session ended or your token was revoked): sign in again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sb_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("sb_sessionx=1"));
        assert_eq!(cookie_value(&h), None);
    }

    #[test]
    fn cookies_are_secure_only_behind_https() {
        let w = WebAuth::new(Some("https://sb.example.com/"));
        assert!(w.secure);
        assert_eq!(w.public_origin.as_deref(), Some("https://sb.example.com"));
        let c = w.set_cookie("v");
        let c = c.to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"));
        let w = WebAuth::new(None);
        assert!(!w.secure);
        assert!(!w.set_cookie("v").to_str().unwrap().contains("Secure"));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
    }
}
