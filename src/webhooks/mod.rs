//! The webhook deliverer: one loop in every worker that claims due
//! deliveries from the outbox (each by one worker, for a lease) and posts
//! them, signed, to their subscribers, several at once but a task's changes
//! one after the other. It is woken by the writers (PostgreSQL `NOTIFY`,
//! sent after the commit that wrote deliveries, on every worker) or the
//! process's doorbell, sleeps until the next retry is due, and sweeps now and then.
//!
//! Delivery is at least once: a worker that dies mid-send leaves its claim to
//! expire and another sends the delivery again, with the same id. A failed
//! attempt is retried with exponential backoff ([`RetryPolicy`]) until the
//! retry period is over; then the delivery is dead-lettered for operators.
//! Destinations are guarded as the image proxy's are
//! ([`crate::image_proxy::check_destination`]), after DNS too.
use crate::config::Config;
use crate::domain::webhook::{AfterFailure, RetryPolicy, signature};
use crate::domain::{millis_to_rfc3339, now_millis};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::webhooks::{AttemptResult, ClaimedDelivery};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// User agent of deliveries.
pub const USER_AGENT: &str = "Switchboard-Webhooks";

/// How the deliverer runs.
#[derive(Debug, Clone)]
pub struct DelivererSettings {
    pub worker_id: String,
    pub policy: RetryPolicy,
    /// Budget of one attempt.
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub sweep: Duration,
    pub allow_loopback: bool,
}

impl DelivererSettings {
    pub fn from_config(config: &Config) -> DelivererSettings {
        let w = &config.webhooks;
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        DelivererSettings {
            worker_id: config
                .ingest
                .worker_id
                .clone()
                .unwrap_or_else(crate::store::ownership::default_worker_id),
            policy: RetryPolicy {
                base_ms: i64::try_from(w.retry_base_ms).unwrap_or(i64::MAX),
                max_delay_ms: ms(w.retry_max_delay_secs),
                give_up_after_ms: ms(w.retry_for_secs),
            },
            timeout: Duration::from_secs(w.timeout_secs),
            max_in_flight: w.max_in_flight.max(1),
            sweep: Duration::from_millis(w.sweep_ms),
            allow_loopback: w.allow_loopback,
        }
    }
}

/// The body of a delivery: the same bytes on every attempt.
pub fn delivery_body(d: &ClaimedDelivery) -> Vec<u8> {
    let data: serde_json::Value =
        serde_json::from_str(&d.payload).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&serde_json::json!({
        "id": d.id.to_string(),
        "type": d.kind,
        "created_at": millis_to_rfc3339(d.changed_at),
        "change_id": d.change_id,
        "task_id": d.task_id,
        "session_id": d.session_id,
        "agent_id": d.agent_id,
        "subscription": d.subscription_id,
        "data": data,
    }))
    .unwrap_or_default()
}

/// Starts the deliverer (and, on PostgreSQL, its listener); both run until `shutdown`.
pub fn start(
    store: Store,
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let settings = DelivererSettings::from_config(config);
    let client = crate::image_proxy::guarded_client_builder(settings.allow_loopback)
        .user_agent(USER_AGENT)
        .connect_timeout(settings.timeout)
        .timeout(settings.timeout)
        .pool_max_idle_per_host(settings.max_in_flight)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the webhook client: {e}"))?;
    let mut tasks = vec![];
    if matches!(store, Store::Postgres(..)) {
        tasks.push(tokio::spawn(listen(
            config.database.url.clone(),
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(run(
        store, client, settings, metrics, shutdown,
    )));
    Ok(tasks)
}

/// Rings the doorbell whenever PostgreSQL says deliveries were written, over
/// a connection of its own; after a reconnect too (something may have been
/// missed).
async fn listen(url: String, mut shutdown: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen(crate::store::webhooks::PG_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        let mut listener = match listener {
            Ok(l) => l,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot listen for webhook deliveries; retrying");
                let delay = Duration::from_secs(u64::from(failures.min(30)));
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        failures = 0;
        crate::store::webhooks::ring();
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                received = listener.try_recv() => match received {
                    Ok(_) => crate::store::webhooks::ring(),
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

async fn run(
    store: Store,
    client: reqwest::Client,
    settings: DelivererSettings,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    let mut bell = crate::store::webhooks::bell().subscribe();
    // Most changes also wake the router: listening to it saves a ring in each.
    let mut router = crate::store::routing::bell().subscribe();
    let mut in_flight: JoinSet<(i64, AttemptResult)> = JoinSet::new();
    // Attempts made, written together before the next claim.
    let mut finished: Vec<(i64, AttemptResult)> = Vec::new();
    let mut failures = 0u32;
    tracing::info!(worker = %settings.worker_id, max_in_flight = settings.max_in_flight, "webhook deliverer started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        bell.mark_unchanged();
        router.mark_unchanged();
        while let Some(done) = in_flight.try_join_next() {
            finished.extend(done.ok());
        }
        let room = settings.max_in_flight.saturating_sub(in_flight.len());
        // Claim in batches: when idle, or when a quarter of the slots is free.
        let worth_it = in_flight.is_empty() || room >= (settings.max_in_flight / 4).max(1);
        let mut found_all = false;
        let mut db_failed = false;
        if room > 0 && worth_it {
            // Before claiming: a task's next change waits for this one to be written.
            record(&store, &mut finished).await;
            let lease = now_millis()
                + i64::try_from(settings.timeout.as_millis()).unwrap_or(i64::MAX / 2)
                + 5_000;
            match store
                .claim_deliveries(room, &settings.worker_id, lease)
                .await
            {
                Ok(batch) => {
                    found_all = batch.len() < room;
                    for d in batch {
                        let (client, settings, metrics) =
                            (client.clone(), settings.clone(), metrics.clone());
                        in_flight
                            .spawn(async move { deliver(&client, &settings, &metrics, d).await });
                    }
                    failures = 0;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "cannot claim webhook deliveries");
                    db_failed = true;
                }
            }
        }
        let wait = if db_failed {
            Duration::from_millis(100 * u64::from(failures.min(50)))
        } else if !in_flight.is_empty() || !found_all {
            // A finished delivery (or a bell, or the sweep) brings the next round.
            settings.sweep
        } else {
            match store.next_delivery_due().await {
                Ok(Some(at)) => {
                    Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0).max(20))
                        .min(settings.sweep)
                }
                Ok(None) => settings.sweep,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read when deliveries are due");
                    settings.sweep
                }
            }
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = bell.changed() => {}
            _ = router.changed() => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                finished.extend(done.ok());
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
    // In-flight attempts finish (each is bounded by the timeout); an
    // unfinished one is sent again after its lease, by this or another worker.
    while let Some(done) = in_flight.join_next().await {
        finished.extend(done.ok());
    }
    record(&store, &mut finished).await;
    tracing::info!("webhook deliverer stopped");
}

/// Writes how attempts went: the delivered ones in one statement. What
/// cannot be written is sent again once its lease is over.
async fn record(store: &Store, finished: &mut Vec<(i64, AttemptResult)>) {
    if finished.is_empty() {
        return;
    }
    let mut delivered = Vec::new();
    for (id, result) in finished.drain(..) {
        match result {
            AttemptResult::Delivered { status } => delivered.push((id, status)),
            failed => {
                if let Err(e) = store.record_attempt(id, &failed).await {
                    tracing::warn!(delivery = id, error = %e, "cannot record a webhook attempt");
                }
            }
        }
    }
    if let Err(e) = store.record_delivered(&delivered).await {
        tracing::warn!(deliveries = delivered.len(), error = %e, "cannot record webhook deliveries");
    }
}

/// One attempt: post, and say how it went.
async fn deliver(
    client: &reqwest::Client,
    settings: &DelivererSettings,
    metrics: &Metrics,
    d: ClaimedDelivery,
) -> (i64, AttemptResult) {
    let result = attempt(client, settings, &d).await;
    let outcome = match result {
        Ok(status) if (200..300).contains(&status) => {
            metrics
                .webhook_attempts
                .with_label_values(&["delivered"])
                .inc();
            metrics
                .webhook_delivery_seconds
                .observe((now_millis() - d.changed_at).max(0) as f64 / 1000.0);
            AttemptResult::Delivered { status }
        }
        failed => {
            let (status, error) = match failed {
                Ok(status) => (
                    Some(status),
                    format!("the subscriber answered HTTP {status}"),
                ),
                Err(e) => (None, e),
            };
            // The retry window opens at the first attempt: a change that
            // waited behind the task's earlier ones gets its full window.
            let now = now_millis();
            let since = if d.attempts == 0 || d.retry_from == 0 {
                now
            } else {
                d.retry_from
            };
            let next = match settings.policy.after_failure(d.attempts + 1, since, now) {
                AfterFailure::RetryAt(at) => Some(at),
                AfterFailure::Dead => None,
            };
            metrics
                .webhook_attempts
                .with_label_values(&[if next.is_none() { "dead" } else { "failed" }])
                .inc();
            if next.is_none() {
                tracing::warn!(delivery = d.id, subscription = %d.subscription_id, task = %d.task_id,
                    attempts = d.attempts + 1, error = %error, "webhook delivery dead-lettered");
            } else {
                tracing::debug!(delivery = d.id, subscription = %d.subscription_id, error = %error,
                    "webhook delivery failed; will retry");
            }
            AttemptResult::Failed {
                status,
                error,
                next_attempt_at: next,
            }
        }
    };
    (d.id, outcome)
}

/// Posts a delivery; the HTTP status, or what went wrong (never the URL).
async fn attempt(
    client: &reqwest::Client,
    settings: &DelivererSettings,
    d: &ClaimedDelivery,
) -> Result<u16, String> {
    let url = url::Url::parse(&d.url).map_err(|e| format!("bad subscriber URL: {e}"))?;
    crate::image_proxy::check_destination(&url, settings.allow_loopback).map_err(|e| match e {
        crate::image_proxy::ProxyError::Forbidden(m) => format!("forbidden destination: {m}"),
        crate::image_proxy::ProxyError::BadUrl(m) => format!("bad subscriber URL: {m}"),
        other => other.to_string(),
    })?;
    let body = delivery_body(d);
    let timestamp = chrono::Utc::now().timestamp();
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Switchboard-Delivery", d.id.to_string())
        .header("X-Switchboard-Event", d.kind.as_str())
        .header("X-Switchboard-Timestamp", timestamp.to_string())
        .header(
            "X-Switchboard-Signature",
            signature(d.secret.as_bytes(), timestamp, &body),
        )
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let e = e.without_url();
            if let Some(forbidden) = crate::image_proxy::forbidden_resolution(&e) {
                format!("forbidden destination: {forbidden}")
            } else if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                "could not connect to the subscriber".to_string()
            } else {
                "the request failed".to_string()
            }
        })?;
    let status = response.status().as_u16();
    // Read (a little of) the answer, so the connection can be used again.
    let mut response = response;
    let mut read = 0usize;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > 64 * 1024 {
            break;
        }
    }
    Ok(status)
}
