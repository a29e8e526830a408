//! JSON representations of records, as the API shows them.
use crate::domain::millis_to_rfc3339;
use crate::store::{Agent, Session, Task};
use serde_json::{Value, json};

fn time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |m| Value::String(millis_to_rfc3339(m)))
}

/// A My Sessions entry.
pub fn session(s: &Session) -> Value {
    json!({
        "id": s.id,
        "task_id": s.task_id,
        "agent_id": s.agent_id,
        "service": s.service_id,
        "modality": s.modality,
        "state": s.state,
        "live": s.state.is_live(),
        "result": s.result,
        "created_at": time(Some(s.created_at)),
        "answered_at": time(s.answered_at),
        "ended_at": time(s.ended_at),
        "saved_at": time(s.saved_at),
        "subject": s.subject,
        "customer": {"name": s.customer_name, "address": s.customer_address},
        "wrapup": s.wrapup,
        "expires_at": time(s.expires_at),
        "end_reason": s.end_reason,
    })
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
        v["sessions"] = sessions.iter().map(session).collect();
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
