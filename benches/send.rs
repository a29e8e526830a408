//! Replies from queued to accepted by a real SMTP server (aiosmtpd, the
//! tests' sink), through the real outbox of an in-process instance
//! (`Running::start`), on PostgreSQL and SQLite. Prints figures and PASS/MISS;
//! asserts nothing.
//!
//! `cargo bench --bench send -- [--replies 2000] [--rate 250] [--pool 8]
//!  [--backend both|pg|sqlite] [--phases bare,paced,burst] [--db-pool 8] [--seed 1]`
//!
//! - bare: `Sender::send` straight to the sink, `--pool` at a time, no
//!   database and no outbox: what the SMTP side (switchboard's pool of lettre
//!   connections + aiosmtpd) can do on this machine.
//! - paced: `--replies` drafts (one task each, made through the store), then
//!   `POST /api/v1/drafts/{id}/send` at `--rate` per second, open loop (each
//!   request due at a fixed instant, sent from its own task). Latency runs
//!   from the 202 to the sink having written the message (a thread watches
//!   for the sink's numbered `.json`, which it writes last, every ms) and is
//!   matched by Message-ID. Also: the HTTP call itself, and queued_at →
//!   sent_at as the database records them (after the server's 250).
//! - burst: `--replies` more drafts queued at once through the store
//!   (`queue_draft`, no notification: the outbox finds them on its 500 ms
//!   poll); sends/s while the backlog drains is the outbox's capacity.
//!
//! Target (paced): p99 queue → accepted under 100 ms while sustaining at least
//! 200 sends/s, every reply delivered.
//!
//! PostgreSQL: $SWITCHBOARD_BENCH_PG_URL, $SWITCHBOARD_TEST_PG_URL or
//! postgres://postgres@127.0.0.1:5432/postgres (a `sbbench_<random>` database
//! per run, dropped afterwards). Switchboard's log: warnings only; set
//! SB_BENCH_LOG (a tracing filter) for more.
mod common;
#[path = "../tests/support/smtp.rs"]
mod smtp;

use anyhow::{Context, Result, anyhow, bail};
use common::{Backend, BenchDb, pct};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use smtp::{SmtpSink, SmtpSinkOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard::adapters::smtp::{
    OutgoingAttachment, OutgoingMail, Sender, SmtpSettings, Transport, build,
};
use switchboard::app::Running;
use switchboard::config::{Config, TlsMode};
use switchboard::domain::Modality;
use switchboard::mail::Address;
use switchboard::mail::compose::new_message_id;
use switchboard::store::{NewDraft, NewTask, Store};

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const P99_TARGET_MS: f64 = 100.0;
const RATE_TARGET: f64 = 200.0;
/// Messages sent to the sink before anything is measured.
const WARM_UP: usize = 2000;
/// How long the outbox may take to deliver what was queued, after the last queueing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------
// arguments

struct Args {
    replies: usize,
    rate: f64,
    pool: u32,
    db_pool: u32,
    backends: Vec<Backend>,
    bare: bool,
    paced: bool,
    burst: bool,
    seed: u64,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            replies: 2000,
            rate: 250.0,
            pool: 8,
            db_pool: 8,
            backends: vec![Backend::Pg, Backend::Sqlite],
            bare: true,
            paced: true,
            burst: true,
            seed: 1,
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
                "--replies" => a.replies = value("--replies")?.replace('_', "").parse()?,
                "--rate" => a.rate = value("--rate")?.parse()?,
                "--pool" => a.pool = value("--pool")?.parse()?,
                "--db-pool" => a.db_pool = value("--db-pool")?.parse()?,
                "--seed" => a.seed = value("--seed")?.parse()?,
                "--phases" => {
                    let v = value("--phases")?;
                    (a.bare, a.paced, a.burst) = (false, false, false);
                    for p in v.split(',') {
                        match p.trim() {
                            "bare" => a.bare = true,
                            "paced" => a.paced = true,
                            "burst" => a.burst = true,
                            "all" => (a.bare, a.paced, a.burst) = (true, true, true),
                            other => bail!("--phases: unknown phase {other}"),
                        }
                    }
                }
                "--backend" => {
                    a.backends = match value("--backend")?.as_str() {
                        "both" => vec![Backend::Pg, Backend::Sqlite],
                        "pg" | "postgres" | "postgresql" => vec![Backend::Pg],
                        "sqlite" | "lite" => vec![Backend::Sqlite],
                        other => bail!("--backend {other}: use both, pg or sqlite"),
                    }
                }
                "--bench" => {}
                "-h" | "--help" => {
                    println!(
                        "cargo bench --bench send -- [--replies N] [--rate R] [--pool P] \
                         [--backend both|pg|sqlite] [--phases bare,paced,burst] [--db-pool N] [--seed S]"
                    );
                    std::process::exit(0);
                }
                other => eprintln!("ignoring argument {other}"),
            }
        }
        if a.replies == 0 || a.rate <= 0.0 || a.pool == 0 || a.db_pool == 0 {
            bail!("--replies, --rate, --pool and --db-pool must be positive");
        }
        Ok(a)
    }
}

// ---------------------------------------------------------------------------
// main

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let filter = std::env::var("SB_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = Report::default();
    let result = rt.block_on(async {
        tokio::select! {
            r = run(&args, &mut report) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    report.print(&args);
    rt.shutdown_timeout(Duration::from_secs(10));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, report: &mut Report) -> Result<()> {
    if !smtp::available() {
        bail!(
            "aiosmtpd is needed (/usr/bin/python3 -c 'import aiosmtpd'; run scripts/install-deps)"
        );
    }
    let sink = tokio::task::spawn_blocking(|| SmtpSink::start(SmtpSinkOptions::default()))
        .await?
        .context("start the SMTP sink")?;
    let sink_dir = sink.dir().join("messages");
    let sink_pid = find_pid_with_arg(&sink.dir().to_string_lossy());
    let watcher = Watcher::start(sink_dir.clone());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    report.setup = format!(
        "aiosmtpd sink on 127.0.0.1:{} (pid {}), {cpus} CPUs shared by the sink, the database, \
         switchboard and this load generator; [smtp] pool_max = {}, database.max_connections = {}",
        sink.port,
        sink_pid.map_or("?".into(), |p| p.to_string()),
        args.pool,
        args.db_pool
    );
    println!("{}", report.setup);
    let ctx = Ctx {
        sink_port: sink.port,
        sink_dir,
        sink_pid,
        watcher: &watcher,
    };
    // The sink (Python) is markedly slower for its first thousand or so
    // messages, whichever client sends them: warm it up, unmeasured.
    bare(args, &ctx, BareKind::Raw { nodelay: true }, WARM_UP, 9).await?;
    if args.bare {
        let n = args.replies;
        report
            .rows
            .push(bare(args, &ctx, BareKind::Sender, n, 10).await?);
        report
            .rows
            .push(bare(args, &ctx, BareKind::Raw { nodelay: false }, n, 11).await?);
        report
            .rows
            .push(bare(args, &ctx, BareKind::Raw { nodelay: true }, n, 12).await?);
    }
    for &backend in &args.backends {
        if args.paced || args.burst {
            outbox_runs(args, &ctx, backend, report).await?;
        }
    }
    watcher.stop();
    drop(sink);
    Ok(())
}

struct Ctx<'a> {
    sink_port: u16,
    sink_dir: PathBuf,
    sink_pid: Option<u32>,
    watcher: &'a Watcher,
}

// ---------------------------------------------------------------------------
// the sink's arrivals

/// Watches the sink's directory for `NNNNNN.json` (written last, atomically,
/// in order): the instant each message was accepted, within about a
/// millisecond.
struct Watcher {
    arrivals: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Watcher {
    fn start(dir: PathBuf) -> Watcher {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (arrivals.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut next = 1u64;
            while !s.load(Ordering::Relaxed) {
                if dir.join(format!("{next:06}.json")).exists() {
                    a.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Instant::now());
                    next += 1;
                    continue;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        Watcher {
            arrivals,
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }

    fn count(&self) -> usize {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Arrival of message number `seq` (1-based).
    fn at(&self, seq: usize) -> Option<Instant> {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(seq.checked_sub(1)?)
            .copied()
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The Message-ID (without `<>`) of the sink's message number `seq`.
fn sink_message_id(dir: &Path, seq: usize) -> Option<String> {
    let raw = std::fs::read(dir.join(format!("{seq:06}.eml"))).ok()?;
    let text = String::from_utf8_lossy(&raw[..raw.len().min(16 * 1024)]).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("message-id")
        {
            let mut v = value.trim().to_string();
            while let Some(next) = lines.peek()
                && next.starts_with([' ', '\t'])
            {
                v.push_str(next.trim());
                lines.next();
            }
            return Some(v.trim_matches(['<', '>', ' ']).to_string());
        }
    }
    None
}

/// Arrival instants of the given Message-IDs among the sink's messages
/// `from_seq..`.
fn arrivals_by_id(ctx: &Ctx<'_>, from_seq: usize) -> HashMap<String, Instant> {
    let mut out = HashMap::new();
    for seq in from_seq..=ctx.watcher.count() {
        if let (Some(id), Some(at)) = (sink_message_id(&ctx.sink_dir, seq), ctx.watcher.at(seq)) {
            out.insert(id, at);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// CPU from /proc

fn proc_ticks(stat: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn find_pid_with_arg(needle: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
            && pid != std::process::id()
        {
            return Some(pid);
        }
    }
    None
}

#[derive(Clone, Default)]
struct CpuSnap {
    me: u64,
    sink: u64,
    pg: HashMap<u32, u64>,
    busy: u64,
    total: u64,
}

#[derive(Clone, Copy, Default)]
struct CpuUse {
    /// Shares of one CPU (100 = one core busy).
    me: f64,
    sink: f64,
    pg: f64,
    /// Of all CPUs, 0–100.
    busy: f64,
    /// Machine busy share used by none of the above.
    other: f64,
}

impl CpuSnap {
    fn take(sink_pid: Option<u32>, pg_pids: &[u32]) -> CpuSnap {
        let mut s = CpuSnap {
            me: proc_ticks(Path::new("/proc/self/stat")).unwrap_or(0),
            sink: sink_pid
                .and_then(|p| proc_ticks(&Path::new("/proc").join(p.to_string()).join("stat")))
                .unwrap_or(0),
            ..CpuSnap::default()
        };
        for &p in pg_pids {
            if let Some(t) = proc_ticks(&Path::new("/proc").join(p.to_string()).join("stat")) {
                s.pg.insert(p, t);
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
            s.total = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            s.busy = s.total.saturating_sub(idle);
        }
        s
    }

    fn until(&self, end: &CpuSnap, cpus: f64) -> CpuUse {
        let total = end.total.saturating_sub(self.total).max(1) as f64;
        // /proc/stat counts every CPU: total / cpus is the wall time in ticks.
        let wall = total / cpus.max(1.0);
        let me = end.me.saturating_sub(self.me);
        let sink = end.sink.saturating_sub(self.sink);
        let pg: u64 = end
            .pg
            .iter()
            .map(|(p, t)| t.saturating_sub(self.pg.get(p).copied().unwrap_or(0)))
            .sum();
        let busy = end.busy.saturating_sub(self.busy);
        CpuUse {
            me: 100.0 * me as f64 / wall,
            sink: 100.0 * sink as f64 / wall,
            pg: 100.0 * pg as f64 / wall,
            busy: 100.0 * busy as f64 / total,
            other: 100.0 * busy.saturating_sub(me + sink + pg) as f64 / total,
        }
    }
}

fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

// ---------------------------------------------------------------------------
// databases

/// A pool of our own for reading the drafts table.
enum Reader {
    Pg(PgPool),
    Lite(SqlitePool),
}

impl Reader {
    async fn open(backend: Backend, url: &str) -> Result<Reader> {
        Ok(match backend {
            Backend::Pg => Reader::Pg(PgPoolOptions::new().max_connections(1).connect(url).await?),
            Backend::Sqlite => Reader::Lite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await?,
            ),
        })
    }

    /// Drafts per state.
    async fn states(&self) -> Result<HashMap<String, i64>> {
        let sql = "SELECT state, count(*) FROM drafts GROUP BY state";
        let rows: Vec<(String, i64)> = match self {
            Reader::Pg(p) => sqlx::query_as(sql).fetch_all(p).await?,
            Reader::Lite(p) => sqlx::query_as(sql).fetch_all(p).await?,
        };
        Ok(rows.into_iter().collect())
    }

    /// id → (queued_at, sent_at) of sent drafts, in ms.
    async fn sent_times(&self) -> Result<HashMap<String, (i64, i64)>> {
        let sql = "SELECT id, queued_at, sent_at FROM drafts WHERE state = 'sent'";
        let rows: Vec<(String, Option<i64>, Option<i64>)> = match self {
            Reader::Pg(p) => sqlx::query_as(sql).fetch_all(p).await?,
            Reader::Lite(p) => sqlx::query_as(sql).fetch_all(p).await?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(id, q, s)| Some((id, (q?, s?))))
            .collect())
    }

    /// Server backends of the bench database (PostgreSQL on this machine).
    async fn backend_pids(&self) -> Vec<u32> {
        match self {
            Reader::Pg(p) => sqlx::query_scalar::<_, i32>(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(p)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|p| p as u32)
            .collect(),
            Reader::Lite(_) => Vec::new(),
        }
    }

    async fn close(self) {
        match self {
            Reader::Pg(p) => p.close().await,
            Reader::Lite(p) => p.close().await,
        }
    }
}

fn config_text(db_url: &str, smtp_port: u16, pool: u32, db_pool: u32) -> String {
    format!(
        r#"
[database]
url = "{db_url}"
max_connections = {db_pool}

[http]
bind = "127.0.0.1:0"

[log]
level = "warn"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
pool_max = {pool}
timeout_secs = 10
retry_base_secs = 1

[[services]]
id = "support"
name = "Support"
email_address = "support@example.com"

[[agents]]
id = "admin"
name = "Admin"
email = "admin@example.com"
token = "{ADMIN_TOKEN}"
admin = true
"#
    )
}

// ---------------------------------------------------------------------------
// replies

const WORDS: &[&str] = &[
    "order",
    "invoice",
    "delivery",
    "refund",
    "account",
    "thanks",
    "please",
    "the",
    "the",
    "and",
    "we",
    "your",
    "for",
    "with",
    "this",
    "will",
    "have",
    "shipping",
    "tracking",
    "number",
    "package",
    "return",
    "label",
    "a",
    "to",
    "of",
    "in",
    "is",
    "it",
    "not",
    "yet",
    "payment",
    "card",
    "replacement",
    "warranty",
    "tomorrow",
    "week",
    "Grüße",
    "café",
    "€49.90",
    "#48213",
];
const NAMES: &[&str] = &[
    "Anna Meyer",
    "Ben Schmidt",
    "Chloé Dubois",
    "David García",
    "Eva Rossi",
    "Farid Nowak",
    "Greta Jensen",
    "Hiro Yamamoto",
    "Jörg Öztürk",
    "Sean O'Neill",
];

fn sentence(rng: &mut StdRng) -> String {
    let n = rng.random_range(5..16);
    let words: Vec<&str> = (0..n)
        .map(|_| WORDS.choose(rng).copied().unwrap_or("word"))
        .collect();
    let text = words.join(" ");
    let mut c = text.chars();
    match c.next() {
        Some(f) => format!("{}{}.", f.to_uppercase(), c.as_str()),
        None => String::new(),
    }
}

/// A reply as an agent writes it: greeting, a few paragraphs, signature, the
/// customer's message quoted; half with an HTML part; 5% with a PDF.
struct Reply {
    customer: Address,
    subject: String,
    text: String,
    html: String,
    in_reply_to: String,
    references: Vec<String>,
    attachment: Option<Vec<u8>>,
}

fn reply(rng: &mut StdRng, i: usize) -> Reply {
    let name = NAMES.choose(rng).copied().unwrap_or("Anna Meyer");
    let email = format!(
        "{}.{i}@customer.example",
        name.split(' ')
            .next()
            .unwrap_or("x")
            .to_lowercase()
            .replace(['é', 'ö', 'ü'], "e")
    );
    let topic = sentence(rng);
    let paras: Vec<String> = (0..rng.random_range(1..5))
        .map(|_| {
            (0..rng.random_range(1..5))
                .map(|_| sentence(rng))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let quoted: Vec<String> = (0..rng.random_range(2..20))
        .map(|_| sentence(rng))
        .collect();
    let first = name.split(' ').next().unwrap_or("");
    let text = format!(
        "Hello {first},\n\n{}\n\nKind regards\nSupport team\n\nOn Mon, 23 Nov 2026, {name} wrote:\n> {}\n",
        paras.join("\n\n"),
        quoted.join("\n> ")
    );
    let html = if rng.random_bool(0.5) {
        format!(
            "<p>Hello {first},</p>{}<p>Kind regards<br>Support team</p><blockquote type=\"cite\">{}</blockquote>",
            paras
                .iter()
                .map(|p| format!("<p>{p}</p>"))
                .collect::<String>(),
            quoted
                .iter()
                .map(|q| format!("<p>{q}</p>"))
                .collect::<String>()
        )
    } else {
        String::new()
    };
    let original = format!("{:016x}@customer.example", rng.random::<u64>());
    let older = format!("{:016x}@example.com", rng.random::<u64>());
    let attachment = rng.random_bool(0.05).then(|| {
        let mut b = vec![0u8; rng.random_range(20_000..200_000)];
        rng.fill_bytes(&mut b);
        b
    });
    Reply {
        customer: Address {
            name: Some(name.into()),
            email,
        },
        subject: format!("Re: {topic}"),
        text,
        html,
        in_reply_to: original.clone(),
        references: vec![older, original],
        attachment,
    }
}

/// Makes `n` tasks with one draft each through the store; returns the drafts' ids.
async fn make_drafts(store: &Store, args: &Args, phase: u64, n: usize) -> Result<Vec<String>> {
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(31).wrapping_add(phase));
    let replies: Vec<Reply> = (0..n).map(|i| reply(&mut rng, i)).collect();
    let replies = Arc::new(replies);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (store, replies, next) = (store.clone(), replies.clone(), next.clone());
        set.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(r) = replies.get(i) else { break };
                let (task, _) = store
                    .create_task(&NewTask {
                        service_id: "support".into(),
                        modality: Modality::Email,
                        priority: 0,
                        routed: false,
                        arrived_at: switchboard::domain::now_millis(),
                        customer_address: Some(r.customer.email.clone()),
                        customer_name: r.customer.name.clone(),
                        subject: Some(r.subject.trim_start_matches("Re: ").to_string()),
                        params: serde_json::json!({}),
                        external_id: None,
                    })
                    .await
                    .map_err(|e| anyhow!("create_task: {e}"))?;
                let draft = store
                    .create_draft(&NewDraft {
                        task_id: task.id.clone(),
                        service_id: "support".into(),
                        agent_id: "admin".into(),
                        reply_to_message: None,
                        kind: "reply".into(),
                        from: Address {
                            name: Some("Support".into()),
                            email: "support@example.com".into(),
                        },
                        to: vec![r.customer.clone()],
                        cc: Vec::new(),
                        subject: r.subject.clone(),
                        body_text: r.text.clone(),
                        body_html: r.html.clone(),
                        in_reply_to: Some(r.in_reply_to.clone()),
                        references: r.references.clone(),
                        attachments: r
                            .attachment
                            .iter()
                            .map(|b| {
                                (
                                    "order-summary.pdf".to_string(),
                                    "application/pdf".to_string(),
                                    b.clone(),
                                    None,
                                )
                            })
                            .collect(),
                    })
                    .await
                    .map_err(|e| anyhow!("create_draft: {e}"))?;
                made.push((i, draft.id));
            }
            Ok::<_, anyhow::Error>(made)
        });
    }
    let mut ids = vec![String::new(); n];
    while let Some(r) = set.join_next().await {
        for (i, id) in r?? {
            ids[i] = id;
        }
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------
// phases

#[derive(Default)]
struct Row {
    backend: String,
    phase: String,
    queued: usize,
    delivered: usize,
    failed: usize,
    /// Delivered per second: (a) paced: from the first 202 to the last
    /// acceptance; (b) burst: from the first to the last acceptance.
    rate: f64,
    /// Queue → accepted, ms, sorted.
    lat: Vec<f64>,
    /// The HTTP send call, ms, sorted (paced).
    http: Vec<f64>,
    /// queued_at → sent_at as recorded, ms, sorted.
    recorded: Vec<f64>,
    cpu: Option<CpuUse>,
    target: Option<bool>,
    note: String,
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bare_mails(args: &Args, n: usize, seed_offset: u64) -> Vec<OutgoingMail> {
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(31).wrapping_add(seed_offset));
    let key = [9u8; 32];
    (0..n)
        .map(|i| {
            let r = reply(&mut rng, i);
            OutgoingMail {
                from: Address {
                    name: Some("Support".into()),
                    email: "support@example.com".into(),
                },
                to: vec![r.customer],
                cc: Vec::new(),
                bcc: Vec::new(),
                reply_to: None,
                subject: r.subject,
                message_id: new_message_id(&key, "example.com"),
                in_reply_to: Some(r.in_reply_to),
                references: r.references,
                date: chrono::Utc::now(),
                text: r.text,
                html: (!r.html.is_empty()).then_some(r.html),
                attachments: r
                    .attachment
                    .map(|bytes| OutgoingAttachment {
                        filename: "order-summary.pdf".into(),
                        content_type: "application/pdf".into(),
                        bytes,
                        content_id: None,
                    })
                    .into_iter()
                    .collect(),
                auto_submitted: false,
            }
        })
        .collect()
}

/// How a bare run sends.
#[derive(Clone, Copy)]
enum BareKind {
    /// switchboard's `Sender` (its own pool of lettre connections, TCP_NODELAY on).
    Sender,
    /// One lettre `AsyncSmtpConnection` per worker on a socket of our own,
    /// with TCP_NODELAY as given.
    Raw { nodelay: bool },
}

/// Sends the replies straight to the sink, `pool` workers back to back, no
/// database and no outbox.
async fn bare(
    args: &Args,
    ctx: &Ctx<'_>,
    kind: BareKind,
    n: usize,
    seed_offset: u64,
) -> Result<Row> {
    let sender = Sender::new(Transport::Smtp(SmtpSettings {
        tls: TlsMode::None,
        pool_max: args.pool,
        timeout: Duration::from_secs(10),
        ..SmtpSettings::new("127.0.0.1", ctx.sink_port)
    }))
    .map_err(|e| anyhow!("sender: {e}"))?;
    let mails = Arc::new(bare_mails(args, n, seed_offset));
    let from_seq = ctx.watcher.count() + 1;
    let next = Arc::new(AtomicUsize::new(0));
    let port = ctx.sink_port;
    let cpu0 = CpuSnap::take(ctx.sink_pid, &[]);
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..args.pool {
        let (sender, mails, next) = (sender.clone(), mails.clone(), next.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0;
            let mut conn = match kind {
                BareKind::Sender => None,
                BareKind::Raw { nodelay } => {
                    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                    tcp.set_nodelay(nodelay)?;
                    Some(
                        AsyncSmtpConnection::connect_with_transport(
                            Box::new(tcp),
                            &ClientId::Domain("bench.example".into()),
                        )
                        .await?,
                    )
                }
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(m) = mails.get(i) else { break };
                let s = Instant::now();
                let ok = match &mut conn {
                    None => sender.send(m).await.is_ok(),
                    Some(c) => {
                        let msg = build(m).map_err(|e| anyhow!("{e}"))?;
                        c.send(msg.envelope(), &msg.formatted()).await.is_ok()
                    }
                };
                if ok {
                    lat.push(ms(s.elapsed()));
                } else {
                    failed += 1;
                }
            }
            if let Some(c) = &mut conn {
                let _ = c.quit().await;
            }
            Ok::<_, anyhow::Error>((lat, failed))
        });
    }
    let (mut lat, mut failed) = (Vec::new(), 0);
    while let Some(r) = set.join_next().await {
        let (l, f) = r??;
        lat.extend(l);
        failed += f;
    }
    let elapsed = t0.elapsed();
    let cpu = cpu0.until(&CpuSnap::take(ctx.sink_pid, &[]), cpus());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let delivered = arrivals_by_id(ctx, from_seq).len();
    let (phase, note) = match kind {
        BareKind::Sender => (
            format!("bare Sender ×{}", args.pool),
            "switchboard's Sender straight to the sink (no database, no outbox); latency: one send",
        ),
        BareKind::Raw { nodelay: false } => (
            format!("raw lettre ×{}", args.pool),
            "one lettre AsyncSmtpConnection per worker, default socket (Nagle on, as lettre's transport)",
        ),
        BareKind::Raw { nodelay: true } => (
            format!("raw+NODELAY ×{}", args.pool),
            "the same with TCP_NODELAY set on the socket",
        ),
    };
    Ok(Row {
        backend: "-".into(),
        phase,
        queued: n,
        delivered,
        failed,
        rate: lat.len() as f64 / elapsed.as_secs_f64(),
        lat: sorted(lat),
        cpu: Some(cpu),
        note: note.into(),
        ..Row::default()
    })
}

async fn outbox_runs(
    args: &Args,
    ctx: &Ctx<'_>,
    backend: Backend,
    report: &mut Report,
) -> Result<()> {
    let db = BenchDb::create(backend).await?;
    let text = config_text(&db.url, ctx.sink_port, args.pool, args.db_pool);
    let config = Config::from_parts(&text, Path::new("bench.toml"), &[])
        .map_err(|e| anyhow!("config: {e}"))?;
    let running = Running::start(&config).await.context("start switchboard")?;
    let reader = Reader::open(backend, &db.url).await?;
    let result = async {
        if args.paced {
            let t = Instant::now();
            let ids = make_drafts(&running.store, args, 1, args.replies).await?;
            println!(
                "{}: {} tasks + drafts made through the store in {:.1} s",
                backend.name(),
                ids.len(),
                t.elapsed().as_secs_f64()
            );
            let row = paced(args, ctx, backend, &running, &reader, &ids).await?;
            report.rows.push(row);
        }
        if args.burst {
            let ids = make_drafts(&running.store, args, 2, args.replies).await?;
            let row = burst(args, ctx, backend, &running, &reader, &ids).await?;
            report.rows.push(row);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    reader.close().await;
    running.stop().await?;
    drop(db);
    result
}

/// Waits until no draft is queued or sending (or the timeout), and the sink
/// has `expected` messages.
async fn drain(ctx: &Ctx<'_>, reader: &Reader, expected: usize) -> Result<HashMap<String, i64>> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let states = reader.states().await?;
        let pending = states.get("queued").copied().unwrap_or(0)
            + states.get("sending").copied().unwrap_or(0);
        if (pending == 0 && ctx.watcher.count() >= expected) || Instant::now() >= deadline {
            return Ok(states);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Queued {
    draft: String,
    message_id: String,
    /// When the reply was queued (the 202, or `queue_draft` returning).
    at: Instant,
    http_ms: f64,
}

async fn paced(
    args: &Args,
    ctx: &Ctx<'_>,
    backend: Backend,
    running: &Running,
    reader: &Reader,
    ids: &[String],
) -> Result<Row> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = running.url();
    let from_seq = ctx.watcher.count() + 1;
    let pg_pids = reader.backend_pids().await;
    let cpu0 = CpuSnap::take(ctx.sink_pid, &pg_pids);
    let start = Instant::now() + Duration::from_millis(50);
    let mut set = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, id) = (
            client.clone(),
            format!("{base}/api/v1/drafts/{id}/send"),
            id.clone(),
        );
        set.spawn(async move {
            let t0 = Instant::now();
            let resp = client
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .map_err(|e| format!("{e}"))?;
            let at = Instant::now();
            let status = resp.status();
            let body: Value = resp.json().await.map_err(|e| format!("{e}"))?;
            if status.as_u16() != 202 {
                return Err(format!("HTTP {status}: {body}"));
            }
            Ok(Queued {
                draft: id,
                message_id: body["message_id"].as_str().unwrap_or_default().to_string(),
                at,
                http_ms: ms(at - t0),
            })
        });
    }
    let mut queued = Vec::new();
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r? {
            Ok(q) => queued.push(q),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let offered_for = start.elapsed();
    let states = drain(ctx, reader, from_seq - 1 + queued.len()).await?;
    let cpu = cpu0.until(&CpuSnap::take(ctx.sink_pid, &pg_pids), cpus());
    let mut row = measure(ctx, reader, backend, from_seq, &queued, &states).await?;
    row.phase = format!("paced {:.0}/s HTTP", args.rate);
    row.cpu = Some(cpu);
    row.http = sorted(queued.iter().map(|q| q.http_ms).collect());
    let p99 = pct(&row.lat, 0.99);
    row.target = Some(row.delivered == ids.len() && row.rate >= RATE_TARGET && p99 < P99_TARGET_MS);
    row.note = format!(
        "offered {:.0}/s for {:.1} s{}",
        ids.len() as f64 / offered_for.as_secs_f64(),
        offered_for.as_secs_f64(),
        first_error
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    );
    Ok(row)
}

async fn burst(
    _args: &Args,
    ctx: &Ctx<'_>,
    backend: Backend,
    running: &Running,
    reader: &Reader,
    ids: &[String],
) -> Result<Row> {
    let key = running.store.link_key().await.map_err(|e| anyhow!("{e}"))?;
    let from_seq = ctx.watcher.count() + 1;
    let pg_pids = reader.backend_pids().await;
    let cpu0 = CpuSnap::take(ctx.sink_pid, &pg_pids);
    let t0 = Instant::now();
    let mut queued = Vec::with_capacity(ids.len());
    // 4 queueing tasks: a burst, without taking all of the server's pool.
    let chunks: Vec<Vec<String>> = ids
        .chunks(ids.len().div_ceil(4))
        .map(|c| c.to_vec())
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for chunk in chunks {
        let (store, key) = (running.store.clone(), key.clone());
        set.spawn(async move {
            let mut out = Vec::new();
            for id in chunk {
                let s = Instant::now();
                let (d, _) = store
                    .queue_draft(&id, &new_message_id(&key, "example.com"))
                    .await
                    .map_err(|e| anyhow!("queue_draft: {e}"))?;
                let at = Instant::now();
                out.push(Queued {
                    draft: id,
                    message_id: d.message_id.unwrap_or_default(),
                    at,
                    http_ms: ms(at - s),
                });
            }
            Ok::<_, anyhow::Error>(out)
        });
    }
    while let Some(r) = set.join_next().await {
        queued.extend(r??);
    }
    let queue_time = t0.elapsed();
    let states = drain(ctx, reader, from_seq - 1 + queued.len()).await?;
    let cpu = cpu0.until(&CpuSnap::take(ctx.sink_pid, &pg_pids), cpus());
    let mut row = measure(ctx, reader, backend, from_seq, &queued, &states).await?;
    // The drain rate: first to last acceptance (the 500 ms poll is not counted).
    let arr = arrivals_by_id(ctx, from_seq);
    let times: Vec<Instant> = queued
        .iter()
        .filter_map(|q| arr.get(&q.message_id).copied())
        .collect();
    if let (Some(first), Some(last)) = (times.iter().min(), times.iter().max())
        && times.len() > 1
    {
        row.rate = (times.len() - 1) as f64 / (*last - *first).as_secs_f64();
        let first_after = first.saturating_duration_since(t0);
        row.note = format!(
            "queued via the store in {:.2} s; first acceptance {:.0} ms after the burst began; \
             drained in {:.2} s (latency = backlog)",
            queue_time.as_secs_f64(),
            ms(first_after),
            (*last - *first).as_secs_f64()
        );
    }
    row.phase = "burst via store".into();
    row.cpu = Some(cpu);
    row.target = Some(row.rate >= RATE_TARGET);
    Ok(row)
}

/// Delivery, latency and the database's view of the queued replies.
async fn measure(
    ctx: &Ctx<'_>,
    reader: &Reader,
    backend: Backend,
    from_seq: usize,
    queued: &[Queued],
    states: &HashMap<String, i64>,
) -> Result<Row> {
    let arr = arrivals_by_id(ctx, from_seq);
    let mut lat = Vec::new();
    let (mut first_q, mut last_a): (Option<Instant>, Option<Instant>) = (None, None);
    for q in queued {
        first_q = Some(first_q.map_or(q.at, |f| f.min(q.at)));
        if let Some(a) = arr.get(&q.message_id) {
            lat.push(ms(a.saturating_duration_since(q.at)));
            last_a = Some(last_a.map_or(*a, |l| l.max(*a)));
        }
    }
    let times = reader.sent_times().await?;
    let mine: HashSet<&str> = queued.iter().map(|q| q.draft.as_str()).collect();
    let recorded: Vec<f64> = times
        .iter()
        .filter(|(id, _)| mine.contains(id.as_str()))
        .map(|(_, (q, s))| (s - q) as f64)
        .collect();
    let rate = match (first_q, last_a) {
        (Some(f), Some(l)) if l > f => lat.len() as f64 / (l - f).as_secs_f64(),
        _ => f64::NAN,
    };
    Ok(Row {
        backend: backend.name().into(),
        queued: queued.len(),
        delivered: lat.len(),
        failed: states.get("failed").copied().unwrap_or(0) as usize,
        rate,
        lat: sorted(lat),
        recorded: sorted(recorded),
        ..Row::default()
    })
}

// ---------------------------------------------------------------------------
// report

#[derive(Default)]
struct Report {
    setup: String,
    rows: Vec<Row>,
}

impl Report {
    fn print(&self, args: &Args) {
        println!(
            "\n=== Replies queued → accepted by a local SMTP server ({} replies per phase, pool_max {}) ===",
            args.replies, args.pool
        );
        if !self.setup.is_empty() {
            println!("{}", self.setup);
        }
        println!(
            "{:<10} {:<18} {:>5} {:>5} {:>4} {:>7} | {:>7} {:>7} {:>7} {:>7} | {:>6} {:>6} | {:>6} {:>6} | {:>4} {:>4} {:>4} {:>4} {:>4} | target",
            "backend",
            "phase",
            "queue",
            "deliv",
            "fail",
            "sends/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "http50",
            "http99",
            "rec50",
            "rec99",
            "me%",
            "sink",
            "pg%",
            "busy",
            "oth"
        );
        for r in &self.rows {
            let cpu = r.cpu.map_or_else(
                || format!("{:>4} {:>4} {:>4} {:>4} {:>4}", "-", "-", "-", "-", "-"),
                |c| {
                    format!(
                        "{:>4.0} {:>4.0} {:>4.0} {:>4.0} {:>4.0}",
                        c.me, c.sink, c.pg, c.busy, c.other
                    )
                },
            );
            let verdict = match r.target {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "-",
            };
            println!(
                "{:<10} {:<18} {:>5} {:>5} {:>4} {:>7.1} | {:>7.1} {:>7.1} {:>7.1} {:>7.1} | {:>6.1} {:>6.1} | {:>6.0} {:>6.0} | {cpu} | {verdict}",
                r.backend,
                r.phase,
                r.queued,
                r.delivered,
                r.failed,
                r.rate,
                pct(&r.lat, 0.5),
                pct(&r.lat, 0.9),
                pct(&r.lat, 0.99),
                pct(&r.lat, 1.0),
                pct(&r.http, 0.5),
                pct(&r.http, 0.99),
                pct(&r.recorded, 0.5),
                pct(&r.recorded, 0.99),
            );
            if !r.note.is_empty() {
                println!("{:<10} {}", "", r.note);
            }
        }
        println!(
            "latency: queued (HTTP 202 / queue_draft returned) → the sink wrote the message (its 250 \
             follows); http: the send call; rec: queued_at → sent_at in the database (ms \
             resolution, after the 250 and the sent record); CPU: me = this process \
             (switchboard in-process + load generator) and sink/pg as % of one core, busy/oth = % of \
             all CPUs (oth: anything else on the machine)"
        );
        println!(
            "targets: paced p99 < {P99_TARGET_MS} ms with >= {RATE_TARGET} sends/s and every reply \
             delivered; burst: drain rate >= {RATE_TARGET} sends/s"
        );
    }
}
