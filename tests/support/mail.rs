//! Test mail, built as a customer's client would send it.
#![allow(dead_code)]
use std::time::{Duration, Instant};

/// A plain-text mail with CRLF line endings.
pub fn mail(
    from: &str,
    subject: &str,
    message_id: &str,
    extra_headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut s = format!(
        "From: {from}\r\nTo: Support <support@example.com>\r\nSubject: {subject}\r\nDate: Tue, 24 Nov 2026 08:00:00 +0000\r\nMessage-ID: <{message_id}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    );
    for (k, v) in extra_headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.push_str(&body.replace('\n', "\r\n"));
    s.push_str("\r\n");
    s.into_bytes()
}

/// Writes a mail into a Maildir's `new/` as an MTA would (via `tmp/`).
pub fn deliver_maildir(root: &std::path::Path, name: &str, raw: &[u8]) {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).expect("maildir layout");
    }
    let tmp = root.join("tmp").join(name);
    std::fs::write(&tmp, raw).expect("write mail");
    std::fs::rename(&tmp, root.join("new").join(name)).expect("deliver mail");
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
