//! The engines' side of ownership ([`crate::store::ownership`]): one loop
//! per owned source, started the moment the source is owned and stopped the
//! moment it is lost.
//!
//! [`run_owned`] takes every source of a kind that no one holds, at once at
//! start (a single worker restarting resumes immediately) and then every
//! `check_interval` (a dead worker's sources are free as soon as PostgreSQL
//! ends its session). Each owned source runs `work(id, fence, stop)`:
//! `fence` goes into the transactions that commit the loop's work (they fail
//! with `LeaseLost` once another worker took over), and `stop` turns true at
//! shutdown or when the ownership is lost; the loop should then return
//! promptly. When the loop returns, the source is released (another worker
//! may take it at once) and looked at again at the next check.
use crate::store::ownership::{Fence, Ownership};
use std::collections::HashMap;
use std::future::Future;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Runs `work` for every source of `kind` among `ids` this worker owns,
/// until `shutdown`; returns when every loop has stopped and released its
/// source.
pub async fn run_owned<W, F>(
    ownership: Ownership,
    kind: &'static str,
    ids: Vec<String>,
    mut shutdown: watch::Receiver<bool>,
    work: W,
) where
    W: Fn(String, Fence, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        running.retain(|_, handle| !handle.is_finished());
        for id in &ids {
            if running.contains_key(id) {
                continue;
            }
            let mut guard = match ownership.try_acquire(kind, id).await {
                Ok(Some(guard)) => guard,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(kind, id = %id, error = %e, "cannot take ownership");
                    continue;
                }
            };
            tracing::info!(kind, id = %id, worker = %ownership.worker_id(), epoch = guard.fence().epoch, "source owned");
            let (stop_tx, stop_rx) = watch::channel(false);
            let job = work(id.clone(), guard.fence().clone(), stop_rx);
            let mut shutdown = shutdown.clone();
            let name = id.clone();
            let handle = tokio::spawn(async move {
                let id = name;
                tokio::pin!(job);
                // `Some(lost)`: the work is still running and is told to stop.
                let stopping = tokio::select! {
                    () = &mut job => None,
                    () = guard.lost() => Some(true),
                    _ = shutdown.wait_for(|stop| *stop) => Some(false),
                };
                if stopping == Some(true) {
                    tracing::warn!(kind, id = %id, "ownership lost: stopping");
                }
                if stopping.is_some() {
                    let _ = stop_tx.send(true);
                    // A finished future must not be polled again.
                    job.await;
                }
                guard.release().await;
            });
            running.insert(id.clone(), handle);
        }
        tokio::select! {
            _ = tokio::time::sleep(ownership.settings().check_interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    for (_, handle) in running {
        let _ = handle.await;
    }
}
