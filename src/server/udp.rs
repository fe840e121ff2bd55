//! UDP tunnels: the public socket, a peer id per visitor address, and the forward's
//! one yamux stream carrying `(peer id, payload)` frames both ways.

use super::state::{ConnGuard, TunnelInfo};
use super::Ctx;
use crate::limit::RateLimiter;
use crate::protocol::{encode_datagram, write_frame, StreamHeader, STREAM_CONNECTED};
use crate::transport::datagram::{read_frames, write_frames, DatagramQueue};
use crate::transport::peers::PeerTable;
use crate::transport::{Mux, MuxStream};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info};

/// The client answers a new stream at once; one that does not in this time is gone.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Receive buffer: the largest possible datagram.
const RECV_BUF: usize = 65_536;

pub struct UdpCtx {
    pub ctx: Arc<Ctx>,
    pub tunnel: Arc<TunnelInfo>,
    pub mux: Mux,
}

/// Where a visitor's datagrams come from: this node's socket, or a peer node's
/// mirror of the port (its link and the id it gave the visitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum From {
    Addr(SocketAddr),
    Peer(u64, u32),
}

/// Where replies to a visitor go.
enum Via {
    Socket(SocketAddr),
    Peer(Arc<DatagramQueue>, u32),
}

/// Visitors by origin and by id.
struct Peers {
    table: PeerTable<(From, Via, ConnGuard)>,
    by_from: HashMap<From, u32>,
    next: u32,
}

impl Peers {
    fn id_for(&mut self, from: From, via: impl FnOnce() -> Via, now: Instant, t: &UdpCtx) -> u32 {
        if let Some(&id) = self.by_from.get(&from) {
            self.table.touch(id, now);
            return id;
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        let guard = ConnGuard::new(t.ctx.state.clone(), t.tunnel.clone());
        if let Some((_, (old, _, _))) = self.table.insert(id, (from, via(), guard), now) {
            self.by_from.remove(&old);
        }
        self.by_from.insert(from, id);
        id
    }

    fn expire(&mut self, now: Instant) {
        for (_, (from, _, _)) in self.table.expire(now) {
            self.by_from.remove(&from);
        }
    }
}

/// Runs a UDP tunnel until it is stopped or its stream fails; returns why it ended.
/// `attach` brings the streams of peer nodes whose mirrors of this port carry
/// datagrams of their visitors (cluster only).
pub async fn run(
    socket: UdpSocket,
    t: Arc<UdpCtx>,
    mut attach: Option<mpsc::Receiver<MuxStream>>,
) -> Result<(), String> {
    let mut stream = t.mux.open().await.map_err(|e| e.to_string())?;
    let header = StreamHeader {
        forward_id: t.tunnel.forward_id,
        visitor: None,
        public: None,
    };
    write_frame(&mut stream, &header)
        .await
        .map_err(|e| e.to_string())?;
    let mut status = [0u8; 1];
    match tokio::time::timeout(STATUS_TIMEOUT, stream.read_exact(&mut status)).await {
        Ok(Ok(_)) if status[0] == STREAM_CONNECTED => {}
        _ => return Err("the client did not accept the udp stream".into()),
    }
    let (r, w) = tokio::io::split(stream);
    let (queue, queued) = DatagramQueue::new(t.ctx.state.stats.udp_dropped.clone());
    let cfg = &t.ctx.state.config;
    let peers = Mutex::new(Peers {
        table: PeerTable::new(cfg.udp_max_peers, cfg.udp_idle_timeout),
        by_from: HashMap::new(),
        next: 0,
    });
    let lock = || peers.lock().unwrap_or_else(|e| e.into_inner());
    let sweep_every = lock().table.sweep_every();
    let (bytes_in, bytes_out) = (&t.tunnel.stats.bytes_in, &t.tunnel.stats.bytes_out);
    // The tunnel's speed limit, per direction, polices datagrams: over the rate they
    // are dropped and counted, as a congested link would.
    let limits = t
        .tunnel
        .speed_limit
        .map(|r| (RateLimiter::new(r), RateLimiter::new(r)));
    let dropped = &t.ctx.state.stats.udp_dropped;
    let within = |limit: Option<&RateLimiter>, n: usize| {
        let ok = limit.is_none_or(|l| l.try_take(Instant::now(), n));
        if !ok {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    };
    let (limit_in, limit_out) = match &limits {
        Some((i, o)) => (Some(i), Some(o)),
        None => (None, None),
    };

    let (tr, queue_ref) = (&*t, &queue);
    let inbound = async {
        let mut buf = vec![0u8; RECV_BUF];
        let mut sweep = crate::transport::ticker::interval(sweep_every);
        let mut links = FuturesUnordered::new();
        let mut next_link = 0u64;
        loop {
            tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, addr)) => {
                        // A refused visitor gets no peer id: nothing reaches the client.
                        if !t.tunnel.access.admits(addr.ip()) || !within(limit_in, n) {
                            continue;
                        }
                        let id = lock().id_for(From::Addr(addr), || Via::Socket(addr), Instant::now(), tr);
                        bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        queue.push(encode_datagram(id, &buf[..n]));
                    }
                    // An ICMP error from an earlier send: about that visitor, not us.
                    Err(e) => debug!(error = %e, "udp receive error"),
                },
                Some(s) = async { attach.as_mut()?.recv().await } => {
                    next_link += 1;
                    let link = next_link;
                    let (r, w) = tokio::io::split(s);
                    let (replies, queued) = DatagramQueue::new(dropped.clone());
                    let replies = Arc::new(replies);
                    let carried = read_frames(r, move |their, payload| {
                        if !within(limit_in, payload.len()) {
                            return;
                        }
                        let via = || Via::Peer(replies.clone(), their);
                        let id = lock().id_for(From::Peer(link, their), via, Instant::now(), tr);
                        bytes_in.fetch_add(payload.len() as u64, Ordering::Relaxed);
                        queue_ref.push(encode_datagram(id, &payload));
                    });
                    links.push(async move {
                        tokio::select! {
                            _ = carried => {}
                            _ = write_frames(queued, w) => {}
                        }
                    });
                }
                Some(()) = links.next(), if !links.is_empty() => {}
                _ = sweep.tick() => lock().expire(Instant::now()),
            }
        }
    };
    let outbound = read_frames(r, |peer, payload| {
        if !within(limit_out, payload.len()) {
            return;
        }
        let mut g = lock();
        let sent = match g.table.touch(peer, Instant::now()).map(|(_, via, _)| via) {
            // Fire and forget, as UDP is: a full socket buffer drops the datagram.
            Some(Via::Socket(addr)) => socket2::SockRef::from(&socket)
                .send_to(&payload, &(*addr).into())
                .is_ok(),
            Some(Via::Peer(q, their)) => q.push(encode_datagram(*their, &payload)),
            None => false,
        };
        if sent {
            bytes_out.fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
    });
    let result = tokio::select! {
        _ = t.tunnel.stop.cancelled() => Ok(()),
        _ = t.ctx.shutdown.cancelled() => Ok(()),
        () = inbound => Ok(()),
        r = write_frames(queued, w) => r.map_err(|e| format!("udp stream: {e}")),
        r = outbound => r.map_err(|e| format!("udp stream: {e}")),
    };
    if let Err(e) = &result {
        info!(error = %e, "udp forward stream failed");
    }
    result
}
