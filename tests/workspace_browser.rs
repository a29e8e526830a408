//! The agents' workspace and the operators' page in a real browser (headless
//! Chromium over the DevTools protocol), against real instances: SQLite fed
//! by a Maildir, PostgreSQL fed by Dovecot over IMAP, replies sent to a real
//! SMTP server (aiosmtpd).
//!
//! Every host name the browser looks up resolves to a loopback "tripwire"
//! server (`--host-resolver-rules`), so a request that leaves our origin is
//! seen as a hit instead of a failed lookup. One browser serves every test of
//! this binary. Screenshots of the main screens go to `target/screenshots/`.
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::app::{ADMIN, ALICE, BOB, Db, TestApp, TestDb, base_config, maildir_config};
use support::browser::{Browser, Page};
use support::mail::{deliver_maildir, mail};
use support::servers::{Dovecot, DovecotOptions};
use support::smtp::{SmtpSink, SmtpSinkOptions};

const WAIT: Duration = Duration::from_secs(45);

// --- one browser and one tripwire per test binary -----------------------------------

/// Records every request that reached it (any host name maps here).
struct Tripwire {
    port: u16,
    hits: Arc<Mutex<Vec<String>>>,
}

fn tripwire() -> &'static Tripwire {
    static WIRE: OnceLock<Tripwire> = OnceLock::new();
    WIRE.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the tripwire");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seen = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                // The request head (or a TLS ClientHello, whose SNI names the host).
                let head: String = String::from_utf8_lossy(&buf[..n])
                    .chars()
                    .map(|c| if c.is_ascii_graphic() || c == ' ' || c == '\n' { c } else { '.' })
                    .take(600)
                    .collect();
                seen.lock().unwrap().push(head);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Tripwire { port, hits }
    })
}

fn browser() -> &'static Browser {
    static BROWSER: OnceLock<Browser> = OnceLock::new();
    BROWSER.get_or_init(|| {
        let port = tripwire().port;
        Browser::launch_with(&[format!(
            "--host-resolver-rules=MAP * 127.0.0.1:{port}, EXCLUDE 127.0.0.1"
        )])
    })
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

/// A screenshot of the whole page. The viewport grows to the page's height
/// first, so the sandboxed previews (rendered out of process) are painted.
async fn save_screenshot(page: &mut Page, name: &str) -> PathBuf {
    let height = page
        .eval("Math.ceil(document.documentElement.scrollHeight)")
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(800)
        .clamp(800, 4000) as u32;
    page.set_viewport(1280, height).await.expect("viewport");
    page.pump(Duration::from_millis(300)).await;
    let png = page.screenshot().await.expect("screenshot");
    page.set_viewport(1280, 800).await.expect("viewport");
    let path = screenshot_dir().join(name);
    std::fs::write(&path, png).expect("write screenshot");
    path
}

// --- driving the page ------------------------------------------------------------------

fn js(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Waits until `expr` is truthy in the page (handling its events meanwhile).
async fn wait_js(page: &mut Page, expr: &str, what: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = page.eval(expr).await.unwrap_or(Value::Null);
        if truthy(&v) {
            return v;
        }
        if Instant::now() > deadline {
            let status = page
                .eval("(document.querySelector('#status')||{}).textContent || ''")
                .await
                .unwrap_or_default();
            let url = page.eval("location.href").await.unwrap_or_default();
            panic!(
                "{what}: not within {WAIT:?} (at {url}; status line: {status}; console: {:?})",
                page.console
            );
        }
        page.pump(Duration::from_millis(100)).await;
    }
}

/// Whether `expr` becomes truthy in the page within `limit`.
async fn within(page: &mut Page, expr: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if truthy(&page.eval(expr).await.unwrap_or(Value::Null)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        page.pump(Duration::from_millis(100)).await;
    }
}

/// Runs `expr` (which answers `true` once it found its element and acted)
/// until it does: an element can lag the one a test waited for (the parser
/// yields mid-document on a busy machine, htmx swaps in steps).
async fn act(page: &mut Page, expr: &str, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if page.eval(expr).await.expect(what) == json!(true) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        page.pump(Duration::from_millis(50)).await;
    }
}

async fn click(page: &mut Page, selector: &str) {
    let expr = format!(
        "(() => {{ const e = document.querySelector({}); if (!e) return false; e.click(); return true; }})()",
        js(selector)
    );
    act(page, &expr, &format!("nothing to click at {selector}")).await;
}

async fn set_value(page: &mut Page, selector: &str, value: &str) {
    let expr = format!(
        "(() => {{ const e = document.querySelector({}); if (!e) return false; e.value = {}; \
         e.dispatchEvent(new Event('input', {{bubbles: true}})); e.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
        js(selector),
        js(value)
    );
    act(page, &expr, &format!("no field at {selector}")).await;
}

async fn text_of(page: &mut Page, selector: &str) -> String {
    page.eval(&format!(
        "(document.querySelector({}) || {{}}).textContent || ''",
        js(selector)
    ))
    .await
    .unwrap_or_default()
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Signs in through the form, as a person would, in a browser context of
/// its own (its own cookies); returns the tab and the context.
async fn sign_in(app: &TestApp, token: &str) -> Page {
    sign_in_at(&app.url, token).await
}

async fn sign_in_at(url: &str, token: &str) -> Page {
    let context = browser().new_context().await.expect("a browser context");
    sign_in_in(url, token, &context).await
}

async fn sign_in_in(url: &str, token: &str, context: &str) -> Page {
    let mut page = browser().new_page_in(Some(context)).await.expect("a tab");
    page.set_viewport(1280, 800).await.expect("viewport");
    page.navigate(&format!("{url}/sign-in"))
        .await
        .expect("sign-in page");
    wait_js(
        &mut page,
        "document.readyState !== 'loading' && !!document.querySelector('#sign-in #token')",
        "the sign-in form, parsed to its end",
    )
    .await;
    set_value(&mut page, "#token", token).await;
    click(&mut page, "#sign-in button[type=submit]").await;
    wait_js(
        &mut page,
        "location.pathname === '/' && !!document.querySelector('#session-list') && !!window.htmx && \
         document.querySelector('#live').dataset.connected === '1'",
        "My Sessions after sign-in, its event stream open",
    )
    .await;
    page
}

/// Requests of the tab that went anywhere but our origin.
fn foreign_requests(page: &Page, origin: &str) -> Vec<String> {
    page.sent_requests()
        .into_iter()
        .filter(|u| {
            !(u.starts_with(origin)
                || u.starts_with("data:")
                || u.starts_with("about:")
                || u.starts_with("blob:"))
        })
        .collect()
}

/// Hits of the tripwire that came from our pages: requests for the test
/// mails' hosts (`*.example`; for TLS, the name in the ClientHello). The
/// browser's own background traffic (update checks) is not ours to judge.
fn tripwire_hits() -> Vec<String> {
    tripwire()
        .hits
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.contains(".example"))
        .cloned()
        .collect()
}

// --- the instances ---------------------------------------------------------------------

fn smtp_section(port: u16) -> String {
    format!(
        "\n[smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout_secs = 5\nretry_base_secs = 1\n"
    )
}

/// Where the customer's mail goes in, per backend.
enum Inbox {
    Maildir(PathBuf),
    Dovecot(Dovecot),
}

impl Inbox {
    fn deliver(&self, name: &str, raw: &[u8]) {
        match self {
            Inbox::Maildir(root) => deliver_maildir(root, name, raw),
            Inbox::Dovecot(d) => d.deliver_lmtp("support", raw).expect("LMTP delivery"),
        }
    }
}

/// SQLite with a Maildir, PostgreSQL with Dovecot; both send to `sink`.
async fn spawn(db: Db, sink: &SmtpSink, routed: bool) -> (TestApp, Inbox) {
    let test_db = TestDb::create(db).await;
    // Routed: Support offers its tasks to the longest-idle available agent.
    let routing = |text: String| {
        if routed {
            text.replacen(
                "distribution = \"pickup\"",
                "distribution = \"longest_idle\"\nrona_timeout_secs = 120",
                1,
            ) + "\n[routing]\nsweep_ms = 200\n"
        } else {
            text
        }
    };
    match db {
        Db::Sqlite => {
            let root = test_db.dir().join("inbox");
            let text = routing(maildir_config(&test_db.url, &root) + &smtp_section(sink.port));
            (
                TestApp::spawn_on(test_db, Some(text)).await,
                Inbox::Maildir(root),
            )
        }
        Db::Postgres => {
            assert!(
                support::servers::available(),
                "Dovecot is needed: run scripts/install-deps"
            );
            let d = Dovecot::start(DovecotOptions { tls: false }).expect("Dovecot starts");
            let text = routing(format!(
                "{}{}\n[ingest]\nio_timeout_secs = 5\nmax_backoff_secs = 2\n\n[[mailboxes]]\nid = \"support-imap\"\nservice = \"support\"\nkind = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"support\"\npassword = \"{}\"\n",
                base_config(&test_db.url),
                smtp_section(sink.port),
                d.imap_port,
                d.password()
            ));
            (
                TestApp::spawn_on(test_db, Some(text)).await,
                Inbox::Dovecot(d),
            )
        }
    }
}

/// A customer mail whose HTML tries every way out of the page: remote
/// images, scripts, styles, frames, forms, refresh, plus the mXSS fixture.
fn hostile_mail(subject: &str, message_id: &str) -> Vec<u8> {
    let mxss = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/html/mxss.html"),
    )
    .expect("mxss fixture");
    let html = format!(
        r#"<p>Hello, order 77 arrived broken. Please refund it.</p>
<img src="http://tracker.example/pixel.gif?agent=1" width="1" height="1">
<img src="https://cdn.evil.example/banner.png">
<script>document.title='PWNED';window.PWNED=1;fetch('http://evil.example/script')</script>
<link rel="stylesheet" href="http://evil.example/style.css">
<style>@import url(http://evil.example/import.css); body {{ background: url(http://evil.example/bg.png) }}</style>
<iframe src="http://evil.example/frame"></iframe>
<form action="http://evil.example/steal"><input name="q" value="x"><button>Go</button></form>
<a href="javascript:alert('PWNED')">click me</a>
<meta http-equiv="refresh" content="0;url=http://evil.example/refresh">
<object data="http://evil.example/object.swf"></object>
<video poster="http://evil.example/poster.jpg"></video>
<svg><image href="http://evil.example/svg.png"/></svg>
{mxss}"#
    );
    let raw = format!(
        "From: Grace Hopper <grace@navy.example>\r\nTo: Support <support@example.com>\r\nSubject: {subject}\r\n\
         Date: Tue, 24 Nov 2026 08:00:00 +0000\r\nMessage-ID: <{message_id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello, order 77 arrived broken. Please refund it.\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{}\r\n--b1--\r\n",
        html.replace('\n', "\r\n")
    );
    raw.into_bytes()
}

// --- the agent's whole story -------------------------------------------------------------

async fn agent_story(db: Db) {
    assert!(
        support::smtp::available(),
        "aiosmtpd is needed: run scripts/install-deps"
    );
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let (app, inbox) = spawn(db, &sink, true).await;
    let tag = format!("{db:?}").to_lowercase();
    let before = tripwire_hits().len();

    // Sign in.
    let mut page = sign_in(&app, ALICE).await;
    page.eval("window.__sameDocument = 1")
        .await
        .expect("mark the document");

    // A customer's mail arrives and is offered to Alice (her page is open), live.
    let subject = format!("Broken order 77 ({tag})");
    inbox.deliver(
        "1.story.host",
        &hostile_mail(&subject, &format!("story-{tag}@navy.example")),
    );
    let task = wait_js(
        &mut page,
        &format!(
            "(() => {{ const o = Array.from(document.querySelectorAll('#offers .offer')).find(o => o.textContent.includes({})); return o ? o.dataset.task : null; }})()",
            js(&subject)
        ),
        "the mail offered in Incoming offers",
    )
    .await;
    let task = task.as_str().expect("task id").to_string();

    // Accept it: the session opens with the mail's preview.
    page.reset().await;
    click(
        &mut page,
        &format!("{} button[data-action=offer-accept]", offer_card(&task)),
    )
    .await;
    wait_js(
        &mut page,
        &format!(
            "(() => {{ const d = document.querySelector('#detail .session-detail'); return d && d.dataset.task === {} && !!document.querySelector('#detail iframe.preview[src]'); }})()",
            js(&task)
        ),
        "the accepted session with its preview",
    )
    .await;
    let session = page
        .eval("document.querySelector('#detail .session-detail').dataset.session")
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    // The preview loaded (in its sandboxed frame), and nothing left our origin.
    wait_js(
        &mut page,
        "performance.getEntriesByType('resource').some(e => e.name.includes('/preview?token='))",
        "the preview document",
    )
    .await;
    // Blocked remote images are said once, inside the preview (with its
    // own link to load them through Switchboard), not again by the page.
    assert_eq!(
        page.eval(
            "document.querySelectorAll('#detail .remote-note, #detail [data-action=remote]').length"
        )
        .await
        .unwrap(),
        json!(0),
        "no second notice on the page"
    );
    let preview = wait_js(
        &mut page,
        "(async () => { const f = document.querySelector('#detail iframe.preview[src]'); \
         const html = await (await fetch(f.getAttribute('src'))).text(); \
         const doc = new DOMParser().parseFromString(html, 'text/html'); \
         const links = Array.from(doc.querySelectorAll('a')).filter(a => a.textContent.includes('Load them through Switchboard')); \
         return JSON.stringify({notice: doc.body.textContent.includes('blocked to protect your privacy'), \
           links: links.length, href: links.length ? links[0].getAttribute('href') : null}); })()",
        "the preview's own notice",
    )
    .await;
    let preview: Value = serde_json::from_str(preview.as_str().unwrap()).unwrap();
    assert_eq!(
        (&preview["notice"], &preview["links"]),
        (&json!(true), &json!(1)),
        "{preview}"
    );
    let allow = preview["href"].as_str().expect("the link").to_string();
    let sandbox = page
        .eval("document.querySelector('#detail iframe.preview').getAttribute('sandbox')")
        .await
        .unwrap();
    assert_eq!(
        sandbox,
        json!("allow-popups allow-popups-to-escape-sandbox")
    );
    assert_eq!(
        page.eval("document.title").await.unwrap(),
        json!("My Sessions · Switchboard")
    );
    assert_eq!(
        page.eval("window.PWNED === undefined").await.unwrap(),
        json!(true)
    );
    assert!(page.dialogs.is_empty(), "dialogs: {:?}", page.dialogs);
    save_screenshot(&mut page, &format!("workspace-preview-{tag}.png")).await;

    // Remote images through our proxy only (the preview's link followed in
    // its frame, as its click does).
    page.eval(&format!(
        "document.querySelector('#detail iframe.preview').src = {}",
        js(&allow)
    ))
    .await
    .unwrap();
    wait_js(
        &mut page,
        "performance.getEntriesByType('resource').some(e => e.name.includes('remote=allow'))",
        "the preview with remote images through the proxy",
    )
    .await;
    // The frame's load event (its resource entry) came after its images were
    // asked for, through the proxy: anything that tried to leave did so by now.
    let foreign = foreign_requests(&page, &app.url);
    assert!(foreign.is_empty(), "requests left our origin: {foreign:?}");
    let hits = tripwire_hits()[before..].to_vec();
    assert!(hits.is_empty(), "the tripwire was reached: {hits:?}");

    // Reply with an attachment; the draft autosaves.
    click(
        &mut page,
        "#detail button[data-action=draft][data-kind=reply]",
    )
    .await;
    wait_js(
        &mut page,
        "(() => { const t = document.querySelector('.editor [name=to]'); return t && t.value.includes('grace@navy.example'); })()",
        "the reply editor prefilled from the draft",
    )
    .await;
    let body = page
        .eval("document.querySelector('.editor [name=body]').value")
        .await
        .unwrap();
    let words = format!("Dear Grace, the refund for order 77 is on its way ({tag}).");
    set_value(
        &mut page,
        ".editor [name=body]",
        &format!("{words}\n\n{}", body.as_str().unwrap_or_default()),
    )
    .await;
    wait_js(
        &mut page,
        "/Saved \\(version [2-9]/.test(document.querySelector('.editor .save-state').textContent)",
        "the autosave",
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file_path = dir.path().join("refund-note.txt");
    std::fs::write(&file_path, b"Refund note: 77 EUR back to your card.\n").unwrap();
    let input = page
        .call(
            "Runtime.evaluate",
            json!({"expression": "document.querySelector('.editor input[type=file]')"}),
        )
        .await
        .expect("the file input");
    page.call(
        "DOM.setFileInputFiles",
        json!({"files": [file_path.display().to_string()], "objectId": input["result"]["objectId"]}),
    )
    .await
    .expect("choose a file");
    let file_name = "refund-note.txt".to_string();
    wait_js(
        &mut page,
        &format!(
            "document.querySelector('.editor .attachment-list').textContent.includes({})",
            js(&file_name)
        ),
        "the attachment on the draft",
    )
    .await;
    save_screenshot(&mut page, &format!("workspace-editor-{tag}.png")).await;

    // Send: the SMTP server receives it, and the thread says so.
    click(&mut page, ".editor [data-editor=send]").await;
    let received = {
        let deadline = Instant::now() + WAIT;
        loop {
            let m = sink.messages();
            if !m.is_empty() || Instant::now() > deadline {
                break m;
            }
            page.pump(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(received.len(), 1, "one reply reached the SMTP server");
    let sent = received[0].text();
    assert!(sent.contains("refund for order 77 is on its way"), "{sent}");
    assert!(sent.contains(&file_name), "the attachment went out: {sent}");
    assert_eq!(received[0].rcpt_to, vec!["grace@navy.example".to_string()]);
    wait_js(
        &mut page,
        "Array.from(document.querySelectorAll('#thread .reply .badge')).some(b => b.textContent.trim() === 'Sent')",
        "the reply shown as sent on the thread (live)",
    )
    .await;

    // Mark as handled, codes and tags, Save: read-only, and the info icon is gone.
    assert_eq!(
        page.eval(&format!(
            "!!document.querySelector('#session-list .row[data-session=\"{session}\"] .info')"
        ))
        .await
        .unwrap(),
        json!(true),
        "the info icon is on the unsaved session"
    );
    // A second reply, written but not sent: Mark as handled says so first;
    // a second click goes on, keeps the draft and closes the editor.
    open_reply_editor(&mut page, "a second editor").await;
    set_value(&mut page, ".editor [name=body]", "One more thing I forgot.").await;
    click(&mut page, "#detail button[data-action=handled]").await;
    wait_js(
        &mut page,
        "/not sent/.test(document.querySelector('#status').textContent)",
        "the warning about the unsent reply",
    )
    .await;
    assert_eq!(
        page.eval("!!document.querySelector('#wrapup button[value=save]:not([disabled])')")
            .await
            .unwrap(),
        json!(false),
        "not handled on the first click"
    );
    // She ticks a code while the task is still live, and an integration
    // updates the task meanwhile: the details follow live, what she typed
    // and ticked stays.
    click(&mut page, "#wrapup input[name=primary][value=billing]").await;
    let (s, b) = app
        .send(
            app.request(reqwest::Method::PATCH, ADMIN, &format!("/api/v1/tasks/{task}"))
                .json(&json!({"customer": {"phone": "+41 44 555 66 77"}, "parameters": {"TicketId": "T-77"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    wait_js(
        &mut page,
        "/\\+41445556677/.test(document.querySelector('#details-widget').textContent) && \
         /T-77/.test(document.querySelector('#details-widget').textContent) && \
         document.querySelector('#wrapup input[name=primary][value=billing]').checked && \
         document.querySelector('.editor [name=body]').value === 'One more thing I forgot.'",
        "the integration's update shown live, the code and the editor kept",
    )
    .await;
    // Another tab of hers marks it handled meanwhile: this page, the editor
    // still open with what she typed and the code ticked, follows (the task
    // actions go, Save becomes possible).
    let (s, b) = app
        .post(ALICE, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    wait_js(
        &mut page,
        "!document.querySelector('#detail button[data-action=handled]')",
        "the task actions gone after the other tab's Mark as handled",
    )
    .await;
    wait_js(
        &mut page,
        "!!document.querySelector('#wrapup button[value=save]:not([disabled])')",
        "Save possible after the other tab's Mark as handled",
    )
    .await;
    wait_js(
        &mut page,
        "document.querySelector('.editor [name=body]').value === 'One more thing I forgot.'",
        "the editor kept with what she typed",
    )
    .await;
    click(&mut page, ".editor [data-editor=close]").await;
    wait_js(
        &mut page,
        "!!document.querySelector('#wrapup button[value=save]:not([disabled])') && !document.querySelector('.editor')",
        "Save enabled, the editor closed (its draft kept)",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('#wrapup input[name=primary][value=billing]').checked")
            .await
            .unwrap(),
        json!(true),
        "the code she ticked before the task was handled"
    );
    click(&mut page, "#wrapup input[name=secondary][value=refund]").await;
    set_value(&mut page, "#wrapup input[name=tags]", "refund, moth").await;
    // Save says so too, once.
    click(&mut page, "#wrapup button[value=save]").await;
    wait_js(
        &mut page,
        "/not sent/.test(document.querySelector('#status').textContent)",
        "the warning at Save",
    )
    .await;
    click(&mut page, "#wrapup button[value=save]").await;
    wait_js(
        &mut page,
        &format!(
            "!!document.querySelector('#detail .saved') && !document.querySelector('#wrapup') && \
             !!document.querySelector('#session-list .row[data-session=\"{session}\"]') && \
             !document.querySelector('#session-list .row[data-session=\"{session}\"] .info')"
        ),
        "the saved, read-only session without its info icon",
    )
    .await;
    let readonly = text_of(&mut page, "#wrapup-widget").await;
    assert!(
        readonly.contains("Billing")
            && readonly.contains("Refund")
            && readonly.contains("refund, moth"),
        "{readonly}"
    );
    assert_eq!(
        page.eval("window.__sameDocument").await.unwrap(),
        json!(1),
        "all of it without a reload"
    );
    save_screenshot(&mut page, &format!("workspace-saved-{tag}.png")).await;

    // The API agrees.
    let (s, b) = app.get(ALICE, &format!("/api/v1/sessions/{session}")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "concluded");
    assert_eq!(b["wrapup"]["codes"]["primary"], json!(["billing"]));
    assert_eq!(b["wrapup"]["tags"], json!(["refund", "moth"]));
    let foreign = foreign_requests(&page, &app.url);
    assert!(foreign.is_empty(), "requests left our origin: {foreign:?}");
    assert!(tripwire_hits()[before..].is_empty());
    page.close().await;
    app.stop().await;
}

on_both_backends!(agent_story);

/// Reply on the open session; waits for the editor (`what` says which).
async fn open_reply_editor(page: &mut Page, what: &str) {
    click(page, "#detail button[data-action=draft][data-kind=reply]").await;
    wait_js(
        page,
        "!!document.querySelector('.editor [name=body]')",
        what,
    )
    .await;
}

/// A customer's mail delivered into `inbox`, its task picked up by Alice:
/// the task's id and her session's.
async fn mail_picked_up(app: &TestApp, inbox: &Inbox, subject: &str) -> (String, String) {
    inbox.deliver(
        &format!("1.{}.host", subject.replace(' ', "-")),
        &support::mail::mail(
            "ada@analytical.example",
            subject,
            &format!("{}@analytical.example", subject.replace(' ', "-")),
            &[],
            "Hello",
        ),
    );
    let task = support::mail::wait_for(WAIT, "the task", || async {
        let (_, q) = app.get(ALICE, "/api/v1/me/queue").await;
        q["items"][0]["id"].as_str().map(String::from)
    })
    .await;
    let session = app.pickup(ALICE, &task).await;
    (task, session)
}

// --- a queued reply taken back --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_waiting_for_the_mail_server_is_taken_back_from_the_page() {
    let mut sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let (app, inbox) = spawn(Db::Sqlite, &sink, false).await;
    let (_, session) = mail_picked_up(&app, &inbox, "Take it back").await;
    let mut page = sign_in(&app, ALICE).await;
    page.navigate(&format!("{}/?session={session}", app.url))
        .await
        .unwrap();
    wait_js(
        &mut page,
        "!!document.querySelector('#detail .session-detail') && !!window.htmx",
        "the session",
    )
    .await;
    // The mail server is down: the reply waits in the outbox.
    sink.stop();
    open_reply_editor(&mut page, "the editor").await;
    set_value(&mut page, ".editor [name=body]", "Wrong figures, sorry").await;
    click(&mut page, ".editor [data-editor=send]").await;
    wait_js(
        &mut page,
        "!!document.querySelector('#thread .reply-queued button[data-action=unsend-draft]')",
        "the queued reply with Take back",
    )
    .await;
    // (A try in flight at the click answers 409, said on the page: clicked again.)
    let deadline = Instant::now() + WAIT;
    loop {
        click(
            &mut page,
            "#thread .reply-queued button[data-action=unsend-draft]",
        )
        .await;
        if within(
            &mut page,
            "!!document.querySelector('.editor [name=body]') && /Taken back/.test(document.querySelector('#status').textContent)",
            Duration::from_secs(5),
        )
        .await
        {
            break;
        }
        assert!(Instant::now() < deadline, "the reply was not taken back");
    }
    let draft = page
        .eval("document.querySelector('.editor').dataset.draft")
        .await
        .unwrap()
        .as_str()
        .expect("the draft in the editor")
        .to_string();
    let (_, d) = app.get(ALICE, &format!("/api/v1/drafts/{draft}")).await;
    assert_eq!(d["state"], "draft", "{d}");
    assert!(sink.messages().is_empty());
    // Closed, then Reply again: the unsent reply opens again, no second
    // (empty) draft beside it; Reply while it is open stays on it.
    click(&mut page, ".editor [data-editor=close]").await;
    wait_js(
        &mut page,
        &format!(
            "!document.querySelector('.editor [name=body]') && !!document.querySelector('#thread .reply-draft[data-draft={}]')",
            js(&draft)
        ),
        "the editor closed, the draft kept",
    )
    .await;
    for _ in 0..2 {
        click(
            &mut page,
            "#detail button[data-action=draft][data-kind=reply]",
        )
        .await;
        wait_js(
            &mut page,
            &format!(
                "(() => {{ const e = document.querySelector('.editor'); return !!e && e.dataset.draft === {} && !!document.querySelector('.editor [name=body]') && document.querySelector('.editor [name=body]').value.includes('Wrong figures'); }})()",
                js(&draft)
            ),
            "the same draft in the editor",
        )
        .await;
    }
    assert_eq!(app.count("SELECT count(*) FROM drafts").await, 1);
    // Transferred on, the draft can no longer be sent: Save is not held up
    // by it (no "send it first").
    click(&mut page, ".editor [data-editor=close]").await;
    act(
        &mut page,
        "(() => { const s = document.querySelector('#detail select[name=service]'); if (!s) return false; \
         s.value = 'sales'; s.closest('form').querySelector('button[type=submit]').click(); return true; })()",
        "the transfer to Sales",
    )
    .await;
    wait_js(
        &mut page,
        "document.querySelector('#detail .session-detail').dataset.holds === '0' && !!document.querySelector('#wrapup button[value=save]:not([disabled])')",
        "the part over, Save ready",
    )
    .await;
    // A double click: one save, and no error about the second.
    record_status(&mut page).await;
    page.eval("const b = document.querySelector('#wrapup button[value=save]'); b.click(); b.click(); true")
        .await
        .unwrap();
    wait_js(
        &mut page,
        "/Saved\\./.test(document.querySelector('#status').textContent)",
        "saved at the first click",
    )
    .await;
    page.pump(Duration::from_millis(500)).await;
    let said = page.eval("window.__said.join(' | ')").await.unwrap();
    assert!(
        !said.to_string().contains("a saved session is final")
            && !said.to_string().contains("changed meanwhile"),
        "{said}"
    );
    page.close().await;
    app.stop().await;
}

// --- two tabs on one draft ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_editing_one_draft_see_the_conflict() {
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let (app, inbox) = spawn(Db::Sqlite, &sink, false).await;
    let (task, session) = mail_picked_up(&app, &inbox, "Two tabs").await;
    let context = browser().new_context().await.expect("a browser context");
    let mut a = sign_in_in(&app.url, ALICE, &context).await;
    let mut b = browser()
        .new_page_in(Some(&context))
        .await
        .expect("second tab");
    b.set_viewport(1280, 800).await.unwrap();
    // Tab B hears no events at first: what it knows of the drafts made
    // meanwhile comes from asking the server.
    b.call(
        "Network.setBlockedURLs",
        json!({"urls": ["*/api/v1/me/events*"]}),
    )
    .await
    .expect("tab B's events blocked");
    for page in [&mut a, &mut b] {
        page.navigate(&format!("{}/?session={session}", app.url))
            .await
            .unwrap();
        wait_js(
            page,
            "!!document.querySelector('#detail .session-detail') && !!window.htmx",
            "the session",
        )
        .await;
    }
    // Tab A starts a reply; tab B continues the same draft.
    click(&mut a, "#detail button[data-action=draft][data-kind=reply]").await;
    wait_js(
        &mut a,
        "!!document.querySelector('.editor')",
        "editor in tab A",
    )
    .await;
    // The draft being edited is not also shown as a card below the editor
    // (the thread refreshes with it at the draft's event).
    let draft = a
        .eval("document.querySelector('.editor').dataset.draft")
        .await
        .unwrap()
        .as_str()
        .expect("the draft's id")
        .to_string();
    // Reply in tab B at once (before any event could have shown it there):
    // the page asks the server and opens A's draft, no second reply.
    click(&mut b, "#detail button[data-action=draft][data-kind=reply]").await;
    wait_js(
        &mut b,
        &format!(
            "(document.querySelector('.editor') || {{dataset: {{}}}}).dataset.draft === {}",
            js(&draft)
        ),
        "tab A's draft opened by Reply in tab B",
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM drafts").await, 1);
    // (Left open: closing saves it, which would make A's version stale.)
    // With its events: a draft made or discarded elsewhere shows in tab B's
    // thread live.
    b.call("Network.setBlockedURLs", json!({"urls": []}))
        .await
        .expect("tab B's events again");
    b.navigate(&format!("{}/?session={session}", app.url))
        .await
        .unwrap();
    wait_js(
        &mut b,
        "!!document.querySelector('#detail .session-detail') && !!window.htmx && \
         document.querySelector('#live').dataset.connected === '1'",
        "tab B with its events",
    )
    .await;
    let (s, fwd) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/drafts"),
            json!({"kind": "forward"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{fwd}");
    let fwd = fwd["id"].as_str().expect("the forward's id").to_string();
    let fwd_card = format!(
        "!!document.querySelector('#thread .reply[data-kind=forward][data-draft=\"{fwd}\"]')"
    );
    wait_js(&mut b, &fwd_card, "the new forward in tab B, live").await;
    let (s, body) = app
        .send(app.request(
            reqwest::Method::DELETE,
            ALICE,
            &format!("/api/v1/drafts/{fwd}"),
        ))
        .await;
    assert!(s.is_success(), "{s} {body}");
    wait_js(
        &mut b,
        &format!("!({fwd_card})"),
        "the discarded forward gone from tab B, live",
    )
    .await;
    let card = format!("#thread .reply[data-draft=\"{draft}\"]");
    let card_shown = format!(
        "(() => {{ const c = document.querySelector({}); return !!c && !c.hidden && c.getClientRects().length > 0; }})()",
        js(&card)
    );
    // Marked, so that its refresh is seen to have happened (the thread is
    // made anew) before the card is looked for.
    a.eval("document.querySelector('#thread').dataset.before = '1'; document.body.dispatchEvent(new CustomEvent('sb:changed'))")
        .await
        .unwrap();
    wait_js(
        &mut a,
        "!!document.querySelector('#thread') && !document.querySelector('#thread').dataset.before",
        "the thread refreshed",
    )
    .await;
    assert!(
        !within(&mut a, &card_shown, Duration::from_secs(1)).await,
        "the draft's card shows under its own editor"
    );
    // A small attachment is counted in bytes.
    let dir = tempfile::tempdir().expect("temp dir");
    let small = dir.path().join("tiny.txt");
    std::fs::write(&small, b"seventeen bytes!\n").unwrap();
    let input = a
        .call(
            "Runtime.evaluate",
            json!({"expression": "document.querySelector('.editor input[type=file]')"}),
        )
        .await
        .expect("the file input");
    a.call(
        "DOM.setFileInputFiles",
        json!({"files": [small.display().to_string()], "objectId": input["result"]["objectId"]}),
    )
    .await
    .expect("choose a file");
    wait_js(
        &mut a,
        "document.querySelector('.editor .attachment-list').textContent.includes('tiny.txt (17 bytes)')",
        "the small attachment in bytes",
    )
    .await;
    b.navigate(&format!("{}/?session={session}", app.url))
        .await
        .unwrap();
    wait_js(
        &mut b,
        "!!document.querySelector('#thread button[data-action=edit-draft]')",
        "the draft in tab B",
    )
    .await;
    click(&mut b, "#thread button[data-action=edit-draft]").await;
    wait_js(
        &mut b,
        "!!document.querySelector('.editor')",
        "editor in tab B",
    )
    .await;
    assert!(
        !within(&mut b, &card_shown, Duration::from_secs(2)).await,
        "the draft's card shows under the editor continuing it"
    );
    // A saves first; B's older version is refused and says so.
    set_value(&mut a, ".editor [name=body]", "Written in tab A").await;
    wait_js(
        &mut a,
        // It said "Attached" until this save.
        "/Saved \\(version [2-9]/.test(document.querySelector('.editor .save-state').textContent)",
        "A's autosave",
    )
    .await;
    set_value(&mut b, ".editor [name=body]", "Written in tab B").await;
    wait_js(
        &mut b,
        "!document.querySelector('.editor .conflict').hidden",
        "the conflict in tab B",
    )
    .await;
    let said = text_of(&mut b, ".editor .conflict-text").await;
    assert!(said.contains("changed in another tab"), "{said}");
    assert!(
        !said.contains("drf_")
            && !said.contains("is at version")
            && !said.contains("someone saved"),
        "no ids or versions in the words: {said}"
    );
    save_screenshot(&mut b, "workspace-conflict.png").await;
    // Nothing was overwritten; B can load A's version.
    let drafts = app
        .count("SELECT count(*) FROM drafts WHERE body_text = 'Written in tab A'")
        .await;
    assert_eq!(drafts, 1, "tab A's text is what is stored");
    click(&mut b, ".editor [data-editor=reload]").await;
    wait_js(
        &mut b,
        "document.querySelector('.editor [name=body]').value === 'Written in tab A' && document.querySelector('.editor .conflict').hidden",
        "tab B showing the saved version",
    )
    .await;
    // Transfer from the page: the session ends as Transferred, in words and colour.
    // Chosen and sent in one step: a live refresh of the detail between the
    // two would send the new form unchosen.
    act(
        &mut b,
        "(() => { const s = document.querySelector('#detail form.transfer select'); if (!s) return false; \
         s.value = 'sales'; s.closest('form').querySelector('button[type=submit]').click(); return true; })()",
        "nothing to transfer with",
    )
    .await;
    wait_js(
        &mut b,
        &format!(
            "(() => {{ const r = document.querySelector('#session-list .row[data-session=\"{session}\"]'); \
             return r && r.classList.contains('r-transferred') && r.textContent.includes('Transferred') && \
             document.querySelector('#detail .badge').textContent.includes('Transferred'); }})()"
        ),
        "the transferred session",
    )
    .await;
    wait_js(
        &mut b,
        "/now in Sales/.test(document.querySelector('#details-widget').textContent)",
        "where the task went, by the service's name",
    )
    .await;
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(
        (t["service"].as_str(), t["state"].as_str()),
        (Some("sales"), Some("queued"))
    );
    a.close().await;
    b.close().await;
    app.stop().await;
}

// --- CSRF, sign-out, revoked tokens -------------------------------------------------------------

/// Signs in over plain HTTP; returns the cookie (`name=value`).
async fn cookie_for(app: &TestApp, token: &str) -> String {
    let r = app.sign_in_form(token).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(token), "the cookie is not the token");
    set.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_is_required_and_signed_out_agents_are_bounced() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let task = app.new_task("email", "CSRF", "x@customer.example").await;
    let cookie = cookie_for(&app, ALICE).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client
        .get(format!("{}/", app.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the CSRF token in the page")
        .to_string();
    assert!(
        !html.contains("<script>") && !html.contains("style=\""),
        "no inline script or style"
    );
    let pickup = format!("{}/api/v1/tasks/{task}/pickup", app.url);
    // Without the token: refused, and nothing happened.
    let r = client
        .post(&pickup)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "csrf", "{b}");
    // With a wrong token, or from another site: refused.
    let r = client
        .post(&pickup)
        .header("cookie", &cookie)
        .header("x-csrf-token", "0".repeat(40))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client
        .post(&pickup)
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Endpoints open to integrations too (cancel, PATCH) check it as well.
    let admin_cookie = cookie_for(&app, ADMIN).await;
    let r = client
        .post(format!("{}/api/v1/tasks/{task}/cancel", app.url))
        .header("cookie", &admin_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "csrf", "{b}");
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["state"], "queued", "no refused request changed anything");
    // With it (and our own origin): done.
    let r = client
        .post(&pickup)
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", &app.url)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    // Bearer tokens keep working without any of this.
    let (s, _) = app.get(ALICE, "/api/v1/me/sessions").await;
    assert_eq!(s, StatusCode::OK);
    // Sign-out needs the token too.
    let r = client
        .post(format!("{}/sign-out", app.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A fragment asked for without a sign-in sends the page to sign in,
    // then back to where it was (its search and open session), never to
    // another site.
    for (current, expected) in [
        (
            format!("{}/?q=Bulk&session=ses_1", app.url),
            "/sign-in?next=%2F%3Fq%3DBulk%26session%3Dses_1",
        ),
        (
            "https://evil.example//evil.example/x".to_string(),
            "/sign-in",
        ),
        (format!("{}/", app.url), "/sign-in"),
    ] {
        let r = client
            .get(format!("{}/ui/sessions", app.url))
            .header("hx-request", "true")
            .header("hx-current-url", &current)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["hx-redirect"], expected, "{current}");
    }

    // In the browser: sign out, then the page sends you to sign in.
    let mut page = sign_in(&app, BOB).await;
    click(&mut page, "form[action='/sign-out'] button").await;
    wait_js(
        &mut page,
        "location.pathname === '/sign-in'",
        "the sign-in page after sign-out",
    )
    .await;
    page.navigate(&format!("{}/", app.url)).await.unwrap();
    wait_js(
        &mut page,
        "location.pathname === '/sign-in' && !!document.querySelector('#sign-in')",
        "bounced to sign-in",
    )
    .await;
    save_screenshot(&mut page, "sign-in.png").await;

    // Revoked: the open page notices by itself and goes to sign-in.
    let mut page = sign_in(&app, ALICE).await;
    let new_token = "alice-new-token-0123456789";
    let (s, b) = app
        .put(
            ADMIN,
            "/api/v1/admin/agents/alice",
            json!({"name": "Alice", "email": "alice@example.com", "token": new_token, "services": ["support"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    wait_js(
        &mut page,
        "location.pathname === '/sign-in'",
        "a revoked agent bounced to sign-in",
    )
    .await;
    // The old browser session is gone for good; the API says so in words.
    let r = client
        .get(format!("{}/api/v1/me/sessions", app.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let b: Value = r.json().await.unwrap();
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sign in again"),
        "{b}"
    );
    page.close().await;
    app.stop().await;
}

/// A sign-in link opened while signed in: the token leaves the address bar
/// at once and the agent chooses (no silent switch to another agent);
/// choosing the link signs in as its agent. After signing out, a link
/// opened in the same tab (only the fragment changes) signs in without a
/// reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_link_while_signed_in_asks_and_never_stays_in_the_address_bar() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut page = sign_in(&app, ALICE).await;
    page.navigate(&format!("{}/sign-in#token={BOB}", app.url))
        .await
        .unwrap();
    wait_js(
        &mut page,
        "location.pathname === '/' && location.hash === '' && \
         !!document.querySelector('#status form[action=\"/sign-in\"]')",
        "the question, with the token gone from the address bar",
    )
    .await;
    assert!(text_of(&mut page, ".who").await.contains("alice"));
    assert!(
        text_of(&mut page, "#status")
            .await
            .contains("already signed in"),
        "{}",
        text_of(&mut page, "#status").await
    );
    click(&mut page, "#status form button[type=submit]").await;
    wait_js(
        &mut page,
        "location.pathname === '/' && (document.querySelector('.who')||{}).textContent.includes('bob')",
        "signed in as Bob through the link",
    )
    .await;
    // Alice's browser session ended with the new sign-in.
    let open = app
        .count("SELECT count(*) FROM web_sessions WHERE agent_id = 'alice'")
        .await;
    assert_eq!(open, 0, "Alice's old browser session is over");
    let offline = |who: &'static str| {
        format!("SELECT count(*) FROM agents WHERE id = '{who}' AND presence = 'offline'")
    };
    assert_eq!(
        app.count(&offline("alice")).await,
        1,
        "signed out of her last browser session: offline"
    );
    // Signed out, then a link in the same tab: only the fragment changes.
    click(&mut page, "form[action='/sign-out'] button").await;
    wait_js(
        &mut page,
        "location.pathname === '/sign-in' && !!document.querySelector('#sign-in #token')",
        "the sign-in page after signing out",
    )
    .await;
    assert_eq!(
        app.count(&offline("bob")).await,
        1,
        "Bob signed out: offline"
    );
    page.eval(&format!(
        "location.hash = {}; true",
        js(&format!("#token={ALICE}"))
    ))
    .await
    .unwrap();
    wait_js(
        &mut page,
        "location.pathname === '/' && location.hash === '' && (document.querySelector('.who')||{}).textContent.includes('alice')",
        "signed in as Alice from a link in the same tab",
    )
    .await;
    page.close().await;
    app.stop().await;
}

/// The race behind a sign-in through the question above: the form ends the
/// old session at once, and a request of the page still loading comes back
/// 401 before the form's answer. htmx's bounce (HX-Redirect) must not
/// navigate then: it would cancel the form's navigation and its cookie, and
/// leave the agent on the sign-in page. Played in order here: the form is
/// on its way (its submit seen), the session ends, a list is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_while_a_sign_in_form_is_on_its_way_does_not_navigate() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let mut page = sign_in(&app, ALICE).await;
    wait_js(
        &mut page,
        "!!window.htmx && !!document.querySelector('#offers')",
        "the workspace",
    )
    .await;
    let result = page
        .eval(
            "(async () => {
               let went = null;
               navigation.addEventListener('navigate', (e) => {
                 went = e.destination.url;
                 if (e.cancelable) e.preventDefault();
               });
               // The sign-in form's submit, as the page's capture listener sees it
               // (a synthetic event sends nothing).
               const form = document.createElement('form');
               form.setAttribute('action', '/sign-in');
               form.method = 'post';
               document.body.append(form);
               form.dispatchEvent(new Event('submit', { bubbles: true, cancelable: true }));
               form.remove();
               // The session ends (as the form's POST ends it on the server).
               const csrf = document.querySelector('meta[name=\"csrf-token\"]').content;
               const out = await fetch('/sign-out', { method: 'POST', headers: { 'X-CSRF-Token': csrf }, redirect: 'manual' });
               const ping = await fetch('/ui/ping', { headers: { Accept: 'application/json' } });
               // A list of the page answered after that.
               let status = 0;
               document.body.addEventListener('htmx:afterRequest', (e) => { status = e.detail.xhr.status; }, { once: true });
               await htmx.ajax('GET', '/ui/offers', { target: '#offers', swap: 'innerHTML' });
               // Also when the element that asked has left the page meanwhile
               // (a live refresh replaced it): its events reach no listener.
               const gone = document.createElement('div');
               document.body.append(gone);
               const asked = htmx.ajax('GET', '/ui/offers', { source: gone, target: gone });
               gone.remove();
               await asked;
               return { out: out.type, ping: ping.status, status, went };
             })()",
        )
        .await
        .expect("the script runs");
    assert_eq!(result["ping"], json!(401), "the session ended: {result}");
    assert_eq!(
        result["status"],
        json!(401),
        "the list was refused: {result}"
    );
    assert_eq!(
        result["went"],
        Value::Null,
        "no navigation while the form is on its way: {result}"
    );
    page.close().await;
    app.stop().await;
}

// --- the operators' page ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_retries_and_releases_quarantined_mail() {
    let db = TestDb::create(Db::Sqlite).await;
    let root = db.dir().join("inbox");
    let text = maildir_config(&db.url, &root).replace(
        "maildir_settle_ms = 300\n",
        "maildir_settle_ms = 300\nmax_message_bytes = 100000\n",
    );
    let app = TestApp::spawn_on(db, Some(text)).await;
    deliver_maildir(
        &root,
        "1.bad.host",
        b"\x00\x01\x02 this is not a mail at all \xff\xfe",
    );
    // Agents do not get the page.
    let mut agent = sign_in(&app, ALICE).await;
    agent.navigate(&format!("{}/ops", app.url)).await.unwrap();
    wait_js(
        &mut agent,
        "document.body.textContent.includes('for administrators')",
        "the refusal in words",
    )
    .await;
    agent.close().await;

    let mut page = sign_in(&app, ADMIN).await;
    page.navigate(&format!("{}/ops", app.url)).await.unwrap();
    wait_js(
        &mut page,
        "!!document.querySelector('#quarantine tr[data-quarantine] button[data-action=q-retry]')",
        "the quarantined mail, live",
    )
    .await;
    wait_js(
        &mut page,
        "document.querySelector('#mailboxes').textContent.includes('inbox')",
        "the mailbox",
    )
    .await;
    save_screenshot(&mut page, "ops.png").await;
    // Retry: it still cannot be read, and the page says why.
    click(&mut page, "#quarantine button[data-action=q-retry]").await;
    wait_js(
        &mut page,
        "/still cannot take it in/i.test(document.querySelector('#status').textContent)",
        "the retry's answer in words",
    )
    .await;
    // Release: a task, and the entry leaves the list.
    click(&mut page, "#quarantine button[data-action=q-release]").await;
    wait_js(
        &mut page,
        "document.querySelector('#status').textContent.includes('1 new task')",
        "the release's answer",
    )
    .await;
    wait_js(
        &mut page,
        "!document.querySelector('#quarantine tr[data-quarantine]')",
        "the list without it",
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 1);

    // A mail over the size limit: its source stays in the mailbox, and
    // Release fetches it again to take it in.
    deliver_maildir(
        &root,
        "3.big.host",
        &mail(
            "big@customer.example",
            "Scans attached",
            "big1@customer.example",
            &[],
            &"scan line\n".repeat(15_000),
        ),
    );
    wait_js(
        &mut page,
        "!!document.querySelector('#quarantine tr[data-quarantine] button[data-action=q-release]') && document.querySelector('#quarantine').textContent.includes('still in its mailbox')",
        "the too-large mail with Release, live",
    )
    .await;
    click(&mut page, "#quarantine button[data-action=q-release]").await;
    wait_js(
        &mut page,
        "!document.querySelector('#quarantine tr[data-quarantine]')",
        "the list without it",
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 2);

    // A customer's mail taken for an auto-reply is kept without a task;
    // Make a task queues it.
    deliver_maildir(
        &root,
        "2.form.host",
        &mail(
            "anna@customer.example",
            "Contact form: refund",
            "form2@customer.example",
            &[("Auto-Submitted", "auto-generated")],
            "Please refund order 4711.",
        ),
    );
    wait_js(
        &mut page,
        "!!document.querySelector('#recorded tr[data-recorded] button[data-action=recorded-task]') && document.querySelector('#recorded').textContent.includes('Contact form: refund')",
        "the recorded mail, live",
    )
    .await;
    click(&mut page, "#recorded button[data-action=recorded-task]").await;
    wait_js(
        &mut page,
        "document.querySelector('#status').textContent.includes('Made a task')",
        "the answer in words",
    )
    .await;
    wait_js(
        &mut page,
        "!document.querySelector('#recorded tr[data-recorded]')",
        "the list without it",
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM tasks").await, 3);
    page.close().await;
    app.stop().await;
}

// --- history, search and the keyboard ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_loads_on_scroll_filters_and_keyboard() {
    let app = TestApp::spawn(Db::Sqlite).await;
    // 55 concluded sessions (declined and RONA offers), one of them findable.
    for i in 0..55 {
        let subject = if i == 7 {
            "Special parcel".to_string()
        } else {
            format!("Call {i}")
        };
        let result = if i % 2 == 0 { "declined" } else { "rona" };
        let (s, b) = app
            .post(
                ADMIN,
                "/api/v1/tasks",
                json!({"service": "support", "modality": "call", "subject": subject,
                       "customer": {"address": format!("+4144000{i:04}")},
                       "outcome": {"agent": "alice", "result": result}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let mut page = sign_in(&app, ALICE).await;
    let rows = "document.querySelectorAll('#session-list .row').length";
    assert_eq!(
        page.eval(rows).await.unwrap(),
        json!(50),
        "the first page of history"
    );
    let words = text_of(&mut page, "#session-list").await;
    assert!(
        words.contains("Declined") && words.contains("RONA"),
        "results in words"
    );
    assert_eq!(
        page.eval("getComputedStyle(document.querySelector('#session-list .row.r-rona')).borderLeftColor !== getComputedStyle(document.querySelector('#session-list .row.r-declined')).borderLeftColor")
            .await
            .unwrap(),
        json!(true),
        "results as coloured borders"
    );
    // Older sessions load as the list scrolls inside itself: the window
    // shows the list's end first, then the list scrolls (no window scroll
    // then, which is all htmx's `revealed` looks at).
    page.eval("document.querySelector('#session-list').scrollIntoView({block: 'end'})")
        .await
        .unwrap();
    wait_js(
        &mut page,
        "(() => { const r = document.querySelector('#session-list').getBoundingClientRect(); return r.bottom <= innerHeight + 1; })()",
        "the list's end in the window",
    )
    .await;
    // htmx looks for `revealed` 200 ms after a window scroll: past that,
    // only a trigger that watches the list itself can load.
    tokio::time::sleep(Duration::from_millis(600)).await;
    page.eval("const l = document.querySelector('#session-list'); l.scrollTop = l.scrollHeight")
        .await
        .unwrap();
    wait_js(&mut page, &format!("{rows} === 55"), "the older sessions").await;
    // Search.
    set_value(&mut page, "#q", "special").await;
    wait_js(
        &mut page,
        &format!("{rows} === 1 && document.querySelector('#session-list').textContent.includes('Special parcel')"),
        "the search result",
    )
    .await;
    // The keyboard: focus the entry, Enter opens it. The list may be swapped
    // again meanwhile (the search's input and change events each load it,
    // live events too), taking the focus with the old row: then again.
    let opened = "!!document.querySelector('#detail .session-detail') && document.querySelector('#detail h2').textContent.includes('Special parcel')";
    let deadline = Instant::now() + WAIT;
    loop {
        page.eval("document.querySelector('#session-list .row-link').focus()")
            .await
            .unwrap();
        for kind in ["keyDown", "keyUp"] {
            page.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": if kind == "keyDown" { "\r" } else { "" }}),
            )
            .await
            .expect("key");
        }
        if within(&mut page, opened, Duration::from_secs(3)).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session opened with Enter: not within {WAIT:?}"
        );
    }
    let readonly = text_of(&mut page, "#wrapup-widget").await;
    assert!(
        readonly.contains("ended without being answered"),
        "{readonly}"
    );
    // A historic session of a service that keeps no context says so.
    let details = text_of(&mut page, "#details-widget").await;
    assert!(
        details.contains("not available (this service does not keep session details"),
        "{details}"
    );
    page.close().await;
    app.stop().await;
}

// --- the demo, as a newcomer meets it ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_opens_onto_the_workspace_and_a_reply_lands_in_the_outbox() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let tokens = switchboard::demo::demo_tokens(&data).expect("demo tokens");
    let mut config = switchboard::demo::demo_config(&data, "127.0.0.1:0", &tokens);
    let (web_chat, chat_template) =
        switchboard::demo::start_web_chat(&data, "127.0.0.1:0", &tokens, &mut config)
            .await
            .expect("the simulated web chat");
    let maildir = data.join("maildir");
    switchboard::ingest::maildir::ensure_layout(&maildir).unwrap();
    let running = switchboard::app::Running::start(&config)
        .await
        .expect("the demo starts");
    switchboard::demo::seed(&running.store)
        .await
        .expect("demo data");
    switchboard::demo::deliver_samples(&maildir).unwrap();
    let url = running.url();
    web_chat.connect(&url);

    // The sign-in link the demo prints (the token in the fragment).
    let context = browser().new_context().await.expect("a browser context");
    let mut page = browser().new_page_in(Some(&context)).await.expect("a tab");
    page.set_viewport(1280, 800).await.unwrap();
    page.navigate(&format!("{url}/sign-in#token={}", tokens["alice"]))
        .await
        .unwrap();
    wait_js(
        &mut page,
        "location.pathname === '/' && document.querySelectorAll('#session-list .row').length >= 6 && !!window.htmx",
        "My Sessions of the demo",
    )
    .await;
    // Support offers the sample mails and the simulated chat to Alice, whose
    // page is open: cards with Accept and Decline.
    let chat = switchboard::demo::first_chat(&web_chat)
        .await
        .expect("the simulated chat");
    assert!(chat.starts_with("demo-"));
    wait_js(
        &mut page,
        "Array.from(document.querySelectorAll('#offers .offer')).some(o => o.textContent.includes('Where is my parcel?')) && \
         document.querySelectorAll('#offers .offer').length >= 2",
        "the demo's offers: mail and the chat",
    )
    .await;
    save_screenshot(&mut page, "demo-offers.png").await;
    page.eval(
        "(() => { const o = Array.from(document.querySelectorAll('#offers .offer')).find(o => o.textContent.includes('Where is my parcel?')); o.querySelector('button[data-action=offer-accept]').click(); return true; })()",
    )
    .await
    .unwrap();
    wait_js(
        &mut page,
        "!!document.querySelector('#detail h2') && document.querySelector('#detail h2').textContent.includes('Where is my parcel?') && \
         document.querySelector('#detail').textContent.includes('has not arrived')",
        "the accepted chat with its transcript",
    )
    .await;
    // Open chat leads to the simulated chat system's own page (a new tab,
    // through the open-chat handle), where Alice answers the visitor; her
    // line comes back as the chat system's event and shows in the
    // workspace's transcript, live.
    let chat_page = chat_template
        .replace("{chat_id}", &chat)
        .replace("{agent_id}", "alice");
    let tab = open_chat(&mut page, context.as_str(), &chat_page).await;
    let http = reqwest::Client::new();
    let html = http
        .get(&chat_page)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("You answer as <b>Alice Example</b>"),
        "{html}"
    );
    assert!(
        html.contains("has not arrived"),
        "the visitor's lines: {html}"
    );
    let lines = chat_page.split('?').next().unwrap().to_string() + "/lines";
    let sent = http
        .post(&lines)
        .json(&json!({"text": "Your parcel leaves the depot today.", "agent": "alice"}))
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success(), "{}", sent.text().await.unwrap());
    wait_js(
        &mut page,
        "document.querySelector('#transcript').textContent.includes('Your parcel leaves the depot today.')",
        "Alice's answer from the chat system, in the transcript",
    )
    .await;
    close_tab(&tab).await;
    // Alice's live email has its mail: open it, read, reply. (The list is
    // refreshed live after the accept: a click on a row the refresh has
    // just replaced is lost, as it would be for a user, who clicks again.)
    wait_js(
        &mut page,
        "(() => { const h = document.querySelector('#detail h2'); \
         if (h && h.textContent.includes('Refund for order 77') && !!document.querySelector('#detail iframe.preview[src]')) return true; \
         if (!window.__refundClicked || Date.now() - window.__refundClicked > 2000) { \
           const a = Array.from(document.querySelectorAll('#session-list .row-link')).find(a => a.textContent.includes('Refund for order 77')); \
           if (a) { a.click(); window.__refundClicked = Date.now(); } } \
         return false; })()",
        "the refund mail",
    )
    .await;
    wait_js(
        &mut page,
        "performance.getEntriesByType('resource').some(e => e.name.includes('/preview?token='))",
        "the preview loaded",
    )
    .await;
    save_screenshot(&mut page, "demo-workspace.png").await;
    click(
        &mut page,
        "#detail button[data-action=draft][data-kind=reply]",
    )
    .await;
    wait_js(&mut page, "!!document.querySelector('.editor [name=to]') && document.querySelector('.editor [name=to]').value.includes('grace@navy.example')", "the reply editor").await;
    let body = page
        .eval("document.querySelector('.editor [name=body]').value")
        .await
        .unwrap();
    set_value(
        &mut page,
        ".editor [name=body]",
        &format!(
            "Dear Grace,\n\nthe refund for order 77 is on its way.\n{}",
            body.as_str().unwrap_or_default()
        ),
    )
    .await;
    wait_js(
        &mut page,
        "/Saved \\(version [2-9]/.test(document.querySelector('.editor .save-state').textContent)",
        "the autosave",
    )
    .await;
    let file = dir.path().join("refund-confirmation.pdf");
    std::fs::write(&file, b"%PDF-1.4 demo").unwrap();
    let input = page
        .call(
            "Runtime.evaluate",
            json!({"expression": "document.querySelector('.editor input[type=file]')"}),
        )
        .await
        .unwrap();
    page.call(
        "DOM.setFileInputFiles",
        json!({"files": [file.display().to_string()], "objectId": input["result"]["objectId"]}),
    )
    .await
    .unwrap();
    wait_js(&mut page, "document.querySelector('.editor .attachment-list').textContent.includes('refund-confirmation.pdf')", "the attachment").await;
    save_screenshot(&mut page, "demo-reply.png").await;
    click(&mut page, ".editor [data-editor=send]").await;
    wait_js(
        &mut page,
        "Array.from(document.querySelectorAll('#thread .reply .badge')).some(b => b.textContent.trim() === 'Sent')",
        "the reply sent",
    )
    .await;
    // It is an .eml file in data/outbox/.
    let written: Vec<_> = std::fs::read_dir(data.join("outbox"))
        .expect("the outbox folder")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .collect();
    assert_eq!(written.len(), 1, "one .eml in data/outbox");
    let eml = std::fs::read_to_string(written[0].path()).unwrap();
    assert!(
        eml.contains("the refund for order 77 is on its way")
            && eml.contains("refund-confirmation.pdf")
    );
    page.close().await;
    // The admin's link as the demo prints it (with `?next=`): signed in,
    // on the operators' page, the token gone from the address.
    let context = browser().new_context().await.expect("a browser context");
    let mut ops = browser().new_page_in(Some(&context)).await.expect("a tab");
    ops.navigate(&format!(
        "{url}/sign-in?next=/ops#token={}",
        tokens["admin"]
    ))
    .await
    .unwrap();
    wait_js(
        &mut ops,
        "location.pathname === '/ops' && !location.hash && !!document.querySelector('main')",
        "the operators' page after the admin's sign-in link",
    )
    .await;
    ops.close().await;
    running.stop().await.unwrap();
}

// --- incoming offers: presence, accept, decline ----------------------------------------------

/// [`base_config`] with Support routed to the longest-idle available agent.
fn routed_config(db_url: &str, rona_secs: u64) -> String {
    base_config(db_url).replacen(
        "distribution = \"pickup\"",
        &format!("distribution = \"longest_idle\"\nrona_timeout_secs = {rona_secs}"),
        1,
    ) + "\n[routing]\nsweep_ms = 200\n"
}

async fn spawn_routed(db: Db, rona_secs: u64) -> TestApp {
    let test_db = TestDb::create(db).await;
    let text = routed_config(&test_db.url, rona_secs);
    TestApp::spawn_on(test_db, Some(text)).await
}

/// The colleagues' list for a transfer says who has no room for the
/// task's channel (at their capacity for it), not only who is away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_colleagues_list_says_who_has_no_room_for_the_tasks_channel() {
    let app = spawn_routed(Db::Sqlite, 30).await;
    let (s, b) = app
        .put(BOB, "/api/v1/me/presence", json!({"status": "available"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let task = routed_call(&app, "Bob's only call").await;
    let offer = support::mail::wait_for(WAIT, "the offer to Bob", || async {
        let (_, o) = app.get(BOB, "/api/v1/me/offers").await;
        o["items"]
            .as_array()
            .and_then(|i| i.iter().find(|x| x["task_id"] == task.as_str()))
            .and_then(|x| x["id"].as_str().map(String::from))
    })
    .await;
    let (s, b) = app
        .post(BOB, &format!("/api/v1/offers/{offer}/accept"), Value::Null)
        .await;
    assert!(s.is_success(), "{s} {b}");
    // Bob holds one call of his capacity of one: no room for another call,
    // room for an email.
    let cookie = cookie_for(&app, ALICE).await;
    let list = |modality: &'static str| {
        let (client, url, cookie) = (app.client.clone(), app.url.clone(), cookie.clone());
        async move {
            client
                .get(format!(
                    "{url}/ui/transfer-agents?service=support&modality={modality}"
                ))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let bob = |html: &str| {
        html.lines()
            .find(|l| l.contains("value=\"bob\""))
            .unwrap_or_else(|| panic!("Bob in {html}"))
            .to_string()
    };
    assert!(bob(&list("call").await).contains("no room now"));
    assert!(!bob(&list("email").await).contains("no room now"));
    app.stop().await;
}

/// A call from telephony that asks to be routed; its id.
async fn routed_call(app: &TestApp, subject: &str) -> String {
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "call", "subject": subject,
                   "customer": {"address": "+41440001234", "name": "Cleo Caller"},
                   "route": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b["id"].as_str().expect("task id").to_string()
}

/// Sets the presence with the header's selector and waits for the page to say so.
async fn choose_presence(page: &mut Page, status: &str) {
    set_value(page, "#presence", status).await;
    wait_js(
        page,
        &format!(
            "document.querySelector('#presence').dataset.current === {} && !document.querySelector('#presence').disabled && \
             document.querySelector('#status').textContent.length > 0",
            js(status)
        ),
        "the presence set from the page",
    )
    .await;
}

fn offer_card(task: &str) -> String {
    format!("#offers .offer[data-task='{task}']")
}

/// Waits until one of `pages` shows the offer of `task`; that page's index.
async fn wait_offer_on_any(pages: &mut [&mut Page], task: &str) -> usize {
    let expr = format!("!!document.querySelector({})", js(&offer_card(task)));
    let deadline = Instant::now() + WAIT;
    loop {
        for (i, page) in pages.iter_mut().enumerate() {
            if truthy(&page.eval(&expr).await.unwrap_or(Value::Null)) {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no page showed the offer of {task}"
        );
        pages[0].pump(Duration::from_millis(100)).await;
    }
}

async fn an_offer_arrives_live_and_is_accepted(db: Db) {
    let app = spawn_routed(db, 30).await;
    let tag = format!("{db:?}").to_lowercase();
    // Alice starts her day away.
    let (s, b) = app
        .put(ALICE, "/api/v1/me/presence", json!({"status": "away"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut page = sign_in(&app, ALICE).await;
    assert_eq!(
        page.eval("document.querySelector('#presence').value")
            .await
            .unwrap(),
        json!("away"),
        "the header shows her presence"
    );
    // Changed elsewhere (another tab, a softphone): the selector follows live.
    let (s, _) = app
        .put(ALICE, "/api/v1/me/presence", json!({"status": "busy"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    wait_js(
        &mut page,
        "document.querySelector('#presence').value === 'busy'",
        "the presence changed elsewhere, shown live",
    )
    .await;
    // She makes herself available in the page.
    choose_presence(&mut page, "available").await;
    let (_, p) = app.get(ALICE, "/api/v1/me/presence").await;
    assert_eq!(p["status"], "available", "{p}");

    // A call arrives: the offer card shows it, with the time left to answer.
    // What the status line says is kept as it comes (it clears itself after
    // a few seconds, maybe before a slow machine looks).
    record_status(&mut page).await;
    let subject = format!("Caller about order 77 ({tag})");
    let task = routed_call(&app, &subject).await;
    let card = offer_card(&task);
    wait_js(
        &mut page,
        &format!(
            "(() => {{ const c = document.querySelector({}); return c && /^\\d+:\\d\\d left$/.test(c.querySelector('.countdown').textContent); }})()",
            js(&card)
        ),
        "the offer card with its countdown",
    )
    .await;
    // Said in the status line too (read out by screen readers).
    wait_js(
        &mut page,
        &format!(
            "window.__said.some((t) => t.includes({}))",
            js(&format!("Incoming offer: {subject}"))
        ),
        "the offer said in the status line",
    )
    .await;
    let words = text_of(&mut page, &card).await;
    for part in [subject.as_str(), "Cleo Caller", "Call", "Support"] {
        assert!(words.contains(part), "{part:?} on the card: {words}");
    }
    save_screenshot(&mut page, &format!("workspace-offer-{tag}.png")).await;
    let session = page
        .eval(&format!(
            "document.querySelector({}).dataset.session",
            js(&card)
        ))
        .await
        .unwrap()
        .as_str()
        .expect("the offer's session")
        .to_string();

    // Accept: the card goes, the session is in the list and opens.
    click(
        &mut page,
        &format!("{card} button[data-action=offer-accept]"),
    )
    .await;
    wait_js(
        &mut page,
        &format!(
            "!document.querySelector({}) && \
             !!document.querySelector('#session-list .row[data-session=\"{session}\"].is-live') && \
             (document.querySelector('#detail .session-detail') || {{dataset: {{}}}}).dataset.session === {}",
            js(&card),
            js(&session)
        ),
        "the accepted session in the list and open",
    )
    .await;
    let (s, b) = app.get(ALICE, &format!("/api/v1/sessions/{session}")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"], "connected", "{b}");
    assert_eq!(b["task_id"], task.as_str(), "{b}");
    page.close().await;
    app.stop().await;
}

on_both_backends!(an_offer_arrives_live_and_is_accepted);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_offer_leaves_the_page_and_goes_to_the_other_agent() {
    let app = spawn_routed(Db::Sqlite, 30).await;
    let mut alice = sign_in(&app, ALICE).await;
    let mut bob = sign_in(&app, BOB).await;
    choose_presence(&mut alice, "available").await;
    choose_presence(&mut bob, "available").await;
    let task = routed_call(&app, "Declined then taken").await;
    let card = offer_card(&task);
    let first = wait_offer_on_any(&mut [&mut alice, &mut bob], &task).await;
    let (first_page, other_page) = if first == 0 {
        (&mut alice, &mut bob)
    } else {
        (&mut bob, &mut alice)
    };
    let session = first_page
        .eval(&format!(
            "document.querySelector({}).dataset.session",
            js(&card)
        ))
        .await
        .unwrap()
        .as_str()
        .expect("the offer's session")
        .to_string();
    click(
        first_page,
        &format!("{card} button[data-action=offer-decline]"),
    )
    .await;
    wait_js(
        first_page,
        &format!(
            "!document.querySelector({}) && \
             !!document.querySelector('#session-list .row.r-declined[data-session=\"{session}\"]')",
            js(&card)
        ),
        "the card gone and the session declined in the list",
    )
    .await;
    // The other agent's page shows it now, live.
    wait_js(
        other_page,
        &format!("!!document.querySelector({})", js(&card)),
        "the declined offer on the other agent's page",
    )
    .await;
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["state"], "offered", "{t}");
    alice.close().await;
    bob.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_offer_ronas_live_and_goes_to_the_other_agent() {
    let app = spawn_routed(Db::Sqlite, 6).await;
    let mut alice = sign_in(&app, ALICE).await;
    let mut bob = sign_in(&app, BOB).await;
    choose_presence(&mut alice, "available").await;
    choose_presence(&mut bob, "available").await;
    let task = routed_call(&app, "Nobody answers").await;
    let card = offer_card(&task);
    let first = wait_offer_on_any(&mut [&mut alice, &mut bob], &task).await;
    let (first_page, other_page) = if first == 0 {
        (&mut alice, &mut bob)
    } else {
        (&mut bob, &mut alice)
    };
    let session = first_page
        .eval(&format!(
            "document.querySelector({}).dataset.session",
            js(&card)
        ))
        .await
        .unwrap()
        .as_str()
        .expect("the offer's session")
        .to_string();
    // Nobody answers: the card goes by itself, the entry says RONA, and the
    // header says the agent is paused.
    wait_js(
        first_page,
        &format!(
            "!document.querySelector({}) && \
             !!document.querySelector('#session-list .row.r-rona[data-session=\"{session}\"]') && \
             document.querySelector('#presence-note').textContent.includes('Paused')",
            js(&card)
        ),
        "the RONA on the first agent's page",
    )
    .await;
    wait_js(
        other_page,
        &format!("!!document.querySelector({})", js(&card)),
        "the offer on the other agent's page after the RONA",
    )
    .await;
    // Choosing Available again ends the pause.
    choose_presence(first_page, "available").await;
    wait_js(
        first_page,
        "document.querySelector('#presence-note').textContent === ''",
        "the pause ended",
    )
    .await;
    alice.close().await;
    bob.close().await;
    app.stop().await;
}

// --- the IM widget -----------------------------------------------------------------------------

const CHAT_SECRET: &str = "chat-secret-0123456789abcdef";

/// Keeps what the status line says as it comes (it clears itself after a
/// few seconds, maybe before a slow machine looks), in `window.__said`.
async fn record_status(page: &mut Page) {
    page.eval(
        "window.__said = []; const st = document.querySelector('#status'); \
         new MutationObserver(() => window.__said.push(st.textContent)) \
           .observe(st, { childList: true, characterData: true, subtree: true }); true",
    )
    .await
    .unwrap();
}

fn chat_event(id: &str, kind: &str, extra: Value) -> Value {
    let mut e = json!({"id": id, "channel": "web", "type": kind, "chat_id": "chat-77"});
    if let (Some(o), Value::Object(more)) = (e.as_object_mut(), extra) {
        o.extend(more);
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_im_task_shows_its_transcript_live_and_opens_the_chat() {
    let test_db = TestDb::create(Db::Sqlite).await;
    // The chat system's end of relay: what Switchboard posts to it.
    let relayed: Arc<Mutex<Vec<Value>>> = Arc::default();
    let keep = relayed.clone();
    let chat_system = axum::Router::new().route(
        "/replies",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                if let Ok(v) = serde_json::from_slice(&body) {
                    keep.lock().unwrap().push(v);
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reply_url = format!("http://{}/replies", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, chat_system).await });
    // The chat lives on a host the browser maps to the tripwire (which
    // answers anything), named so that no other test counts it as a leak.
    let text = routed_config(&test_db.url, 30)
        + &format!(
            "\n[[chat_channels]]\nid = \"web\"\nservice = \"support\"\nkind = \"webhook\"\n\
             secrets = [\"{CHAT_SECRET}\"]\nchat_url_template = \"http://chat.switchboard.test/c/{{chat_id}}\"\n\
             relay = true\nreply_url = \"{reply_url}\"\n"
        );
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let context = browser().new_context().await.expect("a browser context");
    let mut page = sign_in_in(&app.url, ALICE, &context).await;
    choose_presence(&mut page, "available").await;

    // A customer starts a chat: it is offered to Alice; she accepts.
    let (s, r, _) = support::chat::post_event(
        &app.client,
        &app.url,
        CHAT_SECRET,
        &chat_event(
            "c-1",
            "chat.started",
            json!({"customer": {"name": "Dana Customer", "email": "dana@customer.example"},
                   "subject": "Where is my parcel?", "text": "Hello, my parcel is late"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let task = r["task_id"].as_str().expect("the chat's task").to_string();
    let card = offer_card(&task);
    wait_js(
        &mut page,
        &format!("!!document.querySelector({})", js(&card)),
        "the chat's offer",
    )
    .await;
    assert!(text_of(&mut page, &card).await.contains("Chat"));
    click(
        &mut page,
        &format!("{card} button[data-action=offer-accept]"),
    )
    .await;
    wait_js(
        &mut page,
        "!!document.querySelector('#im-widget button[data-action=open-chat]') && \
         document.querySelector('#transcript').textContent.includes('Hello, my parcel is late')",
        "the IM widget with the transcript",
    )
    .await;

    // The customer writes again: the transcript grows, live.
    let (s, r, _) = support::chat::post_event(
        &app.client,
        &app.url,
        CHAT_SECRET,
        &chat_event(
            "c-2",
            "chat.message",
            json!({"from": "customer", "text": "Still waiting for order 77"}),
        ),
    )
    .await;
    assert!(s.is_success(), "{s} {r}");
    wait_js(
        &mut page,
        "document.querySelector('#transcript').textContent.includes('Still waiting for order 77')",
        "the new chat line, live",
    )
    .await;

    // The channel relays: Alice writes in the chat from the page. While
    // she types, a customer line arrives: the transcript follows and her
    // words stay.
    set_value(&mut page, "#chat-reply textarea", "Let me check order 77").await;
    let (s, r, _) = support::chat::post_event(
        &app.client,
        &app.url,
        CHAT_SECRET,
        &chat_event(
            "c-2b",
            "chat.message",
            json!({"from": "customer", "text": "Are you there?"}),
        ),
    )
    .await;
    assert!(s.is_success(), "{s} {r}");
    wait_js(
        &mut page,
        "document.querySelector('#transcript').textContent.includes('Are you there?') && \
         document.querySelector('#chat-reply textarea').value === 'Let me check order 77'",
        "the transcript grown under the words being typed",
    )
    .await;
    // Ctrl+Enter sends, as the box says.
    act(
        &mut page,
        "(() => { const t = document.querySelector('#chat-reply textarea'); if (!t) return false; \
         t.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', ctrlKey: true, bubbles: true})); return true; })()",
        "Ctrl+Enter in the chat box",
    )
    .await;
    wait_js(
        &mut page,
        "document.querySelector('#transcript').textContent.includes('Let me check order 77') && \
         document.querySelector('#chat-reply textarea').value === ''",
        "the reply in the transcript, the box emptied",
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while relayed.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the reply relayed to the chat system"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = relayed.lock().unwrap()[0].clone();
    assert_eq!(
        (&got["text"], &got["chat_id"], &got["from"]),
        (
            &json!("Let me check order 77"),
            &json!("chat-77"),
            &json!("agent")
        ),
        "{got}"
    );
    save_screenshot(&mut page, "workspace-im.png").await;

    // Open chat: a new tab follows the handle (signed in by the page's
    // cookie) to the chat.
    let tab = open_chat(
        &mut page,
        context.as_str(),
        "http://chat.switchboard.test/c/chat-77",
    )
    .await;
    close_tab(&tab).await;
    assert!(
        text_of(&mut page, "#status").await.contains("new tab"),
        "the page says where the chat went"
    );

    // The customer leaves and comes back: the page says both where the
    // agent looks; then the chat ends, and the widget says so.
    record_status(&mut page).await;
    for (id, kind, fields, said) in [
        (
            "c-3",
            "chat.customer_left",
            json!({}),
            "The customer left the chat",
        ),
        (
            "c-4",
            "chat.message",
            json!({"from": "customer", "text": "Sorry, my connection dropped"}),
            "The customer is back in the chat",
        ),
    ] {
        let (s, r, _) = support::chat::post_event(
            &app.client,
            &app.url,
            CHAT_SECRET,
            &chat_event(id, kind, fields),
        )
        .await;
        assert!(s.is_success(), "{s} {r}");
        wait_js(
            &mut page,
            &format!("window.__said.some((t) => t.includes({}))", js(said)),
            said,
        )
        .await;
    }
    wait_js(
        &mut page,
        "document.querySelector('#im-widget h3').textContent.includes('Open')",
        "the chat open again",
    )
    .await;
    let (s, r, _) = support::chat::post_event(
        &app.client,
        &app.url,
        CHAT_SECRET,
        &chat_event("c-5", "chat.ended", json!({})),
    )
    .await;
    assert!(s.is_success(), "{s} {r}");
    wait_js(
        &mut page,
        "document.querySelector('#im-widget').textContent.includes('The chat has ended: there is nothing left to open') && \
         !document.querySelector('#im-widget button[data-action=open-chat]')",
        "the ended chat said in the widget",
    )
    .await;
    save_screenshot(&mut page, "workspace-im-ended.png").await;
    page.close().await;
    app.stop().await;
}

// --- session details and conversation context ----------------------------------------------------

/// Clicks the IM widget's Open chat as the agent would (a user gesture, so
/// the browser lets it open a tab) and returns the tab that reaches an
/// address starting with `prefix`.
async fn open_chat(page: &mut Page, context: &str, prefix: &str) -> Value {
    let clicked = page
        .call(
            "Runtime.evaluate",
            json!({"expression": "document.querySelector('#im-widget button[data-action=open-chat]').click(); true",
                   "userGesture": true}),
        )
        .await
        .expect("click Open chat");
    assert_eq!(clicked["result"]["value"], json!(true), "{clicked}");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(tab) = tabs_at(context, prefix).await.pop() {
            return tab;
        }
        assert!(Instant::now() < deadline, "no tab reached {prefix}");
        page.pump(Duration::from_millis(100)).await;
    }
}

async fn close_tab(tab: &Value) {
    browser()
        .call(
            None,
            "Target.closeTarget",
            json!({"targetId": tab["targetId"]}),
        )
        .await
        .expect("close the tab");
}

/// The tabs of a browser context whose address starts with `prefix`.
async fn tabs_at(context: &str, prefix: &str) -> Vec<Value> {
    let targets = browser()
        .call(None, "Target.getTargets", json!({}))
        .await
        .expect("the tabs");
    targets["targetInfos"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|t| {
                    // Tabs, not the frames inside a page.
                    t["browserContextId"] == context
                        && t["type"] == "page"
                        && t["url"].as_str().is_some_and(|u| u.starts_with(prefix))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_details_show_the_customer_parameters_and_open_every_context_link() {
    let test_db = TestDb::create(Db::Sqlite).await;
    // Context sites live on hosts the browser maps to the tripwire; neither
    // their names nor the values in their links end in `.example`, so no
    // other test counts them as a leak.
    let text = base_config(&test_db.url).replacen(
        "distribution = \"pickup\"",
        "distribution = \"pickup\"\ncontext_links = [\n\
         { label = \"CRM\", url_template = \"http://crm.switchboard.test/search?q=$(Customer.Email)\" },\n\
         { label = \"Ticket\", url_template = \"http://tickets.switchboard.test/t/$(Parameters.TicketId)\", embed = true },\n]",
        1,
    );
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "call", "subject": "Context please",
                   "customer": {"name": "Erin Example", "email": "erin@customer.test", "phone": "+41 44 000 55 55"},
                   "parameters": {"TicketId": "T-42"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let task = b["id"].as_str().unwrap().to_string();
    let session = app.pickup(ALICE, &task).await;
    let context = browser().new_context().await.expect("a browser context");
    let mut page = sign_in_in(&app.url, ALICE, &context).await;
    page.navigate(&format!("{}/?session={session}", app.url))
        .await
        .unwrap();
    wait_js(
        &mut page,
        "document.querySelectorAll('#context-links a[data-context-link]').length === 2 && !!window.htmx",
        "the context links",
    )
    .await;
    let details = text_of(&mut page, "#details-widget").await;
    for part in [
        "Erin Example",
        "erin@customer.test",
        "+41440005555",
        "TicketId",
        "T-42",
    ] {
        assert!(details.contains(part), "{part:?} in the details: {details}");
    }
    let hrefs = page
        .eval("Array.from(document.querySelectorAll('#context-links a')).map(a => a.href + ' ' + a.target + ' ' + a.rel)")
        .await
        .unwrap();
    assert_eq!(
        hrefs,
        json!([
            "http://crm.switchboard.test/search?q=erin%40customer.test _blank noopener noreferrer",
            "http://tickets.switchboard.test/t/T-42 _blank noopener noreferrer"
        ])
    );
    // The item marked `embed` is framed, sandboxed, and the page's CSP lets
    // its site (and only its site) in: the frame's request reaches the site.
    let frame = page
        .eval("(() => { const f = document.querySelector('#details-widget iframe.context-embed'); return f && [f.src, f.getAttribute('sandbox'), f.getAttribute('referrerpolicy')].join(' | '); })()")
        .await
        .unwrap();
    assert_eq!(
        frame,
        json!(
            "http://tickets.switchboard.test/t/T-42 | allow-scripts allow-same-origin allow-forms allow-popups | no-referrer"
        )
    );
    let deadline = Instant::now() + WAIT;
    while !tripwire().hits.lock().unwrap().iter().any(|h| {
        h.starts_with("GET /t/T-42 ")
            && h.to_ascii_lowercase()
                .contains("host: tickets.switchboard.test")
    }) {
        assert!(
            Instant::now() < deadline,
            "the embedded context was not loaded"
        );
        page.pump(Duration::from_millis(100)).await;
    }
    save_screenshot(&mut page, "workspace-context.png").await;

    // Open all: a click of the agent's.
    let clicked = page
        .call(
            "Runtime.evaluate",
            json!({"expression": "document.querySelector('#detail button[data-action=context-open-all]').click(); true",
                   "userGesture": true}),
        )
        .await
        .expect("click Open all");
    assert_eq!(clicked["result"]["value"], json!(true), "{clicked}");
    // A browser lets one click open one tab unless pop-ups are allowed for
    // the site (as an agent does once): the first opens, and the page says
    // what the browser held back instead of failing silently.
    let deadline = Instant::now() + WAIT;
    let crm = loop {
        let crm = tabs_at(&context, "http://crm.switchboard.test/search?q=erin").await;
        if !crm.is_empty() {
            break crm;
        }
        assert!(
            Instant::now() < deadline,
            "the first context link did not open"
        );
        page.pump(Duration::from_millis(100)).await;
    };
    let status = text_of(&mut page, "#status").await;
    let tickets = tabs_at(&context, "http://tickets.switchboard.test/").await;
    assert!(
        (tickets.len() == 1 && status.contains("Opened 2"))
            || (tickets.is_empty() && status.contains("blocked 1 of 2")),
        "{} ticket tab(s), status {status:?}",
        tickets.len()
    );
    for tab in crm.iter().chain(&tickets) {
        browser()
            .call(
                None,
                "Target.closeTarget",
                json!({"targetId": tab["targetId"]}),
            )
            .await
            .expect("close a context tab");
    }
    // A session without the values its service's links need: the links
    // are left out, and the page says so (not that the service has none).
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/tasks",
            json!({"service": "support", "modality": "im", "subject": "No values",
                   "customer": {"name": "Nameless Caller"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let session = app.pickup(ALICE, b["id"].as_str().unwrap()).await;
    page.navigate(&format!("{}/?session={session}", app.url))
        .await
        .unwrap();
    wait_js(
        &mut page,
        "/need details this session does not have/.test(document.querySelector('#details-widget').textContent) && \
         !document.querySelector('#context-links') && \
         !/No context links in this service/.test(document.querySelector('#details-widget').textContent)",
        "the note on links left out",
    )
    .await;
    page.close().await;
    app.stop().await;
}

// --- the operators' page: queues, agents, chat channels ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_shows_queues_agents_and_chat_channels_live() {
    let test_db = TestDb::create(Db::Sqlite).await;
    let text = routed_config(&test_db.url, 30)
        + &format!(
            "\n[[chat_channels]]\nid = \"web\"\nservice = \"support\"\nkind = \"webhook\"\n\
             secrets = [\"{CHAT_SECRET}\"]\nchat_url_template = \"http://chat.switchboard.test/c/{{chat_id}}\"\n"
        );
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    // Alice is there (her client says so); a call is offered to her.
    let (s, b) = app
        .put(ALICE, "/api/v1/me/presence", json!({"status": "available"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let task = routed_call(&app, "Watched from the wall").await;
    let session = support::mail::wait_for(WAIT, "the offer", || async {
        let (_, o) = app.get(ALICE, "/api/v1/me/offers").await;
        o["items"][0]["id"].as_str().map(String::from)
    })
    .await;

    let mut page = sign_in(&app, ADMIN).await;
    page.navigate(&format!("{}/ops", app.url)).await.unwrap();
    let call_queue = "#queues tr[data-queue='support/Call']";
    wait_js(
        &mut page,
        &format!(
            "(() => {{ const r = document.querySelector({}); return r && r.querySelector('.n-offered').textContent.trim() === '1'; }})()",
            js(call_queue)
        ),
        "the offered call in its queue",
    )
    .await;
    let alice = text_of(&mut page, "#agents tr[data-agent='alice']").await;
    assert!(
        alice.contains("available") && alice.contains("0 + 1 /"),
        "Alice's presence and load: {alice}"
    );
    let bob = text_of(&mut page, "#agents tr[data-agent='bob']").await;
    assert!(
        bob.contains("no page open"),
        "Bob, never seen, is offline to routing: {bob}"
    );
    let web = text_of(&mut page, "#channels tr[data-channel='web']").await;
    assert!(web.contains("support") && web.contains("webhook"), "{web}");
    save_screenshot(&mut page, "ops-queues.png").await;

    // Alice accepts: the page follows by itself.
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/offers/{session}/accept"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    wait_js(
        &mut page,
        &format!(
            "(() => {{ const r = document.querySelector({}); return r && r.querySelector('.n-connected').textContent.trim() === '1' && r.querySelector('.n-offered').textContent.trim() === '0'; }})()",
            js(call_queue)
        ),
        "the connected call, live",
    )
    .await;
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["state"], "connected", "{t}");
    page.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_page_shows_dead_webhook_deliveries_and_redelivers_them() {
    // A receiver that is never there: a loopback port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().unwrap().port()
    };
    let test_db = TestDb::create(Db::Sqlite).await;
    let text = base_config(&test_db.url)
        + "[webhooks]\nallow_loopback = true\nretry_base_ms = 100\nretry_max_delay_secs = 1\nretry_for_secs = 2\nsweep_ms = 200\n";
    let app = TestApp::spawn_on(test_db, Some(text)).await;
    let (s, b) = app
        .post(
            ADMIN,
            "/api/v1/admin/webhooks",
            json!({"id": "crm", "url": format!("http://127.0.0.1:{port}/hook"), "events": ["*"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    app.new_task("email", "Hooked", "hook@customer.example")
        .await;

    let mut page = sign_in(&app, ADMIN).await;
    page.navigate(&format!("{}/ops", app.url)).await.unwrap();
    let id = wait_js(
        &mut page,
        "(() => { const b = document.querySelector('#deliveries button[data-action=webhook-redeliver]'); return b ? b.dataset.id : null; })()",
        "a dead letter with Redeliver, live",
    )
    .await;
    let id = id.as_str().expect("a delivery id").to_string();
    let row = text_of(&mut page, &format!("#deliveries tr[data-delivery='{id}']")).await;
    assert!(
        row.contains("Dead letter") && row.contains("crm"),
        "the dead letter says what and where: {row}"
    );
    save_screenshot(&mut page, "ops-deliveries.png").await;
    let clicked_at = chrono::Utc::now().timestamp_millis();
    click(
        &mut page,
        &format!("#deliveries button[data-action=webhook-redeliver][data-id='{id}']"),
    )
    .await;
    wait_js(
        &mut page,
        &format!(
            "document.querySelector('#status').textContent.includes({})",
            js(&format!("Delivery {id} sent again"))
        ),
        "the redelivery's answer in words",
    )
    .await;
    // Taken up again, for a whole retry period from the click.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM webhook_deliveries WHERE id = {id} AND retry_from >= {clicked_at}"
        ))
        .await,
        1
    );
    page.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_call_is_transferred_to_a_colleague_from_the_page() {
    let app = spawn_routed(Db::Sqlite, 30).await;
    let mut alice = sign_in(&app, ALICE).await;
    let mut bob = sign_in(&app, BOB).await;
    choose_presence(&mut alice, "available").await;
    choose_presence(&mut bob, "available").await;
    let task = routed_call(&app, "Please put me through").await;
    let card = offer_card(&task);
    let first = wait_offer_on_any(&mut [&mut alice, &mut bob], &task).await;
    let (mine, theirs, colleague) = if first == 0 {
        (&mut alice, &mut bob, "bob")
    } else {
        (&mut bob, &mut alice, "alice")
    };
    let session = mine
        .eval(&format!(
            "document.querySelector({}).dataset.session",
            js(&card)
        ))
        .await
        .unwrap()
        .as_str()
        .expect("the offer's session")
        .to_string();
    click(mine, &format!("{card} button[data-action=offer-accept]")).await;
    wait_js(
        mine,
        "!!document.querySelector('#detail select[name=agent]')",
        "the accepted call with its transfer choices",
    )
    .await;
    // Telephony posts what is said: the lines appear on the page as they come.
    let (s, b) = app
        .post(
            ADMIN,
            &format!("/api/v1/tasks/{task}/transcript"),
            json!({"lines": [
                {"id": "l1", "speaker": "customer", "text": "Hello, please put me through to billing."},
                {"id": "l2", "speaker": "agent", "text": "One moment, I will transfer you."}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    wait_js(
        mine,
        "(() => { const w = document.querySelector('#call-widget'); return !!w \
         && w.textContent.includes('put me through to billing') && w.textContent.includes('Cleo Caller') \
         && w.textContent.includes('I will transfer you'); })()",
        "the call transcript, live",
    )
    .await;
    save_screenshot(mine, "workspace-call.png").await;
    // The colleagues load when the pointer (or the focus) reaches the list
    // (again on a list the page has just refreshed).
    wait_js(
        mine,
        &format!(
            "(() => {{ const s = document.querySelector('#detail select[name=agent]'); if (!s) return false; \
             if (s.querySelector('option[value=' + {} + ']')) return true; \
             s.dispatchEvent(new MouseEvent('mouseenter')); return false; }})()",
            js(colleague)
        ),
        "the colleague in the list",
    )
    .await;
    // Chosen and sent in one step (a live refresh between the two would send
    // the new form unchosen); again while the list lacks the colleague.
    act(
        mine,
        &format!(
            "(() => {{ const s = document.querySelector('#detail select[name=agent]'); \
             if (!s || !s.querySelector('option[value=' + {0} + ']')) {{ if (s) s.dispatchEvent(new MouseEvent('mouseenter')); return false; }} \
             s.value = {0}; s.closest('form').querySelector('button[type=submit]').click(); return true; }})()",
            js(colleague)
        ),
        "the transfer to the colleague",
    )
    .await;
    wait_js(
        mine,
        &format!(
            "!!document.querySelector('#session-list .row.r-transferred[data-session=\"{session}\"]')"
        ),
        "the session ended as Transferred",
    )
    .await;
    wait_js(
        theirs,
        &format!("!!document.querySelector({})", js(&card)),
        "the transferred call offered to the colleague",
    )
    .await;
    alice.close().await;
    bob.close().await;
    app.stop().await;
}

// --- the page in its own words: names, links, long subjects, more waiting work ----------------

/// Waiting work shows service names and can be shown in full; a reload keeps
/// the search and the filters; a link to a session that is not the agent's
/// opens the workspace with a short note; a long subject's start shows;
/// refusals say names, not ids.
async fn the_page_speaks_in_names_and_keeps_its_place(db: Db) {
    let app = TestApp::spawn(db).await;
    let create = |subject: String| {
        let app = &app;
        async move {
            let (s, b) = app
                .post(
                    ADMIN,
                    "/api/v1/tasks",
                    json!({"service": "support", "modality": "call", "subject": subject,
                           "customer": {"address": "+41440001111"}}),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
            b["id"].as_str().expect("task id").to_string()
        }
    };
    let long = format!(
        "START-OF-SUBJECT {} END-OF-SUBJECT",
        "a very long subject that goes on and on ".repeat(12)
    );
    let mine = create(long.clone()).await;
    let session = app.pickup(ALICE, &mine).await;
    for i in 0..62 {
        create(format!("Waiting call {i}")).await;
    }
    let mut page = sign_in(&app, ALICE).await;

    // Waiting work: the service by its name; the rest reachable.
    let items = "document.querySelectorAll('#queue .queue-item').length";
    assert_eq!(page.eval(items).await.unwrap(), json!(50));
    let queue = text_of(&mut page, "#queue").await;
    assert!(
        queue.contains("· Support · waiting since") && !queue.contains("· support ·"),
        "{queue}"
    );
    assert!(queue.contains("12 more waiting"), "{queue}");
    click(&mut page, "#queue button[data-action=queue-more]").await;
    wait_js(
        &mut page,
        &format!("{items} === 62"),
        "all the waiting work",
    )
    .await;
    // A refresh of the list keeps them all (the items are marked, so that
    // the refresh is seen to have happened).
    page.eval("document.querySelectorAll('#queue .queue-item').forEach(i => i.dataset.before = '1'); document.body.dispatchEvent(new CustomEvent('sb:changed'))")
        .await
        .unwrap();
    wait_js(
        &mut page,
        "document.querySelectorAll('#queue .queue-item').length > 0 && !document.querySelector('#queue .queue-item[data-before]')",
        "the waiting work refreshed",
    )
    .await;
    assert_eq!(page.eval(items).await.unwrap(), json!(62));
    assert!(!text_of(&mut page, "#queue").await.contains("more waiting"));
    // A keyboard user's focus on a Pick up button (and on a session in the
    // list) stays there when the list is made anew.
    page.eval("window.__task = document.querySelectorAll('#queue button[data-action=pickup]')[3].dataset.task; \
               document.querySelectorAll('#queue button[data-action=pickup]')[3].focus(); \
               document.querySelectorAll('#queue .queue-item').forEach(i => i.dataset.before = '1'); \
               htmx.trigger('#queue', 'sb:queue-more')")
        .await
        .unwrap();
    wait_js(
        &mut page,
        "!document.querySelector('#queue .queue-item[data-before]') && document.querySelectorAll('#queue .queue-item').length > 0",
        "the waiting work made anew",
    )
    .await;
    assert_eq!(
        page.eval("document.activeElement.dataset.action + ' ' + (document.activeElement.dataset.task === window.__task)")
            .await
            .unwrap(),
        json!("pickup true"),
        "the focus stays on the same Pick up"
    );
    page.eval("window.__row = document.querySelector('#session-list .row-link').getAttribute('href'); \
               document.querySelector('#session-list .row-link').focus(); \
               document.querySelectorAll('#session-list .row').forEach(r => r.dataset.before = '1'); \
               document.body.dispatchEvent(new CustomEvent('sb:changed'))")
        .await
        .unwrap();
    wait_js(
        &mut page,
        "!document.querySelector('#session-list .row[data-before]') && document.querySelectorAll('#session-list .row').length > 0",
        "the sessions list made anew",
    )
    .await;
    assert_eq!(
        page.eval("document.activeElement.getAttribute('href') === window.__row")
            .await
            .unwrap(),
        json!(true),
        "the focus stays on the same session"
    );
    // Telephony tells that the caller hung up: the page says so in a call's
    // words, the header stops being live and the connected time stops.
    page.navigate(&format!("{}/?session={session}", app.url))
        .await
        .unwrap();
    wait_js(
        &mut page,
        "!!document.querySelector('#detail .session-detail[data-modality=call]') && !!document.querySelector('#session-head .pulse') && document.querySelector('#live').dataset.connected === '1'",
        "the call's session, live",
    )
    .await;
    record_status(&mut page).await;
    let (s, b) = app
        .post(ADMIN, &format!("/api/v1/tasks/{mine}/cancel"), json!({}))
        .await;
    assert!(s.is_success(), "{s} {b}");
    wait_js(
        &mut page,
        "window.__said.some(t => t.includes('The caller hung up.')) && \
         /The caller hung up at/.test(document.querySelector('#session-head').textContent) && \
         !document.querySelector('#session-head .pulse') && !!document.querySelector('#session-head .clock[data-until]')",
        "the hang-up, said in a call's words",
    )
    .await;
    assert!(
        !page
            .eval("window.__said.join(' ')")
            .await
            .unwrap()
            .to_string()
            .contains("chat"),
        "a call is no chat"
    );

    // The search and the filters go into the address; a reload keeps them.
    set_value(&mut page, "#q", "START-OF").await;
    set_value(&mut page, "#filters select[name=state]", "live").await;
    wait_js(
        &mut page,
        "location.search.includes('q=START-OF') && location.search.includes('state=live')",
        "the search and filter in the address",
    )
    .await;
    let url = page
        .eval("location.href")
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    page.navigate(&url).await.unwrap();
    wait_js(
        &mut page,
        "!!window.htmx && !!document.querySelector('#session-list .row') && document.querySelector('#q').value === 'START-OF' && \
         document.querySelector('#filters select[name=state]').value === 'live' && \
         document.querySelectorAll('#session-list .row').length === 1",
        "the search and filter restored by the reload",
    )
    .await;

    // A link to a session that does not exist: the workspace, with a note.
    page.navigate(&format!("{}/?session=ses_0000000000000000", app.url))
        .await
        .unwrap();
    wait_js(
        &mut page,
        "!!window.htmx && !!document.querySelector('#session-list') && !!document.querySelector('#session-missing')",
        "the workspace with the note about the link",
    )
    .await;
    let body = text_of(&mut page, "main").await;
    assert!(
        body.contains("could not be opened") && !body.contains("ses_0000"),
        "{body}"
    );
    // Asked for by the page itself: said in words too.
    page.eval("htmx.ajax('GET', '/ui/sessions/ses_0000000000000000', {target: '#detail'})")
        .await
        .unwrap();
    wait_js(
        &mut page,
        "/could not be opened/.test(document.querySelector('#status').textContent)",
        "the missing session said in the status line",
    )
    .await;
    assert!(!text_of(&mut page, "#status").await.contains("ses_"));

    // The long subject: its start shows at 1280 and 1024 px, all of it in the tooltip.
    page.navigate(&format!("{}/?session={session}", app.url))
        .await
        .unwrap();
    wait_js(
        &mut page,
        "!!window.htmx && !!document.querySelector('#detail .session-detail h2')",
        "the session with the long subject",
    )
    .await;
    let start_visible = "(() => { const h = document.querySelector('#detail h2'); \
        const w = document.createTreeWalker(h, NodeFilter.SHOW_TEXT); let t; \
        while ((t = w.nextNode()) && !t.textContent.includes('START')) {} if (!t) return false; \
        const i = t.textContent.indexOf('START'); const r = document.createRange(); r.setStart(t, i); r.setEnd(t, i + 1); \
        const c = r.getBoundingClientRect(), b = h.getBoundingClientRect(); \
        return c.top >= b.top - 1 && c.bottom <= b.bottom + 1 && c.height > 0; })()";
    for width in [1280, 1024] {
        page.set_viewport(width, 800).await.unwrap();
        page.pump(Duration::from_millis(300)).await;
        assert_eq!(
            page.eval(start_visible).await.unwrap(),
            json!(true),
            "the subject's start is visible at {width} px"
        );
    }
    page.set_viewport(1280, 800).await.unwrap();
    assert_eq!(
        page.eval("(document.querySelector('#detail h2 [title]') || {}).title")
            .await
            .unwrap(),
        json!(long)
    );
    // Services by name: the details, the transfer list.
    let details = text_of(&mut page, "#details-widget").await;
    assert!(details.contains("Support"), "{details}");
    assert_eq!(
        page.eval("Array.from(document.querySelectorAll('#detail select[name=service] option')).map(o => o.value + '=' + o.textContent.trim()).join()")
            .await
            .unwrap(),
        json!("sales=Sales")
    );

    // A colleague who is offline (Bob has no page open): said by their name.
    act(
        &mut page,
        "(() => { const s = document.querySelector('#detail select[name=agent]'); \
         if (!s || !s.querySelector('option[value=bob]')) { if (s) s.dispatchEvent(new MouseEvent('mouseenter')); return false; } \
         s.value = 'bob'; s.closest('form').querySelector('button[type=submit]').click(); return true; })()",
        "the transfer to the offline colleague",
    )
    .await;
    wait_js(
        &mut page,
        "/Bob is offline/.test(document.querySelector('#status').textContent)",
        "the refusal naming Bob",
    )
    .await;
    assert!(!text_of(&mut page, "#status").await.contains("'bob'"));

    // To a service: said by its name, and the details follow.
    act(
        &mut page,
        "(() => { const s = document.querySelector('#detail select[name=service]'); if (!s) return false; \
         s.value = 'sales'; s.closest('form').querySelector('button[type=submit]').click(); return true; })()",
        "the transfer to Sales",
    )
    .await;
    wait_js(
        &mut page,
        "/Transferred to Sales\\./.test(document.querySelector('#status').textContent)",
        "the transfer said with the service's name",
    )
    .await;
    wait_js(
        &mut page,
        "/now in Sales/.test(document.querySelector('#details-widget').textContent)",
        "where the task is now, by name",
    )
    .await;
    page.close().await;
    app.stop().await;
}

on_both_backends!(the_page_speaks_in_names_and_keeps_its_place);

// --- long names, keyboard focus, errors that stay ------------------------------------------

/// Whether the page is wider than the window (something pushes it sideways).
const PAGE_FITS: &str =
    "document.documentElement.scrollWidth <= document.documentElement.clientWidth";

/// At 1280 and at 375 px wide, the page does not scroll sideways (`what`
/// says which screen).
async fn fits_at_every_width(page: &mut Page, what: &str) {
    for width in [1280, 375] {
        page.set_viewport(width, 800).await.expect("viewport");
        page.pump(Duration::from_millis(300)).await;
        let widths = page
            .eval("document.documentElement.scrollWidth + ' > ' + document.documentElement.clientWidth")
            .await
            .unwrap();
        assert_eq!(
            page.eval(PAGE_FITS).await.unwrap(),
            json!(true),
            "{what} is wider than the window at {width} px: {widths}"
        );
    }
    page.set_viewport(1280, 800).await.expect("viewport");
}

/// A sender's name or a subject without a single space wraps (or is cut
/// with an ellipsis) where it shows: the page never scrolls sideways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_unbroken_names_and_subjects_do_not_push_the_page_sideways() {
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let (app, inbox) = spawn(Db::Sqlite, &sink, false).await;
    let name = "N".repeat(300);
    let subject = "S".repeat(400);
    inbox.deliver(
        "1.long.host",
        &mail(
            &format!("{name} <ada@analytical.example>"),
            &subject,
            "long@analytical.example",
            &[],
            "Hello",
        ),
    );
    let mut page = sign_in(&app, ALICE).await;
    wait_js(
        &mut page,
        "!!document.querySelector('#queue button[data-action=pickup]')",
        "the long mail in Waiting work",
    )
    .await;
    fits_at_every_width(&mut page, "Waiting work").await;
    let task = page
        .eval("document.querySelector('#queue button[data-action=pickup]').dataset.task")
        .await
        .unwrap()
        .as_str()
        .expect("the task")
        .to_string();
    let session = app.pickup(ALICE, &task).await;
    page.navigate(&format!("{}/?session={session}", app.url))
        .await
        .unwrap();
    wait_js(
        &mut page,
        &format!(
            "!!window.htmx && !!document.querySelector('#detail .mail[open] summary .from') && \
             document.querySelector('#detail .mail summary .from').textContent.includes({})",
            js(&name)
        ),
        "the long mail open in its session",
    )
    .await;
    fits_at_every_width(&mut page, "the session with the long mail").await;
    // The reply's card on the thread, with the same subject and name.
    open_reply_editor(&mut page, "the reply editor").await;
    click(&mut page, ".editor [data-editor=close]").await;
    wait_js(
        &mut page,
        "!document.querySelector('.editor') && !!document.querySelector('#thread .reply-draft')",
        "the reply's card on the thread",
    )
    .await;
    fits_at_every_width(&mut page, "the thread with the reply's card").await;
    page.close().await;
    app.stop().await;
}

/// Focuses the control at `selector` and presses it, as Enter or Space on
/// the keyboard does.
async fn press(page: &mut Page, selector: &str) {
    let expr = format!(
        "(() => {{ const e = document.querySelector({}); if (!e || e.disabled) return false; e.focus(); \
         if (document.activeElement !== e) return false; e.click(); return true; }})()",
        js(selector)
    );
    act(page, &expr, &format!("nothing to press at {selector}")).await;
}

/// What has the keyboard focus, once what the action set off has settled
/// (its refreshes and their events).
async fn focused_after(page: &mut Page) -> String {
    page.pump(Duration::from_millis(1200)).await;
    page.eval(
        "(() => { const a = document.activeElement; if (!a) return 'nothing'; \
         if (a.matches('#detail h2')) return 'heading'; \
         return a.tagName + (a.dataset.action ? ' ' + a.dataset.action : '') + (a.dataset.kind ? ' ' + a.dataset.kind : '') + \
           (a.name ? ' ' + a.name : '') + (a.value && a.tagName !== 'BUTTON' ? '=' + a.value : ''); })()",
    )
    .await
    .unwrap()
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// A keyboard user's focus follows the work: after an action whose button
/// goes away it lands on the session's heading (or the control that opens
/// the same again), never on the page's top nor on a form control they did
/// not choose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyboard_focus_follows_the_work_after_each_action() {
    let sink = SmtpSink::start(SmtpSinkOptions::default()).expect("SMTP sink");
    let (app, inbox) = spawn(Db::Sqlite, &sink, false).await;
    let (_, mail_session) = mail_picked_up(&app, &inbox, "Focus mail").await;
    let call = app.new_task("call", "Focus call", "+41440001234").await;
    let mut page = sign_in(&app, ALICE).await;

    // Pick up: the session opens with the focus on its heading (as Accept).
    press(
        &mut page,
        &format!("#queue button[data-action=pickup][data-task=\"{call}\"]"),
    )
    .await;
    wait_js(
        &mut page,
        &format!(
            "(document.querySelector('#detail .session-detail') || {{dataset: {{}}}}).dataset.task === {} && \
             !!document.querySelector('#detail button[data-action=handled]')",
            js(&call)
        ),
        "the picked-up call open",
    )
    .await;
    assert_eq!(focused_after(&mut page).await, "heading", "after Pick up");

    // Mark as handled: its button goes; the focus goes to the heading.
    press(&mut page, "#detail button[data-action=handled]").await;
    wait_js(
        &mut page,
        "!document.querySelector('#detail button[data-action=handled]') && \
         !!document.querySelector('#wrapup button[value=save]:not([disabled])')",
        "the call handled, Save possible",
    )
    .await;
    assert_eq!(
        focused_after(&mut page).await,
        "heading",
        "after Mark as handled"
    );

    // Keep codes and tags: the button stays, and so does the focus.
    press(&mut page, "#wrapup button[value=keep]").await;
    wait_js(
        &mut page,
        "/Codes and tags kept/.test(document.querySelector('#status').textContent)",
        "codes and tags kept",
    )
    .await;
    assert_eq!(
        focused_after(&mut page).await,
        "BUTTON intent",
        "after Keep codes and tags"
    );
    // Save: the form goes (read-only now); the focus goes to the heading.
    press(&mut page, "#wrapup button[value=save]").await;
    wait_js(
        &mut page,
        "!!document.querySelector('#detail .saved') && !document.querySelector('#wrapup')",
        "the call saved",
    )
    .await;
    assert_eq!(focused_after(&mut page).await, "heading", "after Save");

    // The mail: Close (keep draft) in the reply editor goes back to Reply.
    press(
        &mut page,
        &format!("#session-list .row[data-session=\"{mail_session}\"] .row-link"),
    )
    .await;
    wait_js(
        &mut page,
        &format!(
            "(document.querySelector('#detail .session-detail') || {{dataset: {{}}}}).dataset.session === {} && \
             !!document.querySelector('#detail button[data-action=draft][data-kind=reply]')",
            js(&mail_session)
        ),
        "the mail's session open",
    )
    .await;
    press(
        &mut page,
        "#detail button[data-action=draft][data-kind=reply]",
    )
    .await;
    wait_js(
        &mut page,
        "!!document.querySelector('.editor [data-editor=close]')",
        "the reply editor",
    )
    .await;
    press(&mut page, ".editor [data-editor=close]").await;
    wait_js(
        &mut page,
        "!document.querySelector('.editor') && !!document.querySelector('#thread .reply-draft')",
        "the editor closed, its draft kept",
    )
    .await;
    assert_eq!(
        focused_after(&mut page).await,
        "BUTTON draft reply",
        "after Close (keep draft)"
    );

    // Transfer: the task actions go; the focus goes to the heading, not to
    // a code's checkbox now at the Transfer button's place.
    act(
        &mut page,
        "(() => { const s = document.querySelector('#detail select[name=service]'); if (!s) return false; \
         s.value = 'sales'; const b = s.closest('form').querySelector('button[type=submit]'); \
         b.focus(); b.click(); return true; })()",
        "the transfer to Sales",
    )
    .await;
    wait_js(
        &mut page,
        "document.querySelector('#detail .session-detail').dataset.holds === '0' && \
         !document.querySelector('#detail form.transfer')",
        "the mail transferred",
    )
    .await;
    assert_eq!(focused_after(&mut page).await, "heading", "after Transfer");
    page.close().await;
    app.stop().await;
}

/// Presence chosen with the keyboard keeps the focus on the selector; an
/// error in the status line stays when an offer is announced, which is
/// said once the error is dismissed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_keeps_the_focus_and_an_error_outlasts_an_offer() {
    let app = spawn_routed(Db::Sqlite, 30).await;
    let mut page = sign_in(&app, ALICE).await;
    page.eval(
        "const s = document.querySelector('#presence'); s.focus(); s.value = 'available'; \
         s.dispatchEvent(new Event('change', {bubbles: true})); true",
    )
    .await
    .unwrap();
    wait_js(
        &mut page,
        "document.querySelector('#presence').dataset.current === 'available' && \
         !document.querySelector('#presence').dataset.busy && \
         /Available/.test(document.querySelector('#status').textContent)",
        "available, chosen from the page",
    )
    .await;
    assert_eq!(
        page.eval("document.activeElement.id").await.unwrap(),
        json!("presence"),
        "the focus stays on the selector"
    );

    // An action fails (its task is gone): the error shows.
    page.eval(
        "const b = document.createElement('button'); b.type = 'button'; b.dataset.action = 'pickup'; \
         b.dataset.task = 'tsk_gone'; document.querySelector('main').append(b); b.click(); true",
    )
    .await
    .unwrap();
    wait_js(
        &mut page,
        "document.querySelector('#status').classList.contains('status-error')",
        "the failed action's error",
    )
    .await;
    let error = text_of(&mut page, "#status").await;
    // An offer arrives meanwhile: the error stays.
    let subject = "Caller while an error shows";
    let task = routed_call(&app, subject).await;
    wait_js(
        &mut page,
        &format!("!!document.querySelector({})", js(&offer_card(&task))),
        "the offer's card",
    )
    .await;
    page.pump(Duration::from_millis(500)).await;
    assert_eq!(
        text_of(&mut page, "#status").await,
        error,
        "the error stays"
    );
    // Dismissed: the offer is said now.
    click(&mut page, "#status button.dismiss").await;
    wait_js(
        &mut page,
        &format!(
            "document.querySelector('#status').textContent.includes({})",
            js(&format!("Incoming offer: {subject}"))
        ),
        "the offer said after the error",
    )
    .await;
    // Once: the offer reached the page's three listeners (offers, queue,
    // list), and was said once, not once per listener, 6 s each.
    let said = std::time::Instant::now();
    wait_js(
        &mut page,
        "document.querySelector('#status').textContent === ''",
        "the status line empty after the offer was said",
    )
    .await;
    assert!(
        said.elapsed() < Duration::from_secs(9),
        "said more than once: the line stayed {:?}",
        said.elapsed()
    );

    // Paused after a missed offer: Resume offers now, pressed with the
    // keyboard, leaves the focus on the selector when the note goes.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 600_000;
    app.raw_sql(&format!(
        "UPDATE agents SET rona_until = {until} WHERE id = 'alice'"
    ))
    .await
    .expect("Alice paused");
    page.navigate(&format!("{}/", app.url)).await.unwrap();
    wait_js(
        &mut page,
        "!!window.htmx && !!document.querySelector('#resume-offers')",
        "the pause with Resume offers now",
    )
    .await;
    press(&mut page, "#resume-offers").await;
    wait_js(
        &mut page,
        "document.querySelector('#presence-note').textContent === ''",
        "the pause ended",
    )
    .await;
    assert_eq!(
        page.eval("document.activeElement.id").await.unwrap(),
        json!("presence"),
        "the focus on the selector after Resume offers now"
    );
    page.close().await;
    app.stop().await;
}
