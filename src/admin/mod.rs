//! The admin server: dashboard page, JSON API, Prometheus metrics, health check.
//!
//! Owns the HTTP routes, the bearer-token check and the rule that a non-loopback admin
//! address needs a token. It does not bind (the caller passes a bound listener, see
//! `Server::start_admin`) and it does not change the server's state except to close a
//! tunnel (`State::close_tunnel`) or end a user's sessions on the operator's request.
//!
//! Routes: `GET /` (the dashboard), `GET /api/server`, `GET /api/clients`,
//! `GET /api/tunnels`, `DELETE /api/tunnels/{id}`, `DELETE /api/users/{name}/sessions`,
//! `GET /api/history` (the last 15 minutes of throughput and connections),
//! `GET /metrics`, and two that need no
//! token because the caller cannot send one and they reveal nothing worth a token:
//! `GET /healthz` and `GET /caddy/ask?domain=HOST` (Caddy's on-demand TLS check: 200 when
//! HOST is a live http tunnel, else 404).
//!
//! A browser cannot attach a bearer token when it navigates, so with a token set `GET /`
//! without one answers 401 *with the dashboard page as the body*: the page holds no data,
//! takes the token from a form, keeps it in sessionStorage (never in the URL) and
//! sends it on every API call.
//!
//! Every route but `/healthz` answers only a `Host` naming this server and refuses
//! cross-site changes (`guard`, shared with the inspector); connections are capped and
//! timed out (`conns`, likewise). `/healthz` stays open to any `Host`: platform health
//! checks name the machine as they please, and "ok" tells a rebinding page nothing.

mod api;
pub mod conns;
pub mod guard;
mod history;
mod process;
mod prom;

use crate::auth::Token;
use crate::server::state::State;
use axum::extract::{Request, State as Ext};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The dashboard: one self-contained page (no external resources).
const DASHBOARD: &str = include_str!("dashboard.html");

/// The page may run its own inline script and style and call back to this origin;
/// nothing else, so it works offline and injected markup could not load anything.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Why the admin server cannot start as configured (a config error: exit 2).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid admin address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error(
        "refusing to serve the admin on {addr}: it is not a loopback address and no \
         admin token is set (set --admin-token, or bind the admin to 127.0.0.1)"
    )]
    Exposed { addr: SocketAddr },
}

/// Resolves the configured admin address and applies the exposure rule: every address
/// it names must be loopback unless an admin token is set.
pub async fn admin_addrs(addr: &str, has_token: bool) -> Result<Vec<SocketAddr>, AdminError> {
    let bad = |reason: String| AdminError::BadAddress {
        addr: addr.to_string(),
        reason,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| bad(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("it resolves to no address".into()));
    }
    if !has_token {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(AdminError::Exposed { addr: *a });
        }
    }
    Ok(addrs)
}

/// What every handler sees.
struct Admin {
    state: Arc<State>,
    token: Option<Token>,
    history: Arc<history::History>,
}

type Shared = Arc<Admin>;

impl Admin {
    /// True when no token is configured or the request carries the right bearer token.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .is_some_and(|presented| token.matches(presented))
    }
}

/// The credentials of an `Authorization: Bearer T` header (the scheme is case-insensitive).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(rest.trim_start())
}

/// The routes, ready to serve; `history` is what `/api/history` shows.
fn router(state: Arc<State>, history: Arc<history::History>) -> Router {
    let token = state.config.admin_token.clone();
    let guard = guard::Guard::new(&state.config.admin_host);
    let admin = Arc::new(Admin {
        state,
        token,
        history,
    });
    let protected = Router::new()
        .route("/api/server", get(api::server))
        .route("/api/clients", get(api::clients))
        .route("/api/tunnels", get(api::tunnels))
        .route("/api/cluster", get(api::cluster))
        .route("/api/history", get(history_view))
        .route(
            "/api/tunnels/{id}",
            axum::routing::delete(api::close_tunnel),
        )
        .route(
            "/api/users/{name}/sessions",
            axum::routing::delete(api::end_user_sessions),
        )
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    Router::new()
        .route("/", get(dashboard))
        .route("/caddy/ask", get(api::caddy_ask))
        .merge(protected)
        .layer(middleware::from_fn_with_state(guard, guard::check))
        .route("/healthz", get(|| async { "ok" }))
        .layer(middleware::map_response(no_store))
        .with_state(admin)
}

/// Serves the admin routes on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let history = Arc::new(history::History::default());
    tokio::spawn(history::run(
        history.clone(),
        state.clone(),
        shutdown.clone(),
    ));
    conns::serve(listener, router(state, history), "admin", shutdown).await;
}

async fn require_token(Ext(admin): Ext<Shared>, req: Request, next: Next) -> Response {
    if admin.authorized(req.headers()) {
        return next.run(req).await;
    }
    debug!(path = %req.uri().path(), "admin request without the right token");
    let body = Json(api::ErrorBody {
        error: "missing or wrong bearer token (Authorization: Bearer <admin token>)",
    });
    (StatusCode::UNAUTHORIZED, challenge(), body).into_response()
}

fn challenge() -> [(header::HeaderName, HeaderValue); 1] {
    [(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"pipe admin\""),
    )]
}

async fn dashboard(Ext(admin): Ext<Shared>, headers: HeaderMap) -> Response {
    let page = (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DASHBOARD_CSP),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        Html(DASHBOARD),
    );
    if admin.authorized(&headers) {
        page.into_response()
    } else {
        (StatusCode::UNAUTHORIZED, challenge(), page).into_response()
    }
}

async fn history_view(Ext(admin): Ext<Shared>) -> Json<history::HistoryView> {
    Json(admin.history.view())
}

async fn metrics(Ext(admin): Ext<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        prom::render(&admin.state),
    )
}

/// Live numbers must never come from a cache, and no response is to be sniffed.
async fn no_store(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[tokio::test]
    async fn exposure_rule() {
        assert!(admin_addrs("127.0.0.1:0", false).await.is_ok());
        assert!(admin_addrs("[::1]:0", false).await.is_ok());
        assert!(matches!(
            admin_addrs("0.0.0.0:0", false).await,
            Err(AdminError::Exposed { .. })
        ));
        assert!(admin_addrs("0.0.0.0:0", true).await.is_ok());
        assert!(matches!(
            admin_addrs("not an address", true).await,
            Err(AdminError::BadAddress { .. })
        ));
    }
}
