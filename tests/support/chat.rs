//! Chat test harness: signed webhook deliveries, a real Synapse homeserver
//! and a real NATS JetStream server (each started once per test binary, on
//! loopback, on a free port, in a temporary folder, and stopped when the
//! test binary exits, even after a failed assertion), Matrix users that
//! talk to it like a client would, and `switchboard serve` processes.
#![allow(dead_code)]
use super::app::TestDb;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `X-Switchboard-Signature` for `body` at `timestamp`, computed here from
/// the documented recipe (not with Switchboard's own code).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Posts a chat event signed with `secret` (timestamp now); the status, body
/// and whether it was answered as a replay.
pub async fn post_event(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    event: &Value,
) -> (StatusCode, Value, bool) {
    let body = serde_json::to_vec(event).expect("json");
    let ts = now_secs();
    post_raw(
        client,
        url,
        Some(&ts.to_string()),
        Some(&signature(secret, ts, &body)),
        body,
    )
    .await
}

/// Posts `body` with the given signing headers.
pub async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value, bool) {
    let mut req = client
        .post(format!("{url}/api/v1/chat/events"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = timestamp {
        req = req.header("x-switchboard-timestamp", t);
    }
    if let Some(s) = signature {
        req = req.header("x-switchboard-signature", s);
    }
    let resp = req.send().await.expect("the request reaches the server");
    let status = resp.status();
    let replay = resp.headers().contains_key("x-switchboard-replay");
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, replay)
}

/// A random suffix for names a test owns (users, streams).
pub fn unique() -> String {
    super::app::hex_id()[..10].to_string()
}

/// Starts `program` so that it is killed when this test binary exits in
/// any way: a shell holds it and waits on our end of a pipe; when the pipe
/// closes (our process is gone), the shell kills it.
fn spawn_watched(program: &Path, args: &[String], cwd: &Path, log: &Path) -> (Child, ChildStdin) {
    let script = "\"$@\" >\"$SB_LOG\" 2>&1 & child=$!; read -r _; kill \"$child\" 2>/dev/null; sleep 2; kill -9 \"$child\" 2>/dev/null";
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("bash")
        .arg(program)
        .args(args)
        .current_dir(cwd)
        .env("SB_LOG", log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash starts");
    let stdin = child.stdin.take().expect("stdin");
    (child, stdin)
}

fn port_free() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

/// A plain HTTP GET on loopback (blocking): the status line's code.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Synapse

/// A Synapse homeserver for this test binary.
pub struct Synapse {
    pub port: u16,
    pub dir: PathBuf,
    admin_token: String,
    _child: Mutex<(Child, ChildStdin)>,
    _tmp: tempfile::TempDir,
}

/// The virtual environment `scripts/install-deps` installs Synapse into.
pub fn synapse_venv() -> PathBuf {
    if let Ok(v) = std::env::var("SWITCHBOARD_TEST_SYNAPSE_VENV") {
        return PathBuf::from(v);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/switchboard/synapse-venv")
}

impl Synapse {
    /// The homeserver of this test binary, started on first use.
    pub fn shared() -> &'static Synapse {
        static SYNAPSE: OnceLock<Synapse> = OnceLock::new();
        SYNAPSE.get_or_init(Synapse::start)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start() -> Synapse {
        let venv = synapse_venv();
        let python = venv.join("bin/python");
        assert!(
            python.is_file(),
            "Synapse is needed for this test: run scripts/install-deps (it installs matrix-synapse into {})",
            venv.display()
        );
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let status = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--server-name", "localhost"])
            .args([
                "--config-path",
                "hs.yaml",
                "--generate-config",
                "--report-stats=no",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("synapse generates its configuration");
        assert!(status.success(), "synapse --generate-config failed");
        let port = port_free();
        let generated = std::fs::read_to_string(dir.join("hs.yaml")).expect("hs.yaml");
        let mut config = generated
            .replace("    - ::1\n", "")
            .replace("port: 8008", &format!("port: {port}"))
            .replace(
                "trusted_key_servers:\n  - server_name: \"matrix.org\"",
                "trusted_key_servers: []",
            );
        let fast = "{per_second: 100000, burst_count: 100000}";
        config.push_str(&format!(
            "\nsuppress_key_server_warning: true\n\
             rc_message: {fast}\n\
             rc_registration: {fast}\n\
             rc_login:\n  address: {fast}\n  account: {fast}\n  failed_attempts: {fast}\n\
             rc_joins:\n  local: {fast}\n  remote: {fast}\n\
             rc_joins_per_room: {fast}\n\
             rc_invites:\n  per_room: {fast}\n  per_user: {fast}\n  per_issuer: {fast}\n\
             rc_admin_redaction: {fast}\n\
             rc_room_creation: {fast}\n"
        ));
        std::fs::write(dir.join("hs.yaml"), config).expect("write hs.yaml");
        let (child, stdin) = spawn_watched(
            &python,
            &[
                "-m".into(),
                "synapse.app.homeserver".into(),
                "-c".into(),
                "hs.yaml".into(),
            ],
            &dir,
            &dir.join("synapse.out"),
        );
        let start = Instant::now();
        while http_status(port, "/_matrix/client/versions") != Some(200) {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "Synapse did not come up on port {port}: {}",
                std::fs::read_to_string(dir.join("synapse.out")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let admin = format!("sbadmin{}", unique());
        let out = Command::new(venv.join("bin/register_new_matrix_user"))
            .args([
                "-c",
                "hs.yaml",
                "-u",
                &admin,
                "-p",
                "admin-password",
                "--admin",
            ])
            .arg(format!("http://127.0.0.1:{port}"))
            .current_dir(&dir)
            .output()
            .expect("register_new_matrix_user runs");
        assert!(
            out.status.success(),
            "register_new_matrix_user failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let admin_token = blocking_login(port, &admin, "admin-password");
        Synapse {
            port,
            dir,
            admin_token,
            _child: Mutex::new((child, stdin)),
            _tmp: tmp,
        }
    }

    /// Creates a user (through the admin API) and logs them in.
    pub async fn user(&self, name: &str) -> MatrixUser {
        let client = reqwest::Client::new();
        let user_id = format!("@{name}:localhost");
        let resp = client
            .put(format!(
                "{}/_synapse/admin/v2/users/{}",
                self.url(),
                enc(&user_id)
            ))
            .bearer_auth(&self.admin_token)
            .json(&json!({"password": "user-password", "admin": false}))
            .send()
            .await
            .expect("admin API answers");
        assert!(resp.status().is_success(), "create user: {}", resp.status());
        let resp: Value = client
            .post(format!("{}/_matrix/client/v3/login", self.url()))
            .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": "user-password"}))
            .send()
            .await
            .expect("login answers")
            .json()
            .await
            .expect("login JSON");
        MatrixUser {
            base: self.url(),
            user_id,
            token: resp["access_token"]
                .as_str()
                .expect("access token")
                .to_string(),
            client,
        }
    }
}

fn blocking_login(port: u16, user: &str, password: &str) -> String {
    let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        s,
        "POST /_matrix/client/v3/login HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: Value = serde_json::from_str(json).unwrap_or_else(|_| panic!("login answer: {text}"));
    v["access_token"].as_str().expect("admin token").to_string()
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A Matrix account, used as its own client would.
#[derive(Clone)]
pub struct MatrixUser {
    pub base: String,
    pub user_id: String,
    pub token: String,
    client: reqwest::Client,
}

impl MatrixUser {
    async fn call(&self, req: reqwest::RequestBuilder) -> Value {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("synapse answers");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{} got {status}: {v}", self.user_id);
        v
    }

    /// Creates a private room inviting `invite`, who get power level 50
    /// (they may invite and remove people); the room id.
    pub async fn create_room(&self, name: &str, invite: &[&str]) -> String {
        // The creator has full power already (room version 12 refuses them in `users`).
        let mut users = serde_json::Map::new();
        for u in invite {
            users.insert(u.to_string(), json!(50));
        }
        let v = self
            .call(
                self.client
                    .post(format!("{}/_matrix/client/v3/createRoom", self.base))
                    .json(&json!({
                        "preset": "private_chat",
                        "name": name,
                        "invite": invite,
                        "power_level_content_override": {"users": users},
                    })),
            )
            .await;
        v["room_id"].as_str().expect("room id").to_string()
    }

    /// Sends a text message; its event id.
    pub async fn send(&self, room: &str, text: &str) -> String {
        let txn = unique();
        let v = self
            .call(
                self.client
                    .put(format!(
                        "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                        self.base,
                        enc(room)
                    ))
                    .json(&json!({"msgtype": "m.text", "body": text})),
            )
            .await;
        v["event_id"].as_str().expect("event id").to_string()
    }

    /// The latest messages of a room (newest first): (sender, body).
    pub async fn recent_messages(&self, room: &str) -> Vec<(String, String)> {
        let v = self
            .call(
                self.client
                    .get(format!(
                        "{}/_matrix/client/v3/rooms/{}/messages",
                        self.base,
                        enc(room)
                    ))
                    .query(&[("dir", "b"), ("limit", "50")]),
            )
            .await;
        v["chunk"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["type"] == "m.room.message")
                    .map(|e| {
                        (
                            e["sender"].as_str().unwrap_or_default().to_string(),
                            e["content"]["body"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Joins a room the user was invited to.
    pub async fn join(&self, room: &str) {
        self.call(
            self.client
                .post(format!(
                    "{}/_matrix/client/v3/rooms/{}/join",
                    self.base,
                    enc(room)
                ))
                .json(&json!({})),
        )
        .await;
    }

    /// Invites `user` into a room.
    pub async fn invite(&self, room: &str, user: &str) {
        self.call(
            self.client
                .post(format!(
                    "{}/_matrix/client/v3/rooms/{}/invite",
                    self.base,
                    enc(room)
                ))
                .json(&json!({"user_id": user})),
        )
        .await;
    }

    /// Leaves a room (or declines its invite).
    pub async fn leave(&self, room: &str) {
        self.call(
            self.client
                .post(format!(
                    "{}/_matrix/client/v3/rooms/{}/leave",
                    self.base,
                    enc(room)
                ))
                .json(&json!({})),
        )
        .await;
    }

    /// `user`'s membership of `room` as this user sees it.
    pub async fn membership_of(&self, room: &str, user: &str) -> Option<String> {
        let resp = self
            .client
            .get(format!(
                "{}/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                self.base,
                enc(room),
                enc(user)
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("synapse answers");
        if resp.status() == StatusCode::NOT_FOUND {
            return None;
        }
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        v["membership"].as_str().map(String::from)
    }

    /// One `/sync` (a second client's view): its JSON.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut q = vec![("timeout", timeout_ms.to_string())];
        if let Some(s) = since {
            q.push(("since", s.to_string()));
        }
        self.call(
            self.client
                .get(format!("{}/_matrix/client/v3/sync", self.base))
                .query(&q),
        )
        .await
    }
}

// ---------------------------------------------------------------------------
// NATS JetStream

/// A NATS server with JetStream: the machine's own on 127.0.0.1:4222 (or
/// `SWITCHBOARD_TEST_NATS_URL`) when it answers, else a throwaway
/// `nats-server -js` for this test binary.
pub struct Nats {
    pub url: String,
    _child: Option<Mutex<(Child, ChildStdin)>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Nats {
    pub fn shared() -> &'static Nats {
        static NATS: OnceLock<Nats> = OnceLock::new();
        NATS.get_or_init(Nats::start)
    }

    fn start() -> Nats {
        if let Ok(url) = std::env::var("SWITCHBOARD_TEST_NATS_URL") {
            return Nats {
                url,
                _child: None,
                _tmp: None,
            };
        }
        if answers(4222) {
            return Nats {
                url: "nats://127.0.0.1:4222".into(),
                _child: None,
                _tmp: None,
            };
        }
        let binary = nats_binary();
        let tmp = tempfile::tempdir().expect("temp dir");
        let port = port_free();
        let (child, stdin) = spawn_watched(
            &binary,
            &[
                "-js".into(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-sd".into(),
                tmp.path().join("js").display().to_string(),
            ],
            tmp.path(),
            &tmp.path().join("nats.out"),
        );
        let start = Instant::now();
        while !answers(port) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nats-server did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Nats {
            url: format!("nats://127.0.0.1:{port}"),
            _child: Some(Mutex::new((child, stdin))),
            _tmp: Some(tmp),
        }
    }

    /// A JetStream context on this server.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(&self.url).await.expect("NATS answers");
        async_nats::jetstream::new(client)
    }
}

fn nats_binary() -> PathBuf {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .expect("nats-server is needed for this test: run scripts/install-deps")
}

/// A `nats-server -js` of one test's own, on a port of its own, that the
/// test may stop (an outage) and start again on the same port with the
/// same storage (its streams and consumers kept); never the shared one.
pub struct PrivateNats {
    pub url: String,
    port: u16,
    tmp: tempfile::TempDir,
    child: Option<super::process::Guarded>,
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        let port = port_free();
        let mut nats = PrivateNats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            tmp: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        nats.restart();
        nats
    }

    /// Starts the server again (after [`PrivateNats::stop`]).
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.tmp.path().join("nats.out")).expect("log file");
        let child = Command::new(nats_binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.tmp.path().join("js"))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(super::process::Guarded::new(child));
        let start = Instant::now();
        while !answers(self.port) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "nats-server did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (SIGKILL): its clients lose their connection.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.sigkill();
        }
    }
}

/// A stream of the test's own, deleted when dropped.
pub struct TestStream {
    pub name: String,
    pub subject: String,
    url: String,
}

impl TestStream {
    pub async fn create(nats: &Nats) -> TestStream {
        TestStream::create_on(&nats.url).await
    }

    /// A stream on the NATS server at `url`.
    pub async fn create_on(url: &str) -> TestStream {
        let name = format!("SBTEST_{}", unique().to_uppercase());
        let subject = format!("sbtest.{}.events", unique());
        let client = async_nats::connect(url).await.expect("NATS answers");
        async_nats::jetstream::new(client)
            .create_stream(async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await
            .expect("create stream");
        TestStream {
            name,
            subject,
            url: url.to_string(),
        }
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = async_nats::connect(&url).await.ok()?;
                async_nats::jetstream::new(client)
                    .delete_stream(&name)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

// ---------------------------------------------------------------------------
// worker processes

/// A `switchboard serve` process, SIGKILLed when dropped.
pub struct Serve {
    child: Child,
}

impl Serve {
    pub fn start(config_path: &Path) -> Serve {
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--config"])
            .arg(config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("switchboard starts");
        Serve { child }
    }

    pub fn sigkill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.sigkill();
        }
    }
}

pub fn write_config(db: &TestDb, name: &str, text: &str) -> PathBuf {
    let path = db.dir().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// One value of a query on the test database, as text.
pub async fn query_text(db: &TestDb, sql: &str) -> Option<String> {
    use sqlx::Connection;
    let sql = format!("SELECT CAST(({sql}) AS TEXT)");
    if db.url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(&db.url).await.ok()?;
        sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&mut c)
            .await
            .ok()
            .flatten()
            .flatten()
    } else {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.ok()?;
        sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&mut c)
            .await
            .ok()
            .flatten()
            .flatten()
    }
}

pub async fn query_i64(db: &TestDb, sql: &str) -> i64 {
    query_text(db, sql)
        .await
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1)
}

/// Polls until `check` holds, or panics with `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
