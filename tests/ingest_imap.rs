//! IMAP ingestion against a real Dovecot: push with IDLE, exactly once across
//! SIGKILL, reconnection, UIDVALIDITY changes, two workers, hostile mail, TLS.
mod support;

use reqwest::StatusCode;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::app::{ADMIN, Db, TestApp, TestDb, base_config};
use support::mail::{mail, wait_for};
use support::process::{Guarded, serve};
use support::servers::{Dovecot, DovecotOptions};

const USER: &str = "support";
const WAIT: Duration = Duration::from_secs(60);

fn dovecot(tls: bool) -> Dovecot {
    support::servers::require_dovecot();
    Dovecot::start(DovecotOptions { tls }).expect("Dovecot starts")
}

/// Configuration text for an instance reading the test user's mail over
/// plain IMAP (`mailbox_extra`: more keys of the mailbox, e.g. its folder).
fn imap_config(db_url: &str, d: &Dovecot, mailbox_extra: &str, ingest_extra: &str) -> String {
    imap_config_on(db_url, d, "none", d.imap_port, mailbox_extra, ingest_extra)
}

/// [`imap_config`] with the mailbox's `tls` mode and port.
fn imap_config_on(
    db_url: &str,
    d: &Dovecot,
    tls: &str,
    port: u16,
    mailbox_extra: &str,
    ingest_extra: &str,
) -> String {
    format!(
        r#"{}
[ingest]
io_timeout_secs = 5
max_backoff_secs = 2
lease_secs = 5
{ingest_extra}

[[mailboxes]]
id = "support-imap"
service = "support"
kind = "imap"
host = "127.0.0.1"
port = {port}
tls = "{tls}"
username = "{USER}"
password = "{}"
{mailbox_extra}
"#,
        base_config(db_url),
        d.password()
    )
}

async fn spawn(db: Db, d: &Dovecot, mailbox_extra: &str, ingest_extra: &str) -> TestApp {
    let test_db = TestDb::create(db).await;
    let text = imap_config(&test_db.url, d, mailbox_extra, ingest_extra);
    TestApp::spawn_on(test_db, Some(text)).await
}

async fn mailbox(app: &TestApp) -> Value {
    let (s, b) = app.get(ADMIN, "/api/v1/ops/mailboxes").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["items"][0].clone()
}

async fn wait_state(app: &TestApp, state: &str) -> Value {
    wait_for(WAIT, &format!("mailbox state {state}"), || async {
        let m = mailbox(app).await;
        (m["state"] == state).then_some(m)
    })
    .await
}

async fn wait_count(app: &TestApp, sql: &str, n: i64) {
    wait_for(WAIT, &format!("{sql} = {n}"), || async {
        (app.count(sql).await >= n).then_some(())
    })
    .await;
}

fn numbered(i: usize, tag: &str) -> Vec<u8> {
    let body = format!(
        "Message {i} of the {tag} run.\n{}",
        "Lorem ipsum dolor sit amet. ".repeat(i % 40)
    );
    mail(
        &format!("customer{}@example.net", i % 97),
        &format!("{tag} #{i}"),
        &format!("{tag}-{i}@example.net"),
        &[],
        &body,
    )
}

/// Mail is pushed: with polling an hour and IDLE renewal half an hour apart, only the
/// server's IDLE notice can make a task of mail delivered while the worker
/// idles (delivered once Dovecot shows the session in IDLE).
async fn idle_push_makes_a_task(db: Db) {
    let d = dovecot(false);
    let app = spawn(
        db,
        &d,
        "",
        "poll_interval_secs = 3600\nidle_renew_secs = 1700",
    )
    .await;
    let m = wait_state(&app, "idle").await;
    assert_eq!(m["push"], true, "{m}");
    for i in 0..3 {
        let before = app.count("SELECT count(*) FROM tasks").await;
        wait_for(WAIT, "the worker's session in IDLE", || async {
            d.idling(USER).then_some(())
        })
        .await;
        let sent = Instant::now();
        d.deliver_lmtp(USER, &numbered(i, "push"))
            .expect("LMTP delivery");
        wait_count(&app, "SELECT count(*) FROM tasks", before + 1).await;
        println!("delivery {i}: task after {:?}", sent.elapsed());
    }
    // Flagged on the server after the commit.
    wait_for(WAIT, "\\Seen on every message", || async {
        let uids = d.uids(USER, "INBOX");
        (uids.len() == 3
            && uids
                .iter()
                .all(|u| d.flags(USER, "INBOX", *u).iter().any(|f| f == "\\Seen")))
        .then_some(())
    })
    .await;
    app.stop().await;
}

async fn reconnects_after_the_server_restarts(db: Db) {
    let d = dovecot(false);
    let app = spawn(db, &d, "", "").await;
    wait_state(&app, "idle").await;
    d.stop();
    let m = wait_state(&app, "error").await;
    assert!(m["last_error"].is_string(), "{m}");
    assert!(m["counts"]["errors"].as_i64() >= Some(1));
    d.restart();
    wait_state(&app, "idle").await;
    d.deliver_lmtp(USER, &numbered(1, "restart"))
        .expect("LMTP delivery");
    wait_count(&app, "SELECT count(*) FROM tasks", 1).await;
    let m = mailbox(&app).await;
    assert_eq!(m["up"], true, "{m}");
    app.stop().await;
}

async fn a_new_uidvalidity_does_not_duplicate(db: Db) {
    let d = dovecot(false);
    let raws: Vec<Vec<u8>> = (0..3).map(|i| numbered(i, "validity")).collect();
    d.append_many(USER, "Support", &raws);
    let app = spawn(db, &d, "folder = \"Support\"", "idle_renew_secs = 2").await;
    wait_count(&app, "SELECT count(*) FROM tasks", 3).await;
    let before = mailbox(&app).await;
    // The folder is deleted and recreated: new UIDVALIDITY, same mail plus one.
    let out = d.imap_command(USER, &["DELETE Support", "CREATE Support"]);
    assert!(out.contains("c2 OK"), "{out}");
    let mut again = raws.clone();
    again.push(numbered(3, "validity"));
    d.append_many(USER, "Support", &again);
    // The cursor at the end of the new folder is the event: everything in
    // it was met, so the counts are final.
    let after = wait_for(WAIT, "the cursor at the end of the new folder", || async {
        let m = mailbox(&app).await;
        (m["cursor"]["uid_validity"] != before["cursor"]["uid_validity"]
            && m["cursor"]["last_uid"] == 4)
            .then_some(m)
    })
    .await;
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 4, "{after}");
    assert_eq!(
        app.count("SELECT duplicates_total FROM mailboxes").await,
        3,
        "the three known mails met again, once each"
    );
    // The sources were written ahead of their batches (PostgreSQL's
    // `message_sources`, SQLite's sources file), and the known mails met
    // again wrote none.
    let pointing = if matches!(db, Db::Postgres) {
        "SELECT count(*) FROM messages WHERE source_id IS NOT NULL AND raw IS NULL"
    } else {
        "SELECT count(*) FROM messages WHERE raw_file_id IS NOT NULL AND length(raw) = 0"
    };
    assert_eq!(app.count(pointing).await, 4);
    assert_eq!(app.count_staged_sources("TRUE").await, 4);
    app.stop().await;
}

async fn hostile_mail_is_quarantined_and_the_mailbox_flows(db: Db) {
    let d = dovecot(false);
    let oversized = mail(
        "big@example.net",
        "Huge",
        "huge@example.net",
        &[],
        &"y".repeat(400_000),
    );
    // NUL bytes in every header and address field the store keeps (Dovecot
    // may pass or rewrite them; either way the mailbox must flow).
    let nul = b"From: N\x00ul <nul@exam\x00ple.net>\r\nTo: sup\x00port@example.com\r\nCc: c\x00c@example.com\r\nReply-To: r\x00@example.net\r\nSubject: nul \x00 byte\r\nMessage-ID: <nul\x00@example.net>\r\nIn-Reply-To: <a\x00b@example.net>\r\nReferences: <c\x00d@example.net> <e@example.net>\r\n\r\nbody with \x00 NUL\r\n".to_vec();
    let mut nested = String::from(
        "From: deep@example.net\r\nSubject: nested\r\nMessage-ID: <deep@example.net>\r\nMIME-Version: 1.0\r\n",
    );
    for i in 0..200 {
        nested.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    nested.push_str("Content-Type: text/plain\r\n\r\ndeep\r\n");
    let headers_only = b"Subject: no body at all\r\n".to_vec();
    let garbage = b"\xff\xfe\x00\x00 not a message\r\n".to_vec();
    let good = mail(
        "good@example.net",
        "Normal after hostile",
        "good@example.net",
        &[],
        "Hello",
    );
    d.append_many(
        USER,
        "INBOX",
        &[
            oversized,
            nul,
            nested.into_bytes(),
            headers_only,
            garbage,
            good,
        ],
    );
    let app = spawn(db, &d, "", "max_message_bytes = 200000").await;
    wait_for(WAIT, "the normal mail as a task", || async {
        (app.count("SELECT count(*) FROM tasks WHERE subject = 'Normal after hostile'")
            .await
            == 1)
            .then_some(())
    })
    .await;
    wait_state(&app, "idle").await;
    let m = mailbox(&app).await;
    assert_eq!(m["up"], true);
    let (_, q) = app.get(ADMIN, "/api/v1/ops/quarantine").await;
    let items = q["items"].as_array().cloned().unwrap_or_default();
    assert!(
        items
            .iter()
            .any(|e| e["reason"] == "too_large" && e["uid"] == 1),
        "{q}"
    );
    // Everything else was stored (as a message or a quarantine entry), nothing lost.
    let stored = app.count("SELECT count(*) FROM messages").await + items.len() as i64;
    assert_eq!(stored, 6, "{q}");
    // The too-large mail stays on the server untouched, for people to see.
    assert!(!d.flags(USER, "INBOX", 1).iter().any(|f| f == "\\Seen"));
    // An operator takes it in: fetched again from the folder by its UID
    // (its source was not kept), released without the size limit, once.
    let big = items
        .iter()
        .find(|e| e["reason"] == "too_large")
        .and_then(|e| e["id"].as_str())
        .unwrap()
        .to_string();
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/ops/quarantine/{big}/retry"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "still over the limit: {b}");
    assert!(b.to_string().contains("still cannot take it in"), "{b}");
    // Had the folder been rebuilt since (another UIDVALIDITY recorded), its
    // UID could name another mail: nothing is taken.
    let mut conn = support::app::RawConn::open(&app.db.url).await;
    let shift = |d: i64| {
        format!("UPDATE quarantine SET uid_validity = uid_validity + ({d}) WHERE id = '{big}'")
    };
    assert_eq!(conn.exec(&shift(1)).await, Ok(1));
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/ops/quarantine/{big}/release"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(b.to_string().contains("was rebuilt since"), "{b}");
    assert_eq!(conn.exec(&shift(-1)).await, Ok(1));
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/ops/quarantine/{big}/release"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        app.count("SELECT count(*) FROM tasks WHERE subject = 'Huge'")
            .await,
        1
    );
    app.stop().await;
}

/// Both TLS modes against Dovecot's self-signed certificate (trusted through
/// `ca_file`), each seen in Dovecot's log as a TLS login, and the mail moved
/// to another folder once ingested.
async fn move_after_ingest_and_tls(db: Db) {
    let d = dovecot(true);
    let ca = d.cert_pem_path();
    let tls_logins = |d: &Dovecot| {
        d.log()
            .lines()
            .filter(|l| l.contains("Login: user=<support>") && l.contains(", TLS"))
            .count()
    };
    for (i, (tls, port)) in [
        ("starttls", d.imap_port),
        ("implicit", d.imaps_port.expect("imaps port")),
    ]
    .into_iter()
    .enumerate()
    {
        let before = tls_logins(&d);
        let test_db = TestDb::create(db).await;
        let text = imap_config_on(
            &test_db.url,
            &d,
            tls,
            port,
            &format!(
                "ca_file = \"{}\"\nafter_ingest = \"move:Processed\"",
                ca.display()
            ),
            "",
        );
        d.append(USER, "INBOX", &numbered(i, tls));
        let app = TestApp::spawn_on(test_db, Some(text)).await;
        wait_count(&app, "SELECT count(*) FROM tasks", 1).await;
        let (_, t) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        assert_eq!(t["items"][0]["subject"], format!("{tls} #{i}"), "{t}");
        wait_for(WAIT, "moved to Processed", || async {
            (d.uids(USER, "INBOX").is_empty() && d.uids(USER, "Processed").len() == i + 1)
                .then_some(())
        })
        .await;
        assert!(
            tls_logins(&d) > before,
            "{tls}: no TLS login in Dovecot's log:\n{}",
            d.log()
        );
        app.stop().await;
    }
}

on_both_backends!(
    idle_push_makes_a_task,
    reconnects_after_the_server_restarts,
    a_new_uidvalidity_does_not_duplicate,
    hostile_mail_is_quarantined_and_the_mailbox_flows,
    move_after_ingest_and_tls,
);

// ---- Whole processes: SIGKILL and two workers ----

/// The configuration file of a `switchboard serve` process on `test_db`
/// (its own free HTTP port), named `name`.
fn process_config(test_db: &TestDb, d: &Dovecot, name: &str, ingest_extra: &str) -> PathBuf {
    let path = test_db.dir().join(format!("{name}.toml"));
    let port = support::servers::free_port();
    let text = imap_config(&test_db.url, d, "", ingest_extra)
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&path, text).expect("write the configuration");
    path
}

/// Waits until `sql` counts at least `n` (read on connections of its own).
async fn wait_at_least(test_db: &TestDb, within: Duration, sql: &str, n: i64) {
    wait_for(within, &format!("{sql} >= {n}"), || async {
        (test_db.try_int(sql).await? >= n).then_some(())
    })
    .await;
}

/// Exactly once across SIGKILL: the worker is killed twice while it works
/// through a backlog. Each time, what it had committed is read back: the
/// cursor strictly between the ends (it really died mid-backlog) and exactly
/// as many tasks as the cursor covers (tasks and cursor commit together).
/// In the end every message is one task and the ingestion never met a
/// message twice: its duplicate counter is 0 (content-hash deduplication
/// would otherwise hide a cursor committed apart from its tasks).
async fn sigkill_in_the_middle_of_a_backlog(db: Db) {
    const N: i64 = 2000;
    let d = dovecot(false);
    let raws: Vec<Vec<u8>> = (0..N as usize).map(|i| numbered(i, "backlog")).collect();
    d.append_many(USER, "INBOX", &raws);
    let test_db = TestDb::create(db).await;
    let path = process_config(&test_db, &d, "switchboard", "batch_size = 25");
    let mut child = serve(&path);
    for target in [300, 1100] {
        wait_at_least(&test_db, WAIT, "SELECT count(*) FROM tasks", target).await;
        child.sigkill();
        test_db.quiesce().await;
        let cursor = test_db.int("SELECT last_uid FROM mailboxes").await;
        let tasks = test_db.int("SELECT count(*) FROM tasks").await;
        assert!(
            0 < cursor && cursor < N,
            "{db:?}: not killed mid-backlog: the committed cursor was at UID {cursor} of {N} \
             (raise N if ingestion got this fast)"
        );
        assert_eq!(
            tasks, cursor,
            "{db:?}: killed with {tasks} tasks committed but the cursor at UID {cursor}"
        );
        child = serve(&path);
    }
    wait_at_least(
        &test_db,
        Duration::from_secs(300),
        "SELECT count(*) FROM tasks",
        N,
    )
    .await;
    // The cursor at the end is the event: nothing is left to fetch, so the
    // counts below are final.
    wait_at_least(&test_db, WAIT, "SELECT last_uid FROM mailboxes", N).await;
    for (sql, want) in [
        ("SELECT count(*) FROM tasks", N),
        ("SELECT count(DISTINCT subject) FROM tasks", N),
        ("SELECT count(*) FROM messages", N),
        ("SELECT duplicates_total FROM mailboxes", 0),
        ("SELECT ingested_total FROM mailboxes", N),
    ] {
        assert_eq!(test_db.int(sql).await, want, "{db:?}: {sql}");
    }
    // Every message has its raw source, in its row or staged ahead
    // (PostgreSQL's `message_sources`, SQLite's sources file).
    let sourced = match db {
        Db::Postgres => {
            "SELECT count(*) FROM messages m LEFT JOIN message_sources s ON s.id = m.source_id
             WHERE length(COALESCE(m.raw, s.raw)) > 0"
        }
        Db::Sqlite => {
            "SELECT count(*) FROM messages m LEFT JOIN sources.message_sources s ON s.id = m.raw_file_id
             WHERE CASE WHEN m.raw_file_id IS NULL THEN length(m.raw) ELSE length(s.raw) END > 0"
        }
    };
    assert_eq!(
        test_db.int_with_sources(sourced).await,
        N,
        "{db:?}: {sourced}"
    );
    // And each reads back as the mail it was, each mail once.
    let store = switchboard::store::Store::connect(&test_db.url, 2)
        .await
        .unwrap();
    let ids = test_db.texts("SELECT id FROM messages").await;
    let mut read: Vec<Vec<u8>> = Vec::with_capacity(ids.len());
    for id in &ids {
        read.push(store.message_raw(id).await.unwrap());
    }
    store.close().await;
    let mut expected = raws.clone();
    expected.sort();
    read.sort();
    assert!(
        read == expected,
        "{db:?}: the sources read back are not the mails appended"
    );
    // The after-ingest action was repeated where a kill interrupted it.
    wait_for(WAIT, "every message flagged \\Seen", || async {
        let out = d.imap_command(USER, &["SELECT INBOX", "UID SEARCH UNSEEN"]);
        out.lines()
            .any(|l| l.trim_end() == "* SEARCH")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_backlog_sqlite() {
    sigkill_in_the_middle_of_a_backlog(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_backlog_postgres() {
    sigkill_in_the_middle_of_a_backlog(Db::Postgres).await
}

/// Two workers on one PostgreSQL: one syncs the mailbox (the other never
/// meets a message: no duplicates), and when it is killed the mailbox passes
/// to the other, which takes it over and turns the mail delivered meanwhile
/// into a task (the ownership change itself, bound to the owner's
/// connection, is timed in tests/ingest_ownership.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_mailboxes_and_take_over() {
    const N: i64 = 300;
    let d = dovecot(false);
    let raws: Vec<Vec<u8>> = (0..N as usize).map(|i| numbered(i, "pair")).collect();
    d.append_many(USER, "INBOX", &raws);
    let test_db = TestDb::create(Db::Postgres).await;
    let mut workers: Vec<(String, Guarded)> = ["one", "two"]
        .into_iter()
        .map(|name| {
            let id = format!("worker-{name}");
            let path = process_config(
                &test_db,
                &d,
                name,
                &format!("worker_id = \"{id}\"\nbatch_size = 10"),
            );
            (id, serve(&path))
        })
        .collect();
    wait_at_least(&test_db, WAIT, "SELECT last_uid FROM mailboxes", N).await;
    for (sql, want) in [
        ("SELECT count(*) FROM tasks", N),
        ("SELECT count(*) FROM messages", N),
        ("SELECT duplicates_total FROM mailboxes", 0),
    ] {
        assert_eq!(test_db.int(sql).await, want, "{sql}");
    }
    // Kill whichever holds the mailbox.
    let holder = test_db.texts("SELECT lease_owner FROM mailboxes").await;
    let at = workers
        .iter()
        .position(|(id, _)| holder == std::slice::from_ref(id))
        .unwrap_or_else(|| panic!("the lease is held by one of the workers: {holder:?}"));
    let (killed, mut child) = workers.remove(at);
    let survivor = workers[0].0.clone();
    let epoch = test_db
        .int("SELECT epoch FROM ownership WHERE kind = 'mailbox'")
        .await;
    let since = Instant::now();
    child.sigkill();
    d.deliver_lmtp(USER, &numbered(999, "pair"))
        .expect("LMTP delivery");
    wait_at_least(
        &test_db,
        Duration::from_secs(40),
        "SELECT count(*) FROM tasks",
        N + 1,
    )
    .await;
    let took = since.elapsed();
    println!("takeover after {took:?}");
    // The survivor takes the mailbox over within seconds, and the mail
    // delivered meanwhile is a task.
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    assert_eq!(
        test_db.texts("SELECT lease_owner FROM mailboxes").await,
        std::slice::from_ref(&survivor),
        "the mailbox passed from {killed} to {survivor}"
    );
    assert_eq!(
        test_db
            .texts("SELECT owner FROM ownership WHERE kind = 'mailbox'")
            .await,
        std::slice::from_ref(&survivor),
    );
    // A new epoch: the dead worker's fence is stale, whatever it had in flight.
    assert!(
        test_db
            .int("SELECT epoch FROM ownership WHERE kind = 'mailbox'")
            .await
            > epoch
    );
    wait_at_least(&test_db, WAIT, "SELECT last_uid FROM mailboxes", N + 1).await;
    for (sql, want) in [
        ("SELECT count(*) FROM tasks", N + 1),
        ("SELECT count(*) FROM messages", N + 1),
        ("SELECT duplicates_total FROM mailboxes", 0),
    ] {
        assert_eq!(test_db.int(sql).await, want, "{sql}");
    }
}
