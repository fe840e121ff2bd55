//! A batching layer between yamux and the socket.
//!
//! yamux writes each frame's 12-byte header and its body in two calls and reads them in
//! two. Unbuffered, that is two system calls per frame each way. `BatchIo` keeps small
//! writes in a buffer until yamux flushes (once per frame burst) and joins a buffered
//! header with a large body into one vectored write; reads go through a buffer, so the
//! header and the start of the body usually arrive in one call.

use futures::io::{AsyncRead as FAsyncRead, AsyncWrite as FAsyncWrite};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Read buffer: large enough that a burst of small frames costs one system call.
const READ_BUF: usize = 64 * 1024;
/// Writes are gathered up to this size before going to the socket.
const WRITE_BUF: usize = 64 * 1024;

/// Wraps a tokio socket and exposes the `futures` I/O traits yamux wants.
pub struct BatchIo<T> {
    inner: T,
    rbuf: Box<[u8]>,
    rpos: usize,
    rlen: usize,
    wbuf: Vec<u8>,
}

impl<T> BatchIo<T> {
    pub fn new(inner: T) -> Self {
        BatchIo {
            inner,
            rbuf: vec![0; READ_BUF].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
            wbuf: Vec::with_capacity(WRITE_BUF),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> BatchIo<T> {
    /// Writes the whole buffer out.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> FAsyncRead for BatchIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rpos == this.rlen {
            if out.len() >= this.rbuf.len() {
                // A large read gains nothing from the buffer.
                let mut rb = ReadBuf::new(out);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                return Poll::Ready(Ok(rb.filled().len()));
            }
            let mut rb = ReadBuf::new(&mut this.rbuf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            this.rpos = 0;
            this.rlen = rb.filled().len();
        }
        let n = out.len().min(this.rlen - this.rpos);
        out[..n].copy_from_slice(&this.rbuf[this.rpos..this.rpos + n]);
        this.rpos += n;
        Poll::Ready(Ok(n))
    }
}

impl<T: AsyncWrite + Unpin> FAsyncWrite for BatchIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wbuf.len() + data.len() <= WRITE_BUF {
            this.wbuf.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        loop {
            if this.wbuf.is_empty() {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
            let bufs = [IoSlice::new(&this.wbuf), IoSlice::new(data)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &bufs))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= this.wbuf.len() {
                let used = n - this.wbuf.len();
                this.wbuf.clear();
                if used > 0 {
                    return Poll::Ready(Ok(used));
                }
            } else {
                this.wbuf.drain(..n);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_survive_buffering_in_both_directions() {
        let (a, b) = tokio::io::duplex(1000);
        let mut a = BatchIo::new(a);
        let mut b = BatchIo::new(b);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let writer = async {
            a.write_all(&data[..12]).await.unwrap();
            a.write_all(&data[12..200_000]).await.unwrap();
            a.write_all(&data[200_000..]).await.unwrap();
            a.close().await.unwrap();
        };
        let reader = async {
            let mut got = Vec::new();
            let mut small = [0u8; 12];
            b.read_exact(&mut small).await.unwrap();
            got.extend_from_slice(&small);
            b.read_to_end(&mut got).await.unwrap();
            got
        };
        let (_, got) = tokio::join!(writer, reader);
        assert_eq!(got, data);
    }
}
