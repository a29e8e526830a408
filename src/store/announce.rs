//! Doorbells across workers on PostgreSQL, rung after commit.
//!
//! Other workers' routers, webhook deliverers and agents' event streams are
//! woken by `NOTIFY`. A `NOTIFY` inside a write transaction costs every
//! writer dearly: PostgreSQL takes one lock for the whole database while such
//! a transaction commits, held through its WAL flush, so all transactions
//! that notify commit one after the other (measured here with 32 clients:
//! 1,480 commits/s with a `NOTIFY`, 4,680 without). So nothing notifies inside
//! a transaction: after its commit, the writer asks this announcer, which
//! sends what was asked since its last round in one statement of its own
//! (no WAL to flush, so the lock is held for microseconds), one at a time.
//!
//! A worker that dies between a commit and its announcement leaves the
//! others to find the work by their safety sweeps (`routing.sweep_ms`,
//! `webhooks.sweep_ms`, one second by default) and agents' streams by their
//! next event or reconnect: a wake-up is late, nothing is lost (the
//! database holds the work; the bells only say "look now").
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// What was asked since the last round.
#[derive(Debug, Default)]
struct Pending {
    routing: bool,
    webhooks: bool,
    /// Agents whose event streams should look.
    agents: BTreeSet<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.routing && !self.webhooks && self.agents.is_empty()
    }

    /// Channels and payloads, for one `pg_notify` each.
    fn notifications(&self) -> (Vec<&'static str>, Vec<String>) {
        let mut channels = Vec::with_capacity(self.agents.len() + 2);
        let mut payloads = Vec::with_capacity(self.agents.len() + 2);
        if self.routing {
            channels.push(super::routing::PG_CHANNEL);
            payloads.push(String::new());
        }
        if self.webhooks {
            channels.push(super::webhooks::PG_CHANNEL);
            payloads.push(String::new());
        }
        for agent in &self.agents {
            channels.push(super::events::PG_CHANNEL);
            payloads.push(agent.clone());
        }
        (channels, payloads)
    }

    fn merge(&mut self, other: Pending) {
        self.routing |= other.routing;
        self.webhooks |= other.webhooks;
        self.agents.extend(other.agents);
    }
}

/// One database's announcer, shared by the clones of its [`super::Store`].
/// Its sender task ends when the last clone is dropped.
#[derive(Debug)]
pub struct Announcer {
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // The sender finds the pending set gone and stops.
        self.wake.notify_one();
    }
}

impl Announcer {
    /// Starts the sender for `pool` (on the current tokio runtime).
    pub(super) fn start(pool: PgPool) -> Arc<Announcer> {
        let announcer = Arc::new(Announcer {
            pending: Arc::default(),
            wake: Arc::new(Notify::new()),
        });
        tokio::spawn(send_loop(
            pool,
            Arc::downgrade(&announcer.pending),
            announcer.wake.clone(),
        ));
        announcer
    }

    fn ask(&self, f: impl FnOnce(&mut Pending)) {
        // A poisoned lock only means a panic elsewhere mid-update of flags
        // and a set: what it holds is still a valid request.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut pending);
        drop(pending);
        self.wake.notify_one();
    }

    pub(super) fn routing(&self) {
        self.ask(|p| p.routing = true);
    }

    pub(super) fn webhooks(&self) {
        self.ask(|p| p.webhooks = true);
    }

    pub(super) fn agents<'a>(&self, agents: impl IntoIterator<Item = &'a String>) {
        let mut agents = agents.into_iter().peekable();
        if agents.peek().is_none() {
            return;
        }
        self.ask(|p| p.agents.extend(agents.cloned()));
    }
}

/// Sends what was asked, one statement at a time, until the announcer is
/// dropped or the pool closed. What a failed round held is sent with the
/// next one.
async fn send_loop(pool: PgPool, pending: Weak<Mutex<Pending>>, wake: Arc<Notify>) {
    let mut failures = 0u32;
    loop {
        wake.notified().await;
        let Some(shared) = pending.upgrade() else {
            return;
        };
        let batch = std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner()));
        drop(shared);
        if batch.is_empty() {
            continue;
        }
        if pool.is_closed() {
            return;
        }
        let (channels, payloads) = batch.notifications();
        let sent = sqlx::query("SELECT pg_notify(c, p) FROM UNNEST($1::text[], $2::text[]) AS n(c, p)")
            .bind(&channels)
            .bind(&payloads)
            .execute(&pool)
            .await;
        match sent {
            Ok(_) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "cannot announce changes to other workers; retrying (their sweeps find the work meanwhile)");
                }
                let Some(shared) = pending.upgrade() else {
                    return;
                };
                shared.lock().unwrap_or_else(|p| p.into_inner()).merge(batch);
                drop(shared);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(10)))).await;
                wake.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_sends_each_bell_once() {
        let mut p = Pending::default();
        assert!(p.is_empty());
        p.routing = true;
        p.agents.insert("b".into());
        p.agents.insert("a".into());
        p.agents.insert("a".into());
        let (channels, payloads) = p.notifications();
        assert_eq!(
            channels,
            [
                super::super::routing::PG_CHANNEL,
                super::super::events::PG_CHANNEL,
                super::super::events::PG_CHANNEL
            ]
        );
        assert_eq!(payloads, ["", "a", "b"]);
        let mut q = Pending {
            webhooks: true,
            ..Pending::default()
        };
        q.merge(p);
        assert!(q.routing && q.webhooks && q.agents.len() == 2);
    }
}
