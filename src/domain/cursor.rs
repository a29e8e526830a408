//! Opaque pagination cursors: the position after the last row of a page.
use super::{DomainError, Millis};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Keyset position in a list ordered newest first by `(created_at, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: Millis,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at, self.id))
    }

    pub fn decode(s: &str) -> Result<Cursor, DomainError> {
        let bad = || DomainError::Invalid("cursor is not one this server gave out".into());
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (at, id) = text.split_once(':').ok_or_else(bad)?;
        let created_at = at.parse().map_err(|_| bad())?;
        if id.is_empty() || id.len() > 64 {
            return Err(bad());
        }
        Ok(Cursor {
            created_at,
            id: id.to_string(),
        })
    }
}

/// Page size: default 50, at most 200.
pub fn page_limit(requested: Option<u32>) -> Result<u32, DomainError> {
    match requested {
        None => Ok(50),
        Some(n) if (1..=200).contains(&n) => Ok(n),
        Some(n) => Err(DomainError::Invalid(format!(
            "limit {n} is out of range: use 1 to 200"
        ))),
    }
}

/// Cuts `rows`, read one past the page (`limit + 1`), to the page; whether
/// there is a next page (so a page that ends exactly at the last row offers
/// none).
pub fn cut_to_page<T>(rows: &mut Vec<T>, limit: u32) -> bool {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    more
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_page_read_one_past_tells_whether_more_follow() {
        let mut rows = vec![1, 2, 3];
        assert!(super::cut_to_page(&mut rows, 2));
        assert_eq!(rows, [1, 2]);
        let mut rows = vec![1, 2];
        assert!(!super::cut_to_page(&mut rows, 2));
        assert_eq!(rows, [1, 2]);
    }

    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            created_at: 1_700_000_000_000,
            id: "ses_abc".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("!!!").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("nocolon")).is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("x:id")).is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(page_limit(None).unwrap(), 50);
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(201)).is_err());
    }
}
