//! One client session: dial, optional TLS, yamux, login, register the forwards, then
//! the control loop until the connection is lost or the client is told to stop.

use super::stream::{self, Routes};
use super::{describe, ClientError, ClientEvent, ForwardState};
use crate::accounts::proof::ClientKey;
use crate::auth::client_handshake;
use crate::config::{ClientConfig, ServerAddr};
use crate::protocol::{
    ClientMsg, CodecError, ForwardRequest, MessageStream, Proto, ServerMsg, MAX_CONTROL_FRAME,
};
use crate::transport::mux::{self, Mode, MAX_STREAMS_LIMIT};
use crate::transport::tls::{self, TlsConnector};
use crate::transport::{tcp, ticker, BatchIo, MuxStream};
use futures::io::{AsyncRead, AsyncWrite};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Dialling the server, and the TLS handshake and login after it, each get this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing session may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(crate) struct SessionCtx<'a> {
    pub config: &'a ClientConfig,
    /// The server this session dials (one of `config.servers`).
    pub server: &'a ServerAddr,
    /// In: the address the last attempt reached (its session is gone), dialled last.
    /// Out: the address this attempt reached.
    pub peer: &'a mut Option<SocketAddr>,
    pub key: &'a mut ClientKey,
    pub tls: Option<&'a TlsConnector>,
    pub events: &'a mpsc::UnboundedSender<ClientEvent>,
    pub shutdown: &'a CancellationToken,
}

pub(crate) enum End {
    Shutdown,
    Lost {
        logged_in: bool,
        reason: String,
    },
    /// The server could not be reached at all; `unresolved` when its name has no
    /// address (a typo, or DNS not up yet).
    Unreachable {
        reason: String,
        unresolved: bool,
    },
    /// The server ended a live session in order: it is stopping or restarting.
    ServerClosed,
    /// The server's operator closed every forward: nothing is left to publish.
    AllClosed {
        reason: String,
    },
}

fn unreachable(reason: String, unresolved: bool) -> Result<End, ClientError> {
    Ok(End::Unreachable { reason, unresolved })
}

/// `connection refused` rather than `Connection refused (os error 111)`.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "timed out".into(),
        std::io::ErrorKind::HostUnreachable => "host unreachable".into(),
        std::io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        _ => e.to_string(),
    }
}

/// Resolves the server's name, then dials each address in turn; `last`, the address
/// the previous session was on, goes to the back of the queue (a name with an address
/// per node fails over to another node first).
async fn dial(server: &str, last: Option<SocketAddr>) -> Result<TcpStream, End> {
    let mut addrs: Vec<_> = match tokio::net::lookup_host(server).await {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(End::Unreachable {
                reason: format!("cannot resolve {server} ({e})"),
                unresolved: true,
            })
        }
    };
    // Stable: the resolver's order stays as it is otherwise.
    addrs.sort_by_key(|a| Some(*a) == last);
    let mut why = String::from("the name has no address");
    for a in &addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => why = io_reason(&e),
        }
    }
    Err(End::Unreachable {
        reason: format!("cannot reach {server} ({why})"),
        unresolved: addrs.is_empty(),
    })
}

fn lost(reason: impl Into<String>) -> Result<End, ClientError> {
    Ok(End::Lost {
        logged_in: false,
        reason: reason.into(),
    })
}

/// The connector for `--tls`, built once (a bad CA file is a startup error).
pub(crate) fn tls_connector(config: &ClientConfig) -> Result<Option<TlsConnector>, ClientError> {
    if !config.tls {
        return Ok(None);
    }
    if let Some(fp) = config.tls_fingerprint {
        return tls::connector_pinned(fp)
            .map(Some)
            .map_err(ClientError::Tls);
    }
    tls::connector(config.tls_ca.as_deref())
        .map(Some)
        .map_err(ClientError::Tls)
}

/// Where the client's trust in the server's certificate comes from.
fn trust(config: &ClientConfig) -> tls::Trust {
    match &config.tls_ca {
        Some(f) => tls::Trust::CaFile(f.clone()),
        None => tls::Trust::SystemRoots,
    }
}

pub(crate) async fn run_once(
    ctx: SessionCtx<'_>,
    forwards: &mut [ForwardState],
) -> Result<End, ClientError> {
    let dial = timeout(CONNECT_TIMEOUT, dial(&ctx.server.addr, ctx.peer.take()));
    let tcp = tokio::select! {
        _ = ctx.shutdown.cancelled() => return Ok(End::Shutdown),
        r = dial => match r {
            Ok(Ok(s)) => s,
            Ok(Err(end)) => return Ok(end),
            Err(_) => return unreachable(format!("cannot reach {} (timed out)", ctx.server), false),
        },
    };
    tcp::tune_control(&tcp);
    *ctx.peer = tcp.peer_addr().ok();
    let Some(connector) = ctx.tls else {
        return serve(ctx, forwards, BatchIo::new(tcp)).await;
    };
    let name = ctx
        .config
        .tls_server_name
        .clone()
        .unwrap_or_else(|| ctx.server.host.clone());
    let name = tls::server_name(&name).map_err(ClientError::Tls)?;
    match timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => serve(ctx, forwards, BatchIo::new(s)).await,
        Ok(Err(e)) => match tls::explain_client_error(&e, &trust(ctx.config)) {
            (why, true) => Err(ClientError::Tls(why)),
            (why, false) => lost(why),
        },
        Err(_) => lost("TLS handshake timed out"),
    }
}

async fn serve<IO>(
    ctx: SessionCtx<'_>,
    forwards: &mut [ForwardState],
    io: IO,
) -> Result<End, ClientError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = ctx.config;
    let stop = CancellationToken::new();
    let routes: Routes = Arc::new(
        forwards
            .iter()
            .map(|f| stream::Route::new(f.spec.clone()))
            .collect(),
    );
    let udp = super::udp::UdpLimits {
        max_peers: cfg.udp_max_peers,
        idle: cfg.udp_idle_timeout,
    };
    let on_inbound = move |s: MuxStream| {
        tokio::spawn(stream::handle(s, routes.clone(), udp));
    };
    let (mux, driver) = mux::start(
        io,
        mux::config(MAX_STREAMS_LIMIT),
        Mode::Client,
        on_inbound,
        stop.clone(),
    );
    let mut driver = mux::DriverTask::spawn(driver);
    let result = async {
        let ctl = timeout(CONNECT_TIMEOUT, mux.open()).await;
        let Ok(Ok(ctl)) = ctl else {
            return lost("cannot open the control stream");
        };
        let mut ctl = MessageStream::new(ctl, MAX_CONTROL_FRAME);
        let login = timeout(
            CONNECT_TIMEOUT,
            client_handshake(&mut ctl, cfg.user.as_deref(), cfg.token.as_ref(), ctx.key),
        );
        let session_id = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(End::Shutdown),
            r = login => match r {
                Ok(Ok(id)) => id,
                Ok(Err(e)) if e.is_permanent() => return Err(ClientError::Login(e)),
                Ok(Err(e)) => return lost(format!("login failed: {e}")),
                Err(_) => return lost("login timed out"),
            },
        };
        info!(session = session_id, server = %ctx.server, "logged in");
        let mut s = Control {
            ctx: &ctx,
            forwards,
            ctl,
        };
        s.run(&mut driver).await
    }
    .await;
    stop.cancel();
    let _ = timeout(CLOSE_GRACE, driver.finished()).await;
    result
}

struct Control<'a, 'b> {
    ctx: &'a SessionCtx<'b>,
    forwards: &'a mut [ForwardState],
    ctl: MessageStream<MuxStream>,
}

impl Control<'_, '_> {
    async fn send(&mut self, msg: &ClientMsg) -> Result<(), ()> {
        match timeout(self.ctx.config.heartbeat_timeout, self.ctl.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// Asks for every forward in `which` that is still open, on the port it had
    /// before if it had one.
    async fn register(&mut self, which: &[bool]) -> Result<(), ()> {
        let reqs: Vec<ForwardRequest> = self
            .forwards
            .iter()
            .zip(which)
            .enumerate()
            .filter(|(_, (f, ask))| **ask && !f.closed)
            .map(|(id, (f, _))| ForwardRequest {
                id: id as u32,
                proto: f.spec.proto,
                remote_port: f.assigned_port.unwrap_or(f.spec.remote_port),
                subdomain: f.spec.subdomain.clone(),
                speed_limit: f.spec.speed_limit,
                local: f.spec.local(),
                options: f.spec.options.clone(),
            })
            .collect();
        for req in reqs {
            self.send(&ClientMsg::Forward(req)).await?;
        }
        Ok(())
    }

    async fn run(&mut self, driver: &mut mux::DriverTask) -> Result<End, ClientError> {
        let cfg = self.ctx.config;
        let logged_in = |reason: &str| {
            Ok(End::Lost {
                logged_in: true,
                reason: reason.to_string(),
            })
        };
        if self
            .register(&vec![true; self.forwards.len()])
            .await
            .is_err()
        {
            return logged_in("control stream stalled");
        }
        // Forwards refused after a reconnect: asked for again at every heartbeat tick.
        let mut refused = vec![false; self.forwards.len()];
        let mut tick = ticker::interval_at(
            Instant::now() + cfg.heartbeat_interval,
            cfg.heartbeat_interval,
        );
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                // In this order: when a server stops, the control stream's end and the
                // connection's arrive together, and the stream's says it was in order.
                biased;
                _ = self.ctx.shutdown.cancelled() => {
                    self.cancel_all().await;
                    return Ok(End::Shutdown);
                }
                msg = self.ctl.recv::<ServerMsg>() => {
                    last_seen = Instant::now();
                    match msg {
                        Ok(ServerMsg::Heartbeat) => {}
                        Ok(ServerMsg::ForwardOk { id, remote_port, url }) => {
                            self.forward_ok(id, remote_port, url);
                            if let Some(r) = refused.get_mut(id as usize) { *r = false; }
                        }
                        Ok(ServerMsg::ForwardRefused { id, reason }) => {
                            let Some(f) = self.forwards.get(id as usize) else { continue };
                            if !f.ever_registered {
                                return Err(ClientError::ForwardRefused { spec: describe(&f.spec), reason });
                            }
                            warn!(forward = %describe(&f.spec), %reason, "forward refused; will retry");
                            if let Some(r) = refused.get_mut(id as usize) { *r = true; }
                        }
                        Ok(ServerMsg::Closed { id, reason }) => {
                            let Some(f) = self.forwards.get_mut(id as usize) else { continue };
                            f.closed = true;
                            let forward = describe(&f.spec);
                            let _ = self.ctx.events.send(ClientEvent::Closed { id, reason: reason.clone() });
                            if self.forwards.iter().all(|f| f.closed) {
                                // The exit line says it; one line, not two.
                                return Ok(End::AllClosed { reason });
                            }
                            warn!(%forward, "the server closed this forward ({reason}); not registering it again");
                        }
                        Ok(other) => debug!(?other, "unexpected message from the server"),
                        Err(CodecError::Closed) => return Ok(End::ServerClosed),
                        // The server's session ending under the control stream reads
                        // as a reset of it (transport::stream): the same orderly end,
                        // seen after the connection went rather than before.
                        Err(CodecError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            return Ok(End::ServerClosed)
                        }
                        Err(e) => return logged_in(&format!("bad message from the server: {e}")),
                    }
                }
                _ = driver.finished() => return logged_in("connection lost"),
                _ = tick.tick() => {
                    if last_seen.elapsed() >= cfg.heartbeat_timeout {
                        return logged_in("heartbeat timeout: the server went silent");
                    }
                    if self.send(&ClientMsg::Heartbeat).await.is_err() {
                        return logged_in("control stream stalled");
                    }
                    if refused.iter().any(|r| *r) {
                        let again = std::mem::replace(&mut refused, vec![false; self.forwards.len()]);
                        if self.register(&again).await.is_err() {
                            return logged_in("control stream stalled");
                        }
                    }
                }
            }
        }
    }

    fn forward_ok(&mut self, id: u32, remote_port: u16, url: Option<String>) {
        let host = &self.ctx.server.host;
        let Some(f) = self.forwards.get_mut(id as usize) else {
            return;
        };
        f.ever_registered = true;
        let public = match (f.spec.proto, url) {
            (_, Some(url)) => url,
            (Proto::Udp, None) => format!("udp://{host}:{remote_port}"),
            (_, None) => format!("tcp://{host}:{remote_port}"),
        };
        if f.spec.proto != Proto::Http {
            f.assigned_port = Some(remote_port);
        }
        info!(forward = %describe(&f.spec), %public, "forward live");
        let _ = self.ctx.events.send(ClientEvent::Forwarding {
            id,
            public,
            local: f.spec.local(),
        });
    }

    /// Tells the server to free every port now rather than at the heartbeat timeout.
    async fn cancel_all(&mut self) {
        for id in 0..self.forwards.len() {
            if !self.forwards[id].closed {
                let _ = self.send(&ClientMsg::Cancel { id: id as u32 }).await;
            }
        }
        let _ = timeout(CLOSE_GRACE, self.ctl.close()).await;
    }
}
