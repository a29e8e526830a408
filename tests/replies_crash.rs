//! Sending survives crashes and several workers: a reply is never sent as two
//! different messages, and each reply is sent by exactly one worker.
mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use support::app::{ADMIN, ALICE, Db, TestDb, base_config};
use support::mail::{mail, wait_for};
use support::process::serve;
use support::servers::{Dovecot, DovecotOptions, free_port};
use support::smtp::{SmtpSink, SmtpSinkOptions};

const WAIT: Duration = Duration::from_secs(90);

fn config(db_url: &str, d: &Dovecot, smtp_port: u16, http_port: u16, worker: &str) -> String {
    format!(
        r#"{}
[ingest]
io_timeout_secs = 5
max_backoff_secs = 2
lease_secs = 5
worker_id = "{worker}"

[smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
# The claim on a reply lasts 4 timeouts (here 12 s): what a restarted
# worker waits before it takes over the reply a killed one was sending.
timeout_secs = 3
retry_base_secs = 1

[[mailboxes]]
service = "support"
kind = "imap"
host = "127.0.0.1"
port = {}
tls = "none"
username = "support"
password = "{}"
sent_folder = "Sent"
"#,
        base_config(db_url).replace("127.0.0.1:0", &format!("127.0.0.1:{http_port}")),
        d.imap_port,
        d.password()
    )
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    /// The status and JSON body; `None` when the server cannot be reached
    /// (yet, or any more).
    async fn try_call(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<(StatusCode, Value)> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.ok()?;
        let status = resp.status();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Like [`Api::try_call`], for a server that is up: panics unless it
    /// answers with `want`.
    async fn call(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: Option<Value>,
        want: StatusCode,
    ) -> Value {
        let (status, body) = self
            .try_call(method.clone(), token, path, body)
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        assert_eq!(status, want, "{method} {path}: {body}");
        body
    }

    async fn ready(&self) {
        wait_for(WAIT, "the server ready", || async {
            let r = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
    }
}

fn setup(d: &Dovecot, sink: &SmtpSink, db: &TestDb, name: &str) -> (std::path::PathBuf, Api) {
    let port = free_port();
    let path = db.dir().join(format!("{name}.toml"));
    std::fs::write(&path, config(&db.url, d, sink.port, port, name)).unwrap();
    (
        path,
        Api {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        },
    )
}

/// Drafts still to be sent (queued, or claimed by a worker). None left means
/// no delivery is still to come: each one is stored by the sink before its
/// `250`, and a draft is recorded as sent only after that answer.
async fn unsent(db: &TestDb) -> i64 {
    db.int("SELECT count(*) FROM drafts WHERE state IN ('queued', 'sending')")
        .await
}

/// The worker is killed after the server stored the reply but before it could
/// record it. Restarted, it looks for the reply in the Sent folder: found
/// there (`copy_in_sent`), it is not sent again (one delivery); not found,
/// it is sent once more, as the very same bytes (two deliveries, identical).
async fn sigkill_while_sending(db: Db, copy_in_sent: bool) {
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let test_db = TestDb::create(db).await;
    let (path, api) = setup(&d, &sink, &test_db, "w1");
    d.deliver_lmtp(
        "support",
        &mail(
            "kim@customer.example",
            "Refund?",
            "r1@customer.example",
            &[],
            "Where is my refund?",
        ),
    )
    .unwrap();
    let mut child = serve(&path);
    api.ready().await;
    let task = wait_for(WAIT, "the task", || async {
        let (_, b) = api
            .try_call(Method::GET, ADMIN, "/api/v1/tasks?modality=email", None)
            .await?;
        b["items"][0]["id"].as_str().map(String::from)
    })
    .await;
    api.call(
        Method::POST,
        ALICE,
        &format!("/api/v1/tasks/{task}/pickup"),
        None,
        StatusCode::CREATED,
    )
    .await;
    let draft = api
        .call(
            Method::POST,
            ALICE,
            &format!("/api/v1/tasks/{task}/drafts"),
            Some(json!({"kind": "reply"})),
            StatusCode::CREATED,
        )
        .await;
    let id = draft["id"].as_str().expect("draft id").to_string();
    // The server stores the message, then holds its answer back; the worker
    // is killed right after the store, well within its 3 s timeout.
    sink.set_data_delay(20_000);
    let queued = api
        .call(
            Method::POST,
            ALICE,
            &format!("/api/v1/drafts/{id}/send"),
            None,
            StatusCode::ACCEPTED,
        )
        .await;
    let first = sink.wait_for(1, WAIT);
    assert_eq!(first.len(), 1, "the reply reached the server");
    child.sigkill();
    sink.set_data_delay(0);
    assert_eq!(
        test_db
            .texts(&format!("SELECT state FROM drafts WHERE id = '{id}'"))
            .await,
        ["sending"],
        "killed before the delivery was recorded"
    );
    if copy_in_sent {
        // The worker died after its Sent copy was stored: the retry finds it there.
        d.append("support", "Sent", &first[0].data);
    }
    let _child = serve(&path);
    api.ready().await;
    let sent = wait_for(WAIT, "the draft sent after the restart", || async {
        let (_, d) = api
            .try_call(Method::GET, ALICE, &format!("/api/v1/drafts/{id}"), None)
            .await?;
        (d["state"] == "sent").then_some(d)
    })
    .await;
    assert_eq!(sent["message_id"], queued["message_id"], "{sent}");
    assert_eq!(unsent(&test_db).await, 0, "nothing left to send");
    let got = sink.messages();
    if copy_in_sent {
        assert_eq!(got.len(), 1, "found in the Sent folder: not sent again");
        assert!(
            sent["smtp_response"]
                .as_str()
                .unwrap_or_default()
                .contains("Sent folder"),
            "{sent}"
        );
    } else {
        assert_eq!(got.len(), 2, "sent once more after the kill, and only once");
        assert!(
            got[1].data == got[0].data,
            "the re-send differs from the first delivery:\n{}\n---\n{}",
            got[0].text(),
            got[1].text()
        );
        assert_eq!(got[1].rcpt_to, got[0].rcpt_to);
        assert_eq!(got[1].mail_from, got[0].mail_from);
    }
    assert_eq!(
        got[0].header("Message-ID"),
        vec![format!("<{}>", sent["message_id"].as_str().unwrap())]
    );
    let msgs = api
        .call(
            Method::GET,
            ALICE,
            &format!("/api/v1/tasks/{task}/messages"),
            None,
            StatusCode::OK,
        )
        .await;
    let outbound = msgs["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|m| m["direction"] == "outbound")
        .count();
    assert_eq!(outbound, 1, "one sent record: {msgs}");
    // The Sent folder has one copy: the bytes that went out.
    let uids = wait_for(WAIT, "the Sent copy", || async {
        let uids = d.uids("support", "Sent");
        (!uids.is_empty()).then_some(uids)
    })
    .await;
    assert_eq!(uids.len(), 1, "one Sent copy");
    assert!(
        d.fetch("support", "Sent", uids[0]) == got[0].data,
        "the Sent copy is what the server received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_sending_sqlite() {
    sigkill_while_sending(Db::Sqlite, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_sent_copy_sends_nothing_again() {
    sigkill_while_sending(Db::Sqlite, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_sending_postgres() {
    sigkill_while_sending(Db::Postgres, false).await
}

/// Two workers on one PostgreSQL share the outbox: each reply goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_send_each_reply_once() {
    const N: usize = 20;
    let d = Dovecot::start(DovecotOptions::default()).expect("Dovecot");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let test_db = TestDb::create(Db::Postgres).await;
    let (p1, api) = setup(&d, &sink, &test_db, "w1");
    let (p2, api2) = setup(&d, &sink, &test_db, "w2");
    for i in 0..N {
        d.deliver_lmtp(
            "support",
            &mail(
                &format!("c{i}@customer.example"),
                &format!("Question {i}"),
                &format!("q{i}@customer.example"),
                &[],
                "?",
            ),
        )
        .unwrap();
    }
    let _a = serve(&p1);
    api.ready().await;
    let _b = serve(&p2);
    api2.ready().await;
    let tasks: Vec<String> = wait_for(WAIT, "all tasks", || async {
        let (_, b) = api
            .try_call(
                Method::GET,
                ADMIN,
                "/api/v1/tasks?modality=email&limit=100",
                None,
            )
            .await?;
        let items = b["items"].as_array()?.clone();
        (items.len() == N).then(|| {
            items
                .iter()
                .filter_map(|t| t["id"].as_str().map(String::from))
                .collect()
        })
    })
    .await;
    let mut drafts = Vec::new();
    for t in &tasks {
        let dr = api
            .call(
                Method::POST,
                ADMIN,
                &format!("/api/v1/tasks/{t}/drafts"),
                Some(json!({"kind": "reply"})),
                StatusCode::CREATED,
            )
            .await;
        drafts.push(dr["id"].as_str().expect("draft id").to_string());
    }
    for (i, id) in drafts.iter().enumerate() {
        let api = if i % 2 == 0 { &api } else { &api2 };
        api.call(
            Method::POST,
            ADMIN,
            &format!("/api/v1/drafts/{id}/send"),
            None,
            StatusCode::ACCEPTED,
        )
        .await;
    }
    // Every draft recorded as sent: every delivery there will be has happened.
    wait_for(WAIT, "every draft sent", || async {
        (test_db
            .try_int("SELECT count(*) FROM drafts WHERE state = 'sent'")
            .await?
            == N as i64)
            .then_some(())
    })
    .await;
    assert_eq!(unsent(&test_db).await, 0);
    let got = sink.messages();
    let mut ids: Vec<String> = got.iter().flat_map(|m| m.header("Message-ID")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(got.len(), N, "each reply once");
    assert_eq!(ids.len(), N);
}
