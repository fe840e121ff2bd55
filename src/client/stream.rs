//! One data stream opened by the server: read its header, dial the local service,
//! answer with the status byte, splice.

use super::local::{self, DownWarning};
use super::udp::{self, UdpLimits};
use crate::config::ForwardSpec;
use crate::protocol::Proto;
use crate::protocol::{read_header_frame, StreamHeader, MAX_HEADER_FRAME, STREAM_CONNECTED};
use crate::transport::{proxy_protocol, splice, tcp, MuxStream, SpliceOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tracing::{debug, warn, Instrument};

/// The server writes the header with the stream's first bytes; a stream without one
/// in this time is abandoned.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A local service that does not accept within this time counts as down. Streams the
/// client has not answered hold yamux's unacknowledged-stream budget, so this is bounded.
const LOCAL_DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// One forward as the data path sees it: where it goes, and its warning state.
#[derive(Debug)]
pub(crate) struct Route {
    pub spec: ForwardSpec,
    pub down: DownWarning,
}

impl Route {
    pub fn new(spec: ForwardSpec) -> Self {
        Route {
            spec,
            down: DownWarning::default(),
        }
    }
}

/// Routes: forward id → what it forwards to. Fixed for the life of the process.
pub(crate) type Routes = Arc<Vec<Route>>;

pub(crate) async fn handle(mut stream: MuxStream, routes: Routes, udp: UdpLimits) {
    let header: StreamHeader = match timeout(
        HEADER_TIMEOUT,
        read_header_frame(&mut stream, MAX_HEADER_FRAME),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return debug!(error = %e, "bad stream header"),
        Err(_) => return debug!("no stream header in time"),
    };
    let Some(route) = routes.get(header.forward_id as usize) else {
        return debug!(forward = header.forward_id, "stream for an unknown forward");
    };
    if route.spec.proto == Proto::Udp {
        let span = tracing::info_span!("udp", forward = header.forward_id);
        return serve_udp(stream, &route.spec, udp).instrument(span).await;
    }
    let span =
        tracing::debug_span!("stream", forward = header.forward_id, visitor = ?header.visitor);
    connect(stream, route, &header).instrument(span).await
}

async fn serve_udp(stream: MuxStream, route: &ForwardSpec, limits: UdpLimits) {
    let target = match udp::resolve(route).await {
        Ok(t) => t,
        Err(e) => {
            return warn!(error = %e, local = %route.local(), "cannot resolve the local udp service")
        }
    };
    match udp::serve(stream, target, limits, udp::new_table(limits)).await {
        Ok(()) => debug!("udp stream ended"),
        Err(e) => warn!(error = %e, "udp stream failed"),
    }
}

async fn connect(mut stream: MuxStream, route: &Route, header: &StreamHeader) {
    let spec = &route.spec;
    let dialled = match timeout(
        LOCAL_DIAL_TIMEOUT,
        tcp::dial(&spec.local_host, spec.local_port),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    };
    let mut local = match dialled {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, local = %spec.local(), "local service unreachable");
            route.down.report(spec, &e);
            // An http visitor is answered by us: the tunnel works, the service does not.
            if spec.proto == Proto::Http && stream.write_all(&[STREAM_CONNECTED]).await.is_ok() {
                local::bad_gateway(&mut stream).await;
            }
            return;
        }
    };
    // The PROXY header goes first, so the service reads the visitor before any byte
    // of the visitor's.
    if let (Some(version), Some(visitor)) = (spec.options.proxy_protocol, header.visitor) {
        let h = proxy_protocol::header(version, visitor, header.public, false);
        if let Err(e) = local.write_all(&h).await {
            return debug!(error = %e, "cannot write the PROXY header to the local service");
        }
    }
    if stream.write_all(&[STREAM_CONNECTED]).await.is_err() {
        return;
    }
    let result = match super::inspect::store().filter(|_| spec.inspected()) {
        Some(store) => {
            let recorder = super::inspect::Recorder::new(store, header.forward_id, None);
            let mut tapped = super::inspect::Tap::new(local, recorder);
            let result = splice(&mut tapped, &mut stream, SpliceOptions::default()).await;
            tcp::pass_reset(&result, tapped.inner());
            result
        }
        None => {
            let result = splice(&mut local, &mut stream, SpliceOptions::default()).await;
            tcp::pass_reset(&result, &local);
            result
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "stream ended");
    }
}
