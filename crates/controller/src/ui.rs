//! `GET /ui`: a small read-only web page of the fabric (networks, the
//! endpoints of each host, flows live), one HTML file with its script and
//! style inline. It holds no data, so it is served without
//! authentication: the page asks for a bearer token and reads the REST API
//! with it, as any client would.
//!
//! Its Content-Security-Policy lets it run only its own inline script and
//! style (by their SHA-256, computed from the file when first served) and
//! connect only to this controller; it may not be framed.

use std::sync::{Arc, LazyLock};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use base64::Engine;

use crate::service::Controller;

/// The page.
const PAGE: &str = include_str!("ui.html");

/// The page's Content-Security-Policy.
static POLICY: LazyLock<String> = LazyLock::new(|| content_security_policy(PAGE));

/// The routes of this module.
pub fn routes() -> Router<Arc<Controller>> {
    Router::new().route("/ui", get(page))
}

/// The text between `<tag>` and `</tag>`, the first such element of `page`.
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let Some(start) = page.find(&open).map(|i| i + open.len()) else { return "" };
    page[start..].find(&format!("</{tag}>")).map_or("", |end| &page[start..start + end])
}

/// A CSP source of `text` by its hash: `'sha256-BASE64'`.
fn sha256_source(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
}

/// Nothing but `page`'s own inline script and style, and requests to this
/// controller.
fn content_security_policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
        sha256_source(inline(page, "script")),
        sha256_source(inline(page, "style"))
    )
}

/// The page, with headers that keep it to itself.
async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY.as_str()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_exactly_the_inline_script_and_style_of_the_page() {
        assert_eq!(PAGE.matches("<script").count(), 1, "one inline script");
        assert_eq!(PAGE.matches("<style").count(), 1, "one inline style");
        assert!(inline(PAGE, "script").contains("/v1/flows/follow"));
        assert!(inline(PAGE, "style").contains("table"));
        let policy = content_security_policy(PAGE);
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"), "{policy}");
        assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
        assert!(!policy.contains("unsafe"), "{policy}");
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_no_inline_handlers() {
        for forbidden in ["src=", "href=", "http://", "https://", " onclick=", " onload=", "innerHTML", "eval("] {
            assert!(!PAGE.contains(forbidden), "the page holds {forbidden}");
        }
    }

    #[test]
    fn a_missing_element_hashes_as_empty() {
        assert_eq!(inline("<p>no script</p>", "script"), "");
        assert_eq!(sha256_source(""), "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='");
    }
}
