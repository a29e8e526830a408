//! A strict filter for inline `style` attributes.
//!
//! It is deliberately simpler than a CSS parser and errs on the side of
//! dropping: a declaration survives only if its property is on the allowlist
//! and its value passes every check below, so nothing that could load a
//! resource, run code or lay content over the page gets through:
//!
//! - comments are removed first (so `u/**/rl(` is judged as `url(`);
//! - a value holding a backslash is dropped: CSS escapes (`\75 rl(`) are never
//!   decoded by us, so no value that could decode into something else survives;
//! - the only functions allowed are `rgb()`, `rgba()`, `hsl()` and `hsla()`,
//!   not nested: no `url(`, `image-set(`, `expression(`, `var(`, `calc(`…;
//! - no `:` in a value (no `javascript:`, `data:`…), no `@`, `{`, `}`, `<`,
//!   `>`, no `!` but a final `!important`, no control characters, quotes
//!   balanced;
//! - no `position`, `z-index`, `top`/`left`/…, `transform`, `content`,
//!   `behavior`, `-moz-binding`, `cursor`, `filter`…: they are not listed;
//! - negative margins and text indents are dropped (they can move content
//!   over what precedes it), and `display` takes only a few plain values.
//!
//! The work is linear in the length of the attribute.
use std::borrow::Cow;

/// Properties kept (after the value checks).
const ALLOWED: &[&str] = &[
    // colours
    "color",
    "background-color",
    "background",
    // fonts
    "font",
    "font-family",
    "font-size",
    "font-style",
    "font-weight",
    "font-variant",
    "line-height",
    "letter-spacing",
    "word-spacing",
    // text
    "text-align",
    "text-decoration",
    "text-decoration-line",
    "text-decoration-color",
    "text-decoration-style",
    "text-indent",
    "text-transform",
    "text-overflow",
    "white-space",
    "word-break",
    "word-wrap",
    "overflow-wrap",
    "vertical-align",
    "direction",
    // spacing
    "margin",
    "margin-top",
    "margin-right",
    "margin-bottom",
    "margin-left",
    "padding",
    "padding-top",
    "padding-right",
    "padding-bottom",
    "padding-left",
    // borders
    "border",
    "border-top",
    "border-right",
    "border-bottom",
    "border-left",
    "border-width",
    "border-style",
    "border-color",
    "border-top-width",
    "border-right-width",
    "border-bottom-width",
    "border-left-width",
    "border-top-style",
    "border-right-style",
    "border-bottom-style",
    "border-left-style",
    "border-top-color",
    "border-right-color",
    "border-bottom-color",
    "border-left-color",
    "border-radius",
    "border-top-left-radius",
    "border-top-right-radius",
    "border-bottom-left-radius",
    "border-bottom-right-radius",
    "border-collapse",
    "border-spacing",
    // sizes
    "width",
    "height",
    "max-width",
    "max-height",
    "min-width",
    "min-height",
    "box-sizing",
    // layout that stays in the flow
    "display",
    "float",
    "clear",
    "overflow",
    "overflow-x",
    "overflow-y",
    "visibility",
    "list-style",
    "list-style-type",
    "table-layout",
    "caption-side",
    "empty-cells",
];

const DISPLAY: &[&str] = &[
    "none",
    "block",
    "inline",
    "inline-block",
    "list-item",
    "table",
    "inline-table",
    "table-row",
    "table-cell",
    "table-row-group",
    "table-header-group",
    "table-footer-group",
    "table-column",
    "table-column-group",
    "table-caption",
];

const FUNCTIONS: &[&str] = &["rgb", "rgba", "hsl", "hsla"];

/// Longest value kept, in bytes: real declarations are far shorter.
const MAX_VALUE: usize = 1024;

/// The filtered style (None when nothing is left) and how many dropped
/// declarations referred to a remote resource (counted as blocked loads).
pub(super) fn filter_style(input: &str) -> (Option<String>, usize) {
    let text = strip_comments(input);
    let mut out = String::with_capacity(text.len());
    let mut remote = 0;
    for_each_declaration(&text, |decl| {
        let decl = decl.trim();
        if decl.is_empty() {
            return;
        }
        let mark = out.len();
        if !out.is_empty() {
            out.push(';');
        }
        if !filter_declaration(decl, &mut out) {
            out.truncate(mark);
            if mentions_remote(decl) {
                remote += 1;
            }
        }
    });
    ((!out.is_empty()).then_some(out), remote)
}

/// Removes `/* … */` everywhere (also inside strings: stricter, never looser);
/// an unterminated comment swallows the rest, as in CSS.
fn strip_comments(s: &str) -> Cow<'_, str> {
    if !s.contains("/*") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        match rest[i + 2..].find("*/") {
            Some(j) => rest = &rest[i + 2 + j + 2..],
            None => return Cow::Owned(out),
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Calls `f` with each part of `s` between `;` outside quotes.
fn for_each_declaration<'s>(s: &'s str, mut f: impl FnMut(&'s str)) {
    let mut quote: Option<u8> = None;
    let mut start = 0;
    for (i, c) in s.bytes().enumerate() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'"' || c == b'\'' => quote = Some(c),
            None if c == b';' => {
                f(&s[start..i]);
                start = i + 1;
            }
            None => {}
        }
    }
    f(&s[start..]);
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn mentions_remote(decl: &str) -> bool {
    ["http:", "https:", "(//", "('//", "(\"//", " //"]
        .iter()
        .any(|n| contains_ci(decl, n))
}

fn one_of_ci(value: &str, allowed: &[&str]) -> bool {
    allowed.iter().any(|a| a.eq_ignore_ascii_case(value))
}

/// Appends `name:value` to `out` if the declaration passes; on false, `out`
/// may hold a partial write that the caller truncates.
fn filter_declaration(decl: &str, out: &mut String) -> bool {
    let Some((name, value)) = decl.split_once(':') else {
        return false;
    };
    let name = name.trim();
    let Some(&name) = ALLOWED.iter().find(|a| a.eq_ignore_ascii_case(name)) else {
        return false;
    };
    let mut value = value.trim();
    let mut important = false;
    if let Some(i) = value.rfind('!')
        && value[i + 1..].trim().eq_ignore_ascii_case("important")
    {
        important = true;
        value = value[..i].trim_end();
    }
    if value.is_empty() || value.len() > MAX_VALUE {
        return false;
    }
    out.push_str(name);
    out.push(':');
    let start = out.len();
    if !check_value(value, out) {
        return false;
    }
    let value = &out[start..];
    let ok = match name {
        "display" => one_of_ci(value, DISPLAY),
        "float" => one_of_ci(value, &["left", "right", "none"]),
        "clear" => one_of_ci(value, &["left", "right", "both", "none"]),
        "overflow" | "overflow-x" | "overflow-y" => {
            one_of_ci(value, &["visible", "hidden", "auto", "scroll", "clip"])
        }
        "visibility" => one_of_ci(value, &["visible", "hidden", "collapse"]),
        n if n.starts_with("margin") || n == "text-indent" => !has_negative_number(value),
        _ => true,
    };
    if ok && important {
        out.push_str(" !important");
    }
    ok
}

/// Checks a value and appends it to `out` with its white space normalised;
/// false drops it (leaving a partial write).
fn check_value(value: &str, out: &mut String) -> bool {
    let start = out.len();
    let mut quote: Option<char> = None;
    let mut in_function = false;
    let mut pending_space = false;
    for c in value.chars() {
        let c = match c {
            '\t' | '\n' | '\r' | '\x0c' => ' ',
            c if c.is_control() => return false,
            '\\' | ':' | '@' | '{' | '}' | '<' | '>' | '!' | ';' | '`' => return false,
            c => c,
        };
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None => {}
        }
        // Parentheses count everywhere, inside strings too (stricter).
        if c == '(' {
            if in_function || pending_space {
                return false;
            }
            let written = &out[start..];
            let ident_start = written
                .bytes()
                .rposition(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
                .map_or(0, |p| p + 1);
            if !one_of_ci(&written[ident_start..], FUNCTIONS) {
                return false;
            }
            in_function = true;
        } else if c == ')' {
            if !in_function {
                return false;
            }
            in_function = false;
        }
        if c == ' ' {
            pending_space = out.len() > start;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    let written = &out[start..];
    !(quote.is_some()
        || in_function
        || written.is_empty()
        || [
            "expression",
            "javascript",
            "vbscript",
            "behavior",
            "binding",
        ]
        .iter()
        .any(|bad| contains_ci(written, bad)))
}

/// A `-` that starts a number (`-5px`, `-.5em`).
fn has_negative_number(value: &str) -> bool {
    let b = value.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'-'
            && b.get(i + 1)
                .is_some_and(|n| n.is_ascii_digit() || *n == b'.')
    })
}

#[cfg(test)]
mod tests {
    use super::filter_style;

    fn f(s: &str) -> Option<String> {
        filter_style(s).0
    }

    #[test]
    fn keeps_safe_properties() {
        assert_eq!(
            f("color: red; background-color:#FFF; font-family: 'Segoe UI', Arial; padding: 0 4px"),
            Some(
                "color:red;background-color:#FFF;font-family:'Segoe UI', Arial;padding:0 4px"
                    .into()
            )
        );
        assert_eq!(
            f("color: rgb(1, 2, 3) !important"),
            Some("color:rgb(1, 2, 3) !important".into())
        );
        assert_eq!(f("display:none"), Some("display:none".into()));
        assert_eq!(
            f("margin: 0 auto; text-align:center"),
            Some("margin:0 auto;text-align:center".into())
        );
        assert_eq!(
            f("font-family: Curlz MT"),
            Some("font-family:Curlz MT".into())
        );
    }

    #[test]
    fn drops_dangerous_declarations() {
        for s in [
            "position:absolute",
            "POSITION: fixed",
            "z-index: 99",
            "top:0",
            "left: 0",
            "background:url(http://evil/x.png)",
            "background-image:url(x)",
            "background: u/**/rl(http://evil/x)",
            "background: \\75 rl(http://evil/x)",
            "width: expression(alert(1))",
            "behavior: url(x.htc)",
            "-moz-binding: url(x.xml#xss)",
            "content: 'x'",
            "margin-top: -200px",
            "margin: 0 0 -.5em 0",
            "text-indent: -9999px",
            "color: var(--x)",
            "width: calc(100% - 10px)",
            "color: rgb(rgb(1,2,3))",
            "font-family: \"javascript:alert(1)\"",
            "font-family: 'unbalanced",
            "display: flex",
            "color: red !ie",
            "transform: translate(0, -100px)",
            "color:\u{1}red",
            "font-family: \"url(\"",
            "pos\\69tion: absolute",
        ] {
            assert_eq!(f(s), None, "{s}");
        }
    }

    #[test]
    fn counts_remote_loads_in_dropped_declarations() {
        assert_eq!(
            filter_style("background:url(http://a/x.png); color: red"),
            (Some("color:red".into()), 1)
        );
        assert_eq!(filter_style("background-image:url('//a/x.png')"), (None, 1));
        assert_eq!(filter_style("background-image:url(cid:x)"), (None, 0));
        assert_eq!(filter_style("position:absolute"), (None, 0));
    }

    #[test]
    fn comments_and_semicolons_in_strings() {
        assert_eq!(f("color:/* x */red"), Some("color:red".into()));
        // A `;` inside a string does not split, but such a value is dropped.
        assert_eq!(
            f("font-family:'a;b'; color: blue"),
            Some("color:blue".into())
        );
        assert_eq!(f("color: red /* unterminated"), Some("color:red".into()));
        // A brace cannot open a rule: the declaration holding it is dropped.
        assert_eq!(
            f("color: red; } body { color: blue"),
            Some("color:red".into())
        );
    }
}
