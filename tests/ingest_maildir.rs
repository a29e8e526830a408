//! Mail from a local Maildir becomes tasks through the real ingestion path,
//! on SQLite and on PostgreSQL: threading, loop protection, deduplication and
//! the quarantine.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::app::{ADMIN, ALICE, Db, TestApp, TestDb, base_config};
use support::mail::{deliver_maildir, mail, wait_for};
use support::process::serve;

const WAIT: Duration = Duration::from_secs(20);

/// An instance with two Maildir mailboxes feeding Support, and a small size limit.
async fn spawn(db: Db, policy: &str) -> (TestApp, PathBuf, PathBuf) {
    let db = TestDb::create(db).await;
    let (text, a, b) = two_maildirs(&db, policy);
    (TestApp::spawn_on(db, Some(text)).await, a, b)
}

/// The configuration of [`spawn`] (created folders included): the text and
/// the roots of its two Maildirs.
fn two_maildirs(db: &TestDb, policy: &str) -> (String, PathBuf, PathBuf) {
    let a = db.dir().join("inbox-a");
    let b = db.dir().join("inbox-b");
    let text = base_config(&db.url).replace(
        "email_address = \"support@example.com\"",
        &format!("email_address = \"support@example.com\"\nauto_reply_policy = \"{policy}\""),
    ) + &format!(
        r#"
[ingest]
maildir_scan_ms = 100
maildir_settle_ms = 300
max_message_bytes = 200000
lease_secs = 3

[[mailboxes]]
id = "inbox-a"
service = "support"
kind = "maildir"
path = "{}"

[[mailboxes]]
id = "inbox-b"
service = "support"
kind = "maildir"
path = "{}"
"#,
        a.display(),
        b.display()
    );
    for root in [&a, &b] {
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
    }
    (text, a, b)
}

async fn tasks(app: &TestApp) -> Vec<Value> {
    let (s, b) = app
        .get(ADMIN, "/api/v1/tasks?modality=email&limit=200")
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["items"].as_array().cloned().unwrap_or_default()
}

async fn wait_tasks(app: &TestApp, n: usize) -> Vec<Value> {
    wait_for(WAIT, &format!("{n} email task(s)"), || async {
        let t = tasks(app).await;
        (t.len() >= n).then_some(t)
    })
    .await
}

async fn wait_messages(app: &TestApp, n: i64) {
    wait_for(WAIT, &format!("{n} stored message(s)"), || async {
        (app.count("SELECT count(*) FROM messages").await >= n).then_some(())
    })
    .await;
}

fn new_is_empty(root: &Path) -> bool {
    std::fs::read_dir(root.join("new"))
        .map(|d| d.count() == 0)
        .unwrap_or(false)
}

async fn mail_becomes_a_task_with_its_customer(db: Db) {
    let (app, inbox, _) = spawn(db, "attach").await;
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/contacts/ada",
            json!({"name": "Ada Lovelace", "email": "ada@analytical.example",
                   "phone": "+44 20 7946 0958", "company": "Analytical Engines"}),
        )
        .await;
    assert!(s.is_success(), "{s}: {b}");
    deliver_maildir(
        &inbox,
        "1.a.host",
        &mail(
            "Ada <ADA@analytical.example>",
            "Engine broken",
            "m1@analytical.example",
            &[],
            "It prints -1/29.",
        ),
    );
    let t = wait_tasks(&app, 1).await;
    assert_eq!(t[0]["subject"], "Engine broken");
    assert_eq!(t[0]["state"], "queued");
    assert_eq!(
        (
            t[0]["customer"]["kind"].as_str(),
            t[0]["customer"]["name"].as_str()
        ),
        (Some("external"), Some("Ada Lovelace"))
    );
    // The address book's entry fills in what the mail did not say, and the
    // task knows which of the service's addresses was written to.
    let (_, full) = app
        .get(
            ADMIN,
            &format!("/api/v1/tasks/{}", t[0]["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(
        (
            full["customer"]["email"].as_str(),
            full["customer"]["phone"].as_str(),
            full["customer"]["company"].as_str(),
        ),
        (
            Some("ada@analytical.example"),
            Some("+442079460958"),
            Some("Analytical Engines")
        ),
        "{full}"
    );
    assert_eq!(
        full["system_parameters"]["reached"], "support@example.com",
        "{full}"
    );
    wait_for(
        WAIT,
        "the file moved to cur/ with the Seen flag",
        || async {
            std::fs::read_dir(inbox.join("cur"))
                .ok()?
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(":2,S"))
                .then_some(())
        },
    )
    .await;
    assert!(new_is_empty(&inbox));
    // The task's messages are listed for an agent who takes it.
    let id = t[0]["id"].as_str().unwrap();
    app.pickup(ALICE, id).await;
    let (s, m) = app
        .get(ALICE, &format!("/api/v1/tasks/{id}/messages"))
        .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["items"][0]["message_id"], "m1@analytical.example");
    assert_eq!(
        m["items"][0]["from"]["address"], "ADA@analytical.example",
        "the local part is kept as written"
    );
    app.stop().await;
}

async fn replies_thread_into_their_conversation(db: Db) {
    let (app, inbox, _) = spawn(db, "attach").await;
    deliver_maildir(
        &inbox,
        "1.a.host",
        &mail(
            "c@customer.example",
            "Question",
            "q1@customer.example",
            &[],
            "First.",
        ),
    );
    let t = wait_tasks(&app, 1).await;
    let first = t[0]["id"].as_str().unwrap().to_string();
    // A reply while the task is open joins it: no new task.
    deliver_maildir(
        &inbox,
        "2.a.host",
        &mail(
            "c@customer.example",
            "Re: Question",
            "q2@customer.example",
            &[
                ("In-Reply-To", "<q1@customer.example>"),
                ("References", "<q1@customer.example>"),
            ],
            "Second.",
        ),
    );
    wait_messages(&app, 2).await;
    assert_eq!(tasks(&app).await.len(), 1);
    let (_, m) = app
        .get(ADMIN, &format!("/api/v1/tasks/{first}/messages"))
        .await;
    assert_eq!(m["items"].as_array().map(Vec::len), Some(2), "{m}");
    assert_eq!(m["items"][1]["disposition"], "appended");
    // Once the task is concluded, a further reply opens a new task in the same conversation.
    let session = app.pickup(ALICE, &first).await;
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{first}/handled"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Handled (in wrap-up): the customer's next words are new work, not a
    // line in a task nobody works any more.
    deliver_maildir(
        &inbox,
        "3.a.host",
        &mail(
            "c@customer.example",
            "Re: Question",
            "q3@customer.example",
            &[("References", "<q1@customer.example> <q2@customer.example>")],
            "Third.",
        ),
    );
    let t = wait_tasks(&app, 2).await;
    let (_, m) = app
        .get(ADMIN, &format!("/api/v1/tasks/{first}/messages"))
        .await;
    assert_eq!(m["items"].as_array().map(Vec::len), Some(2), "{m}");
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "concluded", "{b}");
    deliver_maildir(
        &inbox,
        "4.a.host",
        &mail(
            "c@customer.example",
            "Re: Question",
            "q4@customer.example",
            &[("References", "<q1@customer.example> <q3@customer.example>")],
            "Fourth.",
        ),
    );
    wait_messages(&app, 4).await;
    let conversations = app
        .count(
            "SELECT count(DISTINCT conversation_id) FROM tasks WHERE conversation_id IS NOT NULL",
        )
        .await;
    assert_eq!(conversations, 1, "the tasks share the conversation: {t:?}");
    app.stop().await;
}

async fn the_same_mail_twice_is_one_task(db: Db) {
    let (app, a, b) = spawn(db, "attach").await;
    let raw = mail(
        "d@customer.example",
        "Duplicate me",
        "dup@customer.example",
        &[],
        "Same body.",
    );
    deliver_maildir(&a, "1.a.host", &raw);
    wait_tasks(&app, 1).await;
    // Delivered again to the other mailbox of the service, with trace headers added,
    // and again to the first (as after a crash between commit and the move to cur/).
    let mut traced = b"Received: from mx2.example by mx.example; Tue, 24 Nov 2026 08:00:05 +0000\r\nDelivered-To: support@example.com\r\n".to_vec();
    traced.extend_from_slice(&raw);
    deliver_maildir(&b, "2.b.host", &traced);
    deliver_maildir(&a, "3.a.host", &raw);
    wait_for(WAIT, "both copies seen", || async {
        (new_is_empty(&a) && new_is_empty(&b)).then_some(())
    })
    .await;
    wait_for(WAIT, "duplicates counted", || async {
        (app.count("SELECT CAST(sum(duplicates_total) AS BIGINT) FROM mailboxes")
            .await
            >= 2)
            .then_some(())
    })
    .await;
    assert_eq!(tasks(&app).await.len(), 1);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 1);
    // A different mail reusing the Message-ID is not lost.
    deliver_maildir(
        &a,
        "4.a.host",
        &mail(
            "d@customer.example",
            "Another question",
            "dup@customer.example",
            &[],
            "Different body.",
        ),
    );
    wait_tasks(&app, 2).await;
    // A file whose name has no room for the Seen flag (254 bytes) is taken
    // and moved to cur/ under a shortened name; the mail after it too.
    let long = "y".repeat(254);
    deliver_maildir(
        &a,
        &long,
        &mail(
            "e@customer.example",
            "Long name",
            "long@customer.example",
            &[],
            "x",
        ),
    );
    deliver_maildir(
        &a,
        "5.a.host",
        &mail(
            "f@customer.example",
            "After it",
            "after@customer.example",
            &[],
            "y",
        ),
    );
    wait_tasks(&app, 4).await;
    wait_for(WAIT, "both moved to cur/", || async {
        new_is_empty(&a).then_some(())
    })
    .await;
    let (_, boxes) = app.get(ADMIN, "/api/v1/ops/mailboxes").await;
    let inbox_a = boxes["items"]
        .as_array()
        .and_then(|items| items.iter().find(|m| m["id"] == "inbox-a"))
        .unwrap_or_else(|| panic!("{boxes}"));
    assert_eq!(inbox_a["up"], true, "the mailbox keeps going: {inbox_a}");
    app.stop().await;
}

async fn automatic_mail_follows_the_policy(db: Db) {
    for policy in ["attach", "drop", "queue"] {
        let (app, inbox, _) = spawn(db, policy).await;
        deliver_maildir(
            &inbox,
            "1.a.host",
            &mail(
                "e@customer.example",
                "Order",
                "o1@customer.example",
                &[],
                "Where is it?",
            ),
        );
        wait_tasks(&app, 1).await;
        let auto = [
            mail(
                "e@customer.example",
                "Automatic reply: Order",
                "o2@customer.example",
                &[
                    ("Auto-Submitted", "auto-replied"),
                    ("In-Reply-To", "<o1@customer.example>"),
                ],
                "Out of office.",
            ),
            mail(
                "news@shop.example",
                "Deals",
                "o3@shop.example",
                &[("Precedence", "bulk"), ("List-Id", "<deals.shop.example>")],
                "Buy.",
            ),
            mail(
                "x@customer.example",
                "Vacation",
                "o4@customer.example",
                &[("X-Autoreply", "yes")],
                "Away.",
            ),
        ];
        for (i, raw) in auto.iter().enumerate() {
            deliver_maildir(&inbox, &format!("{}.a.host", i + 2), raw);
        }
        wait_messages(&app, 4).await;
        let n = tasks(&app).await.len();
        let (_, m) = app.get(ADMIN, "/api/v1/ops/mailboxes").await;
        match policy {
            "queue" => assert_eq!(n, 3, "the reply to an open task joins it; the others queue"),
            _ => assert_eq!(n, 1, "{policy}: automatic mail never makes a task; {m}"),
        }
        let attached = app
            .count("SELECT count(*) FROM messages WHERE disposition = 'attached'")
            .await;
        assert_eq!(attached, if policy == "attach" { 1 } else { 0 }, "{policy}");
        // Operators see what became of each mail, the noise too.
        let (recorded, attached) = match policy {
            "attach" => (2, 1),
            "drop" => (3, 0),
            _ => (0, 0),
        };
        let metrics = app.metrics().await;
        for (outcome, n) in [
            ("queued", if policy == "queue" { 3 } else { 1 }),
            ("recorded", recorded),
            ("attached", attached),
        ] {
            let line = format!(
                "switchboard_ingest_mail_total{{mailbox=\"inbox-a\",outcome=\"{outcome}\"}} {n}"
            );
            assert!(
                n == 0 || metrics.contains(&line),
                "{policy}: {line}\n{metrics}"
            );
        }
        // A customer's mail relayed by the service's own group (its address
        // set up as a Google Group adds list headers) is no one else's list
        // mail: a task under every policy, stored as normal mail.
        deliver_maildir(
            &inbox,
            "9.a.host",
            &mail(
                "anna@customer.example",
                "Bestellung 4711",
                "g1@customer.example",
                &[
                    ("List-ID", "<support.example.com>"),
                    ("List-Post", "<mailto:support@example.com>"),
                    ("Precedence", "list"),
                ],
                "Wo ist meine Bestellung?",
            ),
        );
        let all = wait_tasks(&app, n + 1).await;
        assert!(
            all.iter().any(|t| t["subject"] == "Bestellung 4711"),
            "{policy}: {all:?}"
        );
        let kind = app
            .count("SELECT count(*) FROM messages WHERE message_id = 'g1@customer.example' AND kind = 'normal'")
            .await;
        assert_eq!(kind, 1, "{policy}");
        app.stop().await;
    }
}

/// A Maildir the mail server has not made yet (it makes it at its first
/// delivery): the mailbox waits for it without an error, then takes the
/// first mail.
async fn a_maildir_made_at_its_first_delivery_is_waited_for(db: Db) {
    let db = TestDb::create(db).await;
    let (text, a, b) = two_maildirs(&db, "attach");
    std::fs::remove_dir_all(&a).unwrap();
    let app = TestApp::spawn_on(db, Some(text)).await;
    let _ = b;
    // A few scans go by.
    wait_for(WAIT, "inbox-a scanned", || async {
        let (_, boxes) = app.get(ADMIN, "/api/v1/ops/mailboxes").await;
        boxes["items"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == "inbox-a" && m["last_sync_at"].is_string())
            .cloned()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, boxes) = app.get(ADMIN, "/api/v1/ops/mailboxes").await;
    let inbox = boxes["items"]
        .as_array()
        .and_then(|items| items.iter().find(|m| m["id"] == "inbox-a"))
        .cloned()
        .unwrap_or_default();
    assert!(inbox["last_error"].is_null(), "{inbox}");
    assert_eq!(inbox["up"], true, "{inbox}");
    deliver_maildir(
        &a,
        "1.a.host",
        &mail(
            "e@customer.example",
            "First",
            "first@customer.example",
            &[],
            "Hello",
        ),
    );
    wait_tasks(&app, 1).await;
    app.stop().await;
}

/// A customer's mail taken for automatic mail (a web form's
/// `Auto-Submitted`) is kept without a task: operators list it, download
/// it, and make it a task exactly once; the customer's reply then threads
/// onto that task.
async fn operators_make_recorded_mail_a_task(db: Db) {
    let (app, inbox, _) = spawn(db, "drop").await;
    let form = mail(
        "Anna Berg <anna@customer.example>",
        "Contact form: my order never came",
        "form1@customer.example",
        &[("Auto-Submitted", "auto-generated")],
        "Order 4711 never arrived.",
    );
    deliver_maildir(&inbox, "1.a.host", &form);
    wait_messages(&app, 1).await;
    deliver_maildir(
        &inbox,
        "2.a.host",
        &mail(
            "news@shop.example",
            "Deals",
            "deals1@shop.example",
            &[("Precedence", "bulk"), ("List-Id", "<deals.shop.example>")],
            "Buy.",
        ),
    );
    wait_messages(&app, 2).await;
    assert!(tasks(&app).await.is_empty(), "drop: no task");

    let (s, list) = app.get(ADMIN, "/api/v1/ops/recorded").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0]["subject"], "Deals", "newest first: {list}");
    assert_eq!(items[0]["kind"], "bulk", "{list}");
    let anna = &items[1];
    assert_eq!(anna["kind"], "auto_reply", "{list}");
    assert_eq!(anna["from"], "anna@customer.example", "{list}");
    assert_eq!(anna["from_name"], "Anna Berg", "{list}");
    assert_eq!(anna["mailbox"], "inbox-a", "{list}");
    assert_eq!(anna["service"], "support", "{list}");
    assert!(
        anna["classification"].is_object(),
        "why it was taken for automatic mail: {list}"
    );
    let id = anna["id"].as_str().unwrap().to_string();

    // The filters and their errors; admins only.
    let (_, other) = app.get(ADMIN, "/api/v1/ops/recorded?service=sales").await;
    assert_eq!(other["items"], json!([]), "{other}");
    // A page at a time, newest first, none twice, with the total.
    let (_, one) = app.get(ADMIN, "/api/v1/ops/recorded?limit=1").await;
    assert_eq!(one["items"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one["total"], 2, "{one}");
    assert_eq!(one["items"][0]["subject"], "Deals", "{one}");
    let next = one["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (_, two) = app
        .get(
            ADMIN,
            &format!("/api/v1/ops/recorded?limit=1&cursor={next}"),
        )
        .await;
    assert_eq!(two["items"][0]["id"], anna["id"], "{two}");
    assert!(two["next_cursor"].is_null(), "{two}");
    let (s, b) = app.get(ADMIN, "/api/v1/ops/recorded?cursor=forged").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = app.get(ADMIN, "/api/v1/ops/recorded?limit=0").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b.to_string().contains("limit"), "{b}");
    let (s, _) = app.get(ADMIN, "/api/v1/ops/recorded?state=held").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app.get(ALICE, "/api/v1/ops/recorded").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .post(
            ALICE,
            &format!("/api/v1/ops/recorded/{id}/task"),
            json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The mail as it came.
    let raw = app
        .client
        .get(format!("{}/api/v1/ops/recorded/{id}/raw", app.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(raw.bytes().await.unwrap().as_ref(), form.as_slice());

    // Made a task, once.
    let (s, made) = app
        .post(
            ADMIN,
            &format!("/api/v1/ops/recorded/{id}/task"),
            json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let task_id = made["task"].as_str().unwrap().to_string();
    let (s, again) = app
        .post(
            ADMIN,
            &format!("/api/v1/ops/recorded/{id}/task"),
            json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{again}");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("was made a task already"),
        "{again}"
    );
    let (s, _) = app
        .post(
            ADMIN,
            "/api/v1/ops/recorded/msg_nonexistent/task",
            json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, list) = app.get(ADMIN, "/api/v1/ops/recorded").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let all = tasks(&app).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let task = &all[0];
    assert_eq!(task["id"], task_id.as_str());
    assert_eq!(task["subject"], "Contact form: my order never came");
    assert_eq!(task["service"], "support", "{task}");
    let (_, full) = app.get(ADMIN, &format!("/api/v1/tasks/{task_id}")).await;
    assert_eq!(
        full["customer"]["address"], "anna@customer.example",
        "{full}"
    );
    assert_eq!(full["customer"]["name"], "Anna Berg", "{full}");
    let normal = app
        .count(&format!("SELECT count(*) FROM messages WHERE id = '{id}' AND kind = 'normal' AND disposition = 'queued' AND task_id = '{task_id}'"))
        .await;
    assert_eq!(normal, 1);
    assert!(
        app.metrics().await.contains("switchboard_tasks_created_total{modality=\"email\",service=\"support\",source=\"mail\"} 1"),
        "{}",
        app.metrics().await
    );

    // The customer's reply threads onto it.
    deliver_maildir(
        &inbox,
        "3.a.host",
        &mail(
            "anna@customer.example",
            "Re: Contact form: my order never came",
            "r1@customer.example",
            &[("In-Reply-To", "<form1@customer.example>")],
            "Any news?",
        ),
    );
    wait_messages(&app, 3).await;
    let joined = app
        .count(&format!("SELECT count(*) FROM messages WHERE message_id = 'r1@customer.example' AND task_id = '{task_id}'"))
        .await;
    assert_eq!(joined, 1, "the reply joins the task");
    assert_eq!(tasks(&app).await.len(), 1);
    app.stop().await;
}

async fn bad_mail_is_quarantined_and_the_line_keeps_flowing(db: Db) {
    let (app, inbox, _) = spawn(db, "attach").await;
    let huge = mail(
        "big@customer.example",
        "Huge",
        "huge@customer.example",
        &[],
        &"x".repeat(300_000),
    );
    deliver_maildir(&inbox, "1.a.host", &huge);
    deliver_maildir(&inbox, "2.a.host", b"");
    deliver_maildir(
        &inbox,
        "3.a.host",
        b"\x00\x01\x02 this is not a mail at all \xff\xfe",
    );
    deliver_maildir(
        &inbox,
        "4.a.host",
        &mail(
            "ok@customer.example",
            "After the bad ones",
            "ok@customer.example",
            &[],
            "Fine.",
        ),
    );
    let t = wait_tasks(&app, 1).await;
    assert_eq!(t[0]["subject"], "After the bad ones");
    let q = wait_for(WAIT, "quarantine entries", || async {
        let (_, q) = app.get(ADMIN, "/api/v1/ops/quarantine?state=held").await;
        let items = q["items"].as_array().cloned().unwrap_or_default();
        (items.len() >= 2).then_some(items)
    })
    .await;
    let reasons: Vec<&str> = q.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert!(reasons.contains(&"too_large"), "{q:?}");
    assert!(reasons.contains(&"unparseable"), "{q:?}");
    let (_, boxes) = app.get(ADMIN, "/api/v1/ops/mailboxes").await;
    let inbox_a = boxes["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "inbox-a")
        .cloned()
        .unwrap();
    assert!(
        inbox_a["counts"]["quarantined"].as_i64().unwrap() >= 2,
        "{inbox_a}"
    );
    assert_eq!(inbox_a["up"], true);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("switchboard_mailbox_up{mailbox=\"inbox-a\",service=\"support\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "switchboard_ingested_messages_total{mailbox=\"inbox-a\",service=\"support\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_ingest_lag_seconds{mailbox=\"inbox-a\""),
        "{metrics}"
    );

    // Operators: the raw source of unparseable mail is kept; release makes a task of it.
    let garbage = q
        .iter()
        .find(|e| e["reason"] == "unparseable" && e["size"].as_i64() > Some(0))
        .expect("garbage entry");
    let gid = garbage["id"].as_str().unwrap();
    let raw = app
        .client
        .get(format!("{}/api/v1/ops/quarantine/{gid}/raw", app.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(
        raw.bytes().await.unwrap().as_ref(),
        b"\x00\x01\x02 this is not a mail at all \xff\xfe"
    );
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/ops/quarantine/{gid}/retry"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "retry still fails: {b}");
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/ops/quarantine/{gid}/release"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["tasks"].as_array().map(Vec::len), Some(1));
    // What became of it is counted, like the mail the worker takes in.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("switchboard_ingest_mail_total{mailbox=\"inbox-a\",outcome=\"queued\"} 2"),
        "the good mail and the released one: {metrics}"
    );
    let (s, _) = app
        .post(
            ADMIN,
            &format!("/api/v1/ops/quarantine/{gid}/release"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "released once");
    let big = q.iter().find(|e| e["reason"] == "too_large").unwrap();
    let (s, b) = app
        .post(
            ADMIN,
            &format!(
                "/api/v1/ops/quarantine/{}/retry",
                big["id"].as_str().unwrap()
            ),
            Value::Null,
        )
        .await;
    // Its source was not kept: fetched again from the Maildir (cur/), and
    // still over the limit.
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("still cannot take it in") && m.contains("limit")),
        "{b}"
    );
    // Released (no size limit): fetched again and taken in, once.
    let (s, b) = app
        .post(
            ADMIN,
            &format!(
                "/api/v1/ops/quarantine/{}/release",
                big["id"].as_str().unwrap()
            ),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["tasks"].as_array().map(Vec::len), Some(1), "{b}");
    assert_eq!(
        app.count("SELECT count(*) FROM tasks WHERE subject = 'Huge'")
            .await,
        1
    );
    // Dismissed after it was taken in: 409, saying so; an unknown entry is 404.
    let (s, e) = app
        .post(
            ADMIN,
            &format!(
                "/api/v1/ops/quarantine/{}/dismiss",
                big["id"].as_str().unwrap()
            ),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e.to_string().contains("ingested"), "{e}");
    let (s, e) = app
        .post(
            ADMIN,
            "/api/v1/ops/quarantine/qrn_nonexistent/dismiss",
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    // Agents see none of this.
    let (s, _) = app.get(ALICE, "/api/v1/ops/quarantine").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.stop().await;
}

/// Every text column of every stored message, joined per message.
async fn stored_texts(app: &TestApp) -> Vec<String> {
    use switchboard::store::Store;
    let sql = "SELECT coalesce(from_address, '') || coalesce(from_name, '') || coalesce(subject, '') \
        || coalesce(message_id, '') || coalesce(in_reply_to, '') || coalesce(refs, '') || coalesce(recipients, '') \
        || coalesce(attachments, '') || coalesce(classification, '') || coalesce(text_body, '') || coalesce(html_body, '') \
        FROM messages";
    match app.store() {
        Store::Sqlite(pool, _) => sqlx::query_scalar(sql).fetch_all(pool).await,
        Store::Postgres(pool, _) => sqlx::query_scalar(sql).fetch_all(pool).await,
    }
    .expect("stored texts")
}

/// A raw NUL byte in any header, address or body cannot stop a mailbox
/// (PostgreSQL refuses NUL in text): every such mail is accounted for, the
/// stored texts hold no NUL, and the normal mail around them becomes tasks.
async fn nul_bytes_never_stall_a_mailbox(db: Db) {
    let (app, inbox, _) = spawn(db, "attach").await;
    let normal = |i: usize| {
        mail(
            "ok@customer.example",
            &format!("Neighbour {i}"),
            &format!("neighbour-{i}@customer.example"),
            &[],
            "Fine.",
        )
    };
    let hostile: Vec<Vec<u8>> = vec![
        b"From: Eve <eve@cust\0omer.test>\r\nTo: support@example.com\r\nSubject: From address\r\nMessage-ID: <n1@x>\r\n\r\nhi\r\n".to_vec(),
        b"From: E\0ve <eve@customer.test>\r\nTo: support@example.com\r\nSubject: From name\r\nMessage-ID: <n2@x>\r\n\r\nhi\r\n".to_vec(),
        b"From: eve@customer.test\r\nTo: supp\0ort@example.com\r\nCc: a\0b@example.com\r\nReply-To: r\0@customer.test\r\nSubject: Recipients\r\nMessage-ID: <n3@x>\r\n\r\nhi\r\n".to_vec(),
        b"From: eve@customer.test\r\nTo: support@example.com\r\nSubject: Sub\0ject\r\nMessage-ID: <n4\0@x>\r\n\r\nhi\r\n".to_vec(),
        b"From: eve@customer.test\r\nTo: support@example.com\r\nSubject: Threading\r\nMessage-ID: <n5@x>\r\nIn-Reply-To: <a\0b@x>\r\nReferences: <c\0d@x> <\0>\r\n\r\nhi\r\n".to_vec(),
        b"From: eve@customer.test\r\nTo: support@example.com\r\nSubject: Body\r\nMessage-ID: <n6@x>\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\ntext \0 body\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>html \0 body</p>\r\n--b--\r\n".to_vec(),
        b"From: eve@customer.test\r\nTo: support@example.com\r\nSubject: Attachment\r\nMessage-ID: <n7@x>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf; name=\"in\0voice.pdf\"\r\nContent-Disposition: attachment; filename=\"in\0voice.pdf\"\r\nContent-ID: <c\0id@x>\r\n\r\nJVBERi0=\r\n--b--\r\n".to_vec(),
        b"From: mailer-daemon@customer.test\r\nTo: support@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <n8@x>\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; b\0ob@x\r\nStatus: 5.1.\0\r\nX-Original-Message-ID: <o\0@x>\r\n--b--\r\n".to_vec(),
    ];
    deliver_maildir(&inbox, "0.a.host", &normal(0));
    for (i, raw) in hostile.iter().enumerate() {
        deliver_maildir(&inbox, &format!("{}.h.host", i + 1), raw);
    }
    deliver_maildir(&inbox, "99.z.host", &normal(1));
    // Every mail is either stored or held with the database's reason.
    let total = hostile.len() as i64 + 2;
    wait_for(WAIT, "every mail stored or quarantined", || async {
        let stored = app.count("SELECT count(*) FROM messages").await;
        let held = app.count("SELECT count(*) FROM quarantine").await;
        (stored + held >= total).then_some(())
    })
    .await;
    // The files move to cur/ after their batch commits: wait for the last.
    wait_for(WAIT, "every file taken from new/", || async {
        new_is_empty(&inbox).then_some(())
    })
    .await;
    let subjects: Vec<String> = tasks(&app)
        .await
        .iter()
        .filter_map(|t| t["subject"].as_str().map(str::to_string))
        .collect();
    for i in 0..2 {
        assert!(subjects.contains(&format!("Neighbour {i}")), "{subjects:?}");
    }
    // Whatever was held says why.
    let (_, q) = app.get(ADMIN, "/api/v1/ops/quarantine?state=held").await;
    for e in q["items"].as_array().unwrap() {
        assert_eq!(e["reason"], "unstorable", "{e}");
        assert!(!e["detail"].as_str().unwrap().is_empty(), "{e}");
    }
    // No stored text holds a NUL, and a task shows its cleaned fields.
    let texts = stored_texts(&app).await;
    assert_eq!(
        texts.len() as i64,
        app.count("SELECT count(*) FROM messages").await
    );
    assert!(texts.iter().all(|t| !t.contains('\0')), "{texts:?}");
    let from_address = tasks(&app)
        .await
        .into_iter()
        .find(|t| t["subject"] == "From address")
        .expect("the mail with a NUL in its From address is a task");
    assert_eq!(
        from_address["customer"]["address"], "eve@customer.test",
        "{from_address}"
    );
    assert!(subjects.contains(&"Subject".to_string()), "{subjects:?}");
    // Every task ingested is counted.
    let metrics = app.metrics().await;
    let counted = format!(
        "switchboard_tasks_created_total{{modality=\"email\",service=\"support\",source=\"mail\"}} {}",
        subjects.len()
    );
    assert!(metrics.contains(&counted), "{counted} in {metrics}");
    app.stop().await;
}

/// A mail as the parser would hand it over, made up field by field.
fn crafted(
    i: u32,
    content_hash: String,
    customer: &switchboard::domain::CustomerMatch,
) -> switchboard::store::Incoming {
    use switchboard::mail::{MailKind, ParsedMail};
    use switchboard::store::{Incoming, IncomingMail};
    Incoming::Mail(Box::new(IncomingMail {
        uid: Some(i),
        source_ref: Some(format!("crafted:{i}")),
        raw: format!("Subject: crafted {i}\r\n\r\nbody\r\n").into_bytes(),
        packed: None,
        source_id: None,
        parsed: ParsedMail {
            subject: Some(format!("Crafted {i}")),
            content_hash,
            ..ParsedMail::default()
        },
        kind: MailKind::Normal,
        customer: customer.clone(),
        customer_details: Default::default(),
    }))
}

/// Below the parser's cleaning, the batch logic itself cannot stall: a mail
/// the database refuses (here a NUL that PostgreSQL cannot take in a query)
/// goes to the quarantine with the database's reason and the rest commits.
/// (A NUL in a content hash: every text parsed from a mail is cleaned of
/// NUL bytes before it reaches the database.)
async fn a_refused_mail_is_quarantined_and_its_batch_commits(db: Db) {
    use switchboard::store::IngestBatch;
    let (app, _, _) = spawn(db, "attach").await;
    let store = app.store().clone();
    let customer = store.resolve_customer(None, None).await.unwrap().matched;
    let item = |i: u32, content_hash: String| crafted(i, content_hash, &customer);
    let report = store
        .commit_batch_resilient(&IngestBatch {
            mailbox_id: "inbox-a".into(),
            service_id: "support".into(),
            fence: None,
            cursor: None,
            items: vec![
                item(1, format!("{:064}", 1)),
                item(2, format!("{:063}\0", 2)),
                item(3, format!("{:064}", 3)),
            ],
            resolves_quarantine: None,
        })
        .await
        .expect("the batch commits");
    let (_, q) = app.get(ADMIN, "/api/v1/ops/quarantine?state=held").await;
    let held = q["items"].as_array().unwrap();
    if matches!(app.store(), switchboard::store::Store::Postgres(..)) {
        assert_eq!(report.new_tasks.len(), 2, "{report:?}");
        assert_eq!(report.quarantined, 1, "{report:?}");
        assert_eq!(held.len(), 1, "{q}");
        assert_eq!(held[0]["reason"], "unstorable");
        assert_eq!(held[0]["source_ref"], "crafted:2");
        assert!(
            held[0]["detail"].as_str().unwrap().contains("0x00"),
            "the database's reason: {}",
            held[0]["detail"]
        );
        // The operator can release it: its raw source was kept.
        let id = held[0]["id"].as_str().unwrap();
        let (s, b) = app
            .post(
                ADMIN,
                &format!("/api/v1/ops/quarantine/{id}/retry"),
                Value::Null,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    } else {
        // SQLite stores what PostgreSQL refuses.
        assert_eq!(report.new_tasks.len(), 3, "{report:?}");
        assert!(held.is_empty(), "{q}");
    }
    // Two copies of one mail in a batch (To and Cc two addresses of the
    // service): one task, and no trace of a second (no change, no webhook).
    let report = store
        .commit_batch_resilient(&IngestBatch {
            mailbox_id: "inbox-a".into(),
            service_id: "support".into(),
            fence: None,
            cursor: None,
            items: vec![item(7, format!("{:064}", 7)), item(7, format!("{:064}", 7))],
            resolves_quarantine: None,
        })
        .await
        .expect("the batch commits");
    assert_eq!(
        (report.new_tasks.len(), report.duplicates),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM task_changes WHERE kind = 'task.created'")
            .await,
        app.count("SELECT count(*) FROM tasks").await,
        "every task.created names a task that exists"
    );
    app.stop().await;
}

/// Two mailboxes of one service may take in the same mail at the same
/// moment (PostgreSQL, two workers): the batch whose insert finds it
/// stored meanwhile is committed again, and that mail counts as a
/// duplicate, leaving no task or conversation of its own behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_stored_meanwhile_by_another_worker_is_a_duplicate() {
    use switchboard::store::{IngestBatch, Store};
    let (app, _, _) = spawn(Db::Postgres, "attach").await;
    let store = app.store().clone();
    let Store::Postgres(pool, _) = &store else {
        unreachable!("a PostgreSQL store")
    };
    let customer = store.resolve_customer(None, None).await.unwrap().matched;
    let (same, other) = (format!("{:064}", 31), format!("{:064}", 32));
    // The other worker's transaction holds the same mail, not committed yet.
    let mut other_worker = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO messages (id, service_id, direction, kind, disposition, content_hash, received_at, size, raw)
         VALUES ('msg_meanwhile', 'support', 'inbound', 'normal', 'recorded', $1, 0, 1, '\\x00')",
    )
    .bind(&same)
    .execute(&mut *other_worker)
    .await
    .unwrap();
    let batch = IngestBatch {
        mailbox_id: "inbox-a".into(),
        service_id: "support".into(),
        fence: None,
        cursor: None,
        items: vec![crafted(31, same, &customer), crafted(32, other, &customer)],
        resolves_quarantine: None,
    };
    let committing = tokio::spawn({
        let store = store.clone();
        async move { store.commit_batch(&batch).await }
    });
    wait_for(
        WAIT,
        "the batch waiting for the other transaction",
        || async {
            (app.count(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event = 'transactionid'
                   AND query LIKE 'INSERT INTO messages%'",
            )
            .await
                > 0)
            .then_some(())
        },
    )
    .await;
    other_worker.commit().await.unwrap();
    let report = committing.await.unwrap().expect("the batch commits");
    assert_eq!(
        (
            report.new_tasks.len(),
            report.duplicates,
            report.messages.len()
        ),
        (1, 1, 1),
        "{report:?}"
    );
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM task_changes WHERE kind = 'task.created'")
            .await,
        1
    );
    app.stop().await;
}

/// SQLite's WAL is copied into the database file beside the writers (the
/// commits do not checkpoint): mail written reaches the file within moments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_wal_is_checkpointed_beside_the_writers() {
    let (app, inbox, _) = spawn(Db::Sqlite, "attach").await;
    let path =
        std::path::PathBuf::from(app.db.url.strip_prefix("sqlite://").expect("a SQLite URL"));
    let before = std::fs::metadata(&path).unwrap().len();
    for i in 0..10 {
        let body: String = (0..150_000)
            .map(|j| char::from(b'a' + ((i * 7 + j * 13) % 26) as u8))
            .collect();
        deliver_maildir(
            &inbox,
            &format!("{i}.wal.host"),
            &mail(
                "wal@customer.example",
                &format!("WAL {i}"),
                &format!("wal-{i}@x"),
                &[],
                &body,
            ),
        );
    }
    wait_messages(&app, 10).await;
    wait_for(WAIT, "the WAL copied into the database file", || async {
        let now = std::fs::metadata(&path).unwrap().len();
        (now >= before + 1_000_000).then_some(())
    })
    .await;
    app.stop().await;
}

/// Stopped and started again with the same configuration: what was
/// ingested stays, mail that arrived meanwhile is picked up on start, and
/// nothing is met twice.
async fn ingestion_resumes_after_a_restart(db: Db) {
    let test_db = TestDb::create(db).await;
    let (text, inbox, _) = two_maildirs(&test_db, "attach");
    let app = TestApp::spawn_on(test_db, Some(text.clone())).await;
    for i in 0..5 {
        deliver_maildir(
            &inbox,
            &format!("{i}.a.host"),
            &mail(
                "r@customer.example",
                &format!("Before {i}"),
                &format!("b{i}@customer.example"),
                &[],
                "x",
            ),
        );
    }
    wait_tasks(&app, 5).await;
    let dbh = app.stop().await;
    // Mail that arrives while the worker is down is picked up on start.
    for i in 0..3 {
        deliver_maildir(
            &inbox,
            &format!("9{i}.a.host"),
            &mail(
                "r@customer.example",
                &format!("During {i}"),
                &format!("d{i}@customer.example"),
                &[],
                "y",
            ),
        );
    }
    let app = TestApp::spawn_on(dbh, Some(text)).await;
    wait_tasks(&app, 8).await;
    // `new/` empty is the event: every file was committed before its move,
    // so the counts are final.
    wait_for(WAIT, "every file moved to cur/", || async {
        (new_is_empty(&inbox) && app.count("SELECT count(*) FROM messages").await == 8)
            .then_some(())
    })
    .await;
    assert_eq!(tasks(&app).await.len(), 8);
    assert_eq!(
        app.count("SELECT CAST(sum(duplicates_total) AS BIGINT) FROM mailboxes")
            .await,
        0,
        "nothing met twice"
    );
    app.stop().await;
}

/// A batch's raw sources are written ahead of it (PostgreSQL's
/// `message_sources`, SQLite's sources file) and read back through their
/// message; a duplicate keeps none; a source whose batch never committed is
/// pruned, one a message points at is not.
async fn staged_sources_are_read_back_and_orphans_pruned(db: Db) {
    use switchboard::mail::{MailKind, ParsedMail};
    use switchboard::store::{Incoming, IncomingMail, IngestBatch, Store};
    let (app, _, _) = spawn(db, "attach").await;
    let store = app.store().clone();
    let customer = store.resolve_customer(None, None).await.unwrap();
    let raw = |i: u32| format!("Subject: staged {i}\r\n\r\nbody of {i}\r\n").into_bytes();
    let item = |i: u32| {
        Incoming::Mail(Box::new(IncomingMail {
            uid: Some(i),
            source_ref: Some(format!("crafted:{i}")),
            raw: raw(i),
            packed: None,
            source_id: None,
            parsed: ParsedMail {
                subject: Some(format!("Staged {i}")),
                content_hash: format!("{i:064}"),
                ..ParsedMail::default()
            },
            kind: MailKind::Normal,
            customer: customer.matched.clone(),
            customer_details: Default::default(),
        }))
    };
    let batch = |items| IngestBatch {
        mailbox_id: "inbox-a".into(),
        service_id: "support".into(),
        fence: None,
        cursor: None,
        items,
        resolves_quarantine: None,
    };
    let pg = matches!(db, Db::Postgres);
    // Mail 10 is stored first; then a batch with it again, 11, and 12 twice.
    store.commit_batch(&batch(vec![item(10)])).await.unwrap();
    let mut staging = batch(vec![item(10), item(11), item(12), item(12)]);
    let staged = store.stage_sources(&mut staging).await.unwrap();
    assert_eq!(staged, 3, "the known mail is left out");
    let report = store.commit_batch(&staging).await.unwrap();
    assert_eq!(report.new_tasks.len(), 2, "{report:?}");
    assert_eq!(report.duplicates, 2, "{report:?}");
    assert_eq!(
        app.count_staged_sources("TRUE").await,
        2,
        "the duplicate's source is not kept"
    );
    let pointing = if pg {
        "SELECT count(*) FROM messages WHERE source_id IS NOT NULL AND raw IS NULL"
    } else {
        "SELECT count(*) FROM messages WHERE raw_file_id IS NOT NULL AND length(raw) = 0"
    };
    assert_eq!(app.count(pointing).await, 2);
    for (id, i) in report.messages.iter().zip([11, 12]) {
        assert_eq!(store.message_raw(id).await.unwrap(), raw(i));
    }
    // Staged, never committed: pruned once old enough, and only that one.
    let mut orphan = batch(vec![item(13)]);
    store.stage_sources(&mut orphan).await.unwrap();
    let now = switchboard::domain::now_millis();
    assert_eq!(store.prune_orphan_sources(now - 60_000).await.unwrap(), 0);
    assert_eq!(store.prune_orphan_sources(now + 60_000).await.unwrap(), 1);
    assert_eq!(app.count_staged_sources("TRUE").await, 2);
    // Staged later: the next pass finds it (SQLite's file checks each
    // source once, from where the last pass ended).
    let mut later = batch(vec![item(14)]);
    store.stage_sources(&mut later).await.unwrap();
    assert_eq!(store.prune_orphan_sources(now + 60_000).await.unwrap(), 1);
    assert_eq!(store.prune_orphan_sources(now + 60_000).await.unwrap(), 0);
    if pg {
        assert!(
            app.raw_sql("DELETE FROM message_sources").await.is_err(),
            "a source a message points at cannot be deleted"
        );
    }
    for (id, i) in report.messages.iter().zip([11, 12]) {
        assert_eq!(store.message_raw(id).await.unwrap(), raw(i));
    }
    // A batch that comes after its staged sources were pruned (a day late)
    // keeps the mail's source in its row.
    let mut late = batch(vec![item(15)]);
    assert_eq!(store.stage_sources(&mut late).await.unwrap(), 1);
    assert_eq!(store.prune_orphan_sources(now + 60_000).await.unwrap(), 1);
    let report_late = store.commit_batch(&late).await.unwrap();
    assert_eq!(report_late.new_tasks.len(), 1, "{report_late:?}");
    assert_eq!(
        store.message_raw(&report_late.messages[0]).await.unwrap(),
        raw(15)
    );
    // More sources than one statement writes: each message names its own.
    let mut many = batch((100..125).map(item).collect());
    assert_eq!(store.stage_sources(&mut many).await.unwrap(), 25);
    let report_many = store.commit_batch(&many).await.unwrap();
    assert_eq!(report_many.messages.len(), 25, "{report_many:?}");
    for (id, i) in report_many.messages.iter().zip(100..125) {
        assert_eq!(store.message_raw(id).await.unwrap(), raw(i));
    }
    if !pg {
        let Store::Sqlite(pool, _) = &store else {
            unreachable!()
        };
        let file = switchboard::store::source::file_beside(pool.connect_options().get_filename())
            .expect("a database in a file");
        let sources = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display()))
            .await
            .unwrap();
        // A source written under a clock far ahead does not stop pruning.
        let mut ahead = batch(vec![item(16)]);
        store.stage_sources(&mut ahead).await.unwrap();
        let mut after = batch(vec![item(17)]);
        store.stage_sources(&mut after).await.unwrap();
        sqlx::query("UPDATE message_sources SET created_at = created_at + 10 * 86400000 WHERE id = (SELECT max(id) - 1 FROM message_sources)")
            .execute(&sources)
            .await
            .unwrap();
        assert_eq!(store.prune_orphan_sources(now + 60_000).await.unwrap(), 2);
        // A source lost from the file is an error naming it, not an empty mail.
        sqlx::query("DELETE FROM message_sources")
            .execute(&sources)
            .await
            .unwrap();
        sources.close().await;
        let lost = store.message_raw(&report.messages[0]).await;
        assert!(
            matches!(&lost, Err(switchboard::store::StoreError::Corrupt(m)) if m.contains("missing from the sources file")),
            "{lost:?}"
        );
    }
    app.stop().await;
}

/// SQLite: the database keeps its sources file's name. While its messages
/// name staged sources, it refuses a sources file that holds other sources
/// (another database's) and says which; a file made anew (the old one lost)
/// is taken, its numbering moved past every number the database names (an
/// old message's source is an error, never another mail's); one that names
/// none takes the file it finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sources_file_that_is_not_the_databases_own_is_refused() {
    use switchboard::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let open = |url: String| async move {
        let store = Store::connect(&url, 2).await.unwrap();
        let migrated = store.migrate().await.map(|_| ());
        (store, migrated)
    };
    // A database that names no staged source takes a new file.
    let (empty, migrated) = open(url("empty.db")).await;
    migrated.unwrap();
    empty.close().await;
    std::fs::remove_file(dir.path().join("empty.db.sources")).unwrap();
    let (empty, migrated) = open(url("empty.db")).await;
    migrated.expect("nothing named: the new file is taken");
    empty.close().await;
    // A file holding other sources, as another database's would.
    let foreign = dir.path().join("empty.db.sources");
    let other = sqlx::SqlitePool::connect(&format!("sqlite://{}", foreign.display()))
        .await
        .unwrap();
    sqlx::query("INSERT INTO message_sources (created_at, raw) VALUES (1, X'00')")
        .execute(&other)
        .await
        .unwrap();
    other.close().await;
    // One whose messages name staged sources refuses it.
    let (app, inbox, _) = spawn(Db::Sqlite, "attach").await;
    for i in 0..3 {
        deliver_maildir(
            &inbox,
            &format!("{i}.pair.host"),
            &mail(
                "pair@customer.example",
                &format!("Paired {i}"),
                &format!("pair-{i}@x"),
                &[],
                "body",
            ),
        );
    }
    wait_messages(&app, 3).await;
    let database = app.db.url.strip_prefix("sqlite://").unwrap().to_string();
    let kept = app.stop().await;
    let own = format!("{database}.sources");
    std::fs::rename(&own, format!("{own}.away")).unwrap();
    std::fs::copy(&foreign, &own).unwrap();
    let (store, migrated) = open(format!("sqlite://{database}")).await;
    let refused = migrated.expect_err("another database's sources file");
    let message = refused.to_string();
    assert!(
        message.contains("does not belong to this database"),
        "{message}"
    );
    assert!(message.contains(&own), "names the file: {message}");
    store.close().await;
    // Put back, it is taken again.
    std::fs::rename(format!("{own}.away"), &own).unwrap();
    let (store, migrated) = open(format!("sqlite://{database}")).await;
    migrated.expect("its own file");
    let ids = kept.texts("SELECT id FROM messages").await;
    for id in &ids {
        store.message_raw(id).await.expect("its own sources");
    }
    store.close().await;
    // Lost: a file made anew is taken; the old sources are errors, and new
    // mail does not get their numbers.
    std::fs::remove_file(&own).unwrap();
    let (store, migrated) = open(format!("sqlite://{database}")).await;
    migrated.expect("a file made anew is taken");
    let lost = store.message_raw(&ids[0]).await;
    assert!(
        matches!(&lost, Err(switchboard::store::StoreError::Corrupt(m)) if m.contains("missing from the sources file")),
        "{lost:?}"
    );
    let fresh = sqlx::SqlitePool::connect(&format!("sqlite://{own}"))
        .await
        .unwrap();
    let next: i64 =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'message_sources'")
            .fetch_one(&fresh)
            .await
            .unwrap();
    fresh.close().await;
    assert_eq!(next, 3, "numbered on after the 3 the database names");
    store.close().await;
}

/// Mails of one thread taken in together (one batch, one arrival time) read
/// in the order they were written, and a reply answers the person, not the
/// auto-reply that came with them.
async fn a_thread_taken_in_at_once_reads_in_order(db: Db) {
    let (app, inbox, _) = spawn(db, "attach").await;
    let dated = |raw: Vec<u8>, date: &str| {
        String::from_utf8(raw)
            .unwrap()
            .replace(
                "Date: Tue, 24 Nov 2026 08:00:00 +0000",
                &format!("Date: {date}"),
            )
            .into_bytes()
    };
    // Written ahead, as old as a settled delivery, then moved in at once.
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    let threads = 4;
    for t in 0..threads {
        let original = format!("t{t}-1@customer.example");
        let refs = format!("<{original}>");
        let mails = [
            dated(
                mail(
                    "c@customer.example",
                    &format!("Thread {t}"),
                    &original,
                    &[],
                    "First.",
                ),
                "Tue, 24 Nov 2026 09:12:00 +0000",
            ),
            dated(
                mail(
                    "c@customer.example",
                    &format!("Re: Thread {t}"),
                    &format!("t{t}-2@customer.example"),
                    &[("In-Reply-To", &refs), ("References", &refs)],
                    "Second.",
                ),
                "Tue, 24 Nov 2026 12:40:00 +0000",
            ),
            dated(
                mail(
                    "c@customer.example",
                    &format!("Automatic reply: Thread {t}"),
                    &format!("t{t}-3@customer.example"),
                    &[("In-Reply-To", &refs), ("Auto-Submitted", "auto-replied")],
                    "I am away.",
                ),
                "Tue, 24 Nov 2026 13:00:00 +0000",
            ),
        ];
        for (i, raw) in mails.iter().enumerate() {
            let name = format!("{t}{i}.thread.host");
            let tmp = inbox.join("tmp").join(&name);
            std::fs::write(&tmp, raw).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&tmp)
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
    }
    for entry in std::fs::read_dir(inbox.join("tmp")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::rename(&path, inbox.join("new").join(path.file_name().unwrap())).unwrap();
    }
    wait_messages(&app, 3 * threads).await;
    let all = tasks(&app).await;
    assert_eq!(all.len(), threads as usize, "one task per thread: {all:?}");
    for t in &all {
        let id = t["id"].as_str().unwrap();
        let (_, m) = app
            .get(ADMIN, &format!("/api/v1/tasks/{id}/messages"))
            .await;
        let bodies: Vec<&str> = m["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                x["message_id"]
                    .as_str()
                    .unwrap()
                    .split('@')
                    .next()
                    .unwrap()
                    .split('-')
                    .nth(1)
                    .unwrap()
            })
            .collect();
        assert_eq!(bodies, vec!["1", "2", "3"], "in the order written: {m}");
        let session = app.pickup(ALICE, id).await;
        assert!(!session.is_empty());
        let (s, d) = app
            .post(
                ALICE,
                &format!("/api/v1/tasks/{id}/drafts"),
                json!({"kind": "reply"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{d}");
        assert!(
            d["in_reply_to"]
                .as_str()
                .unwrap()
                .ends_with("-2@customer.example"),
            "the person's mail, not the auto-reply: {d}"
        );
        let (s, b) = app
            .post(ALICE, &format!("/api/v1/tasks/{id}/handled"), Value::Null)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    app.stop().await;
}

on_both_backends!(
    staged_sources_are_read_back_and_orphans_pruned,
    mail_becomes_a_task_with_its_customer,
    replies_thread_into_their_conversation,
    the_same_mail_twice_is_one_task,
    automatic_mail_follows_the_policy,
    operators_make_recorded_mail_a_task,
    a_maildir_made_at_its_first_delivery_is_waited_for,
    bad_mail_is_quarantined_and_the_line_keeps_flowing,
    nul_bytes_never_stall_a_mailbox,
    a_refused_mail_is_quarantined_and_its_batch_commits,
    ingestion_resumes_after_a_restart,
    a_thread_taken_in_at_once_reads_in_order,
);

// ---- A whole process killed while it works through a backlog ----

/// The subject of backlog mail `i`.
fn backlog_subject(i: usize) -> String {
    format!("backlog #{i}")
}

/// How many files are in `root/sub`.
fn count_in(root: &Path, sub: &str) -> usize {
    std::fs::read_dir(root.join(sub)).map_or(0, |d| d.count())
}

/// Subjects of the files in `root/sub`.
fn subjects_in(root: &Path, sub: &str) -> Vec<String> {
    std::fs::read_dir(root.join(sub))
        .expect("maildir folder")
        .flatten()
        .filter_map(|e| {
            let raw = std::fs::read(e.path()).ok()?;
            String::from_utf8_lossy(&raw)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect()
}

/// Exactly once across SIGKILL, for a Maildir: a file is moved to `cur/`
/// only after its commit, so a kill can leave at most the batch being moved
/// committed but still in `new/`, which the next run meets again and counts
/// as duplicates. Each kill is checked to land mid-backlog, every file in
/// `cur/` to have its task, and the duplicate counter in the end to be
/// exactly the number of files the kills left committed in `new/`.
async fn sigkill_in_the_middle_of_a_backlog(db: Db) {
    stopped_in_the_middle_of_a_backlog(db, Stop::Kill).await
}

/// How the process is stopped mid-backlog.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    /// SIGKILL: nothing it had not committed survives.
    Kill,
    /// SIGTERM: a graceful stop, which must exit 0 within seconds and
    /// keep the same guarantees.
    Term,
}

async fn stopped_in_the_middle_of_a_backlog(db: Db, stop: Stop) {
    const N: usize = 2000;
    const BATCH: usize = 25;
    let test_db = TestDb::create(db).await;
    let inbox = test_db.dir().join("inbox");
    let port = support::servers::free_port();
    let text = base_config(&test_db.url).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        + &format!(
            "\n[ingest]\nmaildir_scan_ms = 100\nbatch_size = {BATCH}\nlease_secs = 3\n\n\
             [[mailboxes]]\nid = \"inbox\"\nservice = \"support\"\nkind = \"maildir\"\npath = \"{}\"\n",
            inbox.display()
        );
    let path = test_db.dir().join("switchboard.toml");
    std::fs::write(&path, text).expect("write the configuration");
    for i in 0..N {
        deliver_maildir(
            &inbox,
            &format!("{:010}.{i}.host", 1_700_000_000 + i),
            &mail(
                &format!("customer{}@example.net", i % 97),
                &backlog_subject(i),
                &format!("backlog-{i}@example.net"),
                &[],
                &format!("Message {i} of the backlog."),
            ),
        );
    }
    let mut child = serve(&path);
    let mut left_committed = 0;
    for target in [300, 1100] {
        // Killed right as files reach `cur/`: where a move could come before
        // its commit, this is where it shows.
        let deadline = std::time::Instant::now() + WAIT * 3;
        while count_in(&inbox, "cur") < target {
            assert!(
                std::time::Instant::now() < deadline,
                "{db:?}: {target} files never reached cur/"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        match stop {
            Stop::Kill => child.sigkill(),
            Stop::Term => {
                let status = child.sigterm(Duration::from_secs(15));
                assert!(
                    status.is_some_and(|s| s.success()),
                    "{db:?}: SIGTERM mid-backlog ends the process with 0 within 15 s: {status:?}"
                );
            }
        }
        test_db.quiesce().await;
        let tasks: std::collections::HashSet<String> = test_db
            .texts("SELECT subject FROM tasks")
            .await
            .into_iter()
            .collect();
        let moved = subjects_in(&inbox, "cur");
        let waiting = subjects_in(&inbox, "new");
        assert_eq!(moved.len() + waiting.len(), N, "{db:?}: no file lost");
        assert!(
            !moved.is_empty() && !waiting.is_empty(),
            "{db:?}: not killed mid-backlog: {} of {N} files moved (raise N if ingestion got this fast)",
            moved.len()
        );
        let unrecorded: Vec<&String> = moved.iter().filter(|s| !tasks.contains(*s)).collect();
        assert!(
            unrecorded.is_empty(),
            "{db:?}: moved to cur/ without a committed task: {unrecorded:?}"
        );
        let committed_waiting = waiting.iter().filter(|s| tasks.contains(*s)).count();
        assert!(
            committed_waiting <= BATCH,
            "{db:?}: {committed_waiting} committed files still in new/, more than one batch"
        );
        assert_eq!(tasks.len(), moved.len() + committed_waiting, "{db:?}");
        left_committed += committed_waiting as i64;
        child = serve(&path);
    }
    // Every file moved to `cur/` and as many tasks is the event: every file
    // met and committed, so the counts are final.
    wait_for(
        WAIT * 10,
        "every file moved to cur/ and its task",
        || async {
            (new_is_empty(&inbox)
                && test_db.try_int("SELECT count(*) FROM tasks").await? >= N as i64)
                .then_some(())
        },
    )
    .await;
    for (sql, want) in [
        ("SELECT count(*) FROM tasks", N as i64),
        ("SELECT count(DISTINCT subject) FROM tasks", N as i64),
        ("SELECT count(*) FROM messages", N as i64),
        ("SELECT duplicates_total FROM mailboxes", left_committed),
    ] {
        assert_eq!(test_db.int(sql).await, want, "{db:?}: {sql}");
    }
    println!("{db:?} ({stop:?}): {left_committed} committed files were met again after the stops");
}

/// Exactly once across a graceful stop (SIGTERM) mid-backlog, the way a
/// service manager stops and restarts the worker: the same checks as for
/// SIGKILL, and the process exits 0 in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_a_backlog_sqlite() {
    stopped_in_the_middle_of_a_backlog(Db::Sqlite, Stop::Term).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_a_backlog_postgres() {
    stopped_in_the_middle_of_a_backlog(Db::Postgres, Stop::Term).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_backlog_sqlite() {
    sigkill_in_the_middle_of_a_backlog(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_backlog_postgres() {
    sigkill_in_the_middle_of_a_backlog(Db::Postgres).await
}
