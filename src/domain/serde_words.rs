//! Serde's messages as people read them: no Rust type names (`expected
//! i32` is "expected a whole number from -2147483648 to 2147483647"), no
//! long pieces of the input. Said the same by the API and the configuration.

/// A serde error in the API's words: no Rust type names, no long pieces of
/// the input (a quoted value longer than 40 characters is cut).
pub fn tidy_serde_message(raw: &str) -> String {
    let text = raw
        .trim_start_matches("Failed to deserialize the JSON body into the target type: ")
        .trim_start_matches("Failed to parse the request body as JSON: ");
    // Rust type names mean nothing to a client.
    let mut out = String::with_capacity(text.len().min(600));
    let mut rest = text;
    while let Some(i) = rest.find("expected struct ") {
        out.push_str(&rest[..i]);
        out.push_str("expected an object");
        rest = &rest[i + "expected struct ".len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    // `status: status 'lunch' is not …`: a message of ours names its field
    // already; the path in front would say it twice.
    if let Some((path, message)) = out.split_once(": ")
        && let Some(field) = path.rsplit('.').next()
        && !field.is_empty()
        && message
            .strip_prefix(field)
            .is_some_and(|after| after.starts_with(' ') || after.starts_with(':'))
    {
        out = format!("{path}{}", &message[field.len()..]);
    }
    let out = out
        .replace("invalid type: sequence", "invalid type: a list")
        .replace("invalid type: map", "invalid type: an object")
        .replace("expected a sequence", "expected a list")
        .replace("expected a map", "expected an object")
        .replace("expected a borrowed string", "expected a string")
        .replace("expected enum ", "expected one of the values of ");
    shorten_quoted(&number_words(&out))
}

/// Rust's integer and float type names, as a client reads them.
fn number_words(s: &str) -> String {
    const NAMES: &[(&str, &str)] = &[
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number of 0 or more"),
        ("usize", "a whole number of 0 or more"),
        ("i8", "a whole number from -128 to 127"),
        ("i16", "a whole number from -32768 to 32767"),
        ("i32", "a whole number from -2147483648 to 2147483647"),
        ("i64", "a whole number"),
        ("f32", "a number"),
        ("f64", "a number"),
    ];
    let mut out = s.to_string();
    for (rust, words) in NAMES {
        for end in [" ", ",", ")", ";"] {
            out = out.replace(
                &format!("expected {rust}{end}"),
                &format!("expected {words}{end}"),
            );
        }
        if let Some(head) = out.strip_suffix(&format!("expected {rust}")) {
            out = format!("{head}expected {words}");
        }
    }
    out
}

/// Cuts every quoted piece (`…`, "…") longer than 40 characters, and the
/// whole message beyond 500.
fn shorten_quoted(s: &str) -> String {
    const PIECE: usize = 40;
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut piece = String::new();
    for c in s.chars() {
        match quote {
            None if c == '`' || c == '"' => {
                quote = Some(c);
                out.push(c);
                piece.clear();
            }
            None => out.push(c),
            Some(q) if c == q => {
                let n = piece.chars().count();
                if n > PIECE {
                    out.extend(piece.chars().take(PIECE));
                    out.push_str(&format!("… ({n} characters)"));
                } else {
                    out.push_str(&piece);
                }
                out.push(c);
                quote = None;
            }
            Some(_) => piece.push(c),
        }
    }
    if quote.is_some() {
        out.extend(piece.chars().take(PIECE));
    }
    if out.chars().count() > 500 {
        out = out.chars().take(500).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_named_by_its_message_is_not_named_twice() {
        assert_eq!(
            tidy_serde_message(
                "status: status 'lunch' is not one of available, busy, away, offline at line 1 column 18"
            ),
            "status 'lunch' is not one of available, busy, away, offline at line 1 column 18"
        );
        assert_eq!(
            tidy_serde_message("settings.rona_timeout_secs: rona_timeout_secs must be a number"),
            "settings.rona_timeout_secs must be a number"
        );
        // A message that does not start with the field keeps the path.
        assert_eq!(
            tidy_serde_message("status: invalid type: integer `1`, expected a string"),
            "status: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            tidy_serde_message("tag: tags are limited"),
            "tag: tags are limited"
        );
    }

    #[test]
    fn number_types_are_said_in_words() {
        assert_eq!(
            tidy_serde_message(
                "capacity.email: invalid value: integer `-1`, expected u32 at line 1 column 20"
            ),
            "capacity.email: invalid value: integer `-1`, expected a whole number from 0 to 4294967295 at line 1 column 20"
        );
        assert_eq!(
            tidy_serde_message("priority: invalid type: string \"high\", expected i32"),
            "priority: invalid type: string \"high\", expected a whole number from -2147483648 to 2147483647"
        );
    }

    #[test]
    fn serde_errors_are_said_without_rust_types_or_long_input() {
        let m = tidy_serde_message(
            "Failed to deserialize the JSON body into the target type: codes: invalid type: sequence, expected struct WrapUpCodes at line 1 column 10",
        );
        assert_eq!(
            m,
            "codes: invalid type: a list, expected an object at line 1 column 10"
        );
        let long = "y".repeat(60_000);
        let m = tidy_serde_message(&format!(
            "kind: unknown variant `{long}`, expected one of `reply`, `forward`"
        ));
        assert!(m.len() < 200, "{m}");
        assert!(
            m.contains("(60000 characters)") && m.contains("`reply`"),
            "{m}"
        );
    }
}
