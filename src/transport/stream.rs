//! A yamux stream seen through tokio's I/O traits, with a reset told apart from a close.
//!
//! yamux 0.14 reports a stream the peer reset (RST) as end-of-stream in `poll_read`, the
//! same as a half-close (FIN). A splice that took it for a close would shut the far
//! socket down cleanly and a cut-off response would look complete. The state yamux
//! keeps does tell them apart: a FIN leaves the stream readable-closed only, while a
//! RST (or the whole session going away) closes it both ways before this side has
//! closed its own half. `MuxStream` turns that case into a `ConnectionReset` error, so
//! the splice fails and its caller resets the far socket.
//!
//! Sending a reset needs no code: dropping a yamux stream that was not closed sends
//! RST. The one case the wire cannot carry is a reset after the peer has already
//! half-closed: yamux answers that drop with FIN.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// One yamux stream.
pub struct MuxStream {
    inner: Compat<yamux::Stream>,
    /// This side has closed its write half (sent FIN).
    shut: bool,
}

impl MuxStream {
    pub(crate) fn new(s: yamux::Stream) -> Self {
        MuxStream {
            inner: s.compat(),
            shut: false,
        }
    }

    /// The peer reset the stream, or the session ended under it.
    fn was_reset(&self) -> bool {
        !self.shut && self.inner.get_ref().is_closed()
    }

    fn reset_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionReset,
            "the far end reset the connection",
        )
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
        if buf.filled().len() == before && buf.remaining() > 0 && this.was_reset() {
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
            Err(_) if this.was_reset() => Poll::Ready(Err(Self::reset_error())),
            r => Poll::Ready(r),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.was_reset() {
            return Poll::Ready(Err(Self::reset_error()));
        }
        ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
        this.shut = true;
        Poll::Ready(Ok(()))
    }
}
