//! Noticing that Caddy lost our routes and putting them back.
//!
//! Caddy restarted from its Caddyfile (or reloaded by someone else) forgets every
//! route `piped` added, and visitors get the catch-all's 404 while pipec, the API and
//! the dashboard still show the tunnel live. So `piped` keeps a record of the routes
//! it published and, every [`CHECK_INTERVAL`], compares it with the ids in Caddy's
//! config; a missing route is added again, with a log line.

use super::{Caddy, CaddyError, Published};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How often Caddy's config is compared with our routes: how long visitors can get
/// 404s after a Caddy restart. One GET of a small JSON document per interval costs
/// Caddy nothing measurable.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// A route this process published and has not taken down.
#[derive(Debug, Clone)]
pub(super) struct LiveRoute {
    pub published: Published,
    pub host: String,
    pub port: u16,
    /// The access rules it was published with, to publish it again the same way.
    pub rules: super::RouteRules,
}

impl Caddy {
    fn live(&self) -> std::sync::MutexGuard<'_, Vec<LiveRoute>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn remember(&self, route: LiveRoute) {
        self.live().push(route);
    }

    pub(super) fn forget(&self, p: &Published) {
        self.live().retain(|r| r.published.route_id != p.route_id);
    }

    fn is_live(&self, route_id: &str) -> bool {
        self.live().iter().any(|r| r.published.route_id == route_id)
    }

    /// Adds back every live route Caddy no longer has; returns how many.
    pub async fn republish_missing(&self) -> Result<usize, CaddyError> {
        let live: Vec<LiveRoute> = self.live().clone();
        if live.is_empty() {
            return Ok(0);
        }
        let config = self.api.get_json("/config/").await?;
        let mut ids = Vec::new();
        super::json::collect_ids(&config, &mut ids);
        let present: HashSet<String> = ids.into_iter().collect();
        let mut added = 0;
        for r in live
            .iter()
            .filter(|r| !present.contains(&r.published.route_id))
        {
            // A policy left without its route would be added twice: take it out first
            // (an absent id counts as removed).
            if let Some(id) = &r.published.policy_id {
                self.api.delete_id(id).await?;
            }
            self.add(&r.published, &r.host, r.port, &r.rules).await?;
            if !self.is_live(&r.published.route_id) {
                // The tunnel closed while we were adding: take it back out.
                let _ = self.unpublish(&r.published).await;
                continue;
            }
            added += 1;
            warn!(host = %r.host, id = %r.published.route_id,
                "Caddy had lost the route for {} (restarted or reloaded?); published it again", r.host);
        }
        Ok(added)
    }

    /// Checks every [`CHECK_INTERVAL`] until `stop` is cancelled.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = crate::transport::ticker::interval(CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.republish_missing().await {
                debug!(error = %e, detail = ?e, "cannot compare our routes with Caddy's config");
            }
        }
    }
}
