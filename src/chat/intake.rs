//! Webhook chat events applied together: events that arrive while the
//! database is busy with earlier ones wait in a queue and are applied in one
//! transaction (group commit), each exactly once and answered as if alone
//! ([`Store::apply_chat_deliveries`]). One event alone is applied at once;
//! under load a commit, its round trips and its WAL flush serve many.
use crate::store::chats::{ChatDelivery, Delivered};
use crate::store::{Store, StoreError, StoreResult};
use std::sync::{Arc, OnceLock};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Events in one transaction at most.
const MAX_BATCH: usize = 64;
/// Transactions in flight at once: one being applied while the next fills.
const APPLIERS: usize = 2;
/// Events waiting at most; a sender beyond that waits its turn.
const QUEUE: usize = 1024;

struct Job {
    delivery: ChatDelivery,
    answer: oneshot::Sender<StoreResult<Delivered>>,
}

/// The queue of events waiting to be applied, and its appliers (started on
/// the first event, on the caller's runtime; they stop when the intake is
/// dropped).
pub struct Intake {
    store: Store,
    jobs: mpsc::Sender<Job>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    started: OnceLock<()>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Intake")
    }
}

impl Intake {
    pub fn new(store: Store) -> Intake {
        let (jobs, queue) = mpsc::channel(QUEUE);
        Intake {
            store,
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            started: OnceLock::new(),
        }
    }

    /// Applies one delivered event (with whatever else is waiting) and
    /// answers once it is committed.
    pub async fn apply(&self, delivery: ChatDelivery) -> StoreResult<Delivered> {
        self.started.get_or_init(|| {
            for _ in 0..APPLIERS {
                tokio::spawn(applier(self.store.clone(), self.queue.clone()));
            }
        });
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::Database(sqlx::Error::PoolClosed);
        self.jobs
            .send(Job { delivery, answer })
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Takes what is waiting (up to [`MAX_BATCH`]), applies it, answers each;
/// until the intake is dropped.
async fn applier(store: Store, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        let (deliveries, answers): (Vec<ChatDelivery>, Vec<_>) =
            batch.into_iter().map(|j| (j.delivery, j.answer)).unzip();
        let results = store.apply_chat_deliveries(&deliveries).await;
        for (answer, result) in answers.into_iter().zip(results) {
            // The sender may have gone (its client hung up): the event is
            // applied all the same, and a retry gets this answer.
            let _ = answer.send(result);
        }
    }
}
