//! What the store returns: plain records.
use crate::domain::customer::{CustomerDetails, CustomerMatch, NormalIdentity};
use crate::domain::wrapup::WrapUp;
use crate::domain::{Millis, Modality, SessionResult, SessionState, TaskState};
use serde_json::Value;

/// An agent as stored (never the token).
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub email: String,
    pub admin: bool,
    /// Reads the work of their own services (see [`Agent::supervises`]).
    pub supervisor: bool,
    pub presence: String,
    pub capacity: Capacity,
    pub services: Vec<String>,
}

impl Agent {
    /// Whether they may read the work of `service`: admins every service,
    /// supervisors their own (every task with every session, its queues and
    /// agents), read-only.
    pub fn oversees(&self, service: &str) -> bool {
        self.admin || (self.supervisor && self.services.iter().any(|s| s == service))
    }
}

/// How many tasks of each modality an agent handles at once.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(default)]
pub struct Capacity {
    pub email: u32,
    pub im: u32,
    pub call: u32,
}

impl Capacity {
    /// `given` where set, the default elsewhere.
    pub fn or_default(given: crate::domain::service::CapacityDefaults) -> Capacity {
        let d = Capacity::default();
        Capacity {
            email: given.email.unwrap_or(d.email),
            im: given.im.unwrap_or(d.im),
            call: given.call.unwrap_or(d.call),
        }
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            email: 3,
            im: 2,
            call: 1,
        }
    }
}

impl Capacity {
    pub fn for_modality(&self, m: Modality) -> u32 {
        match m {
            Modality::Email => self.email,
            Modality::Im => self.im,
            Modality::Call => self.call,
        }
    }
}

/// An agent to create or replace.
#[derive(Debug, Clone)]
pub struct AgentUpsert {
    pub id: String,
    pub name: String,
    pub email: String,
    /// SHA-256 of the bearer token; `None` keeps the stored one.
    pub token_hash: Option<String>,
    pub admin: bool,
    pub supervisor: bool,
    pub capacity: Capacity,
    pub services: Vec<String>,
}

/// An entry of the external address book.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Contact {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub company: Option<String>,
    /// A postal address (for the map).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_address: Option<String>,
}

/// A tenant user of the internal directory (agents are in it by e-mail too).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DirectoryUser {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    /// E.164 where the country is known.
    pub phone: Option<String>,
    pub upn: Option<String>,
    pub department: Option<String>,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    pub modality: Modality,
    pub state: TaskState,
    pub priority: i32,
    pub arrived_at: Millis,
    pub updated_at: Millis,
    pub ended_at: Option<Millis>,
    pub customer: CustomerMatch,
    pub subject: Option<String>,
    pub params: Value,
    pub external_id: Option<String>,
    /// Whether routing offers it (else it waits for a pickup or an outcome).
    pub routed: bool,
    /// The task's own priority; `priority` is its service's plus this.
    pub task_priority: i32,
    /// When it last entered its queue (arrival, a RONA, a decline, a transfer).
    pub queued_at: Option<Millis>,
    /// How many of its offers timed out in its current service.
    pub ronas: i64,
    /// When the customer left while an agent was connected.
    pub customer_left_at: Option<Millis>,
    /// The customer's details beyond name and address (live context).
    pub details: CustomerDetails,
    pub language: Option<String>,
    /// The service address or number the customer reached.
    pub reached: Option<String>,
    /// When the task ended and its live context was removed.
    pub context_cleared_at: Option<Millis>,
}

/// A task to create.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub service_id: String,
    pub modality: Modality,
    /// The task's own priority, added to its service's.
    pub priority: i32,
    /// Offer it to agents (else it waits for a pickup or an outcome).
    pub routed: bool,
    pub arrived_at: Millis,
    pub customer_address: Option<String>,
    pub customer_name: Option<String>,
    pub subject: Option<String>,
    pub params: Value,
    /// The id the posting component knows the task by; makes creation idempotent.
    pub external_id: Option<String>,
}

/// What a task gets at creation besides a [`NewTask`]: the customer's
/// checked identity, the language and the address or number reached.
#[derive(Debug, Clone, Default)]
pub struct TaskExtras {
    /// When given, used instead of `NewTask`'s address and name.
    pub identity: Option<NormalIdentity>,
    pub language: Option<String>,
    pub reached: Option<String>,
}

/// A user session: one agent's involvement in one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: String,
    pub task_id: String,
    pub agent_id: String,
    pub service_id: String,
    pub modality: Modality,
    pub state: SessionState,
    pub result: Option<SessionResult>,
    pub created_at: Millis,
    pub answered_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    pub saved_at: Option<Millis>,
    pub subject: Option<String>,
    pub customer_name: Option<String>,
    pub customer_address: Option<String>,
    pub wrapup: WrapUp,
    /// An offer's deadline (RONA when unanswered by then).
    pub expires_at: Option<Millis>,
    /// Why it ended without the agent: `timeout`, `taken`, `presence`,
    /// `cancelled`, `declined`, `transfer`.
    pub end_reason: Option<String>,
}

impl Session {
    /// Why its codes and tags cannot be set, if they cannot: it is an offer
    /// not yet accepted (a decline or RONA would leave them on a record
    /// nobody handled), it is saved, or it ended without a wrap-up.
    pub fn wrapup_closed(&self) -> Option<String> {
        let id = &self.id;
        if self.state == crate::domain::SessionState::Offered {
            return Some(format!(
                "session '{id}' is an offer not yet accepted: codes and tags are set once it is accepted"
            ));
        }
        if self.state.is_live() {
            return None;
        }
        Some(if self.saved_at.is_some() {
            format!("session '{id}' is saved: a saved session is final")
        } else {
            format!(
                "session '{id}' is over without a wrap-up ({}): there are no codes or tags to set",
                self.result.map_or("ended", |r| r.as_str())
            )
        })
    }
}

/// Filters of My Sessions.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// `Some(true)`: live only; `Some(false)`: concluded only.
    pub live: Option<bool>,
    pub modality: Option<Modality>,
    /// Case-insensitive substring of customer, subject or tags.
    pub query: Option<String>,
    /// The query as the digits of a phone number, where it is written like
    /// one ([`crate::domain::phone::phone_search_form`]): a session matching
    /// either is found.
    pub phone: Option<String>,
    pub after: Option<crate::domain::cursor::Cursor>,
    pub limit: u32,
}

/// Filters of the admins' task list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub service: Option<String>,
    /// Only tasks of these services (a supervisor's); `None`: every service.
    pub services: Option<Vec<String>>,
    pub state: Option<TaskState>,
    pub modality: Option<Modality>,
    pub after: Option<crate::domain::cursor::Cursor>,
    pub limit: u32,
}

/// Where a transfer sends a task: another service's queue, a named agent,
/// or a named agent in another service.
#[derive(Debug, Clone, Default)]
pub struct TransferTo {
    pub service: Option<String>,
    pub agent: Option<String>,
}

/// What another component reports about an agent's part in a task (e.g. telephony).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub agent_id: String,
    pub result: SessionResult,
    /// The interaction is over (the call ended): the task goes to wrap-up.
    pub ended: bool,
}

/// Counts for the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// (service, state, count) of tasks not yet final.
    pub tasks: Vec<(String, String, i64)>,
    /// (result, count) of sessions.
    pub sessions: Vec<(String, i64)>,
}
