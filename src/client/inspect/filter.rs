//! Which exchanges `GET /api/requests` lists: by status (`404`, `4xx`), by a piece of
//! the URL (`path`), and by text (`q`) found in the method, URL, status, header names
//! and values, or kept bodies, ignoring ASCII case.
//!
//! The work is bounded: `q` is at most [`MAX_Q`] bytes, each exchange holds at most
//! two heads and two kept bodies, and the search is linear in what it reads
//! (`memchr::memmem`). It does not hold the store's lock: the store hands it one
//! exchange at a time.

use super::store::Exchange;
use memchr::memmem;

/// Longest `q` taken: longer than anything typed into a search box, short enough
/// that a search costs little more than reading what is kept.
pub const MAX_Q: usize = 256;
/// Longest `status` and `path` taken.
pub const MAX_STATUS: usize = 8;
pub const MAX_PATH: usize = 2048;

/// The list's query string, as given.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Params {
    /// `404`, or a class as `4xx`.
    pub status: Option<String>,
    /// A substring of the URL.
    pub path: Option<String>,
    /// Text to find anywhere in the exchange.
    pub q: Option<String>,
}

/// A checked filter.
#[derive(Debug)]
pub struct Filter {
    status: Option<String>,
    path: Option<String>,
    q: Option<memmem::Finder<'static>>,
}

impl Filter {
    /// Checks the parameters' sizes; the error says which one is too long.
    ///
    /// ```
    /// use pipe::client::inspect::filter::{Filter, Params, MAX_Q};
    /// let p = |q: &str| Params { q: Some(q.to_string()), ..Params::default() };
    /// assert!(Filter::new(p("Bearer")).is_ok());
    /// let e = Filter::new(p(&"x".repeat(MAX_Q + 1))).unwrap_err();
    /// assert_eq!(e, "q is at most 256 bytes (got 257)");
    /// ```
    pub fn new(p: Params) -> Result<Filter, String> {
        let check = |name: &str, v: &Option<String>, max: usize| match v {
            Some(v) if v.len() > max => {
                Err(format!("{name} is at most {max} bytes (got {})", v.len()))
            }
            _ => Ok(()),
        };
        check("status", &p.status, MAX_STATUS)?;
        check("path", &p.path, MAX_PATH)?;
        check("q", &p.q, MAX_Q)?;
        let given = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(Filter {
            status: given(p.status),
            path: given(p.path),
            q: given(p.q)
                .map(|q| memmem::Finder::new(q.to_ascii_lowercase().as_bytes()).into_owned()),
        })
    }

    /// Whether `e` is listed; `scratch` is reused between calls for lowercased text.
    pub fn keeps(&self, e: &Exchange, scratch: &mut Vec<u8>) -> bool {
        if let Some(s) = &self.status {
            if !status_matches(s, e.status) {
                return false;
            }
        }
        if let Some(p) = &self.path {
            if !e.url.contains(p.as_str()) {
                return false;
            }
        }
        match &self.q {
            Some(q) => text_matches(q, e, scratch),
            None => true,
        }
    }
}

/// `404` matches that code, `4xx` its class; anything else matches nothing.
pub fn status_matches(want: &str, got: Option<u16>) -> bool {
    let Some(code) = got else { return false };
    match want.strip_suffix("xx") {
        Some(class) => class.parse::<u16>().is_ok_and(|c| code / 100 == c),
        None => want.parse::<u16>().is_ok_and(|w| w == code),
    }
}

fn text_matches(q: &memmem::Finder<'_>, e: &Exchange, scratch: &mut Vec<u8>) -> bool {
    let mut found = |text: &[u8]| {
        scratch.clear();
        scratch.extend(text.iter().map(u8::to_ascii_lowercase));
        q.find(scratch).is_some()
    };
    let status = e.status.map(|s| s.to_string()).unwrap_or_default();
    let heads = [&e.request_headers, &e.response_headers];
    found(e.method.as_bytes())
        || found(e.url.as_bytes())
        || found(status.as_bytes())
        || heads
            .iter()
            .flat_map(|h| h.iter())
            .any(|(n, v)| found(n.as_bytes()) || found(v.as_bytes()))
        || found(&e.request_body.bytes)
        || found(&e.response_body.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::inspect::{Recorder, Source, Store};

    #[test]
    fn status_filters_take_codes_and_classes() {
        assert!(status_matches("404", Some(404)));
        assert!(status_matches("2xx", Some(204)));
        assert!(!status_matches("2xx", Some(301)));
        assert!(!status_matches("200", None));
        assert!(!status_matches("junk", Some(200)));
    }

    #[test]
    fn text_is_found_anywhere_ignoring_case_and_combines_with_status() {
        let store = Store::new(10, 1024);
        let mut r = Recorder::new(store.clone(), Source::default());
        r.to_service(b"POST /api/Users HTTP/1.1\r\nX-Trace: AbC-123\r\nContent-Length: 11\r\n\r\nhello World");
        r.from_service(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 6\r\n\r\nSTEAMY");
        r.to_service(b"GET /other HTTP/1.1\r\n\r\n");
        r.from_service(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let urls = |status: &str, q: &str| {
            let f = Filter::new(Params {
                status: Some(status.into()),
                q: Some(q.into()),
                ..Params::default()
            })
            .unwrap();
            let mut scratch = Vec::new();
            store
                .select(|e| f.keeps(e, &mut scratch))
                .into_iter()
                .map(|e| e.url)
                .collect::<Vec<_>>()
        };
        assert_eq!(urls("", "/API/users"), ["/api/Users"], "URL");
        assert_eq!(urls("", "post"), ["/api/Users"], "method");
        assert_eq!(urls("", "418"), ["/api/Users"], "status");
        assert_eq!(urls("", "x-trace"), ["/api/Users"], "header name");
        assert_eq!(urls("", "abc-1"), ["/api/Users"], "header value");
        assert_eq!(urls("", "WORLD"), ["/api/Users"], "request body");
        assert_eq!(urls("", "steamy"), ["/api/Users"], "response body");
        assert_eq!(urls("", ""), ["/other", "/api/Users"], "no text: all");
        assert_eq!(urls("2xx", "content-length"), ["/other"], "with status");
        assert!(urls("", "nowhere").is_empty());
    }
}
