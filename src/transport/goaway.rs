//! Ending a session at once when yamux finds the peer broke the protocol.
//!
//! On a bad window update, an oversized first frame, an unsolicited pong or a reused
//! stream id, yamux 0.14 queues a GoAway frame with an error code and then carries on
//! serving the session as if nothing happened. `Watch` sits between yamux and the
//! socket, follows the frames yamux writes (12-byte headers; only data frames carry a
//! body), and once a GoAway with a non-zero code has gone out, fails the next flush.
//! yamux then tears the connection down and the driver ends, so the session and its
//! ports are released within a flush, not at the heartbeat timeout.
//!
//! A graceful close is a GoAway with code 0 and passes untouched.

use futures::io::{AsyncRead, AsyncWrite};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// yamux frame header: version, type, flags (2), stream id (4), length (4).
const HEADER: usize = 12;
/// Frame type of a data frame, the only one whose length counts body bytes.
const TYPE_DATA: u8 = 0;
/// Frame type of GoAway; its length field is the error code.
const TYPE_GO_AWAY: u8 = 3;

/// Follows frame boundaries in the byte stream yamux writes.
#[derive(Default)]
struct Frames {
    header: [u8; HEADER],
    have: usize,
    body_left: u64,
    violation: bool,
}

impl Frames {
    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len() as u64) as usize;
                self.body_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have < HEADER {
                return;
            }
            self.have = 0;
            let len = u32::from_be_bytes([
                self.header[8],
                self.header[9],
                self.header[10],
                self.header[11],
            ]);
            match self.header[1] {
                TYPE_DATA => self.body_left = u64::from(len),
                TYPE_GO_AWAY if len != 0 => self.violation = true,
                _ => {}
            }
        }
    }
}

/// The socket as yamux sees it, watched for GoAway frames with an error code.
pub struct Watch<T> {
    inner: T,
    frames: Frames,
}

impl<T> Watch<T> {
    pub fn new(inner: T) -> Self {
        Watch {
            inner,
            frames: Frames::default(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        this.frames.scan(&data[..n.min(data.len())]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        if this.frames.violation {
            // The GoAway has reached the socket; now end the session.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer broke the yamux protocol",
            )));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, len: u32, body: usize) -> Vec<u8> {
        let mut f = vec![0, kind, 0, 0, 0, 0, 0, 1];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(9u8, body));
        f
    }

    #[test]
    fn a_goaway_with_an_error_code_is_seen_across_any_split() {
        let mut bytes = frame(TYPE_DATA, 5, 5);
        bytes.extend(frame(1, 7, 0));
        bytes.extend(frame(TYPE_GO_AWAY, 1, 0));
        for split in 1..bytes.len() {
            let mut f = Frames::default();
            for chunk in bytes.chunks(split) {
                f.scan(chunk);
            }
            assert!(f.violation, "split {split}");
        }
    }

    #[test]
    fn graceful_goaway_and_goaway_lookalikes_in_bodies_pass() {
        let mut body = frame(TYPE_GO_AWAY, 2, 0);
        body.extend([0u8; 4]);
        let mut bytes = frame(TYPE_DATA, body.len() as u32, 0);
        bytes.extend(body);
        bytes.extend(frame(TYPE_GO_AWAY, 0, 0));
        let mut f = Frames::default();
        f.scan(&bytes);
        assert!(!f.violation);
    }
}
