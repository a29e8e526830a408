//! A Matrix client-server API client for a service's bot account: just what
//! chat intake and the handoff need (`/sync` long-polls, back-pagination of
//! a room's timeline, join, invite, kick, membership), over `reqwest`. The
//! access token is sent in a header and never logged.
use crate::config::Secret;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("cannot reach the homeserver: {0}")]
    Http(String),
    #[error("the homeserver refused {what}: {status} {errcode} {message}")]
    Refused {
        what: &'static str,
        status: u16,
        errcode: String,
        message: String,
    },
    #[error("the homeserver's answer to {what} is not understood: {detail}")]
    Protocol { what: &'static str, detail: String },
}

impl MatrixError {
    fn http(e: reqwest::Error) -> MatrixError {
        // Without the URL: it could carry a token in a query.
        MatrixError::Http(e.without_url().to_string())
    }
}

/// The bot's session with its homeserver.
#[derive(Clone)]
pub struct MatrixClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
    user_id: String,
}

impl std::fmt::Debug for MatrixClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatrixClient")
            .field("base", &self.base)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// One `/sync` answer, as far as intake reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct SyncResponse {
    pub next_batch: String,
    #[serde(default)]
    pub rooms: Rooms,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Rooms {
    #[serde(default)]
    pub join: HashMap<String, JoinedRoom>,
    #[serde(default)]
    pub invite: HashMap<String, InvitedRoom>,
    #[serde(default)]
    pub leave: HashMap<String, JoinedRoom>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct JoinedRoom {
    #[serde(default)]
    pub timeline: Timeline,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Timeline {
    #[serde(default)]
    pub events: Vec<RoomEvent>,
    /// Events were left out between the previous sync and these.
    #[serde(default)]
    pub limited: bool,
    pub prev_batch: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvitedRoom {
    #[serde(default)]
    pub invite_state: InviteState,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InviteState {
    #[serde(default)]
    pub events: Vec<StrippedEvent>,
}

/// A state event as shown with an invite (no id, no time).
#[derive(Debug, Clone, Deserialize)]
pub struct StrippedEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub sender: String,
    pub state_key: Option<String>,
    #[serde(default)]
    pub content: Value,
}

/// A room event.
#[derive(Debug, Clone, Deserialize)]
pub struct RoomEvent {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub sender: String,
    #[serde(default)]
    pub origin_server_ts: i64,
    pub state_key: Option<String>,
    #[serde(default)]
    pub content: Value,
    /// `transaction_id` shows on the sender's own events.
    #[serde(default)]
    pub unsigned: Value,
}

impl RoomEvent {
    /// The transaction id the sender gave, on its own events.
    pub fn transaction_id(&self) -> Option<&str> {
        self.unsigned.get("transaction_id").and_then(Value::as_str)
    }

    /// `content.membership` of a member event.
    pub fn membership(&self) -> Option<&str> {
        (self.kind == "m.room.member")
            .then(|| self.content.get("membership").and_then(Value::as_str))
            .flatten()
    }

    /// What a message event says, as a transcript line: its `body`; an
    /// edit as `(edited) ` and the new text; an emote as `* ` and its text;
    /// an image, a file, a video or a sound as `[image: name]` (and so on),
    /// which the agent opens in the room.
    pub fn body(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        if self.kind != "m.room.message" {
            return None;
        }
        let text = |c: &Value| c.get("body").and_then(Value::as_str).map(str::to_owned);
        let edited = self
            .content
            .pointer("/m.relates_to/rel_type")
            .and_then(Value::as_str)
            == Some("m.replace");
        if edited && let Some(new) = self.content.get("m.new_content").and_then(text) {
            return Some(Cow::Owned(format!("(edited) {new}")));
        }
        let body = self.content.get("body").and_then(Value::as_str)?;
        let kind = self
            .content
            .get("msgtype")
            .and_then(Value::as_str)
            .unwrap_or("m.text");
        Some(match kind {
            "m.emote" => Cow::Owned(format!("* {body}")),
            "m.image" => Cow::Owned(format!("[image: {body}]")),
            "m.file" => Cow::Owned(format!("[file: {body}]")),
            "m.video" => Cow::Owned(format!("[video: {body}]")),
            "m.audio" => Cow::Owned(format!("[sound: {body}]")),
            "m.location" => Cow::Owned(format!("[location: {body}]")),
            _ => Cow::Borrowed(body),
        })
    }
}

#[derive(Debug, Deserialize)]
struct MessagesResponse {
    #[serde(default)]
    chunk: Vec<RoomEvent>,
    end: Option<String>,
}

/// The sync filter intake uses: timelines only (up to `timeline_limit`
/// events per room and sync), no presence, typing or account data.
pub fn sync_filter(timeline_limit: u32) -> String {
    json!({
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "room": {
            "timeline": {"limit": timeline_limit},
            "state": {"lazy_load_members": true},
            "ephemeral": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
        },
    })
    .to_string()
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl MatrixClient {
    /// A client for `base` (the homeserver's URL) as `user_id`; every call
    /// but `/sync` gives up after `timeout`.
    pub fn new(base: &str, user_id: &str, token: Secret) -> Result<MatrixClient, MatrixError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(MatrixError::http)?;
        Ok(MatrixClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            token,
            user_id: user_id.to_string(),
        })
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    async fn call(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Value, MatrixError> {
        let response = request
            .bearer_auth(self.token.expose())
            .timeout(timeout)
            .send()
            .await
            .map_err(MatrixError::http)?;
        let status = response.status();
        let body = response.json::<Value>().await;
        if !status.is_success() {
            // A refusal keeps its status even without a JSON body (a
            // proxy's page in front of the homeserver).
            let body = body.unwrap_or(Value::Null);
            return Err(MatrixError::Refused {
                what,
                status: status.as_u16(),
                errcode: body["errcode"].as_str().unwrap_or_default().to_string(),
                message: crate::domain::clip(body["error"].as_str().unwrap_or_default(), 200),
            });
        }
        body.map_err(|e| MatrixError::Protocol {
            what,
            detail: e.without_url().to_string(),
        })
    }

    /// One `/sync`: waits up to `timeout` for news after `since`.
    pub async fn sync(
        &self,
        since: Option<&str>,
        timeout: Duration,
        filter: &str,
    ) -> Result<SyncResponse, MatrixError> {
        let mut query = vec![
            ("timeout", timeout.as_millis().to_string()),
            ("filter", filter.to_string()),
        ];
        if let Some(s) = since {
            query.push(("since", s.to_string()));
        }
        let request = self
            .http
            .get(format!("{}/_matrix/client/v3/sync", self.base))
            .query(&query);
        let body = self
            .call("sync", request, timeout + Duration::from_secs(30))
            .await?;
        serde_json::from_value(body).map_err(|e| MatrixError::Protocol {
            what: "sync",
            detail: e.to_string(),
        })
    }

    /// The room's events before `from` (a `prev_batch`), oldest first, back
    /// to `to` (a sync token) or to the room's start, at most `max`.
    pub async fn events_before(
        &self,
        room: &str,
        from: &str,
        to: Option<&str>,
        max: usize,
    ) -> Result<Vec<RoomEvent>, MatrixError> {
        let mut out: Vec<RoomEvent> = Vec::new();
        let mut from = from.to_string();
        while out.len() < max {
            let mut query = vec![
                ("dir", "b".to_string()),
                ("from", from.clone()),
                ("limit", "100".to_string()),
            ];
            if let Some(t) = to {
                query.push(("to", t.to_string()));
            }
            let request = self
                .http
                .get(format!(
                    "{}/_matrix/client/v3/rooms/{}/messages",
                    self.base,
                    enc(room)
                ))
                .query(&query);
            let body = self
                .call("room messages", request, Duration::from_secs(30))
                .await?;
            let page: MessagesResponse =
                serde_json::from_value(body).map_err(|e| MatrixError::Protocol {
                    what: "room messages",
                    detail: e.to_string(),
                })?;
            let done = page.chunk.is_empty() || page.end.is_none();
            out.extend(page.chunk);
            match page.end {
                Some(end) if !done => from = end,
                _ => break,
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Joins a room the bot was invited to (joining twice is harmless).
    pub async fn join(&self, room: &str) -> Result<(), MatrixError> {
        let request = self
            .http
            .post(format!(
                "{}/_matrix/client/v3/rooms/{}/join",
                self.base,
                enc(room)
            ))
            .json(&json!({}));
        self.call("join", request, Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// A user's membership of a room (`join`, `invite`, `leave`, `ban`), if any.
    pub async fn membership(&self, room: &str, user: &str) -> Result<Option<String>, MatrixError> {
        let request = self.http.get(format!(
            "{}/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            self.base,
            enc(room),
            enc(user)
        ));
        match self
            .call("membership", request, Duration::from_secs(30))
            .await
        {
            Ok(v) => Ok(v["membership"].as_str().map(String::from)),
            Err(MatrixError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Invites `user` unless they are in the room or invited already.
    pub async fn invite(&self, room: &str, user: &str) -> Result<(), MatrixError> {
        if matches!(
            self.membership(room, user).await?.as_deref(),
            Some("join" | "invite")
        ) {
            return Ok(());
        }
        let request = self
            .http
            .post(format!(
                "{}/_matrix/client/v3/rooms/{}/invite",
                self.base,
                enc(room)
            ))
            .json(&json!({"user_id": user}));
        self.call("invite", request, Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// Sends a text message as the bot; `txn` makes a repeat harmless (the
    /// homeserver answers a repeated transaction id with the first event).
    pub async fn send_text(
        &self,
        room: &str,
        txn: &str,
        text: &str,
    ) -> Result<String, MatrixError> {
        let request = self
            .http
            .put(format!(
                "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                self.base,
                enc(room),
                enc(txn)
            ))
            .json(&json!({"msgtype": "m.text", "body": text}));
        let v = self.call("send", request, Duration::from_secs(30)).await?;
        Ok(v["event_id"].as_str().unwrap_or_default().to_string())
    }

    /// Removes `user` from the room (or withdraws their invite), if they are
    /// in it or invited.
    pub async fn kick(&self, room: &str, user: &str, reason: &str) -> Result<(), MatrixError> {
        if !matches!(
            self.membership(room, user).await?.as_deref(),
            Some("join" | "invite")
        ) {
            return Ok(());
        }
        let request = self
            .http
            .post(format!(
                "{}/_matrix/client/v3/rooms/{}/kick",
                self.base,
                enc(room)
            ))
            .json(&json!({"user_id": user, "reason": reason}));
        self.call("kick", request, Duration::from_secs(30))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_events_read_as_transcript_lines() {
        let event = |content: Value| RoomEvent {
            event_id: "$e".into(),
            kind: "m.room.message".into(),
            sender: "@c:x".into(),
            origin_server_ts: 0,
            state_key: None,
            content,
            unsigned: Value::Null,
        };
        let says = |c| event(c).body().map(|b| b.into_owned());
        assert_eq!(
            says(json!({"msgtype": "m.text", "body": "hi"})).as_deref(),
            Some("hi")
        );
        assert_eq!(
            says(json!({"msgtype": "m.image", "body": "photo.png"})).as_deref(),
            Some("[image: photo.png]")
        );
        assert_eq!(
            says(json!({"msgtype": "m.file", "body": "invoice.pdf"})).as_deref(),
            Some("[file: invoice.pdf]")
        );
        assert_eq!(
            says(json!({"msgtype": "m.emote", "body": "waves"})).as_deref(),
            Some("* waves")
        );
        let edit = json!({"msgtype": "m.text", "body": " * Original fixed",
            "m.new_content": {"msgtype": "m.text", "body": "Original fixed"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$o"}});
        assert_eq!(says(edit).as_deref(), Some("(edited) Original fixed"));
        assert_eq!(says(json!({"msgtype": "m.text"})), None);
    }
}
