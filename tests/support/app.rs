//! Spawns a real Switchboard instance on a free port, on a fresh database of
//! either backend, and talks to it over HTTP like a user would.
#![allow(dead_code)]
use reqwest::StatusCode;
use serde_json::Value;
use std::path::Path;
use switchboard::app::Running;
use switchboard::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the tests use (its maintenance database).
pub fn pg_admin_url() -> String {
    std::env::var("SWITCHBOARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own for one test: a SQLite file in a temporary folder, or
/// a PostgreSQL database with a random name, dropped when the test ends.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn create(db: Db) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        match db {
            Db::Sqlite => TestDb {
                url: format!("sqlite://{}", dir.path().join("test.db").display()),
                pg_name: None,
                _dir: dir,
            },
            Db::Postgres => {
                let name = format!("sbtest_{}", hex_id());
                let admin = pg_admin_url();
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed for this test (set SWITCHBOARD_TEST_PG_URL): {e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(&admin).expect("SWITCHBOARD_TEST_PG_URL is a URL");
                url.set_path(&format!("/{name}"));
                TestDb {
                    url: url.to_string(),
                    pg_name: Some(name),
                    _dir: dir,
                }
            }
        }
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// One number from the database, on a connection of its own (for tests
    /// whose server runs in another process); `None` while it cannot be read
    /// (the file not created yet, a query error).
    pub async fn try_int(&self, sql: &str) -> Option<i64> {
        let mut conn = RawConn::try_open(&self.url).await?;
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match &mut conn {
            RawConn::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await.ok(),
            RawConn::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await.ok(),
        }
    }

    /// After a client was killed: waits until no transaction of another
    /// connection is still running on this database (on PostgreSQL a commit
    /// the killed client sent may still be completing; SQLite's writer lives
    /// and dies with its process).
    pub async fn quiesce(&self) {
        if self.pg_name.is_none() {
            return;
        }
        let start = std::time::Instant::now();
        while self
            .int(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction', \
                 'idle in transaction (aborted)')",
            )
            .await
            > 0
        {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "a transaction of a killed client is still running"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// One number from the database; panics when it cannot be read.
    pub async fn int(&self, sql: &str) -> i64 {
        RawConn::open(&self.url).await.int(sql).await
    }

    /// Like [`TestDb::int`]; on SQLite the sources file beside the database
    /// is attached as `sources` first.
    pub async fn int_with_sources(&self, sql: &str) -> i64 {
        let mut conn = RawConn::open(&self.url).await;
        if let Some(path) = self.url.strip_prefix("sqlite://") {
            let file = switchboard::store::source::file_beside(std::path::Path::new(path))
                .expect("a database in a file");
            conn.exec(&format!("ATTACH DATABASE '{}' AS sources", file.display()))
                .await
                .expect("the sources file attaches");
        }
        conn.int(sql).await
    }

    /// The first column of every row, as text.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match RawConn::open(&self.url).await {
            RawConn::Sqlite(mut c) => sqlx::query_scalar(sql).fetch_all(&mut c).await,
            RawConn::Postgres(mut c) => sqlx::query_scalar(sql).fetch_all(&mut c).await,
        }
        .unwrap_or_else(|e| panic!("query failed: {e}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs outside async; a small runtime of its own drops the database.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_admin_url())
                    .await
                    .ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

pub fn hex_id() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(
        &(nanos, std::process::id(), std::thread::current().id()),
        &mut h,
    );
    format!("{:016x}", std::hash::Hasher::finish(&h))
}

pub const ALICE: &str = "alice-token-0123456789";
pub const BOB: &str = "bob-token-0123456789ab";
pub const CAROL: &str = "carol-token-0123456789";
pub const ADMIN: &str = "admin-token-0123456789";

/// The configuration every API test starts from: two services, three agents,
/// an admin. Both services use pickup distribution (no offers), so tests of
/// other features are not raced by routing; routing tests configure their own.
pub fn base_config(db_url: &str) -> String {
    format!(
        r#"
[database]
url = "{db_url}"
max_connections = 8

[http]
bind = "127.0.0.1:0"

[[services]]
id = "support"
name = "Support"
email_address = "support@example.com"
distribution = "pickup"
codes = [
  {{ code = "billing", label = "Billing", kind = "primary" }},
  {{ code = "refund", label = "Refund", kind = "secondary" }},
  {{ code = "vip", label = "VIP", kind = "any" }},
]

[[services]]
id = "sales"
name = "Sales"
email_address = "sales@example.com"
distribution = "pickup"
codes_enabled = false

[[agents]]
id = "alice"
name = "Alice"
email = "alice@example.com"
token = "{ALICE}"
services = ["support"]

[[agents]]
id = "bob"
name = "Bob"
email = "bob@example.com"
token = "{BOB}"
services = ["support"]
capacity = {{ email = 1, im = 1, call = 1 }}

[[agents]]
id = "carol"
name = "Carol"
email = "carol@example.com"
token = "{CAROL}"
services = ["sales"]

[[agents]]
id = "admin"
name = "Admin"
email = "admin@example.com"
token = "{ADMIN}"
admin = true
"#
    )
}

/// [`base_config`] plus one Maildir mailbox `inbox` (at `inbox`, created)
/// feeding Support, scanned every 100 ms.
pub fn maildir_config(db_url: &str, inbox: &Path) -> String {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(inbox.join(sub)).expect("maildir layout");
    }
    base_config(db_url)
        + &format!(
            r#"
[ingest]
maildir_scan_ms = 100
maildir_settle_ms = 300

[[mailboxes]]
id = "inbox"
service = "support"
kind = "maildir"
path = "{}"
"#,
            inbox.display()
        )
}

/// A running instance and an HTTP client for it.
pub struct TestApp {
    pub running: Option<Running>,
    pub url: String,
    pub client: reqwest::Client,
    pub db: TestDb,
}

impl TestApp {
    pub async fn spawn(db: Db) -> TestApp {
        let db = TestDb::create(db).await;
        Self::spawn_on(db, None).await
    }

    /// Starts on an existing database, optionally with another configuration text.
    pub async fn spawn_on(db: TestDb, config_text: Option<String>) -> TestApp {
        let text = config_text.unwrap_or_else(|| base_config(&db.url));
        let config =
            Config::from_parts(&text, Path::new("test.toml"), &[]).expect("test config is valid");
        let running = Running::start(&config).await.expect("switchboard starts");
        TestApp {
            url: running.url(),
            running: Some(running),
            client: reqwest::Client::new(),
            db,
        }
    }

    /// Stops the instance and hands back its database (to restart on it).
    pub async fn stop(mut self) -> TestDb {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean shutdown");
        }
        self.db
    }

    pub fn store(&self) -> &switchboard::store::Store {
        &self.running.as_ref().expect("running").store
    }

    /// Sends any request; its status and JSON body (or the text as a string).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.expect("request reaches the server");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.send(
            self.client
                .get(format!("{}{path}", self.url))
                .bearer_auth(token),
        )
        .await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            self.client
                .post(format!("{}{path}", self.url))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    pub async fn put(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            self.client
                .put(format!("{}{path}", self.url))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    /// A request with `method` to `path`, as `token`, to add headers and a body to.
    pub fn request(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
    }

    /// Posts a task as the admin (as telephony would) and returns its id.
    pub async fn new_task(&self, modality: &str, subject: &str, address: &str) -> String {
        let (status, body) = self
            .post(
                ADMIN,
                "/api/v1/tasks",
                serde_json::json!({
                    "service": "support",
                    "modality": modality,
                    "subject": subject,
                    "customer": {"address": address},
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("task id").to_string()
    }

    /// Picks up a task as `token` and returns the session id.
    pub async fn pickup(&self, token: &str, task: &str) -> String {
        let (status, body) = self
            .post(token, &format!("/api/v1/tasks/{task}/pickup"), Value::Null)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("session id").to_string()
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Signs in over plain HTTP with the sign-in form (redirects not
    /// followed): the answer, with its `Set-Cookie`.
    pub async fn sign_in_form(&self, token: &str) -> reqwest::Response {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("{}/sign-in", self.url))
            .form(&[("method", "token"), ("token", token), ("next", "/")])
            .send()
            .await
            .unwrap()
    }

    /// GET `path` as the signed-in page of `agent_token` would (an htmx
    /// request with its session cookie); asserts 200 and answers the HTML.
    pub async fn page(&self, agent_token: &str, path: &str) -> String {
        let r = self.sign_in_form(agent_token).await;
        let cookie = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("sb_session="))
            .and_then(|c| c.split(';').next())
            .unwrap_or_else(|| panic!("signed in: {}", r.status()))
            .to_string();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = client
            .get(format!("{}{path}", self.url))
            .header("cookie", cookie)
            .header("hx-request", "true")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.text().await.unwrap()
    }

    /// A count from the database, e.g. `SELECT count(*) FROM tasks`.
    pub async fn count(&self, sql: &str) -> i64 {
        use switchboard::store::Store;
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self.store() {
            Store::Sqlite(pool, _) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Store::Postgres(pool, _) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
        .expect("count query")
    }

    /// How many raw sources are staged (and match `filter`, a condition on
    /// the row): PostgreSQL's `message_sources`, or the rows of SQLite's
    /// sources file beside the database.
    pub async fn count_staged_sources(&self, filter: &str) -> i64 {
        use switchboard::store::Store;
        let sql = format!("SELECT count(*) FROM message_sources WHERE {filter}");
        match self.store() {
            Store::Postgres(..) => self.count(&sql).await,
            Store::Sqlite(pool, _) => {
                let file =
                    switchboard::store::source::file_beside(pool.connect_options().get_filename())
                        .expect("a database in a file");
                let url = format!("sqlite://{}?mode=ro", file.display());
                let sources = sqlx::SqlitePool::connect(&url)
                    .await
                    .expect("the sources file");
                let n = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&sources)
                    .await
                    .expect("count query");
                sources.close().await;
                n
            }
        }
    }

    /// Runs one SQL statement directly against the database, bypassing the API.
    pub async fn raw_sql(&self, sql: &str) -> Result<u64, String> {
        use switchboard::store::Store;
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self.store() {
            Store::Sqlite(pool, _) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            Store::Postgres(pool, _) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(|e| e.to_string())
    }
}

/// Runs an async test body once per backend, each in its own test.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::support::app::Db::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::support::app::Db::Postgres).await
                }
            }
        )*
    };
}

/// A connection of its own to a test's database, outside the application's
/// pool, so that a test can set connection options (SQLite pragmas,
/// PostgreSQL session settings) without leaking them into the pool, and
/// write to the database as any other client could.
pub enum RawConn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl RawConn {
    pub async fn open(url: &str) -> RawConn {
        match Self::connect(url).await {
            Ok(c) => c,
            Err(e) => panic!("cannot connect to the test database {url}: {e}"),
        }
    }

    /// `None` when the database cannot be reached (yet).
    pub async fn try_open(url: &str) -> Option<RawConn> {
        Self::connect(url).await.ok()
    }

    async fn connect(url: &str) -> Result<RawConn, sqlx::Error> {
        use sqlx::Connection;
        Ok(if url.starts_with("postgres") {
            RawConn::Postgres(sqlx::PgConnection::connect(url).await?)
        } else {
            RawConn::Sqlite(sqlx::SqliteConnection::connect(url).await?)
        })
    }

    /// Runs one statement; rows affected, or the database's error as text.
    pub async fn exec(&mut self, sql: &str) -> Result<u64, String> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            RawConn::Sqlite(c) => sqlx::query(sql)
                .execute(&mut *c)
                .await
                .map(|r| r.rows_affected()),
            RawConn::Postgres(c) => sqlx::query(sql)
                .execute(&mut *c)
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(|e| e.to_string())
    }

    /// The first column of the first row as text (`None` when no row).
    pub async fn text(&mut self, sql: &str) -> Option<String> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            RawConn::Sqlite(c) => sqlx::query_scalar(sql).fetch_optional(&mut *c).await,
            RawConn::Postgres(c) => sqlx::query_scalar(sql).fetch_optional(&mut *c).await,
        }
        .unwrap_or_else(|e| panic!("query failed: {e}"))
    }

    /// The first column of the first row as a number.
    pub async fn int(&mut self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            RawConn::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(&mut *c).await,
            RawConn::Postgres(c) => sqlx::query_scalar(sql).fetch_one(&mut *c).await,
        }
        .unwrap_or_else(|e| panic!("query failed: {e}"))
    }

    /// One row of `table` (`key` = 'value'), every column of it included
    /// (and SQLite's rowid), as one text to compare before and after.
    pub async fn row(&mut self, table: &str, key: &str, value: &str) -> Option<String> {
        let sql = match self {
            RawConn::Postgres(_) => {
                format!("SELECT row_to_json(t)::text FROM {table} t WHERE {key} = '{value}'")
            }
            RawConn::Sqlite(_) => {
                let cols = self
                    .text(&format!(
                        "SELECT group_concat(name, ', ') FROM pragma_table_info('{table}')"
                    ))
                    .await
                    .expect("table has columns");
                format!("SELECT json_array(rowid, {cols}) FROM {table} WHERE {key} = '{value}'")
            }
        };
        self.text(&sql).await
    }
}

/// The messages summary of a task's details (`GET /api/v1/tasks/{id}`) as
/// `[count, inbound, outbound, last_direction]`.
pub fn message_counts(details: &Value) -> [Value; 4] {
    let m = &details["messages"];
    ["count", "inbound", "outbound", "last_direction"].map(|k| m[k].clone())
}
