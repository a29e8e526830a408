//! The internal directory (tenant users) and the external address book
//! (contacts): upsert one, import many (JSON or CSV), and the contact search
//! ("GetContacts").
use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Id, Params, RawBody};
use super::principal::Principal;
use crate::domain::customer::{CustomerIdentity, MAX_NAME, looks_like_email};
use crate::domain::id::validate_slug;
use crate::domain::phone::{looks_like_phone, normalize_phone};
use crate::http::doc;
use crate::store::{Contact, DirectoryUser};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Rows one import may carry.
pub const MAX_IMPORT_ROWS: usize = 10_000;
/// The largest import body.
pub const MAX_IMPORT_BYTES: usize = 8 * 1024 * 1024;

/// A tenant user of the internal directory. Phone numbers are stored in
/// E.164.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryUserInput {
    /// Only in imports (the path names it otherwise).
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub upn: Option<String>,
    pub department: Option<String>,
}

/// An entry of the address book.
/// An entry of the external address book. Phone numbers are stored in
/// E.164.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub email: Option<String>,
    /// At least 5 digits.
    pub phone: Option<String>,
    pub company: Option<String>,
    pub postal_address: Option<String>,
}

/// How many rows an import stored (each names a different id).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportResult {
    pub imported: usize,
}

fn text(
    at: &str,
    field: &str,
    value: &Option<String>,
    max: usize,
) -> Result<Option<String>, String> {
    match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if v.chars().count() > max => {
            Err(format!("{at}{field}: is longer than {max} characters"))
        }
        Some(v) if v.chars().any(char::is_control) => {
            Err(format!("{at}{field}: contains control characters"))
        }
        Some(v) => Ok(Some(v.to_string())),
    }
}

/// A field checked as a task's customer has it checked (the same rules, so
/// what the directory holds can fill a customer's details): `postal_address`
/// of up to 10 lines, `upn` without spaces.
fn as_customer(
    at: &str,
    given: crate::domain::customer::CustomerIdentity,
    pick: fn(&crate::domain::customer::NormalIdentity) -> Option<String>,
) -> Result<Option<String>, String> {
    given
        .normalize(None, true, "")
        .map(|n| pick(&n))
        .map_err(|e| format!("{at}{}", e.to_string().trim_start_matches('.')))
}

fn email(at: &str, value: &Option<String>) -> Result<Option<String>, String> {
    match text(at, "email", value, 320)? {
        Some(e) if !looks_like_email(&e) => Err(format!(
            "{at}email: '{}' is not an e-mail address",
            crate::domain::clip(&e, 64)
        )),
        other => Ok(other.map(|e| e.to_lowercase())),
    }
}

fn phone(at: &str, value: &Option<String>, cc: Option<u16>) -> Result<Option<String>, String> {
    match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(p) => normalize_phone(p, cc)
            .map(Some)
            .map_err(|e| format!("{at}phone: {e}")),
    }
}

fn name(at: &str, value: &str) -> Result<String, String> {
    text(at, "name", &Some(value.to_string()), MAX_NAME)?
        .ok_or_else(|| format!("{at}name: must be 1 to {MAX_NAME} characters"))
}

fn id_of(at: &str, id: Option<&str>) -> Result<String, String> {
    let id = id.map(str::trim).unwrap_or_default();
    validate_slug("id", id).map_err(|e| format!("{at}{e}"))?;
    Ok(id.to_string())
}

fn user(
    at: &str,
    id: Option<&str>,
    input: &DirectoryUserInput,
    cc: Option<u16>,
) -> Result<DirectoryUser, String> {
    let u = DirectoryUser {
        id: id_of(at, id)?,
        name: name(at, &input.name)?,
        email: email(at, &input.email)?,
        phone: phone(at, &input.phone, cc)?,
        upn: as_customer(
            at,
            CustomerIdentity {
                upn: input.upn.clone(),
                ..Default::default()
            },
            |n| n.details.upn.clone(),
        )?,
        department: text(at, "department", &input.department, 200)?,
    };
    if u.email.is_none() && u.phone.is_none() && u.upn.is_none() {
        return Err(format!(
            "{at}a directory user needs an email, phone or upn to be matched by"
        ));
    }
    Ok(u)
}

fn contact(
    at: &str,
    id: Option<&str>,
    input: &ContactInput,
    cc: Option<u16>,
) -> Result<Contact, String> {
    let c = Contact {
        id: id_of(at, id)?,
        name: name(at, &input.name)?,
        email: email(at, &input.email)?,
        phone: phone(at, &input.phone, cc)?,
        company: text(at, "company", &input.company, 200)?,
        postal_address: as_customer(
            at,
            CustomerIdentity {
                postal_address: input.postal_address.clone(),
                ..Default::default()
            },
            |n| n.details.postal_address.clone(),
        )?,
    };
    if c.email.is_none() && c.phone.is_none() {
        // `rows[1].` names a field next; the whole row is meant here.
        let row = match at.strip_suffix('.') {
            Some(row) => format!("{row}: "),
            None => at.to_string(),
        };
        return Err(format!(
            "{row}a contact needs an email or a phone number to be matched by"
        ));
    }
    Ok(c)
}

/// `PUT /api/v1/admin/directory/{id}`: a tenant user of the internal directory.
#[utoipa::path(
    put,
    path = "/admin/directory/{id}",
    operation_id = "putDirectoryUser",
    tag = "directory",
    summary = "Create or replace a directory user",
    description = "Admins only: name, UPN, e-mail, phone (normalised to E.164). 422 names the field and the limit.",
    params(
        ("id" = String, Path, description = "The directory user id."),
    ),
    request_body(content = crate::http::directory::DirectoryUserInput, description = "The user."),
    responses(
        (status = 200, description = "The user.", body = crate::store::DirectoryUser),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn put_user(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(input): Body<DirectoryUserInput>,
) -> ApiResult<Json<DirectoryUser>> {
    caller.require_admin()?;
    if input.id.as_deref().is_some_and(|i| i != id) {
        return Err(ApiError::invalid(
            "id: the body names another id than the path",
        ));
    }
    let u = user("", Some(&id), &input, state.details.default_calling_code)
        .map_err(ApiError::invalid)?;
    state
        .store
        .upsert_directory_users(std::slice::from_ref(&u))
        .await?;
    Ok(Json(state.store.directory_user(&id).await?))
}

/// `GET /api/v1/admin/directory/{id}`.
#[utoipa::path(
    get,
    path = "/admin/directory/{id}",
    operation_id = "getDirectoryUser",
    tag = "directory",
    summary = "A user of the internal directory",
    description = "Admins only.",
    params(
        ("id" = String, Path, description = "The directory user id."),
    ),
    responses(
        (status = 200, description = "The user.", body = crate::store::DirectoryUser),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 404, response = doc::NotFound),
    ),
)]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
) -> ApiResult<Json<DirectoryUser>> {
    caller.require_admin()?;
    Ok(Json(state.store.directory_user(&id).await?))
}

/// `PUT /api/v1/admin/contacts/{id}`: an entry of the external address book.
#[utoipa::path(
    put,
    path = "/admin/contacts/{id}",
    operation_id = "putContact",
    tag = "admin",
    summary = "Create or replace a contact",
    description = "Creates or replaces an entry of the external address book, which tasks' customers are matched against by email or phone. Admins only.",
    params(
        ("id" = String, Path, description = "The contact id (1–64 of letters, digits, '.', '_', '-', '@')."),
    ),
    request_body(content = crate::http::directory::ContactInput),
    responses(
        (status = 200, description = "OK", body = crate::store::Contact),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn put_contact(
    State(state): State<AppState>,
    caller: Caller,
    Id(id): Id<String>,
    Body(input): Body<ContactInput>,
) -> ApiResult<Json<Contact>> {
    caller.require_admin()?;
    if input.id.as_deref().is_some_and(|i| i != id) {
        return Err(ApiError::invalid(
            "id: the body names another id than the path",
        ));
    }
    let c = contact("", Some(&id), &input, state.details.default_calling_code)
        .map_err(ApiError::invalid)?;
    state
        .store
        .upsert_contacts(std::slice::from_ref(&c))
        .await?;
    Ok(Json(state.store.contact(&id).await?))
}

/// Refuses an import that names one id on two rows (the second would
/// silently replace the first): both rows are named.
fn each_id_once<'a, T>(rows: &[(String, T)], ids: impl Iterator<Item = &'a str>) -> ApiResult<()> {
    let mut seen = std::collections::HashMap::new();
    for ((at, _), id) in rows.iter().zip(ids) {
        if let Some(first) = seen.insert(id, at) {
            return Err(ApiError::invalid(format!(
                "{at}id: '{id}' is also the id of {}; an import names each id once",
                first.trim_end_matches(['.', ':', ' '])
            )));
        }
    }
    Ok(())
}

/// The columns of a directory import.
const USER_COLUMNS: &[&str] = &["id", "name", "email", "phone", "upn", "department"];
/// The columns of an address-book import.
const CONTACT_COLUMNS: &[&str] = &["id", "name", "email", "phone", "company", "postal_address"];

/// Reads an import body: a JSON array, or CSV with a header line
/// (`Content-Type: text/csv`), each row with where it is (`rows[3].`,
/// `line 4: `). Errors name the row (JSON, from 0) or the line (CSV, the
/// header is line 1) and the field; a header line naming a column not in
/// `columns` is refused as the header line's.
fn rows<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    columns: &[&str],
) -> ApiResult<Vec<(String, T)>> {
    if body.len() > MAX_IMPORT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "an import is at most {} MiB",
                MAX_IMPORT_BYTES / 1024 / 1024
            ),
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let too_many = || {
        ApiError::invalid(format!(
            "an import has at most {MAX_IMPORT_ROWS} rows: split it"
        ))
    };
    match content_type.as_str() {
        "application/json" => {
            let items: Vec<Value> = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("request body is not a JSON array: {e}"))
            })?;
            if items.len() > MAX_IMPORT_ROWS {
                return Err(too_many());
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    let at = format!("rows[{i}].");
                    serde_json::from_value(v)
                        .map(|t| (at.clone(), t))
                        .map_err(|e| ApiError::invalid(format!("{at}{e}")))
                })
                .collect()
        }
        "text/csv" => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .trim(csv::Trim::All)
                .from_reader(body);
            if let Ok(names) = reader.headers() {
                if let Some(unknown) = names.iter().find(|n| !columns.contains(n)) {
                    return Err(ApiError::invalid(format!(
                        "line 1 (the header line): unknown column '{}': the columns are {}",
                        crate::domain::clip(unknown, 64),
                        columns.join(", ")
                    )));
                }
                // Every row needs its id and name: told once, as the header's.
                if let Some(missing) = ["id", "name"]
                    .into_iter()
                    .find(|c| columns.contains(c) && !names.iter().any(|n| n == *c))
                {
                    return Err(ApiError::invalid(format!(
                        "line 1 (the header line): no '{missing}' column: every row needs one (the columns are {})",
                        columns.join(", ")
                    )));
                }
            }
            let mut out = Vec::new();
            for result in reader.deserialize::<T>() {
                if out.len() >= MAX_IMPORT_ROWS {
                    return Err(too_many());
                }
                match result {
                    Ok(t) => {
                        let line = out.len() + 2;
                        out.push((format!("line {line}: "), t));
                    }
                    Err(e) => {
                        let line = e.position().map_or(out.len() as u64 + 2, |p| p.line());
                        let why = match e.kind() {
                            csv::ErrorKind::Deserialize { err, .. } => err.to_string(),
                            csv::ErrorKind::UnequalLengths {
                                expected_len, len, ..
                            } => format!(
                                "{len} fields where the header line has {expected_len} (a comma inside a value needs the value in double quotes)"
                            ),
                            csv::ErrorKind::Utf8 { .. } => {
                                "not UTF-8 text: save the file as UTF-8 (\"CSV UTF-8\" in Excel)"
                                    .to_string()
                            }
                            other => format!("{other:?}").chars().take(200).collect(),
                        };
                        return Err(ApiError::invalid(format!("line {line}: {why}")));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "send the rows as a JSON array (application/json) or CSV with a header line (text/csv)",
        )),
    }
}

/// `POST /api/v1/admin/directory/import`: many tenant users at once, all
/// or none; columns `id, name, email, phone, upn, department`.
#[utoipa::path(
    post,
    path = "/admin/directory/import",
    operation_id = "importDirectory",
    tag = "directory",
    summary = "Import directory users",
    description = "Admins only: a JSON array or CSV (`Content-Type: text/csv`) of users, upserted by id; at most 10,000 rows and 8 MiB. All rows or none: the first bad row is named with its field (`rows[3].phone: …`, `line 4: email: …`), and so is an id named on two rows; nothing is stored then.",
    request_body(content((Vec<crate::http::directory::DirectoryUserInput> = "application/json"), (String = "text/csv")), description = "Users as JSON or CSV."),
    responses(
        (status = 200, description = "All rows stored: how many.", body = crate::http::directory::ImportResult),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 413, description = "The body is larger than 8 MiB (error code too_large).", body = doc::ErrorBody),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn import_users(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody<MAX_IMPORT_BYTES>,
) -> ApiResult<Json<ImportResult>> {
    caller.require_admin()?;
    let cc = state.details.default_calling_code;
    let input = rows::<DirectoryUserInput>(&headers, &body, USER_COLUMNS)?;
    let users = input
        .iter()
        .map(|(at, u)| user(at, u.id.as_deref(), u, cc))
        .collect::<Result<Vec<_>, String>>()
        .map_err(ApiError::invalid)?;
    each_id_once(&input, users.iter().map(|u| u.id.as_str()))?;
    let imported = state.store.upsert_directory_users(&users).await?;
    tracing::info!(imported, "directory users imported");
    Ok(Json(ImportResult { imported }))
}

/// `POST /api/v1/admin/contacts/import`: many contacts at once, all or
/// none; columns `id, name, email, phone, company, postal_address`.
#[utoipa::path(
    post,
    path = "/admin/contacts/import",
    operation_id = "importContacts",
    tag = "directory",
    summary = "Import address-book contacts",
    description = "Admins only: a JSON array or CSV (`Content-Type: text/csv`) of contacts, upserted by id; at most 10,000 rows and 8 MiB. All rows or none: the first bad row is named with its field, and so is an id named on two rows; nothing is stored then.",
    request_body(content((Vec<crate::http::directory::ContactInput> = "application/json"), (String = "text/csv")), description = "Contacts as JSON or CSV."),
    responses(
        (status = 200, description = "All rows stored: how many.", body = crate::http::directory::ImportResult),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
        (status = 403, response = doc::Forbidden),
        (status = 413, description = "The body is larger than 8 MiB (error code too_large).", body = doc::ErrorBody),
        (status = 415, response = doc::UnsupportedMediaType),
        (status = 422, response = doc::Unprocessable),
    ),
)]
pub async fn import_contacts(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawBody(body): RawBody<MAX_IMPORT_BYTES>,
) -> ApiResult<Json<ImportResult>> {
    caller.require_admin()?;
    let cc = state.details.default_calling_code;
    let input = rows::<ContactInput>(&headers, &body, CONTACT_COLUMNS)?;
    let contacts = input
        .iter()
        .map(|(at, c)| contact(at, c.id.as_deref(), c, cc))
        .collect::<Result<Vec<_>, String>>()
        .map_err(ApiError::invalid)?;
    each_id_once(&input, contacts.iter().map(|c| c.id.as_str()))?;
    let imported = state.store.upsert_contacts(&contacts).await?;
    tracing::info!(imported, "contacts imported");
    Ok(Json(ImportResult { imported }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContactsQuery {
    /// Text to match in name, e-mail or phone.
    q: String,
    /// Page size.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<u32>,
}

/// The contacts found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ContactsPage {
    pub items: Vec<Contact>,
}

/// `GET /api/v1/contacts?q=`: the address book search ("GetContacts"), by
/// name or e-mail (contains) or phone (the same number in any spelling), for
/// agents, admins and integrations with `contacts:read`.
#[utoipa::path(
    get,
    path = "/contacts",
    operation_id = "searchContacts",
    tag = "directory",
    summary = "Search the address book (\"GetContacts\")",
    description = "Contacts whose name, e-mail or phone matches `q`, paged.",
    params(
        ContactsQuery,
    ),
    responses(
        (status = 200, description = "A page of contacts.", body = crate::http::directory::ContactsPage),
        (status = 400, response = doc::BadRequest),
        (status = 401, response = doc::Unauthorized),
    ),
)]
pub async fn search_contacts(
    State(state): State<AppState>,
    caller: Principal,
    Params(query): Params<ContactsQuery>,
) -> ApiResult<Json<ContactsPage>> {
    caller.require("contacts:read", true)?;
    let q = query.q.trim();
    if q.is_empty() || q.chars().count() > 200 {
        return Err(ApiError::bad_request("q: must be 1 to 200 characters"));
    }
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit: use 1 to 100"));
    }
    let phone = if looks_like_phone(q) {
        normalize_phone(q, state.details.default_calling_code).ok()
    } else {
        None
    };
    let items = state
        .store
        .search_contacts(q, phone.as_deref(), limit)
        .await?;
    Ok(Json(ContactsPage { items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(columns: &[&str]) -> Vec<u8> {
        // A row of values each column takes.
        let value = |c: &str| match c {
            "id" => "x1",
            "email" => "x@customer.example",
            "phone" => "+41 44 000 00 00",
            "upn" => "x@tenant.example",
            _ => "X",
        };
        let row: Vec<&str> = columns.iter().map(|c| value(c)).collect();
        format!("{}\n{}\n", columns.join(","), row.join(",")).into_bytes()
    }

    #[test]
    fn every_listed_column_is_one_the_rows_take() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "text/csv".parse().unwrap());
        let users = rows::<DirectoryUserInput>(&headers, &csv(USER_COLUMNS), USER_COLUMNS);
        assert_eq!(users.map(|r| r.len()).ok(), Some(1));
        let contacts = rows::<ContactInput>(&headers, &csv(CONTACT_COLUMNS), CONTACT_COLUMNS);
        assert_eq!(contacts.map(|r| r.len()).ok(), Some(1));
        // A column the rows do not take is the header line's error.
        let mut more = CONTACT_COLUMNS.to_vec();
        more.push("fax");
        let refused = rows::<ContactInput>(&headers, &csv(&more), CONTACT_COLUMNS);
        assert!(refused.is_err());
    }
}
