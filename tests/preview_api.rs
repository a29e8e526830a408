//! Previews, attachments and the image proxy over HTTP, on SQLite and PostgreSQL.
mod support;

use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;
use support::app::{ADMIN, ALICE, BOB, CAROL, Db, TestApp, TestDb, base_config};
use support::mail::{deliver_maildir, wait_for};

/// 1×1 transparent PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn rich_mail(remote_origin: &str) -> Vec<u8> {
    format!(
        "From: Grace <grace@navy.example>\r\nTo: support@example.com\r\nSubject: Invoice with pictures\r\nMessage-ID: <rich@navy.example>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n--rel\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n<p style=\"color: #c00; position: fixed\">Total <b>42</b></p><img src=\"cid:logo@navy\" alt=\"logo\">\
<img src=\"{remote_origin}/pixel.png\" alt=\"tracker\"><script>alert(1)</script><a href=\"javascript:alert(1)\">x</a>\
<a href=\"https://evil.example/steal?t=__SB_LINK_TOKEN__\">win</a>\r\n--rel\r\n\
Content-Type: image/png\r\nContent-ID: <logo@navy>\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--rel--\r\n--outer\r\n\
Content-Type: application/pdf\r\nContent-Disposition: attachment; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--outer--\r\n",
        b64(PNG),
        b64(b"%PDF-1.4 fake")
    )
    .into_bytes()
}

/// A tiny image server standing in for a sender's tracker; records each request's headers.
async fn image_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::routing::get;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/pixel.png",
        get(move |headers: axum::http::HeaderMap| {
            let log = log.clone();
            async move {
                let summary = format!(
                    "referer={:?} cookie={:?}",
                    headers
                        .get("referer")
                        .map(|v| v.to_str().unwrap_or("").to_string()),
                    headers
                        .get("cookie")
                        .map(|v| v.to_str().unwrap_or("").to_string())
                );
                log.lock().unwrap().push(summary);
                ([("content-type", "image/png")], PNG.to_vec())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

/// The values of `attr="…"` in `html`, with the entities a template writes decoded.
fn attr_values(html: &str, attr: &str) -> Vec<String> {
    html.split(&format!("{attr}=\""))
        .skip(1)
        .map(|s| {
            s.split('"')
                .next()
                .unwrap_or("")
                .replace("&#x2f;", "/")
                .replace("&amp;", "&")
        })
        .collect()
}

async fn spawn(db: Db) -> (TestApp, std::path::PathBuf) {
    let db = TestDb::create(db).await;
    let inbox = db.dir().join("inbox");
    let text = base_config(&db.url)
        + &format!(
            "\n[ingest]\nmaildir_scan_ms = 100\n\n[preview]\nallow_loopback_images = true\n\n[[mailboxes]]\nservice = \"support\"\nkind = \"maildir\"\npath = \"{}\"\n",
            inbox.display()
        );
    (TestApp::spawn_on(db, Some(text)).await, inbox)
}

async fn raw_get(app: &TestApp, token: Option<&str>, path: &str) -> reqwest::Response {
    let mut req = app.client.get(format!("{}{path}", app.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn previews_are_safe_and_only_for_holders(db: Db) {
    let (remote, seen) = image_server().await;
    let (app, inbox) = spawn(db).await;
    deliver_maildir(&inbox, "1.x.host", &rich_mail(&remote));
    let task = wait_for(Duration::from_secs(20), "the task", || async {
        let (_, b) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        b["items"][0]["id"].as_str().map(String::from)
    })
    .await;
    let path = format!("/api/v1/tasks/{task}/preview");
    // Bob is in Support but has not picked it up; Carol is not in Support.
    assert_eq!(
        raw_get(&app, Some(BOB), &path).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        raw_get(&app, Some(CAROL), &path).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw_get(&app, None, &path).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let (_, t) = app.get(BOB, &format!("/api/v1/tasks/{task}")).await;
    assert!(
        t.get("preview_url").is_none(),
        "no mail links before pickup: {t}"
    );
    app.pickup(ALICE, &task).await;
    let (_, t) = app.get(ALICE, &format!("/api/v1/tasks/{task}")).await;
    let url = t["preview_url"].as_str().expect("preview_url").to_string();

    let resp = raw_get(&app, None, &url).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(
        h["content-security-policy"],
        "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let html = resp.text().await.unwrap();
    let lower = html.to_lowercase();
    assert!(!lower.contains("<script"), "{html}");
    assert!(!lower.contains("javascript:"), "{html}");
    assert!(!lower.contains("position"), "{html}");
    assert!(lower.contains("color"), "safe styles stay: {html}");
    assert!(
        !html.contains(&remote),
        "remote image blocked by default: {html}"
    );
    assert!(html.contains("1 remote image blocked"), "{html}");
    assert!(html.contains("Rechnung März.pdf"), "{html}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing fetched until asked"
    );

    // The inline image and the attachment, through links valid for this task.
    let cid_url = attr_values(&html, "src")
        .into_iter()
        .find(|u| u.starts_with("/api/v1/attachments/"))
        .expect("cid rewritten");
    let img = raw_get(&app, None, &cid_url).await;
    assert_eq!(img.status(), StatusCode::OK);
    assert_eq!(img.headers()["content-type"], "image/png");
    assert!(
        img.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline")
    );
    assert_eq!(img.bytes().await.unwrap().as_ref(), PNG);
    let pdf_url = attr_values(&html, "href")
        .into_iter()
        .find(|u| u.starts_with("/api/v1/attachments/"))
        .expect("attachment link");
    let pdf = raw_get(&app, None, &pdf_url).await;
    assert_eq!(pdf.status(), StatusCode::OK);
    assert_eq!(
        pdf.headers()["content-disposition"],
        "attachment; filename=\"Rechnung M_rz.pdf\"; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"
    );
    assert_eq!(pdf.bytes().await.unwrap().as_ref(), b"%PDF-1.4 fake");
    // The source was stored packed, ahead of its batch; what came back was
    // unpacked whole.
    assert_eq!(
        app.count_staged_sources("raw_encoding = 'lz4'").await,
        1,
        "the mail's source is stored packed"
    );
    // Without the link token, only holders and admins.
    let bare = pdf_url.split('?').next().unwrap().to_string();
    assert_eq!(
        raw_get(&app, Some(BOB), &bare).await.status(),
        StatusCode::NOT_FOUND,
        "not his task"
    );
    assert_eq!(
        raw_get(&app, Some(ALICE), &bare).await.status(),
        StatusCode::OK
    );
    // Tokens are bound to their task and cannot be forged.
    let forged = url.replace("token=", "token=1");
    assert_eq!(
        raw_get(&app, None, &forged).await.status(),
        StatusCode::FORBIDDEN
    );
    let other = app.new_task("email", "Other", "o@example.com").await;
    let token = url.split("token=").nth(1).unwrap();
    assert_eq!(
        raw_get(
            &app,
            None,
            &format!("/api/v1/tasks/{other}/preview?token={token}")
        )
        .await
        .status(),
        StatusCode::FORBIDDEN
    );

    // Remote images on request, through the proxy: the sender sees no referrer and no cookie.
    let allow = attr_values(&html, "href")
        .into_iter()
        .find(|u| u.contains("remote=allow"))
        .expect("allow link");
    let html2 = raw_get(&app, None, &allow).await.text().await.unwrap();
    let proxied = attr_values(&html2, "src")
        .into_iter()
        .find(|u| u.starts_with("/api/v1/image-proxy"))
        .expect("proxied image");
    let img = raw_get(&app, None, &proxied).await;
    assert_eq!(img.status(), StatusCode::OK);
    assert_eq!(img.bytes().await.unwrap().as_ref(), PNG);
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec!["referer=None cookie=None".to_string()]
    );
    // The proxy is not an open proxy: it needs a link for the task.
    let no_token =
        proxied.split("&token=").next().unwrap().to_string() + "&url=http%3A%2F%2F127.0.0.1%3A1%2F";
    assert!(
        raw_get(&app, None, &no_token)
            .await
            .status()
            .is_client_error()
    );
    // Nor, with a valid link token, a proxy for any URL: only for the images
    // a preview of the task named (each carries the server's mark of it).
    let (head, tail) = proxied.split_once("&url=").unwrap();
    let sig = tail
        .split_once("&sig=")
        .map(|(_, s)| s)
        .expect("a marked URL");
    for other in [
        format!("{head}&url=http%3A%2F%2Fexample.com%2Fother.png&sig={sig}"),
        format!("{head}&url=http%3A%2F%2Fexample.com%2Fother.png"),
    ] {
        let r = raw_get(&app, None, &other).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{other}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "image_refused", "{body}");
    }

    // The link token appears only in our own URLs, whatever the mail contains.
    let token = url.split("token=").nth(1).unwrap().to_string();
    for page in [&html, &html2] {
        for v in attr_values(page, "href")
            .into_iter()
            .chain(attr_values(page, "src"))
        {
            assert!(
                !v.contains(&token) || v.starts_with("/api/v1/"),
                "token leaked into {v}"
            );
        }
    }

    // The sanitized body is kept for the next view.
    assert_eq!(
        app.count("SELECT count(*) FROM messages WHERE preview_html IS NOT NULL")
            .await,
        1
    );
    app.stop().await;
}

/// The newest email task other than `known`, once there is one.
async fn new_email_task(app: &TestApp, known: &[&str]) -> String {
    wait_for(Duration::from_secs(20), "a new email task", || async {
        let (_, b) = app.get(ADMIN, "/api/v1/tasks?modality=email").await;
        b["items"]
            .as_array()?
            .iter()
            .filter_map(|t| t["id"].as_str())
            .find(|t| !known.contains(t))
            .map(String::from)
    })
    .await
}

/// `token`'s agent marks the task handled and saves their session.
async fn handle_and_save(app: &TestApp, token: &str, task: &str, session: &str) {
    let (s, b) = app
        .post(token, &format!("/api/v1/tasks/{task}/handled"), Value::Null)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .post(
            token,
            &format!("/api/v1/sessions/{session}/save"),
            Value::Null,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// Delivers `raw` as the only mail and returns its task and the task's
/// preview as an admin sees it.
async fn delivered_preview(
    app: &TestApp,
    inbox: &std::path::Path,
    name: &str,
    raw: &[u8],
) -> (String, String) {
    deliver_maildir(inbox, name, raw);
    let task = new_email_task(app, &[]).await;
    let html = raw_get(app, Some(ADMIN), &format!("/api/v1/tasks/{task}/preview"))
        .await
        .text()
        .await
        .unwrap();
    (task, html)
}

async fn plain_text_mail_is_escaped_and_linked(db: Db) {
    let (app, inbox) = spawn(db).await;
    let raw = b"From: t@example.net\r\nTo: support@example.com\r\nSubject: Text\r\nMessage-ID: <t@example.net>\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\n\r\nHello <b>not bold</b> see https://example.org/x?a=1&b=2 \r\nthis continues.\r\n> quoted line\r\n";
    let (task, html) = delivered_preview(&app, &inbox, "1.t.host", raw).await;
    assert!(html.contains("&lt;b&gt;not bold&lt;/b&gt;"), "{html}");
    assert!(
        html.contains("href=\"https://example.org/x?a=1&amp;b=2\""),
        "{html}"
    );
    assert!(html.contains("quoted line"), "{html}");
    let (s, m): (StatusCode, Value) = app
        .get(ADMIN, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let per_message = m["items"][0]["preview_url"].as_str().unwrap().to_string();
    assert_eq!(
        raw_get(&app, Some(ADMIN), &per_message).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}

/// A mail forwarded "as attachment" (Outlook's way): the forwarded message
/// is read under the one that carries it, sanitized like any mail, and still
/// offered as a download.
async fn a_forwarded_message_is_read_in_the_preview(db: Db) {
    let (app, inbox) = spawn(db).await;
    let raw = b"From: Colleague <col@example.com>\r\nTo: support@example.com\r\n\
Subject: FW: complaint\r\nMessage-ID: <fw-1@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n\
--m\r\nContent-Type: message/rfc822\r\n\r\n\
From: Angry Customer <angry@customer.example>\r\nTo: col@example.com\r\n\
Subject: This is unacceptable\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n\
<p onclick=\"x()\">My order never came.</p><script>alert(1)</script>\r\n\
--m--\r\n";
    let (_, html) = delivered_preview(&app, &inbox, "1.fw.host", raw).await;
    assert!(
        html.contains("Forwarded message: This is unacceptable"),
        "{html}"
    );
    assert!(
        html.contains("Angry Customer &lt;angry@customer.example&gt;"),
        "{html}"
    );
    assert!(html.contains("My order never came."), "{html}");
    assert!(
        !html.contains("<script") && !html.contains("onclick"),
        "{html}"
    );
    assert!(
        html.contains("download>This is unacceptable.eml</a>"),
        "{html}"
    );
    // The carrying mail has no Date: the time shown says it is the arrival.
    assert!(html.contains("(received; the mail has no date)"), "{html}");
    assert!(
        html.contains("Tue, 01 Dec 2026 10:00 UTC"),
        "the forwarded mail's own date: {html}"
    );
    app.stop().await;
}

/// A long body reads back whole; on PostgreSQL it is stored compressed with
/// LZ4 (migration 16), not pglz.
async fn long_bodies_read_back_whole(db: Db) {
    let (app, inbox) = spawn(db).await;
    let body = "Order 4711 arrived damaged, please send a replacement. ".repeat(4000);
    let raw = format!(
        "From: l@example.net\r\nTo: support@example.com\r\nSubject: Long\r\nMessage-ID: <long@example.net>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\nend of the long mail\r\n"
    );
    let (_, html) = delivered_preview(&app, &inbox, "1.l.host", raw.as_bytes()).await;
    assert!(html.contains("end of the long mail"), "the whole body");
    assert_eq!(html.matches("Order 4711 arrived damaged").count(), 4000);
    // A PostgreSQL built without LZ4 keeps pglz (migration 16 allows it).
    let lz4 = matches!(db, Db::Postgres)
        && app
            .raw_sql("CREATE TEMP TABLE lz4_probe (x text COMPRESSION lz4)")
            .await
            .is_ok();
    if lz4 {
        assert_eq!(
            app.count(
                "SELECT count(*) FROM messages
                 WHERE pg_column_compression(text_body) = 'lz4'
                   AND pg_column_compression(preview_html) = 'lz4'"
            )
            .await,
            1,
            "the body and its preview are stored with LZ4"
        );
    }
    app.stop().await;
}

/// The "right-to-left override" trick: a file name, a subject and a sender
/// name holding bidirectional controls, so that `invoice\u{202E}fdp.exe`
/// would show (and save) as `invoiceexe.pdf`. Ingestion takes the controls
/// out; the task, the preview, the attachment list and the download's name
/// all read as the mail really is.
async fn direction_controls_cannot_disguise_names(db: Db) {
    let (app, inbox) = spawn(db).await;
    let raw = format!(
        "From: =?utf-8?B?{from}?= <eve@example.net>\r\nTo: support@example.com\r\nSubject: =?utf-8?B?{subject}?=\r\nMessage-ID: <rlo@example.net>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease pay the attached invoice.\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''invoice%E2%80%AEfdp.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n{payload}\r\n--b--\r\n",
        from = b64("Accounts \u{2067}Dept\u{2069}".as_bytes()),
        subject = b64("Invoice \u{202E}fdp.exe".as_bytes()),
        payload = b64(b"MZ not really a program"),
    );
    let (task, html) = delivered_preview(&app, &inbox, "1.rlo.host", raw.as_bytes()).await;
    let controls = [
        '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
        '\u{2068}', '\u{2069}',
    ];
    assert!(
        !html.contains(controls),
        "no direction control in the preview"
    );
    assert!(html.contains("invoicefdp.exe"), "{html}");
    assert!(html.contains("Invoice fdp.exe"), "{html}");
    let (_, t) = app.get(ADMIN, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(t["subject"], "Invoice fdp.exe");
    assert_eq!(t["customer"]["name"], "Accounts Dept");
    let (_, m) = app
        .get(ADMIN, &format!("/api/v1/tasks/{task}/messages"))
        .await;
    let message = m["items"][0]["id"].as_str().unwrap().to_string();
    let download = attr_values(&html, "href")
        .into_iter()
        .find(|u| u.starts_with(&format!("/api/v1/attachments/{message}.")))
        .expect("the attachment's link");
    let response = raw_get(&app, None, &download).await;
    assert_eq!(response.status(), StatusCode::OK);
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        disposition,
        "attachment; filename=\"invoicefdp.exe\"; filename*=UTF-8''invoicefdp.exe"
    );
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        b"MZ not really a program"
    );
    app.stop().await;
}

/// A follow-up (the customer writes again after the task ended) shows the
/// conversation's earlier exchange under its own mail, to whoever may read
/// the follow-up's mail, with working attachment and inline-image links;
/// nobody else gets it.
async fn a_follow_up_shows_the_earlier_exchange(db: Db) {
    let (remote, _) = image_server().await;
    let (app, inbox) = spawn(db).await;
    deliver_maildir(&inbox, "1.x.host", &rich_mail(&remote));
    let first = new_email_task(&app, &[]).await;
    let session = app.pickup(ALICE, &first).await;
    handle_and_save(&app, ALICE, &first, &session).await;
    deliver_maildir(
        &inbox,
        "2.x.host",
        b"From: Grace <grace@navy.example>\r\nTo: support@example.com\r\nSubject: Re: Invoice with pictures\r\n\
Message-ID: <again@navy.example>\r\nReferences: <rich@navy.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
Any news on my invoice?\r\n",
    );
    let second = new_email_task(&app, &[&first]).await;
    let messages = format!("/api/v1/tasks/{second}/messages");
    // Alice may see the queued follow-up (she is in Support) but not read its
    // mail: no earlier exchange for her. Carol is not in Support at all.
    let (s, m) = app.get(ALICE, &messages).await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["earlier"], serde_json::json!([]), "{m}");
    assert_eq!(app.get(CAROL, &messages).await.0, StatusCode::NOT_FOUND);

    let bob_session = app.pickup(BOB, &second).await;
    let (s, m) = app.get(BOB, &messages).await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["items"].as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(m["items"][0]["task_id"], second.as_str());
    let earlier = m["earlier"].as_array().expect("earlier");
    assert_eq!(earlier.len(), 1, "{m}");
    assert_eq!(earlier[0]["task_id"], first.as_str());
    assert_eq!(earlier[0]["message_id"], "rich@navy.example");
    // Bob never held the first task: its message opens through the link
    // token its preview_url carries, not through his bearer token.
    let url = earlier[0]["preview_url"].as_str().unwrap();
    let html = raw_get(&app, None, url).await.text().await.unwrap();
    assert!(html.contains("Total <b>42</b>"), "{html}");
    let bare = url.split('?').next().unwrap();
    assert_eq!(
        raw_get(&app, Some(BOB), bare).await.status(),
        StatusCode::NOT_FOUND
    );

    // The follow-up's preview: its own mail first, then the earlier exchange.
    let html = raw_get(&app, Some(BOB), &format!("/api/v1/tasks/{second}/preview"))
        .await
        .text()
        .await
        .unwrap();
    let own = html
        .find("Any news on my invoice?")
        .unwrap_or_else(|| panic!("the follow-up: {html}"));
    let heading = html
        .find("Earlier in this conversation")
        .expect("the heading");
    let old = html.find("Total <b>42</b>").expect("the earlier mail");
    assert!(own < heading && heading < old, "{html}");
    assert!(!html.contains("<script"), "{html}");
    // Its links (the PDF, the inline logo) open with the tokens they carry.
    let earlier_id = earlier[0]["id"].as_str().unwrap();
    let links: Vec<String> = attr_values(&html, "href")
        .into_iter()
        .chain(attr_values(&html, "src"))
        .filter(|u| u.starts_with(&format!("/api/v1/attachments/{earlier_id}.")))
        .collect();
    assert_eq!(links.len(), 2, "the PDF and the logo: {links:?}");
    let mut bodies = Vec::new();
    for link in &links {
        let r = raw_get(&app, None, link).await;
        assert_eq!(r.status(), StatusCode::OK, "{link}");
        bodies.push(r.bytes().await.unwrap().to_vec());
    }
    assert!(bodies.iter().any(|b| b == PNG), "the logo");
    assert!(bodies.iter().any(|b| b == b"%PDF-1.4 fake"), "the PDF");

    // The workspace shows it too, collapsed, under its own heading.
    let fragment = app.page(BOB, &format!("/ui/sessions/{bob_session}")).await;
    let heading = fragment
        .find("Earlier in this conversation")
        .expect("the earlier exchange in the workspace");
    assert!(
        fragment[heading..].contains(&format!("data-message=\"{earlier_id}\"")),
        "{fragment}"
    );

    // The first task has nothing earlier.
    let (_, m) = app
        .get(ADMIN, &format!("/api/v1/tasks/{first}/messages"))
        .await;
    assert_eq!(m["earlier"], serde_json::json!([]), "{m}");
    // Threading follows Message-IDs, which anyone can quote: a stranger who
    // quotes Grace's thread joins the conversation but does not get to see
    // her earlier exchange.
    handle_and_save(&app, BOB, &second, &bob_session).await;
    deliver_maildir(
        &inbox,
        "3.x.host",
        b"From: Mallory <mallory@evil.example>\r\nTo: support@example.com\r\nSubject: Re: Invoice with pictures\r\n\
Message-ID: <forged@evil.example>\r\nReferences: <rich@navy.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
Please resend the invoice to me.\r\n",
    );
    let third = new_email_task(&app, &[&first, &second]).await;
    let (_, m) = app
        .get(ADMIN, &format!("/api/v1/tasks/{third}/messages"))
        .await;
    assert_eq!(m["items"].as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(m["earlier"], serde_json::json!([]), "{m}");
    let html = raw_get(&app, Some(ADMIN), &format!("/api/v1/tasks/{third}/preview"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains("Total <b>42</b>"), "{html}");
    app.stop().await;
}

/// An agent whose part in a task is over (here: transferred on) reads the
/// mail that had come in until then, not what the customer writes to the
/// task's next holders: not in the list, not in the previews (bearer or
/// link), not in the workspace; a link cannot be stretched.
async fn a_past_holder_reads_only_what_had_come_in(db: Db) {
    let (remote, _) = image_server().await;
    let (app, inbox) = spawn(db).await;
    deliver_maildir(&inbox, "1.x.host", &rich_mail(&remote));
    let task = new_email_task(&app, &[]).await;
    let session = app.pickup(ALICE, &task).await;
    let (s, b) = app
        .post(
            ALICE,
            &format!("/api/v1/tasks/{task}/transfer"),
            serde_json::json!({"service": "sales"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    deliver_maildir(
        &inbox,
        "2.x.host",
        b"From: Grace <grace@navy.example>\r\nTo: support@example.com\r\nSubject: Re: Invoice with pictures\r\n\
Message-ID: <later@navy.example>\r\nIn-Reply-To: <rich@navy.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
My card number is 4111 1111.\r\n",
    );
    let messages = format!("/api/v1/tasks/{task}/messages");
    let later = wait_for(
        Duration::from_secs(20),
        "the later mail on the task",
        || async {
            let (_, m) = app.get(ADMIN, &messages).await;
            m["items"]
                .as_array()?
                .iter()
                .find(|m| m["message_id"] == "later@navy.example")
                .and_then(|m| m["id"].as_str().map(String::from))
        },
    )
    .await;
    let (_, m) = app.get(ALICE, &messages).await;
    assert_eq!(m["items"].as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(m["items"][0]["message_id"], "rich@navy.example");
    let html = raw_get(&app, Some(ALICE), &format!("/api/v1/tasks/{task}/preview"))
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("Total <b>42</b>"), "{html}");
    assert!(!html.contains("My card number"), "{html}");
    assert_eq!(
        raw_get(
            &app,
            Some(ALICE),
            &format!("/api/v1/messages/{later}/preview")
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
    // Her link reads as far as she may, and cannot be stretched.
    let (_, t) = app.get(ALICE, &format!("/api/v1/tasks/{task}")).await;
    let url = t["preview_url"].as_str().expect("preview_url").to_string();
    assert!(url.contains("&until="), "{url}");
    let html = raw_get(&app, None, &url).await.text().await.unwrap();
    assert!(
        html.contains("Total <b>42</b>") && !html.contains("My card number"),
        "{html}"
    );
    let token_only = url.split("&until=").next().unwrap().to_string();
    assert_eq!(
        raw_get(&app, None, &token_only).await.status(),
        StatusCode::FORBIDDEN
    );
    let stretched = format!("{token_only}&until=99999999999999");
    assert_eq!(
        raw_get(&app, None, &stretched).await.status(),
        StatusCode::FORBIDDEN
    );
    let query = url.split_once('?').unwrap().1;
    assert_eq!(
        raw_get(
            &app,
            None,
            &format!("/api/v1/messages/{later}/preview?{query}")
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
    // Her session in the workspace shows the first mail only.
    let fragment = app.page(ALICE, &format!("/ui/sessions/{session}")).await;
    assert!(!fragment.contains(&later), "{fragment}");
    // The task's holders and admins read everything.
    let (_, m) = app.get(ADMIN, &messages).await;
    assert_eq!(m["items"].as_array().map(Vec::len), Some(2), "{m}");
    app.stop().await;
}

on_both_backends!(
    previews_are_safe_and_only_for_holders,
    a_past_holder_reads_only_what_had_come_in,
    a_follow_up_shows_the_earlier_exchange,
    plain_text_mail_is_escaped_and_linked,
    a_forwarded_message_is_read_in_the_preview,
    long_bodies_read_back_whole,
    direction_controls_cannot_disguise_names
);
