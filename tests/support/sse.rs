//! A Server-Sent Events client for `GET /api/v1/me/events`, as a browser's
//! `EventSource` would read it.
#![allow(dead_code)]
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

/// One parsed event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// A client reading an agent's event stream. Dropping it closes the stream.
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

/// How long [`EventStream::expect`] waits: an event seen this fast was
/// delivered by a notification, not found by a stream's safety poll (every
/// 15 s), with room for a slow machine.
pub const PROMPT: Duration = Duration::from_secs(10);

impl EventStream {
    pub async fn open(url: &str, token: &str) -> EventStream {
        Self::open_with(url, token, None).await
    }

    /// Opens the stream resuming after `last_event_id`, as a browser reconnecting does.
    pub async fn open_with(url: &str, token: &str, last_event_id: Option<&str>) -> EventStream {
        let mut req = reqwest::Client::new()
            .get(format!("{url}/api/v1/me/events"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let response = req.send().await.expect("the stream opens");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self::from_response(response)
    }

    /// Reads an already opened stream.
    pub fn from_response(response: reqwest::Response) -> EventStream {
        EventStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event within [`PROMPT`], or a panic saying `what` was expected.
    pub async fn expect(&mut self, what: &str) -> SseEvent {
        match self.next(PROMPT).await {
            Some(e) => e,
            None => panic!("no event within {PROMPT:?}: expected {what}"),
        }
    }

    /// Whether the server closes the stream within `within` (events before
    /// the end are not expected: one is a failure).
    pub async fn ends(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                assert!(
                    parse_frame(&frame).is_none(),
                    "an event before the end: {frame}"
                );
                continue;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The next event (keep-alive comments skipped), or `None` after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if let Some(e) = parse_frame(&frame) {
                    return Some(e);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// The next event of kind `kind` within `within` (others are skipped), or a panic saying `what`.
    pub async fn expect_kind(&mut self, kind: &str, within: Duration, what: &str) -> SseEvent {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_default();
            match self.next(left).await {
                Some(e) if e.event == kind => return e,
                Some(_) => continue,
                None => panic!("no '{kind}' event within {within:?}: expected {what}"),
            }
        }
    }

    /// Events of kind `kind` that arrive within `within` (others skipped).
    pub async fn collect_kind(&mut self, kind: &str, within: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return out;
            };
            match self.next(left).await {
                Some(e) if e.event == kind => out.push(e),
                Some(_) => {}
                None => return out,
            }
        }
    }
}

fn parse_frame(frame: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
    let mut any = false;
    for line in frame.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "" => {}
            "id" => id = Some(value.to_string()),
            "event" => event = value.to_string(),
            "data" => {
                any = true;
                data.push_str(value);
            }
            _ => {}
        }
    }
    any.then(|| SseEvent {
        id,
        event,
        data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
    })
}
