//! Sending replies over SMTP against a real server (aiosmtpd on loopback,
//! `tests/support/smtp_sink.py`): what the server received is checked byte
//! for byte.

#[path = "support/smtp.rs"]
mod smtp;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use smtp::{
    DkimKeyKind, DkimTestKey, SMTP_PASSWORD, SMTP_USER, SmtpSink, SmtpSinkOptions, dkim_tags,
    dkim_test_key, dkim_verify,
};
use switchboard::adapters::smtp::{
    DkimError, DkimSigner, OutgoingAttachment, OutgoingMail, SendError, Sender, SmtpSettings,
    Transport,
};
use switchboard::config::{Config, ConfigError, DkimAlgorithm, Secret, TlsMode};
use switchboard::mail::{Address, ParseLimits, attachment_bytes, parse_message};

const WAIT: Duration = Duration::from_secs(10);

fn addr(name: Option<&str>, email: &str) -> Address {
    Address {
        name: name.map(str::to_owned),
        email: email.to_owned(),
    }
}

fn date() -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000, 0).unwrap()
}

fn simple(message_id: &str, to: &str) -> OutgoingMail {
    OutgoingMail {
        from: addr(Some("Support"), "support@switchboard.test"),
        to: vec![addr(None, to)],
        cc: vec![],
        bcc: vec![],
        reply_to: None,
        subject: "Re: your question".into(),
        message_id: message_id.into(),
        in_reply_to: None,
        references: vec![],
        date: date(),
        text: "Thanks for your message.\n".into(),
        html: None,
        attachments: vec![],
        auto_submitted: false,
    }
}

fn settings(sink: &SmtpSink, tls: TlsMode) -> SmtpSettings {
    let mut s = SmtpSettings::new("127.0.0.1", sink.port());
    s.tls = tls;
    s.timeout = Duration::from_secs(10);
    s
}

fn sender(s: SmtpSettings) -> Sender {
    Sender::new(Transport::Smtp(s)).expect("sender")
}

fn parse(raw: &[u8]) -> switchboard::mail::ParsedMail {
    parse_message(raw, &ParseLimits::default()).expect("parseable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_is_received_once_with_exact_headers() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let png: Vec<u8> = (0u8..=255).cycle().take(3000).collect();
    let pdf = b"%PDF-1.4\n\x00\x01binary\xff\xfe tail\n".to_vec();
    let mail = OutgoingMail {
        from: addr(
            Some("Jörg Müller · Kundendienst"),
            "support@switchboard.test",
        ),
        to: vec![addr(Some("Anna Schäfer"), "anna@customer.test")],
        cc: vec![addr(None, "boss@customer.test")],
        bcc: vec![addr(None, "audit@switchboard.test")],
        reply_to: Some(addr(None, "replies@switchboard.test")),
        subject: "Re: Größenänderung für Bestellung Nr. 4711 — bitte prüfen".into(),
        message_id: "reply.42.7f3a@switchboard.test".into(),
        in_reply_to: Some("CAF=orig+1@mail.customer.test".into()),
        references: vec![
            "root.1@mail.customer.test".into(),
            "CAF=orig+1@mail.customer.test".into(),
        ],
        date: date(),
        text: "Hallo Anna,\n\nanbei die Rechnung.\n.\nGrüße\n".into(),
        html: Some(
            "<p>Hallo Anna,</p><p>anbei die Rechnung.</p><img src=\"cid:logo.1@switchboard.test\">"
                .into(),
        ),
        attachments: vec![
            OutgoingAttachment {
                filename: "Rechnung März.pdf".into(),
                content_type: "application/pdf".into(),
                bytes: pdf.clone(),
                content_id: None,
            },
            OutgoingAttachment {
                filename: "logo.png".into(),
                content_type: "image/png".into(),
                bytes: png.clone(),
                content_id: Some("logo.1@switchboard.test".into()),
            },
        ],
        auto_submitted: false,
    };
    let sender = sender(settings(&sink, TlsMode::None));
    let prepared = sender.prepare(&mail).expect("built");
    let response = sender.send_prepared(&prepared).await.expect("sent");
    assert!(
        response.starts_with("250 2.0.0 Ok: queued as 000001"),
        "{response}"
    );

    let received = sink.wait_for(1, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    let received_again = sink.messages();
    assert_eq!(received.len(), 1, "received exactly once");
    assert_eq!(received_again.len(), 1, "received exactly once");
    let m = &received[0];
    assert!(
        m.data == prepared.bytes(),
        "the server stored other bytes than were sent"
    );

    // Envelope: Bcc only here.
    assert_eq!(m.mail_from, "support@switchboard.test");
    assert_eq!(
        m.rcpt_to,
        [
            "anna@customer.test",
            "boss@customer.test",
            "audit@switchboard.test"
        ]
    );
    let text = m.text();
    assert!(m.data.is_ascii(), "the message is 7-bit clean");
    assert!(
        !text.contains("audit@switchboard.test"),
        "Bcc leaked:\n{text}"
    );
    assert!(m.header("Bcc").is_empty());

    // Threading headers exactly as given.
    assert_eq!(m.header("Message-ID"), ["<reply.42.7f3a@switchboard.test>"]);
    assert_eq!(m.header("In-Reply-To"), ["<CAF=orig+1@mail.customer.test>"]);
    assert_eq!(
        m.header("References"),
        ["<root.1@mail.customer.test> <CAF=orig+1@mail.customer.test>"]
    );
    assert!(
        text.contains("\r\nMessage-ID: <reply.42.7f3a@switchboard.test>\r\n"),
        "{text}"
    );
    assert!(m.header("Auto-Submitted").is_empty());

    // Subject and display name RFC 2047-encoded, decoding back to the same.
    let subject = m.header("Subject");
    assert_eq!(subject.len(), 1);
    assert!(subject[0].contains("=?utf-8?"), "{subject:?}");
    let from = m.header("From");
    assert!(from[0].contains("=?utf-8?"), "{from:?}");
    assert!(from[0].ends_with("<support@switchboard.test>"), "{from:?}");

    let parsed = parse(&m.data);
    assert_eq!(parsed.subject.as_deref(), Some(mail.subject.as_str()));
    assert_eq!(parsed.from, Some(mail.from.clone()));
    assert_eq!(parsed.to, mail.to);
    assert_eq!(parsed.cc, mail.cc);
    assert_eq!(parsed.reply_to, vec![mail.reply_to.clone().unwrap()]);
    assert_eq!(
        parsed.message_id.as_deref(),
        Some("reply.42.7f3a@switchboard.test")
    );
    assert_eq!(parsed.in_reply_to, ["CAF=orig+1@mail.customer.test"]);
    assert_eq!(parsed.references, mail.references);
    assert_eq!(parsed.date, Some(date()));
    let body = parsed.text_body.clone().unwrap().replace("\r\n", "\n");
    assert_eq!(body.trim_end(), mail.text.trim_end());
    assert!(
        parsed
            .html_body
            .clone()
            .unwrap()
            .contains("cid:logo.1@switchboard.test")
    );

    // Attachments: the file and the inline image, bytes intact.
    assert_eq!(parsed.attachments.len(), 2, "{:?}", parsed.attachments);
    let file = parsed
        .attachments
        .iter()
        .find(|a| a.filename.as_deref() == Some("Rechnung März.pdf"))
        .expect("pdf attachment");
    assert_eq!(file.content_type, "application/pdf");
    assert!(!file.inline);
    assert_eq!(attachment_bytes(&m.data, file.part_index).unwrap(), pdf);
    let logo = parsed
        .attachments
        .iter()
        .find(|a| a.content_id.as_deref() == Some("logo.1@switchboard.test"))
        .expect("inline image");
    assert!(logo.inline);
    assert_eq!(logo.content_type, "image/png");
    assert_eq!(attachment_bytes(&m.data, logo.part_index).unwrap(), png);

    // Structure: mixed(alternative(text, related(html, image)), pdf).
    let lower = text.to_ascii_lowercase();
    let pos = |s: &str| lower.find(s).unwrap_or_else(|| panic!("no {s} in\n{text}"));
    assert!(pos("multipart/mixed") < pos("multipart/alternative"));
    assert!(pos("multipart/alternative") < pos("text/plain"));
    assert!(pos("text/plain") < pos("multipart/related"));
    assert!(pos("multipart/related") < pos("text/html"));
    assert!(pos("text/html") < pos("image/png"));
    assert!(pos("image/png") < pos("application/pdf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_reply_is_marked() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let mut mail = simple("auto.1@switchboard.test", "someone@customer.test");
    mail.auto_submitted = true;
    sender(settings(&sink, TlsMode::None))
        .send(&mail)
        .await
        .expect("sent");
    let m = &sink.wait_for(1, WAIT)[0];
    assert_eq!(m.header("Auto-Submitted"), ["auto-replied"]);
    assert_eq!(
        m.header("Content-Type"),
        ["text/plain; charset=utf-8"],
        "a text-only reply is a single part"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_plain_over_starttls_with_trusted_ca() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions {
        auth: true,
        starttls: true,
        implicit_tls: false,
    })
    .expect("sink");
    let mut s = settings(&sink, TlsMode::Starttls);
    s.username = Some(SMTP_USER.into());
    s.password = Some(Secret::new(SMTP_PASSWORD));
    s.ca_file = Some(sink.cert_pem_path().to_owned());
    let response = sender(s.clone())
        .send(&simple("tls.1@switchboard.test", "a@customer.test"))
        .await
        .expect("sent over STARTTLS");
    assert!(response.starts_with("250 "), "{response}");
    let received = sink.wait_for(1, WAIT);
    assert_eq!(received.len(), 1);
    assert!(received[0].starttls, "session was encrypted");
    assert!(received[0].authenticated, "session was authenticated");

    // The certificate is checked: without the CA it is not trusted.
    let mut untrusted = s.clone();
    untrusted.ca_file = None;
    let err = sender(untrusted)
        .send(&simple("tls.2@switchboard.test", "a@customer.test"))
        .await
        .expect_err("unknown CA");
    assert!(err.is_transient(), "{err:?}");

    // A wrong password is the server's 5xx answer.
    let mut wrong = s.clone();
    wrong.password = Some(Secret::new("nope"));
    let err = sender(wrong)
        .send(&simple("tls.3@switchboard.test", "a@customer.test"))
        .await
        .expect_err("bad password");
    match &err {
        SendError::Permanent(text) => assert!(text.starts_with("535"), "{text}"),
        other => panic!("expected Permanent, got {other:?}\n{}", sink.log()),
    }
    assert_eq!(sink.messages().len(), 1);
    assert!(!format!("{err} {err:?}").contains(SMTP_PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_auth() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions {
        auth: true,
        starttls: false,
        implicit_tls: true,
    })
    .expect("sink");
    let mut s = settings(&sink, TlsMode::Implicit);
    s.username = Some(SMTP_USER.into());
    s.password = Some(Secret::new(SMTP_PASSWORD));
    s.ca_file = Some(sink.cert_pem_path().to_owned());
    sender(s.clone())
        .send(&simple("smtps.1@switchboard.test", "a@customer.test"))
        .await
        .expect("sent over SMTPS");
    let received = sink.wait_for(1, WAIT);
    assert_eq!(received.len(), 1);
    assert!(received[0].authenticated);
    assert_eq!(
        received[0].header("Message-ID"),
        ["<smtps.1@switchboard.test>"]
    );

    // Plain SMTP against an SMTPS port fails, temporarily.
    let mut plain = s;
    plain.tls = TlsMode::None;
    plain.timeout = Duration::from_secs(1);
    let err = sender(plain)
        .send(&simple("smtps.2@switchboard.test", "a@customer.test"))
        .await
        .expect_err("no greeting in plain text");
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_is_transient_and_recovers() {
    smtp::require_aiosmtpd();
    let mut sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let sender = sender(settings(&sink, TlsMode::None));
    sender
        .send(&simple("down.1@switchboard.test", "a@customer.test"))
        .await
        .expect("sent");
    sink.stop();
    let err = sender
        .send(&simple("down.2@switchboard.test", "a@customer.test"))
        .await
        .expect_err("server down");
    assert!(err.is_transient(), "{err:?}");

    sink.restart().expect("restart");
    // The same sender (and pool) works again; the retry keeps its Message-ID.
    sender
        .send(&simple("down.2@switchboard.test", "a@customer.test"))
        .await
        .expect("sent after restart");
    let received = sink.wait_for(2, WAIT);
    let ids: Vec<_> = received.iter().map(|m| m.header("Message-ID")).collect();
    assert_eq!(
        ids,
        [["<down.1@switchboard.test>"], ["<down.2@switchboard.test>"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_recipient_is_permanent_with_server_text() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let sender = sender(settings(&sink, TlsMode::None));
    let err = sender
        .send(&simple("rej.1@switchboard.test", "reject-me@customer.test"))
        .await
        .expect_err("550");
    assert_eq!(
        err,
        SendError::Permanent("recipient reject-me@customer.test: 550 5.1.1 no such user".into())
    );
    assert!(!err.is_transient());

    // One bad recipient among good ones: nothing is sent, and the error
    // names the one refused.
    let mut mail = simple("rej.2@switchboard.test", "good@customer.test");
    mail.cc = vec![addr(None, "reject.cc@customer.test")];
    let err = sender.send(&mail).await.expect_err("550");
    assert_eq!(
        err,
        SendError::Permanent("recipient reject.cc@customer.test: 550 5.1.1 no such user".into())
    );

    // The pooled connection was dropped cleanly; the next send works.
    sender
        .send(&simple("rej.3@switchboard.test", "good@customer.test"))
        .await
        .expect("sent");
    let received = sink.wait_for(1, WAIT);
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].header("Message-ID"),
        ["<rej.3@switchboard.test>"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tempfail_is_transient() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let err = sender(settings(&sink, TlsMode::None))
        .send(&simple("temp.1@switchboard.test", "tempfail@customer.test"))
        .await
        .expect_err("451");
    assert_eq!(
        err,
        SendError::Transient("recipient tempfail@customer.test: 451 4.3.0 try later".into())
    );
    assert!(err.is_transient());
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_address_is_never_sent() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let err = sender(settings(&sink, TlsMode::None))
        .send(&simple("inv.1@switchboard.test", "not an address"))
        .await
        .expect_err("invalid");
    assert!(matches!(err, SendError::Invalid(_)), "{err:?}");
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_times_out_as_transient() {
    // Accepts connections (kernel backlog) but never greets.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = SmtpSettings::new("127.0.0.1", port);
    s.tls = TlsMode::None;
    s.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = sender(s)
        .send(&simple("hang.1@switchboard.test", "a@customer.test"))
        .await
        .expect_err("timeout");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_transport_writes_parseable_eml() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("outbox");
    let sender = Sender::new(Transport::File(out.clone())).unwrap();
    let mut mail = simple("file.1@switchboard.test", "a@customer.test");
    mail.subject = "Grüße".into();
    let response = sender.send(&mail).await.expect("written");
    assert!(response.starts_with("written "), "{response}");
    // A retry overwrites the same file.
    sender.send(&mail).await.expect("written again");
    let files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        files[0].file_name().unwrap().to_str().unwrap(),
        "file.1@switchboard.test.eml"
    );
    let raw = std::fs::read(&files[0]).unwrap();
    let parsed = parse(&raw);
    assert_eq!(
        parsed.message_id.as_deref(),
        Some("file.1@switchboard.test")
    );
    assert_eq!(parsed.subject.as_deref(), Some("Grüße"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_reuses_connections() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let mut s = settings(&sink, TlsMode::None);
    s.pool_max = 2;
    let sender = sender(s);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let sender = sender.clone();
        tasks.spawn(async move {
            sender
                .send(&simple(
                    &format!("pool.{i}@switchboard.test"),
                    "a@customer.test",
                ))
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().expect("sent");
    }
    let received = sink.wait_for(20, WAIT);
    assert_eq!(received.len(), 20);
    let ids: HashSet<String> = received
        .iter()
        .map(|m| m.header("Message-ID").concat())
        .collect();
    assert_eq!(ids.len(), 20, "each message exactly once");
    let peers: HashSet<&str> = received.iter().map(|m| m.peer.as_str()).collect();
    eprintln!("20 messages over {} connections", peers.len());
    assert!(
        peers.len() <= 10,
        "connections were reused: {}",
        peers.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_replaced_without_an_error() {
    smtp::require_aiosmtpd();
    let mut sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let sender = sender(settings(&sink, TlsMode::None));
    sender
        .send(&simple("stale.1@switchboard.test", "a@customer.test"))
        .await
        .expect("sent");
    // The server goes away and comes back: the pooled connection is dead.
    sink.restart().expect("restart");
    sender
        .send(&simple("stale.2@switchboard.test", "a@customer.test"))
        .await
        .expect("sent on a new connection at the first attempt");
    let received = sink.wait_for(2, WAIT);
    assert_eq!(received.len(), 2);
    assert_ne!(received[0].peer, received[1].peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let mut s = settings(&sink, TlsMode::None);
    // Long enough that two sends one after the other share a connection
    // on a slow machine too.
    s.idle_timeout = Duration::from_secs(2);
    let sender = sender(s);
    for i in 0..2 {
        sender
            .send(&simple(
                &format!("idle.{i}@switchboard.test"),
                "a@customer.test",
            ))
            .await
            .expect("sent");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    sender
        .send(&simple("idle.2@switchboard.test", "a@customer.test"))
        .await
        .expect("sent");
    let received = sink.wait_for(3, WAIT);
    assert_eq!(received.len(), 3);
    assert_eq!(received[0].peer, received[1].peer, "reused while fresh");
    assert_ne!(
        received[1].peer, received[2].peer,
        "a new connection after the idle timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_past_its_deadline_never_leaves_its_connection_in_the_pool() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let mut s = settings(&sink, TlsMode::None);
    s.timeout = Duration::from_secs(1);
    s.pool_max = 1;
    let sender = sender(s);
    sender
        .send(&simple("late.0@switchboard.test", "a@customer.test"))
        .await
        .expect("sent");
    // The server stores the message but holds its 250 past the deadline:
    // 1 s × (3 + 1 for each MiB begun).
    sink.set_data_delay(5500);
    let started = Instant::now();
    let err = sender
        .send(&simple("late.1@switchboard.test", "a@customer.test"))
        .await
        .expect_err("deadline");
    assert!(err.is_transient(), "{err:?}");
    assert!(err.message().contains("within 4 s"), "{err:?}");
    // Not the server's 5.5 s: the deadline ended it (the message above
    // says which deadline).
    assert!(
        started.elapsed() < Duration::from_millis(5400),
        "{:?}",
        started.elapsed()
    );
    sink.set_data_delay(0);
    // The late 250 must not be read as the answer to the next message.
    sender
        .send(&simple("late.2@switchboard.test", "a@customer.test"))
        .await
        .expect("sent");
    let received = sink.wait_for(3, WAIT);
    let ids: Vec<_> = received
        .iter()
        .map(|m| m.header("Message-ID").concat())
        .collect();
    assert_eq!(
        ids,
        [
            "<late.0@switchboard.test>",
            "<late.1@switchboard.test>",
            "<late.2@switchboard.test>"
        ]
    );
    assert_eq!(received[0].peer, received[1].peer, "pooled");
    assert_ne!(
        received[1].peer, received[2].peer,
        "the abandoned connection was dropped"
    );
}

// ---------------------------------------------------------------------------
// DKIM

const DKIM_DOMAIN: &str = "switchboard.test";
const DKIM_SELECTOR: &str = "sb2025";

fn dkim_signer(key: &DkimTestKey, algorithm: DkimAlgorithm) -> DkimSigner {
    DkimSigner::new(DKIM_DOMAIN, DKIM_SELECTOR, algorithm, &key.private_pem).expect("DKIM signer")
}

/// A reply with everything a signer can trip over: encoded and folded
/// headers, threading, HTML, an inline image and an attachment.
fn threaded_reply(message_id: &str) -> OutgoingMail {
    OutgoingMail {
        from: addr(
            Some("Jörg Müller · Kundendienst"),
            "support@switchboard.test",
        ),
        to: vec![addr(Some("Anna Schäfer"), "anna@customer.test")],
        cc: vec![addr(None, "boss@customer.test")],
        bcc: vec![addr(None, "audit@switchboard.test")],
        reply_to: Some(addr(None, "replies@switchboard.test")),
        subject: "Re: Größenänderung für Ihre Bestellung — bitte prüfen Sie die Angaben in der Anlage sorgfältig".into(),
        message_id: message_id.into(),
        in_reply_to: Some("CAF=orig+1@mail.customer.test".into()),
        references: (1..=6)
            .map(|i| format!("thread.{i}.a-rather-long-message-id@mail.customer.test"))
            .chain(["CAF=orig+1@mail.customer.test".to_owned()])
            .collect(),
        date: date(),
        text: "Hello Anna,\n\nyour order 4711 is on its way.  Two spaces, a tab\there.\n\n-- \nSupport\n"
            .into(),
        html: Some(
            "<p>Hello Anna,</p><p>your order <b>4711</b> is on its way.</p><img src=\"cid:logo.1@switchboard.test\">".into(),
        ),
        attachments: vec![
            OutgoingAttachment {
                filename: "Rechnung März.pdf".into(),
                content_type: "application/pdf".into(),
                bytes: b"%PDF-1.4\n\x00\x01binary\xff\xfe tail\n".to_vec(),
                content_id: None,
            },
            OutgoingAttachment {
                filename: "logo.png".into(),
                content_type: "image/png".into(),
                bytes: (0u8..=255).cycle().take(3000).collect(),
                content_id: Some("logo.1@switchboard.test".into()),
            },
        ],
        auto_submitted: false,
    }
}

/// `data` with the first `from` replaced by `to` (which must be there).
fn tamper(data: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(data.to_vec()).expect("7-bit message");
    assert!(text.contains(from), "{from:?} is not in the message");
    text.replacen(from, to, 1).into_bytes()
}

/// The message without its DKIM-Signature field (and its folded lines).
fn without_dkim_signature(data: &[u8]) -> String {
    let text = String::from_utf8(data.to_vec()).expect("7-bit message");
    let mut out = String::new();
    let mut skipping = false;
    for line in text.split_inclusive("\r\n") {
        if line.to_ascii_lowercase().starts_with("dkim-signature:") {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with([' ', '\t']) {
            continue;
        }
        skipping = false;
        out.push_str(line);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_rsa_signature_verifies_at_the_receiver() {
    smtp::require_aiosmtpd();
    smtp::require_dkim();
    let key = dkim_test_key(DkimKeyKind::RsaPkcs8 { bits: 2048 }).expect("RSA key");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let sender =
        sender(settings(&sink, TlsMode::None)).with_dkim(dkim_signer(&key, DkimAlgorithm::Rsa));
    let before = chrono::Utc::now().timestamp();
    sender
        .send(&threaded_reply("dkim.1@switchboard.test"))
        .await
        .expect("sent");
    let received = sink.wait_for(1, WAIT);
    assert_eq!(received.len(), 1);
    let m = &received[0];

    let signatures = m.header("DKIM-Signature");
    assert_eq!(signatures.len(), 1, "{}", m.header_block());
    let tags = dkim_tags(&signatures[0]);
    assert_eq!(tags["v"], "1");
    assert_eq!(tags["a"], "rsa-sha256");
    assert_eq!(tags["c"], "relaxed/relaxed");
    assert_eq!(tags["d"], DKIM_DOMAIN);
    assert_eq!(tags["s"], DKIM_SELECTOR);
    let t: i64 = tags["t"].parse().expect("t= is a timestamp");
    assert!(t >= before && t <= chrono::Utc::now().timestamp(), "t={t}");
    let signed: Vec<String> = tags["h"]
        .split(':')
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for h in [
        "from",
        "to",
        "cc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
    ] {
        assert!(
            signed.iter().any(|s| s == h),
            "{h} is not signed: {signed:?}"
        );
    }
    // Bcc stays out of the headers, signed or not.
    assert!(!m.text().contains("audit@switchboard.test"));

    let verdict = dkim_verify(&m.data, DKIM_SELECTOR, DKIM_DOMAIN, &key.txt);
    assert!(
        verdict.ok,
        "the receiver's verifier fails:\n{}\n{}",
        verdict.log,
        m.text()
    );
    assert_eq!(
        verdict.asked,
        [format!("{DKIM_SELECTOR}._domainkey.{DKIM_DOMAIN}.")]
    );

    // Any change to the body or a signed header breaks the signature.
    for (what, from, to) in [
        ("body", "order 4711", "order 4712"),
        ("HTML body", "<b>4711</b>", "<b>4712</b>"),
        ("From", "<support@switchboard.test>", "<support@evil.test>"),
        ("To", "<anna@customer.test>", "<eve@customer.test>"),
        ("Subject", "\r\nSubject: ", "\r\nSubject: Fw: "),
        ("Message-ID", "\r\nMessage-ID: <", "\r\nMessage-ID: <x"),
        ("In-Reply-To", "\r\nIn-Reply-To: <", "\r\nIn-Reply-To: <x"),
        ("References", "thread.3.", "thread.9."),
        ("Date", "\r\nDate: ", "\r\nDate:  Sat,"),
    ] {
        let tampered = tamper(&m.data, from, to);
        let verdict = dkim_verify(&tampered, DKIM_SELECTOR, DKIM_DOMAIN, &key.txt);
        assert!(
            !verdict.ok,
            "{what} was changed and the signature still verifies"
        );
    }
    // Whitespace changes that relaxed canonicalization allows still verify
    // (what relays do to messages).
    let refolded = tamper(&m.data, "\r\nSubject: ", "\r\nSubject:   ");
    let verdict = dkim_verify(&refolded, DKIM_SELECTOR, DKIM_DOMAIN, &key.txt);
    assert!(verdict.ok, "{}", verdict.log);

    // Another key in DNS: the signature does not verify.
    let other = dkim_test_key(DkimKeyKind::RsaPkcs8 { bits: 1024 }).expect("RSA key");
    assert!(!dkim_verify(&m.data, DKIM_SELECTOR, DKIM_DOMAIN, &other.txt).ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_pkcs1_rsa_and_ed25519_sign_over_starttls_and_into_eml_files() {
    smtp::require_aiosmtpd();
    smtp::require_dkim();
    // PKCS#1 RSA over STARTTLS with AUTH.
    let rsa = dkim_test_key(DkimKeyKind::RsaPkcs1 { bits: 2048 }).expect("RSA key");
    assert!(rsa.private_pem.contains("BEGIN RSA PRIVATE KEY"));
    let sink = SmtpSink::start(SmtpSinkOptions {
        auth: true,
        starttls: true,
        implicit_tls: false,
    })
    .expect("sink");
    let mut s = settings(&sink, TlsMode::Starttls);
    s.username = Some(SMTP_USER.into());
    s.password = Some(Secret::new(SMTP_PASSWORD));
    s.ca_file = Some(sink.cert_pem_path().to_owned());
    sender(s)
        .with_dkim(dkim_signer(&rsa, DkimAlgorithm::Rsa))
        .send(&threaded_reply("dkim.2@switchboard.test"))
        .await
        .expect("sent");
    let m = &sink.wait_for(1, WAIT)[0];
    assert!(m.starttls && m.authenticated);
    let verdict = dkim_verify(&m.data, DKIM_SELECTOR, DKIM_DOMAIN, &rsa.txt);
    assert!(verdict.ok, "{}", verdict.log);

    // Ed25519 (RFC 8463) through the file transport: the demo's .eml is signed too.
    let ed = dkim_test_key(DkimKeyKind::Ed25519).expect("Ed25519 key");
    let dir = tempfile::tempdir().unwrap();
    let files = Sender::new(Transport::File(dir.path().to_owned()))
        .unwrap()
        .with_dkim(dkim_signer(&ed, DkimAlgorithm::Ed25519));
    files
        .send(&threaded_reply("dkim.3@switchboard.test"))
        .await
        .expect("written");
    let eml = std::fs::read(dir.path().join("dkim.3@switchboard.test.eml")).unwrap();
    let text = String::from_utf8(eml.clone()).unwrap();
    assert!(text.contains("a=ed25519-sha256;"), "{text}");
    let verdict = dkim_verify(&eml, DKIM_SELECTOR, DKIM_DOMAIN, &ed.txt);
    assert!(verdict.ok, "{}", verdict.log);
    let tampered = tamper(&eml, "order 4711", "order 4712");
    assert!(!dkim_verify(&tampered, DKIM_SELECTOR, DKIM_DOMAIN, &ed.txt).ok);
    // The same key as lettre's own form (the 32-byte seed in base64) signs alike.
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            ed.private_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let seed = base64::engine::general_purpose::STANDARD.encode(&der[der.len() - 32..]);
    let seeded = DkimSigner::new(DKIM_DOMAIN, DKIM_SELECTOR, DkimAlgorithm::Ed25519, &seed)
        .expect("a base64 seed");
    let prepared = Sender::new(Transport::File(dir.path().to_owned()))
        .unwrap()
        .with_dkim(seeded)
        .prepare(&threaded_reply("dkim.5@switchboard.test"))
        .unwrap();
    let verdict = dkim_verify(prepared.bytes(), DKIM_SELECTOR, DKIM_DOMAIN, &ed.txt);
    assert!(verdict.ok, "{}", verdict.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_resend_is_the_same_message_but_for_the_signature_time() {
    smtp::require_dkim();
    let key = dkim_test_key(DkimKeyKind::Ed25519).expect("key");
    let sender = Sender::new(Transport::File(tempfile::tempdir().unwrap().keep()))
        .unwrap()
        .with_dkim(dkim_signer(&key, DkimAlgorithm::Ed25519));
    let mail = threaded_reply("dkim.4@switchboard.test");
    let first = sender.prepare(&mail).expect("prepared");
    // t= has one-second resolution: a retry a moment later gets another one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = sender.prepare(&mail).expect("prepared again");
    assert_eq!(first.message_id(), second.message_id());
    assert_ne!(first.bytes(), second.bytes(), "t= (and so b=) differ");
    assert_eq!(
        without_dkim_signature(first.bytes()),
        without_dkim_signature(second.bytes()),
        "everything but the DKIM-Signature field is the same"
    );
    for p in [&first, &second] {
        let verdict = dkim_verify(p.bytes(), DKIM_SELECTOR, DKIM_DOMAIN, &key.txt);
        assert!(verdict.ok, "{}", verdict.log);
    }
    // Without DKIM a retry is byte for byte the same.
    let plain = Sender::new(Transport::File(std::env::temp_dir())).unwrap();
    assert_eq!(
        plain.prepare(&mail).unwrap().bytes(),
        plain.prepare(&mail).unwrap().bytes()
    );
}

#[test]
fn dkim_bad_keys_and_names_are_refused_clearly() {
    let rsa = dkim_test_key(DkimKeyKind::RsaPkcs8 { bits: 1024 }).expect("key");
    let ed = dkim_test_key(DkimKeyKind::Ed25519).expect("key");
    let weak = dkim_test_key(DkimKeyKind::RsaPkcs8 { bits: 512 }).expect("key");
    let encrypted = dkim_test_key(DkimKeyKind::RsaEncrypted).expect("key");
    let new = |domain: &str, selector: &str, algorithm, pem: &str| {
        DkimSigner::new(domain, selector, algorithm, pem).expect_err("refused")
    };
    use DkimAlgorithm::{Ed25519, Rsa};
    assert!(DkimSigner::new(DKIM_DOMAIN, DKIM_SELECTOR, Rsa, &rsa.private_pem).is_ok());
    assert_eq!(
        new(DKIM_DOMAIN, DKIM_SELECTOR, Rsa, &weak.private_pem),
        DkimError::WeakRsa(512)
    );
    assert_eq!(
        new(DKIM_DOMAIN, DKIM_SELECTOR, Rsa, &encrypted.private_pem),
        DkimError::Encrypted
    );
    assert_eq!(
        new(DKIM_DOMAIN, DKIM_SELECTOR, Rsa, &ed.private_pem),
        DkimError::Mismatch {
            found: Ed25519,
            configured: Rsa
        }
    );
    assert_eq!(
        new(DKIM_DOMAIN, DKIM_SELECTOR, Ed25519, &rsa.private_pem),
        DkimError::Mismatch {
            found: Rsa,
            configured: Ed25519
        }
    );
    // Names that would smuggle tags into the DKIM-Signature field.
    assert!(matches!(
        new("example.com; s=evil", DKIM_SELECTOR, Rsa, &rsa.private_pem),
        DkimError::Domain(_)
    ));
    assert!(matches!(
        new("localhost", DKIM_SELECTOR, Rsa, &rsa.private_pem),
        DkimError::Domain(_)
    ));
    assert!(matches!(
        new(DKIM_DOMAIN, "a=b", Rsa, &rsa.private_pem),
        DkimError::Selector(_)
    ));
    let certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    for garbage in [
        "",
        "hello",
        certificate,
        "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
        "-----BEGIN RSA PRIVATE KEY-----\n!!!\n-----END RSA PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    ] {
        let e = new(DKIM_DOMAIN, DKIM_SELECTOR, Rsa, garbage);
        assert!(matches!(e, DkimError::Format(_)), "{garbage:?}: {e:?}");
    }
    // A PKCS#8 RSA key whose inner key is damaged.
    let mut damaged = rsa.private_pem.clone();
    let mid = damaged.len() / 2;
    damaged.replace_range(mid..mid + 8, "AAAAAAAA");
    let e = new(DKIM_DOMAIN, DKIM_SELECTOR, Rsa, &damaged);
    assert!(
        matches!(e, DkimError::Format(_) | DkimError::Key(_)),
        "{e:?}"
    );
    // Messages never quote the key.
    for e in [
        new(DKIM_DOMAIN, DKIM_SELECTOR, Rsa, &damaged),
        new(DKIM_DOMAIN, DKIM_SELECTOR, Rsa, &ed.private_pem),
    ] {
        let shown = format!("{e} {e:?}");
        let body_line = damaged.lines().nth(3).unwrap();
        assert!(!shown.contains(body_line), "{shown}");
    }
}

#[test]
fn dkim_configuration_from_toml_and_environment() {
    let ed = dkim_test_key(DkimKeyKind::Ed25519).expect("key");
    let rsa = dkim_test_key(DkimKeyKind::RsaPkcs1 { bits: 1024 }).expect("key");
    let load = |text: &str, env: &[(&str, &str)]| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_parts_checked(
            text,
            std::path::Path::new("test.toml"),
            &env,
            switchboard::adapters::check,
        )
    };
    let problems = |r: Result<Config, ConfigError>| match r {
        Err(ConfigError::Invalid(p)) => p.iter().map(ToString::to_string).collect::<Vec<_>>(),
        Err(other) => vec![other.to_string()],
        Ok(_) => vec![],
    };
    let base = "[smtp]\nhost = \"127.0.0.1\"\n";

    // Everything from the environment.
    let key_file = ed.key_path.display().to_string();
    let c = load(
        base,
        &[
            ("SWITCHBOARD_SMTP_DKIM_DOMAIN", "mail.switchboard.test"),
            ("SWITCHBOARD_SMTP_DKIM_SELECTOR", "ed1"),
            ("SWITCHBOARD_SMTP_DKIM_ALGORITHM", "ed25519"),
            ("SWITCHBOARD_SMTP_DKIM_KEY_FILE", &key_file),
        ],
    )
    .expect("valid");
    let signer = switchboard::adapters::smtp::dkim_signer(c.smtp.as_ref().unwrap())
        .unwrap()
        .expect("signing on");
    assert_eq!(signer.domain(), "mail.switchboard.test");
    assert_eq!(signer.selector(), "ed1");
    assert_eq!(signer.algorithm(), DkimAlgorithm::Ed25519);
    assert!(!format!("{c:?} {signer:?}").contains(ed.private_pem.lines().nth(1).unwrap()));

    // From the file, the key in an environment variable; rsa is the default.
    let text = format!(
        "{base}dkim_domain = \"switchboard.test\"\ndkim_selector = \"s1\"\ndkim_key_env = \"DKIM_PEM\"\n"
    );
    let c = load(&text, &[("DKIM_PEM", &rsa.private_pem)]).expect("valid");
    assert_eq!(
        switchboard::adapters::smtp::dkim_signer(c.smtp.as_ref().unwrap())
            .unwrap()
            .unwrap()
            .algorithm(),
        DkimAlgorithm::Rsa
    );

    // Mistakes, each named with its key.
    let with_file = |path: &str| {
        format!(
            "{base}dkim_domain = \"switchboard.test\"\ndkim_selector = \"s1\"\ndkim_key_file = \"{path}\"\n"
        )
    };
    let p = problems(load(&with_file("/nonexistent/dkim.pem"), &[]));
    assert!(
        p.len() == 1 && p[0].starts_with("smtp.dkim_key_file: cannot read /nonexistent/dkim.pem"),
        "{p:?}"
    );
    let p = problems(load(&with_file(&key_file), &[]));
    assert_eq!(
        p,
        ["smtp.dkim_algorithm: the key is an ed25519 key but dkim_algorithm is rsa"]
    );
    let junk = ed.key_path.with_file_name("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    let p = problems(load(&with_file(&junk.display().to_string()), &[]));
    assert!(
        p.len() == 1 && p[0].starts_with("smtp.dkim_key_file: not a private key"),
        "{p:?}"
    );
    let p = problems(load(
        &format!("{base}dkim_key_file = \"{key_file}\"\ndkim_algorithm = \"ed25519\"\n"),
        &[],
    ));
    assert_eq!(
        p,
        [
            "smtp.dkim_domain: required when a DKIM key is set",
            "smtp.dkim_selector: required when a DKIM key is set"
        ]
    );
    let p = problems(load(
        &format!("{base}dkim_domain = \"switchboard.test\"\n"),
        &[],
    ));
    assert!(
        p.len() == 1
            && p[0].starts_with("smtp.dkim_key_file: dkim_domain/dkim_selector are set but no key"),
        "{p:?}"
    );
    let p = problems(load(&format!("{base}dkim_algorithm = \"dsa\"\n"), &[]));
    assert!(p.len() == 1 && p[0].contains("dsa"), "{p:?}");
}
