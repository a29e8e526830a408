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
            StoreError::Stale { code, message } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, code, message)
            }
            StoreError::Invalid(d) => d.into(),
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
        // A last guard: no answer echoes a huge piece of its input.
        let message = if self.message.chars().count() > MAX_MESSAGE_CHARS {
            self.message
                .chars()
                .take(MAX_MESSAGE_CHARS)
                .collect::<String>()
                + "…"
        } else {
            self.message
        };
        let body = super::doc::ErrorBody {
            error: super::doc::ErrorDetail {
                code: self.code,
                message: &message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A piece of the caller's input as an error message may quote it: at most
/// 40 characters, control and text-direction characters written as escapes
/// (`\u{202e}`), so a message cannot be disguised or broken by what it quotes.
pub fn shown(value: &str) -> String {
    const MAX: usize = 40;
    let n = value.chars().count();
    let visible = |s: &mut dyn Iterator<Item = char>| -> String {
        s.map(|c| {
            if c.is_control() || crate::domain::text::is_direction_control(c) {
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

/// The answer for a body field that names a service that does not exist:
/// 422, the same for every endpoint (the request is well formed, but what it
/// names is not there).
pub fn unknown_service(field: &str, id: &str) -> ApiError {
    ApiError::invalid(format!("{field}: unknown service '{}'", shown(id)))
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn quoted_input_cannot_disguise_a_message() {
        assert_eq!(shown("tsk_1\u{202e}fdp.exe"), "tsk_1\\u{202e}fdp.exe");
        assert_eq!(shown("a\0b\nc"), "a\\u{0}b\\u{a}c");
        let long = "x".repeat(50);
        assert_eq!(shown(&long), format!("{}… (50 characters)", "x".repeat(40)));
    }
}
