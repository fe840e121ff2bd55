//! `piped`: accepts client sessions on the control listener and publishes their forwards.
//!
//! The accept loop only accepts: TLS, login and everything after run in a task per
//! connection. The caller binds the control listener and owns shutdown: cancel the
//! token and `run` stops accepting, lets open connections drain up to the configured
//! deadline, then ends every session.

pub mod access;
mod cluster;
pub use cluster::Timing as ClusterTiming;
mod http;
mod join;
pub mod links;
mod login;
mod mirror;
mod peer;
mod pending;
mod ports;
pub mod real_addr;
mod session;
pub mod state;
mod streams;
mod tcp;
mod udp;
mod users;

use crate::config::ServerConfig;
use crate::transport::selfsigned;
use crate::transport::tls::{self, TlsAcceptor};
use crate::transport::{tcp as tcp_opts, BatchIo};
use state::State;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::time::Instant;
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
    /// A listener the configuration asks for cannot be bound (exit 1).
    #[error("cannot listen on the {what} address {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    /// The cluster directory cannot be reached at start (exit 1).
    #[error("{0}")]
    Cluster(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ServerError {
    /// Process exit code (SPEC): 2 for a bad configuration, 1 for a runtime failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServerError::Config(_) => 2,
            ServerError::Io(_) | ServerError::Listen { .. } | ServerError::Cluster(_) => 1,
        }
    }
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
    tls: Option<TlsAcceptor>,
    /// SIGHUP, taken at construction so a signal right after start reloads the users
    /// file instead of ending the process.
    hangup: std::sync::Mutex<Option<tokio::signal::unix::Signal>>,
    /// The certificate TLS presents, so peer links accept exactly it.
    own_fingerprint: Option<selfsigned::Fingerprint>,
    /// The peer listener bound by `join_cluster`, served by `run`.
    peer_listener: std::sync::Mutex<Option<(TcpListener, Option<peer::PeerTls>)>>,
}

impl Server {
    pub fn new(config: ServerConfig) -> Result<Self, ServerError> {
        if config.token.is_none() && config.users.is_none() {
            warn!("no token set: this server is open to any client (set --token or PIPE_TOKEN)");
        }
        let accounts = match &config.users {
            Some(p) => Some(crate::accounts::Accounts::load(p).map_err(ServerError::Config)?),
            None => None,
        };
        let hangup = match accounts {
            Some(_) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| warn!(error = %e, "cannot watch SIGHUP; the users file is still reloaded when it changes"))
                .ok(),
            None => None,
        };
        let mut fingerprint = None;
        let mut own_fingerprint = None;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                if config.tls_self_signed {
                    warn!("tls-cert and tls-key are set: tls-self-signed is ignored");
                }
                own_fingerprint = Some(tls::leaf_fingerprint(cert).map_err(ServerError::Config)?);
                Some(tls::acceptor(cert, key).map_err(ServerError::Config)?)
            }
            _ if config.tls_self_signed => {
                let dir = selfsigned::state_dir(config.state_dir.as_deref())
                    .map_err(ServerError::Config)?;
                let (cert, key, fp) = selfsigned::ensure(&dir).map_err(ServerError::Config)?;
                fingerprint = Some(fp.to_string());
                own_fingerprint = Some(fp);
                Some(tls::acceptor(&cert, &key).map_err(ServerError::Config)?)
            }
            _ => None,
        };
        let mut state = State::new(config);
        state.tls_fingerprint = fingerprint;
        if let Some(a) = accounts {
            state = state.with_accounts(a);
        }
        users::warn_weak_tokens(&state);
        Ok(Server {
            state: Arc::new(state),
            tls,
            hangup: std::sync::Mutex::new(hangup),
            own_fingerprint,
            peer_listener: std::sync::Mutex::new(None),
        })
    }

    /// `sha256:HEX` of the certificate made with `--tls-self-signed`.
    pub fn tls_fingerprint(&self) -> Option<&str> {
        self.state.tls_fingerprint.as_deref()
    }

    /// The live state (sessions, tunnels, counters), for the admin server and tests.
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Binds the sign-in gate on a loopback port and serves it until `shutdown`, when
    /// the server has `--oidc-issuer`; returns its address. Before `run`: routes of
    /// `auth=oidc` forwards name this port.
    pub async fn start_sign_in(
        &self,
        shutdown: CancellationToken,
    ) -> Result<Option<std::net::SocketAddr>, ServerError> {
        let Some((sign_in, origin)) =
            crate::signin::SignIn::from_config(&self.state.config).map_err(ServerError::Config)?
        else {
            return Ok(None);
        };
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|source| ServerError::Listen {
                what: "sign-in gate",
                addr: "127.0.0.1:0".into(),
                source,
            })?;
        let local = listener.local_addr()?;
        self.state.reserve_own_port(local.port());
        if self.state.sign_in_gate.set(local.port()).is_err() {
            return Err(ServerError::Config(
                "the sign-in gate is already started".into(),
            ));
        }
        match origin {
            crate::signin::KeyOrigin::Process => warn!(
                "sign-in sessions are sealed with a key of this process: they end when piped restarts (set --state-dir to keep one)"
            ),
            o => info!(origin = ?o, "sign-in session key ready"),
        }
        info!(%local, "sign-in gate listening");
        let app = crate::signin::router(Arc::new(sign_in));
        tokio::spawn(crate::admin::conns::serve(
            listener,
            app,
            "sign-in gate",
            shutdown,
        ));
        Ok(Some(local))
    }

    /// Serves clients on `listener` until `shutdown` is cancelled, then drains.
    pub async fn run(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServerError> {
        crate::caddy::startup(self.state.caddy.as_deref())
            .await
            .map_err(|e| ServerError::Config(e.to_string()))?;
        if let Some(caddy) = self.state.caddy.clone() {
            tokio::spawn(caddy.watch(shutdown.clone()));
        }
        let local = listener.local_addr()?;
        self.state.reserve_own_port(local.port());
        if self.state.usable_ports() == 0 {
            warn!(
                ports = %self.state.config.ports,
                "--ports holds only the server's own listening ports: no forward can get a port"
            );
        }
        let ctx = Arc::new(Ctx {
            state: self.state.clone(),
            shutdown: shutdown.clone(),
            kill: CancellationToken::new(),
            conns: TaskTracker::new(),
        });
        if let Some(c) = self.state.cluster() {
            tokio::spawn(c.clone().renew_loop(ctx.kill.clone()));
            tokio::spawn(c.clone().fence_loop(ctx.kill.clone()));
            tokio::spawn(mirror::run(ctx.clone(), c));
            let bound = self
                .peer_listener
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some((l, tls)) = bound {
                tokio::spawn(peer::serve(l, ctx.clone(), tls));
            }
        }
        let cfg = &self.state.config;
        let pending = pending::PendingLimiter::new(cfg.max_pending, cfg.max_pending_per_ip);
        let sessions = TaskTracker::new();
        let hangup = self.hangup.lock().unwrap_or_else(|e| e.into_inner()).take();
        tokio::spawn(users::watch(self.state.clone(), hangup, shutdown.clone()));
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
            let Some(permit) = pending.try_acquire(peer.ip()) else {
                debug!(%peer, "too many connections waiting to log in; dropped");
                continue;
            };
            tcp_opts::tune_control(&tcp);
            let span = tracing::info_span!("conn", %peer);
            let conn = accept(ctx.clone(), tcp, peer, permit, self.tls.clone());
            sessions.spawn(conn.instrument(span));
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
        if let Some(c) = self.state.cluster() {
            // Free this node's claims now rather than at their lease's end.
            let _ = tokio::time::timeout(SESSION_CLOSE_WAIT, c.release_all()).await;
        }
        Ok(())
    }
}

/// Everything before the login: tell TLS from plaintext by the first byte, run the TLS
/// handshake if there is one, all under the login deadline, in the connection's own
/// task (never in the accept loop).
async fn accept(
    ctx: Arc<Ctx>,
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    permit: pending::PendingPermit,
    tls: Option<TlsAcceptor>,
) {
    let deadline = Instant::now() + ctx.state.config.login_timeout;
    let mut first = [0u8; 1];
    let peek = tokio::time::timeout_at(deadline, tcp.peek(&mut first));
    let is_tls = match permit.unless_evicted(peek).await {
        Some(Ok(Ok(1))) => first[0] == tls::TLS_HANDSHAKE_RECORD,
        None => return debug!("silent while the pending table was full; dropped"),
        _ => return debug!("connection closed or silent before its first byte"),
    };
    match (tls, is_tls) {
        (Some(acceptor), true) => match permit
            .unless_evicted(tokio::time::timeout_at(deadline, acceptor.accept(tcp)))
            .await
        {
            Some(Ok(Ok(s))) => {
                session::serve(ctx, BatchIo::new(s), peer, permit, deadline, None).await
            }
            Some(Ok(Err(e))) => info!(error = %e, "TLS handshake failed"),
            Some(Err(_)) => debug!("TLS handshake timed out"),
            None => debug!("in the TLS handshake while the pending table was full; dropped"),
        },
        (Some(_), false) => {
            let why = "this server requires TLS: run pipec with --tls";
            session::serve(ctx, BatchIo::new(tcp), peer, permit, deadline, Some(why)).await
        }
        (None, true) => {
            // Answer a TLS client with a TLS alert so it fails at once, with a cause.
            info!("a TLS client reached this plaintext server; refused");
            let mut tcp = tcp;
            let _ = tcp.write_all(&tls::PLAINTEXT_SERVER_ALERT).await;
        }
        (None, false) => session::serve(ctx, BatchIo::new(tcp), peer, permit, deadline, None).await,
    }
}

impl Server {
    /// Joins the cluster when the configuration names one: binds the peer listener,
    /// connects the directory (exit 1 when it cannot be reached now), frees what a
    /// previous run under this node's name left there and registers the node. Returns
    /// the bound peer address, for the `peer on ADDR` line.
    pub async fn join_cluster(&self) -> Result<Option<std::net::SocketAddr>, ServerError> {
        let Some(cc) = self.state.config.cluster.clone() else {
            return Ok(None);
        };
        let listener =
            TcpListener::bind(&cc.peer_listen)
                .await
                .map_err(|source| ServerError::Listen {
                    what: "peer",
                    addr: cc.peer_listen.clone(),
                    source,
                })?;
        let local = listener.local_addr()?;
        self.state.reserve_own_port(local.port());
        let advertise = match &cc.peer_advertise {
            Some(a) => a.clone(),
            None => {
                if local.ip().is_unspecified() {
                    warn!(%local, "the peer listener binds every address: set --peer-advertise to the address other nodes dial");
                }
                local.to_string()
            }
        };
        let dir = crate::cluster::RedisDirectory::connect(&cc.url)
            .await
            .map_err(|e| {
                ServerError::Cluster(format!("cannot reach the cluster directory: {e:?}"))
            })?;
        let peer_tls = match (&self.tls, self.own_fingerprint) {
            (Some(acceptor), Some(fp)) => Some(peer::PeerTls {
                acceptor: acceptor.clone(),
                connector: tls::connector_pinned(fp).map_err(ServerError::Config)?,
            }),
            _ => None,
        };
        let links = peer::Links::new(cc.node.clone(), cc.secret.clone(), peer_tls.clone());
        let cluster = cluster::Cluster::new(
            Arc::new(dir),
            cc.node.clone(),
            advertise,
            cc.secret.clone(),
            cluster::Timing::new(cc.lease),
            links,
        );
        cluster
            .join()
            .await
            .map_err(|e| ServerError::Cluster(format!("cannot join the cluster: {e:?}")))?;
        info!(node = %cc.node, peer = %local, "joined the cluster");
        let _ = self.state.cluster.set(Arc::new(cluster));
        *self.peer_listener.lock().unwrap_or_else(|e| e.into_inner()) = Some((listener, peer_tls));
        Ok(Some(local))
    }

    /// Binds and starts the admin server when configured; returns its address.
    ///
    /// A non-loopback address without an admin token is a config error.
    pub async fn start_admin(
        &self,
        shutdown: CancellationToken,
    ) -> Result<Option<std::net::SocketAddr>, ServerError> {
        let Some(addr) = self.state.config.admin.as_deref() else {
            return Ok(None);
        };
        let has_token = self.state.config.admin_token.is_some();
        let addrs = crate::admin::admin_addrs(addr, has_token)
            .await
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let listener =
            TcpListener::bind(&addrs[..])
                .await
                .map_err(|source| ServerError::Listen {
                    what: "admin",
                    addr: addr.to_string(),
                    source,
                })?;
        let local = listener.local_addr()?;
        self.state.reserve_own_port(local.port());
        info!(%local, "admin server listening");
        tokio::spawn(crate::admin::serve(listener, self.state.clone(), shutdown));
        Ok(Some(local))
    }
}
