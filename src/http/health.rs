//! Liveness, readiness, Prometheus metrics and the OpenAPI document.
use super::AppState;
use super::error::ApiError;
use crate::http::doc;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

pub use crate::metrics::Metrics;

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    summary = "Liveness",
    description = "Answers as long as the process is up: `ok`, or `starting` while it opens and migrates its database (every other path then answers 503 `starting` with `Retry-After`).",
    responses(
        (status = 200, description = "OK", body = crate::http::health::Health),
    ),
    security(()),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The process is up.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`; `starting` while the process opens and migrates its database.
    status: &'static str,
}

/// The service can serve requests.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `postgres` or `sqlite`.
    database: &'static str,
    /// The migrations applied.
    schema_version: i64,
    /// Always `ready`.
    status: &'static str,
}

/// How long `/readyz` waits for the database.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /readyz`: the database answers and the schema is current.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    summary = "Readiness",
    description = "Ready when the database answers (within 2 s) and its schema is current; 503 otherwise (e.g. run `switchboard migrate`).",
    responses(
        (status = 200, description = "OK", body = crate::http::health::Ready),
        (status = 503, description = "Not ready: the database is unreachable or the schema is behind this build.", body = doc::ErrorBody),
    ),
    security(()),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", m);
    // A probe waits seconds at most, not the pool's whole wait for a
    // connection: a database that does not answer is not ready.
    let within = |what: &'static str| {
        move |_| {
            unavailable(format!(
                "database unreachable: no answer to {what} within {} s",
                READY_WAIT.as_secs()
            ))
        }
    };
    tokio::time::timeout(READY_WAIT, state.store.ping())
        .await
        .map_err(within("a ping"))?
        .map_err(|e| unavailable(format!("database unreachable: {e}")))?;
    let have = tokio::time::timeout(READY_WAIT, state.store.schema_version())
        .await
        .map_err(within("reading the schema version"))?
        .map_err(|e| unavailable(format!("cannot read schema version: {e}")))?;
    let want = state.store.latest_schema_version();
    if have < want {
        return Err(unavailable(format!(
            "schema version {have}, this build needs {want}: run `switchboard migrate`"
        )));
    }
    Ok(Json(Ready {
        database: state.store.backend().as_str(),
        schema_version: have,
        status: "ready",
    }))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    prometheus::GaugeVec::new(prometheus::Opts::new(name, help), labels)
        .expect("a valid metric name")
}

/// `GET /metrics`: Prometheus text format: this process's counters and
/// histograms, and gauges read from the database now.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition format: request, task, pickup and save counters, queue depth per service, open tasks by service and state, sessions by result, reply attempts, database connections, build info.",
    responses(
        (status = 200, description = "Metrics.", body = String, content_type = "text/plain"),
    ),
    security(()),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = crate::domain::now_millis();
    // The database's figures within a scrape's time; without them, the
    // process's own series still answer (an outage is when they matter).
    let read = tokio::time::timeout(DATABASE_FIGURES_WITHIN, database_series(&state, now)).await;
    // Said in the log at most once a minute (Prometheus scrapes far more
    // often while the database is down).
    static LAST_SAID: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let say = || {
        let last = LAST_SAID.load(std::sync::atomic::Ordering::Relaxed);
        now - last >= 60_000
            && LAST_SAID
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
    };
    let (mut extra, database_up) = match read {
        Ok(Ok(series)) => (series, 1.0),
        Ok(Err(e)) => {
            if say() {
                tracing::warn!(error = %e, "metrics: cannot read the database's figures");
            }
            (Vec::new(), 0.0)
        }
        Err(_) => {
            if say() {
                tracing::warn!(
                    within_secs = DATABASE_FIGURES_WITHIN.as_secs(),
                    "metrics: the database's figures took too long"
                );
            }
            (Vec::new(), 0.0)
        }
    };
    let up = gauge_vec(
        "switchboard_database_up",
        "Whether this scrape read the database's figures (queues, tasks, mailboxes, chat channels, webhook deliveries): 1, or 0 when it could not and they are left out.",
        &[],
    );
    up.with_label_values::<&str>(&[]).set(database_up);
    extra.push(Box::new(up));
    let connections = state.store.connections();
    let database = gauge_vec(
        "switchboard_db_connections",
        "This process's database connections: open (all, in use or not), idle in the pool, kept by the read lane for My Sessions and the other reads of every click (PostgreSQL; given back after 5 s unneeded).",
        &["state"],
    );
    for (label, n) in [
        ("open", connections.open),
        ("idle", connections.idle),
        ("lane", connections.lane),
    ] {
        database.with_label_values(&[label]).set(f64::from(n));
    }
    extra.push(Box::new(database));
    let build = gauge_vec(
        "switchboard_build_info",
        "Build information.",
        &["version", "database"],
    );
    build
        .with_label_values(&[env!("CARGO_PKG_VERSION"), state.store.backend().as_str()])
        .set(1.0);
    extra.push(Box::new(build));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&extra),
    )
}

/// How long a scrape waits for the database's figures.
const DATABASE_FIGURES_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The series read from the database: queues, tasks, sessions, webhook
/// deliveries, mailboxes and chat channels.
async fn database_series(
    state: &AppState,
    now: i64,
) -> crate::store::StoreResult<Vec<Box<dyn prometheus::core::Collector>>> {
    let stats = state.store.queue_stats().await?;
    let queues = state.store.queue_overview(state.routing.grace_ms()).await?;
    let depth = gauge_vec(
        "switchboard_queue_depth",
        "Tasks waiting in a queue (service and modality).",
        &["service", "modality"],
    );
    let oldest = gauge_vec(
        "switchboard_queue_oldest_seconds",
        "How long the longest-waiting task of a queue has waited (0 when empty).",
        &["service", "modality"],
    );
    let offered = gauge_vec(
        "switchboard_queue_offered",
        "Tasks of a queue offered to agents, not yet answered.",
        &["service", "modality"],
    );
    let agents = gauge_vec(
        "switchboard_queue_agents",
        "Member agents of a queue by state: available (may be offered a task now) or busy (online without room).",
        &["service", "modality", "state"],
    );
    for q in &queues {
        let labels = [q.service_id.as_str(), q.modality.as_str()];
        depth.with_label_values(&labels).set(q.queued as f64);
        offered.with_label_values(&labels).set(q.offered as f64);
        oldest.with_label_values(&labels).set(
            q.oldest_queued_at
                .map_or(0.0, |t| ((now - t).max(0)) as f64 / 1000.0),
        );
        agents
            .with_label_values(&[labels[0], labels[1], "available"])
            .set(q.agents_available as f64);
        agents
            .with_label_values(&[labels[0], labels[1], "busy"])
            .set(q.agents_busy as f64);
    }
    let tasks = gauge_vec(
        "switchboard_tasks",
        "Open tasks by service and state.",
        &["service", "state"],
    );
    for (svc, st, n) in &stats.tasks {
        tasks
            .with_label_values(&[svc.as_str(), st.as_str()])
            .set(*n as f64);
    }
    let sessions = gauge_vec(
        "switchboard_sessions",
        "User sessions by result (open: not yet answered).",
        &["result"],
    );
    for (result, n) in &stats.sessions {
        sessions
            .with_label_values(&[result.as_str()])
            .set(*n as f64);
    }
    let outbox = state.store.outbox_stats().await?;
    let deliveries = gauge_vec(
        "switchboard_webhook_deliveries",
        "Outbound webhook deliveries by state: pending (to be sent or retried) or dead (dead-lettered, waiting for an operator).",
        &["state"],
    );
    deliveries
        .with_label_values(&["pending"])
        .set(outbox.pending as f64);
    deliveries
        .with_label_values(&["dead"])
        .set(outbox.dead as f64);
    let outbox_lag = gauge_vec(
        "switchboard_webhook_oldest_pending_seconds",
        "Age of the change of the oldest pending webhook delivery (0 when none).",
        &[],
    );
    outbox_lag.with_label_values::<&str>(&[]).set(
        outbox
            .oldest_pending_at
            .map_or(0.0, |t| ((now - t).max(0)) as f64 / 1000.0),
    );
    let mailboxes = state.store.mailboxes().await?;
    type Value = fn(&crate::store::MailboxState, i64) -> f64;
    let series: [(&str, &str, Value); 7] = [
        (
            "switchboard_mailbox_up",
            "1 while the mailbox is connected and syncing or waiting.",
            |m, _| {
                f64::from(u8::from(matches!(
                    m.status.as_str(),
                    "idle" | "polling" | "syncing"
                )))
            },
        ),
        (
            "switchboard_mailbox_push",
            "1 while the mailbox waits with IMAP IDLE.",
            |m, _| f64::from(u8::from(m.push)),
        ),
        (
            "switchboard_ingested_messages_total",
            "Messages stored from the mailbox.",
            |m, _| m.ingested_total as f64,
        ),
        (
            "switchboard_ingest_duplicates_total",
            "Messages skipped as already stored.",
            |m, _| m.duplicates_total as f64,
        ),
        (
            "switchboard_ingest_errors_total",
            "Connection, login and protocol failures.",
            |m, _| m.errors_total as f64,
        ),
        (
            "switchboard_ingest_backlog",
            "Messages waiting on the server at the last look.",
            |m, _| m.backlog as f64,
        ),
        (
            "switchboard_ingest_lag_seconds",
            "How long the mailbox has been behind (0 when in sync).",
            |m, now| super::ops::lag_seconds(m, now),
        ),
    ];
    let mut extra: Vec<Box<dyn prometheus::core::Collector>> = vec![
        Box::new(depth),
        Box::new(oldest),
        Box::new(offered),
        Box::new(agents),
        Box::new(tasks),
        Box::new(sessions),
        Box::new(deliveries),
        Box::new(outbox_lag),
    ];
    for (name, help, value) in series {
        // Totals are kept in the database, so every worker reports the same value.
        let labels = ["mailbox", "service"];
        if name.ends_with("_total") {
            let c = prometheus::CounterVec::new(prometheus::Opts::new(name, help), &labels)
                .expect("a valid metric name");
            for m in &mailboxes {
                c.with_label_values(&[m.id.as_str(), m.service.as_str()])
                    .inc_by(value(m, now));
            }
            extra.push(Box::new(c));
        } else {
            let g = gauge_vec(name, help, &labels);
            for m in &mailboxes {
                g.with_label_values(&[m.id.as_str(), m.service.as_str()])
                    .set(value(m, now));
            }
            extra.push(Box::new(g));
        }
    }
    let quarantine = gauge_vec(
        "switchboard_quarantine_held",
        "Quarantined messages waiting for an operator.",
        &["mailbox"],
    );
    for m in &mailboxes {
        quarantine
            .with_label_values(&[m.id.as_str()])
            .set(m.quarantined as f64);
    }
    extra.push(Box::new(quarantine));
    extra.extend(chat_channel_series(
        &state.store.chat_channels().await?,
        now,
    ));
    Ok(extra)
}

/// Per chat channel: up, lag, live chats and the totals kept in the database.
fn chat_channel_series(
    channels: &[crate::store::chats::ChannelState],
    now: i64,
) -> Vec<Box<dyn prometheus::core::Collector>> {
    let labels = ["channel", "service", "kind"];
    let up = gauge_vec(
        "switchboard_chat_channel_up",
        "1 while the chat channel takes events (webhook ready, Matrix syncing or waiting, JetStream consuming).",
        &labels,
    );
    let lag = gauge_vec(
        "switchboard_chat_channel_lag_seconds",
        "How long the chat channel has been behind (0 when caught up).",
        &labels,
    );
    let live = gauge_vec(
        "switchboard_chat_live_chats",
        "Chats of the channel whose task waits, is offered or connected.",
        &labels,
    );
    let counter = |name: &str, help: &str| {
        prometheus::CounterVec::new(prometheus::Opts::new(name, help), &labels)
            .expect("a valid metric name")
    };
    let events = counter(
        "switchboard_chat_channel_messages_total",
        "Messages in the transcripts of the channel's chats.",
    );
    let duplicates = counter(
        "switchboard_chat_channel_duplicates_total",
        "Chat messages the channel delivered again (stored once).",
    );
    let errors = counter(
        "switchboard_chat_channel_errors_total",
        "Connection, sync and refused-event failures of the channel.",
    );
    for c in channels {
        let l = [c.id.as_str(), c.service.as_str(), c.kind.as_str()];
        up.with_label_values(&l).set(f64::from(u8::from(matches!(
            c.status.as_str(),
            "idle" | "syncing" | "ready" | "consuming"
        ))));
        lag.with_label_values(&l)
            .set(super::chat::lag_seconds(c, now));
        live.with_label_values(&l).set(c.chats_live as f64);
        events.with_label_values(&l).inc_by(c.messages_total as f64);
        duplicates
            .with_label_values(&l)
            .inc_by(c.duplicates_total as f64);
        errors.with_label_values(&l).inc_by(c.errors_total as f64);
    }
    vec![
        Box::new(up),
        Box::new(lag),
        Box::new(live),
        Box::new(events),
        Box::new(duplicates),
        Box::new(errors),
    ]
}
