//! Parsing without decoding attachments. Ingestion keeps an attachment's
//! name, type and decoded size, never its bytes (they are decoded again when
//! an agent downloads it), yet mail-parser decodes every base64 part while
//! parsing, one byte at a time: on mail with attachments that was most of
//! the parse.
//!
//! [`Undecoded::of`] makes a copy of the message in which the
//! `Content-Transfer-Encoding: base64` of each MIME part (not the top-level
//! header) reads `binary`, the same length, so every offset stays the same
//! and mail-parser hands such a part's body over as it stands. [`Undecoded::sizes`]
//! then checks the parse of that copy: every changed header must be the
//! transfer encoding of a part that came out as an attachment, and each
//! such body must be base64 that mail-parser would have decoded without
//! trouble; it gives the decoded sizes, counted exactly as mail-parser's
//! decoder would have produced them. Where any of this does not hold (a
//! forwarded message, a body that is not clean base64, a base64 overridden
//! by a later transfer encoding, a header quoted in a body), the caller
//! parses the original instead, so the result is always what the full
//! parse gives. Encoded text parts are never renamed (they must be decoded).
use mail_parser::{HeaderName, Message, PartType};
use memchr::memmem;
use std::collections::HashMap;

/// A copy of a message with the base64 transfer encoding of its parts
/// renamed `binary`, and where that was done.
pub(crate) struct Undecoded {
    pub bytes: Vec<u8>,
    /// Offsets of the renamed values (the `b` of `base64`).
    renamed: Vec<usize>,
}

/// The header name, after its first letter (whose case varies).
const NAME_TAIL: &[u8] = b"ontent-transfer-encoding:";

/// At most this many parts are renamed, and this many transfer-encoding
/// headers looked at (more: the mail is parsed as it is), so that a mail
/// made of such headers costs no more than its parse.
const MAX_RENAMED: usize = 64;
const MAX_LOOKED_AT: usize = 4 * MAX_RENAMED;

/// How far around a renamed header its part's `Content-Type` is looked for.
const REACH: usize = 16 * 1024;

impl Undecoded {
    /// The copy, or `None` if no part below the top-level header says
    /// `Content-Transfer-Encoding: base64` with a type mail-parser keeps as
    /// bytes (then there is nothing to save). Encoded text is left alone:
    /// its parse would not stand, and the mail would be parsed twice.
    pub fn of(raw: &[u8]) -> Option<Undecoded> {
        // The top-level header ends at the first empty line; its own
        // transfer encoding is left alone.
        // (A CRLF mail holds no `\n\n`: look for one only before its `\n\r\n`,
        // not through the whole mail.)
        let crlf = memmem::find(raw, b"\n\r\n");
        let body_start = match memmem::find(raw.get(..crlf.map_or(raw.len(), |c| c + 1))?, b"\n\n")
        {
            Some(lf) => lf,
            None => crlf?,
        };
        let mut renamed = Vec::new();
        let mut looked_at = 0usize;
        // Most mailers write `Content-Transfer-Encoding`, some all lowercase.
        for finder in [
            memmem::Finder::new(b"\nContent-Transfer-Encoding:"),
            memmem::Finder::new(b"\ncontent-transfer-encoding:"),
        ] {
            for at in finder.find_iter(raw.get(body_start..)?) {
                looked_at += 1;
                if looked_at > MAX_LOOKED_AT || renamed.len() > MAX_RENAMED {
                    return None;
                }
                let value = body_start + at + 1 + 1 + NAME_TAIL.len();
                let line = body_start + at;
                if let Some(b) = base64_value(raw, value)
                    && typed_as_bytes(raw, line)
                {
                    renamed.push(b);
                }
            }
        }
        if renamed.is_empty() || renamed.len() > MAX_RENAMED {
            return None;
        }
        let mut bytes = raw.to_vec();
        for &at in &renamed {
            bytes[at..at + 6].copy_from_slice(b"binary");
        }
        Some(Undecoded { bytes, renamed })
    }

    /// The decoded size of each renamed part, by its index in the parse of
    /// the copy, or `None` when that parse cannot stand for the full one
    /// (see the module's documentation).
    pub fn sizes(&self, message: &Message<'_>) -> Option<HashMap<usize, usize>> {
        // The transfer encoding mail-parser goes by is a part's last one.
        let mut spans: Vec<(usize, usize, usize)> = message
            .parts
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(index, p)| {
                let h = p
                    .headers
                    .iter()
                    .rev()
                    .find(|h| h.name == HeaderName::ContentTransferEncoding)?;
                Some((h.offset_start as usize, h.offset_end as usize, index))
            })
            .collect();
        spans.sort_unstable();
        let mut sizes = HashMap::with_capacity(self.renamed.len());
        for &at in &self.renamed {
            // The last span starting at or before `at` must hold it.
            let i = spans.partition_point(|&(start, _, _)| start <= at);
            let &(_, end, index) = spans.get(i.checked_sub(1)?)?;
            if at >= end {
                return None;
            }
            let part = message.parts.get(index)?;
            if !matches!(part.body, PartType::Binary(_) | PartType::InlineBinary(_)) {
                return None;
            }
            let body = self
                .bytes
                .get(part.offset_body as usize..part.offset_end as usize)?;
            sizes.insert(index, decoded_len(body)?);
        }
        Some(sizes)
    }
}

/// Where `base64` starts if the header value at `value` is exactly that
/// (any case, blanks around it), on a line of its own (not folded on).
fn base64_value(raw: &[u8], value: usize) -> Option<usize> {
    let rest = raw.get(value..)?;
    let start = value
        + rest
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
    let word = raw.get(start..start + 6)?;
    if !word.eq_ignore_ascii_case(b"base64") {
        return None;
    }
    let after = raw.get(start + 6..)?;
    let blanks = after
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r'))
        .count();
    // The line must end here, and the next must not continue the header.
    match (after.get(blanks), after.get(blanks + 1)) {
        (Some(b'\n'), Some(next)) if !matches!(next, b' ' | b'\t') => Some(start),
        _ => None,
    }
}

/// Whether the part whose header holds the line after `line` (a `\n`)
/// names a type mail-parser keeps as bytes: not text (also the default,
/// without a `Content-Type`), not a message, not a multipart. Its header
/// runs back to the boundary or blank line before it and on to the blank
/// line after it. A wrong guess costs only time: the parse of the copy is
/// checked either way.
fn typed_as_bytes(raw: &[u8], line: usize) -> bool {
    let lo = line.saturating_sub(REACH);
    let hi = raw.len().min(line.saturating_add(REACH));
    let mut end = line;
    while end > lo {
        let start = raw
            .get(lo..end)
            .and_then(|r| memchr::memrchr(b'\n', r))
            .map_or(lo, |i| lo + i + 1);
        let text = trim_cr(raw.get(start..end).unwrap_or_default());
        if text.is_empty() || text.starts_with(b"--") {
            break;
        }
        if let Some(bytes) = bytes_type(text) {
            return bytes;
        }
        if start <= lo {
            break;
        }
        end = start - 1;
    }
    let mut start = line + 1;
    while start < hi {
        let end = raw
            .get(start..hi)
            .and_then(|r| memchr::memchr(b'\n', r))
            .map_or(hi, |i| start + i);
        let text = trim_cr(raw.get(start..end).unwrap_or_default());
        if text.is_empty() {
            break;
        }
        if let Some(bytes) = bytes_type(text) {
            return bytes;
        }
        start = end + 1;
    }
    false
}

/// For a `Content-Type` header line: whether its type is kept as bytes.
fn bytes_type(line: &[u8]) -> Option<bool> {
    const NAME: &[u8] = b"content-type:";
    let name = line.get(..NAME.len())?;
    if !name.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let value = line
        .get(NAME.len()..)
        .unwrap_or_default()
        .trim_ascii_start();
    let is = |prefix: &[u8]| {
        value
            .get(..prefix.len())
            .is_some_and(|v| v.eq_ignore_ascii_case(prefix))
    };
    Some(!value.is_empty() && !is(b"text/") && !is(b"message/") && !is(b"multipart/"))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The length mail-parser's MIME base64 decoder gives for `body` (a part's
/// body, up to the line break before its boundary), or `None` where that
/// decoder would stop early or fail, so the full parse must decide.
/// Blanks and line breaks are skipped; `=` ends a group, giving one byte
/// after one or two letters and two after three; a group left open at the
/// end gives nothing.
fn decoded_len(body: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    // Letters of the group still open.
    let mut open = 0usize;
    let mut rest = body;
    loop {
        let end = memchr::memchr(b'=', rest);
        let letters = letters(rest.get(..end.unwrap_or(rest.len()))?)?;
        len += (open + letters) / 4 * 3;
        open = (open + letters) % 4;
        let Some(end) = end else {
            return Some(len);
        };
        len += match open {
            1 | 2 => 1,
            3 => 2,
            _ => 0,
        };
        open = 0;
        rest = rest.get(end + 1..)?;
    }
}

/// How many base64 letters `text` holds, or `None` if it holds anything but
/// letters, blanks and line breaks. Written without branches per byte, in
/// runs short enough for byte counters, so that it runs on vector registers.
fn letters(text: &[u8]) -> Option<usize> {
    let mut count = 0usize;
    for run in text.chunks(255) {
        let (mut letters, mut other) = (0u8, 0u8);
        for &b in run {
            let letter = (b | 0x20).wrapping_sub(b'a') < 26
                || b.wrapping_sub(b'0') < 10
                || b == b'+'
                || b == b'/';
            let blank = b == b' ' || b == b'\t' || b == b'\r' || b == b'\n';
            letters += u8::from(letter);
            other |= u8::from(!letter & !blank);
        }
        if other != 0 {
            return None;
        }
        count += usize::from(letters);
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_lengths_are_mail_parsers() {
        for body in [
            &b"QUJD"[..],
            b"QUI=",
            b"QQ==",
            b"QUJDRA==\r\n",
            b"QUJD\r\nREVG\r\nR0g=\r\n",
            b"QU JD\tRE VG",
            b"QUJDR",
            b"QUJDRE",
            b"QUJDREV",
            b"",
            b"QQ==QUJD",
            b"Q=QUJD",
            b"QUJD=\r\n=QUJD",
        ] {
            // What the full parse says of the body as an attachment.
            let mut raw = b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
                Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                .to_vec();
            raw.extend_from_slice(body);
            raw.extend_from_slice(b"\r\n--b--\r\n");
            let full = parse_message_with(&raw, &ParseLimits::default(), false).expect("parses");
            let size = full.attachments.first().map(|a| a.size);
            assert_eq!(
                decoded_len(body),
                size,
                "{:?}",
                String::from_utf8_lossy(body)
            );
            let quick = parse_message_with(&raw, &ParseLimits::default(), true).expect("parses");
            assert_eq!(quick, full);
        }
        assert_eq!(decoded_len(b"QUJD-"), None);
        assert_eq!(decoded_len(b"QUJD\xff"), None);
        assert_eq!(decoded_len(b"QUJD.QUJD"), None);
    }

    #[test]
    fn a_mail_made_of_transfer_encodings_is_parsed_as_it_is() {
        let mut raw = b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for _ in 0..=MAX_LOOKED_AT {
            raw.extend_from_slice(b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nSGk=\r\n");
        }
        assert!(Undecoded::of(&raw).is_none());
        let mut raw = b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for _ in 0..=MAX_RENAMED {
            raw.extend_from_slice(b"--b\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\nSGk=\r\n");
        }
        assert!(Undecoded::of(&raw).is_none());
        raw.truncate(raw.len() / 2);
        assert!(Undecoded::of(&raw).is_some());
    }

    #[test]
    fn encoded_text_is_not_renamed() {
        let text = b"Subject: x\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\n\
            Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\nSGk=\r\n--a\r\n\
            Content-Transfer-Encoding: base64\r\nContent-Type: TEXT/html\r\n\r\nSGk=\r\n--a\r\n\
            Content-Transfer-Encoding: base64\r\n\r\nSGk=\r\n--a--\r\n";
        assert!(Undecoded::of(text).is_none());
        // The type is found before or after the transfer encoding.
        let image = b"Subject: x\r\n\r\n--a\r\nContent-Transfer-Encoding: base64\r\nX-Note: y\r\ncontent-type: image/png\r\n\r\nSGk=\r\n--a--\r\n";
        assert!(Undecoded::of(image).is_some());
    }

    #[test]
    fn only_parts_below_the_top_level_header_are_renamed() {
        let raw = b"Content-Transfer-Encoding: base64\r\nSubject: x\r\n\r\nQUJD\r\n";
        assert!(Undecoded::of(raw).is_none());
        let raw = b"Subject: x\r\n\r\n--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding:  BASE64 \r\n\r\nQUJD\r\n--b--\r\n";
        let copy = Undecoded::of(raw).expect("renamed");
        assert_eq!(copy.bytes.len(), raw.len());
        assert!(memmem::find(&copy.bytes, b"Encoding:  binary \r\n").is_some());
        // Folded onto the next line, or another word: left as it is.
        let folded =
            b"Subject: x\r\n\r\n--b\r\ncontent-transfer-encoding: base64\r\n x\r\n\r\nQUJD\r\n";
        assert!(Undecoded::of(folded).is_none());
        let other = b"Subject: x\n\n--b\nContent-Transfer-Encoding: base64x\n\nQUJD\n";
        assert!(Undecoded::of(other).is_none());
    }

    use crate::mail::parse::{ParseLimits, parse_message_with};
    use base64::Engine;

    fn b64_lines(data: &[u8], width: usize, eol: &str) -> String {
        let text = base64::engine::general_purpose::STANDARD.encode(data);
        let mut out = String::new();
        for chunk in text.as_bytes().chunks(width) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push_str(eol);
        }
        out
    }

    /// Mail of many shapes: attachments of every length modulo 3, inline
    /// images, encoded text, forwarded messages, broken base64, folded and
    /// lowercase headers, a header quoted in a body, a missing end boundary.
    fn shapes() -> Vec<Vec<u8>> {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut mails = Vec::new();
        for (eol, len) in [
            ("\r\n", 3000),
            ("\r\n", 3001),
            ("\n", 3002),
            ("\r\n", 1),
            ("\r\n", 0),
        ] {
            let att = b64_lines(&data[..len], 76, eol);
            mails.push(format!(
                "From: a@example.com{eol}To: b@example.com{eol}Subject: report{eol}Message-ID: <m{len}@x>{eol}MIME-Version: 1.0{eol}\
                 Content-Type: multipart/mixed; boundary=\"b1\"{eol}{eol}--b1{eol}Content-Type: text/plain; charset=utf-8{eol}{eol}\
                 See attached. Content-Transfer-Encoding: base64{eol}{eol}--b1{eol}Content-Type: application/pdf; name=\"r.pdf\"{eol}\
                 Content-Disposition: attachment; filename=\"r.pdf\"{eol}Content-Transfer-Encoding: base64{eol}{eol}{att}--b1--{eol}"
            ).into_bytes());
        }
        let img = b64_lines(&data[..777], 64, "\r\n");
        let text = b64_lines("Grüße, the body in base64 — ünïcode".as_bytes(), 76, "\r\n");
        let inner_att = b64_lines(&data[..100], 76, "\r\n");
        let inner = format!(
            "From: c@example.com\r\nSubject: inner\r\nContent-Type: multipart/mixed; boundary=\"in\"\r\n\r\n--in\r\n\
             Content-Type: text/plain\r\n\r\nInner text\r\n--in\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\n{inner_att}--in--\r\n"
        );
        let inner_b64 = b64_lines(inner.as_bytes(), 76, "\r\n");
        for body in [
            // multipart/related with an inline image (cid) and lowercase header names.
            format!(
                "Content-Type: multipart/related; boundary=\"r\"\r\n\r\n--r\r\nContent-Type: text/html\r\n\r\n<p><img src=\"cid:i1\"></p>\r\n\
                     --r\r\ncontent-type: image/png\r\ncontent-id: <i1>\r\ncontent-transfer-encoding: base64\r\n\r\n{img}--r--\r\n"
            ),
            // A base64 text part beside an attachment.
            format!(
                "Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n--m\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{text}\
                     --m\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\n{img}--m--\r\n"
            ),
            // A forwarded message, as it is and base64-encoded.
            format!(
                "Content-Type: multipart/mixed; boundary=\"f\"\r\n\r\n--f\r\nContent-Type: text/plain\r\n\r\nFwd\r\n--f\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--f\r\n\
                     Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{inner_b64}--f--\r\n"
            ),
            // Broken base64: a stray character, a dash, a boundary-like line.
            format!(
                "Content-Type: multipart/mixed; boundary=\"x\"\r\n\r\n--x\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD.REVG\r\n{img}\
                     --x\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD--REVG\r\n--x\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJDRA=\r\nQUJD\r\n--x--\r\n"
            ),
            // Folded and odd-cased transfer encodings; no end boundary.
            format!(
                "Content-Type: multipart/mixed; boundary=\"o\"\r\n\r\n--o\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding:\r\n base64\r\n\r\n{img}\
                     --o\r\nContent-Type: image/gif\r\nCONTENT-TRANSFER-ENCODING: Base64\r\n\r\n{img}--o\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: bAsE64\r\n\r\n{img}"
            ),
            // Nested multiparts; an attachment with no type at all (text/plain by default).
            format!(
                "Content-Type: multipart/mixed; boundary=\"n1\"\r\n\r\n--n1\r\nContent-Type: multipart/alternative; boundary=\"n2\"\r\n\r\n--n2\r\nContent-Type: text/plain\r\n\r\nhi\r\n\
                     --n2\r\nContent-Type: text/html\r\n\r\n<b>hi</b>\r\n--n2--\r\n--n1\r\nContent-Transfer-Encoding: base64\r\n\r\n{text}--n1\r\nContent-Type: application/octet-stream\r\n\
                     Content-Transfer-Encoding: base64\r\n\r\n{img}--n1--\r\n"
            ),
            // Two transfer encodings: mail-parser goes by the last.
            String::from(
                "Content-Type: multipart/mixed; boundary=\"t\"\r\n\r\n--t\r\nContent-Type: application/octet-stream\r\n\
                 Content-Transfer-Encoding: base64\r\nContent-Transfer-Encoding: 7bit\r\n\r\nQUJD\r\n--t--\r\n",
            ),
            String::from(
                "Content-Type: multipart/mixed; boundary=\"t\"\r\n\r\n--t\r\nContent-Type: application/octet-stream\r\n\
                 Content-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD\r\n--t--\r\n",
            ),
            // The top-level part itself is an attachment.
            format!(
                "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{img}"
            ),
        ] {
            mails.push(format!("From: a@example.com\r\nTo: b@example.com\r\nSubject: shapes\r\nMIME-Version: 1.0\r\n{body}").into_bytes());
        }
        mails
    }

    fn fixtures() -> Vec<(String, Vec<u8>)> {
        let mut found = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures"
        ))];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "eml") {
                    found.push((
                        path.display().to_string(),
                        std::fs::read(&path).unwrap_or_default(),
                    ));
                }
            }
        }
        found
    }

    #[test]
    fn a_parse_without_decoding_attachments_is_the_full_parse() {
        let limits = ParseLimits::default();
        let mut cases: Vec<(String, Vec<u8>)> = fixtures();
        assert!(cases.len() >= 20, "the fixture mails are there");
        cases.extend(
            shapes()
                .into_iter()
                .enumerate()
                .map(|(i, m)| (format!("shape {i}"), m)),
        );
        let mut skimmed = 0;
        for (name, raw) in &cases {
            let full = parse_message_with(raw, &limits, false);
            let quick = parse_message_with(raw, &limits, true);
            assert_eq!(quick, full, "{name}");
            if let Some(copy) = Undecoded::of(raw)
                && crate::mail::parse::parse_raw(&copy.bytes)
                    .is_some_and(|m| copy.sizes(&m).is_some())
            {
                skimmed += 1;
            }
        }
        // The shortcut is taken for the plain attachment mails at least.
        assert!(skimmed >= 6, "skimmed {skimmed}");
    }

    #[test]
    fn parts_that_must_be_decoded_are_not_skimmed() {
        for (i, raw) in shapes().iter().enumerate().skip(5) {
            let Some(copy) = Undecoded::of(raw) else {
                continue;
            };
            let message = crate::mail::parse::parse_raw(&copy.bytes).expect("parses");
            let skimmed = copy.sizes(&message).is_some();
            // The related image, the image beside encoded text, the nested
            // ones and a part whose last transfer encoding is base64 skim; a
            // forwarded message, broken base64, a base64 overridden by a
            // later transfer encoding and the top-level part itself do not.
            assert_eq!(skimmed, matches!(i, 5 | 6 | 10 | 12), "shape {i}");
        }
    }
}
