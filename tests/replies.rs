//! Replies end to end: a customer mail delivered into Dovecot becomes a task,
//! the agent answers it, a real SMTP server receives exactly one well-formed
//! reply, and the customer's answer threads back into the same conversation.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use support::app::{ADMIN, ALICE, BOB, Db, TestApp, TestDb, base_config};
use support::mail::{mail, wait_for};
use support::servers::{Dovecot, DovecotOptions};
use support::smtp::{DkimKeyKind, SmtpSink, SmtpSinkOptions, dkim_test_key, dkim_verify};

const WAIT: Duration = Duration::from_secs(60);

fn config(db_url: &str, d: &Dovecot, smtp_port: u16) -> String {
    format!(
        r#"{}
[ingest]
io_timeout_secs = 5
max_backoff_secs = 2

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
timeout_secs = 5
retry_base_secs = 1

[[mailboxes]]
service = "support"
kind = "imap"
host = "127.0.0.1"
port = {}
tls = "none"
username = "support"
password = "{}"
"#,
        base_config(db_url),
        d.imap_port,
        d.password()
    )
}

async fn spawn(db: Db, d: &Dovecot, sink: &SmtpSink) -> TestApp {
    spawn_with(db, d, sink, |text| text).await
}

/// Like [`spawn`], with the configuration text changed by `edit`.
async fn spawn_with(
    db: Db,
    d: &Dovecot,
    sink: &SmtpSink,
    edit: impl FnOnce(String) -> String,
) -> TestApp {
    support::servers::require_dovecot();
    support::smtp::require_aiosmtpd();
    let test_db = TestDb::create(db).await;
    let text = edit(config(&test_db.url, d, sink.port));
    TestApp::spawn_on(test_db, Some(text)).await
}

/// The support service with `conclude_on_send = true`.
fn concluding_on_send(text: String) -> String {
    let own = "email_address = \"support@example.com\"\n";
    assert!(text.contains(own));
    text.replacen(own, &format!("{own}conclude_on_send = true\n"), 1)
}

/// A customer mail delivered into Dovecot; returns the id of the queued task
/// it became (`n`: how many email tasks exist then).
async fn customer_writes(app: &TestApp, d: &Dovecot, n: usize, message_id: &str) -> String {
    d.deliver_lmtp(
        "support",
        &mail(
            "Grace Hopper <grace@navy.example>",
            &format!("Question {n}"),
            message_id,
            &[],
            "Where is my order?",
        ),
    )
    .expect("delivery");
    wait_for(WAIT, "the queued task", || async {
        let (_, b) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        let items = b["items"].as_array().cloned().unwrap_or_default();
        if items.len() < n {
            return None;
        }
        items
            .iter()
            .find(|t| t["state"] == "queued")
            .and_then(|t| t["id"].as_str().map(str::to_owned))
    })
    .await
}

/// The holder answers `task` with a reply; waits until the sink has it and
/// the draft is recorded as sent. Returns the draft.
async fn reply_and_send(
    app: &TestApp,
    token: &str,
    task: &str,
    sink: &SmtpSink,
    n: usize,
) -> Value {
    let (s, draft) = app
        .post(
            token,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "reply"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{draft}");
    let id = draft["id"].as_str().unwrap().to_string();
    let (s, q) = app
        .post(token, &format!("/api/v1/drafts/{id}/send"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{q}");
    assert_eq!(
        sink.wait_for(n, WAIT).len(),
        n,
        "the reply reached the server"
    );
    wait_for(WAIT, "the draft sent", || async {
        let (_, d) = app.get(token, &format!("/api/v1/drafts/{id}")).await;
        (d["state"] == "sent").then_some(d)
    })
    .await
}

/// A customer's mail delivered into Dovecot, its task picked up by Alice,
/// and her reply draft to it (prefilled).
async fn reply_draft(
    app: &TestApp,
    d: &Dovecot,
    from: &str,
    subject: &str,
    message_id: &str,
    body: &str,
) -> Value {
    d.deliver_lmtp("support", &mail(from, subject, message_id, &[], body))
        .expect("delivery");
    let task = first_task(app, 1).await;
    app.pickup(ALICE, &task).await;
    let (s, draft) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "reply"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{draft}");
    draft
}

/// Drafts still to be sent (queued, or claimed by the outbox). None left
/// means no delivery is still to come: the sink stores each message before
/// its `250`, and a draft is recorded as sent only after that answer.
async fn unsent(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM drafts WHERE state IN ('queued', 'sending')")
        .await
}

async fn task_state(app: &TestApp, task: &str) -> String {
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    t["state"].as_str().unwrap_or_default().to_owned()
}

/// `kept` is `sent`, byte for byte (a short message where they part).
fn assert_same_bytes(kept: &[u8], sent: &[u8], what: &str) {
    if kept != sent {
        let at = kept.iter().zip(sent).take_while(|(a, b)| a == b).count();
        let around = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned()
        };
        panic!(
            "{what} differs from what the server received: {} vs {} bytes, first difference at {at}: {:?} vs {:?}",
            kept.len(),
            sent.len(),
            around(kept),
            around(sent)
        );
    }
}

/// The agent's My Sessions entry for `session`.
async fn my_session(app: &TestApp, token: &str, session: &str) -> Value {
    let (s, list) = app.get(token, "/api/v1/me/sessions?limit=50").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["id"] == session))
        .cloned()
        .unwrap_or_else(|| panic!("session {session} not in My Sessions: {list}"))
}

async fn first_task(app: &TestApp, n: usize) -> String {
    wait_for(WAIT, "the task", || async {
        let (_, b) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        let items = b["items"].as_array().cloned().unwrap_or_default();
        (items.len() >= n).then(|| items[0]["id"].as_str().unwrap_or_default().to_string())
    })
    .await
}

async fn put_draft(
    app: &TestApp,
    token: &str,
    id: &str,
    version: i64,
    body: Value,
) -> reqwest::Response {
    app.client
        .put(format!("{}/api/v1/drafts/{id}", app.url))
        .bearer_auth(token)
        .header("if-match", format!("\"{version}\""))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn the_full_round_trip(db: Db) {
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let app = spawn(db, &d, &sink).await;
    let customer = mail(
        "Ada Lovelace <ada@analytical.example>",
        "Engine prints -1/29",
        "question-1@analytical.example",
        &[(
            "Cc",
            "Babbage <charles@analytical.example>, Support <SUPPORT@example.com>",
        )],
        "Hello, the engine is wrong.\nThanks, Ada",
    );
    d.deliver_lmtp("support", &customer).expect("delivery");
    let task = first_task(&app, 1).await;
    app.pickup(ALICE, &task).await;

    // Only the holder may write; a reply-all leaves out our own address.
    let (s, _) = app
        .post(
            BOB,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "reply"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "Bob does not hold the task");
    let (s, draft) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "reply_all"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{draft}");
    assert_eq!(draft["subject"], "Re: Engine prints -1/29");
    assert_eq!(draft["to"][0]["email"], "ada@analytical.example");
    let cc: Vec<&str> = draft["cc"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["email"].as_str())
        .collect();
    assert_eq!(cc, vec!["charles@analytical.example"], "{draft}");
    assert_eq!(draft["in_reply_to"], "question-1@analytical.example");
    assert!(
        draft["body_text"]
            .as_str()
            .unwrap()
            .contains("> Hello, the engine is wrong."),
        "{draft}"
    );
    let id = draft["id"].as_str().unwrap().to_string();
    let v1 = draft["version"].as_i64().unwrap();

    // Two tabs: the second save with the old version is refused.
    let body = json!({"to": draft["to"], "cc": draft["cc"], "subject": draft["subject"], "body_text": "Dear Ada,\nfixed in 1.2.\n\n> Hello, the engine is wrong.", "body_html": "<p>Dear Ada,</p><p>fixed in <b>1.2</b>.</p><script>x()</script><p><img src=\"https://www.example.com/logo.png\" alt=\"Example logo\" onerror=\"x()\"></p>"});
    let r = put_draft(&app, ALICE, &id, v1, body.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let saved: Value = r.json().await.unwrap();
    assert!(
        !saved["body_html"].as_str().unwrap().contains("script")
            && !saved["body_html"].as_str().unwrap().contains("onerror"),
        "the agent's HTML is sanitized"
    );
    assert!(
        saved["body_html"]
            .as_str()
            .unwrap()
            .contains("src=\"https://www.example.com/logo.png\""),
        "the agent's own image keeps its link: {}",
        saved["body_html"]
    );
    let r = put_draft(&app, ALICE, &id, v1, body.clone()).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // A value that breaks a rule: 422 naming the field and its limit, and
    // the saved draft is kept as it was.
    let v2 = saved["version"].as_i64().unwrap();
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"email": format!("c{i}@customer.example")}))
        .collect();
    for (bad, words) in [
        (json!({"to": many}), ["to", "100 recipients"]),
        (
            json!({"to": [{"email": "ada@customer.example", "name": "n".repeat(201)}]}),
            ["to", "200 characters"],
        ),
        (json!({"subject": "two\nlines"}), ["subject", "998"]),
    ] {
        let r = put_draft(&app, ALICE, &id, v2, bad.clone()).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let e: Value = r.json().await.unwrap();
        let m = e["error"]["message"].as_str().unwrap_or_default();
        assert!(words.iter().all(|w| m.contains(w)), "{bad}: {m}");
    }
    let (_, kept) = app.get(ALICE, &format!("/api/v1/drafts/{id}")).await;
    assert_eq!(kept["version"].as_i64(), Some(v2), "{kept}");
    let r = app
        .client
        .put(format!("{}/api/v1/drafts/{id}", app.url))
        .bearer_auth(ALICE)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::PRECONDITION_REQUIRED,
        "If-Match is required"
    );

    // A reply with nothing written (an editor's empty paragraph) is not
    // sent, though it has its "Re:" subject; the draft stays as it is.
    let mut nothing = body.clone();
    nothing["body_text"] = json!(" \n");
    nothing["body_html"] = json!("<p><br></p>");
    let r = put_draft(&app, ALICE, &id, v2, nothing).await;
    assert_eq!(r.status(), StatusCode::OK);
    let blank: Value = r.json().await.unwrap();
    assert!(
        blank["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("Re:")),
        "{blank}"
    );
    let (s, e) = app
        .post(ALICE, &format!("/api/v1/drafts/{id}/send"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no text"),
        "{e}"
    );
    let (_, kept) = app.get(ALICE, &format!("/api/v1/drafts/{id}")).await;
    assert_eq!(kept["state"], "draft", "{kept}");
    // Nor one to a service's own address (it would not be taken in again).
    let mut inward = body.clone();
    inward["cc"] = json!([{"email": "Support@Example.com"}]);
    let r = put_draft(&app, ALICE, &id, blank["version"].as_i64().unwrap(), inward).await;
    assert_eq!(r.status(), StatusCode::OK);
    let blank: Value = r.json().await.unwrap();
    let (s, e) = app
        .post(ALICE, &format!("/api/v1/drafts/{id}/send"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cc: 'Support@Example.com' is a service's own address"),
        "{e}"
    );
    let r = put_draft(
        &app,
        ALICE,
        &id,
        blank["version"].as_i64().unwrap(),
        body.clone(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let saved: Value = r.json().await.unwrap();

    // Attachments: upload two, reorder, remove one; each change needs the current version.
    let mut version = saved["version"].as_i64().unwrap();
    let upload = |name: &'static str, bytes: &'static [u8], v: i64| {
        app.client
            .post(format!(
                "{}/api/v1/drafts/{id}/attachments?filename={name}",
                app.url
            ))
            .bearer_auth(ALICE)
            .header("if-match", v.to_string())
            .header("content-type", "text/plain")
            .body(bytes)
            .send()
    };
    let r = upload("notes.txt", b"first file", version).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let d1: Value = r.json().await.unwrap();
    version = d1["version"].as_i64().unwrap();
    let stale = upload("late.txt", b"x", version - 1).await.unwrap();
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    let r = upload("log.txt", b"second file", version).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let d2: Value = r.json().await.unwrap();
    version = d2["version"].as_i64().unwrap();
    let ids: Vec<String> = d2["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    let r = app
        .client
        .put(format!("{}/api/v1/drafts/{id}/attachments", app.url))
        .bearer_auth(ALICE)
        .header("if-match", version.to_string())
        .json(&json!({"order": [ids[1], ids[0]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let d3: Value = r.json().await.unwrap();
    assert_eq!(d3["attachments"][0]["filename"], "log.txt", "{d3}");
    version = d3["version"].as_i64().unwrap();
    let r = app
        .client
        .delete(format!(
            "{}/api/v1/drafts/{id}/attachments/{}",
            app.url, ids[0]
        ))
        .bearer_auth(ALICE)
        .header("if-match", version.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let d4: Value = r.json().await.unwrap();
    assert_eq!(d4["attachments"].as_array().map(Vec::len), Some(1), "{d4}");

    // Send twice: one message.
    let (s, q) = app
        .post(ALICE, &format!("/api/v1/drafts/{id}/send"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{q}");
    let message_id = q["message_id"].as_str().unwrap().to_string();
    let (s, q2) = app
        .post(ALICE, &format!("/api/v1/drafts/{id}/send"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(q2["message_id"], message_id.as_str());
    wait_for(WAIT, "the draft sent", || async {
        let (_, d) = app.get(ALICE, &format!("/api/v1/drafts/{id}")).await;
        (d["state"] == "sent").then_some(())
    })
    .await;
    assert_eq!(unsent(&app).await, 0, "nothing left to send");
    let got = sink.messages();
    assert_eq!(got.len(), 1, "exactly one message");
    let m = &got[0];
    assert_eq!(m.header("Message-ID"), vec![format!("<{message_id}>")]);
    assert_eq!(
        m.header("In-Reply-To"),
        vec!["<question-1@analytical.example>".to_string()]
    );
    assert!(m.header("References")[0].contains("<question-1@analytical.example>"));
    let mut rcpt = m.rcpt_to.clone();
    rcpt.sort();
    assert_eq!(
        rcpt,
        vec!["ada@analytical.example", "charles@analytical.example"]
    );
    assert_eq!(m.mail_from, "support@example.com");
    // A sent draft is final.
    let r = put_draft(
        &app,
        ALICE,
        &id,
        saved["version"].as_i64().unwrap() + 1,
        body,
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // The customer answers the reply: it joins the same, still open task.
    let answer = mail(
        "Ada Lovelace <ada@analytical.example>",
        "Re: Re: Engine prints -1/29",
        "question-2@analytical.example",
        &[
            ("In-Reply-To", &format!("<{message_id}>")),
            (
                "References",
                &format!("<question-1@analytical.example> <{message_id}>"),
            ),
        ],
        "Works now, thank you!",
    );
    d.deliver_lmtp("support", &answer).expect("delivery");
    wait_for(WAIT, "the answer on the task", || async {
        let (_, msgs) = app
            .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
            .await;
        (msgs["items"].as_array().map(Vec::len) == Some(3)).then_some(())
    })
    .await;
    let (_, msgs) = app
        .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    let directions: Vec<&str> = msgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["direction"].as_str())
        .collect();
    assert_eq!(directions, vec!["inbound", "outbound", "inbound"], "{msgs}");
    // The task's details summarize them.
    let (_, details) = app.get(ALICE, &format!("/api/v1/tasks/{task}")).await;
    let summary = &details["messages"];
    assert_eq!(
        support::app::message_counts(&details),
        [json!(3), json!(2), json!(1), json!("inbound")],
        "{details}"
    );
    assert_eq!(
        summary["first_at"], msgs["items"][0]["received_at"],
        "{details}"
    );
    assert_eq!(
        summary["last_at"], msgs["items"][2]["received_at"],
        "{details}"
    );
    assert_eq!(summary["url"], format!("/api/v1/tasks/{task}/messages"));
    let (_, all) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
    assert_eq!(
        all["items"].as_array().map(Vec::len),
        Some(1),
        "no second task"
    );
    assert!(
        String::from_utf8_lossy(&m.data).contains("log.txt"),
        "the attachment went out"
    );
    let sent = mail_parser::MessageParser::default()
        .parse(&m.data)
        .and_then(|p| p.body_html(0).map(|h| h.into_owned()))
        .unwrap_or_default();
    assert!(
        sent.contains("https://www.example.com/logo.png") && !sent.contains("Remote image blocked"),
        "the image went out as the agent put it: {sent}"
    );

    // A delay warning about our reply joins its task too (the agent reads
    // that it is late), but marks nothing: the reply is not bounced.
    let delayed = format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.analytical.example>\r\nTo: support@example.com\r\n\
Subject: Delayed Mail (still being retried)\r\nMessage-ID: <delay-1@mx.analytical.example>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"R\"\r\n\r\n\
--R\r\nContent-Type: text/plain\r\n\r\ndelayed\r\n\
--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.analytical.example\r\n\r\n\
Final-Recipient: rfc822; ada@analytical.example\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n\
--R\r\nContent-Type: message/rfc822\r\n\r\nFrom: Support <support@example.com>\r\nTo: ada@analytical.example\r\n\
Subject: Re: Engine prints -1/29\r\nMessage-ID: <{message_id}>\r\n\r\nbody\r\n--R--\r\n"
    );
    d.deliver_lmtp_from("", "support", delayed.as_bytes())
        .expect("delivery");
    let notice = wait_for(WAIT, "the delay notice on the task", || async {
        let (_, msgs) = app
            .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
            .await;
        msgs["items"]
            .as_array()?
            .iter()
            .find(|m| m["subject"] == "Delayed Mail (still being retried)")
            .cloned()
    })
    .await;
    assert_eq!(notice["disposition"], "attached", "{notice}");
    assert_eq!(notice["kind"], "auto_reply", "{notice}");
    let (_, msgs) = app
        .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    assert!(
        !msgs["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["delivery_status"] == "bounced"),
        "a delay is no bounce: {msgs}"
    );

    // A bounce of our reply marks it undelivered, and makes no task.
    let bounce = format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.analytical.example>\r\nTo: support@example.com\r\n\
Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <bounce-1@mx.analytical.example>\r\n\
Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.analytical.example\r\n\r\n\
Final-Recipient: rfc822; ada@analytical.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{message_id}>\r\nSubject: Re: Engine prints -1/29\r\n\r\n--b--\r\n"
    );
    d.deliver_lmtp_from("", "support", bounce.as_bytes())
        .expect("delivery");
    wait_for(WAIT, "the reply marked bounced", || async {
        let (_, msgs) = app
            .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
            .await;
        msgs["items"]
            .as_array()?
            .iter()
            .any(|m| m["direction"] == "outbound" && m["delivery_status"] == "bounced")
            .then_some(())
    })
    .await;
    let (_, all) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
    assert_eq!(
        all["items"].as_array().map(Vec::len),
        Some(1),
        "a bounce is not a task"
    );
    // It joins the task (policy attach), so the agent reads why.
    let (_, msgs) = app
        .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    let report = msgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == "bounce")
        .unwrap_or_else(|| panic!("the report on the task: {msgs}"));
    assert_eq!(report["disposition"], "attached", "{report}");

    // Our own reply delivered back to the service (a Bcc to itself, a
    // forwarding rule) is ours, not the customer's: no message, no task.
    let on_task = msgs["items"].as_array().map(Vec::len);
    d.deliver_lmtp_from("support@example.com", "support", &m.data)
        .expect("delivery");
    // Mail is taken in order: once the next mail is a task, ours was seen.
    let next = mail(
        "Grace Hopper <grace@navy.example>",
        "Another question",
        "other-1@navy.example",
        &[],
        "A new question.",
    );
    d.deliver_lmtp("support", &next).expect("delivery");
    wait_for(WAIT, "the next mail a task", || async {
        let (_, all) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        (all["items"].as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
    let (_, msgs) = app
        .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    assert_eq!(msgs["items"].as_array().map(Vec::len), on_task, "{msgs}");
    let (_, all) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["subject"] != "Re: Engine prints -1/29" || t["id"] == task.as_str()),
        "{all}"
    );
    app.stop().await;
}

async fn smtp_down_then_back_delivers_once(db: Db) {
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let mut sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let app = spawn(db, &d, &sink).await;
    let draft = reply_draft(
        &app,
        &d,
        "c@customer.example",
        "Help",
        "h1@customer.example",
        "Help me",
    )
    .await;
    let id = draft["id"].as_str().unwrap().to_string();
    sink.stop();
    let (s, _) = app
        .post(ALICE, &format!("/api/v1/drafts/{id}/send"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let waiting = wait_for(WAIT, "a failed attempt", || async {
        let (_, d) = app.get(ALICE, &format!("/api/v1/drafts/{id}")).await;
        (d["attempts"].as_i64() >= Some(1) && d["state"] == "queued" && d["last_error"].is_string())
            .then_some(d)
    })
    .await;
    assert!(waiting["next_attempt_at"].is_string(), "{waiting}");
    // While it waits for its retry the agent may take it back: a draft
    // again, to be changed (a new Message-ID) or discarded; then sent.
    // (A retry in flight at that moment answers 409: asked again.)
    let back = wait_for(WAIT, "taken back", || async {
        let (s, back) = app
            .post(ALICE, &format!("/api/v1/drafts/{id}/unsend"), Value::Null)
            .await;
        assert!(
            s == StatusCode::OK
                || (s == StatusCode::CONFLICT && back.to_string().contains("at this moment")),
            "{s} {back}"
        );
        (s == StatusCode::OK).then_some(back)
    })
    .await;
    assert_eq!(back["state"], "draft", "{back}");
    assert!(back["next_attempt_at"].is_null(), "{back}");
    let r = put_draft(
        &app,
        ALICE,
        &id,
        back["version"].as_i64().unwrap(),
        json!({"to": back["to"], "body_text": "Corrected before it went out."}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (s, again) = app
        .post(ALICE, &format!("/api/v1/drafts/{id}/send"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{again}");
    assert_ne!(
        again["message_id"], waiting["message_id"],
        "changed: a new message"
    );
    assert_eq!(
        again["attempts"], 0,
        "a new message starts its tries afresh: {again}"
    );
    sink.restart().expect("sink back");
    let sent = wait_for(WAIT, "sent", || async {
        let (_, d) = app.get(ALICE, &format!("/api/v1/drafts/{id}")).await;
        (d["state"] == "sent").then_some(d)
    })
    .await;
    // Sent: no error or next attempt is left beside it.
    assert!(
        sent["last_error"].is_null() && sent["next_attempt_at"].is_null(),
        "{sent}"
    );
    assert_eq!(unsent(&app).await, 0, "nothing left to send");
    let received = sink.messages();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].text().contains("Corrected before it went out."),
        "the corrected reply went out"
    );
    // Sent: it can no longer be taken back.
    let (s, b) = app
        .post(ALICE, &format!("/api/v1/drafts/{id}/unsend"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    // Operators see the attempts in /metrics.
    assert_eq!(replies_total(&app, "sent").await, 1);
    assert!(replies_total(&app, "retry").await >= 1);
    assert_eq!(replies_total(&app, "failed").await, 0);
    app.stop().await;
}

/// `switchboard_replies_total{result}` as `/metrics` shows it.
async fn replies_total(app: &TestApp, result: &str) -> u64 {
    let text = app.metrics().await;
    let series = format!("switchboard_replies_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series}in {text}"))
}

async fn a_permanent_failure_is_shown_to_the_agent(db: Db) {
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let app = spawn(db, &d, &sink).await;
    let draft = reply_draft(
        &app,
        &d,
        "reject-me@customer.example",
        "Bounce me",
        "b1@customer.example",
        "x",
    )
    .await;
    let id = draft["id"].as_str().unwrap().to_string();
    let (s, q) = app
        .post(ALICE, &format!("/api/v1/drafts/{id}/send"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{q}");
    let failed = wait_for(WAIT, "failed", || async {
        let (_, d) = app.get(ALICE, &format!("/api/v1/drafts/{id}")).await;
        (d["state"] == "failed").then_some(d)
    })
    .await;
    assert!(
        failed["last_error"].as_str().unwrap().contains("550"),
        "{failed}"
    );
    // Refused at RCPT: the sink never stored it, and nothing is left to try.
    assert_eq!(unsent(&app).await, 0);
    assert!(sink.messages().is_empty());
    assert_eq!(replies_total(&app, "failed").await, 1);
    assert_eq!(replies_total(&app, "sent").await, 0);
    app.stop().await;
}

/// A customer whose address has a quoted local part is answered, with an
/// international domain in copy written in ASCII (the sink offers no
/// SMTPUTF8); an address that is none is refused when the draft is put.
async fn quoted_and_international_addresses_are_answered(db: Db) {
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let app = spawn(db, &d, &sink).await;
    let draft = reply_draft(
        &app,
        &d,
        "John Doe <\"john doe\"@quoted.example>",
        "Spaces",
        "q1@quoted.example",
        "x",
    )
    .await;
    assert_eq!(
        draft["to"][0]["email"], "\"john doe\"@quoted.example",
        "{draft}"
    );
    let id = draft["id"].as_str().unwrap().to_string();
    let version = draft["version"].as_i64().unwrap();
    let body = |cc: &str| json!({"to": draft["to"], "cc": [{"email": cc}], "body_text": "Thanks!"});
    let r = put_draft(&app, ALICE, &id, version, body("@localhost")).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(
        refused["error"]["message"], "cc: '@localhost' is not an email address",
        "{refused}"
    );
    let r = put_draft(&app, ALICE, &id, version, body("info@bücher.example")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (s, q) = app
        .post(ALICE, &format!("/api/v1/drafts/{id}/send"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{q}");
    let received = sink.wait_for(1, WAIT);
    assert_eq!(
        received[0].rcpt_to,
        ["\"john doe\"@quoted.example", "info@xn--bcher-kva.example"]
    );
    app.stop().await;
}

/// `conclude_on_send = true`: the reply going out ends the agent's part, as
/// "handled" would: task and session in wrap-up, the capacity free again.
async fn conclude_on_send_ends_the_agents_part(db: Db) {
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let app = spawn_with(db, &d, &sink, concluding_on_send).await;
    let first = customer_writes(&app, &d, 1, "cos-1@navy.example").await;
    // Bob can hold one email task at a time.
    let session = app.pickup(BOB, &first).await;
    let second = customer_writes(&app, &d, 2, "cos-2@navy.example").await;
    let (s, body) = app
        .post(BOB, &format!("/api/v1/tasks/{second}/pickup"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "at capacity: {body}");
    assert_eq!(my_session(&app, BOB, &session).await["state"], "connected");

    reply_and_send(&app, BOB, &first, &sink, 1).await;
    wait_for(WAIT, "the task in wrap-up", || async {
        (task_state(&app, &first).await == "wrap_up").then_some(())
    })
    .await;
    let mine = my_session(&app, BOB, &session).await;
    assert_eq!(mine["state"], "wrap_up", "{mine}");
    assert_eq!(mine["result"], "accepted", "{mine}");
    assert!(mine["ended_at"].is_string(), "{mine}");
    assert_eq!(mine["live"], true, "waits for its wrap-up: {mine}");
    // The capacity is free: Bob takes the next task.
    app.pickup(BOB, &second).await;
    // The wrap-up is saved as usual, and the task concludes.
    let (s, body) = app
        .put(
            BOB,
            &format!("/api/v1/sessions/{session}/wrapup"),
            json!({"codes": {"primary": ["billing"], "secondary": []}, "tags": ["sent"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = app
        .post(
            BOB,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(task_state(&app, &first).await, "concluded");
    assert_eq!(my_session(&app, BOB, &session).await["state"], "concluded");
    // Exactly one message went out.
    assert_eq!(sink.messages().len(), 1);
    app.stop().await;
}

/// The default: a sent reply leaves the task with the agent.
async fn by_default_a_sent_reply_leaves_the_task_open(db: Db) {
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let app = spawn(db, &d, &sink).await;
    let first = customer_writes(&app, &d, 1, "open-1@navy.example").await;
    let session = app.pickup(BOB, &first).await;
    let second = customer_writes(&app, &d, 2, "open-2@navy.example").await;
    reply_and_send(&app, BOB, &first, &sink, 1).await;
    // Another reply on the same task goes out too. The first reply's
    // conclude-if-asked step runs right after its sent record, before the
    // second reply was even written: once that one is sent and recorded, the
    // state below is the first reply's doing too (no sleep needed; with
    // conclude-on-send wrongly applied, it reads wrap_up).
    reply_and_send(&app, BOB, &first, &sink, 2).await;
    assert_eq!(task_state(&app, &first).await, "connected");
    let mine = my_session(&app, BOB, &session).await;
    assert_eq!(mine["state"], "connected", "{mine}");
    assert!(mine["ended_at"].is_null(), "{mine}");
    let (s, body) = app
        .post(BOB, &format!("/api/v1/tasks/{second}/pickup"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "still at capacity: {body}");
    // The agent ends it by hand.
    let (s, body) = app
        .post(BOB, &format!("/api/v1/tasks/{first}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(my_session(&app, BOB, &session).await["state"], "wrap_up");
    app.stop().await;
}

/// With DKIM on and a Sent folder: the server receives a signed reply that
/// a real verifier accepts, and the Sent copy and the record are the very
/// same bytes.
async fn a_signed_reply_is_kept_byte_for_byte(db: Db) {
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    support::smtp::require_dkim();
    let key = dkim_test_key(DkimKeyKind::RsaPkcs8 { bits: 2048 }).expect("RSA key");
    let key_file = key.key_path.display().to_string();
    let app = spawn_with(db, &d, &sink, |text| {
        let smtp = "retry_base_secs = 1\n";
        assert!(text.contains(smtp));
        let text = text.replacen(
            smtp,
            &format!(
                "{smtp}dkim_domain = \"example.com\"\ndkim_selector = \"sb1\"\ndkim_key_file = \"{key_file}\"\n"
            ),
            1,
        );
        format!("{text}sent_folder = \"Sent\"\n")
    })
    .await;
    let task = customer_writes(&app, &d, 1, "signed-1@navy.example").await;
    app.pickup(ALICE, &task).await;
    let draft = reply_and_send(&app, ALICE, &task, &sink, 1).await;
    let message_id = draft["message_id"].as_str().expect("message id").to_owned();
    let got = &sink.messages()[0];
    assert_eq!(got.header("Message-ID"), [format!("<{message_id}>")]);
    let verdict = dkim_verify(&got.data, "sb1", "example.com", &key.txt);
    assert!(verdict.ok, "{}\n{}", verdict.log, got.text());

    // The Sent copy: the bytes the server received.
    let uid = wait_for(WAIT, "the Sent copy", || async {
        if !d.folders("support").iter().any(|f| f == "Sent") {
            return None;
        }
        d.uids("support", "Sent").first().copied()
    })
    .await;
    assert_eq!(
        d.fetch("support", "Sent", uid),
        got.data,
        "Sent copy = sent bytes"
    );
    // The record the conversation shows: the same bytes again.
    let (_, msgs) = app
        .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    let outbound = msgs["items"]
        .as_array()
        .and_then(|items| items.iter().find(|m| m["direction"] == "outbound"))
        .and_then(|m| m["id"].as_str())
        .unwrap_or_else(|| panic!("no outbound message: {msgs}"))
        .to_owned();
    let recorded = app
        .store()
        .message_raw(&outbound)
        .await
        .expect("raw source");
    assert_same_bytes(&recorded, &got.data, "the record");
    app.stop().await;
}

/// A mail that came in through Support and was transferred to Sales: the
/// reply goes to neither service's address, and the customer's answer to
/// that reply (naming only it) joins the same task, although Sales sent it
/// and the answer comes in through Support's mailbox.
async fn a_transferred_task_is_answered_across_services(db: Db) {
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let app = spawn(db, &d, &sink).await;
    let first = mail(
        "Boss <boss@cust.example>",
        "Quote for 40 licences",
        "quote-1@cust.example",
        &[("Reply-To", "a@cust.example, support@example.com")],
        "Please send a quote.",
    );
    d.deliver_lmtp("support", &first).expect("delivery");
    let task = wait_for(WAIT, "the task", || async {
        let (_, b) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        b["items"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{task}/transfer"),
            json!({"service": "sales"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    app.pickup(support::app::CAROL, &task).await;
    let (s, draft) = app
        .post(
            support::app::CAROL,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "reply"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{draft}");
    let to: Vec<&str> = draft["to"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["email"].as_str())
        .collect();
    assert_eq!(
        to,
        vec!["a@cust.example"],
        "no service's own address: {draft}"
    );
    let sent = reply_and_send(&app, support::app::CAROL, &task, &sink, 1).await;
    let ours = sent["message_id"].as_str().unwrap().to_string();
    let answer = mail(
        "A <a@cust.example>",
        "Re: Quote for 40 licences",
        "quote-2@cust.example",
        &[("In-Reply-To", &format!("<{ours}>"))],
        "Thanks, ordered.",
    );
    d.deliver_lmtp("support", &answer).expect("delivery");
    wait_for(WAIT, "the answer on the task", || async {
        let (_, msgs) = app
            .get(ADMIN, &format!("/api/v1/tasks/{task}/messages"))
            .await;
        msgs["items"]
            .as_array()?
            .iter()
            .any(|m| m["message_id"] == "quote-2@cust.example")
            .then_some(())
    })
    .await;
    let (_, all) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1), "{all}");
    // A draft left open after the task moved on is not sent for its new holders.
    let (s, left) = app
        .post(
            support::app::CAROL,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "reply"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{left}");
    let (s, b) = app
        .post(
            support::app::CAROL,
            &format!("/api/v1/tasks/{task}/transfer"),
            json!({"service": "support"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .post(
            support::app::CAROL,
            &format!("/api/v1/drafts/{}/send", left["id"].as_str().unwrap()),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no longer yours"),
        "{b}"
    );
    // Nor changed (work that could go nowhere), attachments included; it
    // can still be discarded.
    let left_id = left["id"].as_str().unwrap();
    let edit = put_draft(
        &app,
        support::app::CAROL,
        left_id,
        left["version"].as_i64().unwrap(),
        json!({"to": [{"email": "dee@cust.example"}], "subject": "Re", "body_text": "late"}),
    )
    .await;
    assert_eq!(edit.status(), StatusCode::FORBIDDEN);
    let why = edit.text().await.unwrap();
    assert!(why.contains("can no longer be changed"), "{why}");
    let attach = app
        .client
        .post(format!(
            "{}/api/v1/drafts/{left_id}/attachments?filename=a.txt",
            app.url
        ))
        .bearer_auth(support::app::CAROL)
        .header("if-match", format!("\"{}\"", left["version"]))
        .header("content-type", "text/plain")
        .body("late")
        .send()
        .await
        .unwrap();
    assert_eq!(attach.status(), StatusCode::FORBIDDEN);
    let gone = app
        .client
        .delete(format!("{}/api/v1/drafts/{left_id}", app.url))
        .bearer_auth(support::app::CAROL)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);

    // A draft is made within what the draft API takes back: a reply to all
    // of 150 recipients is refused (nobody dropped unseen); a reply to a
    // 4,096-character subject gets one of 998.
    let many: Vec<String> = (0..150).map(|i| format!("c{i}@cust.example")).collect();
    let long_subject = "L".repeat(4096);
    let crowded = mail(
        "Dee <dee@cust.example>",
        &long_subject,
        "crowd-1@cust.example",
        &[("Cc", &many.join(", "))],
        "To all of you.",
    );
    d.deliver_lmtp("support", &crowded).expect("delivery");
    let crowd = wait_for(WAIT, "the crowded mail's task", || async {
        let (_, b) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        b["items"]
            .as_array()?
            .iter()
            .find(|t| t["id"] != task.as_str())
            .and_then(|t| t["id"].as_str().map(str::to_owned))
    })
    .await;
    let (s, e) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{crowd}/drafts"),
            json!({"kind": "reply_all"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let m = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("cc") && m.contains("150") && m.contains("100"),
        "{m}"
    );
    let (s, draft) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{crowd}/drafts"),
            json!({"kind": "reply"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{draft}");
    assert_eq!(
        draft["subject"].as_str().map(|s| s.chars().count()),
        Some(998),
        "{}",
        draft["subject"]
    );

    // A forward of a mail with an inline image carries the image, and its
    // HTML still shows it (cid:), not a placeholder.
    let related = b"From: Olly <olly@cust.example>\r\nTo: support@example.com\r\n\
Subject: Logo attached\r\nMessage-ID: <logo-1@cust.example>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/related; boundary=\"rel\"\r\n\r\n\
--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
<p>Our logo: <img src=\"cid:image001.png@01DA\" alt=\"logo\"></p>\r\n\
--rel\r\nContent-Type: image/png; name=\"image001.png\"\r\nContent-ID: <image001.png@01DA>\r\n\
Content-Disposition: inline; filename=\"image001.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==\r\n\
--rel--\r\n";
    d.deliver_lmtp("support", related).expect("delivery");
    let logo = wait_for(WAIT, "the logo mail's task", || async {
        let (_, b) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        b["items"]
            .as_array()?
            .iter()
            .find(|t| t["subject"] == "Logo attached")
            .and_then(|t| t["id"].as_str().map(str::to_owned))
    })
    .await;
    let (s, fwd) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{logo}/drafts"),
            json!({"kind": "forward"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{fwd}");
    let html = fwd["body_html"].as_str().unwrap_or_default();
    assert!(html.contains("src=\"cid:image001.png@01DA\""), "{html}");
    assert_eq!(fwd["attachments"][0]["filename"], "image001.png", "{fwd}");
    // A forward goes to whom the agent chooses; a new message to the
    // customer who wrote.
    assert_eq!(fwd["to"], json!([]), "{fwd}");
    let (s, new) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{logo}/drafts"),
            json!({"kind": "new"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{new}");
    let to: Vec<&str> = new["to"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["email"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(to, vec!["olly@cust.example"], "{new}");
    app.stop().await;
}

/// The part of a sent mail that `marker` (a header line of the part) names:
/// from the boundary before it to the next one.
fn sent_part<'a>(raw: &'a str, marker: &str) -> &'a str {
    let at = raw
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {raw}"));
    let start = raw[..at].rfind("\r\n--").unwrap_or(0);
    let end = raw[at..].find("\r\n--=_").map_or(raw.len(), |e| at + e);
    &raw[start..end]
}

/// A forward carries what the customer sent as it was: an attached message
/// as a message (7bit or 8bit, which mail programs read, never
/// quoted-printable or base64), and a text file with its charset, which a
/// download names too. An address the agent typed twice is mailed once.
async fn a_forward_carries_messages_and_charsets_as_received(db: Db) {
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let app = spawn(db, &d, &sink).await;
    let long_line = format!("<p>{}</p>", "a long line of html ".repeat(5));
    let customer = format!(
        "From: fc@ex130.example\r\nTo: support@example.com\r\nSubject: charset attachment\r\n\
Message-ID: <t130@ex130.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"M\"\r\n\r\n\
--M\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n\
--M\r\nContent-Type: text/plain; charset=koi8-r; name=\"report.txt\"\r\n\
Content-Disposition: attachment; filename=\"report.txt\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
79Teo9QgzyDQ0s/EwdbByAo=\r\n\
--M\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"eight.eml\"\r\n\r\n\
From: =?utf-8?q?J=C3=BCrgen?= <j@ex130inner.example>\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
Grüße, 8-bit body = with equals\r\n\
--M\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"seven.eml\"\r\n\r\n\
From: Original Sender <orig@ex22inner.example>\r\nSubject: the original message\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n{long_line}\r\n--M--\r\n"
    );
    d.deliver_lmtp("support", customer.as_bytes())
        .expect("delivery");
    let task = first_task(&app, 1).await;
    app.pickup(ALICE, &task).await;

    // The download names the text's charset.
    let (_, m) = app
        .get(ALICE, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    let message = m["items"][0]["id"].as_str().unwrap().to_string();
    // Part 2: after the multipart (0) and the text (1).
    let report_part = 2;
    let r = app
        .client
        .get(format!(
            "{}/api/v1/attachments/{message}.{report_part}",
            app.url
        ))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; charset=koi8-r",
        "{:?}",
        r.headers()
    );
    let koi8 = [
        0xef, 0xd4, 0xde, 0xa3, 0xd4, 0x20, 0xcf, 0x20, 0xd0, 0xd2, 0xcf, 0xc4, 0xc1, 0xd6, 0xc1,
        0xc8, 0x0a,
    ];
    assert_eq!(r.bytes().await.unwrap().as_ref(), koi8);

    let (s, fwd) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "forward"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{fwd}");
    let id = fwd["id"].as_str().unwrap().to_string();
    let r = put_draft(
        &app,
        ALICE,
        &id,
        fwd["version"].as_i64().unwrap(),
        // One address typed four times, in any case: mailed once.
        json!({
            "to": [{"email": "p@partner.example", "name": "P"}, {"email": "P@partner.example"}],
            "cc": [{"email": "p@PARTNER.example"}],
            "bcc": [{"email": "p@partner.example"}],
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (s, q) = app
        .post(ALICE, &format!("/api/v1/drafts/{id}/send"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{q}");
    let got = sink.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "the forward reached the server");
    let raw = got[0].text();
    assert_eq!(got[0].rcpt_to, ["p@partner.example"]);
    assert!(raw.contains("\r\nTo: P <p@partner.example>\r\n"), "{raw}");
    assert!(!raw.contains("\r\nCc:"), "{raw}");

    let report = sent_part(&raw, "filename=\"report.txt\"");
    assert!(
        report.contains("Content-Type: text/plain; charset=koi8-r\r\n"),
        "{report}"
    );
    let eight = sent_part(&raw, "filename=\"eight.eml\"");
    assert!(
        eight.contains("Content-Type: message/rfc822\r\n"),
        "{eight}"
    );
    assert!(
        eight.contains("Content-Transfer-Encoding: 8bit\r\n"),
        "{eight}"
    );
    assert!(
        eight.ends_with("\r\n\r\nGrüße, 8-bit body = with equals"),
        "the message as it was: {eight}"
    );
    let seven = sent_part(&raw, "filename=\"seven.eml\"");
    assert!(
        seven.contains("Content-Type: message/rfc822\r\n"),
        "{seven}"
    );
    assert!(
        seven.contains("Content-Transfer-Encoding: 7bit\r\n"),
        "{seven}"
    );
    assert!(seven.ends_with(&format!("\r\n\r\n{long_line}")), "{seven}");
    app.stop().await;
}

on_both_backends!(
    a_forward_carries_messages_and_charsets_as_received,
    a_transferred_task_is_answered_across_services,
    the_full_round_trip,
    smtp_down_then_back_delivers_once,
    a_permanent_failure_is_shown_to_the_agent,
    conclude_on_send_ends_the_agents_part,
    by_default_a_sent_reply_leaves_the_task_open,
    a_signed_reply_is_kept_byte_for_byte,
    quoted_and_international_addresses_are_answered
);
