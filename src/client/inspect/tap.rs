//! A socket wrapper that shows the inspector every byte written to and read from the
//! local service, after the fact: the bytes themselves go through untouched, in the
//! same calls, so the splice around it behaves exactly as without it.

use super::recorder::Recorder;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Tap<S> {
    inner: S,
    recorder: Recorder,
}

impl<S> Tap<S> {
    pub fn new(inner: S, recorder: Recorder) -> Tap<S> {
        Tap { inner, recorder }
    }

    /// The tapped stream itself (to reset a socket when the splice saw a reset).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }
}

impl<S> Drop for Tap<S> {
    fn drop(&mut self) {
        self.recorder.closed();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.recorder.from_service(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            this.recorder.to_service(&data[..n]);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
