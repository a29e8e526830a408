//! Sending replies over SMTP against a real server (aiosmtpd on loopback,
//! `tests/support/smtp_sink.py`): what the server received is checked byte
//! for byte.

#[path = "support/smtp.rs"]
mod smtp;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use smtp::{SMTP_PASSWORD, SMTP_USER, SmtpSink, SmtpSinkOptions};
use switchboard::config::{Secret, TlsMode};
use switchboard::mail::send::{
    OutgoingAttachment, OutgoingMail, SendError, Sender, SmtpSettings, Transport,
};
use switchboard::mail::{Address, ParseLimits, attachment_bytes, parse_message};

const WAIT: Duration = Duration::from_secs(10);

macro_rules! require_sink {
    () => {
        if !smtp::available() {
            eprintln!("skipped: /usr/bin/python3 cannot import aiosmtpd (apt-get install python3-aiosmtpd)");
            return;
        }
    };
}

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
    require_sink!();
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
    let response = sender(settings(&sink, TlsMode::None))
        .send(&mail)
        .await
        .expect("sent");
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
    require_sink!();
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
    require_sink!();
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
    require_sink!();
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
    require_sink!();
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
    require_sink!();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let sender = sender(settings(&sink, TlsMode::None));
    let err = sender
        .send(&simple("rej.1@switchboard.test", "reject-me@customer.test"))
        .await
        .expect_err("550");
    assert_eq!(err, SendError::Permanent("550 5.1.1 no such user".into()));
    assert!(!err.is_transient());

    // One bad recipient among good ones: nothing is sent.
    let mut mail = simple("rej.2@switchboard.test", "good@customer.test");
    mail.cc = vec![addr(None, "reject.cc@customer.test")];
    let err = sender.send(&mail).await.expect_err("550");
    assert!(matches!(err, SendError::Permanent(_)), "{err:?}");

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
    require_sink!();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("sink");
    let err = sender(settings(&sink, TlsMode::None))
        .send(&simple("temp.1@switchboard.test", "tempfail@customer.test"))
        .await
        .expect_err("451");
    assert_eq!(err, SendError::Transient("451 4.3.0 try later".into()));
    assert!(err.is_transient());
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_address_is_never_sent() {
    require_sink!();
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
    require_sink!();
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
