//! `GET /api/v1/me/events`: the holding agent is told when a customer's mail
//! joins their open task, and of task changes; only they are told; a client
//! that reconnects with `Last-Event-ID` misses nothing; and on PostgreSQL an
//! event committed by one worker reaches a stream served by another.
mod support;

use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::app::{ADMIN, ALICE, BOB, Db, TestApp, TestDb, base_config, maildir_config};
use support::mail::{deliver_maildir, mail, wait_for};
use support::process::{Guarded, serve};
use support::sse::{EventStream, PROMPT};

const WAIT: Duration = Duration::from_secs(20);

/// The next event on `stream` is the one `own_event` made for `task`:
/// nothing came before it (the positive control of a "nothing arrives"
/// check: the stream works, and what it did not carry was not merely late).
async fn next_is_own(stream: &mut EventStream, task: &str, what: &str) {
    let e = stream.expect(what).await;
    assert_eq!(
        e.data["task_id"].as_str(),
        Some(task),
        "{what}: another event came first: {e:?}"
    );
}

async fn spawn(db: Db) -> (TestApp, PathBuf) {
    let db = TestDb::create(db).await;
    let inbox = db.dir().join("inbox");
    let text = maildir_config(&db.url, &inbox);
    (TestApp::spawn_on(db, Some(text)).await, inbox)
}

/// A customer's first mail becomes a task that Alice picks up; returns its id.
async fn task_held_by_alice(app: &TestApp, inbox: &Path) -> String {
    deliver_maildir(
        inbox,
        "1.host",
        &mail(
            "Cleo <cleo@customer.example>",
            "Invoice",
            "c1@customer.example",
            &[],
            "Where is it?",
        ),
    );
    let task = wait_for(WAIT, "the task", || async {
        let (_, b) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        b["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    app.pickup(ALICE, &task).await;
    task
}

/// An event for the agent of `token` alone: a task of its own, picked up
/// and marked handled. Returns the task the event names.
async fn own_event(app: &TestApp, token: &str) -> String {
    let task = app
        .new_task("im", "Own event", "own@customer.example")
        .await;
    app.pickup(token, &task).await;
    let (s, b) = app
        .post(token, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    task
}

fn customer_reply(n: u32) -> Vec<u8> {
    mail(
        "Cleo <cleo@customer.example>",
        "Re: Invoice",
        &format!("c{n}@customer.example"),
        &[("In-Reply-To", "<c1@customer.example>")],
        "Found it, but the total is wrong.",
    )
}

async fn holding_agent_is_told_and_nobody_else(db: Db) {
    let (app, inbox) = spawn(db).await;
    let task = task_held_by_alice(&app, &inbox).await;
    let mut alice = EventStream::open_with(&app.url, ALICE, None).await;
    let mut bob = EventStream::open_with(&app.url, BOB, None).await;

    deliver_maildir(&inbox, "2.host", &customer_reply(2));
    let e = alice.expect("the new message").await;
    assert_eq!(e.event, "message", "{e:?}");
    assert_eq!(e.data["type"], "message");
    assert_eq!(e.data["task_id"], task.as_str());
    assert_eq!(e.data["disposition"], "appended");
    assert_eq!(e.data["from"], "cleo@customer.example");
    assert_eq!(e.data["subject"], "Re: Invoice");
    let first_id = e.id.clone().expect("events are numbered");
    // The message it names is the one on the task.
    let (_, m) = app
        .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    assert_eq!(m["items"][1]["id"], e.data["message_id"], "{m}");

    // Marking the task handled is announced too (other tabs follow).
    let (s, b) = app
        .post(ALICE, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let e = alice.expect("the task change").await;
    assert_eq!(e.event, "task");
    assert_eq!(
        (e.data["task_id"].as_str(), e.data["state"].as_str()),
        (Some(task.as_str()), Some("wrap_up"))
    );
    let second_id = e.id.clone().expect("numbered");
    assert!(
        second_id.parse::<i64>().unwrap() > first_id.parse::<i64>().unwrap(),
        "{first_id} then {second_id}"
    );

    // Bob holds nothing: he was told nothing. His stream works (his own
    // event reaches it) and nothing of Alice's came before.
    let bobs = own_event(&app, BOB).await;
    next_is_own(&mut bob, &bobs, "Bob's own event, first").await;

    // Reconnecting with Last-Event-ID replays exactly what came after it.
    let before_first = (first_id.parse::<i64>().unwrap() - 1).to_string();
    let mut again = EventStream::open_with(&app.url, ALICE, Some(&before_first)).await;
    let ids: Vec<String> = vec![
        again.expect("replay 1").await.id.unwrap(),
        again.expect("replay 2").await.id.unwrap(),
    ];
    assert_eq!(ids, vec![first_id.clone(), second_id.clone()]);
    let mut after = EventStream::open_with(&app.url, ALICE, Some(&first_id)).await;
    assert_eq!(after.expect("the second only").await.id, Some(second_id));
    // Then the next new one, nothing replayed twice.
    let alices = own_event(&app, ALICE).await;
    next_is_own(&mut after, &alices, "the next new event").await;

    // The server stops promptly even with streams open.
    let stopping = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;
    assert!(stopping.is_ok(), "shutdown waits for no event stream");
    drop((alice, bob, again, after));
}

async fn bad_requests_get_clear_errors(db: Db) {
    let (app, _) = spawn(db).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/me/events", app.url);
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for (header, query) in [(Some("yesterday"), ""), (None, "?after=-3")] {
        let mut req = client.get(format!("{url}{query}")).bearer_auth(ALICE);
        if let Some(h) = header {
            req = req.header("Last-Event-ID", h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }
    let r = client
        .get(format!("{url}?since=1"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "unknown parameters are refused"
    );
    app.stop().await;
}

on_both_backends!(
    holding_agent_is_told_and_nobody_else,
    bad_requests_get_clear_errors
);

/// Another worker process on the same PostgreSQL, serving HTTP only
/// (killed when the guard is dropped).
fn serve_elsewhere(db_url: &str, dir: &Path) -> (Guarded, String) {
    let port = support::servers::free_port();
    let path = dir.join("other.toml");
    let text = base_config(db_url).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&path, text).unwrap();
    (serve(&path), format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_reaches_a_stream_on_another_worker() {
    let (app, inbox) = spawn(Db::Postgres).await;
    let task = task_held_by_alice(&app, &inbox).await;
    let (_other, other_url) = serve_elsewhere(&app.db.url, app.db.dir());
    wait_for(WAIT, "the other worker to answer", || async {
        let r = reqwest::get(format!("{other_url}/readyz")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let mut alice = EventStream::open_with(&other_url, ALICE, None).await;
    // Ingested (and committed) by this process, streamed by the other one.
    let sent = Instant::now();
    deliver_maildir(&inbox, "2.host", &customer_reply(2));
    let e = alice.expect("the message, via NOTIFY").await;
    assert_eq!(e.event, "message");
    assert_eq!(e.data["task_id"], task.as_str());
    assert!(sent.elapsed() < PROMPT, "{:?}", sent.elapsed());
    // And a second one, so the listener keeps working after the first.
    deliver_maildir(&inbox, "3.host", &customer_reply(3));
    let e = alice.expect("the second message").await;
    assert_eq!(e.data["task_id"], task.as_str());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_can_start_from_a_number_in_the_query() {
    let (app, inbox) = spawn(Db::Sqlite).await;
    let task = task_held_by_alice(&app, &inbox).await;
    deliver_maildir(&inbox, "2.host", &customer_reply(2));
    wait_for(WAIT, "the reply stored", || async {
        (app.count("SELECT count(*) FROM messages").await >= 2).then_some(())
    })
    .await;
    // Opened after the fact: a plain stream starts with the next event, but
    // `?after=0` replays what is retained.
    let mut late = EventStream::open_with(&app.url, ALICE, None).await;
    let alices = own_event(&app, ALICE).await;
    next_is_own(
        &mut late,
        &alices,
        "the next event, not the earlier message",
    )
    .await;
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/me/events?after=0", app.url))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    let mut replay = EventStream::from_response(r);
    let e = replay.expect("the retained event").await;
    assert_eq!(e.data["task_id"], task.as_str());
    drop((late, replay));
    app.stop().await;
}

/// A queued reply's fate reaches its author: `sent` (with the Message-ID it
/// went out with) or `failed` for good (with the server's answer).
async fn reply_results_are_announced(db: Db) {
    use support::smtp::{SmtpSink, SmtpSinkOptions};
    support::smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let db = TestDb::create(db).await;
    let inbox = db.dir().join("inbox");
    let text = maildir_config(&db.url, &inbox)
        + &format!(
            "\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout_secs = 5\nretry_base_secs = 1\n",
            sink.port
        );
    let app = TestApp::spawn_on(db, Some(text)).await;
    let task = task_held_by_alice(&app, &inbox).await;
    let mut alice = EventStream::open_with(&app.url, ALICE, None).await;

    let send = |task: String| {
        let app = &app;
        async move {
            let (s, draft) = app
                .post(
                    ALICE,
                    &format!("/api/v1/tasks/{task}/drafts"),
                    serde_json::json!({"kind": "reply"}),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{draft}");
            let id = draft["id"].as_str().unwrap().to_string();
            let (s, b) = app
                .post(ALICE, &format!("/api/v1/drafts/{id}/send"), Value::Null)
                .await;
            assert_eq!(s, StatusCode::ACCEPTED, "{b}");
            id
        }
    };
    let draft = send(task.clone()).await;
    // Made, then queued: told as it happens, so that her other pages show
    // the thread as it is (another tab's Reply opens this draft).
    for (reason, state) in [("created", "draft"), ("queued", "queued")] {
        let e = alice.expect(reason).await;
        assert_eq!(
            (
                e.event.as_str(),
                e.data["draft_id"].as_str(),
                e.data["state"].as_str(),
                e.data["reason"].as_str(),
                e.data["kind"].as_str()
            ),
            (
                "draft",
                Some(draft.as_str()),
                Some(state),
                Some(reason),
                Some("reply")
            )
        );
    }
    let e = alice.expect("the reply sent").await;
    assert_eq!(e.event, "draft");
    assert_eq!(
        (
            e.data["draft_id"].as_str(),
            e.data["state"].as_str(),
            e.data["reason"].as_str()
        ),
        (Some(draft.as_str()), Some("sent"), Some("sent"))
    );
    assert_eq!(e.data["task_id"], task.as_str());
    assert_eq!(sink.messages().len(), 1);
    let sent_id = e.data["message_id"]
        .as_str()
        .expect("the Message-ID")
        .to_string();
    let (_, d) = app.get(ALICE, &format!("/api/v1/drafts/{draft}")).await;
    assert_eq!(d["message_id"].as_str(), Some(sent_id.as_str()), "{d}");

    // A customer whose server refuses the reply (the sink answers 550).
    deliver_maildir(
        &inbox,
        "9.host",
        &mail(
            "reject-me@customer.example",
            "Refund",
            "r1@customer.example",
            &[],
            "x",
        ),
    );
    let refused = wait_for(WAIT, "the second task", || async {
        let (_, b) = app
            .get(ADMIN, "/api/v1/tasks?modality=email&state=queued")
            .await;
        b["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    app.pickup(ALICE, &refused).await;
    // Her pickup is told to every page of hers (another tab follows).
    let e = alice.expect("the pickup").await;
    assert_eq!(e.event, "task");
    assert_eq!(
        (
            e.data["task_id"].as_str(),
            e.data["state"].as_str(),
            e.data["reason"].as_str()
        ),
        (Some(refused.as_str()), Some("connected"), Some("picked_up"))
    );
    let draft = send(refused.clone()).await;
    for reason in ["created", "queued"] {
        let e = alice.expect(reason).await;
        assert_eq!(e.data["reason"].as_str(), Some(reason), "{:?}", e.data);
    }
    let e = alice.expect("the reply failed").await;
    assert_eq!(e.event, "draft");
    assert_eq!(
        (e.data["draft_id"].as_str(), e.data["state"].as_str()),
        (Some(draft.as_str()), Some("failed"))
    );
    assert_eq!(e.data["kind"], "reply", "{:?}", e.data);
    assert!(
        e.data["error"].as_str().unwrap_or_default().contains("550"),
        "{:?}",
        e.data
    );
    assert_eq!(sink.messages().len(), 1, "nothing more was accepted");
    // A draft discarded is told too (another tab's thread drops it).
    let (s, d) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{refused}/drafts"),
            serde_json::json!({"kind": "forward"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    let (s, b) = app
        .send(app.request(
            reqwest::Method::DELETE,
            ALICE,
            &format!("/api/v1/drafts/{id}"),
        ))
        .await;
    assert!(s.is_success(), "{s} {b}");
    for reason in ["created", "discarded"] {
        let e = alice.expect(reason).await;
        assert_eq!(
            (e.data["draft_id"].as_str(), e.data["reason"].as_str()),
            (Some(id.as_str()), Some(reason)),
            "{:?}",
            e.data
        );
    }

    // Her part ended and saved: told too, with the task concluded.
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{refused}/handled"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let e = alice.expect("the task handled").await;
    assert_eq!(
        (e.event.as_str(), e.data["state"].as_str()),
        ("task", Some("wrap_up"))
    );
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{refused}")).await;
    let session = t["sessions"][0]["id"]
        .as_str()
        .expect("her session")
        .to_string();
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let e = alice.expect("the save").await;
    assert_eq!(e.event, "task");
    assert_eq!(
        (
            e.data["session_id"].as_str(),
            e.data["state"].as_str(),
            e.data["reason"].as_str()
        ),
        (Some(session.as_str()), Some("concluded"), Some("saved"))
    );
    drop(alice);
    app.stop().await;
}

on_both_backends!(reply_results_are_announced);

/// A stream outlives no token: once the agent's token is replaced, the next
/// beat (15 s) sends an `error` event and ends the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_ends_the_stream() {
    let (app, _inbox) = spawn(Db::Sqlite).await;
    let mut alice = EventStream::open_with(&app.url, ALICE, None).await;
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/agents/alice",
            serde_json::json!({
                "name": "Alice", "email": "alice@example.com",
                "token": "alice-new-token-0123456789", "services": ["support"]
            }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = app.get(ALICE, "/api/v1/me/sessions").await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the old token is refused at once"
    );
    let e = alice
        .next(Duration::from_secs(25))
        .await
        .expect("an error event within the beat");
    assert_eq!(e.event, "error");
    assert_eq!(e.data["error"], "unauthorized");
    assert!(
        alice.ends(Duration::from_secs(20)).await,
        "the stream has ended"
    );
    app.stop().await;
}

/// After a transfer the customer's next mail goes to the new holder only:
/// the agent who passed the task on is told of the transfer, then nothing.
async fn a_transferred_task_tells_its_new_holder_only(db: Db) {
    use support::app::CAROL;
    let (app, inbox) = spawn(db).await;
    let task = task_held_by_alice(&app, &inbox).await;
    let mut alice = EventStream::open_with(&app.url, ALICE, None).await;
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/transfer"),
            serde_json::json!({"service": "sales"}),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let e = alice.expect("the transfer").await;
    assert_eq!(
        (e.event.as_str(), e.data["reason"].as_str()),
        ("task", Some("transferred"))
    );
    app.pickup(CAROL, &task).await;
    let mut carol = EventStream::open_with(&app.url, CAROL, None).await;
    deliver_maildir(&inbox, "2.host", &customer_reply(2));
    let e = carol.expect("the new message, for Carol").await;
    assert_eq!(
        (e.event.as_str(), e.data["task_id"].as_str()),
        ("message", Some(task.as_str()))
    );
    // Alice no longer holds the task: her stream works, and her own next
    // event is the first after the transfer.
    let alices = own_event(&app, ALICE).await;
    next_is_own(
        &mut alice,
        &alices,
        "Alice's own event, not Carol's message",
    )
    .await;
    drop((alice, carol));
    app.stop().await;
}

on_both_backends!(a_transferred_task_tells_its_new_holder_only);

/// One token cannot hold the server with streams: the ninth concurrent
/// stream of an agent is refused (429); closing one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_holds_at_most_eight_streams() {
    let (app, _inbox) = spawn(Db::Sqlite).await;
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(EventStream::open_with(&app.url, ALICE, None).await);
    }
    let url = format!("{}/api/v1/me/events", app.url);
    let refused = reqwest::Client::new()
        .get(&url)
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    // Bob is not affected by Alice's streams.
    let _bob = EventStream::open_with(&app.url, BOB, None).await;
    // A closed stream gives its place back.
    open.pop();
    wait_for(WAIT, "a free place", || async {
        let r = reqwest::Client::new()
            .get(&url)
            .bearer_auth(ALICE)
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    drop(open);
    app.stop().await;
}
