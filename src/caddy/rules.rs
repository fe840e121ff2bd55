//! The visitor rules of an http forward as Caddy handlers: `remote_ip` matchers for
//! allow/deny (Caddy sees the visitor's own address; piped sees only Caddy), HTTP
//! basic auth against a bcrypt hash, and, when the client wants the visitor's address,
//! a `Pipe-Visitor` request header with one upstream connection per request.
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

/// What Caddy enforces in front of one http forward.
#[derive(Debug, Clone, Default)]
pub struct RouteRules {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    /// User name and bcrypt hash.
    pub basic_auth: Option<(String, String)>,
    /// Name the visitor in a request header, one upstream connection per request.
    pub visitor_header: bool,
}

impl RouteRules {
    fn is_plain(&self) -> bool {
        self.allow.is_empty()
            && self.deny.is_empty()
            && self.basic_auth.is_none()
            && !self.visitor_header
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
    routes.push(json!({ "handle": [proxy] }));
    json!([{ "handler": "subroute", "routes": routes }])
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
