//! Who calls an endpoint that integrations may use too: an agent (or admin)
//! with their bearer token, or an integration with its own token, whose
//! scopes say what it may do (`tasks:read`, `tasks:write`, `contacts:read`)
//! and nothing else. Integration tokens come from `[[integrations]]`; only
//! their SHA-256 is kept in memory.
use super::AppState;
use super::error::ApiError;
use crate::domain::token::hash_token;
use crate::store::Agent;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// An integration as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integration {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
}

/// The integrations of this process, by token hash. Clones share them, so
/// a reloaded configuration ([`Integrations::reload`]) reaches every request.
#[derive(Debug, Clone, Default)]
pub struct Integrations {
    by_hash: Arc<RwLock<HashMap<String, Integration>>>,
}

impl Integrations {
    pub fn from_config(config: &crate::config::Config) -> Integrations {
        Integrations {
            by_hash: Arc::new(RwLock::new(Self::configured(config))),
        }
    }

    /// Replaces them all with `config`'s: a token no longer configured stops
    /// working at once. Returns how many there are now.
    pub fn reload(&self, config: &crate::config::Config) -> usize {
        let fresh = Self::configured(config);
        let count = fresh.len();
        *self.by_hash.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        count
    }

    fn configured(config: &crate::config::Config) -> HashMap<String, Integration> {
        config
            .integrations
            .iter()
            .filter_map(|i| {
                let token = i.resolved_token.as_ref()?;
                Some((
                    hash_token(token.expose()),
                    Integration {
                        id: i.id.clone(),
                        name: i.name.clone().unwrap_or_else(|| i.id.clone()),
                        scopes: i.scopes.clone(),
                    },
                ))
            })
            .collect()
    }

    pub(super) fn get(&self, hash: &str) -> Option<Integration> {
        self.by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }
}

/// The caller of an endpoint open to integrations.
#[derive(Debug, Clone)]
pub enum Principal {
    Agent(Agent),
    Integration(Integration),
}

impl Principal {
    /// Admins may do everything; an integration what its scopes say; an
    /// agent only what the endpoint allows agents (`agents_may`).
    pub fn require(&self, scope: &str, agents_may: bool) -> Result<(), ApiError> {
        match self {
            Principal::Agent(a) if a.admin || agents_may => Ok(()),
            Principal::Agent(_) => Err(ApiError::forbidden(
                "this needs an admin or integration token",
            )),
            Principal::Integration(i) if i.scopes.iter().any(|s| s == scope) => Ok(()),
            Principal::Integration(i) => Err(ApiError::forbidden(format!(
                "integration '{}' lacks the scope {scope}",
                i.id
            ))),
        }
    }

    /// Who it is, for the change log: `agent:<id>` or `integration:<id>`.
    pub fn label(&self) -> String {
        match self {
            Principal::Agent(a) => format!("agent:{}", a.id),
            Principal::Integration(i) => format!("integration:{}", i.id),
        }
    }

    /// Sees every task and session (admins and integrations reading tasks).
    pub fn sees_everything(&self) -> bool {
        match self {
            Principal::Agent(a) => a.admin,
            Principal::Integration(i) => i.scopes.iter().any(|s| s == "tasks:read"),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let hash = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(hash_token);
        if let Some(i) = hash
            .as_deref()
            .and_then(|h| state.details.integrations.get(h))
        {
            return Ok(Principal::Integration(i));
        }
        // Everything else (and every error) is the agents' authentication,
        // with the pages' CSRF check for a session cookie.
        super::auth::Caller::from_request_parts(parts, state)
            .await
            .map(|caller| Principal::Agent(caller.0))
    }
}
