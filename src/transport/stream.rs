//! A yamux stream seen through tokio's I/O traits, with a reset told apart from a close,
//! both ways.
//!
//! yamux 0.14 reports a stream the peer reset (RST), or one whose session died under
//! it, as end-of-stream in `poll_read`, the same as a half-close (FIN); and its own state
//! cannot tell them apart once this side has sent its FIN. A splice that took either for
//! a close would shut the far socket down cleanly and a cut-off transfer would look
//! complete. So the session's socket is watched (`goaway::Watch`): every FIN the peer
//! sends is noted against its stream in [`Ends`]. An end of stream with no FIN noted is
//! a reset, and `MuxStream` reports it as a `ConnectionReset` error, so the splice fails
//! and its caller resets the far socket.
//!
//! Sending a reset: dropping a stream that was not shut down. yamux sends RST for it,
//! except when the peer has already half-closed: then it answers the drop with FIN.
//! `MuxStream` marks that drop in [`Ends`], and the watch turns that one FIN into RST
//! on its way to the socket.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// The peer sent FIN on the stream: its end of stream is a clean close.
const FIN_IN: u8 = 1;
/// The stream was dropped without being shut down after the peer's FIN: the FIN yamux
/// sends for that drop must go out as RST.
const RESET_OUT: u8 = 2;

/// Drops waiting for their FIN to be turned into RST, per session. Each normally lasts
/// one pass of the driver; one outlives it only when the peer resets the stream at the
/// same instant (yamux then sends nothing). The cap bounds what a peer that does so on
/// purpose can make a session hold; past it such a drop goes out as FIN, as yamux sends it.
const MAX_RESETS_PENDING: usize = 4096;

/// What the frames of one session said about each of its live streams.
#[derive(Default)]
pub(crate) struct Ends {
    map: Mutex<HashMap<u32, Arc<AtomicU8>>>,
    resets_pending: AtomicUsize,
}

impl Ends {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Arc<AtomicU8>>> {
        // A poisoned map is still a map.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn register(&self, id: u32) -> Arc<AtomicU8> {
        self.lock().entry(id).or_default().clone()
    }

    /// The peer sent FIN on stream `id`. `opening`: the same frame opens the stream
    /// (yamux creates it after this frame is read), so it is noted ahead of its stream.
    pub(crate) fn fin_received(&self, id: u32, opening: bool) {
        let mut map = self.lock();
        let flags = match map.get(&id) {
            Some(f) => f,
            None if opening => map.entry(id).or_default(),
            None => return,
        };
        flags.fetch_or(FIN_IN, Ordering::Release);
    }

    /// yamux is about to send FIN (`fin`) or RST for stream `id`: whether that frame
    /// must go out as RST instead. Either way the stream's mark is done with.
    pub(crate) fn take_reset(&self, id: u32) -> bool {
        let mut map = self.lock();
        let marked = map
            .get(&id)
            .is_some_and(|f| f.load(Ordering::Acquire) & RESET_OUT != 0);
        if marked {
            map.remove(&id);
            self.resets_pending.fetch_sub(1, Ordering::Relaxed);
        }
        marked
    }

    /// Stream `id` is dropped; `reset`: its FIN must go out as RST.
    pub(crate) fn dropped(&self, id: u32, flags: &AtomicU8, reset: bool) {
        let mut map = self.lock();
        if reset && self.resets_pending.load(Ordering::Relaxed) < MAX_RESETS_PENDING {
            flags.fetch_or(RESET_OUT, Ordering::Release);
            self.resets_pending.fetch_add(1, Ordering::Relaxed);
        } else {
            map.remove(&id);
        }
    }
}

/// One yamux stream.
pub struct MuxStream {
    inner: Compat<yamux::Stream>,
    /// This side has closed its write half (sent FIN).
    shut: bool,
    id: u32,
    flags: Arc<AtomicU8>,
    ends: Arc<Ends>,
}

impl MuxStream {
    pub(crate) fn new(s: yamux::Stream, ends: Arc<Ends>) -> Self {
        let id = s.id().val();
        MuxStream {
            flags: ends.register(id),
            inner: s.compat(),
            shut: false,
            id,
            ends,
        }
    }

    fn fin_received(&self) -> bool {
        self.flags.load(Ordering::Acquire) & FIN_IN != 0
    }

    /// The peer reset the stream, or the session ended under it, before this side had
    /// closed its own half: nothing more can be written.
    fn write_cut(&self) -> bool {
        !self.shut && self.inner.get_ref().is_closed()
    }

    fn reset_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            "the far end reset the connection",
        )
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        // Not shut down: an abnormal end, which the peer must see as a reset. yamux
        // sends RST by itself unless the peer's FIN came first (and the stream is not
        // gone entirely, when it sends nothing).
        let reset = !self.shut && self.fin_received() && !self.inner.get_ref().is_closed();
        self.ends.dropped(self.id, &self.flags, reset);
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        // yamux ends a stream that had no FIN (a reset, or the session gone) with the
        // same empty read as one that had.
        if buf.filled().len() == before && buf.remaining() > 0 && !this.fin_received() {
            return Poll::Ready(Err(Self::reset_error()));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_write(cx, data)) {
            Err(_) if this.write_cut() => Poll::Ready(Err(Self::reset_error())),
            r => Poll::Ready(r),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_flush(cx)) {
            // The session is gone: what was written may never have left.
            Err(_) => Poll::Ready(Err(Self::reset_error())),
            Ok(()) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_cut() {
            return Poll::Ready(Err(Self::reset_error()));
        }
        ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
        this.shut = true;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::mux::{self, Mode};
    use crate::transport::BatchIo;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    /// Bound on anything these tests wait for.
    const WAIT: Duration = Duration::from_secs(10);

    struct Pair {
        client: mux::Mux,
        inbound: mpsc::UnboundedReceiver<MuxStream>,
        client_driver: JoinHandle<Result<(), mux::MuxError>>,
        server_driver: JoinHandle<Result<(), mux::MuxError>>,
    }

    /// Two sessions over an in-memory socket; the server's inbound streams come out of
    /// `inbound`.
    fn pair() -> Pair {
        let (a, b) = tokio::io::duplex(1 << 20);
        let stop = CancellationToken::new();
        let (client, cdrv) = mux::start(
            BatchIo::new(a),
            mux::config(16),
            Mode::Client,
            |_| {},
            stop.clone(),
        );
        let (tx, inbound) = mpsc::unbounded_channel();
        let (_server, sdrv) = mux::start(
            BatchIo::new(b),
            mux::config(16),
            Mode::Server,
            move |s| {
                let _ = tx.send(s);
            },
            stop,
        );
        Pair {
            client,
            inbound,
            client_driver: tokio::spawn(cdrv),
            server_driver: tokio::spawn(sdrv),
        }
    }

    impl Pair {
        /// A stream open both ways: (client's end, server's end).
        async fn stream(&mut self) -> (MuxStream, MuxStream) {
            let mut out = self.client.open().await.unwrap();
            out.write_all(b"o").await.unwrap();
            out.flush().await.unwrap();
            let mut inb = tokio::time::timeout(WAIT, self.inbound.recv())
                .await
                .unwrap()
                .unwrap();
            let mut b = [0u8; 1];
            inb.read_exact(&mut b).await.unwrap();
            (out, inb)
        }
    }

    /// Reads to the end; the bytes and how it ended.
    async fn read_all(s: &mut MuxStream) -> (Vec<u8>, io::Result<()>) {
        let mut got = Vec::new();
        let r = tokio::time::timeout(WAIT, s.read_to_end(&mut got))
            .await
            .expect("the stream ended");
        (got, r.map(|_| ()))
    }

    #[tokio::test]
    async fn a_fin_after_this_side_shut_is_a_clean_end() {
        let mut p = pair();
        let (mut out, mut inb) = p.stream().await;
        out.shutdown().await.unwrap();
        let (_, end) = read_all(&mut inb).await;
        end.unwrap();
        inb.write_all(b"answer").await.unwrap();
        inb.shutdown().await.unwrap();
        let (got, end) = read_all(&mut out).await;
        end.unwrap();
        assert_eq!(got, b"answer");
    }

    #[tokio::test]
    async fn a_session_that_dies_after_this_side_shut_is_a_reset() {
        let mut p = pair();
        let (mut out, mut inb) = p.stream().await;
        out.shutdown().await.unwrap();
        let (_, end) = read_all(&mut inb).await;
        end.unwrap();
        // The server's end of the socket goes away, as with a process killed.
        p.server_driver.abort();
        let (_, end) = read_all(&mut out).await;
        let err = end.expect_err("a dead session looked like a clean close");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        drop(inb);
    }

    #[tokio::test]
    async fn a_drop_after_the_peer_half_closed_reaches_it_as_a_reset() {
        let mut p = pair();
        let (mut out, mut inb) = p.stream().await;
        out.shutdown().await.unwrap();
        let (_, end) = read_all(&mut inb).await;
        end.unwrap();
        inb.write_all(b"part").await.unwrap();
        drop(inb);
        let (got, end) = read_all(&mut out).await;
        assert_eq!(got, b"part");
        let err = end.expect_err("a dropped stream looked like a clean close");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        // The session carries on.
        let (mut out, mut inb) = p.stream().await;
        out.shutdown().await.unwrap();
        read_all(&mut inb).await.1.unwrap();
        assert!(!p.client_driver.is_finished());
    }

    #[tokio::test]
    async fn what_ended_cleanly_before_the_session_died_still_ends_cleanly() {
        let mut p = pair();
        let (mut out, mut inb) = p.stream().await;
        inb.write_all(b"all of it").await.unwrap();
        inb.shutdown().await.unwrap();
        // Wait until the client's session has taken in the FIN, unread.
        let deadline = tokio::time::Instant::now() + WAIT;
        while !out.fin_received() {
            assert!(tokio::time::Instant::now() < deadline, "no FIN arrived");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        p.server_driver.abort();
        let _ = (&mut p.client_driver).await;
        let (got, end) = read_all(&mut out).await;
        assert_eq!(got, b"all of it");
        end.expect("a complete answer looked like a reset");
    }
}
