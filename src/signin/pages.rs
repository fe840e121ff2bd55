//! The few pages a visitor of an `auth=oidc` forward may see from pipe itself: not
//! allowed (naming who they are signed in as, with a sign-out link), signed out, and
//! errors. Every name shown is HTML-escaped.

use super::names::SIGN_OUT_PATH;
use super::seal::Identity;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and attribute values.
///
/// ```
/// assert_eq!(pipe::signin::escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
/// ```
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>{title}</h1>{body}</body></html>\n"
    );
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// 403: signed in, but not on this forward's list.
pub fn forbidden(id: &Identity) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Not allowed",
        &format!(
            "<p>You are signed in as <strong id=\"who\">{}</strong>, who may not open this site.</p>\
             <p><a id=\"sign-out\" href=\"{SIGN_OUT_PATH}\">Sign out</a> to use another account.</p>",
            escape(id.shown())
        ),
    )
}

pub fn signed_out() -> Response {
    page(
        StatusCode::OK,
        "Signed out",
        "<p>You are signed out of this site. <a href=\"/\">Sign in again</a>.</p>",
    )
}

pub fn error(status: StatusCode, what: &str) -> Response {
    page(status, "Sign-in", &format!("<p>{}</p>", escape(what)))
}
