//! Ownership of mailboxes follows the life of the worker that owns them:
//! a worker restarted after SIGKILL resumes at once (SQLite and PostgreSQL),
//! a dead PostgreSQL worker's mailbox is taken over within seconds with no
//! mail lost or doubled, a second process on one SQLite file is refused, and
//! an owner whose lock connection was cut cannot commit (fencing).
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::app::{Db, TestDb, base_config};
use support::mail::{mail, wait_for};
use support::servers::{Dovecot, DovecotOptions, free_port};
use switchboard::config::Config;
use switchboard::ingest::prepare::{MailLimits, Origin, prepare};
use switchboard::store::ownership::{Ownership, OwnershipError, OwnershipSettings};
use switchboard::store::{IngestBatch, MailboxSpec, Store, StoreError};

const USER: &str = "support";
const WAIT: Duration = Duration::from_secs(60);

fn dovecot() -> Dovecot {
    assert!(
        support::servers::available(),
        "Dovecot is needed for these tests: run scripts/install-deps (or scripts/test, which does)"
    );
    Dovecot::start(DovecotOptions::default()).expect("Dovecot starts")
}

/// A `switchboard serve` process, killed when dropped (also when a test fails).
struct Serve {
    child: Child,
}

impl Serve {
    fn start(config_path: &std::path::Path) -> Serve {
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--config"])
            .arg(config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("switchboard starts");
        Serve { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sigkill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; its status and what it wrote to stderr.
    fn wait_exit(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return (status, err);
            }
            assert!(
                start.elapsed() < within,
                "the process did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.sigkill();
        }
    }
}

/// Configuration of a process reading the test user's INBOX, with the
/// ownership defaults (no `worker_id`: the default id carries the pid).
fn imap_config(db_url: &str, d: &Dovecot, http_port: u16) -> String {
    format!(
        r#"{}
[ingest]
io_timeout_secs = 5
max_backoff_secs = 2

[[mailboxes]]
id = "support-imap"
service = "support"
kind = "imap"
host = "127.0.0.1"
port = {}
tls = "none"
username = "{USER}"
password = "{}"
"#,
        base_config(db_url),
        d.imap_port,
        d.password()
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{http_port}"))
}

fn write_config(db: &TestDb, name: &str, text: &str) -> std::path::PathBuf {
    let path = db.dir().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

async fn query_i64(db: &TestDb, sql: &str) -> i64 {
    query_text(db, sql)
        .await
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One value of a query as text (`None` when there is no row or no database yet).
async fn query_text(db: &TestDb, sql: &str) -> Option<String> {
    use sqlx::Connection;
    let sql = format!("SELECT CAST(({sql}) AS TEXT)");
    if db.url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(&db.url).await.ok()?;
        sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&mut c)
            .await
            .ok()
            .flatten()
            .flatten()
    } else {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.ok()?;
        sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&mut c)
            .await
            .ok()
            .flatten()
            .flatten()
    }
}

fn probe(tag: &str, i: usize) -> Vec<u8> {
    mail(
        &format!("customer{}@example.net", i % 13),
        &format!("{tag} #{i}"),
        &format!("{tag}-{i}@example.net"),
        &[],
        &format!("Message {i} of the {tag} run."),
    )
}

/// Delivers numbered mail over LMTP every `gap` on a thread of its own until
/// stopped; counts what it delivered.
struct Stream {
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    fn start(d: &Arc<Dovecot>, tag: &'static str, gap: Duration) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (d, stop, delivered) = (Arc::clone(d), Arc::clone(&stop), Arc::clone(&delivered));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let i = delivered.load(Ordering::SeqCst);
                    d.deliver_lmtp(USER, &probe(tag, i)).expect("LMTP delivery");
                    delivered.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(gap);
                }
            })
        };
        Stream {
            stop,
            delivered,
            thread: Some(thread),
        }
    }

    fn delivered(&self) -> usize {
        self.delivered.load(Ordering::SeqCst)
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("delivery thread");
        }
        self.delivered()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Every delivered mail is exactly one message and one task.
async fn exactly_once(db: &TestDb, tag: &str, delivered: usize) {
    let n = delivered as i64;
    wait_for(WAIT, &format!("{n} {tag} messages"), || async {
        (query_i64(
            db,
            &format!("SELECT count(*) FROM messages WHERE subject LIKE '{tag} #%'"),
        )
        .await
            >= n)
            .then_some(())
    })
    .await;
    // Whatever was in flight settles: nothing arrives twice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for sql in [
        format!("SELECT count(*) FROM messages WHERE subject LIKE '{tag} #%'"),
        format!("SELECT count(DISTINCT message_id) FROM messages WHERE subject LIKE '{tag} #%'"),
        format!("SELECT count(*) FROM tasks WHERE subject LIKE '{tag} #%'"),
    ] {
        assert_eq!(query_i64(db, &sql).await, n, "{sql}");
    }
}

/// SIGKILL while mail keeps arriving, then start again at once: the next
/// mail delivered is a task within 2 s, and every mail is a task once.
async fn sigkill_with_mail_arriving_then_restart_resumes_at_once(db: Db) {
    let d = Arc::new(dovecot());
    let test_db = TestDb::create(db).await;
    let path = write_config(
        &test_db,
        "worker",
        &imap_config(&test_db.url, &d, free_port()),
    );
    let mut worker = Serve::start(&path);
    let stream = Stream::start(&d, "arriving", Duration::from_millis(100));
    wait_for(WAIT, "mail flowing", || async {
        (query_i64(&test_db, "SELECT count(*) FROM tasks").await >= 5).then_some(())
    })
    .await;
    worker.sigkill();
    let mut worker = Serve::start(&path);
    // The next mail: delivered right after the restart.
    let sent = Instant::now();
    d.deliver_lmtp(USER, &probe("next", 0))
        .expect("LMTP delivery");
    let took = wait_for(WAIT, "the next mail as a task", || async {
        (query_i64(
            &test_db,
            "SELECT count(*) FROM tasks WHERE subject = 'next #0'",
        )
        .await
            == 1)
            .then(|| sent.elapsed())
    })
    .await;
    println!("{db:?}: the next mail was a task {took:?} after its delivery, the restart included");
    assert!(
        took < Duration::from_secs(2),
        "{db:?}: the next mail took {took:?} to become a task after a restart"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = stream.finish();
    exactly_once(&test_db, "arriving", delivered).await;
    worker.sigkill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_mail_arriving_then_restart_resumes_at_once_sqlite() {
    sigkill_with_mail_arriving_then_restart_resumes_at_once(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_mail_arriving_then_restart_resumes_at_once_postgres() {
    sigkill_with_mail_arriving_then_restart_resumes_at_once(Db::Postgres).await
}

/// Two PostgreSQL workers with default ids; SIGKILL the one that owns the
/// mailbox while mail keeps arriving: the other owns it within 5 s, and
/// every mail is a task exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_postgres_workers_mailbox_is_taken_over_within_seconds() {
    let d = Arc::new(dovecot());
    let test_db = TestDb::create(Db::Postgres).await;
    let mut workers: Vec<Serve> = (0..2)
        .map(|i| {
            let text = imap_config(&test_db.url, &d, free_port());
            Serve::start(&write_config(&test_db, &format!("worker{i}"), &text))
        })
        .collect();
    let stream = Stream::start(&d, "pair", Duration::from_millis(100));
    let owner_sql = "SELECT owner FROM ownership WHERE kind = 'mailbox' AND id = 'support-imap'";
    let owner = wait_for(WAIT, "an owner and mail flowing", || async {
        let owner = query_text(&test_db, owner_sql).await?;
        (query_i64(&test_db, "SELECT count(*) FROM tasks").await >= 5).then_some(owner)
    })
    .await;
    let epoch = query_i64(
        &test_db,
        "SELECT epoch FROM ownership WHERE kind = 'mailbox' AND id = 'support-imap'",
    )
    .await;
    let holder = workers
        .iter()
        .position(|w| owner.contains(&format!("-{}-", w.pid())))
        .unwrap_or_else(|| panic!("the owner {owner} is one of the workers"));
    let survivor = workers[1 - holder].pid();
    let killed = Instant::now();
    workers[holder].sigkill();
    let took = wait_for(
        Duration::from_secs(30),
        "the survivor owns the mailbox",
        || async {
            let now = query_text(&test_db, owner_sql).await?;
            (now.contains(&format!("-{survivor}-"))).then(|| killed.elapsed())
        },
    )
    .await;
    println!("the survivor owned the mailbox {took:?} after the owner was killed");
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    assert!(
        query_i64(
            &test_db,
            "SELECT epoch FROM ownership WHERE kind = 'mailbox' AND id = 'support-imap'"
        )
        .await
            > epoch,
        "a takeover is a new epoch"
    );
    // Mail keeps flowing through the survivor.
    let before = stream.delivered();
    wait_for(WAIT, "mail after the takeover", || async {
        (query_i64(&test_db, "SELECT count(*) FROM tasks").await > before as i64 + 2).then_some(())
    })
    .await;
    let delivered = stream.finish();
    exactly_once(&test_db, "pair", delivered).await;
}

/// A second process on the same SQLite file is refused with a message that
/// says why; the first keeps serving; once the first is gone, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_sqlite_file_is_refused() {
    let test_db = TestDb::create(Db::Sqlite).await;
    let port = free_port();
    let first_path = write_config(
        &test_db,
        "first",
        &base_config(&test_db.url).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    );
    let mut first = Serve::start(&first_path);
    let client = reqwest::Client::new();
    let ready = |port: u16| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    };
    wait_for(WAIT, "the first process serves", || async {
        ready(port).await.then_some(())
    })
    .await;
    let second_port = free_port();
    let second_path = write_config(
        &test_db,
        "second",
        &base_config(&test_db.url).replace("127.0.0.1:0", &format!("127.0.0.1:{second_port}")),
    );
    let mut second = Serve::start(&second_path);
    let (status, stderr) = second.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the second process is refused: {stderr}");
    let db_file = test_db.dir().join("test.db");
    for says in [
        format!("the SQLite database {}", db_file.display()),
        format!(
            "is in use by another switchboard process (pid {})",
            first.pid()
        ),
        "SQLite serves one worker per database file".to_string(),
        "use PostgreSQL to run several workers".to_string(),
    ] {
        assert!(stderr.contains(&says), "says {says:?}: {stderr}");
    }
    assert!(ready(port).await, "the first process still serves");
    // Positive control: the lock goes with the process that held it.
    first.sigkill();
    let mut second = Serve::start(&second_path);
    wait_for(
        WAIT,
        "the second process serves once the first is gone",
        || async { ready(second_port).await.then_some(()) },
    )
    .await;
    second.sigkill();
}

/// A store on its own (no HTTP, no worker) with the test services and one
/// mailbox registered.
async fn bare_store(test_db: &TestDb) -> Store {
    let config = Config::from_parts(
        &base_config(&test_db.url),
        std::path::Path::new("test.toml"),
        &[],
    )
    .expect("config");
    let store = switchboard::app::open_store(&config).await.expect("store");
    switchboard::app::apply_directory(&store, &config)
        .await
        .expect("directory");
    store
        .register_mailbox(&MailboxSpec {
            id: "inbox".into(),
            service_id: "support".into(),
            kind: "maildir".into(),
            description: "test".into(),
        })
        .await
        .expect("mailbox");
    store
}

async fn one_mail_batch(
    store: &Store,
    fence: switchboard::store::ownership::Fence,
    i: usize,
) -> IngestBatch {
    let limits = MailLimits {
        max_message_bytes: 1 << 20,
        parse_timeout: Duration::from_secs(10),
    };
    let item = prepare(
        store,
        &Default::default(),
        probe("fenced", i),
        Origin::default(),
        &limits,
    )
    .await
    .expect("prepared");
    IngestBatch {
        mailbox_id: "inbox".into(),
        service_id: "support".into(),
        fence: Some(fence),
        cursor: None,
        items: vec![item],
        resolves_quarantine: None,
    }
}

fn settings(worker: &str) -> OwnershipSettings {
    OwnershipSettings {
        check_interval: Duration::from_millis(200),
        dead_after: Duration::from_secs(2),
        ..OwnershipSettings::new(worker)
    }
}

/// PostgreSQL: worker A owns the mailbox; its lock connection is cut (as
/// when its host drops off the network); B takes the mailbox over; A's
/// commit then fails and writes nothing, B's succeeds, and A is told it
/// lost the mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_whose_connection_was_cut_cannot_commit() {
    let test_db = TestDb::create(Db::Postgres).await;
    let store = bare_store(&test_db).await;
    let a = Ownership::start(&store, settings("worker-a"))
        .await
        .expect("a");
    let b = Ownership::start(&store, settings("worker-b"))
        .await
        .expect("b");
    let mut guard_a = a
        .try_acquire("mailbox", "inbox")
        .await
        .expect("acquire")
        .expect("a owns the free mailbox");
    assert!(
        b.try_acquire("mailbox", "inbox")
            .await
            .expect("acquire")
            .is_none(),
        "b cannot own what a owns"
    );
    // A's own commits pass the fence while it owns the mailbox.
    let report = store
        .commit_batch(&one_mail_batch(&store, guard_a.fence().clone(), 0).await)
        .await
        .expect("the owner commits");
    assert_eq!(report.messages.len(), 1);

    let Store::Postgres(pool, _) = &store else {
        unreachable!()
    };
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = 'switchboard-owner worker-a' AND datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .expect("terminate");
    assert_eq!(cut, 1, "a's lock connection was found and cut");
    let guard_b = wait_for(
        Duration::from_secs(10),
        "b takes the mailbox over",
        || async { b.try_acquire("mailbox", "inbox").await.ok().flatten() },
    )
    .await;
    assert!(guard_b.fence().epoch > guard_a.fence().epoch);

    let stale = store
        .commit_batch(&one_mail_batch(&store, guard_a.fence().clone(), 1).await)
        .await;
    assert!(
        matches!(stale, Err(StoreError::LeaseLost(_))),
        "the stale owner's commit fails: {stale:?}"
    );
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .expect("count")
    };
    assert_eq!(
        count("SELECT count(*) FROM messages WHERE subject = 'fenced #1'").await,
        0,
        "nothing of the stale commit was written"
    );
    let report = store
        .commit_batch(&one_mail_batch(&store, guard_b.fence().clone(), 1).await)
        .await
        .expect("the new owner commits");
    assert_eq!(report.messages.len(), 1);
    assert_eq!(count("SELECT count(*) FROM messages").await, 2);
    // A hears of its loss on its next check of the connection.
    tokio::time::timeout(Duration::from_secs(5), guard_a.lost())
        .await
        .expect("a is told it lost the mailbox");
    guard_b.release().await;
    a.close().await;
    b.close().await;
    store.close().await;
}

/// SQLite: an owner's fence fails once the source was taken again (a new
/// epoch), and a second ownership of the same file is refused with the
/// reason, even in one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_fences_old_epochs_and_refuses_a_second_owner() {
    let test_db = TestDb::create(Db::Sqlite).await;
    let store = bare_store(&test_db).await;
    let a = Ownership::start(&store, settings("worker-a"))
        .await
        .expect("a");
    match Ownership::start(&store, settings("worker-b")).await {
        Err(e @ OwnershipError::InUse { .. }) => {
            let text = e.to_string();
            assert!(text.contains("one worker per database file"), "{text}");
            assert!(
                text.contains(&format!("pid {}", std::process::id())),
                "{text}"
            );
        }
        other => panic!("a second owner of the file is refused: {other:?}"),
    }
    let first = a
        .try_acquire("mailbox", "inbox")
        .await
        .unwrap()
        .expect("owned");
    assert!(a.try_acquire("mailbox", "inbox").await.unwrap().is_none());
    let old = first.fence().clone();
    first.release().await;
    let second = a
        .try_acquire("mailbox", "inbox")
        .await
        .unwrap()
        .expect("owned again");
    assert!(second.fence().epoch > old.epoch);
    let stale = store
        .commit_batch(&one_mail_batch(&store, old, 0).await)
        .await;
    assert!(matches!(stale, Err(StoreError::LeaseLost(_))), "{stale:?}");
    let report = store
        .commit_batch(&one_mail_batch(&store, second.fence().clone(), 0).await)
        .await
        .expect("the current owner commits");
    assert_eq!(report.messages.len(), 1);
    second.release().await;
    a.close().await;
    store.close().await;
}

/// A source's work that ends by itself (its connection cut, its fence
/// failed) is not polled again after it finished (a panic, "async fn
/// resumed after completion"); its ownership is released and the source is
/// taken up again at the next check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_ends_by_itself_is_taken_up_again_without_a_panic() {
    let test_db = TestDb::create(Db::Sqlite).await;
    let store = bare_store(&test_db).await;
    let ownership = Ownership::start(&store, settings("worker-a"))
        .await
        .expect("ownership");
    let panicked = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&panicked);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.store(true, Ordering::SeqCst);
        previous(info);
    }));
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let supervisor = tokio::spawn(switchboard::supervise::run_owned(
        ownership,
        "mailbox",
        vec!["inbox".to_string()],
        shutdown,
        move |_, _, _| {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        },
    ));
    wait_for(
        Duration::from_secs(20),
        "the work taken up three times",
        || async { (runs.load(Ordering::SeqCst) >= 3).then_some(()) },
    )
    .await;
    let _ = stop.send(true);
    supervisor.await.expect("the supervisor ends");
    // The default hook again (this one was for this test only).
    let _ = std::panic::take_hook();
    assert!(!panicked.load(Ordering::SeqCst), "a task panicked");
}

/// SIGTERM in the middle of a backlog: the worker stops after the batch it
/// is committing (not after the whole backlog), exits cleanly and soon;
/// started again, it takes in the rest, every mail once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_a_backlog_stops_after_the_batch_at_hand() {
    let d = dovecot();
    let test_db = TestDb::create(Db::Sqlite).await;
    let total = 1500;
    let mails: Vec<Vec<u8>> = (0..total).map(|i| probe("backlog", i)).collect();
    d.append_many(USER, "INBOX", &mails);
    let text = imap_config(&test_db.url, &d, free_port()).replace(
        "max_backoff_secs = 2",
        "max_backoff_secs = 2\nbatch_size = 5",
    );
    let path = write_config(&test_db, "worker", &text);
    let mut worker = Serve::start(&path);
    wait_for(WAIT, "the backlog under way", || async {
        (query_i64(&test_db, "SELECT count(*) FROM tasks").await >= 20).then_some(())
    })
    .await;
    let signalled = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &worker.pid().to_string()])
        .status();
    let (status, stderr) = worker.wait_exit(Duration::from_secs(15));
    let took = signalled.elapsed();
    assert!(status.success(), "{status}: {stderr}");
    let taken = query_i64(&test_db, "SELECT count(*) FROM tasks").await;
    println!("stopped {took:?} after SIGTERM, with {taken} of {total} mails taken in");
    assert!(
        (taken as usize) < total,
        "the whole backlog ({taken}) was taken in after SIGTERM"
    );
    let mut worker = Serve::start(&path);
    exactly_once(&test_db, "backlog", total).await;
    worker.sigkill();
}
