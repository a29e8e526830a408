//! Routing across worker processes: RONA timers survive a SIGKILL (every
//! overdue offer fires once when the worker starts again), a surviving
//! PostgreSQL worker fires a dead one's RONAs on time, and capacity holds
//! with three workers routing the same queues.
mod support;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::app::{Db, TestDb};
use support::servers::free_port;
use support::sse::EventStream;
use switchboard::store::Store;

const ADMIN: &str = "admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

fn token(agent: &str) -> String {
    format!("{agent}-token-0123456789abcdef")
}

/// A `switchboard serve` process, SIGKILLed when dropped (also when a test
/// fails, which then prints what it logged).
struct Worker {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Worker {
    async fn start(config: &Path, port: u16) -> Worker {
        let log = config.with_extension(format!("{}.log", support::app::hex_id()));
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("switchboard starts");
        let w = Worker {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        w.ready().await;
        w
    }

    async fn ready(&self) {
        let start = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{}/readyz", self.url)).await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "worker at {} did not get ready",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.sigkill();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- worker at {} logged:\n{text}", self.url);
        }
    }
}

/// One worker's configuration file: `agents` agents of Support with
/// `capacity` emails each; offers time out after `rona_secs`.
fn write_config(
    dir: &Path,
    name: &str,
    db_url: &str,
    port: u16,
    agents: usize,
    capacity: u32,
    rona_secs: u32,
) -> PathBuf {
    let mut text = format!(
        "[database]\nurl = \"{db_url}\"\nmax_connections = 8\n[http]\nbind = \"127.0.0.1:{port}\"\n\
         [routing]\nsweep_ms = 500\n\
         [[services]]\nid = \"support\"\nname = \"Support\"\nrona_timeout_secs = {rona_secs}\nrona_reset_secs = 600\n\
         [[agents]]\nid = \"admin\"\nname = \"Admin\"\nemail = \"admin@example.com\"\ntoken = \"{ADMIN}\"\nadmin = true\n"
    );
    for i in 0..agents {
        text.push_str(&format!(
            "[[agents]]\nid = \"a{i}\"\nname = \"A{i}\"\nemail = \"a{i}@example.com\"\ntoken = \"{}\"\n\
             services = [\"support\"]\ncapacity = {{ email = {capacity} }}\n",
            token(&format!("a{i}"))
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The test's own connection to the workers' database.
async fn connect(url: &str) -> Store {
    Store::connect(url, 4)
        .await
        .expect("the test reaches the database")
}

async fn count(store: &Store, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    match store {
        Store::Sqlite(p, _) => sqlx::query_scalar(sql).fetch_one(p).await,
        Store::Postgres(p, _) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .expect("count query")
}

async fn eventually(store: &Store, sql: &str, want: i64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let n = count(store, sql).await;
        if n == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{sql}: {n}, expected {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn post_task(client: &reqwest::Client, url: &str, i: usize) -> String {
    let r = client
        .post(format!("{url}/api/v1/tasks"))
        .bearer_auth(ADMIN)
        .json(&json!({"service": "support", "modality": "email", "subject": format!("t{i}")}))
        .send()
        .await
        .expect("the worker answers");
    assert_eq!(r.status(), StatusCode::CREATED);
    let b: Value = r.json().await.unwrap();
    b["id"].as_str().unwrap().to_string()
}

/// 50 offers pending, the worker SIGKILLed, started again after their
/// deadlines: every RONA fires once, within a second of the worker answering.
async fn pending_offers_survive_a_sigkill(db: Db) {
    let db = TestDb::create(db).await;
    let port = free_port();
    let config = write_config(db.dir(), "w.toml", &db.url, port, 10, 5, 3);
    let mut worker = Worker::start(&config, port).await;
    let store = connect(&db.url).await;
    let mut streams = Vec::new();
    for i in 0..10 {
        streams.push(EventStream::open(&worker.url, &token(&format!("a{i}"))).await);
    }
    let client = reqwest::Client::new();
    join_all((0..50).map(|i| post_task(&client, &worker.url, i))).await;
    eventually(
        &store,
        "SELECT count(*) FROM user_sessions WHERE state = 'offered'",
        50,
        WAIT,
    )
    .await;
    worker.sigkill();
    drop(streams);
    // Wait until every deadline has passed while no worker runs.
    let latest: i64 = count(&store, "SELECT max(expires_at) FROM user_sessions").await;
    let wait = latest - switchboard::domain::now_millis() + 300;
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM user_sessions WHERE result = 'rona'"
        )
        .await,
        0
    );
    let restarted = Instant::now();
    let worker = Worker::start(&config, port).await;
    let to_ready = restarted.elapsed();
    let fired = eventually(
        &store,
        "SELECT count(*) FROM user_sessions WHERE result = 'rona'",
        50,
        // At once (the first sweep), with room for a slow machine; that each
        // ended at its own deadline is checked below.
        Duration::from_secs(5),
    )
    .await;
    eprintln!("restart: ready after {to_ready:?}, all 50 RONAs fired {fired:?} later");
    if std::env::var("SHOWLOG").is_ok() {
        eprintln!(
            "{}",
            std::fs::read_to_string(&worker.log).unwrap_or_default()
        );
    }
    // Each fired exactly once.
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM task_changes WHERE kind = 'task.rona'"
        )
        .await,
        50
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM tasks WHERE ronas = 1 AND state = 'queued'"
        )
        .await,
        50
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM user_sessions").await,
        50
    );
    // Each ended at its deadline, not when the restart noticed it, and its
    // agent's pause (600 s) counts from there.
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM user_sessions WHERE result = 'rona' AND ended_at = expires_at"
        )
        .await,
        50
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM agents a WHERE rona_until IS NOT NULL AND rona_until = 600000 + \
             (SELECT max(s.expires_at) FROM user_sessions s WHERE s.agent_id = a.id)"
        )
        .await,
        10
    );
    drop(worker);
    store.close().await;
}

on_both_backends!(pending_offers_survive_a_sigkill);

/// Two PostgreSQL workers; the one the agents are connected to is killed:
/// the other fires its RONAs at their deadlines, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surviving_worker_fires_a_dead_workers_ronas() {
    let db = TestDb::create(Db::Postgres).await;
    let (p1, p2) = (free_port(), free_port());
    let c1 = write_config(db.dir(), "w1.toml", &db.url, p1, 6, 3, 2);
    let c2 = write_config(db.dir(), "w2.toml", &db.url, p2, 6, 3, 2);
    let mut doomed = Worker::start(&c1, p1).await;
    let survivor = Worker::start(&c2, p2).await;
    let store = connect(&db.url).await;
    let mut streams = Vec::new();
    for i in 0..6 {
        streams.push(EventStream::open(&doomed.url, &token(&format!("a{i}"))).await);
    }
    let client = reqwest::Client::new();
    join_all((0..18).map(|i| post_task(&client, &doomed.url, i))).await;
    eventually(
        &store,
        "SELECT count(*) FROM user_sessions WHERE state = 'offered'",
        18,
        WAIT,
    )
    .await;
    doomed.sigkill();
    drop(streams);
    eventually(
        &store,
        "SELECT count(*) FROM user_sessions WHERE result = 'rona'",
        18,
        Duration::from_secs(6),
    )
    .await;
    // On time: each within a second of its deadline, by the survivor.
    let late = count(
        &store,
        "SELECT count(*) FROM user_sessions WHERE result = 'rona' AND ended_at > expires_at + 1000",
    )
    .await;
    assert_eq!(late, 0, "some RONAs fired more than 1 s late");
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM task_changes WHERE kind = 'task.rona'"
        )
        .await,
        18
    );
    drop(survivor);
    store.close().await;
}

/// Three PostgreSQL workers route one queue while agents connected to all of
/// them accept and finish tasks: no agent ever exceeds their capacity, no task
/// is ever offered to two agents, and every task is served once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_never_exceed_capacity_or_double_offer() {
    let db = TestDb::create(Db::Postgres).await;
    let ports = [free_port(), free_port(), free_port()];
    let mut workers = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let c = write_config(db.dir(), &format!("w{i}.toml"), &db.url, *p, 6, 2, 30);
        workers.push(Worker::start(&c, *p).await);
    }
    let store = connect(&db.url).await;
    let urls: Vec<String> = workers.iter().map(|w| w.url.clone()).collect();
    const TASKS: usize = 120;
    // Each agent: a stream on one of the workers; accepts every offer and
    // finishes it, answering through yet another worker.
    // The agents serve until every task is (a quiet moment on a slow
    // machine is no reason to stop).
    let done = Arc::new(AtomicBool::new(false));
    let agents = (0..6).map(|i| {
        let urls = urls.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let me = format!("a{i}");
            let mut stream = EventStream::open(&urls[i % 3], &token(&me)).await;
            let client = reqwest::Client::new();
            let mut served = 0usize;
            while !done.load(Ordering::SeqCst) {
                let asked = Instant::now();
                let Some(e) = stream.next(Duration::from_millis(500)).await else {
                    // A stream that ended answers at once: no busy loop.
                    if asked.elapsed() < Duration::from_millis(400) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                };
                if e.event != "offer" {
                    continue;
                }
                let via = &urls[(i + 1) % 3];
                let session = e.data["session_id"].as_str().unwrap();
                let task = e.data["task_id"].as_str().unwrap();
                let r = client
                    .post(format!("{via}/api/v1/offers/{session}/accept"))
                    .bearer_auth(token(&me))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                let r = client
                    .post(format!("{via}/api/v1/tasks/{task}/handled"))
                    .bearer_auth(token(&me))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                served += 1;
            }
            served
        })
    });
    let agents: Vec<_> = agents.collect();
    // Wait until every agent's stream is open before the burst.
    eventually(
        &store,
        "SELECT count(*) FROM agents WHERE last_seen_at IS NOT NULL AND id LIKE 'a_'",
        6,
        WAIT,
    )
    .await;
    let client = reqwest::Client::new();
    let posts = join_all((0..TASKS).map(|i| post_task(&client, &urls[i % 3], i)));
    let watch = async {
        let over_sql = "SELECT count(*) FROM (SELECT agent_id FROM user_sessions WHERE state IN ('offered', 'connected') GROUP BY agent_id HAVING count(*) > 2) o";
        let double_sql = "SELECT count(*) FROM (SELECT task_id FROM user_sessions WHERE state IN ('offered', 'connected') GROUP BY task_id HAVING count(*) > 1) d";
        let start = Instant::now();
        let mut checks = 0;
        loop {
            assert_eq!(
                count(&store, over_sql).await,
                0,
                "an agent is over capacity"
            );
            assert_eq!(
                count(&store, double_sql).await,
                0,
                "a task is offered to two agents"
            );
            checks += 1;
            if count(&store, "SELECT count(*) FROM tasks WHERE state = 'wrap_up'").await
                == TASKS as i64
            {
                return checks;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "not every task was served"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (ids, checks) = tokio::join!(posts, watch);
    done.store(true, Ordering::SeqCst);
    assert_eq!(ids.len(), TASKS);
    let served: usize = join_all(agents).await.into_iter().map(|r| r.unwrap()).sum();
    assert_eq!(served, TASKS);
    // Served once each: one accepted session per task, nothing else.
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM user_sessions WHERE result = 'accepted'"
        )
        .await,
        TASKS as i64
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM user_sessions").await,
        TASKS as i64
    );
    eprintln!("invariants checked {checks} times while {TASKS} tasks were routed by 3 workers");
    drop(workers);
    store.close().await;
}
