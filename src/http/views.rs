//! JSON representations of records, as the API shows them.
use crate::domain::millis_to_rfc3339;
use crate::domain::{Millis, Modality, Rfc3339Millis, SessionResult, SessionState, WrapUp};
use crate::store::{Agent, Session, Task};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Serialize, Serializer};
use serde_json::{Value, json};

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(millis_to_rfc3339(m)))
}

/// A JSON response serialized straight into a buffer of about `capacity`
/// bytes (growing a small buffer in steps costs reallocations and copies).
pub fn json_response<T: Serialize>(value: &T, capacity: usize) -> Response {
    let mut body = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a response");
            super::ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server could not complete the request; it has been logged",
            )
            .into_response()
        }
    }
}

/// About how many bytes one session takes in JSON, to size response buffers.
pub const SESSION_JSON_BYTES: usize = 640;

/// A timestamp as RFC 3339 text (or null), written without a temporary string.
struct Time(Option<Millis>);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_none(),
            Some(ms) => match Rfc3339Millis::new(ms) {
                Some(t) => s.serialize_str(t.as_str()),
                None => s.serialize_str(&millis_to_rfc3339(ms)),
            },
        }
    }
}

#[derive(Serialize)]
struct CustomerFields<'a> {
    address: Option<&'a str>,
    name: Option<&'a str>,
}

/// The fields of a session, in the (alphabetical) order the API has always
/// written them.
#[derive(Serialize)]
struct SessionFields<'a> {
    agent_id: &'a str,
    answered_at: Time,
    created_at: Time,
    customer: CustomerFields<'a>,
    end_reason: Option<&'a str>,
    ended_at: Time,
    expires_at: Time,
    id: &'a str,
    live: bool,
    modality: Modality,
    result: Option<SessionResult>,
    saved_at: Time,
    service: &'a str,
    state: SessionState,
    subject: Option<&'a str>,
    task_id: &'a str,
    wrapup: &'a WrapUp,
}

/// A My Sessions entry: serializes the record directly (no `Value` tree).
#[derive(Clone, Copy)]
pub struct SessionView<'a>(&'a Session);

impl Serialize for SessionView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        SessionFields {
            agent_id: &v.agent_id,
            answered_at: Time(v.answered_at),
            created_at: Time(Some(v.created_at)),
            customer: CustomerFields {
                address: v.customer_address.as_deref(),
                name: v.customer_name.as_deref(),
            },
            end_reason: v.end_reason.as_deref(),
            ended_at: Time(v.ended_at),
            expires_at: Time(v.expires_at),
            id: &v.id,
            live: v.state.is_live(),
            modality: v.modality,
            result: v.result,
            saved_at: Time(v.saved_at),
            service: &v.service_id,
            state: v.state,
            subject: v.subject.as_deref(),
            task_id: &v.task_id,
            wrapup: &v.wrapup,
        }
        .serialize(s)
    }
}

/// A My Sessions entry.
pub fn session(s: &Session) -> SessionView<'_> {
    SessionView(s)
}

/// A My Sessions entry as a JSON value, to embed in a larger view.
pub fn session_value(s: &Session) -> Value {
    serde_json::to_value(session(s)).unwrap_or(Value::Null)
}

/// One session as a response.
pub fn session_response(s: &Session) -> Response {
    json_response(&session(s), SESSION_JSON_BYTES)
}

/// A page of sessions: `{"items": [...], "next_cursor": ...}`.
pub fn sessions_page(items: &[Session], next_cursor: Option<&str>) -> Response {
    #[derive(Serialize)]
    struct Page<'a> {
        items: Items<'a>,
        next_cursor: Option<&'a str>,
    }
    struct Items<'a>(&'a [Session]);
    impl Serialize for Items<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(SessionView))
        }
    }
    json_response(
        &Page {
            items: Items(items),
            next_cursor,
        },
        64 + items.len() * SESSION_JSON_BYTES,
    )
}

/// A task; `sessions` are included in the detailed view.
pub fn task(t: &Task, sessions: Option<&[Session]>) -> Value {
    let display = t
        .customer
        .name
        .clone()
        .or_else(|| t.customer.address.clone())
        .unwrap_or_else(|| "Anonymous".into());
    let mut v = json!({
        "id": t.id,
        "service": t.service_id,
        "modality": t.modality,
        "state": t.state,
        "priority": t.priority,
        "arrived_at": time(Some(t.arrived_at)),
        "updated_at": time(Some(t.updated_at)),
        "ended_at": time(t.ended_at),
        "customer": {
            "kind": t.customer.kind,
            "ref": t.customer.reference,
            "name": t.customer.name,
            "address": t.customer.address,
            "display": display,
        },
        "subject": t.subject,
        "parameters": t.params,
        "external_id": t.external_id,
        "routed": t.routed,
        "ronas": t.ronas,
        "customer_left_at": time(t.customer_left_at),
    });
    if let Some(sessions) = sessions {
        v["sessions"] = sessions.iter().map(session_value).collect();
    }
    v
}

pub fn agent(a: &Agent) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "email": a.email,
        "admin": a.admin,
        "presence": a.presence,
        "capacity": a.capacity,
        "services": a.services,
    })
}
