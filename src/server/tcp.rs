//! TCP tunnels: the public accept loop and one yamux stream per visitor.
//!
//! A visitor's connection ends cleanly (FIN) only when both ends closed. Every other
//! end resets it (RST), so a cut-off transfer never looks complete: its splice failed
//! (the client's stream was reset, the session died), or the tunnel's `stop` token was
//! cancelled. That token is a child of the session's, so cancelling either, as the
//! session's end, a lost claim and the operator's close do, resets every visitor the
//! tunnel carries, here and (through the peer stream's reset) on a mirror node.

use super::links::Load;
use super::peer::PeerOpen;
use super::real_addr::{self, RefuseHeader, Source, Visitor};
use super::state::{ConnGuard, TunnelInfo};
use super::streams::{StreamPermit, TunnelBudget};
use super::Ctx;
use crate::limit::RateLimiter;
use crate::protocol::{write_frame, StreamHeader};
use crate::transport::{splice, tcp, MuxStream, SpliceOptions};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn, Instrument};

/// Pause after an accept error (typically out of file descriptors) so the loop does
/// not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a tunnel's connections share.
pub struct TunnelCtx {
    pub ctx: Arc<Ctx>,
    pub tunnel: Arc<TunnelInfo>,
    /// The client's connections; each visitor's stream goes on the least-loaded.
    pub links: super::links::Links,
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
    // A task's future is as large as its largest await, and every open visitor holds
    // one as long as it lasts: the setup steps are boxed, their memory given back once
    // done, so an idle visitor holds little more than its splice (mirror.rs likewise).
    let learnt = tokio::select! {
        _ = t.tunnel.stop.cancelled() => return tcp::reset_on_close(&sock),
        r = Box::pin(real_addr::learn(&mut sock, peer, source)) => r,
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
        // The tunnel ended under the visitor (its session died, its claim was lost,
        // the operator closed it): whatever it was sent so far is not all there is.
        _ = t.tunnel.stop.cancelled() => Err("the tunnel closed under it".to_string()),
        r = carry(&mut sock, v, &t) => r,
    };
    match result {
        Ok(()) => debug!("visitor done"),
        Err(e) => {
            // Only both ends closing is a clean end; anything else reaches the
            // visitor as a reset, never as a short clean close.
            tcp::reset_on_close(&sock);
            debug!(error = %e, "visitor reset");
        }
    }
}

/// Opens the client's stream for visitor `v` (on the least-loaded of its connections,
/// counted there until the returned `Load` drops) and sends what the visitor already
/// sent (and lets them go).
async fn open_client(t: &TunnelCtx, v: &mut Visitor) -> Result<(MuxStream, Load), String> {
    let (mut stream, load) = t.links.open().await.map_err(|e| e.to_string())?;
    let header = StreamHeader {
        forward_id: t.tunnel.forward_id,
        visitor: Some(v.addr),
        public: v.public,
    };
    write_frame(&mut stream, &header)
        .await
        .map_err(|e| e.to_string())?;
    let sent = v.send_early(&mut stream).await.map_err(|e| e.to_string())?;
    t.tunnel
        .stats
        .bytes_in
        .fetch_add(sent as u64, Ordering::Relaxed);
    Ok((stream, load))
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

async fn carry(sock: &mut TcpStream, mut v: Visitor, t: &TunnelCtx) -> Result<(), String> {
    let (mut stream, _load) = Box::pin(open_client(t, &mut v)).await?;
    let opts = splice_options(t);
    let result = if v.refuse_header {
        splice(&mut RefuseHeader::new(sock), &mut stream, opts).await
    } else {
        splice(sock, &mut stream, opts).await
    };
    if matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied) {
        // No byte of the header went on, and the stream is reset under the local
        // service (dropped unfinished).
        debug!(visitor = %v.addr, "{}", real_addr::UNTRUSTED_HEADER);
    }
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
    let mut v = Visitor {
        addr,
        public: open.public,
        early: Vec::new(),
        refuse_header: false,
    };
    let work = async {
        let (mut stream, _load) = Box::pin(open_client(&t, &mut v)).await?;
        splice(&mut peer, &mut stream, splice_options(&t))
            .await
            .map_err(|e| e.to_string())
    };
    // The tunnel ending under the visitor drops the peer stream unfinished: a reset,
    // which the other node passes on to its visitor.
    let result = tokio::select! {
        _ = t.tunnel.stop.cancelled() => Err("the tunnel closed under it".to_string()),
        r = work => r,
    };
    if let Err(e) = result {
        debug!(visitor = %addr, error = %e, "peer visitor reset");
    }
}
