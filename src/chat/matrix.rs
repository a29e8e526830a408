//! A Matrix channel's owner loop: pulls the bot's rooms with `/sync` and
//! commits what each answer produced together with its `next_batch` token
//! (so a crash re-reads and never loses or doubles an event), and keeps every
//! room's agent membership in line with its task's holder (the handoff).
//!
//! Translation: a customer inviting the bot (the bot joins; its join in the
//! timeline starts the chat, the inviter is the customer), a message from
//! anyone but the bot and the service's agents (the customer), an agent's or
//! the bot's message (transcript), a member leaving (`customer_left` naming
//! them: the store counts it only when they are the chat's customer), the
//! bot removed (`ended`).
//!
//! Handoff: the room's wanted agent follows from state
//! ([`crate::store::Store::membership_changes`]), looked at after every
//! accept or transfer (the routing doorbell, which PostgreSQL's NOTIFY rings
//! in every worker) and every `membership_sweep_ms`; invites and kicks check
//! the room's membership first, so repeating them is harmless.
use super::Channel;
use crate::adapters::matrix::{MatrixClient, MatrixError, RoomEvent, SyncResponse, sync_filter};
use crate::config::ChatConfig;
use crate::domain::chat::{ChatEvent, ChatEventKind, CustomerIdentity, Sender};
use crate::ingest::backoff::Backoff;
use crate::store::chats::{ChatBatch, ChatInput};
use crate::store::ownership::Fence;
use crate::store::{Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Events per room and sync before back-pagination is needed.
const TIMELINE_LIMIT: u32 = 100;
/// Most events read back from a newly joined room's history.
const MAX_BACKFILL: usize = 5000;

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Matrix(#[from] MatrixError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Syncs one owned Matrix channel until `stop` (shutdown or ownership lost)
/// or until its fence fails (another worker took it over).
pub async fn run(
    store: Store,
    channel: Channel,
    settings: Arc<ChatConfig>,
    worker: String,
    metrics: Arc<crate::metrics::Metrics>,
    fence: Fence,
    stop: watch::Receiver<bool>,
) {
    let id = channel.spec.id.clone();
    let c = &channel.config;
    let client = match MatrixClient::new(
        c.homeserver_url.as_deref().unwrap_or_default(),
        c.user_id.as_deref().unwrap_or_default(),
        c.resolved_access_token
            .clone()
            .unwrap_or_else(|| crate::config::Secret::new("")),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(channel = %id, error = %e, "cannot build the Matrix client");
            let _ = store.record_chat_channel_error(&id, &e.to_string()).await;
            return;
        }
    };
    tracing::info!(channel = %id, worker = %worker, "matrix channel owned: syncing");
    let membership = tokio::spawn(keep_membership(
        store.clone(),
        client.clone(),
        id.clone(),
        fence.clone(),
        Duration::from_millis(settings.membership_sweep_ms),
        stop.clone(),
    ));
    let relay = channel.config.relay.then(|| {
        tokio::spawn(super::relay::run(
            store.clone(),
            channel.clone(),
            super::relay::Target::Matrix(client.clone()),
            fence.clone(),
            metrics.clone(),
            stop.clone(),
        ))
    });
    sync_loop(
        Syncing {
            store: &store,
            channel: &channel,
            client: &client,
            settings: &settings,
            worker: &worker,
            metrics: &metrics,
            fence: &fence,
        },
        stop,
    )
    .await;
    let _ = membership.await;
    if let Some(r) = relay {
        let _ = r.await;
    }
    let _ = store
        .set_chat_channel_status(&id, "waiting", None, false)
        .await;
}

/// What the sync loop of one owned channel works with.
struct Syncing<'a> {
    store: &'a Store,
    channel: &'a Channel,
    client: &'a MatrixClient,
    settings: &'a ChatConfig,
    worker: &'a str,
    metrics: &'a crate::metrics::Metrics,
    fence: &'a Fence,
}

async fn sync_loop(ctx: Syncing<'_>, mut stop: watch::Receiver<bool>) {
    let Syncing {
        store,
        channel,
        client,
        settings,
        worker,
        metrics,
        fence,
    } = ctx;
    let id = &channel.spec.id;
    let filter = sync_filter(TIMELINE_LIMIT);
    let long_poll = Duration::from_millis(settings.matrix_sync_timeout_ms);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let mut since: Option<String> = None;
    let mut loaded = false;
    let mut status = "";
    loop {
        if *stop.borrow() {
            return;
        }
        let step = async {
            if !loaded {
                since = store.chat_cursor(id).await?;
                loaded = true;
            }
            // The first sync (or one after an error) returns at once.
            let wait = if status == "idle" {
                long_poll
            } else {
                Duration::ZERO
            };
            if status != "idle" {
                store
                    .set_chat_channel_status(id, "syncing", Some(worker), false)
                    .await?;
            }
            let response = client.sync(since.as_deref(), wait, &filter).await?;
            let received = std::time::Instant::now();
            let caught_up = response.rooms.join.is_empty()
                && response.rooms.invite.is_empty()
                && response.rooms.leave.is_empty();
            let (inputs, agents_gone) =
                translate(store, channel, client, since.as_deref(), &response).await?;
            // An agent who left the room (or declined its invite) is no longer
            // its member: the handoff invites the task's holder again. Before
            // the commit, so that a crash re-reads the leave and repeats this.
            for (room, user) in &agents_gone {
                if store.agent_left_room(id, fence, room, user).await? {
                    tracing::info!(channel = %id, "an agent left a room: the handoff will check it again");
                }
            }
            let count = inputs.len();
            let batch = ChatBatch {
                channel_id: id.clone(),
                service_id: channel.spec.service_id.clone(),
                fence: fence.clone(),
                cursor: Some(response.next_batch.clone()),
                inputs,
            };
            let outcomes = store.commit_chat_batch(&batch).await?;
            let tasks = outcomes.iter().filter(|o| o.task_created).count();
            for (input, o) in batch.inputs.iter().zip(&outcomes) {
                let result = if o.duplicate_message {
                    "replay"
                } else {
                    "applied"
                };
                super::count_event(
                    metrics,
                    channel,
                    input.event.kind,
                    result,
                    o.task_created,
                    o.offers_cancelled,
                );
            }
            if count > 0 {
                metrics
                    .chat_intake_seconds
                    .with_label_values(&["matrix"])
                    .observe(received.elapsed().as_secs_f64());
            }
            if count > 0 {
                tracing::info!(channel = %id, events = count, tasks, "matrix events committed");
            }
            since = Some(response.next_batch);
            Ok::<bool, SyncError>(caught_up)
        };
        let result = tokio::select! {
            r = step => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(caught_up) => {
                backoff.reset();
                if caught_up && status != "idle" {
                    status = "idle";
                    let _ = store
                        .set_chat_channel_status(id, "idle", Some(worker), true)
                        .await;
                } else if !caught_up {
                    status = "syncing";
                } else {
                    let _ = store
                        .set_chat_channel_status(id, "idle", Some(worker), true)
                        .await;
                }
            }
            Err(SyncError::Store(StoreError::LeaseLost(_))) => {
                tracing::warn!(channel = %id, "another worker took the channel over: stopping");
                return;
            }
            Err(e) => {
                status = "error";
                loaded = false;
                tracing::warn!(channel = %id, error = %e, "matrix sync failed; will retry");
                let _ = store.record_chat_channel_error(id, &e.to_string()).await;
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

/// A room and an agent's Matrix user id whose last membership event in a
/// sync answer is a leave (they left, declined the invite, or were kicked).
type AgentGone = (String, String);

/// Turns one sync answer into chat inputs: joins rooms the bot was invited
/// to, reads back what a limited timeline left out, and maps each event.
/// Also says which agents left which rooms ([`AgentGone`]).
async fn translate(
    store: &Store,
    channel: &Channel,
    client: &MatrixClient,
    since: Option<&str>,
    response: &SyncResponse,
) -> Result<(Vec<ChatInput>, Vec<AgentGone>), SyncError> {
    let bot = client.user_id().to_string();
    for room in response.rooms.invite.keys() {
        // Joining is repeated harmlessly if this answer is read again after a crash.
        client.join(room).await?;
        tracing::info!(channel = %channel.spec.id, "invited into a room: joined");
    }
    let agents = store.agent_matrix_users().await?;
    let mut inputs = Vec::new();
    let mut gone: Vec<AgentGone> = Vec::new();
    let mut rooms: Vec<(&String, &crate::adapters::matrix::JoinedRoom, bool)> = response
        .rooms
        .join
        .iter()
        .map(|(r, j)| (r, j, false))
        .chain(response.rooms.leave.iter().map(|(r, j)| (r, j, true)))
        .collect();
    rooms.sort_by(|a, b| a.0.cmp(b.0));
    for (room, joined, left) in rooms {
        let mut events: Vec<RoomEvent> = Vec::new();
        if joined.timeline.limited
            && let Some(prev) = &joined.timeline.prev_batch
        {
            let known = store.chat_exists(&channel.spec.id, room).await?;
            // A room seen for the first time is read from its start.
            let to = if known { since } else { None };
            events = client.events_before(room, prev, to, MAX_BACKFILL).await?;
        }
        let mut seen: HashSet<String> = events.iter().map(|e| e.event_id.clone()).collect();
        for e in &joined.timeline.events {
            if seen.insert(e.event_id.clone()) {
                events.push(e.clone());
            }
        }
        let mut inviter: Option<String> = None;
        let mut subject: Option<String> = None;
        for e in &events {
            if let Some(input) =
                map_event(channel, room, &bot, &agents, e, &mut inviter, &mut subject)
            {
                inputs.push(input);
            }
        }
        // The last membership of each agent in this answer decides.
        let mut last: HashMap<&str, &str> = HashMap::new();
        for e in &events {
            if let (Some(m), Some(target)) = (e.membership(), e.state_key.as_deref())
                && agents.contains_key(target)
            {
                last.insert(target, m);
            }
        }
        for (user, m) in last {
            if m == "leave" {
                gone.push((room.clone(), user.to_string()));
            }
        }
        if left && !events.iter().any(|e| is_bot_gone(e, &bot)) {
            inputs.push(ended(channel, room, &format!("left:{room}")));
        }
    }
    // Customers are resolved before the transaction, once per address.
    let mut resolved: HashMap<Option<String>, crate::domain::customer::ResolvedCustomer> =
        HashMap::new();
    for input in &mut inputs {
        // Starts are resolved here (once per address); a message that opens
        // a chat is resolved in the transaction.
        if input.event.kind != ChatEventKind::Started {
            continue;
        }
        let key = input.event.customer.best_address().map(String::from);
        let m = match resolved.get(&key) {
            Some(m) => m.clone(),
            None => {
                let m = store
                    .resolve_chat_customer(&input.event.customer, input.sender_id.as_deref())
                    .await?;
                resolved.insert(key, m.clone());
                m
            }
        };
        input.customer = Some(m);
    }
    Ok((inputs, gone))
}

fn is_bot_gone(e: &RoomEvent, bot: &str) -> bool {
    e.state_key.as_deref() == Some(bot) && matches!(e.membership(), Some("leave" | "ban"))
}

fn base_event(channel: &Channel, room: &str, id: &str, kind: ChatEventKind) -> ChatEvent {
    ChatEvent {
        id: id.to_string(),
        channel: channel.spec.id.clone(),
        kind,
        chat_id: room.to_string(),
        customer: CustomerIdentity::default(),
        subject: None,
        language: None,
        parameters: serde_json::Map::new(),
        text: None,
        from: Sender::Customer,
        sent_at: None,
    }
}

fn ended(channel: &Channel, room: &str, id: &str) -> ChatInput {
    ChatInput {
        event: base_event(channel, room, id, ChatEventKind::Ended),
        message_ref: id.to_string(),
        sender_id: None,
        customer: None,
    }
}

/// Maps one room event to a chat input, if it means anything to intake.
fn map_event(
    channel: &Channel,
    room: &str,
    bot: &str,
    agents: &HashMap<String, String>,
    e: &RoomEvent,
    inviter: &mut Option<String>,
    subject: &mut Option<String>,
) -> Option<ChatInput> {
    if e.kind == "m.room.name" {
        *subject = e.content.get("name").and_then(|v| v.as_str()).map(|s| {
            // Shown on one line of the page (see `domain::text`).
            let mut name = crate::domain::clip(s, 200);
            crate::domain::text::strip_direction_formatting(&mut name);
            name
        });
        return None;
    }
    if let Some(membership) = e.membership() {
        let target = e.state_key.as_deref()?;
        if target == bot {
            return match membership {
                "invite" => {
                    *inviter = Some(e.sender.clone());
                    None
                }
                // The bot's join starts the chat; the inviter is the customer.
                "join" => {
                    let mut event = base_event(channel, room, &e.event_id, ChatEventKind::Started);
                    event.customer.user_id = inviter.clone();
                    event.subject = subject.clone();
                    event.sent_at = Some(e.origin_server_ts);
                    Some(ChatInput {
                        message_ref: e.event_id.clone(),
                        sender_id: inviter.clone(),
                        customer: None,
                        event,
                    })
                }
                "leave" | "ban" => Some(ended(channel, room, &e.event_id)),
                _ => None,
            };
        }
        if agents.contains_key(target) {
            return None;
        }
        return match membership {
            "leave" | "ban" => {
                let mut event = base_event(channel, room, &e.event_id, ChatEventKind::CustomerLeft);
                event.sent_at = Some(e.origin_server_ts);
                Some(ChatInput {
                    message_ref: e.event_id.clone(),
                    sender_id: Some(target.to_string()),
                    customer: None,
                    event,
                })
            }
            _ => None,
        };
    }
    let body = e.body()?;
    // A reply Switchboard relayed as the bot is in the transcript already.
    if e.sender == bot
        && e.transaction_id()
            .is_some_and(|t| t.starts_with(super::relay::TXN_PREFIX))
    {
        return None;
    }
    let (from, sender_id) = if e.sender == bot {
        (Sender::Bot, None)
    } else if agents.contains_key(&e.sender) {
        (Sender::Agent, Some(e.sender.clone()))
    } else {
        (Sender::Customer, Some(e.sender.clone()))
    };
    let text = crate::domain::chat::clipped_line(&crate::domain::text::chat_line(&body));
    if crate::domain::text::shows_nothing(&text) {
        return None;
    }
    let mut event = base_event(channel, room, &e.event_id, ChatEventKind::Message);
    event.from = from;
    event.text = Some(text);
    event.sent_at = Some(e.origin_server_ts);
    if from == Sender::Customer {
        event.customer.user_id = sender_id.clone();
    }
    Some(ChatInput {
        message_ref: e.event_id.clone(),
        sender_id,
        customer: None,
        event,
    })
}

/// Keeps each room's agent in line with its task's holder until `stop`.
async fn keep_membership(
    store: Store,
    client: MatrixClient,
    channel: String,
    fence: Fence,
    sweep: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut bell = crate::store::routing::bell().subscribe();
    let mut warned: HashSet<String> = HashSet::new();
    loop {
        if *stop.borrow() {
            return;
        }
        match store.membership_changes(&channel).await {
            Ok(changes) => {
                for change in changes {
                    if *stop.borrow() {
                        return;
                    }
                    let result: Result<(), MatrixError> = async {
                        if let Some(old) = &change.member_user
                            && change.want_user.as_ref() != Some(old)
                        {
                            let reason = if change.task_over {
                                "the task is over"
                            } else {
                                "the chat was handed to someone else"
                            };
                            client.kick(&change.room_id, old, reason).await?;
                        }
                        if let Some(new) = &change.want_user {
                            client.invite(&change.room_id, new).await?;
                        }
                        Ok(())
                    }
                    .await;
                    match result {
                        Ok(()) => {
                            if let (Some(agent), None) = (&change.want_agent, &change.want_user)
                                && warned.insert(agent.clone())
                            {
                                tracing::warn!(channel = %channel, agent = %agent, "agent has no matrix_user_id: cannot invite them into the room");
                                // Shown where operators look: the channel's last error.
                                let _ = store
                                    .record_chat_event_refused(
                                        &channel,
                                        &format!(
                                            "agent {agent} holds a chat of this channel but has no matrix_user_id: \
                                             they cannot be invited into its room (set matrix_user_id in their [[agents]] entry)"
                                        ),
                                    )
                                    .await;
                            }
                            match store
                                .set_chat_member(
                                    &change.chat,
                                    &fence,
                                    change.want_agent.as_deref(),
                                    change.want_user.as_deref(),
                                )
                                .await
                            {
                                Ok(true) => {
                                    tracing::info!(channel = %channel, chat = %change.chat, agent = ?change.want_agent, "room handed over")
                                }
                                Ok(false) => return,
                                Err(e) => {
                                    tracing::warn!(channel = %channel, error = %e, "cannot record the room's member")
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(channel = %channel, chat = %change.chat, error = %e, "room handover failed; will retry");
                            let _ = store
                                .record_chat_event_refused(
                                    &channel,
                                    &format!("room handover failed: {e}"),
                                )
                                .await;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(channel = %channel, error = %e, "cannot read the rooms to hand over")
            }
        }
        tokio::select! {
            _ = bell.changed() => {}
            _ = tokio::time::sleep(sweep) => {}
            _ = stop.changed() => {}
        }
    }
}
