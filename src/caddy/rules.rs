//! The visitor rules of an http forward as Caddy handlers: `remote_ip` matchers for
//! allow/deny (Caddy sees the visitor's own address; piped sees only Caddy), HTTP
//! basic auth against a bcrypt hash, and, when the client wants the visitor's address,
//! a `Pipe-Visitor` request header with one upstream connection per request, and
//! sign-in (`auth=oidc`) as Caddy's forward-auth pattern: every request is first put
//! to piped's sign-in gate, whose 2xx answer lets it through with the identity
//! headers the gate names, and whose other answers (a redirect to the issuer, 401,
//! 403) go to the visitor instead.
//!
//! Built with serde (`json!` values, never formatted strings). The bcrypt hash is made
//! here, from the password the client sent; the password itself never reaches Caddy.

use crate::protocol::{BasicAuth, Cidr};
use serde_json::{json, Value};

/// The request header Caddy sets (overwriting whatever a visitor sent) to
/// `{http.request.remote}`, the visitor's `IP:PORT`; piped reads it.
pub const VISITOR_HEADER: &str = "Pipe-Visitor";

/// bcrypt cost of the hash Caddy checks: the crate's default (2^12 rounds, about
/// 0.25 s here), paid once per forward by piped and once per distinct credential by
/// Caddy, whose hash cache remembers good answers.
pub const BCRYPT_COST: u32 = bcrypt::DEFAULT_COST;
/// The body of the answer to a visitor the rules refuse.
const FORBIDDEN: &str = "forbidden";
/// The realm browsers show in their password prompt.
const REALM: &str = "pipe";

/// Sign-in in front of one http forward: where this node's gate listens and who may
/// pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInRoute {
    /// The loopback port of piped's sign-in gate.
    pub gate: u16,
    /// `oidc-allow` patterns (checked: no spaces, braces or commas).
    pub allow: Vec<String>,
}

/// What Caddy enforces in front of one http forward.
#[derive(Debug, Clone, Default)]
pub struct RouteRules {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// User name and bcrypt hash.
    pub basic_auth: Option<(String, String)>,
    /// Name the visitor in a request header, one upstream connection per request.
    pub visitor_header: bool,
    /// Visitors sign in (`auth=oidc`).
    pub sign_in: Option<SignInRoute>,
}

impl RouteRules {
    fn is_plain(&self) -> bool {
        self.allow.is_empty()
            && self.deny.is_empty()
            && self.basic_auth.is_none()
            && !self.visitor_header
            && self.sign_in.is_none()
    }
}

/// Hashes basic-auth credentials for Caddy (slow by design: run it off the runtime).
pub fn hash_credentials(a: &BasicAuth) -> Result<(String, String), String> {
    bcrypt::hash(&a.password, BCRYPT_COST)
        .map(|h| (a.user.clone(), h))
        .map_err(|e| format!("cannot hash the basic-auth password: {e}"))
}

fn ranges(list: &[Cidr]) -> Vec<String> {
    list.iter().map(Cidr::to_string).collect()
}

fn refusal(matcher: Value) -> Value {
    json!({
        "match": [matcher],
        "handle": [{ "handler": "static_response", "status_code": 403, "body": FORBIDDEN }],
        "terminal": true
    })
}

/// The `handle` list of the route to `127.0.0.1:port`.
pub(super) fn handlers(port: u16, rules: &RouteRules) -> Value {
    let mut proxy = json!({
        "handler": "reverse_proxy",
        "upstreams": [{ "dial": format!("127.0.0.1:{port}") }]
    });
    if rules.visitor_header {
        // `set` replaces whatever a visitor sent under the same name.
        proxy["headers"] = json!({ "request": { "set": {
            VISITOR_HEADER: ["{http.request.remote}"]
        }}});
        proxy["transport"] = json!({ "protocol": "http", "keep_alive": { "enabled": false } });
    }
    if rules.is_plain() {
        return json!([proxy]);
    }
    let mut routes = Vec::new();
    if !rules.allow.is_empty() {
        routes.push(refusal(
            json!({ "not": [{ "remote_ip": { "ranges": ranges(&rules.allow) } }] }),
        ));
    }
    if !rules.deny.is_empty() {
        routes.push(refusal(
            json!({ "remote_ip": { "ranges": ranges(&rules.deny) } }),
        ));
    }
    if let Some((user, hash)) = &rules.basic_auth {
        routes.push(json!({ "handle": [{
            "handler": "authentication",
            "providers": { "http_basic": {
                "accounts": [{ "username": user, "password": hash }],
                "hash": { "algorithm": "bcrypt" },
                "hash_cache": {},
                "realm": REALM
            }}
        }]}));
    }
    if let Some(sign_in) = &rules.sign_in {
        routes.extend(sign_in_routes(sign_in));
    }
    routes.push(json!({ "handle": [proxy] }));
    json!([{ "handler": "subroute", "routes": routes }])
}

/// The routes that put every request to the sign-in gate before the tunnel sees it:
///
/// 1. the visitor's own identity headers, and the headers only Caddy may send the
///    gate, are deleted;
/// 2. `/.pipe/…` (the issuer's callback, sign-out) is answered by the gate itself;
/// 3. anything else is asked of the gate first (`GET /.pipe/check`, with the
///    visitor's headers, cookies included, and the forward's `oidc-allow` list): a 2xx
///    answer sets `X-Forwarded-Email`/`-User` from it and strips the pipe cookies from
///    the request, which then goes on to the tunnel; any other answer (redirect to the
///    issuer, 401, 403 page) is what the visitor gets.
///
/// Each request is asked on its own: Caddy carries many visitors over one upstream
/// connection, so nothing may be decided per connection.
fn sign_in_routes(s: &SignInRoute) -> Vec<Value> {
    use crate::signin::names::*;
    let gate = json!([{ "dial": format!("127.0.0.1:{}", s.gate) }]);
    let strip = json!({ "handler": "headers", "request": { "delete": [
        EMAIL_HEADER, USER_HEADER, HOST_HEADER, URI_HEADER, ALLOW_HEADER
    ]}});
    let own_paths = json!({
        "match": [{ "path": [format!("{PATH_PREFIX}*")] }],
        "handle": [{
            "handler": "reverse_proxy",
            "upstreams": gate,
            "headers": { "request": { "set": { HOST_HEADER: ["{http.request.hostport}"] } } }
        }],
        "terminal": true
    });
    let passed = json!({ "handler": "headers", "request": {
        "set": {
            EMAIL_HEADER: [format!("{{http.reverse_proxy.header.{EMAIL_HEADER}}}")],
            USER_HEADER: [format!("{{http.reverse_proxy.header.{USER_HEADER}}}")]
        },
        "replace": { "Cookie": [
            { "search_regexp": COOKIE_STRIP_REGEXP, "replace": "" },
            { "search_regexp": "^[;\\s]+", "replace": "" }
        ]}
    }});
    let check = json!({ "handle": [{
        "handler": "reverse_proxy",
        "upstreams": gate,
        // A GET without a body: the visitor's body is for the service alone.
        "rewrite": { "method": "GET", "uri": CHECK_PATH },
        "headers": { "request": { "set": {
            HOST_HEADER: ["{http.request.hostport}"],
            URI_HEADER: ["{http.request.uri}"],
            ALLOW_HEADER: [s.allow.join(" ")]
        }}},
        "handle_response": [{
            "match": { "status_code": [2] },
            "routes": [{ "handle": [passed] }]
        }]
    }]});
    vec![json!({ "handle": [strip] }), own_paths, check]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_routes_keep_their_shape_and_rules_become_a_subroute() {
        let plain = handlers(4000, &RouteRules::default());
        assert_eq!(
            plain,
            json!([{ "handler": "reverse_proxy", "upstreams": [{ "dial": "127.0.0.1:4000" }] }])
        );
        let rules = RouteRules {
            allow: vec!["127.0.0.2/32".parse().unwrap()],
            deny: vec!["127.0.0.3/32".parse().unwrap()],
            basic_auth: Some(("ann".into(), "$2b$12$hash".into())),
            visitor_header: true,
            sign_in: None,
        };
        let v = handlers(4000, &rules);
        let routes = v[0]["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 4);
        assert_eq!(
            routes[0]["match"][0]["not"][0]["remote_ip"]["ranges"],
            json!(["127.0.0.2/32"])
        );
        assert_eq!(
            routes[1]["match"][0]["remote_ip"]["ranges"],
            json!(["127.0.0.3/32"])
        );
        let basic = &routes[2]["handle"][0]["providers"]["http_basic"];
        assert_eq!(basic["accounts"][0]["username"], "ann");
        let proxy = &routes[3]["handle"][0];
        assert_eq!(
            proxy["headers"]["request"]["set"][VISITOR_HEADER],
            json!(["{http.request.remote}"])
        );
    }

    #[test]
    fn sign_in_puts_every_request_to_the_gate_before_the_tunnel() {
        let rules = RouteRules {
            sign_in: Some(SignInRoute {
                gate: 4100,
                allow: vec!["*@example.com".into(), "group:ops".into()],
            }),
            ..Default::default()
        };
        let v = handlers(4000, &rules);
        let routes = v[0]["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 4, "strip, own paths, check, tunnel");
        let deleted = &routes[0]["handle"][0]["request"]["delete"];
        for h in ["X-Forwarded-Email", "X-Forwarded-User", "Pipe-Allow"] {
            assert!(deleted.as_array().unwrap().contains(&json!(h)), "{h}");
        }
        assert_eq!(routes[1]["match"][0]["path"], json!(["/.pipe/*"]));
        assert_eq!(routes[1]["terminal"], json!(true));
        let check = &routes[2]["handle"][0];
        assert_eq!(check["upstreams"][0]["dial"], "127.0.0.1:4100");
        assert_eq!(check["rewrite"]["uri"], "/.pipe/check");
        assert_eq!(
            check["headers"]["request"]["set"]["Pipe-Allow"],
            json!(["*@example.com group:ops"])
        );
        let passed = &check["handle_response"][0]["routes"][0]["handle"][0]["request"];
        assert_eq!(
            passed["set"]["X-Forwarded-Email"],
            json!(["{http.reverse_proxy.header.X-Forwarded-Email}"])
        );
        let strip = passed["replace"]["Cookie"][0]["search_regexp"]
            .as_str()
            .unwrap();
        assert!(strip.contains("__Host-pipe"), "{strip}");
        assert_eq!(
            routes[3]["handle"][0]["upstreams"][0]["dial"],
            "127.0.0.1:4000"
        );
    }

    #[test]
    fn a_hostile_user_name_stays_one_json_string() {
        let evil = r#"x"}],"hash":{"algorithm":"none"#;
        let rules = RouteRules {
            basic_auth: Some((evil.into(), "h".into())),
            ..Default::default()
        };
        let text = serde_json::to_string(&handlers(1, &rules)).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        let basic = &back[0]["routes"][0]["handle"][0]["providers"]["http_basic"];
        assert_eq!(basic["accounts"][0]["username"], evil);
        assert_eq!(basic["hash"]["algorithm"], "bcrypt");
    }
}
