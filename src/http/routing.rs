//! Routing at the edge: presence, offers and their answers, and the
//! admins' view of agents and queues.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id};
use super::views;
use crate::domain::routing::{Answer, slot};
use crate::domain::{Modality, Presence, millis_to_rfc3339, now_millis};
use crate::http::doc;
use crate::store::{AgentStatus, PresenceView, QueueStatus};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An agent's presence.
#[derive(Serialize, ToSchema)]
#[schema(as = AgentPresence)]
pub struct PresenceOut {
    /// What routing acts on: `offline` when their client has gone away.
    effective: Presence,
    /// When their client was last heard from.
    #[schema(format = DateTime)]
    last_seen_at: Option<String>,
    /// After a RONA: no offers until then (or until they set available again).
    #[schema(format = DateTime)]
    paused_until: Option<String>,
    /// Since when the status is set.
    #[schema(format = DateTime)]
    since: Option<String>,
    /// What the agent set; only `available` agents get offers.
    status: Presence,
}

fn presence_view(p: &PresenceView) -> PresenceOut {
    PresenceOut {
        effective: p.effective,
        last_seen_at: p.last_seen_at.map(millis_to_rfc3339),
        paused_until: p.paused_until.map(millis_to_rfc3339),
        since: p.since.map(millis_to_rfc3339),
        status: p.status,
    }
}

/// `GET /api/v1/me/presence`. Counts as the client being there.
#[utoipa::path(
    get,
    path = "/me/presence",
    operation_id = "getMyPresence",
    tag = "routing",
    summary = "The caller's presence",
    description = "The caller's presence as set (`available`, `busy`, `away`, `offline`), as routing sees it (an agent without an open event stream or presence call for `routing.presence_grace_secs` counts as offline), and a pause after a RONA.",
    responses(
        (status = 200, description = "The presence.", body = crate::http::routing::PresenceOut),
        (status = 401, response = doc::Unauthorized),
    ),
)]
pub async fn get_presence(
    State(state): State<AppState>,
    Caller(agent): Caller,
) -> ApiResult<Json<PresenceOut>> {
    let grace = state.routing.grace_ms();
    state.store.touch_agent(&agent.id, grace).await?;
    Ok(Json(presence_view(
        &state.store.presence(&agent.id, grace).await?,
    )))
}

/// The presence to set.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceInput {
    /// `available`, `busy`, `away` or `offline`.
    #[schema(value_type = Presence)]
    status: String,
}

/// `PUT /api/v1/me/presence` `{"status": "available" | "busy" | "away" | "offline"}`.
/// Anything but `available` withdraws pending offers at once; `available`
/// also ends a pause after a RONA.
#[utoipa::path(
    put,
    path = "/me/presence",
    operation_id = "setMyPresence",
    tag = "routing",
    summary = "Set the caller's presence",
    description = "Only `available` agents receive offers. Going offline returns pending offers to the queue at once. An unknown status is 422, naming the field and the allowed values.",
    request_body(content = crate::http::routing::PresenceInput, description = "The new status."),
    responses(
        (status = 200, description = "The presence now.", body = crate::http::routing::PresenceOut),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn put_presence(
    State(state): State<AppState>,
    Caller(agent): Caller,
    Body(input): Body<PresenceInput>,
) -> ApiResult<Json<PresenceOut>> {
    let status = Presence::parse(&input.status).map_err(|_| {
        ApiError::invalid(format!(
            "status: '{}' is not one of available, busy, away, offline",
            crate::domain::clip(&input.status, 40)
        ))
    })?;
    let (view, withdrawn) = state
        .store
        .set_presence(&agent.id, status, state.routing.grace_ms())
        .await?;
    state.metrics.offer_result("withdrawn", withdrawn);
    tracing::info!(agent = %agent.id, status = status.as_str(), "presence set");
    Ok(Json(presence_view(&view)))
}

/// `GET /api/v1/me/offers`: the caller's pending offers, soonest deadline first.
#[utoipa::path(
    get,
    path = "/me/offers",
    operation_id = "getMyOffers",
    tag = "routing",
    summary = "The caller's pending offers",
    description = "Each a user session in state `offered`, with `expires_at` (the RONA deadline).",
    responses(
        (status = 200, description = "The offers.", body = crate::http::routing::OfferList),
        (status = 401, response = doc::Unauthorized),
    ),
)]
pub async fn my_offers(
    State(state): State<AppState>,
    Caller(agent): Caller,
) -> ApiResult<axum::response::Response> {
    let offers = state.store.my_offers(&agent.id).await?;
    let items = offers
        .iter()
        .map(|(session, task)| Offer {
            session: views::session(session),
            task: views::task(task, None),
        })
        .collect();
    Ok(Json(OfferList { items }).into_response())
}

/// The caller's pending offers.
#[derive(Serialize, ToSchema)]
pub struct OfferList<'a> {
    /// Soonest deadline first.
    items: Vec<Offer<'a>>,
}

/// An offer: a user session in state `offered`, with `expires_at` (the RONA
/// deadline), and its task.
#[derive(Serialize, ToSchema)]
pub struct Offer<'a> {
    #[serde(flatten)]
    session: views::SessionView<'a>,
    task: views::TaskView<'a>,
}

async fn answer(
    state: &AppState,
    agent: &crate::store::Agent,
    id: &str,
    answer: Answer,
) -> ApiResult<axum::response::Response> {
    let result = state.store.answer_offer(id, agent, answer).await;
    if let Err(crate::store::StoreError::ExpiredOnAnswer(_)) = &result {
        // Answered too late: the RONA fired on the way (once: a later
        // answer to the same offer is refused without firing it again).
        state.metrics.offer_result("rona", 1);
    }
    let answered = result?;
    if let Some(ms) = answered.answered_after_ms {
        match answer {
            Answer::Accept => {
                state.metrics.offer_result("accepted", 1);
                state.metrics.offer_result("withdrawn", answered.withdrawn);
                state
                    .metrics
                    .time_to_accept
                    .observe(ms.max(0) as f64 / 1000.0);
                tracing::info!(session = %id, agent = %agent.id, "offer accepted");
            }
            Answer::Decline => {
                state.metrics.offer_result("declined", 1);
                tracing::info!(session = %id, agent = %agent.id, "offer declined");
            }
        }
    }
    Ok(views::session_response(&answered.session))
}

/// `POST /api/v1/offers/{session_id}/accept`.
#[utoipa::path(
    post,
    path = "/offers/{id}/accept",
    operation_id = "acceptOffer",
    tag = "routing",
    summary = "Accept an offer",
    description = "The session becomes connected; the other offers of a broadcast are withdrawn. 409 with the reason when the offer expired (RONA), was withdrawn or was taken by another agent. No body.",
    params(
        ("id" = String, Path, description = "The offered session id."),
    ),
    responses(
        (status = 200, description = "The connected session.", body = crate::http::views::SessionFields),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn accept(
    State(state): State<AppState>,
    Caller(agent): Caller,
    Id(id): Id<String>,
) -> ApiResult<axum::response::Response> {
    answer(&state, &agent, &id, Answer::Accept).await
}

/// `POST /api/v1/offers/{session_id}/decline`.
#[utoipa::path(
    post,
    path = "/offers/{id}/decline",
    operation_id = "declineOffer",
    tag = "routing",
    summary = "Decline an offer",
    description = "The session concludes as declined and the task returns to its queue; it is not offered to this agent again while others are available. 409 when the offer is already over. No body.",
    params(
        ("id" = String, Path, description = "The offered session id."),
    ),
    responses(
        (status = 200, description = "The declined session.", body = crate::http::views::SessionFields),
        (status = 401, response = doc::Unauthorized),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn decline(
    State(state): State<AppState>,
    Caller(agent): Caller,
    Id(id): Id<String>,
) -> ApiResult<axum::response::Response> {
    answer(&state, &agent, &id, Answer::Decline).await
}

/// One value per modality.
#[derive(Serialize, ToSchema)]
pub struct PerModality<T> {
    call: T,
    email: T,
    im: T,
}

impl<T> PerModality<T> {
    fn new(f: impl Fn(usize) -> T) -> Self {
        PerModality {
            call: f(slot(Modality::Call)),
            email: f(slot(Modality::Email)),
            im: f(slot(Modality::Im)),
        }
    }
}

/// Offered and connected tasks of one modality, against the capacity.
#[derive(Serialize, ToSchema)]
pub struct LoadView {
    capacity: u32,
    connected: i64,
    offered: i64,
}

/// An agent's presence, load and idle time.
#[derive(Serialize, ToSchema)]
#[schema(as = AgentStatus)]
pub struct AgentStatusView<'a> {
    id: &'a str,
    /// Per modality, seconds since their last task of it (or since they
    /// became available); null while they may not be offered work.
    #[schema(value_type = PerModality<Option<i64>>)]
    idle_secs: PerModality<Option<i64>>,
    #[schema(value_type = PerModality<LoadView>)]
    load: PerModality<LoadView>,
    name: &'a str,
    presence: PresenceOut,
    /// Whether routing may offer them work now.
    routable: bool,
    services: &'a [String],
}

fn agent_view(a: &AgentStatus, now: i64) -> AgentStatusView<'_> {
    AgentStatusView {
        id: &a.id,
        idle_secs: PerModality::new(|s| match a.idle_since[s] {
            Some(t) if a.routable => Some((now - t).max(0) / 1000),
            _ => None,
        }),
        load: PerModality::new(|s| {
            let l = a.load[s];
            LoadView {
                capacity: l.capacity,
                connected: l.connected,
                offered: l.offered,
            }
        }),
        name: &a.name,
        presence: presence_view(&a.presence),
        routable: a.routable,
        services: &a.services,
    }
}

/// Every agent's presence, load and idle time.
#[derive(Serialize, ToSchema)]
pub struct AgentList<'a> {
    items: Vec<AgentStatusView<'a>>,
    /// How long an agent's client may be silent before they count as offline.
    presence_grace_secs: u64,
}

/// `GET /api/v1/agents` (admins): every agent's presence, load and idle time.
#[utoipa::path(
    get,
    path = "/agents",
    operation_id = "listAgents",
    tag = "routing",
    summary = "Every agent's presence, load and idle time",
    description = "Admins (every agent) and supervisors (the agents of the services they supervise): presence as set and as routing sees it, load per modality against capacity, idle time per modality. Other agents get 403.",
    responses(
        (status = 200, description = "The agents.", body = crate::http::routing::AgentList),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
    ),
)]
pub async fn agents(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::response::Response> {
    caller.require_overseer()?;
    let now = now_millis();
    let list = state
        .store
        .agents_overview(state.routing.grace_ms())
        .await?;
    Ok(Json(AgentList {
        items: list
            .iter()
            .filter(|a| a.services.iter().any(|s| caller.0.oversees(s)) || caller.0.admin)
            .map(|a| agent_view(a, now))
            .collect(),
        presence_grace_secs: state.routing.presence_grace_secs,
    })
    .into_response())
}

/// A queue (a service and a modality): its depth, oldest waiting task and
/// the agents who can serve it.
#[derive(Serialize, ToSchema)]
#[schema(as = Queue)]
pub struct QueueView<'a> {
    /// Members who may be offered a task of this modality now.
    agents_available: i64,
    /// Members online but without room (or set busy, or paused after a RONA).
    agents_busy: i64,
    /// Tasks connected to an agent.
    connected: i64,
    /// `longest_idle`, `broadcast` or `pickup`.
    distribution: &'static str,
    modality: Modality,
    /// Tasks offered to agents, not yet answered.
    offered: i64,
    /// When the longest-waiting task entered the queue.
    #[schema(format = DateTime)]
    oldest_queued_at: Option<String>,
    /// How long it has waited, seconds.
    oldest_waiting_secs: Option<i64>,
    /// Tasks waiting.
    queued: i64,
    service: &'a str,
}

pub(crate) fn queue_view(q: &QueueStatus, now: i64) -> QueueView<'_> {
    QueueView {
        agents_available: q.agents_available,
        agents_busy: q.agents_busy,
        connected: q.connected,
        distribution: q.distribution.as_str(),
        modality: q.modality,
        offered: q.offered,
        oldest_queued_at: q.oldest_queued_at.map(millis_to_rfc3339),
        oldest_waiting_secs: q.oldest_queued_at.map(|t| (now - t).max(0) / 1000),
        queued: q.queued,
        service: &q.service_id,
    }
}

/// Every queue.
#[derive(Serialize, ToSchema)]
pub struct QueueList<'a> {
    items: Vec<QueueView<'a>>,
}

/// `GET /api/v1/ops/queues` (admins): every queue (service and modality)
/// with its depth, oldest waiting task and the agents who can serve it.
#[utoipa::path(
    get,
    path = "/ops/queues",
    operation_id = "listQueues",
    tag = "routing",
    summary = "Queues per service and modality",
    description = "Admins (every queue) and supervisors (the queues of their services): depth, oldest waiting, offered, agents available and busy. Other agents get 403.",
    responses(
        (status = 200, description = "The queues.", body = crate::http::routing::QueueList),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
    ),
)]
pub async fn queues(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::response::Response> {
    caller.require_overseer()?;
    let now = now_millis();
    let list = state.store.queue_overview(state.routing.grace_ms()).await?;
    Ok(Json(QueueList {
        items: list
            .iter()
            .filter(|q| caller.0.oversees(&q.service_id))
            .map(|q| queue_view(q, now))
            .collect(),
    })
    .into_response())
}
