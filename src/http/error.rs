//! The one error shape of the HTTP API: `{"error": {"code": "...", "message": "..."}}`.
use crate::domain::DomainError;
use crate::store::StoreError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The longest error message sent (longer ones are cut).
pub const MAX_MESSAGE_CHARS: usize = 1000;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400: the request cannot be read as asked (its JSON, its body's shape,
    /// a query parameter, a path segment or a header).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// 422: the body was read, but a field's value breaks a rule (too long,
    /// too many, not an address, unknown); the message names the field and
    /// the limit.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::InvalidTransition { .. } => ApiError::conflict(e.to_string()),
            DomainError::Invalid(m) => ApiError::invalid(m),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Forbidden(m) => ApiError::forbidden(m),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Closed { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            StoreError::ExpiredOnAnswer(message) => {
                ApiError::new(StatusCode::CONFLICT, "offer_expired", message)
            }
            StoreError::Stale { code, message } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, code, message)
            }
            StoreError::Invalid(d) => d.into(),
            StoreError::Database(e) if database_unreachable(&e) => {
                tracing::warn!(error = %e, "the database does not answer");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database does not answer just now, so the request may not have been completed: check, then try again in a few seconds",
                )
            }
            other => {
                // The detail goes to the log, not to the client.
                tracing::error!(error = %other, "storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the server could not complete the request; it has been logged",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A last guard: no answer echoes a long piece of its input, however
        // the message was made (a path id, a serde message quoting a value).
        let message = clip_long_words(&self.message);
        let message = if message.chars().count() > MAX_MESSAGE_CHARS {
            message.chars().take(MAX_MESSAGE_CHARS).collect::<String>() + "…"
        } else {
            message
        };
        let body = super::doc::ErrorBody {
            error: super::doc::ErrorDetail {
                code: self.code,
                message: &message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The database could not be reached (down, restarting, no connection to be
/// had in time): the request did nothing and may be tried again.
fn database_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        // admin_shutdown, crash_shutdown, cannot_connect_now
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub use crate::domain::text::shown;

/// `message` with each run of more than 40 characters without a space (an
/// id, a value quoted whole) cut to 40, as [`shown`] cuts: no message is
/// the channel for a long piece of the caller's input. Left as they are: a
/// run [`shown`] already cut (it ends in `…`, its escapes counted), and a
/// field's name ahead of its colon (`parameters.loyalty_member_id:`), which
/// the caller must see whole to find the field.
fn clip_long_words(message: &str) -> String {
    const MAX: usize = 40;
    let mut out = String::with_capacity(message.len().min(4096));
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        // The word without the quotes and punctuation around it: what is
        // counted and cut; they are kept in place.
        let rest = word.trim_start_matches(['\'', '"', '`', '(']);
        let lead = &word[..word.len() - rest.len()];
        let bare = rest.trim_end_matches(['\'', '"', '`', ',', ')', '.', ':']);
        let tail = &rest[bare.len()..];
        // A few marks around a word; a run of them is the word itself.
        let (lead, bare, tail) = if lead.len() <= 2 && tail.len() <= 3 {
            (lead, bare, tail)
        } else {
            ("", word.as_str(), "")
        };
        let n = bare.chars().count();
        // 40 characters, each at most a 10-character escape, and quotes.
        let cut_already = n <= MAX * 10 + 8 && bare.ends_with('…');
        let field = word.chars().count() <= 200
            && word.ends_with(':')
            && word[..word.len() - 1]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'));
        if n > MAX && !cut_already && !field {
            out.push_str(lead);
            out.extend(bare.chars().take(MAX));
            out.push('…');
            out.push_str(tail);
            out.push_str(&format!(" ({n} characters)"));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in message.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The answer for a body field that names a service that does not exist:
/// 422, the same for every endpoint (the request is well formed, but what it
/// names is not there).
pub fn unknown_service(field: &str, id: &str) -> ApiError {
    ApiError::invalid(format!("{field}: unknown service '{}'", shown(id)))
}

#[cfg(test)]
mod tests {
    use super::{clip_long_words, shown};

    #[test]
    fn quoted_input_cannot_disguise_a_message() {
        assert_eq!(shown("tsk_1\u{202e}fdp.exe"), "tsk_1\\u{202e}fdp.exe");
        assert_eq!(shown("a\0b\nc"), "a\\u{0}b\\u{a}c");
        let long = "x".repeat(50);
        assert_eq!(shown(&long), format!("{}… (50 characters)", "x".repeat(40)));
    }

    #[test]
    fn no_message_echoes_a_long_run_of_input() {
        let id = "t".repeat(200);
        assert_eq!(
            clip_long_words(&format!("task '{id}' not found")),
            format!("task '{}…' (200 characters) not found", "t".repeat(40))
        );
        // What shown() cut is left as it is; short words and spaces too.
        let cut = format!("tags: '{}' is too long", shown(&"x".repeat(70)));
        assert_eq!(clip_long_words(&cut), cut);
        assert_eq!(clip_long_words("a  b\tc"), "a  b\tc");
        // An input that ends in an ellipsis of its own is cut all the same.
        let sly = format!("{}…", "z".repeat(1000));
        assert!(
            clip_long_words(&sly).starts_with(&format!("{}… (1001 characters)", "z".repeat(40))),
            "{}",
            clip_long_words(&sly)
        );
        // shown()'s escapes are not cut again; a field's name stays whole.
        let escaped = format!("q: '{}' is refused", shown(&"\u{202e}".repeat(60)));
        assert_eq!(clip_long_words(&escaped), escaped);
        let field = "parameters.customer_loyalty_program_member_id: at most 500 characters";
        assert_eq!(clip_long_words(field), field);
        // A run of punctuation is cut like any word.
        let dots = format!("task '{}' not found", ".".repeat(200));
        assert!(
            clip_long_words(&dots).len() < 100,
            "{}",
            clip_long_words(&dots)
        );
    }
}
