//! Raw mail sources as stored: compressed with LZ4 (block format, size
//! prepended) where that saves at least an eighth, else as received. Packing
//! runs where mail is prepared (on every core, beside parsing), so the
//! batch's transaction writes fewer bytes; reading unpacks.
//!
//! On SQLite, the sources of incoming mail (IMAP and Maildir) live in a
//! file of their own beside the database ([`file_beside`]), written ahead
//! of their batch by its own writer ([`super::Store::stage_sources`]).
use super::rows::{Arg, RowExt, bind_all, placeholders, value_rows};
use super::{
    Incoming, IncomingMail, IngestBatch, Store, StoreError, StoreResult, WriteTx, with_pool,
};
use crate::domain::id::new_id;
use crate::domain::{Millis, now_millis};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file of raw sources beside the SQLite database `database`, its
/// whole name and `.sources` (as `<database>.lock`):
/// `data/switchboard.db` → `data/switchboard.db.sources`. `None` for a
/// database in memory.
pub fn file_beside(database: &Path) -> Option<PathBuf> {
    let name = database.to_string_lossy();
    if name.is_empty() || name == ":memory:" || name.contains("mode=memory") {
        return None;
    }
    let mut file = database.as_os_str().to_os_string();
    file.push(".sources");
    Some(PathBuf::from(file))
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The version of the sources file's schema this binary writes.
const FILE_VERSION: i64 = 1;

/// The schema of the sources file (`user_version` [`FILE_VERSION`]). Rows
/// are numbered in the order written (`id`, never reused), so a batch
/// appends to the right edge of the one b-tree; the blob comes last, so
/// reading `created_at` does not read the blob's pages. `checked` holds how
/// far [`Store::prune_orphan_sources`] got; `pair` a random name the
/// database keeps too ([`Store::pair_sources_file`]).
const FILE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS message_sources (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at INTEGER NOT NULL,
        raw_encoding TEXT CHECK (raw_encoding IN ('lz4')),
        raw BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS checked (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        up_to INTEGER NOT NULL
    );
    INSERT INTO checked (one, up_to) VALUES (1, 0) ON CONFLICT DO NOTHING;
    CREATE TABLE IF NOT EXISTS pair (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        name TEXT NOT NULL
    );
    INSERT INTO pair (one, name) VALUES (1, lower(hex(randomblob(16)))) ON CONFLICT DO NOTHING;
    PRAGMA user_version = 1;";

/// Opens the sources file at `path`, creating it (and its schema) if missing.
///
/// Why a file of its own: in the database, a backlog's raw bytes were
/// written twice (the WAL, then the checkpoint), a 4 KiB page per system
/// call, inside the batch's transaction on the one writer. Here they are
/// written once (a rollback journal keeps only the pages a commit changes,
/// and new pages need none), in 64 KiB pages, by a writer of their own
/// beside the database's. The price of the rollback journal: a reader
/// waits while a commit writes (at most a batch's sources).
pub(crate) async fn open_file(path: &Path) -> StoreResult<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .page_size(65_536)
        // The journal is cut back after each commit, not deleted.
        .journal_mode(SqliteJournalMode::Truncate)
        // A rollback journal is safe across a power loss only with FULL;
        // its commits are a few per batch.
        .synchronous(SqliteSynchronous::Full)
        // A transaction's pages stay in memory until its commit instead of
        // being spilled to the file early (which would lock readers out for
        // the rest of it and cost a journal sync each time); a batch's
        // sources are in memory anyway. After the commit the cache shrinks
        // back to SQLite's default size.
        .pragma("cache_spill", "false")
        .busy_timeout(Duration::from_secs(15));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(|e| {
            StoreError::Corrupt(format!(
                "cannot open the raw sources file {}: {e}",
                path.display()
            ))
        })?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&pool)
        .await?;
    if version > FILE_VERSION {
        pool.close().await;
        return Err(StoreError::Corrupt(format!(
            "the raw sources file {} was written by a newer Switchboard (its version {version}, this one knows {FILE_VERSION})",
            path.display()
        )));
    }
    sqlx::raw_sql(FILE_SCHEMA).execute(&pool).await?;
    Ok(pool)
}

/// The `raw_encoding` of a source packed with [`pack`].
pub const LZ4: &str = "lz4";

/// The packed source, or `None` where packing would not save an eighth
/// (already compressed attachments, tiny mail).
pub fn pack(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 512 {
        return None;
    }
    let packed = lz4_flex::compress_prepend_size(raw);
    (packed.len() + raw.len() / 8 <= raw.len()).then_some(packed)
}

/// LZ4 expands at most about 255 times: a size prefix beyond that (or beyond
/// 1 GiB) is damage, refused before anything is allocated for it.
fn plausible(stored: &[u8]) -> bool {
    let Some(prefix) = stored.get(..4) else {
        return false;
    };
    let size = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    size <= (1 << 30) && size <= stored.len().saturating_mul(256)
}

/// The source as received, from its stored bytes and `raw_encoding`.
pub fn unpack(stored: Vec<u8>, encoding: Option<&str>) -> StoreResult<Vec<u8>> {
    match encoding {
        None => Ok(stored),
        Some(LZ4) if !plausible(&stored) => Err(StoreError::Corrupt(
            "a packed mail source gives an impossible size".into(),
        )),
        Some(LZ4) => lz4_flex::decompress_size_prepended(&stored)
            .map_err(|e| StoreError::Corrupt(format!("a packed mail source does not unpack: {e}"))),
        Some(other) => Err(StoreError::Corrupt(format!(
            "unknown raw_encoding '{other}'"
        ))),
    }
}

/// Where a batch's sources are staged: PostgreSQL's `message_sources`
/// through two transactions side by side, or SQLite's sources file through
/// its one writer.
enum Staging<'a> {
    Postgres(&'a sqlx::PgPool, &'a tokio::sync::Semaphore),
    File(&'a SqlitePool, &'a tokio::sync::Semaphore),
}

impl Store {
    /// Writes the raw sources of a batch's new mail ahead of the batch's
    /// transaction, and notes each row in its mail's `source_id`.
    /// Ingestion calls it while the previous batch commits, so the sources'
    /// bytes go through other connections meanwhile:
    /// - PostgreSQL: `message_sources`, in two transactions side by side
    ///   (two backends);
    /// - SQLite: the sources file ([`file_beside`]), through its own writer;
    ///   a database in memory keeps sources in the batch (nothing staged).
    ///
    /// Mail the service already has is left out (a duplicate keeps no
    /// source). A source whose batch never commits is pruned later
    /// ([`Store::prune_orphan_sources`]).
    pub async fn stage_sources(&self, batch: &mut IngestBatch) -> StoreResult<usize> {
        let staging = match self {
            Store::Postgres(pool, companions) => Staging::Postgres(pool, &companions.staging),
            Store::Sqlite(_, companions) => match &companions.sources {
                Some(file) => Staging::File(file, &companions.sources_writer),
                None => return Ok(0),
            },
        };
        let IngestBatch {
            service_id, items, ..
        } = batch;
        let hashes: Vec<&str> = items
            .iter()
            .filter_map(|i| match i {
                Incoming::Mail(m) if m.source_id.is_none() => Some(m.parsed.content_hash.as_str()),
                _ => None,
            })
            .collect();
        if hashes.is_empty() {
            return Ok(0);
        }
        let known = self.known_hashes(service_id, &hashes).await?;
        let new: Vec<usize> = items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| match item {
                Incoming::Mail(mail)
                    if mail.source_id.is_none() && !known.contains(&mail.parsed.content_hash) =>
                {
                    Some(index)
                }
                _ => None,
            })
            .collect();
        let now = now_millis();
        let ids: Vec<(usize, String)> = match staging {
            Staging::Postgres(pool, bound) => {
                // Split by size between two transactions side by side. Rows
                // of one that committed while the other failed are orphans:
                // pruned later, like those of a batch that never commits.
                let mut lanes: [Vec<(usize, String)>; 2] = [Vec::new(), Vec::new()];
                let mut lane_bytes = [0usize; 2];
                for index in new {
                    let Some(mail) = mail_at(items, index) else {
                        continue;
                    };
                    let lane = usize::from(lane_bytes[1] < lane_bytes[0]);
                    lane_bytes[lane] += stored_bytes(mail).len();
                    lanes[lane].push((index, new_id("src")));
                }
                let (first, second) = tokio::join!(
                    write_rows(pool, bound, items, &lanes[0], now),
                    write_rows(pool, bound, items, &lanes[1], now)
                );
                first?;
                second?;
                lanes.into_iter().flatten().collect()
            }
            Staging::File(file, bound) => write_file(file, bound, items, &new, now).await?,
        };
        let count = ids.len();
        for (index, id) in ids {
            if let Some(Incoming::Mail(mail)) = items.get_mut(index) {
                mail.source_id = Some(id);
            }
        }
        Ok(count)
    }

    /// Checks that SQLite's sources file belongs to this database, whose
    /// `sources_file` keeps the file's random name, and that no number the
    /// database names can be given to new mail:
    /// - a file of another name that holds sources (another database's, or
    ///   replaced) is refused while the database names staged sources: its
    ///   numbers would name other mail;
    /// - an empty one (lost and made anew) is taken, with a warning: the
    ///   sources the database names are lost (reading one is an error);
    /// - a file numbered below what the database names (put back from an
    ///   older copy) numbers on above it, with a warning: the newer sources
    ///   are missing.
    pub(super) async fn pair_sources_file(&self) -> StoreResult<()> {
        let Store::Sqlite(pool, companions) = self else {
            return Ok(());
        };
        let Some(file) = &companions.sources else {
            return Ok(());
        };
        let shown = file.connect_options().get_filename().display().to_string();
        let name: String = sqlx::query_scalar("SELECT name FROM pair")
            .fetch_one(file)
            .await?;
        let holds_sources: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM message_sources)")
                .fetch_one(file)
                .await?;
        let numbered: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'message_sources'), 0)",
        )
        .fetch_one(file)
        .await?;
        let mut tx = pool.begin_write().await?;
        let kept: Option<String> = sqlx::query_scalar("SELECT pair FROM sources_file")
            .fetch_optional(&mut *tx)
            .await?;
        // The highest number named, read off the end of its index.
        let named: Option<i64> = sqlx::query_scalar(
            "SELECT raw_file_id FROM messages WHERE raw_file_id IS NOT NULL ORDER BY raw_file_id DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let own = kept.as_deref() == Some(name.as_str());
        if let Some(named) = named {
            if !own && holds_sources {
                return Err(StoreError::Corrupt(format!(
                    "the raw sources file {shown} does not belong to this database: the database names sources kept in \
                     another file, and this one holds other sources (replaced, or another database's). Put back the \
                     sources file that was beside this database, or move this one away (a missing file is made anew)"
                )));
            }
            if numbered < named {
                tracing::warn!(
                    file = %shown,
                    named,
                    numbered,
                    "the raw sources file is behind the database (made anew or put back from an older copy): \
                     the sources it lacks are lost, reading one is an error; new mail is numbered after them"
                );
                let mut writer = file.begin_write().await?;
                sqlx::query("DELETE FROM sqlite_sequence WHERE name = 'message_sources'")
                    .execute(&mut *writer)
                    .await?;
                sqlx::query(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('message_sources', $1)",
                )
                .bind(named)
                .execute(&mut *writer)
                .await?;
                writer.commit().await?;
            }
        }
        if !own {
            sqlx::query(
                "INSERT INTO sources_file (one, pair) VALUES (1, $1) ON CONFLICT (one) DO UPDATE SET pair = excluded.pair",
            )
            .bind(&name)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// The content hashes among `hashes` of inbound mail `service_id` has.
    async fn known_hashes(
        &self,
        service_id: &str,
        hashes: &[&str],
    ) -> StoreResult<std::collections::HashSet<String>> {
        let mut known = std::collections::HashSet::new();
        for part in hashes.chunks(500) {
            let mut args = vec![Arg::Text(service_id.to_string())];
            args.extend(part.iter().map(|hash| Arg::Text((*hash).to_string())));
            let sql = format!(
                "SELECT content_hash FROM messages WHERE service_id = $1 AND direction = 'inbound' AND content_hash IN ({})",
                placeholders(2, part.len())
            );
            let rows: Vec<String> = with_pool!(self, pool => {
                bind_all!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)), &args)
                    .fetch_all(pool)
                    .await?
            });
            known.extend(rows);
        }
        Ok(known)
    }

    /// Deletes staged sources written before `before` that no message points
    /// at (their batch never committed: the worker died in between, or the
    /// mail went to the quarantine, which keeps its own copy, or turned out
    /// to be a duplicate); returns how many. On PostgreSQL a source a
    /// message points at cannot be deleted (foreign key). SQLite's sources
    /// file is checked against the database's messages, each source once:
    /// the file remembers how far the checks got.
    pub async fn prune_orphan_sources(&self, before: Millis) -> StoreResult<u64> {
        let (pool, file) = match self {
            Store::Postgres(pool, _) => {
                return Ok(sqlx::query(
                    "DELETE FROM message_sources
                     WHERE created_at < $1 AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.source_id = message_sources.id)",
                )
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected());
            }
            Store::Sqlite(pool, companions) => match &companions.sources {
                Some(file) => (pool, file),
                None => return Ok(0),
            },
        };
        // A time more than a day ahead was written under a wrong clock: such
        // a source is old, not young (it would stop every pass until then).
        let implausible = now_millis().saturating_add(DAY_MS);
        let mut removed = 0;
        loop {
            let rows: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT id, created_at FROM message_sources
                 WHERE id > (SELECT up_to FROM checked) ORDER BY id LIMIT 500",
            )
            .fetch_all(file)
            .await?;
            // Sources are numbered in the order written: the first one too
            // young ends this pass (it may still be named by its batch).
            let old: Vec<i64> = rows
                .iter()
                .take_while(|(_, created_at)| *created_at < before || *created_at > implausible)
                .map(|(id, _)| *id)
                .collect();
            let Some(&last) = old.last() else {
                return Ok(removed);
            };
            // Decided under the database's write lock, which a batch's
            // commit holds while it checks that its sources are still there
            // ([`Store::staged_missing`]): a source is either named by then,
            // or gone and its batch keeps the mail's source in its row.
            let mut lock = pool.begin_write().await?;
            let args: Vec<Arg> = old.iter().map(|id| Arg::Int(*id)).collect();
            let sql = format!(
                "SELECT raw_file_id FROM messages WHERE raw_file_id IN ({})",
                placeholders(1, old.len())
            );
            let named: std::collections::HashSet<i64> =
                bind_all!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)), &args)
                    .fetch_all(&mut *lock)
                    .await?
                    .into_iter()
                    .collect();
            let mut tx = file.begin_write().await?;
            for id in old.iter().filter(|id| !named.contains(id)) {
                removed += sqlx::query("DELETE FROM message_sources WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            sqlx::query("UPDATE checked SET up_to = $1")
                .bind(last)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            lock.rollback().await?;
            if old.len() < rows.len() || rows.len() < 500 {
                return Ok(removed);
            }
        }
    }

    /// Of the sources the mail of `items` names in SQLite's sources file,
    /// those no longer there (pruned: the batch came more than a day after
    /// its staging); none on PostgreSQL (the batch asks in its transaction). Asked inside the batch's transaction, under the
    /// database's write lock, which pruning takes too: a source found here
    /// stays until the batch commits.
    pub(super) async fn staged_missing<'a>(
        &self,
        items: &'a [Incoming],
    ) -> StoreResult<std::collections::HashSet<&'a str>> {
        let mut missing = std::collections::HashSet::new();
        let Store::Sqlite(_, companions) = self else {
            return Ok(missing);
        };
        let staged = staged_ids(items);
        if staged.is_empty() {
            return Ok(missing);
        }
        let Some(file) = &companions.sources else {
            missing.extend(staged);
            return Ok(missing);
        };
        let mut found = std::collections::HashSet::new();
        for part in staged.chunks(500) {
            let args: Vec<Arg> = part.iter().map(|id| Arg::Text((*id).to_string())).collect();
            let sql = format!(
                "SELECT CAST(id AS TEXT) FROM message_sources WHERE id IN ({})",
                placeholders(1, part.len())
            );
            let rows: Vec<String> = bind_all!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)), &args)
                .fetch_all(file)
                .await?;
            found.extend(rows);
        }
        missing.extend(staged.into_iter().filter(|id| !found.contains(*id)));
        Ok(missing)
    }

    /// Deletes sources staged for mail that turned out to be a duplicate
    /// from SQLite's sources file, after the batch committed (PostgreSQL
    /// deletes them in the batch's transaction), in one transaction. One
    /// left behind (an error, a crash) is pruned later.
    pub(super) async fn drop_unused_sources(&self, ids: &[&String]) {
        let Store::Sqlite(_, companions) = self else {
            return;
        };
        let Some(file) = &companions.sources else {
            return;
        };
        if ids.is_empty() {
            return;
        }
        let Ok(_permit) = companions.sources_writer.acquire().await else {
            return;
        };
        let deleted = async {
            let mut tx = file.begin_write().await?;
            for id in ids {
                sqlx::query("DELETE FROM message_sources WHERE id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        };
        if let Err(e) = deleted.await {
            tracing::warn!(error = %e, "cannot delete unused raw sources (pruned later)");
        }
    }

    /// A source staged in SQLite's sources file, as received.
    pub(super) async fn source_from_file(&self, id: &str) -> StoreResult<Vec<u8>> {
        let file = match self {
            Store::Sqlite(_, companions) => companions.sources.as_ref(),
            Store::Postgres(..) => None,
        }
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the raw source {id} is in a sources file this database has none of"
            ))
        })?;
        let row = sqlx::query("SELECT raw, raw_encoding FROM message_sources WHERE id = $1")
            .bind(id)
            .fetch_optional(file)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "the raw source {id} is missing from the sources file"
                ))
            })?;
        let stored = row
            .opt_bytes("raw")?
            .ok_or_else(|| StoreError::Corrupt(format!("the raw source {id} is empty")))?;
        unpack(stored, row.opt_text("raw_encoding")?.as_deref())
    }
}

/// The staged sources the mail of `items` names.
pub(super) fn staged_ids(items: &[Incoming]) -> Vec<&str> {
    items
        .iter()
        .filter_map(|i| match i {
            Incoming::Mail(m) => m.source_id.as_deref(),
            Incoming::Quarantine(_) => None,
        })
        .collect()
}

/// Sources per multi-row insert into SQLite's sources file.
const FILE_SOURCES_PER_INSERT: usize = 10;

/// PostgreSQL's staged sources per multi-row insert.
const SOURCES_PER_INSERT: usize = 64;

/// The mail at `index` of a batch's items.
fn mail_at(items: &[Incoming], index: usize) -> Option<&IncomingMail> {
    match items.get(index) {
        Some(Incoming::Mail(mail)) => Some(mail),
        _ => None,
    }
}

/// The bytes of `mail`'s source as stored: packed where that paid.
fn stored_bytes(mail: &IncomingMail) -> &[u8] {
    mail.packed.as_ref().unwrap_or(&mail.raw)
}

/// Writes the raw sources of `rows` (an item's index, its new row's id) to
/// PostgreSQL's `message_sources` in one transaction, once `bound` lets it.
async fn write_rows(
    pool: &sqlx::PgPool,
    bound: &tokio::sync::Semaphore,
    items: &[Incoming],
    rows: &[(usize, String)],
    now: Millis,
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let _permit = bound
        .acquire()
        .await
        .map_err(|_| StoreError::Corrupt("the store is closed".into()))?;
    let mut tx = pool.begin().await?;
    let mails: Vec<(&IncomingMail, &String)> = rows
        .iter()
        .filter_map(|(index, id)| Some((mail_at(items, *index)?, id)))
        .collect();
    for part in mails.chunks(SOURCES_PER_INSERT) {
        let sql = format!(
            "INSERT INTO message_sources (id, raw, raw_encoding, created_at) VALUES {}",
            value_rows("(?, ?, ?, ?)", part.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (mail, id) in part {
            q = q
                .bind(*id)
                .bind(stored_bytes(mail))
                .bind(mail.packed.as_ref().map(|_| LZ4))
                .bind(now);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Writes the raw sources of the mail at `indexes` to SQLite's sources file
/// in one transaction, once `bound` lets it; returns each index with its
/// row's number (as text, the form `messages.raw_file_id` holds).
async fn write_file(
    file: &SqlitePool,
    bound: &tokio::sync::Semaphore,
    items: &[Incoming],
    indexes: &[usize],
    now: Millis,
) -> StoreResult<Vec<(usize, String)>> {
    if indexes.is_empty() {
        return Ok(Vec::new());
    }
    let _permit = bound
        .acquire()
        .await
        .map_err(|_| StoreError::Corrupt("the store is closed".into()))?;
    let mut tx = file.begin_write().await?;
    let mut ids = Vec::with_capacity(indexes.len());
    let mails: Vec<(usize, &IncomingMail)> = indexes
        .iter()
        .filter_map(|&index| Some((index, mail_at(items, index)?)))
        .collect();
    for part in mails.chunks(FILE_SOURCES_PER_INSERT) {
        let sql = format!(
            "INSERT INTO message_sources (created_at, raw_encoding, raw) VALUES {}",
            value_rows("(?, ?, ?)", part.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (_, mail) in part {
            q = q
                .bind(now)
                .bind(mail.packed.as_ref().map(|_| LZ4))
                .bind(stored_bytes(mail));
        }
        // Numbered in the order written, one above the other
        // (`AUTOINCREMENT`, and this transaction alone writes the file).
        let last = q.execute(&mut *tx).await?.last_insert_rowid();
        let first = last - part.len() as i64 + 1;
        ids.extend(
            part.iter()
                .zip(first..=last)
                .map(|((index, _), id)| (*index, id.to_string())),
        );
    }
    tx.commit().await?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_packed_and_comes_back_whole() {
        let raw =
            "Subject: hello\r\n\r\n".to_string() + &"the same words again and again ".repeat(200);
        let packed = pack(raw.as_bytes()).expect("text packs");
        assert!(packed.len() < raw.len() / 2);
        assert_eq!(unpack(packed, Some(LZ4)).unwrap(), raw.as_bytes());
    }

    #[test]
    fn what_does_not_pack_is_kept_as_it_is() {
        let mut noise = vec![0u8; 4096];
        let mut x: u32 = 2_463_534_242;
        for b in &mut noise {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        assert_eq!(pack(&noise), None);
        assert_eq!(pack(b"short"), None);
        assert_eq!(unpack(noise.clone(), None).unwrap(), noise);
    }

    #[test]
    fn the_sources_file_sits_beside_the_database() {
        assert_eq!(
            file_beside(Path::new("data/switchboard.db")),
            Some(PathBuf::from("data/switchboard.db.sources"))
        );
        assert_eq!(
            file_beside(Path::new("/var/lib/sb/mail")),
            Some(PathBuf::from("/var/lib/sb/mail.sources"))
        );
        // Two databases differing in their extension do not share one.
        assert_ne!(
            file_beside(Path::new("x.db")),
            file_beside(Path::new("x.sqlite"))
        );
        assert_eq!(file_beside(Path::new(":memory:")), None);
        assert_eq!(file_beside(Path::new("")), None);
    }

    #[tokio::test]
    async fn a_database_in_memory_keeps_sources_in_its_rows() {
        let cwd_before: Vec<_> = std::fs::read_dir(".")
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        let Store::Sqlite(_, companions) = &store else {
            panic!("a SQLite store")
        };
        assert!(companions.sources.is_none());
        store.close().await;
        let cwd_after: Vec<_> = std::fs::read_dir(".")
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(cwd_before, cwd_after, "no file was made");
    }

    #[test]
    fn damage_and_unknown_encodings_are_errors() {
        assert!(unpack(vec![0xff, 0xff, 0xff, 0x7f, 1, 2], Some(LZ4)).is_err());
        assert!(unpack(vec![1, 2, 3], Some("zstd")).is_err());
    }
}
