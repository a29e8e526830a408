//! Session details and the webhook outbox on PostgreSQL. See benches/README.md.
//!
//! (a) `GET /api/v1/tasks/{id}` (customer, parameters, resolved context, per
//! session) on a database of `--tasks` tasks (default 1,000,000), at a fixed
//! offered rate (open loop, latency counted from the instant each request was
//! due), beside `GET /healthz` at the same rate (the HTTP floor) and the
//! handler's SQL run straight from here (the database floor).
//! (b) The outbox: `--changes` task changes (default 10,000) written in
//! transactions of 50, over 2,000 tasks, all delivered to a local receiver:
//! deliveries per second and change-to-delivery latency, beside the receiver
//! posted to straight from here with the same concurrency.
//!
//! `cargo bench --bench context -- [--tasks 1000000] [--seconds 10] [--rate 1000]
//!  [--changes 10000] [--only details|webhooks]`
mod common;

use anyhow::{Context, Result, anyhow};
use common::{Backend, BenchDb, pct};
use rand::Rng;
use serde_json::Value;
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPoolOptions;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard::config::Config;
use tokio::time::Instant;

const ADMIN: &str = "bench-admin-token-0123456789";
const SERVICES: [&str; 5] = ["support", "billing", "sales", "tech", "retention"];
const LOAD_CHUNK: u64 = 100_000;
const P99_TARGET_MS: f64 = 10.0;
const RATE_TARGET: f64 = 1000.0;
const DELIVERY_P99_TARGET_MS: f64 = 200.0;

struct Args {
    tasks: u64,
    seconds: u64,
    rate: f64,
    changes: u64,
    only: Option<String>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        tasks: 1_000_000,
        seconds: 10,
        rate: 1000.0,
        changes: 10_000,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match arg.as_str() {
            "--tasks" => a.tasks = value("--tasks")?.replace('_', "").parse()?,
            "--seconds" => a.seconds = value("--seconds")?.parse()?,
            "--rate" => a.rate = value("--rate")?.parse()?,
            "--changes" => a.changes = value("--changes")?.replace('_', "").parse()?,
            "--only" => a.only = Some(value("--only")?),
            "--bench" => {}
            other => return Err(anyhow!("unknown option {other}")),
        }
    }
    Ok(a)
}

/// The machine's load: 1, 5 and 15 minute averages and the CPU count.
fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let avg: Vec<&str> = avg.split_whitespace().take(3).collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("load average {} on {cpus} CPUs", avg.join(" "))
}

/// A Switchboard instance on a runtime and thread of its own, so the load
/// generator does not share its workers.
struct Server {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(config_text: String) -> Result<Server> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let config = match Config::from_parts(&config_text, Path::new("bench.toml"), &[]) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("config: {e}")));
                        return;
                    }
                };
                match switchboard::app::Running::start(&config).await {
                    Ok(running) => {
                        let _ = ready_tx.send(Ok(running.url()));
                        let _ = stop_rx.await;
                        let _ = running.stop().await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        });
        let url = ready_rx.recv().context("server thread")??;
        Ok(Server {
            url,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(db_url: &str, extra: &str) -> String {
    let links = r#"context_links = [
  { label = "CRM", url_template = "https://crm.example/search?email=$(Customer.Email)&phone=$(Customer.Phone)" },
  { label = "Ticket", url_template = "https://tickets.example/t/$(Parameters.TicketId)", embed = true },
  { label = "Map", kind = "map" },
]"#;
    let mut text = format!(
        "[database]\nurl = \"{db_url}\"\nmax_connections = 16\n[http]\nbind = \"127.0.0.1:0\"\n{extra}\n"
    );
    for (i, s) in SERVICES.iter().enumerate() {
        let keep = if i % 2 == 0 { 30 } else { 0 };
        text.push_str(&format!(
            "[[services]]\nid = \"{s}\"\nname = \"{s}\"\ndistribution = \"pickup\"\nkeep_context_days = {keep}\n{links}\n"
        ));
    }
    for i in 0..10 {
        text.push_str(&format!(
            "[[agents]]\nid = \"a{i}\"\nname = \"Agent {i}\"\nemail = \"a{i}@example.com\"\ntoken = \"bench-agent-{i}-token-0123456789\"\nservices = [\"support\"]\n"
        ));
    }
    text.push_str(&format!(
        "[[agents]]\nid = \"admin\"\nname = \"Admin\"\nemail = \"admin@example.com\"\ntoken = \"{ADMIN}\"\nadmin = true\n"
    ));
    text
}

/// Bulk-loads `total` tasks: 70% live (connected, one connected session,
/// customer details and parameters), 30% concluded (one saved session and a
/// context record, kept in the services that keep context).
async fn load_tasks(url: &str, total: u64) -> Result<f64> {
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    let started = Instant::now();
    let now = chrono::Utc::now().timestamp_millis();
    let mut conn = pool.acquire().await?;
    // Loading only: no triggers, no foreign-key checks.
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await?;
    let services = "(ARRAY['support','billing','sales','tech','retention'])[1 + g % 5]";
    let modality = "(ARRAY['email','im','call'])[1 + g % 3]";
    let id = |p: &str| format!("'{p}' || lpad(g::text, 8, '0')");
    let mut start = 1u64;
    while start <= total {
        let end = (start + LOAD_CHUNK - 1).min(total);
        let live = "g % 10 < 7";
        sqlx::raw_sql(AssertSqlSafe(format!(
            "INSERT INTO tasks (id, service_id, modality, state, priority, arrived_at, updated_at, ended_at,
                customer_kind, customer_name, customer_address, subject, params, routed, queued_at,
                customer_details, language, reached)
             SELECT {tid}, {services}, {modality}, CASE WHEN {live} THEN 'connected' ELSE 'concluded' END,
                0, {now} - g * 1000, {now} - g * 1000, CASE WHEN {live} THEN NULL ELSE {now} - g * 1000 + 600000 END,
                'anonymous', 'Customer ' || g, '+4144' || lpad(g::text, 7, '0'), 'Subject ' || (g % 97),
                CASE WHEN {live} THEN json_build_object('TicketId', '#' || g, 'SpokenLanguage', 'German')::text ELSE '{{}}' END,
                FALSE, {now} - g * 1000,
                CASE WHEN {live} THEN json_build_object('email', 'c' || g || '@customer.example',
                    'phone', '+4144' || lpad(g::text, 7, '0'), 'ip', '203.0.113.' || (g % 250))::text ELSE '{{}}' END,
                CASE WHEN {live} THEN 'de' END, CASE WHEN {live} THEN '+41440000000' END
             FROM generate_series({start}, {end}) g;
             INSERT INTO user_sessions (id, task_id, agent_id, service_id, modality, state, result, created_at,
                answered_at, ended_at, saved_at, subject, customer_name, customer_address, updated_at)
             SELECT {sid}, {tid}, 'a' || (g % 10), {services}, {modality},
                CASE WHEN {live} THEN 'connected' ELSE 'concluded' END, 'accepted',
                {now} - g * 1000 + 1000, {now} - g * 1000 + 2000,
                CASE WHEN {live} THEN NULL ELSE {now} - g * 1000 + 600000 END,
                CASE WHEN {live} THEN NULL ELSE {now} - g * 1000 + 700000 END,
                'Subject ' || (g % 97), 'Customer ' || g, '+4144' || lpad(g::text, 7, '0'), {now}
             FROM generate_series({start}, {end}) g;
             INSERT INTO context_records (task_id, service_id, ended_at, reason, keep_days, customer_kind,
                customer_name, customer_address, subject, customer_details, params, language, reached)
             SELECT {tid}, {services}, {now} - g * 1000 + 600000, 'concluded',
                CASE WHEN g % 2 = 0 THEN 30 ELSE 0 END, 'anonymous', 'Customer ' || g,
                '+4144' || lpad(g::text, 7, '0'), 'Subject ' || (g % 97),
                CASE WHEN g % 2 = 0 THEN json_build_object('email', 'c' || g || '@customer.example')::text END,
                CASE WHEN g % 2 = 0 THEN json_build_object('TicketId', '#' || g)::text END,
                CASE WHEN g % 2 = 0 THEN 'de' END, NULL
             FROM generate_series({start}, {end}) g WHERE NOT ({live});",
            tid = id("tsk_b"),
            sid = id("ses_b"),
        )))
        .execute(&mut *conn)
        .await
        .with_context(|| format!("loading tasks {start}..{end}"))?;
        start = end + 1;
    }
    sqlx::query("SET session_replication_role = DEFAULT")
        .execute(&mut *conn)
        .await?;
    for table in ["tasks", "user_sessions", "context_records"] {
        sqlx::raw_sql(AssertSqlSafe(format!("VACUUM (ANALYZE) {table}")))
            .execute(&mut *conn)
            .await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Latencies (ms) of an open loop: one request due every 1/rate s for
/// `seconds`, each sent from its own task, timed from when it was due.
async fn open_loop(
    client: &reqwest::Client,
    rate: f64,
    seconds: u64,
    url_for: impl Fn() -> String,
) -> (Vec<f64>, u64) {
    let total = (rate * seconds as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let (client, lat, errors, url) = (client.clone(), lat.clone(), errors.clone(), url_for());
        tasks.spawn(async move {
            let ok = match client.get(&url).bearer_auth(ADMIN).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            if ok {
                lat.lock()
                    .unwrap()
                    .push(due.elapsed().as_secs_f64() * 1000.0);
            } else {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut v = std::mem::take(&mut *lat.lock().unwrap());
    v.sort_by(f64::total_cmp);
    (v, errors.load(std::sync::atomic::Ordering::Relaxed))
}

/// Requests per second of `clients` clients sending back to back for `seconds`.
async fn closed_loop(
    client: &reqwest::Client,
    clients: usize,
    seconds: u64,
    url_for: impl Fn() -> String + Clone + Send + 'static,
) -> f64 {
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, done, url_for) = (client.clone(), done.clone(), url_for.clone());
        set.spawn(async move {
            while Instant::now() < until {
                if let Ok(r) = client.get(url_for()).bearer_auth(ADMIN).send().await
                    && r.status().is_success()
                    && r.bytes().await.is_ok()
                {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / seconds as f64
}

fn row(name: &str, v: &[f64], errors: u64, target: Option<f64>) {
    let p99 = pct(v, 0.99);
    println!(
        "{name:<44} {:>7} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {}",
        v.len(),
        errors,
        pct(v, 0.5),
        pct(v, 0.9),
        p99,
        v.last().copied().unwrap_or(f64::NAN),
        match target {
            Some(t) if p99 < t => format!("PASS (p99 < {t} ms)"),
            Some(t) => format!("MISS (p99 < {t} ms)"),
            None => "baseline".into(),
        }
    );
}

async fn details(args: &Args) -> Result<()> {
    let db = BenchDb::create(Backend::Pg).await?;
    // The server creates the schema; the tasks are loaded behind its back.
    let server = Server::start(config(&db.url, ""))?;
    println!("loading {} tasks ({})…", args.tasks, load());
    let loaded = load_tasks(&db.url, args.tasks).await?;
    println!("loaded in {loaded:.1} s");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let n = args.tasks;
    let task_url = {
        let base = server.url.clone();
        move || {
            let g = rand::rng().random_range(1..=n);
            format!("{base}/api/v1/tasks/tsk_b{g:08}")
        }
    };
    // Check one of each kind, and warm up.
    for g in [1u64, 7] {
        let r: Value = client
            .get(format!("{}/api/v1/tasks/tsk_b{g:08}", server.url))
            .bearer_auth(ADMIN)
            .send()
            .await?
            .json()
            .await?;
        let ctx = &r["sessions"][0]["context"];
        anyhow::ensure!(ctx.is_object(), "no session context in {r}");
        if g == 1 {
            anyhow::ensure!(
                r["context"]["context_links"]
                    .as_array()
                    .is_some_and(|l| !l.is_empty()),
                "no links: {r}"
            );
        }
    }
    let (_, _) = open_loop(&client, args.rate, 2, &task_url).await;
    println!(
        "\n=== (a) GET /api/v1/tasks/{{id}} on PostgreSQL, {} tasks (70% live, 30% concluded with records) ===",
        n
    );
    println!("{} before", load());
    println!(
        "{:<44} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "open loop at the offered rate", "ok", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    let health_url = format!("{}/healthz", server.url);
    let (v, e) = open_loop(&client, args.rate, args.seconds, || health_url.clone()).await;
    row(
        &format!("GET /healthz at {}/s (HTTP floor)", args.rate),
        &v,
        e,
        None,
    );
    // The handler's SQL, one request's worth at a time, from here.
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&db.url)
        .await?;
    let mut sql_lat = Vec::new();
    let sql_start = Instant::now();
    while sql_start.elapsed() < Duration::from_secs(args.seconds.min(5)) {
        let g = rand::rng().random_range(1..=n);
        let id = format!("tsk_b{g:08}");
        let t0 = Instant::now();
        sqlx::query("SELECT * FROM tasks WHERE id = $1")
            .bind(&id)
            .fetch_optional(&pool)
            .await?;
        sqlx::query("SELECT * FROM user_sessions WHERE task_id = $1 ORDER BY created_at, id")
            .bind(&id)
            .fetch_all(&pool)
            .await?;
        sqlx::query("SELECT name, settings, deleted_at FROM services WHERE id = $1")
            .bind(SERVICES[(g % 5) as usize])
            .fetch_optional(&pool)
            .await?;
        if g % 10 >= 7 {
            sqlx::query("SELECT * FROM context_records WHERE task_id = $1 ORDER BY ended_at, id")
                .bind(&id)
                .fetch_all(&pool)
                .await?;
        }
        sql_lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    sql_lat.sort_by(f64::total_cmp);
    row(
        "the handler's SQL, sequential (DB floor)",
        &sql_lat,
        0,
        None,
    );
    let (v, e) = open_loop(&client, args.rate, args.seconds, &task_url).await;
    row(
        &format!("GET /api/v1/tasks/{{id}} at {}/s", args.rate),
        &v,
        e,
        Some(P99_TARGET_MS),
    );
    let secs = args.seconds.min(5);
    let health = closed_loop(&client, 16, secs, {
        let u = health_url.clone();
        move || u.clone()
    })
    .await;
    let tasks = closed_loop(&client, 16, secs, task_url.clone()).await;
    println!(
        "capacity (closed loop, 16 clients, {secs} s): GET /healthz {health:.0}/s, GET /api/v1/tasks/{{id}} {tasks:.0}/s"
    );
    println!("{} after", load());
    drop(server);
    Ok(())
}

/// A receiver: records when each delivery arrived, and how long after its change.
#[derive(Default)]
struct Received {
    /// delivery id -> (task, change id, ms from change to arrival)
    by_id: HashMap<String, (String, i64, f64)>,
    /// (task, change id) in arrival order
    order: Vec<(String, i64)>,
    duplicates: u64,
    last: Option<Instant>,
}

async fn receiver() -> Result<(String, Arc<Mutex<Received>>, tokio::task::JoinHandle<()>)> {
    use axum::routing::post;
    let received = Arc::new(Mutex::new(Received::default()));
    let r = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let r = r.clone();
            async move {
                let now = chrono::Utc::now().timestamp_micros() as f64 / 1000.0;
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    let created = v["created_at"]
                        .as_str()
                        .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
                        .map_or(now, |c| c.timestamp_millis() as f64);
                    let id = v["id"].as_str().unwrap_or_default().to_string();
                    let task = v["task_id"].as_str().unwrap_or_default().to_string();
                    let change = v["change_id"].as_i64().unwrap_or(0);
                    let mut r = r.lock().unwrap();
                    if r.by_id
                        .insert(id, (task.clone(), change, now - created))
                        .is_some()
                    {
                        r.duplicates += 1;
                    } else {
                        r.order.push((task, change));
                    }
                    r.last = Some(Instant::now());
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, received, handle))
}

/// What one outbox run measured.
struct OutboxRun {
    lat: Vec<f64>,
    rate: f64,
    write_rate: f64,
    last: f64,
    missing: usize,
    duplicates: u64,
    out_of_order: u64,
}

impl OutboxRun {
    fn print(&self, name: &str, verdict: &str) {
        println!(
            "{name:<44} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {verdict}",
            self.lat.len(),
            self.rate,
            pct(&self.lat, 0.5),
            pct(&self.lat, 0.9),
            pct(&self.lat, 0.99),
            self.lat.last().copied().unwrap_or(f64::NAN),
        );
        println!(
            "{:<44} changes written at {:.0}/s; last delivery {:.2} s after the first write; \
             missing {}, duplicates {}, out of order within a task {}",
            "", self.write_rate, self.last, self.missing, self.duplicates, self.out_of_order
        );
    }
}

/// Writes `n` task changes over `tasks` tasks, as the application's own
/// transactions do, each followed by the deliverers' wake-up (50 per transaction when `rate` is `None`, else paced at
/// `rate` per second in transactions of 10), and waits until the receiver
/// has them all (or two minutes).
async fn outbox(
    pool: &sqlx::PgPool,
    received: &Arc<Mutex<Received>>,
    n: usize,
    tasks: usize,
    prefix: &str,
    rate: Option<f64>,
) -> Result<OutboxRun> {
    *received.lock().unwrap() = Received::default();
    let batch_size = if rate.is_some() { 10 } else { 50 };
    let started = Instant::now();
    let mut written = 0usize;
    while written < n {
        if let Some(r) = rate {
            tokio::time::sleep_until(started + Duration::from_secs_f64(written as f64 / r)).await;
        }
        let batch = batch_size.min(n - written);
        let mut tx = pool.begin().await?;
        for k in 0..batch {
            let i = written + k;
            let task = format!("tsk_{prefix}{:05}", i % tasks);
            sqlx::query(
                "INSERT INTO task_changes (task_id, kind, session_id, agent_id, payload, created_at)
                 VALUES ($1, 'task.updated', NULL, NULL, $2, $3)",
            )
            .bind(&task)
            .bind(serde_json::json!({"task_id": task, "n": i}).to_string())
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        // As the application's writers do after a commit: wake the
        // deliverers (src/store/announce.rs).
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(switchboard::store::webhooks::PG_CHANNEL)
            .execute(pool)
            .await?;
        written += batch;
    }
    let write_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = received.lock().unwrap().by_id.len();
        if done >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = std::mem::take(&mut *received.lock().unwrap());
    let last = r
        .last
        .map_or(0.0, |l| l.duration_since(started).as_secs_f64());
    let mut lat: Vec<f64> = r.by_id.values().map(|(_, _, l)| *l).collect();
    lat.sort_by(f64::total_cmp);
    // In order per task: change ids rise within each task.
    let mut last_change: HashMap<&str, i64> = HashMap::new();
    let mut out_of_order = 0u64;
    for (task, change) in &r.order {
        if let Some(prev) = last_change.insert(task.as_str(), *change)
            && prev > *change
        {
            out_of_order += 1;
        }
    }
    Ok(OutboxRun {
        rate: r.by_id.len() as f64 / last.max(1e-9),
        write_rate: n as f64 / write_secs.max(1e-9),
        last,
        missing: n.saturating_sub(r.by_id.len()),
        duplicates: r.duplicates,
        out_of_order,
        lat,
    })
}

async fn webhooks(args: &Args) -> Result<()> {
    let db = BenchDb::create(Backend::Pg).await?;
    let (hook, received, receiver_task) = receiver().await?;
    let server = Server::start(config(
        &db.url,
        "[webhooks]\nallow_loopback = true\nmax_in_flight = 64\n",
    ))?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let resp = client
        .post(format!("{}/api/v1/admin/webhooks", server.url))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"id": "bench", "url": hook, "events": ["*"], "secret": "bench-secret-0123456789"}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "subscription: {}",
        resp.text().await?
    );

    // Baseline: the receiver posted to straight from here, 64 at a time.
    let n = args.changes as usize;
    let base_start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (client, hook, sem) = (client.clone(), hook.clone(), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let body = serde_json::json!({"id": format!("base-{i}"), "type": "baseline", "task_id": "base",
                "change_id": i, "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)});
            let _ = client.post(&hook).json(&body).send().await;
        });
    }
    while set.join_next().await.is_some() {}
    let base_secs = base_start.elapsed().as_secs_f64();
    let base_lat: Vec<f64> = {
        let mut r = received.lock().unwrap();
        let mut v: Vec<f64> = r.by_id.values().map(|(_, _, l)| *l).collect();
        *r = Received::default();
        v.sort_by(f64::total_cmp);
        v
    };

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&db.url)
        .await?;
    let tasks = 2_000usize.min(n.max(1));
    println!(
        "\n=== (b) webhook outbox on PostgreSQL: {n} task changes over {tasks} tasks to a local receiver ==="
    );
    println!("{} before", load());
    println!(
        "{:<44} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "", "delivered", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    println!(
        "{:<44} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  baseline",
        "posted straight to the receiver, 64 at once",
        base_lat.len(),
        n as f64 / base_secs,
        pct(&base_lat, 0.5),
        pct(&base_lat, 0.9),
        pct(&base_lat, 0.99),
        base_lat.last().copied().unwrap_or(f64::NAN)
    );
    // A burst (every change as fast as they can be written): throughput.
    let burst = outbox(&pool, &received, n, tasks, "burst", None).await?;
    let rate_ok = burst.rate >= RATE_TARGET;
    burst.print(
        "burst: committed -> delivered",
        if rate_ok {
            "PASS (>= 1000/s)"
        } else {
            "MISS (>= 1000/s)"
        },
    );
    // Paced at the target rate: latency.
    let paced = outbox(&pool, &received, n, tasks, "paced", Some(RATE_TARGET)).await?;
    let p99 = pct(&paced.lat, 0.99);
    paced.print(
        &format!("at {RATE_TARGET}/s: committed -> delivered"),
        if p99 < DELIVERY_P99_TARGET_MS {
            "PASS (p99 < 200 ms)"
        } else {
            "MISS (p99 < 200 ms)"
        },
    );
    println!("{} after", load());
    drop(server);
    receiver_task.abort();
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = args()?;
    println!("context benchmark; {}", load());
    if args.only.as_deref() != Some("webhooks") {
        details(&args).await?;
    }
    if args.only.as_deref() != Some("details") {
        webhooks(&args).await?;
    }
    Ok(())
}
