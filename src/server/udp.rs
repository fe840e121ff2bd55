//! UDP tunnels: the public socket, a peer id per visitor address, and the forward's
//! one yamux stream carrying `(peer id, payload)` frames both ways.

use super::state::{ConnGuard, TunnelInfo};
use super::Ctx;
use crate::limit::RateLimiter;
use crate::protocol::{encode_datagram, write_frame, StreamHeader, STREAM_CONNECTED};
use crate::transport::datagram::{read_frames, write_frames, DatagramQueue};
use crate::transport::peers::PeerTable;
use crate::transport::Mux;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;
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

/// Visitors by address and by id.
struct Peers {
    table: PeerTable<(SocketAddr, ConnGuard)>,
    by_addr: HashMap<SocketAddr, u32>,
    next: u32,
}

impl Peers {
    fn id_for(&mut self, addr: SocketAddr, now: Instant, t: &UdpCtx) -> u32 {
        if let Some(&id) = self.by_addr.get(&addr) {
            self.table.touch(id, now);
            return id;
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        let guard = ConnGuard::new(t.ctx.state.clone(), t.tunnel.clone());
        if let Some((_, (old, _))) = self.table.insert(id, (addr, guard), now) {
            self.by_addr.remove(&old);
        }
        self.by_addr.insert(addr, id);
        id
    }

    fn expire(&mut self, now: Instant) {
        for (_, (addr, _)) in self.table.expire(now) {
            self.by_addr.remove(&addr);
        }
    }
}

/// Runs a UDP tunnel until it is stopped or its stream fails; returns why it ended.
pub async fn run(socket: UdpSocket, t: Arc<UdpCtx>) -> Result<(), String> {
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
        by_addr: HashMap::new(),
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

    let inbound = async {
        let mut buf = vec![0u8; RECV_BUF];
        let mut sweep = tokio::time::interval(sweep_every);
        loop {
            tokio::select! {
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, addr)) => {
                        // A refused visitor gets no peer id: nothing reaches the client.
                        if !t.tunnel.access.admits(addr.ip()) || !within(limit_in, n) {
                            continue;
                        }
                        let id = lock().id_for(addr, Instant::now(), &t);
                        bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        queue.push(encode_datagram(id, &buf[..n]));
                    }
                    // An ICMP error from an earlier send: about that visitor, not us.
                    Err(e) => debug!(error = %e, "udp receive error"),
                },
                _ = sweep.tick() => lock().expire(Instant::now()),
            }
        }
    };
    let outbound = read_frames(r, |peer, payload| {
        let addr = lock().table.touch(peer, Instant::now()).map(|(a, _)| *a);
        if let Some(addr) = addr.filter(|_| within(limit_out, payload.len())) {
            // Fire and forget, as UDP is: a full socket buffer drops the datagram.
            if socket2::SockRef::from(&socket)
                .send_to(&payload, &addr.into())
                .is_ok()
            {
                bytes_out.fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
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
