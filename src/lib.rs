//! `pipe`: expose a port on a machine nobody can reach as a port on a public server,
//! over one multiplexed (yamux) connection. See `docs/PROTOCOL.md` for the wire format
//! and the README for usage.
//!
//! Layers: `protocol` (messages and framing), `transport` (sockets, yamux, splice),
//! `server` and `client` (the two programs' logic), `relay` (local socat-style
//! forwarding), `admin` (dashboard, JSON API, metrics), `caddy` (routes for http
//! forwards), `auth`, `limit`, `config`, `logging`.

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod caddy;
pub mod client;
pub mod cluster;
pub mod config;
pub mod limit;
pub mod logging;
pub mod protocol;
pub mod relay;
pub mod server;
pub mod signals;
pub mod signin;
pub mod transport;

/// `--version` text: the software version and the wire protocol version.
pub const VERSION_LINE: &str = concat!(env!("CARGO_PKG_VERSION"), " (protocol v5)");
// `concat!` takes only literals: bumping the protocol version must update the line above.
const _: () = assert!(protocol::PROTOCOL_VERSION == 5, "update VERSION_LINE");
