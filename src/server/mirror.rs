//! Mirrors: this node's listeners for tunnels other nodes hold, so a visitor may reach
//! any node of the cluster.
//!
//! Owns which claims are mirrored (every claim in the directory held by another node,
//! learnt from its events and a periodic reconcile) and the visitor's side of a peer
//! stream: a TCP or http visitor becomes one stream to the holder, a UDP port's
//! datagrams share one. The holder enforces the tunnel's rules again; the mirror
//! checks them first (they travel in the claim), so a refused visitor costs no hop.
//! A mirror that stops closes its listener; connections it already carries go on.
//! A visitor's connection ends cleanly only when both ends closed; any other end (the
//! holder reset the peer stream, the peer link died, the node stopped) resets it.

use super::cluster::Cluster;
use super::peer::{write_open, PeerOpen};
use super::real_addr::{self, RefuseHeader, Source};
use super::state::PortKey;
use super::Ctx;
use crate::cluster::{ClaimKey, DirEvent, Holder, Rules};
use crate::protocol::{encode_datagram, Cidr, Proto};
use crate::transport::datagram::{read_frames, write_frames, DatagramQueue};
use crate::transport::peers::PeerTable;
use crate::transport::{splice, tcp, SpliceOptions};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// How often the whole directory is read, in case an event was missed.
const RECONCILE_EVERY: Duration = Duration::from_secs(3);
/// Listings a claim must be missing from before its mirror goes (a Redis restarted
/// empty shows no claims until their holders renew them).
const MISSING_STRIKES: u8 = 2;
/// How long a stopping mirror may take to close its listener.
const STOP_WAIT: Duration = Duration::from_secs(2);
const RECV_BUF: usize = 65_536;

struct Mirror {
    holder: Holder,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    strikes: u8,
}

#[derive(Default)]
pub struct Mirrors {
    map: Mutex<HashMap<ClaimKey, Mirror>>,
}

impl Mirrors {
    fn lock(&self) -> MutexGuard<'_, HashMap<ClaimKey, Mirror>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node holding a mirrored claim now.
    fn holder(&self, key: &ClaimKey) -> Option<Holder> {
        self.lock().get(key).map(|m| m.holder.clone())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the mirror of `key` and waits until its listener is closed.
    pub(crate) async fn remove(&self, ctx: &Ctx, key: &ClaimKey) {
        let Some(mut m) = self.lock().remove(key) else {
            return;
        };
        m.stop.cancel();
        if let Some(task) = m.task.take() {
            let _ = tokio::time::timeout(STOP_WAIT, task).await;
        }
        unmark(ctx, key);
        debug!(%key, "mirror stopped");
    }
}

fn unmark(ctx: &Ctx, key: &ClaimKey) {
    match key {
        ClaimKey::Tcp(p) => ctx.state.unmirror_port(PortKey::Tcp(*p)),
        ClaimKey::Udp(p) => ctx.state.unmirror_port(PortKey::Udp(*p)),
        ClaimKey::Subdomain(s) => ctx.state.unmirror_subdomain(s),
    }
}

/// Keeps the mirrors equal to the directory's claims of other nodes, until shutdown.
pub(crate) async fn run(ctx: Arc<Ctx>, cluster: Arc<Cluster>) {
    let mut events = cluster.dir.subscribe();
    let mut tick = crate::transport::ticker::interval(RECONCILE_EVERY);
    loop {
        tokio::select! {
            _ = ctx.kill.cancelled() => break,
            ev = events.recv() => match ev {
                Ok(DirEvent::Claimed(key, holder)) => ensure(&ctx, &cluster, key, *holder).await,
                Ok(DirEvent::Released(key)) => cluster.mirrors.remove(&ctx, &key).await,
                Ok(DirEvent::Resync) | Err(RecvError::Lagged(_)) => reconcile(&ctx, &cluster).await,
                Err(RecvError::Closed) => break,
            },
            _ = tick.tick() => reconcile(&ctx, &cluster).await,
        }
    }
    let keys: Vec<ClaimKey> = cluster.mirrors.lock().keys().cloned().collect();
    for key in keys {
        cluster.mirrors.remove(&ctx, &key).await;
    }
}

async fn reconcile(ctx: &Arc<Ctx>, cluster: &Arc<Cluster>) {
    let claims = match cluster.dir.claims().await {
        Ok(c) => c,
        Err(e) => {
            cluster.stats.dir_errors.fetch_add(1, Ordering::Relaxed);
            // Keep every mirror as it is: established tunnels ride out the outage.
            return debug!(error = ?e, "cannot read the directory; mirrors kept");
        }
    };
    let live: HashMap<ClaimKey, Holder> = claims.into_iter().collect();
    let gone: Vec<ClaimKey> = {
        let mut map = cluster.mirrors.lock();
        map.iter_mut()
            .filter_map(|(k, m)| {
                if live.get(k).is_some_and(|h| h.node != cluster.node) {
                    m.strikes = 0;
                    return None;
                }
                m.strikes += 1;
                (m.strikes >= MISSING_STRIKES || live.contains_key(k)).then(|| k.clone())
            })
            .collect()
    };
    for key in gone {
        cluster.mirrors.remove(ctx, &key).await;
    }
    for (key, holder) in live {
        ensure(ctx, cluster, key, holder).await;
    }
}

/// Mirrors `key` unless this node holds it (then any mirror of it goes).
async fn ensure(ctx: &Arc<Ctx>, cluster: &Arc<Cluster>, key: ClaimKey, holder: Holder) {
    if holder.node == cluster.node {
        if !cluster.holds(&key) {
            // A claim in this node's name it does not know: a takeover in flight, or
            // one left by a previous run that the next listing still shows.
            return;
        }
        return cluster.mirrors.remove(ctx, &key).await;
    }
    if let Some(m) = cluster.mirrors.lock().get_mut(&key) {
        m.holder = holder;
        m.strikes = 0;
        return;
    }
    if cluster.holds(&key) {
        // Another node took over one of ours; the renewal ends our session.
        return;
    }
    let stop = ctx.kill.child_token();
    let task = match start(ctx, cluster, &key, &holder, stop.clone()).await {
        Ok(t) => t,
        Err(e) => return warn!(%key, error = %e, "cannot mirror a claim of node {}", holder.node),
    };
    info!(%key, node = %holder.node, "mirroring");
    cluster.mirrors.lock().insert(
        key,
        Mirror {
            holder,
            stop,
            task: Some(task),
            strikes: 0,
        },
    );
}

async fn start(
    ctx: &Arc<Ctx>,
    cluster: &Arc<Cluster>,
    key: &ClaimKey,
    holder: &Holder,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, String> {
    let state = &ctx.state;
    let span = tracing::info_span!("mirror", %key);
    let (ctx, cluster, k) = (ctx.clone(), cluster.clone(), key.clone());
    match key {
        ClaimKey::Tcp(p) => {
            if !state.mirror_port(PortKey::Tcp(*p)) {
                return Err("the port is held on this node".into());
            }
            match TcpListener::bind((state.config.bind_addr, *p)).await {
                Ok(l) => Ok(tokio::spawn(
                    accept_loop(l, ctx, cluster, k, Proto::Tcp, stop).instrument(span),
                )),
                Err(e) => {
                    state.unmirror_port(PortKey::Tcp(*p));
                    Err(e.to_string())
                }
            }
        }
        ClaimKey::Udp(p) => {
            if !state.mirror_port(PortKey::Udp(*p)) {
                return Err("the port is held on this node".into());
            }
            match UdpSocket::bind((state.config.udp_bind_addr, *p)).await {
                Ok(s) => Ok(tokio::spawn(
                    udp_loop(s, ctx, cluster, k, stop).instrument(span),
                )),
                Err(e) => {
                    state.unmirror_port(PortKey::Udp(*p));
                    Err(e.to_string())
                }
            }
        }
        ClaimKey::Subdomain(sub) => {
            let Some(caddy) = state.caddy.clone() else {
                return Err("this node has no Caddy (--domain, --caddy-admin)".into());
            };
            if !state.mirror_subdomain(sub) {
                return Err("the subdomain is held on this node".into());
            }
            let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
                Ok(l) => l,
                Err(e) => {
                    state.unmirror_subdomain(sub);
                    return Err(e.to_string());
                }
            };
            let port = listener.local_addr().map_err(|e| e.to_string())?.port();
            let rules = holder.rules.clone().unwrap_or_default();
            let sign_in = match (rules.sign_in, state.sign_in_gate()) {
                (Some(allow), Some(gate)) => Some(crate::caddy::SignInRoute { gate, allow }),
                (Some(_), None) => {
                    state.unmirror_subdomain(sub);
                    return Err(
                        "the forward signs visitors in and this node has no --oidc-issuer".into(),
                    );
                }
                (None, _) => None,
            };
            let route = crate::caddy::RouteRules {
                allow: rules.allow,
                deny: rules.deny,
                basic_auth: rules.basic_auth,
                visitor_header: rules.visitor_header,
                sign_in,
            };
            let published = match caddy.publish(sub, state.next_id(), port, &route).await {
                Ok(p) => p,
                Err(e) => {
                    state.unmirror_subdomain(sub);
                    return Err(format!("Caddy did not take the route: {e}"));
                }
            };
            Ok(tokio::spawn(
                async move {
                    accept_loop(listener, ctx, cluster, k, Proto::Http, stop).await;
                    if let Err(e) = caddy.unpublish(&published).await {
                        warn!(error = %e, "cannot remove a mirror's route from Caddy");
                    }
                }
                .instrument(span),
            ))
        }
    }
}

fn admits(rules: Option<&Rules>, ip: std::net::IpAddr) -> bool {
    let Some(r) = rules else { return true };
    let within = |c: &[Cidr]| c.iter().any(|c| c.contains(ip));
    (r.allow.is_empty() || within(&r.allow)) && !within(&r.deny)
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    cluster: Arc<Cluster>,
    key: ClaimKey,
    proto: Proto,
    stop: CancellationToken,
) {
    loop {
        let (sock, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = ctx.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(holder) = cluster.mirrors.holder(&key) else {
            break;
        };
        let visitor_header = holder.rules.as_ref().is_some_and(|r| r.visitor_header);
        let trusted = &ctx.state.config.accept_proxy_protocol;
        let source = real_addr::source(proto, visitor_header, trusted, peer);
        if proto == Proto::Tcp && source.is_peer() && !admits(holder.rules.as_ref(), peer.ip()) {
            debug!(%peer, "visitor refused by the tunnel's access rules");
            continue;
        }
        let (cluster, key, kill) = (cluster.clone(), key.clone(), ctx.kill.clone());
        let span = tracing::debug_span!("stream", visitor = %peer);
        ctx.conns.spawn(
            async move {
                let mut sock = sock;
                let result = tokio::select! {
                    _ = kill.cancelled() => Err("the node stopped under it".to_string()),
                    r = visitor(&mut sock, peer, source, &cluster, key, holder) => r,
                };
                if let Err(e) = result {
                    // Only both ends closing is a clean end: the holder's reset, a peer
                    // link that died, or anything else reaches the visitor as a reset.
                    tcp::reset_on_close(&sock);
                    debug!(error = %e, "visitor reset");
                }
            }
            .instrument(span),
        );
    }
}

async fn visitor(
    sock: &mut TcpStream,
    peer: SocketAddr,
    source: Source,
    cluster: &Cluster,
    key: ClaimKey,
    holder: Holder,
) -> Result<(), String> {
    tcp::tune(sock);
    let mut v = Box::pin(real_addr::learn(sock, peer, source))
        .await
        .map_err(|e| e.to_string())?;
    if !source.is_peer() && !admits(holder.rules.as_ref(), v.addr.ip()) {
        return Err("visitor refused by the tunnel's access rules".into());
    }
    let opening = async {
        match open_to_holder(cluster, &holder, key.clone(), Some(v.addr), v.public).await {
            Ok(s) => Ok(s),
            Err(e) => {
                // The holder may have just died and its client moved to another node,
                // whose claim this node has not heard of yet: ask the directory once.
                let fresh = current_holder(cluster, &key, &holder).await.ok_or(e)?;
                open_to_holder(cluster, &fresh, key, Some(v.addr), v.public).await
            }
        }
    };
    let mut stream = Box::pin(opening).await?;
    v.send_early(&mut stream).await.map_err(|e| e.to_string())?;
    let opts = SpliceOptions::default();
    let result = if v.refuse_header {
        splice(&mut RefuseHeader::new(sock), &mut stream, opts).await
    } else {
        splice(sock, &mut stream, opts).await
    };
    result.map(|_| ()).map_err(|e| e.to_string())
}

/// The claim's holder as the directory has it now, when that is another node than
/// `stale` (and not this one); the mirror follows it.
async fn current_holder(cluster: &Cluster, key: &ClaimKey, stale: &Holder) -> Option<Holder> {
    let now = cluster.dir.lookup(key).await.ok()??;
    if now.node == stale.node || now.node == cluster.node {
        return None;
    }
    if let Some(m) = cluster.mirrors.lock().get_mut(key) {
        m.holder = now.clone();
    }
    Some(now)
}

async fn open_to_holder(
    cluster: &Cluster,
    holder: &Holder,
    key: ClaimKey,
    visitor: Option<SocketAddr>,
    public: Option<SocketAddr>,
) -> Result<crate::transport::MuxStream, String> {
    let addr = cluster.peer_addr(&holder.node).await?;
    let mut stream = match cluster.links.open(&holder.node, &addr).await {
        Ok(s) => s,
        // The node may have restarted on another address: read it again, once.
        Err(e) => match cluster.refresh_peer_addr(&holder.node).await {
            Ok(fresh) if fresh != addr => cluster.links.open(&holder.node, &fresh).await?,
            _ => return Err(e),
        },
    };
    let open = PeerOpen {
        key,
        visitor,
        public,
    };
    write_open(&mut stream, &open).await?;
    cluster.stats.streams_out.fetch_add(1, Ordering::Relaxed);
    Ok(stream)
}

/// Visitors of a mirrored UDP port, by address and by the id the holder sees.
struct UdpPeers {
    table: PeerTable<SocketAddr>,
    by_addr: HashMap<SocketAddr, u32>,
    next: u32,
}

impl UdpPeers {
    fn id_for(&mut self, addr: SocketAddr, now: Instant) -> u32 {
        if let Some(&id) = self.by_addr.get(&addr) {
            self.table.touch(id, now);
            return id;
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        if let Some((_, old)) = self.table.insert(id, addr, now) {
            self.by_addr.remove(&old);
        }
        self.by_addr.insert(addr, id);
        id
    }
}

fn lock(p: &Mutex<UdpPeers>) -> MutexGuard<'_, UdpPeers> {
    // A poisoned table is still a table.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stream to the holder for the port's datagrams, both ways.
struct UdpLink {
    node: String,
    queue: DatagramQueue,
    done: CancellationToken,
}

async fn udp_loop(
    socket: UdpSocket,
    ctx: Arc<Ctx>,
    cluster: Arc<Cluster>,
    key: ClaimKey,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let cfg = &ctx.state.config;
    let peers = Arc::new(Mutex::new(UdpPeers {
        table: PeerTable::new(cfg.udp_max_peers, cfg.udp_idle_timeout),
        by_addr: HashMap::new(),
        next: 0,
    }));
    let mut sweep = crate::transport::ticker::interval(lock(&peers).table.sweep_every());
    let mut link: Option<UdpLink> = None;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let (n, from) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = ctx.shutdown.cancelled() => break,
            _ = sweep.tick() => {
                let now = Instant::now();
                let mut p = lock(&peers);
                for (_, addr) in p.table.expire(now) {
                    p.by_addr.remove(&addr);
                }
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "udp receive error");
                    continue;
                }
            },
        };
        let Some(holder) = cluster.mirrors.holder(&key) else {
            break;
        };
        if !admits(holder.rules.as_ref(), from.ip()) {
            continue;
        }
        let stale = link
            .as_ref()
            .is_none_or(|l| l.done.is_cancelled() || l.node != holder.node);
        if stale {
            if let Some(old) = link.take() {
                old.done.cancel();
            }
            let opened = match open_udp_link(&cluster, &holder, &key, &socket, &peers, &ctx).await {
                Ok(l) => Ok(l),
                Err(e) => match current_holder(&cluster, &key, &holder).await {
                    Some(h) => open_udp_link(&cluster, &h, &key, &socket, &peers, &ctx).await,
                    None => Err(e),
                },
            };
            match opened {
                Ok(l) => link = Some(l),
                Err(e) => {
                    debug!(error = %e, "no stream to the holder; datagram dropped");
                    continue;
                }
            }
        }
        let id = lock(&peers).id_for(from, Instant::now());
        if let Some(l) = &link {
            l.queue.push(encode_datagram(id, &buf[..n]));
        }
    }
    if let Some(l) = link {
        l.done.cancel();
    }
}

async fn open_udp_link(
    cluster: &Cluster,
    holder: &Holder,
    key: &ClaimKey,
    socket: &Arc<UdpSocket>,
    peers: &Arc<Mutex<UdpPeers>>,
    ctx: &Ctx,
) -> Result<UdpLink, String> {
    let stream = open_to_holder(cluster, holder, key.clone(), None, None).await?;
    let (r, w) = tokio::io::split(stream);
    let (queue, queued) = DatagramQueue::new(ctx.state.stats.udp_dropped.clone());
    let done = CancellationToken::new();
    let (socket, peers, d) = (socket.clone(), peers.clone(), done.clone());
    tokio::spawn(async move {
        let replies = read_frames(r, |id, payload| {
            let addr = lock(&peers).table.peek(id).copied();
            if let Some(addr) = addr {
                let _ = socket2::SockRef::from(&*socket).send_to(&payload, &addr.into());
            }
        });
        tokio::select! {
            _ = d.cancelled() => {}
            _ = replies => {}
            _ = write_frames(queued, w) => {}
        }
        d.cancel();
    });
    Ok(UdpLink {
        node: holder.node.clone(),
        queue,
        done,
    })
}
