//! Who may call an endpoint is checked before its body is read: a caller
//! who may not use it gets 401/403 whatever they sent, not a 422 about a
//! body they were never allowed to send (and cannot probe the body rules).
//! The handlers check again; this only puts the refusal first.
use super::AppState;
use super::auth::Caller;
use super::principal::Principal;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// What an endpoint asks of its caller before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// An admin token (or an admin's browser session).
    Admin,
    /// An admin, or an integration with `tasks:write`.
    TasksWrite,
    Open,
}

/// The gate of a request, by method and path (under `/api/v1`).
fn gate(method: &Method, path: &str) -> Gate {
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return Gate::Open;
    };
    if rest == "admin" || rest.starts_with("admin/") {
        return Gate::Admin;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    match (method, parts.as_slice()) {
        (&Method::POST, ["tasks"])
        | (&Method::PATCH, ["tasks", _])
        | (&Method::POST, ["tasks", _, "outcome" | "cancel"]) => Gate::TasksWrite,
        _ => Gate::Open,
    }
}

/// The middleware: refuses a caller the gate does not let through.
pub async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let g = gate(request.method(), request.uri().path());
    if g == Gate::Open {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let refused = match g {
        Gate::Admin => match Caller::from_request_parts(&mut parts, &state).await {
            Ok(caller) => caller.require_admin().err(),
            Err(e) => Some(e),
        },
        Gate::TasksWrite => match Principal::from_request_parts(&mut parts, &state).await {
            Ok(principal) => principal.require("tasks:write", false).err(),
            Err(e) => Some(e),
        },
        Gate::Open => None,
    };
    if let Some(e) = refused {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_by_method_and_path() {
        assert_eq!(gate(&Method::PUT, "/api/v1/admin/services/x"), Gate::Admin);
        assert_eq!(gate(&Method::GET, "/api/v1/admin/webhooks"), Gate::Admin);
        assert_eq!(gate(&Method::POST, "/api/v1/tasks"), Gate::TasksWrite);
        assert_eq!(gate(&Method::GET, "/api/v1/tasks"), Gate::Open);
        assert_eq!(gate(&Method::PATCH, "/api/v1/tasks/t1"), Gate::TasksWrite);
        assert_eq!(gate(&Method::GET, "/api/v1/tasks/t1"), Gate::Open);
        assert_eq!(
            gate(&Method::POST, "/api/v1/tasks/t1/outcome"),
            Gate::TasksWrite
        );
        assert_eq!(
            gate(&Method::POST, "/api/v1/tasks/t1/cancel"),
            Gate::TasksWrite
        );
        assert_eq!(gate(&Method::POST, "/api/v1/tasks/t1/pickup"), Gate::Open);
        assert_eq!(gate(&Method::GET, "/api/v1/administrator"), Gate::Open);
        assert_eq!(gate(&Method::GET, "/ops"), Gate::Open);
    }
}
