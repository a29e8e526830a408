//! Instant messaging at the HTTP edge: the signed chat webhook, open-chat
//! handles (made for the holder, followed in a browser), the transcript of
//! IM tasks, the operators' channel view and the handle key rotation.
//!
//! The webhook reads the raw body and checks its signature before anything
//! else is trusted or stored; a refused delivery stores nothing. Handles
//! never appear in logs.
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id, OptionalBody, RawBody};
use crate::config::ChatChannelKind;
use crate::domain::SessionResult;
use crate::domain::chat::{self, SignatureError, channel_of, content_hash, parse_event};
use crate::domain::handle::{self, HandleClaims, HandleError, Refusal};
use crate::domain::{Modality, millis_to_rfc3339, now_millis};
use crate::http::doc;
use crate::store::Agent;
use crate::store::chats::{ChannelState, ChatDelivery};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

/// `POST /api/v1/chat/events`: one signed chat event from a webhook channel.
#[utoipa::path(
    post,
    path = "/chat/events",
    operation_id = "postChatEvent",
    tag = "chat",
    summary = "A chat event from a webhook channel",
    description = "One signed event of a webhook chat channel: `chat.started`, `chat.message`, `chat.customer_left` or `chat.ended`. Authenticated by `X-Switchboard-Timestamp: <unix seconds>` (within 300 s of the server's clock) and `X-Switchboard-Signature: sha256=<hex HMAC-SHA256(secret, \"<timestamp>.<raw body>\")>` with one of the channel's secrets (picked by the body's `channel`); a refused delivery stores nothing. A repeated event id is answered as the first delivery was (header `X-Switchboard-Replay: true`); the same id with other content is a 409 `event_id_reused`. At most 64 KiB.",
    params(
        ("X-Switchboard-Timestamp" = String, Header, description = "Unix seconds when the delivery was signed."),
        ("X-Switchboard-Signature" = String, Header, description = "sha256=<64 hex digits>."),
    ),
    request_body(content = crate::http::chat::ChatEventInput),
    responses(
        (status = 200, description = "Applied (or a replay of an event that created no task).", body = crate::http::chat::ChatEventResult),
        (status = 201, description = "Applied: the event created an IM task (or a replay of one that did).", body = crate::http::chat::ChatEventResult),
        (status = 400, response = doc::BadRequest),
        (status = 401, description = "Not authenticated: `signature_missing`, `signature_malformed`, `signature_invalid`, `timestamp_stale` or `unknown_channel`. Nothing was stored.", body = doc::ErrorBody),
        (status = 409, response = doc::Conflict),
        (status = 413, description = "The body is larger than 64 KiB.", body = doc::ErrorBody),
        (status = 422, response = doc::Unprocessable),
    ),
    security(()),
)]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<RawBody<{ chat::MAX_EVENT_BYTES }>, ApiError>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let refused = |reason: &'static str, e: ApiError| {
        state
            .metrics
            .chat_refused
            .with_label_values(&[reason])
            .inc();
        e
    };
    // Over 64 KiB (or unreadable): refused before anything is known of it.
    let RawBody(body) = body.map_err(|e| {
        let reason = if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "malformed"
        };
        refused(reason, e)
    })?;
    let channel_id = channel_of(&body).map_err(|e| {
        refused(
            "malformed",
            refuse(StatusCode::BAD_REQUEST, "invalid_event", e.to_string()),
        )
    })?;
    let channel = state
        .chat
        .channel(&channel_id)
        .filter(|c| c.kind() == ChatChannelKind::Webhook)
        .ok_or_else(|| {
            refused(
                "unknown_channel",
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "unknown_channel",
                    format!(
                        "no webhook chat channel '{}' is configured",
                        crate::domain::clip(&channel_id, 64)
                    ),
                ),
            )
        })?;
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    chat::verify_signature(
        &channel.secrets(),
        header_text("x-switchboard-timestamp"),
        header_text("x-switchboard-signature"),
        &body,
        now_millis() / 1000,
    )
    .map_err(|e: SignatureError| {
        let reason = e.code();
        refused(
            reason,
            refuse(StatusCode::UNAUTHORIZED, reason, e.to_string()),
        )
    })?;
    let event = match parse_event(&body) {
        Ok(event) => event,
        Err(e) => {
            let status = if e.field == "body" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            // Signed by the channel, so its own fault: on the operators'
            // page with the channel's errors (unsigned junk is only counted).
            if let Err(store_error) = state
                .store
                .record_chat_event_refused(&channel.spec.id, &e.to_string())
                .await
            {
                tracing::warn!(channel = %channel.spec.id, error = %store_error, "cannot record a refused chat event");
            }
            return Err(refused(
                "invalid",
                refuse(status, "invalid_event", e.to_string()),
            ));
        }
    };
    let kind = event.kind;
    // A turn first: under a flood, deliveries wait here, not in the
    // database's queue of connections.
    let _turn = state.chat.intake.admit().await;
    let input = crate::chat::delivery_input(&state.store, event).await?;
    let delivered = match state
        .chat
        .intake
        .apply(ChatDelivery {
            service_id: channel.spec.service_id.clone(),
            input,
            content_hash: content_hash(&body),
        })
        .await
    {
        Ok(delivered) => delivered,
        // The channel's own fault, like an invalid event: counted and on
        // the operators' page.
        Err(
            e @ crate::store::StoreError::Closed {
                code: "event_id_reused",
                ..
            },
        ) => {
            if let Err(store_error) = state
                .store
                .record_chat_event_refused(&channel.spec.id, &e.to_string())
                .await
            {
                tracing::warn!(channel = %channel.spec.id, error = %store_error, "cannot record a refused chat event");
            }
            return Err(refused("event_id_reused", e.into()));
        }
        Err(e) => return Err(e.into()),
    };
    let result = if delivered.replay {
        "replay"
    } else {
        "applied"
    };
    crate::chat::count_event(
        &state.metrics,
        channel,
        kind,
        result,
        delivered.status == 201 && !delivered.replay,
        delivered.offers_cancelled,
    );
    state
        .metrics
        .chat_intake_seconds
        .with_label_values(&["webhook"])
        .observe(started.elapsed().as_secs_f64());
    if !delivered.replay {
        tracing::info!(
            channel = %channel.spec.id,
            event_type = kind.as_str(),
            task = delivered.body["task_id"].as_str().unwrap_or_default(),
            "chat event applied"
        );
    }
    let status = StatusCode::from_u16(delivered.status).unwrap_or(StatusCode::OK);
    let mut response = (status, Json(delivered.body)).into_response();
    if delivered.replay {
        response
            .headers_mut()
            .insert("x-switchboard-replay", HeaderValue::from_static("true"));
        if let Err(e) = state.store.count_chat_duplicate(&channel.spec.id).await {
            tracing::warn!(channel = %channel.spec.id, error = %e, "cannot count a repeated chat event");
        }
    }
    Ok(response)
}

/// `GET /api/v1/tasks/{id}/chat-handle`: an open-chat handle for the agent
/// who holds the IM task now.
#[utoipa::path(
    get,
    path = "/tasks/{id}/chat-handle",
    operation_id = "getChatHandle",
    tag = "chat",
    summary = "The open-chat handle of an IM task",
    description = "For the agent who holds the IM task now: a link (`url`, absolute with `http.public_url`) that opens the chat for them, and only for them, until `expires_at` (`[chat] handle_ttl_secs`, 15 minutes by default) and only while they still hold the task. 403 for anyone else who may see the task; 409 for a task that is not a chat.",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    responses(
        (status = 200, description = "OK", body = crate::http::chat::ChatHandle, headers(("Cache-Control" = String, description = "Always `no-store`."), ("Referrer-Policy" = String, description = "Always `no-referrer`."))),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
    ),
)]
pub async fn chat_handle(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Response> {
    let (task, sessions) = super::tasks::visible_task(&state, &caller.0, &id).await?;
    if task.modality != Modality::Im {
        return Err(ApiError::conflict(format!(
            "task '{id}' is not an IM task: only chats have handles"
        )));
    }
    let Some(session_id) = state.store.holding_session(&id, &caller.0.id).await? else {
        // Why not: the caller's own part in it says best.
        let mine = sessions.iter().rfind(|s| s.agent_id == caller.0.id);
        let transferred = mine.is_some_and(|s| s.result == Some(SessionResult::Transferred));
        return Err(ApiError::forbidden(if transferred {
            "you transferred this task: only the agent who holds it now gets its chat handle (its transcript stays on the task)"
        } else if task.state == crate::domain::TaskState::WrapUp {
            "the chat is handled: a task in wrap-up gives no chat handle (its transcript stays on the task)"
        } else if mine.is_some_and(|s| s.state == crate::domain::SessionState::Offered) {
            "only the agent who holds this task now gets its chat handle: accept it first"
        } else {
            "only the agent who holds this task now gets its chat handle"
        }));
    };
    let chat = state.store.chat_of_task(&task).await?.ok_or_else(|| {
        ApiError::conflict(format!(
            "task '{id}' has no chat: it was not created by a chat channel"
        ))
    })?;
    if chat.state == "ended" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "chat_ended",
            "the chat has ended: there is nothing left to open (its transcript stays on the task)",
        ));
    }
    if state.chat.channel(&chat.channel_id).is_none() {
        return Err(ApiError::conflict(format!(
            "the chat channel '{}' of this task is no longer configured",
            chat.channel_id
        )));
    }
    let (kid, key) = state.chat.keys.signing().await?;
    let expires_at = now_millis() / 1000 + state.chat.handle_ttl_secs;
    let token = handle::sign(
        &kid,
        &key,
        &HandleClaims {
            task_id: task.id.clone(),
            session_id,
            agent_id: caller.0.id.clone(),
            expires_at,
        },
    );
    let base = state.chat.public_url.as_deref().unwrap_or("");
    // The link is a credential: not kept by a cache, not sent onwards.
    let mut r = Json(ChatHandle {
        expires_at: millis_to_rfc3339(expires_at * 1000),
        url: format!("{base}/chat/open/{token}"),
    })
    .into_response();
    secure(r.headers_mut());
    Ok(r)
}

/// The open-chat handle of an IM task.
#[derive(Serialize, ToSchema)]
pub struct ChatHandle {
    /// Until when it opens the chat.
    #[schema(format = DateTime)]
    expires_at: String,
    /// Opens the chat for the agent it was made for (`GET /chat/open/{token}`).
    url: String,
}

/// Who follows a handle. The API's bearer token today; the web page's
/// sign-in cookie is accepted here too once the pages have one.
async fn follower(state: &AppState, headers: &HeaderMap) -> Result<Agent, ApiError> {
    super::auth::authenticate(state, headers).await
}

/// A short page saying why a handle does not open the chat, and nothing else.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\
         <body style=\"font-family:sans-serif;max-width:36em;margin:4em auto\"><h1>{title}</h1><p>{text}</p></body></html>"
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    r
}

/// Handle responses are never cached and never leak the link onwards.
fn secure(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

fn refusal_page(r: Refusal) -> Response {
    match r {
        Refusal::NotYours => page(
            StatusCode::FORBIDDEN,
            "Not your chat",
            "This link was made for another agent. Ask for the chat to be transferred to you.",
        ),
        Refusal::Transferred => page(
            StatusCode::GONE,
            "This chat was transferred",
            "The chat was transferred since this link was made, so the link no longer opens it. If the chat is yours again, open it from the task: that gives a new link.",
        ),
        Refusal::Over => page(
            StatusCode::GONE,
            "This chat is over",
            "The chat has ended (or its task has); there is nothing left to open. Its transcript stays on the task.",
        ),
    }
}

/// `GET /chat/open/{token}`: follows an open-chat handle. Checked now:
/// the follower, the signature and key, the expiry, and that the same agent
/// still holds the task; then a redirect (303) to the chat.
#[utoipa::path(
    get,
    path = "/chat/open/{token}",
    operation_id = "openChat",
    tag = "chat",
    summary = "Follow an open-chat handle",
    description = "Checked when followed: the follower (signed in), the signature and its key, the expiry, and that the same agent still holds the task. Then 303 to the channel's `chat_url_template`; otherwise a short page saying why: not yours (403), transferred since the link was made, the chat is over, expired or withdrawn (410), not a valid link (404), not signed in (401). Never cached, no referrer.",
    params(
        ("token" = String, Path, description = "The handle's token."),
    ),
    responses(
        (status = 303, description = "To the chat."),
        (status = 401, description = "Not signed in.", body = String, content_type = "text/html"),
        (status = 403, description = "Made for another agent.", body = String, content_type = "text/html"),
        (status = 404, description = "Not a valid link.", body = String, content_type = "text/html"),
        (status = 410, description = "Expired, transferred, over or withdrawn.", body = String, content_type = "text/html"),
    ),
)]
pub async fn open(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    let agent = match follower(&state, &headers).await {
        Ok(a) => a,
        Err(_) => {
            // Signed in, the agent comes back here (the link encoded whole,
            // so nothing of it can break out of the attribute).
            let next: String =
                url::form_urlencoded::byte_serialize(format!("/chat/open/{token}").as_bytes())
                    .collect();
            return page(
                StatusCode::UNAUTHORIZED,
                "Sign in first",
                &format!(
                    "<a href=\"/sign-in?next={next}\">Sign in to Switchboard</a>: the chat opens then."
                ),
            );
        }
    };
    let key = match handle::key_id(&token) {
        Some(kid) => match state.chat.keys.key(kid).await {
            Ok(k) => k,
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => None,
    };
    let invalid = || {
        page(
            StatusCode::NOT_FOUND,
            "This link is not valid",
            "The link is damaged or was never made by Switchboard. Open the chat from the task instead.",
        )
    };
    let claims = match handle::verify(&token, key.as_deref(), now_millis() / 1000) {
        Ok(c) => c,
        Err(HandleError::Expired(c)) => {
            if c.agent_id != agent.id {
                return refusal_page(Refusal::NotYours);
            }
            return page(
                StatusCode::GONE,
                "This link has expired",
                "Chat links work for a short time only. Open the chat again from the task to get a fresh one.",
            );
        }
        Err(HandleError::UnknownKey) => {
            return page(
                StatusCode::GONE,
                "This link was withdrawn",
                "The key that signed this link is no longer valid here (it was retired, or was never this server's). Open the chat again from the task.",
            );
        }
        Err(HandleError::Invalid) => return invalid(),
    };
    let target = match state
        .store
        .handle_target(&claims.task_id, &claims.session_id, &claims.agent_id)
        .await
    {
        Ok(t) => t,
        Err(crate::store::StoreError::NotFound(_)) => return invalid(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(r) = handle::decide(&claims, &agent.id, target.now) {
        state
            .metrics
            .chat_handles
            .with_label_values(&[r.code()])
            .inc();
        return refusal_page(r);
    }
    let Some(chat) = target.chat else {
        return invalid();
    };
    // The chat system closed the chat: there is nothing left to answer in.
    if chat.state == "ended" {
        state
            .metrics
            .chat_handles
            .with_label_values(&[Refusal::Over.code()])
            .inc();
        return refusal_page(Refusal::Over);
    }
    let Some(template) = state
        .chat
        .channel(&chat.channel_id)
        .and_then(|c| c.config.url_template())
    else {
        return page(
            StatusCode::CONFLICT,
            "No chat address",
            "The chat's channel is no longer configured.",
        );
    };
    let matrix_user = state
        .store
        .agent_matrix_user(&agent.id)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let url = chat::chat_url(
        &template,
        &[
            ("chat_id", chat.external_id.as_str()),
            ("room_id", chat.external_id.as_str()),
            ("agent_id", agent.id.as_str()),
            ("agent_upn", agent.email.as_str()),
            ("agent_matrix_user_id", matrix_user.as_str()),
        ],
    );
    state
        .metrics
        .chat_handles
        .with_label_values(&["opened"])
        .inc();
    tracing::info!(task = %claims.task_id, agent = %agent.id, "chat handle followed");
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    match HeaderValue::from_str(&url) {
        Ok(v) => {
            h.insert(header::LOCATION, v);
        }
        Err(_) => return invalid(),
    }
    secure(h);
    r
}

/// An agent's reply into the chat.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyInput {
    /// Not empty, no control characters but line breaks and tabs.
    #[schema(max_length = 16384)]
    text: String,
}

/// `POST /api/v1/tasks/{id}/chat-messages`: the holder writes in the chat
/// from the task page (channels with relay on); delivered by the channel's
/// owner, shown in the transcript with its delivery state.
#[utoipa::path(
    post,
    path = "/tasks/{id}/chat-messages",
    operation_id = "postChatReply",
    tag = "chat",
    summary = "Write in an IM task's chat",
    description = "The holder's reply, relayed into the chat by the channel's owner (channels with `relay = true`: posted to a webhook channel's `reply_url`, signed like incoming events, or sent into the Matrix room as the bot). Stored in the transcript at once with `delivery: pending`, then `sent`, or `failed`: at once when the chat system refuses it for good (a redirect, a 4xx other than 401, 408, 425 and 429; for Matrix also M_TOO_LARGE, M_FORBIDDEN, M_BAD_JSON), after 10 attempts when it keeps failing (5xx, 401, 408, 425, 429, unreachable). On a Matrix channel a text over 60,000 bytes as UTF-8 JSON is refused with 422 (a Matrix event is at most 65,536 bytes). 403 unless the caller holds the task now; 409 when the chat's channel does not relay (agents answer through the handle), or when the chat has ended (code chat_ended). A chat that ends before a queued reply is delivered fails that reply at once. Replies reach a chat in the order they were written: one that is being retried holds back the later ones of its chat.",
    params(
        ("id" = String, Path, description = "The task id."),
    ),
    request_body(content = crate::http::chat::ReplyInput),
    responses(
        (status = 202, description = "Queued for the chat.", body = crate::http::chat::ChatMessage),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
        (status = 409, response = doc::Conflict),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn reply(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(input): Body<ReplyInput>,
) -> ApiResult<(StatusCode, Json<ChatMessage>)> {
    let text = input.text;
    let invalid = ApiError::invalid;
    if crate::domain::text::shows_nothing(&text) {
        return Err(invalid("text: must not be empty".into()));
    }
    if text.chars().count() > chat::MAX_TEXT_CHARS {
        return Err(invalid(format!(
            "text: longer than {} characters",
            chat::MAX_TEXT_CHARS
        )));
    }
    // A stray control character pasted along (an escape from a terminal)
    // is dropped, as in the customers' lines, rather than the reply refused.
    let text = crate::domain::text::chat_line(&text);
    let (task, _) = super::tasks::visible_task(&state, &caller.0, &id).await?;
    let chat = state.store.chat_of_task(&task).await?.ok_or_else(|| {
        ApiError::conflict(format!(
            "task '{id}' has no chat: it was not created by a chat channel"
        ))
    })?;
    let channel = state.chat.channel(&chat.channel_id);
    let relays = channel.is_some_and(|c| c.config.relay);
    if !relays {
        return Err(ApiError::conflict(format!(
            "the chat channel '{}' does not relay: answer in the chat through its handle",
            chat.channel_id
        )));
    }
    // A Matrix room takes events of at most 64 KiB: a longer reply would
    // be refused by the homeserver after it was accepted here.
    if channel.is_some_and(|c| c.kind() == crate::config::ChatChannelKind::Matrix) {
        let bytes = serde_json::to_string(&text).map_or(usize::MAX, |j| j.len().saturating_sub(2));
        if bytes > chat::MAX_MATRIX_TEXT_BYTES {
            return Err(invalid(format!(
                "text: {bytes} bytes (as UTF-8 JSON); a Matrix room takes at most {} bytes in one message: write it as several replies",
                chat::MAX_MATRIX_TEXT_BYTES
            )));
        }
    }
    if chat.state == "ended" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "chat_ended",
            "the chat has ended: a reply can no longer reach the customer (its transcript stays on the task)",
        ));
    }
    let m = state.store.queue_chat_reply(&id, &caller.0, &text).await?;
    tracing::info!(task = %id, agent = %caller.0.id, message_id = %m.id, "reply queued for the chat");
    Ok((StatusCode::ACCEPTED, Json(ChatMessage::new(m, false))))
}

/// A message of an IM task's transcript.
#[derive(Serialize, ToSchema)]
pub struct ChatMessage {
    /// Replies relayed by Switchboard only: `pending`, `sent` or `failed`.
    delivery: Option<String>,
    /// Who wrote it: `customer`, `bot` or `agent`.
    from: String,
    id: String,
    /// When it was taken in (transcripts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    received_at: Option<String>,
    sender_id: Option<String>,
    sender_name: Option<String>,
    #[schema(format = DateTime)]
    sent_at: String,
    text: String,
}

impl ChatMessage {
    fn new(m: crate::store::chats::ChatMessage, received: bool) -> ChatMessage {
        ChatMessage {
            delivery: m.delivery,
            from: m.sender,
            id: m.id,
            received_at: received.then(|| millis_to_rfc3339(m.received_at)),
            sender_id: m.sender_id,
            sender_name: m.sender_name,
            sent_at: millis_to_rfc3339(m.sent_at),
            text: m.text,
        }
    }
}

/// The transcript of an IM task.
#[derive(Serialize, ToSchema)]
pub struct Transcript {
    items: Vec<ChatMessage>,
}

/// The transcript of an IM task, for `GET /api/v1/tasks/{id}/messages`.
pub async fn transcript(
    state: &AppState,
    task_id: &str,
    until: Option<crate::domain::Millis>,
) -> ApiResult<Transcript> {
    let messages = state.store.chat_transcript(task_id).await?;
    Ok(Transcript::of(messages, until))
}

/// The transcript of a call task (posted by telephony), in the same shape.
pub async fn call_transcript(
    state: &AppState,
    task_id: &str,
    until: Option<crate::domain::Millis>,
) -> ApiResult<Transcript> {
    let lines = state.store.call_transcript(task_id).await?;
    Ok(Transcript::of(lines, until))
}

impl Transcript {
    /// The lines received until `until` (all without it).
    fn of(
        lines: Vec<crate::store::chats::ChatMessage>,
        until: Option<crate::domain::Millis>,
    ) -> Self {
        Transcript {
            items: lines
                .into_iter()
                .filter(|m| until.is_none_or(|u| m.received_at <= u))
                .map(|m| ChatMessage::new(m, true))
                .collect(),
        }
    }
}

/// The chat of an IM task.
#[derive(Serialize, ToSchema)]
pub struct TaskChat {
    /// The chat channel it came through.
    channel: String,
    /// The chat's id on the platform.
    chat_id: String,
    #[schema(format = DateTime)]
    ended_at: Option<String>,
    /// Its open-chat handle (`GET` it for a link that opens the chat).
    handle: String,
    /// When the customer left.
    #[schema(format = DateTime)]
    left_at: Option<String>,
    state: String,
}

/// The chat part of an IM task's view (`GET /api/v1/tasks/{id}`).
pub async fn task_chat(state: &AppState, task: &crate::store::Task) -> ApiResult<Option<TaskChat>> {
    let Some(chat) = state.store.chat_of_task(task).await? else {
        return Ok(None);
    };
    Ok(Some(TaskChat {
        channel: chat.channel_id,
        chat_id: chat.external_id,
        ended_at: chat.ended_at.map(millis_to_rfc3339),
        handle: format!("/api/v1/tasks/{}/chat-handle", task.id),
        left_at: chat.left_at.map(millis_to_rfc3339),
        state: chat.state,
    }))
}

/// Seconds a channel is behind: 0 while caught up or serving pushes.
pub fn lag_seconds(c: &ChannelState, now: i64) -> f64 {
    if matches!(c.status.as_str(), "idle" | "ready" | "consuming") {
        return 0.0;
    }
    match c.synced_at {
        Some(t) => ((now - t).max(0) as f64) / 1000.0,
        None => 0.0,
    }
}

/// `GET /api/v1/ops/channels`: every chat channel with its health.
#[utoipa::path(
    get,
    path = "/ops/channels",
    operation_id = "listChatChannels",
    tags = ["ops", "chat"],
    summary = "Chat channel health",
    description = "Every configured chat channel with its state (`ready` webhook, `idle`/`syncing` Matrix, `consuming` JetStream, `waiting`, `error`), the worker serving it, the last event, the last error and when, lag and counts. Admins only.",
    responses(
        (status = 200, description = "OK", body = crate::http::chat::ChannelList),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
    ),
)]
pub async fn channels(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::response::Response> {
    caller.require_admin()?;
    let now = now_millis();
    let list = state.store.chat_channels().await?;
    let time = |t: Option<i64>| t.map(millis_to_rfc3339);
    let items = list
        .iter()
        .map(|c| ChannelView {
            counts: ChannelCounts {
                chats: c.chats_total,
                duplicates: c.duplicates_total,
                errors: c.errors_total,
                events: c.events_total,
                live_chats: c.chats_live,
                messages: c.messages_total,
            },
            id: &c.id,
            kind: &c.kind,
            lag_seconds: lag_seconds(c, now),
            last_error: c.last_error.as_deref(),
            last_error_at: time(c.last_error_at),
            last_event_at: time(c.last_event_at),
            last_synced_at: time(c.synced_at),
            service: &c.service,
            source: &c.description,
            state: &c.status,
            up: matches!(
                c.status.as_str(),
                "idle" | "syncing" | "ready" | "consuming"
            ),
            worker: c.worker.as_deref(),
        })
        .collect();
    Ok(Json(ChannelList { items }).into_response())
}

/// Every chat channel with its health.
#[derive(Serialize, ToSchema)]
#[schema(as = ChatChannelList)]
pub struct ChannelList<'a> {
    items: Vec<ChannelView<'a>>,
}

/// A chat channel's health.
#[derive(Serialize, ToSchema)]
#[schema(as = ChatChannel)]
pub struct ChannelView<'a> {
    counts: ChannelCounts,
    id: &'a str,
    /// `webhook`, `matrix` or `jetstream`.
    kind: &'a str,
    /// Seconds the channel is behind: 0 while caught up or serving pushes.
    lag_seconds: f64,
    last_error: Option<&'a str>,
    #[schema(format = DateTime)]
    last_error_at: Option<String>,
    #[schema(format = DateTime)]
    last_event_at: Option<String>,
    #[schema(format = DateTime)]
    last_synced_at: Option<String>,
    service: &'a str,
    /// What it reads (a description without secrets).
    source: &'a str,
    state: &'a str,
    up: bool,
    /// The worker serving it now.
    worker: Option<&'a str>,
}

/// A chat channel's counters.
#[derive(Serialize, ToSchema)]
pub struct ChannelCounts {
    chats: i64,
    duplicates: i64,
    errors: i64,
    events: i64,
    /// Chats whose task is waiting, offered or connected.
    live_chats: i64,
    /// Messages in the channel's transcripts (all time).
    messages: i64,
}

/// How to rotate the handle signing key.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// Retire every older key now: every handle made before stops working.
    #[serde(default)]
    retire_previous: bool,
}

/// `POST /api/v1/admin/chat-handle-keys/rotate` (admins): a new key signs
/// handles from now on; older keys keep verifying the handles they signed
/// until those expire, unless retired at once.
#[utoipa::path(
    post,
    path = "/admin/chat-handle-keys/rotate",
    operation_id = "rotateChatHandleKey",
    tags = ["admin", "chat"],
    summary = "Rotate the handle signing key",
    description = "A new key signs open-chat handles from now on. Older keys keep verifying the handles they signed until those have expired, unless `retire_previous` is true: then every earlier handle stops working at once. The body may be left out (`retire_previous` false). Admins only.",
    request_body(content = Option<crate::http::chat::RotateInput>),
    responses(
        (status = 200, description = "OK", body = crate::http::chat::RotatedKey),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
    ),
)]
pub async fn rotate_keys(
    State(state): State<AppState>,
    caller: Caller,
    OptionalBody(input): OptionalBody<RotateInput>,
) -> ApiResult<Json<RotatedKey>> {
    caller.require_admin()?;
    let keep_ms = handle::MAX_TTL_SECS * 1000;
    let kid = state
        .store
        .rotate_chat_handle_key(input.retire_previous, keep_ms)
        .await?;
    state.chat.keys.invalidate();
    tracing::info!(key = %kid, retire_previous = input.retire_previous, by = %caller.0.id, "chat handle key rotated");
    Ok(Json(RotatedKey {
        key_id: kid,
        retired_previous: input.retire_previous,
    }))
}

/// The new handle signing key.
#[derive(Serialize, ToSchema)]
pub struct RotatedKey {
    /// The id of the key that signs handles from now on.
    key_id: String,
    /// Whether every older key was retired.
    retired_previous: bool,
}

/// A chat event (webhook body, or a JetStream message): the schema of the body of
/// `POST /api/v1/chat/events` (the handler verifies the signature over the
/// raw bytes first, so it reads them itself).
#[derive(ToSchema)]
#[schema(as = ChatEvent)]
#[allow(dead_code)] // a schema only
pub struct ChatEventInput {
    /// The sender's event id: repeated deliveries carry the same.
    #[schema(max_length = 200)]
    id: String,
    /// The configured chat channel id.
    channel: String,
    /// `chat.started`, `chat.message`, `chat.customer_left` or `chat.ended`.
    r#type: String,
    #[schema(max_length = 255)]
    chat_id: String,
    #[schema(format = DateTime)]
    sent_at: Option<String>,
    /// chat.started only.
    customer: Option<ChatCustomerInput>,
    /// chat.started only.
    subject: Option<String>,
    /// chat.started only.
    language: Option<String>,
    /// chat.started only (at most 16 KiB).
    #[schema(value_type = Option<Object>)]
    parameters: Option<serde_json::Map<String, Value>>,
    /// chat.message only (required there): `customer`, `bot` or `agent`.
    from: Option<String>,
    /// Required for chat.message; the first message for chat.started.
    #[schema(max_length = 16384)]
    text: Option<String>,
    /// chat.message only.
    sender_name: Option<String>,
    /// chat.customer_left and chat.ended only.
    reason: Option<String>,
}

/// The customer as a chat channel knows them.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct ChatCustomerInput {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    /// The chat platform's user id (a Matrix user id, a web chat visitor id).
    user_id: Option<String>,
}

/// What a chat event did: the answer of `POST /api/v1/chat/events`, stored
/// with the event and repeated for a repeated delivery (see
/// `Store::apply_chat_delivery`).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct ChatEventResult {
    /// The event id.
    event: String,
    /// The event type.
    r#type: String,
    chat_id: String,
    task_id: Option<String>,
    /// Whether this event created the task (201).
    task_created: bool,
    message_id: Option<String>,
    /// Whether the customer has left (`chat.customer_left`, `chat.ended`).
    customer_left: bool,
}
