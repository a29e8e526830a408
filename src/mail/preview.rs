//! Safe previews of email bodies (STUB: being written).
use std::collections::HashMap;

/// What to do with remote images and other remote loads.
pub enum RemoteImages<'a> {
    /// Replace them with a visible placeholder and count them.
    Block,
    /// Rewrite their URL through our image proxy: the closure maps the
    /// original absolute http(s) URL to the proxy URL.
    Proxy(&'a (dyn Fn(&str) -> String + Sync)),
}

pub struct SanitizeOptions<'a> {
    /// Content-ID (without angle brackets, as in the mail) → URL of our attachment endpoint.
    pub cid_urls: &'a HashMap<String, String>,
    pub remote: RemoteImages<'a>,
    /// Largest `data:image/*` URL kept, in bytes of the URL.
    pub max_data_image_bytes: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SanitizedHtml {
    pub html: String,
    pub remote_blocked: usize,
    pub remote_proxied: usize,
}

pub fn sanitize_html(html: &str, opts: &SanitizeOptions<'_>) -> SanitizedHtml {
    let _ = opts;
    SanitizedHtml {
        html: ammonia::clean(html),
        ..Default::default()
    }
}

pub fn render_plain_text(text: &str, flowed: bool, delsp: bool) -> String {
    let _ = (flowed, delsp);
    format!("<pre>{}</pre>", ammonia::clean_text(text))
}
