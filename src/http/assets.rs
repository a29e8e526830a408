//! The pages' static files (script, styles, the vendored htmx), embedded in
//! the binary and served from our own origin.
//!
//! Pages link each file by a name that carries a hash of its content
//! (`/static/app.3f9c2a1b7d.js`), served with `Cache-Control: immutable` for
//! a year: a new build changes the name, so browsers never keep a stale
//! copy. The plain name works too, revalidated by ETag. Each file is also
//! kept gzip-compressed for clients that accept it.
use crate::http::doc;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::OnceLock;

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// The first 10 hex digits of the content's SHA-256.
    pub hash: String,
    /// The content gzip-compressed (best compression, done once).
    pub gzip: Vec<u8>,
    /// The name pages link: `app.<hash>.js`.
    pub hashed_name: String,
}

const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/app.css"),
    ),
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/vendor/htmx.min.js"),
    ),
    (
        "htmx-ext-sse.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/vendor/htmx-ext-sse.min.js"),
    ),
];

/// Every embedded file.
pub fn all() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, content_type, body)| {
                let hash = hex::encode(Sha256::digest(body))[..10].to_string();
                let hashed_name = match name.rsplit_once('.') {
                    Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
                    None => format!("{name}.{hash}"),
                };
                Asset {
                    name,
                    content_type,
                    body,
                    gzip: gzip(body, flate2::Compression::best()),
                    hash,
                    hashed_name,
                }
            })
            .collect()
    })
}

/// The URL a page links for the file `name` (`/static/app.<hash>.js`).
pub fn url(name: &str) -> String {
    all()
        .iter()
        .find(|a| a.name == name)
        .map(|a| format!("/static/{}", a.hashed_name))
        .unwrap_or_else(|| format!("/static/{name}"))
}

/// Compresses `bytes` with gzip.
pub fn gzip(bytes: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 3), level);
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// Whether the client takes gzip (`Accept-Encoding`).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// `GET /static/{file}`.
#[utoipa::path(
    get,
    path = "/static/{file}",
    operation_id = "staticFile",
    tag = "pages",
    summary = "Static files",
    description = "The pages' script, styles and the vendored htmx, embedded in the binary. Linked by a name that carries a hash of the content (`app.<hash>.js`: `Cache-Control: public, max-age=31536000, immutable`); the plain name is revalidated by ETag. Gzip when accepted.",
    params(
        ("file" = String, Path, description = "The file name."),
    ),
    responses(
        (status = 200, description = "The file.", content((String = "text/javascript"), (String = "text/css"))),
        (status = 304, description = "Not modified (If-None-Match)."),
        (status = 404, response = doc::NotFound),
    ),
    security(()),
)]
pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let found = all().iter().find_map(|a| {
        if a.hashed_name == file {
            Some((a, true))
        } else if a.name == file {
            Some((a, false))
        } else {
            None
        }
    });
    let Some((asset, immutable)) = found else {
        return super::ApiError::not_found("no such file").into_response();
    };
    let etag = format!("\"{}\"", asset.hash);
    let cache = if immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else if accepts_gzip(&headers) {
        let mut r = asset.gzip.clone().into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names_carry_the_content_hash() {
        let app = all().iter().find(|a| a.name == "app.js").unwrap();
        assert_eq!(app.hashed_name, format!("app.{}.js", app.hash));
        assert_eq!(url("app.js"), format!("/static/app.{}.js", app.hash));
        assert!(app.gzip.len() < app.body.len());
    }

    #[test]
    fn gzip_is_taken_unless_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0"),
        );
        assert!(!accepts_gzip(&h));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
