//! Call transcripts: the lines a telephony or transcription component posts
//! for a call task (`POST /api/v1/tasks/{id}/transcript`), checked before
//! they are stored. Each line is stored once by the id its poster gave it;
//! lines are shown in the order spoken. Plain rules, no I/O.
use super::Millis;
use super::chat::Sender;

/// Most lines in one request.
pub const MAX_LINES: usize = 500;
/// Longest line text (characters), as for a chat message.
pub const MAX_TEXT_CHARS: usize = super::chat::MAX_TEXT_CHARS;
/// Longest line id and speaker name (characters).
pub const MAX_ID_CHARS: usize = 200;
pub const MAX_NAME_CHARS: usize = 200;

/// A line as posted (the HTTP layer has checked the JSON types).
#[derive(Debug, Clone, Default)]
pub struct PostedLine {
    pub id: String,
    pub speaker: String,
    pub name: Option<String>,
    pub text: String,
    /// When it was spoken; now when absent.
    pub at: Option<Millis>,
}

/// A line fit to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptLine {
    pub external_id: String,
    pub speaker: Sender,
    pub speaker_name: Option<String>,
    pub text: String,
    pub spoken_at: Millis,
    /// Whether the poster gave `at` (else `spoken_at` is when it came in).
    pub timed: bool,
}

/// What is wrong with a request's lines: the field (`lines[2].text`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct LineError {
    pub field: String,
    pub problem: String,
}

fn bad(i: usize, key: &str, problem: impl Into<String>) -> LineError {
    LineError {
        field: format!("lines[{i}].{key}"),
        problem: problem.into(),
    }
}

/// Control characters other than line breaks and tabs.
fn has_controls(s: &str, breaks: bool) -> bool {
    s.chars()
        .any(|c| c.is_control() && !(c == '\t' || (breaks && matches!(c, '\n' | '\r'))))
}

/// Checks a request's lines and makes them fit to store: every field named
/// with its limit when it is wrong; one id at most once per request; names
/// lose text-direction controls (see [`super::text`]); `at` defaults to `now`.
pub fn check_lines(posted: Vec<PostedLine>, now: Millis) -> Result<Vec<TranscriptLine>, LineError> {
    if posted.is_empty() {
        return Err(LineError {
            field: "lines".into(),
            problem: "must hold at least one line".into(),
        });
    }
    if posted.len() > MAX_LINES {
        return Err(LineError {
            field: "lines".into(),
            problem: format!(
                "holds {} lines (at most {MAX_LINES} per request)",
                posted.len()
            ),
        });
    }
    let mut seen = std::collections::HashMap::with_capacity(posted.len());
    let mut lines = Vec::with_capacity(posted.len());
    for (i, p) in posted.into_iter().enumerate() {
        let id = p.id.trim();
        if id.is_empty() {
            return Err(bad(i, "id", "must not be empty"));
        }
        if id.chars().count() > MAX_ID_CHARS {
            return Err(bad(
                i,
                "id",
                format!("is longer than {MAX_ID_CHARS} characters"),
            ));
        }
        if has_controls(id, false) || id.chars().any(super::text::is_direction_control) {
            return Err(bad(
                i,
                "id",
                "contains control or text-direction characters",
            ));
        }
        if let Some(first) = seen.insert(id.to_string(), i) {
            return Err(bad(i, "id", format!("repeats lines[{first}].id ('{id}')")));
        }
        let speaker = Sender::parse(&p.speaker)
            .ok_or_else(|| bad(i, "speaker", "must be customer, agent or bot"))?;
        if p.text.chars().count() > MAX_TEXT_CHARS {
            return Err(bad(
                i,
                "text",
                format!("is longer than {MAX_TEXT_CHARS} characters"),
            ));
        }
        if p.text.trim().is_empty() {
            return Err(bad(i, "text", "must not be empty"));
        }
        if has_controls(&p.text, true) {
            return Err(bad(i, "text", "contains control characters"));
        }
        let speaker_name = match p.name {
            Some(mut name) => {
                if name.chars().count() > MAX_NAME_CHARS {
                    return Err(bad(
                        i,
                        "name",
                        format!("is longer than {MAX_NAME_CHARS} characters"),
                    ));
                }
                if has_controls(&name, false) {
                    return Err(bad(i, "name", "contains control characters"));
                }
                super::text::strip_direction_formatting(&mut name);
                Some(name.trim().to_string()).filter(|n| !n.is_empty())
            }
            None => None,
        };
        lines.push(TranscriptLine {
            external_id: id.to_string(),
            speaker,
            speaker_name,
            text: p.text,
            spoken_at: p.at.unwrap_or(now),
            timed: p.at.is_some(),
        });
    }
    Ok(lines)
}

/// Whether a stored line says the same as a posted one (a repeated post of
/// it), so that reusing an id for other words is told apart. A post without
/// `at` says nothing of the time (a retry of it comes in later).
pub fn same_line(stored: &TranscriptLine, posted: &TranscriptLine) -> bool {
    stored.speaker == posted.speaker
        && stored.speaker_name == posted.speaker_name
        && stored.text == posted.text
        && (!posted.timed || stored.spoken_at == posted.spoken_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, speaker: &str, text: &str) -> PostedLine {
        PostedLine {
            id: id.into(),
            speaker: speaker.into(),
            text: text.into(),
            ..PostedLine::default()
        }
    }

    #[test]
    fn good_lines_are_kept_in_order_with_defaults() {
        let mut named = line("u2", "agent", "How can I help?");
        named.name = Some(" Alice \u{202E}".into());
        named.at = Some(5);
        let lines = check_lines(vec![line("u1", "customer", "Hello\nthere"), named], 42).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].speaker, Sender::Customer);
        assert_eq!(lines[0].spoken_at, 42, "now when absent");
        assert_eq!(lines[0].text, "Hello\nthere");
        assert_eq!(lines[1].speaker_name.as_deref(), Some("Alice"));
        assert_eq!(lines[1].spoken_at, 5);
    }

    #[test]
    fn each_problem_names_its_field_and_limit() {
        let err = |lines: Vec<PostedLine>| check_lines(lines, 0).unwrap_err().to_string();
        assert_eq!(err(vec![]), "lines must hold at least one line");
        assert!(err(vec![line("a", "customer", "x"); MAX_LINES + 1]).contains("at most 500"));
        assert_eq!(
            err(vec![line(" ", "customer", "x")]),
            "lines[0].id must not be empty"
        );
        assert_eq!(
            err(vec![line("a", "customer", "x"), line("a", "agent", "y")]),
            "lines[1].id repeats lines[0].id ('a')"
        );
        assert_eq!(
            err(vec![line("a", "caller", "x")]),
            "lines[0].speaker must be customer, agent or bot"
        );
        assert_eq!(
            err(vec![line("a", "bot", "  ")]),
            "lines[0].text must not be empty"
        );
        assert_eq!(
            err(vec![line("a", "bot", &"x".repeat(MAX_TEXT_CHARS + 1))]),
            "lines[0].text is longer than 16384 characters"
        );
        assert_eq!(
            err(vec![line("a", "bot", "beep\u{7}")]),
            "lines[0].text contains control characters"
        );
        assert_eq!(
            err(vec![line(&"i".repeat(MAX_ID_CHARS + 1), "bot", "x")]),
            "lines[0].id is longer than 200 characters"
        );
        let mut long_name = line("a", "bot", "x");
        long_name.name = Some("n".repeat(MAX_NAME_CHARS + 1));
        assert_eq!(
            err(vec![long_name]),
            "lines[0].name is longer than 200 characters"
        );
    }

    #[test]
    fn a_repeated_line_is_the_same_only_word_for_word() {
        let a = check_lines(vec![line("a", "customer", "yes")], 1)
            .unwrap()
            .remove(0);
        let mut b = a.clone();
        assert!(same_line(&a, &b));
        // Retried later without a time: the same line.
        b.spoken_at = 99;
        assert!(same_line(&a, &b));
        b.timed = true;
        assert!(!same_line(&a, &b), "another time given");
        b = a.clone();
        b.text = "no".into();
        assert!(!same_line(&a, &b));
    }
}
