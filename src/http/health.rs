//! Liveness, readiness, Prometheus metrics and the OpenAPI document.
use super::AppState;
use super::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters kept in the process (they restart at zero, as Prometheus expects).
#[derive(Debug, Default)]
pub struct Metrics {
    pub http_requests: AtomicU64,
    pub tasks_created: AtomicU64,
    pub pickups: AtomicU64,
    pub saves: AtomicU64,
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the database answers and the schema is current.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let unavailable = |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", m);
    state
        .store
        .ping()
        .await
        .map_err(|e| unavailable(format!("database unreachable: {e}")))?;
    let have = state
        .store
        .schema_version()
        .await
        .map_err(|e| unavailable(format!("cannot read schema version: {e}")))?;
    let want = state.store.latest_schema_version();
    if have < want {
        return Err(unavailable(format!(
            "schema version {have}, this build needs {want}: run `switchboard migrate`"
        )));
    }
    Ok(Json(json!({
        "status": "ready",
        "database": state.store.backend().as_str(),
        "schema_version": have,
    })))
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let stats = state.store.queue_stats().await?;
    let services = state.store.service_ids().await?;
    let mut out = String::new();
    let m = &state.metrics;
    let counters = [
        (
            "switchboard_http_requests_total",
            "HTTP requests served.",
            &m.http_requests,
        ),
        (
            "switchboard_tasks_created_total",
            "Tasks created through the API.",
            &m.tasks_created,
        ),
        (
            "switchboard_pickups_total",
            "Tasks picked up by agents.",
            &m.pickups,
        ),
        (
            "switchboard_sessions_saved_total",
            "User sessions saved.",
            &m.saves,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP switchboard_queue_depth Tasks waiting in a service's queue.\n# TYPE switchboard_queue_depth gauge"
    );
    for s in &services {
        let n: i64 = stats
            .tasks
            .iter()
            .filter(|(svc, st, _)| svc == s && st == "queued")
            .map(|t| t.2)
            .sum();
        let _ = writeln!(
            out,
            "switchboard_queue_depth{{service=\"{}\"}} {n}",
            label(s)
        );
    }
    let _ = writeln!(
        out,
        "# HELP switchboard_tasks Open tasks by service and state.\n# TYPE switchboard_tasks gauge"
    );
    for (svc, st, n) in &stats.tasks {
        let _ = writeln!(
            out,
            "switchboard_tasks{{service=\"{}\",state=\"{}\"}} {n}",
            label(svc),
            label(st)
        );
    }
    let _ = writeln!(
        out,
        "# HELP switchboard_sessions User sessions by result (open: not yet answered).\n# TYPE switchboard_sessions gauge"
    );
    for (result, n) in &stats.sessions {
        let _ = writeln!(
            out,
            "switchboard_sessions{{result=\"{}\"}} {n}",
            label(result)
        );
    }
    let mailboxes = state.store.mailboxes().await?;
    let now = crate::domain::now_millis();
    type Gauge = fn(&crate::store::MailboxState, i64) -> f64;
    let series: [(&str, &str, &str, Gauge); 7] = [
        (
            "switchboard_mailbox_up",
            "gauge",
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
            "gauge",
            "1 while the mailbox waits with IMAP IDLE.",
            |m, _| f64::from(u8::from(m.push)),
        ),
        (
            "switchboard_ingested_messages_total",
            "counter",
            "Messages stored from the mailbox.",
            |m, _| m.ingested_total as f64,
        ),
        (
            "switchboard_ingest_duplicates_total",
            "counter",
            "Messages skipped as already stored.",
            |m, _| m.duplicates_total as f64,
        ),
        (
            "switchboard_ingest_errors_total",
            "counter",
            "Connection, login and protocol failures.",
            |m, _| m.errors_total as f64,
        ),
        (
            "switchboard_ingest_backlog",
            "gauge",
            "Messages waiting on the server at the last look.",
            |m, _| m.backlog as f64,
        ),
        (
            "switchboard_ingest_lag_seconds",
            "gauge",
            "How long the mailbox has been behind (0 when in sync).",
            |m, now| super::ops::lag_seconds(m, now),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for m in &mailboxes {
            let _ = writeln!(
                out,
                "{name}{{mailbox=\"{}\",service=\"{}\"}} {}",
                label(&m.id),
                label(&m.service),
                value(m, now)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP switchboard_quarantine_held Quarantined messages waiting for an operator.\n# TYPE switchboard_quarantine_held gauge"
    );
    for m in &mailboxes {
        let _ = writeln!(
            out,
            "switchboard_quarantine_held{{mailbox=\"{}\"}} {}",
            label(&m.id),
            m.quarantined
        );
    }
    let _ = writeln!(
        out,
        "# HELP switchboard_build_info Build information.\n# TYPE switchboard_build_info gauge\nswitchboard_build_info{{version=\"{}\",database=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        state.store.backend().as_str()
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}

/// The API described as OpenAPI 3 (kept beside the code it describes).
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /api/v1/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
