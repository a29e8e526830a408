//! Plain-text bodies as HTML: escaped, links made clickable, quotes folded,
//! RFC 3676 `format=flowed` honoured. Linear in the length of the text.

use super::LINK_REL;

/// Quote runs of more than this many source lines are collapsible.
const COLLAPSE_AFTER_LINES: usize = 3;
/// Deeper quotes are shown at this depth (a browser struggles with
/// thousands of nested blocks).
const MAX_QUOTE_DEPTH: usize = 24;

/// Escapes text for HTML content and attribute values alike.
pub(super) fn escape_into(out: &mut String, s: &str) {
    let mut last = 0;
    for (i, c) in s.char_indices() {
        let rep = match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '"' => "&quot;",
            '\'' => "&#39;",
            '\0' => "\u{FFFD}",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + c.len_utf8();
    }
    out.push_str(&s[last..]);
}

/// One logical line: its quote depth, its text, and how many source lines it
/// came from (more than one when flowed lines were joined).
struct Line {
    depth: usize,
    text: String,
    source_lines: usize,
}

pub(super) fn render(text: &str, flowed: bool, delsp: bool) -> String {
    let lines = logical_lines(text, flowed, delsp);
    let mut out = String::with_capacity(text.len() + text.len() / 8 + 128);
    out.push_str("<div class=\"sb-text\" style=\"white-space:pre-wrap;overflow-wrap:anywhere\">");
    let mut depth = 0;
    let mut details_open = false;
    // Whether a text line was written at the current level since the last
    // block boundary (a quote opening or closing breaks the line by itself).
    let mut need_newline = false;
    for (i, line) in lines.iter().enumerate() {
        if line.depth > depth {
            if depth == 0 {
                let run: usize = lines[i..]
                    .iter()
                    .take_while(|l| l.depth > 0)
                    .map(|l| l.source_lines)
                    .sum();
                if run > COLLAPSE_AFTER_LINES {
                    out.push_str("<details class=\"sb-quoted\"><summary>Quoted text</summary>");
                    details_open = true;
                }
            }
            for _ in depth..line.depth {
                out.push_str("<blockquote class=\"sb-quote\">");
            }
            depth = line.depth;
            need_newline = false;
        } else if line.depth < depth {
            close_quotes(&mut out, depth, line.depth, &mut details_open);
            depth = line.depth;
            need_newline = false;
        }
        if need_newline {
            out.push('\n');
        }
        linkify_into(&mut out, &line.text);
        need_newline = true;
    }
    close_quotes(&mut out, depth, 0, &mut details_open);
    out.push_str("</div>");
    out
}

fn close_quotes(out: &mut String, from: usize, to: usize, details_open: &mut bool) {
    for _ in to..from {
        out.push_str("</blockquote>");
    }
    if to == 0 && *details_open {
        out.push_str("</details>");
        *details_open = false;
    }
}

/// Splits a source line into its quote depth and its text.
///
/// Flowed (RFC 3676 §4.5): the depth is the number of leading `>`, then one
/// space-stuffing space is removed. Otherwise `> > text` (markers separated
/// by single spaces) is accepted too, and one space after the markers goes.
fn split_quote(line: &str, flowed: bool) -> (usize, &str) {
    let b = line.as_bytes();
    let mut i = 0;
    let mut depth = 0;
    if flowed {
        while i < b.len() && b[i] == b'>' {
            depth += 1;
            i += 1;
        }
    } else {
        while i < b.len() && b[i] == b'>' {
            depth += 1;
            i += 1;
            if i + 1 < b.len() && b[i] == b' ' && b[i + 1] == b'>' {
                i += 1;
            }
        }
    }
    // Space-stuffing (flowed) or the space after the quote markers.
    if (flowed || depth > 0) && i < b.len() && b[i] == b' ' {
        i += 1;
    }
    (depth.min(MAX_QUOTE_DEPTH), &line[i..])
}

fn logical_lines(text: &str, flowed: bool, delsp: bool) -> Vec<Line> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut lines: Vec<Line> = Vec::new();
    // Whether the last logical line ends in a soft break (flowed only).
    let mut open_soft = false;
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let (depth, content) = split_quote(raw, flowed);
        let soft = flowed && content.ends_with(' ') && content != "-- ";
        let joins = open_soft && lines.last().is_some_and(|l| l.depth == depth) && content != "-- ";
        let piece = if soft && delsp {
            &content[..content.len() - 1]
        } else {
            content
        };
        if joins {
            let last = lines.last_mut().expect("checked above");
            last.text.push_str(piece);
            last.source_lines += 1;
        } else {
            lines.push(Line {
                depth,
                text: piece.to_string(),
                source_lines: 1,
            });
        }
        open_soft = soft;
    }
    lines
}

/// Escapes `text` into `out`, turning http(s) URLs and e-mail addresses into
/// links that open in a new browsing context without referrer or opener.
pub(super) fn linkify_into(out: &mut String, text: &str) {
    let mut start = 0;
    let mut in_space = None;
    for (i, c) in text.char_indices() {
        let space = c.is_whitespace();
        if in_space != Some(space) {
            if let Some(was_space) = in_space {
                emit_run(out, &text[start..i], was_space);
            }
            start = i;
            in_space = Some(space);
        }
    }
    if let Some(was_space) = in_space {
        emit_run(out, &text[start..], was_space);
    }
}

fn emit_run(out: &mut String, run: &str, space: bool) {
    if space {
        escape_into(out, run);
    } else {
        linkify_word(out, run);
    }
}

/// Characters that end a URL found in text.
fn ends_url(c: char) -> bool {
    matches!(
        c,
        '<' | '>' | '"' | '\'' | '`' | '{' | '}' | '|' | '\\' | '^'
    ) || c.is_whitespace()
}

fn linkify_word(out: &mut String, word: &str) {
    let mut rest = word;
    while !rest.is_empty() {
        let Some(at) = find_url_start(rest) else {
            emails_into(out, rest);
            return;
        };
        emails_into(out, &rest[..at]);
        let cand = &rest[at..];
        let mut end = cand.find(ends_url).unwrap_or(cand.len());
        // Trailing punctuation is the sentence's, not the URL's; a closing
        // bracket stays only when the URL opened one.
        let count = |c: char| cand[..end].chars().filter(|&x| x == c).count();
        let (opens, mut closes) = ((count('('), count('[')), (count(')'), count(']')));
        while let Some(last) = cand[..end].chars().next_back() {
            let strip = match last {
                '.' | ',' | ';' | ':' | '!' | '?' | '*' => true,
                ')' if opens.0 < closes.0 => {
                    closes.0 -= 1;
                    true
                }
                ']' if opens.1 < closes.1 => {
                    closes.1 -= 1;
                    true
                }
                _ => false,
            };
            if !strip {
                break;
            }
            end -= last.len_utf8();
        }
        let url_text = &cand[..end];
        match url::Url::parse(url_text) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some_and(|h| !h.is_empty()) =>
            {
                anchor(out, u.as_str(), url_text);
            }
            _ => escape_into(out, url_text),
        }
        if end == 0 {
            // Cannot happen (a scheme is at least 7 bytes), but never loop.
            escape_into(out, cand);
            return;
        }
        rest = &cand[end..];
    }
}

/// Byte offset of the first `http://` or `https://` (any case) in `s`.
fn find_url_start(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i + 7 <= b.len() {
        if b[i].eq_ignore_ascii_case(&b'h') {
            let tail = &b[i..];
            if tail.len() >= 8 && tail[..8].eq_ignore_ascii_case(b"https://") {
                return Some(i);
            }
            if tail[..7].eq_ignore_ascii_case(b"http://") {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

fn is_local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// Escapes `s`, linking e-mail addresses. Each byte is looked at a bounded
/// number of times: the scan left of an `@` stops at what was already
/// written, and no part of an address can hold an `@`.
fn emails_into(out: &mut String, s: &str) {
    let b = s.as_bytes();
    let mut written = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'@' {
            i += 1;
            continue;
        }
        let mut l = i;
        while l > written && is_local_char(b[l - 1]) {
            l -= 1;
        }
        while l < i && b[l] == b'.' {
            l += 1;
        }
        let mut r = i + 1;
        while r < b.len() && is_domain_char(b[r]) {
            r += 1;
        }
        while r > i + 1 && matches!(b[r - 1], b'.' | b'-') {
            r -= 1;
        }
        let local = &s[l..i];
        let domain = &s[i + 1..r];
        if !local.is_empty() && valid_domain(domain) {
            escape_into(out, &s[written..l]);
            let addr = &s[l..r];
            anchor(out, &format!("mailto:{addr}"), addr);
            written = r;
            i = r;
        } else {
            i += 1;
        }
    }
    escape_into(out, &s[written..]);
}

fn valid_domain(d: &str) -> bool {
    let labels: Vec<&str> = d.split('.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'))
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()))
}

fn anchor(out: &mut String, href: &str, text: &str) {
    out.push_str("<a href=\"");
    escape_into(out, href);
    out.push_str("\" rel=\"");
    out.push_str(LINK_REL);
    out.push_str("\" target=\"_blank\">");
    escape_into(out, text);
    out.push_str("</a>");
}
