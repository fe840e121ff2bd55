//! One data stream opened by the server: read its header, dial the local service,
//! answer with the status byte, splice.

use super::inspect;
use super::local::{self, DownWarning};
use super::udp::{self, UdpLimits};
use crate::config::ForwardSpec;
use crate::protocol::Proto;
use crate::protocol::{read_header_frame, StreamHeader, MAX_HEADER_FRAME, STREAM_CONNECTED};
use crate::transport::mux::{self, DriverTask, Mode, Mux, MAX_STREAMS_LIMIT};
use crate::transport::splice::SpliceTotals;
use crate::transport::{proxy_protocol, splice, tcp, MuxStream, SpliceOptions};
use futures::io::{AsyncRead, AsyncWrite};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
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
    /// How the inspector names the forward.
    pub label: Arc<str>,
    /// Shared with a UDP forward's socket readers, which outlive no route but run as
    /// tasks of their own.
    pub down: Arc<DownWarning>,
}

impl Route {
    /// A route whose local service going up or down wakes `changed`.
    pub fn new(spec: ForwardSpec, changed: Arc<tokio::sync::Notify>) -> Self {
        Route {
            down: Arc::new(DownWarning::watched(&spec, changed)),
            label: spec.label().into(),
            spec,
        }
    }
}

/// Routes: forward id → what it forwards to. Fixed for the life of the process.
pub(crate) type Routes = Arc<Vec<Route>>;

/// Starts the client side of one connection to the server: every stream the server
/// opens on it is a visitor, served with `routes`; `path` is where the connection runs
/// (frame size). The first connection (session.rs) and the ones joined to it
/// (links.rs) start alike.
pub(crate) fn start_mux<IO>(
    io: IO,
    path: mux::Path,
    routes: Routes,
    udp: UdpLimits,
    stop: CancellationToken,
) -> (Mux, DriverTask)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let on_inbound = move |s: MuxStream| {
        tokio::spawn(handle(s, routes.clone(), udp));
    };
    let cfg = mux::config_for_path(MAX_STREAMS_LIMIT, path);
    let (mux, driver) = mux::start(io, cfg, Mode::Client, on_inbound, stop);
    (mux, DriverTask::spawn(driver))
}

async fn handle(mut stream: MuxStream, routes: Routes, udp: UdpLimits) {
    // A task's future is as large as its largest await, and every open visitor holds
    // one as long as it lasts: what runs once (the setup) or rarely is boxed, and its
    // memory given back when done, so an idle visitor holds little more than its splice.
    let header: StreamHeader = match Box::pin(timeout(
        HEADER_TIMEOUT,
        read_header_frame(&mut stream, MAX_HEADER_FRAME),
    ))
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
        return Box::pin(serve_udp(stream, route, udp).instrument(span)).await;
    }
    let span =
        tracing::debug_span!("stream", forward = header.forward_id, visitor = ?header.visitor);
    connect(stream, route, &header).instrument(span).await
}

async fn serve_udp(stream: MuxStream, route: &Route, limits: UdpLimits) {
    let spec = &route.spec;
    let target = match udp::resolve(spec).await {
        Ok(t) => t,
        Err(e) => {
            return warn!(error = %e, local = %spec.local(), "cannot resolve the local udp service")
        }
    };
    let table = udp::new_table(limits);
    match udp::serve(stream, target, limits, table, route.down.clone()).await {
        Ok(()) => debug!("udp stream ended"),
        Err(e) => warn!(error = %e, "udp stream failed"),
    }
}

async fn connect(mut stream: MuxStream, route: &Route, header: &StreamHeader) {
    let spec = &route.spec;
    let dialled = match Box::pin(timeout(
        LOCAL_DIAL_TIMEOUT,
        tcp::dial(&spec.local_host, spec.local_port),
    ))
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    };
    let mut local = match dialled {
        Ok(s) => {
            route.down.answered();
            s
        }
        Err(e) => {
            debug!(error = %e, local = %spec.local(), "local service unreachable");
            route.down.report(&e);
            if spec.proto == Proto::Http {
                Box::pin(answer_bad_gateway(stream, route, header)).await;
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
    let result = match recorder(route, header) {
        Some(recorder) => Box::pin(splice_recorded(local, &mut stream, recorder)).await,
        None => {
            let result = splice(&mut local, &mut stream, SpliceOptions::default()).await;
            reset_unless_clean(&result, &local);
            result
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "stream reset");
    }
}

/// An http visitor whose local service is unreachable is answered by us: the tunnel
/// works, the service does not. The inspector shows that answer as the exchange it is.
async fn answer_bad_gateway(mut stream: MuxStream, route: &Route, header: &StreamHeader) {
    if stream.write_all(&[STREAM_CONNECTED]).await.is_err() {
        return;
    }
    let mut recorder = recorder(route, header);
    local::bad_gateway(&mut stream, recorder.as_mut()).await;
    if let Some(r) = recorder.as_mut() {
        r.closed();
    }
}

/// The splice of an inspected stream, its service side tapped by the recorder.
async fn splice_recorded(
    local: tokio::net::TcpStream,
    stream: &mut MuxStream,
    recorder: inspect::Recorder,
) -> std::io::Result<SpliceTotals> {
    let mut tapped = super::inspect::Tap::new(local, recorder);
    let result = splice(&mut tapped, stream, SpliceOptions::default()).await;
    reset_unless_clean(&result, tapped.inner());
    result
}

/// A recorder for the stream's exchanges when the inspector runs and inspects this
/// forward.
fn recorder(route: &Route, header: &StreamHeader) -> Option<inspect::Recorder> {
    let store = inspect::store().filter(|_| route.spec.inspected())?;
    let source = inspect::Source {
        forward: header.forward_id,
        tunnel: route.label.clone(),
        visitor: header.visitor,
        replay_of: None,
        signed_in: route.spec.options.auth == Some(crate::protocol::Auth::Oidc),
    };
    Some(inspect::Recorder::new(store, source))
}

/// Only both ends closing is a clean end: a stream the server reset, a session that
/// died under it, or any other failure resets the local service's connection, which
/// never sees a short clean close. (The stream, dropped unfinished, is reset too.)
fn reset_unless_clean<T>(result: &std::io::Result<T>, local: &tokio::net::TcpStream) {
    if result.is_err() {
        tcp::reset_on_close(local);
    }
}
