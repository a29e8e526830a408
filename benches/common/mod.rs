//! What the benchmark programs share: the PostgreSQL they use, a database of
//! their own per run (dropped afterwards), and percentiles.
#![allow(dead_code)]

use anyhow::{Context, Result};
use rand::Rng;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Pg,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Pg => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        }
    }
}

/// `$SWITCHBOARD_BENCH_PG_URL`, else `$SWITCHBOARD_TEST_PG_URL`, else the
/// local server: a role that may `CREATE DATABASE`.
pub fn pg_admin_url() -> String {
    std::env::var("SWITCHBOARD_BENCH_PG_URL")
        .or_else(|_| std::env::var("SWITCHBOARD_TEST_PG_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Nearest-rank percentile (`q` in 0..=1) of sorted values; NaN when empty.
pub fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A fresh database: a `sbbench_<random>` PostgreSQL database (dropped when
/// this is dropped) or a SQLite file in a temporary directory.
pub struct BenchDb {
    pub backend: Backend,
    pub url: String,
    pg_name: Option<String>,
    pub dir: tempfile::TempDir,
}

impl BenchDb {
    pub async fn create(backend: Backend) -> Result<BenchDb> {
        let dir = tempfile::Builder::new().prefix("sbbench-").tempdir()?;
        match backend {
            Backend::Sqlite => Ok(BenchDb {
                backend,
                url: format!("sqlite://{}", dir.path().join("bench.db").display()),
                pg_name: None,
                dir,
            }),
            Backend::Pg => {
                let admin = pg_admin_url();
                let name = format!("sbbench_{:016x}", rand::rng().random::<u64>());
                let mut conn = PgConnection::connect(&admin).await.with_context(|| {
                    format!(
                        "PostgreSQL at {} (set SWITCHBOARD_BENCH_PG_URL)",
                        redact(&admin)
                    )
                })?;
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .context("create the bench database")?;
                let _ = conn.close().await;
                let mut url = url::Url::parse(&admin)?;
                url.set_path(&format!("/{name}"));
                Ok(BenchDb {
                    backend,
                    url: url.to_string(),
                    pg_name: Some(name),
                    dir,
                })
            }
        }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs outside async: a small runtime of its own drops the database.
        let dropped = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&pg_admin_url()).await?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop a bench database: {e:#}"),
            Err(_) => eprintln!("could not drop a bench database (panic)"),
        }
    }
}
