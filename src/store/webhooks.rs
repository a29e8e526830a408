//! Outbound webhooks: subscriptions and the outbox of deliveries.
//!
//! Deliveries are written by the database itself, in the transaction of the
//! change they announce: a trigger on `task_changes` adds one delivery per
//! active subscription that wants the change's type. The deliverer claims
//! due deliveries (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the write lock on
//! SQLite) for a lease, and only the oldest pending delivery of each task and
//! subscription at a time, so a subscriber sees a task's changes in order.
use super::rows::RowExt;
use super::{Store, StoreError, StoreResult, WriteTx, with_pool};
use crate::domain::{Millis, now_millis};
use std::sync::OnceLock;
use tokio::sync::watch;

/// The PostgreSQL channel on which every worker's deliverer is woken (a
/// trigger notifies it when deliveries are written).
pub const PG_CHANNEL: &str = "switchboard_webhooks";

/// The process's deliverer doorbell, rung after commits that wrote task changes.
pub fn bell() -> &'static watch::Sender<u64> {
    static BELL: OnceLock<watch::Sender<u64>> = OnceLock::new();
    BELL.get_or_init(|| watch::channel(0).0)
}

/// Wakes this process's deliverer (other workers hear PostgreSQL's notification).
pub fn ring() {
    bell().send_modify(|n| *n = n.wrapping_add(1));
}

/// Counts of the outbox ([`Store::outbox_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: i64,
    pub dead: i64,
    /// When the oldest pending delivery's change happened.
    pub oldest_pending_at: Option<Millis>,
}

/// A subscription as stored (the secret is never shown again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub active: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A subscription to create or replace.
#[derive(Debug, Clone)]
pub struct SubscriptionUpsert {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// `None` keeps the stored one.
    pub secret: Option<String>,
    pub description: Option<String>,
    pub active: bool,
}

/// A delivery as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub subscription_id: String,
    pub change_id: i64,
    pub task_id: String,
    pub kind: String,
    pub state: String,
    pub attempts: i64,
    pub changed_at: Millis,
    pub next_attempt_at: Option<Millis>,
    pub last_attempt_at: Option<Millis>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<Millis>,
    pub dead_at: Option<Millis>,
}

/// A delivery claimed for sending, with what it takes to send it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub subscription_id: String,
    pub change_id: i64,
    pub task_id: String,
    pub kind: String,
    pub session_id: Option<String>,
    pub agent_id: Option<String>,
    /// The change's JSON object.
    pub payload: String,
    pub changed_at: Millis,
    /// Attempts made before this one.
    pub attempts: i64,
    /// Since when it is being tried (its first attempt, or the first after
    /// a redelivery; 0 until then): time spent waiting behind the task's
    /// earlier changes does not count.
    pub retry_from: Millis,
    pub url: String,
    pub secret: String,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum AttemptResult {
    Delivered {
        status: u16,
    },
    /// Try again at `next_attempt_at`, or dead-letter when `None`.
    Failed {
        status: Option<u16>,
        error: String,
        next_attempt_at: Option<Millis>,
    },
}

/// Filters of the deliveries list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub state: Option<String>,
    pub subscription: Option<String>,
    pub task: Option<String>,
    /// Only ids below this (the page cursor).
    pub before: Option<i64>,
    pub limit: u32,
}

const DELIVERY_COLUMNS: &str = "id, subscription_id, change_id, task_id, kind, state, attempts, changed_at, \
     next_attempt_at, last_attempt_at, last_status, last_error, delivered_at, dead_at";

fn delivery_from_row(r: &impl RowExt) -> StoreResult<Delivery> {
    let state = r.text("state")?;
    Ok(Delivery {
        id: r.int("id")?,
        subscription_id: r.text("subscription_id")?,
        change_id: r.int("change_id")?,
        task_id: r.text("task_id")?,
        kind: r.text("kind")?,
        next_attempt_at: if state == "pending" {
            Some(r.int("next_attempt_at")?)
        } else {
            None
        },
        state,
        attempts: r.int("attempts")?,
        changed_at: r.int("changed_at")?,
        last_attempt_at: r.opt_int("last_attempt_at")?,
        last_status: r.opt_int("last_status")?,
        last_error: r.opt_text("last_error")?,
        delivered_at: r.opt_int("delivered_at")?,
        dead_at: r.opt_int("dead_at")?,
    })
}

fn claimed_from_row(r: &impl RowExt) -> StoreResult<ClaimedDelivery> {
    Ok(ClaimedDelivery {
        id: r.int("id")?,
        subscription_id: r.text("subscription_id")?,
        change_id: r.int("change_id")?,
        task_id: r.text("task_id")?,
        kind: r.text("kind")?,
        session_id: r.opt_text("session_id")?,
        agent_id: r.opt_text("agent_id")?,
        payload: r.text("payload")?,
        changed_at: r.int("changed_at")?,
        attempts: r.int("attempts")?,
        retry_from: r.int("retry_from")?,
        url: r.text("url")?,
        secret: r.text("secret")?,
    })
}

/// The deliveries a claim may take: pending, due, not held by another
/// worker's lease, of an active subscription, and the oldest pending one of
/// its task for its subscription (so a task's changes go out in order).
const ELIGIBLE: &str = "FROM webhook_deliveries d
    JOIN webhook_subscriptions s ON s.id = d.subscription_id AND s.active
    WHERE d.state = 'pending' AND d.next_attempt_at <= $1
      AND (d.claimed_until IS NULL OR d.claimed_until < $1)
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                      WHERE e.state = 'pending' AND e.subscription_id = d.subscription_id
                        AND e.task_id = d.task_id AND e.id < d.id)";

impl Store {
    /// Creates or replaces a subscription and its event types.
    pub async fn upsert_subscription(&self, s: &SubscriptionUpsert) -> StoreResult<()> {
        let now = now_millis();
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM webhook_subscriptions WHERE id = $1")
                .bind(&s.id)
                .fetch_optional(&mut *tx)
                .await?;
            match (&exists, &s.secret) {
                (None, None) => {
                    return Err(StoreError::Invalid(crate::domain::DomainError::Invalid(
                        "secret: a new subscription needs one".into(),
                    )));
                }
                (None, Some(secret)) => {
                    sqlx::query(
                        "INSERT INTO webhook_subscriptions (id, url, secret, description, active, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $6)",
                    )
                    .bind(&s.id)
                    .bind(&s.url)
                    .bind(secret)
                    .bind(&s.description)
                    .bind(s.active)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                (Some(_), secret) => {
                    sqlx::query(
                        "UPDATE webhook_subscriptions SET url = $2, secret = COALESCE($3, secret), description = $4,
                            active = $5, updated_at = $6
                         WHERE id = $1",
                    )
                    .bind(&s.id)
                    .bind(&s.url)
                    .bind(secret)
                    .bind(&s.description)
                    .bind(s.active)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            sqlx::query("DELETE FROM webhook_subscription_events WHERE subscription_id = $1")
                .bind(&s.id)
                .execute(&mut *tx)
                .await?;
            for e in &s.events {
                sqlx::query("INSERT INTO webhook_subscription_events (subscription_id, event) VALUES ($1, $2)")
                    .bind(&s.id)
                    .bind(e)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        ring();
        Ok(())
    }

    /// The subscriptions, by id.
    pub async fn subscriptions(&self) -> StoreResult<Vec<Subscription>> {
        let ids: Vec<String> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT id FROM webhook_subscriptions ORDER BY id").fetch_all(pool).await?
        });
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.subscription(&id).await?);
        }
        Ok(out)
    }

    pub async fn subscription(&self, id: &str) -> StoreResult<Subscription> {
        with_pool!(self, pool => {
            let row = sqlx::query(
                "SELECT id, url, description, active, created_at, updated_at FROM webhook_subscriptions WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("webhook subscription '{id}'")))?;
            let events: Vec<String> = sqlx::query_scalar(
                "SELECT event FROM webhook_subscription_events WHERE subscription_id = $1 ORDER BY event",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            Ok(Subscription {
                id: row.text("id")?,
                url: row.text("url")?,
                events,
                description: row.opt_text("description")?,
                active: row.flag("active")?,
                created_at: row.int("created_at")?,
                updated_at: row.int("updated_at")?,
            })
        })
    }

    /// Deletes a subscription and its deliveries.
    pub async fn delete_subscription(&self, id: &str) -> StoreResult<()> {
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query("DELETE FROM webhook_deliveries WHERE subscription_id = $1").bind(id).execute(&mut *tx).await?;
            let n = sqlx::query("DELETE FROM webhook_subscriptions WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            n
        });
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("webhook subscription '{id}'")))
        }
    }

    /// Claims up to `limit` deliveries for `worker` until `lease_until`.
    pub async fn claim_deliveries(
        &self,
        limit: usize,
        worker: &str,
        lease_until: Millis,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let now = now_millis();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match self {
            Store::Postgres(pool, _) => {
                let sql = format!(
                    "UPDATE webhook_deliveries w SET claimed_until = $3, claimed_by = $4
                     FROM (SELECT d.id {ELIGIBLE} ORDER BY d.next_attempt_at, d.id LIMIT $2 FOR UPDATE OF d SKIP LOCKED) c,
                          webhook_subscriptions s
                     WHERE w.id = c.id AND s.id = w.subscription_id
                     RETURNING w.id, w.subscription_id, w.change_id, w.task_id, w.kind, w.session_id, w.agent_id,
                        w.payload, w.changed_at, w.attempts, w.retry_from, s.url, s.secret"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(limit)
                    .bind(lease_until)
                    .bind(worker)
                    .fetch_all(pool)
                    .await?;
                let mut claimed: Vec<ClaimedDelivery> = rows
                    .iter()
                    .map(claimed_from_row)
                    .collect::<StoreResult<_>>()?;
                claimed.sort_by_key(|d| d.id);
                Ok(claimed)
            }
            Store::Sqlite(pool, _) => {
                // Look before taking the one write lock: most wake-ups find nothing.
                let look = format!("SELECT d.id {ELIGIBLE} LIMIT 1");
                let any: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(look))
                    .bind(now)
                    .fetch_optional(pool)
                    .await?;
                if any.is_none() {
                    return Ok(Vec::new());
                }
                let mut tx = pool.begin_write().await?;
                let sql =
                    format!("SELECT d.id {ELIGIBLE} ORDER BY d.next_attempt_at, d.id LIMIT $2");
                let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut claimed = Vec::with_capacity(ids.len());
                for id in ids {
                    sqlx::query(
                        "UPDATE webhook_deliveries SET claimed_until = $1, claimed_by = $2 WHERE id = $3",
                    )
                    .bind(lease_until)
                    .bind(worker)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    let row = sqlx::query(
                        "SELECT w.id, w.subscription_id, w.change_id, w.task_id, w.kind, w.session_id, w.agent_id,
                            w.payload, w.changed_at, w.attempts, w.retry_from, s.url, s.secret
                         FROM webhook_deliveries w JOIN webhook_subscriptions s ON s.id = w.subscription_id
                         WHERE w.id = $1",
                    )
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                    claimed.push(claimed_from_row(&row)?);
                }
                tx.commit().await?;
                Ok(claimed)
            }
        }
    }

    /// Records how an attempt ended and lets the delivery go (the lease ends).
    pub async fn record_attempt(&self, id: i64, result: &AttemptResult) -> StoreResult<()> {
        let now = now_millis();
        with_pool!(self, pool => {
            match result {
                AttemptResult::Delivered { status } => {
                    sqlx::query(
                        "UPDATE webhook_deliveries SET state = 'delivered', delivered_at = $1, last_attempt_at = $1,
                            attempts = attempts + 1, last_status = $2, last_error = NULL, claimed_until = NULL
                         WHERE id = $3 AND state = 'pending'",
                    )
                    .bind(now)
                    .bind(i64::from(*status))
                    .bind(id)
                    .execute(pool)
                    .await?;
                }
                AttemptResult::Failed { status, error, next_attempt_at } => {
                    let error: String = error.chars().take(500).collect();
                    sqlx::query(
                        "UPDATE webhook_deliveries SET last_attempt_at = $1, attempts = attempts + 1,
                            retry_from = CASE WHEN attempts = 0 OR retry_from = 0 THEN $1 ELSE retry_from END,
                            last_status = $2, last_error = $3, claimed_until = NULL,
                            state = CASE WHEN $4 IS NULL THEN 'dead' ELSE 'pending' END,
                            next_attempt_at = COALESCE($4, next_attempt_at),
                            dead_at = CASE WHEN $4 IS NULL THEN $1 ELSE NULL END
                         WHERE id = $5 AND state = 'pending'",
                    )
                    .bind(now)
                    .bind(status.map(i64::from))
                    .bind(&error)
                    .bind(*next_attempt_at)
                    .bind(id)
                    .execute(pool)
                    .await?;
                }
            }
        });
        Ok(())
    }

    /// Records deliveries the subscribers accepted (id, HTTP status), at once.
    pub async fn record_delivered(&self, delivered: &[(i64, u16)]) -> StoreResult<()> {
        if delivered.is_empty() {
            return Ok(());
        }
        let now = now_millis();
        match self {
            Store::Postgres(pool, _) => {
                let ids: Vec<i64> = delivered.iter().map(|(id, _)| *id).collect();
                let statuses: Vec<i64> = delivered.iter().map(|(_, s)| i64::from(*s)).collect();
                sqlx::query(
                    "UPDATE webhook_deliveries w SET state = 'delivered', delivered_at = $1, last_attempt_at = $1,
                        attempts = w.attempts + 1, last_status = v.status, last_error = NULL, claimed_until = NULL
                     FROM UNNEST($2::BIGINT[], $3::BIGINT[]) AS v(id, status)
                     WHERE w.id = v.id AND w.state = 'pending'",
                )
                .bind(now)
                .bind(&ids)
                .bind(&statuses)
                .execute(pool)
                .await?;
            }
            Store::Sqlite(pool, _) => {
                let mut tx = pool.begin_write().await?;
                for (id, status) in delivered {
                    sqlx::query(
                        "UPDATE webhook_deliveries SET state = 'delivered', delivered_at = $1, last_attempt_at = $1,
                            attempts = attempts + 1, last_status = $2, last_error = NULL, claimed_until = NULL
                         WHERE id = $3 AND state = 'pending'",
                    )
                    .bind(now)
                    .bind(i64::from(*status))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// When the next delivery a claim could take is due, if any (deliveries
    /// in flight, and those waiting behind an earlier one of their task, do
    /// not count).
    pub async fn next_delivery_due(&self) -> StoreResult<Option<Millis>> {
        let sql = "SELECT min(d.next_attempt_at) FROM webhook_deliveries d
            JOIN webhook_subscriptions s ON s.id = d.subscription_id AND s.active
            WHERE d.state = 'pending' AND (d.claimed_until IS NULL OR d.claimed_until < $1)
              AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e
                              WHERE e.state = 'pending' AND e.subscription_id = d.subscription_id
                                AND e.task_id = d.task_id AND e.id < d.id)";
        with_pool!(self, pool => {
            Ok(sqlx::query_scalar::<_, Option<i64>>(sql)
                .bind(now_millis())
                .fetch_one(pool)
                .await?)
        })
    }

    /// The outbox at a glance, for the metrics: deliveries pending and
    /// dead-lettered, and when the oldest pending change happened.
    pub async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
        with_pool!(self, pool => {
            let (pending, dead, oldest): (i64, i64, Option<i64>) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'),
                        (SELECT count(*) FROM webhook_deliveries WHERE state = 'dead'),
                        (SELECT min(changed_at) FROM webhook_deliveries WHERE state = 'pending')",
            )
            .fetch_one(pool)
            .await?;
            Ok(OutboxStats { pending, dead, oldest_pending_at: oldest })
        })
    }

    /// Deliveries for operators, newest first.
    pub async fn deliveries(&self, filter: &DeliveryFilter) -> StoreResult<Vec<Delivery>> {
        use super::rows::{Arg, bind_all};
        let mut sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE 1 = 1");
        let mut args = Vec::new();
        for (column, value) in [
            ("state", &filter.state),
            ("subscription_id", &filter.subscription),
            ("task_id", &filter.task),
        ] {
            if let Some(v) = value {
                args.push(Arg::Text(v.clone()));
                sql.push_str(&format!(" AND {column} = ${}", args.len()));
            }
        }
        if let Some(b) = filter.before {
            args.push(Arg::Int(b));
            sql.push_str(&format!(" AND id < ${}", args.len()));
        }
        args.push(Arg::Int(i64::from(filter.limit)));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", args.len()));
        with_pool!(self, pool => {
            let rows = bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), &args).fetch_all(pool).await?;
            rows.iter().map(delivery_from_row).collect()
        })
    }

    pub async fn delivery(&self, id: i64) -> StoreResult<Delivery> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1");
        with_pool!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(pool).await? {
                Some(r) => delivery_from_row(&r),
                None => Err(StoreError::NotFound(format!("delivery {id}"))),
            }
        })
    }

    /// Sends dead deliveries again, with the same ids: `id`, or every dead
    /// one of `subscription`. They are tried again for the whole retry
    /// period. Returns how many.
    pub async fn redeliver(&self, id: Option<i64>, subscription: Option<&str>) -> StoreResult<u64> {
        let now = now_millis();
        // `retry_from = 0`: the window opens at the next attempt. So for the
        // pending changes of the same tasks and subscriptions, which now
        // wait behind the redelivered ones again.
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1, retry_from = 0,
                    dead_at = NULL, claimed_until = NULL
                 WHERE state = 'dead' AND ($2 IS NULL OR id = $2) AND ($3 IS NULL OR subscription_id = $3)",
            )
            .bind(now)
            .bind(id)
            .bind(subscription)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "UPDATE webhook_deliveries SET retry_from = 0
                 WHERE state = 'pending' AND retry_from <> 0 AND EXISTS (
                     SELECT 1 FROM webhook_deliveries r
                     WHERE r.state = 'pending' AND r.retry_from = 0
                       AND r.task_id = webhook_deliveries.task_id
                       AND r.subscription_id = webhook_deliveries.subscription_id
                       AND r.id < webhook_deliveries.id)",
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            n
        });
        self.ring_webhooks();
        Ok(n)
    }

    /// Deletes delivered and dead deliveries older than `before`; returns how many.
    pub async fn prune_deliveries(&self, before: Millis) -> StoreResult<u64> {
        with_pool!(self, pool => {
            Ok(sqlx::query(
                "DELETE FROM webhook_deliveries
                 WHERE (state = 'delivered' AND delivered_at < $1) OR (state = 'dead' AND dead_at < $1)",
            )
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected())
        })
    }
}
