//! `GET /push`: a small patient-notification page for browsers and kiosks, served by the node
//! itself so a waiting-room screen or a patient's phone needs nothing but this node's address
//! (no CDN, no external files: it works on an isolated hospital network).
//!
//! The page is one HTML document with an inline style sheet and script. It reads the caller's
//! inbox from `GET /v1/stream` with `fetch()` and HTTP Basic credentials or a device token as
//! `Authorization: Bearer` (a browser's `EventSource` cannot send an `Authorization` header), parses the server-sent events itself,
//! reconnects with backoff sending `Last-Event-ID`, and shows each message once (by envelope
//! id). A `queue.call` (`params.ticket`, `params.room`, `params.name`) is shown large.
//!
//! Each response carries a fresh random nonce in its `Content-Security-Policy`, which allows
//! exactly the page's own inline script and style and lets it talk only to this origin.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::ApiState;

/// The page template: `{{NODE}}` is replaced by this node's id, `{{NONCE}}` by the response's
/// script/style nonce.
const PAGE: &str = include_str!("push.html");

/// Escapes text for an HTML attribute value.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The policy for one response: nothing but the nonce-carrying inline script and style, and
/// requests to this origin (the event stream).
fn policy(nonce: &str) -> String {
    format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    )
}

/// Renders the page for `node` with `nonce`; returns the HTML and its CSP.
pub fn render(node: &str, nonce: &str) -> (String, String) {
    let html = PAGE
        .replace("{{NODE}}", &escape(node))
        .replace("{{NONCE}}", nonce);
    (html, policy(nonce))
}

/// `GET /push`: the page. It needs no authentication — it is public and holds no data; the
/// stream it reads (`/v1/stream`) is authenticated with the identity and password, or the
/// device token, the person types in, or that a kiosk or a phone app passes in the URL
/// fragment (`/push#identity=…&password=…`, `/push#token=…`), which browsers never send to the
/// server. Never in the query string: URLs reach access logs and proxies.
pub async fn page(State(state): State<Arc<ApiState>>) -> Response {
    let nonce = nonce();
    let (html, csp) = render(&state.node_id, &nonce);
    html_response(StatusCode::OK, html, &csp)
}

/// A fresh random nonce for one response's inline script and style.
pub(crate) fn nonce() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 18]>())
}

/// An HTML page served by the node (`/push`, `/console`): its policy `csp`, never cached,
/// never framed, no referrer, its own browsing-context group.
pub(crate) fn html_response(status: StatusCode, html: String, csp: &str) -> Response {
    let mut resp = (status, html).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The nonce is base64 and the rest is fixed text, so the header value is always valid.
    if let Ok(value) = HeaderValue::from_str(csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_the_node_and_carries_the_nonce_everywhere() {
        let (html, csp) = render("js.nj\"<x>", "abc123");
        assert!(
            html.contains("content=\"js.nj&quot;&lt;x&gt;\""),
            "escaped node id"
        );
        assert!(!html.contains("{{"), "every placeholder is filled");
        assert_eq!(
            html.matches("nonce=\"abc123\"").count(),
            2,
            "script and style"
        );
        assert!(csp.contains("script-src 'nonce-abc123'"));
        assert!(!csp.contains("unsafe-inline"));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        let (html, _) = render("js", "n");
        for needle in ["http://", "https://", "src=", "@import", "url("] {
            assert!(!html.contains(needle), "the page references {needle}");
        }
        // The only link is the empty inline icon (so the browser asks for no /favicon.ico).
        assert_eq!(html.matches("href=").count(), 1);
        assert!(html.contains(r#"<link rel="icon" href="data:,">"#));
    }
}
