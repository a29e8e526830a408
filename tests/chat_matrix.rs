//! Matrix chat intake against a real Synapse homeserver (started once for
//! this test binary): a customer invites the service's bot into a room and
//! writes → an IM task with the transcript; accept → the agent's Matrix
//! account is invited; transfer → the old agent removed, the new one
//! invited; the customer leaves → recorded. A worker SIGKILLed in the middle
//! of a burst of 500 messages → every message exactly once after restart;
//! two PostgreSQL workers, the syncing one killed → the other takes over.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use support::app::{Db, TestApp, TestDb};
use support::chat::{
    MatrixUser, Serve, Synapse, eventually, query_i64, query_text, unique, write_config,
};
use support::sse::EventStream;

const ADMIN: &str = "admin-token-0123456789";
const PROMPT: Duration = Duration::from_secs(20);

fn token(agent: &str) -> String {
    format!("{agent}-token-0123456789abcdef")
}

/// The Matrix accounts of one test: the service's bot, a customer, two agents.
struct People {
    bot: MatrixUser,
    customer: MatrixUser,
    alice: MatrixUser,
    bob: MatrixUser,
}

async fn people() -> People {
    let s = Synapse::shared();
    let u = unique();
    People {
        bot: s.user(&format!("bot{u}")).await,
        customer: s.user(&format!("customer{u}")).await,
        alice: s.user(&format!("alice{u}")).await,
        bob: s.user(&format!("bob{u}")).await,
    }
}

fn config(db_url: &str, p: &People, http: &str, worker: Option<&str>) -> String {
    let worker = worker
        .map(|w| format!("[ingest]\nworker_id = \"{w}\"\n"))
        .unwrap_or_default();
    let mut t = format!(
        r#"
[database]
url = "{db_url}"
max_connections = 8
ownership_check_ms = 300
keepalive_secs = 2
[http]
bind = "{http}"
[routing]
presence_grace_secs = 60
sweep_ms = 500
[chat]
membership_sweep_ms = 500
{worker}
[[services]]
id = "chat"
name = "Chat"
distribution = "longest_idle"

[[chat_channels]]
id = "matrix"
service = "chat"
kind = "matrix"
homeserver_url = "{}"
user_id = "{}"
access_token = "{}"
relay = true
"#,
        Synapse::shared().url(),
        p.bot.user_id,
        p.bot.token
    );
    for (id, m) in [("alice", &p.alice), ("bob", &p.bob)] {
        t.push_str(&format!(
            "[[agents]]\nid = \"{id}\"\nname = \"{id}\"\nemail = \"{id}@example.com\"\ntoken = \"{}\"\nservices = [\"chat\"]\nmatrix_user_id = \"{}\"\n",
            token(id),
            m.user_id
        ));
    }
    t.push_str(&format!(
        "[[agents]]\nid = \"admin\"\nname = \"Admin\"\nemail = \"admin@example.com\"\ntoken = \"{ADMIN}\"\nadmin = true\n"
    ));
    t
}

async fn im_tasks(app: &TestApp) -> Vec<Value> {
    let (s, b) = app.get(ADMIN, "/api/v1/tasks?modality=im").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["items"].as_array().cloned().unwrap_or_default()
}

async fn transcript(app: &TestApp, task: &str) -> Vec<(String, String)> {
    let (s, b) = app
        .get(ADMIN, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["from"].as_str().unwrap().to_string(),
                m["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The id of the one IM task, once there is one.
async fn the_task(app: &TestApp) -> String {
    eventually(PROMPT, "an IM task", || async {
        im_tasks(app).await.len() == 1
    })
    .await;
    im_tasks(app).await[0]["id"].as_str().unwrap().to_string()
}

/// Accepts the offer of `task` told on `stream`; the session's id.
async fn accept(app: &TestApp, stream: &mut EventStream, agent: &str, task: &str) -> String {
    let offer = stream
        .expect_kind("offer", PROMPT, "an offer of the chat")
        .await;
    assert_eq!(offer.data["task_id"], task);
    let session = offer.data["session_id"].as_str().unwrap();
    let (s, b) = app
        .post(
            &token(agent),
            &format!("/api/v1/offers/{session}/accept"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Every page of the agent's is told the task is theirs now.
    let t = stream.expect_kind("task", PROMPT, "the accept told").await;
    assert_eq!(t.data["reason"], "accepted");
    session.to_string()
}

async fn membership_is(customer: &MatrixUser, room: &str, user: &str, want: Option<&str>) {
    eventually(
        PROMPT,
        &format!("{user} to be {want:?} in the room"),
        || async { customer.membership_of(room, user).await.as_deref() == want },
    )
    .await;
}

async fn the_matrix_round_trip(db: Db) {
    let p = people().await;
    let test_db = TestDb::create(db).await;
    let text = config(&test_db.url, &p, "127.0.0.1:0", None);
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;

    // The customer opens a room with the bot and writes.
    let room = p
        .customer
        .create_room("Parcel is late", &[&p.bot.user_id])
        .await;
    p.customer.send(&room, "Hello from Matrix").await;
    eventually(PROMPT, "an IM task with the first message", || async {
        let tasks = im_tasks(&app).await;
        tasks.len() == 1
            && transcript(&app, tasks[0]["id"].as_str().unwrap())
                .await
                .len()
                == 1
    })
    .await;
    let task = im_tasks(&app).await[0].clone();
    let task_id = task["id"].as_str().unwrap().to_string();
    assert_eq!(task["service"], "chat");
    assert_eq!(task["subject"], "Parcel is late");
    assert_eq!(task["customer"]["address"], p.customer.user_id.as_str());
    assert_eq!(
        transcript(&app, &task_id).await,
        vec![("customer".to_string(), "Hello from Matrix".to_string())]
    );
    assert_eq!(
        p.customer
            .membership_of(&room, &p.bot.user_id)
            .await
            .as_deref(),
        Some("join")
    );

    // Accept: alice's Matrix account is invited into the room.
    accept(&app, &mut alice, "alice", &task_id).await;
    membership_is(&p.customer, &room, &p.alice.user_id, Some("invite")).await;

    // More messages: transcript and the holder's stream.
    p.customer.send(&room, "Are you there?").await;
    let m = alice
        .expect_kind("chat_message", PROMPT, "the customer's next message")
        .await;
    assert_eq!(m.data["text"], "Are you there?");
    assert_eq!(m.data["task_id"], task_id.as_str());
    p.customer.send(&room, "Order A-1001").await;
    alice
        .expect_kind("chat_message", PROMPT, "another message")
        .await;
    let t = transcript(&app, &task_id).await;
    assert_eq!(
        t.iter().map(|(_, text)| text.as_str()).collect::<Vec<_>>(),
        vec!["Hello from Matrix", "Are you there?", "Order A-1001"]
    );

    // Relay: what alice writes on the task page goes into the room as the bot, once.
    let (s, r) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task_id}/chat-messages"),
            json!({"text": "We are on it"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    eventually(PROMPT, "the relayed reply in the room", || async {
        p.customer
            .recent_messages(&room)
            .await
            .contains(&(p.bot.user_id.clone(), "We are on it".to_string()))
    })
    .await;
    eventually(PROMPT, "the reply marked sent", || async {
        let (_, b) = app
            .get(ADMIN, &format!("/api/v1/tasks/{task_id}/messages"))
            .await;
        b["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "We are on it" && m["delivery"] == "sent")
    })
    .await;
    // A reply larger than a Matrix event can carry is refused here, at
    // once, rather than by the homeserver later.
    let (s, r) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task_id}/chat-messages"),
            json!({"text": "\u{1F600}".repeat(16_384)}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    let said = r["error"]["message"].as_str().unwrap_or_default();
    assert!(said.starts_with("text: ") && said.contains("60000"), "{r}");
    // The sync that sees the bot's own message again does not store it twice.
    p.customer.send(&room, "Thanks").await;
    alice
        .expect_kind("chat_message", PROMPT, "the customer's thanks")
        .await;
    let t = transcript(&app, &task_id).await;
    assert_eq!(
        t.iter().filter(|(_, text)| text == "We are on it").count(),
        1,
        "{t:?}"
    );
    assert_eq!(t.last().map(|(_, text)| text.as_str()), Some("Thanks"));

    // The handle opens the room on matrix.to.
    let (s, h) = app
        .get(
            &token("alice"),
            &format!("/api/v1/tasks/{task_id}/chat-handle"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{}", app.url, h["url"].as_str().unwrap()))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let encoded: String = url::form_urlencoded::byte_serialize(room.as_bytes()).collect();
    assert_eq!(
        resp.headers()["location"],
        format!("https://matrix.to/#/{encoded}").as_str()
    );

    // Transfer to bob: alice is removed from the room, bob invited.
    let mut bob = EventStream::open(&app.url, &token("bob")).await;
    let (s, b) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task_id}/transfer"),
            json!({"agent": "bob"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    accept(&app, &mut bob, "bob", &task_id).await;
    membership_is(&p.customer, &room, &p.bob.user_id, Some("invite")).await;
    membership_is(&p.customer, &room, &p.alice.user_id, Some("leave")).await;

    // The customer leaves: recorded on the connected task, bob told.
    p.customer.leave(&room).await;
    let e = bob.expect_kind("task", PROMPT, "the customer left").await;
    assert_eq!(e.data["reason"], "customer_left");
    let (_, view) = app.get(ADMIN, &format!("/api/v1/tasks/{task_id}")).await;
    assert_eq!(view["state"], "connected");
    assert!(view["customer_left_at"].is_string(), "{view}");
    assert_eq!(view["chat"]["state"], "left");

    let (_, ops) = app.get(ADMIN, "/api/v1/ops/channels").await;
    let ch = &ops["items"][0];
    assert_eq!(ch["kind"], "matrix");
    assert_eq!(ch["up"], true, "{ch}");
    assert_eq!(ch["counts"]["chats"], 1);
    app.stop().await;
}

/// The holding agent declining the bot's invite, or joining and leaving,
/// is invited again (once per leave), so that they can reach the customer.
async fn an_agent_who_leaves_is_invited_again(db: Db) {
    let p = people().await;
    let test_db = TestDb::create(db).await;
    let text = config(&test_db.url, &p, "127.0.0.1:0", None);
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;

    let room = p.customer.create_room("Come back", &[&p.bot.user_id]).await;
    p.customer.send(&room, "Anyone?").await;
    let task_id = the_task(&app).await;
    accept(&app, &mut alice, "alice", &task_id).await;
    membership_is(&p.customer, &room, &p.alice.user_id, Some("invite")).await;

    // Alice declines the invite: she is invited again.
    p.alice.leave(&room).await;
    membership_is(&p.customer, &room, &p.alice.user_id, Some("invite")).await;
    // She joins, then leaves: invited again.
    p.alice.join(&room).await;
    membership_is(&p.customer, &room, &p.alice.user_id, Some("join")).await;
    p.alice.leave(&room).await;
    membership_is(&p.customer, &room, &p.alice.user_id, Some("invite")).await;
    p.alice.join(&room).await;
    membership_is(&p.customer, &room, &p.alice.user_id, Some("join")).await;
    app.stop().await;
}

/// Once the task is over (handled and saved), its last agent is removed
/// from the room (she stays through wrap-up); a line an agent writes there
/// afterwards is part of no task; the customer writing again makes a new
/// task, whose agent is invited as usual.
async fn the_last_agent_is_removed_when_the_task_is_over(db: Db) {
    let p = people().await;
    let test_db = TestDb::create(db).await;
    let text = config(&test_db.url, &p, "127.0.0.1:0", None);
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;

    let room = p.customer.create_room("Done soon", &[&p.bot.user_id]).await;
    p.customer.send(&room, "Quick question").await;
    let task_id = the_task(&app).await;
    let session = accept(&app, &mut alice, "alice", &task_id).await;
    membership_is(&p.customer, &room, &p.alice.user_id, Some("invite")).await;
    p.alice.join(&room).await;
    p.alice.send(&room, "Answered").await;
    eventually(PROMPT, "alice's line in the transcript", || async {
        transcript(&app, &task_id).await.len() == 2
    })
    .await;

    // Handled: through wrap-up she stays in the room.
    let (s, b) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task_id}/handled"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        p.customer
            .membership_of(&room, &p.alice.user_id)
            .await
            .as_deref(),
        Some("join")
    );

    // Saved: the task is over and she is removed.
    let (s, b) = app
        .post(
            &token("alice"),
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    membership_is(&p.customer, &room, &p.alice.user_id, Some("leave")).await;

    // An agent the customer lets in writes: the line joins no task (not
    // the saved one, not the next).
    p.customer.invite(&room, &p.bob.user_id).await;
    p.bob.join(&room).await;
    p.bob.send(&room, "A stray line").await;
    p.customer.send(&room, "One more thing").await;
    eventually(
        PROMPT,
        "a new task for the customer's next line",
        || async { im_tasks(&app).await.len() == 2 },
    )
    .await;
    let next = im_tasks(&app)
        .await
        .iter()
        .filter_map(|t| t["id"].as_str().map(String::from))
        .find(|id| *id != task_id)
        .unwrap();
    assert_eq!(
        transcript(&app, &task_id).await,
        vec![
            ("customer".to_string(), "Quick question".to_string()),
            ("agent".to_string(), "Answered".to_string()),
        ]
    );
    assert_eq!(
        transcript(&app, &next).await,
        vec![("customer".to_string(), "One more thing".to_string())]
    );

    // The new task's agent is invited as usual.
    accept(&app, &mut alice, "alice", &next).await;
    membership_is(&p.customer, &room, &p.alice.user_id, Some("invite")).await;
    app.stop().await;
}

/// A holder with no `matrix_user_id` cannot be invited into the room: the
/// channel's last error on the operators' page names them.
async fn a_holder_without_a_matrix_account_is_named_to_operators(db: Db) {
    let p = people().await;
    let test_db = TestDb::create(db).await;
    let mut text = config(&test_db.url, &p, "127.0.0.1:0", None);
    text.push_str(&format!(
        "[[agents]]\nid = \"carol\"\nname = \"carol\"\nemail = \"carol@example.com\"\ntoken = \"{}\"\nservices = [\"chat\"]\n",
        token("carol")
    ));
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let mut carol = EventStream::open(&app.url, &token("carol")).await;

    let room = p
        .customer
        .create_room("No account", &[&p.bot.user_id])
        .await;
    p.customer.send(&room, "Hello?").await;
    let task_id = the_task(&app).await;
    accept(&app, &mut carol, "carol", &task_id).await;
    eventually(
        PROMPT,
        "carol named in the channel's last error",
        || async {
            let (_, ops) = app.get(ADMIN, "/api/v1/ops/channels").await;
            ops["items"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("agent carol") && e.contains("matrix_user_id"))
        },
    )
    .await;
    app.stop().await;
}

/// A burst of `n` messages into `room`, sent one after another.
/// Another member of the customer's room leaving, or declining its invite,
/// is not the customer leaving: the task stays as it was. The customer
/// leaving still cancels the offered task.
async fn another_member_leaving_is_not_the_customer_leaving(db: Db) {
    let p = people().await;
    let s = Synapse::shared();
    let u = unique();
    let friend = s.user(&format!("friend{u}")).await;
    let decliner = s.user(&format!("decliner{u}")).await;
    let test_db = TestDb::create(db).await;
    let text = config(&test_db.url, &p, "127.0.0.1:0", None);
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;

    let room = p
        .customer
        .create_room(
            "Two of us",
            &[&p.bot.user_id, &friend.user_id, &decliner.user_id],
        )
        .await;
    friend.join(&room).await;
    p.customer.send(&room, "We both need help").await;
    let offer = alice
        .expect_kind("offer", PROMPT, "an offer of the chat")
        .await;
    let task_id = offer.data["task_id"].as_str().unwrap().to_string();
    let (_, view) = app.get(ADMIN, &format!("/api/v1/tasks/{task_id}")).await;
    assert_eq!(view["state"], "offered", "{view}");
    assert_eq!(view["customer"]["address"], p.customer.user_id.as_str());

    // The friend leaves, the other invitee declines; then the customer
    // writes again, so that the sync has taken in both leaves before.
    friend.leave(&room).await;
    decliner.leave(&room).await;
    p.customer.send(&room, "Still here").await;
    eventually(PROMPT, "the customer's second line", || async {
        transcript(&app, &task_id).await.len() == 2
    })
    .await;
    let (_, view) = app.get(ADMIN, &format!("/api/v1/tasks/{task_id}")).await;
    assert_eq!(view["state"], "offered", "{view}");
    assert!(view["customer_left_at"].is_null(), "{view}");
    assert_eq!(view["chat"]["state"], "open", "{view}");

    // The customer leaving is a leave: the offered task is cancelled.
    p.customer.leave(&room).await;
    eventually(PROMPT, "the task cancelled", || async {
        let (_, view) = app.get(ADMIN, &format!("/api/v1/tasks/{task_id}")).await;
        view["state"] == "cancelled"
    })
    .await;
    let (_, view) = app.get(ADMIN, &format!("/api/v1/tasks/{task_id}")).await;
    assert!(view["customer_left_at"].is_string(), "{view}");
    assert_eq!(view["chat"]["state"], "left", "{view}");
    app.stop().await;
}

fn burst(customer: MatrixUser, room: String, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..n {
            customer.send(&room, &format!("burst {i}")).await;
        }
    })
}

async fn sigkill_in_a_burst_of_500_then_every_message_once(db: Db) {
    let p = people().await;
    let test_db = TestDb::create(db).await;
    let port = support::servers::free_port();
    let path = write_config(
        &test_db,
        "w",
        &config(&test_db.url, &p, &format!("127.0.0.1:{port}"), None),
    );
    let mut worker = Serve::start(&path);
    let room = p.customer.create_room("Burst", &[&p.bot.user_id]).await;
    p.customer.send(&room, "first").await;
    let count = "SELECT count(*) FROM chat_messages";
    eventually(Duration::from_secs(60), "the first message", || async {
        query_i64(&test_db, count).await == 1
    })
    .await;
    let sender = burst(p.customer.clone(), room.clone(), 500);
    eventually(Duration::from_secs(60), "part of the burst", || async {
        query_i64(&test_db, count).await >= 60
    })
    .await;
    worker.sigkill();
    let at_kill = query_i64(&test_db, count).await;
    assert!(at_kill < 501, "the kill came after the burst");
    let mut worker = Serve::start(&path);
    sender.await.expect("the burst is sent");
    eventually(Duration::from_secs(90), "all 501 messages", || async {
        query_i64(&test_db, count).await >= 501
    })
    .await;
    // Give a doubled commit the chance to show, then count exactly.
    p.customer.send(&room, "last").await;
    eventually(Duration::from_secs(30), "the last message", || async {
        query_i64(&test_db, count).await >= 502
    })
    .await;
    assert_eq!(
        query_i64(&test_db, count).await,
        502,
        "every message exactly once"
    );
    assert_eq!(
        query_i64(&test_db, "SELECT count(DISTINCT text) FROM chat_messages").await,
        502
    );
    assert_eq!(
        query_i64(
            &test_db,
            "SELECT count(DISTINCT external_id) FROM chat_messages"
        )
        .await,
        502
    );
    assert_eq!(
        query_i64(&test_db, "SELECT count(*) FROM tasks").await,
        1,
        "one task"
    );
    worker.sigkill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_workers_the_syncing_one_killed() {
    let p = people().await;
    let test_db = TestDb::create(Db::Postgres).await;
    let ports = support::servers::free_ports(2);
    let paths: Vec<_> = ["w1", "w2"]
        .iter()
        .zip(&ports)
        .map(|(w, port)| {
            write_config(
                &test_db,
                w,
                &config(&test_db.url, &p, &format!("127.0.0.1:{port}"), Some(w)),
            )
        })
        .collect();
    let mut w1 = Some(Serve::start(&paths[0]));
    eventually(Duration::from_secs(60), "w1 to own the channel", || async {
        query_text(
            &test_db,
            "SELECT owner FROM ownership WHERE kind = 'chat_channel'",
        )
        .await
        .as_deref()
            == Some("w1")
    })
    .await;
    let mut w2 = Some(Serve::start(&paths[1]));
    let room = p.customer.create_room("Takeover", &[&p.bot.user_id]).await;
    for i in 0..20 {
        p.customer.send(&room, &format!("before {i}")).await;
    }
    let count = "SELECT count(*) FROM chat_messages";
    eventually(Duration::from_secs(60), "the first messages", || async {
        query_i64(&test_db, count).await == 20
    })
    .await;
    let owner = query_text(
        &test_db,
        "SELECT owner FROM ownership WHERE kind = 'chat_channel'",
    )
    .await;
    let survivor = if owner.as_deref() == Some("w1") {
        w1.take().expect("w1").sigkill();
        "w2"
    } else {
        w2.take().expect("w2").sigkill();
        "w1"
    };
    let killed = std::time::Instant::now();
    for i in 0..20 {
        p.customer.send(&room, &format!("after {i}")).await;
    }
    eventually(
        Duration::from_secs(30),
        "the other worker to take the channel over",
        || async {
            query_text(
                &test_db,
                "SELECT owner FROM ownership WHERE kind = 'chat_channel'",
            )
            .await
            .as_deref()
                == Some(survivor)
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the messages sent after the kill",
        || async { query_i64(&test_db, count).await >= 40 },
    )
    .await;
    let took = killed.elapsed();
    assert_eq!(
        query_i64(&test_db, count).await,
        40,
        "nothing lost or doubled"
    );
    assert_eq!(
        query_i64(
            &test_db,
            "SELECT count(DISTINCT external_id) FROM chat_messages"
        )
        .await,
        40
    );
    assert_eq!(query_i64(&test_db, "SELECT count(*) FROM tasks").await, 1);
    assert!(took < Duration::from_secs(30), "took over in {took:?}");
    drop((w1, w2));
}

on_both_backends!(
    the_matrix_round_trip,
    another_member_leaving_is_not_the_customer_leaving,
    an_agent_who_leaves_is_invited_again,
    the_last_agent_is_removed_when_the_task_is_over,
    a_holder_without_a_matrix_account_is_named_to_operators,
    sigkill_in_a_burst_of_500_then_every_message_once
);
