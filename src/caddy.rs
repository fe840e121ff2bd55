//! Caddy's admin API, as far as `piped` needs it: publish an http forward as a route
//! `SUB.DOMAIN → 127.0.0.1:PORT` on one Caddy HTTP server, take it down again, and
//! find the routes an earlier `piped` left behind when it crashed.
//!
//! Owns the JSON sent to Caddy (serde structs, never formatted strings), the `@id`
//! naming and the HTTP/1.1 calls. It does not choose subdomains, bind listeners or
//! keep a record of live routes: `server::http` does the first two, and Caddy's own
//! config is the record.
//!
//! Every object we create carries an `@id` of the form
//! `pipe:DOMAIN:BOOT:SUB:TUNNEL` ([`Caddy::route_id`]). `pipe:DOMAIN:` marks the
//! objects of the `piped` serving DOMAIN, so a restarted server can remove what a
//! crashed one left; `BOOT` is random per process, so that cleanup never touches a
//! live route of this process; the tunnel id keeps two tunnels that briefly share a
//! subdomain (one closing, one opening) from sharing an id (Caddy 2.6 does not refuse
//! duplicate ids, and `DELETE /id/X` would remove the wrong route).

mod json;

pub use json::{admin_base, path_segment, random_label};

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use json::truncate;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tracing::{debug, info, warn};

/// One admin call, connect to last byte. Each change makes Caddy reload its whole
/// config, which takes milliseconds on loopback; this bounds a hung Caddy.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin response read (a whole config, when looking for stale routes).
const MAX_RESPONSE: usize = 64 << 20;
/// Length of the per-process part of the ids, and of random subdomains.
const NONCE_LEN: usize = 8;

/// Why a call to Caddy failed. The `Display` text is safe to send to a tunnel client
/// (it names no internal address); `detail` is for the server's log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaddyError {
    /// Operator's config: the caddy-admin URL is unusable.
    #[error("invalid caddy-admin URL {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    /// Outage: nothing answers at the admin endpoint.
    #[error("Caddy's admin API is unreachable")]
    Unreachable { detail: String },
    #[error("Caddy's admin API did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    /// Caddy answered with an error status (its config would not load, say).
    #[error("Caddy refused the change (HTTP {status})")]
    Refused { status: u16, detail: String },
    /// Operator's config: `--caddy-server` names no server in Caddy's config.
    #[error("Caddy has no HTTP server named {0:?} (see --caddy-server)")]
    NoServer(String),
    #[error("unexpected answer from Caddy's admin API")]
    BadAnswer { detail: String },
    /// Our bug if it happens: subdomains are validated before they get here.
    #[error("{0:?} is not a valid subdomain")]
    InvalidSubdomain(String),
}

/// The Caddy objects of one published tunnel, to remove when it closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub route_id: String,
    pub policy_id: Option<String>,
}

/// A client for one Caddy admin endpoint and one of its HTTP servers.
pub struct Caddy {
    /// `http://HOST:PORT`, or why the configured URL is unusable.
    base: Result<String, CaddyError>,
    server: String,
    domain: String,
    tls_policy: bool,
    /// Random per process: ids of this process start with `pipe:DOMAIN:BOOT:`.
    boot: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Set once the leftovers of earlier processes have been removed.
    cleaned: AtomicBool,
    /// Ids of this process whose removal failed (Caddy was down).
    failed: Mutex<Vec<String>>,
}

impl Caddy {
    /// A client when the config asks for http forwards (`domain` and `caddy-admin`).
    pub fn from_config(cfg: &crate::config::ServerConfig) -> Option<Caddy> {
        let (url, domain) = (cfg.caddy_admin.as_ref()?, cfg.domain.as_ref()?);
        Some(Caddy::new(
            url,
            &cfg.caddy_server,
            domain,
            cfg.caddy_tls_policy,
        ))
    }

    /// A client; a bad URL is reported by [`Caddy::check`] and by every call.
    pub fn new(url: &str, server: &str, domain: &str, tls_policy: bool) -> Caddy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(REQUEST_TIMEOUT));
        connector.set_nodelay(true);
        // One connection per call: calls are rare, and a pooled connection Caddy has
        // closed meanwhile would turn a PUT into a spurious failure.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Caddy {
            base: admin_base(url),
            server: server.to_string(),
            domain: domain.to_string(),
            tls_policy,
            boot: random_label(NONCE_LEN),
            client,
            cleaned: AtomicBool::new(false),
            failed: Mutex::default(),
        }
    }

    /// The public host of a subdomain.
    pub fn host(&self, sub: &str) -> String {
        format!("{sub}.{}", self.domain)
    }

    /// The `@id` prefix of every object made by any `piped` serving this domain.
    pub fn id_prefix(&self) -> String {
        format!("pipe:{}:", self.domain)
    }

    /// The `@id` of the route of tunnel `tunnel` publishing `sub`.
    pub fn route_id(&self, sub: &str, tunnel: u64) -> String {
        format!("{}{}:{sub}:{tunnel}", self.id_prefix(), self.boot)
    }

    /// Fails when the configured URL cannot work (a startup error).
    pub fn check(&self) -> Result<(), CaddyError> {
        self.base.clone().map(drop)
    }

    /// Adds the route for `sub` (and its TLS policy when configured) in front of the
    /// server's other routes. On error nothing of it is left in Caddy.
    pub async fn publish(
        &self,
        sub: &str,
        tunnel: u64,
        port: u16,
    ) -> Result<Published, CaddyError> {
        if !crate::config::valid_subdomain(sub) {
            return Err(CaddyError::InvalidSubdomain(truncate(sub)));
        }
        self.retry_failed_removals().await;
        if !self.cleaned.load(Ordering::Relaxed) {
            if let Err(e) = self.remove_stale().await {
                debug!(error = ?e, "stale Caddy routes not removed yet");
            }
        }
        let host = self.host(sub);
        let route_id = self.route_id(sub, tunnel);
        let published = Published {
            policy_id: self.tls_policy.then(|| format!("{route_id}:tls")),
            route_id,
        };
        if let Err(e) = self.add(&published, &host, port).await {
            // A call that timed out may still have been applied: take back both ids
            // (absent ones count as removed).
            if let Err(e2) = self.unpublish(&published).await {
                warn!(error = %e2, detail = ?e2, "cannot take back a half-added route; retried later");
            }
            return Err(e);
        }
        Ok(published)
    }

    async fn add(&self, p: &Published, host: &str, port: u16) -> Result<(), CaddyError> {
        // The policy goes first: the reload that adds the route already manages the
        // host's certificate, and must find the policy then.
        if let Some(id) = &p.policy_id {
            let policy = json::policy(id, host)?;
            self.insert_first("/config/apps/tls/automation/policies", &policy, None)
                .await?;
        }
        let server = format!("/config/apps/http/servers/{}", path_segment(&self.server));
        let route = json::route(&p.route_id, host, port)?;
        self.insert_first(&format!("{server}/routes"), &route, Some(&server))
            .await
    }

    /// Removes what [`Caddy::publish`] added. Objects already gone count as removed;
    /// ids that could not be removed are retried before the next publish, so a dead
    /// route cannot reach whichever tunnel gets its loopback port next.
    pub async fn unpublish(&self, p: &Published) -> Result<(), CaddyError> {
        let mut result = Ok(());
        for id in std::iter::once(&p.route_id).chain(&p.policy_id) {
            if let Err(e) = self.delete_id(id).await {
                self.failed_removals().push(id.clone());
                result = Err(e);
            }
        }
        result
    }

    fn failed_removals(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn retry_failed_removals(&self) {
        let ids = std::mem::take(&mut *self.failed_removals());
        for id in ids {
            match self.delete_id(&id).await {
                Ok(()) => info!(id, "removed a route whose removal had failed"),
                Err(e) => {
                    debug!(id, error = %e, "route still not removed");
                    self.failed_removals().push(id);
                }
            }
        }
    }

    /// Removes objects left by earlier `piped` processes for this domain; returns
    /// how many. Objects of this process are never touched.
    pub async fn remove_stale(&self) -> Result<usize, CaddyError> {
        let config = self.get_json("/config/").await?;
        let mine = format!("{}{}:", self.id_prefix(), self.boot);
        let mut ids = Vec::new();
        json::collect_ids(&config, &mut ids);
        ids.retain(|id| id.starts_with(&self.id_prefix()) && !id.starts_with(&mine));
        for id in &ids {
            self.delete_id(id).await?;
            info!(id, "removed a Caddy object left by an earlier piped");
        }
        self.cleaned.store(true, Ordering::Relaxed);
        Ok(ids.len())
    }

    /// Inserts `value` at the front of the array at `path`, creating the array when
    /// absent. `parent`, when given, must exist (a server is never created here).
    async fn insert_first(
        &self,
        path: &str,
        value: &Value,
        parent: Option<&str>,
    ) -> Result<(), CaddyError> {
        // At most twice: another writer may create the array between our GET and PUT.
        for _ in 0..2 {
            match self.get_json_or_null(path).await? {
                Value::Array(_) => {
                    return self
                        .call(Method::PUT, &format!("{path}/0"), Some(value))
                        .await
                        .map(drop);
                }
                Value::Null => {
                    if let Some(parent) = parent {
                        if self.get_json_or_null(parent).await?.is_null() {
                            return Err(CaddyError::NoServer(self.server.clone()));
                        }
                    }
                    let array = Value::Array(vec![value.clone()]);
                    match self.call(Method::PUT, path, Some(&array)).await {
                        Err(CaddyError::Refused { status: 409, .. }) => continue,
                        r => return r.map(drop),
                    }
                }
                other => {
                    return Err(CaddyError::BadAnswer {
                        detail: format!("{path} is not an array: {}", truncate(&other.to_string())),
                    })
                }
            }
        }
        Err(CaddyError::BadAnswer {
            detail: format!("{path} keeps changing under us"),
        })
    }

    async fn delete_id(&self, id: &str) -> Result<(), CaddyError> {
        match self
            .call(Method::DELETE, &format!("/id/{}", path_segment(id)), None)
            .await
        {
            Ok(_) | Err(CaddyError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Like `get_json`, with a missing parent object read as `null` too (Caddy answers
    /// 400 "invalid traversal path" when a path runs through a missing key).
    async fn get_json_or_null(&self, path: &str) -> Result<Value, CaddyError> {
        match self.get_json(path).await {
            Err(CaddyError::Refused { status: 400, .. }) => Ok(Value::Null),
            r => r,
        }
    }

    async fn get_json(&self, path: &str) -> Result<Value, CaddyError> {
        let body = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&body).map_err(|e| CaddyError::BadAnswer {
            detail: format!("GET {path}: {e}"),
        })
    }

    /// One admin call; a non-2xx status is `Refused` with Caddy's error text.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, CaddyError> {
        let base = self.base.clone()?;
        let uri: Uri = format!("{base}{path}")
            .parse()
            .map_err(|e| CaddyError::BadAnswer {
                detail: format!("request URI for {path}: {e}"),
            })?;
        let req = Request::builder().method(method.clone()).uri(uri);
        let (req, bytes) = match body {
            Some(v) => (
                req.header(header::CONTENT_TYPE, "application/json"),
                serde_json::to_vec(v).map_err(|e| CaddyError::BadAnswer {
                    detail: format!("encoding JSON: {e}"),
                })?,
            ),
            None => (req, Vec::new()),
        };
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| CaddyError::BadAnswer {
                detail: format!("building request: {e}"),
            })?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| CaddyError::Unreachable {
                    detail: format!("{method} {base}{path}: {e:?}"),
                })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| CaddyError::BadAnswer {
                    detail: format!("{method} {path}: reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, CaddyError>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| CaddyError::Timeout)??;
        if status.is_success() {
            return Ok(body);
        }
        Err(CaddyError::Refused {
            status: status.as_u16(),
            detail: format!("{method} {path}: {}", json::error_text(status, &body)),
        })
    }
}

/// At server start: refuses an unusable caddy-admin URL, and removes what a crashed
/// `piped` left in Caddy. Caddy being down is not fatal here: it is retried before
/// the first route is added.
pub async fn startup(caddy: Option<&Caddy>) -> Result<(), CaddyError> {
    let Some(caddy) = caddy else {
        return Ok(());
    };
    caddy.check()?;
    match caddy.remove_stale().await {
        Ok(n) => debug!(removed = n, "checked Caddy for stale routes"),
        Err(e) => {
            warn!(error = %e, detail = ?e, "cannot check Caddy for stale routes; will retry before the first http forward")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publish_refuses_a_subdomain_that_is_not_a_dns_label() {
        // Nothing listens on port 9: the check comes before any call.
        let c = Caddy::new("http://127.0.0.1:9", "srv0", "example.test", false);
        for bad in [r#"a","dial":"x"#, "Bad_Name", "a.b", "", "-x"] {
            match c.publish(bad, 1, 4000).await {
                Err(CaddyError::InvalidSubdomain(_)) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn ids_are_prefixed_per_domain_and_unique_per_process() {
        let a = Caddy::new("http://127.0.0.1:2019", "srv0", "example.test", false);
        let b = Caddy::new("http://127.0.0.1:2019", "srv0", "example.test", false);
        let id = a.route_id("myapp", 7);
        assert!(id.starts_with("pipe:example.test:"));
        assert!(id.ends_with(":myapp:7"));
        assert!(id.starts_with(&b.id_prefix()));
        assert_ne!(id, b.route_id("myapp", 7));
    }

    #[tokio::test]
    async fn a_bad_url_is_reported_by_check_and_calls() {
        let c = Caddy::new("https://127.0.0.1:2019", "srv0", "example.test", false);
        assert!(matches!(c.check(), Err(CaddyError::BadUrl { .. })));
        assert!(matches!(
            c.remove_stale().await,
            Err(CaddyError::BadUrl { .. })
        ));
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let c = Caddy::new(
            &format!("http://127.0.0.1:{port}"),
            "srv0",
            "example.test",
            false,
        );
        let err = c.publish("myapp", 1, 4000).await.unwrap_err();
        assert!(matches!(err, CaddyError::Unreachable { .. }), "{err:?}");
        assert_eq!(err.to_string(), "Caddy's admin API is unreachable");
    }
}
