//! The demo's simulated web chat: a small chat system of its own, on a port
//! of its own, that talks to Switchboard only as a real one would, with
//! signed events posted to `POST /api/v1/chat/events`. Open-chat handles
//! lead here (the channel's `chat_url_template`): an agent answers the
//! visitor in the page, and the visitor can write too (the same page without
//! `?agent=`). `/` starts another chat. Its chats are kept in
//! `data/web-chat.json`, so they survive a restart of the demo. It has no
//! sign-in of its own (anyone who reaches it may write as any demo agent):
//! it listens beside the demo, on the same address, for trying things out.
use crate::domain::chat::sign;
use crate::domain::now_millis;
use crate::mail::preview::escape_html as escape;
use anyhow::Context;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// The longest message the page takes (the chat event's own limit is larger).
const MAX_TEXT: usize = 4000;

/// One line of a chat, as the chat system keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    /// `customer` or `agent`.
    pub from: String,
    pub name: String,
    pub text: String,
    pub at: i64,
    /// The id of a reply relayed from Switchboard (its message id): a
    /// delivery made again is kept once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The running chat system.
#[derive(Clone)]
pub struct WebChat {
    inner: Arc<Inner>,
}

struct Inner {
    channel: String,
    secret: String,
    /// Switchboard's own URL, known once it listens.
    switchboard: OnceLock<String>,
    file: PathBuf,
    chats: Mutex<BTreeMap<String, Vec<Line>>>,
    agents: HashMap<String, String>,
    client: reqwest::Client,
}

/// Why a line was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no chat '{0}' here")]
    NoChat(String),
    #[error("text: must be 1 to {MAX_TEXT} characters")]
    Text,
    #[error("Switchboard did not take the message: {0}")]
    Refused(String),
}

impl WebChat {
    /// Listens on `host`, at `port` where that is free (else any free port),
    /// and serves the chat pages; returns the chat system, the
    /// `chat_url_template` that leads to it and the `reply_url` where
    /// Switchboard relays agents' replies written on the task page.
    pub async fn start(
        host: &str,
        port: u16,
        channel: &str,
        secret: &str,
        file: PathBuf,
        agents: HashMap<String, String>,
    ) -> anyhow::Result<(WebChat, String, String)> {
        let chats = match std::fs::read(&file) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(chats) => chats,
                Err(e) => {
                    // Kept aside, not lost; the demo starts with no chats.
                    let aside = file.with_extension("json.unreadable");
                    tracing::warn!(error = %e, file = %file.display(), aside = %aside.display(), "the web chat's file is unreadable: set aside");
                    let _ = std::fs::rename(&file, &aside);
                    BTreeMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        let chat = WebChat {
            inner: Arc::new(Inner {
                channel: channel.to_string(),
                secret: secret.to_string(),
                switchboard: OnceLock::new(),
                file,
                chats: Mutex::new(chats),
                agents,
                client: reqwest::Client::new(),
            }),
        };
        let listener = match tokio::net::TcpListener::bind((host, port)).await {
            Ok(listener) => listener,
            Err(_) => tokio::net::TcpListener::bind((host, 0))
                .await
                .with_context(|| format!("the demo's web chat cannot listen on {host}"))?,
        };
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/", get(home).post(start_chat))
            .route("/chat/{chat_id}", get(page))
            .route("/chat/{chat_id}/lines", get(lines).post(send))
            .route(
                REPLY_PATH,
                axum::routing::post(relayed).layer(axum::extract::DefaultBodyLimit::max(
                    crate::domain::chat::MAX_EVENT_BYTES,
                )),
            )
            .with_state(chat.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the demo's web chat stopped");
            }
        });
        let template = format!("http://{addr}/chat/{{chat_id}}?agent={{agent_id}}");
        Ok((chat, template, format!("http://{addr}{REPLY_PATH}")))
    }

    /// A reply Switchboard relayed (a signed `chat.message` from an agent):
    /// kept in its chat, once per id.
    fn take_relayed(
        &self,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<(), (StatusCode, String)> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        crate::domain::chat::verify_signature(
            &[self.inner.secret.as_bytes()],
            header("x-switchboard-timestamp"),
            header("x-switchboard-signature"),
            body,
            now_millis() / 1000,
        )
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
        let reply: Relayed = serde_json::from_slice(body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("not a chat event: {e}")))?;
        if reply.kind != "chat.message" || reply.from != "agent" {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                "only agents' chat.message events are relayed here".into(),
            ));
        }
        let name = reply
            .sender_name
            .clone()
            .or_else(|| {
                reply
                    .agent
                    .as_ref()
                    .and_then(|a| self.inner.agents.get(a).cloned())
            })
            .unwrap_or_else(|| "Agent".into());
        let mut kept = line("agent", &name, &reply.text);
        kept.id = Some(reply.id.clone());
        // Looked for and kept under one lock: a delivery made twice at once
        // is kept once.
        let mut chats = self.lock();
        let Some(lines) = chats.get(&reply.chat_id) else {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no chat '{}' here", reply.chat_id),
            ));
        };
        if lines
            .iter()
            .any(|l| l.id.as_deref() == Some(reply.id.as_str()))
        {
            return Ok(());
        }
        self.keep(&mut chats, &reply.chat_id, kept);
        Ok(())
    }

    /// Where the chat system posts its events, once Switchboard listens.
    pub fn connect(&self, switchboard_url: &str) {
        let _ = self.inner.switchboard.set(switchboard_url.to_string());
    }

    /// A visitor opens a new chat with its first message; returns the chat's id.
    pub async fn open(
        &self,
        name: &str,
        email: &str,
        subject: &str,
        parameters: serde_json::Value,
        text: &str,
    ) -> Result<String, SendError> {
        let chat_id = format!("demo-{}-{:06x}", now_millis(), rand::random::<u32>() >> 8);
        let event = serde_json::json!({
            "id": event_id(&chat_id), "channel": self.inner.channel, "type": "chat.started",
            "chat_id": chat_id, "customer": {"name": name, "email": email},
            "subject": subject, "language": "en", "parameters": parameters, "text": text,
        });
        self.post(&event).await?;
        self.record(&chat_id, line("customer", name, text));
        Ok(chat_id)
    }

    /// A line of the chat `chat_id`, from its visitor or (`agent`) one of the
    /// demo's agents, sent to Switchboard and then kept.
    pub async fn say(
        &self,
        chat_id: &str,
        agent: Option<&str>,
        text: &str,
    ) -> Result<Vec<Line>, SendError> {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > MAX_TEXT {
            return Err(SendError::Text);
        }
        let visitor = self
            .lock()
            .get(chat_id)
            .and_then(|lines| lines.iter().find(|l| l.from == "customer"))
            .map(|l| l.name.clone())
            .ok_or_else(|| SendError::NoChat(chat_id.to_string()))?;
        let (from, name) = match agent.and_then(|a| self.inner.agents.get(a)) {
            Some(name) => ("agent", name.clone()),
            None => ("customer", visitor),
        };
        let event = serde_json::json!({
            "id": event_id(chat_id), "channel": self.inner.channel, "type": "chat.message",
            "chat_id": chat_id, "from": from, "sender_name": name, "text": text,
        });
        self.post(&event).await?;
        self.record(chat_id, line(from, &name, text));
        Ok(self.transcript(chat_id).unwrap_or_default())
    }

    fn transcript(&self, chat_id: &str) -> Option<Vec<Line>> {
        self.lock().get(chat_id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<Line>>> {
        self.inner.chats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a line and writes every chat to the file, under the lock (so
    /// an older snapshot never overwrites a newer one) and whole (a new
    /// file renamed over the old).
    fn record(&self, chat_id: &str, line: Line) {
        let mut chats = self.lock();
        self.keep(&mut chats, chat_id, line);
    }

    /// [`WebChat::record`] under a lock already held.
    fn keep(&self, chats: &mut BTreeMap<String, Vec<Line>>, chat_id: &str, line: Line) {
        chats.entry(chat_id.to_string()).or_default().push(line);
        let file = &self.inner.file;
        let fresh = file.with_extension("json.new");
        let written = serde_json::to_vec_pretty(&*chats)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&fresh, json))
            .and_then(|()| std::fs::rename(&fresh, file));
        if let Err(e) = written {
            tracing::warn!(error = %e, "the demo's web chat cannot keep its chats");
        }
    }

    async fn post(&self, event: &serde_json::Value) -> Result<(), SendError> {
        let url = self
            .inner
            .switchboard
            .get()
            .ok_or_else(|| SendError::Refused("Switchboard is not listening yet".into()))?;
        let body = serde_json::to_vec(event).map_err(|e| SendError::Refused(e.to_string()))?;
        let ts = chrono::Utc::now().timestamp();
        let response = self
            .inner
            .client
            .post(format!("{url}/api/v1/chat/events"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-switchboard-timestamp", ts.to_string())
            .header(
                "x-switchboard-signature",
                sign(self.inner.secret.as_bytes(), ts, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Refused(e.to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            let status = response.status();
            let said = response.text().await.unwrap_or_default();
            Err(SendError::Refused(format!(
                "{status}: {}",
                crate::domain::clip(&said, 200)
            )))
        }
    }
}

/// A line written now.
fn line(from: &str, name: &str, text: &str) -> Line {
    Line {
        from: from.into(),
        name: name.into(),
        text: text.into(),
        at: now_millis(),
        id: None,
    }
}

/// Where Switchboard posts relayed replies (the channel's `reply_url`).
const REPLY_PATH: &str = "/hooks/switchboard";

/// A relayed reply, as Switchboard posts it.
#[derive(Deserialize)]
struct Relayed {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    chat_id: String,
    from: String,
    text: String,
    sender_name: Option<String>,
    agent: Option<String>,
}

async fn relayed(
    State(chat): State<WebChat>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match chat.take_relayed(&headers, &body) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err((status, why)) => (status, why).into_response(),
    }
}

/// Unique per event: a chat system's event ids never repeat.
fn event_id(chat_id: &str) -> String {
    format!("{chat_id}-{}-{:08x}", now_millis(), rand::random::<u32>())
}

#[derive(Deserialize)]
struct Who {
    agent: Option<String>,
}

#[derive(Deserialize)]
struct Said {
    text: String,
    agent: Option<String>,
}

#[derive(Deserialize)]
struct NewChat {
    name: Option<String>,
    subject: Option<String>,
    text: String,
}

async fn lines(State(chat): State<WebChat>, Path(chat_id): Path<String>) -> Response {
    match chat.transcript(&chat_id) {
        Some(lines) => axum::Json(lines).into_response(),
        None => (StatusCode::NOT_FOUND, "no such chat").into_response(),
    }
}

async fn send(
    State(chat): State<WebChat>,
    Path(chat_id): Path<String>,
    axum::Json(said): axum::Json<Said>,
) -> Response {
    match chat.say(&chat_id, said.agent.as_deref(), &said.text).await {
        Ok(lines) => axum::Json(lines).into_response(),
        Err(e @ SendError::NoChat(_)) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
        Err(e @ SendError::Text) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn start_chat(State(chat): State<WebChat>, axum::Form(new): axum::Form<NewChat>) -> Response {
    let name = new
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or("Web visitor");
    let subject = new
        .subject
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("A question");
    let text = new.text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT {
        return (StatusCode::BAD_REQUEST, SendError::Text.to_string()).into_response();
    }
    let local: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_lowercase();
    let local = if local.is_empty() {
        "visitor".to_string()
    } else {
        local
    };
    let email = format!("{local}@visitor.example");
    match chat
        .open(name, &email, subject, serde_json::json!({}), text)
        .await
    {
        Ok(id) => Redirect::to(&format!("/chat/{id}")).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn home() -> Response {
    html(
        "Demo web chat".into(),
        "<h1>Demo web chat</h1>\
         <p>A visitor of the shop's website starts a chat with Support: it becomes an IM task in Switchboard.</p>\
         <form method=\"post\" action=\"/\">\
         <p><label>Your name <input name=\"name\" value=\"Web visitor\" maxlength=\"100\"></label></p>\
         <p><label>Subject <input name=\"subject\" value=\"A question\" maxlength=\"200\"></label></p>\
         <p><label>Message<br><textarea name=\"text\" rows=\"3\" cols=\"60\" required maxlength=\"4000\"></textarea></label></p>\
         <p><button>Start the chat</button></p></form>"
            .into(),
    )
}

async fn page(
    State(chat): State<WebChat>,
    Path(chat_id): Path<String>,
    Query(who): Query<Who>,
) -> Response {
    let Some(lines) = chat.transcript(&chat_id) else {
        return html(
            "No such chat".into(),
            "<h1>No such chat</h1><p><a href=\"/\">Start a chat</a></p>".into(),
        );
    };
    let agent = who
        .agent
        .as_deref()
        .and_then(|a| chat.inner.agents.get_key_value(a));
    let role = match agent {
        Some((_, name)) => format!("You answer as <b>{}</b> (agent).", escape(name)),
        None => "You write as the visitor.".into(),
    };
    let mut transcript = String::new();
    for line in &lines {
        transcript.push_str(&line_html(line));
    }
    let agent_json = serde_json::to_string(&agent.map(|(id, _)| id)).unwrap_or_default();
    let chat_json = serde_json::to_string(&chat_id).unwrap_or_default();
    let body = format!(
        "<h1>Demo web chat</h1><p>{role}</p>\
         <div id=\"lines\">{transcript}</div>\
         <form id=\"say\"><textarea id=\"text\" rows=\"3\" cols=\"60\" maxlength=\"4000\" aria-label=\"Message\" required></textarea>\
         <p><button>Send</button> <span id=\"status\" role=\"status\"></span></p></form>\
         <script>\
         const chat = {chat_json}, agent = {agent_json};\
         const base = '/chat/' + encodeURIComponent(chat) + '/lines';\
         function show(lines) {{ const box = document.getElementById('lines'); box.textContent = '';\
           for (const l of lines) {{ const p = document.createElement('p'); p.className = l.from;\
             const b = document.createElement('b'); b.textContent = l.name + ': '; p.append(b, l.text); box.append(p); }} }}\
         async function refresh() {{ try {{ const r = await fetch(base); if (r.ok) show(await r.json()); }} catch (e) {{}} }}\
         setInterval(refresh, 2000);\
         document.getElementById('say').addEventListener('submit', async (ev) => {{ ev.preventDefault();\
           const text = document.getElementById('text'), status = document.getElementById('status');\
           status.textContent = 'Sending…';\
           const r = await fetch(base, {{method: 'POST', headers: {{'content-type': 'application/json'}}, body: JSON.stringify({{text: text.value, agent}})}});\
           if (r.ok) {{ text.value = ''; status.textContent = ''; show(await r.json()); }} else {{ status.textContent = await r.text(); }} }});\
         </script>"
    );
    html(format!("Chat {chat_id}"), body)
}

fn line_html(line: &Line) -> String {
    format!(
        "<p class=\"{}\"><b>{}: </b>{}</p>",
        if line.from == "agent" {
            "agent"
        } else {
            "customer"
        },
        escape(&line.name),
        escape(&line.text)
    )
}

fn html(title: String, body: String) -> Response {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}}\
         #lines p{{margin:.3rem 0;padding:.3rem .6rem;border-radius:.4rem;white-space:pre-wrap}}\
         .customer{{background:#eef}}.agent{{background:#efe;text-align:right}}</style></head>\
         <body>{body}</body></html>",
        escape(&title)
    );
    let mut response = page.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_escaped() {
        let line = Line {
            from: "customer".into(),
            name: "<b>Eve</b>".into(),
            text: "<script>alert(1)</script> & \"x\"".into(),
            at: 0,
            id: None,
        };
        let html = line_html(&line);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"));
        assert!(html.contains("&lt;b&gt;Eve&lt;/b&gt;"));
    }
}
