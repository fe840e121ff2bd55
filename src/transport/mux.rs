//! The yamux driver: one task owns the `Connection` and polls it continuously.
//!
//! Everything else talks to it through `Mux` (open an outbound stream) and receives
//! inbound streams through the callback given at start. All socket I/O, pings and
//! window updates happen inside `poll_next_inbound`, so the driver polls it on every
//! wake-up, also on the side that never expects inbound streams. A protocol violation
//! by the peer ends the driver at once (see `goaway`).

use futures::io::{AsyncRead, AsyncWrite};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::AbortOnDropHandle;

use super::goaway::Watch;
use super::stream::Ends;
pub use super::stream::MuxStream;
use std::net::IpAddr;
use std::sync::Arc;

pub use yamux::Mode;

/// Each stream's receive window starts at yamux's 256 KiB and auto-tunes upward; the
/// connection-wide window must cover the initial window of every stream allowed.
const INITIAL_STREAM_WINDOW: usize = 256 * 1024;

/// yamux's own default stream cap.
const YAMUX_DEFAULT_STREAMS: usize = 512;

/// Payload bytes per yamux data frame. Frames follow the splice's read size (256 KiB);
/// a larger split lets one read travel as one frame (fewer headers and system calls).
const SPLIT_SEND_SIZE: usize = 256 * 1024;

/// Where a session's TCP connection runs: within this machine, or across a network.
///
/// It sets the frame size (`frame_size`) and how many connections `pipec --connections
/// auto` keeps. The line is the address, not a measured round trip: on a 1 Gbit/s link
/// under a millisecond away, one connection with 256 KiB frames let one download take
/// nearly 90% of the link beside another in one round of five (yamux grows the window
/// of whichever stream it measures first and never shrinks it); a pool of connections
/// with 32 KiB frames gave the second 47-57% in every round (`benches/TUNING.md`). On
/// loopback nothing is shared with anyone, and large frames save system calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Both ends on this machine (a loopback address), or an address not known.
    Local,
    /// Across a network.
    Link,
}

impl Path {
    /// The path to a peer at `peer`. An IPv4 loopback peer seen by a dual-stack socket
    /// (`::ffff:127.0.0.1`) is local too.
    pub fn to(peer: Option<IpAddr>) -> Path {
        match peer {
            Some(ip) if !ip.to_canonical().is_loopback() => Path::Link,
            _ => Path::Local,
        }
    }
}

/// Payload bytes per data frame on a session across a real link. yamux hands a frame
/// to the reader only once all of it has arrived, and grants a stream more window only
/// after half of it was read, doubling the window only when that took under two round
/// trips. With 256 KiB frames, one lost packet held back a whole frame, usually half a
/// new stream's window, and that stream stayed at its first 256 KiB: 15 Mbit/s on a
/// 50 ms link with 1% loss against rathole's 159. 32 KiB frames are read as they
/// arrive (`benches/TUNING.md`: one stream 16 → 152 Mbit/s, four 363 → 601, medians
/// of 5), and streams that share a connection take turns in smaller pieces. On
/// loopback the large frames stay: there they save system calls.
const LINK_SPLIT_SEND_SIZE: usize = 32 * 1024;

/// Payload bytes per data frame for a session whose TCP connection runs on `path`.
pub fn frame_size(path: Path) -> usize {
    match path {
        Path::Link => LINK_SPLIT_SEND_SIZE,
        Path::Local => SPLIT_SEND_SIZE,
    }
}

/// Receive window shared by the streams of a session on top of each one's initial 256 KiB.
/// yamux lets a busy stream's window grow (doubling toward twice the bandwidth-delay
/// product) only out of this pool, so with none every stream stays at 256 KiB: one
/// frame in flight. 64 MiB took one stream from 9.3 to 11.8 Gbit/s (TUNING.md); it is
/// also the most a session buffers beyond 256 KiB per stream for readers that stall.
const WINDOW_HEADROOM: usize = 64 * 1024 * 1024;

/// Highest stream cap a session may be configured with.
pub const MAX_STREAMS_LIMIT: usize = 65_536;

/// Queue of "open a stream" requests waiting for the driver.
const OPEN_QUEUE: usize = 1024;

/// yamux settings for a session that allows `max_streams` concurrent streams.
pub fn config(max_streams: usize) -> yamux::Config {
    let mut cfg = yamux::Config::default();
    let n = max_streams.clamp(1, MAX_STREAMS_LIMIT);
    // yamux asserts window >= 256 KiB × streams after each setter, so the order
    // depends on whether the stream count goes up or down from its default.
    let window = n * INITIAL_STREAM_WINDOW + WINDOW_HEADROOM;
    if n > YAMUX_DEFAULT_STREAMS {
        cfg.set_max_connection_receive_window(Some(window));
        cfg.set_max_num_streams(n);
    } else {
        cfg.set_max_num_streams(n);
        cfg.set_max_connection_receive_window(Some(window));
    }
    cfg.set_split_send_size(SPLIT_SEND_SIZE);
    cfg
}

/// [`config`] for a session over a TCP connection on `path`: frames sized by
/// [`frame_size`].
pub fn config_for_path(max_streams: usize, path: Path) -> yamux::Config {
    let mut cfg = config(max_streams);
    cfg.set_split_send_size(frame_size(path));
    cfg
}

#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("session closed")]
    Closed,
    #[error("yamux: {0}")]
    Yamux(#[from] yamux::ConnectionError),
}

type OpenReply = oneshot::Sender<Result<MuxStream, MuxError>>;

/// A handle to a running session driver. Cheap to clone.
#[derive(Clone)]
pub struct Mux {
    open_tx: mpsc::Sender<OpenReply>,
}

impl Mux {
    /// Opens an outbound stream. The peer learns of it at the first write, so callers
    /// write a header frame at once.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let (tx, rx) = oneshot::channel();
        self.open_tx.send(tx).await.map_err(|_| MuxError::Closed)?;
        rx.await.unwrap_or(Err(MuxError::Closed))
    }
}

/// Starts the driver for `io` on the current runtime. `on_inbound` receives each
/// inbound stream; it must not block (spawn or `try_send`). Cancelling `stop` closes the
/// session gracefully. The returned future resolves when the session has ended.
pub fn start<T, F>(
    io: T,
    cfg: yamux::Config,
    mode: Mode,
    on_inbound: F,
    stop: CancellationToken,
) -> (Mux, Driver<T, F>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut(MuxStream) + Send + 'static,
{
    let (open_tx, open_rx) = mpsc::channel(OPEN_QUEUE);
    let ends = Arc::new(Ends::default());
    let driver = Driver {
        conn: yamux::Connection::new(Watch::new(io, ends.clone()), cfg, mode),
        ends,
        open_rx,
        pending: VecDeque::new(),
        on_inbound,
        stop: Box::pin(stop.cancelled_owned()),
        closing: false,
    };
    (Mux { open_tx }, driver)
}

/// The session's driver future; spawn it. Resolves with how the session ended.
pub struct Driver<T, F> {
    conn: yamux::Connection<Watch<T>>,
    /// How each stream of the session ended, as its frames said (`stream`).
    ends: Arc<Ends>,
    open_rx: mpsc::Receiver<OpenReply>,
    pending: VecDeque<OpenReply>,
    on_inbound: F,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    closing: bool,
}

impl<T, F> Future for Driver<T, F>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(MuxStream) + Unpin,
{
    type Output = Result<(), MuxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.closing && this.stop.as_mut().poll(cx).is_ready() {
            this.closing = true;
            this.pending.clear();
            this.open_rx.close();
        }
        if this.closing {
            return this.conn.poll_close(cx).map_err(MuxError::from);
        }
        while let Poll::Ready(Some(req)) = this.open_rx.poll_recv(cx) {
            this.pending.push_back(req);
        }
        while !this.pending.is_empty() {
            match this.conn.poll_new_outbound(cx) {
                Poll::Ready(result) => {
                    if let Some(reply) = this.pending.pop_front() {
                        // A caller that gave up drops the stream, which closes it.
                        let stream = result.map(|s| MuxStream::new(s, this.ends.clone()));
                        let _ = reply.send(stream.map_err(MuxError::from));
                    }
                }
                Poll::Pending => break,
            }
        }
        loop {
            match this.conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    (this.on_inbound)(MuxStream::new(stream, this.ends.clone()))
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A spawned driver whose end can be awaited any number of times.
pub struct DriverTask {
    handle: Option<AbortOnDropHandle<Result<(), MuxError>>>,
}

impl DriverTask {
    pub fn spawn<D>(driver: D) -> Self
    where
        D: Future<Output = Result<(), MuxError>> + Send + 'static,
    {
        DriverTask {
            handle: Some(AbortOnDropHandle::new(tokio::spawn(driver))),
        }
    }

    /// Resolves when the session has ended (at once if it already has). Cancel-safe.
    pub async fn finished(&mut self) {
        if let Some(h) = &mut self.handle {
            let _ = h.await;
            self.handle = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_small_only_across_a_network() {
        use Path::{Link, Local};
        // This machine, and a peer whose address is not known: large frames. Any other
        // address, a LAN's included: small ones.
        let cases = [
            (None, Local),
            (Some("127.0.0.1"), Local),
            (Some("127.0.0.2"), Local),
            (Some("::1"), Local),
            (Some("::ffff:127.0.0.1"), Local),
            (Some("192.168.1.20"), Link),
            (Some("198.18.0.2"), Link),
            (Some("2001:db8::1"), Link),
            (Some("::ffff:10.0.0.1"), Link),
        ];
        for (peer, want) in cases {
            let ip = peer.map(|p| p.parse::<IpAddr>().expect("an address"));
            assert_eq!(Path::to(ip), want, "{peer:?}");
        }
        assert_eq!(frame_size(Local), SPLIT_SEND_SIZE);
        assert_eq!(frame_size(Link), LINK_SPLIT_SEND_SIZE);
        for n in [1, 512, MAX_STREAMS_LIMIT] {
            let _ = config_for_path(n, Link);
        }
    }

    #[test]
    fn config_accepts_every_stream_cap() {
        for n in [0, 1, 16, 512, 513, 16_384, MAX_STREAMS_LIMIT, usize::MAX] {
            let _ = config(n);
        }
    }
    use crate::transport::BatchIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn streams_open_both_ways_and_carry_bytes() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let stop = CancellationToken::new();
        let (client, cdrv) = start(
            BatchIo::new(a),
            config(16),
            Mode::Client,
            |_| {},
            stop.clone(),
        );
        let (srv_tx, mut srv_rx) = mpsc::unbounded_channel();
        let (_server, sdrv) = start(
            BatchIo::new(b),
            config(16),
            Mode::Server,
            move |s| {
                let _ = srv_tx.send(s);
            },
            stop.clone(),
        );
        let c = tokio::spawn(cdrv);
        let s = tokio::spawn(sdrv);
        let mut out = client.open().await.unwrap();
        out.write_all(b"hello").await.unwrap();
        out.shutdown().await.unwrap();
        let mut inb = srv_rx.recv().await.unwrap();
        let mut got = Vec::new();
        inb.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // Half-closed one way, the other way still works.
        inb.write_all(b"back").await.unwrap();
        inb.shutdown().await.unwrap();
        let mut got = Vec::new();
        out.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"back");
        stop.cancel();
        let _ = c.await.unwrap();
        let _ = s.await.unwrap();
    }
}
