//! Keeps hostile markup from making the HTML parser slow.
//!
//! html5ever follows the HTML standard, whose tree construction scans the
//! stack of open elements ("has a `p` element in button scope", "is this
//! formatting element still open") and the list of active formatting
//! elements on many tokens. Those scans are cheap in real documents, but
//! 50,000 nested `<div>`s or thousands of unclosed `<b id=N>` make the work
//! quadratic (minutes for a few hundred kilobytes). Browsers cap the depth of
//! the tree for the same reason.
//!
//! This pass runs before the parser and does the same: a light tokenizer
//! (comments, raw-text elements and quoted attribute values understood) keeps
//! an estimate of the stack of open elements, including the usual implied end
//! tags (`p`, `li`, `dd`/`dt`, table cells, rows and sections, `a`, headings,
//! `option`) and scope boundaries, and of the list of active formatting
//! elements. A start tag that would open an element deeper than
//! [`MAX_DEPTH`], or a formatting element past [`MAX_FORMATTING`] active ones,
//! is removed from the input, with the end tag that would match it; the text
//! inside stays. Documents within the limits are passed through untouched.
//!
//! It is not a security boundary: whatever it outputs is parsed and sanitized
//! by ammonia like any input. A wrong estimate costs some layout, never
//! safety. Each byte is looked at a bounded number of times, and stack
//! updates are amortised O(1), so the pass is linear.
use std::borrow::Cow;
use std::collections::HashMap;

/// Deepest element kept (estimated depth of the open element stack).
pub(super) const MAX_DEPTH: usize = 256;
/// Most formatting elements (`b`, `font`, `a`…) kept active at once.
pub(super) const MAX_FORMATTING: usize = 24;
/// Most attributes kept on one tag (the tokenizer looks for duplicates, so
/// each attribute costs as much as the ones before it).
pub(super) const MAX_ATTRIBUTES: usize = 64;

const VOID: &[&str] = &[
    "area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "image", "img",
    "input", "keygen", "link", "meta", "param", "source", "track", "wbr",
];
/// Elements whose content is text up to their end tag (scripting is off in
/// ammonia's parser, so `noscript` is not one of them).
const RAW_TEXT: &[&str] = &[
    "script", "style", "xmp", "iframe", "noembed", "noframes", "textarea", "title",
];
/// Elements that bound "in scope" searches.
const SCOPE: &[&str] = &[
    "applet", "caption", "html", "table", "td", "th", "marquee", "object", "template",
];
/// Elements that, when closed, clear the active formatting elements opened
/// inside them.
const MARKERS: &[&str] = &[
    "applet", "caption", "marquee", "object", "td", "th", "template",
];
const FORMATTING: &[&str] = &[
    "a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong", "tt", "u",
];
/// Start tags that close an open `p` (in scope).
const CLOSES_P: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "center",
    "details",
    "dialog",
    "dir",
    "div",
    "dl",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "header",
    "hgroup",
    "main",
    "menu",
    "nav",
    "ol",
    "p",
    "section",
    "summary",
    "ul",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "listing",
    "form",
    "table",
    "hr",
    "xmp",
    "li",
    "dd",
    "dt",
    "plaintext",
];
const HEADINGS: &[&str] = &["h1", "h2", "h3", "h4", "h5", "h6"];

#[derive(Clone, Copy)]
enum Scope {
    General,
    List,
    Table,
}

struct Entry {
    name: String,
    /// Index of the nearest scope boundary at or below this entry.
    boundary: Option<usize>,
    /// Index of the nearest `ul`/`ol` at or below (list item scope).
    list: Option<usize>,
    /// Index of the nearest `table`/`template`/`html` at or below (table scope).
    table: Option<usize>,
    /// Length of the formatting list when this element opened (markers).
    formatting_mark: usize,
}

#[derive(Default)]
struct Shaper {
    stack: Vec<Entry>,
    /// Stack indices of the open elements of each name.
    positions: HashMap<String, Vec<usize>>,
    /// Estimated list of active formatting elements (names).
    formatting: Vec<String>,
    /// Where the list starts after the innermost open marker.
    marker_floor: Vec<usize>,
    /// Start tags removed, per name, whose end tags are removed too.
    dropped: HashMap<String, usize>,
    /// Open `svg` and `math` elements.
    foreign: usize,
}

impl Shaper {
    fn in_foreign(&self) -> bool {
        self.foreign > 0
    }

    fn top_index(&self, name: &str) -> Option<usize> {
        self.positions.get(name).and_then(|v| v.last().copied())
    }

    /// Whether the open element at `idx` is in the given scope (no boundary
    /// of that scope above it).
    fn in_scope(&self, idx: usize, scope: Scope) -> bool {
        let Some(top) = self.stack.last() else {
            return false;
        };
        let below = |b: Option<usize>| b.is_none_or(|b| b <= idx);
        match scope {
            Scope::General => below(top.boundary),
            Scope::List => below(top.boundary) && below(top.list),
            Scope::Table => below(top.table),
        }
    }

    /// Pops elements until the one at `idx` is popped.
    fn pop_to(&mut self, idx: usize) {
        while self.stack.len() > idx {
            let e = self.stack.pop().expect("len > idx");
            if let Some(v) = self.positions.get_mut(&e.name) {
                v.pop();
            }
            if matches!(e.name.as_str(), "svg" | "math") {
                self.foreign -= 1;
            }
            if MARKERS.contains(&e.name.as_str()) {
                self.formatting.truncate(e.formatting_mark);
                self.marker_floor.pop();
            }
        }
    }

    /// Closes the topmost open element named one of `names` if in scope.
    fn close_any(&mut self, names: &[&str], scope: Scope) {
        if let Some(idx) = names.iter().filter_map(|n| self.top_index(n)).max()
            && self.in_scope(idx, scope)
        {
            self.pop_to(idx);
        }
    }

    fn forget_formatting(&mut self, name: &str) {
        let floor = self.marker_floor.last().copied().unwrap_or(0);
        if let Some(i) = self.formatting.iter().rposition(|n| n == name)
            && i >= floor
        {
            self.formatting.remove(i);
        }
    }

    /// Returns whether to keep the start tag.
    fn start(&mut self, name: &str, self_closing: bool) -> bool {
        if CLOSES_P.contains(&name) {
            self.close_any(&["p"], Scope::General);
        }
        match name {
            "li" => self.close_any(&["li"], Scope::List),
            "dd" | "dt" => self.close_any(&["dd", "dt"], Scope::List),
            "td" | "th" => self.close_any(&["td", "th"], Scope::Table),
            "tr" => {
                self.close_any(&["td", "th"], Scope::Table);
                self.close_any(&["tr"], Scope::Table);
            }
            "tbody" | "thead" | "tfoot" => {
                self.close_any(&["td", "th"], Scope::Table);
                self.close_any(&["tr"], Scope::Table);
                self.close_any(&["tbody", "thead", "tfoot"], Scope::Table);
            }
            "option" | "optgroup" if self.stack.last().is_some_and(|e| e.name == "option") => {
                let idx = self.stack.len() - 1;
                self.pop_to(idx);
            }
            "a" => {
                let floor = self.marker_floor.last().copied().unwrap_or(0);
                if self
                    .formatting
                    .get(floor..)
                    .unwrap_or_default()
                    .iter()
                    .any(|n| n == "a")
                {
                    self.forget_formatting("a");
                    self.close_any(&["a"], Scope::General);
                }
            }
            h if HEADINGS.contains(&h)
                && self
                    .stack
                    .last()
                    .is_some_and(|e| HEADINGS.contains(&e.name.as_str())) =>
            {
                let idx = self.stack.len() - 1;
                self.pop_to(idx);
            }
            _ => {}
        }
        if VOID.contains(&name) || (self_closing && self.in_foreign()) {
            return true;
        }
        let formatting = FORMATTING.contains(&name);
        if self.stack.len() >= MAX_DEPTH || (formatting && self.formatting.len() >= MAX_FORMATTING)
        {
            *self.dropped.entry(name.to_string()).or_default() += 1;
            return false;
        }
        let idx = self.stack.len();
        let parent = self.stack.last();
        let entry = Entry {
            name: name.to_string(),
            boundary: if SCOPE.contains(&name) {
                Some(idx)
            } else {
                parent.and_then(|p| p.boundary)
            },
            list: if matches!(name, "ul" | "ol") {
                Some(idx)
            } else {
                parent.and_then(|p| p.list)
            },
            table: if matches!(name, "table" | "template" | "html") {
                Some(idx)
            } else {
                parent.and_then(|p| p.table)
            },
            formatting_mark: self.formatting.len(),
        };
        if MARKERS.contains(&name) {
            self.marker_floor.push(self.formatting.len());
        }
        self.stack.push(entry);
        match self.positions.get_mut(name) {
            Some(v) => v.push(idx),
            None => {
                self.positions.insert(name.to_string(), vec![idx]);
            }
        }
        if matches!(name, "svg" | "math") {
            self.foreign += 1;
        }
        if formatting {
            self.formatting.push(name.to_string());
        }
        true
    }

    /// Returns whether to keep the end tag.
    fn end(&mut self, name: &str) -> bool {
        if FORMATTING.contains(&name) {
            self.forget_formatting(name);
        }
        match self.top_index(name) {
            Some(idx) => {
                let scope = match name {
                    "table" | "tbody" | "thead" | "tfoot" | "tr" | "td" | "th" | "caption"
                    | "colgroup" => Scope::Table,
                    "li" => Scope::List,
                    _ => Scope::General,
                };
                if self.in_scope(idx, scope) {
                    self.pop_to(idx);
                }
                true
            }
            None => match self.dropped.get_mut(name) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            },
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
}

/// The tag name starting at `start` (lower case) and where it ends.
fn tag_name(html: &str, start: usize) -> (Cow<'_, str>, usize) {
    let b = html.as_bytes();
    let mut end = start;
    while end < b.len() && !is_space(b[end]) && b[end] != b'/' && b[end] != b'>' {
        end += 1;
    }
    // `start` follows an ASCII `<` or `</` and `end` is at an ASCII byte or
    // the end: both are character boundaries.
    let name = &html[start..end];
    let name = if name.bytes().any(|c| c.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    };
    (name, end)
}

/// The end of a tag: the index just past its `>`, whether it is
/// self-closing (`/>`), and where its attributes past [`MAX_ATTRIBUTES`]
/// start, if it has more.
struct TagEnd {
    end: usize,
    self_closing: bool,
    excess_attributes: Option<usize>,
}

/// Finds the end of the tag whose attributes start at `pos`.
fn tag_end(b: &[u8], mut pos: usize) -> TagEnd {
    let mut count = 0;
    let mut excess_attributes = None;
    loop {
        while pos < b.len() && (is_space(b[pos]) || b[pos] == b'/') {
            pos += 1;
        }
        match b.get(pos) {
            None => {
                return TagEnd {
                    end: b.len(),
                    self_closing: false,
                    excess_attributes,
                };
            }
            Some(b'>') => {
                return TagEnd {
                    end: pos + 1,
                    self_closing: pos > 0 && b[pos - 1] == b'/',
                    excess_attributes,
                };
            }
            _ => {}
        }
        count += 1;
        if count == MAX_ATTRIBUTES + 1 {
            excess_attributes = Some(pos);
        }
        // Attribute name (its first character may be `=`).
        pos += 1;
        while pos < b.len() && !is_space(b[pos]) && !matches!(b[pos], b'/' | b'>' | b'=') {
            pos += 1;
        }
        while pos < b.len() && is_space(b[pos]) {
            pos += 1;
        }
        if b.get(pos) != Some(&b'=') {
            continue;
        }
        pos += 1;
        while pos < b.len() && is_space(b[pos]) {
            pos += 1;
        }
        match b.get(pos) {
            Some(&q) if q == b'"' || q == b'\'' => {
                pos = b[pos + 1..]
                    .iter()
                    .position(|&c| c == q)
                    .map_or(b.len(), |i| pos + 1 + i + 1);
            }
            _ => {
                while pos < b.len() && !is_space(b[pos]) && b[pos] != b'>' {
                    pos += 1;
                }
            }
        }
    }
}

/// Position of the end tag `</name` (any case) at or after `from`.
fn find_end_tag(html: &str, from: usize, name: &str) -> Option<usize> {
    let b = html.as_bytes();
    let mut pos = from;
    while let Some(i) = html[pos..].find("</") {
        let at = pos + i;
        let after = at + 2 + name.len();
        if b.len() >= after
            && b[at + 2..after].eq_ignore_ascii_case(name.as_bytes())
            && b.get(after)
                .is_none_or(|&c| is_space(c) || c == b'/' || c == b'>')
        {
            return Some(at);
        }
        pos = at + 2;
    }
    None
}

/// The input with the tags that would nest too deep removed (see the module
/// documentation); borrowed when nothing is removed.
pub(super) fn limit(html: &str) -> Cow<'_, str> {
    let b = html.as_bytes();
    let mut shaper = Shaper::default();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut pos = 0;
    let remove = |out: &mut Option<String>, copied: &mut usize, start: usize, end: usize| {
        let o = out.get_or_insert_with(|| String::with_capacity(html.len()));
        o.push_str(&html[*copied..start]);
        *copied = end;
    };
    while let Some(i) = html[pos..].find('<') {
        let lt = pos + i;
        match b.get(lt + 1) {
            Some(b'!') if html[lt..].starts_with("<!--") => {
                pos = html[lt + 2..]
                    .find("-->")
                    .map_or(b.len(), |j| lt + 2 + j + 3);
            }
            Some(b'!') | Some(b'?') => {
                pos = html[lt..].find('>').map_or(b.len(), |j| lt + j + 1);
            }
            Some(b'/') => match b.get(lt + 2) {
                Some(c) if c.is_ascii_alphabetic() => {
                    let (name, name_end) = tag_name(html, lt + 2);
                    let tag = tag_end(b, name_end);
                    if !shaper.end(&name) {
                        remove(&mut out, &mut copied, lt, tag.end);
                    } else if let Some(cut) = tag.excess_attributes {
                        let keep_from = if b.get(tag.end - 1) == Some(&b'>') {
                            tag.end - 1
                        } else {
                            tag.end
                        };
                        remove(&mut out, &mut copied, cut, keep_from.max(cut));
                    }
                    pos = tag.end;
                }
                Some(b'>') => pos = lt + 3,
                _ => pos = html[lt..].find('>').map_or(b.len(), |j| lt + j + 1),
            },
            Some(c) if c.is_ascii_alphabetic() => {
                let (name, name_end) = tag_name(html, lt + 1);
                let tag = tag_end(b, name_end);
                let end = tag.end;
                let foreign = shaper.in_foreign();
                if !shaper.start(&name, tag.self_closing) {
                    remove(&mut out, &mut copied, lt, end);
                    pos = end;
                    continue;
                }
                if let Some(cut) = tag.excess_attributes {
                    // Keep the closing `>` (if the tag has one).
                    let keep_from = if b.get(end - 1) == Some(&b'>') {
                        end - 1
                    } else {
                        end
                    };
                    remove(&mut out, &mut copied, cut, keep_from.max(cut));
                }
                pos = end;
                if !foreign {
                    if name == "plaintext" {
                        break;
                    }
                    if RAW_TEXT.contains(&&*name) {
                        pos = find_end_tag(html, end, &name).unwrap_or(b.len());
                    }
                }
            }
            _ => pos = lt + 1,
        }
        if pos >= b.len() {
            break;
        }
    }
    match out {
        None => Cow::Borrowed(html),
        Some(mut o) => {
            o.push_str(&html[copied..]);
            Cow::Owned(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_markup_is_untouched() {
        for html in [
            "<table><tr><td>a<td>b<tr><td>c</table><p>x<p>y<ul><li>1<li>2</ul>",
            "<div title=\"a>b\"><b>bold <i>it</i></b><!-- <div> --><script>if (a<b) {}</script></div>",
            "<svg><path/><path/></svg><p>after",
        ] {
            assert!(matches!(limit(html), Cow::Borrowed(_)), "{html}");
        }
        let deep = "<div>".repeat(MAX_DEPTH) + &"</div>".repeat(MAX_DEPTH);
        assert!(matches!(limit(&deep), Cow::Borrowed(_)));
        let siblings = "<p><font color=red>x</font></p>".repeat(10_000);
        assert!(matches!(limit(&siblings), Cow::Borrowed(_)));
        let cells = "<table><tr><td><b>x<td><i>y</table>".repeat(1_000);
        assert!(matches!(limit(&cells), Cow::Borrowed(_)));
    }

    #[test]
    fn excess_depth_is_removed() {
        let html = "<div>".repeat(MAX_DEPTH + 10) + "x" + &"</div>".repeat(MAX_DEPTH + 10);
        let out = limit(&html);
        assert_eq!(out.matches("<div>").count(), MAX_DEPTH);
        assert_eq!(out.matches("</div>").count(), MAX_DEPTH);
        assert!(out.contains('x'));
        let html = "<b id=1>".repeat(100) + "x";
        assert_eq!(limit(&html).matches("<b").count(), MAX_FORMATTING);
        let html = format!(
            "<p {}>x</p>",
            (0..100)
                .map(|i| format!("a{i}=\"1>\" "))
                .collect::<String>()
        );
        let out = limit(&html);
        assert_eq!(out.matches('=').count(), MAX_ATTRIBUTES);
        assert!(out.ends_with(">x</p>"), "{out}");
    }
}
