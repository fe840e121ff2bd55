//! The JSON Caddy is sent and answers with, and the pure helpers around the calls:
//! route and policy objects (serde structs: a name can never reach Caddy as anything
//! but one JSON string), `@id` discovery in a config, error bodies, the admin URL,
//! path segments and random labels. No I/O here.

use super::{CaddyError, RouteRules};
use http::{StatusCode, Uri};
use serde::Serialize;
use serde_json::Value;

/// Characters of Caddy's error text (or of a refused name) kept for messages.
const MAX_DETAIL: usize = 400;

#[derive(Serialize)]
struct Route<'a> {
    #[serde(rename = "@id")]
    id: &'a str,
    #[serde(rename = "match")]
    matchers: [HostMatch<'a>; 1],
    handle: Value,
    /// Nothing after this route runs for its host (a Caddyfile's catch-all, say).
    terminal: bool,
}

#[derive(Serialize)]
struct HostMatch<'a> {
    host: [&'a str; 1],
}

#[derive(Serialize)]
struct Policy<'a> {
    #[serde(rename = "@id")]
    id: &'a str,
    subjects: [&'a str; 1],
}

/// The route that sends `host` to `127.0.0.1:port`, behind the forward's rules.
pub(super) fn route(
    id: &str,
    host: &str,
    port: u16,
    rules: &RouteRules,
) -> Result<Value, CaddyError> {
    to_value(&Route {
        id,
        matchers: [HostMatch { host: [host] }],
        handle: super::rules::handlers(port, rules),
        terminal: true,
    })
}

/// A TLS automation policy for `host` alone, with Caddy's default issuers.
pub(super) fn policy(id: &str, host: &str) -> Result<Value, CaddyError> {
    to_value(&Policy {
        id,
        subjects: [host],
    })
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, CaddyError> {
    serde_json::to_value(v).map_err(|e| CaddyError::BadAnswer {
        detail: format!("encoding JSON: {e}"),
    })
}

/// Every string `@id` in a Caddy config, at any depth.
pub(super) fn collect_ids(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("@id", Value::String(id)) => out.push(id.clone()),
                    _ => collect_ids(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_ids(v, out)),
        _ => {}
    }
}

/// Caddy answers errors as `{"error": "..."}`; falls back to the raw body.
pub(super) fn error_text(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let text = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => b.error,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    if text.trim().is_empty() {
        return status.to_string();
    }
    truncate(text.trim())
}

pub(super) fn truncate(s: &str) -> String {
    s.chars().take(MAX_DETAIL).collect()
}

/// A lowercase alphanumeric string of `n` characters, uniformly drawn.
///
/// ```
/// let s = pipe::caddy::random_label(8);
/// assert_eq!(s.len(), 8);
/// assert!(pipe::config::valid_subdomain(&s));
/// ```
pub fn random_label(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved bytes).
///
/// ```
/// assert_eq!(pipe::caddy::path_segment("pipe:a.b:x-1"), "pipe%3Aa.b%3Ax-1");
/// assert_eq!(pipe::caddy::path_segment("a/b c"), "a%2Fb%20c");
/// ```
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks `--caddy-admin` and returns its scheme and authority (`http://HOST:PORT`).
///
/// ```
/// use pipe::caddy::admin_base;
/// assert_eq!(admin_base("http://127.0.0.1:2019/").unwrap(), "http://127.0.0.1:2019");
/// assert!(admin_base("https://127.0.0.1:2019").is_err());
/// assert!(admin_base("127.0.0.1:2019").is_err());
/// assert!(admin_base("http://127.0.0.1:2019/config").is_err());
/// ```
pub fn admin_base(url: &str) -> Result<String, CaddyError> {
    let bad = |why| CaddyError::BadUrl {
        url: truncate(url),
        why,
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "expected http://HOST:PORT (Caddy's local admin endpoint)",
        ));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("expected no path: http://HOST:PORT"));
    }
    Ok(format!("http://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_hostile_host_stays_one_json_string() {
        // Formatted by hand, this would close the host list and add a second upstream.
        // serde escapes it into one (useless) host name instead.
        let evil =
            r#"x"]}],"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"10.0.0.1:22"#;
        let v = route("pipe:d:b:x:1", evil, 4000, &RouteRules::default()).unwrap();
        let text = serde_json::to_string(&v).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["match"], json!([{ "host": [evil] }]));
        assert_eq!(back["handle"].as_array().unwrap().len(), 1);
        assert_eq!(
            back["handle"][0]["upstreams"],
            json!([{ "dial": "127.0.0.1:4000" }])
        );
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "only @id, match, handle, terminal: {keys:?}");
        let p = policy("id", evil).unwrap();
        assert_eq!(p, json!({ "@id": "id", "subjects": [evil] }));
    }

    #[test]
    fn the_route_has_the_documented_shape() {
        assert_eq!(
            route(
                "pipe:example.test:b:myapp:3",
                "myapp.example.test",
                41000,
                &RouteRules::default()
            )
            .unwrap(),
            json!({
                "@id": "pipe:example.test:b:myapp:3",
                "match": [{ "host": ["myapp.example.test"] }],
                "handle": [{ "handler": "reverse_proxy",
                             "upstreams": [{ "dial": "127.0.0.1:41000" }] }],
                "terminal": true
            })
        );
    }

    #[test]
    fn finds_ids_anywhere_in_a_config() {
        let cfg = json!({
            "apps": {"http": {"servers": {"srv0": {"routes": [
                {"@id": "pipe:d:old:a:1", "handle": [{"handler": "subroute",
                    "routes": [{"@id": "pipe:d:old:b:2"}]}]},
                {"@id": 42},
            ]}}}, "tls": {"automation": {"policies": [{"@id": "other"}]}}}
        });
        let mut ids = Vec::new();
        collect_ids(&cfg, &mut ids);
        ids.sort();
        assert_eq!(ids, ["other", "pipe:d:old:a:1", "pipe:d:old:b:2"]);
    }

    #[test]
    fn caddy_error_bodies_are_read() {
        let body = br#"{"error":"loading new config: boom"}"#;
        assert_eq!(
            error_text(StatusCode::BAD_REQUEST, body),
            "loading new config: boom"
        );
        assert_eq!(error_text(StatusCode::NOT_FOUND, b""), "404 Not Found");
        assert_eq!(
            error_text(StatusCode::BAD_GATEWAY, &[b'x'; 5000]).len(),
            400
        );
    }
}
