//! The names Caddy's routes and the sign-in gate share: paths, headers and cookies.
//! One place, so that what Caddy strips and what the gate reads cannot drift apart.

/// Every path under this prefix belongs to pipe, not to the forwarded service.
pub const PATH_PREFIX: &str = "/.pipe/";
/// Where Caddy asks the gate about each request (never reachable by a visitor: the
/// headers it relies on are deleted from visitors' requests).
pub const CHECK_PATH: &str = "/.pipe/check";
/// The issuer sends the browser back here with the authorization code.
pub const CALLBACK_PATH: &str = "/.pipe/callback";
/// Ends the visitor's session.
pub const SIGN_OUT_PATH: &str = "/.pipe/sign-out";

/// Set by Caddy on requests to the gate: the visitor's `Host` (with its port).
pub const HOST_HEADER: &str = "Pipe-Host";
/// Set by Caddy on checks: the path and query the visitor asked for.
pub const URI_HEADER: &str = "Pipe-Uri";
/// Set by Caddy on checks: the forward's `oidc-allow` patterns, space-separated.
pub const ALLOW_HEADER: &str = "Pipe-Allow";
/// The identity the local service receives (and may trust: a visitor's own copies
/// are deleted).
pub const EMAIL_HEADER: &str = "X-Forwarded-Email";
pub const USER_HEADER: &str = "X-Forwarded-User";

/// The session cookie. The `__Host-` prefix makes browsers refuse it unless it is
/// `Secure`, has `Path=/` and no `Domain`: it can only ever be the one subdomain's.
pub const SESSION_COOKIE: &str = "__Host-pipe";
/// Binds a sign-in in progress to the browser that started it (login CSRF).
pub const STATE_COOKIE: &str = "__Host-pipe-state";
/// What Caddy removes from the `Cookie` header before the request reaches the
/// service: both pipe cookies, wherever they stand in the header.
pub const COOKIE_STRIP_REGEXP: &str = r"(^|;)\s*__Host-pipe(-state)?=[^;]*";
