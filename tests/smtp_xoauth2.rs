//! Sending with `AUTH XOAUTH2` (how Microsoft 365 and Gmail take mail)
//! against a real server that checks tokens: Dovecot's SMTP submission
//! service, whose `oauth2` passdb asks a real token-introspection endpoint
//! about every access token, relaying what it accepts to the aiosmtpd sink
//! (`tests/support/smtp_sink.py`), where the test reads what arrived. The
//! token from a `token_command` (run for every new connection), from a
//! `token_file` (read for every new connection) and fixed in `password`; a
//! refused token is a temporary failure that names XOAUTH2 and never the
//! token; a rotated token is picked up without a new `Sender`.

#[path = "support/servers.rs"]
mod servers;
#[path = "support/smtp.rs"]
mod smtp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use servers::{Dovecot, DovecotOptions, OAuth2Server};
use smtp::{ReceivedMail, SmtpSink, SmtpSinkOptions};
use switchboard::adapters::smtp::{OutgoingMail, SendError, Sender, SmtpSettings, Transport};
use switchboard::config::{Secret, TlsMode};
use switchboard::mail::Address;

/// The Dovecot user the sender logs in as (tokens are issued for it).
const USER: &str = "support";
const FROM: &str = "support@switchboard.test";
const TO: &str = "customer@example.net";
const WAIT: Duration = Duration::from_secs(10);

/// The token endpoint, the sink and a Dovecot relaying to it (the test
/// fails, saying what to install, when one is missing).
struct Servers {
    oauth2: OAuth2Server,
    sink: SmtpSink,
    dovecot: Dovecot,
}

fn servers() -> Servers {
    servers::require_submission();
    servers::require_oauth2();
    smtp::require_aiosmtpd();
    let oauth2 = OAuth2Server::start().expect("the introspection endpoint starts");
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("the SMTP sink starts");
    let dovecot = Dovecot::start_oauth2_submission(DovecotOptions::default(), &oauth2, sink.port())
        .expect("Dovecot with submission starts");
    Servers {
        oauth2,
        sink,
        dovecot,
    }
}

fn addr(email: &str) -> Address {
    Address {
        name: None,
        email: email.to_owned(),
    }
}

fn date() -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000, 0).unwrap()
}

fn mail(message_id: &str) -> OutgoingMail {
    OutgoingMail {
        from: addr(FROM),
        to: vec![addr(TO)],
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

/// XOAUTH2 as [`USER`] to Dovecot's submission port, plain TCP; the token
/// source is up to the test. The timeout is above Dovecot's auth penalty (a
/// refused login is answered after 2 s, more after repeated failures).
fn settings(d: &Dovecot) -> SmtpSettings {
    let mut s = SmtpSettings::new(d.host(), d.submission_port.expect("submission port"));
    s.tls = TlsMode::None;
    s.username = Some(USER.into());
    s.xoauth2 = true;
    s.timeout = Duration::from_secs(20);
    s
}

fn sender(s: SmtpSettings) -> Sender {
    Sender::new(Transport::Smtp(s)).expect("sender")
}

/// Sends `mail(message_id)`; returns the bytes handed to the server.
async fn send_ok(sender: &Sender, s: &Servers, message_id: &str) -> Vec<u8> {
    let prepared = sender.prepare(&mail(message_id)).expect("built");
    match sender.send_prepared(&prepared).await {
        Ok(response) => assert!(response.starts_with("250"), "{response}"),
        Err(e) => panic!(
            "sending {message_id} failed: {e:?}\n--- dovecot.log:\n{}\n--- relay:\n{}\n--- introspection requests:\n{}\n--- sink:\n{}",
            s.dovecot.log(),
            s.dovecot.relay_log(),
            s.oauth2.requests(),
            s.sink.log()
        ),
    }
    prepared.into_bytes()
}

/// What the sink received is exactly what was sent, under the `Received`
/// header(s) Dovecot's submission service prepends, with our envelope.
fn assert_relayed(got: &ReceivedMail, sent: &[u8], message_id: &str) {
    assert_eq!(got.header("Message-ID"), vec![format!("<{message_id}>")]);
    assert_eq!(got.mail_from, FROM);
    assert_eq!(got.rcpt_to, vec![TO.to_string()]);
    assert!(
        got.data.ends_with(sent),
        "the sink got other bytes than were sent:\n{}\n--- sent:\n{}",
        got.text(),
        String::from_utf8_lossy(sent)
    );
    let prefix = String::from_utf8_lossy(&got.data[..got.data.len() - sent.len()]).into_owned();
    for line in prefix.split_terminator("\r\n") {
        assert!(
            line.starts_with("Received:") || line.starts_with([' ', '\t']),
            "only Received headers are added, got {line:?} in:\n{prefix}"
        );
    }
}

/// The refusal of a token: temporary (a fresh token may come), saying what
/// was refused, never showing the token.
fn assert_refused(result: Result<String, SendError>, token: &str) {
    let err = result.expect_err("the token is refused");
    let shown = format!("{err} {err:?}");
    assert!(
        matches!(err, SendError::Transient(_)),
        "a refused token is temporary: {shown}"
    );
    assert!(
        err.message().contains("refused the XOAUTH2 login"),
        "{shown}"
    );
    assert!(!shown.contains(token), "the token is shown: {shown}");
    eprintln!("refused as expected: {err}");
}

/// How often Dovecot logged a successful XOAUTH2 login of [`USER`] to the
/// submission service.
fn xoauth2_logins(d: &Dovecot) -> usize {
    d.log()
        .lines()
        .filter(|l| {
            l.contains(" submission-login: ")
                && l.contains(" Login: user=<support>, method=XOAUTH2,")
        })
        .count()
}

/// A `token_command`: a shell script standing in for a token helper (an
/// `az account get-access-token` or `oauth2l fetch`): it counts its runs
/// and prints whatever token is current in `token`, which the test rotates.
struct TokenHelper {
    dir: PathBuf,
}

impl TokenHelper {
    fn new(dir: &Path, first_token: &str) -> TokenHelper {
        let dir = dir.join("token-helper");
        std::fs::create_dir_all(&dir).unwrap();
        let helper = TokenHelper { dir };
        helper.set_token(first_token);
        std::fs::write(
            helper.dir.join("fetch-token.sh"),
            format!(
                "#!/bin/sh\n\
                 echo run >> '{0}/runs'\n\
                 exec cat '{0}/token'\n",
                helper.dir.display()
            ),
        )
        .unwrap();
        helper
    }

    /// `token_command`.
    fn command(&self) -> String {
        format!("sh '{}'", self.dir.join("fetch-token.sh").display())
    }

    /// From now on the command prints `token` (replaced atomically).
    fn set_token(&self, token: &str) {
        write_atomically(&self.dir.join("token"), token);
    }

    /// How often the command has run.
    fn runs(&self) -> usize {
        std::fs::read_to_string(self.dir.join("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

/// `token` and a newline into `path`, replacing it atomically (as a token
/// refresher does).
fn write_atomically(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// A token from `token_command` gets a reply through: Dovecot checked it
/// with the endpoint (once), logged the XOAUTH2 login, and relayed exactly
/// the message. A second reply reuses the pooled connection: no new login,
/// so the command does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_token_sends_a_reply() {
    let s = servers();
    let token = s.oauth2.issue(USER);
    let tmp = tempfile::tempdir().unwrap();
    let helper = TokenHelper::new(tmp.path(), &token);
    let mut settings = settings(&s.dovecot);
    settings.token_command = Some(helper.command());
    let sender = sender(settings);
    assert!(!format!("{sender:?}").contains(&token));

    let sent = send_ok(&sender, &s, "xoauth2.cmd.1@switchboard.test").await;
    let got = s.sink.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_relayed(&got[0], &sent, "xoauth2.cmd.1@switchboard.test");
    assert!(!got[0].authenticated, "the relay is reached without AUTH");
    assert_eq!(helper.runs(), 1);
    assert_eq!(
        s.oauth2.introspections(&token),
        1,
        "{}",
        s.oauth2.requests()
    );
    assert_eq!(xoauth2_logins(&s.dovecot), 1, "{}", s.dovecot.log());

    let sent = send_ok(&sender, &s, "xoauth2.cmd.2@switchboard.test").await;
    let got = s.sink.wait_for(2, WAIT);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_relayed(&got[1], &sent, "xoauth2.cmd.2@switchboard.test");
    assert_eq!(helper.runs(), 1, "a pooled connection needs no new token");
    assert_eq!(
        s.oauth2.introspections(&token),
        1,
        "{}",
        s.oauth2.requests()
    );
    assert_eq!(xoauth2_logins(&s.dovecot), 1, "{}", s.dovecot.log());
}

/// A revoked token is refused by the server: a temporary failure naming
/// XOAUTH2, not the token, and nothing is relayed. The helper then prints a
/// fresh token, and the same `Sender` gets the reply through on its next
/// try: the command ran again and the new token was the one checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_is_temporary_and_a_fresh_one_is_fetched() {
    let s = servers();
    let revoked = s.oauth2.issue(USER);
    s.oauth2.revoke(&revoked);
    let tmp = tempfile::tempdir().unwrap();
    let helper = TokenHelper::new(tmp.path(), &revoked);
    let mut settings = settings(&s.dovecot);
    settings.token_command = Some(helper.command());
    let sender = sender(settings);

    let result = sender.send(&mail("xoauth2.refused@switchboard.test")).await;
    assert_refused(result, &revoked);
    assert_eq!(helper.runs(), 1);
    assert_eq!(
        s.oauth2.introspections(&revoked),
        1,
        "{}",
        s.oauth2.requests()
    );
    assert_eq!(xoauth2_logins(&s.dovecot), 0, "{}", s.dovecot.log());

    // The token helper is refreshed; the reply is retried.
    let fresh = s.oauth2.issue(USER);
    helper.set_token(&fresh);
    let sent = send_ok(&sender, &s, "xoauth2.retried@switchboard.test").await;
    assert_eq!(helper.runs(), 2, "the command runs for the new connection");
    assert_eq!(
        s.oauth2.introspections(&fresh),
        1,
        "{}",
        s.oauth2.requests()
    );
    assert_eq!(
        s.oauth2.introspections(&revoked),
        1,
        "{}",
        s.oauth2.requests()
    );
    let got = s.sink.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "only the retried reply arrives: {got:?}");
    assert_relayed(&got[0], &sent, "xoauth2.retried@switchboard.test");
    assert_eq!(xoauth2_logins(&s.dovecot), 1, "{}", s.dovecot.log());
}

/// A token nobody issued, and one issued for another user, are refused the
/// same way (here as fixed tokens in `password`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_foreign_token_is_refused() {
    let s = servers();
    let unknown = format!("{}x", s.oauth2.issue(USER));
    let foreign = s.oauth2.issue("someone-else");
    for token in [&unknown, &foreign] {
        let mut settings = settings(&s.dovecot);
        settings.password = Some(Secret::new(token));
        let result = sender(settings)
            .send(&mail("xoauth2.unknown@switchboard.test"))
            .await;
        assert_refused(result, token);
        assert_eq!(s.oauth2.introspections(token), 1, "{}", s.oauth2.requests());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.sink.messages().is_empty(), "{:?}", s.sink.messages());
    assert_eq!(xoauth2_logins(&s.dovecot), 0, "{}", s.dovecot.log());
}

/// Providers end the SMTP sessions of a token that expires. The pooled
/// connection, ended by the server while idle (`doveadm kick`), is replaced
/// by a new one with a fresh token from the command, and the reply goes out
/// on the first call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ended_by_the_server_is_replaced_with_a_fresh_token() {
    rotate_between_two_replies("kick", None, true).await;
}

/// Tokens live about an hour: once the pooled connection has been closed
/// (idle timeout), the next reply opens a new one with whatever token the
/// helper prints now, without a new `Sender`; the old token, revoked
/// meanwhile, is not asked about again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_rotation_after_the_idle_timeout() {
    rotate_between_two_replies("rot", Some(Duration::from_millis(200)), false).await;
}

/// `token_file`, kept fresh by another process, is read again for every new
/// connection: after the idle timeout the rotated token is the one used; a
/// revoked token in it is refused, and the next fresh one works, all with
/// one `Sender`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_is_read_for_every_new_connection() {
    let s = servers();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("smtp-access-token");
    let first = s.oauth2.issue(USER);
    write_atomically(&path, &first);
    let mut settings = settings(&s.dovecot);
    settings.token_file = Some(path.clone());
    settings.idle_timeout = Duration::from_millis(200);
    let sender = sender(settings);

    let sent1 = send_ok(&sender, &s, "xoauth2.file.1@switchboard.test").await;
    assert_eq!(
        s.oauth2.introspections(&first),
        1,
        "{}",
        s.oauth2.requests()
    );

    // Rotated while the pooled connection expires.
    let second = s.oauth2.issue(USER);
    write_atomically(&path, &second);
    s.oauth2.revoke(&first);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let sent2 = send_ok(&sender, &s, "xoauth2.file.2@switchboard.test").await;
    assert_eq!(
        s.oauth2.introspections(&first),
        1,
        "{}",
        s.oauth2.requests()
    );
    assert_eq!(
        s.oauth2.introspections(&second),
        1,
        "{}",
        s.oauth2.requests()
    );

    // A revoked token in the file: refused, nothing relayed.
    s.oauth2.revoke(&second);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let result = sender
        .send(&mail("xoauth2.file.refused@switchboard.test"))
        .await;
    assert_refused(result, &second);
    assert_eq!(
        s.oauth2.introspections(&second),
        2,
        "{}",
        s.oauth2.requests()
    );

    // The refresher writes a fresh one: the next try goes through.
    let third = s.oauth2.issue(USER);
    write_atomically(&path, &third);
    let sent3 = send_ok(&sender, &s, "xoauth2.file.3@switchboard.test").await;
    assert_eq!(
        s.oauth2.introspections(&third),
        1,
        "{}",
        s.oauth2.requests()
    );
    assert_eq!(xoauth2_logins(&s.dovecot), 3, "{}", s.dovecot.log());

    let got = s.sink.wait_for(3, WAIT);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_relayed(&got[0], &sent1, "xoauth2.file.1@switchboard.test");
    assert_relayed(&got[1], &sent2, "xoauth2.file.2@switchboard.test");
    assert_relayed(&got[2], &sent3, "xoauth2.file.3@switchboard.test");
}

/// A fixed token in `password` with `xoauth2 = true` logs in with XOAUTH2
/// (the token checked by the endpoint), not with PLAIN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_token_in_password() {
    let s = servers();
    let token = s.oauth2.issue(USER);
    let mut settings = settings(&s.dovecot);
    settings.password = Some(Secret::new(&token));
    let sender = sender(settings);
    assert!(!format!("{sender:?}").contains(&token));

    let sent = send_ok(&sender, &s, "xoauth2.fixed@switchboard.test").await;
    assert_eq!(
        s.oauth2.introspections(&token),
        1,
        "{}",
        s.oauth2.requests()
    );
    assert_eq!(xoauth2_logins(&s.dovecot), 1, "{}", s.dovecot.log());
    assert!(
        !s.dovecot.log().contains("method=PLAIN"),
        "{}",
        s.dovecot.log()
    );
    let got = s.sink.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_relayed(&got[0], &sent, "xoauth2.fixed@switchboard.test");
}

/// A server that does not offer XOAUTH2 at all (here the sink, which offers
/// only `AUTH LOGIN PLAIN`) never sees a token, so nothing was refused: the
/// error should say that XOAUTH2 is not offered, as the password path says
/// there is no common mechanism (a permanent error there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_xoauth2_is_not_reported_as_a_refused_token() {
    smtp::require_aiosmtpd();
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("the SMTP sink starts");
    let mut s = SmtpSettings::new("127.0.0.1", sink.port());
    s.tls = TlsMode::None;
    s.username = Some(USER.into());
    s.xoauth2 = true;
    s.password = Some(Secret::new("ya29.not-even-sent"));
    s.timeout = Duration::from_secs(10);
    let err = sender(s)
        .send(&mail("xoauth2.unoffered@switchboard.test"))
        .await
        .expect_err("the sink does not offer XOAUTH2");
    let shown = format!("{err} {err:?}");
    assert!(
        !err.message().contains("refused the XOAUTH2 login"),
        "no token was presented, none was refused: {shown}"
    );
    assert!(
        err.message().contains("does not offer AUTH XOAUTH2"),
        "{shown}"
    );
    assert!(!err.is_transient(), "retrying cannot help: {shown}");
    assert!(sink.messages().is_empty());
}

/// Sends once with the command's first token, rotates the token (the old one
/// revoked), ends the pooled connection (`kick`: the server ends it; else the
/// idle timeout does), and sends again: the
/// second reply goes out over a new connection with the new token, and the
/// old token is not asked about again.
async fn rotate_between_two_replies(tag: &str, idle_timeout: Option<Duration>, kick: bool) {
    let s = servers();
    let first = s.oauth2.issue(USER);
    let tmp = tempfile::tempdir().unwrap();
    let helper = TokenHelper::new(tmp.path(), &first);
    let mut settings = settings(&s.dovecot);
    settings.token_command = Some(helper.command());
    if let Some(t) = idle_timeout {
        settings.idle_timeout = t;
    }
    let sender = sender(settings);
    let id1 = format!("xoauth2.{tag}.1@switchboard.test");
    let id2 = format!("xoauth2.{tag}.2@switchboard.test");

    let sent1 = send_ok(&sender, &s, &id1).await;
    assert_eq!(helper.runs(), 1);

    let second = s.oauth2.issue(USER);
    helper.set_token(&second);
    s.oauth2.revoke(&first);
    if kick {
        assert_eq!(
            s.dovecot.sessions(USER, "submission"),
            1,
            "the pooled connection's session"
        );
        assert!(s.dovecot.kick(USER), "a submission session to end");
        let deadline = std::time::Instant::now() + WAIT;
        while s.dovecot.sessions(USER, "submission") > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the kicked session never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    } else {
        tokio::time::sleep(Duration::from_millis(600)).await;
    }

    let sent2 = send_ok(&sender, &s, &id2).await;
    assert_eq!(helper.runs(), 2, "a new connection, a new token");
    assert_eq!(
        s.oauth2.introspections(&first),
        1,
        "{}",
        s.oauth2.requests()
    );
    assert_eq!(
        s.oauth2.introspections(&second),
        1,
        "{}",
        s.oauth2.requests()
    );
    assert_eq!(xoauth2_logins(&s.dovecot), 2, "{}", s.dovecot.log());
    let got = s.sink.wait_for(2, WAIT);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_relayed(&got[0], &sent1, &id1);
    assert_relayed(&got[1], &sent2, &id2);
}
