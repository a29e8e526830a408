//! Server-side image proxy for email previews.
//!
//! When an agent asks to see the remote images of an email, the server fetches
//! them itself so the agent's browser never contacts the sender (no tracking
//! pixel, no IP leak). Because the URLs come from untrusted mail, every fetch is
//! hardened against SSRF:
//!
//! * only `http`/`https` URLs without userinfo are accepted;
//! * IP-literal hosts are checked by [`is_forbidden_ip`] before any connection;
//! * host names are resolved by a custom resolver that drops forbidden
//!   addresses (and fails when none remain), so the check applies to the
//!   addresses actually connected to (no DNS-rebinding window);
//! * redirects are followed manually, re-validating every `Location`;
//! * system proxies are ignored, so the destination check cannot be bypassed
//!   by the proxy doing the resolution.
//!
//! Responses must be `200`, declare a raster image type (never SVG) and start
//! with the magic bytes of a raster format; the body is streamed with a size cap
//! and the whole fetch (all hops and the body) runs under one timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url, redirect};
use url::Host;

/// User agent sent with every proxied request (neutral, no version, no host).
pub const USER_AGENT: &str = "Switchboard-ImageProxy";

/// Content types accepted from the remote server (raster formats only).
pub const ALLOWED_CONTENT_TYPES: &[&str] = &[
    "image/png",
    "image/gif",
    "image/jpeg",
    "image/webp",
    "image/avif",
    "image/bmp",
    "image/x-icon",
];

/// Tuning of the image proxy.
#[derive(Debug, Clone)]
pub struct ImageProxyConfig {
    /// Largest accepted body, in bytes.
    pub max_bytes: usize,
    /// Budget for the whole fetch: every hop and the body.
    pub timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
    /// Allow loopback destinations. Tests only: never enable in production.
    pub allow_loopback: bool,
}

impl Default for ImageProxyConfig {
    fn default() -> Self {
        Self {
            max_bytes: 5 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            max_redirects: 3,
            allow_loopback: false,
        }
    }
}

/// Why an image could not be proxied. Messages never contain the URL.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad image URL: {0}")]
    BadUrl(String),
    #[error("forbidden destination: {0}")]
    Forbidden(String),
    #[error("not an image: {0}")]
    NotAnImage(String),
    #[error("image larger than {0} bytes")]
    TooLarge(usize),
    #[error("image fetch timed out")]
    Timeout,
    #[error("upstream error: {0}")]
    Upstream(String),
}

impl ProxyError {
    /// HTTP status the proxy endpoint should answer with.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadUrl(_) => 400,
            ProxyError::Forbidden(_) => 403,
            ProxyError::NotAnImage(_) => 415,
            ProxyError::TooLarge(_) => 413,
            ProxyError::Timeout => 504,
            ProxyError::Upstream(_) => 502,
        }
    }
}

/// A successfully fetched raster image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedImage {
    /// Content type derived from the magic bytes (e.g. `image/png`), which is
    /// what should be served to the browser.
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// Hardened HTTP client for remote images. Build once, clone freely.
#[derive(Debug, Clone)]
pub struct ImageFetcher {
    client: reqwest::Client,
    cfg: ImageProxyConfig,
}

impl ImageFetcher {
    pub fn new(cfg: ImageProxyConfig) -> Result<Self, ProxyError> {
        let resolver = Arc::new(GuardedResolver {
            allow_loopback: cfg.allow_loopback,
        });
        let client = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .referer(false)
            .no_proxy()
            .user_agent(USER_AGENT)
            .dns_resolver(resolver)
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| ProxyError::Upstream(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { client, cfg })
    }

    pub fn config(&self) -> &ImageProxyConfig {
        &self.cfg
    }

    /// Fetch `url`, enforcing every rule of the module documentation.
    pub async fn fetch(&self, url: &str) -> Result<FetchedImage, ProxyError> {
        let url = Url::parse(url.trim()).map_err(|e| ProxyError::BadUrl(e.to_string()))?;
        check_url(&url, self.cfg.allow_loopback)?;
        match tokio::time::timeout(self.cfg.timeout, self.fetch_checked(url)).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::Timeout),
        }
    }

    async fn fetch_checked(&self, mut url: Url) -> Result<FetchedImage, ProxyError> {
        let mut redirects = 0usize;
        let mut response = loop {
            url.set_fragment(None);
            let response = self
                .client
                .get(url.clone())
                .header(ACCEPT, "image/*")
                .send()
                .await
                .map_err(map_reqwest_error)?;
            let status = response.status();
            if !is_followed_redirect(status) {
                break response;
            }
            if redirects >= self.cfg.max_redirects {
                return Err(ProxyError::Upstream(format!(
                    "too many redirects (more than {})",
                    self.cfg.max_redirects
                )));
            }
            redirects += 1;
            let location = response
                .headers()
                .get(LOCATION)
                .ok_or_else(|| ProxyError::Upstream(format!("HTTP {status} without Location")))?
                .to_str()
                .map_err(|_| ProxyError::BadUrl("redirect Location is not valid text".into()))?;
            let next = url
                .join(location.trim())
                .map_err(|e| ProxyError::BadUrl(format!("bad redirect Location: {e}")))?;
            check_url(&next, self.cfg.allow_loopback)?;
            url = next;
        };

        let status = response.status();
        if status != StatusCode::OK {
            return Err(ProxyError::Upstream(format!(
                "upstream answered HTTP {}",
                status.as_u16()
            )));
        }

        let declared = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(content_type_essence)
            .ok_or_else(|| ProxyError::NotAnImage("missing Content-Type".into()))?;
        if !ALLOWED_CONTENT_TYPES.contains(&declared.as_str()) {
            return Err(ProxyError::NotAnImage(format!(
                "content type `{}` is not an allowed raster image type",
                printable(&declared)
            )));
        }

        let max = self.cfg.max_bytes;
        if let Some(len) = response.content_length()
            && len > max as u64
        {
            return Err(ProxyError::TooLarge(max));
        }
        let initial = response
            .content_length()
            .map_or(8 * 1024, |len| len as usize)
            .min(max);
        let mut bytes = Vec::with_capacity(initial);
        while let Some(chunk) = response.chunk().await.map_err(map_reqwest_error)? {
            if bytes.len() + chunk.len() > max {
                return Err(ProxyError::TooLarge(max));
            }
            bytes.extend_from_slice(&chunk);
        }

        let sniffed = sniff_image_type(&bytes).ok_or_else(|| {
            ProxyError::NotAnImage(format!(
                "body declared as `{declared}` is not a recognised raster image"
            ))
        })?;
        Ok(FetchedImage {
            content_type: sniffed.to_owned(),
            bytes,
        })
    }
}

/// Checks an outbound URL as the proxy does before connecting: `http` or
/// `https`, no credentials, and an IP-literal (or `localhost`) host that is
/// a public destination. Host names are checked again at connection time by
/// the resolver of [`guarded_client_builder`]. Other outbound requests
/// (webhooks) use this, so one set of rules guards every destination.
pub fn check_destination(url: &Url, allow_loopback: bool) -> Result<(), ProxyError> {
    check_url(url, allow_loopback)
}

/// A client builder with the proxy's guards: names resolve only to public
/// addresses (loopback too when `allow_loopback`), no system proxy, no
/// redirects followed (a caller that follows one checks its target with
/// [`check_destination`]).
pub fn guarded_client_builder(allow_loopback: bool) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .referer(false)
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allow_loopback }))
}

/// When a request failed because its host resolves only to forbidden
/// addresses: what to say (never the URL).
pub fn forbidden_resolution(err: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(forbidden) = e.downcast_ref::<ForbiddenResolution>() {
            return Some(forbidden.to_string());
        }
        source = e.source();
    }
    None
}

fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// `image/PNG; charset=x` -> `image/png`.
fn content_type_essence(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Keep error messages short and printable.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

/// Validate scheme, userinfo and host of a URL (initial or redirect target).
/// IP literals are checked here because reqwest never hands them to the
/// resolver; names are checked by [`GuardedResolver`] at connection time.
fn check_url(url: &Url, allow_loopback: bool) -> Result<(), ProxyError> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(ProxyError::BadUrl(format!(
                "unsupported scheme `{}`",
                printable(other)
            )));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ProxyError::BadUrl(
            "credentials in the URL are not allowed".into(),
        ));
    }
    match url.host() {
        None => Err(ProxyError::BadUrl("missing host".into())),
        Some(Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip), allow_loopback),
        Some(Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip), allow_loopback),
        Some(Host::Domain(domain)) => {
            let name = domain.trim_end_matches('.').to_ascii_lowercase();
            if name.is_empty() {
                return Err(ProxyError::BadUrl("missing host".into()));
            }
            // RFC 6761: `localhost` and `*.localhost` are always loopback.
            if !allow_loopback && (name == "localhost" || name.ends_with(".localhost")) {
                return Err(ProxyError::Forbidden(format!(
                    "host `{}` is loopback",
                    printable(&name)
                )));
            }
            Ok(())
        }
    }
}

fn check_ip(ip: IpAddr, allow_loopback: bool) -> Result<(), ProxyError> {
    if is_forbidden_ip(ip, allow_loopback) {
        Err(ProxyError::Forbidden(format!(
            "address {ip} is not a public destination"
        )))
    } else {
        Ok(())
    }
}

/// Error returned by [`GuardedResolver`] when every address of a name is
/// forbidden; recognised again in the reqwest error's source chain.
#[derive(Debug)]
struct ForbiddenResolution(String);

impl std::fmt::Display for ForbiddenResolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host `{}` resolves only to forbidden addresses", self.0)
    }
}

impl std::error::Error for ForbiddenResolution {}

/// DNS resolver that drops forbidden addresses, refusing names left with none.
struct GuardedResolver {
    allow_loopback: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let total = resolved.len();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| !is_forbidden_ip(addr.ip(), allow_loopback))
                .collect();
            if allowed.is_empty() {
                if total == 0 {
                    return Err(format!("host `{}` has no address", printable(&host)).into());
                }
                return Err(Box::new(ForbiddenResolution(printable(&host)))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            if allowed.len() < total {
                tracing::debug!(
                    host = %host,
                    dropped = total - allowed.len(),
                    "image proxy dropped forbidden addresses"
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Classify a reqwest error without leaking the URL.
fn map_reqwest_error(err: reqwest::Error) -> ProxyError {
    let err = err.without_url();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(forbidden) = e.downcast_ref::<ForbiddenResolution>() {
            return ProxyError::Forbidden(forbidden.to_string());
        }
        source = e.source();
    }
    tracing::debug!(error = %err, "image proxy request failed");
    if err.is_timeout() {
        ProxyError::Timeout
    } else if err.is_connect() {
        ProxyError::Upstream("could not connect to the image host".into())
    } else if err.is_body() || err.is_decode() {
        ProxyError::Upstream("error while reading the image body".into())
    } else {
        ProxyError::Upstream("image request failed".into())
    }
}

/// Identify a raster image from its first bytes; `None` for anything else
/// (HTML, SVG, scripts, empty bodies...).
pub fn sniff_image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some("image/png");
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Some("image/gif");
    }
    if bytes.starts_with(b"\xff\xd8\xff") {
        return Some("image/jpeg");
    }
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    if is_avif(bytes) {
        return Some("image/avif");
    }
    if bytes.len() >= 14 && bytes.starts_with(b"BM") {
        return Some("image/bmp");
    }
    if bytes.len() >= 6 && bytes.starts_with(b"\x00\x00\x01\x00") && bytes[4..6] != [0, 0] {
        return Some("image/x-icon");
    }
    None
}

/// ISO-BMFF `ftyp` box whose major or a compatible brand is `avif`/`avis`.
fn is_avif(bytes: &[u8]) -> bool {
    if bytes.len() < 16 || &bytes[4..8] != b"ftyp" {
        return false;
    }
    let size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let end = size.clamp(16, bytes.len());
    let is_avif_brand = |b: &[u8]| b == b"avif" || b == b"avis";
    is_avif_brand(&bytes[8..12]) || bytes[16..end].chunks_exact(4).any(is_avif_brand)
}

/// Whether the proxy must refuse to connect to `ip`: anything that is not a
/// globally routable unicast address (loopback is allowed only when
/// `allow_loopback`). IPv6 forms embedding an IPv4 address (mapped,
/// compatible, NAT64, 6to4) are judged by the embedded address.
pub fn is_forbidden_ip(ip: IpAddr, allow_loopback: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4, allow_loopback),
        IpAddr::V6(v6) => is_forbidden_v6(v6, allow_loopback),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn is_forbidden_v4(ip: Ipv4Addr, allow_loopback: bool) -> bool {
    if in_v4(ip, [127, 0, 0, 0], 8) {
        return !allow_loopback;
    }
    const RANGES: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", includes unspecified
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // CGNAT shared address space
        ([169, 254, 0, 0], 16),  // link-local, cloud metadata
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // TEST-NET-1
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, includes broadcast
    ];
    RANGES.iter().any(|&(net, prefix)| in_v4(ip, net, prefix))
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (u128::from(ip) & mask) == (u128::from(Ipv6Addr::from(net)) & mask)
}

fn is_forbidden_v6(ip: Ipv6Addr, allow_loopback: bool) -> bool {
    if ip.is_unspecified() {
        return true;
    }
    if ip.is_loopback() {
        return !allow_loopback;
    }
    let bits = u128::from(ip);
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (deprecated compatible).
    if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96) || in_v6(ip, [0; 8], 96) {
        return is_forbidden_v4(low_v4, allow_loopback);
    }
    // ::ffff:0:a.b.c.d (SIIT translated).
    if in_v6(ip, [0, 0, 0, 0, 0xffff, 0, 0, 0], 96) {
        return is_forbidden_v4(low_v4, allow_loopback);
    }
    // NAT64 well-known prefix.
    if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        return is_forbidden_v4(low_v4, allow_loopback);
    }
    // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        let embedded = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return is_forbidden_v4(embedded, allow_loopback);
    }
    const RANGES: &[([u16; 8], u32)] = &[
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use NAT64
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),     // Teredo (embeds v4)
        ([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48),   // benchmarking
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation (RFC 9637)
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local (private)
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site-local (deprecated)
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
    ];
    RANGES.iter().any(|&(net, prefix)| in_v6(ip, net, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> bool {
        is_forbidden_ip(s.parse().unwrap(), false)
    }

    fn forbidden_lo_ok(s: &str) -> bool {
        is_forbidden_ip(s.parse().unwrap(), true)
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "169.253.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "11.0.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4007:80e::200e",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
            assert!(!forbidden_lo_ok(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn loopback_depends_on_flag() {
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
            assert!(!forbidden_lo_ok(ip), "{ip} allowed with allow_loopback");
        }
    }

    #[test]
    fn ipv4_special_ranges_are_forbidden() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "0.255.255.255",
            "10.0.0.0",
            "10.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "169.254.0.1",
            "169.254.169.254",
            "172.16.0.0",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.0.1",
            "192.168.255.255",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
            assert!(forbidden_lo_ok(ip), "{ip} forbidden even with loopback");
        }
    }

    #[test]
    fn ipv6_special_ranges_are_forbidden() {
        for ip in [
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "feff::1",
            "ff02::1",
            "ff05::1:3",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "64:ff9b:1::1",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
            assert!(forbidden_lo_ok(ip), "{ip} forbidden even with loopback");
        }
    }

    #[test]
    fn ipv6_embedded_ipv4_is_judged_by_embedded_address() {
        for ip in [
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:192.168.1.1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
            "::10.0.0.1",
            "::169.254.169.254",
            "::ffff:0:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::192.168.0.1",
            "2002:a00:1::1",
            "2002:a9fe:a9fe::",
            "2002:c0a8:101:1::1",
            "2002:6440:1::",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
            assert!(forbidden_lo_ok(ip), "{ip} forbidden even with loopback");
        }
    }

    #[test]
    fn url_checks() {
        let check = |s: &str| check_url(&Url::parse(s).unwrap(), false);
        assert!(check("https://example.com/a.png").is_ok());
        assert!(check("http://example.com:8081/a.png").is_ok());
        assert!(check("http://93.184.216.34/a.png").is_ok());
        assert!(matches!(
            check("ftp://example.com/a.png"),
            Err(ProxyError::BadUrl(_))
        ));
        assert!(matches!(
            check("file:///etc/passwd"),
            Err(ProxyError::BadUrl(_))
        ));
        assert!(matches!(
            check("data:image/png;base64,AAAA"),
            Err(ProxyError::BadUrl(_))
        ));
        assert!(matches!(
            check("http://user@example.com/"),
            Err(ProxyError::BadUrl(_))
        ));
        assert!(matches!(
            check("http://u:p@example.com/"),
            Err(ProxyError::BadUrl(_))
        ));
        for bad in [
            "http://127.0.0.1/",
            "http://0x7f.0.0.1/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:10.0.0.1]/",
            "http://[fe80::1]/",
            "http://0.0.0.0/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://foo.localhost/",
        ] {
            assert!(matches!(check(bad), Err(ProxyError::Forbidden(_))), "{bad}");
        }
        let lo = |s: &str| check_url(&Url::parse(s).unwrap(), true);
        assert!(lo("http://127.0.0.1:8080/").is_ok());
        assert!(lo("http://localhost/").is_ok());
        assert!(matches!(
            lo("http://10.1.2.3/"),
            Err(ProxyError::Forbidden(_))
        ));
    }

    #[test]
    fn sniffing() {
        assert_eq!(
            sniff_image_type(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some("image/png")
        );
        assert_eq!(sniff_image_type(b"GIF89a\x01\0\x01\0"), Some("image/gif"));
        assert_eq!(sniff_image_type(b"GIF87a\x01\0\x01\0"), Some("image/gif"));
        assert_eq!(
            sniff_image_type(b"\xff\xd8\xff\xe0\0\x10JFIF"),
            Some("image/jpeg")
        );
        assert_eq!(
            sniff_image_type(b"RIFF\x24\0\0\0WEBPVP8 "),
            Some("image/webp")
        );
        assert_eq!(
            sniff_image_type(b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf"),
            Some("image/avif")
        );
        assert_eq!(
            sniff_image_type(b"\0\0\0\x1cftypmif1\0\0\0\0mif1avifmiaf"),
            Some("image/avif")
        );
        assert_eq!(
            sniff_image_type(b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom"),
            None
        );
        assert_eq!(
            sniff_image_type(b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0"),
            Some("image/bmp")
        );
        assert_eq!(
            sniff_image_type(b"\0\0\x01\0\x01\0\x10\x10"),
            Some("image/x-icon")
        );
        assert_eq!(sniff_image_type(b"<html><script>alert(1)</script>"), None);
        assert_eq!(
            sniff_image_type(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"),
            None
        );
        assert_eq!(sniff_image_type(b"<?xml version=\"1.0\"?><svg/>"), None);
        assert_eq!(sniff_image_type(b""), None);
        assert_eq!(sniff_image_type(b"\x89PN"), None);
    }

    /// Names bypass `check_url`'s IP checks: the resolver must filter them at
    /// connection time, and its refusal must surface as `Forbidden`.
    #[tokio::test]
    async fn resolver_refuses_names_resolving_to_forbidden_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });

        let name: Name = "localhost".parse().unwrap();
        let strict = GuardedResolver {
            allow_loopback: false,
        };
        let Err(err) = strict.resolve(name).await else {
            panic!("localhost resolved");
        };
        assert!(err.downcast_ref::<ForbiddenResolution>().is_some(), "{err}");

        let fetcher = ImageFetcher::new(ImageProxyConfig::default()).unwrap();
        let url = Url::parse(&format!("http://localhost:{port}/a.png")).unwrap();
        // Skip `check_url` (which already refuses `localhost`) on purpose.
        let err = fetcher.fetch_checked(url).await.unwrap_err();
        assert!(matches!(err, ProxyError::Forbidden(_)), "{err:?}");
        assert!(!accepted.is_finished(), "a connection was made");
        accepted.abort();

        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<_> = GuardedResolver {
            allow_loopback: true,
        }
        .resolve(name)
        .await
        .unwrap()
        .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }

    #[test]
    fn status_codes() {
        assert_eq!(ProxyError::BadUrl(String::new()).status(), 400);
        assert_eq!(ProxyError::Forbidden(String::new()).status(), 403);
        assert_eq!(ProxyError::NotAnImage(String::new()).status(), 415);
        assert_eq!(ProxyError::TooLarge(1).status(), 413);
        assert_eq!(ProxyError::Timeout.status(), 504);
        assert_eq!(ProxyError::Upstream(String::new()).status(), 502);
    }

    #[test]
    fn content_type_normalisation() {
        assert_eq!(
            content_type_essence("Image/PNG; charset=binary"),
            "image/png"
        );
        assert_eq!(content_type_essence(" image/jpeg "), "image/jpeg");
    }

    #[test]
    fn default_config() {
        let cfg = ImageProxyConfig::default();
        assert_eq!(cfg.max_bytes, 5 * 1024 * 1024);
        assert_eq!(cfg.timeout, Duration::from_secs(10));
        assert_eq!(cfg.max_redirects, 3);
        assert!(!cfg.allow_loopback);
    }
}
