//! Sign-in for http forwards (`auth=oidc`): visitors prove who they are at the
//! operator's OpenID Connect issuer before any request of theirs reaches the tunnel.
//!
//! The shape is Caddy's forward-auth pattern (see `caddy::rules`): Caddy asks this
//! module's gate, a loopback HTTP server of piped, about every request and lets it
//! through only on a 2xx answer, with the identity headers the gate names. The data
//! path (Caddy → tunnel) is untouched, and every request is judged on its own, never
//! a connection (Caddy carries many visitors over one upstream connection).
//!
//! Owns the gate's HTTP answers (`gate`), the issuer (`idp`: discovery, keys, code
//! exchange, token checks), sessions sealed in a cookie (`seal`), sign-ins in progress
//! (`pending`), the `oidc-allow` rules (`policy`) and the names Caddy and the gate
//! share (`names`). It does not bind the gate's listener or publish routes (`server`).

mod fetch;
mod gate;
mod idp;
pub mod names;
mod pages;
mod pending;
mod policy;
mod seal;

pub use gate::{router, MAX_COOKIE_HEADER};
pub use idp::{TokenError, MAX_KEYS, MAX_TOKEN, MIN_KEY_FETCH_INTERVAL};
pub use pages::escape;
pub use pending::{MAX_PENDING, PENDING_TTL};
pub use policy::Allow;
pub use seal::{Identity, Refused, Sealer, KEY_FILE, MAX_COOKIE_VALUE, MAX_GROUPS};

use crate::config::ServerConfig;
use std::time::Duration;

/// How long a session lasts: a working day, after which the visitor passes by the
/// issuer again (usually without typing anything, the issuer's own session being
/// longer). Revoking someone at the issuer takes effect by then at the latest.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Everything the gate needs, shared by its requests.
pub struct SignIn {
    issuer: idp::Issuer,
    sealer: Sealer,
    pending: pending::Pending,
    /// Our domain: the gate answers for its subdomains only.
    domain: String,
    lifetime: Duration,
}

/// Where the session key came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Cluster,
    StateDir,
    Process,
}

impl SignIn {
    /// The sign-in of a server configured with `--oidc-issuer`; `None` without one.
    /// The key: derived from the cluster secret in a cluster (every node opens every
    /// node's sessions), else kept in the state directory when one is configured
    /// (`--state-dir` or `$STATE_DIRECTORY`), else random per process.
    /// The client secret file is read here, when the server starts.
    pub fn from_config(cfg: &ServerConfig) -> Result<Option<(SignIn, KeyOrigin)>, String> {
        let (Some(oidc), Some(domain)) = (&cfg.oidc, &cfg.domain) else {
            return Ok(None);
        };
        let state_dir = cfg.state_dir.clone().or_else(|| {
            std::env::var_os("STATE_DIRECTORY")
                .filter(|v| !v.is_empty())
                .map(|_| crate::transport::selfsigned::state_dir(None))
                .and_then(Result::ok)
        });
        let (sealer, origin) = match (&cfg.cluster, state_dir) {
            (Some(c), _) => (
                Sealer::from_cluster_secret(c.secret.expose()),
                KeyOrigin::Cluster,
            ),
            (None, Some(dir)) => (Sealer::from_state_dir(&dir)?, KeyOrigin::StateDir),
            (None, None) => (Sealer::random(), KeyOrigin::Process),
        };
        let secret = oidc.client_secret.load()?;
        Ok(Some((
            SignIn::new(oidc.clone(), secret, domain, sealer, SESSION_LIFETIME),
            origin,
        )))
    }

    pub fn new(
        oidc: crate::config::OidcConfig,
        secret: crate::auth::Token,
        domain: &str,
        sealer: Sealer,
        lifetime: Duration,
    ) -> SignIn {
        SignIn {
            issuer: idp::Issuer::new(oidc, secret),
            sealer,
            pending: pending::Pending::default(),
            domain: domain.to_string(),
            lifetime,
        }
    }
}
