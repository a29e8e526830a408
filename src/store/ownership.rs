//! Ownership of long-lived sources that must have exactly one owner at a time
//! (a mailbox, a chat channel's sync loop, the outbox, the retention job),
//! bound to the life of the owner rather than to a lease that must expire:
//!
//! - **PostgreSQL**: the owner holds a session-level advisory lock on a
//!   connection of its own, outside the pool. The lock lives exactly as long
//!   as that connection: when a worker dies (SIGKILL, crash, reboot, a cut
//!   cable), PostgreSQL ends its session and the lock is free. A killed
//!   process's socket is closed by its kernel at once; a vanished host is
//!   noticed through TCP keepalives tuned to a few seconds
//!   ([`pg_keepalive_options`]). Other workers look for free sources every
//!   `check_interval` and take them.
//! - **SQLite**: one worker per database file. The process holds an OS lock
//!   on `<database>.lock` from start to exit and owns every source; a second
//!   process on the same file is refused with [`OwnershipError::InUse`].
//!
//! **Fencing.** Each acquisition bumps the source's `epoch` in the
//! `ownership` table and hands the owner a [`Fence`] with it. The owner's
//! work is committed in a transaction that checks the fence
//! ([`check_fence!`]): an owner whose lock connection was cut while it
//! worked commits nothing once another worker has taken the source over.
//! On PostgreSQL the check holds a share lock on the source's row until the
//! commit, so a takeover waits for a commit already under way, and the new
//! owner reads what it committed.
//!
//! Use:
//! ```text
//! let ownership = Ownership::start(store, settings).await?;   // one per process
//! if let Some(guard) = ownership.try_acquire("mailbox", "support-inbox").await? {
//!     // work; commit with check_fence!(store, tx, guard.fence()) inside the transaction
//!     // guard.lost().await resolves if the lock connection is lost
//!     guard.release().await;                                  // or drop it
//! }
//! ```
//! [`crate::supervise::run_owned`] runs one loop per owned source on top of it.
use super::{Store, StoreError, StoreResult, WriteTx};
use crate::domain::now_millis;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// The first key of every ownership advisory lock (the second is the
/// source's `lock_id`): "SBOW". Two-key locks never meet the one-key lock
/// of migrations.
pub const OWNERSHIP_LOCK_CLASS: i32 = 0x5342_4f57;

/// Longest wait of a takeover for a commit under way (a dead worker's open
/// transaction waits for its connection to be dropped instead).
const TAKEOVER_LOCK_TIMEOUT: &str = "5s";

/// How a process owns its sources.
#[derive(Debug, Clone)]
pub struct OwnershipSettings {
    /// This worker's name, shown as the owner.
    pub worker_id: String,
    /// How often the owner checks that its lock connection is alive, and
    /// how often [`crate::supervise::run_owned`] looks for free sources.
    pub check_interval: Duration,
    /// A lock connection that does not answer within this long is taken
    /// for lost; PostgreSQL is told to drop a silent peer within about this
    /// long too ([`pg_keepalive_options`]).
    pub dead_after: Duration,
}

impl OwnershipSettings {
    pub fn new(worker_id: impl Into<String>) -> Self {
        OwnershipSettings {
            worker_id: worker_id.into(),
            check_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
        }
    }
}

/// PostgreSQL settings (sent at connection start) that make the server drop
/// the connection of a peer that vanished without closing it (a host that
/// lost power or network) within about `dead_after`: keepalive probes after
/// half of it idle, one a second, and unacknowledged data given up after it.
pub fn pg_keepalive_options(dead_after: Duration) -> Vec<(&'static str, String)> {
    let secs = dead_after.as_secs().max(2);
    let idle = (secs / 2).max(1);
    vec![
        ("tcp_keepalives_idle", idle.to_string()),
        ("tcp_keepalives_interval", "1".into()),
        ("tcp_keepalives_count", (secs - idle).max(1).to_string()),
        ("tcp_user_timeout", (secs * 1000).to_string()),
    ]
}

/// A name for this worker: host name, process id and a random suffix.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &crate::domain::id::new_id("w")[2..8]
    )
}

/// Proof of ownership of one source: its kind, id and the epoch this owner
/// got. Checked by [`check_fence!`] in the transaction that commits the
/// owner's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub kind: String,
    pub id: String,
    pub epoch: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error(
        "the SQLite database {database} is in use by another switchboard process{}: SQLite serves one worker per database file (this one holds {lock_file}); stop that process first, or use PostgreSQL to run several workers",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    InUse {
        database: String,
        lock_file: String,
        pid: Option<u32>,
    },
    #[error("cannot lock {path}: {source}")]
    LockFile {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Fails the transaction `$tx` with [`StoreError::LeaseLost`] unless `$fence`
/// (a [`Fence`]) is still the current ownership of its source. Call it in
/// the transaction that commits the owner's work, before its writes. On
/// PostgreSQL it share-locks the source's row until the commit, so a
/// takeover (which bumps the epoch) waits for this commit, and a commit
/// after a takeover fails.
macro_rules! check_fence {
    ($store:expr, $tx:expr, $fence:expr) => {{
        let fence: &$crate::store::ownership::Fence = $fence;
        let sql = match $store {
            $crate::store::Store::Postgres(..) => {
                "SELECT epoch FROM ownership WHERE kind = $1 AND id = $2 FOR SHARE"
            }
            $crate::store::Store::Sqlite(..) => {
                "SELECT epoch FROM ownership WHERE kind = $1 AND id = $2"
            }
        };
        let epoch: Option<i64> = sqlx::query_scalar(sql)
            .bind(&fence.kind)
            .bind(&fence.id)
            .fetch_optional(&mut *$tx)
            .await?;
        if epoch != Some(fence.epoch) {
            return Err($crate::store::StoreError::LeaseLost(format!(
                "{} '{}'",
                fence.kind, fence.id
            )));
        }
    }};
}
pub(crate) use check_fence;

/// The sources this process owns, and how it holds them. One per process;
/// cheap to clone.
#[derive(Clone)]
pub struct Ownership {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("worker_id", &self.inner.settings.worker_id)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Store,
    settings: OwnershipSettings,
    /// Sources held now: (kind, id) → epoch and the signal of its loss.
    held: Mutex<HashMap<(String, String), Held>>,
    /// PostgreSQL advisory lock ids, by (kind, id).
    lock_ids: Mutex<HashMap<(String, String), i32>>,
    /// One acquisition at a time (on PostgreSQL the lock connection's mutex
    /// orders them as well).
    acquiring: tokio::sync::Mutex<()>,
    hold: Hold,
}

struct Held {
    epoch: i64,
    lost: watch::Sender<bool>,
}

enum Hold {
    /// The OS lock on `<database>.lock`, held until the process ends.
    Sqlite { _file: Option<std::fs::File> },
    /// The connection whose session holds the advisory locks.
    Postgres {
        options: Box<PgConnectOptions>,
        conn: tokio::sync::Mutex<Option<PgConnection>>,
    },
}

impl Ownership {
    /// Starts owning for this process. SQLite: takes the lock on
    /// `<database>.lock` (refused while another process holds it).
    /// PostgreSQL: prepares the lock connection and a task that checks it
    /// every `check_interval`; the connection opens at the first acquisition.
    pub async fn start(
        store: &Store,
        settings: OwnershipSettings,
    ) -> Result<Ownership, OwnershipError> {
        let hold = match store {
            Store::Sqlite(pool, _) => {
                let path = pool.connect_options().get_filename().to_path_buf();
                Hold::Sqlite {
                    _file: lock_database_file(&path)?,
                }
            }
            Store::Postgres(pool, _) => {
                let name: String = format!("switchboard-owner {}", settings.worker_id)
                    .chars()
                    .take(63)
                    .collect();
                let options = (*pool.connect_options())
                    .clone()
                    .application_name(&name)
                    .options(pg_keepalive_options(settings.dead_after));
                Hold::Postgres {
                    options: Box::new(options),
                    conn: tokio::sync::Mutex::new(None),
                }
            }
        };
        let ownership = Ownership {
            inner: Arc::new(Inner {
                store: store.clone(),
                settings,
                held: Mutex::new(HashMap::new()),
                lock_ids: Mutex::new(HashMap::new()),
                acquiring: tokio::sync::Mutex::new(()),
                hold,
            }),
        };
        if matches!(store, Store::Postgres(..)) {
            tokio::spawn(keep_checking(Arc::downgrade(&ownership.inner)));
        }
        Ok(ownership)
    }

    pub fn worker_id(&self) -> &str {
        &self.inner.settings.worker_id
    }

    pub fn settings(&self) -> &OwnershipSettings {
        &self.inner.settings
    }

    /// Whether this process holds `(kind, id)` now.
    pub fn holds(&self, kind: &str, id: &str) -> bool {
        self.held()
            .contains_key(&(kind.to_string(), id.to_string()))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Held>> {
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `(kind, id)` if no one holds it: `Some(guard)` with a new epoch,
    /// `None` when another worker (or this one) holds it. Never waits for
    /// another owner.
    pub async fn try_acquire(&self, kind: &str, id: &str) -> StoreResult<Option<OwnershipGuard>> {
        let key = (kind.to_string(), id.to_string());
        if self.held().contains_key(&key) {
            return Ok(None);
        }
        let _one_at_a_time = self.inner.acquiring.lock().await;
        let epoch = match &self.inner.hold {
            Hold::Sqlite { .. } => {
                self.ensure_row(kind, id).await?;
                if self.held().contains_key(&key) {
                    return Ok(None);
                }
                self.bump_epoch(kind, id).await?
            }
            Hold::Postgres { options, conn } => {
                let lock_id = self.lock_id(kind, id).await?;
                let mut conn = conn.lock().await;
                if self.held().contains_key(&key) {
                    return Ok(None);
                }
                if conn.is_none() {
                    *conn = Some(PgConnection::connect_with(&**options).await?);
                    tracing::debug!(worker = %self.worker_id(), "ownership connection opened");
                }
                let Some(c) = conn.as_mut() else {
                    return Ok(None);
                };
                let got = tokio::time::timeout(
                    self.inner.settings.dead_after,
                    sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1, $2)")
                        .bind(OWNERSHIP_LOCK_CLASS)
                        .bind(lock_id)
                        .fetch_one(&mut *c),
                )
                .await;
                let got = match got {
                    Ok(Ok(got)) => got,
                    failed => {
                        // The connection is in doubt: everything held on it is lost.
                        *conn = None;
                        self.all_lost("the ownership connection failed");
                        return Err(match failed {
                            Ok(Err(e)) => e.into(),
                            _ => StoreError::Corrupt(
                                "the ownership connection did not answer in time".into(),
                            ),
                        });
                    }
                };
                if !got {
                    return Ok(None);
                }
                match self.bump_epoch(kind, id).await {
                    Ok(epoch) => epoch,
                    Err(e) => {
                        let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                            .bind(OWNERSHIP_LOCK_CLASS)
                            .bind(lock_id)
                            .execute(&mut *c)
                            .await;
                        return Err(e);
                    }
                }
            }
        };
        let (lost_tx, lost_rx) = watch::channel(false);
        self.held().insert(
            key,
            Held {
                epoch,
                lost: lost_tx,
            },
        );
        tracing::debug!(kind, id, epoch, worker = %self.worker_id(), "source owned");
        Ok(Some(OwnershipGuard {
            ownership: Some(self.clone()),
            fence: Fence {
                kind: kind.to_string(),
                id: id.to_string(),
                epoch,
            },
            lost: lost_rx,
        }))
    }

    /// Waits until `(kind, id)` is free and takes it, looking every
    /// `check_interval`; `None` when `stop` turns true first.
    pub async fn acquire(
        &self,
        kind: &str,
        id: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<OwnershipGuard> {
        loop {
            if *stop.borrow() {
                return None;
            }
            match self.try_acquire(kind, id).await {
                Ok(Some(guard)) => return Some(guard),
                Ok(None) => {}
                Err(e) => tracing::warn!(kind, id, error = %e, "cannot take ownership"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.settings.check_interval) => {}
                changed = stop.changed() => if changed.is_err() { return None },
            }
        }
    }

    /// Creates the source's row if missing.
    async fn ensure_row(&self, kind: &str, id: &str) -> StoreResult<()> {
        super::with_pool!(&self.inner.store, pool => {
            sqlx::query("INSERT INTO ownership (kind, id) VALUES ($1, $2) ON CONFLICT (kind, id) DO NOTHING")
                .bind(kind)
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The advisory lock id of a source (PostgreSQL), creating its row.
    async fn lock_id(&self, kind: &str, id: &str) -> StoreResult<i32> {
        let key = (kind.to_string(), id.to_string());
        if let Some(id) = self
            .inner
            .lock_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(*id);
        }
        self.ensure_row(kind, id).await?;
        let lock_id: i32 = super::with_pool!(&self.inner.store, pool => {
            sqlx::query_scalar::<_, Option<i32>>("SELECT lock_id FROM ownership WHERE kind = $1 AND id = $2")
                .bind(kind)
                .bind(id)
                .fetch_one(pool)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("ownership of {kind} '{id}' has no lock id")))?
        });
        self.inner
            .lock_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, lock_id);
        Ok(lock_id)
    }

    /// A new epoch for a source just locked; waits at most a few seconds for
    /// a commit of the previous owner that is under way.
    async fn bump_epoch(&self, kind: &str, id: &str) -> StoreResult<i64> {
        let worker = self.worker_id().to_string();
        let sql = "UPDATE ownership SET epoch = epoch + 1, owner = $3, acquired_at = $4
                   WHERE kind = $1 AND id = $2 RETURNING epoch";
        let epoch: i64 = super::with_pool!(&self.inner.store, pool => {
            let mut tx = pool.begin_write().await?;
            if matches!(self.inner.store, Store::Postgres(..)) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{TAKEOVER_LOCK_TIMEOUT}'")))
                    .execute(&mut *tx)
                    .await?;
            }
            let epoch: i64 = sqlx::query_scalar(sql)
                .bind(kind)
                .bind(id)
                .bind(&worker)
                .bind(now_millis())
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            epoch
        });
        Ok(epoch)
    }

    /// Gives a source up: it is no longer held here, and on PostgreSQL its
    /// advisory lock is released so another worker takes it at once.
    async fn release(&self, fence: &Fence) {
        let key = (fence.kind.clone(), fence.id.clone());
        let ours = |held: &mut HashMap<(String, String), Held>| {
            if held.get(&key).is_some_and(|h| h.epoch == fence.epoch) {
                held.remove(&key);
                true
            } else {
                false
            }
        };
        let released = match &self.inner.hold {
            Hold::Sqlite { .. } => ours(&mut self.held()),
            Hold::Postgres { conn, .. } => {
                let lock_id = self
                    .inner
                    .lock_ids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&key)
                    .copied();
                let mut conn = conn.lock().await;
                // Under the connection's lock: an acquisition cannot slip in
                // between forgetting the source and unlocking it.
                let released = ours(&mut self.held());
                if released && let (Some(c), Some(lock_id)) = (conn.as_mut(), lock_id) {
                    let unlocked = tokio::time::timeout(
                        self.inner.settings.dead_after,
                        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                            .bind(OWNERSHIP_LOCK_CLASS)
                            .bind(lock_id)
                            .execute(&mut *c),
                    )
                    .await;
                    if !matches!(unlocked, Ok(Ok(_))) {
                        // Unsure whether the lock is still held: drop the
                        // connection, which releases every lock on it.
                        *conn = None;
                        self.all_lost("the ownership connection failed while releasing");
                    }
                }
                released
            }
        };
        if released {
            let result: StoreResult<()> = async {
                super::with_pool!(&self.inner.store, pool => {
                    sqlx::query("UPDATE ownership SET owner = NULL WHERE kind = $1 AND id = $2 AND epoch = $3")
                        .bind(&fence.kind)
                        .bind(&fence.id)
                        .bind(fence.epoch)
                        .execute(pool)
                        .await?;
                });
                Ok(())
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(kind = %fence.kind, id = %fence.id, error = %e, "cannot clear the owner's name");
            }
            tracing::debug!(kind = %fence.kind, id = %fence.id, epoch = fence.epoch, "source released");
        }
    }

    /// Every source held here is lost (the lock connection is gone).
    fn all_lost(&self, why: &str) {
        let mut held = self.held();
        if !held.is_empty() {
            tracing::warn!(worker = %self.worker_id(), sources = held.len(), why, "ownership lost");
        }
        for (_, h) in held.drain() {
            let _ = h.lost.send(true);
        }
    }

    /// Releases everything and closes the lock connection (at shutdown,
    /// after the owners' loops have stopped).
    pub async fn close(&self) {
        let fences: Vec<Fence> = self
            .held()
            .iter()
            .map(|((kind, id), h)| Fence {
                kind: kind.clone(),
                id: id.clone(),
                epoch: h.epoch,
            })
            .collect();
        for fence in &fences {
            self.release(fence).await;
        }
        if let Hold::Postgres { conn, .. } = &self.inner.hold
            && let Some(c) = conn.lock().await.take()
        {
            let _ = c.close().await;
        }
    }
}

/// Checks the lock connection every `check_interval` while the ownership
/// lives; a connection that fails or does not answer within `dead_after`
/// is dropped and everything held on it is lost.
async fn keep_checking(inner: Weak<Inner>) {
    loop {
        let interval = match inner.upgrade() {
            Some(i) => i.settings.check_interval,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ownership = Ownership { inner };
        let Hold::Postgres { conn, .. } = &ownership.inner.hold else {
            return;
        };
        let mut conn = conn.lock().await;
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let alive = tokio::time::timeout(
            ownership.inner.settings.dead_after,
            sqlx::query("SELECT 1").execute(&mut *c),
        )
        .await;
        if !matches!(alive, Ok(Ok(_))) {
            *conn = None;
            ownership.all_lost("the ownership connection was lost");
        }
    }
}

/// Takes the OS lock on `<database>.lock` beside a SQLite file, writing our
/// process id into it for the message another process gets. `None` for an
/// in-memory database.
fn lock_database_file(database: &Path) -> Result<Option<std::fs::File>, OwnershipError> {
    use std::io::{Read as _, Seek as _, Write as _};
    let name = database.to_string_lossy();
    if name.is_empty() || name == ":memory:" {
        return Ok(None);
    }
    let mut lock_path = database.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let shown = lock_path.display().to_string();
    let io = |source| OwnershipError::LockFile {
        path: shown.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(OwnershipError::InUse {
                database: database.display().to_string(),
                lock_file: shown,
                pid: text.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(Some(file))
}

/// Ownership of one source, until released, dropped or lost.
pub struct OwnershipGuard {
    ownership: Option<Ownership>,
    fence: Fence,
    lost: watch::Receiver<bool>,
}

impl std::fmt::Debug for OwnershipGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnershipGuard")
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl OwnershipGuard {
    /// What the owner's commits check ([`check_fence!`]).
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Whether the ownership was lost (the lock connection is gone).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the ownership is lost; never while it is held.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// A receiver that turns true when the ownership is lost.
    pub fn lost_signal(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Gives the source up now, so another worker can take it at once.
    pub async fn release(mut self) {
        if let Some(ownership) = self.ownership.take() {
            ownership.release(&self.fence).await;
        }
    }
}

impl Drop for OwnershipGuard {
    fn drop(&mut self) {
        if let Some(ownership) = self.ownership.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let fence = self.fence.clone();
            runtime.spawn(async move { ownership.release(&fence).await });
        }
    }
}
