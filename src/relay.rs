//! `pipec relay LISTEN TARGET`: accept on one endpoint, dial the other for each
//! connection, splice them with half-close preserved. A faster `socat ... fork`.
//!
//! The caller binds (`RelayListener::bind`), so tests can listen on port 0 and learn
//! the address; `run` accepts until cancelled and removes its unix socket file on exit.

use crate::config::Endpoint;
use crate::transport::{splice, tcp, SpliceOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

/// Pause after a failed accept (out of descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// A target that does not accept in this time counts as down for that connection.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// On stop, how long open connections get to finish.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{path}: a live socket is already listening there")]
    SocketInUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {endpoint}: {source}")]
    Bind { endpoint: String, source: io::Error },
}

/// A bound relay listener.
pub enum RelayListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl RelayListener {
    /// Binds `ep`. For `unix:`, a stale socket file (nothing accepting) is removed first;
    /// a live socket or a file that is not a socket is left alone and refused.
    pub async fn bind(ep: &Endpoint) -> Result<Self, RelayError> {
        let bind_err = |source| RelayError::Bind {
            endpoint: ep.to_string(),
            source,
        };
        match ep {
            Endpoint::Tcp { host, port } => Ok(RelayListener::Tcp(
                TcpListener::bind((host.as_str(), *port))
                    .await
                    .map_err(bind_err)?,
            )),
            Endpoint::Unix(path) => {
                clear_stale_socket(path).await?;
                let l = UnixListener::bind(path).map_err(bind_err)?;
                Ok(RelayListener::Unix(l, path.clone()))
            }
        }
    }

    /// What to print: `tcp:127.0.0.1:PORT` with the real port, or `unix:PATH`.
    pub fn describe(&self) -> String {
        match self {
            RelayListener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp:{a}"),
                Err(_) => "tcp:?".into(),
            },
            RelayListener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

async fn clear_stale_socket(path: &Path) -> Result<(), RelayError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(RelayError::NotASocket { path: path.into() });
    }
    if UnixStream::connect(path).await.is_ok() {
        return Err(RelayError::SocketInUse { path: path.into() });
    }
    debug!(path = %path.display(), "removing stale socket file");
    let _ = std::fs::remove_file(path);
    Ok(())
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

async fn dial(ep: &Endpoint) -> io::Result<Conn> {
    match ep {
        Endpoint::Tcp { host, port } => tcp::dial_relay(host, *port).await.map(Conn::Tcp),
        Endpoint::Unix(p) => UnixStream::connect(p).await.map(Conn::Unix),
    }
}

/// Relays `a` to a fresh connection to `target`. `reset_a` closes `a` with a reset (or
/// does nothing where the socket type has none), so a reset passes on both ways.
async fn pump<A>(mut a: A, target: &Endpoint, reset_a: fn(&A))
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let dialled = tokio::time::timeout(DIAL_TIMEOUT, dial(target)).await;
    let result = match dialled {
        Ok(Ok(Conn::Tcp(mut b))) => {
            let r = splice(&mut a, &mut b, SpliceOptions::default()).await;
            tcp::pass_reset(&r, &b);
            r
        }
        Ok(Ok(Conn::Unix(mut b))) => splice(&mut a, &mut b, SpliceOptions::default()).await,
        Ok(Err(e)) => return warn!(%target, error = %e, "cannot reach the target"),
        Err(_) => return warn!(%target, "the target did not accept in time"),
    };
    if matches!(&result, Err(e) if e.kind() == io::ErrorKind::ConnectionReset) {
        reset_a(&a);
    }
    match result {
        Ok(t) => debug!(up = t.a_to_b, down = t.b_to_a, "connection done"),
        Err(e) => debug!(error = %e, "connection ended"),
    }
}

/// Accepts on `listener` and relays to `target` until `stop` is cancelled.
pub async fn run(listener: RelayListener, target: Endpoint, stop: CancellationToken) {
    let target = Arc::new(target);
    let tasks = TaskTracker::new();
    loop {
        let target = target.clone();
        let accepted = match &listener {
            RelayListener::Tcp(l) => tokio::select! {
                _ = stop.cancelled() => break,
                r = l.accept() => r.map(|(s, peer)| {
                    tcp::tune_relay(&s);
                    let span = tracing::debug_span!("relay", %peer);
                    tasks.spawn(
                        async move { pump(s, &target, tcp::reset_on_close).await }.instrument(span),
                    );
                }),
            },
            RelayListener::Unix(l, _) => tokio::select! {
                _ = stop.cancelled() => break,
                r = l.accept() => r.map(|(s, _)| {
                    tasks.spawn(async move { pump(s, &target, |_| {}).await });
                }),
            },
        };
        if let Err(e) = accepted {
            warn!(error = %e, "accept failed");
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
        }
    }
    if let RelayListener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    drop(listener);
    tasks.close();
    let _ = tokio::time::timeout(DRAIN, tasks.wait()).await;
}
