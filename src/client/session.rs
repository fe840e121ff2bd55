//! One client session: dial, optional TLS, yamux, login, register the forwards, then
//! the control loop until the connection is lost or the client is told to stop.

use super::stream::{self, Routes};
use super::{describe, ClientError, ClientEvent, ForwardState};
use super::{links, local};
use crate::accounts::proof::ClientKey;
use crate::auth::{client_login, Introduction};
use crate::config::{ClientConfig, Connections, ServerAddr};
use crate::protocol::{
    ClientMsg, CodecError, ForwardRequest, MessageStream, Proto, ServerMsg, MAX_CONTROL_FRAME,
};
use crate::transport::mux;
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
/// The first wait before a forward refused for a reason of the server's own is asked
/// for again (a cluster directory that is recovering frees keys within a lease).
const RETRY_FIRST: Duration = Duration::from_millis(250);

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
    /// The server ended the session and said why; `retry` when another server can
    /// serve the client now.
    Ended {
        reason: String,
        retry: bool,
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

/// The name the server's certificate must carry.
fn tls_name(ctx: &SessionCtx<'_>) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let name = ctx
        .config
        .tls_server_name
        .clone()
        .unwrap_or_else(|| ctx.server.host.clone());
    tls::server_name(&name)
}

/// How many connections to keep to a server on `path` that allows `max` per session.
fn connections(asked: Connections, path: mux::Path, max: u16) -> usize {
    let n = match asked {
        Connections::Fixed(n) => n as usize,
        Connections::Auto if path == mux::Path::Link => links::AUTO_POOL,
        Connections::Auto => 1,
    };
    n.clamp(1, (max as usize).max(1))
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
    let path = mux::Path::to(ctx.peer.map(|p| p.ip()));
    let Some(connector) = ctx.tls else {
        return serve(ctx, forwards, BatchIo::new(tcp), path).await;
    };
    let name = tls_name(&ctx).map_err(ClientError::Tls)?;
    match timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => serve(ctx, forwards, BatchIo::new(s), path).await,
        Ok(Err(e)) => match tls::explain_client_error(&e, &trust(ctx.config)) {
            (why, true) => Err(ClientError::Tls(why)),
            (why, false) => lost(why),
        },
        Err(_) => lost("TLS handshake timed out"),
    }
}

/// Runs one session over `io`, a TCP connection on `path`.
async fn serve<IO>(
    ctx: SessionCtx<'_>,
    forwards: &mut [ForwardState],
    io: IO,
    path: mux::Path,
) -> Result<End, ClientError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = ctx.config;
    let stop = CancellationToken::new();
    let local_changed = Arc::new(tokio::sync::Notify::new());
    let routes: Routes = Arc::new(
        forwards
            .iter()
            .map(|f| stream::Route::new(f.spec.clone(), local_changed.clone()))
            .collect(),
    );
    let udp = super::udp::UdpLimits {
        max_peers: cfg.udp_max_peers,
        idle: cfg.udp_idle_timeout,
    };
    let link_routes = routes.clone();
    let watched = routes.clone();
    let (mux, mut driver) = stream::start_mux(io, path, routes, udp, stop.clone());
    let result = async {
        let ctl = timeout(CONNECT_TIMEOUT, mux.open()).await;
        let Ok(Ok(ctl)) = ctl else {
            return lost("cannot open the control stream");
        };
        let mut ctl = MessageStream::new(ctl, MAX_CONTROL_FRAME);
        let me = Introduction {
            name: cfg.name.clone(),
            server_host: ctx.server.host.clone(),
        };
        let login = timeout(
            CONNECT_TIMEOUT,
            client_login(
                &mut ctl,
                cfg.user.as_deref(),
                cfg.token.as_ref(),
                ctx.key,
                &me,
            ),
        );
        let admitted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(End::Shutdown),
            r = login => match r {
                Ok(Ok(a)) => a,
                Ok(Err(e)) if e.is_permanent() => return Err(ClientError::Login(e)),
                Ok(Err(e)) => return lost(format!("login failed: {e}")),
                Err(_) => return lost("login timed out"),
            },
        };
        let want = connections(cfg.connections, path, admitted.max_links);
        info!(session = admitted.session_id, server = %ctx.server, connections = want, "logged in");
        if let (true, Some(addr)) = (want > 1, *ctx.peer) {
            let spec = links::JoinSpec {
                addr,
                tls: ctx.tls.cloned().zip(tls_name(&ctx).ok()),
                user: cfg.user.clone(),
                token: cfg.token.clone(),
                client_id: ctx.key.id(),
                join_key: admitted.join_key,
                heartbeat_interval: cfg.heartbeat_interval,
                heartbeat_timeout: cfg.heartbeat_timeout,
                routes: link_routes,
                udp,
            };
            links::spawn(want - 1, Arc::new(spec), &stop);
        }
        let told = vec![local::UNKNOWN; forwards.len()];
        let mut s = Control {
            ctx: &ctx,
            forwards,
            ctl,
            local: LocalReports {
                routes: watched,
                changed: local_changed,
                told,
            },
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
    local: LocalReports,
}

/// What the server was told of each forward's local service.
struct LocalReports {
    routes: Routes,
    /// Woken when a local service goes up or down.
    changed: Arc<tokio::sync::Notify>,
    /// Per forward: the state last told (`local::UNKNOWN` before any).
    told: Vec<u8>,
}

impl LocalReports {
    /// The messages that bring the server up to date, marked as told.
    fn news(&mut self) -> Vec<ClientMsg> {
        let mut out = Vec::new();
        for (id, (route, told)) in self.routes.iter().zip(&mut self.told).enumerate() {
            let now = route.down.state();
            if now != local::UNKNOWN && now != *told {
                *told = now;
                out.push(ClientMsg::LocalService {
                    id: id as u32,
                    up: now == local::UP,
                });
            }
        }
        out
    }
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
        // Refused for a reason of the server's own (its cluster directory is
        // recovering): asked again sooner, after a delay that doubles up to the
        // heartbeat interval.
        let mut retry_at: Option<Instant> = None;
        let mut retry_delay = RETRY_FIRST;
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
                        Ok(ServerMsg::ForwardRefused { id, reason, retry }) => {
                            let Some(f) = self.forwards.get(id as usize) else { continue };
                            if !f.ever_registered && !retry {
                                return Err(ClientError::ForwardRefused { spec: describe(&f.spec), reason });
                            }
                            // This server cannot grant it now: another one may.
                            if retry && cfg.servers.len() > 1 {
                                return logged_in(&format!("forward {} refused here ({reason})", describe(&f.spec)));
                            }
                            if !retry {
                                warn!(forward = %describe(&f.spec), %reason, "forward refused; will retry");
                            } else if retry_delay == RETRY_FIRST {
                                warn!(forward = %describe(&f.spec), %reason, "forward refused for now; asking again shortly");
                            } else {
                                debug!(forward = %describe(&f.spec), %reason, "forward refused for now; asking again shortly");
                            }
                            if let Some(r) = refused.get_mut(id as usize) { *r = true; }
                            if retry && retry_at.is_none() {
                                retry_at = Some(Instant::now() + retry_delay);
                                retry_delay = (retry_delay * 2).min(cfg.heartbeat_interval);
                            }
                        }
                        Ok(ServerMsg::Ending { reason, retry }) => {
                            return Ok(End::Ended { reason, retry });
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
                _ = self.local.changed.notified() => {
                    for msg in self.local.news() {
                        if self.send(&msg).await.is_err() {
                            return logged_in("control stream stalled");
                        }
                    }
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    retry_at = None;
                    let again = std::mem::replace(&mut refused, vec![false; self.forwards.len()]);
                    if self.register(&again).await.is_err() {
                        return logged_in("control stream stalled");
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_count_follows_the_path_and_the_servers_cap() {
        use mux::Path::{Link, Local};
        assert_eq!(connections(Connections::Auto, Local, 16), 1);
        assert_eq!(connections(Connections::Auto, Link, 16), links::AUTO_POOL);
        assert_eq!(connections(Connections::Auto, Link, 2), 2);
        assert_eq!(connections(Connections::Fixed(8), Local, 16), 8);
        assert_eq!(connections(Connections::Fixed(16), Link, 4), 4);
        assert_eq!(connections(Connections::Fixed(3), Local, 0), 1);
    }
}
