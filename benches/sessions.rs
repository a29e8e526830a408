//! `GET /api/v1/me/sessions` against PostgreSQL: latency at a fixed offered load
//! (open loop) and throughput at 64 concurrent clients (closed loop) beside
//! `pgbench` running the same SQL against the same database. See benches/README.md.
//!
//! `cargo bench --bench sessions -- [--sessions 1000000] [--seconds 10] [--rate 1000]
//!  [--clients 64] [--agents 500] [--pool 16] [--keep-db] [--no-pgbench]`
mod common;

use anyhow::{Context, Result, anyhow, bail};
use common::{pg_admin_url, redact};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use switchboard::domain::cursor::Cursor;
use tokio::time::Instant;

/// The columns `Store::my_sessions` selects (src/store/sessions.rs).
const SESSION_COLUMNS: &str = "id, task_id, agent_id, service_id, modality, state, result, created_at, \
     answered_at, ended_at, saved_at, subject, customer_name, customer_address, codes_primary, codes_secondary, tags";
const SERVICES: [&str; 5] = ["support", "billing", "sales", "tech", "retention"];
/// The search word: in 2 of the 20 subjects and in 10% of the tags.
const SEARCH_WORD: &str = "refund";
/// Pages followed to get a deep cursor, and how many agents get one.
const CURSOR_DEPTH: usize = 20;
const CURSOR_AGENTS: usize = 32;
/// Rows per INSERT … SELECT statement while loading.
const LOAD_CHUNK: u64 = 100_000;
const P99_TARGET_MS: f64 = 10.0;
/// PostgreSQL's own p99 for the search (pgbench), in ms.
const PG_SEARCH_P99_TARGET_MS: f64 = 20.0;
/// Mails ingested (Maildir) for the preview reads; agent-001 (support) holds them.
const PREVIEW_MAILS: usize = 3;
const RATIO_TARGET: f64 = 0.5;

struct Args {
    sessions: u64,
    seconds: u64,
    rate: f64,
    clients: usize,
    agents: usize,
    pool: u32,
    keep_db: bool,
    pgbench: bool,
    sqlite: bool,
    hot_rate: f64,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            sessions: 1_000_000,
            seconds: 10,
            rate: 1000.0,
            clients: 64,
            agents: 500,
            pool: 16,
            keep_db: false,
            pgbench: true,
            sqlite: true,
            hot_rate: 200.0,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| -> Result<String> {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| anyhow!("{name} needs a value"))
            };
            match key.as_str() {
                "--sessions" => a.sessions = value("--sessions")?.replace('_', "").parse()?,
                "--seconds" => a.seconds = value("--seconds")?.parse()?,
                "--rate" => a.rate = value("--rate")?.parse()?,
                "--clients" => a.clients = value("--clients")?.parse()?,
                "--agents" => a.agents = value("--agents")?.parse()?,
                "--pool" => a.pool = value("--pool")?.parse()?,
                "--keep-db" => a.keep_db = true,
                "--no-pgbench" => a.pgbench = false,
                "--no-sqlite" => a.sqlite = false,
                "--hot-rate" => a.hot_rate = value("--hot-rate")?.parse()?,
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                "-h" | "--help" => {
                    println!(
                        "cargo bench --bench sessions -- [--sessions N] [--seconds S] [--rate R] \
                         [--clients C] [--agents A] [--pool P] [--keep-db] [--no-pgbench] [--no-sqlite] \
                         [--hot-rate R]\n\
                         PostgreSQL: $SWITCHBOARD_BENCH_PG_URL, $SWITCHBOARD_TEST_PG_URL or \
                         postgres://postgres@127.0.0.1:5432/postgres"
                    );
                    std::process::exit(0);
                }
                other => eprintln!("ignoring argument {other}"),
            }
        }
        if a.sessions == 0
            || a.seconds == 0
            || a.rate <= 0.0
            || a.hot_rate <= 0.0
            || a.clients == 0
            || a.pool == 0
        {
            bail!("--sessions, --seconds, --rate, --clients and --pool must be positive");
        }
        if !(5..=999).contains(&a.agents) {
            bail!("--agents must be between 5 and 999");
        }
        Ok(a)
    }
}

/// What must be undone however the run ends: the server process and the database.
struct Guard {
    admin_url: String,
    db: Option<String>,
    servers: Vec<Child>,
    keep_db: bool,
}

impl Guard {
    fn cleanup(&mut self) {
        for mut child in self.servers.drain(..) {
            // SIGTERM for a graceful stop, SIGKILL if it takes too long.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let Some(name) = self.db.take() else { return };
        if self.keep_db {
            eprintln!(
                "kept database {name} (--keep-db): DROP DATABASE {name} WITH (FORCE) when done"
            );
            return;
        }
        let admin = self.admin_url.clone();
        let dropped = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await?;
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
            Ok(Ok(())) => eprintln!("dropped the bench database"),
            Ok(Err(e)) => eprintln!("could not drop the bench database: {e:#}"),
            Err(_) => eprintln!("could not drop the bench database (panic)"),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut guard = Guard {
        admin_url: pg_admin_url(),
        db: None,
        servers: Vec::new(),
        keep_db: args.keep_db,
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run(&args, &mut guard) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    guard.cleanup();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything measured, for the final table.
struct Report {
    dataset: String,
    server_log: String,
    open: Vec<(Kind, Stats)>,
    closed: Vec<(Kind, Stats, Option<PgBench>)>,
    /// The other hot reads, open loop at --hot-rate.
    hot: Vec<(Kind, Stats)>,
    sqlite: Option<SqliteReport>,
    /// EXPLAIN ANALYZE of the deep page and the search (generic plans).
    explain: String,
    /// Load average at the start and at the end.
    loadavg: (String, String),
}

/// The SQLite run: its data set and the closed loop per kind.
struct SqliteReport {
    dataset: String,
    closed: Vec<(Kind, Stats)>,
    server_log: String,
}

async fn run(args: &Args, guard: &mut Guard) -> Result<()> {
    let admin = guard.admin_url.clone();
    let name = format!("sbbench_{:016x}", rand::rng().random::<u64>());
    {
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
        guard.db = Some(name.clone());
    }
    let mut db_url = url::Url::parse(&admin).context("the PostgreSQL URL")?;
    db_url.set_path(&format!("/{name}"));
    let db_url = db_url.to_string();
    println!("database {name} on {}", redact(&admin));

    // The real server, as a separate process, with a Maildir mailbox for the
    // previews of the hot reads.
    let dir = tempfile::tempdir()?;
    let maildir = dir.path().join("maildir");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub))?;
    }
    for i in 0..PREVIEW_MAILS {
        std::fs::write(
            maildir.join("new").join(format!("{i}.bench:2,")),
            preview_mail(i),
        )?;
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let (base, server_pid, server_log) = start_server(
        &client,
        guard,
        dir.path(),
        "pg",
        &db_url,
        args,
        Some(&maildir),
    )
    .await?;
    let report_loadavg_start = loadavg();
    // Bulk load.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await?;
    let t = Instant::now();
    load(&pool, args.sessions, args.agents).await?;
    let load_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    sqlx::raw_sql("VACUUM (ANALYZE) tasks, user_sessions")
        .execute(&pool)
        .await?;
    let vacuum_secs = t.elapsed().as_secs_f64();
    let dataset = dataset_summary(&pool, args, load_secs, vacuum_secs).await?;
    println!("{dataset}");

    // The three kinds of request.
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut target = Target::new(&base, args.agents)?;
    target.deep = sample_cursors(&client, &mut target, &mut rng).await?;
    if target.deep.is_empty() {
        bail!("no agent has more than one page of sessions: use more --sessions");
    }
    let cursor_line = target.cursor_line();
    println!("{cursor_line}");
    sanity_check(&client, &target).await?;
    target.previews = pick_up_previews(&client, &target, &pool).await?;
    let target = Arc::new(target);

    // Warm-up: connections, caches, prepared statements.
    for kind in Kind::ALL {
        closed_loop(&client, &target, kind, args.clients, Duration::from_secs(1)).await;
    }

    let secs = args.seconds;
    let mut report = Report {
        dataset: format!("{dataset}\n{cursor_line}"),
        server_log: String::new(),
        open: Vec::new(),
        closed: Vec::new(),
        hot: Vec::new(),
        sqlite: None,
        explain: String::new(),
        loadavg: (report_loadavg_start, String::new()),
    };
    let pg_snap = |pool: &PgPool| {
        let pool = pool.clone();
        async move { CpuSnap::take(server_pid, server_backends(&pool).await.as_deref()) }
    };
    for kind in Kind::ALL {
        println!("(a) open loop, {kind}: {} req/s for {secs} s …", args.rate);
        let before = pg_snap(&pool).await;
        let mut s = open_loop(&client, &target, kind, args.rate, secs).await;
        s.cpu = before.until(&pg_snap(&pool).await, s.sent);
        println!("    {}", s.line());
        report.open.push((kind, s));
    }
    let scripts = PgScripts::write(dir.path(), &target)?;
    for kind in Kind::ALL {
        println!(
            "(b) closed loop, {kind}: {} clients for {secs} s …",
            args.clients
        );
        let before = pg_snap(&pool).await;
        let mut s = closed_loop(
            &client,
            &target,
            kind,
            args.clients,
            Duration::from_secs(secs),
        )
        .await;
        s.cpu = before.until(&pg_snap(&pool).await, s.sent);
        println!("    {}", s.line());
        let pg = if args.pgbench {
            let files = scripts.for_kind(kind).to_vec();
            let (url, clients, dir) = (db_url.clone(), args.clients, dir.path().to_path_buf());
            let before = CpuSnap::take(server_pid, None);
            let r = tokio::task::spawn_blocking(move || pgbench(&url, &files, clients, secs, &dir))
                .await?;
            let busy = before
                .until(&CpuSnap::take(server_pid, None), 1)
                .map_or(f64::NAN, |c| c.busy_pct);
            match r {
                Ok(mut pg) => {
                    pg.busy_pct = busy;
                    println!(
                        "    pgbench: {:.0} tps, latency average {:.2} ms, p99 {:.2} ms; machine {:.0}% busy",
                        pg.tps, pg.avg_ms, pg.p99_ms, pg.busy_pct
                    );
                    Some(pg)
                }
                Err(e) => {
                    println!("    pgbench failed: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        report.closed.push((kind, s, pg));
    }
    // (c) The other reads of every click, measured the same way as (a).
    for kind in Kind::HOT {
        if kind == Kind::Preview && target.previews.is_empty() {
            println!("(c) {kind}: no ingested mail to preview, skipped");
            continue;
        }
        println!(
            "(c) open loop, {kind}: {} req/s for {secs} s …",
            args.hot_rate
        );
        let before = pg_snap(&pool).await;
        let mut s = open_loop(&client, &target, kind, args.hot_rate, secs).await;
        s.cpu = before.until(&pg_snap(&pool).await, s.sent);
        println!("    {}", s.line());
        report.hot.push((kind, s));
    }
    report.explain = explain_at_depth(&pool, &target).await;
    pool.close().await;
    report.server_log = summarize_server_log(&server_log, args.pool);

    // (d) SQLite: the same data shape in a SQLite file, closed loop.
    if args.sqlite {
        report.sqlite = Some(sqlite_phase(args, guard, &client, dir.path()).await?);
    }
    report.loadavg.1 = loadavg();
    print_report(args, &report);
    Ok(())
}

/// The machine's load average (1, 5, 15 min) from /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Starts `switchboard serve` on `db_url` (named `tag` in its files) and waits
/// until it is ready: its base URL, pid and log file.
async fn start_server(
    client: &reqwest::Client,
    guard: &mut Guard,
    dir: &Path,
    tag: &str,
    db_url: &str,
    args: &Args,
    maildir: Option<&Path>,
) -> Result<(String, u32, PathBuf)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config_path = dir.join(format!("switchboard-{tag}.toml"));
    let server_log = dir.join(format!("server-{tag}.log"));
    std::fs::write(
        &config_path,
        config_text(db_url, port, args.agents, args.pool, maildir),
    )?;
    // SB_BENCH_SERVER: another build of the server (an older commit's), to
    // compare two builds on the same machine and data.
    let server = std::env::var_os("SB_BENCH_SERVER")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_switchboard").into());
    let mut cmd = Command::new(server);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&server_log)?));
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd.spawn().context("start the switchboard binary")?;
    let pid = child.id();
    guard.servers.push(child);
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    if let Err(e) = wait_ready(client, &base, guard).await {
        let log = std::fs::read_to_string(&server_log).unwrap_or_default();
        return Err(e.context(format!("server log:\n{log}")));
    }
    println!(
        "{tag} server ready in {:.1} s (migrated, {} agents applied)",
        started.elapsed().as_secs_f64(),
        args.agents
    );
    Ok((base, pid, server_log))
}

fn token(n: usize) -> String {
    format!("bench-agent-{n}-token-xxxxxxxx")
}

fn agent_id(n: usize) -> String {
    format!("agent-{n:03}")
}

fn config_text(
    db_url: &str,
    port: u16,
    agents: usize,
    pool: u32,
    maildir: Option<&Path>,
) -> String {
    let mut s = format!(
        "[database]\nurl = \"{db_url}\"\nmax_connections = {pool}\n\n\
         [http]\nbind = \"127.0.0.1:{port}\"\n\n[log]\nlevel = \"warn\"\n"
    );
    if let Some(dir) = maildir {
        let _ = write!(
            s,
            "\n[ingest]\nmaildir_scan_ms = 100\n\n[[mailboxes]]\nid = \"bench-inbox\"\n\
             service = \"{}\"\nkind = \"maildir\"\npath = \"{}\"\n",
            SERVICES[0],
            dir.display()
        );
    }
    for id in SERVICES {
        let _ = write!(
            s,
            "\n[[services]]\nid = \"{id}\"\nname = \"{}\"\nemail_address = \"{id}@bench.example\"\n\
             distribution = \"pickup\"\n\
             codes = [\n  {{ code = \"billing\", label = \"Billing\", kind = \"primary\" }},\n  \
             {{ code = \"refund\", label = \"Refund\", kind = \"secondary\" }},\n  \
             {{ code = \"delivery\", label = \"Delivery\", kind = \"any\" }},\n]\n",
            id[..1].to_uppercase() + &id[1..]
        );
    }
    for n in 1..=agents {
        let _ = write!(
            s,
            "\n[[agents]]\nid = \"{id}\"\nname = \"Agent {n}\"\nemail = \"{id}@bench.example\"\n\
             token = \"{tok}\"\nservices = [\"{svc}\"]\n",
            id = agent_id(n),
            tok = token(n),
            svc = SERVICES[(n - 1) % SERVICES.len()],
        );
    }
    s
}

async fn wait_ready(client: &reqwest::Client, base: &str, guard: &mut Guard) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(child) = guard.servers.last_mut()
            && let Some(status) = child.try_wait()?
        {
            guard.servers.pop();
            bail!("the server exited during startup: {status}");
        }
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server was not ready within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One chunk's rows, every value derived from `g` by hashing, so that the task
/// and the session statements agree without a staging table.
fn source_sql(lo: u64, hi: u64, total: u64, agents: usize, t0: i64) -> String {
    const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;
    let h = |k: u32| format!("(hashint8(g * 8 + {k})::bigint & 2147483647)");
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let subjects = list(&[
        "Refund request for order",
        "Where is my parcel",
        "Invoice copy needed",
        "Password reset",
        "Change of address",
        "Cancel my subscription",
        "Damaged item received",
        "Question about warranty",
        "Upgrade my plan",
        "Billing error on last invoice",
        "Late delivery complaint",
        "Refund not received yet",
        "Account locked",
        "Update payment method",
        "Product availability",
        "Return label request",
        "Technical issue with the app",
        "Feedback on service",
        "Order confirmation missing",
        "Loyalty points question",
    ]);
    let firsts = list(&[
        "Alice", "Bruno", "Chloe", "David", "Emma", "Farid", "Giulia", "Hugo", "Ines", "Jonas",
        "Karin", "Leo", "Maya", "Nils", "Olga", "Pierre", "Quentin", "Rosa", "Sven", "Tara",
    ]);
    let lasts = list(&[
        "Martin", "Bernard", "Dubois", "Moreau", "Laurent", "Simon", "Michel", "Lefebvre",
        "Garcia", "Rossi", "Muller", "Schmidt", "Novak", "Jensen", "Silva", "Costa", "Nguyen",
        "Kowalski", "Horvat", "Berg",
    ]);
    let services = list(&SERVICES);
    let nsvc = SERVICES.len();
    format!(
        "SELECT g, 'ses_' || lpad(g::text, 12, '0') AS sid, 'tsk_' || lpad(g::text, 12, '0') AS tid,
            'agent-' || lpad(a::text, 3, '0') AS agent_id,
            (ARRAY[{services}])[((a - 1) % {nsvc} + 1)::int] AS service_id,
            CASE WHEN m < 50 THEN 'email' WHEN m < 85 THEN 'im' ELSE 'call' END AS modality,
            CASE WHEN r < 85 THEN 'accepted' WHEN r < 93 THEN 'declined' WHEN r < 98 THEN 'rona'
                 ELSE 'transferred' END AS result,
            created_at,
            created_at - (w / 13) % 600000 AS arrived_at,
            CASE WHEN r < 85 OR r >= 98 THEN created_at + 2000 + w % 30000 END AS answered_at,
            created_at + 5000 + (w / 7) % 1800000 AS ended_at,
            created_at + 5000 + (w / 7) % 1800000 + 1000 + (w / 11) % 120000 AS saved_at,
            (ARRAY[{subjects}])[(s + 1)::int] || ' #' || (100000 + g % 900000) AS subject,
            fi || ' ' || la AS customer_name,
            CASE WHEN m < 50 THEN lower(fi) || '.' || lower(la) || (c % 97) || '@example.com'
                 WHEN m < 85 THEN 'im:' || lower(fi) || (c % 9973)
                 ELSE '+4930' || lpad((c % 10000000)::text, 7, '0') END AS customer_address,
            CASE WHEN r >= 85 THEN '[]'
                 ELSE (ARRAY['[\"billing\"]', '[\"refund\"]', '[\"delivery\"]', '[\"billing\",\"delivery\"]', '[]'])[(s % 5 + 1)::int] END
                 AS codes_primary,
            CASE WHEN t < 70 THEN '[]' WHEN t < 75 THEN '[\"refund\",\"vip\"]' WHEN t < 80 THEN '[\"refund\"]'
                 WHEN t < 88 THEN '[\"vip\"]' WHEN t < 94 THEN '[\"complaint\"]' ELSE '[\"follow-up\"]' END AS tags
         FROM (
            SELECT g, a, m, r, s, c, t, w,
                {t0}::bigint + g * {YEAR_MS}::bigint / {total} + w % 60000 AS created_at,
                (ARRAY[{firsts}])[(c % 20 + 1)::int] AS fi,
                (ARRAY[{lasts}])[((c / 20) % 20 + 1)::int] AS la
            FROM (
                SELECT g, 1 + {h1} % {agents} AS a, {h2} % 100 AS m, {h3} % 100 AS r, {h4} % 20 AS s,
                       {h5} AS c, {h6} % 100 AS t, {h7} AS w
                FROM generate_series({lo}::bigint, {hi}::bigint) g
            ) x
         ) y",
        h1 = h(1),
        h2 = h(2),
        h3 = h(3),
        h4 = h(4),
        h5 = h(5),
        h6 = h(6),
        h7 = h(7),
    )
}

async fn load(pool: &PgPool, total: u64, agents: usize) -> Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 365 * 24 * 3600 * 1000;
    let next = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (pool, next, done) = (pool.clone(), next.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            sqlx::raw_sql("SET synchronous_commit = off")
                .execute(&mut *conn)
                .await?;
            loop {
                let lo = next.fetch_add(LOAD_CHUNK, Ordering::SeqCst);
                if lo > total {
                    return anyhow::Ok(());
                }
                let hi = (lo + LOAD_CHUNK - 1).min(total);
                let src = source_sql(lo, hi, total, agents, t0);
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "INSERT INTO tasks (id, service_id, modality, state, priority, arrived_at, updated_at,
                        ended_at, customer_kind, customer_name, customer_address, subject)
                     SELECT tid, service_id, modality, 'concluded', 0, arrived_at, saved_at, saved_at,
                        'external', customer_name, customer_address, subject FROM ({src}) s"
                )))
                .execute(&mut *conn)
                .await
                .context("insert tasks")?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "INSERT INTO user_sessions (id, task_id, agent_id, service_id, modality, state, result,
                        created_at, answered_at, ended_at, saved_at, subject, customer_name,
                        customer_address, codes_primary, codes_secondary, tags, updated_at)
                     SELECT sid, tid, agent_id, service_id, modality, 'concluded', result, created_at,
                        answered_at, ended_at, saved_at, subject, customer_name, customer_address,
                        codes_primary, '[]', tags, saved_at FROM ({src}) s"
                )))
                .execute(&mut *conn)
                .await
                .context("insert user_sessions")?;
                let n = done.fetch_add(hi - lo + 1, Ordering::SeqCst) + hi - lo + 1;
                eprintln!(
                    "  loaded {} / {} sessions ({:.0} s)",
                    thousands(n),
                    thousands(total),
                    start.elapsed().as_secs_f64()
                );
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

fn search_predicate(pattern: &str) -> String {
    format!(
        "(lower(subject) LIKE {pattern} ESCAPE '\\' OR lower(customer_name) LIKE {pattern} ESCAPE '\\' \
         OR lower(customer_address) LIKE {pattern} ESCAPE '\\' \
         OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(tags::jsonb) AS tag(v) WHERE lower(tag.v) LIKE {pattern} ESCAPE '\\'))"
    )
}

async fn dataset_summary(pool: &PgPool, args: &Args, load: f64, vacuum: f64) -> Result<String> {
    let (sessions, tasks, db_size, table_size, agent_index, search_index): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM user_sessions), (SELECT count(*) FROM tasks),
                pg_database_size(current_database()), pg_total_relation_size('user_sessions'),
                pg_relation_size('user_sessions_agent'), pg_relation_size('user_sessions_agent_search')",
    )
        .fetch_one(pool)
        .await?;
    let matches: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM user_sessions WHERE {}",
        search_predicate(&format!("'%{SEARCH_WORD}%'"))
    )))
    .fetch_one(pool)
    .await?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(pool)
        .await?;
    let shared: String = sqlx::query_scalar("SHOW shared_buffers")
        .fetch_one(pool)
        .await?;
    let mb = |b: i64| b as f64 / 1_048_576.0;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    Ok(format!(
        "dataset: {} concluded sessions + {} tasks, {} agents, {} services; database {:.0} MB \
         (user_sessions with indexes {:.0} MB, index user_sessions_agent {:.0} MB, \
         covering search index user_sessions_agent_search {:.0} MB)\n\
         loaded in {:.1} s, VACUUM ANALYZE {:.1} s; q={SEARCH_WORD} matches {:.1}% of sessions\n\
         PostgreSQL {version}, shared_buffers {shared}; server pool {} connections; {cpus} CPUs shared by \
         server, PostgreSQL, load generator and pgbench",
        thousands(sessions as u64),
        thousands(tasks as u64),
        args.agents,
        SERVICES.len(),
        mb(db_size),
        mb(table_size),
        mb(agent_index),
        mb(search_index),
        load,
        vacuum,
        100.0 * matches as f64 / sessions.max(1) as f64,
        args.pool,
    ))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Deep,
    Search,
    /// `GET /api/v1/tasks/{id}` of one of the caller's tasks.
    TaskGet,
    /// `GET /api/v1/tasks/{id}/preview` of an ingested mail the caller holds.
    Preview,
    /// `GET /api/v1/me/events`: until the stream's headers arrive.
    Events,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::First, Kind::Deep, Kind::Search];
    const HOT: [Kind; 3] = [Kind::TaskGet, Kind::Preview, Kind::Events];
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Kind::First => "first page",
            Kind::Deep => "deep cursor",
            Kind::Search => "search q=",
            Kind::TaskGet => "task",
            Kind::Preview => "preview",
            Kind::Events => "events open",
        })
    }
}

struct DeepCursor {
    agent: usize,
    cursor: String,
    /// The page the cursor opens (1 is the first page).
    page: usize,
}

struct Target {
    base: String,
    /// `Bearer <token>` of agent n at index n - 1.
    auths: Vec<HeaderValue>,
    deep: Vec<DeepCursor>,
    /// (agent index, one of its task ids), from the first pages read.
    tasks: Vec<(usize, String)>,
    /// (agent index, an ingested email task it holds).
    previews: Vec<(usize, String)>,
}

impl Target {
    fn new(base: &str, agents: usize) -> Result<Target> {
        Ok(Target {
            base: base.to_string(),
            auths: (1..=agents)
                .map(|n| HeaderValue::from_str(&format!("Bearer {}", token(n))))
                .collect::<Result<_, _>>()?,
            deep: Vec::new(),
            tasks: Vec::new(),
            previews: Vec::new(),
        })
    }

    fn cursor_line(&self) -> String {
        let depth =
            self.deep.iter().map(|d| d.page).sum::<usize>() as f64 / self.deep.len().max(1) as f64;
        format!(
            "deep cursor: {} agents, page {:.1} on average ({:.0} rows skipped)",
            self.deep.len(),
            depth,
            (depth - 1.0) * 50.0
        )
    }

    fn pick(&self, kind: Kind, rng: &mut StdRng) -> (String, HeaderValue) {
        let base = &self.base;
        match kind {
            Kind::First => {
                let a = rng.random_range(0..self.auths.len());
                (format!("{base}/api/v1/me/sessions"), self.auths[a].clone())
            }
            Kind::Deep => {
                let d = &self.deep[rng.random_range(0..self.deep.len())];
                (
                    format!("{base}/api/v1/me/sessions?cursor={}", d.cursor),
                    self.auths[d.agent].clone(),
                )
            }
            Kind::Search => {
                let a = rng.random_range(0..self.auths.len());
                (
                    format!("{base}/api/v1/me/sessions?q={SEARCH_WORD}"),
                    self.auths[a].clone(),
                )
            }
            Kind::TaskGet => {
                let (a, t) = &self.tasks[rng.random_range(0..self.tasks.len())];
                (format!("{base}/api/v1/tasks/{t}"), self.auths[*a].clone())
            }
            Kind::Preview => {
                let (a, t) = &self.previews[rng.random_range(0..self.previews.len())];
                (
                    format!("{base}/api/v1/tasks/{t}/preview"),
                    self.auths[*a].clone(),
                )
            }
            Kind::Events => {
                let a = rng.random_range(0..self.auths.len());
                (format!("{base}/api/v1/me/events"), self.auths[a].clone())
            }
        }
    }
}

async fn get_json(
    client: &reqwest::Client,
    url: &str,
    auth: &HeaderValue,
) -> Result<serde_json::Value> {
    let resp = client
        .get(url)
        .header(AUTHORIZATION, auth.clone())
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// Follows `next_cursor` up to CURSOR_DEPTH pages for a sample of agents and
/// keeps the deepest cursor that still opens a non-empty page.
async fn sample_cursors(
    client: &reqwest::Client,
    target: &mut Target,
    rng: &mut StdRng,
) -> Result<Vec<DeepCursor>> {
    let mut agents: Vec<usize> = (0..target.auths.len()).collect();
    for i in 0..agents.len() {
        let j = rng.random_range(i..agents.len());
        agents.swap(i, j);
    }
    let mut out = Vec::new();
    for &agent in agents.iter().take(CURSOR_AGENTS) {
        let auth = &target.auths[agent].clone();
        let mut cursor: Option<String> = None;
        let mut best = None;
        for page in 1..=CURSOR_DEPTH + 1 {
            let url = match &cursor {
                Some(c) => format!("{}/api/v1/me/sessions?cursor={c}", target.base),
                None => format!("{}/api/v1/me/sessions", target.base),
            };
            let body = get_json(client, &url, auth).await?;
            let items = body["items"].as_array().map_or(0, Vec::len);
            if page == 1 {
                target.tasks.extend(
                    body["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i["task_id"].as_str())
                        .map(|t| (agent, t.to_string())),
                );
            }
            if items == 0 {
                break;
            }
            if let Some(c) = &cursor {
                best = Some((c.clone(), page));
            }
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        if let Some((cursor, page)) = best {
            out.push(DeepCursor {
                agent,
                cursor,
                page,
            });
        }
    }
    Ok(out)
}

/// Each kind answers 200 with sessions of the caller only.
async fn sanity_check(client: &reqwest::Client, target: &Target) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    for kind in Kind::ALL {
        let (url, auth) = target.pick(kind, &mut rng);
        let body = get_json(client, &url, &auth).await?;
        let items = body["items"]
            .as_array()
            .ok_or_else(|| anyhow!("{kind}: no items in {body}"))?;
        if items.is_empty() {
            bail!("{kind}: empty page from {url}");
        }
        let agents: std::collections::BTreeSet<_> =
            items.iter().map(|i| i["agent_id"].to_string()).collect();
        println!("sanity {kind}: {} items, agent ids {agents:?}", items.len());
    }
    Ok(())
}

async fn send(client: &reqwest::Client, url: String, auth: HeaderValue) -> Result<(), String> {
    // An event stream does not end: it counts as answered once its headers are in.
    let stream = url.ends_with("/me/events");
    // The error is a short kind, to be counted.
    let kind = |e: reqwest::Error| {
        if e.is_timeout() {
            "client timeout (30 s)".to_string()
        } else if e.is_connect() {
            "connect error".to_string()
        } else {
            format!(
                "request error: {}",
                std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string())
            )
        }
    };
    let resp = client
        .get(url)
        .header(AUTHORIZATION, auth)
        .send()
        .await
        .map_err(kind)?;
    let status = resp.status();
    if stream && status.is_success() {
        return Ok(());
    }
    let body = resp.bytes().await.map_err(kind)?;
    if !status.is_success() {
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        return Err(format!("HTTP {} {code}", status.as_u16()));
    }
    Ok(())
}

#[derive(Default)]
struct Stats {
    sent: usize,
    errors: usize,
    /// Errors by kind.
    error_kinds: std::collections::BTreeMap<String, usize>,
    elapsed: Duration,
    /// Latencies of the successful requests, in microseconds, sorted.
    lat_us: Vec<u64>,
    cpu: Option<CpuUse>,
}

impl Stats {
    fn ok(&self) -> usize {
        self.lat_us.len()
    }
    fn rps(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn error_summary(&self) -> String {
        self.error_kinds
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn add_error(&mut self, kind: String) {
        self.errors += 1;
        *self.error_kinds.entry(kind).or_default() += 1;
    }
    fn pct_ms(&self, q: f64) -> f64 {
        percentile_ms(&self.lat_us, q)
    }
    fn line(&self) -> String {
        let mut s = format!(
            "{} sent, {} ok, {} errors, {:.0} req/s; p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.sent,
            self.ok(),
            self.errors,
            self.rps(),
            self.pct_ms(0.5),
            self.pct_ms(0.9),
            self.pct_ms(0.99),
            self.pct_ms(1.0)
        );
        if let Some(c) = &self.cpu {
            let _ = write!(s, "\n    {}", c.line());
        }
        if self.errors > 0 {
            let _ = write!(s, "\n    errors: {}", self.error_summary());
        }
        s
    }
}

fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let n = sorted_us.len();
    let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted_us[i] as f64 / 1000.0
}

/// Requests at fixed instants whatever the answers do; latency is counted from
/// the instant a request was due, so a slow server cannot hide its backlog.
async fn open_loop(
    client: &reqwest::Client,
    target: &Arc<Target>,
    kind: Kind,
    rate: f64,
    secs: u64,
) -> Stats {
    let total = (rate * secs as f64).round() as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let start = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + period.mul_f64(i as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let (url, auth) = target.pick(kind, &mut rng);
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            let r = send(&client, url, auth).await;
            let done = Instant::now();
            (r, done.duration_since(due), done)
        }));
    }
    let mut stats = Stats {
        sent: total,
        ..Stats::default()
    };
    let mut last = start;
    for h in handles {
        match h.await {
            Ok((Ok(()), lat, done)) => {
                stats.lat_us.push(lat.as_micros() as u64);
                last = last.max(done);
            }
            Ok((Err(e), _, done)) => {
                stats.add_error(e);
                last = last.max(done);
            }
            Err(e) => {
                stats.add_error(format!("task failed: {e}"));
            }
        }
    }
    stats.elapsed = last.duration_since(start);
    stats.lat_us.sort_unstable();
    stats
}

/// `clients` workers, each sending its next request as soon as the last one is answered.
async fn closed_loop(
    client: &reqwest::Client,
    target: &Arc<Target>,
    kind: Kind,
    clients: usize,
    duration: Duration,
) -> Stats {
    let start = Instant::now();
    let end = start + duration;
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (client, target) = (client.clone(), target.clone());
        handles.push(tokio::spawn(async move {
            let mut rng = StdRng::from_rng(&mut rand::rng());
            let mut lat = Vec::new();
            let mut errors = Vec::new();
            while Instant::now() < end {
                let (url, auth) = target.pick(kind, &mut rng);
                let t = Instant::now();
                match send(&client, url, auth).await {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        errors.push(e);
                    }
                }
            }
            (lat, errors, Instant::now())
        }));
    }
    let mut stats = Stats::default();
    let mut last = start;
    for h in handles {
        if let Ok((lat, errors, done)) = h.await {
            stats.lat_us.extend(lat);
            for e in errors {
                stats.add_error(e);
            }
            last = last.max(done);
        }
    }
    stats.sent = stats.lat_us.len() + stats.errors;
    stats.elapsed = last.duration_since(start);
    stats.lat_us.sort_unstable();
    stats
}

/// pgbench scripts with the SQL `Store::my_sessions` sends for each kind.
struct PgScripts {
    first: Vec<PathBuf>,
    deep: Vec<PathBuf>,
    search: Vec<PathBuf>,
}

impl PgScripts {
    /// The SQL text is the server's with every bind parameter a pgbench
    /// variable (sent as a parameter with -M prepared): the agent from its
    /// number, the pattern from `-D q=…`, the cursor id from its number, and
    /// the LIMIT. Literals would get custom plans where the server, after five
    /// executions, runs PostgreSQL's generic plan.
    fn write(dir: &Path, target: &Target) -> Result<PgScripts> {
        let agents = target.auths.len();
        let agent = "agent_id = 'agent-' || lpad(:n::text, 3, '0')";
        let select = format!("SELECT {SESSION_COLUMNS} FROM user_sessions WHERE {agent}");
        let order = "ORDER BY created_at DESC, id DESC LIMIT :limit";
        let random_agent = format!("\\set n random(1, {agents})\n\\set limit 50\n");
        let first = dir.join("first.sql");
        std::fs::write(&first, format!("{random_agent}{select} {order};\n"))?;
        let search = dir.join("search.sql");
        std::fs::write(
            &search,
            format!(
                "{random_agent}SELECT s.* FROM ((SELECT id, created_at FROM user_sessions \
                 WHERE {agent} AND search_text LIKE :q {order}) UNION ALL \
                 (SELECT id, created_at FROM user_sessions WHERE {agent} AND search_clipped \
                 AND search_text NOT LIKE :q AND {clipped} {order}) \
                 ORDER BY created_at DESC, id DESC LIMIT :limit) m CROSS JOIN LATERAL \
                 (SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id = m.id AND {agent}) s \
                 ORDER BY m.created_at DESC, m.id DESC;\n",
                clipped = search_predicate(":q")
            ),
        )?;
        // One script per sampled cursor (pgbench picks one at random per transaction).
        let mut deep = Vec::new();
        for (i, d) in target.deep.iter().enumerate() {
            let c = Cursor::decode(&d.cursor).map_err(|e| anyhow!("cursor: {e}"))?;
            let idn: u64 =
                c.id.strip_prefix("ses_")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow!("cursor id {} is not a bench session id", c.id))?;
            let path = dir.join(format!("deep{i}.sql"));
            std::fs::write(
                &path,
                format!(
                    "\\set n {agent}\n\\set at {at}\n\\set idn {idn}\n\\set limit 50\n\
                     {select} AND (created_at, id) < (:at, 'ses_' || lpad(:idn::text, 12, '0')) \
                     {order};\n",
                    agent = d.agent + 1,
                    at = c.created_at,
                ),
            )?;
            deep.push(path);
        }
        Ok(PgScripts {
            first: vec![first],
            deep,
            search: vec![search],
        })
    }

    fn for_kind(&self, kind: Kind) -> &[PathBuf] {
        match kind {
            Kind::First => &self.first,
            Kind::Deep => &self.deep,
            Kind::Search => &self.search,
            Kind::TaskGet | Kind::Preview | Kind::Events => &[],
        }
    }
}

struct PgBench {
    tps: f64,
    avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    busy_pct: f64,
}

/// `pgbench -n -c <clients> -j 2 -T <secs> -M prepared -l`: tps and average
/// latency from its summary, percentiles from its per-transaction log.
fn pgbench(
    db_url: &str,
    scripts: &[PathBuf],
    clients: usize,
    secs: u64,
    dir: &Path,
) -> Result<PgBench> {
    let logs = dir.join(format!("pgblog{}", rand::rng().random::<u32>()));
    std::fs::create_dir_all(&logs)?;
    let mut cmd = Command::new(std::env::var("PGBENCH").unwrap_or_else(|_| "pgbench".into()));
    // -D q: the search pattern, a string variable.
    cmd.arg("-D")
        .arg(format!("q=%{SEARCH_WORD}%"))
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args([
            "-T",
            &secs.to_string(),
            "-M",
            "prepared",
            "-l",
            "--log-prefix",
        ])
        .arg(logs.join("pgb"));
    for s in scripts {
        cmd.arg("-f").arg(s);
    }
    let out = cmd.arg(db_url).output().context("run pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
    }
    let field = |prefix: &str| {
        stdout.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
    };
    let tps = field("tps = ").ok_or_else(|| anyhow!("no tps in pgbench output:\n{stdout}"))?;
    let avg_ms = field("latency average = ").unwrap_or(f64::NAN);
    let mut lat = Vec::new();
    for entry in std::fs::read_dir(&logs)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok())
            {
                lat.push(us);
            }
        }
    }
    lat.sort_unstable();
    let _ = std::fs::remove_dir_all(&logs);
    Ok(PgBench {
        tps,
        avg_ms,
        p50_ms: percentile_ms(&lat, 0.5),
        p99_ms: percentile_ms(&lat, 0.99),
        busy_pct: f64::NAN,
    })
}

/// CPU time in clock ticks from /proc (Linux; zeros elsewhere): the server, the
/// PostgreSQL backends of its pool, this load generator, and the whole machine.
#[derive(Clone, Default)]
struct CpuSnap {
    server: u64,
    /// Ticks of each backend, by pid: backends may come and go during a phase.
    postgres: std::collections::HashMap<u32, u64>,
    pg_known: bool,
    me: u64,
    busy: u64,
    total: u64,
}

/// What a phase cost, per request, and how busy the machine was.
#[derive(Clone, Copy)]
struct CpuUse {
    server_ms: f64,
    pg_ms: f64,
    me_ms: f64,
    busy_pct: f64,
    /// Machine time used by anything else (other work on the box, pgbench).
    other_pct: f64,
    /// Server connections to PostgreSQL opened during the phase (a dropped
    /// connection's CPU is missed, so `pg_ms` is then a floor).
    new_conns: usize,
}

/// The PostgreSQL backends of the server's pool (it connects as `switchboard`).
async fn server_backends(pool: &PgPool) -> Option<Vec<u32>> {
    let pids = sqlx::query_scalar::<_, i32>(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'switchboard'",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    Some(pids.into_iter().map(|p| p as u32).collect())
}

fn proc_ticks(stat: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

impl CpuSnap {
    /// `pg_pids` None: the backends are unknown (their figure will be NaN).
    fn take(server_pid: u32, pg_pids: Option<&[u32]>) -> CpuSnap {
        let mut snap = CpuSnap {
            server: proc_ticks(&Path::new("/proc").join(server_pid.to_string()).join("stat"))
                .unwrap_or(0),
            me: proc_ticks(Path::new("/proc/self/stat")).unwrap_or(0),
            ..CpuSnap::default()
        };
        snap.pg_known = pg_pids.is_some();
        for &pid in pg_pids.unwrap_or_default() {
            if let Some(t) = proc_ticks(&Path::new("/proc").join(pid.to_string()).join("stat")) {
                snap.postgres.insert(pid, t);
            }
        }
        if let Some(line) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
        {
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest time is in user).
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            snap.total = total;
            snap.busy = total.saturating_sub(idle);
        }
        snap
    }

    fn until(&self, end: &CpuSnap, requests: usize) -> Option<CpuUse> {
        let total = end.total.checked_sub(self.total).filter(|t| *t > 0)? as f64;
        let ms_per_tick = 1000.0 / clock_ticks_per_sec();
        let per = |ticks: u64| ticks as f64 * ms_per_tick / requests.max(1) as f64;
        let server = end.server.saturating_sub(self.server);
        let me = end.me.saturating_sub(self.me);
        // A backend that ended during the phase is missed: the figure is a floor.
        let postgres: u64 = end
            .postgres
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.postgres.get(pid).copied().unwrap_or(0)))
            .sum();
        let busy = end.busy.saturating_sub(self.busy);
        let new_conns = end
            .postgres
            .keys()
            .filter(|pid| !self.postgres.contains_key(pid))
            .count();
        Some(CpuUse {
            new_conns,
            server_ms: per(server),
            pg_ms: if self.pg_known && end.pg_known {
                per(postgres)
            } else {
                f64::NAN
            },
            me_ms: per(me),
            busy_pct: 100.0 * busy as f64 / total,
            other_pct: 100.0 * busy.saturating_sub(server + postgres + me) as f64 / total,
        })
    }
}

fn clock_ticks_per_sec() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

impl CpuUse {
    fn line(&self) -> String {
        format!(
            "CPU per request: server {:.2} ms, postgres {:.2} ms, load generator {:.2} ms; \
             machine {:.0}% busy ({:.0}% by other processes); {} new server connections",
            self.server_ms, self.pg_ms, self.me_ms, self.busy_pct, self.other_pct, self.new_conns
        )
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn mark(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn cpu_cols(c: &Option<CpuUse>) -> String {
    match c {
        Some(c) => format!(
            "{:>6.2} {:>6.2} {:>5.0} {:>5.0} {:>5}",
            c.server_ms, c.pg_ms, c.busy_pct, c.other_pct, c.new_conns
        ),
        None => format!("{:>6} {:>6} {:>5} {:>5} {:>5}", "-", "-", "-", "-", "-"),
    }
}

fn print_report(args: &Args, r: &Report) {
    println!("\n=== GET /api/v1/me/sessions on PostgreSQL ===");
    println!("{}", r.dataset);
    println!(
        "CPU columns (from /proc): srv and pg = server and PostgreSQL CPU ms per request; busy = \
         machine busy % of all CPUs, other = the part used by other processes; conns = server \
         connections to PostgreSQL opened during the phase (pg is then a floor)"
    );
    println!(
        "\n(a) open loop: {:.0} req/s offered for {} s per kind; latency from the scheduled instant \
         (target p99 < {P99_TARGET_MS} ms)",
        args.rate, args.seconds
    );
    println!(
        "{:<12} {:>7} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>6} {:>6} {:>5} {:>5} {:>5} | target",
        "kind",
        "sent",
        "ok",
        "err",
        "done/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "srv",
        "pg",
        "busy",
        "other",
        "conns"
    );
    for (kind, s) in &r.open {
        let p99 = s.pct_ms(0.99);
        println!(
            "{:<12} {:>7} {:>7} {:>5} {:>8.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {} | {}",
            kind,
            s.sent,
            s.ok(),
            s.errors,
            s.rps(),
            s.pct_ms(0.5),
            s.pct_ms(0.9),
            p99,
            s.pct_ms(1.0),
            cpu_cols(&s.cpu),
            mark(s.errors == 0 && p99 < P99_TARGET_MS)
        );
    }
    println!(
        "\n(b) closed loop: {} clients for {} s per kind, then pgbench -c {} -j 2 -M prepared -T {} \
         with the same SQL (target server req/s >= {RATIO_TARGET} x pgbench tps)",
        args.clients, args.seconds, args.clients, args.seconds
    );
    println!(
        "{:<12} {:>7} {:>5} {:>7} {:>7} | {:>6} {:>6} {:>5} {:>5} {:>5} | {:>7} {:>6} {:>6} {:>6} {:>5} | {:>5} | target",
        "kind",
        "req/s",
        "err",
        "p50 ms",
        "p99 ms",
        "srv",
        "pg",
        "busy",
        "other",
        "conns",
        "pg tps",
        "avg ms",
        "p50 ms",
        "p99 ms",
        "busy",
        "ratio"
    );
    for (kind, s, pg) in &r.closed {
        let (pg_cols, verdict) = match pg {
            Some(pg) => {
                let ratio = s.rps() / pg.tps;
                (
                    format!(
                        "{:>7.0} {:>6.2} {:>6.2} {:>6.2} {:>5.0} | {:>5.2}",
                        pg.tps, pg.avg_ms, pg.p50_ms, pg.p99_ms, pg.busy_pct, ratio
                    ),
                    mark(s.errors == 0 && ratio >= RATIO_TARGET),
                )
            }
            None => (
                format!(
                    "{:>7} {:>6} {:>6} {:>6} {:>5} | {:>5}",
                    "-", "-", "-", "-", "-", "-"
                ),
                "n/a",
            ),
        };
        println!(
            "{:<12} {:>7.0} {:>5} {:>7.2} {:>7.2} | {} | {pg_cols} | {verdict}",
            kind,
            s.rps(),
            s.errors,
            s.pct_ms(0.5),
            s.pct_ms(0.99),
            cpu_cols(&s.cpu),
        );
    }
    for (kind, s) in &r.open {
        if s.errors > 0 {
            println!("(a) {kind} errors: {}", s.error_summary());
        }
    }
    for (kind, s, _) in &r.closed {
        if s.errors > 0 {
            println!("(b) {kind} errors: {}", s.error_summary());
        }
    }
    println!("{}", r.server_log);

    println!(
        "\n(c) the other reads of every click: open loop, {:.0} req/s for {} s each (no target: \
         information; same CPU columns)",
        args.hot_rate, args.seconds
    );
    println!(
        "{:<12} {:>7} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8} | {:>6} {:>6} {:>5} {:>5} {:>5}",
        "kind",
        "sent",
        "ok",
        "err",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "srv",
        "pg",
        "busy",
        "other",
        "conns"
    );
    for (kind, s) in &r.hot {
        println!(
            "{:<12} {:>7} {:>7} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {}",
            kind,
            s.sent,
            s.ok(),
            s.errors,
            s.pct_ms(0.5),
            s.pct_ms(0.9),
            s.pct_ms(0.99),
            s.pct_ms(1.0),
            cpu_cols(&s.cpu),
        );
        if s.errors > 0 {
            println!("    errors: {}", s.error_summary());
        }
    }

    if let Some(sq) = &r.sqlite {
        println!(
            "\n(d) SQLite beside PostgreSQL: closed loop, {} clients for {} s per kind \
             (srv = the server's CPU, SQLite included)",
            args.clients, args.seconds
        );
        println!("{}", sq.dataset);
        println!(
            "{:<12} {:>7} {:>5} {:>7} {:>7} | {:>6} {:>5} {:>5} | {:>9}",
            "kind", "req/s", "err", "p50 ms", "p99 ms", "srv", "busy", "other", "PG req/s"
        );
        for (kind, s) in &sq.closed {
            let pg = r
                .closed
                .iter()
                .find(|(k, _, _)| k == kind)
                .map_or(f64::NAN, |(_, s, _)| s.rps());
            let (srv, busy, other) = s.cpu.map_or((f64::NAN, f64::NAN, f64::NAN), |c| {
                (c.server_ms, c.busy_pct, c.other_pct)
            });
            println!(
                "{:<12} {:>7.0} {:>5} {:>7.2} {:>7.2} | {:>6.2} {:>5.0} {:>5.0} | {:>9.0}",
                kind,
                s.rps(),
                s.errors,
                s.pct_ms(0.5),
                s.pct_ms(0.99),
                srv,
                busy,
                other,
                pg
            );
            if s.errors > 0 {
                println!("    errors: {}", s.error_summary());
            }
        }
        println!("{}", sq.server_log);
    }

    println!("\n(e) plans at depth (PostgreSQL, generic plans as the server runs them):");
    print!("{}", r.explain);

    println!(
        "\n=== targets (load average at start {}, at end {}; {} CPUs) ===",
        r.loadavg.0,
        r.loadavg.1,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<46} {:>22} {:>18}  result", "target", "measured", "goal");
    for (kind, s) in &r.open {
        let p99 = s.pct_ms(0.99);
        println!(
            "{:<46} {:>19.2} ms {:>15} ms  {}",
            format!("open loop {:.0} req/s, {kind}: p99", args.rate),
            p99,
            format!("< {P99_TARGET_MS}"),
            mark(s.errors == 0 && p99 < P99_TARGET_MS)
        );
    }
    for (kind, s, pg) in &r.closed {
        if let Some(pg) = pg {
            let ratio = s.rps() / pg.tps;
            println!(
                "{:<46} {:>22} {:>18}  {}",
                format!("closed loop, {kind}: req/s / pgbench tps"),
                format!("{:.0} / {:.0} = {ratio:.2}", s.rps(), pg.tps),
                format!(">= {RATIO_TARGET}"),
                mark(s.errors == 0 && ratio >= RATIO_TARGET)
            );
        }
    }
    if let Some((_, _, Some(pg))) = r.closed.iter().find(|(k, _, _)| *k == Kind::Search) {
        println!(
            "{:<46} {:>19.2} ms {:>15} ms  {}",
            "PostgreSQL's own p99 for the search (pgbench)",
            pg.p99_ms,
            format!("< {PG_SEARCH_P99_TARGET_MS}"),
            mark(pg.p99_ms < PG_SEARCH_P99_TARGET_MS)
        );
    }
    for (kind, s, _) in &r.closed {
        if let Some(c) = &s.cpu {
            println!(
                "{:<46} {:>22} {:>18}  {}",
                format!("CPU per request, closed loop, {kind}"),
                format!("srv {:.2} / pg {:.2} ms", c.server_ms, c.pg_ms),
                "srv <= pg",
                mark(c.server_ms <= c.pg_ms)
            );
        }
    }
}

/// Counts the server's warnings; slow pool acquisitions mean its pool was the queue.
fn summarize_server_log(path: &Path, pool: u32) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut slow, mut timeouts, mut other) = (0, 0, Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.contains("slow_acquire_threshold") || line.contains("time to acquire") {
            slow += 1;
        } else if line.contains("pool timed out") {
            timeouts += 1;
        } else {
            other.push(line);
        }
    }
    let mut s = format!(
        "server log: {slow} slow pool-acquire warnings (a request waited > 2 s for one of the \
         {pool} connections), {timeouts} pool timeouts (HTTP 500 after 10 s), {} other lines",
        other.len()
    );
    for l in other.iter().take(5) {
        let _ = write!(s, "\n  {l}");
    }
    s
}

/// A typical HTML reply (a few KB, quoted thread, a link and an inline style),
/// different per `i`.
fn preview_mail(i: usize) -> String {
    let mut quoted = String::new();
    for n in 0..12 {
        let _ = write!(
            quoted,
            "<p>Line {n} of the earlier message about order #{i}{n}: the parcel left the \
             warehouse on Monday and should arrive <b>within three days</b>.</p>\r\n"
        );
    }
    format!(
        "From: Customer {i} <customer{i}@example.com>\r\n\
         To: support@bench.example\r\n\
         Subject: Order #{i} has not arrived\r\n\
         Message-ID: <bench-preview-{i}@example.com>\r\n\
         Date: Mon, 2 Jun 2025 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/html; charset=utf-8\r\n\r\n\
         <html><head><style>p {{ margin: 0 0 8px }}</style></head><body>\
         <p style=\"color:#333\">Hello, my order #{i} has still not arrived. Could you check?\
         See <a href=\"https://shop.example/orders/{i}\">the order page</a>.</p>\r\n\
         <blockquote>{quoted}</blockquote></body></html>\r\n"
    )
}

/// Waits until the Maildir's mails are tasks, and picks them up as agent-001
/// (capacity 3 email tasks): the (agent index, task id) pairs to preview.
async fn pick_up_previews(
    client: &reqwest::Client,
    target: &Target,
    pool: &PgPool,
) -> Result<Vec<(usize, String)>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids = loop {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM tasks WHERE state = 'queued' AND modality = 'email' ORDER BY id",
        )
        .fetch_all(pool)
        .await?;
        if ids.len() >= PREVIEW_MAILS {
            break ids;
        }
        if Instant::now() > deadline {
            bail!("the bench mails were not ingested within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut out = Vec::new();
    for id in ids.into_iter().take(PREVIEW_MAILS) {
        let resp = client
            .post(format!("{}/api/v1/tasks/{id}/pickup", target.base))
            .header(AUTHORIZATION, target.auths[0].clone())
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!(
                "pickup of {id}: HTTP {}: {}",
                resp.status(),
                resp.text().await?
            );
        }
        out.push((0, id));
    }
    Ok(out)
}

/// EXPLAIN (ANALYZE, BUFFERS) of the SQL the server sends for the deep page
/// and the search, as generic plans (what the server runs after five
/// executions of its prepared statement).
async fn explain_at_depth(pool: &PgPool, target: &Target) -> String {
    let run = async {
        let mut conn = pool.acquire().await?;
        sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
            .execute(&mut *conn)
            .await?;
        let d = &target.deep[0];
        let c = Cursor::decode(&d.cursor).map_err(|e| anyhow!("cursor: {e}"))?;
        let agent = agent_id(d.agent + 1);
        let order = "ORDER BY created_at DESC, id DESC";
        let statements = [
            (
                format!("deep cursor (page {}, {agent})", d.page),
                format!(
                    "PREPARE deep(text, bigint, text, bigint) AS SELECT {SESSION_COLUMNS} FROM user_sessions \
                     WHERE agent_id = $1 AND (created_at, id) < ($2, $3) {order} LIMIT $4"
                ),
                format!("EXECUTE deep('{agent}', {}, '{}', 50)", c.created_at, c.id),
            ),
            (
                format!("search q={SEARCH_WORD} ({agent})"),
                format!(
                    "PREPARE search(text, text, bigint) AS SELECT s.* FROM ((SELECT id, created_at \
                     FROM user_sessions WHERE agent_id = $1 AND search_text LIKE $2 {order} LIMIT $3) \
                     UNION ALL (SELECT id, created_at FROM user_sessions WHERE agent_id = $1 \
                     AND search_clipped AND search_text NOT LIKE $2 AND {clipped} {order} LIMIT $3) \
                     {order} LIMIT $3) m CROSS JOIN LATERAL (SELECT {SESSION_COLUMNS} FROM user_sessions \
                     WHERE id = m.id AND agent_id = $1) s ORDER BY m.created_at DESC, m.id DESC",
                    clipped = search_predicate("$2")
                ),
                format!("EXECUTE search('{agent}', '%{SEARCH_WORD}%', 50)"),
            ),
            (
                format!("search for a word no session holds ({agent}: all its rows)"),
                String::new(),
                format!("EXECUTE search('{agent}', '%no such words%', 50)"),
            ),
        ];
        let mut out = String::new();
        for (title, prepare, execute) in statements {
            if !prepare.is_empty() {
                sqlx::raw_sql(AssertSqlSafe(prepare))
                    .execute(&mut *conn)
                    .await?;
            }
            // Warm the plan cache and the buffers, then explain.
            for _ in 0..6 {
                sqlx::raw_sql(AssertSqlSafe(execute.clone()))
                    .execute(&mut *conn)
                    .await?;
            }
            let lines: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {execute}"
            )))
            .fetch_all(&mut *conn)
            .await?;
            let _ = writeln!(out, "{title}:");
            for l in lines {
                let _ = writeln!(out, "    {l}");
            }
        }
        anyhow::Ok(out)
    };
    match run.await {
        Ok(s) => s,
        Err(e) => format!("EXPLAIN failed: {e:#}"),
    }
}

/// Loads the same shape of data into a SQLite file (values from SQLite's
/// random(); tasks and sessions agree through a staging table), runs a
/// server on it and the closed loop of each kind.
async fn sqlite_phase(
    args: &Args,
    guard: &mut Guard,
    client: &reqwest::Client,
    dir: &Path,
) -> Result<SqliteReport> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let path = dir.join("bench.db");
    let url = format!("sqlite://{}", path.display());
    let (base, server_pid, server_log) =
        start_server(client, guard, dir, "sqlite", &url, args, None).await?;
    let options = url
        .parse::<SqliteConnectOptions>()?
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(60));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let t = Instant::now();
    let now = chrono::Utc::now().timestamp_millis();
    let year: i64 = 365 * 24 * 3600 * 1000;
    let total = args.sessions;
    let mut lo = 1;
    while lo <= total {
        let hi = (lo + LOAD_CHUNK - 1).min(total);
        sqlite_load_chunk(&pool, lo, hi, total, args.agents, now - year).await?;
        eprintln!(
            "  SQLite: loaded {} / {} sessions ({:.0} s)",
            thousands(hi),
            thousands(total),
            t.elapsed().as_secs_f64()
        );
        lo = hi + 1;
    }
    sqlx::raw_sql("ANALYZE").execute(&pool).await?;
    let load_secs = t.elapsed().as_secs_f64();
    pool.close().await;
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let mut target = Target::new(&base, args.agents)?;
    let mut rng = StdRng::from_rng(&mut rand::rng());
    target.deep = sample_cursors(client, &mut target, &mut rng).await?;
    if target.deep.is_empty() {
        bail!("SQLite: no agent has more than one page of sessions");
    }
    let dataset = format!(
        "SQLite: {} sessions loaded in {:.1} s (with the search index), file {:.0} MB; {}",
        thousands(total),
        load_secs,
        size as f64 / 1_048_576.0,
        target.cursor_line()
    );
    println!("{dataset}");
    sanity_check(client, &target).await?;
    let target = Arc::new(target);
    for kind in Kind::ALL {
        closed_loop(client, &target, kind, args.clients, Duration::from_secs(1)).await;
    }
    let mut closed = Vec::new();
    for kind in Kind::ALL {
        println!(
            "(d) SQLite closed loop, {kind}: {} clients for {} s …",
            args.clients, args.seconds
        );
        let before = CpuSnap::take(server_pid, None);
        let mut s = closed_loop(
            client,
            &target,
            kind,
            args.clients,
            Duration::from_secs(args.seconds),
        )
        .await;
        s.cpu = before.until(&CpuSnap::take(server_pid, None), s.sent);
        println!("    {}", s.line());
        closed.push((kind, s));
    }
    Ok(SqliteReport {
        dataset,
        closed,
        server_log: summarize_server_log(&server_log, args.pool.min(8)),
    })
}

async fn sqlite_load_chunk(
    pool: &sqlx::SqlitePool,
    lo: u64,
    hi: u64,
    total: u64,
    agents: usize,
    t0: i64,
) -> Result<()> {
    const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;
    let pick = |items: &[&str], expr: &str| {
        let mut s = String::from("CASE ");
        for (i, item) in items.iter().enumerate() {
            let _ = write!(s, "WHEN {expr} = {i} THEN '{item}' ");
        }
        s.push_str("END");
        s
    };
    let services = pick(&SERVICES, &format!("(a - 1) % {}", SERVICES.len()));
    let subjects = pick(
        &[
            "Refund request for order",
            "Where is my parcel",
            "Invoice copy needed",
            "Password reset",
            "Change of address",
            "Cancel my subscription",
            "Damaged item received",
            "Question about warranty",
            "Upgrade my plan",
            "Billing error on last invoice",
            "Late delivery complaint",
            "Refund not received yet",
            "Account locked",
            "Update payment method",
            "Product availability",
            "Return label request",
            "Technical issue with the app",
            "Feedback on service",
            "Order confirmation missing",
            "Loyalty points question",
        ],
        "s",
    );
    let names = [
        "Alice", "Bruno", "Chloe", "David", "Emma", "Farid", "Giulia", "Hugo",
    ];
    let lasts = [
        "Martin", "Bernard", "Dubois", "Moreau", "Laurent", "Rossi", "Novak", "Berg",
    ];
    let first = pick(&names, "c % 8");
    let last = pick(&lasts, "(c / 8) % 8");
    let tags = "CASE WHEN t < 70 THEN '[]' WHEN t < 75 THEN '[\"refund\",\"vip\"]' \
                WHEN t < 80 THEN '[\"refund\"]' WHEN t < 88 THEN '[\"vip\"]' \
                WHEN t < 94 THEN '[\"complaint\"]' ELSE '[\"follow-up\"]' END";
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS temp.stage;
         CREATE TEMP TABLE stage AS
         WITH RECURSIVE g(n) AS (SELECT {lo} UNION ALL SELECT n + 1 FROM g WHERE n < {hi}),
         r AS MATERIALIZED (SELECT n, 1 + abs(random()) % {agents} AS a, abs(random()) % 100 AS m,
                      abs(random()) % 100 AS r, abs(random()) % 20 AS s, abs(random()) % 1000000 AS c,
                      abs(random()) % 100 AS t, abs(random()) % 2000000000 AS w FROM g)
         SELECT 'ses_' || printf('%012d', n) AS sid, 'tsk_' || printf('%012d', n) AS tid,
                'agent-' || printf('%03d', a) AS agent_id, {services} AS service_id,
                CASE WHEN m < 50 THEN 'email' WHEN m < 85 THEN 'im' ELSE 'call' END AS modality,
                CASE WHEN r < 85 THEN 'accepted' WHEN r < 93 THEN 'declined' WHEN r < 98 THEN 'rona'
                     ELSE 'transferred' END AS result,
                {t0} + n * {YEAR_MS} / {total} + w % 60000 AS created_at,
                {subjects} || ' #' || (100000 + n % 900000) AS subject,
                {first} || ' ' || {last} AS customer_name,
                lower({first}) || '.' || lower({last}) || (c % 97) || '@example.com' AS customer_address,
                {tags} AS tags
         FROM r;
         INSERT INTO tasks (id, service_id, modality, state, priority, arrived_at, updated_at, ended_at,
                customer_kind, customer_name, customer_address, subject)
            SELECT tid, service_id, modality, 'concluded', 0, created_at, created_at + 60000,
                   created_at + 60000, 'external', customer_name, customer_address, subject FROM stage;
         INSERT INTO user_sessions (id, task_id, agent_id, service_id, modality, state, result,
                created_at, answered_at, ended_at, saved_at, subject, customer_name, customer_address,
                codes_primary, codes_secondary, tags, updated_at)
            SELECT sid, tid, agent_id, service_id, modality, 'concluded', result, created_at,
                   created_at + 2000, created_at + 50000, created_at + 60000, subject, customer_name,
                   customer_address, '[]', '[]', tags, created_at + 60000 FROM stage;
         DROP TABLE temp.stage;"
    )))
    .execute(&mut *tx)
    .await
    .context("SQLite load")?;
    tx.commit().await?;
    Ok(())
}
