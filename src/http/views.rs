//! JSON representations of records, as the API shows them.
use super::details::{ContextView, CustomerView, SystemParameters};
use crate::domain::customer::CustomerKind;
use crate::domain::millis_to_rfc3339;
use crate::domain::{
    Millis, Modality, Rfc3339Millis, SessionResult, SessionState, TaskState, WrapUp,
};
use crate::store::{Agent, Capacity, Session, Task};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Serialize, Serializer};
use serde_json::Value;
use utoipa::ToSchema;

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

/// The customer of a session, as the session knows them.
#[derive(Serialize, ToSchema)]
#[schema(as = SessionCustomer)]
pub struct CustomerFields<'a> {
    /// The address the customer reached us from.
    address: Option<&'a str>,
    name: Option<&'a str>,
}

/// A user session: one agent's involvement in one task; the rows of My
/// Sessions. The fields in the (alphabetical) order the API has always
/// written them.
#[derive(Serialize, ToSchema)]
#[schema(as = Session)]
pub struct SessionFields<'a> {
    agent_id: &'a str,
    #[schema(value_type = Option<String>, format = DateTime)]
    answered_at: Time,
    #[schema(value_type = String, format = DateTime)]
    created_at: Time,
    customer: CustomerFields<'a>,
    /// Why the session ended, where it says more than `result` (e.g.
    /// `cancelled`, `withdrawn`, `taken`, `customer_left`).
    end_reason: Option<&'a str>,
    #[schema(value_type = Option<String>, format = DateTime)]
    ended_at: Time,
    /// While offered: when the offer times out (the RONA deadline).
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Time,
    #[schema(example = "ses_0123456789abcdef01234567")]
    id: &'a str,
    /// Whether the session is not yet concluded.
    live: bool,
    modality: Modality,
    /// How it turned out; null while the offer is open.
    result: Option<SessionResult>,
    #[schema(value_type = Option<String>, format = DateTime)]
    saved_at: Time,
    /// The service id.
    service: &'a str,
    state: SessionState,
    subject: Option<&'a str>,
    #[schema(example = "tsk_0123456789abcdef01234567")]
    task_id: &'a str,
    wrapup: &'a WrapUp,
}

/// A My Sessions entry: serializes the record directly (no `Value` tree).
#[derive(Clone, Copy)]
pub struct SessionView<'a>(&'a Session);

// A session's schema is its fields'.
impl utoipa::PartialSchema for SessionView<'_> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        SessionFields::schema()
    }
}

impl ToSchema for SessionView<'_> {
    fn name() -> std::borrow::Cow<'static, str> {
        SessionFields::name()
    }
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        SessionFields::schemas(schemas);
    }
}

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

/// One session as a response (written by [`super::session_json`]).
pub fn session_response(s: &Session) -> Response {
    let mut body = Vec::with_capacity(SESSION_JSON_BYTES);
    super::session_json::session(&mut body, s, &mut crate::domain::DayMemo::default());
    json_body(body)
}

/// JSON text already written, as a response.
fn json_body(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A page of My Sessions.
#[derive(Serialize, ToSchema)]
#[schema(as = SessionPage)]
pub struct SessionPage<'a> {
    #[schema(value_type = Vec<SessionView>)]
    items: SessionItems<'a>,
    /// The `cursor` of the next page; null on the last one.
    next_cursor: Option<&'a str>,
}

struct SessionItems<'a>(&'a [Session]);

impl Serialize for SessionItems<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(SessionView))
    }
}

/// What serde writes for a page: the text [`super::session_json`] must
/// match byte for byte.
#[cfg(test)]
pub(super) fn sessions_page_by_serde(items: &[Session], next_cursor: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&SessionPage {
        items: SessionItems(items),
        next_cursor,
    })
    .unwrap_or_default()
}

/// A page of sessions: `{"items": [...], "next_cursor": ...}` (the text of
/// [`SessionPage`], written by [`super::session_json`]).
pub fn sessions_page(items: &[Session], next_cursor: Option<&str>) -> Response {
    let mut body = Vec::with_capacity(64 + items.len() * SESSION_JSON_BYTES);
    super::session_json::page(&mut body, items, next_cursor);
    json_body(body)
}

/// The task's customer as lists show it, resolved at arrival: the internal
/// directory first, then the external address book, else anonymous.
#[derive(Serialize, ToSchema)]
#[schema(as = Customer)]
pub struct CustomerBrief<'a> {
    /// Email address, phone number or chat id the customer reached us from.
    address: Option<&'a str>,
    /// Name, else address, else "Anonymous".
    display: &'a str,
    kind: CustomerKind,
    name: Option<&'a str>,
    /// The directory user or contact id that matched.
    #[serde(rename = "ref")]
    reference: Option<&'a str>,
}

/// One customer contact handled by one service. The fields in the
/// (alphabetical) order the API has always written them.
#[derive(Serialize, ToSchema)]
#[schema(as = Task)]
pub struct TaskView<'a> {
    #[schema(format = DateTime)]
    arrived_at: String,
    customer: CustomerBrief<'a>,
    /// When the customer left while an agent was connected.
    #[schema(format = DateTime)]
    customer_left_at: Option<String>,
    #[schema(format = DateTime)]
    ended_at: Option<String>,
    /// The id the posting component gave it (idempotency key of `POST /api/v1/tasks`).
    external_id: Option<&'a str>,
    #[schema(example = "tsk_0123456789abcdef01234567")]
    id: &'a str,
    modality: Modality,
    /// Custom parameters set by integrations.
    #[schema(value_type = Object)]
    parameters: &'a Value,
    /// The service's priority plus the task's own, -100 to 100.
    #[schema(minimum = -100, maximum = 100)]
    priority: i32,
    /// How many of its offers timed out in its current service.
    ronas: i64,
    /// Whether routing offers it (else it waits for a pickup or an outcome).
    routed: bool,
    service: &'a str,
    /// Only where said (create, outcome): admins see every session, agents
    /// only their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<Vec<SessionView<'a>>>,
    state: TaskState,
    subject: Option<&'a str>,
    #[schema(format = DateTime)]
    updated_at: String,
}

/// What an integration that may change tasks but not read them (`tasks:write`
/// without `tasks:read`) is told of a task it changed: which task, and its
/// state; nothing of the customer, the parameters or the sessions.
#[derive(Serialize, ToSchema)]
pub struct TaskReceipt<'a> {
    /// The id the posting component gave it.
    external_id: Option<&'a str>,
    #[schema(example = "tsk_0123456789abcdef01234567")]
    id: &'a str,
    modality: Modality,
    service: &'a str,
    state: TaskState,
    #[schema(format = DateTime)]
    updated_at: String,
}

/// See [`TaskReceipt`].
pub fn receipt(t: &Task) -> TaskReceipt<'_> {
    TaskReceipt {
        external_id: t.external_id.as_deref(),
        id: &t.id,
        modality: t.modality,
        service: &t.service_id,
        state: t.state,
        updated_at: millis_to_rfc3339(t.updated_at),
    }
}

/// The answer to a change of a task (create, outcome, cancel): the task, or
/// a `TaskReceipt` for a caller that may not read it.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TaskAnswer<'a> {
    Task(TaskView<'a>),
    Receipt(TaskReceipt<'a>),
}

/// The answer to "Update task": the task with its details, or a
/// `TaskReceipt` for a caller that may not read it.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TaskDetailsAnswer<'a> {
    Details(Box<TaskDetails<'a>>),
    Receipt(TaskReceipt<'a>),
}

/// A task; `sessions` are included where given.
pub fn task<'a>(t: &'a Task, sessions: Option<&'a [Session]>) -> TaskView<'a> {
    let display = t
        .customer
        .name
        .as_deref()
        .or(t.customer.address.as_deref())
        .unwrap_or("Anonymous");
    TaskView {
        arrived_at: millis_to_rfc3339(t.arrived_at),
        customer: CustomerBrief {
            address: t.customer.address.as_deref(),
            display,
            kind: t.customer.kind,
            name: t.customer.name.as_deref(),
            reference: t.customer.reference.as_deref(),
        },
        customer_left_at: t.customer_left_at.map(millis_to_rfc3339),
        ended_at: t.ended_at.map(millis_to_rfc3339),
        external_id: t.external_id.as_deref(),
        id: &t.id,
        modality: t.modality,
        parameters: &t.params,
        priority: t.priority,
        ronas: t.ronas,
        routed: t.routed,
        service: &t.service_id,
        sessions: sessions.map(|s| s.iter().map(SessionView).collect()),
        state: t.state,
        subject: t.subject.as_deref(),
        updated_at: millis_to_rfc3339(t.updated_at),
    }
}

/// A task with its session details, as `GET /api/v1/tasks/{id}` and
/// "Update task" show it: the customer with the known details, the system
/// parameters, the details (`context`) and each session with its own. The
/// fields in alphabetical order, as the API has always written them.
#[derive(Serialize, ToSchema)]
#[schema(as = TaskDetails)]
pub struct TaskDetails<'a> {
    #[schema(format = DateTime)]
    arrived_at: String,
    /// IM tasks only: their chat (null when the task has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<Option<super::chat::TaskChat>>,
    /// The task's details: live while the task is, else "not available".
    context: ContextView,
    customer: CustomerView,
    /// When the customer left while an agent was connected.
    #[schema(format = DateTime)]
    customer_left_at: Option<String>,
    #[schema(format = DateTime)]
    ended_at: Option<String>,
    /// The id the posting component gave it (idempotency key of `POST /api/v1/tasks`).
    external_id: Option<&'a str>,
    #[schema(example = "tsk_0123456789abcdef01234567")]
    id: &'a str,
    /// With `preview_url`: when its link token (and the tokens of the links
    /// inside the preview) expire; fetch the task again for a fresh one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub links_expire_at: Option<String>,
    /// How many messages the task has (its mail, an IM task's transcript, a
    /// call's transcript) and when.
    messages: MessagesSummary,
    modality: Modality,
    /// Custom parameters set by integrations.
    #[schema(value_type = Object)]
    parameters: &'a Value,
    /// Email tasks, for the task's holders (present and past) and admins:
    /// the task's preview (GET /api/v1/tasks/{id}/preview) with a link
    /// token, so a browser can open it in a frame without a bearer header.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(
        example = "/api/v1/tasks/tsk_0123456789abcdef01234567/preview?token=1718000000.3f2a9c"
    )]
    pub preview_url: Option<String>,
    /// The service's priority plus the task's own, -100 to 100.
    #[schema(minimum = -100, maximum = 100)]
    priority: i32,
    /// How many of its offers timed out in its current service.
    ronas: i64,
    /// Whether routing offers it (else it waits for a pickup or an outcome).
    routed: bool,
    service: &'a str,
    /// Admins see every session, agents only their own.
    sessions: Vec<SessionDetails<'a>>,
    state: TaskState,
    subject: Option<&'a str>,
    system_parameters: SystemParameters,
    #[schema(format = DateTime)]
    updated_at: String,
}

/// The messages summary of a task's details.
#[derive(Serialize, ToSchema)]
pub struct MessagesSummary {
    /// All of them; `url` lists them.
    count: i64,
    /// From the customer: mail received, the customer's chat lines.
    inbound: i64,
    /// To the customer: replies sent, agents' and bots' chat lines.
    outbound: i64,
    #[schema(format = DateTime)]
    first_at: Option<String>,
    #[schema(format = DateTime)]
    last_at: Option<String>,
    /// `inbound` or `outbound`: who wrote last (an inbound last message
    /// usually waits for an answer).
    #[schema(example = "inbound")]
    last_direction: Option<String>,
    /// `GET /api/v1/tasks/{id}/messages`.
    #[schema(example = "/api/v1/tasks/tsk_0123456789abcdef01234567/messages")]
    url: String,
}

impl MessagesSummary {
    pub fn new(task_id: &str, c: crate::store::MessageCounts) -> MessagesSummary {
        MessagesSummary {
            count: c.total,
            inbound: c.inbound,
            outbound: c.outbound,
            first_at: c.first_at.map(millis_to_rfc3339),
            last_at: c.last_at.map(millis_to_rfc3339),
            last_direction: c.last_direction,
            url: format!("/api/v1/tasks/{task_id}/messages"),
        }
    }
}

/// A session of a task, with its own details.
#[derive(Serialize, ToSchema)]
pub struct SessionDetails<'a> {
    #[serde(flatten)]
    session: SessionView<'a>,
    /// This session's details: live while its part is, else what its
    /// service kept, else "not available".
    context: ContextView,
}

/// No custom parameters (for a caller who may not see the task's own).
static NO_PARAMETERS: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| Value::Object(serde_json::Map::new()));

impl<'a> TaskDetails<'a> {
    /// For an agent whose part in a live task is over (it went on to
    /// another agent or service, they declined it, or missed it): the
    /// task's details as their own latest session shows them (what its
    /// service kept, else "not available"), not what the task holds now
    /// for whoever has it, and no custom parameters. (A task that has ended
    /// shows "not available" for the whole task already.)
    ///
    /// `part_service_name` is the name of the service of the caller's latest
    /// session (where their part was), for the system fields when that part
    /// kept nothing.
    pub fn as_past_holder(&mut self, part_service_name: Option<String>) {
        self.parameters = &NO_PARAMETERS;
        let Some(last) = self.sessions.last() else {
            return;
        };
        let part: &'a Session = last.session.0;
        // Where their part was and what it was about, not where the task
        // went (or ended) since nor what was learnt after.
        let ended = self.state.is_final();
        self.customer = last.context.customer.clone();
        self.service = &part.service_id;
        self.subject = part.subject.as_deref();
        // A live task shows their part's context; the system fields as
        // their part knew them where kept.
        let kept = if ended {
            None
        } else {
            self.context = last.context.clone();
            self.context.parameters.as_ref().map(|p| p.system.clone())
        };
        if let Some(system) = kept {
            self.system_parameters = system;
            return;
        }
        let system = &mut self.system_parameters;
        if system.service != part.service_id {
            system.service = part.service_id.clone();
            system.service_name = part_service_name;
        }
        if !ended {
            // Not what was learnt since (the language).
            system.subject = part.subject.clone();
            system.language = None;
        }
    }
}

/// A task's details view from its parts.
pub fn task_details<'a>(
    t: &'a Task,
    customer: CustomerView,
    context: ContextView,
    system_parameters: SystemParameters,
    sessions: impl IntoIterator<Item = (&'a Session, ContextView)>,
    messages: crate::store::MessageCounts,
) -> TaskDetails<'a> {
    TaskDetails {
        arrived_at: millis_to_rfc3339(t.arrived_at),
        chat: None,
        context,
        customer,
        customer_left_at: t.customer_left_at.map(millis_to_rfc3339),
        ended_at: t.ended_at.map(millis_to_rfc3339),
        external_id: t.external_id.as_deref(),
        id: &t.id,
        links_expire_at: None,
        messages: MessagesSummary::new(&t.id, messages),
        modality: t.modality,
        parameters: &t.params,
        preview_url: None,
        priority: t.priority,
        ronas: t.ronas,
        routed: t.routed,
        service: &t.service_id,
        sessions: sessions
            .into_iter()
            .map(|(s, context)| SessionDetails {
                session: SessionView(s),
                context,
            })
            .collect(),
        state: t.state,
        subject: t.subject.as_deref(),
        system_parameters,
        updated_at: millis_to_rfc3339(t.updated_at),
    }
}

/// An agent as the admin API shows it.
#[derive(Serialize, ToSchema)]
#[schema(as = Agent)]
pub struct AgentView<'a> {
    admin: bool,
    /// Reads the work of their services (tasks, queues, agents).
    supervisor: bool,
    capacity: Capacity,
    email: &'a str,
    id: &'a str,
    name: &'a str,
    /// The agent's presence status as set (`available`, `busy`, `away`, `offline`).
    presence: &'a str,
    /// The services they serve.
    services: &'a [String],
}

pub fn agent(a: &Agent) -> AgentView<'_> {
    AgentView {
        admin: a.admin,
        supervisor: a.supervisor,
        capacity: a.capacity,
        email: &a.email,
        id: &a.id,
        name: &a.name,
        presence: &a.presence,
        services: &a.services,
    }
}
