//! The chat intake engine: the configured chat channels, what every worker
//! serves for them, and the keys of open-chat handles.
//!
//! - webhook channels are served by the HTTP edge (`POST /api/v1/chat/events`);
//! - Matrix channels are synced by one worker at a time ([`matrix`], owned
//!   through [`crate::supervise::run_owned`] as kind [`CHANNEL`]), which also
//!   keeps each room's agent membership in line with its task's holder (the
//!   handoff);
//! - JetStream channels are pulled by every worker from one durable
//!   consumer ([`jetstream`]), each event acknowledged after its commit.
pub mod intake;
pub mod jetstream;
pub mod matrix;
pub mod relay;

use crate::config::{ChatChannelConfig, ChatChannelKind, Config};
use crate::domain::chat::{ChatEvent, ChatEventKind};
use crate::domain::now_millis;
use crate::store::chats::{ChannelSpec, ChatInput};
use crate::store::ownership::Ownership;
use crate::store::{Store, StoreResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The ownership kind of channels synced by one worker at a time (Matrix).
pub const CHANNEL: &str = "chat_channel";

/// One configured channel, live.
#[derive(Debug, Clone)]
pub struct Channel {
    pub config: ChatChannelConfig,
    pub spec: ChannelSpec,
}

impl Channel {
    pub fn kind(&self) -> ChatChannelKind {
        self.config.kind
    }

    /// The webhook secrets active now (several while one is rotated).
    pub fn secrets(&self) -> Vec<&[u8]> {
        self.config
            .resolved_secrets
            .iter()
            .map(|s| s.expose().as_bytes())
            .collect()
    }
}

/// What the HTTP edge needs of chat: the channels, the handle keys and settings.
#[derive(Debug)]
pub struct ChatRuntime {
    pub channels: HashMap<String, Channel>,
    pub keys: HandleKeys,
    /// Seconds an open-chat handle stays valid.
    pub handle_ttl_secs: i64,
    /// `http.public_url`, for absolute handle URLs.
    pub public_url: Option<String>,
    /// Webhook events, applied together under load.
    pub intake: intake::Intake,
}

impl ChatRuntime {
    pub fn new(store: &Store, config: &Config) -> ChatRuntime {
        ChatRuntime {
            channels: channels(config)
                .into_iter()
                .map(|c| (c.spec.id.clone(), c))
                .collect(),
            keys: HandleKeys::new(store.clone()),
            intake: intake::Intake::new(store.clone()),
            handle_ttl_secs: i64::try_from(config.chat.handle_ttl_secs).unwrap_or(900),
            public_url: config
                .http
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_string()),
        }
    }

    pub fn channel(&self, id: &str) -> Option<&Channel> {
        self.channels.get(id)
    }
}

/// The channels of a configuration.
pub fn channels(config: &Config) -> Vec<Channel> {
    config
        .chat_channels
        .iter()
        .map(|c| {
            let description = match c.kind {
                ChatChannelKind::Webhook => "webhook POST /api/v1/chat/events".to_string(),
                ChatChannelKind::Matrix => format!(
                    "matrix {} as {}",
                    c.homeserver_url.as_deref().unwrap_or_default(),
                    c.user_id.as_deref().unwrap_or_default()
                ),
                ChatChannelKind::Jetstream => format!(
                    "jetstream {} stream {} subject {} durable {}",
                    c.url.as_deref().unwrap_or(jetstream::DEFAULT_URL),
                    c.stream.as_deref().unwrap_or_default(),
                    c.subject.as_deref().unwrap_or_default(),
                    c.durable_name()
                ),
            };
            Channel {
                spec: ChannelSpec {
                    id: c.id.clone(),
                    service_id: c.service.clone(),
                    kind: c.kind.as_str().to_string(),
                    description,
                },
                config: c.clone(),
            }
        })
        .collect()
}

/// The keys that sign open-chat handles, cached: the newest signs; a key
/// id not in the cache is looked up (at most once a second), so keys made
/// by another worker verify at once.
#[derive(Debug)]
pub struct HandleKeys {
    store: Store,
    cache: Mutex<Option<(Instant, KeyList)>>,
}

/// Key ids and keys, newest first.
type KeyList = Vec<(String, Vec<u8>)>;

const KEY_REFRESH: Duration = Duration::from_secs(60);
const KEY_MISS_REFRESH: Duration = Duration::from_secs(1);

impl HandleKeys {
    pub fn new(store: Store) -> HandleKeys {
        HandleKeys {
            store,
            cache: Mutex::new(None),
        }
    }

    fn cached(&self, fresh_within: Duration) -> Option<Vec<(String, Vec<u8>)>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .as_ref()
            .filter(|(at, _)| at.elapsed() < fresh_within)
            .map(|(_, keys)| keys.clone())
    }

    async fn reload(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let keys = self.store.chat_handle_keys().await?;
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), keys.clone()));
        Ok(keys)
    }

    /// The key that signs new handles: (key id, key).
    pub async fn signing(&self) -> StoreResult<(String, Vec<u8>)> {
        let keys = match self.cached(KEY_REFRESH) {
            Some(k) if !k.is_empty() => k,
            _ => self.reload().await?,
        };
        keys.into_iter().next().ok_or_else(|| {
            crate::store::StoreError::Corrupt("no chat handle key could be made".into())
        })
    }

    /// The key with id `kid`, if it exists.
    pub async fn key(&self, kid: &str) -> StoreResult<Option<Vec<u8>>> {
        let find = |keys: &[(String, Vec<u8>)]| {
            keys.iter()
                .find(|(k, _)| k == kid)
                .map(|(_, key)| key.clone())
        };
        if let Some(keys) = self.cached(KEY_REFRESH)
            && let Some(k) = find(&keys)
        {
            return Ok(Some(k));
        }
        if let Some(keys) = self.cached(KEY_MISS_REFRESH) {
            return Ok(find(&keys));
        }
        Ok(find(&self.reload().await?))
    }

    /// Forgets the cache (after a rotation here).
    pub fn invalidate(&self) {
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Builds the input for a delivered event, resolving the customer of a start.
pub async fn delivery_input(store: &Store, mut event: ChatEvent) -> StoreResult<ChatInput> {
    event.sent_at =
        crate::domain::chat::bounded_sent_at(event.sent_at, crate::domain::now_millis());
    // A start always creates a task (or completes one); a message rarely
    // does, and then its customer is resolved in the transaction.
    let customer = if event.kind == ChatEventKind::Started {
        Some(store.resolve_chat_customer(&event.customer, None).await?)
    } else {
        None
    };
    Ok(ChatInput {
        message_ref: event.id.clone(),
        sender_id: event.customer.user_id.clone(),
        customer,
        event,
    })
}

/// Registers the configured channels and starts what this worker serves:
/// the Matrix channels it owns, every JetStream channel, and the pruning of
/// old delivery records. Returns when `shutdown` stops them all.
pub async fn start(
    store: Store,
    ownership: Ownership,
    config: &Config,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let all = channels(config);
    for c in &all {
        store.register_chat_channel(&c.spec).await?;
    }
    for a in &config.agents {
        store
            .set_agent_matrix_user(&a.id, a.matrix_user_id.as_deref())
            .await?;
    }
    let settings = Arc::new(config.chat.clone());
    let worker = ownership.worker_id().to_string();
    let mut jobs: Vec<JoinHandle<()>> = Vec::new();
    // Channels with one owner at a time: Matrix (sync, handoff, relay) and
    // webhook channels that relay replies.
    let owned: HashMap<String, Channel> = all
        .iter()
        .filter(|c| {
            c.kind() == ChatChannelKind::Matrix
                || (c.kind() == ChatChannelKind::Webhook && c.config.relay)
        })
        .map(|c| (c.spec.id.clone(), c.clone()))
        .collect();
    if !owned.is_empty() {
        let ids: Vec<String> = owned.keys().cloned().collect();
        let owned = Arc::new(owned);
        let store = store.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        let worker = worker.clone();
        let metrics = metrics.clone();
        jobs.push(tokio::spawn(async move {
            crate::supervise::run_owned(ownership, CHANNEL, ids, shutdown, move |id, fence, stop| {
                let channel = owned.get(&id).cloned();
                let store = store.clone();
                let settings = settings.clone();
                let worker = worker.clone();
                let metrics = metrics.clone();
                async move {
                    match channel {
                        Some(c) if c.kind() == ChatChannelKind::Matrix => {
                            matrix::run(store, c, settings, worker, metrics, fence, stop).await;
                        }
                        Some(c) => match relay::Target::webhook(&c) {
                            Some(target) => relay::run(store, c, target, fence, metrics, stop).await,
                            None => tracing::warn!(channel = %id, "relay is on but the channel has no reply_url or secret"),
                        },
                        None => {}
                    }
                }
            })
            .await;
        }));
    }
    for c in all
        .iter()
        .filter(|c| c.kind() == ChatChannelKind::Jetstream)
    {
        jobs.push(tokio::spawn(jetstream::run(
            store.clone(),
            c.clone(),
            worker.clone(),
            metrics.clone(),
            shutdown.clone(),
        )));
    }
    jobs.push(tokio::spawn(prune_periodically(
        store.clone(),
        settings.event_retention_days,
        shutdown.clone(),
    )));
    tracing::info!(worker = %worker, channels = all.len(), "chat intake starting");
    Ok(tokio::spawn(async move {
        for job in jobs {
            let _ = job.await;
        }
        tracing::info!("chat intake stopped");
    }))
}

/// Counts what a committed event did in the process's metrics.
pub fn count_event(
    metrics: &crate::metrics::Metrics,
    channel: &Channel,
    kind: ChatEventKind,
    result: &str,
    task_created: bool,
    offers_cancelled: usize,
) {
    metrics
        .chat_events
        .with_label_values(&[channel.spec.id.as_str(), kind.as_str(), result])
        .inc();
    // The customer left while the chat was offered.
    metrics.offer_result("cancelled", offers_cancelled);
    if task_created {
        metrics
            .tasks_created
            .with_label_values(&[channel.spec.service_id.as_str(), "im", "chat"])
            .inc();
    }
}

/// Deletes delivery records past their retention now and then every hour.
async fn prune_periodically(store: Store, days: u64, mut shutdown: watch::Receiver<bool>) {
    let keep = i64::try_from(days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
    loop {
        match store
            .prune_chat_events(now_millis().saturating_sub(keep))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "old chat delivery records deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot delete old chat delivery records"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}
