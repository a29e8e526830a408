//! Identifiers: validated slugs for configured entities, random ids for records.
use super::DomainError;
use rand::Rng;

/// A new random record id with a short prefix saying what it is (`tsk_…`, `ses_…`).
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 12] = rand::rng().random();
    format!("{prefix}_{}", hex::encode(bytes))
}

/// Checks an id chosen by an operator (service, agent, code, contact):
/// 1–64 characters of `a-z A-Z 0-9 . _ - @`, so it is safe in URLs, logs and labels.
pub fn validate_slug(what: &str, value: &str) -> Result<(), DomainError> {
    if value.is_empty() || value.len() > 64 {
        return Err(DomainError::Invalid(format!(
            "{what} must be 1 to 64 characters long"
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(DomainError::Invalid(format!(
            "{what} '{value}' contains '{bad}': use letters, digits, '.', '_', '-' or '@'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_prefixed_and_unique() {
        let a = new_id("tsk");
        let b = new_id("tsk");
        assert!(a.starts_with("tsk_"));
        assert_eq!(a.len(), 4 + 24);
        assert_ne!(a, b);
    }

    #[test]
    fn slugs_are_checked() {
        assert!(validate_slug("service id", "support-1").is_ok());
        assert!(validate_slug("service id", "").is_err());
        let err = validate_slug("service id", "a b").unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
        assert!(validate_slug("service id", &"x".repeat(65)).is_err());
    }
}
