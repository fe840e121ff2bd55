//! One client session: the login under a timeout, then the control loop that opens
//! and closes tunnels, exchanges heartbeats, and releases everything at the end.

use super::login::{audit_login, close_refused, login_failed, register, AUDIT};
use super::state::{self, SessionEvent, SessionInfo, TunnelInfo, TunnelStats};
use super::users::check_rights;
use super::{tcp as tcp_tunnel, Ctx};
use crate::accounts::{throttle, User};
use crate::auth::{server_handshake_named, Credentials, LoginError};
use crate::cluster::{ClaimKey, Rules};
use crate::config::PortSet;
use crate::limit::{lower_limit, RateLimiter};
use crate::protocol::{
    ClientMsg, CodecError, ForwardRequest, MessageStream, Proto, ServerMsg, MAX_CONTROL_FRAME,
};
use crate::transport::mux::{self, Mode};
use crate::transport::{ticker, Mux, MuxStream};
use futures::io::{AsyncRead, AsyncWrite};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

/// Streams beyond the visitor cap: the control stream and one per UDP forward.
const STREAM_HEADROOM: usize = 8;
/// How long a closing session may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Peer streams of one UDP forward waiting to be taken up by its loop.
const PEER_ATTACH_QUEUE: usize = 64;
/// How long a closing session waits for its tunnels to release their ports.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// How long the server waits to tell a client why its session ends: the session is
/// going anyway, and a stalled client must not hold it open.
const ENDING_SEND: Duration = Duration::from_secs(1);
/// Ports the server picks at most for a forward that asked for any (`remote_port` 0),
/// when the cluster says the one picked was just taken on another node.
const PICKS: usize = 8;

/// Should a forward that asked for any port try another one after `picks` were taken
/// elsewhere in the cluster between the local pick and the claim?
fn repick(asked: u16, refusal: &str, picks: usize) -> bool {
    asked == 0 && refusal.contains("is taken by another client") && picks < PICKS
}

/// Serves one accepted control connection from login to teardown. The login must be
/// done by `deadline`; with `refusal` set, the login is refused with that reason. The
/// session's frames are sized by where `peer` is (`mux::Path`).
pub async fn serve<IO>(
    ctx: Arc<Ctx>,
    io: IO,
    peer: SocketAddr,
    permit: super::pending::PendingPermit,
    deadline: Instant,
    refusal: Option<&'static str>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &ctx.state.config;
    let stop = ctx.kill.child_token();
    let (first_tx, first_rx) = oneshot::channel::<MuxStream>();
    let mut first_tx = Some(first_tx);
    let on_inbound = move |s: MuxStream| match first_tx.take() {
        Some(tx) => {
            let _ = tx.send(s);
        }
        // Only the control stream may be opened by the client; others are dropped (reset).
        None => debug!("client opened an extra stream; refused"),
    };
    let path = mux::Path::to(Some(peer.ip()));
    let ycfg = mux::config_for_path(cfg.max_streams + cfg.max_tunnels + STREAM_HEADROOM, path);
    let (mux, driver) = mux::start(io, ycfg, Mode::Server, on_inbound, stop.clone());
    let mut driver = mux::DriverTask::spawn(driver);

    let table = ctx.state.accounts.as_ref().map(|a| a.current());
    let creds = match (&table, &cfg.token) {
        (Some(t), shared) => Credentials::Users {
            table: &**t,
            shared: shared.as_ref(),
        },
        (None, Some(t)) => Credentials::Shared(t),
        (None, None) => Credentials::Open,
    };
    // An address cooling off after failed logins is refused before any check.
    let cooling = ctx.state.logins.cooling(peer.ip()).map(throttle::refusal);
    let refusal = refusal.map(str::to_string).or(cooling.clone());
    let mut asked = None;
    let login = async {
        let stream = first_rx
            .await
            .map_err(|_| LoginError::Codec(CodecError::Closed))?;
        let mut ctl = MessageStream::new(stream, MAX_CONTROL_FRAME);
        let who = server_handshake_named(&mut ctl, creds, refusal.as_deref(), &mut asked).await;
        Ok::<_, LoginError>((ctl, who))
    };
    let login = permit.unless_evicted(tokio::time::timeout_at(deadline, login));
    let Some(login) = login.await else {
        debug!("not logged in while the pending table was full; dropped");
        return;
    };
    let (mut ctl, who) = match login {
        Err(_) => {
            debug!("no login within the login timeout; dropped");
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "connection ended before login");
            return;
        }
        Ok(Ok((ctl, Err(e)))) => {
            let failures = &ctx.state.stats.auth_failures;
            if cooling.is_some() {
                failures.cooling_off.fetch_add(1, Relaxed);
                debug!("login refused: the address is cooling off");
            } else {
                if matches!(e, LoginError::BadToken | LoginError::BadUserOrToken) {
                    failures.bad_token.fetch_add(1, Relaxed);
                    login_failed(&ctx, peer);
                }
                audit_login(asked.as_deref(), peer, &e.to_string());
            }
            close_refused(ctl, &stop, &mut driver).await;
            return;
        }
        Ok(Ok((ctl, Ok(who)))) => (ctl, who),
    };
    if let Some(key) = who.join {
        let parts = super::join::Joining {
            ctl,
            mux,
            driver,
            stop,
            permit,
        };
        return super::join::serve(ctx, who, key, peer, parts).await;
    }

    let links = super::links::Links::new(mux.clone());
    // Ending the session (`SessionInfo::end`) stops its tunnels at once, but the
    // connection stays up until the control loop has told the client why, or for
    // ENDING_SEND + CLOSE_GRACE at most: closing both together raced the reason
    // out of the wire, and the client guessed at a restart.
    let session_stop = ctx.kill.child_token();
    tokio::spawn(close_after_ending(session_stop.clone(), stop.clone()));
    let _conn_closed_on_return = stop.clone().drop_guard();
    let (session, events) = match register(&ctx, &who, peer, session_stop, links).await {
        Ok(v) => v,
        Err(reason) => {
            audit_login(who.user.as_deref(), peer, &reason);
            let retry = super::login::login_refusal_is_retryable(&reason);
            let msg = ServerMsg::LoginRefused { reason, retry };
            let _ = send(&mut ctl, &msg, cfg.heartbeat_timeout).await;
            close_refused(ctl, &stop, &mut driver).await;
            return;
        }
    };
    let span = tracing::info_span!("session", id = session.id, user = session.owner.user_name());
    async {
        if send(
            &mut ctl,
            &ServerMsg::LoginOk {
                session_id: session.id,
                join_key: session.join_key,
                max_links: super::links::MAX_LINKS as u16,
            },
            cfg.heartbeat_timeout,
        )
        .await
        .is_err()
        {
            return;
        }
        drop(permit);
        audit_login(who.user.as_deref(), peer, "ok");
        info!(software = %who.software, "client logged in");
        let mut s = Session {
            ctx: ctx.clone(),
            info: session.clone(),
            mux,
            streams: super::streams::StreamBudget::new(cfg.max_streams),
            tunnels: HashMap::new(),
            tasks: TaskTracker::new(),
        };
        let reason = s.control_loop(&mut ctl, &mut driver, events).await;
        info!(reason, "session ended");
        s.teardown().await;
        stop.cancel();
        let _ = timeout(CLOSE_GRACE, driver.finished()).await;
    }
    .instrument(span)
    .await;
    ctx.state.remove_session(session.id);
    session.closed.cancel();
}

/// Closes the connection (`conn`) once the session has been stopped for longer than it
/// takes to say why; returns early when the connection closes first.
async fn close_after_ending(session: CancellationToken, conn: CancellationToken) {
    tokio::select! {
        _ = session.cancelled() => {}
        _ = conn.cancelled() => return,
    }
    tokio::select! {
        _ = tokio::time::sleep(ENDING_SEND + CLOSE_GRACE) => conn.cancel(),
        _ = conn.cancelled() => {}
    }
}

async fn send<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ctl: &mut MessageStream<IO>,
    msg: &ServerMsg,
    bound: Duration,
) -> Result<(), ()> {
    match timeout(bound, ctl.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

pub(super) struct Session {
    pub ctx: Arc<Ctx>,
    pub info: Arc<SessionInfo>,
    pub mux: Mux,
    pub streams: Arc<super::streams::StreamBudget>,
    pub tunnels: HashMap<u32, Arc<TunnelInfo>>,
    pub tasks: TaskTracker,
}

impl Session {
    async fn control_loop(
        &mut self,
        ctl: &mut MessageStream<MuxStream>,
        driver: &mut mux::DriverTask,
        mut events: mpsc::UnboundedReceiver<SessionEvent>,
    ) -> &'static str {
        let cfg = &self.ctx.state.config;
        let (hb_every, hb_timeout) = (cfg.heartbeat_interval, cfg.heartbeat_timeout);
        let mut tick = ticker::interval_at(Instant::now() + hb_every, hb_every);
        let mut last_seen = Instant::now();
        loop {
            tokio::select! {
                _ = self.info.stop.cancelled() => {
                    if let Some(e) = self.info.ending() {
                        let msg = ServerMsg::Ending { reason: e.reason, retry: e.retry };
                        let _ = send(ctl, &msg, hb_timeout.min(ENDING_SEND)).await;
                    }
                    return "stopped by the server";
                }
                _ = driver.finished() => return "connection lost",
                msg = ctl.recv::<ClientMsg>() => {
                    last_seen = Instant::now();
                    let reply = match msg {
                        Ok(ClientMsg::Heartbeat) => continue,
                        Ok(ClientMsg::Forward(req)) => self.open_forward(req).await,
                        Ok(ClientMsg::Cancel { id }) => {
                            if let Some(t) = self.tunnels.remove(&id) {
                                info!(forward = id, port = t.port, "client cancelled the forward");
                                t.stop.cancel();
                            }
                            continue;
                        }
                        Ok(ClientMsg::LocalService { id, up }) => {
                            if let Some(t) = self.tunnels.get(&id) {
                                let v = if up { state::LOCAL_UP } else { state::LOCAL_DOWN };
                                t.stats.local.store(v, Relaxed);
                                t.stats.local_since.store(state::unix_now(), Relaxed);
                            }
                            continue;
                        }
                        Ok(ClientMsg::Login { .. }) => return "protocol violation (second login)",
                        Err(CodecError::Closed | CodecError::Io(_)) => return "client closed the session",
                        Err(e) => {
                            debug!(error = %e, "bad control message");
                            return "bad control message";
                        }
                    };
                    if send(ctl, &reply, hb_timeout).await.is_err() {
                        return "control stream stalled";
                    }
                }
                _ = tick.tick() => {
                    if last_seen.elapsed() >= hb_timeout {
                        return "heartbeat timeout";
                    }
                    if send(ctl, &ServerMsg::Heartbeat, hb_timeout).await.is_err() {
                        return "control stream stalled";
                    }
                }
                Some(ev) = events.recv() => match ev {
                    SessionEvent::TunnelClosed { forward_id, reason } => {
                        self.tunnels.remove(&forward_id);
                        let msg = ServerMsg::Closed { id: forward_id, reason };
                        if send(ctl, &msg, hb_timeout).await.is_err() {
                            return "control stream stalled";
                        }
                    }
                },
            }
        }
    }

    async fn open_forward(&mut self, req: ForwardRequest) -> ServerMsg {
        let id = req.id;
        let what = match (&req.proto, &req.subdomain) {
            (Proto::Http, Some(sub)) => sub.chars().take(64).collect(),
            (Proto::Http, None) => "(random)".to_string(),
            (_, None | Some(_)) => req.remote_port.to_string(),
        };
        let proto = req.proto;
        // Logged only once known to be a plain label (a bad one is refused below).
        let name = req
            .options
            .name
            .clone()
            .filter(|n| crate::protocol::check_forward_name(n).is_ok())
            .unwrap_or_default();
        let reply = self.try_open(req).await;
        let outcome = match &reply {
            ServerMsg::ForwardOk { .. } => "ok",
            ServerMsg::ForwardRefused { reason, .. } => reason.as_str(),
            _ => "?",
        };
        info!(
            target: AUDIT,
            user = self.info.owner.user_name(),
            client = %self.info.addr,
            forward = id,
            %proto,
            asked = %what,
            name,
            outcome,
            "forward"
        );
        reply
    }

    /// The user's rights as the users file says now (`None`: the implicit user).
    fn rights(&self) -> Result<Option<Arc<User>>, String> {
        let (Some(accounts), Some(name)) = (&self.ctx.state.accounts, &self.info.owner.user) else {
            return Ok(None);
        };
        accounts
            .current()
            .get(name)
            .map(Some)
            .ok_or_else(|| format!("user {name} is no longer in the users file"))
    }

    async fn try_open(&mut self, mut req: ForwardRequest) -> ServerMsg {
        let id = req.id;
        self.tunnels.retain(|_, t| !t.stop.is_cancelled());
        let refuse = |reason: String| {
            let retry = super::cluster::retryable(&reason);
            ServerMsg::ForwardRefused { id, reason, retry }
        };
        let cfg = &self.ctx.state.config;
        if self.tunnels.contains_key(&id) {
            return refuse(format!("forward id {id} is already open"));
        }
        if self.tunnels.len() >= cfg.max_tunnels {
            return refuse(format!(
                "tunnel limit reached ({} per client)",
                cfg.max_tunnels
            ));
        }
        if let Err(reason) = super::access::for_forward(&cfg.allow, req.proto, &req.options) {
            return refuse(reason);
        }
        let rights = match self.rights() {
            Ok(r) => r,
            Err(reason) => return refuse(reason),
        };
        let mut scope = None;
        if let Some(u) = &rights {
            if let Err(reason) = check_rights(u, &mut req) {
                return refuse(reason);
            }
            scope = u.ports.clone();
            let max = u.max_tunnels.unwrap_or(cfg.max_tunnels);
            let name = self
                .info
                .owner
                .user
                .clone()
                .unwrap_or_else(|| Arc::from(""));
            if self.ctx.state.take_user_tunnel(&name, max).is_err() {
                return refuse(format!(
                    "tunnel limit reached ({max} for {name} across all of its sessions)"
                ));
            }
        }
        let speed_limit = lower_limit(req.speed_limit, cfg.speed_limit);
        let speed_limit = lower_limit(speed_limit, rights.as_ref().and_then(|u| u.speed_limit));
        let scope = scope.as_ref();
        let result = match req.proto {
            Proto::Tcp => self.open_tcp(req, speed_limit, scope).await,
            Proto::Http => super::http::open(self, req, speed_limit).await,
            Proto::Udp => self.open_udp(req, speed_limit, scope).await,
        };
        match result {
            Ok(msg) => msg,
            Err(reason) => {
                if let Some(name) = &self.info.owner.user {
                    self.ctx.state.give_back_user_tunnel(name);
                }
                refuse(reason)
            }
        }
    }

    pub fn new_tunnel(
        &self,
        req: &ForwardRequest,
        port: u16,
        url: Option<String>,
        speed_limit: Option<u64>,
    ) -> Arc<TunnelInfo> {
        Arc::new(TunnelInfo {
            id: self.ctx.state.next_id(),
            session_id: self.info.id,
            user: self.info.owner.user.clone(),
            forward_id: req.id,
            proto: req.proto,
            port,
            url,
            name: req.options.name.clone(),
            local: req.local.chars().take(256).collect(),
            since: SystemTime::now(),
            speed_limit,
            access: match req.proto {
                Proto::Http => Default::default(),
                p => super::access::resolved(&self.ctx.state.config.allow, p, &req.options),
            },
            visitor_from_caddy: req.proto == Proto::Http && req.options.proxy_protocol.is_some(),
            sign_in: req.options.auth.is_some(),
            stats: TunnelStats::default(),
            stop: self.info.stop.child_token(),
        })
    }

    async fn open_tcp(
        &mut self,
        req: ForwardRequest,
        speed_limit: Option<u64>,
        scope: Option<&PortSet>,
    ) -> Result<ServerMsg, String> {
        let state = self.ctx.state.clone();
        let bind_ip = state.config.bind_addr;
        let asked = (req.remote_port != 0).then_some(ClaimKey::Tcp(req.remote_port));
        self.take_from_mirror(asked.as_ref()).await?;
        let mut picks = 0;
        let (listener, tunnel) = loop {
            let claimed = super::ports::claim(&state, false, req.remote_port, scope, |p| {
                tokio::net::TcpListener::bind((bind_ip, p))
            })
            .await;
            let (listener, port) = self.unless_refused(claimed, asked.as_ref())?;
            let tunnel = self.new_tunnel(&req, port, None, speed_limit);
            let key = ClaimKey::Tcp(port);
            match self.cluster_claim(&key, &tunnel, None).await {
                Ok(()) => break (listener, tunnel),
                Err(e) => {
                    drop(listener);
                    state.release_port(super::state::PortKey::Tcp(port));
                    picks += 1;
                    if !repick(req.remote_port, &e, picks) {
                        return Err(e);
                    }
                }
            }
        };
        let port = tunnel.port;
        self.start_tcp_tunnel(listener, tunnel, None, None);
        Ok(ServerMsg::ForwardOk {
            id: req.id,
            remote_port: port,
            url: None,
        })
    }

    /// Cluster: a port or subdomain this node mirrors for another node may be asked
    /// for by the client that holds it there (a failover). Claim it first, which
    /// succeeds only for that owner, then stop the mirror so the port is free to bind.
    pub async fn take_from_mirror(&self, key: Option<&ClaimKey>) -> Result<(), String> {
        let (Some(c), Some(key)) = (self.ctx.state.cluster(), key) else {
            return Ok(());
        };
        let state = &self.ctx.state;
        let mirrored = match key {
            ClaimKey::Tcp(p) => state.is_mirrored(super::state::PortKey::Tcp(*p)),
            ClaimKey::Udp(p) => state.is_mirrored(super::state::PortKey::Udp(*p)),
            ClaimKey::Subdomain(s) => state.is_mirrored_subdomain(s),
        };
        if !mirrored {
            return Ok(());
        }
        self.prove_in_cluster(&c).await?;
        c.claim(key, &self.info, 0, None).await?;
        c.mirrors.remove(&self.ctx, key).await;
        Ok(())
    }

    /// A session let in while the directory could not check its proof passes that
    /// check before it claims anything (a login copied off the wire during an outage
    /// must not take the client's ports once the directory is back).
    async fn prove_in_cluster(&self, c: &super::cluster::Cluster) -> Result<(), String> {
        use std::sync::atomic::Ordering::{Acquire, Release};
        if !self.info.unproven_in_cluster.load(Acquire) {
            return Ok(());
        }
        match super::login::proven_in_cluster(c, &self.info.owner, &self.info.proof).await {
            Ok(true) => {
                self.info.unproven_in_cluster.store(false, Release);
                Ok(())
            }
            Ok(false) => Err(super::login::CLAIM_UNPROVEN.to_string()),
            Err(()) => Err(super::cluster::UNAVAILABLE.to_string()),
        }
    }

    /// Gives back the claim `take_from_mirror` took when the local steps then failed.
    pub fn unless_refused<T>(
        &self,
        r: Result<T, String>,
        asked: Option<&ClaimKey>,
    ) -> Result<T, String> {
        if r.is_err() {
            if let (Some(c), Some(key)) = (self.ctx.state.cluster(), asked) {
                c.release(key.clone(), 0);
            }
        }
        r
    }

    /// Cluster: claims the tunnel's key in the directory; a no-op on a single node.
    pub async fn cluster_claim(
        &self,
        key: &ClaimKey,
        tunnel: &TunnelInfo,
        rules: Option<Rules>,
    ) -> Result<(), String> {
        let Some(c) = self.ctx.state.cluster() else {
            return Ok(());
        };
        self.prove_in_cluster(&c).await?;
        let rules = rules.or_else(|| {
            (!tunnel.access.is_open()).then(|| Rules {
                allow: tunnel.access.allow.clone(),
                deny: tunnel.access.deny.clone(),
                ..Rules::default()
            })
        });
        let r = c.claim(key, &self.info, tunnel.id, rules).await;
        if r.is_err() {
            // A provisional claim from `take_from_mirror` goes too.
            c.release(key.clone(), 0);
        }
        r
    }

    async fn open_udp(
        &mut self,
        req: ForwardRequest,
        speed_limit: Option<u64>,
        scope: Option<&PortSet>,
    ) -> Result<ServerMsg, String> {
        let state = self.ctx.state.clone();
        let bind_ip = state.config.udp_bind_addr;
        let asked = (req.remote_port != 0).then_some(ClaimKey::Udp(req.remote_port));
        self.take_from_mirror(asked.as_ref()).await?;
        let mut picks = 0;
        let (socket, tunnel, key) = loop {
            let claimed = super::ports::claim(&state, true, req.remote_port, scope, |p| {
                tokio::net::UdpSocket::bind((bind_ip, p))
            })
            .await;
            let (socket, port) = self.unless_refused(claimed, asked.as_ref())?;
            let tunnel = self.new_tunnel(&req, port, None, speed_limit);
            let key = ClaimKey::Udp(port);
            match self.cluster_claim(&key, &tunnel, None).await {
                Ok(()) => break (socket, tunnel, key),
                Err(e) => {
                    drop(socket);
                    state.release_port(super::state::PortKey::Udp(port));
                    picks += 1;
                    if !repick(req.remote_port, &e, picks) {
                        return Err(e);
                    }
                }
            }
        };
        let port = tunnel.port;
        state.add_tunnel(tunnel.clone(), None);
        self.tunnels.insert(tunnel.forward_id, tunnel.clone());
        info!(forward = req.id, proto = "udp", port, "tunnel open");
        let attach = state.cluster().map(|c| {
            let (tx, rx) = mpsc::channel(PEER_ATTACH_QUEUE);
            c.publish(key, tunnel.id, super::cluster::Entry::Udp(tx));
            rx
        });
        let t = Arc::new(super::udp::UdpCtx {
            ctx: self.ctx.clone(),
            tunnel: tunnel.clone(),
            mux: self.mux.clone(),
        });
        let span = tracing::info_span!("tunnel", proto = "udp", port);
        self.tasks.spawn(
            async move {
                if let Err(e) = super::udp::run(socket, t, attach).await {
                    // Tell the client its forward is gone, and why.
                    state.close_tunnel(tunnel.id, &e);
                }
                state.remove_tunnel(tunnel.id);
            }
            .instrument(span),
        );
        Ok(ServerMsg::ForwardOk {
            id: req.id,
            remote_port: port,
            url: None,
        })
    }

    /// Records a bound TCP tunnel and starts its accept loop. `on_close` runs once the
    /// tunnel has stopped for any reason and its listener is closed.
    pub fn start_tcp_tunnel(
        &mut self,
        listener: tokio::net::TcpListener,
        tunnel: Arc<TunnelInfo>,
        subdomain: Option<&str>,
        on_close: Option<futures::future::BoxFuture<'static, ()>>,
    ) {
        let state = self.ctx.state.clone();
        state.add_tunnel(tunnel.clone(), subdomain);
        self.tunnels.insert(tunnel.forward_id, tunnel.clone());
        info!(forward = tunnel.forward_id, proto = %tunnel.proto, port = tunnel.port, "tunnel open");
        let limits = tunnel
            .speed_limit
            .map(|r| (Arc::new(RateLimiter::new(r)), Arc::new(RateLimiter::new(r))));
        let t = Arc::new(tcp_tunnel::TunnelCtx {
            ctx: self.ctx.clone(),
            tunnel: tunnel.clone(),
            links: self.info.links.clone(),
            streams: self
                .streams
                .join(tunnel.id, self.ctx.state.config.max_connections),
            limits,
        });
        if let (Some(c), Some(key)) = (state.cluster(), super::cluster::key_of(&tunnel, subdomain))
        {
            c.publish(key, tunnel.id, super::cluster::Entry::Tcp(t.clone()));
        }
        let span = tracing::info_span!("tunnel", proto = %tunnel.proto, port = tunnel.port);
        self.tasks.spawn(
            async move {
                tcp_tunnel::accept_loop(listener, t).await;
                state.remove_tunnel(tunnel.id);
                if let Some(f) = on_close {
                    f.await;
                }
                debug!("tunnel closed");
            }
            .instrument(span),
        );
    }

    /// Stops every tunnel and waits until their ports are released.
    async fn teardown(&mut self) {
        for t in self.tunnels.values() {
            t.stop.cancel();
        }
        self.tasks.close();
        if timeout(TAKEOVER_WAIT, self.tasks.wait()).await.is_err() {
            warn!("tunnels did not stop in time");
        }
    }
}
