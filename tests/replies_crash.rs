//! Sending survives crashes and several workers: a reply is never sent as two
//! different messages, and each reply is sent by exactly one worker.
mod support;

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::app::{ADMIN, ALICE, Db, TestDb, base_config};
use support::mail::{mail, wait_for};
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
timeout_secs = 2
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

fn serve(path: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--config"])
        .arg(path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("switchboard starts")
}

fn sigkill(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<Value> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.ok()?;
        resp.json().await.ok()
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
        let b = api
            .call(
                reqwest::Method::GET,
                ADMIN,
                "/api/v1/tasks?modality=email",
                None,
            )
            .await?;
        b["items"][0]["id"].as_str().map(String::from)
    })
    .await;
    api.call(
        reqwest::Method::POST,
        ALICE,
        &format!("/api/v1/tasks/{task}/pickup"),
        None,
    )
    .await;
    let draft = api
        .call(
            reqwest::Method::POST,
            ALICE,
            &format!("/api/v1/tasks/{task}/drafts"),
            Some(json!({"kind": "reply"})),
        )
        .await
        .unwrap();
    let id = draft["id"].as_str().unwrap().to_string();
    // The server stores the message, then holds its answer back: the worker
    // is killed after delivery but before it can record it.
    sink.set_data_delay(20_000);
    api.call(
        reqwest::Method::POST,
        ALICE,
        &format!("/api/v1/drafts/{id}/send"),
        None,
    )
    .await;
    let delivered = sink.wait_for(1, WAIT);
    sigkill(&mut child);
    sink.set_data_delay(0);
    if copy_in_sent {
        // The worker died after its Sent copy was stored: the retry finds it there.
        d.append("support", "Sent", &delivered[0].data);
    }
    let mut child = serve(&path);
    api.ready().await;
    let sent = wait_for(WAIT, "the draft sent after the restart", || async {
        let d = api
            .call(
                reqwest::Method::GET,
                ALICE,
                &format!("/api/v1/drafts/{id}"),
                None,
            )
            .await?;
        (d["state"] == "sent").then_some(d)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = sink.messages();
    assert!(!got.is_empty());
    if copy_in_sent {
        assert_eq!(got.len(), 1, "found in the Sent folder: not sent again");
        assert!(
            sent["smtp_response"]
                .as_str()
                .unwrap_or_default()
                .contains("Sent folder"),
            "{sent}"
        );
    }
    // Possibly the same message twice, never two different ones.
    let first = &got[0];
    for m in &got {
        for h in ["Message-ID", "Date", "Subject", "In-Reply-To", "To"] {
            assert_eq!(
                m.header(h),
                first.header(h),
                "{h} differs between deliveries"
            );
        }
        assert_eq!(
            m.header("Message-ID"),
            vec![format!("<{}>", sent["message_id"].as_str().unwrap())]
        );
    }
    let msgs = api
        .call(
            reqwest::Method::GET,
            ALICE,
            &format!("/api/v1/tasks/{task}/messages"),
            None,
        )
        .await
        .unwrap();
    let outbound = msgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "outbound")
        .count();
    assert_eq!(outbound, 1, "one sent record: {msgs}");
    // The Sent folder has the copy.
    wait_for(WAIT, "the Sent copy", || async {
        (!d.uids("support", "Sent").is_empty()).then_some(())
    })
    .await;
    sigkill(&mut child);
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
    let mut a = serve(&p1);
    api.ready().await;
    let mut b = serve(&p2);
    api2.ready().await;
    let tasks: Vec<String> = wait_for(WAIT, "all tasks", || async {
        let b = api
            .call(
                reqwest::Method::GET,
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
                reqwest::Method::POST,
                ADMIN,
                &format!("/api/v1/tasks/{t}/drafts"),
                Some(json!({"kind": "reply"})),
            )
            .await
            .unwrap();
        drafts.push(dr["id"].as_str().unwrap().to_string());
    }
    for (i, id) in drafts.iter().enumerate() {
        let api = if i % 2 == 0 { &api } else { &api2 };
        api.call(
            reqwest::Method::POST,
            ADMIN,
            &format!("/api/v1/drafts/{id}/send"),
            None,
        )
        .await;
    }
    sink.wait_for(N, WAIT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = sink.messages();
    let mut ids: Vec<String> = got.iter().flat_map(|m| m.header("Message-ID")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(got.len(), N, "each reply once");
    assert_eq!(ids.len(), N);
    sigkill(&mut a);
    sigkill(&mut b);
}
