//! Bearer-token authentication: every API call names an agent (or admin).
use super::AppState;
use super::error::ApiError;
use crate::domain::token::token_digest;
use crate::store::Agent;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

/// The authenticated caller.
pub struct Caller(pub Agent);

impl Caller {
    /// Refuses callers that are not admins.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs an admin token"))
        }
    }

    /// Admins and supervisors (who then see only their own services).
    pub fn require_overseer(&self) -> Result<(), ApiError> {
        if self.0.admin || self.0.supervisor {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this needs an admin or supervisor token",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The pages call the API with their session cookie (and, for changes,
        // a CSRF token) instead of a bearer token.
        if !parts.headers.contains_key(header::AUTHORIZATION)
            && let Some(agent) =
                super::web_auth::cookie_caller(state, &parts.method, &parts.headers).await?
        {
            return Ok(Caller(agent));
        }
        authenticate(state, &parts.headers).await.map(Caller)
    }
}

/// The agent named by the request's bearer token or, without one, by its
/// browser session cookie. The cookie path does no CSRF check: it is for
/// reads (the event stream, previews); handlers that change state take a
/// [`Caller`], which checks it.
pub async fn authenticate(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Agent, ApiError> {
    let Some(header) = headers.get(header::AUTHORIZATION) else {
        if super::web_auth::cookie_value(headers).is_some() {
            return match super::web_auth::signed_in(state, headers).await? {
                Some(s) => Ok(s.agent),
                None => Err(super::web_auth::signed_out()),
            };
        }
        return Err(ApiError::unauthorized("send Authorization: Bearer <token>"));
    };
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not readable"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be 'Bearer <token>'")
        })?;
    let digest = token_digest(token);
    if let Some(agent) = state.tokens.get(&digest) {
        return Ok(agent);
    }
    match state
        .store
        .agent_by_token_hash(&hex::encode(digest))
        .await?
    {
        Some(agent) => {
            state.tokens.put(digest, agent.clone());
            Ok(agent)
        }
        None => match state
            .details
            .integrations
            .get(&crate::domain::token::hash_token(token))
        {
            // A known integration on an endpoint that is not open to
            // integrations: it is authenticated, just not allowed here.
            Some(i) => Err(ApiError::forbidden(format!(
                "integration '{}' may not use this endpoint: integration tokens reach only the endpoints of their scopes ({})",
                i.id,
                i.scopes.join(", ")
            ))),
            None => Err(ApiError::unauthorized("unknown or revoked token")),
        },
    }
}

/// Recently seen tokens, so most requests cost no lookup. Entries live a few
/// seconds and the whole cache is cleared whenever an agent is changed here; a
/// change made through another worker shows within the TTL. Keyed by the
/// token's SHA-256 bytes (never the token).
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Agent, std::time::Instant)>>,
}

impl TokenCache {
    const TTL: std::time::Duration = std::time::Duration::from_secs(5);
    const MAX: usize = 10_000;

    pub fn get(&self, hash: &[u8; 32]) -> Option<Agent> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(agent, _)| agent.clone())
    }

    pub fn put(&self, hash: [u8; 32], agent: Agent) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= Self::MAX {
                entries.retain(|_, (_, at)| at.elapsed() < Self::TTL);
            }
            if entries.len() < Self::MAX {
                entries.insert(hash, (agent, std::time::Instant::now()));
            }
        }
    }

    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}
