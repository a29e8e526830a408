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

impl EventStream {
    pub async fn open(url: &str, token: &str) -> EventStream {
        let response = reqwest::Client::new()
            .get(format!("{url}/api/v1/me/events"))
            .bearer_auth(token)
            .send()
            .await
            .expect("the stream opens");
        assert_eq!(response.status(), StatusCode::OK);
        EventStream {
            response,
            buffer: String::new(),
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
