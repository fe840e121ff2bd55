//! What a browser may ask of the admin and of the inspector, whatever page it is on.
//!
//! Owns two rules, checked before any route:
//!
//! - **Host.** A request must name this server: its own bound address, `localhost`, a
//!   loopback literal, or a name the operator listed (`--admin-host`,
//!   `--inspect-host`). A page on `evil.example.com` that re-points its own name at
//!   127.0.0.1 (DNS rebinding) is same-origin with itself, so the browser lets it read
//!   the answers; its requests still say `Host: evil.example.com`, and get a bodiless
//!   421.
//! - **Cross-site state changes.** A request that changes something (any method but
//!   GET, HEAD and OPTIONS) is refused when it says it comes from another site
//!   (`Origin`, `Sec-Fetch-Site`), and when it is a "simple" request that any page may
//!   send cross-site without asking (a form POST, or a `fetch` without a custom header
//!   or JSON type). Everything else would need a CORS preflight, which neither server
//!   ever grants.
//!
//! It does not check tokens (each server does) and does not know the routes.

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tracing::debug;

/// The local address of the connection a request came in on (the serving loop puts
/// it in the request's extensions): "its own bound address", also when bound to
/// 0.0.0.0.
#[derive(Debug, Clone, Copy)]
pub struct Local(pub SocketAddr);

/// Content types a page may send cross-site without a preflight (Fetch standard,
/// "CORS-safelisted request header").
const SIMPLE_TYPES: [&str; 3] = [
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "text/plain",
];

/// The names a request may give in `Host`, besides the always-allowed ones.
#[derive(Debug, Default)]
pub struct Guard {
    /// Operator-listed names, lowercase, without brackets or a trailing dot.
    names: Vec<String>,
}

impl Guard {
    pub fn new(names: &[String]) -> Arc<Guard> {
        Arc::new(Guard {
            names: names.iter().map(|n| normal(n)).collect(),
        })
    }

    fn listed(&self, host: &str) -> bool {
        let host = normal(host);
        self.names.contains(&host)
    }

    /// True when `authority` (`HOST[:PORT]`) names this server.
    ///
    /// ```
    /// use pipe::admin::guard::Guard;
    /// let g = Guard::new(&["Dash.Example.com".to_string()]);
    /// let local = "127.0.0.1:8911".parse().ok();
    /// assert!(g.host_allowed("localhost:8911", local));
    /// assert!(g.host_allowed("127.0.0.5", local));
    /// assert!(g.host_allowed("[::1]:8911", local));
    /// assert!(g.host_allowed("dash.example.com.", local));
    /// assert!(!g.host_allowed("evil.example.com", local));
    /// assert!(!g.host_allowed("localhost.evil.example.com", local));
    /// let public = "192.0.2.7:8911".parse().ok();
    /// assert!(g.host_allowed("192.0.2.7:8911", public));
    /// assert!(!g.host_allowed("192.0.2.8:8911", public));
    /// ```
    pub fn host_allowed(&self, authority: &str, local: Option<SocketAddr>) -> bool {
        let host = host_part(authority);
        if host.eq_ignore_ascii_case("localhost") || self.listed(host) {
            return true;
        }
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || local.is_some_and(|l| l.ip() == ip),
            Err(_) => false,
        }
    }

    /// Why a request must not change anything, if it must not.
    ///
    /// ```
    /// use axum::http::{HeaderMap, HeaderValue, Method};
    /// use pipe::admin::guard::Guard;
    /// let g = Guard::new(&[]);
    /// let mut h = HeaderMap::new();
    /// h.insert("host", HeaderValue::from_static("127.0.0.1:4040"));
    /// assert!(g.refuse_cross_site(&Method::GET, &h).is_none());
    /// assert!(g.refuse_cross_site(&Method::DELETE, &h).is_none());
    /// // A bare POST is what any page can send to any address: refused.
    /// assert!(g.refuse_cross_site(&Method::POST, &h).is_some());
    /// h.insert("content-type", HeaderValue::from_static("application/json"));
    /// assert!(g.refuse_cross_site(&Method::POST, &h).is_none());
    /// h.insert("origin", HeaderValue::from_static("http://127.0.0.1:4040"));
    /// assert!(g.refuse_cross_site(&Method::POST, &h).is_none());
    /// h.insert("origin", HeaderValue::from_static("http://evil.example"));
    /// assert!(g.refuse_cross_site(&Method::POST, &h).is_some());
    /// ```
    pub fn refuse_cross_site(&self, method: &Method, headers: &HeaderMap) -> Option<&'static str> {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return None;
        }
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(site) = headers.get("sec-fetch-site") {
            if site != "same-origin" && site != "none" {
                return Some("a cross-site request may not change anything");
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let host = text(header::HOST.as_str());
            let same = origin
                .to_str()
                .ok()
                .and_then(origin_authority)
                .is_some_and(|a| {
                    host.is_some_and(|h| a.eq_ignore_ascii_case(h)) || self.listed(host_part(a))
                });
            if !same {
                return Some("a request from another site (Origin) may not change anything");
            }
        }
        if !needs_preflight(method, headers) {
            return Some(
                "a change must be a request no other page can send: give it \
                 Content-Type: application/json or an X- header",
            );
        }
        None
    }
}

/// True when a browser would have asked (CORS preflight) before sending this request
/// from another origin: a method other than GET/HEAD/POST, a content type other than
/// the form and text ones, a bearer token, or a custom `X-` header. Headers that
/// browsers add by themselves are never counted: they prove nothing.
fn needs_preflight(method: &Method, headers: &HeaderMap) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD | Method::POST) {
        return true;
    }
    let typed = headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let essence = v.to_str().unwrap_or("").split(';').next().unwrap_or("");
        let essence = essence.trim().to_ascii_lowercase();
        !SIMPLE_TYPES.contains(&essence.as_str())
    });
    typed
        || headers.contains_key(header::AUTHORIZATION)
        || headers.keys().any(|k| k.as_str().starts_with("x-"))
}

/// `http://HOST[:PORT]` → `HOST[:PORT]`; `None` for `null` and anything else that is
/// not a serialized origin.
fn origin_authority(origin: &str) -> Option<&str> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))?;
    (!rest.is_empty() && !rest.contains(['/', '?', '#', '@'])).then_some(rest)
}

/// The host of `HOST[:PORT]` or `[V6][:PORT]`, brackets kept.
fn host_part(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Lowercase, without IPv6 brackets or a trailing root dot.
fn normal(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// The middleware: a foreign `Host` gets a bodiless 421, a cross-site change a 403.
pub async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let local = req.extensions().get::<Local>().map(|l| l.0);
    let host = req.headers().get(header::HOST).map(|v| v.to_str());
    // A request without `Host` is no browser's (browsers always send one); one in
    // absolute form names its host in the URI, which must pass too.
    let named = host
        .into_iter()
        .chain(req.uri().authority().map(|a| Ok(a.as_str())));
    for h in named {
        if !h.is_ok_and(|h| guard.host_allowed(h, local)) {
            debug!(host = ?req.headers().get(header::HOST), "request for another host refused");
            return StatusCode::MISDIRECTED_REQUEST.into_response();
        }
    }
    if let Some(why) = guard.refuse_cross_site(req.method(), req.headers()) {
        debug!(method = %req.method(), path = %req.uri().path(), why, "cross-site change refused");
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn host_parts() {
        assert_eq!(host_part("example.com:80"), "example.com");
        assert_eq!(host_part("example.com"), "example.com");
        assert_eq!(host_part("[::1]:4040"), "[::1]");
        assert_eq!(host_part("[::1]"), "[::1]");
        assert_eq!(host_part("a:b"), "a:b");
    }

    #[test]
    fn only_names_of_this_server_pass() {
        let g = Guard::new(&["[2001:db8::1]".into(), "admin.example.com".into()]);
        let any = "127.0.0.1:8911".parse().ok();
        for ok in [
            "localhost",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.1.2.3:9",
            "[::1]",
            "[2001:db8::1]:8911",
            "admin.example.com:443",
        ] {
            assert!(g.host_allowed(ok, any), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "",
            "0.0.0.0",
            "127.0.0.1.evil.example",
            "localhost.",
            "[::2]",
            "admin.example.com.evil",
            "sub.localhost",
        ] {
            assert!(!g.host_allowed(bad, any), "{bad}");
        }
        assert!(!Guard::new(&[]).host_allowed("10.1.2.3", None));
        assert!(Guard::new(&[]).host_allowed("10.1.2.3:1", "10.1.2.3:8911".parse().ok()));
    }

    #[test]
    fn cross_site_changes_are_refused() {
        let g = Guard::new(&["dash.example.com".into()]);
        let host = ("host", "127.0.0.1:8911");
        let json = ("content-type", "application/json; charset=utf-8");
        let refused = |m: Method, h: &[(&'static str, &'static str)]| {
            g.refuse_cross_site(&m, &headers(h)).is_some()
        };
        assert!(!refused(
            Method::GET,
            &[host, ("origin", "http://evil.example")]
        ));
        assert!(!refused(Method::DELETE, &[host]));
        assert!(!refused(
            Method::DELETE,
            &[host, ("origin", "http://127.0.0.1:8911")]
        ));
        assert!(refused(
            Method::DELETE,
            &[host, ("origin", "http://evil.example")]
        ));
        assert!(refused(Method::DELETE, &[host, ("origin", "null")]));
        assert!(refused(Method::DELETE, &[host, ("origin", "evil.example")]));
        assert!(refused(
            Method::DELETE,
            &[host, ("sec-fetch-site", "cross-site")]
        ));
        assert!(refused(
            Method::DELETE,
            &[host, ("sec-fetch-site", "same-site")]
        ));
        assert!(!refused(
            Method::DELETE,
            &[host, ("sec-fetch-site", "same-origin")]
        ));
        // A reverse proxy may rewrite Host; the listed public name is still this site.
        assert!(!refused(
            Method::DELETE,
            &[host, ("origin", "https://dash.example.com")]
        ));
        // Simple POSTs: what a form on any page can send.
        assert!(refused(Method::POST, &[host]));
        assert!(refused(
            Method::POST,
            &[host, ("content-type", "text/plain")]
        ));
        assert!(refused(
            Method::POST,
            &[host, ("content-type", "multipart/form-data; boundary=x")]
        ));
        assert!(!refused(Method::POST, &[host, json]));
        assert!(!refused(
            Method::POST,
            &[host, ("x-requested-with", "curl")]
        ));
        assert!(!refused(
            Method::POST,
            &[host, ("authorization", "Bearer t")]
        ));
        assert!(refused(
            Method::POST,
            &[host, json, ("origin", "http://evil.example")]
        ));
    }
}
