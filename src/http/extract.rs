//! Extractors whose rejections use the API's error shape.
use super::error::ApiError;
use crate::domain::serde_words::tidy_serde_message;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// The largest JSON body (axum's default body limit, which applies here).
pub const MAX_JSON_BYTES: usize = 2 * 1024 * 1024;
/// The longest value of a path parameter (ids are far shorter).
pub const MAX_ID_CHARS: usize = 200;
/// The longest query string.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;

/// A JSON object body; a malformed one gets a 400 (or 415/413) that says
/// what is wrong in the API's words, names the field and never echoes more
/// than a short piece of the input.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read_json(req, state, b'{', "a JSON object ({...})")
            .await
            .map(Body)
    }
}

/// A JSON object body that may be left out (no body at all): then `T`'s
/// default. A body that is there gets the checks of [`Body`].
pub struct OptionalBody<T>(pub T);

impl<S, T> FromRequest<S> for OptionalBody<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let headers = req.headers();
        let length = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok());
        let none = match length {
            Some(n) => n.trim() == "0",
            None => !headers.contains_key(axum::http::header::TRANSFER_ENCODING),
        };
        if none {
            return Ok(OptionalBody(T::default()));
        }
        if headers.contains_key(axum::http::header::CONTENT_TYPE) {
            return read_json(req, state, b'{', "a JSON object ({...})")
                .await
                .map(OptionalBody);
        }
        // Chunked without a type: nothing in it is nothing given.
        if read_body(req, state).await?.is_empty() {
            Ok(OptionalBody(T::default()))
        } else {
            Err(not_json())
        }
    }
}

/// A body not sent as JSON.
fn not_json() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request",
        "send the body as JSON with Content-Type: application/json",
    )
}

/// The request's body, at most [`MAX_JSON_BYTES`].
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    refuse_announced_length(&req, MAX_JSON_BYTES, "the request body")?;
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|r| body_rejection(r, MAX_JSON_BYTES, "the request body"))
}

/// A JSON array body (`[...]`), with the same checks as [`Body`].
pub struct ListBody<T>(pub T);

impl<S, T> FromRequest<S> for ListBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read_json(req, state, b'[', "a JSON array ([...])")
            .await
            .map(ListBody)
    }
}

async fn read_json<S, T>(req: Request, state: &S, opening: u8, shape: &str) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    let json_type = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| {
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        });
    if !json_type {
        return Err(not_json());
    }
    let bytes = read_body(req, state).await?;
    // The body's shape is checked first: `[]` is not an empty object.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b) if *b == opening => {}
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "the request body must be {shape}"
            )));
        }
        None => {
            return Err(ApiError::bad_request(format!(
                "the request body is empty: send {shape}"
            )));
        }
    }
    match axum::Json::<T>::from_bytes(&bytes) {
        Ok(axum::Json(v)) => Ok(v),
        Err(rejection) => Err(json_rejection(rejection)),
    }
}

/// A body whose `Content-Length` is over `limit` is refused before any of
/// it is read.
fn refuse_announced_length(req: &Request, limit: usize, what: &str) -> Result<(), ApiError> {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit, what));
    }
    Ok(())
}

fn too_large(limit: usize, what: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("{what} is over the limit of {}", size_words(limit)),
    )
}

/// A limit in bytes as people say it: `20 MiB`, `64 KiB`, `100 bytes`.
fn size_words(limit: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if limit >= MIB && limit.is_multiple_of(MIB) {
        format!("{} MiB", limit / MIB)
    } else if limit >= KIB && limit.is_multiple_of(KIB) {
        format!("{} KiB", limit / KIB)
    } else {
        format!("{limit} bytes")
    }
}

/// A 413 that names the limit, or the rejection's status in our shape.
fn body_rejection(
    r: axum::extract::rejection::BytesRejection,
    limit: usize,
    what: &str,
) -> ApiError {
    let status = r.status();
    if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return too_large(limit, what);
    }
    ApiError::new(
        status,
        "invalid_request",
        format!("{what} could not be read"),
    )
}

/// `T` from a JSON object already read (and reshaped) by a handler, with
/// the same answers as [`Body`] for what does not fit.
pub fn from_object<T: DeserializeOwned>(
    object: serde_json::Map<String, serde_json::Value>,
) -> Result<T, ApiError> {
    let bytes = serde_json::to_vec(&object)
        .map_err(|e| ApiError::bad_request(format!("the request body cannot be read: {e}")))?;
    axum::Json::<T>::from_bytes(&bytes)
        .map(|axum::Json(v)| v)
        .map_err(|r| {
            // Positions would point into the text re-written here, not the
            // client's: left out.
            let mut e = json_rejection(r);
            if let Some(at) = e.message.rfind(" at line ")
                && e.message[at + " at line ".len()..]
                    .split(" column ")
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            {
                e.message.truncate(at);
            }
            e
        })
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let message = match &r {
        JsonRejection::JsonDataError(e) => {
            format!(
                "invalid request body: {}",
                tidy_serde_message(&e.body_text())
            )
        }
        JsonRejection::JsonSyntaxError(e) => {
            format!(
                "request body is not valid JSON: {}",
                tidy_serde_message(&e.body_text())
            )
        }
        JsonRejection::MissingJsonContentType(_) => {
            "send the body as JSON with Content-Type: application/json".to_string()
        }
        _ => "the request body could not be read".to_string(),
    };
    ApiError::new(status, "invalid_request", message)
}

/// Rust's messages for a query value that is not a number it can read
/// (`limit=-1`, `limit=1e3`, twenty digits), as a client reads them.
fn number_parse_words(s: &str) -> String {
    s.replace(
        "invalid digit found in string",
        "must be a whole number of digits only",
    )
    .replace(
        "number too large to fit in target type",
        "is too large a number",
    )
    .replace(
        "cannot parse integer from empty string",
        "must be a whole number, not empty",
    )
}

/// Query parameters; unknown or malformed ones get a 400.
pub struct Params<T>(pub T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if parts.uri.query().is_some_and(|q| q.len() > MAX_QUERY_BYTES) {
            return Err(ApiError::new(
                axum::http::StatusCode::URI_TOO_LONG,
                "invalid_request",
                format!(
                    "the query string is longer than {} KiB",
                    MAX_QUERY_BYTES / 1024
                ),
            ));
        }
        // No text we keep or search holds control characters other than
        // line breaks and tabs (a NUL is not even storable in PostgreSQL):
        // refused by name, never quoted.
        let odd = |c: char| c.is_control() && !matches!(c, '\n' | '\r' | '\t');
        if let Some(q) = parts.uri.query()
            && let Some((name, _)) = url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, v)| k.chars().any(char::is_control) || v.chars().any(odd))
        {
            let name: String = name.chars().filter(|c| !c.is_control()).take(40).collect();
            return Err(ApiError::bad_request(format!(
                "query parameter '{name}' holds a control character (such as NUL), which no value here may hold"
            )));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Params(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                let why = number_parse_words(&tidy_serde_message(
                    e.body_text()
                        .trim_start_matches("Failed to deserialize query string: "),
                ));
                // A `limit` of the API is a page's size (see
                // `domain::cursor::page_limit`), contacts' searches aside
                // (1 to 100): its range said as for 0. The pages' fragments,
                // under /ui/ and not nested, have limits of their own.
                let path = parts.uri.path();
                let range = match path {
                    _ if !why.starts_with("limit: ") => "",
                    "/" => "",
                    p if p.starts_with("/ui/") => "",
                    "/contacts" => "; use 1 to 100",
                    _ => "; use 1 to 200",
                };
                Err(ApiError::bad_request(format!(
                    "invalid query: {why}{range}"
                )))
            }
            Err(_) => Err(ApiError::bad_request("the query string could not be read")),
        }
    }
}

/// Path parameters.
pub struct Id<T>(pub T);

impl<S, T> FromRequestParts<S> for Id<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Ok(raw) = axum::extract::RawPathParams::from_request_parts(parts, state).await {
            if raw.iter().any(|(_, v)| v.chars().count() > MAX_ID_CHARS) {
                return Err(ApiError::bad_request(format!(
                    "an id in the path is longer than {MAX_ID_CHARS} characters"
                )));
            }
            // Ids are ours: none holds these, and an error must not quote them.
            if raw.iter().any(|(_, v)| {
                v.chars()
                    .any(|c| c.is_control() || crate::domain::text::is_direction_control(c))
            }) {
                return Err(ApiError::bad_request(
                    "an id in the path holds control or text-direction characters",
                ));
            }
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Id(v)),
            Err(e @ PathRejection::FailedToDeserializePathParams(_)) => {
                Err(ApiError::bad_request(tidy_serde_message(&e.body_text())))
            }
            Err(_) => Err(ApiError::bad_request("the path could not be read")),
        }
    }
}

/// A raw request body whose route allows at most `LIMIT` bytes (its
/// `DefaultBodyLimit`; an attachment upload's by default); an over-limit
/// body gets a 413 naming the limit.
pub struct RawBody<const LIMIT: usize = { super::drafts::MAX_ATTACHMENT_BYTES }>(
    pub axum::body::Bytes,
);

impl<S, const LIMIT: usize> FromRequest<S> for RawBody<LIMIT>
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        refuse_announced_length(&req, LIMIT, "the body")?;
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|r| body_rejection(r, LIMIT, "the body"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_said_in_their_unit() {
        assert_eq!(size_words(20 * 1024 * 1024), "20 MiB");
        assert_eq!(size_words(64 * 1024), "64 KiB");
        assert_eq!(size_words(1000), "1000 bytes");
    }
}
