//! Safe email previews, attachments and the image proxy.
//!
//! A preview is a complete HTML document served with a strict
//! Content-Security-Policy, meant for an `<iframe sandbox>`. Browsers cannot
//! send a bearer header from a frame, so every preview, inline image and
//! proxied image can also be opened with a short-lived link token signed for
//! its task (`?token=`), which the task's API view hands out.
use super::AppState;
use super::auth::authenticate;
use super::error::{ApiError, ApiResult};
use super::extract::{Id, Params};
use super::tasks::visible_task;
use crate::domain::link::{self, LinkError};
use crate::domain::text::is_direction_control;
use crate::http::doc;
use crate::mail::document::{
    AttachmentLink, ForwardedPart, PreviewPart, human_size, render_document,
};
use crate::mail::preview::{RemoteImages, SanitizeOptions, render_plain_text, sanitize_html};
use crate::store::MessageDetail;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;
use utoipa::IntoParams;

/// The policy every preview is served with: no script, no load but our own origin.
pub const PREVIEW_CSP: &str = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// Stands for the link token in cached previews and is replaced in every
/// response. It is derived from the server key, so no mail can contain it: a
/// fixed marker written into a hostile mail would have received the agent's
/// token, and handed it to the sender through a link or a proxied image.
fn token_mark(state: &AppState) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(state.link_key.as_slice())
        .chain_update(b"preview token mark")
        .finalize();
    format!("sbmark{}", &hex::encode(digest)[..32])
}

/// How many messages of a conversation's earlier tasks a task's preview
/// (and the email widget) shows under its own: the newest ones.
pub const EARLIER_SHOWN: usize = 20;

/// What a link's `token=` carries for one task, and when it expires (Unix
/// seconds): a token for everything of the task, or, with `until` (an agent
/// whose part is over, see [`super::tasks::read_until`]), a token for what
/// had come in by then followed by `&until=<ms>`, which the links keep.
pub fn task_link_until(
    state: &AppState,
    task_id: &str,
    until: Option<crate::domain::Millis>,
) -> (String, i64) {
    let expires = chrono::Utc::now().timestamp() + state.preview.link_ttl_secs as i64;
    let token = link::sign(&state.link_key, &link_scope(task_id, until), expires);
    let value = match until {
        Some(u) => format!("{token}&until={u}"),
        None => token,
    };
    (value, expires)
}

/// The earlier exchange of a task that arrived at `arrived_at`, as it is
/// read from it: each message with the task it belongs to and a link token
/// of that task (one per task) that reads up to that arrival.
pub fn earlier_links<'a>(
    state: &AppState,
    arrived_at: crate::domain::Millis,
    cards: &'a [crate::store::MessageCard],
) -> Vec<(&'a crate::store::MessageCard, &'a str, String)> {
    let mut tokens: HashMap<&str, String> = HashMap::new();
    cards
        .iter()
        .filter_map(|m| {
            let owner = m.task_id.as_deref()?;
            let token = tokens
                .entry(owner)
                .or_insert_with(|| task_link_until(state, owner, Some(arrived_at)).0)
                .clone();
            Some((m, owner, token))
        })
        .collect()
}

/// The scope a link token signs: the task, and how far it reads.
fn link_scope(task_id: &str, until: Option<crate::domain::Millis>) -> String {
    match until {
        Some(u) => format!("task:{task_id}~{u}"),
        None => format!("task:{task_id}"),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// A link token for the task (from `preview_url`, or from a link inside a preview); instead
    /// of the bearer header.
    token: Option<String>,
    /// With `token`: the time (ms) up to which the token reads the task's mail, as the link
    /// carries it (links of agents whose part in the task is over).
    until: Option<i64>,
    /// Remote images: `block` (the default: left out, with a notice and a link to allow them)
    /// or `allow` (loaded through GET /api/v1/image-proxy, never from the agent's browser). One
    /// of: `allow`, `block`.
    #[param(default = "block")]
    remote: Option<String>,
}

/// Lets the request through for `task_id`: a valid link token for the task,
/// or a bearer token of someone who may see the task. Answers up to when the
/// caller reads the task's mail (`None`: all of it).
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    task_id: &str,
    token: Option<&str>,
    until: Option<i64>,
) -> ApiResult<Option<i64>> {
    authorized_task(state, headers, task_id, token, until)
        .await
        .map(|(_, until)| until)
}

/// [`authorize`], handing back the task when checking it read it (a bearer
/// caller), so that the caller need not read it again.
async fn authorized_task(
    state: &AppState,
    headers: &HeaderMap,
    task_id: &str,
    token: Option<&str>,
    until: Option<i64>,
) -> ApiResult<(Option<crate::store::Task>, Option<i64>)> {
    if let Some(token) = token {
        let now = chrono::Utc::now().timestamp();
        return link::verify(&state.link_key, &link_scope(task_id, until), token, now)
            .map(|()| (None, until))
            .map_err(|e| match e {
                LinkError::Expired => {
                    ApiError::new(StatusCode::FORBIDDEN, "link_expired", e.to_string())
                }
                LinkError::Invalid => ApiError::forbidden(e.to_string()),
            });
    }
    let agent = authenticate(state, headers).await?;
    let (task, sessions) = visible_task(state, &agent, task_id).await?;
    // Mail content is for the task's holders (present and past), admins and
    // the supervisors of its service; a past holder's up to their part's end.
    if agent.oversees(&task.service_id) || !sessions.is_empty() {
        let until = super::tasks::read_until(&agent, &task, &sessions);
        Ok((Some(task), until))
    } else {
        Err(ApiError::forbidden(format!(
            "pick up task '{task_id}' to read its mail"
        )))
    }
}

fn names(list: &serde_json::Value) -> String {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|x| match (x["name"].as_str(), x["email"].as_str()) {
                    (Some(n), Some(e)) if !n.is_empty() => format!("{n} <{e}>"),
                    (_, Some(e)) => e.to_string(),
                    _ => String::new(),
                })
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Whether the message's text part is `format=flowed` (and `delsp=yes`).
fn flowed(raw: &[u8]) -> (bool, bool) {
    use mail_parser::MimeHeaders;
    let Some(msg) = mail_parser::MessageParser::default().parse(raw) else {
        return (false, false);
    };
    let Some(part) = msg.text_bodies().next() else {
        return (false, false);
    };
    let Some(ct) = part.content_type() else {
        return (false, false);
    };
    let is = |name: &str, value: &str| {
        ct.attribute(name)
            .is_some_and(|v| v.eq_ignore_ascii_case(value))
    };
    (is("format", "flowed"), is("delsp", "yes"))
}

struct Body {
    html: String,
    remote_blocked: usize,
    notice: Option<String>,
}

/// The sanitized body of a message: cached when remote images are blocked
/// (the default), computed afresh when they go through the proxy. A body that
/// cannot be sanitized within the budget is shown as text with a notice.
async fn body(
    state: &AppState,
    m: &MessageDetail,
    task_id: &str,
    allow_remote: bool,
) -> ApiResult<Body> {
    if !allow_remote && let Some(html) = &m.preview_html {
        return Ok(Body {
            html: html.clone(),
            remote_blocked: m.preview_remote_blocked.unwrap_or(0) as usize,
            notice: None,
        });
    }
    let mark = token_mark(state);
    let cid_urls: HashMap<String, String> = m
        .attachments
        .iter()
        .filter_map(|a| {
            a.content_id.as_ref().map(|cid| {
                (
                    cid.trim_matches(['<', '>']).to_string(),
                    format!("/api/v1/attachments/{}.{}?token={mark}", m.id, a.part_index),
                )
            })
        })
        .collect();
    let max_data = state.preview.max_data_image_bytes;
    let html_source = m.html_body.clone();
    let text_source = m.text_body.clone();
    let (flow, delsp) = if html_source.is_none() {
        let raw = state.store.message_raw(&m.id).await?;
        tokio::task::spawn_blocking(move || flowed(&raw))
            .await
            .unwrap_or((false, false))
    } else {
        (false, false)
    };
    let proxy_base = format!("/api/v1/image-proxy?task={task_id}&token={mark}&url=");
    let (key, image_scope) = (state.link_key.clone(), format!("image:{task_id}|"));
    let job = tokio::task::spawn_blocking(move || {
        // Each proxied URL carries the server's mark of it: the proxy
        // fetches what a preview named, nothing else.
        let proxy = move |url: &str| {
            format!(
                "{proxy_base}{}&sig={}",
                url::form_urlencoded::byte_serialize(url.as_bytes()).collect::<String>(),
                link::mark(&key, &format!("{image_scope}{url}"))
            )
        };
        let remote = if allow_remote {
            RemoteImages::Proxy(&proxy)
        } else {
            RemoteImages::Block
        };
        match (&html_source, &text_source) {
            (Some(html), _) => {
                let opts = SanitizeOptions {
                    cid_urls: &cid_urls,
                    remote,
                    max_data_image_bytes: max_data,
                };
                let s = sanitize_html(html, &opts);
                (s.html, s.remote_blocked)
            }
            (None, Some(text)) => (render_plain_text(text, flow, delsp), 0),
            (None, None) => (
                "<p class=\"sb-text\">(this message has no text)</p>".to_string(),
                0,
            ),
        }
    });
    let budget = Duration::from_millis(state.preview.render_budget_ms);
    match tokio::time::timeout(budget, job).await {
        Ok(Ok((html, remote_blocked))) => {
            if !allow_remote {
                state
                    .store
                    .store_preview(&m.id, &html, remote_blocked)
                    .await?;
            }
            Ok(Body {
                html,
                remote_blocked,
                notice: None,
            })
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(message_id = %m.id, "preview over its time budget: shown as text");
            let text = m
                .text_body
                .clone()
                .unwrap_or_else(|| m.html_body.clone().unwrap_or_default());
            let shown: String = text.chars().take(200_000).collect();
            Ok(Body {
                html: format!(
                    "<div class=\"sb-text\">{}</div>",
                    ammonia::clean_text(&shown)
                ),
                remote_blocked: 0,
                notice: Some(
                    "This message is too complex to display safely; it is shown as plain text."
                        .into(),
                ),
            })
        }
    }
}

async fn part(
    state: &AppState,
    m: &MessageDetail,
    task_id: &str,
    allow_remote: bool,
) -> ApiResult<PreviewPart> {
    let b = body(state, m, task_id, allow_remote).await?;
    let mark = token_mark(state);
    // A mail without a Date shows when it was received, saying so.
    let date = chrono::DateTime::from_timestamp_millis(m.sent_at.unwrap_or(m.received_at))
        .map(|d| d.format("%a, %d %b %Y %H:%M UTC").to_string())
        .map(|d| {
            if m.sent_at.is_some() {
                d
            } else {
                format!("{d} (received; the mail has no date)")
            }
        })
        .unwrap_or_default();
    let attachments = m
        .attachments
        .iter()
        .filter(|a| !(a.inline && a.content_id.is_some() && a.content_type.starts_with("image/")))
        .map(|a| AttachmentLink {
            name: a.display_name(),
            size: human_size(a.size as u64),
            content_type: a.content_type.clone(),
            url: format!("/api/v1/attachments/{}.{}?token={mark}", m.id, a.part_index),
        })
        .collect();
    let forwarded = forwarded(state, m).await?;
    Ok(PreviewPart {
        anchor: m.id.clone(),
        kind: m.kind.clone(),
        subject: m.subject.clone(),
        from_name: m.from_name.clone(),
        from_address: m.from_address.clone(),
        to: names(&m.recipients["to"]),
        cc: names(&m.recipients["cc"]),
        date,
        body: b.html,
        remote_blocked: b.remote_blocked,
        notice: b.notice,
        attachments,
        forwarded,
        earlier: false,
    })
}

/// The messages `m` carries as attachments (a mail forwarded "as
/// attachment"), readable under it; read from its raw source within the
/// preview's time budget (none shown when over it: they stay downloads).
async fn forwarded(state: &AppState, m: &MessageDetail) -> ApiResult<Vec<ForwardedPart>> {
    let parts: Vec<usize> = m
        .attachments
        .iter()
        .filter(|a| matches!(a.content_type.as_str(), "message/rfc822" | "message/global"))
        .take(crate::mail::forwarded::MAX_SHOWN)
        .map(|a| a.part_index)
        .collect();
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let raw = state.store.message_raw(&m.id).await?;
    let max_data = state.preview.max_data_image_bytes;
    let job = tokio::task::spawn_blocking(move || {
        parts
            .into_iter()
            .filter_map(|i| crate::mail::forwarded::forwarded_part(&raw, i, max_data))
            .collect::<Vec<_>>()
    });
    let budget = Duration::from_millis(state.preview.render_budget_ms);
    match tokio::time::timeout(budget, job).await {
        Ok(Ok(shown)) => Ok(shown),
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(message_id = %m.id, "forwarded messages over the preview's time budget: left as downloads");
            Ok(Vec::new())
        }
    }
}

fn document_response(
    state: &AppState,
    (task_id, until): (&str, Option<i64>),
    title: &str,
    parts: &[PreviewPart],
    self_url: &str,
    allow_remote: bool,
) -> ApiResult<Response> {
    // Its links read as far as the document does.
    let (token, _) = task_link_until(state, task_id, until);
    let any_blocked = parts.iter().any(|p| p.remote_blocked > 0);
    let allow_url =
        (!allow_remote && any_blocked).then(|| format!("{self_url}?remote=allow&token={token}"));
    let html = render_document(title, parts, allow_url.as_deref())
        .map_err(|e| {
            tracing::error!(error = %e, "preview template failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the preview could not be rendered",
            )
        })?
        .replace(&token_mark(state), &token);
    let mut response = (StatusCode::OK, html).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PREVIEW_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(response)
}

/// `GET /api/v1/tasks/{id}/preview`: every message of the task, newest first.
#[utoipa::path(
    get,
    path = "/tasks/{id}/preview",
    operation_id = "previewTask",
    tag = "mail",
    summary = "Safe preview of a task's mail",
    description = "Every message of the task, newest first, then (under the heading \"Earlier in this conversation\") the newest 20 messages of the conversation's earlier tasks, as one sanitized HTML document for an `<iframe sandbox>`: no script, event handler, form or unsafe style; inline (`cid:`) images and attachment links point to GET /api/v1/attachments/{id} with a link token; remote images are blocked unless `remote=allow`. A body that cannot be sanitized within the time budget is shown as plain text with a notice. Opened with a link token for the task (`token`, see `preview_url` of GET /api/v1/tasks/{id}), or with a bearer token of the task's holders (present and past: a past holder reads the mail that had come in when their part ended) and admins. 404 when the task does not exist or the bearer caller may not see it.",
    params(
        ("id" = String, Path, description = "The task id."),
        PreviewQuery,
    ),
    responses(
        (status = 200, description = "A complete HTML document (`text/html; charset=utf-8`).", body = String, content_type = "text/html", headers(("Content-Security-Policy" = String, description = "No script, nothing loaded but this origin's images. Example: `default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'`."), ("X-Content-Type-Options" = String, description = "Always `nosniff`."), ("Referrer-Policy" = String, description = "Always `no-referrer`."), ("Cache-Control" = String, description = "Always `private, no-store`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, description = "Neither a link token nor a bearer token, or an unknown or revoked bearer token.", body = doc::ErrorBody, headers(("WWW-Authenticate" = String, description = "Always `Bearer`."))),
        (status = 403, description = "The link token is not valid for this task (code forbidden) or has expired (code link_expired: fetch the task again for a fresh link); or the bearer caller sees the task but has never held it (code forbidden).", body = doc::ErrorBody),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn task_preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    Id(id): Id<String>,
    Params(q): Params<PreviewQuery>,
) -> ApiResult<Response> {
    let (task, until) = authorized_task(&state, &headers, &id, q.token.as_deref(), q.until).await?;
    let allow_remote = remote_allowed(q.remote.as_deref())?;
    let task = match task {
        Some(task) => task,
        None => state.store.task(&id).await?,
    };
    let mut summaries = state.store.task_message_cards(&id).await?;
    summaries.retain(|m| until.is_none_or(|u| m.received_at <= u));
    summaries.reverse();
    let mut parts = Vec::with_capacity(summaries.len());
    for s in &summaries {
        let m = state.store.message(&s.id).await?;
        parts.push(part(&state, &m, &id, allow_remote).await?);
    }
    // The conversation's earlier exchange, newest first, each message read
    // through a link token of the task it belongs to.
    let mark = token_mark(&state);
    let earlier = state
        .store
        .earlier_message_cards(&id, EARLIER_SHOWN)
        .await?;
    for (card, owner, token) in earlier_links(&state, task.arrived_at, &earlier)
        .into_iter()
        .rev()
    {
        let m = state.store.message(&card.id).await?;
        let mut p = part(&state, &m, owner, allow_remote).await?;
        p.earlier = true;
        p.body = p.body.replace(&mark, &token);
        for a in &mut p.attachments {
            a.url = a.url.replace(&mark, &token);
        }
        for f in &mut p.forwarded {
            f.body = f.body.replace(&mark, &token);
        }
        parts.push(p);
    }
    let title = task.subject.unwrap_or_else(|| "Email".into());
    document_response(
        &state,
        (&id, until),
        &title,
        &parts,
        &format!("/api/v1/tasks/{id}/preview"),
        allow_remote,
    )
}

/// `GET /api/v1/messages/{id}/preview`: one message of a thread.
#[utoipa::path(
    get,
    path = "/messages/{id}/preview",
    operation_id = "previewMessage",
    tag = "mail",
    summary = "Safe preview of one message",
    description = "One message of a task, as GET /api/v1/tasks/{id}/preview shows it (same document, headers and rules): a link token of the message's task, or a bearer token of the task's holders, admins and the supervisors of its service. 404 when the message does not exist, belongs to no task, or the bearer caller may not see its task.",
    params(
        ("id" = String, Path, description = "The message id (`id` of a Message)."),
        PreviewQuery,
    ),
    responses(
        (status = 200, description = "A complete HTML document (`text/html; charset=utf-8`).", body = String, content_type = "text/html", headers(("Content-Security-Policy" = String, description = "No script, nothing loaded but this origin's images. Example: `default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'`."), ("X-Content-Type-Options" = String, description = "Always `nosniff`."), ("Referrer-Policy" = String, description = "Always `no-referrer`."), ("Cache-Control" = String, description = "Always `private, no-store`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, description = "Neither a link token nor a bearer token, or an unknown or revoked bearer token.", body = doc::ErrorBody, headers(("WWW-Authenticate" = String, description = "Always `Bearer`."))),
        (status = 403, description = "The link token is not valid for this task (code forbidden) or has expired (code link_expired: fetch the task again for a fresh link); or the bearer caller sees the task but has never held it (code forbidden).", body = doc::ErrorBody),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn message_preview(
    State(state): State<AppState>,
    headers: HeaderMap,
    Id(id): Id<String>,
    Params(q): Params<PreviewQuery>,
) -> ApiResult<Response> {
    let m = state.store.message(&id).await?;
    let task_id = m
        .task_id
        .clone()
        .ok_or_else(|| ApiError::not_found(format!("message '{id}' not found")))?;
    let until = authorize(&state, &headers, &task_id, q.token.as_deref(), q.until)
        .await
        .map_err(hide_forbidden(&id))?;
    // Mail that came in after the caller's part ended is not theirs to read.
    if until.is_some_and(|u| m.received_at > u) {
        return Err(ApiError::not_found(format!("message '{id}' not found")));
    }
    let allow_remote = remote_allowed(q.remote.as_deref())?;
    let p = part(&state, &m, &task_id, allow_remote).await?;
    let title = m.subject.clone().unwrap_or_else(|| "Email".into());
    document_response(
        &state,
        (&task_id, until),
        &title,
        &[p],
        &format!("/api/v1/messages/{id}/preview"),
        allow_remote,
    )
}

fn hide_forbidden(id: &str) -> impl Fn(ApiError) -> ApiError + '_ {
    move |e| {
        if e.status == StatusCode::NOT_FOUND {
            ApiError::not_found(format!("message '{id}' not found"))
        } else {
            e
        }
    }
}

fn remote_allowed(v: Option<&str>) -> ApiResult<bool> {
    match v {
        None | Some("") | Some("block") => Ok(false),
        Some("allow") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "remote '{other}' is not allow or block"
        ))),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// A link token for the message's task, instead of the bearer header.
    token: Option<String>,
    /// With `token`: the time (ms) up to which the token reads the task's mail, as the link
    /// carries it.
    until: Option<i64>,
}

/// Types a browser may show inline: raster images only (never SVG or HTML).
fn inline_safe(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png" | "image/gif" | "image/jpeg" | "image/webp"
    )
}

/// Types served as they are; anything a browser could run is served as bytes.
fn served_type(content_type: &str) -> String {
    let ct = content_type.to_ascii_lowercase();
    let dangerous = ct.contains("html")
        || ct.contains("xml")
        || ct.contains("svg")
        || ct.contains("javascript")
        || ct.contains("ecmascript");
    if dangerous || ct.is_empty() || !ct.contains('/') || ct.contains(['\r', '\n']) {
        "application/octet-stream".into()
    } else {
        ct
    }
}

/// `Content-Disposition` with an ASCII fallback and the exact UTF-8 name (RFC 6266 / RFC 5987).
pub fn content_disposition(kind: &str, filename: &str) -> String {
    let clean: String = filename
        .chars()
        .filter(|c| !c.is_control() && !is_direction_control(*c))
        .map(|c| if matches!(c, '/' | '\\') { '_' } else { c })
        .collect();
    let clean = clean.trim().trim_start_matches('.');
    let clean = if clean.is_empty() {
        "attachment"
    } else {
        clean
    };
    let ascii: String = clean
        .chars()
        .map(|c| {
            if c.is_ascii() && c != '"' && c != '%' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = clean
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'!'
            | b'#'
            | b'$'
            | b'&'
            | b'+'
            | b'-'
            | b'.'
            | b'^'
            | b'_'
            | b'`'
            | b'|'
            | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// `GET /api/v1/attachments/{message}.{part}`: an attachment's bytes, for the
/// task's holders and admins (or a link token of its task).
#[utoipa::path(
    get,
    path = "/attachments/{id}",
    operation_id = "getAttachment",
    tag = "mail",
    summary = "An attachment's bytes",
    description = "The decoded bytes of one part of a message (an attachment, or an inline image). Served with its content type, except that anything a browser could run (HTML, XML, SVG, JavaScript) or an unreadable type is served as `application/octet-stream`; PNG, GIF, JPEG and WebP are `inline`, everything else `attachment`. Opened with a link token of the message's task, or a bearer token of the task's holders, admins and the supervisors of its service. 404 when the message or part does not exist or the bearer caller may not see the task.",
    params(
        ("id" = String, Path, description = "`<message id>.<part index>`, as linked from a preview."),
        TokenQuery,
    ),
    responses(
        (status = 200, description = "The bytes.", body = inline(doc::Binary), content_type = "*/*", headers(("Content-Disposition" = String, description = "RFC 6266: `inline` or `attachment`, an ASCII `filename` fallback and the exact UTF-8 name as `filename*` (RFC 5987); `attachment-<part>` with the extension of its type (`attachment-2.ics`) when the part has no name. Example: `attachment; filename=\"Rechnung M_rz.pdf\"; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf`."), ("X-Content-Type-Options" = String, description = "Always `nosniff`."), ("Content-Security-Policy" = String, description = "Example: `default-src 'none'; sandbox`."), ("Cache-Control" = String, description = "Example: `private, max-age=3600`."))),
        (status = 400, response = doc::BadRequest),
        (status = 401, description = "Neither a link token nor a bearer token, or an unknown or revoked bearer token.", body = doc::ErrorBody, headers(("WWW-Authenticate" = String, description = "Always `Bearer`."))),
        (status = 403, description = "The link token is not valid for this task (code forbidden) or has expired (code link_expired: fetch the task again for a fresh link); or the bearer caller sees the task but has never held it (code forbidden).", body = doc::ErrorBody),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn attachment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Id(id): Id<String>,
    Params(q): Params<TokenQuery>,
) -> ApiResult<Response> {
    let not_found = || ApiError::not_found(format!("attachment '{id}' not found"));
    let (message_id, part) = id.rsplit_once('.').ok_or_else(not_found)?;
    let part_index: usize = part.parse().map_err(|_| not_found())?;
    let m = state
        .store
        .message(message_id)
        .await
        .map_err(|_| not_found())?;
    let task_id = m.task_id.clone().ok_or_else(not_found)?;
    let until = authorize(&state, &headers, &task_id, q.token.as_deref(), q.until)
        .await
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                not_found()
            } else {
                e
            }
        })?;
    if until.is_some_and(|u| m.received_at > u) {
        return Err(not_found());
    }
    let meta = m
        .attachments
        .iter()
        .find(|a| a.part_index == part_index)
        .cloned()
        .ok_or_else(not_found)?;
    let raw = state.store.message_raw(message_id).await?;
    let bytes =
        tokio::task::spawn_blocking(move || crate::mail::attachment_bytes(&raw, part_index))
            .await
            .ok()
            .flatten()
            .ok_or_else(not_found)?;
    let ct = served_type(&meta.full_content_type());
    let kind = if inline_safe(&ct) {
        "inline"
    } else {
        "attachment"
    };
    let name = meta.display_name();
    let mut response = bytes_response(bytes, &ct);
    if let Ok(v) = HeaderValue::from_str(&content_disposition(kind, &name)) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Bytes from a mail or a remote server, as a response nothing in a browser
/// can run: the given type, no sniffing, a sandboxing policy, private caching.
fn bytes_response(bytes: Vec<u8>, content_type: &str) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    response
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProxyQuery {
    /// The task whose mail shows the image.
    task: String,
    /// The image's http(s) URL.
    url: String,
    /// A link token for the task, instead of the bearer header.
    token: Option<String>,
    /// With `token`: the time (ms) up to which the token reads the task's mail, as the link
    /// carries it.
    until: Option<i64>,
    /// The preview's mark of this URL for this task (the proxy fetches only
    /// images a preview of the task named).
    sig: Option<String>,
}

/// `GET /api/v1/image-proxy?task=&url=&token=`: a remote image of a task's
/// mail, fetched by the server (no cookies, no referrer, no private
/// destinations), so the sender never sees the agent's address.
#[utoipa::path(
    get,
    path = "/image-proxy",
    operation_id = "proxyImage",
    tag = "mail",
    summary = "A remote image of a task's mail",
    description = "Fetches a remote image for a preview shown with `remote=allow`, so the sender never sees the agent's address: no cookies, no referrer, no credentials in URLs, no private, loopback or link-local destinations (checked at every redirect, at most 3), a size limit (5 MiB by default) and a timeout (10 s by default). Only raster images are served, typed by their bytes (never SVG). Needs a link token of the task (as the preview's links carry) or a bearer token of the task's holders, admins and the supervisors of its service, and `sig`, the preview's mark of this URL for this task: the proxy fetches only images a preview of the task named (403 `image_refused` otherwise).",
    params(
        ProxyQuery,
    ),
    responses(
        (status = 200, description = "The image.", content((inline(doc::Binary) = "image/png"), (inline(doc::Binary) = "image/gif"), (inline(doc::Binary) = "image/jpeg"), (inline(doc::Binary) = "image/webp"), (inline(doc::Binary) = "image/avif"), (inline(doc::Binary) = "image/bmp"), (inline(doc::Binary) = "image/x-icon")), headers(("X-Content-Type-Options" = String, description = "Always `nosniff`."), ("Content-Security-Policy" = String, description = "Example: `default-src 'none'; sandbox`."), ("Cache-Control" = String, description = "Example: `private, max-age=3600`."))),
        (status = 400, description = "`task` or `url` missing, or an unknown query parameter (code invalid_request); or the URL is not a usable http(s) URL (code image_refused).", body = doc::ErrorBody),
        (status = 401, description = "Neither a link token nor a bearer token, or an unknown or revoked bearer token.", body = doc::ErrorBody, headers(("WWW-Authenticate" = String, description = "Always `Bearer`."))),
        (status = 403, description = "The link token is not valid for the task (code forbidden) or has expired (code link_expired); the bearer caller sees the task but has never held it (code forbidden); or the destination is not allowed, e.g. a private address (code image_refused).", body = doc::ErrorBody),
        (status = 404, response = doc::NotFound),
        (status = 413, description = "The image is larger than the limit (code image_refused)", body = doc::ErrorBody),
        (status = 415, description = "The response is not a raster image (code image_refused)", body = doc::ErrorBody),
        (status = 502, description = "The remote server failed or answered with an error or a bad redirect (code image_refused)", body = doc::ErrorBody),
        (status = 504, description = "The remote server did not answer in time (code image_refused)", body = doc::ErrorBody),
    ),
)]
pub async fn image_proxy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(q): Params<ProxyQuery>,
) -> ApiResult<Response> {
    authorize(&state, &headers, &q.task, q.token.as_deref(), q.until).await?;
    let named = q.sig.as_deref().is_some_and(|sig| {
        link::verify_mark(&state.link_key, &format!("image:{}|{}", q.task, q.url), sig)
    });
    if !named {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "image_refused",
            "this image was not named by a preview of the task: open the images from the preview",
        ));
    }
    let image = state.images.fetch(&q.url).await.map_err(|e| {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        ApiError::new(status, "image_refused", e.to_string())
    })?;
    Ok(bytes_response(image.bytes, &image.content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_follow_rfc_6266() {
        assert_eq!(
            content_disposition("attachment", "report.pdf"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        assert_eq!(
            content_disposition("attachment", "Grüße \"x\".txt"),
            "attachment; filename=\"Gr__e _x_.txt\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%22x%22.txt"
        );
        assert_eq!(
            content_disposition("attachment", "../../etc/passwd"),
            "attachment; filename=\"_.._etc_passwd\"; filename*=UTF-8''_.._etc_passwd"
        );
        // A stored name from before direction controls were taken out at
        // ingestion still cannot disguise its extension in a save dialog.
        assert_eq!(
            content_disposition("attachment", "invoice\u{202E}fdp.exe"),
            "attachment; filename=\"invoicefdp.exe\"; filename*=UTF-8''invoicefdp.exe"
        );
        assert_eq!(
            content_disposition("inline", "\r\n"),
            "inline; filename=\"attachment\"; filename*=UTF-8''attachment"
        );
    }

    #[test]
    fn executable_types_are_served_as_bytes() {
        assert_eq!(served_type("text/html"), "application/octet-stream");
        assert_eq!(served_type("image/svg+xml"), "application/octet-stream");
        assert_eq!(served_type("application/pdf"), "application/pdf");
        assert!(inline_safe("image/png"));
        assert!(!inline_safe("image/svg+xml"));
    }
}
