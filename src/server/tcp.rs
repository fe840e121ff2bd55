//! TCP tunnels: the public accept loop and one yamux stream per visitor.

use super::peer::PeerOpen;
use super::real_addr::{self, RefuseHeader, Source, Visitor};
use super::state::{ConnGuard, TunnelInfo};
use super::streams::{StreamPermit, TunnelBudget};
use super::Ctx;
use crate::limit::RateLimiter;
use crate::protocol::{write_frame, StreamHeader};
use crate::transport::{splice, tcp, Mux, MuxStream, SpliceOptions};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn, Instrument};

/// Pause after an accept error (typically out of file descriptors) so the loop does
/// not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a tunnel's connections share.
pub struct TunnelCtx {
    pub ctx: Arc<Ctx>,
    pub tunnel: Arc<TunnelInfo>,
    pub mux: Mux,
    /// This tunnel's part of the session's stream budget.
    pub streams: TunnelBudget,
    pub limits: Option<(Arc<RateLimiter>, Arc<RateLimiter>)>,
}

/// Accepts public connections until the tunnel is stopped or the server shuts down.
pub async fn accept_loop(listener: TcpListener, t: Arc<TunnelCtx>) {
    loop {
        let accepted = tokio::select! {
            _ = t.tunnel.stop.cancelled() => break,
            _ = t.ctx.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let source = visitor_source(&t, peer);
        if source.is_peer() && !t.tunnel.access.admits(peer.ip()) {
            debug!(%peer, "visitor refused by the tunnel's access rules");
            continue;
        }
        // Caps cost the offending tunnel only: its visitor is closed at once, and the
        // budget keeps room for the siblings (server/streams.rs).
        let permit = match t.streams.try_acquire() {
            Ok(p) => p,
            Err(why) => {
                debug!(%peer, ?why, "stream cap reached; visitor refused");
                continue;
            }
        };
        let span = tracing::debug_span!("stream", visitor = %peer);
        t.ctx
            .conns
            .spawn(visitor(sock, peer, source, t.clone(), permit).instrument(span));
    }
}

/// Where this connection's visitor address comes from (`real_addr`).
fn visitor_source(t: &TunnelCtx, peer: SocketAddr) -> Source {
    let trusted = &t.ctx.state.config.accept_proxy_protocol;
    real_addr::source(t.tunnel.proto, t.tunnel.visitor_from_caddy, trusted, peer)
}

async fn visitor(
    mut sock: TcpStream,
    peer: SocketAddr,
    source: Source,
    t: Arc<TunnelCtx>,
    _permit: StreamPermit,
) {
    tcp::tune(&sock);
    let learnt = tokio::select! {
        _ = t.tunnel.stop.cancelled() => return,
        r = real_addr::learn(&mut sock, peer, source) => r,
    };
    let v = match learnt {
        Ok(v) => v,
        Err(e) => return debug!(error = %e, "visitor address not learnt; closed"),
    };
    // A visitor announced by a load balancer meets the rules the TCP peer met above.
    if !source.is_peer() && !t.tunnel.access.admits(v.addr.ip()) {
        return debug!(visitor = %v.addr, "visitor refused by the tunnel's access rules");
    }
    // Counted from here: a refused visitor is no connection of the tunnel's.
    let _guard = ConnGuard::new(t.ctx.state.clone(), t.tunnel.clone());
    let result = tokio::select! {
        _ = t.tunnel.stop.cancelled() => return,
        r = carry(&mut sock, v, source, &t) => r,
    };
    match result {
        Ok(()) => debug!("visitor done"),
        Err(e) => debug!(error = %e, "visitor closed"),
    }
}

/// Opens the client's stream for visitor `v` and sends what the visitor already sent.
async fn open_client(t: &TunnelCtx, v: &Visitor) -> Result<MuxStream, String> {
    let mut stream = t.mux.open().await.map_err(|e| e.to_string())?;
    let header = StreamHeader {
        forward_id: t.tunnel.forward_id,
        visitor: Some(v.addr),
        public: v.public,
    };
    write_frame(&mut stream, &header)
        .await
        .map_err(|e| e.to_string())?;
    if !v.early.is_empty() {
        stream
            .write_all(&v.early)
            .await
            .map_err(|e| e.to_string())?;
        t.tunnel
            .stats
            .bytes_in
            .fetch_add(v.early.len() as u64, Ordering::Relaxed);
    }
    Ok(stream)
}

/// The tunnel's counters and speed limits for one visitor's splice.
fn splice_options(t: &TunnelCtx) -> SpliceOptions {
    SpliceOptions {
        a_to_b: Some(t.tunnel.stats.bytes_in.clone()),
        b_to_a: Some(t.tunnel.stats.bytes_out.clone()),
        b_status_first: true,
        limit_a_to_b: t.limits.as_ref().map(|l| l.0.clone()),
        limit_b_to_a: t.limits.as_ref().map(|l| l.1.clone()),
        half_closed_idle: None,
    }
}

async fn carry(
    sock: &mut TcpStream,
    v: Visitor,
    source: Source,
    t: &TunnelCtx,
) -> Result<(), String> {
    let mut stream = open_client(t, &v).await?;
    let opts = splice_options(t);
    let result = if source == Source::PeerNoHeader {
        splice(&mut RefuseHeader::new(sock), &mut stream, opts).await
    } else {
        splice(sock, &mut stream, opts).await
    };
    if matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied) {
        // Reset, so the sender does not take it for a clean end; no byte of the
        // header went on, and the stream is reset under the local service.
        tcp::reset_on_close(sock);
        debug!(visitor = %v.addr, "{}", real_addr::UNTRUSTED_HEADER);
    }
    tcp::pass_reset(&result, sock);
    result.map(|_| ()).map_err(|e| e.to_string())
}

/// A visitor another node of the cluster accepted for this tunnel, arriving as a
/// stream on its peer link: the same rules, caps and counters as one accepted here.
/// A failure drops the peer stream unclosed, which resets it, so the reset reaches
/// the visitor on the other node.
pub async fn carry_from_peer(mut peer: MuxStream, open: PeerOpen, t: Arc<TunnelCtx>) {
    let Some(addr) = open.visitor else {
        return debug!("peer stream without a visitor; reset");
    };
    if !t.tunnel.access.admits(addr.ip()) {
        return debug!(visitor = %addr, "visitor refused by the tunnel's access rules");
    }
    let Ok(_permit) = t.streams.try_acquire() else {
        return debug!(visitor = %addr, "stream cap reached; peer visitor refused");
    };
    let _guard = ConnGuard::new(t.ctx.state.clone(), t.tunnel.clone());
    let v = Visitor {
        addr,
        public: open.public,
        early: Vec::new(),
    };
    let work = async {
        let mut stream = open_client(&t, &v).await?;
        splice(&mut peer, &mut stream, splice_options(&t))
            .await
            .map_err(|e| e.to_string())
    };
    let result = tokio::select! {
        _ = t.tunnel.stop.cancelled() => return,
        r = work => r,
    };
    if let Err(e) = result {
        debug!(visitor = %addr, error = %e, "peer visitor closed");
    }
}
