//! The HTTP edge as a new user finds it: what agents may read about their
//! own work, error answers that say what is wrong without echoing the input,
//! the limits named in words, sign-in by cookie beside bearer tokens, and the
//! pages' static files and headers.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{Read, Write};
use support::app::{ADMIN, ALICE, BOB, CAROL, Db, TestApp};

/// The error message of an API answer.
fn message(b: &Value) -> &str {
    b["error"]["message"].as_str().unwrap_or_default()
}

async fn agents_read_their_queue_and_code_catalog(db: Db) {
    let app = TestApp::spawn(db).await;
    let old = app.new_task("email", "Older", "a@customer.example").await;
    let (s, urgent) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "call", "subject": "Urgent", "priority": 50, "customer": {"address": "+41 44 000 00 00"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{urgent}");
    let newer = app.new_task("im", "Newer", "b@customer.example").await;
    let (s, q) = app.get(ALICE, "/api/v1/me/queue").await;
    assert_eq!(s, StatusCode::OK, "{q}");
    let ids: Vec<&str> = q["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![urgent["id"].as_str().unwrap(), old.as_str(), newer.as_str()],
        "most urgent first, then the longest waiting"
    );
    assert_eq!(q["total"], 3);
    // Carol serves Sales only: none of Support's work.
    let (s, q) = app.get(CAROL, "/api/v1/me/queue").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(q["items"], json!([]));
    // Picked-up work leaves the queue.
    app.pickup(BOB, &old).await;
    let (_, q) = app.get(ALICE, "/api/v1/me/queue?limit=1").await;
    assert_eq!(q["total"], 2);
    assert_eq!(q["items"].as_array().unwrap().len(), 1);
    // The code catalog of their services, read-only.
    let (s, sv) = app.get(ALICE, "/api/v1/me/services").await;
    assert_eq!(s, StatusCode::OK, "{sv}");
    let support = &sv["items"][0];
    assert_eq!(support["id"], "support");
    assert_eq!(support["codes_enabled"], true);
    assert!(
        support["codes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["code"] == "billing" && c["kind"] == "primary"),
        "{sv}"
    );
    let (_, sv) = app.get(CAROL, "/api/v1/me/services").await;
    assert_eq!(sv["items"][0]["codes_enabled"], false);
    app.stop().await;
}

async fn error_answers_name_the_field_and_the_limit(db: Db) {
    let app = TestApp::spawn(db).await;
    let task = app.new_task("email", "Errors", "e@customer.example").await;
    let session = app.pickup(ALICE, &task).await;
    let wrapup = format!("/api/v1/sessions/{session}/wrapup");

    // Wrong JSON types: said without Rust's type names.
    let (s, b) = app.put(ALICE, &wrapup, json!({"codes": "billing"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        message(&b).contains("codes")
            && !message(&b).contains("struct")
            && !message(&b).contains("WrapUp"),
        "{b}"
    );
    // An array where an object belongs is refused, and nothing is cleared.
    let (s, _) = app.put(ALICE, &wrapup, json!({"tags": ["keep"]})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app.put(ALICE, &wrapup, json!([])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(message(&b).contains("JSON object"), "{b}");
    let (_, now) = app.get(ALICE, &format!("/api/v1/sessions/{session}")).await;
    assert_eq!(now["wrapup"]["tags"], json!(["keep"]), "[] cleared nothing");
    // Huge values are not echoed back.
    let big_tag = "t".repeat(100 * 1024);
    let (s, b) = app.put(ALICE, &wrapup, json!({"tags": [big_tag]})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        message(&b).contains("64 characters") && b.to_string().len() < 500,
        "{}",
        &b.to_string()[..200.min(b.to_string().len())]
    );
    // A long list within the body limit: refused by count, in a short answer.
    let many: Vec<&str> = vec!["a"; 400_000];
    let (s, b) = app.put(ALICE, &wrapup, json!({"tags": many})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        b.to_string().len() < 300 && message(&b).contains("at most 20 tags"),
        "{b}"
    );
    // A 1,000,000-item list is over the body limit: 413 naming it, before any of it is read.
    let addr = app.url.trim_start_matches("http://").to_string();
    let list_len = serde_json::to_vec(
        &json!({"tags": (0..1_000_000).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
    )
    .unwrap()
    .len();
    let answer = announce_body(&addr, &wrapup, list_len).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("over the limit of 2 MiB") && answer.len() < 600,
        "{answer}"
    );
    // A page size that is no number: the field, and what it must be.
    for (value, said) in [
        ("-1", "whole number of digits only"),
        ("1e3", "whole number of digits only"),
        ("99999999999999999999", "too large"),
        ("", "not empty"),
    ] {
        let (s, b) = app
            .get(ALICE, &format!("/api/v1/me/sessions?limit={value}"))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{value}: {b}");
        assert!(
            message(&b).contains("limit") && message(&b).contains(said),
            "{value}: {b}"
        );
    }
    // A body that may be left out may also be empty with its JSON type.
    let r = app
        .client
        .post(format!("{}/api/v1/admin/chat-handle-keys/rotate", app.url))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A blank idempotency key is refused: it would make every later post a retry.
    for blank in ["", "   "] {
        let (s, b) = app
            .post(
                ADMIN,
                "/api/v1/tasks",
                json!({"service": "support", "modality": "call", "external_id": blank}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(message(&b).contains("external_id"), "{b}");
    }
    // A misspelt modality in an agent's capacity is refused, not dropped.
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/agents/carol2",
            json!({"name": "Carol", "email": "carol2@example.com", "capacity": {"chat": 5}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        message(&b).contains("capacity") && message(&b).contains("chat"),
        "{b}"
    );
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/agents/carol2",
            json!({"name": "Carol", "email": "carol2@example.com", "capacity": {"im": 5}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["capacity"],
        json!({"email": 3, "im": 5, "call": 1}),
        "{b}"
    );
    let long_id = "x".repeat(60_000);
    let (s, b) = app.get(ALICE, &format!("/api/v1/tasks/{long_id}")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b.to_string().len() < 300 && message(&b).contains("200 characters"),
        "{b}"
    );
    let (s, b) = app
        .get(ALICE, &format!("/api/v1/tasks/{}", "y".repeat(150)))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(b.to_string().len() < 400, "{b}");
    // Never more than 40 characters of the input, however the message is made.
    for (path, long) in [
        (format!("/api/v1/tasks/{}", "y".repeat(150)), "y".repeat(41)),
        (
            format!("/api/v1/me/sessions?modality={}", "z".repeat(7000)),
            "z".repeat(41),
        ),
        (
            format!("/api/v1/me/sessions?{}=1", "k".repeat(500)),
            "k".repeat(41),
        ),
    ] {
        let (s, b) = app.get(ALICE, &path).await;
        assert!(s.is_client_error(), "{s}: {b}");
        assert!(!message(&b).contains(&long), "{path:.60}: {b}");
    }
    // A NUL (or another control character) in a query is refused by name,
    // on both backends (PostgreSQL cannot even hold it), for every search.
    for path in [
        "/api/v1/me/sessions?q=%00",
        "/api/v1/me/sessions?q=a%00b",
        "/api/v1/me/sessions?q=a%07b",
        "/api/v1/contacts?q=%00",
        "/api/v1/tasks?service=%00",
        "/api/v1/me/sessions?%00=1",
    ] {
        let (s, b) = app.get(ADMIN, path).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {b}");
        assert!(message(&b).contains("control character"), "{path}: {b}");
    }
    let (s, b) = app.get(ALICE, "/api/v1/me/sessions?q=%00").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(message(&b).contains("query parameter 'q'"), "{b}");
    // A limit that is no number in range says the range, whatever is wrong.
    for limit in ["99999999999", "-1", "ten", "0", "201"] {
        let (s, b) = app
            .get(ALICE, &format!("/api/v1/me/sessions?limit={limit}"))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{limit}: {b}");
        assert!(message(&b).contains("use 1 to 200"), "{limit}: {b}");
    }
    let (s, b) = app.get(ADMIN, "/api/v1/contacts?q=a&limit=ten").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(message(&b).contains("use 1 to 100"), "{b}");
    // A 30 MB body: 413 saying the limit.
    let answer = announce_body(&addr, &wrapup, 30 * 1024 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"code\":\"too_large\"") && answer.contains("2 MiB"),
        "{answer}"
    );
    // A long query gets our answer (very long ones are refused by the HTTP layer: see below).
    let (s, b) = app
        .get(
            ALICE,
            &format!("/api/v1/me/sessions?q={}", "q".repeat(20_000)),
        )
        .await;
    assert_eq!(s, StatusCode::URI_TOO_LONG, "{b}");
    assert!(message(&b).contains("8 KiB"), "{b}");
    // Drafts: [] is not an empty draft.
    let (s, d) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "new"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let resp = app
        .client
        .put(format!(
            "{}/api/v1/drafts/{}",
            app.url,
            d["id"].as_str().unwrap()
        ))
        .bearer_auth(ALICE)
        .header("if-match", "1")
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (_, d2) = app
        .get(
            ALICE,
            &format!("/api/v1/drafts/{}", d["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(d2["version"], d["version"], "nothing saved");
    // Unknown service: 422 on transfer as on POST /tasks.
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/transfer"),
            json!({"service": "nowhere"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        message(&b).contains("service: unknown service 'nowhere'"),
        "{b}"
    );
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "nowhere", "modality": "call"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        message(&b).contains("service: unknown service 'nowhere'"),
        "{b}"
    );
    app.stop().await;
}

on_both_backends!(
    agents_read_their_queue_and_code_catalog,
    error_answers_name_the_field_and_the_limit,
);

/// Announces a JSON body of `len` bytes for `PUT path` (as Alice), sends a
/// little of it, and returns the answer: a server that refuses it by its
/// length answers at once.
async fn announce_body(addr: &str, path: &str, len: usize) -> String {
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ALICE}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{{\"tags\": ["
    );
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || raw_http(&addr, head.as_bytes()))
        .await
        .unwrap()
}

/// Sends raw bytes and returns the whole answer.
fn raw_http(addr: &str, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Refusals at the protocol level are answered by hyper before any of our
/// code runs (a bare status, no body): we record what they are, and that the
/// server carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_refusals_come_from_the_http_layer() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let addr = app.url.trim_start_matches("http://").to_string();
    let nul = raw_http(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    );
    assert!(nul.starts_with("HTTP/1.1 400"), "{nul}");
    let negative = raw_http(
        &addr,
        b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    );
    assert!(negative.starts_with("HTTP/1.1 400"), "{negative}");
    let mut long = b"GET /api/v1/me/sessions?q=".to_vec();
    long.extend(std::iter::repeat_n(b'a', 100_000));
    long.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    let long = raw_http(&addr, &long);
    assert!(
        long.starts_with("HTTP/1.1 414"),
        "{}",
        &long[..long.len().min(200)]
    );
    let (s, _) = app.get(ALICE, "/api/v1/me/sessions").await;
    assert_eq!(s, StatusCode::OK, "still serving");
    app.stop().await;
}

#[tokio::test]
async fn static_files_are_ours_cached_and_compressed() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Signed out: the page sends you to sign in.
    let r = client.get(format!("{}/", app.url)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/sign-in");
    let r = client
        .get(format!("{}/sign-in", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "no inline script or style: {csp}");
    let html = r.text().await.unwrap();
    let scripts: Vec<&str> = html
        .split("<script src=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert_eq!(
        scripts.len(),
        3,
        "htmx, its SSE extension and ours: {scripts:?}"
    );
    for src in &scripts {
        assert!(src.starts_with("/static/"), "served from our origin: {src}");
        let r = client
            .get(format!("{}{src}", app.url))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{src}");
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(r.headers()["content-encoding"], "gzip");
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        assert!(
            src.contains(etag.trim_matches('"')),
            "the name carries the content hash"
        );
        let again = client
            .get(format!("{}{src}", app.url))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    }
    let r = client
        .get(format!("{}/static/nothing.js", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // A cookie that names no session is no session; the API says so in JSON.
    let r = client
        .get(format!("{}/api/v1/me/sessions", app.url))
        .header("cookie", "sb_session=0000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A wrong token on the sign-in form: the page says so.
    let r = client
        .post(format!("{}/sign-in", app.url))
        .form(&[("token", "not-a-real-token-at-all")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("unknown or has been revoked")
    );
    app.stop().await;
}

/// A task created without a mail: its preview says so instead of being blank.
#[tokio::test]
async fn a_preview_without_mail_says_so() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let task = app
        .new_task("email", "No mail here", "n@customer.example")
        .await;
    app.pickup(ALICE, &task).await;
    let r = app
        .client
        .get(format!("{}/api/v1/tasks/{task}/preview", app.url))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("This task has no email message"), "{html}");
    app.stop().await;
}

/// A TCP relay to PostgreSQL that a test can cut (every connection closed,
/// new ones refused) and mend, as a database that goes away and comes back.
struct Relay {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // refused: dropped at once
                }
                let mut watch = watch.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Relay { addr, cut }
    }
}

/// PostgreSQL going away: the readiness probe says so within seconds, and
/// requests get 503 with Retry-After (not a 500), then work again once it
/// is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_went_away_is_said_so_and_comes_back() {
    let db = support::app::TestDb::create(Db::Postgres).await;
    let url = reqwest::Url::parse(&db.url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let relay = Relay::start(upstream.clone()).await;
    let relayed = db.url.replacen(&upstream, &relay.addr.to_string(), 1);
    let app = TestApp::spawn_on(db, Some(support::app::base_config(&relayed))).await;
    let (s, b) = app.get(ALICE, "/api/v1/me/sessions").await;
    assert_eq!(s, StatusCode::OK, "{b}");

    relay.cut.send_replace(true);
    let asked = std::time::Instant::now();
    let ready = app
        .client
        .get(format!("{}/readyz", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        asked.elapsed() < std::time::Duration::from_secs(5),
        "a probe waits seconds, not the pool's whole wait: {:?}",
        asked.elapsed()
    );
    let r = app
        .client
        .get(format!("{}/api/v1/me/sessions", app.url))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "database_unavailable", "{b}");

    relay.cut.send_replace(false);
    let back = std::time::Instant::now();
    loop {
        let (s, _) = app.get(ALICE, "/api/v1/me/sessions").await;
        if s == StatusCode::OK {
            break;
        }
        assert!(
            back.elapsed() < std::time::Duration::from_secs(30),
            "the database is back, the API is not: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    app.stop().await;
}
