//! `GET /api/v1/me/events`: the calling agent's events as Server-Sent Events.
//!
//! Every event carries its number as the SSE `id`, so a client that
//! reconnects with `Last-Event-ID` (browsers' `EventSource` does this by
//! itself) or `?after=` gets what it missed, as long as it is retained
//! (7 days). Without either, the stream starts with the next event.
use super::AppState;
use super::auth::{Caller, authenticate};
use super::error::{ApiError, ApiResult};
use super::extract::Params;
use crate::domain::event::parse_event_id;
use crate::http::doc;
use crate::store::events::{self, EVERYONE, stopped};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use utoipa::IntoParams;

/// How often a stream looks for events even without a doorbell (a missed
/// notification costs at most this), and re-checks the caller's token.
const SAFETY_POLL: Duration = Duration::from_secs(15);
/// Events read per query.
const PAGE: u32 = 200;
/// Streams one agent may hold open at once (tabs, devices); more is refused
/// so one token cannot tie up the server.
pub const MAX_STREAMS_PER_AGENT: usize = 8;

/// How many streams each agent has open.
#[derive(Debug, Default)]
pub struct OpenStreams {
    by_agent: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One open stream; counted until dropped (when its feed ends).
struct StreamSlot {
    streams: Arc<OpenStreams>,
    agent: String,
}

impl OpenStreams {
    fn open(self: &Arc<Self>, agent: &str) -> Option<StreamSlot> {
        let mut by_agent = self.by_agent.lock().unwrap_or_else(|e| e.into_inner());
        let n = by_agent.entry(agent.to_owned()).or_insert(0);
        if *n >= MAX_STREAMS_PER_AGENT {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            streams: Arc::clone(self),
            agent: agent.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut by_agent = self
            .streams
            .by_agent
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_agent.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_agent.remove(&self.agent);
            }
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event number (0 replays everything retained); the header wins when
    /// both are given.
    #[param(value_type = Option<u64>, minimum = 0)]
    after: Option<String>,
}

/// Opens the stream.
#[utoipa::path(
    get,
    path = "/me/events",
    operation_id = "myEvents",
    tag = "sessions",
    summary = "My events (Server-Sent Events)",
    description = "A `text/event-stream` of the caller's events, each with a per-agent number as its SSE `id`: `message` (a new inbound message joined a task the caller holds: `task_id`, `message_id`, `disposition`, `kind`, `from`, `from_name`, `subject`, `received_at`), `task` (a held task changed state: `task_id`, `state`, `reason` = handled, transferred or outcome), `draft` (one of the caller's drafts changed: `draft_id`, `task_id`, `state` and `reason` = `created`, `discarded`, `queued`, `taken_back`, `sent` (with `message_id` and `smtp_response`) or `failed` (with `error`); edits of its text are not announced), `offer` and `offer_withdrawn` (offers to the caller), `presence` (the caller's presence changed), `chat_message` (a new line in the chat of an IM task the caller holds: `task_id`, `chat_id`, `message_id`, `from`, `sender_name`, `text`, `sent_at`), `transcript` (new lines in the transcript of a call task the caller holds: `task_id`, `added`, `spoken_at` of the latest; read them with GET /api/v1/tasks/{id}/messages). Every `data:` is a JSON object with a `type` field. Without `Last-Event-ID` or `after` the stream starts with the next event; with either it first replays the retained events (7 days) numbered above it. Comments are sent as keep-alives every 20 s. The stream ends when the server stops or the token is revoked (an `error` event is sent first). Unknown query parameters are refused (400).",
    params(
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event number (what EventSource sends when it reconnects)."),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "The event stream.", body = String, content_type = "text/event-stream"),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 429, description = "The agent already has 8 event streams open (`too_many_streams`).", body = doc::ErrorBody),
    ),
)]
pub async fn stream(
    State(state): State<AppState>,
    Caller(agent): Caller,
    headers: HeaderMap,
    Params(query): Params<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().ok().and_then(parse_event_id).ok_or_else(|| {
            ApiError::bad_request("Last-Event-ID must be an event number (0 or more)")
        })?),
        None => match query.after.as_deref() {
            Some(a) => Some(parse_event_id(a).ok_or_else(|| {
                ApiError::bad_request("after must be an event number (0 or more)")
            })?),
            None => None,
        },
    };
    let slot = state.event_streams.open(&agent.id).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!(
                "this agent already has {MAX_STREAMS_PER_AGENT} event streams open: close one first"
            ),
        )
    })?;
    // Subscribe before reading, so nothing committed in between is missed.
    let bell = events::doorbell().subscribe();
    // A number beyond the newest (another agent's, or a reset database)
    // would hide new events: start after the newest instead.
    let latest = state.store.latest_agent_event(&agent.id).await?;
    let after = resume.map_or(latest, |n| n.min(latest));
    // An open stream is the agent's client being there (presence).
    let grace = state.routing.grace_ms();
    state.store.touch_agent(&agent.id, grace).await?;
    let (tx, mut rx) = mpsc::channel(64);
    tracing::debug!(agent = %agent.id, after, "event stream opened");
    tokio::spawn(async move {
        let store = state.store.clone();
        let agent_id = agent.id.clone();
        feed(state, headers, agent.id, after, bell, tx).await;
        drop(slot);
        // The grace period counts from the moment the client went away.
        match store.touch_agent(&agent_id, grace).await {
            Ok(()) => {}
            // The server is stopping: the grace period counts from the last
            // time seen, which is as good.
            Err(crate::store::StoreError::Database(sqlx::Error::PoolClosed)) => {
                tracing::debug!(agent = %agent_id, "event stream ended while the server stops");
            }
            Err(e) => {
                tracing::warn!(agent = %agent_id, error = %e, "cannot record the end of an event stream");
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(20))))
}

/// Sends the agent's events after `after` into `tx` until the client goes
/// away, the server shuts down, or the caller's token stops being valid.
async fn feed(
    state: AppState,
    headers: HeaderMap,
    agent_id: String,
    mut after: i64,
    mut bell: broadcast::Receiver<Arc<str>>,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let mut shutdown = state.shutdown.clone();
    // A fixed beat, so a busy stream still re-checks the token; it also tells
    // routing the agent's client is there, well within the grace period.
    let grace = state.routing.grace_ms();
    let period = SAFETY_POLL.min(Duration::from_millis(
        u64::try_from(grace / 3).unwrap_or(1).max(100),
    ));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Send everything new, a page at a time.
        loop {
            let page = match state.store.agent_events_after(&agent_id, after, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(agent = %agent_id, error = %e, "cannot read agent events; retrying");
                    break;
                }
            };
            let full = page.len() == PAGE as usize;
            for e in page {
                after = e.seq;
                let event = Event::default()
                    .id(e.seq.to_string())
                    .event(e.kind)
                    .data(e.payload);
                // A client that stopped reading must not hold this task (or
                // the shutdown) forever.
                tokio::select! {
                    sent = tx.send(Ok(event)) => if sent.is_err() { return },
                    () = stopped(&mut shutdown) => return,
                }
            }
            if !full {
                break;
            }
        }
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            () = tx.closed() => return,
            () = rung_for(&mut bell, &agent_id) => {}
            _ = beat.tick() => {
                match authenticate(&state, &headers).await {
                    Ok(agent) if agent.id == agent_id => {
                        if let Err(e) = state.store.touch_agent(&agent_id, grace).await {
                            tracing::warn!(agent = %agent_id, error = %e, "cannot record presence");
                        }
                    }
                    // The database did not answer: try again at the next beat.
                    Err(e) if e.status != axum::http::StatusCode::UNAUTHORIZED => {}
                    _ => {
                        let gone = Event::default()
                            .event("error")
                            .data(r#"{"type":"error","error":"unauthorized","message":"the token is no longer valid"}"#);
                        let _ = tx.send(Ok(gone)).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Returns when the doorbell rings for `agent_id` (or everyone), or when
/// rings were missed (the stream then looks anyway).
async fn rung_for(bell: &mut broadcast::Receiver<Arc<str>>, agent_id: &str) {
    loop {
        match bell.recv().await {
            Ok(who) if &*who == agent_id || &*who == EVERYONE => return,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}
