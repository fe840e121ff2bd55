//! The request inspector (`pipec --inspect [ADDR]`, `inspect = true` per forward): for
//! http forwards and tcp forwards marked as HTTP, the HTTP/1.1 exchanges on the way to
//! and from the local service are recorded as they pass (`parse`, `recorder`, `store`,
//! `tap`), without changing a byte, and shown on a page with a JSON API (`server`),
//! filters (`filter`), "copy as curl" (`curl`) and replay (`replay`).
//!
//! It does not decide which forwards are inspected (the config does) and it never
//! buffers traffic: a connection it cannot follow is passed through unread. Unfinished
//! heads share one memory budget (`budget`); past it connections pass through unread
//! and the page says how many.

pub mod budget;
pub mod curl;
pub mod filter;
pub mod parse;
pub mod recorder;
mod replay;
mod server;
pub mod store;
mod tap;

pub use recorder::Recorder;
pub use server::serve;
pub use store::{Body, Exchange, Source, Store, DEFAULT_BODY_CAP, DEFAULT_CAPACITY};
pub use tap::Tap;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// Where the inspector listens when `--inspect` is given without an address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:4040";
/// Ports tried from the default one on when it is busy (a second `pipec` on the same
/// machine takes 4041, and so on): enough for every client one person runs.
pub const NEXT_FREE_TRIES: u16 = 20;

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
    #[error("cannot listen on inspect address {addr}: {error}{hint}")]
    Bind {
        addr: String,
        error: std::io::Error,
        /// What to do about it, when there is something to say.
        hint: &'static str,
    },
}

/// Said when an address the user gave is taken.
const BUSY_HINT: &str = " (another pipec may be inspecting there: give another port, \
     e.g. --inspect 127.0.0.1:4041, or --inspect alone to take the next free one)";

impl StartError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Address(_) => 2,
            StartError::Bind { .. } => 1,
        }
    }
}

/// How the inspector is to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `ADDR` as given (or the default).
    pub addr: String,
    /// `addr` is the default: when busy, take the next free port after it.
    pub next_free: bool,
    /// With a token, the API answers only requests that carry it as a bearer token.
    pub token: Option<crate::auth::Token>,
    /// Host names answered besides its own address, localhost and loopback literals.
    pub hosts: Vec<String>,
}

/// Binds the inspector, makes it the process's, and serves it until `shutdown`;
/// returns the bound address.
pub async fn start(
    opts: Options,
    forwards: Vec<crate::config::ForwardSpec>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<SocketAddr, StartError> {
    let addrs = self::addrs(&opts.addr, opts.token.is_some())
        .await
        .map_err(StartError::Address)?;
    let tries = if opts.next_free { NEXT_FREE_TRIES } else { 1 };
    let listener = bind_from(&addrs, tries).await.map_err(|error| {
        let busy = error.kind() == std::io::ErrorKind::AddrInUse;
        StartError::Bind {
            addr: opts.addr.clone(),
            error,
            hint: if busy && !opts.next_free {
                BUSY_HINT
            } else {
                ""
            },
        }
    })?;
    let local = listener.local_addr().map_err(|error| StartError::Bind {
        addr: opts.addr.clone(),
        error,
        hint: "",
    })?;
    let store = Store::new(DEFAULT_CAPACITY, DEFAULT_BODY_CAP);
    install(store.clone());
    let served = serve(listener, store, opts.token, opts.hosts, forwards, shutdown);
    tokio::spawn(served);
    Ok(local)
}

/// Binds `addrs`, or the same addresses `n` ports up for the first `n < tries` that
/// are free; any error but "address in use" ends the search.
pub async fn bind_from(
    addrs: &[SocketAddr],
    tries: u16,
) -> std::io::Result<tokio::net::TcpListener> {
    let mut step = 0u16;
    loop {
        let shifted: Vec<SocketAddr> = addrs
            .iter()
            .filter_map(|a| {
                let port = a.port().checked_add(step)?;
                Some(SocketAddr::new(a.ip(), port))
            })
            .collect();
        match tokio::net::TcpListener::bind(&shifted[..]).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && step + 1 < tries => {
                step += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_default_moves_up_and_a_busy_given_address_does_not() {
        let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let busy = held.local_addr().unwrap();
        let e = bind_from(&[busy], 1).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        let l = bind_from(&[busy], NEXT_FREE_TRIES).await.unwrap();
        let got = l.local_addr().unwrap().port();
        assert!(
            got > busy.port() && got < busy.port() + NEXT_FREE_TRIES,
            "{got}"
        );
    }

    #[tokio::test]
    async fn the_busy_error_says_what_to_do() {
        let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let opts = Options {
            addr: held.local_addr().unwrap().to_string(),
            ..Options::default()
        };
        let e = start(opts, Vec::new(), Default::default())
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 1);
        let text = e.to_string();
        assert!(text.contains("--inspect alone"), "{text}");
    }
}
