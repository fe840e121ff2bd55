//! The request inspector (`pipec --inspect [ADDR]`, `inspect = true` per forward): for
//! http forwards and tcp forwards marked as HTTP, the HTTP/1.1 exchanges on the way to
//! and from the local service are recorded as they pass (`parse`, `store`, `tap`),
//! without changing a byte, and shown on a page with a JSON API and replay (`server`).
//!
//! It does not decide which forwards are inspected (the config does) and it never
//! buffers traffic: a connection it cannot follow is passed through unread.

pub mod parse;
mod server;
pub mod store;
mod tap;

pub use server::serve;
pub use store::{Exchange, Recorder, Store, DEFAULT_BODY_CAP, DEFAULT_CAPACITY};
pub use tap::Tap;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// Where the inspector listens when `--inspect` is given without an address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:4040";

/// The process's inspector, once `pipec` started one.
static STORE: OnceLock<Arc<Store>> = OnceLock::new();

/// Makes `store` the one inspected streams record into (the first call wins).
pub fn install(store: Arc<Store>) {
    let _ = STORE.set(store);
}

/// The running inspector's store, if any.
pub fn store() -> Option<Arc<Store>> {
    STORE.get().cloned()
}

/// Resolves the inspect address; without a token anything but loopback is refused, as
/// the admin refuses it (the inspector shows whole requests, credentials included, and
/// replays them).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use pipe::client::inspect::addrs;
/// assert!(addrs("127.0.0.1:0", false).await.is_ok());
/// let e = addrs("0.0.0.0:0", false).await.unwrap_err();
/// assert!(e.contains("set --inspect-token"), "{e}");
/// assert!(addrs("0.0.0.0:0", true).await.is_ok());
/// # });
/// ```
pub async fn addrs(addr: &str, has_token: bool) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("invalid inspect address {addr:?}: {e}"))?
        .collect();
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        _ if addrs.is_empty() => Err(format!("invalid inspect address {addr:?}: no address")),
        Some(a) if !has_token => Err(format!(
            "refusing to serve the inspector on {a}: it is not a loopback address and no \
             inspect token is set (set --inspect-token, or bind it to 127.0.0.1); it \
             shows whole requests, credentials included"
        )),
        _ => Ok(addrs),
    }
}

/// Why the inspector did not start: a bad address (exit 2) or one that cannot be
/// bound (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Address(String),
    #[error("cannot listen on inspect address {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
}

impl StartError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Address(_) => 2,
            StartError::Bind { .. } => 1,
        }
    }
}

/// Binds the inspector, makes it the process's, and serves it until `shutdown`;
/// returns the bound address. With `token`, its API answers only requests that carry
/// it as a bearer token; the page itself asks for it.
pub async fn start(
    addr: &str,
    token: Option<crate::auth::Token>,
    forwards: Vec<crate::config::ForwardSpec>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<SocketAddr, StartError> {
    let addrs = self::addrs(addr, token.is_some())
        .await
        .map_err(StartError::Address)?;
    let listener = tokio::net::TcpListener::bind(&addrs[..])
        .await
        .map_err(|error| StartError::Bind {
            addr: addr.to_string(),
            error,
        })?;
    let local = listener.local_addr().map_err(|error| StartError::Bind {
        addr: addr.to_string(),
        error,
    })?;
    let store = Store::new(DEFAULT_CAPACITY, DEFAULT_BODY_CAP);
    install(store.clone());
    tokio::spawn(serve(listener, store, token, forwards, shutdown));
    Ok(local)
}
