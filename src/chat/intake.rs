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
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::{Arc, Mutex};
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
        let results = isolated(Arc::new(deliveries), |all, range| {
            let store = store.clone();
            async move { store.apply_chat_deliveries(&all[range]).await }
        })
        .await;
        for (answer, result) in answers.into_iter().zip(results) {
            // The sender may have gone (its client hung up): the event is
            // applied all the same, and a retry gets this answer.
            let _ = answer.send(result);
        }
    }
}

/// Applies `items` with `apply` in a task of its own, so that a panic (a
/// bug, for some event) cannot end the applier and with it every later
/// event of its chats. Should the batch panic, each item is applied alone:
/// the others succeed, and only the item that panics again is answered with
/// an error (its sender retries). What the panicked run had committed (all
/// of it, if it panicked after the commit; the events before, in the
/// one-by-one fallback) is not applied twice — every event is recorded by
/// its id in the transaction that applies it — but is answered as a replay.
async fn isolated<D, R, F, Fut>(items: Arc<Vec<D>>, apply: F) -> Vec<StoreResult<R>>
where
    D: Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(Arc<Vec<D>>, Range<usize>) -> Fut,
    Fut: Future<Output = Vec<StoreResult<R>>> + Send + 'static,
{
    let n = items.len();
    match tokio::spawn(apply(items.clone(), 0..n)).await {
        Ok(results) => return results,
        Err(e) if e.is_panic() => {
            tracing::error!(events = n, error = %e, "applying chat events panicked");
        }
        // The runtime is shutting down: nothing more is applied.
        Err(_) => {
            return (0..n)
                .map(|_| Err(StoreError::Database(sqlx::Error::PoolClosed)))
                .collect();
        }
    }
    if n == 1 {
        // Alone already: not again.
        return vec![Err(StoreError::Database(sqlx::Error::WorkerCrashed))];
    }
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        match tokio::spawn(apply(items.clone(), i..i + 1)).await {
            Ok(mut one) if one.len() == 1 => results.push(one.remove(0)),
            Ok(_) | Err(_) => {
                tracing::error!(
                    event = i,
                    "applying one chat event alone panicked; it is refused"
                );
                results.push(Err(StoreError::Database(sqlx::Error::WorkerCrashed)));
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles its numbers, and panics on 13 (a stand-in for a bug).
    async fn double(all: Arc<Vec<u32>>, range: Range<usize>) -> Vec<StoreResult<u32>> {
        all[range]
            .iter()
            .map(|&x| {
                assert_ne!(x, 13, "unlucky");
                Ok(x * 2)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_is_applied_whole_when_nothing_panics() {
        let out = isolated(Arc::new(vec![1, 2, 3]), double).await;
        let out: Vec<u32> = out.into_iter().map(|r| r.expect("applied")).collect();
        assert_eq!(out, vec![2, 4, 6]);
    }

    #[tokio::test]
    async fn a_panic_fails_only_its_own_item_and_the_applier_goes_on() {
        let out = isolated(Arc::new(vec![1, 13, 3]), double).await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].as_ref().ok(), Some(&2));
        assert!(matches!(
            out[1],
            Err(StoreError::Database(sqlx::Error::WorkerCrashed))
        ));
        assert_eq!(out[2].as_ref().ok(), Some(&6));
        // One bad event alone fails; the next batch is served.
        let out = isolated(Arc::new(vec![13]), double).await;
        assert!(matches!(
            out[..],
            [Err(StoreError::Database(sqlx::Error::WorkerCrashed))]
        ));
        let out = isolated(Arc::new(vec![5]), double).await;
        assert_eq!(out[0].as_ref().ok(), Some(&10));
    }
}
