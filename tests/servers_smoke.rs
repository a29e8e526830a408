//! The test harness's own servers work: Dovecot starts (plain and TLS),
//! takes mail over LMTP and IMAP APPEND, answers IMAP, and restarts.

#[path = "support/servers.rs"]
mod servers;

use servers::{Dovecot, DovecotOptions};
use std::io::Write;
use std::process::{Command, Stdio};

fn dovecot(tls: bool) -> Dovecot {
    servers::require_dovecot();
    Dovecot::start(DovecotOptions { tls }).expect("start dovecot")
}

const MAIL: &[u8] = b"From: Customer <customer@example.org>\n\
To: support@example.com\n\
Subject: Hello\n\
Message-ID: <smoke-1@example.org>\n\
\n\
First line.\n\
.a line starting with a dot\n\
.\n\
Last line.\n";

#[test]
fn dovecot_plain_lmtp_append_and_restart() {
    let d = dovecot(false);
    assert_eq!(d.imaps_port, None);
    let user = "support@example.com";

    d.deliver_lmtp(user, MAIL).expect("LMTP delivery");
    let exact = b"From: a@example.org\r\nSubject: appended\r\n\r\nbody\r\n";
    d.append(user, "INBOX", exact);

    let t = d.imap_command(user, &["SELECT INBOX", "UID SEARCH ALL"]);
    assert!(t.contains("* 2 EXISTS"), "{t}");
    assert!(t.contains("* SEARCH 1 2"), "{t}");
    assert!(t.contains("c2 OK"), "{t}");
    assert_eq!(d.uids(user, "INBOX"), vec![1, 2]);

    // LMTP: dot-stuffing undone by the server, CRLF line ends, and the
    // lone "." line kept as content.
    let delivered = d.fetch(user, "INBOX", 1);
    let text = String::from_utf8_lossy(&delivered);
    assert!(text.contains("Subject: Hello\r\n"), "{text}");
    assert!(
        text.contains("First line.\r\n.a line starting with a dot\r\n.\r\nLast line.\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Delivered-To: support@example.com\r\n"),
        "{text}"
    );
    // APPEND stores exactly what was given.
    assert_eq!(d.fetch(user, "INBOX", 2), exact);
    assert!(d.flags(user, "INBOX", 2).is_empty());

    // Folders, flags, created on append.
    let uid = d
        .try_append(user, "Processed", &["\\Seen"], exact)
        .expect("append to a new folder");
    assert_eq!(uid, 1);
    assert_eq!(d.flags(user, "Processed", 1), vec!["\\Seen".to_string()]);
    let folders = d.folders(user);
    assert!(folders.contains(&"INBOX".to_string()), "{folders:?}");
    assert!(folders.contains(&"Processed".to_string()), "{folders:?}");
    let t = d.imap_command(user, &["DELETE Processed", "DELETE Nonexistent"]);
    assert!(t.contains("c1 OK"), "{t}");
    assert!(t.contains("c2 NO"), "{t}");

    // Bulk seeding over one connection.
    let many: Vec<Vec<u8>> = (0..50)
        .map(|i| format!("Subject: bulk {i}\r\n\r\nbody {i}\r\n").into_bytes())
        .collect();
    let uids = d.append_many("bulk@example.com", "INBOX", &many);
    assert_eq!(uids, (1..=50).collect::<Vec<u32>>());

    // Restart: same ports, same mail; the port is closed while stopped.
    d.stop();
    assert!(std::net::TcpStream::connect(("127.0.0.1", d.imap_port)).is_err());
    d.restart();
    assert_eq!(d.uids(user, "INBOX"), vec![1, 2]);
    d.restart();
    d.deliver_lmtp(user, MAIL)
        .expect("LMTP delivery after restart");
    assert_eq!(d.uids(user, "INBOX"), vec![1, 2, 3]);
    assert_eq!(d.uids("bulk@example.com", "INBOX").len(), 50);
}

/// `openssl s_client` against the server, trusting only the test
/// certificate and checking the host name: returns what the server said.
fn s_client(port: u16, cert: &std::path::Path, starttls: bool) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(cert)
        .args([
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-quiet",
        ]);
    if starttls {
        cmd.args(["-starttls", "imap"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a LOGIN tls@example.com secret\r\nb SELECT INBOX\r\nc LOGOUT\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "s_client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dovecot_tls_implicit_and_starttls() {
    let d = dovecot(true);
    let imaps = d.imaps_port.expect("imaps port");
    assert_ne!(imaps, d.imap_port);
    let cert = d.cert_pem_path();
    assert!(
        std::fs::read_to_string(&cert)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    d.deliver_lmtp("tls@example.com", MAIL).unwrap();
    d.append("tls@example.com", "INBOX", b"Subject: x\r\n\r\ny\r\n");

    let implicit = s_client(imaps, &cert, false);
    assert!(implicit.contains("* OK"), "{implicit}");
    assert!(implicit.contains("* 2 EXISTS"), "{implicit}");
    assert!(implicit.contains("c OK"), "{implicit}");

    let starttls = s_client(d.imap_port, &cert, true);
    assert!(starttls.contains("* 2 EXISTS"), "{starttls}");

    // The plain port still greets and offers STARTTLS.
    let t = d.imap_command("tls@example.com", &["CAPABILITY"]);
    assert!(t.contains("IMAP4rev1"), "{t}");
    let greeting = {
        use std::io::BufRead;
        let s = std::net::TcpStream::connect(("127.0.0.1", d.imap_port)).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    assert!(greeting.contains("STARTTLS"), "{greeting}");

    d.restart();
    assert_eq!(d.uids("tls@example.com", "INBOX"), vec![1, 2]);
    let again = s_client(imaps, &cert, false);
    assert!(again.contains("* 2 EXISTS"), "{again}");
}

#[test]
fn dovecots_run_side_by_side() {
    servers::require_dovecot();
    let a = Dovecot::start(DovecotOptions::default()).unwrap();
    let b = Dovecot::start(DovecotOptions::default()).unwrap();
    assert_ne!(a.imap_port, b.imap_port);
    a.append("u@example.com", "INBOX", b"Subject: a\r\n\r\na\r\n");
    assert_eq!(a.uids("u@example.com", "INBOX"), vec![1]);
    assert!(b.uids("u@example.com", "INBOX").is_empty());
    let port = a.imap_port;
    drop(a);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(b.uids("u@example.com", "INBOX").is_empty());
}
