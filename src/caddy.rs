//! Caddy's admin API, as far as `piped` needs it: publish an http forward as a route
//! `SUB.DOMAIN → 127.0.0.1:PORT` on one Caddy HTTP server, take it down again, and
//! find the routes an earlier `piped` left behind when it crashed.
//!
//! Owns the JSON sent to Caddy (serde structs, never formatted strings), the `@id`
//! naming and the HTTP/1.1 calls, and the record of the routes this process
//! published (`watch`), so that routes a restarted Caddy lost are put back. It does
//! not choose subdomains or bind listeners: `server::http` does.
//!
//! Every object we create carries an `@id` of the form
//! `pipe:DOMAIN:BOOT:SUB:TUNNEL` ([`Caddy::route_id`]). `pipe:DOMAIN:` marks the
//! objects of the `piped` serving DOMAIN, so a restarted server can remove what a
//! crashed one left; `BOOT` is random per process, so that cleanup never touches a
//! live route of this process; the tunnel id keeps two tunnels that briefly share a
//! subdomain (one closing, one opening) from sharing an id (Caddy 2.6 does not refuse
//! duplicate ids, and `DELETE /id/X` would remove the wrong route).

mod api;
mod json;
mod rules;
mod watch;

pub use json::{admin_base, path_segment, random_label};
pub use rules::{hash_credentials, RouteRules, SignInRoute, VISITOR_HEADER};
pub use watch::CHECK_INTERVAL;

use api::{Api, REQUEST_TIMEOUT};
use http::Method;
use json::truncate;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tracing::{debug, info, warn};

/// Inserts tried when the connection broke after the request went out and the
/// object turned out not to be there.
const INSERT_ATTEMPTS: usize = 3;
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
    api: Api,
    server: String,
    domain: String,
    tls_policy: bool,
    /// Random per process: ids of this process start with `pipe:DOMAIN:BOOT:`.
    boot: String,
    /// Set once the leftovers of earlier processes have been removed.
    cleaned: AtomicBool,
    /// Ids of this process whose removal failed (Caddy was down).
    failed: Mutex<Vec<String>>,
    /// Routes published and not yet taken down, to put back if Caddy loses them.
    live: Mutex<Vec<watch::LiveRoute>>,
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
        Caddy {
            api: Api::new(url),
            server: server.to_string(),
            domain: domain.to_string(),
            tls_policy,
            boot: random_label(NONCE_LEN),
            cleaned: AtomicBool::new(false),
            failed: Mutex::default(),
            live: Mutex::default(),
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
        self.api.check()
    }

    /// Adds the route for `sub` (and its TLS policy when configured) in front of the
    /// server's other routes. On error nothing of it is left in Caddy.
    pub async fn publish(
        &self,
        sub: &str,
        tunnel: u64,
        port: u16,
        rules: &RouteRules,
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
        if let Err(e) = self.add(&published, &host, port, rules).await {
            // A call that timed out may still have been applied: take back both ids
            // (absent ones count as removed).
            if let Err(e2) = self.unpublish(&published).await {
                warn!(error = %e2, detail = ?e2, "cannot take back a half-added route; retried later");
            }
            return Err(e);
        }
        self.remember(watch::LiveRoute {
            published: published.clone(),
            host,
            port,
            rules: rules.clone(),
        });
        Ok(published)
    }

    async fn add(
        &self,
        p: &Published,
        host: &str,
        port: u16,
        rules: &RouteRules,
    ) -> Result<(), CaddyError> {
        // The policy goes first: the reload that adds the route already manages the
        // host's certificate, and must find the policy then.
        if let Some(id) = &p.policy_id {
            let policy = json::policy(id, host)?;
            let policies = "/config/apps/tls/automation/policies";
            self.insert_first(policies, id, &policy, None).await?;
        }
        let server = format!("/config/apps/http/servers/{}", path_segment(&self.server));
        let route = json::route(&p.route_id, host, port, rules)?;
        let routes = format!("{server}/routes");
        self.insert_first(&routes, &p.route_id, &route, Some(&server))
            .await
    }

    /// Removes what [`Caddy::publish`] added. Objects already gone count as removed;
    /// ids that could not be removed are retried before the next publish, so a dead
    /// route cannot reach whichever tunnel gets its loopback port next.
    pub async fn unpublish(&self, p: &Published) -> Result<(), CaddyError> {
        self.forget(p);
        let mut result = Ok(());
        for id in std::iter::once(&p.route_id).chain(&p.policy_id) {
            if let Err(e) = self.api.delete_id(id).await {
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
            match self.api.delete_id(&id).await {
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
        let config = self.api.get_json("/config/").await?;
        let mine = format!("{}{}:", self.id_prefix(), self.boot);
        let mut ids = Vec::new();
        json::collect_ids(&config, &mut ids);
        ids.retain(|id| id.starts_with(&self.id_prefix()) && !id.starts_with(&mine));
        for id in &ids {
            self.api.delete_id(id).await?;
            info!(id, "removed a Caddy object left by an earlier piped");
        }
        self.cleaned.store(true, Ordering::Relaxed);
        Ok(ids.len())
    }

    /// Inserts `value` (whose `@id` is `id`) at the front of the array at `path`,
    /// creating the array when absent and appending when it is empty. `parent`, when given, must exist (a server is
    /// never created here).
    async fn insert_first(
        &self,
        path: &str,
        id: &str,
        value: &Value,
        parent: Option<&str>,
    ) -> Result<(), CaddyError> {
        let mut last = None;
        for _ in 0..INSERT_ATTEMPTS {
            let put = match self.api.get_json_or_null(path).await? {
                // Caddy 2.6 refuses `PUT …/0` on an empty array ("index out of
                // bounds"); appending to it puts the value first all the same. Should
                // another writer fill the array between our GET and POST, ours lands
                // after theirs: still present exactly once, only not first.
                Value::Array(a) if a.is_empty() => {
                    self.api.call(Method::POST, path, Some(value)).await
                }
                Value::Array(_) => {
                    self.api
                        .call(Method::PUT, &format!("{path}/0"), Some(value))
                        .await
                }
                Value::Null => {
                    if let Some(parent) = parent {
                        if self.api.get_json_or_null(parent).await?.is_null() {
                            return Err(CaddyError::NoServer(self.server.clone()));
                        }
                    }
                    let array = Value::Array(vec![value.clone()]);
                    self.api.call(Method::PUT, path, Some(&array)).await
                }
                other => {
                    let shown = truncate(&other.to_string());
                    return Err(CaddyError::BadAnswer {
                        detail: format!("{path} is not an array: {shown}"),
                    });
                }
            };
            match put {
                Ok(_) => return Ok(()),
                // Another writer created the array between our GET and PUT.
                Err(e @ CaddyError::Refused { status: 409, .. }) => last = Some(e),
                // The connection broke after the request went out: did it land?
                Err(e @ CaddyError::Unreachable { .. }) => {
                    if self.api.has_id(id).await? {
                        return Ok(());
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(CaddyError::BadAnswer {
            detail: format!("{path}: no insert attempt made"),
        }))
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
mod tests;
