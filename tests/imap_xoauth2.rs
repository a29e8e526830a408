//! IMAP ingestion with `AUTHENTICATE XOAUTH2` (how Microsoft 365 and Gmail
//! are reached) against a real Dovecot whose `oauth2` passdb asks a real
//! token-introspection endpoint about every access token: the token from an
//! environment variable, from a file, and from a `token_command`; a refused
//! token shown on the mailbox and retried; a rotated token picked up without
//! a restart; and no token ever in a log line or an error.
mod support;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::app::{ADMIN, Db, TestApp, TestDb, base_config};
use support::mail::{mail, wait_for};
use support::servers::{Dovecot, DovecotOptions, OAuth2Server};
use switchboard::app::Running;
use switchboard::config::Config;

const USER: &str = "support";
const WAIT: Duration = Duration::from_secs(60);
const TOKEN_ENV: &str = "SB_TEST_IMAP_ACCESS_TOKEN";

/// Dovecot with the oauth2 passdb, and the endpoint that vouches for the
/// tokens (the test fails, saying what to install, when either is missing).
fn oauth2_dovecot() -> (OAuth2Server, Dovecot) {
    support::servers::require_dovecot();
    support::servers::require_oauth2();
    let oauth2 = OAuth2Server::start().expect("the introspection endpoint starts");
    let d = Dovecot::start_oauth2(DovecotOptions::default(), &oauth2).expect("Dovecot starts");
    (oauth2, d)
}

/// Configuration text for an instance reading the test user's INBOX with
/// XOAUTH2, the token coming from `token_source` (TOML lines).
fn xoauth2_config(db_url: &str, d: &Dovecot, token_source: &str) -> String {
    format!(
        r#"{}
[ingest]
# Above Dovecot's auth penalty (up to 15 s before a refusal is answered).
io_timeout_secs = 20
max_backoff_secs = 2
lease_secs = 5

[[mailboxes]]
id = "support-oauth"
service = "support"
kind = "imap"
host = "127.0.0.1"
port = {}
tls = "none"
username = "{USER}"
xoauth2 = true
{token_source}
"#,
        base_config(db_url),
        d.imap_port,
    )
}

/// Starts an instance in this process; `env` is the environment its
/// configuration is resolved with (as `Config::load` does with the
/// process's own).
async fn spawn(test_db: TestDb, text: &str, env: &[(String, String)]) -> TestApp {
    let config = Config::from_parts(text, Path::new("test.toml"), env).expect("valid config");
    let running = Running::start(&config).await.expect("switchboard starts");
    TestApp {
        url: running.url(),
        running: Some(running),
        client: reqwest::Client::new(),
        db: test_db,
    }
}

async fn mailbox(app: &TestApp) -> Value {
    let (s, b) = app.get(ADMIN, "/api/v1/ops/mailboxes").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["items"][0].clone()
}

fn numbered(i: usize, tag: &str) -> Vec<u8> {
    mail(
        &format!("customer{i}@example.net"),
        &format!("{tag} #{i}"),
        &format!("{tag}-{i}@example.net"),
        &[],
        &format!("Message {i} of the {tag} run."),
    )
}

/// The harness really checks tokens (else every test here would prove
/// nothing): the IMAP adapter gets in with a live token for its user, and
/// is refused, as an auth error that names XOAUTH2 and never the token,
/// with a token for another user, a revoked one, an unknown one, and with
/// the static password presented as a token; `LOGIN` with the password
/// still works, for the harness's own helpers.
#[tokio::test]
async fn only_a_live_token_for_the_user_gets_in() {
    use switchboard::adapters::imap::{ImapAuth, ImapSession, ImapSettings};
    use switchboard::config::{Secret, TlsMode};
    let (oauth2, d) = oauth2_dovecot();
    let settings = |d: &Dovecot, auth| ImapSettings {
        host: d.host().to_string(),
        port: d.imap_port,
        tls: TlsMode::None,
        username: USER.to_string(),
        auth,
        ca_file: None,
        timeout: Duration::from_secs(20),
    };
    let live = oauth2.issue(USER);
    let session = ImapSession::connect(&settings(&d, ImapAuth::XOAuth2(Secret::new(&live))))
        .await
        .expect("a live token logs in");
    session.logout().await;

    let others = oauth2.issue("someone-else");
    let revoked = oauth2.issue(USER);
    oauth2.revoke(&revoked);
    let unknown = format!("{live}x");
    for (what, token) in [
        ("another user's token", others.as_str()),
        ("a revoked token", revoked.as_str()),
        ("an unknown token", unknown.as_str()),
        ("the password as a token", d.password()),
    ] {
        // A Dovecot each: its auth penalty grows with every different
        // failure from one address (2 s, 4 s, 8 s, 15 s).
        let fresh = Dovecot::start_oauth2(DovecotOptions::default(), &oauth2).expect("Dovecot");
        let err = ImapSession::connect(&settings(&fresh, ImapAuth::XOAuth2(Secret::new(token))))
            .await
            .expect_err(what);
        let shown = format!("{err} {err:?}");
        assert!(err.is_auth(), "{what}: {shown}");
        assert!(
            shown.contains("XOAUTH2 access token rejected (status 401"),
            "{what}: {shown}"
        );
        assert!(!shown.contains(token), "{what}: {shown}");
        wait_for(
            Duration::from_secs(10),
            "Dovecot logs the refusal",
            || async {
                fresh
                    .log()
                    .contains("(auth failed, 1 attempts")
                    .then_some(())
            },
        )
        .await;
    }
    for token in [&others, &revoked, &unknown] {
        assert_eq!(oauth2.introspections(token), 1, "{}", oauth2.requests());
    }
    // LOGIN with the password (Dovecot logs it as PLAIN).
    let session =
        ImapSession::connect(&settings(&d, ImapAuth::Password(Secret::new(d.password()))))
            .await
            .expect("LOGIN with the password");
    session.logout().await;
    let log = d.log();
    assert!(log.contains("user=<support>, method=XOAUTH2"), "{log}");
    assert!(log.contains("user=<support>, method=PLAIN"), "{log}");
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
                 if [ -e '{0}/hang' ]; then echo $$ >> '{0}/hung'; exec sleep 300; fi\n\
                 exec cat '{0}/token'\n",
                helper.dir.display()
            ),
        )
        .unwrap();
        helper
    }

    /// The `token_command` line of the configuration.
    fn config_line(&self) -> String {
        format!(
            "token_command = \"sh {}\"",
            self.dir.join("fetch-token.sh").display()
        )
    }

    /// From now on the command prints `token` (replaced atomically).
    fn set_token(&self, token: &str) {
        let tmp = self.dir.join("token.tmp");
        std::fs::write(&tmp, format!("{token}\n")).unwrap();
        std::fs::rename(tmp, self.dir.join("token")).unwrap();
    }

    /// Whether the command hangs (never prints, never exits) from now on.
    fn set_hanging(&self, hang: bool) {
        let path = self.dir.join("hang");
        if hang {
            std::fs::write(path, "").unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }

    /// The process ids of the runs that hung.
    fn hung_pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("hung"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How often the command has run.
    fn runs(&self) -> usize {
        std::fs::read_to_string(self.dir.join("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

#[derive(Debug, Clone, Copy)]
enum TokenSource {
    /// `password_env`: the token in an environment variable.
    Env,
    /// `password_file`: the token in a file (with a trailing newline).
    File,
    /// `token_command`: a command that prints the token.
    Command,
}

/// Mail delivered over LMTP becomes tasks, the mailbox logged in with
/// XOAUTH2, and Dovecot checked the token with the introspection endpoint.
async fn ingests_with_a_token_from(db: Db, source: TokenSource) {
    let (oauth2, d) = oauth2_dovecot();
    let token = oauth2.issue(USER);
    let test_db = TestDb::create(db).await;
    let mut env = Vec::new();
    let mut helper = None;
    let line = match source {
        TokenSource::Env => {
            env.push((TOKEN_ENV.to_string(), token.clone()));
            format!("password_env = \"{TOKEN_ENV}\"")
        }
        TokenSource::File => {
            let path = test_db.dir().join("imap-access-token");
            std::fs::write(&path, format!("{token}\n")).unwrap();
            format!("password_file = \"{}\"", path.display())
        }
        TokenSource::Command => {
            let h = TokenHelper::new(test_db.dir(), &token);
            let line = h.config_line();
            helper = Some(h);
            line
        }
    };
    let text = xoauth2_config(&test_db.url, &d, &line);
    assert!(
        !text.contains(&token),
        "the token is not in the config text"
    );
    let app = spawn(test_db, &text, &env).await;

    let m = wait_for(WAIT, "the mailbox idles", || async {
        let m = mailbox(&app).await;
        (m["state"] == "idle").then_some(m)
    })
    .await;
    assert_eq!(m["up"], true, "{m}");
    for i in 0..2 {
        d.deliver_lmtp(USER, &numbered(i, "oauth"))
            .expect("LMTP delivery");
    }
    wait_for(WAIT, "two tasks", || async {
        (app.count("SELECT count(*) FROM tasks WHERE subject LIKE 'oauth #%'")
            .await
            == 2)
            .then_some(())
    })
    .await;

    // It really was XOAUTH2 with this token: Dovecot logged the mechanism,
    // and the endpoint was asked about the token.
    let log = d.log();
    assert!(
        log.contains("Login: user=<support>, method=XOAUTH2"),
        "Dovecot log:\n{log}"
    );
    assert!(!log.contains("method=PLAIN") && !log.contains("method=LOGIN"));
    assert!(
        oauth2.introspections(&token) >= 1,
        "introspection requests:\n{}",
        oauth2.requests()
    );
    let m = mailbox(&app).await;
    assert!(m["last_error"].is_null(), "{m}");
    if let Some(h) = helper {
        assert!(h.runs() >= 1);
    }
    app.stop().await;
}

async fn a_token_from_password_env(db: Db) {
    ingests_with_a_token_from(db, TokenSource::Env).await
}

async fn a_token_from_password_file(db: Db) {
    ingests_with_a_token_from(db, TokenSource::File).await
}

async fn a_token_from_token_command(db: Db) {
    ingests_with_a_token_from(db, TokenSource::Command).await
}

/// A token helper that hangs (an interactive login prompt, a dead token
/// service) is an error on the mailbox after the I/O timeout, not a mailbox
/// stuck in "connecting" and a shutdown that never ends; the hung process is
/// killed, and once the helper answers again the mailbox connects.
async fn a_hanging_token_command_times_out(db: Db) {
    let (oauth2, d) = oauth2_dovecot();
    let token = oauth2.issue(USER);
    let test_db = TestDb::create(db).await;
    let helper = TokenHelper::new(test_db.dir(), &token);
    helper.set_hanging(true);
    let text = xoauth2_config(&test_db.url, &d, &helper.config_line())
        .replace("io_timeout_secs = 20", "io_timeout_secs = 2");
    let app = spawn(test_db, &text, &[]).await;

    let m = wait_for(WAIT, "a token_command error, twice", || async {
        let m = mailbox(&app).await;
        (m["state"] == "error" && m["counts"]["errors"].as_i64() >= Some(2)).then_some(m)
    })
    .await;
    let error = m["last_error"].as_str().unwrap_or_default();
    println!("last_error: {error}");
    assert!(error.contains("token_command"), "{m}");
    assert!(error.contains("did not finish"), "{m}");
    // Every hung run was killed, not left behind.
    let hung = helper.hung_pids();
    assert!(hung.len() >= 2, "{hung:?}");
    wait_for(
        Duration::from_secs(10),
        "the hung runs are gone",
        || async { hung.iter().all(|pid| !process_alive(*pid)).then_some(()) },
    )
    .await;

    helper.set_hanging(false);
    wait_for(WAIT, "the mailbox idles", || async {
        (mailbox(&app).await["state"] == "idle").then_some(())
    })
    .await;
    d.deliver_lmtp(USER, &numbered(1, "after-hang"))
        .expect("LMTP delivery");
    wait_for(WAIT, "the task", || async {
        (app.count("SELECT count(*) FROM tasks").await == 1).then_some(())
    })
    .await;

    // And a shutdown while the helper hangs ends promptly.
    helper.set_hanging(true);
    d.kick(USER);
    wait_for(WAIT, "a hung run after the kick", || async {
        (helper.hung_pids().len() > hung.len()).then_some(())
    })
    .await;
    let stopping = Instant::now();
    app.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        stopping.elapsed()
    );
}

/// Whether a process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

on_both_backends!(
    a_token_from_password_env,
    a_token_from_password_file,
    a_token_from_token_command,
    a_hanging_token_command_times_out,
);

// ---- Whole processes: real environment, real logging ----

/// A `switchboard serve` process logging everything (`RUST_LOG=trace`) into
/// a file, killed when dropped.
struct Served {
    child: Child,
    url: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl Served {
    /// Starts `switchboard serve` on `text` (its `127.0.0.1:0` bind replaced
    /// by a free port) with `env` added to its environment.
    async fn start(test_db: &TestDb, text: &str, env: &[(&str, &str)]) -> Served {
        let port = support::servers::free_port();
        let path = test_db.dir().join("switchboard.toml");
        std::fs::write(
            &path,
            text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
        )
        .unwrap();
        let log = test_db.dir().join("switchboard.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "trace")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("switchboard starts");
        let served = Served {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            client: reqwest::Client::new(),
        };
        wait_for(WAIT, "switchboard answers", || async {
            served
                .client
                .get(format!("{}/readyz", served.url))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
        served
    }

    async fn mailbox(&self) -> Value {
        let resp = self
            .client
            .get(format!("{}/api/v1/ops/mailboxes", self.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("ops API answers");
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("JSON");
        body["items"][0].clone()
    }

    /// Tasks whose subject starts with `prefix` (via the admin API).
    async fn tasks(&self, prefix: &str) -> usize {
        let resp = self
            .client
            .get(format!(
                "{}/api/v1/tasks?service=support&limit=100",
                self.url
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("tasks API answers");
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("JSON");
        body["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|t| t["subject"].as_str().is_some_and(|s| s.starts_with(prefix)))
                    .count()
            })
            .unwrap_or(0)
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ways a token could leak into text: as itself, or inside the
/// base64 SASL response that carries it.
fn leak_forms(token: &str) -> Vec<String> {
    let sasl = format!("user={USER}\x01auth=Bearer {token}\x01\x01");
    vec![
        token.to_string(),
        base64::engine::general_purpose::STANDARD.encode(sasl),
    ]
}

fn assert_no_token(what: &str, text: &str, tokens: &[&str]) {
    for token in tokens {
        for form in leak_forms(token) {
            assert!(
                !text.contains(&form),
                "{what} contains an access token ({form})"
            );
        }
    }
}

/// The mailbox once its last error mentions `needle` and at least
/// `errors` failures were counted.
async fn wait_error(served: &Served, needle: &str, errors: i64) -> Value {
    wait_for(
        WAIT,
        &format!("mailbox error {needle:?} (x{errors})"),
        || async {
            let m = served.mailbox().await;
            (m["state"] == "error"
                && m["last_error"].as_str().is_some_and(|e| e.contains(needle))
                && m["counts"]["errors"].as_i64() >= Some(errors))
            .then_some(m)
        },
    )
    .await
}

/// A token no one issued, from a real environment variable: the mailbox
/// says the login was refused, without the token, and keeps trying (each
/// attempt reaches the server, which asks the endpoint again).
async fn a_wrong_token_is_reported_and_retried(db: Db) {
    let (oauth2, d) = oauth2_dovecot();
    let wrong = format!("{}-never-issued", oauth2.issue("someone-else"));
    let test_db = TestDb::create(db).await;
    let text = xoauth2_config(&test_db.url, &d, &format!("password_env = \"{TOKEN_ENV}\""));
    let mut served = Served::start(&test_db, &text, &[(TOKEN_ENV, &wrong)]).await;

    let m = wait_error(&served, "login refused", 1).await;
    let error = m["last_error"].as_str().unwrap().to_string();
    println!("last_error: {error}");
    assert!(error.contains("XOAUTH2"), "{error}");
    assert_eq!(m["up"], false, "{m}");
    // Mail waits on the server meanwhile.
    d.deliver_lmtp(USER, &numbered(1, "waiting"))
        .expect("LMTP delivery");
    let tried = served.mailbox().await["counts"]["errors"]
        .as_i64()
        .expect("an error count");
    // Keeps retrying without a restart; an attempt after the delivery
    // (which would have fetched the mail, had it logged in) is refused too.
    let m = wait_error(&served, "login refused", (tried + 1).max(3)).await;
    assert!(oauth2.introspections(&wrong) >= 3, "{}", oauth2.requests());
    assert!(served.is_running());
    assert_eq!(served.tasks("waiting").await, 0);
    assert_eq!(
        d.uids(USER, "INBOX").len(),
        1,
        "the mail waits on the server"
    );

    let log = served.log();
    assert!(
        log.contains("IMAP login refused"),
        "the refusal is logged:\n{log}"
    );
    assert!(
        log.contains("IMAP: connecting"),
        "debug lines are in the log"
    );
    assert_no_token("last_error", &m.to_string(), &[&wrong]);
    assert_no_token("the log", &log, &[&wrong]);
}

/// A short-lived token from `token_command`: the server ends the session
/// when the token expires; the worker runs the command again on every
/// reconnection, is refused while it still prints the expired token
/// (shown on the mailbox, retried), and once the command prints a new
/// token it logs in and catches up on the mail that arrived meanwhile —
/// all without a restart, and no token in any log line or error.
async fn a_rotated_token_is_picked_up_without_a_restart(db: Db) {
    let (oauth2, d) = oauth2_dovecot();
    let first = oauth2.issue(USER);
    let test_db = TestDb::create(db).await;
    let helper = TokenHelper::new(test_db.dir(), &first);
    let text = xoauth2_config(&test_db.url, &d, &helper.config_line());
    let mut served = Served::start(&test_db, &text, &[]).await;

    wait_for(WAIT, "the mailbox idles", || async {
        (served.mailbox().await["state"] == "idle").then_some(())
    })
    .await;
    d.deliver_lmtp(USER, &numbered(1, "rotation"))
        .expect("LMTP delivery");
    wait_for(WAIT, "the first task", || async {
        (served.tasks("rotation").await == 1).then_some(())
    })
    .await;
    let runs_before = helper.runs();
    assert!(runs_before >= 1);
    assert!(oauth2.introspections(&first) >= 1);

    // The token expires; the provider ends the session.
    oauth2.revoke(&first);
    assert!(d.kick(USER), "the worker had a session to end");
    let m = wait_error(&served, "login refused", 1).await;
    let error = m["last_error"].as_str().unwrap().to_string();
    println!("last_error: {error}");
    assert!(error.contains("XOAUTH2"), "{error}");
    let m = wait_error(
        &served,
        "login refused",
        m["counts"]["errors"].as_i64().unwrap() + 1,
    )
    .await;
    assert!(
        helper.runs() >= runs_before + 2,
        "token_command runs at each reconnection ({} runs)",
        helper.runs()
    );
    // The expired token was presented again and again (and refused).
    assert!(oauth2.introspections(&first) >= 3, "{}", oauth2.requests());
    d.deliver_lmtp(USER, &numbered(2, "rotation"))
        .expect("LMTP delivery");

    // The helper gets a new token: the next reconnection uses it.
    let second = oauth2.issue(USER);
    let rotated = Instant::now();
    helper.set_token(&second);
    wait_for(WAIT, "the mail that waited, as a task", || async {
        (served.tasks("rotation").await == 2).then_some(())
    })
    .await;
    println!("caught up {:?} after the rotation", rotated.elapsed());
    let after = wait_for(WAIT, "the mailbox idles again", || async {
        let m = served.mailbox().await;
        (m["state"] == "idle").then_some(m)
    })
    .await;
    assert_eq!(after["up"], true, "{after}");
    assert!(oauth2.introspections(&second) >= 1, "{}", oauth2.requests());
    assert!(served.is_running(), "no restart");
    d.deliver_lmtp(USER, &numbered(3, "rotation"))
        .expect("LMTP delivery");
    wait_for(WAIT, "push works with the new token", || async {
        (served.tasks("rotation").await == 3).then_some(())
    })
    .await;

    let log = served.log();
    assert!(
        log.contains("IMAP login refused"),
        "the refusal is logged:\n{log}"
    );
    assert!(
        log.contains("IMAP: connecting"),
        "debug lines are in the log"
    );
    assert_no_token("the mailbox", &after.to_string(), &[&first, &second]);
    assert_no_token("last_error", &m.to_string(), &[&first, &second]);
    assert_no_token("the log", &log, &[&first, &second]);
}

on_both_backends!(
    a_wrong_token_is_reported_and_retried,
    a_rotated_token_is_picked_up_without_a_restart,
);

/// A token file kept fresh by another process (a sidecar refreshing an
/// access token) is read again at every connection: after the old token is
/// revoked and the session ended, the worker logs in with the file's new
/// token, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_file_is_read_at_each_connection() {
    let (oauth2, d) = oauth2_dovecot();
    let first = oauth2.issue(USER);
    let test_db = TestDb::create(Db::Sqlite).await;
    let path = test_db.dir().join("imap-access-token");
    std::fs::write(&path, format!("{first}\n")).unwrap();
    let line = format!("password_file = \"{}\"", path.display());
    let text = xoauth2_config(&test_db.url, &d, &line);
    let app = spawn(test_db, &text, &[]).await;
    wait_for(WAIT, "the mailbox idles", || async {
        (mailbox(&app).await["state"] == "idle").then_some(())
    })
    .await;
    d.deliver_lmtp(USER, &numbered(1, "refresh"))
        .expect("LMTP delivery");
    wait_for(WAIT, "the first task", || async {
        (app.count("SELECT count(*) FROM tasks WHERE subject LIKE 'refresh #%'")
            .await
            == 1)
            .then_some(())
    })
    .await;

    // The sidecar writes a new token (atomically) and the old one expires.
    let second = oauth2.issue(USER);
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("{second}\n")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    oauth2.revoke(&first);
    assert!(d.kick(USER), "the worker had a session to end");
    d.deliver_lmtp(USER, &numbered(2, "refresh"))
        .expect("LMTP delivery");
    wait_for(
        WAIT,
        "the second task, over a login with the new token",
        || async {
            (app.count("SELECT count(*) FROM tasks WHERE subject LIKE 'refresh #%'")
                .await
                == 2)
                .then_some(())
        },
    )
    .await;
    assert!(oauth2.introspections(&second) >= 1, "{}", oauth2.requests());
    app.stop().await;
}
