//! Storage on SQLite (embedded default) and PostgreSQL (production, several
//! workers), from one codebase. Each repository method is written once and
//! expanded for both pools by [`with_pool!`]; where the SQL must differ the
//! method matches on the backend.
mod announce;
mod batch;
pub mod chats;
pub mod context;
mod customers;
mod directory;
mod drafts;
pub mod events;
mod ingest;
mod lane;
mod messages;
mod migrate;
pub mod offers;
pub mod ownership;
mod presence;
mod recorded;
mod records;
pub mod routing;
mod rows;
mod sessions;
pub mod source;
mod tasks;
mod transcripts;
mod web_sessions;
pub mod webhooks;

pub use batch::*;
pub use context::{ContextRecord, ContextUpdate, ServiceContext};
pub use drafts::*;
pub use ingest::*;
pub use messages::*;
pub use offers::Answered;
pub use presence::{AgentStatus, Load, PresenceView, QueueStatus, time_or_null};
pub use recorded::{QueuedRecorded, RecordedMail};
pub use records::*;
pub use transcripts::TranscriptPost;
pub use web_sessions::WebSession;

use crate::domain::DomainError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Default of `database.keepalive_secs`.
pub const DEFAULT_DEAD_PEER: Duration = Duration::from_secs(5);

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// An offer (or another thing with a life) is over; `code` says how.
    #[error("{message}")]
    Closed { code: &'static str, message: String },
    /// An offer answered after its deadline: its RONA fired on this answer
    /// (said to the caller as `Closed` with `offer_expired`).
    #[error("{0}")]
    ExpiredOnAnswer(String),
    /// What the change was based on changed meanwhile; `code` says what.
    #[error("{message}")]
    Stale { code: &'static str, message: String },
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("ownership of {0} was lost: another worker holds it now")]
    LeaseLost(String),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The storage handle: a connection pool of one backend. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Store {
    /// The pool of the database file, and what goes with it.
    Sqlite(SqlitePool, Arc<SqliteCompanions>),
    /// The pool, and what goes with it.
    Postgres(PgPool, Arc<PgCompanions>),
}

/// What a PostgreSQL pool works with, shared by a [`Store`]'s clones.
#[derive(Debug)]
pub struct PgCompanions {
    /// Tells other workers what was committed ([`announce`]).
    announcer: Arc<announce::Announcer>,
    /// Connections kept aside for the reads of every click ([`lane`]).
    lane: lane::ReadLane,
    /// Transactions writing raw sources ahead of their batch, across every
    /// mailbox of this process ([`Store::stage_sources`]): a bound, so that
    /// mailboxes draining a backlog at once leave the pool to other writers.
    staging: tokio::sync::Semaphore,
    /// `[directory] default_calling_code` (0: none), for the numbers the
    /// store reads itself (a chat's customer).
    calling_code: std::sync::atomic::AtomicU16,
}

/// What a SQLite pool works with, shared by a [`Store`]'s clones.
#[derive(Debug)]
pub struct SqliteCompanions {
    /// The file of raw mail sources beside the database ([`source::file_beside`]);
    /// `None` for a database in memory (sources stay in `messages.raw`).
    pub(crate) sources: Option<SqlitePool>,
    /// One writer of the sources file at a time (waiting here, not on
    /// SQLite's lock).
    pub(crate) sources_writer: tokio::sync::Semaphore,
    /// As [`PgCompanions`]'s.
    calling_code: std::sync::atomic::AtomicU16,
}

/// At most this many transactions write raw sources ahead of their batches
/// at once, in one process (two per batch when one mailbox drains alone).
const STAGING_TRANSACTIONS: usize = 2;

/// Runs `$body` with `$pool` bound to the concrete pool, once per backend.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool, _) => $body,
            $crate::store::Store::Postgres($pool, _) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Like [`with_pool!`] for a read the agents' page makes on every click
/// (one statement, `$conn` used once): on PostgreSQL it runs on a
/// connection of the read lane ([`lane`]), without a ping on its way back.
/// A read that fails gives its connection back to the pool.
macro_rules! with_reader {
    ($store:expr, $conn:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($conn, _) => $body,
            $crate::store::Store::Postgres(pool, companions) => {
                let mut lent = companions.lane.lend(pool).await?;
                let out: $crate::store::StoreResult<_> = {
                    let $conn = lent.conn();
                    $body
                };
                if out.is_ok() {
                    lent.done();
                }
                out
            }
        }
    };
}
pub(crate) use with_reader;

/// Starts a write transaction. SQLite takes the write lock up front
/// (`BEGIN IMMEDIATE`) so that a transaction that reads before it writes waits
/// for other writers instead of failing with "database is locked".
pub(crate) trait WriteTx {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
}

impl WriteTx for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl WriteTx for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.begin().await
    }
}

/// How often the SQLite WAL is copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies the SQLite WAL into the database file every [`CHECKPOINT_EVERY`]
/// (`PASSIVE`: never waits for readers or writers), on its own connection
/// and core, so a large write (a mail backlog) does not pay for checkpoints
/// in its commits; the WAL stays bounded by what is written between two.
/// Ends when the pool is closed.
async fn checkpoint_loop(pool: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "SQLite WAL checkpoint failed; will retry");
        }
    }
}

/// A pooled PostgreSQL connection idle for longer than this is pinged
/// before it is handed out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(5);

/// Whether a failed connection may succeed in a moment: the server is not
/// listening yet, or says it is starting up (`57P03`).
fn still_starting(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        sqlx::Error::Database(db) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
}

/// How long a request waits for a database connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

impl Store {
    /// Connects to `url` (`sqlite://path` or `postgres://…`); a SQLite file and its
    /// folder are created if missing and the database runs in WAL mode.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Store> {
        Store::connect_with(url, max_connections, DEFAULT_DEAD_PEER).await
    }

    /// Like [`Store::connect`]; on PostgreSQL the server is asked to drop a
    /// connection whose peer vanished within about `dead_peer`
    /// ([`ownership::pg_keepalive_options`]), so what a dead worker held (row
    /// locks of an open transaction, advisory locks) is freed within seconds.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        dead_peer: Duration,
    ) -> StoreResult<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?
                .application_name("switchboard")
                .options(ownership::pg_keepalive_options(dead_peer));
            // One connection first, on its own: the pool would only say it
            // timed out, not why (refused, unknown host, a wrong password).
            // A server still starting (refused, or "starting up") is tried
            // again for as long as the pool would wait.
            let deadline = tokio::time::Instant::now() + ACQUIRE_TIMEOUT;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, sqlx::ConnectOptions::connect(&options)).await {
                    Ok(Ok(first)) => {
                        let _ = sqlx::Connection::close(first).await;
                        break;
                    }
                    Ok(Err(e)) if still_starting(&e) && left > Duration::from_millis(250) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
                }
            }
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // sqlx pings every connection it hands out: a round trip
                // (and a wake-up of the backend) before every request's
                // query. Only a connection idle for longer than a few
                // seconds is pinged now (and replaced should it be dead).
                // The price: when PostgreSQL restarts or fails over, each
                // connection used in those last seconds fails one query
                // (a 500 or a retried step) before sqlx drops it.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for > PING_IDLE_AFTER {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(options)
                .await?;
            let companions = PgCompanions {
                announcer: announce::Announcer::start(pool.clone()),
                lane: lane::ReadLane::new(lane::lane_size(max_connections)),
                staging: tokio::sync::Semaphore::new(STAGING_TRANSACTIONS),
                calling_code: Default::default(),
            };
            let companions = Arc::new(companions);
            tokio::spawn(lane::sweep_loop(Arc::downgrade(&companions)));
            return Ok(Store::Postgres(pool, companions));
        }
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(15))
                .foreign_keys(true)
                // `REGEXP`: searches that fold case beyond ASCII (rows::contains_regex).
                .with_regexp()
                // Checkpoints run beside the writers ([`checkpoint_loop`]),
                // not inside whichever commit crosses the WAL's threshold; a
                // writer checkpoints only when those fell 64 MiB behind (a
                // long burst), which keeps the WAL bounded.
                .pragma("wal_autocheckpoint", "16384")
                // After a checkpoint, a WAL file grown by a burst is cut back.
                .pragma("journal_size_limit", "67108864");
            let path = options.get_filename();
            // A database in memory keeps its sources in its rows.
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let sources_path = source::file_beside(path).filter(|_| !in_memory);
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Invalid(DomainError::Invalid(format!(
                        "cannot create the database folder {}: {e}",
                        dir.display()
                    )))
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.min(8))
                // A file's connection does not die under us: no ping (a
                // hop to the connection's thread) before every query.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await?;
            tokio::spawn(checkpoint_loop(pool.clone()));
            let sources = match sources_path {
                Some(file) => Some(source::open_file(&file).await?),
                None => None,
            };
            return Ok(Store::Sqlite(
                pool,
                Arc::new(SqliteCompanions {
                    sources,
                    sources_writer: tokio::sync::Semaphore::new(1),
                    calling_code: Default::default(),
                }),
            ));
        }
        Err(StoreError::Invalid(DomainError::Invalid(format!(
            "database url must start with sqlite:// or postgres://, not '{}'",
            url.split(':').next().unwrap_or_default()
        ))))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(..) => Backend::Sqlite,
            Store::Postgres(..) => Backend::Postgres,
        }
    }

    /// Sets `[directory] default_calling_code` for the national numbers
    /// the store itself reads (a chat's customer); `None` keeps them as written.
    pub fn set_default_calling_code(&self, code: Option<u16>) {
        self.calling_code()
            .store(code.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn default_calling_code(&self) -> Option<u16> {
        Some(
            self.calling_code()
                .load(std::sync::atomic::Ordering::Relaxed),
        )
        .filter(|c| *c != 0)
    }

    fn calling_code(&self) -> &std::sync::atomic::AtomicU16 {
        match self {
            Store::Sqlite(_, c) => &c.calling_code,
            Store::Postgres(_, c) => &c.calling_code,
        }
    }

    /// After a commit that may let work be assigned (a task queued, capacity
    /// freed, an agent available, an offer made or ended): wakes this
    /// process's routers and, on PostgreSQL, every other worker's.
    pub(crate) fn wake_router(&self) {
        routing::wake_router();
        if let Store::Postgres(_, companions) = self {
            companions.announcer.routing();
        }
    }

    /// After a commit that stored events for `agents`: their event streams,
    /// in this process and (PostgreSQL) in every other worker, look now.
    pub(crate) fn ring_agents<'a>(&self, agents: impl IntoIterator<Item = &'a String> + Clone) {
        events::ring(agents.clone());
        if let Store::Postgres(_, companions) = self {
            companions.announcer.agents(agents);
        }
    }

    /// After a commit that wrote task changes: wakes the webhook deliverers,
    /// in this process and (PostgreSQL) in every other worker.
    pub(crate) fn ring_webhooks(&self) {
        webhooks::ring();
        if let Store::Postgres(_, companions) = self {
            companions.announcer.webhooks();
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> StoreResult<()> {
        with_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// This process's database connections now: open (in the pool, in use
    /// or not), idle in the pool, and kept by the PostgreSQL read lane
    /// (counted in open, not in idle; given back after 5 s unneeded).
    pub fn connections(&self) -> Connections {
        match self {
            Store::Sqlite(pool, _) => Connections {
                open: pool.size(),
                idle: pool.num_idle() as u32,
                lane: 0,
            },
            Store::Postgres(pool, companions) => Connections {
                open: pool.size(),
                idle: pool.num_idle() as u32,
                lane: companions.lane.kept() as u32,
            },
        }
    }

    pub async fn close(&self) {
        if let Store::Postgres(_, companions) = self {
            // The pool waits for its checked-out connections: the lane's first.
            companions.lane.release_all();
        }
        if let Store::Sqlite(_, companions) = self
            && let Some(sources) = &companions.sources
        {
            sources.close().await;
        }
        with_pool!(self, pool => pool.close().await)
    }
}

/// A process's database connections (see [`Store::connections`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    pub open: u32,
    pub idle: u32,
    pub lane: u32,
}

/// Whether the database aborted the transaction to break a deadlock or a
/// serialization conflict: running it again is the remedy.
pub(crate) fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40P01") | Some("40001"))
        }
        _ => false,
    }
}

/// Runs a transaction again (up to three more times) when the database
/// aborted it to break a deadlock, so a rare lock cycle between workers is
/// never an error for the user.
pub(crate) async fn retry_deadlocks<T, F, Fut>(what: &'static str, mut op: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let mut attempt = 0u64;
    loop {
        match op().await {
            Err(e) if attempt < 3 && is_retryable(&e) => {
                attempt += 1;
                tracing::debug!(
                    what,
                    attempt,
                    "transaction aborted by the database to break a deadlock; running it again"
                );
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            other => return other,
        }
    }
}

/// Maps a unique-constraint violation to a conflict with `message`.
pub(crate) fn conflict_on_unique(e: sqlx::Error, message: impl Into<String>) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(message.into())
        }
        _ => StoreError::Database(e),
    }
}
