//! The dashboard (SPEC §11): `GET /` serves one page, embedded in the binary with its style and
//! script inline, that shows and drives the host through the admin API from a browser. The page
//! holds no data, so it needs no token; it asks for one when the API does.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use base64::Engine as _;

/// The page: HTML with one `<style>` and one `<script>`, and no external asset.
const PAGE: &str = include_str!("dashboard/index.html");

/// The page's Content-Security-Policy: its own style and script only (by their SHA-256, so no
/// other inline code runs, were any ever injected), requests to its own origin only, no
/// framing, no form submission, no plugins.
static POLICY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'self'; script-src {}; style-src {}; connect-src 'self'; img-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        source_hash(inline(PAGE, "script")),
        source_hash(inline(PAGE, "style")),
    )
});

/// `GET /`: the dashboard.
#[utoipa::path(get, path = "/", tag = "meta", responses(
    (status = 200, description = "The dashboard: one self-contained page, which asks for a token when the API needs one.", content_type = "text/html", body = String),
))]
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, POLICY.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        PAGE,
    )
}

/// The text between `<tag>` and `</tag>` (the first such element), as the browser hashes it.
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    page.split_once(&format!("<{tag}>"))
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map_or("", |(body, _)| body)
}

/// A CSP source naming inline text by its SHA-256.
fn source_hash(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_pages_only_style_and_script() {
        for tag in ["style", "script"] {
            assert_eq!(PAGE.matches(&format!("<{tag}")).count(), 1, "one <{tag}>");
            assert!(inline(PAGE, tag).len() > 100, "<{tag}> is found");
        }
        // The digest of "abc" (FIPS 180-2), so the hash is the one browsers compute.
        assert_eq!(
            source_hash("abc"),
            "'sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0='"
        );
        assert!(POLICY.contains(&source_hash(inline(PAGE, "script"))));
        assert!(POLICY.contains("frame-ancestors 'none'"));
        assert!(!POLICY.contains("unsafe"));
    }

    #[test]
    fn the_page_is_small_self_contained_and_builds_no_markup_from_data() {
        assert!(PAGE.len() < 40 * 1024, "{} bytes", PAGE.len());
        for external in ["src=", "href=", "@import", "url(", "<link", "<iframe"] {
            assert!(!PAGE.contains(external), "the page refers to {external}");
        }
        // The only URL is the SVG namespace, which nothing fetches.
        assert_eq!(PAGE.matches("http").count(), 1);
        assert!(PAGE.contains("\"http://www.w3.org/2000/svg\""));
        for unsafe_sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!PAGE.contains(unsafe_sink), "the page uses {unsafe_sink}");
        }
        // Style only through the stylesheet: an inline style attribute would need 'unsafe-inline'.
        assert!(!PAGE.contains(" style="));
    }
}
