//! A few PostgreSQL connections of the pool kept aside for the reads the
//! agents' page makes on every click and refresh (My Sessions, a task with
//! its sessions and context records, a session: [`super::with_reader`]),
//! lent and taken back without what sqlx does on every release: a task
//! spawned per connection and a ping (a round trip that wakes the backend)
//! before the connection is idle again.
//!
//! A lane connection is a checked-out [`PoolConnection`] (it counts against
//! the pool's `max_connections`), taken from the pool when needed and kept;
//! the lane keeps at most half the pool, which also bounds how many of
//! these reads run at once. A connection goes back to the pool (with
//! sqlx's ping and cleanup) whenever a use did not end cleanly: an error, or
//! a request dropped mid-query, which may leave the protocol mid-way.
//! Connections the lane has not needed for a few seconds go back too (at the
//! next lend, or by [`sweep_loop`]), so the lane holds only what the current
//! load of these reads uses, and one held for [`MAX_HELD`] is handed back so
//! the pool's lifetime rules still apply.
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// A lane connection idle for longer than this goes back to the pool. As
/// long as it is the pool's ping threshold, a connection that sat idle
/// anywhere is checked before its next use.
const RETURN_IDLE_AFTER: Duration = super::PING_IDLE_AFTER;

/// A lane connection goes back to the pool after being kept this long.
const MAX_HELD: Duration = Duration::from_secs(30 * 60);

/// Waiting for a lane connection fails after this (the pool's own wait).
const LEND_TIMEOUT: Duration = super::ACQUIRE_TIMEOUT;

struct Kept {
    conn: PoolConnection<Postgres>,
    taken_at: Instant,
    idle_since: Instant,
}

/// The lane: at most `size` connections, each used by one request at a time.
pub(crate) struct ReadLane {
    idle: Mutex<Vec<Kept>>,
    permits: Semaphore,
    size: usize,
}

impl std::fmt::Debug for ReadLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadLane")
            .field("size", &self.size)
            .finish()
    }
}

/// How many of a pool's `max_connections` the lane may keep: half, so that
/// writes and every other read keep the other half; none for a pool too
/// small to share.
pub(crate) fn lane_size(max_connections: u32) -> usize {
    if max_connections < 4 {
        0
    } else {
        (max_connections / 2) as usize
    }
}

impl ReadLane {
    pub(crate) fn new(size: usize) -> ReadLane {
        ReadLane {
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size),
            size,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        // A poisoned lock only means a panic between a push and a pop: the
        // connections it holds are whole.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection for one read: a kept one, or a new one from `pool`.
    /// With no lane (a small pool) the pool's own connection is lent.
    pub(crate) async fn lend<'a>(&'a self, pool: &PgPool) -> Result<Lent<'a>, sqlx::Error> {
        if self.size == 0 {
            let now = Instant::now();
            return Ok(Lent {
                lane: self,
                kept: Kept {
                    conn: pool.acquire().await?,
                    taken_at: now,
                    idle_since: now,
                },
                keep: false,
                _permit: None,
            });
        }
        let deadline = tokio::time::Instant::now() + LEND_TIMEOUT;
        let permit = tokio::time::timeout_at(deadline, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        self.return_unneeded();
        let kept = self.idle().pop();
        let now = Instant::now();
        let kept = match kept {
            Some(k) if now.duration_since(k.taken_at) < MAX_HELD => k,
            // None kept, or one held long enough: that one back to the pool
            // (which applies its lifetime) first, then a connection from it.
            held => {
                drop(held);
                if pool.is_closed() {
                    return Err(sqlx::Error::PoolClosed);
                }
                let conn = tokio::time::timeout_at(deadline, pool.acquire())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)??;
                Kept {
                    conn,
                    taken_at: now,
                    idle_since: now,
                }
            }
        };
        Ok(Lent {
            lane: self,
            kept,
            keep: true,
            _permit: Some(permit),
        })
    }

    /// How many connections the lane keeps between lends now.
    pub(crate) fn kept(&self) -> usize {
        self.idle().len()
    }

    /// Gives every kept connection back to the pool (before it closes: a
    /// pool waits for its checked-out connections).
    pub(crate) fn release_all(&self) {
        self.permits.close();
        let all: Vec<Kept> = self.idle().drain(..).collect();
        drop(all);
    }

    /// Gives back to the pool, for writes and other reads, the kept
    /// connections the lane has not needed for [`RETURN_IDLE_AFTER`] (the
    /// pool pings them before their next use). Run before each lend and
    /// every few seconds by [`sweep_loop`].
    fn return_unneeded(&self) {
        let now = Instant::now();
        let unneeded: Vec<Kept> = {
            let mut idle = self.idle();
            // Least recently used first.
            let stale = idle
                .iter()
                .take_while(|k| now.duration_since(k.idle_since) > RETURN_IDLE_AFTER)
                .count();
            idle.drain(..stale).collect()
        };
        // Outside the lock: each drop hands its connection to sqlx.
        drop(unneeded);
    }
}

/// Returns the lane's unneeded connections to the pool every
/// [`RETURN_IDLE_AFTER`] while these reads are not asked for (a lend does
/// it too), so a burst does not keep half the pool from other work. Ends with
/// the store (the last clone dropped) or when it is closed.
pub(crate) async fn sweep_loop(companions: std::sync::Weak<super::PgCompanions>) {
    let mut tick = tokio::time::interval(RETURN_IDLE_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(companions) = companions.upgrade() else {
            return;
        };
        if companions.lane.permits.is_closed() {
            return;
        }
        companions.lane.return_unneeded();
    }
}

impl Drop for ReadLane {
    fn drop(&mut self) {
        // A pool connection dropped outside a tokio runtime panics (sqlx
        // spawns its return to the pool): the last clone of a store may go
        // after its runtime. The pool is going too; each socket just closes.
        if tokio::runtime::Handle::try_current().is_err() {
            for kept in self.idle().drain(..) {
                drop(kept.conn.leak());
            }
        }
    }
}

/// A lent connection. [`Lent::done`] after a use that ended cleanly keeps it
/// in the lane; dropped without that, it goes back to the pool, which checks
/// it.
pub(crate) struct Lent<'a> {
    lane: &'a ReadLane,
    kept: Kept,
    /// Whether `done` keeps it: not with no lane (a small pool).
    keep: bool,
    _permit: Option<SemaphorePermit<'a>>,
}

impl Lent<'_> {
    pub(crate) fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.kept.conn
    }

    /// The use ended with the connection ready for the next query.
    pub(crate) fn done(self) {
        let Lent {
            lane,
            mut kept,
            keep,
            _permit,
        } = self;
        if !keep {
            return;
        }
        // Checked under the lock that `release_all` takes after closing: a
        // connection is never kept once the lane has been emptied (the
        // pool's close would wait for it forever).
        let mut idle = lane.idle();
        if !lane.permits.is_closed() {
            kept.idle_since = Instant::now();
            idle.push(kept);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lane_takes_half_of_a_pool_large_enough_to_share() {
        assert_eq!(lane_size(1), 0);
        assert_eq!(lane_size(3), 0);
        assert_eq!(lane_size(4), 2);
        assert_eq!(lane_size(16), 8);
        assert_eq!(lane_size(17), 8);
    }
}
