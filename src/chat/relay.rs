//! Relay (per channel, off by default): what an agent writes on the task
//! page goes into the chat — posted to a webhook channel's `reply_url`,
//! signed like incoming events, or sent into the Matrix room as the bot. The
//! channel's owner delivers (one worker at a time); a reply is stored before
//! it is sent and marked after, so a crash repeats a delivery rather than
//! losing it, and the repeat carries the same id (the Matrix transaction id,
//! the event `id` of the webhook body) for the receiver to recognise.
use super::Channel;
use crate::adapters::matrix::{MatrixClient, MatrixError};
use crate::domain::chat;
use crate::store::chats::{PendingReply, relay_bell};
use crate::store::ownership::Fence;
use crate::store::{Store, StoreError};
use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;

/// Matrix transaction ids of relayed replies start with this (the message
/// id), so the sync that sees them again skips them.
pub const TXN_PREFIX: &str = "chm_";

/// Attempts before a reply is marked failed.
pub const MAX_ATTEMPTS: i64 = 10;

/// Why a reply was not delivered.
#[derive(Debug, thiserror::Error)]
enum Undelivered {
    /// Worth another attempt later: the chat system was unreachable, busy
    /// or failing.
    #[error("{0}")]
    Retry(String),
    /// Refused for good (the reply itself, or where it was sent): another
    /// attempt would be refused the same way, so the reply fails at once
    /// and holds back none of its chat's later replies.
    #[error("{0} (refused for good: not tried again)")]
    Refused(String),
}

/// Where a channel's replies go.
#[derive(Clone)]
pub enum Target {
    Webhook {
        url: String,
        secret: crate::config::Secret,
        http: reqwest::Client,
    },
    Matrix(MatrixClient),
}

impl Target {
    /// The webhook target of a channel with relay on.
    pub fn webhook(channel: &Channel) -> Option<Target> {
        let url = channel.config.reply_url.clone()?;
        let secret = channel.config.resolved_secrets.last()?.clone();
        // A redirect is not followed: reqwest would turn the POST into a
        // bodiless GET, whose 200 says nothing of the reply.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        Some(Target::Webhook { url, secret, http })
    }

    async fn deliver(&self, channel: &Channel, reply: &PendingReply) -> Result<(), Undelivered> {
        match self {
            Target::Matrix(client) => match client
                .send_text(&reply.chat_id, &reply.id, &reply.text)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => {
                    let refused = matches!(&e, MatrixError::Refused { status, errcode, .. }
                        if chat::matrix_refusal_is_final(*status, errcode));
                    Err(if refused {
                        Undelivered::Refused(e.to_string())
                    } else {
                        Undelivered::Retry(e.to_string())
                    })
                }
            },
            Target::Webhook { url, secret, http } => {
                let body = json!({
                    "id": reply.id,
                    "channel": channel.spec.id,
                    "type": "chat.message",
                    "chat_id": reply.chat_id,
                    "from": "agent",
                    "text": reply.text,
                    "sender_name": reply.agent_name,
                    "agent": reply.agent_id,
                    "sent_at": crate::domain::millis_to_rfc3339(reply.sent_at),
                })
                .to_string();
                let ts = crate::domain::now_millis() / 1000;
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-switchboard-timestamp", ts.to_string())
                    .header(
                        "x-switchboard-signature",
                        chat::sign(secret.expose().as_bytes(), ts, body.as_bytes()),
                    )
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| Undelivered::Retry(e.without_url().to_string()))?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else if status.is_redirection() {
                    let to = response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .map_or("nowhere".to_string(), |l| {
                            redirect_target(&String::from_utf8_lossy(l.as_bytes()))
                        });
                    Err(Undelivered::Refused(format!(
                        "the reply URL answered {status} (moved to {to}): set reply_url to the final address"
                    )))
                } else if chat::refusal_is_final(status.as_u16()) {
                    Err(Undelivered::Refused(format!(
                        "the reply URL answered {status}"
                    )))
                } else {
                    Err(Undelivered::Retry(format!(
                        "the reply URL answered {status}"
                    )))
                }
            }
        }
    }
}

/// Where a redirect pointed, as shown to operators: without its query or
/// fragment (they could carry a token), at most 200 characters.
fn redirect_target(location: &str) -> String {
    let bare = location.split(['?', '#']).next().unwrap_or_default().trim();
    // Never a user name or password (`https://bot:token@host/…`).
    let bare = match url::Url::parse(bare) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => bare.to_string(),
        // A relative target, as it stands, without what looks like one.
        Err(_) => match bare.rsplit_once('@') {
            Some((_, after)) => after.to_string(),
            None => bare.to_string(),
        },
    };
    crate::domain::clip(&bare, 200)
}

/// Delivers the channel's pending replies until `stop`, woken when one is
/// queued in this process and every second otherwise.
pub async fn run(
    store: Store,
    channel: Channel,
    target: Target,
    fence: Fence,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let id = channel.spec.id.clone();
    let count = |outcome: &str| {
        metrics
            .chat_replies
            .with_label_values(&[id.as_str(), outcome])
            .inc()
    };
    let mut bell = relay_bell().subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        // A chat's next reply is read once the one before it is delivered:
        // look again at once after a delivery.
        let mut delivered = false;
        match store.pending_chat_replies(&id, 50).await {
            Ok(replies) => {
                for reply in replies {
                    let (outcome, max_attempts) = if reply.chat_ended {
                        let why = "the chat ended before the reply was delivered";
                        (Err(why.to_string()), 0)
                    } else {
                        match target.deliver(&channel, &reply).await {
                            Ok(()) => (Ok(()), MAX_ATTEMPTS),
                            // Given up at once: the chat's next reply goes on.
                            Err(e @ Undelivered::Refused(_)) => (Err(e.to_string()), 0),
                            Err(e @ Undelivered::Retry(_)) => (Err(e.to_string()), MAX_ATTEMPTS),
                        }
                    };
                    if let Err(why) = &outcome {
                        tracing::warn!(channel = %id, message_id = %reply.id, attempt = reply.attempts + 1, error = %why, "reply not delivered");
                    } else {
                        tracing::info!(channel = %id, message_id = %reply.id, "reply relayed into the chat");
                    }
                    let error = outcome.as_ref().err().cloned();
                    match store
                        .finish_chat_reply(&reply.id, &fence, outcome, max_attempts)
                        .await
                    {
                        Ok(given_up) => {
                            // Recorded (sent, or given up): the chat's next
                            // reply may go now.
                            delivered |= error.is_none() || given_up;
                            count(match (&error, given_up) {
                                (None, _) => "sent",
                                (Some(_), false) => "retry",
                                (Some(_), true) => "failed",
                            });
                            // Told to the agent's page by the store; a chat
                            // system that kept refusing is the channel's
                            // fault for the operators (a chat that ended is not).
                            if let (true, Some(why)) = (given_up, &error) {
                                tracing::warn!(channel = %id, message_id = %reply.id, error = %why, "reply given up: it is marked failed");
                            }
                            if let (true, Some(why), false) = (given_up, error, reply.chat_ended) {
                                let said =
                                    format!("a reply could not be relayed into its chat: {why}");
                                if let Err(e) = store.record_chat_event_refused(&id, &said).await {
                                    tracing::warn!(channel = %id, error = %e, "cannot record a channel error");
                                }
                            }
                        }
                        Err(StoreError::LeaseLost(_)) => return,
                        Err(e) => {
                            tracing::warn!(channel = %id, error = %e, "cannot record a reply's delivery")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(channel = %id, error = %e, "cannot read replies to relay"),
        }
        if delivered {
            continue;
        }
        tokio::select! {
            _ = bell.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redirect_target;

    #[test]
    fn a_redirect_target_is_shown_without_its_query() {
        assert_eq!(
            redirect_target("https://chat.example.com/new/replies?token=secret#x"),
            "https://chat.example.com/new/replies"
        );
        assert_eq!(redirect_target("/replies"), "/replies");
        // Never its credentials.
        assert_eq!(
            redirect_target("https://bot:s3cret@hooks.example/final?sig=1"),
            "https://hooks.example/final"
        );
        assert_eq!(
            redirect_target("//bot:s3cret@hooks.example/x"),
            "hooks.example/x"
        );
    }
}
