//! JetStream chat intake against a real NATS server (the machine's, or a
//! throwaway `nats-server -js` for this test binary): events become chats,
//! tasks and messages once, whatever is delivered twice; 2,000 events pulled
//! by two PostgreSQL workers, one SIGKILLed midway → every chat and message
//! exactly once.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use support::app::{Db, TestApp, TestDb};
use support::chat::{Nats, PrivateNats, Serve, TestStream, eventually, query_i64, write_config};

const ADMIN: &str = "admin-token-0123456789";

fn config(db_url: &str, stream: &TestStream, http: &str, worker: Option<&str>) -> String {
    config_on(&Nats::shared().url, db_url, stream, http, worker)
}

fn config_on(
    nats_url: &str,
    db_url: &str,
    stream: &TestStream,
    http: &str,
    worker: Option<&str>,
) -> String {
    let worker = worker
        .map(|w| format!("[ingest]\nworker_id = \"{w}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[database]
url = "{db_url}"
max_connections = 12
[http]
bind = "{http}"
{worker}
[[services]]
id = "chat"
name = "Chat"
distribution = "pickup"

[[chat_channels]]
id = "bus"
service = "chat"
kind = "jetstream"
url = "{}"
stream = "{}"
subject = "{}"
durable = "switchboard-test"
chat_url_template = "https://chat.example.com/c/{{chat_id}}"

[[agents]]
id = "admin"
name = "Admin"
email = "admin@example.com"
token = "{ADMIN}"
admin = true
"#,
        nats_url, stream.name, stream.subject
    )
}

/// The events of `chats` chats with `per_chat` events each (a start, then
/// messages), in publishing order.
fn events(prefix: &str, chats: usize, per_chat: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for c in 0..chats {
        let chat = format!("{prefix}-chat-{c}");
        out.push(json!({
            "id": format!("{chat}-0"), "channel": "bus", "type": "chat.started", "chat_id": chat,
            "customer": {"name": format!("Customer {c}"), "user_id": format!("visitor-{c}")},
            "text": format!("{chat} hello"),
        }));
        for m in 1..per_chat {
            let from = if m % 3 == 0 { "bot" } else { "customer" };
            out.push(json!({
                "id": format!("{chat}-{m}"), "channel": "bus", "type": "chat.message", "chat_id": chat,
                "from": from, "text": format!("{chat} message {m}"),
            }));
        }
    }
    out
}

async fn publish(stream: &TestStream, events: &[Value]) {
    let js = Nats::shared().jetstream().await;
    let mut acks = Vec::with_capacity(events.len());
    for e in events {
        acks.push(
            js.publish(
                stream.subject.clone(),
                serde_json::to_vec(e).unwrap().into(),
            )
            .await
            .expect("publish"),
        );
    }
    for a in acks {
        a.await.expect("the stream stored the event");
    }
}

async fn events_become_chats_once(db: Db) {
    let stream = TestStream::create(Nats::shared()).await;
    let test_db = TestDb::create(db).await;
    let text = config(&test_db.url, &stream, "127.0.0.1:0", None);
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let all = events("a", 10, 5);
    publish(&stream, &all).await;
    // A publisher's retry (same ids), and an event no one can apply.
    publish(&stream, &all[..7]).await;
    let js = Nats::shared().jetstream().await;
    // Over the webhook's 64 KiB, padded with spaces: refused the same way.
    let big = format!(
        "{}{}",
        json!({"id": "big-1", "channel": "bus", "type": "chat.started", "chat_id": "big-chat"}),
        " ".repeat(70 * 1024)
    );
    js.publish(stream.subject.clone(), big.into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish(stream.subject.clone(), "{\"id\": \"broken\"".into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "50 messages", || async {
        app.count("SELECT count(*) FROM chat_messages").await >= 50
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the malformed event recorded",
        || async {
            let (_, ops) = app.get(ADMIN, "/api/v1/ops/channels").await;
            ops["items"][0]["counts"]["errors"] == 2
        },
    )
    .await;
    // A positive control after the duplicates: the line kept flowing.
    publish(&stream, &events("b", 1, 2)).await;
    eventually(Duration::from_secs(30), "the control chat", || async {
        app.count("SELECT count(*) FROM chat_messages").await >= 52
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM chat_messages").await, 52);
    assert_eq!(app.count("SELECT count(*) FROM chats").await, 11);
    assert_eq!(
        app.count("SELECT count(*) FROM tasks WHERE modality = 'im'")
            .await,
        11
    );
    assert_eq!(app.count("SELECT count(*) FROM chat_events").await, 52);
    let (s, ops) = app.get(ADMIN, "/api/v1/ops/channels").await;
    assert_eq!(s, StatusCode::OK);
    let ch = &ops["items"][0];
    assert_eq!(ch["kind"], "jetstream");
    assert_eq!(ch["state"], "consuming", "{ch}");
    assert!(
        ch["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("malformed"),
        "{ch}"
    );
    // The publisher's retry counts as 7 duplicates, as on the webhook channel.
    assert_eq!(ch["counts"]["duplicates"], 7, "{ch}");
    // One chat's events keep the stream's order (no `sent_at`: the order of
    // arrival is the transcript's), and of two events under one id the
    // first one published wins.
    let mut ordered = events("o", 1, 30);
    ordered.push(json!({
        "id": "o-chat-0-5", "channel": "bus", "type": "chat.message", "chat_id": "o-chat-0",
        "from": "customer", "text": "a reused id",
    }));
    publish(&stream, &ordered).await;
    eventually(Duration::from_secs(60), "the ordered chat", || async {
        app.count("SELECT count(*) FROM chat_messages m JOIN chats c ON c.id = m.chat_id WHERE c.external_id = 'o-chat-0'")
            .await
            >= 30
    })
    .await;
    // The newest chat task is this chat's.
    let (_, tasks) = app.get(ADMIN, "/api/v1/tasks?modality=im").await;
    let task = tasks["items"][0]["id"].as_str().unwrap().to_string();
    // What the customer reached: the chat channel (a task made in a set).
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["system_parameters"]["reached"], "bus", "{t}");
    let (_, m) = app
        .get(ADMIN, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    let texts: Vec<&str> = m["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    let expected: Vec<String> = std::iter::once("o-chat-0 hello".to_string())
        .chain((1..30).map(|i| format!("o-chat-0 message {i}")))
        .collect();
    assert_eq!(texts, expected, "{m}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_events_two_postgres_workers_one_killed() {
    let stream = TestStream::create(Nats::shared()).await;
    let test_db = TestDb::create(Db::Postgres).await;
    let ports = support::servers::free_ports(2);
    let paths: Vec<_> = ["j1", "j2"]
        .iter()
        .zip(&ports)
        .map(|(w, port)| {
            write_config(
                &test_db,
                w,
                &config(&test_db.url, &stream, &format!("127.0.0.1:{port}"), Some(w)),
            )
        })
        .collect();
    let mut w1 = Serve::start(&paths[0]);
    let w2 = Serve::start(&paths[1]);
    let count = "SELECT count(*) FROM chat_messages";
    // Both workers are up (the schema exists) before the events go out.
    eventually(Duration::from_secs(60), "the workers to start", || async {
        query_i64(
            &test_db,
            "SELECT count(*) FROM chat_channels WHERE status = 'consuming'",
        )
        .await
            == 1
    })
    .await;
    let all = events("z", 200, 10);
    assert_eq!(all.len(), 2000);
    let publisher = {
        let all = all.clone();
        let name = stream.name.clone();
        let subject = stream.subject.clone();
        tokio::spawn(async move {
            let js = Nats::shared().jetstream().await;
            let _ = name;
            for chunk in all.chunks(100) {
                let mut acks = Vec::new();
                for e in chunk {
                    acks.push(
                        js.publish(subject.clone(), serde_json::to_vec(e).unwrap().into())
                            .await
                            .unwrap(),
                    );
                }
                for a in acks {
                    a.await.unwrap();
                }
            }
        })
    };
    eventually(
        Duration::from_secs(120),
        "a fifth of the events",
        || async { query_i64(&test_db, count).await >= 400 },
    )
    .await;
    w1.sigkill();
    let at_kill = query_i64(&test_db, count).await;
    assert!(
        at_kill < 2000,
        "the kill came after the last event ({at_kill})"
    );
    publisher.await.expect("all published");
    eventually(Duration::from_secs(180), "all 2,000 events", || async {
        query_i64(&test_db, count).await >= 2000
    })
    .await;
    // Redeliveries of what the killed worker held have come and gone.
    tokio::time::sleep(support_ack_wait()).await;
    assert_eq!(
        query_i64(&test_db, count).await,
        2000,
        "every message exactly once"
    );
    assert_eq!(
        query_i64(
            &test_db,
            "SELECT count(DISTINCT external_id) FROM chat_messages"
        )
        .await,
        2000
    );
    assert_eq!(
        query_i64(&test_db, "SELECT count(*) FROM chats").await,
        200,
        "every chat once"
    );
    assert_eq!(
        query_i64(&test_db, "SELECT count(*) FROM tasks").await,
        200,
        "one task per chat"
    );
    assert_eq!(
        query_i64(&test_db, "SELECT count(*) FROM chat_events").await,
        2000
    );
    assert_eq!(
        query_i64(
            &test_db,
            "SELECT count(*) FROM chats WHERE messages_total <> 10"
        )
        .await,
        0,
        "each chat has its ten messages"
    );
    drop(w2);
}

/// A little longer than the consumer's ack wait.
fn support_ack_wait() -> Duration {
    switchboard::chat::jetstream::ACK_WAIT + Duration::from_secs(2)
}

/// The bus channel as operators see it: (state, up, last error).
async fn bus(app: &TestApp) -> (String, bool, String) {
    let (s, ops) = app.get(ADMIN, "/api/v1/ops/channels").await;
    assert_eq!(s, StatusCode::OK, "{ops}");
    let ch = &ops["items"][0];
    (
        ch["state"].as_str().unwrap_or_default().to_string(),
        ch["up"].as_bool().unwrap_or_default(),
        ch["last_error"].as_str().unwrap_or_default().to_string(),
    )
}

/// `switchboard_chat_channel_up` of the bus channel.
async fn bus_up_metric(app: &TestApp) -> Option<String> {
    let text = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("switchboard_chat_channel_up{") && l.contains("channel=\"bus\""))
        .and_then(|l| l.rsplit(' ').next())
        .map(String::from)
}

/// NATS stopped under a running worker: the channel is shown down, with
/// the reason, while the connection is lost, and up again (taking events)
/// when NATS is back. A server of the test's own: the shared one is not stopped.
async fn a_lost_nats_connection_shows_the_channel_down(db: Db) {
    let mut nats = PrivateNats::start();
    let stream = TestStream::create_on(&nats.url).await;
    let test_db = TestDb::create(db).await;
    let text = config_on(&nats.url, &test_db.url, &stream, "127.0.0.1:0", None);
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    eventually(Duration::from_secs(30), "the channel consuming", || async {
        bus(&app).await.0 == "consuming"
    })
    .await;

    nats.stop();
    eventually(
        Duration::from_secs(20),
        "the channel shown down",
        || async {
            let (state, up, _) = bus(&app).await;
            state == "error" && !up
        },
    )
    .await;
    let (_, _, error) = bus(&app).await;
    assert!(error.contains("cannot reach the NATS server"), "{error}");
    assert_eq!(bus_up_metric(&app).await.as_deref(), Some("0"));

    nats.restart();
    eventually(Duration::from_secs(30), "the channel up again", || async {
        let (state, up, _) = bus(&app).await;
        state == "consuming" && up
    })
    .await;
    assert_eq!(bus_up_metric(&app).await.as_deref(), Some("1"));
    // And it takes events again.
    let client = async_nats::connect(&nats.url).await.expect("NATS answers");
    let js = async_nats::jetstream::new(client);
    for e in events("back", 1, 2) {
        js.publish(
            stream.subject.clone(),
            serde_json::to_vec(&e).unwrap().into(),
        )
        .await
        .expect("publish")
        .await
        .expect("the stream stored the event");
    }
    eventually(
        Duration::from_secs(30),
        "the events after the outage",
        || async { app.count("SELECT count(*) FROM chat_messages").await == 2 },
    )
    .await;
    app.stop().await;
    drop(stream);
    nats.stop();
}

on_both_backends!(
    events_become_chats_once,
    a_lost_nats_connection_shows_the_channel_down
);
