//! The session's socket as yamux sees it, watched frame by frame both ways.
//!
//! Outbound, for protocol violations: on a bad window update, an oversized first frame,
//! an unsolicited pong or a reused stream id, yamux 0.14 queues a GoAway frame with an
//! error code and then carries on serving the session as if nothing happened. `Watch`
//! follows the frames yamux writes (12-byte headers; only data frames carry a body),
//! and once a GoAway with a non-zero code has gone out, fails the next flush. yamux
//! then tears the connection down and the driver ends, so the session and its ports
//! are released within a flush, not at the heartbeat timeout. A graceful close is a
//! GoAway with code 0 and passes untouched.
//!
//! Both ways, for stream ends (`stream`): every FIN the peer sends is noted against its
//! stream, so an end of stream without one is known for the reset it is; and a FIN that
//! yamux sends for a stream dropped unfinished goes out as RST.

use super::stream::Ends;
use futures::io::{AsyncRead, AsyncWrite};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// yamux frame header: version, type, flags (2), stream id (4), length (4).
const HEADER: usize = 12;
/// Frame type of a data frame, the only one whose length counts body bytes.
const TYPE_DATA: u8 = 0;
/// Frame type of a window update, which may carry stream flags too.
const TYPE_WINDOW_UPDATE: u8 = 1;
/// Frame type of GoAway; its length field is the error code.
const TYPE_GO_AWAY: u8 = 3;
/// Header flags (a big-endian u16 at bytes 2..4).
const FLAG_SYN: u16 = 1;
const FLAG_FIN: u16 = 4;
const FLAG_RST: u16 = 8;

/// One frame header, taken apart.
struct Header([u8; HEADER]);

impl Header {
    fn kind(&self) -> u8 {
        self.0[1]
    }

    fn flags(&self) -> u16 {
        u16::from_be_bytes([self.0[2], self.0[3]])
    }

    fn stream(&self) -> u32 {
        u32::from_be_bytes([self.0[4], self.0[5], self.0[6], self.0[7]])
    }

    fn len(&self) -> u32 {
        u32::from_be_bytes([self.0[8], self.0[9], self.0[10], self.0[11]])
    }

    /// A frame that may end a stream (data or window update with FIN or RST).
    fn ends_stream(&self) -> bool {
        matches!(self.kind(), TYPE_DATA | TYPE_WINDOW_UPDATE)
            && self.flags() & (FLAG_FIN | FLAG_RST) != 0
    }
}

/// Follows frame boundaries in one direction of the byte stream.
#[derive(Default)]
struct Frames {
    header: [u8; HEADER],
    have: usize,
    body_left: u64,
}

impl Frames {
    /// The next bytes start a frame header.
    fn at_header(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }

    /// Follows `bytes`, calling `on_header` with each header completed.
    fn scan(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(&Header)) {
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
            let h = Header(self.header);
            if h.kind() == TYPE_DATA {
                self.body_left = u64::from(h.len());
            }
            on_header(&h);
        }
    }
}

/// A FIN header being written as RST, when the socket took only part of it.
struct Rewrite {
    header: [u8; HEADER],
    written: usize,
}

/// The socket as yamux sees it, watched for GoAway frames with an error code and for
/// the ends of streams.
pub struct Watch<T> {
    inner: T,
    ends: Arc<Ends>,
    out: Frames,
    inbound: Frames,
    violation: bool,
    rewrite: Option<Rewrite>,
}

impl<T> Watch<T> {
    pub(crate) fn new(inner: T, ends: Arc<Ends>) -> Self {
        Watch {
            inner,
            ends,
            out: Frames::default(),
            inbound: Frames::default(),
            violation: false,
            rewrite: None,
        }
    }

    /// Before `data`, which yamux writes, goes to the socket: a FIN header for a stream
    /// dropped unfinished is to go out as RST (`rewrite`).
    fn check_outgoing(&mut self, data: &[u8]) {
        if self.rewrite.is_some() || !self.out.at_header() || data.len() < HEADER {
            return;
        }
        let mut h = [0u8; HEADER];
        h.copy_from_slice(&data[..HEADER]);
        let header = Header(h);
        if header.ends_stream() && self.ends.take_reset(header.stream()) {
            let flags = (header.flags() & !FLAG_FIN) | FLAG_RST;
            h[2..4].copy_from_slice(&flags.to_be_bytes());
            self.rewrite = Some(Rewrite {
                header: h,
                written: 0,
            });
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let ends = &this.ends;
        this.inbound.scan(&buf[..n.min(buf.len())], |h| {
            // A frame with both flags is a reset to yamux.
            if h.ends_stream() && h.flags() & (FLAG_FIN | FLAG_RST) == FLAG_FIN {
                ends.fin_received(h.stream(), h.flags() & FLAG_SYN != 0);
            }
        });
        Poll::Ready(Ok(n))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_outgoing(data);
        // yamux writes a header whole, or what is left of it after a short write.
        let bytes = match &this.rewrite {
            Some(r) => &r.header[r.written..HEADER.min(r.written + data.len())],
            None => data,
        };
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, bytes))?;
        let n = n.min(bytes.len());
        if let Some(r) = &mut this.rewrite {
            r.written += n;
            if r.written >= HEADER {
                this.rewrite = None;
            }
        }
        let violation = &mut this.violation;
        this.out.scan(&data[..n], |h| {
            if h.kind() == TYPE_GO_AWAY && h.len() != 0 {
                *violation = true;
            }
        });
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        if this.violation {
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

    fn frame(kind: u8, flags: u16, stream: u32, len: u32, body: usize) -> Vec<u8> {
        let mut f = vec![0, kind];
        f.extend_from_slice(&flags.to_be_bytes());
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(9u8, body));
        f
    }

    fn violation(bytes: &[u8], split: usize) -> bool {
        let mut f = Frames::default();
        let mut seen = false;
        for chunk in bytes.chunks(split) {
            f.scan(chunk, |h| seen |= h.kind() == TYPE_GO_AWAY && h.len() != 0);
        }
        seen
    }

    #[test]
    fn a_goaway_with_an_error_code_is_seen_across_any_split() {
        let mut bytes = frame(TYPE_DATA, 0, 1, 5, 5);
        bytes.extend(frame(1, 0, 1, 7, 0));
        bytes.extend(frame(TYPE_GO_AWAY, 0, 0, 1, 0));
        for split in 1..bytes.len() {
            assert!(violation(&bytes, split), "split {split}");
        }
    }

    #[test]
    fn graceful_goaway_and_goaway_lookalikes_in_bodies_pass() {
        let mut body = frame(TYPE_GO_AWAY, 0, 0, 2, 0);
        body.extend([0u8; 4]);
        let mut bytes = frame(TYPE_DATA, 0, 1, body.len() as u32, 0);
        bytes.extend(body);
        bytes.extend(frame(TYPE_GO_AWAY, 0, 0, 0, 0));
        assert!(!violation(&bytes, bytes.len()));
    }

    /// A socket that takes at most `chunk` bytes per write.
    struct Trickle {
        got: Vec<u8>,
        chunk: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = data.len().min(this.chunk);
            this.got.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes `frames` as yamux does (a header, then its body, each retried from
    /// where a short write left it).
    async fn write_like_yamux(w: &mut Watch<Trickle>, frames: &[Vec<u8>]) {
        use futures::io::AsyncWriteExt;
        for f in frames {
            w.write_all(&f[..HEADER]).await.unwrap();
            w.write_all(&f[HEADER..]).await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_fin_of_a_stream_dropped_unfinished_goes_out_as_rst_whatever_the_split() {
        for chunk in 1..=HEADER + 1 {
            let ends = Arc::new(Ends::default());
            let flags = ends.register(7);
            ends.dropped(7, &flags, true);
            let mut w = Watch::new(
                Trickle {
                    got: Vec::new(),
                    chunk,
                },
                ends.clone(),
            );
            let data = frame(TYPE_DATA, 0, 7, 3, 3);
            let fin_other = frame(TYPE_DATA, FLAG_FIN, 5, 0, 0);
            let fin = frame(TYPE_DATA, FLAG_FIN, 7, 0, 0);
            let again = frame(TYPE_DATA, FLAG_FIN, 7, 0, 0);
            write_like_yamux(
                &mut w,
                &[data.clone(), fin_other.clone(), fin, again.clone()],
            )
            .await;
            let mut want = data;
            want.extend(fin_other);
            want.extend(frame(TYPE_DATA, FLAG_RST, 7, 0, 0));
            want.extend(again);
            assert_eq!(w.inner.got, want, "chunk {chunk}");
        }
    }
}
