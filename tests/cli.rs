//! The `switchboard` command as an operator uses it.
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::app::{ADMIN, ALICE, Db, TestDb, base_config};
use support::process::Guarded;

fn switchboard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    // Keep the developer's environment from changing what is tested.
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD_") && !k.starts_with("SWITCHBOARD_TEST") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, base_config("sqlite://data/x.db")).unwrap();
    let out = switchboard()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK (2 service(s), 4 agent(s), 0 mailbox(es))"),
        "{stdout}"
    );
}

#[test]
fn check_config_names_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = base_config("sqlite://data/x.db").replace(
        "services = [\"sales\"]",
        "services = [\"sales\", \"marketing\"]",
    ) + "\n[[mailboxes]]\nservice = \"support\"\nkind = \"maildir\"\n";
    std::fs::write(&path, text).unwrap();
    let out = switchboard()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agents[2].services: unknown service 'marketing'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mailboxes[0].path: required for a maildir mailbox"),
        "{stderr}"
    );

    // `serve` refuses to start on the same errors.
    let out = switchboard()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service 'marketing'"));

    let out = switchboard()
        .args(["check-config", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read configuration file"));
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, base_config("sqlite://data/x.db")).unwrap();
    let out = switchboard()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("SWITCHBOARD_HTTP_BIND", "not an address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.bind: 'not an address'"));
}

#[test]
fn environment_overrides_are_checked_and_unknown_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, base_config("sqlite://data/x.db")).unwrap();
    let check = |var: &str, value: &str| {
        let out = switchboard()
            .args(["check-config", "--config"])
            .arg(&path)
            .env(var, value)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = check("SWITCHBOARD_ROUTING_SWEEP_MS", "0");
    assert!(
        !ok && stderr.contains("routing.sweep_ms: must be greater than 0"),
        "{stderr}"
    );
    for var in ["SWITCHBOARD_FOO_BAR", "SWITCHBOARD_ROUTING_SWEEPMS"] {
        let (ok, stderr) = check(var, "5");
        assert!(
            !ok && stderr.contains(&format!("environment variable {var}: ")),
            "{stderr}"
        );
    }
    let (ok, stderr) = check("SWITCHBOARD_SERVICES_0_MAX_RONAS", "0");
    assert!(
        !ok && stderr.contains("services[0].max_ronas: 0 is out of range"),
        "{stderr}"
    );
    let (ok, stderr) = check("SWITCHBOARD_INGEST_BATCH_SIZE", "-5");
    assert!(
        !ok && stderr.contains("expected a whole number of 0 or more (key ingest.batch_size)"),
        "{stderr}"
    );
    let (ok, stderr) = check("SWITCHBOARD_SERVICES_1_NAME", "2024");
    assert!(ok, "{stderr}");
}

/// What `serve` would only find when it connects or reads: a CA file, a
/// token helper, a Maildir folder that is not there.
#[test]
fn check_config_and_serve_refuse_missing_files_and_programs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    let text = base_config("sqlite://data/x.db")
        + "\n[smtp]\nhost = \"smtp.example.com\"\nusername = \"u\"\npassword = \"p\"\nca_file = \"/nope/ca.pem\"\n"
        + &format!(
            "\n[[mailboxes]]\nservice = \"support\"\nkind = \"maildir\"\npath = \"{}\"\n\
             \n[[mailboxes]]\nservice = \"support\"\nkind = \"imap\"\nhost = \"h\"\nusername = \"u\"\n\
             token_command = \"/nope/m365-token support\"\n",
            dir.path().join("no-such-folder").join("inbox").display()
        );
    std::fs::write(&path, text).unwrap();
    for command in ["check-config", "serve"] {
        let out = switchboard()
            .args([command, "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for expected in [
            "smtp.ca_file: cannot read /nope/ca.pem",
            "mailboxes[0].path: cannot read the Maildir",
            "mailboxes[1].token_command: cannot run /nope/m365-token",
        ] {
            assert!(
                stderr.contains(expected),
                "{command}: {expected} in {stderr}"
            );
        }
    }
}

/// `serve` reads its file again on SIGHUP: an integration's token taken
/// out of the file stops working at once, a new one works, an agent's new
/// token replaces the old; a file that no longer loads is reported and the
/// running configuration kept.
#[tokio::test]
async fn sighup_reloads_tokens_without_a_restart() {
    let test_db = TestDb::create(Db::Sqlite).await;
    let path = test_db.dir().join("switchboard.toml");
    let (port, base) = config_on_a_free_port(&test_db.url);
    let integration = |token: &str| {
        format!(
            "\n[[integrations]]\nid = \"crm\"\ntoken = \"{token}\"\nscopes = [\"tasks:read\"]\n"
        )
    };
    let old_token = "crm-token-old-0123456789";
    let new_token = "crm-token-new-0123456789";
    std::fs::write(&path, base.clone() + &integration(old_token)).unwrap();
    let mut serve = switchboard();
    serve.args(["serve", "--config"]).arg(&path);
    let (mut child, log) = spawn_reading(serve, Output::Stderr);
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let status = |token: &'static str| {
        let client = client.clone();
        let url = url.clone();
        async move {
            client
                .get(format!("{url}/api/v1/tasks"))
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let within = |what: &'static str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        move || assert!(Instant::now() < deadline, "{what}")
    };
    let check = within("serve did not become ready");
    while status(old_token).await != 200 {
        check();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(new_token).await, 401);

    // The integration's token is replaced, and so is Admin's.
    let admin_new = "admin-token-new-0123456789";
    assert!(base.contains(ADMIN));
    std::fs::write(
        &path,
        base.replace(ADMIN, admin_new) + &integration(new_token),
    )
    .unwrap();
    let hangup = |child: &Guarded| {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    hangup(&child);
    // Integration tokens (old, new), then Admin's (new, old).
    let want = [401, 200, 200, 401];
    let check = within("the reload did not replace the tokens");
    loop {
        let now = [
            status(old_token).await,
            status(new_token).await,
            status(admin_new).await,
            status(ADMIN).await,
        ];
        if now == want {
            break;
        }
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A file that does not load: said in the log, the running one kept.
    std::fs::write(&path, "[database\nurl = ").unwrap();
    hangup(&child);
    let check = within("the broken file was not reported");
    loop {
        check();
        match log.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("the configuration does not load") => break,
            _ => {}
        }
    }
    assert_eq!(
        status(new_token).await,
        200,
        "still the running configuration"
    );
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

#[tokio::test]
async fn migrate_then_serve_then_sigterm_on_both_backends() {
    for db in [Db::Sqlite, Db::Postgres] {
        let test_db = TestDb::create(db).await;
        let path = test_db.dir().join("switchboard.toml");
        let (port, text) = config_on_a_free_port(&test_db.url);
        std::fs::write(&path, text).unwrap();

        let out = switchboard()
            .args(["migrate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{db:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let latest = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.get(..4)?.parse::<u32>().ok())
            .max()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("schema version {latest}")),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );

        let mut child = Guarded::new(
            switchboard()
                .args(["serve", "--config"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_ready(&client, &url, &format!("{db:?}")).await;
        let r = client
            .get(format!("{url}/api/v1/me/sessions"))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        sigterm(&child);
        let status = wait_exit(&mut child, Duration::from_secs(15));
        assert!(
            status.success(),
            "{db:?}: graceful shutdown exits 0, got {status}"
        );
    }
}

/// While the database is migrated (here: held up by another process's
/// migration lock), the port answers: liveness `starting`, everything else
/// 503 `starting` with `Retry-After`; then the real server takes over.
#[tokio::test]
async fn the_port_answers_while_the_database_is_migrated() {
    use sqlx::Connection;
    let test_db = TestDb::create(Db::Postgres).await;
    let path = test_db.dir().join("switchboard.toml");
    let (port, text) = config_on_a_free_port(&test_db.url);
    std::fs::write(&path, text).unwrap();
    // The lock `switchboard migrate` and `serve` take before migrating.
    let mut holder = sqlx::PgConnection::connect(&test_db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(0x5357_4254_4348_i64)
        .execute(&mut holder)
        .await
        .unwrap();
    let _child = Guarded::new(
        switchboard()
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    // A port that holds connections without answering fails, not hangs.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let start = Instant::now();
    let live = loop {
        if let Ok(r) = client.get(format!("{url}/healthz")).send().await {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(live.status(), 200);
    let body: serde_json::Value = live.json().await.unwrap();
    assert_eq!(body["status"], "starting", "{body}");
    for path in ["/readyz", "/api/v1/me/sessions", "/"] {
        let r = client
            .get(format!("{url}{path}"))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{path}");
        assert_eq!(r.headers()["retry-after"], "5", "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "starting", "{path}: {body}");
    }
    // Still waiting for the lock: nothing was migrated meanwhile.
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('public.tasks') IS NOT NULL")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert!(!migrated, "the migration waited for the lock");
    holder.close().await.unwrap();
    wait_ready(&client, &url, "after the migration").await;
    let r = client
        .get(format!("{url}/api/v1/me/sessions"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let live: serde_json::Value = client
        .get(format!("{url}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["status"], "ok");
}

/// `switchboard openapi | head`: a reader that stops early is no error
/// (no panic, exit 0).
#[test]
fn openapi_into_a_pipe_closed_early_exits_quietly() {
    use std::io::Read;
    let mut child = switchboard()
        .arg("openapi")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe is closed here, before the document is all written.
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(&first[..1], b"{");
}

/// Waits (at most 30 s) until `serve` at `url` says it is ready.
async fn wait_ready(client: &reqwest::Client, url: &str, what: &str) {
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: serve did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tests' base configuration for `db_url`, listening on a free port
/// (a `serve` process's address must be known before it starts).
fn config_on_a_free_port(db_url: &str) -> (u16, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = base_config(db_url).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    (port, text)
}

/// `GET url` with a bearer token, answered with JSON.
async fn get_json(client: &reqwest::Client, url: String, token: &str) -> serde_json::Value {
    client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Which output of a process to read.
enum Output {
    Stdout,
    Stderr,
}

/// Spawns `command` with `output` piped (the other to /dev/null) and read to
/// the end by a thread of its own (a program whose pipe is closed fails to
/// write); returns the process and the lines as they come.
fn spawn_reading(
    mut command: Command,
    output: Output,
) -> (Guarded, std::sync::mpsc::Receiver<String>) {
    let (out, err) = match output {
        Output::Stdout => (Stdio::piped(), Stdio::null()),
        Output::Stderr => (Stdio::null(), Stdio::piped()),
    };
    let mut child = Guarded::new(command.stdout(out).stderr(err).spawn().unwrap());
    let stream: Box<dyn std::io::Read + Send> = match output {
        Output::Stdout => Box::new(child.stdout.take().unwrap()),
        Output::Stderr => Box::new(child.stderr.take().unwrap()),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// What a started demo printed: its URL, its simulated web chat's URL and
/// the token of each agent (from the sign-in links).
struct Demo {
    url: String,
    chat: String,
    tokens: std::collections::HashMap<String, String>,
}

/// Starts `switchboard demo` in `dir`; returns the process and what it printed.
fn start_demo(dir: &std::path::Path) -> (Guarded, Demo) {
    let mut demo = switchboard();
    demo.args(["demo", "--bind", "127.0.0.1:0"])
        .current_dir(dir);
    let (child, rx) = spawn_reading(demo, Output::Stdout);
    let mut url = None;
    let mut chat = None;
    let mut tokens = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && (url.is_none() || tokens.len() < 3) {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(rest) = line.split("running at ").nth(1) {
            url = Some(rest.trim().trim_end_matches('/').to_string());
        }
        // "Chat:     a simulated web chat at http://…/ (channel web-chat) …"
        if let Some(rest) = line.split("simulated web chat at ").nth(1) {
            chat = rest
                .split_whitespace()
                .next()
                .map(|u| u.trim_end_matches('/').to_string());
        }
        // "  alice  agent http://…/sign-in#token=sb_…"; the admin's link
        // goes on to the operators' page ("…/sign-in?next=/ops#token=…").
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() == 3
            && let Some((page, token)) = words[2].split_once("#token=")
        {
            let expected = if words[1] == "admin" {
                "/sign-in?next=/ops"
            } else {
                "/sign-in"
            };
            assert!(page.ends_with(expected), "{line}");
            tokens.insert(words[0].to_string(), token.to_string());
        }
    }
    let demo = Demo {
        url: url.expect("the demo prints its URL"),
        chat: chat.expect("the demo prints its web chat's URL"),
        tokens,
    };
    (child, demo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_demo_data_and_prints_sign_in_links() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, Demo { url, chat, tokens }) = start_demo(dir.path());
    assert!(
        dir.path().join("data/demo.db").exists(),
        "SQLite under ./data/"
    );
    assert!(tokens["alice"].starts_with("sb_"), "{tokens:?}");
    let client = reqwest::Client::new();
    let body: serde_json::Value = get_json(
        &client,
        format!("{url}/api/v1/me/sessions"),
        &tokens["alice"],
    )
    .await;
    let items = body["items"].as_array().expect("sessions");
    assert!(
        items.iter().any(|s| s["live"] == true),
        "live sessions: {body}"
    );
    assert!(
        items.iter().any(|s| s["live"] == false),
        "concluded sessions: {body}"
    );
    let modalities: std::collections::HashSet<&str> = items
        .iter()
        .filter_map(|s| s["modality"].as_str())
        .collect();
    assert!(
        modalities.len() >= 3,
        "email, IM and calls side by side: {modalities:?}"
    );
    // Every email task of the demo has its mail: a reply can be drafted on
    // Alice's live one, and the waiting ones have messages to read.
    let live_email = items
        .iter()
        .find(|s| s["live"] == true && s["modality"] == "email" && s["state"] == "connected")
        .expect("a live email task");
    let task = live_email["task_id"].as_str().unwrap();
    // Its session details show the demo's context links (as the README's
    // tour says).
    let details: serde_json::Value = get_json(
        &client,
        format!("{url}/api/v1/tasks/{task}"),
        &tokens["alice"],
    )
    .await;
    let links = details["context"]["context_links"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        links.iter().any(|l| l["label"] == "CRM"),
        "the demo's context links: {details}"
    );
    let draft = client
        .post(format!("{url}/api/v1/tasks/{task}/drafts"))
        .bearer_auth(&tokens["alice"])
        .json(&serde_json::json!({"kind": "reply"}))
        .send()
        .await
        .unwrap();
    assert_eq!(draft.status(), reqwest::StatusCode::CREATED);
    let queue: serde_json::Value =
        get_json(&client, format!("{url}/api/v1/me/queue"), &tokens["alice"]).await;
    assert!(queue["total"].as_i64().unwrap() >= 2, "{queue}");
    for t in queue["items"].as_array().unwrap() {
        if t["modality"] != "email" {
            continue;
        }
        let m: serde_json::Value = get_json(
            &client,
            format!("{url}/api/v1/tasks/{}/messages", t["id"].as_str().unwrap()),
            &tokens["alice"],
        )
        .await;
        assert!(!m["items"].as_array().unwrap().is_empty(), "mail on {t}");
    }
    // The page: signed out it sends you to sign in; the link's token signs in.
    let page = client.get(format!("{url}/")).send().await.unwrap();
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("Sign in to Switchboard")
    );

    // The simulated web chat: a visitor starts a chat on its page (a plain
    // form), and it arrives in Switchboard as an IM task.
    let visitor = client
        .post(format!("{chat}/"))
        .form(&[
            ("name", "Sam Visitor"),
            ("subject", "Gift wrapping?"),
            ("text", "Can you wrap my order as a gift?"),
        ])
        .send()
        .await
        .unwrap();
    assert!(
        visitor.url().path().starts_with("/chat/demo-"),
        "{}",
        visitor.url()
    );
    let chat_path = visitor.url().path().to_string();
    let page = visitor.text().await.unwrap();
    assert!(page.contains("You write as the visitor."), "{page}");
    assert!(page.contains("Can you wrap my order as a gift?"), "{page}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let gift = loop {
        let tasks: serde_json::Value = get_json(
            &client,
            format!("{url}/api/v1/tasks?modality=im"),
            &tokens["admin"],
        )
        .await;
        if let Some(t) = tasks["items"]
            .as_array()
            .and_then(|items| items.iter().find(|t| t["subject"] == "Gift wrapping?"))
        {
            break t["id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the visitor's chat as a task: {tasks}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Alice takes it and writes from the task page (the demo's channel
    // relays): the visitor's page has her line.
    let took = client
        .post(format!("{url}/api/v1/tasks/{gift}/pickup"))
        .bearer_auth(&tokens["alice"])
        .send()
        .await
        .unwrap();
    assert!(took.status().is_success(), "{}", took.text().await.unwrap());
    let wrote = client
        .post(format!("{url}/api/v1/tasks/{gift}/chat-messages"))
        .bearer_auth(&tokens["alice"])
        .json(&serde_json::json!({"text": "Yes, we can wrap it."}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrote.status(), reqwest::StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines: serde_json::Value = client
            .get(format!("{chat}{chat_path}/lines"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if lines.as_array().is_some_and(|l| {
            l.iter()
                .any(|l| l["from"] == "agent" && l["text"] == "Yes, we can wrap it.")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "the relayed reply: {lines}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A second demo on the same folder is refused, and says why.
    let second = switchboard()
        .args(["demo", "--bind", "127.0.0.1:0"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("already running"), "{said}");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());

    // After a restart the same tokens (so the same sign-in links) work.
    let (
        mut child,
        Demo {
            url,
            chat,
            tokens: again,
        },
    ) = start_demo(dir.path());
    // The web chat keeps its chats too (data/web-chat.json).
    let kept: serde_json::Value = client
        .get(format!("{chat}{chat_path}/lines"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        kept[0]["text"], "Can you wrap my order as a gift?",
        "{kept}"
    );
    assert_eq!(again, tokens, "tokens kept across restarts");
    let r = client
        .get(format!("{url}/api/v1/me/sessions"))
        .bearer_auth(&tokens["alice"])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

/// A port in use is told before anything is written: no database is made.
#[test]
fn serve_on_a_port_in_use_fails_before_making_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let db = dir.path().join("new.db");
    let path = dir.path().join("s.toml");
    let text = base_config(&format!("sqlite://{}", db.display()))
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&path, text).unwrap();
    let out = switchboard()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        !db.exists(),
        "a database was made before the port was tried"
    );
    drop(taken);
}

/// A database that cannot be reached is told with its reason, and each
/// cause once (not "pool timed out"), after the pool's wait of 10 s for a
/// server still starting.
#[test]
fn an_unreachable_database_is_told_with_its_reason() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let out = switchboard()
        .arg("migrate")
        .env(
            "SWITCHBOARD_DATABASE_URL",
            format!("postgres://someone:secret-pw@127.0.0.1:{closed}/db"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    assert!(!stderr.contains("secret-pw"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
