//! Domain types and rules, free of I/O: the task state machine, user sessions,
//! wrap-up, customers, identifiers and pagination cursors.
pub mod chat;
pub mod context;
pub mod cursor;
pub mod customer;
pub mod event;
pub mod handle;
pub mod id;
pub mod ingest;
pub mod link;
pub mod phone;
pub mod routing;
pub mod serde_words;
pub mod service;
pub mod session;
pub mod task;
pub mod text;
pub mod threading;
pub mod token;
pub mod transcript;
pub mod webhook;
pub mod wrapup;

pub use customer::{CustomerKind, CustomerMatch};
pub use routing::Presence;
pub use session::{SessionResult, SessionState};
pub use task::{Modality, TaskEvent, TaskState};
pub use wrapup::{CodeKind, WrapUp};

/// A rule of the domain was broken; the message says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("a task in state '{from}' cannot {event}")]
    InvalidTransition {
        from: &'static str,
        event: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Milliseconds since the Unix epoch: the one time representation stored by both backends.
pub type Millis = i64;

/// The current time in milliseconds since the epoch.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 rendering of a stored timestamp, for the API.
pub fn millis_to_rfc3339(ms: Millis) -> String {
    match Rfc3339Millis::new(ms) {
        Some(t) => t.as_str().to_owned(),
        None => chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` on the stack, for the years 0000–9999 (the same
/// text as chrono's `to_rfc3339_opts(Millis, true)`, without its formatting
/// machinery or an allocation: list responses render four per row).
#[derive(Clone, Copy)]
pub struct Rfc3339Millis([u8; 24]);

impl Rfc3339Millis {
    /// `None` outside the years 0000–9999.
    pub fn new(ms: Millis) -> Option<Rfc3339Millis> {
        Rfc3339Millis::on(ms, &mut DayMemo::default())
    }

    /// The same, taking the date's text from `memo` when `ms` falls on the
    /// day it holds (the rows of a list mostly fall on few days), else
    /// working it out and keeping it there.
    pub fn on(ms: Millis, memo: &mut DayMemo) -> Option<Rfc3339Millis> {
        let days = ms.div_euclid(86_400_000);
        let in_day = ms.rem_euclid(86_400_000);
        let date = match memo.0 {
            Some((day, date)) if day == days => date,
            _ => {
                let date = civil_date(days)?;
                memo.0 = Some((days, date));
                date
            }
        };
        let mut b = *b"0000-00-00T00:00:00.000Z";
        b[..10].copy_from_slice(&date);
        put_digits(&mut b, 11, 2, in_day / 3_600_000);
        put_digits(&mut b, 14, 2, in_day / 60_000 % 60);
        put_digits(&mut b, 17, 2, in_day / 1000 % 60);
        put_digits(&mut b, 20, 3, in_day % 1000);
        Some(Rfc3339Millis(b))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The last day [`Rfc3339Millis::on`] rendered: its number since the epoch
/// and its `YYYY-MM-DD`.
#[derive(Default)]
pub struct DayMemo(Option<(i64, [u8; 10])>);

/// `YYYY-MM-DD` of `days` since 1970-01-01 (H. Hinnant's algorithm); `None`
/// outside the years 0000–9999.
fn civil_date(days: i64) -> Option<[u8; 10]> {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut b = *b"0000-00-00";
    put_digits(&mut b, 0, 4, year);
    put_digits(&mut b, 5, 2, month);
    put_digits(&mut b, 8, 2, day);
    Some(b)
}

/// `v`'s last `width` decimal digits into `b[at..at + width]`.
fn put_digits(b: &mut [u8], at: usize, width: usize, mut v: i64) {
    for i in (at..at + width).rev() {
        b[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Why a JSON number is not a whole number within a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotInRange {
    /// A whole number outside the range (however large).
    OutOfRange,
    /// A fraction (`2.5`).
    NotWhole,
}

/// A JSON number read as a whole number from `lo` to `hi`: a `1e20`, a
/// `-1` or a `2.5` is told apart from what an integer type holds, so that a
/// field's message can name the field's own range.
pub fn whole_in(n: &serde_json::Number, lo: i64, hi: i64) -> Result<i64, NotInRange> {
    if let Some(i) = n.as_i64() {
        return if (lo..=hi).contains(&i) {
            Ok(i)
        } else {
            Err(NotInRange::OutOfRange)
        };
    }
    if n.as_u64().is_some() {
        return Err(NotInRange::OutOfRange);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (lo as f64..=hi as f64).contains(&f) => Ok(f as i64),
        Some(f) if f.fract() == 0.0 => Err(NotInRange::OutOfRange),
        _ => Err(NotInRange::NotWhole),
    }
}

/// Field `field` of a JSON body as a whole number from `lo` to `hi`, or
/// `DomainError::Invalid` naming the field and its range.
pub fn field_in(field: &str, n: &serde_json::Number, lo: u32, hi: u32) -> Result<u32, DomainError> {
    let range = if hi == u32::MAX {
        format!("{lo} or more")
    } else {
        format!("{lo} to {hi}")
    };
    match whole_in(n, i64::from(lo), i64::from(hi)) {
        Ok(v) => u32::try_from(v).map_err(|_| {
            DomainError::Invalid(format!("{field}: {n} is out of range: use {range}"))
        }),
        Err(NotInRange::OutOfRange) => Err(DomainError::Invalid(format!(
            "{field}: {n} is out of range: use {range}"
        ))),
        Err(NotInRange::NotWhole) => Err(DomainError::Invalid(format!(
            "{field}: {n} must be a whole number, {range}"
        ))),
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut: for echoing
/// outside input in error messages without echoing all of it.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_in_json_is_told_its_field_and_range() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert_eq!(field_in("d", &n("30"), 0, 30).unwrap(), 30);
        assert_eq!(field_in("d", &n("3.0"), 0, 30).unwrap(), 3);
        assert_eq!(field_in("m", &n("7"), 1, u32::MAX).unwrap(), 7);
        for (text, lo, hi, says) in [
            ("-1", 0, 30, "d: -1 is out of range: use 0 to 30"),
            ("31", 0, 30, "d: 31 is out of range: use 0 to 30"),
            ("1e20", 0, 30, "is out of range: use 0 to 30"),
            ("18446744073709551615", 0, 30, "out of range: use 0 to 30"),
            ("2.5", 0, 30, "d: 2.5 must be a whole number, 0 to 30"),
            ("0", 1, u32::MAX, "d: 0 is out of range: use 1 or more"),
            ("4294967296", 1, u32::MAX, "use 1 or more"),
        ] {
            let e = field_in("d", &n(text), lo, hi).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    fn chrono_rfc3339(ms: Millis) -> String {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    #[test]
    fn rfc3339_matches_chrono() {
        use rand::Rng;
        let mut rng = rand::rng();
        // Edges: the epoch, before it, leap days, the ends of the supported years.
        let mut cases = vec![
            0,
            -1,
            1,
            951_782_400_000,
            951_868_799_999,
            4_107_542_400_000,
            -62_167_219_200_000,
            253_402_300_799_999,
            1_709_164_800_000,
        ];
        cases.extend(
            (0..20_000).map(|_| rng.random_range(-62_167_219_200_000..253_402_300_800_000)),
        );
        for ms in &cases {
            assert_eq!(millis_to_rfc3339(*ms), chrono_rfc3339(*ms), "{ms}");
        }
        // Through one memo: instants of the same day one after another, of
        // days next to each other, and across the epoch and the year's end.
        let mut memo = DayMemo::default();
        let mut near: Vec<i64> = cases
            .iter()
            .flat_map(|ms| {
                [
                    *ms,
                    ms + 1,
                    ms + 3_600_000,
                    ms - 86_400_000,
                    ms + 86_399_999,
                ]
            })
            .collect();
        near.extend([-1, 0, 1, -86_400_000, 1_704_067_199_999, 1_704_067_200_000]);
        for ms in near {
            let expected = chrono_rfc3339(ms);
            match Rfc3339Millis::on(ms, &mut memo) {
                Some(t) => assert_eq!(t.as_str(), expected, "{ms}"),
                None => assert!(!(-62_167_219_200_000..253_402_300_800_000).contains(&ms)),
            }
        }
        // Outside 0000–9999 chrono's rendering is used.
        for ms in [-62_167_219_200_001, 253_402_300_800_000, i64::MIN / 2] {
            assert!(Rfc3339Millis::new(ms).is_none());
            assert_eq!(millis_to_rfc3339(ms), chrono_rfc3339(ms));
        }
    }
}
