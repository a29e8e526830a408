//! The chat webhook and open-chat handles, on both backends: signed,
//! unsigned, wrongly signed, stale and replayed deliveries (nothing stored
//! for the refused ones, one effect for a replay); every event type and
//! malformed bodies; a chat started, routed, accepted, its handle followed by
//! the holder, another agent, after expiry and after a transfer.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use support::app::{Db, TestApp, TestDb};
use support::chat::{eventually, now_secs, post_event, post_raw, query_text, signature};
use support::sse::EventStream;

const ADMIN: &str = "admin-token-0123456789";
const OLD_SECRET: &str = "old-secret-0123456789abcdef";
const NEW_SECRET: &str = "new-secret-0123456789abcdef";
const PROMPT: Duration = Duration::from_secs(10);

fn token(agent: &str) -> String {
    format!("{agent}-token-0123456789abcdef")
}

fn config(db_url: &str, ttl_secs: u64) -> String {
    config_with(db_url, ttl_secs, None)
}

fn config_with(db_url: &str, ttl_secs: u64, reply_url: Option<&str>) -> String {
    let relay = reply_url
        .map(|u| format!("relay = true\nreply_url = \"{u}\"\n"))
        .unwrap_or_default();
    let mut t = format!(
        r#"
[database]
url = "{db_url}"
max_connections = 8
[http]
bind = "127.0.0.1:0"
public_url = "https://switchboard.example.com/"
[routing]
presence_grace_secs = 60
sweep_ms = 500
[chat]
handle_ttl_secs = {ttl_secs}

[[services]]
id = "chat"
name = "Chat"
distribution = "longest_idle"

[[services]]
id = "second"
name = "Second line"
distribution = "longest_idle"

[[chat_channels]]
id = "web"
service = "chat"
kind = "webhook"
secrets = ["{OLD_SECRET}", "{NEW_SECRET}"]
chat_url_template = "https://chat.example.com/c/{{chat_id}}?agent={{agent_upn}}"
{relay}"#
    );
    for (id, services) in [("alice", "chat"), ("bob", "chat"), ("carol", "second")] {
        t.push_str(&format!(
            "[[agents]]\nid = \"{id}\"\nname = \"{id}\"\nemail = \"{id}@example.com\"\ntoken = \"{}\"\nservices = [\"{services}\"]\n",
            token(id)
        ));
    }
    t.push_str(&format!(
        "[[agents]]\nid = \"admin\"\nname = \"Admin\"\nemail = \"admin@example.com\"\ntoken = \"{ADMIN}\"\nadmin = true\n"
    ));
    t
}

async fn start(db: Db, ttl_secs: u64) -> TestApp {
    capture_logs();
    let db = TestDb::create(db).await;
    let text = config(&db.url, ttl_secs);
    TestApp::spawn_on(db, Some(text)).await
}

/// Every log line of this test binary, to check what never appears in them.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let writer = LogWriter(logs().clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter("switchboard=trace,info")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .try_init();
    });
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn started(id: &str, chat: &str) -> Value {
    json!({
        "id": id, "channel": "web", "type": "chat.started", "chat_id": chat,
        "customer": {"name": "Dana Customer", "email": "dana@customer.example", "phone": "+41 44 000 00 00", "user_id": "visitor-7"},
        "subject": "Where is my parcel?", "language": "de-CH", "parameters": {"order": "A-1001"},
        "text": "Hello, my parcel is late", "sent_at": "2026-01-31T12:00:00Z",
    })
}

fn message(id: &str, chat: &str, from: &str, text: &str) -> Value {
    json!({"id": id, "channel": "web", "type": "chat.message", "chat_id": chat, "from": from, "text": text})
}

/// The server's `/metrics` page.
async fn metrics_text(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn counts(app: &TestApp) -> [i64; 4] {
    [
        app.count("SELECT count(*) FROM chat_events").await,
        app.count("SELECT count(*) FROM chats").await,
        app.count("SELECT count(*) FROM chat_messages").await,
        app.count("SELECT count(*) FROM tasks").await,
    ]
}

async fn refused_deliveries_store_nothing(db: Db) {
    let app = start(db, 900).await;
    let c = &app.client;
    let url = &app.url;
    let body = serde_json::to_vec(&started("e-1", "chat-1")).unwrap();
    let ts = now_secs();
    let good = signature(NEW_SECRET, ts, &body);
    // (what, timestamp header, signature header, body, error code)
    type Case<'a> = (&'a str, Option<String>, Option<String>, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unsigned",
            Some(ts.to_string()),
            None,
            body.clone(),
            "signature_missing",
        ),
        (
            "no timestamp",
            None,
            Some(good.clone()),
            body.clone(),
            "signature_missing",
        ),
        (
            "wrong secret",
            Some(ts.to_string()),
            Some(signature("not-the-secret-0123456789", ts, &body)),
            body.clone(),
            "signature_invalid",
        ),
        (
            "body changed after signing",
            Some(ts.to_string()),
            Some(good.clone()),
            serde_json::to_vec(&started("e-1", "chat-2")).unwrap(),
            "signature_invalid",
        ),
        (
            "another timestamp than signed",
            Some((ts - 1).to_string()),
            Some(good.clone()),
            body.clone(),
            "signature_invalid",
        ),
        (
            "stale",
            Some((ts - 301).to_string()),
            Some(signature(NEW_SECRET, ts - 301, &body)),
            body.clone(),
            "timestamp_stale",
        ),
        (
            "from the future",
            Some((ts + 400).to_string()),
            Some(signature(NEW_SECRET, ts + 400, &body)),
            body.clone(),
            "timestamp_stale",
        ),
        (
            "malformed signature",
            Some(ts.to_string()),
            Some("sha1=abc".into()),
            body.clone(),
            "signature_malformed",
        ),
        (
            "unknown channel",
            Some(ts.to_string()),
            Some(good.clone()),
            serde_json::to_vec(
                &json!({"id": "x", "channel": "nope", "type": "chat.started", "chat_id": "c"}),
            )
            .unwrap(),
            "unknown_channel",
        ),
    ];
    for (what, t, s, b, code) in cases {
        let (status, resp, _) = post_raw(c, url, t.as_deref(), s.as_deref(), b).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {resp}");
        assert_eq!(resp["error"]["code"], code, "{what}: {resp}");
    }
    assert_eq!(
        counts(&app).await,
        [0, 0, 0, 0],
        "refused deliveries stored something"
    );
    // Positive control: the same delivery, correctly signed (with either active secret).
    let (status, resp, replay) =
        post_raw(c, url, Some(&ts.to_string()), Some(&good), body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{resp}");
    assert!(!replay);
    let (status, _, _) = post_event(c, url, OLD_SECRET, &started("e-2", "chat-old-secret")).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the older of two active secrets still verifies"
    );
    assert_eq!(counts(&app).await, [2, 2, 2, 2]);
    app.stop().await;
}

async fn every_event_type_and_malformed_bodies(db: Db) {
    let app = start(db, 900).await;
    let (c, url) = (&app.client, &app.url);
    let (s, first, _) = post_event(c, url, NEW_SECRET, &started("s-1", "chat-a")).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert_eq!(first["task_created"], true);
    let task_id = first["task_id"].as_str().unwrap().to_string();
    let (s, task) = app.get(ADMIN, &format!("/api/v1/tasks/{task_id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(task["modality"], "im");
    assert_eq!(task["service"], "chat");
    assert_eq!(task["routed"], true);
    assert_eq!(task["subject"], "Where is my parcel?");
    assert_eq!(task["customer"]["address"], "dana@customer.example");
    assert_eq!(task["customer"]["name"], "Dana Customer");
    let p = &task["parameters"];
    assert_eq!(p["customer"]["phone"], "+41 44 000 00 00");
    assert_eq!(p["customer"]["user_id"], "visitor-7");
    assert_eq!(p["language"], "de-CH");
    assert_eq!(p["parameters"]["order"], "A-1001");
    assert_eq!(task["chat"]["chat_id"], "chat-a");
    for (i, from) in ["customer", "bot", "agent"].iter().enumerate() {
        let (s, r, _) = post_event(
            c,
            url,
            NEW_SECRET,
            &message(
                &format!("m-{i}"),
                "chat-a",
                from,
                &format!("text {i} from {from}"),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(
            r["task_id"].as_str(),
            Some(task_id.as_str()),
            "a message joins the live task"
        );
        assert_eq!(r["task_created"], false);
    }
    let (s, transcript) = app
        .get(ADMIN, &format!("/api/v1/tasks/{task_id}/messages"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let items = transcript["items"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = items
        .iter()
        .map(|m| (m["from"].as_str().unwrap(), m["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("customer", "Hello, my parcel is late"),
            ("customer", "text 0 from customer"),
            ("bot", "text 1 from bot"),
            ("agent", "text 2 from agent"),
        ]
    );
    // The task's details summarize the transcript: the customer's lines in,
    // the bot's and the agent's out.
    let (_, details) = app.get(ADMIN, &format!("/api/v1/tasks/{task_id}")).await;
    let summary = &details["messages"];
    assert_eq!(
        support::app::message_counts(&details),
        [json!(4), json!(2), json!(2), json!("outbound")],
        "{details}"
    );
    assert_eq!(summary["first_at"], items[0]["sent_at"], "{details}");
    assert_eq!(summary["last_at"], items[3]["sent_at"], "{details}");
    // The customer leaves while the task waits: it is cancelled.
    let left =
        json!({"id": "l-1", "channel": "web", "type": "chat.customer_left", "chat_id": "chat-a"});
    let (s, r, _) = post_event(c, url, NEW_SECRET, &left).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (_, task) = app.get(ADMIN, &format!("/api/v1/tasks/{task_id}")).await;
    assert_eq!(task["state"], "cancelled");
    assert_eq!(task["chat"]["state"], "left");
    // chat.ended on another chat cancels its waiting task too.
    let (_, r, _) = post_event(c, url, NEW_SECRET, &started("s-2", "chat-b")).await;
    let other = r["task_id"].as_str().unwrap().to_string();
    let ended = json!({"id": "x-1", "channel": "web", "type": "chat.ended", "chat_id": "chat-b", "reason": "closed by the visitor"});
    let (s, _, _) = post_event(c, url, NEW_SECRET, &ended).await;
    assert_eq!(s, StatusCode::OK);
    let (_, task) = app.get(ADMIN, &format!("/api/v1/tasks/{other}")).await;
    assert_eq!(task["state"], "cancelled");
    assert_eq!(task["chat"]["state"], "ended");
    // A customer writing again in a chat whose task is over starts a new task.
    let (s, r, _) = post_event(
        c,
        url,
        NEW_SECRET,
        &message("m-again", "chat-a", "customer", "one more thing"),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_ne!(r["task_id"].as_str(), Some(task_id.as_str()));

    let before = counts(&app).await;
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"id": "b1", "channel": "web", "type": "chat.exploded", "chat_id": "c"}),
            "type",
        ),
        (
            json!({"id": "b2", "channel": "web", "type": "chat.message", "chat_id": "c", "from": "customer"}),
            "text",
        ),
        (
            json!({"id": "b3", "channel": "web", "type": "chat.message", "chat_id": "c", "from": "robot", "text": "x"}),
            "from",
        ),
        (
            json!({"id": "b4", "channel": "web", "type": "chat.message", "from": "customer", "text": "x"}),
            "chat_id",
        ),
        (
            json!({"channel": "web", "type": "chat.message", "chat_id": "c", "from": "customer", "text": "x"}),
            "id",
        ),
        (
            json!({"id": "b6", "channel": "web", "type": "chat.started", "chat_id": "c", "customer": {"email": "nope"}}),
            "customer.email",
        ),
        (
            json!({"id": "b7", "channel": "web", "type": "chat.started", "chat_id": "c", "colour": "red"}),
            "colour",
        ),
        (
            json!({"id": "b8", "channel": "web", "type": "chat.message", "chat_id": "c", "from": "customer", "text": "x", "sent_at": "yesterday"}),
            "sent_at",
        ),
        (
            json!({"id": "b9", "channel": "web", "type": "chat.started", "chat_id": "c", "parameters": [1, 2]}),
            "parameters",
        ),
    ];
    for (event, field) in bad {
        let (s, r, _) = post_event(c, url, NEW_SECRET, &event).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{event}: {r}");
        let m = r["error"]["message"].as_str().unwrap_or_default();
        assert!(
            m.starts_with(&format!("{field}:")),
            "{field} not named in {m}"
        );
    }
    // Not JSON (signed): 400; too large: 413. Neither echoes the body back.
    let ts = now_secs();
    let junk = b"{not json".to_vec();
    let (s, r, _) = post_raw(
        c,
        url,
        Some(&ts.to_string()),
        Some(&signature(NEW_SECRET, ts, &junk)),
        junk,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    let huge = format!(
        "{{\"id\":\"h\",\"channel\":\"web\",\"type\":\"chat.message\",\"chat_id\":\"c\",\"from\":\"customer\",\"text\":\"{}\"}}",
        "z".repeat(70 * 1024)
    )
    .into_bytes();
    let (s, r, _) = post_raw(
        c,
        url,
        Some(&ts.to_string()),
        Some(&signature(NEW_SECRET, ts, &huge)),
        huge,
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!r.to_string().contains("zzzzzzzzzz"));
    assert_eq!(
        r["error"]["message"], "the body is over the limit of 64 KiB",
        "the webhook's own limit: {r}"
    );
    assert_eq!(
        counts(&app).await,
        before,
        "malformed events stored something"
    );

    // Operators see the channel and its counts; metrics carry them.
    let (s, ops) = app.get(ADMIN, "/api/v1/ops/channels").await;
    assert_eq!(s, StatusCode::OK, "{ops}");
    let web = &ops["items"][0];
    assert_eq!(web["id"], "web");
    assert_eq!(web["kind"], "webhook");
    assert_eq!(web["up"], true);
    assert_eq!(web["counts"]["events"], 8);
    assert_eq!(web["counts"]["messages"], 6);
    assert_eq!(web["counts"]["chats"], 2);
    let (s, _) = app.get(&token("alice"), "/api/v1/ops/channels").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let metrics = metrics_text(&app).await;
    assert!(
        metrics.contains(r#"switchboard_chat_channel_messages_total{channel="web",kind="webhook",service="chat"} 6"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"switchboard_chat_refused_total{reason="invalid"} 9"#),
        "{metrics}"
    );
    app.stop().await;
}

async fn a_replayed_delivery_has_one_effect(db: Db) {
    let app = start(db, 900).await;
    let (c, url) = (&app.client, &app.url);
    let event = started("r-1", "chat-r");
    let (s1, b1, replay1) = post_event(c, url, NEW_SECRET, &event).await;
    assert_eq!(s1, StatusCode::CREATED);
    assert!(!replay1);
    // The sender repeats it, later signatures and all, several times at once.
    let again: Vec<_> = (0..8)
        .map(|_| post_event(c, url, NEW_SECRET, &event))
        .collect();
    for (s, b, replay) in futures_util::future::join_all(again).await {
        assert_eq!(
            (s, &b),
            (s1, &b1),
            "a replay is answered as the first delivery was"
        );
        assert!(replay);
    }
    assert_eq!(
        counts(&app).await,
        [1, 1, 1, 1],
        "one chat, one message, one task"
    );
    // Concurrent first deliveries of a new event: one effect too.
    let msg = message("r-2", "chat-r", "customer", "are you there?");
    let racing: Vec<_> = (0..8)
        .map(|_| post_event(c, url, NEW_SECRET, &msg))
        .collect();
    let answers = futures_util::future::join_all(racing).await;
    assert!(
        answers
            .iter()
            .all(|(s, b, _)| *s == StatusCode::OK && *b == answers[0].1)
    );
    assert_eq!(
        answers.iter().filter(|(_, _, r)| !*r).count(),
        1,
        "exactly one applied"
    );
    assert_eq!(counts(&app).await, [2, 1, 2, 1]);
    // The same id for a different event is refused, not silently replayed.
    let (s, r, _) = post_event(
        c,
        url,
        NEW_SECRET,
        &message("r-2", "chat-r", "customer", "something else"),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert_eq!(r["error"]["code"], "event_id_reused");
    assert_eq!(counts(&app).await, [2, 1, 2, 1]);
    // Signed but invalid: refused, and on the operators' page with the
    // channel's errors.
    let mut bad = message("r-3", "chat-r", "customer", "x");
    bad["from"] = json!("somebody");
    let (s, r, _) = post_event(c, url, NEW_SECRET, &bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    // The operators see every repeat and the refused event.
    let (s, ops) = app.get(ADMIN, "/api/v1/ops/channels").await;
    assert_eq!(s, StatusCode::OK, "{ops}");
    let web = ops["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ch| ch["id"] == "web")
        .unwrap_or_else(|| panic!("{ops}"));
    assert_eq!(web["counts"]["duplicates"], 8 + 7, "{web}");
    // The reused id and the invalid event.
    assert_eq!(web["counts"]["errors"], 2, "{web}");
    assert!(
        web["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("from"),
        "{web}"
    );
    // Over 64 KiB: refused before it is read, and counted like every refusal.
    let big = message("r-4", "chat-r", "customer", &"x".repeat(70 * 1024));
    let (s, r, _) = post_event(c, url, NEW_SECRET, &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{r}");
    assert_eq!(counts(&app).await, [2, 1, 2, 1]);
    let metrics = metrics_text(&app).await;
    for reason in ["event_id_reused", "too_large", "invalid"] {
        assert!(
            metrics.contains(&format!(
                r#"switchboard_chat_refused_total{{reason="{reason}"}} 1"#
            )),
            "{reason}: {metrics}"
        );
    }
    app.stop().await;
}

/// Many chats at once, each a start and messages in sequence, with repeats
/// sent beside them: the server applies what arrives together in one
/// transaction; every chat still gets one task, every message once and in
/// its order, every repeat the first answer.
async fn a_burst_of_chats_is_applied_once_and_in_order(db: Db) {
    let app = start(db, 900).await;
    const CHATS: usize = 24;
    const MESSAGES: usize = 5;
    let chat = |c: usize| {
        let app = &app;
        async move {
            let chat_id = format!("burst-{c}");
            let (s, first, _) = post_event(
                &app.client,
                &app.url,
                NEW_SECRET,
                &started(&format!("b{c}-0"), &chat_id),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{first}");
            for m in 1..=MESSAGES {
                let event = message(
                    &format!("b{c}-{m}"),
                    &chat_id,
                    "customer",
                    &format!("message {m}"),
                );
                let (s, b, replay) = post_event(&app.client, &app.url, NEW_SECRET, &event).await;
                assert_eq!(s, StatusCode::OK, "{b}");
                assert!(!replay);
                assert_eq!(b["task_id"], first["task_id"]);
                // A repeat of the previous event, sent while others are applied.
                let (s, again, replay) =
                    post_event(&app.client, &app.url, NEW_SECRET, &event).await;
                assert_eq!((s, &again), (StatusCode::OK, &b));
                assert!(replay);
            }
            first["task_id"].as_str().unwrap().to_string()
        }
    };
    let tasks = futures_util::future::join_all((0..CHATS).map(chat)).await;
    let events = (CHATS * (MESSAGES + 1)) as i64;
    assert_eq!(
        counts(&app).await,
        [events, CHATS as i64, events, CHATS as i64]
    );
    for task in &tasks {
        let (s, transcript) = app
            .get(ADMIN, &format!("/api/v1/tasks/{task}/messages"))
            .await;
        assert_eq!(s, StatusCode::OK);
        let texts: Vec<&str> = transcript["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        let mut want = vec!["Hello, my parcel is late".to_string()];
        want.extend((1..=MESSAGES).map(|m| format!("message {m}")));
        assert_eq!(texts, want);
    }
    app.stop().await;
}

/// A batch in which one event cannot be applied (its service does not
/// exist): the others are applied all the same, and that one alone fails.
async fn one_bad_event_costs_only_itself(db: Db) {
    let app = start(db, 900).await;
    let store = app.store();
    let mut jobs = Vec::new();
    for (i, service) in ["chat", "no-such-service", "chat"].iter().enumerate() {
        let body =
            serde_json::to_vec(&started(&format!("bad-{i}"), &format!("bad-chat-{i}"))).unwrap();
        let event = switchboard::domain::chat::parse_event(&body).unwrap();
        let input = switchboard::chat::delivery_input(store, event)
            .await
            .unwrap();
        jobs.push(switchboard::store::chats::ChatDelivery {
            service_id: service.to_string(),
            input,
            content_hash: switchboard::domain::chat::content_hash(&body),
        });
    }
    let results = store.apply_chat_deliveries(&jobs).await;
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().map(|d| d.status).ok(), Some(201));
    assert!(results[1].is_err(), "{:?}", results[1]);
    assert_eq!(results[2].as_ref().map(|d| d.status).ok(), Some(201));
    assert_eq!(counts(&app).await, [2, 2, 2, 2]);
    // One id for two different events in one batch: the one that arrived
    // first is applied (though its chat sorts last), the other refused.
    let mut jobs = Vec::new();
    for chat in ["z-chat", "a-chat"] {
        let body = serde_json::to_vec(&started("same-id", chat)).unwrap();
        let event = switchboard::domain::chat::parse_event(&body).unwrap();
        let input = switchboard::chat::delivery_input(store, event)
            .await
            .unwrap();
        jobs.push(switchboard::store::chats::ChatDelivery {
            service_id: "chat".into(),
            input,
            content_hash: switchboard::domain::chat::content_hash(&body),
        });
    }
    let results = store.apply_chat_deliveries(&jobs).await;
    let first = results[0].as_ref().expect("the first arrival is applied");
    assert_eq!(first.body["chat_id"], "z-chat");
    assert!(!first.replay);
    match &results[1] {
        Err(switchboard::store::StoreError::Closed { code, .. }) => {
            assert_eq!(*code, "event_id_reused")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(counts(&app).await, [3, 3, 3, 3]);
    app.stop().await;
}

async fn follow(app: &TestApp, url: &str, token: &str) -> (StatusCode, Option<String>, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let path = url
        .strip_prefix("https://switchboard.example.com")
        .expect("public URL");
    let resp = client
        .get(format!("{}{path}", app.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string());
    (status, location, resp.text().await.unwrap_or_default())
}

async fn accept_offer(app: &TestApp, stream: &mut EventStream, agent: &str, task: &str) {
    let offer = stream
        .expect_kind("offer", PROMPT, "an offer of the chat")
        .await;
    assert_eq!(offer.data["task_id"], task);
    assert_eq!(offer.data["modality"], "im");
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
    assert_eq!(
        (
            t.data["task_id"].as_str(),
            t.data["reason"].as_str(),
            t.data["state"].as_str()
        ),
        (Some(task), Some("accepted"), Some("connected"))
    );
}

async fn handle_url(app: &TestApp, agent: &str, task: &str) -> (StatusCode, Value) {
    app.get(&token(agent), &format!("/api/v1/tasks/{task}/chat-handle"))
        .await
}

async fn routed_accepted_handed_over(db: Db) {
    let app = start(db, 900).await;
    let (c, url) = (&app.client, &app.url);
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let (s, r, _) = post_event(c, url, NEW_SECRET, &started("h-1", "chat/h 1")).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let task = r["task_id"].as_str().unwrap().to_string();
    // What the customer reached: the chat channel.
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["system_parameters"]["reached"], "web", "{t}");
    accept_offer(&app, &mut alice, "alice", &task).await;

    // A new customer message reaches the holder's stream.
    post_event(
        c,
        url,
        NEW_SECRET,
        &message("h-2", "chat/h 1", "customer", "still waiting"),
    )
    .await;
    let m = alice
        .expect_kind("chat_message", PROMPT, "the customer's message")
        .await;
    assert_eq!(m.data["task_id"], task);
    assert_eq!(m.data["text"], "still waiting");
    assert_eq!(m.data["from"], "customer");

    // This channel does not relay: agents answer through the handle.
    let (s, b) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task}/chat-messages"),
            json!({"text": "hi"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");

    // Only the holder gets a handle.
    let (s, _) = handle_url(&app, "bob", &task).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "bob never had the task");
    let (s, _) = app
        .get(ADMIN, &format!("/api/v1/tasks/{task}/chat-handle"))
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "an admin who does not hold it gets none"
    );
    let (s, h) = handle_url(&app, "alice", &task).await;
    assert_eq!(s, StatusCode::OK, "{h}");
    // The answer holds a credential: never cached, never sent onwards.
    let r = app
        .client
        .get(format!("{}/api/v1/tasks/{task}/chat-handle", app.url))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let alice_url = h["url"].as_str().unwrap().to_string();
    assert!(
        alice_url.starts_with("https://switchboard.example.com/chat/open/"),
        "{alice_url}"
    );
    assert!(h["expires_at"].is_string());

    // The holder is sent to the chat; anybody else is refused.
    let (s, loc, _) = follow(&app, &alice_url, &token("alice")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        loc.as_deref(),
        Some("https://chat.example.com/c/chat%2Fh%201?agent=alice%40example.com")
    );
    let (s, loc, page) = follow(&app, &alice_url, &token("bob")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(loc.is_none() && page.contains("Not your chat"), "{page}");
    let (s, _, _) = follow(&app, &alice_url, ADMIN).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "not even an admin follows another's handle"
    );
    let unsigned = client_get(&app, &alice_url).await;
    assert_eq!(unsigned, StatusCode::UNAUTHORIZED);
    // Not signed in: the page leads to the sign-in, and back here after it.
    let path = alice_url
        .strip_prefix("https://switchboard.example.com")
        .unwrap();
    let page = app
        .client
        .get(format!("{}{path}", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let back: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
    assert!(
        page.contains(&format!("href=\"/sign-in?next={back}\"")),
        "{page}"
    );
    let mut forged = alice_url.clone();
    forged.pop();
    forged.push(if alice_url.ends_with('A') { 'B' } else { 'A' });
    let (s, _, page) = follow(&app, &forged, &token("alice")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{page}");

    // Transfer to bob: alice's handle dies, bob's fresh one works.
    let mut bob = EventStream::open(&app.url, &token("bob")).await;
    let (s, b) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task}/transfer"),
            json!({"agent": "bob"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    accept_offer(&app, &mut bob, "bob", &task).await;
    let (s, _, page) = follow(&app, &alice_url, &token("alice")).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(page.contains("This chat was transferred"), "{page}");
    let (s, b) = handle_url(&app, "alice", &task).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "alice no longer holds it");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("you transferred this task"),
        "{b}"
    );
    let (s, h) = handle_url(&app, "bob", &task).await;
    assert_eq!(s, StatusCode::OK);
    let bob_url = h["url"].as_str().unwrap().to_string();
    let (s, loc, _) = follow(&app, &bob_url, &token("bob")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        loc.as_deref(),
        Some("https://chat.example.com/c/chat%2Fh%201?agent=bob%40example.com")
    );
    let (s, _, _) = follow(&app, &bob_url, &token("alice")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // What the customer writes to bob is not alice's to read: her part ended
    // with the transfer.
    post_event(
        c,
        url,
        NEW_SECRET,
        &message("h-2b", "chat/h 1", "customer", "my card is 4111"),
    )
    .await;
    let lines = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["text"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (_, m) = app
        .get(&token("alice"), &format!("/api/v1/tasks/{task}/messages"))
        .await;
    assert!(lines(&m).contains(&"still waiting".to_string()), "{m}");
    assert!(!lines(&m).contains(&"my card is 4111".to_string()), "{m}");
    let alice_lines = lines(&m).len();
    let (_, m) = app
        .get(&token("bob"), &format!("/api/v1/tasks/{task}/messages"))
        .await;
    assert!(lines(&m).contains(&"my card is 4111".to_string()), "{m}");
    // Her task's summary counts what she may read too.
    let (_, v) = app
        .get(&token("alice"), &format!("/api/v1/tasks/{task}"))
        .await;
    assert_eq!(v["messages"]["count"], alice_lines, "{v}");
    let (_, v) = app
        .get(&token("bob"), &format!("/api/v1/tasks/{task}"))
        .await;
    assert_eq!(v["messages"]["count"], lines(&m).len(), "{v}");

    // The customer leaves while bob holds it: recorded, bob told, task still his.
    post_event(c, url, NEW_SECRET, &json!({"id": "h-3", "channel": "web", "type": "chat.customer_left", "chat_id": "chat/h 1"})).await;
    let t = bob.expect_kind("task", PROMPT, "the customer left").await;
    assert_eq!(t.data["reason"], "customer_left");
    let (_, view) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(view["state"], "connected");
    assert!(view["customer_left_at"].is_string());

    // The customer writes again: they are back, and the task says so. (The
    // chat system stamps this line, after the leave and before it sends it:
    // a leave is compared with such times. A stamp in the very millisecond
    // Switchboard takes the line in would read as one of Switchboard's own.)
    let mut again = message("h-4", "chat/h 1", "customer", "sorry, lost my connection");
    again["sent_at"] = json!((chrono::Utc::now() - chrono::Duration::milliseconds(1)).to_rfc3339());
    post_event(c, url, NEW_SECRET, &again).await;
    let t = bob
        .expect_kind("task", PROMPT, "the customer is back")
        .await;
    assert_eq!(t.data["reason"], "customer_back");
    let open = app
        .db
        .texts("SELECT state || '|' || CASE WHEN left_at IS NULL THEN 'here' ELSE 'left' END FROM chats WHERE external_id = 'chat/h 1'")
        .await;
    assert_eq!(
        open,
        vec!["open|here".to_string()],
        "the chat is open again"
    );
    bob.expect_kind(
        "chat_message",
        PROMPT,
        "the customer's line after coming back",
    )
    .await;
    let (_, view) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(view["state"], "connected", "{view}");
    assert!(view["customer_left_at"].is_null(), "{view}");
    let (_, m) = app
        .get(&token("bob"), &format!("/api/v1/tasks/{task}/messages"))
        .await;
    assert!(
        lines(&m).contains(&"sorry, lost my connection".to_string()),
        "{m}"
    );

    // A leave the chat system sent before that line, taken in after it
    // (out of order), changes nothing: the customer wrote after it.
    let a_minute_ago = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let (s, r, _) = post_event(
        c,
        url,
        NEW_SECRET,
        &json!({"id": "h-5", "channel": "web", "type": "chat.customer_left",
        "chat_id": "chat/h 1", "sent_at": a_minute_ago}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["leave_overtaken"], true, "{r}");
    let (_, view) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert!(view["customer_left_at"].is_null(), "{view}");
    let state = "SELECT state FROM chats WHERE external_id = 'chat/h 1'";
    assert_eq!(app.db.texts(state).await, vec!["open".to_string()]);

    // A leave of now counts; the chat system starting the chat again is the
    // customer back as well.
    let (_, r, _) = post_event(
        c,
        url,
        NEW_SECRET,
        &json!({"id": "h-6", "channel": "web", "type": "chat.customer_left",
        "chat_id": "chat/h 1"}),
    )
    .await;
    assert!(r.get("leave_overtaken").is_none(), "{r}");
    let t = bob
        .expect_kind("task", PROMPT, "the customer left again")
        .await;
    assert_eq!(t.data["reason"], "customer_left");
    assert_eq!(app.db.texts(state).await, vec!["left".to_string()]);
    post_event(
        c,
        url,
        NEW_SECRET,
        &json!({"id": "h-7", "channel": "web", "type": "chat.started",
        "chat_id": "chat/h 1", "customer": {"name": "Dana Customer"}}),
    )
    .await;
    let t = bob
        .expect_kind("task", PROMPT, "the customer is back by a new start")
        .await;
    assert_eq!(t.data["reason"], "customer_back");
    assert_eq!(app.db.texts(state).await, vec!["open".to_string()]);
    let (_, view) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert!(view["customer_left_at"].is_null(), "{view}");
    assert_eq!(view["state"], "connected", "{view}");

    // Bob ends the chat task as handled.
    let (s, b) = app
        .post(
            &token("bob"),
            &format!("/api/v1/tasks/{task}/handled"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "wrap_up");

    // Handles never appear in the logs (which did record the follows).
    eventually(PROMPT, "the follows in the log", || async {
        logged().contains("chat handle followed")
    })
    .await;
    let log = logged();
    for u in [&alice_url, &bob_url] {
        let token = u.rsplit('/').next().unwrap();
        assert!(!log.contains(token), "a handle was logged");
    }
    app.stop().await;
}

async fn an_expired_handle_is_refused(db: Db) {
    // Three seconds: a fresh handle must live through two requests on a
    // slow machine.
    let app = start(db, 3).await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let (_, r, _) = post_event(&app.client, &app.url, NEW_SECRET, &started("x-1", "chat-x")).await;
    let task = r["task_id"].as_str().unwrap().to_string();
    accept_offer(&app, &mut alice, "alice", &task).await;
    let (_, h) = handle_url(&app, "alice", &task).await;
    let url = h["url"].as_str().unwrap().to_string();
    // Its time is three or four wall-clock seconds: nothing to wait for but the clock.
    tokio::time::sleep(Duration::from_millis(4_100)).await;
    let (s, loc, page) = follow(&app, &url, &token("alice")).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(loc.is_none() && page.contains("expired"), "{page}");
    // The same agent, the same task: a fresh handle works.
    let (_, h) = handle_url(&app, "alice", &task).await;
    let fresh = h["url"].as_str().unwrap().to_string();
    assert_eq!(
        follow(&app, &fresh, &token("alice")).await.0,
        StatusCode::SEE_OTHER
    );
    // A leave told through the API, not by the chat: her page says the
    // customer left all the same.
    let (s, b) = app
        .post(ADMIN, &format!("/api/v1/tasks/{task}/cancel"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, v) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    let session = v["sessions"][0]["id"]
        .as_str()
        .expect("her session")
        .to_string();
    let page = app
        .page(&token("alice"), &format!("/ui/sessions/{session}"))
        .await;
    assert!(page.contains("The customer left"), "{page}");
    app.stop().await;
}

async fn client_get(app: &TestApp, url: &str) -> StatusCode {
    let path = url.strip_prefix("https://switchboard.example.com").unwrap();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{path}", app.url))
        .send()
        .await
        .unwrap()
        .status()
}

async fn rotated_keys_retire_old_handles(db: Db) {
    let app = start(db, 900).await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let (_, r, _) = post_event(&app.client, &app.url, NEW_SECRET, &started("k-1", "chat-k")).await;
    let task = r["task_id"].as_str().unwrap().to_string();
    accept_offer(&app, &mut alice, "alice", &task).await;
    let (_, h) = handle_url(&app, "alice", &task).await;
    let old = h["url"].as_str().unwrap().to_string();
    // A rotation keeps older handles working until they expire (its body
    // may be left out)...
    let r = app
        .client
        .post(format!("{}/api/v1/admin/chat-handle-keys/rotate", app.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let k: Value = r.json().await.unwrap();
    let (_, h) = handle_url(&app, "alice", &task).await;
    let new = h["url"].as_str().unwrap().to_string();
    assert!(
        new.contains(&format!(".{}.", k["key_id"].as_str().unwrap())),
        "the new key signs"
    );
    assert_eq!(
        follow(&app, &old, &token("alice")).await.0,
        StatusCode::SEE_OTHER
    );
    // ...and retiring them kills every handle they signed.
    let (s, _) = app
        .post(
            ADMIN,
            "/api/v1/admin/chat-handle-keys/rotate",
            json!({"retire_previous": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, page) = follow(&app, &old, &token("alice")).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(page.contains("withdrawn"), "{page}");
    assert_eq!(
        follow(&app, &new, &token("alice")).await.0,
        StatusCode::GONE
    );
    let (s, _) = app
        .post(
            &token("alice"),
            "/api/v1/admin/chat-handle-keys/rotate",
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.stop().await;
}

/// What the reply receiver got: each request's headers and body.
type Received = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A reply receiver: answers 503 to the first delivery, 200 after; keeps
/// every request's headers and body.
async fn receiver() -> (String, Received) {
    let seen: Received = Arc::default();
    let keep = seen.clone();
    let app = axum::Router::new().route(
        "/replies",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let keep = keep.clone();
                async move {
                    let mut all = keep.lock().unwrap();
                    let refused = String::from_utf8_lossy(&body).contains("(refused)");
                    all.push((headers, body.to_vec()));
                    if all.len() == 1 || refused {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            },
        ),
    );
    (serve_replies(app).await, seen)
}

/// Serves a test's reply receiver on a free port: its `/replies` URL.
async fn serve_replies(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/replies")
}

async fn replies_are_relayed_signed_and_retried(db: Db) {
    capture_logs();
    let (reply_url, seen) = receiver().await;
    let test_db = TestDb::create(db).await;
    let text = config_with(&test_db.url, 900, Some(&reply_url));
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let (_, r, _) = post_event(&app.client, &app.url, NEW_SECRET, &started("y-1", "chat-y")).await;
    let task = r["task_id"].as_str().unwrap().to_string();
    // Only the holder writes in the chat.
    let (s, _) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task}/chat-messages"),
            json!({"text": "hi"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not accepted yet");
    accept_offer(&app, &mut alice, "alice", &task).await;
    let (s, b) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task}/chat-messages"),
            json!({"text": ""}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (s, m) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task}/chat-messages"),
            json!({"text": "Your parcel left today"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{m}");
    assert_eq!(m["delivery"], "pending");
    let id = m["id"].as_str().unwrap().to_string();
    // Two more written while the first waits for its retry: they reach the
    // chat after it, in the order they were written.
    let mut later = Vec::new();
    // A stray escape pasted along is dropped, not the reply refused.
    for text in ["Tracking number follows", "It is \u{1b}[1m99-1234\u{1b}[0m"] {
        let (s, m) = app
            .post(
                &token("alice"),
                &format!("/api/v1/tasks/{task}/chat-messages"),
                json!({"text": text}),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{m}");
        later.push(m["id"].as_str().unwrap().to_string());
    }
    eventually(
        Duration::from_secs(20),
        "the replies delivered after one refusal",
        || async { seen.lock().unwrap().len() >= 4 },
    )
    .await;
    let texts: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            serde_json::from_slice::<Value>(body).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        texts,
        [
            "Your parcel left today",
            "Your parcel left today",
            "Tracking number follows",
            "It is [1m99-1234[0m"
        ],
        "the refused one again first, then the later ones"
    );
    eventually(PROMPT, "the reply marked sent", || async {
        let (_, b) = app
            .get(ADMIN, &format!("/api/v1/tasks/{task}/messages"))
            .await;
        b["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str() && m["delivery"] == "sent")
    })
    .await;
    // Operators count them: one refusal (tried again), three sent.
    let counted = |outcome: &'static str, n: u32| {
        let app = &app;
        async move {
            metrics_text(app).await.lines().any(|l| {
                l.starts_with("switchboard_chat_replies_total{")
                    && l.contains("channel=\"web\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
                    && l.ends_with(&format!(" {n}"))
            })
        }
    };
    eventually(PROMPT, "the relay counted", || async {
        counted("sent", 3).await && counted("retry", 1).await
    })
    .await;
    let all = seen.lock().unwrap().clone();
    assert_eq!(all.len(), 4, "one refusal, three deliveries, nothing more");
    for (headers, body) in &all[..2] {
        let ts: i64 = headers["x-switchboard-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((now_secs() - ts).abs() < 60);
        assert_eq!(
            headers["x-switchboard-signature"].to_str().unwrap(),
            signature(NEW_SECRET, ts, body),
            "signed the same way, with the last secret"
        );
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["id"], id.as_str(), "a repeat carries the same id");
        assert_eq!(v["type"], "chat.message");
        assert_eq!(v["chat_id"], "chat-y");
        assert_eq!(v["from"], "agent");
        assert_eq!(v["agent"], "alice");
        assert_eq!(v["text"], "Your parcel left today");
    }
    // The chat system echoes a relayed reply back as it got it: the line
    // the transcript has already, not a second one.
    let lines = |b: &Value| b["items"].as_array().map_or(0, Vec::len);
    let (_, before) = app
        .get(ADMIN, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    let echo: Value = serde_json::from_slice(&all[1].1).unwrap();
    let (s, r, _) = post_event(&app.client, &app.url, NEW_SECRET, &echo).await;
    assert!(s.is_success(), "{s} {r}");
    let (_, after) = app
        .get(ADMIN, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    assert_eq!(lines(&after), lines(&before), "{after}");
    // A reply the chat system refuses waits for its retry; the chat ends
    // meanwhile: it fails at once, and the holder's page is told.
    let (s, m) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task}/chat-messages"),
            json!({"text": "One more thing (refused)"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{m}");
    let held = m["id"].as_str().unwrap().to_string();
    eventually(PROMPT, "the reply refused once", || async {
        seen.lock().unwrap().len() >= 5
    })
    .await;
    let ended = json!({"id": "y-end", "channel": "web", "type": "chat.ended", "chat_id": "chat-y"});
    let (s, r, _) = post_event(&app.client, &app.url, NEW_SECRET, &ended).await;
    assert!(s.is_success(), "{s} {r}");
    let (_, b) = app
        .get(ADMIN, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    let line = b["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == held.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(line["delivery"], "failed", "at once, not at its retry: {b}");
    let deadline = std::time::Instant::now() + PROMPT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let e = alice
            .next(left)
            .await
            .expect("the failed reply told to the holder");
        if e.event == "chat_message" && e.data["delivery"] == "failed" {
            assert_eq!(e.data["message_id"], held.as_str(), "{:?}", e.data);
            break;
        }
    }
    // A chat that ended is no fault of the channel's.
    let (_, ch) = app.get(ADMIN, "/api/v1/ops/channels").await;
    let web = ch["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "web")
        .cloned()
        .unwrap_or_default();
    assert_eq!(web["last_error"], Value::Null, "{web}");
    let (s, b) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task}/chat-messages"),
            json!({"text": "Anything else?"}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("chat_ended")),
        "{b}"
    );
    app.stop().await;
}

/// What a receiver was asked: `METHOD path` of each request.
type Asked = Arc<Mutex<Vec<String>>>;

/// A receiver whose `/replies` answers `status` with a `Location` to
/// `/final?token=…` (which would answer 200 to anything).
async fn redirecting_receiver(status: u16) -> (String, Asked) {
    let asked: Asked = Arc::default();
    let keep = asked.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let keep = keep.clone();
        async move {
            let path = req.uri().path().to_string();
            keep.lock()
                .unwrap()
                .push(format!("{} {path}", req.method()));
            if path == "/replies" {
                axum::response::Response::builder()
                    .status(status)
                    .header("location", "/final?token=do-not-show")
                    .body(axum::body::Body::empty())
                    .unwrap()
            } else {
                axum::response::Response::new(axum::body::Body::empty())
            }
        }
    });
    (serve_replies(app).await, asked)
}

/// A chat whose task alice holds, on an app relaying to `reply_url`: the task id.
async fn held_chat(app: &TestApp, chat: &str) -> String {
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let (_, r, _) = post_event(
        &app.client,
        &app.url,
        NEW_SECRET,
        &started(&format!("{chat}-1"), chat),
    )
    .await;
    let task = r["task_id"].as_str().unwrap().to_string();
    accept_offer(app, &mut alice, "alice", &task).await;
    task
}

async fn write_reply(app: &TestApp, task: &str, text: &str) -> String {
    let (s, m) = app
        .post(
            &token("alice"),
            &format!("/api/v1/tasks/{task}/chat-messages"),
            json!({"text": text}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{m}");
    m["id"].as_str().unwrap().to_string()
}

/// A `reply_url` that redirects (301, 302) took no reply: following it
/// would have posted nothing (the POST becomes a bodiless GET). The reply
/// is not recorded as sent, and its error names the status and where it
/// pointed (without its query).
async fn a_redirected_reply_is_not_sent(db: Db) {
    capture_logs();
    for status in [301u16, 302] {
        let (reply_url, asked) = redirecting_receiver(status).await;
        let test_db = TestDb::create(db).await;
        let text = config_with(&test_db.url, 900, Some(&reply_url));
        let app = TestApp::spawn_on(test_db, Some(text)).await;
        let task = held_chat(&app, &format!("chat-r{status}")).await;
        let id = write_reply(&app, &task, "Your parcel left today").await;
        let error_of = || {
            let sql = format!("SELECT delivery_error FROM chat_messages WHERE id = '{id}'");
            let db = &app.db;
            async move { query_text(db, &sql).await }
        };
        eventually(
            PROMPT,
            "the redirect recorded as the reply's error",
            || async { error_of().await.is_some() },
        )
        .await;
        let error = error_of().await.unwrap_or_default();
        assert!(
            error.contains(&format!("answered {status}"))
                && error.contains("moved to /final")
                && error.contains("set reply_url to the final address")
                && !error.contains("do-not-show"),
            "{error}"
        );
        let delivery = query_text(
            &app.db,
            &format!("SELECT delivery FROM chat_messages WHERE id = '{id}'"),
        )
        .await;
        // Refused for good: it fails at once, not after its retries.
        assert_eq!(delivery.as_deref(), Some("failed"), "{error}");
        assert!(
            !asked.lock().unwrap().iter().any(|r| r.ends_with("/final")),
            "the redirect was followed: {:?}",
            asked.lock().unwrap()
        );
        assert!(
            !metrics_text(&app)
                .await
                .lines()
                .any(|l| l.starts_with("switchboard_chat_replies_total{")
                    && l.contains("outcome=\"sent\"")),
            "counted as sent"
        );
        app.stop().await;
    }
}

/// A reply receiver that refuses for good what asks for it: 413 for a
/// body with "(too big)", 400 for one with "(bad)", 200 for the rest; keeps
/// the text of every request.
async fn refusing_receiver() -> (String, Asked) {
    let seen: Asked = Arc::default();
    let keep = seen.clone();
    let app = axum::Router::new().route(
        "/replies",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                let text = v["text"].as_str().unwrap_or_default().to_string();
                let status = if text.contains("(too big)") {
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE
                } else if text.contains("(bad)") {
                    axum::http::StatusCode::BAD_REQUEST
                } else {
                    axum::http::StatusCode::OK
                };
                keep.lock().unwrap().push(text);
                status
            }
        }),
    );
    (serve_replies(app).await, seen)
}

/// A reply the chat system refuses for good (413, 400) fails at once,
/// tried once, told to the holder, with the reason; the chat's later
/// replies are delivered right after it, not after its retries.
async fn a_reply_refused_for_good_fails_at_once(db: Db) {
    capture_logs();
    let (reply_url, seen) = refusing_receiver().await;
    let test_db = TestDb::create(db).await;
    let text = config_with(&test_db.url, 900, Some(&reply_url));
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let (_, r, _) = post_event(&app.client, &app.url, NEW_SECRET, &started("f-1", "chat-f")).await;
    let task = r["task_id"].as_str().unwrap().to_string();
    accept_offer(&app, &mut alice, "alice", &task).await;
    let texts = [
        "A long one (too big)",
        "Next one",
        "A wrong one (bad)",
        "Last one",
    ];
    let mut ids = Vec::new();
    for t in texts {
        ids.push(write_reply(&app, &task, t).await);
    }
    eventually(PROMPT, "every reply tried", || async {
        seen.lock().unwrap().len() >= texts.len()
    })
    .await;
    let delivery = |id: String| {
        let db = &app.db;
        async move {
            let state = query_text(
                db,
                &format!("SELECT delivery FROM chat_messages WHERE id = '{id}'"),
            )
            .await;
            let error = query_text(
                db,
                &format!("SELECT delivery_error FROM chat_messages WHERE id = '{id}'"),
            )
            .await;
            (state.unwrap_or_default(), error.unwrap_or_default())
        }
    };
    eventually(PROMPT, "the last reply sent", || async {
        delivery(ids[3].clone()).await.0 == "sent"
    })
    .await;
    assert_eq!(*seen.lock().unwrap(), texts, "each tried once, in order");
    let (state, error) = delivery(ids[0].clone()).await;
    assert_eq!(state, "failed", "{error}");
    assert!(
        error.contains("413") && error.contains("not tried again"),
        "{error}"
    );
    let (state, error) = delivery(ids[2].clone()).await;
    assert_eq!(state, "failed", "{error}");
    assert!(error.contains("400"), "{error}");
    assert_eq!(delivery(ids[1].clone()).await.0, "sent");
    // The holder's page is told of each failed reply.
    let mut failed = Vec::new();
    let deadline = std::time::Instant::now() + PROMPT;
    while failed.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let e = alice
            .next(left)
            .await
            .expect("the failed replies told to the holder");
        if e.event == "chat_message" && e.data["delivery"] == "failed" {
            failed.push(
                e.data["message_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    assert_eq!(failed, [ids[0].clone(), ids[2].clone()]);
    // Operators see it: the channel's last error, and no retry counted.
    let (_, ch) = app.get(ADMIN, "/api/v1/ops/channels").await;
    let web = ch["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "web")
        .cloned()
        .unwrap_or_default();
    assert!(
        web["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("400"),
        "{web}"
    );
    let metrics = metrics_text(&app).await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("switchboard_chat_replies_total{")
                && l.contains("outcome=\"retry\"")),
        "{metrics}"
    );
    app.stop().await;
}

/// The deliveries of one app as jobs for its store.
async fn jobs_for(app: &TestApp, events: &[Value]) -> Vec<switchboard::store::chats::ChatDelivery> {
    let mut jobs = Vec::new();
    for v in events {
        let body = serde_json::to_vec(v).unwrap();
        let event = switchboard::domain::chat::parse_event(&body).unwrap();
        let input = switchboard::chat::delivery_input(app.store(), event)
            .await
            .unwrap();
        jobs.push(switchboard::store::chats::ChatDelivery {
            service_id: "chat".into(),
            input,
            content_hash: switchboard::domain::chat::content_hash(&body),
        });
    }
    jobs
}

/// What a database holds of its chats, without the ids it made up.
async fn chat_state(app: &TestApp) -> Vec<Vec<String>> {
    vec![
        app.db
            .texts(
                "SELECT c.external_id || '|' || m.seq || '|' || m.sender || '|' || m.text || '|'
                    || COALESCE(m.sender_name, '-') || '|' || COALESCE(t.state, 'no task') || '|'
                    || COALESCE(t.customer_name, '-')
                 FROM chat_messages m JOIN chats c ON c.id = m.chat_id LEFT JOIN tasks t ON t.id = m.task_id
                 ORDER BY c.external_id, m.seq",
            )
            .await,
        app.db
            .texts(
                "SELECT c.external_id || '|' || c.state || '|' || c.messages_total || '|'
                    || COALESCE(c.customer_name, '-') || '|' || COALESCE(c.customer_email, '-') || '|'
                    || COALESCE(c.customer_user_id, '-') || '|' || COALESCE(c.customer_phone, '-') || '|'
                    || COALESCE(c.language, '-') || '|' || CASE WHEN c.left_at IS NULL THEN 'here' ELSE 'left' END
                    || '|' || CASE WHEN c.ended_at IS NULL THEN 'on' ELSE 'ended' END || '|'
                    || COALESCE(t.state, 'no task')
                 FROM chats c LEFT JOIN tasks t ON t.id = c.task_id ORDER BY c.external_id",
            )
            .await,
        app.db
            .texts(
                "SELECT state || '|' || COALESCE(subject, '-') || '|'
                    || COALESCE(customer_name, '-') || '|' || customer_kind || '|' || params
                 FROM tasks ORDER BY 1",
            )
            .await,
        app.db
            .texts("SELECT kind FROM task_changes ORDER BY 1")
            .await,
    ]
}

/// Events applied together in one batch (one transaction) leave what the
/// same events applied one at a time leave, tell the holder the same, and
/// get the same answers: on PostgreSQL the batch is written set-wise (a
/// start after the chat's first message, a start that completes a live
/// task; a customer leaving and an ended chat left to the per-event path),
/// the single deliveries event by event.
async fn a_batch_does_what_its_events_do_one_by_one(db: Db) {
    let kind = |id: &str, chat: &str, t: &str| json!({"id": id, "channel": "web", "type": t, "chat_id": chat});
    let before = [
        started("p-0", "pre"),
        message("p-1", "pre", "customer", "first"),
        started("p-2", "pre2"),
        message("p-3", "pre3", "customer", "no start yet"),
        message("p-4", "greeted", "bot", "Welcome (bot)"),
        started("p-5", "wrapped"),
        started("p-6", "pre4"),
        json!({"id": "p-7", "channel": "web", "type": "chat.message", "chat_id": "botfirst",
               "from": "bot", "text": "Hi, I am HelpBot", "sender_name": "HelpBot"}),
    ];
    let batch = [
        started("b-1", "s1"),
        message("b-2", "s1", "customer", "m1"),
        message("b-3", "s1", "bot", "m2"),
        message("b-4", "s2", "customer", "before the start"),
        started("b-5", "s2"),
        message("b-6", "s3", "bot", "a bot first"),
        message("b-7", "s3", "customer", "now me"),
        started("b-8", "s4"),
        kind("b-9", "s4", "chat.customer_left"),
        message("b-10", "s4", "customer", "back again"),
        message("b-11", "pre", "customer", "second"),
        started("b-12", "pre2"),
        message("b-13", "pre2", "customer", "more"),
        message("b-2", "s1", "customer", "m1"),
        started("b-15", "s5"),
        kind("b-16", "s5", "chat.ended"),
        message("b-17", "s6", "agent", "nobody asked"),
        message("b-18", "pre3", "customer", "still no start"),
        started("b-19", "pre3"),
        // A bot's line before the customer's first, taken in before the
        // batch: it joins the task the customer's line makes.
        message("b-20", "greeted", "customer", "hi bot"),
        // The chat system starts a live chat again with its first words
        // (with another start in the batch, and alone).
        started("b-21", "pre2"),
        started("b-23", "pre4"),
        // The customer's first line after a named bot's: the bot is not the customer.
        message("b-24", "botfirst", "customer", "I need help"),
        // The customer writes again after the chat's task was wrapped up.
        message("b-22", "wrapped", "customer", "one more question"),
    ];
    let mut states = Vec::new();
    let mut answers = Vec::new();
    for together in [true, false] {
        let app = start(db, 900).await;
        let store = app.store();
        for job in jobs_for(&app, &before).await {
            store
                .apply_chat_delivery(&job.service_id, &job.input, &job.content_hash)
                .await
                .unwrap();
        }
        // Alice holds the first chat's task before the batch.
        let pre_task = app
            .db
            .texts("SELECT task_id FROM chats WHERE external_id = 'pre'")
            .await;
        app.pickup(&token("alice"), &pre_task[0]).await;
        // And the task of a chat whose first line came before its start
        // (the start is in the batch).
        let pre3_task = app
            .db
            .texts("SELECT task_id FROM chats WHERE external_id = 'pre3'")
            .await;
        app.pickup(&token("alice"), &pre3_task[0]).await;
        // Bob answered the chat "wrapped" and marked it handled.
        let wrapped = app
            .db
            .texts("SELECT task_id FROM chats WHERE external_id = 'wrapped'")
            .await;
        let (s, b) = app
            .post(
                ADMIN,
                &format!("/api/v1/tasks/{}/outcome", wrapped[0]),
                json!({"agent": "bob", "result": "accepted", "ended": true}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let jobs = jobs_for(&app, &batch).await;
        let results = if together {
            store.apply_chat_deliveries(&jobs).await
        } else {
            let mut r = Vec::new();
            for job in &jobs {
                r.push(
                    store
                        .apply_chat_delivery(&job.service_id, &job.input, &job.content_hash)
                        .await,
                );
            }
            r
        };
        // Answers without the ids each database made up: tasks numbered in
        // the order they appear, messages present or not.
        let mut tasks: Vec<String> = Vec::new();
        let mut said = Vec::new();
        for r in results {
            let d = r.expect("every event is applied");
            let mut b = d.body.clone();
            if let Some(t) = b["task_id"].as_str() {
                let n = tasks.iter().position(|x| x == t).unwrap_or_else(|| {
                    tasks.push(t.to_string());
                    tasks.len() - 1
                });
                b["task_id"] = json!(n);
            }
            b["message_id"] = json!(!b["message_id"].is_null());
            said.push((d.status, d.replay, b));
        }
        answers.push(said);
        // Her entry takes the subject and the customer the start told.
        let entry = app
            .db
            .texts(&format!(
                "SELECT subject || ' / ' || customer_name FROM user_sessions WHERE task_id = '{}'",
                pre3_task[0]
            ))
            .await;
        assert_eq!(
            entry,
            ["Where is my parcel? / Dana Customer"],
            "together: {together}"
        );
        let mut state = chat_state(&app).await;
        // What alice was told, without the ids.
        let told: Vec<String> = app
            .db
            .texts("SELECT kind || ' ' || payload FROM agent_events WHERE agent_id = 'alice' ORDER BY seq")
            .await
            .into_iter()
            .map(|t| {
                let (kind, payload) = t.split_once(' ').unwrap();
                let mut v: Value = serde_json::from_str(payload).unwrap();
                for id in ["message_id", "task_id", "session_id", "sent_at"] {
                    if let Some(x) = v.get_mut(id) {
                        *x = json!(!x.is_null());
                    }
                }
                format!("{kind} {v}")
            })
            .collect();
        assert!(told.iter().any(|t| t.contains("\"second\"")), "{told:#?}");
        state.push(told);
        if together {
            // The batch was one transaction, not a fallback event by event.
            assert_eq!(
                app.count(
                    "SELECT count(DISTINCT received_at) FROM chat_events WHERE event_id LIKE 'b-%'"
                )
                .await,
                1
            );
        }
        states.push(state);
        app.stop().await;
    }
    assert_eq!(answers[0], answers[1], "the batch's answers");
    assert_eq!(states[0], states[1], "what the batch left");
    // And what they left is what the events say.
    let messages = &states[0][0];
    assert_eq!(messages.len(), 26, "{messages:#?}");
    assert!(
        !states[0][1]
            .iter()
            .chain(&states[0][2])
            .any(|t| t.contains("HelpBot")),
        "{:#?}",
        states[0]
    );
    // The bot's greeting joined the customer's task, taken in before it or
    // in the same batch.
    for greeting in [
        "greeted|1|bot|Welcome (bot)|-|queued|-",
        "s3|1|bot|a bot first|-|queued|-",
    ] {
        assert!(
            messages.contains(&greeting.to_string()),
            "{greeting}: {messages:#?}"
        );
    }
    // A start again with the chat's first words stores them once.
    for chat in ["pre2|", "pre4|"] {
        assert_eq!(
            messages
                .iter()
                .filter(|m| m.starts_with(chat) && m.contains("Hello, my parcel is late"))
                .count(),
            1,
            "{chat} {messages:#?}"
        );
    }
    // A follow-up of a wrapped-up chat is the customer the chat knows,
    // about what it was about.
    assert!(
        messages
            .contains(&"wrapped|2|customer|one more question|-|queued|Dana Customer".to_string()),
        "{messages:#?}"
    );
    assert!(
        states[0][2]
            .iter()
            .any(|t| t.starts_with("queued|Where is my parcel?|Dana Customer|")),
        "{:#?}",
        states[0][2]
    );
    assert!(
        messages.contains(
            &"s2|2|customer|Hello, my parcel is late|Dana Customer|queued|Dana Customer"
                .to_string()
        ),
        "{messages:#?}"
    );
    let tasks = &states[0][2];
    assert_eq!(
        tasks.iter().filter(|t| t.starts_with("cancelled|")).count(),
        2,
        "{tasks:#?}"
    );
}

/// More deliveries at once than the intake works on (256): the rest wait
/// their turn, and every one is applied once and answered.
async fn a_flood_waits_its_turn_and_loses_nothing(db: Db) {
    let app = start(db, 900).await;
    const FLOOD: usize = 600;
    let answers = futures_util::future::join_all((0..FLOOD).map(|i| {
        let app = &app;
        async move {
            let (s, b, replay) = post_event(
                &app.client,
                &app.url,
                NEW_SECRET,
                &started(&format!("flood-{i}"), &format!("flood-chat-{i}")),
            )
            .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
            assert!(!replay);
            b["task_id"].as_str().unwrap().to_string()
        }
    }))
    .await;
    let distinct: std::collections::HashSet<&String> = answers.iter().collect();
    assert_eq!(distinct.len(), FLOOD);
    assert_eq!(
        counts(&app).await,
        [FLOOD as i64, FLOOD as i64, FLOOD as i64, FLOOD as i64]
    );
    app.stop().await;
}

/// Events taken in out of order or late keep their meaning: an end that
/// came before its start leaves the chat over (its task recorded as
/// cancelled, never offered); a customer writing after their task was
/// wrapped up gets a new task, as a new start would; a chat that has
/// ended gives no open-chat link.
async fn late_and_closing_events_keep_their_meaning(db: Db) {
    let app = start(db, 300).await;
    let (c, url) = (&app.client, &app.url);
    let post = |e: Value| async move {
        let (s, r, _) = post_event(c, url, NEW_SECRET, &e).await;
        assert!(s.is_success(), "{s} {r}");
        r
    };
    // The end first, then its start (written before the end).
    let ended = json!({"id": "e-1", "channel": "web", "type": "chat.ended", "chat_id": "late",
                       "sent_at": "2026-01-31T12:05:00Z"});
    assert_eq!(post(ended).await["task_id"], Value::Null);
    let r = post(started("s-1", "late")).await;
    let late = r["task_id"].as_str().expect("the start's task").to_string();
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{late}")).await;
    assert_eq!(t["state"], "cancelled", "never offered: {t}");
    assert_eq!(t["chat"]["state"], "ended", "the chat stays over: {t}");
    assert_eq!(t["messages"]["count"], 1, "its first words are kept: {t}");
    // A line written before the end, taken in later, joins that task.
    let mut words = message("m-1", "late", "customer", "Are you there?");
    words["sent_at"] = json!("2026-01-31T12:01:00Z");
    let r = post(words).await;
    assert_eq!(
        (&r["task_created"], &r["task_id"]),
        (&json!(false), &json!(late)),
        "{r}"
    );
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{late}")).await;
    assert_eq!(
        (&t["state"], &t["chat"]["state"]),
        (&json!("cancelled"), &json!("ended")),
        "{t}"
    );
    assert_eq!(t["messages"]["count"], 2, "{t}");
    // A start written after the end is a new conversation.
    let mut again = started("s-2", "late");
    again["sent_at"] = json!("2026-01-31T13:00:00Z");
    let r = post(again).await;
    let fresh = r["task_id"].as_str().expect("a new task").to_string();
    assert_ne!(fresh, late);
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{fresh}")).await;
    assert!(
        matches!(t["state"].as_str(), Some("queued" | "offered")),
        "{t}"
    );

    // An end dated far in the future (a wrong clock) does not silence its
    // chat for good: taken as received, a later start opens a new task.
    post(started("s-f", "future")).await;
    post(
        json!({"id": "e-f", "channel": "web", "type": "chat.ended", "chat_id": "future",
                "sent_at": "2100-01-01T00:00:00Z"}),
    )
    .await;
    let mut back = started("s-f2", "future");
    back["sent_at"] = json!(chrono::Utc::now().to_rfc3339());
    let r = post(back).await;
    assert_eq!(r["task_created"], true, "{r}");

    // Alice answers a chat, marks it handled; the customer writes again.
    let r = post(started("s-3", "wrapped")).await;
    let first = r["task_id"].as_str().unwrap().to_string();
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{first}/outcome"),
            json!({"agent": "alice", "result": "accepted", "ended": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "wrap_up", "{b}");
    let r = post(message("m-3", "wrapped", "customer", "One more question")).await;
    assert_eq!(
        r["task_created"], true,
        "a new task, not a line in a wrap-up: {r}"
    );
    assert_ne!(r["task_id"], json!(first));

    // A chat that ended while its agent holds it: no link to open it.
    let r = post(started("s-4", "closing")).await;
    let held = r["task_id"].as_str().unwrap().to_string();
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{held}/outcome"),
            json!({"agent": "bob", "result": "accepted"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, h) = app
        .get(&token("bob"), &format!("/api/v1/tasks/{held}/chat-handle"))
        .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    let link = h["url"].as_str().unwrap().to_string();
    post(json!({"id": "e-4", "channel": "web", "type": "chat.ended", "chat_id": "closing"})).await;
    let (s, b) = app
        .get(&token("bob"), &format!("/api/v1/tasks/{held}/chat-handle"))
        .await;
    assert_eq!(
        (s, &b["error"]["code"]),
        (StatusCode::CONFLICT, &json!("chat_ended")),
        "{b}"
    );
    let (s, _, page) = follow(&app, &link, &token("bob")).await;
    assert_eq!(s, StatusCode::GONE, "{page}");
    assert!(page.contains("This chat is over"), "{page}");
    app.stop().await;
}

/// A customer who leaves while the chat is offered ends the offer as
/// `cancelled`, counted in `switchboard_offer_results_total` (a replay of
/// the event counts nothing more).
async fn a_chat_left_while_offered_counts_the_offer_cancelled(db: Db) {
    let app = start(db, 900).await;
    let (c, url) = (&app.client, &app.url);
    let mut alice = EventStream::open(&app.url, &token("alice")).await;
    let (s, r, _) = post_event(c, url, NEW_SECRET, &started("o-1", "chat-o")).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let task = r["task_id"].as_str().unwrap().to_string();
    let offer = alice
        .expect_kind("offer", PROMPT, "an offer of the chat")
        .await;
    assert_eq!(offer.data["task_id"], task.as_str());
    let left =
        json!({"id": "o-2", "channel": "web", "type": "chat.customer_left", "chat_id": "chat-o"});
    for _ in 0..2 {
        let (s, r, _) = post_event(c, url, NEW_SECRET, &left).await;
        assert_eq!(s, StatusCode::OK, "{r}");
    }
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["state"], "cancelled", "{t}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"switchboard_offer_results_total{result="cancelled"} 1"#),
        "{metrics}"
    );
    app.stop().await;
}

/// A chat's customer given a national number is found by it, as a call's
/// is: `[directory] default_calling_code` applies to chats too.
async fn a_chat_customers_national_number_finds_their_contact(db: Db) {
    let db = TestDb::create(db).await;
    let text = config(&db.url, 900) + "[directory]\ndefault_calling_code = 41\n";
    let app = TestApp::spawn_on(db, Some(text)).await;
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/contacts/c-eve",
            json!({"name": "Eve Example", "phone": "+41 79 555 11 22"}),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let event = json!({
        "id": "n-1", "channel": "web", "type": "chat.started", "chat_id": "chat-n",
        "customer": {"name": "Eve", "phone": "079 555 11 22"},
        "text": "Hello",
    });
    let (s, r, _) = post_event(&app.client, &app.url, NEW_SECRET, &event).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let (_, task) = app
        .get(
            ADMIN,
            &format!("/api/v1/tasks/{}", r["task_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(task["customer"]["kind"], "external", "{task}");
    assert_eq!(task["customer"]["ref"], "c-eve", "{task}");
    assert_eq!(task["customer"]["phone"], "+41795551122", "{task}");
    app.stop().await;
}

on_both_backends!(
    a_chat_customers_national_number_finds_their_contact,
    a_chat_left_while_offered_counts_the_offer_cancelled,
    replies_are_relayed_signed_and_retried,
    a_redirected_reply_is_not_sent,
    a_reply_refused_for_good_fails_at_once,
    refused_deliveries_store_nothing,
    every_event_type_and_malformed_bodies,
    a_replayed_delivery_has_one_effect,
    a_burst_of_chats_is_applied_once_and_in_order,
    one_bad_event_costs_only_itself,
    a_batch_does_what_its_events_do_one_by_one,
    a_flood_waits_its_turn_and_loses_nothing,
    routed_accepted_handed_over,
    an_expired_handle_is_refused,
    rotated_keys_retire_old_handles,
    late_and_closing_events_keep_their_meaning,
);
