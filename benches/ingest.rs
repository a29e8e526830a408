//! Mail ingestion against a real Dovecot (started by the test harness), on
//! PostgreSQL and SQLite. Prints figures and a table of targets; asserts nothing.
//! See benches/README.md.
//!
//! `cargo bench --bench ingest -- [backlog|push|memory|all] [--messages 5000]
//!  [--pushes 200] [--gap-ms 100] [--mailboxes 500] [--idle-secs 60] [--big-mb 30]
//!  [--backend both|pg|sqlite] [--seed 1]`
//!
//! - backlog: N varied messages appended into a fresh folder, then ingested by
//!   an in-process instance (`Running::start`) until `messages` (+ quarantine)
//!   holds N rows; beside a bare `UID FETCH 1:* BODY.PEEK[]` of the same folder
//!   by a raw client. Also prints where the worker's wall time went, from
//!   switchboard's own tracing events (batch events, sqlx statement timings).
//! - push: the worker idles on INBOX; messages are delivered over LMTP one at a
//!   time; delivery → task listed by `GET /api/v1/tasks?limit=1` (polled every
//!   5 ms), beside a raw IMAP client in IDLE on the same folder (delivery →
//!   `* n EXISTS`). Before the next delivery the bench waits until the raw
//!   client has been told of the worker's `\Seen` (Dovecot's 500 ms
//!   notification delay would otherwise already be running for the raw client
//!   only), then `--gap-ms`.
//! - memory: the `switchboard serve` binary as a child process: peak RSS
//!   (VmHWM) while ingesting one large message; RSS and CPU (utime + stime) of
//!   one worker holding many idle mailboxes (one Dovecot user each; Dovecot is
//!   restarted with process limits raised for that).
//!
//! PostgreSQL: $SWITCHBOARD_BENCH_PG_URL, $SWITCHBOARD_TEST_PG_URL or
//! postgres://postgres@127.0.0.1:5432/postgres (a `sbbench_<random>` database
//! per run, dropped afterwards). Switchboard's log: warnings only; set
//! SB_BENCH_LOG (a tracing filter, e.g. `switchboard=debug`) for more.
//! SB_BENCH_INGEST: more `[ingest]` settings for the backlog run (e.g.
//! `batch_size = 100`).
mod common;
#[path = "../tests/support/servers.rs"]
mod servers;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use common::{Backend, BenchDb, pct, pg_admin_url, redact};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use servers::{Dovecot, DovecotOptions, PASSWORD};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;
use switchboard::app::Running;
use switchboard::config::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const MIB: f64 = 1_048_576.0;
const MB: f64 = 1_000_000.0;
/// Backlog target (issue 12): switchboard's rate at least this share of the bare fetch.
const BACKLOG_RATIO_TARGET: f64 = 0.25;
/// Push target: switchboard's p99 at most this much above Dovecot's own.
const PUSH_P99_MARGIN_MS: f64 = 50.0;
/// How long one push probe may take before it counts as lost.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// arguments

/// The short name used in figures' labels.
fn short(b: Backend) -> &'static str {
    match b {
        Backend::Pg => "pg",
        Backend::Sqlite => "lite",
    }
}

struct Args {
    backlog: bool,
    push: bool,
    memory: bool,
    messages: usize,
    pushes: usize,
    gap_ms: u64,
    mailboxes: usize,
    idle_secs: u64,
    big_mb: usize,
    backends: Vec<Backend>,
    seed: u64,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut a = Args {
            backlog: false,
            push: false,
            memory: false,
            messages: 5000,
            pushes: 200,
            gap_ms: 100,
            mailboxes: 500,
            idle_secs: 60,
            big_mb: 30,
            backends: vec![Backend::Pg, Backend::Sqlite],
            seed: 1,
        };
        let mut any_part = false;
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
            let num = |s: String| s.replace('_', "");
            match key.as_str() {
                "backlog" => (a.backlog, any_part) = (true, true),
                "push" => (a.push, any_part) = (true, true),
                "memory" => (a.memory, any_part) = (true, true),
                "all" => {
                    (a.backlog, a.push, a.memory) = (true, true, true);
                    any_part = true;
                }
                "--messages" => a.messages = num(value("--messages")?).parse()?,
                "--pushes" => a.pushes = num(value("--pushes")?).parse()?,
                "--gap-ms" => a.gap_ms = value("--gap-ms")?.parse()?,
                "--mailboxes" => a.mailboxes = value("--mailboxes")?.parse()?,
                "--idle-secs" => a.idle_secs = value("--idle-secs")?.parse()?,
                "--big-mb" => a.big_mb = value("--big-mb")?.parse()?,
                "--seed" => a.seed = value("--seed")?.parse()?,
                "--backend" => {
                    a.backends = match value("--backend")?.as_str() {
                        "both" => vec![Backend::Pg, Backend::Sqlite],
                        "pg" | "postgres" | "postgresql" => vec![Backend::Pg],
                        "sqlite" | "lite" => vec![Backend::Sqlite],
                        other => bail!("--backend {other}: use both, pg or sqlite"),
                    }
                }
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                "-h" | "--help" => {
                    println!(
                        "cargo bench --bench ingest -- [backlog|push|memory|all] [--messages N] \
                         [--pushes N] [--gap-ms MS] [--mailboxes N] [--idle-secs S] [--big-mb MB] \
                         [--backend both|pg|sqlite] [--seed S]\n\
                         PostgreSQL: $SWITCHBOARD_BENCH_PG_URL, $SWITCHBOARD_TEST_PG_URL or \
                         postgres://postgres@127.0.0.1:5432/postgres; SB_BENCH_LOG: tracing filter \
                         for switchboard's log (default warn)"
                    );
                    std::process::exit(0);
                }
                other => eprintln!("ignoring argument {other}"),
            }
        }
        if !any_part {
            (a.backlog, a.push, a.memory) = (true, true, true);
        }
        if a.messages == 0 || a.pushes == 0 || a.mailboxes == 0 || a.idle_secs == 0 {
            bail!("--messages, --pushes, --mailboxes and --idle-secs must be positive");
        }
        if a.big_mb == 0 || a.big_mb > 900 {
            bail!("--big-mb must be between 1 and 900");
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
    // Switchboard's log (warnings by default) and, beside it, the profile:
    // statement timings and batch events, whatever SB_BENCH_LOG says.
    let filter = std::env::var("SB_BENCH_LOG").unwrap_or_else(|_| "warn,sqlx::query=error".into());
    {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target("sqlx::query", tracing::Level::DEBUG)
            .with_target("switchboard::ingest", tracing::Level::DEBUG);
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(tracing_subscriber::EnvFilter::new(filter)),
            )
            .with(ProfileLayer.with_filter(targets))
            .init();
    }
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
    // Whatever was measured is shown, even after an error.
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
    if !servers::available() {
        bail!("Dovecot is needed (run scripts/install-deps)");
    }
    let dovecot = start_dovecot(args).await?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "Dovecot on 127.0.0.1:{} (LMTP {}), {} ; {cpus} CPUs shared by Dovecot, the database, \
         switchboard and this program",
        dovecot.imap_port,
        dovecot.lmtp_port,
        dovecot.dir.path().display()
    );
    if args.backends.contains(&Backend::Pg) {
        println!("PostgreSQL at {}", redact(&pg_admin_url()));
    }
    if args.backlog {
        backlog(args, &dovecot, report).await?;
    }
    if args.push {
        for &b in &args.backends {
            let r = push(args, &dovecot, b).await?;
            report.push.push(r);
        }
    }
    if args.memory {
        for &b in &args.backends {
            let r = big_message(args, &dovecot, b).await?;
            report.big.push(r);
        }
        for &b in &args.backends {
            let r = idle_mailboxes(args, &dovecot, b).await?;
            report.idle.push(r);
        }
    }
    Ok(())
}

/// The harness's Dovecot, restarted with limits for many simultaneous
/// connections (one `imap` process each): the harness config keeps Dovecot's
/// defaults (100 processes per service, 1000 clients).
async fn start_dovecot(args: &Args) -> Result<Arc<Dovecot>> {
    let limit = args.mailboxes + 100;
    blocking(move || {
        let d = Dovecot::start(DovecotOptions::default()).context("start Dovecot")?;
        let mut conf = std::fs::read_to_string(d.conf_path())?;
        // Later sections of the same name are merged into the earlier ones.
        write!(
            conf,
            "default_process_limit = {limit}\n\
             default_client_limit = {}\n\
             service imap {{\n  process_limit = {limit}\n}}\n\
             service imap-login {{\n  process_limit = {limit}\n}}\n",
            limit * 4
        )?;
        std::fs::write(d.conf_path(), conf)?;
        d.restart();
        Ok(Arc::new(d))
    })
    .await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

// ---------------------------------------------------------------------------
// databases

impl BenchDb {
    /// A pool of its own (one connection) for counting.
    async fn counter(&self) -> Result<Counter> {
        Ok(match self.backend {
            Backend::Pg => Counter::Pg(
                PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&self.url)
                    .await?,
            ),
            Backend::Sqlite => Counter::Lite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect(&self.url)
                    .await?,
            ),
        })
    }

    /// Size of the database on disk (PostgreSQL: pg_database_size).
    async fn size_bytes(&self, c: &Counter) -> u64 {
        match c {
            Counter::Pg(_) => c
                .scalar("SELECT pg_database_size(current_database())")
                .await
                .unwrap_or(0) as u64,
            Counter::Lite(_) => std::fs::read_dir(self.dir.path())
                .map(|rd| {
                    rd.filter_map(|e| e.ok()?.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0),
        }
    }
}

enum Counter {
    Pg(PgPool),
    Lite(SqlitePool),
}

impl Counter {
    async fn scalar(&self, sql: &'static str) -> Result<i64> {
        Ok(match self {
            Counter::Pg(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await?,
            Counter::Lite(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await?,
        })
    }

    /// Messages stored plus mail quarantined: every fetched mail ends in one.
    async fn ingested(&self) -> Result<i64> {
        self.scalar("SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM quarantine)")
            .await
    }

    async fn close(self) {
        match self {
            Counter::Pg(p) => p.close().await,
            Counter::Lite(p) => p.close().await,
        }
    }
}

/// Polls `ingested()` every 50 ms until it reaches `n`; prints progress.
async fn wait_ingested(
    c: &Counter,
    n: i64,
    t0: Instant,
    timeout: Duration,
    label: &str,
) -> Result<Progress> {
    let mut p = Progress::default();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_print = Instant::now();
    loop {
        tick.tick().await;
        let got = c.ingested().await?;
        let at = t0.elapsed();
        if got > 0 && p.first.is_none() {
            p.first = Some(at);
        }
        p.samples.push((at, got));
        if got >= n {
            p.done = at;
            return Ok(p);
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            eprintln!("  {label}: {got} / {n} after {:.0} s", at.as_secs_f64());
        }
        if at > timeout {
            bail!("{label}: only {got} of {n} ingested after {timeout:?}");
        }
    }
}

#[derive(Default)]
struct Progress {
    first: Option<Duration>,
    done: Duration,
    samples: Vec<(Duration, i64)>,
}

impl Progress {
    /// When the count first reached `k`.
    fn reached(&self, k: i64) -> Option<Duration> {
        self.samples.iter().find(|(_, n)| *n >= k).map(|(t, _)| *t)
    }
}

// ---------------------------------------------------------------------------
// configuration

struct MailboxDef {
    id: String,
    user: String,
    folder: String,
}

fn config_text(
    db_url: &str,
    bind: &str,
    ingest: &str,
    mailboxes: &[MailboxDef],
    port: u16,
) -> String {
    let mut s = format!(
        r#"
[database]
url = "{db_url}"
max_connections = 8

[http]
bind = "{bind}"

[log]
level = "warn,sqlx::query=error"

[ingest]
{ingest}

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
    );
    for m in mailboxes {
        let _ = write!(
            s,
            r#"
[[mailboxes]]
id = "{}"
service = "support"
kind = "imap"
host = "127.0.0.1"
port = {port}
tls = "none"
username = "{}"
password = "{PASSWORD}"
folder = "{}"
"#,
            m.id, m.user, m.folder
        );
    }
    s
}

fn parse_config(text: &str) -> Result<Config> {
    Config::from_parts(text, Path::new("bench.toml"), &[]).map_err(|e| anyhow!("config: {e}"))
}

// ---------------------------------------------------------------------------
// test mail

const WORDS: &[&str] = &[
    "the",
    "order",
    "delivery",
    "invoice",
    "refund",
    "account",
    "please",
    "thank",
    "you",
    "help",
    "problem",
    "package",
    "arrived",
    "damaged",
    "payment",
    "card",
    "charged",
    "twice",
    "cancel",
    "subscription",
    "address",
    "change",
    "password",
    "reset",
    "login",
    "error",
    "message",
    "screen",
    "app",
    "phone",
    "support",
    "waiting",
    "since",
    "last",
    "week",
    "number",
    "reference",
    "customer",
    "service",
    "urgent",
    "question",
    "regarding",
    "product",
    "warranty",
    "repair",
    "return",
    "label",
    "shipping",
    "tracking",
    "status",
    "update",
    "and",
    "to",
    "of",
    "a",
    "is",
    "in",
    "for",
    "my",
    "it",
    "not",
    "with",
    "über",
    "café",
    "Grüße",
    "naïve",
    "déjà",
    "vu",
    "señor",
    "Ærø",
    "€",
    "straße",
    "garçon",
];
const FIRST: &[&str] = &[
    "Anna", "Ben", "Chloé", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kasia",
    "Luca", "Mia", "Noah", "Olga", "Pål", "Quentin", "Rosa", "Sven", "Tereza",
];
const LAST: &[&str] = &[
    "Martin", "Bernard", "Dubois", "Müller", "Rossi", "Novak", "Jensen", "Silva", "Nguyen",
    "Kowalski", "Horvat", "Berg", "García", "Schmidt", "Laurent",
];
const TOPICS: &[&str] = &[
    "Order not delivered",
    "Refund request",
    "Invoice question",
    "Cannot log in",
    "Damaged package",
    "Change of address",
    "Charged twice",
    "Cancel my subscription",
    "Warranty repair",
    "Tracking number missing",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// 2–100 KB text or HTML.
    Small,
    /// 100 KB–1 MB with base64 attachments.
    Medium,
    /// 1–6 MB with base64 attachments.
    Large,
}

fn words(rng: &mut StdRng, bytes: usize, out: &mut String) {
    let start = out.len();
    let mut line = 0;
    while out.len() - start < bytes {
        let w = WORDS[rng.random_range(0..WORDS.len())];
        out.push_str(w);
        line += w.len() + 1;
        if line > 72 {
            out.push_str("\r\n");
            line = 0;
            if rng.random_range(0..8) == 0 {
                out.push_str("\r\n");
            }
        } else {
            out.push(' ');
        }
    }
    out.push_str("\r\n");
}

fn html(rng: &mut StdRng, bytes: usize) -> String {
    let mut s = String::from(
        "<!DOCTYPE html>\r\n<html><head><meta charset=\"utf-8\"><style>p{font-family:Arial}</style></head><body>\r\n",
    );
    let start = s.len();
    while s.len() - start < bytes {
        s.push_str("<p>");
        let n = rng.random_range(200..1200);
        words(rng, n, &mut s);
        s.push_str("</p>\r\n");
        if rng.random_range(0..5) == 0 {
            s.push_str(
                "<div><b>Order</b> <a href=\"https://shop.example.net/o/1234\">#1234</a></div>\r\n",
            );
        }
    }
    s.push_str("</body></html>\r\n");
    s
}

/// Quoted-printable (soft line breaks at 76).
fn qp(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.split("\r\n") {
        let mut col = 0;
        for &b in line.as_bytes() {
            let enc = if b == b'=' || b >= 127 || (b < 32 && b != b'\t') {
                format!("={b:02X}")
            } else {
                (b as char).to_string()
            };
            if col + enc.len() > 75 {
                out.push_str("=\r\n");
                col = 0;
            }
            out.push_str(&enc);
            col += enc.len();
        }
        out.push_str("\r\n");
    }
    out
}

/// Base64 in 76-character lines.
fn b64_lines(data: &[u8]) -> String {
    let enc = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(enc.len() + enc.len() / 38 + 2);
    for chunk in enc.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> usize {
    (lo * (hi / lo).powf(rng.random::<f64>())) as usize
}

fn customer(k: usize) -> (String, String) {
    let c = (k * 7919) % 800;
    let first = FIRST[c % FIRST.len()];
    let last = LAST[(c / FIRST.len()) % LAST.len()];
    let addr = format!(
        "{}.{}{}@example.net",
        first.to_lowercase(),
        last.to_lowercase(),
        c
    );
    (format!("{first} {last}"), addr)
}

fn encoded_word(s: &str) -> String {
    format!(
        "=?UTF-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(s)
    )
}

/// Headers of a customer's mail (`extra` before the content headers).
fn headers(rng: &mut StdRng, run: &str, i: usize, subject: &str, extra: &str) -> String {
    let (name, addr) = customer(i);
    let subject = if rng.random_range(0..10) == 0 {
        encoded_word(&format!("{subject} – Grüße"))
    } else {
        subject.to_string()
    };
    let day = 1 + i % 28;
    format!(
        "Return-Path: <{addr}>\r\n\
         Received: from mail.example.net (mail.example.net [192.0.2.{}]) by mx.example.com with ESMTPS id {:016x}; Tue, {day} Nov 2026 08:{:02}:00 +0000\r\n\
         From: \"{name}\" <{addr}>\r\n\
         To: Support <support@example.com>\r\n\
         Subject: {subject}\r\n\
         Date: Tue, {day} Nov 2026 08:{:02}:00 +0000\r\n\
         Message-ID: <bench-{run}-{i}@example.net>\r\n\
         {extra}MIME-Version: 1.0\r\n",
        i % 250,
        rng.random::<u64>(),
        i % 60,
        i % 60,
    )
}

/// One varied customer mail of about `size` bytes.
fn build_message(rng: &mut StdRng, run: &str, i: usize, class: Class, size: usize) -> Vec<u8> {
    // One in ten answers an earlier mail (threading).
    let (subject, extra) = if i > 20 && rng.random_range(0..10) == 0 {
        let j = rng.random_range(0..i);
        (
            format!("Re: {} #{j}", TOPICS[j % TOPICS.len()]),
            format!(
                "In-Reply-To: <bench-{run}-{j}@example.net>\r\nReferences: <bench-{run}-{j}@example.net>\r\n"
            ),
        )
    } else {
        (format!("{} #{i}", TOPICS[i % TOPICS.len()]), String::new())
    };
    let mut m = headers(rng, run, i, &subject, &extra);
    let intro = format!("Hello,\r\n\r\nthis is mail {i} of run {run}.\r\n\r\n");
    let boundary = format!("----=_Part_{i}_{:08x}", rng.random::<u32>());
    let budget = size.saturating_sub(m.len() + 200).max(400);
    match class {
        Class::Small => match rng.random_range(0..100) {
            0..45 => {
                m.push_str("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
                m.push_str(&intro);
                words(rng, budget, &mut m);
            }
            45..80 => {
                let mut text = intro.clone();
                words(rng, budget * 2 / 5, &mut text);
                let h = html(rng, budget / 2);
                let _ = write!(
                    m,
                    "Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n\
                     --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\
                     --{boundary}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{h}\
                     --{boundary}--\r\n",
                    qp(&text)
                );
            }
            _ => {
                let h = html(rng, budget * 3 / 4);
                let _ = write!(
                    m,
                    "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
                    b64_lines(h.as_bytes())
                );
            }
        },
        Class::Medium | Class::Large => {
            let mut text = intro.clone();
            let text_len = rng.random_range(500..4000);
            words(rng, text_len, &mut text);
            let _ = write!(
                m,
                "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
                 --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}"
            );
            let encoded_budget = size.saturating_sub(m.len() + 300);
            let parts = if rng.random_range(0..3) == 0 { 2 } else { 1 };
            let kinds = [
                ("application/pdf", "invoice.pdf"),
                ("image/jpeg", "photo.jpg"),
                (
                    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                    "letter.docx",
                ),
            ];
            for p in 0..parts {
                let binary = encoded_budget / parts * 57 / 78;
                let mut data = vec![0u8; binary.max(64)];
                rng.fill_bytes(&mut data);
                let (ct, name) = kinds[(i + p) % kinds.len()];
                let _ = write!(
                    m,
                    "--{boundary}\r\nContent-Type: {ct}; name=\"{p}-{name}\"\r\nContent-Disposition: attachment; filename=\"{p}-{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
                    b64_lines(&data)
                );
            }
            let _ = write!(m, "--{boundary}--\r\n");
        }
    }
    m.into_bytes()
}

/// 80% small, 15% medium, 5% large; log-uniform sizes within each class.
fn pick_class(rng: &mut StdRng) -> (Class, usize) {
    match rng.random_range(0..100) {
        0..80 => (Class::Small, log_uniform(rng, 2_000.0, 100_000.0)),
        80..95 => (Class::Medium, log_uniform(rng, 100_000.0, 1_000_000.0)),
        _ => (Class::Large, log_uniform(rng, 1_000_000.0, 6_000_000.0)),
    }
}

/// A small plain mail with a given subject (push probes).
fn probe_message(run: &str, i: usize, subject: &str) -> Vec<u8> {
    let (name, addr) = customer(i);
    format!(
        "From: \"{name}\" <{addr}>\r\nTo: Support <support@example.com>\r\nSubject: {subject}\r\n\
         Date: Tue, 24 Nov 2026 08:00:00 +0000\r\nMessage-ID: <probe-{run}-{i}@example.net>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello,\r\nprobe {i} of run {run}. {}\r\n",
        "Lorem ipsum dolor sit amet. ".repeat(20 + i % 40)
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------
// a minimal raw IMAP client

struct RawImap {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    n: u32,
}

/// What a command returned: its untagged lines (literals left out), and the
/// number and total size of the literals.
#[derive(Default)]
struct Exchange {
    lines: Vec<String>,
    literals: u64,
    literal_bytes: u64,
}

/// `{N}` or `{N+}` at the end of a line (before CRLF).
fn literal_len(line: &[u8]) -> Option<u64> {
    let l = line
        .strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))?;
    let l = l.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    let digits = &l[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl RawImap {
    async fn login(port: u16, user: &str) -> Result<RawImap> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let mut c = RawImap {
            r: BufReader::with_capacity(256 * 1024, r),
            w,
            n: 0,
        };
        let greeting = c.line().await?;
        if !greeting.starts_with(b"* OK") {
            bail!("IMAP greeting: {}", String::from_utf8_lossy(&greeting));
        }
        c.run(&format!("LOGIN \"{user}\" \"{PASSWORD}\"")).await?;
        Ok(c)
    }

    async fn line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::with_capacity(128);
        if self.r.read_until(b'\n', &mut line).await? == 0 {
            bail!("IMAP: connection closed");
        }
        Ok(line)
    }

    async fn send(&mut self, cmd: &str) -> Result<String> {
        self.n += 1;
        let tag = format!("r{}", self.n);
        self.w
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .await?;
        self.w.flush().await?;
        Ok(tag)
    }

    /// Sends a command and reads up to its tagged completion, which must be OK.
    /// Literals are counted and discarded.
    async fn run(&mut self, cmd: &str) -> Result<Exchange> {
        let tag = self.send(cmd).await?;
        let prefix = format!("{tag} ");
        let mut ex = Exchange::default();
        loop {
            let line = self.line().await?;
            if line.starts_with(prefix.as_bytes()) {
                if line[prefix.len()..].starts_with(b"OK") {
                    return Ok(ex);
                }
                let shown = if cmd.starts_with("LOGIN") {
                    "LOGIN"
                } else {
                    cmd
                };
                bail!(
                    "IMAP {shown}: {}",
                    String::from_utf8_lossy(&line).trim_end()
                );
            }
            if let Some(n) = literal_len(&line) {
                let copied =
                    tokio::io::copy(&mut (&mut self.r).take(n), &mut tokio::io::sink()).await?;
                if copied != n {
                    bail!("IMAP: connection closed inside a literal");
                }
                ex.literals += 1;
                ex.literal_bytes += n;
            }
            ex.lines.push(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

/// `* n FETCH (... \Seen ...)` → n: a flag update the worker caused.
fn seen_update(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("* ")?;
    let (n, what) = rest.split_once(' ')?;
    (what.to_ascii_uppercase().starts_with("FETCH") && what.contains("\\Seen"))
        .then(|| n.parse().ok())?
}

/// What the raw IDLE client heard, and when.
enum Heard {
    Exists(u32, Instant),
    Seen(u32),
}

/// `* n EXISTS` → n.
fn exists_count(line: &str) -> Option<u32> {
    let rest = line.strip_prefix("* ")?;
    let (n, what) = rest.trim_end().split_once(' ')?;
    what.eq_ignore_ascii_case("EXISTS")
        .then(|| n.parse().ok())?
}

/// Bare `UID FETCH 1:* BODY.PEEK[]` of a folder: connect to tagged OK.
async fn bare_fetch(port: u16, user: &str, folder: &str) -> Result<Rate> {
    let t0 = Instant::now();
    let mut c = RawImap::login(port, user).await?;
    c.run(&format!("EXAMINE \"{folder}\"")).await?;
    let ex = c.run("UID FETCH 1:* BODY.PEEK[]").await?;
    let secs = t0.elapsed().as_secs_f64();
    let _ = c.run("LOGOUT").await;
    Ok(Rate {
        messages: ex.literals,
        bytes: ex.literal_bytes,
        secs,
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    messages: u64,
    bytes: u64,
    secs: f64,
}

impl Rate {
    fn msg_s(&self) -> f64 {
        self.messages as f64 / self.secs.max(1e-9)
    }
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / MB / self.secs.max(1e-9)
    }
}

// ---------------------------------------------------------------------------
// /proc

/// utime + stime (clock ticks) of a process.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of all processes, grouped: this process, PostgreSQL, Dovecot's
/// imap processes. (Processes that exit between two readings drop out.)
fn cpu_groups() -> HashMap<&'static str, u64> {
    let me = std::process::id();
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let comm = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map(|(c, _)| c)
            .unwrap_or("");
        let group = if pid == me {
            "bench+switchboard"
        } else if comm.starts_with("postgres") {
            "postgres (all processes)"
        } else if comm == "imap" {
            "dovecot imap"
        } else {
            continue;
        };
        if let Some(t) = cpu_ticks(pid) {
            *out.entry(group).or_default() += t;
        }
    }
    out
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn cpu_delta_line(
    before: &HashMap<&'static str, u64>,
    after: &HashMap<&'static str, u64>,
    wall: f64,
) -> String {
    let tck = clk_tck();
    let mut parts = Vec::new();
    for g in [
        "bench+switchboard",
        "postgres backends of this database",
        "postgres (all processes)",
        "dovecot imap",
    ] {
        let d = after
            .get(g)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(g).copied().unwrap_or(0));
        if d > 0 {
            parts.push(format!(
                "{g} {:.1} s ({:.0}%)",
                d as f64 / tck,
                d as f64 / tck / wall * 100.0
            ));
        }
    }
    format!("CPU over {wall:.1} s wall: {}", parts.join(", "))
}

#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
}

fn proc_mem(pid: u32) -> Option<Mem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some(Mem {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
        threads: field("Threads:").unwrap_or(0),
    })
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

// ---------------------------------------------------------------------------
// the server as a child process

struct Server {
    child: Option<std::process::Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn spawn(config: &str, port: u16) -> Result<Server> {
        let dir = tempfile::Builder::new().prefix("sbbench-conf-").tempdir()?;
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, config)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, _) in std::env::vars() {
            if k.starts_with("SWITCHBOARD_") {
                cmd.env_remove(k);
            }
        }
        if let Ok(f) = std::env::var("SB_BENCH_LOG") {
            cmd.env("RUST_LOG", f);
        }
        let child = cmd.spawn().context("start the switchboard binary")?;
        Ok(Server {
            child: Some(child),
            port,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("switchboard exited at start: {status}");
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("switchboard not ready after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (graceful: leases released, IMAP logged out), SIGKILL after 20 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    servers::free_port()
}

/// Waits until `n` mailboxes are idling (IDLE issued).
async fn wait_idle(c: &Counter, n: i64, timeout: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let idle = c
            .scalar("SELECT count(*) FROM mailboxes WHERE status = 'idle'")
            .await?;
        if idle >= n {
            return Ok(t0.elapsed());
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            last_print = Instant::now();
            let errors = c
                .scalar("SELECT CAST(COALESCE(SUM(errors_total), 0) AS BIGINT) FROM mailboxes")
                .await
                .unwrap_or(-1);
            eprintln!(
                "  {idle} / {n} mailboxes idle after {:.0} s ({errors} errors)",
                t0.elapsed().as_secs_f64()
            );
        }
        if t0.elapsed() > timeout {
            bail!("only {idle} of {n} mailboxes idle after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// profile: where an in-process run spends its time, from switchboard's own
// tracing events (sqlx's per-statement timings) and its stage counters

/// Statement summary → (count, total seconds, max seconds).
type SqlTimes = HashMap<String, (u64, f64, f64)>;

#[derive(Default)]
struct Profile {
    sql: SqlTimes,
}

static PROFILE: std::sync::Mutex<Option<Profile>> = std::sync::Mutex::new(None);

fn profile_start() {
    *PROFILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Profile::default());
}

fn profile_take() -> Profile {
    PROFILE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default()
}

struct ProfileLayer;

#[derive(Default)]
struct Fields {
    message: String,
    summary: String,
    elapsed: Option<f64>,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "summary" => self.summary = value.to_string(),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed = Some(value);
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "summary" => self.summary = format!("{value:?}").trim_matches('"').to_string(),
            "message" => self.message = format!("{value:?}"),
            "elapsed_secs" => self.elapsed = format!("{value:?}").parse().ok(),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ProfileLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut guard = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = guard.as_mut() else { return };
        let mut f = Fields::default();
        event.record(&mut f);
        if event.metadata().target().starts_with("sqlx") {
            // This program's own counting is not switchboard's work.
            if let Some(e) = f.elapsed
                && !f.summary.starts_with("SELECT (SELECT count(*)")
            {
                let key: String = f.summary.chars().take(48).collect();
                let v = p.sql.entry(key).or_default();
                v.0 += 1;
                v.1 += e;
                v.2 = v.2.max(e);
            }
        }
    }
}

/// The worker's `switchboard_ingest_stage_seconds_total` by stage, from `/metrics`.
async fn stage_seconds(base: &str) -> Vec<(String, f64)> {
    let text = match reqwest::get(format!("{base}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut stages = Vec::new();
    for stage in ["fetch", "prepare", "sources", "commit", "wait", "after"] {
        let key = format!("switchboard_ingest_stage_seconds_total{{stage=\"{stage}\"}} ");
        let secs = text
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        stages.push((stage.to_string(), secs));
    }
    stages
}

impl Profile {
    /// Where the time went: the worker's own stage counters
    /// (`switchboard_ingest_stage_seconds_total`; stages overlap, the commit
    /// of a batch runs while the next is fetched and prepared) and the SQL
    /// statements by total time.
    fn report(&self, wall: f64, stages: &[(String, f64)]) -> String {
        let sql_total: f64 = self.sql.values().map(|v| v.1).sum();
        let pcent = |x: f64| x / wall.max(1e-9) * 100.0;
        let stages: Vec<String> = stages
            .iter()
            .map(|(stage, secs)| format!("{stage} {secs:.1} s ({:.0}%)", pcent(*secs)))
            .collect();
        let mut s = format!(
            "where the worker's time went (its stage counters, overlapping): {}; {:.1} s in SQL statements:",
            stages.join(", "),
            sql_total
        );
        let mut rows: Vec<_> = self.sql.iter().collect();
        rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        for (k, (n, total, max)) in rows.into_iter().take(7) {
            let _ = write!(
                s,
                "\n    {total:7.2} s ({:3.0}%) {n:6}× max {:7.1} ms  {k}",
                pcent(*total),
                max * 1000.0
            );
        }
        s
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// 1. backlog

struct BacklogRun {
    backend: Backend,
    rate: Rate,
    startup: Duration,
    first: Option<Duration>,
    /// Rate between 10% and 90% of the backlog (steady state).
    steady_msg_s: f64,
    quarantined: i64,
    tasks: i64,
    db_mb: f64,
    cpu: String,
}

struct Corpus {
    messages: usize,
    bytes: u64,
    by_class: [(usize, u64); 3],
    largest: usize,
    /// `parse_message` + `classify` over the corpus, one thread.
    parse: Duration,
}

async fn backlog(args: &Args, d: &Arc<Dovecot>, report: &mut Report) -> Result<()> {
    let user = "backlog";
    let folder = "Backlog";
    let n = args.messages;
    println!("\n== 1. backlog: {n} messages appended to {user}/{folder} ==");
    let t = Instant::now();
    let (seed, dd) = (args.seed, d.clone());
    let corpus = blocking(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let run = format!("{:08x}", rand::rng().random::<u32>());
        let mut corpus = Corpus {
            messages: 0,
            bytes: 0,
            by_class: [(0, 0); 3],
            largest: 0,
            parse: Duration::ZERO,
        };
        let limits = switchboard::mail::ParseLimits {
            max_message_bytes: 64 << 20,
        };
        let mut chunk: Vec<Vec<u8>> = Vec::new();
        let mut chunk_bytes = 0;
        let mut last_print = std::time::Instant::now();
        for i in 0..n {
            let (class, size) = pick_class(&mut rng);
            let m = build_message(&mut rng, &run, i, class, size);
            let tp = std::time::Instant::now();
            if let Ok(parsed) = switchboard::mail::parse_message(&m, &limits) {
                std::hint::black_box(switchboard::mail::classify(&parsed, &m));
            }
            corpus.parse += tp.elapsed();
            let k = class as usize;
            corpus.by_class[k].0 += 1;
            corpus.by_class[k].1 += m.len() as u64;
            corpus.bytes += m.len() as u64;
            corpus.messages += 1;
            corpus.largest = corpus.largest.max(m.len());
            chunk_bytes += m.len();
            chunk.push(m);
            if chunk.len() == 100 || chunk_bytes > 64 << 20 || i + 1 == n {
                dd.append_many(user, folder, &chunk);
                chunk.clear();
                chunk_bytes = 0;
            }
            if last_print.elapsed() > Duration::from_secs(10) {
                last_print = std::time::Instant::now();
                eprintln!("  appended {} / {n}", i + 1);
            }
        }
        Ok(corpus)
    })
    .await?;
    let avg = corpus.bytes as f64 / corpus.messages as f64;
    let mut sizes = String::new();
    for (k, name) in [
        "2–100 KB text/HTML",
        "100 KB–1 MB + attachments",
        "1–6 MB + attachments",
    ]
    .iter()
    .enumerate()
    {
        let (c, b) = corpus.by_class[k];
        let _ = write!(sizes, "{c} × {name} ({:.0} MB); ", b as f64 / MB);
    }
    let corpus_line = format!(
        "corpus: {} messages, {:.1} MB (mean {:.0} KB, largest {:.1} MB): {sizes}generated and appended in {:.0} s",
        corpus.messages,
        corpus.bytes as f64 / MB,
        avg / 1000.0,
        corpus.largest as f64 / MB,
        t.elapsed().as_secs_f64()
    );
    println!("{corpus_line}");
    let parse_secs = corpus.parse.as_secs_f64();
    let parse_line = format!(
        "parse_message + classify alone, one thread: {parse_secs:.1} s for the corpus = {:.0} msg/s, {:.0} MB/s",
        corpus.messages as f64 / parse_secs.max(1e-9),
        corpus.bytes as f64 / MB / parse_secs.max(1e-9)
    );
    println!("{parse_line}");
    report.corpus = Some(format!("{corpus_line}\n{parse_line}"));

    let bare1 = bare_fetch(d.imap_port, user, folder).await?;
    println!(
        "bare UID FETCH 1:* BODY.PEEK[] (1): {} messages, {:.1} MB in {:.2} s = {:.0} msg/s, {:.0} MB/s",
        bare1.messages,
        bare1.bytes as f64 / MB,
        bare1.secs,
        bare1.msg_s(),
        bare1.mb_s()
    );
    if bare1.messages != n as u64 {
        bail!("the folder holds {} messages, not {n}", bare1.messages);
    }
    for &backend in &args.backends {
        let r = backlog_run(d, backend, user, folder, n, corpus.bytes).await?;
        report.backlog.push(r);
    }
    let bare2 = bare_fetch(d.imap_port, user, folder).await?;
    println!(
        "bare UID FETCH 1:* BODY.PEEK[] (2): {} messages, {:.1} MB in {:.2} s = {:.0} msg/s, {:.0} MB/s",
        bare2.messages,
        bare2.bytes as f64 / MB,
        bare2.secs,
        bare2.msg_s(),
        bare2.mb_s()
    );
    // The faster of the two is the reference.
    report.bare = Some(if bare2.secs < bare1.secs {
        bare2
    } else {
        bare1
    });
    Ok(())
}

async fn backlog_run(
    d: &Dovecot,
    backend: Backend,
    user: &str,
    folder: &str,
    n: usize,
    bytes: u64,
) -> Result<BacklogRun> {
    println!("-- {}: ingesting the backlog --", backend.name());
    let db = BenchDb::create(backend).await?;
    // SB_BENCH_INGEST: more `[ingest]` settings for the backlog (e.g.
    // `batch_size = 100`), to compare them with the defaults.
    let extra = std::env::var("SB_BENCH_INGEST").unwrap_or_default();
    let text = config_text(
        &db.url,
        "127.0.0.1:0",
        &format!("max_message_bytes = {}\n{extra}", 16 << 20),
        &[MailboxDef {
            id: "backlog".into(),
            user: user.into(),
            folder: folder.into(),
        }],
        d.imap_port,
    );
    let config = parse_config(&text)?;
    let cpu0 = cpu_groups();
    let load0 = loadavg();
    profile_start();
    let t0 = Instant::now();
    let running = Running::start(&config).await?;
    let startup = t0.elapsed();
    let counter = db.counter().await?;
    let progress = wait_ingested(
        &counter,
        n as i64,
        t0,
        Duration::from_secs(3600),
        backend.name(),
    )
    .await;
    let mut cpu1 = cpu_groups();
    let profile = profile_take();
    let stages = stage_seconds(&running.url()).await;
    let load1 = loadavg();
    // The PostgreSQL backends serving this database (they started with the run).
    if let Counter::Pg(pool) = &counter {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        let ticks = pids.iter().filter_map(|p| cpu_ticks(*p as u32)).sum();
        cpu1.insert("postgres backends of this database", ticks);
    }
    let progress = match progress {
        Ok(p) => p,
        Err(e) => {
            let _ = running.stop().await;
            return Err(e);
        }
    };
    let secs = progress.done.as_secs_f64();
    let cpu = format!(
        "{}; load average {load0} → {load1}\n  {}",
        cpu_delta_line(&cpu0, &cpu1, secs),
        profile.report(secs, &stages)
    );
    let (lo, hi) = ((n as i64) / 10, (n as i64) * 9 / 10);
    let steady = match (progress.reached(lo.max(1)), progress.reached(hi.max(1))) {
        (Some(a), Some(b)) if b > a => (hi - lo) as f64 / (b - a).as_secs_f64(),
        _ => f64::NAN,
    };
    let quarantined = counter.scalar("SELECT count(*) FROM quarantine").await?;
    let tasks = counter.scalar("SELECT count(*) FROM tasks").await?;
    let db_mb = db.size_bytes(&counter).await as f64 / MB;
    counter.close().await;
    running.stop().await?;
    let rate = Rate {
        messages: n as u64,
        bytes,
        secs,
    };
    println!(
        "{}: {n} messages in {secs:.1} s = {:.0} msg/s, {:.1} MB/s (started in {:.2} s, first message at {:.2} s, \
         steady 10–90%: {steady:.0} msg/s); {tasks} tasks, {quarantined} quarantined; database {db_mb:.0} MB\n  {cpu}",
        backend.name(),
        rate.msg_s(),
        rate.mb_s(),
        startup.as_secs_f64(),
        progress.first.map_or(f64::NAN, |f| f.as_secs_f64()),
    );
    Ok(BacklogRun {
        backend,
        rate,
        startup,
        first: progress.first,
        steady_msg_s: steady,
        quarantined,
        tasks,
        db_mb,
        cpu,
    })
}

// ---------------------------------------------------------------------------
// 2. push latency

struct PushRun {
    backend: Backend,
    sent: usize,
    /// delivery → task listed by the API, ms (sorted); lost probes left out.
    api_ms: Vec<f64>,
    /// delivery → `* n EXISTS` on the raw IDLE client, ms (sorted).
    raw_ms: Vec<f64>,
    /// Per probe, API minus raw, ms (sorted).
    diff_ms: Vec<f64>,
    lost_api: usize,
    lost_raw: usize,
    lmtp_ms: Vec<f64>,
}

fn sort(v: &mut [f64]) {
    v.sort_by(|a, b| a.total_cmp(b));
}

async fn push(args: &Args, d: &Arc<Dovecot>, backend: Backend) -> Result<PushRun> {
    let user = format!("push{}", short(backend));
    println!(
        "\n== 2. push latency, {}: {} LMTP deliveries to {user}/INBOX, {} ms apart ==",
        backend.name(),
        args.pushes,
        args.gap_ms
    );
    let db = BenchDb::create(backend).await?;
    let text = config_text(
        &db.url,
        "127.0.0.1:0",
        &format!("max_message_bytes = {}", 16 << 20),
        &[MailboxDef {
            id: "push".into(),
            user: user.clone(),
            folder: "INBOX".into(),
        }],
        d.imap_port,
    );
    let config = parse_config(&text)?;
    let running = Running::start(&config).await?;
    let result = push_probes(args, d, &db, &running, &user, backend).await;
    running.stop().await?;
    result
}

async fn push_probes(
    args: &Args,
    d: &Arc<Dovecot>,
    db: &BenchDb,
    running: &Running,
    user: &str,
    backend: Backend,
) -> Result<PushRun> {
    let counter = db.counter().await?;
    wait_idle(&counter, 1, Duration::from_secs(60)).await?;
    counter.close().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let tasks_url = format!("{}/api/v1/tasks?limit=1", running.url());

    // Dovecot's own announcement, on a raw connection idling on the same folder.
    let mut raw = RawImap::login(d.imap_port, user).await?;
    let sel = raw.run("SELECT INBOX").await?;
    let mut exists: u32 = sel
        .lines
        .iter()
        .filter_map(|l| exists_count(l))
        .max()
        .unwrap_or(0);
    let tag = raw.send("IDLE").await?;
    loop {
        let l = raw.line().await?;
        if l.starts_with(b"+") {
            break;
        }
        if l.starts_with(format!("{tag} ").as_bytes()) {
            bail!("IDLE refused: {}", String::from_utf8_lossy(&l));
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Heard>();
    let reader = tokio::spawn(async move {
        loop {
            let Ok(l) = raw.line().await else { return };
            let at = Instant::now();
            let l = String::from_utf8_lossy(&l);
            let heard = if let Some(n) = exists_count(&l) {
                Heard::Exists(n, at)
            } else if let Some(n) = seen_update(&l) {
                Heard::Seen(n)
            } else {
                continue;
            };
            if tx.send(heard).is_err() {
                return;
            }
        }
    });
    // Highest sequence number the raw client was told is \Seen.
    let mut seen_max = 0u32;

    let run = format!("{:06x}", rand::rng().random::<u32>() & 0xff_ffff);
    let warmup = 3;
    let mut out = PushRun {
        backend,
        sent: 0,
        api_ms: Vec::new(),
        raw_ms: Vec::new(),
        diff_ms: Vec::new(),
        lost_api: 0,
        lost_raw: 0,
        lmtp_ms: Vec::new(),
    };
    let t_all = Instant::now();
    let load0 = loadavg();
    for i in 0..warmup + args.pushes {
        let subject = format!("Push probe {i} of {run}");
        let msg = probe_message(&run, i, &subject);
        let (dd, u) = (d.clone(), user.to_string());
        let t_send = Instant::now();
        blocking(move || Ok(dd.deliver_lmtp(&u, &msg)?)).await?;
        // Delivered: Dovecot has answered 250 to the DATA (and QUIT).
        let t0 = Instant::now();
        exists += 1;
        let want = exists;
        let api = async {
            loop {
                if let Ok(resp) = http.get(&tasks_url).bearer_auth(ADMIN_TOKEN).send().await
                    && let Ok(body) = resp.json::<Value>().await
                    && body["items"][0]["subject"].as_str() == Some(subject.as_str())
                {
                    return Some(Instant::now());
                }
                if t0.elapsed() > PUSH_TIMEOUT {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let dovecot = async {
            loop {
                match tokio::time::timeout_at(t0 + PUSH_TIMEOUT, rx.recv()).await {
                    Ok(Some(Heard::Exists(n, at))) if n >= want => return Some(at),
                    Ok(Some(Heard::Seen(n))) => seen_max = seen_max.max(n),
                    Ok(Some(_)) => {}
                    _ => return None,
                }
            }
        };
        let (a, r) = tokio::join!(api, dovecot);
        // Quiet before the next probe: the worker's \Seen on this message
        // starts Dovecot's 500 ms notification delay for the raw client too;
        // a delivery inside that window would be announced to the raw client
        // early (a timer already running) and not to the worker (whose new
        // IDLE starts a fresh one). Wait until that update went out.
        let quiet = Instant::now() + Duration::from_secs(2);
        while seen_max < want {
            match tokio::time::timeout_at(quiet, rx.recv()).await {
                Ok(Some(Heard::Seen(n))) => seen_max = seen_max.max(n),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
        if i < warmup {
            continue;
        }
        out.sent += 1;
        out.lmtp_ms
            .push(t0.duration_since(t_send).as_secs_f64() * 1000.0);
        let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1000.0;
        match a {
            Some(t) => out.api_ms.push(ms(t)),
            None => out.lost_api += 1,
        }
        match r {
            Some(t) => out.raw_ms.push(ms(t)),
            None => out.lost_raw += 1,
        }
        if let (Some(a), Some(r)) = (a, r) {
            out.diff_ms.push(ms(a) - ms(r));
        }
        if out.sent.is_multiple_of(50) {
            eprintln!("  {} / {} probes", out.sent, args.pushes);
        }
    }
    reader.abort();
    sort(&mut out.api_ms);
    sort(&mut out.raw_ms);
    sort(&mut out.diff_ms);
    sort(&mut out.lmtp_ms);
    println!(
        "{} probes in {:.0} s, load average {load0} → {} (LMTP delivery itself: p50 {:.1} ms, p99 {:.1} ms)",
        out.sent,
        t_all.elapsed().as_secs_f64(),
        loadavg(),
        pct(&out.lmtp_ms, 0.5),
        pct(&out.lmtp_ms, 0.99)
    );
    for (name, v, lost) in [
        ("task listed by the API", &out.api_ms, out.lost_api),
        ("raw IDLE: * n EXISTS  ", &out.raw_ms, out.lost_raw),
    ] {
        println!(
            "  delivery → {name}: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, min {:.1} ms; {lost} lost",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 1.0),
            pct(v, 0.0),
        );
    }
    println!(
        "  per probe, API − raw: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&out.diff_ms, 0.5),
        pct(&out.diff_ms, 0.9),
        pct(&out.diff_ms, 0.99),
        pct(&out.diff_ms, 1.0)
    );
    Ok(out)
}

// ---------------------------------------------------------------------------
// 3. memory

struct BigRun {
    backend: Backend,
    size: usize,
    before: Mem,
    after: Mem,
    settled: Mem,
    secs: f64,
    stored: bool,
}

async fn big_message(args: &Args, d: &Arc<Dovecot>, backend: Backend) -> Result<BigRun> {
    let user = format!("big{}", short(backend));
    let target = args.big_mb << 20;
    println!(
        "\n== 3a. memory, {}: one {} MiB message (child process, max_message_bytes 64 MiB); load average {} ==",
        backend.name(),
        args.big_mb,
        loadavg()
    );
    let db = BenchDb::create(backend).await?;
    let port = free_port();
    let text = config_text(
        &db.url,
        &format!("127.0.0.1:{port}"),
        &format!(
            "max_message_bytes = {}\nbatch_bytes = {}",
            64 << 20,
            64 << 20
        ),
        &[MailboxDef {
            id: "big".into(),
            user: user.clone(),
            folder: "INBOX".into(),
        }],
        d.imap_port,
    );
    parse_config(&text)?;
    let http = reqwest::Client::new();
    let mut server = Server::spawn(&text, port)?;
    server.wait_ready(&http).await?;
    let counter = db.counter().await?;
    wait_idle(&counter, 1, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = server.pid();
    let before = proc_mem(pid).ok_or_else(|| anyhow!("no /proc/{pid}/status"))?;
    let seed = args.seed;
    let msg = blocking(move || {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xb16);
        Ok(build_message(&mut rng, "big", 7, Class::Large, target))
    })
    .await?;
    let size = msg.len();
    let (dd, u) = (d.clone(), user.clone());
    let t0 = Instant::now();
    blocking(move || {
        dd.append(&u, "INBOX", &msg);
        Ok(())
    })
    .await?;
    // HWM is sampled all along, in case the process dies.
    wait_ingested(&counter, 1, t0, Duration::from_secs(300), "big message").await?;
    let secs = t0.elapsed().as_secs_f64();
    let after = proc_mem(pid).ok_or_else(|| anyhow!("no /proc/{pid}/status"))?;
    let stored = counter.scalar("SELECT count(*) FROM messages").await? == 1;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = proc_mem(pid).unwrap_or_default();
    counter.close().await;
    server.stop();
    println!(
        "{} message of {:.1} MiB {} in {secs:.2} s (append to stored); RSS before {:.1} MiB, peak (VmHWM) {:.1} MiB \
         (+{:.1} MiB = {:.1}× the message), RSS 3 s later {:.1} MiB",
        backend.name(),
        size as f64 / MIB,
        if stored { "stored" } else { "QUARANTINED" },
        mib(before.rss_kb),
        mib(after.hwm_kb),
        mib(after.hwm_kb.saturating_sub(before.rss_kb)),
        (after.hwm_kb.saturating_sub(before.rss_kb)) as f64 * 1024.0 / size as f64,
        mib(settled.rss_kb),
    );
    Ok(BigRun {
        backend,
        size,
        before,
        after,
        settled,
        secs,
        stored,
    })
}

struct IdleRun {
    backend: Backend,
    mailboxes: usize,
    ready_secs: f64,
    rss_start: Mem,
    rss_end: Mem,
    cpu_pct: f64,
    fds: usize,
    errors: i64,
    secs: f64,
}

async fn idle_mailboxes(args: &Args, d: &Arc<Dovecot>, backend: Backend) -> Result<IdleRun> {
    let n = args.mailboxes;
    println!(
        "\n== 3b. {}: one worker holding {n} idle mailboxes ({n} Dovecot users), {} s; load average {} ==",
        backend.name(),
        args.idle_secs,
        loadavg()
    );
    let db = BenchDb::create(backend).await?;
    let port = free_port();
    let defs: Vec<MailboxDef> = (0..n)
        .map(|i| MailboxDef {
            id: format!("idle-{i:04}"),
            user: format!("idle{}{i:04}", short(backend)),
            folder: "INBOX".into(),
        })
        .collect();
    let text = config_text(
        &db.url,
        &format!("127.0.0.1:{port}"),
        &format!("max_message_bytes = {}", 16 << 20),
        &defs,
        d.imap_port,
    );
    parse_config(&text)?;
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let mut server = Server::spawn(&text, port)?;
    server.wait_ready(&http).await?;
    let counter = db.counter().await?;
    wait_idle(&counter, n as i64, Duration::from_secs(600)).await?;
    let ready_secs = t0.elapsed().as_secs_f64();
    println!("all {n} mailboxes idle {ready_secs:.1} s after start; settling 5 s");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = server.pid();
    let tck = clk_tck();
    let rss_start = proc_mem(pid).ok_or_else(|| anyhow!("no /proc/{pid}/status"))?;
    let c0 = cpu_ticks(pid).unwrap_or(0);
    let w0 = Instant::now();
    let mut samples = Vec::new();
    let step = Duration::from_secs(10.min(args.idle_secs));
    let (mut last_c, mut last_t) = (c0, w0);
    while w0.elapsed() < Duration::from_secs(args.idle_secs) {
        let left = Duration::from_secs(args.idle_secs).saturating_sub(w0.elapsed());
        tokio::time::sleep(step.min(left)).await;
        let c = cpu_ticks(pid).unwrap_or(last_c);
        let m = proc_mem(pid).unwrap_or_default();
        let dt = last_t.elapsed().as_secs_f64();
        let pct = (c - last_c) as f64 / tck / dt * 100.0;
        samples.push((w0.elapsed().as_secs_f64(), mib(m.rss_kb), pct));
        (last_c, last_t) = (c, Instant::now());
    }
    let secs = w0.elapsed().as_secs_f64();
    let c1 = cpu_ticks(pid).unwrap_or(c0);
    let rss_end = proc_mem(pid).unwrap_or_default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |r| r.count());
    let errors = counter
        .scalar("SELECT CAST(COALESCE(SUM(errors_total), 0) AS BIGINT) FROM mailboxes")
        .await?;
    let still_idle = counter
        .scalar("SELECT count(*) FROM mailboxes WHERE status = 'idle'")
        .await?;
    counter.close().await;
    server.stop();
    let cpu_pct = (c1 - c0) as f64 / tck / secs * 100.0;
    for (t, rss, pct) in &samples {
        println!(
            "  t = {t:5.1} s: RSS {rss:.1} MiB, CPU {pct:.2}% of one core over the last period"
        );
    }
    println!(
        "{}: RSS {:.1} → {:.1} MiB (peak {:.1} MiB), CPU {:.2}% of one core over {secs:.0} s \
         ({:.2} s user+sys), {} threads, {fds} open fds, {still_idle} idle at the end, {errors} mailbox errors",
        backend.name(),
        mib(rss_start.rss_kb),
        mib(rss_end.rss_kb),
        mib(rss_end.hwm_kb),
        cpu_pct,
        (c1 - c0) as f64 / tck,
        rss_end.threads
    );
    Ok(IdleRun {
        backend,
        mailboxes: n,
        ready_secs,
        rss_start,
        rss_end,
        cpu_pct,
        fds,
        errors,
        secs,
    })
}

// ---------------------------------------------------------------------------
// report

#[derive(Default)]
struct Report {
    corpus: Option<String>,
    bare: Option<Rate>,
    backlog: Vec<BacklogRun>,
    push: Vec<PushRun>,
    big: Vec<BigRun>,
    idle: Vec<IdleRun>,
}

fn mark(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

impl Report {
    fn print(&self, args: &Args) {
        if self.bare.is_none()
            && self.push.is_empty()
            && self.big.is_empty()
            && self.idle.is_empty()
        {
            return;
        }
        println!(
            "\n=== switchboard ingestion against Dovecot {} ({} CPUs; load average now {}) ===",
            dovecot_version(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg()
        );
        let row = |what: &str, figure: &str, target: &str, verdict: &str| {
            println!("{what:<34} {figure:<58} {target:<30} {verdict}");
        };
        row("measure", "figure", "target", "result");
        if let Some(c) = &self.corpus {
            println!("{c}");
        }
        if let Some(bare) = self.bare {
            row(
                "backlog: bare UID FETCH 1:*",
                &format!(
                    "{:.0} msg/s, {:.0} MB/s ({:.2} s)",
                    bare.msg_s(),
                    bare.mb_s(),
                    bare.secs
                ),
                "reference",
                "",
            );
            for r in &self.backlog {
                let ratio = r.rate.msg_s() / bare.msg_s();
                row(
                    &format!("backlog → tasks, {}", r.backend.name()),
                    &format!(
                        "{:.0} msg/s, {:.1} MB/s ({:.1} s) = {:.3}× bare",
                        r.rate.msg_s(),
                        r.rate.mb_s(),
                        r.rate.secs,
                        ratio
                    ),
                    &format!(">= {BACKLOG_RATIO_TARGET}× bare"),
                    mark(ratio >= BACKLOG_RATIO_TARGET && r.quarantined == 0),
                );
            }
        }
        for p in &self.push {
            let api99 = pct(&p.api_ms, 0.99);
            let raw99 = pct(&p.raw_ms, 0.99);
            row(
                &format!("push, {}: raw IDLE EXISTS", p.backend.name()),
                &format!(
                    "p50 {:.0} ms, p99 {:.0} ms ({} probes)",
                    pct(&p.raw_ms, 0.5),
                    raw99,
                    p.sent
                ),
                "reference",
                "",
            );
            row(
                &format!("push, {}: task in API", p.backend.name()),
                &format!(
                    "p50 {:.0} ms, p99 {:.0} ms (+{:.0} ms), {} lost",
                    pct(&p.api_ms, 0.5),
                    api99,
                    api99 - raw99,
                    p.lost_api
                ),
                &format!("p99 <= raw p99 + {PUSH_P99_MARGIN_MS:.0} ms"),
                mark(p.lost_api == 0 && api99 <= raw99 + PUSH_P99_MARGIN_MS),
            );
        }
        for b in &self.big {
            row(
                &format!("peak RSS, {} MiB mail, {}", args.big_mb, b.backend.name()),
                &format!(
                    "{:.0} MiB (idle {:.0}, +{:.0} = {:.1}× mail; {:.0} after), {:.1} s{}",
                    mib(b.after.hwm_kb),
                    mib(b.before.rss_kb),
                    mib(b.after.hwm_kb.saturating_sub(b.before.rss_kb)),
                    b.after.hwm_kb.saturating_sub(b.before.rss_kb) as f64 * 1024.0 / b.size as f64,
                    mib(b.settled.rss_kb),
                    b.secs,
                    if b.stored { "" } else { ", not stored" }
                ),
                "none given (info)",
                "",
            );
        }
        for i in &self.idle {
            row(
                &format!("{} idle mailboxes, {}", i.mailboxes, i.backend.name()),
                &format!(
                    "RSS {:.0}→{:.0} MiB, CPU {:.2}% over {:.0} s, {} fds, {} errors",
                    mib(i.rss_start.rss_kb),
                    mib(i.rss_end.rss_kb),
                    i.cpu_pct,
                    i.secs,
                    i.fds,
                    i.errors
                ),
                "none given (info)",
                &format!("ready in {:.0} s", i.ready_secs),
            );
        }
        for r in &self.backlog {
            println!(
                "backlog {}: started in {:.2} s, first message at {:.2} s, steady 10–90% {:.0} msg/s; \
                 {} tasks, database {:.0} MB; {}",
                r.backend.name(),
                r.startup.as_secs_f64(),
                r.first.map_or(f64::NAN, |f| f.as_secs_f64()),
                r.steady_msg_s,
                r.tasks,
                r.db_mb,
                r.cpu
            );
        }
    }
}

fn dovecot_version() -> String {
    Command::new("dovecot")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
