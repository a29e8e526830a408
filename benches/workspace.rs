//! The agents' workspace under load: server time to render My Sessions (`/`,
//! first page) for an agent with 100,000 sessions, and the widgets of a
//! session whose email thread has 50 messages (`/ui/sessions/{id}`), p50/p99
//! over sequential requests on loopback, beside a baseline measured in the
//! same run (`/healthz`: the HTTP round trip with no work). Then the page
//! weight of the workspace as a browser loads it (HTML + script + CSS,
//! gzip-compressed as served). Targets: p99 under 20 ms; weight under 100 KB.
//!
//! ```sh
//! cargo bench --bench workspace                       # SQLite and PostgreSQL, 100,000 sessions
//! cargo bench --bench workspace -- --backend sqlite --sessions 20000 --requests 100
//! ```
//! PostgreSQL: `$SWITCHBOARD_BENCH_PG_URL` (or `$SWITCHBOARD_TEST_PG_URL`, or
//! the local server), a database of its own, dropped afterwards.
mod common;

use anyhow::{Context, Result, bail};
use common::{Backend, BenchDb, pct};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use switchboard::app::Running;
use switchboard::config::Config;
use switchboard::ingest::prepare::{MailLimits, Origin, prepare};
use switchboard::store::{IngestBatch, Store};

const ALICE: &str = "alice-bench-token-0123456789";
const TARGET_P99_MS: f64 = 20.0;
const TARGET_WEIGHT_KB: f64 = 100.0;

struct Args {
    backends: Vec<Backend>,
    sessions: u64,
    requests: usize,
    thread: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        backends: vec![Backend::Sqlite, Backend::Pg],
        sessions: 100_000,
        requests: 300,
        thread: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "--backend" => {
                a.backends = match it.next().as_deref() {
                    Some("sqlite") => vec![Backend::Sqlite],
                    Some("pg") | Some("postgres") => vec![Backend::Pg],
                    Some("both") => vec![Backend::Sqlite, Backend::Pg],
                    other => bail!("--backend sqlite|pg|both, not {other:?}"),
                }
            }
            "--sessions" => a.sessions = it.next().context("--sessions N")?.parse()?,
            "--requests" => a.requests = it.next().context("--requests N")?.parse()?,
            "--thread" => a.thread = it.next().context("--thread N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn config(db_url: &str, maildir: &Path) -> Result<Config> {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub))?;
    }
    let text = format!(
        r#"
[database]
url = "{db_url}"
max_connections = 8

[http]
bind = "127.0.0.1:0"

[log]
level = "warn"

[[services]]
id = "support"
name = "Support"
email_address = "support@example.com"
distribution = "pickup"
codes = [
  {{ code = "billing", label = "Billing", kind = "primary" }},
  {{ code = "refund", label = "Refund", kind = "secondary" }},
]

[[agents]]
id = "alice"
name = "Alice"
email = "alice@example.com"
token = "{ALICE}"
services = ["support"]
capacity = {{ email = 50, im = 50, call = 50 }}

[[mailboxes]]
id = "bench-inbox"
service = "support"
kind = "maildir"
path = "{}"
"#,
        maildir.display()
    );
    Ok(Config::from_parts(&text, Path::new("bench.toml"), &[])?)
}

/// `n` concluded sessions of Alice, spread over a year, inserted in SQL
/// (the same statement on both backends).
async fn seed_history(store: &Store, n: u64) -> Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 365 * 24 * 3600 * 1000;
    let step = (365 * 24 * 3600 * 1000) / n.max(1) as i64;
    const CHUNK: u64 = 20_000;
    let mut lo = 1;
    while lo <= n {
        let hi = (lo + CHUNK - 1).min(n);
        let series = format!(
            "WITH RECURSIVE g(n) AS (SELECT CAST({lo} AS BIGINT) UNION ALL SELECT n + 1 FROM g WHERE n < {hi})"
        );
        let tasks = format!(
            "{series} INSERT INTO tasks (id, service_id, modality, state, priority, arrived_at, updated_at, ended_at,
                customer_kind, customer_name, customer_address, subject)
             SELECT 'tsk_bench_' || n, 'support',
                CASE n % 3 WHEN 0 THEN 'email' WHEN 1 THEN 'call' ELSE 'im' END,
                'concluded', 0, {t0} + n * {step}, {t0} + n * {step} + 600000, {t0} + n * {step} + 600000,
                'external', 'Customer ' || (n % 997), 'customer' || (n % 997) || '@example.com',
                'Question number ' || n FROM g"
        );
        let sessions = format!(
            "{series} INSERT INTO user_sessions (id, task_id, agent_id, service_id, modality, state, result,
                created_at, answered_at, ended_at, saved_at, subject, customer_name, customer_address,
                codes_primary, codes_secondary, tags, updated_at)
             SELECT 'ses_bench_' || n, 'tsk_bench_' || n, 'alice', 'support',
                CASE n % 3 WHEN 0 THEN 'email' WHEN 1 THEN 'call' ELSE 'im' END, 'concluded',
                CASE n % 20 WHEN 0 THEN 'declined' WHEN 1 THEN 'rona' WHEN 2 THEN 'cancelled' WHEN 3 THEN 'transferred' ELSE 'accepted' END,
                {t0} + n * {step}, {t0} + n * {step} + 1000, {t0} + n * {step} + 600000, {t0} + n * {step} + 700000,
                'Question number ' || n, 'Customer ' || (n % 997), 'customer' || (n % 997) || '@example.com',
                '[\"billing\"]', '[]', '[\"bench\"]', {t0} + n * {step} + 700000 FROM g"
        );
        match store {
            Store::Sqlite(pool, _) => {
                let mut tx = pool.begin().await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(tasks))
                    .execute(&mut *tx)
                    .await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sessions))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Store::Postgres(pool, _) => {
                let mut tx = pool.begin().await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(tasks))
                    .execute(&mut *tx)
                    .await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sessions))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        lo = hi + 1;
    }
    match store {
        Store::Sqlite(pool, _) => {
            sqlx::raw_sql("ANALYZE").execute(pool).await?;
        }
        Store::Postgres(pool, _) => {
            sqlx::raw_sql("ANALYZE").execute(pool).await?;
        }
    }
    Ok(())
}

/// One mail of the thread: HTML of about 3 KB with a remote image, each a
/// reply to the one before.
fn thread_mail(i: usize) -> Vec<u8> {
    let reply = if i > 0 {
        format!("In-Reply-To: <bench-{}@customer.example>\r\n", i - 1)
    } else {
        String::new()
    };
    let para = "<p>This is a paragraph of the customer's long story about their order, \
                with <b>bold</b> words and a <a href=\"https://shop.example/o/77\">link</a>.</p>"
        .repeat(20);
    format!(
        "From: Grace Hopper <grace@navy.example>\r\nTo: Support <support@example.com>\r\n\
         Subject: The long thread\r\nDate: Tue, 24 Nov 2026 08:{:02}:00 +0000\r\n\
         Message-ID: <bench-{i}@customer.example>\r\n{reply}MIME-Version: 1.0\r\n\
         Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><h1>Message {i}</h1>{para}\
         <img src=\"https://tracker.example/{i}.gif\"></body></html>\r\n",
        i % 60
    )
    .into_bytes()
}

/// The 50-message thread as one task (through the real ingestion path).
async fn seed_thread(store: &Store, n: usize) -> Result<String> {
    let limits = MailLimits {
        max_message_bytes: 10 * 1024 * 1024,
        parse_timeout: Duration::from_secs(20),
    };
    let mut task = None;
    for i in 0..n {
        let item = prepare(
            store,
            &Default::default(),
            thread_mail(i),
            Origin::default(),
            &limits,
        )
        .await?;
        let report = store
            .commit_batch(&IngestBatch {
                mailbox_id: "bench-inbox".into(),
                service_id: "support".into(),
                fence: None,
                cursor: None,
                items: vec![item],
                resolves_quarantine: None,
            })
            .await?;
        if task.is_none() {
            task = report.new_tasks.first().cloned();
        }
    }
    task.context("the thread made no task")
}

struct Client {
    http: reqwest::Client,
    url: String,
    cookie: String,
}

impl Client {
    async fn sign_in(url: &str) -> Result<Client> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let r = http
            .post(format!("{url}/sign-in"))
            .form(&[("token", ALICE), ("next", "/")])
            .send()
            .await?;
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .context("sign-in set no cookie")?
            .to_string();
        Ok(Client {
            http,
            url: url.to_string(),
            cookie,
        })
    }

    /// GET `path`; returns the time taken and the body length (as sent).
    async fn get(&self, path: &str, gzip: bool) -> Result<(f64, usize)> {
        let mut req = self
            .http
            .get(format!("{}{path}", self.url))
            .header("cookie", &self.cookie);
        if gzip {
            req = req.header("accept-encoding", "gzip");
        }
        let start = Instant::now();
        let r = req.send().await?;
        let status = r.status();
        let body = r.bytes().await?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
        Ok((ms, body.len()))
    }

    async fn percentiles(&self, path: &str, n: usize) -> Result<(f64, f64)> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            times.push(self.get(path, false).await?.0);
        }
        times.sort_by(f64::total_cmp);
        Ok((pct(&times, 0.5), pct(&times, 0.99)))
    }
}

struct Figures {
    backend: Backend,
    seed_s: f64,
    baseline: (f64, f64),
    page: (f64, f64),
    detail_cold_ms: f64,
    detail: (f64, f64),
    weight: Vec<(String, usize, usize)>,
}

async fn run(backend: Backend, a: &Args) -> Result<Figures> {
    let db = BenchDb::create(backend).await?;
    let config = config(&db.url, &db.dir.path().join("inbox"))?;
    let running = Running::start(&config).await?;
    let store = running.store.clone();
    let seeding = Instant::now();
    seed_history(&store, a.sessions).await?;
    // A few live sessions on top, as an agent has during the day.
    let alice = store.agent("alice").await?;
    let thread_task = seed_thread(&store, a.thread).await?;
    let thread_session = store.pickup(&thread_task, &alice).await?.id;
    for i in 0..4 {
        let (t, _) = store
            .create_task(&switchboard::store::NewTask {
                service_id: "support".into(),
                modality: switchboard::domain::Modality::Call,
                priority: 0,
                arrived_at: chrono::Utc::now().timestamp_millis(),
                customer_address: Some(format!("+4144000000{i}")),
                customer_name: None,
                subject: Some(format!("Live call {i}")),
                params: serde_json::json!({}),
                external_id: None,
                routed: false,
            })
            .await?;
        store.pickup(&t.id, &alice).await?;
    }
    let seed_s = seeding.elapsed().as_secs_f64();
    let client = Client::sign_in(&running.url()).await?;
    // Warm up connections and caches.
    for _ in 0..5 {
        client.get("/healthz", false).await?;
        client.get("/", false).await?;
    }
    let detail_path = format!("/ui/sessions/{thread_session}");
    let (detail_cold_ms, _) = client.get(&detail_path, false).await?;
    let baseline = client.percentiles("/healthz", a.requests).await?;
    let page = client.percentiles("/", a.requests).await?;
    let detail = client.percentiles(&detail_path, a.requests).await?;
    // Page weight: the page as served (gzip) and every script and style it links.
    let mut weight = Vec::new();
    let (_, html_gz) = client.get("/", true).await?;
    let (_, html_raw) = client.get("/", false).await?;
    weight.push(("My Sessions HTML (/)".to_string(), html_raw, html_gz));
    let html = client
        .http
        .get(format!("{}/", client.url))
        .header("cookie", &client.cookie)
        .send()
        .await?
        .text()
        .await?;
    let mut assets: Vec<String> = html
        .split("src=\"/static/")
        .skip(1)
        .chain(html.split("href=\"/static/").skip(1))
        .filter_map(|s| s.split('"').next())
        .map(|s| format!("/static/{s}"))
        .collect();
    assets.sort();
    assets.dedup();
    for path in assets {
        let (_, gz) = client.get(&path, true).await?;
        let (_, raw) = client.get(&path, false).await?;
        weight.push((path, raw, gz));
    }
    running.stop().await?;
    drop(db);
    Ok(Figures {
        backend,
        seed_s,
        baseline,
        page,
        detail_cold_ms,
        detail,
        weight,
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "workspace bench: {} sessions of one agent, a {}-message thread, {} sequential requests per figure; load before: {}",
        a.sessions,
        a.thread,
        a.requests,
        loadavg()
    );
    let mut failed = false;
    for &backend in &a.backends {
        match rt.block_on(run(backend, &a)) {
            Ok(f) => {
                println!("\n{} (seeded in {:.1} s)", f.backend.name(), f.seed_s);
                println!(
                    "  baseline GET /healthz              p50 {:>6.2} ms  p99 {:>6.2} ms",
                    f.baseline.0, f.baseline.1
                );
                println!(
                    "  My Sessions GET / (first page)     p50 {:>6.2} ms  p99 {:>6.2} ms   {} (p99 < {TARGET_P99_MS} ms)",
                    f.page.0,
                    f.page.1,
                    verdict(f.page.1 < TARGET_P99_MS)
                );
                println!(
                    "  session widgets, {}-message thread p50 {:>6.2} ms  p99 {:>6.2} ms   {} (p99 < {TARGET_P99_MS} ms); first view (makes the previews) {:.1} ms",
                    a.thread,
                    f.detail.0,
                    f.detail.1,
                    verdict(f.detail.1 < TARGET_P99_MS),
                    f.detail_cold_ms
                );
                let mut total_raw = 0;
                let mut total_gz = 0;
                println!("  page weight (as served: gzip | uncompressed)");
                for (what, raw, gz) in &f.weight {
                    println!(
                        "    {:<48} {:>7.1} KB | {:>7.1} KB",
                        what,
                        *gz as f64 / 1024.0,
                        *raw as f64 / 1024.0
                    );
                    total_raw += raw;
                    total_gz += gz;
                }
                let kb = total_gz as f64 / 1024.0;
                println!(
                    "    {:<48} {:>7.1} KB | {:>7.1} KB   {} (< {TARGET_WEIGHT_KB} KB compressed)",
                    "total",
                    kb,
                    total_raw as f64 / 1024.0,
                    verdict(kb < TARGET_WEIGHT_KB)
                );
                failed |= f.page.1 >= TARGET_P99_MS
                    || f.detail.1 >= TARGET_P99_MS
                    || kb >= TARGET_WEIGHT_KB;
            }
            Err(e) => {
                eprintln!("{}: {e:#}", backend.name());
                failed = true;
            }
        }
    }
    println!("\nload after: {}", loadavg());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
