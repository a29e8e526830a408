//! Messages forwarded as attachments (`message/rfc822`), read in the
//! preview: a mail forwarded "as attachment" (Outlook's way) would otherwise
//! show no text at all, and the agent would have to open the raw `.eml`
//! outside the preview's protections. Pure: no I/O.
use super::document::ForwardedPart;
use super::parse::{Address, ParseLimits, attachment_bytes, parse_message};
use super::preview::{RemoteImages, SanitizeOptions, render_plain_text, sanitize_html};
use std::collections::HashMap;

/// At most this many forwarded messages are shown under one message.
pub const MAX_SHOWN: usize = 5;

/// The forwarded message in part `part_index` of `raw`, as the preview shows
/// it: its header block and its body, sanitized as any mail is (remote
/// images blocked, its own inline images left out). `None` when the part is
/// not a message that parses.
pub fn forwarded_part(
    raw: &[u8],
    part_index: usize,
    max_data_image_bytes: usize,
) -> Option<ForwardedPart> {
    let bytes = attachment_bytes(raw, part_index)?;
    let mail = parse_message(
        &bytes,
        &ParseLimits {
            max_message_bytes: bytes.len().max(1),
        },
    )
    .ok()?;
    let list = |a: &[Address]| {
        a.iter()
            .map(|x| match &x.name {
                Some(n) if !n.is_empty() => format!("{n} <{}>", x.email),
                _ => x.email.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (body, remote_blocked) = match (&mail.html_body, &mail.text_body) {
        (Some(html), _) => {
            let none = HashMap::new();
            let s = sanitize_html(
                html,
                &SanitizeOptions {
                    cid_urls: &none,
                    remote: RemoteImages::Block,
                    max_data_image_bytes,
                },
            );
            (s.html, s.remote_blocked)
        }
        (None, Some(text)) => (render_plain_text(text, false, false), 0),
        (None, None) => (
            "<p class=\"sb-text\">(this message has no text)</p>".to_string(),
            0,
        ),
    };
    Some(ForwardedPart {
        subject: mail.subject.clone(),
        from: mail.from.as_ref().map(|a| list(std::slice::from_ref(a))),
        to: list(&mail.to),
        date: mail
            .date
            .map(|d| d.format("%a, %d %b %Y %H:%M UTC").to_string()),
        body,
        remote_blocked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTER: &[u8] = b"From: Colleague <col@example.com>\r\nTo: support@example.com\r\n\
Subject: FW: complaint\r\nMessage-ID: <fw-1@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n\
--m\r\nContent-Type: text/plain\r\n\r\nSee below.\r\n\
--m\r\nContent-Type: message/rfc822\r\n\r\n\
From: Angry Customer <angry@customer.example>\r\nTo: col@example.com\r\n\
Subject: This is unacceptable\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n\
<p onclick=\"x()\">My order never came.</p><script>alert(1)</script><img src=\"https://tracker.example/p.gif\">\r\n\
--m--\r\n";

    #[test]
    fn a_forwarded_message_is_read_sanitized() {
        let parsed = parse_message(OUTER, &ParseLimits::default()).expect("parses");
        let part = parsed
            .attachments
            .iter()
            .find(|a| a.content_type == "message/rfc822")
            .expect("the forwarded part");
        let f = forwarded_part(OUTER, part.part_index, 1024).expect("shown");
        assert_eq!(f.subject.as_deref(), Some("This is unacceptable"));
        assert_eq!(
            f.from.as_deref(),
            Some("Angry Customer <angry@customer.example>")
        );
        assert_eq!(f.to, "col@example.com");
        assert_eq!(f.date.as_deref(), Some("Tue, 01 Dec 2026 10:00 UTC"));
        assert!(f.body.contains("My order never came."), "{}", f.body);
        assert!(
            !f.body.contains("script") && !f.body.contains("onclick"),
            "{}",
            f.body
        );
        assert!(!f.body.contains("tracker.example"), "{}", f.body);
        assert_eq!(f.remote_blocked, 1);
        // Not a message: nothing.
        assert!(forwarded_part(OUTER, 1, 1024).is_none());
    }
}
