//! TCP tunnels: the public accept loop and one yamux stream per visitor.

use super::state::{ConnGuard, State, TunnelInfo};
use super::streams::{StreamPermit, TunnelBudget};
use super::Ctx;
use crate::limit::RateLimiter;
use crate::protocol::{write_frame, StreamHeader};
use crate::transport::{splice, tcp, Mux, SpliceOptions};
use std::net::SocketAddr;
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
            .spawn(visitor(sock, peer, t.clone(), permit).instrument(span));
    }
}

async fn visitor(mut sock: TcpStream, peer: SocketAddr, t: Arc<TunnelCtx>, _permit: StreamPermit) {
    let _guard = ConnGuard::new(t.ctx.state.clone(), t.tunnel.clone());
    tcp::tune(&sock);
    let result = tokio::select! {
        _ = t.tunnel.stop.cancelled() => return,
        r = carry(&mut sock, peer, &t, &t.ctx.state) => r,
    };
    match result {
        Ok(()) => debug!("visitor done"),
        Err(e) => debug!(error = %e, "visitor closed"),
    }
}

async fn carry(
    sock: &mut TcpStream,
    peer: SocketAddr,
    t: &TunnelCtx,
    _state: &State,
) -> Result<(), String> {
    let mut stream = t.mux.open().await.map_err(|e| e.to_string())?;
    let header = StreamHeader {
        forward_id: t.tunnel.forward_id,
        visitor: Some(peer),
    };
    write_frame(&mut stream, &header)
        .await
        .map_err(|e| e.to_string())?;
    let opts = SpliceOptions {
        a_to_b: Some(t.tunnel.stats.bytes_in.clone()),
        b_to_a: Some(t.tunnel.stats.bytes_out.clone()),
        b_status_first: true,
        limit_a_to_b: t.limits.as_ref().map(|l| l.0.clone()),
        limit_b_to_a: t.limits.as_ref().map(|l| l.1.clone()),
        half_closed_idle: None,
    };
    let result = splice(sock, &mut stream, opts).await;
    tcp::pass_reset(&result, sock);
    result.map(|_| ()).map_err(|e| e.to_string())
}
