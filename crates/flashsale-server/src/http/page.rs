//! `GET /`: the web page, embedded in the binary so the service needs no files at run time.

use axum::http::header;
use axum::response::IntoResponse;

/// The page's HTML.
const INDEX_HTML: &str = include_str!("../../assets/index.html");

/// Serves the single web page.
pub async fn get_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
}
