//! Outbound webhooks, end to end on both backends, against a real HTTP
//! receiver this test runs on loopback: every change of a task delivered,
//! signed, in order; retried while the receiver is down; dead-lettered and
//! sent again by an operator with the same delivery id; and destinations on
//! loopback refused unless the configuration allows them (tests only).
mod support;

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::app::{ADMIN, ALICE, Db, TestApp, TestDb, base_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

const SECRET: &str = "hook-secret-0123456789abcdef";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// The status it answered.
    answered: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A plain HTTP/1.1 receiver on loopback: records each request, answers
/// with the status set in `status` and closes the connection. Stopping it
/// drops the listener and every connection (the subscriber is really down).
struct Receiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    arrived: Arc<Notify>,
    status: Arc<AtomicU16>,
    server: Option<JoinHandle<()>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let mut r = Receiver {
            addr: "127.0.0.1:0".parse().unwrap(),
            hits: Arc::default(),
            arrived: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            server: None,
        };
        r.up().await;
        r
    }

    /// Listens (again, on the same port once it has one).
    async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("bind the receiver");
        self.addr = listener.local_addr().unwrap();
        let (hits, arrived, status) =
            (self.hits.clone(), self.arrived.clone(), self.status.clone());
        self.server = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (hits, arrived, status) = (hits.clone(), arrived.clone(), status.clone());
                connections.spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut headers = HashMap::new();
                    for line in head.lines().skip(1) {
                        if let Some((k, v)) = line.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let Ok(n) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let answered = status.load(Ordering::SeqCst);
                    hits.lock().unwrap().push(Hit {
                        headers,
                        body: buf[head_end..head_end + len].to_vec(),
                        answered,
                    });
                    let reply = format!(
                        "HTTP/1.1 {answered} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                    arrived.notify_waiters();
                });
            }
        }));
    }

    /// Stops listening and drops every open connection.
    async fn down(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits until `check` holds for the hits so far.
    async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        check: impl Fn(&[Hit]) -> bool,
    ) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.arrived.notified();
            let hits = self.hits();
            if check(&hits) {
                return hits;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {within:?} waiting for {what}; got {} hits",
                hits.len()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(250)), notified).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

/// The delivered changes of `task` (accepted ones), in arrival order.
fn types_of(hits: &[Hit], task: &str) -> Vec<String> {
    hits.iter()
        .filter(|h| h.answered == 200)
        .map(Hit::json)
        .filter(|b| b["task_id"] == task)
        .map(|b| b["type"].as_str().unwrap().to_string())
        .collect()
}

fn signature_ok(h: &Hit) -> bool {
    let ts = &h.headers["x-switchboard-timestamp"];
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&h.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    h.headers["x-switchboard-signature"] == expected
}

async fn change_log(app: &TestApp, task: &str) -> Vec<String> {
    use switchboard::store::Store;
    let sql = "SELECT kind FROM task_changes WHERE task_id = $1 ORDER BY id";
    match app.store() {
        Store::Sqlite(p, _) => sqlx::query_scalar(sql).bind(task).fetch_all(p).await,
        Store::Postgres(p, _) => sqlx::query_scalar(sql).bind(task).fetch_all(p).await,
    }
    .unwrap()
}

async fn deliveries(app: &TestApp, query: &str) -> Vec<Value> {
    let (s, b) = app
        .get(ADMIN, &format!("/api/v1/admin/webhooks/deliveries?{query}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["items"].as_array().unwrap().clone()
}

async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const WAIT: Duration = Duration::from_secs(20);

async fn webhooks_are_delivered_signed_in_order_retried_dead_lettered_and_redelivered(db: Db) {
    let mut receiver = Receiver::start().await;
    let db = TestDb::create(db).await;
    let text = base_config(&db.url)
        + "[webhooks]\nallow_loopback = true\nretry_base_ms = 100\nretry_max_delay_secs = 1\nretry_for_secs = 4\nsweep_ms = 200\n";
    let app = TestApp::spawn_on(db, Some(text)).await;
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/admin/webhooks",
            json!({"id": "crm", "url": receiver.url("/hook"), "events": ["*"], "secret": SECRET}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert!(
        b.get("secret").is_none(),
        "a given secret is never shown: {b}"
    );
    // One subscription for two event types only.
    let (s, b) = app
        .post(ADMIN, "/api/v1/admin/webhooks", json!({"id": "saves", "url": receiver.url("/saves"), "events": ["session.saved", "task.concluded"]}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert!(
        b["secret"].as_str().is_some_and(|s| s.len() >= 16),
        "a made-up secret is shown once: {b}"
    );
    let (_, b) = app.get(ADMIN, "/api/v1/admin/webhooks/saves").await;
    assert!(b.get("secret").is_none(), "{b}");

    // A task's life: every change, signed, in order.
    let t1 = app
        .new_task("email", "Hooked", "hook@customer.example")
        .await;
    let session = app.pickup(ALICE, &t1).await;
    let (s, b) = app
        .post(ALICE, &format!("/api/v1/tasks/{t1}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .put(
            ALICE,
            &format!("/api/v1/sessions/{session}/wrapup"),
            json!({"tags": ["vip", "refund"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let expected = [
        "task.created",
        "task.accepted",
        "task.handled",
        "session.saved",
        "task.concluded",
    ];
    assert_eq!(change_log(&app, &t1).await, expected);
    let hits = receiver
        .wait_for(WAIT, "the first task's changes", |h| {
            types_of(h, &t1).len() >= 7
        })
        .await;
    let to_crm: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.json()["subscription"] == "crm")
        .collect();
    assert_eq!(
        to_crm
            .iter()
            .map(|h| h.json()["type"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        expected
    );
    let to_saves: Vec<String> = hits
        .iter()
        .map(Hit::json)
        .filter(|b| b["subscription"] == "saves")
        .map(|b| b["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(to_saves, ["session.saved", "task.concluded"]);
    // A save tells what a report needs: the part's service, its result and
    // its wrap-up.
    let saved = hits
        .iter()
        .map(Hit::json)
        .find(|b| b["type"] == "session.saved")
        .expect("session.saved");
    let data = &saved["data"];
    assert_eq!(
        (
            &data["service"],
            &data["result"],
            &data["tags"],
            &data["codes"]
        ),
        (
            &json!("support"),
            &json!("accepted"),
            &json!(["vip", "refund"]),
            &json!({"primary": [], "secondary": []})
        ),
        "{saved}"
    );
    for h in &hits {
        assert!(
            signature_ok(h) || h.json()["subscription"] == "saves",
            "bad signature: {:?}",
            h.headers
        );
        let body = h.json();
        assert_eq!(
            h.headers["x-switchboard-delivery"],
            body["id"].as_str().unwrap()
        );
        assert_eq!(
            h.headers["x-switchboard-event"],
            body["type"].as_str().unwrap()
        );
        assert_eq!(h.headers["content-type"], "application/json");
        let ts: i64 = h.headers["x-switchboard-timestamp"].parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    }
    let accepted = to_crm[1].json();
    assert_eq!(accepted["data"]["agent"], "alice");
    assert_eq!(accepted["session_id"], session.as_str());
    // A signature made with another secret does not verify (the check is real).
    let mut forged = to_crm[0].clone();
    forged.body.push(b' ');
    assert!(!signature_ok(&forged));
    // Recorded once the receiver's answers are in.
    eventually(WAIT, "the deliveries recorded", || async {
        let all = deliveries(&app, &format!("task={t1}&subscription=crm")).await;
        all.len() == 5 && all.iter().all(|d| d["state"] == "delivered")
    })
    .await;
    let all = deliveries(&app, &format!("task={t1}&subscription=crm")).await;
    assert!(all.iter().all(|d| d["attempts"] == 1), "{all:?}");

    // The receiver goes down: deliveries are retried, in order, same ids.
    receiver.down().await;
    let t2 = app
        .new_task("email", "While down", "down@customer.example")
        .await;
    let (s, b) = app
        .post(ALICE, &format!("/api/v1/tasks/{t2}/pickup"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    eventually(WAIT, "failed attempts", || async {
        deliveries(&app, &format!("task={t2}&subscription=crm"))
            .await
            .iter()
            .any(|d| d["type"] == "task.created" && d["attempts"].as_i64().unwrap_or(0) >= 2)
    })
    .await;
    let waiting = deliveries(&app, &format!("task={t2}&subscription=crm")).await;
    let created = waiting
        .iter()
        .find(|d| d["type"] == "task.created")
        .unwrap()
        .clone();
    assert_eq!(created["state"], "pending", "{created}");
    assert_eq!(
        created["last_error"], "could not connect to the subscriber",
        "{created}"
    );
    let accepted = waiting
        .iter()
        .find(|d| d["type"] == "task.accepted")
        .unwrap()
        .clone();
    assert_eq!(
        accepted["attempts"], 0,
        "a later change waits for the earlier one: {accepted}"
    );
    receiver.up().await;
    let hits = receiver
        .wait_for(WAIT, "the second task's changes", |h| {
            types_of(h, &t2).len() >= 2
        })
        .await;
    let got: Vec<Value> = hits
        .iter()
        .map(Hit::json)
        .filter(|b| b["task_id"] == t2.as_str())
        .collect();
    assert_eq!(
        got.iter()
            .map(|b| b["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["task.created", "task.accepted"]
    );
    assert_eq!(
        got[0]["id"], created["id"],
        "the same delivery id after the retries"
    );
    eventually(WAIT, "the retried deliveries recorded", || async {
        deliveries(&app, &format!("task={t2}&subscription=crm"))
            .await
            .iter()
            .all(|d| d["state"] == "delivered")
    })
    .await;
    let done = deliveries(&app, &format!("task={t2}&subscription=crm")).await;
    let created_done = done.iter().find(|d| d["type"] == "task.created").unwrap();
    assert!(
        created_done["attempts"].as_i64().unwrap() >= 3,
        "{created_done}"
    );

    // The receiver fails for longer than the retry period: dead-lettered.
    receiver.status.store(500, Ordering::SeqCst);
    let t3 = app.new_task("email", "Dead", "dead@customer.example").await;
    eventually(WAIT, "a dead letter", || async {
        !deliveries(&app, &format!("state=dead&task={t3}"))
            .await
            .is_empty()
    })
    .await;
    let dead = deliveries(&app, &format!("state=dead&task={t3}")).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["last_status"], 500);
    assert!(dead[0]["attempts"].as_i64().unwrap() >= 3, "{:?}", dead[0]);
    let failed_bodies: Vec<Vec<u8>> = receiver
        .hits()
        .iter()
        .filter(|h| h.answered == 500)
        .map(|h| h.body.clone())
        .collect();
    assert!(failed_bodies.len() >= 3);
    // Operators see it in Prometheus too: attempts by result, and the dead
    // letter waiting for them.
    let metrics = app.metrics().await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    assert!(value("switchboard_webhook_attempts_total{result=\"delivered\"}") >= 1.0);
    assert!(value("switchboard_webhook_attempts_total{result=\"failed\"}") >= 2.0);
    assert_eq!(
        value("switchboard_webhook_attempts_total{result=\"dead\"}"),
        1.0
    );
    assert_eq!(value("switchboard_webhook_deliveries{state=\"dead\"}"), 1.0);
    assert!(value("switchboard_webhook_delivery_seconds_count") >= 1.0);
    // The operator sends it again once the receiver is well.
    receiver.status.store(200, Ordering::SeqCst);
    let id = dead[0]["id"].as_str().unwrap().to_string();
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/admin/webhooks/deliveries/{id}/redeliver"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let hits = receiver
        .wait_for(WAIT, "the redelivery", |h| types_of(h, &t3).len() == 1)
        .await;
    let good = hits
        .iter()
        .find(|h| h.answered == 200 && h.json()["task_id"] == t3.as_str())
        .unwrap();
    assert_eq!(good.headers["x-switchboard-delivery"], id);
    assert_eq!(
        &good.body, &failed_bodies[0],
        "the same body on every attempt"
    );
    assert!(signature_ok(good));
    eventually(WAIT, "the redelivery recorded", || async {
        app.get(
            ADMIN,
            &format!("/api/v1/admin/webhooks/deliveries?task={t3}"),
        )
        .await
        .1["items"][0]["state"]
            == "delivered"
    })
    .await;
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/admin/webhooks/deliveries/{id}/redeliver"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "only dead letters: {b}");
    let (s, _) = app
        .post(
            ALICE,
            &format!("/api/v1/admin/webhooks/deliveries/{id}/redeliver"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.stop().await;
}

async fn subscribers_on_loopback_are_refused_unless_allowed(db: Db) {
    let receiver = Receiver::start().await;
    let db = TestDb::create(db).await;
    let text = base_config(&db.url) + "[webhooks]\nretry_base_ms = 100\nsweep_ms = 200\n";
    let app = TestApp::spawn_on(db, Some(text)).await;
    for url in [
        receiver.url("/hook"),
        format!("http://localhost:{}/hook", receiver.addr.port()),
        "http://[::1]/hook".to_string(),
        "http://10.1.2.3/hook".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://[::ffff:127.0.0.1]/hook".to_string(),
        "ftp://hooks.example/x".to_string(),
        "https://user:pass@hooks.example/x".to_string(),
    ] {
        let (s, b) = app
            .post(
                ADMIN,
                "/api/v1/admin/webhooks",
                json!({"url": url, "events": ["*"], "secret": SECRET}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {b}");
        assert!(
            b["error"]["message"].as_str().unwrap().starts_with("url: "),
            "{b}"
        );
    }
    // A public destination is accepted (the positive control; inactive, so
    // nothing is sent there).
    let (s, b) = app
        .post(ADMIN, "/api/v1/admin/webhooks", json!({"id": "public", "url": "https://93.184.216.34/hook", "events": ["task.created"], "secret": SECRET, "active": false}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["active"], false);
    // A subscription written around the API is still not sent to loopback:
    // the attempt is made and refused before connecting.
    app.raw_sql(&format!(
        "INSERT INTO webhook_subscriptions (id, url, secret, active, created_at, updated_at) VALUES ('sneaky', '{}', '{SECRET}', TRUE, 0, 0)",
        receiver.url("/hook")
    ))
    .await
    .unwrap();
    app.raw_sql(
        "INSERT INTO webhook_subscription_events (subscription_id, event) VALUES ('sneaky', '*')",
    )
    .await
    .unwrap();
    let t = app.new_task("email", "Sneaky", "s@customer.example").await;
    eventually(WAIT, "a refused attempt", || async {
        deliveries(&app, &format!("task={t}&subscription=sneaky"))
            .await
            .iter()
            .any(|d| {
                d["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("not a public destination"))
            })
    })
    .await;
    assert!(
        receiver.hits().is_empty(),
        "nothing reached the loopback receiver"
    );
    app.stop().await;
}

/// Two PostgreSQL workers share one outbox: every change delivered once,
/// each task's changes in order, whichever worker wrote or sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_workers_share_the_outbox_without_doubles() {
    let receiver = Receiver::start().await;
    let db = TestDb::create(Db::Postgres).await;
    let text = base_config(&db.url) + "[webhooks]\nallow_loopback = true\nsweep_ms = 200\n";
    let app = TestApp::spawn_on(db, Some(text.clone())).await;
    let config =
        switchboard::config::Config::from_parts(&text, std::path::Path::new("w2.toml"), &[])
            .expect("config");
    let second = switchboard::app::Running::start(&config)
        .await
        .expect("a second worker");
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/admin/webhooks",
            json!({"id": "crm", "url": receiver.url("/hook"), "events": ["*"], "secret": SECRET}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let workers = [app.url.clone(), second.url()];
    let mut tasks = Vec::new();
    for i in 0..40 {
        // Created through one worker, picked up through the other.
        let (create, pick) = (&workers[i % 2], &workers[(i + 1) % 2]);
        let t: Value = app
            .client
            .post(format!("{create}/api/v1/tasks"))
            .bearer_auth(ADMIN)
            .json(
                &json!({"service": "support", "modality": "email", "subject": format!("two {i}"),
                          "customer": {"address": format!("c{i}@customer.example")}}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = t["id"].as_str().unwrap().to_string();
        let r = app
            .client
            .post(format!("{pick}/api/v1/tasks/{id}/pickup"))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        // Alice's capacity is 3 e-mails: hand each back (handled) to make room.
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = app
            .client
            .post(format!("{create}/api/v1/tasks/{id}/handled"))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        tasks.push(id);
    }
    let hits = receiver
        .wait_for(WAIT, "every change of 40 tasks", |h| h.len() >= 120)
        .await;
    let ids: std::collections::HashSet<String> = hits
        .iter()
        .map(|h| h.headers["x-switchboard-delivery"].clone())
        .collect();
    assert_eq!(ids.len(), hits.len(), "no delivery twice");
    for t in &tasks {
        assert_eq!(
            types_of(&hits, t),
            ["task.created", "task.accepted", "task.handled"],
            "{t}"
        );
    }
    eventually(WAIT, "every delivery recorded once", || async {
        app.count("SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'")
            .await
            == 120
    })
    .await;
    second.stop().await.expect("the second worker stops");
    app.stop().await;
}

/// A change that waits behind the task's earlier one (a subscriber that is
/// down) gets its own retry window from its first attempt: it is tried as
/// often as the first, not dead-lettered at once because its window ran
/// out while it waited.
async fn a_change_waiting_behind_another_gets_its_own_retries(db: Db) {
    let receiver = Receiver::start().await;
    receiver.status.store(500, Ordering::SeqCst);
    let db = TestDb::create(db).await;
    let text = base_config(&db.url)
        + "[webhooks]\nallow_loopback = true\nretry_base_ms = 100\nretry_max_delay_secs = 1\nretry_for_secs = 2\nsweep_ms = 100\n";
    let app = TestApp::spawn_on(db, Some(text)).await;
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/admin/webhooks",
            json!({"id": "crm", "url": receiver.url("/hook"), "events": ["*"], "secret": SECRET}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let t = app
        .new_task("email", "Queued", "queued@customer.example")
        .await;
    // Three more changes: the last waits behind the others for longer
    // than a whole retry window.
    for ticket in ["T-1", "T-2", "T-3"] {
        let (s, b) = app
            .send(
                app.request(reqwest::Method::PATCH, ADMIN, &format!("/api/v1/tasks/{t}"))
                    .json(&json!({"parameters": {"TicketId": ticket}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    eventually(WAIT, "every change dead-lettered", || async {
        deliveries(&app, &format!("state=dead&task={t}"))
            .await
            .len()
            == 4
    })
    .await;
    for d in deliveries(&app, &format!("task={t}")).await {
        assert!(
            d["attempts"].as_i64().unwrap_or(0) >= 3,
            "each change tried through its own window: {d}"
        );
    }
    // All four sent again while the subscriber is still down: each gets a
    // whole window again, the later ones from when their turn comes.
    let before: std::collections::HashMap<String, i64> = deliveries(&app, &format!("task={t}"))
        .await
        .iter()
        .map(|d| (d["id"].to_string(), d["attempts"].as_i64().unwrap_or(0)))
        .collect();
    let (s, b) = app
        .post(ADMIN, "/api/v1/admin/webhooks/crm/redeliver", Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    eventually(WAIT * 2, "every change dead-lettered again", || async {
        let all = deliveries(&app, &format!("task={t}")).await;
        all.len() == 4
            && all
                .iter()
                .all(|d| d["state"] == "dead" && d["dead_at"].is_string())
    })
    .await;
    for d in deliveries(&app, &format!("task={t}")).await {
        // Backoff goes on from the attempts made (1 s apart here), so a
        // window of 2 s holds at least two more.
        assert!(
            d["attempts"].as_i64().unwrap_or(0) - before[&d["id"].to_string()] >= 2,
            "each redelivered change tried through a window of its own again: {d} (before: {before:?})"
        );
    }
    app.stop().await;
}

on_both_backends!(
    webhooks_are_delivered_signed_in_order_retried_dead_lettered_and_redelivered,
    subscribers_on_loopback_are_refused_unless_allowed,
    a_change_waiting_behind_another_gets_its_own_retries,
);
