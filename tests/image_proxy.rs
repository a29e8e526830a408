//! Image proxy against real HTTP servers bound to 127.0.0.1.
//!
//! Every URL pointing elsewhere (metadata service, private ranges) must be
//! refused before any connection: no test ever sends traffic off loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream;
use switchboard::image_proxy::{
    FetchedImage, ImageFetcher, ImageProxyConfig, ProxyError, is_forbidden_ip,
};

/// A real 1x1 transparent PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

const SMALL_LIMIT: usize = 8 * 1024;

#[derive(Clone, Default)]
struct Seen {
    headers: Arc<Mutex<Vec<HeaderMap>>>,
}

fn image(content_type: &'static str, body: &'static [u8]) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn redirect(status: StatusCode, location: String) -> Response {
    (status, [(header::LOCATION, location)]).into_response()
}

fn big_png_body(len: usize) -> Vec<u8> {
    let mut body = PNG.to_vec();
    body.resize(len, 0);
    body
}

fn router(seen: Seen) -> Router {
    Router::new()
        .route("/img.png", get(|| async { image("image/png", PNG) }))
        .route(
            "/img-params.png",
            get(|| async { image("Image/PNG; charset=binary", PNG) }),
        )
        // A GIF mislabelled as PNG is still a raster image: served as GIF.
        .route("/mislabelled", get(|| async { image("image/png", GIF) }))
        .route(
            "/headers",
            get(|State(seen): State<Seen>, headers: HeaderMap| async move {
                seen.headers.lock().unwrap().push(headers);
                image("image/png", PNG)
            }),
        )
        .route(
            "/set-cookie-redirect",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [
                        (header::LOCATION, "/headers"),
                        (header::SET_COOKIE, "track=secret; Path=/"),
                    ],
                )
            }),
        )
        .route(
            "/chain/{n}",
            get(|Path(n): Path<u32>| async move {
                if n == 0 {
                    image("image/png", PNG)
                } else {
                    redirect(StatusCode::FOUND, format!("/chain/{}", n - 1))
                }
            }),
        )
        .route(
            "/loop",
            get(|| async { redirect(StatusCode::MOVED_PERMANENTLY, "/loop".into()) }),
        )
        .route(
            "/to-metadata",
            get(|| async {
                redirect(
                    StatusCode::FOUND,
                    "http://169.254.169.254/latest/meta-data/".into(),
                )
            }),
        )
        .route(
            "/to-mapped-private",
            get(|| async {
                redirect(
                    StatusCode::TEMPORARY_REDIRECT,
                    "http://[::ffff:10.0.0.1]/".into(),
                )
            }),
        )
        .route(
            "/to-private-v4",
            get(|| async {
                redirect(
                    StatusCode::PERMANENT_REDIRECT,
                    "http://192.168.1.1:8080/x.png".into(),
                )
            }),
        )
        .route(
            "/to-nat64-private",
            get(|| async {
                redirect(StatusCode::SEE_OTHER, "http://[64:ff9b::a9fe:a9fe]/".into())
            }),
        )
        .route(
            "/to-file",
            get(|| async { redirect(StatusCode::FOUND, "file:///etc/passwd".into()) }),
        )
        .route(
            "/to-userinfo",
            get(|| async { redirect(StatusCode::FOUND, "http://user:pw@example.com/".into()) }),
        )
        .route(
            "/no-location",
            get(|| async { StatusCode::FOUND.into_response() }),
        )
        .route(
            "/html",
            get(|| async { image("text/html; charset=utf-8", b"<html><body>hi</body></html>") }),
        )
        .route(
            "/html-as-png",
            get(|| async { image("image/png", b"<html><script>alert(1)</script></html>") }),
        )
        .route("/empty-png", get(|| async { image("image/png", b"") }))
        .route("/no-type", get(|| async { Response::new(Body::from(PNG)) }))
        .route(
            "/svg",
            get(|| async {
                image(
                    "image/svg+xml",
                    b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
                )
            }),
        )
        .route(
            "/big",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    big_png_body(SMALL_LIMIT * 4),
                )
            }),
        )
        .route(
            "/exact-limit",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    big_png_body(SMALL_LIMIT),
                )
            }),
        )
        .route(
            "/chunked-endless",
            get(|| async {
                let first = stream::iter([Ok::<_, Infallible>(Bytes::from_static(PNG))]);
                let rest = stream::repeat_with(|| Ok(Bytes::from(vec![0u8; 1024])));
                let body = Body::from_stream(futures_util::StreamExt::chain(first, rest));
                ([(header::CONTENT_TYPE, "image/png")], body)
            }),
        )
        .route(
            "/slow-headers",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                image("image/png", PNG)
            }),
        )
        .route(
            "/slow-body",
            get(|| async {
                let first = stream::iter([Ok::<_, Infallible>(Bytes::from_static(PNG))]);
                let stall = stream::once(async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(Bytes::from_static(b"\0"))
                });
                let body = Body::from_stream(futures_util::StreamExt::chain(first, stall));
                ([(header::CONTENT_TYPE, "image/png")], body)
            }),
        )
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, "nope") }),
        )
        .route(
            "/error",
            get(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(header::CONTENT_TYPE, "image/png")],
                    PNG,
                )
            }),
        )
        .route("/no-content", get(|| async { StatusCode::NO_CONTENT }))
        .with_state(seen)
}

async fn start_server() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(seen.clone());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, seen)
}

/// A raw listener that only counts accepted connections (to prove none happen).
async fn start_counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

fn loopback_fetcher() -> ImageFetcher {
    ImageFetcher::new(ImageProxyConfig {
        max_bytes: SMALL_LIMIT,
        timeout: Duration::from_secs(5),
        max_redirects: 3,
        allow_loopback: true,
    })
    .unwrap()
}

fn strict_fetcher() -> ImageFetcher {
    ImageFetcher::new(ImageProxyConfig {
        timeout: Duration::from_secs(5),
        ..ImageProxyConfig::default()
    })
    .unwrap()
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Refused with `Forbidden`, quickly (no connection attempt, no timeout).
async fn assert_forbidden_fast(fetcher: &ImageFetcher, target: &str) {
    let start = Instant::now();
    let err = fetcher.fetch(target).await.unwrap_err();
    assert!(
        matches!(err, ProxyError::Forbidden(_)),
        "{target}: expected Forbidden, got {err:?}"
    );
    assert_eq!(err.status(), 403);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{target}: refusal took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn fetches_a_png() {
    let (addr, _) = start_server().await;
    let fetcher = loopback_fetcher();
    let img = fetcher.fetch(&url(addr, "/img.png")).await.unwrap();
    assert_eq!(
        img,
        FetchedImage {
            content_type: "image/png".into(),
            bytes: PNG.to_vec()
        }
    );
    let img = fetcher.fetch(&url(addr, "/img-params.png")).await.unwrap();
    assert_eq!(img.content_type, "image/png");
    // Served with the sniffed type, not the declared one.
    let img = fetcher.fetch(&url(addr, "/mislabelled")).await.unwrap();
    assert_eq!(img.content_type, "image/gif");
    assert_eq!(img.bytes, GIF);
    // `localhost` goes through the guarded resolver and is allowed here.
    let img = fetcher
        .fetch(&format!("http://localhost:{}/img.png", addr.port()))
        .await
        .unwrap();
    assert_eq!(img.bytes, PNG);
    // A body exactly at the limit is accepted.
    let img = fetcher.fetch(&url(addr, "/exact-limit")).await.unwrap();
    assert_eq!(img.bytes.len(), SMALL_LIMIT);
}

#[tokio::test]
async fn sends_neutral_headers_and_no_cookies_or_referer() {
    let (addr, seen) = start_server().await;
    let fetcher = loopback_fetcher();
    fetcher.fetch(&url(addr, "/headers")).await.unwrap();
    // Through a redirect that tries to set a cookie.
    fetcher
        .fetch(&url(addr, "/set-cookie-redirect"))
        .await
        .unwrap();
    let all = seen.headers.lock().unwrap().clone();
    assert_eq!(all.len(), 2);
    for headers in all {
        assert_eq!(headers[header::USER_AGENT], "Switchboard-ImageProxy");
        assert_eq!(headers[header::ACCEPT], "image/*");
        assert!(headers.get(header::REFERER).is_none(), "{headers:?}");
        assert!(headers.get(header::COOKIE).is_none(), "{headers:?}");
        assert!(headers.get(header::AUTHORIZATION).is_none(), "{headers:?}");
    }
}

#[tokio::test]
async fn loopback_refused_without_allow_loopback() {
    let (addr, count) = start_counting_listener().await;
    let fetcher = strict_fetcher();
    let port = addr.port();
    for target in [
        format!("http://127.0.0.1:{port}/img.png"),
        format!("http://127.1:{port}/img.png"),
        format!("http://0x7f000001:{port}/img.png"),
        format!("http://[::1]:{port}/img.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/img.png"),
        format!("http://localhost:{port}/img.png"),
        format!("http://LocalHost.:{port}/img.png"),
        format!("http://img.localhost:{port}/img.png"),
    ] {
        assert_forbidden_fast(&fetcher, &target).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count.load(Ordering::SeqCst), 0, "a connection was made");
}

#[tokio::test]
async fn redirects_are_rechecked_on_every_hop() {
    let (addr, _) = start_server().await;
    let fetcher = loopback_fetcher();
    for path in [
        "/to-metadata",
        "/to-mapped-private",
        "/to-private-v4",
        "/to-nat64-private",
    ] {
        assert_forbidden_fast(&fetcher, &url(addr, path)).await;
    }
    let err = fetcher.fetch(&url(addr, "/to-file")).await.unwrap_err();
    assert!(matches!(err, ProxyError::BadUrl(_)), "{err:?}");
    let err = fetcher.fetch(&url(addr, "/to-userinfo")).await.unwrap_err();
    assert!(matches!(err, ProxyError::BadUrl(_)), "{err:?}");
    let err = fetcher.fetch(&url(addr, "/no-location")).await.unwrap_err();
    assert!(matches!(err, ProxyError::Upstream(_)), "{err:?}");
    // The addresses those redirects point to are the forbidden ones.
    for ip in [
        "169.254.169.254",
        "::ffff:10.0.0.1",
        "192.168.1.1",
        "64:ff9b::a9fe:a9fe",
    ] {
        assert!(is_forbidden_ip(ip.parse().unwrap(), true), "{ip}");
    }
}

#[tokio::test]
async fn redirect_limit() {
    let (addr, _) = start_server().await;
    let fetcher = loopback_fetcher();
    let img = fetcher.fetch(&url(addr, "/chain/3")).await.unwrap();
    assert_eq!(img.bytes, PNG);
    let err = fetcher.fetch(&url(addr, "/chain/4")).await.unwrap_err();
    assert!(matches!(err, ProxyError::Upstream(_)), "{err:?}");
    assert_eq!(err.status(), 502);
    let err = fetcher.fetch(&url(addr, "/loop")).await.unwrap_err();
    assert!(matches!(err, ProxyError::Upstream(_)), "{err:?}");

    let no_redirects = ImageFetcher::new(ImageProxyConfig {
        max_redirects: 0,
        allow_loopback: true,
        ..ImageProxyConfig::default()
    })
    .unwrap();
    let err = no_redirects
        .fetch(&url(addr, "/chain/1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::Upstream(_)), "{err:?}");
}

#[tokio::test]
async fn non_images_refused() {
    let (addr, _) = start_server().await;
    let fetcher = loopback_fetcher();
    for path in ["/html", "/html-as-png", "/svg", "/empty-png", "/no-type"] {
        let err = fetcher.fetch(&url(addr, path)).await.unwrap_err();
        assert!(matches!(err, ProxyError::NotAnImage(_)), "{path}: {err:?}");
        assert_eq!(err.status(), 415);
    }
}

#[tokio::test]
async fn oversize_bodies_refused() {
    let (addr, _) = start_server().await;
    let fetcher = loopback_fetcher();
    // With a Content-Length above the limit.
    let err = fetcher.fetch(&url(addr, "/big")).await.unwrap_err();
    assert!(matches!(err, ProxyError::TooLarge(SMALL_LIMIT)), "{err:?}");
    assert_eq!(err.status(), 413);
    // Chunked, never-ending body: aborted once over the limit.
    let start = Instant::now();
    let err = fetcher
        .fetch(&url(addr, "/chunked-endless"))
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::TooLarge(SMALL_LIMIT)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn slow_servers_time_out() {
    let (addr, _) = start_server().await;
    let fetcher = ImageFetcher::new(ImageProxyConfig {
        timeout: Duration::from_millis(500),
        allow_loopback: true,
        ..ImageProxyConfig::default()
    })
    .unwrap();
    for path in ["/slow-headers", "/slow-body"] {
        let start = Instant::now();
        let err = fetcher.fetch(&url(addr, path)).await.unwrap_err();
        let elapsed = start.elapsed();
        assert!(matches!(err, ProxyError::Timeout), "{path}: {err:?}");
        assert_eq!(err.status(), 504);
        assert!(elapsed >= Duration::from_millis(400), "{path}: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{path}: {elapsed:?}");
    }
}

#[tokio::test]
async fn upstream_errors() {
    let (addr, _) = start_server().await;
    let fetcher = loopback_fetcher();
    for path in ["/missing", "/error", "/no-content"] {
        let err = fetcher.fetch(&url(addr, path)).await.unwrap_err();
        assert!(matches!(err, ProxyError::Upstream(_)), "{path}: {err:?}");
        assert_eq!(err.status(), 502);
        assert!(!err.to_string().contains("127.0.0.1"), "{err}");
    }
    // Connection refused on a closed loopback port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = fetcher.fetch(&url(closed, "/img.png")).await.unwrap_err();
    assert!(matches!(err, ProxyError::Upstream(_)), "{err:?}");
}

#[tokio::test]
async fn bad_urls_refused() {
    let fetcher = strict_fetcher();
    for target in [
        "",
        "not a url",
        "/relative.png",
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:image/png;base64,iVBORw0KGgo=",
        "http://user:pass@example.com/a.png",
        "http://user@example.com/a.png",
    ] {
        let err = fetcher.fetch(target).await.unwrap_err();
        assert!(matches!(err, ProxyError::BadUrl(_)), "{target}: {err:?}");
        assert_eq!(err.status(), 400);
    }
    for target in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/",
        "http://[fd00::1]/",
        "http://10.0.0.1/",
        "http://0.0.0.0/",
        "http://[::]/",
        "https://100.64.0.1/",
    ] {
        assert_forbidden_fast(&fetcher, target).await;
    }
}

#[test]
fn forbidden_ip_examples() {
    let f = |s: &str, lo: bool| is_forbidden_ip(s.parse().unwrap(), lo);
    assert!(f("127.0.0.1", false));
    assert!(!f("127.0.0.1", true));
    assert!(f("::ffff:127.0.0.1", false));
    assert!(f("169.254.169.254", true));
    assert!(f("::ffff:10.0.0.1", true));
    assert!(f("2002:a9fe:a9fe::1", true));
    assert!(!f("8.8.8.8", false));
    assert!(!f("2606:4700:4700::1111", false));
}
