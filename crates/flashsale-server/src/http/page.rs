//! `GET /`: the buyer's web page (docs/requirements.md#5-the-web-page), `GET /admin`: the
//! operator's page (docs/admin-page.md), and `GET /favicon.ico`, all embedded in the binary so
//! the service needs no files at run time.
//!
//! The operator's page is served the same way with its own script hash, but `private,
//! no-cache`: it holds no secret (the token is typed in and kept in the tab), yet no shared
//! cache has any business keeping it, and an operator should get a new build at once.
//!
//! The page is one self-contained HTML file (`assets/index.html`: markup, style and script, no
//! build step, nothing from other hosts). Under a herd every buyer loads it at the same moment,
//! so the work per request is a header comparison and a clone of shared bytes:
//!
//! - the gzip body and both entity tags are computed once, on first use, and shared;
//! - a strong `ETag` per representation (identity and gzip are different bytes, so they get
//!   different tags), and `If-None-Match` answers `304 Not Modified` without a body;
//! - `Cache-Control: public, max-age=60, stale-while-revalidate=300` lets a CDN or browser keep
//!   the page for a minute and revalidate in the background; `Vary: Accept-Encoding` keeps the
//!   two encodings apart in shared caches. The page holds no sale data (it reads the API), so a
//!   cached copy is never stale in a way that matters.
//!
//! The page learns how buyers are identified from its `<body data-identity="...">`, rendered
//! once per mode (so each mode's bytes and tags are computed once, like the rest): in `jwt`
//! mode it takes the shop's token from the URL fragment instead of asking for a buyer id.

use crate::http::AppState;
use crate::http::identity::IdentityMode;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::LazyLock;

/// The page's HTML.
const INDEX_HTML: &str = include_str!("../../assets/index.html");

/// The operator's page (`assets/admin.html`).
const ADMIN_HTML: &str = include_str!("../../assets/admin.html");

/// The operator's page is revalidated on every load and kept by no shared cache.
const ADMIN_CACHE_CONTROL: &str = "private, no-cache";

/// The icon browsers show in the tab (a bolt): tiny, so served as is, never compressed.
const FAVICON_SVG: &str = include_str!("../../assets/favicon.svg");

/// Fit for a CDN: short freshness, background revalidation, one copy for everybody.
const CACHE_CONTROL: &str = "public, max-age=60, stale-while-revalidate=300";

/// Same-origin only: the page talks to this service and nothing else. The one inline script is
/// allowed by its SHA-256 (computed once from the embedded page, so it always matches), not by
/// `'unsafe-inline'`: an injected script would not run even if escaping ever failed. The inline
/// style keeps `'unsafe-inline'`: CSS cannot run code, and hashing it too buys little.
static CONTENT_SECURITY_POLICY: LazyLock<HeaderValue> =
    LazyLock::new(|| content_security_policy(INDEX_HTML));

/// [`CONTENT_SECURITY_POLICY`] for the operator's page.
static ADMIN_CONTENT_SECURITY_POLICY: LazyLock<HeaderValue> =
    LazyLock::new(|| content_security_policy(ADMIN_HTML));

fn content_security_policy(html: &str) -> HeaderValue {
    let hashes: Vec<String> = inline_scripts(html)
        .map(|script| {
            let digest = Sha256::digest(script.as_bytes());
            format!("'sha256-{}'", BASE64_STANDARD.encode(digest))
        })
        .collect();
    let policy = format!(
        "default-src 'none'; script-src {}; style-src 'unsafe-inline'; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        if hashes.is_empty() {
            "'none'".to_owned()
        } else {
            hashes.join(" ")
        }
    );
    // Base64, quotes and ASCII words only: always a valid header value.
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

/// The text of each `<script>...</script>` element (exactly what a browser hashes).
fn inline_scripts(html: &str) -> impl Iterator<Item = &str> {
    html.split("<script>")
        .skip(1)
        .filter_map(|rest| rest.find("</script>").map(|end| &rest[..end]))
}

/// The page in both encodings with their validators, built once.
struct Page {
    identity: Bytes,
    identity_etag: HeaderValue,
    gzip: Bytes,
    gzip_etag: HeaderValue,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| Page::new(INDEX_HTML.as_bytes()));

static ADMIN_PAGE: LazyLock<Page> = LazyLock::new(|| Page::new(ADMIN_HTML.as_bytes()));

/// The mode the page source is written for; other modes replace this attribute.
const GUEST_MARKER: &str = r#"data-identity="guest""#;

/// The page for `--identity jwt`.
static JWT_PAGE: LazyLock<Page> = LazyLock::new(|| page_for(IdentityMode::Jwt));

/// The page for `--identity accounts`.
static ACCOUNTS_PAGE: LazyLock<Page> = LazyLock::new(|| page_for(IdentityMode::Accounts));

/// The page with its identity attribute set to `mode`.
fn page_for(mode: IdentityMode) -> Page {
    let html = INDEX_HTML.replacen(
        GUEST_MARKER,
        &format!(r#"data-identity="{}""#, mode.as_str()),
        1,
    );
    Page::new(html.as_bytes())
}

impl Page {
    fn new(html: &[u8]) -> Self {
        let gzip = gzip(html);
        let tag = fnv1a64(html);
        Self {
            identity: Bytes::copy_from_slice(html),
            identity_etag: etag(&format!("{tag:016x}")),
            gzip: Bytes::from(gzip),
            gzip_etag: etag(&format!("{tag:016x}-gz")),
        }
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 3), Compression::best());
    // Writing to a Vec cannot fail: the only error source would be the sink.
    match encoder.write_all(bytes).and_then(|()| encoder.finish()) {
        Ok(out) => out,
        Err(_) => unreachable!("gzip into a Vec<u8> is infallible"),
    }
}

fn etag(opaque: &str) -> HeaderValue {
    // Hex digits, a dash and quotes are always a valid header value.
    HeaderValue::from_str(&format!("\"{opaque}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// 64-bit FNV-1a: stable across builds and platforms (unlike `DefaultHasher`), and plenty to
/// tell two versions of one page apart; the tag only needs to change when the bytes do.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Serves the favicon (an SVG, linked from the page's head; browsers that ask for
/// `/favicon.ico` on their own get it too). It never changes within a build: cache for a day.
pub async fn get_favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        FAVICON_SVG,
    )
        .into_response()
}

/// Serves the single web page: gzip when the client accepts it, `304` when its copy is current.
pub async fn get_page(headers: HeaderMap) -> Response {
    render(&PAGE, &headers)
}

/// [`get_page`] for `--identity jwt`.
pub async fn get_jwt_page(headers: HeaderMap) -> Response {
    render(&JWT_PAGE, &headers)
}

/// [`get_page`] for `--identity accounts`.
pub async fn get_accounts_page(headers: HeaderMap) -> Response {
    render(&ACCOUNTS_PAGE, &headers)
}

/// Serves the operator's page (it works only with the admin token, which it asks for).
pub async fn get_admin_page(headers: HeaderMap) -> Response {
    render_with(
        &ADMIN_PAGE,
        &headers,
        ADMIN_CACHE_CONTROL,
        &ADMIN_CONTENT_SECURITY_POLICY,
    )
}

/// The route serving the page rendered for `mode`.
pub fn page_route(mode: IdentityMode) -> MethodRouter<AppState> {
    match mode {
        IdentityMode::Guest => get(get_page),
        IdentityMode::Accounts => get(get_accounts_page),
        IdentityMode::Jwt => get(get_jwt_page),
    }
}

fn render(page: &Page, headers: &HeaderMap) -> Response {
    render_with(page, headers, CACHE_CONTROL, &CONTENT_SECURITY_POLICY)
}

fn render_with(
    page: &Page,
    headers: &HeaderMap,
    cache_control: &'static str,
    csp: &HeaderValue,
) -> Response {
    let use_gzip = accepts_gzip(headers);
    let (body, tag) = if use_gzip {
        (&page.gzip, &page.gzip_etag)
    } else {
        (&page.identity, &page.identity_etag)
    };
    let mut response = if if_none_match(headers, &[&page.identity_etag, &page.gzip_etag]) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = body.clone().into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        if use_gzip {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, tag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Whether `Accept-Encoding` lists `gzip` (or `*`) with a non-zero quality.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused
                && (coding.eq_ignore_ascii_case("gzip")
                    || coding.eq_ignore_ascii_case("x-gzip")
                    || coding == "*")
        })
}

/// `If-None-Match` with the weak comparison RFC 9110 prescribes for it: `*` or any listed tag
/// (with or without `W/`) naming one of our representations.
fn if_none_match(headers: &HeaderMap, ours: &[&HeaderValue]) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| {
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*" || ours.iter().any(|o| o.as_bytes() == tag.as_bytes())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    async fn body_of(response: Response) -> Bytes {
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
    }

    fn with(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_page_is_small_and_self_contained() {
        // 48 KiB: the product (OP-15) took it past 30, checkout's reservation view past 34,
        // the waitlist past 40; about 13 KiB gzipped.
        assert!(INDEX_HTML.len() < 48 * 1024, "{} bytes", INDEX_HTML.len());
        for foreign in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
            assert!(!INDEX_HTML.contains(foreign), "page refers to {foreign}");
        }
    }

    #[tokio::test]
    async fn a_gzip_client_gets_the_compressed_page_with_cache_headers() {
        let response = get_page(with(&[(header::ACCEPT_ENCODING, "br, gzip;q=0.8")])).await;
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers().clone();
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], CACHE_CONTROL);
        assert_eq!(h[header::VARY], "accept-encoding");
        assert!(h[header::ETAG].to_str().unwrap().ends_with("-gz\""));
        let mut html = String::new();
        GzDecoder::new(&body_of(response).await[..])
            .read_to_string(&mut html)
            .unwrap();
        assert_eq!(html, INDEX_HTML);
    }

    #[tokio::test]
    async fn a_client_refusing_gzip_gets_identity_bytes() {
        for refusal in ["", "gzip;q=0", "identity", "br"] {
            let response = get_page(with(&[(header::ACCEPT_ENCODING, refusal)])).await;
            assert!(response.headers().get(header::CONTENT_ENCODING).is_none());
            assert_eq!(body_of(response).await, INDEX_HTML.as_bytes(), "{refusal}");
        }
    }

    #[tokio::test]
    async fn a_current_copy_is_answered_with_304_and_no_body() {
        let first = get_page(with(&[(header::ACCEPT_ENCODING, "gzip")])).await;
        let tag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
        for sent in [
            tag.clone(),
            format!("W/{tag}"),
            format!("\"x\", {tag}"),
            "*".into(),
        ] {
            let again = get_page(with(&[
                (header::ACCEPT_ENCODING, "gzip"),
                (header::IF_NONE_MATCH, &sent),
            ]))
            .await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{sent}");
            assert_eq!(again.headers()[header::ETAG], tag.as_str());
            assert!(body_of(again).await.is_empty());
        }
        let stale = get_page(with(&[(header::IF_NONE_MATCH, "\"0123\"")])).await;
        assert_eq!(stale.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn the_script_runs_by_its_hash_not_by_unsafe_inline() {
        let response = get_page(HeaderMap::new()).await;
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        let script_src = csp
            .split(';')
            .map(str::trim)
            .find(|d| d.starts_with("script-src"))
            .unwrap();
        assert!(!script_src.contains("unsafe-inline"), "{csp}");
        // The hash is of the script the page actually carries.
        let script = inline_scripts(INDEX_HTML).next().unwrap();
        assert!(script.contains("EventSource"));
        let expected = BASE64_STANDARD.encode(Sha256::digest(script.as_bytes()));
        assert!(
            script_src.contains(&format!("'sha256-{expected}'")),
            "{csp}"
        );
        assert_eq!(response.headers()[header::REFERRER_POLICY], "no-referrer");
    }

    #[tokio::test]
    async fn the_operator_page_runs_only_its_own_script_and_no_shared_cache_keeps_it() {
        let response = get_admin_page(HeaderMap::new()).await;
        let h = response.headers();
        assert_eq!(h[header::CACHE_CONTROL], ADMIN_CACHE_CONTROL);
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert_eq!(inline_scripts(ADMIN_HTML).count(), 1);
        let script = inline_scripts(ADMIN_HTML).next().unwrap();
        let expected = BASE64_STANDARD.encode(Sha256::digest(script.as_bytes()));
        assert!(
            csp.contains(&format!("script-src 'sha256-{expected}';")),
            "{csp}"
        );
        // The policy allows no inline handler, so the page must not rely on one.
        for handler in ["onclick=", "onsubmit=", "onload=", "onchange=", "oninput="] {
            assert!(!ADMIN_HTML.contains(handler), "the page uses {handler}");
        }
        assert!(ADMIN_HTML.len() < 48 * 1024, "{} bytes", ADMIN_HTML.len());
    }

    #[test]
    fn a_page_without_scripts_allows_none() {
        let csp = content_security_policy("<p>no script</p>");
        assert!(csp.to_str().unwrap().contains("script-src 'none'"));
    }

    #[test]
    fn the_tag_changes_with_the_bytes_and_differs_per_encoding() {
        let (a, b) = (Page::new(b"<p>a</p>"), Page::new(b"<p>b</p>"));
        assert_ne!(a.identity_etag, b.identity_etag);
        assert_ne!(a.identity_etag, a.gzip_etag);
        assert_eq!(a.identity_etag, Page::new(b"<p>a</p>").identity_etag);
    }

    #[tokio::test]
    async fn the_jwt_page_differs_only_in_its_identity_mode() {
        assert!(INDEX_HTML.contains(GUEST_MARKER));
        let guest = body_of(get_page(HeaderMap::new()).await).await;
        let jwt = get_jwt_page(HeaderMap::new()).await;
        assert_ne!(jwt.headers()[header::ETAG], PAGE.identity_etag);
        let jwt = body_of(jwt).await;
        let jwt = String::from_utf8(jwt.to_vec()).unwrap();
        assert!(jwt.contains(r#"data-identity="jwt""#));
        assert_eq!(
            jwt.replace(r#"data-identity="jwt""#, GUEST_MARKER)
                .as_bytes(),
            &guest[..]
        );
    }
}
