//! Schema migrations, embedded in the binary: one list per backend.
use super::{Store, StoreError, StoreResult, with_pool};
use crate::domain::now_millis;

struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../../migrations/sqlite/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "ingestion",
        sql: include_str!("../../migrations/sqlite/0002_ingestion.sql"),
    },
    Migration {
        version: 3,
        name: "previews",
        sql: include_str!("../../migrations/sqlite/0003_previews.sql"),
    },
    Migration {
        version: 4,
        name: "drafts",
        sql: include_str!("../../migrations/sqlite/0004_drafts.sql"),
    },
    Migration {
        version: 5,
        name: "agent_events",
        sql: include_str!("../../migrations/sqlite/0005_agent_events.sql"),
    },
    Migration {
        version: 6,
        name: "routing",
        sql: include_str!("../../migrations/sqlite/0006_routing.sql"),
    },
    Migration {
        version: 7,
        name: "saved_sessions_final",
        sql: include_str!("../../migrations/sqlite/0007_saved_sessions_final.sql"),
    },
    Migration {
        version: 8,
        name: "ownership",
        sql: include_str!("../../migrations/sqlite/0008_ownership.sql"),
    },
    Migration {
        version: 9,
        name: "session_search",
        sql: include_str!("../../migrations/sqlite/0009_session_search.sql"),
    },
    Migration {
        version: 10,
        name: "chat",
        sql: include_str!("../../migrations/sqlite/0010_chat.sql"),
    },
    Migration {
        version: 11,
        name: "context",
        sql: include_str!("../../migrations/sqlite/0011_context.sql"),
    },
    Migration {
        version: 12,
        name: "web_sessions",
        sql: include_str!("../../migrations/sqlite/0012_web_sessions.sql"),
    },
    Migration {
        version: 13,
        name: "packed_sources",
        sql: include_str!("../../migrations/sqlite/0013_packed_sources.sql"),
    },
    Migration {
        version: 14,
        name: "notify_after_commit",
        sql: include_str!("../../migrations/sqlite/0014_notify_after_commit.sql"),
    },
    Migration {
        version: 15,
        name: "bounded_search_text",
        sql: include_str!("../../migrations/sqlite/0015_bounded_search_text.sql"),
    },
    Migration {
        version: 16,
        name: "lz4_toast",
        sql: include_str!("../../migrations/sqlite/0016_lz4_toast.sql"),
    },
    Migration {
        version: 17,
        name: "message_sources",
        sql: include_str!("../../migrations/sqlite/0017_message_sources.sql"),
    },
    Migration {
        version: 18,
        name: "call_transcripts",
        sql: include_str!("../../migrations/sqlite/0018_call_transcripts.sql"),
    },
    Migration {
        version: 19,
        name: "supervisors",
        sql: include_str!("../../migrations/sqlite/0019_supervisors.sql"),
    },
    Migration {
        version: 20,
        name: "tag_search_text",
        sql: include_str!("../../migrations/sqlite/0020_tag_search_text.sql"),
    },
    Migration {
        version: 21,
        name: "queue_modality_heads",
        sql: include_str!("../../migrations/sqlite/0021_queue_modality_heads.sql"),
    },
    Migration {
        version: 22,
        name: "sources_file",
        sql: include_str!("../../migrations/sqlite/0022_sources_file.sql"),
    },
    Migration {
        version: 23,
        name: "recorded_mail",
        sql: include_str!("../../migrations/sqlite/0023_recorded_mail.sql"),
    },
    Migration {
        version: 24,
        name: "session_context",
        sql: include_str!("../../migrations/sqlite/0024_session_context.sql"),
    },
];

const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../../migrations/postgres/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "ingestion",
        sql: include_str!("../../migrations/postgres/0002_ingestion.sql"),
    },
    Migration {
        version: 3,
        name: "previews",
        sql: include_str!("../../migrations/postgres/0003_previews.sql"),
    },
    Migration {
        version: 4,
        name: "drafts",
        sql: include_str!("../../migrations/postgres/0004_drafts.sql"),
    },
    Migration {
        version: 5,
        name: "agent_events",
        sql: include_str!("../../migrations/postgres/0005_agent_events.sql"),
    },
    Migration {
        version: 6,
        name: "routing",
        sql: include_str!("../../migrations/postgres/0006_routing.sql"),
    },
    Migration {
        version: 7,
        name: "saved_sessions_final",
        sql: include_str!("../../migrations/postgres/0007_saved_sessions_final.sql"),
    },
    Migration {
        version: 8,
        name: "ownership",
        sql: include_str!("../../migrations/postgres/0008_ownership.sql"),
    },
    Migration {
        version: 9,
        name: "session_search",
        sql: include_str!("../../migrations/postgres/0009_session_search.sql"),
    },
    Migration {
        version: 10,
        name: "chat",
        sql: include_str!("../../migrations/postgres/0010_chat.sql"),
    },
    Migration {
        version: 11,
        name: "context",
        sql: include_str!("../../migrations/postgres/0011_context.sql"),
    },
    Migration {
        version: 12,
        name: "web_sessions",
        sql: include_str!("../../migrations/postgres/0012_web_sessions.sql"),
    },
    Migration {
        version: 13,
        name: "packed_sources",
        sql: include_str!("../../migrations/postgres/0013_packed_sources.sql"),
    },
    Migration {
        version: 14,
        name: "notify_after_commit",
        sql: include_str!("../../migrations/postgres/0014_notify_after_commit.sql"),
    },
    Migration {
        version: 15,
        name: "bounded_search_text",
        sql: include_str!("../../migrations/postgres/0015_bounded_search_text.sql"),
    },
    Migration {
        version: 16,
        name: "lz4_toast",
        sql: include_str!("../../migrations/postgres/0016_lz4_toast.sql"),
    },
    Migration {
        version: 17,
        name: "message_sources",
        sql: include_str!("../../migrations/postgres/0017_message_sources.sql"),
    },
    Migration {
        version: 18,
        name: "call_transcripts",
        sql: include_str!("../../migrations/postgres/0018_call_transcripts.sql"),
    },
    Migration {
        version: 19,
        name: "supervisors",
        sql: include_str!("../../migrations/postgres/0019_supervisors.sql"),
    },
    Migration {
        version: 20,
        name: "tag_search_text",
        sql: include_str!("../../migrations/postgres/0020_tag_search_text.sql"),
    },
    Migration {
        version: 21,
        name: "queue_modality_heads",
        sql: include_str!("../../migrations/postgres/0021_queue_modality_heads.sql"),
    },
    Migration {
        version: 22,
        name: "sources_file",
        sql: include_str!("../../migrations/postgres/0022_sources_file.sql"),
    },
    Migration {
        version: 23,
        name: "recorded_mail",
        sql: include_str!("../../migrations/postgres/0023_recorded_mail.sql"),
    },
    Migration {
        version: 24,
        name: "session_context",
        sql: include_str!("../../migrations/postgres/0024_session_context.sql"),
    },
];

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

/// Arbitrary key of the advisory lock that serialises migrations across workers.
const PG_MIGRATION_LOCK: i64 = 0x5357_4254_4348;

impl Store {
    fn migrations(&self) -> &'static [Migration] {
        match self {
            Store::Sqlite(..) => SQLITE,
            Store::Postgres(..) => POSTGRES,
        }
    }

    /// The newest schema version this binary knows.
    pub fn latest_schema_version(&self) -> i64 {
        self.migrations().last().map_or(0, |m| m.version)
    }

    /// Applies the migrations not yet applied, each in its own transaction;
    /// returns how many ran. Safe to run from several workers at once.
    pub async fn migrate(&self) -> StoreResult<usize> {
        let migrations = self.migrations();
        let mut applied = 0;
        with_pool!(self, pool => {
            let mut conn = pool.acquire().await?;
            if matches!(self, Store::Postgres(..)) {
                sqlx::query("SELECT pg_advisory_lock($1)").bind(PG_MIGRATION_LOCK).execute(&mut *conn).await?;
            }
            let result: StoreResult<()> = async {
                sqlx::raw_sql(CREATE_TABLE).execute(&mut *conn).await?;
                // A database a newer switchboard migrated: this one would
                // write to tables it does not know as they are.
                let newest: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM schema_migrations")
                    .fetch_one(&mut *conn)
                    .await?;
                let known = migrations.last().map_or(0, |m| m.version);
                if let Some(newest) = newest.filter(|v| *v > known) {
                    return Err(StoreError::Conflict(format!(
                        "the database is at schema version {newest}, newer than this switchboard knows ({known}): run the newer switchboard, or upgrade this one"
                    )));
                }
                for m in migrations {
                    let done: Option<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                        .bind(m.version)
                        .fetch_optional(&mut *conn)
                        .await?;
                    if done.is_some() {
                        continue;
                    }
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(|e| {
                        StoreError::Corrupt(format!("migration {} ({}) failed: {e}", m.version, m.name))
                    })?;
                    sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                        .bind(m.version)
                        .bind(m.name)
                        .bind(now_millis())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    tracing::info!(version = m.version, name = m.name, "applied migration");
                    applied += 1;
                }
                Ok(())
            }
            .await;
            if matches!(self, Store::Postgres(..)) {
                sqlx::query("SELECT pg_advisory_unlock($1)").bind(PG_MIGRATION_LOCK).execute(&mut *conn).await?;
            }
            result?;
        });
        self.pair_sources_file().await?;
        Ok(applied)
    }

    /// The schema version applied to the database (0 when none).
    pub async fn schema_version(&self) -> StoreResult<i64> {
        with_pool!(self, pool => {
            let exists: Result<Option<i64>, sqlx::Error> =
                sqlx::query_scalar("SELECT max(version) FROM schema_migrations").fetch_one(pool).await;
            match exists {
                Ok(v) => Ok(v.unwrap_or(0)),
                // No table yet: nothing applied. (Any other error is one:
                // a connection the server ended is not a version 0.)
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some("42P01") || e.message().contains("no such table") =>
                {
                    Ok(0)
                }
                Err(e) => Err(e.into()),
            }
        })
    }
}
