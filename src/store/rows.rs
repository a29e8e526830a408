//! Reading columns the same way from both backends' rows.
use super::{StoreError, StoreResult};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use std::borrow::Cow;

pub(crate) trait RowExt {
    fn text(&self, col: &str) -> StoreResult<String>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn int(&self, col: &str) -> StoreResult<i64>;
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn flag(&self, col: &str) -> StoreResult<bool>;
    fn opt_bytes(&self, col: &str) -> StoreResult<Option<Vec<u8>>>;

    /// A JSON column decoded into `T`.
    fn json<T: serde::de::DeserializeOwned>(&self, col: &str) -> StoreResult<T> {
        let text = self.text(col)?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column {col}: {e}")))
    }

    // By position, borrowing text from the row: no lookup of the column by
    // name and no allocation for text that is parsed right away.
    fn str_at(&self, i: usize) -> StoreResult<&str>;
    fn opt_str_at(&self, i: usize) -> StoreResult<Option<&str>>;
    fn int_at(&self, i: usize) -> StoreResult<i64>;
    fn opt_int_at(&self, i: usize) -> StoreResult<Option<i64>>;
}

/// Reads a row's columns in the order they were selected: adding a column to
/// a query means adding one read at the same place.
pub(crate) struct Columns<'r, R> {
    row: &'r R,
    next: usize,
}

impl<'r, R: RowExt> Columns<'r, R> {
    pub(crate) fn new(row: &'r R) -> Self {
        Columns { row, next: 0 }
    }

    fn advance(&mut self) -> usize {
        self.next += 1;
        self.next - 1
    }

    pub(crate) fn str(&mut self) -> StoreResult<&'r str> {
        let i = self.advance();
        self.row.str_at(i)
    }

    pub(crate) fn text(&mut self) -> StoreResult<String> {
        self.str().map(str::to_owned)
    }

    pub(crate) fn opt_text(&mut self) -> StoreResult<Option<String>> {
        let i = self.advance();
        Ok(self.row.opt_str_at(i)?.map(str::to_owned))
    }

    pub(crate) fn opt_str(&mut self) -> StoreResult<Option<&'r str>> {
        let i = self.advance();
        self.row.opt_str_at(i)
    }

    pub(crate) fn int(&mut self) -> StoreResult<i64> {
        let i = self.advance();
        self.row.int_at(i)
    }

    pub(crate) fn opt_int(&mut self) -> StoreResult<Option<i64>> {
        let i = self.advance();
        self.row.opt_int_at(i)
    }

    /// A JSON array of strings (`[]`, the common case, without the parser).
    pub(crate) fn string_list(&mut self) -> StoreResult<Vec<String>> {
        let i = self.next;
        let text = self.str()?;
        if text == "[]" {
            return Ok(Vec::new());
        }
        serde_json::from_str(text)
            .map_err(|e| StoreError::Corrupt(format!("column {} of the row: {e}", i + 1)))
    }
}

macro_rules! impl_row_ext {
    ($row:ty) => {
        impl RowExt for $row {
            fn text(&self, col: &str) -> StoreResult<String> {
                Ok(self.try_get::<String, _>(col)?)
            }
            fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
                Ok(self.try_get::<Option<String>, _>(col)?)
            }
            fn int(&self, col: &str) -> StoreResult<i64> {
                Ok(self.try_get::<i64, _>(col)?)
            }
            fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
                Ok(self.try_get::<Option<i64>, _>(col)?)
            }
            fn flag(&self, col: &str) -> StoreResult<bool> {
                Ok(self.try_get::<bool, _>(col)?)
            }
            fn opt_bytes(&self, col: &str) -> StoreResult<Option<Vec<u8>>> {
                Ok(self.try_get::<Option<Vec<u8>>, _>(col)?)
            }
            // By position, for the hot readers of rows whose columns their
            // own query names: the value is still decoded (on PostgreSQL,
            // text checked as UTF-8 and NULL refused where none is
            // expected; SQLite converts as it always did), without sqlx's
            // per-value lookup of the column's type for compatibility.
            fn str_at(&self, i: usize) -> StoreResult<&str> {
                Ok(self.try_get_unchecked::<&str, _>(i)?)
            }
            fn opt_str_at(&self, i: usize) -> StoreResult<Option<&str>> {
                Ok(self.try_get_unchecked::<Option<&str>, _>(i)?)
            }
            fn int_at(&self, i: usize) -> StoreResult<i64> {
                Ok(self.try_get_unchecked::<i64, _>(i)?)
            }
            fn opt_int_at(&self, i: usize) -> StoreResult<Option<i64>> {
                Ok(self.try_get_unchecked::<Option<i64>, _>(i)?)
            }
        }
    };
}

impl_row_ext!(PgRow);
impl_row_ext!(SqliteRow);

/// A bind argument for dynamically built queries.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

/// Binds `args` in order to a query, for either backend.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match arg {
                $crate::store::rows::Arg::Text(s) => q.bind(s.clone()),
                $crate::store::rows::Arg::Int(i) => q.bind(*i),
            };
        }
        q
    }};
}
pub(crate) use bind_all;

/// `rows` copies of `row` (a tuple whose `?` are parameters) with the
/// parameters numbered `$1, $2, …` in order, comma-separated.
pub(crate) fn value_rows(row: &str, rows: usize) -> String {
    let mut out = String::with_capacity((row.len() + 40) * rows);
    let mut n = 0;
    for i in 0..rows {
        if i > 0 {
            out.push_str(", ");
        }
        for c in row.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// Builds `$1, $2, …` for `n` values starting at `$first`.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A case-insensitive "contains `needle`" on SQLite: a regular expression
/// for `column REGEXP $n` (sqlx's `regexp` function, the `regex` crate),
/// matching the needle literally with Unicode case folding. SQLite's own
/// `lower()` and `LIKE` fold ASCII letters only, so `lower(name) LIKE
/// '%élodie%'` never finds "Élodie".
pub(crate) fn contains_regex(needle: &str) -> String {
    let mut out = String::with_capacity(needle.len() + 8);
    out.push_str("(?i)");
    for c in needle.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern, lower-cased.
///
/// The Greek sigma has two lower cases: Rust writes a final `Σ` as `ς`,
/// PostgreSQL's `lower()` (which made the stored text) always as `σ`, and a
/// name typed in lower case keeps its `ς`. Only a word's last letter can
/// differ so: there, in a needle of three characters or more, either is
/// matched by `_` (one character), so `ΣΊΣΥΦΟΣ`, `σίσυφος` and `σίσυφοσ`
/// find each other.
pub(crate) fn like_pattern(needle: &str) -> String {
    let lower: Vec<char> = needle.to_lowercase().chars().collect();
    let sigma_wild = lower.len() >= 3;
    let mut out = String::with_capacity(needle.len() + 2);
    out.push('%');
    for (i, &c) in lower.iter().enumerate() {
        let word_end = lower.get(i + 1).is_none_or(|n| !n.is_alphabetic());
        if sigma_wild && word_end && matches!(c, 'σ' | 'ς') {
            out.push('_');
            continue;
        }
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Text as both backends store it: NUL characters, which PostgreSQL refuses
/// in text, removed (SQLite would keep them); borrowed when there are none.
pub(crate) fn storable(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', ""))
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn value_rows_number_the_parameters_in_order() {
        assert_eq!(
            super::value_rows("(?, 'x', ?)", 2),
            "($1, 'x', $2), ($3, 'x', $4)"
        );
        assert_eq!(super::value_rows("(?)", 1), "($1)");
    }

    #[test]
    fn contains_regexes_match_the_needle_literally() {
        assert_eq!(super::contains_regex("a.b*(c)"), "(?i)a\\.b\\*\\(c\\)");
        assert_eq!(super::contains_regex("Élodie"), "(?i)Élodie");
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(super::like_pattern("50%_A\\"), "%50\\%\\_a\\\\%");
        // Either lower case of a sigma, whichever wrote the stored text.
        assert_eq!(super::like_pattern("ΣΊΣΥΦΟΣ"), "%σίσυφο_%");
        assert_eq!(super::like_pattern("σίσυφος"), "%σίσυφο_%");
        assert_eq!(super::like_pattern("Σίσυφος Ωμ"), "%σίσυφο_ ωμ%");
        // Short needles and a sigma inside a word stay as they are.
        assert_eq!(super::like_pattern("ος"), "%ος%");
        assert_eq!(super::like_pattern("σα"), "%σα%");
    }
}
