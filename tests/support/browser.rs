//! A headless Chromium for tests, driven over the DevTools protocol through
//! `--remote-debugging-pipe`: JSON messages separated by NUL bytes on file
//! descriptors 3 (to the browser) and 4 (from it). No websocket, no extra
//! crate, one browser process for any number of pages (tabs) at once.
//!
//! Chromium comes from Debian's `chromium` package (`scripts/install-deps`).
#![allow(dead_code)]
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long one protocol call may take before the test gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags for a quiet, self-contained headless browser on a closed network.
const FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--mute-audio",
    "--hide-scrollbars",
    "--password-store=basic",
    "--use-mock-keychain",
    "--remote-debugging-pipe",
    "about:blank",
];

// The pipe's ends must sit at fds 3 and 4 in the child.
unsafe extern "C" {
    fn dup2(old: i32, new: i32) -> i32;
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
}
const F_DUPFD_CLOEXEC: i32 = 1030;

/// The `chromium` binary, if installed.
pub fn chromium_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SWITCHBOARD_TEST_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/bin"));
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(p) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            return Some(p);
        }
    }
    None
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, String>>>;

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    sessions: Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>,
    closed: Mutex<Option<String>>,
}

struct Inner {
    child: Mutex<Child>,
    writer: Mutex<std::io::PipeWriter>,
    next_id: AtomicU64,
    shared: Arc<Shared>,
    profile: tempfile::TempDir,
}

/// One running browser; cheap to clone (pages hold a handle).
#[derive(Clone)]
pub struct Browser {
    inner: Arc<Inner>,
}

impl Browser {
    /// Starts Chromium, or panics saying how to install it.
    pub fn launch() -> Browser {
        let path = chromium_path()
            .expect("chromium is not installed: run `bash scripts/install-deps` as root");
        Self::launch_at(&path).unwrap_or_else(|e| panic!("chromium did not start: {e}"))
    }

    fn launch_at(path: &std::path::Path) -> Result<Browser, String> {
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = std::fs::File::create(profile.path().join("chromium.log"))
            .map_err(|e| e.to_string())?;
        let (to_browser_r, to_browser_w) = std::io::pipe().map_err(|e| e.to_string())?;
        let (from_browser_r, from_browser_w) = std::io::pipe().map_err(|e| e.to_string())?;
        let (r_fd, w_fd) = (to_browser_r.as_raw_fd(), from_browser_w.as_raw_fd());
        let mut cmd = Command::new(path);
        cmd.args(FLAGS)
            .arg(format!(
                "--user-data-dir={}",
                profile.path().join("data").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move both ends above 4 first, so that neither dup2 clobbers the other.
                let r = fcntl(r_fd, F_DUPFD_CLOEXEC, 10);
                let w = fcntl(w_fd, F_DUPFD_CLOEXEC, 10);
                if r < 0 || w < 0 || dup2(r, 3) < 0 || dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        drop(to_browser_r);
        drop(from_browser_w);

        let shared = Arc::new(Shared::default());
        let reader_shared = shared.clone();
        std::thread::spawn(move || read_loop(from_browser_r, reader_shared));

        let browser = Browser {
            inner: Arc::new(Inner {
                child: Mutex::new(child),
                writer: Mutex::new(to_browser_w),
                next_id: AtomicU64::new(1),
                shared,
                profile,
            }),
        };
        Ok(browser)
    }

    /// The browser's own log (stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.inner.profile.path().join("chromium.log")).unwrap_or_default()
    }

    /// Sends one protocol command (to the browser, or to a page's session).
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Some(why) = self.inner.shared.closed.lock().unwrap().clone() {
            return Err(why);
        }
        self.inner.shared.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        bytes.push(0);
        if let Err(e) = self.inner.writer.lock().unwrap().write_all(&bytes) {
            self.inner.shared.pending.lock().unwrap().remove(&id);
            return Err(format!("{method}: writing to chromium: {e}"));
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r.map_err(|e| format!("{method}: {e}")),
            Ok(Err(_)) => Err(format!("{method}: chromium went away")),
            Err(_) => {
                self.inner.shared.pending.lock().unwrap().remove(&id);
                Err(format!("{method}: no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }

    /// Opens a new tab (blank), with page, network and runtime events on.
    pub async fn new_page(&self) -> Result<Page, String> {
        let t = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = t["targetId"]
            .as_str()
            .ok_or("createTarget: no targetId")?
            .to_string();
        let a = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        let session = a["sessionId"]
            .as_str()
            .ok_or("attachToTarget: no sessionId")?
            .to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .shared
            .sessions
            .lock()
            .unwrap()
            .insert(session.clone(), tx);
        let page = Page {
            browser: self.clone(),
            target_id,
            session,
            events: rx,
            requests: Vec::new(),
            request_ids: Vec::new(),
            blocked: Default::default(),
            dialogs: Vec::new(),
            console: Vec::new(),
            loaded: false,
            main_frame: None,
            main_loader: None,
            network_idle: false,
        };
        for (method, params) in [
            ("Page.enable", json!({})),
            // For `networkIdle`: the event that ends a visit.
            ("Page.setLifecycleEventsEnabled", json!({"enabled": true})),
            ("Network.enable", json!({})),
            ("Runtime.enable", json!({})),
            // Every tab behaves as if it had the focus (autofocus, onfocus…).
            (
                "Emulation.setFocusEmulationEnabled",
                json!({"enabled": true}),
            ),
        ] {
            page.call(method, params).await?;
        }
        page.set_viewport(1000, 800).await?;
        Ok(page)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ask politely, then make sure: the process is ours, by its handle.
        let close = b"{\"id\":0,\"method\":\"Browser.close\",\"params\":{}}\0";
        if let Ok(mut w) = self.writer.lock() {
            let _ = w.write_all(close);
        }
        if let Ok(mut child) = self.child.lock() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_loop(from_browser: std::io::PipeReader, shared: Arc<Shared>) {
    let mut reader = BufReader::new(from_browser);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(0, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() == Some(&0) {
            buf.pop();
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
            continue;
        };
        if let Some(id) = msg["id"].as_u64() {
            if let Some(tx) = shared.pending.lock().unwrap().remove(&id) {
                let r = if msg.get("error").is_some() {
                    Err(msg["error"].to_string())
                } else {
                    Ok(msg["result"].clone())
                };
                let _ = tx.send(r);
            }
        } else if let Some(s) = msg["sessionId"].as_str()
            && let Some(tx) = shared.sessions.lock().unwrap().get(s)
        {
            let _ = tx.send(msg.clone());
        }
    }
    *shared.closed.lock().unwrap() = Some("chromium closed its pipe".into());
    for (_, tx) in shared.pending.lock().unwrap().drain() {
        let _ = tx.send(Err("chromium closed its pipe".into()));
    }
    shared.sessions.lock().unwrap().clear();
}

/// One tab. What it loaded and any dialog a script opened are recorded.
pub struct Page {
    browser: Browser,
    target_id: String,
    session: String,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every URL the tab requested (documents, images, styles, fetches…),
    /// including those the page's CSP then blocked.
    pub requests: Vec<String>,
    /// Request ids, parallel to `requests`, and those the page's CSP blocked.
    request_ids: Vec<String>,
    blocked: std::collections::HashSet<String>,
    /// Messages of `alert`/`confirm`/`prompt` dialogs (dismissed).
    pub dialogs: Vec<String>,
    /// Console messages and uncaught exceptions.
    pub console: Vec<String>,
    loaded: bool,
    /// The tab's main frame, and the document loading in it now (a
    /// redirect or a meta refresh starts a new one).
    main_frame: Option<String>,
    main_loader: Option<String>,
    /// The current document's `networkIdle` came: nothing on the network for
    /// 500 ms (Chromium's own measure).
    network_idle: bool,
}

impl Page {
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.browser.call(Some(&self.session), method, params).await
    }

    pub async fn set_viewport(&self, width: u32, height: u32) -> Result<(), String> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await
        .map(|_| ())
    }

    async fn handle(&mut self, ev: Value) {
        let p = &ev["params"];
        match ev["method"].as_str().unwrap_or_default() {
            "Network.requestWillBeSent" => {
                if let Some(url) = p["request"]["url"].as_str() {
                    self.requests.push(url.to_string());
                    self.request_ids
                        .push(p["requestId"].as_str().unwrap_or_default().to_string());
                }
            }
            // Blocked by the page's Content-Security-Policy: never sent.
            "Network.loadingFailed" if p["blockedReason"] == "csp" => {
                let id = p["requestId"].as_str().unwrap_or_default();
                self.blocked.insert(id.to_string());
            }
            "Page.loadEventFired" => self.loaded = true,
            "Page.lifecycleEvent" if p["frameId"].as_str() == self.main_frame.as_deref() => {
                let loader = p["loaderId"].as_str().map(str::to_owned);
                match p["name"].as_str().unwrap_or_default() {
                    // A new document in the main frame: wait for its idle.
                    "init" if loader != self.main_loader => {
                        self.main_loader = loader;
                        self.network_idle = false;
                    }
                    "networkIdle" if loader == self.main_loader => self.network_idle = true,
                    _ => {}
                }
            }
            "Page.javascriptDialogOpening" => {
                self.dialogs
                    .push(p["message"].as_str().unwrap_or_default().to_string());
                let _ = self
                    .call("Page.handleJavaScriptDialog", json!({"accept": false}))
                    .await;
            }
            "Runtime.consoleAPICalled" => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| a.iter().map(|x| x["value"].to_string()).collect())
                    .unwrap_or_default();
                self.console.push(format!("console: {}", args.join(" ")));
            }
            "Runtime.exceptionThrown" => {
                self.console.push(format!(
                    "exception: {}",
                    p["exceptionDetails"]["text"].as_str().unwrap_or_default()
                ));
            }
            _ => {}
        }
    }

    /// Handles the events that arrived so far.
    async fn drain(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            self.handle(ev).await;
        }
    }

    /// The requests that left the browser: those the page's CSP did not block.
    pub fn sent_requests(&self) -> Vec<String> {
        self.requests
            .iter()
            .zip(&self.request_ids)
            .filter(|(_, id)| !self.blocked.contains(*id))
            .map(|(url, _)| url.clone())
            .collect()
    }

    /// Forgets what the tab recorded so far (requests, dialogs, console),
    /// after handling the events still queued.
    pub async fn reset(&mut self) {
        self.drain().await;
        self.requests.clear();
        self.request_ids.clear();
        self.blocked.clear();
        self.dialogs.clear();
        self.console.clear();
    }

    /// Navigates, then waits for the load event and for the network to go
    /// idle (Chromium's `networkIdle`: nothing on the network for 500 ms) in
    /// the document the tab ends up showing, at most `timeout` in all. Each is
    /// an event, not a guess at how long a page needs; one that does not come
    /// is an error, never ignored.
    pub async fn goto(&mut self, url: &str, timeout: Duration) -> Result<(), String> {
        self.drain().await;
        self.loaded = false;
        self.network_idle = false;
        let r = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = r["errorText"].as_str() {
            return Err(format!("navigating to {url}: {e}"));
        }
        self.main_frame = r["frameId"].as_str().map(str::to_owned);
        self.main_loader = r["loaderId"].as_str().map(str::to_owned);
        let end = tokio::time::Instant::now() + timeout;
        while !(self.loaded && self.network_idle) {
            match tokio::time::timeout_at(end, self.events.recv()).await {
                Ok(Some(ev)) => self.handle(ev).await,
                Ok(None) => return Err("chromium went away".into()),
                Err(_) => {
                    return Err(format!(
                        "{url}: {} within {timeout:?}",
                        if self.loaded {
                            "the network did not go idle"
                        } else {
                            "no load event"
                        }
                    ));
                }
            }
        }
        Ok(())
    }

    /// Evaluates a JavaScript expression (promises awaited) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Result<Value, String> {
        self.drain().await;
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("script failed: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// The whole page (beyond the viewport) as PNG bytes.
    pub async fn screenshot(&mut self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        self.drain().await;
        let m = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &m["cssContentSize"];
        let (w, h) = (
            size["width"].as_f64().unwrap_or(1000.0).ceil(),
            size["height"].as_f64().unwrap_or(800.0).ceil(),
        );
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1},
                }),
            )
            .await?;
        let data = r["data"].as_str().ok_or("captureScreenshot: no data")?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| e.to_string())
    }

    /// Closes the tab.
    pub async fn close(self) {
        let _ = self
            .browser
            .call(
                None,
                "Target.closeTarget",
                json!({"targetId": self.target_id}),
            )
            .await;
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if let Ok(mut s) = self.browser.inner.shared.sessions.lock() {
            s.remove(&self.session);
        }
    }
}

/// Width and height of a PNG, from its IHDR chunk.
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some((w, h))
}

/// A PNG of one colour (RGB), uncompressed (stored deflate blocks): for
/// inline images in test mail, without an image crate.
pub fn solid_png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    // Each row: filter type 0 (none), then the pixels.
    let row: Vec<u8> = std::iter::once(0)
        .chain(rgb.iter().copied().cycle().take(width as usize * 3))
        .collect();
    let raw = row.repeat(height as usize);
    let mut z = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, c) in chunks.iter().enumerate() {
        z.push(u8::from(i + 1 == chunks.len()));
        let len = c.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(&b"IHDR"[..], &ihdr[..]), (b"IDAT", &z), (b"IEND", &[])] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = png.len();
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        let crc = crc32(&png[start..]);
        png.extend_from_slice(&crc.to_be_bytes());
    }
    png
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
