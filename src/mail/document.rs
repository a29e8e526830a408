//! The preview document: header block, sanitized body and attachment list of
//! each message, rendered from `templates/preview.html` with autoescaping
//! (only the already-sanitized body is inserted as HTML).
use serde::Serialize;
use std::sync::OnceLock;

/// An attachment as listed under a message.
#[derive(Debug, Clone, Serialize)]
pub struct AttachmentLink {
    pub name: String,
    pub size: String,
    pub content_type: String,
    pub url: String,
}

/// A message forwarded as an attachment, shown under the message that carries it.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardedPart {
    pub subject: Option<String>,
    pub from: Option<String>,
    pub to: String,
    pub date: Option<String>,
    /// Sanitized HTML; inserted as is.
    pub body: String,
    pub remote_blocked: usize,
}

/// One message of the document.
#[derive(Debug, Clone, Serialize)]
pub struct PreviewPart {
    pub anchor: String,
    pub kind: String,
    pub subject: Option<String>,
    pub from_name: Option<String>,
    pub from_address: Option<String>,
    pub to: String,
    pub cc: String,
    pub date: String,
    /// Sanitized HTML; inserted as is.
    pub body: String,
    pub remote_blocked: usize,
    pub notice: Option<String>,
    pub attachments: Vec<AttachmentLink>,
    /// Messages it carries as attachments, readable here.
    pub forwarded: Vec<ForwardedPart>,
    /// Of an earlier task of the conversation (shown after the task's own
    /// messages, under a heading of its own).
    pub earlier: bool,
}

fn environment() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        // A template that fails to parse is a build mistake, caught by the tests.
        if let Err(e) =
            env.add_template("preview.html", include_str!("../../templates/preview.html"))
        {
            tracing::error!(error = %e, "preview template is broken");
        }
        env
    })
}

/// Renders the whole preview document.
pub fn render_document(
    title: &str,
    messages: &[PreviewPart],
    allow_remote_url: Option<&str>,
) -> Result<String, minijinja::Error> {
    let template = environment().get_template("preview.html")?;
    template.render(minijinja::context! {
        title => title,
        messages => messages,
        allow_remote_url => allow_remote_url,
    })
}

/// A size for people: `512 B`, `12.3 KB`, `4.0 MB`.
pub fn human_size(bytes: u64) -> String {
    const KB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KB {
        format!("{bytes} B")
    } else if b < KB * KB {
        format!("{:.1} KB", b / KB)
    } else {
        format!("{:.1} MB", b / KB / KB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(body: &str) -> PreviewPart {
        PreviewPart {
            anchor: "m1".into(),
            kind: "normal".into(),
            subject: Some("<script>alert(1)</script> Hello".into()),
            from_name: Some("Eve \"<img src=x onerror=alert(1)>\"".into()),
            from_address: Some("eve@example.com".into()),
            to: "support@example.com".into(),
            cc: String::new(),
            date: "2026-11-24 08:00 UTC".into(),
            body: body.into(),
            remote_blocked: 2,
            notice: None,
            attachments: vec![AttachmentLink {
                name: "\"><script>x</script>.pdf".into(),
                size: human_size(2048),
                content_type: "application/pdf".into(),
                url: "/api/v1/attachments/msg_1.2?token=t".into(),
            }],
            forwarded: vec![ForwardedPart {
                subject: Some("<b>Fwd subject</b>".into()),
                from: Some("A <a@example.com>".into()),
                to: "b@example.com".into(),
                date: None,
                body: "<p>forwarded body</p>".into(),
                remote_blocked: 0,
            }],
            earlier: false,
        }
    }

    #[test]
    fn headers_and_names_are_escaped_and_the_body_is_kept() {
        let html = render_document(
            "Preview",
            &[part("<p>safe body</p>")],
            Some("?remote=allow"),
        )
        .unwrap();
        assert!(html.contains("<p>safe body</p>"));
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; Hello"),
            "{html}"
        );
        assert!(html.contains("2 remote images blocked"));
        assert!(html.contains("Forwarded message"), "{html}");
        assert!(html.contains("<p>forwarded body</p>"), "{html}");
        assert!(
            html.contains("&lt;b&gt;Fwd subject&lt;&#x2f;b&gt;"),
            "{html}"
        );
        assert!(html.contains("1 attachment:"));
        assert!(html.contains("2.0 KB"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(1536), "1.5 KB");
        assert_eq!(human_size(5 * 1024 * 1024), "5.0 MB");
    }
}
