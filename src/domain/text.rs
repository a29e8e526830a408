//! Outside text shown on one line of the page (a subject, a name, a file
//! name). Unicode's bidirectional controls can make such a line read
//! otherwise than it is: `invoice\u{202E}fdp.exe` shows as `invoiceexe.pdf`
//! (the "right-to-left override" trick of phishing mail). Those controls are
//! taken out where such text enters; right-to-left scripts need none of them
//! to show correctly.

/// Explicit embeddings, overrides and isolates, and their terminators
/// (U+202A–U+202E, U+2066–U+2069): they reorder the letters after them.
pub fn is_direction_formatting(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Any bidirectional control: [`is_direction_formatting`] and the marks
/// (LRM, RLM, ALM), which order the neutral characters beside them.
pub fn is_direction_control(c: char) -> bool {
    is_direction_formatting(c) || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// A chat line as it is kept: line breaks and tabs as they are, the other
/// controls that are whitespace (vertical tab, form feed, NEL) as a space,
/// every other control character dropped (a stray escape pasted along).
pub fn chat_line(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(c),
            c if c.is_control() && c.is_whitespace() => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Whether `s` shows nothing: only whitespace, controls and characters
/// without a glyph of their own.
pub fn shows_nothing(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_whitespace() || c.is_control() || invisible(c))
}

/// Characters that show nothing: zero-width spaces and joiners, the word
/// joiner and invisible operators, the byte-order mark, the soft hyphen,
/// direction marks and controls, the combining grapheme joiner, the
/// Mongolian vowel separator, Hangul fillers, variation selectors and tag
/// characters.
fn invisible(c: char) -> bool {
    is_direction_control(c)
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200D}'
                | '\u{2060}'..='\u{2064}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{E0000}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

/// A subject or a name without explicit direction formatting. Marks stay:
/// they never reverse letters, and right-to-left text may use them.
pub fn strip_direction_formatting(s: &mut String) {
    if s.contains(is_direction_formatting) {
        s.retain(|c| !is_direction_formatting(c));
    }
}

/// A text shown on one line (a subject, a name, a file name) without control
/// characters (line breaks, tabs, bells, C1 codes): each becomes a space.
pub fn replace_controls(s: &mut String) {
    if s.contains(char::is_control) {
        *s = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
    }
}

/// A file name without any bidirectional control, so that its extension
/// reads as it is.
pub fn strip_direction_controls(s: &mut String) {
    if s.contains(is_direction_control) {
        s.retain(|c| !is_direction_control(c));
    }
}

/// A piece of the caller's input as an error message may quote it: at most
/// 40 characters, control and text-direction characters written as escapes
/// (`\u{202e}`), so a message cannot be disguised or broken by what it quotes.
pub fn shown(value: &str) -> String {
    const MAX: usize = 40;
    let n = value.chars().count();
    let visible = |s: &mut dyn Iterator<Item = char>| -> String {
        s.map(|c| {
            if c.is_control() || is_direction_control(c) {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
    };
    if n <= MAX {
        visible(&mut value.chars())
    } else {
        format!(
            "{}… ({n} characters)",
            visible(&mut value.chars().take(MAX))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_cannot_disguise_an_extension() {
        let mut name = "invoice\u{202E}fdp.exe".to_string();
        strip_direction_controls(&mut name);
        assert_eq!(name, "invoicefdp.exe");
        let mut name = "a\u{2067}b\u{2069}\u{200F}.exe\u{061C}".to_string();
        strip_direction_controls(&mut name);
        assert_eq!(name, "ab.exe");
    }

    #[test]
    fn one_line_texts_lose_their_control_characters() {
        let mut name = "crlf\r\nX-Injected: yes\u{7}\u{85}.txt".to_string();
        replace_controls(&mut name);
        assert_eq!(name, "crlf  X-Injected: yes  .txt");
        let mut plain = "Grüße 🎉".to_string();
        replace_controls(&mut plain);
        assert_eq!(plain, "Grüße 🎉");
    }

    #[test]
    fn subjects_keep_their_marks_and_scripts() {
        let mut subject = "\u{202B}שלום\u{202C} \u{200F}order 12 مرحبا".to_string();
        strip_direction_formatting(&mut subject);
        assert_eq!(subject, "שלום \u{200F}order 12 مرحبا");
        let mut plain = "Grüße 🎉 日本語".to_string();
        strip_direction_formatting(&mut plain);
        assert_eq!(plain, "Grüße 🎉 日本語");
    }
}
