//! What the port answers while the process starts: the database is opened
//! and migrated first, which takes minutes on a large one. Liveness
//! (`/healthz`) says the process is up (`starting`), so a probe does not
//! kill it mid-migration; everything else is a 503 `starting` with
//! `Retry-After`, so clients are answered instead of left waiting on a
//! silent port. Each answer closes its connection: the next request
//! reaches the real server once it serves.
use super::error::ApiError;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The answering server, until [`Starting::stop`] (or until dropped: a
/// start that failed takes it down with it).
pub struct Starting {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Starting {
    /// Answers on `listener` (a clone of the port the real server will use).
    pub fn serve(listener: TcpListener) -> Starting {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router())
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the port's answers while starting stopped");
            }
        });
        Starting {
            stop: Some(stop),
            task,
        }
    }

    /// Stops answering; the connections it holds are closed (each answer
    /// asked for that) within a second.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router() -> Router {
    Router::new()
        .route("/healthz", get(live))
        .fallback(unavailable)
        .layer(axum::middleware::map_response(close))
}

async fn live() -> Response {
    axum::Json(serde_json::json!({"status": "starting"})).into_response()
}

async fn unavailable() -> Response {
    let mut answer = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "starting",
        "Switchboard is starting (opening and migrating its database); try again in a few seconds",
    )
    .into_response();
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    answer
}

async fn close(mut answer: Response) -> Response {
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}
