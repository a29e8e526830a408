//! Extractors whose rejections use the API's error shape.
use super::error::ApiError;
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
                // Every `limit` of the API is a page's size (see
                // `domain::cursor::page_limit`): its range said as for 0.
                // (The pages' fragments, under /ui/ and not nested, have
                // limits of their own.)
                let api = !(parts.uri.path().starts_with("/ui/") || parts.uri.path() == "/");
                let range = if api && why.starts_with("limit: ") {
                    "; use 1 to 200"
                } else {
                    ""
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
    fn limits_are_said_in_their_unit() {
        assert_eq!(size_words(20 * 1024 * 1024), "20 MiB");
        assert_eq!(size_words(64 * 1024), "64 KiB");
        assert_eq!(size_words(1000), "1000 bytes");
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
