//! The IMAP adapter (`switchboard::adapters::imap`) against a real Dovecot:
//! login (plain, STARTTLS, implicit TLS), select, search, byte-exact fetch,
//! flags, moves (MOVE and the COPY/EXPUNGE fallback), IDLE push, and what
//! happens when the server goes away. Each test has its own Dovecot.

#[path = "support/servers.rs"]
mod servers;

use servers::{Dovecot, DovecotOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::adapters::imap::{IdleOutcome, ImapAuth, ImapError, ImapSession, ImapSettings};
use switchboard::config::{Secret, TlsMode};
use tokio::sync::watch;

const USER: &str = "support@example.com";
const TIMEOUT: Duration = Duration::from_secs(5);

fn dovecot(tls: bool) -> Dovecot {
    servers::require_dovecot();
    Dovecot::start(DovecotOptions { tls }).expect("start dovecot")
}

fn settings(d: &Dovecot, tls: TlsMode) -> ImapSettings {
    let port = match tls {
        TlsMode::Implicit => d.imaps_port.expect("imaps port"),
        _ => d.imap_port,
    };
    ImapSettings {
        host: d.host().to_string(),
        port,
        tls,
        username: USER.to_string(),
        auth: ImapAuth::Password(Secret::new(d.password())),
        ca_file: d.tls().then(|| d.cert_pem_path()),
        timeout: TIMEOUT,
    }
}

async fn connect(d: &Dovecot) -> ImapSession {
    ImapSession::connect(&settings(d, TlsMode::None))
        .await
        .expect("connect")
}

/// Three messages with what tends to break byte-exactness: CRLF, a lone
/// ".", a line starting with a dot, 8-bit bytes, trailing spaces, a long
/// line, and no final line break.
fn messages() -> Vec<Vec<u8>> {
    let mut third = b"From: c@example.org\r\nSubject: long\r\n\r\n".to_vec();
    third.extend(std::iter::repeat_n(b'x', 5000));
    third.extend_from_slice(b"\r\nno final line break");
    vec![
        b"From: Customer <a@example.org>\r\nTo: support@example.com\r\nSubject: one\r\nMessage-ID: <one@example.org>\r\n\r\nHello.\r\n.\r\n..dots\r\ntrailing   \r\n"
            .to_vec(),
        b"From: b@example.org\r\nSubject: =?utf-8?q?zw=C3=B6lf?=\r\nContent-Type: text/plain; charset=latin1\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xfc\xdfe \xe9t\xe9\r\n\tTab\r\n"
            .to_vec(),
        third,
    ]
}

fn lmtp_mail(subject: &str) -> Vec<u8> {
    format!(
        "From: customer@example.org\r\nTo: {USER}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\nPlease help.\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn plain_login_capabilities_and_select() {
    let d = dovecot(false);
    let mut s = connect(&d).await;
    assert!(s.supports_idle() && s.supports_move() && s.supports_uidplus());

    let st = s.select("INBOX").await.expect("select INBOX");
    assert!(st.uid_validity > 0);
    assert_eq!(st.exists, 0);
    assert_eq!(st.uid_next, Some(1));

    match s.select("Nope").await {
        Err(ImapError::NoSuchFolder(f)) => assert_eq!(f, "Nope"),
        other => panic!("expected NoSuchFolder, got {other:?}"),
    }
    // A refused SELECT leaves the session usable.
    s.noop().await.expect("noop after NO");
    let again = s.select("INBOX").await.expect("select again");
    assert_eq!(again.uid_validity, st.uid_validity);
    s.logout().await;
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_the_test_certificate() {
    let d = dovecot(true);
    d.append(USER, "INBOX", &messages()[0]);

    for mode in [TlsMode::Starttls, TlsMode::Implicit] {
        let mut s = ImapSession::connect(&settings(&d, mode))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let st = s.select("INBOX").await.expect("select");
        assert_eq!(st.exists, 1, "{mode:?}");
        let got = s.fetch(&[1]).await.expect("fetch over TLS");
        assert_eq!(got[0].raw, messages()[0], "{mode:?}");
        s.logout().await;
    }

    // Without the certificate as a trust anchor, TLS must fail (and say so).
    for mode in [TlsMode::Starttls, TlsMode::Implicit] {
        let mut untrusted = settings(&d, mode);
        untrusted.ca_file = None;
        match ImapSession::connect(&untrusted).await {
            Err(ImapError::Tls(msg)) => {
                assert!(msg.to_lowercase().contains("certificate"), "{msg}")
            }
            other => panic!("{mode:?} with an untrusted certificate: {other:?}"),
        }
    }

    // A CA file that is not PEM is a TLS configuration error.
    let mut bad_ca = settings(&d, TlsMode::Implicit);
    let junk = d.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    bad_ca.ca_file = Some(junk);
    assert!(matches!(
        ImapSession::connect(&bad_ca).await,
        Err(ImapError::Tls(_))
    ));
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_quickly_and_never_quoted() {
    let d = dovecot(false);
    let secret = "wrong-horse-battery-staple";
    let mut cfg = settings(&d, TlsMode::None);
    cfg.auth = ImapAuth::Password(Secret::new(secret));
    // Dovecot answers a refused login after 2 s, from auth processes a new
    // server starts then: room for a slow machine, so the answer is not
    // taken for a timeout.
    cfg.timeout = Duration::from_secs(20);
    let t0 = Instant::now();
    let err = ImapSession::connect(&cfg)
        .await
        .expect_err("wrong password");
    eprintln!("wrong password: {err} (after {:?})", t0.elapsed());
    assert!(err.is_auth(), "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(secret), "{shown}");

    // XOAUTH2 is not enabled in the test Dovecot: refused as an auth error.
    cfg.auth = ImapAuth::XOAuth2(Secret::new(secret));
    let err = ImapSession::connect(&cfg).await.expect_err("xoauth2");
    assert!(err.is_auth(), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(secret));

    // Nothing listening: a connect error, not a hang.
    let mut closed = settings(&d, TlsMode::None);
    closed.port = servers::free_port();
    assert!(matches!(
        ImapSession::connect(&closed).await,
        Err(ImapError::Connect(_))
    ));
}

#[tokio::test]
async fn search_and_fetch_are_byte_exact() {
    let d = dovecot(false);
    let msgs = messages();
    let uids = d.append_many(USER, "INBOX", &msgs);
    assert_eq!(uids, vec![1, 2, 3]);

    let mut s = connect(&d).await;
    let st = s.select("INBOX").await.unwrap();
    assert_eq!((st.exists, st.uid_next), (3, Some(4)));

    assert_eq!(s.uids_after(0).await.unwrap(), uids);
    assert_eq!(s.uids_after(1).await.unwrap(), vec![2, 3]);
    // `4:*` matches the last message (UID 3) on the server: filtered out.
    assert_eq!(s.uids_after(3).await.unwrap(), Vec::<u32>::new());
    assert_eq!(s.uids_after(1000).await.unwrap(), Vec::<u32>::new());
    assert_eq!(s.uids_after(u32::MAX).await.unwrap(), Vec::<u32>::new());

    let sizes = s.message_sizes(&[3, 1, 2, 99]).await.unwrap();
    let expected: Vec<(u32, u32)> = uids
        .iter()
        .zip(&msgs)
        .map(|(u, m)| (*u, m.len() as u32))
        .collect();
    assert_eq!(sizes, expected);

    // Asked out of order, with a UID that does not exist.
    let got = s.fetch(&[3, 99, 1, 2]).await.unwrap();
    assert_eq!(got.iter().map(|m| m.uid).collect::<Vec<_>>(), uids);
    for (m, want) in got.iter().zip(&msgs) {
        assert_eq!(&m.raw, want, "UID {} differs", m.uid);
    }
    assert!(s.fetch(&[]).await.unwrap().is_empty());
    assert!(s.fetch(&[42]).await.unwrap().is_empty());
    // BODY.PEEK[]: fetching does not mark as read.
    assert!(d.flags(USER, "INBOX", 1).is_empty());
    s.logout().await;
}

#[tokio::test]
async fn mark_seen_sets_the_flag_and_is_idempotent() {
    let d = dovecot(false);
    d.append_many(USER, "INBOX", &messages());
    let mut s = connect(&d).await;
    s.select("INBOX").await.unwrap();
    s.mark_seen(&[1, 3]).await.unwrap();
    s.mark_seen(&[1, 3, 77]).await.unwrap();

    let t = d.imap_command(USER, &["EXAMINE INBOX", "UID FETCH 1:* (FLAGS)"]);
    let seen: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("FETCH") && l.contains("\\Seen"))
        .collect();
    assert_eq!(seen.len(), 2, "{t}");
    assert!(d.flags(USER, "INBOX", 1).contains(&"\\Seen".to_string()));
    assert!(!d.flags(USER, "INBOX", 2).contains(&"\\Seen".to_string()));
    assert!(d.flags(USER, "INBOX", 3).contains(&"\\Seen".to_string()));
    s.logout().await;
}

#[tokio::test]
async fn move_to_creates_the_folder_and_is_idempotent() {
    let d = dovecot(false);
    let msgs = messages();
    d.append_many(USER, "INBOX", &msgs);
    let mut s = connect(&d).await;
    s.select("INBOX").await.unwrap();
    assert!(!d.folders(USER).contains(&"Processed".to_string()));

    s.move_to(&[1, 3], "Processed").await.unwrap();
    assert_eq!(d.uids(USER, "INBOX"), vec![2]);
    assert!(d.folders(USER).contains(&"Processed".to_string()));
    let moved = d.uids(USER, "Processed");
    assert_eq!(moved.len(), 2);
    assert_eq!(d.fetch(USER, "Processed", moved[0]), msgs[0]);
    assert_eq!(d.fetch(USER, "Processed", moved[1]), msgs[2]);

    // Again (as after a crash before the cursor was saved): nothing changes.
    s.move_to(&[1, 3], "Processed").await.unwrap();
    assert_eq!(d.uids(USER, "INBOX"), vec![2]);
    assert_eq!(d.uids(USER, "Processed").len(), 2);
    assert_eq!(s.uids_after(0).await.unwrap(), vec![2]);

    // A non-ASCII folder name goes out in modified UTF-7.
    // (Dovecot's Maildir++ hierarchy separator is ".")
    s.move_to(&[2], "Erledigt.Grüße").await.unwrap();
    assert!(d.uids(USER, "INBOX").is_empty());
    assert!(
        d.folders(USER).iter().any(|f| f.contains("Gr&APwA3w-e")),
        "{:?}",
        d.folders(USER)
    );
    s.logout().await;
}

#[tokio::test]
async fn move_falls_back_to_copy_and_expunge() {
    let d = dovecot(false);
    let msgs = messages();
    d.append_many(USER, "INBOX", &msgs);
    let mut s = connect(&d).await;
    s.disable_move_for_tests();
    assert!(!s.supports_move());
    s.select("INBOX").await.unwrap();
    s.move_to(&[2], "Archive").await.unwrap();
    s.move_to(&[2], "Archive").await.unwrap();
    assert_eq!(d.uids(USER, "INBOX"), vec![1, 3]);
    let archived = d.uids(USER, "Archive");
    assert_eq!(archived.len(), 1);
    assert_eq!(d.fetch(USER, "Archive", archived[0]), msgs[1]);
    // The copy does not carry \Deleted.
    assert!(
        !d.flags(USER, "Archive", archived[0])
            .contains(&"\\Deleted".to_string())
    );
    s.logout().await;
}

#[tokio::test]
async fn server_without_idle_move_uidplus() {
    let d = dovecot(false);
    // Announce only base capabilities (Dovecot still accepts the commands;
    // a client must not use what is not announced).
    let mut conf = std::fs::read_to_string(d.conf_path()).unwrap();
    conf.push_str("protocol imap {\n  imap_capability = IMAP4rev1 LITERAL+ ID ENABLE\n}\n");
    std::fs::write(d.conf_path(), conf).unwrap();
    d.restart();

    let msgs = messages();
    d.append_many(USER, "INBOX", &msgs);
    let mut s = connect(&d).await;
    assert!(!s.supports_idle() && !s.supports_move() && !s.supports_uidplus());
    s.select("INBOX").await.unwrap();
    s.move_to(&[1], "Processed").await.unwrap();
    assert_eq!(d.uids(USER, "INBOX"), vec![2, 3]);
    assert_eq!(d.uids(USER, "Processed").len(), 1);

    // idle() polls instead: Timeout when nothing came, NewData when it did.
    let (_tx, mut rx) = watch::channel(false);
    let t0 = Instant::now();
    assert_eq!(
        s.idle(Duration::from_millis(300), &mut rx).await.unwrap(),
        IdleOutcome::Timeout
    );
    assert!(t0.elapsed() >= Duration::from_millis(300));
    d.deliver_lmtp(USER, &lmtp_mail("polled")).unwrap();
    assert_eq!(
        s.idle(Duration::from_millis(300), &mut rx).await.unwrap(),
        IdleOutcome::NewData
    );
    assert_eq!(s.uids_after(3).await.unwrap(), vec![4]);
    s.logout().await;
}

/// IDLE is push: mail delivered while the client idles wakes it with new
/// data long before its own deadline (it never polls while idling, so
/// nothing but the server's notice can end the wait early). The mail is
/// delivered once Dovecot shows the session in IDLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_wakes_on_delivery() {
    const MAX_WAIT: Duration = Duration::from_secs(60);
    let d = Arc::new(dovecot(false));
    let mut s = connect(&d).await;
    s.select("INBOX").await.unwrap();
    let (_tx, mut rx) = watch::channel(false);

    let delivered_at = {
        let d = d.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + MAX_WAIT;
            while !d.idling(USER) {
                assert!(Instant::now() < deadline, "the session never idled");
                std::thread::sleep(Duration::from_millis(10));
            }
            // Taken before the delivery: Dovecot may announce the mail
            // before the LMTP exchange is over.
            let delivering = Instant::now();
            d.deliver_lmtp(USER, &lmtp_mail("pushed")).expect("LMTP");
            delivering
        })
    };
    let started = Instant::now();
    let outcome = s.idle(MAX_WAIT, &mut rx).await.unwrap();
    let woke = Instant::now();
    let delivered_at = delivered_at.await.unwrap();
    eprintln!(
        "idle woke {:?} after the LMTP delivery began",
        woke.saturating_duration_since(delivered_at)
    );
    assert_eq!(outcome, IdleOutcome::NewData);
    assert!(woke >= delivered_at, "woke before the delivery");
    assert!(started.elapsed() < MAX_WAIT, "woken by the deadline");

    // The session is usable after IDLE.
    let uids = s.uids_after(0).await.unwrap();
    assert_eq!(uids, vec![1]);
    let got = s.fetch(&uids).await.unwrap();
    assert!(String::from_utf8_lossy(&got[0].raw).contains("Subject: pushed\r\n"));
    s.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_shutdown_and_pending_data() {
    let d = Arc::new(dovecot(false));
    d.append(USER, "INBOX", &messages()[0]);
    let mut s = connect(&d).await;
    s.select("INBOX").await.unwrap();
    let (tx, mut rx) = watch::channel(false);

    // Nothing arrives: Timeout after max_wait (well within a generous
    // bound: the deadline is kept).
    let t0 = Instant::now();
    let outcome = s.idle(Duration::from_millis(400), &mut rx).await.unwrap();
    assert_eq!(outcome, IdleOutcome::Timeout);
    assert!(t0.elapsed() >= Duration::from_millis(400));
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());

    // The watch flips while idling: Shutdown, long before the deadline.
    let idling = {
        let d = Arc::clone(&d);
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !d.idling(USER) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            tx.send(true).unwrap();
            tx
        })
    };
    let t0 = Instant::now();
    let outcome = s.idle(Duration::from_secs(60), &mut rx).await.unwrap();
    assert_eq!(outcome, IdleOutcome::Shutdown);
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    // Still true: at once, without IDLE.
    assert_eq!(
        s.idle(Duration::from_secs(30), &mut rx).await.unwrap(),
        IdleOutcome::Shutdown
    );
    let tx = idling.await.unwrap();
    tx.send(false).unwrap();

    // The session works after IDLE ended with DONE.
    assert_eq!(s.fetch(&[1]).await.unwrap()[0].raw, messages()[0]);

    // Mail that arrived with another command (EXISTS in the NOOP response)
    // is reported by the next idle(): the server will not announce it again,
    // so anything but the session's own record of it would wait out the
    // deadline and time out.
    d.append(USER, "INBOX", &messages()[1]);
    s.noop().await.unwrap();
    let t0 = Instant::now();
    assert_eq!(
        s.idle(Duration::from_secs(60), &mut rx).await.unwrap(),
        IdleOutcome::NewData
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert_eq!(s.uids_after(1).await.unwrap(), vec![2]);
    // Reported once: the next wait is a real one.
    assert_eq!(
        s.idle(Duration::from_millis(200), &mut rx).await.unwrap(),
        IdleOutcome::Timeout
    );
    s.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_session_fails_fast() {
    let d = dovecot(false);
    let d = Arc::new(d);
    d.append(USER, "INBOX", &messages()[0]);

    // Stopped between commands: the next call fails, then Closed.
    let mut s = connect(&d).await;
    s.select("INBOX").await.unwrap();
    d.stop();
    let t0 = Instant::now();
    let err = s.fetch(&[1]).await.expect_err("server is gone");
    eprintln!("after stop: {err:?} in {:?}", t0.elapsed());
    assert!(t0.elapsed() < TIMEOUT, "took {:?}: {err:?}", t0.elapsed());
    assert!(matches!(s.noop().await, Err(ImapError::Closed)));
    assert!(matches!(s.select("INBOX").await, Err(ImapError::Closed)));
    let (_tx, mut rx) = watch::channel(false);
    assert!(matches!(
        s.idle(Duration::from_secs(30), &mut rx).await,
        Err(ImapError::Closed)
    ));
    s.logout().await;

    // Stopped while idling: idle() returns an error, not a hang.
    d.restart();
    let mut s = connect(&d).await;
    s.select("INBOX").await.unwrap();
    let idling = tokio::spawn(async move {
        let (_tx, mut rx) = watch::channel(false);
        let r = s.idle(Duration::from_secs(60), &mut rx).await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopper = d.clone();
    tokio::task::spawn_blocking(move || stopper.stop())
        .await
        .unwrap();
    let stopped = Instant::now();
    let (r, ended) = tokio::time::timeout(TIMEOUT * 2, idling)
        .await
        .expect("idle hung after the server stopped")
        .unwrap();
    assert!(r.is_err(), "{r:?}");
    assert!(ended.saturating_duration_since(stopped) < TIMEOUT);

    // Back up: a new session works.
    d.restart();
    let mut s = connect(&d).await;
    assert_eq!(s.select("INBOX").await.unwrap().exists, 1);
    s.logout().await;
}

#[tokio::test]
async fn unresponsive_server_times_out() {
    // A listener that accepts and never greets.
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = ImapSettings {
        host: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
        username: USER.into(),
        auth: ImapAuth::Password(Secret::new("x")),
        ca_file: None,
        timeout: Duration::from_millis(500),
    };
    let t0 = Instant::now();
    let err = ImapSession::connect(&cfg).await.expect_err("no greeting");
    assert!(matches!(err, ImapError::Timeout(_)), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    drop(listener);
}
