//! Email previews in a real browser (headless Chromium), against a real
//! instance fed through a Maildir: guarantee 3, "nothing dangerous reaches an
//! agent's browser".
//!
//! - An attack corpus (`tests/fixtures/attacks/vectors.txt`, one mail per
//!   vector) whose every payload tries to reach an "attacker" HTTP server on
//!   another port. Layer A opens each preview as deployed (with its CSP);
//!   layer B serves the very same HTML from a test server without any CSP, so
//!   that the sanitizer alone must stop everything. Neither may reach the
//!   attacker or run a script.
//! - Charsets (`tests/fixtures/charsets/`): decoded into the preview.
//! - A newsletter (`tests/fixtures/newsletter/`): layout, colours and inline
//!   images kept, remote images blocked, a screenshot under target/.
//! - Signed links and the security headers of the preview.
mod support;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode as AxStatus, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::app::{ADMIN, TestApp, TestDb};
use support::browser::{Browser, Page, png_size, solid_png};
use support::mail::{deliver_maildir, mail};

const PREVIEW_CSP: &str = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// Tabs open at once in the one browser.
const TABS: usize = 24;
/// How long a page may take to load and go network-idle (events awaited,
/// not a settling time: a generous bound for a busy machine).
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// --- test HTTP servers ---------------------------------------------------------------

/// A file a test server serves: content type and bytes.
type File = (String, Vec<u8>);

/// A small HTTP server on 127.0.0.1 that records every request; it serves its
/// files, and answers anything else with 200 ("attacker") or 404.
#[derive(Clone, Default)]
struct Site {
    hits: Arc<Mutex<Vec<String>>>,
    files: Arc<Mutex<HashMap<String, File>>>,
    answer_all: bool,
}

impl Site {
    async fn start(answer_all: bool) -> (Site, u16) {
        let site = Site {
            answer_all,
            ..Site::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a test server");
        let port = listener.local_addr().expect("local addr").port();
        let app = Router::new()
            .fallback(site_handler)
            .with_state(site.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (site, port)
    }

    fn put(&self, path: &str, content_type: &str, body: impl Into<Vec<u8>>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), (content_type.to_string(), body.into()));
    }

    fn take_hits(&self) -> Vec<String> {
        std::mem::take(&mut *self.hits.lock().unwrap())
    }
}

async fn site_handler(State(site): State<Site>, method: Method, uri: Uri) -> Response {
    site.hits.lock().unwrap().push(format!("{method} {uri}"));
    let file = site.files.lock().unwrap().get(uri.path()).cloned();
    match file {
        // Under /csp/, with the preview's policy (as Switchboard serves it).
        Some((ct, body)) if uri.path().starts_with("/csp/") => (
            [
                (header::CONTENT_TYPE, ct),
                (header::CONTENT_SECURITY_POLICY, PREVIEW_CSP.to_string()),
            ],
            body,
        )
            .into_response(),
        Some((ct, body)) => ([(header::CONTENT_TYPE, ct)], body).into_response(),
        None if site.answer_all => ([(header::CONTENT_TYPE, "text/plain")], "ok").into_response(),
        None => AxStatus::NOT_FOUND.into_response(),
    }
}

// --- the instance ------------------------------------------------------------------

/// An instance whose Support service reads a Maildir.
async fn spawn_with_maildir() -> (TestApp, PathBuf) {
    let db = TestDb::create(support::app::Db::Sqlite).await;
    let inbox = db.dir().join("inbox");
    let text = support::app::maildir_config(&db.url, &inbox);
    (TestApp::spawn_on(db, Some(text)).await, inbox)
}

/// An email task as the tests use it.
#[derive(Debug, Clone)]
struct MailTask {
    id: String,
    message: String,
    preview_url: String,
}

impl MailTask {
    fn token(&self) -> &str {
        self.preview_url
            .split_once("token=")
            .map(|(_, t)| t)
            .unwrap_or_default()
    }
}

async fn email_tasks(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/tasks?modality=email&limit=200".to_string();
        if let Some(c) = &cursor {
            path.push_str("&cursor=");
            path.extend(url::form_urlencoded::byte_serialize(c.as_bytes()));
        }
        let (s, b) = app.get(ADMIN, &path).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        out.extend(b["items"].as_array().cloned().unwrap_or_default());
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Waits until `expected` mails are tasks (or `timeout` passes) and returns
/// the tasks by the Message-ID of their message.
async fn tasks_by_message_id(
    app: &TestApp,
    expected: usize,
    timeout: Duration,
) -> HashMap<String, MailTask> {
    let start = Instant::now();
    let mut last = 0;
    let mut stable_since = Instant::now();
    let tasks = loop {
        let t = email_tasks(app).await;
        if t.len() != last {
            last = t.len();
            stable_since = Instant::now();
        }
        // Done when all arrived, or when nothing came for a while after the timeout.
        if t.len() >= expected
            || (start.elapsed() > timeout && stable_since.elapsed() > Duration::from_secs(3))
        {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut out = HashMap::new();
    for t in tasks {
        let id = t["id"].as_str().expect("task id").to_string();
        let (s, m) = app
            .get(ADMIN, &format!("/api/v1/tasks/{id}/messages"))
            .await;
        assert_eq!(s, StatusCode::OK, "{m}");
        let (s, view) = app.get(ADMIN, &format!("/api/v1/tasks/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{view}");
        let preview_url = view["preview_url"]
            .as_str()
            .unwrap_or_else(|| panic!("an email task has a preview_url: {view}"))
            .to_string();
        for item in m["items"].as_array().cloned().unwrap_or_default() {
            out.insert(
                item["message_id"].as_str().unwrap_or_default().to_string(),
                MailTask {
                    id: id.clone(),
                    message: item["id"].as_str().unwrap_or_default().to_string(),
                    preview_url: preview_url.clone(),
                },
            );
        }
    }
    out
}

/// GET without a bearer token (as a browser opens a signed link).
async fn fetch(app: &TestApp, path_and_query: &str) -> reqwest::Response {
    app.client
        .get(format!("{}{path_and_query}", app.url))
        .send()
        .await
        .expect("request reaches the server")
}

/// Undoes the HTML escaping of text (named entities the serializers emit and
/// numeric references), so that the tests compare characters.
fn unescape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|&e| e <= 12);
        let decoded = end.and_then(|e| {
            let ent = &rest[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" | "#39" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => ent
                    .strip_prefix("#x")
                    .or_else(|| ent.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

// --- the attack corpus -----------------------------------------------------------------

#[derive(Debug)]
struct Vector {
    n: usize,
    name: String,
    opts: Vec<(String, String)>,
    body: String,
}

impl Vector {
    fn opt(&self, key: &str) -> Option<&str> {
        self.opts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn opts(&self, key: &str) -> impl Iterator<Item = &str> {
        self.opts
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn message_id(&self) -> String {
        format!("attack-{}@evil.example", self.n)
    }
}

fn parse_vectors(text: &str) -> Vec<Vector> {
    let mut out: Vec<Vector> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("### ") {
            out.push(Vector {
                n: out.len() + 1,
                name: name.trim().to_string(),
                opts: Vec::new(),
                body: String::new(),
            });
            continue;
        }
        let Some(v) = out.last_mut() else {
            continue; // the file's header comment
        };
        if v.body.is_empty()
            && let Some(opt) = line.strip_prefix('@')
        {
            let (k, val) = opt.split_once(' ').unwrap_or((opt, ""));
            v.opts.push((k.to_string(), val.to_string()));
            continue;
        }
        if !v.body.is_empty() {
            v.body.push('\n');
        }
        v.body.push_str(line);
    }
    out
}

/// Expands the placeholders of the corpus for vector `n`.
fn expand(s: &str, n: usize, attacker: u16) -> Vec<u8> {
    let u = format!("http://127.0.0.1:{attacker}/hit/{n}");
    let js = format!(
        "fetch('{u}/fetch');new Image().src='{u}/js-image';document.title='PWNED-{n}';\
         document.documentElement.setAttribute('data-pwned','{n}');window.PWNED={n}"
    );
    let html = format!("<script>{js}</script><img src=x onerror=\"{js}\">");
    let s = s
        .replace("%%JSB64%%", &b64(&js))
        .replace("%%HTMLB64%%", &b64(&html))
        .replace("%%JS%%", &js)
        .replace("%%U%%", &u)
        .replace("%%A%%", &format!("127.0.0.1:{attacker}"))
        .replace("%%N%%", &n.to_string());
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(i) = rest.find("%%") {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        let tail = &rest[i + 2..];
        let token = tail.find("%%").map(|e| &tail[..e]);
        let byte = match token {
            Some("NUL") => Some((vec![0], 3)),
            Some(t) if t.len() == 3 && (t.starts_with('x') || t.starts_with('b')) => {
                u8::from_str_radix(&t[1..], 16).ok().map(|b| {
                    if t.starts_with('x') {
                        (char::from(b).to_string().into_bytes(), 3)
                    } else {
                        (vec![b], 3)
                    }
                })
            }
            _ => None,
        };
        match byte {
            Some((bytes, len)) => {
                out.extend_from_slice(&bytes);
                rest = &tail[len + 2..];
            }
            None => {
                out.extend_from_slice(b"%%");
                rest = tail;
            }
        }
    }
    out.extend_from_slice(rest.as_bytes());
    out
}

fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

fn base64_lines(bytes: &[u8]) -> Vec<u8> {
    let s = b64(bytes);
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Quoted-printable that also encodes `<`, `>`, `"` and `'`.
fn quoted_printable(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line = 0;
    for &b in bytes {
        let enc = if (33..127).contains(&b) && !b"=<>\"'".contains(&b) {
            vec![b]
        } else {
            format!("={b:02X}").into_bytes()
        };
        if line + enc.len() > 75 {
            out.extend_from_slice(b"=\r\n");
            line = 0;
        }
        line += enc.len();
        out.extend_from_slice(&enc);
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The vector as a customer's (hostile) mail.
fn attack_mail(v: &Vector, attacker: u16) -> Vec<u8> {
    let n = v.n;
    let x = |s: &str| String::from_utf8_lossy(&expand(s, n, attacker)).into_owned();
    let subject = match (v.opt("subject-b64"), v.opt("subject")) {
        (Some(s), _) => format!("=?utf-8?B?{}?=", b64(x(s))),
        (None, Some(s)) => x(s),
        (None, None) => format!("Attack {n}: {}", v.name),
    };
    let from = v
        .opt("from")
        .map(x)
        .unwrap_or_else(|| format!("Mallory {n} <mallory{n}@evil.example>"));
    let mut body = expand(&v.body, n, attacker);
    if v.opt("encode") == Some("utf-16le") {
        let text = String::from_utf8_lossy(&body).into_owned();
        body = vec![0xff, 0xfe];
        for u in text.encode_utf16() {
            body.extend_from_slice(&u.to_le_bytes());
        }
    }
    let cte = v.opt("cte").unwrap_or("8bit");
    let encoded = match cte {
        "base64" => base64_lines(&body),
        "quoted-printable" => quoted_printable(&body),
        _ => {
            let mut b = crlf(&body);
            b.extend_from_slice(b"\r\n");
            b
        }
    };
    let mut main = format!(
        "Content-Type: {}; charset={}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n",
        v.opt("ctype").unwrap_or("text/html"),
        v.opt("charset").unwrap_or("utf-8"),
    )
    .into_bytes();
    main.extend_from_slice(&encoded);

    let mut parts = Vec::new();
    for a in v.opts("attach") {
        let mut f = a.splitn(3, '|');
        let (name, ct, content) = (
            x(f.next().unwrap_or("a")),
            f.next().unwrap_or("application/octet-stream"),
            f.next().unwrap_or(""),
        );
        let mut p = format!(
            "Content-Type: {ct}; name={q}\r\nContent-Disposition: attachment; filename={q}\r\nContent-Transfer-Encoding: base64\r\n\r\n",
            q = quoted(&name)
        )
        .into_bytes();
        p.extend_from_slice(&base64_lines(&expand(content, n, attacker)));
        parts.push(p);
    }
    for c in v.opts("cid") {
        let mut f = c.splitn(3, '|');
        let (id, ct, content) = (
            f.next().unwrap_or("x"),
            f.next().unwrap_or("application/octet-stream"),
            f.next().unwrap_or(""),
        );
        let mut p = format!(
            "Content-Type: {ct}\r\nContent-ID: <{id}>\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        )
        .into_bytes();
        p.extend_from_slice(&base64_lines(&expand(content, n, attacker)));
        parts.push(p);
    }

    let mut raw = format!(
        "From: {from}\r\nTo: Support <support@example.com>\r\nSubject: {subject}\r\nDate: Tue, 24 Nov 2026 08:00:00 +0000\r\nMessage-ID: <{}>\r\nMIME-Version: 1.0\r\n",
        v.message_id()
    )
    .into_bytes();
    if parts.is_empty() {
        raw.extend_from_slice(&main);
    } else {
        let boundary = format!("=_sb_attack_{n}");
        let kind = if v.opts("cid").next().is_some() {
            "related"
        } else {
            "mixed"
        };
        raw.extend_from_slice(
            format!("Content-Type: multipart/{kind}; boundary=\"{boundary}\"\r\n\r\n").as_bytes(),
        );
        for p in std::iter::once(&main).chain(parts.iter()) {
            raw.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            raw.extend_from_slice(p);
        }
        raw.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    }
    raw
}

/// Runs in each page (through the DevTools protocol, so the page's CSP does
/// not apply to it) and lists what is wrong. `structural` adds the checks on
/// the sanitized markup itself.
const CHECK_JS: &str = r#"(structural) => {
  const problems = [];
  const p = (s) => { s = s.length > 160 ? s.slice(0, 160) + '…' : s; if (!problems.includes(s)) problems.push(s); };
  const d = document;
  const desc = (el) => el ? '<' + el.localName + (typeof el.className === 'string' && el.className ? '.' + el.className.split(' ')[0] : '') + '>' : 'nothing';
  if (d.title.startsWith('PWNED')) p('a script ran: document.title is ' + JSON.stringify(d.title));
  if (d.querySelector('[data-pwned]')) p('a script ran: data-pwned is set');
  if (typeof window.PWNED !== 'undefined') p('a script ran: window.PWNED is set');
  const body = d.querySelector('.sb-body');
  if (!body) { p('the page is not the preview any more: ' + location.href); return problems; }
  // Switchboard's own header stays visible, in view and on top.
  for (const el of d.querySelectorAll('.sb-subject, .sb-header dt, .sb-header dd, .sb-notice')) {
    const r = el.getBoundingClientRect();
    const cs = getComputedStyle(el);
    if (r.width < 1 || r.height < 1 || cs.visibility !== 'visible' || Number(cs.opacity) < 1) { p(desc(el) + ' of the header is hidden'); continue; }
    if (r.top < 0 || r.bottom > innerHeight) { p(desc(el) + ' of the header is out of view'); continue; }
    const hit = d.elementFromPoint(r.left + Math.min(r.width / 2, 8), r.top + r.height / 2);
    if (!hit || !el.contains(hit)) p(desc(el) + ' of the header is covered by ' + desc(hit));
  }
  // Nothing of the mail is laid out of the flow or above its own box.
  const bodyTop = body.getBoundingClientRect().top;
  for (const el of body.querySelectorAll('*')) {
    const cs = getComputedStyle(el);
    if (cs.position !== 'static' && cs.position !== 'relative') p(desc(el) + ' has position:' + cs.position);
    if (cs.transform !== 'none') p(desc(el) + ' has transform:' + cs.transform);
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.height > 0 && r.top < bodyTop - 1) p(desc(el) + ' is drawn above the mail body');
  }
  if (!structural) return problems;
  const banned = 'script,iframe,frame,frameset,object,embed,applet,form,input,button,select,textarea,keygen,isindex,base,link,meta[http-equiv],portal,fencedframe,.sb-body style';
  for (const el of d.querySelectorAll(banned)) p(desc(el) + ' survived');
  const own = location.origin;
  const parse = (v) => { try { return new URL(v.trim(), d.baseURI); } catch (e) { return null; } };
  const link = (v) => { const u = parse(v); return !u || ['http:', 'https:', 'mailto:', 'tel:'].includes(u.protocol) || u.origin === own; };
  const load = (v, img) => { const u = parse(v); return !u || u.origin === own || (img && u.protocol === 'data:' && /^data:image\//i.test(u.href)); };
  const urlAttrs = ['src', 'href', 'xlink:href', 'action', 'formaction', 'background', 'poster', 'lowsrc', 'dynsrc', 'data', 'codebase', 'icon', 'manifest', 'ping'];
  for (const el of d.querySelectorAll('*')) {
    const tag = el.localName;
    for (const a of el.attributes) {
      const name = a.name.toLowerCase();
      const v = a.value;
      if (name.startsWith('on')) p(desc(el) + ' keeps the event handler ' + name);
      else if (name === 'srcdoc') p(desc(el) + ' keeps srcdoc');
      else if (name === 'srcset' || name === 'imagesrcset') {
        for (const c of v.split(',')) { const url = c.trim().split(/\s+/)[0]; if (url && !load(url, tag === 'img' || tag === 'source')) p(desc(el) + ' ' + name + ' loads ' + url); }
      } else if ((name === 'href' || name === 'xlink:href') && (tag === 'a' || tag === 'area')) {
        if (!link(v)) p(desc(el) + ' links to ' + v);
      } else if (urlAttrs.includes(name)) {
        if (!load(v, tag === 'img' && name === 'src')) p(desc(el) + ' ' + name + '=' + v);
      } else if (name === 'target' && !['_blank', '_self'].includes(v.trim().toLowerCase())) p(desc(el) + ' target=' + v);
    }
  }
  return problems;
}"#;

/// Which requests of a page to another origin count as a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Foreign {
    /// Those that left the browser (not blocked by the page's CSP).
    Sent,
    /// Every attempt, even one the browser blocked.
    Attempted,
}

/// Opens `url` in the tab, lets it run, and lists what went wrong: the checks
/// above, dialogs, and requests to another origin than the page's.
async fn visit(page: &mut Page, url: &str, structural: bool, foreign: Foreign) -> Vec<String> {
    let mut problems = Vec::new();
    page.reset().await;
    if let Err(e) = page.goto(url, LOAD_TIMEOUT).await {
        problems.push(e);
    }
    match page.eval(&format!("({CHECK_JS})({structural})")).await {
        Ok(Value::Array(list)) => {
            problems.extend(list.iter().filter_map(|x| x.as_str().map(String::from)))
        }
        Ok(other) => problems.push(format!("checks returned {other}")),
        Err(e) => problems.push(e),
    }
    for d in &page.dialogs {
        problems.push(format!("a script opened a dialog: {d}"));
    }
    let requests = match foreign {
        Foreign::Sent => page.sent_requests(),
        Foreign::Attempted => page.requests.clone(),
    };
    let own = url::Url::parse(url).map(|u| u.origin());
    for r in &requests {
        let Ok(u) = url::Url::parse(r) else { continue };
        if matches!(u.scheme(), "data" | "blob" | "about") {
            continue;
        }
        if Ok(u.origin()) != own {
            problems.push(format!("the browser requested {r}"));
        }
    }
    problems
}

/// Visits every (vector, url) pair in `TABS` tabs, each tab going from one
/// page to the next (a new tab per page costs a renderer start).
async fn visit_all(
    browser: &Browser,
    pages: Vec<(usize, String)>,
    structural: bool,
    foreign: Foreign,
) -> BTreeMap<usize, Vec<String>> {
    let queue = Arc::new(Mutex::new(std::collections::VecDeque::from(pages)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..TABS {
        let browser = browser.clone();
        let queue = queue.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            let mut page = browser.new_page().await.expect("a new tab");
            loop {
                let next = queue.lock().unwrap().pop_front();
                let Some((n, url)) = next else { break };
                out.push((n, visit(&mut page, &url, structural, foreign).await));
            }
            // The last page is unloaded (whatever its unload does happens
            // now, awaited) before the tab closes.
            if let Err(e) = page.goto("about:blank", LOAD_TIMEOUT).await
                && let Some((n, problems)) = out.last_mut()
            {
                problems.push(format!("leaving #{n}: {e}"));
            }
            page.close().await;
            out
        });
    }
    let mut out = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        for (n, problems) in r.expect("a tab's worker") {
            if !problems.is_empty() {
                out.insert(n, problems);
            }
        }
    }
    out
}

/// Files the attacker's requests under the vector that made them.
fn attribute_hits(hits: Vec<String>, report: &mut BTreeMap<usize, Vec<String>>) {
    for h in hits {
        let n = h
            .split("/hit/")
            .nth(1)
            .and_then(|r| r.split(['/', '?']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        report
            .entry(n)
            .or_default()
            .push(format!("the attacker server got {h}"));
    }
}

fn render_report(title: &str, vectors: &[Vector], report: &BTreeMap<usize, Vec<String>>) -> String {
    let mut s = String::new();
    if report.is_empty() {
        return s;
    }
    s.push_str(&format!(
        "\n{title}: {} vector(s) got through\n",
        report.len()
    ));
    for (n, problems) in report {
        let name = vectors
            .iter()
            .find(|v| v.n == *n)
            .map_or("(unattributed)", |v| v.name.as_str());
        s.push_str(&format!("  #{n} {name}\n"));
        for p in problems {
            s.push_str(&format!("      {p}\n"));
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_corpus_never_reaches_the_network() {
    let started = Instant::now();
    let text = std::fs::read_to_string(fixtures().join("attacks/vectors.txt")).unwrap();
    let vectors = parse_vectors(&text);
    assert!(
        vectors.len() >= 150,
        "the corpus has {} vectors, at least 150 are expected",
        vectors.len()
    );

    let (attacker, attacker_port) = Site::start(true).await;
    let (mirror, mirror_port) = Site::start(false).await;
    let (app, inbox) = spawn_with_maildir().await;
    for v in &vectors {
        deliver_maildir(
            &inbox,
            &format!("{}.attack{}.host", 1_000_000 + v.n, v.n),
            &attack_mail(v, attacker_port),
        );
    }
    let tasks = tasks_by_message_id(&app, vectors.len(), Duration::from_secs(60)).await;
    let ingested = started.elapsed();
    let mut failures = String::new();
    let missing: Vec<String> = vectors
        .iter()
        .filter(|v| !tasks.contains_key(&v.message_id()))
        .map(|v| format!("#{} {}", v.n, v.name))
        .collect();
    if !missing.is_empty() {
        failures.push_str(&format!(
            "\n{} mail(s) did not become a task: {}\n",
            missing.len(),
            missing.join(", ")
        ));
    }
    let found: Vec<(&Vector, &MailTask)> = vectors
        .iter()
        .filter_map(|v| tasks.get(&v.message_id()).map(|t| (v, t)))
        .collect();
    // Ingestion and rendering on the server never reach the attacker.
    let mut server_side = BTreeMap::new();
    attribute_hits(attacker.take_hits(), &mut server_side);

    let browser = Browser::launch();

    // Layer A: the preview as deployed, opened top-level from Switchboard.
    let t = Instant::now();
    let pages = found
        .iter()
        .map(|(v, task)| (v.n, format!("{}{}", app.url, task.preview_url)))
        .collect();
    let mut layer_a = visit_all(&browser, pages, false, Foreign::Sent).await;
    attribute_hits(attacker.take_hits(), &mut layer_a);
    let layer_a_time = t.elapsed();

    // Layer B: the same HTML served without any CSP: the sanitizer alone.
    let t = Instant::now();
    let mut pages = Vec::new();
    // Kept for people to look at: every sanitized preview of the corpus.
    let saved = Path::new(env!("CARGO_TARGET_TMPDIR")).join("preview-attacks");
    let _ = std::fs::create_dir_all(&saved);
    for (v, task) in &found {
        let resp = fetch(&app, &task.preview_url).await;
        assert_eq!(resp.status(), StatusCode::OK, "preview of #{}", v.n);
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("text/html")
            .to_string();
        let html = resp.bytes().await.expect("preview body");
        let path = format!("/doc/{}", v.n);
        let _ = std::fs::write(saved.join(format!("{}.html", v.n)), &html);
        mirror.put(&path, &ct, html.to_vec());
        pages.push((v.n, format!("http://127.0.0.1:{mirror_port}{path}")));
    }
    let mut layer_b = visit_all(&browser, pages, true, Foreign::Attempted).await;
    attribute_hits(attacker.take_hits(), &mut layer_b);
    let layer_b_time = t.elapsed();

    // Control: the same checks must see a few vectors when they are left raw
    // (neither sanitizer nor CSP), or the layers above would prove nothing.
    let t = Instant::now();
    let controls: &[(&str, &str)] = &[
        ("script: inline", "a script ran"),
        ("handler: img onerror", "a script ran"),
        ("handler: input autofocus onfocus", "a script ran"),
        ("handler: details ontoggle", "a script ran"),
        ("handler: onanimationstart with keyframes", "a script ran"),
        ("img: plain remote", "the attacker server got"),
        ("css: background url", "the attacker server got"),
        ("style: @import url", "the attacker server got"),
        ("meta: refresh remote", "the attacker server got"),
        ("link: javascript href", "links to javascript:"),
        ("link: target _top", "target=_top"),
        ("form: action", "<form> survived"),
        ("overlay: fixed fake login", "position:fixed"),
        ("overlay: absolute over header", "covered by"),
        ("overlay: relative top", "above the mail body"),
        ("style: hides the header", "hidden"),
    ];
    let wrap = |v: &Vector| {
        let mut doc =
            b"<!doctype html><html><head><meta charset=\"utf-8\"><title>control</title></head>\
            <body><article class=\"sb-message\"><p class=\"sb-subject\">Control</p>\
            <dl class=\"sb-header\"><dt>From</dt><dd>someone</dd></dl><div class=\"sb-body\">"
                .to_vec();
        doc.extend(expand(&v.body, v.n, attacker_port));
        doc.extend_from_slice(b"</div></article></body></html>");
        doc
    };
    let mut pages = Vec::new();
    for (name, _) in controls {
        let v = vectors
            .iter()
            .find(|v| v.name == *name)
            .unwrap_or_else(|| panic!("control vector {name:?} is in the corpus"));
        let path = format!("/control/{}", v.n);
        mirror.put(&path, "text/html; charset=utf-8", wrap(v));
        pages.push((v.n, format!("http://127.0.0.1:{mirror_port}{path}")));
    }
    let mut control = visit_all(&browser, pages, true, Foreign::Attempted).await;
    attribute_hits(attacker.take_hits(), &mut control);
    for (name, expected) in controls {
        let n = vectors.iter().find(|v| v.name == *name).map_or(0, |v| v.n);
        let seen = control.get(&n).cloned().unwrap_or_default();
        if !seen.iter().any(|p| p.contains(expected)) {
            failures.push_str(&format!(
                "\nthe checks do not see #{n} {name} when it is left raw (expected {expected:?}): {seen:?}\n"
            ));
        }
    }
    // And layer A's own check is not blind either: under the preview's CSP,
    // raw remote loads and scripts are blocked, and seen as blocked.
    let csp_controls = [
        "script: inline",
        "script: external src upper case",
        "img: plain remote",
        "css: background url",
    ];
    let mut pages = Vec::new();
    for name in csp_controls {
        let v = vectors
            .iter()
            .find(|v| v.name == name)
            .expect("in the corpus");
        let path = format!("/csp/{}", v.n);
        mirror.put(&path, "text/html; charset=utf-8", wrap(v));
        pages.push((v.n, format!("http://127.0.0.1:{mirror_port}{path}")));
    }
    let mut csp_control = visit_all(&browser, pages, false, Foreign::Sent).await;
    attribute_hits(attacker.take_hits(), &mut csp_control);
    failures.push_str(&render_report(
        "Control: raw vectors under the preview's CSP",
        &vectors,
        &csp_control,
    ));
    let control_time = t.elapsed();

    eprintln!(
        "attack corpus: {} vectors; ingested in {ingested:.1?}, layer A in {layer_a_time:.1?}, \
         layer B in {layer_b_time:.1?}, control in {control_time:.1?}, {:.1?} in all",
        vectors.len(),
        started.elapsed()
    );
    failures.push_str(&render_report(
        "while ingesting and rendering",
        &vectors,
        &server_side,
    ));
    failures.push_str(&render_report(
        "Layer A (the preview as deployed, with its CSP)",
        &vectors,
        &layer_a,
    ));
    failures.push_str(&render_report(
        "Layer B (the sanitized HTML without CSP)",
        &vectors,
        &layer_b,
    ));
    drop(browser);
    app.stop().await;
    assert!(failures.is_empty(), "{failures}");
}

// --- charsets ------------------------------------------------------------------------------

/// Delivers the charset fixtures `files` and checks that each preview (by
/// Message-ID local part) shows the expected text. Returns the instance, the
/// previews and what was missing.
async fn charset_previews(
    files: &[&str],
    expected: &[(&'static str, &[&str])],
) -> (
    TestApp,
    HashMap<&'static str, (MailTask, String)>,
    Vec<String>,
) {
    let (app, inbox) = spawn_with_maildir().await;
    for (i, f) in files.iter().enumerate() {
        let raw = std::fs::read(fixtures().join(format!("charsets/{f}.eml"))).unwrap();
        deliver_maildir(&inbox, &format!("{}.{f}.host", 100 + i), &raw);
    }
    let tasks = tasks_by_message_id(&app, files.len(), Duration::from_secs(20)).await;
    let mut failures = Vec::new();
    let mut previews = HashMap::new();
    for (key, wanted) in expected {
        let mid = format!("{key}@charsets.example");
        let Some(task) = tasks.get(&mid) else {
            failures.push(format!("{key}: the mail did not become a task"));
            continue;
        };
        let resp = fetch(&app, &task.preview_url).await;
        assert_eq!(resp.status(), StatusCode::OK, "{key}");
        let html = resp.text().await.unwrap();
        let text = unescape_html(&html);
        for w in *wanted {
            if !text.contains(w) {
                let shown = text
                    .split("<div class=\"sb-body\">")
                    .nth(1)
                    .and_then(|b| b.split("</div>").next())
                    .unwrap_or(&text);
                failures.push(format!(
                    "{key}: the preview lacks {w:?}; its body is {shown:?}"
                ));
            }
        }
        previews.insert(*key, (task.clone(), html));
    }
    (app, previews, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charsets_are_decoded_into_the_preview() {
    let files = [
        "iso-8859-1",
        "windows-1252",
        "iso-2022-jp",
        "gb18030",
        "rfc2047",
        "rfc2231",
    ];
    let expected: &[(&str, &[&str])] = &[
        (
            "latin1",
            &[
                "Grüße aus Köln: café, naïve, déjà vu, ½ kg, © 2026, Ørsted, ¿Qué tal?",
                // the RFC 2047 subject in ISO-8859-1
                "Grüße aus Köln",
            ],
        ),
        (
            "cp1252",
            &["Preis: 12 € – „Angebot“, “quoted” and ‘single’… Œuvre™ š"],
        ),
        (
            "jis",
            &["こんにちは、世界。ご注文番号は１２３です。", "お問い合わせ"],
        ),
        ("gb18030", &["你好，世界！订单已发货。𠀀 😀 €"]),
        (
            "rfc2047",
            &["Ärger mit der Rechnung – bitte prüfen", "Jürgen Müller"],
        ),
        (
            "rfc2231",
            &[
                "Rechnung März 2026 €.pdf",
                "été résumé.txt",
                "Zwei Anhänge.",
            ],
        ),
    ];
    let (app, previews, mut failures) = charset_previews(&files, expected).await;
    // The task's subject is decoded too.
    if let Some((task, _)) = previews.get("rfc2047") {
        let (_, view) = app.get(ADMIN, &format!("/api/v1/tasks/{}", task.id)).await;
        assert_eq!(
            view["subject"], "Ärger mit der Rechnung – bitte prüfen",
            "{view}"
        );
    }
    // RFC 2231 names reach the download as RFC 5987 `filename*`.
    if let Some((_, html)) = previews.get("rfc2231") {
        let links = attachment_links(html);
        if links.is_empty() {
            failures.push(format!(
                "rfc2231: no attachment link in the preview: {html}"
            ));
        }
        let mut dispositions = Vec::new();
        for l in &links {
            let resp = fetch(&app, l).await;
            assert_eq!(resp.status(), StatusCode::OK, "{l}");
            dispositions.push(
                resp.headers()
                    .get(header::CONTENT_DISPOSITION)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        for want in [
            "filename*=UTF-8''Rechnung%20M%C3%A4rz%202026%20%E2%82%AC.pdf",
            "filename*=UTF-8''%C3%A9t%C3%A9%20r%C3%A9sum%C3%A9.txt",
        ] {
            if !dispositions.iter().any(|d| d.contains(want)) {
                failures.push(format!(
                    "rfc2231: no attachment is served with {want} (links {links:?}, got {dispositions:?})"
                ));
            }
        }
    }
    app.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// UTF-7 (RFC 2152): a base64 run may end with any character that is not
/// base64, and only a `-` is absorbed; `A+ImIDkQ. x` is `A≢Α. x`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf7_keeps_the_character_that_ends_an_encoded_run() {
    let (app, _, failures) =
        charset_previews(&["utf-7"], &[("utf7", &["Hi Mom -☺-! A≢Α. 日本語 £1"])]).await;
    app.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The `/api/v1/attachments/…` links of a preview, unescaped.
fn attachment_links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let html = unescape_html(html);
    for chunk in html.split("\"/api/v1/attachments/").skip(1) {
        if let Some(end) = chunk.find('"') {
            let link = format!("/api/v1/attachments/{}", &chunk[..end]);
            if !out.contains(&link) {
                out.push(link);
            }
        }
    }
    out
}

// --- a newsletter ----------------------------------------------------------------------

const LOGO_RGB: [u8; 3] = [255, 193, 7];

/// Measures the mail in a page: `root` is the mail's container.
const LAYOUT_JS: &str = r#"async (root) => {
  const r = document.querySelector(root);
  await Promise.all([...r.querySelectorAll('img')].map(i => i.complete ? 0 : new Promise(ok => { i.onload = i.onerror = ok; })));
  const skip = (n) => n.parentElement && n.parentElement.closest('.sb-remote-blocked, style, script, title');
  const texts = [];
  const w = document.createTreeWalker(r, NodeFilter.SHOW_TEXT);
  for (let n = w.nextNode(); n; n = w.nextNode()) if (!skip(n)) texts.push(n.data);
  const styled = [...r.querySelectorAll('table, td, h1, p, a, strong')].map(e => {
    const cs = getComputedStyle(e);
    return e.localName + ' ' + (e.style.color ? cs.color : '-') + ' / ' + cs.backgroundColor;
  });
  const rect = (e) => { if (!e) return null; const b = e.getBoundingClientRect(); return {x: b.left + scrollX, y: b.top + scrollY, w: b.width, h: b.height}; };
  const deepest = (sel, text) => [...r.querySelectorAll(sel)].filter(e => e.textContent.includes(text)).pop();
  const imgs = [...r.querySelectorAll('img')].map(i => ({src: i.getAttribute('src') || '', w: i.naturalWidth, rect: rect(i)}));
  return {
    tables: r.querySelectorAll('table').length,
    text: texts.join(' ').replace(/\s+/g, ' ').trim(),
    styled,
    main_width: r.querySelectorAll('table').length > 1 ? r.querySelectorAll('table')[1].getBoundingClientRect().width : null,
    imgs,
    masthead: rect(deepest('td', 'Acme Monthly')),
    cta: rect(deepest('a', 'Shop now')),
    footer: rect(deepest('td', 'You receive this')),
    page_height: document.documentElement.scrollHeight,
  };
}"#;

/// Colours of a PNG at points, decoded by the browser itself (no image crate).
const PIXELS_JS: &str = r#"async ([png, points]) => {
  const img = new Image();
  await new Promise((ok, err) => { img.onload = ok; img.onerror = err; img.src = 'data:image/png;base64,' + png; });
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const at = points.map(([x, y]) => Array.from(g.getImageData(Math.round(x), Math.round(y), 1, 1).data.slice(0, 3)));
  const data = g.getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  let nonWhite = 0;
  for (let i = 0; i < data.length; i += 4 * 7) {
    colours.add((data[i] >> 3) + ',' + (data[i + 1] >> 3) + ',' + (data[i + 2] >> 3));
    if (data[i] < 240 || data[i + 1] < 240 || data[i + 2] < 240) nonWhite++;
  }
  return {at, colours: colours.size, non_white: nonWhite / (data.length / 28)};
}"#;

fn close_to(got: &Value, want: [u8; 3]) -> bool {
    got.as_array().is_some_and(|a| {
        a.len() == 3
            && a.iter()
                .zip(want)
                .all(|(g, w)| (g.as_i64().unwrap_or(-999) - i64::from(w)).abs() <= 8)
    })
}

fn centre(rect: &Value) -> Option<(f64, f64)> {
    Some((
        rect["x"].as_f64()? + rect["w"].as_f64()? / 2.0,
        rect["y"].as_f64()? + rect["h"].as_f64()? / 2.0,
    ))
}

async fn layout(page: &mut Page, root: &str) -> Value {
    page.eval(&format!("({LAYOUT_JS})({})", serde_json::json!(root)))
        .await
        .expect("layout script")
}

async fn pixels(page: &mut Page, png: &[u8], points: &[(f64, f64)]) -> Value {
    let arg = serde_json::json!([
        b64(png),
        points.iter().map(|(x, y)| [x, y]).collect::<Vec<_>>()
    ]);
    page.eval(&format!("({PIXELS_JS})({arg})"))
        .await
        .expect("pixel script")
}

fn save_png(name: &str, png: &[u8]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newsletter_keeps_its_layout_and_blocks_remote_images() {
    let (attacker, attacker_port) = Site::start(true).await;
    let (mirror, mirror_port) = Site::start(false).await;
    let (app, inbox) = spawn_with_maildir().await;
    let template = std::fs::read_to_string(fixtures().join("newsletter/newsletter.html")).unwrap();
    let logo = solid_png(120, 40, LOGO_RGB);
    let hero = solid_png(600, 200, [52, 152, 219]);
    let icon = solid_png(32, 32, [22, 160, 133]);

    // The mail: remote images on the attacker's server, the logo as a cid: part.
    let html = template.replace(
        "%%REMOTE%%",
        &format!("http://127.0.0.1:{attacker_port}/newsletter"),
    );
    let boundary = "=_sb_newsletter";
    let raw = format!(
        "From: Acme <news@acme.example>\r\nTo: Support <support@example.com>\r\nSubject: Acme Monthly\r\n\
         Date: Tue, 24 Nov 2026 08:00:00 +0000\r\nMessage-ID: <newsletter@acme.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/related; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\
         --{boundary}\r\nContent-Type: image/png\r\nContent-ID: <logo@acme.example>\r\nContent-Disposition: inline; filename=\"logo.png\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}--{boundary}--\r\n",
        String::from_utf8(base64_lines(html.as_bytes())).unwrap(),
        String::from_utf8(base64_lines(&logo)).unwrap(),
    );
    deliver_maildir(&inbox, "1.newsletter.host", raw.as_bytes());
    let tasks = tasks_by_message_id(&app, 1, Duration::from_secs(20)).await;
    let task = tasks
        .get("newsletter@acme.example")
        .expect("the newsletter became a task")
        .clone();

    // The preview as HTML.
    let resp = fetch(&app, &task.preview_url).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = |name: header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    assert_eq!(
        h(header::CONTENT_SECURITY_POLICY).as_deref(),
        Some(PREVIEW_CSP)
    );
    assert_eq!(
        h(header::X_CONTENT_TYPE_OPTIONS).as_deref(),
        Some("nosniff")
    );
    assert_eq!(h(header::REFERRER_POLICY).as_deref(), Some("no-referrer"));
    let preview = resp.text().await.unwrap();
    assert!(
        preview.contains("2 remote images blocked"),
        "the notice counts the two remote images: {preview}"
    );
    assert!(
        !preview.contains(&format!("127.0.0.1:{attacker_port}/newsletter")),
        "no remote URL is left in the blocked preview: {preview}"
    );
    let unescaped = unescape_html(&preview);
    let allow = format!("/api/v1/tasks/{}/preview?remote=allow&token=", task.id);
    let allow_url = unescaped
        .split(&format!("href=\"{allow}"))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|token| format!("{allow}{token}"))
        .unwrap_or_else(|| panic!("a link loads them through Switchboard: {preview}"));
    // The cid: image points at our attachment endpoint, which serves its bytes inline.
    let cid_links: Vec<String> = attachment_links(&preview);
    let cid_prefix = format!("/api/v1/attachments/{}.", task.message);
    assert!(
        unescaped.contains(&format!("src=\"{cid_prefix}")),
        "the cid: image is rewritten to {cid_prefix}…: {preview}"
    );
    assert!(!preview.contains("cid:"), "{preview}");
    let logo_url = cid_links
        .iter()
        .find(|l| l.starts_with(&cid_prefix))
        .expect("the logo's URL")
        .clone();
    let resp = fetch(&app, &logo_url).await;
    assert_eq!(resp.status(), StatusCode::OK, "{logo_url}");
    assert_eq!(
        resp.headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("image/png")
    );
    assert!(
        resp.headers()
            .get(header::CONTENT_DISPOSITION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|d| d.starts_with("inline")),
        "{:?}",
        resp.headers()
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &logo[..]);
    // With remote images allowed, they go through the image proxy only.
    let resp = fetch(&app, &allow_url).await;
    assert_eq!(resp.status(), StatusCode::OK, "{allow_url}");
    let allowed = resp.text().await.unwrap();
    assert!(
        allowed.contains("/api/v1/image-proxy?"),
        "remote images are proxied: {allowed}"
    );
    assert!(!allowed.contains("remote images blocked"), "{allowed}");
    assert!(
        !allowed.contains(&format!("src=\"http://127.0.0.1:{attacker_port}")),
        "{allowed}"
    );

    // The original, as its sender meant it, with the remote images served locally.
    let original = template
        .replace(
            "%%REMOTE%%",
            &format!("http://127.0.0.1:{mirror_port}/newsletter"),
        )
        .replace("cid:logo@acme.example", "/newsletter/logo.png");
    mirror.put("/original.html", "text/html; charset=utf-8", original);
    mirror.put("/newsletter/logo.png", "image/png", logo.clone());
    mirror.put("/newsletter/hero.png", "image/png", hero);
    mirror.put("/newsletter/kitchen.png", "image/png", icon);
    mirror.put(
        "/blank.html",
        "text/html",
        "<!doctype html><title>blank</title>",
    );

    let browser = Browser::launch();
    let mut orig_page = browser.new_page().await.unwrap();
    orig_page
        .goto(
            &format!("http://127.0.0.1:{mirror_port}/original.html"),
            LOAD_TIMEOUT,
        )
        .await
        .unwrap();
    let orig = layout(&mut orig_page, "body").await;
    let orig_png = orig_page.screenshot().await.unwrap();
    let orig_path = save_png("preview-newsletter-original.png", &orig_png);

    let mut page = browser.new_page().await.unwrap();
    page.goto(&format!("{}{}", app.url, task.preview_url), LOAD_TIMEOUT)
        .await
        .unwrap();
    let got = layout(&mut page, ".sb-body").await;
    let png = page.screenshot().await.unwrap();
    let path = save_png("preview-newsletter.png", &png);
    eprintln!(
        "newsletter screenshots: {} (preview), {} (original)",
        path.display(),
        orig_path.display()
    );
    let requests = page.requests.clone();
    page.close().await;

    // Same structure, text and colours as the original.
    assert_eq!(got["tables"], orig["tables"], "tables kept");
    assert_eq!(got["text"], orig["text"], "text kept");
    assert_eq!(got["styled"], orig["styled"], "colours kept");
    assert_eq!(got["main_width"], 600.0, "the 600px table keeps its width");
    // The cid: and data: images show; the remote ones are not loaded.
    let imgs = got["imgs"].as_array().cloned().unwrap_or_default();
    let shown = |prefix: &str| {
        imgs.iter()
            .find(|i| i["src"].as_str().is_some_and(|s| s.starts_with(prefix)))
            .cloned()
    };
    let logo_img = shown(&cid_prefix).expect("the logo is an <img> of the preview");
    assert_eq!(logo_img["w"], 120, "the cid: logo loaded: {logo_img}");
    let data_img = shown("data:image/png").expect("the data: image is kept");
    assert_eq!(data_img["w"], 32, "the data: image loaded: {data_img}");
    assert!(
        imgs.iter()
            .all(|i| !i["src"].as_str().unwrap_or_default().contains("127.0.0.1")),
        "{imgs:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.starts_with(&app.url) || r.starts_with("data:")),
        "the preview only loads from Switchboard: {requests:?}"
    );
    assert_eq!(attacker.take_hits(), Vec::<String>::new());

    // The screenshot shows it: PNG size, and colours where the layout puts them.
    let (w, h) = png_size(&png).expect("a PNG");
    assert_eq!(w, 1000, "viewport width");
    assert!(
        f64::from(h) >= got["page_height"].as_f64().unwrap_or(0.0) - 1.0,
        "the whole page is captured: {h}px"
    );
    let logo_at = centre(&logo_img["rect"]).expect("logo position");
    let mast = &got["masthead"];
    let mast_at = (
        mast["x"].as_f64().unwrap() + mast["w"].as_f64().unwrap() - 20.0,
        mast["y"].as_f64().unwrap() + 8.0,
    );
    let cta_at = centre(&got["cta"]).expect("button position");
    let cta_at = (
        cta_at.0 - got["cta"]["w"].as_f64().unwrap() / 2.0 + 6.0,
        cta_at.1,
    );
    let footer_at = (
        got["footer"]["x"].as_f64().unwrap() + got["footer"]["w"].as_f64().unwrap() - 10.0,
        got["footer"]["y"].as_f64().unwrap() + 6.0,
    );
    let mut blank = browser.new_page().await.unwrap();
    blank
        .goto(
            &format!("http://127.0.0.1:{mirror_port}/blank.html"),
            LOAD_TIMEOUT,
        )
        .await
        .unwrap();
    let px = pixels(&mut blank, &png, &[logo_at, mast_at, cta_at, footer_at]).await;
    let at = px["at"].as_array().cloned().unwrap_or_default();
    for (i, (what, rgb)) in [
        ("the cid: logo", LOGO_RGB),
        ("the masthead", [0x1f, 0x4e, 0x79]),
        ("the button", [0x27, 0xae, 0x60]),
        ("the footer", [0x33, 0x33, 0x33]),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(
            close_to(&at[i], rgb),
            "{what} is drawn in rgb{rgb:?}, the screenshot has {} there (see {})",
            at[i],
            path.display()
        );
    }
    assert!(
        px["colours"].as_u64().unwrap_or(0) >= 8 && px["non_white"].as_f64().unwrap_or(0.0) > 0.1,
        "the screenshot has real content: {px} (see {})",
        path.display()
    );
    let (ow, _) = png_size(&orig_png).expect("a PNG");
    assert_eq!(ow, w);
    blank.close().await;
    orig_page.close().await;
    drop(browser);
    app.stop().await;
}

// --- signed links and headers --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_links_are_signed_for_one_task() {
    let (app, inbox) = spawn_with_maildir().await;
    for i in 1..=2 {
        deliver_maildir(
            &inbox,
            &format!("{i}.links.host"),
            &mail(
                &format!("c{i}@customer.example"),
                &format!("Question {i}"),
                &format!("links{i}@customer.example"),
                &[],
                "Hello.",
            ),
        );
    }
    let tasks = tasks_by_message_id(&app, 2, Duration::from_secs(20)).await;
    let one = tasks["links1@customer.example"].clone();
    let two = tasks["links2@customer.example"].clone();

    for url in [
        one.preview_url.clone(),
        format!(
            "/api/v1/messages/{}/preview?token={}",
            one.message,
            one.token()
        ),
    ] {
        let resp = fetch(&app, &url).await;
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        let hv = |n: header::HeaderName| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        assert_eq!(
            hv(header::CONTENT_SECURITY_POLICY).as_deref(),
            Some(PREVIEW_CSP),
            "{url}"
        );
        assert_eq!(
            hv(header::X_CONTENT_TYPE_OPTIONS).as_deref(),
            Some("nosniff")
        );
        assert_eq!(hv(header::REFERRER_POLICY).as_deref(), Some("no-referrer"));
        assert!(
            hv(header::CONTENT_TYPE).is_some_and(|c| c.starts_with("text/html")),
            "{url}"
        );
        assert!(resp.text().await.unwrap().contains("Question 1"));
    }

    let preview = |token: &str| format!("/api/v1/tasks/{}/preview?token={token}", one.id);
    // Another task's token.
    let resp = fetch(&app, &preview(two.token())).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "another task's token");
    let resp = fetch(
        &app,
        &format!(
            "/api/v1/messages/{}/preview?token={}",
            one.message,
            two.token()
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "another task's token");
    // Forged: another signature, or a later expiry under the same signature.
    let token = one.token().to_string();
    let (exp, sig) = token.split_once('.').expect("expiry.signature");
    let flipped: String = sig
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                if c == '0' { '1' } else { '0' }
            } else {
                c
            }
        })
        .collect();
    let later = exp.parse::<i64>().unwrap() + 3600;
    for forged in [
        format!("{exp}.{flipped}"),
        format!("{later}.{sig}"),
        format!("{exp}.{}", &sig[..sig.len() / 2]),
        "garbage".to_string(),
        String::new(),
    ] {
        let resp = fetch(&app, &preview(&forged)).await;
        let status = resp.status();
        assert!(
            status == StatusCode::FORBIDDEN
                || (forged.is_empty() && status == StatusCode::UNAUTHORIZED),
            "forged token {forged:?}: {status}"
        );
    }
    // Expired: signed with the instance's own key, an hour ago.
    let key = app.store().link_key().await.expect("link key");
    let past = chrono::Utc::now().timestamp() - 3600;
    let expired = switchboard::domain::link::sign(&key, &format!("task:{}", one.id), past);
    let resp = fetch(&app, &preview(&expired)).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "expired token");
    let body: Value = resp.json().await.unwrap_or_default();
    assert!(body.to_string().contains("link_expired"), "{body}");
    // The same key, the right scope and a future expiry is accepted: the
    // refusals above are about the token, not the key.
    let fresh = switchboard::domain::link::sign(
        &key,
        &format!("task:{}", one.id),
        chrono::Utc::now().timestamp() + 60,
    );
    assert_eq!(fetch(&app, &preview(&fresh)).await.status(), StatusCode::OK);
    // No token and no bearer: not authenticated.
    let resp = fetch(&app, &format!("/api/v1/tasks/{}/preview", one.id)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}
