//! Routing: presence, offers with accept and decline, RONA, broadcast,
//! capacity, priorities, transfer and cancel, on both backends, as agents'
//! clients see them on their event streams.
mod support;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::app::{Db, TestApp, TestDb};
use support::sse::EventStream;

/// Events seen this fast came by notification, not by a safety poll.
const PROMPT: Duration = Duration::from_secs(10);

const ADMIN: &str = "admin-token-0123456789";

fn token(agent: &str) -> String {
    format!("{agent}-token-0123456789abcdef")
}

/// A configuration with the given services (TOML bodies of `[[services]]`)
/// and agents (id, services, capacity TOML).
fn config(
    db_url: &str,
    grace_secs: u64,
    services: &[&str],
    agents: &[(&str, &[&str], &str)],
) -> String {
    let mut text = format!(
        "[database]\nurl = \"{db_url}\"\nmax_connections = 8\n[http]\nbind = \"127.0.0.1:0\"\n\
         [routing]\npresence_grace_secs = {grace_secs}\nsweep_ms = 500\n"
    );
    for s in services {
        text.push_str(&format!("[[services]]\n{s}\n"));
    }
    for (id, services, capacity) in agents {
        let list: Vec<String> = services.iter().map(|s| format!("\"{s}\"")).collect();
        text.push_str(&format!(
            "[[agents]]\nid = \"{id}\"\nname = \"{id}\"\nemail = \"{id}@example.com\"\ntoken = \"{}\"\n\
             services = [{}]\ncapacity = {capacity}\n",
            token(id),
            list.join(", ")
        ));
    }
    text.push_str(&format!(
        "[[agents]]\nid = \"admin\"\nname = \"Admin\"\nemail = \"admin@example.com\"\ntoken = \"{ADMIN}\"\nadmin = true\n"
    ));
    text
}

const SUPPORT: &str =
    "id = \"support\"\nname = \"Support\"\ndistribution = \"longest_idle\"\nrona_timeout_secs = 30";
const EMAIL3: &str = "{ email = 3, im = 2, call = 1 }";

async fn start(db: Db, text: impl FnOnce(&str) -> String) -> TestApp {
    let db = TestDb::create(db).await;
    let t = text(&db.url);
    TestApp::spawn_on(db, Some(t)).await
}

/// Posts a task as telephony or an integration would; returns its id.
async fn task(app: &TestApp, service: &str, modality: &str, subject: &str, extra: Value) -> String {
    let mut body = json!({
        "service": service,
        "modality": modality,
        "subject": subject,
        "customer": {"address": "cleo@customer.example", "name": "Cleo"},
    });
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    let (s, b) = app.post(ADMIN, "/api/v1/tasks", body).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b["id"].as_str().unwrap().to_string()
}

async fn answer(app: &TestApp, agent: &str, session: &str, verb: &str) -> (StatusCode, Value) {
    app.post(
        &token(agent),
        &format!("/api/v1/offers/{session}/{verb}"),
        Value::Null,
    )
    .await
}

async fn task_state(app: &TestApp, id: &str) -> Value {
    let (s, t) = app.get(ADMIN, &format!("/api/v1/tasks/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    t
}

/// Polls until `check` holds, or panics with `what`.
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
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn offer_accept_and_its_record(db: Db) {
    let app = start(db, |u| {
        config(u, 60, &[SUPPORT], &[("alice", &["support"], EMAIL3)])
    })
    .await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let created = Instant::now();
    let t = task(&app, "support", "email", "Refund", json!({})).await;
    let offer = alice
        .expect_kind("offer", PROMPT, "an offer for the new task")
        .await;
    let latency = created.elapsed();
    assert_eq!(offer.data["task_id"], t.as_str());
    assert_eq!(offer.data["modality"], "email");
    assert_eq!(offer.data["subject"], "Refund");
    assert_eq!(offer.data["customer"]["name"], "Cleo");
    assert!(offer.data["expires_at"].is_string());
    assert!(latency < PROMPT, "{latency:?}");
    let session = offer.data["session_id"].as_str().unwrap().to_string();
    // The offer is listed, and the task shows it.
    let (s, list) = app.get(&token("alice"), "/api/v1/me/offers").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["items"][0]["id"], session.as_str());
    assert_eq!(list["items"][0]["state"], "offered");
    assert_eq!(list["items"][0]["task"]["id"], t.as_str());
    assert_eq!(task_state(&app, &t).await["state"], "offered");
    // Another agent's token cannot see or answer it.
    let (s, _) = app
        .post(
            ADMIN,
            &format!("/api/v1/offers/{session}/accept"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Accept connects the task; answering again is answered the same way.
    let (s, b) = answer(&app, "alice", &session, "accept").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["state"].as_str(), b["result"].as_str()),
        (Some("connected"), Some("accepted"))
    );
    let (s, again) = answer(&app, "alice", &session, "accept").await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["answered_at"], b["answered_at"]);
    let (s, e) = answer(&app, "alice", &session, "decline").await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert_eq!(e["error"]["code"], "offer_accepted");
    assert_eq!(task_state(&app, &t).await["state"], "connected");
    // The task's changes are logged in order, for integrations.
    let kinds = changes(&app, &t).await;
    assert_eq!(kinds, ["task.created", "task.offered", "task.accepted"]);
    // And counted.
    let text = app.metrics().await;
    assert!(
        text.contains(r#"switchboard_offers_total{modality="email",service="support"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"switchboard_offer_results_total{result="accepted"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("switchboard_time_to_offer_seconds_count{modality=\"email\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("switchboard_time_to_accept_seconds_count 1"),
        "{text}"
    );
    app.stop().await;
}

/// The kinds of a task's logged changes, in order.
async fn changes(app: &TestApp, task: &str) -> Vec<String> {
    use switchboard::store::Store;
    let sql = "SELECT kind FROM task_changes WHERE task_id = $1 ORDER BY id";
    match app.store() {
        Store::Sqlite(p, _) => sqlx::query_scalar(sql).bind(task).fetch_all(p).await,
        Store::Postgres(p, _) => sqlx::query_scalar(sql).bind(task).fetch_all(p).await,
    }
    .unwrap()
}

async fn a_decline_sends_the_task_to_the_next_agent(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            60,
            &[SUPPORT],
            &[
                ("alice", &["support"], EMAIL3),
                ("bob", &["support"], EMAIL3),
            ],
        )
    })
    .await;
    let mut streams = HashMap::new();
    for a in ["alice", "bob"] {
        streams.insert(a, EventStream::open(&app.url, &token(a)).await);
    }
    let t = task(&app, "support", "email", "Broken", json!({})).await;
    // Exactly one of them is offered it.
    let (first, offer) = first_offer(&mut streams, &t).await;
    let other = if first == "alice" { "bob" } else { "alice" };
    // Codes and tags wait for the accept: an offer declined (or let run
    // out) must not leave them on a record nobody handled.
    let (s, e) = app
        .put(
            &token(first),
            &format!("/api/v1/sessions/{offer}/wrapup"),
            json!({"tags": ["early"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not yet accepted"),
        "{e}"
    );
    let (s, b) = answer(&app, first, offer.as_str(), "decline").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["state"].as_str(), b["result"].as_str()),
        (Some("concluded"), Some("declined"))
    );
    assert_eq!(b["wrapup"]["tags"], json!([]), "{b}");
    // Declining twice is idempotent; accepting after declining is refused.
    assert_eq!(
        answer(&app, first, &offer, "decline").await.0,
        StatusCode::OK
    );
    let (s, e) = answer(&app, first, &offer, "accept").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("offer_declined"))
    );
    let next = streams
        .get_mut(other)
        .unwrap()
        .expect_kind("offer", PROMPT, "the declined task, for the other agent")
        .await;
    assert_eq!(next.data["task_id"], t.as_str());
    // The decliner is not asked again while the other agent is there.
    let again = streams
        .get_mut(first)
        .unwrap()
        .collect_kind("offer", Duration::from_millis(700))
        .await;
    assert!(again.is_empty(), "{again:?}");
    app.stop().await;
}

/// Waits for the first offer of `task` on any of `streams`; (agent, session id).
async fn first_offer(
    streams: &mut HashMap<&'static str, EventStream>,
    task: &str,
) -> (&'static str, String) {
    let (agent, session, _) = first_offer_until(streams, task).await;
    (agent, session)
}

/// Like [`first_offer`], with the offer's deadline.
async fn first_offer_until(
    streams: &mut HashMap<&'static str, EventStream>,
    task: &str,
) -> (&'static str, String, chrono::DateTime<chrono::Utc>) {
    let deadline = Instant::now() + PROMPT;
    loop {
        for (agent, s) in streams.iter_mut() {
            if let Some(e) = s.next(Duration::from_millis(50)).await
                && e.event == "offer"
                && e.data["task_id"] == task
            {
                let until = e.data["expires_at"].as_str().unwrap().parse().unwrap();
                return (
                    agent,
                    e.data["session_id"].as_str().unwrap().to_string(),
                    until,
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "no offer of {task} within {PROMPT:?}"
        );
    }
}

async fn an_unanswered_offer_ronas_and_pauses_the_agent(db: Db) {
    let svc = "id = \"support\"\nname = \"Support\"\nrona_timeout_secs = 1\nrona_reset_secs = 600";
    let app = start(db, |u| {
        config(
            u,
            60,
            &[svc],
            &[
                ("alice", &["support"], EMAIL3),
                ("bob", &["support"], EMAIL3),
            ],
        )
    })
    .await;
    let mut streams = HashMap::new();
    for a in ["alice", "bob"] {
        streams.insert(a, EventStream::open(&app.url, &token(a)).await);
    }
    let t1 = task(&app, "support", "email", "First", json!({})).await;
    let (silent, offer, until) = first_offer_until(&mut streams, &t1).await;
    let other = if silent == "alice" { "bob" } else { "alice" };
    // Nobody answers: after the timeout it is a RONA, and the other agent gets it.
    let gone = streams
        .get_mut(silent)
        .unwrap()
        .expect_kind("offer_withdrawn", PROMPT, "the RONA")
        .await;
    // Not before the offer's deadline.
    assert!(chrono::Utc::now() >= until, "the RONA came before {until}");
    assert_eq!(
        (gone.data["result"].as_str(), gone.data["reason"].as_str()),
        (Some("rona"), Some("timeout"))
    );
    assert!(gone.data["paused_until"].is_string());
    let next = streams
        .get_mut(other)
        .unwrap()
        .expect_kind("offer", PROMPT, "the task after the RONA")
        .await;
    assert_eq!(next.data["task_id"], t1.as_str());
    // A late answer, even repeated (a retrying client, several tabs), is
    // refused; the offer was missed once and counts once.
    for a in ["accept", "accept", "decline"] {
        let (s, e) = answer(&app, silent, &offer, a).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (StatusCode::CONFLICT, Some("offer_expired"))
        );
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"switchboard_offer_results_total{result="rona"} 1"#),
        "{metrics}"
    );
    let (_, p) = app.get(&token(silent), "/api/v1/me/presence").await;
    assert!(p["paused_until"].is_string(), "{p}");
    // The RONA'd agent is idle longer than the other (who was offered a task
    // since), yet a new task goes to the other: the RONA'd one is paused.
    let next_session = next.data["session_id"].as_str().unwrap().to_string();
    assert_eq!(
        answer(&app, other, &next_session, "accept").await.0,
        StatusCode::OK
    );
    let t2 = task(&app, "support", "email", "Second", json!({})).await;
    let o2 = streams
        .get_mut(other)
        .unwrap()
        .expect_kind("offer", PROMPT, "the second task")
        .await;
    assert_eq!(o2.data["task_id"], t2.as_str());
    assert_eq!(
        answer(
            &app,
            other,
            o2.data["session_id"].as_str().unwrap(),
            "accept"
        )
        .await
        .0,
        StatusCode::OK
    );
    // Setting themselves available again ends the pause: the next task is theirs.
    let (s, p) = app
        .put(
            &token(silent),
            "/api/v1/me/presence",
            json!({"status": "available"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert!(p["paused_until"].is_null(), "{p}");
    // The first status ever set says since when, even the default one.
    assert!(p["since"].is_string(), "{p}");
    let t3 = task(&app, "support", "email", "Third", json!({})).await;
    let o3 = streams
        .get_mut(silent)
        .unwrap()
        .expect_kind("offer", PROMPT, "the task after the pause")
        .await;
    assert_eq!(o3.data["task_id"], t3.as_str());
    // The RONA is on the record: the session, the task's count, the log.
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{t1}")).await;
    let results: Vec<&str> = t["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["result"].as_str())
        .collect();
    assert!(
        results.contains(&"rona") && results.contains(&"accepted"),
        "{t}"
    );
    assert!(changes(&app, &t1).await.contains(&"task.rona".to_string()));
    app.stop().await;
}

async fn broadcast_offers_to_all_and_the_first_accept_wins(db: Db) {
    let svc =
        "id = \"hotline\"\nname = \"Hotline\"\ndistribution = \"broadcast\"\nbroadcast_size = 10";
    let names = ["a1", "a2", "a3", "a4", "a5"];
    let agents: Vec<(&str, &[&str], &str)> = names
        .iter()
        .map(|n| (*n, &["hotline"][..], EMAIL3))
        .collect();
    let app = start(db, |u| config(u, 60, &[svc], &agents)).await;
    let mut streams = Vec::new();
    for n in names {
        streams.push((n, EventStream::open(&app.url, &token(n)).await));
    }
    let t = task(&app, "hotline", "im", "Chat", json!({})).await;
    let mut offers = Vec::new();
    for (n, s) in streams.iter_mut() {
        let o = s.expect_kind("offer", PROMPT, "the broadcast offer").await;
        assert_eq!(o.data["task_id"], t.as_str());
        offers.push((*n, o.data["session_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(task_state(&app, &t).await["state"], "offered");
    // All answer at once; exactly one wins.
    let answers = join_all(offers.iter().map(|(n, s)| answer(&app, n, s, "accept"))).await;
    let winners: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| *s == StatusCode::OK)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    for (i, (s, b)) in answers.iter().enumerate() {
        if i != winners[0] {
            assert_eq!(
                (*s, b["error"]["code"].as_str()),
                (StatusCode::CONFLICT, Some("offer_taken")),
                "{b}"
            );
        }
    }
    // The four others are told their offer is gone.
    for (i, (_, s)) in streams.iter_mut().enumerate() {
        if i == winners[0] {
            continue;
        }
        let w = s
            .expect_kind("offer_withdrawn", PROMPT, "the withdrawal")
            .await;
        assert_eq!(
            (w.data["result"].as_str(), w.data["reason"].as_str()),
            (Some("withdrawn"), Some("taken"))
        );
    }
    // Webhook subscribers learn of each withdrawn offer too.
    let kinds = changes(&app, &t).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "task.withdrawn").count(),
        4,
        "{kinds:?}"
    );
    let t = task_state(&app, &t).await;
    assert_eq!(t["state"], "connected");
    let results: Vec<&str> = t["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["result"].as_str())
        .collect();
    assert_eq!(
        results.iter().filter(|r| **r == "accepted").count(),
        1,
        "{t}"
    );
    assert_eq!(
        results.iter().filter(|r| **r == "withdrawn").count(),
        4,
        "{t}"
    );
    app.stop().await;
}

async fn priorities_across_services_come_first_then_age(db: Db) {
    let low = "id = \"support\"\nname = \"Support\"\npriority = 0";
    let high = "id = \"vip\"\nname = \"VIP\"\npriority = 10";
    let app = start(db, |u| {
        config(
            u,
            60,
            &[low, high],
            &[("alice", &["support", "vip"], "{ email = 1 }")],
        )
    })
    .await;
    // Tasks wait while nobody is there: the oldest first, the VIP one last.
    let old = task(&app, "support", "email", "old", json!({})).await;
    let newer = task(&app, "support", "email", "newer", json!({})).await;
    let vip = task(&app, "vip", "email", "vip", json!({})).await;
    let urgent = task(&app, "support", "email", "urgent", json!({"priority": 20})).await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let o = alice.expect_kind("offer", PROMPT, "the next task").await;
        order.push(o.data["task_id"].as_str().unwrap().to_string());
        let session = o.data["session_id"].as_str().unwrap();
        assert_eq!(
            answer(&app, "alice", session, "accept").await.0,
            StatusCode::OK
        );
        let (s, b) = app
            .post(
                &token("alice"),
                &format!("/api/v1/tasks/{}/handled", order.last().unwrap()),
                Value::Null,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    // Service priority plus task priority: 20 > 10 > 0; then by age.
    assert_eq!(order, [urgent, vip, old, newer]);
    app.stop().await;
}

async fn capacity_holds_under_concurrent_arrivals(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            60,
            &[SUPPORT],
            &[
                ("alice", &["support"], "{ email = 2 }"),
                ("bob", &["support"], "{ email = 1 }"),
                ("carol", &["support"], "{ email = 2 }"),
            ],
        )
    })
    .await;
    let mut streams = Vec::new();
    for a in ["alice", "bob", "carol"] {
        streams.push(EventStream::open(&app.url, &token(a)).await);
    }
    let names: Vec<String> = (0..45).map(|i| format!("t{i}")).collect();
    let ids = join_all(
        names[..30]
            .iter()
            .map(|n| task(&app, "support", "email", n, json!({}))),
    )
    .await;
    assert_eq!(ids.len(), 30);
    eventually(PROMPT, "five offers (the agents' capacity)", || async {
        app.count("SELECT count(*) FROM user_sessions WHERE state = 'offered'")
            .await
            == 5
    })
    .await;
    // Accept and finish tasks while more keep arriving; capacity is never
    // exceeded and no task is ever offered twice at once.
    let more = join_all(
        names[30..]
            .iter()
            .map(|n| task(&app, "support", "email", n, json!({}))),
    );
    let check = async {
        for _ in 0..40 {
            assert_limits(&app).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (_, ()) = tokio::join!(more, check);
    assert_limits(&app).await;
    assert_eq!(
        app.count("SELECT count(*) FROM user_sessions WHERE state = 'offered'")
            .await,
        5
    );
    drop(streams);
    app.stop().await;
}

/// No agent over capacity, no task offered to two agents (longest idle).
async fn assert_limits(app: &TestApp) {
    let over = app
        .count(
            "SELECT count(*) FROM (SELECT s.agent_id, count(*) AS n FROM user_sessions s
             WHERE s.state IN ('offered', 'connected') AND s.modality = 'email' GROUP BY s.agent_id) l
             WHERE (l.agent_id = 'bob' AND l.n > 1) OR l.n > 2",
        )
        .await;
    assert_eq!(over, 0, "an agent is over capacity");
    let doubled = app
        .count("SELECT count(*) FROM (SELECT task_id FROM user_sessions WHERE state IN ('offered', 'connected') GROUP BY task_id HAVING count(*) > 1) d")
        .await;
    assert_eq!(doubled, 0, "a task is offered to two agents");
}

async fn an_agent_who_goes_away_gets_their_offers_returned(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            1,
            &[SUPPORT],
            &[
                ("alice", &["support"], EMAIL3),
                ("bob", &["support"], EMAIL3),
            ],
        )
    })
    .await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let t = task(&app, "support", "email", "Lost", json!({})).await;
    let o = alice.expect_kind("offer", PROMPT, "the offer").await;
    let session = o.data["session_id"].as_str().unwrap().to_string();
    // Alice's page closes; Bob's is open.
    let closed = Instant::now();
    drop(alice);
    let mut bob = EventStream::open(&app.url, &token("bob")).await;
    let o = bob.expect_kind("offer", PROMPT, "the returned offer").await;
    assert_eq!(o.data["task_id"], t.as_str());
    // Not before the grace period (1 s) ran out after her stream closed.
    assert!(
        closed.elapsed() >= Duration::from_millis(800),
        "{:?}",
        closed.elapsed()
    );
    let (_, s) = app.get(ADMIN, &format!("/api/v1/sessions/{session}")).await;
    assert_eq!(
        (s["result"].as_str(), s["end_reason"].as_str()),
        (Some("withdrawn"), Some("presence")),
        "{s}"
    );
    let (_, agents) = app.get(ADMIN, "/api/v1/agents").await;
    let alice = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(alice["presence"]["effective"], "offline", "{alice}");
    assert_eq!(alice["routable"], false);
    let bobs = o.data["session_id"].as_str().unwrap().to_string();
    assert_eq!(answer(&app, "bob", &bobs, "accept").await.0, StatusCode::OK);
    // Setting a presence other than available withdraws offers at once.
    let t2 = task(&app, "support", "email", "Second", json!({})).await;
    let o2 = bob.expect_kind("offer", PROMPT, "the second task").await;
    assert_eq!(o2.data["task_id"], t2.as_str());
    let (s, p) = app
        .put(
            &token("bob"),
            "/api/v1/me/presence",
            json!({"status": "away"}),
        )
        .await;
    assert_eq!((s, p["status"].as_str()), (StatusCode::OK, Some("away")));
    let w = bob
        .expect_kind("offer_withdrawn", PROMPT, "the withdrawal on going away")
        .await;
    assert_eq!(w.data["task_id"], t2.as_str());
    assert_eq!(task_state(&app, &t2).await["state"], "queued");
    assert!(
        app.metrics()
            .await
            .contains(r#"switchboard_offer_results_total{result="withdrawn"} 2"#),
        "both withdrawals are counted: Alice's page closing, Bob going away"
    );
    let (s, e) = app
        .put(
            &token("bob"),
            "/api/v1/me/presence",
            json!({"status": "lunch"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("status"),
        "{e}"
    );
    app.stop().await;
}

async fn transfer_to_a_service_and_to_an_agent(db: Db) {
    let sales = "id = \"sales\"\nname = \"Sales\"";
    let app = start(db, |u| {
        config(
            u,
            60,
            &[SUPPORT, sales],
            &[
                ("alice", &["support"], EMAIL3),
                ("carol", &["sales"], EMAIL3),
                ("dan", &["support"], EMAIL3),
            ],
        )
    })
    .await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let mut carol = EventStream::open(&app.url, &token("carol")).await;
    let t = task(&app, "support", "call", "Call", json!({"route": true})).await;
    let o = alice.expect_kind("offer", PROMPT, "the call").await;
    let s1 = o.data["session_id"].as_str().unwrap().to_string();
    assert_eq!(answer(&app, "alice", &s1, "accept").await.0, StatusCode::OK);
    // To another service's queue: Carol (Sales) is offered it.
    let (s, b) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{t}/transfer"),
            json!({"service": "sales"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, mine) = app
        .get(&token("alice"), &format!("/api/v1/sessions/{s1}"))
        .await;
    assert_eq!(
        (mine["result"].as_str(), mine["state"].as_str()),
        (Some("transferred"), Some("wrap_up"))
    );
    let o = carol
        .expect_kind("offer", PROMPT, "the transferred call")
        .await;
    assert_eq!(
        (o.data["task_id"].as_str(), o.data["service"].as_str()),
        (Some(t.as_str()), Some("sales"))
    );
    let s2 = o.data["session_id"].as_str().unwrap().to_string();
    assert_eq!(answer(&app, "carol", &s2, "accept").await.0, StatusCode::OK);
    // To a named agent of another service, without naming it: refused, the
    // task would sit with someone whose page has none of its codes.
    let (s, e) = app
        .post(
            &token("carol"),
            &format!("/api/v1/tasks/{t}/transfer"),
            json!({"agent": "dan"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let m = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("'dan' is not a member of service 'sales'"),
        "{e}"
    );
    // To a named agent who is not there: refused with the reason.
    let (s, e) = app
        .post(
            &token("carol"),
            &format!("/api/v1/tasks/{t}/transfer"),
            json!({"agent": "dan", "service": "support"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("offline"),
        "{e}"
    );
    let (s, _) = app
        .post(
            &token("carol"),
            &format!("/api/v1/tasks/{t}/transfer"),
            json!({"agent": "nobody"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // To Alice by name, back in Support: offered directly to her.
    let (s, b) = app
        .post(
            &token("carol"),
            &format!("/api/v1/tasks/{t}/transfer"),
            json!({"agent": "alice", "service": "support"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let o = alice
        .expect_kind("offer", PROMPT, "the call, transferred to her by name")
        .await;
    assert_eq!(o.data["service"], "support");
    let s3 = o.data["session_id"].as_str().unwrap().to_string();
    assert_eq!(answer(&app, "alice", &s3, "accept").await.0, StatusCode::OK);
    // One task, its whole history.
    let t = task_state(&app, &t).await;
    assert_eq!(t["state"], "connected");
    let results: Vec<&str> = t["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["result"].as_str())
        .collect();
    assert_eq!(results, ["transferred", "transferred", "accepted"], "{t}");
    // Every offer counted, the one the transfer by name made too: as many
    // offers as answers (three accepts).
    let metrics = app.metrics().await;
    let offers: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_offers_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(offers, 3, "{metrics}");
    assert!(
        metrics.contains(r#"switchboard_offer_results_total{result="accepted"} 3"#),
        "{metrics}"
    );
    app.stop().await;
}

async fn a_customer_who_leaves_cancels_the_offer(db: Db) {
    let app = start(db, |u| {
        config(u, 60, &[SUPPORT], &[("alice", &["support"], EMAIL3)])
    })
    .await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let t = task(&app, "support", "im", "Chat", json!({})).await;
    let o = alice.expect_kind("offer", PROMPT, "the chat").await;
    let session = o.data["session_id"].as_str().unwrap().to_string();
    let (s, b) = app
        .post(ADMIN, &format!("/api/v1/tasks/{t}/cancel"), Value::Null)
        .await;
    assert_eq!(
        (s, b["state"].as_str()),
        (StatusCode::OK, Some("cancelled")),
        "{b}"
    );
    let w = alice
        .expect_kind("offer_withdrawn", PROMPT, "the cancelled offer")
        .await;
    assert_eq!(w.data["result"], "cancelled");
    let (s, e) = answer(&app, "alice", &session, "accept").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("offer_cancelled"))
    );
    // Cancelling again is harmless; agents cannot cancel.
    assert_eq!(
        app.post(ADMIN, &format!("/api/v1/tasks/{t}/cancel"), Value::Null)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        app.post(
            &token("alice"),
            &format!("/api/v1/tasks/{t}/cancel"),
            Value::Null
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // A queued task is cancelled too, with no session at all.
    let (s, _) = app
        .put(
            &token("alice"),
            "/api/v1/me/presence",
            json!({"status": "busy"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let q = task(&app, "support", "im", "Gone", json!({})).await;
    let (_, b) = app
        .post(ADMIN, &format!("/api/v1/tasks/{q}/cancel"), Value::Null)
        .await;
    assert_eq!(b["state"], "cancelled");
    app.stop().await;
}

/// Telephony reports that another agent answered (or the caller hung up)
/// while the task was offered to Alice: her offer ends as routing would end
/// it (taken, or cancelled), she is told at once, and she is neither
/// charged a missed offer nor paused.
async fn an_outcome_ends_the_offers_of_others(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            60,
            &[SUPPORT],
            &[
                ("alice", &["support"], EMAIL3),
                ("bob", &["support"], EMAIL3),
            ],
        )
    })
    .await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    for (result, ended_as, reason) in [
        ("accepted", "withdrawn", "taken"),
        ("cancelled", "cancelled", "cancelled"),
    ] {
        let t = task(&app, "support", "call", "Call", json!({"route": true})).await;
        let o = alice.expect_kind("offer", PROMPT, "the call").await;
        let session = o.data["session_id"].as_str().unwrap().to_string();
        let (s, b) = app
            .post(
                ADMIN,
                &format!("/api/v1/tasks/{t}/outcome"),
                json!({"agent": "bob", "result": result}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let w = alice
            .expect_kind("offer_withdrawn", PROMPT, "her offer ended")
            .await;
        assert_eq!(
            (
                w.data["session_id"].as_str(),
                w.data["result"].as_str(),
                w.data["reason"].as_str()
            ),
            (Some(session.as_str()), Some(ended_as), Some(reason)),
            "{}",
            w.data
        );
        let mine: Vec<&Value> = b["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["agent_id"] == "alice")
            .collect();
        assert_eq!(mine.len(), 1, "{b}");
        assert_eq!(
            (mine[0]["state"].as_str(), mine[0]["result"].as_str()),
            (Some("concluded"), Some(ended_as)),
            "{b}"
        );
        let (s, e) = answer(&app, "alice", &session, "accept").await;
        assert_eq!(s, StatusCode::CONFLICT, "{e}");
        let (_, me) = app.get(&token("alice"), "/api/v1/me/presence").await;
        assert!(me["paused_until"].is_null(), "not paused: {me}");
        if result == "accepted" {
            let (s, b) = app
                .post(
                    ADMIN,
                    &format!("/api/v1/tasks/{t}/outcome"),
                    json!({"agent": "bob", "result": "cancelled"}),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"switchboard_offer_results_total{result="withdrawn"} 1"#)
            && metrics.contains(r#"switchboard_offer_results_total{result="cancelled"} 1"#),
        "{metrics}"
    );
    // Bob declining (telephony says so) leaves Alice's offer standing; her
    // own decline, reported by telephony, takes the card off her page.
    let t = task(&app, "support", "call", "Call", json!({"route": true})).await;
    let o = alice.expect_kind("offer", PROMPT, "the third call").await;
    let session = o.data["session_id"].as_str().unwrap().to_string();
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{t}/outcome"),
            json!({"agent": "bob", "result": "declined"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "offered", "Alice's offer stands: {b}");
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{t}/outcome"),
            json!({"agent": "alice", "result": "declined"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let w = alice
        .expect_kind("offer_withdrawn", PROMPT, "her declined offer")
        .await;
    assert_eq!(
        (w.data["session_id"].as_str(), w.data["result"].as_str()),
        (Some(session.as_str()), Some("declined")),
        "{}",
        w.data
    );
    app.stop().await;
}

/// An admin takes an agent out of a service while a task of it is offered
/// to them: the offer ends at once (withdrawn, reason membership) and the
/// task goes back to its queue.
async fn leaving_a_service_withdraws_its_offers(db: Db) {
    let sales = "id = \"sales\"\nname = \"Sales\"";
    let app = start(db, |u| {
        config(
            u,
            60,
            &[SUPPORT, sales],
            &[("alice", &["support", "sales"], EMAIL3)],
        )
    })
    .await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let t = task(&app, "support", "im", "Chat", json!({})).await;
    let o = alice.expect_kind("offer", PROMPT, "the chat").await;
    let session = o.data["session_id"].as_str().unwrap().to_string();
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/agents/alice",
            json!({"name": "alice", "email": "alice@example.com", "services": ["sales"],
                   "capacity": {"email": 3, "im": 2, "call": 1}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let w = alice
        .expect_kind("offer_withdrawn", PROMPT, "the offer of a service she left")
        .await;
    assert_eq!(
        (w.data["session_id"].as_str(), w.data["reason"].as_str()),
        (Some(session.as_str()), Some("membership")),
        "{}",
        w.data
    );
    assert_eq!(task_state(&app, &t).await["state"], "queued");
    let (s, e) = answer(&app, "alice", &session, "accept").await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    app.stop().await;
}

/// More mail waiting than a routing pass looks at (200 per queue), all of
/// it ahead of a chat: an agent with room for a chat (but not for more mail)
/// is offered the chat, not only the first mail.
async fn a_backlog_of_mail_hides_no_chat(db: Db) {
    let app = start(db, |u| {
        config(
            u,
            60,
            &[SUPPORT],
            &[("alice", &["support"], "{ email = 1, im = 1, call = 1 }")],
        )
    })
    .await;
    for i in 0..230 {
        task(&app, "support", "email", &format!("Mail {i}"), json!({})).await;
    }
    let chat = task(&app, "support", "im", "Chat behind the mail", json!({})).await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let mut offered = HashSet::new();
    while offered.len() < 2 {
        let o = alice.expect_kind("offer", PROMPT, "an offer").await;
        offered.insert(o.data["task_id"].as_str().unwrap_or_default().to_string());
    }
    assert!(offered.contains(&chat), "the chat was offered: {offered:?}");
    app.stop().await;
}

async fn a_rona_never_wins_over_an_accept(db: Db) {
    let svc = "id = \"support\"\nname = \"Support\"\nrona_timeout_secs = 1\nrona_reset_secs = 0";
    let app = start(db, |u| {
        config(u, 60, &[svc], &[("alice", &["support"], "{ email = 10 }")])
    })
    .await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let mut outcomes = HashSet::new();
    for i in 0..8 {
        let t = task(&app, "support", "email", &format!("race {i}"), json!({})).await;
        // This task's offer (an earlier task that RONA'd is offered again meanwhile).
        let o = loop {
            let o = alice.expect_kind("offer", PROMPT, "the offer").await;
            if o.data["task_id"] == json!(t) {
                break o;
            }
        };
        let session = o.data["session_id"].as_str().unwrap().to_string();
        // Answer around the deadline: a little before, at, or after it.
        let wait = 940 + (i as u64 % 4) * 30;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let (s, b) = answer(&app, "alice", &session, "accept").await;
        let (_, rec) = app.get(ADMIN, &format!("/api/v1/sessions/{session}")).await;
        match s {
            StatusCode::OK => {
                assert_eq!(rec["result"], "accepted", "{rec}");
                assert_eq!(task_state(&app, &t).await["state"], "connected");
                outcomes.insert("accepted");
            }
            StatusCode::CONFLICT => {
                assert_eq!(b["error"]["code"], "offer_expired", "{b}");
                assert_eq!(rec["result"], "rona", "{rec}");
                outcomes.insert("rona");
            }
            other => panic!("{other}: {b}"),
        }
        // Whatever won, the other never happened.
        let kinds = changes(&app, &t).await;
        assert!(
            !(kinds.contains(&"task.rona".to_string())
                && kinds.contains(&"task.accepted".to_string())),
            "{kinds:?}"
        );
        // The pause after a RONA is 0 s here, but a withdrawn offer event may still arrive: skip it.
        let _ = alice
            .collect_kind("offer_withdrawn", Duration::from_millis(50))
            .await;
    }
    eprintln!("race outcomes seen: {outcomes:?}");
    app.stop().await;
}

async fn overflow_after_max_ronas(db: Db) {
    let svc = "id = \"support\"\nname = \"Support\"\nrona_timeout_secs = 1\nmax_ronas = 1\noverflow_service = \"backoffice\"";
    let back = "id = \"backoffice\"\nname = \"Backoffice\"\ndistribution = \"pickup\"";
    let app = start(db, |u| {
        config(u, 60, &[svc, back], &[("alice", &["support"], EMAIL3)])
    })
    .await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let t = task(&app, "support", "email", "Nobody home", json!({})).await;
    alice.expect_kind("offer", PROMPT, "the offer").await;
    alice
        .expect_kind("offer_withdrawn", PROMPT, "the RONA")
        .await;
    eventually(PROMPT, "the task in the overflow service", || async {
        let t = task_state(&app, &t).await;
        t["service"] == "backoffice" && t["state"] == "queued"
    })
    .await;
    assert!(
        changes(&app, &t)
            .await
            .contains(&"task.overflowed".to_string())
    );
    let (_, q) = app.get(ADMIN, "/api/v1/ops/queues").await;
    let back = q["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["service"] == "backoffice" && q["modality"] == "email")
        .unwrap()
        .clone();
    assert_eq!(
        (back["queued"].as_i64(), back["distribution"].as_str()),
        (Some(1), Some("pickup")),
        "{back}"
    );
    // A service another one overflows into cannot be deleted.
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/services/spare",
            json!({"name": "Spare"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/services/support",
            json!({"name": "Support", "rona_timeout_secs": 1, "max_ronas": 1, "overflow_service": "spare"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .send(app.request(
            reqwest::Method::DELETE,
            ADMIN,
            "/api/v1/admin/services/spare",
        ))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(
        b["error"]["message"],
        "service 'support' overflows into service 'spare': change its overflow_service first"
    );
    app.stop().await;
}

on_both_backends!(
    offer_accept_and_its_record,
    a_decline_sends_the_task_to_the_next_agent,
    an_unanswered_offer_ronas_and_pauses_the_agent,
    broadcast_offers_to_all_and_the_first_accept_wins,
    priorities_across_services_come_first_then_age,
    capacity_holds_under_concurrent_arrivals,
    an_agent_who_goes_away_gets_their_offers_returned,
    transfer_to_a_service_and_to_an_agent,
    a_customer_who_leaves_cancels_the_offer,
    an_outcome_ends_the_offers_of_others,
    leaving_a_service_withdraws_its_offers,
    a_backlog_of_mail_hides_no_chat,
    a_rona_never_wins_over_an_accept,
    overflow_after_max_ronas,
);
