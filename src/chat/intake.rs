//! Webhook chat events applied together: events that arrive while the
//! database is busy with earlier ones wait in a queue and are applied in one
//! transaction (group commit), each exactly once and answered as if alone
//! ([`Store::apply_chat_deliveries`]). One event alone is applied at once
//! (on PostgreSQL by the same set-wise statements as a batch); under load a
//! commit, its round trips and its WAL flush serve many.
//!
//! Events are spread over a few appliers by chat: one chat's events always
//! meet in the same applier, so they keep their order and batches do not
//! wait for each other's locks on a chat (or its task). Should two
//! transactions still deadlock (on agents' rows, say), PostgreSQL ends one
//! and its events are applied one by one.
use crate::store::chats::{ChatDelivery, Delivered};
use crate::store::{Store, StoreError, StoreResult};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Events in one transaction at most.
const MAX_BATCH: usize = 64;
/// Deliveries being worked on at once (their customers resolved, queued,
/// applied); others wait their turn before touching the database, so that
/// under a flood the appliers do not queue for connections behind thousands
/// of lookups.
const ADMITTED: usize = 256;
/// Events waiting per applier at most; a sender beyond that waits its turn.
const QUEUE: usize = 256;

/// Transactions in flight at once, on either backend. On PostgreSQL a batch
/// costs about as many round trips as one event (`store/chat_sets.rs`), so
/// fewer, larger batches serve more: measured on 2 CPUs, 32 clients, 1
/// applier 2,240 events/s, 2 appliers 2,010, 4 appliers 1,718, 8 appliers
/// 1,434. Two keep a second transaction going while one waits on its round
/// trips or a lock. SQLite has one writer.
const APPLIERS: usize = 2;

struct Job {
    delivery: ChatDelivery,
    answer: oneshot::Sender<StoreResult<Delivered>>,
}

/// The appliers' queues (started with the first event, on the caller's
/// runtime; they stop when the intake is dropped).
pub struct Intake {
    store: Store,
    queues: Mutex<Vec<mpsc::Sender<Job>>>,
    admission: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Intake")
    }
}

impl Intake {
    pub fn new(store: Store) -> Intake {
        Intake {
            store,
            queues: Mutex::new(Vec::new()),
            admission: tokio::sync::Semaphore::new(ADMITTED),
        }
    }

    /// Waits for a turn to work on a delivery (first come, first served);
    /// the turn lasts as long as the permit is held.
    pub async fn admit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.admission.acquire().await.ok()
    }

    /// The queue of the applier of `delivery`'s chat.
    fn queue_of(&self, delivery: &ChatDelivery) -> mpsc::Sender<Job> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if queues.is_empty() {
            for _ in 0..APPLIERS {
                let (jobs, queue) = mpsc::channel(QUEUE);
                tokio::spawn(applier(self.store.clone(), queue));
                queues.push(jobs);
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&delivery.input.event.channel, &delivery.input.event.chat_id).hash(&mut h);
        let i = usize::try_from(h.finish() % queues.len() as u64).unwrap_or(0);
        queues[i].clone()
    }

    /// Applies one delivered event (with whatever else is waiting) and
    /// answers once it is committed.
    pub async fn apply(&self, delivery: ChatDelivery) -> StoreResult<Delivered> {
        let queue = self.queue_of(&delivery);
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::Database(sqlx::Error::PoolClosed);
        queue
            .send(Job { delivery, answer })
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Takes what is waiting (up to [`MAX_BATCH`]), applies it, answers each;
/// until the intake is dropped.
async fn applier(store: Store, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
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
