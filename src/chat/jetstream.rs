//! A JetStream channel: every worker pulls the channel's events (the
//! webhook's JSON, with its `id`) from one durable consumer they share, and
//! acknowledges each only after the transaction it produced has committed.
//! A redelivered event (after a worker died before its ack, or a publisher's
//! retry under the same id) is recognised by its id and has no second effect.
use super::Channel;
use crate::domain::chat::{content_hash, parse_event};
use crate::ingest::backoff::Backoff;
use crate::store::{Store, StoreError};
use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::watch;

/// The NATS server used when a channel names none.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How long the server waits for an ack before it delivers an event again
/// (a worker that died holding it).
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// Events handled at once by one worker.
const IN_FLIGHT: usize = 8;

#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("NATS: {0}")]
    Nats(String),
}

fn nats(e: impl std::fmt::Display) -> ConsumeError {
    ConsumeError::Nats(e.to_string())
}

/// Pulls the channel's events until `shutdown`, reconnecting with backoff.
pub async fn run(
    store: Store,
    channel: Channel,
    worker: String,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = channel.spec.id.clone();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut stop = shutdown.clone();
        let result = tokio::select! {
            r = consume(&store, &channel, &worker, &metrics, &shutdown) => r,
            _ = stop.wait_for(|s| *s) => Ok(()),
        };
        match result {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(channel = %id, error = %e, "jetstream consumer failed; will reconnect");
                let _ = store.record_chat_channel_error(&id, &e.to_string()).await;
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    tracing::info!(channel = %id, "jetstream consumer stopped");
}

async fn consume(
    store: &Store,
    channel: &Channel,
    worker: &str,
    metrics: &crate::metrics::Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), ConsumeError> {
    let c = &channel.config;
    let id = &channel.spec.id;
    // The client reconnects by itself and the pull stream waits meanwhile,
    // so a lost connection is seen in the client's events: the channel is
    // shown down while it lasts.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<async_nats::Event>();
    let client = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let _ = events_tx.send(event);
            async {}
        })
        .connect(c.url.as_deref().unwrap_or(DEFAULT_URL))
        .await
        .map_err(nats)?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(c.stream.as_deref().unwrap_or_default())
        .await
        .map_err(nats)?;
    let durable = c.durable_name();
    let consumer = stream
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: c.subject.clone().unwrap_or_default(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                ..Default::default()
            },
        )
        .await
        .map_err(nats)?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(IN_FLIGHT * 4)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .map_err(nats)?;
    let _ = store
        .set_chat_channel_status(id, "consuming", Some(worker), true)
        .await;
    tracing::info!(channel = %id, worker = %worker, "jetstream consumer pulling");
    // Events of one chat are applied one after the other, in the order this
    // worker pulled them (a chat's lines keep their order, and of two events
    // of a chat under one id the first wins); different chats go side by
    // side, IN_FLIGHT lanes. Several workers share the consumer, so across
    // workers the order is the stream's only as far as each worker pulls.
    // A lane holds few events, so none waits for its ack near ACK_WAIT.
    let mut stop = shutdown.clone();
    let mut lanes_in = Vec::with_capacity(IN_FLIGHT);
    let mut lanes = Vec::with_capacity(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<jetstream::Message>(4);
        lanes_in.push(tx);
        lanes.push(async move {
            while let Some(m) = rx.recv().await {
                handle(store, channel, metrics, m).await;
            }
        });
    }
    let dispatch = async move {
        let mut failed = None;
        let mut messages = std::pin::pin!(messages.take_until(async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        while let Some(message) = messages.next().await {
            match message {
                Ok(m) => {
                    let lane = lane_of(&m.payload, lanes_in.len());
                    if lanes_in[lane].send(m).await.is_err() {
                        break;
                    }
                }
                Err(e) => failed = Some(nats(e)),
            }
        }
        // The lanes finish what they hold, then stop.
        drop(lanes_in);
        failed
    };
    let connection = async move {
        while let Some(event) = events.recv().await {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!(channel = %id, worker = %worker, "lost the connection to the NATS server; reconnecting");
                    // Several workers may share the channel: the one that
                    // lost its connection is named.
                    let said = format!("worker {worker} {LOST}");
                    if let Err(e) = store.record_chat_channel_error(id, &said).await {
                        tracing::warn!(channel = %id, error = %e, "cannot record a channel error");
                    }
                }
                async_nats::Event::Connected => {
                    tracing::info!(channel = %id, worker = %worker, "connected to the NATS server: pulling");
                    if let Err(e) = store
                        .set_chat_channel_status(id, "consuming", Some(worker), true)
                        .await
                    {
                        tracing::warn!(channel = %id, error = %e, "cannot record the channel's status");
                    }
                }
                _ => {}
            }
        }
        // The client is gone: nothing more to follow.
        std::future::pending::<std::convert::Infallible>().await
    };
    let (failed, _) = tokio::select! {
        done = async { tokio::join!(dispatch, futures_util::future::join_all(lanes)) } => done,
        never = connection => match never {},
    };
    match failed {
        Some(e) if !*shutdown.borrow() => Err(e),
        _ => Ok(()),
    }
}

/// What operators see while a worker's connection to NATS is lost.
const LOST: &str =
    "cannot reach the NATS server: lost its connection, reconnecting (events wait in the stream)";

/// The lane of an event: by its chat, so that one chat's events keep their
/// order (a body that is not JSON goes to the first lane, one without a
/// chat id to that of "no chat"; either is refused there).
fn lane_of(payload: &[u8], lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return 0;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.get("chat_id").and_then(|c| c.as_str()).hash(&mut h);
    usize::try_from(h.finish() % lanes.max(1) as u64).unwrap_or(0)
}

/// Applies one delivered event and acknowledges it after its commit. An
/// event that can never be applied (malformed, another channel's, an id
/// reused for another event) is terminated and recorded as an error; a
/// failure of the database asks for a redelivery later.
async fn handle(
    store: &Store,
    channel: &Channel,
    metrics: &crate::metrics::Metrics,
    message: jetstream::Message,
) {
    let started = std::time::Instant::now();
    let id = &channel.spec.id;
    let payload = &message.payload;
    // The webhook's limit, for the same events.
    if payload.len() > crate::domain::chat::MAX_EVENT_BYTES {
        let why = format!(
            "event of {} bytes: at most {} bytes (64 KiB); not applied",
            payload.len(),
            crate::domain::chat::MAX_EVENT_BYTES
        );
        terminate(store, id, &message, &why).await;
        return;
    }
    let event = match parse_event(payload) {
        Ok(e) if e.channel == *id => e,
        Ok(e) => {
            let why = format!(
                "an event for channel '{}' arrived on channel '{id}': not applied",
                crate::domain::clip(&e.channel, 64)
            );
            terminate(store, id, &message, &why).await;
            return;
        }
        Err(e) => {
            terminate(store, id, &message, &format!("malformed event: {e}")).await;
            return;
        }
    };
    let hash = content_hash(payload);
    let kind = event.kind;
    let applied = match super::delivery_input(store, event).await {
        Ok(input) => {
            store
                .apply_chat_delivery(&channel.spec.service_id, &input, &hash)
                .await
        }
        Err(e) => Err(e),
    };
    match applied {
        Ok(delivered) => {
            let result = if delivered.replay {
                "replay"
            } else {
                "applied"
            };
            super::count_event(
                metrics,
                channel,
                kind,
                result,
                delivered.status == 201 && !delivered.replay,
                delivered.offers_cancelled,
            );
            metrics
                .chat_intake_seconds
                .with_label_values(&["jetstream"])
                .observe(started.elapsed().as_secs_f64());
            if delivered.replay
                && let Err(e) = store.count_chat_duplicate(id).await
            {
                tracing::warn!(channel = %id, error = %e, "cannot count a repeated chat event");
            }
            if let Err(e) = message.ack().await {
                // Delivered again later, and then recognised by its id.
                tracing::warn!(channel = %id, error = %e, "cannot acknowledge a chat event");
            }
        }
        Err(StoreError::Closed { message: why, .. })
        | Err(StoreError::Invalid(crate::domain::DomainError::Invalid(why))) => {
            terminate(store, id, &message, &why).await;
        }
        Err(e) => {
            tracing::warn!(channel = %id, error = %e, "cannot apply a chat event; it will be delivered again");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                .await;
        }
    }
}

async fn terminate(store: &Store, channel: &str, message: &jetstream::Message, why: &str) {
    tracing::warn!(channel = %channel, reason = %why, "chat event refused");
    let _ = store.record_chat_event_refused(channel, why).await;
    let _ = message.ack_with(AckKind::Term).await;
}
