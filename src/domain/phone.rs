//! Phone numbers: the one form every number is stored and compared in.
//!
//! A number is normalised to E.164 (`+` and 6 to 15 digits) whenever its
//! country is known: written with `+` or `00`, or with 11 or more digits and
//! no prefix (E.164 without the `+`, as telephony systems often send it).
//! A national number (a leading trunk `0`, or fewer than 11 digits without
//! a prefix) gets the configured default calling code (`0` dropped); without
//! one it is kept as its digits, as written, and only matches the same
//! national digits. So `+41 44 000 00 00`, `0041440000000`, `+41440000000`
//! and, with calling code 41, `044 000 00 00` are one number.

/// Why a phone number was refused (the value itself is never echoed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("is empty")]
    Empty,
    #[error("contains '{0}': use digits, spaces, '+', '-', '.', '/' and parentheses")]
    BadCharacter(char),
    #[error("has {0} digits: a phone number has 6 to 15")]
    Length(usize),
    #[error("has a '+' that is not at the start")]
    MisplacedPlus,
}

/// The longest phone number text accepted before normalising.
pub const MAX_PHONE_INPUT: usize = 40;

/// A default calling code is 1 to 3 digits, not starting with 0.
pub fn check_calling_code(code: u16) -> Result<(), String> {
    if (1..=999).contains(&code) {
        Ok(())
    } else {
        Err(format!(
            "{code} is not a calling code: use 1 to 999 (41 for Switzerland, 1 for North America)"
        ))
    }
}

/// The stored form of `raw` (see the module documentation): E.164 where the
/// country is known, else the national digits as written.
pub fn normalize_phone(raw: &str, default_calling_code: Option<u16>) -> Result<String, PhoneError> {
    let text = raw.trim();
    let text = text
        .strip_prefix("tel:")
        .or_else(|| text.strip_prefix("TEL:"))
        .unwrap_or(text);
    if text.is_empty() {
        return Err(PhoneError::Empty);
    }
    if text.chars().count() > MAX_PHONE_INPUT {
        return Err(PhoneError::Length(
            text.chars().filter(char::is_ascii_digit).count(),
        ));
    }
    let text = without_written_trunk(text);
    let text = text.as_ref();
    let mut digits = String::with_capacity(text.len());
    let mut plus = false;
    for (i, c) in text.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => plus = true,
            '+' => return Err(PhoneError::MisplacedPlus),
            ' ' | '-' | '.' | '/' | '(' | ')' | '\u{a0}' => {}
            other => return Err(PhoneError::BadCharacter(other)),
        }
    }
    let international = if plus {
        Some(digits.as_str())
    } else if let Some(rest) = digits.strip_prefix("00") {
        Some(rest)
    } else if digits.starts_with('0') {
        None
    } else if digits.len() >= 11 {
        Some(digits.as_str())
    } else {
        None
    };
    let e164 = match (international, default_calling_code) {
        (Some(d), _) => format!("+{d}"),
        (None, Some(cc)) => {
            let e164 = format!("+{cc}{}", digits.strip_prefix('0').unwrap_or(&digits));
            // Too short: the digits as written are told (the code is not
            // theirs); too long, the number's with the code.
            return match check_length(&e164[1..]) {
                Ok(()) => Ok(e164),
                Err(_) if e164.len() - 1 < 6 => Err(PhoneError::Length(digits.len())),
                Err(e) => Err(e),
            };
        }
        (None, None) => {
            check_length(&digits)?;
            return Ok(digits);
        }
    };
    check_length(&e164[1..])?;
    Ok(e164)
}

/// An international number printed with its trunk `0` in parentheses after
/// the country code (`+44 (0)20 7946 0958`, `0041 (0)44 …`), as address books
/// often have it, without it: dialled from abroad the `0` is left out.
fn without_written_trunk(text: &str) -> std::borrow::Cow<'_, str> {
    let international = text.starts_with('+') || text.starts_with("00");
    match text.find("(0)") {
        Some(at) if international => {
            std::borrow::Cow::Owned(format!("{}{}", &text[..at], &text[at + 3..]))
        }
        _ => std::borrow::Cow::Borrowed(text),
    }
}

fn check_length(digits: &str) -> Result<(), PhoneError> {
    if (6..=15).contains(&digits.len()) {
        Ok(())
    } else {
        Err(PhoneError::Length(digits.len()))
    }
}

/// Whether `s` is written like a phone number (for an address of unknown kind).
pub fn looks_like_phone(s: &str) -> bool {
    let t = s.trim();
    let t = t.strip_prefix("tel:").unwrap_or(t);
    let digits = t.chars().filter(char::is_ascii_digit).count();
    digits >= 6
        && t.chars().enumerate().all(|(i, c)| {
            c.is_ascii_digit()
                || matches!(c, ' ' | '-' | '.' | '/' | '(' | ')')
                || (c == '+' && i == 0)
        })
}

/// A search typed like a phone number, or a piece of one (`+41 44 123`,
/// `044 123 45`, `(555) 010`), as the digits it stands for, so that it finds
/// a number stored in another spelling (telephony's `+41441231234` or
/// `41441231234`): separators and `+` dropped, `00` dropped, a leading trunk
/// `0` replaced by the default calling code (when one is configured). `None`
/// when `q` is not written like a number (at least 3 digits; only digits,
/// the separators a number is written with and a leading `+`), or when it is
/// those digits already.
pub fn phone_search_form(q: &str, default_calling_code: Option<u16>) -> Option<String> {
    let trimmed = q.trim();
    let t = without_written_trunk(trimmed);
    let t = t.as_ref();
    let mut digits = String::with_capacity(t.len());
    for (i, c) in t.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => {}
            ' ' | '-' | '.' | '/' | '(' | ')' | '\u{a0}' => {}
            _ => return None,
        }
    }
    if digits.len() < 3 {
        return None;
    }
    let form = if t.starts_with('+') {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_string()
    } else if let (Some(rest), Some(cc)) = (digits.strip_prefix('0'), default_calling_code) {
        format!("{cc}{rest}")
    } else {
        digits
    };
    (form != trimmed && !form.is_empty()).then_some(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trunk_zero_in_parentheses_is_left_out_of_an_international_number() {
        assert_eq!(
            normalize_phone("+44 (0)20 7946 0958", None).as_deref(),
            Ok("+442079460958")
        );
        assert_eq!(
            normalize_phone("0041 (0)44 777 88 99", None).as_deref(),
            Ok("+41447778899")
        );
        // A national number's parentheses are an area code's.
        assert_eq!(
            normalize_phone("(0)44 777 88 99", Some(41)).as_deref(),
            Ok("+41447778899")
        );
        assert_eq!(
            phone_search_form("+41 (0)44 777", None).as_deref(),
            Some("4144777")
        );
    }

    #[test]
    fn a_short_national_number_is_told_its_own_digits() {
        assert_eq!(normalize_phone("123", Some(41)), Err(PhoneError::Length(3)));
        assert_eq!(
            normalize_phone("012345678901234", Some(41)),
            Err(PhoneError::Length(16))
        );
    }

    #[test]
    fn a_search_typed_like_a_number_is_put_in_the_stored_form() {
        for (q, cc, form) in [
            ("+41 44 123", None, Some("4144123")),
            ("+4144123", None, Some("4144123")),
            ("0041 44-123", None, Some("4144123")),
            ("044 123 45", Some(41), Some("414412345")),
            ("044 123 45", None, Some("04412345")),
            ("(555) 010-0200", None, Some("5550100200")),
            (" 44.111.22 ", None, Some("4411122")),
            // Its digits already, too short, or not a number: no other form.
            ("4144123", None, None),
            ("2024", Some(41), None),
            ("12", None, None),
            ("+ 1", None, None),
            ("00", None, None),
            ("order 4411", None, None),
            ("44+11", None, None),
            ("", None, None),
        ] {
            assert_eq!(phone_search_form(q, cc).as_deref(), form, "{q:?}");
        }
    }

    #[test]
    fn the_issues_three_spellings_are_one_number() {
        for raw in ["+41 44 000 00 00", "0041440000000", "+41440000000"] {
            assert_eq!(
                normalize_phone(raw, None).as_deref(),
                Ok("+41440000000"),
                "{raw}"
            );
        }
        assert_eq!(
            normalize_phone("tel:+41-44-000-00-00", None).as_deref(),
            Ok("+41440000000")
        );
        assert_eq!(
            normalize_phone("+1 (555) 010-0200", None).as_deref(),
            Ok("+15550100200")
        );
    }

    #[test]
    fn national_numbers_take_the_default_calling_code() {
        assert_eq!(
            normalize_phone("044 000 00 00", Some(41)).as_deref(),
            Ok("+41440000000")
        );
        assert_eq!(
            normalize_phone("(555) 010-0200", Some(1)).as_deref(),
            Ok("+15550100200")
        );
        // Without one they stay as written, digits only.
        assert_eq!(
            normalize_phone("044 000 00 00", None).as_deref(),
            Ok("0440000000")
        );
        // Eleven digits or more without a prefix are E.164 without the '+'.
        assert_eq!(
            normalize_phone("41440000000", Some(1)).as_deref(),
            Ok("+41440000000")
        );
    }

    #[test]
    fn junk_is_refused_without_echoing_it() {
        assert_eq!(normalize_phone("  ", None), Err(PhoneError::Empty));
        assert_eq!(
            normalize_phone("+41 44 abc", None),
            Err(PhoneError::BadCharacter('a'))
        );
        assert_eq!(
            normalize_phone("41+44", None),
            Err(PhoneError::MisplacedPlus)
        );
        assert_eq!(normalize_phone("+123", None), Err(PhoneError::Length(3)));
        assert_eq!(
            normalize_phone("+1234567890123456", None),
            Err(PhoneError::Length(16))
        );
        assert!(normalize_phone(&"1".repeat(41), None).is_err());
        assert!(check_calling_code(0).is_err());
        assert!(check_calling_code(41).is_ok());
    }

    #[test]
    fn phone_like_addresses_are_told_from_others() {
        assert!(looks_like_phone("+41 44 000 00 00"));
        assert!(looks_like_phone("tel:0441234567"));
        assert!(!looks_like_phone("alice@example.com"));
        assert!(!looks_like_phone("chat:12345678"));
        assert!(!looks_like_phone("12345"));
    }
}
